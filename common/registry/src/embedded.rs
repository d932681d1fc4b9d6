//! The in-process registry of `sluice standalone`.
//!
//! One [`EmbeddedRegistry`] is the shared state (what the ZooKeeper ensemble
//! is for a cluster); each role gets its own [`EmbeddedSession`], so that
//! ephemeral nodes, locks and their loss on close behave as with ZooKeeper.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::paths::{self, split_parent, validate_name, validate_path};
use crate::types::{BoxFuture, ReleaseLock};
use crate::{
    LockGuard, Member, MembershipEvent, MembershipWatch, QueueItem, Registry, RegistryError,
    SessionState, SignalWatch,
};

type SessionId = u64;

/// The shared state behind every [`EmbeddedSession`].
#[derive(Clone, Default)]
pub struct EmbeddedRegistry {
    hub: Arc<Hub>,
}

#[derive(Default)]
struct Hub {
    state: Mutex<HubState>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct HubState {
    ephemerals: BTreeMap<String, Ephemeral>,
    watchers: HashMap<String, Vec<Watcher>>,
    queues: HashMap<String, Queue>,
    locks: HashMap<String, Arc<Semaphore>>,
    held: HashMap<u64, HeldLock>,
    /// How many times each signal was sent; watchers wait for a change.
    signals: HashMap<String, watch::Sender<u64>>,
    /// Sessions that have been closed: checked under the hub lock so that a
    /// session never gains a node or a lock after its close took them away.
    closed: std::collections::HashSet<SessionId>,
}

struct Ephemeral {
    data: Vec<u8>,
    owner: SessionId,
}

struct Watcher {
    session: SessionId,
    events: mpsc::UnboundedSender<MembershipEvent>,
}

#[derive(Default)]
struct Queue {
    entries: BTreeMap<String, Vec<u8>>,
    /// Wakes every waiting taker on a put; they race for the entry under the
    /// hub lock, which is what makes a take exactly-once.
    put: Arc<Notify>,
}

struct HeldLock {
    session: SessionId,
    _permit: OwnedSemaphorePermit,
    lost: watch::Sender<bool>,
}

impl EmbeddedRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens a new session: one per role, as each process of a cluster has
    /// its own ZooKeeper session.
    pub fn session(&self) -> EmbeddedSession {
        let id = self.hub.next_id.fetch_add(1, Ordering::Relaxed);
        let (state, _) = watch::channel(SessionState::Connected);
        EmbeddedSession {
            hub: self.hub.clone(),
            id,
            closed: CancellationToken::new(),
            state,
        }
    }
}

impl Hub {
    fn lock_state(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves plain data behind, never a
        // half-applied invariant worth refusing to read.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn release(&self, token: u64) {
        self.lock_state().held.remove(&token);
    }
}

impl HubState {
    fn notify(&mut self, dir: &str, event: MembershipEvent) {
        if let Some(watchers) = self.watchers.get_mut(dir) {
            watchers.retain(|w| w.events.send(event.clone()).is_ok());
        }
    }

    fn check_open(&self, session: SessionId) -> Result<(), RegistryError> {
        if self.closed.contains(&session) {
            Err(RegistryError::Closed)
        } else {
            Ok(())
        }
    }

    fn members(&self, dir: &str) -> Vec<Member> {
        let prefix = format!("{dir}/");
        self.ephemerals
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
            .filter(|(path, _)| !path[prefix.len()..].contains('/'))
            .map(|(path, node)| Member {
                name: path[prefix.len()..].to_owned(),
                data: node.data.clone(),
            })
            .collect()
    }
}

/// One client of an [`EmbeddedRegistry`]; dropping it closes it.
pub struct EmbeddedSession {
    hub: Arc<Hub>,
    id: SessionId,
    closed: CancellationToken,
    state: watch::Sender<SessionState>,
}

