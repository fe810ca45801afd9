//! The Agora master.
//!
//! One task (the actor in [`state`]) owns all master state; the HTTP front end in [`http`]
//! parses and validates requests and sends the actor messages. Offers come from the pure
//! allocator crate, driven on a timer and on events.
#![forbid(unsafe_code)]
#![recursion_limit = "256"]

pub mod http;
pub mod legacy;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;

/// Everything the master is configured with.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    pub ip: String,
    pub port: u16,
    pub hostname: Option<String>,
    pub work_dir: PathBuf,
    /// Interval of the periodic allocation cycle (Mesos `--allocation_interval`, 1 s).
    pub allocation_interval: Duration,
    /// Interval between pings to each agent (Mesos `--agent_ping_timeout`, 15 s).
    pub agent_ping_timeout: Duration,
    /// Missed pings before an agent is marked unreachable (Mesos `--max_agent_ping_timeouts`, 5).
    pub max_agent_ping_timeouts: u32,
    /// Interval of HEARTBEAT events on subscription streams (15 s).
    pub heartbeat_interval: Duration,
    /// How many completed tasks to keep per framework (Mesos `--max_completed_tasks_per_framework`).
    pub max_completed_tasks_per_framework: usize,
    /// How many completed frameworks to keep (Mesos `--max_completed_frameworks`).
    pub max_completed_frameworks: usize,
    /// Role weights for DRF (Mesos `--weights role=2,other=1`); unnamed roles weigh 1.
    pub weights: Vec<(String, f64)>,
    /// The flags as given, for `/flags` and GET_FLAGS.
    pub flags: Vec<(String, String)>,
}

/// Parses `--weights`: `role1=2.5,role2=1`.
pub fn parse_weights(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (role, w) = part.split_once('=').ok_or_else(|| format!("weight '{part}' is not ROLE=WEIGHT"))?;
        let w: f64 = w.trim().parse().map_err(|_| format!("weight '{part}' is not a number"))?;
        if !w.is_finite() || w <= 0.0 {
            return Err(format!("weight '{part}' must be a positive number"));
        }
        out.push((role.trim().to_string(), w));
    }
    Ok(out)
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            ip: "127.0.0.1".into(),
            port: 5050,
            hostname: None,
            work_dir: PathBuf::from("/var/lib/agora/master"),
            allocation_interval: Duration::from_secs(1),
            agent_ping_timeout: Duration::from_secs(15),
            max_agent_ping_timeouts: 5,
            heartbeat_interval: Duration::from_secs(15),
            max_completed_tasks_per_framework: 1000,
            max_completed_frameworks: 50,
            weights: Vec::new(),
            flags: Vec::new(),
        }
    }
}

#[derive(Debug, Error)]
pub enum MasterError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot create work dir {path}: {source}")]
    WorkDir { path: PathBuf, source: std::io::Error },
    #[error("invalid address '{0}'")]
    Address(String),
}

/// A running master.
pub struct Master {
    pub addr: SocketAddr,
    pub id: String,
    server: tokio::task::JoinHandle<()>,
    actor: tokio::task::JoinHandle<()>,
}

impl Master {
    /// Binds the listener, starts the state actor and the HTTP server.
    pub async fn start(config: MasterConfig) -> Result<Master, MasterError> {
        std::fs::create_dir_all(&config.work_dir)
            .map_err(|source| MasterError::WorkDir { path: config.work_dir.clone(), source })?;
        let bind = format!("{}:{}", config.ip, config.port);
        let listener =
            TcpListener::bind(&bind).await.map_err(|source| MasterError::Bind { addr: bind.clone(), source })?;
        let addr = listener.local_addr().map_err(|source| MasterError::Bind { addr: bind, source })?;
        let (handle, actor) = state::spawn(config, addr);
        let id = handle.master_id.clone();
        let server = tokio::spawn(agora_http::serve(listener, http::handler(handle)));
        tracing::info!(master_id = %id, %addr, "master started");
        Ok(Master { addr, id, server, actor })
    }

    /// Stops serving and drops all state.
    pub fn stop(&self) {
        self.server.abort();
        self.actor.abort();
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.stop();
    }
}
