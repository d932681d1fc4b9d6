//! Issue 12, finding 11, as a new user met it: `kill -9` of `sluice
//! standalone` while tasks run must not leave their processes running, and
//! after the restart no task may run two attempts at the same time.

#[allow(unused_macros, unused_imports)]
mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{arg, instance_id, sluice_at, sluice_command, write, ChildGuard};
use sluice_api::types::WorkflowInstanceView;

/// `sluice standalone` on `dir`'s database and directories, on fixed ports
/// (a restart is the same server again), logging to `dir/sluice.log`.
fn start(dir: &Path, api: &str, master: &str, worker: &str) -> ChildGuard {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("sluice.log")).unwrap();
    let mut command = sluice_command();
    command
        .args(["standalone", "--no-example"])
        .env("RUST_LOG", "info")
        .env("SLUICE_DATABASE__URL", format!("sqlite://{}/sluice.db", dir.display()))
        .env("SLUICE_API__LISTEN", api)
        .env("SLUICE_MASTER__LISTEN", master)
        .env("SLUICE_WORKER__LISTEN", worker)
        // All five tasks at once, whatever the machine's cores.
        .env("SLUICE_WORKER__SLOTS", "5")
        .env("SLUICE_WORKER__WORK_DIR", dir.join("work"))
        .env("SLUICE_WORKER__LOG_DIR", dir.join("logs"))
        .env("SLUICE_LOG_STORE__DIR", dir.join("log-store"))
        .stdout(Stdio::null())
        .stderr(log);
    ChildGuard(command.spawn().unwrap())
}

/// Whether `pid` is a live process (a zombie is dead: in containers init
/// may be slow to reap).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_owned()))
        .is_some_and(|rest| !rest.starts_with(['Z', 'X', 'x']))
}

/// One line a task wrote: `<task instance> <attempt> start|end <ms> <pids…>`
/// (its shell first).
struct Line {
    task: i64,
    attempt: u32,
    end: bool,
    at: i64,
    pids: Vec<i32>,
}

fn lines(path: &Path) -> Vec<Line> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(Line {
                task: f.first()?.parse().ok()?,
                attempt: f.get(1)?.parse().ok()?,
                end: *f.get(2)? == "end",
                at: f.get(3)?.parse().ok()?,
                pids: f[4..].iter().filter_map(|p| p.parse().ok()).collect(),
            })
        })
        .collect()
}

async fn wait_until<T>(what: &str, within: Duration, log: &Path, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}\n{}", std::fs::read_to_string(log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_standalone_leaves_no_task_running_and_no_attempts_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sluice.log");
    let runs = dir.path().join("runs");
    // Port 0 for every role on the first start; the restart takes the
    // addresses they bound, as a restarted server keeps its configuration.
    let mut server = start(dir.path(), "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0");
    let [api, master, worker] = wait_until("the roles' addresses in the log", Duration::from_secs(30), &log, async || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let addr = |message, key| sluice_testkit::net::addr_in_log(&text, message, key).map(|a| a.to_string());
        Some([addr("api listening", "addr")?, addr("master registered", "addr")?, addr("worker started", "addr")?])
    })
    .await;
    let url = format!("http://{api}");

    // Silent tasks (they print nothing, so a lost stdout cannot kill them):
    // each records its start with its shell's and its sleep's pids, and its
    // end.
    let task = |name: &str, secs: u32| {
        format!(
            "  - name: {name}\n    type: shell\n    script: |\n      sleep {secs} &\n      echo \"$SLUICE_TASK_INSTANCE_ID $SLUICE_ATTEMPT start $(date +%s%3N) $$ $!\" >> {runs}\n      wait $!\n      echo \"$SLUICE_TASK_INSTANCE_ID $SLUICE_ATTEMPT end $(date +%s%3N) $$\" >> {runs}\n",
            runs = runs.display()
        )
    };
    let mut yaml = String::from("project: crash\nname: sleeps\ntasks:\n");
    yaml.push_str(&task("long", 15));
    for i in 1..=4 {
        yaml.push_str(&task(&format!("short{i}"), 8));
    }
    let file = write(dir.path(), "sleeps.yaml", &yaml);
    wait_until("a healthy API", Duration::from_secs(30), &log, async || {
        sluice_e2e::http_client().get(format!("{url}/api/v1/health")).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;
    sluice_at(&url, None, &["apply", "-f", arg(&file)]).await.expect(0);
    let ran = sluice_at(&url, None, &["run", "crash/sleeps"]).await;
    ran.expect(0);
    let id = instance_id(&ran);
    let first = wait_until("all five tasks running", Duration::from_secs(60), &log, async || {
        let started: Vec<Line> = lines(&runs).into_iter().filter(|l| !l.end).collect();
        (started.len() == 5).then_some(started)
    })
    .await;
    let pids: Vec<i32> = first.iter().flat_map(|l| l.pids.clone()).collect();
    assert_eq!(pids.len(), 10);
    assert!(pids.iter().all(|&pid| alive(pid)));

    // kill -9.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    wait_until("the tasks' processes to die with the server", Duration::from_secs(5), &log, async || {
        pids.iter().all(|&pid| !alive(pid)).then_some(())
    })
    .await;

    let _server = start(dir.path(), &api, &master, &worker);
    let wi: WorkflowInstanceView = wait_until("the run to succeed after the restart", Duration::from_secs(180), &log, async || {
        let response = sluice_e2e::http_client().get(format!("{url}/api/v1/workflow-instances/{id}")).send().await.ok()?;
        let wi: WorkflowInstanceView = response.json().await.ok()?;
        (wi.state == "success").then_some(wi)
    })
    .await;
    assert_eq!(wi.state, "success");

    // Each task ran to its end, and no two of its attempts overlapped.
    let all = lines(&runs);
    let mut tasks: Vec<i64> = all.iter().map(|l| l.task).collect();
    tasks.sort();
    tasks.dedup();
    assert_eq!(tasks.len(), 5);
    for task in tasks {
        let mut attempts: Vec<(i64, i64)> = all
            .iter()
            .filter(|l| l.task == task && !l.end)
            .map(|start| {
                // No end line: killed with the server, before the restart.
                let shell = start.pids[0];
                let end = all.iter().find(|l| l.task == task && l.end && l.pids.first() == Some(&shell)).map_or(i64::MAX, |l| l.at);
                (start.at, end)
            })
            .collect();
        attempts.sort();
        assert!(attempts.len() >= 2, "task {task} ran again after the crash: {attempts:?}");
        assert!(attempts.iter().any(|(_, end)| *end != i64::MAX), "task {task} never ran to its end: {attempts:?}");
        for pair in attempts.windows(2) {
            let ((_, end), (next_start, _)) = (pair[0], pair[1]);
            let killed_before_restart = end == i64::MAX;
            assert!(killed_before_restart || end <= next_start, "task {task}: attempts overlap: {attempts:?}");
        }
    }
    // The killed attempts' processes never came back to write an end.
    for line in &first {
        assert!(!all.iter().any(|l| l.end && l.pids.first() == line.pids.first()), "the attempt killed with the server ran on to its end: task {} attempt {}", line.task, line.attempt);
    }
}
