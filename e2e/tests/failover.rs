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
        .create_workflow_instance(&NewWorkflowInstance { owner: Some("ghost-master:1".into()), ..NewWorkflowInstance::start(&def) })
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
    slow_task_loses_its_worker(WorkerFate::Gone).await;
}

/// A worker that dies and is back at the same address before the grace
/// period is over (a supervisor restarting the process) does not run the
/// attempts of its previous incarnation: they must run again, or they
/// would stay `running` forever. Found by the chaos test.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_of_a_worker_restarted_at_once_runs_again() {
    slow_task_loses_its_worker(WorkerFate::RestartedAtOnce).await;
}

#[derive(PartialEq)]
enum WorkerFate {
    /// Crashed for good; another worker is there.
    Gone,
    /// Crashed and started again at the same address; the only worker.
    RestartedAtOnce,
}

/// Crashes the worker running a slow task and checks that the task ran
/// again exactly once, as a failover (not a retry), and the run succeeded.
async fn slow_task_loses_its_worker(fate: WorkerFate) {
    let workers = if fate == WorkerFate::Gone { 2 } else { 1 };
    let mut sandbox = Sandbox::cluster(1, workers).await;
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
    if fate == WorkerFate::RestartedAtOnce {
        sandbox.restart_worker(&host).await;
    }

    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    let slow = tasks.iter().find(|t| t.name == "slow").unwrap();
    assert_eq!((slow.attempt, slow.failovers, slow.retries), (2, 1, 0), "one failover, no retry used");
    match fate {
        WorkerFate::Gone => assert_ne!(slow.host.as_deref(), Some(host.as_str()), "the new attempt ran on the other worker"),
        WorkerFate::RestartedAtOnce => assert_eq!(slow.host.as_deref(), Some(host.as_str()), "the new attempt ran on the restarted worker"),
    }
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "1\n2\n", "re-run once, because its worker died");
    sandbox.shutdown().await;
}

/// A master that claimed a command and died before acting on it, then came
/// back at the same address within the grace period (so no failover
/// released the command), acts on it after all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_claimed_before_a_restart_are_acted_on() {
    let mut sandbox = Sandbox::cluster(0, 1).await;
    let id = sandbox.run(sandbox.apply(&workflow("claimed", vec![shell("only", "true", &[])])).await).await;
    // Held until the master binds it, so nothing else takes it meanwhile.
    let reserved = sluice_testkit::net::ReservedAddr::new().unwrap();
    let addr = reserved.addr().to_string();
    // The earlier life of the master at `addr`: it claimed the start command.
    assert_eq!(sandbox.store().claim_commands(&addr, 10).await.unwrap().len(), 1);
    drop(reserved);
    sandbox.add_master_at(&addr).await;

    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    sandbox.shutdown().await;
}

/// A command whose handling meets a database that is briefly unavailable
/// is handled again, not left claimed (and its run never started) for as
/// long as the master lives. The database refuses the first consumption of
/// a command with a serialization failure, which the store reports as
/// "unavailable" like a connection lost during a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_meeting_an_unavailable_database_is_handled_again() {
    use diesel::connection::SimpleConnection;
    let mut sandbox = Sandbox::cluster(0, 1).await;
    let url = sandbox.database_url().expect("a cluster sandbox").to_owned();
    let mut conn = <diesel::PgConnection as diesel::Connection>::establish(&url).unwrap();
    conn.batch_execute(
        "CREATE SEQUENCE fault_once;
         CREATE FUNCTION fail_first_delete() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF nextval('fault_once') = 1 THEN
                 RAISE EXCEPTION 'injected' USING ERRCODE = 'serialization_failure';
             END IF;
             RETURN OLD;
         END $$;
         CREATE TRIGGER fail_first_delete BEFORE DELETE ON commands FOR EACH ROW EXECUTE FUNCTION fail_first_delete();",
    )
    .unwrap();
    let id = sandbox.run(sandbox.apply(&workflow("retried", vec![shell("only", "true", &[])])).await).await;
    sandbox.add_master().await;

    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    sandbox.shutdown().await;
}
