//! The run commands on an existing workflow instance: `rerun`, `recover`,
//! `pause`, `resume` and `force-success`, each a request to the API (which
//! refuses, with the reason, what the instance's state does not allow);
//! `--wait` follows the instance to its end like `run --wait`.

use std::process::ExitCode;

use clap::Args;
use sluice_api::types::RequestAccepted;

use super::client::Answer;
use super::output::{self, Format};
use super::run::{ended, wait};
use super::{Output, Server};

/// A command on a workflow instance that (re)starts it, so that waiting
/// for its end makes sense.
#[derive(Args)]
pub struct RestartArgs {
    /// Workflow instance id.
    id: i64,
    /// Follow the instance to its end; exit 0 if it succeeded, 1 if not.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    server: Server,
    #[command(flatten)]
    output: Output,
}

/// `rerun`, `recover`, `resume`: the API path segment is the verb.
pub async fn restart(verb: &str, args: RestartArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let answer = client.instance_action(args.id, verb).await?;
    let line = requested(verb, &format!("instance {}", args.id), &answer.value);
    follow(&client, answer, line, args.wait, args.output.output).await
}

/// `sluice pause ID`.
pub async fn pause(id: i64, server: Server, output: Output) -> anyhow::Result<ExitCode> {
    let answer = server.client()?.instance_action(id, "pause").await?;
    match output.output {
        Format::Json => output::print_json(&answer.json),
        Format::Table => println!("{}", requested("pause", &format!("instance {id}"), &answer.value)),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct ForceSuccessArgs {
    /// Task instance id (the ID column of `sluice status`).
    task_id: i64,
    /// Follow its workflow instance to its end; exit 0 if it succeeded, 1 if not.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    server: Server,
    #[command(flatten)]
    output: Output,
}

/// `sluice force-success TASK_ID`.
pub async fn force_success(args: ForceSuccessArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let answer = client.force_success(args.task_id).await?;
    let what = format!("task instance {} of instance {}", args.task_id, answer.value.workflow_instance_id);
    let line = requested("force-success", &what, &answer.value);
    follow(&client, answer, line, args.wait, args.output.output).await
}

/// `rerun requested for instance 7 (run 2)`.
fn requested(verb: &str, what: &str, accepted: &RequestAccepted) -> String {
    match accepted.run {
        Some(run) => format!("{verb} requested for {what} (run {run})"),
        None => format!("{verb} requested for {what}"),
    }
}

/// Prints the answer, or with `wait`, follows the instance to its end.
async fn follow(
    client: &super::client::Client,
    answer: Answer<RequestAccepted>,
    line: String,
    wait_for_end: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let json = format == Format::Json;
    if !wait_for_end {
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
    let (end, end_json) = wait(client, answer.value.workflow_instance_id, None, answer.value.run, None).await?;
    Ok(ended(&end, &end_json, None, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_line_names_the_run_to_come() {
        let accepted = |run| RequestAccepted { workflow_instance_id: 7, command_id: 3, run };
        assert_eq!(requested("rerun", "instance 7", &accepted(Some(2))), "rerun requested for instance 7 (run 2)");
        assert_eq!(requested("pause", "instance 7", &accepted(None)), "pause requested for instance 7");
    }
}
