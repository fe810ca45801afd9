//! cgroup v1: one hierarchy per controller (or per comounted set such as
//! `cpu,cpuacct`), the same relative cgroup path created in each.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fs::{self, Backoff};
use crate::{CgroupError, Limits, Stats, KILL_TIMEOUT, UNLIMITED};

/// The controllers a container's cgroup is created in, in creation order.
const CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "freezer"];

/// v1 reports "no limit" as the largest page-aligned `i64`; anything this large is no
/// limit.
const UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// How long one freeze waits for `freezer.state` to read FROZEN before killing anyway.
const FREEZE_WAIT: Duration = Duration::from_millis(100);

/// How long one round waits for killed processes to leave before freezing again.
const ROUND_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub(crate) struct V1 {
    mounts: BTreeMap<String, PathBuf>,
    /// Distinct mount points of [`CONTROLLERS`] that are mounted, in that order.
    hierarchies: Vec<PathBuf>,
}

impl V1 {
    pub(crate) fn new(mounts: BTreeMap<String, PathBuf>) -> V1 {
        let mut hierarchies: Vec<PathBuf> = Vec::new();
        for controller in CONTROLLERS {
            if let Some(path) = mounts.get(controller) {
                if !hierarchies.contains(path) {
                    hierarchies.push(path.clone());
                }
            }
        }
        V1 { mounts, hierarchies }
    }

    pub(crate) fn cgroup_path(&self, controller: &str, cgroup: &str) -> Option<PathBuf> {
        self.mounts.get(controller).map(|m| m.join(cgroup))
    }

    /// The cgroup's directory in a controller that a limit needs.
    fn required(&self, controller: &'static str, what: &'static str, cgroup: &str) -> Result<PathBuf, CgroupError> {
        self.cgroup_path(controller, cgroup).ok_or_else(|| CgroupError::ControllerUnavailable {
            controller,
            what,
            path: PathBuf::from("/proc/self/mountinfo"),
        })
    }

    pub(crate) fn create(&self, cgroup: &str, limits: &Limits) -> Result<(), CgroupError> {
        // Refuse before creating anything when a limit cannot be applied.
        self.check_controllers(cgroup, limits)?;
        for hierarchy in &self.hierarchies {
            fs::mkdir_all(&hierarchy.join(cgroup))?;
        }
        self.update(cgroup, limits)
    }

    fn check_controllers(&self, cgroup: &str, limits: &Limits) -> Result<(), CgroupError> {
        if limits.cpu_shares.is_some() || limits.cpu_quota.is_some() {
            self.required("cpu", "cpu limits", cgroup)?;
        }
        if limits.memory_limit.is_some() || limits.memory_soft_limit.is_some() {
            self.required("memory", "memory limits", cgroup)?;
        }
        if limits.pids_max.is_some() {
            self.required("pids", "pids limit", cgroup)?;
        }
        Ok(())
    }

    pub(crate) fn update(&self, cgroup: &str, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(shares) = limits.cpu_shares {
            let dir = self.required("cpu", "cpu shares", cgroup)?;
            fs::write(&dir.join("cpu.shares"), &shares.to_string())?;
        }
        if let Some((quota, period)) = limits.cpu_quota {
            let dir = self.required("cpu", "cpu quota", cgroup)?;
            // Period first: the kernel checks the quota against the period in force.
            fs::write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
            let quota = if quota < 0 { "-1".to_owned() } else { quota.to_string() };
            fs::write(&dir.join("cpu.cfs_quota_us"), &quota)?;
        }
        if let Some(limit) = limits.memory_limit {
            let dir = self.required("memory", "memory limit", cgroup)?;
            fs::write(&dir.join("memory.limit_in_bytes"), &bytes_value(limit))?;
        }
        if let Some(soft) = limits.memory_soft_limit {
            let dir = self.required("memory", "memory soft limit", cgroup)?;
            fs::write(&dir.join("memory.soft_limit_in_bytes"), &bytes_value(soft))?;
        }
        if let Some(max) = limits.pids_max {
            let dir = self.required("pids", "pids limit", cgroup)?;
            let value = if max == UNLIMITED { "max".to_owned() } else { max.to_string() };
            fs::write(&dir.join("pids.max"), &value)?;
        }
        Ok(())
    }

