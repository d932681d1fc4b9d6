//! The CLI's schedule and run-command verbs as users run them: the real
//! binary against `sluice standalone` (a child process on a temporary
//! SQLite) and against a 2-master / 2-worker cluster sandbox (ZooKeeper,
//! PostgreSQL). Exit codes: 0 done, 1 a `--wait`ed instance did not
//! succeed, 2 refused or unusable. Tests wait on state with deadlines.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sluice_api::types::{InstancePage, RequestAccepted, SchedulePreview, ScheduleView, WorkflowInstanceView};
use sluice_e2e::Sandbox;

macro_rules! both_deployments {
    ($($test:ident),+ $(,)?) => {
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let deployment = super::Deployment::standalone().await;
                    super::$test(&deployment).await;
                    deployment.shutdown().await;
                }
            )+
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let deployment = super::Deployment::Cluster(Box::new(sluice_e2e::Sandbox::cluster(2, 2).await));
                    super::$test(&deployment).await;
                    deployment.shutdown().await;
                }
            )+
        }
    };
}

both_deployments!(
    schedule_shows_switches_and_previews,
    the_scheduled_example_applies_offline_and_runs,
    rerun_and_recover_wait_and_exit_by_the_outcome,
    force_success_restarts_a_failed_instance,
    pause_then_resume_wait,
);

const MINUTE: Duration = Duration::from_secs(60);

// --- deployments (as in cli.rs) ---------------------------------------------

enum Deployment {
    Binary { child: std::process::Child, url: String, dir: tempfile::TempDir },
    Cluster(Box<Sandbox>),
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl Deployment {
    async fn standalone() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let api = free_addr();
        let log = std::fs::File::create(dir.path().join("sluice.log")).unwrap();
        let mut command = sluice_command();
        command
            .arg("standalone")
            .env("RUST_LOG", "info")
            .env("SLUICE_DATABASE__URL", format!("sqlite://{}/sluice.db", dir.path().display()))
            .env("SLUICE_API__LISTEN", api.to_string())
            .env("SLUICE_MASTER__LISTEN", free_addr().to_string())
            .env("SLUICE_WORKER__LISTEN", free_addr().to_string())
            .env("SLUICE_WORKER__WORK_DIR", dir.path().join("work"))
            .env("SLUICE_WORKER__LOG_DIR", dir.path().join("logs"))
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().unwrap();
        let mut deployment = Deployment::Binary { child, url: format!("http://{api}"), dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        let health = format!("{}/api/v1/health", deployment.url());
        loop {
            if let Ok(response) = sluice_e2e::http_client().get(&health).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            if let Deployment::Binary { child, .. } = &mut deployment {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("sluice standalone exited with {status}:\n{}", deployment.log());
                }
            }
            assert!(Instant::now() < deadline, "no healthy API at {health} within 30 s:\n{}", deployment.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        deployment
    }

    fn name(&self) -> &'static str {
        match self {
            Deployment::Binary { .. } => "standalone",
            Deployment::Cluster(_) => "cluster",
        }
    }

    fn url(&self) -> String {
        match self {
            Deployment::Binary { url, .. } => url.clone(),
            Deployment::Cluster(sandbox) => sandbox.api_url(),
        }
    }

    fn log(&self) -> String {
        match self {
            Deployment::Binary { dir, .. } => std::fs::read_to_string(dir.path().join("sluice.log")).unwrap_or_default(),
            Deployment::Cluster(_) => String::new(),
        }
    }

    async fn shutdown(self) {
        match self {
            Deployment::Binary { mut child, dir, .. } => {
                let pid = child.id().to_string();
                assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
                let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
                let log = std::fs::read_to_string(dir.path().join("sluice.log")).unwrap_or_default();
                assert!(status.success(), "sluice standalone exited with {status}:\n{log}");
            }
            Deployment::Cluster(sandbox) => sandbox.shutdown().await,
        }
    }

    async fn sluice(&self, args: &[&str]) -> Ran {
        sluice_at(&self.url(), None, args).await
    }

    /// `sluice status ID -o json` until `check` holds.
    async fn wait_status(&self, id: i64, what: &str, check: impl Fn(&WorkflowInstanceView) -> bool) -> WorkflowInstanceView {
        let deadline = Instant::now() + MINUTE;
        loop {
            let wi: WorkflowInstanceView = self.sluice(&["status", &id.to_string(), "-o", "json"]).await.expect(0).json();
            if check(&wi) {
                return wi;
            }
            assert!(Instant::now() < deadline, "[{}] {what}: not within a minute; last seen {wi:#?}", self.name());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn sluice_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SLUICE_") {
            command.env_remove(key);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

#[derive(Debug)]
struct Ran {
    args: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    #[track_caller]
    fn expect(&self, code: i32) -> &Ran {
        assert_eq!(self.code, Some(code), "`sluice {}` exited with {:?}\nstdout:\n{}\nstderr:\n{}", self.args, self.code, self.stdout, self.stderr);
        self
    }

    /// Exit 2 with nothing on stdout and `message` on stderr.
    #[track_caller]
    fn refused(&self, message: &str) {
        self.expect(2);
        assert!(self.stdout.is_empty(), "{self:?}");
        assert!(self.stderr.contains(message), "expected `{message}` in the stderr of `sluice {}`:\n{}", self.args, self.stderr);
    }

    #[track_caller]
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("`sluice {}` printed no valid JSON ({e}):\n{}", self.args, self.stdout))
    }

    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

async fn sluice_at(server: &str, dir: Option<&Path>, args: &[&str]) -> Ran {
    let mut command = tokio::process::Command::from(sluice_command());
    command.args(args).env("SLUICE_SERVER", server).stdin(Stdio::null());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = tokio::time::timeout(2 * MINUTE, command.output()).await.expect("sluice ran for over 2 minutes").unwrap();
    Ran {
        args: args.join(" "),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The instance id from `sluice run`'s first line, `instance 7: ...`.
#[track_caller]
fn instance_id(ran: &Ran) -> i64 {
    let first = ran.stdout.lines().next().unwrap_or_default();
    first
        .strip_prefix("instance ")
        .and_then(|rest| rest.split(':').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no instance id in the output of `sluice {}`:\n{}", ran.args, ran.stdout))
}

fn task<'a>(wi: &'a WorkflowInstanceView, name: &str) -> &'a sluice_api::types::TaskInstanceView {
    wi.tasks.as_deref().unwrap_or_default().iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no task `{name}` in {wi:#?}"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

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
    let url = format!("http://{}", free_addr());
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
