//! The log store: where a finished attempt's log is kept so that it stays
//! readable once its worker is gone. [`DirLogStore`] is a directory,
//! shared by the cluster (NFS or the like) or local to a single machine;
//! an object store can implement [`LogStore`] later.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::io::AsyncRead;

use crate::{read_page, LogError, LogKey, Page};

/// A whole log, as bytes, for downloads.
pub type LogReader = Pin<Box<dyn AsyncRead + Send>>;

#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Keeps the log at `from` (a finished attempt's) under `key`,
    /// replacing what was there; readers see the old or the new log whole,
    /// never a part.
    async fn put(&self, key: &LogKey, from: &Path) -> Result<(), LogError>;
    /// A page of `key`'s log (see [`read_page`]); `None` if the store has
    /// no log for it.
    async fn read(&self, key: &LogKey, offset: u64, limit: usize) -> Result<Option<Page>, LogError>;
    /// `key`'s whole log and its size; `None` if the store has none.
    async fn open(&self, key: &LogKey) -> Result<Option<(u64, LogReader)>, LogError>;
    /// Deletes the logs last written before `cutoff`; returns how many.
    async fn delete_older_than(&self, cutoff: SystemTime) -> Result<u64, LogError>;
}

/// Logs as files under a directory, at [`LogKey::relative_path`].
#[derive(Debug, Clone)]
pub struct DirLogStore {
    dir: PathBuf,
}

impl DirLogStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirLogStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &LogKey) -> PathBuf {
        self.dir.join(key.relative_path())
    }
}

fn not_found(error: &LogError) -> bool {
    matches!(error, LogError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

#[async_trait]
impl LogStore for DirLogStore {
    async fn put(&self, key: &LogKey, from: &Path) -> Result<(), LogError> {
        let to = self.path(key);
        let from = from.to_owned();
        // One trip to the blocking pool: it is on the way from a task's end
        // to its report.
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(LogError::io("create directory", parent))?;
            }
            // Copied aside, then renamed over: atomic on one file system.
            let partial = to.with_extension("log.partial");
            std::fs::copy(&from, &partial).map_err(LogError::io("copy the log to", &partial))?;
            std::fs::rename(&partial, &to).map_err(LogError::io("rename the log to", &to))
        })
        .await
        .map_err(|e| LogError::io("copy the log to", &self.dir)(std::io::Error::other(e)))?
    }

    async fn read(&self, key: &LogKey, offset: u64, limit: usize) -> Result<Option<Page>, LogError> {
        match read_page(&self.path(key), offset, limit).await {
            Ok(page) => Ok(Some(page)),
            Err(error) if not_found(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn open(&self, key: &LogKey) -> Result<Option<(u64, LogReader)>, LogError> {
        let path = self.path(key);
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(LogError::io("open", &path)(error)),
        };
        let size = file.metadata().await.map_err(LogError::io("read", &path))?.len();
        Ok(Some((size, Box::pin(file))))
    }

    async fn delete_older_than(&self, cutoff: SystemTime) -> Result<u64, LogError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || delete_older_than(&dir, cutoff))
            .await
            .map_err(|e| LogError::io("clean up", &self.dir)(std::io::Error::other(e)))?
    }
}

/// Deletes the files under `dir` (recursively) last modified before
/// `cutoff`, and the directories that leaves empty; returns how many files.
/// Blocking: run it off the async threads. A missing `dir` has nothing old.
pub fn delete_older_than(dir: &Path, cutoff: SystemTime) -> Result<u64, LogError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(LogError::io("list", dir)(error)),
    };
    let mut deleted = 0;
    for entry in entries {
        let entry = entry.map_err(LogError::io("list", dir))?;
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            deleted += delete_older_than(&path, cutoff)?;
            // Only succeeds when empty, which is the point.
            let _ = std::fs::remove_dir(&path);
        } else if meta.modified().is_ok_and(|modified| modified < cutoff) {
            match std::fs::remove_file(&path) {
                Ok(()) => deleted += 1,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(LogError::io("delete", &path)(error)),
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;

    fn key(task: i64) -> LogKey {
        LogKey { workflow_instance_id: 7, task_instance_id: task, attempt: 1 }
    }

    #[tokio::test]
    async fn a_put_log_is_read_opened_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirLogStore::new(dir.path().join("store"));
        assert_eq!(store.read(&key(1), 0, 10).await.unwrap(), None);
        assert!(store.open(&key(1)).await.unwrap().is_none());
        let local = dir.path().join("local.log");
        std::fs::write(&local, "a\nb\n").unwrap();
        store.put(&key(1), &local).await.unwrap();
        assert!(dir.path().join("store/7/1_1.log").is_file());
        let page = store.read(&key(1), 0, 10).await.unwrap().unwrap();
        assert_eq!((page.lines, page.next_offset, page.at_end), (vec!["a".to_owned(), "b".to_owned()], 4, true));
        std::fs::write(&local, "a\nb\nc\n").unwrap();
        store.put(&key(1), &local).await.unwrap();
        let (size, mut reader) = store.open(&key(1)).await.unwrap().unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).await.unwrap();
        assert_eq!((size, text.as_str()), (6, "a\nb\nc\n"));
    }

    /// Retention deletes what was written before the cutoff and nothing else.
    #[tokio::test]
    async fn retention_deletes_only_old_logs() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirLogStore::new(dir.path());
        let local = dir.path().join("local.tmp");
        std::fs::write(&local, "x\n").unwrap();
        for task in [1, 2, 3] {
            store.put(&key(task), &local).await.unwrap();
        }
        store.put(&LogKey { workflow_instance_id: 8, ..key(4) }, &local).await.unwrap();
        std::fs::remove_file(&local).unwrap();
        let now = SystemTime::now();
        let age = |path: &str, days: u64| {
            let file = std::fs::File::options().write(true).open(dir.path().join(path)).unwrap();
            file.set_modified(now - Duration::from_secs(days * 86_400)).unwrap();
        };
        age("7/1_1.log", 40);
        age("7/2_1.log", 29);
        age("8/4_1.log", 31);
        let deleted = store.delete_older_than(now - Duration::from_secs(30 * 86_400)).await.unwrap();
        assert_eq!(deleted, 2);
        assert!(!dir.path().join("7/1_1.log").exists());
        assert!(dir.path().join("7/2_1.log").exists(), "29 days old is kept");
        assert!(dir.path().join("7/3_1.log").exists(), "new is kept");
        assert!(!dir.path().join("8").exists(), "an emptied directory is removed");
        assert_eq!(store.delete_older_than(now - Duration::from_secs(30 * 86_400)).await.unwrap(), 0);
        assert_eq!(DirLogStore::new(dir.path().join("missing")).delete_older_than(now).await.unwrap(), 0);
    }
}
