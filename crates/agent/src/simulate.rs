//! Simulated agents for scale testing (`agora agent --simulate N`).
//!
//! Each simulated agent speaks the real agent protocol over its own connection: it
//! registers (and re-registers with its frameworks and tasks after a master failover),
//! answers pings, and runs a fake containerizer whose tasks go `TASK_RUNNING` at once and
//! `TASK_FINISHED` after `task_duration` (or never). Status updates are reliable as on a
//! real agent: one in flight per task, retried until acknowledged, resent after a
//! re-registration. Nothing is written to disk; the master cannot tell these agents from
//! real ones.
//!
//! Several processes can simulate agents against one master: give each its own `name`.
//! By default agents share HTTP/2 connections (`agents_per_connection`, each agent on its
//! own streams); with one agent per connection, connections leave from `local_ips` in turn
//! so tens of thousands of agents do not run out of ephemeral ports.
use crate::link::{detector, jitter, not_leader};
use agora_api::agent_proto::{AgentToMaster, MasterToAgent, StatusUpdate, AGENT_PATH};
use agora_api::json::Bytes as B64;
use agora_api::{
    AgentInfo, Attribute, ExecutorId, ExecutorInfo, FrameworkId, FrameworkInfo, Reason, Resource, Resources, Source,
    TaskId, TaskInfo, TaskState, TaskStatus,
};
use agora_http::http::StatusCode;
use agora_http::{base_url, Client, ClientError};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What every simulated agent of one process looks like.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// `--master`: one master, a list, or `etcd://...`.
    pub master: String,
    pub count: usize,
    /// Each agent's total resources.
    pub resources: Resources,
    pub attributes: Vec<Attribute>,
    /// How long a task runs before it finishes; `None`: until killed.
    pub task_duration: Option<Duration>,
    /// Unique per process: agents are `<name>-<i>` (their hostnames and pids).
    pub name: String,
    /// Registrations are spread evenly over this long (0: all at once, a storm).
    pub ramp: Duration,
    /// First retry interval of unacknowledged status updates.
    pub status_update_retry_interval: Duration,
    /// Addresses connections leave from, used in turn (empty: the system's choice).
    pub local_ips: Vec<IpAddr>,
    /// Agents sharing one HTTP/2 connection (each keeps its own stream and session); 1:
    /// every agent has its own HTTP/1.1 connection, as real agents do. A process here may
    /// hold at most 20,000 files, so tens of thousands of agents must share connections.
    pub agents_per_connection: usize,
    /// Ended tasks each agent reports when it re-registers, made up from its running ones
    /// (same framework and resources, `TASK_FINISHED`): the history a long-running agent
    /// holds, which a master that failed over rebuilds its completed tasks from. Mesos's
    /// own failover benchmark makes its agents' completed tasks up the same way.
    pub completed_tasks: usize,
}

/// Counters of one simulation process, shared by its agents.
#[derive(Debug, Default)]
pub struct SimStats {
    pub registered: AtomicU64,
    pub reregistered: AtomicU64,
    pub connected: AtomicU64,
    pub disconnects: AtomicU64,
    pub launched: AtomicU64,
    pub running: AtomicU64,
    pub finished: AtomicU64,
    pub killed: AtomicU64,
    pub updates_sent: AtomicU64,
    pub updates_acked: AtomicU64,
    pub pings: AtomicU64,
    pub shut_down: AtomicU64,
}

impl SimStats {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "registered": self.registered.load(Relaxed),
            "reregistered": self.reregistered.load(Relaxed),
            "connected": self.connected.load(Relaxed),
            "disconnects": self.disconnects.load(Relaxed),
            "launched": self.launched.load(Relaxed),
            "running": self.running.load(Relaxed),
            "finished": self.finished.load(Relaxed),
            "killed": self.killed.load(Relaxed),
            "updates_sent": self.updates_sent.load(Relaxed),
            "updates_acked": self.updates_acked.load(Relaxed),
            "pings": self.pings.load(Relaxed),
            "shut_down": self.shut_down.load(Relaxed),
        })
    }
}

/// A running simulation; dropping it stops every simulated agent.
pub struct Simulation {
    pub stats: Arc<SimStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Simulation {
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Simulation {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `config.count` simulated agents.
pub fn start(config: SimConfig) -> Result<Simulation, String> {
    let detector = detector(&config.master)?;
    let stats = Arc::new(SimStats::default());
    let per = config.agents_per_connection.max(1);
    let clients: Vec<Client> = if per > 1 {
        (0..config.count.div_ceil(per).max(1)).map(|_| Client::http2()).collect()
    } else if config.local_ips.is_empty() {
        vec![Client::new()]
    } else {
        config.local_ips.iter().map(|ip| Client::bound_to(*ip)).collect()
    };
    let shared = Arc::new(Shared {
        inflight: Arc::new(tokio::sync::Semaphore::new(CALLS_IN_FLIGHT)),
        config: config.clone(),
        stats: stats.clone(),
        detector,
        answered: tokio::sync::watch::channel(0).0,
        probing: std::sync::atomic::AtomicBool::new(false),
    });
    let mut tasks = Vec::with_capacity(config.count);
    for i in 0..config.count {
        let delay = if config.count > 1 { config.ramp.mul_f64(i as f64 / config.count as f64) } else { Duration::ZERO };
        let client =
            if per > 1 { clients[(i / per) % clients.len()].clone() } else { clients[i % clients.len()].clone() };
        let agent = SimAgent::new(shared.clone(), client, i);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            agent.run().await
        }));
    }
    Ok(Simulation { stats, tasks })
}

