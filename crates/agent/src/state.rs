//! The agent's state and the one task that owns it: frameworks, executors, tasks, and the
//! status update manager that delivers every update to the master at least once, in order
//! per task, until the framework acknowledges it.
use crate::checkpoint::{Checkpoints, ExecutorRecord, Recovered, UpdateRecord};
use crate::images::{ImageRequest, Images, Progress, ProvisionedAll};
use crate::AgentConfig;
use agora_api::agent_proto::{AgentToMaster, ExecutorReport, MasterToAgent, StatusUpdate};
use agora_api::executor as exec;
use agora_api::json::{to_ascii_json, Bytes as B64};
use agora_api::*;
use agora_containerizer::{ContainerExit, Containerizer, LaunchSpec};
use agora_http::http::StatusCode;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, m: impl Into<String>) -> Self {
        ApiError { status, message: m.into() }
    }
}

/// Read-only views for the HTTP layer.
#[derive(Debug, Clone)]
pub enum Query {
    State,
    Metrics,
    /// Per-container resource usage: `/monitor/statistics` (`false`) or `/containers` (`true`).
    Containers {
        detailed: bool,
    },
    /// Resolves a `/files` path (virtual or real) to a host path inside the work dir.
    SandboxRoot,
}

// Actor messages are moved once, never stored: their size spread does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Msg {
    /// The master link got REGISTERED / REREGISTERED.
    Connected {
        agent_id: AgentId,
        session_id: String,
    },
    Disconnected,
    FromMaster(MasterToAgent),
    /// The master link asks what to register with.
    RegistrationCall {
        reply: oneshot::Sender<AgentToMaster>,
    },
    ExecutorSubscribe {
        call: exec::Call,
        tx: agora_http::StreamTx,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    ExecutorCall {
        call: exec::Call,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    ContainerExited(ContainerExit),
    RegistrationTimeout {
        framework_id: FrameworkId,
        executor_id: ExecutorId,
        container_id: ContainerId,
    },
    ShutdownTimeout {
        framework_id: FrameworkId,
        executor_id: ExecutorId,
        container_id: ContainerId,
    },
    Query {
        query: Query,
        reply: oneshot::Sender<serde_json::Value>,
    },
    ExecutorStreamClosed {
        framework_id: FrameworkId,
        executor_id: ExecutorId,
        container_id: ContainerId,
        /// Which subscription: a late close of an earlier one must not drop a newer one.
        stream: u64,
    },
    /// Destroy every container and answer once they have all ended (or the deadline passed).
    /// The executor re-registration window after a restart has closed.
    RecoveryDone,
    /// disk/du measured these sandboxes: (container, bytes used, quota).
    DiskUsage(Vec<(ContainerId, u64, Option<u64>)>),
    /// network/ports found these containers listening on these ports.
    Listening(Vec<(ContainerId, std::collections::BTreeSet<u16>)>),
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    ShutdownDeadline,
    /// The master removed this agent a while ago: destroy what still runs.
    RemovedDeadline,
    /// A long image pull is still going: tell the framework (TASK_STARTING).
    ImageProgress {
        container_id: ContainerId,
        message: String,
    },
    /// A container's image is pulled and its rootfs provisioned (or that failed).
    ImageReady {
        container_id: ContainerId,
        result: Result<ProvisionedAll, String>,
    },
}

#[derive(Clone)]
pub struct Handle {
    pub tx: mpsc::UnboundedSender<Msg>,
}

impl Handle {
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).ok()?;
        rx.await.ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExecState {
    /// Its image is being pulled and provisioned; no container yet.
    Provisioning,
    Registering,
    Running,
    Terminating,
    Terminated,
}

/// Ended tasks of a framework reported at re-registration, at most (the newest): a master
/// keeps 1,000 a framework by default, and a re-registration must stay well within the
/// master's 64 MB limit on a request.
const COMPLETED_REPORTED: usize = 1000;

struct AgentTask {
    info: TaskInfo,
    state: TaskState,
    statuses: Vec<TaskStatus>,
}

struct Executor {
    info: ExecutorInfo,
    container_id: ContainerId,
    directory: PathBuf,
    is_command: bool,
    state: ExecState,
    stream: Option<ExecStream>,
    queued: Vec<TaskInfo>,
    tasks: BTreeMap<TaskId, AgentTask>,
    completed: Vec<AgentTask>,
    pid: u32,
    /// Taken over from a previous agent run; must re-subscribe within the window.
    recovered: bool,
    /// What to launch once the image is provisioned.
    pending_launch: Option<LaunchSpec>,
    /// KILL events for launched tasks that arrived while the executor had no subscription.
    pending_kills: Vec<exec::Event>,
}

impl Executor {
    fn send(&mut self, e: &exec::Event) {
        if let Some(s) = &self.stream {
            if s.tx.send(Bytes::from(recordio::encode(&to_ascii_json(e)))).is_err() {
                self.stream = None;
            }
        }
    }
}

struct Framework {
    info: FrameworkInfo,
    executors: BTreeMap<ExecutorId, Executor>,
    completed_executors: VecDeque<Executor>,
    shutting_down: bool,
}

/// Updates of one task not yet acknowledged; only the head is in flight.
struct UpdateStream {
    pending: VecDeque<TaskStatus>,
    next_retry: Option<Instant>,
    backoff: Duration,
}

pub(crate) struct State {
    config: AgentConfig,
    self_tx: mpsc::UnboundedSender<Msg>,
    out: mpsc::UnboundedSender<AgentToMaster>,
    containerizer: Arc<dyn Containerizer>,
    images: Arc<Images>,
    /// Containers whose image is being provisioned.
    provisioning: HashMap<ContainerId, (FrameworkId, ExecutorId)>,
    exits_tx: mpsc::UnboundedSender<ContainerExit>,
    agent_info: AgentInfo,
    agent_id: Option<AgentId>,
    session_id: Option<String>,
    frameworks: BTreeMap<FrameworkId, Framework>,
    completed_frameworks: VecDeque<Framework>,
    streams: BTreeMap<(FrameworkId, TaskId), UpdateStream>,
    containers: HashMap<ContainerId, (FrameworkId, ExecutorId)>,
    start_time: f64,
    started: Instant,
    counters: Counters,
    checkpoints: Checkpoints,
    /// Fired when the checkpointed state is rebuilt: the master link may register.
    recovery: Option<oneshot::Sender<()>>,
    /// True while recovered executors still have their window to re-subscribe.
    recovering: bool,
    /// When each live task's RUN_TASK arrived, for the launch latency figures.
    launch_times: HashMap<(FrameworkId, TaskId), Instant>,
    /// Recent RUN_TASK -> TASK_RUNNING and RUN_TASK -> terminal latencies (ms).
    to_running_ms: VecDeque<f64>,
    to_exit_ms: VecDeque<f64>,
    /// RUN_TASK received -> its executor's container launched (the agent's own work:
    /// sandbox, cgroups, checkpoint, the supervisor spawned), for tasks that started one.
    to_spawned_ms: VecDeque<f64>,
    /// RUN_TASK received -> its executor subscribed (adds the supervisor's namespaces,
    /// mounts and exec, and the executor's start).
    to_subscribed_ms: VecDeque<f64>,
    /// Set while the agent shuts down: answered when the last container ended.
    shutdown: Option<oneshot::Sender<()>>,
    /// The master removed this agent (marked gone, or its machine is down): why. The agent
    /// stops registering, ends its containers, forgets its checkpointed identity and then
    /// publishes the reason here, so the process exits and a restart is a new agent.
    removed_by_master: Option<String>,
    removed_tx: watch::Sender<Option<String>>,
    /// Volumes destroyed while a container still held them: deleted once it has ended.
    destroyed_in_use: Vec<Resource>,
    /// `disk/du` is on: sandboxes are measured every `--container-disk-watch-interval`.
    disk_du: bool,
    /// The last measure of each container's sandbox: (bytes used, quota in bytes).
    disk_usage: HashMap<ContainerId, (u64, Option<u64>)>,
    /// Containers destroyed for a limitation the agent itself found (disk quota, ports),
    /// with why.
    disk_limited: HashMap<ContainerId, agora_containerizer::Limitation>,
    /// `ContainerStatus.network_infos` of containers on CNI networks.
    container_networks: HashMap<ContainerId, Vec<serde_json::Value>>,
    /// `network/ports` is on: host-network containers' listening ports are checked.
    network_ports: bool,
    /// Violations already logged (not enforced), so each is logged once.
    ports_warned: HashSet<(ContainerId, u16)>,
    /// disk/xfs: project quotas of sandboxes.
    xfs: Option<Arc<crate::xfs::Xfs>>,
}

#[derive(Default)]
struct Counters {
    tasks_finished: u64,
    tasks_failed: u64,
    tasks_killed: u64,
    tasks_lost: u64,
    executors_terminated: u64,
    status_updates_sent: u64,
    status_update_retries: u64,
    invalid_status_updates: u64,
}

pub(crate) fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn new_uuid() -> B64 {
    B64(uuid::Uuid::new_v4().as_bytes().to_vec())
}

/// Starts the agent's actor with everything `Agent::start` prepared.
#[allow(clippy::too_many_arguments)] // one call site; a struct for it would only rename them
pub(crate) fn spawn(
    config: AgentConfig,
    agent_info: AgentInfo,
    containerizer: Arc<dyn Containerizer>,
    images: Arc<Images>,
    out: mpsc::UnboundedSender<AgentToMaster>,
    recovered: Recovered,
    recovery_done: oneshot::Sender<()>,
    xfs: Option<Arc<crate::xfs::Xfs>>,
) -> (Handle, watch::Receiver<Option<String>>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (removed_tx, removed_rx) = watch::channel(None);
    let (exits_tx, exits_rx) = mpsc::unbounded_channel();
    let checkpoints = Checkpoints::new(&config.work_dir);
    let mut st = State {
        config,
        self_tx: tx.clone(),
        out,
        containerizer,
        images,
        provisioning: HashMap::new(),
        exits_tx,
        agent_info,
        agent_id: None,
        session_id: None,
        frameworks: BTreeMap::new(),
        completed_frameworks: VecDeque::new(),
        streams: BTreeMap::new(),
        containers: HashMap::new(),
        start_time: now_secs(),
        started: Instant::now(),
        counters: Counters::default(),
        shutdown: None,
        launch_times: HashMap::new(),
        to_running_ms: VecDeque::new(),
        to_exit_ms: VecDeque::new(),
        to_spawned_ms: VecDeque::new(),
        to_subscribed_ms: VecDeque::new(),
        checkpoints,
        recovery: Some(recovery_done),
        recovering: true,
        removed_by_master: None,
        removed_tx,
        destroyed_in_use: Vec::new(),
        disk_du: false,
        disk_usage: HashMap::new(),
        disk_limited: HashMap::new(),
        container_networks: HashMap::new(),
        network_ports: false,
        ports_warned: HashSet::new(),
        xfs,
    };
    let isolation = {
        use agora_containerizer::isolation::{Isolation, DEFAULT_ROOT, DEFAULT_USER};
        let root = nix::unistd::Uid::effective().is_root();
        let names =
            st.config.isolation.clone().unwrap_or_else(|| if root { DEFAULT_ROOT } else { DEFAULT_USER }.to_string());
        Isolation::parse(&names).ok()
    };
    st.disk_du = isolation.as_ref().is_some_and(|i| i.disk_du);
    st.network_ports = isolation.as_ref().is_some_and(|i| i.network_ports);
    let task = tokio::spawn(async move {
        st.restore(recovered);
        run(st, rx, exits_rx).await
    });
    (Handle { tx }, removed_rx, task)
}

async fn run(mut st: State, mut rx: mpsc::UnboundedReceiver<Msg>, mut exits: mpsc::UnboundedReceiver<ContainerExit>) {
    let mut retry = tokio::time::interval(Duration::from_millis(250));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut disk =
        tokio::time::interval(st.config.volumes.container_disk_watch_interval.max(Duration::from_millis(100)));
    disk.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ports = tokio::time::interval(st.config.ports.watch_interval.max(Duration::from_millis(100)));
    ports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => st.handle(m),
                None => break,
            },
            Some(e) = exits.recv() => st.container_exited(e),
            _ = retry.tick() => st.retry_updates(),
            _ = disk.tick(), if st.disk_du => st.measure_disks(),
            _ = ports.tick(), if st.network_ports => st.check_ports(),
        }
    }
    // The agent is going away: its containers go too unless a later issue keeps them.
    for c in st.containerizer.containers() {
        st.containerizer.destroy(&c);
    }
}

