//! What the CLI tests (`cli.rs`, `cli_commands.rs`, `cli_backfill.rs`)
//! share: the two deployments the real `sluice` binary runs against, and
//! running it. `sluice standalone` is a child process on a temporary SQLite
//! (as the README starts it); the cluster is a 2-master / 2-worker sandbox
//! on ZooKeeper and PostgreSQL. Waits are on state with deadlines, never
//! fixed sleeps.

// Each test crate uses its own part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sluice_api::types::{TaskInstanceView, WorkflowInstanceView};
use sluice_e2e::Sandbox;

pub const MINUTE: Duration = Duration::from_secs(60);

/// Instantiates each listed scenario, an `async fn name(&Deployment)` of
/// the calling test crate's root, against `sluice standalone` and a cluster
/// (test modules `standalone::name` and `cluster::name`).
macro_rules! both_deployments {
    ($($test:ident),+ $(,)?) => {
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let deployment = $crate::common::Deployment::standalone(&[]).await;
                    super::$test(&deployment).await;
                    deployment.shutdown().await;
                }
            )+
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let deployment = $crate::common::Deployment::cluster().await;
                    super::$test(&deployment).await;
                    deployment.shutdown().await;
                }
            )+
        }
    };
}
pub(crate) use both_deployments;

pub enum Deployment {
    /// `sluice standalone` as a child process; its log goes to a file.
    Binary { child: ChildGuard, url: String, dir: tempfile::TempDir },
    Cluster(Box<Sandbox>),
}

