use std::fmt;
use std::path::PathBuf;

/// Where a configuration value was written, so that an error points the operator at the
/// line or variable to fix rather than at the merged result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    /// The variable's name as it was set, e.g. `SLUICE_WORKER__SLOTS`.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// Why a configuration could not be loaded. Every variant that concerns a value carries
/// its dotted key (`worker.slots`) and, when known, its [`Origin`]; messages quote the
/// offending value (database passwords redacted).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The source could not be parsed at all (TOML syntax), so no key is known.
    #[error("cannot parse configuration{}: {message}", at(origin))]
    Parse {
        origin: Option<Origin>,
        message: String,
    },

    #[error(
        "unknown configuration key `{key}`{}{}",
        at(origin),
        expected_keys(known)
    )]
    UnknownKey {
        key: String,
        origin: Option<Origin>,
        /// The keys accepted at that level, to help spot the typo; empty if not known.
        known: &'static [&'static str],
    },

    /// Wrong type, unparsable value, or a value outside what Sluice accepts.
    #[error("invalid value for `{key}`{}: {message}", at(origin))]
    Invalid {
        key: String,
        origin: Option<Origin>,
        message: String,
    },
}

impl ConfigError {
    /// The dotted key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Parse { .. } => None,
        }
    }

    /// Where the offending value was written, if known.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            ConfigError::Parse { origin, .. }
            | ConfigError::UnknownKey { origin, .. }
            | ConfigError::Invalid { origin, .. } => origin.as_ref(),
            ConfigError::Read { .. } => None,
        }
    }

    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            origin: None,
            message: message.into(),
        }
    }
}

fn at(origin: &Option<Origin>) -> String {
    origin
        .as_ref()
        .map(|origin| format!(" in {origin}"))
        .unwrap_or_default()
}

fn expected_keys(known: &[&str]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (expected one of: {})", known.join(", "))
    }
}
