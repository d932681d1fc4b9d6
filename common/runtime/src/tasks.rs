//! The background work of a started role, watched: a role's server and main
//! loops must run until the role is stopped, and one that ends on its own
//! (returns or panics) leaves the process half alive — registered, maybe
//! answering, but no longer doing its job. [`RoleTasks`] holds them so that
//! the role can report the first one that ended ([`Role::ended`]) and
//! [`run_roles`] can stop the process.
//!
//! [`Role::ended`]: crate::Role::ended
//! [`run_roles`]: crate::run_roles

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::RoleError;

/// How a task's own result reads when it ends: `()` says nothing, an error
/// says why.
pub trait TaskOutcome: Send + 'static {
    fn failure(self) -> Option<String>;
}

impl TaskOutcome for () {
    fn failure(self) -> Option<String> {
        None
    }
}

impl<E: std::fmt::Display + Send + 'static> TaskOutcome for Result<(), E> {
    fn failure(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

/// Tasks of one role that must run until the role stops them.
#[derive(Default)]
pub struct RoleTasks {
    tasks: Vec<(&'static str, JoinHandle<Option<String>>)>,
}

impl RoleTasks {
    /// Spawns `work`, named `what` in the report if it ends (`grpc server`,
    /// `command loop`): any end before [`RoleTasks::join`] is a failure.
    pub fn spawn<F>(&mut self, what: &'static str, work: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutcome,
    {
        self.tasks.push((what, tokio::spawn(async move { work.await.failure() })));
    }

    /// Spawns `work` that may finish early and rightly so (it has nothing to
    /// do, e.g. a retention loop without a retention): finishing counts as
    /// running until `stop`; a panic still is a failure.
    pub fn spawn_may_finish<F>(&mut self, what: &'static str, stop: CancellationToken, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(what, async move {
            work.await;
            stop.cancelled().await;
        });
    }

    /// Resolves when one of the tasks ends, with what ended and why; never
    /// while they all run (or if there are none). Cancel-safe: the tasks
    /// are polled in place, and the one that ended is removed, so a later
    /// [`RoleTasks::join`] does not wait on it again.
    pub async fn ended(&mut self) -> RoleError {
        std::future::poll_fn(|cx| self.poll_ended(cx)).await
    }

    fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<RoleError> {
        for i in 0..self.tasks.len() {
            if let Poll::Ready(result) = Pin::new(&mut self.tasks[i].1).poll(cx) {
                let (what, _) = self.tasks.remove(i);
                let why = match result {
                    Ok(Some(error)) => format!("{what} failed: {error}"),
                    Ok(None) => format!("{what} ended without being stopped"),
                    Err(error) if error.is_panic() => format!("{what} panicked: {}", panic_message(error.into_panic())),
                    Err(_) => format!("{what} was cancelled"),
                };
                return Poll::Ready(why.into());
            }
        }
        Poll::Pending
    }

    /// Waits for every task, once the role told them to stop; reports
    /// (logs) a task that failed on the way out.
    pub async fn join(&mut self) {
        for (what, task) in self.tasks.drain(..) {
            match task.await {
                Ok(None) => {}
                Ok(Some(error)) => tracing::warn!(task = what, %error, "failed while stopping"),
                Err(error) => tracing::warn!(task = what, %error, "panicked while stopping"),
            }
        }
    }

    /// Stops every task at once, as a crash would.
    pub fn abort(&mut self) {
        for (_, task) in self.tasks.drain(..) {
            task.abort();
        }
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(message) => *message,
        Err(panic) => panic.downcast::<&'static str>().map_or_else(|_| "(not a string)".to_owned(), |m| (*m).to_owned()),
    }
}
