//! The `linux` launcher: every container is started by its own [`supervisor`] process in new
//! namespaces and cgroups, isolated as `--isolation` says.
//!
//! Launch: create the container's cgroups with their limits, write the supervisor's spec into
//! the container's runtime directory, start `agora supervisor` detached. Exit: the supervisor's
//! `exited.json` gives the status; an OOM kill in the container's memory cgroup turns into a
//! memory limitation; then the cgroups are destroyed (every process killed first) and the
//! runtime directory removed. Mounts live in the container's own mount namespace and vanish
//! with its last process.
use crate::isolation::Isolation;
use crate::supervisor::{self, MountSpec, RlimitSpec, RootfsSpec, Spec};
use crate::{ContainerExit, ContainerStats, Containerizer, ContainerizerError, LaunchSpec, Limitation};
use agora_api::{ContainerId, Reason, Resource};
use agora_cgroups::{Cgroups, Limits};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Docker's default capability set, which `linux/capabilities` keeps unless the task's
/// `ContainerInfo.linux_info` says otherwise.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The smallest memory limit a container may have: the executor needs about this much.
pub const MIN_MEMORY_MB: f64 = 32.0;

/// Where the sandbox appears inside a `filesystem/linux` container.
pub const CONTAINER_SANDBOX: &str = "/mnt/mesos/sandbox";

/// Where an image's prepared rootfs appears in the container's mount namespace (its init
/// stays on the host's root and starts the task in it).
pub const CONTAINER_ROOTFS: &str = "/mnt/mesos/rootfs";

/// The `/etc` files an image container gets, written into its runtime directory.
pub const ETC_FILES: &[&str] = &["hosts", "hostname", "resolv.conf"];

#[derive(Clone, Debug)]
pub struct LinuxConfig {
    pub isolation: Isolation,
    /// Per-container runtime directories (spec and supervisor records).
    pub runtime_dir: PathBuf,
    /// Everything of Agora's lives under this cgroup (`--cgroups-root`).
    pub cgroups_root: String,
    /// The command that runs the supervisor: `[agora, "supervisor"]`.
    pub supervisor: Vec<String>,
    /// Hard CPU limits with CFS quota (`--cgroups-enable-cfs`).
    pub enable_cfs: bool,
    /// `pids.max` of every container (`cgroups/pids`).
    pub pids_max: u64,
    /// Directories under which other containers' rootfs mounts live (the provisioner's):
    /// a new container's mount namespace drops its copies of them.
    pub foreign_mounts: Vec<PathBuf>,
}

struct Running {
    cgroup: String,
    dir: PathBuf,
    mem_limit_mb: Option<f64>,
    cpus_limit: Option<f64>,
}

/// The launcher behind `--launcher linux`.
pub struct LinuxContainerizer {
    config: LinuxConfig,
    cgroups: Option<Arc<Cgroups>>,
    running: Arc<Mutex<HashMap<ContainerId, Running>>>,
}

fn container_info_field<'a>(ci: &'a Option<serde_json::Value>, path: &[&str]) -> Option<&'a serde_json::Value> {
    let mut v = ci.as_ref()?;
    for p in path {
        v = v.get(*p)?;
    }
    Some(v)
}

impl LinuxContainerizer {
    /// Detects the cgroup layout when a cgroups isolator is on.
    pub fn new(config: LinuxConfig) -> Result<LinuxContainerizer, ContainerizerError> {
        let cgroups = if config.isolation.uses_cgroups() {
            Some(Arc::new(Cgroups::detect().map_err(|source| ContainerizerError::Cgroups { id: "-".into(), source })?))
        } else {
            None
        };
        std::fs::create_dir_all(&config.runtime_dir).map_err(|source| ContainerizerError::Runtime {
            id: "-".into(),
            path: config.runtime_dir.clone(),
            source,
        })?;
        Ok(LinuxContainerizer { config, cgroups, running: Arc::new(Mutex::new(HashMap::new())) })
    }

    fn cgroup_of(&self, id: &ContainerId) -> String {
        format!("{}/{}", self.config.cgroups_root, id.value)
    }

