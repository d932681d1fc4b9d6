//! Pure scheduling decisions of a workflow run: which tasks are ready, and
//! whether (and how) the run is over. The master's driver applies them; they
//! are functions over data so they can be tested exhaustively.

use std::collections::{BTreeSet, HashMap};

use crate::dag::{Dag, TaskNode};
use crate::model::FailureStrategy;
use crate::state::{TaskState, WorkflowState};

/// What the planner needs to know about a run.
#[derive(Debug, Clone, Copy)]
pub struct RunView<'a> {
    pub dag: &'a Dag,
    /// Tasks this run includes (all of them for a plain start).
    pub selected: &'a BTreeSet<TaskNode>,
    /// States of the task instances created so far (including those kept
    /// from an earlier run, e.g. successes kept by recover-from-failure).
    pub states: &'a HashMap<TaskNode, TaskState>,
    pub failure_strategy: FailureStrategy,
    /// An operator asked to stop or pause: nothing new may start.
    pub halted: bool,
}

impl RunView<'_> {
    /// Whether some task failed for good (failed or killed, not forced).
    pub fn has_failure(&self) -> bool {
        self.states.values().any(|s| matches!(s, TaskState::Failure | TaskState::Killed))
    }

    /// Whether a task instance is still in flight (may still change state
    /// without an operator).
    pub fn has_active(&self) -> bool {
        self.states.values().any(|s| !s.is_final())
    }

    /// Selected tasks not created yet whose upstream tasks all succeeded (an
    /// upstream task outside the selection counts as done). Nothing is ready
    /// once halted, or after a failure under the `end` strategy.
    pub fn ready(&self) -> Vec<TaskNode> {
        if self.halted || (self.failure_strategy == FailureStrategy::End && self.has_failure()) {
            return Vec::new();
        }
        self.dag
            .topological_order()
            .iter()
            .copied()
            .filter(|n| self.selected.contains(n) && !self.states.contains_key(n))
            .filter(|&n| {
                self.dag.upstream(n).into_iter().all(|up| {
                    !self.selected.contains(&up)
                        || self.states.get(&up).is_some_and(|s| s.is_success())
                })
            })
            .collect()
    }

    /// The run's final state once nothing is in flight and nothing more can
    /// start; `None` while it goes on. A stop wins over the task outcome.
    pub fn outcome(&self, stopping: bool) -> Option<WorkflowState> {
        if self.has_active() {
            return None;
        }
        if stopping {
            return Some(WorkflowState::Stopped);
        }
        if !self.halted && !self.ready().is_empty() {
            return None;
        }
        let all_succeeded = self
            .selected
            .iter()
            .all(|n| self.states.get(n).is_some_and(|s| s.is_success()));
        Some(if all_succeeded { WorkflowState::Success } else { WorkflowState::Failure })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// a → b, a → c, b + c → d, plus e → f on a second branch.
    fn two_branches() -> Dag {
        Dag::build([
            ("a", vec![]),
            ("b", vec!["a"]),
            ("c", vec!["a"]),
            ("d", vec!["b", "c"]),
            ("e", vec![]),
            ("f", vec!["e"]),
        ])
        .unwrap()
    }

    fn states(dag: &Dag, pairs: &[(&str, TaskState)]) -> HashMap<TaskNode, TaskState> {
        pairs.iter().map(|(n, s)| (dag.node(n).unwrap(), *s)).collect()
    }

    fn names(dag: &Dag, nodes: Vec<TaskNode>) -> Vec<&str> {
        let mut out: Vec<&str> = nodes.into_iter().map(|n| dag.name(n)).collect();
        out.sort();
        out
    }

    fn view<'a>(dag: &'a Dag, selected: &'a BTreeSet<TaskNode>, states: &'a HashMap<TaskNode, TaskState>, fs: FailureStrategy) -> RunView<'a> {
        RunView { dag, selected, states, failure_strategy: fs, halted: false }
    }

    #[test]
    fn roots_first_then_what_their_success_unlocks() {
        let dag = two_branches();
        let all: BTreeSet<TaskNode> = (0..dag.len()).collect();
        let s = states(&dag, &[]);
        assert_eq!(names(&dag, view(&dag, &all, &s, FailureStrategy::End).ready()), ["a", "e"]);
        let s = states(&dag, &[("a", TaskState::Success), ("e", TaskState::Running)]);
        assert_eq!(names(&dag, view(&dag, &all, &s, FailureStrategy::End).ready()), ["b", "c"]);
        let s = states(&dag, &[("a", TaskState::Success), ("b", TaskState::ForcedSuccess), ("c", TaskState::Running), ("e", TaskState::Success)]);
        assert_eq!(names(&dag, view(&dag, &all, &s, FailureStrategy::End).ready()), ["f"]);
        assert_eq!(view(&dag, &all, &s, FailureStrategy::End).outcome(false), None);
    }

    #[test]
    fn end_strategy_starts_nothing_after_a_failure() {
        let dag = two_branches();
        let all: BTreeSet<TaskNode> = (0..dag.len()).collect();
        let s = states(&dag, &[("a", TaskState::Failure), ("e", TaskState::Success)]);
        let v = view(&dag, &all, &s, FailureStrategy::End);
        assert!(v.ready().is_empty());
        assert_eq!(v.outcome(false), Some(WorkflowState::Failure));
        // While a sibling still runs (being killed), the run is not over.
        let s = states(&dag, &[("a", TaskState::Failure), ("e", TaskState::Running)]);
        assert_eq!(view(&dag, &all, &s, FailureStrategy::End).outcome(false), None);
    }

    #[test]
    fn continue_strategy_runs_every_branch_not_below_the_failure() {
        let dag = two_branches();
        let all: BTreeSet<TaskNode> = (0..dag.len()).collect();
        let s = states(&dag, &[("a", TaskState::Success), ("b", TaskState::Failure), ("e", TaskState::Success)]);
        let v = view(&dag, &all, &s, FailureStrategy::Continue);
        assert_eq!(names(&dag, v.ready()), ["c", "f"]);
        assert_eq!(v.outcome(false), None);
        let s = states(&dag, &[("a", TaskState::Success), ("b", TaskState::Failure), ("c", TaskState::Success), ("e", TaskState::Success), ("f", TaskState::Success)]);
        let v = view(&dag, &all, &s, FailureStrategy::Continue);
        assert!(v.ready().is_empty(), "d is below the failure");
        assert_eq!(v.outcome(false), Some(WorkflowState::Failure));
    }

    #[test]
    fn upstream_outside_the_selection_counts_as_done() {
        let dag = two_branches();
        let selected = dag.select(&["b"], crate::model::RunScope::Downstream).unwrap();
        let s = states(&dag, &[]);
        let v = view(&dag, &selected, &s, FailureStrategy::End);
        assert_eq!(names(&dag, v.ready()), ["b"]);
        let s = states(&dag, &[("b", TaskState::Success)]);
        let v = view(&dag, &selected, &s, FailureStrategy::End);
        // c is not part of this run, so d only waits for b.
        assert_eq!(names(&dag, v.ready()), ["d"]);
    }

    #[test]
    fn stop_and_pause_halt_new_work() {
        let dag = two_branches();
        let all: BTreeSet<TaskNode> = (0..dag.len()).collect();
        let s = states(&dag, &[("a", TaskState::Success)]);
        let mut v = view(&dag, &all, &s, FailureStrategy::End);
        v.halted = true;
        assert!(v.ready().is_empty());
        assert_eq!(v.outcome(true), Some(WorkflowState::Stopped));
        let s = states(&dag, &[("a", TaskState::Running)]);
        let v = RunView { halted: true, ..view(&dag, &all, &s, FailureStrategy::End) };
        assert_eq!(v.outcome(true), None, "a stop waits for running tasks to end");
    }

    proptest! {
        /// Driving a random DAG to the end by always finishing the ready
        /// tasks with random outcomes: every created task had all its
        /// upstream succeed, the run ends, and it ends in success exactly
        /// when every task succeeded.
        #[test]
        fn a_run_always_ends_consistently(
            edges in proptest::collection::vec((0usize..8, 0usize..8), 0..16),
            outcomes in proptest::collection::vec(any::<bool>(), 8),
            cont in any::<bool>(),
        ) {
            let names: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
            let mut deps: Vec<Vec<&str>> = vec![Vec::new(); 8];
            for (a, b) in edges { if a < b { deps[b].push(&names[a]); } }
            let dag = Dag::build(names.iter().map(String::as_str).zip(deps)).unwrap();
            let all: BTreeSet<TaskNode> = (0..8).collect();
            let fs = if cont { FailureStrategy::Continue } else { FailureStrategy::End };
            let mut st: HashMap<TaskNode, TaskState> = HashMap::new();
            let mut rounds = 0;
            let outcome = loop {
                let v = RunView { dag: &dag, selected: &all, states: &st, failure_strategy: fs, halted: false };
                if let Some(o) = v.outcome(false) { break o; }
                let ready = v.ready();
                prop_assert!(!ready.is_empty(), "stuck: nothing active, nothing ready, no outcome");
                for n in ready {
                    for up in dag.upstream(n) { prop_assert!(st[&up].is_success()); }
                    st.insert(n, if outcomes[n] { TaskState::Success } else { TaskState::Failure });
                }
                rounds += 1;
                prop_assert!(rounds <= 8);
            };
            let all_ok = (0..8).all(|n| st.get(&n) == Some(&TaskState::Success));
            prop_assert_eq!(outcome == WorkflowState::Success, all_ok);
        }
    }
}
