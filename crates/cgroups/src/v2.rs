//! cgroup v2: one unified hierarchy; controllers reach a cgroup only when every
//! ancestor lists them in `cgroup.subtree_control`.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::fs::{self, Backoff};
use crate::{v2_weight_from_shares, CgroupError, Limits, Stats, KILL_TIMEOUT, UNLIMITED};

/// The controllers enabled for container cgroups, in `subtree_control` order.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// How long one freeze waits for `cgroup.events` to read "frozen 1" before killing
/// anyway.
const FREEZE_WAIT: Duration = Duration::from_millis(100);

/// How long one freeze round waits for killed processes to leave before freezing again.
const ROUND_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub(crate) struct V2 {
    root: PathBuf,
    /// The root's `cgroup.controllers`, read once on first use.
    available: OnceLock<BTreeSet<String>>,
}

impl V2 {
    pub(crate) fn new(root: PathBuf) -> V2 {
        V2 { root, available: OnceLock::new() }
    }

    pub(crate) fn cgroup_path(&self, cgroup: &str) -> PathBuf {
        self.root.join(cgroup)
    }

    fn available(&self) -> Result<&BTreeSet<String>, CgroupError> {
        if let Some(available) = self.available.get() {
            return Ok(available);
        }
        let content = fs::read(&self.root.join("cgroup.controllers"))?;
        let set = content.split_whitespace().map(str::to_owned).collect();
        Ok(self.available.get_or_init(|| set))
    }

    pub(crate) fn create(&self, cgroup: &str, limits: &Limits) -> Result<(), CgroupError> {
        let available = self.available()?;
        let needed = [
            ("cpu", "cpu limits", limits.cpu_shares.is_some() || limits.cpu_quota.is_some()),
            ("memory", "memory limits", limits.memory_limit.is_some() || limits.memory_soft_limit.is_some()),
            ("pids", "pids limit", limits.pids_max.is_some()),
        ];
        for (controller, what, is_needed) in needed {
            if is_needed && !available.contains(controller) {
                return Err(CgroupError::ControllerUnavailable {
                    controller,
                    what,
                    path: self.root.join("cgroup.controllers"),
                });
            }
        }
        // Enable whatever of cpu/memory/pids the root offers, so that stats and later
        // updates find their files even when no limit is set now.
        let wanted: Vec<&str> = CONTROLLERS.into_iter().filter(|c| available.contains(*c)).collect();
        let mut dir = self.root.clone();
        for component in cgroup.split('/') {
            enable_controllers(&dir, &wanted)?;
            dir.push(component);
            fs::mkdir(&dir)?;
        }
        self.update(cgroup, limits)
    }

    pub(crate) fn update(&self, cgroup: &str, limits: &Limits) -> Result<(), CgroupError> {
        let dir = self.root.join(cgroup);
        if let Some(shares) = limits.cpu_shares {
            fs::write(&dir.join("cpu.weight"), &v2_weight_from_shares(shares).to_string())?;
        }
        if let Some((quota, period)) = limits.cpu_quota {
            let value = if quota < 0 { format!("max {period}") } else { format!("{quota} {period}") };
            fs::write(&dir.join("cpu.max"), &value)?;
        }
        if let Some(limit) = limits.memory_limit {
            fs::write(&dir.join("memory.max"), &max_value(limit))?;
        }
        if let Some(soft) = limits.memory_soft_limit {
            // As runc maps a v1 soft limit (reservation): best-effort protection.
            fs::write(&dir.join("memory.low"), &max_value(soft))?;
        }
        if let Some(max) = limits.pids_max {
            fs::write(&dir.join("pids.max"), &max_value(max))?;
        }
        Ok(())
    }

    pub(crate) fn add_process(&self, cgroup: &str, pid: i32) -> Result<(), CgroupError> {
        fs::write(&self.root.join(cgroup).join("cgroup.procs"), &pid.to_string())
    }

    pub(crate) fn procs(&self, cgroup: &str) -> Result<Vec<i32>, CgroupError> {
        let mut pids = fs::read_pids(&self.root.join(cgroup).join("cgroup.procs"))?;
        pids.sort_unstable();
        Ok(pids)
    }

    pub(crate) fn kill_all(&self, cgroup: &str) -> Result<(), CgroupError> {
        let dir = self.root.join(cgroup);
        let kill_file = dir.join("cgroup.kill");
        match fs::write_io(&kill_file, "1") {
            // Linux >= 5.14: the kernel kills the whole subtree, forks in flight included.
            Ok(()) => wait_unpopulated(&dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if dir.exists() {
                    kill_frozen(&dir)
                } else {
                    Ok(())
                }
            }
            Err(source) => Err(fs::write_error(&kill_file, "1", source)),
        }
    }

