//! Backfills through the REST API, end to end, in both deployments:
//! standalone (SQLite, embedded registry) and a 2-master / 2-worker cluster
//! (PostgreSQL, ZooKeeper).
//!
//! One run per date, serial or parallel, each with its date's schedule time
//! in the schedule's zone and so the business date before it; dry runs and
//! refused requests store nothing; `desc` runs the newest date first; a
//! stopped backfill stops its running runs and creates no more. Tests wait
//! on state with deadlines, never on fixed sleeps.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};
use sluice_domain::BackfillId;
use sluice_e2e::Sandbox;

sluice_e2e::both_deployments!(
    ten_days_serial_and_parallel_run_each_date_with_its_business_date,
    a_dry_run_lists_the_runs_and_stores_nothing,
    desc_runs_the_newest_date_first,
    a_stopped_backfill_stops_its_runs_and_creates_no_more,
    bad_backfills_are_refused_at_their_field_and_store_nothing,
);

const DEADLINE: Duration = Duration::from_secs(120);
const YAML: &str = "application/yaml";

#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    /// Asserts the error shape with `status`, `code` and `field`; returns the message.
    #[track_caller]
    fn error(&self, status: u16, code: &str, field: Option<&str>) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body["error"]["code"], code, "{self:?}");
        assert_eq!(self.body["error"]["field"].as_str(), field, "{self:?}");
        self.body["error"]["message"].as_str().unwrap_or_else(|| panic!("no message: {self:?}")).to_owned()
    }

    #[track_caller]
    fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "{self:?}");
        &self.body
    }
}

struct Api<'a> {
    sandbox: &'a Sandbox,
    base: String,
    http: reqwest::Client,
}

impl Api<'_> {
    fn new(sandbox: &Sandbox) -> Api<'_> {
        Api { sandbox, base: format!("{}/api/v1", sandbox.api_url()), http: sluice_e2e::http_client() }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body read");
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Answer { status, body }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn post(&self, path: &str) -> Answer {
        self.send(self.http.post(format!("{}{path}", self.base))).await
    }

    async fn put_workflow(&self, name: &str, yaml: &str) {
        let path = format!("{}/projects/e2e/workflows/{name}", self.base);
        self.send(self.http.put(path).header(CONTENT_TYPE, YAML).body(yaml.to_owned())).await.ok(201);
    }

    async fn backfill(&self, workflow: &str, body: Value) -> Answer {
        self.send(self.http.post(format!("{}/projects/e2e/workflows/{workflow}/backfill", self.base)).json(&body)).await
    }

    /// Creates a backfill; returns its id.
    async fn start(&self, workflow: &str, body: Value) -> i64 {
        let accepted = self.backfill(workflow, body).await;
        accepted.ok(202)["backfill_id"].as_i64().unwrap_or_else(|| panic!("no backfill id: {accepted:?}"))
    }

    /// Polls `GET /backfills/{id}` until `check` holds.
    async fn wait(&self, id: i64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let view = self.get(&format!("/backfills/{id}")).await.ok(200).clone();
            if check(&view) {
                return view;
            }
            assert!(Instant::now() < deadline, "[{}] {what}: not within {DEADLINE:?}; last seen {view:#}", self.sandbox.name());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_done(&self, id: i64) -> Value {
        self.wait(id, "backfill done", |b| b["state"] == "done").await
    }

    async fn instances_of(&self, workflow: &str) -> Vec<Value> {
        let page = self.get(&format!("/workflow-instances?project=e2e&workflow={workflow}&limit=1000")).await;
        page.ok(200)["items"].as_array().unwrap().clone()
    }
}

fn runs(view: &Value) -> &Vec<Value> {
    view["runs"].as_array().unwrap_or_else(|| panic!("no runs: {view:#}"))
}

fn field<'a>(runs: &'a [Value], key: &str) -> Vec<&'a str> {
    runs.iter().map(|r| r[key].as_str().unwrap_or_else(|| panic!("no {key} in {r}"))).collect()
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("`{text}`: {e}")).with_timezone(&Utc)
}

/// Most runs that were going at the same time.
fn most_at_once(runs: &[Value]) -> usize {
    let spans: Vec<(DateTime<Utc>, DateTime<Utc>)> =
        runs.iter().map(|r| (at(r["start_time"].as_str().unwrap()), at(r["end_time"].as_str().unwrap()))).collect();
    spans.iter().map(|(s, _)| spans.iter().filter(|(s2, e2)| s2 <= s && s < e2).count()).max().unwrap_or(0)
}

