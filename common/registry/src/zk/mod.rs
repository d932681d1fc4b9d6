//! The registry of a cluster, on a real ZooKeeper.
//!
//! One [`ZkRegistry`] is one logical session. ZooKeeper sessions can
//! expire (a long GC pause, a partition longer than the session timeout);
//! the registry then opens a new session, re-creates the ephemeral nodes it
//! registered with their last data, and reports the passage through
//! [`SessionState::Expired`]. Locks cannot be carried over: their guards
//! report the loss, because another master may already hold them.

mod lock;
mod members;
mod queue;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use zookeeper_client as zk;

use crate::paths::{self, split_parent, validate_name, validate_path};
use crate::{
    LockGuard, Member, MembershipWatch, QueueItem, Registry, RegistryError, SessionState,
    SignalWatch,
};

const PERSISTENT: zk::CreateOptions<'static> =
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
const EPHEMERAL: zk::CreateOptions<'static> =
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());

/// How often an operation is resent after the connection dropped under it
/// before the caller hears about it. The client queues requests while it
/// reconnects, so a resend waits for the connection instead of spinning.
const CONNECTION_LOSS_RETRIES: usize = 5;

/// A [`Registry`] on a ZooKeeper ensemble, rooted at one cluster's root.
pub struct ZkRegistry {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    servers: String,
    root: String,
    session_timeout: Duration,
    /// The live session; `None` once closed.
    conn: Mutex<Option<Conn>>,
    /// Bumped each time a new session replaces an expired one, so that
    /// waiters know when retrying can succeed.
    generation: watch::Sender<u64>,
    state: watch::Sender<SessionState>,
    /// Ephemeral nodes this registry registered, with their last data, to
    /// re-create them in a new session. The async lock also orders
    /// registrations against the re-creation, so none slips between.
    ephemerals: tokio::sync::Mutex<BTreeMap<String, Vec<u8>>>,
    queues: Mutex<HashMap<String, Arc<tokio::sync::Mutex<queue::QueueCache>>>>,
    shutdown: CancellationToken,
}

/// A session and which one it is.
#[derive(Clone)]
pub(crate) struct Conn {
    client: zk::Client,
    generation: u64,
}

