//! PostgreSQL goes away mid-run and comes back: masters and workers wait
//! and carry on by themselves; no process exits, nothing is lost. This is
//! its own test binary because it stops the test PostgreSQL server, which
//! every other cluster test uses (cargo runs test binaries one at a time);
//! see `sluice_testkit::postgres::control` for how.

use std::time::Duration;

use sluice_domain::*;
use sluice_e2e::{shell, workflow, Sandbox};
use sluice_testkit::postgres::control;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_survives_a_postgresql_outage() {
    let sandbox = Sandbox::cluster(1, 1).await;
    let spec = workflow("outage", vec![shell("long", "sleep 3", &[]), shell("after", "echo after", &["long"])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    sandbox
        .wait_until(id, Duration::from_secs(60), "long running", |_, t| t.iter().any(|t| t.name == "long" && t.state == TaskState::Running))
        .await;

    // Down for longer than the task has left to run: its end is reported
    // while the database is away.
    control("stop").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    tokio::task::spawn_blocking(|| control("start")).await.unwrap().unwrap();

    let (wi, tasks) = sandbox.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    assert!(tasks.iter().all(|t| t.attempt == 1 && t.state == TaskState::Success), "{tasks:?}");
    sandbox.shutdown().await;
}
