//! The Agora master.
//!
//! One task (the actor in [`state`]) owns all master state; the HTTP front end in [`http`]
//! parses and validates requests and sends the actor messages. Offers come from the pure
//! allocator crate, driven on a timer and on events. [`leader`] decides when this master
//! leads: at once with the embedded registry, by election on etcd with `--etcd`.
#![forbid(unsafe_code)]
#![recursion_limit = "256"]

pub mod http;
pub mod leader;
pub mod legacy;
pub mod state;
mod tasks;
pub mod views;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

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
    /// At most this many agents marked unreachable per period (Mesos
    /// `--agent_removal_rate_limit`, e.g. `1/20mins`); `None`: as soon as they fail.
    pub agent_removal_rate_limit: Option<(u32, Duration)>,
    /// Interval of HEARTBEAT events on subscription streams (15 s).
    pub heartbeat_interval: Duration,
    /// How many completed tasks to keep per framework (Mesos `--max_completed_tasks_per_framework`).
    pub max_completed_tasks_per_framework: usize,
    /// How many completed frameworks to keep (Mesos `--max_completed_frameworks`).
    pub max_completed_frameworks: usize,
    /// Role weights for DRF (Mesos `--weights role=2,other=1`); unnamed roles weigh 1.
    pub weights: Vec<(String, f64)>,
    /// How long a newly elected master waits for the registry's agents to re-register
    /// before it marks the missing ones unreachable (Mesos `--agent_reregister_timeout`, 10 min).
    pub agent_reregister_timeout: Duration,
    /// Registry and leader election in etcd (HA); `None`: the embedded registry under
    /// `work_dir`, always leading.
    pub etcd: Option<EtcdConfig>,
    /// Unreachable and gone agents are forgotten by the registry after this long (Mesos
    /// `--registry_max_agent_age`, 2 weeks) ...
    pub registry_max_agent_age: Duration,
    /// ... or, oldest first, beyond this many (Mesos `--registry_max_agent_count`, 102400).
    pub registry_max_agent_count: usize,
    /// How often the registry is pruned so (Mesos `--registry_gc_interval`, 15 mins).
    pub registry_gc_interval: Duration,
    /// `--max-stream-backlog`: bytes a framework's or agent's stream may fall behind; past
    /// it, a reader that took nothing for 10 s (or any reader past 8x it) is cut off.
    pub max_stream_backlog: usize,
    /// The flags as given, for `/flags` and GET_FLAGS.
    pub flags: Vec<(String, String)>,
}

/// `--etcd`, `--etcd-prefix`, `--etcd-lease-ttl`.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Base URLs, `http://host:port`.
    pub endpoints: Vec<String>,
    /// Every key lives under this prefix (`/agora`).
    pub prefix: String,
    /// TTL of the leader's lease: a dead leader is replaced within about this long.
    pub lease_ttl: Duration,
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
            agent_removal_rate_limit: None,
            heartbeat_interval: Duration::from_secs(15),
            max_completed_tasks_per_framework: 1000,
            max_completed_frameworks: 50,
            weights: Vec::new(),
            agent_reregister_timeout: Duration::from_secs(600),
            etcd: None,
            registry_max_agent_age: Duration::from_secs(14 * 24 * 3600),
            registry_max_agent_count: 100 * 1024,
            registry_gc_interval: Duration::from_secs(15 * 60),
            max_stream_backlog: 128 << 20,
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
    #[error("cannot recover the registry: {0}")]
    Registry(#[from] agora_registry::RegistryError),
    #[error("the master did not start leading")]
    NotLeading,
}

/// A running master.
pub struct Master {
    pub addr: SocketAddr,
    pub id: String,
    server: tokio::task::JoinHandle<()>,
    actor: tokio::task::JoinHandle<()>,
    driver: tokio::task::JoinHandle<()>,
    resign: Option<tokio::sync::mpsc::UnboundedSender<tokio::sync::oneshot::Sender<()>>>,
}

impl Master {
    /// Binds the listener, starts the state actor and the HTTP server.
    pub async fn start(config: MasterConfig) -> Result<Master, MasterError> {
        std::fs::create_dir_all(&config.work_dir)
            .map_err(|source| MasterError::WorkDir { path: config.work_dir.clone(), source })?;
        let bind = format!("{}:{}", config.ip, config.port);
        let listener =
            agora_http::listen(&bind).await.map_err(|source| MasterError::Bind { addr: bind.clone(), source })?;
        let addr = listener.local_addr().map_err(|source| MasterError::Bind { addr: bind, source })?;
        let (handle, actor) = state::spawn(config.clone(), addr);
        let id = handle.master_id.clone();
        let mut resign = None;
        let driver = match &config.etcd {
            None => {
                // A single master leads from the start: its registry is read before it serves.
                let dir = config.work_dir.join("registry");
                let mut store = agora_registry::EmbeddedStore::new(&dir);
                let registry = agora_registry::Store::recover(&mut store).await?;
                let driver = tokio::spawn(leader::embedded(dir, handle.tx.clone(), Some((store, registry))));
                let mut role = handle.role.clone();
                let leading =
                    tokio::time::timeout(Duration::from_secs(30), role.wait_for(|r| *r == state::Role::Leading)).await;
                if !matches!(leading, Ok(Ok(_))) {
                    driver.abort();
                    return Err(MasterError::NotLeading);
                }
                driver
            }
            Some(etcd) => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                resign = Some(tx);
                tokio::spawn(leader::etcd(etcd.clone(), handle.master_info.clone(), handle.tx.clone(), rx))
            }
        };
        let server = tokio::spawn(agora_http::serve(listener, http::handler(handle)));
        tracing::info!(master_id = %id, %addr, "master started");
        Ok(Master { addr, id, server, actor, driver, resign })
    }

    /// A clean shutdown: stops serving and acting, then, with etcd, gives the leadership up
    /// (revoking the lease) so that another master need not wait for it to expire.
    pub async fn shutdown(&self) {
        self.server.abort();
        self.actor.abort();
        if let Some(r) = &self.resign {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if r.send(tx).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
            }
        }
        self.stop();
    }

    /// Stops serving and drops all state.
    pub fn stop(&self) {
        self.server.abort();
        self.driver.abort();
        self.actor.abort();
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.stop();
    }
}
