//! The chaos test's short form, run by `scripts/test.sh`: 3 masters and 3
//! workers as `sluice` processes, about a minute of SIGKILLs, a 10 s
//! ZooKeeper outage and a PostgreSQL restart, then every workflow must have
//! ended as its definition says, with no task attempt run twice and no two
//! attempts of one task running at the same time. See
//! `sluice_e2e::chaos` for what is checked and how; the long form is
//! `cargo run --release -p sluice-e2e --bin chaos -- --minutes 30`.
//!
//! Its own test binary because it restarts the machine's PostgreSQL, which
//! the other cluster tests use (cargo runs test binaries one at a time).
//! `SLUICE_CHAOS_SEED` replays a run's choices (each run prints its seed).

use sluice_e2e::chaos::{self, ChaosConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_survives_kills_and_outages() {
    let seed = std::env::var("SLUICE_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(fastrand_seed);
    let report = chaos::run(ChaosConfig::short(seed)).await.expect("the chaos test could not run");
    chaos::say(&report.to_string());
    assert!(report.passed(), "the chaos test found {} problems (summary above)", report.problems.len());
}

fn fastrand_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
}
