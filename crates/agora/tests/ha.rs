//! Highly available masters, against real processes and a real etcd (the `etcd.sh`
//! fixture, each test with its own state dir and ports, stopped by its PID files even when
//! a test fails): the embedded registry across a restart, failover of the leading master
//! in the middle of a launch storm, etcd losing its own leader, a master cut off from etcd,
//! all masters restarting at once, and what followers answer.
mod common;

use agora_api::scheduler::EventType;
use agora_api::*;
use agora_client::Scheduler;
use common::*;
use nix::sys::signal::Signal;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// The agents here run plain processes: the masters are under test.
const AGENT: &[&str] =
    &["--isolation", "posix/cpu,posix/mem", "--resources", "cpus:8;mem:8192;disk:1000;ports:[31000-32000]"];

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("agora-ha-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).expect("scratch dir");
        Scratch(d)
    }
    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Scratch {
    /// Kept with `AGORA_KEEP_TEST_DIRS=1` (logs for a post-mortem).
    fn drop(&mut self) {
        if std::env::var_os("AGORA_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `$AGORA_FIXTURES` or the steering repo's `shared/fixtures` next to this checkout.
fn fixtures() -> PathBuf {
    match std::env::var_os("AGORA_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"),
    }
}

/// An etcd cluster from the fixture; `etcd.sh stop` (by PID files) on drop.
struct Etcd {
    state: PathBuf,
    endpoints: String,
}

impl Etcd {
    fn start(members: usize, base_port: u16) -> Etcd {
        let state = std::env::temp_dir().join(format!("agora-ha-etcd-{}", uuid::Uuid::new_v4()));
        let out = Command::new("bash")
            .arg(fixtures().join("etcd.sh"))
            .args(["start", &members.to_string()])
            .env("ETCD_STATE", &state)
            .env("ETCD_BASE_PORT", base_port.to_string())
            .output()
            .expect("run etcd.sh");
        let etcd = Etcd { state, endpoints: String::from_utf8_lossy(&out.stdout).trim().to_string() };
        assert!(out.status.success(), "etcd.sh start failed: {}", String::from_utf8_lossy(&out.stderr));
        etcd
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("bash")
            .arg(fixtures().join("etcd.sh"))
            .args(args)
            .env("ETCD_STATE", &self.state)
            .output()
            .expect("run etcd.sh");
        assert!(out.status.success(), "etcd.sh {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `etcd://h1:p1,h2:p2/prefix` for agents and clients.
    fn master_spec(&self, prefix: &str) -> String {
        format!("etcd://{}{prefix}", self.endpoints.replace("http://", ""))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(fixtures().join("etcd.sh")).arg("stop").env("ETCD_STATE", &self.state).status();
    }
}

fn port_of(addr: &str) -> String {
    addr.rsplit(':').next().unwrap_or("0").to_string()
}

/// Several masters (or one), restartable on their ports.
struct Masters {
    dir: PathBuf,
    extra: Vec<String>,
    procs: Vec<Option<Proc>>,
    addrs: Vec<String>,
    starts: usize,
}

impl Masters {
    fn start(dir: &Path, n: usize, extra: &[String]) -> Masters {
        let mut m = Masters { dir: dir.to_path_buf(), extra: extra.to_vec(), procs: vec![], addrs: vec![], starts: 0 };
        for i in 0..n {
            let p = m.spawn(i, "0");
            m.addrs.push(p.addr.clone());
            m.procs.push(Some(p));
        }
        m
    }

    fn spawn(&mut self, i: usize, port: &str) -> Proc {
        self.starts += 1;
        let mut args = s(&["master", "--ip", "127.0.0.1", "--port", port, "--work-dir"]);
        args.push(self.dir.join(format!("m{i}")).display().to_string());
        args.extend(s(FAST_MASTER));
        args.extend(self.extra.iter().cloned());
        spawn_daemon(&args, &self.dir.join(format!("m{i}-{}.log", self.starts)))
    }

    /// SIGKILL, and wait for it to be gone.
    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.signal(Signal::SIGKILL);
            let _ = p.child.wait();
            std::mem::forget(p);
        }
    }

    fn restart(&mut self, i: usize) {
        let port = port_of(&self.addrs[i]);
        let p = self.spawn(i, &port);
        assert_eq!(p.addr, self.addrs[i], "restarted on another address");
        self.procs[i] = Some(p);
    }

    /// `h1:p1,h2:p2,h3:p3`.
    fn list(&self) -> String {
        self.addrs.join(",")
    }

    fn index_of(&self, addr: &str) -> usize {
        self.addrs.iter().position(|a| a == addr).unwrap_or_else(|| panic!("{addr} is not one of {:?}", self.addrs))
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, p) in self.procs.iter().enumerate() {
            match p {
                Some(p) => out.push_str(&format!("--- master {i} ({})\n{}\n", self.addrs[i], p.log_tail())),
                None => out.push_str(&format!("--- master {i} ({}): not running\n", self.addrs[i])),
            }
        }
        out
    }
}

fn spawn_agent(dir: &Path, i: usize, master: &str) -> Proc {
    let mut args = s(&["agent", "--ip", "127.0.0.1", "--port", "0", "--master", master, "--work-dir"]);
    args.push(dir.join(format!("agent{i}")).display().to_string());
    args.extend(s(FAST_AGENT));
    args.extend(s(AGENT));
    spawn_daemon(&args, &dir.join(format!("agent{i}.log")))
}

/// Status and headers of a plain request.
async fn request(method: &str, url: &str) -> Option<(u16, agora_http::http::HeaderMap)> {
    let c = agora_http::Client::new();
    let r = match method {
        "GET" => c.get(url, Duration::from_secs(2)).await,
        _ => c.post(url, &[], br#"{"type":"GET_HEALTH"}"#.to_vec(), Duration::from_secs(2)).await,
    };
    r.ok().map(|r| (r.status.as_u16(), r.headers))
}

fn location(h: &agora_http::http::HeaderMap) -> String {
    h.get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// The leader as `addr` sees it (its `/master/redirect`), if that leader serves.
async fn leader_via(addr: &str) -> Option<String> {
    let (status, h) = request("GET", &format!("http://{addr}/master/redirect")).await?;
    if status != 307 {
        return None;
    }
    let leader = location(&h).trim_start_matches("//").to_string();
    let (st, _) = request("GET", &format!("http://{leader}/state")).await?;
    (st == 200).then_some(leader)
}

/// The serving leader among `addrs`, waiting up to `timeout`; never `except`.
async fn wait_leader(addrs: &[String], timeout: Duration, except: Option<&str>) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        for a in addrs {
            if Some(a.as_str()) == except {
                continue;
            }
            if let Some(l) = leader_via(a).await {
                if Some(l.as_str()) != except {
                    return Some(l);
                }
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ids of the agents active on `leader`.
async fn active_agents(leader: &str) -> HashSet<String> {
    let Some(st) = try_json(&format!("http://{leader}/state")).await else { return HashSet::new() };
    st["slaves"]
        .as_array()
        .map(|a| {
            a.iter().filter(|s| s["active"] == true).filter_map(|s| s["id"].as_str().map(str::to_string)).collect()
        })
        .unwrap_or_default()
}

async fn try_json(url: &str) -> Option<serde_json::Value> {
    let r = agora_http::Client::new().get(url, Duration::from_secs(5)).await.ok()?;
    if r.status != 200 {
        return None;
    }
    serde_json::from_slice(&r.body).ok()
}

/// Subscribes through the master list, retrying while a leader is being elected.
async fn subscribe(master: &str, info: &FrameworkInfo, timeout: Duration) -> Scheduler {
    let deadline = Instant::now() + timeout;
    loop {
        match Scheduler::subscribe(master, info.clone()).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot subscribe through {master}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The next UPDATE for `task` (acknowledging what asks for it), skipping other events.
async fn update_for(s: &mut Scheduler, task: &str, timeout: Duration) -> Option<TaskStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, s.next_event()).await.ok()?.ok()?;
        if let Some(u) = ev.update {
            let _ = s.acknowledge(&u.status).await;
            if u.status.task_id.value == task {
                return Some(u.status);
            }
        }
    }
}

/// Launches one command task on the first offer that comes.
async fn launch_one(s: &mut Scheduler, id: &str, cmd: &str) -> AgentId {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, s.next_event()).await.expect("an offer in time").expect("stream open");
        if let Some(o) = ev.offers {
            let offer = &o.offers[0];
            let t = task_info(id, &offer.agent_id, CommandInfo::shell(cmd), 0.1, 32.0);
            s.launch(vec![offer.id.clone()], vec![t], 0.0).await.expect("launch");
            return offer.agent_id.clone();
        }
    }
}

/// Reconciles one task until the master answers (it stays silent while the task's agent
/// has not re-registered).
async fn reconcile_state(s: &mut Scheduler, task: &str, agent: &AgentId) -> TaskState {
    let deadline = Instant::now() + T;
    loop {
        s.reconcile(vec![(TaskId::new(task), Some(agent.clone()))]).await.expect("reconcile");
        if let Some(u) = update_for(s, task, Duration::from_secs(2)).await {
            return u.state;
        }
        assert!(Instant::now() < deadline, "no reconciliation answer for {task}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_registry_survives_a_master_restart() {
    let dir = Scratch::new("embedded");
    let extra = s(&["--agent-reregister-timeout", "4secs"]);
    let mut m = Masters::start(&dir.0, 1, &extra);
    let master = m.addrs[0].clone();
    let agents: Vec<Proc> = (0..3).map(|i| spawn_agent(&dir.0, i, &master)).collect();
    let before = wait_until(T, || async {
        let a = active_agents(&master).await;
        (a.len() == 3).then_some(a)
    })
    .await
    .unwrap_or_else(|| panic!("3 agents did not register:\n{}", m.logs()));

    let mut info = info("keeper", true, 300.0);
    let mut fw = subscribe(&master, &info, T).await;
    info.id = Some(fw.framework_id.clone());
    let agent = launch_one(&mut fw, "sleeper", "sleep 300").await;
    let running = loop {
        let u = update_for(&mut fw, "sleeper", T).await.expect("sleeper updates");
        if u.state == TaskState::Running {
            break u;
        }
    };
    assert_eq!(running.agent_id.as_ref(), Some(&agent));

    // One agent without tasks goes away for good while the master is down.
    let st = get_json(&format!("http://{master}/state")).await;
    let slaves = st["slaves"].as_array().cloned().unwrap_or_default();
    let victim = slaves.iter().find(|s| s["id"] != agent.value).expect("an idle agent").clone();
    let victim_port = victim["port"].as_u64().expect("port").to_string();
    let mut agents: Vec<Option<Proc>> = agents.into_iter().map(Some).collect();
    let vi = agents.iter().position(|a| a.as_ref().map(|a| port_of(&a.addr)) == Some(victim_port.clone())).expect("victim");

    m.kill(0);
    if let Some(mut p) = agents[vi].take() {
        p.signal(Signal::SIGKILL);
        let _ = p.child.wait();
    }
    drop(fw);
    m.restart(0);

    // The registry brought back the framework (disconnected until it re-subscribes) and the
    // agents, which re-register under their ids.
    let st = get_json(&format!("http://{master}/state")).await;
    let f = st["frameworks"].as_array().and_then(|a| a.first()).cloned().unwrap_or_default();
    assert_eq!(f["id"], info.id.as_ref().unwrap().value, "the framework is recovered:\n{}", m.logs());
    assert_eq!(f["connected"], false);
    let back = wait_until(T, || async {
        let a = active_agents(&master).await;
        (a.len() == 2).then_some(a)
    })
    .await
    .unwrap_or_else(|| panic!("agents did not re-register:\n{}", m.logs()));
    assert!(back.is_subset(&before), "agents re-registered as new agents: {back:?} vs {before:?}");
    assert!(back.contains(&agent.value));

    let mut fw = subscribe(&master, &info, T).await;
    assert_eq!(Some(&fw.framework_id), info.id.as_ref(), "the framework keeps its id");
    assert_eq!(reconcile_state(&mut fw, "sleeper", &agent).await, TaskState::Running);

    // The agent that never came back is unreachable after --agent-reregister-timeout.
    let st = wait_until(T, || async {
        let st = try_json(&format!("http://{master}/state")).await?;
        (st["unreachable_slaves"] == 1 && st["recovered_slaves"].as_array().map(|a| a.is_empty()) == Some(true))
            .then_some(st)
    })
    .await;
    assert!(st.is_some(), "the missing agent did not become unreachable:\n{}", m.logs());

    // And the restarted master makes offers and runs tasks.
    launch_one(&mut fw, "after", "echo after").await;
    let deadline = Instant::now() + T;
    loop {
        let u = update_for(&mut fw, "after", deadline.saturating_duration_since(Instant::now()))
            .await
            .unwrap_or_else(|| panic!("no update for the task after the restart:\n{}", m.logs()));
        if u.state == TaskState::Finished {
            break;
        }
        assert!(!u.state.is_terminal(), "{u:?}");
    }
    drop(agents);
}
