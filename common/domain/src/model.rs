//! Definitions (what users write) and runs (what the engine executes).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::*;
use crate::state::{TaskState, WorkflowState};

/// Wall-clock instant; stored as milliseconds since the Unix epoch.
pub type Timestamp = DateTime<Utc>;

/// Key/value parameters (workflow, task, run-time). Ordered so that stored
/// JSON and change detection are deterministic.
pub type Params = BTreeMap<String, String>;

/// Declares a fieldless enum with a lowercase wire name per variant, and
/// `Display`/`FromStr`/serde through that name, so the database, the API and
/// the CLI all spell values the same way.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::model::UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    _ => Err($crate::model::UnknownValue {
                        kind: stringify!($name),
                        value: s.to_owned(),
                        expected: &[$($wire),+],
                    }),
                }
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = <String as ::serde::Deserialize>::deserialize(d)?;
                raw.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use wire_enum;

/// A value that is not one of an enum's names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`, expected one of: {}", expected.join(", "))]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static [&'static str],
}

wire_enum!(
    /// Five levels for workflows and tasks; `Highest` runs first.
    #[derive(Default)]
    Priority {
        Highest = "highest",
        High = "high",
        #[default]
        Medium = "medium",
        Low = "low",
        Lowest = "lowest",
    }
);

impl Priority {
    /// 0 for `Highest` .. 4 for `Lowest`: the digit used in queue keys.
    pub fn rank(self) -> u8 {
        self as u8
    }

    pub fn from_rank(rank: u8) -> Option<Priority> {
        Priority::ALL.get(rank as usize).copied()
    }
}

wire_enum!(
    /// What a workflow does when one of its tasks fails for good.
    #[derive(Default)]
    FailureStrategy {
        /// Kill the running siblings and fail the workflow at once.
        #[default]
        End = "end",
        /// Run every branch not downstream of the failure, then fail.
        Continue = "continue",
    }
);

wire_enum!(
    /// What happens when a task outlives its timeout.
    #[derive(Default)]
    TimeoutStrategy {
        /// Alert, keep running.
        #[default]
        Warn = "warn",
        /// Kill the task's process group; the attempt fails.
        Fail = "fail",
        /// Both.
        WarnFail = "warn_fail",
    }
);

impl TimeoutStrategy {
    pub fn warns(self) -> bool {
        matches!(self, TimeoutStrategy::Warn | TimeoutStrategy::WarnFail)
    }
    pub fn fails(self) -> bool {
        matches!(self, TimeoutStrategy::Fail | TimeoutStrategy::WarnFail)
    }
}

wire_enum!(
    /// What a schedule does about fire times missed while no master ran it.
    #[derive(Default)]
    MisfirePolicy {
        /// One run stands for all the missed times.
        #[default]
        RunOnce = "run_once",
        /// Every missed time runs, oldest first.
        RunAll = "run_all",
        /// Missed times are dropped.
        Skip = "skip",
    }
);

wire_enum!(
    /// Which tasks a run started from chosen tasks includes.
    RunScope {
        /// Only the chosen tasks.
        Only = "only",
        /// The chosen tasks and everything upstream of them.
        Upstream = "upstream",
        /// The chosen tasks and everything downstream of them.
        Downstream = "downstream",
    }
);

wire_enum!(
    /// The kinds of request a command row can carry.
    CommandKind {
        Start = "start",
        Rerun = "rerun",
        RecoverFailure = "recover_failure",
        StartFromTasks = "start_from_tasks",
        Backfill = "backfill",
        Pause = "pause",
        Stop = "stop",
        Resume = "resume",
        RecoverFailover = "recover_failover",
        /// Kill one task instance (named in `start_tasks`) of a running instance.
        KillTask = "kill_task",
        /// Mark a failed or killed task (named in `start_tasks`) successful so
        /// that its downstream tasks can run.
        ForceSuccess = "force_success",
    }
);


/// A name that is not acceptable for a project, workflow, task or group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name `{name}`: {reason}")]
pub struct InvalidName {
    pub kind: &'static str,
    pub name: String,
    pub reason: &'static str,
}

pub const MAX_NAME_LEN: usize = 128;

