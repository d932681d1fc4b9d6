//! Tests of the run machine: one per rule, and a property test that drives
//! random runs (random DAGs, reports and operator commands) against the
//! reference planner [`RunView`].
//!
//! [`Sim`] plays everything around the machine the way the driver and the
//! store do: it applies each write with the store's rules (one transaction,
//! compare-and-set on states, through the transition table), keeps a queue,
//! and records every effect, so that tests can say what was written, queued,
//! withdrawn and killed, and in how many writes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use sluice_domain::*;

use super::*;

mod random;
mod rules;

fn shell(name: &str, deps: &[&str]) -> TaskSpec {
    let mut t = TaskSpec::new(name, "shell");
    t.body.insert("script".into(), format!("echo {name}").into());
    t.deps = deps.iter().map(|d| d.to_string()).collect();
    t
}

fn definition(tasks: Vec<TaskSpec>, strategy: FailureStrategy) -> WorkflowDefinition {
    let now = Utc::now();
    WorkflowDefinition {
        id: WorkflowId(1),
        project_id: ProjectId(1),
        project: "demo".into(),
        version: 1,
        name: "etl".into(),
        description: String::new(),
        params: Params::new(),
        failure_strategy: strategy,
        priority: Priority::Medium,
        worker_group: WorkerGroup::default(),
        tasks: tasks
            .into_iter()
            .enumerate()
            .map(|(i, spec)| TaskDefinition { id: TaskDefinitionId(i as i64 + 1), version: 1, spec, created_at: now })
            .collect(),
        created_at: now,
    }
}

fn new_instance(def: &WorkflowDefinition) -> WorkflowInstance {
    let now = Utc::now();
    WorkflowInstance {
        id: WorkflowInstanceId(7),
        project_id: def.project_id,
        workflow_id: def.id,
        workflow_version: def.version,
        workflow_name: def.name.clone(),
        state: WorkflowState::Submitted,
        command_kind: CommandKind::Start,
        params: Params::new(),
        priority: def.priority,
        worker_group: def.worker_group.clone(),
        failure_strategy: def.failure_strategy,
        schedule_time: None,
        owner: Some("m1:5678".into()),
        owner_epoch: 1,
        run: 1,
        start_tasks: Vec::new(),
        scope: None,
        backfill_id: None,
        start_time: None,
        end_time: None,
        reason: None,
        created_at: now,
        updated_at: now,
    }
}

/// The world as a test arranges it: which workers are seen how, and the
/// queue as listed.
#[derive(Default)]
struct TestWorld {
    workers: HashMap<String, WorkerSeen>,
    listings: HashMap<String, HashSet<String>>,
}

impl World for TestWorld {
    fn worker(&self, _group: &str, host: &str) -> WorkerSeen {
        self.workers.get(host).copied().unwrap_or(WorkerSeen::Live { started_at: None })
    }
    fn queued(&self, group: &str) -> Option<&HashSet<String>> {
        self.listings.get(group)
    }
}

/// The machine with a store, a queue and workers around it.
struct Sim {
    machine: RunMachine,
    def: WorkflowDefinition,
    dag: Dag,
    instance: WorkflowInstance,
    rows: BTreeMap<TaskInstanceId, TaskInstance>,
    next_id: i64,
    /// Queue entries by key.
    queue: BTreeMap<String, QueueEntry>,
    /// Every put, in order: (task instance, attempt).
    puts: Vec<(TaskInstanceId, u32)>,
    /// Every task (by name) handed to the master's runner.
    in_master: Vec<String>,
    writes: Vec<RunWrite>,
    kills: Vec<KillOrder>,
    cancels: Vec<KillOrder>,
    withdrawals: usize,
    logs: Vec<TaskLog>,
    finished: Option<WorkflowState>,
    /// Attempts taken by a (pretend) worker.
    taken: Vec<(TaskInstanceId, u32)>,
    /// What the next puts answer.
    uncertain_puts: bool,
}

fn setup(def: &WorkflowDefinition, instance: WorkflowInstance, tasks: Vec<TaskInstance>, placements: Option<Vec<Placement>>, lost_on_restart: bool) -> RunSetup {
    let dag = def.spec().validate().unwrap();
    let placements = placements.unwrap_or_else(|| vec![Placement::Process; dag.len()]);
    RunSetup {
        instance,
        def: def.clone(),
        dag,
        placements,
        ctx: RunContext { project: "demo".into(), project_params: Params::new(), timezone: sluice_params::Tz::UTC, master: "m1:5678".into() },
        tasks,
        failover_grace: Duration::from_secs(2),
        queue_lost_on_restart: lost_on_restart,
    }
}

