//! Highly available masters, against real processes and a real etcd (the `etcd.sh`
//! fixture, each test with its own state dir and ports, stopped by its PID files even when
//! a test fails): the embedded registry across a restart, failover of the leading master
//! in the middle of a launch storm, etcd losing its own leader, a master cut off from etcd,
//! all masters restarting at once, and what followers answer.
mod common;

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

/// `$AGORA_FIXTURES`, or the steering repo's `shared/fixtures` next to this checkout, or
/// `/work/shared/fixtures`.
fn fixtures() -> PathBuf {
    match std::env::var_os("AGORA_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => {
            let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
            if beside.join("etcd.sh").exists() {
                beside
            } else {
                PathBuf::from("/work/shared/fixtures")
            }
        }
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
        let _ =
            Command::new("bash").arg(fixtures().join("etcd.sh")).arg("stop").env("ETCD_STATE", &self.state).status();
    }
}

fn port_of(addr: &str) -> String {
    addr.rsplit(':').next().unwrap_or("0").to_string()
}

/// Several masters (or one), restartable on their ports.
struct Masters {
    dir: PathBuf,
    extra: Vec<Vec<String>>,
    procs: Vec<Option<Proc>>,
    addrs: Vec<String>,
    starts: usize,
}

impl Masters {
    fn start(dir: &Path, n: usize, extra: &[String]) -> Masters {
        let mut m = Masters { dir: dir.to_path_buf(), extra: vec![], procs: vec![], addrs: vec![], starts: 0 };
        for _ in 0..n {
            m.add(extra);
        }
        m
    }

    /// Starts one more master with its own flags; returns its index.
    fn add(&mut self, extra: &[String]) -> usize {
        let i = self.procs.len();
        self.extra.push(extra.to_vec());
        let p = self.spawn(i, "0");
        self.addrs.push(p.addr.clone());
        self.procs.push(Some(p));
        i
    }

