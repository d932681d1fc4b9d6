//! Running one task attempt as an OS process group, start to report.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use sluice_domain::TaskDispatch;
use sluice_proto::v1::{
    task_event_request::Event, TaskEventRequest, TaskExternalId, TaskFinished, TaskOutcome,
    TaskRunning, TaskTimeoutWarning,
};
use sluice_logs::LogKey;
use sluice_registry::QueueItem;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::fetch::{self, NotRun, Payload};
use crate::logs::{self, LogWriter};
use crate::supervisor;
use crate::running::{StopCause, TaskAttempt};
use crate::Shared;

/// How often the group is checked for members after the signals: only
/// while a task is being killed, for at most the kill grace.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// How long to wait for SIGKILLed processes to disappear: they cannot
/// resist, only the kernel can be slow.
const AFTER_SIGKILL: Duration = Duration::from_secs(5);

/// How an attempt ended, as reported to the master.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Finished {
    pub outcome: TaskOutcome,
    pub exit_code: Option<i32>,
    pub reason: String,
    /// Output parameters the task printed (`${setValue(key=value)}`).
    pub outputs: BTreeMap<String, String>,
    /// Not to be reported: the worker lost its registry session, and its
    /// masters fail the attempt over (see `session`).
    pub unreported: bool,
}

impl Finished {
    fn failure(reason: impl Into<String>) -> Self {
        Finished {
            outcome: TaskOutcome::Failure,
            reason: reason.into(),
            ..Finished::default()
        }
    }

    fn into_event(self) -> Event {
        Event::Finished(TaskFinished {
            outcome: self.outcome.into(),
            exit_code: self.exit_code,
            reason: self.reason,
            outputs: self.outputs.into_iter().collect(),
        })
    }
}

/// Runs the task in `item` and reports it; `permit` (the slot) is held
/// until the attempt's last event is queued.
pub(crate) async fn run(
    shared: Arc<Shared>,
    group: String,
    item: QueueItem,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let payload = match Payload::decode(&item.payload) {
        Ok(payload) => payload,
        Err(error) => return report_undecodable(&shared, &group, &item, &error),
    };
    let ticket = payload.ticket();
    let attempt = TaskAttempt {
        task_instance_id: ticket.task_instance_id,
        attempt: ticket.attempt,
    };
    let Some((_running, mut stop)) = shared.running.start(attempt) else {
        warn!(task_instance = %ticket.task_instance_id, attempt = ticket.attempt, key = %item.key, "attempt is running or ran here; ignoring the duplicate queue entry");
        return;
    };
    let dispatch = match payload {
        Payload::Dispatch(dispatch) => dispatch,
        Payload::Ticket(ticket) => {
            let fetched = tokio::select! {
                fetched = fetch::dispatch(&shared, &ticket) => fetched,
                // Stopped before it started: nothing ran, and the master
                // settles the attempt (its watchdog sees it taken and
                // never reported running).
                _ = &mut stop => {
                    warn!(task_instance = %ticket.task_instance_id, attempt = ticket.attempt, "stopped while fetching the dispatch; not run");
                    return;
                }
            };
            match fetched {
                Ok(dispatch) => dispatch,
                Err(NotRun::Stale(why)) => {
                    info!(task_instance = %ticket.task_instance_id, attempt = ticket.attempt, reason = %why, "attempt is stale; not run");
                    return;
                }
                Err(error) => {
                    error!(task_instance = %ticket.task_instance_id, attempt = ticket.attempt, key = %item.key, %error, "cannot get the attempt's dispatch; not run (its master queues a new attempt)");
                    return;
                }
            }
        }
    };
    info!(workflow_instance = %dispatch.workflow_instance_id, task_instance = %dispatch.task_instance_id, attempt = dispatch.attempt, task = %dispatch.task, task_type = %dispatch.task_type, %group, "task taken");
    // A bug in a runner must still end the attempt with a report, or the
    // master would wait for it forever.
    let finished = match std::panic::AssertUnwindSafe(execute(&shared, &dispatch, stop))
        .catch_unwind()
        .await
    {
        Ok(finished) => finished,
        Err(_) => {
            error!(task_instance = %dispatch.task_instance_id, attempt = dispatch.attempt, "task runner panicked");
            Finished::failure("internal worker error while running the task")
        }
    };
    info!(
        workflow_instance = %dispatch.workflow_instance_id, task_instance = %dispatch.task_instance_id,
        attempt = dispatch.attempt, outcome = outcome_name(finished.outcome), exit_code = ?finished.exit_code,
        reason = %finished.reason, "task finished"
    );
    if finished.unreported {
        return;
    }
    shared.report(&dispatch, finished.into_event());
}

