//! The `sluice` command-line client as users run it: the real binary against
//! a running `sluice standalone` (a child process on a temporary SQLite, as
//! the README starts it) and against a 2-master / 2-worker cluster sandbox
//! (ZooKeeper, PostgreSQL). Tests wait on state with deadlines, never on
//! fixed sleeps.

mod common;

use std::path::Path;

use common::{arg, unreachable_addr, instance_id, sluice_at, task, write, Deployment};
use sluice_api::types::{ErrorBody, InstancePage, RequestAccepted, RunAccepted, WorkflowInstanceView, WorkflowView};

common::both_deployments!(
    apply_a_file_and_a_directory_then_again_unchanged,
    bad_workflow_files_exit_2_and_store_nothing,
    run_wait_exits_0_on_success_and_1_on_failure,
    status_and_instances_print_tables_and_the_api_json,
    a_task_can_be_killed_and_an_instance_stopped,
    unknown_workflows_and_ids_exit_2_with_the_api_message,
    the_readme_commands_run_the_example,
    a_task_that_never_ran_says_why_in_status_and_logs,
);

// --- scenarios -------------------------------------------------------------

async fn apply_a_file_and_a_directory_then_again_unchanged(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let single = write(files.path(), "single.yaml", "project: applied\nname: single\ntasks:\n  - {name: a, type: shell, script: 'echo a'}\n");
    let dir = files.path().join("flows");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "b.yml", "project: applied\nname: bee\ntasks:\n  - {name: a, type: shell, script: 'echo b'}\n");
    write(&dir, "a.yaml", "project: applied\nname: ay\ntasks:\n  - {name: a, type: python, script: 'print(1)'}\n");
    write(&dir, "c.json", r#"{"project": "applied", "name": "sea", "tasks": [{"name": "a", "type": "shell", "script": "echo c"}]}"#);
    write(&dir, "notes.txt", "not a workflow");

    let ran = deployment.sluice(&["apply", "-f", arg(&single)]).await;
    ran.expect(0);
    assert_eq!(ran.stdout, "project applied created\napplied/single version 1 (created)\n");

    let ran = deployment.sluice(&["apply", "-f", arg(&dir)]).await;
    ran.expect(0);
    assert_eq!(ran.stdout, "applied/ay version 1 (created)\napplied/bee version 1 (created)\napplied/sea version 1 (created)\n");

    // Again, unchanged: no new versions; -f repeats.
    let ran = deployment.sluice(&["apply", "-f", arg(&dir), "-f", arg(&single)]).await;
    ran.expect(0);
    assert_eq!(
        ran.stdout,
        "applied/ay version 1 (unchanged)\napplied/bee version 1 (unchanged)\napplied/sea version 1 (unchanged)\napplied/single version 1 (unchanged)\n"
    );

    // A change is a new version, stored as the document says.
    write(files.path(), "single.yaml", "project: applied\nname: single\ntasks:\n  - {name: a, type: shell, script: 'echo changed'}\n");
    let ran = deployment.sluice(&["apply", "-f", arg(&single)]).await;
    ran.expect(0);
    assert_eq!(ran.stdout, "applied/single version 2 (created)\n");
    let stored: WorkflowView = deployment.get("/projects/applied/workflows/single").await;
    assert_eq!(stored.version, 2);
    assert_eq!(stored.document["tasks"][0]["script"], "echo changed");

    // A bad file among good ones: the good ones are applied, the exit code is 2.
    let mixed = files.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    write(&mixed, "1-good.yaml", "project: applied\nname: good1\ntasks:\n  - {name: a, type: shell, script: 'echo 1'}\n");
    write(&mixed, "2-bad.yaml", "project: applied\nname: bad2\ntasks:\n  - {name: a, type: shell, script: 'echo 2', retires: 1}\n");
    write(&mixed, "3-good.yaml", "project: applied\nname: good3\ntasks:\n  - {name: a, type: shell, script: 'echo 3'}\n");
    let ran = deployment.sluice(&["apply", "-f", arg(&mixed)]).await;
    ran.expect(2);
    assert_eq!(ran.stdout, "applied/good1 version 1 (created)\napplied/good3 version 1 (created)\n");
    assert!(ran.stderr.contains("2-bad.yaml: tasks[0].retires: unknown field"), "{}", ran.stderr);
    assert_eq!(deployment.get_status("/projects/applied/workflows/bad2").await, 404);
    assert_eq!(deployment.get_status("/projects/applied/workflows/good3").await, 200);
}