/// Validates a user-chosen name: 1 to 128 characters, letters (any script),
/// digits, `_`, `-` and `.`. No `/` (the CLI writes `project/workflow`), no
/// whitespace, and not only dots.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), InvalidName> {
    let fail = |reason| Err(InvalidName { kind, name: name.to_owned(), reason });
    if name.is_empty() {
        return fail("must not be empty");
    }
    if name.chars().count() > MAX_NAME_LEN {
        return fail("must be at most 128 characters");
    }
    if !name.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return fail("may contain only letters, digits, `_`, `-` and `.`");
    }
    if name.chars().all(|c| c == '.') {
        return fail("must not consist of dots only");
    }
    Ok(())
}

/// The group of workers a task may run on. `default` always exists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct WorkerGroup(String);

impl WorkerGroup {
    pub const DEFAULT: &'static str = "default";

    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        validate_name("worker group", &name)?;
        Ok(WorkerGroup(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for WorkerGroup {
    fn default() -> Self {
        WorkerGroup(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for WorkerGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for WorkerGroup {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkerGroup::new(s)
    }
}

impl<'de> Deserialize<'de> for WorkerGroup {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        WorkerGroup::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The kind of a task (`shell`, `python`, ...). Which kinds exist is decided
/// by the task plugins the worker and master register, not here.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskType(pub String);

impl TaskType {
    pub fn new(name: impl Into<String>) -> Self {
        TaskType(name.into().to_ascii_lowercase())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Durations travel as human text (`500ms`, `30s`, `10m`, `1h`); a bare
/// integer is read as milliseconds.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Millis(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(Duration::from_millis(ms)),
            Raw::Text(text) => parse(&text).map_err(serde::de::Error::custom),
        }
    }

    /// Parses `500ms`, `30s`, `10m`, `1h`, `1h 30m`.
    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("invalid duration `{text}` ({e}); use e.g. 500ms, 30s, 10m, 1h"))
    }

    /// The same, for `Option<Duration>` fields.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] Duration);
            Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(d)| d))
        }
    }
}

// ---------------------------------------------------------------------------
// Definitions

/// A namespace for workflows, with its own parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    pub description: String,
    pub params: Params,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A task as the user writes it. Everything but `deps` makes up one version
/// of a task definition; `deps` become the workflow version's edges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Type-specific settings (`script` for shell and python, ...), checked
    /// by the task type's plugin.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub body: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<String>,
    #[serde(default, skip_serializing_if = "Params::is_empty")]
    pub params: Params,
    #[serde(default)]
    pub retries: u32,
    #[serde(default, with = "duration_text")]
    pub retry_interval: Duration,
    #[serde(default, with = "duration_text::option", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub timeout_strategy: TimeoutStrategy,
    #[serde(default)]
    pub priority: Priority,
    /// Overrides the workflow's group for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_group: Option<WorkerGroup>,
}

impl TaskSpec {
    /// A task of `task_type` with defaults everywhere else.
    pub fn new(name: impl Into<String>, task_type: impl Into<String>) -> Self {
        TaskSpec {
            name: name.into(),
            task_type: TaskType::new(task_type),
            description: String::new(),
            body: serde_json::Map::new(),
            deps: Vec::new(),
            params: Params::new(),
            retries: 0,
            retry_interval: Duration::ZERO,
            timeout: None,
            timeout_strategy: TimeoutStrategy::default(),
            priority: Priority::default(),
            worker_group: None,
        }
    }

    /// Whether two specs define the same task version (edges aside).
    pub fn same_definition(&self, other: &TaskSpec) -> bool {
        TaskSpec { deps: Vec::new(), ..self.clone() } == TaskSpec { deps: Vec::new(), ..other.clone() }
    }
}

/// A workflow as the user writes it: global settings and a DAG of tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Params::is_empty")]
    pub params: Params,
    #[serde(default)]
    pub failure_strategy: FailureStrategy,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub worker_group: WorkerGroup,
    pub tasks: Vec<TaskSpec>,
}

/// Why a workflow spec cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Name(#[from] InvalidName),
    #[error(transparent)]
    Dag(#[from] crate::dag::DagError),
    #[error("task `{task}`: {message}")]
    Task { task: String, message: String },
}

