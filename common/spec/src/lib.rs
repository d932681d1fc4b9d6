//! Workflows as code: the workflow document users keep in git (YAML, or the
//! same document as JSON), read into domain types with every mistake
//! reported at its path (`tasks[1].retires: unknown field`).
//!
//! ```yaml
//! project: demo
//! name: daily_etl
//! params: {dt: "${system.biz.date}"}
//! failure_strategy: end            # end | continue
//! priority: medium                 # highest | high | medium | low | lowest
//! worker_group: default
//! tasks:
//!   - name: extract
//!     type: shell
//!     script: echo "extract ${dt}"
//!     retries: 2
//!     retry_interval: 30s
//!     timeout: 10m
//!     timeout_strategy: fail       # warn | fail | warn_fail
//!   - name: load
//!     type: python
//!     script: print("load")
//!     deps: [extract]
//! schedule: {cron: "0 30 2 * * ?", timezone: Asia/Shanghai, start: 2026-01-01, misfire: run_once}
//! ```
//!
//! A task's keys are of two kinds. The generic ones ([`TASK_KEYS`]: `name`,
//! `type`, `deps`, `params`, `retries`, `timeout` ...) mean the same for
//! every type. The type-specific ones (`script` for shell and python) are
//! the task's `body`, in a namespace of their own: written under `with:`,
//! or, for a field whose name is not a generic key, at the task's top level
//! too (the form every document used before `with:` existed). So a plugin
//! may have a field named like a generic one (its own `timeout`), written
//! `with: {timeout: 30}`; a top-level `timeout` is always the generic one.
//! A field given both ways is refused, and so are keys the task's type does
//! not define; the plugin checks the body.
//!
//! Parameter expressions are checked too, for what fails every run
//! ([`sluice_params::check`]): a malformed `$[...]` or `${zdt...}`, an
//! unknown `${system.*}`, parameters that refer to each other in a cycle,
//! in the workflow's and each task's `params` and in the type-specific
//! text. What only a run knows (upstream outputs, parameters given at the
//! start) is left to the run.
//!
//! The optional `schedule` is read by [`schedule_from_value`]; a document
//! without one says nothing about the workflow's schedule (the
//! API leaves a stored one as it is).

mod schedule;

use std::time::Duration;

use serde_json::{Map, Value};
use sluice_domain::*;
use sluice_tasks::TaskPlugins;

pub use schedule::{schedule_from_value, schedule_to_value, schedule_zone, zoned_text, MIN_EVERY};

/// A mistake in a workflow document, at `field` (a path such as
/// `tasks[1].timeout`), or in the document as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct DocumentError {
    pub field: Option<String>,
    pub message: String,
}

pub(crate) fn err(field: impl Into<String>, message: impl Into<String>) -> DocumentError {
    DocumentError { field: Some(field.into()), message: message.into() }
}

fn whole(message: impl Into<String>) -> DocumentError {
    DocumentError { field: None, message: message.into() }
}

/// A parsed workflow document. `project` and `name` may be absent when the
/// context gives them (the API's URL); [`WorkflowDocument::require_project`]
/// insists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowDocument {
    pub project: Option<String>,
    pub spec: WorkflowSpec,
    /// When the workflow fires by itself; `None` when the document has no
    /// `schedule` key.
    pub schedule: Option<ScheduleSpec>,
    /// Per task, the body fields the document wrote under `with:`: so that
    /// a mistake in one is named where the user wrote it.
    nested: Vec<Vec<String>>,
}

const WORKFLOW_KEYS: &[&str] =
    &["project", "name", "description", "params", "failure_strategy", "priority", "worker_group", "tasks", "schedule"];
/// A task's generic keys; `with` holds the type-specific ones.
pub const TASK_KEYS: &[&str] = &[
    "name",
    "type",
    "description",
    "deps",
    "params",
    "retries",
    "retry_interval",
    "timeout",
    "timeout_strategy",
    "priority",
    "worker_group",
    WITH,
];

/// The key of a task's type-specific namespace.
pub const WITH: &str = "with";

/// Reads a YAML document.
pub fn parse_yaml(text: &str) -> Result<WorkflowDocument, DocumentError> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| whole(format!("malformed YAML: {e}")))?;
    from_value(value)
}