/// A subscription stream to an executor; dropping it ends the HTTP response.
struct ExecStream {
    id: u64,
    tx: agora_http::StreamTx,
    _cancel_watch: oneshot::Sender<()>,
}

fn watch_stream(id: u64, tx: agora_http::StreamTx, on_close: Msg, self_tx: mpsc::UnboundedSender<Msg>) -> ExecStream {
    let cancel = agora_http::on_stream_closed(&tx, on_close, self_tx);
    ExecStream { id, tx, _cancel_watch: cancel }
}

/// Ids of executor subscriptions, unique in this agent process.
fn next_stream_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl State {
    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Connected { agent_id, session_id } => {
                let first = self.agent_id.is_none();
                tracing::info!(%agent_id, reregistered = !first, "connected to master");
                self.agent_info.id = Some(agent_id.clone());
                self.agent_id = Some(agent_id);
                self.session_id = Some(session_id);
                if first {
                    // With its --resources (what a restart compares), not the reservations.
                    let mut info = self.agent_info.clone();
                    info.resources =
                        crate::persistent::base_of(&Resources::from_vec(info.resources.clone())).into_vec();
                    if let Err(e) = self.checkpoints.write_agent(&info) {
                        tracing::error!(error = %e, "cannot checkpoint the agent's id");
                    }
                }
                // Everything not yet acknowledged goes out again now.
                for s in self.streams.values_mut() {
                    s.next_retry = Some(Instant::now());
                    s.backoff = self.config.status_update_retry_interval;
                }
                self.retry_updates();
            }
            Msg::Disconnected => {
                if self.session_id.take().is_some() {
                    tracing::warn!("disconnected from master");
                }
            }
            Msg::RegistrationCall { reply } => {
                // A removed agent never registers again under its old id: dropping the
                // reply ends the link.
                if self.removed_by_master.is_none() {
                    let _ = reply.send(self.registration_call());
                }
            }
            Msg::FromMaster(m) => self.on_master_message(m),
            Msg::ExecutorSubscribe { call, tx, reply } => {
                let _ = reply.send(self.executor_subscribe(call, tx));
            }
            Msg::ExecutorCall { call, reply } => {
                let _ = reply.send(self.executor_call(call));
            }
            Msg::ContainerExited(e) => self.container_exited(e),
            Msg::RegistrationTimeout { framework_id, executor_id, container_id } => {
                let registering = self
                    .executor(&framework_id, &executor_id)
                    .map(|e| e.container_id == container_id && e.state == ExecState::Registering)
                    .unwrap_or(false);
                if registering {
                    tracing::warn!(%framework_id, %executor_id, "executor did not subscribe in time; destroying it");
                    self.fail_executor_tasks(
                        &framework_id,
                        &executor_id,
                        Reason::ReasonExecutorRegistrationTimeout,
                        "Executor did not register in time",
                        None,
                    );
                    self.containerizer.destroy(&container_id);
                }
            }
            Msg::ShutdownTimeout { framework_id, executor_id, container_id } => {
                let alive = self
                    .executor(&framework_id, &executor_id)
                    .map(|e| e.container_id == container_id && e.state != ExecState::Terminated)
                    .unwrap_or(false);
                if alive {
                    self.containerizer.destroy(&container_id);
                }
            }
            Msg::ExecutorStreamClosed { framework_id, executor_id, container_id, stream } => {
                if let Some(e) = self.executor_mut(&framework_id, &executor_id) {
                    if e.container_id == container_id && e.stream.as_ref().is_some_and(|s| s.id == stream) {
                        e.stream = None;
                    }
                }
            }
            Msg::Query { query, reply } => {
                let _ = reply.send(self.query(&query));
            }
            Msg::Shutdown { reply } => {
                tracing::info!("agent shutting down: destroying its containers");
                for c in self.containerizer.containers() {
                    self.containerizer.destroy(&c);
                }
                self.shutdown = Some(reply);
                self.maybe_shutdown_done();
                let tx = self.self_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let _ = tx.send(Msg::ShutdownDeadline);
                });
            }
            Msg::RecoveryDone => self.recovery_done(),
            Msg::DiskUsage(measured) => self.disk_measured(measured),
            Msg::Listening(found) => self.ports_found(found),
            Msg::ImageProgress { container_id, message } => self.image_progress(&container_id, message),
            Msg::ImageReady { container_id, result } => self.image_ready(container_id, result),
            Msg::RemovedDeadline => {
                let stuck = self.containerizer.containers();
                if self.removed_tx.borrow().is_none() && !stuck.is_empty() {
                    tracing::warn!(containers = stuck.len(), "containers still running after removal; destroying them");
                    for c in stuck {
                        self.containerizer.destroy(&c);
                    }
                }
            }
            Msg::ShutdownDeadline => {
                if let Some(r) = self.shutdown.take() {
                    tracing::warn!("containers still running at the shutdown deadline");
                    let _ = r.send(());
                }
            }
        }
    }

    /// Rebuilds the state a previous agent run checkpointed and takes its containers back.
    fn restore(&mut self, r: Recovered) {
        if let Some(id) = r.agent_info.as_ref().and_then(|a| a.id.clone()) {
            self.agent_info.id = Some(id.clone());
            self.agent_id = Some(id);
        }
        let mut recovered_executors = 0;
        for f in r.frameworks {
            let Some(fid) = f.info.id.clone() else { continue };
            let mut fw = Framework {
                info: f.info,
                executors: BTreeMap::new(),
                completed_executors: VecDeque::new(),
                shutting_down: false,
            };
            for ex in f.executors {
                let rec = ex.record;
                let eid = rec.executor_info.executor_id.clone();
                if let Some(n) = crate::network::cached(&self.config.work_dir, &rec.container_id.value) {
                    self.container_networks.insert(rec.container_id.clone(), n.network_infos());
                    let (cni, dir, id) =
                        (self.config.cni.clone(), self.config.work_dir.clone(), rec.container_id.value.clone());
                    tokio::task::spawn_blocking(move || crate::network::check(&cni, &dir, &id));
                }
                let mut e = Executor {
                    info: rec.executor_info,
                    container_id: rec.container_id.clone(),
                    directory: rec.directory,
                    is_command: rec.is_command,
                    state: ExecState::Registering,
                    stream: None,
                    queued: vec![],
                    tasks: BTreeMap::new(),
                    completed: vec![],
                    pid: rec.pid,
                    recovered: true,
                    pending_launch: None,
                    pending_kills: vec![],
                };
                for t in ex.tasks {
                    let tid = t.info.task_id.clone();
                    if !t.pending.is_empty() {
                        let base = self.config.status_update_retry_interval;
                        self.streams.insert(
                            (fid.clone(), tid.clone()),
                            UpdateStream { pending: t.pending.into_iter().collect(), next_retry: None, backoff: base },
                        );
                    }
                    match t.updates.last().map(|s| s.state) {
                        // Never reached the executor as far as we know: launch it when it comes.
                        None => e.queued.push(t.info),
                        Some(state) => {
                            let at = AgentTask { info: t.info, state, statuses: t.updates };
                            if state.is_terminal() && !self.streams.contains_key(&(fid.clone(), tid.clone())) {
                                e.completed.push(at);
                            } else {
                                e.tasks.insert(tid, at);
                            }
                        }
                    }
                }
                self.containers.insert(rec.container_id.clone(), (fid.clone(), eid.clone()));
                if !self.containerizer.recover(&rec.container_id, rec.pid, self.exits_tx.clone()) {
                    let _ = self.exits_tx.send(ContainerExit {
                        container_id: rec.container_id.clone(),
                        status: None,
                        message: "the container is gone after an agent restart".into(),
                        limitation: None,
                    });
                }
                recovered_executors += 1;
                fw.executors.insert(eid, e);
            }
            self.frameworks.insert(fid, fw);
        }
        let orphans = self.containerizer.cleanup_orphans();
        if recovered_executors > 0 || orphans > 0 {
            tracing::info!(
                recovered_executors,
                orphans,
                "recovered checkpointed executors; destroyed orphaned containers"
            );
        }
        // The state is rebuilt from the checkpoint and the containers are ours again: the
        // agent can re-register now; executors re-subscribe in the background, and those
        // that do not within the window are destroyed (their tasks' updates follow).
        if let Some(gate) = self.recovery.take() {
            let _ = gate.send(());
        }
        if recovered_executors == 0 {
            self.recovery_done();
        } else {
            let tx = self.self_tx.clone();
            let window = self.config.executor_reregistration_timeout;
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                let _ = tx.send(Msg::RecoveryDone);
            });
        }
    }

    /// Recovery ends early once every recovered executor has re-subscribed or ended.
    fn maybe_recovered(&mut self) {
        if !self.recovering {
            return;
        }
        let waiting = self
            .frameworks
            .values()
            .flat_map(|f| f.executors.values())
            .any(|e| e.recovered && e.state == ExecState::Registering);
        if !waiting {
            self.recovery_done();
        }
    }

    /// Executors that did not re-subscribe in time are destroyed; then the agent registers.
    fn recovery_done(&mut self) {
        if !self.recovering {
            return;
        }
        self.recovering = false;
        let mut late = Vec::new();
        for (fid, fw) in &self.frameworks {
            for (eid, e) in &fw.executors {
                if e.recovered && e.state == ExecState::Registering {
                    late.push((fid.clone(), eid.clone(), e.container_id.clone()));
                }
            }
        }
        // An executor left without any task (the agent died between starting it and
        // recording the task) has nothing to do: shut it down.
        let mut idle = Vec::new();
        for (fid, fw) in &self.frameworks {
            for (eid, e) in &fw.executors {
                let live = !e.queued.is_empty() || e.tasks.values().any(|t| !t.state.is_terminal());
                if e.recovered && e.state == ExecState::Running && !live {
                    idle.push((fid.clone(), eid.clone()));
                }
            }
        }
        for (fid, eid) in idle {
            tracing::info!(framework_id = %fid, executor_id = %eid, "recovered executor has no task; shutting it down");
            self.shutdown_executor(&fid, &eid);
        }
        for (fid, eid, cid) in late {
            tracing::warn!(framework_id = %fid, executor_id = %eid, "executor did not re-subscribe after the agent restart; destroying it");
            self.fail_executor_tasks(
                &fid,
                &eid,
                Reason::ReasonExecutorReregistrationTimeout,
                "Executor did not re-register after the agent restarted",
                None,
            );
            self.containerizer.destroy(&cid);
        }
    }

    fn executor(&self, f: &FrameworkId, e: &ExecutorId) -> Option<&Executor> {
        self.frameworks.get(f).and_then(|fw| fw.executors.get(e))
    }

    fn executor_mut(&mut self, f: &FrameworkId, e: &ExecutorId) -> Option<&mut Executor> {
        self.frameworks.get_mut(f).and_then(|fw| fw.executors.get_mut(e))
    }

    fn send_master(&self, call: AgentToMaster) {
        let _ = self.out.send(call);
    }

    fn registration_call(&self) -> AgentToMaster {
        let version = MESOS_VERSION.to_string();
        if self.agent_id.is_none() {
            let mut info = self.agent_info.clone();
            info.id = None;
            return AgentToMaster::Register { agent_info: info, version };
        }
        let mut frameworks = Vec::new();
        let mut executors = Vec::new();
        let mut tasks = Vec::new();
        for (fid, fw) in &self.frameworks {
            if fw.shutting_down {
                continue;
            }
            frameworks.push(fw.info.clone());
            for e in fw.executors.values() {
                // A terminated executor's tasks are still reported while their last updates
                // wait for acknowledgement; otherwise the master would call them gone.
                if !e.is_command && e.state != ExecState::Terminated {
                    executors.push(ExecutorReport { framework_id: fid.clone(), executor_info: e.info.clone() });
                }
                for t in e.queued.iter() {
                    tasks.push(self.task_record(fid, e, t, TaskState::Staging, &[]));
                }
                for t in e.tasks.values() {
                    tasks.push(self.task_record(fid, e, &t.info, t.state, &t.statuses));
                }
            }
        }
        // The tasks that ended here, as this agent's `/state` lists them (oldest first), the
        // newest COMPLETED_REPORTED of each framework: a master that fails over rebuilds its
        // frameworks' completed tasks from them (and keeps 1,000 a framework by default).
        let archived = self.completed_frameworks.iter().filter_map(|fw| fw.info.id.as_ref().map(|id| (id, fw)));
        let mut completed_tasks = Vec::new();
        for (fid, fw) in self.frameworks.iter().chain(archived) {
            let ended: Vec<(&Executor, &AgentTask)> = fw
                .completed_executors
                .iter()
                .chain(fw.executors.values())
                .flat_map(|e| e.completed.iter().map(move |t| (e, t)))
                .collect();
            for (e, t) in &ended[ended.len().saturating_sub(COMPLETED_REPORTED)..] {
                completed_tasks.push(self.task_record(fid, e, &t.info, t.state, &t.statuses));
            }
        }
        AgentToMaster::Reregister {
            agent_info: self.agent_info.clone(),
            version,
            frameworks,
            executors,
            tasks,
            completed_tasks,
        }
    }

    fn task_record(
        &self,
        fid: &FrameworkId,
        e: &Executor,
        t: &TaskInfo,
        state: TaskState,
        statuses: &[TaskStatus],
    ) -> Task {
        let head = self.streams.get(&(fid.clone(), t.task_id.clone())).and_then(|s| s.pending.front());
        Task {
            name: t.name.clone(),
            task_id: t.task_id.clone(),
            framework_id: fid.clone(),
            executor_id: if e.is_command { None } else { Some(e.info.executor_id.clone()) },
            agent_id: self.agent_id.clone().unwrap_or_default(),
            state,
            resources: t.resources.clone(),
            statuses: statuses.to_vec(),
            status_update_state: head.map(|s| s.state),
            status_update_uuid: head.and_then(|s| s.uuid.clone()),
            labels: t.labels.clone(),
            discovery: t.discovery.clone().map(Box::new),
            container: t.container.clone().map(Box::new),
            health_check: t.health_check.clone().map(Box::new),
            kill_policy: t.kill_policy.clone(),
            user: t.command.as_ref().and_then(|c| c.user.clone()),
            limits: t.limits.clone().map(Box::new),
        }
    }

    // ------------------------------------------------------------ master messages

    fn on_master_message(&mut self, m: MasterToAgent) {
        match m {
            MasterToAgent::Registered { .. } | MasterToAgent::Reregistered { .. } => {}
            MasterToAgent::Ping => {
                if let (Some(agent_id), Some(session_id)) = (self.agent_id.clone(), self.session_id.clone()) {
                    self.send_master(AgentToMaster::Pong { agent_id, session_id });
                }
            }
            MasterToAgent::RunTask { framework_info, task, resources } => {
                self.run_task(framework_info, task, resources)
            }
            MasterToAgent::KillTask { framework_id, task_id, kill_policy } => {
                self.kill_task(&framework_id, &task_id, kill_policy)
            }
            MasterToAgent::ShutdownExecutor { framework_id, executor_id } => {
                self.shutdown_executor(&framework_id, &executor_id)
            }
            MasterToAgent::ShutdownFramework { framework_id } => self.shutdown_framework(&framework_id),
            MasterToAgent::UpdateFramework { framework_info } => {
                if let Some(fid) = &framework_info.id {
                    if let Some(fw) = self.frameworks.get_mut(fid) {
                        fw.info = framework_info;
                    }
                }
            }
            MasterToAgent::Acknowledge { framework_id, task_id, uuid } => {
                self.acknowledged(&framework_id, &task_id, &uuid)
            }
            MasterToAgent::FrameworkMessage { framework_id, executor_id, data } => {
                if let Some(e) = self.executor_mut(&framework_id, &executor_id) {
                    let mut ev = exec::Event::of(exec::EventType::Message);
                    ev.message = Some(exec::MessageEvent { data });
                    e.send(&ev);
                }
            }
            MasterToAgent::CheckpointResources { resources } => self.checkpoint_resources(resources),
            MasterToAgent::Shutdown { message } => {
                if self.removed_by_master.is_some() {
                    return;
                }
                tracing::error!(%message, "the master removed this agent: ending its containers and leaving");
                self.removed_by_master = Some(message);
                let fids: Vec<FrameworkId> = self.frameworks.keys().cloned().collect();
                for f in fids {
                    self.shutdown_framework(&f);
                }
                self.maybe_removed_done();
                // Executors that ignore the shutdown are killed by their grace period; this
                // bounds the wait for the ones whose kill itself hangs.
                let tx = self.self_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    let _ = tx.send(Msg::RemovedDeadline);
                });
            }
        }
    }

    /// The master's dynamic reservations and persistent volumes for this agent (all of
    /// them): checkpointed before the agent's total changes, volume directories made or
    /// deleted to match.
    fn checkpoint_resources(&mut self, resources: Vec<Resource>) {
        let current = Resources::from_vec(self.agent_info.resources.clone());
        let base = crate::persistent::base_of(&current);
        let wanted = Resources::from_vec(resources);
        let total = match agora_api::operations::with_checkpointed(&base, &wanted) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "the master's checkpointed resources do not fit this agent; ignored");
                return;
            }
        };
        if let Err(e) = crate::persistent::write(&self.config.work_dir, &wanted) {
            tracing::error!(error = %e, "cannot checkpoint resources; ignored");
            return;
        }
        let old = agora_api::operations::checkpointed(&current);
        let kept = crate::persistent::sync_dirs(&self.config.work_dir, &old, &wanted, &self.volumes_in_use());
        self.destroyed_in_use.extend(kept);
        tracing::info!(resources = %wanted, total = %total, "checkpointed resources updated");
        self.agent_info.resources = total.into_vec();
    }

    /// disk/du: measures every running container's sandbox off the actor.
    fn measure_disks(&self) {
        let jobs: Vec<(ContainerId, PathBuf, Option<u64>)> = self
            .frameworks
            .values()
            .flat_map(|f| f.executors.values())
            .filter(|e| matches!(e.state, ExecState::Registering | ExecState::Running))
            .map(|e| {
                let mut res = e.info.resources.clone();
                if !e.is_command {
                    for t in e.tasks.values().filter(|t| !t.state.is_terminal()) {
                        res.extend(t.info.resources.iter().cloned());
                    }
                }
                (e.container_id.clone(), e.directory.clone(), crate::disk::quota(&res))
            })
            .collect();
        if jobs.is_empty() {
            return;
        }
        let tx = self.self_tx.clone();
        tokio::task::spawn_blocking(move || {
            let out = jobs.into_iter().map(|(cid, dir, quota)| (cid, crate::disk::usage(&dir), quota)).collect();
            let _ = tx.send(Msg::DiskUsage(out));
        });
    }

    /// network/ports: the listening sockets of every host-network container, off the actor.
    fn check_ports(&self) {
        let jobs: Vec<(ContainerId, Vec<i32>)> = self
            .frameworks
            .values()
            .flat_map(|f| f.executors.values())
            .filter(|e| matches!(e.state, ExecState::Registering | ExecState::Running))
            .filter(|e| !self.container_networks.contains_key(&e.container_id))
            .map(|e| (e.container_id.clone(), self.containerizer.pids(&e.container_id)))
            .filter(|(_, pids)| !pids.is_empty())
            .collect();
        if jobs.is_empty() {
            return;
        }
        let tx = self.self_tx.clone();
        tokio::task::spawn_blocking(move || {
            let out = jobs.into_iter().map(|(cid, pids)| (cid, crate::ports::listening(&pids))).collect();
            let _ = tx.send(Msg::Listening(out));
        });
    }

    fn ports_found(&mut self, found: Vec<(ContainerId, std::collections::BTreeSet<u16>)>) {
        let agent_range = Resources::from_vec(self.agent_info.resources.clone()).ranges_of("ports");
        for (cid, listening) in found {
            let Some((fid, eid)) = self.containers.get(&cid).cloned() else { continue };
            let Some(e) = self.executor(&fid, &eid) else { continue };
            let mut res = e.info.resources.clone();
            for t in e.tasks.values().filter(|t| !t.state.is_terminal()) {
                res.extend(t.info.resources.iter().cloned());
            }
            let only_in = self.config.ports.check_agent_port_range_only.then_some(agent_range.as_slice());
            let Some(port) = crate::ports::violation(&listening, &crate::ports::allowed(&res), only_in) else {
                continue;
            };
            if !self.config.ports.enforce {
                if self.ports_warned.insert((cid.clone(), port)) {
                    tracing::warn!(container_id = %cid, port, "container listens on a port it was not given");
                }
                continue;
            }
            if self.disk_limited.contains_key(&cid) {
                continue;
            }
            tracing::warn!(container_id = %cid, port, "container listens on a port it was not given: destroying it");
            self.disk_limited.insert(cid.clone(), crate::ports::limitation(port));
            self.containerizer.destroy(&cid);
        }
    }

    fn disk_measured(&mut self, measured: Vec<(ContainerId, u64, Option<u64>)>) {
        for (cid, used, quota) in measured {
            if !self.containers.contains_key(&cid) {
                continue;
            }
            self.disk_usage.insert(cid.clone(), (used, quota));
            let Some(limit) = quota.filter(|q| used > *q) else { continue };
            if !self.config.volumes.enforce_container_disk_quota || self.disk_limited.contains_key(&cid) {
                continue;
            }
            let l = crate::disk::limitation(used, limit);
            tracing::warn!(container_id = %cid, used, limit, "container over its disk quota: destroying it");
            self.disk_limited.insert(cid.clone(), l);
            self.containerizer.destroy(&cid);
        }
    }

    /// Persistent volumes a live task (or a live custom executor) holds. A command
    /// executor's resources repeat its task's, so its task alone counts.
    fn volumes_in_use(&self) -> Vec<String> {
        self.frameworks
            .values()
            .flat_map(|f| f.executors.values())
            .filter(|e| e.state != ExecState::Terminated)
            .flat_map(|e| {
                let mut ids = if e.is_command { vec![] } else { crate::persistent::ids_in(&e.info.resources) };
                for t in e.tasks.values().filter(|t| !t.state.is_terminal()) {
                    ids.extend(crate::persistent::ids_in(&t.info.resources));
                }
                for t in &e.queued {
                    ids.extend(crate::persistent::ids_in(&t.resources));
                }
                ids
            })
            .collect()
    }

    fn sandbox_dir(&self, fid: &FrameworkId, eid: &ExecutorId, cid: &ContainerId) -> PathBuf {
        self.config
            .work_dir
            .join("slaves")
            .join(self.agent_id.as_ref().map(|a| a.value.as_str()).unwrap_or("unregistered"))
            .join("frameworks")
            .join(&fid.value)
            .join("executors")
            .join(&eid.value)
            .join("runs")
            .join(&cid.value)
    }

    fn run_task(&mut self, framework_info: FrameworkInfo, mut task: TaskInfo, resources: Vec<Resource>) {
        let Some(fid) = framework_info.id.clone() else {
            tracing::warn!(task_id = %task.task_id, "RUN_TASK without a framework id; dropped");
            return;
        };
        if !resources.is_empty() {
            task.resources = resources;
        }
        let span = tracing::info_span!("run_task", framework_id = %fid, task_id = %task.task_id);
        let _e = span.enter();
        self.launch_times.insert((fid.clone(), task.task_id.clone()), Instant::now());
        let (executor_info, is_command) = match &task.executor {
            Some(e) => {
                let mut e = e.clone();
                e.framework_id = Some(fid.clone());
                (e, false)
            }
            None => (self.command_executor_info(&fid, &task), true),
        };
        let fw = self.frameworks.entry(fid.clone()).or_insert_with(|| Framework {
            info: framework_info.clone(),
            executors: BTreeMap::new(),
            completed_executors: VecDeque::new(),
            shutting_down: false,
        });
        fw.info = framework_info.clone();
        fw.shutting_down = false;
        let eid = executor_info.executor_id.clone();
        let existing = fw.executors.get(&eid).map(|e| e.state);
        match existing {
            Some(ExecState::Registering) | Some(ExecState::Provisioning) => {
                if let Some(e) = fw.executors.get_mut(&eid) {
                    e.queued.push(task.clone());
                }
                self.checkpoint_task(&framework_info, &eid, &task);
                return;
            }
            Some(ExecState::Running) => {
                self.checkpoint_task(&framework_info, &eid, &task);
                let Some(fw) = self.frameworks.get_mut(&fid) else { return };
                if let Some(e) = fw.executors.get_mut(&eid) {
                    let mut ev = exec::Event::of(exec::EventType::Launch);
                    ev.launch = Some(exec::LaunchEvent { task: task.clone() });
                    e.tasks.insert(
                        task.task_id.clone(),
                        AgentTask { info: task, state: TaskState::Staging, statuses: vec![] },
                    );
                    e.send(&ev);
                }
                return;
            }
            Some(ExecState::Terminating) | Some(ExecState::Terminated) => {
                let s = self.agent_status(
                    &task.task_id,
                    Some(&eid),
                    TaskState::Lost,
                    Some(Reason::ReasonExecutorTerminated),
                    "Executor is terminating",
                );
                let pa = framework_info.partition_aware();
                let mut s = s;
                if pa {
                    s.state = TaskState::Dropped;
                }
                self.enqueue_update(&fid, None, s);
                return;
            }
            None => {}
        }
        let cid = ContainerId::new(uuid::Uuid::new_v4().to_string());
        let directory = self.sandbox_dir(&fid, &eid, &cid);
        let mut env = self.executor_env(&fid, &eid, &directory, framework_info.checkpoint);
        let (argv, shell) = if is_command {
            (vec![self.config.executor_path.to_string_lossy().into_owned(), "executor".into()], false)
        } else {
            let c = executor_info.command.clone().unwrap_or_else(|| CommandInfo::shell(""));
            for v in c.environment.iter().flat_map(|e| e.variables.iter()) {
                env.push((v.name.clone(), v.value.clone().unwrap_or_default()));
            }
            if c.shell {
                (vec![c.value.unwrap_or_default()], true)
            } else {
                let mut argv = c.arguments.clone();
                if argv.is_empty() {
                    argv.push(c.value.clone().unwrap_or_default());
                } else {
                    argv[0] = c.value.clone().unwrap_or_else(|| argv[0].clone());
                }
                (argv, false)
            }
        };
        // Tasks run as CommandInfo.user, else as the framework's user (`--switch-user`).
        let user = if self.config.switch_user {
            task.command
                .as_ref()
                .and_then(|c| c.user.clone())
                .or_else(|| executor_info.command.as_ref().and_then(|c| c.user.clone()))
                .or_else(|| Some(framework_info.user.clone()).filter(|u| !u.is_empty()))
        } else {
            None
        };
        // With an image, the image's User comes before the framework's (see image_ready).
        let wants_image = task.container.as_ref().and_then(|c| c.get("mesos")).and_then(|m| m.get("image")).is_some();
        if is_command && !wants_image {
            if let Some(c) = task.command.as_mut() {
                c.user = user.clone();
            }
        }
        let mut total = Resources::from_vec(executor_info.resources.clone());
        if !is_command {
            total.add_all(&Resources::from_vec(task.resources.clone()));
        }
        let overhead = |name: &str| {
            if is_command {
                if name == "cpus" {
                    0.1
                } else {
                    32.0
                }
            } else {
                0.0
            }
        };
        let limit = |name: &str| -> Option<f64> {
            let v = task.limits.as_ref()?.get(name)?;
            let x = match v {
                serde_json::Value::String(s) if s == "Infinity" => f64::INFINITY,
                serde_json::Value::Number(n) => n.as_f64()?,
                serde_json::Value::Object(o) => o.get("value").and_then(|v| v.as_f64())?,
                _ => return None,
            };
            Some(x + overhead(name))
        };
        // A command task's image: the executor stays on the host, the task runs in the image.
        // A custom executor's image: the executor itself runs in it (as in Mesos).
        let image = match (&task.container, &executor_info.container) {
            (_, Some(ci)) if !is_command => ImageRequest::from_container_info(ci),
            (Some(ci), _) if is_command => ImageRequest::from_container_info(ci),
            _ => Ok(None),
        };
        let image = match image {
            Ok(Some(_)) if !self.containerizer.supports_images() => {
                Err("container images need the filesystem/linux isolator (the linux launcher, as root)".to_string())
            }
            other => other,
        };
        let image = match image {
            Ok(i) => i,
            Err(message) => {
                return self.launch_failed(&fid, &eid, &task.task_id, "cannot run the task's image", &message)
            }
        };
        let container_info = task.container.clone().or_else(|| executor_info.container.clone());
        let volumes = match crate::volumes::mounts_for(
            container_info.as_ref(),
            &directory,
            user.as_deref(),
            crate::volumes::isolators(&self.config),
            &self.config.volumes,
        ) {
            Ok(v) => v,
            Err(message) => return self.launch_failed(&fid, &eid, &task.task_id, "invalid volumes", &message),
        };
        // Persistent volumes among its resources, mounted where the task asks.
        let volumes = match crate::persistent::mounts_for(&self.config.work_dir, &total.0) {
            Ok(p) => volumes.into_iter().chain(p).collect(),
            Err(message) => {
                return self.launch_failed(&fid, &eid, &task.task_id, "invalid persistent volume", &message)
            }
        };
        // CNI networks, with host ports among the task's `ports`.
        let networks = crate::network::requests(container_info.as_ref()).and_then(|reqs| {
            crate::network::check_ports(&reqs, &total.ranges_of("ports"))?;
            if !reqs.is_empty() && !self.containerizer.supports_images() {
                return Err("container networks need the linux launcher with filesystem/linux".to_string());
            }
            let loopback = self.config.ip.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !reqs.is_empty() && loopback {
                // The executor runs in the container's network namespace and must reach
                // the agent, which a loopback address cannot give it.
                return Err(format!(
                    "container networks need the agent on an address its containers can reach (--ip is {})",
                    self.config.ip
                ));
            }
            Ok(reqs)
        });
        let networks = match networks {
            Ok(n) => n,
            Err(message) => return self.launch_failed(&fid, &eid, &task.task_id, "invalid network_infos", &message),
        };
        let volume_images = crate::volumes::image_volumes(container_info.as_ref());
        let spec = LaunchSpec {
            container_id: cid.clone(),
            argv,
            shell,
            env,
            directory: directory.clone(),
            user: if image.is_some() { None } else { user },
            cpus: Some(total.scalar("cpus")).filter(|c| *c > 0.0),
            mem_mb: Some(total.scalar("mem")).filter(|m| *m > 0.0),
            cpus_limit: limit("cpus"),
            mem_limit_mb: limit("mem"),
            container_info,
            rootfs: None,
            init_in_rootfs: false,
            volumes,
            netns: None,
            container_ip: None,
            nameservers: vec![],
        };
        let executor = Executor {
            info: executor_info,
            container_id: cid.clone(),
            directory: directory.clone(),
            is_command,
            state: if image.is_some() || !volume_images.is_empty() || !networks.is_empty() {
                ExecState::Provisioning
            } else {
                ExecState::Registering
            },
            stream: None,
            queued: vec![task.clone()],
            tasks: BTreeMap::new(),
            completed: vec![],
            pid: 0,
            recovered: false,
            pending_launch: None,
            pending_kills: vec![],
        };
        if let Some(fw) = self.frameworks.get_mut(&fid) {
            fw.executors.insert(eid.clone(), executor);
        }
        if image.is_none() && volume_images.is_empty() && networks.is_empty() {
            self.launch_container(&fid, &eid, spec);
        } else {
            if let Some(e) = self.executor_mut(&fid, &eid) {
                e.pending_launch = Some(spec);
            }
            self.provisioning.insert(cid.clone(), (fid.clone(), eid.clone()));
            self.start_provisioning(cid, image, volume_images, networks);
        }
    }

    /// Pulls and provisions a container's image off the actor; the result comes back as
    /// `ImageReady`, and a pull still going after 2 s reports progress every 10 s.
    fn start_provisioning(
        &self,
        cid: ContainerId,
        req: Option<ImageRequest>,
        volumes: Vec<(usize, ImageRequest)>,
        networks: Vec<crate::network::Request>,
    ) {
        use tracing::Instrument as _;
        let images = self.images.clone();
        let (cni, work_dir) = (self.config.cni.clone(), self.config.work_dir.clone());
        let tx = self.self_tx.clone();
        let shown: Vec<String> = req.iter().chain(volumes.iter().map(|(_, r)| r)).map(|r| r.display()).collect();
        let name = shown.join(", ");
        let span = tracing::info_span!("provision", container_id = %cid, image = %name);
        tokio::spawn(
            async move {
                let progress = Arc::new(std::sync::Mutex::new(Progress::default()));
                let (p2, tx2, cid2) = (progress.clone(), tx.clone(), cid.clone());
                let reporter = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    loop {
                        let summary = p2.lock().map(|p| p.summary()).unwrap_or_default();
                        tracing::info!(progress = %summary, "pulling image");
                        let message = format!("Pulling image '{name}': {summary}");
                        if tx2.send(Msg::ImageProgress { container_id: cid2.clone(), message }).is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                });
                let started = std::time::Instant::now();
                let mut result = images.provision_all(&cid.value, req.as_ref(), &volumes, progress.clone()).await;
                reporter.abort();
                if let (Ok(p), false) = (&mut result, networks.is_empty()) {
                    let id = cid.value.clone();
                    let joined =
                        tokio::task::spawn_blocking(move || crate::network::setup(&cni, &work_dir, &id, &networks))
                            .await
                            .unwrap_or_else(|e| Err(format!("network setup panicked: {e}")));
                    match joined {
                        Ok(n) => p.networks = Some(n),
                        Err(e) => {
                            images.release(&cid.value).await;
                            result = Err(e);
                        }
                    }
                }
                match &result {
                    Ok(p) => tracing::info!(
                        image_id = %p.main.as_ref().map(|m| m.image.id.to_string()).unwrap_or_default(),
                        image_volumes = p.volumes.len(),
                        ms = started.elapsed().as_millis() as u64,
                        "image provisioned"
                    ),
                    Err(e) => tracing::warn!(error = %e, "image provisioning failed"),
                }
                if let Err(mpsc::error::SendError(Msg::ImageReady { container_id, .. })) =
                    tx.send(Msg::ImageReady { container_id: cid, result })
                {
                    // The agent is going away: nobody will launch it.
                    images.release(&container_id.value).await;
                }
            }
            .instrument(span),
        );
    }

    fn image_progress(&mut self, cid: &ContainerId, message: String) {
        let Some((fid, eid)) = self.provisioning.get(cid).cloned() else { return };
        let ids: Vec<TaskId> = match self.executor(&fid, &eid) {
            Some(e) if e.state == ExecState::Provisioning => e.queued.iter().map(|t| t.task_id.clone()).collect(),
            _ => return,
        };
        for tid in ids {
            let s = self.agent_status(&tid, Some(&eid), TaskState::Starting, None, message.clone());
            self.enqueue_update(&fid, None, s);
        }
    }

    /// Releases what a container was given before it started: its rootfs and image
    /// volumes, and its CNI networks (DEL with the cached arguments, namespace removed).
    fn release_rootfs(&self, cid: &ContainerId) {
        let (images, id) = (self.images.clone(), cid.value.clone());
        tokio::spawn(async move { images.release(&id).await });
        let (cni, work_dir, id) = (self.config.cni.clone(), self.config.work_dir.clone(), cid.value.clone());
        if work_dir.join("cni").join(&id).is_dir() {
            tokio::task::spawn_blocking(move || crate::network::teardown(&cni, &work_dir, &id));
        }
    }

    fn image_ready(&mut self, cid: ContainerId, result: Result<ProvisionedAll, String>) {
        let Some((fid, eid)) = self.provisioning.remove(&cid) else {
            self.release_rootfs(&cid);
            return;
        };
        let span = tracing::info_span!("image_ready", framework_id = %fid, executor_id = %eid, container_id = %cid);
        let _e = span.enter();
        let waiting = self
            .executor(&fid, &eid)
            .map(|e| e.container_id == cid && e.state == ExecState::Provisioning)
            .unwrap_or(false);
        if !waiting {
            // Killed or shut down while its image was being pulled.
            tracing::info!("the executor ended while its image was provisioned");
            self.release_rootfs(&cid);
            return;
        }
        let fallback_user =
            self.frameworks.get(&fid).map(|f| f.info.user.clone()).filter(|u| self.config.switch_user && !u.is_empty());
        let result = result.map(|mut all| {
            if let Some(n) = all.networks.take() {
                self.container_networks.insert(cid.clone(), n.network_infos());
                if let Some(spec) = self.executor_mut(&fid, &eid).and_then(|e| e.pending_launch.as_mut()) {
                    if let Some(ip) = n.ip() {
                        spec.env.push(("MESOS_CONTAINER_IP".into(), ip.clone()));
                        spec.container_ip = Some(ip);
                    }
                    spec.nameservers = n.nameservers();
                    spec.netns = Some(n.netns.clone());
                }
            }
            all
        });
        match result {
            Ok(ProvisionedAll { main: None, volumes, .. }) => {
                let Some(e) = self.executor_mut(&fid, &eid) else { return };
                let Some(mut spec) = e.pending_launch.take() else { return };
                fill_image_volumes(&mut spec, volumes);
                self.launch_container(&fid, &eid, spec);
            }
            Ok(ProvisionedAll { main: Some(p), volumes, .. }) => {
                let cfg = &p.image.config;
                let runtime = agora_executor::ImageRuntime {
                    rootfs: PathBuf::new(),
                    entrypoint: cfg.entrypoint.clone(),
                    cmd: cfg.cmd.clone(),
                    env: cfg.env.clone(),
                    working_dir: cfg.working_dir.clone(),
                    user: cfg.user.clone(),
                };
                let switch = self.config.switch_user;
                let Some(e) = self.executor_mut(&fid, &eid) else { return };
                if !e.is_command {
                    // A custom executor runs in the image itself, by the image's config.
                    let Some(mut spec) = e.pending_launch.take() else { return };
                    apply_image_to_executor(&mut spec, &runtime);
                    spec.rootfs = Some(p.rootfs.clone());
                    spec.init_in_rootfs = true;
                    fill_image_volumes(&mut spec, volumes);
                    self.launch_container(&fid, &eid, spec);
                    return;
                }
                // The task's user: its own, else the image's, else the framework's.
                for t in e.queued.iter_mut() {
                    if let Some(c) = t.command.as_mut() {
                        c.user = if switch {
                            c.user.clone().or_else(|| cfg.user.clone()).or_else(|| fallback_user.clone())
                        } else {
                            cfg.user.clone()
                        };
                    }
                }
                let Some(mut spec) = e.pending_launch.take() else { return };
                spec.rootfs = Some(p.rootfs.clone());
                fill_image_volumes(&mut spec, volumes);
                match serde_json::to_string(&runtime) {
                    Ok(json) => spec.env.push((agora_executor::IMAGE_ENV.to_string(), json)),
                    Err(err) => tracing::error!(error = %err, "cannot encode the image config"),
                }
                self.launch_container(&fid, &eid, spec);
            }
            Err(message) => {
                self.drop_unlaunched(&fid, &eid, &format!("Failed to launch container: {message}"));
                self.release_rootfs(&cid);
            }
        }
    }

    /// A task whose container cannot be set up (a bad image, volume or network): it
    /// fails with the reason before anything is made.
    fn launch_failed(&mut self, fid: &FrameworkId, eid: &ExecutorId, task_id: &TaskId, what: &str, message: &str) {
        tracing::warn!(%message, "{what}");
        let s = self.agent_status(
            task_id,
            Some(eid),
            TaskState::Failed,
            Some(Reason::ReasonContainerLaunchFailed),
            format!("Failed to launch container: {message}"),
        );
        self.enqueue_update(fid, None, s);
    }

    /// An executor whose container could not be started: its tasks fail, and it is
    /// forgotten (it never ran).
    fn drop_unlaunched(&mut self, fid: &FrameworkId, eid: &ExecutorId, message: &str) {
        let queued =
            self.frameworks.get_mut(fid).and_then(|fw| fw.executors.remove(eid)).map(|e| e.queued).unwrap_or_default();
        for t in queued {
            let s = self.agent_status(
                &t.task_id,
                Some(eid),
                TaskState::Failed,
                Some(Reason::ReasonContainerLaunchFailed),
                message,
            );
            self.enqueue_update(fid, None, s);
        }
    }

    /// Starts the container of an executor already in the state (its tasks queued).
    fn launch_container(&mut self, fid: &FrameworkId, eid: &ExecutorId, spec: LaunchSpec) {
        let cid = spec.container_id.clone();
        let directory = spec.directory.clone();
        if let Some(x) = self.xfs.clone() {
            let quota = self.executor(fid, eid).and_then(|e| {
                let mut res = e.info.resources.clone();
                if !e.is_command {
                    res.extend(e.queued.iter().flat_map(|t| t.resources.iter().cloned()));
                }
                crate::disk::quota(&res)
            });
            if let Some(bytes) = quota {
                let set = std::fs::create_dir_all(&directory)
                    .map_err(|e| format!("cannot create the sandbox {}: {e}", directory.display()))
                    .and_then(|_| x.assign(&cid.value, &directory, bytes));
                if let Err(e) = set {
                    tracing::warn!(error = %e, "cannot set the sandbox's disk quota");
                    self.drop_unlaunched(fid, eid, &format!("Failed to launch container: disk/xfs: {e}"));
                    self.release_rootfs(&cid);
                    return;
                }
            }
        }
        match self.containerizer.launch(spec, self.exits_tx.clone()) {
            Ok(pid) => {
                let Some(fw) = self.frameworks.get_mut(fid) else {
                    self.containerizer.destroy(&cid);
                    return;
                };
                let framework_info = fw.info.clone();
                let Some(e) = fw.executors.get_mut(eid) else {
                    self.containerizer.destroy(&cid);
                    return;
                };
                e.pid = pid;
                e.state = ExecState::Registering;
                for t in &e.queued {
                    if let Some(at) = self.launch_times.get(&(fid.clone(), t.task_id.clone())) {
                        push_latency(&mut self.to_spawned_ms, at.elapsed());
                    }
                }
                if framework_info.checkpoint {
                    let rec = ExecutorRecord {
                        executor_info: e.info.clone(),
                        is_command: e.is_command,
                        container_id: cid.clone(),
                        directory: directory.clone(),
                        pid,
                    };
                    let tasks = e.queued.clone();
                    // The executor record last: without it recovery ignores the rest, so a
                    // crash in between leaves an orphan container (destroyed), never an
                    // executor without its task.
                    let written = self.checkpoints.write_framework(&framework_info).and_then(|_| {
                        tasks.iter().try_for_each(|t| self.checkpoints.write_task(fid, eid, t))?;
                        self.checkpoints.write_executor(fid, &rec)
                    });
                    if let Err(e) = written {
                        tracing::error!(error = %e, "cannot checkpoint the executor");
                    }
                }
                let _ = latest_symlink(&directory);
                tracing::info!(executor_id = %eid, container_id = %cid, pid, "executor launched");
                self.containers.insert(cid.clone(), (fid.clone(), eid.clone()));
                let tx = self.self_tx.clone();
                let timeout = self.config.executor_registration_timeout;
                let (fid, eid) = (fid.clone(), eid.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    let _ =
                        tx.send(Msg::RegistrationTimeout { framework_id: fid, executor_id: eid, container_id: cid });
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "container launch failed");
                self.drop_unlaunched(fid, eid, &e.to_string());
                // Its rootfs and image volumes, networks and disk quota, if it had any.
                self.release_rootfs(&cid);
                if let Some(x) = self.xfs.clone() {
                    let id = cid.value.clone();
                    tokio::task::spawn_blocking(move || x.release(&id));
                }
            }
        }
    }

    fn checkpoint_task(&self, framework_info: &FrameworkInfo, eid: &ExecutorId, task: &TaskInfo) {
        let Some(fid) = &framework_info.id else { return };
        if framework_info.checkpoint {
            if let Err(e) = self.checkpoints.write_task(fid, eid, task) {
                tracing::error!(error = %e, "cannot checkpoint a task");
            }
        }
    }

    fn command_executor_info(&self, fid: &FrameworkId, task: &TaskInfo) -> ExecutorInfo {
        let cmd = task.command.clone().unwrap_or_else(|| CommandInfo::shell(""));
        let text = if cmd.shell { cmd.value.clone().unwrap_or_default() } else { cmd.arguments.join(" ") };
        // The command executor's own overhead, as Mesos adds it (not charged to the offer).
        let mut res = Resources::from_vec(task.resources.clone());
        let role = task.resources.iter().find_map(|r| r.allocation_role().map(str::to_string));
        res.add(&Resource::scalar("cpus", 0.1).with_allocation(role.as_deref()));
        res.add(&Resource::scalar("mem", 32.0).with_allocation(role.as_deref()));
        ExecutorInfo {
            kind: None,
            executor_id: ExecutorId::new(task.task_id.value.clone()),
            framework_id: Some(fid.clone()),
            command: Some(CommandInfo {
                shell: false,
                value: Some(self.config.executor_path.to_string_lossy().into_owned()),
                arguments: vec!["agora".into(), "executor".into()],
                environment: None,
                user: None,
                uris: vec![],
            }),
            container: None,
            resources: res.into_vec(),
            name: Some(format!("Command Executor (Task: {}) (Command: sh -c '{}')", task.task_id, text)),
            source: Some(task.task_id.value.to_string()),
            data: None,
            discovery: None,
            shutdown_grace_period: None,
            labels: None,
        }
    }

    fn executor_env(
        &self,
        fid: &FrameworkId,
        eid: &ExecutorId,
        dir: &std::path::Path,
        checkpoint: bool,
    ) -> Vec<(String, String)> {
        let endpoint = format!("{}:{}", self.config.ip, self.config.port);
        let grace = self.config.executor_shutdown_grace_period;
        vec![
            ("MESOS_FRAMEWORK_ID".into(), fid.value.to_string()),
            ("MESOS_EXECUTOR_ID".into(), eid.value.to_string()),
            ("MESOS_DIRECTORY".into(), dir.to_string_lossy().into_owned()),
            ("MESOS_SANDBOX".into(), dir.to_string_lossy().into_owned()),
            ("MESOS_AGENT_ENDPOINT".into(), endpoint.clone()),
            ("MESOS_SLAVE_ID".into(), self.agent_id.as_ref().map(|a| a.value.to_string()).unwrap_or_default()),
            ("MESOS_SLAVE_PID".into(), format!("slave(1)@{endpoint}")),
            ("MESOS_CHECKPOINT".into(), if checkpoint { "1" } else { "0" }.into()),
            ("MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD".into(), format!("{}ms", grace.as_millis())),
            ("MESOS_HTTP_COMMAND_EXECUTOR".into(), "1".into()),
            ("MESOS_RECOVERY_TIMEOUT".into(), "15mins".into()),
            ("MESOS_SUBSCRIPTION_BACKOFF_MAX".into(), "2secs".into()),
            ("LIBPROCESS_PORT".into(), "0".into()),
            ("LIBPROCESS_IP".into(), self.config.ip.clone()),
        ]
    }

    /// An update the agent itself generates (the executor could not).
    fn agent_status(
        &self,
        task_id: &TaskId,
        eid: Option<&ExecutorId>,
        state: TaskState,
        reason: Option<Reason>,
        message: impl Into<String>,
    ) -> TaskStatus {
        let mut s = TaskStatus::new(task_id.clone(), state);
        s.source = Some(Source::Agent);
        s.reason = reason;
        s.message = Some(message.into());
        s.timestamp = Some(now_secs());
        s.uuid = Some(new_uuid());
        s.agent_id = self.agent_id.clone();
        s.executor_id = eid.cloned();
        s
    }

    fn kill_task(&mut self, fid: &FrameworkId, tid: &TaskId, kill_policy: Option<KillPolicy>) {
        let Some(fw) = self.frameworks.get_mut(fid) else {
            tracing::info!(framework_id = %fid, task_id = %tid, "kill for an unknown framework; ignored");
            return;
        };
        let mut found: Option<ExecutorId> = None;
        let mut was_queued = false;
        let mut queued_info: Option<TaskInfo> = None;
        for (eid, e) in fw.executors.iter_mut() {
            if let Some(i) = e.queued.iter().position(|t| &t.task_id == tid) {
                queued_info = Some(e.queued.remove(i));
                found = Some(eid.clone());
                was_queued = true;
                break;
            }
            if e.tasks.contains_key(tid) {
                found = Some(eid.clone());
                break;
            }
        }
        let Some(eid) = found else {
            let known = fw.executors.values().any(|e| e.completed.iter().any(|t| &t.info.task_id == tid))
                || fw.completed_executors.iter().any(|e| e.completed.iter().any(|t| &t.info.task_id == tid));
            if !known {
                let pa = fw.info.partition_aware();
                let s = self.agent_status(
                    tid,
                    None,
                    if pa { TaskState::Dropped } else { TaskState::Lost },
                    None,
                    "Cannot find task to kill",
                );
                self.enqueue_update(fid, None, s);
            }
            return;
        };
        if was_queued {
            let s = self.agent_status(
                tid,
                Some(&eid),
                TaskState::Killed,
                Some(Reason::ReasonTaskKilledDuringLaunch),
                "Task killed before it was launched",
            );
            // Tracked like any task until its KILLED is acknowledged, so a second kill is
            // recognised.
            if let Some(e) = self.executor_mut(fid, &eid) {
                if let Some(info) = queued_info.take() {
                    e.tasks
                        .insert(tid.clone(), AgentTask { info, state: TaskState::Killed, statuses: vec![s.clone()] });
                }
            }
            self.enqueue_update(fid, Some(&eid), s);
            let live = self
                .executor(fid, &eid)
                .map(|e| !e.queued.is_empty() || e.tasks.values().any(|t| !t.state.is_terminal()))
                .unwrap_or(false);
            if !live {
                self.shutdown_executor(fid, &eid);
            }
            return;
        }
        let terminal =
            self.executor(fid, &eid).and_then(|e| e.tasks.get(tid)).map(|t| t.state.is_terminal()).unwrap_or(false);
        if terminal {
            // Already ended; its final update is on its way.
            return;
        }
        if let Some(e) = self.executor_mut(fid, &eid) {
            let mut ev = exec::Event::of(exec::EventType::Kill);
            ev.kill = Some(exec::KillEvent { task_id: tid.clone(), kill_policy });
            if e.stream.is_some() {
                e.send(&ev);
            } else {
                // Not subscribed (yet, or again after an agent restart): delivered on SUBSCRIBE.
                e.pending_kills.push(ev);
            }
        }
    }

    fn shutdown_executor(&mut self, fid: &FrameworkId, eid: &ExecutorId) {
        let grace = self.config.executor_shutdown_grace_period;
        let Some(e) = self.executor_mut(fid, eid) else { return };
        if e.state == ExecState::Terminated {
            return;
        }
        if e.state == ExecState::Provisioning {
            // No container yet: it ends here; the rootfs goes when the provisioning returns.
            e.state = ExecState::Terminated;
            e.pending_launch = None;
            self.maybe_complete_executor(fid, eid);
            self.maybe_remove_framework(fid);
            return;
        }
        let cid = e.container_id.clone();
        if e.stream.is_some() {
            e.state = ExecState::Terminating;
            e.send(&exec::Event::of(exec::EventType::Shutdown));
            let tx = self.self_tx.clone();
            let (fid, eid) = (fid.clone(), eid.clone());
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let _ = tx.send(Msg::ShutdownTimeout { framework_id: fid, executor_id: eid, container_id: cid });
            });
        } else {
            e.state = ExecState::Terminating;
            self.containerizer.destroy(&cid);
        }
    }

    fn shutdown_framework(&mut self, fid: &FrameworkId) {
        let Some(fw) = self.frameworks.get_mut(fid) else { return };
        tracing::info!(framework_id = %fid, "shutting down framework");
        fw.shutting_down = true;
        let eids: Vec<ExecutorId> = fw.executors.keys().cloned().collect();
        for e in &eids {
            self.shutdown_executor(fid, e);
        }
        // The master has forgotten the framework: nothing of it is delivered any more.
        self.streams.retain(|(f, _), _| f != fid);
        self.launch_times.retain(|(f, _), _| f != fid);
        self.maybe_remove_framework(fid);
    }

    fn maybe_remove_framework(&mut self, fid: &FrameworkId) {
        let done = self
            .frameworks
            .get(fid)
            .map(|fw| {
                fw.executors.values().all(|e| e.state == ExecState::Terminated)
                    && !self.streams.keys().any(|(f, _)| f == fid)
            })
            .unwrap_or(false);
        if done {
            self.checkpoints.remove_framework(fid);
            if let Some(mut fw) = self.frameworks.remove(fid) {
                let execs: Vec<Executor> = std::mem::take(&mut fw.executors).into_values().collect();
                fw.completed_executors.extend(execs);
                while fw.completed_executors.len() > 150 {
                    fw.completed_executors.pop_front();
                }
                self.completed_frameworks.push_back(fw);
                while self.completed_frameworks.len() > 50 {
                    self.completed_frameworks.pop_front();
                }
            }
        }
    }

    // ------------------------------------------------------------ executors

    fn executor_subscribe(&mut self, call: exec::Call, tx: agora_http::StreamTx) -> Result<(), ApiError> {
        let fid = call.framework_id.clone();
        let eid = call.executor_id.clone();
        let agent_info = self.agent_info.clone();
        let Some(fw) = self.frameworks.get_mut(&fid) else {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("Framework {fid} cannot be found")));
        };
        let framework_info = fw.info.clone();
        let Some(e) = fw.executors.get_mut(&eid) else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("Executor {eid} of framework {fid} cannot be found"),
            ));
        };
        if e.state == ExecState::Terminated || e.state == ExecState::Terminating {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("Executor {eid} is terminating")));
        }
        tracing::info!(framework_id = %fid, executor_id = %eid, "executor subscribed");
        let stream = next_stream_id();
        e.stream = Some(watch_stream(
            stream,
            tx,
            Msg::ExecutorStreamClosed {
                framework_id: fid.clone(),
                executor_id: eid.clone(),
                container_id: e.container_id.clone(),
                stream,
            },
            self.self_tx.clone(),
        ));
        e.state = ExecState::Running;
        let mut ev = exec::Event::of(exec::EventType::Subscribed);
        ev.subscribed = Some(exec::Subscribed {
            executor_info: e.info.clone(),
            framework_info,
            agent_info,
            container_id: Some(e.container_id.clone()),
        });
        e.send(&ev);
        // Tasks the executor says it already has (it re-subscribed after an agent restart)
        // are not launched twice.
        let has: Vec<TaskId> = call
            .subscribe
            .as_ref()
            .map(|s| s.unacknowledged_tasks.iter().map(|t| t.task_id.clone()).collect())
            .unwrap_or_default();
        let queued = std::mem::take(&mut e.queued);
        for t in &queued {
            if let Some(at) = self.launch_times.get(&(fid.clone(), t.task_id.clone())) {
                push_latency(&mut self.to_subscribed_ms, at.elapsed());
            }
        }
        for t in queued {
            e.tasks.insert(t.task_id.clone(), AgentTask { info: t, state: TaskState::Staging, statuses: vec![] });
        }
        // Every task the executor has not reported on and does not claim to hold is sent
        // (again): a LAUNCH on an earlier subscription may never have been read.
        let launches: Vec<TaskInfo> = e
            .tasks
            .values()
            .filter(|t| t.statuses.is_empty() && t.state == TaskState::Staging && !has.contains(&t.info.task_id))
            .map(|t| t.info.clone())
            .collect();
        for task in launches {
            let mut ev = exec::Event::of(exec::EventType::Launch);
            ev.launch = Some(exec::LaunchEvent { task });
            e.send(&ev);
        }
        for ev in std::mem::take(&mut e.pending_kills) {
            e.send(&ev);
        }
        // Updates the executor still holds (it re-subscribed): take what we do not have.
        if let Some(sub) = call.subscribe {
            for u in sub.unacknowledged_updates {
                let _ = self.executor_update(&fid, &eid, u.status);
            }
        }
        self.maybe_recovered();
        Ok(())
    }

    fn executor_call(&mut self, call: exec::Call) -> Result<(), ApiError> {
        let fid = call.framework_id.clone();
        let eid = call.executor_id.clone();
        let Some(e) = self.executor(&fid, &eid) else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("Executor {eid} of framework {fid} cannot be found"),
            ));
        };
        if e.stream.is_none() {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "Executor is not subscribed"));
        }
        match call.kind {
            exec::CallType::Update => {
                let u = call
                    .update
                    .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "Expecting 'update' to be present"))?;
                self.executor_update(&fid, &eid, u.status)
            }
            exec::CallType::Message => {
                let m = call
                    .message
                    .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "Expecting 'message' to be present"))?;
                if let (Some(agent_id), Some(session_id)) = (self.agent_id.clone(), self.session_id.clone()) {
                    self.send_master(AgentToMaster::ExecutorMessage {
                        agent_id,
                        session_id,
                        framework_id: fid,
                        executor_id: eid,
                        data: m.data,
                    });
                }
                Ok(())
            }
            exec::CallType::Heartbeat => Ok(()),
            exec::CallType::Subscribe => Err(ApiError::new(StatusCode::BAD_REQUEST, "SUBSCRIBE opens a stream")),
            exec::CallType::Unknown => Err(ApiError::new(StatusCode::BAD_REQUEST, "Unknown call type")),
        }
    }

    fn executor_update(&mut self, fid: &FrameworkId, eid: &ExecutorId, mut status: TaskStatus) -> Result<(), ApiError> {
        let Some(uuid) = status.uuid.clone() else {
            self.counters.invalid_status_updates += 1;
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "Status update must carry a 'uuid'"));
        };
        if uuid.0.len() != 16 {
            self.counters.invalid_status_updates += 1;
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "Status update 'uuid' must be 16 bytes"));
        }
        if status.state == TaskState::Staging {
            self.counters.invalid_status_updates += 1;
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "Executors must not send TASK_STAGING"));
        }
        let killing_capable =
            self.frameworks.get(fid).map(|f| f.info.has_capability("TASK_KILLING_STATE")).unwrap_or(false);
        if status.state == TaskState::Failed {
            // A task killed by the OOM killer fails for its memory limit, whatever the
            // executor saw (a SIGKILL).
            let cid = self.executor(fid, eid).map(|e| e.container_id.clone());
            if let Some(l) = cid.and_then(|c| self.containerizer.limitation(&c)) {
                apply_limitation(&mut status, &l);
            }
        }
        let agent_id = self.agent_id.clone();
        // A container on CNI networks reports its addresses with every update.
        if let Some(cid) = self.executor(fid, eid).map(|e| e.container_id.clone()) {
            if let Some(nets) = self.container_networks.get(&cid) {
                status.container_status = Some(Box::new(serde_json::json!({
                    "container_id": {"value": cid.value},
                    "network_infos": nets,
                })));
            }
        }
        let Some(e) = self.executor_mut(fid, eid) else {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "Executor cannot be found"));
        };
        status.source = Some(Source::Executor);
        status.agent_id = agent_id;
        status.executor_id = Some(eid.clone());
        if status.timestamp.is_none() {
            status.timestamp = Some(now_secs());
        }
        let tid = status.task_id.clone();
        let Some(task) = e.tasks.get_mut(&tid) else {
            // Already terminal and acknowledged (a re-sent update) or never ours.
            let done = e.completed.iter().any(|t| t.info.task_id == tid);
            let mut ack = exec::Event::of(exec::EventType::Acknowledged);
            ack.acknowledged = Some(exec::AcknowledgedEvent { task_id: tid.clone(), uuid });
            if done {
                e.send(&ack);
                return Ok(());
            }
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("Task {tid} is unknown to this executor")));
        };
        if task.statuses.iter().any(|s| s.uuid.as_ref() == Some(&uuid)) {
            // A duplicate: acknowledge again, record nothing.
            let mut ack = exec::Event::of(exec::EventType::Acknowledged);
            ack.acknowledged = Some(exec::AcknowledgedEvent { task_id: tid, uuid });
            e.send(&ack);
            return Ok(());
        }
        if task.state.is_terminal() {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("Task {tid} is already terminal")));
        }
        task.state = status.state;
        let mut rec = status.clone();
        rec.data = None;
        task.statuses.push(rec);
        match status.state {
            TaskState::Finished => self.counters.tasks_finished += 1,
            TaskState::Failed => self.counters.tasks_failed += 1,
            TaskState::Killed => self.counters.tasks_killed += 1,
            TaskState::Lost => self.counters.tasks_lost += 1,
            _ => {}
        }
        // Frameworks without TASK_KILLING_STATE never see TASK_KILLING, so it is never
        // queued for them. Everything else is checkpointed before the executor hears
        // ACKNOWLEDGED: the executor may then forget it.
        if status.state != TaskState::Killing || killing_capable {
            self.enqueue_update(fid, Some(eid), status);
        }
        let mut ack = exec::Event::of(exec::EventType::Acknowledged);
        ack.acknowledged = Some(exec::AcknowledgedEvent { task_id: tid, uuid });
        if let Some(e) = self.executor_mut(fid, eid) {
            e.send(&ack);
        }
        Ok(())
    }

    /// Once a removed agent's containers are gone: forget the checkpointed identity (a
    /// restart registers as a new agent, as the master expects) and say so.
    fn maybe_removed_done(&mut self) {
        let Some(reason) = self.removed_by_master.clone() else { return };
        if self.removed_tx.borrow().is_some() || !self.containerizer.containers().is_empty() {
            return;
        }
        self.checkpoints.remove_all();
        crate::persistent::remove(&self.config.work_dir);
        tracing::warn!(%reason, "the agent's checkpointed state is removed; a restart registers a new agent");
        self.removed_tx.send_replace(Some(reason));
    }

    fn maybe_shutdown_done(&mut self) {
        if self.shutdown.is_some() && self.containerizer.containers().is_empty() {
            if let Some(r) = self.shutdown.take() {
                let _ = r.send(());
            }
        }
    }

    fn container_exited(&mut self, exit: ContainerExit) {
        self.container_ended(exit);
        self.maybe_shutdown_done();
        self.maybe_removed_done();
        self.maybe_recovered();
    }

    fn container_ended(&mut self, mut exit: ContainerExit) {
        // Its rootfs (if it had an image) goes with it.
        self.release_rootfs(&exit.container_id);
        self.disk_usage.remove(&exit.container_id);
        self.container_networks.remove(&exit.container_id);
        if let Some(x) = self.xfs.clone() {
            let id = exit.container_id.value.clone();
            tokio::task::spawn_blocking(move || x.release(&id));
        }
        self.ports_warned.retain(|(c, _)| c != &exit.container_id);
        if let Some(l) = self.disk_limited.remove(&exit.container_id) {
            exit.limitation = exit.limitation.or(Some(l));
        }
        let Some((fid, eid)) = self.containers.remove(&exit.container_id) else { return };
        let span = tracing::info_span!("executor_exited", framework_id = %fid, executor_id = %eid);
        let _e = span.enter();
        tracing::info!(status = ?exit.status, message = %exit.message, "executor exited");
        self.counters.executors_terminated += 1;
        let shutting_down = self.frameworks.get(&fid).map(|f| f.shutting_down).unwrap_or(true);
        if !shutting_down {
            match &exit.limitation {
                Some(l) => self.fail_executor_tasks(&fid, &eid, l.reason, &l.message, Some(l)),
                // The container never ran (a spec the kernel refused, say): say why.
                None if exit.status.is_none() && exit.message.starts_with("Failed to launch") => {
                    self.fail_executor_tasks(&fid, &eid, Reason::ReasonContainerLaunchFailed, &exit.message, None)
                }
                None => {
                    self.fail_executor_tasks(&fid, &eid, Reason::ReasonExecutorTerminated, "Executor terminated", None)
                }
            }
        }
        if let Some(e) = self.executor_mut(&fid, &eid) {
            e.state = ExecState::Terminated;
            e.stream = None;
        }
        if let (Some(agent_id), Some(session_id)) = (self.agent_id.clone(), self.session_id.clone()) {
            if !shutting_down {
                self.send_master(AgentToMaster::ExecutorExited {
                    agent_id,
                    session_id,
                    framework_id: fid.clone(),
                    executor_id: eid.clone(),
                    status: exit.status,
                });
            }
        }
        self.maybe_complete_executor(&fid, &eid);
        self.maybe_remove_framework(&fid);
        if !self.destroyed_in_use.is_empty() {
            let in_use = self.volumes_in_use();
            let (held, free): (Vec<Resource>, Vec<Resource>) = std::mem::take(&mut self.destroyed_in_use)
                .into_iter()
                .partition(|r| r.persistence_id().is_some_and(|id| in_use.iter().any(|u| u == id)));
            for r in &free {
                crate::persistent::delete(&self.config.work_dir, r);
            }
            self.destroyed_in_use = held;
        }
    }

    /// Every task of the executor that is not terminal yet ends FAILED.
    fn fail_executor_tasks(
        &mut self,
        fid: &FrameworkId,
        eid: &ExecutorId,
        reason: Reason,
        message: &str,
        limitation: Option<&agora_containerizer::Limitation>,
    ) {
        let Some(e) = self.executor(fid, eid) else { return };
        let mut ids: Vec<TaskId> = e.queued.iter().map(|t| t.task_id.clone()).collect();
        ids.extend(e.tasks.values().filter(|t| !t.state.is_terminal()).map(|t| t.info.task_id.clone()));
        let mut updates = Vec::new();
        for tid in ids {
            let mut s = self.agent_status(&tid, Some(eid), TaskState::Failed, Some(reason), message);
            if let Some(l) = limitation {
                apply_limitation(&mut s, l);
            }
            updates.push(s);
        }
        if let Some(e) = self.executor_mut(fid, eid) {
            let queued = std::mem::take(&mut e.queued);
            for t in queued {
                e.tasks.insert(t.task_id.clone(), AgentTask { info: t, state: TaskState::Staging, statuses: vec![] });
            }
            for s in &updates {
                if let Some(t) = e.tasks.get_mut(&s.task_id) {
                    t.state = s.state;
                    t.statuses.push(s.clone());
                }
            }
        }
        for s in updates {
            self.counters.tasks_failed += 1;
            self.enqueue_update(fid, Some(eid), s);
        }
    }

    /// An executor is done when it exited and all its tasks' updates were acknowledged.
    fn maybe_complete_executor(&mut self, fid: &FrameworkId, eid: &ExecutorId) {
        let pending = self
            .streams
            .keys()
            .any(|(f, t)| f == fid && self.executor(fid, eid).map(|e| e.tasks.contains_key(t)).unwrap_or(false));
        let Some(fw) = self.frameworks.get_mut(fid) else { return };
        let done = fw.executors.get(eid).map(|e| e.state == ExecState::Terminated).unwrap_or(false);
        if done && !pending {
            self.checkpoints.remove_executor(fid, eid);
            if let Some(mut e) = fw.executors.remove(eid) {
                let tasks: Vec<AgentTask> = std::mem::take(&mut e.tasks).into_values().collect();
                e.completed.extend(tasks);
                fw.completed_executors.push_back(e);
                while fw.completed_executors.len() > 150 {
                    fw.completed_executors.pop_front();
                }
            }
        }
    }

    // ------------------------------------------------------------ status update manager

    fn record_latency(&mut self, key: &(FrameworkId, TaskId), state: TaskState) {
        if state == TaskState::Running {
            if let Some(t) = self.launch_times.get(key) {
                push_latency(&mut self.to_running_ms, t.elapsed());
            }
        } else if state.is_terminal() {
            if let Some(t) = self.launch_times.remove(key) {
                push_latency(&mut self.to_exit_ms, t.elapsed());
            }
        }
    }

    /// Takes an update into the status update manager: checkpointed first (for
    /// checkpointing frameworks), then forwarded when it is at the head of its task's queue.
    fn enqueue_update(&mut self, fid: &FrameworkId, eid: Option<&ExecutorId>, status: TaskStatus) {
        let key = (fid.clone(), status.task_id.clone());
        self.record_latency(&key, status.state);
        let checkpoint = self.frameworks.get(fid).map(|f| f.info.checkpoint).unwrap_or(false);
        if let (true, Some(eid)) = (checkpoint, eid) {
            if let Err(e) =
                self.checkpoints.append_update(fid, eid, &status.task_id, &UpdateRecord::Update(status.clone()))
            {
                tracing::error!(error = %e, "cannot checkpoint a status update");
            }
        }
        let base = self.config.status_update_retry_interval;
        let s = self.streams.entry(key.clone()).or_insert_with(|| UpdateStream {
            pending: VecDeque::new(),
            next_retry: None,
            backoff: base,
        });
        s.pending.push_back(status);
        if s.pending.len() == 1 {
            self.forward_head(&key);
        }
    }

    fn latest_state(&self, fid: &FrameworkId, tid: &TaskId) -> Option<TaskState> {
        let fw = self.frameworks.get(fid)?;
        fw.executors.values().find_map(|e| e.tasks.get(tid).map(|t| t.state))
    }

    fn forward_head(&mut self, key: &(FrameworkId, TaskId)) {
        let latest = self.latest_state(&key.0, &key.1);
        let (Some(agent_id), Some(session_id)) = (self.agent_id.clone(), self.session_id.clone()) else {
            if let Some(s) = self.streams.get_mut(key) {
                s.next_retry = Some(Instant::now() + s.backoff);
            }
            return;
        };
        let Some(s) = self.streams.get_mut(key) else { return };
        let Some(head) = s.pending.front().cloned() else { return };
        s.next_retry = Some(Instant::now() + s.backoff);
        let latest = s.pending.back().map(|b| b.state).or(latest);
        self.counters.status_updates_sent += 1;
        self.send_master(AgentToMaster::StatusUpdate {
            agent_id,
            session_id,
            update: StatusUpdate { framework_id: key.0.clone(), status: head, latest_state: latest },
        });
    }

    fn retry_updates(&mut self) {
        if self.session_id.is_none() {
            return;
        }
        let now = Instant::now();
        let due: Vec<(FrameworkId, TaskId)> = self
            .streams
            .iter()
            .filter(|(_, s)| s.next_retry.map(|t| t <= now).unwrap_or(false))
            .map(|(k, _)| k.clone())
            .collect();
        let max = Duration::from_secs(600);
        for key in due {
            if let Some(s) = self.streams.get_mut(&key) {
                self.counters.status_update_retries += 1;
                s.backoff = (s.backoff * 2).min(max);
            }
            self.forward_head(&key);
        }
    }

    fn acknowledged(&mut self, fid: &FrameworkId, tid: &TaskId, uuid: &B64) {
        let key = (fid.clone(), tid.clone());
        let base = self.config.status_update_retry_interval;
        let Some(s) = self.streams.get_mut(&key) else {
            tracing::debug!(framework_id = %fid, task_id = %tid, "acknowledgement for no pending update");
            return;
        };
        if s.pending.front().and_then(|h| h.uuid.as_ref()) != Some(uuid) {
            tracing::debug!(framework_id = %fid, task_id = %tid, "acknowledgement does not match the update in flight; ignored");
            return;
        }
        let acked = s.pending.pop_front();
        s.backoff = base;
        let checkpoint = self.frameworks.get(fid).map(|f| f.info.checkpoint).unwrap_or(false);
        if checkpoint {
            let eid = self.frameworks.get(fid).and_then(|f| {
                f.executors
                    .iter()
                    .find(|(_, e)| e.tasks.contains_key(tid) || e.completed.iter().any(|t| &t.info.task_id == tid))
                    .map(|(id, _)| id.clone())
            });
            if let Some(eid) = eid {
                if let Err(e) = self.checkpoints.append_update(fid, &eid, tid, &UpdateRecord::Ack(uuid.clone())) {
                    tracing::error!(error = %e, "cannot checkpoint an acknowledgement");
                }
            }
        }
        let Some(s) = self.streams.get_mut(&key) else { return };
        if s.pending.is_empty() {
            self.streams.remove(&key);
            if acked.map(|a| a.state.is_terminal()).unwrap_or(false) {
                self.task_completed(fid, tid);
            }
        } else {
            self.forward_head(&key);
        }
    }

    /// A task whose terminal update was acknowledged leaves the live set.
    fn task_completed(&mut self, fid: &FrameworkId, tid: &TaskId) {
        let mut owner = None;
        if let Some(fw) = self.frameworks.get_mut(fid) {
            for (eid, e) in fw.executors.iter_mut() {
                if let Some(t) = e.tasks.remove(tid) {
                    e.completed.push(t);
                    if e.completed.len() > 200 {
                        e.completed.remove(0);
                    }
                    owner = Some(eid.clone());
                    break;
                }
            }
        }
        if let Some(eid) = owner {
            // A command executor whose only task is done is shut down if it lingers.
            let lingering = self
                .executor(fid, &eid)
                .map(|e| e.is_command && e.tasks.is_empty() && e.queued.is_empty() && e.state == ExecState::Running)
                .unwrap_or(false);
            if lingering {
                let grace = self.config.executor_shutdown_grace_period;
                let cid = self.executor(fid, &eid).map(|e| e.container_id.clone());
                if let Some(cid) = cid {
                    let tx = self.self_tx.clone();
                    let (f, e) = (fid.clone(), eid.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(grace + Duration::from_secs(5)).await;
                        let _ = tx.send(Msg::ShutdownTimeout { framework_id: f, executor_id: e, container_id: cid });
                    });
                }
            }
            self.maybe_complete_executor(fid, &eid);
        }
        self.maybe_remove_framework(fid);
    }

    // ------------------------------------------------------------ views

    fn query(&self, q: &Query) -> serde_json::Value {
        match q {
            Query::State => self.state_json(),
            Query::Metrics => self.metrics(),
            Query::Containers { detailed } => self.containers_json(*detailed),
            Query::SandboxRoot => serde_json::json!({
                "work_dir": self.config.work_dir,
                "agent_id": self.agent_id.as_ref().map(|a| a.value.clone()),
            }),
        }
    }

    fn task_json(
        &self,
        fid: &FrameworkId,
        e: &Executor,
        t: &TaskInfo,
        state: TaskState,
        statuses: &[TaskStatus],
    ) -> serde_json::Value {
        serde_json::json!({
            "id": t.task_id.value,
            "name": t.name,
            "framework_id": fid.value,
            "executor_id": if e.is_command { String::new() } else { e.info.executor_id.value.to_string() },
            "slave_id": self.agent_id.as_ref().map(|a| a.value.clone()).unwrap_or_default(),
            "state": state,
            "resources": Resources::from_vec(t.resources.clone()).to_legacy_map(),
            "statuses": statuses.iter().map(|s| serde_json::json!({"state": s.state, "timestamp": s.timestamp.unwrap_or(0.0)})).collect::<Vec<_>>(),
        })
    }

    fn executor_json(&self, fid: &FrameworkId, e: &Executor) -> serde_json::Value {
        serde_json::json!({
            "id": e.info.executor_id.value,
            "name": e.info.name.clone().unwrap_or_default(),
            "source": e.info.source.clone().unwrap_or_default(),
            "container": e.container_id.value,
            "directory": e.directory,
            "resources": Resources::from_vec(e.info.resources.clone()).to_legacy_map(),
            "type": if e.is_command { "COMMAND" } else { "CUSTOM" },
            "tasks": e.tasks.values().map(|t| self.task_json(fid, e, &t.info, t.state, &t.statuses)).collect::<Vec<_>>(),
            "queued_tasks": e.queued.iter().map(|t| self.task_json(fid, e, t, TaskState::Staging, &[])).collect::<Vec<_>>(),
            "completed_tasks": e.completed.iter().map(|t| self.task_json(fid, e, &t.info, t.state, &t.statuses)).collect::<Vec<_>>(),
        })
    }

    fn framework_json(&self, fid: &FrameworkId, fw: &Framework) -> serde_json::Value {
        serde_json::json!({
            "id": fid.value,
            "name": fw.info.name,
            "user": fw.info.user,
            "failover_timeout": fw.info.failover_timeout,
            "checkpoint": fw.info.checkpoint,
            "role": fw.info.effective_roles().first().cloned().unwrap_or_default(),
            "hostname": fw.info.hostname.clone().unwrap_or_default(),
            "executors": fw.executors.values().filter(|e| e.state != ExecState::Terminated).map(|e| self.executor_json(fid, e)).collect::<Vec<_>>(),
            "completed_executors": fw.executors.values().filter(|e| e.state == ExecState::Terminated).chain(fw.completed_executors.iter()).map(|e| self.executor_json(fid, e)).collect::<Vec<_>>(),
        })
    }

    fn state_json(&self) -> serde_json::Value {
        let flags: serde_json::Map<String, serde_json::Value> =
            self.config.flags.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        let mut attrs = serde_json::Map::new();
        for a in &self.agent_info.attributes {
            attrs.insert(a.name.clone(), a.legacy_value());
        }
        let total = Resources::from_vec(self.agent_info.resources.clone());
        serde_json::json!({
            "version": MESOS_VERSION,
            "agora_version": AGORA_VERSION,
            "build_date": format!("agora {AGORA_VERSION}"),
            "build_time": 0.0,
            "build_user": "agora",
            "start_time": self.start_time,
            "id": self.agent_id.as_ref().map(|a| a.value.clone()).unwrap_or_default(),
            "pid": format!("slave(1)@{}:{}", self.config.ip, self.config.port),
            "hostname": self.agent_info.hostname,
            "resources": total.to_legacy_map(),
            "attributes": attrs,
            "master_hostname": self.config.master,
            "flags": flags,
            "frameworks": self.frameworks.iter().map(|(id, f)| self.framework_json(id, f)).collect::<Vec<_>>(),
            "completed_frameworks": self.completed_frameworks.iter().filter_map(|f| f.info.id.as_ref().map(|id| self.framework_json(id, f))).collect::<Vec<_>>(),
        })
    }

    fn containers_json(&self, detailed: bool) -> serde_json::Value {
        let mut out = Vec::new();
        for (fid, fw) in &self.frameworks {
            for e in fw.executors.values().filter(|e| e.state != ExecState::Terminated) {
                let stats = self.containerizer.usage(&e.container_id);
                let mut entry = serde_json::json!({
                    "framework_id": fid.value,
                    "executor_id": e.info.executor_id.value,
                    "executor_name": e.info.name.clone().unwrap_or_default(),
                    "source": e.info.source.clone().unwrap_or_default(),
                    "statistics": stats.map(|s| serde_json::to_value(s).unwrap_or_default()).unwrap_or_else(|| serde_json::json!({})),
                });
                if let Some((used, quota)) = self.disk_usage.get(&e.container_id) {
                    entry["statistics"]["disk_used_bytes"] = serde_json::json!(used);
                    if let Some(q) = quota {
                        entry["statistics"]["disk_limit_bytes"] = serde_json::json!(q);
                    }
                }
                if detailed {
                    entry["container_id"] = serde_json::json!(e.container_id.value);
                    entry["status"] = serde_json::json!({ "executor_pid": e.pid });
                }
                out.push(entry);
            }
        }
        serde_json::Value::Array(out)
    }

    fn metrics(&self) -> serde_json::Value {
        let live = |s: TaskState| {
            self.frameworks
                .values()
                .flat_map(|f| f.executors.values())
                .flat_map(|e| e.tasks.values())
                .filter(|t| t.state == s)
                .count()
        };
        let executors_running = self
            .frameworks
            .values()
            .flat_map(|f| f.executors.values())
            .filter(|e| e.state == ExecState::Running)
            .count();
        let total = Resources::from_vec(self.agent_info.resources.clone());
        let c = &self.counters;
        serde_json::json!({
            "slave/registered": if self.session_id.is_some() { 1 } else { 0 },
            "slave/uptime_secs": self.started.elapsed().as_secs_f64(),
            "slave/frameworks_active": self.frameworks.len(),
            "slave/executors_running": executors_running,
            "slave/executors_registering": self.frameworks.values().flat_map(|f| f.executors.values()).filter(|e| e.state == ExecState::Registering).count(),
            "slave/executors_terminating": self.frameworks.values().flat_map(|f| f.executors.values()).filter(|e| e.state == ExecState::Terminating).count(),
            "slave/executors_terminated": c.executors_terminated,
            "slave/tasks_staging": live(TaskState::Staging),
            "slave/tasks_starting": live(TaskState::Starting),
            "slave/tasks_running": live(TaskState::Running),
            "slave/tasks_killing": live(TaskState::Killing),
            "slave/tasks_finished": c.tasks_finished,
            "slave/tasks_failed": c.tasks_failed,
            "slave/tasks_killed": c.tasks_killed,
            "slave/tasks_lost": c.tasks_lost,
            "slave/valid_status_updates": c.status_updates_sent,
            "slave/invalid_status_updates": c.invalid_status_updates,
            "slave/status_update_retries": c.status_update_retries,
            "slave/pending_status_updates": self.streams.values().map(|s| s.pending.len()).sum::<usize>(),
            "slave/task_launch_to_running_ms_p50": percentile(&self.to_running_ms, 0.50),
            "slave/task_launch_to_running_ms_p99": percentile(&self.to_running_ms, 0.99),
            "slave/task_launch_to_exit_ms_p50": percentile(&self.to_exit_ms, 0.50),
            "slave/task_launch_to_exit_ms_p99": percentile(&self.to_exit_ms, 0.99),
            "slave/task_launch_samples": self.to_exit_ms.len(),
            "slave/task_launch_to_spawned_ms_p50": percentile(&self.to_spawned_ms, 0.50),
            "slave/task_launch_to_spawned_ms_p99": percentile(&self.to_spawned_ms, 0.99),
            "slave/task_launch_to_executor_subscribed_ms_p50": percentile(&self.to_subscribed_ms, 0.50),
            "slave/task_launch_to_executor_subscribed_ms_p99": percentile(&self.to_subscribed_ms, 0.99),
            "slave/cpus_total": total.scalar("cpus"),
            "slave/mem_total": total.scalar("mem"),
            "slave/disk_total": total.scalar("disk"),
        })
    }
}