    /// Kills and removes what a previous agent run left behind that no checkpoint claims:
    /// containers whose runtime directories remain but are not being recovered. Returns how
    /// many were cleaned.
    pub fn destroy_orphans(&self) -> usize {
        let Ok(rd) = std::fs::read_dir(&self.config.runtime_dir) else { return 0 };
        let claimed: Vec<ContainerId> = self.containers();
        let mut n = 0;
        for e in rd.flatten() {
            let id = ContainerId::new(e.file_name().to_string_lossy().into_owned());
            if claimed.contains(&id) {
                continue;
            }
            tracing::info!(container_id = %id, "destroying an orphaned container");
            let cgroup = self.cgroup_of(&id);
            // Its supervisor may still be starting it: stop the supervisor first, then kill
            // the cgroup until it can be removed (a child may join it late, between fork
            // and exec).
            kill_supervisors_of(&e.path());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                Self::kill_container(self.cgroups.as_deref(), &cgroup, &e.path());
                let removed = match &self.cgroups {
                    Some(cg) => cg.destroy(&cgroup),
                    None => Ok(()),
                };
                match removed {
                    Ok(()) => break,
                    Err(err) if std::time::Instant::now() > deadline => {
                        tracing::warn!(container_id = %id, error = %err, "cannot remove an orphaned cgroup");
                        break;
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
                }
            }
            let _ = std::fs::remove_dir_all(e.path());
            n += 1;
        }
        n
    }

    /// Kills every process of the container (blocking; bounded by the cgroups' kill timeout).
    fn kill_container(cgroups: Option<&Cgroups>, cgroup: &str, dir: &Path) {
        if let Some(cg) = cgroups {
            if let Err(e) = cg.kill_all(cgroup) {
                tracing::warn!(%cgroup, error = %e, "cannot kill the container's processes");
            }
        }
        if let Ok(Some(started)) = crate::fsutil::read_json::<supervisor::Started>(&dir.join(supervisor::STARTED)) {
            // Without cgroups the init process leads its own session (and PID namespace).
            crate::posix::kill_session(started.init_pid as i32);
        }
    }

