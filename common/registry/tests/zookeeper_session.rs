//! What only ZooKeeper does: sessions that expire and servers that go away.

use std::future::Future;
use std::time::Duration;

use sluice_registry::{paths, Member, MembershipEvent, Registry, SessionState, ZkRegistry};
use sluice_testkit::proxy::TcpProxy;
use sluice_testkit::zookeeper::{unique_root, zookeeper_address, ZooKeeperServer};
use tokio::sync::watch;

const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// `RUST_LOG=sluice_registry=debug` shows what the registry went through.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(EVENT_TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {EVENT_TIMEOUT:?} waiting for {what}"),
    }
}

async fn wait_state(state: &mut watch::Receiver<SessionState>, wanted: SessionState) {
    within(
        &format!("session state {wanted:?}"),
        state.wait_for(|s| *s == wanted),
    )
    .await
    .expect("registry dropped");
}

/// Records every state the registry reports, since a watch channel only
/// keeps the latest.
fn record_states(
    mut state: watch::Receiver<SessionState>,
) -> tokio::sync::mpsc::UnboundedReceiver<SessionState> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            let now = *state.borrow_and_update();
            if tx.send(now).is_err() {
                break;
            }
        }
    });
    rx
}

/// Expires `registry`'s session the way a partition longer than the session
/// timeout does: the proxy it reaches ZooKeeper through is cut until the
/// server has dropped the session (a probe node of the session is gone, as
/// seen from a session of its own), then restored. Returns once the registry
/// runs on a new session.
async fn expire_behind(proxy: &TcpProxy, registry: &ZkRegistry, servers: &str, root: &str) {
    let probe_group = "expiry-probe";
    registry
        .register(&paths::worker_node(probe_group, "probe"), b"")
        .await
        .unwrap();
    let generation = registry.session_generation();
    let direct = ZkRegistry::connect(servers, root, Duration::from_secs(4))
        .await
        .unwrap();
    proxy.cut();
    within("the server to drop the cut-off session", async {
        while !direct
            .members(&paths::workers_dir(probe_group))
            .await
            .unwrap()
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    direct.close().await;
    proxy.restore();
    within(
        "a new session after the partition",
        registry.wait_for_new_session(generation),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_is_replaced_and_its_nodes_come_back() {
    init_tracing();
    let servers = zookeeper_address();
    let root = unique_root("expiry");
    let proxy = TcpProxy::start(&servers).unwrap();
    let master = ZkRegistry::connect(&proxy.address(), &root, Duration::from_secs(4))
        .await
        .unwrap();
    let observer = ZkRegistry::connect(&servers, &root, Duration::from_secs(4))
        .await
        .unwrap();
    let node = paths::master_node("10.0.0.1:5678");
    master.register(&node, b"before").await.unwrap();
    let cron = master.lock(&paths::cron_lock()).await.unwrap();
    let mut watch = observer.watch_members(&paths::masters_dir()).await.unwrap();
    assert_eq!(
        watch.members(),
        [Member {
            name: "10.0.0.1:5678".into(),
            data: b"before".to_vec()
        }]
    );
    expire_behind(&proxy, &master, &servers, &root).await;

    // The cron leader learns it must stop firing.
    within("lock loss", cron.lost()).await;
    assert!(cron.is_lost());
    // Observers see the old session's node go and the new session's come.
    assert_eq!(
        within("leave", watch.next()).await,
        Some(MembershipEvent::Left("10.0.0.1:5678".into()))
    );
    assert_eq!(
        within("join", watch.next()).await,
        Some(MembershipEvent::Joined(Member {
            name: "10.0.0.1:5678".into(),
            data: b"before".to_vec()
        }))
    );
    // `Expired` passes too quickly to be sure to observe here; the outage
    // test below sees it.
    let mut state = master.session_state();
    wait_state(&mut state, SessionState::Connected).await;

    // The new session works: heartbeats, locks, queue.
    master.update(&node, b"after").await.unwrap();
    assert_eq!(
        observer.members(&paths::masters_dir()).await.unwrap(),
        [Member {
            name: "10.0.0.1:5678".into(),
            data: b"after".to_vec()
        }]
    );
    drop(cron);
    let cron = within(
        "cron lock in the new session",
        master.lock(&paths::cron_lock()),
    )
    .await
    .unwrap();
    assert!(!cron.is_lost());
    master.queue_put("default", "k", b"v").await.unwrap();
    assert_eq!(observer.queue_take("default").await.unwrap().payload, b"v");

    master.close().await;
    assert_eq!(
        within("leave on close", watch.next()).await,
        Some(MembershipEvent::Left("10.0.0.1:5678".into()))
    );
    observer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_take_and_watch_survive_session_expiry() {
    init_tracing();
    let servers = zookeeper_address();
    let root = unique_root("expiry-wait");
    let proxy = TcpProxy::start(&servers).unwrap();
    let worker = std::sync::Arc::new(
        ZkRegistry::connect(&proxy.address(), &root, Duration::from_secs(4))
            .await
            .unwrap(),
    );
    let master = ZkRegistry::connect(&servers, &root, Duration::from_secs(4))
        .await
        .unwrap();
    let mut watch = worker
        .watch_members(&paths::workers_dir("default"))
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let worker = worker.clone();
        async move { worker.queue_take("default").await }
    });
    expire_behind(&proxy, &worker, &servers, &root).await;

    master.queue_put("default", "k", b"v").await.unwrap();
    assert_eq!(
        within("take across expiry", waiting)
            .await
            .unwrap()
            .unwrap()
            .key,
        "k"
    );
    master
        .register(&paths::worker_node("default", "w"), b"")
        .await
        .unwrap();
    assert_eq!(
        within("watch across expiry", watch.next()).await,
        Some(MembershipEvent::Joined(Member {
            name: "w".into(),
            data: Vec::new()
        }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_rides_out_a_zookeeper_restart() {
    init_tracing();
    let mut server =
        tokio::task::block_in_place(ZooKeeperServer::start_new).expect("start zookeeper");
    let root = unique_root("restart");
    let registry = ZkRegistry::connect(&server.address(), &root, Duration::from_secs(10))
        .await
        .unwrap();
    let node = paths::worker_node("default", "10.0.0.2:1234");
    registry.register(&node, b"hb").await.unwrap();
    registry.queue_put("default", "k1", b"1").await.unwrap();
    let mut state = registry.session_state();
    let mut states = record_states(registry.session_state());

    tokio::task::block_in_place(|| server.stop()).expect("stop zookeeper");
    wait_state(&mut state, SessionState::Disconnected).await;
    tokio::task::block_in_place(|| server.start()).expect("restart zookeeper");
    wait_state(&mut state, SessionState::Connected).await;

    // A short outage keeps the session: node and queue are intact.
    assert_eq!(
        registry
            .members(&paths::workers_dir("default"))
            .await
            .unwrap(),
        [Member {
            name: "10.0.0.2:1234".into(),
            data: b"hb".to_vec()
        }]
    );
    assert_eq!(registry.queue_take("default").await.unwrap().key, "k1");
    let mut reported = Vec::new();
    while let Ok(s) = states.try_recv() {
        reported.push(s);
    }
    assert!(
        !reported.contains(&SessionState::Expired),
        "session expired: {reported:?}"
    );
    registry.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_outage_expires_the_session_and_the_registry_recovers() {
    init_tracing();
    let mut server =
        tokio::task::block_in_place(ZooKeeperServer::start_new).expect("start zookeeper");
    let root = unique_root("outage");
    let registry = ZkRegistry::connect(&server.address(), &root, Duration::from_secs(2))
        .await
        .unwrap();
    let node = paths::master_node("10.0.0.1:5678");
    registry.register(&node, b"hb").await.unwrap();
    let lock = registry.lock(&paths::command_scan_lock()).await.unwrap();
    let mut states = record_states(registry.session_state());

    tokio::task::block_in_place(|| server.stop()).expect("stop zookeeper");
    // The client gives the session up on its own once the timeout passes
    // without a server.
    within("expiry reported", async {
        while states.recv().await != Some(SessionState::Expired) {}
    })
    .await;
    within("lock loss", lock.lost()).await;
    tokio::task::block_in_place(|| server.start()).expect("restart zookeeper");
    let mut state = registry.session_state();
    wait_state(&mut state, SessionState::Connected).await;

    // The restarted server may still hold the old session's node for a
    // while; the registry replaces it with the new session's.
    let observer = ZkRegistry::connect(&server.address(), &root, Duration::from_secs(2))
        .await
        .unwrap();
    // Still ours: a lost registration would refuse the heartbeat.
    registry.update(&node, b"hb2").await.unwrap();
    assert_eq!(
        observer.members(&paths::masters_dir()).await.unwrap(),
        [Member {
            name: "10.0.0.1:5678".into(),
            data: b"hb2".to_vec()
        }]
    );
    let mut watch = observer.watch_members(&paths::masters_dir()).await.unwrap();
    registry.close().await;
    assert_eq!(
        within("leave on close", watch.next()).await,
        Some(MembershipEvent::Left("10.0.0.1:5678".into()))
    );
    observer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_given_up_when_cut_off_from_zookeeper_for_long() {
    init_tracing();
    let mut server =
        tokio::task::block_in_place(ZooKeeperServer::start_new).expect("start zookeeper");
    let root = unique_root("cut-off");
    let leader = ZkRegistry::connect(&server.address(), &root, Duration::from_secs(3))
        .await
        .unwrap();
    let cron = leader.lock(&paths::cron_lock()).await.unwrap();
    let state = leader.session_state();

    tokio::task::block_in_place(|| server.stop()).expect("stop zookeeper");
    within("lock given up", cron.lost()).await;
    // Before the client would call the session expired: the servers may
    // already have expired it and handed the lock to someone else.
    assert_eq!(*state.borrow(), SessionState::Disconnected);

    tokio::task::block_in_place(|| server.start()).expect("restart zookeeper");
    let other = ZkRegistry::connect(&server.address(), &root, Duration::from_secs(3))
        .await
        .unwrap();
    let taken = within("lock free again", other.lock(&paths::cron_lock()))
        .await
        .unwrap();
    assert!(!taken.is_lost());
    leader.close().await;
    other.close().await;
}
