//! One test per rule of the run machine.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use sluice_domain::*;

use super::*;

#[test]
fn a_chain_hands_each_task_to_the_next_with_one_write() {
    let mut sim = Sim::new(definition(vec![shell("a", &[]), shell("b", &["a"]), shell("c", &["b"])], FailureStrategy::End));
    sim.start(&TestWorld::default());
    assert_eq!(sim.instance.state, WorkflowState::Running);
    assert_eq!(sim.queued_names(), names(&["a"]));
    assert_eq!(sim.writes.len(), 1, "running and `a` created dispatched: one write");
    sim.take("a");
    let before = sim.writes.len();
    sim.end("a", Outcome::Success);
    assert_eq!(sim.writes.len(), before + 1, "a's end and b's creation are one write");
    assert_eq!(sim.writes.last().unwrap().create.len(), 1);
    assert_eq!(sim.queued_names(), names(&["b"]));
    sim.run_task("b", Outcome::Success);
    sim.run_task("c", Outcome::Success);
    assert_eq!(sim.finished, Some(WorkflowState::Success));
    assert_eq!(sim.instance.state, WorkflowState::Success);
    assert!(sim.instance.end_time.is_some());
}

#[test]
fn reports_of_a_burst_are_one_write_and_repeats_change_nothing() {
    let mut sim = Sim::new(definition(vec![shell("a", &[]), shell("b", &[]), shell("c", &["a", "b"])], FailureStrategy::End));
    sim.start(&TestWorld::default());
    let (a, b) = (sim.row("a").clone(), sim.row("b").clone());
    let report = |t: &TaskInstance, r: Report| TaskReport { task_instance_id: t.id, attempt: t.attempt, worker: "w1:1234".into(), at: Utc::now(), report: r };
    let before = sim.writes.len();
    sim.reports(vec![
        report(&a, Report::Running { pid: 1, log_path: String::new() }),
        report(&b, Report::Running { pid: 2, log_path: String::new() }),
        report(&a, finished(Outcome::Success)),
        report(&b, finished(Outcome::Success)),
    ]);
    assert_eq!(sim.writes.len(), before + 1);
    let write = sim.writes.last().unwrap();
    assert_eq!(write.tasks.len(), 2, "one change per task: {write:?}");
    assert!(write.tasks.iter().all(|c| c.from == TaskState::Dispatched && c.events == [TaskEvent::Start, TaskEvent::Succeed]));
    assert_eq!(write.create.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["c"]);
    // Repeats and reports of other attempts: nothing to write.
    let writes = sim.writes.len();
    sim.reports(vec![report(&a, finished(Outcome::Success)), TaskReport { attempt: 9, ..report(&b, finished(Outcome::Failure)) }]);
    assert_eq!(sim.writes.len(), writes);
}

#[test]
fn a_failed_attempt_with_a_retry_left_runs_again_after_its_interval() {
    let mut flaky = shell("a", &[]);
    flaky.retries = 1;
    flaky.retry_interval = Duration::from_secs(30);
    let mut sim = Sim::new(definition(vec![flaky], FailureStrategy::End));
    sim.start(&TestWorld::default());
    sim.run_task("a", Outcome::Failure);
    let row = sim.row("a").clone();
    assert_eq!((row.state, row.retries), (TaskState::RetryWait, 1));
    let due = sim.machine.next_deadline().unwrap();
    assert!(due > Utc::now() + chrono::Duration::seconds(25));
    sim.tick(Utc::now(), &TestWorld::default());
    assert_eq!(sim.state("a"), Some(TaskState::RetryWait), "not yet");
    sim.tick(due, &TestWorld::default());
    let row = sim.row("a").clone();
    assert_eq!((row.state, row.attempt, row.host.clone()), (TaskState::Dispatched, 2, None));
    assert_eq!(sim.puts.iter().filter(|(id, _)| *id == row.id).map(|(_, a)| *a).collect::<Vec<_>>(), [1, 2]);
    sim.run_task("a", Outcome::Failure);
    assert_eq!(sim.state("a"), Some(TaskState::Failure), "no retry left");
    assert_eq!(sim.finished, Some(WorkflowState::Failure));
}