/// Reconnection backoff cap: like a Mesos agent that learns of a new leader and
/// re-registers after a random delay of up to `--registration_backoff_factor` (1 s).
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A simulated agent encodes its re-registration ahead of need once its state has been
/// quiet this long (plus up to as much again, to spread the work): after a master failover
/// 40,000 agents re-register at once, and the simulator's encoding would otherwise take
/// the cores of the master being measured. A real agent has a machine of its own.
const ENCODE_AFTER_QUIET: Duration = Duration::from_secs(5);

/// Calls in flight at once from one simulating process (each holds a connection).
const CALLS_IN_FLIGHT: usize = 256;

struct Shared {
    inflight: Arc<tokio::sync::Semaphore>,
    config: SimConfig,
    stats: Arc<SimStats>,
    detector: Arc<agora_registry::detector::Detector>,
    /// Successful probes of the master so far (see [`Shared::master_answers`]).
    answered: tokio::sync::watch::Sender<u64>,
    probing: std::sync::atomic::AtomicBool,
}

/// How often the shared probe asks a master that went away whether it is back.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

impl Shared {
    /// Returns once the leading master (as the detector finds it) answers `/health`, as one
    /// probe per process sees it. Agents that lost their master wait here rather than each
    /// building and sending its whole re-registration into a refused connection at every
    /// backoff step: the simulator's two cores are shared with the master it measures. A
    /// Mesos agent likewise waits for its detector's news of a leader, then re-registers
    /// after a random delay of up to 1 s (the caller's part).
    async fn master_answers(self: &Arc<Self>) {
        let mut rx = self.answered.subscribe();
        let seen = *rx.borrow_and_update();
        if !self.probing.swap(true, Relaxed) {
            let me = self.clone();
            tokio::spawn(async move {
                let client = Client::new();
                loop {
                    if let Some(leader) = me.detector.leader().await {
                        let url = format!("{}/health", base_url(&leader));
                        if client.get(&url, Duration::from_secs(1)).await.is_ok_and(|r| r.status.is_success()) {
                            break;
                        }
                        me.detector.forget();
                    }
                    tokio::time::sleep(PROBE_INTERVAL).await;
                }
                me.probing.store(false, Relaxed);
                me.answered.send_modify(|n| *n += 1);
            });
        }
        let _ = rx.wait_for(|n| *n > seen).await;
    }
}

struct SimTask {
    framework_id: FrameworkId,
    info: TaskInfo,
    resources: Vec<Resource>,
    state: TaskState,
    /// Unacknowledged updates, oldest first; only the head is in flight.
    pending: std::collections::VecDeque<TaskStatus>,
    statuses: Vec<TaskStatus>,
    retry_interval: Duration,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Encode the re-registration if the agent's state has been quiet long enough.
    Encode,
    Finish(TaskId),
    /// Resend the head update of the task if it is still this one (by uuid).
    Retry(TaskId, Vec<u8>),
}

struct SimAgent {
    shared: Arc<Shared>,
    client: Client,
    info: AgentInfo,
    session_id: String,
    frameworks: HashMap<FrameworkId, FrameworkInfo>,
    executors: HashMap<(FrameworkId, ExecutorId), ExecutorInfo>,
    tasks: HashMap<TaskId, SimTask>,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    timer_seq: u64,
    /// Calls that came back 403 / 307 / 503 send their session here: a re-registration if
    /// it is still the current one (see `link`: a refused call of an older session is not
    /// news, and acting on it turned a busy master into a storm of re-registrations).
    resync_tx: mpsc::UnboundedSender<String>,
    resync_rx: mpsc::UnboundedReceiver<String>,
    stopped: bool,
    /// The re-registration, encoded once the state has been quiet for
    /// [`ENCODE_AFTER_QUIET`]; any change drops it.
    registration: Option<Vec<u8>>,
    last_change: Instant,
    encode_pending: bool,
}

impl SimAgent {
    fn new(shared: Arc<Shared>, client: Client, index: usize) -> SimAgent {
        let hostname = format!("{}-{index}", shared.config.name);
        let info = AgentInfo {
            hostname,
            port: 5051,
            resources: shared.config.resources.clone().into_vec(),
            attributes: shared.config.attributes.clone(),
            id: None,
            domain: None,
        };
        let (resync_tx, resync_rx) = mpsc::unbounded_channel();
        SimAgent {
            shared,
            client,
            info,
            session_id: String::new(),
            frameworks: HashMap::new(),
            executors: HashMap::new(),
            tasks: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            resync_tx,
            resync_rx,
            stopped: false,
            registration: None,
            last_change: Instant::now(),
            encode_pending: false,
        }
    }

