//! The one place where wire types ([`crate::types`]) and domain types meet:
//! domain → view for responses, request → domain (validated, with the
//! offending field named) for inputs.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use sluice_domain::*;
use sluice_params::cron::{Cron, Timing};
use sluice_params::Tz;
use sluice_storage::{SavedWorkflow, WorkflowVersionInfo};

use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::types::*;

// ---------------------------------------------------------------------------
// Domain → wire

impl From<Project> for ProjectView {
    fn from(p: Project) -> Self {
        ProjectView {
            id: p.id,
            name: p.name,
            description: p.description,
            params: p.params,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

impl From<WorkflowSummary> for WorkflowSummaryView {
    fn from(w: WorkflowSummary) -> Self {
        WorkflowSummaryView {
            name: w.name,
            description: w.description,
            version: w.version,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

impl From<WorkflowVersionInfo> for WorkflowVersionView {
    fn from(v: WorkflowVersionInfo) -> Self {
        WorkflowVersionView { version: v.version, description: v.description, created_at: v.created_at }
    }
}

pub fn saved_workflow_view(name: &str, saved: &SavedWorkflow, schedule: Option<SavedSchedule>) -> SavedWorkflowView {
    SavedWorkflowView { name: name.to_owned(), version: saved.version, created: saved.created, schedule }
}

/// A stored version as the document users write (`sluice apply` reads it
/// back), with the workflow's schedule: it belongs to the workflow, not to
/// a version, so every version's document shows the current one.
pub fn workflow_view(def: &WorkflowDefinition, schedule: Option<&Schedule>) -> WorkflowView {
    WorkflowView {
        project: def.project.clone(),
        name: def.name.clone(),
        version: def.version,
        created_at: def.created_at,
        document: sluice_spec::to_value(&def.project, &def.spec(), schedule.map(schedule_spec).as_ref()),
    }
}

/// What a stored schedule was made from.
pub fn schedule_spec(schedule: &Schedule) -> ScheduleSpec {
    ScheduleSpec { trigger: schedule.trigger.clone(), start: schedule.start, end: schedule.end, misfire: schedule.misfire }
}

/// A schedule in its document form.
pub fn schedule_body(spec: &ScheduleSpec) -> ScheduleBody {
    serde_json::from_value(sluice_spec::schedule_to_value(spec)).expect("the document form of a schedule is a ScheduleBody")
}

pub fn schedule_view(project: &str, workflow: &str, schedule: &Schedule) -> ScheduleView {
    ScheduleView {
        project: project.to_owned(),
        workflow: workflow.to_owned(),
        online: schedule.online,
        schedule: schedule_body(&schedule_spec(schedule)),
        last_fire: schedule.last_fire,
        created_at: schedule.created_at,
        updated_at: schedule.updated_at,
    }
}

pub const DEFAULT_PREVIEW: usize = 5;
pub const MAX_PREVIEW: usize = 100;

/// `GET …/schedule/preview`, checked: how many, and after when.
pub fn preview_query(query: PreviewQuery, now: DateTime<Utc>) -> ApiResult<(usize, DateTime<Utc>)> {
    let count = match query.count {
        None => DEFAULT_PREVIEW,
        Some(raw) => match raw.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_PREVIEW).contains(&n) => n,
            _ => return Err(ApiError::invalid("count", format!("expected a count from 1 to {MAX_PREVIEW}, got `{raw}`"))),
        },
    };
    let after = match query.after {
        None => now,
        Some(raw) => DateTime::parse_from_rfc3339(raw.trim()).map(|t| t.with_timezone(&Utc)).map_err(|_| {
            ApiError::invalid("after", format!("expected an RFC 3339 time such as 2026-03-08T00:00:00-05:00, got `{raw}`"))
        })?,
    };
    Ok((count, after))
}

/// The next `count` fire times of `schedule` after `after`, and the zone
/// to show them in. Mirrors the cron leader (`master/src/cron.rs`): an
/// interval counts from `start`, or from when the schedule was created; no
/// fire before `start` or after `end`.
pub fn preview(schedule: &Schedule, after: DateTime<Utc>, count: usize) -> ApiResult<(Tz, Vec<DateTime<Utc>>)> {
    let (timing, tz) = schedule_timing(schedule)?;
    let from = schedule.start.map(|s| s - chrono::Duration::milliseconds(1)).filter(|s| *s > after).unwrap_or(after);
    Ok((tz, timing.preview(from, schedule.end, count)))
}

/// How a stored schedule fires, and the zone its times are shown in (UTC
/// for `every`). Mirrors the cron leader (`master/src/cron.rs`): an
/// interval counts from `start`, or from when the schedule was created.
pub fn schedule_timing(schedule: &Schedule) -> ApiResult<(Timing, Tz)> {
    let broken = |e: String| {
        tracing::error!(schedule = %schedule.id, error = %e, "stored schedule cannot fire");
        ApiError::new(ErrorCode::Internal, format!("the stored schedule cannot fire: {e}"))
    };
    Ok(match &schedule.trigger {
        Trigger::Cron { expression, timezone } => {
            let tz = sluice_params::timezone(timezone).map_err(|e| broken(e.to_string()))?;
            (Timing::Cron { cron: Cron::parse(expression).map_err(|e| broken(e.to_string()))?, tz }, tz)
        }
        Trigger::Interval { every, times } => {
            let every = chrono::Duration::from_std(*every).map_err(|e| broken(e.to_string()))?;
            (Timing::Every { every, times: *times, start: schedule.start.unwrap_or(schedule.created_at) }, Tz::UTC)
        }
    })
}

/// `a`, `a or b`, `a, b or c`.
fn one_of(states: &[WorkflowState]) -> String {
    let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The states in which `event` is allowed, from the transition table.
fn states_allowing(event: WorkflowEvent) -> Vec<WorkflowState> {
    WorkflowState::ALL.iter().copied().filter(|s| s.transition(event).is_ok()).collect()
}

/// 409 unless the workflow-instance transition table allows `event` in the
/// instance's state; the message names the state and the ones that would do.
pub fn check_instance_event(instance: &WorkflowInstance, event: WorkflowEvent, verb: &str) -> ApiResult<()> {
    match instance.state.transition(event) {
        Ok(_) => Ok(()),
        Err(_) => Err(ApiError::conflict(format!(
            "workflow instance {} is {}: {verb} needs it {}",
            instance.id,
            instance.state,
            one_of(&states_allowing(event))
        ))),
    }
}

/// Where a force-success goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForceSuccessRoute {
    /// To the driver of the running instance: its downstream runs at once.
    Driver,
    /// The instance is over: the master restarts it (run + 1) with the task
    /// forced, and what is downstream of it runs.
    Restart,
}

/// 409 unless the task may be forced to success (the task-instance table
/// allows it: failed or killed) and its instance is running (or pausing)
/// or over as a failure or stopped.
pub fn check_force_success(task: &TaskInstance, instance: &WorkflowInstance) -> ApiResult<ForceSuccessRoute> {
    if task.state.transition(TaskEvent::ForceSuccess).is_err() {
        let allowed: Vec<&str> =
            TaskState::ALL.iter().filter(|s| s.transition(TaskEvent::ForceSuccess).is_ok()).map(|s| s.as_str()).collect();
        return Err(ApiError::conflict(format!(
            "task instance {} (`{}`) is {}: force-success needs it {}",
            task.id,
            task.name,
            task.state,
            allowed.join(" or ")
        )));
    }
    match instance.state {
        WorkflowState::Running | WorkflowState::ReadyPause => Ok(ForceSuccessRoute::Driver),
        state if state.transition(WorkflowEvent::Recover).is_ok() => Ok(ForceSuccessRoute::Restart),
        state => {
            let mut allowed = vec![WorkflowState::Running, WorkflowState::ReadyPause];
            allowed.extend(states_allowing(WorkflowEvent::Recover));
            Err(ApiError::conflict(format!(
                "workflow instance {} of task instance {} is {state}: force-success needs it {}",
                instance.id,
                task.id,
                one_of(&allowed)
            )))
        }
    }
}

impl From<TaskInstance> for TaskInstanceView {
    fn from(t: TaskInstance) -> Self {
        TaskInstanceView {
            id: t.id.get(),
            workflow_instance_id: t.workflow_instance_id.get(),
            name: t.name,
            task_type: t.task_type.0,
            state: t.state.to_string(),
            attempt: t.attempt,
            max_retries: t.max_retries,
            failovers: t.failovers,
            priority: t.priority.to_string(),
            worker_group: t.worker_group.to_string(),
            host: t.host,
            exit_code: t.exit_code,
            reason: t.message,
            submit_time: t.submit_time,
            start_time: t.start_time,
            end_time: t.end_time,
        }
    }
}

/// `tasks` is `Some` for the single-instance view, `None` in listings.
pub fn workflow_instance_view(wi: WorkflowInstance, project: &str, tasks: Option<Vec<TaskInstance>>) -> WorkflowInstanceView {
    WorkflowInstanceView {
        id: wi.id.get(),
        project: project.to_owned(),
        workflow: wi.workflow_name,
        workflow_version: wi.workflow_version,
        state: wi.state.to_string(),
        command: wi.command_kind.to_string(),
        params: wi.params,
        priority: wi.priority.to_string(),
        worker_group: wi.worker_group.to_string(),
        failure_strategy: wi.failure_strategy.to_string(),
        schedule_time: wi.schedule_time,
        owner: wi.owner,
        run: wi.run,
        start_tasks: wi.start_tasks,
        scope: wi.scope.map(|s| s.to_string()),
        reason: wi.reason,
        start_time: wi.start_time,
        end_time: wi.end_time,
        created_at: wi.created_at,
        updated_at: wi.updated_at,
        tasks: tasks.map(|ts| ts.into_iter().map(TaskInstanceView::from).collect()),
    }
}

/// The zone a backfill's dates and times are shown in: the workflow's
/// schedule's now (UTC for `every`, without a schedule, or for a zone no
/// longer known).
pub fn backfill_zone(schedule: Option<&Schedule>) -> Tz {
    schedule.and_then(|s| sluice_spec::schedule_zone(&s.trigger)).unwrap_or(Tz::UTC)
}

fn date_text(at: DateTime<Utc>, tz: Tz) -> String {
    at.with_timezone(&tz).date_naive().format("%Y-%m-%d").to_string()
}

/// The runs a backfill would create, for a dry run.
pub fn planned_runs(times: &[DateTime<Utc>], tz: Tz) -> Vec<PlannedBackfillRun> {
    times.iter().map(|&t| PlannedBackfillRun { date: date_text(t, tz), schedule_time: sluice_spec::zoned_text(t, tz) }).collect()
}

/// `runs` are the backfill's workflow instances, in any order; they are
/// shown in run order (the order they were created in).
pub fn backfill_view(backfill: Backfill, project: String, workflow: String, tz: Tz, mut runs: Vec<WorkflowInstance>) -> BackfillView {
    runs.sort_by_key(|r| r.id);
    BackfillView {
        id: backfill.id.get(),
        project,
        workflow,
        workflow_version: backfill.spec.workflow_version,
        state: backfill.state.to_string(),
        parallelism: backfill.spec.parallelism,
        timezone: tz.name().to_owned(),
        params: backfill.spec.params,
        created_runs: backfill.created_runs,
        total_runs: backfill.spec.schedule_times.len() as u32,
        runs: runs
            .into_iter()
            .map(|r| {
                // Backfill runs always have one; the creation time is a
                // harmless stand-in for an instance that somehow has not.
                let at = r.schedule_time.unwrap_or(r.created_at);
                BackfillRunView {
                    workflow_instance_id: r.id.get(),
                    date: date_text(at, tz),
                    schedule_time: sluice_spec::zoned_text(at, tz),
                    state: r.state.to_string(),
                    start_time: r.start_time,
                    end_time: r.end_time,
                }
            })
            .collect(),
        created_at: backfill.created_at,
        updated_at: backfill.updated_at,
    }
}

// ---------------------------------------------------------------------------
// Wire → domain

fn parse_field<T>(field: &str, raw: Option<String>) -> ApiResult<Option<T>>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    raw.map(|raw| raw.parse::<T>().map_err(|e| ApiError::invalid(field, e.to_string()))).transpose()
}

/// Checks a name from the URL or a body field the way definitions check them.
pub fn checked_name(kind: &'static str, field: &str, name: &str) -> ApiResult<()> {
    validate_name(kind, name).map_err(|e| ApiError::invalid(field, e.to_string()))
}

pub fn version(query: WorkflowVersionQuery) -> ApiResult<Option<u32>> {
    query
        .version
        .map(|raw| match raw.trim().parse::<u32>() {
            Ok(v) if v >= 1 => Ok(v),
            _ => Err(ApiError::invalid("version", format!("expected a version number (1 or more), got `{raw}`"))),
        })
        .transpose()
}

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 1000;

/// `GET /workflow-instances`, checked; names still to be resolved to ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceListing {
    pub project: Option<String>,
    pub workflow: Option<String>,
    pub state: Option<WorkflowState>,
    pub limit: u32,
    pub before: Option<WorkflowInstanceId>,
}

pub fn instance_listing(query: InstanceQuery) -> ApiResult<InstanceListing> {
    if query.workflow.is_some() && query.project.is_none() {
        return Err(ApiError::invalid("workflow", "filtering by workflow needs `project` too: workflow names are per project"));
    }
    let limit = match query.limit {
        None => DEFAULT_PAGE,
        Some(raw) => match raw.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(ApiError::invalid("limit", format!("expected a page size from 1 to {MAX_PAGE}, got `{raw}`"))),
        },
    };
    let before = match query.cursor {
        None => None,
        Some(raw) => match raw.trim().parse::<i64>() {
            Ok(id) if id > 0 => Some(WorkflowInstanceId(id)),
            _ => return Err(ApiError::invalid("cursor", format!("not a cursor this server handed out: `{raw}`"))),
        },
    };
    Ok(InstanceListing {
        project: query.project,
        workflow: query.workflow,
        state: parse_field::<WorkflowState>("state", query.state)?,
        limit,
        before,
    })
}

/// What a run request turns into: the instance and its start command (to
/// be written together), and the tasks it includes in run order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPlan {
    pub instance: NewWorkflowInstance,
    pub command: NewCommand,
    pub tasks: Vec<String>,
    pub dry_run: bool,
}