/// The q-quantile of recent samples (nearest rank), 0 when there are none.
fn percentile(v: &VecDeque<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s: Vec<f64> = v.iter().copied().collect();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let idx = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[idx]
}

/// Marks a status as caused by a container limitation (`TaskStatus.limitation`).
fn apply_limitation(s: &mut TaskStatus, l: &agora_containerizer::Limitation) {
    s.reason = Some(l.reason);
    s.message = Some(l.message.clone());
    s.limitation = Some(Box::new(serde_json::json!({ "resources": l.resources })));
}

/// Points `runs/latest` at the newest run, as Mesos does.
fn latest_symlink(dir: &std::path::Path) -> std::io::Result<()> {
    let Some(runs) = dir.parent() else { return Ok(()) };
    let link = runs.join("latest");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(dir, link)
}

/// Points each image volume's mount at its provisioned rootfs.
fn fill_image_volumes(spec: &mut LaunchSpec, volumes: Vec<(usize, PathBuf)>) {
    for (index, rootfs) in volumes {
        if let Some(m) = spec.volumes.get_mut(index) {
            m.source = rootfs;
        }
    }
}

/// A custom executor in an image: its command (else the image's Entrypoint + Cmd) and the
/// image's Env under its own; it starts in the sandbox (`/mnt/mesos/sandbox`) as root.
fn apply_image_to_executor(spec: &mut LaunchSpec, img: &agora_executor::ImageRuntime) {
    if spec.argv.iter().all(|a| a.is_empty()) {
        let argv: Vec<String> = img.entrypoint.iter().flatten().chain(img.cmd.iter().flatten()).cloned().collect();
        if !argv.is_empty() {
            spec.argv = argv;
            spec.shell = false;
        }
    }
    let mut env: Vec<(String, String)> = img
        .env
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .filter(|(k, _)| !spec.env.iter().any(|(k2, _)| k2 == k))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") && !spec.env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()));
    }
    spec.env.splice(0..0, env);
}

/// Appends a launch latency (ms) to a window of the last 10,000.
fn push_latency(q: &mut VecDeque<f64>, d: std::time::Duration) {
    const KEEP: usize = 10_000;
    if q.len() == KEEP {
        q.pop_front();
    }
    q.push_back(d.as_secs_f64() * 1000.0);
}
