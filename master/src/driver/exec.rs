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
                    let began = std::time::Instant::now();
                    let written = persist!(shared, fence.workflow_instance_id, shared.store.write_run(fence, &write))?;
                    tracing::debug!(workflow_instance = %fence.workflow_instance_id, updated = write.tasks.len(), created = write.create.len(), ms = began.elapsed().as_secs_f64() * 1000.0, "run written");
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
                Effect::Finish(state) => {
                    self.start_cleanup();
                    return Ok(Some(state));
                }
            };
            if !more.is_empty() {
                stack.push(more.into_iter());
            }
        }
        self.start_cleanup();
        Ok(None)
    }

    /// Starts removing the queue entries of the attempts killed unfetched
    /// (after their kills are written: the removals do not compete with
    /// that write).
    fn start_cleanup(&mut self) {
        if !self.discard.is_empty() {
            let entries = std::mem::take(&mut self.discard);
            self.cleanup.push(tokio::spawn(remove_unfetched(self.shared.clone(), self.machine.instance().id, entries)));
        }
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
    /// before a worker took it. An entry taken back for a kill whose
    /// dispatch no worker fetched counts as removed at once (it can never
    /// run: a later fetch misses the board and meets the killed row); its
    /// queue entry is removed in the background once the kills are written
    /// (see `execute`), finished before the driver ends.
    async fn withdraw_all(&mut self, entries: Vec<QueueRef>) -> Result<Vec<(QueueRef, bool)>, Abort> {
        let id = self.machine.instance().id;
        let (unfetched, entries): (Vec<QueueRef>, Vec<QueueRef>) = entries.into_iter().partition(|entry| {
            let task = self.machine.task_id(entry.node);
            entry.kills && task.is_some_and(|task| self.shared.dispatches.withdraw_unfetched(id, task, entry.attempt))
        });
        self.discard.extend(unfetched.iter().map(|e| (e.group.clone(), e.key.clone())));
        let mut results: Vec<(QueueRef, bool)> = unfetched.into_iter().map(|entry| (entry, true)).collect();
        let removals = entries.into_iter().map(|entry| {
            let shared = self.shared.clone();
            async move {
                let removed = coordinate!(shared, id, shared.registry.queue_remove(&entry.group, &entry.key));
                removed.map(|removed| (entry, removed))
            }
        });
        let removed: Vec<Result<(QueueRef, bool), Abort>> = futures::stream::iter(removals).buffer_unordered(IN_FLIGHT).collect().await;
        let removed: Vec<(QueueRef, bool)> = removed.into_iter().collect::<Result<_, _>>()?;
        for (entry, removed) in &removed {
            if let (true, Some(task)) = (*removed, self.machine.task_id(entry.node)) {
                self.shared.dispatches.take_down(id, task, entry.attempt);
            }
        }
        results.extend(removed);
        Ok(results)
    }

    /// Waits for the background removals of killed attempts' queue
    /// entries, so that nothing of this driver's is left in the queue when
    /// a next driver of the instance may put the same keys again.
    pub(super) async fn finish_cleanup(&mut self) {
        for handle in self.cleanup.drain(..) {
            let _ = handle.await;
        }
    }
}

/// Removes the queue entries of attempts killed before any worker fetched
/// them. Only cleanup: an entry left behind (an outage, a crash) is taken
/// by a worker whose fetch is answered "stale".
async fn remove_unfetched(shared: Arc<Shared>, id: WorkflowInstanceId, entries: Vec<(String, String)>) {
    let removals = entries.into_iter().map(|(group, key)| {
        let registry = shared.registry.clone();
        async move { registry.queue_remove(&group, &key).await }
    });
    let results: Vec<_> = futures::stream::iter(removals).buffer_unordered(IN_FLIGHT).collect().await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        tracing::info!(workflow_instance = %id, failed, "queue entries of killed attempts not removed; the workers that take them are told they are stale");
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
