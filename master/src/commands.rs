//! The command loop: claim commands under the `locks/command-scan` lock and
//! turn each into an instance this master drives, or route it to the driver
//! of the instance it is aimed at.

use std::sync::Arc;
use std::time::Duration;

use sluice_domain::*;
use sluice_registry::{paths, SignalWatch};
use sluice_storage::StoreError;

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
        let id = command.id;
        let kind = command.spec.kind;
        // A claimed command is this master's alone: given up on a database
        // outage, it would stay claimed (and its run never start) for as
        // long as this master lives. So it is retried until the database
        // answers.
        let mut wait = Duration::from_millis(100);
        loop {
            match handle(shared, command.clone()).await {
                Ok(()) => break,
                Err(error) if error.is_retryable() => {
                    tracing::warn!(command = %id, %kind, %error, retry_in = ?wait, "database unavailable while handling a command; retrying");
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    tracing::error!(command = %id, %kind, %error, "command failed");
                    break;
                }
            }
        }
    }
    Ok(())
}

async fn handle(shared: &Arc<Shared>, command: Command) -> Result<(), StoreError> {
    let spec = &command.spec;
    match spec.kind {
        CommandKind::Start => start(shared, &command).await,
        CommandKind::Stop => {
            let target = spec.workflow_instance_id.ok_or_else(|| StoreError::Conflict("stop needs an instance".into()))?;
            if let Some(driver) = shared.driver(target) {
                let _ = driver.send(DriverMsg::Stop);
                shared.store.delete_command(command.id).await
            } else {
                stop_idle(shared, &command, target).await
            }
        }
        CommandKind::KillTask => {
            let target = spec.workflow_instance_id.ok_or_else(|| StoreError::Conflict("kill needs an instance".into()))?;
            if let Some(driver) = shared.driver(target) {
                for task in &spec.start_tasks {
                    let _ = driver.send(DriverMsg::KillTask { task: task.clone() });
                }
            } else {
                tracing::info!(workflow_instance = %target, "kill for an instance that is not running here; nothing to kill");
            }
            shared.store.delete_command(command.id).await
        }
        CommandKind::Pause | CommandKind::ForceSuccess if target_driven(shared, spec) => {
            let driver = shared.driver(spec.workflow_instance_id.expect("checked")).expect("checked");
            if spec.kind == CommandKind::Pause {
                let _ = driver.send(DriverMsg::Pause);
            } else {
                for task in &spec.start_tasks {
                    let _ = driver.send(DriverMsg::ForceSuccess { task: task.clone() });
                }
            }
            shared.store.delete_command(command.id).await
        }
        CommandKind::Pause => {
            tracing::info!(command = %command.id, "pause for an instance that is not running; nothing to pause");
            shared.store.delete_command(command.id).await
        }
        CommandKind::Rerun | CommandKind::RecoverFailure | CommandKind::ForceSuccess | CommandKind::Resume => restart(shared, &command).await,
        other => {
            tracing::error!(command = %command.id, kind = %other, "command kind not supported by this master version; dropped");
            shared.store.delete_command(command.id).await
        }
    }
}

fn target_driven(shared: &Arc<Shared>, spec: &NewCommand) -> bool {
    spec.workflow_instance_id.is_some_and(|id| shared.driver(id).is_some())
}

