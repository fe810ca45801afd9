//! The master's state and the one task that owns it.
//!
//! Every HTTP request becomes a [`Msg`]; the actor applies it to [`State`] and replies on a
//! oneshot channel. Timers (allocation, agent pings, heartbeats, failover timeouts) are
//! messages too, so nothing else ever touches the state.
//!
//! The actor acts only while it leads ([`Role::Leading`]). Leadership comes and goes as
//! [`Leadership`] messages from the driver in `crate::leader`: on election the actor
//! rebuilds its state from the registry (recovered agents wait to re-register, recovered
//! frameworks to re-subscribe); on losing it, it drops everything, which closes every
//! stream. Registry changes go to a [`Writer`] in order; agent admission and framework
//! registration are acknowledged only once their write is durable.
use crate::tasks::{SharedLedger, Sum, Tasks};
use crate::MasterConfig;
use agora_allocator::{Allocation, Allocator};
use agora_api::agent_proto::{AgentToMaster, ExecutorReport, MasterToAgent, StatusUpdate};
use agora_api::json::to_ascii_json;
use agora_api::maintenance::MaintenanceState;
use agora_api::quota::QuotaConfig;
use agora_api::scheduler::{self as sched, Call, CallType, Event};
use agora_api::*;
use agora_http::http::StatusCode;
use agora_registry::{AgentRecord, Op, Registry, RegistryError, Writer};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

mod operations;
mod policy;

/// An error answered to an API caller: Mesos's status code and a readable message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(m: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, message: m.into() }
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        ApiError { status: StatusCode::FORBIDDEN, message: m.into() }
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: m.into() }
    }
}

/// Who this master is in the cluster. The HTTP layer reads it (through a watch channel the
/// actor alone writes) to redirect or refuse calls that only a leader answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Role {
    /// Leading and serving.
    Leading,
    /// Elected, reading the registry: 503 until done.
    Recovering,
    /// Not leading: 307 to the leader when one is known, else 503.
    Following(Option<MasterInfo>),
}

/// What a registry write acknowledges once it is durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Ack {
    None,
    /// REGISTERED / REREGISTERED goes to the agent.
    Agent(AgentId),
    /// SUBSCRIBED goes to the framework.
    Framework(FrameworkId),
}

/// Messages from the leadership driver (`crate::leader`).
pub enum Leadership {
    /// Elected for `term`; the registry is being read.
    Recovering { term: u64 },
    /// The registry of `term` is read; the actor leads, writing through `writer`. A message
    /// on `abdicate` gives the leadership up (after a failed registry write).
    Elected { term: u64, registry: Registry, writer: Writer<Ack>, abdicate: mpsc::UnboundedSender<()> },
    /// Leadership of `term` is over.
    Lost { term: u64 },
    /// Not leading; the leader if known.
    Following(Option<MasterInfo>),
}

/// What a successful scheduler call answers.
#[derive(Debug, PartialEq)]
pub enum CallReply {
    Accepted,
    Ok,
}

/// Read-only views the HTTP layer asks for.
#[derive(Debug, Clone)]
pub enum Query {
    State,
    StateSummary,
    Slaves,
    Frameworks {
        framework_id: Option<String>,
    },
    Tasks {
        limit: usize,
        offset: usize,
        ascending: bool,
        framework_id: Option<String>,
        task_id: Option<String>,
    },
    Metrics,
    Roles,
    /// The operator API's GET_STATE and GET_TASKS, answered with tasks written in place.
    GetState,
    GetTasks,
}

impl Query {
    /// Whether the answer is a view of every task, encoded and streamed off the loop.
    pub fn is_big(&self) -> bool {
        matches!(
            self,
            Query::State
                | Query::StateSummary
                | Query::Slaves
                | Query::Frameworks { .. }
                | Query::GetState
                | Query::GetTasks
        )
    }
}

/// The answer to a [`Msg::Query`].
pub enum QueryReply {
    Json(Vec<u8>),
    View(crate::views::View),
}

pub enum Msg {
    Subscribe {
        call: Call,
        tx: agora_http::StreamTx,
        reply: oneshot::Sender<Result<String, ApiError>>,
    },
    Scheduler {
        call: Call,
        stream_id: Option<String>,
        reply: oneshot::Sender<Result<CallReply, ApiError>>,
    },
    AgentSubscribe {
        call: AgentToMaster,
        tx: agora_http::StreamTx,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    AgentCall {
        call: AgentToMaster,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Operator {
        call: operator::Call,
        reply: oneshot::Sender<Result<operator::Response, ApiError>>,
    },
    /// A read-only view: small ones answered as JSON bytes, the big ones as a
    /// [`View`](crate::views::View) to encode off the state loop.
    Query {
        query: Query,
        reply: oneshot::Sender<QueryReply>,
    },
    FrameworkStreamClosed {
        framework_id: FrameworkId,
        stream_id: String,
    },
    AgentStreamClosed {
        agent_id: AgentId,
        session_id: String,
    },
    FailoverTimeout {
        framework_id: FrameworkId,
        generation: u64,
    },
    Leadership(Leadership),
    /// A registry write of `term` completed.
    RegistryWritten {
        term: u64,
        acks: Vec<Ack>,
        result: Result<(), RegistryError>,
    },
    /// `--agent-reregister-timeout` after the election of `term`.
    ReregisterTimeout {
        term: u64,
    },
}

/// The HTTP layer's handle on the actor.
#[derive(Clone)]
pub struct Handle {
    pub tx: mpsc::UnboundedSender<Msg>,
    pub master_id: String,
    pub master_info: MasterInfo,
    pub flags: std::sync::Arc<Vec<(String, String)>>,
    pub start_time: f64,
    pub role: watch::Receiver<Role>,
}

impl Handle {
    /// Sends a message built around a reply channel and waits for the answer.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).ok()?;
        rx.await.ok()
    }
}

/// A subscription stream. Dropping it ends the HTTP response.
struct Stream {
    id: String,
    tx: agora_http::StreamTx,
    _cancel_watch: oneshot::Sender<()>,
    /// `--max-stream-backlog`.
    max_backlog: usize,
}

/// How long a reader over its backlog may take nothing before it is deemed dead.
const STALLED_AFTER: Duration = Duration::from_secs(10);

/// What became of an event sent on a stream.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Queued,
    /// The client went away.
    Gone,
    /// The reader fell too far behind (and stalled, or past 8x the limit): the stream was
    /// ended, as Kubernetes ends a too-slow watch; the stream-closed watch then runs the
    /// usual disconnection, and the client reconnects and reconciles.
    TooSlow {
        backlog: usize,
        idle: Duration,
    },
    /// Ended already for being too slow; the event is dropped.
    Closing,
}

impl Stream {
    fn send(&self, payload: &[u8]) -> Sent {
        if self.tx.is_aborted() {
            return Sent::Closing;
        }
        let backlog = self.tx.backlog_bytes();
        if backlog > self.max_backlog {
            let idle = self.tx.idle_for();
            if idle >= STALLED_AFTER || backlog > self.max_backlog.saturating_mul(8) {
                self.tx.abort();
                return Sent::TooSlow { backlog, idle };
            }
        }
        match self.tx.send(Bytes::from(recordio::encode(payload))) {
            Ok(()) => Sent::Queued,
            Err(_) => Sent::Gone,
        }
    }
}

/// A task the master tracks. Held behind `Arc` so that a big read (`/state`, GET_STATE) can
/// take a snapshot of every task in pointer copies and encode it off the state loop; the
/// loop changes an entry through `Arc::make_mut`, which copies it only while such a
/// snapshot still holds it.
#[derive(Clone)]
pub(crate) struct TaskEntry {
    /// The task; its `resources` are what the allocator charged (normalised on insertion).
    pub task: Task,
    /// Whether the resources went back to the allocator already (terminal or agent gone).
    pub released: bool,
}

impl TaskEntry {
    /// The task's resources as the allocator charged them.
    pub fn resources(&self) -> Resources {
        Resources(self.task.resources.clone())
    }

    /// Adds the task's resources to `acc` without copying them first.
    pub fn add_resources_to(&self, acc: &mut Resources) {
        for r in &self.task.resources {
            acc.add(r);
        }
    }
}

/// Appends a status to a task's history without the spare capacity `Vec::push` would
/// reserve (a master holds hundreds of thousands of these), its ids sharing the task's.
fn push_status(task: &mut Task, mut s: TaskStatus) {
    share_status_ids(task, &mut s);
    task.statuses.reserve_exact(1);
    task.statuses.push(s);
}

/// Points a status's ids at the task's own copies where they are equal, so that a task's
/// history holds no second copy of its task, agent or executor id.
fn share_status_ids(task: &Task, s: &mut TaskStatus) {
    share(&mut s.task_id, &task.task_id);
    if let Some(a) = s.agent_id.as_mut() {
        share(a, &task.agent_id);
    }
    if let Some(e) = s.executor_id.as_mut() {
        match &task.executor_id {
            Some(te) => share(e, te),
            // The command executor's id is the task's.
            None if e.value == task.task_id.value => e.value = task.task_id.value.clone(),
            None => {}
        }
    }
}

/// Makes a task's ids the master's own copies (`fid`, `aid`: the keys of its framework and
/// agent) where they are equal, and its statuses' ids the task's: 400,000 tasks then hold
/// one allocation per framework and agent id instead of one per task and status.
fn share_task_ids(task: &mut Task, fid: &FrameworkId, aid: &AgentId) {
    share(&mut task.framework_id, fid);
    share(&mut task.agent_id, aid);
    share_statuses(task);
}

/// Readies a task an agent reported for keeping: its resources merged and pointing at the
/// shared role names. Its lists hold no spare room: decoded lists are exactly their length
/// (`agora_api::json::exact_vec`), and `Resources::from_vec` shrinks what it merged.
fn adopt_reported(t: &mut Task, roles: &mut RoleNames) {
    t.resources = Resources::from_vec(std::mem::take(&mut t.resources)).into_vec();
    roles.share(&mut t.resources);
}

/// [`share_status_ids`] for every status of the task's history.
fn share_statuses(task: &mut Task) {
    let mut statuses = std::mem::take(&mut task.statuses);
    for s in &mut statuses {
        share_status_ids(task, s);
    }
    task.statuses = statuses;
}

/// `*id = canonical.clone()` if they are equal (a reference count, not a copy).
fn share<T: PartialEq + Clone>(id: &mut T, canonical: &T) {
    if id == canonical {
        *id = canonical.clone();
    }
}

pub(crate) struct Framework {
    pub info: FrameworkInfo,
    stream: Option<Stream>,
    pub active: bool,
    /// Known from the registry or an agent's report, not (yet) re-subscribed.
    pub recovered: bool,
    pub registered_time: f64,
    pub reregistered_time: Option<f64>,
    pub unregistered_time: Option<f64>,
    failover_generation: u64,
    pub offers: HashSet<OfferId>,
    /// Behind `Arc` (see [`TaskEntry`]); the maps' slack then costs a pointer per slot, not
    /// a whole entry.
    pub tasks: Tasks,
    pub unreachable_tasks: Tasks,
    pub completed_tasks: VecDeque<Arc<Task>>,
    pub executors: HashMap<AgentId, HashMap<ExecutorId, ExecutorInfo>>,
    pub suppressed_roles: Vec<String>,
}

impl Framework {
    pub fn id(&self) -> FrameworkId {
        self.info.id.clone().unwrap_or_default()
    }

    /// Appends an ended task to the framework's history, keeping the newest `keep`.
    fn add_completed(&mut self, task: Task, keep: usize) {
        self.completed_tasks.push_back(Arc::new(task));
        while self.completed_tasks.len() > keep {
            self.completed_tasks.pop_front();
        }
    }
    pub fn connected(&self) -> bool {
        self.stream.is_some()
    }
    fn send(&mut self, e: &Event) {
        if let Some(s) = &self.stream {
            match s.send(&to_ascii_json(e)) {
                Sent::Queued | Sent::Closing => {}
                Sent::Gone => self.stream = None,
                Sent::TooSlow { backlog, idle } => tracing::warn!(
                    framework_id = %self.id(),
                    backlog,
                    idle_ms = idle.as_millis() as u64,
                    "the framework does not keep up with its event stream: closing it (it may subscribe again)"
                ),
            }
        }
    }
}

/// Agents are pinged in this many slices of `--agent-ping-timeout`, a slice at a time, so
/// that the pings of a big cluster (and the pongs coming back) are spread over the interval
/// rather than sent all at once: at 40,000 agents one burst took the master most of a
/// second of CPU, during which everything else (a big read, offers) waited for a core.
const PING_SLICES: u32 = 16;

/// The slice an agent is pinged in: from its id, so spread evenly and kept over failovers.
fn ping_slice_of(id: &Option<AgentId>) -> u32 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.as_ref().map(|i| i.value.as_str()).hash(&mut h);
    (h.finish() % u64::from(PING_SLICES)) as u32
}

pub(crate) struct Agent {
    /// Behind `Arc`: a big read takes it in a pointer copy (see `crate::views`).
    pub info: Arc<AgentInfo>,
    pub pid: String,
    pub version: String,
    session_id: String,
    stream: Option<Stream>,
    pub active: bool,
    pub registered_time: f64,
    pub reregistered_time: Option<f64>,
    pub total: Resources,
    missed_pings: u32,
    awaiting_pong: bool,
    /// Which of the [`PING_SLICES`] of the ping interval this agent is pinged in.
    ping_slice: u32,
    pub tasks: HashSet<(FrameworkId, TaskId)>,
    pub offers: HashSet<OfferId>,
}

impl Agent {
    /// A connected agent on the session of `stream`.
    fn new(
        info: AgentInfo,
        pid: String,
        version: String,
        total: Resources,
        stream: Stream,
        registered_time: f64,
    ) -> Self {
        let ping_slice = ping_slice_of(&info.id);
        Agent {
            info: Arc::new(info),
            pid,
            version,
            session_id: stream.id.clone(),
            stream: Some(stream),
            active: true,
            registered_time,
            reregistered_time: None,
            total,
            missed_pings: 0,
            awaiting_pong: false,
            ping_slice,
            tasks: HashSet::new(),
            offers: HashSet::new(),
        }
    }

