//! Agora's unified containerizer: how an executor (and with it its tasks) is started,
//! isolated, watched and destroyed, without any container daemon.
//!
//! The agent only talks to the [`Containerizer`] trait. Two launchers implement it:
//! - [`posix::PosixContainerizer`]: a plain process, leader of its own session; no isolation.
//! - [`linux::LinuxContainerizer`]: a per-container [`supervisor`] process (outliving the
//!   agent) starts the container's init in new PID, mount, UTS and IPC namespaces, inside the
//!   container's cgroups, with capabilities, no_new_privs, rlimits and a seccomp filter
//!   applied before exec, and records its exit status on disk.
//!
//! Isolators are picked by their Mesos names ([`isolation::Isolation::parse`]).
// `unsafe` is denied except in the pre-exec hooks that must run between fork and exec.
#![deny(unsafe_code)]

pub mod fsutil;
pub mod isolation;
pub mod linux;
pub mod posix;
pub mod seccomp;
pub mod supervisor;
pub mod volumes;

use agora_api::{ContainerId, Reason, Resource};
use std::path::PathBuf;
use thiserror::Error;
use tokio::sync::mpsc;

/// What to run in a new container.
#[derive(Clone, Debug, Default)]
pub struct LaunchSpec {
    pub container_id: ContainerId,
    /// The program and its arguments (argv[0] first).
    pub argv: Vec<String>,
    /// Run through `/bin/sh -c argv[0]` instead.
    pub shell: bool,
    pub env: Vec<(String, String)>,
    /// The sandbox on the host: working directory, holds `stdout` and `stderr`.
    pub directory: PathBuf,
    /// The sandbox's owner (the task's user, when the agent is root and switches users).
    pub user: Option<String>,
    /// cpus, mem (MB) and pids the container may use (the executor's overhead included).
    pub cpus: Option<f64>,
    pub mem_mb: Option<f64>,
    /// Hard limits above the request (`TaskInfo.limits`): `None` = the request,
    /// `Some(f64::INFINITY)` = unlimited.
    pub cpus_limit: Option<f64>,
    pub mem_limit_mb: Option<f64>,
    /// `ContainerInfo` of the task or executor, as JSON (rlimits, linux_info, hostname).
    pub container_info: Option<serde_json::Value>,
    /// A provisioned image root filesystem (host path) the container's task runs in. The
    /// container's init (the executor) stays on the host's root; the launcher prepares this
    /// rootfs (special filesystems, `/etc` files, the sandbox) in the container's mount
    /// namespace and tells the init where it is with [`ROOTFS_ENV`]. Needs `filesystem/linux`.
    pub rootfs: Option<PathBuf>,
    /// The container's init itself runs in `rootfs` (a custom executor in an image), not
    /// only its task: the launcher pivots into the rootfs before exec.
    pub init_in_rootfs: bool,
    /// A network namespace (pinned by the agent's network/cni) the container joins instead
    /// of the host's network, with its address and DNS servers for `/etc/hosts` and
    /// `/etc/resolv.conf` (empty: the host's).
    pub netns: Option<PathBuf>,
    pub container_ip: Option<String>,
    pub nameservers: Vec<String>,
    /// Host directories or files mounted into the container, in order (volumes of every
    /// kind: sandbox paths, host paths, image volumes, persistent volumes). Needs
    /// `filesystem/linux`.
    pub volumes: Vec<VolumeMount>,
}

/// One volume, resolved by the agent to a host path.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VolumeMount {
    /// What is mounted: an existing host directory or file (already checked against the
    /// agent's policy, e.g. `--allowed-host-paths`).
    pub source: PathBuf,
    /// Where, as the container asks: relative = under the sandbox (also seen at
    /// `/mnt/mesos/sandbox/<target>`), absolute = in the container's root filesystem (the
    /// image's rootfs, or the host's for a container without an image). The launcher
    /// resolves it without following symlinks out of that root and without `..`.
    pub target: String,
    pub read_only: bool,
    pub propagation: Propagation,
}

