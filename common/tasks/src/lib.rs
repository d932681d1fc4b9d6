//! The task type system: what each kind of task (`shell`, `python`, and later
//! SQL, HTTP, Spark, Hive, sub-workflow, ...) accepts in its definition and
//! how a worker turns one attempt of it into an OS process.
//!
//! The engine only ever talks to [`TaskPlugins`], so a new task type is one
//! more [`TaskPlugin`] registered there: the master validates definitions
//! with it and the worker prepares processes with it, neither knows the
//! types by name. No I/O happens here: a plugin describes the files and the
//! command line ([`ProcessSpec`]), the worker writes and runs them.

mod script;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path};
use std::sync::Arc;

use sluice_domain::{SpecError, TaskDispatch, TaskSpec, WorkflowSpec};

pub use crate::script::ScriptPlugin;

/// Where a task type's attempts run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Placement {
    /// An OS process group a worker starts (shell, python, spark-submit,
    /// hive): it takes a worker slot, and dies with its worker.
    #[default]
    Process,
    /// Inside a worker's own process (SQL, HTTP): queued and watched like a
    /// process, run without one.
    Worker,
    /// Inside the master, as part of the run's state machine (sub-workflow,
    /// dependent, conditions, switch): never queued, never a worker slot,
    /// never a thread of its own.
    Master,
}

/// One task type.
///
/// Errors are plain messages for people (the API shows them, the worker
/// reports them as the attempt's failure reason); [`TaskPlugins`] prefixes
/// them with the task's name.
pub trait TaskPlugin: Send + Sync {
    /// The lowercase name users write as the task's `type`.
    fn task_type(&self) -> &'static str;

    /// The type-specific keys a task of this type may have (its `body`), so
    /// that a workflow file can name an unknown key with its path.
    fn body_fields(&self) -> &'static [&'static str];

    /// Checks a task definition's type-specific settings (its `body`) when a
    /// workflow is saved, so that mistakes surface then, not at 3 a.m.
    fn validate(&self, spec: &TaskSpec) -> Result<(), String>;

    /// Describes the process that runs one attempt. `workdir` is the
    /// attempt's private working directory (the process's cwd, where
    /// [`ProcessSpec::files`] are written), passed so that command lines can
    /// name files by absolute path and error messages point somewhere real.
    fn prepare(&self, dispatch: &TaskDispatch, workdir: &Path) -> Result<ProcessSpec, String>;

    /// Where its attempts run; the master dispatches, watches, pauses and
    /// kills each placement in its own way.
    fn placement(&self) -> Placement {
        Placement::Process
    }

    /// An id the attempt's own system gave it (a YARN application id),
    /// found in one line of the attempt's output; the worker reports it and
    /// the master keeps it for [`TaskPlugin::kill_command`].
    fn external_id(&self, _line: &str) -> Option<String> {
        None
    }

    /// What stops the attempt's work in its own system once its processes
    /// are killed (`yarn application -kill <id>`), given the id it reported;
    /// `None`: killing the processes is enough.
    fn kill_command(&self, _external_id: &str) -> Option<ProcessSpec> {
        None
    }
}

/// What a worker runs for one attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Files to write into the working directory first: (relative name,
    /// content). Names are checked by [`TaskPlugins::prepare`] so that no
    /// plugin can write outside the working directory.
    pub files: Vec<(String, String)>,
    pub program: String,
    pub args: Vec<String>,
    /// Extra environment variables, on top of the task's params and the
    /// `SLUICE_*` variables the worker sets.
    pub env: Vec<(String, String)>,
}

/// A task that its type's plugin refuses, or whose type nobody knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("task `{task}`: unknown task type `{task_type}`, known: {}", known.join(", "))]
    UnknownType {
        task: String,
        task_type: String,
        known: Vec<String>,
    },
    #[error("task `{task}`: {message}")]
    Invalid { task: String, message: String },
}

impl TaskError {
    /// The task the error is about.
    pub fn task(&self) -> &str {
        match self {
            TaskError::UnknownType { task, .. } | TaskError::Invalid { task, .. } => task,
        }
    }
}

