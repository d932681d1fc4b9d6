//! Schedules and run commands through the REST API, end to end, in both
//! deployments: standalone (SQLite, embedded registry) and a 2-master /
//! 2-worker cluster (PostgreSQL, ZooKeeper).
//!
//! Schedules: from a workflow file to stored (offline), previewed in their
//! time zone, online (the engine fires them) and offline again; bad ones
//! refused at their field with nothing stored. Run commands: rerun,
//! recover, pause, resume and force-success behave as the engine tests
//! (`commands.rs`) show, and what the instance's state does not allow is a
//! 409 naming that state. Tests wait on state with deadlines.

use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};
use sluice_domain::{TaskState, WorkflowInstanceId, WorkflowState};
use sluice_e2e::Sandbox;

sluice_e2e::both_deployments!(
    a_schedule_in_a_workflow_file_is_stored_offline_and_previewed_in_its_zone,
    an_online_schedule_fires_and_offline_stops_it,
    bad_schedules_are_refused_at_their_field_and_store_nothing,
    rerun_and_recover_restart_finished_instances,
    pause_and_resume_a_running_instance,
    force_success_lets_the_downstream_run,
);

const MINUTE: Duration = Duration::from_secs(60);
const YAML: &str = "application/yaml";
const JSON: &str = "application/json";

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

    /// Asserts a 409 whose message contains `needle`.
    #[track_caller]
    fn conflict(&self, needle: &str) {
        let message = self.error(409, "conflict", None);
        assert!(message.contains(needle), "expected `{needle}` in: {message}");
    }

    #[track_caller]
    fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "{self:?}");
        &self.body
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(sandbox: &Sandbox) -> Api {
        Api { base: format!("{}/api/v1", sandbox.api_url()), http: sluice_e2e::http_client() }
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

    /// A POST with no body, as the run commands take it.
    async fn post(&self, path: &str) -> Answer {
        self.send(self.http.post(format!("{}{path}", self.base))).await
    }

    async fn put(&self, path: &str, content_type: &str, body: &str) -> Answer {
        self.send(self.http.put(format!("{}{path}", self.base)).header(CONTENT_TYPE, content_type).body(body.to_owned())).await
    }

    async fn put_workflow(&self, name: &str, yaml: &str) -> Answer {
        self.put(&format!("/projects/e2e/workflows/{name}"), YAML, yaml).await
    }

    async fn run(&self, workflow: &str) -> i64 {
        let accepted = self.send(self.http.post(format!("{}/projects/e2e/workflows/{workflow}/runs", self.base)).json(&json!({}))).await;
        accepted.ok(202)["workflow_instance_id"].as_i64().unwrap_or_else(|| panic!("no instance id: {accepted:?}"))
    }

    async fn instances_of(&self, workflow: &str) -> Vec<Value> {
        let page = self.get(&format!("/workflow-instances?project=e2e&workflow={workflow}&limit=1000")).await;
        page.ok(200)["items"].as_array().unwrap().clone()
    }
}

fn task(tasks: &[sluice_domain::TaskInstance], name: &str) -> sluice_domain::TaskInstance {
    tasks.iter().find(|t| t.name == name).cloned().unwrap_or_else(|| panic!("no task instance `{name}` in {tasks:?}"))
}

fn times(preview: &Value) -> Vec<&str> {
    preview["times"].as_array().unwrap_or_else(|| panic!("no times: {preview}")).iter().map(|t| t.as_str().unwrap()).collect()
}

// --- schedules ---------------------------------------------------------------

const NIGHTLY: &str = "
name: nightly
tasks:
  - {name: a, type: shell, script: 'true'}
schedule: {cron: '0 30 2 * * ?', timezone: America/New_York, start: 2026-01-01, end: 2028-01-01, misfire: run_all}
";

