//! cgroup v2 over fixture trees: temp directories holding the files a v2 kernel
//! exposes, with the contents it would show. Checks what is written, where, in which
//! format, and how the kernel's files are parsed. (Fixture files are regular files: a
//! write replaces them where the kernel would apply it.)

mod common;

use std::path::Path;

use agora_cgroups::{CgroupError, Cgroups, Limits, Stats, Version, UNLIMITED};
use common::{fixture, read, TempDir};

const ALL_CONTROLLERS: &str = "cpuset cpu io memory hugetlb pids rdma misc\n";

const CPU_STAT: &str = "usage_usec 2500000\nuser_usec 1500000\nsystem_usec 1000000\n\
core_sched.force_idle_usec 0\nnr_periods 40\nnr_throttled 12\nthrottled_usec 350000\n\
nr_bursts 0\nburst_usec 0\n";

const MEMORY_STAT: &str = "anon 73400320\nfile 10485760\nkernel 1048576\nkernel_stack 32768\n\
pagetables 262144\nsec_pagetables 0\npercpu 0\nsock 0\nvmalloc 0\nshmem 0\nfile_mapped 0\n\
file_dirty 0\nfile_writeback 0\nswapcached 0\nanon_thp 0\n";

const MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n";

/// A leaf cgroup as a v2 kernel shows it with cpu, memory and pids enabled.
fn leaf(dir: &Path) {
    fixture(
        dir,
        &[
            ("cgroup.controllers", "cpu memory pids\n"),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""),
            ("cgroup.events", "populated 0\nfrozen 0\n"),
            ("cgroup.freeze", "0\n"),
            ("cgroup.kill", ""),
            ("cpu.weight", "100\n"),
            ("cpu.max", "max 100000\n"),
            ("cpu.stat", CPU_STAT),
            ("memory.max", "max\n"),
            ("memory.low", "0\n"),
            ("memory.high", "max\n"),
            ("memory.current", "84934656\n"),
            ("memory.stat", MEMORY_STAT),
            ("memory.events", MEMORY_EVENTS),
            ("pids.max", "max\n"),
            ("pids.current", "3\n"),
        ],
    );
}

/// root (all controllers, none enabled) / agora / c1.
fn tree(root: &Path) {
    fixture(root, &[("cgroup.controllers", ALL_CONTROLLERS), ("cgroup.subtree_control", ""), ("cgroup.procs", "")]);
    fixture(&root.join("agora"), &[("cgroup.controllers", ""), ("cgroup.subtree_control", ""), ("cgroup.procs", "")]);
    leaf(&root.join("agora/c1"));
}

#[test]
fn create_writes_limits_in_v2_formats_and_enables_controllers() {
    let tmp = TempDir::new();
    let root = tmp.0.clone();
    tree(&root);
    let cgroups = Cgroups::v2_at(root.clone());
    assert_eq!(cgroups.version(), Version::V2);
    let limits = Limits {
        cpu_shares: Some(512),
        cpu_quota: Some((50_000, 100_000)),
        memory_limit: Some(64 << 20),
        memory_soft_limit: Some(32 << 20),
        pids_max: Some(20),
    };
    cgroups.create("agora/c1", &limits).expect("create");
    let c1 = root.join("agora/c1");
    assert_eq!(read(&c1.join("cpu.weight")), "59");
    assert_eq!(read(&c1.join("cpu.max")), "50000 100000");
    assert_eq!(read(&c1.join("memory.max")), "67108864");
    assert_eq!(read(&c1.join("memory.low")), "33554432");
    assert_eq!(read(&c1.join("memory.high")), "max", "untouched");
    assert_eq!(read(&c1.join("pids.max")), "20");
    assert_eq!(read(&root.join("cgroup.subtree_control")), "+cpu +memory +pids");
    assert_eq!(read(&root.join("agora/cgroup.subtree_control")), "+cpu +memory +pids");
    assert_eq!(read(&c1.join("cgroup.subtree_control")), "", "the leaf enables nothing");
}

