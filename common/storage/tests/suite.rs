//! The storage contract: one suite, run against SQLite (a file) and the real
//! PostgreSQL server (a fresh database per test).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use sluice_domain::*;
use sluice_storage::{Backend, Fired, PgStore, PoolOptions, RunWrite, ScheduledFire, SqliteStore, Store, StoreError};

/// Keeps a test's database alive for as long as the store is used.
enum Fixture {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] sluice_testkit::postgres::TempDatabase),
}

async fn sqlite() -> (Arc<dyn Store>, Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.db");
    let store = SqliteStore::open(path.to_str().unwrap(), PoolOptions::sized(4)).await.unwrap();
    (Arc::new(store), Fixture::Sqlite(dir))
}

async fn postgres() -> (Arc<dyn Store>, Fixture) {
    let db = tokio::task::spawn_blocking(sluice_testkit::postgres::TempDatabase::create).await.unwrap();
    let store = PgStore::open(db.url(), PoolOptions::sized(4)).await.unwrap();
    (Arc::new(store), Fixture::Postgres(db))
}

/// Instantiates every listed test once per backend.
macro_rules! store_suite {
    ($($test:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (store, _fixture) = super::sqlite().await;
                    assert_eq!(store.backend(), sluice_storage::Backend::Sqlite);
                    super::$test(store).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (store, _fixture) = super::postgres().await;
                    assert_eq!(store.backend(), sluice_storage::Backend::Postgres);
                    super::$test(store).await;
                }
            )+
        }
    };
}

store_suite!(
    projects_are_unique_by_name,
    workflows_are_versioned_only_when_they_change,
    old_versions_stay_readable,
    workflows_are_found_by_name_description_or_task,
    deleting_a_workflow_removes_its_definition,
    schedules_are_upserted_and_toggled,
    a_fire_time_becomes_one_command,
    fires_of_many_schedules_are_written_together,
    fires_prepared_ahead_are_published_at_their_time,
    a_schedule_offline_before_its_fire_time_does_not_fire,
    competing_masters_claim_each_command_once,
    commands_for_an_owned_instance_go_to_its_owner,
    released_commands_can_be_claimed_again,
    submit_run_creates_instance_and_command_together,
    instances_are_listed_newest_first_with_filters,
    stale_fences_are_refused,
    task_instances_are_created_and_updated_under_the_fence,
    task_instances_can_be_created_dispatched,
    a_task_has_one_row_per_workflow_instance,
    task_updates_and_their_successors_are_written_together,
    state_changes_are_compare_and_set_through_the_table,
    alike_changes_of_many_tasks_are_written_in_batches,
    a_write_consumes_its_commands_or_nothing,
    a_second_waiting_restart_is_refused,
    a_workflow_with_unfinished_instances_is_not_deleted,
    a_command_becomes_an_instance_atomically,
    backfills_create_runs_in_order_within_their_parallelism,
    a_finished_backfill_is_done,
    retention_deletes_only_old_finished_history,
);

fn task(name: &str, deps: &[&str]) -> TaskSpec {
    let mut t = TaskSpec::new(name, "shell");
    t.body.insert("script".into(), format!("echo {name}").into());
    t.deps = deps.iter().map(|d| d.to_string()).collect();
    t
}

fn diamond(name: &str) -> WorkflowSpec {
    WorkflowSpec {
        name: name.into(),
        description: "a diamond".into(),
        params: [("dt".to_string(), "${system.biz.date}".to_string())].into(),
        failure_strategy: FailureStrategy::End,
        priority: Priority::High,
        worker_group: WorkerGroup::default(),
        tasks: vec![task("a", &[]), task("b", &["a"]), task("c", &["a"]), task("d", &["b", "c"])],
    }
}

async fn project(store: &Arc<dyn Store>, name: &str) -> Project {
    store.create_project(name, "", &Params::new()).await.unwrap()
}

async fn workflow(store: &Arc<dyn Store>) -> (Project, WorkflowDefinition) {
    let p = project(store, "demo").await;
    store.save_workflow(p.id, &diamond("etl")).await.unwrap();
    let w = store.workflow(p.id, "etl", None).await.unwrap().unwrap();
    (p, w)
}

fn new_instance(w: &WorkflowDefinition, owner: Option<&str>) -> NewWorkflowInstance {
    NewWorkflowInstance { owner: owner.map(str::to_owned), ..NewWorkflowInstance::start(w) }
}

/// A new instance of task `name` of `w` in `wi`.
fn new_task_of(w: &WorkflowDefinition, wi: &WorkflowInstance, name: &str) -> NewTaskInstance {
    let def = w.task(name).unwrap();
    NewTaskInstance {
        workflow_instance_id: wi.id,
        task_definition_id: def.id,
        name: name.to_string(),
        task_type: def.spec.task_type.clone(),
        priority: Priority::Medium,
        worker_group: WorkerGroup::default(),
        max_retries: 1,
        run: 1,
        events: Vec::new(),
        message: None,
    }
}

/// The events that take a new workflow instance to `state`.
fn workflow_path(state: WorkflowState) -> Vec<WorkflowEvent> {
    use WorkflowEvent as E;
    match state {
        WorkflowState::Submitted => vec![],
        WorkflowState::Running => vec![E::Start],
        WorkflowState::ReadyPause => vec![E::Start, E::Pause],
        WorkflowState::Paused => vec![E::Start, E::Pause, E::Paused],
        WorkflowState::ReadyStop => vec![E::Start, E::Stop],
        WorkflowState::Stopped => vec![E::Start, E::Stop, E::Stopped],
        WorkflowState::Success => vec![E::Start, E::Succeed],
        WorkflowState::Failure => vec![E::Start, E::Fail],
        WorkflowState::NeedFailover => vec![E::Start, E::OwnerLost],
    }
}

/// Moves `wi` (as stored) to `state`, with `update`.
async fn move_instance(store: &Arc<dyn Store>, wi: &WorkflowInstance, state: WorkflowState, update: WorkflowUpdate) -> WorkflowInstance {
    let current = store.workflow_instance(wi.id).await.unwrap().unwrap();
    let mut events = workflow_path(state);
    let done = workflow_path(current.state);
    assert!(events.starts_with(&done), "cannot go from {} to {state} in a test", current.state);
    events.drain(..done.len());
    store.change_workflow(current.fence(), &WorkflowChange { from: current.state, events, update }).await.unwrap()
}

/// A change of `task` by `events`.
fn change(task: &TaskInstance, events: &[TaskEvent], update: TaskUpdate) -> TaskChange {
    TaskChange::new(task, events.to_vec(), update)
}

async fn projects_are_unique_by_name(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    let params: Params = [("region".to_string(), "eu".to_string())].into();
    let p = store.create_project("demo", "first project", &params).await.unwrap();
    assert_eq!(p.name, "demo");
    assert_eq!(p.params, params);
    let err = store.create_project("demo", "again", &Params::new()).await.unwrap_err();
    assert!(matches!(&err, StoreError::Conflict(m) if m == "project `demo` already exists"), "{err}");
    store.create_project("another", "", &Params::new()).await.unwrap();
    assert_eq!(store.project("demo").await.unwrap().unwrap(), p);
    assert_eq!(store.project_by_id(p.id).await.unwrap().unwrap(), p);
    assert!(store.project("missing").await.unwrap().is_none());
    let names: Vec<String> = store.list_projects().await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["another", "demo"]);
}

