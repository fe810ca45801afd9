//! The per-container supervisor (`agora supervisor --runtime-dir DIR`): the parent of a
//! container's init process, outliving the agent. Its protocol is written down in
//! `docs/supervisor.md`; in short:
//!
//! 1. The agent writes `DIR/spec.json` ([`Spec`]) and starts the supervisor detached (its own
//!    session, output to `DIR/supervisor.log`).
//! 2. The supervisor starts the init process in new namespaces, inside the container's
//!    cgroups, with rlimits, no_new_privs, the seccomp filter and the capability bounding set
//!    applied between fork and exec; then it publishes `DIR/started.json` ([`Started`]).
//! 3. When init exits (and with a PID namespace, every process of the container with it),
//!    the supervisor publishes `DIR/exited.json` ([`Exited`]) and exits.
//!
//! Records are written atomically and fsynced; `started.json` always exists before
//! `exited.json`. The supervisor is single-threaded, so the code between fork and exec may
//! allocate safely.
use crate::fsutil::{read_json, write_json};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A mount made in the container's mount namespace, in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MountSpec {
    pub source: Option<PathBuf>,
    pub target: PathBuf,
    pub fstype: Option<String>,
    pub bind: bool,
    pub recursive: bool,
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub data: Option<String>,
    /// Create the target directory first.
    pub mkdir: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RlimitSpec {
    /// Mesos name, e.g. `RLMT_NOFILE`.
    pub resource: String,
    /// `None` = unlimited.
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// A container image's root filesystem, prepared for the task by the init's setup (see
/// `docs/supervisor.md`, "Images"). The init itself keeps the host's root.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// The provisioned rootfs on the host.
    pub source: PathBuf,
    /// Where it is bind-mounted in the container's mount namespace (outside `/tmp`, which
    /// the container's own `/tmp` covers), with `/proc`, `/sys`, `/dev` and the rest in it.
    pub target: PathBuf,
    /// The host sandbox, bind-mounted at `<target>/mnt/mesos/sandbox`.
    pub sandbox: PathBuf,
    /// Files bind-mounted over `<target>/etc/<name>`: (name, host file).
    pub etc_files: Vec<(String, PathBuf)>,
    /// The init itself runs in the rootfs (a custom executor in an image): once everything
    /// is mounted it pivots into `target` (the host's root detached) and starts in the
    /// sandbox, `/mnt/mesos/sandbox`.
    #[serde(default)]
    pub enter: bool,
}

/// What the supervisor starts (`spec.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub container_id: String,
    pub argv: Vec<String>,
    pub shell: bool,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub new_pid_ns: bool,
    pub new_mount_ns: bool,
    pub new_uts_ns: bool,
    pub new_ipc_ns: bool,
    pub hostname: Option<String>,
    pub mounts: Vec<MountSpec>,
    /// `cgroup.procs` files the init process joins before exec (it writes "0").
    pub cgroup_procs: Vec<PathBuf>,
    /// On cgroup v2: the container's cgroup directory, which the init is created in
    /// (`clone3(CLONE_INTO_CGROUP)`: no migration, no RCU wait on the launch path).
    #[serde(default)]
    pub cgroup_v2_dir: Option<PathBuf>,
    pub rlimits: Vec<RlimitSpec>,
    /// Capabilities kept (bounding, permitted, effective, inheritable); `None` keeps all.
    pub capabilities: Option<Vec<String>>,
    pub no_new_privs: bool,
    pub seccomp: bool,
    /// An image rootfs to prepare for the task (made before `mounts`).
    #[serde(default)]
    pub rootfs: Option<RootfsSpec>,
    /// Mounts under these directories (other containers' rootfses) are detached from the
    /// new mount namespace, which would otherwise hold copies of them until it ends.
    #[serde(default)]
    pub detach_under: Vec<PathBuf>,
    /// Volumes mounted in the container's mount namespace (see [`crate::volumes`]).
    #[serde(default)]
    pub volumes: Vec<crate::volumes::VolumeSpec>,
    /// A pinned network namespace the init joins (network/cni); `None`: the host's.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

