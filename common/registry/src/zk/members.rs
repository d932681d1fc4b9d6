//! Membership listings and watches over ephemeral children.
//!
//! A watch re-lists the directory each time its one-shot child watch fires.
//! One-shot rather than persistent watches: ZooKeeper 3.8.0 drops a one-shot
//! child watch when a persistent recursive watch is set on the same path in
//! the same session, and the queue relies on one-shot child watches.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};
use zookeeper_client as zk;

use super::{abs, zk_error, Inner, PERSISTENT};
use crate::{Member, MembershipEvent, MembershipWatch, RegistryError};

/// A member and the creation of its node: the same name with a new `czxid`
/// is a member that left and came back.
pub(super) struct Seen {
    pub(super) member: Member,
    czxid: i64,
}

/// The ephemeral children of `dir`, sorted by name.
pub(super) async fn list(client: &zk::Client, dir: &str) -> Result<Vec<Seen>, zk::Error> {
    let node = abs(dir);
    let children = match super::resend_on_connection_loss(|| client.list_children(&node)).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    fetch(client, &node, children).await
}

/// Reads every child's data and stat, in one pipelined round trip.
async fn fetch(
    client: &zk::Client,
    node: &str,
    mut children: Vec<String>,
) -> Result<Vec<Seen>, zk::Error> {
    children.sort_unstable();
    let reads: Vec<_> = children
        .iter()
        .map(|child| client.get_data(&format!("{node}/{child}")))
        .collect();
    let mut seen = Vec::with_capacity(children.len());
    for (name, read) in children.into_iter().zip(reads) {
        match read.await {
            // Persistent children (the group directories under
            // `nodes/workers`) are structure, not members.
            Ok((_, stat)) if stat.ephemeral_owner == 0 => {}
            Ok((data, stat)) => seen.push(Seen {
                member: Member { name, data },
                czxid: stat.czxid,
            }),
            // Left between the listing and the read.
            Err(zk::Error::NoNode) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(seen)
}

pub(super) async fn watch(
    inner: Arc<Inner>,
    dir: String,
) -> Result<MembershipWatch, RegistryError> {
    let (initial_tx, initial_rx) = oneshot::channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    tokio::spawn(follow(inner, dir, initial_tx, events_tx));
    match initial_rx.await {
        Ok(Ok(members)) => Ok(MembershipWatch::new(members, events_rx)),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(RegistryError::Closed),
    }
}

/// Lists `dir` with a child watch, creating `dir` if needed so that the
/// first member to register fires the watch.
async fn list_and_watch(
    client: &zk::Client,
    dir: &str,
) -> Result<(Vec<Seen>, zk::OneshotWatcher), zk::Error> {
    let node = abs(dir);
    loop {
        match client.get_and_watch_children(&node).await {
            Ok((children, _, watcher)) => {
                return Ok((fetch(client, &node, children).await?, watcher))
            }
            Err(zk::Error::NoNode) => client.mkdir(&node, &PERSISTENT).await?,
            Err(err) => return Err(err),
        }
    }
}

async fn follow(
    inner: Arc<Inner>,
    dir: String,
    initial: oneshot::Sender<Result<Vec<Member>, RegistryError>>,
    events: mpsc::UnboundedSender<MembershipEvent>,
) {
    let mut initial = Some(initial);
    let mut known: BTreeMap<String, i64> = BTreeMap::new();
    loop {
        let conn = match inner.current() {
            Ok(conn) => conn,
            Err(err) => {
                if let Some(initial) = initial.take() {
                    let _ = initial.send(Err(err));
                }
                return;
            }
        };
        let listed = tokio::select! {
            listed = list_and_watch(&conn.client, &dir) => listed,
            _ = events.closed() => return,
            _ = inner.shutdown.cancelled() => return,
        };
        let (seen, watcher) = match listed {
            Ok(listed) => listed,
            Err(err) => {
                let err = zk_error(err, &dir);
                if !err.is_transient() {
                    warn!(dir, error = %err, "membership watch failed");
                    if let Some(initial) = initial.take() {
                        let _ = initial.send(Err(err));
                    }
                    return;
                }
                let recovered = tokio::select! {
                    recovered = inner.recover(&conn, err) => recovered,
                    _ = events.closed() => return,
                };
                if recovered.is_err() {
                    return;
                }
                continue;
            }
        };
        let current: BTreeMap<String, i64> = seen
            .iter()
            .map(|s| (s.member.name.clone(), s.czxid))
            .collect();
        if let Some(initial) = initial.take() {
            if initial
                .send(Ok(seen.into_iter().map(|s| s.member).collect()))
                .is_err()
            {
                return;
            }
        } else {
            for (name, czxid) in &known {
                if current.get(name) != Some(czxid) {
                    debug!(dir, member = %name, "member left");
                    let _ = events.send(MembershipEvent::Left(name.clone()));
                }
            }
            for s in seen {
                if known.get(&s.member.name) != Some(&s.czxid) {
                    debug!(dir, member = %s.member.name, "member joined");
                    let _ = events.send(MembershipEvent::Joined(s.member));
                }
            }
        }
        known = current;
        tokio::select! {
            _ = watcher.changed() => {}
            _ = events.closed() => return,
            _ = inner.shutdown.cancelled() => return,
        }
    }
}
