//! Cgroup v1 and v2 management for the unified containerizer's `cgroups/*` isolators.
//!
//! [`Cgroups`] dispatches, through a closed enum, to two implementations (as youki does):
//! **v1** (one hierarchy per controller, e.g. `/sys/fs/cgroup/memory`, or a comounted
//! set such as `/sys/fs/cgroup/cpu,cpuacct`; a container's cgroup is the same relative
//! path in each of `cpu`, `cpuacct`, `memory`, `pids` and `freezer`) and **v2** (one
//! unified hierarchy; `+cpu +memory +pids` are enabled in `cgroup.subtree_control` of
//! every ancestor). [`Cgroups::detect`] reads `/proc/self/mountinfo` once and picks v1
//! when the v1 `cpu` and `memory` hierarchies are mounted (a systemd "hybrid" host
//! whose cgroup2 mount holds no controllers), else the cgroup2 mount. Keep the value
//! for the life of the process: no call re-reads mountinfo.
//!
//! Cgroups are named by relative paths such as `agora/<container-id>`; `..`, `.`,
//! empty components and absolute paths are refused, so no name escapes a hierarchy.
//!
//! # Limits and formats
//!
//! Only the fields of [`Limits`] that are `Some` are written (one `open`+`write` each);
//! `None` leaves the current value alone. [`UNLIMITED`] (`u64::MAX`) removes a byte or
//! pid limit; a negative CFS quota removes the quota.
//!
//! | limit               | v1 file (value)                                  | v2 file (value)                      |
//! |---------------------|--------------------------------------------------|--------------------------------------|
//! | `cpu_shares`        | `cpu.shares` (shares)                            | `cpu.weight` ([`v2_weight_from_shares`]) |
//! | `cpu_quota`         | `cpu.cfs_period_us`, then `cpu.cfs_quota_us` (`-1` = none) | `cpu.max` (`"quota period"`, `"max period"`) |
//! | `memory_limit`      | `memory.limit_in_bytes` (`-1` = none)            | `memory.max` (`max` = none)          |
//! | `memory_soft_limit` | `memory.soft_limit_in_bytes`                     | `memory.low` (as runc maps it)       |
//! | `pids_max`          | `pids.max` (`max` = none)                        | `pids.max` (`max` = none)            |
//!
//! # Placing processes: do it at fork time
//!
//! Moving a process into a cgroup takes the kernel's global threadgroup rwsem for
//! writing; the first move after an idle spell waits for an RCU grace period, measured
//! here at about 7-15 ms (on v1 only the first hierarchy's write pays it; the four
//! others then take ~20-50 µs; the controller-less cgroup2 mount of a hybrid host
//! pays it too). Callers on the container-start hot path should therefore place the
//! process as it is created rather than migrate it afterwards: on v2 with
//! `clone3(CLONE_INTO_CGROUP)`, passing an fd of the directory that
//! [`Cgroups::cgroup_path`] returns (no migration at all); on v1 by opening the files
//! of [`Cgroups::procs_files`] before forking and having the child write `"0"` (the
//! kernel's spelling of "the writing process", right in any pid namespace) to each
//! before it execs, so that the wait overlaps the rest of the launch; or accept the
//! cost with [`Cgroups::add_process`]. This crate does not clone.
//!
//! Every call is synchronous file I/O; [`Cgroups::kill_all`] and
//! [`Cgroups::destroy`] may sleep (bounded, about 5 s at worst). Async callers run them
//! on a blocking thread. A [`Cgroups`] is `Send + Sync` and meant to be shared.
//!
//! # Killing
//!
//! [`Cgroups::kill_all`] returns only when no process is left in the cgroup or below
//! it, double-forked daemons included, or fails with [`CgroupError::KillTimeout`] after
//! a bounded wait (a process stuck in uninterruptible sleep); calling it again is
//! safe. v2 writes `cgroup.kill` (Linux >= 5.14), else loops freeze, SIGKILL, thaw;
//! v1 loops `freezer.state` FROZEN, SIGKILL, THAWED. The caller must not be inside the
//! cgroup it kills (v1 and the v2 fallback refuse with [`CgroupError::KillSelf`]).
//! Killed processes may linger as zombies until their parent reaps them; a zombie
//! holds no cgroup, so [`Cgroups::destroy`] still succeeds.