/// A daily workflow at 02:30 in Shanghai (offline: only backfills run it)
/// whose task appends `<instance id> <business date>` to `log`.
fn daily(name: &str, log: &std::path::Path) -> String {
    format!(
        "name: {name}\n\
         tasks:\n  - {{name: load, type: shell, script: 'echo \"${{system.workflow.instance.id}} ${{system.biz.date}}\" >> {}; sleep 0.3'}}\n\
         schedule: {{cron: '0 30 2 * * ?', timezone: Asia/Shanghai}}\n",
        log.display()
    )
}

async fn ten_days_serial_and_parallel_run_each_date_with_its_business_date(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let log = sandbox.scratch().join("dates");
    api.put_workflow("daily", &daily("daily", &log)).await;
    let days: Vec<String> = (1..=10).map(|d| format!("2026-03-{d:02}")).collect();
    for (mode, parallelism) in [("serial", 1), ("parallel", 3)] {
        std::fs::remove_file(&log).ok();
        let body = json!({"start": "2026-03-01", "end": "2026-03-10", "mode": mode, "parallelism": parallelism});
        let accepted = api.backfill("daily", body).await;
        assert_eq!(accepted.ok(202)["runs"], 10, "{accepted:?}");
        let id = accepted.body["backfill_id"].as_i64().unwrap();
        let view = api.wait_done(id).await;
        let name = sandbox.name();
        assert_eq!((view["parallelism"].as_u64(), view["workflow"].as_str(), view["project"].as_str()), (Some(parallelism), Some("daily"), Some("e2e")));
        assert_eq!((view["created_runs"].as_u64(), view["total_runs"].as_u64(), view["timezone"].as_str()), (Some(10), Some(10), Some("Asia/Shanghai")));
        let runs = runs(&view);
        assert_eq!(runs.len(), 10, "[{name}] one instance per day: {view:#}");
        assert!(runs.iter().all(|r| r["state"] == "success"), "[{name}] {view:#}");
        assert_eq!(field(runs, "date"), days, "[{name}] in run order, oldest first");
        let times: Vec<String> = days.iter().map(|d| format!("{d}T02:30:00+08:00")).collect();
        assert_eq!(field(runs, "schedule_time"), times, "[{name}] the day's fire time in Shanghai");

        let printed = std::fs::read_to_string(&log).unwrap();
        for run in runs {
            let instance = run["workflow_instance_id"].as_i64().unwrap();
            let wi = api.get(&format!("/workflow-instances/{instance}")).await;
            assert_eq!(at(wi.ok(200)["schedule_time"].as_str().unwrap()), at(run["schedule_time"].as_str().unwrap()));
            assert_eq!(wi.body["command"], "backfill");
            // The business date is the day before the run's date.
            let date = chrono::NaiveDate::parse_from_str(run["date"].as_str().unwrap(), "%Y-%m-%d").unwrap();
            let want = format!("{instance} {}", (date - chrono::Duration::days(1)).format("%Y%m%d"));
            assert!(printed.lines().any(|l| l == want), "[{name}] run {instance} did not print `{want}`:\n{printed}");
        }
        let most = most_at_once(runs);
        assert!(most <= parallelism as usize, "[{name}] {most} runs at once with parallelism {parallelism}");
        if parallelism == 1 {
            for pair in runs.windows(2) {
                assert!(at(pair[0]["end_time"].as_str().unwrap()) <= at(pair[1]["start_time"].as_str().unwrap()), "[{name}] serial runs overlapped");
            }
        } else {
            assert!(most > 1, "[{name}] a parallel backfill ran one at a time");
        }
        // Over: it cannot be stopped any more.
        let refused = api.post(&format!("/backfills/{id}/stop")).await;
        assert_eq!(refused.error(409, "conflict", None), format!("backfill {id} is already done"));
    }
    assert_eq!(api.instances_of("daily").await.len(), 20);
    sandbox.shutdown().await;
}

