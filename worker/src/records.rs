//! Recorded attempts: a file per running attempt under the worker's
//! working directory, so that a restarted worker can kill whatever a dead
//! predecessor left running before it takes any work.
//!
//! The supervisor (see `supervisor`) already kills an attempt's tree when
//! its worker dies; the record is the second line of defence, for what the
//! supervisor could not catch: a supervisor killed itself (the OOM killer)
//! while a process of the task ignored its parent's death, or processes
//! left by a worker of an earlier release.
//!
//! A record is `<task instance>-<attempt>` holding one line:
//! `<worker pid> <worker start> <group> <group leader start>`, start times
//! being `/proc/<pid>/stat`'s (clock ticks since boot), so that a reused
//! pid is never mistaken for the recorded process. A record is only acted
//! on when the worker that wrote it is gone: several workers may share a
//! working directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::running::TaskAttempt;

/// The records' directory inside the worker's working directory.
const DIR: &str = ".attempts";
/// How long survivors get to disappear once SIGKILLed.
const GONE_WITHIN: Duration = Duration::from_secs(5);

/// A process named by its pid and when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Process {
    pub pid: i32,
    pub start: u64,
}

impl Process {
    /// This process.
    pub(crate) fn current() -> Option<Process> {
        let pid = i32::try_from(std::process::id()).ok()?;
        Some(Process { pid, start: start_time(pid)? })
    }

    fn of(pid: i32) -> Option<Process> {
        Some(Process { pid, start: start_time(pid)? })
    }

    /// Whether this very process still runs (and is not a zombie).
    fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|stat| stat.start == self.start && !stat.dead)
    }
}

/// The attempt records of one worker.
#[derive(Clone)]
pub(crate) struct Records {
    dir: PathBuf,
    owner: Option<Process>,
}

impl Records {
    /// Records under `work_dir`, written in the name of `owner` (this
    /// process; `None` if `/proc` cannot tell, and then nothing is recorded).
    pub(crate) fn open(work_dir: &Path, owner: Option<Process>) -> io::Result<Records> {
        let dir = work_dir.join(DIR);
        fs::create_dir_all(&dir)?;
        Ok(Records { dir, owner })
    }

    /// Records that `attempt` runs in the process group led by `leader`;
    /// the record goes when the returned guard is dropped.
    pub(crate) fn record(&self, attempt: TaskAttempt, leader: u32) -> Option<Record> {
        let owner = self.owner?;
        let leader = Process::of(i32::try_from(leader).ok()?)?;
        let path = self.dir.join(format!("{}-{}", attempt.task_instance_id, attempt.attempt));
        let line = format!("{} {} {} {}\n", owner.pid, owner.start, leader.pid, leader.start);
        match fs::write(&path, line) {
            Ok(()) => Some(Record { path }),
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot record a running attempt; a crash of this worker might leave it running");
                None
            }
        }
    }

    /// Kills what attempts recorded by workers that are gone left running,
    /// and removes their records. Returns how many groups were killed.
    pub(crate) fn kill_survivors(&self) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else { return 0 };
        let mut killed = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(text) = fs::read_to_string(&path) else { continue };
            let Some((owner, leader)) = parse(&text) else {
                warn!(path = %path.display(), "unreadable attempt record; removing it");
                let _ = fs::remove_file(&path);
                continue;
            };
            if owner.alive() {
                // Another live worker's attempt (a shared directory).
                continue;
            }
            if let Some(group) = survivor_group(leader) {
                let name = entry.file_name().to_string_lossy().into_owned();
                warn!(attempt = %name, group = group.as_raw(), "killing what a dead worker's attempt left running");
                let _ = killpg(group, Signal::SIGKILL);
                if leader.alive() {
                    let _ = kill(Pid::from_raw(leader.pid), Signal::SIGKILL);
                }
                killed.push(group);
            }
            let _ = fs::remove_file(&path);
        }
        let deadline = Instant::now() + GONE_WITHIN;
        while killed.iter().any(|group| group_alive(group.as_raw())) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !killed.is_empty() {
            info!(groups = killed.len(), "survivors of a dead worker killed");
        }
        killed.len()
    }
}

