//! What every Sluice role has in common: the [`Role`] life cycle and the
//! process-wide shutdown signal.
//!
//! The `sluice` binary builds roles from configuration and hands them to
//! [`run_roles`]; `sluice standalone` is nothing more than several roles in
//! one call.

use async_trait::async_trait;
pub use tokio_util::sync::CancellationToken;

/// Error a role reports from `start` or `stop`. Roles are heterogeneous and
/// their failures are reported to the operator, never matched on, so a boxed
/// error is the honest type here.
pub type RoleError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One role of a Sluice process: master, worker, api-server or alert-server.
#[async_trait]
pub trait Role: Send {
    /// Short lowercase name used in logs (`master`, `worker`, ...).
    fn name(&self) -> &'static str;

    /// Starts the role's background work and returns once it is ready to
    /// serve (listening, registered). Must not block until shutdown.
    async fn start(&mut self) -> Result<(), RoleError>;

    /// Stops the role gracefully; returns when its work has been handed over
    /// or finished.
    async fn stop(&mut self) -> Result<(), RoleError>;
}

/// Starts `roles` in order, waits until `shutdown` is cancelled (or SIGINT /
/// SIGTERM arrives), then stops them in reverse order.
///
/// If a role fails to start, the ones already started are stopped before
/// the error is returned, so a half-started process never lingers.
pub async fn run_roles(
    mut roles: Vec<Box<dyn Role>>,
    shutdown: CancellationToken,
) -> Result<(), RoleError> {
    // Installed before the first role starts: a SIGTERM that arrives once
    // a role serves requests but before the last one started must stop the
    // process cleanly, not kill it.
    let signal = wait_for_signal();
    let mut started = 0;
    let mut failure = None;
    for role in roles.iter_mut() {
        tracing::info!(role = role.name(), "starting");
        match role.start().await {
            Ok(()) => {
                tracing::info!(role = role.name(), "started");
                started += 1;
            }
            Err(error) => {
                tracing::error!(role = role.name(), %error, "failed to start");
                failure = Some(error);
                break;
            }
        }
    }
    if failure.is_none() {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            signal = signal => tracing::info!(signal, "shutting down"),
        }
    }
    for role in roles[..started].iter_mut().rev() {
        tracing::info!(role = role.name(), "stopping");
        if let Err(error) = role.stop().await {
            tracing::error!(role = role.name(), %error, "failed to stop cleanly");
            failure.get_or_insert(error);
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Resolves with the name of the first termination signal received from
/// the call on (the handlers are installed by the call, not when polled).
pub fn wait_for_signal() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Recorder {
        name: &'static str,
        fail_start: bool,
        log: Arc<Mutex<Vec<String>>>,
    }

    #[async_trait]
    impl Role for Recorder {
        fn name(&self) -> &'static str {
            self.name
        }
        async fn start(&mut self) -> Result<(), RoleError> {
            self.log.lock().unwrap().push(format!("start {}", self.name));
            if self.fail_start {
                return Err(format!("{} cannot start", self.name).into());
            }
            Ok(())
        }
        async fn stop(&mut self) -> Result<(), RoleError> {
            self.log.lock().unwrap().push(format!("stop {}", self.name));
            Ok(())
        }
    }

    fn roles(log: &Arc<Mutex<Vec<String>>>, fail: Option<&str>) -> Vec<Box<dyn Role>> {
        ["a", "b", "c"]
            .into_iter()
            .map(|name| {
                Box::new(Recorder { name, fail_start: Some(name) == fail, log: log.clone() })
                    as Box<dyn Role>
            })
            .collect()
    }

    #[tokio::test]
    async fn roles_stop_in_reverse_order_on_shutdown() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        run_roles(roles(&log, None), shutdown).await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
        );
    }

    #[tokio::test]
    async fn a_failed_start_stops_what_already_started() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let error = run_roles(roles(&log, Some("b")), CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "b cannot start");
        assert_eq!(*log.lock().unwrap(), ["start a", "start b", "stop a"]);
    }
}
