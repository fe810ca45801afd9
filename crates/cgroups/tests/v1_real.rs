//! cgroup v1 against the real kernel (as root on a host whose v1 cpu and memory
//! hierarchies are mounted, such as this project's hybrid machines).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agora_cgroups::{CgroupError, Cgroups, Limits, Version, UNLIMITED};
use common::{is_dead, read, wait_until, Gated, TestCgroup};

const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "freezer"];

/// The detected v1 hierarchies, or `None` (with a note) where this host cannot run
/// these tests: not root, or no v1 hierarchies (a pure v2 host).
fn v1() -> Option<TestCgroup> {
    if !common::is_root() {
        eprintln!("not root: real cgroup v1 tests need root");
        return None;
    }
    let cgroups = Cgroups::detect().expect("detect cgroups");
    if cgroups.version() != Version::V1 {
        eprintln!("no cgroup v1 hierarchies here: v1 is covered by fixtures only");
        return None;
    }
    Some(TestCgroup::new(cgroups))
}

fn path(t: &TestCgroup, controller: &str, cgroup: &str) -> PathBuf {
    t.cgroups.cgroup_path(controller, cgroup).expect("controller mounted")
}

#[test]
fn limits_are_written_read_back_and_updated() {
    let Some(t) = v1() else { return };
    let cg = t.child("c1");
    let limits = Limits {
        cpu_shares: Some(512),
        cpu_quota: Some((50_000, 100_000)),
        memory_limit: Some(128 << 20),
        memory_soft_limit: Some(64 << 20),
        pids_max: Some(50),
    };
    t.cgroups.create(&cg, &limits).expect("create");
    let cpu = path(&t, "cpu", &cg);
    let mem = path(&t, "memory", &cg);
    assert_eq!(read(&cpu.join("cpu.shares")), "512");
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read(&mem.join("memory.limit_in_bytes")), (128u64 << 20).to_string());
    assert_eq!(read(&mem.join("memory.soft_limit_in_bytes")), (64u64 << 20).to_string());
    assert_eq!(read(&path(&t, "pids", &cg).join("pids.max")), "50");
    for controller in V1_CONTROLLERS {
        assert!(path(&t, controller, &cg).is_dir(), "{controller} cgroup created");
    }

    // create again is idempotent; update writes only what is set.
    t.cgroups.create(&cg, &Limits::default()).expect("create again");
    t.cgroups
        .update(
            &cg,
            &Limits {
                cpu_shares: Some(2048),
                cpu_quota: Some((-1, 100_000)),
                memory_limit: Some(UNLIMITED),
                pids_max: Some(UNLIMITED),
                ..Limits::default()
            },
        )
        .expect("update");
    assert_eq!(read(&cpu.join("cpu.shares")), "2048");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "-1");
    assert_eq!(read(&mem.join("memory.soft_limit_in_bytes")), (64u64 << 20).to_string());
    assert_eq!(read(&path(&t, "pids", &cg).join("pids.max")), "max");
    let stats = t.cgroups.stats(&cg).expect("stats");
    assert_eq!(stats.mem_limit_bytes, None);
    assert_eq!(stats.pids_limit, None);

    // The kernel's refusal names the file and the value.
    let err = t
        .cgroups
        .update(&cg, &Limits { cpu_quota: Some((10, 100_000)), ..Limits::default() })
        .expect_err("quota below 1ms is refused");
    let msg = err.to_string();
    assert!(msg.contains("cpu.cfs_quota_us") && msg.contains("\"10\""), "{msg}");

    assert_eq!(t.cgroups.children(&t.top).expect("children"), vec!["c1".to_owned()]);
    assert!(t.cgroups.children(&t.child("none")).expect("children").is_empty());
    assert!(!t.cgroups.oom_killed(&cg).expect("oom_killed"));

    t.cgroups.destroy(&cg).expect("destroy");
    for controller in V1_CONTROLLERS {
        assert!(!path(&t, controller, &cg).exists(), "{controller} cgroup removed");
    }
    t.cgroups.destroy(&cg).expect("destroying a missing cgroup is fine");
    assert!(matches!(t.cgroups.stats(&cg), Err(CgroupError::NotFound { .. })));
}