async fn workflows_are_versioned_only_when_they_change(store: Arc<dyn Store>) {
    let p = project(&store, "demo").await;
    let first = store.save_workflow(p.id, &diamond("etl")).await.unwrap();
    assert_eq!((first.version, first.created), (1, true));

    // The same workflow with tasks listed in another order is unchanged.
    let mut same = diamond("etl");
    same.tasks.reverse();
    let again = store.save_workflow(p.id, &same).await.unwrap();
    assert_eq!((again.id, again.version, again.created), (first.id, 1, false));

    // Changing one task makes version 2; only that task gets a new version.
    let mut changed = diamond("etl");
    changed.tasks[1].retries = 3;
    let second = store.save_workflow(p.id, &changed).await.unwrap();
    assert_eq!((second.id, second.version, second.created), (first.id, 2, true));
    let v1 = store.workflow(p.id, "etl", Some(1)).await.unwrap().unwrap();
    let v2 = store.workflow(p.id, "etl", None).await.unwrap().unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.task("b").unwrap().version, 2);
    assert_eq!(v2.task("b").unwrap().spec.retries, 3);
    for unchanged in ["a", "c", "d"] {
        assert_eq!(v2.task(unchanged).unwrap().id, v1.task(unchanged).unwrap().id, "{unchanged}");
    }

    // Changing only an edge makes a new workflow version, no new task version.
    let mut rewired = changed.clone();
    rewired.tasks[3].deps = vec!["b".into()];
    let third = store.save_workflow(p.id, &rewired).await.unwrap();
    assert_eq!(third.version, 3);
    let v3 = store.workflow_by_id(first.id, None).await.unwrap().unwrap();
    assert_eq!(v3.task("d").unwrap().spec.deps, ["b"]);
    assert_eq!(v3.task("d").unwrap().id, v2.task("d").unwrap().id);
    assert_eq!(v3.spec(), rewired.normalized());

    let versions: Vec<u32> = store.workflow_versions(first.id).await.unwrap().iter().map(|v| v.version).collect();
    assert_eq!(versions, [3, 2, 1]);

    // A workflow needs an existing project.
    let err = store.save_workflow(ProjectId(999_999), &diamond("x")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

async fn old_versions_stay_readable(store: Arc<dyn Store>) {
    let p = project(&store, "demo").await;
    store.save_workflow(p.id, &diamond("etl")).await.unwrap();
    let mut smaller = diamond("etl");
    smaller.tasks.truncate(2);
    smaller.description = "shrunk".into();
    store.save_workflow(p.id, &smaller).await.unwrap();
    let v1 = store.workflow(p.id, "etl", Some(1)).await.unwrap().unwrap();
    assert_eq!(v1.tasks.len(), 4);
    assert_eq!(v1.spec(), diamond("etl").normalized());
    assert_eq!(v1.project, "demo");
    assert_eq!(v1.priority, Priority::High);
    assert_eq!(v1.params["dt"], "${system.biz.date}");
    let v2 = store.workflow(p.id, "etl", Some(2)).await.unwrap().unwrap();
    assert_eq!((v2.tasks.len(), v2.description.as_str()), (2, "shrunk"));
    assert!(store.workflow(p.id, "etl", Some(3)).await.unwrap().is_none());
    assert!(store.workflow(p.id, "nope", None).await.unwrap().is_none());
}

async fn workflows_are_found_by_name_description_or_task(store: Arc<dyn Store>) {
    let p = project(&store, "demo").await;
    let other = project(&store, "other").await;
    let mut sales = diamond("daily_sales");
    sales.description = "Loads the SALES cube".into();
    store.save_workflow(p.id, &sales).await.unwrap();
    let mut users = diamond("users");
    users.description = "user dimension".into();
    users.tasks[0].name = "extract_100%".into();
    users.tasks[1].deps = vec!["extract_100%".into()];
    users.tasks[2].deps = vec!["extract_100%".into()];
    store.save_workflow(p.id, &users).await.unwrap();
    store.save_workflow(other.id, &diamond("daily_other")).await.unwrap();

    let names = |list: Vec<WorkflowSummary>| list.into_iter().map(|w| w.name).collect::<Vec<_>>();
    assert_eq!(names(store.list_workflows(p.id, None).await.unwrap()), ["daily_sales", "users"]);
    assert_eq!(names(store.list_workflows(p.id, Some("DAILY")).await.unwrap()), ["daily_sales"]);
    assert_eq!(names(store.list_workflows(p.id, Some("sales cube")).await.unwrap()), ["daily_sales"]);
    assert_eq!(names(store.list_workflows(p.id, Some("100%")).await.unwrap()), ["users"]);
    // `%` and `_` in the query are literal, not wildcards.
    assert!(names(store.list_workflows(p.id, Some("%")).await.unwrap()) == ["users"]);
    assert!(store.list_workflows(p.id, Some("nothing")).await.unwrap().is_empty());
}

async fn deleting_a_workflow_removes_its_definition(store: Arc<dyn Store>) {
    let (p, w) = workflow(&store).await;
    store
        .set_schedule(w.id, &ScheduleSpec {
            trigger: Trigger::Cron { expression: "0 0 2 * * ?".into(), timezone: "UTC".into() },
            start: None,
            end: None,
            misfire: MisfirePolicy::Skip,
        })
        .await
        .unwrap();
    store.insert_command(&NewCommand::start(w.id)).await.unwrap();
    assert!(store.delete_workflow(w.id).await.unwrap());
    assert!(store.workflow(p.id, "etl", None).await.unwrap().is_none());
    assert!(store.schedule(w.id).await.unwrap().is_none());
    assert!(store.unclaimed_commands().await.unwrap().is_empty());
    assert!(!store.delete_workflow(w.id).await.unwrap());
    // The name is free again, starting over at version 1.
    assert_eq!(store.save_workflow(p.id, &diamond("etl")).await.unwrap().version, 1);
}

async fn schedules_are_upserted_and_toggled(store: Arc<dyn Store>) {
    let (_, w) = workflow(&store).await;
    assert!(store.schedule(w.id).await.unwrap().is_none());
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let cron = ScheduleSpec {
        trigger: Trigger::Cron { expression: "0 30 2 * * ?".into(), timezone: "Asia/Shanghai".into() },
        start: Some(start),
        end: None,
        misfire: MisfirePolicy::RunAll,
    };
    let s = store.set_schedule(w.id, &cron).await.unwrap();
    assert_eq!((s.trigger.clone(), s.start, s.online, s.misfire), (cron.trigger.clone(), Some(start), false, MisfirePolicy::RunAll));
    assert!(store.online_schedules().await.unwrap().is_empty());
    let online = store.set_schedule_online(w.id, true).await.unwrap();
    assert!(online.online);
    assert_eq!(store.online_schedules().await.unwrap(), vec![online.clone()]);

    // Replacing the trigger keeps the id and the online flag.
    let every = ScheduleSpec {
        trigger: Trigger::Interval { every: Duration::from_secs(300), times: Some(10) },
        start: None,
        end: None,
        misfire: MisfirePolicy::Skip,
    };
    let replaced = store.set_schedule(w.id, &every).await.unwrap();
    assert_eq!((replaced.id, replaced.online, replaced.trigger), (s.id, true, every.trigger));
    let err = store.set_schedule_online(WorkflowId(424242), true).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

/// `schedule`'s fire at `at`, planned from it as it is.
fn fire_of(schedule: &Schedule, at: Timestamp) -> ScheduledFire {
    ScheduledFire { schedule: schedule.clone(), at }
}

fn every_two_seconds() -> ScheduleSpec {
    ScheduleSpec {
        trigger: Trigger::Interval { every: Duration::from_secs(2), times: None },
        start: None,
        end: None,
        misfire: MisfirePolicy::RunOnce,
    }
}

/// A schedule of a new workflow `name`, online.
async fn online_schedule(store: &Arc<dyn Store>, project: ProjectId, name: &str) -> Schedule {
    store.save_workflow(project, &diamond(name)).await.unwrap();
    let w = store.workflow(project, name, None).await.unwrap().unwrap();
    store.set_schedule(w.id, &every_two_seconds()).await.unwrap();
    store.set_schedule_online(w.id, true).await.unwrap()
}

async fn a_fire_time_becomes_one_command(store: Arc<dyn Store>) {
    let p = project(&store, "demo").await;
    let s = online_schedule(&store, p.id, "etl").await;
    let fire = Utc.with_ymd_and_hms(2026, 3, 1, 2, 30, 0).unwrap();
    let planned = fire_of(&s, fire);

    // Two would-be leaders fire the same time at once: one command results.
    let (a, b) = tokio::join!(store.insert_scheduled_command(&planned), store.insert_scheduled_command(&planned));
    let mut outcomes = [a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|o| matches!(o, Fired::AlreadyFired));
    assert!(matches!(outcomes, [Fired::Written(_), Fired::AlreadyFired]), "{outcomes:?}");
    assert_eq!(store.schedule(s.workflow_id).await.unwrap().unwrap().last_fire, Some(fire));

    let next = fire_of(&s, fire + chrono::Duration::seconds(2));
    assert!(matches!(store.insert_scheduled_command(&next).await.unwrap(), Fired::Written(_)));
    // An older fire time never moves last_fire backwards.
    let older = fire_of(&s, fire - chrono::Duration::seconds(2));
    assert!(matches!(store.insert_scheduled_command(&older).await.unwrap(), Fired::Written(_)));
    assert_eq!(store.schedule(s.workflow_id).await.unwrap().unwrap().last_fire, Some(fire + chrono::Duration::seconds(2)));
    let stored = store.unclaimed_commands().await.unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0].spec, planned.command());
}