/// A payload that is not a [`TaskDispatch`] (a master of another release,
/// a hand-made entry) is failed at its master if the fields naming the
/// attempt can be read, so that its workflow does not hang.
fn report_undecodable(shared: &Shared, group: &str, item: &QueueItem, error: &serde_json::Error) {
    let value: serde_json::Value = serde_json::from_slice(&item.payload).unwrap_or_default();
    let ids = (
        value.get("master").and_then(|v| v.as_str()),
        value.get("workflow_instance_id").and_then(|v| v.as_i64()),
        value.get("task_instance_id").and_then(|v| v.as_i64()),
        value
            .get("attempt")
            .and_then(|v| v.as_u64())
            .and_then(|a| u32::try_from(a).ok()),
    );
    match ids {
        (Some(master), Some(workflow_instance_id), Some(task_instance_id), Some(attempt)) => {
            error!(%group, key = %item.key, %error, task_instance = task_instance_id, attempt, "cannot decode task dispatch; failing the attempt");
            let event = TaskEventRequest {
                workflow_instance_id,
                task_instance_id,
                attempt,
                worker: shared.addr.clone(),
                event_time_ms: chrono::Utc::now().timestamp_millis(),
                event: Some(
                    Finished::failure(format!("cannot read the task dispatch: {error}"))
                        .into_event(),
                ),
            };
            shared.outbox.send(master, event);
        }
        _ => {
            error!(%group, key = %item.key, %error, "cannot decode task dispatch, nor find its master; dropping the queue entry")
        }
    }
}

/// Everything between taking the attempt and its end, logged: the log
/// is complete, and copied to the log store, before the end is reported.
async fn execute(shared: &Shared, dispatch: &TaskDispatch, stop: oneshot::Receiver<StopCause>) -> Finished {
    let key = LogKey {
        workflow_instance_id: dispatch.workflow_instance_id.get(),
        task_instance_id: dispatch.task_instance_id.get(),
        attempt: dispatch.attempt,
    };
    let log_path = shared.log_dir.join(key.relative_path());
    let log = match LogWriter::open(&shared.logs, key, log_path.clone()).await {
        Ok(log) => log,
        Err(reason) => return Finished::failure(reason),
    };
    let began = Instant::now();
    let (finished, log) = attempt(shared, dispatch, stop, log).await;
    match log {
        Some(mut log) => {
            let took = humantime::format_duration(round_ms(began.elapsed()));
            log.note(&format!("finished: {} ({}) after {took}", outcome_name(finished.outcome), finished.reason)).await;
            log.finish(&shared.logs);
        }
        None => shared.logs.forget(&key),
    }
    if let Some(store) = &shared.log_store {
        // Before the report: once the master hears of the end, the log
        // must be readable even if this worker dies the next instant.
        if let Err(error) = store.put(&key, &log_path).await {
            warn!(task_instance = key.task_instance_id, attempt = key.attempt, %error, "cannot copy the task log to the log store");
        }
    }
    finished
}