impl WorkflowSpec {
    /// Checks names and the DAG; returns the DAG so callers need not build it
    /// twice.
    pub fn validate(&self) -> Result<crate::dag::Dag, SpecError> {
        validate_name("workflow", &self.name)?;
        for task in &self.tasks {
            validate_name("task", &task.name)?;
            if task.task_type.as_str().is_empty() {
                return Err(SpecError::Task {
                    task: task.name.clone(),
                    message: "type must not be empty".into(),
                });
            }
        }
        let dag = crate::dag::Dag::build(
            self.tasks.iter().map(|t| (t.name.as_str(), t.deps.iter().map(String::as_str))),
        )?;
        Ok(dag)
    }

    /// The spec with tasks and deps in a canonical order, so that two specs
    /// that describe the same workflow compare equal.
    pub fn normalized(&self) -> WorkflowSpec {
        let mut spec = self.clone();
        spec.tasks.sort_by(|a, b| a.name.cmp(&b.name));
        for task in &mut spec.tasks {
            task.deps.sort();
            task.deps.dedup();
        }
        spec
    }
}

/// One stored version of a task definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDefinition {
    pub id: TaskDefinitionId,
    pub version: u32,
    /// The spec of this version; `deps` are those of the workflow version it
    /// was loaded with.
    pub spec: TaskSpec,
    pub created_at: Timestamp,
}

/// One stored version of a workflow definition, with the task versions it
/// is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowDefinition {
    pub id: WorkflowId,
    pub project_id: ProjectId,
    pub project: String,
    pub version: u32,
    pub name: String,
    pub description: String,
    pub params: Params,
    pub failure_strategy: FailureStrategy,
    pub priority: Priority,
    pub worker_group: WorkerGroup,
    pub tasks: Vec<TaskDefinition>,
    pub created_at: Timestamp,
}

impl WorkflowDefinition {
    /// The spec this version was stored from (normalized).
    pub fn spec(&self) -> WorkflowSpec {
        WorkflowSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            params: self.params.clone(),
            failure_strategy: self.failure_strategy,
            priority: self.priority,
            worker_group: self.worker_group.clone(),
            tasks: self.tasks.iter().map(|t| t.spec.clone()).collect(),
        }
        .normalized()
    }

    pub fn task(&self, name: &str) -> Option<&TaskDefinition> {
        self.tasks.iter().find(|t| t.spec.name == name)
    }
}

/// A row of the workflow listing: the latest version's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowSummary {
    pub id: WorkflowId,
    pub project_id: ProjectId,
    pub name: String,
    pub description: String,
    pub version: u32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Quartz cron (with seconds) evaluated in an IANA time zone.
    Cron { expression: String, timezone: String },
    /// Every `every`, optionally only `times` times.
    Interval {
        #[serde(with = "duration_text")]
        every: Duration,
        times: Option<u32>,
    },
}

/// A schedule attached to a workflow definition (always its latest version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: ScheduleId,
    pub workflow_id: WorkflowId,
    pub trigger: Trigger,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub misfire: MisfirePolicy,
    pub online: bool,
    /// The last fire time a command was written for; misfire handling starts
    /// from here.
    pub last_fire: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What a caller provides to create or replace a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub trigger: Trigger,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub misfire: MisfirePolicy,
}

// ---------------------------------------------------------------------------
// Commands and runs

/// Run settings of a `start` command: a new run of a workflow (manual,
/// scheduled or a backfill's), or the start of one the API pre-created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRun {
    pub workflow_id: WorkflowId,
    /// The definition version to run; `None` means the latest.
    pub workflow_version: Option<u32>,
    /// The instance the API (or a backfill) created with the command.
    pub workflow_instance_id: Option<WorkflowInstanceId>,
    pub params: Params,
    pub priority: Option<Priority>,
    pub worker_group: Option<WorkerGroup>,
    pub failure_strategy: Option<FailureStrategy>,
    /// Run only these tasks (with `scope`); empty means every task.
    pub start_tasks: Vec<String>,
    pub scope: Option<RunScope>,
    pub schedule_id: Option<ScheduleId>,
    /// The fire time or business time the run is for.
    pub schedule_time: Option<Timestamp>,
}