#[test]
fn strategy_end_kills_the_running_and_takes_back_the_queued() {
    let mut sim = Sim::new(definition(vec![shell("a", &[]), shell("b", &[]), shell("c", &[])], FailureStrategy::End));
    sim.start(&TestWorld::default());
    sim.take("a");
    sim.take("b");
    sim.end("a", Outcome::Failure);
    assert_eq!(sim.kills.iter().map(|k| k.task_instance_id).collect::<Vec<_>>(), [sim.row("b").id], "running b is killed on its worker");
    assert_eq!(sim.state("c"), Some(TaskState::Killed), "queued c is taken back and killed");
    assert!(sim.queue.is_empty());
    assert!(sim.row("c").message.as_deref().unwrap().contains("failure strategy end: task `a` failed"));
    assert!(sim.logs.iter().all(|l| l.task_instance_id != sim.row("c").id), "its log line comes from its reason (the API's)");
    assert_eq!(sim.finished, None, "b is still being killed");
    sim.end("b", Outcome::Killed);
    assert_eq!(sim.finished, Some(WorkflowState::Failure));
}

#[test]
fn strategy_continue_runs_what_is_not_below_the_failure() {
    let mut sim = Sim::new(definition(vec![shell("a", &[]), shell("b", &["a"]), shell("c", &[]), shell("d", &["c"])], FailureStrategy::Continue));
    sim.start(&TestWorld::default());
    sim.run_task("a", Outcome::Failure);
    assert!(sim.kills.is_empty());
    sim.run_task("c", Outcome::Success);
    sim.run_task("d", Outcome::Success);
    assert_eq!(sim.state("b"), None, "below the failure: never created");
    assert_eq!(sim.finished, Some(WorkflowState::Failure));
}

#[test]
fn a_stop_is_consumed_with_its_write_and_ends_stopped() {
    let mut sim = Sim::new(definition(vec![shell("a", &[]), shell("b", &[])], FailureStrategy::End));
    sim.start(&TestWorld::default());
    sim.take("a");
    let command = sim.command(Operator::Stop);
    let stop_write = sim.writes.iter().find(|w| w.consume.contains(&command)).expect("the stop's write consumes it");
    assert_eq!(stop_write.workflow.as_ref().map(|w| w.events.clone()), Some(vec![WorkflowEvent::Stop]), "consumed with the state change that carries it out");
    assert_eq!(sim.instance.state, WorkflowState::ReadyStop);
    assert_eq!(sim.kills.len(), 1);
    assert_eq!(sim.state("b"), Some(TaskState::Killed));
    sim.end("a", Outcome::Killed);
    assert_eq!(sim.finished, Some(WorkflowState::Stopped));
    // A second stop has nothing to do but is consumed all the same.
    let mut sim = Sim::new(definition(vec![shell("a", &[])], FailureStrategy::End));
    sim.start(&TestWorld::default());
    sim.take("a");
    sim.command(Operator::Stop);
    let again = sim.command(Operator::Stop);
    assert_eq!(sim.writes.last().unwrap(), &RunWrite { consume: vec![again], ..Default::default() });
}

#[test]
fn stopping_ten_thousand_tasks_is_a_few_writes() {
    let tasks: Vec<TaskSpec> = (0..10_000).map(|i| shell(&format!("t{i:05}"), &[])).collect();
    let mut sim = Sim::new(definition(tasks, FailureStrategy::End));
    sim.start(&TestWorld::default());
    assert_eq!(sim.queue.len(), 10_000);
    for i in 0..100 {
        sim.take(&format!("t{i:05}"));
    }
    let before = sim.writes.len();
    sim.command(Operator::Stop);
    assert_eq!(sim.writes.len() - before, 2, "the stop, then the kills of what was taken back");
    assert_eq!(sim.writes.last().unwrap().tasks.len(), 9_900);
    assert_eq!(sim.kills.len(), 100);
    let reports: Vec<TaskReport> = sim
        .rows
        .values()
        .filter(|r| r.state == TaskState::Running)
        .map(|r| TaskReport { task_instance_id: r.id, attempt: 1, worker: "w1:1234".into(), at: Utc::now(), report: finished(Outcome::Killed) })
        .collect();
    sim.reports(reports);
    assert_eq!(sim.finished, Some(WorkflowState::Stopped));
    assert_eq!(sim.writes.len() - before, 3);
}

