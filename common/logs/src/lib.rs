//! Task attempt logs, shared by the worker (writes and serves them), the
//! API (pages and streams them) and the master (retention).
//!
//! - `line`: the one line format, `<RFC 3339 UTC, ms> [<source>] <text>`.
//! - `page`: reading a page of whole lines from a byte offset, without
//!   holding more than the page in memory, whatever the file's size.
//! - `store`: [`LogStore`], where a finished attempt's log is kept once its
//!   worker may be gone, and [`DirLogStore`], a (shared) directory.
//! - [`LogKey`]: which attempt's log; also its relative path, the same on a
//!   worker's disk and in the store.

mod line;
mod page;
mod store;

use std::fmt;
use std::path::PathBuf;

pub use line::{format_line, output_text, push_line, timestamp, Source, MAX_LINE_BYTES};
pub use page::{read_page, Page, MAX_PAGE_BYTES, MAX_PAGE_LINES};
pub use store::{delete_older_than, DirLogStore, LogReader, LogStore};

/// One attempt of one task instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogKey {
    pub workflow_instance_id: i64,
    pub task_instance_id: i64,
    pub attempt: u32,
}

impl LogKey {
    /// `<workflow instance>/<task instance>_<attempt>.log`, relative to a
    /// worker's `log_dir` or to the log store.
    pub fn relative_path(&self) -> PathBuf {
        PathBuf::from(self.workflow_instance_id.to_string())
            .join(format!("{}_{}.log", self.task_instance_id, self.attempt))
    }
}

impl fmt::Display for LogKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task instance {} attempt {}", self.task_instance_id, self.attempt)
    }
}

/// Why a log could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The caller's offset is not one a page returned: past the end, or
    /// not at the start of a line.
    #[error("offset {offset} {reason}")]
    BadOffset { offset: u64, reason: &'static str },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LogError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { action, path, source }
    }
}
