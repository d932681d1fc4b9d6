//! Merging defaults, the TOML file and the environment with figment, and turning
//! figment's errors into [`ConfigError`]s that name the key and its source.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use figment::error::Kind;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use crate::{Config, ConfigError, Origin};

/// Prefix of the environment variables that configure Sluice. Only names with a `__`
/// after it (`SLUICE_WORKER__SLOTS`) are configuration: the CLI and tests own other
/// `SLUICE_*` names, such as `SLUICE_SERVER`.
pub const ENV_PREFIX: &str = "SLUICE_";

/// Separates section from key in variable names. A single `_` cannot, since keys such
/// as `pool_size` contain one.
const ENV_SEPARATOR: &str = "__";

/// figment tells sources apart only by metadata; this name marks ours.
const ENV_METADATA_NAME: &str = "environment variable";

impl Config {
    /// Loads the configuration from defaults, the TOML file at `path` (if any) and the
    /// process environment, then validates it.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env = std::env::vars_os().map(|(name, value)| {
            (
                name.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )
        });
        Self::load_from(path, env)
    }

    /// Like [`Config::load`] with the environment given explicitly, so that tests (which
    /// run in parallel threads of one process) never need to touch the real one.
    pub fn load_from<I, K, V>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut figment = Figment::new();
        if let Some(path) = path {
            // figment reports a missing file as a bare io message without the path; an
            // explicitly given file that is missing must fail, not be skipped.
            std::fs::File::open(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(EnvProvider::from_pairs(env)?);

        // Lossy because environment values are all strings: "4" must read as a number
        // where one is expected. Guessing types up front, as figment's `Env` does, would
        // instead break strings that look like numbers (`SLUICE_CLUSTER__NAME=123`).
        let config: Config = figment.extract_lossy().map_err(from_figment)?;
        config.validate().map_err(|err| locate(err, &figment))?;
        Ok(config)
    }
}

/// The `SLUICE_<SECTION>__<KEY>` variables as a figment provider. figment's own `Env`
/// reads only the process environment, which tests must not modify.
struct EnvProvider {
    dict: Dict,
    /// Dotted key → variable name as given, so errors quote exactly what the operator set.
    names: Arc<BTreeMap<String, String>>,
}

impl EnvProvider {
    fn from_pairs<I, K, V>(env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut dict = Dict::new();
        let mut names = BTreeMap::new();
        for (name, value) in env {
            let name = name.into();
            let Some(rest) = strip_prefix_ignore_case(&name, ENV_PREFIX) else {
                continue;
            };
            if !rest.contains(ENV_SEPARATOR) {
                continue;
            }
            let segments: Vec<String> = rest
                .split(ENV_SEPARATOR)
                .map(|s| s.to_ascii_lowercase())
                .collect();
            let key = segments.join(".");
            if segments.iter().any(String::is_empty) {
                return Err(ConfigError::UnknownKey {
                    key,
                    origin: Some(Origin::Env(name)),
                    known: &[],
                });
            }
            insert(&mut dict, &segments, Value::from(value.into()));
            names.insert(key, name);
        }
        Ok(Self {
            dict,
            names: Arc::new(names),
        })
    }
}

