//! Every task a real container: namespaces, cgroups, capabilities, seccomp, users, clean
//! kills. Runs as root against the machine's real cgroups.
#![allow(clippy::unwrap_used)] // test helpers may panic

mod common;

use agora_api::*;
use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

async fn run_task(fw: &mut Fw, id: &str, cmd: &str, cpus: f64, mem: f64) -> Vec<TaskStatus> {
    let offer = one_offer(fw).await;
    fw.launch_on(&offer, &[(id, cmd)], cpus, mem).await;
    until_terminal(fw, id, T).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_sees_its_own_container() {
    assert!(is_root(), "isolation tests need root");
    let c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("inside", true, 0.0)).await;
    // Each check prints a line; the task fails if any check fails.
    let script = r#"
        fail=0
        n=$(ls /proc | grep -c '^[0-9]')
        [ "$n" -lt 10 ] && echo "pid-ns ok ($n processes)" || { echo "pid-ns FAIL: $n processes"; fail=1; }
        [ "$(cat /proc/1/comm)" != systemd ] && [ "$(cat /proc/1/comm)" != init ] && echo "pid1 ok: $(cat /proc/1/comm)" || { echo "pid1 FAIL"; fail=1; }
        [ "$(hostname)" != "$HOST_NAME" ] && echo "uts ok: $(hostname)" || { echo "uts FAIL"; fail=1; }
        touch /tmp/private-marker && echo "tmp ok" || { echo "tmp FAIL"; fail=1; }
        [ -f /mnt/mesos/sandbox/stdout ] && [ "$MESOS_SANDBOX" = /mnt/mesos/sandbox ] && echo "sandbox ok" || { echo "sandbox FAIL"; fail=1; }
        mkdir -p /tmp/m && mount -t tmpfs none /tmp/m 2>/dev/null && { echo "mount FAIL"; fail=1; } || echo "mount denied ok"
        date -s '2001-01-01' >/dev/null 2>&1 && { echo "clock FAIL"; fail=1; } || echo "clock denied ok"
        ( echo 1 > /proc/sys/vm/drop_caches ) 2>/dev/null && { echo "procsys FAIL"; fail=1; } || echo "proc/sys read-only ok"
        bnd=$(grep CapBnd /proc/self/status | awk '{print $2}')
        # CAP_SYS_MODULE is bit 16, CAP_SYS_ADMIN bit 21, CAP_SYS_TIME bit 25.
        [ $(( 0x$bnd >> 16 & 1 )) -eq 0 ] && [ $(( 0x$bnd >> 21 & 1 )) -eq 0 ] && [ $(( 0x$bnd >> 25 & 1 )) -eq 0 ] && echo "caps ok ($bnd)" || { echo "caps FAIL ($bnd)"; fail=1; }
        grep -q '^NoNewPrivs:[[:space:]]*1' /proc/self/status && echo "nnp ok" || { echo "nnp FAIL"; fail=1; }
        grep -q '^Seccomp:[[:space:]]*2' /proc/self/status && echo "seccomp ok" || { echo "seccomp FAIL"; fail=1; }
        exit $fail
    "#;
    let host = nix::unistd::gethostname().unwrap().to_string_lossy().into_owned();
    let offer = one_offer(&mut fw).await;
    let mut cmd = CommandInfo::shell(script);
    cmd.environment = Some(Environment {
        variables: vec![EnvVariable { name: "HOST_NAME".into(), kind: None, value: Some(host), secret: None }],
    });
    fw.s.launch(vec![offer.id.clone()], vec![task_info("inside", &offer.agent_id, cmd, 0.1, 64.0)], 0.0).await.unwrap();
    let end = fw.until_state("inside", TaskState::Finished, T).await;
    let out = sandbox_file(&c, &fw, &offer.agent_id, "inside", "stdout");
    assert_eq!(end.last().unwrap().state, TaskState::Finished, "{out}\n{}", c.logs());
    assert!(out.contains("seccomp ok") && out.contains("pid-ns ok"), "{out}");
    // The task's /tmp was its own.
    assert!(!std::path::Path::new("/tmp/private-marker").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_fails_with_the_memory_limitation() {
    assert!(is_root());
    let c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("hog", true, 0.0)).await;
    let seen = run_task(&mut fw, "hog", "head -c 1000m /dev/zero | tail", 0.1, 64.0).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskState::Failed, "{:?}\n{}", last, c.logs());
    assert_eq!(last.reason, Some(Reason::ReasonContainerLimitationMemory), "{last:?}");
    let lim = last.limitation.as_ref().expect("limitation set");
    assert_eq!(lim["resources"][0]["name"], "mem");
    // The agent is fine and runs the next task.
    let ok = run_task(&mut fw, "after", "true", 0.1, 64.0).await;
    assert_eq!(ok.last().unwrap().state, TaskState::Finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_count_is_bounded_by_pids() {
    assert!(is_root());
    let c = Cluster::start(1, &[], &["--cgroups-pids-max", "40"]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("forky", true, 0.0)).await;
    // Try to start 200 sleepers (perl keeps going when fork fails; sh would stop).
    let script = r#"perl -e 'my $n = 0; for (1..200) { my $p = fork(); next unless defined $p; if ($p == 0) { sleep 3; exit 0 } $n++ } print "started=$n\n"; 1 while wait() > 0;'"#;
    let offer = one_offer(&mut fw).await;
    fw.launch_on(&offer, &[("forky", script)], 0.1, 64.0).await;
    fw.until_state("forky", TaskState::Running, T).await;
    // While it runs, the container never holds more than 40 processes.
    let agent = c.agents[0].addr.clone();
    let mut max_seen = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let stats = get_json(&format!("http://{agent}/monitor/statistics")).await;
        if let Some(p) = stats[0]["statistics"]["processes"].as_u64() {
            max_seen = max_seen.max(p);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(max_seen > 5 && max_seen <= 40, "processes in the container: {max_seen}");
    fw.until_state("forky", TaskState::Finished, T).await;
    let out = sandbox_file(&c, &fw, &offer.agent_id, "forky", "stdout");
    let started: usize = out.trim().trim_start_matches("started=").parse().unwrap_or(999);
    assert!(started < 40, "{started} processes started under pids.max 40");
    let health = agora_http::Client::new().get(&format!("http://{agent}/health"), T).await.unwrap();
    assert!(health.status.is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_shares_split_two_to_one() {
    assert!(is_root());
    // A cgroup root of their own, so the two tasks are the only siblings that compete.
    let root = format!("agora-cpu-{}", &uuid::Uuid::new_v4().to_string()[..8]);
    let c = Cluster::start(1, &[], &["--cgroups-root", &root]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("cpu", true, 0.0)).await;
    // Both tasks spin on the same CPU, so they compete for it whatever else the machine
    // is doing (other tests run in parallel).
    let burn = "exec taskset -c 0 sh -c 'while :; do :; done'";
    let offer = one_offer(&mut fw).await;
    let infos = vec![
        task_info("big", &offer.agent_id, CommandInfo::shell(burn), 1.0, 64.0),
        task_info("small", &offer.agent_id, CommandInfo::shell(burn), 0.5, 64.0),
    ];
    fw.s.launch(vec![offer.id.clone()], infos, 0.0).await.unwrap();
    fw.until_state("big", TaskState::Running, T).await;
    fw.until_state("small", TaskState::Running, T).await;
    let agent = c.agents[0].addr.clone();
    let usage = |v: &serde_json::Value, id: &str| -> f64 {
        let e = v.as_array().unwrap().iter().find(|e| e["executor_id"] == id).unwrap();
        e["statistics"]["cpus_user_time_secs"].as_f64().unwrap()
            + e["statistics"]["cpus_system_time_secs"].as_f64().unwrap()
    };
    let before = get_json(&format!("http://{agent}/monitor/statistics")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = get_json(&format!("http://{agent}/monitor/statistics")).await;
    let big = usage(&after, "big") - usage(&before, "big");
    let small = usage(&after, "small") - usage(&before, "small");
    let ratio = big / small;
    assert!((1.5..=2.7).contains(&ratio), "cpu time big {big:.2}s small {small:.2}s ratio {ratio:.2}");
    assert_eq!(after[0]["statistics"]["cpus_limit"].as_f64().map(|c| c > 0.0), Some(true));
    for t in ["big", "small"] {
        fw.s.kill(TaskId::new(t), None).await.unwrap();
        fw.until_state(t, TaskState::Killed, T).await;
    }
    drop(c);
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(h.path().join(&root));
    }
}

fn count_processes(pattern: &str) -> usize {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                    String::from_utf8_lossy(&c).replace('\0', " ").trim() == pattern
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_task_leaves_no_double_forked_child() {
    assert!(is_root());
    let c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("daemon", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    // A daemon that double-forks away from the task (new session, parent gone).
    fw.launch_on(&offer, &[("d", "setsid sh -c 'sleep 4321 &' ; sleep 4322")], 0.1, 64.0).await;
    fw.until_state("d", TaskState::Running, T).await;
    let up = wait_until(T, || async { (count_processes("sleep 4321") == 1).then_some(()) }).await;
    assert!(up.is_some(), "the daemon did not start");
    fw.s.kill(TaskId::new("d"), None).await.unwrap();
    fw.until_state("d", TaskState::Killed, T).await;
    let gone =
        wait_until(T, || async { (count_processes("sleep 4321") + count_processes("sleep 4322") == 0).then_some(()) })
            .await;
    assert!(gone.is_some(), "a process of the killed task survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_cannot_read_a_root_only_file() {
    assert!(is_root());
    let secret = std::path::PathBuf::from(format!("/var/tmp/agora-secret-{}", uuid::Uuid::new_v4()));
    std::fs::write(&secret, "top secret").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("users", true, 0.0)).await;
    let cmd = format!("id -un; cat {}", secret.display());
    let offer = one_offer(&mut fw).await;
    let mut as_nobody = CommandInfo::shell(cmd.clone());
    as_nobody.user = Some("nobody".into());
    fw.s.launch(vec![offer.id.clone()], vec![task_info("nob", &offer.agent_id, as_nobody, 0.1, 64.0)], 0.0)
        .await
        .unwrap();
    let end = fw.until_state("nob", TaskState::Failed, T).await;
    assert_eq!(end.last().unwrap().message.as_deref(), Some("Command exited with status 1"));
    assert_eq!(sandbox_file(&c, &fw, &offer.agent_id, "nob", "stdout"), "nobody\n");
    // Root (the framework's user) can.
    let seen = run_task(&mut fw, "rooty", &cmd, 0.1, 64.0).await;
    assert_eq!(seen.last().unwrap().state, TaskState::Finished);
    assert_eq!(sandbox_file(&c, &fw, &offer.agent_id, "rooty", "stdout"), "root\ntop secret");
    // An unknown user is a clear failure.
    let offer = one_offer(&mut fw).await;
    let mut ghost = CommandInfo::shell("true");
    ghost.user = Some("no-such-user-agora".into());
    fw.s.launch(vec![offer.id.clone()], vec![task_info("ghost", &offer.agent_id, ghost, 0.1, 64.0)], 0.0)
        .await
        .unwrap();
    let end = fw.until_state("ghost", TaskState::Failed, T).await;
    assert!(end.last().unwrap().message.clone().unwrap_or_default().contains("no-such-user-agora"), "{:?}", end.last());
    let _ = std::fs::remove_file(secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_isolation_and_small_memory_are_refused() {
    assert!(is_root());
    // An unknown isolator stops the agent at start with the list of known ones.
    let out = std::process::Command::new(BIN)
        .args(["agent", "--port", "0", "--work-dir", "/tmp/agora-bad-iso", "--isolation", "cgroups/cpu,bogus/iso"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus/iso") && err.contains("cgroups/mem"), "{err}");
    let _ = std::fs::remove_dir_all("/tmp/agora-bad-iso");

    let c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("tiny", true, 0.0)).await;
    // 1 MB of memory plus the executor's 32 MB overhead is fine.
    let seen = run_task(&mut fw, "ok-small", "true", 0.1, 1.0).await;
    assert_eq!(seen.last().unwrap().state, TaskState::Finished, "{:?}", seen.last());
    // A bad rlimit (the isolator is not even on) gets a clear failure, not a stuck container.
    let offer = one_offer(&mut fw).await;
    let mut cmd = task_info("rl", &offer.agent_id, CommandInfo::shell("true"), 0.1, 64.0);
    cmd.container = Some(
        serde_json::json!({"type": "MESOS", "rlimit_info": {"rlimits": [{"type": "RLMT_NOFILE", "soft": 10, "hard": 5}]}}),
    );
    fw.s.launch(vec![offer.id.clone()], vec![cmd], 0.0).await.unwrap();
    let end = fw.until_state("rl", TaskState::Failed, T).await;
    let msg = end.last().unwrap().message.clone().unwrap_or_default();
    assert!(msg.contains("rlimit"), "{msg}");
}

fn descendants(pid: i32) -> usize {
    // Children by parent pid, from /proc/<pid>/stat.
    let mut parent: Vec<(i32, i32)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        if let Some(pp) = rest.split_whitespace().nth(1).and_then(|x| x.parse().ok()) {
            parent.push((p, pp));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let cur = found[i];
        found.extend(parent.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    found.len() - 1
}

fn cgroup_children(root: &str) -> usize {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| {
            std::fs::read_dir(h.path().join(root))
                .map(|rd| rd.flatten().filter(|e| e.path().is_dir()).count())
                .unwrap_or(0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_lifecycles_leak_nothing() {
    assert!(is_root());
    let root = format!("agora-it-{}", &uuid::Uuid::new_v4().to_string()[..8]);
    let c = Cluster::start(
        1,
        &[],
        &["--cgroups-root", &root, "--resources", "cpus:6;mem:8192;disk:100;ports:[31000-32000]"],
    )
    .await;
    let agent_pid = c.agents[0].pid();
    let mounts = || std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    let fds = || std::fs::read_dir(format!("/proc/{agent_pid}/fd")).unwrap().count();
    let (mounts0, fds0) = (mounts(), fds());
    assert_eq!(descendants(agent_pid), 0);
    let mut fw = Fw::subscribe(&c.master.addr, info("churn", true, 0.0)).await;
    let total = 1000;
    let (mut next, mut done) = (0, 0);
    while done < total {
        let ev = fw.next_matching(Duration::from_secs(60), |_| true).await.expect("events stop");
        if let Some(o) = ev.offers {
            for offer in o.offers {
                let res = Resources::from_vec(offer.resources.clone());
                let n = ((res.scalar("cpus") / 0.1).floor() as usize).min(total - next).min(40);
                let infos: Vec<TaskInfo> = (next..next + n)
                    .map(|i| task_info(&format!("c{i}"), &offer.agent_id, CommandInfo::shell("true"), 0.1, 32.0))
                    .collect();
                next += n;
                fw.s.launch(vec![offer.id.clone()], infos, 0.0).await.unwrap();
            }
        } else if let Some(u) = ev.update {
            assert!(
                !matches!(u.status.state, TaskState::Failed | TaskState::Error | TaskState::Lost),
                "{:?}",
                u.status
            );
            if u.status.state == TaskState::Finished {
                done += 1;
            }
        }
    }
    let settled = wait_until(Duration::from_secs(30), || async {
        (descendants(agent_pid) == 0 && cgroup_children(&root) == 0).then_some(())
    })
    .await;
    assert!(settled.is_some(), "left behind: {} processes, {} cgroups", descendants(agent_pid), cgroup_children(&root));
    assert_eq!(mounts(), mounts0, "host mounts changed");
    let fds1 = fds();
    assert!(fds1 <= fds0 + 2, "agent fds grew from {fds0} to {fds1}");
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(h.path().join(&root));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rlimits_and_capabilities_from_container_info() {
    assert!(is_root());
    let iso = format!("{},posix/rlimits", agora_containerizer_default());
    let c = Cluster::start(1, &[], &["--isolation", &iso]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("limits", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    let mut t1 = task_info("rl", &offer.agent_id, CommandInfo::shell("ulimit -n; ulimit -Hn"), 0.1, 64.0);
    t1.container = Some(
        serde_json::json!({"type": "MESOS", "rlimit_info": {"rlimits": [{"type": "RLMT_NOFILE", "soft": 64, "hard": 128}]}}),
    );
    let mut t2 = task_info("nocaps", &offer.agent_id, CommandInfo::shell("grep CapBnd /proc/self/status"), 0.1, 64.0);
    t2.container =
        Some(serde_json::json!({"type": "MESOS", "linux_info": {"bounding_capabilities": {"capabilities": []}}}));
    // An rlimit the kernel refuses: a hard NOFILE above fs.nr_open.
    let mut t3 = task_info("refused", &offer.agent_id, CommandInfo::shell("true"), 0.1, 64.0);
    t3.container = Some(
        serde_json::json!({"type": "MESOS", "rlimit_info": {"rlimits": [{"type": "RLMT_NOFILE", "soft": 1024, "hard": 1u64 << 40}]}}),
    );
    fw.s.launch(vec![offer.id.clone()], vec![t1, t2, t3], 0.0).await.unwrap();
    fw.until_state("rl", TaskState::Finished, T).await;
    assert_eq!(sandbox_file(&c, &fw, &offer.agent_id, "rl", "stdout"), "64\n128\n");
    fw.until_state("nocaps", TaskState::Finished, T).await;
    assert_eq!(sandbox_file(&c, &fw, &offer.agent_id, "nocaps", "stdout"), "CapBnd:\t0000000000000000\n");
    let end = fw.until_state("refused", TaskState::Failed, T).await;
    let last = end.last().unwrap();
    assert_eq!(last.reason, Some(Reason::ReasonContainerLaunchFailed), "{last:?}");
    assert!(last.message.clone().unwrap_or_default().contains("setrlimit"), "{last:?}");
}

fn agora_containerizer_default() -> &'static str {
    "cgroups/cpu,cgroups/mem,cgroups/pids,namespaces/pid,namespaces/ipc,filesystem/linux,linux/capabilities,linux/nnp,linux/seccomp"
}

/// The container's private /tmp hides the host's: an agent whose binary (and so the
/// executor's) lives under /tmp must still start containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_binary_under_tmp_still_starts_containers() {
    assert!(is_root(), "isolation tests need root");
    let bin_dir = std::path::PathBuf::from(format!("/tmp/agora-bin-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("agora");
    std::fs::copy(BIN, &bin).unwrap();
    let mut c = Cluster::start(0, &[], &[]).await;
    let mut args = s(&["agent", "--ip", "127.0.0.1", "--port", "0", "--master", &c.master.addr, "--work-dir"]);
    args.push(c.dir.join("agent-tmp").display().to_string());
    args.extend(s(FAST_AGENT));
    args.extend(s(&["--resources", "cpus:2;mem:1024;disk:1000"]));
    let agent = spawn_daemon_bin(&bin, &args, &c.dir.join("agent-tmp.log"));
    c.agents.push(agent);
    c.wait_agents(1).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("tmp-binary", true, 0.0)).await;
    let seen = run_task(&mut fw, "t", "echo started", 0.1, 32.0).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskState::Finished, "{last:?}\n{}", c.logs());
    drop(fw);
    drop(c);
    let _ = std::fs::remove_dir_all(&bin_dir);
}
