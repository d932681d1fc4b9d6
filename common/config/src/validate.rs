//! Checks that types alone cannot express. Run once at start-up so that a role never
//! discovers a bad setting hours later, half-way through a workflow.

use std::time::Duration;

use crate::{redact_url, Config, ConfigError, RegistryKind};

type Check = Result<(), ConfigError>;

impl Config {
    /// Rejects values that deserialize fine but cannot work. [`Config::load`] already
    /// calls this; call it yourself on a config built by hand.
    pub fn validate(&self) -> Check {
        name("cluster.name", &self.cluster.name)?;

        database_url(&self.database.url)?;
        at_least_one("database.pool_size", self.database.pool_size)?;
        positive("database.connect_timeout", self.database.connect_timeout)?;

        if self.registry.kind == RegistryKind::Zookeeper {
            zookeeper_hosts(&self.registry.zookeeper)?;
        }
        registry_root(&self.registry.root)?;
        positive("registry.session_timeout", self.registry.session_timeout)?;

        if let Some(advertise) = &self.master.advertise {
            host_port("master.advertise", advertise)?;
        }
        at_least_one("master.command_batch", self.master.command_batch)?;
        positive("master.command_interval", self.master.command_interval)?;
        positive("master.retention_interval", self.master.retention_interval)?;
        at_least_one("master.retention_batch", self.master.retention_batch)?;
        positive("master.heartbeat_interval", self.master.heartbeat_interval)?;

        if let Some(advertise) = &self.worker.advertise {
            host_port("worker.advertise", advertise)?;
        }
        if self.worker.groups.is_empty() {
            return Err(ConfigError::invalid(
                "worker.groups",
                "got an empty list; a worker must serve at least one group",
            ));
        }
        for group in &self.worker.groups {
            name("worker.groups", group)?;
        }
        if let Some(slots) = self.worker.slots {
            at_least_one("worker.slots", slots)?;
        }
        positive("worker.heartbeat_interval", self.worker.heartbeat_interval)?;
        non_empty_path("worker.work_dir", &self.worker.work_dir)?;
        non_empty_path("worker.log_dir", &self.worker.log_dir)?;
        non_empty_path("log_store.dir", &self.log_store.dir)?;
        if let Some(retention) = self.log_store.retention {
            positive("log_store.retention", retention)?;
        }

        positive("alert.poll_interval", self.alert.poll_interval)?;
        failover_outlasts_worker_kills(self)?;

        log_level(&self.log.level)
    }
}

/// A worker cut off from the registry kills its tasks a third of the session timeout
/// after it noticed (see `sluice-worker`'s `session` module). In the worst case it
/// notices two thirds of the timeout after its last contact, so its kill starts when
/// the servers expire the session, which is when masters start counting
/// `failover_grace`: the grace must cover the kill (`kill_grace`), plus a third of the
/// session timeout for the ensemble's clock ticks and the kernel to end the processes.
/// Otherwise a failover may start a second attempt while the first still runs.
pub fn failover_margin(session_timeout: Duration, kill_grace: Duration) -> Duration {
    kill_grace + session_timeout / 3
}

fn failover_outlasts_worker_kills(config: &Config) -> Check {
    if config.worker.keep_running_when_disconnected {
        return Ok(());
    }
    let needed = failover_margin(config.registry.session_timeout, config.worker.kill_grace);
    if config.master.failover_grace >= needed {
        return Ok(());
    }
    let show = |d: Duration| humantime::format_duration(d).to_string();
    Err(ConfigError::invalid(
        "master.failover_grace",
        format!(
            "got {}, shorter than `worker.kill_grace` ({}) + a third of `registry.session_timeout` ({}) = {}: \
             a master could fail a task over while the worker that lost its registry session is still killing it; \
             raise `master.failover_grace`, lower `worker.kill_grace` or `registry.session_timeout`, \
             or set `worker.keep_running_when_disconnected = true` for workers whose tasks are idempotent",
            show(config.master.failover_grace),
            show(config.worker.kill_grace),
            show(config.registry.session_timeout),
            show(needed),
        ),
    ))
}

/// Cluster and group names end up as ZooKeeper path segments and in queue keys, so
/// they are kept to characters that need no escaping anywhere.
fn name(key: &str, value: &str) -> Check {
    let valid = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        return Ok(());
    }
    let got = if value.is_empty() {
        "an empty name".to_owned()
    } else {
        format!("`{value}`")
    };
    Err(ConfigError::invalid(
        key,
        format!(
            "got {got}; a name must be non-empty and use only letters, digits, `_`, `-` and `.`"
        ),
    ))
}

fn database_url(url: &str) -> Check {
    const ACCEPTED: &str = "postgres://, postgresql:// or sqlite://<path>";
    let shown = redact_url(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(ConfigError::invalid(
            "database.url",
            format!("got `{shown}`, which has no scheme; expected {ACCEPTED}"),
        ));
    };
    match scheme {
        "postgres" | "postgresql" | "sqlite" if rest.is_empty() => Err(ConfigError::invalid(
            "database.url",
            format!("got `{shown}`, which names no database after `{scheme}://`"),
        )),
        "postgres" | "postgresql" | "sqlite" => Ok(()),
        _ => Err(ConfigError::invalid(
            "database.url",
            format!("got `{shown}`: unsupported scheme `{scheme}`; expected {ACCEPTED}"),
        )),
    }
}

