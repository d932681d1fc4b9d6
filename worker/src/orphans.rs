//! Killing orphans. A worker that was presumed lost (its registry node gone
//! past the masters' grace period) may come back to find that its tasks
//! were given new attempts elsewhere; the processes it still runs for the
//! old attempts must not go on. Every so often the worker asks a live
//! master which of its attempts are no longer current and kills those.

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::v1::master_service_client::MasterServiceClient;
use sluice_proto::v1::{AttemptRef, CheckAttemptsRequest};
use sluice_registry::{paths, Registry, SessionState};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{debug, warn};

use crate::running::{StopCause, TaskAttempt};
use crate::Shared;

/// How often running attempts are checked when nothing else prompts it.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(10);

pub(crate) async fn orphan_loop(shared: Arc<Shared>, registry: Arc<dyn Registry>, every: Duration, stop: CancellationToken) {
    let mut session = registry.session_state();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            // Back from a lost session: the likeliest moment to hold orphans.
            changed = session.changed() => {
                if changed.is_err() {
                    return;
                }
                if *session.borrow_and_update() != SessionState::Connected {
                    continue;
                }
            }
        }
        if let Err(error) = check(&shared, &registry).await {
            debug!(%error, "orphan check skipped");
        }
    }
}

async fn check(shared: &Shared, registry: &Arc<dyn Registry>) -> Result<(), String> {
    let attempts = shared.running.attempts();
    if attempts.is_empty() {
        return Ok(());
    }
    let masters = registry.members(&paths::masters_dir()).await.map_err(|e| e.to_string())?;
    let request = CheckAttemptsRequest {
        attempts: attempts
            .iter()
            .map(|a| AttemptRef { task_instance_id: a.task_instance_id.get(), attempt: a.attempt })
            .collect(),
    };
    for master in masters {
        let Ok(endpoint) = Endpoint::from_shared(format!("http://{}", master.name)) else { continue };
        let Ok(channel) = endpoint.connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(10)).connect().await else { continue };
        let Ok(reply) = MasterServiceClient::new(channel).check_attempts(request.clone()).await else { continue };
        for stale in reply.into_inner().stale {
            let attempt = TaskAttempt { task_instance_id: stale.task_instance_id.into(), attempt: stale.attempt };
            if shared.running.stop(attempt, StopCause::Kill("attempt reassigned while this worker was presumed lost".into())) {
                warn!(task_instance = stale.task_instance_id, attempt = stale.attempt, "killing an orphaned attempt");
            }
        }
        return Ok(());
    }
    Err("no live master answered".into())
}
