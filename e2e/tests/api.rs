//! The REST API end to end, over HTTP, in both deployments: standalone
//! (SQLite, embedded registry) and a 2-master / 2-worker cluster
//! (PostgreSQL, ZooKeeper). Runs really execute; tests wait on state.
//!
//! Every refused request is checked for its status, error code and `field`,
//! and for having stored nothing.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};
use sluice_domain::{TaskState, WorkflowInstanceId};
use sluice_e2e::Sandbox;

sluice_e2e::both_deployments!(
    projects_are_created_listed_and_fetched,
    workflows_are_versioned_documents,
    bad_workflow_documents_are_refused_and_store_nothing,
    a_run_is_stored_when_accepted_and_reports_its_tasks,
    start_tasks_with_a_scope_and_dry_runs,
    bad_run_requests_are_refused_and_store_nothing,
    instances_are_filtered_and_paged,
    a_running_instance_can_be_stopped,
    a_running_task_can_be_killed,
    the_api_describes_itself_and_answers_unknown_routes,
);

const MINUTE: Duration = Duration::from_secs(60);
const YAML: &str = "application/yaml";
const JSON: &str = "application/json";

/// A response: status and body (JSON, or a string for anything else,
/// `Null` when empty).
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
    content_type: String,
}

impl Answer {
    /// Asserts the API's error shape with `status`, `code` and `field`;
    /// returns the message.
    #[track_caller]
    fn error(&self, status: u16, code: &str, field: Option<&str>) -> String {
        assert_eq!(self.status, status, "{self:?}");
        let error = &self.body["error"];
        assert_eq!(error["code"], code, "{self:?}");
        assert_eq!(error["field"].as_str(), field, "{self:?}");
        let message = error["message"].as_str().unwrap_or_else(|| panic!("no message: {self:?}"));
        assert!(!message.is_empty());
        message.to_owned()
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
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let text = response.text().await.expect("body read");
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Answer { status, body, content_type }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.send(self.http.delete(format!("{}{path}", self.base))).await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    async fn post_raw(&self, path: &str, content_type: &str, body: &str) -> Answer {
        self.send(self.http.post(format!("{}{path}", self.base)).header(CONTENT_TYPE, content_type).body(body.to_owned())).await
    }

    async fn put(&self, path: &str, content_type: &str, body: &str) -> Answer {
        self.send(self.http.put(format!("{}{path}", self.base)).header(CONTENT_TYPE, content_type).body(body.to_owned())).await
    }

    /// Runs `workflow` of project `e2e`; returns the new instance id.
    async fn run(&self, workflow: &str, request: Value) -> i64 {
        let accepted = self.post(&format!("/projects/e2e/workflows/{workflow}/runs"), &request).await;
        accepted.ok(202)["workflow_instance_id"].as_i64().unwrap_or_else(|| panic!("no instance id: {accepted:?}"))
    }

    async fn instance_count(&self) -> usize {
        self.get("/workflow-instances?limit=1000").await.ok(200)["items"].as_array().unwrap().len()
    }

    async fn workflow_names(&self, project: &str) -> Vec<String> {
        let list = self.get(&format!("/projects/{project}/workflows")).await;
        list.ok(200).as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap().to_owned()).collect()
    }
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array().unwrap_or_else(|| panic!("not a list: {list}")).iter().map(|v| v[key].as_str().unwrap().to_owned()).collect()
}

const DIAMOND: &str = "
name: diamond
description: four tasks in a diamond
tasks:
  - {name: a, type: shell, script: echo a}
  - {name: b, type: shell, script: echo b, deps: [a]}
  - {name: c, type: shell, script: echo c, deps: [a]}
  - {name: d, type: shell, script: echo d, deps: [b, c]}
";

async fn put_diamond(api: &Api) {
    let saved = api.put("/projects/e2e/workflows/diamond", YAML, DIAMOND).await;
    assert_eq!(saved.ok(201)["created"], true);
}

