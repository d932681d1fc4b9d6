//! The coordination layer: membership with heartbeats, distributed locks and
//! the per-worker-group priority queue of ready tasks.
//!
//! [`Registry`] has two implementations that pass one contract suite
//! (`tests/contract.rs`): [`ZkRegistry`] on a real ZooKeeper for clusters,
//! and [`EmbeddedRegistry`] in-process for `sluice standalone`. Every path is
//! relative to the cluster root; [`paths`] builds them.

mod embedded;
mod error;
mod heartbeat;
pub mod paths;
mod types;
mod zk;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

pub use crate::embedded::{EmbeddedRegistry, EmbeddedSession};
pub use crate::error::RegistryError;
pub use crate::heartbeat::Heartbeat;
pub use crate::types::{
    LockGuard, Member, MembershipEvent, MembershipWatch, QueueItem, SessionState, SignalWatch,
};
pub use crate::zk::ZkRegistry;

/// One session with the coordination service.
///
/// Ephemeral nodes and locks belong to the session that made them and vanish
/// when it ends ([`Registry::close`], process death, ZooKeeper session
/// expiry). Queue entries are persistent: they outlive every session.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Creates the ephemeral node `path` holding `data` (a heartbeat).
    ///
    /// Fails with [`RegistryError::NodeExists`] while another session (for
    /// instance the not yet expired session of a crashed predecessor) holds
    /// the node, so two processes never claim one address.
    async fn register(&self, path: &str, data: &[u8]) -> Result<(), RegistryError>;

    /// Replaces the heartbeat of a node this session registered.
    ///
    /// Fails with [`RegistryError::NoNode`] if this session does not hold
    /// `path` (never registered, unregistered, or lost to another session
    /// while this one was expired): the caller should register again, and
    /// stop if that fails, rather than keep refreshing someone else's node.
    async fn update(&self, path: &str, data: &[u8]) -> Result<(), RegistryError>;

    /// Deletes `path`; deleting a node that is already gone is not an error.
    async fn unregister(&self, path: &str) -> Result<(), RegistryError>;

    /// The ephemeral children of `dir`, sorted by name.
    async fn members(&self, dir: &str) -> Result<Vec<Member>, RegistryError>;

    /// The ephemeral children of `dir` now, and every later join and leave.
    async fn watch_members(&self, dir: &str) -> Result<MembershipWatch, RegistryError>;

    /// Waits until this session holds the lock `name` (e.g.
    /// [`paths::cron_lock`]). Waiters are served in arrival order.
    async fn lock(&self, name: &str) -> Result<LockGuard, RegistryError>;

    /// Like [`Registry::lock`], but gives up after `wait` and returns `None`.
    /// On ZooKeeper taking even a free lock needs round trips, so `wait`
    /// should allow a few milliseconds.
    async fn try_lock(
        &self,
        name: &str,
        wait: Duration,
    ) -> Result<Option<LockGuard>, RegistryError>;

    /// Queues `key` for `group`. Fails with [`RegistryError::NodeExists`]
    /// if the key is already queued.
    async fn queue_put(&self, group: &str, key: &str, payload: &[u8]) -> Result<(), RegistryError>;

    /// Takes the lowest key of `group`'s queue, waiting (without polling)
    /// until there is one. Each entry is taken by exactly one caller across
    /// all sessions. Cancel-safe: dropping the future never loses an entry.
    async fn queue_take(&self, group: &str) -> Result<QueueItem, RegistryError>;

    /// Takes the lowest key of `group`'s queue if there is one.
    async fn queue_try_take(&self, group: &str) -> Result<Option<QueueItem>, RegistryError>;

    /// Withdraws `key` from `group`'s queue; `false` if it was not queued
    /// (already taken by a worker, or never put).
    async fn queue_remove(&self, group: &str, key: &str) -> Result<bool, RegistryError>;

    /// The keys queued for `group`, lowest (next to run) first.
    async fn queue_keys(&self, group: &str) -> Result<Vec<String>, RegistryError>;

    /// Wakes every session watching the signal `name` (e.g.
    /// [`paths::commands_signal`]): "there is something new, look now".
    /// Signals carry nothing and may be lost (a watcher re-arming just
    /// then misses one), so watchers also look on a timer.
    async fn signal(&self, name: &str) -> Result<(), RegistryError>;

    /// Watches the signal `name` once: the watch resolves on the first
    /// signal after this call returned (or when the session ends). Set it
    /// before looking, so that nothing signalled after the look is missed.
    async fn watch_signal(&self, name: &str) -> Result<SignalWatch, RegistryError>;

    /// The session's state now and from now on.
    fn session_state(&self) -> watch::Receiver<SessionState>;

    /// How long the servers keep a session that does not hear from its
    /// client (ZooKeeper's negotiated timeout): a process cut off longer is
    /// presumed dead and its ephemeral nodes go. Zero for a registry whose
    /// sessions cannot be cut off (the embedded one: they end only when
    /// closed).
    fn session_timeout(&self) -> Duration;

    /// Whether everything it holds lives in this process and dies with it
    /// (the embedded registry of `sluice standalone`): a queue entry
    /// missing after a restart was lost, not taken by a worker elsewhere.
    fn lost_on_restart(&self) -> bool {
        false
    }

    /// Ends the session: its ephemeral nodes disappear and its locks are
    /// released before this returns. Every later call fails with
    /// [`RegistryError::Closed`].
    async fn close(&self);
}

