//! Resource detection: what the agent offers when `--resources` does not say.
use agora_api::{Resource, Resources};
use std::path::Path;

/// Fills in `cpus`, `mem`, `disk` and `ports` from the machine where they were not given,
/// as Mesos does: all CPUs; memory less 1 GB (or half when under 2 GB); the work dir's
/// filesystem less 5 GB (or half when under 10 GB); ports 31000-32000.
pub fn with_defaults(mut given: Resources, work_dir: &Path) -> Resources {
    let has = |r: &Resources, n: &str| r.iter().any(|x| x.name == n);
    if !has(&given, "cpus") {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        given.add(&Resource::scalar("cpus", cpus));
    }
    if !has(&given, "mem") {
        let total_mb = total_memory_mb().unwrap_or(1024.0);
        let mem = if total_mb >= 2048.0 { total_mb - 1024.0 } else { total_mb / 2.0 };
        given.add(&Resource::scalar("mem", mem.floor()));
    }
    if !has(&given, "disk") {
        let total_mb = disk_mb(work_dir).unwrap_or(10240.0);
        let disk = if total_mb >= 10240.0 { total_mb - 5120.0 } else { total_mb / 2.0 };
        given.add(&Resource::scalar("disk", disk.floor()));
    }
    if !has(&given, "ports") {
        given.add(&Resource::ranges("ports", vec![(31000, 32000)]));
    }
    given
}

fn total_memory_mb() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn disk_mb(path: &Path) -> Option<f64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(st.blocks() as f64 * st.fragment_size() as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_values_win_and_the_rest_is_detected() {
        let r = with_defaults(Resources::parse("cpus:3").unwrap(), Path::new("/"));
        assert_eq!(r.scalar("cpus"), 3.0);
        assert!(r.scalar("mem") > 0.0);
        assert!(r.scalar("disk") > 0.0);
        assert_eq!(r.ranges_of("ports"), vec![(31000, 32000)]);
    }
}