/// Checks every field of `request` against the workflow version `def` and
/// builds the run; nothing is written here, so a mistake leaves nothing.
pub fn plan_run(def: &WorkflowDefinition, request: RunRequest) -> ApiResult<RunPlan> {
    let priority = parse_field::<Priority>("priority", request.priority)?;
    let failure_strategy = parse_field::<FailureStrategy>("failure_strategy", request.failure_strategy)?;
    let worker_group = parse_field::<WorkerGroup>("worker_group", request.worker_group)?;
    let scope = parse_field::<RunScope>("scope", request.scope)?;
    let params = request.params.unwrap_or_default();
    if let Some(key) = params.keys().find(|k| k.trim().is_empty()) {
        return Err(ApiError::invalid("params", format!("parameter names must not be empty, got `{key}`")));
    }
    let mut start_tasks: Vec<String> = Vec::new();
    for (i, name) in request.start_tasks.unwrap_or_default().into_iter().enumerate() {
        if def.task(&name).is_none() {
            let known: Vec<&str> = def.tasks.iter().map(|t| t.spec.name.as_str()).collect();
            return Err(ApiError::invalid(
                format!("start_tasks[{i}]"),
                format!("workflow `{}` version {} has no task `{name}`; its tasks: {}", def.name, def.version, known.join(", ")),
            ));
        }
        if !start_tasks.contains(&name) {
            start_tasks.push(name);
        }
    }
    if scope.is_some() && start_tasks.is_empty() {
        return Err(ApiError::invalid("scope", "a scope needs `start_tasks`, the tasks it is taken from"));
    }
    let scope = (!start_tasks.is_empty()).then(|| scope.unwrap_or(RunScope::Only));

    let dag = def.spec().validate().map_err(|e| {
        tracing::error!(workflow = %def.id, version = def.version, error = %e, "stored workflow does not form a DAG");
        ApiError::new(ErrorCode::Internal, format!("stored workflow `{}` version {} is broken: {e}", def.name, def.version))
    })?;
    let selected = match scope {
        None => (0..dag.len()).collect(),
        Some(scope) => {
            let start: Vec<&str> = start_tasks.iter().map(String::as_str).collect();
            dag.select(&start, scope).map_err(|e| ApiError::invalid("start_tasks", e.to_string()))?
        }
    };
    let tasks = dag.topological_order().iter().filter(|n| selected.contains(n)).map(|&n| dag.name(n).to_owned()).collect();

    let priority = priority.unwrap_or(def.priority);
    let worker_group = worker_group.unwrap_or_else(|| def.worker_group.clone());
    let failure_strategy = failure_strategy.unwrap_or(def.failure_strategy);
    let instance = NewWorkflowInstance {
        params: params.clone(),
        priority,
        worker_group: worker_group.clone(),
        failure_strategy,
        start_tasks: start_tasks.clone(),
        scope,
        ..NewWorkflowInstance::start(def)
    };
    let command = NewCommand::Start(StartRun {
        workflow_version: Some(def.version),
        params,
        priority: Some(priority),
        worker_group: Some(worker_group),
        failure_strategy: Some(failure_strategy),
        start_tasks,
        scope,
        ..StartRun::of(def.id)
    });
    Ok(RunPlan { instance, command, tasks, dry_run: request.dry_run.unwrap_or(false) })
}