/// Lets roles hold `Arc<dyn Registry>` and still pass it where a concrete
/// registry is expected.
#[async_trait]
impl<R: Registry + ?Sized> Registry for std::sync::Arc<R> {
    async fn register(&self, path: &str, data: &[u8]) -> Result<(), RegistryError> {
        (**self).register(path, data).await
    }
    async fn update(&self, path: &str, data: &[u8]) -> Result<(), RegistryError> {
        (**self).update(path, data).await
    }
    async fn unregister(&self, path: &str) -> Result<(), RegistryError> {
        (**self).unregister(path).await
    }
    async fn members(&self, dir: &str) -> Result<Vec<Member>, RegistryError> {
        (**self).members(dir).await
    }
    async fn watch_members(&self, dir: &str) -> Result<MembershipWatch, RegistryError> {
        (**self).watch_members(dir).await
    }
    async fn lock(&self, name: &str) -> Result<LockGuard, RegistryError> {
        (**self).lock(name).await
    }
    async fn try_lock(
        &self,
        name: &str,
        wait: Duration,
    ) -> Result<Option<LockGuard>, RegistryError> {
        (**self).try_lock(name, wait).await
    }
    async fn queue_put(&self, group: &str, key: &str, payload: &[u8]) -> Result<(), RegistryError> {
        (**self).queue_put(group, key, payload).await
    }
    async fn queue_take(&self, group: &str) -> Result<QueueItem, RegistryError> {
        (**self).queue_take(group).await
    }
    async fn queue_try_take(&self, group: &str) -> Result<Option<QueueItem>, RegistryError> {
        (**self).queue_try_take(group).await
    }
    async fn queue_remove(&self, group: &str, key: &str) -> Result<bool, RegistryError> {
        (**self).queue_remove(group, key).await
    }
    async fn queue_keys(&self, group: &str) -> Result<Vec<String>, RegistryError> {
        (**self).queue_keys(group).await
    }
    async fn signal(&self, name: &str) -> Result<(), RegistryError> {
        (**self).signal(name).await
    }
    async fn watch_signal(&self, name: &str) -> Result<SignalWatch, RegistryError> {
        (**self).watch_signal(name).await
    }
    fn session_state(&self) -> watch::Receiver<SessionState> {
        (**self).session_state()
    }
    fn session_timeout(&self) -> Duration {
        (**self).session_timeout()
    }
    fn lost_on_restart(&self) -> bool {
        (**self).lost_on_restart()
    }
    async fn close(&self) {
        (**self).close().await
    }
}