#[test]
fn a_pause_takes_queued_tasks_back_and_a_resume_queues_them() {
    let mut sim = Sim::new(definition(vec![shell("a", &[]), shell("b", &[]), shell("c", &["a"])], FailureStrategy::End));
    sim.start(&TestWorld::default());
    sim.take("a");
    sim.command(Operator::Pause);
    assert_eq!(sim.instance.state, WorkflowState::ReadyPause);
    assert_eq!(sim.state("b"), Some(TaskState::Submitted), "taken back out of the queue");
    assert!(sim.queue.is_empty());
    sim.end("a", Outcome::Success);
    assert_eq!(sim.state("c"), None, "nothing new starts while pausing");
    assert_eq!(sim.finished, Some(WorkflowState::Paused));
    // Resume: a new driver of the instance, running again.
    let mut resumed = sim.reload(None, false);
    resumed.instance.state = WorkflowState::Running;
    let mut resumed = resumed.reload(None, false);
    resumed.start(&TestWorld::default());
    assert_eq!(resumed.queued_names(), names(&["b", "c"]));
    resumed.run_task("b", Outcome::Success);
    resumed.run_task("c", Outcome::Success);
    assert_eq!(resumed.finished, Some(WorkflowState::Success));
}

#[test]
fn an_operator_kill_is_written_before_it_is_sent_and_sent_again_by_a_new_owner() {
    let mut sim = Sim::new(definition(vec![shell("a", &[]), shell("b", &[])], FailureStrategy::Continue));
    sim.start(&TestWorld::default());
    sim.take("a");
    let command = sim.command(Operator::KillTasks(vec!["a".into(), "nope".into()]));
    let write = sim.writes.last().unwrap();
    assert_eq!(write.consume, [command]);
    assert_eq!(write.tasks[0].update.kill_reason, Some(Some("killed by an operator".into())));
    assert_eq!(sim.kills.len(), 1);
    // The master dies before the worker answers: the next owner kills again.
    let mut next = sim.reload(None, false);
    next.start(&TestWorld::default());
    assert_eq!(next.kills.iter().map(|k| (k.task_instance_id, k.reason.as_str())).collect::<Vec<_>>(), [(sim.row("a").id, "killed by an operator")]);
    next.end("a", Outcome::Failure);
    assert_eq!(next.state("a"), Some(TaskState::Failure), "a kill asked for means no retry");
    assert!(next.row("a").kill_reason.is_none());
}

#[test]
fn a_forced_success_lets_the_downstream_run() {
    let mut sim = Sim::new(definition(vec![shell("a", &[]), shell("b", &["a"]), shell("c", &[])], FailureStrategy::Continue));
    sim.start(&TestWorld::default());
    sim.take("c");
    sim.run_task("a", Outcome::Failure);
    assert_eq!(sim.finished, None, "c still runs");
    sim.command(Operator::ForceSuccess(vec!["a".into(), "c".into()]));
    assert_eq!(sim.state("a"), Some(TaskState::ForcedSuccess));
    assert_eq!(sim.state("c"), Some(TaskState::Running), "a running task is not forced");
    assert_eq!(sim.queued_names(), names(&["b"]));
    sim.end("c", Outcome::Success);
    sim.run_task("b", Outcome::Success);
    assert_eq!(sim.finished, Some(WorkflowState::Success));
}