    async fn run(mut self) {
        let stats = self.shared.stats.clone();
        let mut backoff = Duration::from_millis(100);
        while !self.stopped {
            let Some(leader) = self.shared.detector.leader().await else {
                tokio::time::sleep(jitter(backoff).max(Duration::from_millis(10))).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            };
            let url = format!("{}{}", base_url(&leader), AGENT_PATH);
            let encoded = match self.registration.clone() {
                Some(b) => Ok(b),
                None => self.registration_body(),
            };
            let body = match encoded {
                Ok(b) => b,
                Err(e) => {
                    // Cannot happen for the types written; stop this agent rather than spin.
                    tracing::error!(agent = %self.info.hostname, error = %e, "cannot encode the registration");
                    return;
                }
            };
            // Whether the master may have gone: then wait until it answers again.
            let mut lost = false;
            match self.client.subscribe_json(&url, &[], body, Duration::from_secs(30)).await {
                Ok(mut stream) => {
                    backoff = Duration::from_millis(100);
                    while self.resync_rx.try_recv().is_ok() {}
                    loop {
                        let deadline = self.timers.peek().map(|Reverse((t, _, _))| *t);
                        tokio::select! {
                            rec = stream.next() => match rec {
                                Some(Ok(r)) => match serde_json::from_slice::<MasterToAgent>(&r) {
                                    Ok(MasterToAgent::Ping) => self.on_message(MasterToAgent::Ping, &url),
                                    Ok(m) => {
                                        self.changed();
                                        self.on_message(m, &url);
                                    }
                                    Err(e) => tracing::warn!(error = %e, "undecodable message from the master"),
                                },
                                _ => break,
                            },
                            _ = sleep_until(deadline) => self.on_timers(&url),
                            Some(refused) = self.resync_rx.recv() => {
                                if crate::link::refusal_ends_session(&self.session_id, &refused) {
                                    break;
                                }
                            }
                        }
                        if self.stopped {
                            return;
                        }
                    }
                    if !self.session_id.is_empty() {
                        stats.connected.fetch_sub(1, Relaxed);
                        stats.disconnects.fetch_add(1, Relaxed);
                        self.session_id.clear();
                    }
                    self.shared.detector.forget();
                    lost = true;
                }
                Err(e) if not_leader(&e) => {
                    if let Some(l) = self.shared.detector.ask(&leader).await.filter(|l| *l != leader) {
                        self.shared.detector.remember(&l);
                    } else {
                        self.shared.detector.forget();
                    }
                }
                Err(e) => {
                    tracing::debug!(agent = %self.info.hostname, error = %e, "registration failed");
                    if matches!(&e, ClientError::Status { status, .. } if *status == StatusCode::FORBIDDEN) {
                        // Marked gone: a real agent would need a new identity to come back.
                        tracing::warn!(agent = %self.info.hostname, error = %e, "refused by the master; stopping");
                        stats.shut_down.fetch_add(1, Relaxed);
                        return;
                    }
                    lost = !matches!(e, ClientError::Status { .. });
                    self.shared.detector.forget();
                }
            }
            if lost && !self.stopped {
                self.shared.master_answers().await;
                tokio::time::sleep(jitter(MAX_BACKOFF)).await;
                backoff = Duration::from_millis(100);
                continue;
            }
            tokio::time::sleep(jitter(backoff).max(Duration::from_millis(10))).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The (re-)registration call as JSON, written from the agent's state: 40,000 agents
    /// re-registering 400,000 tasks after a failover would otherwise copy every task to
    /// encode it, and escape its strings a byte at a time, on the cores the master being
    /// measured needs.
    fn registration_body(&self) -> Result<Vec<u8>, serde_json::Error> {
        let version = agora_api::MESOS_VERSION;
        let Some(agent_id) = self.info.id.as_ref() else {
            return serde_json::to_vec(&Registration::Register { agent_info: &self.info, version });
        };
        let executors: Vec<ExecutorRef<'_>> = self
            .executors
            .iter()
            .map(|((framework_id, _), executor_info)| ExecutorRef { framework_id, executor_info })
            .collect();
        let mut out = Vec::with_capacity(1024 + 1536 * self.tasks.len());
        out.extend_from_slice(b"{\"REREGISTER\":{\"agent_info\":");
        serde_json::to_writer(&mut out, &self.info)?;
        out.extend_from_slice(b",\"version\":");
        serde_json::to_writer(&mut out, version)?;
        out.extend_from_slice(b",\"frameworks\":");
        serde_json::to_writer(&mut out, &self.frameworks.values().collect::<Vec<_>>())?;
        out.extend_from_slice(b",\"executors\":");
        serde_json::to_writer(&mut out, &executors)?;
        out.extend_from_slice(b",\"tasks\":[");
        for (i, (task_id, task)) in self.tasks.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            TaskReport { agent_id, task_id, task }.write(&mut out)?;
        }
        out.push(b']');
        let running: Vec<(&TaskId, &SimTask)> = self.tasks.iter().filter(|(_, t)| !t.state.is_terminal()).collect();
        let n = if running.is_empty() { 0 } else { self.shared.config.completed_tasks };
        if n > 0 {
            out.extend_from_slice(b",\"completed_tasks\":[");
            for k in 0..n {
                if k > 0 {
                    out.push(b',');
                }
                let (task_id, task) = running[k % running.len()];
                write_made_up_completed(&mut out, agent_id, task_id, task, k)?;
            }
            out.push(b']');
        }
        out.extend_from_slice(b"}}");
        Ok(out)
    }

    fn on_message(&mut self, m: MasterToAgent, url: &str) {
        let stats = &self.shared.stats;
        match m {
            MasterToAgent::Registered { agent_id, session_id, .. }
            | MasterToAgent::Reregistered { agent_id, session_id, .. } => {
                if self.info.id.is_none() {
                    stats.registered.fetch_add(1, Relaxed);
                } else {
                    stats.reregistered.fetch_add(1, Relaxed);
                }
                if self.session_id.is_empty() {
                    stats.connected.fetch_add(1, Relaxed);
                }
                self.info.id = Some(agent_id);
                self.session_id = session_id;
                // Whatever was in flight may have been lost with the old session.
                let heads: Vec<TaskId> =
                    self.tasks.iter().filter(|(_, t)| !t.pending.is_empty()).map(|(id, _)| id.clone()).collect();
                for tid in heads {
                    self.send_head(&tid, url);
                }
            }
            MasterToAgent::RunTask { framework_info, task, resources } => {
                let Some(fid) = framework_info.id.clone() else { return };
                stats.launched.fetch_add(1, Relaxed);
                if let Some(e) = &task.executor {
                    self.executors.insert((fid.clone(), e.executor_id.clone()), e.clone());
                }
                self.frameworks.insert(fid.clone(), framework_info);
                let tid = task.task_id.clone();
                if self.tasks.get(&tid).is_some_and(|t| !t.state.is_terminal()) {
                    return;
                }
                let resources = if resources.is_empty() { task.resources.clone() } else { resources };
                self.tasks.insert(
                    tid.clone(),
                    SimTask {
                        framework_id: fid,
                        info: task,
                        resources,
                        state: TaskState::Staging,
                        pending: Default::default(),
                        statuses: vec![],
                        retry_interval: self.shared.config.status_update_retry_interval,
                    },
                );
                self.transition(&tid, TaskState::Running, None, url);
                if let Some(d) = self.shared.config.task_duration {
                    self.add_timer(Instant::now() + d, Timer::Finish(tid));
                }
            }
            MasterToAgent::KillTask { framework_id, task_id, .. } => {
                match self.tasks.get(&task_id) {
                    Some(t) if !t.state.is_terminal() => {
                        self.transition(&task_id, TaskState::Killed, None, url);
                    }
                    Some(_) => {}
                    None => {
                        // Unknown here: tell the master it is lost, as a real agent does.
                        let mut s = TaskStatus::new(task_id.clone(), TaskState::Lost);
                        s.reason = Some(Reason::ReasonTaskUnknown);
                        s.source = Some(Source::Agent);
                        s.message = Some("Task is unknown to the agent".into());
                        self.send_update(framework_id, s, url);
                    }
                }
            }
            MasterToAgent::ShutdownExecutor { framework_id, executor_id } => {
                let victims: Vec<TaskId> = self
                    .tasks
                    .iter()
                    .filter(|(_, t)| {
                        t.framework_id == framework_id
                            && t.info.executor.as_ref().map(|e| &e.executor_id) == Some(&executor_id)
                            && !t.state.is_terminal()
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for tid in victims {
                    self.transition(&tid, TaskState::Killed, Some(Reason::ReasonExecutorTerminated), url);
                }
                self.executor_exited(&framework_id, &executor_id, url);
            }
            MasterToAgent::ShutdownFramework { framework_id } => {
                let victims: Vec<TaskId> = self
                    .tasks
                    .iter()
                    .filter(|(_, t)| t.framework_id == framework_id && !t.state.is_terminal())
                    .map(|(id, _)| id.clone())
                    .collect();
                for tid in victims {
                    self.transition(&tid, TaskState::Killed, Some(Reason::ReasonFrameworkRemoved), url);
                }
                // Nobody will acknowledge these: the framework is gone.
                self.tasks.retain(|_, t| t.framework_id != framework_id);
                self.executors.retain(|(f, _), _| *f != framework_id);
                self.frameworks.remove(&framework_id);
            }
            MasterToAgent::UpdateFramework { framework_info } => {
                if let Some(fid) = framework_info.id.clone() {
                    if self.frameworks.contains_key(&fid) {
                        self.frameworks.insert(fid, framework_info);
                    }
                }
            }
            MasterToAgent::Acknowledge { framework_id: _, task_id, uuid } => {
                let Some(t) = self.tasks.get_mut(&task_id) else { return };
                if t.pending.front().and_then(|s| s.uuid.as_ref()) != Some(&uuid) {
                    return;
                }
                t.pending.pop_front();
                t.retry_interval = self.shared.config.status_update_retry_interval;
                stats.updates_acked.fetch_add(1, Relaxed);
                if !t.pending.is_empty() {
                    self.send_head(&task_id, url);
                } else if t.state.is_terminal() {
                    let t = self.tasks.remove(&task_id);
                    if let Some(e) = t.and_then(|t| t.info.executor.map(|e| (t.framework_id, e.executor_id))) {
                        let (fid, eid) = e;
                        let busy = self.tasks.values().any(|t| {
                            t.framework_id == fid && t.info.executor.as_ref().map(|x| &x.executor_id) == Some(&eid)
                        });
                        if !busy {
                            self.executor_exited(&fid, &eid, url);
                        }
                    }
                }
            }
            MasterToAgent::FrameworkMessage { .. } => {}
            MasterToAgent::CheckpointResources { .. } => {}
            MasterToAgent::Ping => {
                stats.pings.fetch_add(1, Relaxed);
                if let Some(agent_id) = self.info.id.clone() {
                    self.post(AgentToMaster::Pong { agent_id, session_id: self.session_id.clone() }, url);
                }
            }
            MasterToAgent::Shutdown { message } => {
                tracing::warn!(agent = %self.info.hostname, %message, "the master shut this agent down");
                stats.shut_down.fetch_add(1, Relaxed);
                self.stopped = true;
            }
        }
    }

    fn executor_exited(&mut self, fid: &FrameworkId, eid: &ExecutorId, url: &str) {
        if self.executors.remove(&(fid.clone(), eid.clone())).is_none() {
            return;
        }
        let Some(agent_id) = self.info.id.clone() else { return };
        self.post(
            AgentToMaster::ExecutorExited {
                agent_id,
                session_id: self.session_id.clone(),
                framework_id: fid.clone(),
                executor_id: eid.clone(),
                status: Some(0),
            },
            url,
        );
    }

    /// The agent's state (may have) changed: its encoded re-registration is stale, and is
    /// encoded again once the state has been quiet for [`ENCODE_AFTER_QUIET`].
    fn changed(&mut self) {
        self.registration = None;
        self.last_change = Instant::now();
        if !self.encode_pending {
            self.encode_pending = true;
            self.add_timer(self.last_change + ENCODE_AFTER_QUIET + jitter(ENCODE_AFTER_QUIET), Timer::Encode);
        }
    }

    /// Encodes the re-registration if nothing changed for [`ENCODE_AFTER_QUIET`] before
    /// `now`; otherwise looks again when it may have.
    fn encode_if_quiet(&mut self, now: Instant) {
        let quiet_at = self.last_change + ENCODE_AFTER_QUIET;
        if now < quiet_at {
            self.add_timer(quiet_at + jitter(ENCODE_AFTER_QUIET), Timer::Encode);
            return;
        }
        self.encode_pending = false;
        if self.registration.is_none() && self.info.id.is_some() {
            self.registration = self.registration_body().ok();
        }
    }

    /// Moves a task to `state` and queues its status update.
    fn transition(&mut self, tid: &TaskId, state: TaskState, reason: Option<Reason>, url: &str) {
        self.changed();
        let stats = &self.shared.stats;
        let Some(t) = self.tasks.get_mut(tid) else { return };
        if t.state == TaskState::Running {
            stats.running.fetch_sub(1, Relaxed);
        }
        match state {
            TaskState::Running => stats.running.fetch_add(1, Relaxed),
            TaskState::Finished => stats.finished.fetch_add(1, Relaxed),
            TaskState::Killed => stats.killed.fetch_add(1, Relaxed),
            _ => 0,
        };
        t.state = state;
        let mut s = TaskStatus::new(tid.clone(), state);
        s.source = Some(Source::Executor);
        s.reason = reason;
        s.agent_id = self.info.id.clone();
        s.executor_id = t.info.executor.as_ref().map(|e| e.executor_id.clone());
        s.timestamp = Some(crate::state::now_secs());
        s.uuid = Some(B64(uuid::Uuid::new_v4().as_bytes().to_vec()));
        t.statuses.push(s.clone());
        t.pending.push_back(s);
        if t.pending.len() == 1 {
            self.send_head(tid, url);
        }
    }

    fn send_head(&mut self, tid: &TaskId, url: &str) {
        let Some(t) = self.tasks.get(tid) else { return };
        let Some(head) = t.pending.front().cloned() else { return };
        let retry = t.retry_interval;
        let fid = t.framework_id.clone();
        let latest = t.state;
        let uuid = head.uuid.as_ref().map(|u| u.0.clone()).unwrap_or_default();
        self.add_timer(Instant::now() + retry, Timer::Retry(tid.clone(), uuid));
        let Some(agent_id) = self.info.id.clone() else { return };
        if self.session_id.is_empty() {
            return;
        }
        self.shared.stats.updates_sent.fetch_add(1, Relaxed);
        let update = StatusUpdate { framework_id: fid, status: head, latest_state: Some(latest) };
        self.post(AgentToMaster::StatusUpdate { agent_id, session_id: self.session_id.clone(), update }, url);
    }

    /// An update for a task this agent does not track: sent once, never retried.
    fn send_update(&mut self, fid: FrameworkId, mut status: TaskStatus, url: &str) {
        let Some(agent_id) = self.info.id.clone() else { return };
        status.agent_id = Some(agent_id.clone());
        status.timestamp = Some(crate::state::now_secs());
        let update = StatusUpdate { framework_id: fid, status, latest_state: None };
        self.post(AgentToMaster::StatusUpdate { agent_id, session_id: self.session_id.clone(), update }, url);
    }

    fn post(&self, call: AgentToMaster, url: &str) {
        let client = self.client.clone();
        let url = url.to_string();
        let resync = self.resync_tx.clone();
        let permit = self.shared.inflight.clone();
        tokio::spawn(async move {
            let _p = permit.acquire_owned().await;
            let session = call.session_id().unwrap_or_default().to_string();
            match client.call(&url, &[], &call, Duration::from_secs(30)).await {
                Ok(_) => {}
                Err(ClientError::Status { status, .. }) if status == StatusCode::FORBIDDEN => {
                    let _ = resync.send(session);
                }
                Err(e) if not_leader(&e) => {
                    let _ = resync.send(session);
                }
                Err(e) => tracing::debug!(error = %e, "call to the master failed (retried if it matters)"),
            }
        });
    }

    fn add_timer(&mut self, at: Instant, t: Timer) {
        self.timer_seq += 1;
        self.timers.push(Reverse((at, self.timer_seq, t)));
    }

    fn on_timers(&mut self, url: &str) {
        let now = Instant::now();
        while self.timers.peek().is_some_and(|Reverse((t, _, _))| *t <= now) {
            let Some(Reverse((_, _, timer))) = self.timers.pop() else { break };
            match timer {
                Timer::Encode => self.encode_if_quiet(now),
                Timer::Finish(tid) => {
                    if self.tasks.get(&tid).is_some_and(|t| t.state == TaskState::Running) {
                        self.transition(&tid, TaskState::Finished, None, url);
                    }
                }
                Timer::Retry(tid, uuid) => {
                    let Some(t) = self.tasks.get_mut(&tid) else { continue };
                    if t.pending.front().and_then(|s| s.uuid.as_ref()).map(|u| &u.0) != Some(&uuid) {
                        continue;
                    }
                    // Mesos's schedule: 10 s doubling up to 10 min.
                    t.retry_interval = (t.retry_interval * 2).min(Duration::from_secs(600));
                    self.send_head(&tid, url);
                }
            }
        }
    }
}

/// `AgentToMaster::Register` as it encodes, borrowed from a [`SimAgent`] (`Reregister` is
/// written by [`SimAgent::registration_body`]).
#[derive(Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Registration<'a> {
    Register { agent_info: &'a AgentInfo, version: &'static str },
}

/// `ExecutorReport`, borrowed.
#[derive(Serialize)]
struct ExecutorRef<'a> {
    framework_id: &'a FrameworkId,
    executor_info: &'a ExecutorInfo,
}

/// A task as a `Task` message encodes (the fields a simulated task has), borrowed.
struct TaskReport<'a> {
    agent_id: &'a agora_api::AgentId,
    task_id: &'a TaskId,
    task: &'a SimTask,
}