fn round_ms(elapsed: Duration) -> Duration {
    Duration::from_millis(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// How long the log waits for the rest of the output once the task's
/// process has exited (its background children may still hold the pipe).
const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// Runs the attempt, logging what happens; gives the log back unless the
/// part copying the output failed unexpectedly.
async fn attempt(
    shared: &Shared,
    dispatch: &TaskDispatch,
    mut stop: oneshot::Receiver<StopCause>,
    mut log: LogWriter,
) -> (Finished, Option<LogWriter>) {
    let workdir = shared
        .work_dir
        .join(dispatch.workflow_instance_id.to_string())
        .join(dispatch.task_instance_id.to_string())
        .join(dispatch.attempt.to_string());
    let log_path = log.path().to_owned();
    log.note_soon(&format!(
        "attempt {} of task `{}` ({}) of {}/{}, workflow instance {}, on worker {}",
        dispatch.attempt, dispatch.task, dispatch.task_type, dispatch.project, dispatch.workflow, dispatch.workflow_instance_id, shared.addr
    ));
    let params: Vec<String> = dispatch.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    log.note_soon(&format!("parameters: {}", if params.is_empty() { "none".to_owned() } else { params.join(", ") }));
    let failed = |reason: String| Finished::failure(reason);
    let spec = match shared.plugins.prepare(dispatch, &workdir) {
        Ok(spec) => spec,
        Err(error) => {
            log.note(&error.to_string()).await;
            return (failed(error.to_string()), Some(log));
        }
    };
    let (mut command, output, control) = match prepare_process(dispatch, &spec, &workdir).await {
        Ok(prepared) => prepared,
        Err(reason) => {
            log.note(&reason).await;
            return (failed(reason), Some(log));
        }
    };
    log.note_soon(&format!("command: {}", command_line(&spec)));
    // Killed while the working directory was being prepared.
    if let Ok(cause) = stop.try_recv() {
        return (stopped_before_start(cause), Some(log));
    }
    let spawned = command.spawn();
    // Our copies of the pipe's write end: the read end must see EOF
    // once the task's processes are gone. The control pipe's read end is
    // the supervisor's alone.
    drop(command);
    let supervisor::Control { read: control_read, write: control } = control;
    drop(control_read);
    // Dropped (on every way out of this function, a panic included), it
    // makes the supervisor kill the attempt's whole tree.
    let mut control = Some(control);
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let reason = format!("cannot start `{}`: {error}", spec.program);
            log.note(&reason).await;
            return (failed(reason), Some(log));
        }
    };
    let Some(pid) = child.id() else {
        // Only possible once the child has been reaped, which we have not.
        return (failed("the task process vanished as it started".into()), Some(log));
    };
    // Where a restarted worker finds it, should this one die uncleanly.
    let _record = shared.records.record(TaskAttempt { task_instance_id: dispatch.task_instance_id, attempt: dispatch.attempt }, pid);
    let output = match tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(output)) {
        Ok(output) => output,
        Err(error) => {
            signal_group(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let reason = format!("cannot read the task's output: {error}");
            log.note(&reason).await;
            return (failed(reason), Some(log));
        }
    };
    let (notes, notes_rx) = mpsc::unbounded_channel();
    let (drain, drain_by) = oneshot::channel();
    let (found_id, mut external_found) = oneshot::channel();
    let external = {
        let (plugins, task_type) = (shared.plugins.clone(), dispatch.task_type.to_string());
        logs::ExternalIds {
            find: Box::new(move |line| plugins.get(&task_type)?.external_id(line)),
            found: found_id,
        }
    };
    let pumping = tokio::spawn(logs::pump(output, log, notes_rx, drain_by, Some(external)));
    let mut external_id: Option<String> = None;
    info!(task_instance = %dispatch.task_instance_id, attempt = dispatch.attempt, pid, log = %log_path.display(), "task started");
    shared.report(
        dispatch,
        Event::Running(TaskRunning {
            pid,
            log_path: log_path.to_string_lossy().into_owned(),
        }),
    );

    let group = Pid::from_raw(pid as i32);
    let mut timeout_at = dispatch.timeout.map(|timeout| Instant::now() + timeout);
    let mut stop_open = true;
    let mut id_open = true;
    let ended = loop {
        tokio::select! {
            status = child.wait() => break Ended::Exited(status),
            id = &mut external_found, if id_open => {
                id_open = false;
                if let Ok(id) = id {
                    info!(task_instance = %dispatch.task_instance_id, attempt = dispatch.attempt, external_id = %id, "task reported an external id");
                    shared.report(dispatch, Event::ExternalId(TaskExternalId { id: id.clone() }));
                    external_id = Some(id);
                }
            },
            cause = &mut stop, if stop_open => match cause {
                Ok(cause) => break Ended::Stopped(cause),
                // Not reachable while the attempt is registered; be safe.
                Err(_) => stop_open = false,
            },
            _ = sleep_until(timeout_at), if timeout_at.is_some() => {
                timeout_at = None;
                let timeout = dispatch.timeout.unwrap_or_default();
                let shown = humantime::format_duration(timeout);
                if dispatch.timeout_strategy.warns() {
                    warn!(task_instance = %dispatch.task_instance_id, attempt = dispatch.attempt, timeout = %shown, "task outlived its timeout");
                    let _ = notes.send(format!("the task outlived its timeout of {shown}"));
                    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                    shared.report(dispatch, Event::TimeoutWarning(TaskTimeoutWarning { timeout_ms }));
                }
                if dispatch.timeout_strategy.fails() {
                    let _ = notes.send(format!("timed out after {shown}; killing the task"));
                    break Ended::TimedOut(timeout);
                }
            }
        }
    };
    // Outputs count only from a task that ended by itself.
    let keep_outputs = matches!(ended, Ended::Exited(Ok(_)));
    let mut finished = match ended {
        Ended::Exited(Ok(status)) => exited(status),
        Ended::Exited(Err(error)) => {
            // The child can no longer be waited for; make sure nothing of
            // it lives on unobserved.
            signal_group(group, Signal::SIGKILL);
            Finished::failure(format!("cannot wait for the task process: {error}"))
        }
        Ended::Stopped(cause) => {
            info!(task_instance = %dispatch.task_instance_id, attempt = dispatch.attempt, ?cause, "killing task");
            let _ = notes.send(match &cause {
                StopCause::Kill(reason) if !reason.is_empty() => format!("killing the task: {reason}"),
                StopCause::Kill(_) => "killing the task".to_owned(),
                StopCause::Shutdown => "killing the task: the worker is stopping".to_owned(),
                StopCause::SessionLost => format!("killing the task: {}", crate::running::SESSION_LOST),
            });
            let status = kill_group(&mut child, group, &mut control, shared.kill_grace).await;
            kill_external(shared, dispatch, external_id.as_deref(), &notes).await;
            match cause {
                StopCause::Kill(reason) => Finished {
                    outcome: TaskOutcome::Killed,
                    exit_code: status.and_then(|s| s.code()),
                    reason: if reason.is_empty() {
                        "killed".into()
                    } else {
                        reason
                    },
                    ..Finished::default()
                },
                StopCause::Shutdown => Finished::failure("worker stopped before the task finished"),
                StopCause::SessionLost => Finished { unreported: true, ..Finished::failure(crate::running::SESSION_LOST) },
            }
        }
        Ended::TimedOut(timeout) => {
            kill_group(&mut child, group, &mut control, shared.kill_grace).await;
            kill_external(shared, dispatch, external_id.as_deref(), &notes).await;
            Finished::failure(format!(
                "timed out after {}",
                humantime::format_duration(timeout)
            ))
        }
    };
    drop(notes);
    let _ = drain.send(Instant::now() + PIPE_DRAIN);
    match pumping.await {
        Ok(pumped) => {
            if keep_outputs {
                finished.outputs = pumped.outputs;
            }
            (finished, Some(pumped.writer))
        }
        Err(error) => {
            error!(task_instance = %dispatch.task_instance_id, attempt = dispatch.attempt, %error, "copying the task's output failed");
            (finished, None)
        }
    }
}

