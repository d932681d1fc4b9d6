//! Pages of whole lines from a byte offset.
//!
//! Offsets are byte offsets into the log file, handed out as `next_offset`
//! and meant to be passed back as they are: finding line N of a 200 MB log
//! would mean reading it from the start, a byte offset is one seek. A
//! page never holds more than [`MAX_PAGE_BYTES`] of lines, so memory stays
//! flat whatever the log's size.

use std::io::SeekFrom;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};

use crate::{LogError, MAX_LINE_BYTES};

/// At most this many bytes of lines per page.
pub const MAX_PAGE_BYTES: usize = 1 << 20;
/// At most this many lines per page.
pub const MAX_PAGE_LINES: usize = 10_000;

/// Lines read from a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Whole lines, without their `\n`.
    pub lines: Vec<String>,
    /// Where the next page starts.
    pub next_offset: u64,
    /// Whether the file had no whole line after `next_offset` when read.
    pub at_end: bool,
}

/// Reads up to `limit` whole lines (and [`MAX_PAGE_BYTES`]) of the file at
/// `path` from `offset`. A line still being written (no `\n` yet) is left
/// for the next page. The offset must be 0, the file's size, or just after
/// a `\n`.
pub async fn read_page(path: &Path, offset: u64, limit: usize) -> Result<Page, LogError> {
    let mut file = tokio::fs::File::open(path).await.map_err(LogError::io("open", path))?;
    let size = file.metadata().await.map_err(LogError::io("read", path))?.len();
    if offset > size {
        return Err(LogError::BadOffset { offset, reason: "is past the end of the log" });
    }
    if offset > 0 {
        file.seek(SeekFrom::Start(offset - 1)).await.map_err(LogError::io("read", path))?;
        let before = file.read_u8().await.map_err(LogError::io("read", path))?;
        if before != b'\n' {
            return Err(LogError::BadOffset { offset, reason: "is not at the start of a line (pass a next_offset as it was given)" });
        }
    }
    // Only what was there when we looked: lines appended meanwhile wait
    // for the next page, which keeps `at_end` honest.
    let mut reader = BufReader::with_capacity(64 * 1024, file.take(size - offset));
    let mut page = Page { lines: Vec::new(), next_offset: offset, at_end: false };
    let mut bytes = 0;
    let mut buf = Vec::with_capacity(1024);
    // Lines Sluice writes are shorter; a longer one (a file written by
    // something else) is returned in pieces rather than read whole.
    let longest = (MAX_LINE_BYTES + 128) as u64;
    while page.lines.len() < limit.min(MAX_PAGE_LINES) && bytes < MAX_PAGE_BYTES {
        buf.clear();
        let n = (&mut reader).take(longest).read_until(b'\n', &mut buf).await.map_err(LogError::io("read", path))?;
        if n == 0 || (buf.last() != Some(&b'\n') && (n as u64) < longest) {
            break;
        }
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        page.lines.push(String::from_utf8_lossy(text).into_owned());
        page.next_offset += n as u64;
        bytes += n;
    }
    page.at_end = size - page.next_offset < 1 || !has_newline_after(&mut reader).await;
    Ok(page)
}

/// Whether a whole line follows in what is left of `reader`: only called
/// once a page is full, to look at most one buffer ahead.
async fn has_newline_after<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> bool {
    match reader.fill_buf().await {
        Ok([]) => false,
        // A complete line may lie beyond the buffer; "not at end" is the
        // safe answer: the caller just asks again.
        Ok(buf) => buf.contains(&b'\n') || buf.len() >= 64 * 1024,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_are_whole_lines_from_byte_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "one\ntwo\nthree\npartial").unwrap();
        let first = read_page(&path, 0, 2).await.unwrap();
        assert_eq!(first, Page { lines: vec!["one".into(), "two".into()], next_offset: 8, at_end: false });
        let second = read_page(&path, first.next_offset, 100).await.unwrap();
        assert_eq!(second, Page { lines: vec!["three".into()], next_offset: 14, at_end: true });
        // The partial line is read once it is complete.
        std::fs::write(&path, "one\ntwo\nthree\npartial line\n").unwrap();
        let third = read_page(&path, second.next_offset, 100).await.unwrap();
        assert_eq!(third, Page { lines: vec!["partial line".into()], next_offset: 27, at_end: true });
        assert_eq!(read_page(&path, 27, 100).await.unwrap(), Page { lines: vec![], next_offset: 27, at_end: true });
    }

    #[tokio::test]
    async fn bad_offsets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "one\ntwo\n").unwrap();
        let error = read_page(&path, 2, 10).await.unwrap_err();
        assert!(matches!(error, LogError::BadOffset { offset: 2, .. }), "{error}");
        let error = read_page(&path, 9, 10).await.unwrap_err();
        assert_eq!(error.to_string(), "offset 9 is past the end of the log");
        assert!(matches!(read_page(&dir.path().join("none"), 0, 1).await, Err(LogError::Io { .. })));
    }
}
