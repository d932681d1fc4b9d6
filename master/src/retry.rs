//! The one way the master waits out an outage: a call is retried with
//! backoff while its error says it will pass (a PostgreSQL restart, a
//! ZooKeeper session being renewed), instead of giving up work that nobody
//! else would pick up until this master restarts.

use std::future::Future;
use std::time::Duration;

use sluice_runtime::CancellationToken;

/// Why [`retry`] returned without a result.
#[derive(Debug)]
pub(crate) enum Gave<E> {
    /// The error will not pass by waiting.
    Up(E),
    /// The master is shutting down.
    Shutdown,
}

/// Calls `call` until it succeeds, fails with an error `transient` says
/// will not pass, or `shutdown` is cancelled; waits 100 ms, doubling up to
/// 5 s, between tries. `what` names the work in the log.
pub(crate) async fn retry<T, E, F, Fut>(shutdown: &CancellationToken, what: &str, transient: fn(&E) -> bool, mut call: F) -> Result<T, Gave<E>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if transient(&error) => {
                tracing::warn!(%what, %error, retry_in = ?wait, "unavailable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(Gave::Shutdown),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(Gave::Up(error)),
        }
    }
}
