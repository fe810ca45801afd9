//! The executor's event loop: one owner of all state, fed by the subscription stream,
//! the results of update POSTs, the task's exit and a few timers.
use crate::launch::{self, Process};
use crate::status::{self, KillCause, Termination};
use crate::{format_mesos_duration, Config, ExecutorError};
use agora_api::executor::{Call, CallType, Event, EventType, Subscribe, UnackedUpdate, UpdateCall};
use agora_api::json::Bytes;
use agora_api::{AgentId, KillPolicy, Reason, TaskId, TaskInfo, TaskState, TaskStatus};
use agora_http::Client;
use nix::sys::signal::Signal;
use std::collections::HashSet;
use std::time::Duration;
use tokio::signal::unix::{signal as unix_signal, Signal as UnixSignal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// First delay before re-subscribing; doubled on every failure up to [`BACKOFF_MAX`].
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a non-checkpointing executor keeps trying to make its first subscription
/// (the agent's default executor registration timeout).
const FIRST_SUBSCRIBE_LIMIT: Duration = Duration::from_secs(60);
/// The kill grace period when neither the KILL event nor the task has a kill policy.
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(3);
/// Kept back from the shutdown grace period so the task's end can still be reported.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(20);
const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the helper tasks tell the loop. `gen` names the subscription (connection) a
/// message belongs to; messages of an abandoned one are ignored.
#[derive(Debug)]
enum Msg {
    Event { gen: u64, event: Box<Event> },
    StreamEnded { gen: u64, why: String },
    SubscribeFailed { gen: u64, why: String },
    PostDone { gen: u64, seq: u64, result: Result<(), String> },
    TaskExited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Not connected; (re)subscribe at this instant.
    Down { retry_at: Instant },
    /// SUBSCRIBE sent, SUBSCRIBED not yet seen.
    Subscribing,
    /// SUBSCRIBED seen on the current stream.
    Up,
}

/// An update the agent has not acknowledged yet; `seq` orders updates.
#[derive(Debug)]
struct Unacked {
    seq: u64,
    status: TaskStatus,
}

#[derive(Debug)]
struct Kill {
    cause: KillCause,
    sigkill_at: Option<Instant>,
}

#[derive(Debug)]
struct Task {
    info: TaskInfo,
    /// Whether the agent has acknowledged any update of the task: until then the task
    /// itself is re-sent in SUBSCRIBE.
    acked_once: bool,
    /// The running process, `None` before the launch and once it has been reaped.
    process: Option<Process>,
    kill: Option<Kill>,
    completion_deadline: Option<Instant>,
    /// The terminal update has been made.
    terminated: bool,
}

pub(crate) struct Driver {
    config: Config,
    url: String,
    client: Client,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,

    gen: u64,
    link: Link,
    link_tasks: Vec<JoinHandle<()>>,
    ever_subscribed: bool,
    /// When the current stretch without a subscription began.
    down_since: Instant,
    backoff: Duration,
    /// `next_seq` when the pending SUBSCRIBE was built: updates before it went in it.
    subscribe_seq: u64,

    next_seq: u64,
    unacked: Vec<Unacked>,
    /// The first update (by seq) not yet delivered on the current subscription.
    next_post_seq: u64,
    post_in_flight: bool,

    killing_capability: bool,
    agent_id: Option<AgentId>,
    task: Option<Task>,
    kill_before_launch: HashSet<TaskId>,
    shutdown_deadline: Option<Instant>,
}

/// Waits for one of the watched signals; forever when none is watched.
async fn any_signal(signals: &mut [UnixSignal]) {
    match signals {
        [] => std::future::pending().await,
        [one] => recv_signal(one).await,
        [first, rest @ ..] => tokio::select! {
            () = recv_signal(first) => {}
            () = Box::pin(any_signal(rest)) => {}
        },
    }
}

async fn recv_signal(s: &mut UnixSignal) {
    if s.recv().await.is_none() {
        // The signal driver is gone: nothing will ever arrive.
        std::future::pending::<()>().await;
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    pub(crate) fn new(config: Config) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let url = format!("{}/api/v1/executor", agora_http::base_url(&config.agent_endpoint));
        let now = Instant::now();
        Driver {
            config,
            url,
            client: Client::new(),
            tx,
            rx,
            gen: 0,
            link: Link::Down { retry_at: now },
            link_tasks: Vec::new(),
            ever_subscribed: false,
            down_since: now,
            backoff: BACKOFF_INITIAL,
            subscribe_seq: 0,
            next_seq: 0,
            unacked: Vec::new(),
            next_post_seq: 0,
            post_in_flight: false,
            killing_capability: false,
            agent_id: None,
            task: None,
            kill_before_launch: HashSet::new(),
            shutdown_deadline: None,
        }
    }

    pub(crate) async fn run(mut self) -> Result<(), ExecutorError> {
        let mut signals = Vec::new();
        for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
            match unix_signal(kind) {
                Ok(s) => signals.push(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch for SIGTERM/SIGINT: the task may outlive a killed executor")
                }
            }
        }
        let result = self.event_loop(&mut signals).await;
        self.cleanup();
        match &result {
            Ok(()) => tracing::info!("executor done"),
            Err(e) => tracing::error!(error = %e, "executor stopping"),
        }
        result
    }

    async fn event_loop(&mut self, signals: &mut [UnixSignal]) -> Result<(), ExecutorError> {
        let mut signalled = false;
        loop {
            if self.done() {
                return Ok(());
            }
            let retry_at = match self.link {
                Link::Down { retry_at } => Some(retry_at),
                _ => None,
            };
            let sigkill_at = self.task.as_ref().and_then(|t| t.kill.as_ref()).and_then(|k| k.sigkill_at);
            let completion_at = self.task.as_ref().and_then(|t| t.completion_deadline);
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.on_msg(msg)?,
                    // The loop holds a sender, so the channel never closes.
                    None => return Ok(()),
                },
                () = sleep_until(retry_at) => self.subscribe(),
                () = sleep_until(sigkill_at) => self.escalate(),
                () = sleep_until(completion_at) => self.on_completion_timeout(),
                () = sleep_until(self.shutdown_deadline) => {
                    tracing::warn!("shutdown grace period over: exiting");
                    return Ok(());
                }
                () = any_signal(signals) => {
                    if signalled {
                        tracing::warn!("signalled again: exiting at once");
                        return Ok(());
                    }
                    tracing::info!("signalled: shutting down as if the agent had asked");
                    signalled = true;
                    self.on_shutdown();
                }
            }
        }
    }

    /// Whether the executor has nothing left to do.
    fn done(&self) -> bool {
        match &self.task {
            // SHUTDOWN before any LAUNCH.
            None => self.shutdown_deadline.is_some(),
            Some(t) => t.terminated && t.process.is_none() && self.unacked.is_empty(),
        }
    }

    fn on_msg(&mut self, msg: Msg) -> Result<(), ExecutorError> {
        // Link messages count only for the current subscription, and only once: after a
        // failure the link is down until the next SUBSCRIBE (which starts a new `gen`).
        let current = |gen: u64, link: Link| gen == self.gen && !matches!(link, Link::Down { .. });
        match msg {
            Msg::TaskExited => {
                self.on_task_exited();
                Ok(())
            }
            // Events are the agent's word whichever stream carried them (a KILL must not
            // be lost because a POST failed meanwhile); only SUBSCRIBED is tied to `gen`.
            Msg::Event { gen, event } => {
                if event.kind == EventType::Subscribed && !current(gen, self.link) {
                    tracing::debug!("SUBSCRIBED of an abandoned subscription: ignored");
                    return Ok(());
                }
                self.on_event(*event)
            }
            Msg::StreamEnded { gen, why } | Msg::SubscribeFailed { gen, why } if current(gen, self.link) => {
                self.on_link_failure(why)
            }
            Msg::PostDone { gen, seq, result } if current(gen, self.link) => {
                self.post_in_flight = false;
                match result {
                    Ok(()) => {
                        self.next_post_seq = self.next_post_seq.max(seq + 1);
                        self.kick_post();
                        Ok(())
                    }
                    Err(why) => self.on_link_failure(format!("sending an update failed: {why}")),
                }
            }
            stale => {
                tracing::debug!(?stale, "ignoring a message of an abandoned subscription");
                Ok(())
            }
        }
    }

    // ---- the link to the agent -------------------------------------------------------

    fn subscribe(&mut self) {
        self.abort_link_tasks();
        self.gen += 1;
        self.link = Link::Subscribing;
        self.subscribe_seq = self.next_seq;
        let unacknowledged_tasks = self.task.iter().filter(|t| !t.acked_once).map(|t| t.info.clone()).collect();
        let unacknowledged_updates = self.unacked.iter().map(|u| UnackedUpdate { status: u.status.clone() }).collect();
        let call = Call {
            subscribe: Some(Subscribe { unacknowledged_tasks, unacknowledged_updates }),
            ..self.call(CallType::Subscribe)
        };
        tracing::info!(url = %self.url, unacknowledged_updates = self.unacked.len(), "subscribing to the agent");
        let (gen, url, client, tx) = (self.gen, self.url.clone(), self.client.clone(), self.tx.clone());
        self.link_tasks.push(tokio::spawn(async move {
            let mut stream = match client.subscribe(&url, &[], &call, SUBSCRIBE_TIMEOUT).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Msg::SubscribeFailed { gen, why: e.to_string() });
                    return;
                }
            };
            let why = loop {
                match stream.next().await {
                    None => break "the agent closed the event stream".to_string(),
                    Some(Err(e)) => break e.to_string(),
                    Some(Ok(record)) => {
                        if let Some(event) = decode_event(&record) {
                            if tx.send(Msg::Event { gen, event: Box::new(event) }).is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            let _ = tx.send(Msg::StreamEnded { gen, why });
        }));
    }

    fn on_link_failure(&mut self, why: String) -> Result<(), ExecutorError> {
        let was_up = self.link == Link::Up;
        self.abort_link_tasks();
        let now = Instant::now();
        if was_up {
            tracing::warn!(error = %why, "lost the connection to the agent");
            if !self.config.checkpoint {
                return Err(ExecutorError::AgentDisconnected { endpoint: self.config.agent_endpoint.clone(), why });
            }
            self.down_since = now;
            self.backoff = BACKOFF_INITIAL;
        } else {
            let limit = if self.config.checkpoint || self.ever_subscribed {
                self.config.recovery_timeout
            } else {
                self.config.recovery_timeout.min(FIRST_SUBSCRIBE_LIMIT)
            };
            let waited = now.saturating_duration_since(self.down_since);
            if waited >= limit {
                return Err(ExecutorError::SubscribeTimeout {
                    endpoint: self.config.agent_endpoint.clone(),
                    waited,
                    last_error: why,
                });
            }
            tracing::info!(error = %why, retry_in = %format_mesos_duration(self.backoff), "subscription failed");
        }
        self.link = Link::Down { retry_at: now + self.backoff };
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Ok(())
    }

    fn abort_link_tasks(&mut self) {
        for t in self.link_tasks.drain(..) {
            t.abort();
        }
        self.post_in_flight = false;
        if !matches!(self.link, Link::Down { .. }) {
            self.link = Link::Down { retry_at: Instant::now() };
        }
    }

    fn call(&self, kind: CallType) -> Call {
        Call {
            executor_id: self.config.executor_id.clone(),
            framework_id: self.config.framework_id.clone(),
            kind,
            subscribe: None,
            update: None,
            message: None,
        }
    }

    // ---- events ----------------------------------------------------------------------

    fn on_event(&mut self, event: Event) -> Result<(), ExecutorError> {
        match event.kind {
            EventType::Subscribed => self.on_subscribed(event),
            EventType::Launch => match event.launch {
                Some(l) => self.on_launch(l.task),
                None => tracing::warn!("LAUNCH event without a task: ignored"),
            },
            EventType::LaunchGroup => {
                tracing::error!("LAUNCH_GROUP sent to the command executor, which runs single tasks only: ignored")
            }
            EventType::Kill => match event.kill {
                Some(k) => self.on_kill(k.task_id, k.kill_policy),
                None => tracing::warn!("KILL event without a task id: ignored"),
            },
            EventType::Acknowledged => match event.acknowledged {
                Some(a) => self.on_acknowledged(&a.task_id, &a.uuid),
                None => tracing::warn!("ACKNOWLEDGED event without a body: ignored"),
            },
            EventType::Shutdown => self.on_shutdown(),
            EventType::Error => {
                let message = event.error.map(|e| e.message).unwrap_or_default();
                return Err(ExecutorError::Agent { message });
            }
            EventType::Message => {
                tracing::info!("framework message received (the command executor ignores them)")
            }
            EventType::Heartbeat => tracing::trace!("heartbeat"),
            EventType::Unknown => tracing::debug!("event of an unknown type: ignored"),
        }
        Ok(())
    }

    fn on_subscribed(&mut self, event: Event) {
        if self.link != Link::Subscribing {
            tracing::warn!("SUBSCRIBED on a stream already subscribed: ignored");
            return;
        }
        match event.subscribed {
            Some(s) => {
                self.killing_capability = s.framework_info.has_capability("TASK_KILLING_STATE");
                if s.agent_info.id.is_some() {
                    self.agent_id = s.agent_info.id;
                }
            }
            None => {
                tracing::warn!("SUBSCRIBED event without a body: framework capabilities unknown")
            }
        }
        tracing::info!(reconnected = self.ever_subscribed, "subscribed to the agent");
        self.link = Link::Up;
        self.ever_subscribed = true;
        self.backoff = BACKOFF_INITIAL;
        self.next_post_seq = self.subscribe_seq;
        self.kick_post();
    }

    fn on_launch(&mut self, info: TaskInfo) {
        let task_id = info.task_id.clone();
        if let Some(current) = &self.task {
            tracing::error!(task = %task_id, running = %current.info.task_id, "a second LAUNCH: the command executor runs one task");
            let msg = "Attempted to run multiple tasks using a \"command\" executor".to_string();
            self.send_update(&task_id, TaskState::Failed, Some(msg), None);
            return;
        }
        tracing::info!(task = %task_id, "launching task");
        let completion_limit = info.max_completion_time.map(|d| d.as_duration());
        self.task = Some(Task {
            info,
            acked_once: false,
            process: None,
            kill: None,
            completion_deadline: None,
            terminated: false,
        });
        if self.kill_before_launch.remove(&task_id) {
            self.terminate(
                TaskState::Killed,
                "Task killed before it was launched".to_string(),
                Some(Reason::ReasonTaskKilledDuringLaunch),
            );
            return;
        }
        self.send_update(&task_id, TaskState::Starting, None, None);
        let Some(task) = &self.task else { return };
        let spawned = launch::plan(&task.info, &self.config, std::env::vars_os()).and_then(|plan| launch::spawn(&plan));
        match spawned {
            Ok(process) => {
                let (pid, tx) = (process.pid, self.tx.clone());
                tracing::info!(task = %task_id, pid = pid.as_raw(), "task started");
                let watcher = std::thread::Builder::new().name("task-reaper".into()).spawn(move || {
                    launch::wait_exited_unreaped(pid);
                    let _ = tx.send(Msg::TaskExited);
                });
                if let Err(e) = watcher {
                    // Without a watcher the exit would go unnoticed: give up on the task.
                    tracing::error!(error = %e, "could not start the thread that waits for the task");
                    process.signal_group(Signal::SIGKILL);
                    let mut process = process;
                    let _ = process.child.wait();
                    self.terminate(TaskState::Failed, format!("Failed to launch command: {e}"), None);
                    return;
                }
                if let Some(t) = &mut self.task {
                    t.process = Some(process);
                    t.completion_deadline = completion_limit.map(|d| Instant::now() + d);
                }
                self.send_update(&task_id, TaskState::Running, None, None);
            }
            Err(why) => {
                tracing::error!(task = %task_id, error = %why, "could not launch the task");
                self.terminate(TaskState::Failed, format!("Failed to launch command: {why}"), None);
            }
        }
    }

    fn on_kill(&mut self, task_id: TaskId, policy: Option<KillPolicy>) {
        let Some(task) = &self.task else {
            tracing::info!(task = %task_id, "KILL before LAUNCH: the task will not be started");
            self.kill_before_launch.insert(task_id);
            return;
        };
        if task.info.task_id != task_id {
            tracing::warn!(task = %task_id, "KILL for an unknown task: ignored");
            return;
        }
        if task.process.is_none() {
            tracing::info!(task = %task_id, "KILL for a task that is not running: ignored");
            return;
        }
        let grace = grace_period(policy.as_ref())
            .or_else(|| grace_period(task.info.kill_policy.as_ref()))
            .unwrap_or(DEFAULT_KILL_GRACE);
        self.kill_task(KillCause::Requested, grace);
    }

    fn on_shutdown(&mut self) {
        tracing::info!("shutting down");
        if self.shutdown_deadline.is_some() {
            return;
        }
        self.shutdown_deadline = Some(Instant::now() + self.config.shutdown_grace);
        let grace = self.config.shutdown_grace.saturating_sub(SHUTDOWN_MARGIN);
        if self.task.as_ref().is_some_and(|t| t.process.is_some()) {
            self.kill_task(KillCause::Shutdown, grace);
        }
    }

    fn on_acknowledged(&mut self, task_id: &TaskId, uuid: &Bytes) {
        let found =
            self.unacked.iter().position(|u| u.status.uuid.as_ref() == Some(uuid) && &u.status.task_id == task_id);
        match found {
            Some(i) => {
                let u = self.unacked.remove(i);
                tracing::debug!(task = %task_id, state = u.status.state.name(), "update acknowledged");
                if let Some(t) = &mut self.task {
                    if &t.info.task_id == task_id {
                        t.acked_once = true;
                    }
                }
            }
            None => {
                tracing::debug!(task = %task_id, "acknowledgement of an unknown update: ignored")
            }
        }
    }

    // ---- the task --------------------------------------------------------------------

    /// Starts killing the running task: TASK_KILLING (when the framework understands it),
    /// SIGTERM to the group now, SIGKILL after `grace`. A second kill can only shorten the
    /// remaining grace period.
    fn kill_task(&mut self, cause: KillCause, grace: Duration) {
        let Some(task) = &mut self.task else { return };
        let Some(process) = &task.process else { return };
        let sigkill_at = Instant::now() + grace;
        if let Some(kill) = &mut task.kill {
            if let Some(at) = &mut kill.sigkill_at {
                if sigkill_at < *at {
                    tracing::info!(grace = %format_mesos_duration(grace), "shortening the kill grace period");
                    *at = sigkill_at;
                }
            }
            return;
        }
        tracing::info!(task = %task.info.task_id, ?cause, grace = %format_mesos_duration(grace), "killing task: SIGTERM");
        process.signal_group(Signal::SIGTERM);
        task.kill = Some(Kill { cause, sigkill_at: Some(sigkill_at) });
        task.completion_deadline = None;
        let task_id = task.info.task_id.clone();
        if self.killing_capability {
            self.send_update(&task_id, TaskState::Killing, None, None);
        }
    }

    fn escalate(&mut self) {
        let Some(task) = &mut self.task else { return };
        if let (Some(kill), Some(process)) = (&mut task.kill, &task.process) {
            tracing::info!(task = %task.info.task_id, "grace period over: SIGKILL");
            process.signal_group(Signal::SIGKILL);
            kill.sigkill_at = None;
        }
    }

    fn on_completion_timeout(&mut self) {
        let Some(task) = &mut self.task else { return };
        task.completion_deadline = None;
        let limit = task.info.max_completion_time.map(|d| d.as_duration()).unwrap_or_default();
        tracing::warn!(task = %task.info.task_id, limit = %format_mesos_duration(limit), "task exceeded its maximum completion time");
        let grace = grace_period(task.info.kill_policy.as_ref()).unwrap_or(DEFAULT_KILL_GRACE);
        self.kill_task(KillCause::MaxCompletionTime(limit), grace);
    }

    fn on_task_exited(&mut self) {
        let Some(task) = &mut self.task else { return };
        let Some(mut process) = task.process.take() else {
            return;
        };
        // The leader is a zombie now, so its group id is still ours: clear out whatever
        // it left behind before reaping it.
        process.signal_group(Signal::SIGKILL);
        let end = match process.child.wait() {
            Ok(status) => Termination::from_exit_status(status),
            Err(e) => Termination::Unknown(e.to_string()),
        };
        let cause = task.kill.take().map(|k| k.cause);
        task.completion_deadline = None;
        let (state, message, reason) = status::outcome(&end, cause);
        tracing::info!(task = %task.info.task_id, state = state.name(), %message, "task ended");
        self.terminate(state, message, reason);
    }

    /// Sends the task's terminal update.
    fn terminate(&mut self, state: TaskState, message: String, reason: Option<Reason>) {
        let Some(task) = &mut self.task else { return };
        task.terminated = true;
        let task_id = task.info.task_id.clone();
        self.send_update(&task_id, state, Some(message), reason);
    }

    // ---- updates ---------------------------------------------------------------------

    fn send_update(&mut self, task_id: &TaskId, state: TaskState, message: Option<String>, reason: Option<Reason>) {
        let status =
            status::new_update(task_id, state, message, reason, &self.config.executor_id, self.agent_id.as_ref());
        tracing::info!(task = %task_id, state = state.name(), "status update");
        self.unacked.push(Unacked { seq: self.next_seq, status });
        self.next_seq += 1;
        self.kick_post();
    }

    /// POSTs the next undelivered update, if connected and none is in flight.
    fn kick_post(&mut self) {
        if self.link != Link::Up || self.post_in_flight {
            return;
        }
        let Some(next) = self.unacked.iter().find(|u| u.seq >= self.next_post_seq) else {
            return;
        };
        let call = Call { update: Some(UpdateCall { status: next.status.clone() }), ..self.call(CallType::Update) };
        let (gen, seq, url, client, tx) = (self.gen, next.seq, self.url.clone(), self.client.clone(), self.tx.clone());
        self.post_in_flight = true;
        self.link_tasks.retain(|t| !t.is_finished());
        self.link_tasks.push(tokio::spawn(async move {
            let result = client.call(&url, &[], &call, UPDATE_TIMEOUT).await.map(|_| ()).map_err(|e| e.to_string());
            let _ = tx.send(Msg::PostDone { gen, seq, result });
        }));
    }

    /// Leaves nothing behind: stops the helper tasks and kills a still running task.
    fn cleanup(&mut self) {
        self.abort_link_tasks();
        if let Some(process) = self.task.as_ref().and_then(|t| t.process.as_ref()) {
            tracing::info!(pid = process.pid.as_raw(), "killing the task's process group");
            process.signal_group(Signal::SIGKILL);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn grace_period(policy: Option<&KillPolicy>) -> Option<Duration> {
    policy.and_then(|p| p.grace_period).map(|d| d.as_duration())
}

/// Decodes one event record. A SUBSCRIBED whose body does not parse still counts as a
/// subscription; any other malformed record is logged and skipped.
fn decode_event(record: &[u8]) -> Option<Event> {
    match serde_json::from_slice::<Event>(record) {
        Ok(e) => Some(e),
        Err(e) => {
            let kind = serde_json::from_slice::<serde_json::Value>(record)
                .ok()
                .and_then(|v| v.get("type").cloned())
                .and_then(|t| serde_json::from_value::<EventType>(t).ok());
            tracing::warn!(error = %e, ?kind, record = %String::from_utf8_lossy(&record[..record.len().min(512)]), "malformed event");
            match kind {
                Some(EventType::Subscribed) => Some(Event::of(EventType::Subscribed)),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_events_are_skipped_not_fatal() {
        assert!(decode_event(b"not json").is_none());
        assert!(decode_event(br#"{"type":"LAUNCH","launch":{"task":42}}"#).is_none());
        let e = decode_event(br#"{"type":"SUBSCRIBED","subscribed":{"oops":true}}"#).expect("subscribed kept");
        assert_eq!(e.kind, EventType::Subscribed);
        assert!(e.subscribed.is_none());
        let e = decode_event(br#"{"type":"SOMETHING_NEW"}"#).expect("unknown type decodes");
        assert_eq!(e.kind, EventType::Unknown);
        let e = decode_event(br#"{"type":"KILL","kill":{"task_id":{"value":"t"}}}"#).expect("kill");
        assert_eq!(e.kill.map(|k| k.task_id), Some(TaskId::new("t")));
    }

    #[test]
    fn grace_period_comes_from_policy() {
        assert_eq!(grace_period(None), None);
        assert_eq!(grace_period(Some(&KillPolicy { grace_period: None })), None);
        let p = KillPolicy { grace_period: Some(agora_api::DurationInfo { nanoseconds: 500_000_000 }) };
        assert_eq!(grace_period(Some(&p)), Some(Duration::from_millis(500)));
    }
}
