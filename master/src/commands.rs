//! The command loop: claim commands under the `locks/command-scan` lock and
//! turn each into an instance this master drives, or route it to the driver
//! of the instance it is aimed at.

use std::sync::Arc;
use std::time::Duration;

use sluice_domain::*;
use sluice_registry::{paths, SignalWatch};
use sluice_storage::{RunWrite, StoreError};

use crate::retry::Gave;

use crate::driver::{self, DriverMsg};
use crate::Shared;

/// Re-adopts the non-final instances this address owned before a restart,
/// and returns to the pool the commands it had claimed and not consumed:
/// nobody else would, since a master that is back within the failover
/// grace period gets no failover.
pub(crate) async fn resume_owned(shared: &Arc<Shared>) -> Result<(), StoreError> {
    let released = shared.store.release_commands(&shared.addr).await?;
    if released > 0 {
        tracing::info!(commands = released, "released the commands claimed before a restart");
    }
    for instance in shared.store.owned_workflow_instances(&shared.addr).await? {
        if instance.state == WorkflowState::Paused {
            continue;
        }
        // A new epoch fences off anything the previous incarnation still does.
        let instance = shared.store.adopt_workflow_instance(instance.id, &shared.addr).await?;
        tracing::info!(workflow_instance = %instance.id, state = %instance.state, "resuming owned instance");
        driver::spawn(shared.clone(), instance);
    }
    Ok(())
}

/// Scans for commands every `command_interval`, and at once when the
/// commands signal fires (the API or the cron leader inserted some). The
/// next watch is set before the scan, so a command inserted during a scan
/// wakes the next one; the interval stays as the fallback for lost signals.
pub(crate) async fn command_loop(shared: Arc<Shared>) {
    let interval = shared.config.command_interval;
    let mut backoff = interval;
    let mut wake = watch_commands(&shared).await;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
            // Not while backing off from a failed scan.
            _ = async { wake.as_mut().expect("guarded").await }, if wake.is_some() && backoff == interval => wake = None,
        }
        if wake.is_none() {
            wake = watch_commands(&shared).await;
        }
        match scan(&shared).await {
            Ok(()) => backoff = interval,
            Err(error) => {
                backoff = (backoff * 2).min(Duration::from_secs(5));
                tracing::warn!(%error, retry_in = ?backoff, "command scan failed");
            }
        }
    }
}

async fn watch_commands(shared: &Arc<Shared>) -> Option<SignalWatch> {
    match shared.registry.watch_signal(&paths::commands_signal()).await {
        Ok(watch) => Some(watch),
        Err(error) => {
            tracing::debug!(%error, "cannot watch the commands signal; polling only");
            None
        }
    }
}

/// Tells every master (this one too) that commands were inserted, without
/// waiting: a lost signal only costs the wait for the next poll.
pub(crate) fn signal_commands(shared: &Arc<Shared>) {
    let registry = shared.registry.clone();
    tokio::spawn(async move {
        if let Err(error) = registry.signal(&paths::commands_signal()).await {
            tracing::debug!(%error, "commands signal not sent; masters will find the commands at their next poll");
        }
    });
}

async fn scan(shared: &Arc<Shared>) -> Result<(), String> {
    let lock = paths::command_scan_lock();
    let Some(guard) = shared.registry.try_lock(&lock, Duration::from_secs(1)).await.map_err(|e| e.to_string())? else {
        return Ok(()); // another master is scanning
    };
    // Backfills turn into start commands here, under the same lock, so that
    // their runs are claimed like any other.
    match shared.store.advance_backfills().await {
        Ok(created) if !created.is_empty() => tracing::info!(runs = created.len(), "backfill runs created"),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot advance backfills"),
    }
    let claimed = shared.store.claim_commands(&shared.addr, shared.config.command_batch).await;
    guard.release().await;
    for command in claimed.map_err(|e| e.to_string())? {
        let (id, kind) = (command.id, command.spec.kind());
        // A claimed command is this master's alone: given up on a database
        // outage, it would stay claimed (and its run never start) for as
        // long as this master lives. So it is retried until the database
        // answers.
        let what = format_args!("command {id} ({kind})").to_string();
        match crate::retry::retry(&shared.shutdown, &what, StoreError::is_retryable, || handle(shared, command.clone())).await {
            Ok(()) | Err(Gave::Shutdown) => {}
            Err(Gave::Up(error)) => {
                tracing::error!(command = %id, %kind, %error, "command failed; given back for a later scan");
                if let Err(error) = shared.store.release_command(id, &shared.addr).await {
                    tracing::warn!(command = %id, %error, "cannot give the command back; it is released when this master restarts or fails over");
                }
            }
        }
    }
    Ok(())
}

