//! Pure scheduling decisions of a workflow run, recomputed from scratch:
//! which tasks are ready, which are skipped, and whether (and how) the run
//! is over. The master's run machine keeps the same answers incrementally;
//! this is the reference model its property tests compare it with.

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
    /// The branches finished tasks chose (conditions, switch); a task not
    /// in it chose none in particular: all its edges are taken.
    pub branches: &'a HashMap<TaskNode, Vec<String>>,
    pub failure_strategy: FailureStrategy,
    /// An operator asked to stop or pause: nothing new may start.
    pub halted: bool,
}

/// What one incoming edge of a task says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Its upstream has not finished in a way that decides the edge.
    Pending,
    /// Its upstream succeeded and the edge is taken (or the upstream is
    /// outside the run: it counts as done).
    Live,
    /// Its upstream was skipped, or chose a branch this edge is not on.
    Skip,
}

impl RunView<'_> {
    /// Whether some task failed for good (failed or killed, not forced).
    pub fn has_failure(&self) -> bool {
        self.states.values().any(|s| s.is_failure())
    }

    /// Whether a task instance is still in flight (may still change state
    /// without an operator).
    pub fn has_active(&self) -> bool {
        self.states.values().any(|s| !s.is_final())
    }

    /// What the edge `up` → `node` says.
    pub fn input(&self, up: TaskNode, node: TaskNode) -> Input {
        if !self.selected.contains(&up) {
            return Input::Live;
        }
        match self.states.get(&up) {
            Some(TaskState::Skipped) => Input::Skip,
            Some(s) if s.is_success() => {
                if self.dag.condition(up, node).taken(self.branches.get(&up).map(Vec::as_slice)) {
                    Input::Live
                } else {
                    Input::Skip
                }
            }
            _ => Input::Pending,
        }
    }

    /// Whether new tasks may start (or be skipped): not halted, and no
    /// failure under the `end` strategy.
    pub fn may_start(&self) -> bool {
        let ended = self.failure_strategy == FailureStrategy::End && self.has_failure();
        !self.halted && !ended
    }

    /// Selected tasks not created yet whose inputs are all decided, split
    /// into those to run (no upstream, or at least one live input) and those
    /// to skip (every input skipped), each in topological order.
    pub fn next(&self) -> (Vec<TaskNode>, Vec<TaskNode>) {
        let (mut run, mut skip) = (Vec::new(), Vec::new());
        if !self.may_start() {
            return (run, skip);
        }
        for &n in self.dag.topological_order() {
            if !self.selected.contains(&n) || self.states.contains_key(&n) {
                continue;
            }
            let inputs: Vec<Input> = self.dag.upstream(n).into_iter().map(|up| self.input(up, n)).collect();
            if inputs.contains(&Input::Pending) {
                continue;
            }
            if !inputs.is_empty() && inputs.iter().all(|i| *i == Input::Skip) {
                skip.push(n);
            } else {
                run.push(n);
            }
        }
        (run, skip)
    }

    /// The tasks to run now ([`RunView::next`]'s first half).
    pub fn ready(&self) -> Vec<TaskNode> {
        self.next().0
    }

    /// The run's final state once nothing is in flight and nothing more can
    /// start or be skipped; `None` while it goes on. A stop wins over the
    /// task outcome; skipped tasks count as done.
    pub fn outcome(&self, stopping: bool) -> Option<WorkflowState> {
        if self.has_active() {
            return None;
        }
        if stopping {
            return Some(WorkflowState::Stopped);
        }
        if !self.halted {
            let (run, skip) = self.next();
            if !run.is_empty() || !skip.is_empty() {
                return None;
            }
        }
        let all_done = self.selected.iter().all(|n| self.states.get(n).is_some_and(|s| s.satisfies()));
        Some(if all_done { WorkflowState::Success } else { WorkflowState::Failure })
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
        RunView { dag, selected, states, branches: no_branches(), failure_strategy: fs, halted: false }
    }

    fn no_branches() -> &'static HashMap<TaskNode, Vec<String>> {
        static NONE: std::sync::OnceLock<HashMap<TaskNode, Vec<String>>> = std::sync::OnceLock::new();
        NONE.get_or_init(HashMap::new)
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
    fn a_branch_not_taken_is_skipped_down_to_where_it_joins() {
        // sw → yes → y2; sw → no; yes + no → join
        let mut dag = Dag::build([("sw", vec![]), ("yes", vec!["sw"]), ("y2", vec!["yes"]), ("no", vec!["sw"]), ("join", vec!["yes", "no"])]).unwrap();
        dag.set_condition("sw", "yes", crate::dag::EdgeCondition::Branch("yes".into())).unwrap();
        dag.set_condition("sw", "no", crate::dag::EdgeCondition::Branch("no".into())).unwrap();
        let all: BTreeSet<TaskNode> = (0..dag.len()).collect();
        let branches: HashMap<TaskNode, Vec<String>> = [(dag.node("sw").unwrap(), vec!["no".to_string()])].into();
        let mut st = states(&dag, &[("sw", TaskState::Success)]);
        let v = RunView { branches: &branches, ..view(&dag, &all, &st, FailureStrategy::End) };
        let (run, skip) = v.next();
        assert_eq!((names(&dag, run), names(&dag, skip)), (vec!["no"], vec!["yes"]));
        st.insert(dag.node("yes").unwrap(), TaskState::Skipped);
        st.insert(dag.node("no").unwrap(), TaskState::Success);
        let v = RunView { branches: &branches, ..view(&dag, &all, &st, FailureStrategy::End) };
        let (run, skip) = v.next();
        assert_eq!((names(&dag, run), names(&dag, skip)), (vec!["join"], vec!["y2"]), "all inputs skipped: skip; one live: run");
        st.insert(dag.node("y2").unwrap(), TaskState::Skipped);
        st.insert(dag.node("join").unwrap(), TaskState::Success);
        let v = RunView { branches: &branches, ..view(&dag, &all, &st, FailureStrategy::End) };
        assert_eq!(v.outcome(false), Some(WorkflowState::Success), "a run whose branches were skipped succeeds");
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
                let v = RunView { dag: &dag, selected: &all, states: &st, branches: no_branches(), failure_strategy: fs, halted: false };
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
