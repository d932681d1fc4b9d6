//! The diesel implementation of [`Store`], written once and instantiated for
//! PostgreSQL and SQLite by `store_impl!`. The two differ only in how rows
//! are locked (PostgreSQL: `FOR UPDATE SKIP LOCKED` / `FOR SHARE`; SQLite:
//! one writer at a time through `BEGIN IMMEDIATE`), which the macro takes as
//! parameters.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use async_trait::async_trait;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, R2D2Connection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use sluice_domain::*;

use crate::error::StoreError;
use crate::rows::*;
use crate::schema::*;
use crate::{Backend, Fired, PoolOptions, Result, RunWrite, RunWritten, SavedWorkflow, ScheduledFire, Store, WorkflowVersionInfo};

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../sql/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../sql/sqlite");

/// A diesel-backed store over a pool of `C` connections.
pub struct DieselStore<C: R2D2Connection + 'static> {
    pool: Pool<ConnectionManager<C>>,
    _conn: PhantomData<fn() -> C>,
}

pub type PgStore = DieselStore<PgConnection>;
pub type SqliteStore = DieselStore<SqliteConnection>;

impl<C: R2D2Connection + 'static> DieselStore<C> {
    /// Runs `f` with a pooled connection on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut C) -> Result<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Database(format!("storage task failed: {e}")))?
    }
}

impl PgStore {
    /// Connects to PostgreSQL and applies pending migrations.
    pub async fn open(url: &str, options: PoolOptions) -> Result<PgStore> {
        let url = url.to_owned();
        let pool = tokio::task::spawn_blocking(move || -> Result<_> {
            let pool = Pool::builder()
                .max_size(options.size.max(1))
                // Grow on demand: idle processes and test sandboxes should
                // not hold a full pool of server connections each.
                .min_idle(Some(1))
                .connection_timeout(options.connect_timeout)
                .build(ConnectionManager::<PgConnection>::new(&url))?;
            let mut conn = pool.get()?;
            conn.run_pending_migrations(PG_MIGRATIONS)
                .map_err(|e| StoreError::Migration(e.to_string()))?;
            Ok(pool)
        })
        .await
        .map_err(|e| StoreError::Database(e.to_string()))??;
        Ok(DieselStore { pool, _conn: PhantomData })
    }
}

/// SQLite connection settings: WAL so readers never block the writer, a
/// busy timeout so writers queue instead of failing, foreign keys on.
#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> std::result::Result<(), diesel::r2d2::Error> {
        conn.batch_execute(
            "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the SQLite database file at `path` and
    /// applies pending migrations.
    pub async fn open(path: &str, options: PoolOptions) -> Result<SqliteStore> {
        if path.is_empty() || path == ":memory:" {
            return Err(StoreError::InvalidUrl {
                url: format!("sqlite://{path}"),
                reason: "a database file path is required (an in-memory database cannot be shared by a pool)".into(),
            });
        }
        let path = path.to_owned();
        let pool = tokio::task::spawn_blocking(move || -> Result<_> {
            if let Some(dir) = std::path::Path::new(&path).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| StoreError::InvalidUrl {
                        url: format!("sqlite://{path}"),
                        reason: format!("cannot create {}: {e}", dir.display()),
                    })?;
                }
            }
            let pool = Pool::builder()
                .max_size(options.size.max(1))
                // Grow on demand: idle processes and test sandboxes should
                // not hold a full pool of server connections each.
                .min_idle(Some(1))
                .connection_timeout(options.connect_timeout)
                .connection_customizer(Box::new(SqlitePragmas))
                .build(ConnectionManager::<SqliteConnection>::new(&path))?;
            let mut conn = pool.get()?;
            conn.run_pending_migrations(SQLITE_MIGRATIONS)
                .map_err(|e| StoreError::Migration(e.to_string()))?;
            Ok(pool)
        })
        .await
        .map_err(|e| StoreError::Database(e.to_string()))??;
        Ok(DieselStore { pool, _conn: PhantomData })
    }
}

