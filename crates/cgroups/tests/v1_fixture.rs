//! cgroup v1 over fixture trees: layouts and kernel outputs this machine does not have
//! (comounted `cpu,cpuacct`, a missing pids hierarchy, kernels before `oom_kill`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use agora_cgroups::{CgroupError, Cgroups, Limits, Version};
use common::{fixture, read, TempDir};

/// Hierarchies as `cpu,cpuacct`, `memory` and `freezer` (no pids) under `root`.
fn comounted(root: &Path) -> Cgroups {
    let cpu = root.join("cpu,cpuacct");
    let mounts: BTreeMap<String, PathBuf> =
        [("cpu", cpu.clone()), ("cpuacct", cpu), ("memory", root.join("memory")), ("freezer", root.join("freezer"))]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    Cgroups::v1_at(mounts)
}

/// The control files a v1 kernel would show in `agora/c1` of each hierarchy.
fn leaf(root: &Path) {
    fixture(
        &root.join("cpu,cpuacct/agora/c1"),
        &[
            ("cgroup.procs", ""),
            ("cpu.shares", "1024\n"),
            ("cpu.cfs_period_us", "100000\n"),
            ("cpu.cfs_quota_us", "-1\n"),
            ("cpu.stat", "nr_periods 10\nnr_throttled 4\nthrottled_time 250000000\n"),
            ("cpuacct.stat", "user 150\nsystem 50\n"),
        ],
    );
    fixture(
        &root.join("memory/agora/c1"),
        &[
            ("cgroup.procs", ""),
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory.soft_limit_in_bytes", "9223372036854771712\n"),
            ("memory.stat", "cache 4096\nrss 8192\nrss_huge 0\nmapped_file 0\ntotal_cache 40960\ntotal_rss 81920\n"),
            ("memory.usage_in_bytes", "131072\n"),
            ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n"),
            ("memory.failcnt", "0\n"),
            ("memory.max_usage_in_bytes", "131072\n"),
        ],
    );
    fixture(&root.join("freezer/agora/c1"), &[("cgroup.procs", ""), ("freezer.state", "THAWED\n")]);
}

#[test]
fn comounted_hierarchy_is_written_once_and_missing_pids_refused() {
    let tmp = TempDir::new();
    leaf(&tmp.0);
    let cgroups = comounted(&tmp.0);
    assert_eq!(cgroups.version(), Version::V1);
    let limits = Limits {
        cpu_shares: Some(512),
        cpu_quota: Some((25_000, 50_000)),
        memory_limit: Some(1 << 30),
        memory_soft_limit: Some(1 << 29),
        pids_max: None,
    };
    cgroups.create("agora/c1", &limits).expect("create");
    let cpu = tmp.0.join("cpu,cpuacct/agora/c1");
    assert_eq!(read(&cpu.join("cpu.shares")), "512");
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "50000");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "25000");
    let mem = tmp.0.join("memory/agora/c1");
    assert_eq!(read(&mem.join("memory.limit_in_bytes")), "1073741824");
    assert_eq!(read(&mem.join("memory.soft_limit_in_bytes")), "536870912");
    assert_eq!(cgroups.cgroup_path("cpuacct", "agora/c1"), cgroups.cgroup_path("cpu", "agora/c1"));

    assert_eq!(
        cgroups.procs_files("agora/c1"),
        vec![
            tmp.0.join("cpu,cpuacct/agora/c1/cgroup.procs"),
            tmp.0.join("memory/agora/c1/cgroup.procs"),
            tmp.0.join("freezer/agora/c1/cgroup.procs"),
        ],
        "one file per hierarchy, comounted controllers once"
    );
    cgroups.add_process("agora/c1", 99).expect("add_process");
    for h in ["cpu,cpuacct", "memory", "freezer"] {
        assert_eq!(read(&tmp.0.join(h).join("agora/c1/cgroup.procs")), "99", "{h}");
    }

    let err =
        cgroups.create("agora/c2", &Limits { pids_max: Some(10), ..Limits::default() }).expect_err("pids not mounted");
    assert!(matches!(err, CgroupError::ControllerUnavailable { controller: "pids", .. }), "{err}");
    assert!(!tmp.0.join("memory/agora/c2").exists(), "nothing created on refusal");
    assert_eq!(cgroups.children("agora").expect("children"), vec!["c1".to_owned()]);
}

#[test]
fn stats_use_hierarchical_totals_and_user_hz() {
    let tmp = TempDir::new();
    leaf(&tmp.0);
    let cgroups = comounted(&tmp.0);
    let stats = cgroups.stats("agora/c1").expect("stats");
    assert_eq!(stats.cpu_user_secs, 1.5);
    assert_eq!(stats.cpu_system_secs, 0.5);
    assert_eq!((stats.cpu_nr_periods, stats.cpu_nr_throttled), (10, 4));
    assert_eq!(stats.cpu_throttled_secs, 0.25);
    assert_eq!((stats.mem_rss_bytes, stats.mem_cache_bytes), (81_920, 40_960));
    assert_eq!(stats.mem_usage_bytes, 131_072);
    assert_eq!(stats.mem_limit_bytes, None, "the v1 'unlimited' value");
    assert_eq!((stats.pids_current, stats.pids_limit), (0, None), "no pids hierarchy");
}

#[test]
fn oom_falls_back_to_failcnt_on_old_kernels() {
    let tmp = TempDir::new();
    leaf(&tmp.0);
    let cgroups = comounted(&tmp.0);
    let mem = tmp.0.join("memory/agora/c1");
    assert!(!cgroups.oom_killed("agora/c1").expect("oom_killed"));

    // Limit hit, peak usage at the limit: an OOM kill on a kernel without the counter.
    std::fs::write(mem.join("memory.limit_in_bytes"), "67108864\n").expect("fixture");
    std::fs::write(mem.join("memory.failcnt"), "12\n").expect("fixture");
    std::fs::write(mem.join("memory.max_usage_in_bytes"), "67108864\n").expect("fixture");
    assert!(cgroups.oom_killed("agora/c1").expect("oom_killed"));

    // With the counter (Linux >= 4.13), the counter decides.
    std::fs::write(mem.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n").expect("fixture");
    assert!(!cgroups.oom_killed("agora/c1").expect("oom_killed"));
    std::fs::write(mem.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").expect("fixture");
    assert!(cgroups.oom_killed("agora/c1").expect("oom_killed"));
}