impl Sim {
    fn new(def: WorkflowDefinition) -> Sim {
        let instance = new_instance(&def);
        Sim::with(def, instance, Vec::new(), None, false)
    }

    fn with(def: WorkflowDefinition, instance: WorkflowInstance, tasks: Vec<TaskInstance>, placements: Option<Vec<Placement>>, lost_on_restart: bool) -> Sim {
        let next_id = tasks.iter().map(|t| t.id.get()).max().unwrap_or(100) + 1;
        let rows = tasks.iter().map(|t| (t.id, t.clone())).collect();
        let machine = RunMachine::new(setup(&def, instance.clone(), tasks, placements, lost_on_restart)).unwrap();
        Sim {
            machine,
            dag: def.spec().validate().unwrap(),
            def,
            instance,
            rows,
            next_id,
            queue: BTreeMap::new(),
            puts: Vec::new(),
            in_master: Vec::new(),
            writes: Vec::new(),
            kills: Vec::new(),
            cancels: Vec::new(),
            withdrawals: 0,
            logs: Vec::new(),
            finished: None,
            taken: Vec::new(),
            uncertain_puts: false,
        }
    }

    /// The same instance picked up by a new driver (a failover, a restart),
    /// from the rows as stored.
    fn reload(&self, placements: Option<Vec<Placement>>, lost_on_restart: bool) -> Sim {
        let mut instance = self.instance.clone();
        instance.owner_epoch += 1;
        let mut sim = Sim::with(self.def.clone(), instance, self.rows.values().cloned().collect(), placements, lost_on_restart);
        sim.queue = if lost_on_restart { BTreeMap::new() } else { self.queue.clone() };
        sim
    }

    fn start(&mut self, world: &TestWorld) {
        let effects = self.machine.start(world);
        self.run(effects);
    }

    /// Carries out effects the way the driver does: a result's effects
    /// before the rest.
    fn run(&mut self, effects: Vec<Effect>) {
        let mut stack = vec![effects.into_iter()];
        while let Some(top) = stack.last_mut() {
            let Some(effect) = top.next() else {
                stack.pop();
                continue;
            };
            let more = match effect {
                Effect::Write(write) => {
                    assert!(self.finished.is_none(), "a write after the run finished: {write:?}");
                    let written = self.apply(&write).unwrap_or_else(|e| panic!("the store refuses {write:?}: {e}"));
                    self.writes.push(write);
                    self.machine.persisted(written)
                }
                Effect::Queue(entries) => {
                    let mut results = Vec::new();
                    for entry in entries {
                        let row = &self.rows[&entry.dispatch.task_instance_id];
                        assert_eq!((row.state, row.attempt), (TaskState::Dispatched, entry.dispatch.attempt), "only a dispatched attempt is queued");
                        let attempt = (entry.dispatch.task_instance_id, entry.dispatch.attempt);
                        assert!(!self.queue.contains_key(&entry.key), "{attempt:?} queued while it is queued");
                        assert!(!self.taken.contains(&attempt), "{attempt:?} queued again after a worker took it");
                        self.puts.push((entry.dispatch.task_instance_id, entry.dispatch.attempt));
                        self.queue.insert(entry.key.clone(), entry.clone());
                        results.push((entry, if self.uncertain_puts { Put::Uncertain } else { Put::Done }));
                    }
                    self.machine.queued(results, Utc::now())
                }
                Effect::Withdraw(entries) => {
                    self.withdrawals += entries.len();
                    let results = entries.into_iter().map(|e| {
                        let removed = self.queue.remove(&e.key).is_some();
                        (e, removed)
                    });
                    let results = results.collect();
                    self.machine.withdrawn(results)
                }
                Effect::Kill(orders) => {
                    self.kills.extend(orders);
                    Vec::new()
                }
                Effect::RunInMaster(entries) => {
                    self.in_master.extend(entries.into_iter().map(|e| e.dispatch.task.clone()));
                    Vec::new()
                }
                Effect::CancelInMaster(orders) => {
                    self.cancels.extend(orders);
                    Vec::new()
                }
                Effect::Log(logs) => {
                    self.logs.extend(logs);
                    Vec::new()
                }
                Effect::Finish(state) => {
                    self.finished = Some(state);
                    Vec::new()
                }
            };
            if !more.is_empty() {
                stack.push(more.into_iter());
            }
        }
    }