impl EmbeddedSession {
    fn close_now(&self) {
        let mut st = self.hub.lock_state();
        if !st.closed.insert(self.id) {
            return;
        }
        self.closed.cancel();
        let owned: Vec<String> = st
            .ephemerals
            .iter()
            .filter(|(_, node)| node.owner == self.id)
            .map(|(path, _)| path.clone())
            .collect();
        for path in owned {
            st.ephemerals.remove(&path);
            let (dir, name) = split_parent(&path);
            st.notify(dir, MembershipEvent::Left(name.to_owned()));
        }
        let held: Vec<u64> = st
            .held
            .iter()
            .filter(|(_, lock)| lock.session == self.id)
            .map(|(token, _)| *token)
            .collect();
        for token in held {
            if let Some(lock) = st.held.remove(&token) {
                lock.lost.send_replace(true);
            }
        }
        for watchers in st.watchers.values_mut() {
            watchers.retain(|w| w.session != self.id);
        }
        drop(st);
        self.state.send_replace(SessionState::Closed);
        debug!(session = self.id, "embedded registry session closed");
    }

    fn try_take(&self, group: &str) -> Result<Option<QueueItem>, RegistryError> {
        let mut st = self.hub.lock_state();
        st.check_open(self.id)?;
        let item = st
            .queues
            .get_mut(group)
            .and_then(|queue| queue.entries.pop_first())
            .map(|(key, payload)| QueueItem { key, payload });
        Ok(item)
    }
}

impl Drop for EmbeddedSession {
    fn drop(&mut self) {
        self.close_now();
    }
}

struct EmbeddedRelease {
    hub: Weak<Hub>,
    token: u64,
}

impl ReleaseLock for EmbeddedRelease {
    fn start_release(self: Box<Self>) -> BoxFuture {
        if let Some(hub) = self.hub.upgrade() {
            hub.release(self.token);
        }
        Box::pin(std::future::ready(()))
    }
}

#[async_trait]
impl Registry for EmbeddedSession {
    async fn register(&self, path: &str, data: &[u8]) -> Result<(), RegistryError> {
        validate_path(path)?;
        let mut st = self.hub.lock_state();
        st.check_open(self.id)?;
        if st.ephemerals.contains_key(path) {
            return Err(RegistryError::NodeExists {
                path: path.to_owned(),
            });
        }
        st.ephemerals.insert(
            path.to_owned(),
            Ephemeral {
                data: data.to_vec(),
                owner: self.id,
            },
        );
        let (dir, name) = split_parent(path);
        st.notify(
            dir,
            MembershipEvent::Joined(Member {
                name: name.to_owned(),
                data: data.to_vec(),
            }),
        );
        Ok(())
    }

    async fn update(&self, path: &str, data: &[u8]) -> Result<(), RegistryError> {
        validate_path(path)?;
        let mut st = self.hub.lock_state();
        st.check_open(self.id)?;
        // Like ZooKeeper's, only the registering session keeps a heartbeat
        // going: a zombie must not refresh its successor's node.
        match st
            .ephemerals
            .get_mut(path)
            .filter(|node| node.owner == self.id)
        {
            Some(node) => {
                node.data = data.to_vec();
                Ok(())
            }
            None => Err(RegistryError::NoNode {
                path: path.to_owned(),
            }),
        }
    }

    async fn unregister(&self, path: &str) -> Result<(), RegistryError> {
        validate_path(path)?;
        let mut st = self.hub.lock_state();
        st.check_open(self.id)?;
        if st.ephemerals.remove(path).is_some() {
            let (dir, name) = split_parent(path);
            st.notify(dir, MembershipEvent::Left(name.to_owned()));
        }
        Ok(())
    }

    async fn members(&self, dir: &str) -> Result<Vec<Member>, RegistryError> {
        validate_path(dir)?;
        let st = self.hub.lock_state();
        st.check_open(self.id)?;
        Ok(st.members(dir))
    }

    async fn watch_members(&self, dir: &str) -> Result<MembershipWatch, RegistryError> {
        validate_path(dir)?;
        let mut st = self.hub.lock_state();
        st.check_open(self.id)?;
        // Snapshot and subscription under one lock: no change falls between.
        let members = st.members(dir);
        let (tx, rx) = mpsc::unbounded_channel();
        st.watchers
            .entry(dir.to_owned())
            .or_default()
            .push(Watcher {
                session: self.id,
                events: tx,
            });
        Ok(MembershipWatch::new(members, rx))
    }

