//! What the CLI prints for people: aligned tables, times and durations, and
//! the live progress line of `sluice run --wait`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::{DateTime, Local, Utc};
use serde_json::Value;
use sluice_api::types::{
    BackfillPreview, BackfillRunView, BackfillView, ScheduleBody, ScheduleView, SchedulePreview, TaskInstanceView, WorkflowInstanceView,
};
use sluice_domain::WorkflowState;

/// `--output`: tables for people, or the API's JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// Prints the API's answer as it was sent (pretty-printed).
pub fn print_json(json: &Value) {
    println!("{}", serde_json::to_string_pretty(json).expect("a JSON value prints"));
}

/// Columns padded to their widest cell; the last column is not padded.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table { header: header.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  "));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// An instant in the reader's time zone, to the second.
pub fn time(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".into())
}

/// How long something took, or has been running so far.
pub fn elapsed(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> String {
    match start {
        Some(start) => duration((end.unwrap_or_else(Utc::now) - start).to_std().unwrap_or_default()),
        None => "-".into(),
    }
}

/// `850ms`, `4.2s`, `3m 05s`, `2h 01m`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.subsec_millis()),
        1..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
    }
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// `1`, or `2/3` for a task that may be retried.
fn attempt(task: &TaskInstanceView) -> String {
    if task.max_retries > 0 {
        format!("{}/{}", task.attempt, task.max_retries + 1)
    } else {
        task.attempt.to_string()
    }
}

