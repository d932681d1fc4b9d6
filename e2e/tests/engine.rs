//! The execution engine end to end, in both deployments: standalone (SQLite,
//! embedded registry) and a 2-master / 2-worker cluster (PostgreSQL,
//! ZooKeeper). Tasks are real processes; tests wait on state.

use std::time::Duration;

use sluice_domain::*;
use sluice_e2e::{shell, workflow, Sandbox};

sluice_e2e::both_deployments!(
    diamond_runs_its_middle_tasks_in_parallel,
    a_task_that_fails_twice_succeeds_on_its_third_attempt,
    a_timeout_with_strategy_fail_kills_the_process_group,
    failure_strategy_continue_runs_the_other_branch,
    failure_strategy_end_kills_the_other_branch,
    failure_strategy_end_kills_a_sibling_that_never_started,
    queued_tasks_start_in_priority_order_on_a_one_slot_worker,
    a_running_task_can_be_killed,
    a_workflow_instance_can_be_stopped,
    a_stop_kills_queued_tasks_and_a_ticket_taken_before_it_never_runs,
    parameters_and_outputs_reach_downstream_tasks,
    an_unresolvable_expression_fails_the_task_before_it_starts,
);

const MINUTE: Duration = Duration::from_secs(60);

fn task<'a>(tasks: &'a [TaskInstance], name: &str) -> &'a TaskInstance {
    tasks.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no task instance `{name}`"))
}

/// Whether `pid` is a live process. A zombie (exited, not yet reaped by
/// init) does not count: it runs nothing.
fn pid_alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        // The state follows the parenthesised command name: `pid (comm) S ...`.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

async fn diamond_runs_its_middle_tasks_in_parallel(sandbox: Sandbox) {
    let spec = workflow(
        "diamond",
        vec![
            shell("a", "echo a", &[]),
            shell("b", "sleep 1", &["a"]),
            shell("c", "sleep 1", &["a"]),
            shell("d", "echo d", &["b", "c"]),
        ],
    );
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "[{}] {tasks:?}", sandbox.name());
    assert_eq!(tasks.len(), 4);
    assert!(tasks.iter().all(|t| t.state == TaskState::Success && t.attempt == 1 && t.exit_code == Some(0)));
    let (a, b, c, d) = (task(&tasks, "a"), task(&tasks, "b"), task(&tasks, "c"), task(&tasks, "d"));
    let (bs, be, cs, ce) = (b.start_time.unwrap(), b.end_time.unwrap(), c.start_time.unwrap(), c.end_time.unwrap());
    assert!(bs < ce && cs < be, "[{}] b ({bs}..{be}) and c ({cs}..{ce}) did not overlap", sandbox.name());
    assert!(a.end_time.unwrap() <= bs.min(cs), "b or c started before a ended");
    assert!(d.start_time.unwrap() >= be.max(ce), "d started before b and c ended");
    assert!(wi.start_time.is_some() && wi.end_time.is_some());
    sandbox.shutdown().await;
}

async fn a_task_that_fails_twice_succeeds_on_its_third_attempt(sandbox: Sandbox) {
    let counter = sandbox.scratch().join("attempts");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; echo \"attempt $SLUICE_ATTEMPT\"; [ $n -ge 3 ]",
        c = counter.display()
    );
    let mut flaky = shell("flaky", &script, &[]);
    flaky.retries = 2;
    flaky.retry_interval = Duration::from_millis(200);
    let id = sandbox.run(sandbox.apply(&workflow("retries", vec![flaky])).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "[{}] {tasks:?}", sandbox.name());
    let t = task(&tasks, "flaky");
    assert_eq!((t.state, t.attempt, t.failovers, t.exit_code), (TaskState::Success, 3, 0, Some(0)));
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "3");
    sandbox.shutdown().await;
}