/// How long a plugin's kill command may take.
const KILL_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the plugin's kill command for the attempt's external id, if it has
/// one: the work the attempt started elsewhere (a YARN application) does
/// not end with its local processes. Best effort: the outcome is logged,
/// the attempt ends killed whatever it is.
async fn kill_external(shared: &Shared, dispatch: &TaskDispatch, external_id: Option<&str>, notes: &mpsc::UnboundedSender<String>) {
    let Some(id) = external_id else { return };
    let Some(spec) = shared.plugins.get(dispatch.task_type.as_str()).and_then(|plugin| plugin.kill_command(id)) else { return };
    let shown = command_line(&spec);
    let _ = notes.send(format!("stopping external id {id}: {shown}"));
    let mut command = Command::new(&spec.program);
    command.args(&spec.args).envs(spec.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let result = match command.spawn() {
        Ok(child) => match tokio::time::timeout(KILL_COMMAND_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(output)) if output.status.success() => Ok(()),
            Ok(Ok(output)) => Err(format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim())),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no end after {}", humantime::format_duration(KILL_COMMAND_TIMEOUT))),
        },
        Err(error) => Err(format!("cannot start it: {error}")),
    };
    match result {
        Ok(()) => info!(task_instance = %dispatch.task_instance_id, attempt = dispatch.attempt, external_id = id, command = %shown, "external work stopped"),
        Err(error) => {
            warn!(task_instance = %dispatch.task_instance_id, attempt = dispatch.attempt, external_id = id, command = %shown, %error, "kill command failed");
            let _ = notes.send(format!("kill command for external id {id} failed: {error}"));
        }
    }
}

