//! The engine core's promises that a review found broken, each shown on
//! real servers: an operator command is never lost between a master and its
//! driver, a restart is checked before anything is adopted, an instance
//! whose definition is gone ends with the reason instead of haunting the
//! masters, a workflow with live runs cannot be deleted, a standalone
//! restart queues again what its lost queue held, and force-success of a
//! finished run recovers the rest of it.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::Connection;
use sluice_domain::*;
use sluice_e2e::{http_client, shell, workflow, Sandbox};

const MINUTE: Duration = Duration::from_secs(60);

/// Commands in the table, claimed or not.
async fn commands_left(sandbox: &Sandbox) -> i64 {
    use diesel::RunQueryDsl;
    let url = sandbox.database_url().expect("a cluster has a database url").to_owned();
    tokio::task::spawn_blocking(move || {
        let mut c = diesel::PgConnection::establish(&url).unwrap();
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("(SELECT count(*) FROM commands)")).get_result(&mut c).unwrap()
    })
    .await
    .unwrap()
}

fn task<'a>(tasks: &'a [TaskInstance], name: &str) -> &'a TaskInstance {
    tasks.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no task instance `{name}`"))
}

/// A stop reaching a driver that can no longer write (another master
/// adopted its instance) stays with the instance: the master that adopts
/// it carries it out. Before, the command was deleted when it was handed
/// to the driver, and the run went on to success.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_meeting_a_fenced_driver_is_carried_out_by_the_next_owner() {
    let sandbox = Sandbox::cluster(2, 1).await;
    let spec = workflow("fenced", vec![shell("long", "sleep 8", &[]), shell("after", "true", &["long"])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    sandbox.wait_until(id, MINUTE, "long running", |_, t| t.iter().any(|t| t.name == "long" && t.state == TaskState::Running)).await;
    // A master that is gone takes the instance over (as a failover that
    // raced would): the driver's next write is refused.
    let store = sandbox.store();
    store.adopt_workflow_instance(id, "ghost-master:1").await.unwrap();
    sandbox.stop(id).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Stopped, "the stop was lost: {tasks:?}");
    assert_eq!(commands_left(&sandbox).await, 0, "and consumed");
    assert!(tasks.iter().all(|t| t.name != "after"), "nothing started after the stop: {tasks:?}");
    sandbox.shutdown().await;
}

/// A rerun of an instance that is running is dropped by the master before
/// it touches the instance. Before, the master adopted it first (a new
/// epoch, which fenced off its own live driver) and only then saw that a
/// rerun did not apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_of_a_running_instance_is_dropped_without_adopting_it() {
    let sandbox = Sandbox::cluster(1, 1).await;
    let spec = workflow("busy", vec![shell("long", "sleep 3", &[])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (running, _) = sandbox.wait_until(id, MINUTE, "long running", |_, t| t.iter().any(|t| t.state == TaskState::Running)).await;
    // Bypassing the API's state check, as a racing request could.
    sandbox.command(id, CommandKind::Rerun, Vec::new()).await;
    let deadline = Instant::now() + MINUTE;
    while commands_left(&sandbox).await > 0 {
        assert!(Instant::now() < deadline, "the rerun was never consumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    assert_eq!((wi.owner_epoch, wi.run), (running.owner_epoch, 1), "not adopted, not rerun");
    sandbox.shutdown().await;
}

/// An instance whose definition version vanished (deleted by an older
/// build, or by hand) ends `failure` with the reason, and its tasks end
/// too. Before, every load failed, the sweep re-adopted it every ~20 s
/// forever, and it stayed `running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_whose_definition_is_gone_fails_with_the_reason() {
    let mut sandbox = Sandbox::cluster(1, 1).await;
    let pid_file = sandbox.scratch().join("pid");
    let spec = workflow("doomed", vec![shell("long", &format!("echo $$ > {}; sleep 60", pid_file.display()), &[])]);
    let workflow_id = sandbox.apply(&spec).await;
    let id = sandbox.run(workflow_id).await;
    let (wi, _) = sandbox.wait_until(id, MINUTE, "long running", |_, t| t.iter().any(|t| t.state == TaskState::Running)).await;
    let url = sandbox.database_url().expect("a cluster has a database url").to_owned();
    tokio::task::spawn_blocking(move || {
        let mut c = diesel::PgConnection::establish(&url).unwrap();
        c.batch_execute(&format!(
            "DELETE FROM workflow_edges WHERE workflow_version_id IN (SELECT id FROM workflow_versions WHERE workflow_id = {w});
             DELETE FROM workflow_version_tasks WHERE workflow_version_id IN (SELECT id FROM workflow_versions WHERE workflow_id = {w});
             DELETE FROM workflow_versions WHERE workflow_id = {w};",
            w = workflow_id.get()
        ))
        .unwrap();
    })
    .await
    .unwrap();
    // A master that loads it now: the owner dies, another takes over.
    let owner = wi.owner.clone().unwrap();
    sandbox.add_master().await;
    sandbox.crash_master(&owner).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Failure);
    let reason = wi.reason.clone().unwrap_or_default();
    assert!(reason.contains(&format!("its definition (workflow {} version 1) is gone", workflow_id)), "{reason}");
    assert_eq!(task(&tasks, "long").state, TaskState::Killed, "{tasks:?}");
    // Its worker learns that the attempt is over and kills what runs.
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the orphaned task process {pid} still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sandbox.shutdown().await;
}

sluice_e2e::both_deployments!(a_workflow_with_a_live_run_cannot_be_deleted, force_success_of_a_finished_run_recovers_the_rest_of_it);

/// The API refuses to delete a workflow while one of its runs goes on,
/// naming the run; once the run is over, the delete goes through and the
/// finished run stays.
async fn a_workflow_with_a_live_run_cannot_be_deleted(sandbox: Sandbox) {
    let spec = workflow("live", vec![shell("long", "sleep 30", &[])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    sandbox.wait_until(id, MINUTE, "long running", |_, t| t.iter().any(|t| t.state == TaskState::Running)).await;
    let client = http_client();
    let url = format!("{}/api/v1/projects/e2e/workflows/live", sandbox.api_url());
    let answer = client.delete(&url).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 409, "[{}]", sandbox.name());
    let body: serde_json::Value = answer.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains(&format!("{id} (running)")), "[{}] {message}", sandbox.name());
    assert!(sandbox.store().workflow(sandbox.project(), "live", None).await.unwrap().is_some(), "nothing deleted");
    sandbox.stop(id).await;
    let (wi, _) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Stopped);
    let answer = client.delete(&url).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 204, "[{}]", sandbox.name());
    assert!(sandbox.store().workflow_instance(id).await.unwrap().is_some(), "the finished run stays");
    sandbox.shutdown().await;
}

