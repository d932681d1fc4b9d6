//! gRPC clients of workers, for kill requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_domain::TaskInstanceId;
use sluice_proto::v1::worker_service_client::WorkerServiceClient;
use sluice_proto::v1::KillTaskRequest;
use tonic::transport::{Channel, Endpoint};

/// One lazily connected channel per worker address.
#[derive(Default)]
pub(crate) struct WorkerClients {
    channels: Mutex<HashMap<String, Channel>>,
}

impl WorkerClients {
    fn client(&self, addr: &str) -> Result<WorkerServiceClient<Channel>, String> {
        let mut channels = self.channels.lock().expect("worker channels lock");
        if let Some(channel) = channels.get(addr) {
            return Ok(WorkerServiceClient::new(channel.clone()));
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad worker address `{addr}`: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(WorkerServiceClient::new(channel))
    }

    /// Asks the worker at `addr` to kill an attempt; retries a few times
    /// because a kill that is not delivered leaves a task running. Returns
    /// whether the worker was running it.
    pub async fn kill(&self, addr: &str, task: TaskInstanceId, attempt: u32, reason: &str) -> Result<bool, String> {
        let mut client = self.client(addr)?;
        let request = KillTaskRequest { task_instance_id: task.get(), attempt, reason: reason.to_owned() };
        let mut delay = Duration::from_millis(50);
        let mut last = String::new();
        for _ in 0..8 {
            match client.kill_task(request.clone()).await {
                Ok(reply) => return Ok(reply.into_inner().found),
                Err(status) => {
                    last = status.to_string();
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        Err(format!("worker {addr} did not take the kill request: {last}"))
    }
}

/// Which workers are registered, per group, and since when the missing
/// ones are missing. Watches start lazily, for the groups tasks run in.
#[derive(Default)]
pub(crate) struct WorkerTracker {
    groups: Mutex<HashMap<String, Arc<Mutex<GroupView>>>>,
}

struct GroupView {
    live: std::collections::HashSet<String>,
    /// When each worker that left (or was never seen) went missing.
    missing_since: HashMap<String, std::time::Instant>,
    watching_since: std::time::Instant,
}

impl WorkerTracker {
    /// How long `worker` has been missing from `group` (zero while present);
    /// starts watching the group on first use (then nobody is missing yet).
    pub fn missing_for(&self, registry: &Arc<dyn sluice_registry::Registry>, group: &str, worker: &str) -> Duration {
        let view = {
            let mut groups = self.groups.lock().expect("tracker lock");
            match groups.get(group) {
                Some(view) => view.clone(),
                None => {
                    let view = Arc::new(Mutex::new(GroupView {
                        live: Default::default(),
                        missing_since: HashMap::new(),
                        watching_since: std::time::Instant::now(),
                    }));
                    groups.insert(group.to_owned(), view.clone());
                    tokio::spawn(watch_group(registry.clone(), group.to_owned(), view));
                    return Duration::ZERO;
                }
            }
        };
        let view = view.lock().expect("group lock");
        if view.live.contains(worker) {
            return Duration::ZERO;
        }
        let since = view.missing_since.get(worker).copied().unwrap_or(view.watching_since);
        since.elapsed()
    }
}

async fn watch_group(registry: Arc<dyn sluice_registry::Registry>, group: String, view: Arc<Mutex<GroupView>>) {
    use sluice_registry::MembershipEvent;
    let dir = sluice_registry::paths::workers_dir(&group);
    loop {
        let mut watch = match registry.watch_members(&dir).await {
            Ok(watch) => watch,
            Err(sluice_registry::RegistryError::Closed) => return,
            Err(error) => {
                tracing::warn!(%group, %error, "cannot watch workers; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        {
            let mut v = view.lock().expect("group lock");
            let now = std::time::Instant::now();
            let present: std::collections::HashSet<String> = watch.members().iter().map(|m| m.name.clone()).collect();
            for gone in v.live.difference(&present).cloned().collect::<Vec<_>>() {
                v.missing_since.entry(gone).or_insert(now);
            }
            for here in &present {
                v.missing_since.remove(here);
            }
            v.live = present;
        }
        while let Some(event) = watch.next().await {
            let mut v = view.lock().expect("group lock");
            match event {
                MembershipEvent::Joined(member) => {
                    v.missing_since.remove(&member.name);
                    v.live.insert(member.name);
                }
                MembershipEvent::Left(name) => {
                    v.live.remove(&name);
                    v.missing_since.insert(name, std::time::Instant::now());
                }
            }
        }
    }
}
