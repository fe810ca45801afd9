//! Volumes and disk quota, end to end: real `agora master` / `agora agent` processes (the
//! linux launcher, as root), tasks with `ContainerInfo.volumes` (SANDBOX_PATH, HOST_PATH,
//! legacy host_path), mount propagation from a shared host mount, images and image volumes
//! from a local directory of `docker save` tarballs.
#![allow(clippy::unwrap_used)] // test helpers may panic

mod common;
#[path = "../../image/tests/common/fixture.rs"]
#[allow(dead_code, clippy::all)]
mod fx;

use agora_api::*;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const ISOLATION: &str = "--isolation=cgroups/cpu,cgroups/mem,cgroups/pids,namespaces/pid,namespaces/ipc,filesystem/linux,linux/capabilities,linux/nnp,linux/seccomp,volume/sandbox_path,volume/host_path";

fn root() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP: volume tests need root");
        return false;
    }
    true
}

/// A scratch directory on the host (outside the cluster's), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let d = PathBuf::from(format!("/var/tmp/agora-vol-it-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Anything a test mounted below it goes first.
        let mut points: Vec<String> = mounts_under(&self.0);
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(Path::new(&p), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Mount points in the test's (the host's) mount namespace under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&d))
        .collect()
}

fn with_volumes(mut t: TaskInfo, volumes: serde_json::Value) -> TaskInfo {
    t.container = Some(json!({"type": "MESOS", "volumes": volumes}));
    t
}

fn host_vol(container_path: &str, host: &Path, mode: &str) -> serde_json::Value {
    json!({"container_path": container_path, "mode": mode,
           "source": {"type": "HOST_PATH", "host_path": {"path": host.display().to_string()}}})
}

fn sandbox_vol(container_path: &str, path: &str, mode: &str) -> serde_json::Value {
    json!({"container_path": container_path, "mode": mode,
           "source": {"type": "SANDBOX_PATH", "sandbox_path": {"type": "SELF", "path": path}}})
}

/// Launches one task with volumes and returns its updates up to the terminal one.
async fn run_with(fw: &mut Fw, id: &str, cmd: &str, volumes: serde_json::Value) -> Vec<TaskStatus> {
    let offer = one_offer(fw).await;
    let t = with_volumes(task_info(id, &offer.agent_id, CommandInfo::shell(cmd), 0.1, 64.0), volumes);
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.expect("launch");
    until_terminal(fw, id, T).await
}