    /// The store's rules for one write: all or nothing, compare-and-set,
    /// through the transition tables.
    fn apply(&mut self, write: &RunWrite) -> Result<RunWritten, String> {
        let mut instance = self.instance.clone();
        let mut rows = self.rows.clone();
        let now = Utc::now();
        let mut written = RunWritten::default();
        if let Some(change) = &write.workflow {
            if instance.state != change.from {
                return Err(format!("instance is {}, expected {}", instance.state, change.from));
            }
            instance.state = change.to().map_err(|e| e.to_string())?;
            let u = &change.update;
            if let Some(r) = u.run {
                instance.run = r;
            }
            if let Some(k) = u.command_kind {
                instance.command_kind = k;
            }
            if let Some(e) = u.end_time {
                instance.end_time = e;
            }
            if let Some(s) = u.start_time {
                instance.start_time = s;
            }
            written.workflow = Some(instance.clone());
        }
        for change in &write.tasks {
            let row = rows.get_mut(&change.id).ok_or(format!("no task instance {}", change.id))?;
            if row.state != change.from {
                return Err(format!("task instance {} is {}, expected {}", change.id, row.state, change.from));
            }
            row.state = change.to().map_err(|e| e.to_string())?;
            change.update.apply_to(row);
            row.updated_at = now;
            written.tasks.push(row.clone());
        }
        for new in &write.create {
            if rows.values().any(|r| r.name == new.name) {
                return Err(format!("a second task instance of `{}`", new.name));
            }
            let id = TaskInstanceId(self.next_id);
            self.next_id += 1;
            let state = new.state().map_err(|e| e.to_string())?;
            let row = TaskInstance {
                id,
                workflow_instance_id: new.workflow_instance_id,
                task_definition_id: new.task_definition_id,
                name: new.name.clone(),
                task_type: new.task_type.clone(),
                state,
                attempt: 1,
                max_retries: new.max_retries,
                failovers: 0,
                priority: new.priority,
                worker_group: new.worker_group.clone(),
                host: None,
                exit_code: None,
                retry_at: None,
                log_path: None,
                submit_time: now,
                start_time: None,
                end_time: state.is_final().then_some(now),
                updated_at: now,
                outputs: Params::new(),
                message: new.message.clone(),
                run: new.run,
                retries: 0,
                kill_reason: None,
                branches: None,
                external_id: None,
            };
            rows.insert(id, row.clone());
            written.created.push(row);
        }
        self.instance = instance;
        self.rows = rows;
        Ok(written)
    }

    fn row(&self, name: &str) -> &TaskInstance {
        self.rows.values().find(|r| r.name == name).unwrap_or_else(|| panic!("no row of `{name}`"))
    }

    fn state(&self, name: &str) -> Option<TaskState> {
        self.rows.values().find(|r| r.name == name).map(|r| r.state)
    }

    fn queued_names(&self) -> BTreeSet<String> {
        self.queue.values().map(|e| e.dispatch.task.clone()).collect()
    }

    /// A worker takes `name`'s entry and reports it running.
    fn take(&mut self, name: &str) {
        let key = self.queue.iter().find(|(_, e)| e.dispatch.task == name).map(|(k, _)| k.clone()).unwrap_or_else(|| panic!("`{name}` is not queued"));
        let entry = self.queue.remove(&key).unwrap();
        self.taken.push((entry.dispatch.task_instance_id, entry.dispatch.attempt));
        self.report(name, Report::Running { pid: 1, log_path: String::new() });
    }

    fn report(&mut self, name: &str, report: Report) {
        let row = self.row(name).clone();
        self.reports(vec![TaskReport { task_instance_id: row.id, attempt: row.attempt, worker: "w1:1234".into(), at: Utc::now(), report }]);
    }

    fn reports(&mut self, reports: Vec<TaskReport>) {
        let effects = self.machine.on_reports(reports);
        self.run(effects);
    }

    fn end(&mut self, name: &str, outcome: Outcome) {
        self.report(name, finished(outcome));
    }

    /// `name` is taken, runs and ends with `outcome`.
    fn run_task(&mut self, name: &str, outcome: Outcome) {
        self.take(name);
        self.end(name, outcome);
    }

    fn command(&mut self, operator: Operator) -> CommandId {
        let id = CommandId(self.writes.len() as i64 + 1000);
        let effects = self.machine.on_command(id, operator);
        self.run(effects);
        id
    }

    fn tick(&mut self, at: Timestamp, world: &TestWorld) {
        let effects = self.machine.on_tick(at, world);
        self.run(effects);
    }
}

fn finished(outcome: Outcome) -> Report {
    let code = if outcome == Outcome::Success { 0 } else { 1 };
    Report::Finished(Finished { outcome, exit_code: Some(code), reason: format!("exit code {code}"), outputs: Params::new() })
}

fn names(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