#[test]
fn update_writes_only_what_is_set_and_max_for_unlimited() {
    let tmp = TempDir::new();
    let root = tmp.0.clone();
    tree(&root);
    let cgroups = Cgroups::v2_at(root.clone());
    let c1 = root.join("agora/c1");
    cgroups
        .update(
            "agora/c1",
            &Limits {
                cpu_quota: Some((-1, 50_000)),
                memory_limit: Some(UNLIMITED),
                pids_max: Some(UNLIMITED),
                ..Limits::default()
            },
        )
        .expect("update");
    assert_eq!(read(&c1.join("cpu.max")), "max 50000");
    assert_eq!(read(&c1.join("memory.max")), "max");
    assert_eq!(read(&c1.join("pids.max")), "max");
    assert_eq!(read(&c1.join("cpu.weight")), "100", "untouched");
    assert_eq!(read(&c1.join("memory.low")), "0", "untouched");

    cgroups
        .update(
            "agora/c1",
            &Limits { cpu_shares: Some(1024), cpu_quota: Some((150_000, 100_000)), ..Limits::default() },
        )
        .expect("update");
    assert_eq!(read(&c1.join("cpu.weight")), "100");
    assert_eq!(read(&c1.join("cpu.max")), "150000 100000");

    // A control file the kernel does not offer is an error naming it, never a new file.
    let err =
        cgroups.update("agora/none", &Limits { pids_max: Some(1), ..Limits::default() }).expect_err("missing cgroup");
    assert!(err.to_string().contains("agora/none/pids.max"), "{err}");
    assert!(!root.join("agora/none").exists());
}

#[test]
fn subtree_control_is_only_written_when_missing() {
    let tmp = TempDir::new();
    let root = tmp.0.clone();
    tree(&root);
    // The kernel lists enabled controllers without '+'.
    std::fs::write(root.join("cgroup.subtree_control"), "cpuset cpu io memory pids\n").expect("fixture");
    std::fs::write(root.join("agora/cgroup.subtree_control"), "cpu\n").expect("fixture");
    let cgroups = Cgroups::v2_at(root.clone());
    cgroups.create("agora/c1", &Limits::default()).expect("create");
    assert_eq!(read(&root.join("cgroup.subtree_control")), "cpuset cpu io memory pids", "all there: not written");
    assert_eq!(read(&root.join("agora/cgroup.subtree_control")), "+memory +pids");
}

#[test]
fn only_available_controllers_are_enabled_and_missing_ones_refused() {
    let tmp = TempDir::new();
    let root = tmp.0.clone();
    tree(&root);
    std::fs::write(root.join("cgroup.controllers"), "cpu pids\n").expect("fixture");
    let cgroups = Cgroups::v2_at(root.clone());

    let err = cgroups
        .create("agora/c2", &Limits { memory_limit: Some(1 << 30), ..Limits::default() })
        .expect_err("no memory controller");
    assert!(matches!(err, CgroupError::ControllerUnavailable { controller: "memory", .. }), "{err}");
    assert!(!root.join("agora/c2").exists(), "nothing created on refusal");
    assert_eq!(read(&root.join("cgroup.subtree_control")), "", "nothing enabled on refusal");

    cgroups.create("agora/c2", &Limits::default()).expect("create without memory limits");
    assert!(root.join("agora/c2").is_dir());
    assert_eq!(read(&root.join("cgroup.subtree_control")), "+cpu +pids");
}

