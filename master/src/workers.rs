//! gRPC clients of workers, for kill requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_domain::{TaskInstanceId, Timestamp, WorkerHeartbeat};
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

/// Which workers are registered, per group, since when the missing ones
/// are missing, and which incarnation of each live one is registered.
/// Watches start lazily, for the groups tasks run in.
#[derive(Default)]
pub(crate) struct WorkerTracker {
    groups: Mutex<HashMap<String, Arc<Mutex<GroupView>>>>,
}

struct GroupView {
    /// Live workers with the `started_at` of their heartbeat (`None` if it
    /// cannot be read).
    live: HashMap<String, Option<Timestamp>>,
    /// When each worker that left (or was never seen) went missing.
    missing_since: HashMap<String, std::time::Instant>,
    watching_since: std::time::Instant,
}

/// What a master knows of one worker address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerSeen {
    /// Not registered (or not yet seen) for this long.
    Missing(Duration),
    /// Registered by a process that started at this time, if known. An
    /// attempt that started before it ran in an earlier process at the same
    /// address, which died with it.
    Live { started_at: Option<Timestamp> },
}

fn started_at(member: &sluice_registry::Member) -> Option<Timestamp> {
    serde_json::from_slice::<WorkerHeartbeat>(&member.data).ok().map(|beat| beat.started_at)
}

impl WorkerTracker {
    /// What is known of `worker` in `group`; starts watching the group on
    /// first use (then nobody is missing yet).
    pub fn seen(&self, registry: &Arc<dyn sluice_registry::Registry>, group: &str, worker: &str) -> WorkerSeen {
        let view = {
            let mut groups = self.groups.lock().expect("tracker lock");
            match groups.get(group) {
                Some(view) => view.clone(),
                None => {
                    let view = Arc::new(Mutex::new(GroupView {
                        live: HashMap::new(),
                        missing_since: HashMap::new(),
                        watching_since: std::time::Instant::now(),
                    }));
                    groups.insert(group.to_owned(), view.clone());
                    tokio::spawn(watch_group(registry.clone(), group.to_owned(), view));
                    return WorkerSeen::Missing(Duration::ZERO);
                }
            }
        };
        let view = view.lock().expect("group lock");
        if let Some(started_at) = view.live.get(worker) {
            return WorkerSeen::Live { started_at: *started_at };
        }
        let since = view.missing_since.get(worker).copied().unwrap_or(view.watching_since);
        WorkerSeen::Missing(since.elapsed())
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
            let present: HashMap<String, Option<Timestamp>> = watch.members().iter().map(|m| (m.name.clone(), started_at(m))).collect();
            for gone in v.live.keys().filter(|w| !present.contains_key(*w)).cloned().collect::<Vec<_>>() {
                v.missing_since.entry(gone).or_insert(now);
            }
            for here in present.keys() {
                v.missing_since.remove(here);
            }
            v.live = present;
        }
        while let Some(event) = watch.next().await {
            let mut v = view.lock().expect("group lock");
            match event {
                MembershipEvent::Joined(member) => {
                    v.missing_since.remove(&member.name);
                    let started = started_at(&member);
                    v.live.insert(member.name, started);
                }
                MembershipEvent::Left(name) => {
                    v.live.remove(&name);
                    v.missing_since.insert(name, std::time::Instant::now());
                }
            }
        }
    }
}