    pub(crate) fn procs_files(&self, cgroup: &str) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.join(cgroup).join("cgroup.procs")).collect()
    }

    pub(crate) fn add_process(&self, cgroup: &str, pid: i32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        for file in self.procs_files(cgroup) {
            fs::write(&file, &pid)?;
        }
        Ok(())
    }

    /// The hierarchy `procs` reads: freezer (what `kill_all` freezes), else memory, else
    /// any.
    fn primary(&self) -> Option<&PathBuf> {
        self.mounts.get("freezer").or_else(|| self.mounts.get("memory")).or_else(|| self.hierarchies.first())
    }

    pub(crate) fn procs(&self, cgroup: &str) -> Result<Vec<i32>, CgroupError> {
        let Some(primary) = self.primary() else {
            return Ok(Vec::new());
        };
        let mut pids = fs::read_pids(&primary.join(cgroup).join("cgroup.procs"))?;
        pids.sort_unstable();
        Ok(pids)
    }

    /// Every process in the cgroup or below it, in any of the hierarchies.
    fn all_pids(&self, cgroup: &str) -> Result<Vec<i32>, CgroupError> {
        let mut pids = BTreeSet::new();
        for hierarchy in &self.hierarchies {
            for dir in fs::subtree(&hierarchy.join(cgroup))? {
                pids.extend(fs::read_pids_opt(&dir.join("cgroup.procs"))?);
            }
        }
        Ok(pids.into_iter().collect())
    }

    pub(crate) fn kill_all(&self, cgroup: &str) -> Result<(), CgroupError> {
        let freezer = self.cgroup_path("freezer", cgroup).filter(|dir| dir.join("freezer.state").exists());
        let report_path = freezer
            .clone()
            .or_else(|| self.hierarchies.first().map(|h| h.join(cgroup)))
            .unwrap_or_else(|| PathBuf::from(cgroup));
        let start = Instant::now();
        let mut pids = self.all_pids(cgroup)?;
        loop {
            if pids.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= KILL_TIMEOUT {
                return Err(CgroupError::KillTimeout { path: report_path, pids, waited: start.elapsed() });
            }
            match &freezer {
                Some(dir) => {
                    // Frozen processes cannot fork, so one pass catches them all; they
                    // die on thaw (a fatal signal does not wake a frozen task). Thaw
                    // whatever happened, or the cgroup stays frozen.
                    let killed = freeze(dir)
                        .and_then(|()| self.all_pids(cgroup))
                        .and_then(|pids| fs::kill_pids(&pids, &report_path));
                    let thawed = fs::write(&dir.join("freezer.state"), "THAWED");
                    killed?;
                    thawed?;
                }
                None => fs::kill_pids(&pids, &report_path)?,
            }
            let mut round = Backoff::new(ROUND_WAIT.min(KILL_TIMEOUT.saturating_sub(start.elapsed())));
            loop {
                pids = self.all_pids(cgroup)?;
                if pids.is_empty() || !round.wait() {
                    break;
                }
            }
        }
    }

    pub(crate) fn destroy(&self, cgroup: &str) -> Result<(), CgroupError> {
        self.kill_all(cgroup)?;
        for hierarchy in &self.hierarchies {
            fs::remove_tree(&hierarchy.join(cgroup))?;
        }
        Ok(())
    }

    pub(crate) fn stats(&self, cgroup: &str) -> Result<Stats, CgroupError> {
        let mut stats = Stats::default();
        let mut found = false;
        if let Some(dir) = self.cgroup_path("cpuacct", cgroup) {
            let path = dir.join("cpuacct.stat");
            if let Some(content) = fs::read_opt(&path)? {
                found = true;
                let hz = clock_ticks() as f64;
                stats.cpu_user_secs = fs::keyed_u64(&path, &content, "user")?.unwrap_or(0) as f64 / hz;
                stats.cpu_system_secs = fs::keyed_u64(&path, &content, "system")?.unwrap_or(0) as f64 / hz;
            }
        }
        if let Some(dir) = self.cgroup_path("cpu", cgroup) {
            let path = dir.join("cpu.stat");
            if let Some(content) = fs::read_opt(&path)? {
                found = true;
                stats.cpu_nr_periods = fs::keyed_u64(&path, &content, "nr_periods")?.unwrap_or(0);
                stats.cpu_nr_throttled = fs::keyed_u64(&path, &content, "nr_throttled")?.unwrap_or(0);
                stats.cpu_throttled_secs = fs::keyed_u64(&path, &content, "throttled_time")?.unwrap_or(0) as f64 / 1e9;
            }
        }
        if let Some(dir) = self.cgroup_path("memory", cgroup) {
            let path = dir.join("memory.stat");
            if let Some(content) = fs::read_opt(&path)? {
                found = true;
                // total_* include descendant cgroups; plain keys are this cgroup only.
                stats.mem_rss_bytes = match fs::keyed_u64(&path, &content, "total_rss")? {
                    Some(v) => v,
                    None => fs::keyed_u64(&path, &content, "rss")?.unwrap_or(0),
                };
                stats.mem_cache_bytes = match fs::keyed_u64(&path, &content, "total_cache")? {
                    Some(v) => v,
                    None => fs::keyed_u64(&path, &content, "cache")?.unwrap_or(0),
                };
            }
            let path = dir.join("memory.usage_in_bytes");
            if let Some(content) = fs::read_opt(&path)? {
                stats.mem_usage_bytes = fs::parse_u64(&path, &content)?;
            }
            let path = dir.join("memory.limit_in_bytes");
            if let Some(content) = fs::read_opt(&path)? {
                stats.mem_limit_bytes = Some(fs::parse_u64(&path, &content)?).filter(|v| *v < UNLIMITED_THRESHOLD);
            }
        }
        if let Some(dir) = self.cgroup_path("pids", cgroup) {
            let path = dir.join("pids.current");
            if let Some(content) = fs::read_opt(&path)? {
                found = true;
                stats.pids_current = fs::parse_u64(&path, &content)?;
            }
            let path = dir.join("pids.max");
            if let Some(content) = fs::read_opt(&path)? {
                stats.pids_limit = fs::parse_max(&path, &content)?;
            }
        }
        if found {
            Ok(stats)
        } else {
            Err(CgroupError::NotFound { cgroup: cgroup.to_owned() })
        }
    }

    pub(crate) fn oom_killed(&self, cgroup: &str) -> Result<bool, CgroupError> {
        let dir = self.required("memory", "oom detection", cgroup)?;
        let path = dir.join("memory.oom_control");
        let content = fs::read(&path)?;
        if let Some(kills) = fs::keyed_u64(&path, &content, "oom_kill")? {
            // Linux >= 4.13 counts OOM kills.
            return Ok(kills > 0);
        }
        if fs::keyed_u64(&path, &content, "under_oom")? == Some(1) {
            return Ok(true);
        }
        // Older kernels: the limit was hit and usage reached it.
        let read_num = |name: &str| -> Result<u64, CgroupError> {
            let path = dir.join(name);
            fs::parse_u64(&path, &fs::read(&path)?)
        };
        let failcnt = read_num("memory.failcnt")?;
        let limit = read_num("memory.limit_in_bytes")?;
        let max_usage = read_num("memory.max_usage_in_bytes")?;
        Ok(failcnt > 0 && limit < UNLIMITED_THRESHOLD && max_usage >= limit)
    }

    pub(crate) fn children(&self, parent: &str) -> Result<Vec<String>, CgroupError> {
        let mut names = BTreeSet::new();
        for hierarchy in &self.hierarchies {
            names.extend(fs::child_names(&hierarchy.join(parent))?);
        }
        Ok(names.into_iter().collect())
    }
}

/// Writes FROZEN and waits (briefly) for the state to settle.
fn freeze(dir: &Path) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    fs::write(&state, "FROZEN")?;
    let mut wait = Backoff::new(FREEZE_WAIT);
    loop {
        if fs::read(&state)?.trim() == "FROZEN" {
            return Ok(());
        }
        if !wait.wait() {
            // Still FREEZING (e.g. a task in uninterruptible sleep): kill what we can
            // now and try again on the next round.
            tracing::debug!(path = %state.display(), "freezer did not settle, killing anyway");
            return Ok(());
        }
    }
}

/// A byte limit as v1 wants it: "-1" for no limit.
fn bytes_value(bytes: u64) -> String {
    if bytes == UNLIMITED {
        "-1".to_owned()
    } else {
        bytes.to_string()
    }
}

/// USER_HZ, the unit of `cpuacct.stat`.
fn clock_ticks() -> i64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz,
        _ => 100,
    }
}