async fn a_dry_run_lists_the_runs_and_stores_nothing(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let log = sandbox.scratch().join("dates");
    api.put_workflow("daily", &daily("daily", &log)).await;
    // A cron that fires on weekdays only: weekend dates run at midnight.
    api.put_workflow("weekdays", "name: weekdays\ntasks:\n  - {name: a, type: shell, script: 'true'}\nschedule: {cron: '0 0 6 ? * MON-FRI', timezone: America/New_York}\n").await;
    api.put_workflow("unscheduled", "name: unscheduled\ntasks:\n  - {name: a, type: shell, script: 'true'}\n").await;

    let preview = api.backfill("daily", json!({"start": "2026-02-27", "end": "2026-03-02", "mode": "parallel", "parallelism": 4, "dry_run": true})).await;
    assert_eq!(
        preview.ok(200),
        &json!({
            "dry_run": true, "project": "e2e", "workflow": "daily", "version": 1, "timezone": "Asia/Shanghai", "parallelism": 4,
            "runs": [
                {"date": "2026-02-27", "schedule_time": "2026-02-27T02:30:00+08:00"},
                {"date": "2026-02-28", "schedule_time": "2026-02-28T02:30:00+08:00"},
                {"date": "2026-03-01", "schedule_time": "2026-03-01T02:30:00+08:00"},
                {"date": "2026-03-02", "schedule_time": "2026-03-02T02:30:00+08:00"},
            ]
        })
    );
    // DST starts in New York on 2026-03-08 (a Sunday: midnight, before the change).
    let preview = api.backfill("weekdays", json!({"dates": ["2026-03-09", "2026-03-06", "2026-03-08"], "order": "desc", "dry_run": true})).await;
    assert_eq!(preview.ok(200)["timezone"], "America/New_York");
    assert_eq!(field(runs(&preview.body), "schedule_time"), ["2026-03-09T06:00:00-04:00", "2026-03-08T00:00:00-05:00", "2026-03-06T06:00:00-05:00"]);
    let preview = api.backfill("unscheduled", json!({"dates": ["2026-03-01"], "dry_run": true})).await;
    assert_eq!((preview.ok(200)["timezone"].as_str(), runs(&preview.body)[0]["schedule_time"].as_str()), (Some("UTC"), Some("2026-03-01T00:00:00+00:00")));

    // Nothing was stored: no backfill, no instance.
    assert!(sandbox.store().backfill(BackfillId(1)).await.unwrap().is_none(), "[{}] a dry run stored a backfill", sandbox.name());
    for workflow in ["daily", "weekdays", "unscheduled"] {
        assert!(api.instances_of(workflow).await.is_empty(), "[{}] a dry run started {workflow}", sandbox.name());
    }
    api.get("/backfills/1").await.error(404, "not_found", None);
    // The first real one is the first backfill stored.
    let id = api.start("unscheduled", json!({"dates": ["2026-03-01"]})).await;
    assert_eq!(id, 1);
    api.wait_done(id).await;
    sandbox.shutdown().await;
}

async fn desc_runs_the_newest_date_first(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let log = sandbox.scratch().join("dates");
    api.put_workflow("daily", &daily("daily", &log)).await;
    let id = api.start("daily", json!({"start": "2026-03-01", "end": "2026-03-04", "order": "desc", "mode": "serial"})).await;
    let view = api.wait_done(id).await;
    let runs = runs(&view);
    assert_eq!(field(runs, "date"), ["2026-03-04", "2026-03-03", "2026-03-02", "2026-03-01"], "[{}] {view:#}", sandbox.name());
    let starts: Vec<DateTime<Utc>> = runs.iter().map(|r| at(r["start_time"].as_str().unwrap())).collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "[{}] not started newest first: {view:#}", sandbox.name());
    let printed: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(|l| l.split(' ').nth(1).unwrap().to_owned()).collect();
    assert_eq!(printed, ["20260303", "20260302", "20260301", "20260228"], "[{}] business dates in run order", sandbox.name());
    sandbox.shutdown().await;
}