impl ZkRegistry {
    /// Connects to `servers` (`host:port,host:port`), creating `root`
    /// (`/sluice/<cluster>`) and its parents if they are missing.
    ///
    /// ZooKeeper bounds `session_timeout` by its `minSessionTimeout` and
    /// `maxSessionTimeout`; ephemeral nodes of a process that dies without
    /// closing its session live that long.
    pub async fn connect(
        servers: &str,
        root: &str,
        session_timeout: Duration,
    ) -> Result<ZkRegistry, RegistryError> {
        if !root.starts_with('/') || (root.len() > 1 && root.ends_with('/')) {
            return Err(RegistryError::InvalidPath {
                path: root.to_owned(),
                reason: "root must be absolute and must not end with `/`",
            });
        }
        if root.len() > 1 {
            validate_path(&root[1..])?;
        }
        let client = open_session(servers, root, session_timeout).await?;
        let negotiated = client.session_timeout();
        info!(servers, root, session = %client.session_id(), ?negotiated, "zookeeper registry connected");
        let state_watcher = client.state_watcher();
        let (generation, _) = watch::channel(0);
        let (state, _) = watch::channel(SessionState::Connected);
        let inner = Arc::new(Inner {
            servers: servers.to_owned(),
            root: root.to_owned(),
            session_timeout,
            conn: Mutex::new(Some(Conn {
                client,
                generation: 0,
            })),
            generation,
            state,
            ephemerals: tokio::sync::Mutex::new(BTreeMap::new()),
            queues: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(supervise(inner.clone(), state_watcher));
        Ok(ZkRegistry { inner })
    }

    /// The cluster root this registry works under.
    pub fn root(&self) -> &str {
        &self.inner.root
    }

    /// How many times the registry has replaced an expired session: for
    /// tests of session loss, with [`Self::wait_for_new_session`].
    #[doc(hidden)]
    pub fn session_generation(&self) -> u64 {
        *self.inner.generation.borrow()
    }

    /// Waits until the registry runs on a session newer than `generation`.
    #[doc(hidden)]
    pub async fn wait_for_new_session(&self, generation: u64) -> Result<(), RegistryError> {
        let mut renewed = self.inner.generation.subscribe();
        renewed
            .wait_for(|g| *g > generation)
            .await
            .map(|_| ())
            .map_err(|_| RegistryError::Closed)
    }
}

impl Drop for ZkRegistry {
    fn drop(&mut self) {
        // Background tasks hold clones of the client; stopping them lets the
        // last clone go, which closes the session.
        self.inner.shutdown.cancel();
        self.inner.lock_conn().take();
    }
}

async fn open_session(
    servers: &str,
    root: &str,
    session_timeout: Duration,
) -> Result<zk::Client, RegistryError> {
    let connect_error = |err: zk::Error| RegistryError::Connect {
        servers: servers.to_owned(),
        timeout: session_timeout,
        message: err.to_string(),
    };
    let client = zk::Client::connector()
        .with_session_timeout(session_timeout)
        .connect(servers)
        .await
        .map_err(connect_error)?;
    if root != "/" {
        client
            .mkdir(root, &PERSISTENT)
            .await
            .map_err(|err| zk_error(err, root))?;
    }
    client.chroot(root).map_err(|_| RegistryError::InvalidPath {
        path: root.to_owned(),
        reason: "not a valid ZooKeeper chroot",
    })
}

/// Follows the ZooKeeper session: reports its state, and replaces it when
/// it expires.
async fn supervise(inner: Arc<Inner>, mut watcher: zk::StateWatcher) {
    loop {
        let state = tokio::select! {
            state = watcher.changed() => state,
            _ = inner.shutdown.cancelled() => return,
        };
        match state {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                info!(root = %inner.root, "zookeeper session reconnected");
                inner.state.send_replace(SessionState::Connected);
            }
            zk::SessionState::Disconnected => {
                warn!(root = %inner.root, "zookeeper session disconnected");
                inner.state.send_replace(SessionState::Disconnected);
            }
            zk::SessionState::Expired | zk::SessionState::AuthFailed | zk::SessionState::Closed => {
                if inner.shutdown.is_cancelled() {
                    return;
                }
                warn!(root = %inner.root, ?state, "zookeeper session ended, opening a new one");
                inner.state.send_replace(SessionState::Expired);
                match renew(&inner).await {
                    Some(next) => watcher = next,
                    None => return,
                }
            }
        }
    }
}

/// Opens a new session and re-creates the ephemeral nodes; `None` on
/// shutdown.
async fn renew(inner: &Inner) -> Option<zk::StateWatcher> {
    let mut backoff = Duration::from_millis(100);
    let client = loop {
        let attempt = tokio::select! {
            attempt = open_session(&inner.servers, &inner.root, inner.session_timeout) => attempt,
            _ = inner.shutdown.cancelled() => return None,
        };
        match attempt {
            Ok(client) => break client,
            Err(err) => {
                warn!(root = %inner.root, error = %err, "cannot open a new zookeeper session yet");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = inner.shutdown.cancelled() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let watcher = client.state_watcher();
    let mut ephemerals = inner.ephemerals.lock().await;
    let (old_session, generation) = {
        let mut conn = inner.lock_conn();
        let old = conn.as_ref()?;
        let old_session = old.client.session_id().0;
        let generation = old.generation + 1;
        *conn = Some(Conn {
            client: client.clone(),
            generation,
        });
        (old_session, generation)
    };
    let mut lost = Vec::new();
    for (path, data) in ephemerals.iter() {
        match ensure_ephemeral(&client, &abs(path), data, Some(old_session)).await {
            Ok(()) => debug!(path, "ephemeral node re-registered"),
            Err(err) => {
                // Another live session holds the node (or the new session is
                // already failing): it is not ours any more, and a heartbeat
                // must not overwrite someone else's.
                error!(path, error = %err, "cannot re-register ephemeral node after session expiry");
                lost.push(path.clone());
            }
        }
    }
    for path in lost {
        ephemerals.remove(&path);
    }
    drop(ephemerals);
    inner.generation.send_replace(generation);
    info!(root = %inner.root, session = %client.session_id(), generation, "zookeeper session re-established");
    inner.state.send_replace(SessionState::Connected);
    Some(watcher)
}

/// Creates the ephemeral node `path`, or adopts it if this session already
/// created it (a create whose reply was lost with the connection).
/// `stale_owner` is a previous session of ours whose node may still linger
/// on a server that has not expired it yet; such a node is replaced.
async fn ensure_ephemeral(
    client: &zk::Client,
    path: &str,
    data: &[u8],
    stale_owner: Option<i64>,
) -> Result<(), zk::Error> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match client.create(path, data, &EPHEMERAL).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NoNode) => {
                let (parent, _) = split_parent(path);
                client.mkdir(parent, &PERSISTENT).await?;
            }
            Err(err) if connection_lost(&err) && attempts <= CONNECTION_LOSS_RETRIES => {}
            Err(zk::Error::NodeExists) => {
                let (_, stat) = match client.get_data(path).await {
                    Ok(found) => found,
                    // Gone in between: try again.
                    Err(zk::Error::NoNode) => continue,
                    Err(err) => return Err(err),
                };
                if stat.ephemeral_owner == client.session_id().0 {
                    client.set_data(path, data, None).await?;
                    return Ok(());
                }
                if Some(stat.ephemeral_owner) != stale_owner {
                    return Err(zk::Error::NodeExists);
                }
                debug!(path, "replacing the node left by our expired session");
                match client.delete(path, Some(stat.version)).await {
                    Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {}
                    Err(err) => return Err(err),
                }
            }
            Err(err) => return Err(err),
        }
        if attempts > CONNECTION_LOSS_RETRIES * 2 {
            return Err(zk::Error::ConnectionLoss);
        }
    }
}

