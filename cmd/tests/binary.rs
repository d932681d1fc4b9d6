//! The `sluice` binary as users run it: real processes, real SQLite,
//! PostgreSQL and ZooKeeper.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sluice_registry::{paths, MembershipEvent, Registry, ZkRegistry};

fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    // Only what a test sets reaches the binary's configuration.
    for (key, _) in std::env::vars() {
        if key.starts_with("SLUICE_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// A child's stderr, read line by line as it is written (roles bind port 0
/// and log where they listen; the test reads the address from here).
struct Stderr(Arc<Mutex<String>>);

impl Stderr {
    fn of(child: &mut Child) -> Stderr {
        let mut pipe = std::io::BufReader::new(child.stderr.take().expect("stderr piped"));
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while matches!(pipe.read_line(&mut line), Ok(n) if n > 0) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Stderr(text)
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// The address in the child's `message` line (`key=<address>`).
    fn wait_for_addr(&self, child: &mut Child, message: &str, key: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = sluice_testkit::net::addr_in_log(&self.text(), message, key) {
                return addr;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("sluice exited with {status} before logging `{message}`:\n{}", self.text());
            }
            assert!(Instant::now() < deadline, "no `{message}` logged within 30 s:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// GET over a plain socket; `None` while nothing listens.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Waits (bounded) until the server at `addr` answers `path`.
fn wait_for_http(child: &mut Child, addr: SocketAddr, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(response) = http_get(addr, path) {
            return response;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("sluice exited with {status} before serving {path}");
        }
        assert!(Instant::now() < deadline, "no answer on {addr}{path} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(mut child: Child) -> ExitStatus {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sluice did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait().unwrap()
}

#[test]
fn standalone_serves_health_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = sluice()
        .arg("standalone")
        .env("SLUICE_DATABASE__URL", format!("sqlite://{}/sluice.db", dir.path().display()))
        .env("SLUICE_API__LISTEN", "127.0.0.1:0")
        .env("SLUICE_MASTER__LISTEN", "127.0.0.1:0")
        .env("SLUICE_WORKER__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Stderr::of(&mut child);
    let api = stderr.wait_for_addr(&mut child, "api listening", "addr");
    let response = wait_for_http(&mut child, api, "/api/v1/health");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(dir.path().join("sluice.db").exists(), "the SQLite database was not created");
    let status = terminate(child);
    let log = stderr.text();
    assert!(status.success(), "exit {status:?}\n{log}");
    for line in ["master registered", "worker started", "api listening", "shutting down"] {
        assert!(log.contains(line), "missing `{line}` in the log:\n{log}");
    }
}

#[test]
fn unknown_config_keys_exit_2_naming_the_key() {
    let output = sluice().arg("standalone").env("SLUICE_WORKER__SLOTZ", "4").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("worker.slotz") && err.contains("SLUICE_WORKER__SLOTZ"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, "[master]\nlisten = \"127.0.0.1:0\"\ncomand_batch = 5\n").unwrap();
    let output = sluice().args(["master", "--config"]).arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("master.comand_batch") && err.contains("sluice.toml"), "{err}");
}

#[test]
fn the_alert_server_says_it_is_not_available() {
    let output = sluice().arg("alert").output().unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("alert server is not available"), "{err}");
}

async fn next(watch: &mut sluice_registry::MembershipWatch) -> Option<MembershipEvent> {
    tokio::time::timeout(Duration::from_secs(30), watch.next()).await.expect("membership event within 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_roles_register_in_zookeeper_and_leave_on_sigterm() {
    let zk = sluice_testkit::zookeeper::zookeeper_address();
    let db = tokio::task::spawn_blocking(sluice_testkit::postgres::TempDatabase::create).await.unwrap();
    let cluster = format!("bin{}", std::process::id());
    let observer = ZkRegistry::connect(&zk, &format!("/sluice/{cluster}"), Duration::from_secs(5)).await.unwrap();
    let mut masters = observer.watch_members(&paths::masters_dir()).await.unwrap();
    let mut workers = observer.watch_members(&paths::workers_dir("etl")).await.unwrap();
    assert!(masters.members().is_empty() && workers.members().is_empty());

    let spawn = |role: &str, envs: &[(&str, String)]| {
        let mut cmd = sluice();
        cmd.arg(role)
            .env("SLUICE_CLUSTER__NAME", &cluster)
            .env("SLUICE_REGISTRY__KIND", "zookeeper")
            .env("SLUICE_REGISTRY__ZOOKEEPER", &zk)
            .env("SLUICE_REGISTRY__SESSION_TIMEOUT", "5s")
            .env("SLUICE_DATABASE__URL", db.url())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    };
    let mut master = spawn("master", &[("SLUICE_MASTER__LISTEN", "127.0.0.1:0".into())]);
    let mut worker = spawn("worker", &[
        ("SLUICE_WORKER__LISTEN", "127.0.0.1:0".into()),
        ("SLUICE_WORKER__GROUPS", "etl".into()),
        ("SLUICE_WORKER__SLOTS", "3".into()),
    ]);
    let (master_log, worker_log) = (Stderr::of(&mut master), Stderr::of(&mut worker));
    // Each binds port 0 and registers under the address it got.
    let master_addr = master_log.wait_for_addr(&mut master, "master registered", "addr");
    let worker_addr = worker_log.wait_for_addr(&mut worker, "worker started", "addr");

    match next(&mut masters).await {
        Some(MembershipEvent::Joined(m)) => assert_eq!(m.name, master_addr.to_string()),
        other => panic!("expected the master to join, got {other:?}"),
    }
    match next(&mut workers).await {
        Some(MembershipEvent::Joined(m)) => {
            assert_eq!(m.name, worker_addr.to_string());
            let beat: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
            assert_eq!(beat["slots"], 3);
            assert_eq!(beat["groups"], serde_json::json!(["etl"]));
        }
        other => panic!("expected the worker to join, got {other:?}"),
    }

    // SIGTERM: each leaves the registry at once, not after its session times out.
    let status = tokio::task::spawn_blocking(move || terminate(master)).await.unwrap();
    assert!(status.success(), "{}", master_log.text());
    assert_eq!(next(&mut masters).await, Some(MembershipEvent::Left(master_addr.to_string())));
    let status = tokio::task::spawn_blocking(move || terminate(worker)).await.unwrap();
    assert!(status.success(), "{}", worker_log.text());
    assert_eq!(next(&mut workers).await, Some(MembershipEvent::Left(worker_addr.to_string())));
    observer.close().await;
}
