use std::time::Duration;

/// Why a registry operation failed.
///
/// Session errors (`SessionExpired`, `Disconnected`) are transient: the
/// ZooKeeper registry reconnects and re-creates its session on its own, so a
/// caller retries the operation once [`crate::Registry::session_state`] says
/// `Connected` again. `Closed` is final.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("registry node `{path}` already exists")]
    NodeExists { path: String },

    #[error("registry node `{path}` does not exist")]
    NoNode { path: String },

    #[error("invalid registry path `{path}`: {reason}")]
    InvalidPath { path: String, reason: &'static str },

    #[error("registry session expired")]
    SessionExpired,

    #[error("registry is disconnected from its servers")]
    Disconnected,

    #[error("registry session is closed")]
    Closed,

    #[error("cannot connect to registry servers `{servers}` within {timeout:?}: {message}")]
    Connect {
        servers: String,
        timeout: Duration,
        message: String,
    },

    #[error("registry operation on `{path}` failed: {message}")]
    Other { path: String, message: String },
}

impl RegistryError {
    /// Whether the same operation may succeed once the session is back.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::SessionExpired | Self::Disconnected)
    }
}
