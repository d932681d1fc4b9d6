//! Random runs against the reference planner.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::Utc;
use proptest::prelude::*;
use sluice_domain::*;

use super::*;

/// One thing that may happen to a run.
#[derive(Debug, Clone)]
enum Action {
    /// A worker takes the n-th queued entry.
    Take(usize),
    /// The n-th running attempt ends.
    End(usize, Outcome),
    Stop,
    Pause,
    Kill(usize),
    Force(usize),
    /// Time passes (retries fall due).
    Tick,
}

fn action() -> impl Strategy<Value = Action> {
    let outcome = prop_oneof![4 => Just(Outcome::Success), 2 => Just(Outcome::Failure), 1 => Just(Outcome::Killed)];
    prop_oneof![
        6 => (0usize..8).prop_map(Action::Take),
        6 => ((0usize..8), outcome).prop_map(|(n, o)| Action::End(n, o)),
        1 => Just(Action::Stop),
        1 => Just(Action::Pause),
        1 => (0usize..8).prop_map(Action::Kill),
        1 => (0usize..8).prop_map(Action::Force),
        2 => Just(Action::Tick),
    ]
}

impl Sim {
    /// Checks the machine's incremental readiness against the reference
    /// planner, and what must always hold of the rows.
    fn check(&self) -> Result<(), TestCaseError> {
        let machine = &self.machine;
        let mut states = HashMap::new();
        let mut branches = HashMap::new();
        for row in self.rows.values() {
            let node = self.dag.node(&row.name).unwrap();
            prop_assert!(machine.plan.is_selected(node), "a task outside the run was created: {}", row.name);
            states.insert(node, row.state);
            if let Some(b) = &row.branches {
                branches.insert(node, b.clone());
            }
        }
        let selected: BTreeSet<TaskNode> = (0..self.dag.len()).filter(|n| machine.plan.is_selected(*n)).collect();
        // Readiness alone (the strategy and a halt decide whether the
        // ready tasks start, not which are ready).
        let view = RunView { dag: &self.dag, selected: &selected, states: &states, branches: &branches, failure_strategy: FailureStrategy::Continue, halted: false };
        let (run, skip) = view.next();
        prop_assert_eq!(machine.plan.ready(), run.clone());
        prop_assert_eq!(machine.plan.skippable(), skip);
        if machine.may_start() && self.finished.is_none() {
            prop_assert!(run.is_empty(), "ready tasks left unstarted: {:?}", run);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random DAGs driven by random reports and operator commands: the
    /// machine never queues an attempt while it is queued or after a worker
    /// took it, never starts a task before
    /// its upstream satisfies, never creates a task outside the run, agrees
    /// with the reference planner at every step, and always ends: in the
    /// state the reference planner gives for the final rows.
    #[test]
    fn a_random_run_always_ends_consistently(
        edges in proptest::collection::vec((0usize..7, 0usize..7), 0..14),
        retries in proptest::collection::vec(0u32..2, 7),
        cont in any::<bool>(),
        actions in proptest::collection::vec(action(), 0..80),
    ) {
        let names: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
        let mut deps: Vec<Vec<&str>> = vec![Vec::new(); 7];
        for (a, b) in edges { if a < b && !deps[b].contains(&names[a].as_str()) { deps[b].push(&names[a]); } }
        let tasks: Vec<TaskSpec> = (0..7).map(|i| { let mut t = shell(&names[i], &deps[i]); t.retries = retries[i]; t }).collect();
        let strategy = if cont { FailureStrategy::Continue } else { FailureStrategy::End };
        let mut sim = Sim::new(definition(tasks, strategy));
        sim.start(&TestWorld::default());
        sim.check()?;
        let mut now = Utc::now();
        for action in actions {
            if sim.finished.is_some() { break; }
            match action {
                Action::Take(n) => {
                    if let Some(name) = sim.queue.values().nth(n % sim.queue.len().max(1)).map(|e| e.dispatch.task.clone()) {
                        let row = sim.row(&name).clone();
                        for up in sim.dag.upstream(sim.dag.node(&name).unwrap()) {
                            let up_state = sim.state(sim.dag.name(up));
                            prop_assert!(up_state.is_some_and(|s| s.satisfies()), "{name} queued before {} satisfied: {:?}", sim.dag.name(up), up_state);
                        }
                        prop_assert!(!sim.taken.contains(&(row.id, row.attempt)), "attempt taken twice");
                        sim.take(&name);
                    }
                }
                Action::End(n, outcome) => {
                    let running: Vec<String> = sim.rows.values().filter(|r| r.state == TaskState::Running).map(|r| r.name.clone()).collect();
                    if !running.is_empty() { let name = running[n % running.len()].clone(); sim.end(&name, outcome); }
                }
                Action::Stop => { sim.command(Operator::Stop); }
                Action::Pause => { sim.command(Operator::Pause); }
                Action::Kill(n) => { sim.command(Operator::KillTasks(vec![names[n % 7].clone()])); }
                Action::Force(n) => { sim.command(Operator::ForceSuccess(vec![names[n % 7].clone()])); }
                Action::Tick => { now += chrono::Duration::seconds(1); sim.tick(now, &TestWorld::default()); }
            }
            sim.check()?;
        }
        // Then the workers do their job until the run is over: kills are
        // obeyed, everything else succeeds; a paused run is resumed.
        for _ in 0..200 {
            if let Some(state) = sim.finished {
                if state != WorkflowState::Paused { break; }
                let mut resumed = sim.reload(None, false);
                resumed.instance.state = WorkflowState::Running;
                let taken = sim.taken.clone();
                sim = resumed.reload(None, false);
                sim.taken = taken;
                sim.start(&TestWorld::default());
                continue;
            }
            let killed: HashSet<TaskInstanceId> = sim.kills.iter().map(|k| k.task_instance_id).collect();
            if let Some(name) = sim.rows.values().find(|r| r.state == TaskState::Running).map(|r| r.name.clone()) {
                let outcome = if killed.contains(&sim.row(&name).id) { Outcome::Killed } else { Outcome::Success };
                sim.end(&name, outcome);
            } else if let Some(name) = sim.queue.values().next().map(|e| e.dispatch.task.clone()) {
                sim.take(&name);
            } else {
                now += chrono::Duration::seconds(5);
                sim.tick(now, &TestWorld::default());
            }
            sim.check()?;
        }
        let end = sim.finished.expect("the run ends");
        prop_assert_eq!(sim.instance.state, end);
        prop_assert!(sim.rows.values().all(|r| r.state.is_final()), "left in flight: {:?}", sim.rows.values().map(|r| (&r.name, r.state)).collect::<Vec<_>>());
        let mut states = HashMap::new();
        for row in sim.rows.values() { states.insert(sim.dag.node(&row.name).unwrap(), row.state); }
        let selected: BTreeSet<TaskNode> = (0..7).collect();
        let no_branches = HashMap::new();
        let view = RunView { dag: &sim.dag, selected: &selected, states: &states, branches: &no_branches, failure_strategy: strategy, halted: false };
        let stopped = end == WorkflowState::Stopped;
        prop_assert_eq!(view.outcome(stopped), Some(end));
    }
}