impl TaskReport<'_> {
    /// Appends the task as JSON, byte for byte what serde writes for the `Task` it
    /// reports, with `agora_api::encode`'s writers for the strings, resources and statuses.
    fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        use agora_api::encode;
        let t = self.task;
        let id = |out: &mut Vec<u8>, key: &[u8], v: &str| {
            out.extend_from_slice(key);
            out.extend_from_slice(b"{\"value\":");
            encode::string(out, v);
            out.push(b'}');
        };
        out.extend_from_slice(b"{\"name\":");
        encode::string(out, &t.info.name);
        id(out, b",\"task_id\":", &self.task_id.value);
        id(out, b",\"framework_id\":", &t.framework_id.value);
        if let Some(e) = &t.info.executor {
            id(out, b",\"executor_id\":", &e.executor_id.value);
        }
        id(out, b",\"agent_id\":", &self.agent_id.value);
        out.extend_from_slice(b",\"state\":");
        encode::string(out, t.state.name());
        write_list(out, b",\"resources\":[", &t.resources, encode::resource)?;
        write_list(out, b",\"statuses\":[", &t.statuses, encode::status)?;
        if let Some(h) = t.pending.front() {
            out.extend_from_slice(b",\"status_update_state\":");
            encode::string(out, h.state.name());
            if let Some(u) = &h.uuid {
                out.extend_from_slice(b",\"status_update_uuid\":");
                serde_json::to_writer(&mut *out, u)?;
            }
        }
        if let Some(l) = &t.info.labels {
            out.extend_from_slice(b",\"labels\":");
            serde_json::to_writer(&mut *out, l)?;
        }
        out.push(b'}');
        Ok(())
    }
}