/// Lets the api-server report plugin errors with the same type (and so the
/// same HTTP mapping) as the rest of spec validation.
impl From<TaskError> for SpecError {
    fn from(error: TaskError) -> Self {
        let task = error.task().to_owned();
        let message = match error {
            TaskError::UnknownType {
                task_type, known, ..
            } => {
                format!(
                    "unknown task type `{task_type}`, known: {}",
                    known.join(", ")
                )
            }
            TaskError::Invalid { message, .. } => message,
        };
        SpecError::Task { task, message }
    }
}

/// The task types a process knows, by name.
#[derive(Clone, Default)]
pub struct TaskPlugins {
    plugins: BTreeMap<&'static str, Arc<dyn TaskPlugin>>,
}

impl TaskPlugins {
    /// No task types at all; see [`TaskPlugins::builtin`].
    pub fn empty() -> Self {
        TaskPlugins::default()
    }

    /// The types every Sluice process knows: `shell` and `python`.
    pub fn builtin() -> Self {
        TaskPlugins::empty()
            .with(Arc::new(ScriptPlugin::shell()))
            .with(Arc::new(ScriptPlugin::python()))
    }

    /// Adds `plugin`, replacing any plugin of the same type (so a deployment
    /// can override a built-in type), and returns the replaced one.
    pub fn register(&mut self, plugin: Arc<dyn TaskPlugin>) -> Option<Arc<dyn TaskPlugin>> {
        self.plugins.insert(plugin.task_type(), plugin)
    }

    /// [`TaskPlugins::register`], for building a set in one expression.
    pub fn with(mut self, plugin: Arc<dyn TaskPlugin>) -> Self {
        self.register(plugin);
        self
    }

    /// The plugin of `task_type`. Case-insensitive, since definitions
    /// written by hand say `SHELL` as often as `shell`.
    pub fn get(&self, task_type: &str) -> Option<&dyn TaskPlugin> {
        self.plugins
            .get(task_type.to_ascii_lowercase().as_str())
            .map(|plugin| plugin.as_ref())
    }

    /// Where tasks of `task_type` run (`None`: an unknown type).
    pub fn placement(&self, task_type: &str) -> Option<Placement> {
        self.get(task_type).map(|p| p.placement())
    }

    /// The known type names, sorted.
    pub fn known(&self) -> Vec<&'static str> {
        self.plugins.keys().copied().collect()
    }

    fn plugin_for(&self, task: &str, task_type: &str) -> Result<&dyn TaskPlugin, TaskError> {
        self.get(task_type).ok_or_else(|| TaskError::UnknownType {
            task: task.to_owned(),
            task_type: task_type.to_owned(),
            known: self.known().into_iter().map(str::to_owned).collect(),
        })
    }

    /// Checks one task definition with its type's plugin.
    pub fn validate_task(&self, spec: &TaskSpec) -> Result<(), TaskError> {
        self.plugin_for(&spec.name, spec.task_type.as_str())?
            .validate(spec)
            .map_err(|message| TaskError::Invalid {
                task: spec.name.clone(),
                message,
            })
    }

    /// Checks every task of a workflow; the first bad task is reported.
    /// Names and the DAG are [`WorkflowSpec::validate`]'s business.
    pub fn validate(&self, spec: &WorkflowSpec) -> Result<(), TaskError> {
        spec.tasks
            .iter()
            .try_for_each(|task| self.validate_task(task))
    }

    /// The process for one attempt of `dispatch`, with its file names
    /// checked to stay inside `workdir`.
    pub fn prepare(
        &self,
        dispatch: &TaskDispatch,
        workdir: &Path,
    ) -> Result<ProcessSpec, TaskError> {
        let invalid = |message| TaskError::Invalid {
            task: dispatch.task.clone(),
            message,
        };
        let spec = self
            .plugin_for(&dispatch.task, dispatch.task_type.as_str())?
            .prepare(dispatch, workdir)
            .map_err(invalid)?;
        for (name, _) in &spec.files {
            check_file_name(name).map_err(invalid)?;
        }
        if spec.program.is_empty() {
            return Err(invalid(format!(
                "the {} plugin named no program to run",
                dispatch.task_type
            )));
        }
        Ok(spec)
    }
}