#[test]
fn a_task_on_a_lost_worker_gets_a_new_attempt_as_a_failover() {
    let mut sim = Sim::new(definition(vec![shell("a", &[])], FailureStrategy::End));
    sim.start(&TestWorld::default());
    sim.take("a");
    let mut world = TestWorld::default();
    world.workers.insert("w1:1234".into(), WorkerSeen::Missing(Duration::from_secs(1)));
    let later = Utc::now() + chrono::Duration::seconds(10);
    sim.tick(later, &world);
    assert_eq!(sim.state("a"), Some(TaskState::Running), "missing for less than the grace");
    world.workers.insert("w1:1234".into(), WorkerSeen::Missing(Duration::from_secs(3)));
    sim.tick(later, &world);
    let row = sim.row("a").clone();
    assert_eq!((row.state, row.attempt, row.failovers, row.retries), (TaskState::Dispatched, 2, 1, 0));
    assert_eq!(sim.writes.last().unwrap().tasks[0].events, [TaskEvent::WorkerLost, TaskEvent::Redispatch, TaskEvent::Dispatch]);
    // The old attempt's late report changes nothing.
    let stale = TaskReport { task_instance_id: row.id, attempt: 1, worker: "w1:1234".into(), at: Utc::now(), report: finished(Outcome::Success) };
    sim.reports(vec![stale]);
    assert_eq!(sim.state("a"), Some(TaskState::Dispatched));
    // A worker back at the same address as a new process: lost as well.
    sim.take("a");
    let restarted = Utc::now() + chrono::Duration::seconds(1);
    world.workers.insert("w1:1234".into(), WorkerSeen::Live { started_at: Some(restarted) });
    sim.tick(restarted, &world);
    assert_eq!(sim.row("a").attempt, 3);
}

#[test]
fn a_task_taken_and_never_reported_runs_again_once_its_entry_is_gone_long_enough() {
    let mut sim = Sim::new(definition(vec![shell("a", &[])], FailureStrategy::End));
    sim.start(&TestWorld::default());
    let key = sim.queue.keys().next().unwrap().clone();
    sim.queue.clear(); // taken by a worker that died at once
    let soon = Utc::now() + chrono::Duration::seconds(30);
    assert!(sim.machine.groups_to_list(soon).is_empty(), "not listed before it waited long enough");
    let late = Utc::now() + chrono::Duration::seconds(61);
    assert_eq!(sim.machine.groups_to_list(late), ["default".to_string()].into());
    let mut world = TestWorld::default();
    world.listings.insert("default".into(), [key.clone()].into());
    sim.tick(late, &world);
    assert_eq!(sim.row("a").attempt, 1, "still queued: nothing to do");
    world.listings.insert("default".into(), HashSet::new());
    sim.tick(late, &world);
    assert_eq!((sim.row("a").attempt, sim.row("a").failovers), (2, 1));
}

/// However many tasks of a group wait, the watchdog asks for one listing
/// of that group per tick.
#[test]
fn the_watchdog_lists_each_group_once_per_tick() {
    let mut gpu = shell("g", &[]);
    gpu.worker_group = Some(WorkerGroup::new("gpu").unwrap());
    let mut tasks: Vec<TaskSpec> = (0..500).map(|i| shell(&format!("t{i}"), &[])).collect();
    tasks.push(gpu);
    let mut sim = Sim::new(definition(tasks, FailureStrategy::End));
    sim.start(&TestWorld::default());
    sim.queue.clear();
    let late = Utc::now() + chrono::Duration::seconds(61);
    assert_eq!(sim.machine.groups_to_list(late), ["default".to_string(), "gpu".to_string()].into());
}