async fn bad_workflow_files_exit_2_and_store_nothing(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let task_a = "  - {name: a, type: shell, script: 'echo a'}\n";
    let cases = [
        ("malformed.yaml", "project: bad\nname: malformed\ntasks: [unclosed\n", "malformed YAML"),
        ("field.yaml", &*format!("project: bad\nname: field\ntasks:\n{task_a}  - {{name: b, type: shell, script: x, retires: 2}}\n"), "tasks[1].retires: unknown field"),
        ("cycle.yaml", "project: bad\nname: cycle\ntasks:\n  - {name: a, type: shell, script: x, deps: [b]}\n  - {name: b, type: shell, script: x, deps: [a]}\n", "tasks: dependency cycle between tasks: `a`, `b`"),
        ("dep.yaml", "project: bad\nname: dep\ntasks:\n  - {name: a, type: shell, script: x, deps: [zz]}\n", "tasks[0].deps[0]: task `a` depends on unknown task `zz`"),
        ("duration.yaml", "project: bad\nname: duration\ntasks:\n  - {name: a, type: shell, script: x, timeout: 10 parsecs}\n", "tasks[0].timeout: invalid duration"),
        ("noproject.yaml", "name: noproject\ntasks:\n  - {name: a, type: shell, script: x}\n", "project: required"),
        ("malformed.json", r#"{"project": "bad", "name": "json", "tasks": [}"#, "malformed JSON"),
        // Parameters no run can resolve, at their path.
        ("expr.yaml", "project: bad\nname: expr\nparams: {dt: '$[foo+1]'}\ntasks:\n  - {name: a, type: shell, script: x}\n", "params.dt: cannot resolve `$[foo+1]`"),
        (
            "builtin.yaml",
            &*format!("project: bad\nname: builtin\ntasks:\n{task_a}  - {{name: b, type: shell, script: x}}\n  - {{name: c, type: shell, script: x, params: {{out: '${{system.nope}}'}}}}\n"),
            "tasks[2].params.out: cannot resolve `${system.nope}`: unknown built-in",
        ),
        ("loop.yaml", "project: bad\nname: loop\nparams: {a: '${b}', b: '${a}'}\ntasks:\n  - {name: a, type: shell, script: x}\n", "params.a: cannot resolve `${a}`: parameters refer to each other in a cycle: a -> b -> a"),
        ("script.yaml", "project: bad\nname: script\ntasks:\n  - {name: a, type: shell, script: 'echo ${zdt.explode()}'}\n", "tasks[0].script: cannot resolve `${zdt.explode()}`"),
    ];
    for (file, text, expected) in cases {
        let path = write(files.path(), file, text);
        for command in ["validate", "apply"] {
            let ran = deployment.sluice(&[command, "-f", arg(&path)]).await;
            ran.expect(2);
            let want = format!("{}: {expected}", path.display());
            assert!(ran.stderr.contains(&want), "`sluice {command}` on {file}: expected `{want}` in:\n{}", ran.stderr);
            assert!(ran.stdout.is_empty(), "{}", ran.stdout);
        }
        let name = file.split('.').next().unwrap();
        assert_eq!(deployment.get_status(&format!("/projects/bad/workflows/{name}")).await, 404, "{file} was stored");
    }
    // Nothing at all was written, not even the project.
    assert_eq!(deployment.get_status("/projects/bad").await, 404);

    // validate needs no server; a good file passes.
    let good = write(files.path(), "good.yaml", &format!("project: bad\nname: good\ntasks:\n{task_a}  - {{name: b, type: python, script: 'print(1)', deps: [a]}}\n"));
    let unreachable = unreachable_addr();
    let ran = sluice_at(&format!("http://{}", unreachable.addr()), None, &["validate", "-f", arg(&good)]).await;
    ran.expect(0);
    assert_eq!(ran.stdout, "ok: bad/good (2 tasks)\n");
    assert_eq!(deployment.get_status("/projects/bad").await, 404, "validate stored something");
}

async fn run_wait_exits_0_on_success_and_1_on_failure(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let ok = write(
        files.path(),
        "ok.yaml",
        "project: runs\nname: ok\nparams: {greeting: hello}\ntasks:\n  - {name: first, type: shell, script: 'echo $greeting; sleep 0.3'}\n  - {name: second, type: python, script: 'import os; assert os.environ[\"greeting\"] == \"hi\"', deps: [first]}\n",
    );
    let fails = write(files.path(), "fails.yaml", "project: runs\nname: fails\ntasks:\n  - {name: boom, type: shell, script: 'echo oops; exit 3'}\n  - {name: never, type: shell, script: 'echo no', deps: [boom]}\n");
    deployment.sluice(&["apply", "-f", arg(&ok), "-f", arg(&fails)]).await.expect(0);

    let ran = deployment.sluice(&["run", "runs/ok", "--param", "greeting=hi", "--wait"]).await;
    ran.expect(0);
    let id = instance_id(&ran);
    let last = ran.stdout.lines().last().unwrap();
    assert!(last.starts_with(&format!("instance {id} success: 2/2 tasks done in ")), "{}", ran.stdout);
    // Not a terminal: a progress line per change, on stderr.
    assert!(ran.stderr.lines().any(|l| l.starts_with(&format!("instance {id} running: "))), "no progress in:\n{}", ran.stderr);
    let wi: WorkflowInstanceView = deployment.get(&format!("/workflow-instances/{id}")).await;
    assert_eq!(wi.state, "success");
    assert_eq!(wi.params.get("greeting").map(String::as_str), Some("hi"));

    let ran = deployment.sluice(&["run", "runs/fails", "--wait"]).await;
    ran.expect(1);
    let id = instance_id(&ran);
    let last = ran.stdout.lines().last().unwrap();
    assert!(last.starts_with(&format!("instance {id} failure: 1/2 tasks done")), "{}", ran.stdout);
    assert!(last.contains("boom (failure, exit code 3)"), "{}", ran.stdout);

    // --wait -o json: the final instance as the API has it.
    let ran = deployment.sluice(&["run", "runs/fails", "--wait", "-o", "json"]).await;
    ran.expect(1);
    let wi: WorkflowInstanceView = ran.json();
    assert_eq!((wi.state.as_str(), task(&wi, "boom").exit_code), ("failure", Some(3)));

    // Without --wait: the id at once; -o json: the API's answer.
    let ran = deployment.sluice(&["run", "runs/ok", "-o", "json", "-p", "greeting=hi"]).await;
    ran.expect(0);
    let accepted: RunAccepted = ran.json();
    let id = accepted.workflow_instance_id.expect("an instance");
    assert_eq!(accepted.tasks, ["first", "second"]);
    deployment.wait_status(id, "the run without --wait ends", |wi| wi.state == "success").await;

    // A dry run starts nothing.
    let ran = deployment.sluice(&["run", "runs/ok", "--dry-run", "--start-task", "second"]).await;
    ran.expect(0);
    assert_eq!(ran.stdout, "dry run: runs/ok version 1 would run 1 task: second\n");
    let page: InstancePage = deployment.get("/workflow-instances?project=runs&workflow=ok").await;
    assert_eq!(page.items.len(), 2, "a dry run created an instance: {page:#?}");

    // Usage errors exit 2 before reaching the server.
    for args in [
        &["run", "no-slash"][..],
        &["run", "runs/ok", "--param", "novalue"],
        &["run", "runs/ok", "--priority", "urgent"],
        &["run", "runs/ok", "--scope", "downstream"],
        &["run", "runs/ok", "--dry-run", "--wait"],
        &["instances", "--limit", "many"],
        &["status", "seven"],
    ] {
        let ran = deployment.sluice(args).await;
        ran.expect(2);
        assert!(ran.stdout.is_empty() && !ran.stderr.is_empty(), "{ran:?}");
    }
}

async fn status_and_instances_print_tables_and_the_api_json(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let flow = write(
        files.path(),
        "tables.yaml",
        "project: tables\nname: flow\ntasks:\n  - {name: extract, type: shell, script: 'echo e', retries: 1}\n  - {name: load, type: shell, script: 'exit 4', deps: [extract]}\n",
    );
    let ok = write(files.path(), "ok.yaml", "project: tables\nname: fine\ntasks:\n  - {name: only, type: shell, script: 'true'}\n");
    deployment.sluice(&["apply", "-f", arg(&flow), "-f", arg(&ok)]).await.expect(0);
    let failed = instance_id(deployment.sluice(&["run", "tables/flow", "--wait"]).await.expect(1));
    let fine = instance_id(deployment.sluice(&["run", "tables/fine", "--wait"]).await.expect(0));

    // status: the instance, then a table of its tasks.
    let ran = deployment.sluice(&["status", &failed.to_string()]).await;
    ran.expect(0);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines[0], format!("instance {failed}  tables/flow version 1  failure"), "{}", ran.stdout);
    let header = lines.iter().position(|l| l.starts_with("ID ")).unwrap_or_else(|| panic!("no table:\n{}", ran.stdout));
    let columns: Vec<&str> = lines[header].split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(columns, ["ID", "TASK", "STATE", "ATTEMPT", "HOST", "START", "DURATION", "EXIT CODE", "REASON"]);
    let wi: WorkflowInstanceView = deployment.get(&format!("/workflow-instances/{failed}")).await;
    let rows = &lines[header + 1..];
    assert_eq!(rows.len(), 2, "{}", ran.stdout);
    for t in wi.tasks.as_deref().unwrap() {
        let row = rows.iter().find(|r| r.split_whitespace().nth(1) == Some(t.name.as_str())).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], t.id.to_string());
        assert_eq!(cells[2], t.state);
        // The last two columns: the exit code, then why the task ended.
        let reason = t.reason.as_deref().unwrap();
        assert_eq!(reason, format!("exit code {}", t.exit_code.unwrap()));
        let before = row.strip_suffix(reason).unwrap_or_else(|| panic!("no reason `{reason}` at the end of {row}"));
        assert!(before.trim_end().ends_with(&format!("  {}", t.exit_code.unwrap())), "{row}");
        assert!(row.contains(t.host.as_deref().unwrap()), "{row}");
    }
    let extract = rows.iter().find(|r| r.split_whitespace().nth(1) == Some("extract")).unwrap();
    assert_eq!(extract.split_whitespace().nth(3), Some("1/2"), "attempt of a task with one retry: {extract}");

    // status -o json: the API's instance, tasks included.
    let json: WorkflowInstanceView = deployment.sluice(&["status", &failed.to_string(), "--output", "json"]).await.expect(0).json();
    assert_eq!(json, wi);
    assert_eq!((task(&json, "load").state.as_str(), task(&json, "load").exit_code), ("failure", Some(4)));

    // instances: a table, newest first; filters and -o json.
    let ran = deployment.sluice(&["instances", "--project", "tables"]).await;
    ran.expect(0);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(lines[0].starts_with("ID  WORKFLOW"), "{}", ran.stdout);
    let ids: Vec<&str> = lines[1..].iter().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(ids, [fine.to_string(), failed.to_string()]);
    assert!(lines[1].contains("tables/fine") && lines[1].contains("success"), "{}", ran.stdout);
    assert!(lines[2].contains("tables/flow") && lines[2].contains("failure"), "{}", ran.stdout);

    let page: InstancePage = deployment.sluice(&["instances", "--project", "tables", "-o", "json"]).await.expect(0).json();
    assert_eq!(page.items.iter().map(|i| i.id).collect::<Vec<_>>(), [fine, failed]);
    let page: InstancePage = deployment.sluice(&["instances", "--project", "tables", "--state", "failure", "-o", "json"]).await.expect(0).json();
    assert_eq!(page.items.iter().map(|i| i.id).collect::<Vec<_>>(), [failed]);
    let page: InstancePage =
        deployment.sluice(&["instances", "--project", "tables", "--workflow", "fine", "-o", "json"]).await.expect(0).json();
    assert_eq!(page.items.iter().map(|i| i.id).collect::<Vec<_>>(), [fine]);

    // --limit pages; the table says how to go on.
    let page: InstancePage = deployment.sluice(&["instances", "--project", "tables", "--limit", "1", "-o", "json"]).await.expect(0).json();
    assert_eq!(page.items.iter().map(|i| i.id).collect::<Vec<_>>(), [fine]);
    let cursor = page.next_cursor.expect("a second page");
    let page: InstancePage =
        deployment.sluice(&["instances", "--project", "tables", "--limit", "1", "--cursor", &cursor, "-o", "json"]).await.expect(0).json();
    assert_eq!(page.items.iter().map(|i| i.id).collect::<Vec<_>>(), [failed]);
    let ran = deployment.sluice(&["instances", "--project", "tables", "--limit", "1"]).await;
    ran.expect(0);
    assert!(ran.stderr.contains(&format!("more: --cursor {cursor}")), "{}", ran.stderr);

    // A bad filter: the API's message, exit 2.
    let ran = deployment.sluice(&["instances", "--state", "bogus"]).await;
    ran.expect(2);
    assert!(ran.stderr.contains("bogus"), "{}", ran.stderr);
}