    fn spawn(&mut self, i: usize, port: &str) -> Proc {
        self.starts += 1;
        let mut args = s(&["master", "--ip", "127.0.0.1", "--port", port, "--work-dir"]);
        args.push(self.dir.join(format!("m{i}")).display().to_string());
        args.extend(s(FAST_MASTER));
        args.extend(self.extra[i].iter().cloned());
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

/// The next UPDATE for `task` (acknowledging what asks for it), skipping other events; offers
/// met on the way are declined, so that they are made again.
async fn update_for(s: &mut Scheduler, task: &str, timeout: Duration) -> Option<TaskStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, s.next_event()).await.ok()?.ok()?;
        if let Some(o) = ev.offers {
            let _ = s.decline(o.offers.iter().map(|o| o.id.clone()).collect(), 0.0).await;
        }
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
    let victim = slaves.iter().find(|s| s["id"] != agent.value.as_str()).expect("an idle agent").clone();
    let victim_port = victim["port"].as_u64().expect("port").to_string();
    let mut agents: Vec<Option<Proc>> = agents.into_iter().map(Some).collect();
    let vi =
        agents.iter().position(|a| a.as_ref().map(|a| port_of(&a.addr)) == Some(victim_port.clone())).expect("victim");

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
    assert_eq!(f["id"], info.id.as_ref().unwrap().value.as_str(), "the framework is recovered:\n{}", m.logs());
    assert_eq!(f["connected"], false);
    let back = wait_until(T, || async {
        let a = active_agents(&master).await;
        (a.len() == 2).then_some(a)
    })
    .await
    .unwrap_or_else(|| panic!("agents did not re-register:\n{}", m.logs()));
    assert!(back.is_subset(&before), "agents re-registered as new agents: {back:?} vs {before:?}");
    assert!(back.contains(&agent.value.to_string()));

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

/// How long the cluster took to recover from the death of its leader.
#[derive(Debug)]
struct Failover {
    leader: String,
    /// Until another master serves as the leader.
    serving: Duration,
    /// Until every agent is active on it.
    agents: Duration,
}

/// Watches the masters other than `dead` from the moment it was killed.
async fn measure_failover(addrs: Vec<String>, dead: String, agents: usize) -> Option<Failover> {
    let t0 = Instant::now();
    let others: Vec<String> = addrs.into_iter().filter(|a| *a != dead).collect();
    let leader = wait_leader(&others, Duration::from_secs(20), Some(&dead)).await?;
    let serving = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while active_agents(&leader).await.len() < agents {
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(Failover { leader, serving, agents: t0.elapsed() })
}

struct Launched {
    logical: usize,
    agent: AgentId,
    at: Instant,
}

/// Reconciles the launched tasks not known to have ended and launched before `before`.
async fn reconcile_open(
    s: &Scheduler,
    launched: &HashMap<String, Launched>,
    ended: &HashMap<String, TaskState>,
    before: Instant,
) {
    let open: Vec<(TaskId, Option<AgentId>)> = launched
        .iter()
        .filter(|(id, l)| !ended.contains_key(*id) && l.at < before)
        .map(|(id, l)| (TaskId::new(id), Some(l.agent.clone())))
        .collect();
    if !open.is_empty() {
        let _ = s.reconcile(open).await;
    }
}

/// Answers that say a task never ran (the framework launches it again under a new id).
fn never_ran(state: TaskState) -> bool {
    matches!(state, TaskState::Gone | TaskState::Dropped | TaskState::Lost | TaskState::Unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_during_a_launch_storm() {
    let dir = Scratch::new("storm");
    let etcd = Etcd::start(3, 24_400);
    let prefix = format!("/agora-{}", uuid::Uuid::new_v4());
    let extra = s(&["--etcd", &etcd.endpoints, "--etcd-prefix", &prefix, "--agent-reregister-timeout", "60secs"]);
    let mut m = Masters::start(&dir.0, 3, &extra);
    let leader0 = wait_leader(&m.addrs, T, None).await.unwrap_or_else(|| panic!("no leader:\n{}", m.logs()));
    // One agent finds the leader through the list of masters, the other through etcd.
    let agents = [spawn_agent(&dir.0, 0, &m.list()), spawn_agent(&dir.0, 1, &etcd.master_spec(&prefix))];
    let before = wait_until(T, || async {
        let a = active_agents(&leader0).await;
        (a.len() == 2).then_some(a)
    })
    .await
    .unwrap_or_else(|| panic!("agents did not register:\n{}", m.logs()));

    let marks = dir.join("marks");
    std::fs::create_dir_all(&marks).expect("marks dir");
    let total = 200usize;
    let kill_at = 80usize;
    let mut info = info("storm", true, 300.0);
    let first = subscribe(&m.list(), &info, T).await;
    info.id = Some(first.framework_id.clone());
    let mut sched = Some(first);

    let mut queue: std::collections::VecDeque<usize> = (0..total).collect();
    let mut attempts = vec![0u32; total];
    let mut launched: HashMap<String, Launched> = HashMap::new();
    let mut ended: HashMap<String, TaskState> = HashMap::new();
    let mut done: HashSet<usize> = HashSet::new();
    let mut problems: Vec<String> = vec![];
    let mut relaunched = 0usize;
    let mut resubscriptions = 0usize;
    let mut watcher = None;
    let mut last_reconcile = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    while done.len() < total {
        assert!(Instant::now() < deadline, "{} of {total} tasks done; problems {problems:?}\n{}", done.len(), m.logs());
        let Some(s) = sched.as_mut() else {
            // Re-subscribe with the framework's id through the list of masters, then ask
            // about everything not known to have ended.
            match Scheduler::subscribe(&m.list(), info.clone()).await {
                Ok(s) => {
                    assert_eq!(Some(&s.framework_id), info.id.as_ref(), "re-subscribed under another id");
                    resubscriptions += 1;
                    reconcile_open(&s, &launched, &ended, Instant::now()).await;
                    last_reconcile = Instant::now();
                    sched = Some(s);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        if last_reconcile.elapsed() > Duration::from_secs(2) {
            reconcile_open(s, &launched, &ended, Instant::now() - Duration::from_secs(2)).await;
            last_reconcile = Instant::now();
        }
        let ev = match tokio::time::timeout(Duration::from_millis(500), s.next_event()).await {
            Err(_) => continue,
            Ok(Err(_)) => {
                sched = None;
                continue;
            }
            Ok(Ok(ev)) => ev,
        };
        if let Some(o) = ev.offers {
            for offer in o.offers {
                let res = Resources::from_vec(offer.resources.clone());
                let fit =
                    ((res.scalar("cpus") / 0.05).floor() as usize).min((res.scalar("mem") / 16.0).floor() as usize);
                // Small batches spread the launches over several offers (and the kill).
                let n = fit.min(queue.len()).min(20);
                if n == 0 {
                    let _ = s.decline(vec![offer.id.clone()], 0.0).await;
                    continue;
                }
                let mut infos = Vec::with_capacity(n);
                for _ in 0..n {
                    let Some(l) = queue.pop_front() else { break };
                    attempts[l] += 1;
                    let id = format!("t{l}-{}", attempts[l]);
                    let cmd = format!("echo $$ >> {}/{id}", marks.display());
                    infos.push(task_info(&id, &offer.agent_id, CommandInfo::shell(cmd), 0.05, 16.0));
                    launched.insert(id, Launched { logical: l, agent: offer.agent_id.clone(), at: Instant::now() });
                }
                // An ACCEPT that fails in the failover is in doubt: reconciliation tells.
                let _ = s.launch(vec![offer.id.clone()], infos, 0.0).await;
                if watcher.is_none() && launched.len() >= kill_at {
                    let leader = wait_leader(&m.addrs, Duration::from_secs(1), None).await.expect("a leader");
                    let i = m.index_of(&leader);
                    m.kill(i);
                    watcher = Some(tokio::spawn(measure_failover(m.addrs.clone(), leader, 2)));
                }
            }
        }
        if let Some(u) = ev.update {
            let st = u.status;
            let _ = s.acknowledge(&st).await;
            let id = st.task_id.value.to_string();
            if !(st.state.is_terminal() || never_ran(st.state)) {
                continue;
            }
            match ended.get(&id) {
                Some(prev) if *prev != st.state => {
                    problems.push(format!("{id} ended {prev:?} and then {:?}", st.state))
                }
                Some(_) => {} // a retransmission, or a reconciliation answer
                None => {
                    ended.insert(id.clone(), st.state);
                    let Some(l) = launched.get(&id) else {
                        problems.push(format!("update for a task never launched: {id}"));
                        continue;
                    };
                    if st.state == TaskState::Finished {
                        if !done.insert(l.logical) {
                            problems.push(format!("logical task {} finished twice", l.logical));
                        }
                    } else if never_ran(st.state) {
                        relaunched += 1;
                        queue.push_back(l.logical);
                    } else {
                        problems.push(format!("{id} ended {:?}: {:?}", st.state, st.message));
                    }
                }
            }
        }
    }
    let failover = watcher
        .expect("the leader was killed")
        .await
        .expect("watcher")
        .unwrap_or_else(|| panic!("no new leader with both agents:\n{}", m.logs()));
    println!(
        "failover with {} agents: new leader serving after {:?}, all agents re-registered after {:?}; \
         {resubscriptions} re-subscription(s), {relaunched} launch(es) in doubt answered GONE/DROPPED and relaunched",
        agents.len(),
        failover.serving,
        failover.agents
    );
    assert!(problems.is_empty(), "{problems:?}\n{}", m.logs());
    assert!(failover.serving < Duration::from_secs(5), "failover took {:?}", failover.serving);
    assert!(resubscriptions >= 1, "the framework never had to re-subscribe");

    // Every task that finished ran exactly once; every one answered GONE/DROPPED never ran.
    for (id, state) in &ended {
        let runs = std::fs::read_to_string(marks.join(id)).map(|t| t.lines().count()).unwrap_or(0);
        let expect = usize::from(*state == TaskState::Finished);
        assert_eq!(runs, expect, "task {id} ({state:?}) ran {runs} times");
    }
    let files = std::fs::read_dir(&marks).map(|d| d.count()).unwrap_or(0);
    assert_eq!(files, total, "tasks ran that the framework never saw end");

    // The agents and the framework are back with the new leader, as themselves.
    assert_eq!(active_agents(&failover.leader).await, before, "agents re-registered as new agents");
    let st = get_json(&format!("http://{}/state", failover.leader)).await;
    let fws = st["frameworks"].as_array().cloned().unwrap_or_default();
    assert_eq!(fws.len(), 1);
    assert_eq!(fws[0]["id"], info.id.as_ref().expect("id").value.as_str());
    assert_eq!(fws[0]["connected"], true);
    assert_eq!(st["leader"], format!("master@{}", failover.leader));
    drop(agents);
    drop(etcd);
}

/// A TCP proxy in front of one etcd member, which can drop off the network: once cut, every
/// connection through it hangs (accepted, never answered), as if packets were lost.
struct Proxy {
    addr: String,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let target = target.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else { continue };
                let (target, open) = (target.clone(), o.clone());
                let h = tokio::spawn(async move {
                    if !open.load(Ordering::SeqCst) {
                        let _held = down;
                        std::future::pending::<()>().await;
                        return;
                    }
                    if let Ok(mut up) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                c.lock().expect("conns").push(h);
            }
        });
        Proxy { addr, open, conns, task }
    }

    /// From now on nothing gets through; connections already open are cut.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for h in self.conns.lock().expect("conns").drain(..) {
            h.abort();
        }
    }

    fn mend(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        for h in self.conns.lock().expect("conns").drain(..) {
            h.abort();
        }
    }
}

/// `/master/redirect` of `addr`: (status, Location).
async fn redirect_of(addr: &str) -> (u16, String) {
    match request("GET", &format!("http://{addr}/master/redirect")).await {
        Some((st, h)) => (st, location(&h)),
        None => (0, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_losing_its_leader_is_harmless_and_a_master_cut_off_steps_down() {
    let dir = Scratch::new("partition");
    let etcd = Etcd::start(3, 24_500);
    let prefix = format!("/agora-{}", uuid::Uuid::new_v4());
    let mut proxies = vec![];
    for ep in etcd.endpoints.split(',') {
        proxies.push(Proxy::start(ep).await);
    }
    let via_proxies: Vec<String> = proxies.iter().map(|p| format!("http://{}", p.addr)).collect();
    let flags = |endpoints: &str| s(&["--etcd", endpoints, "--etcd-prefix", &prefix]);
    // Master 0 reaches etcd only through the proxies; it starts first and leads.
    let mut m = Masters::start(&dir.0, 1, &flags(&via_proxies.join(",")));
    let a = m.addrs[0].clone();
    assert_eq!(wait_leader(&m.addrs, T, None).await.as_deref(), Some(a.as_str()), "{}", m.logs());
    m.add(&flags(&etcd.endpoints));
    m.add(&flags(&etcd.endpoints));
    for f in &m.addrs[1..] {
        let ok = wait_until(T, || async { (redirect_of(f).await == (307, format!("//{a}"))).then_some(()) }).await;
        assert!(ok.is_some(), "follower {f} does not redirect to {a}:\n{}", m.logs());
    }
    let elected = get_json(&format!("http://{a}/state")).await["elected_time"].clone();

    // etcd loses its leader: the masters carry on, with the same leader, and it can write.
    let killed = etcd.run(&["kill", "leader"]);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        for f in &m.addrs {
            let (st, loc) = redirect_of(f).await;
            assert_eq!(
                (st, loc.as_str()),
                (307, format!("//{a}").as_str()),
                "etcd {killed} died: {f} lost the leader\n{}",
                m.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get_json(&format!("http://{a}/state")).await["elected_time"], elected, "leadership changed hands");
    let fw = subscribe(&m.list(), &info("after-etcd-failover", true, 0.0), T).await;
    drop(fw);

    // Master 0 is cut off from etcd: it steps down before its lease can run out (3 s), and
    // another master takes over.
    for p in &proxies {
        p.cut();
    }
    let t0 = Instant::now();
    let (stepped, stepped_at) = wait_until(T, || async {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64());
        (redirect_of(&a).await.0 == 503).then(|| (t0.elapsed(), now.unwrap_or(0.0)))
    })
    .await
    .unwrap_or_else(|| panic!("master {a} cut off from etcd did not step down:\n{}", m.logs()));
    let others = m.addrs[1..].to_vec();
    let b = wait_leader(&others, T, Some(&a)).await.unwrap_or_else(|| panic!("no new leader:\n{}", m.logs()));
    let elected = get_json(&format!("http://{b}/state")).await["elected_time"].as_f64().expect("elected_time");
    println!("cut off from etcd: stepped down after {stepped:?}, {b} elected {:.3} s later", elected - stepped_at);
    assert!(stepped_at < elected, "{a} still led when {b} was elected");
    let (st, _) = request("POST", &format!("http://{a}/api/v1/scheduler")).await.expect("answer");
    assert_eq!(st, 503, "a master that knows no leader answers 503");

    // Back on the network, it follows the new leader.
    for p in &proxies {
        p.mend();
    }
    let ok = wait_until(T, || async { (redirect_of(&a).await == (307, format!("//{b}"))).then_some(()) }).await;
    assert!(ok.is_some(), "{a} does not follow {b} once reconnected:\n{}", m.logs());
    drop(proxies);
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_masters_restart_at_once_and_followers_redirect() {
    let dir = Scratch::new("restart-all");
    let etcd = Etcd::start(1, 24_600);
    let prefix = format!("/agora-{}", uuid::Uuid::new_v4());
    let extra = s(&["--etcd", &etcd.endpoints, "--etcd-prefix", &prefix, "--agent-reregister-timeout", "60secs"]);
    let mut m = Masters::start(&dir.0, 3, &extra);
    let l = wait_leader(&m.addrs, T, None).await.unwrap_or_else(|| panic!("no leader:\n{}", m.logs()));
    let agents = [spawn_agent(&dir.0, 0, &m.list()), spawn_agent(&dir.0, 1, &etcd.master_spec(&prefix))];
    let before = wait_until(T, || async {
        let a = active_agents(&l).await;
        (a.len() == 2).then_some(a)
    })
    .await
    .unwrap_or_else(|| panic!("agents did not register:\n{}", m.logs()));

    // Followers: 307 to the leader, with path and query; local endpoints answer themselves.
    let f = m.addrs.iter().find(|a| **a != l).expect("a follower").clone();
    let base = format!("//{l}");
    assert_eq!(redirect_of(&f).await, (307, base.clone()));
    let (st, h) = request("GET", &format!("http://{f}/redirect")).await.expect("answer");
    assert_eq!((st, location(&h)), (307, base.clone()));
    let (st, h) = request("GET", &format!("http://{f}/master/state?jsonp=cb")).await.expect("answer");
    assert_eq!((st, location(&h)), (307, format!("{base}/master/state?jsonp=cb")));
    for path in ["/api/v1/scheduler", "/api/v1", "/master/api/v1/scheduler"] {
        let (st, h) = request("POST", &format!("http://{f}{path}")).await.expect("answer");
        assert_eq!((st, location(&h)), (307, format!("{base}{path}")), "{path}");
    }
    let (st, _) = request("GET", &format!("http://{f}/redirect/x")).await.expect("answer");
    assert_eq!(st, 404, "no redirect loop");
    assert_eq!(request("GET", &format!("http://{f}/health")).await.map(|r| r.0), Some(200));
    assert_eq!(get_json(&format!("http://{f}/metrics/snapshot")).await["master/elected"], 0);
    assert_eq!(get_json(&format!("http://{l}/metrics/snapshot")).await["master/elected"], 1);
    let st = get_json(&format!("http://{l}/state")).await;
    assert_eq!(st["leader"], format!("master@{l}"));
    assert_eq!(st["leader_info"]["port"].as_u64().map(|p| p.to_string()), Some(port_of(&l)));
    assert_eq!(redirect_of(&l).await, (307, base.clone()), "the leader redirects to itself");

    // A framework with a running task.
    let mut info = info("survivor", true, 300.0);
    let mut fw = subscribe(&m.list(), &info, T).await;
    info.id = Some(fw.framework_id.clone());
    let agent = launch_one(&mut fw, "sleeper", "sleep 300").await;
    loop {
        let u = update_for(&mut fw, "sleeper", T).await.expect("sleeper updates");
        if u.state == TaskState::Running {
            break;
        }
    }
    drop(fw);

    // Every master dies at once and comes back on its port.
    for i in 0..3 {
        m.kill(i);
    }
    for i in 0..3 {
        m.restart(i);
    }
    let l2 =
        wait_leader(&m.addrs, T, None).await.unwrap_or_else(|| panic!("no leader after the restart:\n{}", m.logs()));
    let st = get_json(&format!("http://{l2}/state")).await;
    assert_eq!(
        st["frameworks"][0]["id"],
        info.id.as_ref().expect("id").value.as_str(),
        "the registry lost the framework"
    );
    let back = wait_until(T, || async {
        let a = active_agents(&l2).await;
        (a.len() == 2).then_some(a)
    })
    .await
    .unwrap_or_else(|| panic!("agents did not re-register:\n{}", m.logs()));
    assert_eq!(back, before, "agents came back as new agents");
    let mut fw = subscribe(&m.list(), &info, T).await;
    assert_eq!(Some(&fw.framework_id), info.id.as_ref());
    assert_eq!(reconcile_state(&mut fw, "sleeper", &agent).await, TaskState::Running);
    launch_one(&mut fw, "after", "echo after").await;
    loop {
        let u = update_for(&mut fw, "after", T).await.unwrap_or_else(|| panic!("no update:\n{}", m.logs()));
        if u.state == TaskState::Finished {
            break;
        }
        assert!(!u.state.is_terminal(), "{u:?}");
    }
    drop(fw);

    // Without etcd no master leads, and every one of them says so.
    etcd.run(&["stop"]);
    let t0 = Instant::now();
    let none = wait_until(T, || async {
        for a in &m.addrs {
            if redirect_of(a).await.0 != 503 {
                return None;
            }
            let (st, _) = request("POST", &format!("http://{a}/api/v1/scheduler")).await?;
            if st != 503 {
                return None;
            }
        }
        Some(t0.elapsed())
    })
    .await;
    assert!(none.is_some(), "masters still claim a leader without etcd:\n{}", m.logs());
    drop(agents);
    drop(etcd);
}

/// The venv's python with pymesos (`scripts/setup-python.sh` prints it last).
fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out =
        Command::new("bash").arg(root.join("scripts/setup-python.sh")).current_dir(&root).output().expect("setup");
    assert!(out.status.success(), "setup-python.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let path =
        String::from_utf8_lossy(&out.stdout).lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    PathBuf::from(path)
}

/// A child process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pymesos_follows_the_leader() {
    let python = python();
    let dir = Scratch::new("pymesos");
    let etcd = Etcd::start(1, 24_700);
    let prefix = format!("/agora-{}", uuid::Uuid::new_v4());
    let extra = s(&["--etcd", &etcd.endpoints, "--etcd-prefix", &prefix, "--agent-reregister-timeout", "60secs"]);
    let mut m = Masters::start(&dir.0, 3, &extra);
    let l = wait_leader(&m.addrs, T, None).await.unwrap_or_else(|| panic!("no leader:\n{}", m.logs()));
    let agent = spawn_agent(&dir.0, 0, &m.list());
    let ok = wait_until(T, || async { (active_agents(&l).await.len() == 1).then_some(()) }).await;
    assert!(ok.is_some(), "the agent did not register:\n{}", m.logs());
    let f = m.addrs.iter().find(|a| **a != l).expect("a follower").clone();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/pymesos_ha.py");
    let log = std::fs::File::create(dir.join("pymesos.log")).expect("log");
    let mut child = Command::new(&python)
        .arg(&script)
        .args(["--master", &f, "--leader", &l])
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start pymesos_ha.py");
    let stdout = child.stdout.take().expect("stdout");
    let child = Killed(child);
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    let saw = |what: &'static str| {
        let lines = lines.clone();
        async move { lines.lock().expect("lines").iter().any(|l| l == what || l.starts_with("FAIL")).then_some(()) }
    };
    let pylog = || std::fs::read_to_string(dir.join("pymesos.log")).unwrap_or_default();
    wait_until(Duration::from_secs(60), || saw("READY")).await;
    let out = lines.lock().expect("lines").clone();
    assert!(out.iter().any(|l| l == "READY"), "pymesos did not get going: {out:?}\n{}\n{}", pylog(), m.logs());

    // The leader dies; a supervisor would restart it: it comes back as a follower.
    let i = m.index_of(&l);
    m.kill(i);
    let l2 = wait_leader(&m.addrs, T, Some(&l)).await.unwrap_or_else(|| panic!("no new leader:\n{}", m.logs()));
    m.restart(i);
    wait_until(Duration::from_secs(90), || saw("PASS")).await;
    let out = lines.lock().expect("lines").clone();
    println!("pymesos across a failover ({l} -> {l2}): {out:?}");
    assert!(out.iter().any(|l| l == "PASS"), "pymesos: {out:?}\n{}\n{}", pylog(), m.logs());
    drop(child);
    drop(agent);
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agora_run_outlives_a_master_failover() {
    let dir = Scratch::new("run-failover");
    let etcd = Etcd::start(1, 24_800);
    let prefix = format!("/agora-{}", uuid::Uuid::new_v4());
    let extra = s(&["--etcd", &etcd.endpoints, "--etcd-prefix", &prefix, "--agent-reregister-timeout", "60secs"]);
    let mut m = Masters::start(&dir.0, 3, &extra);
    let l = wait_leader(&m.addrs, T, None).await.unwrap_or_else(|| panic!("no leader:\n{}", m.logs()));
    let _agent = spawn_agent(&dir.0, 0, &m.list());
    wait_until(T, || async { (active_agents(&l).await.len() == 1).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("agent did not register:\n{}", m.logs()));

    let (out, err) = (dir.0.join("run.out"), dir.0.join("run.err"));
    let mut run = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["run", "--master", &m.list(), "--cpus", "0.1", "--mem", "32", "--"])
        .arg("sleep 6; echo survived")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(std::fs::File::create(&err).expect("err"))
        .spawn()
        .expect("agora run");
    let running = wait_until(T, || async {
        std::fs::read_to_string(&err).unwrap_or_default().contains("TASK_RUNNING").then_some(())
    })
    .await;
    assert!(running.is_some(), "task did not start: {}", std::fs::read_to_string(&err).unwrap_or_default());

    // Kill the leader while the task runs: `agora run` finds the new one and sees the end.
    m.kill(m.index_of(&l));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = run.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            panic!("agora run did not finish: {}", std::fs::read_to_string(&err).unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "exit {status}: {stderr}\n{}", m.logs());
    assert!(stderr.contains("subscribing again"), "{stderr}");
    assert!(std::fs::read_to_string(&out).unwrap_or_default().contains("survived"), "{stderr}");
}