/// `started.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub supervisor_pid: u32,
    /// The init process, as the host sees it.
    pub init_pid: u32,
    pub started_at: f64,
}

/// `exited.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exited {
    /// Exit code, or 128+signal when init was killed by a signal; `None` when it never ran.
    pub status: Option<i32>,
    pub signal: Option<i32>,
    pub message: String,
    pub finished_at: f64,
}

pub const SPEC: &str = "spec.json";
pub const STARTED: &str = "started.json";
pub const EXITED: &str = "exited.json";
pub const LOG: &str = "supervisor.log";

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn rlimit_resource(name: &str) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match name {
        "RLMT_AS" => R::RLIMIT_AS,
        "RLMT_CORE" => R::RLIMIT_CORE,
        "RLMT_CPU" => R::RLIMIT_CPU,
        "RLMT_DATA" => R::RLIMIT_DATA,
        "RLMT_FSIZE" => R::RLIMIT_FSIZE,
        "RLMT_LOCKS" => R::RLIMIT_LOCKS,
        "RLMT_MEMLOCK" => R::RLIMIT_MEMLOCK,
        "RLMT_MSGQUEUE" => R::RLIMIT_MSGQUEUE,
        "RLMT_NICE" => R::RLIMIT_NICE,
        "RLMT_NOFILE" => R::RLIMIT_NOFILE,
        "RLMT_NPROC" => R::RLIMIT_NPROC,
        "RLMT_RSS" => R::RLIMIT_RSS,
        "RLMT_RTPRIO" => R::RLIMIT_RTPRIO,
        "RLMT_RTTIME" => R::RLIMIT_RTTIME,
        "RLMT_SIGPENDING" => R::RLIMIT_SIGPENDING,
        "RLMT_STACK" => R::RLIMIT_STACK,
        _ => return None,
    })
}

/// Checks a spec before anything is started: the errors a framework should see.
pub fn validate(spec: &Spec) -> Result<(), String> {
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err("empty command".into());
    }
    for r in &spec.rlimits {
        if rlimit_resource(&r.resource).is_none() {
            return Err(format!("unknown rlimit type '{}'", r.resource));
        }
        if let (Some(s), Some(h)) = (r.soft, r.hard) {
            if s > h {
                return Err(format!("rlimit {}: soft limit {s} is above the hard limit {h}", r.resource));
            }
        }
        if r.soft.is_none() && r.hard.is_some() {
            return Err(format!("rlimit {}: an unlimited soft limit needs an unlimited hard limit", r.resource));
        }
    }
    if let Some(caps) = &spec.capabilities {
        for c in caps {
            capability(c)?;
        }
    }
    if let Some(r) = &spec.rootfs {
        if !r.source.is_absolute() || !r.target.is_absolute() {
            return Err("the rootfs source and target must be absolute paths".into());
        }
        if !spec.new_mount_ns {
            return Err("an image rootfs needs a mount namespace".into());
        }
        for (name, _) in &r.etc_files {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(format!("invalid /etc file name '{name}'"));
            }
        }
    }
    if !spec.volumes.is_empty() && !spec.new_mount_ns {
        return Err("volumes need a mount namespace (the filesystem/linux isolator)".into());
    }
    for v in &spec.volumes {
        crate::volumes::check_target(&v.path)?;
        if !v.source.is_absolute() || !v.root.is_absolute() {
            return Err(format!("volume {}: source and root must be absolute paths", v.path));
        }
    }
    Ok(())
}

