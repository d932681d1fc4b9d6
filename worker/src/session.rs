//! What a worker does when it loses its registry session.
//!
//! Once the servers expire a worker's session its node is gone, and after
//! `master.failover_grace` its masters give its running tasks new attempts
//! elsewhere. The worker cannot know when the servers expire the session
//! (it learns of an expiry only once it reaches them again), so it counts
//! from the moment it noticed the cut-off: after a third of the session
//! timeout without a connection (as the registry's locks do), or at once
//! on an expiry or a closed session, it stops taking work, kills its
//! running attempts (their logs say why: [`SESSION_LOST`]) and then starts
//! over as a new incarnation: the `started_at` of its heartbeats moves to
//! now, and its masters fail over the attempts that started before, as
//! they do for a restarted worker — a failover, which does not use up the
//! task's retries, rather than a failure report that would (a registry
//! outage must not fail workflows). All this unless
//! `worker.keep_running_when_disconnected` says its tasks are idempotent.
//! The registry re-registers the worker when it gets a new session. `sluice_config`'s `failover_margin` sizes
//! the masters' grace for this.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sluice_registry::{Registry, SessionState};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::running::{StopCause, SESSION_LOST};
use crate::Shared;

/// Watches the session until `stop`; see the module doc.
pub(crate) async fn session_loop(shared: Arc<Shared>, registry: Arc<dyn Registry>, keep_running: bool, stop: CancellationToken) {
    let mut state = registry.session_state();
    loop {
        let now = *state.borrow_and_update();
        let lost = match now {
            SessionState::Connected => None,
            SessionState::Expired => Some("the registry session expired".to_owned()),
            SessionState::Closed => Some("the registry session was closed".to_owned()),
            SessionState::Disconnected => {
                let patience = cut_off_patience(registry.session_timeout());
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = state.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        // Back (or expired): look again.
                        continue;
                    }
                    _ = tokio::time::sleep(patience) => Some(format!(
                        "cut off from the registry for {}, a third of its session timeout",
                        humantime::format_duration(patience)
                    )),
                }
            }
        };
        if let Some(why) = lost {
            on_lost(&shared, &why, keep_running).await;
        }
        if now == SessionState::Closed {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = state.changed() => if changed.is_err() { return },
        }
    }
}

/// How long a worker stays cut off before it presumes its session lost.
fn cut_off_patience(session_timeout: Duration) -> Duration {
    session_timeout / 3
}

async fn on_lost(shared: &Shared, why: &str, keep_running: bool) {
    let running = shared.running.len();
    if running == 0 {
        info!(reason = why, "registry session lost; no task was running");
        return;
    }
    if keep_running {
        warn!(reason = why, tasks = running, "registry session lost; keeping the tasks running (worker.keep_running_when_disconnected): a master may fail them over and run them twice");
        return;
    }
    shared.paused.send_replace(true);
    let stopped = shared.running.stop_all(StopCause::SessionLost);
    warn!(reason = why, tasks = stopped, "{SESSION_LOST}; killing its tasks before a master fails them over");
    // Each attempt leaves `running` once its processes are gone.
    let deadline = tokio::time::Instant::now() + shared.kill_grace + ENDS_WITHIN;
    while shared.running.len() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A new incarnation: masters fail over the attempts that started
    // before it, as for a restarted worker, whether or not the servers
    // expired the session.
    shared.incarnation.store(Utc::now().timestamp_millis(), Ordering::SeqCst);
    shared.paused.send_replace(false);
    info!(tasks = stopped, left = shared.running.len(), "tasks killed; taking work again as a new incarnation");
}

/// How long killed attempts get, beyond the kill grace, to end.
const ENDS_WITHIN: Duration = Duration::from_secs(6);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patience_is_a_third_of_the_session() {
        assert_eq!(cut_off_patience(Duration::from_secs(30)), Duration::from_secs(10));
        assert_eq!(cut_off_patience(Duration::ZERO), Duration::ZERO);
    }
}
