//! The cron leader: exactly one master at a time holds `locks/cron` and
//! turns schedule fire times into start commands. A (schedule, fire time)
//! pair is unique in the command table, so a leadership change can fire a
//! time late but never twice.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice_domain::{MisfirePolicy, Schedule, ScheduleId, Trigger};
use sluice_params::cron::{due, Cron, Misfire, Timing};
use sluice_registry::paths;
use sluice_storage::{Fired, ScheduledFire};

use crate::Shared;

/// How often the leader re-reads the schedules (new, changed, online/offline).
const RELOAD: Duration = Duration::from_secs(1);
/// Most missed fire times one schedule catches up on at once (`run_all`).
const CATCH_UP_LIMIT: usize = 1000;
/// How long before a fire time its commands are written: the transaction
/// is prepared ahead and committed at the fire time, so that when the time
/// comes only the commit is left, even for thousands of schedules firing on
/// the same second.
const PREPARE_AHEAD: Duration = Duration::from_secs(2);
/// The wait before writing a fire again after the database refused it.
const RETRY: Duration = Duration::from_secs(1);

pub(crate) async fn cron_loop(shared: Arc<Shared>) {
    let name = paths::cron_lock();
    loop {
        let lock = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            lock = shared.registry.lock(&name) => lock,
        };
        let guard = match lock {
            Ok(guard) => guard,
            Err(error) => {
                tracing::warn!(%error, "cannot take the cron lock; retrying");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        tracing::info!(master = %shared.addr, "cron leader");
        shared.cron_leader.store(true, Ordering::SeqCst);
        let lost = guard.lost();
        tokio::select! {
            _ = shared.shutdown.cancelled() => {
                shared.cron_leader.store(false, Ordering::SeqCst);
                guard.release().await;
                return;
            }
            _ = lost => tracing::warn!("cron lock lost; no longer firing schedules"),
            _ = lead(&shared) => {}
        }
        shared.cron_leader.store(false, Ordering::SeqCst);
    }
}

struct Entry {
    schedule: Schedule,
    timing: Timing,
    next: Option<DateTime<Utc>>,
}

fn timing(schedule: &Schedule) -> Result<Timing, String> {
    Ok(match &schedule.trigger {
        Trigger::Cron { expression, timezone } => Timing::Cron {
            cron: Cron::parse(expression).map_err(|e| e.to_string())?,
            tz: sluice_params::timezone(timezone).map_err(|e| e.to_string())?,
        },
        Trigger::Interval { every, times } => Timing::Every {
            every: chrono::Duration::from_std(*every).map_err(|e| e.to_string())?,
            times: *times,
            start: schedule.start.unwrap_or(schedule.created_at),
        },
    })
}

fn misfire(policy: MisfirePolicy) -> Misfire {
    match policy {
        MisfirePolicy::RunOnce => Misfire::RunOnce,
        MisfirePolicy::RunAll => Misfire::RunAll,
        MisfirePolicy::Skip => Misfire::Skip,
    }
}

/// Fires schedules until the future is dropped (lock lost, shutdown).
///
/// One fire time at a time: every schedule due at the earliest time is
/// written in one transaction, prepared [`PREPARE_AHEAD`] of it and
/// committed at it. A fire the database refused stays due and is written
/// again; one written by a leader that has lost the lock meanwhile is
/// harmless, since a (schedule, fire time) pair has one command at most.
async fn lead(shared: &Arc<Shared>) {
    let mut entries: HashMap<ScheduleId, Entry> = HashMap::new();
    let mut reload_at = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= reload_at {
            reload(shared, &mut entries).await;
            reload_at = tokio::time::Instant::now() + RELOAD;
        }
        let Some(at) = entries.values().filter_map(|e| e.next).min() else {
            tokio::time::sleep_until(reload_at).await;
            continue;
        };
        let prepare_in = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO).saturating_sub(PREPARE_AHEAD);
        if !prepare_in.is_zero() {
            tokio::time::sleep_until((tokio::time::Instant::now() + prepare_in).min(reload_at)).await;
            continue;
        }
        let due: Vec<ScheduleId> = entries.iter().filter(|(_, e)| e.next == Some(at)).map(|(id, _)| *id).collect();
        let fires: Vec<(&Schedule, DateTime<Utc>)> = due.iter().map(|id| (&entries[id].schedule, at)).collect();
        if !fire_all(shared, &fires, at).await {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        for id in due {
            let entry = entries.get_mut(&id).expect("listed");
            entry.schedule.last_fire = Some(at);
            entry.next = entry.timing.next_after(at, entry.schedule.end);
        }
    }
}