/// A parameter only a run can find broken (here one given at the start)
/// fails the task before it starts: `run --wait`, `status` and `logs` say
/// why.
async fn a_task_that_never_ran_says_why_in_status_and_logs(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let flow = write(files.path(), "never.yaml", "project: never\nname: flow\ntasks:\n  - {name: uses, type: shell, script: 'echo ${dt}'}\n");
    deployment.sluice(&["apply", "-f", arg(&flow)]).await.expect(0);
    let ran = deployment.sluice(&["run", "never/flow", "--param", "dt=$[yyyyMMdd-", "--wait"]).await;
    ran.expect(1);
    let id = instance_id(&ran);
    let why = "cannot resolve `$[yyyyMMdd-`: missing `]`";
    let last = ran.stdout.lines().last().unwrap();
    assert!(last.contains(&format!("uses (failure: {why})")), "{}", ran.stdout);

    let ran = deployment.sluice(&["status", &id.to_string()]).await;
    ran.expect(0);
    let row = ran.stdout.lines().find(|l| l.split_whitespace().nth(1) == Some("uses")).unwrap_or_else(|| panic!("{}", ran.stdout));
    let before = row.strip_suffix(why).unwrap_or_else(|| panic!("no reason at the end of {row}"));
    assert!(before.trim_end().ends_with("  -"), "no exit code, then the reason: {row}");
    let wi: WorkflowInstanceView = deployment.get(&format!("/workflow-instances/{id}")).await;
    let uses = task(&wi, "uses");
    assert_eq!(uses.reason.as_deref(), Some(why));

    let ran = deployment.sluice(&["logs", &uses.id.to_string()]).await;
    ran.expect(0);
    assert!(ran.stdout.contains(&format!("[sluice] failed before it started: {why}")), "{ran:?}");
}