async fn projects_are_created_listed_and_fetched(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let created = api.post("/projects", &json!({"name": "demo", "description": "the demo project", "params": {"env": "test"}})).await;
    let project = created.ok(201);
    assert_eq!((project["name"].as_str(), project["description"].as_str()), (Some("demo"), Some("the demo project")));
    assert_eq!(project["params"]["env"], "test");
    assert!(project["id"].as_i64().is_some() && project["created_at"].is_string());

    let listed = api.get("/projects").await;
    assert_eq!(names(listed.ok(200), "name"), ["demo", "e2e"]);
    let fetched = api.get("/projects/demo").await;
    assert_eq!(fetched.ok(200), project);

    let message = api.post("/projects", &json!({"name": "demo"})).await.error(409, "conflict", None);
    assert!(message.contains("`demo` already exists"), "{message}");
    let message = api.get("/projects/nope").await.error(404, "not_found", None);
    assert!(message.contains("`nope`"), "{message}");

    // Refused bodies create nothing.
    api.post("/projects", &json!({"name": "a/b"})).await.error(400, "invalid_input", Some("name"));
    api.post("/projects", &json!({"name": "x", "colour": "red"})).await.error(400, "invalid_input", Some("colour"));
    api.post("/projects", &json!({"description": "no name"})).await.error(400, "invalid_input", Some("name"));
    api.post("/projects", &json!({"name": "x", "params": {"n": 1}})).await.error(400, "invalid_input", Some("params.n"));
    let message = api.post_raw("/projects", JSON, r#"{"name": "x", "#).await.error(400, "invalid_input", None);
    assert!(message.starts_with("malformed JSON"), "{message}");
    let message = api.post_raw("/projects", "text/plain", r#"{"name": "x"}"#).await.error(415, "unsupported_media_type", None);
    assert!(message.contains("application/json"), "{message}");
    assert_eq!(names(api.get("/projects").await.ok(200), "name"), ["demo", "e2e"]);
    api.get("/projects/x").await.error(404, "not_found", None);
    sandbox.shutdown().await;
}

const ETL_V1: &str = "
project: e2e
name: etl
description: nightly load
params: {dt: '${system.biz.date}'}
tasks:
  - name: extract_orders
    type: shell
    script: echo extract
    retries: 2
    retry_interval: 30s
    timeout: 10m
    timeout_strategy: fail
  - name: load
    type: python
    script: print('load')
    deps: [extract_orders]
";

async fn workflows_are_versioned_documents(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let saved = api.put("/projects/e2e/workflows/etl", YAML, ETL_V1).await;
    assert_eq!(saved.ok(201), &json!({"name": "etl", "version": 1, "created": true}));

    // The same document as JSON (in another task order) is no change.
    let same_as_json = json!({
        "name": "etl",
        "description": "nightly load",
        "params": {"dt": "${system.biz.date}"},
        "tasks": [
            {"name": "load", "type": "python", "script": "print('load')", "deps": ["extract_orders"]},
            {"name": "extract_orders", "type": "shell", "script": "echo extract", "retries": 2, "retry_interval": "30s",
             "timeout": "10m", "timeout_strategy": "fail"}
        ]
    });
    let unchanged = api.put("/projects/e2e/workflows/etl", "application/json; charset=utf-8", &same_as_json.to_string()).await;
    assert_eq!(unchanged.ok(200), &json!({"name": "etl", "version": 1, "created": false}));
    // The other YAML content types are accepted too.
    assert_eq!(api.put("/projects/e2e/workflows/etl", "text/yaml", ETL_V1).await.ok(200)["version"], 1);
    assert_eq!(api.put("/projects/e2e/workflows/etl", "application/x-yaml", ETL_V1).await.ok(200)["version"], 1);
    // A type's fields under `with:` are the same fields as beside the generic keys.
    let mut nested = same_as_json.clone();
    for task in nested["tasks"].as_array_mut().unwrap() {
        let script = task.as_object_mut().unwrap().remove("script").unwrap();
        task["with"] = json!({"script": script});
    }
    assert_eq!(api.put("/projects/e2e/workflows/etl", JSON, &nested.to_string()).await.ok(200)["version"], 1);

    let v2 = ETL_V1.replace("echo extract", "echo extract --all");
    assert_eq!(api.put("/projects/e2e/workflows/etl", YAML, &v2).await.ok(201), &json!({"name": "etl", "version": 2, "created": true}));

    let latest = api.get("/projects/e2e/workflows/etl").await;
    let latest = latest.ok(200);
    assert_eq!((latest["project"].as_str(), latest["name"].as_str(), latest["version"].as_u64()), (Some("e2e"), Some("etl"), Some(2)));
    let script = |doc: &Value| {
        let tasks = doc["document"]["tasks"].as_array().unwrap();
        let extract = tasks.iter().find(|t| t["name"] == "extract_orders").unwrap();
        extract["script"].as_str().unwrap().to_owned()
    };
    assert_eq!(script(latest), "echo extract --all");
    let document = &latest["document"];
    assert_eq!((document["description"].as_str(), document["params"]["dt"].as_str()), (Some("nightly load"), Some("${system.biz.date}")));
    let load = document["tasks"].as_array().unwrap().iter().find(|t| t["name"] == "load").unwrap();
    assert_eq!((load["type"].as_str(), load["deps"].clone()), (Some("python"), json!(["extract_orders"])));

    let v1 = api.get("/projects/e2e/workflows/etl?version=1").await;
    assert_eq!(v1.ok(200)["version"], 1);
    assert_eq!(script(&v1.body), "echo extract");
    api.get("/projects/e2e/workflows/etl?version=3").await.error(404, "not_found", None);
    api.get("/projects/e2e/workflows/etl?version=first").await.error(400, "invalid_input", Some("version"));
    api.get("/projects/e2e/workflows/etl?revision=1").await.error(400, "invalid_input", Some("revision"));
    api.get("/projects/e2e/workflows/nope").await.error(404, "not_found", None);
    api.get("/projects/nope/workflows/etl").await.error(404, "not_found", None);

    let versions = api.get("/projects/e2e/workflows/etl/versions").await;
    let versions = versions.ok(200).as_array().unwrap().clone();
    assert_eq!(versions.iter().map(|v| v["version"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 1], "newest first");
    assert!(versions.iter().all(|v| v["description"] == "nightly load" && v["created_at"].is_string()));

    // Search by part of the name, the description or a task name, ignoring case.
    let other = "name: other\ndescription: Something Else\ntasks:\n  - {name: ping, type: shell, script: 'true'}\n";
    api.put("/projects/e2e/workflows/other", YAML, other).await.ok(201);
    for (query, expected) in [
        ("", vec!["etl", "other"]),
        ("ETL", vec!["etl"]),
        ("nightly", vec!["etl"]),
        ("orders", vec!["etl"]),
        ("else", vec!["other"]),
        ("PING", vec!["other"]),
        ("zzz", vec![]),
    ] {
        let found = api.get(&format!("/projects/e2e/workflows?q={query}")).await;
        assert_eq!(names(found.ok(200), "name"), expected, "q={query}");
    }
    let listed = api.get("/projects/e2e/workflows").await;
    let etl = listed.ok(200).as_array().unwrap().iter().find(|w| w["name"] == "etl").unwrap().clone();
    assert_eq!((etl["version"].as_u64(), etl["description"].as_str()), (Some(2), Some("nightly load")));
    api.get("/projects/nope/workflows").await.error(404, "not_found", None);

    assert_eq!(api.delete("/projects/e2e/workflows/other").await.ok(204), &Value::Null);
    api.get("/projects/e2e/workflows/other").await.error(404, "not_found", None);
    api.delete("/projects/e2e/workflows/other").await.error(404, "not_found", None);
    api.delete("/projects/nope/workflows/etl").await.error(404, "not_found", None);
    assert_eq!(api.workflow_names("e2e").await, ["etl"]);
    sandbox.shutdown().await;
}

async fn bad_workflow_documents_are_refused_and_store_nothing(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let a = "{name: a, type: shell, script: 'true'}";
    // (content type, document, status, code, field, text the message has)
    type Case<'a> = (&'a str, String, u16, &'a str, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (YAML, "name: w\ntasks: [unclosed\n".into(), 400, "invalid_input", None, "malformed YAML"),
        (JSON, r#"{"name": "w", "tasks": ["#.into(), 400, "invalid_input", None, "malformed JSON"),
        (
            YAML,
            format!("name: w\ntasks:\n  - {a}\n  - {{name: b, type: shell, script: x, retires: 2}}\n"),
            400,
            "invalid_input",
            Some("tasks[1].retires"),
            "unknown field",
        ),
        (YAML, format!("name: w\nschedulle: daily\ntasks:\n  - {a}\n"), 400, "invalid_input", Some("schedulle"), "unknown field"),
        (
            YAML,
            "name: w\ntasks:\n  - {name: a, type: shell, script: x, deps: [b]}\n  - {name: b, type: shell, script: x, deps: [a]}\n".into(),
            400,
            "invalid_input",
            Some("tasks"),
            "cycle between tasks: `a`, `b`",
        ),
        (
            YAML,
            "name: w\ntasks:\n  - {name: a, type: shell, script: x, deps: [zz]}\n".into(),
            400,
            "invalid_input",
            Some("tasks[0].deps[0]"),
            "unknown task `zz`",
        ),
        (
            YAML,
            "name: w\ntasks:\n  - {name: a, type: shell, script: x, timeout: 10 parsecs}\n".into(),
            400,
            "invalid_input",
            Some("tasks[0].timeout"),
            "invalid duration `10 parsecs`",
        ),
        (
            YAML,
            "name: w\ntasks:\n  - {name: a, type: sparkk, script: x}\n".into(),
            400,
            "invalid_input",
            Some("tasks[0].type"),
            "unknown task type `sparkk`",
        ),
        (YAML, "name: w\ntasks: []\n".into(), 400, "invalid_input", Some("tasks"), "no tasks"),
        // Parameters no run can resolve, named at their path.
        (YAML, format!("name: w\nparams: {{dt: '$[foo+1]'}}\ntasks:\n  - {a}\n"), 400, "invalid_input", Some("params.dt"), "cannot resolve `$[foo+1]`"),
        (
            YAML,
            format!("name: w\ntasks:\n  - {a}\n  - {{name: b, type: shell, script: x}}\n  - {{name: c, type: shell, script: x, params: {{out: '${{system.nope}}'}}}}\n"),
            400,
            "invalid_input",
            Some("tasks[2].params.out"),
            "cannot resolve `${system.nope}`: unknown built-in",
        ),
        (
            JSON,
            r#"{"name": "w", "params": {"a": "${b}", "b": "${a}"}, "tasks": [{"name": "a", "type": "shell", "script": "x"}]}"#.into(),
            400,
            "invalid_input",
            Some("params.a"),
            "cycle: a -> b -> a",
        ),
        (YAML, "name: w\ntasks:\n  - {name: a, type: shell, script: 'echo $[yyyyMMdd-1x]'}\n".into(), 400, "invalid_input", Some("tasks[0].script"), "cannot resolve"),
        (YAML, "name: w\ntasks:\n  - {name: a, type: shell, script: x, with: {script: y}}\n".into(), 400, "invalid_input", Some("tasks[0].with.script"), "given twice"),
        (YAML, format!("project: other\nname: w\ntasks:\n  - {a}\n"), 400, "invalid_input", Some("project"), "`other`"),
        (YAML, format!("name: v\ntasks:\n  - {a}\n"), 400, "invalid_input", Some("name"), "`v`"),
        ("text/plain", format!("name: w\ntasks:\n  - {a}\n"), 415, "unsupported_media_type", None, "application/yaml"),
    ];
    for (content_type, document, status, code, field, text) in cases {
        let answer = api.put("/projects/e2e/workflows/w", content_type, &document).await;
        let message = answer.error(status, code, field);
        assert!(message.contains(text), "[{}] for {document:?}: {message}", sandbox.name());
        if status == 415 {
            assert!(message.contains("application/json") && message.contains("text/yaml"), "{message}");
        }
    }
    // No content type at all is refused like a wrong one.
    let bare = api.send(api.http.put(format!("{}/projects/e2e/workflows/w", api.base)).body(format!("name: w\ntasks:\n  - {a}\n"))).await;
    bare.error(415, "unsupported_media_type", None);
    // A good document for a missing project.
    let message = api.put("/projects/nope/workflows/w", YAML, &format!("name: w\ntasks:\n  - {a}\n")).await.error(404, "not_found", None);
    assert!(message.contains("`nope`"), "{message}");

    assert_eq!(api.workflow_names("e2e").await, Vec::<String>::new());
    api.get("/projects/e2e/workflows/w").await.error(404, "not_found", None);
    api.get("/projects/nope").await.error(404, "not_found", None);
    sandbox.shutdown().await;
}

async fn a_run_is_stored_when_accepted_and_reports_its_tasks(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    put_diamond(&api).await;
    let accepted = api.post("/projects/e2e/workflows/diamond/runs", &json!({"params": {"dt": "20260101"}, "priority": "high"})).await;
    let accepted = accepted.ok(202).clone();
    let id = accepted["workflow_instance_id"].as_i64().unwrap();
    assert_eq!((accepted["dry_run"].as_bool(), accepted["version"].as_u64()), (Some(false), Some(1)));
    assert_eq!(accepted["tasks"][0], "a");
    assert_eq!(accepted["tasks"][3], "d");

    // The instance exists as soon as the API answered.
    let early = api.get(&format!("/workflow-instances/{id}")).await;
    let early = early.ok(200);
    assert_eq!((early["id"].as_i64(), early["project"].as_str(), early["workflow"].as_str()), (Some(id), Some("e2e"), Some("diamond")));
    assert_eq!(
        (early["priority"].as_str(), early["params"]["dt"].as_str(), early["command"].as_str()),
        (Some("high"), Some("20260101"), Some("start"))
    );
    assert!(early["tasks"].is_array());

    sandbox.wait_finished(WorkflowInstanceId(id), MINUTE).await;
    let done = api.get(&format!("/workflow-instances/{id}")).await;
    let done = done.ok(200);
    assert_eq!(done["state"], "success", "[{}] {done}", sandbox.name());
    assert!(done["start_time"].is_string() && done["end_time"].is_string() && done["owner"].is_string(), "{done}");
    let tasks = done["tasks"].as_array().unwrap();
    let mut task_names = names(&done["tasks"], "name");
    task_names.sort();
    assert_eq!(task_names, ["a", "b", "c", "d"]);
    for task in tasks {
        assert_eq!(
            (task["state"].as_str(), task["attempt"].as_u64(), task["exit_code"].as_i64()),
            (Some("success"), Some(1), Some(0)),
            "{task}"
        );
        assert!(task["host"].is_string() && task["start_time"].is_string() && task["end_time"].is_string(), "{task}");
        assert_eq!((task["type"].as_str(), task["workflow_instance_id"].as_i64()), (Some("shell"), Some(id)));
        let alone = api.get(&format!("/task-instances/{}", task["id"])).await;
        assert_eq!(alone.ok(200), task);
    }
    // Listings leave the tasks out.
    let listed = api.get("/workflow-instances").await;
    let item = &listed.ok(200)["items"][0];
    assert_eq!((item["id"].as_i64(), item["state"].as_str()), (Some(id), Some("success")));
    assert!(item.get("tasks").is_none(), "{item}");

    // An empty body (no content type either) runs with the defaults.
    let bare = api.send(api.http.post(format!("{}/projects/e2e/workflows/diamond/runs", api.base))).await;
    let second = bare.ok(202)["workflow_instance_id"].as_i64().unwrap();
    let (wi, tasks) = sandbox.wait_finished(WorkflowInstanceId(second), MINUTE).await;
    assert_eq!((wi.state.as_str(), tasks.len()), ("success", 4));
    assert_eq!(api.get(&format!("/workflow-instances/{second}")).await.ok(200)["priority"], "medium");
    sandbox.shutdown().await;
}

async fn start_tasks_with_a_scope_and_dry_runs(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    put_diamond(&api).await;

    let dry = api.post("/projects/e2e/workflows/diamond/runs", &json!({"start_tasks": ["b"], "scope": "upstream", "dry_run": true})).await;
    assert_eq!(dry.ok(200), &json!({"dry_run": true, "version": 1, "tasks": ["a", "b"]}));
    let dry = api.post("/projects/e2e/workflows/diamond/runs", &json!({"dry_run": true})).await;
    assert_eq!(dry.ok(200)["tasks"].as_array().unwrap().len(), 4);
    assert_eq!(api.instance_count().await, 0, "a dry run stored an instance");

    let id = api.run("diamond", json!({"start_tasks": ["b"], "scope": "downstream"})).await;
    let (wi, tasks) = sandbox.wait_finished(WorkflowInstanceId(id), MINUTE).await;
    assert_eq!(wi.state.as_str(), "success", "[{}] {tasks:?}", sandbox.name());
    let view = api.get(&format!("/workflow-instances/{id}")).await;
    let view = view.ok(200);
    let mut ran = names(&view["tasks"], "name");
    ran.sort();
    assert_eq!(ran, ["b", "d"]);
    assert_eq!((view["start_tasks"].clone(), view["scope"].as_str()), (json!(["b"]), Some("downstream")));

    // Without a scope, only the named tasks run.
    let id = api.run("diamond", json!({"start_tasks": ["c"]})).await;
    let (_, tasks) = sandbox.wait_finished(WorkflowInstanceId(id), MINUTE).await;
    assert_eq!(tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["c"]);
    assert_eq!(api.instance_count().await, 2);
    sandbox.shutdown().await;
}

async fn bad_run_requests_are_refused_and_store_nothing(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    put_diamond(&api).await;
    let runs = "/projects/e2e/workflows/diamond/runs";
    let cases = [
        (json!({"priorty": "high"}), "priorty", "unknown field"),
        (json!({"start_tasks": ["a", "zz"]}), "start_tasks[1]", "no task `zz`"),
        (json!({"priority": "urgent"}), "priority", "urgent"),
        (json!({"failure_strategy": "panic"}), "failure_strategy", "panic"),
        (json!({"worker_group": "gpu pool"}), "worker_group", "gpu pool"),
        (json!({"scope": "sideways", "start_tasks": ["a"]}), "scope", "sideways"),
        (json!({"scope": "downstream"}), "scope", "start_tasks"),
        (json!({"params": {"n": [1]}}), "params.n", "invalid type"),
        (json!({"dry_run": "yes"}), "dry_run", "invalid type"),
    ];
    for (request, field, text) in cases {
        let message = api.post(runs, &request).await.error(400, "invalid_input", Some(field));
        assert!(message.contains(text), "for {request}: {message}");
    }
    let message = api.post_raw(runs, JSON, "{\"params\": ").await.error(400, "invalid_input", None);
    assert!(message.starts_with("malformed JSON"), "{message}");
    api.post_raw(runs, "text/plain", "{}").await.error(415, "unsupported_media_type", None);
    api.post("/projects/e2e/workflows/nope/runs", &json!({})).await.error(404, "not_found", None);
    api.post("/projects/nope/workflows/diamond/runs", &json!({})).await.error(404, "not_found", None);
    assert_eq!(api.instance_count().await, 0);
    sandbox.shutdown().await;
}

async fn instances_are_filtered_and_paged(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let quick = |name: &str| format!("name: {name}\ntasks:\n  - {{name: t, type: shell, script: 'true'}}\n");
    api.put("/projects/e2e/workflows/w1", YAML, &quick("w1")).await.ok(201);
    api.put("/projects/e2e/workflows/w2", YAML, &quick("w2")).await.ok(201);
    api.post("/projects", &json!({"name": "empty"})).await.ok(201);
    let mut ids = Vec::new();
    for workflow in ["w1", "w2", "w1", "w2", "w1"] {
        ids.push(api.run(workflow, json!({})).await);
    }
    for &id in &ids {
        sandbox.wait_finished(WorkflowInstanceId(id), MINUTE).await;
    }

    // Pages of two, newest first, until there is no next cursor.
    let mut seen = Vec::new();
    let mut path = "/workflow-instances?project=e2e&limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = api.get(&path).await;
        let page = page.ok(200).clone();
        pages += 1;
        seen.extend(page["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/workflow-instances?project=e2e&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!((seen, pages), (newest_first, 3));

    let w2 = api.get("/workflow-instances?project=e2e&workflow=w2").await;
    let w2_ids: Vec<i64> = w2.ok(200)["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect();
    assert_eq!(w2_ids, [ids[3], ids[1]]);
    assert!(w2.body["next_cursor"].is_null());
    assert_eq!(api.get("/workflow-instances?state=success").await.ok(200)["items"].as_array().unwrap().len(), 5);
    assert_eq!(api.get("/workflow-instances?state=failure").await.ok(200)["items"], json!([]));
    assert_eq!(api.get("/workflow-instances?project=empty").await.ok(200)["items"], json!([]));
    let exact = api.get("/workflow-instances?limit=5").await;
    assert!(exact.ok(200)["next_cursor"].is_null(), "a full last page has no next page: {exact:?}");

    for (query, field) in [
        ("state=sleeping", "state"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=abc", "cursor"),
        ("workflow=w1", "workflow"),
        ("colour=red", "colour"),
    ] {
        api.get(&format!("/workflow-instances?{query}")).await.error(400, "invalid_input", Some(field));
    }
    api.get("/workflow-instances?project=nope").await.error(404, "not_found", None);
    api.get("/workflow-instances?project=e2e&workflow=nope").await.error(404, "not_found", None);
    sandbox.shutdown().await;
}

async fn a_running_instance_can_be_stopped(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let doc =
        "name: slow\ntasks:\n  - {name: nap, type: shell, script: sleep 60}\n  - {name: after, type: shell, script: 'true', deps: [nap]}\n";
    api.put("/projects/e2e/workflows/slow", YAML, doc).await.ok(201);
    let id = api.run("slow", json!({})).await;
    let instance = WorkflowInstanceId(id);
    sandbox.wait_until(instance, MINUTE, "nap running", |_, t| t.iter().any(|t| t.state == TaskState::Running)).await;
    let running = api.get(&format!("/workflow-instances/{id}")).await;
    assert_eq!(running.ok(200)["state"], "running");

    let accepted = api.post_raw(&format!("/workflow-instances/{id}/stop"), JSON, "").await;
    let accepted = accepted.ok(202);
    assert_eq!(accepted["workflow_instance_id"].as_i64(), Some(id));
    assert!(accepted["command_id"].as_i64().is_some());
    sandbox.wait_finished(instance, MINUTE).await;
    let stopped = api.get(&format!("/workflow-instances/{id}")).await;
    let stopped = stopped.ok(200);
    assert_eq!(stopped["state"], "stopped", "[{}] {stopped}", sandbox.name());
    assert_eq!(names(&stopped["tasks"], "state"), ["killed"]);

    let message = api.post_raw(&format!("/workflow-instances/{id}/stop"), JSON, "").await.error(409, "conflict", None);
    assert!(message.contains("stopped"), "{message}");
    api.post_raw("/workflow-instances/987654/stop", JSON, "").await.error(404, "not_found", None);
    api.post_raw("/workflow-instances/abc/stop", JSON, "").await.error(400, "invalid_input", Some("id"));
    api.get("/workflow-instances/987654").await.error(404, "not_found", None);
    let message = api.get("/workflow-instances/abc").await.error(400, "invalid_input", Some("id"));
    assert!(message.contains("`abc`"), "{message}");
    sandbox.shutdown().await;
}

async fn a_running_task_can_be_killed(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    let doc = "name: victim\ntasks:\n  - {name: nap, type: shell, script: sleep 60}\n  - {name: after, type: shell, script: 'true', deps: [nap]}\n";
    api.put("/projects/e2e/workflows/victim", YAML, doc).await.ok(201);
    let id = api.run("victim", json!({})).await;
    let instance = WorkflowInstanceId(id);
    let (_, tasks) = sandbox.wait_until(instance, MINUTE, "nap running", |_, t| t.iter().any(|t| t.state == TaskState::Running)).await;
    let task_id = tasks[0].id.get();
    let running = api.get(&format!("/task-instances/{task_id}")).await;
    assert_eq!((running.ok(200)["state"].as_str(), running.body["name"].as_str()), (Some("running"), Some("nap")));

    let accepted = api.post_raw(&format!("/task-instances/{task_id}/kill"), JSON, "").await;
    assert_eq!(accepted.ok(202)["workflow_instance_id"].as_i64(), Some(id));
    sandbox.wait_finished(instance, MINUTE).await;
    let killed = api.get(&format!("/task-instances/{task_id}")).await;
    assert_eq!(killed.ok(200)["state"], "killed", "[{}] {killed:?}", sandbox.name());
    assert!(killed.body["end_time"].is_string());
    let over = api.get(&format!("/workflow-instances/{id}")).await;
    assert_eq!(over.ok(200)["state"], "failure");
    assert_eq!(over.body["tasks"].as_array().unwrap().len(), 1, "the downstream task must not run");

    let message = api.post_raw(&format!("/task-instances/{task_id}/kill"), JSON, "").await.error(409, "conflict", None);
    assert!(message.contains("killed"), "{message}");
    api.post_raw("/task-instances/987654/kill", JSON, "").await.error(404, "not_found", None);
    api.post_raw("/task-instances/x1/kill", JSON, "").await.error(400, "invalid_input", Some("id"));
    api.get("/task-instances/987654").await.error(404, "not_found", None);
    api.get("/task-instances/1.5").await.error(400, "invalid_input", Some("id"));
    sandbox.shutdown().await;
}

async fn the_api_describes_itself_and_answers_unknown_routes(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    assert_eq!(api.get("/health").await.ok(200), &json!({"status": "ok", "database": "ok"}));

    let spec = api.get("/openapi.json").await;
    let spec = spec.ok(200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."), "{}", spec["openapi"]);
    let expected = [
        ("/api/v1/health", "get"),
        ("/api/v1/projects", "post"),
        ("/api/v1/projects", "get"),
        ("/api/v1/projects/{project}", "get"),
        ("/api/v1/projects/{project}/workflows", "get"),
        ("/api/v1/projects/{project}/workflows/{name}", "put"),
        ("/api/v1/projects/{project}/workflows/{name}", "get"),
        ("/api/v1/projects/{project}/workflows/{name}", "delete"),
        ("/api/v1/projects/{project}/workflows/{name}/versions", "get"),
        ("/api/v1/projects/{project}/workflows/{name}/runs", "post"),
        ("/api/v1/workflow-instances", "get"),
        ("/api/v1/workflow-instances/{id}", "get"),
        ("/api/v1/workflow-instances/{id}/stop", "post"),
        ("/api/v1/task-instances/{id}", "get"),
        ("/api/v1/task-instances/{id}/kill", "post"),
    ];
    for (path, method) in expected {
        let operation = &spec["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not in the OpenAPI document");
        assert!(operation["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
    }
    let put = &spec["paths"]["/api/v1/projects/{project}/workflows/{name}"]["put"]["requestBody"]["content"];
    assert!(put["application/yaml"].is_object() && put["application/json"].is_object(), "{put}");
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());

    let docs = api.get("/docs").await;
    assert_eq!(docs.status, 200);
    assert!(docs.content_type.starts_with("text/html"), "{}", docs.content_type);
    assert!(docs.body.as_str().is_some_and(|page| page.contains("<html") && page.contains("openapi.json")));

    let message = api.get("/nothing/here").await.error(404, "not_found", None);
    assert!(message.contains("/api/v1/nothing/here"), "{message}");
    api.send(api.http.patch(format!("{}/projects", api.base))).await.error(405, "method_not_allowed", None);
    sandbox.shutdown().await;
}