#[test]
fn stats_parse_cpu_memory_and_pids() {
    let tmp = TempDir::new();
    let root = tmp.0.clone();
    tree(&root);
    let cgroups = Cgroups::v2_at(root.clone());
    std::fs::write(root.join("agora/c1/memory.max"), "134217728\n").expect("fixture");
    std::fs::write(root.join("agora/c1/pids.max"), "20\n").expect("fixture");
    let stats = cgroups.stats("agora/c1").expect("stats");
    assert_eq!(
        stats,
        Stats {
            cpu_user_secs: 1.5,
            cpu_system_secs: 1.0,
            cpu_nr_periods: 40,
            cpu_nr_throttled: 12,
            cpu_throttled_secs: 0.35,
            mem_rss_bytes: 73_400_320,
            mem_cache_bytes: 10_485_760,
            mem_usage_bytes: 84_934_656,
            mem_limit_bytes: Some(134_217_728),
            pids_current: 3,
            pids_limit: Some(20),
        }
    );

    // No limits: "max" reads as None.
    std::fs::write(root.join("agora/c1/memory.max"), "max\n").expect("fixture");
    std::fs::write(root.join("agora/c1/pids.max"), "max\n").expect("fixture");
    let stats = cgroups.stats("agora/c1").expect("stats");
    assert_eq!((stats.mem_limit_bytes, stats.pids_limit), (None, None));

    // A cgroup without the memory and pids controllers: only cpu.stat's core keys.
    fixture(&root.join("agora/bare"), &[("cpu.stat", "usage_usec 10\nuser_usec 6\nsystem_usec 4\n")]);
    let bare = cgroups.stats("agora/bare").expect("stats");
    assert_eq!(bare.cpu_user_secs, 6e-6);
    assert_eq!((bare.mem_usage_bytes, bare.pids_current), (0, 0));

    assert!(matches!(cgroups.stats("agora/missing"), Err(CgroupError::NotFound { .. })));
    // Garbage is an error naming the file.
    std::fs::write(root.join("agora/c1/memory.current"), "lots\n").expect("fixture");
    let err = cgroups.stats("agora/c1").expect_err("garbage");
    assert!(err.to_string().contains("memory.current"), "{err}");
}

#[test]
fn oom_kill_is_read_from_memory_events() {
    let tmp = TempDir::new();
    let root = tmp.0.clone();
    tree(&root);
    let cgroups = Cgroups::v2_at(root.clone());
    assert!(!cgroups.oom_killed("agora/c1").expect("oom_killed"));
    std::fs::write(root.join("agora/c1/memory.events"), "low 0\nhigh 0\nmax 17\noom 1\noom_kill 1\noom_group_kill 0\n")
        .expect("fixture");
    assert!(cgroups.oom_killed("agora/c1").expect("oom_killed"));
}

#[test]
fn processes_children_and_kill() {
    let tmp = TempDir::new();
    let root = tmp.0.clone();
    tree(&root);
    leaf(&root.join("agora/c2"));
    let cgroups = Cgroups::v2_at(root.clone());
    cgroups.add_process("agora/c1", 4242).expect("add_process");
    assert_eq!(read(&root.join("agora/c1/cgroup.procs")), "4242");
    std::fs::write(root.join("agora/c1/cgroup.procs"), "7\n3\n").expect("fixture");
    assert_eq!(cgroups.procs("agora/c1").expect("procs"), vec![3, 7]);

    assert_eq!(cgroups.children("agora").expect("children"), vec!["c1".to_owned(), "c2".to_owned()]);
    assert!(cgroups.children("nothing").expect("children").is_empty());

    // cgroup.kill, then waits for "populated 0".
    cgroups.kill_all("agora/c2").expect("kill_all");
    assert_eq!(read(&root.join("agora/c2/cgroup.kill")), "1");
    cgroups.kill_all("agora/missing").expect("nothing to kill");
    cgroups.destroy("agora/missing").expect("nothing to destroy");

    assert_eq!(cgroups.cgroup_path("memory", "agora/c1"), Some(root.join("agora/c1")));
    for bad in ["/etc", "../etc", "agora/../../etc", ""] {
        assert!(matches!(cgroups.create(bad, &Limits::default()), Err(CgroupError::InvalidName { .. })));
        assert_eq!(cgroups.cgroup_path("cpu", bad), None);
    }
}