    pub(crate) fn destroy(&self, cgroup: &str) -> Result<(), CgroupError> {
        self.kill_all(cgroup)?;
        fs::remove_tree(&self.root.join(cgroup))
    }

    pub(crate) fn stats(&self, cgroup: &str) -> Result<Stats, CgroupError> {
        let dir = self.root.join(cgroup);
        let mut stats = Stats::default();
        // cpu.stat is a core file: present in every cgroup, with or without the cpu
        // controller (which adds the throttling keys).
        let path = dir.join("cpu.stat");
        let Some(content) = fs::read_opt(&path)? else {
            return Err(CgroupError::NotFound { cgroup: cgroup.to_owned() });
        };
        let usec =
            |key| -> Result<f64, CgroupError> { Ok(fs::keyed_u64(&path, &content, key)?.unwrap_or(0) as f64 / 1e6) };
        stats.cpu_user_secs = usec("user_usec")?;
        stats.cpu_system_secs = usec("system_usec")?;
        stats.cpu_throttled_secs = usec("throttled_usec")?;
        stats.cpu_nr_periods = fs::keyed_u64(&path, &content, "nr_periods")?.unwrap_or(0);
        stats.cpu_nr_throttled = fs::keyed_u64(&path, &content, "nr_throttled")?.unwrap_or(0);

        let path = dir.join("memory.stat");
        if let Some(content) = fs::read_opt(&path)? {
            stats.mem_rss_bytes = fs::keyed_u64(&path, &content, "anon")?.unwrap_or(0);
            stats.mem_cache_bytes = fs::keyed_u64(&path, &content, "file")?.unwrap_or(0);
        }
        let path = dir.join("memory.current");
        if let Some(content) = fs::read_opt(&path)? {
            stats.mem_usage_bytes = fs::parse_u64(&path, &content)?;
        }
        let path = dir.join("memory.max");
        if let Some(content) = fs::read_opt(&path)? {
            stats.mem_limit_bytes = fs::parse_max(&path, &content)?;
        }
        let path = dir.join("pids.current");
        if let Some(content) = fs::read_opt(&path)? {
            stats.pids_current = fs::parse_u64(&path, &content)?;
        }
        let path = dir.join("pids.max");
        if let Some(content) = fs::read_opt(&path)? {
            stats.pids_limit = fs::parse_max(&path, &content)?;
        }
        Ok(stats)
    }

    pub(crate) fn oom_killed(&self, cgroup: &str) -> Result<bool, CgroupError> {
        // memory.events is hierarchical: it counts kills in descendants too.
        let path = self.root.join(cgroup).join("memory.events");
        let content = fs::read(&path)?;
        Ok(fs::keyed_u64(&path, &content, "oom_kill")?.unwrap_or(0) > 0)
    }

    pub(crate) fn children(&self, parent: &str) -> Result<Vec<String>, CgroupError> {
        let mut names = fs::child_names(&self.root.join(parent))?;
        names.sort();
        Ok(names)
    }
}

/// Makes sure `dir/cgroup.subtree_control` lists every wanted controller, writing only
/// the missing ones (one read, at most one write).
fn enable_controllers(dir: &Path, wanted: &[&str]) -> Result<(), CgroupError> {
    if wanted.is_empty() {
        return Ok(());
    }
    let path = dir.join("cgroup.subtree_control");
    let content = fs::read(&path)?;
    let enabled: BTreeSet<&str> = content.split_whitespace().map(|c| c.trim_start_matches('+')).collect();
    let missing: Vec<String> = wanted.iter().filter(|c| !enabled.contains(**c)).map(|c| format!("+{c}")).collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::write(&path, &missing.join(" "))
}

/// Every process in the cgroup or below it.
fn subtree_pids(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let mut pids = BTreeSet::new();
    for cgroup in fs::subtree(dir)? {
        pids.extend(fs::read_pids_opt(&cgroup.join("cgroup.procs"))?);
    }
    Ok(pids.into_iter().collect())
}