async fn fires_of_many_schedules_are_written_together(store: Arc<dyn Store>) {
    let fire = Utc.with_ymd_and_hms(2026, 3, 1, 2, 30, 0).unwrap();
    let p = project(&store, "demo").await;
    let mut fires = Vec::new();
    for i in 0..3 {
        fires.push(fire_of(&online_schedule(&store, p.id, &format!("etl{i}")).await, fire));
    }
    // The second schedule's time was fired already (another leader).
    assert!(matches!(store.insert_scheduled_command(&fires[1]).await.unwrap(), Fired::Written(_)));
    // The same fire twice in one batch also becomes one command.
    let batch = vec![fires[0].clone(), fires[1].clone(), fires[2].clone(), fires[2].clone()];
    let outcomes = store.insert_scheduled_commands(&batch, Utc::now()).await.unwrap();
    assert!(
        matches!(outcomes[..], [Fired::Written(_), Fired::AlreadyFired, Fired::Written(_), Fired::AlreadyFired]),
        "{outcomes:?}"
    );
    assert_eq!(store.unclaimed_commands().await.unwrap().len(), 3);
    for f in &fires {
        assert_eq!(store.schedule(f.schedule.workflow_id).await.unwrap().unwrap().last_fire, Some(fire));
    }
}

/// The cron leader writes a fire ahead of its time; nobody may see it
/// before then, and it is visible as soon as the time comes.
async fn fires_prepared_ahead_are_published_at_their_time(store: Arc<dyn Store>) {
    let p = project(&store, "demo").await;
    let s = online_schedule(&store, p.id, "etl").await;
    let planned = fire_of(&s, Utc.with_ymd_and_hms(2026, 3, 1, 2, 30, 0).unwrap());
    let publish_at = Utc::now() + chrono::Duration::milliseconds(800);
    let writing = tokio::spawn({
        let store = store.clone();
        async move { store.insert_scheduled_commands(&[planned], publish_at).await }
    });
    // Looked at while the fire is prepared: nothing yet, on either backend.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.unclaimed_commands().await.unwrap().is_empty(), "a fire is visible before its time");
    let outcomes = writing.await.unwrap().unwrap();
    let published = Utc::now();
    assert!(matches!(outcomes[..], [Fired::Written(_)]), "{outcomes:?}");
    assert!(published >= publish_at, "returned at {published}, before {publish_at}");
    let stored = store.unclaimed_commands().await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].created_at >= publish_at - chrono::Duration::milliseconds(1), "stamped {}", stored[0].created_at);
}

/// A fire prepared ahead of its time and a schedule taken offline (or
/// changed) before that time: the offline wins, whenever the fire was
/// prepared. The fire is prepared first (PostgreSQL has written it and
/// holds the commit; SQLite waits for its time); what the test waits for
/// before the offline does not decide the outcome, only that the offline
/// is committed before the fire time, with seconds to spare.
async fn a_schedule_offline_before_its_fire_time_does_not_fire(store: Arc<dyn Store>) {
    let p = project(&store, "demo").await;
    let offline = online_schedule(&store, p.id, "offline").await;
    let changed = online_schedule(&store, p.id, "changed").await;
    let toggled = online_schedule(&store, p.id, "toggled").await;
    let kept = online_schedule(&store, p.id, "kept").await;
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 2, 30, 0).unwrap();
    let fires: Vec<ScheduledFire> = [&offline, &changed, &toggled, &kept].into_iter().map(|s| fire_of(s, at)).collect();
    let publish_at = Utc::now() + chrono::Duration::seconds(3);
    let writing = tokio::spawn({
        let store = store.clone();
        async move { store.insert_scheduled_commands(&fires, publish_at).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    store.set_schedule_online(offline.workflow_id, false).await.unwrap();
    let every_minute = ScheduleSpec { trigger: Trigger::Interval { every: Duration::from_secs(60), times: None }, ..every_two_seconds() };
    store.set_schedule(changed.workflow_id, &every_minute).await.unwrap();
    // Offline and back online before the fire time: online when it comes.
    store.set_schedule_online(toggled.workflow_id, false).await.unwrap();
    store.set_schedule_online(toggled.workflow_id, true).await.unwrap();
    assert!(Utc::now() < publish_at - chrono::Duration::seconds(1), "the changes took too long to prove anything");

    let outcomes = writing.await.unwrap().unwrap();
    assert!(matches!(outcomes[..], [Fired::Withdrawn, Fired::Withdrawn, Fired::Written(_), Fired::Written(_)]), "{outcomes:?}");
    let stored: Vec<Option<ScheduleId>> = store
        .unclaimed_commands()
        .await
        .unwrap()
        .iter()
        .map(|c| match &c.spec {
            NewCommand::Start(start) => start.schedule_id,
            other => panic!("not a start: {other:?}"),
        })
        .collect();
    assert_eq!(stored, [Some(toggled.id), Some(kept.id)]);
    for (s, last) in [(&offline, None), (&changed, None), (&toggled, Some(at)), (&kept, Some(at))] {
        assert_eq!(store.schedule(s.workflow_id).await.unwrap().unwrap().last_fire, last, "schedule {}", s.id);
    }
    // A deleted schedule's fire is withdrawn too.
    let gone = online_schedule(&store, p.id, "gone").await;
    store.delete_workflow(gone.workflow_id).await.unwrap();
    assert_eq!(store.insert_scheduled_command(&fire_of(&gone, at)).await.unwrap(), Fired::Withdrawn);
}

async fn competing_masters_claim_each_command_once(store: Arc<dyn Store>) {
    let (_, w) = workflow(&store).await;
    let mut expected = HashSet::new();
    for _ in 0..60 {
        expected.insert(store.insert_command(&NewCommand::start(w.id)).await.unwrap());
    }
    let masters: Vec<_> = (0..4)
        .map(|m| {
            let store = store.clone();
            tokio::spawn(async move {
                let owner = format!("master-{m}:5678");
                let mut mine = Vec::new();
                loop {
                    let batch = store.claim_commands(&owner, 7).await.unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    assert!(batch.iter().all(|c| c.owner.as_deref() == Some(owner.as_str()) && c.claimed_at.is_some()));
                    mine.extend(batch.into_iter().map(|c| (c.id, owner.clone())));
                }
                mine
            })
        })
        .collect();
    let mut claims = Vec::new();
    for m in masters {
        claims.extend(m.await.unwrap());
    }
    let claimed: Vec<CommandId> = claims.iter().map(|(id, _)| *id).collect();
    let unique: HashSet<CommandId> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), 60, "a command was claimed twice");
    assert_eq!(unique, expected);
    assert!(store.claim_commands("late", 10).await.unwrap().is_empty());
    // Only its claimer consumes a command.
    let err = store.consume_command(claims[0].0, "somebody-else:1").await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    for (id, owner) in &claims {
        store.consume_command(*id, owner).await.unwrap();
    }
    assert_eq!(store.release_commands("master-0:5678").await.unwrap(), 0);
}

