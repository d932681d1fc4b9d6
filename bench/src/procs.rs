//! The real `sluice` binary's roles as OS processes, so that each role's
//! CPU, RSS and start-up time can be read from `/proc`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The `sluice` binary the bench drives: `$SLUICE_BIN`, else the one next
/// to this executable (both are built into the same `target/<profile>`).
pub fn sluice_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("SLUICE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("sluice");
    if !path.exists() {
        bail!("no sluice binary at {}; build it (cargo build --release -p sluice) or set SLUICE_BIN", path.display());
    }
    Ok(path)
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for a bench
/// that owns the machine's ephemeral ports for a while).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind a free port")
}

/// One running role process. Dropping it terminates it (SIGTERM, then
/// SIGKILL after 10 s).
pub struct RoleProcess {
    pub name: String,
    child: Child,
    /// Spawn to the role's `started` log line.
    pub ready_after: Duration,
    pub log: PathBuf,
}

impl RoleProcess {
    /// Runs `sluice <args>` with `env` (on top of a cleared `SLUICE_*`
    /// environment), logging to `<log_dir>/<name>.log`, and waits until the
    /// runtime logs `started` for `ready_role` (the last role it starts).
    pub fn spawn(name: &str, args: &[&str], env: &[(String, String)], ready_role: &str, log_dir: &Path) -> anyhow::Result<RoleProcess> {
        let mut command = Command::new(sluice_binary()?);
        command.args(args);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLUICE_")) {
            command.env_remove(key);
        }
        command.env_remove("RUST_LOG");
        // The shipped level unless `SLUICE_BENCH_LOG` asks for another
        // (e.g. `info,sluice_master=debug` to see where a task's time goes).
        let level = std::env::var("SLUICE_BENCH_LOG").unwrap_or_else(|_| "info".to_owned());
        command.env("SLUICE_LOG__FORMAT", "text").env("SLUICE_LOG__LEVEL", level).env("NO_COLOR", "1");
        command.envs(env.iter().map(|(k, v)| (k, v)));
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = command.spawn().with_context(|| format!("spawning sluice {}", args.join(" ")))?;
        let stderr = child.stderr.take().expect("piped");
        let log = log_dir.join(format!("{name}.log"));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&log)?);
        let (ready_tx, ready_rx) = mpsc::channel();
        let marker = format!("role=\"{ready_role}\"");
        // Drains stderr for the process's whole life so it never blocks on
        // a full pipe; the log file is the record.
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if ready.is_some() && line.contains(" started") && line.contains(&marker) {
                    let _ = ready.take().expect("some").send(Instant::now());
                }
                let _ = writeln!(file, "{line}");
            }
            let _ = file.flush();
        });
        let mut process = RoleProcess { name: name.to_owned(), child, ready_after: Duration::ZERO, log };
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(at) => process.ready_after = at - started,
            Err(_) => {
                let status = process.child.try_wait().ok().flatten();
                bail!("{name} did not start within 60 s (exit status {status:?}); see {}", process.log.display());
            }
        }
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size now and at its peak (VmHWM), in MiB.
    pub fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
                .unwrap_or(f64::NAN)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// CPU time (user + system) used so far.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid()).unwrap_or_default()
    }

    /// SIGTERM, then waits up to 10 s before SIGKILL.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// utime + stime of `pid` from `/proc/<pid>/stat` (USER_HZ is 100 on Linux).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces, in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_of_this_process() {
        let start = cpu_time(std::process::id()).expect("stat readable");
        let until = Instant::now() + Duration::from_millis(100);
        let mut x = 0u64;
        while Instant::now() < until {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(cpu_time(std::process::id()).unwrap() > start);
    }
}
