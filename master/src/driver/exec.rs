//! Carrying out a run machine's effects.

use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;
use sluice_domain::*;
use sluice_logs::{LogKey, Source};
use sluice_registry::RegistryError;

use super::{coordinate, persist, Abort, Driver};
use crate::run::{Effect, Finished, KillOrder, Outcome, Put, QueueEntry, QueueRef, Report, TaskLog, TaskReport};
use crate::Shared;

/// Queue operations in flight at once, so that a huge fan-out (or a stop
/// of one) does not flood the registry session.
const IN_FLIGHT: usize = 256;

impl Driver {
    /// Carries out `effects` in order; the effects a result brings are
    /// carried out before the rest (see the protocol in `run`). Returns the
    /// final state once the run is over.
    pub(super) async fn execute(&mut self, effects: Vec<Effect>) -> Result<Option<WorkflowState>, Abort> {
        let mut stack = vec![effects.into_iter()];
        while let Some(top) = stack.last_mut() {
            let Some(effect) = top.next() else {
                stack.pop();
                continue;
            };
            let more = match effect {
                Effect::Write(write) => {
                    let (shared, fence) = (self.shared.clone(), self.machine.fence());
                    let written = persist!(shared, fence.workflow_instance_id, shared.store.write_run(fence, &write))?;
                    self.held.retain(|c| !write.consume.contains(c));
                    self.machine.persisted(written)
                }
                Effect::Queue(entries) => {
                    let results = self.put_all(entries).await?;
                    self.machine.queued(results, Utc::now())
                }
                Effect::Withdraw(entries) => {
                    let results = self.withdraw_all(entries).await?;
                    self.machine.withdrawn(results)
                }
                Effect::Kill(orders) => {
                    for order in orders {
                        send_kill(&self.shared, order);
                    }
                    Vec::new()
                }
                Effect::RunInMaster(entries) => {
                    // No task type placed in the master is known to this
                    // master: such a task fails with the reason, as one of
                    // an unknown type does on a worker.
                    let reports = entries
                        .into_iter()
                        .map(|entry| TaskReport {
                            task_instance_id: entry.dispatch.task_instance_id,
                            attempt: entry.dispatch.attempt,
                            worker: self.shared.addr.clone(),
                            at: Utc::now(),
                            report: Report::Finished(Finished {
                                outcome: Outcome::Failure,
                                exit_code: None,
                                reason: format!("task type `{}` runs in the master, and this master has no runner for it", entry.dispatch.task_type),
                                outputs: Params::new(),
                            }),
                        })
                        .collect();
                    self.machine.on_reports(reports)
                }
                Effect::CancelInMaster(_) => Vec::new(), // nothing runs in the master (see above)
                Effect::Log(logs) => {
                    write_logs(&self.shared, logs);
                    Vec::new()
                }
                Effect::Finish(state) => return Ok(Some(state)),
            };
            if !more.is_empty() {
                stack.push(more.into_iter());
            }
        }
        Ok(None)
    }

    /// Puts the entries in their queues, side by side. A put cut off by a
    /// registry outage may have been done (and its entry taken since), so it
    /// is not sent again here: the machine settles it later.
    async fn put_all(&self, entries: Vec<QueueEntry>) -> Result<Vec<(QueueEntry, Put)>, Abort> {
        let registry = self.shared.registry.clone();
        let puts = entries.into_iter().map(|entry| {
            let registry = registry.clone();
            // The queue gets the ticket; the dispatch waits on the board
            // for the worker that takes it.
            let payload = self.shared.dispatches.post(entry.dispatch.clone()).to_json();
            async move {
                let result = registry.queue_put(&entry.group, &entry.key, &payload).await;
                tracing::debug!(task_instance = %entry.dispatch.task_instance_id, attempt = entry.dispatch.attempt, group = %entry.group, key = %entry.key, "task dispatched");
                (entry, result)
            }
        });
        let results: Vec<(QueueEntry, Result<(), RegistryError>)> = futures::stream::iter(puts).buffer_unordered(IN_FLIGHT).collect().await;
        let mut out = Vec::with_capacity(results.len());
        for (entry, result) in results {
            match result {
                Ok(()) | Err(RegistryError::NodeExists { .. }) => out.push((entry, Put::Done)),
                Err(error) if error.is_transient() => out.push((entry, Put::Uncertain)),
                Err(error) => return Err(error.into()),
            }
        }
        Ok(out)
    }

    /// Takes entries back out of their queues: `true` for each one removed
    /// before a worker took it.
    async fn withdraw_all(&self, entries: Vec<QueueRef>) -> Result<Vec<(QueueRef, bool)>, Abort> {
        let id = self.machine.instance().id;
        let removals = entries.into_iter().map(|entry| {
            let shared = self.shared.clone();
            async move {
                let removed = coordinate!(shared, id, shared.registry.queue_remove(&entry.group, &entry.key));
                removed.map(|removed| (entry, removed))
            }
        });
        let results: Vec<Result<(QueueRef, bool), Abort>> = futures::stream::iter(removals).buffer_unordered(IN_FLIGHT).collect().await;
        let results: Vec<(QueueRef, bool)> = results.into_iter().collect::<Result<_, _>>()?;
        for (entry, removed) in &results {
            if let (true, Some(task)) = (*removed, self.machine.task_id(entry.node)) {
                self.shared.dispatches.take_down(id, task, entry.attempt);
            }
        }
        Ok(results)
    }
}

/// Sends a kill to the attempt's worker in the background; the worker
/// answers with a `killed` report.
fn send_kill(shared: &Arc<Shared>, order: KillOrder) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let KillOrder { task_instance_id: id, attempt, host, reason, .. } = order;
        match shared.workers.kill(&host, id, attempt, &reason).await {
            Ok(true) => tracing::info!(task_instance = %id, attempt, worker = %host, %reason, "kill sent"),
            Ok(false) => tracing::info!(task_instance = %id, attempt, worker = %host, "worker no longer runs the attempt"),
            Err(error) => tracing::error!(task_instance = %id, attempt, %error, "kill not delivered"),
        }
    });
}

/// Writes the master's lines into the attempts' logs in the log store, in
/// the background: a task that ended without running says why there, and
/// the log API finds it like any finished attempt's log.
fn write_logs(shared: &Arc<Shared>, logs: Vec<TaskLog>) {
    let Some(store) = shared.log_store.clone() else { return };
    tokio::spawn(async move {
        for log in logs {
            let key = LogKey {
                workflow_instance_id: log.workflow_instance_id.get(),
                task_instance_id: log.task_instance_id.get(),
                attempt: log.attempt,
            };
            let now = Utc::now();
            let text: String = log.lines.iter().map(|line| sluice_logs::format_line(now, Source::Sluice, line.as_bytes())).collect();
            let written = async {
                let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
                tokio::fs::write(file.path(), text.as_bytes()).await.map_err(|e| e.to_string())?;
                store.put(&key, file.path()).await.map_err(|e| e.to_string())
            };
            if let Err(error) = written.await {
                tracing::warn!(task_instance = %log.task_instance_id, attempt = log.attempt, %error, "cannot write the task's log");
            }
        }
    });
}
