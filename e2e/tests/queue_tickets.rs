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

async fn run_big(sandbox: &Sandbox) -> WorkflowInstanceId {
    let response = sluice_e2e::http_client()
        .post(format!("{}/api/v1/projects/e2e/workflows/big/runs", sandbox.api_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    WorkflowInstanceId(body["workflow_instance_id"].as_i64().unwrap())
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

async fn log_text(sandbox: &Sandbox, task: &TaskInstance) -> String {
    let url = format!("{}/api/v1/task-instances/{}/log?limit=1000", sandbox.api_url(), task.id);
    sluice_e2e::http_client().get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_5_mb_script_with_a_secret_runs_through_a_queue_that_holds_neither() {
    let mut sandbox = Sandbox::cluster(1, 0).await;
    put_big_workflow(&sandbox).await;
    let id = run_big(&sandbox).await;
    let (_, tasks) = sandbox.wait_until(id, MINUTE, "big queued", |_, t| t.iter().any(|t| t.state == TaskState::Dispatched)).await;
    let ticket = inspect_the_queue(&mut sandbox, &tasks[0]).await;
    assert_eq!(Some(ticket.master), sandbox.master_addrs().first().cloned());

    sandbox.add_worker(&["late"], 1).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    let log = log_text(&sandbox, &tasks[0]).await;
    assert!(log.contains(&format!("pad={PAD} token={SECRET}")), "the whole script ran with its parameters: {}", &log[..log.len().min(2000)]);
    sandbox.shutdown().await;
}

/// The ticket names a master that died after queuing it: the worker asks
/// the live masters, and the one that adopted the instance resolves the
/// attempt again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ticket_of_a_dead_master_is_fetched_from_the_instance_new_owner() {
    let mut sandbox = Sandbox::cluster(2, 0).await;
    put_big_workflow(&sandbox).await;
    let id = run_big(&sandbox).await;
    let (wi, tasks) = sandbox.wait_until(id, MINUTE, "big queued", |_, t| t.iter().any(|t| t.state == TaskState::Dispatched)).await;
    let first = wi.owner.clone().expect("an owner");
    inspect_the_queue(&mut sandbox, &tasks[0]).await;
    sandbox.crash_master(&first).await;
    let (adopted, _) = sandbox.wait_until(id, MINUTE, "adopted", |wi, _| wi.owner.as_ref().is_some_and(|o| *o != first)).await;
    let ticket = inspect_the_queue(&mut sandbox, &tasks[0]).await;
    assert_eq!(ticket.master, first, "the entry still names the dead master");

    sandbox.add_worker(&["late"], 1).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    assert_eq!((tasks[0].attempt, tasks[0].failovers), (1, 0), "the queued attempt ran, none other: {tasks:?}");
    assert_eq!(wi.owner, adopted.owner);
    let log = log_text(&sandbox, &tasks[0]).await;
    assert!(log.contains(&format!("pad={PAD} token={SECRET}")), "{}", &log[..log.len().min(2000)]);
    sandbox.shutdown().await;
}