impl StartRun {
    /// A plain start of the latest version with no overrides.
    pub fn of(workflow_id: WorkflowId) -> Self {
        StartRun {
            workflow_id,
            workflow_version: None,
            workflow_instance_id: None,
            params: Params::new(),
            priority: None,
            worker_group: None,
            failure_strategy: None,
            start_tasks: Vec::new(),
            scope: None,
            schedule_id: None,
            schedule_time: None,
        }
    }
}

/// The instance a command acts on (with its workflow, so that deleting a
/// workflow can drop the commands nobody took yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstanceTarget {
    pub workflow_id: WorkflowId,
    pub workflow_instance_id: WorkflowInstanceId,
}

impl InstanceTarget {
    pub fn of(instance: &WorkflowInstance) -> Self {
        InstanceTarget { workflow_id: instance.workflow_id, workflow_instance_id: instance.id }
    }
}

/// A request to do something to a workflow, consumed by exactly one master
/// in the same transaction as the write that carries out its effect. Each
/// kind carries what it needs and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NewCommand {
    Start(StartRun),
    /// Run every task of a finished instance again (run + 1).
    Rerun(InstanceTarget),
    /// Run the failed and killed tasks of a failed or stopped instance and
    /// everything below them again (run + 1), after marking the tasks in
    /// `force_success` (failed or killed ones) forced-successful.
    Recover { target: InstanceTarget, force_success: Vec<String> },
    /// Go on with a paused instance.
    Resume(InstanceTarget),
    /// Let running tasks finish, start nothing new.
    Pause(InstanceTarget),
    /// Kill the running tasks, end `stopped`.
    Stop(InstanceTarget),
    /// Kill these tasks of a running instance.
    KillTask { target: InstanceTarget, tasks: Vec<String> },
    /// Mark these failed or killed tasks of a running instance successful
    /// so that their downstream runs. (Of an instance at rest: see
    /// `Recover::force_success`.)
    ForceSuccess { target: InstanceTarget, tasks: Vec<String> },
}

impl NewCommand {
    /// A plain `start` of the latest version with no overrides.
    pub fn start(workflow_id: WorkflowId) -> Self {
        NewCommand::Start(StartRun::of(workflow_id))
    }

    pub fn kind(&self) -> CommandKind {
        match self {
            NewCommand::Start(_) => CommandKind::Start,
            NewCommand::Rerun(_) => CommandKind::Rerun,
            NewCommand::Recover { .. } => CommandKind::RecoverFailure,
            NewCommand::Resume(_) => CommandKind::Resume,
            NewCommand::Pause(_) => CommandKind::Pause,
            NewCommand::Stop(_) => CommandKind::Stop,
            NewCommand::KillTask { .. } => CommandKind::KillTask,
            NewCommand::ForceSuccess { .. } => CommandKind::ForceSuccess,
        }
    }

    pub fn workflow_id(&self) -> WorkflowId {
        match self {
            NewCommand::Start(start) => start.workflow_id,
            other => other.target().expect("every other kind has a target").workflow_id,
        }
    }

    /// The instance it acts on; for a start, the pre-created one if any.
    pub fn workflow_instance_id(&self) -> Option<WorkflowInstanceId> {
        match self {
            NewCommand::Start(start) => start.workflow_instance_id,
            other => other.target().map(|t| t.workflow_instance_id),
        }
    }

    fn target(&self) -> Option<InstanceTarget> {
        match self {
            NewCommand::Start(_) => None,
            NewCommand::Rerun(t) | NewCommand::Resume(t) | NewCommand::Pause(t) | NewCommand::Stop(t) => Some(*t),
            NewCommand::Recover { target, .. } | NewCommand::KillTask { target, .. } | NewCommand::ForceSuccess { target, .. } => {
                Some(*target)
            }
        }
    }

    /// Whether it brings an instance at rest back to life (at most one of
    /// these may wait per instance: the database refuses a second).
    pub fn is_restart(&self) -> bool {
        matches!(self, NewCommand::Rerun(_) | NewCommand::Recover { .. } | NewCommand::Resume(_))
    }

    /// Whether a live driver of the instance carries it out.
    pub fn is_for_driver(&self) -> bool {
        matches!(self, NewCommand::Pause(_) | NewCommand::Stop(_) | NewCommand::KillTask { .. } | NewCommand::ForceSuccess { .. })
    }
}