/// `program arg…`, quoted where a word needs it, for the log.
fn command_line(spec: &sluice_tasks::ProcessSpec) -> String {
    std::iter::once(&spec.program)
        .chain(&spec.args)
        .map(|word| {
            if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lowercase, like every other state name in logs.
fn outcome_name(outcome: TaskOutcome) -> &'static str {
    match outcome {
        TaskOutcome::Success => "success",
        TaskOutcome::Failure => "failure",
        TaskOutcome::Killed => "killed",
        TaskOutcome::Unspecified => "unspecified",
    }
}

enum Ended {
    Exited(std::io::Result<ExitStatus>),
    Stopped(StopCause),
    TimedOut(Duration),
}

fn stopped_before_start(cause: StopCause) -> Finished {
    match cause {
        StopCause::Kill(reason) => Finished {
            outcome: TaskOutcome::Killed,
            exit_code: None,
            reason: if reason.is_empty() {
                "killed".into()
            } else {
                reason
            },
            ..Finished::default()
        },
        StopCause::Shutdown => Finished::failure("worker stopped before the task started"),
        StopCause::SessionLost => Finished { unreported: true, ..Finished::failure(crate::running::SESSION_LOST) },
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Writes the plugin's files and builds the command, its stdout and
/// stderr on one pipe whose read end is returned.
async fn prepare_process(
    dispatch: &TaskDispatch,
    spec: &sluice_tasks::ProcessSpec,
    workdir: &Path,
) -> Result<(Command, std::io::PipeReader, supervisor::Control), String> {
    // The directory and every file in one trip to the blocking pool: a
    // short task spends a good part of its hand-off on such trips.
    let files: Vec<(std::path::PathBuf, String)> = spec.files.iter().map(|(name, content)| (workdir.join(name), content.clone())).collect();
    let dir = workdir.to_owned();
    tokio::task::spawn_blocking(move || {
        let io = |what: &str, path: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
        std::fs::create_dir_all(&dir).map_err(|e| io("create working directory", &dir, e))?;
        for (path, content) in &files {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io("create directory", parent, e))?;
            }
            std::fs::write(path, content).map_err(|e| io("write", path, e))?;
        }
        Ok::<(), String>(())
    })
    .await
    .map_err(|e| format!("cannot prepare the working directory: {e}"))??;
    // One pipe for both streams: their writes reach the worker in the
    // order they happen, and the worker stamps and writes each line.
    let pipe_error = |e: std::io::Error| format!("cannot create a pipe for the task's output: {e}");
    let (output, stdout) = std::io::pipe().map_err(pipe_error)?;
    let stderr = stdout.try_clone().map_err(pipe_error)?;

    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        // Its own process group, so that a kill reaches everything the task
        // started, and a Ctrl-C aimed at the worker does not reach tasks.
        .process_group(0);
    for (name, value) in env(dispatch, spec)? {
        command.env(name, value);
    }
    let control = supervisor::install(command.as_std_mut())
        .map_err(|e| format!("cannot create the task supervisor's pipe: {e}"))?;
    Ok((command, output, control))
}

/// The task's environment on top of the worker's: the plugin's variables,
/// then the params, then `SLUICE_*`, which nothing may override because
/// scripts rely on them to know who they are.
fn env(
    dispatch: &TaskDispatch,
    spec: &sluice_tasks::ProcessSpec,
) -> Result<Vec<(String, String)>, String> {
    let mut vars: Vec<(String, String)> = spec.env.clone();
    for (name, value) in &dispatch.params {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(format!(
                "param `{name}` cannot be an environment variable name"
            ));
        }
        if value.contains('\0') {
            return Err(format!("param `{name}` has a NUL character in its value"));
        }
        vars.push((name.clone(), value.clone()));
    }
    vars.extend([
        (
            "SLUICE_WORKFLOW_INSTANCE_ID".to_owned(),
            dispatch.workflow_instance_id.to_string(),
        ),
        (
            "SLUICE_TASK_INSTANCE_ID".to_owned(),
            dispatch.task_instance_id.to_string(),
        ),
        ("SLUICE_ATTEMPT".to_owned(), dispatch.attempt.to_string()),
        ("SLUICE_TASK_NAME".to_owned(), dispatch.task.clone()),
        ("SLUICE_WORKFLOW_NAME".to_owned(), dispatch.workflow.clone()),
        ("SLUICE_PROJECT".to_owned(), dispatch.project.clone()),
    ]);
    Ok(vars)
}

/// The report for a process that ended by itself.
fn exited(status: ExitStatus) -> Finished {
    if status.success() {
        return Finished {
            outcome: TaskOutcome::Success,
            exit_code: Some(0),
            reason: "exit code 0".into(),
            ..Finished::default()
        };
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => Finished {
            outcome: TaskOutcome::Failure,
            exit_code: Some(code),
            reason: format!("exit code {code}"),
            ..Finished::default()
        },
        (None, Some(signal)) => {
            Finished::failure(format!("killed by signal {}", signal_name(signal)))
        }
        (None, None) => Finished::failure(format!("ended abnormally ({status})")),
    }
}

fn signal_name(signal: i32) -> String {
    Signal::try_from(signal).map_or_else(|_| signal.to_string(), |s| s.as_str().to_owned())
}

/// Stops the whole process group: SIGTERM, then, after `grace`, the
/// supervisor's SIGKILL to the whole tree (closing `control`) and SIGKILL
/// to whatever is left in the group (the task's own children included,
/// even once the leader is gone). Returns the task's exit status if it
/// could be read.
async fn kill_group(child: &mut Child, group: Pid, control: &mut Option<OwnedFd>, grace: Duration) -> Option<ExitStatus> {
    signal_group(group, Signal::SIGTERM);
    let grace_end = Instant::now() + grace;
    let mut status = tokio::time::timeout_at(grace_end, child.wait())
        .await
        .ok()
        .and_then(Result::ok);
    // The leader is gone (and reaped); give its children the rest of the
    // grace to clean up too.
    while status.is_some() && group_alive(group) && Instant::now() < grace_end {
        tokio::time::sleep(GROUP_POLL).await;
    }
    if status.is_none() || group_alive(group) {
        // The supervisor kills its descendants that left the group too;
        // the group's SIGKILL, which would end the supervisor at once, comes
        // once it is done (or gone).
        if control.take().is_some() && status.is_none() {
            status = tokio::time::timeout(AFTER_SIGKILL, child.wait())
                .await
                .ok()
                .and_then(Result::ok);
        }
        signal_group(group, Signal::SIGKILL);
        if status.is_none() {
            status = tokio::time::timeout(AFTER_SIGKILL, child.wait())
                .await
                .ok()
                .and_then(Result::ok);
        }
        let gone_by = Instant::now() + AFTER_SIGKILL;
        while group_alive(group) && Instant::now() < gone_by {
            tokio::time::sleep(GROUP_POLL).await;
        }
    }
    status
}

fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => {
            warn!(group = group.as_raw(), ?signal, %error, "cannot signal task process group")
        }
    }
}

