//! The registry contract: one suite, run against the embedded registry and
//! against ZooKeeper (the server `scripts/test.sh` starts; the ZooKeeper
//! half fails, never skips, without it).
//!
//! Tests wait on events (a take returning, a watch firing), each bounded by
//! a timeout; none sleeps to let state settle.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_registry::{
    paths, EmbeddedRegistry, Member, MembershipEvent, Registry, RegistryError, SessionState,
    ZkRegistry,
};
use tokio_util::sync::CancellationToken;

/// Long enough for a loaded machine, short enough to fail a hung test.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Somewhere sessions of one test meet: one embedded hub, or one
/// ZooKeeper root.
#[async_trait]
trait Cluster: Send + Sync + 'static {
    async fn session(&self) -> Arc<dyn Registry>;
}

struct Embedded(EmbeddedRegistry);

impl Embedded {
    fn new() -> Self {
        Embedded(EmbeddedRegistry::new())
    }
}

#[async_trait]
impl Cluster for Embedded {
    async fn session(&self) -> Arc<dyn Registry> {
        Arc::new(self.0.session())
    }
}

struct ZooKeeper {
    servers: String,
    root: String,
}

impl ZooKeeper {
    fn new() -> Self {
        ZooKeeper {
            servers: sluice_testkit::zookeeper::zookeeper_address(),
            root: sluice_testkit::zookeeper::unique_root("contract"),
        }
    }
}

#[async_trait]
impl Cluster for ZooKeeper {
    async fn session(&self) -> Arc<dyn Registry> {
        let registry = ZkRegistry::connect(&self.servers, &self.root, Duration::from_secs(4))
            .await
            .unwrap_or_else(|err| panic!("connect to zookeeper at {}: {err}", self.servers));
        Arc::new(registry)
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(EVENT_TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {EVENT_TIMEOUT:?} waiting for {what}"),
    }
}

fn member(name: &str, data: &[u8]) -> Member {
    Member {
        name: name.to_owned(),
        data: data.to_vec(),
    }
}

/// A key shaped like the domain's `QueueKey`.
fn queue_key(
    workflow_priority: u8,
    workflow_instance: i64,
    task_priority: u8,
    task_instance: i64,
) -> String {
    format!("{workflow_priority}_{workflow_instance:019}_{task_priority}_{task_instance:019}")
}

mod suite {
    use super::*;