impl NewWorkflowInstance {
    /// A plain start of `def`'s version with its own priority, worker group
    /// and failure strategy: no parameters, every task, no owner yet.
    pub fn start(def: &WorkflowDefinition) -> Self {
        NewWorkflowInstance {
            workflow_id: def.id,
            workflow_version: def.version,
            command_kind: CommandKind::Start,
            params: Params::new(),
            priority: def.priority,
            worker_group: def.worker_group.clone(),
            failure_strategy: def.failure_strategy,
            schedule_time: None,
            owner: None,
            start_tasks: Vec::new(),
            scope: None,
        }
    }
}

/// A stored command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: CommandId,
    pub spec: NewCommand,
    /// The master that claimed it, if any.
    pub owner: Option<String>,
    pub claimed_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// Proof of ownership a master presents with every write to a workflow
/// instance and its tasks. A bump of the epoch (failover adoption) makes
/// every later write with the old value fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    pub workflow_instance_id: WorkflowInstanceId,
    pub epoch: i64,
}

/// What a master provides to create a workflow instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewWorkflowInstance {
    pub workflow_id: WorkflowId,
    pub workflow_version: u32,
    pub command_kind: CommandKind,
    pub params: Params,
    pub priority: Priority,
    pub worker_group: WorkerGroup,
    pub failure_strategy: FailureStrategy,
    pub schedule_time: Option<Timestamp>,
    /// The owning master; `None` for an instance pre-created by the API that
    /// a master adopts when it claims the command.
    pub owner: Option<String>,
    /// Run only these tasks (with `scope`); empty means every task.
    pub start_tasks: Vec<String>,
    pub scope: Option<RunScope>,
}

/// One run of a workflow definition version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowInstance {
    pub id: WorkflowInstanceId,
    pub project_id: ProjectId,
    pub workflow_id: WorkflowId,
    pub workflow_version: u32,
    pub workflow_name: String,
    pub state: WorkflowState,
    pub command_kind: CommandKind,
    pub params: Params,
    pub priority: Priority,
    pub worker_group: WorkerGroup,
    pub failure_strategy: FailureStrategy,
    pub schedule_time: Option<Timestamp>,
    pub owner: Option<String>,
    pub owner_epoch: i64,
    /// 1 for the first run; bumped by rerun and recover.
    pub run: u32,
    /// The tasks this run is limited to (with `scope`); empty: all tasks.
    pub start_tasks: Vec<String>,
    pub scope: Option<RunScope>,
    pub backfill_id: Option<BackfillId>,
    pub start_time: Option<Timestamp>,
    pub end_time: Option<Timestamp>,
    /// Why it ended as it did when no task says so (its definition is gone,
    /// it was stopped before it started).
    pub reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl WorkflowInstance {
    pub fn fence(&self) -> Fence {
        Fence { workflow_instance_id: self.id, epoch: self.owner_epoch }
    }
}

/// What a master provides to create a task instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTaskInstance {
    pub workflow_instance_id: WorkflowInstanceId,
    pub task_definition_id: TaskDefinitionId,
    pub name: String,
    pub task_type: TaskType,
    pub priority: Priority,
    pub worker_group: WorkerGroup,
    pub max_retries: u32,
    /// The instance's run (1, then +1 per rerun/recover) it is created in.
    pub run: u32,
    /// The path from `submitted` to the state it is created in: none, or
    /// `[Dispatch]` (created and queued at once), or `[Skip]`.
    pub events: Vec<crate::state::TaskEvent>,
    /// Why it ended, for one created final (a skip).
    pub message: Option<String>,
}

impl NewTaskInstance {
    /// The state it is created in, through the transition table.
    pub fn state(&self) -> Result<TaskState, crate::state::InvalidTransition> {
        TaskState::Submitted.after(&self.events)
    }
}