/// Waits for `cgroup.events` to say "populated 0" (no process in the subtree).
fn wait_unpopulated(dir: &Path) -> Result<(), CgroupError> {
    let events = dir.join("cgroup.events");
    let mut wait = Backoff::new(KILL_TIMEOUT);
    loop {
        let content = match fs::read_opt(&events)? {
            Some(content) => content,
            None => return Ok(()),
        };
        if fs::keyed(&content, "populated") == Some("0") {
            return Ok(());
        }
        if !wait.wait() {
            return Err(CgroupError::KillTimeout {
                path: dir.to_path_buf(),
                pids: subtree_pids(dir)?,
                waited: wait.elapsed(),
            });
        }
    }
}

/// Before `cgroup.kill` existed: freeze, SIGKILL everything, thaw, until empty.
pub(crate) fn kill_frozen(dir: &Path) -> Result<(), CgroupError> {
    let freeze = dir.join("cgroup.freeze");
    let has_freezer = freeze.exists();
    let start = Instant::now();
    let mut pids = subtree_pids(dir)?;
    loop {
        if pids.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= KILL_TIMEOUT {
            return Err(CgroupError::KillTimeout { path: dir.to_path_buf(), pids, waited: start.elapsed() });
        }
        if has_freezer {
            let killed =
                freeze_and_wait(dir).and_then(|()| subtree_pids(dir)).and_then(|pids| fs::kill_pids(&pids, dir));
            let thawed = fs::write(&freeze, "0");
            killed?;
            thawed?;
        } else {
            fs::kill_pids(&pids, dir)?;
        }
        let mut round = Backoff::new(ROUND_WAIT.min(KILL_TIMEOUT.saturating_sub(start.elapsed())));
        loop {
            pids = subtree_pids(dir)?;
            if pids.is_empty() || !round.wait() {
                break;
            }
        }
    }
}

fn freeze_and_wait(dir: &Path) -> Result<(), CgroupError> {
    fs::write(&dir.join("cgroup.freeze"), "1")?;
    let events = dir.join("cgroup.events");
    let mut wait = Backoff::new(FREEZE_WAIT);
    loop {
        if fs::keyed(&fs::read(&events)?, "frozen") == Some("1") {
            return Ok(());
        }
        if !wait.wait() {
            tracing::debug!(path = %events.display(), "cgroup did not freeze in time, killing anyway");
            return Ok(());
        }
    }
}

/// A limit as v2 wants it: "max" for no limit.
fn max_value(value: u64) -> String {
    if value == UNLIMITED {
        "max".to_owned()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    /// The freeze/SIGKILL/thaw fallback (kernels before `cgroup.kill`), against the
    /// real cgroup2 mount of this host when there is one and we are root.
    #[test]
    fn kill_frozen_kills_a_forking_subtree_on_a_real_cgroup2() {
        let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let Some(root) = crate::mountinfo::parse(&mountinfo).v2 else {
            eprintln!("no cgroup2 mount: fallback covered by the real-v2 tests elsewhere");
            return;
        };
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root");
            return;
        }
        let v2 = V2::new(root);
        let name = format!("agora-test-freeze-{}", std::process::id());
        let dir = v2.cgroup_path(&name);
        struct Cleanup<'a>(&'a V2, &'a str);
        impl Drop for Cleanup<'_> {
            fn drop(&mut self) {
                let _ = self.0.destroy(self.1);
            }
        }
        let _cleanup = Cleanup(&v2, &name);
        v2.create(&name, &Limits::default()).expect("create");
        v2.create(&format!("{name}/nested"), &Limits::default()).expect("create nested");

        // Keeps forking (about 100 a second) and double-forks, in two cgroups.
        let spawn = |script: &str, cgroup: &str| {
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(format!("read _; {script}"))
                .stdin(Stdio::piped())
                .spawn()
                .expect("spawn");
            v2.add_process(cgroup, child.id() as i32).expect("add_process");
            child.stdin.take().expect("stdin").write_all(b"go\n").expect("release");
            child
        };
        let mut forker = spawn("sh -c 'sleep 100 &'; while :; do sleep 100 & sleep 0.01; done", &name);
        let mut nested = spawn("sleep 100", &format!("{name}/nested"));
        std::thread::sleep(Duration::from_millis(200));
        assert!(subtree_pids(&dir).expect("pids").len() > 5);

        kill_frozen(&dir).expect("kill_frozen");
        assert!(subtree_pids(&dir).expect("pids").is_empty());
        assert_eq!(fs::read(&dir.join("cgroup.freeze")).expect("read").trim(), "0", "thawed");
        forker.wait().expect("wait");
        nested.wait().expect("wait");
        v2.destroy(&name).expect("destroy");
        assert!(!dir.exists());
    }
}
