//! Which tasks of a run may start, kept incrementally: every task counts the
//! inputs (incoming edges within the run) not decided yet and the live ones,
//! so that a task's end touches only its downstream tasks instead of a scan
//! of the whole DAG. [`sluice_domain::RunView`] computes the same from
//! scratch; the property tests hold the two together.

use std::collections::BTreeSet;

use sluice_domain::{Dag, TaskNode, TaskState};

/// Readiness of the tasks of one run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    selected: Vec<bool>,
    selected_count: usize,
    /// Per task: incoming edges from tasks of the run (edges from tasks
    /// outside it count as decided and live from the start).
    inputs: Vec<u32>,
    undecided: Vec<u32>,
    live: Vec<u32>,
    /// Tasks with a row (created, or being created): never ready again.
    created: Vec<bool>,
    /// Position of each task in the topological order, so that ready tasks
    /// come out in that order.
    position: Vec<usize>,
    topo: Vec<TaskNode>,
    /// Not created, every input decided, at least one live (or no input).
    ready: BTreeSet<usize>,
    /// Not created, every input decided, none live.
    skippable: BTreeSet<usize>,
}

impl Plan {
    /// A plan for `selected` tasks of `dag`, none created or decided yet.
    pub fn new(dag: &Dag, selected: &BTreeSet<TaskNode>) -> Plan {
        let n = dag.len();
        let topo = dag.topological_order().to_vec();
        let mut position = vec![0; n];
        for (i, &node) in topo.iter().enumerate() {
            position[node] = i;
        }
        let selected_flags: Vec<bool> = (0..n).map(|i| selected.contains(&i)).collect();
        let mut plan = Plan {
            selected_count: selected.len(),
            inputs: vec![0; n],
            undecided: vec![0; n],
            live: vec![0; n],
            created: vec![false; n],
            position,
            topo,
            ready: BTreeSet::new(),
            skippable: BTreeSet::new(),
            selected: selected_flags,
        };
        for node in 0..n {
            for up in dag.upstream(node) {
                plan.inputs[node] += 1;
                if plan.selected[up] {
                    plan.undecided[node] += 1;
                } else {
                    plan.live[node] += 1;
                }
            }
        }
        for node in 0..n {
            plan.settle(node);
        }
        plan
    }

    pub fn is_selected(&self, node: TaskNode) -> bool {
        self.selected[node]
    }

    pub fn selected_count(&self) -> usize {
        self.selected_count
    }

    /// Moves `node` into or out of the ready and skippable sets after its
    /// counters changed.
    fn settle(&mut self, node: TaskNode) {
        let at = self.position[node];
        self.ready.remove(&at);
        self.skippable.remove(&at);
        if !self.selected[node] || self.created[node] || self.undecided[node] > 0 {
            return;
        }
        if self.inputs[node] > 0 && self.live[node] == 0 {
            self.skippable.insert(at);
        } else {
            self.ready.insert(at);
        }
    }

    /// `node` has a row now (or is being given one).
    pub fn created(&mut self, node: TaskNode) {
        self.created[node] = true;
        self.settle(node);
    }

    /// The edge `up` → `down` is decided: live (the downstream task may run
    /// because of it) or not (skipped upstream, branch not taken). Call it
    /// once per edge, when `up` reached a final state that satisfies.
    pub fn decide(&mut self, down: TaskNode, live: bool) {
        debug_assert!(self.undecided[down] > 0, "an edge decided twice");
        self.undecided[down] -= 1;
        if live {
            self.live[down] += 1;
        }
        self.settle(down);
    }

    /// Ready tasks, in topological order.
    pub fn ready(&self) -> Vec<TaskNode> {
        self.ready.iter().map(|&at| self.topo[at]).collect()
    }

    /// Tasks to skip, in topological order.
    pub fn skippable(&self) -> Vec<TaskNode> {
        self.skippable.iter().map(|&at| self.topo[at]).collect()
    }

    pub fn has_next(&self) -> bool {
        !self.ready.is_empty() || !self.skippable.is_empty()
    }
}

/// Whether a task in `state` decides its outgoing edges (it will not change
/// without an operator, and lets the run go on).
pub(crate) fn decides(state: TaskState) -> bool {
    state.satisfies()
}