/// Makes the prepared rootfs the container's root: `pivot_root` with the old root stacked
/// under the new one, then the old root lazily unmounted, so no host path stays reachable
/// (unlike a chroot). The working directory becomes the sandbox inside it.
fn enter_rootfs(target: &Path) -> std::io::Result<()> {
    nix::unistd::chdir(target).map_err(|e| io_err(&format!("chdir {}", target.display()), e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| io_err("pivot_root", e))?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH).map_err(|e| io_err("detach the host's root", e))?;
    nix::unistd::chdir(crate::linux::CONTAINER_SANDBOX).map_err(|e| io_err("chdir to the sandbox", e))?;
    Ok(())
}

/// Lazily unmounts, in this (new, private) mount namespace, every mount below one of `dirs`
/// except `keep`: other containers' rootfs mounts, copied in by `unshare`, that would
/// otherwise stay referenced here after their containers ended. Best effort.
fn detach_mounts_under(dirs: &[PathBuf], keep: &[&Path]) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| dirs.iter().any(|d| p.starts_with(d) && p != d) && !keep.contains(&p.as_path()))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Host devices bind-mounted into an image's `/dev`.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// `root/rel`, made sure to stay inside `root`: every existing component of `rel` must be
/// a directory (or, for the last one, a regular file) and never a symlink, which a
/// malicious image could point at the host. Missing directories are created (`mkdir`).
fn inside(root: &Path, rel: &str, mkdir: bool) -> std::io::Result<PathBuf> {
    let mut p = root.to_path_buf();
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        if c == ".." || c == "." {
            return Err(io_err(&format!("path {rel}"), "must not contain '.' or '..'"));
        }
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(io_err(&format!("{} in the image", p.display()), "is a symlink; refused"));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && mkdir => {
                std::fs::create_dir(&p).map_err(|e| io_err(&format!("mkdir {}", p.display()), e))?;
            }
            Err(e) => return Err(io_err(&format!("stat {}", p.display()), e)),
        }
    }
    Ok(p)
}

/// `dir/name` as an empty regular file to mount over: a symlink or anything else than a
/// regular file there (the image's own, in the container's private copy) is replaced.
fn mount_point_file(dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let p = dir.join(name);
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.file_type().is_file() => return Ok(p),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
        Ok(_) => std::fs::remove_file(&p),
        Err(_) => Ok(()),
    }
    .map_err(|e| io_err(&format!("replace {}", p.display()), e))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .map_err(|e| io_err(&format!("create {}", p.display()), e))?;
    Ok(p)
}