async fn a_task_can_be_killed_and_an_instance_stopped(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let slow = write(
        files.path(),
        "slow.yaml",
        "project: ops\nname: slow\ntasks:\n  - {name: nap, type: shell, script: 'sleep 60'}\n  - {name: after, type: shell, script: 'echo after', deps: [nap]}\n",
    );
    deployment.sluice(&["apply", "-f", arg(&slow)]).await.expect(0);

    // kill TASK_ID: the running task is killed, the instance fails.
    let id = instance_id(deployment.sluice(&["run", "ops/slow"]).await.expect(0));
    let wi = deployment.wait_status(id, "nap runs", |wi| wi.tasks.as_deref().unwrap_or_default().iter().any(|t| t.name == "nap" && t.state == "running")).await;
    let nap = task(&wi, "nap").id;
    let ran = deployment.sluice(&["kill", &nap.to_string()]).await;
    ran.expect(0);
    assert_eq!(ran.stdout, format!("kill requested for task instance {nap} of instance {id}\n"));
    let wi = deployment.wait_status(id, "the killed run ends", |wi| wi.end_time.is_some()).await;
    assert_eq!((wi.state.as_str(), task(&wi, "nap").state.as_str()), ("failure", "killed"));
    assert!(wi.tasks.as_deref().unwrap().iter().all(|t| t.name != "after"), "`after` ran: {wi:#?}");

    // stop ID (JSON answer this time): the instance ends as stopped.
    let id = instance_id(deployment.sluice(&["run", "ops/slow"]).await.expect(0));
    deployment.wait_status(id, "nap runs", |wi| wi.tasks.as_deref().unwrap_or_default().iter().any(|t| t.state == "running")).await;
    let accepted: RequestAccepted = deployment.sluice(&["stop", &id.to_string(), "-o", "json"]).await.expect(0).json();
    assert_eq!(accepted.workflow_instance_id, id);
    let wi = deployment.wait_status(id, "the stopped run ends", |wi| wi.end_time.is_some()).await;
    assert_eq!((wi.state.as_str(), task(&wi, "nap").state.as_str()), ("stopped", "killed"));

    // Too late now: the API says so, exit 2.
    let ran = deployment.sluice(&["stop", &id.to_string()]).await;
    ran.expect(2);
    let ran = deployment.sluice(&["kill", &nap.to_string()]).await;
    ran.expect(2);
}

