//! Attempt logs on the worker: the file each attempt writes, fed by one
//! pipe that the task's stdout and stderr share (so their lines keep their
//! order), timestamped line by line; the table of logs still being written,
//! which followers wait on; and serving pages and follows to the API.
//!
//! The format is `sluice_logs::format_line`'s; a task that prints no
//! newline, or binary, still gets whole, valid lines: a partial line is
//! written once the task is quiet for [`PARTIAL_LINE_AFTER`] or once it is
//! [`MAX_LINE_BYTES`] long.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use sluice_logs::{format_line, read_page, timestamp, LogError, LogKey, Page, Source, MAX_LINE_BYTES, MAX_PAGE_LINES};
use sluice_proto::v1::LogPage;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::warn;

/// A line the task has not ended yet is written after this much silence:
/// a progress prompt without a newline must still show up while it waits.
pub(crate) const PARTIAL_LINE_AFTER: Duration = Duration::from_secs(1);

/// The logs being written, by attempt. A follower subscribes here; an
/// attempt that is not here is over (or never ran on this worker).
#[derive(Default)]
pub(crate) struct LiveLogs {
    logs: Mutex<HashMap<LogKey, watch::Receiver<bool>>>,
}

impl LiveLogs {
    fn lock(&self) -> MutexGuard<'_, HashMap<LogKey, watch::Receiver<bool>>> {
        self.logs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The attempt's log if it is still being written: changes on every
    /// write, and is `true` once the log is complete.
    pub(crate) fn get(&self, key: &LogKey) -> Option<watch::Receiver<bool>> {
        self.lock().get(key).cloned()
    }

    /// Drops a log whose writer was lost: followers see its sender go
    /// and end with what the file has.
    pub(crate) fn forget(&self, key: &LogKey) {
        self.lock().remove(key);
    }
}

/// The file of one attempt, written only through this.
pub(crate) struct LogWriter {
    key: LogKey,
    path: PathBuf,
    file: tokio::fs::File,
    /// `false` while writing; `true` once complete. Every write notifies.
    written: watch::Sender<bool>,
    failed: bool,
    /// Lines noted with [`LogWriter::note_soon`], written with the next write.
    held: String,
}

impl LogWriter {
    /// Opens (appends to: a repeated attempt number must not erase what
    /// the first run logged) the attempt's log and makes it followable.
    pub(crate) async fn open(live: &LiveLogs, key: LogKey, path: PathBuf) -> Result<LogWriter, String> {
        let opening = path.clone();
        let file = tokio::task::spawn_blocking(move || {
            if let Some(parent) = opening.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("cannot create log directory {}: {e}", parent.display()))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&opening)
                .map_err(|e| format!("cannot open log file {}: {e}", opening.display()))
        })
        .await
        .map_err(|e| format!("cannot open log file {}: {e}", path.display()))??;
        let (written, watching) = watch::channel(false);
        live.lock().insert(key, watching);
        Ok(LogWriter { key, path, file: tokio::fs::File::from_std(file), written, failed: false, held: String::new() })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends formatted lines and wakes followers. A full disk must not
    /// fail the task: the first error is logged, later lines are dropped.
    async fn write(&mut self, lines: &str) {
        let held = std::mem::take(&mut self.held);
        if self.failed || (lines.is_empty() && held.is_empty()) {
            return;
        }
        let result = async {
            if !held.is_empty() {
                self.file.write_all(held.as_bytes()).await?;
            }
            self.file.write_all(lines.as_bytes()).await?;
            self.file.flush().await
        }
        .await;
        if let Err(error) = result {
            warn!(task_instance = self.key.task_instance_id, attempt = self.key.attempt, log = %self.path.display(), %error, "cannot write task log; dropping further lines");
            self.failed = true;
        }
        self.written.send_replace(false);
    }

    /// One `[sluice]` line.
    pub(crate) async fn note(&mut self, text: &str) {
        self.write(&format_line(Utc::now(), Source::Sluice, text.as_bytes())).await;
    }

    /// One `[sluice]` line, stamped now and written with the next write
    /// (the task's first output, or the next note): lines noted while an
    /// attempt is being prepared cost one write between them.
    pub(crate) fn note_soon(&mut self, text: &str) {
        self.held.push_str(&format_line(Utc::now(), Source::Sluice, text.as_bytes()));
    }

    /// Writes what [`Self::note_soon`] held back.
    pub(crate) async fn write_held(&mut self) {
        self.write("").await;
    }

    /// Marks the log complete: followers send what is left and end.
    pub(crate) fn finish(self, live: &LiveLogs) {
        live.lock().remove(&self.key);
        self.written.send_replace(true);
    }
}

/// Reads an external id in a line, if there is one.
pub(crate) type FindId = Box<dyn Fn(&str) -> Option<String> + Send>;

/// Finds the attempt's external id (see
/// [`sluice_tasks::TaskPlugin::external_id`]) in its output lines: the
/// first one found is sent on `found`, once.
pub(crate) struct ExternalIds {
    pub find: FindId,
    pub found: oneshot::Sender<String>,
}

