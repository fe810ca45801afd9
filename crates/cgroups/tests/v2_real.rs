//! cgroup v2 against the real kernel, on whatever cgroup2 mount this host has: the
//! whole hierarchy on a pure v2 host, or on a hybrid host (this project's machines)
//! the controller-less `/sys/fs/cgroup/unified`, where cgroups, process placement,
//! `cgroup.kill`, freezing and `cpu.stat` work but no limit can be set.

mod common;

use std::time::{Duration, Instant};

use agora_cgroups::{CgroupError, Cgroups, Limits};
use common::{is_dead, read, wait_until, Gated, TestCgroup};

fn v2() -> Option<TestCgroup> {
    if !common::is_root() {
        eprintln!("not root: real cgroup v2 tests need root");
        return None;
    }
    let Some(mount) = common::cgroup2_mount() else {
        eprintln!("no cgroup2 mount here: v2 is covered by fixtures only");
        return None;
    };
    Some(TestCgroup::new(Cgroups::v2_at(mount)))
}

/// The controllers the cgroup2 root offers (none on a hybrid host's unified mount).
fn available_controllers(t: &TestCgroup) -> String {
    let root = t.cgroups.cgroup_path("cpu", "x").expect("path");
    read(&root.parent().expect("root").join("cgroup.controllers"))
}

#[test]
fn placement_double_fork_kill_and_destroy() {
    let Some(t) = v2() else { return };
    let cg = t.child("c1");
    let nested = t.child("c1/nested");
    t.cgroups.create(&cg, &Limits::default()).expect("create");
    t.cgroups.create(&nested, &Limits::default()).expect("create nested");
    let dir = t.cgroups.cgroup_path("cpu", &cg).expect("path");
    assert!(dir.join("cgroup.procs").exists(), "a real cgroup");

    let mut main = Gated::spawn("sleep 100 & sh -c 'sleep 100 &'; echo ready; wait");
    t.cgroups.add_process(&cg, main.pid()).expect("add_process");
    assert_eq!(t.cgroups.procs(&cg).expect("procs"), vec![main.pid()]);
    main.release();
    assert_eq!(main.read_line(), "ready");
    wait_until("three processes", Duration::from_secs(5), || t.cgroups.procs(&cg).expect("procs").len() >= 3);
    // v2 forbids processes in a cgroup with children only when controllers are
    // enabled below it; without controllers, a nested cgroup can hold processes too.
    let mut other = Gated::spawn("sleep 100");
    let nested_ok = t.cgroups.add_process(&nested, other.pid()).is_ok();
    other.release();

    let mut pids = t.cgroups.procs(&cg).expect("procs");
    pids.extend(t.cgroups.procs(&nested).expect("procs"));
    assert_eq!(t.cgroups.children(&cg).expect("children"), vec!["nested".to_owned()]);

    let start = Instant::now();
    t.cgroups.kill_all(&cg).expect("kill_all");
    eprintln!("v2 kill_all of {} processes: {:?}", pids.len(), start.elapsed());
    for pid in &pids {
        assert!(is_dead(*pid), "pid {pid} survived kill_all");
    }
    assert!(t.cgroups.procs(&cg).expect("procs").is_empty());
    assert_eq!(read(&dir.join("cgroup.events")).lines().next(), Some("populated 0"));
    main.wait(Duration::from_secs(5));
    if nested_ok {
        other.wait(Duration::from_secs(5));
    }

    t.cgroups.destroy(&cg).expect("destroy");
    assert!(!dir.exists());
    t.cgroups.destroy(&cg).expect("destroying a missing cgroup is fine");
}

#[test]
fn cpu_stat_of_a_busy_process() {
    let Some(t) = v2() else { return };
    let cg = t.child("c1");
    t.cgroups.create(&cg, &Limits::default()).expect("create");
    let mut child = Gated::spawn(
        "exec python3 -c '\nimport time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n'",
    );
    t.cgroups.add_process(&cg, child.pid()).expect("add_process");
    child.release();
    assert!(child.wait(Duration::from_secs(10)).success());
    let stats = t.cgroups.stats(&cg).expect("stats");
    eprintln!("{stats:?}");
    assert!(stats.cpu_user_secs + stats.cpu_system_secs >= 0.25, "{stats:?}");
}

#[test]
fn limits_need_their_controllers() {
    let Some(t) = v2() else { return };
    let controllers = available_controllers(&t);
    if controllers.split_whitespace().any(|c| c == "pids") {
        // A pure v2 host: the limit applies for real.
        let cg = t.child("c1");
        t.cgroups.create(&cg, &Limits { pids_max: Some(20), ..Limits::default() }).expect("create");
        let dir = t.cgroups.cgroup_path("pids", &cg).expect("path");
        assert_eq!(read(&dir.join("pids.max")), "20");
    } else {
        let err = t
            .cgroups
            .create(&t.child("c1"), &Limits { pids_max: Some(20), ..Limits::default() })
            .expect_err("no pids controller on this cgroup2 mount");
        assert!(matches!(err, CgroupError::ControllerUnavailable { .. }), "{err}");
        assert!(t.cgroups.children(&t.top).expect("children").is_empty());
    }
}

#[test]
fn timing_create_add_process_destroy() {
    let Some(t) = v2() else { return };
    // Not a gate: prints what placement costs on this cgroup2 mount.
    let mut create = Duration::ZERO;
    let mut add = Duration::ZERO;
    let mut destroy = Duration::ZERO;
    let rounds = 20;
    for i in 0..rounds {
        let cg = t.child(&format!("c{i}"));
        let mut child = Gated::spawn("true");
        let t0 = Instant::now();
        t.cgroups.create(&cg, &Limits::default()).expect("create");
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
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "v2 mean over {rounds}: create {:?}, add_process {:?}, destroy {:?}",
        create / rounds,
        add / rounds,
        destroy / rounds
    );
}
