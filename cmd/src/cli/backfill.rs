//! `sluice backfill P/W --from D --to D` (or `--date D`...): one run of the
//! workflow per date, each with its date's schedule time; `--wait` follows
//! the runs to the end. `backfill-status` and `backfill-stop` act on one by
//! its id.

use std::process::ExitCode;
use std::time::Duration;

use chrono::NaiveDate;
use clap::{ArgGroup, Args};
use sluice_api::types::{BackfillRequest, BackfillView, MAX_BACKFILL_PARALLELISM};
use sluice_domain::{BackfillState, Params};

use super::client::Client;
use super::output::{self, Format, Progress};
use super::run::{param, target};
use super::{Output, Server, FAILED};

/// How often `--wait` asks the API how the backfill is going.
const POLL: Duration = Duration::from_millis(250);

#[derive(Args)]
#[command(group(ArgGroup::new("days").required(true).args(["from", "dates"])))]
pub struct BackfillArgs {
    /// The workflow, as PROJECT/WORKFLOW.
    #[arg(value_name = "PROJECT/WORKFLOW", value_parser = target)]
    target: (String, String),
    /// The first date (YYYY-MM-DD), with --to.
    #[arg(long, value_name = "DATE", value_parser = date, requires = "to")]
    from: Option<NaiveDate>,
    /// The last date (YYYY-MM-DD), included.
    #[arg(long, value_name = "DATE", value_parser = date, requires = "from")]
    to: Option<NaiveDate>,
    /// A date to run (YYYY-MM-DD), instead of --from and --to. Repeatable.
    #[arg(long = "date", value_name = "DATE", value_parser = date, conflicts_with_all = ["from", "to"])]
    dates: Vec<NaiveDate>,
    /// Run N dates at once (2 to 100); without it, one at a time.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=i64::from(MAX_BACKFILL_PARALLELISM)))]
    parallel: Option<u32>,
    /// The newest date first.
    #[arg(long)]
    desc: bool,
    /// A run-time parameter of every run, overriding the workflow's. Repeatable.
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE", value_parser = param)]
    params: Vec<(String, String)>,
    /// Print the dates and schedule times it would run; start nothing.
    #[arg(long, conflicts_with = "wait")]
    dry_run: bool,
    /// Follow the runs to the end; exit 0 if every one succeeded, 1 if not.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    server: Server,
    #[command(flatten)]
    output: Output,
}

/// `YYYY-MM-DD`, as the API takes it.
fn date(text: &str) -> Result<NaiveDate, String> {
    let expected = || format!("expected a date as YYYY-MM-DD, e.g. 2026-03-01, got `{text}`");
    if text.len() != 10 {
        return Err(expected());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| expected())
}

fn request(args: &BackfillArgs) -> BackfillRequest {
    let day = |d: &NaiveDate| d.format("%Y-%m-%d").to_string();
    BackfillRequest {
        start: args.from.as_ref().map(day),
        end: args.to.as_ref().map(day),
        dates: (!args.dates.is_empty()).then(|| args.dates.iter().map(day).collect()),
        mode: Some(if args.parallel.is_some() { "parallel" } else { "serial" }.to_owned()),
        parallelism: args.parallel,
        order: args.desc.then(|| "desc".to_owned()),
        params: (!args.params.is_empty()).then(|| args.params.iter().cloned().collect::<Params>()),
        dry_run: None,
    }
}