/// Whether any process of `group` is still alive.
///
/// Zombies do not count: a killed task's orphans are reaped by init, which
/// in containers may take its time, and a zombie holds nothing but its pid.
/// Where `/proc` cannot be read, any process of the group counts.
fn group_alive(group: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killpg(group, None).is_ok();
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .any(|stat| live_member(&stat, group.as_raw()))
}

/// Reads a `/proc/<pid>/stat` line: `pid (comm) state ppid pgrp ...`. The
/// command name may contain spaces and parentheses, hence the last `)`.
fn live_member(stat: &str, group: i32) -> bool {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let pgrp = fields.nth(1).and_then(|pgrp| pgrp.parse::<i32>().ok());
    pgrp == Some(group) && !matches!(state, Some("Z" | "X" | "x"))
}

#[cfg(test)]
mod tests {
    use std::process::Command as StdCommand;

    use super::*;

    fn status_of(script: &str) -> ExitStatus {
        StdCommand::new("bash")
            .arg("-c")
            .arg(script)
            .status()
            .unwrap()
    }

    #[test]
    fn exit_statuses_become_reports() {
        assert_eq!(exited(status_of("exit 0")).outcome, TaskOutcome::Success);
        assert_eq!(
            exited(status_of("exit 3")),
            Finished {
                outcome: TaskOutcome::Failure,
                exit_code: Some(3),
                reason: "exit code 3".into(),
                ..Finished::default()
            }
        );
        assert_eq!(
            exited(status_of("kill -KILL $$")),
            Finished::failure("killed by signal SIGKILL")
        );
    }

