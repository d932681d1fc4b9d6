//! `sluice`: one binary for every role, and the command-line client. For a
//! role it parses the command line and the configuration, builds the roles,
//! and runs them until SIGINT/SIGTERM; client commands (`apply`, `run`, ...)
//! live in [`cli`] and talk to the REST API.

mod cli;
mod example;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_config::{Config, LogFormat, RegistryKind};
use sluice_logs::{DirLogStore, LogStore};
use sluice_registry::{EmbeddedRegistry, Registry, ZkRegistry};
use sluice_runtime::{CancellationToken, Role};
use sluice_storage::{PoolOptions, Store};

#[derive(Parser)]
#[command(name = "sluice", version, about = "A distributed workflow scheduler for data platforms")]
struct Cli {
    /// Configuration file (TOML); `SLUICE_<SECTION>__<KEY>` variables override it.
    #[arg(long, short, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Role(RoleCommand),
    #[command(flatten)]
    Client(Box<cli::ClientCommand>),
}

/// The server roles: each runs until SIGINT/SIGTERM.
#[derive(Subcommand)]
enum RoleCommand {
    /// Run a master: claims commands, drives workflow instances.
    Master,
    /// Run a worker: takes ready tasks from its groups' queues and runs them.
    Worker,
    /// Run the REST API server.
    Api,
    /// Run the alert server.
    Alert,
    /// Run master, worker and API in one process on SQLite and the embedded
    /// registry: the one-command way to try Sluice.
    Standalone {
        /// Do not add the example workflow `demo/daily_etl` on start-up.
        #[arg(long)]
        no_example: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The client needs no server configuration: only where the API is.
    let role = match cli.command {
        Command::Client(client) => return cli::main(*client),
        Command::Role(role) => role,
    };
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sluice: {error}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(role, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("sluice: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let options = PoolOptions { size: config.database.pool_size, connect_timeout: config.database.connect_timeout };
    sluice_storage::open(&config.database.url, options)
        .await
        .with_context(|| format!("opening database {}", config.database.redacted_url()))
}

async fn connect_registry(config: &Config) -> anyhow::Result<Arc<dyn Registry>> {
    match config.registry.kind {
        RegistryKind::Embedded => Ok(Arc::new(EmbeddedRegistry::new().session())),
        RegistryKind::Zookeeper => {
            let registry = ZkRegistry::connect(&config.registry.zookeeper, &config.cluster_root(), config.registry.session_timeout)
                .await
                .with_context(|| format!("connecting to ZooKeeper at {}", config.registry.zookeeper))?;
            Ok(Arc::new(registry))
        }
    }
}

/// The task log store of the cluster (a shared directory).
fn log_store(config: &Config) -> Arc<dyn LogStore> {
    Arc::new(DirLogStore::new(config.log_store.dir.clone()))
}

fn master(config: &Config, store: Arc<dyn Store>, registry: Arc<dyn Registry>) -> sluice_master::Master {
    let master = sluice_master::Master::new(config.master.clone(), store, registry).with_log_store(log_store(config));
    match config.log_store.retention {
        Some(retention) => master.with_log_retention(log_store(config), retention),
        None => master,
    }
}

fn worker(config: &Config, registry: Arc<dyn Registry>) -> sluice_worker::Worker {
    sluice_worker::Worker::new(config.worker.clone(), registry).with_log_store(log_store(config), config.log_store.retention)
}

fn api(config: &Config, store: Arc<dyn Store>, registry: Arc<dyn Registry>) -> sluice_api::ApiServer {
    sluice_api::ApiServer::new(config.api.listen, store).with_log_store(log_store(config)).with_registry(registry)
}

async fn run(role: RoleCommand, mut config: Config) -> anyhow::Result<()> {
    let mut registry = None;
    let roles: Vec<Box<dyn Role>> = match role {
        RoleCommand::Master => {
            let store = open_store(&config).await?;
            let registry = registry.insert(connect_registry(&config).await?).clone();
            vec![Box::new(master(&config, store, registry))]
        }
        RoleCommand::Worker => {
            let registry = registry.insert(connect_registry(&config).await?).clone();
            vec![Box::new(worker(&config, registry))]
        }
        RoleCommand::Api => {
            let store = open_store(&config).await?;
            // To wake the masters when it inserts commands.
            let registry = registry.insert(connect_registry(&config).await?).clone();
            vec![Box::new(api(&config, store, registry))]
        }
        RoleCommand::Alert => {
            anyhow::bail!("the alert server is not available in this version of sluice yet");
        }
        RoleCommand::Standalone { no_example } => {
            // One process: the in-process registry is the only one that
            // makes sense, whatever the file says.
            config.registry.kind = RegistryKind::Embedded;
            let store = open_store(&config).await?;
            if !no_example {
                example::install(store.as_ref()).await.context("adding the example workflow")?;
            }
            let registry = registry.insert(connect_registry(&config).await?).clone();
            vec![
                Box::new(master(&config, store.clone(), registry.clone())),
                Box::new(worker(&config, registry.clone())),
                Box::new(api(&config, store, registry)),
            ]
        }
    };
    let result = sluice_runtime::run_roles(roles, CancellationToken::new()).await;
    // Ending the session at once frees whatever the roles left in the
    // registry, instead of leaving it until the session times out.
    if let Some(registry) = registry {
        registry.close().await;
    }
    result.map_err(|e| anyhow::anyhow!(e))
}