async fn a_schedule_in_a_workflow_file_is_stored_offline_and_previewed_in_its_zone(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let saved = api.put_workflow("nightly", NIGHTLY).await;
    assert_eq!(saved.ok(201)["schedule"], json!({"change": "created", "online": false}), "a new schedule starts offline");
    let written = json!({"cron": "0 30 2 * * ?", "timezone": "America/New_York", "start": "2026-01-01", "end": "2028-01-01", "misfire": "run_all"});
    let stored = api.get("/projects/e2e/workflows/nightly/schedule").await;
    let stored = stored.ok(200);
    assert_eq!((stored["online"].as_bool(), &stored["schedule"], &stored["last_fire"]), (Some(false), &written, &Value::Null), "{stored}");
    let document = api.get("/projects/e2e/workflows/nightly").await;
    assert_eq!(document.ok(200)["document"]["schedule"], written, "GET of the workflow shows its schedule");
    let again = api.put_workflow("nightly", NIGHTLY).await;
    assert_eq!((again.ok(200)["created"].as_bool(), &again.body["schedule"]), (Some(false), &json!({"change": "unchanged", "online": false})));

    // In the schedule's zone with its offset, across both DST changes.
    let preview = api.get("/projects/e2e/workflows/nightly/schedule/preview?count=3&after=2026-03-07T12:00:00Z").await;
    let preview = preview.ok(200);
    assert_eq!((preview["timezone"].as_str(), preview["online"].as_bool()), (Some("America/New_York"), Some(false)));
    assert_eq!(times(preview), ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00", "2026-03-10T02:30:00-04:00"], "02:30 is skipped on 2026-03-08");
    let preview = api.get("/projects/e2e/workflows/nightly/schedule/preview?count=3&after=2026-10-30T12:00:00Z").await;
    assert_eq!(times(preview.ok(200)), ["2026-10-31T02:30:00-04:00", "2026-11-01T02:30:00-05:00", "2026-11-02T02:30:00-05:00"]);
    // Fewer than asked once `end` is reached.
    let preview = api.get("/projects/e2e/workflows/nightly/schedule/preview?count=100&after=2027-12-01T00:00:00Z").await;
    let last_month = times(preview.ok(200));
    assert_eq!((last_month.len(), last_month.last().copied()), (31, Some("2027-12-31T02:30:00-05:00")));
    // By default the next 5 from now.
    let preview = api.get("/projects/e2e/workflows/nightly/schedule/preview").await;
    let upcoming: Vec<DateTime<Utc>> = times(preview.ok(200)).iter().map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)).collect();
    assert_eq!(upcoming.len(), 5, "{}", preview.body);
    assert!(upcoming[0] > Utc::now() - Duration::from_secs(60) && upcoming.windows(2).all(|w| w[0] < w[1]), "{upcoming:?}");
    for (query, field) in [("count=0", "count"), ("count=101", "count"), ("count=many", "count"), ("after=yesterday", "after"), ("colour=red", "colour")] {
        api.get(&format!("/projects/e2e/workflows/nightly/schedule/preview?{query}")).await.error(400, "invalid_input", Some(field));
    }

    // Online; a changed trigger (from the file) keeps it online; a file
    // without `schedule` leaves it alone.
    assert_eq!(api.post("/projects/e2e/workflows/nightly/schedule/online").await.ok(200)["online"], true);
    let changed = api.put_workflow("nightly", &NIGHTLY.replace("0 30 2 * * ?", "0 45 3 * * ?")).await;
    assert_eq!(changed.ok(200)["schedule"], json!({"change": "changed", "online": true}));
    let without = api.put_workflow("nightly", NIGHTLY.split("schedule:").next().unwrap()).await;
    assert!(without.ok(200).get("schedule").is_none(), "{without:?}");
    let stored = api.get("/projects/e2e/workflows/nightly/schedule").await;
    assert_eq!((stored.ok(200)["online"].as_bool(), stored.body["schedule"]["cron"].as_str()), (Some(true), Some("0 45 3 * * ?")));

    // PUT …/schedule takes the same shape as JSON; an interval counts from its start.
    let replaced = api.put("/projects/e2e/workflows/nightly/schedule", JSON, r#"{"every": "5m", "times": 3, "start": "2027-01-01"}"#).await;
    let replaced = replaced.ok(200);
    assert_eq!(replaced["schedule"], json!({"every": "5m", "times": 3, "start": "2027-01-01", "misfire": "run_once"}));
    assert_eq!(replaced["online"], true, "replacing keeps it online");
    let preview = api.get("/projects/e2e/workflows/nightly/schedule/preview?count=5").await;
    assert_eq!(preview.ok(200)["timezone"], "UTC");
    assert_eq!(times(&preview.body), ["2027-01-01T00:00:00+00:00", "2027-01-01T00:05:00+00:00", "2027-01-01T00:10:00+00:00"]);
    assert_eq!(api.post("/projects/e2e/workflows/nightly/schedule/offline").await.ok(200)["online"], false);
    assert!(api.instances_of("nightly").await.is_empty(), "nothing here was due");

    // The new operations are documented.
    let spec = api.get("/openapi.json").await;
    for (path, method) in [
        ("/api/v1/projects/{project}/workflows/{name}/schedule", "get"),
        ("/api/v1/projects/{project}/workflows/{name}/schedule", "put"),
        ("/api/v1/projects/{project}/workflows/{name}/schedule/online", "post"),
        ("/api/v1/projects/{project}/workflows/{name}/schedule/offline", "post"),
        ("/api/v1/projects/{project}/workflows/{name}/schedule/preview", "get"),
        ("/api/v1/workflow-instances/{id}/rerun", "post"),
        ("/api/v1/workflow-instances/{id}/recover", "post"),
        ("/api/v1/workflow-instances/{id}/pause", "post"),
        ("/api/v1/workflow-instances/{id}/resume", "post"),
        ("/api/v1/task-instances/{id}/force-success", "post"),
    ] {
        assert!(spec.ok(200)["paths"][path][method]["responses"].is_object(), "{method} {path} is not in the OpenAPI document");
    }
    sandbox.shutdown().await;
}