async fn commands_for_an_owned_instance_go_to_its_owner(store: Arc<dyn Store>) {
    let (_, w) = workflow(&store).await;
    let running = store.create_workflow_instance(&new_instance(&w, Some("m1:5678"))).await.unwrap();
    let running = move_instance(&store, &running, WorkflowState::Running, WorkflowUpdate::default()).await;
    let stop = NewCommand::Stop(InstanceTarget::of(&running));
    store.insert_command(&stop).await.unwrap();
    assert!(store.claim_commands("m2:5678", 10).await.unwrap().is_empty());
    let claimed = store.claim_commands("m1:5678", 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].spec, stop);
    // Given back (its driver was gone): claimable by the owner again.
    store.release_command(claimed[0].id, "m2:5678").await.unwrap();
    assert!(store.claim_commands("m1:5678", 10).await.unwrap().is_empty(), "only its claimer releases it");
    store.release_command(claimed[0].id, "m1:5678").await.unwrap();
    assert_eq!(store.claim_commands("m1:5678", 10).await.unwrap().len(), 1);

    // Once the instance is at rest, any master may take a command for it.
    move_instance(&store, &running, WorkflowState::Failure, WorkflowUpdate::default()).await;
    store.insert_command(&NewCommand::Rerun(InstanceTarget::of(&running))).await.unwrap();
    assert_eq!(store.claim_commands("m2:5678", 10).await.unwrap().len(), 1);
}

async fn released_commands_can_be_claimed_again(store: Arc<dyn Store>) {
    let (_, w) = workflow(&store).await;
    for _ in 0..3 {
        store.insert_command(&NewCommand::start(w.id)).await.unwrap();
    }
    assert_eq!(store.claim_commands("dead:1", 10).await.unwrap().len(), 3);
    assert!(store.unclaimed_commands().await.unwrap().is_empty());
    assert_eq!(store.release_commands("dead:1").await.unwrap(), 3);
    let again = store.claim_commands("alive:1", 10).await.unwrap();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|c| c.owner.as_deref() == Some("alive:1")));
}

