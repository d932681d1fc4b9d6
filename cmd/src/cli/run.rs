//! `sluice run`: start a workflow and, with `--wait`, follow it to its end.

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use sluice_api::types::{RunRequest, TaskInstanceView, WorkflowInstanceView};
use clap::builder::PossibleValuesParser;
use sluice_domain::{FailureStrategy, Params, Priority, RunScope, TaskState, WorkflowState};

use super::client::Client;
use super::logs::RunLogs;
use super::output::{self, Format, Progress};
use super::{Output, Server, FAILED};

/// How often `--wait` asks the API how the run is going.
const POLL: Duration = Duration::from_millis(200);

#[derive(Args)]
pub struct RunArgs {
    /// The workflow, as PROJECT/WORKFLOW.
    #[arg(value_name = "PROJECT/WORKFLOW", value_parser = target)]
    target: (String, String),
    /// A run-time parameter overriding the workflow's. Repeatable.
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE", value_parser = param)]
    params: Vec<(String, String)>,
    #[arg(long, value_parser = names(Priority::ALL.iter().map(|p| p.as_str())))]
    priority: Option<String>,
    #[arg(long, value_name = "GROUP")]
    worker_group: Option<String>,
    #[arg(long, value_parser = names(FailureStrategy::ALL.iter().map(|s| s.as_str())))]
    failure_strategy: Option<String>,
    /// Run from this task only (see --scope). Repeatable.
    #[arg(long = "start-task", value_name = "TASK")]
    start_tasks: Vec<String>,
    /// With --start-task: the tasks alone, or with everything up- or downstream.
    #[arg(long, value_parser = names(RunScope::ALL.iter().map(|s| s.as_str())), requires = "start_tasks")]
    scope: Option<String>,
    /// Check the run and print the tasks it would run; start nothing.
    #[arg(long, conflicts_with = "wait")]
    dry_run: bool,
    /// Follow the run to its end; exit 0 if it succeeded, 1 if not.
    #[arg(long)]
    wait: bool,
    /// With --wait: print each task's log as it runs, every line prefixed
    /// by `[task name] `.
    #[arg(long, requires = "wait")]
    logs: bool,
    #[command(flatten)]
    server: Server,
    #[command(flatten)]
    output: Output,
}

/// The domain's names of an enum's values, for clap to offer and check.
fn names(values: impl Iterator<Item = &'static str>) -> PossibleValuesParser {
    PossibleValuesParser::new(values)
}

pub(super) fn target(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((project, workflow)) if !project.is_empty() && !workflow.is_empty() && !workflow.contains('/') => {
            Ok((project.to_owned(), workflow.to_owned()))
        }
        _ => Err(format!("expected PROJECT/WORKFLOW, e.g. demo/daily_etl, got `{text}`")),
    }
}

