//! History retention: finished workflow instances (with their task
//! instances) older than `master.history_retention` are deleted by one
//! master at a time (`locks/retention`), a small batch per transaction with
//! a pause between batches, so the clean-up never holds up scheduling.

use std::sync::Arc;
use std::time::Duration;

use sluice_registry::paths;

use crate::Shared;

pub(crate) async fn retention_loop(shared: Arc<Shared>) {
    let Some(keep) = shared.config.history_retention else { return };
    let Ok(keep) = chrono::Duration::from_std(keep) else { return };
    let lock = paths::retention_lock();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(shared.config.retention_interval) => {}
        }
        let Ok(Some(guard)) = shared.registry.try_lock(&lock, Duration::from_secs(1)).await else { continue };
        let cutoff = chrono::Utc::now() - keep;
        let batch = shared.config.retention_batch;
        let mut deleted = 0u64;
        loop {
            match shared.store.delete_finished_instances(cutoff, batch).await {
                Ok(n) => {
                    deleted += n;
                    if n < batch as u64 || shared.shutdown.is_cancelled() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "history retention interrupted");
                    break;
                }
            }
        }
        guard.release().await;
        if deleted > 0 {
            tracing::info!(deleted, %cutoff, "expired history deleted");
        }
    }
}
