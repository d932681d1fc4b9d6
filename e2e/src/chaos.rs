//! The chaos test (issue 6): a real cluster is abused while it runs
//! workflows, and must still finish every one of them correctly.
//!
//! Three masters and three workers run as separate OS processes of the real
//! `sluice` binary, on a private ZooKeeper ([`ZooKeeperServer`]) and a fresh
//! database on the real PostgreSQL. Workflows of 5–10 shell tasks (chains,
//! fans, wide and random DAGs; some tasks fail their first attempt and have
//! retries, some workflows contain a task that fails on purpose) are
//! submitted through the store as the API does. While they run, every few
//! seconds a random master or worker is killed with SIGKILL (at least one of
//! each stays alive) and restarted a few seconds later with the same address;
//! once ZooKeeper is stopped for 10 s; once PostgreSQL is restarted.
//!
//! Every task appends `<task instance id> <attempt> <pid> <node> <epoch ms>`
//! to its own file (named after its task instance) before it sleeps, and
//! the same with ` end` when it ends (a kill's SIGTERM included), so the
//! files say which attempts really started, where, when, and until when.
//! An attempt with no end line was SIGKILLed: with its worker (its end is
//! then that kill), or by the worker's kill after the grace period.
//!
//! It passes when every workflow ended as its definition says (success, or
//! failure for the ones with a failing task), nothing is left non-final, no
//! `(task instance, attempt)` started twice, no two attempts of one task
//! overlapped in time, no process exited or panicked
//! by itself, and every run of a task beyond its first attempt and its
//! retries is explained by the death of a worker: the worker of an earlier
//! attempt was killed after that attempt started. Those re-runs are
//! counted, not failed; unexplained ones fail the run.
//!
//! Two forms:
//! - short, in CI: `e2e/tests/chaos.rs` (`cargo test -p sluice-e2e --test chaos`,
//!   part of `scripts/test.sh`), 40 workflows, about 60 s of chaos;
//! - long, by hand: `cargo run --release -p sluice-e2e --bin chaos -- --minutes 30`
//!   (200 workflows spread over the chaos period; `--help` for the knobs).
//!
//! Both need PostgreSQL on `SLUICE_TEST_PG` (default the machine's
//! 127.0.0.1:5432) and the Debian ZooKeeper package; the PostgreSQL
//! restart is `sluice_testkit::postgres::control("restart")`: the
//! machine's Debian cluster, or a private server through the shell command
//! in `SLUICE_TEST_PG_CTL`.
//!
//! The `sluice` binary is built first (`cargo build -p sluice`, same profile
//! and target directory as the running test), because cargo builds another
//! package's binary for a test only when that package's own tests run;
//! `SLUICE_BIN` points at a ready binary instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_domain::*;
use sluice_registry::{paths, Registry, ZkRegistry};
use sluice_storage::{PgStore, PoolOptions, Store};
use sluice_testkit::postgres::TempDatabase;
use sluice_testkit::zookeeper::ZooKeeperServer;

/// The knobs of one chaos run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub workflows: usize,
    /// How long faults are injected.
    pub chaos: Duration,
    /// Submissions are spread evenly over this much of the chaos period,
    /// in batches of `batch` workflows.
    pub submit_over: Duration,
    pub batch: usize,
    /// Time between two kills, picked at random in this range (ms).
    pub kill_every_ms: (u64, u64),
    /// How long a killed process stays down (ms).
    pub down_for_ms: (u64, u64),
    /// When ZooKeeper is stopped (from the start of the chaos), and for how long.
    pub zookeeper_stop_at: Duration,
    pub zookeeper_down_for: Duration,
    /// When PostgreSQL is restarted.
    pub postgres_restart_at: Duration,
    /// How long each task sleeps after recording its start (ms).
    pub task_sleep_ms: (u64, u64),
    /// How long everything may take to become final once the chaos stops.
    pub settle: Duration,
    pub seed: u64,
    /// Progress lines on stderr while it runs.
    pub verbose: bool,
}

impl ChaosConfig {
    /// The form CI runs: about two minutes on a 2-core machine.
    pub fn short(seed: u64) -> ChaosConfig {
        ChaosConfig {
            workflows: 40,
            chaos: Duration::from_secs(60),
            submit_over: Duration::from_secs(50),
            batch: 1,
            kill_every_ms: (3_000, 6_000),
            down_for_ms: (2_000, 10_000),
            zookeeper_stop_at: Duration::from_secs(18),
            zookeeper_down_for: Duration::from_secs(10),
            postgres_restart_at: Duration::from_secs(40),
            task_sleep_ms: (200, 1_000),
            // A task dispatched by a master killed mid-put waits out the
            // 60 s "taken but never reported running" watchdog.
            settle: Duration::from_secs(180),
            seed,
            verbose: false,
        }
    }

    /// The form run by hand: `workflows` spread over `minutes` of chaos.
    pub fn long(minutes: f64, workflows: usize, seed: u64) -> ChaosConfig {
        let chaos = Duration::from_secs_f64((minutes * 60.0).max(30.0));
        ChaosConfig {
            workflows,
            chaos,
            submit_over: chaos.mul_f64(0.9),
            batch: 2,
            kill_every_ms: (3_000, 8_000),
            down_for_ms: (2_000, 15_000),
            zookeeper_stop_at: chaos.mul_f64(0.3),
            zookeeper_down_for: Duration::from_secs(10),
            postgres_restart_at: chaos.mul_f64(0.6),
            task_sleep_ms: (200, 2_000),
            settle: Duration::from_secs(240),
            seed,
            verbose: true,
        }
    }
}