/// Carries out one claimed command, consuming it in the same transaction
/// as the write that carries out its effect: a master that dies before
/// leaves the command (released by its restart or its failover), never a
/// request the API acknowledged and nobody carried out.
async fn handle(shared: &Arc<Shared>, command: Command) -> Result<(), StoreError> {
    match &command.spec {
        NewCommand::Start(run) => start(shared, &command, run).await,
        NewCommand::Rerun(target) => restart(shared, &command, *target, Restart::Rerun).await,
        NewCommand::Recover { target, force_success } => restart(shared, &command, *target, Restart::Recover(force_success.clone())).await,
        NewCommand::Resume(target) => restart(shared, &command, *target, Restart::Resume).await,
        NewCommand::Stop(target) | NewCommand::Pause(target) | NewCommand::KillTask { target, .. } | NewCommand::ForceSuccess { target, .. } => {
            if let Some(driver) = shared.driver(target.workflow_instance_id) {
                // The driver's write that carries it out consumes it; a
                // driver that ends first gives it back.
                if driver.send(DriverMsg::Command(command.clone())).is_ok() {
                    return Ok(());
                }
            }
            not_driven(shared, &command, *target).await
        }
    }
}

/// An operator command for an instance this master does not drive.
async fn not_driven(shared: &Arc<Shared>, command: &Command, target: InstanceTarget) -> Result<(), StoreError> {
    let id = target.workflow_instance_id;
    let Some(instance) = shared.store.workflow_instance(id).await? else {
        return consumed(shared, command, "its workflow instance is gone").await;
    };
    let idle = matches!(instance.state, WorkflowState::Submitted | WorkflowState::Paused) || instance.state.is_final();
    if !idle {
        // Driven nowhere right now, yet in flight: owned by this master
        // between an adoption and its driver's start, or by a driver that
        // just ended. The command waits for the next scan.
        tracing::info!(command = %command.id, workflow_instance = %id, state = %instance.state, "instance not driven right now; the command waits");
        return shared.store.release_command(command.id, &shared.addr).await;
    }
    match &command.spec {
        NewCommand::Stop(_) if instance.state.transition(WorkflowEvent::Stop) == Ok(WorkflowState::Stopped) => {
            let reason = format!("stopped while {}", instance.state);
            let write = RunWrite {
                workflow: Some(WorkflowChange {
                    from: instance.state,
                    events: vec![WorkflowEvent::Stop],
                    update: WorkflowUpdate { end_time: Some(Some(chrono::Utc::now())), reason: Some(Some(reason)), ..Default::default() },
                }),
                tasks: kills_of_waiting_tasks(shared, &instance, "workflow instance stopped").await?,
                ..Default::default()
            };
            match shared.store.adopt_for_command(command.id, id, &shared.addr, instance.state, &write).await {
                Ok(_) => {
                    tracing::info!(workflow_instance = %id, from = %instance.state, "stopped");
                    Ok(())
                }
                Err(StoreError::StaleState(reason)) => {
                    tracing::info!(command = %command.id, %reason, "the instance moved meanwhile; the stop waits");
                    shared.store.release_command(command.id, &shared.addr).await
                }
                Err(error) => Err(error),
            }
        }
        NewCommand::ForceSuccess { tasks, .. } if instance.state.transition(WorkflowEvent::Recover).is_ok() => {
            // Over by the time the command was taken: a force-success of a
            // finished instance is a recover with the tasks forced.
            restart(shared, command, target, Restart::Recover(tasks.clone())).await
        }
        other => consumed(shared, command, &format!("a {} does not apply to an instance that is {}", other.kind(), instance.state)).await,
    }
}

/// Tasks of a paused instance that wait (withdrawn, or for a retry): killed
/// with a stop of it.
async fn kills_of_waiting_tasks(shared: &Arc<Shared>, instance: &WorkflowInstance, reason: &str) -> Result<Vec<TaskChange>, StoreError> {
    let now = chrono::Utc::now();
    Ok(shared
        .store
        .task_instances(instance.id)
        .await?
        .iter()
        .filter(|t| matches!(t.state, TaskState::Submitted | TaskState::RetryWait))
        .map(|t| {
            let update = TaskUpdate { end_time: Some(Some(now)), message: Some(Some(reason.to_owned())), retry_at: Some(None), ..Default::default() };
            TaskChange::new(t, vec![TaskEvent::Kill], update)
        })
        .collect())
}

/// Consumes a command that has nothing to do, saying why.
async fn consumed(shared: &Arc<Shared>, command: &Command, why: &str) -> Result<(), StoreError> {
    tracing::warn!(command = %command.id, kind = %command.spec.kind(), %why, "command has nothing to do; dropped");
    shared.store.consume_command(command.id, &shared.addr).await
}

/// How an instance at rest comes back to life.
enum Restart {
    Rerun,
    /// With these failed tasks forced to success first.
    Recover(Vec<String>),
    Resume,
}