/// A backfill request, checked: its dates in run order, how many runs at
/// once, their parameters. Needs no workflow: schedule times come from the
/// dates with [`backfill_times`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillPlan {
    pub dates: Vec<NaiveDate>,
    pub parallelism: u32,
    pub params: Params,
    pub dry_run: bool,
}

const SERIAL: &str = "serial";
const PARALLEL: &str = "parallel";

/// `YYYY-MM-DD`, exactly (chrono alone would take `2026-3-1`).
fn date_field(field: &str, raw: &str) -> ApiResult<NaiveDate> {
    let shaped = raw.len() == 10
        && raw.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    shaped
        .then(|| NaiveDate::parse_from_str(raw, "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| ApiError::invalid(field, format!("expected a date as YYYY-MM-DD, e.g. 2026-03-01, got `{raw}`")))
}

/// Checks every field of a backfill request; nothing is written here.
pub fn plan_backfill(request: BackfillRequest) -> ApiResult<BackfillPlan> {
    let descending = match request.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => return Err(ApiError::invalid("order", format!("unknown order `{other}`, expected one of: asc, desc"))),
    };
    let max = MAX_BACKFILL_PARALLELISM;
    let parallelism = match (request.mode.as_deref(), request.parallelism) {
        (Some(SERIAL), None | Some(1)) => 1,
        (Some(SERIAL), Some(n)) => {
            return Err(ApiError::invalid(
                "parallelism",
                format!("mode `serial` runs one date at a time, so its parallelism is 1, got {n}; use mode `parallel` for more"),
            ))
        }
        (Some(PARALLEL), n) => match n.unwrap_or(DEFAULT_BACKFILL_PARALLELISM) {
            n @ 2.. if n <= max => n,
            n => return Err(ApiError::invalid("parallelism", format!("mode `parallel` needs a parallelism from 2 to {max}, got {n}"))),
        },
        (None, n) => match n.unwrap_or(1) {
            n @ 1.. if n <= max => n,
            n => return Err(ApiError::invalid("parallelism", format!("expected a parallelism from 1 to {max}, got {n}"))),
        },
        (Some(other), _) => {
            return Err(ApiError::invalid("mode", format!("unknown mode `{other}`, expected one of: {SERIAL}, {PARALLEL}")))
        }
    };
    let params = request.params.unwrap_or_default();
    if let Some(key) = params.keys().find(|k| k.trim().is_empty()) {
        return Err(ApiError::invalid("params", format!("parameter names must not be empty, got `{key}`")));
    }
    let mut dates = match (request.dates, request.start, request.end) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(ApiError::invalid("dates", "give either `dates` or `start` and `end`, not both"));
        }
        (Some(list), None, None) => {
            if list.is_empty() {
                return Err(ApiError::invalid("dates", "expected at least one date"));
            }
            if list.len() > MAX_BACKFILL_DATES {
                return Err(ApiError::invalid("dates", format!("at most {MAX_BACKFILL_DATES} dates, got {}", list.len())));
            }
            let mut dates: Vec<NaiveDate> = Vec::with_capacity(list.len());
            for (i, raw) in list.iter().enumerate() {
                let date = date_field(&format!("dates[{i}]"), raw)?;
                if dates.contains(&date) {
                    return Err(ApiError::invalid(format!("dates[{i}]"), format!("{date} is given twice")));
                }
                dates.push(date);
            }
            dates
        }
        (None, None, _) => return Err(ApiError::invalid("start", "required: the first date (with `end`), or give `dates`")),
        (None, Some(_), None) => return Err(ApiError::invalid("end", "required with `start`: the last date")),
        (None, Some(start), Some(end)) => {
            let (first, last) = (date_field("start", &start)?, date_field("end", &end)?);
            if last < first {
                return Err(ApiError::invalid("end", format!("{last} is before `start` {first}")));
            }
            let days = (last - first).num_days() + 1;
            if days > MAX_BACKFILL_DATES as i64 {
                return Err(ApiError::invalid("end", format!("{first} to {last} is {days} days; at most {MAX_BACKFILL_DATES}")));
            }
            first.iter_days().take(days as usize).collect()
        }
    };
    dates.sort();
    if descending {
        dates.reverse();
    }
    Ok(BackfillPlan { dates, parallelism, params, dry_run: request.dry_run.unwrap_or(false) })
}