#![forbid(unsafe_code)]

mod error;
mod fs;
mod mountinfo;
mod v1;
mod v2;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::CgroupError;

/// "No limit" for the byte and pid limits of [`Limits`].
pub const UNLIMITED: u64 = u64::MAX;

/// The CFS period Mesos uses: 100 ms.
pub const CFS_PERIOD_US: u64 = 100_000;

/// The smallest CFS quota the kernel accepts (and Mesos applies): 1 ms.
pub const MIN_CFS_QUOTA_US: i64 = 1_000;

/// The smallest `cpu.shares` the kernel accepts.
pub const MIN_CPU_SHARES: u64 = 2;

/// `cpu.shares` per whole cpu.
pub const CPU_SHARES_PER_CPU: u64 = 1024;

/// Largest v1 `cpu.shares` (the kernel's `MAX_SHARES`, 2^18).
const MAX_CPU_SHARES: u64 = 262_144;

/// Largest v2 `cpu.weight`.
const MAX_CPU_WEIGHT: u64 = 10_000;

/// How long [`Cgroups::kill_all`] waits for the cgroup to empty.
pub(crate) const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Which cgroup version a [`Cgroups`] drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Limits for a container's cgroup; `None` fields are left as they are.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct Limits {
    /// v1 `cpu.shares`; on v2 converted to `cpu.weight`. See [`shares_for_cpus`].
    pub cpu_shares: Option<u64>,
    /// CFS bandwidth: (quota µs, negative for none; period µs). See
    /// [`cfs_quota_for_cpus`].
    pub cpu_quota: Option<(i64, u64)>,
    /// Hard memory limit in bytes, or [`UNLIMITED`].
    pub memory_limit: Option<u64>,
    /// Soft memory limit in bytes (v2: `memory.low`), or [`UNLIMITED`].
    pub memory_soft_limit: Option<u64>,
    /// Maximum number of processes (and threads), or [`UNLIMITED`].
    pub pids_max: Option<u64>,
}

/// Usage of a cgroup (and its descendants), as Mesos's `ResourceStatistics` reports
/// it. A controller that is not there reads as zero / `None`.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct Stats {
    pub cpu_user_secs: f64,
    pub cpu_system_secs: f64,
    pub cpu_nr_periods: u64,
    pub cpu_nr_throttled: u64,
    pub cpu_throttled_secs: f64,
    /// v1 `total_rss`, v2 `anon` of `memory.stat`.
    pub mem_rss_bytes: u64,
    /// v1 `total_cache`, v2 `file` of `memory.stat`.
    pub mem_cache_bytes: u64,
    /// v1 `memory.usage_in_bytes`, v2 `memory.current`.
    pub mem_usage_bytes: u64,
    /// `None` when unlimited.
    pub mem_limit_bytes: Option<u64>,
    pub pids_current: u64,
    /// `None` when unlimited.
    pub pids_limit: Option<u64>,
}

/// The cgroup hierarchies of this machine and the operations on a container's cgroup.
#[derive(Debug)]
pub struct Cgroups {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    V1(v1::V1),
    V2(v2::V2),
}

impl Cgroups {
    /// Finds the hierarchies in `/proc/self/mountinfo`: v1 when its `cpu` and `memory`
    /// hierarchies are mounted, else the cgroup2 mount, else any v1 hierarchy.
    pub fn detect() -> Result<Cgroups, CgroupError> {
        let mountinfo = Path::new("/proc/self/mountinfo");
        let content = fs::read(mountinfo)?;
        Self::from_mountinfo(&content).ok_or_else(|| CgroupError::NotMounted { mountinfo: mountinfo.to_path_buf() })
    }

