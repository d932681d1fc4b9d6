//! The line format of attempt logs:
//!
//! ```text
//! 2026-11-21T10:00:00.123Z [out] text the task printed
//! 2026-11-21T10:00:01.456Z [sluice] exit code 0 after 1.3s
//! ```
//!
//! The timestamp is when the worker read the line (UTC, milliseconds).
//! `[out]` is the task's output: stdout and stderr share one pipe, so that
//! their lines keep the order they were written in. `[sluice]` lines are
//! the worker's own (parameters, command line, exit, duration, kill reason).

use chrono::{DateTime, Utc};

/// Longer output lines are cut into several log lines, so that a task
/// printing megabytes without a newline cannot make anyone hold it at once.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Who wrote a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The task's stdout or stderr.
    Out,
    /// The worker, about the attempt.
    Sluice,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Out => "out",
            Source::Sluice => "sluice",
        }
    }
}

/// One log line, with its `\n`. `text` is raw bytes: invalid UTF-8
/// becomes U+FFFD, control characters but tab and escape (colours) become
/// U+FFFD too, so that a line stays one line for every reader (SSE treats
/// a lone `\r` as a line break); one trailing `\r` (CRLF output) is dropped.
pub fn format_line(at: DateTime<Utc>, source: Source, text: &[u8]) -> String {
    let mut line = String::with_capacity(text.len() + 40);
    push_line(&mut line, &timestamp(at), source, text);
    line
}

/// The timestamp of a line, to format once for lines read together.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Appends one line (see [`format_line`]) stamped with `stamp`, a
/// [`timestamp`], to `out`.
pub fn push_line(out: &mut String, stamp: &str, source: Source, text: &[u8]) {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let text = String::from_utf8_lossy(text);
    out.push_str(stamp);
    out.push_str(" [");
    out.push_str(source.as_str());
    out.push_str("] ");
    if text.chars().any(|c| c.is_control() && c != '\t') {
        out.extend(text.chars().map(|c| if c.is_control() && c != '\t' && c != '\u{1b}' { '\u{fffd}' } else { c }));
    } else {
        out.push_str(&text);
    }
    out.push('\n');
}

/// The text of a formatted `[out]` line, if it is one.
pub fn output_text(line: &str) -> Option<&str> {
    line.split_once(" [out] ").map(|(_, text)| text.trim_end_matches('\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_timestamped_tagged_and_kept_on_one_line() {
        let at = DateTime::parse_from_rfc3339("2026-11-21T10:00:00.123456Z").unwrap().with_timezone(&Utc);
        assert_eq!(format_line(at, Source::Out, b"hello"), "2026-11-21T10:00:00.123Z [out] hello\n");
        assert_eq!(format_line(at, Source::Sluice, b"exit code 0"), "2026-11-21T10:00:00.123Z [sluice] exit code 0\n");
        assert_eq!(format_line(at, Source::Out, b"crlf\r"), "2026-11-21T10:00:00.123Z [out] crlf\n");
        assert_eq!(format_line(at, Source::Out, b"a\rb\0\xff\tc\x1b[0m"), "2026-11-21T10:00:00.123Z [out] a\u{fffd}b\u{fffd}\u{fffd}\tc\u{1b}[0m\n");
        assert_eq!(output_text("2026-11-21T10:00:00.123Z [out] ${setValue(a=1)}\n"), Some("${setValue(a=1)}"));
        assert_eq!(output_text("2026-11-21T10:00:00.123Z [sluice] x\n"), None);
    }

}
