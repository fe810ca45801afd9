//! `clone_into_cgroup` on this host's real cgroup2 mount: the child starts in the cgroup
//! (no migration), runs, and is waited for; an exec failure comes back as an error. Needs
//! root and a cgroup2 mount (on a hybrid host, its controller-less `unified` mount); SKIPs
//! otherwise, saying why. Its own test binary: the clone is a fork, which this test's
//! process must make while no other thread is busy.
use std::path::PathBuf;
use std::process::Command;

fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mount_point = pre.split_whitespace().nth(4)?;
        (post.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
    })
}

#[test]
fn a_process_cloned_into_a_v2_cgroup_starts_there() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root");
        return;
    }
    let Some(root) = cgroup2_mount() else {
        eprintln!("SKIP: no cgroup2 mount");
        return;
    };
    let name = format!("agora-clone3-test-{}", std::process::id());
    let dir = root.join(&name);
    std::fs::create_dir(&dir).expect("create a cgroup");
    let cg = std::fs::File::open(&dir).expect("open the cgroup");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cgroup");

    let mut cmd = Command::new("/bin/cat");
    cmd.arg("/proc/self/cgroup").stdout(std::fs::File::create(&out).unwrap());
    let pid = agora_containerizer::supervisor::clone_into_cgroup(&mut cmd, &cg).expect("clone3");
    assert!(pid > 0);
    let mut status = 0;
    // Wait for the child (the test process is its parent).
    let r = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("waitpid");
    if let nix::sys::wait::WaitStatus::Exited(_, code) = r {
        status = code;
    }
    assert_eq!(status, 0, "cat exited {r:?}");
    let seen = std::fs::read_to_string(&out).unwrap();
    let line = seen.lines().find(|l| l.starts_with("0::")).unwrap_or_default().to_string();
    // The cgroup, relative to the mount's root (which may itself be a sub-cgroup).
    assert!(line.ends_with(&format!("/{name}")), "child's v2 cgroup: {seen:?}");

    // A program that cannot be executed: an error, and no child left behind.
    let mut bad = Command::new("/nonexistent/program");
    let e = agora_containerizer::supervisor::clone_into_cgroup(&mut bad, &cg).expect_err("exec must fail");
    assert!(e.to_string().contains("No such file"), "{e}");
    assert_eq!(std::fs::read_to_string(dir.join("cgroup.procs")).unwrap().trim(), "", "no process left in the cgroup");
    std::fs::remove_dir(&dir).expect("remove the cgroup");
}