/// Brings an instance at rest back to life: rerun or recover a finished
/// one (forcing some of its failed tasks to success first), or resume a
/// paused one. Everything is checked before anything is written; then the
/// instance is adopted (new epoch), moved, and the command consumed, in one
/// transaction, and driven here.
async fn restart(shared: &Arc<Shared>, command: &Command, target: InstanceTarget, how: Restart) -> Result<(), StoreError> {
    let id = target.workflow_instance_id;
    let Some(instance) = shared.store.workflow_instance(id).await? else {
        return consumed(shared, command, "its workflow instance is gone").await;
    };
    let event = match how {
        Restart::Rerun => WorkflowEvent::Rerun,
        Restart::Recover(_) => WorkflowEvent::Recover,
        Restart::Resume => WorkflowEvent::Resume,
    };
    if instance.state.transition(event).is_err() {
        return consumed(shared, command, &format!("a {} does not apply to an instance that is {}", command.spec.kind(), instance.state)).await;
    }
    if !matches!(how, Restart::Resume) && shared.store.workflow_by_id(instance.workflow_id, Some(instance.workflow_version)).await?.is_none() {
        return consumed(shared, command, &format!("its definition (workflow {} version {}) is gone", instance.workflow_id, instance.workflow_version)).await;
    }
    let mut tasks = Vec::new();
    if let Restart::Recover(forced) = &how {
        let rows = shared.store.task_instances(id).await?;
        for name in forced {
            match rows.iter().find(|t| &t.name == name) {
                Some(task) if task.state.is_failure() => {
                    tracing::info!(workflow_instance = %id, task = %name, "task forced to success");
                    tasks.push(TaskChange::new(task, vec![TaskEvent::ForceSuccess], TaskUpdate::default()));
                }
                _ => tracing::warn!(workflow_instance = %id, task = %name, "force-success of a task that has not failed; ignored"),
            }
        }
    }
    let update = match how {
        Restart::Resume => WorkflowUpdate::default(),
        _ => WorkflowUpdate {
            command_kind: Some(if matches!(how, Restart::Rerun) { CommandKind::Rerun } else { CommandKind::RecoverFailure }),
            run: Some(instance.run + 1),
            start_time: Some(Some(chrono::Utc::now())),
            end_time: Some(None),
            reason: Some(None),
        },
    };
    let write = RunWrite { workflow: Some(WorkflowChange { from: instance.state, events: vec![event], update }), tasks, ..Default::default() };
    match shared.store.adopt_for_command(command.id, id, &shared.addr, instance.state, &write).await {
        Ok((instance, _)) => {
            tracing::info!(workflow_instance = %id, kind = %command.spec.kind(), run = instance.run, "workflow instance restarted");
            driver::spawn(shared.clone(), instance);
            Ok(())
        }
        Err(StoreError::StaleState(reason)) => {
            // It moved between the check and the write: checked again at the
            // next scan.
            tracing::info!(command = %command.id, %reason, "the instance moved meanwhile; the command waits");
            shared.store.release_command(command.id, &shared.addr).await
        }
        Err(error) => Err(error),
    }
}

/// Starts a run: adopts the instance the API pre-created, or creates one.
async fn start(shared: &Arc<Shared>, command: &Command, run: &StartRun) -> Result<(), StoreError> {
    let instance = match run.workflow_instance_id {
        Some(id) => match shared.store.adopt_for_command(command.id, id, &shared.addr, WorkflowState::Submitted, &RunWrite::default()).await {
            Ok((instance, _)) => instance,
            Err(StoreError::StaleState(reason)) => return consumed(shared, command, &format!("its instance is no longer waiting to start: {reason}")).await,
            Err(StoreError::NotFound(what)) => return consumed(shared, command, &format!("{what} not found")).await,
            Err(error) => return Err(error),
        },
        None => {
            let Some(def) = shared.store.workflow_by_id(run.workflow_id, run.workflow_version).await? else {
                return consumed(shared, command, &format!("workflow {} is gone", run.workflow_id)).await;
            };
            let new = NewWorkflowInstance {
                workflow_id: def.id,
                workflow_version: def.version,
                command_kind: CommandKind::Start,
                params: run.params.clone(),
                priority: run.priority.unwrap_or(def.priority),
                worker_group: run.worker_group.clone().unwrap_or_else(|| def.worker_group.clone()),
                failure_strategy: run.failure_strategy.unwrap_or(def.failure_strategy),
                schedule_time: run.schedule_time,
                owner: Some(shared.addr.clone()),
                start_tasks: run.start_tasks.clone(),
                scope: run.scope,
            };
            shared.store.create_instance_for_command(command.id, &new).await?
        }
    };
    tracing::info!(workflow_instance = %instance.id, workflow = %instance.workflow_name, "workflow instance started");
    driver::spawn(shared.clone(), instance);
    Ok(())
}
