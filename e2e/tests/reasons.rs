//! Why a task ended, when it never ran, over HTTP as users see it: a
//! parameter only a run can find unresolvable (an upstream task's output,
//! a parameter given at the start) passes `PUT` of the workflow, then fails
//! its task before it starts, with the reason in the task instance's view
//! (`reason`, what `sluice status` prints) and as its log (the log API);
//! a task stopped before it ran has its reason as its log too.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_api::types::{TaskInstanceView, TaskLogPage, WorkflowInstanceView};
use sluice_domain::CommandKind;
use sluice_e2e::{http_client, Sandbox};

sluice_e2e::both_deployments!(
    a_parameter_only_a_run_can_resolve_fails_its_task_with_the_reason,
    a_task_stopped_before_it_ran_has_its_reason_as_its_log,
);

const MINUTE: Duration = Duration::from_secs(60);

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(sandbox: &Sandbox) -> Api {
        Api { base: format!("{}/api/v1", sandbox.api_url()), http: http_client() }
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "GET {path}: {status} {body}");
        body
    }

    /// Stores a workflow document (YAML); its status.
    async fn put_workflow(&self, name: &str, yaml: &str) -> u16 {
        let response = self
            .http
            .put(format!("{}/projects/e2e/workflows/{name}", self.base))
            .header("content-type", "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    }

    async fn run(&self, name: &str, request: Value) -> i64 {
        let response = self.http.post(format!("{}/projects/e2e/workflows/{name}/runs", self.base)).json(&request).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 202, "run {name}");
        let accepted: Value = response.json().await.unwrap();
        accepted["workflow_instance_id"].as_i64().expect("an instance id")
    }

    /// The instance view (`sluice status ID -o json`) once `check` holds.
    async fn wait(&self, id: i64, what: &str, check: impl Fn(&WorkflowInstanceView) -> bool) -> WorkflowInstanceView {
        let deadline = Instant::now() + MINUTE;
        loop {
            let wi: WorkflowInstanceView = serde_json::from_value(self.get(&format!("/workflow-instances/{id}")).await).unwrap();
            if check(&wi) {
                return wi;
            }
            assert!(Instant::now() < deadline, "{what}: not within a minute; last seen {wi:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn log(&self, task: i64, offset: u64) -> TaskLogPage {
        serde_json::from_value(self.get(&format!("/task-instances/{task}/log?offset={offset}")).await).unwrap()
    }
}

fn task<'a>(wi: &'a WorkflowInstanceView, name: &str) -> &'a TaskInstanceView {
    wi.tasks.as_deref().unwrap_or_default().iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no task `{name}` in {wi:#?}"))
}

/// The task failed before it started: no worker, no start, no exit code,
/// and the reason everywhere it is looked for.
async fn assert_failed_before_start(api: &Api, sandbox: &Sandbox, wi: &WorkflowInstanceView, name: &str, expression: &str) {
    let t = task(wi, name);
    let prefix = format!("cannot resolve `{expression}`");
    assert_eq!((t.state.as_str(), t.host.as_deref(), t.start_time, t.exit_code), ("failure", None, None, None), "[{}] {t:#?}", sandbox.name());
    let reason = t.reason.as_deref().unwrap_or_else(|| panic!("[{}] `{name}` has no reason: {t:#?}", sandbox.name()));
    assert!(reason.starts_with(&prefix), "[{}] {reason}", sandbox.name());
    // The task instance's own view says the same.
    let alone: TaskInstanceView = serde_json::from_value(api.get(&format!("/task-instances/{}", t.id)).await).unwrap();
    assert_eq!(alone.reason.as_deref(), Some(reason));
    // Its log is the master's: one line saying why it never started.
    let log = api.log(t.id, 0).await;
    assert!(log.finished, "{log:#?}");
    assert_eq!(log.source, "store", "the master's log, from the log store: {log:#?}");
    assert!(
        log.lines.iter().any(|l| l.contains(&format!("[sluice] failed before it started: {prefix}"))),
        "[{}] {:#?}",
        sandbox.name(),
        log.lines
    );
}

async fn a_parameter_only_a_run_can_resolve_fails_its_task_with_the_reason(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    // `produce` prints an output whose value is a broken time expression;
    // nothing in the document is broken, so the document is accepted.
    let document = r#"
name: reasons
params: {dt: "${system.biz.date}"}
tasks:
  - name: produce
    type: shell
    script: echo "making ${dt}"; echo '${setValue(when=$[yyyyMMdd-x])}'
  - name: consume
    type: shell
    deps: [produce]
    script: echo "consuming ${when}"
"#;
    assert_eq!(api.put_workflow("reasons", document).await, 201, "[{}] the document is valid", sandbox.name());

    // An upstream output that cannot be resolved.
    let id = api.run("reasons", json!({})).await;
    let wi = api.wait(id, "the run ends", |wi| wi.end_time.is_some()).await;
    assert_eq!(wi.state, "failure", "[{}] {wi:#?}", sandbox.name());
    assert_eq!(task(&wi, "produce").state, "success");
    assert_failed_before_start(&api, &sandbox, &wi, "consume", "$[yyyyMMdd-x]").await;

    // A parameter given at the start that cannot be resolved.
    let id = api.run("reasons", json!({"params": {"dt": "$[yyyyMMdd-"}})).await;
    let wi = api.wait(id, "the run ends", |wi| wi.end_time.is_some()).await;
    assert_eq!(wi.state, "failure", "[{}] {wi:#?}", sandbox.name());
    assert_failed_before_start(&api, &sandbox, &wi, "produce", "$[yyyyMMdd-").await;
    assert!(wi.tasks.as_deref().unwrap().iter().all(|t| t.name != "consume"), "nothing ran after it: {wi:#?}");
    sandbox.shutdown().await;
}

async fn a_task_stopped_before_it_ran_has_its_reason_as_its_log(sandbox: Sandbox) {
    let api = Api::new(&sandbox);
    // No worker serves `nowhere`: the task waits in the queue until the
    // pause takes it back, then the stop of the paused instance kills it.
    let document = "name: parked\ntasks:\n  - {name: waits, type: shell, worker_group: nowhere, script: 'true'}\n";
    assert_eq!(api.put_workflow("parked", document).await, 201);
    let id = api.run("parked", json!({})).await;
    api.wait(id, "waits is queued", |wi| wi.tasks.as_deref().unwrap_or_default().iter().any(|t| t.state == "dispatched")).await;
    let instance = sluice_domain::WorkflowInstanceId(id);
    sandbox.command(instance, CommandKind::Pause, Vec::new()).await;
    api.wait(id, "the instance pauses", |wi| wi.state == "paused").await;
    sandbox.stop(instance).await;
    let wi = api.wait(id, "the stopped instance ends", |wi| wi.end_time.is_some()).await;
    assert_eq!(wi.state, "stopped", "[{}] {wi:#?}", sandbox.name());
    assert_eq!(wi.reason.as_deref(), Some("stopped while paused"), "the instance says why too");
    let waits = task(&wi, "waits");
    assert_eq!((waits.state.as_str(), waits.host.as_deref(), waits.start_time), ("killed", None, None), "{waits:#?}");
    let reason = waits.reason.as_deref().expect("a reason");
    assert_eq!(reason, "workflow instance stopped");
    // Nobody wrote a log for it; the log API still says why it ended.
    let log = api.log(waits.id, 0).await;
    assert_eq!((log.source.as_str(), log.finished, log.lines.len()), ("reason", true, 1), "{log:#?}");
    assert!(log.lines[0].ends_with(&format!("[sluice] killed without running: {reason}")), "{:?}", log.lines);
    let next = api.log(waits.id, log.next_offset).await;
    assert!(next.lines.is_empty() && next.finished, "{next:#?}");
    let download = http_client().get(format!("{}/task-instances/{}/log/download", api.base, waits.id)).send().await.unwrap();
    assert_eq!(download.status().as_u16(), 200);
    assert_eq!(download.text().await.unwrap(), format!("{}\n", log.lines[0]));
    sandbox.shutdown().await;
}
