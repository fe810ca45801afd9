//! disk/du end to end: real `agora master` / `agora agent` processes; a task writing past
//! its `disk` is killed with REASON_CONTAINER_LIMITATION_DISK when the quota is enforced,
//! and only reported (in `/monitor/statistics`) when it is not.
#![allow(clippy::unwrap_used)] // test helpers may panic

mod common;

use agora_api::*;
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const ISOLATION: &str = "--isolation=cgroups/cpu,cgroups/mem,cgroups/pids,namespaces/pid,namespaces/ipc,filesystem/linux,linux/capabilities,linux/nnp,linux/seccomp,disk/du";
const HOG: &str = "dd if=/dev/zero of=hog bs=1M count=24 2>/dev/null && sleep 600";

fn hog(id: &str, agent: &AgentId) -> TaskInfo {
    let mut t = task_info(id, agent, CommandInfo::shell(HOG), 0.1, 64.0);
    t.resources.push(Resource::scalar("disk", 8.0));
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_hog_fails_with_the_disk_reason_when_enforced() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP: needs root");
        return;
    }
    let args = [ISOLATION, "--enforce-container-disk-quota", "--container-disk-watch-interval=200ms"];
    let c = Cluster::start(1, &[], &args).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("hog", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    fw.s.launch(vec![offer.id.clone()], vec![hog("hog", &offer.agent_id)], 0.0).await.unwrap();
    let seen = until_terminal(&mut fw, "hog", T).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskState::Failed, "{last:?}\n{}", c.logs());
    assert_eq!(last.reason, Some(Reason::ReasonContainerLimitationDisk), "{last:?}");
    assert!(last.message.as_deref().unwrap_or("").contains("exceeds quota (8.0MB)"), "{last:?}");
    assert!(last.limitation.is_some(), "{last:?}");

    // A task within its quota is left alone.
    let offer = one_offer(&mut fw).await;
    let mut ok =
        task_info("small", &offer.agent_id, CommandInfo::shell("head -c 1000000 /dev/zero > f; sleep 1"), 0.1, 64.0);
    ok.resources.push(Resource::scalar("disk", 8.0));
    fw.s.launch(vec![offer.id.clone()], vec![ok], 0.0).await.unwrap();
    let seen = until_terminal(&mut fw, "small", T).await;
    assert_eq!(seen.last().unwrap().state, TaskState::Finished, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_enforcement_disk_usage_is_only_reported() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP: needs root");
        return;
    }
    let c = Cluster::start(1, &[], &[ISOLATION, "--container-disk-watch-interval=200ms"]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("hog", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    fw.s.launch(vec![offer.id.clone()], vec![hog("hog", &offer.agent_id)], 0.0).await.unwrap();
    fw.until_state("hog", TaskState::Running, T).await;
    let agent = c.agents[0].addr.clone();
    let seen = wait_until(T, || async {
        let v = get_json(&format!("http://{agent}/monitor/statistics")).await;
        let s = v.as_array().and_then(|a| a.first()).map(|e| e["statistics"].clone())?;
        (s["disk_used_bytes"].as_u64()? > 20 << 20).then_some(s)
    })
    .await;
    let s = seen.expect("disk usage never reported");
    assert_eq!(s["disk_limit_bytes"].as_u64(), Some(8 << 20), "{s}");
    // Still running after several measures.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = c.state().await;
    assert_eq!(st["frameworks"][0]["tasks"][0]["state"], "TASK_RUNNING", "{}", st["frameworks"][0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_ports_kills_a_task_listening_on_a_port_it_was_not_given() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP: needs root");
        return;
    }
    let isolation = ISOLATION.replace("disk/du", "network/ports");
    let args = [isolation.as_str(), "--enforce-container-ports", "--container-ports-watch-interval=200ms"];
    let c = Cluster::start(1, &[], &args).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("ports", true, 0.0)).await;
    // A free port of the agent's range (given to one task), and any free port (not given).
    let free = |p: u64| std::net::TcpListener::bind(("127.0.0.1", p as u16)).is_ok();
    let given = (31000..32000).find(|p| free(*p)).expect("a free port in 31000-32000");
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port() as u64;
    let serve = |p: u64| format!("mkdir -p www && exec busybox httpd -f -p 127.0.0.1:{p} -h www");
    if !std::path::Path::new("/bin/busybox").exists() {
        eprintln!("SKIP: needs busybox on the host");
        return;
    }
    let offer = one_offer(&mut fw).await;
    let mut ok = task_info("ok", &offer.agent_id, CommandInfo::shell(serve(given)), 0.1, 64.0);
    ok.resources.push(Resource::ranges("ports", vec![(given, given)]));
    let rogue = task_info("rogue", &offer.agent_id, CommandInfo::shell(serve(other)), 0.1, 64.0);
    fw.s.launch(vec![offer.id.clone()], vec![ok, rogue], 0.0).await.unwrap();
    let seen = until_terminal(&mut fw, "rogue", T).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskState::Failed, "{last:?}\n{}", c.logs());
    assert_eq!(last.reason, Some(Reason::ReasonContainerLimitation), "{last:?}");
    assert!(last.message.as_deref().unwrap_or("").contains(&format!("port {other}")), "{last:?}");
    // The one on its own port keeps running.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = c.state().await;
    let tasks = st["frameworks"][0]["tasks"].as_array().cloned().unwrap_or_default();
    assert!(tasks.iter().any(|t| t["id"] == "ok" && t["state"] == "TASK_RUNNING"), "{tasks:?}");
}