async fn a_timeout_with_strategy_fail_kills_the_process_group(sandbox: Sandbox) {
    let dir = sandbox.scratch();
    let script = format!(
        "echo $$ > {d}/leader.pid; sleep 60 & echo $! > {d}/child.pid; sleep 60",
        d = dir.display()
    );
    let mut slow = shell("slow", &script, &[]);
    slow.timeout = Some(Duration::from_secs(2));
    slow.timeout_strategy = TimeoutStrategy::Fail;
    slow.retries = 0;
    let id = sandbox.run(sandbox.apply(&workflow("timeout", vec![slow, shell("after", "echo never", &["slow"])])).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Failure, "[{}] {tasks:?}", sandbox.name());
    assert_eq!(tasks.len(), 1, "the downstream task must not run");
    let t = task(&tasks, "slow");
    assert_eq!(t.state, TaskState::Failure);
    let ran = t.end_time.unwrap() - t.start_time.unwrap();
    assert!(ran >= chrono::Duration::seconds(2) && ran < chrono::Duration::seconds(30), "ran {ran}");
    for pid_file in ["leader.pid", "child.pid"] {
        let pid = std::fs::read_to_string(dir.join(pid_file)).unwrap();
        assert!(!pid_alive(&pid), "[{}] {pid_file} {} survived the timeout", sandbox.name(), pid.trim());
    }
    sandbox.shutdown().await;
}

/// a fails; c → d is another branch.
fn two_branches(strategy: FailureStrategy, c_script: &str) -> WorkflowSpec {
    let mut spec = workflow(
        "branches",
        vec![
            shell("a", "sleep 0.5; exit 3", &[]),
            shell("b", "echo b", &["a"]),
            shell("c", c_script, &[]),
            shell("d", "echo d", &["c"]),
        ],
    );
    spec.failure_strategy = strategy;
    spec
}

async fn failure_strategy_continue_runs_the_other_branch(sandbox: Sandbox) {
    let id = sandbox.run(sandbox.apply(&two_branches(FailureStrategy::Continue, "sleep 1.5")).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Failure, "[{}] {tasks:?}", sandbox.name());
    assert_eq!((task(&tasks, "a").state, task(&tasks, "a").exit_code), (TaskState::Failure, Some(3)));
    assert_eq!(task(&tasks, "c").state, TaskState::Success);
    assert_eq!(task(&tasks, "d").state, TaskState::Success, "d is not below the failure and must run");
    assert!(tasks.iter().all(|t| t.name != "b"), "b is below the failure and must not run");
    sandbox.shutdown().await;
}

async fn failure_strategy_end_kills_the_other_branch(sandbox: Sandbox) {
    end_kills_the_other_branch(sandbox, None).await;
}

/// The sibling killed by `end` may still be queued when the failure comes
/// (a busy worker, a slow take): it is killed all the same, and never gets
/// a start time. Here it is certain: no worker serves its group.
async fn failure_strategy_end_kills_a_sibling_that_never_started(sandbox: Sandbox) {
    end_kills_the_other_branch(sandbox, Some("nobody")).await;
}

/// `a` fails under `end` while `c` (`sleep 30`, in `c_group` if given) is
/// running or queued: `c` is killed, and nothing new starts.
async fn end_kills_the_other_branch(sandbox: Sandbox, c_group: Option<&str>) {
    let mut spec = two_branches(FailureStrategy::End, "sleep 30");
    if let Some(group) = c_group {
        spec.tasks.iter_mut().find(|t| t.name == "c").expect("task c").worker_group = Some(WorkerGroup::new(group).unwrap());
    }
    let submitted = std::time::Instant::now();
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    let took = submitted.elapsed();
    assert_eq!(wi.state, WorkflowState::Failure, "[{}] {tasks:?}", sandbox.name());
    assert_eq!(task(&tasks, "a").state, TaskState::Failure);
    let c = task(&tasks, "c");
    assert_eq!(c.state, TaskState::Killed, "[{}] the sibling is killed, running or queued: {c:?}", sandbox.name());
    // Whether `c` had started when `a` failed is up to the worker; either
    // way the run did not wait for its 30 s.
    assert!(took < Duration::from_secs(20), "[{}] the run took {took:?}: c was not cut short", sandbox.name());
    if let (Some(start), Some(end)) = (c.start_time, c.end_time) {
        assert!(end - start < chrono::Duration::seconds(20), "[{}] c ran from {start} to {end}", sandbox.name());
    }
    if c_group.is_some() {
        assert_eq!(c.start_time, None, "[{}] no worker serves c's group, yet it started", sandbox.name());
    }
    assert!(tasks.iter().all(|t| t.name != "b" && t.name != "d"), "nothing new starts after the failure");
    sandbox.shutdown().await;
}

