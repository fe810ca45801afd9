//! Test harness: real `agora master` and `agora agent` processes on loopback, in a temp dir,
//! on ports the kernel picks, with their output in log files (never the test's own stdout),
//! stopped by PID when the harness is dropped. Plus a framework helper over the real
//! scheduler API.
#![allow(dead_code)]

use agora_api::scheduler::{Event, EventType};
use agora_api::*;
use agora_client::Scheduler;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_agora");

/// A daemon started by a test.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    pub addr: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    /// SIGTERM (agents then destroy their containers), SIGKILL after 10 s.
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Starts `agora <args>` with output to `log` and waits for its "listening on ADDR" line.
pub fn spawn_daemon(args: &[String], log: &Path) -> Proc {
    spawn_daemon_bin(Path::new(BIN), args, log)
}

/// [`spawn_daemon`] with another copy of the binary.
pub fn spawn_daemon_bin(bin: &Path, args: &[String], log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("create log");
    let err = out.try_clone().expect("clone log");
    let child = Command::new(bin)
        .args(args)
        .env("AGORA_LOG", "info")
        .env_remove("AGORA_MASTER")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn agora");
    let mut p = Proc { child, log: log.to_path_buf(), addr: String::new() };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(" listening on ")) {
            p.addr = line.rsplit(' ').next().unwrap_or_default().trim().to_string();
            return p;
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("agora {args:?} exited early ({status}):\n{text}");
        }
        assert!(Instant::now() < deadline, "agora {args:?} did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub master: Proc,
    pub agents: Vec<Proc>,
    agent_args: Vec<String>,
    /// The command line each agent was started with (for restarts).
    agent_cmds: Vec<Vec<String>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agents.clear();
        // AGORA_TEST_KEEP=1 keeps the logs and sandboxes of every cluster for a post-mortem.
        if std::env::var_os("AGORA_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Fast timers for tests: allocation every 100 ms, agent pings every 500 ms.
pub const FAST_MASTER: &[&str] = &["--allocation-interval", "100ms", "--framework-heartbeat-interval", "1secs"];
pub const FAST_AGENT: &[&str] = &["--status-update-retry-interval", "1secs", "--registration-backoff-factor", "200ms"];

impl Cluster {
    pub async fn start(agents: usize, master_args: &[&str], agent_args: &[&str]) -> Cluster {
        let dir = std::env::temp_dir().join(format!("agora-it-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut args = s(&["master", "--ip", "127.0.0.1", "--port", "0", "--work-dir"]);
        args.push(dir.join("master").display().to_string());
        args.extend(s(FAST_MASTER));
        args.extend(s(master_args));
        let master = spawn_daemon(&args, &dir.join("master.log"));
        let mut c = Cluster { dir, master, agents: vec![], agent_args: s(agent_args), agent_cmds: vec![] };
        for _ in 0..agents {
            c.add_agent();
        }
        c.wait_agents(agents).await;
        c
    }

    pub fn add_agent(&mut self) -> usize {
        let i = self.agents.len();
        let mut args = s(&["agent", "--port", "0", "--master", &self.master.addr]);
        if !self.agent_args.iter().any(|a| a == "--ip" || a.starts_with("--ip=")) {
            args.extend(s(&["--ip", "127.0.0.1"]));
        }
        if !self.agent_args.iter().any(|a| a == "--work-dir" || a.starts_with("--work-dir=")) {
            args.push("--work-dir".into());
            args.push(self.dir.join(format!("agent{i}")).display().to_string());
        }
        args.extend(s(FAST_AGENT));
        if !self.agent_args.iter().any(|a| a == "--resources") {
            args.extend(s(&["--resources", "cpus:8;mem:8192;disk:10000;ports:[31000-32000]"]));
        }
        args.extend(self.agent_args.clone());
        let p = spawn_daemon(&args, &self.dir.join(format!("agent{i}.log")));
        // A restart comes back on the same port: executors know the agent by its address.
        let port = p.addr.rsplit(':').next().unwrap_or("0").to_string();
        if let Some(pos) = args.iter().position(|a| a == "--port") {
            args[pos + 1] = port;
        }
        self.agents.push(p);
        self.agent_cmds.push(args);
        i
    }

    /// SIGKILLs agent `i` (its containers live on) without waiting for anything else.
    pub fn crash_agent(&mut self, i: usize) {
        let p = &mut self.agents[i];
        p.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = p.child.wait();
    }

    /// Starts agent `i` again with the same command line (and `extra` flags); returns
    /// whether it started (a refusal is in its log).
    pub fn restart_agent(&mut self, i: usize, extra: &[&str]) -> Result<(), String> {
        // The old port can be briefly held by another socket (an ephemeral source port of a
        // connection elsewhere): retry that case only.
        for _ in 0..25 {
            match self.restart_agent_once(i, extra) {
                Err(e) if e.contains("Address already in use") => std::thread::sleep(Duration::from_millis(200)),
                other => return other,
            }
        }
        self.restart_agent_once(i, extra)
    }

    fn restart_agent_once(&mut self, i: usize, extra: &[&str]) -> Result<(), String> {
        let mut args = self.agent_cmds[i].clone();
        // `--flag value` pairs replace the flag's earlier value; `--flag=value` is appended.
        let mut k = 0;
        while k < extra.len() {
            let flag = extra[k];
            if !flag.contains('=') && k + 1 < extra.len() {
                match args.iter().position(|a| a == flag) {
                    Some(pos) => args[pos + 1] = extra[k + 1].to_string(),
                    None => args.extend(s(&[flag, extra[k + 1]])),
                }
                k += 2;
            } else {
                args.push(flag.to_string());
                k += 1;
            }
        }
        let log = self.dir.join(format!("agent{i}.log"));
        let out = std::fs::OpenOptions::new().append(true).create(true).open(&log).expect("log");
        let err = out.try_clone().expect("log");
        let child = Command::new(BIN)
            .args(&args)
            .env("AGORA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn agent");
        let mut p = Proc { child, log: log.clone(), addr: self.agents[i].addr.clone() };
        let deadline = Instant::now() + Duration::from_secs(20);
        let marker = std::fs::read_to_string(&log).unwrap_or_default().matches(" listening on ").count();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches(" listening on ").count() > marker {
                break;
            }
            if let Ok(Some(_)) = p.child.try_wait() {
                let tail: String = text.lines().rev().take(5).collect::<Vec<_>>().join("\n");
                std::mem::forget(p);
                return Err(tail);
            }
            if Instant::now() > deadline {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                panic!("agent did not restart:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let old = std::mem::replace(&mut self.agents[i], p);
        std::mem::forget(old);
        Ok(())
    }

    /// Waits for agent `i`'s process to exit on its own; its exit status.
    pub async fn wait_agent_exit(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.agents[i].child.try_wait() {
                return Some(st);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// SIGKILLs the master and starts it again on the same port with the same work dir.
    pub fn restart_master(&mut self) {
        self.master.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.master.child.wait();
        let port = self.master.addr.rsplit(':').next().unwrap_or("0").to_string();
        let mut args = s(&["master", "--ip", "127.0.0.1", "--port", &port, "--work-dir"]);
        args.push(self.dir.join("master").display().to_string());
        args.extend(s(FAST_MASTER));
        let p = spawn_daemon(&args, &self.dir.join("master-2.log"));
        assert_eq!(p.addr, self.master.addr);
        let old = std::mem::replace(&mut self.master, p);
        std::mem::forget(old);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.master.addr, path)
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
        get_json(&self.url(path)).await
    }

    pub async fn state(&self) -> serde_json::Value {
        self.get("/state").await
    }

    pub async fn wait_agents(&self, n: usize) {
        let st = wait_until(Duration::from_secs(20), || async {
            let st = self.state().await;
            let active = st["slaves"].as_array().map(|a| a.iter().filter(|s| s["active"] == true).count()).unwrap_or(0);
            (active == n).then_some(st)
        })
        .await;
        assert!(st.is_some(), "{n} agents did not register:\n{}", self.master.log_tail());
    }

    pub fn logs(&self) -> String {
        let mut s = format!("--- master\n{}\n", self.master.log_tail());
        for (i, a) in self.agents.iter().enumerate() {
            s.push_str(&format!("--- agent{i}\n{}\n", a.log_tail()));
        }
        s
    }
}

pub async fn get_json(url: &str) -> serde_json::Value {
    let r =
        agora_http::Client::new().get(url, Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("GET {url}: {e}: {:?}", r.body))
}

/// Polls `f` until it returns Some, or the timeout passes.
pub async fn wait_until<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A framework under test: keeps events it did not ask for yet.
pub struct Fw {
    pub s: Scheduler,
    pub info: FrameworkInfo,
    pending: VecDeque<Event>,
    pub auto_ack: bool,
    /// Every UPDATE seen, in order.
    pub updates: Vec<TaskStatus>,
}

pub fn info(name: &str, partition_aware: bool, failover_timeout: f64) -> FrameworkInfo {
    let mut i = agora_client::framework_info(name, "*");
    i.user = "root".into();
    i.failover_timeout = failover_timeout;
    if !partition_aware {
        i.capabilities.retain(|c| c.kind != "PARTITION_AWARE");
    }
    i
}

impl Fw {
    pub async fn subscribe(master: &str, info: FrameworkInfo) -> Fw {
        let s = Scheduler::subscribe(master, info.clone()).await.expect("subscribe");
        let mut info = info;
        info.id = Some(s.framework_id.clone());
        Fw { s, info, pending: VecDeque::new(), auto_ack: true, updates: vec![] }
    }

    async fn read(&mut self, deadline: Instant) -> Option<Event> {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, self.s.next_event()).await.ok()?.ok()?;
        if let (EventType::Update, Some(u)) = (ev.kind, &ev.update) {
            self.updates.push(u.status.clone());
            if self.auto_ack {
                self.s.acknowledge(&u.status).await.expect("acknowledge");
            }
        }
        Some(ev)
    }

    /// The next event matching `pred` (earlier unmatched events are kept for later).
    pub async fn next_matching(&mut self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.read(deadline).await?;
            if pred(&ev) {
                return Some(ev);
            }
            self.pending.push_back(ev);
        }
    }

    pub async fn offers(&mut self) -> Vec<Offer> {
        let ev = self.next_matching(Duration::from_secs(10), |e| e.kind == EventType::Offers).await.expect("no offers");
        ev.offers.map(|o| o.offers).unwrap_or_default()
    }

    /// The next update for `task` (any state).
    pub async fn update(&mut self, task: &str, timeout: Duration) -> Option<TaskStatus> {
        let t = task.to_string();
        let ev = self
            .next_matching(timeout, move |e| e.update.as_ref().map(|u| u.status.task_id.value == t).unwrap_or(false))
            .await?;
        ev.update.map(|u| u.status)
    }

    /// Waits for `task` to reach `state`; returns the states seen on the way (inclusive).
    pub async fn until_state(&mut self, task: &str, state: TaskState, timeout: Duration) -> Vec<TaskStatus> {
        let deadline = Instant::now() + timeout;
        let mut seen = vec![];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let s = self.update(task, left).await.unwrap_or_else(|| {
                panic!(
                    "task {task} never reached {state:?}; saw {:?}",
                    seen.iter().map(|s: &TaskStatus| (s.state, s.message.clone())).collect::<Vec<_>>()
                )
            });
            let done = s.state == state;
            seen.push(s);
            if done {
                return seen;
            }
        }
    }

    /// Launches command tasks on one offer: (task id, shell command).
    pub async fn launch_on(&self, offer: &Offer, tasks: &[(&str, &str)], cpus: f64, mem: f64) {
        let infos =
            tasks.iter().map(|(id, cmd)| task_info(id, &offer.agent_id, CommandInfo::shell(*cmd), cpus, mem)).collect();
        self.s.launch(vec![offer.id.clone()], infos, 0.0).await.expect("launch");
    }
}

pub fn task_info(id: &str, agent: &AgentId, command: CommandInfo, cpus: f64, mem: f64) -> TaskInfo {
    TaskInfo::command(
        TaskId::new(id),
        agent.clone(),
        vec![Resource::scalar("cpus", cpus), Resource::scalar("mem", mem)],
        command,
    )
}

pub fn states(v: &[TaskStatus]) -> Vec<TaskState> {
    v.iter().map(|s| s.state).collect()
}

/// The first offer that comes.
pub async fn one_offer(fw: &mut Fw) -> Offer {
    loop {
        if let Some(o) = fw.offers().await.into_iter().next() {
            return o;
        }
    }
}

/// Every update of task `id` up to and including its terminal one (each within `timeout`).
pub async fn until_terminal(fw: &mut Fw, id: &str, timeout: Duration) -> Vec<TaskStatus> {
    let mut seen = vec![];
    loop {
        let s =
            fw.update(id, timeout).await.unwrap_or_else(|| panic!("task {id} did not end; saw {:?}", states(&seen)));
        let done = s.state.is_terminal();
        seen.push(s);
        if done {
            return seen;
        }
    }
}

/// A file of command task `task`'s sandbox on agent 0 (empty when it is not there).
pub fn sandbox_file(c: &Cluster, fw: &Fw, agent: &AgentId, task: &str, file: &str) -> String {
    let p = c
        .dir
        .join("agent0/slaves")
        .join(&agent.value)
        .join("frameworks")
        .join(&fw.s.framework_id.value)
        .join("executors")
        .join(task)
        .join("runs/latest")
        .join(file);
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Waits until agent `i` says it is registered with the master (`slave/registered`).
pub async fn wait_agent_registered(c: &Cluster, i: usize, timeout: Duration) {
    let agent = c.agents[i].addr.clone();
    let ok = wait_until(timeout, || async {
        let m = agora_http::Client::new()
            .get(&format!("http://{agent}/metrics/snapshot"), Duration::from_secs(2))
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&m.body).ok()?;
        (v["slave/registered"] == 1).then_some(())
    })
    .await;
    assert!(ok.is_some(), "agent {i} did not register:\n{}", c.logs());
}
