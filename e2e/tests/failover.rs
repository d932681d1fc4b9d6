//! Master failover in a cluster: a master dies mid-run and a survivor
//! adopts its instances without running a task twice; a master that never
//! comes back has its instances and claimed commands taken over.

use std::time::Duration;

use sluice_domain::*;
use sluice_e2e::{shell, workflow, Sandbox};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_masters_instance_is_adopted_and_no_task_runs_twice() {
    let mut sandbox = Sandbox::cluster(2, 2).await;
    let ran = sandbox.scratch().join("ran");
    let spec = workflow(
        "failover",
        vec![
            shell("long", &format!("sleep 2; echo \"long $SLUICE_ATTEMPT\" >> {}", ran.display()), &[]),
            shell("after", &format!("echo \"after $SLUICE_ATTEMPT\" >> {}", ran.display()), &["long"]),
        ],
    );
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (wi, _) = sandbox
        .wait_until(id, MINUTE, "long running", |_, t| t.iter().any(|t| t.name == "long" && t.state == TaskState::Running))
        .await;
    let owner = wi.owner.clone().expect("a running instance has an owner");
    sandbox.crash_master(&owner).await;

    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    assert_ne!(wi.owner.as_deref(), Some(owner.as_str()), "a survivor owns it now");
    assert!(wi.owner_epoch > 1, "adoption bumped the epoch");
    assert!(tasks.iter().all(|t| t.attempt == 1 && t.failovers == 0), "the running task was adopted, not restarted: {tasks:?}");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "long 1\nafter 1\n", "each task ran exactly once");
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_of_a_master_that_never_comes_back_is_taken_over() {
    let sandbox = Sandbox::cluster(1, 1).await;
    let spec = workflow("orphan", vec![shell("only", "true", &[])]);
    let workflow_id = sandbox.apply(&spec).await;
    let store = sandbox.store();

    // An instance owned by a master that is gone (its node long expired)...
    let def = store.workflow_by_id(workflow_id, None).await.unwrap().unwrap();
    let orphan = store
        .create_workflow_instance(&NewWorkflowInstance {
            workflow_id,
            workflow_version: def.version,
            command_kind: CommandKind::Start,
            params: Params::new(),
            priority: def.priority,
            worker_group: def.worker_group.clone(),
            failure_strategy: def.failure_strategy,
            schedule_time: None,
            owner: Some("ghost-master:1".into()),
            start_tasks: Vec::new(),
            scope: None,
        })
        .await
        .unwrap();
    // ...and a start command it claimed but never acted on.
    store.insert_command(&NewCommand::start(workflow_id)).await.unwrap();
    let claimed = store.claim_commands("ghost-master:2", 10).await.unwrap();
    assert_eq!(claimed.len(), 1);

    let (wi, tasks) = sandbox.wait_finished(orphan.id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    assert_eq!(wi.owner.as_deref(), Some(sandbox.master_addrs()[0].as_str()));
    // The released command ran too: a second instance, finished.
    let deadline = std::time::Instant::now() + MINUTE;
    loop {
        let all = store.list_workflow_instances(&InstanceFilter { workflow_id: Some(workflow_id), limit: 10, ..Default::default() }).await.unwrap();
        if all.len() == 2 && all.iter().all(|i| i.state == WorkflowState::Success) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the ghost's claimed command never ran: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_workers_task_runs_again_elsewhere_as_a_failover() {
    let mut sandbox = Sandbox::cluster(1, 2).await;
    let ran = sandbox.scratch().join("ran");
    let mut slow = shell("slow", &format!("echo \"$SLUICE_ATTEMPT\" >> {}; sleep 3", ran.display()), &[]);
    slow.retries = 0; // a failover is not a retry: it must run again anyway
    let spec = workflow("worker_failover", vec![slow, shell("after", "true", &["slow"])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (_, tasks) = sandbox
        .wait_until(id, MINUTE, "slow running", |_, t| t.iter().any(|t| t.name == "slow" && t.state == TaskState::Running))
        .await;
    let host = tasks.iter().find(|t| t.name == "slow").unwrap().host.clone().unwrap();
    sandbox.crash_worker(&host).await;

    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    let slow = tasks.iter().find(|t| t.name == "slow").unwrap();
    assert_eq!((slow.attempt, slow.failovers, slow.retries), (2, 1, 0), "one failover, no retry used");
    assert_ne!(slow.host.as_deref(), Some(host.as_str()), "the new attempt ran on the other worker");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "1\n2\n", "re-run once, because its worker died");
    sandbox.shutdown().await;
}
