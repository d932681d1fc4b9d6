use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, watch};

/// One ephemeral node of a membership directory: a live master or worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node's name inside its directory, e.g. `10.0.0.1:5678`.
    pub name: String,
    /// The heartbeat the member last wrote.
    pub data: Vec<u8>,
}

/// A change of a membership directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    Joined(Member),
    /// The member's node is gone: it unregistered or its session ended.
    Left(String),
}

/// The members of a directory when the watch started, then every change.
///
/// A member that leaves and comes back between two looks at the directory is
/// still reported as `Left` then `Joined`: a restarted worker is a new
/// worker as far as failover is concerned. Heartbeat updates are not
/// reported; read them with [`crate::Registry::members`].
pub struct MembershipWatch {
    members: Vec<Member>,
    events: mpsc::UnboundedReceiver<MembershipEvent>,
}

impl MembershipWatch {
    pub(crate) fn new(
        members: Vec<Member>,
        events: mpsc::UnboundedReceiver<MembershipEvent>,
    ) -> Self {
        Self { members, events }
    }

    /// Members present when the watch started, sorted by name.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The next change, or `None` once the registry session is closed (or,
    /// on ZooKeeper, the watch failed for good; the failure is logged).
    pub async fn next(&mut self) -> Option<MembershipEvent> {
        self.events.recv().await
    }

    pub fn into_parts(self) -> (Vec<Member>, mpsc::UnboundedReceiver<MembershipEvent>) {
        (self.members, self.events)
    }
}

impl fmt::Debug for MembershipWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MembershipWatch")
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// A one-shot watch of a signal ([`crate::Registry::watch_signal`]):
/// resolves on the first [`crate::Registry::signal`] of its name after the
/// watch was set, or when the watch can no longer tell (the session ended
/// or was replaced). Resolving is only a hint to look again: whoever waits
/// on it also looks now and then by itself, since a signal can be lost.
#[must_use = "a signal watch does nothing unless awaited"]
pub struct SignalWatch(BoxFuture);

impl SignalWatch {
    pub(crate) fn new(fired: impl Future<Output = ()> + Send + 'static) -> Self {
        SignalWatch(Box::pin(fired))
    }
}

impl Future for SignalWatch {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for SignalWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalWatch").finish_non_exhaustive()
    }
}

/// A task taken from a worker group's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueItem {
    pub key: String,
    pub payload: Vec<u8>,
}

/// What the registry session is going through.
///
/// `Disconnected` means the session may still be alive on the servers (its
/// ephemeral nodes and locks too); `Expired` means it is not, and the
/// registry is establishing a new one, after which it re-registers its
/// ephemeral nodes and reports `Connected` again. Locks do not survive an
/// expiry: their guards report [`LockGuard::lost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Connected,
    Disconnected,
    Expired,
    Closed,
}

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// How an implementation gives a lock back.
pub(crate) trait ReleaseLock: Send + Sync + 'static {
    /// Starts releasing at once, so that dropping the returned future (as
    /// [`LockGuard`]'s `Drop` does) still releases; the future resolves
    /// once the lock is free for others.
    fn start_release(self: Box<Self>) -> BoxFuture;
}

/// A held distributed lock; released by [`LockGuard::release`] or on drop.
///
/// Holding a guard does not guarantee the lock is still held: a ZooKeeper
/// session can expire under it, or be cut off from the servers long enough
/// that they may expire it (the guard gives up after a third of the session
/// timeout without a connection, before the servers could hand the lock to
/// anyone else). Work that must not run twice (firing cron schedules) stops
/// as soon as [`LockGuard::lost`] resolves, and takes the lock again.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    name: String,
    lost: watch::Receiver<bool>,
    release: Option<Box<dyn ReleaseLock>>,
}

impl LockGuard {
    pub(crate) fn new(
        name: String,
        lost: watch::Receiver<bool>,
        release: Box<dyn ReleaseLock>,
    ) -> Self {
        Self {
            name,
            lost,
            release: Some(release),
        }
    }

    /// The lock's path, as given to [`crate::Registry::lock`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the lock has been lost (session expired or closed, lock node
    /// deleted behind our back).
    pub fn is_lost(&self) -> bool {
        // A dropped sender means the holder is gone, so the lock is too.
        *self.lost.borrow() || self.lost.has_changed().is_err()
    }

    /// Resolves once the lock is lost; never while it is held.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            // Err: the holder dropped its sender, which it only does once the
            // lock is gone.
            let _ = lost.wait_for(|lost| *lost).await;
        }
    }

    /// A receiver that turns `true` when the lock is lost, for `select!`
    /// loops that prefer a watch channel.
    pub fn lost_watch(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Gives the lock back and waits until others can take it.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            release.start_release().await;
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            drop(release.start_release());
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("lost", &self.is_lost())
            .finish()
    }
}
