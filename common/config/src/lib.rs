//! Configuration of every Sluice role (`sluice master|worker|api|alert|standalone`).
//!
//! One [`Config`] type serves all roles so that `standalone`, which runs them all in one
//! process, needs no extra plumbing, and so that one file can configure several roles on
//! the same machine. Each role reads only its own sections plus the shared ones
//! (`cluster`, `database`, `registry`, `log`).
//!
//! Values come from built-in defaults, then an optional TOML file, then `SLUICE_*`
//! environment variables (later wins), and are validated once by [`Config::load`]. A
//! typo must fail start-up loudly rather than silently fall back to a default, so unknown
//! keys are errors that name the key and where it was written; see [`ConfigError`].

mod error;
mod load;
mod validate;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

pub use error::{ConfigError, Origin};
pub use load::ENV_PREFIX;

/// Every role's settings. Fields are public so that tests and the cluster sandbox can
/// start from [`Config::default()`] and adjust; such hand-made configs should still go
/// through [`Config::validate`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub cluster: ClusterConfig,
    pub database: DatabaseConfig,
    pub registry: RegistryConfig,
    pub master: MasterConfig,
    pub worker: WorkerConfig,
    pub api: ApiConfig,
    pub alert: AlertConfig,
    pub log: LogConfig,
    pub log_store: LogStoreConfig,
}

impl Config {
    /// The registry path under which this cluster keeps all its nodes, locks and
    /// queues. Including the cluster name lets several clusters share one ZooKeeper
    /// ensemble without seeing each other.
    pub fn cluster_root(&self) -> String {
        format!("{}/{}", self.registry.root, self.cluster.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Becomes a ZooKeeper path segment, hence the restricted character set.
    pub name: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            name: "default".into(),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://…`, `postgresql://…` or `sqlite://<path>`. The default is SQLite in
    /// the working directory so that a bare `sluice standalone` works with no setup.
    pub url: String,
    pub pool_size: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://sluice.db".into(),
            pool_size: 10,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Hand-written so that logging the config (`?config`) never prints a database password.
impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Which storage backend a database URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseBackend {
    Postgres,
    Sqlite,
}

impl DatabaseConfig {
    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The backend selected by `url`'s scheme. `None` only for a config that skipped
    /// validation: [`Config::load`] rejects every other scheme.
    pub fn backend(&self) -> Option<DatabaseBackend> {
        match self.url.split_once("://")?.0 {
            "postgres" | "postgresql" => Some(DatabaseBackend::Postgres),
            "sqlite" => Some(DatabaseBackend::Sqlite),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    /// In-process registry: only for `standalone`, where every role shares one process.
    Embedded,
    /// The default because every role except `standalone` needs a shared registry.
    #[default]
    Zookeeper,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    pub kind: RegistryKind,
    /// Comma-separated `host:port` list, passed as-is to the ZooKeeper client as its
    /// connect string. Ignored by the embedded registry.
    pub zookeeper: String,
    /// Kept apart from the connect string (rather than a ZooKeeper chroot suffix) so the
    /// embedded registry lays out its paths exactly like ZooKeeper does.
    pub root: String,
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            kind: RegistryKind::default(),
            zookeeper: "127.0.0.1:2181".into(),
            root: "/sluice".into(),
            session_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MasterConfig {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// The `host:port` other processes dial; needed when `listen` is a wildcard or the
    /// master sits behind NAT. A host name is allowed, unlike in `listen`.
    pub advertise: Option<String>,
    /// How many command rows one scan claims: bounds the work one master grabs at once,
    /// so that others get a share.
    pub command_batch: u32,
    /// How often a master looks for new commands when nothing woke it earlier.
    #[serde(with = "humantime_serde")]
    pub command_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long a lost master's work waits before another master takes it over, so that
    /// a short network blip does not start a failover.
    #[serde(with = "humantime_serde")]
    pub failover_grace: Duration,
    /// Finished workflow instances (and their tasks) older than this are deleted; unset
    /// keeps history forever.
    #[serde(with = "humantime_serde")]
    pub history_retention: Option<Duration>,
    /// How often one master deletes expired history.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Rows deleted per transaction, so that a large clean-up never holds locks long.
    pub retention_batch: u32,
}

impl Default for MasterConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 5678)),
            advertise: None,
            command_batch: 100,
            command_interval: Duration::from_millis(100),
            heartbeat_interval: Duration::from_secs(5),
            failover_grace: Duration::from_secs(30),
            history_retention: None,
            retention_interval: Duration::from_secs(3600),
            retention_batch: 500,
        }
    }
}

impl MasterConfig {
    /// The address registered in the registry for workers and API servers to dial.
    /// See [`advertise_addr`] for how it is derived when not set.
    pub fn advertise_addr(&self) -> String {
        advertise_addr(self.advertise.as_deref(), self.listen)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// See [`MasterConfig::advertise`].
    pub advertise: Option<String>,
    /// Accepts a TOML list or, for environment variables, a comma-separated string.
    #[serde(deserialize_with = "group_list")]
    pub groups: Vec<String>,
    /// `None` sizes the worker to the machine; see [`WorkerConfig::effective_slots`].
    pub slots: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    pub work_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Time between SIGTERM and SIGKILL when a task is killed: lets tasks clean up.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// By default a worker cut off from the registry for a third of the session
    /// timeout (or whose session expired) kills its running tasks and starts over as a
    /// new incarnation, so that its masters fail them over to another worker: two
    /// attempts of one task must not run at once. `true` keeps them running through such a blip;
    /// only for workers whose tasks are idempotent, since a failover then runs a
    /// second attempt alongside.
    pub keep_running_when_disconnected: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1234)),
            advertise: None,
            groups: vec!["default".into()],
            slots: None,
            heartbeat_interval: Duration::from_secs(5),
            work_dir: PathBuf::from("/tmp/sluice/work"),
            log_dir: PathBuf::from("/tmp/sluice/logs"),
            kill_grace: Duration::from_secs(5),
            keep_running_when_disconnected: false,
        }
    }
}

