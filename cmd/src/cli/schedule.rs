//! `sluice schedule PROJECT/WORKFLOW [show|online|offline|preview]`: a
//! workflow's schedule (set in its file's `schedule:` and stored by
//! `sluice apply`), switched online or offline, and its next fire times.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use sluice_api::types::PreviewQuery;

use super::output::{self, Format};
use super::run::target;
use super::{Output, Server};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// The schedule and whether it is online.
    Show,
    /// Start firing it.
    Online,
    /// Stop firing it (runs already started go on).
    Offline,
    /// Its next fire times, in its time zone.
    Preview,
}

#[derive(Args)]
pub struct ScheduleArgs {
    /// The workflow, as PROJECT/WORKFLOW.
    #[arg(value_name = "PROJECT/WORKFLOW", value_parser = target)]
    target: (String, String),
    #[arg(value_enum, default_value_t = Action::Show)]
    action: Action,
    /// With `preview`: how many fire times (1 to 100; default 5).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    count: Option<u32>,
    /// With `preview`: the fire times after this RFC 3339 time (default: now).
    #[arg(long, value_name = "TIME")]
    after: Option<String>,
    #[command(flatten)]
    server: Server,
    #[command(flatten)]
    output: Output,
}

pub async fn schedule(args: ScheduleArgs) -> anyhow::Result<ExitCode> {
    if args.action != Action::Preview && (args.count.is_some() || args.after.is_some()) {
        anyhow::bail!("--count and --after go with `preview`");
    }
    let client = args.server.client()?;
    let (project, workflow) = &args.target;
    let json = args.output.output == Format::Json;
    match args.action {
        Action::Show | Action::Online | Action::Offline => {
            let answer = match args.action {
                Action::Show => client.schedule(project, workflow).await?,
                action => client.schedule_online(project, workflow, action == Action::Online).await?,
            };
            if json {
                output::print_json(&answer.json);
            } else {
                print!("{}", output::schedule(&answer.value));
            }
        }
        Action::Preview => {
            let query = PreviewQuery { count: args.count.map(|n| n.to_string()), after: args.after.clone() };
            let answer = client.schedule_preview(project, workflow, &query).await?;
            if json {
                output::print_json(&answer.json);
            } else {
                print!("{}", output::preview(&answer.value));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
