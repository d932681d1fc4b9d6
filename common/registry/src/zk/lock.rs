//! Distributed locks on the client's lock recipe (ephemeral sequential
//! nodes under the lock's path, each contender watching its predecessor).
//!
//! A held lock lives in a task of its own, for two reasons: the recipe's
//! lock borrows the client, which a guard handed to the caller could not;
//! and someone must watch the lock node to tell the holder when the lock is
//! gone (session expired, node deleted behind our back).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};
use zookeeper_client as zk;

use super::{abs, connection_lost, zk_error, Inner, PERSISTENT};
use crate::types::{BoxFuture, ReleaseLock};
use crate::{LockGuard, RegistryError, SessionState};

/// Takes the lock `name`, giving up after `wait` if given (`Ok(None)`).
pub(super) async fn acquire(
    inner: Arc<Inner>,
    name: &str,
    wait: Option<Duration>,
) -> Result<Option<LockGuard>, RegistryError> {
    let (acquired_tx, acquired_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let (lost_tx, lost_rx) = watch::channel(false);
    tokio::spawn(hold(
        inner,
        name.to_owned(),
        acquired_tx,
        release_rx,
        lost_tx,
    ));
    // Dropping `acquired_rx` (timeout, or the caller cancelling) tells the
    // task to stop contending.
    let acquired = match wait {
        None => acquired_rx.await,
        Some(wait) => match tokio::time::timeout(wait, acquired_rx).await {
            Ok(acquired) => acquired,
            Err(_elapsed) => return Ok(None),
        },
    };
    match acquired {
        Ok(Ok(())) => Ok(Some(LockGuard::new(
            name.to_owned(),
            lost_rx,
            Box::new(ZkRelease { release_tx }),
        ))),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(RegistryError::Closed),
    }
}

struct ZkRelease {
    release_tx: oneshot::Sender<oneshot::Sender<()>>,
}

impl ReleaseLock for ZkRelease {
    fn start_release(self: Box<Self>) -> BoxFuture {
        let (done_tx, done_rx) = oneshot::channel();
        // Err: the holding task is gone, and the lock with it.
        let _ = self.release_tx.send(done_tx);
        Box::pin(async move {
            let _ = done_rx.await;
        })
    }
}

enum Contended<T> {
    Done(T),
    Abandoned,
    Shutdown,
}

enum Held {
    Released(Option<oneshot::Sender<()>>),
    Lost(&'static str),
    Shutdown,
}

async fn hold(
    inner: Arc<Inner>,
    name: String,
    mut acquired: oneshot::Sender<Result<(), RegistryError>>,
    mut release: oneshot::Receiver<oneshot::Sender<()>>,
    lost: watch::Sender<bool>,
) {
    let dir = abs(&name);
    loop {
        let conn = match inner.current() {
            Ok(conn) => conn,
            Err(err) => {
                let _ = acquired.send(Err(err));
                return;
            }
        };
        let client = &conn.client;
        let contended = {
            let prefix = match zk::LockPrefix::new_curator(&dir, "lock-") {
                Ok(prefix) => prefix,
                Err(err) => {
                    let _ = acquired.send(Err(zk_error(err, &name)));
                    return;
                }
            };
            let options = match zk::LockOptions::new(zk::Acls::anyone_all())
                .with_ancestor_options(PERSISTENT)
            {
                Ok(options) => options,
                Err(err) => {
                    let _ = acquired.send(Err(zk_error(err, &name)));
                    return;
                }
            };
            // The recipe is cancel-safe: dropping it mid-way removes our
            // contender node.
            tokio::select! {
                locked = client.lock(prefix, b"", options) => Contended::Done(locked),
                _ = acquired.closed() => Contended::Abandoned,
                _ = inner.shutdown.cancelled() => Contended::Shutdown,
            }
        };
        let lock = match contended {
            Contended::Done(Ok(lock)) => lock,
            Contended::Done(Err(err)) => {
                let err = zk_error(err, &name);
                if err.is_transient() {
                    debug!(lock = %name, error = %err, "lock contention interrupted, retrying");
                    let recovered = tokio::select! {
                        recovered = inner.recover(&conn, err) => recovered,
                        _ = acquired.closed() => return,
                    };
                    match recovered {
                        Ok(()) => continue,
                        Err(err) => {
                            let _ = acquired.send(Err(err));
                            return;
                        }
                    }
                }
                let _ = acquired.send(Err(err));
                return;
            }
            Contended::Abandoned => return,
            Contended::Shutdown => {
                let _ = acquired.send(Err(RegistryError::Closed));
                return;
            }
        };
        let path = lock.lock_path().to_owned();
        if acquired.send(Ok(())).is_err() {
            // The caller stopped waiting just as we got it; dropping the
            // lock deletes its node.
            return;
        }
        debug!(lock = %name, node = %path, "lock acquired");
        let cut_off = cut_off_too_long(&inner, client.session_timeout() / 3);
        tokio::pin!(cut_off);
        let held = loop {
            let watched = tokio::select! {
                watched = client.get_and_watch_data(&path) => watched,
                done = &mut release => break Held::Released(done.ok()),
                _ = &mut cut_off => break Held::Lost("disconnected too long"),
                _ = inner.shutdown.cancelled() => break Held::Shutdown,
            };
            let watcher = match watched {
                Ok((_, _, watcher)) => watcher,
                Err(zk::Error::NoNode) => break Held::Lost("lock node deleted"),
                Err(zk::Error::SessionExpired) => break Held::Lost("session expired"),
                Err(zk::Error::ClientClosed) => break Held::Shutdown,
                // A blip: the watch is set again once reconnected.
                Err(err) if connection_lost(&err) => continue,
                Err(err) => {
                    warn!(lock = %name, error = %err, "cannot watch the lock node; treating the lock as lost");
                    break Held::Lost("lock node unwatchable");
                }
            };
            tokio::select! {
                done = &mut release => break Held::Released(done.ok()),
                event = watcher.changed() => match (event.event_type, event.session_state) {
                    (zk::EventType::NodeDataChanged, _) => continue,
                    (zk::EventType::NodeDeleted, _) => break Held::Lost("lock node deleted"),
                    (_, zk::SessionState::Closed) => break Held::Shutdown,
                    _ => break Held::Lost("session expired"),
                },
                _ = &mut cut_off => break Held::Lost("disconnected too long"),
                _ = inner.shutdown.cancelled() => break Held::Shutdown,
            }
        };
        match held {
            Held::Released(done) => {
                match client.delete(&path, None).await {
                    Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::SessionExpired) => {
                        debug!(lock = %name, "lock released")
                    }
                    // The recipe's own drop retries the delete in the background.
                    Err(err) => {
                        warn!(lock = %name, error = %err, "cannot delete the lock node on release")
                    }
                }
                drop(lock);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Held::Lost(why) => {
                warn!(lock = %name, reason = why, "lock lost");
                lost.send_replace(true);
            }
            Held::Shutdown => {
                lost.send_replace(true);
            }
        }
        return;
    }
}

/// Resolves once the session has been out of touch with ZooKeeper for
/// `grace` at a stretch.
///
/// The servers expire a silent session after its timeout, but the client
/// only concludes so itself well after that (and a partitioned client
/// cannot be told), so another master may hold the lock in between. The
/// client notices a dead connection within 2/5 of the timeout; giving up
/// the lock 1/3 of the timeout later still comes before the servers can
/// hand it to anyone else.
async fn cut_off_too_long(inner: &Inner, grace: Duration) {
    let mut state = inner.state.subscribe();
    loop {
        if state
            .wait_for(|s| *s != SessionState::Connected)
            .await
            .is_err()
        {
            return std::future::pending().await;
        }
        let reconnected =
            tokio::time::timeout(grace, state.wait_for(|s| *s == SessionState::Connected))
                .await
                .map(|connected| connected.is_ok());
        match reconnected {
            Ok(true) => continue,
            // The registry is gone; shutdown handles that.
            Ok(false) => return std::future::pending().await,
            Err(_elapsed) => return,
        }
    }
}
