//! `sluice logs`: a task instance's log, whole or followed; and the log
//! following that `run --wait --logs` does for every task of a run.

use std::collections::HashSet;
use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use sluice_api::types::WorkflowInstanceView;
use tokio::task::JoinSet;

use super::client::{Client, ClientError};
use super::Server;

/// Lines per page when printing a log whole.
const PAGE: u32 = 5000;

#[derive(Args)]
pub struct LogsArgs {
    /// Task instance id (the ID column of `sluice status`).
    task_id: i64,
    /// Which attempt (default: the current one).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    attempt: Option<u32>,
    /// Keep printing new lines as the task writes them, until it ends.
    #[arg(long, short = 'f')]
    follow: bool,
    #[command(flatten)]
    server: Server,
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    if args.follow {
        client.follow_log(args.task_id, args.attempt, |line| println!("{line}")).await?;
        return Ok(ExitCode::SUCCESS);
    }
    // What is written so far, page by page (a running task's log goes on
    // growing; `-f` follows it).
    let mut offset = 0;
    let stdout = std::io::stdout();
    loop {
        let page = client.log_page(args.task_id, args.attempt, offset, PAGE).await?.value;
        let mut out = stdout.lock();
        for line in &page.lines {
            writeln!(out, "{line}")?;
        }
        offset = page.next_offset;
        if page.finished || page.lines.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Follows the log of every task of a run as it starts (and of every
/// later attempt), printing each line prefixed by `[task] `.
#[derive(Default)]
pub(super) struct RunLogs {
    followed: HashSet<(i64, u32)>,
    following: JoinSet<()>,
}

impl RunLogs {
    /// Starts following the attempts that started since the last look.
    pub fn update(&mut self, client: &Client, instance: &WorkflowInstanceView) {
        for task in instance.tasks.as_deref().unwrap_or_default() {
            // A host means the attempt was taken by a worker and has a log.
            if task.host.is_none() || matches!(task.state.as_str(), "submitted" | "dispatched" | "retry_wait") {
                continue;
            }
            if !self.followed.insert((task.id, task.attempt)) {
                continue;
            }
            let (client, name, id, attempt) = (client.clone(), task.name.clone(), task.id, task.attempt);
            self.following.spawn(async move {
                let prefix = format!("[{name}] ");
                let followed = client.follow_log(id, Some(attempt), |line| println!("{prefix}{line}")).await;
                if let Err(error) = followed {
                    // A task that failed before it could log, for instance.
                    if !matches!(&error, ClientError::Api(_, status) if status.as_u16() == 404) {
                        eprintln!("sluice: log of {name} (task instance {id}, attempt {attempt}): {error}");
                    }
                }
            });
        }
    }

    /// Waits for the followed logs to end (their attempts are over, so
    /// only what is in flight is left to print).
    pub async fn finish(mut self) {
        while self.following.join_next().await.is_some() {}
    }
}