/// Appends the `k`th made-up ended task of an agent (see [`SimConfig::completed_tasks`]):
/// `like`'s framework, executor and resources, finished, with one status.
fn write_made_up_completed(
    out: &mut Vec<u8>,
    agent_id: &agora_api::AgentId,
    like_id: &TaskId,
    like: &SimTask,
    k: usize,
) -> Result<(), serde_json::Error> {
    let task_id = TaskId::new(format!("{}-done-{k}", like_id.value).as_str());
    let mut status = TaskStatus::new(task_id.clone(), TaskState::Finished);
    status.source = Some(Source::Executor);
    status.agent_id = Some(agent_id.clone());
    status.executor_id = like.info.executor.as_ref().map(|e| e.executor_id.clone());
    status.timestamp = like.statuses.first().and_then(|s| s.timestamp);
    // The same bytes at every encoding (nobody acknowledges an ended task's update).
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&(k as u64).to_le_bytes());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(like_id.value.as_str(), &mut h);
    uuid[8..].copy_from_slice(&std::hash::Hasher::finish(&h).to_le_bytes());
    status.uuid = Some(B64(uuid.to_vec()));
    let task = SimTask {
        framework_id: like.framework_id.clone(),
        info: TaskInfo { name: format!("{}-done", like.info.name), ..like.info.clone() },
        resources: like.resources.clone(),
        state: TaskState::Finished,
        pending: Default::default(),
        statuses: vec![status],
        retry_interval: like.retry_interval,
    };
    TaskReport { agent_id, task_id: &task_id, task: &task }.write(out)
}

