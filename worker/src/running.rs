//! The attempts this worker is running, and the way to stop one of them.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_domain::TaskInstanceId;
use tokio::sync::oneshot;

/// Why an attempt is being stopped before its process ended by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StopCause {
    /// `KillTask` from a master: the attempt ends `KILLED` with this reason.
    Kill(String),
    /// The worker is shutting down and the attempt outlived the grace
    /// period: it ends `FAILURE`, so the master may retry it elsewhere.
    Shutdown,
    /// The worker lost its registry session: its masters may fail the
    /// attempt over, so it must not run on. Ends `FAILURE` with
    /// [`SESSION_LOST`] as the reason.
    SessionLost,
}

/// The failure reason of attempts killed because their worker lost its
/// registry session.
pub(crate) const SESSION_LOST: &str = "worker lost its registry session";

/// One attempt of a task instance on this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskAttempt {
    pub task_instance_id: TaskInstanceId,
    pub attempt: u32,
}

struct Entry {
    /// Taken by the first stop request; later ones find the attempt
    /// already stopping.
    stop: Option<oneshot::Sender<StopCause>>,
}

/// Attempts from the moment they are taken off the queue (not only once
/// their process runs), so that a kill arriving while the working directory
/// is being prepared still finds the attempt.
#[derive(Default)]
pub(crate) struct Running {
    entries: Mutex<BTreeMap<TaskAttempt, Entry>>,
    /// Attempts this process ran to their end, the last [`REMEMBERED`]: a
    /// master whose queue put was interrupted may put the entry again when
    /// it cannot tell whether a worker took it, and this worker must not run
    /// the attempt a second time if it was the one.
    ran: Mutex<(HashSet<TaskAttempt>, VecDeque<TaskAttempt>)>,
}

/// How many finished attempts a worker remembers.
const REMEMBERED: usize = 100_000;

impl Running {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<TaskAttempt, Entry>> {
        // The map stays consistent whatever panicked while holding the lock.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `attempt` as running; `None` if it already is or already
    /// ran here (the same attempt queued twice), in which case the caller
    /// must not run it. The attempt stays recorded as running until the
    /// returned guard is dropped, then as ran.
    pub(crate) fn start(
        self: &Arc<Self>,
        attempt: TaskAttempt,
    ) -> Option<(RunningGuard, oneshot::Receiver<StopCause>)> {
        let mut entries = self.lock();
        if entries.contains_key(&attempt) || self.ran.lock().unwrap_or_else(|p| p.into_inner()).0.contains(&attempt) {
            return None;
        }
        let (stop, stopped) = oneshot::channel();
        entries.insert(attempt, Entry { stop: Some(stop) });
        Some((
            RunningGuard {
                running: self.clone(),
                attempt,
            },
            stopped,
        ))
    }

    /// Asks `attempt` to stop; `false` if it is not running here.
    pub(crate) fn stop(&self, attempt: TaskAttempt, cause: StopCause) -> bool {
        match self.lock().get_mut(&attempt) {
            Some(entry) => {
                if let Some(stop) = entry.stop.take() {
                    // The runner only drops its receiver once the attempt is
                    // over, so a failed send means "already finishing".
                    let _ = stop.send(cause);
                }
                true
            }
            None => false,
        }
    }

    /// Asks every running attempt to stop; returns how many there were.
    pub(crate) fn stop_all(&self, cause: StopCause) -> usize {
        let mut entries = self.lock();
        for entry in entries.values_mut() {
            if let Some(stop) = entry.stop.take() {
                let _ = stop.send(cause.clone());
            }
        }
        entries.len()
    }

    /// Sorted by task instance, then attempt.
    pub(crate) fn attempts(&self) -> Vec<TaskAttempt> {
        self.lock().keys().copied().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Removes its attempt from [`Running`] when dropped, even if the runner
/// panicked, so that the slot count and heartbeats never show a ghost.
pub(crate) struct RunningGuard {
    running: Arc<Running>,
    attempt: TaskAttempt,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let mut entries = self.running.lock();
        entries.remove(&self.attempt);
        let mut ran = self.running.ran.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *ran;
        if set.insert(self.attempt) {
            order.push_back(self.attempt);
            if order.len() > REMEMBERED {
                if let Some(oldest) = order.pop_front() {
                    set.remove(&oldest);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(id: i64, attempt: u32) -> TaskAttempt {
        TaskAttempt {
            task_instance_id: TaskInstanceId(id),
            attempt,
        }
    }

    #[test]
    fn an_attempt_runs_once_and_is_forgotten_with_its_guard() {
        let running = Arc::new(Running::default());
        let (guard, _stopped) = running.start(attempt(1, 1)).unwrap();
        assert!(running.start(attempt(1, 1)).is_none());
        let (_other, _) = running.start(attempt(1, 2)).unwrap();
        assert_eq!(running.len(), 2);
        drop(guard);
        assert_eq!(running.attempts(), [attempt(1, 2)]);
        assert!(running.start(attempt(1, 1)).is_none(), "an attempt that ran here does not run again");
    }

    #[test]
    fn stop_reaches_the_runner_once() {
        let running = Arc::new(Running::default());
        let (_guard, mut stopped) = running.start(attempt(1, 1)).unwrap();
        assert!(
            !running.stop(attempt(1, 2), StopCause::Shutdown),
            "other attempt"
        );
        assert!(running.stop(attempt(1, 1), StopCause::Kill("stop".into())));
        assert!(
            running.stop(attempt(1, 1), StopCause::Shutdown),
            "still running"
        );
        assert_eq!(stopped.try_recv().unwrap(), StopCause::Kill("stop".into()));
        assert_eq!(running.stop_all(StopCause::Shutdown), 1);
    }
}