    fn build_spec(&self, spec: &LaunchSpec, cgroup: &str, dir: &Path) -> Result<Spec, String> {
        let iso = &self.config.isolation;
        let mut env = spec.env.clone();
        let rootfs = match &spec.rootfs {
            None => None,
            Some(_) if !iso.filesystem_linux => {
                return Err("container images need the filesystem/linux isolator".into());
            }
            Some(source) => {
                env.retain(|(k, _)| k != crate::ROOTFS_ENV);
                if !spec.init_in_rootfs {
                    // The init stays on the host and confines its task to the rootfs.
                    env.push((crate::ROOTFS_ENV.into(), CONTAINER_ROOTFS.into()));
                }
                Some(RootfsSpec {
                    source: source.clone(),
                    target: CONTAINER_ROOTFS.into(),
                    sandbox: spec.directory.clone(),
                    etc_files: ETC_FILES.iter().map(|f| (f.to_string(), dir.join("etc").join(f))).collect(),
                    enter: spec.init_in_rootfs,
                })
            }
        };
        let volumes = if spec.volumes.is_empty() {
            Vec::new()
        } else if !iso.filesystem_linux {
            return Err("volumes need the filesystem/linux isolator".into());
        } else {
            let roots = crate::volumes::Roots {
                sandbox: &spec.directory,
                container_sandbox: match &spec.rootfs {
                    Some(_) => Path::new(CONTAINER_ROOTFS).join(CONTAINER_SANDBOX.trim_start_matches('/')),
                    None => CONTAINER_SANDBOX.into(),
                },
                rootfs: spec.rootfs.as_deref().map(|r| (r, PathBuf::from(CONTAINER_ROOTFS))),
            };
            crate::volumes::plan(&spec.volumes, &roots)?
        };
        let mut mounts = Vec::new();
        if iso.filesystem_linux {
            if iso.namespaces_pid {
                mounts.push(MountSpec {
                    source: Some("proc".into()),
                    target: "/proc".into(),
                    fstype: Some("proc".into()),
                    nosuid: true,
                    nodev: true,
                    noexec: true,
                    ..Default::default()
                });
            }
            mounts.push(MountSpec {
                source: Some("/proc/sys".into()),
                target: "/proc/sys".into(),
                bind: true,
                readonly: true,
                ..Default::default()
            });
            mounts.push(MountSpec {
                source: Some(spec.directory.clone()),
                target: CONTAINER_SANDBOX.into(),
                bind: true,
                mkdir: true,
                ..Default::default()
            });
            // Last, and from the container's view of the sandbox: the host sandbox itself may
            // live under /tmp.
            mounts.push(MountSpec {
                source: Some(PathBuf::from(CONTAINER_SANDBOX).join("tmp")),
                target: "/tmp".into(),
                bind: true,
                ..Default::default()
            });
            env.retain(|(k, _)| k != "MESOS_SANDBOX");
            env.push(("MESOS_SANDBOX".into(), CONTAINER_SANDBOX.into()));
            if spec.netns.is_some() && spec.rootfs.is_none() {
                // Its own network: its own /etc/hosts, /etc/hostname, /etc/resolv.conf
                // over the host's (an image gets them in its rootfs instead).
                for f in ETC_FILES {
                    mounts.push(MountSpec {
                        source: Some(dir.join("etc").join(f)),
                        target: Path::new("/etc").join(f),
                        bind: true,
                        ..Default::default()
                    });
                }
            }
        } else if spec.netns.is_some() {
            return Err("a container network needs the filesystem/linux isolator".into());
        }
        let mut rlimits = Vec::new();
        if iso.rlimits {
            if let Some(list) =
                container_info_field(&spec.container_info, &["rlimit_info", "rlimits"]).and_then(|v| v.as_array())
            {
                for r in list {
                    let resource = r["type"].as_str().unwrap_or("").to_string();
                    // Mesos: both unset = unlimited; otherwise both must be set.
                    rlimits.push(RlimitSpec { resource, soft: r["soft"].as_u64(), hard: r["hard"].as_u64() });
                }
            }
        } else if container_info_field(&spec.container_info, &["rlimit_info"]).is_some() {
            return Err("ContainerInfo.rlimit_info needs the posix/rlimits isolator".into());
        }
        let capabilities = if iso.capabilities {
            let from_task =
                container_info_field(&spec.container_info, &["linux_info", "bounding_capabilities", "capabilities"])
                    .or_else(|| {
                        container_info_field(
                            &spec.container_info,
                            &["linux_info", "effective_capabilities", "capabilities"],
                        )
                    })
                    .and_then(|v| v.as_array())
                    .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect::<Vec<_>>());
            Some(from_task.unwrap_or_else(|| DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect()))
        } else {
            None
        };
        let hostname = container_info_field(&spec.container_info, &["hostname"])
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| spec.container_id.value.chars().take(12).collect());
        // On v2 the init is created in the container's cgroup (clone3 CLONE_INTO_CGROUP);
        // on v1 it joins every hierarchy the cgroup exists in before exec.
        let cgroup_v2_dir = self.cgroups.as_ref().and_then(|cg| cg.v2_dir(cgroup));
        let cgroup_procs = match (&cgroup_v2_dir, &self.cgroups) {
            (None, Some(cg)) => cg.procs_files(cgroup),
            _ => Vec::new(),
        };
        let argv = spec.argv.clone();
        Ok(Spec {
            container_id: spec.container_id.value.clone(),
            argv,
            shell: spec.shell,
            env,
            cwd: spec.directory.clone(),
            stdout: spec.directory.join("stdout"),
            stderr: spec.directory.join("stderr"),
            new_pid_ns: iso.namespaces_pid,
            new_mount_ns: iso.filesystem_linux || iso.namespaces_pid,
            new_uts_ns: true,
            new_ipc_ns: iso.namespaces_ipc,
            hostname: Some(hostname),
            mounts,
            cgroup_procs,
            cgroup_v2_dir,
            rlimits,
            capabilities,
            no_new_privs: iso.nnp,
            seccomp: iso.seccomp,
            rootfs,
            detach_under: self.config.foreign_mounts.clone(),
            volumes,
            netns: spec.netns.clone(),
        })
    }

    fn limits(&self, spec: &LaunchSpec) -> Limits {
        let iso = &self.config.isolation;
        let mut l = Limits::default();
        if iso.cgroups_cpu {
            if let Some(c) = spec.cpus {
                l.cpu_shares = Some(agora_cgroups::shares_for_cpus(c));
                if self.config.enable_cfs {
                    let hard = spec.cpus_limit.unwrap_or(c);
                    if hard.is_finite() {
                        let period = 100_000u64;
                        l.cpu_quota = Some((((hard * period as f64) as i64).max(1000), period));
                    }
                }
            }
        }
        if iso.cgroups_mem {
            if let Some(m) = spec.mem_mb {
                let hard = spec.mem_limit_mb.unwrap_or(m);
                if hard.is_finite() {
                    l.memory_limit = Some((hard * 1024.0 * 1024.0) as u64);
                }
                if spec.mem_limit_mb.is_some() {
                    l.memory_soft_limit = Some((m * 1024.0 * 1024.0) as u64);
                }
            }
        }
        if iso.cgroups_pids {
            l.pids_max = Some(self.config.pids_max);
        }
        l
    }
}