/// The API's own message for a request, to compare with what the CLI printed.
async fn api_message(deployment: &Deployment, method: reqwest::Method, path: &str) -> String {
    let response = sluice_e2e::http_client()
        .request(method, format!("{}/api/v1{path}", deployment.url()))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{path}: {}", response.status());
    response.json::<ErrorBody>().await.unwrap().error.message
}

async fn unknown_workflows_and_ids_exit_2_with_the_api_message(deployment: &Deployment) {
    use reqwest::Method;
    let cases: [(&[&str], Method, &str); 5] = [
        (&["run", "nowhere/nothing", "--wait"], Method::POST, "/projects/nowhere/workflows/nothing/runs"),
        (&["status", "987654"], Method::GET, "/workflow-instances/987654"),
        (&["stop", "987654"], Method::POST, "/workflow-instances/987654/stop"),
        (&["kill", "987654"], Method::POST, "/task-instances/987654/kill"),
        (&["instances", "--workflow", "w", "--project", "nowhere"], Method::GET, "/workflow-instances?project=nowhere&workflow=w"),
    ];
    for (args, method, path) in cases {
        let ran = deployment.sluice(args).await;
        if args[0] == "instances" && ran.code == Some(0) {
            // An unknown project may just list nothing.
            assert!(ran.stdout.lines().count() <= 1, "{ran:?}");
            continue;
        }
        ran.expect(2);
        let message = api_message(deployment, method, path).await;
        assert!(ran.stdout.is_empty(), "{ran:?}");
        assert_eq!(ran.stderr, format!("sluice: {message}\n"));
    }
}