const TICKER: &str = "
name: ticker
tasks:
  - {name: tick, type: shell, script: 'true'}
schedule: {cron: '*/2 * * * * ?', misfire: skip}
";

/// How late the cron leader may notice a schedule went offline: it re-reads
/// schedules every second (`master/src/cron.rs`), plus one period.
const OFFLINE_LAG: Duration = Duration::from_secs(3);

async fn an_online_schedule_fires_and_offline_stops_it(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    assert_eq!(api.put_workflow("ticker", TICKER).await.ok(201)["schedule"]["online"], false);
    assert!(api.instances_of("ticker").await.is_empty(), "an offline schedule fired");
    let online_at = Utc::now();
    api.post("/projects/e2e/workflows/ticker/schedule/online").await.ok(200);

    let deadline = Instant::now() + Duration::from_secs(30);
    let fired = loop {
        let fired = api.instances_of("ticker").await;
        if fired.len() >= 3 {
            break fired;
        }
        assert!(Instant::now() < deadline, "[{}] 3 fires of a */2 s schedule not within 30 s: {fired:?}", sandbox.name());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut fire_times: Vec<DateTime<Utc>> = fired
        .iter()
        .map(|wi| {
            assert_eq!(wi["command"], "start", "{wi}");
            DateTime::parse_from_rfc3339(wi["schedule_time"].as_str().unwrap_or_else(|| panic!("no schedule_time: {wi}"))).unwrap().with_timezone(&Utc)
        })
        .collect();
    fire_times.sort();
    fire_times.dedup();
    assert_eq!(fire_times.len(), fired.len(), "a fire time ran twice: {fired:?}");
    for t in &fire_times {
        assert!(t.second() % 2 == 0 && t.nanosecond() == 0 && *t > online_at - Duration::from_secs(1), "[{}] {t}", sandbox.name());
    }

    let offline = api.post("/projects/e2e/workflows/ticker/schedule/offline").await;
    assert_eq!(offline.ok(200)["online"], false);
    assert!(offline.body["last_fire"].is_string(), "{offline:?}");
    let offline_at = Utc::now();
    // Absence can only be observed over a while: watch for three periods
    // past the leader's lag that no later fire time turns up.
    let watch_until = offline_at + OFFLINE_LAG + Duration::from_secs(6);
    while Utc::now() < watch_until {
        for wi in api.instances_of("ticker").await {
            let at = DateTime::parse_from_rfc3339(wi["schedule_time"].as_str().unwrap()).unwrap().with_timezone(&Utc);
            assert!(at <= offline_at + OFFLINE_LAG, "[{}] fired at {at}, after going offline at {offline_at}", sandbox.name());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for wi in api.instances_of("ticker").await {
        sandbox.wait_finished(WorkflowInstanceId(wi["id"].as_i64().unwrap()), MINUTE).await;
    }
    sandbox.shutdown().await;
}

async fn bad_schedules_are_refused_at_their_field_and_store_nothing(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let tasks = "name: bad\ntasks:\n  - {name: a, type: shell, script: 'true'}\n";
    let cases = [
        ("{cron: '0 61 2 * * ?'}", "schedule.cron", "minutes field: `61` is not valid here"),
        ("{cron: '0 0 2 ? * 9'}", "schedule.cron", "day-of-week field"),
        ("{cron: '0 0 2 * *'}", "schedule.cron", "expected 6 or 7 fields"),
        ("{cron: '0 0 2 * * ?', timezone: Mars/Olympus}", "schedule.timezone", "`Mars/Olympus`: unknown time zone"),
        ("{cron: '0 0 2 * * ?', misfir: skip}", "schedule.misfir", "unknown field"),
        ("{cron: '0 0 2 * * ?', misfire: sometimes}", "schedule.misfire", "sometimes"),
        ("{cron: '0 0 2 * * ?', start: someday}", "schedule.start", "expected a date"),
        ("{cron: '0 0 2 * * ?', start: 2026-02-01, end: 2026-01-01}", "schedule.end", "must be after `start`"),
        ("{cron: '0 0 2 * * ?', times: 2}", "schedule.times", "only for `every`"),
        ("{every: 0s}", "schedule.every", "too short"),
        ("{every: 5m, times: 0}", "schedule.times", "1 or more"),
        ("{every: 5m, cron: '0 0 2 * * ?'}", "schedule", "not both"),
    ];
    for (schedule, field, message) in cases {
        let refused = api.put_workflow("bad", &format!("{tasks}schedule: {schedule}\n")).await;
        let got = refused.error(400, "invalid_input", Some(field));
        assert!(got.contains(message), "{schedule}: expected `{message}` in `{got}`");
        api.get("/projects/e2e/workflows/bad").await.error(404, "not_found", None);
    }

    // On a stored workflow: a bad document changes neither it nor its schedule.
    let plain = "name: plain\ntasks:\n  - {name: a, type: shell, script: 'true'}\n";
    api.put_workflow("plain", plain).await.ok(201);
    let message = api.get("/projects/e2e/workflows/plain/schedule").await.error(404, "not_found", None);
    assert!(message.contains("has no schedule"), "{message}");
    api.post("/projects/e2e/workflows/plain/schedule/online").await.error(404, "not_found", None);
    api.get("/projects/e2e/workflows/plain/schedule/preview").await.error(404, "not_found", None);
    let changed = plain.replace("'true'", "'echo changed'");
    api.put_workflow("plain", &format!("{changed}schedule: {{cron: '0 0 2 * * ?', timezone: Nowhere/Land}}\n")).await.error(
        400,
        "invalid_input",
        Some("schedule.timezone"),
    );
    assert_eq!(api.get("/projects/e2e/workflows/plain").await.ok(200)["version"], 1, "the workflow was changed");
    api.get("/projects/e2e/workflows/plain/schedule").await.error(404, "not_found", None);

    // PUT …/schedule: the same checks, fields named without a prefix.
    for (body, field) in [
        (r#"{"cron": "0 61 2 * * ?"}"#, Some("cron")),
        (r#"{"cron": "0 0 2 * * ?", "timezone": "Mars/Olympus"}"#, Some("timezone")),
        (r#"{"cron": "0 0 2 * * ?", "colour": "red"}"#, Some("colour")),
        (r#"{"every": "-5m"}"#, Some("every")),
        (r#"{}"#, None),
        (r#"["cron"]"#, None),
    ] {
        api.put("/projects/e2e/workflows/plain/schedule", JSON, body).await.error(400, "invalid_input", field);
    }
    api.put("/projects/e2e/workflows/plain/schedule", JSON, r#"{"cron": "#).await.error(400, "invalid_input", None);
    api.put("/projects/e2e/workflows/plain/schedule", "text/plain", r#"{"cron": "0 0 2 * * ?"}"#).await.error(415, "unsupported_media_type", None);
    api.get("/projects/e2e/workflows/plain/schedule").await.error(404, "not_found", None);
    let created = api.put("/projects/e2e/workflows/plain/schedule", JSON, r#"{"cron": "0 0 2 * * ?"}"#).await;
    assert_eq!(created.ok(201)["schedule"], json!({"cron": "0 0 2 * * ?", "timezone": "UTC", "misfire": "run_once"}));
    api.put("/projects/e2e/workflows/plain/schedule", JSON, r#"{"cron": "0 0 25 * * ?"}"#).await.error(400, "invalid_input", Some("cron"));
    assert_eq!(api.get("/projects/e2e/workflows/plain/schedule").await.ok(200)["schedule"]["cron"], "0 0 2 * * ?", "a refused PUT changed it");
    api.put("/projects/e2e/workflows/nope/schedule", JSON, r#"{"cron": "0 0 2 * * ?"}"#).await.error(404, "not_found", None);
    api.post("/projects/nope/workflows/plain/schedule/offline").await.error(404, "not_found", None);
    sandbox.shutdown().await;
}

// --- run commands -------------------------------------------------------------

async fn rerun_and_recover_restart_finished_instances(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let dir = sandbox.scratch();
    let doc = format!(
        "name: flaky\ntasks:\n  - {{name: a, type: shell, script: 'echo a >> {log}'}}\n  - {{name: b, type: shell, script: '[ -f {flag} ]', deps: [a]}}\n",
        log = dir.join("ran").display(),
        flag = dir.join("fixed").display()
    );
    api.put_workflow("flaky", &doc).await.ok(201);
    let id = api.run("flaky").await;
    let instance = WorkflowInstanceId(id);
    let (wi, _) = sandbox.wait_finished(instance, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Failure);

    // Recover: only the failed task runs again; `a` is kept.
    std::fs::write(dir.join("fixed"), "").unwrap();
    let accepted = api.post(&format!("/workflow-instances/{id}/recover")).await;
    assert_eq!((accepted.ok(202)["workflow_instance_id"].as_i64(), accepted.body["run"].as_u64()), (Some(id), Some(2)));
    assert!(accepted.body["command_id"].as_i64().is_some());
    let (wi, tasks) = sandbox.wait_until(instance, MINUTE, "recovered", |wi, _| wi.run == 2 && wi.state.is_final()).await;
    assert_eq!(wi.state, WorkflowState::Success, "[{}] {tasks:?}", sandbox.name());
    assert_eq!((task(&tasks, "a").run, task(&tasks, "b").run, task(&tasks, "b").attempt), (1, 2, 2));
    api.post(&format!("/workflow-instances/{id}/recover")).await.conflict(&format!("workflow instance {id} is success: recover needs it stopped or failure"));
    api.post(&format!("/workflow-instances/{id}/resume")).await.conflict("is success: resume needs it paused");
    api.post(&format!("/workflow-instances/{id}/pause")).await.conflict("is success: pause needs it running");

    // Rerun: every task again, same instance, same task instances.
    let accepted = api.post(&format!("/workflow-instances/{id}/rerun")).await;
    assert_eq!(accepted.ok(202)["run"], 3);
    let (wi, tasks) = sandbox.wait_until(instance, MINUTE, "rerun", |wi, _| wi.run == 3 && wi.state.is_final()).await;
    assert_eq!(wi.state, WorkflowState::Success, "[{}] {tasks:?}", sandbox.name());
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|t| t.run == 3 && t.state == TaskState::Success), "{tasks:?}");
    assert_eq!(std::fs::read_to_string(dir.join("ran")).unwrap(), "a\na\n", "a ran first and on the rerun, not on recover");
    let view = api.get(&format!("/workflow-instances/{id}")).await;
    assert_eq!((view.ok(200)["run"].as_u64(), view.body["command"].as_str()), (Some(3), Some("rerun")));

    // A running instance can be neither rerun, recovered nor resumed.
    api.put_workflow("slow", "name: slow\ntasks:\n  - {name: nap, type: shell, script: 'sleep 60'}\n").await.ok(201);
    let slow = api.run("slow").await;
    sandbox.wait_until(WorkflowInstanceId(slow), MINUTE, "nap running", |wi, _| wi.state == WorkflowState::Running).await;
    api.post(&format!("/workflow-instances/{slow}/rerun")).await.conflict(&format!("workflow instance {slow} is running: rerun needs it stopped, success or failure"));
    api.post(&format!("/workflow-instances/{slow}/recover")).await.conflict("is running: recover needs it stopped or failure");
    api.post(&format!("/workflow-instances/{slow}/resume")).await.conflict("is running: resume needs it paused");
    api.post(&format!("/workflow-instances/{slow}/stop")).await.ok(202);
    let (wi, _) = sandbox.wait_finished(WorkflowInstanceId(slow), MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Stopped);

    for action in ["rerun", "recover", "pause", "resume"] {
        api.post(&format!("/workflow-instances/987654/{action}")).await.error(404, "not_found", None);
        api.post(&format!("/workflow-instances/abc/{action}")).await.error(400, "invalid_input", Some("id"));
    }
    sandbox.shutdown().await;
}

async fn pause_and_resume_a_running_instance(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let go = sandbox.scratch().join("go");
    let doc = format!(
        "name: pausing\ntasks:\n  - {{name: one, type: shell, script: 'while [ ! -f {go} ]; do sleep 0.05; done'}}\n  - {{name: two, type: shell, script: 'true', deps: [one]}}\n",
        go = go.display()
    );
    api.put_workflow("pausing", &doc).await.ok(201);
    let id = api.run("pausing").await;
    let instance = WorkflowInstanceId(id);
    sandbox.wait_until(instance, MINUTE, "one running", |_, t| t.iter().any(|t| t.name == "one" && t.state == TaskState::Running)).await;
    api.post(&format!("/workflow-instances/{id}/resume")).await.conflict(&format!("workflow instance {id} is running: resume needs it paused"));

    let accepted = api.post(&format!("/workflow-instances/{id}/pause")).await;
    assert_eq!(accepted.ok(202)["workflow_instance_id"], id);
    assert!(accepted.body.get("run").is_none(), "{accepted:?}");
    sandbox.wait_until(instance, MINUTE, "pausing", |wi, _| wi.state == WorkflowState::ReadyPause).await;
    api.post(&format!("/workflow-instances/{id}/pause")).await.conflict("is ready_pause: pause needs it running");
    api.post(&format!("/workflow-instances/{id}/resume")).await.conflict("is ready_pause: resume needs it paused");

    // The running task finishes; nothing new starts.
    std::fs::write(&go, "").unwrap();
    let (wi, tasks) = sandbox.wait_until(instance, MINUTE, "paused", |wi, _| wi.state == WorkflowState::Paused).await;
    assert_eq!((tasks.len(), task(&tasks, "one").state), (1, TaskState::Success), "[{}] {tasks:?}", sandbox.name());
    assert!(wi.end_time.is_none());
    api.post(&format!("/workflow-instances/{id}/pause")).await.conflict("is paused: pause needs it running");
    api.post(&format!("/workflow-instances/{id}/rerun")).await.conflict("is paused: rerun needs it");

    let accepted = api.post(&format!("/workflow-instances/{id}/resume")).await;
    assert!(accepted.ok(202).get("run").is_none(), "resume goes on with the same run: {accepted:?}");
    let (wi, tasks) = sandbox.wait_finished(instance, MINUTE).await;
    assert_eq!((wi.state, wi.run), (WorkflowState::Success, 1), "[{}] {tasks:?}", sandbox.name());
    assert_eq!(task(&tasks, "two").state, TaskState::Success);
    api.post(&format!("/workflow-instances/{id}/resume")).await.conflict("is success: resume needs it paused");
    sandbox.shutdown().await;
}

async fn force_success_lets_the_downstream_run(sandbox: Sandbox) {
    let api = Api::new(&sandbox);

    // In a failed instance: the instance is restarted and the downstream runs.
    let doc = "name: forced\ntasks:\n  - {name: ok, type: shell, script: 'true'}\n  - {name: broken, type: shell, script: 'exit 4', deps: [ok]}\n  - {name: after, type: shell, script: 'true', deps: [broken]}\n";
    api.put_workflow("forced", doc).await.ok(201);
    let id = api.run("forced").await;
    let instance = WorkflowInstanceId(id);
    let (wi, tasks) = sandbox.wait_finished(instance, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Failure);
    let (ok, broken) = (task(&tasks, "ok").id.get(), task(&tasks, "broken").id.get());
    api.post(&format!("/task-instances/{ok}/force-success")).await.conflict(&format!("task instance {ok} (`ok`) is success: force-success needs it failure or killed"));
    let accepted = api.post(&format!("/task-instances/{broken}/force-success")).await;
    assert_eq!((accepted.ok(202)["workflow_instance_id"].as_i64(), accepted.body["run"].as_u64()), (Some(id), Some(2)));
    let (wi, tasks) = sandbox.wait_until(instance, MINUTE, "after ran", |wi, _| wi.run == 2 && wi.state.is_final()).await;
    assert_eq!(wi.state, WorkflowState::Success, "[{}] {tasks:?}", sandbox.name());
    let forced = task(&tasks, "broken");
    assert_eq!((forced.state, forced.attempt, forced.exit_code), (TaskState::ForcedSuccess, 1, Some(4)), "not run again");
    assert_eq!(task(&tasks, "after").state, TaskState::Success);
    api.post(&format!("/task-instances/{broken}/force-success")).await.conflict("is forced_success: force-success needs it failure or killed");

    // In a running instance (failure strategy `continue`): at once, by its driver.
    let gate = sandbox.scratch().join("gate");
    let doc = format!(
        "name: forced_live\nfailure_strategy: continue\ntasks:\n  - {{name: broken, type: shell, script: 'exit 4'}}\n  - {{name: after, type: shell, script: 'true', deps: [broken]}}\n  - {{name: nap, type: shell, script: 'while [ ! -f {gate} ]; do sleep 0.05; done'}}\n",
        gate = gate.display()
    );
    api.put_workflow("forced_live", &doc).await.ok(201);
    let id = api.run("forced_live").await;
    let instance = WorkflowInstanceId(id);
    let (_, tasks) = sandbox
        .wait_until(instance, MINUTE, "broken failed, nap running", |_, t| {
            t.iter().any(|t| t.name == "broken" && t.state == TaskState::Failure) && t.iter().any(|t| t.name == "nap" && t.state == TaskState::Running)
        })
        .await;
    let accepted = api.post(&format!("/task-instances/{}/force-success", task(&tasks, "broken").id)).await;
    assert!(accepted.ok(202).get("run").is_none(), "a running instance is not restarted: {accepted:?}");
    let (wi, _) = sandbox.wait_until(instance, MINUTE, "after ran", |_, t| t.iter().any(|t| t.name == "after" && t.state == TaskState::Success)).await;
    assert_eq!((wi.state, wi.run), (WorkflowState::Running, 1), "nap still holds it open");
    api.post(&format!("/task-instances/{}/force-success", task(&tasks, "nap").id)).await.conflict("(`nap`) is running: force-success needs it failure or killed");
    std::fs::write(&gate, "").unwrap();
    let (wi, tasks) = sandbox.wait_finished(instance, MINUTE).await;
    assert_eq!(wi.state, WorkflowState::Success, "[{}] {tasks:?}", sandbox.name());

    api.post("/task-instances/987654/force-success").await.error(404, "not_found", None);
    api.post("/task-instances/x1/force-success").await.error(400, "invalid_input", Some("id"));
    sandbox.shutdown().await;
}
