//! The worker role: registers under `nodes/workers/<group>/` for each of its
//! groups with a heartbeat, and (from the execution-engine issue on) takes
//! ready tasks from those groups' queues and runs them.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sluice_config::WorkerConfig;
use sluice_domain::WorkerHeartbeat;
use sluice_registry::{paths, Heartbeat, Registry};
use sluice_runtime::{Role, RoleError};

pub struct Worker {
    config: WorkerConfig,
    registry: Arc<dyn Registry>,
    heartbeats: Vec<Heartbeat>,
}

impl Worker {
    pub fn new(config: WorkerConfig, registry: Arc<dyn Registry>) -> Self {
        Worker { config, registry, heartbeats: Vec::new() }
    }

    pub fn addr(&self) -> String {
        self.config.advertise_addr()
    }
}

#[async_trait]
impl Role for Worker {
    fn name(&self) -> &'static str {
        "worker"
    }

    async fn start(&mut self) -> Result<(), RoleError> {
        let addr = self.addr();
        let started_at = Utc::now();
        let slots = self.config.effective_slots();
        for group in &self.config.groups {
            let beat = {
                let (addr, groups) = (addr.clone(), self.config.groups.clone());
                move || {
                    let beat = WorkerHeartbeat {
                        addr: addr.clone(),
                        groups: groups.clone(),
                        started_at,
                        heartbeat_at: Utc::now(),
                        slots,
                        free_slots: slots,
                        running: Vec::new(),
                    };
                    serde_json::to_vec(&beat).expect("heartbeat serializes")
                }
            };
            let heartbeat = Heartbeat::start(
                self.registry.clone(),
                paths::worker_node(group, &addr),
                self.config.heartbeat_interval,
                beat,
            )
            .await?;
            self.heartbeats.push(heartbeat);
        }
        tracing::info!(%addr, groups = ?self.config.groups, slots, "worker registered");
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), RoleError> {
        for heartbeat in self.heartbeats.drain(..) {
            heartbeat.stop().await;
        }
        Ok(())
    }
}