#[test]
fn entries_lost_with_an_in_process_queue_are_put_again_at_start() {
    let mut sim = Sim::new(definition(vec![shell("a", &[]), shell("b", &[])], FailureStrategy::End));
    sim.start(&TestWorld::default());
    sim.take("a");
    // The process (with its embedded queue) restarts.
    let mut restarted = sim.reload(None, true);
    assert_eq!(restarted.machine.groups_at_start(), ["default".to_string()].into());
    let mut world = TestWorld::default();
    world.listings.insert("default".into(), HashSet::new());
    restarted.start(&world);
    assert_eq!(restarted.queued_names(), names(&["b"]), "b is queued again at once, as the same attempt");
    assert_eq!(restarted.row("b").attempt, 1);
    // With a queue that survives (ZooKeeper), nothing is put at start.
    let mut adopted = sim.reload(None, false);
    assert!(adopted.machine.groups_at_start().is_empty());
    adopted.start(&TestWorld::default());
    assert!(adopted.puts.is_empty());
}

#[test]
fn an_interrupted_put_is_put_again_only_if_it_was_not_done() {
    let mut sim = Sim::new(definition(vec![shell("a", &[]), shell("b", &[])], FailureStrategy::End));
    sim.uncertain_puts = true;
    sim.start(&TestWorld::default());
    sim.uncertain_puts = false;
    let key_a = sim.queue.iter().find(|(_, e)| e.dispatch.task == "a").map(|(k, _)| k.clone()).unwrap();
    sim.queue.clear(); // a's put was not done; b's was, and a worker took it
    let settle = Utc::now() + chrono::Duration::seconds(6);
    assert_eq!(sim.machine.groups_to_list(settle), ["default".to_string()].into());
    let mut world = TestWorld::default();
    world.listings.insert("default".into(), HashSet::new());
    sim.take_from_nowhere("b");
    sim.tick(settle, &world);
    assert_eq!(sim.queued_names(), names(&["a"]), "b reported running: not put again");
    assert!(sim.queue.contains_key(&key_a));
    assert_eq!(sim.puts.len(), 3);
}

impl Sim {
    /// A worker reports `name` running without the test's queue having the
    /// entry (its put was interrupted after it was done).
    fn take_from_nowhere(&mut self, name: &str) {
        self.report(name, Report::Running { pid: 1, log_path: String::new() });
    }
}

#[test]
fn a_branch_not_taken_is_skipped_and_the_run_succeeds() {
    let def = definition(vec![shell("sw", &[]), shell("yes", &["sw"]), shell("y2", &["yes"]), shell("no", &["sw"]), shell("join", &["yes", "no"])], FailureStrategy::End);
    let mut sim = Sim::new(def);
    sim.machine.dag.set_condition("sw", "yes", EdgeCondition::Branch("yes".into())).unwrap();
    sim.machine.dag.set_condition("sw", "no", EdgeCondition::Branch("no".into())).unwrap();
    sim.start(&TestWorld::default());
    sim.take("sw");
    // `sw` chooses its branch (as a switch task will).
    let row = sim.row("sw").clone();
    let effects = {
        sim.machine.change(sim.dag.node("sw").unwrap(), &[], TaskUpdate { branches: Some(Some(vec!["no".into()])), ..Default::default() }).unwrap();
        sim.machine.on_reports(vec![TaskReport { task_instance_id: row.id, attempt: 1, worker: "w1:1234".into(), at: Utc::now(), report: finished(Outcome::Success) }])
    };
    sim.run(effects);
    assert_eq!(sim.state("yes"), Some(TaskState::Skipped));
    assert_eq!(sim.state("y2"), Some(TaskState::Skipped), "skipping goes down to where branches join");
    assert!(sim.row("y2").message.as_deref().unwrap().starts_with("skipped"));
    assert_eq!(sim.queued_names(), names(&["no"]));
    sim.run_task("no", Outcome::Success);
    sim.run_task("join", Outcome::Success);
    assert_eq!(sim.finished, Some(WorkflowState::Success));
}

