//! How fast the ZooKeeper queue drains a deep backlog. Ignored by default:
//! it measures, it does not check behaviour the contract suite misses.
//!
//! `SLUICE_TEST_ZK=… cargo test -p sluice-registry --release --test zookeeper_queue_load -- --ignored --nocapture`

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_registry::{Registry, ZkRegistry};
use sluice_testkit::zookeeper::{unique_root, zookeeper_address};

const BACKLOG: usize = 10_000;

async fn drain(takers: usize) {
    let servers = zookeeper_address();
    let root = unique_root("load");
    let master = ZkRegistry::connect(&servers, &root, Duration::from_secs(10))
        .await
        .unwrap();
    let started = Instant::now();
    let mut keys: Vec<String> = (0..BACKLOG as i64)
        .map(|task| format!("{}_{:019}_2_{task:019}", task % 5, task / 10))
        .collect();
    fastrand::shuffle(&mut keys);
    for chunk in keys.chunks(500) {
        let puts: Vec<_> = chunk
            .iter()
            .map(|key| master.queue_put("default", key, b"{}"))
            .collect();
        for put in futures_join(puts).await {
            put.unwrap();
        }
    }
    eprintln!("put {BACKLOG} in {:?}", started.elapsed());

    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..takers {
        let worker = Arc::new(
            ZkRegistry::connect(&servers, &root, Duration::from_secs(10))
                .await
                .unwrap(),
        );
        handles.push(tokio::spawn(async move {
            let mut taken = Vec::new();
            while let Some(item) = worker.queue_try_take("default").await.unwrap() {
                taken.push(item.key);
            }
            taken
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        let taken = handle.await.unwrap();
        // Each taker sees its own takes in priority order.
        assert!(taken.windows(2).all(|w| w[0] < w[1]));
        all.extend(taken);
    }
    let elapsed = started.elapsed();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), BACKLOG);
    eprintln!(
        "{takers} taker(s) drained {BACKLOG} in {elapsed:?}: {:.0} tasks/s",
        BACKLOG as f64 / elapsed.as_secs_f64()
    );
}

async fn futures_join<T>(futures: Vec<impl std::future::Future<Output = T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(futures.len());
    for f in futures {
        out.push(f.await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures throughput; run by hand"]
async fn one_taker_drains_a_deep_backlog() {
    drain(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures throughput; run by hand"]
async fn four_takers_drain_a_deep_backlog() {
    drain(4).await;
}
