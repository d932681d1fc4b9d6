//! Loading what a run machine starts from. An instance that cannot be
//! loaded (its definition version is gone, or stored invalid) is ended as
//! `failure` with the reason, so that it never stays `running` to be
//! re-adopted and crash again.

use std::sync::Arc;

use chrono::Utc;
use sluice_domain::*;
use sluice_storage::{RunWrite, StoreError};

use super::{persist, Abort};
use crate::run::{Placement, RunMachine, RunSetup};
use crate::run_context;
use crate::Shared;

/// The machine of `instance`, or `None` if the instance could not be
/// loaded and was ended with the reason.
pub(super) async fn load(shared: &Arc<Shared>, instance: WorkflowInstance) -> Result<Option<RunMachine>, Abort> {
    let id = instance.id;
    match persist!(shared, id, setup(shared, &instance))? {
        Ok(setup) => match RunMachine::new(setup) {
            Ok(machine) => Ok(Some(machine)),
            Err(reason) => fail_unloadable(shared, instance, reason).await,
        },
        Err(reason) => fail_unloadable(shared, instance, reason).await,
    }
}

/// What the machine needs, read from the store; `Ok(Err(reason))` when the
/// instance cannot run at all.
async fn setup(shared: &Arc<Shared>, instance: &WorkflowInstance) -> Result<Result<RunSetup, String>, StoreError> {
    let store = &shared.store;
    let Some(def) = store.workflow_by_id(instance.workflow_id, Some(instance.workflow_version)).await? else {
        return Ok(Err(format!("its definition (workflow {} version {}) is gone", instance.workflow_id, instance.workflow_version)));
    };
    let dag = match def.spec().validate() {
        Ok(dag) => dag,
        Err(error) => return Ok(Err(format!("its stored definition is invalid: {error}"))),
    };
    let Some(ctx) = run_context(shared, instance).await? else {
        return Ok(Err(format!("its project {} is gone", instance.project_id)));
    };
    let placements = (0..dag.len())
        .map(|n| {
            let task_type = &def.task(dag.name(n)).expect("dag and definition agree").spec.task_type;
            shared.plugins.placement(task_type.as_str()).unwrap_or(Placement::Process)
        })
        .collect();
    let tasks = store.task_instances(instance.id).await?;
    Ok(Ok(RunSetup {
        instance: instance.clone(),
        def,
        dag,
        placements,
        ctx,
        tasks,
        failover_grace: shared.config.failover_grace,
        queue_lost_on_restart: shared.registry.lost_on_restart(),
    }))
}

/// Ends an instance that cannot run as `failure`, with why, and stops
/// what of it may still run.
async fn fail_unloadable(shared: &Arc<Shared>, instance: WorkflowInstance, reason: String) -> Result<Option<RunMachine>, Abort> {
    tracing::error!(workflow_instance = %instance.id, %reason, "instance cannot be loaded; it fails");
    let events = match instance.state {
        WorkflowState::Submitted => vec![WorkflowEvent::Start, WorkflowEvent::Fail],
        WorkflowState::NeedFailover => vec![WorkflowEvent::Adopt, WorkflowEvent::Fail],
        WorkflowState::ReadyStop => vec![WorkflowEvent::Stopped],
        state if state.is_final() => return Ok(None),
        _ => vec![WorkflowEvent::Fail],
    };
    let now = Utc::now();
    let change = WorkflowChange {
        from: instance.state,
        events,
        update: WorkflowUpdate { end_time: Some(Some(now)), reason: Some(Some(format!("cannot run: {reason}"))), ..Default::default() },
    };
    // Its tasks still in flight end too: their workers' orphan checks then
    // kill what still runs, and their reports are acknowledged as stale.
    let tasks = persist!(shared, instance.id, shared.store.task_instances(instance.id))?;
    let kills = tasks
        .iter()
        .filter(|t| !t.state.is_final())
        .map(|t| {
            let update = TaskUpdate { end_time: Some(Some(now)), message: Some(Some(format!("its workflow instance cannot run: {reason}"))), ..Default::default() };
            TaskChange::new(t, vec![TaskEvent::Kill], update)
        })
        .collect();
    let write = RunWrite { workflow: Some(change), tasks: kills, ..Default::default() };
    persist!(shared, instance.id, shared.store.write_run(instance.fence(), &write))?;
    Ok(None)
}