/// Writes the `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` an image container gets:
/// its own hostname on loopback (the container shares the host's network), and the host's
/// resolver configuration.
fn write_etc_files(
    etc: &Path,
    hostname: &str,
    ip: Option<&str>,
    nameservers: &[String],
) -> Result<(), (PathBuf, std::io::Error)> {
    std::fs::create_dir_all(etc).map_err(|e| (etc.to_path_buf(), e))?;
    let own = ip.unwrap_or("127.0.1.1");
    let hosts = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{hostname}\n");
    let resolv = if nameservers.is_empty() {
        std::fs::read("/etc/resolv.conf").unwrap_or_default()
    } else {
        nameservers.iter().map(|n| format!("nameserver {n}\n")).collect::<String>().into_bytes()
    };
    for (name, data) in
        [("hosts", hosts.into_bytes()), ("hostname", format!("{hostname}\n").into_bytes()), ("resolv.conf", resolv)]
    {
        let p = etc.join(name);
        std::fs::write(&p, data).map_err(|e| (p.clone(), e))?;
    }
    Ok(())
}

fn chown_to(path: &Path, user: &Option<String>) {
    let Some(u) = user else { return };
    let Ok(Some(user)) = nix::unistd::User::from_name(u) else { return };
    if nix::unistd::Uid::effective().is_root() {
        let _ = nix::unistd::chown(path, Some(user.uid), Some(user.gid));
    }
}

/// What is needed to report a container's end and clean up after it.
struct Finisher {
    id: ContainerId,
    dir: PathBuf,
    cgroup: String,
    exits: mpsc::UnboundedSender<ContainerExit>,
    running: Arc<Mutex<HashMap<ContainerId, Running>>>,
    cgroups: Option<Arc<Cgroups>>,
    mem_isolated: bool,
}

impl Finisher {
    /// Reads the supervisor's record, notes an OOM kill, removes the cgroups and the runtime
    /// directory, and reports the exit.
    async fn finish(self) {
        let Finisher { id, dir, cgroup, exits, running, cgroups, mem_isolated } = self;
        let rec: Option<supervisor::Exited> = crate::fsutil::read_json(&dir.join(supervisor::EXITED)).ok().flatten();
        let (status, message) = match rec {
            Some(r) => (r.status, r.message),
            None => (None, "the supervisor ended without recording the container's exit".to_string()),
        };
        let mem_limit = running.lock().ok().and_then(|m| m.get(&id).and_then(|r| r.mem_limit_mb));
        let limitation = tokio::task::spawn_blocking(move || {
            let cg = cgroups?;
            let oom = mem_isolated && cg.oom_killed(&cgroup).unwrap_or(false);
            if let Err(e) = cg.destroy(&cgroup) {
                tracing::warn!(%cgroup, error = %e, "cannot destroy cgroup");
            }
            oom.then(|| memory_limitation(mem_limit))
        })
        .await
        .ok()
        .flatten();
        let _ = std::fs::remove_dir_all(&dir);
        if let Ok(mut m) = running.lock() {
            m.remove(&id);
        }
        let _ = exits.send(ContainerExit { container_id: id, status, message, limitation });
    }
}

/// SIGKILLs every supervisor process whose command line names this runtime directory.
fn kill_supervisors_of(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(rd) = std::fs::read_dir("/proc") else { return };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if supervisor_alive(pid as u32, Path::new(&needle)) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Whether `pid` is alive and is the supervisor of the container in `dir` (not a reused pid).
fn supervisor_alive(pid: u32, dir: &Path) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(c) => {
            let c = String::from_utf8_lossy(&c);
            c.contains("supervisor") && c.contains(&*dir.to_string_lossy())
        }
        Err(_) => false,
    }
}

impl LinuxContainerizer {
    fn finisher(
        &self,
        id: ContainerId,
        dir: PathBuf,
        cgroup: String,
        exits: mpsc::UnboundedSender<ContainerExit>,
    ) -> Finisher {
        Finisher {
            id,
            dir,
            cgroup,
            exits,
            running: self.running.clone(),
            cgroups: self.cgroups.clone(),
            mem_isolated: self.config.isolation.cgroups_mem,
        }
    }
}

impl Containerizer for LinuxContainerizer {
    fn supports_images(&self) -> bool {
        self.config.isolation.filesystem_linux
    }

    fn cleanup_orphans(&self) -> usize {
        self.destroy_orphans()
    }

