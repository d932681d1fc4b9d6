//! `sluice backfill`, `backfill-status` and `backfill-stop` as users run
//! them: the real binary against `sluice standalone` (a child process on a
//! temporary SQLite) and against a 2-master / 2-worker cluster sandbox
//! (ZooKeeper, PostgreSQL). Exit codes: 0 done, 1 a `--wait`ed backfill had
//! a run that did not succeed, 2 refused or unusable. Tests wait on state
//! with deadlines, never on fixed sleeps.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{arg, unreachable_addr, sluice_at, write, Deployment, MINUTE};
use sluice_api::types::{BackfillPreview, BackfillView, InstancePage};

common::both_deployments!(
    a_dry_run_prints_the_dates_and_schedule_times_and_starts_nothing,
    a_backfill_with_wait_exits_0_when_every_run_succeeded_and_1_if_not,
    a_backfill_can_be_stopped_and_its_status_shown,
    bad_dates_and_usage_exit_2_and_store_nothing,
);

/// A daily workflow at 02:30 in Shanghai (its schedule stays offline)
/// whose task appends its business date to `log` and fails on `fail_on`.
fn daily(dir: &Path, name: &str, log: &Path, fail_on: &str) -> String {
    let script = format!("echo ${{system.biz.date}} >> {}; [ ${{system.biz.date}} != {fail_on} ]", log.display());
    let text = format!(
        "project: bf\nname: {name}\ntasks:\n  - {{name: load, type: shell, script: '{script}'}}\nschedule: {{cron: '0 30 2 * * ?', timezone: Asia/Shanghai}}\n"
    );
    arg(&write(dir, &format!("{name}.yaml"), &text)).to_owned()
}

