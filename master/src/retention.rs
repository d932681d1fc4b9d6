//! History retention: finished workflow instances (with their task
//! instances) older than `master.history_retention` are deleted by one
//! master at a time (`locks/retention`), a small batch per transaction with
//! a pause between batches, so the clean-up never holds up scheduling.
//! Task logs in the log store older than `log_store.retention` are deleted
//! the same way by a sibling loop (`locks/log-retention`).

use std::sync::Arc;
use std::time::Duration;

use sluice_registry::{paths, LockGuard};

use crate::Shared;

/// Waits `retention_interval`, then takes `lock` if no other master holds
/// it; `None` once the master is shutting down.
async fn next_turn(shared: &Shared, lock: &str) -> Option<LockGuard> {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            _ = tokio::time::sleep(shared.config.retention_interval) => {}
        }
        if let Ok(Some(guard)) = shared.registry.try_lock(lock, Duration::from_secs(1)).await {
            return Some(guard);
        }
    }
}

pub(crate) async fn retention_loop(shared: Arc<Shared>) {
    let Some(keep) = shared.config.history_retention else { return };
    let Ok(keep) = chrono::Duration::from_std(keep) else { return };
    let lock = paths::retention_lock();
    while let Some(guard) = next_turn(&shared, &lock).await {
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

/// Deletes the log store's logs older than the log retention, every
/// `retention_interval`, by one master at a time.
pub(crate) async fn log_retention_loop(shared: Arc<Shared>) {
    let Some((store, keep)) = shared.log_retention.clone() else { return };
    let lock = paths::log_retention_lock();
    while let Some(guard) = next_turn(&shared, &lock).await {
        let cutoff = std::time::SystemTime::now() - keep;
        match store.delete_older_than(cutoff).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired task logs deleted from the log store"),
            Err(error) => tracing::warn!(%error, "task log retention interrupted"),
        }
        guard.release().await;
    }
}
