//! Retention, driven by a real master: finished instances older than
//! `master.history_retention` and task logs in the store older than
//! `log_store.retention` are deleted; running instances, recent ones and
//! recent logs stay.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sluice_domain::*;
use sluice_e2e::{shell, workflow, Retention, Sandbox};
use sluice_logs::LogKey;

const DAY: Duration = Duration::from_secs(86_400);

fn store_file(dir: &Path, name: &str, age: Duration) -> PathBuf {
    let path = dir.join("planted").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(&path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
    path
}

/// Where the log store keeps the log of a task's first attempt.
fn stored_log(dir: &Path, task: &TaskInstance) -> PathBuf {
    let key = LogKey { workflow_instance_id: task.workflow_instance_id.get(), task_instance_id: task.id.get(), attempt: 1 };
    dir.join(key.relative_path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_deletes_only_old_history_and_old_logs() {
    let mut sandbox = Sandbox::cluster(0, 1).await;
    let history = Duration::from_secs(4);
    sandbox.add_master_with_retention(Retention { history, logs: 30 * DAY, every: Duration::from_millis(300) }).await;
    let store = sandbox.store().clone();
    let logs = sandbox.log_store_dir();

    let old = sandbox.run(sandbox.apply(&workflow("old", vec![shell("quick", "echo old", &[])])).await).await;
    let (_, old_tasks) = sandbox.wait_finished(old, Duration::from_secs(60)).await;
    // The run's log reached the store; age it past the log retention.
    let old_log = stored_log(&logs, &old_tasks[0]);
    let file = std::fs::File::options().write(true).open(&old_log);
    file.expect("the finished attempt's log is in the store").set_modified(SystemTime::now() - 31 * DAY).unwrap();
    let ancient = store_file(&logs, "ancient.log", 40 * DAY);
    let recent = store_file(&logs, "recent.log", 29 * DAY);
    // Older than the history retention by the time `old` goes, but not over.
    let running = sandbox.run(sandbox.apply(&workflow("running", vec![shell("slow", "sleep 10", &[])])).await).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while store.workflow_instance(old).await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "the finished instance was not deleted within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.task_instances(old).await.unwrap().is_empty(), "its task instances went with it");
    let still = store.workflow_instance(running).await.unwrap().expect("a running instance is never deleted");
    assert!(!still.state.is_final(), "{still:?}");

    let new = sandbox.run(sandbox.apply(&workflow("new", vec![shell("quick", "echo new", &[])])).await).await;
    sandbox.wait_finished(new, Duration::from_secs(60)).await;
    assert!(store.workflow_instance(new).await.unwrap().is_some(), "a run finished just now stays");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ancient.exists() || old_log.exists() {
        assert!(std::time::Instant::now() < deadline, "logs older than 30 days were not deleted within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recent.exists(), "a 29-day-old log stays");
    let (_, new_tasks) = sandbox.wait_finished(new, Duration::from_secs(1)).await;
    assert!(stored_log(&logs, &new_tasks[0]).exists(), "the new run's log stays");
    sandbox.shutdown().await;
}
