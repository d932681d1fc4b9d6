//! api: REST latency with a big history. Generates workflow instances of 10
//! task instances each in PostgreSQL (1,000,000 task-instance rows at full
//! scale) across 10 projects, then times, from a client, listing workflow
//! instances by project and state, and fetching one instance with its tasks.

use std::time::Instant;

use diesel::sql_types::BigInt;
use diesel::QueryableByName;
use serde_json::json;

use crate::deploy::{sql_execute, sql_query, Deployment, Kind, Options};
use crate::report::{num, Outcome, Table};
use crate::stats::Spread;

const PROJECTS: usize = 10;
const TASKS_PER_INSTANCE: usize = 10;
/// Requests timed per query.
const REQUESTS: usize = 500;

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// The SQL that writes `instances` finished workflow instances (ids from
/// 1, spread over `projects` and over success/failure/stopped) with
/// `TASKS_PER_INSTANCE` task instances each.
pub fn generate_sql(project_ids: &[i64], instances: usize, now_ms: i64) -> String {
    let ids: Vec<String> = project_ids.iter().map(i64::to_string).collect();
    format!(
        "INSERT INTO workflow_instances (project_id, workflow_id, workflow_version, workflow_name, state, command_kind, params, \
                priority, worker_group, failure_strategy, owner_epoch, run, start_time, end_time, created_at, updated_at) \
         SELECT (ARRAY[{ids}]::BIGINT[])[1 + g % {n}], 1 + g % 50, 1, 'wf' || (g % 50), \
                (ARRAY['success','success','success','success','success','success','success','failure','failure','stopped'])[1 + (g / {n}) % 10], \
                'start', '{{}}', 'medium', 'default', 'end', 1, 1, t, t + 60000, t - 10, t + 60000 \
         FROM generate_series(1, {instances}) g, LATERAL (SELECT {now_ms}::BIGINT - ({instances} - g)::BIGINT * 1000 AS t) ts; \
         INSERT INTO task_instances (workflow_instance_id, task_definition_id, name, task_type, state, priority, worker_group, \
                host, exit_code, log_path, submit_time, start_time, end_time, updated_at) \
         SELECT wi.id, k + 1, 't' || lpad(k::text, 2, '0'), 'shell', CASE WHEN wi.state = 'success' OR k < 9 THEN 'success' ELSE 'failure' END, \
                'medium', 'default', '127.0.0.1:1234', 0, '/tmp/sluice/logs/x.log', wi.start_time, wi.start_time + k * 6000, \
                wi.start_time + k * 6000 + 5000, wi.end_time \
         FROM workflow_instances wi, generate_series(0, {tpi}) k;",
        ids = ids.join(","),
        n = project_ids.len(),
        tpi = TASKS_PER_INSTANCE - 1,
    )
}

async fn time_requests(api: &crate::deploy::Api, paths: &[String]) -> anyhow::Result<Spread> {
    let mut samples = Vec::with_capacity(paths.len());
    for path in paths {
        let start = Instant::now();
        api.get(path).await?;
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Spread::of(&samples))
}

pub async fn run(task_rows: usize) -> anyhow::Result<Outcome> {
    let deployment = Deployment::start(Kind::Cluster, Options::default()).await?;
    let result = async {
        let api = &deployment.api;
        let url = deployment.database_url().expect("cluster");
        for p in 0..PROJECTS {
            api.create_project(&format!("p{p}")).await?;
        }
        let project_ids: Vec<i64> = sql_query::<Id>(&url, "SELECT id FROM projects ORDER BY id").await?.into_iter().map(|i| i.id).collect();
        let instances = (task_rows / TASKS_PER_INSTANCE).max(1);
        let generating = Instant::now();
        sql_execute(&url, &generate_sql(&project_ids, instances, chrono::Utc::now().timestamp_millis())).await?;
        // One statement each: VACUUM cannot run inside the implicit
        // transaction of a multi-statement query.
        sql_execute(&url, "VACUUM ANALYZE workflow_instances").await?;
        sql_execute(&url, "VACUUM ANALYZE task_instances").await?;
        let generated_s = generating.elapsed().as_secs_f64();
        let ids: Vec<i64> = sql_query::<Id>(&url, "SELECT id FROM workflow_instances").await?.into_iter().map(|i| i.id).collect();
        // Warm the connection pool and caches the way a running server is.
        let warm: Vec<String> = (0..20).map(|i| format!("/workflow-instances/{}", ids[i % ids.len()])).collect();
        time_requests(api, &warm).await?;
        let states = ["success", "failure", "stopped"];
        let list: Vec<String> = (0..REQUESTS)
            .map(|_| format!("/workflow-instances?project=p{}&state={}", fastrand::usize(..PROJECTS), states[fastrand::usize(..states.len())]))
            .collect();
        let get: Vec<String> = (0..REQUESTS).map(|_| format!("/workflow-instances/{}", ids[fastrand::usize(..ids.len())])).collect();
        let list = time_requests(api, &list).await?;
        let get = time_requests(api, &get).await?;
        anyhow::Ok((instances, generated_s, list, get))
    }
    .await;
    tokio::task::spawn_blocking(move || deployment.stop()).await?;
    let (instances, generated_s, list, get) = result?;
    let rows = instances * TASKS_PER_INSTANCE;
    let mut table = Table::new(
        format!("api: REST latency over {rows} task-instance rows ({instances} workflow instances), {REQUESTS} sequential requests each"),
        &["request", "p50 ms", "p99 ms", "max ms"],
    );
    table.row(vec!["list instances by project and state (page of 50)".into(), num(list.p50, 1), num(list.p99, 1), num(list.max, 1)]);
    table.row(vec!["one instance with its 10 tasks".into(), num(get.p50, 1), num(get.p99, 1), num(get.max, 1)]);
    Ok(Outcome {
        scenario: "api",
        tables: vec![table],
        json: json!({ "task_rows": rows, "workflow_instances": instances, "generate_s": generated_s, "list_by_project_state_ms": list, "get_instance_ms": get }),
    })
}