/// Reads the same document written as JSON.
pub fn parse_json(text: &str) -> Result<WorkflowDocument, DocumentError> {
    let value: Value = serde_json::from_str(text).map_err(|e| whole(format!("malformed JSON: {e}")))?;
    from_value(value)
}

/// Reads a document already parsed into a JSON value.
pub fn from_value(value: Value) -> Result<WorkflowDocument, DocumentError> {
    let Value::Object(mut doc) = value else {
        return Err(whole(format!("a workflow document is a mapping, got {}", kind(&value))));
    };
    if let Some(unknown) = doc.keys().find(|k| !WORKFLOW_KEYS.contains(&k.as_str())) {
        return Err(err(unknown.clone(), format!("unknown field, expected one of: {}", WORKFLOW_KEYS.join(", "))));
    }
    let project = opt_text(&mut doc, "project", "project")?;
    let name = opt_text(&mut doc, "name", "name")?.unwrap_or_default();
    let tasks = match doc.remove("tasks") {
        None | Some(Value::Null) => return Err(err("tasks", "required: a workflow needs at least one task")),
        Some(Value::Array(tasks)) => tasks,
        Some(other) => return Err(err("tasks", format!("expected a list of tasks, got {}", kind(&other)))),
    };
    let (tasks, nested): (Vec<TaskSpec>, Vec<Vec<String>>) =
        tasks.into_iter().enumerate().map(|(i, t)| task(i, t)).collect::<Result<Vec<_>, _>>()?.into_iter().unzip();
    let schedule = match doc.remove("schedule") {
        None | Some(Value::Null) => None,
        Some(value) => Some(schedule_from_value(value, "schedule")?),
    };
    Ok(WorkflowDocument {
        project,
        schedule,
        nested,
        spec: WorkflowSpec {
            name,
            description: opt_text(&mut doc, "description", "description")?.unwrap_or_default(),
            params: params(&mut doc, "params")?,
            failure_strategy: opt_parsed(&mut doc, "failure_strategy", "failure_strategy")?.unwrap_or_default(),
            priority: opt_parsed(&mut doc, "priority", "priority")?.unwrap_or_default(),
            worker_group: opt_parsed(&mut doc, "worker_group", "worker_group")?.unwrap_or_default(),
            tasks,
        },
    })
}

/// A task, and the body fields it wrote under `with:`.
fn task(index: usize, value: Value) -> Result<(TaskSpec, Vec<String>), DocumentError> {
    let at = format!("tasks[{index}]");
    let Value::Object(mut map) = value else {
        return Err(err(at, format!("a task is a mapping, got {}", kind(&value))));
    };
    let path = |key: &str| format!("{at}.{key}");
    let name = opt_text(&mut map, "name", &path("name"))?.ok_or_else(|| err(path("name"), "required"))?;
    let task_type = opt_text(&mut map, "type", &path("type"))?.ok_or_else(|| err(path("type"), "required"))?;
    let mut spec = TaskSpec::new(name, task_type);
    spec.description = opt_text(&mut map, "description", &path("description"))?.unwrap_or_default();
    spec.deps = match map.remove("deps") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(deps)) => deps
            .into_iter()
            .enumerate()
            .map(|(j, d)| match d {
                Value::String(d) => Ok(d),
                other => Err(err(format!("{at}.deps[{j}]"), format!("expected a task name, got {}", kind(&other)))),
            })
            .collect::<Result<_, _>>()?,
        Some(Value::String(one)) => vec![one],
        Some(other) => return Err(err(path("deps"), format!("expected a list of task names, got {}", kind(&other)))),
    };
    spec.params = params(&mut map, &path("params"))?;
    spec.retries = match map.remove("retries") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| err(path("retries"), format!("expected a count (0 or more), got {n}")))?,
        Some(other) => return Err(err(path("retries"), format!("expected a count, got {}", kind(&other)))),
    };
    spec.retry_interval = duration(&mut map, &path("retry_interval"), "retry_interval")?.unwrap_or(Duration::ZERO);
    spec.timeout = duration(&mut map, &path("timeout"), "timeout")?;
    spec.timeout_strategy = opt_parsed(&mut map, "timeout_strategy", &path("timeout_strategy"))?.unwrap_or_default();
    spec.priority = opt_parsed(&mut map, "priority", &path("priority"))?.unwrap_or_default();
    spec.worker_group = opt_parsed(&mut map, "worker_group", &path("worker_group"))?;
    let with = match map.remove(WITH) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(with)) => with,
        Some(other) => {
            return Err(err(path(WITH), format!("expected a mapping of the task type's own fields, got {}", kind(&other))));
        }
    };
    // What is left is the type-specific part, with what `with` holds; its
    // keys are checked against the plugin in `validate`, where the type's
    // plugin is known.
    let nested: Vec<String> = with.keys().cloned().collect();
    for (key, value) in with {
        if map.contains_key(&key) {
            return Err(err(format!("{at}.{WITH}.{key}"), format!("given twice: also as `{at}.{key}`; write it in one place")));
        }
        map.insert(key, value);
    }
    spec.body = map;
    Ok((spec, nested))
}

pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

pub(crate) fn opt_text(map: &mut Map<String, Value>, key: &str, path: &str) -> Result<Option<String>, DocumentError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(err(path, format!("expected text, got {}", kind(&other)))),
    }
}

fn opt_parsed<T>(map: &mut Map<String, Value>, key: &str, path: &str) -> Result<Option<T>, DocumentError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    opt_text(map, key, path)?.map(|raw| raw.parse::<T>().map_err(|e| err(path, e.to_string()))).transpose()
}

fn duration(map: &mut Map<String, Value>, path: &str, key: &str) -> Result<Option<Duration>, DocumentError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => duration_text::parse(&text).map(Some).map_err(|e| err(path, e)),
        Some(other) => Err(err(path, format!("expected a duration such as 500ms, 30s, 10m, 1h, got {}", kind(&other)))),
    }
}

/// Parameters are text; numbers and booleans written without quotes in
/// YAML (`dt: 20260101`) are taken as their text.
fn params(map: &mut Map<String, Value>, path: &str) -> Result<Params, DocumentError> {
    let key = path.rsplit('.').next().unwrap_or(path);
    match map.remove(key) {
        None | Some(Value::Null) => Ok(Params::new()),
        Some(Value::Object(entries)) => entries
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                Value::Number(n) => Ok((k, n.to_string())),
                Value::Bool(b) => Ok((k, b.to_string())),
                other => Err(err(format!("{path}.{k}"), format!("expected text, got {}", kind(&other)))),
            })
            .collect(),
        Some(other) => Err(err(path, format!("expected a mapping of names to values, got {}", kind(&other)))),
    }
}

impl WorkflowDocument {
    /// The project the document names; an error at `project` if it names none.
    pub fn require_project(&self) -> Result<&str, DocumentError> {
        self.project.as_deref().ok_or_else(|| err("project", "required"))
    }

    /// Checks everything that can be checked without a server: names, each
    /// task's type and type-specific keys, and the DAG. Returns the DAG.
    pub fn validate(&self, plugins: &TaskPlugins) -> Result<Dag, DocumentError> {
        if let Some(project) = &self.project {
            validate_name("project", project).map_err(|e| err("project", e.to_string()))?;
        }
        if self.spec.name.is_empty() {
            return Err(err("name", "required"));
        }
        validate_name("workflow", &self.spec.name).map_err(|e| err("name", e.to_string()))?;
        sluice_params::check(&self.spec.params).map_err(|e| err(format!("params.{}", e.name), e.error.to_string()))?;
        for (i, task) in self.spec.tasks.iter().enumerate() {
            let at = format!("tasks[{i}]");
            let body_path = |key: &str| self.body_path(i, key);
            validate_name("task", &task.name).map_err(|e| err(format!("{at}.name"), e.to_string()))?;
            let plugin = plugins.get(task.task_type.as_str()).ok_or_else(|| {
                err(
                    format!("{at}.type"),
                    format!("unknown task type `{}`, known: {}", task.task_type, plugins.known().join(", ")),
                )
            })?;
            if let Some(unknown) = task.body.keys().find(|k| !plugin.body_fields().contains(&k.as_str())) {
                let expected: Vec<&str> = TASK_KEYS.iter().chain(plugin.body_fields()).copied().collect();
                return Err(err(body_path(unknown), format!("unknown field, expected one of: {}", expected.join(", "))));
            }
            plugin.validate(task).map_err(|message| err(at.clone(), message))?;
            self.check_task_params(i, task)?;
            // The master substitutes into the body's text fields (see
            // master/src/run/resolve.rs): what fails there fails every run.
            for (key, value) in &task.body {
                if let Value::String(text) = value {
                    sluice_params::check_text(text).map_err(|e| err(body_path(key), e.to_string()))?;
                }
            }
            for (j, dep) in task.deps.iter().enumerate() {
                if !self.spec.tasks.iter().any(|t| &t.name == dep) {
                    return Err(err(format!("{at}.deps[{j}]"), format!("task `{}` depends on unknown task `{dep}`", task.name)));
                }
            }
        }
        self.spec.validate().map_err(|e| match e {
            SpecError::Dag(DagError::Cycle(_) | DagError::DuplicateTasks(_) | DagError::Empty) => err("tasks", e.to_string()),
            other => whole(other.to_string()),
        })
    }
}