    pub async fn ephemeral_node_carries_heartbeat(cluster: &impl Cluster) {
        let master = cluster.session().await;
        let observer = cluster.session().await;
        let node = paths::master_node("10.0.0.1:5678");

        master.register(&node, b"{\"load\":1}").await.unwrap();
        assert_eq!(
            observer.members(&paths::masters_dir()).await.unwrap(),
            [member("10.0.0.1:5678", b"{\"load\":1}")]
        );

        master.update(&node, b"{\"load\":2}").await.unwrap();
        assert_eq!(
            observer.members(&paths::masters_dir()).await.unwrap(),
            [member("10.0.0.1:5678", b"{\"load\":2}")]
        );
        // Only the registering session keeps the heartbeat going.
        assert_eq!(
            observer.update(&node, b"{\"load\":9}").await,
            Err(RegistryError::NoNode { path: node.clone() })
        );

        master.unregister(&node).await.unwrap();
        assert!(observer
            .members(&paths::masters_dir())
            .await
            .unwrap()
            .is_empty());
        // Unregistering twice is harmless; updating a node one does not hold is not.
        master.unregister(&node).await.unwrap();
        assert_eq!(
            master.update(&node, b"x").await,
            Err(RegistryError::NoNode { path: node.clone() })
        );
        assert!(observer
            .members("nodes/nobody-registered-here")
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn members_are_sorted_and_exclude_subdirectories(cluster: &impl Cluster) {
        let a = cluster.session().await;
        let b = cluster.session().await;
        b.register(&paths::worker_node("default", "10.0.0.3:1234"), b"3")
            .await
            .unwrap();
        a.register(&paths::worker_node("default", "10.0.0.2:1234"), b"2")
            .await
            .unwrap();
        a.register(&paths::worker_node("gpu", "10.0.0.9:1234"), b"9")
            .await
            .unwrap();
        assert_eq!(
            b.members(&paths::workers_dir("default")).await.unwrap(),
            [member("10.0.0.2:1234", b"2"), member("10.0.0.3:1234", b"3")]
        );
        assert_eq!(
            b.members(&paths::workers_dir("gpu")).await.unwrap(),
            [member("10.0.0.9:1234", b"9")]
        );
        // Group directories are structure, not members.
        assert!(b.members(&paths::workers_root()).await.unwrap().is_empty());
    }

    pub async fn second_registration_of_a_live_path_fails(cluster: &impl Cluster) {
        let first = cluster.session().await;
        let second = cluster.session().await;
        let node = paths::master_node("10.0.0.1:5678");

        first.register(&node, b"first").await.unwrap();
        assert_eq!(
            second.register(&node, b"second").await,
            Err(RegistryError::NodeExists { path: node.clone() })
        );
        assert_eq!(
            first.register(&node, b"again").await,
            Err(RegistryError::NodeExists { path: node.clone() })
        );

        first.close().await;
        second.register(&node, b"second").await.unwrap();
        assert_eq!(
            second.members(&paths::masters_dir()).await.unwrap(),
            [member("10.0.0.1:5678", b"second")]
        );
    }

    pub async fn membership_watch_sees_joins_and_leaves(cluster: &impl Cluster) {
        let watcher = cluster.session().await;
        let old = cluster.session().await;
        let new = cluster.session().await;
        let dir = paths::workers_dir("default");
        old.register(&paths::worker_node("default", "w1"), b"one")
            .await
            .unwrap();

        let mut watch = watcher.watch_members(&dir).await.unwrap();
        assert_eq!(watch.members(), [member("w1", b"one")]);

        new.register(&paths::worker_node("default", "w2"), b"two")
            .await
            .unwrap();
        assert_eq!(
            within("join", watch.next()).await,
            Some(MembershipEvent::Joined(member("w2", b"two")))
        );

        old.unregister(&paths::worker_node("default", "w1"))
            .await
            .unwrap();
        assert_eq!(
            within("unregister", watch.next()).await,
            Some(MembershipEvent::Left("w1".into()))
        );

        // A session that ends takes its nodes with it.
        new.close().await;
        assert_eq!(
            within("session close", watch.next()).await,
            Some(MembershipEvent::Left("w2".into()))
        );

        // Other directories do not leak into the watch.
        old.register(&paths::worker_node("gpu", "w3"), b"three")
            .await
            .unwrap();
        old.register(&paths::worker_node("default", "w4"), b"four")
            .await
            .unwrap();
        assert_eq!(
            within("join", watch.next()).await,
            Some(MembershipEvent::Joined(member("w4", b"four")))
        );
    }

    pub async fn membership_watch_ends_when_its_session_closes(cluster: &impl Cluster) {
        let watcher = cluster.session().await;
        let mut watch = watcher.watch_members(&paths::masters_dir()).await.unwrap();
        assert!(watch.members().is_empty());
        watcher.close().await;
        assert_eq!(within("end of watch", watch.next()).await, None);
    }

    pub async fn lock_is_mutually_exclusive(cluster: &impl Cluster) {
        let a = cluster.session().await;
        let b = cluster.session().await;
        let name = paths::command_scan_lock();

        let guard = a.lock(&name).await.unwrap();
        assert_eq!(guard.name(), name);
        assert!(!guard.is_lost());
        assert!(b
            .try_lock(&name, Duration::from_millis(300))
            .await
            .unwrap()
            .is_none());
        // Same session, second contender: still exclusive.
        assert!(a
            .try_lock(&name, Duration::from_millis(300))
            .await
            .unwrap()
            .is_none());
        // Another lock is independent.
        let other = b
            .try_lock(&paths::cron_lock(), EVENT_TIMEOUT)
            .await
            .unwrap()
            .expect("cron lock is free");

        guard.release().await;
        let guard = b
            .try_lock(&name, EVENT_TIMEOUT)
            .await
            .unwrap()
            .expect("released lock is free");
        assert!(a
            .try_lock(&name, Duration::from_millis(300))
            .await
            .unwrap()
            .is_none());
        drop(guard);
        // Dropping a guard releases too.
        let guard = within("lock after drop", a.lock(&name)).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(100), guard.lost())
                .await
                .is_err(),
            "held lock reported lost"
        );
        drop(other);
    }