/// Prepares an image rootfs in the (new, private) mount namespace of the container's init:
/// the rootfs bind-mounted at its target, then `/proc`, a read-only `/sys`, a minimal
/// `/dev` (tmpfs with the host's null, zero, full, random, urandom and tty, `/dev/pts`,
/// `/dev/shm`), the sandbox at `/mnt/mesos/sandbox` and the `/etc` files, all inside it.
/// Nothing follows a symlink of the image.
fn prepare_rootfs(r: &RootfsSpec) -> std::io::Result<()> {
    use nix::mount::MsFlags;
    let mk = |target: PathBuf| MountSpec { target, ..Default::default() };
    std::fs::create_dir_all(&r.target).map_err(|e| io_err(&format!("mkdir {}", r.target.display()), e))?;
    do_mount(&MountSpec { source: Some(r.source.clone()), bind: true, recursive: true, ..mk(r.target.clone()) })?;
    let root = r.target.as_path();
    do_mount(&MountSpec {
        source: Some("proc".into()),
        fstype: Some("proc".into()),
        nosuid: true,
        nodev: true,
        noexec: true,
        ..mk(inside(root, "proc", true)?)
    })?;
    do_mount(&MountSpec {
        source: Some("/sys".into()),
        bind: true,
        readonly: true,
        nosuid: true,
        nodev: true,
        noexec: true,
        ..mk(inside(root, "sys", true)?)
    })?;
    let dev = inside(root, "dev", true)?;
    do_mount(&MountSpec {
        source: Some("tmpfs".into()),
        fstype: Some("tmpfs".into()),
        nosuid: true,
        noexec: true,
        data: Some("mode=755,size=65536k".into()),
        ..mk(dev.clone())
    })?;
    for d in DEVICES {
        let target = mount_point_file(&dev, d)?;
        do_mount(&MountSpec { source: Some(Path::new("/dev").join(d)), bind: true, ..mk(target) })?;
    }
    let pts = dev.join("pts");
    std::fs::create_dir(&pts).map_err(|e| io_err("mkdir /dev/pts", e))?;
    do_mount(&MountSpec {
        source: Some("devpts".into()),
        fstype: Some("devpts".into()),
        nosuid: true,
        noexec: true,
        data: Some("newinstance,ptmxmode=0666,mode=0620".into()),
        ..mk(pts)
    })?;
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(|e| io_err("mkdir /dev/shm", e))?;
    do_mount(&MountSpec {
        source: Some("shm".into()),
        fstype: Some("tmpfs".into()),
        nosuid: true,
        nodev: true,
        noexec: true,
        data: Some("mode=1777,size=65536k".into()),
        ..mk(shm)
    })?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link)).map_err(|e| io_err(&format!("symlink /dev/{link}"), e))?;
    }
    do_mount(&MountSpec {
        source: Some(r.sandbox.clone()),
        bind: true,
        ..mk(inside(root, "mnt/mesos/sandbox", true)?)
    })?;
    let etc = inside(root, "etc", true)?;
    for (name, host) in &r.etc_files {
        let target = mount_point_file(&etc, name)?;
        do_mount(&MountSpec { source: Some(host.clone()), bind: true, ..mk(target) })?;
    }
    // Nothing mounted later (the container's /tmp) propagates into the rootfs.
    nix::mount::mount(None::<&str>, root, None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| io_err(&format!("make {} private", root.display()), e))?;
    Ok(())
}

/// Parses `CAP_CHOWN`, `CHOWN` or `chown`.
pub fn capability(name: &str) -> Result<caps::Capability, String> {
    let canonical = caps::to_canonical(name);
    canonical.parse::<caps::Capability>().map_err(|_| format!("unknown capability '{name}'"))
}

/// Everything the child needs, prepared before fork.
struct Setup {
    cgroup_procs: Vec<PathBuf>,
    unshare: nix::sched::CloneFlags,
    private_root: bool,
    mounts: Vec<MountSpec>,
    rootfs: Option<RootfsSpec>,
    detach_under: Vec<PathBuf>,
    volumes: Vec<crate::volumes::VolumeSpec>,
    hostname: Option<String>,
    rlimits: Vec<(nix::sys::resource::Resource, u64, u64)>,
    keep_caps: Option<caps::CapsHashSet>,
    nnp: bool,
    seccomp: Option<seccompiler::BpfProgram>,
    /// Opened before fork: the network namespace to join.
    netns: Option<std::fs::File>,
    /// Opened before fork: the v2 cgroup directory to clone the init into.
    cgroup_v2: Option<std::fs::File>,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

fn do_mount(m: &MountSpec) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    if m.mkdir {
        std::fs::create_dir_all(&m.target).map_err(|e| io_err(&format!("mkdir {}", m.target.display()), e))?;
    }
    let mut flags = MsFlags::empty();
    if m.bind {
        flags |= MsFlags::MS_BIND;
    }
    if m.recursive {
        flags |= MsFlags::MS_REC;
    }
    if m.nosuid {
        flags |= MsFlags::MS_NOSUID;
    }
    if m.nodev {
        flags |= MsFlags::MS_NODEV;
    }
    if m.noexec {
        flags |= MsFlags::MS_NOEXEC;
    }
    if m.readonly && !m.bind {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(m.source.as_deref(), &m.target, m.fstype.as_deref(), flags, m.data.as_deref())
        .map_err(|e| io_err(&format!("mount {}", m.target.display()), e))?;
    if m.bind && m.readonly {
        // A bind mount becomes read-only only through a remount.
        let ro = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | (flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC));
        mount(None::<&str>, &m.target, None::<&str>, ro, None::<&str>)
            .map_err(|e| io_err(&format!("remount {} read-only", m.target.display()), e))?;
    }
    Ok(())
}