#[test]
fn kill_all_leaves_nothing_even_double_forked_or_nested() {
    let Some(t) = v1() else { return };
    let cg = t.child("c1");
    let nested = t.child("c1/nested");
    t.cgroups.create(&cg, &Limits::default()).expect("create");
    t.cgroups.create(&nested, &Limits::default()).expect("create nested");

    // A direct child, a background child, and a double-forked orphan (its parent
    // shell exits at once, so it is reparented out of our process tree).
    let mut main = Gated::spawn("sleep 100 & sh -c 'sleep 100 &'; echo ready; wait");
    t.cgroups.add_process(&cg, main.pid()).expect("add_process");
    assert_eq!(t.cgroups.procs(&cg).expect("procs"), vec![main.pid()]);
    for controller in V1_CONTROLLERS {
        let procs = read(&path(&t, controller, &cg).join("cgroup.procs"));
        assert_eq!(procs, main.pid().to_string(), "{controller}");
    }
    main.release();
    assert_eq!(main.read_line(), "ready");
    wait_until("three processes", Duration::from_secs(5), || t.cgroups.procs(&cg).expect("procs").len() >= 3);

    let mut other = Gated::spawn("sleep 100");
    t.cgroups.add_process(&nested, other.pid()).expect("add nested");
    other.release();

    let mut pids = t.cgroups.procs(&cg).expect("procs");
    pids.extend(t.cgroups.procs(&nested).expect("nested procs"));
    assert!(pids.len() >= 4, "{pids:?}");

    let start = Instant::now();
    t.cgroups.kill_all(&cg).expect("kill_all");
    eprintln!("kill_all of {} processes: {:?}", pids.len(), start.elapsed());
    assert!(t.cgroups.procs(&cg).expect("procs").is_empty());
    assert!(t.cgroups.procs(&nested).expect("procs").is_empty());
    for pid in &pids {
        assert!(is_dead(*pid), "pid {pid} survived kill_all");
    }
    main.wait(Duration::from_secs(5));
    other.wait(Duration::from_secs(5));

    t.cgroups.destroy(&cg).expect("destroy");
    for controller in V1_CONTROLLERS {
        assert!(!path(&t, controller, &nested).exists(), "{controller} nested removed");
        assert!(!path(&t, controller, &cg).exists(), "{controller} removed");
    }
}

#[test]
fn a_child_places_itself_by_writing_zero() {
    let Some(t) = v1() else { return };
    let cg = t.child("c1");
    t.cgroups.create(&cg, &Limits::default()).expect("create");
    let files = t.cgroups.procs_files(&cg);
    assert_eq!(files.len(), V1_CONTROLLERS.len());
    // What a launcher does between fork and exec: "0" means the writing process.
    let writes: Vec<String> = files.iter().map(|f| format!("echo 0 > {}", f.display())).collect();
    let mut child = Gated::spawn(&format!("{}; echo ready; exec sleep 100", writes.join("; ")));
    child.release();
    assert_eq!(child.read_line(), "ready");
    for controller in V1_CONTROLLERS {
        let procs = read(&path(&t, controller, &cg).join("cgroup.procs"));
        assert_eq!(procs, child.pid().to_string(), "{controller}");
    }
    t.cgroups.destroy(&cg).expect("destroy");
    child.wait(Duration::from_secs(5));
}

#[test]
fn destroy_kills_a_live_container() {
    let Some(t) = v1() else { return };
    let cg = t.child("c1");
    t.cgroups.create(&cg, &Limits::default()).expect("create");
    let mut child = Gated::spawn("sleep 100 & sleep 100");
    t.cgroups.add_process(&cg, child.pid()).expect("add_process");
    child.release();
    // sh may exec its last command: two or three processes.
    wait_until("two processes", Duration::from_secs(5), || t.cgroups.procs(&cg).expect("procs").len() >= 2);
    let pids = t.cgroups.procs(&cg).expect("procs");
    t.cgroups.destroy(&cg).expect("destroy");
    assert!(pids.iter().all(|p| is_dead(*p)));
    assert!(!path(&t, "freezer", &cg).exists());
    child.wait(Duration::from_secs(5));
}

