//! Real ZooKeeper servers for tests.
//!
//! Most tests share the server `scripts/test.sh` starts and reach it through
//! [`zookeeper_address`], each under a root of its own. Tests that stop and
//! restart ZooKeeper (session loss, chaos) start a private
//! [`ZooKeeperServer`] instead.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable holding the shared test ZooKeeper's address.
pub const ZOOKEEPER_ENV: &str = "SLUICE_TEST_ZK";

/// Where the Debian package installs ZooKeeper's start script.
pub const ZK_SERVER_SCRIPT: &str = "/usr/share/zookeeper/bin/zkServer.sh";

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The shared test ZooKeeper (`host:port`).
///
/// # Panics
/// If `SLUICE_TEST_ZK` is not set: the ZooKeeper tests must fail loudly
/// rather than be skipped and leave the ZooKeeper registry untested.
pub fn zookeeper_address() -> String {
    match std::env::var(ZOOKEEPER_ENV) {
        Ok(address) if !address.trim().is_empty() => address.trim().to_owned(),
        _ => {
            panic!("{ZOOKEEPER_ENV} is not set: run scripts/test.sh, which starts a real ZooKeeper")
        }
    }
}

/// A unique absolute root (`/sluice-test/<name>-<random>`), so that tests
/// running in parallel against one server never see each other's nodes.
pub fn unique_root(name: &str) -> String {
    format!("/sluice-test/{name}-{:016x}", fastrand::u64(..))
}

/// A private ZooKeeper on a free port of 127.0.0.1, with a temporary data
/// directory; killed when dropped.
///
/// [`ZooKeeperServer::stop`] kills it the way a crash would, and
/// [`ZooKeeperServer::start`] brings it back on the same port and data, so
/// sessions that were alive may resume.
pub struct ZooKeeperServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl ZooKeeperServer {
    /// Starts a server and waits until it serves requests.
    pub fn start_new() -> std::io::Result<ZooKeeperServer> {
        let dir = tempfile::Builder::new().prefix("sluice-zk-").tempdir()?;
        fs::create_dir_all(dir.path().join("data"))?;
        fs::create_dir_all(dir.path().join("logs"))?;
        // Tests restart the server on its port, so the port is picked here
        // (not bound to 0 by the server); if another process took it in
        // the meantime the server exits at once and another is picked.
        let mut rng = fastrand::Rng::new();
        let mut server = ZooKeeperServer { dir, port: 0, child: None };
        let mut last = None;
        for _ in 0..5 {
            server.port = crate::net::stable_port(&mut rng);
            fs::write(server.dir.path().join("zoo.cfg"), config(server.dir.path(), server.port))?;
            match server.start() {
                Ok(()) => return Ok(server),
                Err(err) => last = Some(err),
            }
        }
        Err(last.expect("tried at least once"))
    }

    /// `127.0.0.1:<port>`, for a ZooKeeper connect string.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data and log directory, to read ZooKeeper's logs after a failure.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// (Re)starts the server on its port and data directory and waits until
    /// it serves requests; a no-op if it runs.
    pub fn start(&mut self) -> std::io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let logs = self.dir.path().join("logs");
        let stdout = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join("stdout.log"))?;
        let stderr = stdout.try_clone()?;
        // `start-foreground` execs java, so the child is the server itself
        // and killing it kills ZooKeeper.
        let child = Command::new(ZK_SERVER_SCRIPT)
            .arg("start-foreground")
            .arg(self.dir.path().join("zoo.cfg"))
            .env("JMXDISABLE", "true")
            .env("ZOO_LOG_DIR", &logs)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|err| {
                std::io::Error::new(err.kind(), format!("cannot run {ZK_SERVER_SCRIPT}: {err}"))
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // Serving, and by this child: not another server on the port.
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait()?,
                None => None,
            };
            if exited.is_none() && serving(self.port) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Err(std::io::Error::other(format!(
                        "zookeeper exited during start-up ({status}); see {}",
                        logs.join("stdout.log").display()
                    )));
                }
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(std::io::Error::other(format!(
                    "zookeeper did not serve requests on port {} within {START_TIMEOUT:?}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server and waits until its port is closed, so that a
    /// restart cannot race with the dying process.
    pub fn stop(&mut self) -> std::io::Result<()> {
        self.kill();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while port_open(self.port) {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "zookeeper port {} still open {STOP_TIMEOUT:?} after kill",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ZooKeeperServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(dir: &Path, port: u16) -> String {
    let data: PathBuf = dir.join("data");
    format!(
        "tickTime=500\n\
         initLimit=10\n\
         syncLimit=5\n\
         dataDir={data}\n\
         clientPort={port}\n\
         clientPortAddress=127.0.0.1\n\
         admin.enableServer=false\n\
         4lw.commands.whitelist=ruok,srvr,stat,mntr\n\
         maxClientCnxns=0\n\
         minSessionTimeout=1000\n\
         maxSessionTimeout=60000\n",
        data = data.display()
    )
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Whether the server answers requests. `ruok` alone is not enough: a
/// server answers `imok` while it is still loading its database, and
/// `srvr` says "not currently serving requests" until it is done.
pub fn serving(port: u16) -> bool {
    ruok(port)
        && four_letter(port, "srvr").is_some_and(|answer| answer.contains("Zookeeper version"))
}

/// Sends ZooKeeper's `ruok` four-letter command; `true` on `imok`.
pub fn ruok(port: u16) -> bool {
    four_letter(port, "ruok").is_some_and(|answer| answer == "imok")
}

/// Sends a four-letter command (`ruok`, `srvr`, `stat`, `mntr`) and returns
/// the answer, `None` if the server is not answering.
pub fn four_letter(port: u16, command: &str) -> Option<String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(command.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_server_stops_and_starts_again_on_its_port() {
        let mut server = ZooKeeperServer::start_new().expect("start zookeeper");
        let port = server.port();
        assert_eq!(server.address(), format!("127.0.0.1:{port}"));
        assert!(ruok(port));
        let srvr = four_letter(port, "srvr").expect("srvr answer");
        assert!(
            srvr.contains("Zookeeper version"),
            "unexpected srvr answer: {srvr}"
        );

        server.stop().expect("stop zookeeper");
        assert!(!server.is_running());
        assert!(!ruok(port), "zookeeper still answers after stop");

        server.start().expect("restart zookeeper");
        assert_eq!(server.port(), port);
        assert!(ruok(port));
    }

    #[test]
    fn unique_roots_differ() {
        let a = unique_root("t");
        let b = unique_root("t");
        assert_ne!(a, b);
        assert!(a.starts_with("/sluice-test/t-"));
    }
}