pub(super) fn param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{text}`")),
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let (project, workflow) = &args.target;
    let request = RunRequest {
        params: (!args.params.is_empty()).then(|| args.params.iter().cloned().collect::<Params>()),
        priority: args.priority.clone(),
        worker_group: args.worker_group.clone(),
        failure_strategy: args.failure_strategy.clone(),
        start_tasks: (!args.start_tasks.is_empty()).then(|| args.start_tasks.clone()),
        scope: args.scope.clone(),
        dry_run: args.dry_run.then_some(true),
    };
    let answer = client.run(project, workflow, &request).await?;
    let accepted = answer.value;
    let json = args.output.output == Format::Json;
    let Some(id) = accepted.workflow_instance_id else {
        if json {
            output::print_json(&answer.json);
        } else {
            println!(
                "dry run: {project}/{workflow} version {} would run {}: {}",
                accepted.version,
                tasks_text(accepted.tasks.len()),
                accepted.tasks.join(", ")
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    if !args.wait {
        if json {
            output::print_json(&answer.json);
        } else {
            println!("instance {id}: {project}/{workflow} version {} ({})", accepted.version, tasks_text(accepted.tasks.len()));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        println!("instance {id}: {project}/{workflow} version {} ({})", accepted.version, tasks_text(accepted.tasks.len()));
    }
    let mut logs = args.logs.then(RunLogs::default);
    let (end, end_json) = wait(&client, id, Some(accepted.tasks.len()), None, logs.as_mut()).await?;
    if let Some(logs) = logs {
        logs.finish().await;
    }
    Ok(ended(&end, &end_json, Some(accepted.tasks.len()), json))
}

/// Prints how a followed instance ended (its summary, or its JSON) and
/// returns the exit code: 0 if it succeeded, 1 if not.
pub(super) fn ended(end: &WorkflowInstanceView, end_json: &serde_json::Value, total: Option<usize>, json: bool) -> ExitCode {
    if json {
        output::print_json(end_json);
    } else {
        println!("{}", summary(end, total.unwrap_or_else(|| tasks(end).len())));
    }
    if end.state == WorkflowState::Success.as_str() { ExitCode::SUCCESS } else { ExitCode::from(FAILED) }
}

fn tasks_text(n: usize) -> String {
    if n == 1 { "1 task".into() } else { format!("{n} tasks") }
}

/// Polls the instance until it ends, showing progress; returns its last
/// view. `total` is the number of tasks the run includes (unknown: those
/// the instance has); with `run`, the instance must first reach that run
/// (a rerun or recover that a master has not started yet still shows the
/// previous run's end).
pub(super) async fn wait(
    client: &Client,
    id: i64,
    total: Option<usize>,
    run: Option<u32>,
    mut logs: Option<&mut RunLogs>,
) -> anyhow::Result<(WorkflowInstanceView, serde_json::Value)> {
    // Log lines and a progress line redrawn under them do not mix.
    let mut progress = if logs.is_some() { Progress::plain_on_stderr() } else { Progress::on_stderr() };
    loop {
        let answer = match client.instance(id).await {
            Ok(answer) => answer,
            Err(error) => {
                progress.finish();
                return Err(error.into());
            }
        };
        let started = run.is_none_or(|run| answer.value.run >= run);
        if let Some(logs) = logs.as_deref_mut() {
            if started {
                logs.update(client, &answer.value);
            }
        }
        if started && is_final(&answer.value) {
            progress.finish();
            return Ok((answer.value, answer.json));
        }
        let line = match run {
            Some(run) if !started => format!("instance {id} {}: waiting for a master to start run {run}", answer.value.state),
            _ => progress_line(&answer.value, total.unwrap_or_else(|| tasks(&answer.value).len())),
        };
        progress.show(&line);
        tokio::time::sleep(POLL).await;
    }
}

fn is_final(wi: &WorkflowInstanceView) -> bool {
    WorkflowState::from_str(&wi.state).is_ok_and(|s| s.is_final())
}

fn tasks(wi: &WorkflowInstanceView) -> &[TaskInstanceView] {
    wi.tasks.as_deref().unwrap_or_default()
}

fn task_done(task: &TaskInstanceView) -> bool {
    TaskState::from_str(&task.state).is_ok_and(|s| s.is_final())
}

/// `instance 7 running: 2/5 tasks done; running: transform`
fn progress_line(wi: &WorkflowInstanceView, total: usize) -> String {
    let done = tasks(wi).iter().filter(|t| task_done(t)).count();
    let mut line = format!("instance {} {}: {done}/{total} tasks done", wi.id, wi.state);
    let active: Vec<String> = tasks(wi)
        .iter()
        .filter(|t| !task_done(t))
        .map(|t| if t.state == "running" { t.name.clone() } else { format!("{} ({})", t.name, t.state) })
        .collect();
    if !active.is_empty() {
        line.push_str(&format!("; now: {}", active.join(", ")));
    }
    line
}

/// The last line of `run --wait`: how the run ended, and what failed.
fn summary(wi: &WorkflowInstanceView, total: usize) -> String {
    let done = tasks(wi).iter().filter(|t| task_done(t)).count();
    let mut line = format!(
        "instance {} {}: {done}/{total} tasks done in {}",
        wi.id,
        wi.state,
        output::elapsed(wi.start_time, wi.end_time)
    );
    let failed: Vec<String> = tasks(wi)
        .iter()
        .filter(|t| t.state == TaskState::Failure.as_str() || t.state == TaskState::Killed.as_str())
        .map(|t| match (t.exit_code, &t.reason) {
            (Some(code), _) => format!("{} ({}, exit code {code})", t.name, t.state),
            // It never ran (or was killed): the reason is all there is.
            (None, Some(_)) => format!("{} ({}: {})", t.name, t.state, output::reason(t)),
            (None, None) => format!("{} ({})", t.name, t.state),
        })
        .collect();
    if !failed.is_empty() {
        line.push_str(&format!("; {}", failed.join(", ")));
    }
    if wi.state != WorkflowState::Success.as_str() {
        line.push_str(&format!(" (details: sluice status {})", wi.id));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn targets_and_params_parse_or_say_what_is_expected() {
        assert_eq!(target("demo/daily_etl").unwrap(), ("demo".to_owned(), "daily_etl".to_owned()));
        for bad in ["demo", "/x", "demo/", "a/b/c"] {
            assert!(target(bad).unwrap_err().contains("PROJECT/WORKFLOW"), "{bad}");
        }
        assert_eq!(param("dt=2026-01-01").unwrap(), ("dt".to_owned(), "2026-01-01".to_owned()));
        assert_eq!(param("q=a=b").unwrap(), ("q".to_owned(), "a=b".to_owned()));
        assert_eq!(param("empty=").unwrap(), ("empty".to_owned(), String::new()));
        assert!(param("novalue").is_err() && param("=x").is_err());
    }

    fn task(name: &str, state: &str, exit_code: Option<i32>) -> TaskInstanceView {
        TaskInstanceView {
            id: 1,
            workflow_instance_id: 7,
            name: name.into(),
            task_type: "shell".into(),
            state: state.into(),
            attempt: 1,
            max_retries: 0,
            failovers: 0,
            priority: "medium".into(),
            worker_group: "default".into(),
            host: None,
            exit_code,
            reason: exit_code.map(|code| format!("exit code {code}")),
            submit_time: Utc::now(),
            start_time: None,
            end_time: None,
        }
    }

    fn instance(state: &str, tasks: Vec<TaskInstanceView>) -> WorkflowInstanceView {
        WorkflowInstanceView {
            id: 7,
            project: "demo".into(),
            workflow: "daily_etl".into(),
            workflow_version: 1,
            state: state.into(),
            command: "start".into(),
            params: Params::new(),
            priority: "medium".into(),
            worker_group: "default".into(),
            failure_strategy: "end".into(),
            schedule_time: None,
            owner: None,
            run: 1,
            start_tasks: Vec::new(),
            scope: None,
            reason: None,
            start_time: None,
            end_time: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            tasks: Some(tasks),
        }
    }

    #[test]
    fn progress_counts_finished_tasks_and_names_the_active_ones() {
        let wi = instance(
            "running",
            vec![task("a", "success", Some(0)), task("b", "running", None), task("c", "dispatched", None)],
        );
        assert_eq!(progress_line(&wi, 5), "instance 7 running: 1/5 tasks done; now: b, c (dispatched)");
        assert!(!is_final(&wi));
        assert_eq!(progress_line(&instance("submitted", vec![]), 5), "instance 7 submitted: 0/5 tasks done");
    }

    #[test]
    fn the_summary_names_what_failed() {
        let wi = instance("failure", vec![task("a", "success", Some(0)), task("b", "failure", Some(3))]);
        assert!(is_final(&wi));
        assert_eq!(
            summary(&wi, 3),
            "instance 7 failure: 2/3 tasks done in -; b (failure, exit code 3) (details: sluice status 7)"
        );
        let ok = instance("success", vec![task("a", "success", Some(0))]);
        assert_eq!(summary(&ok, 1), "instance 7 success: 1/1 tasks done in -");
        // A task that never ran has no exit code, only its reason.
        let never = TaskInstanceView { reason: Some("cannot resolve `$[yyyyMMdd-x]`:\n unsupported pattern letter `x`".into()), ..task("c", "failure", None) };
        assert_eq!(
            summary(&instance("failure", vec![never]), 1),
            "instance 7 failure: 1/1 tasks done in -; c (failure: cannot resolve `$[yyyyMMdd-x]`: unsupported pattern letter `x`) (details: sluice status 7)"
        );
    }
}
