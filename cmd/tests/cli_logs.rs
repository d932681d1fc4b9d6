//! `sluice logs` and `sluice run --wait --logs` as users run them: the real
//! binary against `sluice standalone` (a child process) and a 2-master /
//! 2-worker cluster sandbox. Exit codes: 0 done, 1 a `--wait`ed instance
//! did not succeed, 2 refused or unusable.

mod common;

use std::time::Instant;

use common::{arg, instance_id, task, write, Deployment};

common::both_deployments!(logs_prints_follows_and_refuses_bad_attempts, run_wait_logs_prints_each_tasks_log_prefixed);

/// The text after `[out] ` of each line that has it.
fn out(text: &str) -> Vec<&str> {
    text.lines().filter_map(|l| l.split_once(" [out] ").map(|(_, t)| t)).collect()
}

async fn logs_prints_follows_and_refuses_bad_attempts(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let doc = write(
        files.path(),
        "ticks.yaml",
        "project: logs\nname: ticks\ntasks:\n  - {name: tick, type: shell, script: 'for i in $(seq 1 15); do echo \"tick $i\"; sleep 0.1; done'}\n",
    );
    deployment.sluice(&["apply", "-f", arg(&doc)]).await.expect(0);
    let id = instance_id(deployment.sluice(&["run", "logs/ticks"]).await.expect(0));
    let running = |wi: &sluice_api::types::WorkflowInstanceView| {
        wi.tasks.as_deref().unwrap_or_default().iter().any(|t| t.name == "tick" && t.state == "running" && t.host.is_some())
    };
    let wi = deployment.wait_status(id, "tick running", running).await;
    let tick = task(&wi, "tick").id.to_string();

    // -f: from the start while it runs, to its end.
    let started = Instant::now();
    let followed = deployment.sluice(&["logs", &tick, "-f"]).await;
    let took = started.elapsed();
    let ticks: Vec<String> = (1..=15).map(|i| format!("tick {i}")).collect();
    assert_eq!(out(&followed.expect(0).stdout), ticks, "[{}]", deployment.name());
    assert!(followed.stdout.lines().last().unwrap().contains("[sluice] finished: success (exit code 0)"), "{}", followed.stdout);
    println!("[{}] `sluice logs -f` returned after {took:?}", deployment.name());
    let wi = deployment.wait_status(id, "finished", |wi| wi.state == "success").await;
    assert_eq!(task(&wi, "tick").state, "success");

    // Without -f: the whole log, the same lines.
    let printed = deployment.sluice(&["logs", &tick]).await;
    assert_eq!(printed.expect(0).stdout, followed.stdout);
    assert_eq!(deployment.sluice(&["logs", &tick, "--attempt", "1"]).await.expect(0).stdout, followed.stdout);

    deployment.sluice(&["logs", &tick, "--attempt", "2"]).await.refused(&format!("task instance {tick} has attempts 1 to 1, not 2"));
    deployment.sluice(&["logs", &tick, "-f", "--attempt", "3"]).await.refused("has attempts 1 to 1, not 3");
    deployment.sluice(&["logs", "987654"]).await.refused("task instance 987654 not found");
    let ran = deployment.sluice(&["logs", &tick, "--attempt", "0"]).await;
    assert_eq!(ran.code, Some(2), "{ran:?}");
}

async fn run_wait_logs_prints_each_tasks_log_prefixed(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let doc = write(
        files.path(),
        "pair.yaml",
        "project: logs\nname: pair\ntasks:\n  - {name: extract, type: shell, script: 'echo rows 3; echo warn >&2'}\n  - {name: load, type: shell, script: 'sleep 0.3; echo loaded; exit 4', deps: [extract]}\n",
    );
    deployment.sluice(&["apply", "-f", arg(&doc)]).await.expect(0);
    let started = Instant::now();
    let ran = deployment.sluice(&["run", "logs/pair", "--wait", "--logs"]).await;
    assert_eq!(ran.code, Some(1), "load fails: {ran:?}");
    println!("[{}] run --wait --logs took {:?}", deployment.name(), started.elapsed());
    let lines: Vec<&str> = ran.stdout.lines().collect();
    let of = |name: &str| -> Vec<&str> {
        let prefix = format!("[{name}] ");
        lines.iter().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
    };
    let extract = of("extract");
    let load = of("load");
    assert_eq!(out(&extract.join("\n")), ["rows 3", "warn"], "{}", ran.stdout);
    assert_eq!(out(&load.join("\n")), ["loaded"], "{}", ran.stdout);
    assert!(extract[0].contains("[sluice] attempt 1 of task `extract`"), "{}", ran.stdout);
    assert!(load.last().unwrap().contains("[sluice] finished: failure (exit code 4)"), "{}", ran.stdout);
    assert!(ran.last_line().contains("failure"), "the summary is last: {}", ran.stdout);
    // --logs needs --wait.
    let ran = deployment.sluice(&["run", "logs/pair", "--logs"]).await;
    assert_eq!(ran.code, Some(2), "{ran:?}");
}
