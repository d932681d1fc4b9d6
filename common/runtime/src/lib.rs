//! What every Sluice role has in common: the [`Role`] life cycle and the
//! process-wide shutdown signal.
//!
//! The `sluice` binary builds roles from configuration and hands them to
//! [`run_roles`]; `sluice standalone` is nothing more than several roles in
//! one call.

mod tasks;

use async_trait::async_trait;
pub use tasks::{RoleTasks, TaskOutcome};
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

    /// Resolves if, once started, the role stops doing its job on its own:
    /// its server or one of its main loops returned or panicked (see
    /// [`RoleTasks`]). The error says which and why. Must be cancel-safe:
    /// [`run_roles`] polls it alongside the shutdown signal. The default
    /// never resolves, for a role with nothing running in the background.
    async fn ended(&mut self) -> RoleError {
        std::future::pending().await
    }
}

/// Starts `roles` in order, waits until `shutdown` is cancelled (or SIGINT /
/// SIGTERM arrives), then stops them in reverse order.
///
/// If a role fails to start, the ones already started are stopped before
/// the error is returned, so a half-started process never lingers. If a
/// started role ends on its own ([`Role::ended`]), every role is stopped
/// the same way and the error, naming the role, is returned: the process
/// exits with it instead of living on half alive.
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
        let names: Vec<&'static str> = roles[..started].iter().map(|r| r.name()).collect();
        let mut ended: Vec<_> = roles[..started].iter_mut().map(|r| r.ended()).collect();
        let first_ended = std::future::poll_fn(|cx| {
            ended.iter_mut().enumerate().find_map(|(i, f)| match f.as_mut().poll(cx) {
                std::task::Poll::Ready(error) => Some(std::task::Poll::Ready((names[i], error))),
                std::task::Poll::Pending => None,
            }).unwrap_or(std::task::Poll::Pending)
        });
        tokio::select! {
            _ = shutdown.cancelled() => {}
            signal = signal => tracing::info!(signal, "shutting down"),
            (role, error) = first_ended => {
                tracing::error!(role, %error, "role ended unexpectedly; stopping the process");
                failure = Some(format!("{role}: {error}").into());
            }
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

    /// A role with a real TCP server: it answers `ping` with `pong`, and
    /// its accept loop gives up (an error) when a client says `die`, panics
    /// on `pani`, and returns quietly on anything else. It also runs a loop
    /// that has nothing to do and finishes at once, which is no failure.
    struct Server {
        log: Arc<Mutex<Vec<String>>>,
        started: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
        stop: CancellationToken,
        tasks: RoleTasks,
    }

    async fn serve(listener: tokio::net::TcpListener, stop: CancellationToken) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut conn, _) = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                accepted = listener.accept() => accepted.map_err(|e| e.to_string())?,
            };
            let mut word = [0u8; 4];
            conn.read_exact(&mut word).await.map_err(|e| e.to_string())?;
            match &word {
                b"ping" => conn.write_all(b"pong").await.map_err(|e| e.to_string())?,
                b"die!" => return Err("a client said die".into()),
                b"pani" => panic!("a client said panic"),
                _ => return Ok(()),
            }
        }
    }

    #[async_trait]
    impl Role for Server {
        fn name(&self) -> &'static str {
            "server"
        }
        async fn start(&mut self) -> Result<(), RoleError> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            self.tasks.spawn("accept loop", serve(listener, self.stop.clone()));
            let (idle_tx, idle_rx) = tokio::sync::oneshot::channel();
            self.tasks.spawn_may_finish("idle loop", self.stop.clone(), async move {
                let _ = idle_tx.send(());
            });
            // Reported once the idle loop is over, so that the tests show
            // its end is not taken for a failure.
            idle_rx.await?;
            self.log.lock().unwrap().push("start server".into());
            let _ = self.started.take().expect("started once").send(addr);
            Ok(())
        }
        async fn stop(&mut self) -> Result<(), RoleError> {
            self.stop.cancel();
            self.tasks.join().await;
            self.log.lock().unwrap().push("stop server".into());
            Ok(())
        }
        async fn ended(&mut self) -> RoleError {
            self.tasks.ended().await
        }
    }

    /// Roles `a`, the server, `c`, and what a client says to the server
    /// once it answered a ping: `run_roles`' result, with what the roles did.
    async fn run_until_the_server_hears(word: &[u8; 4]) -> (Result<(), RoleError>, Vec<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let log = Arc::new(Mutex::new(Vec::new()));
        let (started, addr) = tokio::sync::oneshot::channel();
        let server = Server { log: log.clone(), started: Some(started), stop: CancellationToken::new(), tasks: RoleTasks::default() };
        let mut all = roles(&log, None);
        all.remove(1);
        all.insert(1, Box::new(server));
        // A shutdown nobody cancels: only the server's end may stop them.
        let running = tokio::spawn(run_roles(all, CancellationToken::new()));
        let addr = addr.await.unwrap();
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 4];
        conn.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"pong", "the server serves until told otherwise");
        tokio::net::TcpStream::connect(addr).await.unwrap().write_all(word).await.unwrap();
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), running).await.expect("the roles stop").unwrap();
        let log = log.lock().unwrap().clone();
        (result, log)
    }

    const STARTED_AND_STOPPED: [&str; 6] = ["start a", "start server", "start c", "stop c", "stop server", "stop a"];

    #[tokio::test]
    async fn a_server_that_fails_stops_every_role_with_its_error() {
        let (result, log) = run_until_the_server_hears(b"die!").await;
        assert_eq!(result.unwrap_err().to_string(), "server: accept loop failed: a client said die");
        assert_eq!(log, STARTED_AND_STOPPED);
    }

    #[tokio::test]
    async fn a_loop_that_panics_stops_every_role_with_the_panic() {
        let (result, log) = run_until_the_server_hears(b"pani").await;
        assert_eq!(result.unwrap_err().to_string(), "server: accept loop panicked: a client said panic");
        assert_eq!(log, STARTED_AND_STOPPED);
    }

    #[tokio::test]
    async fn a_loop_that_returns_unasked_stops_every_role() {
        let (result, log) = run_until_the_server_hears(b"bye!").await;
        assert_eq!(result.unwrap_err().to_string(), "server: accept loop ended without being stopped");
        assert_eq!(log, STARTED_AND_STOPPED);
    }
}
