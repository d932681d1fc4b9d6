//! Keys of the ready-task priority queue.
//!
//! A key is `<workflowPriority>_<workflowInstanceId>_<taskPriority>_<taskInstanceId>`
//! with the ids zero-padded to 19 digits (the width of `i64::MAX`), so that
//! the lexicographically smallest key is the next task to run: higher
//! workflow priority first, then older workflow instances, then higher task
//! priority, then older task instances.

use std::fmt;
use std::str::FromStr;

use crate::ids::{TaskInstanceId, WorkflowInstanceId};
use crate::model::Priority;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub workflow_priority: Priority,
    pub workflow_instance_id: WorkflowInstanceId,
    pub task_priority: Priority,
    pub task_instance_id: TaskInstanceId,
}

impl QueueKey {
    pub fn encode(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for QueueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_{:019}_{}_{:019}",
            self.workflow_priority.rank(),
            self.workflow_instance_id.get(),
            self.task_priority.rank(),
            self.task_instance_id.get()
        )
    }
}

/// Text that is not a queue key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed queue key `{0}`")]
pub struct MalformedKey(pub String);

impl FromStr for QueueKey {
    type Err = MalformedKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MalformedKey(s.to_owned());
        let parts: Vec<&str> = s.split('_').collect();
        let [wp, wi, tp, ti] = parts.as_slice() else { return Err(bad()) };
        if wi.len() != 19 || ti.len() != 19 {
            return Err(bad());
        }
        let priority = |p: &str| p.parse::<u8>().ok().and_then(Priority::from_rank).ok_or_else(bad);
        let id = |i: &str| i.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(bad);
        Ok(QueueKey {
            workflow_priority: priority(wp)?,
            workflow_instance_id: WorkflowInstanceId(id(wi)?),
            task_priority: priority(tp)?,
            task_instance_id: TaskInstanceId(id(ti)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(wp: u8, wi: i64, tp: u8, ti: i64) -> QueueKey {
        QueueKey {
            workflow_priority: Priority::from_rank(wp).unwrap(),
            workflow_instance_id: WorkflowInstanceId(wi),
            task_priority: Priority::from_rank(tp).unwrap(),
            task_instance_id: TaskInstanceId(ti),
        }
    }

    #[test]
    fn layout() {
        assert_eq!(key(0, 42, 3, 7).to_string(), "0_0000000000000000042_3_0000000000000000007");
        assert_eq!(key(4, i64::MAX, 4, i64::MAX).to_string().len(), 1 + 1 + 19 + 1 + 1 + 1 + 19);
        for bad in ["", "0_1_2_3", "9_0000000000000000042_3_0000000000000000007", "0_000000000000000004x_3_0000000000000000007"] {
            assert!(bad.parse::<QueueKey>().is_err(), "{bad}");
        }
    }

    proptest! {
        /// String order of keys is the scheduling order of their fields.
        #[test]
        fn text_order_is_priority_order(a in (0u8..5, 0i64..i64::MAX, 0u8..5, 0i64..i64::MAX),
                                        b in (0u8..5, 0i64..i64::MAX, 0u8..5, 0i64..i64::MAX)) {
            let (ka, kb) = (key(a.0, a.1, a.2, a.3), key(b.0, b.1, b.2, b.3));
            prop_assert_eq!(ka.to_string().cmp(&kb.to_string()), a.cmp(&b));
            prop_assert_eq!(ka.to_string().parse::<QueueKey>().unwrap(), ka);
        }
    }
}
