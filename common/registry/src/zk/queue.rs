//! The ready-task queue: one persistent node per task under
//! `queue/<group>`, claimed by deleting it.
//!
//! Listing 10,000 children for every take would make the queue the
//! bottleneck, so a taker keeps the sorted listing and works down it. The
//! listing stays usable as long as no child was *created* since: deletes by
//! competing takers only make some cached keys fail to claim. The parent's
//! stat tells creates from deletes in one small round trip: every create
//! and every delete bumps `cversion` by one, while `numChildren` goes up on
//! a create and down on a delete, so `Δcversion + ΔnumChildren = 2 ×
//! creates`.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::{debug, error, warn};
use zookeeper_client as zk;

use super::{abs, resend_on_connection_loss, zk_error, Conn, Inner, PERSISTENT};
use crate::{paths, QueueItem, RegistryError};

/// A group's sorted keys as of the last listing, and the parent's stat
/// from that same listing.
#[derive(Default)]
pub(crate) struct QueueCache {
    keys: VecDeque<String>,
    cversion: i32,
    num_children: i32,
}

impl QueueCache {
    fn fill(&mut self, mut children: Vec<String>, stat: &zk::Stat) {
        children.sort_unstable();
        self.keys = children.into();
        self.cversion = stat.cversion;
        self.num_children = stat.num_children;
    }

    fn is_stale(&self, stat: &zk::Stat) -> bool {
        self.missed_creates(stat.cversion, stat.num_children)
    }

    /// Whether some key may have been queued since the listing, in which
    /// case it might sort before the cached ones.
    fn missed_creates(&self, cversion: i32, num_children: i32) -> bool {
        let changes = i64::from(cversion.wrapping_sub(self.cversion));
        let growth = i64::from(num_children) - i64::from(self.num_children);
        changes + growth != 0
    }
}

enum Attempt {
    Taken(QueueItem),
    /// Nothing queued; the watcher, when asked for, fires on the next put.
    Empty(Option<zk::OneshotWatcher>),
}

pub(super) async fn put(
    client: &zk::Client,
    group: &str,
    key: &str,
    payload: &[u8],
) -> Result<(), RegistryError> {
    let path = paths::queue_node(group, key);
    let node = abs(&path);
    let mut resent = false;
    for _ in 0..=super::CONNECTION_LOSS_RETRIES {
        match client.create(&node, payload, &PERSISTENT).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NoNode) => {
                let dir = abs(&paths::queue_dir(group));
                resend_on_connection_loss(|| client.mkdir(&dir, &PERSISTENT))
                    .await
                    .map_err(|err| zk_error(err, &dir))?;
            }
            Err(err) if super::connection_lost(&err) => resent = true,
            Err(zk::Error::NodeExists) if resent => {
                // The create that lost its reply may have gone through: the
                // same payload means it is ours.
                return match client.get_data(&node).await {
                    Ok((data, _)) if data == payload => Ok(()),
                    Ok(_) => Err(RegistryError::NodeExists { path }),
                    Err(err) => Err(zk_error(err, &path)),
                };
            }
            Err(err) => return Err(zk_error(err, &path)),
        }
    }
    Err(RegistryError::Disconnected)
}

pub(super) async fn remove(
    client: &zk::Client,
    group: &str,
    key: &str,
) -> Result<bool, RegistryError> {
    let path = paths::queue_node(group, key);
    let node = abs(&path);
    let mut resent = false;
    loop {
        match client.delete(&node, None).await {
            Ok(()) => return Ok(true),
            Err(zk::Error::NoNode) => {
                if resent {
                    // Our lost delete or a worker's claim: saying "not
                    // withdrawn" makes the master look for it on the
                    // workers rather than assume it will never run.
                    warn!(
                        path,
                        "queue entry gone after a lost delete; reporting it as taken"
                    );
                }
                return Ok(false);
            }
            Err(err) if super::connection_lost(&err) && !resent => resent = true,
            Err(err) => return Err(zk_error(err, &path)),
        }
    }
}

/// Takes the lowest key; with `wait`, waits for one instead of returning
/// `None`.
pub(super) async fn take(
    inner: &Arc<Inner>,
    group: &str,
    wait: bool,
) -> Result<Option<QueueItem>, RegistryError> {
    let cache = inner.queue_cache(group);
    let dir = paths::queue_dir(group);
    let mut connection_losses = 0;
    loop {
        let conn = inner.current()?;
        let attempt = {
            let mut cache = tokio::select! {
                cache = cache.lock() => cache,
                err = inner.closed() => return Err(err),
            };
            tokio::select! {
                attempt = take_once(&conn, &mut cache, group, wait) => attempt,
                err = inner.closed() => return Err(err),
            }
        };
        match attempt {
            Ok(Attempt::Taken(item)) => return Ok(Some(item)),
            Ok(Attempt::Empty(None)) => return Ok(None),
            Ok(Attempt::Empty(Some(watcher))) => {
                tokio::select! {
                    event = watcher.changed() => debug!(group, ?event.event_type, "queue changed"),
                    err = inner.closed() => return Err(err),
                }
            }
            Err(err) => {
                let err = zk_error(err, &dir);
                if !wait {
                    connection_losses += 1;
                    if err != RegistryError::Disconnected
                        || connection_losses > super::CONNECTION_LOSS_RETRIES
                    {
                        return Err(err);
                    }
                }
                inner.recover(&conn, err).await?;
            }
        }
    }
}