    #[test]
    fn proc_stat_lines_tell_live_group_members() {
        assert!(live_member("123 (sleep) S 1 120 120 0 -1", 120));
        assert!(!live_member("123 (sleep) Z 1 120 120 0 -1", 120), "zombie");
        assert!(
            !live_member("123 (sleep) S 1 121 121 0 -1", 120),
            "other group"
        );
        assert!(
            live_member("123 (a) b (c) R 1 120 120 0 -1", 120),
            "odd command name"
        );
        assert!(!live_member("garbage", 120));
    }

    #[test]
    fn sluice_variables_win_over_params() {
        let mut dispatch: TaskDispatch = serde_json::from_value(serde_json::json!({
            "workflow_instance_id": 1, "task_instance_id": 2, "attempt": 3, "master": "m:1",
            "project": "p", "workflow": "w", "task": "t", "task_type": "shell", "body": {},
            "params": {"dt": "20260101", "SLUICE_ATTEMPT": "99"}
        }))
        .unwrap();
        let vars = env(&dispatch, &sluice_tasks::ProcessSpec::default()).unwrap();
        let last = |name: &str| {
            vars.iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(last("dt"), Some("20260101"));
        assert_eq!(last("SLUICE_ATTEMPT"), Some("3"));
        dispatch.params.insert("a=b".into(), "x".into());
        assert_eq!(
            env(&dispatch, &sluice_tasks::ProcessSpec::default()).unwrap_err(),
            "param `a=b` cannot be an environment variable name"
        );
    }
}