impl WorkflowDocument {
    /// Where task `i`'s body field `key` is in the document.
    fn body_path(&self, i: usize, key: &str) -> String {
        let nested = self.nested.get(i).is_some_and(|keys| keys.iter().any(|k| k == key));
        if nested { format!("tasks[{i}].{WITH}.{key}") } else { format!("tasks[{i}].{key}") }
    }

    /// A task's parameters as its runs see them (its own over the
    /// workflow's), checked for what fails every run. The workflow's own
    /// mistakes were named at `params` already; what is left is the task's.
    fn check_task_params(&self, i: usize, task: &TaskSpec) -> Result<(), DocumentError> {
        if task.params.is_empty() {
            return Ok(());
        }
        let mut merged = self.spec.params.clone();
        merged.extend(task.params.iter().map(|(k, v)| (k.clone(), v.clone())));
        sluice_params::check(&merged).map_err(|e| {
            // Every value the workflow's check did not see is the task's, and
            // so is a parameter on every new cycle: name the first of them.
            let name = std::iter::once(&e.name).chain(&e.cycle).find(|n| task.params.contains_key(*n)).unwrap_or(&e.name);
            let at = if task.params.contains_key(name) { format!("tasks[{i}].params.{name}") } else { format!("params.{name}") };
            err(at, e.error.to_string())
        })
    }
}

/// The document form of a stored workflow (type-specific keys back at the
/// task's top level, under `with:` those named like a generic key) and its
/// schedule, as JSON; render it as YAML with [`to_yaml`].
pub fn to_value(project: &str, spec: &WorkflowSpec, schedule: Option<&ScheduleSpec>) -> Value {
    let mut doc = Map::new();
    doc.insert("project".into(), project.into());
    doc.insert("name".into(), spec.name.clone().into());
    if !spec.description.is_empty() {
        doc.insert("description".into(), spec.description.clone().into());
    }
    if !spec.params.is_empty() {
        doc.insert("params".into(), serde_json::to_value(&spec.params).expect("params"));
    }
    doc.insert("failure_strategy".into(), spec.failure_strategy.as_str().into());
    doc.insert("priority".into(), spec.priority.as_str().into());
    doc.insert("worker_group".into(), spec.worker_group.as_str().into());
    let tasks = spec
        .tasks
        .iter()
        .map(|t| {
            let mut task = Map::new();
            task.insert("name".into(), t.name.clone().into());
            task.insert("type".into(), t.task_type.as_str().into());
            if !t.description.is_empty() {
                task.insert("description".into(), t.description.clone().into());
            }
            let mut with = Map::new();
            for (k, v) in &t.body {
                if TASK_KEYS.contains(&k.as_str()) {
                    with.insert(k.clone(), v.clone());
                } else {
                    task.insert(k.clone(), v.clone());
                }
            }
            if !with.is_empty() {
                task.insert(WITH.into(), Value::Object(with));
            }
            if !t.deps.is_empty() {
                task.insert("deps".into(), serde_json::to_value(&t.deps).expect("deps"));
            }
            if !t.params.is_empty() {
                task.insert("params".into(), serde_json::to_value(&t.params).expect("params"));
            }
            if t.retries > 0 {
                task.insert("retries".into(), t.retries.into());
                task.insert("retry_interval".into(), humantime_text(t.retry_interval).into());
            }
            if let Some(timeout) = t.timeout {
                task.insert("timeout".into(), humantime_text(timeout).into());
                task.insert("timeout_strategy".into(), t.timeout_strategy.as_str().into());
            }
            task.insert("priority".into(), t.priority.as_str().into());
            if let Some(group) = &t.worker_group {
                task.insert("worker_group".into(), group.as_str().into());
            }
            Value::Object(task)
        })
        .collect();
    doc.insert("tasks".into(), Value::Array(tasks));
    if let Some(schedule) = schedule {
        doc.insert("schedule".into(), schedule_to_value(schedule));
    }
    Value::Object(doc)
}