/// Runs in the child between fork and exec.
fn container_setup(s: &Setup) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    // A session of its own: the container's processes can be told from the supervisor.
    nix::unistd::setsid().map_err(|e| io_err("setsid", e))?;
    for p in &s.cgroup_procs {
        std::fs::write(p, b"0").map_err(|e| io_err(&format!("join cgroup {}", p.display()), e))?;
    }
    if let Some(ns) = &s.netns {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| io_err("join the network namespace", e))?;
    }
    if !s.unshare.is_empty() {
        nix::sched::unshare(s.unshare).map_err(|e| io_err("unshare", e))?;
    }
    if s.private_root && !s.volumes.is_empty() {
        // Volumes: host mounts under their sources must still reach the container.
        crate::volumes::enslave_root(&s.volumes)?;
    } else if s.private_root {
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(|e| io_err("make / private", e))?;
    }
    if !s.detach_under.is_empty() {
        // Except this container's own rootfs and volume sources (an image volume's root is
        // a mount under the agent's work dir too).
        let keep: Vec<&Path> =
            s.rootfs.iter().map(|r| r.source.as_path()).chain(s.volumes.iter().map(|v| v.source.as_path())).collect();
        detach_mounts_under(&s.detach_under, &keep);
    }
    for v in s.volumes.iter().filter(|v| !v.late) {
        crate::volumes::mount_volume(v)?;
    }
    if let Some(r) = &s.rootfs {
        prepare_rootfs(r)?;
    }
    // The container's own /tmp comes last: volume sources may live under the host's /tmp.
    let own_tmp = |m: &&MountSpec| m.target == Path::new("/tmp");
    for m in s.mounts.iter().filter(|m| !own_tmp(m)) {
        do_mount(m)?;
    }
    for v in s.volumes.iter().filter(|v| v.late) {
        crate::volumes::mount_volume(v)?;
    }
    for m in s.mounts.iter().filter(own_tmp) {
        do_mount(m)?;
    }
    if let Some(r) = s.rootfs.as_ref().filter(|r| r.enter) {
        enter_rootfs(&r.target)?;
    }
    if let Some(h) = &s.hostname {
        nix::unistd::sethostname(h).map_err(|e| io_err("sethostname", e))?;
    }
    for (r, soft, hard) in &s.rlimits {
        nix::sys::resource::setrlimit(*r, *soft, *hard).map_err(|e| io_err(&format!("setrlimit {r:?}"), e))?;
    }
    if s.nnp {
        nix::sys::prctl::set_no_new_privs().map_err(|e| io_err("no_new_privs", e))?;
    }
    if let Some(bpf) = &s.seccomp {
        // Installed while the process still holds CAP_SYS_ADMIN (or has no_new_privs).
        seccompiler::apply_filter(bpf).map_err(|e| io_err("seccomp", e))?;
    }
    if let Some(keep) = &s.keep_caps {
        for c in caps::all() {
            if !keep.contains(&c) {
                caps::drop(None, caps::CapSet::Bounding, c).map_err(|e| io_err(&format!("drop {c}"), e))?;
            }
        }
        caps::clear(None, caps::CapSet::Ambient).map_err(|e| io_err("clear ambient capabilities", e))?;
        caps::set(None, caps::CapSet::Inheritable, keep).map_err(|e| io_err("inheritable capabilities", e))?;
        caps::set(None, caps::CapSet::Effective, keep).map_err(|e| io_err("effective capabilities", e))?;
        caps::set(None, caps::CapSet::Permitted, keep).map_err(|e| io_err("permitted capabilities", e))?;
    }
    Ok(())
}