/// The backfill id from the first line, `backfill 7: ...`.
#[track_caller]
fn backfill_id(ran: &common::Ran) -> i64 {
    let first = ran.stdout.lines().next().unwrap_or_default();
    first
        .strip_prefix("backfill ")
        .and_then(|rest| rest.split(':').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no backfill id in the output of `sluice {}`:\n{}", ran.args, ran.stdout))
}

/// Polls `sluice backfill-status ID -o json` until `check` holds.
async fn wait_backfill(deployment: &Deployment, id: i64, what: &str, check: impl Fn(&BackfillView) -> bool) -> BackfillView {
    let deadline = Instant::now() + MINUTE;
    loop {
        let view: BackfillView = deployment.sluice(&["backfill-status", &id.to_string(), "-o", "json"]).await.expect(0).json();
        if check(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "[{}] {what}: not within a minute; last seen {view:#?}", deployment.name());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn instances(deployment: &Deployment, workflow: &str) -> InstancePage {
    deployment.sluice(&["instances", "--project", "bf", "--workflow", workflow, "-o", "json"]).await.expect(0).json()
}

async fn a_dry_run_prints_the_dates_and_schedule_times_and_starts_nothing(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let file = daily(files.path(), "daily", &files.path().join("dates"), "none");
    deployment.sluice(&["apply", "-f", &file]).await.expect(0);

    let ran = deployment.sluice(&["backfill", "bf/daily", "--from", "2026-03-01", "--to", "2026-03-03", "--dry-run"]).await;
    assert_eq!(
        ran.expect(0).stdout,
        "dry run: bf/daily version 1 would backfill 3 runs, one at a time (times in Asia/Shanghai)\n\
         DATE        SCHEDULE TIME\n\
         2026-03-01  2026-03-01T02:30:00+08:00\n\
         2026-03-02  2026-03-02T02:30:00+08:00\n\
         2026-03-03  2026-03-03T02:30:00+08:00\n"
    );
    // --date (repeated), --desc, --parallel; -o json: the API's answer.
    let args = ["backfill", "bf/daily", "--date", "2026-02-28", "--date", "2024-02-29", "--desc", "--parallel", "3", "--dry-run", "-o", "json"];
    let preview: BackfillPreview = deployment.sluice(&args).await.expect(0).json();
    assert_eq!((preview.dry_run, preview.parallelism, preview.timezone.as_str()), (true, 3, "Asia/Shanghai"));
    let runs: Vec<(&str, &str)> = preview.runs.iter().map(|r| (r.date.as_str(), r.schedule_time.as_str())).collect();
    assert_eq!(runs, [("2026-02-28", "2026-02-28T02:30:00+08:00"), ("2024-02-29", "2024-02-29T02:30:00+08:00")]);

    assert!(instances(deployment, "daily").await.items.is_empty(), "[{}] a dry run started runs", deployment.name());
    deployment.sluice(&["backfill-status", "1"]).await.refused("backfill 1 not found");
}

async fn a_backfill_with_wait_exits_0_when_every_run_succeeded_and_1_if_not(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let log = files.path().join("dates");
    let file = daily(files.path(), "daily", &log, "none");
    deployment.sluice(&["apply", "-f", &file]).await.expect(0);

    let ran = deployment.sluice(&["backfill", "bf/daily", "--from", "2026-03-01", "--to", "2026-03-03", "--wait"]).await;
    ran.expect(0);
    let id = backfill_id(&ran);
    assert_eq!(ran.stdout.lines().next(), Some(format!("backfill {id}: bf/daily, 3 runs, one at a time").as_str()), "{}", ran.stdout);
    assert_eq!(ran.last_line(), format!("backfill {id} done: 3/3 runs succeeded"), "{}", ran.stdout);
    // Not a terminal: a progress line per change, on stderr.
    assert!(ran.stderr.lines().any(|l| l.starts_with(&format!("backfill {id} running: "))), "no progress in:\n{}", ran.stderr);
    // Serial, oldest first: each run saw the day before its date.
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "20260228\n20260301\n20260302\n");

    // backfill-status: the backfill, then its runs.
    let ran = deployment.sluice(&["backfill-status", &id.to_string()]).await;
    let lines: Vec<&str> = ran.expect(0).stdout.lines().collect();
    assert_eq!(lines[0], format!("backfill {id}  bf/daily version 1  done"), "{}", ran.stdout);
    assert_eq!(lines[1], "3/3 runs created, 3 ended, 3 succeeded; one at a time; dates in Asia/Shanghai", "{}", ran.stdout);
    let header = lines.iter().position(|l| l.starts_with("INSTANCE ")).unwrap_or_else(|| panic!("no table:\n{}", ran.stdout));
    let rows: Vec<Vec<&str>> = lines[header + 1..].iter().map(|l| l.split_whitespace().collect()).collect();
    let dates: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r[1], r[2], r[3])).collect();
    assert_eq!(
        dates,
        [
            ("2026-03-01", "2026-03-01T02:30:00+08:00", "success"),
            ("2026-03-02", "2026-03-02T02:30:00+08:00", "success"),
            ("2026-03-03", "2026-03-03T02:30:00+08:00", "success"),
        ]
    );
    let view: BackfillView = deployment.sluice(&["backfill-status", &id.to_string(), "-o", "json"]).await.expect(0).json();
    assert_eq!(rows.iter().map(|r| r[0].parse::<i64>().unwrap()).collect::<Vec<_>>(), view.runs.iter().map(|r| r.workflow_instance_id).collect::<Vec<_>>());

    // One date fails (its business date is 2026-03-01): exit 1, naming it.
    let file = daily(files.path(), "flaky", &files.path().join("flaky-dates"), "20260301");
    deployment.sluice(&["apply", "-f", &file]).await.expect(0);
    let ran = deployment.sluice(&["backfill", "bf/flaky", "--from", "2026-03-01", "--to", "2026-03-03", "--parallel", "2", "-p", "k=v", "--wait"]).await;
    ran.expect(1);
    let id = backfill_id(&ran);
    let last = ran.last_line();
    assert!(last.starts_with(&format!("backfill {id} done: 2/3 runs succeeded; 2026-03-02 (instance ")), "{}", ran.stdout);
    assert!(last.ends_with(&format!(", failure) (details: sluice backfill-status {id})")), "{}", ran.stdout);
    // --wait -o json: the ended backfill as the API has it.
    let ran = deployment.sluice(&["backfill", "bf/flaky", "--date", "2026-03-02", "--wait", "-o", "json"]).await;
    let view: BackfillView = ran.expect(1).json();
    assert_eq!((view.state.as_str(), view.runs.len(), view.runs[0].state.as_str()), ("done", 1, "failure"));
    let view: BackfillView = deployment.get(&format!("/backfills/{id}")).await;
    assert_eq!((view.parallelism, view.params.get("k").map(String::as_str)), (2, Some("v")));
}