/// Appends `key` (ending in `[`), the items and `]`; nothing for no items (serde's
/// `skip_serializing_if = "Vec::is_empty"`).
fn write_list<T>(
    out: &mut Vec<u8>,
    key: &[u8],
    items: &[T],
    write: fn(&mut Vec<u8>, &T) -> Result<(), serde_json::Error>,
) -> Result<(), serde_json::Error> {
    if items.is_empty() {
        return Ok(());
    }
    out.extend_from_slice(key);
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, x)?;
    }
    out.push(b']');
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_api::{AgentId, Task};

    #[test]
    fn a_borrowed_task_report_decodes_as_the_task_it_reports() {
        let info: TaskInfo = serde_json::from_value(serde_json::json!({
            "name": "web", "task_id": {"value": "t1"}, "agent_id": {"value": "a"},
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}}],
            "executor": {"executor_id": {"value": "e"}, "command": {"value": "x"}},
            "labels": {"labels": [{"key": "k", "value": "v"}]},
        }))
        .unwrap();
        let agent_id = AgentId::new("a");
        let tid = TaskId::new("t1");
        let mut running = TaskStatus::new(tid.clone(), TaskState::Running);
        running.uuid = Some(B64(vec![1, 2, 3]));
        running.timestamp = Some(12.5);
        let mut t = SimTask {
            framework_id: FrameworkId::new("f"),
            resources: info.resources.clone(),
            info,
            state: TaskState::Running,
            pending: [running.clone()].into(),
            statuses: vec![TaskStatus::new(tid.clone(), TaskState::Starting), running.clone()],
            retry_interval: Duration::from_secs(10),
        };
        let want = Task {
            name: "web".into(),
            task_id: tid.clone(),
            framework_id: FrameworkId::new("f"),
            executor_id: Some(ExecutorId::new("e")),
            agent_id: agent_id.clone(),
            state: TaskState::Running,
            resources: t.resources.clone(),
            statuses: t.statuses.clone(),
            status_update_state: Some(TaskState::Running),
            status_update_uuid: Some(B64(vec![1, 2, 3])),
            labels: t.info.labels.clone(),
            discovery: None,
            container: None,
            health_check: None,
            kill_policy: None,
            user: None,
            limits: None,
        };
        let report = |t: &SimTask| {
            let mut out = Vec::new();
            TaskReport { agent_id: &agent_id, task_id: &tid, task: t }.write(&mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(report(&t), serde_json::to_string(&want).unwrap());
        // Acknowledged, no executor, no labels: the optional fields go.
        t.pending.clear();
        t.info.executor = None;
        t.info.labels = None;
        let got: Task = serde_json::from_str(&report(&t)).unwrap();
        assert_eq!(
            got,
            Task { executor_id: None, status_update_state: None, status_update_uuid: None, labels: None, ..want }
        );
    }

    #[tokio::test]
    async fn the_registration_body_decodes_as_the_agents_state() {
        let config = SimConfig {
            master: "127.0.0.1:1".into(),
            count: 1,
            resources: Resources::parse("cpus:4;mem:1024").unwrap(),
            attributes: vec![],
            task_duration: None,
            name: "sim".into(),
            ramp: Duration::ZERO,
            status_update_retry_interval: Duration::from_secs(10),
            local_ips: vec![],
            agents_per_connection: 1,
            completed_tasks: 5,
        };
        let shared = Arc::new(Shared {
            inflight: Arc::new(tokio::sync::Semaphore::new(1)),
            detector: detector(&config.master).unwrap(),
            config,
            stats: Arc::new(SimStats::default()),
            answered: tokio::sync::watch::channel(0).0,
            probing: std::sync::atomic::AtomicBool::new(false),
        });
        let mut a = SimAgent::new(shared, Client::new(), 7);
        match serde_json::from_slice(&a.registration_body().unwrap()).unwrap() {
            AgentToMaster::Register { agent_info, version } => {
                assert_eq!(agent_info, a.info);
                assert_eq!(version, agora_api::MESOS_VERSION);
            }
            other => panic!("not a REGISTER: {other:?}"),
        }
        // Registered, with a framework, an executor and three tasks (one "quoted\n").
        a.info.id = Some(AgentId::new("agent-7"));
        let fid = FrameworkId::new("fw");
        let fi: FrameworkInfo =
            serde_json::from_value(serde_json::json!({"user": "u", "name": "f", "id": {"value": "fw"}})).unwrap();
        a.frameworks.insert(fid.clone(), fi.clone());
        let ei: ExecutorInfo =
            serde_json::from_value(serde_json::json!({"executor_id": {"value": "e"}, "command": {"value": "x"}}))
                .unwrap();
        a.executors.insert((fid.clone(), ei.executor_id.clone()), ei.clone());
        for (k, name) in ["plain", "with \"quotes\"\n", "third"].iter().enumerate() {
            let tid = TaskId::new(format!("t{k}"));
            let mut info: TaskInfo = serde_json::from_value(serde_json::json!({
                "name": name, "task_id": {"value": tid.value.as_str()}, "agent_id": {"value": "agent-7"},
                "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}}],
            }))
            .unwrap();
            if k == 1 {
                info.executor = Some(ei.clone());
            }
            let running = TaskStatus::new(tid.clone(), TaskState::Running);
            a.tasks.insert(
                tid,
                SimTask {
                    framework_id: fid.clone(),
                    resources: info.resources.clone(),
                    info,
                    state: TaskState::Running,
                    pending: [running.clone()].into(),
                    statuses: vec![running],
                    retry_interval: Duration::from_secs(10),
                },
            );
        }
        let call: AgentToMaster = serde_json::from_slice(&a.registration_body().unwrap()).unwrap();
        let AgentToMaster::Reregister { agent_info, version, frameworks, executors, tasks, completed_tasks } = call
        else {
            panic!("not a REREGISTER: {call:?}")
        };
        // Five made-up ended tasks, like the running ones, each its own id.
        assert_eq!(completed_tasks.len(), 5);
        let mut done_ids = std::collections::HashSet::new();
        for t in &completed_tasks {
            assert!(done_ids.insert(t.task_id.value.to_string()), "{:?} twice", t.task_id);
            assert!(t.task_id.value.contains("-done-"), "{:?}", t.task_id);
            assert_eq!((t.state, &t.framework_id, t.agent_id.value.as_str()), (TaskState::Finished, &fid, "agent-7"));
            let like = tasks.iter().find(|r| t.task_id.value.starts_with(&format!("{}-done", r.task_id.value)));
            assert_eq!(Some(&t.resources), like.map(|r| &r.resources), "{t:?}");
            assert_eq!(t.statuses.len(), 1);
            assert_eq!(t.statuses[0].state, TaskState::Finished);
            assert!(t.statuses[0].uuid.is_some());
        }
        assert_eq!(agent_info, a.info);
        assert_eq!(version, agora_api::MESOS_VERSION);
        assert_eq!(frameworks, vec![fi.clone()]);
        assert_eq!(executors.len(), 1);
        assert_eq!((&executors[0].framework_id, &executors[0].executor_info), (&fid, &ei));
        let mut names: Vec<(String, String, Option<String>)> = tasks
            .iter()
            .map(|t| {
                assert_eq!(t.agent_id.value, "agent-7");
                assert_eq!(t.framework_id, fid);
                assert_eq!(t.state, TaskState::Running);
                assert_eq!(t.statuses.len(), 1);
                (t.task_id.value.to_string(), t.name.clone(), t.executor_id.as_ref().map(|e| e.value.to_string()))
            })
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                ("t0".into(), "plain".into(), None),
                ("t1".into(), "with \"quotes\"\n".into(), Some("e".into())),
                ("t2".into(), "third".into(), None),
            ]
        );

        // Kept encoded once the state has been quiet, and dropped by any change.
        a.changed();
        a.encode_if_quiet(Instant::now());
        assert!(a.registration.is_none(), "encoded before the state was quiet");
        a.encode_if_quiet(Instant::now() + ENCODE_AFTER_QUIET);
        assert_eq!(a.registration.as_deref(), Some(&a.registration_body().unwrap()[..]));
        a.changed();
        let info: TaskInfo = serde_json::from_value(serde_json::json!({
            "name": "new", "task_id": {"value": "t9"}, "agent_id": {"value": "agent-7"},
        }))
        .unwrap();
        a.on_message(
            MasterToAgent::RunTask { framework_info: fi, task: info, resources: vec![] },
            "http://127.0.0.1:1/x",
        );
        assert!(a.registration.is_none());
        a.encode_if_quiet(Instant::now() + ENCODE_AFTER_QUIET);
        let call: AgentToMaster = serde_json::from_slice(a.registration.as_ref().unwrap()).unwrap();
        let AgentToMaster::Reregister { tasks, .. } = call else { panic!("not a REREGISTER") };
        assert_eq!(tasks.len(), 4);
        assert!(tasks.iter().any(|t| t.task_id.value == "t9" && t.state == TaskState::Running));
    }
}
