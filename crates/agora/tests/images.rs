//! Tasks in container images, end to end: real `agora master` / `agora agent` processes, the
//! registry fixture (`shared/fixtures/registry.sh`, each test its own state dir and port,
//! stopped by a Drop guard), images built by `make-images.sh`, and a counting proxy in front
//! of the registry where blob downloads are counted or the registry is cut mid-pull.
//! Runs as root (the linux launcher with filesystem/linux).
#![allow(clippy::unwrap_used)] // test helpers may panic

mod common;
#[path = "../../image/tests/common/fixture.rs"]
#[allow(dead_code, clippy::all)]
mod fx;

use agora_api::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(90);

fn ready() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP: image tests need root");
        return false;
    }
    fx::fixtures_dir().is_some()
}

fn image_container(kind: &str, name: &str) -> serde_json::Value {
    match kind {
        "APPC" => serde_json::json!({"type": "MESOS", "mesos": {"image": {"type": "APPC", "appc": {"name": name}}}}),
        _ => serde_json::json!({"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": name}}}}),
    }
}

fn image_task(id: &str, offer: &Offer, image: &str, command: CommandInfo) -> TaskInfo {
    let mut t = task_info(id, &offer.agent_id, command, 0.1, 64.0);
    t.container = Some(image_container("DOCKER", image));
    t
}

/// The image's own Entrypoint/Cmd.
fn no_command() -> CommandInfo {
    CommandInfo { shell: false, value: None, arguments: vec![], environment: None, user: None, uris: vec![] }
}

/// Waits until agent 0 has no provisioned rootfs left and no mount of its provisioner.
async fn assert_no_rootfs_left(c: &Cluster) {
    let prov = c.dir.join("agent0/provisioner");
    let prov_s = prov.display().to_string();
    let clean = wait_until(Duration::from_secs(20), || {
        let prov = prov.clone();
        let prov_s = prov_s.clone();
        async move {
            let dirs = std::fs::read_dir(prov.join("containers")).map(|d| d.count()).unwrap_or(0);
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            (dirs == 0 && !mounts.contains(&prov_s)).then_some(())
        }
    })
    .await;
    assert!(clean.is_some(), "a rootfs or its mount is left under {prov_s}:\n{}", c.logs());
}

/// A registry fixture with the images pushed, and the cluster's agent pointed at it
/// (through a counting proxy when `proxy`).
struct Setup {
    reg: fx::Registry,
    proxy: Option<fx::CountingProxy>,
    images: PathBuf,
}

impl Setup {
    async fn new(proxy: bool) -> Setup {
        Setup::with_mode(proxy, "").await
    }

    /// `mode`: "" (anonymous), "--auth" (basic, test/test) or "--token" (bearer tokens).
    async fn with_mode(proxy: bool, mode: &str) -> Setup {
        let images = fx::images_dir();
        let reg = fx::Registry::start(mode);
        let proxy = if proxy { Some(fx::CountingProxy::start(&reg.addr).await) } else { None };
        Setup { reg, proxy, images }
    }

    /// The registry address the agent uses.
    fn addr(&self) -> String {
        match &self.proxy {
            Some(p) => p.addr.to_string(),
            None => self.reg.addr.clone(),
        }
    }

    fn agent_flag(&self) -> String {
        format!("--docker-registry=http://{}", self.addr())
    }
}