async fn a_backfill_can_be_stopped_and_its_status_shown(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let slow = write(files.path(), "slow.yaml", "project: bf\nname: slow\ntasks:\n  - {name: nap, type: shell, script: 'sleep 30'}\n");
    deployment.sluice(&["apply", "-f", arg(&slow)]).await.expect(0);
    let ran = deployment.sluice(&["backfill", "bf/slow", "--from", "2026-03-01", "--to", "2026-03-04", "--parallel", "2"]).await;
    let id = backfill_id(&ran);
    assert_eq!(ran.expect(0).stdout, format!("backfill {id}: bf/slow, 4 runs, 2 at a time\n"));
    let view = wait_backfill(deployment, id, "two runs going", |b| b.runs.len() == 2 && b.runs.iter().all(|r| r.state == "running")).await;
    for run in &view.runs {
        deployment
            .wait_status(run.workflow_instance_id, "its task runs", |wi| wi.tasks.as_deref().unwrap_or_default().iter().any(|t| t.state == "running"))
            .await;
    }
    let ran = deployment.sluice(&["backfill-status", &id.to_string()]).await;
    assert!(ran.expect(0).stdout.contains("2/4 runs created, 0 ended, 0 succeeded; 2 at a time; dates in UTC"), "{}", ran.stdout);

    let ran = deployment.sluice(&["backfill-stop", &id.to_string()]).await;
    let (a, b) = (view.runs[0].workflow_instance_id, view.runs[1].workflow_instance_id);
    assert_eq!(ran.expect(0).stdout, format!("backfill {id} stopped; stopping 2 runs: instance {a}, {b}\n"));
    let view = wait_backfill(deployment, id, "its runs stopped", |b| b.runs.iter().all(|r| r.state == "stopped")).await;
    assert_eq!((view.state.as_str(), view.created_runs, view.runs.len()), ("stopped", 2, 2));
    deployment.sluice(&["backfill-stop", &id.to_string()]).await.refused(&format!("sluice: backfill {id} is already stopped\n"));
}

async fn bad_dates_and_usage_exit_2_and_store_nothing(deployment: &Deployment) {
    let files = tempfile::tempdir().unwrap();
    let file = daily(files.path(), "daily", &files.path().join("dates"), "none");
    deployment.sluice(&["apply", "-f", &file]).await.expect(0);

    // Refused by the CLI itself.
    for (args, message) in [
        (&["backfill", "bf/daily", "--from", "2026-02-30", "--to", "2026-03-03"][..], "expected a date as YYYY-MM-DD, e.g. 2026-03-01, got `2026-02-30`"),
        (&["backfill", "bf/daily", "--date", "03/01/2026"], "got `03/01/2026`"),
        (&["backfill", "bf/daily", "--from", "2026-03-01", "--to", "yesterday"], "got `yesterday`"),
        (&["backfill", "bf/daily", "--from", "2026-03-01"], "--to <DATE>"),
        (&["backfill", "bf/daily"], "<--from <DATE>|--date <DATE>>"),
        (&["backfill", "bf/daily", "--from", "2026-03-01", "--to", "2026-03-02", "--date", "2026-03-05"], "cannot be used with"),
        (&["backfill", "bf/daily", "--date", "2026-03-01", "--parallel", "1"], "--parallel"),
        (&["backfill", "bf/daily", "--date", "2026-03-01", "--parallel", "101"], "--parallel"),
        (&["backfill", "bf/daily", "--date", "2026-03-01", "--dry-run", "--wait"], "cannot be used with"),
        (&["backfill", "daily", "--date", "2026-03-01"], "expected PROJECT/WORKFLOW"),
        (&["backfill-status", "seven"], "invalid value 'seven'"),
    ] {
        deployment.sluice(args).await.refused(message);
    }
    // Refused by the server, with its reason.
    let cases: [(&[&str], &str); 4] = [
        (&["backfill", "bf/daily", "--from", "2026-03-10", "--to", "2026-03-01"], "sluice: end: 2026-03-01 is before `start` 2026-03-10\n"),
        (&["backfill", "bf/daily", "--from", "2016-03-01", "--to", "2026-03-10", "--dry-run"], "end: 2016-03-01 to 2026-03-10 is 3662 days; at most 3660"),
        (&["backfill", "bf/daily", "--date", "2026-03-01", "--date", "2026-03-01"], "dates[1]: 2026-03-01 is given twice"),
        (&["backfill", "bf/nothing", "--date", "2026-03-01", "--wait"], "sluice: workflow `nothing` not found in project `bf`\n"),
    ];
    for (args, message) in cases {
        deployment.sluice(args).await.refused(message);
    }
    deployment.sluice(&["backfill-status", "987654"]).await.refused("sluice: backfill 987654 not found\n");
    deployment.sluice(&["backfill-stop", "987654"]).await.refused("sluice: backfill 987654 not found\n");
    assert!(instances(deployment, "daily").await.items.is_empty(), "[{}] a refused backfill started runs", deployment.name());
    assert_eq!(deployment.get_status("/backfills/1").await, 404, "[{}] a refused backfill was stored", deployment.name());
}

#[tokio::test]
async fn the_backfill_verbs_exit_2_naming_an_unreachable_server() {
    let unreachable = unreachable_addr();
    let url = format!("http://{}", unreachable.addr());
    for args in [
        &["backfill", "p/w", "--from", "2026-03-01", "--to", "2026-03-02"][..],
        &["backfill", "p/w", "--date", "2026-03-01", "--dry-run"],
        &["backfill", "p/w", "--date", "2026-03-01", "--wait"],
        &["backfill-status", "1"],
        &["backfill-stop", "1"],
    ] {
        sluice_at(&url, None, args).await.refused(&format!("sluice: cannot reach the Sluice server at {url}: "));
    }
}