/// Force-success of a task of a failed run is a recovery with that task
/// forced: what is below it runs, and so do the run's other failed tasks.
/// Before, only what was below the forced task ran, and the run failed
/// again on the other failed task, which the docs said would run again.
async fn force_success_of_a_finished_run_recovers_the_rest_of_it(sandbox: Sandbox) {
    let marker = sandbox.scratch().join("fixed");
    let flaky = format!("test -e {} || exit 3", marker.display());
    let mut spec = workflow(
        "two-failures",
        vec![shell("broken", "exit 4", &[]), shell("after", "true", &["broken"]), shell("flaky", &flaky, &[]), shell("ok", "true", &[])],
    );
    spec.failure_strategy = FailureStrategy::Continue;
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Failure, "[{}] {tasks:?}", sandbox.name());
    std::fs::write(&marker, "").unwrap(); // flaky's cause is fixed
    let broken = task(&tasks, "broken").id;
    let answer = http_client().post(format!("{}/api/v1/task-instances/{broken}/force-success", sandbox.api_url())).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 202, "[{}]", sandbox.name());
    let (wi, tasks) = sandbox.wait_until(id, MINUTE, "run 2 over", |wi, _| wi.run == 2 && wi.state.is_final()).await;
    assert_eq!(wi.state, WorkflowState::Success, "[{}] {tasks:?}", sandbox.name());
    assert_eq!(task(&tasks, "broken").state, TaskState::ForcedSuccess);
    assert_eq!(task(&tasks, "broken").attempt, 1, "the forced task does not run again");
    assert_eq!((task(&tasks, "flaky").state, task(&tasks, "flaky").attempt), (TaskState::Success, 2), "the other failure ran again");
    assert_eq!(task(&tasks, "after").state, TaskState::Success, "below the forced task runs");
    assert_eq!(task(&tasks, "ok").attempt, 1, "what succeeded stays");
    sandbox.shutdown().await;
}

/// `sluice standalone` dies with tasks queued in its in-process queue; on
/// its restart those are queued again at once. Before, they waited ~60 s
/// until the watchdog gave up on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standalone_restart_queues_again_what_its_lost_queue_held() {
    let mut sandbox = Sandbox::standalone().await;
    sandbox.restart_standalone(1).await; // one slot: the rest wait in the queue
    let tasks = (0..4).map(|i| shell(&format!("t{i}"), "sleep 1", &[])).collect();
    let id = sandbox.run(sandbox.apply(&workflow("queued", tasks)).await).await;
    sandbox
        .wait_until(id, MINUTE, "one running, three queued", |_, t| {
            t.iter().filter(|t| t.state == TaskState::Running).count() == 1 && t.iter().filter(|t| t.state == TaskState::Dispatched).count() == 3
        })
        .await;
    let restarted = Instant::now();
    sandbox.restart_standalone(4).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    let took = restarted.elapsed();
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    assert!(took < Duration::from_secs(20), "queued tasks waited {took:?} after the restart");
    let queued_again: Vec<&TaskInstance> = tasks.iter().filter(|t| t.attempt == 1).collect();
    assert_eq!(queued_again.len(), 3, "the queued ones ran as their first attempt: {tasks:?}");
    sandbox.shutdown().await;
}