async fn take_once(
    conn: &Conn,
    cache: &mut QueueCache,
    group: &str,
    watch: bool,
) -> Result<Attempt, zk::Error> {
    let client = &conn.client;
    let dir = abs(&paths::queue_dir(group));
    loop {
        if !cache.keys.is_empty() {
            match client.check_stat(&dir).await? {
                Some(stat) if !cache.is_stale(&stat) => {}
                _ => cache.keys.clear(),
            }
        }
        if cache.keys.is_empty() {
            match client.get_children(&dir).await {
                Ok((children, stat)) if !children.is_empty() => cache.fill(children, &stat),
                Ok(_) | Err(zk::Error::NoNode) if !watch => return Ok(Attempt::Empty(None)),
                Ok(_) => {
                    // Arm the watch with a second look, so a put between
                    // the two looks is either seen or fires the watch.
                    match client.get_and_watch_children(&dir).await {
                        Ok((children, _, watcher)) if children.is_empty() => {
                            return Ok(Attempt::Empty(Some(watcher)));
                        }
                        Ok((children, stat, _)) => cache.fill(children, &stat),
                        Err(zk::Error::NoNode) => continue,
                        Err(err) => return Err(err),
                    }
                }
                Err(zk::Error::NoNode) => {
                    // Watch the children of a queue nobody has put to yet.
                    client.mkdir(&dir, &PERSISTENT).await?;
                    continue;
                }
                Err(err) => return Err(err),
            }
        }
        while let Some(key) = cache.keys.pop_front() {
            let node = format!("{dir}/{key}");
            if let Some(payload) = claim(client, node).await? {
                return Ok(Attempt::Taken(QueueItem { key, payload }));
            }
        }
    }
}

/// Deletes `node`, returning its payload if this delete is the one that
/// removed it (`None`: a competing taker was first).
///
/// The read and the delete go out back to back on the session, which the
/// server runs in order, so the claim costs one round trip. It runs in its
/// own task so that a caller giving up half-way (a worker shutting down)
/// cannot lose a claimed entry: whichever side finds the payload undelivered
/// puts the entry back.
async fn claim(client: &zk::Client, node: String) -> Result<Option<Vec<u8>>, zk::Error> {
    let (tx, rx) = oneshot::channel();
    let task_client = client.clone();
    let task_node = node.clone();
    tokio::spawn(async move {
        let (client, node) = (task_client, task_node);
        let read = client.get_data(&node);
        let delete = client.delete(&node, None);
        let (read, delete) = (read.await, delete.await);
        let outcome = match (delete, read) {
            (Ok(()), Ok((payload, _))) => Ok(Some(payload)),
            (Ok(()), Err(err)) => {
                // Re-queued between our read and our delete: we own it but
                // never saw its payload.
                error!(node, error = %err, "claimed a queue entry whose payload could not be read");
                Err(zk::Error::UnexpectedError(format!(
                    "payload of claimed queue entry {node} unreadable: {err}"
                )))
            }
            (Err(zk::Error::NoNode), _) => Ok(None),
            (Err(err), _) if super::connection_lost(&err) => {
                // The delete may or may not have happened; nobody can tell
                // whether this taker or a competitor removed the entry.
                warn!(
                    node,
                    "connection lost while claiming a queue entry; its outcome is unknown"
                );
                Err(zk::Error::ConnectionLoss)
            }
            (Err(err), _) => Err(err),
        };
        if let Err(Ok(Some(payload))) = tx.send(outcome) {
            put_back(&client, &node, &payload).await;
        }
    });
    let mut pending = PendingClaim {
        rx,
        client: client.clone(),
        node,
        delivered: false,
    };
    let outcome = (&mut pending.rx).await;
    pending.delivered = true;
    outcome.unwrap_or(Err(zk::Error::ClientClosed))
}

/// The taker's end of a claim. A claim task may hand over the payload just
/// as the taker gives up; dropping this end then puts the entry back.
struct PendingClaim {
    rx: oneshot::Receiver<Result<Option<Vec<u8>>, zk::Error>>,
    client: zk::Client,
    node: String,
    delivered: bool,
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        if self.delivered {
            return;
        }
        // After `close`, the claim task either fails to send (and puts the
        // entry back itself) or has sent, and the payload is here.
        self.rx.close();
        if let Ok(Ok(Some(payload))) = self.rx.try_recv() {
            let (client, node) = (self.client.clone(), std::mem::take(&mut self.node));
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move { put_back(&client, &node, &payload).await });
                }
                Err(_) => error!(
                    node,
                    "queue entry claimed by a cancelled take is lost: no runtime to put it back"
                ),
            }
        }
    }
}

async fn put_back(client: &zk::Client, node: &str, payload: &[u8]) {
    match client.create(node, payload, &PERSISTENT).await {
        Ok(_) => debug!(node, "queue entry put back after its taker gave up"),
        Err(err) => error!(node, error = %err, "cannot put back a queue entry whose taker gave up"),
    }
}

impl Inner {
    fn queue_cache(&self, group: &str) -> Arc<tokio::sync::Mutex<QueueCache>> {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        queues.entry(group.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(keys: &[&str], cversion: i32, num_children: i32) -> QueueCache {
        let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        keys.sort_unstable();
        QueueCache {
            keys: keys.into(),
            cversion,
            num_children,
        }
    }

    #[test]
    fn deletes_keep_the_listing_usable_but_creates_do_not() {
        let cache = cache(&["b", "a", "c"], 10, 3);
        assert_eq!(cache.keys, ["a", "b", "c"]);
        assert!(!cache.missed_creates(10, 3));
        // two deletes
        assert!(!cache.missed_creates(12, 1));
        // one create
        assert!(cache.missed_creates(11, 4));
        // a delete and a create
        assert!(cache.missed_creates(12, 3));
    }

    #[test]
    fn survives_cversion_wrap_around() {
        let cache = cache(&["a"], i32::MAX, 1);
        assert!(!cache.missed_creates(i32::MIN, 0));
        assert!(cache.missed_creates(i32::MIN, 2));
    }
}