    fn from_mountinfo(content: &str) -> Option<Cgroups> {
        let mounts = mountinfo::parse(content);
        let v1_ready = mounts.v1.contains_key("cpu") && mounts.v1.contains_key("memory");
        let cgroups = match mounts.v2 {
            _ if v1_ready => Cgroups::v1_at(mounts.v1),
            Some(root) => Cgroups::v2_at(root),
            None if !mounts.v1.is_empty() => Cgroups::v1_at(mounts.v1),
            None => return None,
        };
        tracing::debug!(?cgroups, "cgroup hierarchies detected");
        Some(cgroups)
    }

    /// v1 over the given controller -> mount point map (comounted controllers map to
    /// the same path). For tests over fixture trees.
    pub fn v1_at(mounts: BTreeMap<String, PathBuf>) -> Cgroups {
        Cgroups { inner: Inner::V1(v1::V1::new(mounts)) }
    }

    /// v2 with its unified hierarchy at `root`. For tests over fixture trees.
    pub fn v2_at(root: PathBuf) -> Cgroups {
        Cgroups { inner: Inner::V2(v2::V2::new(root)) }
    }

    pub fn version(&self) -> Version {
        match &self.inner {
            Inner::V1(_) => Version::V1,
            Inner::V2(_) => Version::V2,
        }
    }

    /// Creates `cgroup` (and missing ancestors) in every hierarchy it needs, then
    /// applies `limits`. Idempotent: an existing cgroup is reused. Fails before creating
    /// anything when a limit needs a controller this machine lacks.
    pub fn create(&self, cgroup: &str, limits: &Limits) -> Result<(), CgroupError> {
        validate(cgroup)?;
        let _span = tracing::debug_span!("cgroup_create", cgroup).entered();
        match &self.inner {
            Inner::V1(v1) => v1.create(cgroup, limits),
            Inner::V2(v2) => v2.create(cgroup, limits),
        }
    }

    /// Applies the `Some` fields of `limits` to an existing cgroup. Lowering a memory
    /// limit below current usage makes the kernel reclaim, and fails (EBUSY) or OOM-kills
    /// when it cannot; callers that only want to grow limits must compare first.
    pub fn update(&self, cgroup: &str, limits: &Limits) -> Result<(), CgroupError> {
        validate(cgroup)?;
        match &self.inner {
            Inner::V1(v1) => v1.update(cgroup, limits),
            Inner::V2(v2) => v2.update(cgroup, limits),
        }
    }

    /// Moves process `pid` (all its threads) into `cgroup` in every hierarchy; pid 0 is
    /// the calling process. See the crate doc for why the hot path should place
    /// processes at fork time instead.
    pub fn add_process(&self, cgroup: &str, pid: i32) -> Result<(), CgroupError> {
        validate(cgroup)?;
        match &self.inner {
            Inner::V1(v1) => v1.add_process(cgroup, pid),
            Inner::V2(v2) => v2.add_process(cgroup, pid),
        }
    }

    /// The `cgroup.procs` files [`add_process`](Self::add_process) writes, one per
    /// hierarchy, for a launcher that opens them before forking and writes `"0"` from
    /// the child (see the crate doc). Empty for an invalid name.
    pub fn procs_files(&self, cgroup: &str) -> Vec<PathBuf> {
        if validate(cgroup).is_err() {
            return Vec::new();
        }
        match &self.inner {
            Inner::V1(v1) => v1.procs_files(cgroup),
            Inner::V2(v2) => vec![v2.cgroup_path(cgroup).join("cgroup.procs")],
        }
    }

    /// On v2, the directory of `cgroup`, for a launcher that creates the process in it
    /// with `clone3(CLONE_INTO_CGROUP)` (see the crate doc); `None` on v1 or for an
    /// invalid name.
    pub fn v2_dir(&self, cgroup: &str) -> Option<PathBuf> {
        validate(cgroup).ok()?;
        match &self.inner {
            Inner::V1(_) => None,
            Inner::V2(v2) => Some(v2.cgroup_path(cgroup)),
        }
    }

