//! Keeping a process's ephemeral registration alive and current.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Registry, RegistryError};

/// How long [`Heartbeat::start`] waits for a node left by a crashed
/// predecessor with the same address to expire.
const TAKEOVER_WAIT: Duration = Duration::from_secs(60);

/// An ephemeral registration whose data is refreshed every `interval` until
/// [`Heartbeat::stop`].
pub struct Heartbeat {
    registry: Arc<dyn Registry>,
    path: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Registers `path` with `data()` and keeps updating it.
    ///
    /// If the node exists, a previous process with the same address may have
    /// died with its session not yet expired: this waits (up to a minute)
    /// for the node to go, rather than failing a restart.
    pub async fn start<F>(registry: Arc<dyn Registry>, path: String, interval: Duration, data: F) -> Result<Heartbeat, RegistryError>
    where
        F: Fn() -> Vec<u8> + Send + Sync + 'static,
    {
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        loop {
            match registry.register(&path, &data()).await {
                Ok(()) => break,
                Err(RegistryError::NodeExists { .. }) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%path, "node still registered by an earlier session; waiting for it to expire");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
        let (stop, mut stopped) = oneshot::channel();
        let task = {
            let (registry, path) = (registry.clone(), path.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        _ = tick.tick() => {}
                    }
                    let result = match registry.update(&path, &data()).await {
                        // Gone (e.g. removed by hand): put it back.
                        Err(RegistryError::NoNode { .. }) => registry.register(&path, &data()).await,
                        other => other,
                    };
                    if let Err(error) = result {
                        tracing::warn!(%path, %error, "heartbeat failed");
                    }
                }
            })
        };
        Ok(Heartbeat { registry, path, stop: Some(stop), task: Some(task) })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Stops refreshing and removes the node.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Err(error) = self.registry.unregister(&self.path).await {
            tracing::warn!(path = %self.path, %error, "could not unregister");
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