/// Brings an instance at rest back to life: rerun or recover a finished
/// one, force a failed task to success so its downstream can run, or resume
/// a paused one. The instance is adopted (new epoch) with the command
/// consumed, then driven here.
async fn restart(shared: &Arc<Shared>, command: &Command) -> Result<(), StoreError> {
    let spec = &command.spec;
    let target = spec.workflow_instance_id.ok_or_else(|| StoreError::Conflict(format!("{} needs an instance", spec.kind)))?;
    let instance = shared.store.adopt_instance_for_command(command.id, target, &shared.addr).await?;
    let fence = instance.fence();
    let event = match spec.kind {
        CommandKind::Resume => WorkflowEvent::Resume,
        CommandKind::Rerun => WorkflowEvent::Rerun,
        _ => WorkflowEvent::Recover,
    };
    let Ok(next) = instance.state.transition(event) else {
        tracing::warn!(workflow_instance = %target, state = %instance.state, kind = %spec.kind, "command does not apply to the instance's state; dropped");
        return Ok(());
    };
    if spec.kind == CommandKind::ForceSuccess {
        let tasks = shared.store.task_instances(target).await?;
        for name in &spec.start_tasks {
            match tasks.iter().find(|t| &t.name == name) {
                Some(task) if task.state.transition(TaskEvent::ForceSuccess).is_ok() => {
                    let update = TaskUpdate { state: Some(TaskState::ForcedSuccess), ..Default::default() };
                    shared.store.update_task_instance(fence, task.id, &update).await?;
                    tracing::info!(workflow_instance = %target, task = %name, "task forced to success");
                }
                _ => tracing::warn!(workflow_instance = %target, task = %name, "force-success for a task that has not failed; ignored"),
            }
        }
    }
    let update = if spec.kind == CommandKind::Resume {
        WorkflowUpdate { state: Some(next), ..Default::default() }
    } else {
        WorkflowUpdate {
            state: Some(next),
            command_kind: Some(spec.kind),
            run: Some(instance.run + 1),
            start_time: Some(Some(chrono::Utc::now())),
            end_time: Some(None),
        }
    };
    let instance = shared.store.update_workflow_instance(fence, &update).await?;
    tracing::info!(workflow_instance = %target, kind = %spec.kind, run = instance.run, "workflow instance restarted");
    driver::spawn(shared.clone(), instance);
    Ok(())
}

/// Starts a run: adopts the instance the API pre-created, or creates one.
async fn start(shared: &Arc<Shared>, command: &Command) -> Result<(), StoreError> {
    let spec = &command.spec;
    let instance = match spec.workflow_instance_id {
        Some(id) => shared.store.adopt_instance_for_command(command.id, id, &shared.addr).await?,
        None => {
            let def = shared
                .store
                .workflow_by_id(spec.workflow_id, spec.workflow_version)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("workflow {}", spec.workflow_id)))?;
            let mut params = def.params.clone();
            params.extend(spec.params.clone());
            let new = NewWorkflowInstance {
                workflow_id: def.id,
                workflow_version: def.version,
                command_kind: spec.kind,
                params: spec.params.clone(),
                priority: spec.priority.unwrap_or(def.priority),
                worker_group: spec.worker_group.clone().unwrap_or_else(|| def.worker_group.clone()),
                failure_strategy: spec.failure_strategy.unwrap_or(def.failure_strategy),
                schedule_time: spec.schedule_time,
                owner: Some(shared.addr.clone()),
                start_tasks: spec.start_tasks.clone(),
                scope: spec.scope,
            };
            shared.store.create_instance_for_command(command.id, &new).await?
        }
    };
    if instance.state.is_final() {
        tracing::warn!(workflow_instance = %instance.id, state = %instance.state, "start command for a finished instance ignored");
        return Ok(());
    }
    tracing::info!(workflow_instance = %instance.id, workflow = %instance.workflow_name, "workflow instance started");
    driver::spawn(shared.clone(), instance);
    Ok(())
}

/// A stop for an instance nobody drives: one still waiting to start is
/// stopped at once; one already over stays as it is.
async fn stop_idle(shared: &Arc<Shared>, command: &Command, target: WorkflowInstanceId) -> Result<(), StoreError> {
    let instance = shared.store.adopt_instance_for_command(command.id, target, &shared.addr).await?;
    if let Ok(next) = instance.state.transition(WorkflowEvent::Stop) {
        if next == WorkflowState::Stopped {
            let now = chrono::Utc::now();
            shared
                .store
                .update_workflow_instance(instance.fence(), &WorkflowUpdate { state: Some(next), end_time: Some(Some(now)), ..Default::default() })
                .await?;
            tracing::info!(workflow_instance = %target, "stopped before it started");
        }
    }
    Ok(())
}