/// One task of one workflow run. Retries and failovers are further
/// attempts of the same task instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInstance {
    pub id: TaskInstanceId,
    pub workflow_instance_id: WorkflowInstanceId,
    pub task_definition_id: TaskDefinitionId,
    pub name: String,
    pub task_type: TaskType,
    pub state: TaskState,
    /// 1 for the first attempt; retries and failovers add one each.
    pub attempt: u32,
    pub max_retries: u32,
    /// Attempts started because a worker was lost, not counted as retries.
    pub failovers: u32,
    pub priority: Priority,
    pub worker_group: WorkerGroup,
    /// `host:port` of the worker running (or that ran) the current attempt.
    pub host: Option<String>,
    pub exit_code: Option<i32>,
    /// When a retry waiting in `RetryWait` becomes due.
    pub retry_at: Option<Timestamp>,
    pub log_path: Option<String>,
    pub submit_time: Timestamp,
    pub start_time: Option<Timestamp>,
    pub end_time: Option<Timestamp>,
    pub updated_at: Timestamp,
    /// Output parameters the last attempt printed (`${setValue(k=v)}`).
    pub outputs: Params,
    /// Why the last attempt ended as it did ("exit code 3", "timed out
    /// after 2s", "cannot resolve `$[...]`").
    pub message: Option<String>,
    /// The instance run the current attempt belongs to.
    pub run: u32,
    /// Retries used in the current run (failover attempts are not retries;
    /// a rerun starts again from zero).
    pub retries: u32,
    /// An operator asked to kill the current attempt, and why: kept until
    /// the attempt ends so that a master taking over sends the kill again.
    pub kill_reason: Option<String>,
    /// Of a finished task whose outgoing edges carry conditions (conditions,
    /// switch): the branches it took. `None`: every edge is taken.
    pub branches: Option<Vec<String>>,
    /// An id the task's system gave the attempt (a YARN application id),
    /// which its plugin's kill hook uses.
    pub external_id: Option<String>,
}

impl TaskInstance {
    pub fn can_retry(&self) -> bool {
        self.retries < self.max_retries
    }
}

/// Fields of a task instance a master changes, fenced by the workflow
/// instance's epoch. `None` leaves a field as it is. The state is not one of
/// them: it moves only by [`TaskChange`] events through the transition table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskUpdate {
    pub attempt: Option<u32>,
    pub failovers: Option<u32>,
    pub host: Option<Option<String>>,
    pub exit_code: Option<Option<i32>>,
    pub retry_at: Option<Option<Timestamp>>,
    pub log_path: Option<Option<String>>,
    pub start_time: Option<Option<Timestamp>>,
    pub end_time: Option<Option<Timestamp>>,
    pub outputs: Option<Params>,
    pub message: Option<Option<String>>,
    pub run: Option<u32>,
    pub retries: Option<u32>,
    pub kill_reason: Option<Option<String>>,
    pub branches: Option<Option<Vec<String>>>,
    pub external_id: Option<Option<String>>,
}

impl TaskUpdate {
    /// This change followed by `later`: a field `later` sets wins.
    pub fn then(self, later: TaskUpdate) -> TaskUpdate {
        TaskUpdate {
            attempt: later.attempt.or(self.attempt),
            failovers: later.failovers.or(self.failovers),
            host: later.host.or(self.host),
            exit_code: later.exit_code.or(self.exit_code),
            retry_at: later.retry_at.or(self.retry_at),
            log_path: later.log_path.or(self.log_path),
            start_time: later.start_time.or(self.start_time),
            end_time: later.end_time.or(self.end_time),
            outputs: later.outputs.or(self.outputs),
            message: later.message.or(self.message),
            run: later.run.or(self.run),
            retries: later.retries.or(self.retries),
            kill_reason: later.kill_reason.or(self.kill_reason),
            branches: later.branches.or(self.branches),
            external_id: later.external_id.or(self.external_id),
        }
    }

    /// Applies the change to `task` as the store would (`updated_at` aside).
    pub fn apply_to(&self, task: &mut TaskInstance) {
        fn set<T: Clone>(field: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *field = value.clone();
            }
        }
        set(&mut task.attempt, &self.attempt);
        set(&mut task.failovers, &self.failovers);
        set(&mut task.host, &self.host);
        set(&mut task.exit_code, &self.exit_code);
        set(&mut task.retry_at, &self.retry_at);
        set(&mut task.log_path, &self.log_path);
        set(&mut task.start_time, &self.start_time);
        set(&mut task.end_time, &self.end_time);
        set(&mut task.outputs, &self.outputs);
        set(&mut task.message, &self.message);
        set(&mut task.run, &self.run);
        set(&mut task.retries, &self.retries);
        set(&mut task.kill_reason, &self.kill_reason);
        set(&mut task.branches, &self.branches);
        set(&mut task.external_id, &self.external_id);
    }
}