/// A child process killed when dropped unless it already ended: a test
/// that panics leaves no `sluice` behind.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Where the `sluice standalone` child writing `log` serves its API, from
/// its `api listening` line (it binds port 0).
fn api_addr(child: &mut ChildGuard, log: &Path) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = sluice_testkit::net::addr_in_log(&text, "api listening", "addr") {
            return addr;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("sluice standalone exited with {status} before listening:\n{text}");
        }
        assert!(Instant::now() < deadline, "sluice standalone logged no `api listening` within 30 s:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An address where nothing serves (connections are refused) and nothing
/// will while the value lives: the port is held, not bound and released.
pub fn unreachable_addr() -> sluice_testkit::net::ReservedAddr {
    sluice_testkit::net::ReservedAddr::new().unwrap()
}

impl Deployment {
    /// `sluice standalone [args]` on a fresh SQLite file and free ports.
    pub async fn standalone(args: &[&str]) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("sluice.log")).unwrap();
        let mut command = sluice_command();
        command
            .arg("standalone")
            .args(args)
            .env("RUST_LOG", "info")
            .env("SLUICE_DATABASE__URL", format!("sqlite://{}/sluice.db", dir.path().display()))
            // Port 0 everywhere: each role binds its own port and logs it.
            .env("SLUICE_API__LISTEN", "127.0.0.1:0")
            .env("SLUICE_MASTER__LISTEN", "127.0.0.1:0")
            .env("SLUICE_WORKER__LISTEN", "127.0.0.1:0")
            .env("SLUICE_WORKER__WORK_DIR", dir.path().join("work"))
            .env("SLUICE_WORKER__LOG_DIR", dir.path().join("logs"))
            .env("SLUICE_LOG_STORE__DIR", dir.path().join("log-store"))
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = ChildGuard(command.spawn().unwrap());
        let api = api_addr(&mut child, &dir.path().join("sluice.log"));
        let mut deployment = Deployment::Binary { child, url: format!("http://{api}"), dir };
        deployment.wait_healthy().await;
        deployment
    }

    pub async fn cluster() -> Deployment {
        Deployment::Cluster(Box::new(Sandbox::cluster(2, 2).await))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Deployment::Binary { .. } => "standalone",
            Deployment::Cluster(_) => "cluster",
        }
    }

    pub fn url(&self) -> String {
        match self {
            Deployment::Binary { url, .. } => url.clone(),
            Deployment::Cluster(sandbox) => sandbox.api_url(),
        }
    }

    pub fn log(&self) -> String {
        match self {
            Deployment::Binary { dir, .. } => std::fs::read_to_string(dir.path().join("sluice.log")).unwrap_or_default(),
            Deployment::Cluster(_) => String::new(),
        }
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/api/v1/health", self.url());
        loop {
            if let Ok(response) = sluice_e2e::http_client().get(&url).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            if let Deployment::Binary { child, .. } = self {
                if let Some(status) = child.0.try_wait().unwrap() {
                    panic!("sluice standalone exited with {status}:\n{}", self.log());
                }
            }
            assert!(Instant::now() < deadline, "no healthy API at {url} within 30 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(self) {
        match self {
            Deployment::Binary { mut child, dir, .. } => {
                let pid = child.0.id().to_string();
                let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
                assert!(status.success());
                let status = tokio::task::spawn_blocking(move || child.0.wait().unwrap()).await.unwrap();
                let log = std::fs::read_to_string(dir.path().join("sluice.log")).unwrap_or_default();
                assert!(status.success(), "sluice standalone exited with {status}:\n{log}");
            }
            Deployment::Cluster(sandbox) => sandbox.shutdown().await,
        }
    }

    /// The HTTP status of `GET /api/v1{path}`: to check what was stored
    /// without going through the CLI under test.
    pub async fn get_status(&self, path: &str) -> u16 {
        sluice_e2e::http_client().get(format!("{}/api/v1{path}", self.url())).send().await.unwrap().status().as_u16()
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let response = sluice_e2e::http_client().get(format!("{}/api/v1{path}", self.url())).send().await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.unwrap()
    }

    /// Runs `sluice args...` against this deployment.
    pub async fn sluice(&self, args: &[&str]) -> Ran {
        sluice_at(&self.url(), None, args).await
    }

    /// Polls `sluice status ID -o json` until `check` holds; panics with
    /// the last state after a minute.
    pub async fn wait_status(&self, id: i64, what: &str, check: impl Fn(&WorkflowInstanceView) -> bool) -> WorkflowInstanceView {
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

// --- running the binary ----------------------------------------------------

pub fn sluice_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    // Only what a test sets reaches the binary.
    for (key, _) in std::env::vars() {
        if key.starts_with("SLUICE_") {
            command.env_remove(key);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

/// What one `sluice` invocation did.
#[derive(Debug)]
pub struct Ran {
    pub args: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Asserts the exit code, showing everything the command printed if not.
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Ran {
        assert_eq!(self.code, Some(code), "`sluice {}` exited with {:?}\nstdout:\n{}\nstderr:\n{}", self.args, self.code, self.stdout, self.stderr);
        self
    }

    /// Exit 2 with nothing on stdout and `message` on stderr.
    #[track_caller]
    pub fn refused(&self, message: &str) {
        self.expect(2);
        assert!(self.stdout.is_empty(), "{self:?}");
        assert!(self.stderr.contains(message), "expected `{message}` in the stderr of `sluice {}`:\n{}", self.args, self.stderr);
    }

    #[track_caller]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("`sluice {}` printed no valid JSON ({e}):\n{}", self.args, self.stdout))
    }

    pub fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

/// Runs the binary with `SLUICE_SERVER=server` in `dir` (when given).
pub async fn sluice_at(server: &str, dir: Option<&Path>, args: &[&str]) -> Ran {
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
pub fn instance_id(ran: &Ran) -> i64 {
    let first = ran.stdout.lines().next().unwrap_or_default();
    first
        .strip_prefix("instance ")
        .and_then(|rest| rest.split(':').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no instance id in the output of `sluice {}`:\n{}", ran.args, ran.stdout))
}

pub fn task<'a>(wi: &'a WorkflowInstanceView, name: &str) -> &'a TaskInstanceView {
    wi.tasks.as_deref().unwrap_or_default().iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no task `{name}` in {wi:#?}"))
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}
