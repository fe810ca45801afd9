//! The load framework (`agora load`): K frameworks in R roles launch tasks as fast as offers
//! allow, over the public scheduler API, and report throughput and offer → RUNNING latency.
//!
//! It also checks what the scale benchmarks and the CI smoke test rely on:
//! - every task is launched once and reported RUNNING (or finished) once: a second RUNNING
//!   for a task id with a new uuid counts as a duplicate;
//! - no resource is offered twice: for every agent, the outstanding offers plus the
//!   resources of its live tasks (across all frameworks of this process) never exceed the
//!   agent's total as the master reported it at start.
use crate::{framework_info, Calls, Scheduler, SchedulerError};
use agora_api::scheduler::{Call, CallType, EventType};
use agora_api::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Calls one framework has in flight at most.
const CALLS_IN_FLIGHT: usize = 32;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub master: String,
    pub frameworks: usize,
    pub roles: usize,
    /// Tasks in all, spread evenly over the frameworks.
    pub tasks: usize,
    pub cpus: f64,
    pub mem: f64,
    /// Give up after this long.
    pub timeout: Duration,
    /// Tasks launched but not yet started, at most, across all frameworks (0: no limit).
    /// Offers that arrive while the window is full are declined for a moment, so queues
    /// stay bounded and latency means something.
    pub window: usize,
    /// Tear the frameworks down at the end (their tasks are killed); otherwise they are
    /// left subscribed until the process exits.
    pub teardown: bool,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LoadReport {
    pub frameworks: usize,
    pub tasks: usize,
    pub launched: u64,
    /// Distinct tasks seen RUNNING (or already FINISHED).
    pub started: u64,
    pub finished: u64,
    /// Any other terminal state (FAILED, LOST, ERROR, DROPPED, ...), by state.
    pub failed: HashMap<String, u64>,
    /// A task reported started twice (distinct uuids).
    pub duplicate_starts: u64,
    pub offers: u64,
    pub offers_declined: u64,
    pub rescinds: u64,
    /// "No resource offered twice" violations, described.
    pub overcommit: Vec<String>,
    /// From the first offer to the last task started.
    pub seconds: f64,
    pub tasks_per_second: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    pub timed_out: bool,
}

#[derive(Default)]
struct AgentLedger {
    total: (i64, i64),
    offered: HashMap<OfferId, (i64, i64)>,
    used: (i64, i64),
}

#[derive(Default)]
struct Shared {
    agents: HashMap<AgentId, AgentLedger>,
    report: LoadReport,
    first_offer: Option<Instant>,
    last_start: Option<Instant>,
    latencies: Vec<f64>,
}

/// Fixed-point (1/1000) so sums do not drift.
fn milli(v: f64) -> i64 {
    (v * 1000.0).round() as i64
}

fn cpus_mem(res: &[Resource]) -> (i64, i64) {
    let r = Resources::from_vec(res.to_vec());
    (milli(r.scalar("cpus")), milli(r.scalar("mem")))
}

impl Shared {
    fn check(&mut self, agent: &AgentId) {
        let Some(a) = self.agents.get(agent) else { return };
        if a.total == (0, 0) {
            return;
        }
        let offered = a.offered.values().fold((0, 0), |s, o| (s.0 + o.0, s.1 + o.1));
        let (c, m) = (offered.0 + a.used.0, offered.1 + a.used.1);
        if c > a.total.0 || m > a.total.1 {
            let msg = format!(
                "agent {agent}: offered {offered:?} + in use {:?} exceeds its total {:?} (cpus, mem in 1/1000)",
                a.used, a.total
            );
            if self.report.overcommit.len() < 20 {
                self.report.overcommit.push(msg);
            }
        }
    }
}

/// Agents' totals from the master's `/state`.
async fn agent_totals(master: &str) -> Result<HashMap<AgentId, (i64, i64)>, SchedulerError> {
    let leader = crate::leading_master(master).await?;
    let url = format!("{}/master/state", agora_http::base_url(&leader));
    let reply = agora_http::Client::new().get(&url, Duration::from_secs(60)).await?;
    let v: serde_json::Value =
        serde_json::from_slice(&reply.body).map_err(|e| SchedulerError::Decode(e.to_string()))?;
    let mut out = HashMap::new();
    for a in v["slaves"].as_array().into_iter().flatten() {
        let Some(id) = a["id"].as_str() else { continue };
        let cpus = a["resources"]["cpus"].as_f64().unwrap_or(0.0);
        let mem = a["resources"]["mem"].as_f64().unwrap_or(0.0);
        out.insert(AgentId::new(id), (milli(cpus), milli(mem)));
    }
    Ok(out)
}

