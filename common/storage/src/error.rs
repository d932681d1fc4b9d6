use sluice_domain::WorkflowInstanceId;

/// Errors of the storage layer. `Unavailable` is the only one worth
/// retrying: the database could not be reached or the connection broke.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The writer's fence epoch is older than the instance's: another master
    /// adopted the instance, and this writer must stop acting on it.
    #[error(
        "workflow instance {workflow_instance_id} is owned under epoch {current}, \
         not {presented}: write refused"
    )]
    Fenced { workflow_instance_id: WorkflowInstanceId, presented: i64, current: i64 },
    /// A state change expected a row in a state it is no longer in (or the
    /// transition table refuses the move): nothing was written.
    #[error("stale state: {0}")]
    StaleState(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("invalid database url `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("database error: {0}")]
    Database(String),
}

impl StoreError {
    /// Whether the same call may succeed later without any change.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt(what.to_string())
    }
}

impl From<diesel::result::Error> for StoreError {
    fn from(error: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind as Kind, Error};
        match error {
            Error::NotFound => StoreError::NotFound("row".into()),
            Error::DatabaseError(Kind::UniqueViolation, info) => {
                StoreError::Conflict(info.message().to_owned())
            }
            Error::DatabaseError(Kind::ClosedConnection | Kind::UnableToSendCommand, info) => {
                StoreError::Unavailable(info.message().to_owned())
            }
            Error::DatabaseError(Kind::SerializationFailure, info) => {
                StoreError::Unavailable(format!("serialization failure: {}", info.message()))
            }
            Error::DeserializationError(e) => StoreError::Corrupt(e.to_string()),
            Error::BrokenTransactionManager => {
                StoreError::Unavailable("connection left in a broken transaction".into())
            }
            other => {
                let text = other.to_string();
                // libpq reports a vanished server as an unknown error kind.
                if text.contains("server closed the connection")
                    || text.contains("terminating connection")
                    || text.contains("could not connect")
                    || text.contains("database is locked")
                {
                    StoreError::Unavailable(text)
                } else {
                    StoreError::Database(text)
                }
            }
        }
    }
}

impl From<diesel::r2d2::PoolError> for StoreError {
    fn from(error: diesel::r2d2::PoolError) -> Self {
        StoreError::Unavailable(error.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        StoreError::Corrupt(error.to_string())
    }
}