/// What a run found; [`Report::passed`] says whether it may pass.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub workflows: usize,
    pub expected_failures: usize,
    pub tasks: usize,
    /// Attempts that started (lines in the task files).
    pub attempts_started: usize,
    pub retries_used: u64,
    pub master_kills: usize,
    pub worker_kills: usize,
    pub zookeeper_outage: Option<Duration>,
    pub postgres_restart: Option<Duration>,
    /// Sum of the task instances' `failovers`.
    pub failovers: u64,
    /// Attempts that started beyond a task's first and its retries, each
    /// explained by an earlier attempt whose worker was killed after it
    /// started: runs caused by a worker's death.
    pub reruns_after_worker_death: u64,
    /// Such attempts with no killed worker to explain them (must be 0).
    pub unexplained_reruns: u64,
    /// `(task instance, attempt)` pairs that started more than once.
    pub duplicates: u64,
    /// Pairs of attempts of one task that ran at the same time.
    pub overlaps: u64,
    /// Attempts whose end was recorded by the task itself, and those whose
    /// end is their worker's kill.
    pub ends_recorded: usize,
    pub ends_by_worker_kill: usize,
    pub master_recovery: Vec<Recovery>,
    pub worker_recovery: Vec<Recovery>,
    /// From the end of the chaos until every instance and task was final.
    pub settled_in: Option<Duration>,
    pub elapsed: Duration,
    /// Everything that makes the run fail.
    pub problems: Vec<String>,
    /// Where the processes' logs and task files are (kept when it failed).
    pub dir: PathBuf,
}

/// How long one kill took to be repaired, or that it was not.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub node: String,
    /// Instances (master) or running tasks (worker) it left behind.
    pub affected: usize,
    pub took: Option<Duration>,
    /// Master kills: how many of its instances a survivor adopted (the
    /// rest were taken back by its restarted self).
    pub by_survivors: usize,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

fn percentile(mut values: Vec<Duration>, p: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64) * p).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.1}s", d.as_secs_f64()))
}

fn recovery_line(out: &mut String, what: &str, recoveries: &[Recovery], measured: &str) {
    let counted: Vec<&Recovery> = recoveries.iter().filter(|r| r.affected > 0).collect();
    let took: Vec<Duration> = counted.iter().filter_map(|r| r.took).collect();
    let unrecovered = counted.len() - took.len();
    let _ = writeln!(
        out,
        "  {what}: p50 {} max {} over {} kills that left work behind ({} left none{})",
        secs(percentile(took.clone(), 0.5)),
        secs(took.iter().max().copied()),
        counted.len(),
        recoveries.len() - counted.len(),
        if unrecovered > 0 { format!(", {unrecovered} NEVER recovered") } else { String::new() },
    );
    let _ = writeln!(out, "      ({measured})");
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let _ = writeln!(out, "chaos summary (seed {}, {:.0}s in all)", self.seed, self.elapsed.as_secs_f64());
        let _ = writeln!(out, "  workflows: {} ({} expected to fail)", self.workflows, self.expected_failures);
        let _ = writeln!(out, "  tasks: {} task instances, {} attempts started, {} retries used", self.tasks, self.attempts_started, self.retries_used);
        let _ = writeln!(
            out,
            "  kills: {} (masters {}, workers {}); zookeeper stopped for {}; postgresql restart took {}",
            self.master_kills + self.worker_kills,
            self.master_kills,
            self.worker_kills,
            secs(self.zookeeper_outage),
            secs(self.postgres_restart),
        );
        let _ = writeln!(out, "  failovers (sum of task failovers): {}", self.failovers);
        let _ = writeln!(
            out,
            "  re-runs caused by worker death (attempts started beyond the first and the retries, after a kill of an earlier attempt's worker): {}",
            self.reruns_after_worker_death
        );
        let _ = writeln!(out, "  re-runs without a worker death: {}", self.unexplained_reruns);
        let _ = writeln!(out, "  duplicates (same task instance and attempt started twice): {}", self.duplicates);
        let _ = writeln!(
            out,
            "  overlaps (two attempts of one task running at once): {} (ends recorded by the task: {}, taken as their worker's kill: {})",
            self.overlaps, self.ends_recorded, self.ends_by_worker_kill
        );
        recovery_line(
            &mut out,
            "master kill -> all its unfinished instances adopted",
            &self.master_recovery,
            "from the SIGKILL until every non-final instance it owned had a new owner epoch, from a survivor or its restarted self",
        );
        let by_survivors: usize = self.master_recovery.iter().map(|r| r.by_survivors).sum();
        let affected: usize = self.master_recovery.iter().map(|r| r.affected).sum();
        let _ = writeln!(out, "      {affected} instances: {by_survivors} adopted by a surviving master, {} by the restarted master", affected - by_survivors);
        recovery_line(
            &mut out,
            "worker kill -> its running tasks have a new attempt",
            &self.worker_recovery,
            "from the SIGKILL until every task it was running had a later attempt (or had ended)",
        );
        let _ = writeln!(out, "  settled: everything final {} after the chaos stopped", secs(self.settled_in));
        if self.problems.is_empty() {
            let _ = writeln!(out, "  result: PASS");
        } else {
            let _ = writeln!(out, "  result: FAIL ({} problems; logs in {})", self.problems.len(), self.dir.display());
            for problem in self.problems.iter().take(40) {
                let _ = writeln!(out, "    - {problem}");
            }
            if self.problems.len() > 40 {
                let _ = writeln!(out, "    ... and {} more", self.problems.len() - 40);
            }
        }
        f.write_str(&out)
    }
}

/// Writes to the real stderr: the test harness captures `eprintln!`, and
/// the chaos test's progress and summary should show in CI logs.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What happened when, in `<dir>/timeline.log` (and on stderr when verbose).
struct Timeline {
    file: Mutex<std::fs::File>,
    started: Instant,
    verbose: bool,
}

impl Timeline {
    fn create(path: &Path, started: Instant, verbose: bool) -> Result<Timeline, String> {
        let file = std::fs::File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(Timeline { file: Mutex::new(file), started, verbose })
    }

    fn note(&self, line: &str) {
        let line = format!("[{:>7.1}s {}] {line}", self.started.elapsed().as_secs_f64(), chrono::Utc::now().format("%H:%M:%S%.3f"));
        let _ = writeln!(self.file.lock().expect("timeline lock"), "{line}");
        if self.verbose {
            say(&line);
        }
    }
}

// --- the sluice binary ---------------------------------------------------------

