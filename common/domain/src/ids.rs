//! Newtype identifiers. A bare `i64` says nothing about what it points to;
//! these make a task instance id impossible to pass where a workflow instance
//! id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl $name {
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }

        impl From<i64> for $name {
            fn from(raw: i64) -> Self {
                $name(raw)
            }
        }
    };
}

id_type!(
    /// A project: the namespace workflows live in.
    ProjectId
);
id_type!(
    /// A workflow definition, stable across its versions.
    WorkflowId
);
id_type!(
    /// One stored version of a task definition.
    TaskDefinitionId
);
id_type!(
    /// A schedule attached to a workflow definition.
    ScheduleId
);
id_type!(
    /// A row of the command table: a request to do something to a workflow.
    CommandId
);
id_type!(
    /// One run of a workflow.
    WorkflowInstanceId
);
id_type!(
    /// A backfill: runs of one workflow over a list of schedule times.
    BackfillId
);
id_type!(
    /// One task of one workflow run; retries are attempts of the same instance.
    TaskInstanceId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text_and_json() {
        let id: TaskInstanceId = "42".parse().unwrap();
        assert_eq!(id, TaskInstanceId(42));
        assert_eq!(id.to_string(), "42");
        assert_eq!(serde_json::to_string(&id).unwrap(), "42");
        assert_eq!(serde_json::from_str::<TaskInstanceId>("42").unwrap(), id);
        assert!("x".parse::<WorkflowInstanceId>().is_err());
    }
}