/// The schedule time of each date, in order, and the zone they belong to:
/// the day's first fire time of the workflow's schedule in its zone, else
/// midnight there (UTC without a schedule).
pub fn backfill_times(schedule: Option<&Schedule>, dates: &[NaiveDate]) -> ApiResult<(Tz, Vec<DateTime<Utc>>)> {
    let (timing, tz) = match schedule {
        Some(schedule) => {
            let (timing, tz) = schedule_timing(schedule)?;
            (Some(timing), tz)
        }
        None => (None, Tz::UTC),
    };
    Ok((tz, sluice_params::cron::backfill_times(dates, timing.as_ref(), tz)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn diamond() -> WorkflowDefinition {
        let task = |name: &str, deps: &[&str]| {
            let mut spec = TaskSpec::new(name, "shell");
            spec.body.insert("script".into(), "true".into());
            spec.deps = deps.iter().map(|d| d.to_string()).collect();
            TaskDefinition { id: TaskDefinitionId(1), version: 1, spec, created_at: Utc::now() }
        };
        WorkflowDefinition {
            id: WorkflowId(7),
            project_id: ProjectId(1),
            project: "p".into(),
            version: 2,
            name: "diamond".into(),
            description: String::new(),
            params: Params::new(),
            failure_strategy: FailureStrategy::End,
            priority: Priority::Low,
            worker_group: WorkerGroup::default(),
            tasks: vec![task("a", &[]), task("b", &["a"]), task("c", &["a"]), task("d", &["b", "c"])],
            created_at: Utc::now(),
        }
    }

    #[test]
    fn a_task_instance_shows_why_it_ended() {
        let now = Utc::now();
        let task = TaskInstance {
            id: TaskInstanceId(5),
            workflow_instance_id: WorkflowInstanceId(3),
            task_definition_id: TaskDefinitionId(1),
            name: "bad".into(),
            task_type: TaskType("shell".into()),
            state: TaskState::Failure,
            attempt: 1,
            max_retries: 0,
            failovers: 0,
            priority: Priority::Medium,
            worker_group: WorkerGroup::default(),
            host: None,
            exit_code: None,
            retry_at: None,
            log_path: None,
            submit_time: now,
            start_time: None,
            end_time: Some(now),
            updated_at: now,
            outputs: Params::new(),
            message: Some("cannot resolve `$[yyyyMMdd-x]`: unsupported pattern letter `x`".into()),
            run: 1,
            retries: 0,
            kill_reason: None,
            branches: None,
            external_id: None,
        };
        let view = TaskInstanceView::from(task);
        assert_eq!(view.reason.as_deref(), Some("cannot resolve `$[yyyyMMdd-x]`: unsupported pattern letter `x`"));
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["reason"], "cannot resolve `$[yyyyMMdd-x]`: unsupported pattern letter `x`");
    }

    fn error(request: RunRequest) -> (Option<String>, String) {
        let e = plan_run(&diamond(), request).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidInput);
        (e.field, e.message)
    }

    #[test]
    fn a_plain_run_takes_the_definition_defaults() {
        let plan = plan_run(&diamond(), RunRequest::default()).unwrap();
        assert_eq!(plan.tasks.first().map(String::as_str), Some("a"));
        assert_eq!(plan.tasks.len(), 4);
        assert_eq!((plan.instance.priority, plan.instance.workflow_version, plan.instance.scope), (Priority::Low, 2, None));
        assert!(matches!(&plan.command, NewCommand::Start(run) if run.workflow_version == Some(2)), "{:?}", plan.command);
        assert!(!plan.dry_run);
    }

    #[test]
    fn start_tasks_with_scope_select_the_run() {
        let request = RunRequest { start_tasks: Some(vec!["b".into()]), scope: Some("downstream".into()), ..Default::default() };
        let plan = plan_run(&diamond(), request).unwrap();
        assert_eq!(plan.tasks, ["b", "d"]);
        assert_eq!((plan.instance.start_tasks.clone(), plan.instance.scope), (vec!["b".to_string()], Some(RunScope::Downstream)));
        assert!(matches!(&plan.command, NewCommand::Start(run) if run.start_tasks == ["b"]), "{:?}", plan.command);
        let only = plan_run(&diamond(), RunRequest { start_tasks: Some(vec!["c".into(), "c".into()]), ..Default::default() }).unwrap();
        assert_eq!((only.tasks, only.instance.scope), (vec!["c".to_string()], Some(RunScope::Only)));
    }

    #[test]
    fn every_bad_field_is_named() {
        let (field, message) = error(RunRequest { start_tasks: Some(vec!["a".into(), "zz".into()]), ..Default::default() });
        assert_eq!(field.as_deref(), Some("start_tasks[1]"));
        assert!(message.contains("no task `zz`"), "{message}");
        assert_eq!(error(RunRequest { priority: Some("urgent".into()), ..Default::default() }).0.as_deref(), Some("priority"));
        assert_eq!(
            error(RunRequest { failure_strategy: Some("stop".into()), ..Default::default() }).0.as_deref(),
            Some("failure_strategy")
        );
        assert_eq!(error(RunRequest { worker_group: Some("gpu pool".into()), ..Default::default() }).0.as_deref(), Some("worker_group"));
        assert_eq!(error(RunRequest { scope: Some("sideways".into()), ..Default::default() }).0.as_deref(), Some("scope"));
        assert_eq!(error(RunRequest { scope: Some("only".into()), ..Default::default() }).0.as_deref(), Some("scope"));
    }

    #[test]
    fn listing_queries_are_checked() {
        let ok = instance_listing(InstanceQuery {
            state: Some("running".into()),
            limit: Some("2".into()),
            cursor: Some("9".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((ok.state, ok.limit, ok.before), (Some(WorkflowState::Running), 2, Some(WorkflowInstanceId(9))));
        assert_eq!(instance_listing(InstanceQuery::default()).unwrap().limit, DEFAULT_PAGE);
        for (query, field) in [
            (InstanceQuery { state: Some("sleeping".into()), ..Default::default() }, "state"),
            (InstanceQuery { limit: Some("0".into()), ..Default::default() }, "limit"),
            (InstanceQuery { limit: Some("1001".into()), ..Default::default() }, "limit"),
            (InstanceQuery { cursor: Some("abc".into()), ..Default::default() }, "cursor"),
            (InstanceQuery { workflow: Some("w".into()), ..Default::default() }, "workflow"),
        ] {
            assert_eq!(instance_listing(query).unwrap_err().field.as_deref(), Some(field));
        }
        assert_eq!(version(WorkflowVersionQuery { version: Some("0".into()) }).unwrap_err().field.as_deref(), Some("version"));
        assert_eq!(version(WorkflowVersionQuery { version: Some("3".into()) }).unwrap(), Some(3));
    }

    fn schedule(trigger: Trigger, start: Option<&str>, end: Option<&str>) -> Schedule {
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        Schedule {
            id: ScheduleId(1),
            workflow_id: WorkflowId(7),
            trigger,
            start: start.map(at),
            end: end.map(at),
            misfire: MisfirePolicy::RunOnce,
            online: false,
            last_fire: None,
            created_at: at("2026-01-01T00:00:10Z"),
            updated_at: at("2026-01-01T00:00:10Z"),
        }
    }

    fn shown(schedule: &Schedule, after: &str, count: usize) -> Vec<String> {
        let after = DateTime::parse_from_rfc3339(after).unwrap().with_timezone(&Utc);
        let (tz, times) = preview(schedule, after, count).unwrap();
        times.into_iter().map(|t| sluice_spec::zoned_text(t, tz)).collect()
    }

    #[test]
    fn previews_are_in_the_schedule_zone_across_dst() {
        let ny = |expression: &str| Trigger::Cron { expression: expression.into(), timezone: "America/New_York".into() };
        let daily = schedule(ny("0 30 2 * * ?"), None, None);
        assert_eq!(
            shown(&daily, "2026-03-07T12:00:00Z", 3),
            ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00", "2026-03-10T02:30:00-04:00"],
            "02:30 does not exist on 2026-03-08"
        );
        let daily = schedule(ny("0 30 1 * * ?"), None, Some("2026-11-03T00:00:00Z"));
        assert_eq!(
            shown(&daily, "2026-10-31T12:00:00Z", 5),
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
            "01:30 happens twice on 2026-11-01 but fires once; nothing after `end`"
        );
        // Not before `start`, even when asked for earlier times.
        let later = schedule(ny("0 30 2 * * ?"), Some("2027-03-13T05:00:00Z"), None);
        assert_eq!(shown(&later, "2026-11-21T00:00:00Z", 2), ["2027-03-13T02:30:00-05:00", "2027-03-14T03:00:00-04:00"]);
    }

    #[test]
    fn interval_previews_count_from_start_or_creation() {
        let every = |times| Trigger::Interval { every: std::time::Duration::from_secs(300), times };
        let from_creation = schedule(every(Some(2)), None, None);
        assert_eq!(shown(&from_creation, "2026-01-01T00:00:00Z", 5), ["2026-01-01T00:00:10+00:00", "2026-01-01T00:05:10+00:00"]);
        let from_start = schedule(every(None), Some("2026-02-01T00:00:00Z"), None);
        assert_eq!(shown(&from_start, "2026-02-01T00:07:00Z", 2), ["2026-02-01T00:10:00+00:00", "2026-02-01T00:15:00+00:00"]);
    }

    #[test]
    fn preview_queries_are_checked() {
        let now = Utc::now();
        assert_eq!(preview_query(PreviewQuery::default(), now).unwrap(), (DEFAULT_PREVIEW, now));
        let (count, after) = preview_query(PreviewQuery { count: Some("100".into()), after: Some("2026-03-08T00:00:00-05:00".into()) }, now).unwrap();
        assert_eq!((count, after.to_rfc3339()), (100, "2026-03-08T05:00:00+00:00".to_owned()));
        for (query, field) in [
            (PreviewQuery { count: Some("0".into()), ..Default::default() }, "count"),
            (PreviewQuery { count: Some("101".into()), ..Default::default() }, "count"),
            (PreviewQuery { count: Some("five".into()), ..Default::default() }, "count"),
            (PreviewQuery { after: Some("tomorrow".into()), ..Default::default() }, "after"),
        ] {
            assert_eq!(preview_query(query, now).unwrap_err().field.as_deref(), Some(field));
        }
    }

    fn backfill(body: serde_json::Value) -> ApiResult<BackfillPlan> {
        plan_backfill(serde_json::from_value(body).unwrap())
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn backfill_dates_come_in_run_order() {
        let plan = backfill(serde_json::json!({"start": "2026-02-27", "end": "2026-03-02"})).unwrap();
        assert_eq!(plan.dates, ["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"].map(day));
        assert_eq!((plan.parallelism, plan.dry_run), (1, false));
        let plan = backfill(serde_json::json!({"start": "2026-03-01", "end": "2026-03-03", "order": "desc", "mode": "parallel"})).unwrap();
        assert_eq!(plan.dates, ["2026-03-03", "2026-03-02", "2026-03-01"].map(day));
        assert_eq!(plan.parallelism, DEFAULT_BACKFILL_PARALLELISM);
        let plan = backfill(serde_json::json!({"dates": ["2026-03-05", "2024-02-29"], "parallelism": 3, "dry_run": true})).unwrap();
        assert_eq!((plan.dates, plan.parallelism, plan.dry_run), (vec![day("2024-02-29"), day("2026-03-05")], 3, true));
        let one = backfill(serde_json::json!({"start": "2026-03-01", "end": "2026-03-01", "mode": "serial", "parallelism": 1})).unwrap();
        assert_eq!(one.dates, [day("2026-03-01")]);
        let longest = backfill(serde_json::json!({"start": "2016-01-01", "end": "2026-01-07"})).unwrap();
        assert_eq!(longest.dates.len(), MAX_BACKFILL_DATES);
    }

    #[test]
    fn every_bad_backfill_field_is_named() {
        for (body, field, needle) in [
            (serde_json::json!({"start": "2026-03-10", "end": "2026-03-01"}), "end", "2026-03-01 is before `start` 2026-03-10"),
            (serde_json::json!({"start": "2016-01-01", "end": "2026-01-08"}), "end", "3661 days; at most 3660"),
            (serde_json::json!({"start": "2026-03-01"}), "end", "required"),
            (serde_json::json!({"end": "2026-03-01"}), "start", "required"),
            (serde_json::json!({}), "start", "or give `dates`"),
            (serde_json::json!({"dates": ["2026-03-01"], "start": "2026-03-01"}), "dates", "not both"),
            (serde_json::json!({"dates": ["2026-03-01"], "end": "2026-03-01"}), "dates", "not both"),
            (serde_json::json!({"dates": []}), "dates", "at least one"),
            (serde_json::json!({"dates": ["2026-03-01", "2026-02-30"]}), "dates[1]", "got `2026-02-30`"),
            (serde_json::json!({"dates": ["2026-03-01", "2026-03-01"]}), "dates[1]", "given twice"),
            (serde_json::json!({"start": "2026-3-1", "end": "2026-03-02"}), "start", "YYYY-MM-DD"),
            (serde_json::json!({"start": "2026-03-01", "end": "tomorrow"}), "end", "YYYY-MM-DD"),
            (serde_json::json!({"start": "2026-03-01", "end": "2026-03-02", "mode": "serial", "parallelism": 3}), "parallelism", "mode `parallel`"),
            (serde_json::json!({"start": "2026-03-01", "end": "2026-03-02", "mode": "parallel", "parallelism": 1}), "parallelism", "from 2 to 100"),
            (serde_json::json!({"start": "2026-03-01", "end": "2026-03-02", "mode": "parallel", "parallelism": 101}), "parallelism", "from 2 to 100"),
            (serde_json::json!({"start": "2026-03-01", "end": "2026-03-02", "parallelism": 0}), "parallelism", "from 1 to 100"),
            (serde_json::json!({"start": "2026-03-01", "end": "2026-03-02", "mode": "fast"}), "mode", "unknown mode `fast`"),
            (serde_json::json!({"start": "2026-03-01", "end": "2026-03-02", "order": "newest"}), "order", "unknown order `newest`"),
            (serde_json::json!({"start": "2026-03-01", "end": "2026-03-02", "params": {" ": "x"}}), "params", "must not be empty"),
        ] {
            let e = backfill(body.clone()).unwrap_err();
            assert_eq!((e.code, e.field.as_deref()), (ErrorCode::InvalidInput, Some(field)), "{body}: {e}");
            assert!(e.message.contains(needle), "{body}: expected `{needle}` in {}", e.message);
        }
        let too_many: Vec<String> = day("2000-01-01").iter_days().take(MAX_BACKFILL_DATES + 1).map(|d| d.to_string()).collect();
        assert_eq!(backfill(serde_json::json!({"dates": too_many})).unwrap_err().field.as_deref(), Some("dates"));
        // Unknown keys and wrong types are named by the body reader.
        let e = crate::extract::parse_json::<BackfillRequest>(br#"{"start": "2026-03-01", "end": "2026-03-02", "parallel": 3}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("parallel"));
        let e = crate::extract::parse_json::<BackfillRequest>(br#"{"dates": ["2026-03-01", 5]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("dates[1]"));
        let e = crate::extract::parse_json::<BackfillRequest>(br#"{"parallelism": -2}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("parallelism"));
    }

    #[test]
    fn backfill_dates_take_the_schedule_time_of_their_day_in_its_zone() {
        let dates = ["2026-03-07", "2026-03-08", "2026-03-09"].map(day);
        let text = |(tz, times): (Tz, Vec<DateTime<Utc>>)| times.into_iter().map(|t| sluice_spec::zoned_text(t, tz)).collect::<Vec<_>>();
        let ny = schedule(Trigger::Cron { expression: "0 30 2 * * ?".into(), timezone: "America/New_York".into() }, None, None);
        assert_eq!(
            text(backfill_times(Some(&ny), &dates).unwrap()),
            ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
            "02:30 does not exist on 2026-03-08"
        );
        let weekdays = schedule(Trigger::Cron { expression: "0 0 6 ? * MON-FRI".into(), timezone: "Asia/Shanghai".into() }, None, None);
        assert_eq!(
            text(backfill_times(Some(&weekdays), &dates).unwrap()),
            ["2026-03-07T00:00:00+08:00", "2026-03-08T00:00:00+08:00", "2026-03-09T06:00:00+08:00"],
            "no fire on the weekend: midnight in the zone"
        );
        assert_eq!(text(backfill_times(None, &dates[..1]).unwrap()), ["2026-03-07T00:00:00+00:00"]);
        assert_eq!(
            planned_runs(&backfill_times(Some(&ny), &dates[1..2]).unwrap().1, "America/New_York".parse().unwrap()),
            [PlannedBackfillRun { date: "2026-03-08".into(), schedule_time: "2026-03-08T03:00:00-04:00".into() }]
        );
        assert_eq!(backfill_zone(Some(&weekdays)).name(), "Asia/Shanghai");
        assert_eq!(backfill_zone(None), Tz::UTC);
    }

    #[test]
    fn schedules_show_in_their_document_form() {
        let s = schedule(Trigger::Cron { expression: "0 30 2 * * ?".into(), timezone: "Asia/Shanghai".into() }, Some("2025-12-31T16:00:00Z"), None);
        let view = schedule_view("p", "w", &s);
        assert_eq!(view.schedule.cron.as_deref(), Some("0 30 2 * * ?"));
        assert_eq!(view.schedule.start.as_deref(), Some("2026-01-01"), "midnight in Shanghai reads as the date");
        assert_eq!(view.schedule.misfire.as_deref(), Some("run_once"));
        assert_eq!((view.schedule.every, view.online), (None, false));
    }

}
