//! The command line: `agora run`, the operator views, and `agora dev`.
mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn agora(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run agora")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prints_output_and_exits_with_the_task_status() {
    let c = Cluster::start(1, &[], &[]).await;
    let out = agora(&["run", "--master", &c.master.addr, "--", "sh", "-c", "echo hi; echo oops >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("oops"), "task stderr is streamed: {err}");
    assert!(err.contains("TASK_RUNNING") && err.contains("TASK_FAILED"), "state changes on stderr: {err}");

    // One string runs through the shell.
    let out = agora(&["run", "--master", &c.master.addr, "--quiet", "--", "echo $((6*7))"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");

    // The frameworks tore themselves down.
    let st = c.state().await;
    assert_eq!(st["frameworks"].as_array().unwrap().len(), 0);
    assert_eq!(st["completed_frameworks"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_kills_the_task() {
    let c = Cluster::start(1, &[], &[]).await;
    let log = c.dir.join("run.out");
    let child = Command::new(BIN)
        .args(["run", "--master", &c.master.addr, "--", "sh", "-c", "echo started; exec sleep 100"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = Proc { child, log: log.clone(), addr: String::new() };
    let started = wait_until(Duration::from_secs(20), || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("started").then_some(())
    })
    .await;
    assert!(started.is_some(), "task never started:\n{}", c.logs());
    let t0 = Instant::now();
    p.signal(nix::sys::signal::Signal::SIGINT);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "agora run did not exit after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(128 + 15), "killed by SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_views_list_agents_frameworks_tasks() {
    let c = Cluster::start(2, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("viewed", true, 0.0)).await;
    let offer = fw.offers().await.remove(0);
    fw.launch_on(&offer, &[("shown", "sleep 100")], 0.1, 32.0).await;
    fw.until_state("shown", agora_api::TaskState::Running, Duration::from_secs(20)).await;

    let out = agora(&["agent", "list", "--master", &c.master.addr]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with("ID"), "{text}");
    assert_eq!(text.lines().count(), 3, "header + 2 agents: {text}");
    assert!(text.contains("active"));

    let out = agora(&["framework", "list", "--master", &c.master.addr, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["frameworks"][0]["framework_info"]["name"], "viewed");

    let out = agora(&["task", "list", "--master", &c.master.addr]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("shown") && text.contains("TASK_RUNNING"), "{text}");

    // AGORA_<FLAG> environment variables set flags.
    let out = Command::new(BIN).args(["task", "list"]).env("AGORA_MASTER", &c.master.addr).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("shown"));

    // An unreachable master is a clear error, not a panic.
    let out = agora(&["agent", "list", "--master", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_a_whole_cluster_in_one_process() {
    // Two consecutive free ports for the master and the agent.
    let port = loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let dir = std::env::temp_dir().join(format!("agora-dev-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let port_s = port.to_string();
    let args = s(&["dev", "--port", &port_s, "--work-dir", &dir.display().to_string()]);
    let log = dir.join("dev.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let _p = Proc { child, log: log.clone(), addr: String::new() };
    let master = format!("127.0.0.1:{port}");
    let up = wait_until(Duration::from_secs(20), || async {
        let st = agora_http::Client::new().get(&format!("http://{master}/state"), Duration::from_secs(2)).await.ok()?;
        let v: serde_json::Value = serde_json::from_slice(&st.body).ok()?;
        (v["activated_slaves"] == 1).then_some(())
    })
    .await;
    assert!(up.is_some(), "dev cluster did not come up: {}", std::fs::read_to_string(&log).unwrap_or_default());
    let out = agora(&["run", "--master", &master, "--quiet", "--", "echo from dev"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from dev\n");
    assert_eq!(out.status.code(), Some(0));
    drop(_p);
    let _ = std::fs::remove_dir_all(dir);
}
