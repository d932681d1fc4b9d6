//! Master failover: when a master's registry node disappears (and stays
//! away for the grace period), one surviving master takes
//! `locks/failover/<host>`, adopts the dead master's unfinished instances
//! (a new owner epoch fences off anything the old one might still write),
//! drives them on from the database, and releases the commands it had
//! claimed. A periodic sweep catches owners that vanished while no master
//! watched (everyone restarted, a missed event), and instances this master
//! owns but no longer drives (a driver that gave up on an error).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sluice_domain::{WorkflowInstanceId, WorkflowState};
use sluice_registry::{paths, MembershipEvent};

use crate::{driver, Shared};

/// How often the sweep compares owners in the database with live masters.
const SWEEP: Duration = Duration::from_secs(10);

pub(crate) async fn failover_loop(shared: Arc<Shared>) {
    let dir = paths::masters_dir();
    // Own instances seen without a driver at the last sweep.
    let mut undriven = HashSet::new();
    loop {
        let mut watch = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            watch = shared.registry.watch_members(&dir) => match watch {
                Ok(watch) => watch,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch masters; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let mut sweep = tokio::time::interval(SWEEP);
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                event = watch.next() => match event {
                    Some(MembershipEvent::Left(master)) if master != shared.addr => start(&shared, master),
                    Some(_) => {}
                    None => break, // the session ended: watch again
                },
                _ = sweep.tick() => {
                    sweep_owners(&shared).await;
                    undriven = drive_undriven(&shared, &undriven).await;
                }
            }
        }
    }
}

/// Owners with work that are not live masters get a failover.
async fn sweep_owners(shared: &Arc<Shared>) {
    let (owners, live) = match (shared.store.owners_with_work().await, shared.registry.members(&paths::masters_dir()).await) {
        (Ok(owners), Ok(live)) => (owners, live),
        _ => return,
    };
    let live: HashSet<String> = live.into_iter().map(|m| m.name).collect();
    for owner in owners {
        if owner != shared.addr && !live.contains(&owner) {
            start(shared, owner);
        }
    }
}

/// Drives again the instances this master owns but drives no more: a
/// driver that failed for good (the database or the registry said no once
/// too often) leaves its instance owned and still, and no failover would
/// ever come for a master that is alive. Only instances seen undriven by
/// two sweeps in a row are taken, so that one between its adoption and its
/// driver's start (a command being handled) is left alone. Returns the
/// instances undriven now, for the next sweep.
async fn drive_undriven(shared: &Arc<Shared>, before: &HashSet<WorkflowInstanceId>) -> HashSet<WorkflowInstanceId> {
    let Ok(owned) = shared.store.owned_workflow_instances(&shared.addr).await else { return before.clone() };
    let mut now = HashSet::new();
    for instance in owned {
        if instance.state == WorkflowState::Paused || shared.driver(instance.id).is_some() {
            continue; // at rest, or driven
        }
        if !before.contains(&instance.id) {
            now.insert(instance.id);
            continue;
        }
        // A new epoch fences off whatever the old driver might still do.
        match shared.store.adopt_workflow_instance(instance.id, &shared.addr).await {
            Ok(instance) if !instance.state.is_final() && shared.driver(instance.id).is_none() => {
                tracing::warn!(workflow_instance = %instance.id, state = %instance.state, epoch = instance.owner_epoch, "owned instance had no driver; driving it again");
                driver::spawn(shared.clone(), instance);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(workflow_instance = %instance.id, %error, "cannot take back an undriven instance; next sweep");
                now.insert(instance.id);
            }
        }
    }
    now
}

fn start(shared: &Arc<Shared>, master: String) {
    if !shared.failovers.lock().expect("failovers lock").insert(master.clone()) {
        return; // already in progress here
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Err(error) = fail_over(&shared, &master).await {
            tracing::error!(%master, %error, "failover failed; the sweep will retry");
        }
        shared.failovers.lock().expect("failovers lock").remove(&master);
    });
}

async fn fail_over(shared: &Arc<Shared>, master: &str) -> Result<(), String> {
    tokio::select! {
        _ = shared.shutdown.cancelled() => return Ok(()),
        _ = tokio::time::sleep(shared.config.failover_grace) => {}
    }
    let live = shared.registry.members(&paths::masters_dir()).await.map_err(|e| e.to_string())?;
    if live.iter().any(|m| m.name == master) {
        tracing::info!(%master, "master came back within the grace period");
        return Ok(());
    }
    let guard = shared.registry.lock(&paths::failover_lock(master)).await.map_err(|e| e.to_string())?;
    // Whoever held the lock before may have adopted everything already:
    // this reads what is still the dead master's.
    let result = adopt_all(shared, master).await;
    guard.release().await;
    result
}

async fn adopt_all(shared: &Arc<Shared>, master: &str) -> Result<(), String> {
    let store = &shared.store;
    let instances = store.owned_workflow_instances(master).await.map_err(|e| e.to_string())?;
    let mut adopted = 0;
    for instance in instances {
        if instance.state == WorkflowState::Paused {
            continue; // at rest: a resume command finds it
        }
        let instance = store.adopt_workflow_instance(instance.id, &shared.addr).await.map_err(|e| e.to_string())?;
        tracing::info!(workflow_instance = %instance.id, from = %master, epoch = instance.owner_epoch, "instance adopted after master failover");
        driver::spawn(shared.clone(), instance);
        adopted += 1;
    }
    let released = store.release_commands(master).await.map_err(|e| e.to_string())?;
    tracing::info!(%master, adopted, released_commands = released, "master failover done");
    Ok(())
}
