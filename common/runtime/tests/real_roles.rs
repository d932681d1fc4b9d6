//! The roles of the `sluice` binary under `run_roles`: a role that stops
//! doing its job on its own takes the process down with its reason, after
//! the other roles were stopped, instead of leaving it half alive.

use std::sync::Arc;
use std::time::Duration;

use sluice_config::WorkerConfig;
use sluice_registry::{EmbeddedRegistry, Registry};
use sluice_runtime::{run_roles, CancellationToken, Role};
use sluice_storage::{PoolOptions, SqliteStore};

/// A worker whose registry session is closed under it (here by the test;
/// in life, by whatever ends a session for good) can take no more tasks:
/// its take loop ends. The API next to it is stopped, and `run_roles`
/// returns the worker's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_take_loop_ends_stops_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("sluice.db").to_str().unwrap(), PoolOptions::sized(2)).await.unwrap();
    let registry: Arc<dyn Registry> = Arc::new(EmbeddedRegistry::new().session());
    let config = WorkerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        groups: vec!["default".into()],
        work_dir: dir.path().join("work"),
        log_dir: dir.path().join("logs"),
        ..WorkerConfig::default()
    };
    let worker = sluice_worker::Worker::new(config, registry.clone());
    let api = sluice_api::ApiServer::new("127.0.0.1:0".parse().unwrap(), Arc::new(store));
    let roles: Vec<Box<dyn Role>> = vec![Box::new(worker), Box::new(api)];
    let running = tokio::spawn(run_roles(roles, CancellationToken::new()));

    // Once both serve (the worker registered), its session goes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while registry.members(&sluice_registry::paths::workers_dir("default")).await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the worker did not register");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    registry.close().await;

    let result = tokio::time::timeout(Duration::from_secs(30), running).await.expect("run_roles returns").unwrap();
    let error = result.expect_err("a role ended on its own: the process must fail");
    assert_eq!(error.to_string(), "worker: take loop ended without being stopped");
}