pub async fn backfill(args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let (project, workflow) = &args.target;
    let json = args.output.output == Format::Json;
    let request = request(&args);
    if args.dry_run {
        let answer = client.preview_backfill(project, workflow, &request).await?;
        if json {
            output::print_json(&answer.json);
        } else {
            print!("{}", output::backfill_preview(&answer.value));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let answer = client.create_backfill(project, workflow, &request).await?;
    let id = answer.value.backfill_id;
    let line = format!(
        "backfill {id}: {project}/{workflow}, {}, {}",
        output::runs_text(answer.value.runs as usize),
        output::at_once(args.parallel.unwrap_or(1))
    );
    if !args.wait {
        if json {
            output::print_json(&answer.json);
        } else {
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        println!("{line}");
    }
    let (end, end_json) = wait(&client, id).await?;
    if json {
        output::print_json(&end_json);
    } else {
        println!("{}", summary(&end));
    }
    Ok(if succeeded(&end) { ExitCode::SUCCESS } else { ExitCode::from(FAILED) })
}

/// `sluice backfill-status ID`.
pub async fn status(id: i64, server: Server, output: Output) -> anyhow::Result<ExitCode> {
    let answer = server.client()?.backfill(id).await?;
    match output.output {
        Format::Json => output::print_json(&answer.json),
        Format::Table => print!("{}", output::backfill(&answer.value)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice backfill-stop ID`.
pub async fn stop(id: i64, server: Server, output: Output) -> anyhow::Result<ExitCode> {
    let answer = server.client()?.stop_backfill(id).await?;
    match output.output {
        Format::Json => output::print_json(&answer.json),
        Format::Table => {
            let stopping = &answer.value.stopping;
            if stopping.is_empty() {
                println!("backfill {id} stopped; none of its runs was going");
            } else {
                let ids: Vec<String> = stopping.iter().map(i64::to_string).collect();
                println!("backfill {id} stopped; stopping {}: instance {}", output::runs_text(stopping.len()), ids.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls the backfill until it is over (done, or stopped with every run
/// ended), showing progress; returns its last view.
async fn wait(client: &Client, id: i64) -> anyhow::Result<(BackfillView, serde_json::Value)> {
    let mut progress = Progress::on_stderr();
    loop {
        let answer = match client.backfill(id).await {
            Ok(answer) => answer,
            Err(error) => {
                progress.finish();
                return Err(error.into());
            }
        };
        if is_over(&answer.value) {
            progress.finish();
            return Ok((answer.value, answer.json));
        }
        progress.show(&progress_line(&answer.value));
        tokio::time::sleep(POLL).await;
    }
}

fn is_over(view: &BackfillView) -> bool {
    view.state != BackfillState::Running.as_str() && view.runs.iter().all(output::run_ended)
}

/// Done, and every one of its runs succeeded.
fn succeeded(view: &BackfillView) -> bool {
    view.state == BackfillState::Done.as_str()
        && view.runs.len() == view.total_runs as usize
        && view.runs.iter().all(output::run_succeeded)
}

/// `backfill 3 running: 4/10 runs done; now: 2026-03-05 (instance 17), 2026-03-06 (instance 18, submitted)`
fn progress_line(view: &BackfillView) -> String {
    let ended = view.runs.iter().filter(|r| output::run_ended(r)).count();
    let mut line = format!("backfill {} {}: {ended}/{} runs done", view.id, view.state, view.total_runs);
    let active: Vec<String> = view
        .runs
        .iter()
        .filter(|r| !output::run_ended(r))
        .map(|r| match r.state.as_str() {
            "running" => format!("{} (instance {})", r.date, r.workflow_instance_id),
            state => format!("{} (instance {}, {state})", r.date, r.workflow_instance_id),
        })
        .collect();
    if !active.is_empty() {
        line.push_str(&format!("; now: {}", active.join(", ")));
    }
    line
}

/// The last line of `backfill --wait`: how it ended, and which dates did
/// not succeed.
fn summary(view: &BackfillView) -> String {
    let succeeded = view.runs.iter().filter(|r| output::run_succeeded(r)).count();
    let mut line = format!("backfill {} {}: {succeeded}/{} runs succeeded", view.id, view.state, view.total_runs);
    let failed: Vec<String> = view
        .runs
        .iter()
        .filter(|r| !output::run_succeeded(r))
        .map(|r| format!("{} (instance {}, {})", r.date, r.workflow_instance_id, r.state))
        .collect();
    if !failed.is_empty() {
        line.push_str(&format!("; {}", failed.join(", ")));
    }
    if !self::succeeded(view) {
        line.push_str(&format!(" (details: sluice backfill-status {})", view.id));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use sluice_api::types::BackfillRunView;

    #[test]
    fn dates_are_year_month_day() {
        assert_eq!(date("2024-02-29").unwrap(), NaiveDate::from_ymd_opt(2024, 2, 29).unwrap());
        for bad in ["2026-02-30", "2026-3-1", "20260301", "yesterday", "2026-03-01T00:00:00Z"] {
            assert!(date(bad).unwrap_err().contains("YYYY-MM-DD"), "{bad}");
        }
    }

    fn run(id: i64, date: &str, state: &str) -> BackfillRunView {
        BackfillRunView {
            workflow_instance_id: id,
            date: date.into(),
            schedule_time: format!("{date}T00:00:00+00:00"),
            state: state.into(),
            start_time: None,
            end_time: None,
        }
    }

    fn view(state: &str, total: u32, runs: Vec<BackfillRunView>) -> BackfillView {
        BackfillView {
            id: 3,
            project: "demo".into(),
            workflow: "daily".into(),
            workflow_version: 1,
            state: state.into(),
            parallelism: 2,
            timezone: "UTC".into(),
            params: Params::new(),
            created_runs: runs.len() as u32,
            total_runs: total,
            runs,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn progress_counts_ended_runs_and_names_the_going_ones() {
        let going = view("running", 4, vec![run(7, "2026-03-01", "success"), run(8, "2026-03-02", "running"), run(9, "2026-03-03", "submitted")]);
        assert_eq!(
            progress_line(&going),
            "backfill 3 running: 1/4 runs done; now: 2026-03-02 (instance 8), 2026-03-03 (instance 9, submitted)"
        );
        assert!(!is_over(&going));
        let stopping = view("stopped", 4, vec![run(7, "2026-03-01", "success"), run(8, "2026-03-02", "ready_stop")]);
        assert!(!is_over(&stopping), "a stopped backfill is over once its runs are");
    }

    #[test]
    fn only_a_done_backfill_of_successes_succeeds() {
        let done = view("done", 2, vec![run(7, "2026-03-01", "success"), run(8, "2026-03-02", "success")]);
        assert!(is_over(&done) && succeeded(&done));
        assert_eq!(summary(&done), "backfill 3 done: 2/2 runs succeeded");
        let failed = view("done", 2, vec![run(7, "2026-03-01", "success"), run(8, "2026-03-02", "failure")]);
        assert!(!succeeded(&failed));
        assert_eq!(
            summary(&failed),
            "backfill 3 done: 1/2 runs succeeded; 2026-03-02 (instance 8, failure) (details: sluice backfill-status 3)"
        );
        let stopped = view("stopped", 3, vec![run(7, "2026-03-01", "success"), run(8, "2026-03-02", "stopped")]);
        assert!(is_over(&stopped) && !succeeded(&stopped));
        assert!(summary(&stopped).starts_with("backfill 3 stopped: 1/3 runs succeeded; 2026-03-02 (instance 8, stopped)"));
    }
}