/// Mount propagation of a volume (Mesos `MountPropagation.Mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Propagation {
    /// Mounts made on the host under the source later appear in the container (rslave).
    #[default]
    HostToContainer,
    /// Mounts propagate both ways (rshared).
    Bidirectional,
}

/// The environment variable that tells a container's init where the task's prepared root
/// filesystem is, as the init sees it.
pub const ROOTFS_ENV: &str = "AGORA_TASK_ROOTFS";

/// Why a container was stopped by its isolation.
#[derive(Clone, Debug, PartialEq)]
pub struct Limitation {
    pub reason: Reason,
    pub message: String,
    /// The resources whose limit was hit (e.g. `mem`).
    pub resources: Vec<Resource>,
}

/// A container's end, as the containerizer observed it.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerExit {
    pub container_id: ContainerId,
    /// The wait status: exit code, or 128+signal when killed by a signal.
    pub status: Option<i32>,
    pub message: String,
    /// Set when the container ended because it hit a limit.
    pub limitation: Option<Limitation>,
}

/// Resource usage of a container, for `/monitor/statistics` and GET_CONTAINERS.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ContainerStats {
    pub timestamp: f64,
    pub cpus_user_time_secs: f64,
    pub cpus_system_time_secs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus_limit: Option<f64>,
    pub cpus_nr_periods: u64,
    pub cpus_nr_throttled: u64,
    pub cpus_throttled_time_secs: f64,
    pub mem_rss_bytes: u64,
    pub mem_cache_bytes: u64,
    pub mem_total_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_limit_bytes: Option<u64>,
    pub processes: u64,
}

#[derive(Debug, Error)]
pub enum ContainerizerError {
    #[error("container {id}: cannot prepare sandbox {path}: {source}")]
    Sandbox { id: String, path: PathBuf, source: std::io::Error },
    #[error("container {id}: cannot start '{program}': {source}")]
    Spawn { id: String, program: String, source: std::io::Error },
    #[error("container {id}: user '{user}' does not exist")]
    NoSuchUser { id: String, user: String },
    #[error("container {id}: empty command")]
    EmptyCommand { id: String },
    #[error("container {id}: {message}")]
    Invalid { id: String, message: String },
    #[error("container {id}: cgroups: {source}")]
    Cgroups { id: String, source: agora_cgroups::CgroupError },
    #[error("container {id}: cannot write {path}: {source}")]
    Runtime { id: String, path: PathBuf, source: std::io::Error },
}

/// One plugin point: start, destroy, watch and report the end of containers.
pub trait Containerizer: Send + Sync {
    /// Starts the container; returns the pid of its top process. Its end is reported once
    /// on `exits`.
    fn launch(&self, spec: LaunchSpec, exits: mpsc::UnboundedSender<ContainerExit>) -> Result<u32, ContainerizerError>;
    /// Kills every process of the container (idempotent); its end is still reported.
    fn destroy(&self, id: &ContainerId);
    /// Containers currently running.
    fn containers(&self) -> Vec<ContainerId>;
    /// A limit the container has hit so far (e.g. an OOM kill of one of its processes).
    fn limitation(&self, _id: &ContainerId) -> Option<Limitation> {
        None
    }
    /// The processes of a running container (host pids), where the launcher knows them.
    fn pids(&self, _id: &ContainerId) -> Vec<i32> {
        Vec::new()
    }
    /// Current resource usage, where the launcher can measure it.
    fn usage(&self, _id: &ContainerId) -> Option<ContainerStats> {
        None
    }
    /// Takes back a container a previous agent run started (after a restart): its end will
    /// be reported on `exits` like any other. `false` when nothing of it is left.
    /// `pid` is what `launch` returned for it.
    fn recover(&self, _id: &ContainerId, _pid: u32, _exits: mpsc::UnboundedSender<ContainerExit>) -> bool {
        false
    }
    /// Kills and forgets containers a previous run left that nobody recovered.
    fn cleanup_orphans(&self) -> usize {
        0
    }
    /// Whether containers may run in an image's root filesystem (`LaunchSpec::rootfs`).
    fn supports_images(&self) -> bool {
        false
    }
}