fn prepare(spec: &Spec) -> Result<Setup, String> {
    use nix::sched::CloneFlags;
    validate(spec)?;
    let mut unshare = CloneFlags::empty();
    if spec.new_mount_ns {
        unshare |= CloneFlags::CLONE_NEWNS;
    }
    if spec.new_uts_ns {
        unshare |= CloneFlags::CLONE_NEWUTS;
    }
    if spec.new_ipc_ns {
        unshare |= CloneFlags::CLONE_NEWIPC;
    }
    let inf = nix::sys::resource::RLIM_INFINITY;
    let rlimits = spec
        .rlimits
        .iter()
        .filter_map(|r| rlimit_resource(&r.resource).map(|res| (res, r.soft.unwrap_or(inf), r.hard.unwrap_or(inf))))
        .collect();
    let keep_caps = match &spec.capabilities {
        None => None,
        Some(list) => Some(list.iter().map(|c| capability(c)).collect::<Result<caps::CapsHashSet, String>>()?),
    };
    let seccomp = if spec.seccomp { Some(crate::seccomp::default_profile()?) } else { None };
    let netns = match &spec.netns {
        Some(p) => Some(std::fs::File::open(p).map_err(|e| format!("network namespace {}: {e}", p.display()))?),
        None => None,
    };
    use std::os::unix::fs::OpenOptionsExt as _;
    let cgroup_v2 = match &spec.cgroup_v2_dir {
        Some(d) => Some(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(d)
                .map_err(|e| format!("cannot open the cgroup {}: {e}", d.display()))?,
        ),
        None => None,
    };
    Ok(Setup {
        netns,
        cgroup_v2,
        cgroup_procs: spec.cgroup_procs.clone(),
        unshare,
        private_root: spec.new_mount_ns,
        mounts: spec.mounts.clone(),
        rootfs: spec.rootfs.clone(),
        detach_under: if spec.new_mount_ns { spec.detach_under.clone() } else { vec![] },
        volumes: spec.volumes.clone(),
        hostname: spec.hostname.clone(),
        rlimits,
        keep_caps,
        nnp: spec.no_new_privs,
        seccomp,
    })
}

/// Where the child leaves the reason its setup failed (only errno crosses exec's pipe).
pub const LAUNCH_ERROR: &str = "launch-error";

#[allow(unsafe_code)]
fn spawn(spec: &Spec, mut setup: Setup, dir: &Path) -> std::io::Result<Init> {
    let cgroup_v2 = setup.cgroup_v2.take();
    use std::os::unix::process::CommandExt as _;
    let open = |p: &Path| std::fs::OpenOptions::new().create(true).append(true).open(p);
    // A program on the host (the executor) is opened before the container's mounts, which
    // may hide its path (a private /tmp over a binary under /tmp), and executed through
    // that descriptor. One in an image the init enters is looked up inside the image.
    let enters_rootfs = spec.rootfs.as_ref().is_some_and(|r| r.enter);
    let program = (!spec.shell && !enters_rootfs && Path::new(&spec.argv[0]).is_absolute())
        .then(|| std::fs::File::open(&spec.argv[0]).ok())
        .flatten();
    let mut cmd = if spec.shell {
        let mut c = std::process::Command::new("/bin/sh");
        c.arg("-c").arg(&spec.argv[0]);
        c
    } else if let Some(f) = &program {
        use std::os::fd::AsRawFd as _;
        let mut c = std::process::Command::new(format!("/proc/self/fd/{}", f.as_raw_fd()));
        c.arg0(&spec.argv[0]).args(&spec.argv[1..]);
        c
    } else {
        let mut c = std::process::Command::new(&spec.argv[0]);
        c.args(&spec.argv[1..]);
        c
    };
    cmd.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&spec.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(open(&spec.stdout)?)
        .stderr(open(&spec.stderr)?);
    // SAFETY: runs in the child between fork and exec. The supervisor is single-threaded,
    // so no lock can be held by another thread across the fork; the closure only makes
    // system calls and allocates, and reports failure through the returned error.
    unsafe {
        // Opened before fork: the child's mounts may hide this path (close-on-exec).
        let error_file = std::fs::File::create(dir.join(LAUNCH_ERROR))?;
        cmd.pre_exec(move || {
            container_setup(&setup).inspect_err(|e| {
                use std::io::Write as _;
                let _ = (&error_file).write_all(e.to_string().as_bytes());
            })
        });
    }
    match cgroup_v2 {
        Some(cg) => clone_into_cgroup(&mut cmd, &cg).map(Init::Cloned),
        None => cmd.spawn().map(Init::Spawned),
    }
}