/// An XFS filesystem on a loop device (with project quotas if the kernel has them),
/// unmounted on drop.
struct XfsMount {
    dir: std::path::PathBuf,
    prjquota: bool,
}

impl XfsMount {
    fn new(prjquota: bool) -> Option<XfsMount> {
        if std::process::Command::new("mkfs.xfs").arg("-V").output().is_err() {
            eprintln!("SKIP: no mkfs.xfs (xfsprogs)");
            return None;
        }
        let dir = std::path::PathBuf::from(format!("/var/tmp/agora-xfs-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        let img = dir.join("fs.img");
        let sh = |cmd: String| std::process::Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
        let out = sh(format!("truncate -s 400M {0} && mkfs.xfs -q {0}", img.display()));
        assert!(out.status.success(), "mkfs.xfs: {}", String::from_utf8_lossy(&out.stderr));
        let opts = if prjquota { "loop,prjquota" } else { "loop" };
        let out = sh(format!("mount -o {opts} {} {}", img.display(), dir.join("mnt").display()));
        let m = XfsMount { dir, prjquota };
        if !out.status.success() {
            // This machine's kernel has no XFS quota support (CONFIG_XFS_QUOTA).
            eprintln!("SKIP: cannot mount XFS with {opts}: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some(m)
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.join("mnt").join(p)
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.join("mnt"))
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts an agent with `args` that must refuse to start; its output.
fn refused_agent(args: &[&str], work_dir: &std::path::Path) -> String {
    let out = std::process::Command::new(BIN)
        .args(["agent", "--port", "0", "--master", "127.0.0.1:1"])
        .args(args)
        .arg("--work-dir")
        .arg(work_dir)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the agent started");
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_xfs_needs_project_quotas_and_stops_writes_at_the_quota() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP: needs root");
        return;
    }
    let isolation = ISOLATION.replace("disk/du", "disk/xfs");
    // Not on XFS, or XFS without project quotas: the agent refuses to start, saying why.
    let tmp = std::env::temp_dir().join(format!("agora-not-xfs-{}", uuid::Uuid::new_v4()));
    let err = refused_agent(&[&isolation], &tmp);
    assert!(err.contains("needs the work dir on XFS"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
    let Some(plain) = XfsMount::new(false) else { return };
    assert!(!plain.prjquota);
    let err = refused_agent(&[&isolation], &plain.path("agent"));
    assert!(err.contains("prjquota"), "{err}");
    drop(plain);

    let Some(fs) = XfsMount::new(true) else { return };
    let work = format!("--work-dir={}", fs.path("agent").display());
    let c = Cluster::start(1, &[], &[&isolation, &work]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("xfs", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    let mut t =
        task_info("hog", &offer.agent_id, CommandInfo::shell("dd if=/dev/zero of=big bs=1M count=24"), 0.1, 64.0);
    t.resources.push(Resource::scalar("disk", 8.0));
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.unwrap();
    let seen = until_terminal(&mut fw, "hog", T).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskState::Failed, "{last:?}\n{}", c.logs());
    let sandbox = fs
        .path("agent/slaves")
        .join(&offer.agent_id.value)
        .join("frameworks")
        .join(&fw.s.framework_id.value)
        .join("executors/hog/runs/latest");
    let stderr = std::fs::read_to_string(sandbox.join("stderr")).unwrap_or_default();
    assert!(stderr.contains("quota exceeded"), "{stderr}");
    let big = std::fs::metadata(sandbox.join("big")).map(|m| m.len()).unwrap_or(0);
    assert!(big <= 8 << 20, "wrote {big} bytes past an 8 MB quota");
    // The project is freed when the container ends.
    let freed = wait_until(T, || async {
        let f = std::fs::read_to_string(fs.path("agent/xfs-projects.json")).unwrap_or_default();
        (f.trim() == "{}").then_some(())
    })
    .await;
    assert!(freed.is_some(), "{}", c.logs());
}