/// Runs the load and reports; the frameworks stay subscribed (or are torn down) at the end.
pub async fn run(opts: LoadOptions) -> Result<LoadReport, SchedulerError> {
    let frameworks = opts.frameworks.max(1);
    let shared = Arc::new(Mutex::new(Shared::default()));
    {
        let totals = agent_totals(&opts.master).await?;
        let mut s = lock(&shared);
        for (id, t) in totals {
            s.agents.entry(id).or_default().total = t;
        }
        s.report.frameworks = frameworks;
        s.report.tasks = opts.tasks;
    }
    let mut handles = Vec::new();
    let mut schedulers = Vec::new();
    for i in 0..frameworks {
        let share = opts.tasks / frameworks + usize::from(i < opts.tasks % frameworks);
        let role = format!("load-{}", i % opts.roles.max(1));
        let mut info = framework_info(&format!("load-{i}"), &role);
        info.user = "root".into();
        if !opts.teardown {
            // Held tasks must outlive a master failover while this process re-subscribes
            // (or not at all: the benchmarks only need them running).
            info.failover_timeout = 7.0 * 24.0 * 3600.0;
        }
        let s = Scheduler::subscribe(&opts.master, info).await?;
        schedulers.push(s.calls());
        let fw = Framework {
            index: i,
            calls: s.calls(),
            sched: s,
            remaining: share,
            next: 0,
            opts: opts.clone(),
            shared: shared.clone(),
            launched_at: HashMap::new(),
            started: HashMap::new(),
            suppressed: false,
            inflight: Arc::new(tokio::sync::Semaphore::new(CALLS_IN_FLIGHT)),
        };
        handles.push(tokio::spawn(fw.run()));
    }
    let deadline = Instant::now() + opts.timeout;
    let mut timed_out = false;
    loop {
        {
            let s = lock(&shared);
            if s.report.started as usize + count_failed(&s.report) as usize >= opts.tasks {
                break;
            }
        }
        if handles.iter().all(|h| h.is_finished()) {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let late duplicates and overcommits show before the report is taken.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = {
        let mut s = lock(&shared);
        s.report.timed_out = timed_out;
        if let (Some(a), Some(b)) = (s.first_offer, s.last_start) {
            s.report.seconds = b.saturating_duration_since(a).as_secs_f64();
            if s.report.seconds > 0.0 {
                s.report.tasks_per_second = s.report.started as f64 / s.report.seconds;
            }
        }
        let mut l = std::mem::take(&mut s.latencies);
        l.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        s.report.latency_ms_p50 = pct(&l, 0.50);
        s.report.latency_ms_p99 = pct(&l, 0.99);
        s.report.latency_ms_max = l.last().copied().unwrap_or(0.0);
        s.report.clone()
    };
    if opts.teardown {
        for s in &schedulers {
            let _ = s.teardown().await;
        }
        for h in &handles {
            h.abort();
        }
    } else {
        // Keep reading events (acknowledging updates) until the process exits.
        std::mem::forget(handles);
    }
    Ok(report)
}

fn count_failed(r: &LoadReport) -> u64 {
    r.failed.values().sum()
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

struct Framework {
    index: usize,
    sched: Scheduler,
    calls: Calls,
    remaining: usize,
    next: usize,
    opts: LoadOptions,
    shared: Arc<Mutex<Shared>>,
    /// When the offer a task was launched from arrived, by task id.
    launched_at: HashMap<TaskId, (Instant, AgentId)>,
    /// The uuid of the update that first said the task started.
    started: HashMap<TaskId, Option<agora_api::json::Bytes>>,
    suppressed: bool,
    /// Calls in flight at once (each holds a connection): a storm of connects overflows the
    /// master's accept backlog.
    inflight: Arc<tokio::sync::Semaphore>,
}

impl Framework {
    async fn run(mut self) -> Result<(), SchedulerError> {
        let sched = self.calls.clone();
        loop {
            let ev = self.sched.next_event().await?;
            match ev.kind {
                EventType::Offers => {
                    for offer in ev.offers.map(|o| o.offers).unwrap_or_default() {
                        self.offer(offer, &sched);
                    }
                }
                EventType::Rescind => {
                    if let Some(r) = ev.rescind {
                        let mut s = lock(&self.shared);
                        s.report.rescinds += 1;
                        for a in s.agents.values_mut() {
                            a.offered.remove(&r.offer_id);
                        }
                    }
                }
                EventType::Update => {
                    if let Some(u) = ev.update {
                        self.update(u.status, &sched);
                    }
                }
                EventType::Error => {
                    return Err(SchedulerError::Refused(ev.error.map(|e| e.message).unwrap_or_default()));
                }
                _ => {}
            }
        }
    }

    fn offer(&mut self, offer: Offer, sched: &Calls) {
        let now = Instant::now();
        let (cpus, mem) = cpus_mem(&offer.resources);
        {
            let mut s = lock(&self.shared);
            s.report.offers += 1;
            s.first_offer.get_or_insert(now);
            s.agents.entry(offer.agent_id.clone()).or_default().offered.insert(offer.id.clone(), (cpus, mem));
            s.check(&offer.agent_id);
        }
        let (tc, tm) = (milli(self.opts.cpus), milli(self.opts.mem));
        let fit = if tc > 0 && tm > 0 { (cpus / tc).min(mem / tm).max(0) as usize } else { 0 };
        let room = if self.opts.window == 0 {
            usize::MAX
        } else {
            let s = lock(&self.shared);
            self.opts.window.saturating_sub(s.report.launched.saturating_sub(s.report.started) as usize)
        };
        let n = fit.min(self.remaining).min(room);
        let role = offer.allocation_info.as_ref().and_then(|a| a.role.clone());
        {
            let mut s = lock(&self.shared);
            if let Some(a) = s.agents.get_mut(&offer.agent_id) {
                a.offered.remove(&offer.id);
                a.used.0 += tc * n as i64;
                a.used.1 += tm * n as i64;
            }
            if n == 0 {
                s.report.offers_declined += 1;
            }
            s.report.launched += n as u64;
        }
        if n == 0 {
            let s = sched.clone();
            let suppress = self.remaining == 0 && !self.suppressed;
            self.suppressed |= suppress;
            let permit = self.inflight.clone();
            tokio::spawn(async move {
                let _p = permit.acquire_owned().await;
                let refuse = if suppress {
                    3600.0
                } else if room == 0 {
                    0.1
                } else {
                    1.0
                };
                let _ = s.decline(vec![offer.id], refuse).await;
                if suppress {
                    let _ = s.call(Call::new(CallType::Suppress, None)).await;
                }
            });
            return;
        }
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let id = TaskId::new(format!("load-{}-{}", self.index, self.next));
            self.next += 1;
            let mut cpus = Resource::scalar("cpus", self.opts.cpus);
            let mut mem = Resource::scalar("mem", self.opts.mem);
            if let Some(role) = &role {
                cpus = cpus.with_allocation(Some(role));
                mem = mem.with_allocation(Some(role));
            }
            let cmd = CommandInfo {
                shell: true,
                value: Some("sleep 3600".into()),
                arguments: vec![],
                environment: None,
                user: None,
                uris: vec![],
            };
            self.launched_at.insert(id.clone(), (now, offer.agent_id.clone()));
            tasks.push(TaskInfo::command(id, offer.agent_id.clone(), vec![cpus, mem], cmd));
        }
        self.remaining -= n;
        let s = sched.clone();
        let permit = self.inflight.clone();
        tokio::spawn(async move {
            let _p = permit.acquire_owned().await;
            if let Err(e) = s.launch(vec![offer.id], tasks, 0.0).await {
                tracing::warn!(error = %e, "accept failed");
            }
        });
    }

    fn update(&mut self, status: TaskStatus, sched: &Calls) {
        let now = Instant::now();
        let tid = status.task_id.clone();
        let state = status.state;
        {
            let mut s = lock(&self.shared);
            let started = matches!(state, TaskState::Running | TaskState::Finished);
            if started {
                if let std::collections::hash_map::Entry::Vacant(e) = self.started.entry(tid.clone()) {
                    e.insert(status.uuid.clone());
                    s.report.started += 1;
                    s.last_start = Some(now);
                    if let Some((t0, _)) = self.launched_at.get(&tid) {
                        s.latencies.push(now.saturating_duration_since(*t0).as_secs_f64() * 1000.0);
                    }
                } else if state == TaskState::Running
                    && status.reason.is_none()
                    && self.started.get(&tid).is_some_and(|u| *u != status.uuid)
                {
                    // RUNNING again with another uuid (not a retry of the same update): the
                    // task was started twice.
                    s.report.duplicate_starts += 1;
                }
            }
            if state == TaskState::Finished {
                s.report.finished += 1;
            } else if state.is_terminal() {
                *s.report.failed.entry(format!("{state:?}")).or_default() += 1;
            }
            if state.is_terminal() {
                if let Some((_, agent)) = self.launched_at.remove(&tid) {
                    let (tc, tm) = (milli(self.opts.cpus), milli(self.opts.mem));
                    if let Some(a) = s.agents.get_mut(&agent) {
                        a.used.0 -= tc;
                        a.used.1 -= tm;
                    }
                }
            }
        }
        if status.uuid.is_some() {
            let s = sched.clone();
            let permit = self.inflight.clone();
            tokio::spawn(async move {
                let _p = permit.acquire_owned().await;
                let _ = s.acknowledge(&status).await;
            });
        }
    }
}