    fn recover(&self, id: &ContainerId, _pid: u32, exits: mpsc::UnboundedSender<ContainerExit>) -> bool {
        let dir = self.config.runtime_dir.join(&id.value);
        if !dir.is_dir() {
            return false;
        }
        let cgroup = self.cgroup_of(id);
        let started: Option<supervisor::Started> =
            crate::fsutil::read_json(&dir.join(supervisor::STARTED)).ok().flatten();
        if let Ok(mut m) = self.running.lock() {
            m.insert(
                id.clone(),
                Running { cgroup: cgroup.clone(), dir: dir.clone(), mem_limit_mb: None, cpus_limit: None },
            );
        }
        let done = self.finisher(id.clone(), dir.clone(), cgroup, exits);
        tokio::spawn(async move {
            // Not our child any more: watch for the supervisor's record or its death.
            loop {
                if dir.join(supervisor::EXITED).exists() {
                    break;
                }
                match &started {
                    Some(s) if supervisor_alive(s.supervisor_pid, &dir) => {}
                    _ => {
                        // Gone without a record; give a racing write a moment.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        break;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            done.finish().await;
        });
        true
    }

    fn launch(&self, spec: LaunchSpec, exits: mpsc::UnboundedSender<ContainerExit>) -> Result<u32, ContainerizerError> {
        let id = spec.container_id.clone();
        let ids = id.value.clone();
        let invalid = |message: String| ContainerizerError::Invalid { id: ids.clone(), message };
        if self.config.isolation.cgroups_mem {
            if let Some(m) = spec.mem_mb {
                if m < MIN_MEMORY_MB {
                    return Err(invalid(format!(
                        "mem {m} MB is below the minimum of {MIN_MEMORY_MB} MB a container needs"
                    )));
                }
            }
        }
        if let Some(u) = &spec.user {
            if nix::unistd::User::from_name(u).ok().flatten().is_none() {
                return Err(ContainerizerError::NoSuchUser { id: ids.clone(), user: u.clone() });
            }
        }
        let cgroup = self.cgroup_of(&id);
        let dir = self.config.runtime_dir.join(&id.value);
        let sup_spec = self.build_spec(&spec, &cgroup, &dir).map_err(&invalid)?;
        supervisor::validate(&sup_spec).map_err(&invalid)?;
        // A BIDIRECTIONAL volume's source must be a shared mount on the host.
        for v in spec.volumes.iter().filter(|v| v.propagation == crate::Propagation::Bidirectional) {
            crate::volumes::ensure_shared(&v.source).map_err(&invalid)?;
        }
        // The sandbox (and its private /tmp) belong to the task's user.
        let sandbox_err =
            |path: &Path, source| ContainerizerError::Sandbox { id: ids.clone(), path: path.to_path_buf(), source };
        std::fs::create_dir_all(spec.directory.join("tmp")).map_err(|e| sandbox_err(&spec.directory, e))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(spec.directory.join("tmp"), std::fs::Permissions::from_mode(0o1777));
        }
        for f in ["stdout", "stderr"] {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(spec.directory.join(f))
                .map_err(|e| sandbox_err(&spec.directory, e))?;
        }
        for p in [spec.directory.clone(), spec.directory.join("stdout"), spec.directory.join("stderr")] {
            chown_to(&p, &spec.user);
        }
        let runtime_err =
            |path: &Path, source| ContainerizerError::Runtime { id: ids.clone(), path: path.to_path_buf(), source };
        std::fs::create_dir_all(&dir).map_err(|e| runtime_err(&dir, e))?;
        if sup_spec.rootfs.is_some() || sup_spec.netns.is_some() {
            let hostname = sup_spec.hostname.clone().unwrap_or_default();
            if let Err((path, e)) =
                write_etc_files(&dir.join("etc"), &hostname, spec.container_ip.as_deref(), &spec.nameservers)
            {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(runtime_err(&path, e));
            }
        }
        if let Some(cg) = &self.cgroups {
            cg.create(&cgroup, &self.limits(&spec))
                .map_err(|source| ContainerizerError::Cgroups { id: ids.clone(), source })?;
        }
        let cleanup = |this: &Self| {
            if let Some(cg) = &this.cgroups {
                let _ = cg.destroy(&cgroup);
            }
            let _ = std::fs::remove_dir_all(&dir);
        };
        if let Err(e) = crate::fsutil::write_json(&dir.join(supervisor::SPEC), &sup_spec) {
            cleanup(self);
            return Err(runtime_err(&dir.join(supervisor::SPEC), e));
        }
        let log = match std::fs::File::create(dir.join(supervisor::LOG)) {
            Ok(f) => f,
            Err(e) => {
                cleanup(self);
                return Err(runtime_err(&dir.join(supervisor::LOG), e));
            }
        };
        let Some(program) = self.config.supervisor.first() else {
            cleanup(self);
            return Err(invalid("no supervisor command configured".into()));
        };
        let mut cmd = std::process::Command::new(program);
        cmd.args(&self.config.supervisor[1..]).arg("--runtime-dir").arg(&dir).stdin(std::process::Stdio::null());
        match log.try_clone() {
            Ok(l2) => {
                cmd.stdout(log).stderr(l2);
            }
            Err(_) => {
                cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            }
        }
        crate::posix::new_session(&mut cmd);
        let mut child = match tokio::process::Command::from(cmd).kill_on_drop(false).spawn() {
            Ok(c) => c,
            Err(source) => {
                cleanup(self);
                return Err(ContainerizerError::Spawn { id: ids.clone(), program: program.clone(), source });
            }
        };
        let pid = child.id().unwrap_or(0);
        if let Ok(mut m) = self.running.lock() {
            m.insert(
                id.clone(),
                Running {
                    cgroup: cgroup.clone(),
                    dir: dir.clone(),
                    mem_limit_mb: spec.mem_limit_mb.or(spec.mem_mb),
                    cpus_limit: spec.cpus_limit.or(spec.cpus),
                },
            );
        }
        let done = self.finisher(id, dir, cgroup, exits);
        tokio::spawn(async move {
            let _ = child.wait().await;
            done.finish().await;
        });
        Ok(pid)
    }

    fn destroy(&self, id: &ContainerId) {
        let found = self.running.lock().ok().and_then(|m| m.get(id).map(|r| (r.dir.clone(), r.cgroup.clone())));
        if let Some((dir, cgroup)) = found {
            // Killing may wait for a freezer; never on the caller's (the agent actor's) thread.
            let cgroups = self.cgroups.clone();
            tokio::task::spawn_blocking(move || Self::kill_container(cgroups.as_deref(), &cgroup, &dir));
        }
    }

    fn containers(&self) -> Vec<ContainerId> {
        self.running.lock().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    fn limitation(&self, id: &ContainerId) -> Option<Limitation> {
        if !self.config.isolation.cgroups_mem {
            return None;
        }
        let (cgroup, mem) =
            self.running.lock().ok().and_then(|m| m.get(id).map(|r| (r.cgroup.clone(), r.mem_limit_mb)))?;
        let oom = self.cgroups.as_ref()?.oom_killed(&cgroup).unwrap_or(false);
        oom.then(|| memory_limitation(mem))
    }

    fn pids(&self, id: &ContainerId) -> Vec<i32> {
        let Some(cgroup) = self.running.lock().ok().and_then(|m| m.get(id).map(|r| r.cgroup.clone())) else {
            return Vec::new();
        };
        self.cgroups.as_ref().and_then(|cg| cg.procs(&cgroup).ok()).unwrap_or_default()
    }

    fn usage(&self, id: &ContainerId) -> Option<ContainerStats> {
        let (cgroup, cpus) =
            self.running.lock().ok().and_then(|m| m.get(id).map(|r| (r.cgroup.clone(), r.cpus_limit)))?;
        let s = self.cgroups.as_ref()?.stats(&cgroup).ok()?;
        Some(ContainerStats {
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            cpus_user_time_secs: s.cpu_user_secs,
            cpus_system_time_secs: s.cpu_system_secs,
            cpus_limit: cpus,
            cpus_nr_periods: s.cpu_nr_periods,
            cpus_nr_throttled: s.cpu_nr_throttled,
            cpus_throttled_time_secs: s.cpu_throttled_secs,
            mem_rss_bytes: s.mem_rss_bytes,
            mem_cache_bytes: s.mem_cache_bytes,
            mem_total_bytes: s.mem_usage_bytes,
            mem_limit_bytes: s.mem_limit_bytes,
            processes: s.pids_current,
        })
    }
}

fn memory_limitation(limit_mb: Option<f64>) -> Limitation {
    let limit = limit_mb.unwrap_or(0.0);
    Limitation {
        reason: Reason::ReasonContainerLimitationMemory,
        message: format!("Memory limit exceeded: the container was OOM-killed at its limit of {limit} MB"),
        resources: vec![Resource::scalar("mem", limit)],
    }
}