fn humantime_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The document as YAML.
pub fn to_yaml(project: &str, spec: &WorkflowSpec, schedule: Option<&ScheduleSpec>) -> String {
    serde_yaml_ng::to_string(&to_value(project, spec, schedule)).expect("documents render as YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
project: demo
name: daily_etl
description: example pipeline
params: {dt: "${system.biz.date}", n: 3}
failure_strategy: end
priority: medium
worker_group: default
tasks:
  - name: extract
    type: shell
    script: echo "extract ${dt}"
    retries: 2
    retry_interval: 30s
    timeout: 10m
    timeout_strategy: fail
    priority: high
  - name: load
    type: python
    script: print("load")
    deps: [extract]
schedule: {cron: "0 30 2 * * ?", timezone: Asia/Shanghai, start: 2026-01-01, end: 2027-01-01, misfire: run_once}
"#;

    fn plugins() -> TaskPlugins {
        TaskPlugins::builtin()
    }

    fn error_of(yaml: &str) -> String {
        match parse_yaml(yaml) {
            Err(e) => e.to_string(),
            Ok(doc) => doc.validate(&plugins()).err().map(|e| e.to_string()).unwrap_or_else(|| "no error".into()),
        }
    }

    #[test]
    fn the_issue_example_reads_into_domain_types() {
        let doc = parse_yaml(EXAMPLE).unwrap();
        doc.validate(&plugins()).unwrap();
        assert_eq!(doc.project.as_deref(), Some("demo"));
        let spec = &doc.spec;
        assert_eq!((spec.name.as_str(), spec.priority, spec.failure_strategy), ("daily_etl", Priority::Medium, FailureStrategy::End));
        assert_eq!(spec.params["dt"], "${system.biz.date}");
        assert_eq!(spec.params["n"], "3");
        let extract = &spec.tasks[0];
        assert_eq!(extract.retries, 2);
        assert_eq!(extract.retry_interval, Duration::from_secs(30));
        assert_eq!(extract.timeout, Some(Duration::from_secs(600)));
        assert_eq!((extract.timeout_strategy, extract.priority), (TimeoutStrategy::Fail, Priority::High));
        assert_eq!(extract.body["script"], "echo \"extract ${dt}\"");
        assert_eq!(spec.tasks[1].deps, ["extract"]);
        let schedule = doc.schedule.as_ref().expect("a schedule");
        assert_eq!(schedule.trigger, Trigger::Cron { expression: "0 30 2 * * ?".into(), timezone: "Asia/Shanghai".into() });
        assert_eq!(schedule.start.unwrap().to_rfc3339(), "2025-12-31T16:00:00+00:00", "midnight in Shanghai");
        assert_eq!(schedule.misfire, MisfirePolicy::RunOnce);
    }

    #[test]
    fn a_document_without_a_schedule_has_none() {
        let doc = parse_yaml("name: w\ntasks:\n  - {name: a, type: shell, script: x}\nschedule: null\n").unwrap();
        assert_eq!(doc.schedule, None);
        assert!(to_value("p", &doc.spec, None).get("schedule").is_none());
        let doc = parse_yaml("name: w\ntasks:\n  - {name: a, type: shell, script: x}\nschedule: {every: 5m, times: 10}\n").unwrap();
        assert_eq!(doc.schedule.unwrap().trigger, Trigger::Interval { every: Duration::from_secs(300), times: Some(10) });
    }

    #[test]
    fn json_and_yaml_are_the_same_document() {
        let yaml = parse_yaml(EXAMPLE).unwrap();
        let json = parse_json(&serde_json::to_string(&serde_yaml_ng::from_str::<Value>(EXAMPLE).unwrap()).unwrap()).unwrap();
        assert_eq!(yaml, json);
    }

    #[test]
    fn documents_round_trip() {
        let doc = parse_yaml(EXAMPLE).unwrap();
        let yaml = to_yaml("demo", &doc.spec, doc.schedule.as_ref());
        let again = parse_yaml(&yaml).unwrap();
        assert_eq!(again.spec.normalized(), doc.spec.normalized());
        assert_eq!(again.project.as_deref(), Some("demo"));
        assert_eq!(again.schedule, doc.schedule, "{yaml}");
        assert_eq!(to_value("demo", &doc.spec, doc.schedule.as_ref())["schedule"]["start"], "2026-01-01");
    }

    #[test]
    fn durations_accept_the_documented_units() {
        for (text, d) in [("500ms", Duration::from_millis(500)), ("30s", Duration::from_secs(30)), ("10m", Duration::from_secs(600)), ("1h", Duration::from_secs(3600))] {
            let yaml = format!("name: w\ntasks:\n  - {{name: a, type: shell, script: x, timeout: {text}}}\n");
            assert_eq!(parse_yaml(&yaml).unwrap().spec.tasks[0].timeout, Some(d), "{text}");
        }
    }

    #[test]
    fn mistakes_are_named_with_their_path() {
        let cases = [
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x}\n  - {name: b, type: shell, script: x, retires: 2}\n",
             "tasks[1].retires: unknown field, expected one of: name, type, description, deps, params, retries, retry_interval, timeout, timeout_strategy, priority, worker_group, with, script"),
            ("name: w\nschedulle: daily\ntasks: []\n", "schedulle: unknown field"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x}\nschedule: {cron: '0 61 2 * * ?'}\n",
             "schedule.cron: invalid cron expression `0 61 2 * * ?`: minutes field"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x}\nschedule: {cron: '0 0 2 * * ?', timezone: Mars/Olympus}\n",
             "schedule.timezone: `Mars/Olympus`: unknown time zone"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x}\nschedule: {cron: '0 0 2 * * ?', misfir: skip}\n",
             "schedule.misfir: unknown field"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x}\nschedule: {every: 0s}\n", "schedule.every: `0s` is too short"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x}\nschedule: daily\n", "schedule: a schedule is a mapping"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x, timeout: 10 parsecs}\n", "tasks[0].timeout: invalid duration `10 parsecs`"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x, retries: -1}\n", "tasks[0].retries: expected a count (0 or more), got -1"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x, priority: urgent}\n", "tasks[0].priority: unknown Priority `urgent`"),
            ("name: w\ntasks:\n  - {name: a, type: sparkk, script: x}\n", "tasks[0].type: unknown task type `sparkk`, known: python, shell"),
            ("name: w\ntasks:\n  - {name: a, type: python}\n", "tasks[0]: `script` is required for type python"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x, deps: [zz]}\n", "tasks[0].deps[0]: task `a` depends on unknown task `zz`"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x, deps: [b]}\n  - {name: b, type: shell, script: x, deps: [a]}\n",
             "tasks: dependency cycle between tasks: `a`, `b`"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x}\n  - {name: a, type: shell, script: y}\n", "tasks: duplicate task names: `a`"),
            ("name: w\ntasks: []\n", "tasks: the workflow has no tasks"),
            ("name: w\n", "tasks: required"),
            ("tasks:\n  - {name: a, type: shell, script: x}\n", "name: required"),
            ("name: a/b\ntasks:\n  - {name: a, type: shell, script: x}\n", "name: invalid workflow name `a/b`"),
            ("name: w\ntasks:\n  - {name: a b, type: shell, script: x}\n", "tasks[0].name: invalid task name `a b`"),
            ("name: w\nparams: [1, 2]\ntasks:\n  - {name: a, type: shell, script: x}\n", "params: expected a mapping"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x, worker_group: 'gpu pool'}\n", "tasks[0].worker_group: invalid worker group name"),
            ("name: w\ntasks: {a: 1}\n", "tasks: expected a list of tasks, got a mapping"),
            ("- just\n- a list\n", "a workflow document is a mapping, got a list"),
            // Parameters and text that no run can resolve.
            ("name: w\nparams: {dt: '$[foo+1]'}\ntasks:\n  - {name: a, type: shell, script: x}\n",
             "params.dt: cannot resolve `$[foo+1]`: unsupported pattern letter `f`"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x}\n  - {name: b, type: shell, script: x}\n  - {name: c, type: shell, script: x, params: {out: 'v${system.nope}'}}\n",
             "tasks[2].params.out: cannot resolve `${system.nope}`: unknown built-in"),
            ("name: w\nparams: {a: '${b}', b: '${a}'}\ntasks:\n  - {name: a, type: shell, script: x}\n",
             "params.a: cannot resolve `${a}`: parameters refer to each other in a cycle: a -> b -> a"),
            ("name: w\nparams: {a: '${b}'}\ntasks:\n  - {name: a, type: shell, script: x, params: {b: 'x-${a}'}}\n",
             "tasks[0].params.b: cannot resolve `${a}`: parameters refer to each other in a cycle: a -> b -> a"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: 'echo ${zdt.addDay(-1).explode()}'}\n",
             "tasks[0].script: cannot resolve `${zdt.addDay(-1).explode()}`: unknown method `explode`"),
            ("name: w\ntasks:\n  - {name: a, type: shell, with: {script: 'echo $[yyyyMMdd-1x]'}}\n",
             "tasks[0].with.script: cannot resolve `$[yyyyMMdd-1x]`"),
            // The type-specific namespace.
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x, with: {script: y}}\n",
             "tasks[0].with.script: given twice: also as `tasks[0].script`"),
            ("name: w\ntasks:\n  - {name: a, type: shell, with: {script: x, timeout: 3}}\n", "tasks[0].with.timeout: unknown field"),
            ("name: w\ntasks:\n  - {name: a, type: shell, script: x, with: [script]}\n", "tasks[0].with: expected a mapping of the task type's own fields"),
            ("name: [unclosed\n", "malformed YAML"),
        ];
        for (yaml, expected) in cases {
            let got = error_of(yaml);
            assert!(got.starts_with(expected), "for {yaml:?}\n  expected: {expected}\n  got:      {got}");
        }
    }

    #[test]
    fn what_only_a_run_knows_is_left_to_the_run() {
        // Upstream outputs, parameters given at the start, project
        // parameters and shell variables are not the document's to know.
        let doc = parse_yaml(
            "name: w\nparams: {dt: '${system.biz.date}', path: '/d/${dt}/${region}'}\ntasks:\n  - {name: a, type: shell, script: 'echo ${setValue(rows=1)} $[yyyyMMdd-1]'}\n  - {name: b, type: shell, deps: [a], params: {n: '${rows}', home: '${HOME}', dt: '$[yyyyMMdd]'}, script: 'echo ${n} ${path} ${undefined_here}'}\n",
        )
        .unwrap();
        doc.validate(&plugins()).unwrap();
        // A task parameter that replaces a workflow one replaces it in the
        // check too: no cycle once `b` is plain text.
        let doc = parse_yaml("name: w\nparams: {a: '${b}', b: '${a}'}\ntasks:\n  - {name: t, type: shell, script: x}\n").unwrap();
        assert!(doc.validate(&plugins()).is_err());
        let doc = parse_yaml("name: w\nparams: {a: '${b}'}\ntasks:\n  - {name: t, type: shell, script: x, params: {b: plain}}\n").unwrap();
        doc.validate(&plugins()).unwrap();
    }

    /// A plugin whose fields are named like generic keys.
    struct Remote;

    impl sluice_tasks::TaskPlugin for Remote {
        fn task_type(&self) -> &'static str {
            "remote"
        }
        fn body_fields(&self) -> &'static [&'static str] {
            &["url", "timeout", "params", "with"]
        }
        fn validate(&self, spec: &TaskSpec) -> Result<(), String> {
            match spec.body.get("url") {
                Some(Value::String(_)) => Ok(()),
                _ => Err("`url` is required for type remote".into()),
            }
        }
        fn prepare(&self, _: &TaskDispatch, _: &std::path::Path) -> Result<sluice_tasks::ProcessSpec, String> {
            Err("not run in this test".into())
        }
    }

    #[test]
    fn a_plugin_field_named_like_a_generic_key_lives_under_with() {
        let plugins = plugins().with(std::sync::Arc::new(Remote));
        let yaml = "name: w\ntasks:\n  - name: call\n    type: remote\n    url: https://example.com/job\n    timeout: 10m\n    params: {dt: '$[yyyyMMdd]'}\n    with: {timeout: 30, params: {verbose: true}, with: nested}\n";
        let doc = parse_yaml(yaml).unwrap();
        doc.validate(&plugins).unwrap();
        let task = &doc.spec.tasks[0];
        // The top-level keys are the generic ones...
        assert_eq!(task.timeout, Some(Duration::from_secs(600)));
        assert_eq!(task.params["dt"], "$[yyyyMMdd]");
        // ...and the plugin's own are in its body, under the same names.
        assert_eq!(task.body["url"], "https://example.com/job", "a field no generic key claims may stay flat");
        assert_eq!(task.body["timeout"], 30);
        assert_eq!(task.body["params"], serde_json::json!({"verbose": true}));
        assert_eq!(task.body["with"], "nested");
        // Written back, the colliding fields go under `with`, the rest stay
        // where today's documents have them; and it reads back the same.
        let value = to_value("p", &doc.spec, None);
        assert_eq!(value["tasks"][0]["url"], "https://example.com/job");
        assert_eq!(value["tasks"][0]["with"], serde_json::json!({"timeout": 30, "params": {"verbose": true}, "with": "nested"}));
        assert_eq!(value["tasks"][0]["timeout"], "10m");
        let again = parse_yaml(&to_yaml("p", &doc.spec, None)).unwrap();
        again.validate(&plugins).unwrap();
        assert_eq!(again.spec.normalized(), doc.spec.normalized());
    }

    #[test]
    fn the_flat_form_and_the_namespace_are_one_task() {
        let flat = parse_yaml("name: w\ntasks:\n  - {name: a, type: shell, script: 'echo hi', timeout: 1m}\n").unwrap();
        let nested = parse_yaml("name: w\ntasks:\n  - {name: a, type: shell, with: {script: 'echo hi'}, timeout: 1m}\n").unwrap();
        nested.validate(&plugins()).unwrap();
        assert_eq!(flat.spec, nested.spec);
        // Today's documents write back unchanged: no `with` without need.
        assert!(to_value("p", &flat.spec, None)["tasks"][0].get(WITH).is_none());
    }

    /// The example files and the README's workflow snippets parse and
    /// validate as they are.
    #[test]
    fn the_examples_and_readme_snippets_still_read() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut seen = 0;
        for entry in std::fs::read_dir(root.join("examples")).unwrap() {
            let path = entry.unwrap().path();
            let doc = parse_yaml(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            doc.validate(&plugins()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
        assert!(seen >= 2, "the examples were not found");
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let snippets: Vec<&str> = readme.split("```yaml\n").skip(1).map(|rest| rest.split("```").next().unwrap()).filter(|s| s.contains("tasks:")).collect();
        assert!(!snippets.is_empty(), "no workflow in README.md");
        for snippet in snippets {
            let doc = parse_yaml(snippet).unwrap_or_else(|e| panic!("README snippet: {e}\n{snippet}"));
            doc.validate(&plugins()).unwrap_or_else(|e| panic!("README snippet: {e}\n{snippet}"));
        }
        // And the crate's own example above.
        parse_yaml(EXAMPLE).unwrap().validate(&plugins()).unwrap();
    }

    #[test]
    fn project_is_required_only_when_asked() {
        let doc = parse_yaml("name: w\ntasks:\n  - {name: a, type: shell, script: x}\n").unwrap();
        doc.validate(&plugins()).unwrap();
        assert_eq!(doc.require_project().unwrap_err().to_string(), "project: required");
    }
}
