//! The task graph of a workflow version, built and validated with petgraph.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed, Walker};
use petgraph::Direction;

use crate::model::RunScope;

/// Index of a task in a [`Dag`] (its position in the input order).
pub type TaskNode = usize;

/// Why a set of tasks does not form a DAG. Every message names the tasks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    #[error("the workflow has no tasks")]
    Empty,
    #[error("duplicate task names: {}", quoted(.0))]
    DuplicateTasks(Vec<String>),
    #[error("task `{task}` depends on unknown task `{dep}`")]
    UnknownDependency { task: String, dep: String },
    #[error("dependency cycle between tasks: {}", quoted(.0))]
    Cycle(Vec<String>),
    #[error("unknown task `{0}`")]
    UnknownTask(String),
    #[error("task `{to}` does not depend on `{from}`: no edge to put a condition on")]
    NoEdge { from: String, to: String },
}

/// When an edge lets its downstream task run. Plain dependencies are
/// `Always`; the edges out of a conditions or switch task carry the branch
/// they belong to, and are taken only if the task chose that branch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum EdgeCondition {
    #[default]
    Always,
    Branch(String),
}

impl EdgeCondition {
    /// Whether the edge is taken, given the branches its upstream task
    /// chose (`None`: it chose none in particular, every edge is taken).
    pub fn taken(&self, branches: Option<&[String]>) -> bool {
        match (self, branches) {
            (EdgeCondition::Always, _) | (EdgeCondition::Branch(_), None) => true,
            (EdgeCondition::Branch(branch), Some(chosen)) => chosen.iter().any(|c| c == branch),
        }
    }
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// A validated, acyclic task graph. Edges point from a task to the tasks
/// that depend on it.
#[derive(Debug, Clone)]
pub struct Dag {
    names: Vec<String>,
    index: BTreeMap<String, TaskNode>,
    graph: DiGraph<(), EdgeCondition>,
    topo: Vec<TaskNode>,
}

impl Dag {
    /// Builds the graph from `(task, deps)` pairs, rejecting duplicate names,
    /// dependencies on unknown tasks and cycles.
    pub fn build<'a, I, D>(tasks: I) -> Result<Dag, DagError>
    where
        I: IntoIterator<Item = (&'a str, D)>,
        D: IntoIterator<Item = &'a str>,
    {
        let tasks: Vec<(&str, Vec<&str>)> =
            tasks.into_iter().map(|(name, deps)| (name, deps.into_iter().collect())).collect();
        if tasks.is_empty() {
            return Err(DagError::Empty);
        }
        let mut index = BTreeMap::new();
        let mut duplicates = BTreeSet::new();
        for (i, (name, _)) in tasks.iter().enumerate() {
            if index.insert(name.to_string(), i).is_some() {
                duplicates.insert(name.to_string());
            }
        }
        if !duplicates.is_empty() {
            return Err(DagError::DuplicateTasks(duplicates.into_iter().collect()));
        }
        let mut graph = DiGraph::with_capacity(tasks.len(), tasks.len());
        for _ in &tasks {
            graph.add_node(());
        }
        for (i, (name, deps)) in tasks.iter().enumerate() {
            for dep in deps {
                let Some(&from) = index.get(*dep) else {
                    return Err(DagError::UnknownDependency {
                        task: name.to_string(),
                        dep: dep.to_string(),
                    });
                };
                // Listing the same dependency twice is harmless: one edge.
                if graph.find_edge(NodeIndex::new(from), NodeIndex::new(i)).is_none() {
                    graph.add_edge(NodeIndex::new(from), NodeIndex::new(i), EdgeCondition::Always);
                }
            }
        }
        let names: Vec<String> = tasks.iter().map(|(n, _)| n.to_string()).collect();
        let topo = match toposort(&graph, None) {
            Ok(order) => order.into_iter().map(NodeIndex::index).collect(),
            Err(_) => {
                // Name every task on a cycle: the strongly connected
                // components with more than one task, or a task that
                // depends on itself.
                let mut members: Vec<String> = tarjan_scc(&graph)
                    .into_iter()
                    .filter(|scc| {
                        scc.len() > 1 || graph.find_edge(scc[0], scc[0]).is_some()
                    })
                    .flatten()
                    .map(|n| names[n.index()].clone())
                    .collect();
                members.sort();
                return Err(DagError::Cycle(members));
            }
        };
        Ok(Dag { names, index, graph, topo })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, node: TaskNode) -> &str {
        &self.names[node]
    }

    pub fn node(&self, name: &str) -> Option<TaskNode> {
        self.index.get(name).copied()
    }

    /// Tasks in a dependency-respecting order.
    pub fn topological_order(&self) -> &[TaskNode] {
        &self.topo
    }

    /// Tasks without dependencies.
    pub fn roots(&self) -> Vec<TaskNode> {
        (0..self.len()).filter(|&n| self.upstream(n).is_empty()).collect()
    }

    /// Direct dependencies of `node`.
    pub fn upstream(&self, node: TaskNode) -> Vec<TaskNode> {
        self.neighbors(node, Direction::Incoming)
    }

    /// Tasks that depend directly on `node`.
    pub fn downstream(&self, node: TaskNode) -> Vec<TaskNode> {
        self.neighbors(node, Direction::Outgoing)
    }

    /// Puts `condition` on the edge `from` → `to`, which must exist.
    pub fn set_condition(&mut self, from: &str, to: &str, condition: EdgeCondition) -> Result<(), DagError> {
        let no_edge = || DagError::NoEdge { from: from.to_owned(), to: to.to_owned() };
        let (a, b) = (self.node(from).ok_or_else(no_edge)?, self.node(to).ok_or_else(no_edge)?);
        let edge = self.graph.find_edge(NodeIndex::new(a), NodeIndex::new(b)).ok_or_else(no_edge)?;
        self.graph[edge] = condition;
        Ok(())
    }

    /// The condition on the edge `from` → `to` (`Always` if there is none).
    pub fn condition(&self, from: TaskNode, to: TaskNode) -> &EdgeCondition {
        static ALWAYS: EdgeCondition = EdgeCondition::Always;
        match self.graph.find_edge(NodeIndex::new(from), NodeIndex::new(to)) {
            Some(edge) => &self.graph[edge],
            None => &ALWAYS,
        }
    }

    fn neighbors(&self, node: TaskNode, dir: Direction) -> Vec<TaskNode> {
        let mut out: Vec<TaskNode> = self
            .graph
            .neighbors_directed(NodeIndex::new(node), dir)
            .map(NodeIndex::index)
            .collect();
        out.sort_unstable();
        out
    }

    /// `nodes` and everything that transitively depends on them.
    pub fn descendants(&self, nodes: &[TaskNode]) -> BTreeSet<TaskNode> {
        let mut out = BTreeSet::new();
        for &n in nodes {
            out.extend(Dfs::new(&self.graph, NodeIndex::new(n)).iter(&self.graph).map(NodeIndex::index));
        }
        out
    }

    /// `nodes` and everything they transitively depend on.
    pub fn ancestors(&self, nodes: &[TaskNode]) -> BTreeSet<TaskNode> {
        let reversed = Reversed(&self.graph);
        let mut out = BTreeSet::new();
        for &n in nodes {
            out.extend(Dfs::new(reversed, NodeIndex::new(n)).iter(reversed).map(NodeIndex::index));
        }
        out
    }

    /// The tasks a run started from `start` with `scope` includes.
    pub fn select(&self, start: &[&str], scope: RunScope) -> Result<BTreeSet<TaskNode>, DagError> {
        let nodes = start
            .iter()
            .map(|name| self.node(name).ok_or_else(|| DagError::UnknownTask(name.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match scope {
            RunScope::Only => nodes.into_iter().collect(),
            RunScope::Upstream => self.ancestors(&nodes),
            RunScope::Downstream => self.descendants(&nodes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(tasks: &[(&'static str, &[&'static str])]) -> Result<Dag, DagError> {
        Dag::build(tasks.iter().map(|(n, d)| (*n, d.iter().copied())))
    }

    fn names(dag: &Dag, nodes: impl IntoIterator<Item = TaskNode>) -> Vec<String> {
        nodes.into_iter().map(|n| dag.name(n).to_string()).collect()
    }

    const DIAMOND: &[(&str, &[&str])] = &[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])];

    #[test]
    fn edges_carry_conditions() {
        let mut d = dag(DIAMOND).unwrap();
        let (a, b, c) = (d.node("a").unwrap(), d.node("b").unwrap(), d.node("c").unwrap());
        assert_eq!(d.condition(a, b), &EdgeCondition::Always);
        d.set_condition("a", "b", EdgeCondition::Branch("yes".into())).unwrap();
        assert_eq!(d.condition(a, b), &EdgeCondition::Branch("yes".into()));
        assert_eq!(d.condition(a, c), &EdgeCondition::Always);
        let err = d.set_condition("b", "c", EdgeCondition::Always).unwrap_err();
        assert_eq!(err.to_string(), "task `c` does not depend on `b`: no edge to put a condition on");
        let yes = EdgeCondition::Branch("yes".into());
        assert!(yes.taken(None), "no choice made: every edge is taken");
        assert!(yes.taken(Some(&["no".into(), "yes".into()])));
        assert!(!yes.taken(Some(&["no".into()])));
        assert!(EdgeCondition::Always.taken(Some(&[])));
    }

    #[test]
    fn diamond_structure() {
        let d = dag(DIAMOND).unwrap();
        assert_eq!(names(&d, d.roots()), ["a"]);
        let a = d.node("a").unwrap();
        assert_eq!(names(&d, d.downstream(a)), ["b", "c"]);
        assert_eq!(names(&d, d.upstream(d.node("d").unwrap())), ["b", "c"]);
        let order = names(&d, d.topological_order().iter().copied());
        assert_eq!(order.first().unwrap(), "a");
        assert_eq!(order.last().unwrap(), "d");
    }

    #[test]
    fn selection_by_scope() {
        let d = dag(DIAMOND).unwrap();
        assert_eq!(names(&d, d.select(&["b"], RunScope::Only).unwrap()), ["b"]);
        assert_eq!(names(&d, d.select(&["b"], RunScope::Upstream).unwrap()), ["a", "b"]);
        assert_eq!(names(&d, d.select(&["b"], RunScope::Downstream).unwrap()), ["b", "d"]);
        assert_eq!(d.select(&["zz"], RunScope::Only).unwrap_err(), DagError::UnknownTask("zz".into()));
    }

    #[test]
    fn cycles_name_their_tasks() {
        let err = dag(&[("a", &[]), ("b", &["a", "d"]), ("c", &["b"]), ("d", &["c"]), ("e", &["d"])])
            .unwrap_err();
        assert_eq!(err, DagError::Cycle(vec!["b".into(), "c".into(), "d".into()]));
        assert_eq!(err.to_string(), "dependency cycle between tasks: `b`, `c`, `d`");
        let err = dag(&[("a", &["a"])]).unwrap_err();
        assert_eq!(err.to_string(), "dependency cycle between tasks: `a`");
    }

    #[test]
    fn unknown_dependencies_and_duplicates_are_named() {
        let err = dag(&[("a", &[]), ("b", &["x"])]).unwrap_err();
        assert_eq!(err.to_string(), "task `b` depends on unknown task `x`");
        let err = dag(&[("a", &[]), ("b", &[]), ("a", &[]), ("b", &[])]).unwrap_err();
        assert_eq!(err.to_string(), "duplicate task names: `a`, `b`");
        assert_eq!(dag(&[]).unwrap_err(), DagError::Empty);
    }

    #[test]
    fn repeated_dependency_is_one_edge() {
        let d = dag(&[("a", &[]), ("b", &["a", "a"])]).unwrap();
        assert_eq!(d.upstream(d.node("b").unwrap()), vec![d.node("a").unwrap()]);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Graphs whose edges only point from lower to higher index are
            /// acyclic: they must build, and the order must respect every edge.
            #[test]
            fn forward_edges_always_build(edges in proptest::collection::vec((0usize..12, 0usize..12), 0..40)) {
                let n = 12;
                let mut deps: Vec<Vec<String>> = vec![Vec::new(); n];
                for (a, b) in edges {
                    if a < b { deps[b].push(format!("t{a}")); }
                }
                let names: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
                let d = Dag::build(names.iter().zip(&deps).map(|(n, ds)| (n.as_str(), ds.iter().map(String::as_str)))).unwrap();
                let pos: Vec<usize> = {
                    let mut p = vec![0; n];
                    for (i, &node) in d.topological_order().iter().enumerate() { p[node] = i; }
                    p
                };
                for node in 0..n {
                    for up in d.upstream(node) { prop_assert!(pos[up] < pos[node]); }
                    prop_assert!(d.descendants(&[node]).contains(&node));
                    for down in d.descendants(&[node]) { prop_assert!(d.ancestors(&[down]).contains(&node)); }
                }
            }

            /// Adding one backward edge along an existing forward path makes a
            /// cycle, and the error names both ends.
            #[test]
            fn back_edge_on_a_chain_is_a_cycle(len in 2usize..10, from in 0usize..10, to in 0usize..10) {
                let (lo, hi) = (from.min(to) % len, from.max(to) % len);
                prop_assume!(lo < hi);
                let names: Vec<String> = (0..len).map(|i| format!("t{i}")).collect();
                let mut deps: Vec<Vec<&str>> = (0..len).map(|i| if i == 0 { vec![] } else { vec![names[i - 1].as_str()] }).collect();
                deps[lo].push(names[hi].as_str());
                let err = Dag::build(names.iter().map(String::as_str).zip(deps)).unwrap_err();
                match err {
                    DagError::Cycle(members) => {
                        prop_assert!(members.contains(&names[lo]) && members.contains(&names[hi]));
                        prop_assert_eq!(members.len(), hi - lo + 1);
                    }
                    other => prop_assert!(false, "expected a cycle, got {other}"),
                }
            }
        }
    }
}