/// `sluice status`: the instance, then its tasks.
pub fn instance(wi: &WorkflowInstanceView) -> String {
    let mut out = format!(
        "instance {}  {}/{} version {}  {}\n",
        wi.id, wi.project, wi.workflow, wi.workflow_version, wi.state
    );
    out.push_str(&format!(
        "started {}  ended {}  took {}\n",
        time(wi.start_time),
        time(wi.end_time),
        elapsed(wi.start_time, wi.end_time)
    ));
    out.push_str(&format!(
        "command {}  priority {}  worker group {}  on failure {}\n",
        wi.command, wi.priority, wi.worker_group, wi.failure_strategy
    ));
    if !wi.start_tasks.is_empty() {
        out.push_str(&format!(
            "start tasks {} ({})\n",
            wi.start_tasks.join(", "),
            wi.scope.as_deref().unwrap_or("only")
        ));
    }
    if !wi.params.is_empty() {
        let params: Vec<String> = wi.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("params {}\n", params.join(" ")));
    }
    let tasks = wi.tasks.as_deref().unwrap_or_default();
    out.push('\n');
    if tasks.is_empty() {
        out.push_str("no task has started yet\n");
        return out;
    }
    let mut table = Table::new(&["ID", "TASK", "STATE", "ATTEMPT", "HOST", "START", "DURATION", "EXIT CODE", "REASON"]);
    for t in tasks {
        table.row(vec![
            t.id.to_string(),
            t.name.clone(),
            t.state.clone(),
            attempt(t),
            or_dash(t.host.as_deref()),
            time(t.start_time),
            elapsed(t.start_time, t.end_time),
            or_dash(t.exit_code),
            reason(t),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// Why a task ended, on one line (the last column: not padded).
pub fn reason(task: &TaskInstanceView) -> String {
    match task.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        Some(reason) => reason.split_whitespace().collect::<Vec<_>>().join(" "),
        None => "-".into(),
    }
}

/// `sluice instances`.
pub fn instances(items: &[WorkflowInstanceView]) -> String {
    let mut table = Table::new(&["ID", "WORKFLOW", "VERSION", "STATE", "COMMAND", "START", "DURATION"]);
    for wi in items {
        table.row(vec![
            wi.id.to_string(),
            format!("{}/{}", wi.project, wi.workflow),
            wi.workflow_version.to_string(),
            wi.state.clone(),
            wi.command.clone(),
            time(wi.start_time),
            elapsed(wi.start_time, wi.end_time),
        ]);
    }
    table.render()
}

/// `cron 0 30 2 * * ? in Asia/Shanghai`, `every 5m, 10 times`.
pub fn trigger(body: &ScheduleBody) -> String {
    match (&body.cron, &body.every) {
        (Some(cron), _) => format!("cron {cron} in {}", body.timezone.as_deref().unwrap_or("UTC")),
        (None, Some(every)) => match body.times {
            Some(1) => format!("every {every}, once"),
            Some(times) => format!("every {every}, {times} times"),
            None => format!("every {every}"),
        },
        (None, None) => "-".into(),
    }
}

/// `sluice schedule P/W` (and `online`, `offline`).
pub fn schedule(view: &ScheduleView) -> String {
    let state = if view.online { "online" } else { "offline" };
    let body = &view.schedule;
    let mut table = Table::new(&["", ""]);
    table.row(vec!["schedule".into(), trigger(body)]);
    table.row(vec!["start".into(), body.start.clone().unwrap_or_else(|| "-".into())]);
    table.row(vec!["end".into(), body.end.clone().unwrap_or_else(|| "-".into())]);
    table.row(vec!["misfire".into(), body.misfire.clone().unwrap_or_else(|| "-".into())]);
    table.row(vec!["last fire".into(), time(view.last_fire)]);
    // The table's empty header line is not wanted.
    let rows = table.render();
    let rows = rows.split_once('\n').map(|(_, rest)| rest).unwrap_or_default();
    format!("{}/{}: {state}\n{rows}", view.project, view.workflow)
}

/// `sluice schedule P/W preview`: one fire time a line, after a header.
pub fn preview(preview: &SchedulePreview) -> String {
    let name = format!("{}/{}", preview.project, preview.workflow);
    if preview.times.is_empty() {
        return format!("{name} will not fire again (past its end, or its times used up)\n");
    }
    let offline = if preview.online { "" } else { "; offline: these fire once it is online" };
    let mut out = format!("next {} fire times of {name} ({}{offline})\n", preview.times.len(), preview.timezone);
    for t in &preview.times {
        out.push_str(t);
        out.push('\n');
    }
    out
}

/// `1 run`, `10 runs`.
pub fn runs_text(n: usize) -> String {
    if n == 1 { "1 run".into() } else { format!("{n} runs") }
}

/// How many runs of a backfill go at once, in words.
pub fn at_once(parallelism: u32) -> String {
    if parallelism <= 1 { "one at a time".into() } else { format!("{parallelism} at a time") }
}

/// Whether a backfill run (a workflow instance) has ended.
pub fn run_ended(run: &BackfillRunView) -> bool {
    run.state.parse::<WorkflowState>().is_ok_and(|s| s.is_final())
}

pub fn run_succeeded(run: &BackfillRunView) -> bool {
    run.state == WorkflowState::Success.as_str()
}

/// `sluice backfill --dry-run`: the runs it would create, in order.
pub fn backfill_preview(preview: &BackfillPreview) -> String {
    let mut out = format!(
        "dry run: {}/{} version {} would backfill {}, {} (times in {})\n",
        preview.project,
        preview.workflow,
        preview.version,
        runs_text(preview.runs.len()),
        at_once(preview.parallelism),
        preview.timezone
    );
    let mut table = Table::new(&["DATE", "SCHEDULE TIME"]);
    for run in &preview.runs {
        table.row(vec![run.date.clone(), run.schedule_time.clone()]);
    }
    out.push_str(&table.render());
    out
}

/// `sluice backfill-status`: the backfill, then its runs in run order.
pub fn backfill(view: &BackfillView) -> String {
    let ended = view.runs.iter().filter(|r| run_ended(r)).count();
    let succeeded = view.runs.iter().filter(|r| run_succeeded(r)).count();
    let mut out = format!("backfill {}  {}/{} version {}  {}\n", view.id, view.project, view.workflow, view.workflow_version, view.state);
    out.push_str(&format!(
        "{}/{} runs created, {ended} ended, {succeeded} succeeded; {}; dates in {}\n",
        view.created_runs,
        view.total_runs,
        at_once(view.parallelism),
        view.timezone
    ));
    if !view.params.is_empty() {
        let params: Vec<String> = view.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("params {}\n", params.join(" ")));
    }
    out.push('\n');
    if view.runs.is_empty() {
        out.push_str("no run has been created yet\n");
        return out;
    }
    let mut table = Table::new(&["INSTANCE", "DATE", "SCHEDULE TIME", "STATE", "START", "DURATION"]);
    for run in &view.runs {
        table.row(vec![
            run.workflow_instance_id.to_string(),
            run.date.clone(),
            run.schedule_time.clone(),
            run.state.clone(),
            time(run.start_time),
            elapsed(run.start_time, run.end_time),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// The progress of `sluice run --wait` on stderr: one line redrawn in
/// place on a terminal, a new line for each change otherwise (logs, CI).
pub struct Progress {
    terminal: bool,
    last: String,
}

impl Progress {
    pub fn on_stderr() -> Progress {
        Progress { terminal: std::io::stderr().is_terminal(), last: String::new() }
    }

    /// One line per change, never redrawn: for when other output (task
    /// logs) is printed meanwhile.
    pub fn plain_on_stderr() -> Progress {
        Progress { terminal: false, last: String::new() }
    }

    pub fn show(&mut self, line: &str) {
        if line == self.last {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.terminal {
            // A line wider than the terminal wraps, and `\r` then redraws
            // only its last part: keep it within the width.
            let _ = write!(err, "\r\x1b[2K{}", fit(line, terminal_width()));
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.last = line.to_owned();
    }

    /// Clears the redrawn line, so that what follows starts on a clean one.
    pub fn finish(&mut self) {
        if self.terminal && !self.last.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
        self.last.clear();
    }
}

/// The terminal's width as the shell exports it, else the classic 80.
fn terminal_width() -> usize {
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).filter(|&w| w > 10).unwrap_or(80)
}

/// `line` cut to fewer than `width` characters, marked with `…` when cut.
fn fit(line: &str, width: usize) -> String {
    if line.chars().count() < width {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(2)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let mut table = Table::new(&["ID", "TASK", "STATE"]);
        table.row(vec!["1".into(), "extract_orders".into(), "success".into()]);
        table.row(vec!["12".into(), "load".into(), "-".into()]);
        assert_eq!(
            table.render(),
            "ID  TASK            STATE\n\
             1   extract_orders  success\n\
             12  load            -\n"
        );
    }

    #[test]
    fn schedules_read_as_their_file_writes_them() {
        let now = Utc::now();
        let view = ScheduleView {
            project: "demo".into(),
            workflow: "nightly".into(),
            online: false,
            schedule: ScheduleBody {
                cron: Some("0 30 2 * * ?".into()),
                timezone: Some("Asia/Shanghai".into()),
                start: Some("2026-01-01".into()),
                misfire: Some("run_once".into()),
                ..Default::default()
            },
            last_fire: None,
            created_at: now,
            updated_at: now,
        };
        assert_eq!(
            schedule(&view),
            "demo/nightly: offline\n\
             schedule   cron 0 30 2 * * ? in Asia/Shanghai\n\
             start      2026-01-01\n\
             end        -\n\
             misfire    run_once\n\
             last fire  -\n"
        );
        let every = ScheduleBody { every: Some("5m".into()), times: Some(10), ..Default::default() };
        assert_eq!(trigger(&every), "every 5m, 10 times");
        let mut p = SchedulePreview {
            project: "demo".into(),
            workflow: "nightly".into(),
            timezone: "America/New_York".into(),
            online: true,
            times: vec!["2026-03-08T03:00:00-04:00".into(), "2026-03-09T02:30:00-04:00".into()],
        };
        assert_eq!(
            preview(&p),
            "next 2 fire times of demo/nightly (America/New_York)\n2026-03-08T03:00:00-04:00\n2026-03-09T02:30:00-04:00\n"
        );
        p.times.clear();
        assert!(preview(&p).contains("will not fire again"));
    }

    #[test]
    fn progress_lines_fit_the_terminal() {
        assert_eq!(fit("short", 80), "short");
        assert_eq!(fit("0123456789abc", 10), "01234567…");
        assert_eq!(fit("0123456789abc", 10).chars().count(), 9);
    }

    #[test]
    fn durations_read_at_a_glance() {
        for (d, text) in [
            (Duration::from_millis(850), "850ms"),
            (Duration::from_millis(4_240), "4.2s"),
            (Duration::from_secs(185), "3m 05s"),
            (Duration::from_secs(7_260), "2h 01m"),
        ] {
            assert_eq!(duration(d), text);
        }
        assert_eq!(elapsed(None, None), "-");
        let start = Utc::now() - chrono::Duration::seconds(2);
        assert_eq!(elapsed(Some(start), Some(start + chrono::Duration::milliseconds(1500))), "1.5s");
    }
}