impl Provider for EnvProvider {
    fn metadata(&self) -> Metadata {
        let names = Arc::clone(&self.names);
        Metadata::named(ENV_METADATA_NAME).interpolater(move |_: &Profile, keys: &[&str]| {
            let key = keys.join(".");
            if let Some(name) = names.get(&key) {
                return name.clone();
            }
            // A whole section (an unknown `[workers]`) came from the variables below it.
            let below: Vec<&str> = names
                .range(format!("{key}.")..)
                .take_while(|(k, _)| k.starts_with(&format!("{key}.")))
                .map(|(_, name)| name.as_str())
                .collect();
            if below.is_empty() {
                format!(
                    "{ENV_PREFIX}{}",
                    keys.join(ENV_SEPARATOR).to_ascii_uppercase()
                )
            } else {
                below.join(", ")
            }
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

fn insert(dict: &mut Dict, segments: &[String], value: Value) {
    match segments {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

fn origin_of<K: AsRef<str>>(metadata: &Metadata, path: &[K]) -> Option<Origin> {
    match &metadata.source {
        Some(Source::File(file)) => Some(Origin::File(file.clone())),
        _ if metadata.name == ENV_METADATA_NAME => {
            Some(Origin::Env(metadata.interpolate(&Profile::Default, path)))
        }
        _ => None,
    }
}

/// figment keeps going after the first error only in rare cases; the first one is what
/// the operator needs to fix, so it is the one reported.
fn from_figment(err: figment::Error) -> ConfigError {
    let origin = err
        .metadata
        .as_ref()
        .and_then(|metadata| origin_of(metadata, &err.path));
    if err.path.is_empty() {
        return ConfigError::Parse {
            origin,
            message: err.kind.to_string().trim_end().to_owned(),
        };
    }
    let key = err.path.join(".");
    match err.kind {
        Kind::UnknownField(_, known) => ConfigError::UnknownKey { key, origin, known },
        Kind::UnknownVariant(found, expected) => ConfigError::Invalid {
            key,
            origin,
            message: format!("got `{found}`, expected one of: {}", expected.join(", ")),
        },
        kind => ConfigError::Invalid {
            key,
            origin,
            message: kind.to_string(),
        },
    }
}

/// Validation runs on the merged config, which no longer knows where values came from;
/// figment still does.
fn locate(err: ConfigError, figment: &Figment) -> ConfigError {
    match err {
        ConfigError::Invalid {
            key,
            origin: None,
            message,
        } => {
            let path: Vec<&str> = key.split('.').collect();
            let origin = figment
                .find_metadata(&key)
                .and_then(|metadata| origin_of(metadata, &path));
            ConfigError::Invalid {
                key,
                origin,
                message,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::{DatabaseBackend, LogFormat, RegistryKind};

    const NO_ENV: [(&str, &str); 0] = [];

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn load_err(file: Option<&Path>, env: &[(&str, &str)]) -> ConfigError {
        Config::load_from(file, env.iter().copied()).unwrap_err()
    }

    #[test]
    fn defaults_without_file_or_env() {
        let config = Config::load_from(None, NO_ENV).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.cluster.name, "default");
        assert_eq!(config.database.url, "sqlite://sluice.db");
        assert_eq!(config.database.pool_size, 10);
        assert_eq!(config.database.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.registry.kind, RegistryKind::Zookeeper);
        assert_eq!(config.registry.zookeeper, "127.0.0.1:2181");
        assert_eq!(config.registry.session_timeout, Duration::from_secs(30));
        assert_eq!(config.cluster_root(), "/sluice/default");
        assert_eq!(config.master.listen, "0.0.0.0:5678".parse().unwrap());
        assert_eq!(config.master.advertise_addr(), "127.0.0.1:5678");
        assert_eq!(config.master.command_batch, 100);
        assert_eq!(config.master.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(config.master.failover_grace, Duration::from_secs(30));
        assert_eq!(config.worker.advertise_addr(), "127.0.0.1:1234");
        assert_eq!(config.worker.groups, ["default"]);
        assert_eq!(config.worker.slots, None);
        assert_eq!(config.worker.work_dir, PathBuf::from("/tmp/sluice/work"));
        assert_eq!(config.worker.log_dir, PathBuf::from("/tmp/sluice/logs"));
        assert_eq!(config.worker.kill_grace, Duration::from_secs(5));
        assert_eq!(config.api.listen, "0.0.0.0:12345".parse().unwrap());
        assert_eq!(config.alert.poll_interval, Duration::from_secs(1));
        assert_eq!(config.log.level, "info");
        assert_eq!(config.log.format, LogFormat::Text);
    }

    #[test]
    fn file_overrides_defaults() {
        let file = toml_file(
            r#"
            [cluster]
            name = "prod"
            [database]
            url = "postgres://sluice@db:5432/sluice"
            [worker]
            slots = 8
            groups = ["etl", "spark"]
            heartbeat_interval = "500ms"
            advertise = "w1.example:1234"
            "#,
        );
        let config = Config::load_from(Some(file.path()), NO_ENV).unwrap();
        assert_eq!(config.cluster_root(), "/sluice/prod");
        assert_eq!(config.database.backend(), Some(DatabaseBackend::Postgres));
        assert_eq!(config.worker.effective_slots(), 8);
        assert_eq!(config.worker.groups, ["etl", "spark"]);
        assert_eq!(config.worker.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(config.worker.advertise_addr(), "w1.example:1234");
        // Untouched keys of a touched section keep their defaults.
        assert_eq!(config.worker.kill_grace, Duration::from_secs(5));
        assert_eq!(config.database.pool_size, 10);
    }

    #[test]
    fn env_overrides_file() {
        let file = toml_file("[worker]\nslots = 8\nwork_dir = \"/data/work\"\n");
        let env = [
            ("SLUICE_WORKER__SLOTS", "4"),
            ("SLUICE_WORKER__GROUPS", "etl, spark"),
            ("SLUICE_DATABASE__URL", "postgresql://sluice@db/sluice"),
            ("SLUICE_DATABASE__POOL_SIZE", "3"),
            ("SLUICE_CLUSTER__NAME", "123"),
            ("SLUICE_REGISTRY__KIND", "embedded"),
            ("SLUICE_MASTER__FAILOVER_GRACE", "1m"),
            ("SLUICE_LOG_STORE__DIR", "/shared/logs"),
            ("SLUICE_LOG_STORE__RETENTION", "30d"),
        ];
        let config = Config::load_from(Some(file.path()), env).unwrap();
        assert_eq!(config.worker.slots, Some(4));
        assert_eq!(config.worker.groups, ["etl", "spark"]);
        assert_eq!(config.worker.work_dir, PathBuf::from("/data/work"));
        assert_eq!(config.database.url, "postgresql://sluice@db/sluice");
        assert_eq!(config.database.pool_size, 3);
        assert_eq!(config.cluster.name, "123");
        assert_eq!(config.registry.kind, RegistryKind::Embedded);
        assert_eq!(config.master.failover_grace, Duration::from_secs(60));
        assert_eq!(config.log_store.dir, PathBuf::from("/shared/logs"));
        assert_eq!(config.log_store.retention, Some(Duration::from_secs(30 * 86_400)));
    }

    #[test]
    fn unknown_key_in_file_names_key_and_file() {
        let file = toml_file("[worker]\nslotz = 4\n");
        let err = load_err(Some(file.path()), &[]);
        let text = err.to_string();
        let expected = format!(
            "unknown configuration key `worker.slotz` in {}",
            file.path().display()
        );
        assert!(text.starts_with(&expected), "{text}");
        assert!(text.contains("slots"), "lists the known keys: {text}");
        assert_eq!(err.key(), Some("worker.slotz"));
        assert_eq!(err.origin(), Some(&Origin::File(file.path().to_owned())));
    }

    #[test]
    fn unknown_section_in_file_is_rejected() {
        let file = toml_file("[wroker]\nslots = 4\n");
        let text = load_err(Some(file.path()), &[]).to_string();
        assert!(
            text.starts_with("unknown configuration key `wroker` in "),
            "{text}"
        );
    }

    #[test]
    fn unknown_key_in_env_names_the_variable() {
        let file = toml_file("[worker]\nslots = 4\n");
        let err = load_err(Some(file.path()), &[("SLUICE_WORKER__SLOTZ", "4")]);
        assert!(
            err.to_string().starts_with(
                "unknown configuration key `worker.slotz` in environment variable SLUICE_WORKER__SLOTZ"
            ),
            "{err}"
        );
        let err = load_err(None, &[("SLUICE_WORKERS__SLOTS", "4")]);
        assert_eq!(err.key(), Some("workers"));
        assert_eq!(
            err.origin(),
            Some(&Origin::Env("SLUICE_WORKERS__SLOTS".into()))
        );
        let err = load_err(None, &[("SLUICE_WORKER____SLOTS", "4")]);
        assert!(err.to_string().contains("SLUICE_WORKER____SLOTS"), "{err}");
    }

    #[test]
    fn non_config_sluice_vars_are_ignored() {
        let env = [
            ("SLUICE_SERVER", "http://127.0.0.1:12345"),
            ("SLUICE_TEST_ZK", "127.0.0.1:2181"),
            ("SLUICE_", "x"),
            ("PATH", "/usr/bin"),
            ("OTHER__THING", "x"),
        ];
        assert_eq!(Config::load_from(None, env).unwrap(), Config::default());
    }

    #[test]
    fn bad_value_type_names_the_key() {
        let file = toml_file("[worker]\nslots = \"many\"\n");
        let err = load_err(Some(file.path()), &[]);
        let text = err.to_string();
        assert!(
            text.contains("`worker.slots`") && text.contains("many"),
            "{text}"
        );
        assert_eq!(err.origin(), Some(&Origin::File(file.path().to_owned())));

        let err = load_err(None, &[("SLUICE_DATABASE__POOL_SIZE", "lots")]);
        let text = err.to_string();
        assert!(
            text.contains(
                "`database.pool_size` in environment variable SLUICE_DATABASE__POOL_SIZE"
            ) && text.contains("lots"),
            "{text}"
        );

        let err = load_err(None, &[("SLUICE_REGISTRY__KIND", "etcd")]);
        let text = err.to_string();
        assert!(
            text.contains("`registry.kind`") && text.contains("`etcd`"),
            "{text}"
        );
        assert!(text.contains("embedded, zookeeper"), "{text}");

        let err = load_err(None, &[("SLUICE_API__LISTEN", "localhost:80")]);
        assert!(
            err.to_string().contains("`api.listen`") && err.to_string().contains("localhost:80")
        );
    }

    #[test]
    fn bad_duration_names_key_and_value() {
        let file = toml_file("[master]\nheartbeat_interval = \"5 parsecs\"\n");
        let text = load_err(Some(file.path()), &[]).to_string();
        assert!(
            text.contains("`master.heartbeat_interval`") && text.contains("5 parsecs"),
            "{text}"
        );

        let err = load_err(None, &[("SLUICE_REGISTRY__SESSION_TIMEOUT", "0s")]);
        let text = err.to_string();
        assert!(
            text.contains("`registry.session_timeout` in environment variable SLUICE_REGISTRY__SESSION_TIMEOUT"),
            "{text}"
        );
    }

    #[test]
    fn bad_database_scheme_lists_accepted_ones() {
        let file = toml_file("[database]\nurl = \"mysql://sluice:secret@db/sluice\"\n");
        let err = load_err(Some(file.path()), &[]);
        let text = err.to_string();
        assert!(
            text.contains("`database.url`") && text.contains("`mysql`"),
            "{text}"
        );
        assert!(
            text.contains("postgres://") && text.contains("sqlite://"),
            "{text}"
        );
        assert!(!text.contains("secret"), "password leaked: {text}");
        assert_eq!(err.origin(), Some(&Origin::File(file.path().to_owned())));
    }

    #[test]
    fn validation_errors_name_their_source() {
        let err = load_err(None, &[("SLUICE_WORKER__SLOTS", "0")]);
        assert_eq!(
            err.origin(),
            Some(&Origin::Env("SLUICE_WORKER__SLOTS".into()))
        );
        let err = load_err(None, &[("SLUICE_WORKER__GROUPS", "etl,,spark")]);
        assert_eq!(err.key(), Some("worker.groups"));
        let file = toml_file("[worker]\ngroups = [\"etl/x\"]\n");
        let text = load_err(Some(file.path()), &[]).to_string();
        assert!(
            text.contains("`worker.groups`") && text.contains("etl/x"),
            "{text}"
        );
    }

    #[test]
    fn missing_or_malformed_file_is_an_error() {
        let missing = Path::new("/nonexistent/sluice.toml");
        let err = load_err(Some(missing), &[]);
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/sluice.toml"),
            "{err}"
        );

        let file = toml_file("[worker\nslots = 4\n");
        let err = load_err(Some(file.path()), &[]);
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&file.path().display().to_string()),
            "{err}"
        );
    }

    /// The examples under deploy/ are what operators copy; loading them here keeps them
    /// in step with the code.
    fn deploy_example(name: &str) -> Config {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy")
            .join(name);
        Config::load_from(Some(&path), NO_ENV)
            .unwrap_or_else(|err| panic!("deploy/{name} does not load: {err}"))
    }

    #[test]
    fn every_deploy_example_loads() {
        let cluster_db = "postgres://sluice@127.0.0.1:5432/sluice";

        let master = deploy_example("master.toml");
        assert_eq!(master.database.url, cluster_db);
        assert_eq!(master.registry.kind, RegistryKind::Zookeeper);
        assert_eq!(master.registry.zookeeper, "127.0.0.1:2181");
        assert_eq!(master.master.listen.port(), 5678);

        let worker = deploy_example("worker.toml");
        assert_eq!(worker.registry.kind, RegistryKind::Zookeeper);
        assert_eq!(worker.registry.zookeeper, "127.0.0.1:2181");
        assert_eq!(worker.worker.groups, ["default"]);
        assert_eq!(worker.worker.listen.port(), 1234);
        assert_eq!(worker.log_store.dir, Path::new("/tmp/sluice/log-store"));
        assert_eq!(worker.log_store.retention, None);

        let api = deploy_example("api.toml");
        assert_eq!(api.database.url, cluster_db);
        assert_eq!(api.registry.kind, RegistryKind::Zookeeper);
        assert_eq!(api.api.listen.port(), 12345);

        let alert = deploy_example("alert.toml");
        assert_eq!(alert.database.url, cluster_db);
        assert_eq!(alert.alert.poll_interval, Duration::from_secs(1));

        let standalone = deploy_example("standalone.toml");
        assert_eq!(standalone.registry.kind, RegistryKind::Embedded);
        assert_eq!(standalone.database.backend(), Some(DatabaseBackend::Sqlite));
    }
}