/// What is read from the task's lines as they go by (the log is not read
/// again).
#[derive(Default)]
struct Scan {
    outputs: BTreeMap<String, String>,
    external: Option<ExternalIds>,
}

/// What [`pump`] hands back once the pipe is drained.
pub(crate) struct Pumped {
    pub writer: LogWriter,
    /// `${setValue(key=value)}` outputs, read from the task's lines as
    /// they went by (the log is not read again).
    pub outputs: BTreeMap<String, String>,
}

/// Copies the task's output from `pipe` into the log, a line at a time,
/// each stamped with when it was read, and `[sluice]` lines from `notes`
/// in between. Ends when the pipe closes, or at the deadline sent on
/// `drain_by` (the task exited but something it started in the
/// background still holds the pipe).
pub(crate) async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    mut writer: LogWriter,
    mut notes: mpsc::UnboundedReceiver<String>,
    mut drain_by: oneshot::Receiver<Instant>,
    external: Option<ExternalIds>,
) -> Pumped {
    let mut outputs = Scan { outputs: BTreeMap::new(), external };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut deadline: Option<Instant> = None;
    let mut notes_open = true;
    // What was noted while the attempt was prepared, so that a follower of
    // a silent task sees how it started.
    writer.write_held().await;
    loop {
        tokio::select! {
            read = pipe.read(&mut buf) => match read {
                Ok(0) => break,
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    let lines = split_lines(&mut pending, &mut outputs);
                    writer.write(&lines).await;
                }
                Err(error) => {
                    writer.note(&format!("cannot read the task's output: {error}")).await;
                    break;
                }
            },
            note = notes.recv(), if notes_open => match note {
                Some(note) => writer.note(&note).await,
                None => notes_open = false,
            },
            _ = tokio::time::sleep(PARTIAL_LINE_AFTER), if !pending.is_empty() => {
                let line = take_line(&mut pending, &mut outputs);
                writer.write(&line).await;
            },
            at = &mut drain_by, if deadline.is_none() => {
                // A dropped sender means "drain now".
                deadline = Some(at.unwrap_or_else(|_| Instant::now()));
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                let rest = take_line(&mut pending, &mut outputs);
                writer.write(&rest).await;
                writer.note("output after the task exited is not logged: a process it left in the background still holds its stdout").await;
                return Pumped { writer, outputs: outputs.outputs };
            }
        }
    }
    let rest = take_line(&mut pending, &mut outputs);
    writer.write(&rest).await;
    // The runner may still have notes (how a kill went): it drops its
    // sender once it has said everything.
    while notes_open {
        match notes.recv().await {
            Some(note) => writer.note(&note).await,
            None => notes_open = false,
        }
    }
    Pumped { writer, outputs: outputs.outputs }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Formats and removes the whole lines of `pending` (and cuts lines
/// longer than [`MAX_LINE_BYTES`]); what remains is a line in progress.
/// Every line of one read gets the same timestamp: they arrived together.
fn split_lines(pending: &mut Vec<u8>, outputs: &mut Scan) -> String {
    let now = timestamp(Utc::now());
    let mut lines = String::new();
    let mut start = 0;
    while let Some(end) = pending[start..].iter().position(|&b| b == b'\n').map(|i| start + i) {
        for chunk in pending[start..end].chunks(MAX_LINE_BYTES) {
            push_line(&mut lines, &now, chunk, outputs);
        }
        if start == end {
            push_line(&mut lines, &now, b"", outputs);
        }
        start = end + 1;
    }
    while pending.len() - start >= MAX_LINE_BYTES {
        push_line(&mut lines, &now, &pending[start..start + MAX_LINE_BYTES], outputs);
        start += MAX_LINE_BYTES;
    }
    pending.drain(..start);
    lines
}

/// Formats all of `pending`, a line without its end yet, and empties it.
fn take_line(pending: &mut Vec<u8>, outputs: &mut Scan) -> String {
    let mut lines = String::new();
    let now = timestamp(Utc::now());
    for chunk in pending.chunks(MAX_LINE_BYTES) {
        push_line(&mut lines, &now, chunk, outputs);
    }
    pending.clear();
    lines
}

fn push_line(lines: &mut String, stamp: &str, text: &[u8], scan: &mut Scan) {
    if contains(text, b"${setValue(") {
        sluice_params::output_params(&String::from_utf8_lossy(text), &mut scan.outputs);
    }
    if let Some(external) = &scan.external {
        if let Some(id) = (external.find)(&String::from_utf8_lossy(text)) {
            if let Some(external) = scan.external.take() {
                let _ = external.found.send(id);
            }
        }
    }
    sluice_logs::push_line(lines, stamp, Source::Out, text);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Why a log cannot be served.
pub(crate) enum ServeError {
    NotFound,
    BadOffset(String),
    Io(String),
}

impl From<LogError> for ServeError {
    fn from(error: LogError) -> Self {
        match error {
            LogError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => ServeError::NotFound,
            LogError::BadOffset { .. } => ServeError::BadOffset(error.to_string()),
            LogError::Io { .. } => ServeError::Io(error.to_string()),
        }
    }
}

/// A page of the attempt's log under `log_dir`; `finished` once the
/// attempt is over and the page reaches the end.
pub(crate) async fn read(live: &LiveLogs, log_dir: &Path, key: &LogKey, offset: u64, limit: usize) -> Result<LogPage, ServeError> {
    // Looked at before reading: if it was complete then, the page saw
    // all of it.
    let complete = live.get(key).is_none_or(|written| *written.borrow());
    let page = read_page(&log_dir.join(key.relative_path()), offset, limit).await?;
    Ok(to_proto(page, complete))
}

fn to_proto(page: Page, complete: bool) -> LogPage {
    LogPage { finished: complete && page.at_end, lines: page.lines, next_offset: page.next_offset }
}

/// Sends the log from `offset` on `out`, then its new lines as they are
/// written, until the attempt is over and everything was sent. Ends early
/// when the receiver is gone.
pub(crate) async fn follow(
    live: &LiveLogs,
    log_dir: &Path,
    key: LogKey,
    mut offset: u64,
    out: mpsc::Sender<Result<LogPage, tonic::Status>>,
) {
    let path = log_dir.join(key.relative_path());
    let mut written = live.get(&key);
    loop {
        let complete = written.as_mut().is_none_or(|w| *w.borrow_and_update());
        // Everything there now, a page at a time: the channel's bound is
        // what keeps a slow reader from making us hold the file.
        loop {
            let page = match read_page(&path, offset, MAX_PAGE_LINES).await {
                Ok(page) => page,
                Err(error) => {
                    let status = match ServeError::from(error) {
                        ServeError::NotFound => tonic::Status::not_found(format!("no log for {key} on this worker")),
                        ServeError::BadOffset(message) => tonic::Status::invalid_argument(message),
                        ServeError::Io(message) => tonic::Status::internal(message),
                    };
                    let _ = out.send(Err(status)).await;
                    return;
                }
            };
            offset = page.next_offset;
            let at_end = page.at_end;
            let page = to_proto(page, complete);
            let finished = page.finished;
            if (!page.lines.is_empty() || finished) && out.send(Ok(page)).await.is_err() {
                return;
            }
            if finished {
                return;
            }
            if at_end {
                break;
            }
        }
        // (Without a live log the page loop only ends once finished.)
        if let Some(w) = written.as_mut() {
            tokio::select! {
                // A writer gone without finishing (a crashing worker):
                // what is there is all there will be.
                changed = w.changed() => if changed.is_err() { written = None },
                _ = out.closed() => return,
            }
        }
    }
}

/// How often a worker deletes its expired local logs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Deletes the worker's local logs older than `retention` (their copies
/// in the store are the master's to expire), at start and then hourly.
pub(crate) async fn retention_loop(log_dir: PathBuf, retention: Option<Duration>, stop: sluice_runtime::CancellationToken) {
    let Some(retention) = retention else { return };
    loop {
        let cutoff = std::time::SystemTime::now() - retention;
        let dir = log_dir.clone();
        match tokio::task::spawn_blocking(move || sluice_logs::delete_older_than(&dir, cutoff)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(deleted)) => tracing::info!(deleted, log_dir = %log_dir.display(), "expired task logs deleted"),
            Ok(Err(error)) => warn!(%error, "cannot delete expired task logs"),
            Err(error) => warn!(%error, "task log retention failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_into_whole_lines() {
        let mut outputs = Scan::default();
        let mut pending = b"a\n\nb\r\nc ${setValue(k=v)}\npart".to_vec();
        let lines = split_lines(&mut pending, &mut outputs);
        let texts: Vec<&str> = lines.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(texts, ["[out] a", "[out] ", "[out] b", "[out] c ${setValue(k=v)}"]);
        assert_eq!(pending, b"part");
        assert_eq!(outputs.outputs.get("k").map(String::as_str), Some("v"));
        let mut long = vec![b'x'; MAX_LINE_BYTES * 2 + 5];
        let lines = split_lines(&mut long, &mut outputs);
        assert_eq!(lines.lines().count(), 2, "two full pieces written, the rest waits");
        assert_eq!(long.len(), 5);
        assert_eq!(take_line(&mut long, &mut outputs).lines().count(), 1);
        assert!(long.is_empty());
    }

    #[test]
    fn the_first_external_id_is_reported_once() {
        let (found, mut reported) = oneshot::channel();
        let find = Box::new(|line: &str| line.split_whitespace().find(|w| w.starts_with("application_")).map(str::to_owned));
        let mut scan = Scan { external: Some(ExternalIds { find, found }), ..Scan::default() };
        let mut pending = b"starting\nsubmitted application_1_0001\nthen application_1_0002\n".to_vec();
        split_lines(&mut pending, &mut scan);
        assert_eq!(reported.try_recv().unwrap(), "application_1_0001");
        assert!(scan.external.is_none(), "only the first id is looked for");
    }
}
