//! Run commands end to end, in both deployments: rerun, recover from
//! failure, start from tasks (each scope), pause/resume and force-success.

use std::time::Duration;

use sluice_domain::*;
use sluice_e2e::{shell, workflow, Sandbox};

sluice_e2e::both_deployments!(
    rerun_runs_every_task_again_in_the_same_instance,
    recover_runs_only_the_failed_tasks_and_what_is_below_them,
    start_from_tasks_honours_each_scope,
    pause_lets_running_tasks_finish_and_resume_goes_on,
    force_success_lets_the_downstream_run,
    backfill_runs_one_instance_per_day_with_its_business_date,
);

const MINUTE: Duration = Duration::from_secs(60);

fn task<'a>(tasks: &'a [TaskInstance], name: &str) -> &'a TaskInstance {
    tasks.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no task instance `{name}`"))
}

fn names(tasks: &[TaskInstance]) -> Vec<&str> {
    let mut n: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    n.sort();
    n
}

/// Appends the task's name to `log` when it runs.
fn logging(name: &str, log: &std::path::Path, deps: &[&str]) -> TaskSpec {
    shell(name, &format!("echo {name} >> {}", log.display()), deps)
}

async fn rerun_runs_every_task_again_in_the_same_instance(sandbox: Sandbox) {
    let log = sandbox.scratch().join("ran");
    let spec = workflow("rerun", vec![logging("a", &log, &[]), logging("b", &log, &["a"]), logging("c", &log, &["b"])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (first, _) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(first.state, WorkflowState::Success);
    sandbox.command(id, CommandKind::Rerun, vec![]).await;
    let (wi, tasks) = sandbox.wait_until(id, MINUTE, "rerun finished", |wi, _| wi.run == 2 && wi.state.is_final()).await;
    assert_eq!(wi.state, WorkflowState::Success, "[{}] {tasks:?}", sandbox.name());
    assert_eq!(tasks.len(), 3, "same task instances, no new ones");
    assert!(tasks.iter().all(|t| t.attempt == 2 && t.run == 2 && t.state == TaskState::Success), "{tasks:?}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "a\nb\nc\na\nb\nc\n", "in order, twice");
    sandbox.shutdown().await;
}

async fn recover_runs_only_the_failed_tasks_and_what_is_below_them(sandbox: Sandbox) {
    let dir = sandbox.scratch();
    let log = dir.join("ran");
    let flaky = format!("echo b >> {log}; [ -f {flag} ]", log = log.display(), flag = dir.join("fixed").display());
    let mut spec = workflow(
        "recover",
        vec![logging("a", &log, &[]), shell("b", &flaky, &["a"]), logging("c", &log, &["a"]), logging("d", &log, &["b"])],
    );
    spec.failure_strategy = FailureStrategy::Continue;
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Failure);
    assert_eq!(names(&tasks), ["a", "b", "c"], "d is below the failure");
    std::fs::write(dir.join("fixed"), "").unwrap();
    sandbox.command(id, CommandKind::RecoverFailure, vec![]).await;
    let (wi, tasks) = sandbox.wait_until(id, MINUTE, "recover finished", |wi, _| wi.run == 2 && wi.state.is_final()).await;
    assert_eq!(wi.state, WorkflowState::Success, "[{}] {tasks:?}", sandbox.name());
    assert_eq!((task(&tasks, "a").attempt, task(&tasks, "a").run), (1, 1), "a succeeded and is kept");
    assert_eq!((task(&tasks, "c").attempt, task(&tasks, "c").run), (1, 1), "c succeeded and is kept");
    assert_eq!((task(&tasks, "b").attempt, task(&tasks, "b").run, task(&tasks, "b").state), (2, 2, TaskState::Success));
    assert_eq!((task(&tasks, "d").attempt, task(&tasks, "d").run, task(&tasks, "d").state), (1, 2, TaskState::Success));
    let ran = std::fs::read_to_string(&log).unwrap();
    assert_eq!(ran.lines().filter(|l| *l == "a").count(), 1);
    assert_eq!(ran.lines().filter(|l| *l == "b").count(), 2);
    sandbox.shutdown().await;
}

async fn start_from_tasks_honours_each_scope(sandbox: Sandbox) {
    let spec = workflow(
        "scopes",
        vec![shell("a", "true", &[]), shell("b", "true", &["a"]), shell("c", "true", &["a"]), shell("d", "true", &["b", "c"])],
    );
    let workflow_id = sandbox.apply(&spec).await;
    for (scope, expected) in [(RunScope::Only, vec!["b"]), (RunScope::Upstream, vec!["a", "b"]), (RunScope::Downstream, vec!["b", "d"])] {
        let id = sandbox.run_from(workflow_id, &["b"], Some(scope)).await;
        let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
        assert_eq!(wi.state, WorkflowState::Success, "[{}] {scope}: {tasks:?}", sandbox.name());
        assert_eq!(names(&tasks), expected, "[{}] scope {scope}", sandbox.name());
        assert_eq!((wi.start_tasks.clone(), wi.scope), (vec!["b".to_string()], Some(scope)));
    }
    sandbox.shutdown().await;
}

async fn pause_lets_running_tasks_finish_and_resume_goes_on(sandbox: Sandbox) {
    let spec = workflow("pause", vec![shell("one", "sleep 1.5", &[]), shell("two", "true", &["one"])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    sandbox.wait_until(id, MINUTE, "one running", |_, t| t.iter().any(|t| t.name == "one" && t.state == TaskState::Running)).await;
    sandbox.command(id, CommandKind::Pause, vec![]).await;
    let (wi, tasks) = sandbox.wait_until(id, MINUTE, "paused", |wi, _| wi.state == WorkflowState::Paused).await;
    assert_eq!(task(&tasks, "one").state, TaskState::Success, "the running task finished");
    assert_eq!(names(&tasks), ["one"], "[{}] nothing new started while pausing", sandbox.name());
    assert!(wi.end_time.is_none());
    sandbox.command(id, CommandKind::Resume, vec![]).await;
    let (wi, tasks) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "[{}] {tasks:?}", sandbox.name());
    assert_eq!(names(&tasks), ["one", "two"]);
    sandbox.shutdown().await;
}

async fn force_success_lets_the_downstream_run(sandbox: Sandbox) {
    let spec = workflow("force", vec![shell("broken", "exit 4", &[]), shell("after", "true", &["broken"])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (wi, _) = sandbox.wait_finished(id, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Failure);
    sandbox.command(id, CommandKind::ForceSuccess, vec!["broken".into()]).await;
    let (wi, tasks) = sandbox.wait_until(id, MINUTE, "after ran", |wi, _| wi.run == 2 && wi.state.is_final()).await;
    assert_eq!(wi.state, WorkflowState::Success, "[{}] {tasks:?}", sandbox.name());
    let broken = task(&tasks, "broken");
    assert_eq!((broken.state, broken.attempt, broken.exit_code), (TaskState::ForcedSuccess, 1, Some(4)), "not run again");
    assert_eq!(task(&tasks, "after").state, TaskState::Success);
    sandbox.shutdown().await;
}

async fn backfill_runs_one_instance_per_day_with_its_business_date(sandbox: Sandbox) {
    use chrono::TimeZone;
    let dir = sandbox.scratch();
    let script = format!("echo \"$SLUICE_WORKFLOW_INSTANCE_ID ${{system.biz.date}}\" >> {}/dates; sleep 0.3", dir.display());
    let workflow_id = sandbox.apply(&workflow("daily", vec![shell("load", &script, &[])])).await;
    let days: Vec<chrono::DateTime<chrono::Utc>> = (1..=10).map(|d| chrono::Utc.with_ymd_and_hms(2026, 3, d, 0, 0, 0).unwrap()).collect();
    for parallelism in [1, 3] {
        std::fs::remove_file(dir.join("dates")).ok();
        let backfill = sandbox
            .store()
            .create_backfill(&NewBackfill { workflow_id, workflow_version: 1, schedule_times: days.clone(), parallelism, params: Params::new() })
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let runs = loop {
            let b = sandbox.store().backfill(backfill.id).await.unwrap().unwrap();
            if b.state == BackfillState::Done {
                break sandbox
                    .store()
                    .list_workflow_instances(&InstanceFilter { backfill_id: Some(backfill.id), limit: 100, ..Default::default() })
                    .await
                    .unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "[{}] backfill not done: {b:?}", sandbox.name());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(runs.len(), 10, "[{}] one instance per day", sandbox.name());
        assert!(runs.iter().all(|r| r.state == WorkflowState::Success), "[{}] {runs:?}", sandbox.name());
        // Each run printed the business date of its own schedule time: the day before.
        let printed = std::fs::read_to_string(dir.join("dates")).unwrap();
        for run in &runs {
            let want = (run.schedule_time.unwrap() - chrono::Duration::days(1)).format("%Y%m%d").to_string();
            assert!(printed.lines().any(|l| l == format!("{} {want}", run.id)), "[{}] run {} did not print {want}:\n{printed}", sandbox.name(), run.id);
        }
        let mut times: Vec<_> = runs.iter().map(|r| r.schedule_time.unwrap()).collect();
        times.sort();
        assert_eq!(times, days);
        // Concurrency: never more than the parallelism.
        let spans: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = runs.iter().map(|r| (r.start_time.unwrap(), r.end_time.unwrap())).collect();
        let max_overlap = spans.iter().map(|(s, _)| spans.iter().filter(|(s2, e2)| s2 <= s && s < e2).count()).max().unwrap();
        assert!(max_overlap <= parallelism as usize, "[{}] {max_overlap} runs at once with parallelism {parallelism}", sandbox.name());
        if parallelism > 1 {
            assert!(max_overlap > 1, "[{}] parallel backfill ran one at a time", sandbox.name());
        }
        if parallelism == 1 {
            let mut by_time = runs.clone();
            by_time.sort_by_key(|r| r.schedule_time);
            for pair in by_time.windows(2) {
                assert!(pair[0].end_time.unwrap() <= pair[1].start_time.unwrap(), "[{}] serial runs overlapped", sandbox.name());
            }
        }
    }
    sandbox.shutdown().await;
}