fn at_least_one(key: &str, value: u32) -> Check {
    if value >= 1 {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("got `{value}`, must be at least 1"),
        ))
    }
}

/// Only for durations where zero would mean a busy loop or an instant timeout.
fn positive(key: &str, value: Duration) -> Check {
    if value.is_zero() {
        Err(ConfigError::invalid(
            key,
            "got `0s`, must be longer than zero",
        ))
    } else {
        Ok(())
    }
}

/// Checks the shape only: resolving names here would make start-up depend on DNS.
fn host_port(key: &str, value: &str) -> Check {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("got `{value}`, expected host:port with a non-zero port"),
        ))
    }
}

fn zookeeper_hosts(value: &str) -> Check {
    for host in value.split(',') {
        let ok = host_port("registry.zookeeper", host.trim()).is_ok();
        if !ok {
            return Err(ConfigError::invalid(
                "registry.zookeeper",
                format!(
                    "got `{value}`, expected a comma-separated list of host:port \
                     (put any chroot in `registry.root`)"
                ),
            ));
        }
    }
    Ok(())
}

fn registry_root(value: &str) -> Check {
    let ok = value.len() > 1
        && value.starts_with('/')
        && value[1..].split('/').all(|segment| !segment.is_empty());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "registry.root",
            format!(
                "got `{value}`, expected an absolute path with no trailing `/`, such as /sluice"
            ),
        ))
    }
}

fn non_empty_path(key: &str, value: &std::path::Path) -> Check {
    if value.as_os_str().is_empty() {
        Err(ConfigError::invalid(key, "got an empty path"))
    } else {
        Ok(())
    }
}

fn log_level(value: &str) -> Check {
    tracing_subscriber::EnvFilter::builder().parse(value).map(|_| ()).map_err(|err| {
        ConfigError::invalid(
            "log.level",
            format!("got `{value}`, which is not a tracing filter such as `info,sluice_master=debug`: {err}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(check: Check) -> String {
        check.unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn names_allow_only_path_safe_characters() {
        name("worker.groups", "etl-2.spark_x").unwrap();
        assert!(message(name("worker.groups", "a/b")).contains("`a/b`"));
        assert!(message(name("worker.groups", "")).contains("`worker.groups`"));
    }

    #[test]
    fn database_url_schemes() {
        database_url("postgres://sluice@127.0.0.1:5432/sluice").unwrap();
        database_url("postgresql://h/d").unwrap();
        database_url("sqlite:///var/lib/sluice/sluice.db").unwrap();
        let err = message(database_url("mysql://u:pw@h/d"));
        assert!(
            err.contains("`mysql`") && err.contains("sqlite://") && !err.contains("pw"),
            "{err}"
        );
        assert!(message(database_url("sluice.db")).contains("no scheme"));
        assert!(message(database_url("sqlite://")).contains("names no database"));
    }

    #[test]
    fn host_port_shapes() {
        host_port("k", "m1.example:5678").unwrap();
        host_port("k", "[::1]:5678").unwrap();
        for bad in ["m1", ":5678", "m1:0", "m1:port", "m1:70000"] {
            assert!(host_port("k", bad).is_err(), "{bad}");
        }
        zookeeper_hosts("zk1:2181, zk2:2181,zk3:2181").unwrap();
        assert!(zookeeper_hosts("zk1:2181/chroot").is_err());
    }

    #[test]
    fn registry_root_shapes() {
        registry_root("/sluice").unwrap();
        registry_root("/a/b").unwrap();
        for bad in ["", "/", "sluice", "/sluice/", "/a//b"] {
            assert!(registry_root(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn log_level_must_be_a_filter() {
        log_level("info").unwrap();
        log_level("warn,sluice_master=debug").unwrap();
        assert!(message(log_level("sluice=loud")).contains("`sluice=loud`"));
    }

    #[test]
    fn zero_durations_rejected_where_meaningless() {
        let mut config = Config::default();
        config.worker.heartbeat_interval = Duration::ZERO;
        let err = message(config.validate());
        assert!(err.contains("`worker.heartbeat_interval`"), "{err}");
        // A zero grace means "kill at once": legitimate.
        let mut config = Config::default();
        config.worker.kill_grace = Duration::ZERO;
        config.validate().unwrap();
        config.master.failover_grace = Duration::ZERO;
        config.worker.keep_running_when_disconnected = true;
        config.validate().unwrap();
    }

    #[test]
    fn failover_waits_for_a_cut_off_worker_to_kill_its_tasks() {
        let mut config = Config::default();
        config.registry.session_timeout = Duration::from_secs(30);
        config.worker.kill_grace = Duration::from_secs(5);
        config.master.failover_grace = Duration::from_secs(15);
        config.validate().unwrap();
        config.master.failover_grace = Duration::from_secs(14);
        let err = message(config.validate());
        for named in ["`master.failover_grace`", "14s", "`worker.kill_grace` (5s)", "`registry.session_timeout` (30s)", "= 15s", "worker.keep_running_when_disconnected"] {
            assert!(err.contains(named), "{named} not in: {err}");
        }
        // Workers that keep running through a blip do not need the margin.
        config.worker.keep_running_when_disconnected = true;
        config.validate().unwrap();
    }
}
