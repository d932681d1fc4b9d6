//! Where things live in the registry, relative to the cluster root
//! (`/sluice/<cluster>` on ZooKeeper). One place builds these paths so that
//! masters, workers and the api-server never disagree on the layout.

use crate::RegistryError;

pub const MASTERS_DIR: &str = "nodes/masters";
pub const WORKERS_DIR: &str = "nodes/workers";
pub const LOCKS_DIR: &str = "locks";
pub const QUEUE_DIR: &str = "queue";
pub const SIGNALS_DIR: &str = "signals";

/// Directory of the masters' ephemeral nodes.
pub fn masters_dir() -> String {
    MASTERS_DIR.to_owned()
}

/// Ephemeral node of the master listening on `addr` (`host:port`).
pub fn master_node(addr: &str) -> String {
    format!("{MASTERS_DIR}/{addr}")
}

/// Directory holding one directory per worker group.
pub fn workers_root() -> String {
    WORKERS_DIR.to_owned()
}

/// Directory of the ephemeral nodes of one worker group's workers.
pub fn workers_dir(group: &str) -> String {
    format!("{WORKERS_DIR}/{group}")
}

/// Ephemeral node of the worker listening on `addr` (`host:port`) in `group`.
pub fn worker_node(group: &str, addr: &str) -> String {
    format!("{WORKERS_DIR}/{group}/{addr}")
}

/// Lock held by the master that claims rows of the `command` table.
pub fn command_scan_lock() -> String {
    format!("{LOCKS_DIR}/command-scan")
}

/// Lock held by the one master that fires cron schedules.
pub fn cron_lock() -> String {
    format!("{LOCKS_DIR}/cron")
}

/// Lock held by the one master deleting expired history.
pub fn retention_lock() -> String {
    format!("{LOCKS_DIR}/retention")
}

/// Lock held by the one master deleting expired task logs from the log store.
pub fn log_retention_lock() -> String {
    format!("{LOCKS_DIR}/log-retention")
}

/// Lock taken by the master that fails over the work of the lost `host`,
/// so that two survivors never fail over the same host at once.
pub fn failover_lock(host: &str) -> String {
    format!("{LOCKS_DIR}/failover/{host}")
}

/// Signal that new rows are in the `command` table: masters scan at once
/// instead of at their next poll.
pub fn commands_signal() -> String {
    format!("{SIGNALS_DIR}/commands")
}

/// Directory of a worker group's ready-task queue.
pub fn queue_dir(group: &str) -> String {
    format!("{QUEUE_DIR}/{group}")
}

/// Node of one queued task.
pub fn queue_node(group: &str, key: &str) -> String {
    format!("{QUEUE_DIR}/{group}/{key}")
}

/// Checks a relative registry path (`a/b/c`).
///
/// Both implementations enforce the same rules so that a path accepted by the
/// embedded registry in `standalone` is also accepted by ZooKeeper.
pub fn validate_path(path: &str) -> Result<(), RegistryError> {
    let invalid = |reason| RegistryError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(invalid("path is empty"));
    }
    if path.starts_with('/') {
        return Err(invalid("path must be relative to the cluster root"));
    }
    for component in path.split('/') {
        validate_component(component).map_err(invalid)?;
    }
    Ok(())
}

/// Checks one path component, such as a worker group or a queue key.
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    if name.contains('/') {
        return Err(RegistryError::InvalidPath {
            path: name.to_owned(),
            reason: "name must not contain `/`",
        });
    }
    validate_component(name).map_err(|reason| RegistryError::InvalidPath {
        path: name.to_owned(),
        reason,
    })
}

fn validate_component(component: &str) -> Result<(), &'static str> {
    match component {
        "" => Err("path has an empty component"),
        "." | ".." => Err("path components `.` and `..` are not allowed"),
        "zookeeper" => Err("`zookeeper` is reserved by ZooKeeper"),
        c if c.chars().any(|ch| ch.is_control()) => Err("path contains a control character"),
        _ => Ok(()),
    }
}

/// Splits `a/b/c` into (`a/b`, `c`); a top-level path has an empty parent.
pub(crate) fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_design() {
        assert_eq!(master_node("10.0.0.1:5678"), "nodes/masters/10.0.0.1:5678");
        assert_eq!(
            worker_node("default", "10.0.0.2:1234"),
            "nodes/workers/default/10.0.0.2:1234"
        );
        assert_eq!(workers_dir("default"), "nodes/workers/default");
        assert_eq!(masters_dir(), "nodes/masters");
        assert_eq!(command_scan_lock(), "locks/command-scan");
        assert_eq!(cron_lock(), "locks/cron");
        assert_eq!(failover_lock("10.0.0.2"), "locks/failover/10.0.0.2");
        assert_eq!(queue_dir("default"), "queue/default");
        assert_eq!(queue_node("default", "k"), "queue/default/k");
        assert_eq!(commands_signal(), "signals/commands");
    }

    #[test]
    fn rejects_paths_zookeeper_would_reject() {
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/",
            "a/./b",
            "a/../b",
            "zookeeper",
            "a\u{0}b",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?} should be rejected");
        }
        for good in [
            "a",
            "nodes/masters/127.0.0.1:5678",
            "queue/default/2_0000000000000000042_1_0000000000000001234",
        ] {
            assert!(validate_path(good).is_ok(), "{good:?} should be accepted");
        }
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("default").is_ok());
    }

    #[test]
    fn splits_parent() {
        assert_eq!(split_parent("a/b/c"), ("a/b", "c"));
        assert_eq!(split_parent("c"), ("", "c"));
    }
}