    /// The processes directly in `cgroup` (not in its descendants), sorted. On v1 read
    /// from the freezer hierarchy (else memory).
    pub fn procs(&self, cgroup: &str) -> Result<Vec<i32>, CgroupError> {
        validate(cgroup)?;
        match &self.inner {
            Inner::V1(v1) => v1.procs(cgroup),
            Inner::V2(v2) => v2.procs(cgroup),
        }
    }

    /// Kills every process in `cgroup` and below it and waits until they are gone
    /// (bounded). A missing cgroup has nothing to kill.
    pub fn kill_all(&self, cgroup: &str) -> Result<(), CgroupError> {
        validate(cgroup)?;
        let _span = tracing::debug_span!("cgroup_kill_all", cgroup).entered();
        match &self.inner {
            Inner::V1(v1) => v1.kill_all(cgroup),
            Inner::V2(v2) => v2.kill_all(cgroup),
        }
    }

    /// [`kill_all`](Self::kill_all), then removes `cgroup` and every cgroup below it
    /// from every hierarchy. A missing cgroup is fine.
    pub fn destroy(&self, cgroup: &str) -> Result<(), CgroupError> {
        validate(cgroup)?;
        let _span = tracing::debug_span!("cgroup_destroy", cgroup).entered();
        match &self.inner {
            Inner::V1(v1) => v1.destroy(cgroup),
            Inner::V2(v2) => v2.destroy(cgroup),
        }
    }

    /// Usage counters of `cgroup` (including its descendants).
    pub fn stats(&self, cgroup: &str) -> Result<Stats, CgroupError> {
        validate(cgroup)?;
        match &self.inner {
            Inner::V1(v1) => v1.stats(cgroup),
            Inner::V2(v2) => v2.stats(cgroup),
        }
    }

    /// Whether the kernel's OOM killer has killed a process of `cgroup`. v1:
    /// `memory.oom_control` `oom_kill` (Linux >= 4.13), else `under_oom`, else a failure
    /// count with peak usage at the limit; v2: `memory.events` `oom_kill`.
    pub fn oom_killed(&self, cgroup: &str) -> Result<bool, CgroupError> {
        validate(cgroup)?;
        match &self.inner {
            Inner::V1(v1) => v1.oom_killed(cgroup),
            Inner::V2(v2) => v2.oom_killed(cgroup),
        }
    }

    /// Names (not paths) of the cgroups directly below `parent`, sorted; on v1 the
    /// union over the hierarchies, so a half-created or half-destroyed orphan shows.
    /// Empty when `parent` does not exist.
    pub fn children(&self, parent: &str) -> Result<Vec<String>, CgroupError> {
        validate(parent)?;
        match &self.inner {
            Inner::V1(v1) => v1.children(parent),
            Inner::V2(v2) => v2.children(parent),
        }
    }

    /// The directory of `cgroup` in `controller`'s hierarchy: on v1 `None` when that
    /// controller is not mounted; on v2 the one unified directory, whatever the
    /// controller. `None` for an invalid name.
    pub fn cgroup_path(&self, controller: &str, cgroup: &str) -> Option<PathBuf> {
        validate(cgroup).ok()?;
        match &self.inner {
            Inner::V1(v1) => v1.cgroup_path(controller, cgroup),
            Inner::V2(v2) => Some(v2.cgroup_path(cgroup)),
        }
    }
}

/// Refuses names that are empty, absolute, or have `.`/`..`/empty components.
fn validate(name: &str) -> Result<(), CgroupError> {
    let ok =
        !name.is_empty() && !name.contains('\0') && name.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidName { name: name.to_owned() })
    }
}

/// `cpu.shares` for a `cpus` resource, as Mesos computes it: 1024 per cpu, at least 2.
pub fn shares_for_cpus(cpus: f64) -> u64 {
    // `as` saturates: NaN and negatives give 0, then the minimum.
    ((cpus * CPU_SHARES_PER_CPU as f64) as u64).max(MIN_CPU_SHARES)
}