diesel::define_sql_function! {
    /// SQL `lower()`, for case-insensitive search on both backends.
    fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// Escapes `%`, `_` and `\` so user text matches literally inside LIKE.
fn like_pattern(query: &str) -> String {
    let mut out = String::with_capacity(query.len() + 2);
    out.push('%');
    for c in query.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// States in which a workflow instance needs no owner to act on it.
const AT_REST: [&str; 4] = ["success", "failure", "stopped", "paused"];
const FINAL: [&str; 3] = ["success", "failure", "stopped"];

/// Rows per statement of a batched write: well under PostgreSQL's 65,535
/// bound parameters (a task row has 15) and SQLite's 32,766.
const CHUNK: usize = 1000;

/// Task-definition spec as stored: the spec without deps (edges are per
/// workflow version).
fn stored_task_spec(task: &TaskSpec) -> String {
    json(&TaskSpec { deps: Vec::new(), ..task.clone() })
}

macro_rules! store_impl {
    (
        conn: $conn:ty,
        backend: $backend:expr,
        write_txn: $txn:ident,
        claim_lock: [$($claim_lock:tt)*],
        update_lock: [$($update_lock:tt)*],
        share_lock: [$($share_lock:tt)*] $(,)?
    ) => {
        type Conn = $conn;

        /// Applies task changes under the fence (checked by the caller, in
        /// the same transaction), compare-and-set on each row's state.
        /// Changes that are alike (same expected state, same target, same
        /// fields: a stop killing 10,000 tasks) are one statement per chunk.
        fn update_task_rows(c: &mut Conn, fence: Fence, changes: &[TaskChange], now: i64) -> Result<Vec<TaskInstance>> {
            let mut groups: Vec<((TaskState, TaskChangeset), Vec<i64>)> = Vec::new();
            let mut index: std::collections::HashMap<(TaskState, TaskChangeset), usize> = std::collections::HashMap::new();
            for change in changes {
                let to = change.to().map_err(|e| StoreError::StaleState(format!("task instance {}: {e}", change.id)))?;
                let moves = (!change.events.is_empty()).then_some(to);
                let key = (change.from, TaskChangeset::new(&change.update, moves, now));
                let slot = *index.entry(key.clone()).or_insert_with(|| {
                    groups.push((key, Vec::new()));
                    groups.len() - 1
                });
                groups[slot].1.push(change.id.get());
            }
            let mut rows: std::collections::HashMap<i64, TaskInstanceRow> = std::collections::HashMap::with_capacity(changes.len());
            for ((from, changeset), ids) in &groups {
                for chunk in ids.chunks(CHUNK) {
                    let updated: Vec<TaskInstanceRow> = diesel::update(task_instances::table)
                        .filter(task_instances::id.eq_any(chunk))
                        .filter(task_instances::workflow_instance_id.eq(fence.workflow_instance_id.get()))
                        .filter(task_instances::state.eq(from.as_str()))
                        .set(changeset)
                        .returning(TaskInstanceRow::as_returning())
                        .get_results(c)?;
                    if updated.len() != chunk.len() {
                        let missed = chunk.iter().find(|id| !updated.iter().any(|r| r.id == **id)).expect("one row is missing");
                        let state: Option<String> = task_instances::table
                            .find(missed)
                            .filter(task_instances::workflow_instance_id.eq(fence.workflow_instance_id.get()))
                            .select(task_instances::state)
                            .first(c)
                            .optional()?;
                        return Err(match state {
                            None => StoreError::NotFound(format!("task instance {missed} of workflow instance {}", fence.workflow_instance_id)),
                            Some(state) => StoreError::StaleState(format!("task instance {missed} is `{state}`, expected `{from}`")),
                        });
                    }
                    rows.extend(updated.into_iter().map(|r| (r.id, r)));
                }
            }
            changes
                .iter()
                .map(|change| rows.remove(&change.id.get()).expect("every change returned its row").into_domain())
                .collect()
        }

        /// Inserts task instances of the fenced instance, in the states
        /// their events lead to from `submitted`; a chunk per statement.
        fn insert_task_rows(c: &mut Conn, fence: Fence, new: &[NewTaskInstance], now: i64) -> Result<Vec<TaskInstance>> {
            let mut values = Vec::with_capacity(new.len());
            for n in new {
                if n.workflow_instance_id != fence.workflow_instance_id {
                    return Err(StoreError::Conflict(format!(
                        "task `{}` belongs to workflow instance {}, not to the fenced instance {}",
                        n.name, n.workflow_instance_id, fence.workflow_instance_id
                    )));
                }
                let state = n.state().map_err(|e| StoreError::StaleState(format!("new task `{}`: {e}", n.name)))?;
                values.push(NewTaskInstanceRow::new(n, state, now));
            }
            let mut names = std::collections::HashSet::with_capacity(new.len());
            if let Some(twice) = new.iter().find(|n| !names.insert(n.name.as_str())) {
                return Err(StoreError::Conflict(format!(
                    "workflow instance {}: task `{}` is created twice in one write",
                    fence.workflow_instance_id, twice.name
                )));
            }
            let mut rows: std::collections::HashMap<String, TaskInstanceRow> = std::collections::HashMap::with_capacity(new.len());
            for chunk in values.chunks(CHUNK) {
                let inserted = diesel::insert_into(task_instances::table).values(chunk).returning(TaskInstanceRow::as_returning()).get_results(c);
                let inserted: Vec<TaskInstanceRow> = match inserted {
                    Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, info)) => {
                        return Err(StoreError::Conflict(format!(
                            "workflow instance {} already has a task instance of {}: nothing was written",
                            fence.workflow_instance_id,
                            twin_names(c, fence, chunk, info.details())
                        )));
                    }
                    other => other?,
                };
                rows.extend(inserted.into_iter().map(|r| (r.name.clone(), r)));
            }
            // Matched by name (unique per workflow instance), not by the order
            // RETURNING happens to use.
            new.iter()
                .map(|n| rows.remove(&n.name).ok_or_else(|| StoreError::Database(format!("task `{}` was not inserted", n.name)))?.into_domain())
                .collect()
        }

        /// The tasks of `chunk` that already have a row, for the error of a
        /// violated `(workflow_instance_id, name)`: PostgreSQL names the key
        /// in the error's detail (and refuses further queries in the failed
        /// transaction); SQLite names only the columns, but lets the
        /// transaction go on, so it is asked.
        fn twin_names(c: &mut Conn, fence: Fence, chunk: &[NewTaskInstanceRow], detail: Option<&str>) -> String {
            // `Key (workflow_instance_id, name)=(12, load) already exists.`
            let from_detail = detail
                .and_then(|d| d.split_once(")=(")?.1.rsplit_once(") already exists")?.0.split_once(", ").map(|(_, name)| name.to_owned()));
            let names = match from_detail {
                Some(name) => vec![name],
                None => task_instances::table
                    .filter(task_instances::workflow_instance_id.eq(fence.workflow_instance_id.get()))
                    .filter(task_instances::name.eq_any(chunk.iter().map(|r| r.name.as_str())))
                    .select(task_instances::name)
                    .load::<String>(c)
                    .unwrap_or_else(|_| chunk.iter().map(|r| r.name.clone()).collect()),
            };
            names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        }

        /// Applies a workflow-instance change, compare-and-set on its state,
        /// under the fence.
        fn update_workflow_row(c: &mut Conn, fence: Fence, change: &WorkflowChange, now: i64) -> Result<WorkflowInstance> {
            let to = change.to().map_err(|e| StoreError::StaleState(format!("workflow instance {}: {e}", fence.workflow_instance_id)))?;
            let moves = (!change.events.is_empty()).then_some(to);
            let id = fence.workflow_instance_id.get();
            let updated = diesel::update(workflow_instances::table.find(id))
                .filter(workflow_instances::owner_epoch.eq(fence.epoch))
                .filter(workflow_instances::state.eq(change.from.as_str()))
                .set(&WorkflowChangeset::new(&change.update, moves, now))
                .returning(WorkflowInstanceRow::as_returning())
                .get_result(c)
                .optional()?;
            match updated {
                Some(row) => row.into_domain(),
                None => {
                    check_fence(c, fence)?;
                    let state: String = workflow_instances::table.find(id).select(workflow_instances::state).first(c)?;
                    Err(StoreError::StaleState(format!("workflow instance {id} is `{state}`, expected `{}`", change.from)))
                }
            }
        }

        /// Everything of a [`RunWrite`], in the caller's transaction.
        fn apply_write(c: &mut Conn, fence: Fence, write: &RunWrite) -> Result<RunWritten> {
            let owner = check_fence(c, fence)?;
            let now = now_ms();
            let workflow = write.workflow.as_ref().map(|change| update_workflow_row(c, fence, change, now)).transpose()?;
            let tasks = update_task_rows(c, fence, &write.tasks, now)?;
            let created = insert_task_rows(c, fence, &write.create, now)?;
            for &command in &write.consume {
                delete_claimed_command(c, command, owner.as_deref())?;
            }
            Ok(RunWritten { workflow, tasks, created })
        }

        /// Loads one version of a workflow definition with its tasks.
        fn load_definition(c: &mut Conn, workflow: WorkflowRow, version: Option<u32>) -> Result<Option<WorkflowDefinition>> {
            let version = version.map(|v| v as i32).unwrap_or(workflow.current_version);
            let Some(v) = workflow_versions::table
                .filter(workflow_versions::workflow_id.eq(workflow.id))
                .filter(workflow_versions::version.eq(version))
                .select(WorkflowVersionRow::as_select())
                .first(c)
                .optional()?
            else {
                return Ok(None);
            };
            let project: String = projects::table.find(workflow.project_id).select(projects::name).first(c)?;
            let tasks: Vec<TaskDefinitionRow> = task_definitions::table
                .inner_join(workflow_version_tasks::table)
                .filter(workflow_version_tasks::workflow_version_id.eq(v.id))
                .order(task_definitions::name)
                .select(TaskDefinitionRow::as_select())
                .load(c)?;
            let edges: Vec<(String, String)> = workflow_edges::table
                .filter(workflow_edges::workflow_version_id.eq(v.id))
                .select((workflow_edges::from_task, workflow_edges::to_task))
                .order((workflow_edges::to_task, workflow_edges::from_task))
                .load(c)?;
            let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (from, to) in edges {
                deps.entry(to).or_default().push(from);
            }
            let tasks = tasks
                .into_iter()
                .map(|t| {
                    let d = deps.remove(&t.name).unwrap_or_default();
                    t.into_domain(d)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Some(WorkflowDefinition {
                id: WorkflowId(workflow.id),
                project_id: ProjectId(workflow.project_id),
                project,
                version: v.version as u32,
                name: workflow.name,
                description: v.description,
                params: from_json("workflow_versions.params", &v.params)?,
                failure_strategy: parse("workflow_versions.failure_strategy", &v.failure_strategy)?,
                priority: parse("workflow_versions.priority", &v.priority)?,
                worker_group: parse("workflow_versions.worker_group", &v.worker_group)?,
                tasks,
                created_at: from_ms(v.created_at)?,
            }))
        }

        /// Writes version `version` of `spec` for `workflow_id`, reusing the
        /// task definitions in `reuse` (by name) and creating new versions of
        /// the others.
        fn insert_version(
            c: &mut Conn,
            workflow_id: i64,
            version: i32,
            spec: &WorkflowSpec,
            reuse: &BTreeMap<String, i64>,
            now: i64,
        ) -> Result<()> {
            let version_id: i64 = diesel::insert_into(workflow_versions::table)
                .values((
                    workflow_versions::workflow_id.eq(workflow_id),
                    workflow_versions::version.eq(version),
                    workflow_versions::description.eq(&spec.description),
                    workflow_versions::params.eq(json(&spec.params)),
                    workflow_versions::failure_strategy.eq(spec.failure_strategy.as_str()),
                    workflow_versions::priority.eq(spec.priority.as_str()),
                    workflow_versions::worker_group.eq(spec.worker_group.as_str()),
                    workflow_versions::created_at.eq(now),
                ))
                .returning(workflow_versions::id)
                .get_result(c)?;
            for task in &spec.tasks {
                let task_id = match reuse.get(&task.name) {
                    Some(&id) => id,
                    None => {
                        let latest: Option<i32> = task_definitions::table
                            .filter(task_definitions::workflow_id.eq(workflow_id))
                            .filter(task_definitions::name.eq(&task.name))
                            .select(diesel::dsl::max(task_definitions::version))
                            .first(c)?;
                        diesel::insert_into(task_definitions::table)
                            .values((
                                task_definitions::workflow_id.eq(workflow_id),
                                task_definitions::name.eq(&task.name),
                                task_definitions::version.eq(latest.unwrap_or(0) + 1),
                                task_definitions::task_type.eq(task.task_type.as_str()),
                                task_definitions::spec.eq(stored_task_spec(task)),
                                task_definitions::created_at.eq(now),
                            ))
                            .returning(task_definitions::id)
                            .get_result(c)?
                    }
                };
                diesel::insert_into(workflow_version_tasks::table)
                    .values((
                        workflow_version_tasks::workflow_version_id.eq(version_id),
                        workflow_version_tasks::task_definition_id.eq(task_id),
                    ))
                    .execute(c)?;
                let mut deps = task.deps.clone();
                deps.sort();
                deps.dedup();
                for dep in deps {
                    diesel::insert_into(workflow_edges::table)
                        .values((
                            workflow_edges::workflow_version_id.eq(version_id),
                            workflow_edges::from_task.eq(dep),
                            workflow_edges::to_task.eq(&task.name),
                        ))
                        .execute(c)?;
                }
            }
            Ok(())
        }

        /// Checks that `fence` is still current, holding a share lock on the
        /// instance row until the transaction ends so that no adoption can
        /// slip in between the check and the write.
        fn check_fence(c: &mut Conn, fence: Fence) -> Result<Option<String>> {
            let current: Option<(i64, Option<String>)> = workflow_instances::table
                .find(fence.workflow_instance_id.get())
                .select((workflow_instances::owner_epoch, workflow_instances::owner))
                $($share_lock)*
                .first(c)
                .optional()?;
            match current {
                None => Err(StoreError::NotFound(format!("workflow instance {}", fence.workflow_instance_id))),
                Some((epoch, owner)) if epoch == fence.epoch => Ok(owner),
                Some((current, _)) => Err(StoreError::Fenced {
                    workflow_instance_id: fence.workflow_instance_id,
                    presented: fence.epoch,
                    current,
                }),
            }
        }

        fn adopt(c: &mut Conn, id: WorkflowInstanceId, owner: &str) -> Result<WorkflowInstanceRow> {
            diesel::update(workflow_instances::table.find(id.get()))
                .set((
                    workflow_instances::owner.eq(owner),
                    workflow_instances::owner_epoch.eq(workflow_instances::owner_epoch + 1),
                    workflow_instances::updated_at.eq(now_ms()),
                ))
                .returning(WorkflowInstanceRow::as_returning())
                .get_result(c)
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("workflow instance {id}")))
        }

        /// Deletes a command that `owner` claimed; refuses if another master
        /// holds it (it was released and re-claimed meanwhile).
        fn delete_claimed_command(c: &mut Conn, command: CommandId, owner: Option<&str>) -> Result<()> {
            let deleted = diesel::delete(commands::table.find(command.get()))
                .filter(commands::owner.eq(owner))
                .execute(c)?;
            if deleted == 0 {
                return Err(StoreError::Conflict(format!("command {command} is not claimed by {}", owner.unwrap_or("nobody"))));
            }
            Ok(())
        }

        fn insert_instance(c: &mut Conn, new: &NewWorkflowInstance, now: i64) -> Result<WorkflowInstanceRow> {
            let (project_id, name): (i64, String) = workflows::table
                .find(new.workflow_id.get())
                .select((workflows::project_id, workflows::name))
                .first(c)
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("workflow {}", new.workflow_id)))?;
            Ok(diesel::insert_into(workflow_instances::table)
                .values(NewWorkflowInstanceRow::new(new, project_id, name, now))
                .returning(WorkflowInstanceRow::as_returning())
                .get_result(c)?)
        }

        #[async_trait]
        impl Store for DieselStore<Conn> {
            fn backend(&self) -> Backend {
                $backend
            }

            async fn ping(&self) -> Result<()> {
                self.run(|c: &mut Conn| {
                    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1")).execute(c)?;
                    Ok(())
                })
                .await
            }

            async fn create_project(&self, name: &str, description: &str, params: &Params) -> Result<Project> {
                let (name, description, params) = (name.to_owned(), description.to_owned(), json(params));
                self.run(move |c: &mut Conn| {
                    let now = now_ms();
                    let row = diesel::insert_into(projects::table)
                        .values((
                            projects::name.eq(&name),
                            projects::description.eq(&description),
                            projects::params.eq(&params),
                            projects::created_at.eq(now),
                            projects::updated_at.eq(now),
                        ))
                        .returning(ProjectRow::as_returning())
                        .get_result(c)
                        .map_err(|e| match StoreError::from(e) {
                            StoreError::Conflict(_) => StoreError::Conflict(format!("project `{name}` already exists")),
                            other => other,
                        })?;
                    row.into_domain()
                })
                .await
            }

            async fn project(&self, name: &str) -> Result<Option<Project>> {
                let name = name.to_owned();
                self.run(move |c: &mut Conn| {
                    projects::table
                        .filter(projects::name.eq(&name))
                        .select(ProjectRow::as_select())
                        .first(c)
                        .optional()?
                        .map(ProjectRow::into_domain)
                        .transpose()
                })
                .await
            }

            async fn project_by_id(&self, id: ProjectId) -> Result<Option<Project>> {
                self.run(move |c: &mut Conn| {
                    projects::table
                        .find(id.get())
                        .select(ProjectRow::as_select())
                        .first(c)
                        .optional()?
                        .map(ProjectRow::into_domain)
                        .transpose()
                })
                .await
            }

            async fn list_projects(&self) -> Result<Vec<Project>> {
                self.run(move |c: &mut Conn| {
                    projects::table
                        .order(projects::name)
                        .select(ProjectRow::as_select())
                        .load(c)?
                        .into_iter()
                        .map(ProjectRow::into_domain)
                        .collect()
                })
                .await
            }

            async fn save_workflow(&self, project: ProjectId, spec: &WorkflowSpec) -> Result<SavedWorkflow> {
                let spec = spec.normalized();
                self.run(move |c: &mut Conn| {
                    c.$txn(|c| {
                        let now = now_ms();
                        let existing = workflows::table
                            .filter(workflows::project_id.eq(project.get()))
                            .filter(workflows::name.eq(&spec.name))
                            .select(WorkflowRow::as_select())
                            .first(c)
                            .optional()?;
                        let Some(workflow) = existing else {
                            projects::table.find(project.get()).select(projects::id).first::<i64>(c)
                                .optional()?
                                .ok_or_else(|| StoreError::NotFound(format!("project {project}")))?;
                            let id: i64 = diesel::insert_into(workflows::table)
                                .values((
                                    workflows::project_id.eq(project.get()),
                                    workflows::name.eq(&spec.name),
                                    workflows::description.eq(&spec.description),
                                    workflows::current_version.eq(1),
                                    workflows::created_at.eq(now),
                                    workflows::updated_at.eq(now),
                                ))
                                .returning(workflows::id)
                                .get_result(c)?;
                            insert_version(c, id, 1, &spec, &BTreeMap::new(), now)?;
                            return Ok(SavedWorkflow { id: WorkflowId(id), version: 1, created: true });
                        };
                        let (id, current) = (workflow.id, workflow.current_version);
                        let latest = load_definition(c, workflow, None)?
                            .ok_or_else(|| StoreError::corrupt(format!("workflow {id} has no version {current}")))?;
                        if latest.spec() == spec {
                            return Ok(SavedWorkflow { id: WorkflowId(id), version: current as u32, created: false });
                        }
                        let reuse: BTreeMap<String, i64> = spec
                            .tasks
                            .iter()
                            .filter_map(|task| {
                                let old = latest.task(&task.name)?;
                                old.spec.same_definition(task).then(|| (task.name.clone(), old.id.get()))
                            })
                            .collect();
                        let version = current + 1;
                        insert_version(c, id, version, &spec, &reuse, now)?;
                        diesel::update(workflows::table.find(id))
                            .set((
                                workflows::current_version.eq(version),
                                workflows::description.eq(&spec.description),
                                workflows::updated_at.eq(now),
                            ))
                            .execute(c)?;
                        Ok(SavedWorkflow { id: WorkflowId(id), version: version as u32, created: true })
                    })
                })
                .await
            }

            async fn workflow(&self, project: ProjectId, name: &str, version: Option<u32>) -> Result<Option<WorkflowDefinition>> {
                let name = name.to_owned();
                self.run(move |c: &mut Conn| {
                    let Some(workflow) = workflows::table
                        .filter(workflows::project_id.eq(project.get()))
                        .filter(workflows::name.eq(&name))
                        .select(WorkflowRow::as_select())
                        .first(c)
                        .optional()?
                    else {
                        return Ok(None);
                    };
                    load_definition(c, workflow, version)
                })
                .await
            }

            async fn workflow_by_id(&self, id: WorkflowId, version: Option<u32>) -> Result<Option<WorkflowDefinition>> {
                self.run(move |c: &mut Conn| {
                    let Some(workflow) = workflows::table
                        .find(id.get())
                        .select(WorkflowRow::as_select())
                        .first(c)
                        .optional()?
                    else {
                        return Ok(None);
                    };
                    load_definition(c, workflow, version)
                })
                .await
            }

            async fn workflow_versions(&self, id: WorkflowId) -> Result<Vec<WorkflowVersionInfo>> {
                self.run(move |c: &mut Conn| {
                    let rows: Vec<(i32, String, i64)> = workflow_versions::table
                        .filter(workflow_versions::workflow_id.eq(id.get()))
                        .order(workflow_versions::version.desc())
                        .select((workflow_versions::version, workflow_versions::description, workflow_versions::created_at))
                        .load(c)?;
                    rows.into_iter()
                        .map(|(version, description, created_at)| {
                            Ok(WorkflowVersionInfo { version: version as u32, description, created_at: from_ms(created_at)? })
                        })
                        .collect()
                })
                .await
            }

            async fn list_workflows(&self, project: ProjectId, query: Option<&str>) -> Result<Vec<WorkflowSummary>> {
                let pattern = query.map(str::trim).filter(|q| !q.is_empty()).map(like_pattern);
                self.run(move |c: &mut Conn| {
                    let mut q = workflows::table
                        .filter(workflows::project_id.eq(project.get()))
                        .select(WorkflowRow::as_select())
                        .order(workflows::name)
                        .into_boxed();
                    if let Some(p) = pattern {
                        let by_task = task_definitions::table
                            .filter(lower(task_definitions::name).like(p.clone()).escape('\\'))
                            .select(task_definitions::workflow_id);
                        q = q.filter(
                            lower(workflows::name).like(p.clone()).escape('\\')
                                .or(lower(workflows::description).like(p).escape('\\'))
                                .or(workflows::id.eq_any(by_task)),
                        );
                    }
                    q.load(c)?.into_iter().map(WorkflowRow::into_summary).collect()
                })
                .await
            }

            async fn delete_workflow(&self, id: WorkflowId) -> Result<bool> {
                self.run(move |c: &mut Conn| {
                    c.$txn(|c| {
                        let live: Vec<(i64, String)> = workflow_instances::table
                            .filter(workflow_instances::workflow_id.eq(id.get()))
                            .filter(workflow_instances::state.ne_all(FINAL))
                            .order(workflow_instances::id)
                            .limit(11)
                            .select((workflow_instances::id, workflow_instances::state))
                            $($share_lock)*
                            .load(c)?;
                        if !live.is_empty() {
                            let mut named: Vec<String> = live.iter().take(10).map(|(i, s)| format!("{i} ({s})")).collect();
                            if live.len() > 10 {
                                named.push("…".into());
                            }
                            return Err(StoreError::Conflict(format!(
                                "workflow {id} has instances that are not finished: {}; stop them or let them finish first",
                                named.join(", ")
                            )));
                        }
                        // Children first: cascades are declared, but SQLite
                        // enforces them only with foreign_keys on, and an
                        // explicit order keeps both backends identical.
                        let versions = workflow_versions::table
                            .filter(workflow_versions::workflow_id.eq(id.get()))
                            .select(workflow_versions::id);
                        diesel::delete(workflow_edges::table.filter(workflow_edges::workflow_version_id.eq_any(versions)))
                            .execute(c)?;
                        let versions = workflow_versions::table
                            .filter(workflow_versions::workflow_id.eq(id.get()))
                            .select(workflow_versions::id);
                        diesel::delete(workflow_version_tasks::table.filter(workflow_version_tasks::workflow_version_id.eq_any(versions)))
                            .execute(c)?;
                        diesel::delete(workflow_versions::table.filter(workflow_versions::workflow_id.eq(id.get()))).execute(c)?;
                        diesel::delete(task_definitions::table.filter(task_definitions::workflow_id.eq(id.get()))).execute(c)?;
                        diesel::delete(schedules::table.filter(schedules::workflow_id.eq(id.get()))).execute(c)?;
                        diesel::delete(commands::table.filter(commands::workflow_id.eq(id.get())).filter(commands::owner.is_null()))
                            .execute(c)?;
                        Ok(diesel::delete(workflows::table.find(id.get())).execute(c)? > 0)
                    })
                })
                .await
            }

            async fn set_schedule(&self, workflow: WorkflowId, spec: &ScheduleSpec) -> Result<Schedule> {
                let spec = spec.clone();
                self.run(move |c: &mut Conn| {
                    c.$txn(|c| {
                        let now = now_ms();
                        let (kind, cron, timezone, interval_ms, repeat_times) = trigger_columns(&spec.trigger);
                        let values = (
                            schedules::trigger_kind.eq(kind),
                            schedules::cron.eq(cron),
                            schedules::timezone.eq(timezone),
                            schedules::interval_ms.eq(interval_ms),
                            schedules::repeat_times.eq(repeat_times),
                            schedules::start_at.eq(spec.start.map(ms)),
                            schedules::end_at.eq(spec.end.map(ms)),
                            schedules::misfire.eq(spec.misfire.as_str()),
                            schedules::updated_at.eq(now),
                        );
                        let updated = diesel::update(schedules::table.filter(schedules::workflow_id.eq(workflow.get())))
                            .set(values.clone())
                            .returning(ScheduleRow::as_returning())
                            .get_result(c)
                            .optional()?;
                        let row = match updated {
                            Some(row) => row,
                            None => diesel::insert_into(schedules::table)
                                .values((
                                    values,
                                    schedules::workflow_id.eq(workflow.get()),
                                    schedules::online.eq(false),
                                    schedules::created_at.eq(now),
                                ))
                                .returning(ScheduleRow::as_returning())
                                .get_result(c)?,
                        };
                        row.into_domain()
                    })
                })
                .await
            }

            async fn schedule(&self, workflow: WorkflowId) -> Result<Option<Schedule>> {
                self.run(move |c: &mut Conn| {
                    schedules::table
                        .filter(schedules::workflow_id.eq(workflow.get()))
                        .select(ScheduleRow::as_select())
                        .first(c)
                        .optional()?
                        .map(ScheduleRow::into_domain)
                        .transpose()
                })
                .await
            }

            async fn set_schedule_online(&self, workflow: WorkflowId, online: bool) -> Result<Schedule> {
                self.run(move |c: &mut Conn| {
                    diesel::update(schedules::table.filter(schedules::workflow_id.eq(workflow.get())))
                        .set((schedules::online.eq(online), schedules::updated_at.eq(now_ms())))
                        .returning(ScheduleRow::as_returning())
                        .get_result(c)
                        .optional()?
                        .ok_or_else(|| StoreError::NotFound(format!("schedule of workflow {workflow}")))?
                        .into_domain()
                })
                .await
            }

            async fn online_schedules(&self) -> Result<Vec<Schedule>> {
                self.run(move |c: &mut Conn| {
                    schedules::table
                        .filter(schedules::online.eq(true))
                        .order(schedules::id)
                        .select(ScheduleRow::as_select())
                        .load(c)?
                        .into_iter()
                        .map(ScheduleRow::into_domain)
                        .collect()
                })
                .await
            }

            async fn insert_command(&self, command: &NewCommand) -> Result<CommandId> {
                let row = NewCommandRow::new(command, now_ms());
                let (kind, target) = (command.kind(), command.workflow_instance_id());
                self.run(move |c: &mut Conn| {
                    let id: i64 = diesel::insert_into(commands::table)
                        .values(&row)
                        .returning(commands::id)
                        .get_result(c)
                        .map_err(|e| match StoreError::from(e) {
                            StoreError::Conflict(_) => StoreError::Conflict(match target {
                                Some(instance) => format!("workflow instance {instance} already has a restart queued; a second {kind} is refused"),
                                None => format!("a {kind} command like this one is already queued"),
                            }),
                            other => other,
                        })?;
                    Ok(CommandId(id))
                })
                .await
            }

            async fn insert_scheduled_commands(&self, fires: &[ScheduledFire], publish_at: Timestamp) -> Result<Vec<Fired>> {
                let fires = fires.to_vec();
                let hold_commit = $backend == Backend::Postgres;
                if !hold_commit {
                    sleep_until_async(publish_at).await;
                }
                // Stamped with when they become visible, not when prepared.
                let now = now_ms().max(ms(publish_at));
                let rows: Vec<NewCommandRow> = fires.iter().map(|f| NewCommandRow::new(&f.command(), now)).collect();
                self.run(move |c: &mut Conn| {
                    c.$txn(|c| {
                        let mut inserted: std::collections::HashMap<(i64, i64), i64> = std::collections::HashMap::new();
                        // Well under both backends' limits on bound parameters.
                        for chunk in rows.chunks(500) {
                            let insert = |rows| {
                                diesel::insert_into(commands::table)
                                    .values(rows)
                                    .on_conflict((commands::schedule_id, commands::schedule_time))
                                    .do_nothing()
                                    .returning((commands::id, commands::schedule_id, commands::schedule_time))
                            };
                            let ids: Vec<(i64, Option<i64>, Option<i64>)> = if $backend == Backend::Postgres {
                                insert(chunk).get_results(c)?
                            } else {
                                // Diesel runs a SQLite batch with RETURNING row by row and
                                // wants a row back from each; a skipped conflict has none.
                                let mut ids = Vec::new();
                                for row in chunk {
                                    let id: Option<(i64, Option<i64>, Option<i64>)> =
                                        insert(std::slice::from_ref(row)).get_result(c).optional()?;
                                    ids.extend(id);
                                }
                                ids
                            };
                            for (id, schedule, fire) in ids {
                                if let (Some(schedule), Some(fire)) = (schedule, fire) {
                                    inserted.insert((schedule, fire), id);
                                }
                            }
                        }
                        if hold_commit {
                            sleep_until_blocking(publish_at);
                        }
                        // Read at the fire time, in this transaction: an offline
                        // (or a change) committed before now wins, and one that
                        // comes later waits for this commit (PostgreSQL: the row
                        // lock; SQLite: the one writer), so it is after the fire.
                        let mut schedule_ids: Vec<i64> = fires.iter().map(|f| f.schedule.id.get()).collect();
                        schedule_ids.sort_unstable();
                        schedule_ids.dedup();
                        let mut current: std::collections::HashMap<i64, Schedule> = std::collections::HashMap::new();
                        for chunk in schedule_ids.chunks(500) {
                            let rows: Vec<ScheduleRow> = schedules::table
                                .filter(schedules::id.eq_any(chunk))
                                .select(ScheduleRow::as_select())
                                $($update_lock)*
                                .load(c)?;
                            for row in rows {
                                current.insert(row.id, row.into_domain()?);
                            }
                        }
                        let withdrawn: Vec<i64> = fires
                            .iter()
                            .filter(|f| !current.get(&f.schedule.id.get()).is_some_and(|s| f.still_fires(s)))
                            .filter_map(|f| inserted.remove(&(f.schedule.id.get(), ms(f.at))))
                            .collect();
                        for chunk in withdrawn.chunks(500) {
                            diesel::delete(commands::table.filter(commands::id.eq_any(chunk))).execute(c)?;
                        }
                        // last_fire moves forward only; one statement per fire time.
                        let mut by_time: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
                        for (schedule, fire) in inserted.keys() {
                            by_time.entry(*fire).or_default().push(*schedule);
                        }
                        for (fire, schedule_ids) in by_time {
                            for chunk in schedule_ids.chunks(500) {
                                diesel::update(schedules::table.filter(schedules::id.eq_any(chunk)))
                                    .filter(schedules::last_fire.is_null().or(schedules::last_fire.lt(fire)))
                                    .set(schedules::last_fire.eq(fire))
                                    .execute(c)?;
                            }
                        }
                        Ok(fires
                            .iter()
                            .map(|f| {
                                if !current.get(&f.schedule.id.get()).is_some_and(|s| f.still_fires(s)) {
                                    Fired::Withdrawn
                                } else {
                                    match inserted.remove(&(f.schedule.id.get(), ms(f.at))) {
                                        Some(id) => Fired::Written(CommandId(id)),
                                        None => Fired::AlreadyFired,
                                    }
                                }
                            })
                            .collect())
                    })
                })
                .await
            }

            async fn submit_run(&self, instance: &NewWorkflowInstance, command: &NewCommand) -> Result<(WorkflowInstanceId, CommandId)> {
                let (instance, command) = (instance.clone(), command.clone());
                self.run(move |c: &mut Conn| {
                    c.$txn(|c| {
                        let now = now_ms();
                        let wi = insert_instance(c, &instance, now)?;
                        let mut row = NewCommandRow::new(&command, now);
                        row.workflow_instance_id = Some(wi.id);
                        let id: i64 = diesel::insert_into(commands::table).values(&row).returning(commands::id).get_result(c)?;
                        Ok((WorkflowInstanceId(wi.id), CommandId(id)))
                    })
                })
                .await
            }

            async fn claim_commands(&self, owner: &str, limit: u32) -> Result<Vec<Command>> {
                let owner = owner.to_owned();
                self.run(move |c: &mut Conn| {
                    c.$txn(|c| {
                        // Commands aimed at an instance go to its owner; an
                        // instance at rest or without owner can be taken by
                        // anyone.
                        let open_instances = workflow_instances::table
                            .filter(
                                workflow_instances::owner.is_null()
                                    .or(workflow_instances::owner.eq(&owner))
                                    .or(workflow_instances::state.eq_any(AT_REST)),
                            )
                            .select(workflow_instances::id.nullable());
                        let ids: Vec<i64> = commands::table
                            .filter(commands::owner.is_null())
                            .filter(commands::workflow_instance_id.is_null().or(commands::workflow_instance_id.eq_any(open_instances)))
                            .order(commands::id)
                            .limit(limit as i64)
                            .select(commands::id)
                            $($claim_lock)*
                            .load(c)?;
                        if ids.is_empty() {
                            return Ok(Vec::new());
                        }
                        let mut rows: Vec<CommandRow> = diesel::update(commands::table.filter(commands::id.eq_any(&ids)))
                            .set((commands::owner.eq(&owner), commands::claimed_at.eq(now_ms())))
                            .returning(CommandRow::as_returning())
                            .get_results(c)?;
                        rows.sort_by_key(|r| r.id);
                        rows.into_iter().map(CommandRow::into_domain).collect()
                    })
                })
                .await
            }

            async fn consume_command(&self, id: CommandId, owner: &str) -> Result<()> {
                let owner = owner.to_owned();
                self.run(move |c: &mut Conn| delete_claimed_command(c, id, Some(&owner))).await
            }

            async fn release_command(&self, id: CommandId, owner: &str) -> Result<()> {
                let owner = owner.to_owned();
                self.run(move |c: &mut Conn| {
                    diesel::update(commands::table.find(id.get()))
                        .filter(commands::owner.eq(&owner))
                        .set((commands::owner.eq(None::<String>), commands::claimed_at.eq(None::<i64>)))
                        .execute(c)?;
                    Ok(())
                })
                .await
            }

            async fn release_commands(&self, owner: &str) -> Result<u64> {
                let owner = owner.to_owned();
                self.run(move |c: &mut Conn| {
                    let n = diesel::update(commands::table.filter(commands::owner.eq(&owner)))
                        .set((commands::owner.eq(None::<String>), commands::claimed_at.eq(None::<i64>)))
                        .execute(c)?;
                    Ok(n as u64)
                })
                .await
            }

            async fn unclaimed_commands(&self) -> Result<Vec<Command>> {
                self.run(move |c: &mut Conn| {
                    commands::table
                        .filter(commands::owner.is_null())
                        .order(commands::id)
                        .select(CommandRow::as_select())
                        .load(c)?
                        .into_iter()
                        .map(CommandRow::into_domain)
                        .collect()
                })
                .await
            }

            async fn create_workflow_instance(&self, new: &NewWorkflowInstance) -> Result<WorkflowInstance> {
                let new = new.clone();
                self.run(move |c: &mut Conn| insert_instance(c, &new, now_ms())?.into_domain()).await
            }

            async fn create_instance_for_command(&self, command: CommandId, new: &NewWorkflowInstance) -> Result<WorkflowInstance> {
                let new = new.clone();
                self.run(move |c: &mut Conn| {
                    c.$txn(|c| {
                        let row = insert_instance(c, &new, now_ms())?;
                        delete_claimed_command(c, command, new.owner.as_deref())?;
                        row.into_domain()
                    })
                })
                .await
            }

            async fn adopt_for_command(
                &self,
                command: CommandId,
                id: WorkflowInstanceId,
                owner: &str,
                expect: WorkflowState,
                write: &RunWrite,
            ) -> Result<(WorkflowInstance, RunWritten)> {
                let (owner, write) = (owner.to_owned(), write.clone());
                self.run(move |c: &mut Conn| {
                    c.$txn(|c| {
                        let row = adopt(c, id, &owner)?;
                        if row.state != expect.as_str() {
                            return Err(StoreError::StaleState(format!("workflow instance {id} is `{}`, expected `{expect}`", row.state)));
                        }
                        delete_claimed_command(c, command, Some(&owner))?;
                        let instance = row.into_domain()?;
                        let written = apply_write(c, instance.fence(), &write)?;
                        let instance = written.workflow.clone().unwrap_or(instance);
                        Ok((instance, written))
                    })
                })
                .await
            }

            async fn workflow_instance(&self, id: WorkflowInstanceId) -> Result<Option<WorkflowInstance>> {
                self.run(move |c: &mut Conn| {
                    workflow_instances::table
                        .find(id.get())
                        .select(WorkflowInstanceRow::as_select())
                        .first(c)
                        .optional()?
                        .map(WorkflowInstanceRow::into_domain)
                        .transpose()
                })
                .await
            }

            async fn list_workflow_instances(&self, filter: &InstanceFilter) -> Result<Vec<WorkflowInstance>> {
                let filter = filter.clone();
                self.run(move |c: &mut Conn| {
                    let mut q = workflow_instances::table
                        .select(WorkflowInstanceRow::as_select())
                        .order(workflow_instances::id.desc())
                        .limit(filter.limit.clamp(1, 1000) as i64)
                        .into_boxed();
                    if let Some(p) = filter.project_id {
                        q = q.filter(workflow_instances::project_id.eq(p.get()));
                    }
                    if let Some(w) = filter.workflow_id {
                        q = q.filter(workflow_instances::workflow_id.eq(w.get()));
                    }
                    if let Some(s) = filter.state {
                        q = q.filter(workflow_instances::state.eq(s.as_str()));
                    }
                    if let Some(b) = filter.before {
                        q = q.filter(workflow_instances::id.lt(b.get()));
                    }
                    if let Some(b) = filter.backfill_id {
                        q = q.filter(workflow_instances::backfill_id.eq(b.get()));
                    }
                    q.load(c)?.into_iter().map(WorkflowInstanceRow::into_domain).collect()
                })
                .await
            }

            async fn adopt_workflow_instance(&self, id: WorkflowInstanceId, owner: &str) -> Result<WorkflowInstance> {
                let owner = owner.to_owned();
                self.run(move |c: &mut Conn| adopt(c, id, &owner)?.into_domain()).await
            }

            async fn owned_workflow_instances(&self, owner: &str) -> Result<Vec<WorkflowInstance>> {
                let owner = owner.to_owned();
                self.run(move |c: &mut Conn| {
                    workflow_instances::table
                        .filter(workflow_instances::owner.eq(&owner))
                        .filter(workflow_instances::state.ne_all(FINAL))
                        .order(workflow_instances::id)
                        .select(WorkflowInstanceRow::as_select())
                        .load(c)?
                        .into_iter()
                        .map(WorkflowInstanceRow::into_domain)
                        .collect()
                })
                .await
            }

            async fn create_backfill(&self, new: &NewBackfill) -> Result<Backfill> {
                let new = new.clone();
                self.run(move |c: &mut Conn| {
                    let now = now_ms();
                    let times: Vec<i64> = new.schedule_times.iter().copied().map(ms).collect();
                    diesel::insert_into(backfills::table)
                        .values((
                            backfills::workflow_id.eq(new.workflow_id.get()),
                            backfills::workflow_version.eq(new.workflow_version as i32),
                            backfills::schedule_times.eq(json(&times)),
                            backfills::parallelism.eq(new.parallelism.max(1) as i32),
                            backfills::next_index.eq(0),
                            backfills::state.eq(BackfillState::Running.as_str()),
                            backfills::params.eq(json(&new.params)),
                            backfills::created_at.eq(now),
                            backfills::updated_at.eq(now),
                        ))
                        .returning(BackfillRow::as_returning())
                        .get_result(c)?
                        .into_domain()
                })
                .await
            }

            async fn backfill(&self, id: BackfillId) -> Result<Option<Backfill>> {
                self.run(move |c: &mut Conn| {
                    backfills::table
                        .find(id.get())
                        .select(BackfillRow::as_select())
                        .first(c)
                        .optional()?
                        .map(BackfillRow::into_domain)
                        .transpose()
                })
                .await
            }

            async fn advance_backfills(&self) -> Result<Vec<WorkflowInstanceId>> {
                self.run(move |c: &mut Conn| {
                    c.$txn(|c| {
                        let running: Vec<BackfillRow> = backfills::table
                            .filter(backfills::state.eq(BackfillState::Running.as_str()))
                            .order(backfills::id)
                            .select(BackfillRow::as_select())
                            $($claim_lock)*
                            .load(c)?;
                        let mut created = Vec::new();
                        for row in running {
                            let backfill = row.into_domain()?;
                            let mut unfinished: i64 = workflow_instances::table
                                .filter(workflow_instances::backfill_id.eq(backfill.id.get()))
                                .filter(workflow_instances::state.ne_all(FINAL))
                                .count()
                                .get_result(c)?;
                            let version = workflow_versions::table
                                .filter(workflow_versions::workflow_id.eq(backfill.spec.workflow_id.get()))
                                .filter(workflow_versions::version.eq(backfill.spec.workflow_version as i32))
                                .select(WorkflowVersionRow::as_select())
                                .first(c)
                                .optional()?;
                            let Some(version) = version else {
                                // The workflow was deleted: nothing left to run.
                                diesel::update(backfills::table.find(backfill.id.get()))
                                    .set((backfills::state.eq(BackfillState::Stopped.as_str()), backfills::updated_at.eq(now_ms())))
                                    .execute(c)?;
                                continue;
                            };
                            let mut next = backfill.created_runs as usize;
                            let times = &backfill.spec.schedule_times;
                            while unfinished < backfill.spec.parallelism as i64 && next < times.len() {
                                let now = now_ms();
                                let new = NewWorkflowInstance {
                                    workflow_id: backfill.spec.workflow_id,
                                    workflow_version: backfill.spec.workflow_version,
                                    command_kind: CommandKind::Backfill,
                                    params: backfill.spec.params.clone(),
                                    priority: parse("workflow_versions.priority", &version.priority)?,
                                    worker_group: parse("workflow_versions.worker_group", &version.worker_group)?,
                                    failure_strategy: parse("workflow_versions.failure_strategy", &version.failure_strategy)?,
                                    schedule_time: Some(times[next]),
                                    owner: None,
                                    start_tasks: Vec::new(),
                                    scope: None,
                                };
                                let (project_id, name): (i64, String) = workflows::table
                                    .find(backfill.spec.workflow_id.get())
                                    .select((workflows::project_id, workflows::name))
                                    .first(c)?;
                                let mut row = NewWorkflowInstanceRow::new(&new, project_id, name, now);
                                row.backfill_id = Some(backfill.id.get());
                                let instance: i64 = diesel::insert_into(workflow_instances::table)
                                    .values(row)
                                    .returning(workflow_instances::id)
                                    .get_result(c)?;
                                let command = NewCommand::Start(StartRun {
                                    workflow_version: Some(backfill.spec.workflow_version),
                                    workflow_instance_id: Some(WorkflowInstanceId(instance)),
                                    schedule_time: Some(times[next]),
                                    ..StartRun::of(backfill.spec.workflow_id)
                                });
                                diesel::insert_into(commands::table).values(NewCommandRow::new(&command, now)).execute(c)?;
                                created.push(WorkflowInstanceId(instance));
                                next += 1;
                                unfinished += 1;
                            }
                            let state = if next >= times.len() && unfinished == 0 { BackfillState::Done } else { BackfillState::Running };
                            if next != backfill.created_runs as usize || state != BackfillState::Running {
                                diesel::update(backfills::table.find(backfill.id.get()))
                                    .set((
                                        backfills::next_index.eq(next as i32),
                                        backfills::state.eq(state.as_str()),
                                        backfills::updated_at.eq(now_ms()),
                                    ))
                                    .execute(c)?;
                            }
                        }
                        Ok(created)
                    })
                })
                .await
            }

            async fn stop_backfill(&self, id: BackfillId) -> Result<Backfill> {
                self.run(move |c: &mut Conn| {
                    c.$txn(|c| {
                        let row = diesel::update(backfills::table.find(id.get()))
                            .filter(backfills::state.eq(BackfillState::Running.as_str()))
                            .set((backfills::state.eq(BackfillState::Stopped.as_str()), backfills::updated_at.eq(now_ms())))
                            .returning(BackfillRow::as_returning())
                            .get_result(c)
                            .optional()?;
                        let Some(row) = row else {
                            // Gone, or already over: say which.
                            let state: Option<String> = backfills::table.find(id.get()).select(backfills::state).first(c).optional()?;
                            return Err(match state {
                                None => StoreError::NotFound(format!("backfill {id}")),
                                Some(state) => StoreError::Conflict(format!("backfill {id} is already {state}")),
                            });
                        };
                        let backfill = row.into_domain()?;
                        let unfinished: Vec<i64> = workflow_instances::table
                            .filter(workflow_instances::backfill_id.eq(id.get()))
                            .filter(workflow_instances::state.ne_all(FINAL))
                            .select(workflow_instances::id)
                            .load(c)?;
                        let now = now_ms();
                        for instance in unfinished {
                            let command = NewCommand::Stop(InstanceTarget {
                                workflow_id: backfill.spec.workflow_id,
                                workflow_instance_id: WorkflowInstanceId(instance),
                            });
                            diesel::insert_into(commands::table).values(NewCommandRow::new(&command, now)).execute(c)?;
                        }
                        Ok(backfill)
                    })
                })
                .await
            }

            async fn delete_finished_instances(&self, before: Timestamp, batch: u32) -> Result<u64> {
                self.run(move |c: &mut Conn| {
                    c.$txn(|c| {
                        let ids: Vec<i64> = workflow_instances::table
                            .filter(workflow_instances::state.eq_any(FINAL))
                            .filter(workflow_instances::end_time.lt(ms(before)))
                            .order(workflow_instances::id)
                            .limit(batch.max(1) as i64)
                            .select(workflow_instances::id)
                            .load(c)?;
                        if ids.is_empty() {
                            return Ok(0);
                        }
                        diesel::delete(task_instances::table.filter(task_instances::workflow_instance_id.eq_any(&ids))).execute(c)?;
                        let n = diesel::delete(workflow_instances::table.filter(workflow_instances::id.eq_any(&ids))).execute(c)?;
                        Ok(n as u64)
                    })
                })
                .await
            }

            async fn owners_with_work(&self) -> Result<Vec<String>> {
                self.run(move |c: &mut Conn| {
                    let mut owners: Vec<String> = workflow_instances::table
                        .filter(workflow_instances::state.ne_all(AT_REST))
                        .filter(workflow_instances::owner.is_not_null())
                        .select(workflow_instances::owner.assume_not_null())
                        .distinct()
                        .load(c)?;
                    let claiming: Vec<String> = commands::table
                        .filter(commands::owner.is_not_null())
                        .select(commands::owner.assume_not_null())
                        .distinct()
                        .load(c)?;
                    owners.extend(claiming);
                    owners.sort();
                    owners.dedup();
                    Ok(owners)
                })
                .await
            }

            async fn write_run(&self, fence: Fence, write: &RunWrite) -> Result<RunWritten> {
                if write.is_empty() {
                    return Ok(RunWritten::default());
                }
                let write = write.clone();
                self.run(move |c: &mut Conn| c.$txn(|c| apply_write(c, fence, &write))).await
            }

            async fn task_instance(&self, id: TaskInstanceId) -> Result<Option<TaskInstance>> {
                self.run(move |c: &mut Conn| {
                    task_instances::table
                        .find(id.get())
                        .select(TaskInstanceRow::as_select())
                        .first(c)
                        .optional()?
                        .map(TaskInstanceRow::into_domain)
                        .transpose()
                })
                .await
            }

            async fn task_instances(&self, workflow_instance: WorkflowInstanceId) -> Result<Vec<TaskInstance>> {
                self.run(move |c: &mut Conn| {
                    task_instances::table
                        .filter(task_instances::workflow_instance_id.eq(workflow_instance.get()))
                        .order(task_instances::id)
                        .select(TaskInstanceRow::as_select())
                        .load(c)?
                        .into_iter()
                        .map(TaskInstanceRow::into_domain)
                        .collect()
                })
                .await
            }
        }
    };
}

mod pg {
    use super::*;

    store_impl! {
        conn: PgConnection,
        backend: Backend::Postgres,
        write_txn: transaction,
        claim_lock: [.for_update().skip_locked()],
        update_lock: [.for_update()],
        share_lock: [.for_share()],
    }
}

mod sqlite {
    use super::*;

    // SQLite has no row locks: `BEGIN IMMEDIATE` takes the database's write
    // lock up front, which serializes writers (and avoids the deadlock of
    // two readers upgrading to writers at once).
    store_impl! {
        conn: SqliteConnection,
        backend: Backend::Sqlite,
        write_txn: immediate_transaction,
        claim_lock: [],
        update_lock: [],
        share_lock: [],
    }
}