async fn a_stopped_backfill_stops_its_runs_and_creates_no_more(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let name = sandbox.name();
    api.put_workflow("slow", "name: slow\ntasks:\n  - {name: nap, type: shell, script: 'sleep 30'}\n").await;
    let id = api.start("slow", json!({"start": "2026-03-01", "end": "2026-03-05", "mode": "parallel", "parallelism": 2})).await;
    // Two runs at a time, each with its task running.
    let view = api
        .wait(id, "two runs going", |b| {
            b["runs"].as_array().is_some_and(|runs| runs.len() == 2 && runs.iter().all(|r| r["state"] == "running"))
        })
        .await;
    let going: Vec<i64> = runs(&view).iter().map(|r| r["workflow_instance_id"].as_i64().unwrap()).collect();
    for instance in &going {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let wi = api.get(&format!("/workflow-instances/{instance}")).await;
            if wi.ok(200)["tasks"].as_array().is_some_and(|tasks| tasks.iter().any(|t| t["state"] == "running")) {
                break;
            }
            assert!(Instant::now() < deadline, "[{name}] the task of run {instance} did not start: {wi:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(view["created_runs"], 2, "[{name}] {view:#}");

    let stopped = api.post(&format!("/backfills/{id}/stop")).await;
    assert_eq!(stopped.ok(202), &json!({"backfill_id": id, "state": "stopped", "stopping": going}));
    let view = api.wait(id, "its runs stopped", |b| runs(b).iter().all(|r| r["state"] == "stopped")).await;
    assert_eq!((view["state"].as_str(), view["created_runs"].as_u64(), runs(&view).len()), (Some("stopped"), Some(2), 2), "[{name}] {view:#}");
    for instance in &going {
        let wi = api.get(&format!("/workflow-instances/{instance}")).await;
        assert_eq!((wi.ok(200)["state"].as_str(), wi.body["tasks"][0]["state"].as_str()), (Some("stopped"), Some("killed")), "[{name}]");
    }
    let again = api.post(&format!("/backfills/{id}/stop")).await;
    assert_eq!(again.error(409, "conflict", None), format!("backfill {id} is already stopped"));

    // Masters advance every running backfill in one pass: once a later
    // backfill is done, they have looked again since the stop.
    api.put_workflow("quick", "name: quick\ntasks:\n  - {name: a, type: shell, script: 'true'}\n").await;
    let later = api.start("quick", json!({"dates": ["2026-03-01", "2026-03-02"]})).await;
    api.wait_done(later).await;
    let view = api.get(&format!("/backfills/{id}")).await;
    assert_eq!((view.ok(200)["created_runs"].as_u64(), runs(&view.body).len()), (Some(2), 2), "[{name}] a stopped backfill created runs");
    assert_eq!(api.instances_of("slow").await.len(), 2);
    sandbox.shutdown().await;
}

async fn bad_backfills_are_refused_at_their_field_and_store_nothing(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let log = sandbox.scratch().join("dates");
    api.put_workflow("daily", &daily("daily", &log)).await;
    let range = |extra: Value| {
        let mut body = json!({"start": "2026-03-01", "end": "2026-03-03"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    for (body, field, needle) in [
        (json!({"start": "2026-03-10", "end": "2026-03-01"}), "end", "2026-03-01 is before `start` 2026-03-10"),
        (json!({"start": "2026-03-01", "end": "2036-03-10"}), "end", "3663 days; at most 3660"),
        (json!({"dates": ["2026-03-01"], "start": "2026-03-01"}), "dates", "not both"),
        (range(json!({"mode": "serial", "parallelism": 3})), "parallelism", "mode `parallel`"),
        (range(json!({"mode": "parallel", "parallelism": 1})), "parallelism", "from 2 to 100"),
        (range(json!({"mode": "parallel", "parallelism": 500})), "parallelism", "from 2 to 100"),
        (range(json!({"mode": "turbo"})), "mode", "unknown mode `turbo`"),
        (range(json!({"order": "random"})), "order", "unknown order `random`"),
        (json!({"start": "2026-02-30", "end": "2026-03-03"}), "start", "got `2026-02-30`"),
        (json!({"dates": ["2026-03-01", "03/02/2026"]}), "dates[1]", "YYYY-MM-DD"),
        (json!({"dates": ["2026-03-01", "2026-03-01"]}), "dates[1]", "given twice"),
        (json!({"start": "2026-03-01"}), "end", "required"),
        (json!({}), "start", "required"),
        (range(json!({"parallel": 3})), "parallel", "unknown field `parallel`"),
        (range(json!({"params": {"dt": 3}})), "params.dt", "invalid type"),
        (range(json!({"dry_run": "yes"})), "dry_run", "invalid type"),
    ] {
        let message = api.backfill("daily", body.clone()).await.error(400, "invalid_input", Some(field));
        assert!(message.contains(needle), "{body}: expected `{needle}` in: {message}");
    }
    let message = api.backfill("nothing", json!({"start": "2026-03-01", "end": "2026-03-03"})).await.error(404, "not_found", None);
    assert_eq!(message, "workflow `nothing` not found in project `e2e`");
    api.send(api.http.post(format!("{}/projects/nowhere/workflows/daily/backfill", api.base)).json(&json!({"dates": ["2026-03-01"]})))
        .await
        .error(404, "not_found", None);
    let not_json = api.http.post(format!("{}/projects/e2e/workflows/daily/backfill", api.base)).body("start=2026-03-01");
    api.send(not_json).await.error(415, "unsupported_media_type", None);
    api.get("/backfills/987654").await.error(404, "not_found", None);
    api.get("/backfills/seven").await.error(400, "invalid_input", Some("id"));
    api.post("/backfills/987654/stop").await.error(404, "not_found", None);

    // Nothing was stored.
    assert!(sandbox.store().backfill(BackfillId(1)).await.unwrap().is_none(), "[{}] a refused request stored a backfill", sandbox.name());
    assert!(api.instances_of("daily").await.is_empty());
    sandbox.shutdown().await;
}