/// CFS (quota, period) for a `cpus` resource, as Mesos computes it: a 100 ms period and
/// `cpus` times that as quota, at least 1 ms.
pub fn cfs_quota_for_cpus(cpus: f64) -> (i64, u64) {
    let quota = (cpus * CFS_PERIOD_US as f64) as i64;
    (quota.max(MIN_CFS_QUOTA_US), CFS_PERIOD_US)
}

/// The v2 `cpu.weight` (1..=10000) for v1 `cpu.shares` (2..=262144), with the mapping
/// runc (>= 1.3.2) and crun (>= 1.23) use: with `l = log2(shares)`, weight =
/// `ceil(10^((l² + 125·l) / 612 − 7/34))`. It maps the ends onto each other (2 -> 1,
/// 262144 -> 10000) and, unlike the older linear formula, the defaults too (1024 -> 100).
/// Out-of-range shares are clamped.
pub fn v2_weight_from_shares(shares: u64) -> u64 {
    if shares <= MIN_CPU_SHARES {
        return 1;
    }
    if shares >= MAX_CPU_SHARES {
        return MAX_CPU_WEIGHT;
    }
    let l = (shares as f64).log2();
    // 7/34 = 126/612: one division keeps exact powers of two exact (1024 -> 10^2).
    let exponent = (l * l + 125.0 * l - 126.0) / 612.0;
    let weight = 10f64.powf(exponent).ceil() as u64;
    weight.clamp(1, MAX_CPU_WEIGHT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Cgroups>();
    }

    #[test]
    fn names_are_validated() {
        for good in ["agora", "agora/c1", "agora/x-1.2/y"] {
            assert!(validate(good).is_ok(), "{good}");
        }
        for bad in ["", "/agora", "agora/", "agora//c", "../x", "agora/../x", "a/./b", "a\0b"] {
            assert!(matches!(validate(bad), Err(CgroupError::InvalidName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn cpu_conversions() {
        assert_eq!(shares_for_cpus(1.0), 1024);
        assert_eq!(shares_for_cpus(0.5), 512);
        assert_eq!(shares_for_cpus(0.001), 2);
        assert_eq!(shares_for_cpus(-1.0), 2);
        assert_eq!(shares_for_cpus(f64::NAN), 2);
        assert_eq!(cfs_quota_for_cpus(1.5), (150_000, 100_000));
        assert_eq!(cfs_quota_for_cpus(0.001), (1_000, 100_000));
    }

    #[test]
    fn weight_mapping_matches_runc_and_crun() {
        assert_eq!(v2_weight_from_shares(0), 1);
        assert_eq!(v2_weight_from_shares(2), 1);
        assert_eq!(v2_weight_from_shares(1024), 100);
        assert_eq!(v2_weight_from_shares(262_144), 10_000);
        assert_eq!(v2_weight_from_shares(1_000_000), 10_000);
        // 512 shares: l = 9, 10^(1080/612) = 58.2 -> 59.
        assert_eq!(v2_weight_from_shares(512), 59);
        let mut last = 0;
        for shares in (2..=262_144).step_by(97) {
            let w = v2_weight_from_shares(shares);
            assert!(w >= last && (1..=10_000).contains(&w), "{shares} -> {w}");
            last = w;
        }
    }

    #[test]
    fn detection_prefers_v1_on_hybrid() {
        let hybrid = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let c = Cgroups::from_mountinfo(hybrid).expect("hybrid");
        assert_eq!(c.version(), Version::V1);
        assert_eq!(c.cgroup_path("memory", "agora/x"), Some(PathBuf::from("/sys/fs/cgroup/memory/agora/x")));
        assert_eq!(c.cgroup_path("pids", "agora/x"), None);

        let v2 = "31 20 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let c = Cgroups::from_mountinfo(v2).expect("v2");
        assert_eq!(c.version(), Version::V2);
        assert_eq!(c.cgroup_path("cpu", "agora/x"), Some(PathBuf::from("/sys/fs/cgroup/agora/x")));
        assert_eq!(c.cgroup_path("cpu", "../x"), None);

        assert!(Cgroups::from_mountinfo("1 2 0:1 / / rw - ext4 /dev/vda rw\n").is_none());
    }
}