/// Re-reads the online schedules: new ones are planned (catching up on
/// missed fire times per their misfire policy), changed ones re-planned,
/// offline or deleted ones dropped.
async fn reload(shared: &Arc<Shared>, entries: &mut HashMap<ScheduleId, Entry>) {
    let schedules = match shared.store.online_schedules().await {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "cannot read schedules");
            return;
        }
    };
    let online: std::collections::HashSet<ScheduleId> = schedules.iter().map(|s| s.id).collect();
    entries.retain(|id, _| online.contains(id));
    for schedule in schedules {
        let unchanged = entries.get(&schedule.id).is_some_and(|e| {
            e.schedule.trigger == schedule.trigger && e.schedule.start == schedule.start && e.schedule.end == schedule.end && e.schedule.misfire == schedule.misfire
        });
        if unchanged {
            continue;
        }
        let timing = match timing(&schedule) {
            Ok(t) => t,
            Err(error) => {
                tracing::error!(schedule = %schedule.id, %error, "schedule cannot fire");
                continue;
            }
        };
        let now = Utc::now();
        // Missed while nobody led (or while this schedule was unknown here).
        let from = schedule.last_fire.or(Some(schedule.updated_at)).map(|t| t.max(schedule.start.unwrap_or(t)));
        let mut caught_up = true;
        for at in due(&timing, from, now, schedule.end, misfire(schedule.misfire), CATCH_UP_LIMIT) {
            caught_up &= fire(shared, &schedule, at).await;
        }
        if !caught_up {
            // Planned at the next reload, which catches up again from the
            // last fire time that was written.
            continue;
        }
        let after = schedule.start.map(|s| s - chrono::Duration::milliseconds(1)).filter(|s| *s > now).unwrap_or(now);
        let next = timing.next_after(after, schedule.end);
        entries.insert(schedule.id, Entry { schedule, timing, next });
    }
}

async fn fire(shared: &Arc<Shared>, schedule: &Schedule, at: DateTime<Utc>) -> bool {
    fire_all(shared, &[(schedule, at)], Utc::now()).await
}

/// Writes the commands of `fires` in one transaction, visible from
/// `publish_at` on; false if the database refused them. A fire whose
/// schedule went offline or changed before `publish_at` is withdrawn by the
/// store, in the same transaction: the plan here may be up to a reload and
/// [`PREPARE_AHEAD`] old, the database is not.
async fn fire_all(shared: &Arc<Shared>, fires: &[(&Schedule, DateTime<Utc>)], publish_at: DateTime<Utc>) -> bool {
    let planned: Vec<ScheduledFire> = fires.iter().map(|(schedule, at)| ScheduledFire { schedule: (*schedule).clone(), at: *at }).collect();
    match shared.store.insert_scheduled_commands(&planned, publish_at).await {
        Ok(outcomes) => {
            if outcomes.iter().any(|o| matches!(o, Fired::Written(_))) {
                crate::commands::signal_commands(shared);
            }
            let now = Utc::now();
            for ((schedule, at), outcome) in fires.iter().zip(outcomes) {
                match outcome {
                    Fired::Written(id) => {
                        let lag_ms = (now - *at).num_milliseconds();
                        tracing::info!(schedule = %schedule.id, workflow = %schedule.workflow_id, fire_time = %at, lag_ms, command = %id, "schedule fired");
                    }
                    Fired::AlreadyFired => tracing::debug!(schedule = %schedule.id, fire_time = %at, "fire time already fired"),
                    Fired::Withdrawn => {
                        tracing::info!(schedule = %schedule.id, fire_time = %at, "schedule went offline or changed before its fire time; not fired")
                    }
                }
            }
            true
        }
        Err(error) => {
            tracing::error!(fires = fires.len(), %error, "schedule fires not recorded; writing them again");
            false
        }
    }
}