impl WorkerConfig {
    /// See [`MasterConfig::advertise_addr`].
    pub fn advertise_addr(&self) -> String {
        advertise_addr(self.advertise.as_deref(), self.listen)
    }

    /// How many tasks may run at once. Twice the cores by default because most ETL
    /// tasks spend their time waiting on a database or a cluster, not on the local CPU.
    pub fn effective_slots(&self) -> u32 {
        self.slots.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            u32::try_from(cores)
                .unwrap_or(u32::MAX / 2)
                .saturating_mul(2)
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 12345)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// How often the `alert` table is scanned for alerts to send.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing_subscriber::EnvFilter` directive such as `info,sluice_master=debug`;
    /// checked at load time so a typo fails start-up instead of silencing logs.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::default(),
        }
    }
}

/// Where finished attempts' task logs are kept, so that they stay readable once
/// their worker is gone. Workers write there, API servers read there when a worker
/// cannot be reached, one master deletes what is older than `retention`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogStoreConfig {
    /// A directory every worker, API server and master of the cluster sees (a shared
    /// mount); on one machine, any directory.
    pub dir: PathBuf,
    /// Task logs older than this are deleted from the store and from workers'
    /// `log_dir`; unset keeps them forever.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
}

impl Default for LogStoreConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/tmp/sluice/log-store"),
            retention: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    /// For log shippers: one JSON object per line.
    Json,
}

/// `advertise` if set, else `listen` with a wildcard IP replaced by loopback. The
/// fallback only suits a single machine: a cluster node must set `advertise`, since a
/// wildcard address cannot be dialled and loopback is only reachable locally. With port 0
/// in `listen` (tests) the role must advertise the port it actually bound instead.
pub fn advertise_addr(advertise: Option<&str>, listen: SocketAddr) -> String {
    if let Some(advertise) = advertise {
        return advertise.to_owned();
    }
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port()).to_string()
}

/// Replaces the password in `scheme://user:password@host/…` so URLs can be logged and
/// quoted in errors.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_owned(),
    }
}

/// Serde's own `SocketAddr` error does not quote the input; ours does, so the message
/// names the bad value.
fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(|_| {
        de::Error::custom(format!(
            "got `{text}`, expected an ip:port socket address such as 0.0.0.0:5678"
        ))
    })
}

/// Environment variables cannot hold a TOML list, so a comma-separated string is
/// accepted too (`SLUICE_WORKER__GROUPS=etl,spark`). Empty items are kept, not dropped,
/// so that validation reports `a,,b` instead of silently accepting it.
fn group_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct GroupList;

    impl<'de> Visitor<'de> for GroupList {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of group names or a comma-separated string")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(text
                .split(',')
                .map(|group| group.trim().to_owned())
                .collect())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut groups = Vec::with_capacity(seq.size_hint().unwrap_or(1));
            while let Some(group) = seq.next_element::<String>()? {
                groups.push(group);
            }
            Ok(groups)
        }
    }

    deserializer.deserialize_any(GroupList)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_replaces_wildcard_by_loopback() {
        assert_eq!(
            advertise_addr(None, "0.0.0.0:5678".parse().unwrap()),
            "127.0.0.1:5678"
        );
        assert_eq!(
            advertise_addr(None, "[::]:5678".parse().unwrap()),
            "[::1]:5678"
        );
        assert_eq!(
            advertise_addr(None, "10.0.0.7:5678".parse().unwrap()),
            "10.0.0.7:5678"
        );
        assert_eq!(
            advertise_addr(Some("m1.example:5678"), "0.0.0.0:5678".parse().unwrap()),
            "m1.example:5678"
        );
    }

    #[test]
    fn effective_slots_defaults_to_twice_the_cores() {
        let cores = std::thread::available_parallelism().unwrap().get() as u32;
        let mut worker = WorkerConfig::default();
        assert_eq!(worker.effective_slots(), cores * 2);
        worker.slots = Some(3);
        assert_eq!(worker.effective_slots(), 3);
    }

    #[test]
    fn urls_are_redacted_in_debug_output() {
        assert_eq!(
            redact_url("postgres://sluice:s3cret@db:5432/sluice"),
            "postgres://sluice:***@db:5432/sluice"
        );
        assert_eq!(
            redact_url("postgres://sluice@db/sluice"),
            "postgres://sluice@db/sluice"
        );
        assert_eq!(redact_url("sqlite://sluice.db"), "sqlite://sluice.db");
        let database = DatabaseConfig {
            url: "postgresql://u:pw@h/d".into(),
            ..DatabaseConfig::default()
        };
        let debug = format!("{database:?}");
        assert!(!debug.contains("pw"), "{debug}");
    }

    #[test]
    fn backend_follows_the_scheme() {
        let with = |url: &str| DatabaseConfig {
            url: url.into(),
            ..DatabaseConfig::default()
        };
        assert_eq!(
            with("postgres://h/d").backend(),
            Some(DatabaseBackend::Postgres)
        );
        assert_eq!(
            with("postgresql://h/d").backend(),
            Some(DatabaseBackend::Postgres)
        );
        assert_eq!(
            with("sqlite://x.db").backend(),
            Some(DatabaseBackend::Sqlite)
        );
        assert_eq!(with("mysql://h/d").backend(), None);
    }
}