/// The `sluice` binary, built for the profile and target directory this
/// executable was built for (or `SLUICE_BIN`).
pub fn sluice_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("SLUICE_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the running executable: {e}"))?;
    // target/<profile>/deps/<test> for tests, target/<profile>/<bin> for binaries.
    let mut dir = exe.parent().ok_or("executable has no directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().ok_or("deps has no parent")?;
    }
    let profile_dir = dir.file_name().and_then(|n| n.to_str()).ok_or("no profile directory")?.to_owned();
    let target_dir = dir.parent().ok_or("no target directory")?;
    let profile = if profile_dir == "debug" { "dev".to_owned() } else { profile_dir };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| option_env!("CARGO").unwrap_or("cargo").into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e lives in the workspace");
    let status = Command::new(&cargo)
        .args(["build", "--quiet", "-p", "sluice", "--bin", "sluice", "--profile", &profile])
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir)
        .status()
        .map_err(|e| format!("cannot run cargo ({}): {e}", cargo.to_string_lossy()))?;
    if !status.success() {
        return Err(format!("cargo build -p sluice failed: {status}"));
    }
    let bin = dir.join("sluice");
    if !bin.exists() {
        return Err(format!("{} was not built", bin.display()));
    }
    Ok(bin)
}

// --- processes -------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    Master,
    Worker,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }
}

/// One `sluice master|worker` process slot with a fixed address, so a
/// restarted process comes back with the same identity.
struct Node {
    role: Role,
    name: String,
    addr: String,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
    started_at: Option<Instant>,
}

impl Node {
    fn start(&mut self, bin: &Path) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let mut banner = log.try_clone().map_err(|e| e.to_string())?;
        self.starts += 1;
        let _ = writeln!(banner, "===== chaos: start #{} of {} at {} =====", self.starts, self.name, chrono::Utc::now());
        let mut command = Command::new(bin);
        command.arg(self.role.name());
        // Nothing of the caller's configuration leaks in.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SLUICE_") {
                command.env_remove(name);
            }
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // If the chaos run itself dies, its cluster must not live on.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().map_err(|e| format!("start {}: {e}", self.name))?;
        self.child = Some(child);
        self.started_at = Some(Instant::now());
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// The exit status if the process ended by itself.
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status.to_string())
            }
            _ => None,
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

// --- workflows ---------------------------------------------------------------------

/// One generated workflow and what it must end as.
struct Planned {
    spec: WorkflowSpec,
    expect: WorkflowState,
}

fn plan_workflows(config: &ChaosConfig, rng: &mut fastrand::Rng, out: &Path) -> Vec<Planned> {
    let out = out.display();
    // The start, and the end however the script ends short of SIGKILL (a
    // kill's SIGTERM included): bash runs the trap once `sleep` is gone.
    let record = format!(
        "file={out}/$SLUICE_TASK_INSTANCE_ID\n\
         trap 'echo \"$SLUICE_TASK_INSTANCE_ID $SLUICE_ATTEMPT $$ $CHAOS_NODE $(date +%s%3N) end\" >> $file' EXIT\n\
         trap 'exit 143' TERM\n\
         echo \"$SLUICE_TASK_INSTANCE_ID $SLUICE_ATTEMPT $$ $CHAOS_NODE $(date +%s%3N)\" >> $file"
    );
    (0..config.workflows)
        .map(|i| {
            let n = rng.usize(5..=10);
            let shape = i % 4;
            let failing = (rng.f64() < 0.15).then(|| rng.usize(0..n));
            let tasks = (0..n)
                .map(|t| {
                    let deps: Vec<String> = match shape {
                        // chain
                        0 if t > 0 => vec![format!("t{}", t - 1)],
                        0 => vec![],
                        // fan out from t0, fan in to the last
                        1 if t == 0 => vec![],
                        1 if t == n - 1 => (1..n - 1).map(|d| format!("t{d}")).collect(),
                        1 => vec!["t0".into()],
                        // wide: independent tasks
                        2 => vec![],
                        // random DAG over earlier tasks
                        _ => {
                            let mut deps: Vec<String> = (0..t).filter(|_| rng.f64() < 0.35).map(|d| format!("t{d}")).collect();
                            deps.truncate(3);
                            deps
                        }
                    };
                    let sleep = rng.u64(config.task_sleep_ms.0..=config.task_sleep_ms.1) as f64 / 1000.0;
                    let mut task = TaskSpec::new(format!("t{t}"), "shell");
                    task.deps = deps;
                    task.priority = Priority::from_rank(rng.u8(0..5)).unwrap_or_default();
                    let script = if failing == Some(t) {
                        format!("{record}\nsleep {sleep:.2}\necho failing on purpose\nexit 3\n")
                    } else if rng.f64() < 0.15 {
                        // Fails its first attempt only: the counter counts
                        // attempts that started, whatever became of them.
                        task.retries = 2;
                        task.retry_interval = Duration::from_millis(500);
                        format!(
                            "{record}\ncount={out}/$SLUICE_TASK_INSTANCE_ID.count\nn=$(cat $count 2>/dev/null || echo 0)\necho $((n + 1)) > $count\nsleep {sleep:.2}\nif [ \"$n\" = 0 ]; then echo first attempt fails; exit 1; fi\n"
                        )
                    } else {
                        format!("{record}\nsleep {sleep:.2}\n")
                    };
                    task.body.insert("script".into(), script.into());
                    task
                })
                .collect();
            let spec = WorkflowSpec {
                name: format!("chaos_{i:03}"),
                description: String::new(),
                params: Params::new(),
                failure_strategy: if rng.bool() { FailureStrategy::End } else { FailureStrategy::Continue },
                priority: Priority::from_rank(rng.u8(0..5)).unwrap_or_default(),
                worker_group: WorkerGroup::default(),
                tasks,
            };
            let expect = if failing.is_some() { WorkflowState::Failure } else { WorkflowState::Success };
            Planned { spec, expect }
        })
        .collect()
}

/// Submits a run the way the API does (instance and start command in one
/// transaction).
async fn submit(store: &Arc<dyn Store>, workflow: &WorkflowDefinition) -> Result<WorkflowInstanceId, String> {
    let instance = NewWorkflowInstance::start(workflow);
    let command = NewCommand::Start(StartRun { workflow_version: Some(workflow.version), ..StartRun::of(workflow.id) });
    store.submit_run(&instance, &command).await.map(|(id, _)| id).map_err(|e| e.to_string())
}

/// How long before a task recorded its start a kill of its worker may be
/// recorded and still explain the re-run (see the re-run check in `check`).
const KILL_SLACK_MS: i64 = 500;

