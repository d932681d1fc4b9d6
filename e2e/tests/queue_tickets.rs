//! What a task queue holds: a ticket (the attempt's key and the master that
//! queued it), never the script or the resolved parameters. A worker
//! fetches the dispatch from the instance's owner, so a secret never sits
//! in ZooKeeper and a script over ZooKeeper's 1 MB node limit runs. Before,
//! the whole dispatch was the queue entry: the API took a 5 MB script and
//! the queue refused it.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_domain::*;
use sluice_e2e::Sandbox;

const MINUTE: Duration = Duration::from_secs(60);
const PAD: usize = 5 << 20;
const SECRET: &str = "s3cr3t-token-value";

/// A workflow of one task in group `late` (no worker serves it until the
/// test starts one): a 5 MB script that prints its padding's length and a
/// secret parameter. Stored through the API, as a user would.
async fn put_big_workflow(sandbox: &Sandbox) {
    let script = format!("PAD='{}'\necho \"pad=${{#PAD}} token=$TOKEN\"\n", "x".repeat(PAD));
    let document = json!({
        "name": "big",
        "tasks": [{"name": "big", "type": "shell", "worker_group": "late", "params": {"TOKEN": SECRET}, "script": script}],
    });
    let response = sluice_e2e::http_client()
        .put(format!("{}/api/v1/projects/e2e/workflows/big", sandbox.api_url()))
        .json(&document)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert!(status == 201 || status == 200, "the API refused a 5 MB script: {status} {}", response.text().await.unwrap());
}

/// Stores and runs the big workflow; returns once its task is dispatched.
async fn queue_big(sandbox: &Sandbox) -> (WorkflowInstance, Vec<TaskInstance>) {
    put_big_workflow(sandbox).await;
    let response = sluice_e2e::http_client()
        .post(format!("{}/api/v1/projects/e2e/workflows/big/runs", sandbox.api_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    let id = WorkflowInstanceId(body["workflow_instance_id"].as_i64().unwrap());
    sandbox.wait_until(id, MINUTE, "big queued", |_, t| t.iter().any(|t| t.state == TaskState::Dispatched)).await
}

/// Takes the one entry of queue `late`, checks it is a small ticket naming
/// `task` without a trace of the script or the secret, and puts it back.
async fn inspect_the_queue(sandbox: &mut Sandbox, task: &TaskInstance) -> QueueTicket {
    let registry = sandbox.registry_session().await;
    // The task is dispatched in the database before its entry is put.
    let deadline = std::time::Instant::now() + MINUTE;
    let mut keys = registry.queue_keys("late").await.unwrap();
    while keys.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        keys = registry.queue_keys("late").await.unwrap();
    }
    assert_eq!(keys.len(), 1, "one queued attempt: {keys:?}");
    let item = registry.queue_try_take("late").await.unwrap().expect("the entry");
    let text = String::from_utf8(item.payload.clone()).unwrap();
    assert!(item.payload.len() < 256, "a queue entry of {} bytes: {}", item.payload.len(), &text[..text.len().min(300)]);
    assert!(!text.contains(SECRET) && !text.contains("xxxx"), "the entry holds the dispatch: {text}");
    let ticket = QueueTicket::from_json(&item.payload).expect("a ticket");
    assert_eq!((ticket.task_instance_id, ticket.attempt), (task.id, task.attempt));
    registry.queue_put("late", &item.key, &item.payload).await.unwrap();
    ticket
}

/// Starts a worker for group `late` and waits for the run's success; the
/// log shows the whole script ran with its parameter.
async fn the_big_task_runs(sandbox: &mut Sandbox, id: WorkflowInstanceId) -> (WorkflowInstance, Vec<TaskInstance>) {
    sandbox.add_worker(&["late"], 1).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    let url = format!("{}/api/v1/task-instances/{}/log?limit=1000", sandbox.api_url(), tasks[0].id);
    let log = sluice_e2e::http_client().get(url).send().await.unwrap().text().await.unwrap();
    assert!(log.contains(&format!("pad={PAD} token={SECRET}")), "the whole script ran with its parameters: {}", &log[..log.len().min(2000)]);
    (wi, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_5_mb_script_with_a_secret_runs_through_a_queue_that_holds_neither() {
    let mut sandbox = Sandbox::cluster(1, 0).await;
    let (wi, tasks) = queue_big(&sandbox).await;
    let ticket = inspect_the_queue(&mut sandbox, &tasks[0]).await;
    assert_eq!(Some(ticket.master), sandbox.master_addrs().first().cloned());
    the_big_task_runs(&mut sandbox, wi.id).await;
    sandbox.shutdown().await;
}

/// The ticket names a master that died after queuing it: the worker asks
/// the live masters, and the one that adopted the instance resolves the
/// attempt again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ticket_of_a_dead_master_is_fetched_from_the_instance_new_owner() {
    let mut sandbox = Sandbox::cluster(2, 0).await;
    let (wi, tasks) = queue_big(&sandbox).await;
    let first = wi.owner.clone().expect("an owner");
    inspect_the_queue(&mut sandbox, &tasks[0]).await;
    sandbox.crash_master(&first).await;
    let (adopted, _) = sandbox.wait_until(wi.id, MINUTE, "adopted", |wi, _| wi.owner.as_ref().is_some_and(|o| *o != first)).await;
    let ticket = inspect_the_queue(&mut sandbox, &tasks[0]).await;
    assert_eq!(ticket.master, first, "the entry still names the dead master");

    let (wi, tasks) = the_big_task_runs(&mut sandbox, wi.id).await;
    assert_eq!((tasks[0].attempt, tasks[0].failovers), (1, 0), "the queued attempt ran, none other: {tasks:?}");
    assert_eq!(wi.owner, adopted.owner);
    sandbox.shutdown().await;
}
