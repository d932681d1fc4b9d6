//! The CLI's schedule and run-command verbs as users run them: the real
//! binary against `sluice standalone` (a child process on a temporary
//! SQLite) and against a 2-master / 2-worker cluster sandbox (ZooKeeper,
//! PostgreSQL). Exit codes: 0 done, 1 a `--wait`ed instance did not
//! succeed, 2 refused or unusable. Tests wait on state with deadlines.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{arg, unreachable_addr, instance_id, sluice_at, task, write, Deployment, MINUTE};
use sluice_api::types::{InstancePage, RequestAccepted, SchedulePreview, ScheduleView, WorkflowInstanceView};

common::both_deployments!(
    schedule_shows_switches_and_previews,
    the_scheduled_example_applies_offline_and_runs,
    rerun_and_recover_wait_and_exit_by_the_outcome,
    force_success_restarts_a_failed_instance,
    pause_then_resume_wait,
);

// --- schedules -----------------------------------------------------------------

async fn schedule_shows_switches_and_previews(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let ticker = write(
        files.path(),
        "ticker.yaml",
        "project: sched\nname: ticker\ntasks:\n  - {name: tick, type: shell, script: 'true'}\nschedule: {cron: '*/2 * * * * ?', misfire: skip}\n",
    );
    let nightly = write(
        files.path(),
        "nightly.yaml",
        "project: sched\nname: nightly\ntasks:\n  - {name: a, type: shell, script: 'true'}\nschedule: {cron: '0 30 2 * * ?', timezone: America/New_York, start: 2026-01-01}\n",
    );
    let ran = deployment.sluice(&["validate", "-f", arg(&ticker)]).await;
    assert_eq!(ran.expect(0).stdout, "ok: sched/ticker (1 tasks; schedule: cron */2 * * * * ? in UTC)\n");
    let ran = deployment.sluice(&["apply", "-f", arg(&ticker), "-f", arg(&nightly)]).await;
    assert_eq!(
        ran.expect(0).stdout,
        "project sched created\nsched/ticker version 1 (created), schedule created (offline)\nsched/nightly version 1 (created), schedule created (offline)\n"
    );

    // show: the default action.
    let ran = deployment.sluice(&["schedule", "sched/nightly"]).await;
    let lines: Vec<&str> = ran.expect(0).stdout.lines().collect();
    assert_eq!(lines[0], "sched/nightly: offline", "{}", ran.stdout);
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["schedule", "cron", "0", "30", "2", "*", "*", "?", "in", "America/New_York"]);
    assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["start", "2026-01-01"]);
    let view: ScheduleView = deployment.sluice(&["schedule", "sched/nightly", "show", "-o", "json"]).await.expect(0).json();
    assert_eq!((view.online, view.schedule.timezone.as_deref(), view.schedule.misfire.as_deref()), (false, Some("America/New_York"), Some("run_once")));

    // preview: in the schedule's zone, DST included.
    let ran = deployment.sluice(&["schedule", "sched/nightly", "preview", "--count", "3", "--after", "2026-03-07T12:00:00Z"]).await;
    assert_eq!(
        ran.expect(0).stdout,
        "next 3 fire times of sched/nightly (America/New_York; offline: these fire once it is online)\n\
         2026-03-08T03:00:00-04:00\n2026-03-09T02:30:00-04:00\n2026-03-10T02:30:00-04:00\n"
    );
    let preview: SchedulePreview = deployment.sluice(&["schedule", "sched/ticker", "preview", "-o", "json"]).await.expect(0).json();
    assert_eq!((preview.timezone.as_str(), preview.times.len()), ("UTC", 5));

    // online: the engine fires it; offline: it stops.
    let ran = deployment.sluice(&["schedule", "sched/ticker", "online"]).await;
    assert!(ran.expect(0).stdout.starts_with("sched/ticker: online\n"), "{}", ran.stdout);
    let deadline = Instant::now() + MINUTE;
    loop {
        let page: InstancePage =
            deployment.sluice(&["instances", "--project", "sched", "--workflow", "ticker", "-o", "json"]).await.expect(0).json();
        if let Some(fired) = page.items.first() {
            assert!(fired.schedule_time.is_some(), "{fired:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "[{}] the online schedule did not fire within a minute", deployment.name());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let view: ScheduleView = deployment.sluice(&["schedule", "sched/ticker", "offline", "-o", "json"]).await.expect(0).json();
    assert!(!view.online && view.last_fire.is_some(), "{view:#?}");

    // A file without `schedule:` leaves the stored one alone.
    let plain = write(files.path(), "plain.yaml", "project: sched\nname: ticker\ntasks:\n  - {name: tick, type: shell, script: 'true'}\n");
    assert_eq!(deployment.sluice(&["apply", "-f", arg(&plain)]).await.expect(0).stdout, "sched/ticker version 1 (unchanged)\n");
    let view: ScheduleView = deployment.sluice(&["schedule", "sched/ticker", "-o", "json"]).await.expect(0).json();
    assert_eq!(view.schedule.cron.as_deref(), Some("*/2 * * * * ?"));

    // Mistakes: in the file (validate and apply alike), in usage, at the server.
    let bad = write(files.path(), "bad.yaml", "project: sched\nname: bad\ntasks:\n  - {name: a, type: shell, script: 'true'}\nschedule: {cron: '0 61 2 * * ?'}\n");
    for command in ["validate", "apply"] {
        let ran = deployment.sluice(&[command, "-f", arg(&bad)]).await;
        ran.refused(&format!("{}: schedule.cron: invalid cron expression `0 61 2 * * ?`: minutes field", bad.display()));
    }
    let other = write(files.path(), "other.yaml", "project: sched\nname: other\ntasks:\n  - {name: a, type: shell, script: 'true'}\n");
    deployment.sluice(&["apply", "-f", arg(&other)]).await.expect(0);
    deployment.sluice(&["schedule", "sched/other"]).await.refused("workflow `other` of project `sched` has no schedule");
    deployment.sluice(&["schedule", "sched/other", "online"]).await.refused("has no schedule");
    deployment.sluice(&["schedule", "sched/nothing", "preview"]).await.refused("workflow `nothing` not found in project `sched`");
    deployment.sluice(&["schedule", "sched/ticker", "preview", "--after", "yesterday"]).await.refused("after: expected an RFC 3339 time");
    deployment.sluice(&["schedule", "sched/ticker", "show", "--count", "2"]).await.refused("--count and --after go with `preview`");
    for args in [&["schedule", "sched/ticker", "preview", "--count", "0"][..], &["schedule", "sched/ticker", "sideways"], &["schedule", "noslash"]] {
        let ran = deployment.sluice(args).await;
        ran.expect(2);
        assert!(ran.stdout.is_empty() && !ran.stderr.is_empty(), "{ran:?}");
    }
}

async fn the_scheduled_example_applies_offline_and_runs(deployment: &Deployment) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let url = deployment.url();
    let ran = sluice_at(&url, Some(root), &["apply", "-f", "examples/hourly_report.yaml"]).await;
    let expected = match deployment {
        Deployment::Binary { .. } => "demo/hourly_report version 1 (created), schedule created (offline)\n",
        Deployment::Cluster(_) => "project demo created\ndemo/hourly_report version 1 (created), schedule created (offline)\n",
    };
    assert_eq!(ran.expect(0).stdout, expected);
    let ran = sluice_at(&url, Some(root), &["schedule", "demo/hourly_report", "preview", "--count", "2"]).await;
    let lines: Vec<&str> = ran.expect(0).stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", ran.stdout);
    assert!(lines[1].ends_with(":00:00+08:00") && lines[2].ends_with(":00:00+08:00"), "on the hour in Shanghai: {}", ran.stdout);
    let ran = sluice_at(&url, Some(root), &["run", "demo/hourly_report", "--wait"]).await;
    assert!(ran.expect(0).last_line().contains("success: 2/2 tasks done"), "{}", ran.stdout);
}

// --- run commands ----------------------------------------------------------------

async fn rerun_and_recover_wait_and_exit_by_the_outcome(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let flag = files.path().join("fixed");
    let flaky = write(
        files.path(),
        "flaky.yaml",
        &format!("project: cmds\nname: flaky\ntasks:\n  - {{name: a, type: shell, script: 'echo a'}}\n  - {{name: b, type: shell, script: '[ -f {} ]', deps: [a]}}\n", flag.display()),
    );
    deployment.sluice(&["apply", "-f", arg(&flaky)]).await.expect(0);
    let id = instance_id(deployment.sluice(&["run", "cmds/flaky", "--wait"]).await.expect(1));
    let ids = id.to_string();

    // Still broken: the recovered run fails again, exit 1.
    let ran = deployment.sluice(&["recover", &ids, "--wait"]).await;
    ran.expect(1);
    assert_eq!(ran.stdout.lines().next(), Some(format!("recover requested for instance {id} (run 2)").as_str()), "{}", ran.stdout);
    assert!(ran.last_line().starts_with(&format!("instance {id} failure: ")), "{}", ran.stdout);
    assert!(ran.last_line().contains("b (failure, exit code 1)"), "{}", ran.stdout);

    // Fixed: exit 0.
    std::fs::write(&flag, "").unwrap();
    let ran = deployment.sluice(&["recover", &ids, "--wait"]).await;
    ran.expect(0);
    assert!(ran.last_line().starts_with(&format!("instance {id} success: 2/2 tasks done in ")), "{}", ran.stdout);
    let wi: WorkflowInstanceView = deployment.sluice(&["status", &ids, "-o", "json"]).await.expect(0).json();
    assert_eq!((wi.run, task(&wi, "a").attempt, task(&wi, "b").attempt), (3, 1, 3), "recover keeps `a`");

    // rerun --wait -o json: the ended instance as the API has it.
    let wi: WorkflowInstanceView = deployment.sluice(&["rerun", &ids, "--wait", "-o", "json"]).await.expect(0).json();
    assert_eq!((wi.state.as_str(), wi.run, wi.command.as_str()), ("success", 4, "rerun"));
    assert!(wi.tasks.as_deref().unwrap().iter().all(|t| t.state == "success"), "{wi:#?}");

    // Without --wait: the request, at once.
    let ran = deployment.sluice(&["rerun", &ids]).await;
    assert_eq!(ran.expect(0).stdout, format!("rerun requested for instance {id} (run 5)\n"));
    deployment.wait_status(id, "the rerun ends", |wi| wi.run == 5 && wi.end_time.is_some()).await;
    let accepted: RequestAccepted = deployment.sluice(&["rerun", &ids, "-o", "json"]).await.expect(0).json();
    assert_eq!((accepted.workflow_instance_id, accepted.run), (id, Some(6)));
    deployment.wait_status(id, "the rerun ends", |wi| wi.run == 6 && wi.end_time.is_some()).await;

    // What the state does not allow: the API's reason, exit 2.
    deployment.sluice(&["recover", &ids]).await.refused(&format!("sluice: workflow instance {id} is success: recover needs it stopped or failure\n"));
    deployment.sluice(&["resume", &ids, "--wait"]).await.refused("is success: resume needs it paused");
    deployment.sluice(&["pause", &ids]).await.refused("is success: pause needs it running");
    for verb in ["rerun", "recover", "pause", "resume", "force-success"] {
        deployment.sluice(&[verb, "987654"]).await.refused("987654 not found");
        let ran = deployment.sluice(&[verb, "seven"]).await;
        ran.expect(2);
    }
    deployment.sluice(&["pause", &ids, "--wait"]).await.expect(2);
}

async fn force_success_restarts_a_failed_instance(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let forced = write(
        files.path(),
        "forced.yaml",
        "project: cmds\nname: forced\ntasks:\n  - {name: broken, type: shell, script: 'exit 4'}\n  - {name: after, type: shell, script: 'echo after', deps: [broken]}\n",
    );
    deployment.sluice(&["apply", "-f", arg(&forced)]).await.expect(0);
    let id = instance_id(deployment.sluice(&["run", "cmds/forced", "--wait"]).await.expect(1));
    let wi: WorkflowInstanceView = deployment.sluice(&["status", &id.to_string(), "-o", "json"]).await.expect(0).json();
    let broken = task(&wi, "broken").id.to_string();

    let ran = deployment.sluice(&["force-success", &broken, "--wait"]).await;
    ran.expect(0);
    assert_eq!(
        ran.stdout.lines().next(),
        Some(format!("force-success requested for task instance {broken} of instance {id} (run 2)").as_str()),
        "{}",
        ran.stdout
    );
    assert!(ran.last_line().starts_with(&format!("instance {id} success: 2/2 tasks done")), "{}", ran.stdout);
    let wi: WorkflowInstanceView = deployment.sluice(&["status", &id.to_string(), "-o", "json"]).await.expect(0).json();
    assert_eq!((task(&wi, "broken").state.as_str(), task(&wi, "after").state.as_str()), ("forced_success", "success"));
    deployment.sluice(&["force-success", &broken]).await.refused(&format!("task instance {broken} (`broken`) is forced_success: force-success needs it failure or killed"));
}

async fn pause_then_resume_wait(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let gate = files.path().join("gate");
    let flow = write(
        files.path(),
        "gated.yaml",
        &format!(
            "project: cmds\nname: gated\ntasks:\n  - {{name: one, type: shell, script: 'while [ ! -f {} ]; do sleep 0.05; done'}}\n  - {{name: two, type: shell, script: 'true', deps: [one]}}\n",
            gate.display()
        ),
    );
    deployment.sluice(&["apply", "-f", arg(&flow)]).await.expect(0);
    let id = instance_id(deployment.sluice(&["run", "cmds/gated"]).await.expect(0));
    let ids = id.to_string();
    deployment.wait_status(id, "one runs", |wi| wi.tasks.as_deref().unwrap_or_default().iter().any(|t| t.name == "one" && t.state == "running")).await;
    deployment.sluice(&["resume", &ids]).await.refused("is running: resume needs it paused");
    let ran = deployment.sluice(&["pause", &ids]).await;
    assert_eq!(ran.expect(0).stdout, format!("pause requested for instance {id}\n"));
    deployment.wait_status(id, "pausing", |wi| wi.state == "ready_pause").await;
    std::fs::write(&gate, "").unwrap();
    let wi = deployment.wait_status(id, "paused", |wi| wi.state == "paused").await;
    assert_eq!(wi.tasks.as_deref().unwrap().len(), 1, "nothing new started: {wi:#?}");

    let ran = deployment.sluice(&["resume", &ids, "--wait"]).await;
    ran.expect(0);
    assert_eq!(ran.stdout.lines().next(), Some(format!("resume requested for instance {id}").as_str()));
    assert!(ran.last_line().starts_with(&format!("instance {id} success: 2/2 tasks done")), "{}", ran.stdout);
}

// --- no server -------------------------------------------------------------------

#[tokio::test]
async fn the_new_verbs_exit_2_naming_an_unreachable_server() {
    let unreachable = unreachable_addr();
    let url = format!("http://{}", unreachable.addr());
    for args in [
        &["rerun", "1"][..],
        &["recover", "1", "--wait"],
        &["pause", "1"],
        &["resume", "1"],
        &["force-success", "1"],
        &["schedule", "p/w"],
        &["schedule", "p/w", "online"],
        &["schedule", "p/w", "preview", "--count", "3"],
    ] {
        let ran = sluice_at(&url, None, args).await;
        ran.refused(&format!("sluice: cannot reach the Sluice server at {url}: "));
    }
}