#[test]
fn stats_of_a_busy_process() {
    let Some(t) = v1() else { return };
    let cg = t.child("c1");
    let limits = Limits {
        cpu_shares: Some(1024),
        cpu_quota: Some((50_000, 100_000)),
        memory_limit: Some(256 << 20),
        pids_max: Some(10),
        ..Limits::default()
    };
    t.cgroups.create(&cg, &limits).expect("create");
    // Half a second of cpu under a 0.5-cpu quota (so it is throttled), then 64 MiB
    // of anonymous memory held while we look.
    let mut child = Gated::spawn(
        "exec python3 -c '\nimport time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\nx = b\"a\" * (64 << 20)\nprint(\"ready\", flush=True)\ntime.sleep(100)\n'",
    );
    t.cgroups.add_process(&cg, child.pid()).expect("add_process");
    child.release();
    assert_eq!(child.read_line(), "ready");

    let stats = t.cgroups.stats(&cg).expect("stats");
    eprintln!("{stats:?}");
    assert!(stats.cpu_user_secs + stats.cpu_system_secs >= 0.3, "{stats:?}");
    assert!(stats.cpu_nr_periods > 0 && stats.cpu_nr_throttled > 0, "{stats:?}");
    assert!(stats.cpu_throttled_secs > 0.0, "{stats:?}");
    assert!(stats.mem_rss_bytes >= 60 << 20, "{stats:?}");
    assert!(stats.mem_usage_bytes >= stats.mem_rss_bytes, "{stats:?}");
    assert_eq!(stats.mem_limit_bytes, Some(256 << 20));
    assert_eq!(stats.pids_current, 1);
    assert_eq!(stats.pids_limit, Some(10));
    assert!(!t.cgroups.oom_killed(&cg).expect("oom_killed"));
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    let Some(t) = v1() else { return };
    let cg = t.child("c1");
    let limits = Limits { memory_limit: Some(64 << 20), ..Limits::default() };
    t.cgroups.create(&cg, &limits).expect("create");
    assert!(!t.cgroups.oom_killed(&cg).expect("oom_killed"));
    let mut child = Gated::spawn("exec python3 -c 'x = b\"a\" * (300 << 20)'");
    t.cgroups.add_process(&cg, child.pid()).expect("add_process");
    child.release();
    let status = child.wait(Duration::from_secs(30));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed by the OOM killer: {status:?}");
    assert!(t.cgroups.oom_killed(&cg).expect("oom_killed"));
}

#[test]
fn fork_bomb_is_bounded_by_pids_max() {
    let Some(t) = v1() else { return };
    let cg = t.child("c1");
    let limits = Limits { pids_max: Some(20), ..Limits::default() };
    t.cgroups.create(&cg, &limits).expect("create");
    // Safety first: never release a fork bomb into an unbounded cgroup.
    assert_eq!(read(&path(&t, "pids", &cg).join("pids.max")), "20");
    let mut bomb = Gated::spawn(
        "exec python3 -c '\nimport os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.001)\n'",
    );
    t.cgroups.add_process(&cg, bomb.pid()).expect("add_process");
    bomb.release();
    let pids_dir = path(&t, "pids", &cg);
    wait_until("the bomb to hit the limit", Duration::from_secs(10), || read(&pids_dir.join("pids.events")) != "max 0");
    std::thread::sleep(Duration::from_millis(300));
    let stats = t.cgroups.stats(&cg).expect("stats");
    assert!(stats.pids_current <= 20, "{stats:?}");
    assert!(t.cgroups.procs(&cg).expect("procs").len() <= 20);

    let start = Instant::now();
    t.cgroups.destroy(&cg).expect("destroy a fork bomb");
    eprintln!("destroy of a fork bomb: {:?}", start.elapsed());
    assert!(!pids_dir.exists());
    bomb.wait(Duration::from_secs(5));
}

#[test]
fn timing_create_add_process_destroy() {
    let Some(t) = v1() else { return };
    // Not a gate (timings never gate tests): prints what a container start/stop costs.
    let limits =
        Limits { cpu_shares: Some(1024), memory_limit: Some(64 << 20), pids_max: Some(100), ..Limits::default() };
    let mut create = Duration::ZERO;
    let mut add = Duration::ZERO;
    let mut destroy = Duration::ZERO;
    let rounds = 20;
    for i in 0..rounds {
        let cg = t.child(&format!("c{i}"));
        let mut child = Gated::spawn("true");
        let t0 = Instant::now();
        t.cgroups.create(&cg, &limits).expect("create");
        let t1 = Instant::now();
        t.cgroups.add_process(&cg, child.pid()).expect("add_process");
        let t2 = Instant::now();
        child.release();
        child.wait(Duration::from_secs(5));
        let t3 = Instant::now();
        t.cgroups.destroy(&cg).expect("destroy");
        let t4 = Instant::now();
        create += t1 - t0;
        add += t2 - t1;
        destroy += t4 - t3;
        // Let the machine go idle, as between container starts.
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "v1 mean over {rounds}: create {:?}, add_process {:?}, destroy {:?}",
        create / rounds,
        add / rounds,
        destroy / rounds
    );
}