#[test]
fn a_task_whose_parameters_cannot_be_resolved_fails_before_it_is_queued() {
    let mut bad = shell("bad", &[]);
    bad.body.insert("script".into(), "echo $[yyyyMMdd-1x]".into());
    let mut sim = Sim::new(definition(vec![bad, shell("ok", &[])], FailureStrategy::End));
    sim.start(&TestWorld::default());
    let row = sim.row("bad").clone();
    assert_eq!(row.state, TaskState::Failure);
    assert!(row.message.as_deref().unwrap().starts_with("cannot resolve `$[yyyyMMdd-1x]`"), "{:?}", row.message);
    assert!(!sim.puts.iter().any(|(id, _)| *id == row.id), "never queued");
    assert!(sim.logs.iter().any(|l| l.task_instance_id == row.id && l.lines[0].starts_with("failed before it started")));
    assert_eq!(sim.state("ok"), Some(TaskState::Killed), "strategy end: its sibling is killed before it is queued");
    assert!(sim.puts.is_empty(), "nothing reached the queue");
    assert_eq!(sim.finished, Some(WorkflowState::Failure));
}

#[test]
fn tasks_placed_in_the_master_are_not_queued_watched_or_withdrawn() {
    let def = definition(vec![shell("gate", &[]), shell("a", &[])], FailureStrategy::End);
    let dag = def.spec().validate().unwrap();
    let placements = (0..dag.len()).map(|n| if dag.name(n) == "gate" { Placement::Master } else { Placement::Process }).collect();
    let instance = new_instance(&def);
    let mut sim = Sim::with(def, instance, Vec::new(), Some(placements), false);
    sim.start(&TestWorld::default());
    assert_eq!(sim.in_master, ["gate"]);
    assert_eq!(sim.queued_names(), names(&["a"]));
    let late = Utc::now() + chrono::Duration::seconds(120);
    let mut world = TestWorld::default();
    world.listings.insert("default".into(), HashSet::new());
    sim.queue.clear();
    sim.tick(late, &world);
    assert_eq!(sim.row("gate").attempt, 1, "the watchdog leaves a master task alone");
    assert_eq!(sim.row("a").attempt, 2);
    sim.command(Operator::Pause);
    assert_eq!(sim.state("gate"), Some(TaskState::Dispatched), "a pause lets it go on");
    sim.command(Operator::Stop);
    assert_eq!(sim.cancels.iter().map(|c| c.task_instance_id).collect::<Vec<_>>(), [sim.row("gate").id]);
}

#[test]
fn a_rerun_runs_every_task_again_as_new_attempts_and_a_recover_only_what_failed() {
    let def = definition(vec![shell("a", &[]), shell("b", &["a"]), shell("c", &[])], FailureStrategy::Continue);
    let mut sim = Sim::new(def);
    sim.start(&TestWorld::default());
    sim.run_task("a", Outcome::Failure);
    sim.run_task("c", Outcome::Success);
    assert_eq!(sim.finished, Some(WorkflowState::Failure));
    // Recover: a (failed) and what is below it; c stays.
    let mut recovered = sim.reload(None, false);
    recovered.instance.state = WorkflowState::Submitted;
    recovered.instance.run = 2;
    recovered.instance.command_kind = CommandKind::RecoverFailure;
    let mut recovered = recovered.reload(None, false);
    recovered.start(&TestWorld::default());
    assert_eq!(recovered.queued_names(), names(&["a"]));
    assert_eq!((recovered.row("a").attempt, recovered.row("a").run), (2, 2));
    recovered.run_task("a", Outcome::Success);
    recovered.run_task("b", Outcome::Success);
    assert_eq!(recovered.finished, Some(WorkflowState::Success));
    assert_eq!(recovered.row("c").attempt, 1, "c was not run again");
    // Rerun: everything, again.
    let mut rerun = recovered.reload(None, false);
    rerun.instance.state = WorkflowState::Submitted;
    rerun.instance.run = 3;
    rerun.instance.command_kind = CommandKind::Rerun;
    let mut rerun = rerun.reload(None, false);
    rerun.start(&TestWorld::default());
    assert_eq!(rerun.queued_names(), names(&["a", "c"]));
    assert_eq!(rerun.row("c").attempt, 2);
}