/// A state change of one task instance: the state it is expected to be in
/// (the store refuses the write if it is not: compare-and-set), the events
/// that move it, in order, through the transition table (none: fields
/// only), and the fields that change with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskChange {
    pub id: TaskInstanceId,
    pub from: TaskState,
    pub events: Vec<crate::state::TaskEvent>,
    pub update: TaskUpdate,
}

impl TaskChange {
    pub fn new(task: &TaskInstance, events: Vec<crate::state::TaskEvent>, update: TaskUpdate) -> Self {
        TaskChange { id: task.id, from: task.state, events, update }
    }

    /// The state the change leads to, or why the table refuses it.
    pub fn to(&self) -> Result<TaskState, crate::state::InvalidTransition> {
        self.from.after(&self.events)
    }

    /// This change followed by `later` of the same task (a burst's events
    /// merged into one write).
    pub fn then(self, later: TaskChange) -> TaskChange {
        debug_assert_eq!(self.id, later.id);
        let mut events = self.events;
        events.extend(later.events);
        TaskChange { id: self.id, from: self.from, events, update: self.update.then(later.update) }
    }
}

/// Fields of a workflow instance a master changes, fenced like
/// [`TaskUpdate`]; the state moves only by [`WorkflowChange`] events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowUpdate {
    /// What the instance is doing now (a rerun or recover of a finished one).
    pub command_kind: Option<CommandKind>,
    pub run: Option<u32>,
    pub start_time: Option<Option<Timestamp>>,
    pub end_time: Option<Option<Timestamp>>,
    pub reason: Option<Option<String>>,
}

/// A state change of a workflow instance, compare-and-set like
/// [`TaskChange`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowChange {
    pub from: WorkflowState,
    pub events: Vec<crate::state::WorkflowEvent>,
    pub update: WorkflowUpdate,
}

impl WorkflowChange {
    pub fn to(&self) -> Result<WorkflowState, crate::state::InvalidTransition> {
        self.from.after(&self.events)
    }
}

wire_enum!(
    /// States of a backfill.
    BackfillState {
        /// Runs are being created as earlier ones finish.
        Running = "running",
        /// Every run was created and has finished.
        Done = "done",
        /// Stopped by an operator: no new runs, running ones stopped.
        Stopped = "stopped",
    }
);