async fn submit_run_creates_instance_and_command_together(store: Arc<dyn Store>) {
    let (p, w) = workflow(&store).await;
    let run = StartRun {
        params: [("dt".to_string(), "20260101".to_string())].into(),
        start_tasks: vec!["b".into()],
        scope: Some(RunScope::Downstream),
        ..StartRun::of(w.id)
    };
    let command = NewCommand::Start(run.clone());
    let mut instance = new_instance(&w, None);
    instance.params = run.params.clone();
    instance.start_tasks = vec!["b".into()];
    instance.scope = Some(RunScope::Downstream);
    let (wi, cmd) = store.submit_run(&instance, &command).await.unwrap();
    let stored = store.workflow_instance(wi).await.unwrap().unwrap();
    assert_eq!((stored.state, stored.owner.clone(), stored.owner_epoch, stored.run), (WorkflowState::Submitted, None, 1, 1));
    assert_eq!((stored.project_id, stored.workflow_name.as_str()), (p.id, "etl"));
    assert_eq!(stored.params["dt"], "20260101");
    assert_eq!((stored.start_tasks.clone(), stored.scope), (vec!["b".to_string()], Some(RunScope::Downstream)));
    let claimed = store.claim_commands("m1:1", 10).await.unwrap();
    assert_eq!(claimed[0].id, cmd);
    assert_eq!(claimed[0].spec, NewCommand::Start(StartRun { workflow_instance_id: Some(wi), ..run }));

    // Nothing is written when the workflow does not exist.
    let mut bad = new_instance(&w, None);
    bad.workflow_id = WorkflowId(777_777);
    let err = store.submit_run(&bad, &NewCommand::start(bad.workflow_id)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert!(store.unclaimed_commands().await.unwrap().is_empty());
    let all = store.list_workflow_instances(&InstanceFilter { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 1);
}

async fn instances_are_listed_newest_first_with_filters(store: Arc<dyn Store>) {
    let (p, w) = workflow(&store).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let wi = store.create_workflow_instance(&new_instance(&w, Some("m:1"))).await.unwrap();
        if i % 3 == 0 {
            move_instance(&store, &wi, WorkflowState::Running, WorkflowUpdate::default()).await;
        }
        ids.push(wi.id);
    }
    let page1 = store.list_workflow_instances(&InstanceFilter { project_id: Some(p.id), limit: 5, ..Default::default() }).await.unwrap();
    let got: Vec<_> = page1.iter().map(|i| i.id).collect();
    let want: Vec<_> = ids.iter().rev().take(5).copied().collect();
    assert_eq!(got, want);
    let page2 = store
        .list_workflow_instances(&InstanceFilter { project_id: Some(p.id), before: Some(got[4]), limit: 5, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page2.first().unwrap().id, ids[6]);
    let running = store
        .list_workflow_instances(&InstanceFilter { state: Some(WorkflowState::Running), workflow_id: Some(w.id), limit: 100, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(running.iter().map(|i| i.id).collect::<BTreeSet<_>>(), [ids[0], ids[3], ids[6], ids[9]].into());
    let none = store
        .list_workflow_instances(&InstanceFilter { project_id: Some(ProjectId(99_999)), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(store.owned_workflow_instances("m:1").await.unwrap().len(), 12);
    assert!(store.owned_workflow_instances("other:1").await.unwrap().is_empty());
}

async fn stale_fences_are_refused(store: Arc<dyn Store>) {
    let (_, w) = workflow(&store).await;
    let wi = store.create_workflow_instance(&new_instance(&w, Some("old:1"))).await.unwrap();
    let old = wi.fence();
    let start = WorkflowChange {
        from: WorkflowState::Submitted,
        events: vec![WorkflowEvent::Start],
        update: WorkflowUpdate { start_time: Some(Some(Utc::now())), ..Default::default() },
    };
    let running = store.change_workflow(old, &start).await.unwrap();
    assert_eq!(running.state, WorkflowState::Running);
    assert!(running.start_time.is_some());

    let adopted = store.adopt_workflow_instance(wi.id, "new:1").await.unwrap();
    assert_eq!((adopted.owner.as_deref(), adopted.owner_epoch), (Some("new:1"), old.epoch + 1));

    let fail = WorkflowChange { from: WorkflowState::Running, events: vec![WorkflowEvent::Fail], update: WorkflowUpdate::default() };
    let err = store.change_workflow(old, &fail).await.unwrap_err();
    match err {
        StoreError::Fenced { workflow_instance_id, presented, current } => {
            assert_eq!((workflow_instance_id, presented, current), (wi.id, old.epoch, old.epoch + 1))
        }
        other => panic!("expected a fenced write, got {other}"),
    }
    // The refused write changed nothing; the new owner's write goes through.
    assert_eq!(store.workflow_instance(wi.id).await.unwrap().unwrap().state, WorkflowState::Running);
    let succeed = WorkflowChange {
        from: WorkflowState::Running,
        events: vec![WorkflowEvent::Succeed],
        update: WorkflowUpdate { end_time: Some(Some(Utc::now())), ..Default::default() },
    };
    let done = store.change_workflow(adopted.fence(), &succeed).await.unwrap();
    assert_eq!(done.state, WorkflowState::Success);
    assert!(store.owned_workflow_instances("new:1").await.unwrap().is_empty());

    let missing = Fence { workflow_instance_id: WorkflowInstanceId(888_888), epoch: 1 };
    let err = store.change_workflow(missing, &succeed).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

async fn task_instances_are_created_and_updated_under_the_fence(store: Arc<dyn Store>) {
    use TaskEvent as E;
    let (_, w) = workflow(&store).await;
    let wi = store.create_workflow_instance(&new_instance(&w, Some("m:1"))).await.unwrap();
    let fence = wi.fence();
    let news: Vec<NewTaskInstance> = ["a", "b"]
        .iter()
        .map(|name| NewTaskInstance { priority: Priority::Low, max_retries: 2, ..new_task_of(&w, &wi, name) })
        .collect();
    let tasks = store.create_tasks(fence, &news).await.unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!((tasks[0].state, tasks[0].attempt, tasks[0].max_retries), (TaskState::Submitted, 1, 2));

    let started = Utc::now();
    let update = TaskUpdate { host: Some(Some("worker-1:1234".into())), start_time: Some(Some(started)), ..Default::default() };
    let t = store.change_task(fence, &change(&tasks[0], &[E::Dispatch, E::Start], update)).await.unwrap();
    assert_eq!((t.state, t.host.as_deref()), (TaskState::Running, Some("worker-1:1234")));
    assert_eq!(t.start_time.unwrap().timestamp_millis(), started.timestamp_millis());
    let update = TaskUpdate { exit_code: Some(Some(3)), retry_at: Some(Some(started + chrono::Duration::seconds(30))), ..Default::default() };
    let t = store.change_task(fence, &change(&t, &[E::FailWillRetry], update)).await.unwrap();
    assert_eq!((t.state, t.exit_code, t.host.as_deref()), (TaskState::RetryWait, Some(3), Some("worker-1:1234")));
    let update = TaskUpdate { attempt: Some(2), exit_code: Some(None), host: Some(None), ..Default::default() };
    let t = store.change_task(fence, &change(&t, &[E::RetryDue], update)).await.unwrap();
    assert_eq!((t.state, t.attempt, t.exit_code, t.host.clone()), (TaskState::Submitted, 2, None, None));

    // Several changes in one transaction: in order, and all or none.
    let both = store
        .write_run(fence, &RunWrite { tasks: vec![change(&tasks[1], &[E::Dispatch], TaskUpdate::default()), change(&t, &[E::Dispatch], TaskUpdate::default())], ..Default::default() })
        .await
        .unwrap()
        .tasks;
    assert_eq!(both.iter().map(|t| (t.id, t.state)).collect::<Vec<_>>(), [(tasks[1].id, TaskState::Dispatched), (tasks[0].id, TaskState::Dispatched)]);
    let stranger = TaskChange { id: TaskInstanceId(424242), ..change(&both[1], &[E::Withdraw], TaskUpdate::default()) };
    let err = store
        .write_run(fence, &RunWrite { tasks: vec![change(&both[1], &[E::Withdraw], TaskUpdate::default()), stranger], ..Default::default() })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(store.task_instance(tasks[0].id).await.unwrap().unwrap().state, TaskState::Dispatched, "rolled back");
    for task in &both {
        store.change_task(fence, &change(task, &[E::Withdraw], TaskUpdate::default())).await.unwrap();
    }

    // After adoption, the old owner can neither update nor create tasks.
    store.adopt_workflow_instance(wi.id, "m2:1").await.unwrap();
    let current = store.task_instance(tasks[1].id).await.unwrap().unwrap();
    let err = store.change_task(fence, &change(&current, &[E::Dispatch], TaskUpdate::default())).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    let other_news = [new_task_of(&w, &wi, "c")];
    let err = store.create_tasks(fence, &other_news).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    let listed = store.task_instances(wi.id).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].state, TaskState::Submitted);
    assert_eq!(store.task_instance(tasks[0].id).await.unwrap().unwrap().attempt, 2);

    // A task of another instance cannot be written under this fence.
    let other = store.create_workflow_instance(&new_instance(&w, Some("m:1"))).await.unwrap();
    let err = store.change_task(other.fence(), &change(&current, &[E::Dispatch], TaskUpdate::default())).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

async fn task_instances_can_be_created_dispatched(store: Arc<dyn Store>) {
    let (_, w) = workflow(&store).await;
    let wi = store.create_workflow_instance(&new_instance(&w, Some("m:1"))).await.unwrap();
    let fence = wi.fence();
    let new_task = |name: &str, events: &[TaskEvent]| NewTaskInstance { events: events.to_vec(), ..new_task_of(&w, &wi, name) };
    let skipped = NewTaskInstance { message: Some("branch `no` not taken".into()), ..new_task("c", &[TaskEvent::Skip]) };
    let tasks = store.create_tasks(fence, &[new_task("a", &[TaskEvent::Dispatch]), new_task("b", &[TaskEvent::Dispatch]), skipped]).await.unwrap();
    assert_eq!(tasks.iter().map(|t| (t.name.as_str(), t.state, t.attempt)).collect::<Vec<_>>(), [
        ("a", TaskState::Dispatched, 1),
        ("b", TaskState::Dispatched, 1),
        ("c", TaskState::Skipped, 1),
    ]);
    assert_eq!(tasks[2].message.as_deref(), Some("branch `no` not taken"));
    assert!(tasks[2].end_time.is_some(), "created final: ended when created");
    let mut stored = store.task_instances(wi.id).await.unwrap();
    stored.sort_by_key(|t| t.id);
    assert_eq!(stored, tasks, "stored as returned");
    // A path the transition table refuses creates nothing.
    let err = store.create_tasks(fence, &[new_task("d", &[TaskEvent::Start])]).await.unwrap_err();
    assert!(matches!(&err, StoreError::StaleState(m) if m.contains("`Start` is not allowed in state `submitted`")), "{err}");

    // Under the same fence as any other write: a stale owner creates nothing.
    store.adopt_workflow_instance(wi.id, "m2:1").await.unwrap();
    let err = store.create_tasks(fence, &[new_task("d", &[TaskEvent::Dispatch])]).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert_eq!(store.task_instances(wi.id).await.unwrap().len(), 3);
}

/// `(workflow_instance_id, name)` is unique: a second row of a task is
/// refused naming the task, with nothing of its write kept; a rerun reuses
/// the row (its `run` goes up) instead of adding one.
async fn a_task_has_one_row_per_workflow_instance(store: Arc<dyn Store>) {
    use TaskEvent as E;
    let (_, w) = workflow(&store).await;
    let wi = store.create_workflow_instance(&new_instance(&w, Some("m:1"))).await.unwrap();
    let fence = wi.fence();
    let new_task = |name: &str| NewTaskInstance { events: vec![E::Dispatch], ..new_task_of(&w, &wi, name) };
    let a = store.create_tasks(fence, &[new_task("a")]).await.unwrap().remove(0);

    // Against the stored row, alone or with a task that is new.
    for batch in [vec![new_task("a")], vec![new_task("b"), new_task("a")]] {
        let err = store.create_tasks(fence, &batch).await.unwrap_err();
        let expected = format!("workflow instance {} already has a task instance of `a`: nothing was written", wi.id);
        assert!(matches!(&err, StoreError::Conflict(m) if *m == expected), "{err}");
    }
    // Twice in one write, with the rest of a run write.
    let twins = RunWrite {
        tasks: vec![change(&a, &[E::Start], TaskUpdate::default())],
        create: vec![new_task("c"), new_task("c")],
        ..Default::default()
    };
    let err = store.write_run(fence, &twins).await.unwrap_err();
    assert!(matches!(&err, StoreError::Conflict(m) if m.contains("task `c` is created twice in one write")), "{err}");
    let stored = store.task_instances(wi.id).await.unwrap();
    assert_eq!(stored.iter().map(|t| (t.name.as_str(), t.state)).collect::<Vec<_>>(), [("a", TaskState::Dispatched)], "nothing else was written");

    // The same task in another instance is another row.
    let other = store.create_workflow_instance(&new_instance(&w, Some("m:1"))).await.unwrap();
    store.create_tasks(other.fence(), &[NewTaskInstance { workflow_instance_id: other.id, ..new_task("a") }]).await.unwrap();

    // A rerun restarts the row it has.
    let done = store.change_task(fence, &change(&a, &[E::Start, E::Succeed], TaskUpdate::default())).await.unwrap();
    let again = store.change_task(fence, &change(&done, &[E::Rerun], TaskUpdate { run: Some(2), ..Default::default() })).await.unwrap();
    assert_eq!((again.id, again.state, again.run), (a.id, TaskState::Submitted, 2));
    assert_eq!(store.task_instances(wi.id).await.unwrap().len(), 1);
}

/// A task's end and the tasks it unblocks are one commit: both or neither.
async fn task_updates_and_their_successors_are_written_together(store: Arc<dyn Store>) {
    let (_, w) = workflow(&store).await;
    let wi = store.create_workflow_instance(&new_instance(&w, Some("m:1"))).await.unwrap();
    let fence = wi.fence();
    let new_task = |name: &str| NewTaskInstance { events: vec![TaskEvent::Dispatch], ..new_task_of(&w, &wi, name) };
    let a = store.create_tasks(fence, &[new_task("a")]).await.unwrap().remove(0);
    let succeeded = |t: &TaskInstance| change(t, &[TaskEvent::Succeed], TaskUpdate { exit_code: Some(Some(0)), ..Default::default() });
    let written = store
        .write_run(fence, &RunWrite { tasks: vec![succeeded(&a)], create: vec![new_task("b"), new_task("c")], ..Default::default() })
        .await
        .unwrap();
    let (updated, created) = (written.tasks, written.created);
    assert_eq!(updated.iter().map(|t| (t.name.as_str(), t.state)).collect::<Vec<_>>(), [("a", TaskState::Success)]);
    assert_eq!(created.iter().map(|t| (t.name.as_str(), t.state)).collect::<Vec<_>>(), [
        ("b", TaskState::Dispatched),
        ("c", TaskState::Dispatched)
    ]);
    let mut stored = store.task_instances(wi.id).await.unwrap();
    stored.sort_by_key(|t| t.id);
    assert_eq!(stored, [updated.clone(), created.clone()].concat(), "stored as returned");

    // An update of a row that is not the instance's fails the whole write:
    // the successor it came with is not created.
    let stranger = TaskChange { id: TaskInstanceId(stored.iter().map(|t| t.id.get()).max().unwrap() + 1000), ..succeeded(&created[0]) };
    let err = store.write_run(fence, &RunWrite { tasks: vec![stranger], create: vec![new_task("d")], ..Default::default() }).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(store.task_instances(wi.id).await.unwrap().len(), 3, "nothing half-written");
    // A stale owner writes nothing.
    store.adopt_workflow_instance(wi.id, "m2:1").await.unwrap();
    let err = store.write_run(fence, &RunWrite { tasks: vec![succeeded(&created[0])], create: vec![new_task("d")], ..Default::default() }).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    let after = store.task_instances(wi.id).await.unwrap();
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|t| t.name != "b" || t.state == TaskState::Dispatched));
}

/// Every state write names the state it expects and goes through the
/// table: a stale expectation or a move the table refuses writes nothing.
async fn state_changes_are_compare_and_set_through_the_table(store: Arc<dyn Store>) {
    use TaskEvent as E;
    let (_, w) = workflow(&store).await;
    let wi = store.create_workflow_instance(&new_instance(&w, Some("m:1"))).await.unwrap();
    let fence = wi.fence();
    let created = store
        .create_tasks(fence, &[NewTaskInstance { events: vec![E::Dispatch], ..new_task_of(&w, &wi, "a") }, new_task_of(&w, &wi, "b")])
        .await
        .unwrap();
    let (a, b) = (&created[0], &created[1]);
    let running = store.change_task(fence, &change(a, &[E::Start], TaskUpdate::default())).await.unwrap();
    // Tried: the same `running` again from `dispatched` (a stale copy).
    let err = store.change_task(fence, &change(a, &[E::Start], TaskUpdate::default())).await.unwrap_err();
    assert!(matches!(&err, StoreError::StaleState(m) if m.contains("is `running`, expected `dispatched`")), "{err}");
    // Tried: `success` straight from `submitted`, which the table forbids.
    let err = store.change_task(fence, &change(b, &[E::Succeed], TaskUpdate::default())).await.unwrap_err();
    assert!(matches!(&err, StoreError::StaleState(m) if m.contains("`Succeed` is not allowed in state `submitted`")), "{err}");
    // Tried: a good change with a bad one in one write: neither is written.
    let err = store
        .write_run(fence, &RunWrite {
            tasks: vec![change(&running, &[E::Succeed], TaskUpdate { exit_code: Some(Some(0)), ..Default::default() }), change(b, &[E::Start], TaskUpdate::default())],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleState(_)), "{err}");
    assert_eq!(store.task_instance(a.id).await.unwrap().unwrap().state, TaskState::Running, "rolled back");
    // Fields only (no events) still check the state.
    let noted = store.change_task(fence, &change(&running, &[], TaskUpdate { kill_reason: Some(Some("operator".into())), ..Default::default() })).await.unwrap();
    assert_eq!((noted.state, noted.kill_reason.as_deref()), (TaskState::Running, Some("operator")));
    let branches = TaskUpdate { branches: Some(Some(vec!["yes".into()])), external_id: Some(Some("application_1_0001".into())), ..Default::default() };
    let done = store.change_task(fence, &change(&noted, &[E::Succeed], branches)).await.unwrap();
    assert_eq!((done.branches.clone(), done.external_id.as_deref()), (Some(vec!["yes".to_string()]), Some("application_1_0001")));
    assert_eq!(store.task_instance(a.id).await.unwrap().unwrap(), done, "read back as written");
    // The workflow instance too.
    let wrong = WorkflowChange { from: WorkflowState::Running, events: vec![WorkflowEvent::Succeed], update: WorkflowUpdate::default() };
    let err = store.change_workflow(fence, &wrong).await.unwrap_err();
    assert!(matches!(&err, StoreError::StaleState(m) if m.contains("is `submitted`, expected `running`")), "{err}");
    let refused = WorkflowChange { from: WorkflowState::Submitted, events: vec![WorkflowEvent::Succeed], update: WorkflowUpdate::default() };
    let err = store.change_workflow(fence, &refused).await.unwrap_err();
    assert!(matches!(&err, StoreError::StaleState(m) if m.contains("not allowed")), "{err}");
    let reason = WorkflowUpdate { reason: Some(Some("workflow 3 version 1 is gone".into())), ..Default::default() };
    let failed = store
        .change_workflow(fence, &WorkflowChange { from: WorkflowState::Submitted, events: vec![WorkflowEvent::Start, WorkflowEvent::Fail], update: reason })
        .await
        .unwrap();
    assert_eq!((failed.state, failed.reason.as_deref()), (WorkflowState::Failure, Some("workflow 3 version 1 is gone")));
}

/// A stop of a wide instance kills thousands of tasks with one write: alike
/// changes go as a few statements, rows come back in the write's order.
async fn alike_changes_of_many_tasks_are_written_in_batches(store: Arc<dyn Store>) {
    let p = project(&store, "demo").await;
    let tasks: Vec<TaskSpec> = (0..2500).map(|i| task(&format!("t{i:04}"), &[])).collect();
    let spec = WorkflowSpec { tasks, ..diamond("wide") };
    store.save_workflow(p.id, &spec).await.unwrap();
    let w = store.workflow(p.id, "wide", None).await.unwrap().unwrap();
    let wi = store.create_workflow_instance(&new_instance(&w, Some("m:1"))).await.unwrap();
    let fence = wi.fence();
    let news: Vec<NewTaskInstance> = w.tasks.iter().map(|t| NewTaskInstance { events: vec![TaskEvent::Dispatch], ..new_task_of(&w, &wi, &t.spec.name) }).collect();
    let created = store.create_tasks(fence, &news).await.unwrap();
    assert_eq!(created.len(), 2500);
    assert!(created.iter().zip(&news).all(|(t, n)| t.name == n.name), "created rows come back in the write's order");
    let now = Utc::now();
    // One in ten is running (a different change); the rest were queued.
    let mut changes: Vec<TaskChange> = created
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let events = if i % 10 == 0 { vec![TaskEvent::Start, TaskEvent::Kill] } else { vec![TaskEvent::Kill] };
            change(t, &events, TaskUpdate { end_time: Some(Some(now)), message: Some(Some("workflow instance stopped".into())), ..Default::default() })
        })
        .collect();
    changes.reverse();
    let killed = store.write_run(fence, &RunWrite { tasks: changes.clone(), ..Default::default() }).await.unwrap().tasks;
    assert_eq!(killed.iter().map(|t| t.id).collect::<Vec<_>>(), changes.iter().map(|c| c.id).collect::<Vec<_>>());
    assert!(killed.iter().all(|t| t.state == TaskState::Killed && t.end_time.is_some()));
    assert!(store.task_instances(wi.id).await.unwrap().iter().all(|t| t.state == TaskState::Killed));
}

/// A command carried out by a write is deleted by that write, or neither
/// happens.
async fn a_write_consumes_its_commands_or_nothing(store: Arc<dyn Store>) {
    let (_, w) = workflow(&store).await;
    let wi = store.create_workflow_instance(&new_instance(&w, Some("m1:1"))).await.unwrap();
    let wi = move_instance(&store, &wi, WorkflowState::Running, WorkflowUpdate::default()).await;
    let stop = store.insert_command(&NewCommand::Stop(InstanceTarget::of(&wi))).await.unwrap();
    let pause = store.insert_command(&NewCommand::Pause(InstanceTarget::of(&wi))).await.unwrap();
    assert_eq!(store.claim_commands("m1:1", 1).await.unwrap()[0].id, stop);
    let stopping = RunWrite {
        workflow: Some(WorkflowChange { from: WorkflowState::Running, events: vec![WorkflowEvent::Stop], update: WorkflowUpdate::default() }),
        consume: vec![stop, pause],
        ..Default::default()
    };
    // Tried: consuming a command nobody claimed (`pause`) with the stop.
    let err = store.write_run(wi.fence(), &stopping).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(store.workflow_instance(wi.id).await.unwrap().unwrap().state, WorkflowState::Running, "the stop was not written");
    let written = store.write_run(wi.fence(), &RunWrite { consume: vec![stop], ..stopping }).await.unwrap();
    assert_eq!(written.workflow.unwrap().state, WorkflowState::ReadyStop);
    assert_eq!(store.unclaimed_commands().await.unwrap().iter().map(|c| c.id).collect::<Vec<_>>(), [pause], "the stop is consumed");
}

/// A second restart of one instance while one waits is refused by the
/// database, however the two callers race.
async fn a_second_waiting_restart_is_refused(store: Arc<dyn Store>) {
    let (_, w) = workflow(&store).await;
    let wi = store.create_workflow_instance(&new_instance(&w, Some("m1:1"))).await.unwrap();
    let wi = move_instance(&store, &wi, WorkflowState::Failure, WorkflowUpdate::default()).await;
    let target = InstanceTarget::of(&wi);
    let restarts = [NewCommand::Rerun(target), NewCommand::Recover { target, force_success: vec!["b".into()] }, NewCommand::Resume(target)];
    let (r0, r1, r2) = tokio::join!(store.insert_command(&restarts[0]), store.insert_command(&restarts[1]), store.insert_command(&restarts[2]));
    let results = [r0, r1, r2];
    let ok: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    for err in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(err, StoreError::Conflict(m) if m.contains(&format!("workflow instance {} already has a restart queued", wi.id))), "{err}");
    }
    // Claimed but not consumed, it still counts; other kinds are not held up.
    let first = store.claim_commands("m1:1", 10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(store.insert_command(&NewCommand::Rerun(target)).await.is_err());
    store.insert_command(&NewCommand::Stop(target)).await.unwrap();
    store.insert_command(&NewCommand::Stop(target)).await.unwrap();
    let kept = store.claim_commands("m1:1", 10).await.unwrap();
    assert_eq!(kept.len(), 2);
    assert!(kept.iter().all(|c| c.spec == NewCommand::Stop(target)));
    // Once consumed, a new restart may be queued.
    store.consume_command(first[0].id, "m1:1").await.unwrap();
    store.insert_command(&NewCommand::Rerun(target)).await.unwrap();
}

/// Deleting a workflow while some of its runs go on would leave them
/// without a definition to run: refused, naming them, nothing deleted.
async fn a_workflow_with_unfinished_instances_is_not_deleted(store: Arc<dyn Store>) {
    let (p, w) = workflow(&store).await;
    let live = store.create_workflow_instance(&new_instance(&w, Some("m1:1"))).await.unwrap();
    let live = move_instance(&store, &live, WorkflowState::Running, WorkflowUpdate::default()).await;
    let done = store.create_workflow_instance(&new_instance(&w, Some("m1:1"))).await.unwrap();
    move_instance(&store, &done, WorkflowState::Success, WorkflowUpdate::default()).await;
    let err = store.delete_workflow(w.id).await.unwrap_err();
    assert!(matches!(&err, StoreError::Conflict(m) if m.contains(&format!("{} (running)", live.id)) && !m.contains(&format!("{} (", done.id))), "{err}");
    assert!(store.workflow(p.id, "etl", None).await.unwrap().is_some(), "nothing deleted");
    move_instance(&store, &live, WorkflowState::Stopped, WorkflowUpdate::default()).await;
    assert!(store.delete_workflow(w.id).await.unwrap());
    assert!(store.workflow_instance(done.id).await.unwrap().is_some(), "finished runs stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reopen_finds_its_data_and_no_pending_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/sluice.db");
    let path = path.to_str().unwrap();
    let first = SqliteStore::open(path, PoolOptions::sized(2)).await.unwrap();
    first.create_project("kept", "", &Params::new()).await.unwrap();
    drop(first);
    let again = sluice_storage::open(&format!("sqlite://{path}"), PoolOptions::sized(2)).await.unwrap();
    assert_eq!(again.backend(), Backend::Sqlite);
    assert!(again.project("kept").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reopen_finds_its_data_and_no_pending_migration() {
    let db = tokio::task::spawn_blocking(sluice_testkit::postgres::TempDatabase::create).await.unwrap();
    let first = PgStore::open(db.url(), PoolOptions::sized(2)).await.unwrap();
    first.create_project("kept", "", &Params::new()).await.unwrap();
    drop(first);
    let again = sluice_storage::open(db.url(), PoolOptions::sized(2)).await.unwrap();
    assert_eq!(again.backend(), Backend::Postgres);
    assert!(again.project("kept").await.unwrap().is_some());
}

#[tokio::test]
async fn bad_urls_are_refused_with_the_reason() {
    for (url, reason) in [
        ("mysql://root@localhost/x", "expected postgres://"),
        ("sqlite://", "a database file path is required"),
        ("sqlite://:memory:", "a database file path is required"),
    ] {
        let err = sluice_storage::open(url, PoolOptions::sized(1)).await.err().expect(url);
        assert!(matches!(&err, StoreError::InvalidUrl { .. }), "{url}: {err}");
        assert!(err.to_string().contains(reason), "{url}: {err}");
    }
    let err = sluice_storage::open("postgres://nobody@127.0.0.1:1/none", PoolOptions { size: 1, connect_timeout: Duration::from_millis(500) }).await.err().unwrap();
    assert!(err.is_retryable(), "an unreachable server is worth retrying: {err}");
}

async fn a_command_becomes_an_instance_atomically(store: Arc<dyn Store>) {
    let (_, w) = workflow(&store).await;
    let id = store.insert_command(&NewCommand::start(w.id)).await.unwrap();
    // Not claimed by us: refused, nothing written.
    let err = store.create_instance_for_command(id, &new_instance(&w, Some("m1:1"))).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(store.list_workflow_instances(&InstanceFilter { limit: 10, ..Default::default() }).await.unwrap().is_empty());
    assert_eq!(store.claim_commands("m1:1", 10).await.unwrap().len(), 1);
    let wi = store.create_instance_for_command(id, &new_instance(&w, Some("m1:1"))).await.unwrap();
    assert_eq!(wi.owner.as_deref(), Some("m1:1"));
    assert!(store.unclaimed_commands().await.unwrap().is_empty());
    assert!(store.claim_commands("m1:1", 10).await.unwrap().is_empty(), "the command is gone");

    // A pre-created instance is adopted and its command consumed together,
    // with the write that starts it, under the new epoch.
    let (pre, cmd) = store.submit_run(&new_instance(&w, None), &NewCommand::start(w.id)).await.unwrap();
    store.claim_commands("m2:1", 10).await.unwrap();
    let start = RunWrite {
        workflow: Some(WorkflowChange { from: WorkflowState::Submitted, events: vec![WorkflowEvent::Start], update: WorkflowUpdate::default() }),
        ..Default::default()
    };
    // Tried: expecting another state than the instance is in: nothing happens.
    let err = store.adopt_for_command(cmd, pre, "m2:1", WorkflowState::Failure, &start).await.unwrap_err();
    assert!(matches!(&err, StoreError::StaleState(m) if m.contains("is `submitted`, expected `failure`")), "{err}");
    assert_eq!(store.workflow_instance(pre).await.unwrap().unwrap().owner_epoch, 1, "the refused adoption was rolled back");
    let (adopted, written) = store.adopt_for_command(cmd, pre, "m2:1", WorkflowState::Submitted, &start).await.unwrap();
    assert_eq!((adopted.owner.as_deref(), adopted.owner_epoch, adopted.state), (Some("m2:1"), 2, WorkflowState::Running));
    assert_eq!(written.workflow.as_ref(), Some(&adopted));
    let err = store.adopt_for_command(cmd, pre, "m2:1", WorkflowState::Running, &RunWrite::default()).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "the command is consumed: {err}");
    assert_eq!(store.workflow_instance(pre).await.unwrap().unwrap().owner_epoch, 2, "the refused adoption was rolled back");
}

async fn backfills_create_runs_in_order_within_their_parallelism(store: Arc<dyn Store>) {
    let (_, w) = workflow(&store).await;
    let day = |d: u32| Utc.with_ymd_and_hms(2026, 1, d, 0, 0, 0).unwrap();
    let backfill = store
        .create_backfill(&NewBackfill {
            workflow_id: w.id,
            workflow_version: w.version,
            schedule_times: (1..=5).map(day).collect(),
            parallelism: 2,
            params: [("env".to_string(), "test".to_string())].into(),
        })
        .await
        .unwrap();
    assert_eq!((backfill.state, backfill.created_runs), (BackfillState::Running, 0));
    let first = store.advance_backfills().await.unwrap();
    assert_eq!(first.len(), 2, "at most parallelism runs at once");
    assert!(store.advance_backfills().await.unwrap().is_empty(), "none finished yet");
    let runs = store.list_workflow_instances(&InstanceFilter { backfill_id: Some(backfill.id), limit: 100, ..Default::default() }).await.unwrap();
    let mut times: Vec<_> = runs.iter().map(|r| r.schedule_time.unwrap()).collect();
    times.sort();
    assert_eq!(times, [day(1), day(2)], "in schedule-time order");
    assert!(runs.iter().all(|r| r.command_kind == CommandKind::Backfill && r.params["env"] == "test" && r.backfill_id == Some(backfill.id)));
    assert_eq!(store.claim_commands("m:1", 10).await.unwrap().len(), 2, "each run has its start command");
    // Finish one run: exactly one more is created.
    let done = &runs[0];
    let adopted = store.adopt_workflow_instance(done.id, "m:1").await.unwrap();
    move_instance(&store, &adopted, WorkflowState::Success, WorkflowUpdate::default()).await;
    assert_eq!(store.advance_backfills().await.unwrap().len(), 1);
    assert_eq!(store.backfill(backfill.id).await.unwrap().unwrap().created_runs, 3);

    // Stopping: no new runs, a stop command for each unfinished one.
    let stopped = store.stop_backfill(backfill.id).await.unwrap();
    assert_eq!(stopped.state, BackfillState::Stopped);
    let stops: Vec<Command> = store.unclaimed_commands().await.unwrap().into_iter().filter(|c| c.spec.kind() == CommandKind::Stop).collect();
    assert_eq!(stops.len(), 2);
    assert!(store.advance_backfills().await.unwrap().is_empty());
    let again = store.stop_backfill(backfill.id).await.unwrap_err();
    assert!(matches!(&again, StoreError::Conflict(m) if m.contains("already stopped")), "{again}");
    let err = store.stop_backfill(BackfillId(999_999)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

async fn a_finished_backfill_is_done(store: Arc<dyn Store>) {
    let (_, w) = workflow(&store).await;
    let backfill = store
        .create_backfill(&NewBackfill {
            workflow_id: w.id,
            workflow_version: w.version,
            schedule_times: vec![Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap()],
            parallelism: 1,
            params: Params::new(),
        })
        .await
        .unwrap();
    let run = store.advance_backfills().await.unwrap()[0];
    let wi = store.adopt_workflow_instance(run, "m:1").await.unwrap();
    move_instance(&store, &wi, WorkflowState::Failure, WorkflowUpdate::default()).await;
    assert!(store.advance_backfills().await.unwrap().is_empty());
    assert_eq!(store.backfill(backfill.id).await.unwrap().unwrap().state, BackfillState::Done);
}

/// An instance with one task, moved to `state`, ended `ended_days_ago`.
async fn history_row(store: &Arc<dyn Store>, w: &WorkflowDefinition, state: WorkflowState, ended_days_ago: Option<i64>) -> (WorkflowInstanceId, TaskInstanceId) {
    let wi = store.create_workflow_instance(&new_instance(w, Some("m:1"))).await.unwrap();
    let new_task = NewTaskInstance { max_retries: 0, ..new_task_of(w, &wi, &w.tasks[0].spec.name) };
    let task = store.create_tasks(wi.fence(), &[new_task]).await.unwrap()[0].id;
    let end = ended_days_ago.map(|d| Utc::now() - chrono::Duration::days(d));
    move_instance(store, &wi, state, WorkflowUpdate { end_time: Some(end), ..Default::default() }).await;
    (wi.id, task)
}

async fn retention_deletes_only_old_finished_history(store: Arc<dyn Store>) {
    let (_, w) = workflow(&store).await;
    let now = Utc::now();
    let old_success = history_row(&store, &w, WorkflowState::Success, Some(40)).await;
    let old_failure = history_row(&store, &w, WorkflowState::Failure, Some(31)).await;
    let recent = history_row(&store, &w, WorkflowState::Success, Some(5)).await;
    let old_running = history_row(&store, &w, WorkflowState::Running, None).await;
    let old_paused = history_row(&store, &w, WorkflowState::Paused, Some(60)).await;
    let cutoff = now - chrono::Duration::days(30);
    // One instance per batch: the clean-up goes on until a short batch.
    assert_eq!(store.delete_finished_instances(cutoff, 1).await.unwrap(), 1);
    assert_eq!(store.delete_finished_instances(cutoff, 1).await.unwrap(), 1);
    assert_eq!(store.delete_finished_instances(cutoff, 1).await.unwrap(), 0);
    for (gone, task) in [old_success, old_failure] {
        assert!(store.workflow_instance(gone).await.unwrap().is_none());
        assert!(store.task_instance(task).await.unwrap().is_none(), "its tasks go too");
    }
    for (kept, task) in [recent, old_running, old_paused] {
        assert!(store.workflow_instance(kept).await.unwrap().is_some());
        assert!(store.task_instance(task).await.unwrap().is_some());
    }
}