impl fmt::Debug for TaskPlugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TaskPlugins").field(&self.known()).finish()
    }
}

/// A file a plugin asks for must be a plain relative path below the working
/// directory: a typo or a hostile body must not overwrite `~/.bashrc`.
fn check_file_name(name: &str) -> Result<(), String> {
    let path = Path::new(name);
    let plain = !name.is_empty()
        && !name.contains('\0')
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "file name `{name}` must be a relative path inside the working directory"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use sluice_domain::{
        FailureStrategy, Params, Priority, TaskInstanceId, TaskType, TimeoutStrategy, WorkerGroup,
        WorkflowInstanceId,
    };

    use super::*;

    fn task(name: &str, task_type: &str, body: serde_json::Value) -> TaskSpec {
        let mut spec = TaskSpec::new(name, task_type);
        spec.body = body.as_object().cloned().unwrap_or_default();
        spec
    }

    fn workflow(tasks: Vec<TaskSpec>) -> WorkflowSpec {
        WorkflowSpec {
            name: "etl".into(),
            description: String::new(),
            params: Params::new(),
            failure_strategy: FailureStrategy::End,
            priority: Priority::Medium,
            worker_group: WorkerGroup::default(),
            tasks,
        }
    }

    fn dispatch(task_type: &str, body: serde_json::Value) -> TaskDispatch {
        TaskDispatch {
            workflow_instance_id: WorkflowInstanceId(1),
            task_instance_id: TaskInstanceId(2),
            attempt: 1,
            master: "127.0.0.1:5678".into(),
            project: "demo".into(),
            workflow: "etl".into(),
            task: "load".into(),
            task_type: TaskType::new(task_type),
            body: body.as_object().cloned().unwrap_or_default(),
            params: Params::new(),
            timeout: Some(Duration::from_secs(2)),
            timeout_strategy: TimeoutStrategy::Fail,
        }
    }

    #[test]
    fn builtin_knows_shell_and_python() {
        let plugins = TaskPlugins::builtin();
        assert_eq!(plugins.known(), ["python", "shell"]);
        assert!(plugins.get("shell").is_some());
        assert!(
            plugins.get("PYTHON").is_some(),
            "lookup is case-insensitive"
        );
        assert!(plugins.get("sql").is_none());
        assert_eq!(
            format!("{plugins:?}"),
            r#"TaskPlugins(["python", "shell"])"#
        );
    }

    #[test]
    fn a_valid_workflow_passes() {
        let spec = workflow(vec![
            task(
                "extract",
                "shell",
                serde_json::json!({"script": "echo $dt"}),
            ),
            task(
                "load",
                "python",
                serde_json::json!({"script": "print('hi')"}),
            ),
        ]);
        TaskPlugins::builtin().validate(&spec).unwrap();
    }

    #[test]
    fn errors_name_the_task_and_the_problem() {
        let plugins = TaskPlugins::builtin();
        let cases = [
            (
                task("load", "python", serde_json::json!({})),
                "task `load`: `script` is required for type python",
            ),
            (
                task("x", "sparkk", serde_json::json!({})),
                "task `x`: unknown task type `sparkk`, known: python, shell",
            ),
            (
                task("a", "shell", serde_json::json!({"script": 3})),
                "task `a`: `script` must be text for type shell, got a number",
            ),
            (
                task("a", "shell", serde_json::json!({"script": "  \n"})),
                "task `a`: `script` must not be empty for type shell",
            ),
            (
                task(
                    "a",
                    "shell",
                    serde_json::json!({"script": "true", "scirpt": "x"}),
                ),
                "task `a`: unknown field `scirpt` for type shell, expected: script",
            ),
        ];
        for (spec, expected) in cases {
            let err = plugins.validate(&workflow(vec![spec])).unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
    }

    #[test]
    fn errors_convert_to_spec_errors() {
        let err = TaskPlugins::builtin()
            .validate_task(&task("x", "sparkk", serde_json::json!({})))
            .unwrap_err();
        assert_eq!(err.task(), "x");
        let spec_error = SpecError::from(err.clone());
        assert_eq!(spec_error.to_string(), err.to_string());
    }

    #[test]
    fn shell_runs_the_script_with_bash() {
        let workdir = PathBuf::from("/w/1/2/1");
        let spec = TaskPlugins::builtin()
            .prepare(
                &dispatch("shell", serde_json::json!({"script": "echo $dt\nexit 3"})),
                &workdir,
            )
            .unwrap();
        assert_eq!(
            spec.files,
            [("script.sh".to_owned(), "echo $dt\nexit 3".to_owned())]
        );
        assert_eq!(spec.program, "bash");
        assert_eq!(spec.args, ["/w/1/2/1/script.sh"]);
    }

    #[test]
    fn python_runs_the_script_unbuffered_with_python3() {
        let workdir = PathBuf::from("/w/1/2/1");
        let spec = TaskPlugins::builtin()
            .prepare(
                &dispatch("python", serde_json::json!({"script": "print(1)"})),
                &workdir,
            )
            .unwrap();
        assert_eq!(
            spec.files,
            [("script.py".to_owned(), "print(1)".to_owned())]
        );
        assert_eq!(spec.program, "python3");
        assert_eq!(spec.args, ["-u", "/w/1/2/1/script.py"]);
    }

    #[test]
    fn prepare_reports_bad_dispatches() {
        let plugins = TaskPlugins::builtin();
        let err = plugins
            .prepare(&dispatch("python", serde_json::json!({})), Path::new("/w"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "task `load`: `script` is required for type python"
        );
        let err = plugins
            .prepare(&dispatch("hive", serde_json::json!({})), Path::new("/w"))
            .unwrap_err();
        assert!(matches!(err, TaskError::UnknownType { .. }), "{err}");
    }

    /// A plugin that wants to write outside its working directory.
    struct Escaping(&'static str);

    impl TaskPlugin for Escaping {
        fn task_type(&self) -> &'static str {
            "escaping"
        }
        fn body_fields(&self) -> &'static [&'static str] {
            &[]
        }
        fn validate(&self, _: &TaskSpec) -> Result<(), String> {
            Ok(())
        }
        fn prepare(&self, _: &TaskDispatch, _: &Path) -> Result<ProcessSpec, String> {
            Ok(ProcessSpec {
                files: vec![(self.0.to_owned(), String::new())],
                program: "true".into(),
                ..ProcessSpec::default()
            })
        }
    }

    #[test]
    fn plugins_cannot_write_outside_the_working_directory() {
        for bad in ["../x", "/etc/passwd", "", "a/../../b", "./x"] {
            let plugins = TaskPlugins::empty().with(Arc::new(Escaping(bad)));
            let err = plugins
                .prepare(
                    &dispatch("escaping", serde_json::json!({})),
                    Path::new("/w"),
                )
                .unwrap_err();
            assert!(
                err.to_string().contains("must be a relative path"),
                "{bad:?}: {err}"
            );
        }
        let plugins = TaskPlugins::empty().with(Arc::new(Escaping("sub/dir/file.sql")));
        plugins
            .prepare(
                &dispatch("escaping", serde_json::json!({})),
                Path::new("/w"),
            )
            .unwrap();
    }

    #[test]
    fn registering_a_type_again_replaces_it() {
        let mut plugins = TaskPlugins::builtin();
        assert!(plugins.register(Arc::new(Escaping("f"))).is_none());
        let replaced = plugins.register(Arc::new(ScriptPlugin::shell()));
        assert_eq!(replaced.map(|p| p.task_type()), Some("shell"));
        assert_eq!(plugins.known(), ["escaping", "python", "shell"]);
    }
}