// --- the run -------------------------------------------------------------------------

/// Shared between the chaos loop and the recovery probes.
struct Probe {
    store: Arc<dyn Store>,
    timeline: Arc<Timeline>,
    /// Instances not yet seen final.
    open: Mutex<HashSet<WorkflowInstanceId>>,
    master_recovery: Mutex<Vec<Recovery>>,
    worker_recovery: Mutex<Vec<Recovery>>,
    stop: AtomicBool,
}

impl Probe {
    /// What a killed master leaves: its non-final, non-paused instances and their epochs.
    async fn master_snapshot(&self, addr: &str) -> Vec<(WorkflowInstanceId, i64)> {
        loop {
            match self.store.owned_workflow_instances(addr).await {
                Ok(instances) => {
                    return instances.into_iter().filter(|i| i.state != WorkflowState::Paused).map(|i| (i.id, i.owner_epoch)).collect()
                }
                Err(_) if !self.stop.load(Ordering::SeqCst) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(_) => return Vec::new(),
            }
        }
    }

    /// What a killed worker leaves: the attempts it was running.
    async fn worker_snapshot(&self, addr: &str) -> Vec<(TaskInstanceId, u32)> {
        let open: Vec<WorkflowInstanceId> = self.open.lock().expect("open lock").iter().copied().collect();
        let mut running = Vec::new();
        for id in open {
            loop {
                match self.store.task_instances(id).await {
                    Ok(tasks) => {
                        running.extend(
                            tasks.into_iter().filter(|t| t.state == TaskState::Running && t.host.as_deref() == Some(addr)).map(|t| (t.id, t.attempt)),
                        );
                        break;
                    }
                    Err(_) if !self.stop.load(Ordering::SeqCst) => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(_) => break,
                }
            }
        }
        running
    }