/// Whether a request failed because the connection did, so that its
/// outcome is unknown and resending it on the reconnected session is the
/// way on. Requests in flight when a connection breaks fail with whatever
/// broke it (an I/O error, a ping timeout: the client's `Custom` errors),
/// not only with `ConnectionLoss`.
fn connection_lost(err: &zk::Error) -> bool {
    matches!(err, zk::Error::ConnectionLoss | zk::Error::Custom(_))
}

/// The chrooted ZooKeeper path of a registry path.
fn abs(path: &str) -> String {
    format!("/{path}")
}

/// Maps a ZooKeeper error of an operation on the registry path `path`.
fn zk_error(err: zk::Error, path: &str) -> RegistryError {
    let path = path.trim_start_matches('/').to_owned();
    match err {
        zk::Error::NodeExists => RegistryError::NodeExists { path },
        zk::Error::NoNode => RegistryError::NoNode { path },
        zk::Error::SessionExpired => RegistryError::SessionExpired,
        err if connection_lost(&err) => RegistryError::Disconnected,
        zk::Error::ClientClosed => RegistryError::Closed,
        other => RegistryError::Other {
            path,
            message: other.to_string(),
        },
    }
}

impl Inner {
    fn lock_conn(&self) -> MutexGuard<'_, Option<Conn>> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn current(&self) -> Result<Conn, RegistryError> {
        if self.shutdown.is_cancelled() {
            return Err(RegistryError::Closed);
        }
        self.lock_conn().clone().ok_or(RegistryError::Closed)
    }

    /// Waits until an operation that failed on `failed` with the transient
    /// `err` is worth retrying: the connection is back, or a new session
    /// replaced the expired one. Other errors are returned as they are.
    async fn recover(&self, failed: &Conn, err: RegistryError) -> Result<(), RegistryError> {
        match err {
            RegistryError::SessionExpired => {
                let mut generation = self.generation.subscribe();
                tokio::select! {
                    renewed = generation.wait_for(|g| *g > failed.generation) => {
                        renewed.map(|_| ()).map_err(|_| RegistryError::Closed)
                    }
                    _ = self.shutdown.cancelled() => Err(RegistryError::Closed),
                }
            }
            RegistryError::Disconnected => {
                let mut state = self.state.subscribe();
                let state = tokio::select! {
                    state = state.wait_for(|s| matches!(s, SessionState::Connected | SessionState::Closed)) => {
                        state.map(|s| *s).unwrap_or(SessionState::Closed)
                    }
                    _ = self.shutdown.cancelled() => SessionState::Closed,
                };
                match state {
                    SessionState::Connected => Ok(()),
                    _ => Err(RegistryError::Closed),
                }
            }
            other => Err(other),
        }
    }

    /// Waits until shutdown; for `select!` arms.
    async fn closed(&self) -> RegistryError {
        self.shutdown.cancelled().await;
        RegistryError::Closed
    }
}