async fn the_readme_commands_run_the_example(deployment: &Deployment) {
    // As a newcomer types them, from the repository's root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let url = deployment.url();
    let ran = sluice_at(&url, Some(root), &["apply", "-f", "examples/daily_etl.yaml"]).await;
    ran.expect(0);
    // Standalone added the example on start-up; the cluster sandbox did not.
    let expected = match deployment {
        Deployment::Binary { .. } => "demo/daily_etl version 1 (unchanged)\n",
        Deployment::Cluster(_) => "project demo created\ndemo/daily_etl version 1 (created)\n",
    };
    assert_eq!(ran.stdout, expected);

    let ran = sluice_at(&url, Some(root), &["run", "demo/daily_etl", "--wait"]).await;
    ran.expect(0);
    let id = instance_id(&ran);
    assert!(ran.stdout.contains("success: 5/5 tasks done"), "{}", ran.stdout);

    let ran = sluice_at(&url, Some(root), &["status", &id.to_string()]).await;
    ran.expect(0);
    assert!(ran.stdout.starts_with(&format!("instance {id}  demo/daily_etl version 1  success\n")), "{}", ran.stdout);
    let successes = ran.stdout.lines().filter(|l| l.split_whitespace().nth(2) == Some("success")).count();
    assert_eq!(successes, 5, "{}", ran.stdout);
}

// --- single-deployment tests -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_without_the_example_has_no_demo_project() {
    let deployment = Deployment::standalone(&["--no-example"]).await;
    assert_eq!(deployment.get_status("/projects/demo").await, 404);
    let ran = deployment.sluice(&["run", "demo/daily_etl"]).await;
    ran.expect(2);
    assert!(ran.stderr.contains("demo"), "{}", ran.stderr);
    deployment.shutdown().await;

    // Restarting on the same database does not add a second version either.
    let deployment = Deployment::standalone(&[]).await;
    let stored: WorkflowView = deployment.get("/projects/demo/workflows/daily_etl").await;
    assert_eq!(stored.version, 1);
    assert!(deployment.log().contains("example workflow added"), "{}", deployment.log());
    deployment.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_server_exits_2_naming_its_url() {
    let unreachable = unreachable_addr();
    let url = format!("http://{}", unreachable.addr());
    let files = tempfile::tempdir().unwrap();
    let file = write(files.path(), "w.yaml", "project: p\nname: w\ntasks:\n  - {name: a, type: shell, script: x}\n");
    for args in [
        &["apply", "-f", arg(&file)][..],
        &["run", "p/w", "--wait"],
        &["status", "1"],
        &["instances"],
        &["stop", "1"],
        &["kill", "1"],
    ] {
        let ran = sluice_at(&url, None, args).await;
        ran.expect(2);
        assert!(ran.stderr.starts_with(&format!("sluice: cannot reach the Sluice server at {url}: ")), "{ran:?}");
        assert!(ran.stdout.is_empty(), "{ran:?}");
    }
    // --server wins over SLUICE_SERVER.
    let ran = sluice_at("http://127.0.0.1:1", None, &["instances", "--server", &url]).await;
    ran.expect(2);
    assert!(ran.stderr.contains(&url), "{}", ran.stderr);
    let ran = sluice_at("not a url", None, &["instances"]).await;
    ran.expect(2);
    assert!(ran.stderr.contains("invalid server address `not a url`"), "{}", ran.stderr);
}
