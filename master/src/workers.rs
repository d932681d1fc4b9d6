//! gRPC clients of workers, for kill requests.

use std::collections::HashMap;
use std::sync::Mutex;
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
