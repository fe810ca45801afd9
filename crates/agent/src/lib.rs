//! The Agora agent.
//!
//! One task (the actor in [`state`]) owns frameworks, executors, tasks and pending status
//! updates. [`link`] keeps the connection to the master (register, re-register, pings, and
//! an ordered queue of outgoing calls); [`http`] serves the executor API and the read
//! endpoints; executors are started through the `agora-containerizer` crate's trait.
#![forbid(unsafe_code)]
#![recursion_limit = "256"]

pub mod checkpoint;
pub mod disk;
pub mod http;
pub mod images;
pub mod images_api;
pub mod link;
pub mod network;
pub mod persistent;
pub mod ports;
pub mod resources;
pub mod simulate;
pub mod state;
pub mod volumes;
pub mod xfs;

use agora_api::{AgentInfo, Attribute, Resources};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

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
    /// The binary that provides `executor` (the command executor) and `supervisor`:
    /// normally `agora` itself.
    pub executor_path: PathBuf,
    /// `--isolation`: isolator names; `None` = the default for this user (root or not).
    pub isolation: Option<String>,
    /// `--cgroups-root`: the cgroup under which every container's cgroup lives.
    pub cgroups_root: String,
    /// `--cgroups-enable-cfs`: hard CPU limits with CFS quota.
    pub cgroups_enable_cfs: bool,
    /// `--cgroups-pids-max`: the process limit of every container (`cgroups/pids`).
    pub cgroups_pids_max: u64,
    /// `--switch-user`: run tasks as their user (CommandInfo.user, else FrameworkInfo.user).
    pub switch_user: bool,
    /// `--recover`: `reconnect` to checkpointed executors, or `cleanup` (kill them, exit).
    pub recover: RecoverMode,
    /// `--strict`: an unreadable checkpoint stops the agent (else what can be read is recovered).
    pub strict: bool,
    /// `--reconfiguration-policy`: how resources and attributes may differ from the checkpoint.
    pub reconfiguration_policy: ReconfigurationPolicy,
    /// `--executor-reregistration-timeout`: how long recovered executors have to re-subscribe.
    pub executor_reregistration_timeout: Duration,
    /// `--docker-registry`: the default registry (`host[:port]`, `http://...`), or a local
    /// directory of `docker save` tarballs.
    pub docker_registry: Option<String>,
    /// `--docker-registry-insecure`: registries (`host[:port]`) spoken to over plain HTTP.
    pub docker_registry_insecure: Vec<String>,
    /// `--docker-config`: Docker's `config.json` with registry credentials.
    pub docker_config: Option<PathBuf>,
    /// `--docker-store-dir`; default `<work dir>/store/docker`.
    pub docker_store_dir: Option<PathBuf>,
    /// `--image-provisioner-backend`: `overlay` or `copy`; default overlay where possible.
    pub image_provisioner_backend: Option<String>,
    /// `--image-gc-headroom`: keep this fraction of the store's filesystem free.
    pub image_gc_headroom: Option<f64>,
    /// `--image-gc-max-store-bytes`: keep the store's layers under this size.
    pub image_gc_max_store_bytes: Option<u64>,
    /// `--image-gc-excluded`: images never collected by the thresholds.
    pub image_gc_excluded: Vec<String>,
    /// Volumes and disk quota (`--allowed-host-paths`, `--enforce-container-disk-quota`, ...).
    pub volumes: volumes::VolumeConfig,
    /// Container networking (`--network-cni-*`).
    pub cni: network::CniConfig,
    /// network/ports (`--container-ports-watch-interval`, ...).
    pub ports: ports::PortsConfig,
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
            isolation: None,
            cgroups_root: "agora".into(),
            cgroups_enable_cfs: false,
            cgroups_pids_max: 4096,
            switch_user: true,
            recover: RecoverMode::Reconnect,
            strict: true,
            reconfiguration_policy: ReconfigurationPolicy::Equal,
            executor_reregistration_timeout: Duration::from_secs(2),
            docker_registry: None,
            docker_registry_insecure: Vec::new(),
            docker_config: None,
            docker_store_dir: None,
            image_provisioner_backend: None,
            image_gc_headroom: None,
            image_gc_max_store_bytes: None,
            image_gc_excluded: Vec::new(),
            volumes: volumes::VolumeConfig::default(),
            cni: network::CniConfig::default(),
            ports: ports::PortsConfig::default(),
            flags: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoverMode {
    Reconnect,
    Cleanup,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconfigurationPolicy {
    /// Resources and attributes must be exactly the checkpointed ones.
    Equal,
    /// They may grow, never shrink or change.
    Additive,
}

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("recovery failed: {0} (start with --strict=false to recover what can be read, or remove the checkpoint)")]
    Recovery(#[from] checkpoint::CheckpointError),
    #[error("{0}")]
    Reconfiguration(String),
    #[error("--recover=cleanup: destroyed {0} containers and removed the checkpoint")]
    CleanedUp(usize),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("cannot create work dir {path}: {source}")]
    WorkDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Resources(#[from] agora_api::resources::ResourceError),
    #[error("invalid --attributes: {0}")]
    Attributes(String),
    #[error("invalid --isolation: {0}")]
    Isolation(String),
    #[error(transparent)]
    Containerizer(#[from] agora_containerizer::ContainerizerError),
    #[error("images: {0}")]
    Images(String),
}

/// A running agent.
pub struct Agent {
    pub addr: SocketAddr,
    pub handle: state::Handle,
    pub images: Arc<images::Images>,
    removed: tokio::sync::watch::Receiver<Option<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Picks the launcher from `--isolation`: `linux` when any namespace or cgroup isolator is
/// named (which needs root), `posix` otherwise.
fn make_containerizer(config: &AgentConfig) -> Result<Arc<dyn agora_containerizer::Containerizer>, AgentError> {
    use agora_containerizer::isolation::{Isolation, DEFAULT_ROOT, DEFAULT_USER};
    let root = nix::unistd::Uid::effective().is_root();
    let names = config.isolation.clone().unwrap_or_else(|| if root { DEFAULT_ROOT } else { DEFAULT_USER }.to_string());
    let isolation = Isolation::parse(&names).map_err(|e| AgentError::Isolation(e.to_string()))?;
    if !isolation.needs_linux_launcher() {
        return Ok(Arc::new(agora_containerizer::posix::PosixContainerizer::new()));
    }
    if !root {
        return Err(AgentError::Isolation(format!("'{names}' needs the linux launcher, which needs root")));
    }
    let linux = agora_containerizer::linux::LinuxContainerizer::new(agora_containerizer::linux::LinuxConfig {
        isolation,
        runtime_dir: config.work_dir.join("containers"),
        cgroups_root: config.cgroups_root.clone(),
        supervisor: vec![config.executor_path.to_string_lossy().into_owned(), "supervisor".into()],
        enable_cfs: config.cgroups_enable_cfs,
        pids_max: config.cgroups_pids_max,
        // Other containers' rootfs overlays and pinned network namespaces: a new container's
        // mount namespace must not keep copies of them alive.
        foreign_mounts: vec![config.work_dir.join("provisioner").join("containers"), config.work_dir.join("cni")],
    })?;
    Ok(Arc::new(linux))
}

/// Reads the checkpoint and decides what of it stands: a reboot or `--recover=cleanup`
/// discards it, a changed configuration is checked against the reconfiguration policy.
fn recover(
    config: &AgentConfig,
    info: &AgentInfo,
    containerizer: &dyn agora_containerizer::Containerizer,
) -> Result<checkpoint::Recovered, AgentError> {
    let ckpt = checkpoint::Checkpoints::new(&config.work_dir);
    let r = ckpt.recover(config.strict)?;
    for e in &r.errors {
        tracing::warn!(error = %e, "skipped an unreadable checkpoint (--strict=false)");
    }
    let Some(old) = r.agent_info.clone() else { return Ok(r) };
    if config.recover == RecoverMode::Cleanup {
        let n = containerizer.cleanup_orphans();
        ckpt.remove_all();
        return Err(AgentError::CleanedUp(n));
    }
    if r.boot_id.as_deref() != Some(checkpoint::current_boot_id().as_str()) {
        tracing::warn!("the host rebooted since the checkpoint: registering as a new agent");
        ckpt.remove_all();
        return Ok(checkpoint::Recovered::default());
    }
    let (old_res, new_res) = (Resources::from_vec(old.resources.clone()), Resources::from_vec(info.resources.clone()));
    let same_res = old_res.contains(&new_res) && new_res.contains(&old_res);
    let same_attrs = old.attributes == info.attributes;
    let ok = match config.reconfiguration_policy {
        ReconfigurationPolicy::Equal => same_res && same_attrs && old.hostname == info.hostname,
        ReconfigurationPolicy::Additive => {
            new_res.contains(&old_res)
                && old.attributes.iter().all(|a| info.attributes.contains(a))
                && old.hostname == info.hostname
        }
    };
    if !ok {
        return Err(AgentError::Reconfiguration(format!(
            "the agent's configuration changed since its checkpoint (resources {old_res} -> {new_res}, {} -> {} attributes) \
             and --reconfiguration-policy={:?} does not allow it; restart with the old --resources/--attributes, \
             use --reconfiguration-policy=additive for growth, or remove {} to start as a new agent",
            old.attributes.len(),
            info.attributes.len(),
            config.reconfiguration_policy,
            ckpt.root().display()
        )));
    }
    Ok(r)
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
            agora_http::listen(&bind).await.map_err(|source| AgentError::Bind { addr: bind.clone(), source })?;
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
        let containerizer = make_containerizer(&config)?;
        let recovered = recover(&config, &info, containerizer.as_ref())?;
        // Reservations and volumes the master made on this agent, on top of --resources.
        let total = match persistent::read(&config.work_dir).map_err(AgentError::Reconfiguration)? {
            Some(c) => {
                let t = agora_api::operations::with_checkpointed(&total, &c).map_err(|e| {
                    AgentError::Reconfiguration(format!(
                        "the checkpointed reservations and volumes do not fit --resources: {e}"
                    ))
                })?;
                tracing::info!(checkpointed = %c, "recovered checkpointed resources");
                t
            }
            None => total,
        };
        let mut info = info;
        info.resources = total.clone().into_vec();
        let images = Arc::new(images::Images::open(&config).await?);
        {
            // Rootfses of containers no checkpoint claims are left over from a crash.
            let claimed: std::collections::HashSet<String> = recovered
                .frameworks
                .iter()
                .flat_map(|f| f.executors.iter().map(|e| e.record.container_id.value.clone()))
                .collect();
            let n = images.remove_orphans(&claimed).await;
            if n > 0 {
                tracing::info!(orphans = n, "removed orphaned rootfses");
            }
            // Networks of containers no checkpoint claims: DEL them, as their containers
            // are gone (destroyed as orphans by recovery).
            for id in network::containers_with_networks(&config.work_dir) {
                if !claimed.contains(&id) {
                    tracing::info!(container_id = %id, "tearing down an orphaned container's networks");
                    let (cni, dir) = (config.cni.clone(), config.work_dir.clone());
                    let _ = tokio::task::spawn_blocking(move || network::teardown(&cni, &dir, &id)).await;
                }
            }
        }
        // disk/xfs: the work dir must have project quotas; ids of containers gone are freed.
        let xfs = {
            use agora_containerizer::isolation::{Isolation, DEFAULT_ROOT, DEFAULT_USER};
            let root = nix::unistd::Uid::effective().is_root();
            let names =
                config.isolation.clone().unwrap_or_else(|| if root { DEFAULT_ROOT } else { DEFAULT_USER }.to_string());
            match Isolation::parse(&names) {
                Ok(i) if i.disk_xfs => {
                    let x = xfs::Xfs::open(&config.work_dir, config.volumes.xfs_project_range)
                        .map_err(AgentError::Isolation)?;
                    let live: std::collections::HashSet<String> = recovered
                        .frameworks
                        .iter()
                        .flat_map(|f| f.executors.iter().map(|e| e.record.container_id.value.clone()))
                        .collect();
                    x.recover(&live);
                    Some(Arc::new(x))
                }
                _ => None,
            }
        };
        let (recovery_tx, recovery_rx) = tokio::sync::oneshot::channel();
        let (handle, removed, actor) =
            state::spawn(config.clone(), info, containerizer, images.clone(), out_tx, recovered, recovery_tx, xfs);
        let (reconnect_tx, reconnect_rx) = tokio::sync::mpsc::unbounded_channel();
        let link_task = tokio::spawn(link::run(config.clone(), handle.clone(), reconnect_rx, recovery_rx));
        let out_task = tokio::spawn(link::outbound(config.clone(), out_rx, reconnect_tx));
        let server =
            tokio::spawn(agora_http::serve(listener, http::handler(handle.clone(), config.clone(), images.clone())));
        tracing::info!(%addr, resources = %total, master = %config.master, "agent started");
        Ok(Agent { addr, handle, images, removed, tasks: vec![actor, link_task, out_task, server] })
    }

    /// Destroys every container (waiting up to 10 s for them to end) and their rootfses,
    /// then stops.
    pub async fn shutdown(&self) {
        let _ = self.handle.ask(|reply| state::Msg::Shutdown { reply }).await;
        self.stop();
        self.images.release_all().await;
    }

    /// Resolves when the master has removed this agent (marked gone, or its machine taken
    /// down) and the agent has ended its containers and forgotten its identity: the process
    /// should exit (Mesos's agent does); started again, it registers as a new agent.
    pub async fn removed_by_master(&self) -> String {
        let mut rx = self.removed.clone();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                // The actor is gone; this agent is never removed.
                std::future::pending::<()>().await;
            }
        }
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