/// Runs `agora <args>`, returning (exit code, stdout, stderr).
fn agora(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).env("AGORA_LOG", "warn").stdin(Stdio::null()).output().expect("run agora");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A shell check of the multilayer image's tree, from `expected/multilayer.txt`.
fn multilayer_script(images: &Path) -> String {
    let text = std::fs::read_to_string(images.join("expected/multilayer.txt")).unwrap();
    let mut s = String::from("fail=0\n");
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some(p) = line.strip_prefix('!') {
            s.push_str(&format!("[ -e {p} ] || [ -L {p} ] && {{ echo \"FAIL {p} exists\"; fail=1; }}\n"));
            continue;
        }
        let mut parts = line.split_whitespace();
        let (path, _kind) = (parts.next().unwrap(), parts.next().unwrap());
        let content: Vec<&str> = parts.collect();
        let content = content.join(" ");
        s.push_str(&format!("[ -f {path} ] && [ ! -L {path} ] || {{ echo \"FAIL {path} not a file\"; fail=1; }}\n"));
        if !content.starts_with('(') {
            s.push_str(&format!(
                "[ \"$(cat {path})\" = '{content}' ] || {{ echo \"FAIL {path} content\"; fail=1; }}\n"
            ));
        }
    }
    s.push_str("ls -Ra /data /etc | grep -q '\\.wh\\.' && { echo 'FAIL whiteout left'; fail=1; }\n");
    s.push_str("[ $fail = 0 ] && echo multilayer-ok\nexit $fail\n");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_image_runs_a_task_in_its_rootfs() {
    if !ready() {
        return;
    }
    let st = Setup::new(false).await;
    let c = Cluster::start(1, &[], &[&st.agent_flag()]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("images", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    let rootfs_check = r#"
        fail=0
        [ "$(ls / | tr '\n' ' ')" = "bin dev etc home mnt proc root sys tmp var " ] || { echo "FAIL ls / = $(ls / | tr '\n' ' ')"; fail=1; }
        [ ! -e /usr ] && [ ! -e /work ] || { echo "FAIL host files visible"; fail=1; }
        [ "$MESOS_SANDBOX" = /mnt/mesos/sandbox ] && [ -f /mnt/mesos/sandbox/stdout ] || { echo "FAIL sandbox"; fail=1; }
        [ "$(cat /etc/hostname)" = "$(hostname)" ] || { echo "FAIL /etc/hostname"; fail=1; }
        grep -q "$(hostname)" /etc/hosts && grep -q localhost /etc/hosts || { echo "FAIL /etc/hosts"; fail=1; }
        [ -f /etc/resolv.conf ] || { echo "FAIL resolv.conf"; fail=1; }
        for d in null zero full random urandom tty; do [ -c /dev/$d ] || { echo "FAIL /dev/$d"; fail=1; }; done
        [ -d /dev/pts ] && [ -d /dev/shm ] || { echo "FAIL /dev/pts or /dev/shm"; fail=1; }
        echo x > /dev/null && head -c 4 /dev/urandom | wc -c >/dev/null || { echo "FAIL devices unusable"; fail=1; }
        ( touch /sys/agora-x ) 2>/dev/null && { echo "FAIL /sys writable"; fail=1; }
        [ -r /proc/self/status ] || { echo "FAIL /proc"; fail=1; }
        ls /proc/1/root/ >/dev/null 2>&1 && { echo "FAIL the executor's root is reachable"; fail=1; }
        echo written > /tmp/in-image && [ "$(cat /tmp/in-image)" = written ] || { echo "FAIL rootfs not writable"; fail=1; }
        [ "$PATH" = /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin ] || { echo "FAIL PATH=$PATH"; fail=1; }
        [ $fail = 0 ] && echo rootfs-ok
        exit $fail
    "#;
    let tasks = vec![
        image_task("bb", &offer, "busybox", CommandInfo::shell(rootfs_check)),
        image_task("zstd", &offer, "busybox-zstd", CommandInfo::shell("echo zstd-ok")),
        image_task("ml", &offer, "multilayer", CommandInfo::shell(multilayer_script(&st.images))),
        image_task("arch", &offer, "multiarch", CommandInfo::shell("echo arch-ok")),
        image_task("httpd", &offer, "httpd", no_command()),
        image_task("missing", &offer, "no-such-image", CommandInfo::shell("true")),
    ];
    fw.s.launch(vec![offer.id.clone()], tasks, 0.0).await.expect("launch");
    let want = [("bb", "rootfs-ok"), ("zstd", "zstd-ok"), ("ml", "multilayer-ok"), ("arch", "arch-ok")];
    for (id, marker) in want {
        let seen = until_terminal(&mut fw, id, T).await;
        let out = sandbox_file(&c, &fw, &offer.agent_id, id, "stdout");
        let err = sandbox_file(&c, &fw, &offer.agent_id, id, "stderr");
        assert_eq!(
            seen.last().map(|s| s.state),
            Some(TaskState::Finished),
            "{id}: {:?}\nstdout:\n{out}\nstderr:\n{err}\n{}",
            seen.last(),
            c.logs()
        );
        assert!(out.contains(marker), "{id}: stdout:\n{out}");
    }
    // A nonexistent image: TASK_FAILED with a clear message, no executor ever started.
    let seen = until_terminal(&mut fw, "missing", T).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskState::Failed);
    assert_eq!(last.reason, Some(Reason::ReasonContainerLaunchFailed));
    let msg = last.message.clone().unwrap_or_default();
    assert!(msg.contains("no-such-image") && msg.contains("not found"), "{msg}");
    // httpd runs the image's Cmd and serves on 8080 in the host's network namespace.
    fw.until_state("httpd", TaskState::Running, T).await;
    let body = wait_until(Duration::from_secs(20), || async {
        let r = tokio::time::timeout(Duration::from_secs(2), async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect("127.0.0.1:8080").await.ok()?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.ok()?;
            Some(String::from_utf8_lossy(&buf).into_owned())
        })
        .await
        .ok()
        .flatten();
        r.filter(|b| b.contains("hello from the httpd fixture"))
    })
    .await;
    assert!(body.is_some(), "httpd did not serve:\n{}", c.logs());
    fw.s.kill(TaskId::new("httpd"), Some(offer.agent_id.clone())).await.expect("kill");
    fw.until_state("httpd", TaskState::Killed, T).await;
    // Every rootfs and its mount go with the containers.
    assert_no_rootfs_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_backend_builds_the_multilayer_tree() {
    if !ready() {
        return;
    }
    let st = Setup::new(false).await;
    let c = Cluster::start(1, &[], &[&st.agent_flag(), "--image-provisioner-backend=copy"]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("copy", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    let t = image_task("ml", &offer, "multilayer:v2s2", CommandInfo::shell(multilayer_script(&st.images)));
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.expect("launch");
    let seen = until_terminal(&mut fw, "ml", T).await;
    let out = sandbox_file(&c, &fw, &offer.agent_id, "ml", "stdout");
    assert_eq!(seen.last().map(|s| s.state), Some(TaskState::Finished), "stdout:\n{out}\n{}", c.logs());
    assert!(out.contains("multilayer-ok"), "{out}");
    let log = std::fs::read_to_string(c.agents[0].log.clone()).unwrap();
    let opened = log.lines().find(|l| l.contains("image store opened")).unwrap_or("");
    assert!(opened.contains("copy"), "{opened}");
    assert_no_rootfs_left(&c).await;
}

/// Builds an OCI layout from the busybox fixture with User, WorkingDir and Env set.
fn custom_layout(images: &Path, out: &Path) {
    let sha = |p: &Path| -> String {
        let o = Command::new("sha256sum").arg(p).output().expect("sha256sum");
        String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string()
    };
    let src = images.join("oci/busybox");
    let _ = std::fs::remove_dir_all(out);
    let st = Command::new("cp").arg("-a").arg(&src).arg(out).status().unwrap();
    assert!(st.success());
    let blobs = out.join("blobs/sha256");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&mdigest)).unwrap()).unwrap();
    let cdigest = manifest["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(blobs.join(&cdigest)).unwrap()).unwrap();
    config["config"]["User"] = "nobody".into();
    config["config"]["WorkingDir"] = "/home".into();
    config["config"]["Env"] = serde_json::json!(["PATH=/bin", "FOO=from-image", "BAR=image"]);
    let cbytes = serde_json::to_vec(&config).unwrap();
    let tmp = out.join("tmp-config");
    std::fs::write(&tmp, &cbytes).unwrap();
    let c2 = sha(&tmp);
    std::fs::rename(&tmp, blobs.join(&c2)).unwrap();
    manifest["config"]["digest"] = format!("sha256:{c2}").into();
    manifest["config"]["size"] = cbytes.len().into();
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let tmp = out.join("tmp-manifest");
    std::fs::write(&tmp, &mbytes).unwrap();
    let m2 = sha(&tmp);
    std::fs::rename(&tmp, blobs.join(&m2)).unwrap();
    let mut index = index;
    index["manifests"][0]["digest"] = format!("sha256:{m2}").into();
    index["manifests"][0]["size"] = mbytes.len().into();
    std::fs::write(out.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// An ACI made of the busybox fixture's layer.
fn make_aci(images: &Path, out: &Path) -> PathBuf {
    let dir = out.join("aci");
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    let src = images.join("oci/busybox");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    let blobs = src.join("blobs/sha256");
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blobs.join(mdigest)).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let st = Command::new("tar").arg("-xzf").arg(blobs.join(layer)).arg("-C").arg(dir.join("rootfs")).status().unwrap();
    assert!(st.success());
    let m = serde_json::json!({"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/busybox",
        "labels": [{"name": "version", "value": "1.0"}, {"name": "os", "value": "linux"}, {"name": "arch", "value": "amd64"}],
        "app": {"exec": ["/bin/sh", "-c", "echo appc-entry"], "user": "0", "group": "0",
                "environment": [{"name": "APPC_VAR", "value": "set"}]}});
    std::fs::write(dir.join("manifest"), serde_json::to_vec(&m).unwrap()).unwrap();
    let aci = out.join("busybox.aci");
    let st =
        Command::new("tar").arg("-czf").arg(&aci).arg("-C").arg(&dir).arg("manifest").arg("rootfs").status().unwrap();
    assert!(st.success());
    aci
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_user_env_workdir_cli_and_appc() {
    if !ready() {
        return;
    }
    let st = Setup::new(false).await;
    let c = Cluster::start(1, &[], &[&st.agent_flag()]).await;
    let agent = c.agents[0].addr.clone();
    let work = c.dir.join("custom");
    std::fs::create_dir_all(&work).unwrap();

    // agora image pull / ls / inspect / rm against the agent.
    let (code, out, err) = agora(&["image", "pull", "--agent", &agent, "busybox"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("sha256:") && out.contains("/busybox:latest"), "{out}");
    let (code, out, _) = agora(&["image", "ls", "--agent", &agent]);
    assert_eq!(code, 0);
    assert!(out.contains("REFERENCE") && out.contains("/busybox:latest"), "{out}");
    let (code, out, _) = agora(&["image", "inspect", "--agent", &agent, "busybox"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["config"]["cmd"], serde_json::json!(["sh"]));
    let (code, out, _) = agora(&["image", "rm", "--agent", &agent, "busybox"]);
    assert_eq!((code, out.trim()), (0, "removed busybox"));
    let (code, _, _) = agora(&["image", "inspect", "--agent", &agent, "busybox"]);
    assert_eq!(code, 1);
    let (code, _, err) = agora(&["image", "pull", "--agent", &agent, "nope-not-there"]);
    assert!(code != 0 && err.contains("not found"), "{err}");

    // `agora run --image busybox -- echo hi` prints hi.
    let (code, out, err) = agora(&["run", "-q", "--master", &c.master.addr, "--image", "busybox", "--", "echo", "hi"]);
    assert_eq!((code, out.as_str()), (0, "hi\n"), "{err}\n{}", c.logs());

    // An image with User, WorkingDir and Env, imported from an OCI layout.
    custom_layout(&st.images, &work.join("layout"));
    let layout = work.join("layout").display().to_string();
    let (code, out, err) = agora(&["image", "pull", "--agent", &agent, "--oci-layout", &layout, "custom/user:1"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut fw = Fw::subscribe(&c.master.addr, info("custom", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    let mut cmd = CommandInfo::shell("id -u; id -g; pwd; echo \"$FOO $BAR\"; echo $PATH; touch $MESOS_SANDBOX/mine");
    cmd.environment = Some(Environment {
        variables: vec![EnvVariable { name: "BAR".into(), kind: None, value: Some("task".into()), secret: None }],
    });
    // The framework's user is root, but the image's User comes first.
    let t = image_task("user", &offer, "custom/user:1", cmd);
    // An appc image (ACI) imported through the CLI, with the ACI's exec as the command.
    let aci = make_aci(&st.images, &work);
    let (code, out, err) = agora(&["image", "pull", "--agent", &agent, "--aci", &aci.display().to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let mut appc = task_info("appc", &offer.agent_id, no_command(), 0.1, 64.0);
    appc.container = Some(image_container("APPC", "example.com/busybox"));
    fw.s.launch(vec![offer.id.clone()], vec![t, appc], 0.0).await.expect("launch");
    let seen = until_terminal(&mut fw, "user", T).await;
    let out = sandbox_file(&c, &fw, &offer.agent_id, "user", "stdout");
    let err = sandbox_file(&c, &fw, &offer.agent_id, "user", "stderr");
    assert_eq!(seen.last().map(|s| s.state), Some(TaskState::Finished), "{out}{err}\n{}", c.logs());
    assert_eq!(out, "65534\n65534\n/home\nfrom-image task\n/bin\n", "stderr: {err}");
    let seen = until_terminal(&mut fw, "appc", T).await;
    let out = sandbox_file(&c, &fw, &offer.agent_id, "appc", "stdout");
    assert_eq!(seen.last().map(|s| s.state), Some(TaskState::Finished), "{out}\n{}", c.logs());
    assert_eq!(out, "appc-entry\n");
    assert_no_rootfs_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_tasks_share_one_pull_and_the_store_survives_a_restart() {
    if !ready() {
        return;
    }
    let st = Setup::new(true).await;
    let proxy = st.proxy.as_ref().unwrap();
    let mut c = Cluster::start(1, &[], &[&st.agent_flag()]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("ten", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    let ids: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let tasks =
        ids.iter().map(|id| image_task(id, &offer, "multilayer", CommandInfo::shell("cat /etc/motd"))).collect();
    fw.s.launch(vec![offer.id.clone()], tasks, 0.0).await.expect("launch");
    for id in &ids {
        let seen = until_terminal(&mut fw, id, T).await;
        assert_eq!(seen.last().map(|s| s.state), Some(TaskState::Finished), "{id}: {:?}\n{}", seen.last(), c.logs());
        assert_eq!(sandbox_file(&c, &fw, &offer.agent_id, id, "stdout"), "layer3\n");
    }
    let blobs = proxy.blob_counts();
    assert_eq!(blobs.len(), 4, "config + 3 layers: {blobs:?}");
    assert!(blobs.values().all(|n| *n == 1), "each blob downloaded once: {blobs:?}");
    assert_no_rootfs_left(&c).await;

    // Restart the agent: the store is still there, nothing is downloaded again.
    c.agents[0].signal(nix::sys::signal::Signal::SIGTERM);
    let _ = c.agents[0].child.wait();
    proxy.reset();
    c.restart_agent(0, &[]).expect("restart");
    // Offers made before the agent re-registered may be rescinded: launch until one holds.
    let seen = loop {
        let offer = one_offer(&mut fw).await;
        let t = image_task("again", &offer, "multilayer", CommandInfo::shell("cat /data/c"));
        fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.expect("launch");
        let seen = until_terminal(&mut fw, "again", T).await;
        if seen.last().and_then(|s| s.reason) != Some(Reason::ReasonInvalidOffers) {
            break seen;
        }
    };
    assert_eq!(seen.last().map(|s| s.state), Some(TaskState::Finished), "{:?}\n{}", seen.last(), c.logs());
    assert_eq!(proxy.blob_counts(), Default::default(), "no blob fetched after the restart");
    assert_no_rootfs_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_cut_mid_pull_fails_the_task_and_a_retry_succeeds() {
    if !ready() {
        return;
    }
    let st = Setup::new(true).await;
    let proxy = st.proxy.as_ref().unwrap();
    let c = Cluster::start(1, &[], &[&st.agent_flag()]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("cut", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    // Slow enough that the pull is still going after the agent's first progress report.
    proxy.throttle.store(60_000, Ordering::SeqCst);
    let t = image_task("cut", &offer, "httpd", CommandInfo::shell("echo never"));
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.expect("launch");
    let started = Instant::now();
    let progress = fw
        .next_matching(T, |e| {
            e.update.as_ref().is_some_and(|u| {
                u.status.state == TaskState::Starting
                    && u.status.message.as_deref().unwrap_or("").starts_with("Pulling image 'httpd'")
            })
        })
        .await;
    assert!(progress.is_some(), "no TASK_STARTING with pull progress:\n{}", c.logs());
    proxy.up.store(false, Ordering::SeqCst);
    let seen = until_terminal(&mut fw, "cut", T).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskState::Failed, "{:?}", last);
    assert_eq!(last.reason, Some(Reason::ReasonContainerLaunchFailed));
    let msg = last.message.clone().unwrap_or_default();
    assert!(msg.starts_with("Failed to launch container: cannot pull image 'httpd'"), "{msg}");
    assert!(started.elapsed() < T, "the failure took {:?}", started.elapsed());
    assert_no_rootfs_left(&c).await;
    // Nothing half-written looks complete: the retry pulls and runs.
    proxy.throttle.store(0, Ordering::SeqCst);
    proxy.up.store(true, Ordering::SeqCst);
    let offer = one_offer(&mut fw).await;
    let t = image_task("retry", &offer, "httpd", CommandInfo::shell("cat /www/index.html"));
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.expect("launch");
    let seen = until_terminal(&mut fw, "retry", T).await;
    assert_eq!(seen.last().map(|s| s.state), Some(TaskState::Finished), "{:?}\n{}", seen.last(), c.logs());
    assert_eq!(sandbox_file(&c, &fw, &offer.agent_id, "retry", "stdout"), "hello from the httpd fixture\n");
    assert_no_rootfs_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_killed_while_its_image_is_pulled_leaves_nothing() {
    if !ready() {
        return;
    }
    let st = Setup::new(true).await;
    let proxy = st.proxy.as_ref().unwrap();
    let c = Cluster::start(1, &[], &[&st.agent_flag()]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("killpull", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    proxy.throttle.store(200_000, Ordering::SeqCst);
    let t = image_task("k", &offer, "busybox", CommandInfo::shell("echo never"));
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.expect("launch");
    tokio::time::sleep(Duration::from_millis(500)).await;
    fw.s.kill(TaskId::new("k"), Some(offer.agent_id.clone())).await.expect("kill");
    let seen = until_terminal(&mut fw, "k", T).await;
    assert_eq!(seen.last().map(|s| s.state), Some(TaskState::Killed), "{:?}", seen.last());
    // The pull finishes on its own; its rootfs is destroyed then.
    let log = c.agents[0].log.clone();
    let done = wait_until(T, || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("the executor ended while its image was provisioned")
                .then_some(())
        }
    })
    .await;
    assert!(done.is_some(), "{}", c.logs());
    assert_no_rootfs_left(&c).await;
    // PRUNE_IMAGES removes what no container uses.
    let url = format!("http://{}/api/v1", c.agents[0].addr);
    let r = agora_http::Client::new()
        .post(&url, &[], br#"{"type":"PRUNE_IMAGES"}"#.to_vec(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(r.status.is_success(), "{:?}", r);
    let (_, out, _) = agora(&["image", "ls", "--json", "--agent", &c.agents[0].addr]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), serde_json::json!([]), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_and_token_auth_with_docker_config() {
    if !ready() {
        return;
    }
    for mode in ["--auth", "--token"] {
        let st = Setup::with_mode(false, mode).await;
        let dir = std::env::temp_dir().join(format!("agora-docker-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("config.json");
        // base64("test:test")
        let auths = serde_json::json!({"auths": {st.addr(): {"auth": "dGVzdDp0ZXN0"}}});
        std::fs::write(&cfg, serde_json::to_vec(&auths).unwrap()).unwrap();
        let cfg_flag = format!("--docker-config={}", cfg.display());
        let c = Cluster::start(1, &[], &[&st.agent_flag(), &cfg_flag]).await;
        let mut fw = Fw::subscribe(&c.master.addr, info("auth", true, 0.0)).await;
        let offer = one_offer(&mut fw).await;
        let t = image_task("a", &offer, "busybox:v2s2", CommandInfo::shell("echo auth-ok"));
        fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.expect("launch");
        let seen = until_terminal(&mut fw, "a", T).await;
        assert_eq!(seen.last().map(|s| s.state), Some(TaskState::Finished), "{mode}: {:?}\n{}", seen.last(), c.logs());
        assert_eq!(sandbox_file(&c, &fw, &offer.agent_id, "a", "stdout"), "auth-ok\n");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootfses_survive_an_agent_crash_and_orphans_are_removed() {
    if !ready() {
        return;
    }
    let st = Setup::new(false).await;
    let mut c = Cluster::start(1, &[], &[&st.agent_flag()]).await;
    let mut kept_info = info("kept", true, 3600.0);
    kept_info.checkpoint = true;
    let mut kept = Fw::subscribe(&c.master.addr, kept_info).await;
    let mut lost = Fw::subscribe(&c.master.addr, info("lost", true, 0.0)).await;
    let o1 = one_offer(&mut kept).await;
    let t = image_task("k", &o1, "busybox", CommandInfo::shell("sleep 1000"));
    kept.s.launch(vec![o1.id.clone()], vec![t], 0.0).await.expect("launch");
    kept.until_state("k", TaskState::Running, T).await;
    let containers = c.dir.join("agent0/provisioner/containers");
    let k_cid = std::fs::read_dir(&containers).unwrap().next().unwrap().unwrap().file_name();
    let k_cid = k_cid.to_string_lossy().into_owned();
    let o2 = one_offer(&mut lost).await;
    let t = image_task("l", &o2, "busybox", CommandInfo::shell("exec sleep 1001"));
    lost.s.launch(vec![o2.id.clone()], vec![t], 0.0).await.expect("launch");
    lost.until_state("l", TaskState::Running, T).await;
    assert_eq!(std::fs::read_dir(&containers).unwrap().count(), 2);
    // The later container's mount namespace holds no copy of the earlier one's rootfs.
    let l_pid = wait_until(Duration::from_secs(10), || async {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            (cmd == b"sleep\x001001\x00").then(|| e.path())
        })
    })
    .await
    .expect("the task's process");
    // Seen from its executor (the task itself is chrooted and sees only its rootfs).
    let status = std::fs::read_to_string(l_pid.join("status")).unwrap();
    let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim().to_string();
    let mounts = std::fs::read_to_string(format!("/proc/{ppid}/mountinfo")).unwrap();
    assert!(mounts.contains("/mnt/mesos/rootfs"), "{mounts}");
    assert!(!mounts.contains(&k_cid), "container l holds container k's rootfs:\n{mounts}");
    c.crash_agent(0);
    c.restart_agent(0, &[]).expect("restart");
    // The checkpointed task lives on in its rootfs; the other one's container and rootfs go.
    let one = wait_until(Duration::from_secs(30), || {
        let containers = containers.clone();
        async move { (std::fs::read_dir(&containers).map(|d| d.count()).unwrap_or(0) == 1).then_some(()) }
    })
    .await;
    assert!(one.is_some(), "{}", c.logs());
    wait_agent_registered(&c, 0, T).await;
    // The executor may not have re-subscribed yet: the agent keeps the kill until it has.
    kept.s.kill(TaskId::new("k"), Some(o1.agent_id.clone())).await.expect("kill");
    kept.until_state("k", TaskState::Killed, T).await;
    assert_no_rootfs_left(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_directory_of_docker_save_tarballs_as_the_registry() {
    if !ready() {
        return;
    }
    let images = fx::images_dir();
    let dir = std::env::temp_dir().join(format!("agora-local-registry-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    // Mesos's naming: `<repo>:<tag>.tar`, or `<repo>.tar` for latest.
    std::os::unix::fs::symlink(images.join("docker-archive/busybox.tar"), dir.join("busybox.tar")).unwrap();
    std::os::unix::fs::symlink(images.join("docker-archive/httpd.tar"), dir.join("httpd:latest.tar")).unwrap();
    let flag = format!("--docker-registry={}", dir.display());
    let c = Cluster::start(1, &[], &[&flag]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("local", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    let tasks = vec![
        image_task("bb", &offer, "busybox", CommandInfo::shell("echo local-ok")),
        image_task("web", &offer, "httpd", CommandInfo::shell("cat /www/index.html")),
        image_task("none", &offer, "multilayer", CommandInfo::shell("true")),
    ];
    fw.s.launch(vec![offer.id.clone()], tasks, 0.0).await.expect("launch");
    for (id, want) in [("bb", "local-ok\n"), ("web", "hello from the httpd fixture\n")] {
        let seen = until_terminal(&mut fw, id, T).await;
        assert_eq!(seen.last().map(|s| s.state), Some(TaskState::Finished), "{id}: {:?}\n{}", seen.last(), c.logs());
        assert_eq!(sandbox_file(&c, &fw, &offer.agent_id, id, "stdout"), want);
    }
    let seen = until_terminal(&mut fw, "none", T).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskState::Failed);
    assert!(last.message.as_deref().unwrap_or("").contains("no tarball in local registry"), "{last:?}");
    assert_no_rootfs_left(&c).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// `agora image ls` against an agent: the references it lists.
fn listed(agent: &str) -> String {
    let (code, out, err) = agora(&["image", "ls", "--agent", agent]);
    assert_eq!(code, 0, "{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_gc_thresholds_collect_only_unused_and_unexcluded_images() {
    if !ready() {
        return;
    }
    let st = Setup::new(false).await;
    // Any byte over the threshold: every image no container uses and not excluded goes.
    let flags = [st.agent_flag(), "--image-gc-max-store-bytes=1".into(), "--image-gc-excluded=busybox".into()];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let c = Cluster::start(1, &[], &flags).await;
    let agent = c.agents[0].addr.clone();
    let (code, out, err) = agora(&["image", "pull", "--agent", &agent, "busybox"]);
    assert_eq!(code, 0, "{out}{err}");

    let mut fw = Fw::subscribe(&c.master.addr, info("gc", true, 0.0)).await;
    let offer = one_offer(&mut fw).await;
    let serving = image_task("serving", &offer, "httpd", CommandInfo::shell("sleep 600"));
    let done = image_task("done", &offer, "multilayer", CommandInfo::shell("cat /etc/motd"));
    fw.s.launch(vec![offer.id.clone()], vec![serving, done], 0.0).await.expect("launch");
    fw.until_state("serving", TaskState::Running, T).await;
    let seen = until_terminal(&mut fw, "done", T).await;
    assert_eq!(seen.last().map(|s| s.state), Some(TaskState::Finished), "{:?}\n{}", seen.last(), c.logs());

    // The finished task's image is collected; the one in use and the excluded one stay.
    let gone = wait_until(T, || async {
        let out = listed(&agent);
        (!out.contains("/multilayer:")).then_some(out)
    })
    .await
    .unwrap_or_else(|| panic!("multilayer was not collected:\n{}\n{}", listed(&agent), c.logs()));
    assert!(gone.contains("/httpd:latest"), "an image in use was collected:\n{gone}");
    assert!(gone.contains("/busybox:latest"), "an excluded image was collected:\n{gone}");

    // Once its task ends, the other image goes too.
    fw.s.kill(TaskId::new("serving"), Some(offer.agent_id.clone())).await.expect("kill");
    until_terminal(&mut fw, "serving", T).await;
    let left = wait_until(T, || async {
        let out = listed(&agent);
        (!out.contains("/httpd:")).then_some(out)
    })
    .await
    .unwrap_or_else(|| panic!("httpd was not collected after its task ended:\n{}", listed(&agent)));
    assert!(left.contains("/busybox:latest"), "{left}");
    assert_no_rootfs_left(&c).await;
}

/// A custom executor with an image runs inside it (pivoted into the rootfs, the host's root
/// gone), as in Mesos. The executor is a shell that checks where it runs, then becomes
/// Agora's own executor, brought in from the host with read-only host-path volumes (its
/// binary and the C libraries it links); it subscribes from inside the image and, as the
/// task has no command (a custom executor's task carries none), fails it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_executor_runs_inside_its_image() {
    if !ready() {
        return;
    }
    let st = Setup::new(false).await;
    let bin = Path::new(BIN).canonicalize().unwrap();
    let bin_dir = bin.parent().unwrap().to_path_buf();
    let libs = ["/lib/x86_64-linux-gnu", "/lib64"];
    if libs.iter().any(|l| !Path::new(l).exists()) {
        eprintln!("SKIP: not a Debian x86_64 layout");
        return;
    }
    let allowed = format!("--allowed-host-paths={},{}", libs.join(","), bin_dir.display());
    let c = Cluster::start(1, &[], &[&st.agent_flag(), &allowed]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("custom-image", true, 0.0)).await;
    let vol = |container_path: &str, host: &str| {
        serde_json::json!({"container_path": container_path, "mode": "RO",
                           "source": {"type": "HOST_PATH", "host_path": {"path": host}}})
    };
    let executor = |id: &str, image: &str| ExecutorInfo {
        kind: None,
        executor_id: ExecutorId::new(id),
        framework_id: None,
        command: Some(CommandInfo::shell(format!(
            "{CHECKS}; exec /opt/agora/{} executor",
            bin.file_name().unwrap().to_string_lossy()
        ))),
        container: Some(serde_json::json!({
            "type": "MESOS",
            "mesos": {"image": {"type": "DOCKER", "docker": {"name": image}}},
            "volumes": [vol("/lib/x86_64-linux-gnu", libs[0]), vol("/lib64", libs[1]),
                        vol("/opt/agora", &bin_dir.display().to_string())],
        })),
        resources: vec![Resource::scalar("cpus", 0.1), Resource::scalar("mem", 32.0)],
        name: Some("in-image executor".into()),
        source: None,
        data: None,
        discovery: None,
        shutdown_grace_period: None,
        labels: None,
    };
    const CHECKS: &str = r#"fail=0
        [ ! -e /usr ] && [ ! -e /work ] || { echo "FAIL host files visible"; fail=1; }
        [ -x /proc/1/root/bin/busybox ] && [ ! -e /proc/1/root/usr ] || { echo "FAIL the executor is not in the image"; fail=1; }
        grep -q '^nobody:' /etc/passwd || { echo "FAIL not the image's /etc/passwd"; fail=1; }
        [ "$(pwd)" = /mnt/mesos/sandbox ] && [ "$MESOS_SANDBOX" = /mnt/mesos/sandbox ] || { echo "FAIL sandbox $(pwd)"; fail=1; }
        ( touch /opt/agora/x ) 2>/dev/null && { echo "FAIL volume writable"; fail=1; }
        grep -q ' / / ' /proc/self/mountinfo || { echo "FAIL no root mount"; fail=1; }
        [ $fail = 0 ] && echo custom-ok"#;
    let offer = one_offer(&mut fw).await;
    let mut t = task_info("in-image", &offer.agent_id, CommandInfo::shell("unused"), 0.1, 32.0);
    t.command = None;
    t.executor = Some(executor("custom-exec", "busybox"));
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.unwrap();
    let seen = until_terminal(&mut fw, "in-image", T).await;
    let last = seen.last().unwrap();
    let sb = c
        .dir
        .join("agent0/slaves")
        .join(&offer.agent_id.value)
        .join("frameworks")
        .join(&fw.s.framework_id.value)
        .join("executors/custom-exec/runs/latest");
    let out = std::fs::read_to_string(sb.join("stdout")).unwrap_or_default()
        + &std::fs::read_to_string(sb.join("stderr")).unwrap_or_default();
    assert!(out.contains("custom-ok"), "{out}\n{last:?}\n{}", c.logs());
    assert_eq!(last.state, TaskState::Failed, "{out}\n{last:?}");
    assert_eq!(last.source, Some(Source::Executor), "reported by the executor: {last:?}");
    assert!(last.message.as_deref().unwrap_or("").contains("no command"), "{last:?}");

    // An image that does not exist: the task fails with the reason, nothing is left.
    let offer = one_offer(&mut fw).await;
    let mut t = task_info("no-image", &offer.agent_id, CommandInfo::shell("true"), 0.1, 32.0);
    t.command = None;
    t.executor = Some(executor("bad-exec", "no-such-image"));
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.unwrap();
    let seen = until_terminal(&mut fw, "no-image", T).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, TaskState::Failed, "{last:?}");
    assert_eq!(last.reason, Some(Reason::ReasonContainerLaunchFailed), "{last:?}");
    assert!(last.message.as_deref().unwrap_or("").contains("no-such-image"), "{last:?}");
    drop(fw);
    assert_no_rootfs_left(&c).await;
}