    pub fn id(&self) -> AgentId {
        self.info.id.clone().unwrap_or_default()
    }
    pub fn connected(&self) -> bool {
        self.stream.is_some()
    }
    fn send(&mut self, m: &MasterToAgent) {
        if let Some(s) = &self.stream {
            let payload = serde_json::to_vec(m).unwrap_or_default();
            match s.send(&payload) {
                Sent::Queued | Sent::Closing => {}
                Sent::Gone => self.stream = None,
                Sent::TooSlow { backlog, idle } => tracing::warn!(
                    agent_id = %self.id(),
                    backlog,
                    idle_ms = idle.as_millis() as u64,
                    "the agent does not keep up with its stream: closing it (it re-registers)"
                ),
            }
        }
    }
}

pub(crate) struct OfferEntry {
    pub offer: Offer,
    pub resources: Resources,
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
}

pub(crate) struct UnreachableAgent {
    pub time: f64,
    /// The tasks it had when it became unreachable (empty when recovered from the registry).
    pub tasks: HashSet<(FrameworkId, TaskId)>,
}

/// An agent whose admission (or re-admission) is being written to the registry.
enum PendingAgent {
    Register { info: AgentInfo, pid: String, version: String, total: Resources, tx: agora_http::StreamTx },
    Reregister { info: AgentInfo, version: String, report: AgentReport, tx: agora_http::StreamTx },
}

/// What a re-registering agent reports it runs and ran.
pub(crate) struct AgentReport {
    frameworks: Vec<FrameworkInfo>,
    executors: Vec<ExecutorReport>,
    tasks: Vec<Task>,
    completed_tasks: Vec<Task>,
}

/// A framework whose registration is being written to the registry.
struct PendingFramework {
    info: FrameworkInfo,
    suppressed_roles: Vec<String>,
    stream_id: String,
    tx: agora_http::StreamTx,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub tasks_finished: u64,
    pub tasks_failed: u64,
    pub tasks_killed: u64,
    pub tasks_lost: u64,
    pub tasks_error: u64,
    pub tasks_dropped: u64,
    pub tasks_gone: u64,
    pub tasks_unreachable: u64,
    pub offers_sent: u64,
    pub offers_declined: u64,
    pub offers_rescinded: u64,
    pub agents_registered: u64,
    pub agents_reregistered: u64,
    pub agents_unreachable: u64,
    pub frameworks_removed: u64,
    pub invalid_calls: u64,
}

pub(crate) struct State {
    pub config: MasterConfig,
    pub master_info: MasterInfo,
    pub start_time: f64,
    started: Instant,
    self_tx: mpsc::UnboundedSender<Msg>,
    allocator: Allocator,
    pub frameworks: BTreeMap<FrameworkId, Framework>,
    pub completed_frameworks: VecDeque<Framework>,
    pub agents: BTreeMap<AgentId, Agent>,
    pub unreachable_agents: BTreeMap<AgentId, UnreachableAgent>,
    pub offers: HashMap<OfferId, OfferEntry>,
    next_framework: u64,
    next_agent: u64,
    next_offer: u64,
    /// Agents whose free resources changed since the last allocation.
    dirty_agents: HashSet<AgentId>,
    /// Whether a full allocation is wanted soon (a framework arrived or revived).
    full_allocation: bool,
    /// When agents were last marked unreachable, for `--agent-removal-rate-limit`.
    removals: VecDeque<Instant>,
    pub counters: Counters,
    /// Role weights in force (the registry's, overridden by `--weights`).
    pub weights: BTreeMap<String, f64>,
    /// Quotas by role (UPDATE_QUOTA), as the registry holds them.
    pub quotas: BTreeMap<String, QuotaConfig>,
    /// The maintenance schedule and the machines that are down.
    pub maintenance: MaintenanceState,
    pub role: Role,
    role_tx: watch::Sender<Role>,
    /// The current (or last) term of leadership.
    term: u64,
    registry: Option<Writer<Ack>>,
    abdicate: Option<mpsc::UnboundedSender<()>>,
    pub elected_time: Option<f64>,
    /// Agents in the registry that have not re-registered since this master was elected.
    pub recovered_agents: BTreeMap<AgentId, AgentRecord>,
    pub gone_agents: BTreeMap<AgentId, f64>,
    /// Re-registering agents whose reported reservations and volumes differ from the
    /// master's: they are sent the master's once readmitted.
    resend_checkpoint: HashMap<AgentId, Vec<Resource>>,
    pending_agents: HashMap<AgentId, PendingAgent>,
    pending_frameworks: HashMap<FrameworkId, PendingFramework>,
    generations: u64,
    /// The last agent (registered or recovered) seen at each `slave(1)@host:port`; may be
    /// stale, so every use checks it (see [`State::agent_at`]).
    by_pid: HashMap<String, AgentId>,
    role_names: RoleNames,
    /// Resources in use per agent and per framework, kept by the frameworks' task maps.
    pub(crate) ledger: SharedLedger,
}

/// Role names shared between tasks: a task and its resources hold a pointer to their
/// role's name rather than their own copies (a master holds hundreds of thousands of tasks
/// and a handful of roles).
#[derive(Default)]
struct RoleNames(HashSet<Text>);

impl RoleNames {
    fn get(&mut self, role: &str) -> Text {
        if let Some(r) = self.0.get(role) {
            return r.clone();
        }
        let r = Text::from(role);
        self.0.insert(r.clone());
        r
    }

    /// Points the roles of `resources` (allocation and legacy reservation role) at the
    /// shared names.
    fn share(&mut self, resources: &mut [Resource]) {
        for r in resources {
            if let Some(role) = r.allocation_info.as_mut().and_then(|a| a.role.as_mut()) {
                *role = self.get(role);
            }
            if let Some(role) = r.role.as_mut() {
                *role = self.get(role);
            }
        }
    }
}

pub fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn ip_to_u32_nbo(ip: &str) -> u32 {
    match ip.parse::<std::net::Ipv4Addr>() {
        // Mesos stores the address in network byte order in a uint32 field.
        Ok(a) => u32::from_le_bytes(a.octets()),
        Err(_) => 0,
    }
}

fn new_allocator(weights: &[(String, f64)]) -> Allocator {
    let mut allocator = Allocator::new(agora_allocator::Config::default());
    for (role, w) in weights {
        allocator.set_weight(role, *w);
    }
    allocator
}

/// Starts the actor; returns the handle for the HTTP layer and the task.
pub fn spawn(config: MasterConfig, addr: SocketAddr) -> (Handle, tokio::task::JoinHandle<()>) {
    let master_id = uuid::Uuid::new_v4().to_string();
    let hostname = config.hostname.clone().unwrap_or_else(|| config.ip.clone());
    let ip = addr.ip().to_string();
    let master_info = MasterInfo {
        id: master_id.clone(),
        ip: ip_to_u32_nbo(&ip),
        port: u32::from(addr.port()),
        pid: Some(format!("master@{}:{}", ip, addr.port())),
        hostname: Some(hostname.clone()),
        version: Some(MESOS_VERSION.to_string()),
        address: Some(Address { hostname: Some(hostname), ip: Some(ip), port: u32::from(addr.port()) }),
        capabilities: vec![FrameworkCapability { kind: "AGENT_UPDATE".into() }],
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let start_time = now_secs();
    let (role_tx, role_rx) = watch::channel(Role::Following(None));
    let handle = Handle {
        tx: tx.clone(),
        master_id,
        master_info: master_info.clone(),
        flags: std::sync::Arc::new(config.flags.clone()),
        start_time,
        role: role_rx,
    };
    let allocator = new_allocator(&config.weights);
    let weights = config.weights.iter().cloned().collect();
    let state = State {
        config,
        master_info,
        start_time,
        started: Instant::now(),
        self_tx: tx,
        allocator,
        frameworks: BTreeMap::new(),
        completed_frameworks: VecDeque::new(),
        agents: BTreeMap::new(),
        unreachable_agents: BTreeMap::new(),
        offers: HashMap::new(),
        next_framework: 0,
        next_agent: 0,
        next_offer: 0,
        dirty_agents: HashSet::new(),
        full_allocation: false,
        counters: Counters::default(),
        removals: VecDeque::new(),
        weights,
        quotas: BTreeMap::new(),
        maintenance: MaintenanceState::default(),
        role: Role::Following(None),
        role_tx,
        term: 0,
        registry: None,
        abdicate: None,
        elected_time: None,
        recovered_agents: BTreeMap::new(),
        gone_agents: BTreeMap::new(),
        resend_checkpoint: HashMap::new(),
        pending_agents: HashMap::new(),
        pending_frameworks: HashMap::new(),
        generations: 0,
        by_pid: HashMap::new(),
        role_names: RoleNames::default(),
        ledger: SharedLedger::default(),
    };
    let task = tokio::spawn(run(state, rx));
    (handle, task)
}

async fn run(mut st: State, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut alloc_tick = tokio::time::interval(st.config.allocation_interval);
    alloc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping_tick =
        tokio::time::interval((st.config.agent_ping_timeout / PING_SLICES).max(Duration::from_millis(1)));
    let mut ping_slice = 0;
    ping_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat_tick = tokio::time::interval(st.config.heartbeat_interval);
    heartbeat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gc_tick = tokio::time::interval(policy::gc_interval(&st.config));
    gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Event-driven allocation: resources that came back (a decline, an accept's unused
    // part, a task's end) are offered again once the messages already queued are handled,
    // at most once per `AGENT_BATCH`; a pass over every agent (a framework arrived or
    // revived) waits `FULL_BATCH`, so that a burst of them makes one pass.
    const AGENT_BATCH: Duration = Duration::from_millis(5);
    const FULL_BATCH: Duration = Duration::from_millis(20);
    /// Messages handled before looking at the allocation again (bounds its delay under load).
    const DRAIN: usize = 256;
    let mut soon: Option<Instant> = None;
    let mut last_pass = Instant::now();
    loop {
        let wake = soon;
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                st.handle(msg);
                // Take what is queued already: under load, passes batch by themselves.
                for _ in 0..DRAIN {
                    match rx.try_recv() {
                        Ok(m) => st.handle(m),
                        Err(_) => break,
                    }
                }
                if st.full_allocation {
                    if soon.is_none() {
                        soon = Some(Instant::now() + FULL_BATCH);
                    }
                } else if !st.dirty_agents.is_empty() {
                    let due = last_pass + AGENT_BATCH;
                    if due <= Instant::now() {
                        st.allocate();
                        last_pass = Instant::now();
                        soon = None;
                    } else if soon.is_none_or(|s| due < s) {
                        soon = Some(due);
                    }
                }
            }
            _ = alloc_tick.tick() => {
                st.full_allocation = true;
                st.allocate();
                last_pass = Instant::now();
                soon = None;
            }
            _ = async { if let Some(w) = wake { tokio::time::sleep_until(w).await } else { std::future::pending::<()>().await } } => {
                st.allocate();
                last_pass = Instant::now();
                soon = None;
            }
            _ = ping_tick.tick() => {
                st.ping_agents(ping_slice);
                ping_slice = (ping_slice + 1) % PING_SLICES;
            }
            _ = heartbeat_tick.tick() => st.heartbeat(),
            _ = gc_tick.tick() => if st.role == Role::Leading { st.prune_registry() },
        }
    }
}

fn validate_role(role: &str) -> Result<(), String> {
    if role.is_empty() {
        return Err("role must not be empty".into());
    }
    if role == "." || role == ".." {
        return Err(format!("role '{role}' cannot be '.' or '..'"));
    }
    if role.starts_with('-') || role.starts_with('/') || role.ends_with('/') || role.contains("//") {
        return Err(format!("role '{role}' is not a valid role name"));
    }
    if role.chars().any(|c| c.is_whitespace() || c.is_control() || c == '\\') {
        return Err(format!("role '{role}' contains invalid characters"));
    }
    Ok(())
}

fn validate_task_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("task id must not be empty".into());
    }
    if id.len() > 255 {
        return Err("task id is longer than 255 characters".into());
    }
    if id == "." || id == ".." || id.contains('/') || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("task id '{id}' contains invalid characters"));
    }
    Ok(())
}

fn status_for(task_id: &TaskId, state: TaskState, reason: Option<Reason>, message: impl Into<String>) -> TaskStatus {
    let mut s = TaskStatus::new(task_id.clone(), state);
    s.source = Some(Source::Master);
    s.reason = reason;
    s.message = Some(message.into());
    s.timestamp = Some(now_secs());
    s
}