async fn queued_tasks_start_in_priority_order_on_a_one_slot_worker(mut sandbox: Sandbox) {
    // 20 independent tasks in a group no worker serves yet, so all of them
    // are queued before the one-slot worker arrives.
    let priorities = [Priority::Low, Priority::Highest, Priority::Medium, Priority::Lowest, Priority::High];
    let tasks: Vec<TaskSpec> = (0..20)
        .map(|i| {
            let mut t = shell(&format!("t{i:02}"), "true", &[]);
            t.priority = priorities[i % priorities.len()];
            t
        })
        .collect();
    let mut spec = workflow("priorities", tasks);
    spec.worker_group = WorkerGroup::new("single").unwrap();
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    sandbox
        .wait_until(id, MINUTE, "all 20 tasks queued", |_, tasks| {
            tasks.len() == 20 && tasks.iter().all(|t| t.state == TaskState::Dispatched)
        })
        .await;
    sandbox.add_worker(&["single"], 1).await;
    let (wi, mut tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "[{}] {tasks:?}", sandbox.name());
    tasks.sort_by_key(|t| (t.start_time.unwrap(), t.id));
    let started: Vec<(u8, i64)> = tasks.iter().map(|t| (t.priority.rank(), t.id.get())).collect();
    let mut expected = started.clone();
    expected.sort();
    assert_eq!(started, expected, "[{}] tasks did not start in (priority, id) order", sandbox.name());
    for pair in tasks.windows(2) {
        assert!(pair[0].end_time.unwrap() <= pair[1].start_time.unwrap(), "one slot: no overlap");
    }
    sandbox.shutdown().await;
}

async fn a_running_task_can_be_killed(sandbox: Sandbox) {
    let dir = sandbox.scratch();
    let script = format!("echo $$ > {}/victim.pid; sleep 60", dir.display());
    let spec = workflow("kill", vec![shell("victim", &script, &[]), shell("after", "echo after", &["victim"])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    sandbox.wait_until(id, MINUTE, "victim running", |_, t| t.iter().any(|t| t.name == "victim" && t.state == TaskState::Running)).await;
    sandbox.kill_task(id, "victim").await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Failure, "[{}] {tasks:?}", sandbox.name());
    assert_eq!(task(&tasks, "victim").state, TaskState::Killed);
    assert_eq!(tasks.len(), 1);
    let pid = std::fs::read_to_string(dir.join("victim.pid")).unwrap();
    assert!(!pid_alive(&pid), "the killed process is still alive");
    sandbox.shutdown().await;
}

async fn a_workflow_instance_can_be_stopped(sandbox: Sandbox) {
    let spec = workflow(
        "stop",
        vec![shell("one", "sleep 60", &[]), shell("two", "sleep 60", &[]), shell("three", "echo three", &["one"])],
    );
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    sandbox
        .wait_until(id, MINUTE, "both running", |_, t| t.iter().filter(|t| t.state == TaskState::Running).count() == 2)
        .await;
    sandbox.stop(id).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Stopped, "[{}] {tasks:?}", sandbox.name());
    assert!(tasks.iter().all(|t| t.state == TaskState::Killed), "{tasks:?}");
    assert_eq!(tasks.len(), 2);
    sandbox.shutdown().await;
}