    async fn lock(&self, name: &str) -> Result<LockGuard, RegistryError> {
        validate_path(name)?;
        let semaphore = {
            let mut st = self.hub.lock_state();
            st.check_open(self.id)?;
            st.locks
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(1)))
                .clone()
        };
        // The semaphore queues waiters fairly, like ZooKeeper's sequential
        // lock nodes do.
        let permit = tokio::select! {
            permit = semaphore.acquire_owned() => permit.map_err(|_| RegistryError::Closed)?,
            _ = self.closed.cancelled() => return Err(RegistryError::Closed),
        };
        let mut st = self.hub.lock_state();
        st.check_open(self.id)?;
        let token = self.hub.next_id.fetch_add(1, Ordering::Relaxed);
        let (lost, lost_rx) = watch::channel(false);
        st.held.insert(
            token,
            HeldLock {
                session: self.id,
                _permit: permit,
                lost,
            },
        );
        Ok(LockGuard::new(
            name.to_owned(),
            lost_rx,
            Box::new(EmbeddedRelease {
                hub: Arc::downgrade(&self.hub),
                token,
            }),
        ))
    }

    async fn try_lock(
        &self,
        name: &str,
        wait: Duration,
    ) -> Result<Option<LockGuard>, RegistryError> {
        match tokio::time::timeout(wait, self.lock(name)).await {
            Ok(guard) => guard.map(Some),
            Err(_elapsed) => Ok(None),
        }
    }

    async fn queue_put(&self, group: &str, key: &str, payload: &[u8]) -> Result<(), RegistryError> {
        validate_name(group)?;
        validate_name(key)?;
        let mut st = self.hub.lock_state();
        st.check_open(self.id)?;
        let queue = st.queues.entry(group.to_owned()).or_default();
        if queue.entries.contains_key(key) {
            return Err(RegistryError::NodeExists {
                path: paths::queue_node(group, key),
            });
        }
        queue.entries.insert(key.to_owned(), payload.to_vec());
        queue.put.notify_waiters();
        Ok(())
    }

    async fn queue_take(&self, group: &str) -> Result<QueueItem, RegistryError> {
        validate_name(group)?;
        let put = {
            let mut st = self.hub.lock_state();
            st.check_open(self.id)?;
            st.queues.entry(group.to_owned()).or_default().put.clone()
        };
        loop {
            // Register for the wake-up before looking, so a put between the
            // look and the wait is not missed.
            let notified = put.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(item) = self.try_take(group)? {
                return Ok(item);
            }
            tokio::select! {
                _ = notified => {}
                _ = self.closed.cancelled() => return Err(RegistryError::Closed),
            }
        }
    }

    async fn queue_try_take(&self, group: &str) -> Result<Option<QueueItem>, RegistryError> {
        validate_name(group)?;
        self.try_take(group)
    }

    async fn queue_remove(&self, group: &str, key: &str) -> Result<bool, RegistryError> {
        validate_name(group)?;
        validate_name(key)?;
        let mut st = self.hub.lock_state();
        st.check_open(self.id)?;
        Ok(st
            .queues
            .get_mut(group)
            .is_some_and(|queue| queue.entries.remove(key).is_some()))
    }

    async fn queue_keys(&self, group: &str) -> Result<Vec<String>, RegistryError> {
        validate_name(group)?;
        let st = self.hub.lock_state();
        st.check_open(self.id)?;
        Ok(st
            .queues
            .get(group)
            .map(|queue| queue.entries.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn signal(&self, name: &str) -> Result<(), RegistryError> {
        validate_path(name)?;
        let mut st = self.hub.lock_state();
        st.check_open(self.id)?;
        st.signals
            .entry(name.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .send_modify(|sent| *sent += 1);
        Ok(())
    }

    async fn watch_signal(&self, name: &str) -> Result<SignalWatch, RegistryError> {
        validate_path(name)?;
        let mut st = self.hub.lock_state();
        st.check_open(self.id)?;
        // A new receiver has seen what was sent so far: it waits for the next.
        let mut sent = st
            .signals
            .entry(name.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        let closed = self.closed.clone();
        Ok(SignalWatch::new(async move {
            tokio::select! {
                _ = sent.changed() => {}
                _ = closed.cancelled() => {}
            }
        }))
    }

    fn session_state(&self) -> watch::Receiver<SessionState> {
        self.state.subscribe()
    }

    /// In one process nothing can cut a session off: it ends only when
    /// closed.
    fn session_timeout(&self) -> Duration {
        Duration::ZERO
    }

    fn lost_on_restart(&self) -> bool {
        true
    }

    async fn close(&self) {
        self.close_now();
    }
}