/// The group to kill for a recorded leader, if anything of it is left.
/// A pid is not given to a new process while a group of that id exists, so
/// live members of group `leader.pid` are the attempt's if the leader is
/// the recorded one or has no successor under its pid.
fn survivor_group(leader: Process) -> Option<Pid> {
    let group = Pid::from_raw(leader.pid);
    if leader.alive() {
        return Some(group);
    }
    let reused = stat(leader.pid).is_some_and(|stat| stat.start != leader.start);
    (!reused && group_alive(leader.pid)).then_some(group)
}

fn parse(text: &str) -> Option<(Process, Process)> {
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    let mut next = || fields.next()?.ok();
    let owner = Process { pid: i32::try_from(next()?).ok()?, start: next()? };
    let leader = Process { pid: i32::try_from(next()?).ok()?, start: next()? };
    Some((owner, leader))
}

/// Removes its attempt's record when dropped.
pub(crate) struct Record {
    path: PathBuf,
}

impl Drop for Record {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

struct Stat {
    dead: bool,
    pgrp: i32,
    start: u64,
}

fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|stat| stat.start)
}

fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `pid (comm) state ppid pgrp … starttime(22nd) …`; the command name may
/// contain spaces and parentheses, hence the last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let (_, rest) = line.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        dead: matches!(*fields.first()?, "Z" | "X" | "x"),
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Whether a live (not zombie) process is in `group`.
fn group_alive(group: i32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else { return killpg(Pid::from_raw(group), None).is_ok() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .any(|stat| stat.pgrp == group && !stat.dead)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use sluice_domain::TaskInstanceId;

    use super::*;

    fn attempt(id: i64) -> TaskAttempt {
        TaskAttempt { task_instance_id: TaskInstanceId(id), attempt: 1 }
    }

    /// A worker that is gone: this process's pid with another start time.
    fn dead_worker() -> Process {
        Process { pid: i32::try_from(std::process::id()).unwrap(), start: 0 }
    }

    #[test]
    fn stat_lines_are_read() {
        let line = "42 (a) b (c)) S 1 40 40 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!((stat.dead, stat.pgrp, stat.start), (false, 40, 123456));
        assert!(parse_stat("garbage").is_none());
        assert!(Process::current().unwrap().alive());
    }

    #[test]
    fn survivors_of_a_dead_worker_are_killed_and_others_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        // What a SIGKILLed worker leaves: a task group and its record.
        let mut survivor = Command::new("sh").args(["-c", "sleep 30 & sleep 30"]).process_group(0).spawn().unwrap();
        let dead = Records::open(dir.path(), Some(dead_worker())).unwrap();
        std::mem::forget(dead.record(attempt(1), survivor.id()).unwrap());
        // A live worker's attempt in the same directory.
        let mut running = Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let live = Records::open(dir.path(), Process::current()).unwrap();
        let _record = live.record(attempt(2), running.id()).unwrap();
        // A record whose group leader's pid now belongs to another process.
        let mut reused = Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let line = format!("{} 0 {} 1\n", std::process::id(), reused.id());
        fs::write(dir.path().join(DIR).join("3-1"), line).unwrap();

        let restarted = Records::open(dir.path(), Process::current()).unwrap();
        let group = survivor.id() as i32;
        assert!(group_alive(group));
        assert_eq!(restarted.kill_survivors(), 1);
        assert!(!group_alive(group), "the survivor's whole group is gone");
        assert!(survivor.try_wait().unwrap().is_some());
        assert!(running.try_wait().unwrap().is_none(), "a live worker's attempt is left alone");
        assert!(reused.try_wait().unwrap().is_none(), "a reused pid is left alone");
        let left: Vec<String> = fs::read_dir(dir.path().join(DIR)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left, ["2-1"], "the records acted on are removed");
        let _ = running.kill();
        let _ = reused.kill();
        let _ = (running.wait(), reused.wait());
    }
}