/// Queued tasks no worker fetched are killed by the stop's own write (not
/// after one queue removal each); their entries leave the queue after, and
/// a ticket a worker took before the stop, but fetched only after, is
/// refused as stale.
async fn a_stop_kills_queued_tasks_and_a_ticket_taken_before_it_never_runs(mut sandbox: Sandbox) {
    let ran = sandbox.scratch().join("ran");
    let tasks: Vec<TaskSpec> = (0..30).map(|i| shell(&format!("t{i:02}"), &format!("echo t{i:02} >> {}", ran.display()), &[])).collect();
    let mut spec = workflow("stop_queued", tasks);
    spec.worker_group = WorkerGroup::new("later").unwrap();
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let registry = sandbox.registry_session().await;
    let deadline = std::time::Instant::now() + MINUTE;
    while registry.queue_keys("later").await.unwrap().len() < 30 {
        assert!(std::time::Instant::now() < deadline, "[{}] 30 entries not queued within a minute", sandbox.name());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A worker's take: the entry is gone from the queue, its ticket not
    // fetched yet.
    let taken = registry.queue_try_take("later").await.unwrap().expect("an entry");

    sandbox.stop(id).await;
    // Not a figure (bench/run.sh stop has those): the taken ticket must not
    // keep the stop waiting for the watchdog's queue check a minute later.
    let (wi, tasks) = sandbox.wait_finished(id, Duration::from_secs(15)).await;
    assert_eq!(wi.state, WorkflowState::Stopped, "[{}] {tasks:?}", sandbox.name());
    assert_eq!(tasks.len(), 30);
    assert!(tasks.iter().all(|t| t.state == TaskState::Killed && t.start_time.is_none()), "[{}] {tasks:?}", sandbox.name());
    let deadline = std::time::Instant::now() + MINUTE;
    loop {
        let left = registry.queue_keys("later").await.unwrap();
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "[{}] queue entries of killed tasks left: {left:?}", sandbox.name());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The taken ticket reaches a worker now: its fetch is answered stale.
    registry.queue_put("later", &taken.key, &taken.payload).await.unwrap();
    sandbox.add_worker(&["later"], 2).await;
    let deadline = std::time::Instant::now() + MINUTE;
    while !registry.queue_keys("later").await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "[{}] the worker did not take the ticket", sandbox.name());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!ran.exists(), "[{}] a task of the stopped instance ran: {}", sandbox.name(), std::fs::read_to_string(&ran).unwrap_or_default());
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Stopped);
    assert!(tasks.iter().all(|t| t.state == TaskState::Killed && t.attempt == 1), "{tasks:?}");
    sandbox.shutdown().await;
}

async fn parameters_and_outputs_reach_downstream_tasks(sandbox: Sandbox) {
    let seen = sandbox.scratch().join("seen");
    let mut spec = workflow(
        "params",
        vec![
            shell("produce", "echo \"producing for ${dt}\"; echo '${setValue(rows=42)}'", &[]),
            shell(
                "consume",
                &format!("echo \"${{rows}} ${{dt}} $dt ${{system.workflow.name}} $[yyyy] ${{HOME:-none}}\" > {}", seen.display()),
                &["produce"],
            ),
        ],
    );
    spec.params.insert("dt".into(), "${system.biz.date}".into());
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "[{}] {tasks:?}", sandbox.name());
    assert_eq!(task(&tasks, "produce").outputs.get("rows").map(String::as_str), Some("42"));
    // A manual run's schedule time is its creation time (UTC here).
    let biz_date = (wi.created_at - chrono::Duration::days(1)).format("%Y%m%d").to_string();
    let year = wi.created_at.format("%Y").to_string();
    let home = std::env::var("HOME").unwrap_or_else(|_| "none".into());
    let got = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(got.trim(), format!("42 {biz_date} {biz_date} params {year} {home}"), "[{}]", sandbox.name());
    sandbox.shutdown().await;
}

async fn an_unresolvable_expression_fails_the_task_before_it_starts(sandbox: Sandbox) {
    let spec = workflow("broken", vec![shell("bad", "echo $[yyyyMMdd-1x]", &[]), shell("after", "echo never", &["bad"])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Failure, "[{}] {tasks:?}", sandbox.name());
    assert_eq!(tasks.len(), 1);
    let bad = task(&tasks, "bad");
    assert_eq!((bad.state, bad.host.as_deref(), bad.start_time), (TaskState::Failure, None, None), "it never reached a worker");
    let message = bad.message.as_deref().unwrap_or_default();
    assert!(message.starts_with("cannot resolve `$[yyyyMMdd-1x]`"), "[{}] {message}", sandbox.name());
    sandbox.shutdown().await;
}
