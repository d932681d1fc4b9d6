//! The master role. Several run at once, none special: each registers
//! itself under `nodes/masters/` and (from the execution-engine issue on)
//! claims commands and drives the workflow instances it owns.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sluice_config::MasterConfig;
use sluice_domain::MasterHeartbeat;
use sluice_registry::{paths, Heartbeat, Registry};
use sluice_runtime::{Role, RoleError};
use sluice_storage::Store;

pub struct Master {
    config: MasterConfig,
    #[allow(dead_code)] // driven by the engine
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    heartbeat: Option<Heartbeat>,
}

impl Master {
    pub fn new(config: MasterConfig, store: Arc<dyn Store>, registry: Arc<dyn Registry>) -> Self {
        Master { config, store, registry, heartbeat: None }
    }

    /// `host:port` under which other processes reach this master.
    pub fn addr(&self) -> String {
        self.config.advertise_addr()
    }
}

#[async_trait]
impl Role for Master {
    fn name(&self) -> &'static str {
        "master"
    }

    async fn start(&mut self) -> Result<(), RoleError> {
        let addr = self.addr();
        let started_at = Utc::now();
        let beat = {
            let addr = addr.clone();
            move || {
                let beat = MasterHeartbeat { addr: addr.clone(), started_at, heartbeat_at: Utc::now(), workflow_instances: 0 };
                serde_json::to_vec(&beat).expect("heartbeat serializes")
            }
        };
        let heartbeat =
            Heartbeat::start(self.registry.clone(), paths::master_node(&addr), self.config.heartbeat_interval, beat).await?;
        self.heartbeat = Some(heartbeat);
        tracing::info!(%addr, "master registered");
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), RoleError> {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.stop().await;
        }
        Ok(())
    }
}
