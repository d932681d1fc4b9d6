//! PostgreSQL goes away mid-run and comes back: masters and workers wait
//! and carry on by themselves; no process exits, nothing is lost. This is
//! its own test binary because it stops the machine's PostgreSQL, which
//! every other cluster test uses (cargo runs test binaries one at a time).

use std::process::Command;
use std::time::Duration;

use sluice_domain::*;
use sluice_e2e::{shell, workflow, Sandbox};

fn pg_ctl(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL version directory");
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .status()
        .expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

fn pg_ready() -> bool {
    Command::new("pg_isready").args(["-q", "-h", "127.0.0.1", "-p", "5432"]).status().is_ok_and(|s| s.success())
}

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
    pg_ctl("stop");
    tokio::time::sleep(Duration::from_secs(5)).await;
    pg_ctl("start");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !pg_ready() {
        assert!(std::time::Instant::now() < deadline, "PostgreSQL did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (wi, tasks) = sandbox.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    assert!(tasks.iter().all(|t| t.attempt == 1 && t.state == TaskState::Success), "{tasks:?}");
    sandbox.shutdown().await;
}
