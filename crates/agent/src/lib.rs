//! The Agora agent.
//!
//! One task (the actor in [`state`]) owns frameworks, executors, tasks and pending status
//! updates. [`link`] keeps the connection to the master (register, re-register, pings, and
//! an ordered queue of outgoing calls); [`http`] serves the executor API and the read
//! endpoints; [`containerizer`] is the seam through which executors are started.
// `unsafe` is denied except for one pre-exec hook in the containerizer (see its SAFETY note).
#![deny(unsafe_code)]
#![recursion_limit = "256"]

pub mod containerizer;
pub mod http;
pub mod link;
pub mod resources;
pub mod state;

use agora_api::{AgentInfo, Attribute, Resources};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;

/// Everything the agent is configured with.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The master, `host:port`.
    pub master: String,
    pub ip: String,
    pub port: u16,
    pub hostname: Option<String>,
    pub work_dir: PathBuf,
    /// `--resources`; what is not given is detected from the machine.
    pub resources: Option<String>,
    /// `--attributes`, `rack:r1;zone:a`.
    pub attributes: Option<String>,
    pub executor_registration_timeout: Duration,
    pub executor_shutdown_grace_period: Duration,
    /// First retry interval of unacknowledged status updates (Mesos: 10 s, doubling to 10 min).
    pub status_update_retry_interval: Duration,
    /// Upper bound of the first re-registration backoff (Mesos `--registration_backoff_factor`).
    pub registration_backoff_factor: Duration,
    /// The binary that provides `executor` (the command executor): normally `agora` itself.
    pub executor_path: PathBuf,
    pub flags: Vec<(String, String)>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            master: "127.0.0.1:5050".into(),
            ip: "127.0.0.1".into(),
            port: 5051,
            hostname: None,
            work_dir: PathBuf::from("/var/lib/agora/agent"),
            resources: None,
            attributes: None,
            executor_registration_timeout: Duration::from_secs(60),
            executor_shutdown_grace_period: Duration::from_secs(5),
            status_update_retry_interval: Duration::from_secs(10),
            registration_backoff_factor: Duration::from_secs(1),
            executor_path: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("agora")),
            flags: Vec::new(),
        }
    }
}

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot create work dir {path}: {source}")]
    WorkDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Resources(#[from] agora_api::resources::ResourceError),
    #[error("invalid --attributes: {0}")]
    Attributes(String),
}

/// A running agent.
pub struct Agent {
    pub addr: SocketAddr,
    pub handle: state::Handle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    pub async fn start(mut config: AgentConfig) -> Result<Agent, AgentError> {
        std::fs::create_dir_all(&config.work_dir)
            .map_err(|source| AgentError::WorkDir { path: config.work_dir.clone(), source })?;
        let given = match &config.resources {
            Some(r) => Resources::parse(r)?,
            None => Resources::new(),
        };
        let total = resources::with_defaults(given, &config.work_dir);
        let attributes = match &config.attributes {
            Some(a) => Attribute::parse_list(a).map_err(AgentError::Attributes)?,
            None => vec![],
        };
        let bind = format!("{}:{}", config.ip, config.port);
        let listener =
            TcpListener::bind(&bind).await.map_err(|source| AgentError::Bind { addr: bind.clone(), source })?;
        let addr = listener.local_addr().map_err(|source| AgentError::Bind { addr: bind, source })?;
        config.port = addr.port();
        let hostname = config.hostname.clone().unwrap_or_else(|| config.ip.clone());
        let info = AgentInfo {
            hostname,
            port: u32::from(addr.port()),
            resources: total.clone().into_vec(),
            attributes,
            id: None,
            domain: None,
        };
        let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
        let containerizer: Arc<dyn containerizer::Containerizer> = Arc::new(containerizer::PosixContainerizer::new());
        let (handle, actor) = state::spawn(config.clone(), info, containerizer, out_tx);
        let reconnect = Arc::new(tokio::sync::Notify::new());
        let link_task = tokio::spawn(link::run(config.clone(), handle.clone(), reconnect.clone()));
        let out_task = tokio::spawn(link::outbound(config.clone(), out_rx, reconnect));
        let server = tokio::spawn(agora_http::serve(listener, http::handler(handle.clone(), config.clone())));
        tracing::info!(%addr, resources = %total, master = %config.master, "agent started");
        Ok(Agent { addr, handle, tasks: vec![actor, link_task, out_task, server] })
    }

    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}