fn sandbox_of(c: &Cluster, fw: &Fw, agent: &AgentId, task: &str) -> PathBuf {
    c.dir
        .join("agent0/slaves")
        .join(&agent.value)
        .join("frameworks")
        .join(&fw.s.framework_id.value)
        .join("executors")
        .join(task)
        .join("runs/latest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_path_volumes_share_the_sandbox_rw_and_ro() {
    if !root() {
        return;
    }
    let c = Cluster::start(1, &[], &[ISOLATION]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("sbvol", true, 0.0)).await;
    // The volume is seen at the task's cwd (the host sandbox path) and at /mnt/mesos/sandbox.
    let cmd = r#"set -e
        echo shared-data > data/f
        [ "$(cat /mnt/mesos/sandbox/data/f)" = shared-data ]
        [ "$(cat $MESOS_SANDBOX/ro/f)" = shared-data ]
        if echo x > ro/g 2>/dev/null; then echo "RO writable"; exit 1; fi
        echo done-ok"#;
    let volumes = json!([sandbox_vol("data", "store/self", "RW"), sandbox_vol("ro", "store/self", "RO")]);
    let seen = run_with(&mut fw, "sb", cmd, volumes).await;
    let offer_agent = seen.last().unwrap().agent_id.clone().unwrap();
    let sb = sandbox_of(&c, &fw, &offer_agent, "sb");
    let out = std::fs::read_to_string(sb.join("stdout")).unwrap_or_default();
    let err = std::fs::read_to_string(sb.join("stderr")).unwrap_or_default();
    assert_eq!(seen.last().unwrap().state, TaskState::Finished, "{out}{err}\n{:?}\n{}", seen.last(), c.logs());
    assert!(out.contains("done-ok"), "{out}");
    // The data lives in the sandbox path the volume named.
    assert_eq!(std::fs::read_to_string(sb.join("store/self/f")).unwrap(), "shared-data\n");
    // PARENT has no parent container to refer to.
    let seen = run_with(
        &mut fw,
        "parent",
        "true",
        json!([{"container_path": "p", "mode": "RW",
                "source": {"type": "SANDBOX_PATH", "sandbox_path": {"type": "PARENT", "path": "x"}}}]),
    )
    .await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskState::Failed);
    assert_eq!(last.reason, Some(Reason::ReasonContainerLaunchFailed));
    assert!(last.message.as_deref().unwrap_or("").contains("PARENT"), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_volumes_inside_the_allowlist_ro_and_rw() {
    if !root() {
        return;
    }
    let scratch = Scratch::new();
    let allowed = scratch.0.join("allowed");
    for d in ["rw", "ro", "abs-target"] {
        std::fs::create_dir_all(allowed.join(d)).unwrap();
    }
    std::fs::write(allowed.join("ro/hello"), "from-host\n").unwrap();
    let flag = format!("--allowed-host-paths={}", allowed.display());
    let c = Cluster::start(1, &[], &[ISOLATION, &flag]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("hostvol", true, 0.0)).await;
    let abs = allowed.join("abs-target");
    let cmd = format!(
        r#"set -e
        [ "$(cat ro/hello)" = from-host ]
        if echo x > ro/new 2>/dev/null; then echo "RO writable"; exit 1; fi
        echo from-task > rw/written
        echo abs > {abs}/via-absolute
        echo ok"#,
        abs = abs.display()
    );
    let volumes = json!([
        host_vol("rw", &allowed.join("rw"), "RW"),
        host_vol("ro", &allowed.join("ro"), "RO"),
        // An absolute container path in a container without an image: the (existing) host
        // path, seen through the container's own mount namespace.
        host_vol(&abs.display().to_string(), &allowed.join("rw"), "RW"),
        // The legacy form.
        {"container_path": "legacy", "host_path": allowed.join("ro").display().to_string(), "mode": "RO"},
    ]);
    let seen = run_with(&mut fw, "hp", &cmd, volumes).await;
    let last = seen.last().unwrap();
    let sb = sandbox_of(&c, &fw, last.agent_id.as_ref().unwrap(), "hp");
    let out = std::fs::read_to_string(sb.join("stdout")).unwrap_or_default()
        + &std::fs::read_to_string(sb.join("stderr")).unwrap_or_default();
    assert_eq!(last.state, TaskState::Finished, "{out}\n{last:?}\n{}", c.logs());
    assert_eq!(std::fs::read_to_string(allowed.join("rw/written")).unwrap(), "from-task\n");
    assert_eq!(std::fs::read_to_string(allowed.join("rw/via-absolute")).unwrap(), "abs\n");
    assert!(!allowed.join("ro/new").exists());
    // The host's own abs-target directory was only a mount point in the container.
    assert!(!abs.join("via-absolute").exists());
    assert!(mounts_under(&scratch.0).is_empty(), "{:?}", mounts_under(&scratch.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_paths_outside_the_allowlist_and_escapes_are_refused() {
    if !root() {
        return;
    }
    let scratch = Scratch::new();
    let allowed = scratch.0.join("allowed");
    std::fs::create_dir_all(allowed.join("ok")).unwrap();
    std::fs::create_dir_all(scratch.0.join("allowed-not")).unwrap();
    std::os::unix::fs::symlink("/etc", allowed.join("to-etc")).unwrap();
    let flag = format!("--allowed-host-paths={}", allowed.display());
    let c = Cluster::start(1, &[], &[ISOLATION, &flag]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("badvol", true, 0.0)).await;
    let cases: Vec<(&str, String, serde_json::Value)> = vec![
        ("etc", "/etc".into(), json!([host_vol("x", Path::new("/etc"), "RO")])),
        ("link", "to-etc".into(), json!([host_vol("x", &allowed.join("to-etc"), "RO")])),
        ("dots", "ok/../..".into(), json!([host_vol("x", &allowed.join("ok/../.."), "RO")])),
        ("prefix", "allowed-not".into(), json!([host_vol("x", &scratch.0.join("allowed-not"), "RO")])),
        // A bad volume after a good one: nothing of the good one is made either.
        (
            "mixed",
            "/etc".into(),
            json!([sandbox_vol("made", "made-by-first", "RW"), host_vol("y", Path::new("/etc"), "RO")]),
        ),
        // Container paths escaping the sandbox.
        ("up", "..".into(), json!([host_vol("../../escape", &allowed.join("ok"), "RW")])),
    ];
    for (id, needle, volumes) in cases {
        let seen = run_with(&mut fw, id, "echo ran; touch ran-marker", volumes).await;
        let last = seen.last().unwrap();
        assert_eq!(last.state, TaskState::Failed, "{id}: {last:?}");
        assert_eq!(last.reason, Some(Reason::ReasonContainerLaunchFailed), "{id}: {last:?}");
        let msg = last.message.as_deref().unwrap_or("");
        assert!(msg.contains(&needle), "{id}: {msg}");
        if id != "up" {
            assert!(msg.contains("--allowed-host-paths"), "{id}: {msg}");
        }
        let sb = sandbox_of(&c, &fw, last.agent_id.as_ref().unwrap(), id);
        assert!(!sb.join("ran-marker").exists(), "{id}: the task ran");
        assert!(!sb.join("made-by-first").exists(), "{id}: a volume was made before validation");
    }
    // A symlink in the sandbox cannot carry a volume out of it.
    let seen = run_with(&mut fw, "sblink", "true", json!([sandbox_vol("x", "stdout/../../../", "RW")])).await;
    assert_eq!(seen.last().unwrap().state, TaskState::Failed);
    // No mount is left on the host under the allowed paths or the agent's work dir.
    for d in [scratch.0.as_path(), c.dir.as_path()] {
        assert!(mounts_under(d).is_empty(), "a refused volume left a mount: {:?}", mounts_under(d));
    }
    assert!(!Path::new("/etc/ran-marker").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mounts_propagate_into_a_running_task() {
    if !root() {
        return;
    }
    use nix::mount::{mount, MsFlags};
    let scratch = Scratch::new();
    // A shared host mount: what the task's HOST_TO_CONTAINER volume follows.
    let src = scratch.0.join("shared");
    std::fs::create_dir_all(&src).unwrap();
    mount(Some("tmpfs"), &src, Some("tmpfs"), MsFlags::empty(), Some("size=1m")).unwrap();
    mount(None::<&str>, &src, None::<&str>, MsFlags::MS_SHARED, None::<&str>).unwrap();
    let flag = format!("--allowed-host-paths={}", scratch.0.display());
    let c = Cluster::start(1, &[], &[ISOLATION, &flag]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("prop", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    let cmd = "i=0; while [ $i -lt 300 ]; do [ -f vol/late/marker ] && { cat vol/late/marker; exit 0; }; sleep 0.1; i=$((i+1)); done; exit 1";
    let mut vol = host_vol("vol", &src, "RO");
    vol["source"]["host_path"]["mount_propagation"] = json!({"mode": "HOST_TO_CONTAINER"});
    let t = with_volumes(task_info("p", &offer.agent_id, CommandInfo::shell(cmd), 0.1, 64.0), json!([vol]));
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.unwrap();
    fw.until_state("p", TaskState::Running, T).await;
    // After the task started: a new mount under the source, on the host.
    let late = src.join("late");
    std::fs::create_dir(&late).unwrap();
    mount(Some("tmpfs"), &late, Some("tmpfs"), MsFlags::empty(), Some("size=1m")).unwrap();
    std::fs::write(late.join("marker"), "propagated\n").unwrap();
    let seen = until_terminal(&mut fw, "p", T).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskState::Finished, "{last:?}\n{}", c.logs());
    assert_eq!(sandbox_file(&c, &fw, &offer.agent_id, "p", "stdout"), "propagated\n");
}

/// A local directory of `docker save` tarballs (busybox) for `--docker-registry`.
fn local_registry(scratch: &Scratch) -> Option<String> {
    fx::fixtures_dir()?;
    let images = fx::images_dir();
    let dir = scratch.0.join("registry");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["busybox", "httpd", "multilayer"] {
        std::os::unix::fs::symlink(images.join(format!("docker-archive/{name}.tar")), dir.join(format!("{name}.tar")))
            .unwrap();
    }
    Some(format!("--docker-registry={}", dir.display()))
}

fn image_vol(container_path: &str, image: &str, mode: &str) -> serde_json::Value {
    json!({"container_path": container_path, "mode": mode,
           "image": {"type": "DOCKER", "docker": {"name": image}}})
}

/// Rootfses agent 0 still has provisioned (a container's own and its image volumes').
fn rootfses(c: &Cluster) -> Vec<String> {
    std::fs::read_dir(c.dir.join("agent0/provisioner/containers"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_volumes_are_read_only_roots_in_host_and_image_containers() {
    if !root() {
        return;
    }
    let scratch = Scratch::new();
    let Some(reg) = local_registry(&scratch) else { return };
    // The default isolation: filesystem/linux brings volume/image, as in Mesos.
    let c = Cluster::start(1, &[], &[&reg]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("imagevol", true, 0.0)).await;

    // A host-rootfs task with the httpd image at a sandbox path: readable, not writable.
    let cmd = r#"set -e
        grep -q "hello from the httpd fixture" site/www/index.html
        grep -q "hello from the httpd fixture" /mnt/mesos/sandbox/site/www/index.html
        if touch site/www/new 2>/dev/null; then echo writable; exit 1; fi
        echo ok"#;
    let seen = run_with(&mut fw, "host", cmd, json!([image_vol("site", "httpd", "RO")])).await;
    let last = seen.last().unwrap();
    let agent = last.agent_id.clone().unwrap();
    let err = std::fs::read_to_string(sandbox_of(&c, &fw, &agent, "host").join("stderr")).unwrap_or_default();
    assert_eq!(last.state, TaskState::Finished, "{err}\n{last:?}\n{}", c.logs());

    // An image task (busybox) with the multilayer image at an absolute path, its layers
    // applied (whiteouts included), beside its own root.
    let offer = one_offer(&mut fw).await;
    let cmd = r#"set -e
        [ "$(cat /opt/ml/etc/motd)" = layer3 ]
        [ ! -e /opt/ml/data/a ] && [ -f /opt/ml/data/c ]
        [ ! -e /www ]
        echo ok"#;
    let t = in_image(
        task_info("img", &offer.agent_id, CommandInfo::shell(cmd), 0.1, 64.0),
        json!([image_vol("/opt/ml", "multilayer", "RO")]),
    );
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.unwrap();
    let seen = until_terminal(&mut fw, "img", T).await;
    let last = seen.last().unwrap();
    let sb = sandbox_of(&c, &fw, &offer.agent_id, "img");
    let err = std::fs::read_to_string(sb.join("stderr")).unwrap_or_default();
    assert_eq!(last.state, TaskState::Finished, "{err}\n{last:?}\n{}", c.logs());

    // Bad input: RW, a missing image, an unknown image type. Nothing is left either way.
    for (id, vol, why) in [
        ("rw", image_vol("site", "httpd", "RW"), "read-only"),
        ("missing", image_vol("site", "no-such-image", "RO"), "no-such-image"),
        ("kind", json!({"container_path": "x", "mode": "RO", "image": {"type": "OCI"}}), "unknown image type"),
    ] {
        let seen = run_with(&mut fw, id, "echo ran", json!([vol])).await;
        let last = seen.last().unwrap();
        assert_eq!(last.state, TaskState::Failed, "{id}: {last:?}");
        assert_eq!(last.reason, Some(Reason::ReasonContainerLaunchFailed), "{id}: {last:?}");
        assert!(last.message.as_deref().unwrap_or("").contains(why), "{id}: {last:?}");
    }
    let left = wait_until(T, || async {
        let r = rootfses(&c);
        r.is_empty().then_some(())
    })
    .await;
    assert!(left.is_some(), "rootfses left: {:?}", rootfses(&c));
}

fn in_image(mut t: TaskInfo, volumes: serde_json::Value) -> TaskInfo {
    t.container = Some(json!({"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": "busybox"}}},
                               "volumes": volumes}));
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_in_an_image_container_and_symlink_escapes_in_the_image() {
    if !root() {
        return;
    }
    let scratch = Scratch::new();
    let Some(reg) = local_registry(&scratch) else { return };
    let allowed = scratch.0.join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::write(allowed.join("f"), "host-file\n").unwrap();
    let flag = format!("--allowed-host-paths={}", allowed.display());
    let c = Cluster::start(1, &[], &[ISOLATION, &flag, &reg]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("imgvol", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    let cmd = r#"set -e
        [ "$(cat /opt/data/f)" = host-file ]
        echo in-image > /opt/data/g
        echo sb > $MESOS_SANDBOX/work/h
        [ -f /mnt/mesos/sandbox/work/h ]
        echo ok"#;
    let t = in_image(
        task_info("img", &offer.agent_id, CommandInfo::shell(cmd), 0.1, 64.0),
        json!([host_vol("/opt/data", &allowed, "RW"), sandbox_vol("work", "work", "RW")]),
    );
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.unwrap();
    let seen = until_terminal(&mut fw, "img", T).await;
    let last = seen.last().unwrap();
    let sb = sandbox_of(&c, &fw, &offer.agent_id, "img");
    let out = std::fs::read_to_string(sb.join("stdout")).unwrap_or_default()
        + &std::fs::read_to_string(sb.join("stderr")).unwrap_or_default();
    assert_eq!(last.state, TaskState::Finished, "{out}\n{last:?}\n{}", c.logs());
    assert_eq!(std::fs::read_to_string(allowed.join("g")).unwrap(), "in-image\n");
    assert_eq!(std::fs::read_to_string(sb.join("work/h")).unwrap(), "sb\n");
    // /bin/sh is a symlink in the image: a volume through it is refused.
    let offer = one_offer(&mut fw).await;
    let t = in_image(
        task_info("esc", &offer.agent_id, CommandInfo::shell("echo ran"), 0.1, 64.0),
        json!([host_vol("/bin/sh/x", &allowed, "RW")]),
    );
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.unwrap();
    let seen = until_terminal(&mut fw, "esc", T).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskState::Failed, "{last:?}");
    assert_eq!(last.reason, Some(Reason::ReasonContainerLaunchFailed));
    assert!(last.message.as_deref().unwrap_or("").contains("symlink"), "{last:?}");
    assert!(!allowed.join("x").exists());
}