    pub async fn waiting_lock_is_granted_on_release(cluster: &impl Cluster) {
        let a = cluster.session().await;
        let b = cluster.session().await;
        let name = paths::failover_lock("10.0.0.7");
        let guard = a.lock(&name).await.unwrap();
        let waiter = tokio::spawn(async move {
            b.lock(&paths::failover_lock("10.0.0.7"))
                .await
                .map(|g| (g, b))
        });
        guard.release().await;
        let (guard, _b) = within("waiting lock", waiter).await.unwrap().unwrap();
        assert!(!guard.is_lost());
    }

    pub async fn lock_of_a_closed_session_is_freed_and_reported_lost(cluster: &impl Cluster) {
        let a = cluster.session().await;
        let b = cluster.session().await;
        let name = paths::cron_lock();
        let guard = a.lock(&name).await.unwrap();
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.lock(&paths::cron_lock()).await }
        });

        a.close().await;
        within("loss of the closed session's lock", guard.lost()).await;
        assert!(guard.is_lost());
        let taken = within("lock freed by the closed session", waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(!taken.is_lost());
        assert_eq!(a.lock(&name).await.err(), Some(RegistryError::Closed));
    }

    pub async fn queue_takes_keys_in_lexicographic_order(cluster: &impl Cluster) {
        let master = cluster.session().await;
        let worker = cluster.session().await;
        let mut keys = vec![
            queue_key(2, 42, 1, 1234),
            queue_key(0, 99, 2, 7),
            queue_key(2, 42, 0, 1300),
            queue_key(1, 5, 2, 10),
            queue_key(2, 41, 2, 2000),
            queue_key(0, 99, 2, 6),
            queue_key(4, 1, 0, 1),
            queue_key(1, 5, 2, 9),
        ];
        sluice_testkit::seed::rng("queue_takes_keys_in_lexicographic_order").shuffle(&mut keys);
        for key in &keys {
            master
                .queue_put("default", key, format!("payload of {key}").as_bytes())
                .await
                .unwrap();
        }
        keys.sort();
        assert_eq!(master.queue_keys("default").await.unwrap(), keys);
        for key in &keys {
            let item = worker.queue_take("default").await.unwrap();
            assert_eq!(&item.key, key);
            assert_eq!(item.payload, format!("payload of {key}").into_bytes());
        }
        assert_eq!(worker.queue_try_take("default").await.unwrap(), None);
        assert!(master.queue_keys("default").await.unwrap().is_empty());
    }

    pub async fn newly_put_higher_priority_key_is_taken_first(cluster: &impl Cluster) {
        let master = cluster.session().await;
        let worker = cluster.session().await;
        for task in [10, 11, 12, 13] {
            master
                .queue_put("default", &queue_key(2, 1, 2, task), b"")
                .await
                .unwrap();
        }
        assert_eq!(
            worker.queue_take("default").await.unwrap().key,
            queue_key(2, 1, 2, 10)
        );
        // The taker has seen the queue; a more urgent task arrives.
        master
            .queue_put("default", &queue_key(0, 2, 2, 20), b"urgent")
            .await
            .unwrap();
        let item = worker.queue_take("default").await.unwrap();
        assert_eq!(
            (item.key, item.payload),
            (queue_key(0, 2, 2, 20), b"urgent".to_vec())
        );
        // A lower one arriving later waits its turn, even with a removal in between.
        master
            .queue_put("default", &queue_key(3, 3, 2, 30), b"")
            .await
            .unwrap();
        assert!(master
            .queue_remove("default", &queue_key(2, 1, 2, 12))
            .await
            .unwrap());
        assert_eq!(
            worker.queue_take("default").await.unwrap().key,
            queue_key(2, 1, 2, 11)
        );
        assert_eq!(
            worker.queue_take("default").await.unwrap().key,
            queue_key(2, 1, 2, 13)
        );
        assert_eq!(
            worker.queue_take("default").await.unwrap().key,
            queue_key(3, 3, 2, 30)
        );
        assert_eq!(worker.queue_try_take("default").await.unwrap(), None);
    }

    pub async fn every_item_is_taken_exactly_once_by_competing_takers(cluster: &impl Cluster) {
        const ITEMS: i64 = 200;
        const TAKERS: usize = 4;
        let master = cluster.session().await;
        let stop = CancellationToken::new();
        let (taken_tx, mut taken_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut takers = Vec::new();
        for taker in 0..TAKERS {
            let session = cluster.session().await;
            let stop = stop.clone();
            let taken = taken_tx.clone();
            takers.push(tokio::spawn(async move {
                loop {
                    let item = tokio::select! {
                        item = session.queue_take("default") => item.expect("take"),
                        _ = stop.cancelled() => break,
                    };
                    let _ = taken.send((taker, item));
                }
                session.close().await;
            }));
        }
        drop(taken_tx);

        let mut keys: Vec<String> = (0..ITEMS)
            .map(|task| queue_key((task % 5) as u8, task / 7, 2, task))
            .collect();
        sluice_testkit::seed::rng("every_item_is_taken_exactly_once_by_competing_takers").shuffle(&mut keys);
        // Takers start on an empty queue, so most takes wait for a put.
        for key in &keys {
            master
                .queue_put("default", key, key.as_bytes())
                .await
                .unwrap();
        }

        let mut seen = BTreeSet::new();
        let mut per_taker = [0usize; TAKERS];
        while seen.len() < ITEMS as usize {
            let (taker, item) = within("competing takes", taken_rx.recv())
                .await
                .expect("takers alive");
            assert_eq!(item.payload, item.key.as_bytes());
            assert!(seen.insert(item.key.clone()), "{} taken twice", item.key);
            per_taker[taker] += 1;
        }
        stop.cancel();
        for taker in takers {
            within("taker shutdown", taker).await.unwrap();
        }
        assert!(taken_rx.recv().await.is_none(), "an item was taken twice");
        assert_eq!(seen, keys.iter().cloned().collect::<BTreeSet<_>>());
        assert!(master.queue_keys("default").await.unwrap().is_empty());
        eprintln!("items per taker: {per_taker:?}");
    }

    pub async fn take_on_empty_queue_wakes_on_put(cluster: &impl Cluster) {
        let master = cluster.session().await;
        let worker = cluster.session().await;
        let waiting = tokio::spawn({
            let worker = worker.clone();
            async move { worker.queue_take("default").await }
        });
        assert_eq!(worker.queue_try_take("default").await.unwrap(), None);
        master
            .queue_put("default", &queue_key(2, 1, 2, 1), b"hello")
            .await
            .unwrap();
        let item = within("take woken by a put", waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (item.key, item.payload),
            (queue_key(2, 1, 2, 1), b"hello".to_vec())
        );
    }

    pub async fn waiting_take_ends_when_its_session_closes(cluster: &impl Cluster) {
        let worker = cluster.session().await;
        let waiting = tokio::spawn({
            let worker = worker.clone();
            async move { worker.queue_take("default").await }
        });
        worker.close().await;
        assert_eq!(
            within("take ended by close", waiting).await.unwrap(),
            Err(RegistryError::Closed)
        );
    }

    pub async fn cancelled_takes_lose_nothing(cluster: &impl Cluster) {
        const ITEMS: usize = 60;
        let master = cluster.session().await;
        let worker = cluster.session().await;
        for task in 0..ITEMS as i64 {
            master
                .queue_put("default", &queue_key(2, 1, 2, task), b"")
                .await
                .unwrap();
        }
        let mut seen = BTreeSet::new();
        // Give up on takes at random points, some of them mid-claim.
        let mut rng = sluice_testkit::seed::rng("cancelled_takes_lose_nothing");
        for _ in 0..ITEMS {
            let patience = Duration::from_micros(rng.u64(0..3000));
            if let Ok(item) = tokio::time::timeout(patience, worker.queue_take("default")).await {
                assert!(seen.insert(item.unwrap().key), "taken twice");
            }
        }
        while seen.len() < ITEMS {
            let item = within("remaining items", worker.queue_take("default"))
                .await
                .unwrap();
            assert!(seen.insert(item.key), "taken twice");
        }
        assert_eq!(worker.queue_try_take("default").await.unwrap(), None);
    }

    pub async fn queue_remove_withdraws_a_task(cluster: &impl Cluster) {
        let master = cluster.session().await;
        let worker = cluster.session().await;
        let (first, second) = (queue_key(1, 1, 2, 1), queue_key(1, 1, 2, 2));
        master.queue_put("default", &first, b"1").await.unwrap();
        master.queue_put("default", &second, b"2").await.unwrap();
        assert!(master.queue_remove("default", &first).await.unwrap());
        assert!(!master.queue_remove("default", &first).await.unwrap());
        assert!(!master.queue_remove("never-used", &first).await.unwrap());
        assert_eq!(
            master.queue_keys("default").await.unwrap(),
            [second.as_str()]
        );
        assert_eq!(worker.queue_take("default").await.unwrap().key, second);
        assert!(
            !master.queue_remove("default", &second).await.unwrap(),
            "a taken task cannot be withdrawn"
        );
    }

    pub async fn queue_put_of_a_queued_key_fails(cluster: &impl Cluster) {
        let master = cluster.session().await;
        let key = queue_key(1, 1, 2, 1);
        master.queue_put("default", &key, b"first").await.unwrap();
        assert_eq!(
            master.queue_put("default", &key, b"second").await,
            Err(RegistryError::NodeExists {
                path: paths::queue_node("default", &key)
            })
        );
        assert_eq!(
            master.queue_take("default").await.unwrap().payload,
            b"first"
        );
        // Once taken, the key may be queued again (a retry).
        master.queue_put("default", &key, b"retry").await.unwrap();
        assert_eq!(
            master.queue_take("default").await.unwrap().payload,
            b"retry"
        );
    }

    pub async fn queue_groups_are_separate(cluster: &impl Cluster) {
        let master = cluster.session().await;
        let worker = cluster.session().await;
        master
            .queue_put("default", &queue_key(2, 1, 2, 1), b"d")
            .await
            .unwrap();
        master
            .queue_put("gpu", &queue_key(2, 1, 2, 2), b"g")
            .await
            .unwrap();
        assert_eq!(
            master.queue_keys("default").await.unwrap(),
            [queue_key(2, 1, 2, 1)]
        );
        assert_eq!(
            master.queue_keys("gpu").await.unwrap(),
            [queue_key(2, 1, 2, 2)]
        );
        assert!(master.queue_keys("empty").await.unwrap().is_empty());
        assert_eq!(worker.queue_take("gpu").await.unwrap().payload, b"g");
        assert_eq!(worker.queue_try_take("gpu").await.unwrap(), None);
        assert_eq!(worker.queue_try_take("empty").await.unwrap(), None);
        assert_eq!(worker.queue_take("default").await.unwrap().payload, b"d");
    }

    pub async fn signal_wakes_watchers_of_other_sessions_once(cluster: &impl Cluster) {
        let api = cluster.session().await;
        let master_a = cluster.session().await;
        let master_b = cluster.session().await;
        let name = paths::commands_signal();
        // The first signal ever (nothing to change yet) wakes too.
        let a = master_a.watch_signal(&name).await.unwrap();
        let b = master_b.watch_signal(&name).await.unwrap();
        api.signal(&name).await.unwrap();
        within("first signal at the first watcher", a).await;
        within("first signal at the second watcher", b).await;
        // Watches are one-shot; a new one waits for the next signal, which
        // its own session may send too.
        let again = master_a.watch_signal(&name).await.unwrap();
        let other = master_a.watch_signal("signals/other").await.unwrap();
        master_a.signal(&name).await.unwrap();
        within("second signal", again).await;
        // A signal of another name did not fire: fired now by its own.
        api.signal("signals/other").await.unwrap();
        within("signal of another name", other).await;
        assert!(matches!(
            api.signal("/abs").await,
            Err(RegistryError::InvalidPath { .. })
        ));
    }

    pub async fn signal_watch_ends_when_its_session_closes(cluster: &impl Cluster) {
        let master = cluster.session().await;
        let watch = master.watch_signal(&paths::commands_signal()).await.unwrap();
        master.close().await;
        within("signal watch ended by close", watch).await;
        assert_eq!(
            master.signal(&paths::commands_signal()).await,
            Err(RegistryError::Closed)
        );
    }

    pub async fn session_reports_connected_then_closed(cluster: &impl Cluster) {
        let session = cluster.session().await;
        let mut state = session.session_state();
        assert_eq!(*state.borrow_and_update(), SessionState::Connected);
        session
            .register(&paths::master_node("m"), b"")
            .await
            .unwrap();
        session.close().await;
        within(
            "closed state",
            state.wait_for(|s| *s == SessionState::Closed),
        )
        .await
        .unwrap();
        assert_eq!(
            session.register(&paths::master_node("n"), b"").await,
            Err(RegistryError::Closed)
        );
        assert_eq!(
            session.queue_try_take("default").await,
            Err(RegistryError::Closed)
        );
        assert_eq!(
            session.members(&paths::masters_dir()).await.err(),
            Some(RegistryError::Closed)
        );
        // Closing twice is harmless.
        session.close().await;
        let observer = cluster.session().await;
        assert!(observer
            .members(&paths::masters_dir())
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn invalid_paths_are_rejected(cluster: &impl Cluster) {
        let session = cluster.session().await;
        for path in ["", "/nodes/masters/x", "nodes//x", "nodes/../x", "nodes/x/"] {
            assert!(
                matches!(
                    session.register(path, b"").await,
                    Err(RegistryError::InvalidPath { .. })
                ),
                "{path:?} accepted"
            );
        }
        assert!(matches!(
            session.queue_put("a/b", "k", b"").await,
            Err(RegistryError::InvalidPath { .. })
        ));
        assert!(matches!(
            session.queue_put("g", "k/1", b"").await,
            Err(RegistryError::InvalidPath { .. })
        ));
        assert!(matches!(
            session.lock("").await,
            Err(RegistryError::InvalidPath { .. })
        ));
    }
}

macro_rules! registry_contract_suite {
    ($module:ident, $cluster:expr) => {
        mod $module {
            use super::*;

            registry_contract_suite!(@tests $cluster;
                ephemeral_node_carries_heartbeat,
                members_are_sorted_and_exclude_subdirectories,
                second_registration_of_a_live_path_fails,
                membership_watch_sees_joins_and_leaves,
                membership_watch_ends_when_its_session_closes,
                lock_is_mutually_exclusive,
                waiting_lock_is_granted_on_release,
                lock_of_a_closed_session_is_freed_and_reported_lost,
                queue_takes_keys_in_lexicographic_order,
                newly_put_higher_priority_key_is_taken_first,
                every_item_is_taken_exactly_once_by_competing_takers,
                take_on_empty_queue_wakes_on_put,
                waiting_take_ends_when_its_session_closes,
                cancelled_takes_lose_nothing,
                queue_remove_withdraws_a_task,
                queue_put_of_a_queued_key_fails,
                queue_groups_are_separate,
                session_reports_connected_then_closed,
                signal_wakes_watchers_of_other_sessions_once,
                signal_watch_ends_when_its_session_closes,
                invalid_paths_are_rejected,
            );
        }
    };
    (@tests $cluster:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let cluster = $cluster;
                suite::$test(&cluster).await;
            }
        )*
    };
}

registry_contract_suite!(embedded, Embedded::new());
registry_contract_suite!(zookeeper, ZooKeeper::new());