/// The container's init process.
pub(crate) enum Init {
    Spawned(std::process::Child),
    /// Created by [`clone_into_cgroup`]; a child of this process, waited for by pid.
    Cloned(i32),
}

impl Init {
    fn id(&self) -> u32 {
        match self {
            Init::Spawned(c) => c.id(),
            Init::Cloned(pid) => *pid as u32,
        }
    }

    fn kill(&mut self) -> std::io::Result<()> {
        match self {
            Init::Spawned(c) => c.kill(),
            Init::Cloned(pid) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::SIGKILL)
                .map_err(std::io::Error::from),
        }
    }

    #[allow(unsafe_code)]
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt as _;
        match self {
            Init::Spawned(c) => c.wait(),
            Init::Cloned(pid) => loop {
                let mut status: libc::c_int = 0;
                // SAFETY: waitpid writes the status of our own child into a local integer.
                let r = unsafe { libc::waitpid(*pid, &mut status, 0) };
                if r == *pid {
                    return Ok(std::process::ExitStatus::from_raw(status));
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            },
        }
    }
}

/// `CLONE_INTO_CGROUP` (linux/sched.h, Linux >= 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Starts `cmd` (its `pre_exec` set-up included) in a child created directly in the v2
/// cgroup `cgroup` (an open directory) with `clone3(CLONE_INTO_CGROUP)`, as `spawn` would
/// with a fork. Like `spawn`, it returns only once the child has exec'd or failed to: a
/// close-on-exec pipe carries the failure back. Returns the child's pid.
#[allow(unsafe_code)]
pub fn clone_into_cgroup(cmd: &mut std::process::Command, cgroup: &std::fs::File) -> std::io::Result<i32> {
    use std::io::{Read as _, Write as _};
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    // SAFETY: clone_args is a plain C struct of integers, valid when zeroed.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = CLONE_INTO_CGROUP;
    args.exit_signal = libc::SIGCHLD as u64;
    args.cgroup = cgroup.as_raw_fd() as u64;
    // SAFETY: clone3 without CLONE_VM is a fork with the child placed in `cgroup`. The
    // supervisor is single-threaded, so the child's copy holds no lock another thread
    // owned; it only runs `Command::exec` (the same set-up `spawn` runs after its fork)
    // and `_exit`s if that returns.
    let pid = unsafe {
        libc::syscall(libc::SYS_clone3, &mut args as *mut libc::clone_args, std::mem::size_of::<libc::clone_args>())
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        drop(r);
        let e = cmd.exec();
        let mut w = std::fs::File::from(w);
        let _ = w.write_all(e.to_string().as_bytes());
        // SAFETY: ends the child without running the parent's exit handlers or destructors.
        unsafe { libc::_exit(127) };
    }
    drop(w);
    let pid = pid as i32;
    let mut why = String::new();
    let read = std::fs::File::from(r).read_to_string(&mut why);
    if read.is_err() || !why.is_empty() {
        let mut init = Init::Cloned(pid);
        let _ = init.wait();
        return Err(std::io::Error::other(if why.is_empty() { "exec failed".to_string() } else { why }));
    }
    Ok(pid)
}