/// Runs an idempotent operation, resending it when the connection dropped
/// under it.
async fn resend_on_connection_loss<T, F, Fut>(mut op: F) -> Result<T, zk::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, zk::Error>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        match op().await {
            Err(err) if connection_lost(&err) && attempts <= CONNECTION_LOSS_RETRIES => continue,
            result => return result,
        }
    }
}

#[async_trait]
impl Registry for ZkRegistry {
    async fn register(&self, path: &str, data: &[u8]) -> Result<(), RegistryError> {
        validate_path(path)?;
        let mut ephemerals = self.inner.ephemerals.lock().await;
        if ephemerals.contains_key(path) {
            return Err(RegistryError::NodeExists {
                path: path.to_owned(),
            });
        }
        let conn = self.inner.current()?;
        ensure_ephemeral(&conn.client, &abs(path), data, None)
            .await
            .map_err(|err| zk_error(err, path))?;
        ephemerals.insert(path.to_owned(), data.to_vec());
        debug!(path, session = %conn.client.session_id(), "ephemeral node registered");
        Ok(())
    }

    async fn update(&self, path: &str, data: &[u8]) -> Result<(), RegistryError> {
        validate_path(path)?;
        let mut ephemerals = self.inner.ephemerals.lock().await;
        let Some(last) = ephemerals.get_mut(path) else {
            return Err(RegistryError::NoNode {
                path: path.to_owned(),
            });
        };
        let conn = self.inner.current()?;
        let node = abs(path);
        resend_on_connection_loss(|| conn.client.set_data(&node, data, None))
            .await
            .map_err(|err| zk_error(err, path))?;
        *last = data.to_vec();
        Ok(())
    }