    /// Measures how long the work a master left behind waits for an owner.
    async fn watch_master(self: Arc<Self>, node: String, addr: String, killed: Instant) {
        let left = self.master_snapshot(&addr).await;
        let mut pending: HashMap<WorkflowInstanceId, i64> = left.iter().copied().collect();
        let mut by_survivors = 0;
        while !pending.is_empty() && !self.stop.load(Ordering::SeqCst) {
            for (id, epoch) in pending.clone() {
                if let Ok(Some(wi)) = self.store.workflow_instance(id).await {
                    if wi.state.is_final() || wi.owner_epoch > epoch {
                        if wi.owner_epoch > epoch && wi.owner.as_deref() != Some(addr.as_str()) {
                            by_survivors += 1;
                        }
                        pending.remove(&id);
                    }
                }
            }
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let took = pending.is_empty().then(|| killed.elapsed());
        self.timeline.note(&format!("{node}: {} instances left behind, all adopted after {} ({by_survivors} by survivors)", left.len(), secs(took)));
        self.master_recovery.lock().expect("recovery lock").push(Recovery { node, affected: left.len(), took, by_survivors });
    }

    /// Measures how long a dead worker's running tasks wait for a new attempt.
    async fn watch_worker(self: Arc<Self>, node: String, addr: String, killed: Instant) {
        let left = self.worker_snapshot(&addr).await;
        let mut pending: HashMap<TaskInstanceId, u32> = left.iter().copied().collect();
        while !pending.is_empty() && !self.stop.load(Ordering::SeqCst) {
            for (id, attempt) in pending.clone() {
                if let Ok(Some(task)) = self.store.task_instance(id).await {
                    if task.attempt > attempt || task.state.is_final() {
                        pending.remove(&id);
                    }
                }
            }
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let took = pending.is_empty().then(|| killed.elapsed());
        self.timeline.note(&format!("{node}: {} running tasks left behind, all with a new attempt after {}", left.len(), secs(took)));
        self.worker_recovery.lock().expect("recovery lock").push(Recovery { node, affected: left.len(), took, by_survivors: 0 });
    }
}

/// Runs the chaos test with `config`; `Err` only when it could not run at
/// all (no ZooKeeper, no PostgreSQL, no binary).
pub async fn run(config: ChaosConfig) -> Result<Report, String> {
    let started = Instant::now();
    let bin = tokio::task::spawn_blocking(sluice_binary).await.map_err(|e| e.to_string())??;
    let dir = tempfile::Builder::new().prefix("sluice-chaos-").tempdir().map_err(|e| e.to_string())?;
    let out = dir.path().join("tasks");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir.path().join("logs")).map_err(|e| e.to_string())?;
    let mut rng = fastrand::Rng::with_seed(config.seed);
    let timeline = Arc::new(Timeline::create(&dir.path().join("timeline.log"), started, config.verbose)?);
    let log = |line: String| timeline.note(&line);

    let zookeeper = tokio::task::spawn_blocking(ZooKeeperServer::start_new)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot start a private zookeeper: {e}"))?;
    let zookeeper = Arc::new(Mutex::new(zookeeper));
    let zk_address = zookeeper.lock().expect("zk lock").address();
    let db = tokio::task::spawn_blocking(TempDatabase::create).await.map_err(|e| e.to_string())?;
    // Migrations run here, before any master starts.
    let store: Arc<dyn Store> = Arc::new(PgStore::open(db.url(), PoolOptions::sized(4)).await.map_err(|e| e.to_string())?);
    let project = store.create_project("chaos", "the chaos test", &Params::new()).await.map_err(|e| e.to_string())?.id;
    let planned = plan_workflows(&config, &mut rng, &out);
    let mut definitions = Vec::new();
    for plan in &planned {
        plan.spec.validate().map_err(|e| format!("generated workflow {} is invalid: {e}", plan.spec.name))?;
        let saved = store.save_workflow(project, &plan.spec).await.map_err(|e| e.to_string())?;
        let def = store.workflow_by_id(saved.id, None).await.map_err(|e| e.to_string())?.ok_or("saved workflow vanished")?;
        definitions.push(def);
    }

    // --- the cluster
    let cluster = format!("chaos_{:08x}", rng.u32(..));
    let common = |role: &str| -> Vec<(String, String)> {
        vec![
            ("SLUICE_CLUSTER__NAME".into(), cluster.clone()),
            ("SLUICE_REGISTRY__KIND".into(), "zookeeper".into()),
            ("SLUICE_REGISTRY__ZOOKEEPER".into(), zk_address.clone()),
            ("SLUICE_REGISTRY__SESSION_TIMEOUT".into(), "4s".into()),
            // Every role checks the failover grace against it.
            ("SLUICE_WORKER__KILL_GRACE".into(), "1s".into()),
            ("SLUICE_DATABASE__URL".into(), db.url().to_owned()),
            ("SLUICE_DATABASE__POOL_SIZE".into(), "4".into()),
            ("SLUICE_DATABASE__CONNECT_TIMEOUT".into(), "3s".into()),
            ("SLUICE_LOG__LEVEL".into(), "info".into()),
            ("SLUICE_LOG_STORE__DIR".into(), dir.path().join("log-store").display().to_string()),
            ("CHAOS_NODE".into(), role.to_owned()),
        ]
    };
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3 {
        let addr = format!("127.0.0.1:{}", sluice_testkit::net::stable_port(&mut rng));
        let name = format!("master-{i}");
        let mut env = common(&name);
        env.extend([
            ("SLUICE_MASTER__LISTEN".into(), addr.clone()),
            // At least worker.kill_grace + session_timeout / 3 (see
            // `sluice_config::failover_margin`).
            ("SLUICE_MASTER__FAILOVER_GRACE".into(), "3s".into()),
            ("SLUICE_MASTER__COMMAND_INTERVAL".into(), "100ms".into()),
            ("SLUICE_MASTER__HEARTBEAT_INTERVAL".into(), "1s".into()),
        ]);
        let log = dir.path().join(format!("logs/{name}.log"));
        nodes.push(Node { role: Role::Master, name, addr, env, log, child: None, starts: 0, started_at: None });
    }
    for i in 0..3 {
        let addr = format!("127.0.0.1:{}", sluice_testkit::net::stable_port(&mut rng));
        let name = format!("worker-{i}");
        let mut env = common(&name);
        let home = dir.path().join(&name);
        env.extend([
            ("SLUICE_WORKER__LISTEN".into(), addr.clone()),
            ("SLUICE_WORKER__GROUPS".into(), "default".into()),
            ("SLUICE_WORKER__SLOTS".into(), "4".into()),
            ("SLUICE_WORKER__HEARTBEAT_INTERVAL".into(), "1s".into()),
            ("SLUICE_WORKER__WORK_DIR".into(), home.join("work").display().to_string()),
            ("SLUICE_WORKER__LOG_DIR".into(), home.join("logs").display().to_string()),
        ]);
        let log = dir.path().join(format!("logs/{name}.log"));
        nodes.push(Node { role: Role::Worker, name, addr, env, log, child: None, starts: 0, started_at: None });
    }
    for node in &mut nodes {
        node.start(&bin)?;
    }
    // Everyone registered before the chaos starts.
    let registry = ZkRegistry::connect(&zk_address, &format!("/sluice/{cluster}"), Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let masters = registry.members(&paths::masters_dir()).await.map(|m| m.len()).unwrap_or(0);
        let workers = registry.members(&paths::workers_dir("default")).await.map(|m| m.len()).unwrap_or(0);
        if masters == 3 && workers == 3 {
            break;
        }
        if Instant::now() > deadline {
            let tails: Vec<String> = nodes.iter().map(|n| format!("--- {}:\n{}", n.name, n.log_tail(15))).collect();
            return Err(format!("the cluster did not come up ({masters} masters, {workers} workers)\n{}", tails.join("\n")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    registry.close().await;
    log(format!("cluster up: {}", nodes.iter().map(|n| format!("{}={}", n.name, n.addr)).collect::<Vec<_>>().join(" ")));

    let probe = Arc::new(Probe {
        store: store.clone(),
        timeline: timeline.clone(),
        open: Mutex::new(HashSet::new()),
        master_recovery: Mutex::new(Vec::new()),
        worker_recovery: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let mut report = Report { seed: config.seed, workflows: planned.len(), ..Default::default() };
    report.expected_failures = planned.iter().filter(|p| p.expect == WorkflowState::Failure).count();

    // --- chaos
    let zk_up = Arc::new(AtomicBool::new(true));
    let pg_up = Arc::new(AtomicBool::new(true));
    let zk_outage: Arc<Mutex<Option<Duration>>> = Arc::default();
    let outages: Arc<Outages> = Arc::default();
    let pg_restart: Arc<Mutex<Option<Result<Duration, String>>>> = Arc::default();
    let mut zk_done = false;
    let mut pg_done = false;
    let mut submitted: Vec<(usize, WorkflowInstanceId)> = Vec::new();
    let mut next_submit = 0usize;
    let mut restarts: Vec<(usize, Instant)> = Vec::new();
    let chaos_start = Instant::now();
    let chaos_end = chaos_start + config.chaos;
    let mut next_kill = chaos_start + Duration::from_millis(rng.u64(config.kill_every_ms.0..=config.kill_every_ms.1));
    let mut progress_at = Instant::now();
    let mut background = Vec::new();
    // Node name -> when it was killed (ms since the epoch, like the task files).
    let mut kill_times: HashMap<String, Vec<i64>> = HashMap::new();

    loop {
        let now = Instant::now();
        let since = now - chaos_start;
        // Submissions, evenly spread; retried while the database is away.
        while next_submit < definitions.len() {
            let batch = config.batch.max(1);
            let batches = definitions.len().div_ceil(batch);
            let due = config.submit_over.mul_f64((next_submit / batch) as f64 / batches as f64);
            if since < due {
                break;
            }
            match submit(&store, &definitions[next_submit]).await {
                Ok(id) => {
                    probe.open.lock().expect("open lock").insert(id);
                    submitted.push((next_submit, id));
                    next_submit += 1;
                }
                Err(_) => break,
            }
        }
        // A process that ended by itself is a finding, unless it was
        // starting while ZooKeeper or PostgreSQL was away (refusing to
        // start without them is fine); either way it comes back.
        for (i, node) in nodes.iter_mut().enumerate() {
            if let Some(status) = node.exited() {
                let started = node.started_at.unwrap_or(now);
                let outage = outages.lock().expect("outages lock").iter().any(|(from, to)| *from <= now && to.is_none_or(|to| to >= started));
                if outage && now - started < STARTUP {
                    log(format!("{}: exited ({status}) while starting during an outage; will start again", node.name));
                } else {
                    report.problems.push(format!("{} exited by itself ({status}); log tail:\n{}", node.name, node.log_tail(20)));
                }
                restarts.push((i, now + Duration::from_secs(1)));
            }
        }
        if now >= chaos_end {
            break;
        }
        // ZooKeeper goes away once.
        if !zk_done && since >= config.zookeeper_stop_at {
            zk_done = true;
            let (zookeeper, zk_up, zk_outage, down_for, timeline, outages) =
                (zookeeper.clone(), zk_up.clone(), zk_outage.clone(), config.zookeeper_down_for, timeline.clone(), outages.clone());
            log(format!("zookeeper: stopping for {down_for:?}"));
            background.push(tokio::task::spawn_blocking(move || {
                zk_up.store(false, Ordering::SeqCst);
                let stopped = Instant::now();
                outages.lock().expect("outages lock").push((stopped, None));
                let result = zookeeper.lock().expect("zk lock").stop();
                if let Err(e) = result {
                    return Err(format!("cannot stop zookeeper: {e}"));
                }
                std::thread::sleep(down_for);
                let result = zookeeper.lock().expect("zk lock").start();
                *zk_outage.lock().expect("outage lock") = Some(stopped.elapsed());
                zk_up.store(true, Ordering::SeqCst);
                end_outage(&outages, stopped);
                timeline.note(&format!("zookeeper: back after {:?}", stopped.elapsed()));
                result.map_err(|e| format!("cannot restart zookeeper: {e}"))
            }));
        }
        // PostgreSQL restarts once.
        if !pg_done && since >= config.postgres_restart_at {
            pg_done = true;
            log("postgresql: restarting".into());
            let (pg_up, pg_restart, timeline, outages) = (pg_up.clone(), pg_restart.clone(), timeline.clone(), outages.clone());
            background.push(tokio::task::spawn_blocking(move || {
                pg_up.store(false, Ordering::SeqCst);
                let begun = Instant::now();
                outages.lock().expect("outages lock").push((begun, None));
                let result = sluice_testkit::postgres::control("restart");
                *pg_restart.lock().expect("pg lock") = Some(result.clone().map(|()| begun.elapsed()));
                pg_up.store(true, Ordering::SeqCst);
                end_outage(&outages, begun);
                timeline.note(&format!("postgresql: restarted in {:?}: {result:?}", begun.elapsed()));
                result
            }));
        }
        // Killed processes come back with the same identity, once what
        // they need at start-up is there.
        let dependencies_up = zk_up.load(Ordering::SeqCst) && pg_up.load(Ordering::SeqCst);
        if dependencies_up {
            let (due, later): (Vec<_>, Vec<_>) = restarts.into_iter().partition(|(_, at)| *at <= now);
            restarts = later;
            for (i, _) in due {
                if !nodes[i].is_up() {
                    nodes[i].start(&bin)?;
                    log(format!("{}: restarted", nodes[i].name));
                }
            }
        }
        // Kill someone, keeping one master and one worker alive.
        if now >= next_kill {
            next_kill = now + Duration::from_millis(rng.u64(config.kill_every_ms.0..=config.kill_every_ms.1));
            let role = if rng.bool() { Role::Master } else { Role::Worker };
            let up: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].role == role && nodes[i].is_up()).collect();
            if up.len() >= 2 {
                let i = up[rng.usize(0..up.len())];
                nodes[i].kill();
                let killed = Instant::now();
                kill_times.entry(nodes[i].name.clone()).or_default().push(chrono::Utc::now().timestamp_millis());
                let down_for = Duration::from_millis(rng.u64(config.down_for_ms.0..=config.down_for_ms.1));
                restarts.push((i, killed + down_for));
                log(format!("{}: killed, back in {down_for:?}", nodes[i].name));
                let (name, addr) = (nodes[i].name.clone(), nodes[i].addr.clone());
                match role {
                    Role::Master => {
                        report.master_kills += 1;
                        tokio::spawn(probe.clone().watch_master(name, addr, killed));
                    }
                    Role::Worker => {
                        report.worker_kills += 1;
                        tokio::spawn(probe.clone().watch_worker(name, addr, killed));
                    }
                }
            }
        }
        if config.verbose && progress_at.elapsed() > Duration::from_secs(30) {
            progress_at = Instant::now();
            let open = refresh_open(&probe).await;
            log(format!("progress: {} submitted, {open} not final, {} kills", submitted.len(), report.master_kills + report.worker_kills));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // --- the chaos is over: everyone back, then wait for the end
    log("chaos over: restarting whatever is down".into());
    let chaos_over = Instant::now();
    for handle in background.drain(..) {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(problem)) => report.problems.push(problem),
            Err(e) => report.problems.push(format!("fault injection panicked: {e}")),
        }
    }
    for node in nodes.iter_mut() {
        if !node.is_up() {
            node.start(&bin)?;
        }
    }
    // Whatever was not submitted in time (a long database outage) goes now.
    while next_submit < definitions.len() {
        match submit(&store, &definitions[next_submit]).await {
            Ok(id) => {
                probe.open.lock().expect("open lock").insert(id);
                submitted.push((next_submit, id));
                next_submit += 1;
            }
            Err(e) if chaos_over.elapsed() > Duration::from_secs(30) => {
                report.problems.push(format!("cannot submit workflows after the chaos: {e}"));
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let settle_deadline = Instant::now() + config.settle;
    loop {
        for node in nodes.iter_mut() {
            if let Some(status) = node.exited() {
                report.problems.push(format!("{} exited by itself ({status}); log tail:\n{}", node.name, node.log_tail(20)));
                node.start(&bin)?;
            }
        }
        let open = refresh_open(&probe).await;
        if open == 0 && all_tasks_final(&store, &submitted).await {
            report.settled_in = Some(chaos_over.elapsed());
            break;
        }
        if Instant::now() > settle_deadline {
            break;
        }
        if config.verbose && progress_at.elapsed() > Duration::from_secs(10) {
            progress_at = Instant::now();
            log(format!("settling: {open} instances not final"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    probe.stop.store(true, Ordering::SeqCst);
    // Give the probes a moment to record what they measured.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for node in nodes.iter_mut() {
        node.kill();
    }
    report.zookeeper_outage = *zk_outage.lock().expect("outage lock");
    report.postgres_restart = match pg_restart.lock().expect("pg lock").clone() {
        Some(Ok(took)) => Some(took),
        _ => None,
    };

    // --- verdict
    check(&store, &planned, &submitted, &out, &kill_times, &mut report).await;
    for node in &nodes {
        let text = std::fs::read_to_string(&node.log).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("panicked")) {
            report.problems.push(format!("{} panicked: {line}", node.name));
        }
    }
    report.master_recovery = std::mem::take(&mut *probe.master_recovery.lock().expect("recovery lock"));
    report.worker_recovery = std::mem::take(&mut *probe.worker_recovery.lock().expect("recovery lock"));
    report.elapsed = started.elapsed();
    report.dir = dir.path().to_owned();
    if !report.passed() || std::env::var_os("SLUICE_CHAOS_KEEP").is_some() {
        // Keep the logs and task files to look into.
        let _ = dir.keep();
    }
    drop(store);
    drop(db);
    Ok(report)
}

/// How long after its start a process that exits counts as failing to start.
const STARTUP: Duration = Duration::from_secs(30);

/// When ZooKeeper or PostgreSQL went away, and came back.
type Outages = Mutex<Vec<(Instant, Option<Instant>)>>;

fn end_outage(outages: &Outages, began: Instant) {
    for outage in outages.lock().expect("outages lock").iter_mut() {
        if outage.0 == began {
            outage.1 = Some(Instant::now());
        }
    }
}

/// Drops instances that became final from the open set; returns how many are left.
async fn refresh_open(probe: &Probe) -> usize {
    let open: Vec<WorkflowInstanceId> = probe.open.lock().expect("open lock").iter().copied().collect();
    for id in open {
        if let Ok(Some(wi)) = probe.store.workflow_instance(id).await {
            if wi.state.is_final() {
                probe.open.lock().expect("open lock").remove(&id);
            }
        }
    }
    probe.open.lock().expect("open lock").len()
}

async fn all_tasks_final(store: &Arc<dyn Store>, submitted: &[(usize, WorkflowInstanceId)]) -> bool {
    for (_, id) in submitted {
        match store.task_instances(*id).await {
            Ok(tasks) if tasks.iter().all(|t| t.state.is_final()) => {}
            _ => return false,
        }
    }
    true
}

/// No two attempts of one task may run at the same time. An attempt runs
/// from its start line to its end line; without one it was SIGKILLed, which
/// the chaos only does by killing its worker (the supervisor takes the task
/// down with it): it ended at the first kill of its node after it started.
/// Failing that, nothing bounds it, and it counts as running on.
fn check_overlaps(started: &BTreeMap<(i64, u32), Vec<(String, i64)>>, ended: &BTreeMap<(i64, u32), i64>, kill_times: &HashMap<String, Vec<i64>>, report: &mut Report) {
    let mut by_task: BTreeMap<i64, Vec<(u32, i64, i64, String)>> = BTreeMap::new();
    for ((id, attempt), runs) in started {
        for (node, at) in runs {
            let end = match ended.get(&(*id, *attempt)) {
                Some(end) => {
                    report.ends_recorded += 1;
                    *end
                }
                None => match kill_times.get(node).and_then(|kills| kills.iter().filter(|k| **k + KILL_SLACK_MS >= *at).min()) {
                    Some(kill) => {
                        report.ends_by_worker_kill += 1;
                        // The supervisor's SIGKILL follows the worker's at once.
                        kill + KILL_SLACK_MS
                    }
                    None => i64::MAX,
                },
            };
            by_task.entry(*id).or_default().push((*attempt, *at, end, node.clone()));
        }
    }
    for (id, mut runs) in by_task {
        runs.sort_by_key(|run| run.1);
        for (i, (attempt, start, end, node)) in runs.iter().enumerate() {
            for (later, later_start, _, later_node) in &runs[i + 1..] {
                if later_start < end {
                    report.overlaps += 1;
                    let shown_end = if *end == i64::MAX { "no recorded end and no kill of its worker".to_owned() } else { format!("ended at {end}") };
                    report.problems.push(format!(
                        "task instance {id}: attempt {later} started at {later_start} on {later_node} while attempt {attempt} (started at {start} on {node}, {shown_end}) still ran"
                    ));
                }
            }
        }
    }
}

/// Compares the database and the task files with what each workflow must do.
async fn check(
    store: &Arc<dyn Store>,
    planned: &[Planned],
    submitted: &[(usize, WorkflowInstanceId)],
    out: &Path,
    kill_times: &HashMap<String, Vec<i64>>,
    report: &mut Report,
) {
    if submitted.len() != planned.len() {
        report.problems.push(format!("only {} of {} workflows were submitted", submitted.len(), planned.len()));
    }
    // (task instance, attempt) -> where and when (ms) it started, once per start.
    let mut started: BTreeMap<(i64, u32), Vec<(String, i64)>> = BTreeMap::new();
    // (task instance, attempt) -> when it ended, by its own account.
    let mut ended: BTreeMap<(i64, u32), i64> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(out) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".count") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for line in text.lines() {
                let mut fields = line.split_whitespace();
                let id = fields.next().and_then(|f| f.parse::<i64>().ok());
                let attempt = fields.next().and_then(|f| f.parse::<u32>().ok());
                let node = fields.nth(1).map(str::to_owned);
                let at = fields.next().and_then(|f| f.parse::<i64>().ok());
                let end = fields.next();
                let (Some(id), Some(attempt), Some(node), Some(at)) = (id, attempt, node, at) else {
                    report.problems.push(format!("task file {name}: unreadable line `{line}`"));
                    continue;
                };
                match end {
                    None => started.entry((id, attempt)).or_default().push((node, at)),
                    Some("end") => {
                        ended.insert((id, attempt), at);
                    }
                    Some(_) => report.problems.push(format!("task file {name}: unreadable line `{line}`")),
                }
            }
        }
    }
    report.attempts_started = started.values().map(Vec::len).sum();
    for ((id, attempt), runs) in &started {
        if runs.len() > 1 {
            report.duplicates += runs.len() as u64 - 1;
            report.problems.push(format!("task instance {id} attempt {attempt} started {} times: {runs:?}", runs.len()));
        }
    }
    check_overlaps(&started, &ended, kill_times, report);
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, id) in submitted {
        let plan = &planned[*i];
        let (wi, tasks) = loop {
            match (store.workflow_instance(*id).await, store.task_instances(*id).await) {
                (Ok(Some(wi)), Ok(tasks)) => break (wi, tasks),
                (Ok(None), _) => {
                    report.problems.push(format!("instance {id} of {} vanished", plan.spec.name));
                    return;
                }
                (Err(e), _) | (_, Err(e)) if Instant::now() > deadline => {
                    report.problems.push(format!("cannot read the results: {e}"));
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let name = &plan.spec.name;
        let summary = || tasks.iter().map(|t| format!("{}={}#{}@{}", t.name, t.state, t.attempt, t.host.as_deref().unwrap_or("-"))).collect::<Vec<_>>().join(" ");
        if wi.state != plan.expect {
            report.problems.push(format!("instance {id} ({name}) is {} (owner {:?} epoch {}), expected {}: {}", wi.state, wi.owner, wi.owner_epoch, plan.expect, summary()));
        }
        if plan.expect == WorkflowState::Success && wi.state == WorkflowState::Success && tasks.len() != plan.spec.tasks.len() {
            report.problems.push(format!("instance {id} ({name}) succeeded with {} of {} tasks", tasks.len(), plan.spec.tasks.len()));
        }
        for task in &tasks {
            report.tasks += 1;
            report.failovers += u64::from(task.failovers);
            report.retries_used += u64::from(task.retries);
            if !task.state.is_final() {
                report.problems.push(format!("task {} ({name}/{}) left {} at attempt {} on {:?}", task.id, task.name, task.state, task.attempt, task.host));
            }
            if wi.state == WorkflowState::Success && task.state != TaskState::Success {
                report.problems.push(format!("task {} ({name}/{}) is {} in a successful instance", task.id, task.name, task.state));
            }
            let runs: Vec<(u32, &(String, i64))> =
                started.range((task.id.get(), 0)..=(task.id.get(), u32::MAX)).map(|((_, a), runs)| (*a, &runs[0])).collect();
            let attempts: Vec<u32> = runs.iter().map(|(a, _)| *a).collect();
            if task.state == TaskState::Success && !attempts.contains(&task.attempt) {
                report.problems.push(format!("task {} ({name}/{}) succeeded at attempt {} but that attempt never started", task.id, task.name, task.attempt));
            }
            if let Some(beyond) = attempts.iter().find(|a| **a > task.attempt) {
                report.problems.push(format!("task {} ({name}/{}) ran attempt {beyond}, beyond its last attempt {}", task.id, task.name, task.attempt));
            }
            if task.attempt > 1 + task.retries + task.failovers {
                report.problems.push(format!("task {} ({name}/{}) is at attempt {} with {} retries and {} failovers", task.id, task.name, task.attempt, task.retries, task.failovers));
            }
            // Runs beyond the first and the retries need a dead worker each:
            // an earlier attempt whose worker was killed after it started
            // and before the next attempt started. A kill's time is taken
            // just before the signal goes, so a task may still record its
            // start a moment after it: KILL_SLACK_MS allows for that (a
            // killed worker stays down for seconds, so no attempt it starts
            // later can be mistaken for one it ran).
            let extra = attempts.len().saturating_sub(1 + task.retries as usize);
            let killed = runs
                .windows(2)
                .filter(|pair| {
                    let ((_, (node, at)), (_, (_, next_at))) = (&pair[0], &pair[1]);
                    kill_times.get(node).is_some_and(|kills| kills.iter().any(|k| *k + KILL_SLACK_MS >= *at && k <= next_at))
                })
                .count();
            let explained = extra.min(killed);
            report.reruns_after_worker_death += explained as u64;
            if extra > explained {
                report.unexplained_reruns += (extra - explained) as u64;
                report.problems.push(format!(
                    "task {} ({name}/{}) started {} attempts with {} retries, {} more than worker deaths explain: {runs:?}",
                    task.id,
                    task.name,
                    attempts.len(),
                    task.retries,
                    extra - explained
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(list: &[((i64, u32), &str, i64)]) -> BTreeMap<(i64, u32), Vec<(String, i64)>> {
        let mut started: BTreeMap<(i64, u32), Vec<(String, i64)>> = BTreeMap::new();
        for (key, node, at) in list {
            started.entry(*key).or_default().push((node.to_string(), *at));
        }
        started
    }

    #[test]
    fn attempts_of_one_task_must_not_overlap() {
        let kills: HashMap<String, Vec<i64>> = HashMap::from([("worker-0".to_owned(), vec![5_000])]);
        // Attempt 1 SIGKILLed with its worker at 5 s; attempt 2 after that.
        let started = runs(&[((1, 1), "worker-0", 1_000), ((1, 2), "worker-1", 9_000), ((2, 1), "worker-1", 1_000), ((2, 2), "worker-2", 3_000)]);
        let ended = BTreeMap::from([((1, 2), 10_000), ((2, 1), 2_000), ((2, 2), 4_000)]);
        let mut report = Report::default();
        check_overlaps(&started, &ended, &kills, &mut report);
        assert_eq!(report.overlaps, 0, "{:?}", report.problems);
        assert_eq!((report.ends_recorded, report.ends_by_worker_kill), (3, 1));

        // The old attempt ran on past the new one's start: recorded end, or
        // no end and no kill of its worker.
        let ended = BTreeMap::from([((1, 1), 9_500), ((2, 2), 4_000)]);
        let mut report = Report::default();
        check_overlaps(&started, &ended, &HashMap::new(), &mut report);
        assert_eq!(report.overlaps, 2, "{:?}", report.problems);
        assert!(report.problems[0].contains("attempt 2 started at 9000 on worker-1 while attempt 1"), "{}", report.problems[0]);
        assert!(report.problems[1].contains("no recorded end"), "{}", report.problems[1]);
    }
}