impl State {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Why a call cannot be served, when this master does not lead (the HTTP layer redirects
    /// before asking; this covers the race with a change of leadership).
    fn not_leading(&self) -> Option<ApiError> {
        match &self.role {
            Role::Leading => None,
            Role::Recovering => Some(ApiError::unavailable("Master has not finished recovery")),
            Role::Following(_) => Some(ApiError::unavailable("Not the leading master")),
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Subscribe { call, tx, reply } => {
                let r = match self.not_leading() {
                    Some(e) => Err(e),
                    None => self.subscribe(call, tx),
                };
                let _ = reply.send(r);
            }
            Msg::Scheduler { call, stream_id, reply } => {
                let r = match self.not_leading() {
                    Some(e) => Err(e),
                    None => self.scheduler_call(call, stream_id),
                };
                if r.is_err() {
                    self.counters.invalid_calls += 1;
                }
                let _ = reply.send(r);
            }
            Msg::AgentSubscribe { call, tx, reply } => {
                let r = match self.not_leading() {
                    Some(e) => Err(e),
                    None => self.agent_subscribe(call, tx),
                };
                let _ = reply.send(r);
            }
            Msg::AgentCall { call, reply } => {
                let r = match self.not_leading() {
                    Some(e) => Err(e),
                    None => self.agent_call(call),
                };
                let _ = reply.send(r);
            }
            Msg::Operator { call, reply } => {
                let r = match self.not_leading() {
                    Some(e) => Err(e),
                    None => self.operator_call(call),
                };
                let _ = reply.send(r);
            }
            Msg::Leadership(l) => self.leadership(l),
            Msg::RegistryWritten { term, acks, result } => self.registry_written(term, acks, result),
            Msg::ReregisterTimeout { term } => {
                if term == self.term && self.role == Role::Leading {
                    self.reregister_timeout();
                }
            }
            Msg::Query { query, reply } => {
                let started = std::time::Instant::now();
                let r = match crate::legacy::view(self, &query) {
                    Some(v) => QueryReply::View(v),
                    None => {
                        QueryReply::Json(serde_json::to_vec(&crate::legacy::render(self, &query)).unwrap_or_default())
                    }
                };
                let held = started.elapsed();
                if held > Duration::from_millis(100) {
                    tracing::info!(?query, held_ms = held.as_millis() as u64, "a read held the state loop");
                }
                let _ = reply.send(r);
            }
            Msg::FrameworkStreamClosed { framework_id, stream_id } => {
                let current = self.frameworks.get(&framework_id).and_then(|f| f.stream.as_ref()).map(|s| s.id.clone());
                if current.as_deref() == Some(stream_id.as_str()) {
                    self.framework_disconnected(&framework_id);
                }
            }
            Msg::AgentStreamClosed { agent_id, session_id } => {
                if let Some(a) = self.agents.get_mut(&agent_id) {
                    if a.session_id == session_id && a.stream.is_some() {
                        tracing::info!(%agent_id, "agent disconnected");
                        a.stream = None;
                        self.deactivate_agent(&agent_id);
                    }
                }
            }
            Msg::FailoverTimeout { framework_id, generation } => {
                let expired = self
                    .frameworks
                    .get(&framework_id)
                    .map(|f| !f.connected() && f.failover_generation == generation)
                    .unwrap_or(false);
                if expired {
                    tracing::info!(%framework_id, "framework failover timeout expired; removing it");
                    self.remove_framework(&framework_id);
                }
            }
        }
    }

    // ---------------------------------------------------------------- leadership

    /// A failover timer generation, unique across terms (a timer of an earlier term must
    /// never match a framework of this one).
    fn next_generation(&mut self) -> u64 {
        self.generations += 1;
        self.generations
    }

    fn set_role(&mut self, role: Role) {
        if self.role != role {
            tracing::info!(?role, "role changed");
            self.role = role.clone();
            self.role_tx.send_replace(role);
        }
    }

    fn leadership(&mut self, l: Leadership) {
        match l {
            Leadership::Recovering { term } => {
                if self.role == Role::Leading || self.role == Role::Recovering {
                    self.step_down("a new term began");
                }
                self.term = term;
                self.set_role(Role::Recovering);
            }
            Leadership::Elected { term, registry, writer, abdicate } => {
                if term != self.term || self.role != Role::Recovering {
                    tracing::info!(term, "ignoring the registry of a term that is over");
                    return;
                }
                self.registry = Some(writer);
                self.abdicate = Some(abdicate);
                self.recover(registry);
            }
            Leadership::Lost { term } => {
                if term == self.term && (self.role == Role::Leading || self.role == Role::Recovering) {
                    self.step_down("leadership lost");
                }
            }
            Leadership::Following(leader) => {
                if let Role::Following(_) = self.role {
                    self.set_role(Role::Following(leader));
                }
            }
        }
    }

    /// Takes over from the registry: recovered agents wait (up to
    /// `--agent-reregister-timeout`) to re-register, recovered frameworks to re-subscribe.
    fn recover(&mut self, registry: Registry) {
        let now = now_secs();
        let mut weights = registry.weights.clone();
        for (role, w) in &self.config.weights {
            weights.insert(role.clone(), *w);
        }
        for (role, w) in &weights {
            self.allocator.set_weight(role, *w);
        }
        if weights != registry.weights {
            self.submit(vec![Op::SetWeights { weights: weights.clone() }], Ack::None);
        }
        self.weights = weights;
        self.recover_quotas(registry.quotas);
        self.maintenance = registry.maintenance;
        for (id, record) in registry.agents {
            self.by_pid.insert(record.pid.clone(), AgentId::new(id.clone()));
            self.recovered_agents.insert(AgentId::new(id), record);
        }
        for (id, time) in registry.unreachable {
            self.unreachable_agents.insert(AgentId::new(id), UnreachableAgent { time, tasks: HashSet::new() });
        }
        for (id, time) in registry.gone {
            self.gone_agents.insert(AgentId::new(id), time);
        }
        let frameworks = registry.frameworks.len();
        for (id, mut info) in registry.frameworks {
            let fid = FrameworkId::new(id);
            info.id = Some(fid.clone());
            self.insert_recovered_framework(fid, info, now);
        }
        self.elected_time = Some(now);
        self.prune_registry();
        let term = self.term;
        let tx = self.self_tx.clone();
        let wait = self.config.agent_reregister_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = tx.send(Msg::ReregisterTimeout { term });
        });
        tracing::info!(
            term,
            agents = self.recovered_agents.len(),
            unreachable = self.unreachable_agents.len(),
            frameworks,
            "elected: registry recovered; waiting for agents to re-register"
        );
        self.set_role(Role::Leading);
    }

    /// A framework known from the registry or an agent's report: disconnected until its
    /// scheduler re-subscribes.
    fn insert_recovered_framework(&mut self, fid: FrameworkId, info: FrameworkInfo, now: f64) {
        let roles = info.effective_roles();
        self.frameworks.insert(
            fid.clone(),
            Framework {
                info,
                stream: None,
                active: false,
                recovered: true,
                registered_time: now,
                reregistered_time: None,
                unregistered_time: Some(now),
                failover_generation: 0,
                offers: HashSet::new(),
                tasks: Tasks::in_use(self.ledger.clone()),
                unreachable_tasks: Tasks::default(),
                completed_tasks: VecDeque::new(),
                executors: HashMap::new(),
                suppressed_roles: vec![],
            },
        );
        self.allocator.add_framework(&fid, &roles, &[], false);
    }

    /// Stops acting as the leader: every stream is closed (by dropping it), every offer and
    /// pending acknowledgement dropped, the registry writer abandoned. Id counters survive so
    /// that ids are never reused if this master is elected again.
    fn step_down(&mut self, why: &str) {
        tracing::warn!(term = self.term, why, "stepping down");
        self.registry = None;
        self.abdicate = None;
        self.frameworks.clear();
        self.completed_frameworks.clear();
        self.agents.clear();
        self.unreachable_agents.clear();
        self.recovered_agents.clear();
        self.gone_agents.clear();
        self.offers.clear();
        self.pending_agents.clear();
        self.pending_frameworks.clear();
        self.dirty_agents.clear();
        self.full_allocation = false;
        self.elected_time = None;
        self.weights = self.config.weights.iter().cloned().collect();
        self.quotas.clear();
        self.maintenance = MaintenanceState::default();
        self.allocator = new_allocator(&self.config.weights);
        self.set_role(Role::Following(None));
    }

    /// Queues registry changes; `ack` comes back in a `RegistryWritten` once they are durable.
    fn submit(&mut self, ops: Vec<Op>, ack: Ack) {
        match &self.registry {
            Some(w) => {
                if !w.submit(ops, ack) {
                    tracing::warn!("the registry writer has stopped; the change is dropped");
                }
            }
            None => tracing::warn!("registry change while not leading; dropped"),
        }
    }

    fn registry_written(&mut self, term: u64, acks: Vec<Ack>, result: Result<(), RegistryError>) {
        if term != self.term || self.role != Role::Leading {
            return;
        }
        if let Err(e) = result {
            // Mesos aborts when its registry cannot be written; Agora steps down (and asks
            // the driver to give the leadership up), which is the same for everyone else.
            tracing::error!(error = %e, "registry write failed");
            if let Some(a) = self.abdicate.take() {
                let _ = a.send(());
            }
            self.step_down("the registry cannot be written");
            return;
        }
        for ack in acks {
            match ack {
                Ack::None => {}
                Ack::Agent(id) => match self.pending_agents.remove(&id) {
                    Some(PendingAgent::Register { info, pid, version, total, tx }) => {
                        self.admit_agent(info, pid, version, total, tx)
                    }
                    Some(PendingAgent::Reregister { info, version, report, tx }) => {
                        self.readmit_agent(info, version, report, tx)
                    }
                    None => {}
                },
                Ack::Framework(id) => {
                    if let Some(p) = self.pending_frameworks.remove(&id) {
                        self.add_framework(id, p.info, p.suppressed_roles, p.tx, p.stream_id);
                    }
                }
            }
        }
    }

    /// Agents that did not come back in time are unreachable; frameworks that did not
    /// re-subscribe start their failover timeouts.
    fn reregister_timeout(&mut self) {
        let now = now_secs();
        let missing: Vec<AgentId> = self.recovered_agents.keys().cloned().collect();
        if !missing.is_empty() {
            tracing::warn!(agents = missing.len(), "agents did not re-register in time; marking them unreachable");
        }
        let mut ops = Vec::with_capacity(missing.len());
        for id in missing {
            self.recovered_agents.remove(&id);
            self.counters.agents_unreachable += 1;
            self.unreachable_agents.insert(id.clone(), UnreachableAgent { time: now, tasks: HashSet::new() });
            ops.push(Op::MarkUnreachable { agent_id: id.value.into(), time: now });
        }
        if !ops.is_empty() {
            self.submit(ops, Ack::None);
        }
        let idle: Vec<FrameworkId> =
            self.frameworks.iter().filter(|(_, f)| f.recovered && !f.connected()).map(|(id, _)| id.clone()).collect();
        for id in idle {
            self.start_failover_timer(&id);
        }
    }

    fn start_failover_timer(&mut self, id: &FrameworkId) {
        let generation = self.next_generation();
        let Some(fw) = self.frameworks.get_mut(id) else { return };
        fw.failover_generation = generation;
        let timeout = fw.info.failover_timeout;
        let self_tx = self.self_tx.clone();
        let framework_id = id.clone();
        let delay = Duration::from_secs_f64(timeout.clamp(0.0, 365.0 * 86400.0));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = self_tx.send(Msg::FailoverTimeout { framework_id, generation });
        });
    }

    // ---------------------------------------------------------------- frameworks

    fn subscribe(&mut self, call: Call, tx: agora_http::StreamTx) -> Result<String, ApiError> {
        let sub = call.subscribe.ok_or_else(|| ApiError::bad_request("Expecting 'subscribe' to be present"))?;
        let mut info = sub.framework_info;
        if info.name.is_empty() {
            return Err(ApiError::bad_request("'FrameworkInfo.name' must not be empty"));
        }
        let multi_role = info.has_capability("MULTI_ROLE");
        if multi_role && info.role != "*" {
            return Err(ApiError::bad_request("'FrameworkInfo.role' must not be set when MULTI_ROLE is used"));
        }
        if !multi_role && !info.roles.is_empty() {
            return Err(ApiError::bad_request("'FrameworkInfo.roles' needs the MULTI_ROLE capability"));
        }
        for r in info.effective_roles() {
            validate_role(&r).map_err(ApiError::bad_request)?;
        }
        if !info.failover_timeout.is_finite() || info.failover_timeout < 0.0 {
            return Err(ApiError::bad_request("'FrameworkInfo.failover_timeout' must be a non-negative number"));
        }
        match (&call.framework_id, &info.id) {
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::bad_request("'framework_id' differs from 'subscribe.framework_info.id'"));
            }
            (Some(_), None) => {
                return Err(ApiError::bad_request("'subscribe.framework_info.id' must be set when 'framework_id' is"));
            }
            _ => {}
        }
        let stream_id = uuid::Uuid::new_v4().to_string();
        let id = match info.id.clone() {
            Some(id) => {
                if self.completed_frameworks.iter().any(|f| f.info.id.as_ref() == Some(&id)) {
                    // Mesos answers with an ERROR event on the stream and closes it.
                    let payload = to_ascii_json(&Event::error("Framework has been removed"));
                    let _ = tx.send(Bytes::from(recordio::encode(&payload)));
                    return Ok(stream_id);
                }
                id
            }
            None => {
                let id = FrameworkId::new(format!("{}-{:04}", self.master_info.id, self.next_framework));
                self.next_framework += 1;
                info.id = Some(id.clone());
                id
            }
        };
        if self.frameworks.contains_key(&id) {
            self.add_framework(id, info, sub.suppressed_roles, tx, stream_id.clone());
        } else {
            // A new framework (or one this master never heard of): SUBSCRIBED once the
            // registry has it. A second SUBSCRIBE meanwhile replaces the first (its stream ends).
            let pending = PendingFramework {
                info: info.clone(),
                suppressed_roles: sub.suppressed_roles,
                stream_id: stream_id.clone(),
                tx,
            };
            self.pending_frameworks.insert(id.clone(), pending);
            self.submit(vec![Op::PutFramework { framework: info }], Ack::Framework(id));
        }
        Ok(stream_id)
    }

    /// Attaches a (re-)subscribed framework's stream and sends SUBSCRIBED.
    fn add_framework(
        &mut self,
        id: FrameworkId,
        mut info: FrameworkInfo,
        suppressed_roles: Vec<String>,
        tx: agora_http::StreamTx,
        stream_id: String,
    ) {
        let now = now_secs();
        let generation = self.next_generation();
        let span = tracing::info_span!("subscribe", framework_id = %id);
        let _e = span.enter();
        let watch = agora_http::on_stream_closed(
            &tx,
            Msg::FrameworkStreamClosed { framework_id: id.clone(), stream_id: stream_id.clone() },
            self.self_tx.clone(),
        );
        let stream =
            Stream { id: stream_id.clone(), tx, _cancel_watch: watch, max_backlog: self.config.max_stream_backlog };
        let subscribed = Event::subscribed(sched::Subscribed {
            framework_id: id.clone(),
            heartbeat_interval_seconds: self.config.heartbeat_interval.as_secs_f64(),
            master_info: Some(self.master_info.clone()),
        });
        let roles = info.effective_roles();
        if let Some(fw) = self.frameworks.get_mut(&id) {
            // Failover / re-subscription: the old stream is closed, offers are re-made.
            if let Some(old) = fw.stream.take() {
                old.send(&to_ascii_json(&Event::error("Framework failed over")));
            }
            // `user` and `checkpoint` changes are silently ignored, as in Mesos.
            info.user = fw.info.user.clone();
            info.checkpoint = fw.info.checkpoint;
            info.id = Some(id.clone());
            let write = fw.recovered || fw.info != info;
            fw.info = info.clone();
            fw.stream = Some(stream);
            fw.active = true;
            fw.recovered = false;
            fw.failover_generation = generation;
            fw.reregistered_time = Some(now);
            fw.unregistered_time = None;
            fw.suppressed_roles = suppressed_roles.clone();
            fw.send(&subscribed);
            tracing::info!("framework re-subscribed");
            if write {
                self.submit(vec![Op::PutFramework { framework: info.clone() }], Ack::None);
            }
            self.rescind_framework_offers(&id, false);
            self.allocator.update_framework(&id, &roles, &suppressed_roles);
            self.allocator.activate_framework(&id);
            let update = MasterToAgent::UpdateFramework { framework_info: info };
            let agents: Vec<AgentId> = self.framework_agents(&id);
            for a in agents {
                if let Some(agent) = self.agents.get_mut(&a) {
                    agent.send(&update);
                }
            }
        } else {
            let mut fw = Framework {
                info: info.clone(),
                stream: Some(stream),
                active: true,
                recovered: false,
                registered_time: now,
                reregistered_time: None,
                unregistered_time: None,
                failover_generation: 0,
                offers: HashSet::new(),
                tasks: Tasks::in_use(self.ledger.clone()),
                unreachable_tasks: Tasks::default(),
                completed_tasks: VecDeque::new(),
                executors: HashMap::new(),
                suppressed_roles: suppressed_roles.clone(),
            };
            fw.send(&subscribed);
            tracing::info!(name = %info.name, roles = ?roles, "framework subscribed");
            self.frameworks.insert(id.clone(), fw);
            self.allocator.add_framework(&id, &roles, &suppressed_roles, true);
        }
        self.full_allocation = true;
    }

    /// Agents on which the framework has tasks.
    fn framework_agents(&self, id: &FrameworkId) -> Vec<AgentId> {
        let Some(fw) = self.frameworks.get(id) else { return vec![] };
        let mut v: Vec<AgentId> = fw.tasks.values().map(|t| t.task.agent_id.clone()).collect();
        v.extend(fw.executors.keys().cloned());
        v.sort();
        v.dedup();
        v
    }

    fn framework_disconnected(&mut self, id: &FrameworkId) {
        let generation = self.next_generation();
        let Some(fw) = self.frameworks.get_mut(id) else { return };
        fw.stream = None;
        fw.active = false;
        fw.unregistered_time = Some(now_secs());
        fw.failover_generation = generation;
        let timeout = fw.info.failover_timeout;
        tracing::info!(framework_id = %id, failover_timeout = timeout, "framework disconnected");
        self.allocator.deactivate_framework(id);
        self.rescind_framework_offers(id, false);
        let self_tx = self.self_tx.clone();
        let framework_id = id.clone();
        let delay = Duration::from_secs_f64(timeout.clamp(0.0, 365.0 * 86400.0));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = self_tx.send(Msg::FailoverTimeout { framework_id, generation });
        });
    }

    fn remove_framework(&mut self, id: &FrameworkId) {
        let Some(mut fw) = self.frameworks.remove(id) else { return };
        self.counters.frameworks_removed += 1;
        self.submit(vec![Op::RemoveFramework { framework_id: id.value.to_string() }], Ack::None);
        // Offers go back first, then the allocator forgets the framework entirely.
        let offer_ids: Vec<OfferId> = fw.offers.drain().collect();
        for oid in offer_ids {
            if let Some(o) = self.offers.remove(&oid) {
                if let Some(a) = self.agents.get_mut(&o.agent_id) {
                    a.offers.remove(&oid);
                }
            }
        }
        let mut agents: HashSet<AgentId> = fw.executors.keys().cloned().collect();
        let now = now_secs();
        for (_, t) in fw.tasks.drain().chain(fw.unreachable_tasks.drain()) {
            let mut t = Arc::unwrap_or_clone(t);
            agents.insert(t.task.agent_id.clone());
            if let Some(a) = self.agents.get_mut(&t.task.agent_id) {
                a.tasks.remove(&(id.clone(), t.task.task_id.clone()));
            }
            if !t.task.state.is_terminal() {
                let mut s = status_for(
                    &t.task.task_id,
                    TaskState::Killed,
                    Some(Reason::ReasonFrameworkRemoved),
                    "Framework removed",
                );
                s.timestamp = Some(now);
                t.task.state = TaskState::Killed;
                push_status(&mut t.task, s);
            }
            fw.completed_tasks.push_back(Arc::new(t.task));
        }
        while fw.completed_tasks.len() > self.config.max_completed_tasks_per_framework {
            fw.completed_tasks.pop_front();
        }
        for a in agents {
            if let Some(agent) = self.agents.get_mut(&a) {
                agent.send(&MasterToAgent::ShutdownFramework { framework_id: id.clone() });
                self.dirty_agents.insert(a);
            }
        }
        self.allocator.remove_framework(id);
        fw.stream = None;
        fw.active = false;
        fw.unregistered_time = Some(now);
        fw.executors.clear();
        tracing::info!(framework_id = %id, "framework removed");
        self.completed_frameworks.push_back(fw);
        while self.completed_frameworks.len() > self.config.max_completed_frameworks {
            self.completed_frameworks.pop_front();
        }
    }

    /// Takes back every outstanding offer of a framework. With `notify`, RESCIND events
    /// are sent (the stream is still up).
    fn rescind_framework_offers(&mut self, id: &FrameworkId, notify: bool) {
        let Some(fw) = self.frameworks.get_mut(id) else { return };
        let offers: Vec<OfferId> = fw.offers.iter().cloned().collect();
        for oid in offers {
            self.rescind_offer(&oid, notify);
        }
    }

    fn rescind_offer(&mut self, oid: &OfferId, notify: bool) {
        let Some(o) = self.offers.remove(oid) else { return };
        self.counters.offers_rescinded += 1;
        if let Some(a) = self.agents.get_mut(&o.agent_id) {
            a.offers.remove(oid);
        }
        if let Some(fw) = self.frameworks.get_mut(&o.framework_id) {
            fw.offers.remove(oid);
            if notify {
                fw.send(&Event::rescind(oid.clone()));
            }
        }
        self.allocator.recover(&o.framework_id, &o.agent_id, &o.resources, None, self.now());
        self.dirty_agents.insert(o.agent_id);
    }

    fn scheduler_call(&mut self, call: Call, stream_id: Option<String>) -> Result<CallReply, ApiError> {
        let fid =
            call.framework_id.clone().ok_or_else(|| ApiError::bad_request("Expecting 'framework_id' to be present"))?;
        let Some(fw) = self.frameworks.get(&fid) else {
            if self.completed_frameworks.iter().any(|f| f.info.id.as_ref() == Some(&fid)) {
                return Err(ApiError::forbidden("Framework has been removed"));
            }
            return Err(ApiError::bad_request("Framework cannot be found"));
        };
        let Some(stream) = &fw.stream else {
            return Err(ApiError::forbidden("Framework is not subscribed"));
        };
        match stream_id {
            None => return Err(ApiError::bad_request("All non-subscribe calls should include the 'Mesos-Stream-Id' header")),
            Some(s) if s != stream.id => {
                return Err(ApiError::bad_request(format!(
                    "The stream ID '{s}' included in this request didn't match the stream ID currently associated with framework ID {fid}"
                )))
            }
            _ => {}
        }
        let span = tracing::debug_span!("call", framework_id = %fid, kind = ?call.kind);
        let _e = span.enter();
        match call.kind {
            CallType::Subscribe => Err(ApiError::bad_request("SUBSCRIBE must not carry a 'Mesos-Stream-Id' header")),
            CallType::Teardown => {
                self.remove_framework(&fid);
                Ok(CallReply::Accepted)
            }
            CallType::Accept => {
                let accept = call.accept.ok_or_else(|| ApiError::bad_request("Expecting 'accept' to be present"))?;
                self.accept(&fid, accept);
                Ok(CallReply::Accepted)
            }
            CallType::Decline => {
                let d = call.decline.ok_or_else(|| ApiError::bad_request("Expecting 'decline' to be present"))?;
                self.decline(&fid, &d.offer_ids, d.filters.unwrap_or_default().refuse_seconds);
                Ok(CallReply::Accepted)
            }
            CallType::Revive => {
                let roles = call.revive.unwrap_or_default().all();
                self.allocator.revive(&fid, &roles);
                if let Some(fw) = self.frameworks.get_mut(&fid) {
                    if roles.is_empty() {
                        fw.suppressed_roles.clear();
                    } else {
                        fw.suppressed_roles.retain(|r| !roles.contains(r));
                    }
                }
                self.full_allocation = true;
                Ok(CallReply::Accepted)
            }
            CallType::Suppress => {
                let roles = call.suppress.unwrap_or_default().all();
                self.allocator.suppress(&fid, &roles);
                if let Some(fw) = self.frameworks.get_mut(&fid) {
                    let all = if roles.is_empty() { fw.info.effective_roles() } else { roles };
                    for r in all {
                        if !fw.suppressed_roles.contains(&r) {
                            fw.suppressed_roles.push(r);
                        }
                    }
                }
                Ok(CallReply::Accepted)
            }
            CallType::Kill => {
                let k = call.kill.ok_or_else(|| ApiError::bad_request("Expecting 'kill' to be present"))?;
                self.kill(&fid, k);
                Ok(CallReply::Accepted)
            }
            CallType::Shutdown => {
                let s = call.shutdown.ok_or_else(|| ApiError::bad_request("Expecting 'shutdown' to be present"))?;
                if let Some(a) = self.agents.get_mut(&s.agent_id) {
                    a.send(&MasterToAgent::ShutdownExecutor { framework_id: fid, executor_id: s.executor_id });
                }
                Ok(CallReply::Accepted)
            }
            CallType::Acknowledge => {
                let a =
                    call.acknowledge.ok_or_else(|| ApiError::bad_request("Expecting 'acknowledge' to be present"))?;
                self.acknowledge(&fid, a)?;
                Ok(CallReply::Accepted)
            }
            CallType::Reconcile => {
                self.reconcile(&fid, call.reconcile.unwrap_or_default());
                Ok(CallReply::Accepted)
            }
            CallType::Message => {
                let m = call.message.ok_or_else(|| ApiError::bad_request("Expecting 'message' to be present"))?;
                match self.agents.get_mut(&m.agent_id) {
                    Some(a) => a.send(&MasterToAgent::FrameworkMessage {
                        framework_id: fid,
                        executor_id: m.executor_id,
                        data: m.data,
                    }),
                    None => tracing::warn!(agent_id = %m.agent_id, "dropping framework message for an unknown agent"),
                }
                Ok(CallReply::Accepted)
            }
            CallType::UpdateFramework => {
                let u = call
                    .update_framework
                    .ok_or_else(|| ApiError::bad_request("Expecting 'update_framework' to be present"))?;
                self.update_framework(&fid, u)?;
                Ok(CallReply::Ok)
            }
            CallType::Request
            | CallType::AcceptInverseOffers
            | CallType::DeclineInverseOffers
            | CallType::AcknowledgeOperationStatus
            | CallType::ReconcileOperations => Ok(CallReply::Accepted),
            CallType::Unknown => Err(ApiError::bad_request("Unknown call type")),
        }
    }

    fn update_framework(&mut self, fid: &FrameworkId, u: sched::UpdateFramework) -> Result<(), ApiError> {
        let Some(fw) = self.frameworks.get_mut(fid) else {
            return Err(ApiError::bad_request("Framework cannot be found"));
        };
        let mut info = u.framework_info;
        if info.id.as_ref() != Some(fid) {
            return Err(ApiError::bad_request("'update_framework.framework_info.id' must match 'framework_id'"));
        }
        if info.principal != fw.info.principal {
            return Err(ApiError::bad_request("'FrameworkInfo.principal' cannot be changed"));
        }
        if info.user != fw.info.user {
            return Err(ApiError::bad_request("'FrameworkInfo.user' cannot be changed"));
        }
        if info.checkpoint != fw.info.checkpoint {
            return Err(ApiError::bad_request("'FrameworkInfo.checkpoint' cannot be changed"));
        }
        let multi_role = info.has_capability("MULTI_ROLE");
        if !multi_role && !info.roles.is_empty() {
            return Err(ApiError::bad_request("'FrameworkInfo.roles' needs the MULTI_ROLE capability"));
        }
        for r in info.effective_roles() {
            validate_role(&r).map_err(ApiError::bad_request)?;
        }
        info.id = Some(fid.clone());
        let roles = info.effective_roles();
        let old_roles = fw.info.effective_roles();
        let changed = fw.info != info;
        fw.info = info.clone();
        fw.suppressed_roles = u.suppressed_roles.clone();
        // Offers made to roles the framework left are rescinded.
        let stale: Vec<OfferId> = fw
            .offers
            .iter()
            .filter(|o| {
                self.offers
                    .get(*o)
                    .and_then(|e| e.offer.allocation_info.as_ref().and_then(|a| a.role.clone()))
                    .map(|r| !roles.iter().any(|x| *x == *r))
                    .unwrap_or(false)
            })
            .cloned()
            .collect();
        for o in stale {
            self.rescind_offer(&o, true);
        }
        self.allocator.update_framework(fid, &roles, &u.suppressed_roles);
        if roles != old_roles {
            self.full_allocation = true;
        }
        if changed {
            self.submit(vec![Op::PutFramework { framework: info.clone() }], Ack::None);
        }
        for a in self.framework_agents(fid) {
            if let Some(agent) = self.agents.get_mut(&a) {
                agent.send(&MasterToAgent::UpdateFramework { framework_info: info.clone() });
            }
        }
        Ok(())
    }

    fn decline(&mut self, fid: &FrameworkId, offer_ids: &[OfferId], refuse_seconds: f64) {
        let refuse = refuse_filter(refuse_seconds);
        for oid in offer_ids {
            let owned = self.offers.get(oid).map(|o| &o.framework_id == fid).unwrap_or(false);
            if !owned {
                tracing::debug!(offer_id = %oid, "ignoring decline of an unknown offer");
                continue;
            }
            if let Some(o) = self.offers.remove(oid) {
                self.counters.offers_declined += 1;
                if let Some(fw) = self.frameworks.get_mut(fid) {
                    fw.offers.remove(oid);
                }
                if let Some(a) = self.agents.get_mut(&o.agent_id) {
                    a.offers.remove(oid);
                }
                self.allocator.recover(fid, &o.agent_id, &o.resources, refuse, self.now());
                self.dirty_agents.insert(o.agent_id);
            }
        }
    }

    /// Sends a master-generated task status (no uuid: never acknowledged, never retried).
    fn send_status(&mut self, fid: &FrameworkId, mut status: TaskStatus) {
        if let Some(fw) = self.frameworks.get_mut(fid) {
            status.state = status.state.for_framework(fw.info.partition_aware());
            fw.send(&Event::update(status));
        }
    }

    fn accept(&mut self, fid: &FrameworkId, accept: sched::Accept) {
        let refuse = refuse_filter(accept.filters.as_ref().map(|f| f.refuse_seconds).unwrap_or(5.0));
        // Validate the offers as a whole first.
        let mut error: Option<String> = None;
        let mut seen = HashSet::new();
        let mut agent: Option<AgentId> = None;
        if accept.offer_ids.is_empty() {
            error = Some("No offers specified".into());
        }
        for oid in &accept.offer_ids {
            if !seen.insert(oid.clone()) {
                error = Some(format!("Offer {oid} appears more than once"));
                break;
            }
            match self.offers.get(oid) {
                None => {
                    error = Some(format!("Offer {oid} is no longer valid"));
                    break;
                }
                Some(o) if &o.framework_id != fid => {
                    error = Some(format!("Offer {oid} is not owned by framework {fid}"));
                    break;
                }
                Some(o) => match &agent {
                    Some(a) if a != &o.agent_id => {
                        error = Some("Aggregated offers must belong to one single agent".into());
                        break;
                    }
                    _ => agent = Some(o.agent_id.clone()),
                },
            }
        }
        // Take the valid offers out: they are used or given back either way.
        let mut offered = Resources::new();
        let mut role: Option<String> = None;
        for oid in &accept.offer_ids {
            let owned = self.offers.get(oid).map(|o| &o.framework_id == fid).unwrap_or(false);
            if !owned {
                continue;
            }
            if let Some(o) = self.offers.remove(oid) {
                if let Some(fw) = self.frameworks.get_mut(fid) {
                    fw.offers.remove(oid);
                }
                if let Some(a) = self.agents.get_mut(&o.agent_id) {
                    a.offers.remove(oid);
                }
                if role.is_none() {
                    role = o.offer.allocation_info.as_ref().and_then(|a| a.role.as_deref().map(str::to_string));
                }
                if error.is_some() {
                    self.allocator.recover(fid, &o.agent_id, &o.resources, None, self.now());
                    self.dirty_agents.insert(o.agent_id.clone());
                } else {
                    offered.add_all(&o.resources);
                }
            }
        }
        let tasks: Vec<TaskInfo> = accept
            .operations
            .iter()
            .filter(|op| op.kind == sched::OperationType::Launch)
            .flat_map(|op| op.launch.as_ref().map(|l| l.task_infos.clone()).unwrap_or_default())
            .collect();
        if let Some(e) = error {
            tracing::info!(framework_id = %fid, error = %e, "ACCEPT with invalid offers");
            for t in &tasks {
                let s = status_for(&t.task_id, TaskState::Dropped, Some(Reason::ReasonInvalidOffers), e.clone());
                self.send_status(fid, s);
            }
            return;
        }
        let Some(agent_id) = agent else { return };
        let role = role.unwrap_or_else(|| "*".into());
        let mut remaining = offered.clone();
        let mut launched_ids: HashSet<TaskId> = HashSet::new();
        for op in &accept.operations {
            if op.kind != sched::OperationType::Launch {
                // Applied in order: a LAUNCH after a CREATE can use the new volume. An
                // invalid operation is dropped (as Mesos does) and the rest go on.
                if let Err(e) = self.accept_operation(fid, &agent_id, &role, op, &mut remaining) {
                    tracing::warn!(framework_id = %fid, agent_id = %agent_id, kind = ?op.kind, error = %e, "offer operation dropped");
                }
                continue;
            }
            let infos = op.launch.as_ref().map(|l| l.task_infos.clone()).unwrap_or_default();
            for task in infos {
                match self.validate_task(fid, &agent_id, &role, &task, &remaining, &launched_ids) {
                    Err(msg) => {
                        tracing::info!(framework_id = %fid, task_id = %task.task_id, error = %msg, "invalid task");
                        let s = status_for(&task.task_id, TaskState::Error, Some(Reason::ReasonTaskInvalid), msg);
                        self.send_status(fid, s);
                    }
                    Ok(charged) => {
                        remaining.subtract_all(&charged);
                        launched_ids.insert(task.task_id.clone());
                        self.launch(fid, &agent_id, task, charged);
                    }
                }
            }
        }
        if !remaining.is_empty() {
            self.allocator.recover(fid, &agent_id, &remaining, refuse, self.now());
        }
        self.dirty_agents.insert(agent_id);
    }

    /// Checks a task against Mesos's rules; returns the resources to charge (task plus a new
    /// custom executor's), with their allocation role.
    fn validate_task(
        &self,
        fid: &FrameworkId,
        agent_id: &AgentId,
        role: &str,
        task: &TaskInfo,
        remaining: &Resources,
        launched: &HashSet<TaskId>,
    ) -> Result<Resources, String> {
        validate_task_id(task.task_id.as_str())?;
        let fw = self.frameworks.get(fid).ok_or("framework is gone")?;
        if launched.contains(&task.task_id)
            || fw.tasks.contains_key(&task.task_id)
            || fw.unreachable_tasks.contains_key(&task.task_id)
        {
            return Err(format!("Task has duplicate ID: {}", task.task_id));
        }
        if &task.agent_id != agent_id {
            return Err(format!("Task uses agent {} but the offers are from agent {agent_id}", task.agent_id));
        }
        match (&task.command, &task.executor) {
            (Some(_), Some(_)) => {
                return Err("Task should have at least one (but not both) of CommandInfo or ExecutorInfo present".into())
            }
            (None, None) => {
                return Err("Task should have at least one (but not both) of CommandInfo or ExecutorInfo present".into())
            }
            _ => {}
        }
        if let Some(c) = &task.command {
            // With a container image, no value and no arguments run the image's Entrypoint/Cmd.
            let has_image = task.container.as_ref().and_then(|ci| ci.pointer("/mesos/image")).is_some();
            if c.value.as_deref().unwrap_or("").is_empty() && !c.shell && c.arguments.is_empty() && !has_image {
                return Err("CommandInfo has no 'value' to run".into());
            }
            if c.shell && c.value.as_deref().unwrap_or("").trim().is_empty() {
                return Err("CommandInfo.value must be set for a shell command".into());
            }
        }
        if let Some(e) = &task.executor {
            validate_task_id(e.executor_id.as_str()).map_err(|m| m.replace("task id", "executor id"))?;
            if let Some(f) = &e.framework_id {
                if f != fid {
                    return Err("ExecutorInfo has an invalid FrameworkID".into());
                }
            }
            if e.command.is_none() {
                return Err("ExecutorInfo must have a CommandInfo".into());
            }
        }
        if task.resources.is_empty() {
            return Err("Task uses no resources".into());
        }
        let mut charged = Resources::new();
        let mut add = |list: &[Resource]| -> Result<(), String> {
            for r in list {
                r.validate().map_err(|e| e.to_string())?;
                let mut r = r.clone();
                match r.allocation_role() {
                    None => r = r.with_allocation(Some(role)),
                    Some(x) if x != role => {
                        return Err(format!("resource allocated to role '{x}' but the offer is for role '{role}'"))
                    }
                    _ => {}
                }
                charged.add(&r);
            }
            Ok(())
        };
        add(&task.resources)?;
        if let Some(e) = &task.executor {
            let known = fw.executors.get(agent_id).map(|m| m.contains_key(&e.executor_id)).unwrap_or(false);
            if !known {
                add(&e.resources)?;
            }
        }
        if !remaining.contains(&charged) {
            return Err(format!("Task uses more resources {charged} than available {remaining}"));
        }
        Ok(charged)
    }

    fn launch(&mut self, fid: &FrameworkId, agent_id: &AgentId, mut task: TaskInfo, charged: Resources) {
        // The task record holds the master's own copies of its framework and agent ids.
        let Some((fid, _)) = self.frameworks.get_key_value(fid) else { return };
        let fid = &fid.clone();
        let agent_key = self.agents.get_key_value(agent_id).map(|(k, _)| k.clone());
        let agent_id = agent_key.as_ref().unwrap_or(agent_id);
        let Some(fw) = self.frameworks.get_mut(fid) else { return };
        if let Some(e) = task.executor.as_mut() {
            e.framework_id = Some(fid.clone());
            fw.executors.entry(agent_id.clone()).or_default().insert(e.executor_id.clone(), e.clone());
        }
        let mut record = Task {
            name: task.name.clone(),
            task_id: task.task_id.clone(),
            framework_id: fid.clone(),
            executor_id: task.executor.as_ref().map(|e| e.executor_id.clone()),
            agent_id: agent_id.clone(),
            state: TaskState::Staging,
            resources: charged.clone().into_vec(),
            statuses: vec![],
            status_update_state: None,
            status_update_uuid: None,
            labels: task.labels.clone(),
            discovery: task.discovery.clone().map(Box::new),
            container: task.container.clone().map(Box::new),
            health_check: task.health_check.clone().map(Box::new),
            kill_policy: task.kill_policy.clone(),
            user: task.command.as_ref().and_then(|c| c.user.clone()).or_else(|| Some(fw.info.user.clone())),
            limits: task.limits.clone().map(Box::new),
        };
        self.role_names.share(&mut record.resources);
        fw.tasks.insert(task.task_id.clone(), Arc::new(TaskEntry { task: record, released: false }));
        let framework_info = fw.info.clone();
        tracing::info!(framework_id = %fid, task_id = %task.task_id, agent_id = %agent_id, "launching task");
        task.resources = charged.clone().into_vec();
        if let Some(a) = self.agents.get_mut(agent_id) {
            a.tasks.insert((fid.clone(), task.task_id.clone()));
            a.send(&MasterToAgent::RunTask { framework_info, task, resources: charged.into_vec() });
        }
    }

    fn kill(&mut self, fid: &FrameworkId, k: sched::Kill) {
        let Some(fw) = self.frameworks.get(fid) else { return };
        if let Some(t) = fw.tasks.get(&k.task_id) {
            let agent_id = t.task.agent_id.clone();
            match self.agents.get_mut(&agent_id) {
                Some(a) => a.send(&MasterToAgent::KillTask {
                    framework_id: fid.clone(),
                    task_id: k.task_id,
                    kill_policy: k.kill_policy,
                }),
                None => tracing::warn!(task_id = %k.task_id, "cannot kill a task on an agent that is gone"),
            }
            return;
        }
        if fw.unreachable_tasks.contains_key(&k.task_id) {
            // It will be killed when its agent comes back (see reregistration).
            return;
        }
        let s = status_for(
            &k.task_id,
            TaskState::Lost,
            Some(Reason::ReasonReconciliation),
            "Attempted to kill an unknown task",
        );
        self.send_status(fid, s);
    }

    fn acknowledge(&mut self, fid: &FrameworkId, a: sched::Acknowledge) -> Result<(), ApiError> {
        if a.uuid.0.len() != 16 {
            return Err(ApiError::bad_request("'acknowledge.uuid' must be 16 bytes"));
        }
        let Some(fw) = self.frameworks.get_mut(fid) else { return Ok(()) };
        let mut completed = None;
        if let Some(t) = fw.tasks.get(&a.task_id) {
            if t.task.status_update_uuid.as_ref() == Some(&a.uuid)
                && t.task.status_update_state.map(|s| s.is_terminal()).unwrap_or(false)
            {
                completed = fw.tasks.remove(&a.task_id);
            }
        }
        if let Some(t) = completed {
            if let Some(agent) = self.agents.get_mut(&t.task.agent_id) {
                agent.tasks.remove(&(fid.clone(), t.task.task_id.clone()));
            }
            fw.add_completed(Arc::unwrap_or_clone(t).task, self.config.max_completed_tasks_per_framework);
        }
        match self.agents.get_mut(&a.agent_id) {
            Some(agent) => {
                agent.send(&MasterToAgent::Acknowledge { framework_id: fid.clone(), task_id: a.task_id, uuid: a.uuid })
            }
            None => tracing::debug!(agent_id = %a.agent_id, "acknowledgement for an unknown agent dropped"),
        }
        Ok(())
    }

    fn reconcile(&mut self, fid: &FrameworkId, r: sched::Reconcile) {
        let Some(fw) = self.frameworks.get(fid) else { return };
        let mut out = Vec::new();
        let latest = |t: &TaskEntry, msg: &str| {
            // An unreachable task's latest state is the master's verdict, not the agent's.
            let unreachable = fw.unreachable_tasks.contains_key(&t.task.task_id);
            let state = if unreachable { t.task.state } else { t.task.status_update_state.unwrap_or(t.task.state) };
            let mut s = status_for(&t.task.task_id, state, Some(Reason::ReasonReconciliation), msg);
            s.agent_id = Some(t.task.agent_id.clone());
            s.executor_id = t.task.executor_id.clone();
            if let Some(last) = t.task.statuses.last() {
                s.healthy = last.healthy;
                s.unreachable_time = last.unreachable_time;
                s.container_status = last.container_status.clone();
            }
            s
        };
        if r.tasks.is_empty() {
            for t in fw.tasks.values().chain(fw.unreachable_tasks.values()) {
                out.push(latest(t, "Reconciliation: Latest task state"));
            }
        } else {
            for rt in &r.tasks {
                if let Some(t) = fw.tasks.get(&rt.task_id).or_else(|| fw.unreachable_tasks.get(&rt.task_id)) {
                    out.push(latest(t, "Reconciliation: Latest task state"));
                    continue;
                }
                let (state, msg, time) = match &rt.agent_id {
                    // The agent has not re-registered since this master was elected: its
                    // report will tell; answering now could contradict it (Mesos is silent too).
                    Some(a) if self.recovered_agents.contains_key(a) => continue,
                    Some(a) if self.gone_agents.contains_key(a) => {
                        (TaskState::GoneByOperator, "Reconciliation: Task is gone", None)
                    }
                    Some(a) if self.agents.contains_key(a) => {
                        (TaskState::Gone, "Reconciliation: Task is unknown to the agent", None)
                    }
                    Some(a) if self.unreachable_agents.contains_key(a) => (
                        TaskState::Unreachable,
                        "Reconciliation: Task is unreachable",
                        self.unreachable_agents.get(a).map(|u| DurationInfo::from_secs_f64(u.time)),
                    ),
                    _ => (TaskState::Unknown, "Reconciliation: Task is unknown", None),
                };
                let mut s = status_for(&rt.task_id, state, Some(Reason::ReasonReconciliation), msg);
                s.agent_id = rt.agent_id.clone();
                s.unreachable_time = time;
                out.push(s);
            }
        }
        for s in out {
            self.send_status(fid, s);
        }
    }

    // ---------------------------------------------------------------- agents

    fn agent_subscribe(&mut self, call: AgentToMaster, tx: agora_http::StreamTx) -> Result<(), ApiError> {
        match call {
            AgentToMaster::Register { mut agent_info, version } => {
                if agent_info.hostname.is_empty() {
                    return Err(ApiError::bad_request("'agent_info.hostname' must not be empty"));
                }
                self.check_machine_up(&agent_info)?;
                let total = Resources::from_vec(agent_info.resources.clone());
                for r in total.iter() {
                    r.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
                }
                let pid = format!("slave(1)@{}:{}", agent_info.hostname, agent_info.port);
                let id = AgentId::new(format!("{}-S{}", self.master_info.id, self.next_agent));
                self.next_agent += 1;
                agent_info.id = Some(id.clone());
                // REGISTERED once the registry has admitted the agent.
                let record = AgentRecord { info: agent_info.clone(), pid: pid.clone(), version: version.clone() };
                self.pending_agents
                    .insert(id.clone(), PendingAgent::Register { info: agent_info, pid, version, total, tx });
                self.submit(vec![Op::AdmitAgent { agent: record }], Ack::Agent(id));
                Ok(())
            }
            AgentToMaster::Reregister { agent_info, version, frameworks, executors, tasks, completed_tasks } => {
                let report = AgentReport { frameworks, executors, tasks, completed_tasks };
                self.agent_reregister(agent_info, version, report, tx)
            }
            _ => Err(ApiError::bad_request("Expecting REGISTER or REREGISTER")),
        }
    }

    /// Completes a registration once the registry has the agent.
    fn admit_agent(
        &mut self,
        agent_info: AgentInfo,
        pid: String,
        version: String,
        total: Resources,
        tx: agora_http::StreamTx,
    ) {
        let now = now_secs();
        let id = agent_info.id.clone().unwrap_or_default();
        // An agent that restarted without its checkpoint registers afresh: the old
        // incarnation at the same address is gone.
        if let Some(old) = self.agent_at(&pid).filter(|old| *old != id) {
            if self.agents.contains_key(&old) {
                tracing::info!(agent_id = %old, "agent at {pid} registered again without its id; removing the old one");
                self.remove_agent(&old, TaskState::Gone, Reason::ReasonAgentRestarted, "Agent restarted");
            } else {
                tracing::info!(agent_id = %old, "recovered agent at {pid} registered again without its id; removing it");
                self.recovered_agents.remove(&old);
                self.submit(vec![Op::RemoveAgent { agent_id: old.value.into() }], Ack::None);
            }
        }
        self.by_pid.insert(pid.clone(), id.clone());
        let mut agent = Agent::new(agent_info, pid, version, total.clone(), self.agent_stream(&id, tx), now);
        agent.send(&MasterToAgent::Registered {
            agent_id: id.clone(),
            session_id: agent.session_id.clone(),
            master_info: self.master_info.clone(),
        });
        tracing::info!(agent_id = %id, resources = %total, "agent registered");
        self.agents.insert(id.clone(), agent);
        self.counters.agents_registered += 1;
        self.allocator.add_agent(&id, &total, &[]);
        self.dirty_agents.insert(id);
    }

    /// The registered or recovered agent at `pid`, if any.
    fn agent_at(&self, pid: &str) -> Option<AgentId> {
        let id = self.by_pid.get(pid)?;
        let here = self.agents.get(id).map(|a| a.pid == pid).unwrap_or(false)
            || self.recovered_agents.get(id).map(|r| r.pid == pid).unwrap_or(false);
        here.then(|| id.clone())
    }

    /// A stream for a new session of an agent (the stream's id is the session id).
    fn agent_stream(&self, id: &AgentId, tx: agora_http::StreamTx) -> Stream {
        let session_id = uuid::Uuid::new_v4().to_string();
        let watch = agora_http::on_stream_closed(
            &tx,
            Msg::AgentStreamClosed { agent_id: id.clone(), session_id: session_id.clone() },
            self.self_tx.clone(),
        );
        Stream { id: session_id, tx, _cancel_watch: watch, max_backlog: self.config.max_stream_backlog }
    }

    fn agent_reregister(
        &mut self,
        agent_info: AgentInfo,
        version: String,
        report: AgentReport,
        tx: agora_http::StreamTx,
    ) -> Result<(), ApiError> {
        let id = agent_info.id.clone().ok_or_else(|| ApiError::bad_request("REREGISTER needs 'agent_info.id'"))?;
        let total = Resources::from_vec(agent_info.resources.clone());
        for r in total.iter() {
            r.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        if self.gone_agents.contains_key(&id) {
            return Err(ApiError::forbidden(format!("Agent {id} has been marked gone")));
        }
        self.check_machine_up(&agent_info)?;
        let agent_info = self.with_known_reservations(&id, agent_info);
        // The registry needs a write unless it holds this agent as it is now.
        let pid = format!("slave(1)@{}:{}", agent_info.hostname, agent_info.port);
        let same = |info: &AgentInfo, p: &str, v: &str| *info == agent_info && p == pid && v == version;
        let unchanged = match (self.agents.get(&id), self.recovered_agents.get(&id)) {
            (Some(a), _) => same(&a.info, &a.pid, &a.version),
            (None, Some(r)) => same(&r.info, &r.pid, &r.version),
            (None, None) => false,
        };
        if unchanged {
            self.readmit_agent(agent_info, version, report, tx);
        } else {
            // Unknown, unreachable, or changed: REREGISTERED once the registry has it.
            let record = AgentRecord { info: agent_info.clone(), pid, version: version.clone() };
            let pending = PendingAgent::Reregister { info: agent_info, version, report, tx };
            self.pending_agents.insert(id.clone(), pending);
            self.submit(vec![Op::AdmitAgent { agent: record }], Ack::Agent(id));
        }
        Ok(())
    }

    /// Completes a re-registration: the agent is rebuilt from its report.
    fn readmit_agent(
        &mut self,
        mut agent_info: AgentInfo,
        version: String,
        report: AgentReport,
        tx: agora_http::StreamTx,
    ) {
        let AgentReport { frameworks, executors, tasks, completed_tasks } = report;
        let id = agent_info.id.clone().unwrap_or_default();
        let total = Resources::from_vec(agent_info.resources.clone());
        let now = now_secs();
        let span = tracing::info_span!("reregister", agent_id = %id);
        let _e = span.enter();
        // Take the agent out of whatever state it was in; it is rebuilt from its report.
        let unreachable = self.unreachable_agents.remove(&id);
        let was_unreachable = unreachable.is_some();
        // The tasks the master believes are on this agent (none after a master failover).
        let mut known: HashSet<(FrameworkId, TaskId)> = unreachable.map(|u| u.tasks).unwrap_or_default();
        let was_recovered = self.recovered_agents.remove(&id).is_some();
        let previous = self.agents.remove(&id);
        if let Some(prev) = &previous {
            known.extend(prev.tasks.iter().cloned());
            for oid in prev.offers.clone() {
                self.rescind_offer(&oid, true);
            }
            self.allocator.remove_agent(&id);
        }
        let registered_time = previous.as_ref().map(|p| p.registered_time).unwrap_or(now);
        agent_info.id = Some(id.clone());
        let pid = format!("slave(1)@{}:{}", agent_info.hostname, agent_info.port);
        let mut agent =
            Agent::new(agent_info, pid, version, total.clone(), self.agent_stream(&id, tx), registered_time);
        agent.reregistered_time = Some(now);
        let resend = self.resend_checkpoint.remove(&id);
        agent.send(&MasterToAgent::Reregistered {
            agent_id: id.clone(),
            session_id: agent.session_id.clone(),
            master_info: self.master_info.clone(),
        });
        if let Some(resources) = resend {
            agent.send(&MasterToAgent::CheckpointResources { resources });
        }
        // Frameworks the master does not know (e.g. after a master restart) are recreated
        // disconnected, waiting for their scheduler to re-subscribe.
        for fi in frameworks {
            let Some(fid) = fi.id.clone() else { continue };
            if self.frameworks.contains_key(&fid)
                || self.completed_frameworks.iter().any(|f| f.info.id.as_ref() == Some(&fid))
            {
                continue;
            }
            self.insert_recovered_framework(fid, fi, now);
        }
        for e in executors {
            if let Some(fw) = self.frameworks.get_mut(&e.framework_id) {
                fw.executors
                    .entry(id.clone())
                    .or_default()
                    .insert(e.executor_info.executor_id.clone(), e.executor_info);
            }
        }
        let mut reported: HashSet<(FrameworkId, TaskId)> = HashSet::new();
        let mut used: HashMap<FrameworkId, Resources> = HashMap::new();
        let mut to_kill: Vec<(FrameworkId, TaskId)> = Vec::new();
        let mut notify: Vec<(FrameworkId, TaskStatus)> = Vec::new();
        for mut t in tasks {
            // The master's own copy of the framework id, when it knows the framework.
            let fid = self
                .frameworks
                .get_key_value(&t.framework_id)
                .map_or_else(|| t.framework_id.clone(), |(k, _)| k.clone());
            share_task_ids(&mut t, &fid, &id);
            let key = (fid.clone(), t.task_id.clone());
            // Only needed to find what the master knew and the agent no longer has (none
            // after a master failover, where this is 400,000 inserts for nothing).
            if !known.is_empty() {
                reported.insert(key.clone());
            }
            let Some(fw) = self.frameworks.get_mut(&fid) else {
                // The framework was torn down while the agent was away.
                to_kill.push(key);
                continue;
            };
            let came_back = fw.unreachable_tasks.remove(&t.task_id);
            let existing = fw.tasks.remove(&t.task_id).or(came_back);
            let was_unreachable_task = existing
                .as_ref()
                .map(|e| e.task.state == TaskState::Unreachable || e.task.state == TaskState::Lost)
                .unwrap_or(false);
            let (state, executor_id) = (t.state, t.executor_id.clone());
            let mut entry = match existing {
                Some(mut entry) => {
                    let e = Arc::make_mut(&mut entry);
                    e.task.state = t.state;
                    if t.status_update_state.is_some() {
                        e.task.status_update_state = t.status_update_state;
                        e.task.status_update_uuid = t.status_update_uuid.take();
                    }
                    if !t.statuses.is_empty() && e.task.statuses.len() < t.statuses.len() {
                        // The report's statuses, pointed at the kept task's ids.
                        e.task.statuses = std::mem::take(&mut t.statuses);
                        share_statuses(&mut e.task);
                    }
                    entry
                }
                None => {
                    // Unknown to this master (a failover): the agent's record becomes ours.
                    adopt_reported(&mut t, &mut self.role_names);
                    Arc::new(TaskEntry { task: t, released: false })
                }
            };
            Arc::make_mut(&mut entry).released = state.is_terminal();
            if !entry.released {
                entry.add_resources_to(used.entry(fid.clone()).or_default());
            }
            if was_unreachable_task && !state.is_terminal() {
                let mut s = status_for(&key.1, state, Some(Reason::ReasonAgentReregistered), "Agent re-registered");
                s.agent_id = Some(id.clone());
                s.executor_id = executor_id;
                notify.push((fid.clone(), s));
            }
            fw.tasks.insert(key.1.clone(), entry);
            agent.tasks.insert(key);
        }
        // Tasks the master believes are on this agent but the agent does not report are gone.
        let mut missing: Vec<(FrameworkId, TaskId)> = Vec::new();
        for key in known {
            if reported.contains(&key) {
                continue;
            }
            let Some(fw) = self.frameworks.get(&key.0) else { continue };
            let Some(t) = fw.tasks.get(&key.1).or_else(|| fw.unreachable_tasks.get(&key.1)) else { continue };
            if t.task.agent_id == id && !t.task.state.is_terminal() {
                missing.push(key);
            }
        }
        for (fid, tid) in missing {
            if let Some(fw) = self.frameworks.get_mut(&fid) {
                let entry = fw.tasks.remove(&tid).or_else(|| fw.unreachable_tasks.remove(&tid));
                if let Some(e) = entry {
                    let mut e = Arc::unwrap_or_clone(e);
                    let mut s = status_for(
                        &tid,
                        TaskState::Gone,
                        Some(Reason::ReasonAgentRestarted),
                        "Task is unknown to the agent after it re-registered",
                    );
                    s.agent_id = Some(id.clone());
                    e.task.state = TaskState::Gone;
                    push_status(&mut e.task, s.clone());
                    fw.add_completed(e.task, self.config.max_completed_tasks_per_framework);
                    notify.push((fid.clone(), s));
                }
            }
        }
        // Tasks that ended on the agent before this master knew it (it failed over since):
        // the frameworks' history of completed tasks, rebuilt as Mesos rebuilds it. A master
        // that knew the agent has seen these end already.
        if previous.is_none() && !was_unreachable {
            let keep = self.config.max_completed_tasks_per_framework;
            for mut t in completed_tasks {
                let Some(fid) = self.frameworks.get_key_value(&t.framework_id).map(|(k, _)| k.clone()) else {
                    continue;
                };
                if !t.state.is_terminal() || t.agent_id != id {
                    continue;
                }
                share_task_ids(&mut t, &fid, &id);
                adopt_reported(&mut t, &mut self.role_names);
                if let Some(fw) = self.frameworks.get_mut(&fid) {
                    fw.add_completed(t, keep);
                }
            }
        }
        let used_list: Vec<(FrameworkId, Resources)> = used.into_iter().collect();
        self.allocator.add_agent(&id, &total, &used_list);
        for (fid, tid) in to_kill {
            agent.send(&MasterToAgent::KillTask { framework_id: fid.clone(), task_id: tid, kill_policy: None });
            agent.send(&MasterToAgent::ShutdownFramework { framework_id: fid });
        }
        self.by_pid.insert(agent.pid.clone(), id.clone());
        self.agents.insert(id.clone(), agent);
        self.counters.agents_reregistered += 1;
        tracing::info!(was_unreachable, was_recovered, "agent re-registered");
        for (fid, s) in notify {
            self.send_status(&fid, s);
        }
        self.dirty_agents.insert(id);
    }

    fn check_session(&self, agent_id: &AgentId, session_id: &str) -> Result<(), ApiError> {
        match self.agents.get(agent_id) {
            Some(a) if a.session_id == session_id => Ok(()),
            Some(_) => Err(ApiError::forbidden("Agent session is not current: re-register")),
            None => Err(ApiError::forbidden("Agent is not registered: re-register")),
        }
    }

    fn agent_call(&mut self, call: AgentToMaster) -> Result<(), ApiError> {
        match call {
            AgentToMaster::Pong { agent_id, session_id } => {
                self.check_session(&agent_id, &session_id)?;
                if let Some(a) = self.agents.get_mut(&agent_id) {
                    a.awaiting_pong = false;
                    a.missed_pings = 0;
                }
                Ok(())
            }
            AgentToMaster::StatusUpdate { agent_id, session_id, update } => {
                self.check_session(&agent_id, &session_id)?;
                self.status_update(&agent_id, update);
                Ok(())
            }
            AgentToMaster::ExecutorExited { agent_id, session_id, framework_id, executor_id, status } => {
                self.check_session(&agent_id, &session_id)?;
                let mut release = None;
                if let Some(fw) = self.frameworks.get_mut(&framework_id) {
                    if let Some(m) = fw.executors.get_mut(&agent_id) {
                        if let Some(e) = m.remove(&executor_id) {
                            release = Some(e);
                        }
                        if m.is_empty() {
                            fw.executors.remove(&agent_id);
                        }
                    }
                    fw.send(&Event::failure(sched::Failure {
                        agent_id: Some(agent_id.clone()),
                        executor_id: Some(executor_id.clone()),
                        status,
                    }));
                }
                if let Some(e) = release {
                    if !e.resources.is_empty() {
                        let role = self
                            .frameworks
                            .get(&framework_id)
                            .map(|f| f.info.effective_roles().into_iter().next().unwrap_or_default());
                        let res = Resources::from_vec(e.resources.clone());
                        let res = if res.iter().all(|r| r.allocation_role().is_some()) {
                            res
                        } else {
                            res.allocated_to(role.as_deref())
                        };
                        self.allocator.recover(&framework_id, &agent_id, &res, None, self.now());
                        self.dirty_agents.insert(agent_id);
                    }
                }
                Ok(())
            }
            AgentToMaster::ExecutorMessage { agent_id, session_id, framework_id, executor_id, data } => {
                self.check_session(&agent_id, &session_id)?;
                if let Some(fw) = self.frameworks.get_mut(&framework_id) {
                    fw.send(&Event::message(sched::EventMessage { agent_id, executor_id, data }));
                }
                Ok(())
            }
            AgentToMaster::Register { .. } | AgentToMaster::Reregister { .. } => {
                Err(ApiError::bad_request("REGISTER and REREGISTER open a stream; they are not plain calls"))
            }
        }
    }

    fn status_update(&mut self, agent_id: &AgentId, update: StatusUpdate) {
        let StatusUpdate { framework_id: fid, mut status, latest_state } = update;
        status.agent_id = Some(agent_id.clone());
        let Some(fw) = self.frameworks.get_mut(&fid) else {
            tracing::info!(framework_id = %fid, task_id = %status.task_id, "status update for an unknown framework; telling the agent to shut it down");
            if let Some(a) = self.agents.get_mut(agent_id) {
                a.send(&MasterToAgent::ShutdownFramework { framework_id: fid });
            }
            return;
        };
        let latest = latest_state.unwrap_or(status.state);
        let mut release: Option<(Resources, AgentId)> = None;
        if let Some(mut t) = fw.tasks.get_mut(&status.task_id) {
            let newly_terminal = latest.is_terminal() && !t.task.state.is_terminal();
            t.task.state = latest;
            t.task.status_update_state = Some(status.state);
            t.task.status_update_uuid = status.uuid.clone();
            let dup = status.uuid.is_some() && t.task.statuses.iter().any(|s| s.uuid == status.uuid);
            if !dup {
                let mut rec = status.clone();
                rec.data = None;
                push_status(&mut t.task, rec);
            }
            if latest.is_terminal() && !t.released {
                t.released = true;
                release = Some((t.resources(), t.task.agent_id.clone()));
            }
            if newly_terminal {
                match latest {
                    TaskState::Finished => self.counters.tasks_finished += 1,
                    TaskState::Failed => self.counters.tasks_failed += 1,
                    TaskState::Killed => self.counters.tasks_killed += 1,
                    TaskState::Lost => self.counters.tasks_lost += 1,
                    TaskState::Error => self.counters.tasks_error += 1,
                    TaskState::Dropped => self.counters.tasks_dropped += 1,
                    TaskState::Gone | TaskState::GoneByOperator => self.counters.tasks_gone += 1,
                    _ => {}
                }
            }
        } else {
            tracing::debug!(framework_id = %fid, task_id = %status.task_id, "status update for a task the master does not track; forwarding");
        }
        let mut forwarded = status.clone();
        forwarded.state = forwarded.state.for_framework(fw.info.partition_aware());
        if forwarded.state == TaskState::Killing && !fw.info.has_capability("TASK_KILLING_STATE") {
            // Only frameworks that asked for TASK_KILLING see it; the agent never waits on
            // an acknowledgement for it from others (it acknowledges it on their behalf).
        } else {
            fw.send(&Event::update(forwarded));
        }
        if let Some((res, aid)) = release {
            self.allocator.recover(&fid, &aid, &res, None, self.now());
            self.dirty_agents.insert(aid);
        }
    }

    fn deactivate_agent(&mut self, id: &AgentId) {
        let offers: Vec<OfferId> = self.agents.get(id).map(|a| a.offers.iter().cloned().collect()).unwrap_or_default();
        for o in offers {
            self.rescind_offer(&o, true);
        }
        self.allocator.deactivate_agent(id);
        self.dirty_agents.remove(id);
    }

    /// Removes an agent for good (restarted under a new id): its tasks end with `state`.
    fn remove_agent(&mut self, id: &AgentId, state: TaskState, reason: Reason, message: &str) {
        self.deactivate_agent(id);
        let Some(agent) = self.agents.remove(id) else { return };
        self.allocator.remove_agent(id);
        self.submit(vec![Op::RemoveAgent { agent_id: id.value.to_string() }], Ack::None);
        for (fid, tid) in agent.tasks {
            let Some(fw) = self.frameworks.get_mut(&fid) else { continue };
            if let Some(t) = fw.tasks.remove(&tid) {
                let mut t = Arc::unwrap_or_clone(t);
                if !t.task.state.is_terminal() {
                    let mut s = status_for(&tid, state, Some(reason), message);
                    s.agent_id = Some(id.clone());
                    t.task.state = state;
                    push_status(&mut t.task, s.clone());
                    let pa = fw.info.partition_aware();
                    s.state = s.state.for_framework(pa);
                    fw.send(&Event::update(s));
                }
                fw.add_completed(t.task, self.config.max_completed_tasks_per_framework);
            }
        }
        for fw in self.frameworks.values_mut() {
            fw.executors.remove(id);
            fw.send(&Event::failure(sched::Failure { agent_id: Some(id.clone()), executor_id: None, status: None }));
        }
    }

    fn mark_unreachable(&mut self, id: &AgentId) {
        self.deactivate_agent(id);
        let Some(agent) = self.agents.remove(id) else { return };
        tracing::warn!(agent_id = %id, "agent missed its pings; marking it unreachable");
        self.counters.agents_unreachable += 1;
        self.allocator.remove_agent(id);
        let now = now_secs();
        self.submit(vec![Op::MarkUnreachable { agent_id: id.value.to_string(), time: now }], Ack::None);
        for (fid, tid) in &agent.tasks {
            let Some(fw) = self.frameworks.get_mut(fid) else { continue };
            let Some(mut entry) = fw.tasks.remove(tid) else { continue };
            if entry.task.state.is_terminal() {
                // Finished but not yet acknowledged: the agent will resend when it returns.
                fw.unreachable_tasks.insert(tid.clone(), entry);
                continue;
            }
            let t = Arc::make_mut(&mut entry);
            self.counters.tasks_unreachable += 1;
            let pa = fw.info.partition_aware();
            let mut s = status_for(
                tid,
                TaskState::Unreachable,
                Some(Reason::ReasonAgentRemoved),
                format!("Agent {id} is unreachable"),
            );
            s.agent_id = Some(id.clone());
            s.executor_id = t.task.executor_id.clone();
            s.unreachable_time = Some(DurationInfo::from_secs_f64(now));
            t.task.state = if pa { TaskState::Unreachable } else { TaskState::Lost };
            push_status(&mut t.task, s.clone());
            t.released = true;
            fw.unreachable_tasks.insert(tid.clone(), entry);
            s.state = s.state.for_framework(pa);
            fw.send(&Event::update(s));
        }
        for fw in self.frameworks.values_mut() {
            if fw.executors.contains_key(id) || agent.tasks.iter().any(|(f, _)| Some(f) == fw.info.id.as_ref()) {
                fw.send(&Event::failure(sched::Failure {
                    agent_id: Some(id.clone()),
                    executor_id: None,
                    status: None,
                }));
            }
        }
        self.unreachable_agents.insert(id.clone(), UnreachableAgent { time: now, tasks: agent.tasks });
        // Dropping the agent entry closes its stream; when it wakes it re-registers.
    }

    /// MARK_AGENT_GONE: the agent (registered or unreachable) will never come back; its
    /// tasks end TASK_GONE_BY_OPERATOR and it is refused if it tries.
    fn mark_gone(&mut self, id: &AgentId) -> Result<(), ApiError> {
        if self.gone_agents.contains_key(id) {
            return Ok(());
        }
        let known = self.agents.contains_key(id)
            || self.unreachable_agents.contains_key(id)
            || self.recovered_agents.contains_key(id);
        if !known {
            return Err(ApiError::bad_request(format!("Agent {id} is not known to the master")));
        }
        let now = now_secs();
        let message = "Agent was marked gone by the operator";
        if let Some(a) = self.agents.get_mut(id) {
            a.send(&MasterToAgent::Shutdown { message: message.into() });
        }
        self.remove_agent(id, TaskState::GoneByOperator, Reason::ReasonAgentRemovedByOperator, message);
        self.recovered_agents.remove(id);
        if let Some(u) = self.unreachable_agents.remove(id) {
            for (fid, tid) in u.tasks {
                let Some(fw) = self.frameworks.get_mut(&fid) else { continue };
                let Some(t) = fw.unreachable_tasks.remove(&tid) else { continue };
                let mut t = Arc::unwrap_or_clone(t);
                let mut s =
                    status_for(&tid, TaskState::GoneByOperator, Some(Reason::ReasonAgentRemovedByOperator), message);
                s.agent_id = Some(id.clone());
                t.task.state = TaskState::GoneByOperator;
                push_status(&mut t.task, s.clone());
                s.state = s.state.for_framework(fw.info.partition_aware());
                fw.send(&Event::update(s));
                fw.add_completed(t.task, self.config.max_completed_tasks_per_framework);
            }
        }
        self.gone_agents.insert(id.clone(), now);
        self.submit(vec![Op::MarkGone { agent_id: id.value.to_string(), time: now }], Ack::None);
        tracing::warn!(agent_id = %id, "agent marked gone by the operator");
        Ok(())
    }

    /// Pings the agents of one slice of the interval (each agent once per interval) and
    /// marks unreachable those that missed too many pings.
    fn ping_agents(&mut self, slice: u32) {
        let mut unreachable = Vec::new();
        for (id, a) in self.agents.iter_mut().filter(|(_, a)| a.ping_slice == slice) {
            if a.awaiting_pong {
                a.missed_pings += 1;
                if a.missed_pings >= self.config.max_agent_ping_timeouts {
                    unreachable.push(id.clone());
                    continue;
                }
            }
            if a.connected() {
                a.awaiting_pong = true;
                a.send(&MasterToAgent::Ping);
            } else {
                // A disconnected agent cannot pong: count the miss.
                a.awaiting_pong = true;
            }
        }
        for id in unreachable {
            if !self.removal_permitted() {
                tracing::info!(agent_id = %id, "marking the agent unreachable is deferred by --agent-removal-rate-limit");
                continue;
            }
            self.mark_unreachable(&id);
        }
    }

    /// Whether one more agent may be marked unreachable now under the removal rate limit;
    /// counts the removal when it may.
    fn removal_permitted(&mut self) -> bool {
        let Some((count, period)) = self.config.agent_removal_rate_limit else { return true };
        let now = Instant::now();
        while self.removals.front().map(|t| now.duration_since(*t) >= period).unwrap_or(false) {
            self.removals.pop_front();
        }
        if self.removals.len() as u32 >= count {
            return false;
        }
        self.removals.push_back(now);
        true
    }

    fn heartbeat(&mut self) {
        let hb = Event::heartbeat();
        for fw in self.frameworks.values_mut() {
            fw.send(&hb);
        }
    }

    // ---------------------------------------------------------------- allocation

    fn allocate(&mut self) {
        let now = self.now();
        let allocations = if self.full_allocation {
            self.allocator.allocate(now)
        } else if !self.dirty_agents.is_empty() {
            let agents: Vec<AgentId> = self.dirty_agents.iter().cloned().collect();
            self.allocator.allocate_agents(&agents, now)
        } else {
            Vec::new()
        };
        self.full_allocation = false;
        self.dirty_agents.clear();
        if allocations.is_empty() {
            return;
        }
        let mut per_framework: BTreeMap<FrameworkId, Vec<Offer>> = BTreeMap::new();
        for Allocation { framework_id, agent_id, role, resources } in allocations {
            let unavailability = self.agents.get(&agent_id).and_then(|a| self.unavailability_of(&a.info));
            let Some(agent) = self.agents.get_mut(&agent_id) else {
                self.allocator.recover(&framework_id, &agent_id, &resources, None, now);
                continue;
            };
            let Some(fw) = self.frameworks.get_mut(&framework_id) else {
                self.allocator.recover(&framework_id, &agent_id, &resources, None, now);
                continue;
            };
            if !fw.connected() {
                self.allocator.recover(&framework_id, &agent_id, &resources, None, now);
                continue;
            }
            let oid = OfferId::new(format!("{}-O{}", self.master_info.id, self.next_offer));
            self.next_offer += 1;
            let ip = agent.pid.rsplit('@').next().and_then(|hp| hp.rsplit_once(':')).map(|(h, _)| h.to_string());
            let offer = Offer {
                id: oid.clone(),
                framework_id: framework_id.clone(),
                agent_id: agent_id.clone(),
                hostname: agent.info.hostname.clone(),
                url: Some(serde_json::json!({
                    "scheme": "http",
                    "address": {"hostname": agent.info.hostname, "ip": ip, "port": agent.info.port},
                    "path": "/slave(1)",
                    "query": []
                })),
                resources: resources.with_legacy_roles().into_vec(),
                attributes: agent.info.attributes.clone(),
                executor_ids: fw.executors.get(&agent_id).map(|m| m.keys().cloned().collect()).unwrap_or_default(),
                allocation_info: Some(agent_api_alloc(&role)),
                unavailability,
            };
            agent.offers.insert(oid.clone());
            fw.offers.insert(oid.clone());
            self.offers.insert(
                oid,
                OfferEntry { offer: offer.clone(), resources, framework_id: framework_id.clone(), agent_id },
            );
            per_framework.entry(framework_id).or_default().push(offer);
        }
        for (fid, offers) in per_framework {
            self.counters.offers_sent += offers.len() as u64;
            if let Some(fw) = self.frameworks.get_mut(&fid) {
                fw.send(&Event::offers(offers));
            }
        }
    }

    // ---------------------------------------------------------------- operator

    fn operator_call(&mut self, call: operator::Call) -> Result<operator::Response, ApiError> {
        use operator::CallType as T;
        let mut r = operator::Response::of(call.kind);
        match call.kind {
            T::GetHealth => r.get_health = Some(operator::GetHealth { healthy: true }),
            T::GetVersion => {
                r.get_version = Some(operator::GetVersion { version_info: crate::legacy::version_info() });
            }
            T::GetState => r.get_state = Some(crate::legacy::get_state(self)),
            T::GetAgents => r.get_agents = Some(crate::legacy::get_agents(self)),
            T::GetFrameworks => r.get_frameworks = Some(crate::legacy::get_frameworks(self)),
            T::GetExecutors => r.get_executors = Some(crate::legacy::get_executors(self)),
            T::GetTasks => r.get_tasks = Some(crate::legacy::get_tasks(self)),
            T::GetMaster => {
                r.get_master = Some(operator::GetMaster {
                    master_info: self.master_info.clone(),
                    start_time: Some(self.start_time),
                    elected_time: self.elected_time,
                })
            }
            T::GetFlags => {
                let flags: serde_json::Map<String, serde_json::Value> =
                    self.config.flags.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
                r.get_flags = Some(
                    serde_json::json!({"flags": flags.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect::<Vec<_>>()}),
                );
            }
            T::GetMetrics => {
                let m = crate::legacy::render(self, &Query::Metrics);
                let list: Vec<serde_json::Value> = m
                    .as_object()
                    .map(|o| o.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect())
                    .unwrap_or_default();
                r.get_metrics = Some(serde_json::json!({ "metrics": list }));
            }
            T::GetRoles => {
                r.get_roles = Some(crate::legacy::render(self, &Query::Roles));
            }
            T::Teardown => {
                let t = call.teardown.ok_or_else(|| ApiError::bad_request("Expecting 'teardown' to be present"))?;
                if !self.frameworks.contains_key(&t.framework_id) {
                    return Err(ApiError::bad_request(format!("Framework {} cannot be found", t.framework_id)));
                }
                self.remove_framework(&t.framework_id);
            }
            T::ReserveResources | T::UnreserveResources | T::CreateVolumes | T::DestroyVolumes => {
                let (payload, field) = match call.kind {
                    T::ReserveResources => (call.reserve_resources, "reserve_resources"),
                    T::UnreserveResources => (call.unreserve_resources, "unreserve_resources"),
                    T::CreateVolumes => (call.create_volumes, "create_volumes"),
                    _ => (call.destroy_volumes, "destroy_volumes"),
                };
                let p = payload.ok_or_else(|| ApiError::bad_request(format!("Expecting '{field}' to be present")))?;
                let kind = call.kind;
                self.operator_conversion(&p.agent_id, |existing| match kind {
                    T::ReserveResources => agora_api::operations::reserve(&p.resources, None, None),
                    T::UnreserveResources => agora_api::operations::unreserve(&p.resources),
                    T::CreateVolumes => agora_api::operations::create(&p.volumes, existing),
                    _ => agora_api::operations::destroy(&p.volumes),
                })?;
            }
            T::MarkAgentGone => {
                let m = call
                    .mark_agent_gone
                    .ok_or_else(|| ApiError::bad_request("Expecting 'mark_agent_gone' to be present"))?;
                self.mark_gone(&m.agent_id)?;
            }
            T::GetWeights => {
                r.get_weights = Some(operator::WeightInfos {
                    weight_infos: self
                        .weights
                        .iter()
                        .map(|(role, w)| operator::WeightInfo { weight: *w, role: role.clone() })
                        .collect(),
                });
            }
            T::UpdateWeights => {
                let u = call
                    .update_weights
                    .ok_or_else(|| ApiError::bad_request("Expecting 'update_weights' to be present"))?;
                // All or nothing: every entry is checked before any is applied.
                for w in &u.weight_infos {
                    validate_role(&w.role).map_err(ApiError::bad_request)?;
                    if w.role == "*" || !(w.weight.is_finite() && w.weight > 0.0) {
                        return Err(ApiError::bad_request(format!(
                            "Invalid weight {} for role '{}': weights are positive numbers of named roles",
                            w.weight, w.role
                        )));
                    }
                }
                for w in &u.weight_infos {
                    self.allocator.set_weight(&w.role, w.weight);
                    self.weights.insert(w.role.clone(), w.weight);
                }
                self.submit(vec![Op::SetWeights { weights: self.weights.clone() }], Ack::None);
            }
            T::GetQuota => r.get_quota = Some(self.get_quota()),
            T::UpdateQuota => {
                let u =
                    call.update_quota.ok_or_else(|| ApiError::bad_request("Expecting 'update_quota' to be present"))?;
                self.update_quota(u.quota_configs, u.force)?;
            }
            T::SetQuota => {
                let q = call.set_quota.ok_or_else(|| ApiError::bad_request("Expecting 'set_quota' to be present"))?;
                self.set_quota(q.quota_request)?;
            }
            T::RemoveQuota => {
                let q =
                    call.remove_quota.ok_or_else(|| ApiError::bad_request("Expecting 'remove_quota' to be present"))?;
                self.remove_quota(&q.role)?;
            }
            T::GetMaintenanceSchedule => {
                r.get_maintenance_schedule =
                    Some(agora_api::maintenance::GetSchedule { schedule: self.maintenance.schedule.clone() })
            }
            T::GetMaintenanceStatus => {
                r.get_maintenance_status = Some(agora_api::maintenance::GetStatus { status: self.maintenance.status() })
            }
            T::UpdateMaintenanceSchedule => {
                let u = call
                    .update_maintenance_schedule
                    .ok_or_else(|| ApiError::bad_request("Expecting 'update_maintenance_schedule' to be present"))?;
                self.update_schedule(u.schedule)?;
            }
            T::StartMaintenance => {
                let m = call
                    .start_maintenance
                    .ok_or_else(|| ApiError::bad_request("Expecting 'start_maintenance' to be present"))?;
                self.start_maintenance(m.machines)?;
            }
            T::StopMaintenance => {
                let m = call
                    .stop_maintenance
                    .ok_or_else(|| ApiError::bad_request("Expecting 'stop_maintenance' to be present"))?;
                self.stop_maintenance(m.machines)?;
            }
            T::Unknown => return Err(ApiError::bad_request("Unknown or unsupported operator call type")),
        }
        Ok(r)
    }

    pub(crate) fn offered_to(&self, fid: &FrameworkId) -> Resources {
        let mut r = Resources::new();
        if let Some(fw) = self.frameworks.get(fid) {
            for o in &fw.offers {
                if let Some(e) = self.offers.get(o) {
                    r.add_all(&e.resources);
                }
            }
        }
        r
    }

    pub(crate) fn offered_on(&self, aid: &AgentId) -> Resources {
        let mut r = Resources::new();
        if let Some(a) = self.agents.get(aid) {
            for o in &a.offers {
                if let Some(e) = self.offers.get(o) {
                    r.add_all(&e.resources);
                }
            }
        }
        r
    }

    /// Resources used by live tasks (and custom executors) on an agent.
    /// The resources a framework's tasks use (from the [`Ledger`](crate::tasks::Ledger)).
    pub(crate) fn used_by(&self, fid: &FrameworkId) -> Resources {
        self.ledger.lock().map(|l| l.framework(fid)).unwrap_or_default().to_resources()
    }

    /// The resources the tasks on an agent use, as the [`Ledger`](crate::tasks::Ledger)
    /// keeps them (compact; a big read turns them into resources off the state loop).
    pub(crate) fn used_sum_on(&self, aid: &AgentId) -> Sum {
        self.ledger.lock().map(|l| l.agent(aid)).unwrap_or_default()
    }

    pub(crate) fn uptime(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

fn agent_api_alloc(role: &str) -> agora_api::resources::AllocationInfo {
    agora_api::resources::AllocationInfo { role: Some(role.into()) }
}

/// Mesos caps refuse filters at one year; a non-positive value installs none.
fn refuse_filter(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs <= 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(secs.min(365.0 * 86400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(fid: &str, aid: &str, tid: &str) -> Task {
        // As from an agent's report, every id its own allocation (decoding shares the
        // repeats it sees close together; reports decoded on other threads do not).
        let mut t: Task = serde_json::from_value(serde_json::json!({
            "name": "t", "task_id": {"value": tid}, "framework_id": {"value": fid},
            "agent_id": {"value": aid}, "state": "TASK_RUNNING",
            "statuses": [
                {"task_id": {"value": tid}, "state": "TASK_STARTING", "agent_id": {"value": aid},
                 "executor_id": {"value": tid}},
                {"task_id": {"value": tid}, "state": "TASK_RUNNING", "agent_id": {"value": "elsewhere"}},
            ],
        }))
        .unwrap();
        let own = |x: &Text| Text::from(x.to_string());
        t.task_id.value = own(&t.task_id.value);
        t.framework_id.value = own(&t.framework_id.value);
        t.agent_id.value = own(&t.agent_id.value);
        for s in &mut t.statuses {
            s.task_id.value = own(&s.task_id.value);
            let ids = [s.agent_id.as_mut().map(|a| &mut a.value), s.executor_id.as_mut().map(|e| &mut e.value)];
            for v in ids.into_iter().flatten() {
                *v = own(v);
            }
        }
        assert!(!t.statuses[0].task_id.value.shares(&t.task_id.value));
        t
    }

    #[test]
    fn agents_are_spread_evenly_over_the_ping_slices() {
        // Ids as a master gives them: one prefix, a counter.
        let mut per_slice = [0u32; PING_SLICES as usize];
        for i in 0..16_000 {
            let id = Some(AgentId::new(format!("4eae6d2d-90e3-489b-9e4f-85666dd57573-S{i}").as_str()));
            let slice = ping_slice_of(&id);
            assert_eq!(slice, ping_slice_of(&id), "the same agent keeps its slice");
            per_slice[slice as usize] += 1;
        }
        // 1,000 each on average; every slice within a fifth of it.
        assert!(per_slice.iter().all(|&n| (800..=1200).contains(&n)), "{per_slice:?}");
    }

    #[test]
    fn a_task_shares_the_masters_ids_and_its_statuses_share_its_own() {
        let (fid, aid) = (FrameworkId::new("fw"), AgentId::new("agent"));
        let mut t = task("fw", "agent", "t1");
        assert!(!t.framework_id.value.shares(&fid.value));
        share_task_ids(&mut t, &fid, &aid);
        assert!(t.framework_id.value.shares(&fid.value));
        assert!(t.agent_id.value.shares(&aid.value));
        let s = &t.statuses[0];
        assert!(s.task_id.value.shares(&t.task_id.value));
        assert!(s.agent_id.as_ref().unwrap().value.shares(&aid.value));
        // The command executor's id is the task id: shared too.
        assert!(s.executor_id.as_ref().unwrap().value.shares(&t.task_id.value));
        // A different id stays as it was.
        assert_eq!(t.statuses[1].agent_id.as_ref().unwrap().value, "elsewhere");

        // Ids that differ are left alone, and nothing else changes.
        let mut other = task("fw2", "agent2", "t2");
        let before = other.clone();
        share_task_ids(&mut other, &fid, &aid);
        assert_eq!(other, before);
        assert!(!other.framework_id.value.shares(&fid.value));

        // A status added later shares the task's ids as well.
        let mut s = TaskStatus::new(TaskId::new("t1"), TaskState::Finished);
        s.agent_id = Some(AgentId::new("agent"));
        push_status(&mut t, s);
        let last = t.statuses.last().unwrap();
        assert!(last.task_id.value.shares(&t.task_id.value));
        assert!(last.agent_id.as_ref().unwrap().value.shares(&aid.value));
        assert_eq!(t.statuses.len(), 3);

        // A report's history adopted by the task the master kept shares the kept task's ids.
        let mut kept = task("fw", "agent", "t1");
        kept.statuses = task("fw", "agent", "t1").statuses;
        share_statuses(&mut kept);
        assert!(kept.statuses[0].task_id.value.shares(&kept.task_id.value));
        assert!(kept.statuses[0].agent_id.as_ref().unwrap().value.shares(&kept.agent_id.value));
    }

    #[test]
    fn an_adopted_task_holds_merged_resources_shared_roles_and_no_spare_room() {
        // Decoded from text, as a report is (a `Value` would say how long its lists are).
        let report = serde_json::json!({
            "name": "t", "task_id": {"value": "t1"}, "framework_id": {"value": "fw"},
            "agent_id": {"value": "a"}, "state": "TASK_RUNNING",
            "resources": [
                {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}, "allocation_info": {"role": "web"}},
                {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}, "allocation_info": {"role": "web"}},
                {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.25}, "allocation_info": {"role": "web"}},
            ],
            "statuses": [{"task_id": {"value": "t1"}, "state": "TASK_RUNNING"}],
        });
        let mut t: Task = serde_json::from_str(&report.to_string()).unwrap();
        // Decoded to their length (`exact_vec`): no spare room from the start.
        assert_eq!((t.resources.capacity(), t.statuses.capacity()), (3, 1));
        let mut roles = RoleNames::default();
        let web = roles.get("web");
        adopt_reported(&mut t, &mut roles);
        let cpus = t.resources.iter().find(|r| r.name == "cpus").unwrap();
        assert_eq!(cpus.scalar.as_ref().map(|s| s.value), Some(0.75));
        assert_eq!(t.resources.len(), 2);
        for r in &t.resources {
            assert!(r.allocation_info.as_ref().unwrap().role.as_ref().unwrap().shares(&web));
        }
        assert_eq!((t.resources.capacity(), t.statuses.capacity()), (2, 1));
    }
}
