//! The command-line client: `apply`, `validate`, `run`, `status`,
//! `instances`, `stop`, `kill`, `rerun`, `recover`, `pause`, `resume`,
//! `force-success`, `schedule`, `backfill`, `backfill-status`,
//! `backfill-stop`, `logs`. Everything but `validate` goes through the REST API;
//! nothing here touches the database or the registry.
//!
//! Exit codes: 0 done; 1 what `--wait` waited on did not succeed (a
//! workflow instance failed or was stopped; a backfill had a run that did
//! not succeed, or was stopped); 2 the command could not be done (bad
//! usage or input, the server refused or could not be reached).

mod apply;
mod backfill;
mod client;
mod commands;
mod logs;
mod output;
mod run;
mod schedule;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use client::Client;
use sluice_api::types::InstanceQuery;
use output::Format;

/// The workflow instance `run --wait` waited on failed or was stopped.
const FAILED: u8 = 1;
/// Usage, input or server error.
const ERROR: u8 = 2;

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create or update workflows (and their projects) from YAML/JSON files.
    Apply {
        #[command(flatten)]
        files: Files,
        #[command(flatten)]
        server: Server,
    },
    /// Check workflow files without a server.
    Validate {
        #[command(flatten)]
        files: Files,
    },
    /// Start a run of a workflow; prints the new workflow instance.
    Run(run::RunArgs),
    /// Show a workflow instance and its task instances.
    Status {
        /// Workflow instance id.
        id: i64,
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        output: Output,
    },
    /// List workflow instances, newest first.
    Instances {
        #[arg(long)]
        project: Option<String>,
        /// Only this workflow (by name).
        #[arg(long)]
        workflow: Option<String>,
        /// Only instances in this state (`running`, `success`, `failure`, ...).
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
        /// Continue after a previous page (the `next_cursor` it printed).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        output: Output,
    },
    /// Stop a workflow instance: running tasks are killed, nothing new starts.
    Stop {
        /// Workflow instance id.
        id: i64,
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        output: Output,
    },
    /// Print a task instance's log (-f: follow it until the task ends).
    Logs(logs::LogsArgs),
    /// Kill one running task instance.
    Kill {
        /// Task instance id (the ID column of `sluice status`).
        task_id: i64,
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        output: Output,
    },
    /// Rerun a finished workflow instance: every task again, in the same instance.
    Rerun(commands::RestartArgs),
    /// Recover a failed or stopped workflow instance: its failed and killed
    /// tasks run again with what is below them; succeeded tasks are kept.
    Recover(commands::RestartArgs),
    /// Pause a running workflow instance: running tasks finish, nothing new starts.
    Pause {
        /// Workflow instance id.
        id: i64,
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        output: Output,
    },
    /// Resume a paused workflow instance.
    Resume(commands::RestartArgs),
    /// Mark a failed or killed task instance successful so that what is
    /// below it runs (a failed or stopped instance is restarted for that).
    ForceSuccess(commands::ForceSuccessArgs),
    /// Show a workflow's schedule, switch it online or offline, or preview
    /// its next fire times.
    Schedule(schedule::ScheduleArgs),
    /// Run a workflow once per past date (--from/--to or --date), each run
    /// with its date's schedule time; serial unless --parallel.
    Backfill(backfill::BackfillArgs),
    /// Show a backfill and its runs.
    BackfillStatus {
        /// Backfill id.
        id: i64,
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        output: Output,
    },
    /// Stop a backfill: no new runs; its unfinished runs are stopped.
    BackfillStop {
        /// Backfill id.
        id: i64,
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Args)]
pub struct Files {
    /// A workflow file, or a directory: every *.yaml, *.yml and *.json in
    /// it. Repeatable.
    #[arg(short = 'f', long = "file", value_name = "FILE|DIR", required = true)]
    paths: Vec<PathBuf>,
}

#[derive(Args)]
pub struct Server {
    /// The Sluice API server.
    #[arg(long, env = "SLUICE_SERVER", default_value = client::DEFAULT_SERVER, value_name = "URL")]
    server: String,
}

impl Server {
    fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.server)?)
    }
}

#[derive(Args)]
pub struct Output {
    /// `table` for people, `json` (the API's answer) for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    output: Format,
}

/// Runs a client command and turns its outcome into the exit code.
pub fn main(command: ClientCommand) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(dispatch(command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("sluice: {error:#}");
            ExitCode::from(ERROR)
        }
    }
}

async fn dispatch(command: ClientCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClientCommand::Apply { files, server } => apply::apply(&files.paths, &server.client()?).await,
        ClientCommand::Validate { files } => Ok(apply::validate(&files.paths)),
        ClientCommand::Run(args) => run::run(args).await,
        ClientCommand::Status { id, server, output } => {
            let answer = server.client()?.instance(id).await?;
            match output.output {
                Format::Json => output::print_json(&answer.json),
                Format::Table => print!("{}", output::instance(&answer.value)),
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Instances { project, workflow, state, limit, cursor, server, output } => {
            let query = InstanceQuery { project, workflow, state, limit: limit.map(|n| n.to_string()), cursor };
            let answer = server.client()?.instances(&query).await?;
            match output.output {
                Format::Json => output::print_json(&answer.json),
                Format::Table => {
                    print!("{}", output::instances(&answer.value.items));
                    if let Some(cursor) = &answer.value.next_cursor {
                        eprintln!("more: --cursor {cursor}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Stop { id, server, output } => {
            let answer = server.client()?.stop(id).await?;
            match output.output {
                Format::Json => output::print_json(&answer.json),
                Format::Table => println!("stop requested for instance {id}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Logs(args) => logs::logs(args).await,
        ClientCommand::Rerun(args) => commands::restart("rerun", args).await,
        ClientCommand::Recover(args) => commands::restart("recover", args).await,
        ClientCommand::Pause { id, server, output } => commands::pause(id, server, output).await,
        ClientCommand::Resume(args) => commands::restart("resume", args).await,
        ClientCommand::ForceSuccess(args) => commands::force_success(args).await,
        ClientCommand::Schedule(args) => schedule::schedule(args).await,
        ClientCommand::Backfill(args) => backfill::backfill(args).await,
        ClientCommand::BackfillStatus { id, server, output } => backfill::status(id, server, output).await,
        ClientCommand::BackfillStop { id, server, output } => backfill::stop(id, server, output).await,
        ClientCommand::Kill { task_id, server, output } => {
            let answer = server.client()?.kill(task_id).await?;
            match output.output {
                Format::Json => output::print_json(&answer.json),
                Format::Table => println!(
                    "kill requested for task instance {task_id} of instance {}",
                    answer.value.workflow_instance_id
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