/// What an operator asks for: runs of a workflow version for each schedule
/// time, in order, at most `parallelism` at once (1: serial).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewBackfill {
    pub workflow_id: WorkflowId,
    pub workflow_version: u32,
    pub schedule_times: Vec<Timestamp>,
    pub parallelism: u32,
    pub params: Params,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfill {
    pub id: BackfillId,
    pub spec: NewBackfill,
    /// How many runs have been created (the index of the next schedule time).
    pub created_runs: u32,
    pub state: BackfillState,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Filters for listing workflow instances, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    pub project_id: Option<ProjectId>,
    pub workflow_id: Option<WorkflowId>,
    pub backfill_id: Option<BackfillId>,
    pub state: Option<WorkflowState>,
    /// Only instances with an id below this (keyset pagination).
    pub before: Option<WorkflowInstanceId>,
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_ranks_order_highest_first() {
        let ranks: Vec<u8> = Priority::ALL.iter().map(|p| p.rank()).collect();
        assert_eq!(ranks, [0, 1, 2, 3, 4]);
        assert_eq!(Priority::from_rank(0), Some(Priority::Highest));
        assert_eq!(Priority::from_rank(5), None);
        assert!(Priority::Highest < Priority::Lowest);
    }

    #[test]
    fn a_later_task_update_wins_where_it_sets_a_field() {
        let started = TaskUpdate {
            host: Some(Some("w1:5678".into())),
            start_time: Some(Some(Utc::now())),
            ..Default::default()
        };
        let succeeded = TaskUpdate {
            exit_code: Some(Some(0)),
            host: None,
            ..Default::default()
        };
        let merged = started.clone().then(succeeded);
        assert_eq!(merged.host, started.host, "kept: the later change does not set it");
        assert_eq!(merged.start_time, started.start_time);
        assert_eq!(merged.exit_code, Some(Some(0)));
        assert_eq!(merged.end_time, None);
    }

    #[test]
    fn enums_use_one_spelling_everywhere() {
        assert_eq!("warn_fail".parse::<TimeoutStrategy>().unwrap(), TimeoutStrategy::WarnFail);
        assert_eq!(serde_json::to_string(&MisfirePolicy::RunAll).unwrap(), "\"run_all\"");
        let err = "urgent".parse::<Priority>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown Priority `urgent`, expected one of: highest, high, medium, low, lowest"
        );
        for kind in CommandKind::ALL {
            assert_eq!(kind.as_str().parse::<CommandKind>().unwrap(), *kind);
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("task", "extract_2024-01.v2").is_ok());
        assert!(validate_name("task", "抽取").is_ok());
        for bad in ["", "a/b", "a b", "..", &"x".repeat(129)] {
            let err = validate_name("task", bad).unwrap_err();
            assert_eq!(err.kind, "task", "{bad:?}");
        }
        assert_eq!(WorkerGroup::default().as_str(), "default");
        assert!(WorkerGroup::new("gpu pool").is_err());
    }

    #[test]
    fn durations_read_human_text_and_millis() {
        #[derive(Debug, Deserialize, Serialize)]
        struct D {
            #[serde(with = "duration_text")]
            d: Duration,
        }
        for (text, ms) in [("\"500ms\"", 500), ("\"30s\"", 30_000), ("\"10m\"", 600_000), ("\"1h\"", 3_600_000), ("250", 250)] {
            let d: D = serde_json::from_str(&format!("{{\"d\":{text}}}")).unwrap();
            assert_eq!(d.d, Duration::from_millis(ms), "{text}");
        }
        let err = serde_json::from_str::<D>("{\"d\":\"10 parsecs\"}").unwrap_err();
        assert!(err.to_string().contains("invalid duration `10 parsecs`"), "{err}");
        assert_eq!(serde_json::to_string(&D { d: Duration::from_secs(90) }).unwrap(), "{\"d\":\"1m 30s\"}");
    }

    #[test]
    fn task_specs_reject_unknown_fields() {
        let err = serde_json::from_str::<TaskSpec>(r#"{"name":"a","type":"shell","retires":2}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `retires`"), "{err}");
    }

    #[test]
    fn normalization_ignores_task_and_dep_order() {
        let mut a = TaskSpec::new("a", "shell");
        let mut b = TaskSpec::new("b", "shell");
        let c = TaskSpec::new("c", "shell");
        b.deps = vec!["c".into(), "a".into()];
        a.retries = 1;
        let one = WorkflowSpec {
            name: "w".into(),
            description: String::new(),
            params: Params::new(),
            failure_strategy: FailureStrategy::End,
            priority: Priority::Medium,
            worker_group: WorkerGroup::default(),
            tasks: vec![a.clone(), b.clone(), c.clone()],
        };
        let mut b2 = b.clone();
        b2.deps = vec!["a".into(), "c".into(), "a".into()];
        let two = WorkflowSpec { tasks: vec![c, b2, a], ..one.clone() };
        assert_eq!(one.normalized(), two.normalized());
        assert!(b.same_definition(&TaskSpec { deps: vec![], ..b.clone() }));
    }

    #[test]
    fn retries_do_not_count_failovers() {
        let now = Utc::now();
        let mut task = TaskInstance {
            id: TaskInstanceId(1),
            workflow_instance_id: WorkflowInstanceId(1),
            task_definition_id: TaskDefinitionId(1),
            name: "t".into(),
            task_type: TaskType::new("shell"),
            state: TaskState::Failure,
            attempt: 3,
            max_retries: 2,
            failovers: 1,
            priority: Priority::Medium,
            worker_group: WorkerGroup::default(),
            host: None,
            exit_code: Some(1),
            retry_at: None,
            log_path: None,
            submit_time: now,
            start_time: None,
            end_time: None,
            updated_at: now,
            outputs: Params::new(),
            message: None,
            run: 1,
            retries: 1,
            kill_reason: None,
            branches: None,
            external_id: None,
        };
        assert!(task.can_retry());
        task.retries = 2;
        assert!(!task.can_retry(), "failover attempts (attempt 3, failovers 1) do not count");
    }
}