    async fn unregister(&self, path: &str) -> Result<(), RegistryError> {
        validate_path(path)?;
        let mut ephemerals = self.inner.ephemerals.lock().await;
        ephemerals.remove(path);
        let conn = self.inner.current()?;
        let node = abs(path);
        match resend_on_connection_loss(|| conn.client.delete(&node, None)).await {
            // An expired session took the node with it.
            Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::SessionExpired) => Ok(()),
            Err(err) => Err(zk_error(err, path)),
        }
    }

    async fn members(&self, dir: &str) -> Result<Vec<Member>, RegistryError> {
        validate_path(dir)?;
        let conn = self.inner.current()?;
        let members = members::list(&conn.client, dir)
            .await
            .map_err(|err| zk_error(err, dir))?;
        Ok(members.into_iter().map(|m| m.member).collect())
    }

    async fn watch_members(&self, dir: &str) -> Result<MembershipWatch, RegistryError> {
        validate_path(dir)?;
        members::watch(self.inner.clone(), dir.to_owned()).await
    }

    async fn lock(&self, name: &str) -> Result<LockGuard, RegistryError> {
        validate_path(name)?;
        match lock::acquire(self.inner.clone(), name, None).await? {
            Some(guard) => Ok(guard),
            None => Err(RegistryError::Closed),
        }
    }

    async fn try_lock(
        &self,
        name: &str,
        wait: Duration,
    ) -> Result<Option<LockGuard>, RegistryError> {
        validate_path(name)?;
        lock::acquire(self.inner.clone(), name, Some(wait)).await
    }

    async fn queue_put(&self, group: &str, key: &str, payload: &[u8]) -> Result<(), RegistryError> {
        validate_name(group)?;
        validate_name(key)?;
        let conn = self.inner.current()?;
        queue::put(&conn.client, group, key, payload).await
    }

    async fn queue_take(&self, group: &str) -> Result<QueueItem, RegistryError> {
        validate_name(group)?;
        match queue::take(&self.inner, group, true).await? {
            Some(item) => Ok(item),
            None => Err(RegistryError::Closed),
        }
    }

    async fn queue_try_take(&self, group: &str) -> Result<Option<QueueItem>, RegistryError> {
        validate_name(group)?;
        queue::take(&self.inner, group, false).await
    }

    async fn queue_remove(&self, group: &str, key: &str) -> Result<bool, RegistryError> {
        validate_name(group)?;
        validate_name(key)?;
        let conn = self.inner.current()?;
        queue::remove(&conn.client, group, key).await
    }

    async fn queue_keys(&self, group: &str) -> Result<Vec<String>, RegistryError> {
        validate_name(group)?;
        let conn = self.inner.current()?;
        let dir = abs(&paths::queue_dir(group));
        match resend_on_connection_loss(|| conn.client.list_children(&dir)).await {
            Ok(mut keys) => {
                keys.sort_unstable();
                Ok(keys)
            }
            Err(zk::Error::NoNode) => Ok(Vec::new()),
            Err(err) => Err(zk_error(err, &dir)),
        }
    }

    async fn signal(&self, name: &str) -> Result<(), RegistryError> {
        validate_path(name)?;
        let conn = self.inner.current()?;
        let node = abs(name);
        // A data change (or the node's creation, the first time) fires the
        // watchers' one-shot exists watches. Persistent watches are avoided
        // on purpose: ZooKeeper 3.8.0 drops one-shot child watches (queue
        // takes, membership) set by a session that also holds a persistent
        // recursive watch on the same path.
        match resend_on_connection_loss(|| conn.client.set_data(&node, &[], None)).await {
            Ok(_) => Ok(()),
            // The first signal creates the node (`mkdir`: no error if a
            // concurrent signal created it first).
            Err(zk::Error::NoNode) => resend_on_connection_loss(|| conn.client.mkdir(&node, &PERSISTENT))
                .await
                .map_err(|err| zk_error(err, name)),
            Err(err) => Err(zk_error(err, name)),
        }
    }

    async fn watch_signal(&self, name: &str) -> Result<SignalWatch, RegistryError> {
        validate_path(name)?;
        let conn = self.inner.current()?;
        let node = abs(name);
        let (_, watcher) = resend_on_connection_loss(|| conn.client.check_and_watch_stat(&node))
            .await
            .map_err(|err| zk_error(err, name))?;
        let name = name.to_owned();
        Ok(SignalWatch::new(async move {
            let event = watcher.changed().await;
            debug!(signal = name, ?event.event_type, "signal watch fired");
        }))
    }

    fn session_state(&self) -> watch::Receiver<SessionState> {
        self.inner.state.subscribe()
    }

    /// The timeout the servers granted the live session (they bound the
    /// requested one by their `minSessionTimeout`/`maxSessionTimeout`).
    fn session_timeout(&self) -> Duration {
        match &*self.inner.lock_conn() {
            Some(conn) => conn.client.session_timeout(),
            None => self.inner.session_timeout,
        }
    }

    async fn close(&self) {
        self.inner.shutdown.cancel();
        let conn = self.inner.lock_conn().take();
        if let Some(conn) = conn {
            let session = conn.client.session_id();
            let mut state = conn.client.state_watcher();
            // The session ends when the last clone of the client goes: the
            // background tasks drop theirs on shutdown.
            drop(conn);
            let ended = async {
                while !state.peek_state().is_terminated() {
                    state.changed().await;
                }
            };
            if tokio::time::timeout(self.inner.session_timeout, ended)
                .await
                .is_err()
            {
                warn!(root = %self.inner.root, %session, "zookeeper session did not close in time");
            } else {
                info!(root = %self.inner.root, %session, "zookeeper registry closed");
            }
        }
        self.inner.state.send_replace(SessionState::Closed);
    }
}
