//! A master whose registry fails under it keeps driving its instances: it
//! retries while ZooKeeper is away or its session is being renewed, and an
//! instance whose driver gave up anyway is driven again by the master's
//! sweep. Both were found by the chaos test: drivers used to give up on the
//! first registry error, leaving their instances `running` and owned by a
//! live master, so that no failover would ever come.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_domain::*;
use sluice_e2e::{shell, workflow, Sandbox};
use sluice_registry::{LockGuard, Member, MembershipWatch, QueueItem, Registry, RegistryError, SessionState, SignalWatch};
use tokio::sync::watch;

/// How [`Flaky`] fails its first queue puts.
#[derive(Clone, Copy)]
enum Fault {
    /// ZooKeeper away: nothing is written and the error is transient.
    SessionExpired,
    /// The put is done, but the connection breaks before the reply: the
    /// caller hears of a transient error (as the real client says
    /// "session expired" for a request in flight when ZooKeeper stopped).
    DoneButInterrupted,
    /// The put is done but the caller hears of a permanent failure (a
    /// reply lost in a way the client cannot tell from an error).
    DoneButFailed,
}

/// A registry that fails its first `failures` queue puts with `fault`.
struct Flaky {
    inner: Arc<dyn Registry>,
    fault: Fault,
    failures: AtomicUsize,
}

impl Flaky {
    fn wrap(fault: Fault, failures: usize) -> impl FnOnce(Arc<dyn Registry>) -> Arc<dyn Registry> {
        move |inner| Arc::new(Flaky { inner, fault, failures: AtomicUsize::new(failures) })
    }
}

#[async_trait]
impl Registry for Flaky {
    fn session_timeout(&self) -> std::time::Duration {
        self.inner.session_timeout()
    }
    async fn register(&self, path: &str, data: &[u8]) -> Result<(), RegistryError> {
        self.inner.register(path, data).await
    }
    async fn update(&self, path: &str, data: &[u8]) -> Result<(), RegistryError> {
        self.inner.update(path, data).await
    }
    async fn unregister(&self, path: &str) -> Result<(), RegistryError> {
        self.inner.unregister(path).await
    }
    async fn members(&self, dir: &str) -> Result<Vec<Member>, RegistryError> {
        self.inner.members(dir).await
    }
    async fn watch_members(&self, dir: &str) -> Result<MembershipWatch, RegistryError> {
        self.inner.watch_members(dir).await
    }
    async fn lock(&self, name: &str) -> Result<LockGuard, RegistryError> {
        self.inner.lock(name).await
    }
    async fn try_lock(&self, name: &str, wait: Duration) -> Result<Option<LockGuard>, RegistryError> {
        self.inner.try_lock(name, wait).await
    }
    async fn queue_put(&self, group: &str, key: &str, payload: &[u8]) -> Result<(), RegistryError> {
        let fail = self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        match (fail, self.fault) {
            (false, _) => self.inner.queue_put(group, key, payload).await,
            (true, Fault::SessionExpired) => Err(RegistryError::SessionExpired),
            (true, Fault::DoneButInterrupted) => {
                self.inner.queue_put(group, key, payload).await?;
                Err(RegistryError::SessionExpired)
            }
            (true, Fault::DoneButFailed) => {
                self.inner.queue_put(group, key, payload).await?;
                Err(RegistryError::Other { path: key.to_owned(), message: "injected failure".into() })
            }
        }
    }
    async fn queue_take(&self, group: &str) -> Result<QueueItem, RegistryError> {
        self.inner.queue_take(group).await
    }
    async fn queue_try_take(&self, group: &str) -> Result<Option<QueueItem>, RegistryError> {
        self.inner.queue_try_take(group).await
    }
    async fn queue_remove(&self, group: &str, key: &str) -> Result<bool, RegistryError> {
        self.inner.queue_remove(group, key).await
    }
    async fn queue_keys(&self, group: &str) -> Result<Vec<String>, RegistryError> {
        self.inner.queue_keys(group).await
    }
    async fn signal(&self, name: &str) -> Result<(), RegistryError> {
        self.inner.signal(name).await
    }
    async fn watch_signal(&self, name: &str) -> Result<SignalWatch, RegistryError> {
        self.inner.watch_signal(name).await
    }
    fn session_state(&self) -> watch::Receiver<SessionState> {
        self.inner.session_state()
    }
    fn lost_on_restart(&self) -> bool {
        self.inner.lost_on_restart()
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

/// A put that never reached ZooKeeper is done again once it shows it was
/// not done (its entry is not queued and nobody reported the attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_driver_waits_out_a_registry_that_is_away() {
    let mut sandbox = Sandbox::cluster(0, 1).await;
    sandbox.add_master_through(Flaky::wrap(Fault::SessionExpired, 1)).await;
    let spec = workflow("registry_away", vec![shell("first", "true", &[]), shell("second", "true", &["first"])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    // Well before the sweep could step in (two sweeps, 10 s apart), or the
    // watchdog's 60 s for entries never taken: the driver itself carried on.
    let (wi, tasks) = sandbox.wait_finished(id, Duration::from_secs(15)).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    assert!(tasks.iter().all(|t| t.attempt == 1), "{tasks:?}");
    sandbox.shutdown().await;
}

/// A put that was done although the master heard of an error is not done
/// again once a worker took the entry: another worker would run the same
/// attempt. Found by the chaos test: during a ZooKeeper outage the client
/// failed puts that the server had done, the driver put them again after a
/// worker had taken them, and a second worker ran them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_done_before_the_connection_broke_is_not_done_twice() {
    let mut sandbox = Sandbox::cluster(0, 0).await;
    // Two one-slot workers: the first takes the entry, the second would
    // take a second one.
    sandbox.add_worker(&["default"], 1).await;
    sandbox.add_worker(&["default"], 1).await;
    sandbox.add_master_through(Flaky::wrap(Fault::DoneButInterrupted, 1)).await;
    let ran = sandbox.scratch().join("ran");
    let spec = workflow("put_interrupted", vec![shell("slow", &format!("echo \"$SLUICE_ATTEMPT\" >> {}; sleep 2", ran.display()), &[])]);
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    assert!(tasks.iter().all(|t| t.attempt == 1), "{tasks:?}");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "1\n", "the attempt ran once");
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_whose_driver_gave_up_is_driven_again() {
    let mut sandbox = Sandbox::cluster(0, 1).await;
    sandbox.add_master_through(Flaky::wrap(Fault::DoneButFailed, 1)).await;
    let ran = sandbox.scratch().join("ran");
    let spec = workflow(
        "driver_gave_up",
        vec![shell("first", &format!("echo \"$SLUICE_ATTEMPT\" >> {}", ran.display()), &[]), shell("second", "true", &["first"])],
    );
    let id = sandbox.run(sandbox.apply(&spec).await).await;
    let (wi, tasks) = sandbox.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(wi.state, WorkflowState::Success, "{tasks:?}");
    assert!(wi.owner_epoch >= 2, "taken back with a new epoch: {wi:?}");
    assert!(tasks.iter().all(|t| t.attempt == 1), "the queued attempt was not run again: {tasks:?}");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "1\n");
    sandbox.shutdown().await;
}