/// Waits for the supervisor's remaining children. With a PID namespace they are all dying
/// (the kernel killed them with init) and are waited for; otherwise orphans that outlive
/// init (double-forked daemons) are left to the cgroup kill and only reaped briefly.
fn reap_orphans(pid_ns: bool) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(if pid_ns { 10 } else { 1 });
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if std::time::Instant::now() > deadline {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Ok(_) => {}
            Err(_) => return, // ECHILD: nobody left
        }
    }
}

/// The supervisor's main: returns its exit code.
pub fn run(dir: &Path) -> i32 {
    let exited = |status: Option<i32>, signal: Option<i32>, message: String| {
        let rec = Exited { status, signal, message, finished_at: now() };
        if let Err(e) = write_json(&dir.join(EXITED), &rec) {
            eprintln!("supervisor: cannot write {}: {e}", dir.join(EXITED).display());
        }
    };
    let spec: Spec = match read_json(&dir.join(SPEC)) {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("supervisor: no {} in {}", SPEC, dir.display());
            return 2;
        }
        Err(e) => {
            eprintln!("supervisor: bad spec: {e}");
            exited(None, None, format!("bad container spec: {e}"));
            return 2;
        }
    };
    let setup = match prepare(&spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("supervisor: {e}");
            exited(None, None, format!("Failed to launch container: {e}"));
            return 1;
        }
    };
    // Orphans of the container are re-parented here, not to the host's init.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("supervisor: cannot become a subreaper: {e}");
    }
    if spec.new_pid_ns {
        // The next child is PID 1 of a new PID namespace; the supervisor stays outside.
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
            exited(None, None, format!("Failed to launch container: unshare(CLONE_NEWPID): {e}"));
            return 1;
        }
    }
    let mut child = match spawn(&spec, setup, dir) {
        Ok(c) => c,
        Err(e) => {
            let why = std::fs::read_to_string(dir.join(LAUNCH_ERROR))
                .ok()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| e.to_string());
            eprintln!("supervisor: cannot start {:?}: {why}", spec.argv);
            exited(None, None, format!("Failed to launch container: {why}"));
            return 1;
        }
    };
    let started = Started { supervisor_pid: std::process::id(), init_pid: child.id(), started_at: now() };
    if let Err(e) = write_json(&dir.join(STARTED), &started) {
        // Without the record nobody can find the container: do not leave it running.
        eprintln!("supervisor: cannot publish {}: {e}", STARTED);
        let _ = child.kill();
    }
    let status = child.wait();
    // The container's orphans (and, with a PID namespace, every process the kernel kills
    // when init dies) come to the supervisor: reap them so the cgroups can be removed.
    reap_orphans(spec.new_pid_ns);
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => exited(Some(c), None, format!("exited with status {c}")),
            (None, Some(sig)) => exited(Some(128 + sig), Some(sig), format!("terminated by signal {sig}")),
            _ => exited(None, None, "ended".into()),
        },
        Err(e) => exited(None, None, format!("wait failed: {e}")),
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
    }

    #[test]
    fn validation_catches_bad_rlimits_and_caps() {
        let mut s = Spec { argv: vec!["true".into()], ..Default::default() };
        assert!(validate(&s).is_ok());
        s.rlimits = vec![RlimitSpec { resource: "RLMT_NOPE".into(), soft: None, hard: None }];
        assert!(validate(&s).unwrap_err().contains("RLMT_NOPE"));
        s.rlimits = vec![RlimitSpec { resource: "RLMT_NOFILE".into(), soft: Some(10), hard: Some(5) }];
        assert!(validate(&s).unwrap_err().contains("soft"));
        s.rlimits.clear();
        s.capabilities = Some(vec!["CHOWN".into(), "cap_kill".into()]);
        assert!(validate(&s).is_ok());
        s.capabilities = Some(vec!["CAP_FLY".into()]);
        assert!(validate(&s).unwrap_err().contains("CAP_FLY"));
        s.argv.clear();
        assert!(validate(&s).is_err());
    }
}
