//! Read views of the master state: the v0 JSON endpoints (`/state`, `/slaves`, `/frameworks`,
//! `/tasks`, `/metrics/snapshot`, ...) with their v0 field names, and the operator API's
//! typed GET_* replies.
use crate::state::{Framework, Query, State};
use agora_api::operator::*;
use agora_api::*;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

pub fn version_info() -> VersionInfo {
    VersionInfo {
        version: MESOS_VERSION.to_string(),
        build_date: Some(format!("agora {AGORA_VERSION}")),
        build_time: Some(0.0),
        build_user: Some("agora".into()),
    }
}

pub fn version_json() -> Value {
    json!({
        "version": MESOS_VERSION,
        "agora_version": AGORA_VERSION,
        "build_date": format!("agora {AGORA_VERSION}"),
        "build_time": 0.0,
        "build_user": "agora",
    })
}

pub(crate) fn render(st: &State, q: &Query) -> Value {
    match q {
        Query::StateSummary => state_summary(st),
        Query::Slaves => json!({
            "slaves": st.agents.values().map(|a| agent_json(st, a)).collect::<Vec<_>>(),
            "recovered_slaves": recovered_slaves(st),
        }),
        Query::Tasks { limit, offset, ascending, framework_id, task_id } => {
            let mut all: Vec<&Task> = Vec::new();
            for f in st.frameworks.values().chain(st.completed_frameworks.iter()) {
                if framework_id.as_ref().map(|id| f.id().value != *id).unwrap_or(false) {
                    continue;
                }
                all.extend(f.tasks.values().map(|t| &t.task));
                all.extend(f.unreachable_tasks.values().map(|t| &t.task));
                all.extend(f.completed_tasks.iter());
            }
            if let Some(tid) = task_id {
                all.retain(|t| t.task_id.value == *tid);
            }
            // Ordered by the time of the task's first status (launch order), then id.
            all.sort_by(|a, b| {
                let ta = a.statuses.first().and_then(|s| s.timestamp).unwrap_or(f64::MAX);
                let tb = b.statuses.first().and_then(|s| s.timestamp).unwrap_or(f64::MAX);
                ta.partial_cmp(&tb).unwrap_or(std::cmp::Ordering::Equal).then_with(|| a.task_id.cmp(&b.task_id))
            });
            if !ascending {
                all.reverse();
            }
            let tasks: Vec<Value> = all.into_iter().skip(*offset).take(*limit).map(task_json).collect();
            json!({ "tasks": tasks })
        }
        Query::Metrics => metrics(st),
        Query::Roles => roles(st),
        // Written by `render_bytes`; read back for the callers that want a `Value`.
        Query::State | Query::Frameworks { .. } | Query::GetState | Query::GetTasks => {
            serde_json::from_slice(&render_bytes(st, q)).unwrap_or(Value::Null)
        }
    }
}

/// A framework in v0 JSON without its task lists (see [`write_framework`]).
fn framework_json(st: &State, f: &Framework) -> Value {
    let id = f.id();
    let used = st.used_by(&id).to_legacy_map();
    let mut v = json!({
        "id": id.value,
        "name": f.info.name,
        "user": f.info.user,
        "hostname": f.info.hostname.clone().unwrap_or_default(),
        "webui_url": f.info.webui_url.clone().unwrap_or_default(),
        "failover_timeout": f.info.failover_timeout,
        "checkpoint": f.info.checkpoint,
        "role": f.info.effective_roles().first().cloned().unwrap_or_else(|| "*".into()),
        "roles": f.info.effective_roles(),
        "capabilities": f.info.capabilities.iter().map(|c| c.kind.clone()).collect::<Vec<_>>(),
        "active": f.active,
        "connected": f.connected(),
        "recovered": f.recovered,
        "registered_time": f.registered_time,
        "unregistered_time": f.unregistered_time.unwrap_or(0.0),
        "used_resources": used.clone(),
        "offered_resources": st.offered_to(&id).to_legacy_map(),
        "resources": used,
        "offers": f.offers.iter().filter_map(|o| st.offers.get(o)).map(|o| json!({
            "id": o.offer.id.value,
            "framework_id": o.framework_id.value,
            "slave_id": o.agent_id.value,
            "resources": o.resources.to_legacy_map(),
        })).collect::<Vec<_>>(),
        "executors": f.executors.iter().flat_map(|(aid, m)| { let fid = id.value.clone(); m.values().map(move |e| json!({
            "executor_id": e.executor_id.value,
            "name": e.name.clone().unwrap_or_default(),
            "framework_id": fid,
            "slave_id": aid.value,
            "resources": Resources::from_vec(e.resources.clone()).to_legacy_map(),
        }))}).collect::<Vec<_>>(),
    });
    if let Some(t) = f.reregistered_time {
        v["reregistered_time"] = json!(t);
    }
    if let Some(p) = &f.info.principal {
        v["principal"] = json!(p);
    }
    if let Some(l) = &f.info.labels {
        v["labels"] = json!(l.labels);
    }
    v
}

fn attributes_json(attributes: &[Attribute]) -> Value {
    let mut attrs = serde_json::Map::new();
    for at in attributes {
        attrs.insert(at.name.clone(), at.legacy_value());
    }
    Value::Object(attrs)
}

fn agent_json(st: &State, a: &crate::state::Agent) -> Value {
    serde_json::to_value(agent_v0(st, a)).unwrap_or(Value::Null)
}

/// An agent in v0 JSON (`/state`'s and `/slaves`' entries).
#[derive(Serialize)]
struct AgentV0<'a> {
    id: &'a str,
    hostname: &'a str,
    port: u32,
    pid: &'a str,
    attributes: Value,
    registered_time: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reregistered_time: Option<f64>,
    resources: Value,
    used_resources: Value,
    offered_resources: Value,
    reserved_resources: serde_json::Map<String, Value>,
    unreserved_resources: Value,
    active: bool,
    deactivated: bool,
    version: &'a str,
    capabilities: [&'static str; 4],
    resources_full: Vec<Resource>,
    used_resources_full: Vec<Resource>,
    offered_resources_full: Vec<Resource>,
}

fn agent_v0<'a>(st: &State, a: &'a crate::state::Agent) -> AgentV0<'a> {
    let id = a.info.id.as_ref().map(|i| i.value.as_str()).unwrap_or("");
    let aid = a.id();
    let mut reserved = serde_json::Map::new();
    let mut unreserved = Resources::new();
    for r in a.total.iter() {
        if r.is_reserved() {
            let role = r.reservation_role().to_string();
            let mut rs = Resources::new();
            rs.add(r);
            let entry = reserved.entry(role).or_insert_with(|| json!({}));
            *entry = merge_legacy(entry, &rs.to_legacy_map());
        } else {
            unreserved.add(r);
        }
    }
    let used = st.used_on(&aid);
    let offered = st.offered_on(&aid);
    AgentV0 {
        id,
        hostname: &a.info.hostname,
        port: a.info.port,
        pid: &a.pid,
        attributes: attributes_json(&a.info.attributes),
        registered_time: a.registered_time,
        reregistered_time: a.reregistered_time,
        resources: a.total.to_legacy_map(),
        used_resources: used.to_legacy_map(),
        offered_resources: offered.to_legacy_map(),
        reserved_resources: reserved,
        unreserved_resources: unreserved.to_legacy_map(),
        active: a.active && a.connected(),
        deactivated: false,
        version: &a.version,
        capabilities: ["MULTI_ROLE", "HIERARCHICAL_ROLE", "RESERVATION_REFINEMENT", "TASK_NO_EXECUTOR"],
        resources_full: a.total.with_legacy_roles().into_vec(),
        used_resources_full: used.with_legacy_roles().into_vec(),
        offered_resources_full: offered.with_legacy_roles().into_vec(),
    }
}

fn merge_legacy(a: &Value, b: &Value) -> Value {
    let mut out = a.as_object().cloned().unwrap_or_default();
    if let Some(bo) = b.as_object() {
        for (k, v) in bo {
            match (out.get(k).and_then(Value::as_f64), v.as_f64()) {
                (Some(x), Some(y)) => {
                    out.insert(k.clone(), json!(x + y));
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Value::Object(out)
}

/// A task in v0 JSON, as a `Value` (see [`TaskV0`]).
pub fn task_json(t: &Task) -> Value {
    serde_json::to_value(TaskV0(t)).unwrap_or(Value::Null)
}

/// A task in v0 JSON, written straight to the output with no `Value` tree in between
/// (`/state` holds hundreds of thousands of tasks).
pub(crate) struct TaskV0<'a>(pub &'a Task);

impl Serialize for TaskV0<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let role = t.resources.iter().find_map(|r| r.allocation_role()).unwrap_or("*");
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &t.task_id.value)?;
        m.serialize_entry("name", &t.name)?;
        m.serialize_entry("framework_id", &t.framework_id.value)?;
        m.serialize_entry("executor_id", t.executor_id.as_ref().map(|e| e.value.as_str()).unwrap_or(""))?;
        m.serialize_entry("slave_id", &t.agent_id.value)?;
        m.serialize_entry("state", &t.state)?;
        m.serialize_entry("resources", &LegacyResources(&t.resources))?;
        m.serialize_entry("role", role)?;
        m.serialize_entry("statuses", &StatusesV0(&t.statuses))?;
        if let Some(u) = &t.user {
            m.serialize_entry("user", u)?;
        }
        if let Some(l) = &t.labels {
            m.serialize_entry("labels", &l.labels)?;
        }
        if let Some(d) = &t.discovery {
            m.serialize_entry("discovery", d)?;
        }
        if let Some(c) = &t.container {
            m.serialize_entry("container", c)?;
        }
        if let Some(h) = &t.health_check {
            m.serialize_entry("health_check", h)?;
        }
        m.end()
    }
}

/// Resources as v0's `{"cpus": 1, "mem": 128, ...}` map (see `Resources::to_legacy_map`).
struct LegacyResources<'a>(&'a [Resource]);

impl Serialize for LegacyResources<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const NAMES: [&str; 4] = ["cpus", "gpus", "mem", "disk"];
        let simple = self.0.iter().all(|r| {
            r.kind == agora_api::resources::ValueType::Scalar && NAMES.contains(&r.name.as_str()) && r.scalar.is_some()
        });
        if !simple {
            return Resources::from_vec(self.0.to_vec()).to_legacy_map().serialize(s);
        }
        let mut sums = [0.0f64; 4];
        for r in self.0 {
            if let (Some(i), Some(v)) = (NAMES.iter().position(|n| *n == r.name), r.scalar.as_ref()) {
                sums[i] += v.value;
            }
        }
        let mut m = s.serialize_map(Some(4))?;
        for (n, v) in NAMES.iter().zip(sums) {
            m.serialize_entry(n, &agora_api::resources::round3(v))?;
        }
        m.end()
    }
}

struct StatusesV0<'a>(&'a [TaskStatus]);

impl Serialize for StatusesV0<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for st in self.0 {
            seq.serialize_element(&StatusV0(st))?;
        }
        seq.end()
    }
}

struct StatusV0<'a>(&'a TaskStatus);

impl Serialize for StatusV0<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let st = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("state", &st.state)?;
        m.serialize_entry("timestamp", &st.timestamp.unwrap_or(0.0))?;
        if let Some(h) = st.healthy {
            m.serialize_entry("healthy", &h)?;
        }
        if let Some(c) = &st.container_status {
            m.serialize_entry("container_status", c)?;
        }
        if let Some(l) = &st.labels {
            m.serialize_entry("labels", &l.labels)?;
        }
        m.end()
    }
}

/// A list of tasks in v0 JSON.
struct TasksV0<'a, I>(std::cell::RefCell<Option<I>>, std::marker::PhantomData<&'a Task>);

impl<'a, I: Iterator<Item = &'a Task>> TasksV0<'a, I> {
    fn new(it: I) -> Self {
        TasksV0(std::cell::RefCell::new(Some(it)), std::marker::PhantomData)
    }
}

impl<'a, I: Iterator<Item = &'a Task>> Serialize for TasksV0<'a, I> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        if let Some(it) = self.0.borrow_mut().take() {
            for t in it {
                seq.serialize_element(&TaskV0(t))?;
            }
        }
        seq.end()
    }
}

/// A framework in v0 JSON: [`framework_json`]'s fields, then its task lists written directly.
fn write_framework<M: SerializeMap>(st: &State, f: &Framework, m: &mut M) -> Result<(), M::Error> {
    if let Value::Object(head) = framework_json(st, f) {
        for (k, v) in &head {
            m.serialize_entry(k, v)?;
        }
    }
    m.serialize_entry("tasks", &TasksV0::new(f.tasks.values().map(|t| &t.task)))?;
    m.serialize_entry("unreachable_tasks", &TasksV0::new(f.unreachable_tasks.values().map(|t| &t.task)))?;
    m.serialize_entry("completed_tasks", &TasksV0::new(f.completed_tasks.iter()))?;
    Ok(())
}

struct FrameworkV0<'a>(&'a State, &'a Framework);

impl Serialize for FrameworkV0<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        write_framework(self.0, self.1, &mut m)?;
        m.end()
    }
}

struct FrameworksV0<'a, I>(std::cell::RefCell<Option<I>>, &'a State);

impl<'a, I: Iterator<Item = &'a Framework>> Serialize for FrameworksV0<'a, I> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        if let Some(it) = self.0.borrow_mut().take() {
            for f in it {
                seq.serialize_element(&FrameworkV0(self.1, f))?;
            }
        }
        seq.end()
    }
}

fn frameworks_v0<'a, I: Iterator<Item = &'a Framework>>(st: &'a State, it: I) -> FrameworksV0<'a, I> {
    FrameworksV0(std::cell::RefCell::new(Some(it)), st)
}

struct AgentsV0<'a>(&'a State);

impl Serialize for AgentsV0<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.agents.len()))?;
        for a in self.0.agents.values() {
            seq.serialize_element(&agent_v0(self.0, a))?;
        }
        seq.end()
    }
}

/// GET_TASKS with the tasks borrowed from the state (same JSON as `operator::GetTasks`).
#[derive(Serialize)]
struct GetTasksRef<'a> {
    tasks: Vec<&'a Task>,
    unreachable_tasks: Vec<&'a Task>,
    completed_tasks: Vec<&'a Task>,
}

fn get_tasks_ref(st: &State) -> GetTasksRef<'_> {
    let mut g = GetTasksRef { tasks: vec![], unreachable_tasks: vec![], completed_tasks: vec![] };
    for f in st.frameworks.values() {
        g.tasks.extend(f.tasks.values().map(|t| &t.task));
        g.unreachable_tasks.extend(f.unreachable_tasks.values().map(|t| &t.task));
        g.completed_tasks.extend(f.completed_tasks.iter());
    }
    for f in &st.completed_frameworks {
        g.completed_tasks.extend(f.completed_tasks.iter());
    }
    g
}

/// GET_STATE (same JSON as `operator::GetState`).
#[derive(Serialize)]
struct GetStateRef<'a> {
    get_tasks: GetTasksRef<'a>,
    get_executors: GetExecutors,
    get_frameworks: GetFrameworks,
    get_agents: GetAgents,
}

#[derive(Serialize)]
struct OperatorOut<'a> {
    #[serde(rename = "type")]
    kind: CallType,
    #[serde(skip_serializing_if = "Option::is_none")]
    get_state: Option<GetStateRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    get_tasks: Option<GetTasksRef<'a>>,
}

/// Renders a query as JSON bytes. The big views (`/state`, `/frameworks`, `/tasks`) write
/// their tasks straight to the buffer; the others go through [`render`].
pub(crate) fn render_bytes(st: &State, q: &Query) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * 1024);
    let mut ser = serde_json::Serializer::new(&mut out);
    let written: Result<(), serde_json::Error> = (|| {
        match q {
            Query::State => {
                let mut m = ser.serialize_map(None)?;
                if let Value::Object(head) = state_json_head(st) {
                    for (k, v) in &head {
                        m.serialize_entry(k, v)?;
                    }
                }
                m.serialize_entry("slaves", &AgentsV0(st))?;
                m.serialize_entry("frameworks", &frameworks_v0(st, st.frameworks.values()))?;
                m.serialize_entry("completed_frameworks", &frameworks_v0(st, st.completed_frameworks.iter()))?;
                SerializeMap::end(m)?;
            }
            Query::Frameworks { framework_id } => {
                let keep = |f: &&Framework| framework_id.as_ref().map(|id| f.id().value == *id).unwrap_or(true);
                let mut m = ser.serialize_map(None)?;
                m.serialize_entry("frameworks", &frameworks_v0(st, st.frameworks.values().filter(keep)))?;
                m.serialize_entry(
                    "completed_frameworks",
                    &frameworks_v0(st, st.completed_frameworks.iter().filter(keep)),
                )?;
                m.serialize_entry("unregistered_frameworks", &Vec::<String>::new())?;
                SerializeMap::end(m)?;
            }
            Query::GetState => OperatorOut {
                kind: CallType::GetState,
                get_state: Some(GetStateRef {
                    get_tasks: get_tasks_ref(st),
                    get_executors: get_executors(st),
                    get_frameworks: get_frameworks(st),
                    get_agents: get_agents(st),
                }),
                get_tasks: None,
            }
            .serialize(&mut ser)?,
            Query::GetTasks => {
                OperatorOut { kind: CallType::GetTasks, get_state: None, get_tasks: Some(get_tasks_ref(st)) }
                    .serialize(&mut ser)?
            }
            other => render(st, other).serialize(&mut ser)?,
        }
        Ok(())
    })();
    if let Err(e) = written {
        tracing::error!(error = %e, "cannot render a view");
    }
    out
}

/// `/state` without its agents and frameworks.
fn state_json_head(st: &State) -> Value {
    let flags: serde_json::Map<String, Value> =
        st.config.flags.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let hostname = st.master_info.hostname.clone().unwrap_or_default();
    json!({
        "version": MESOS_VERSION,
        "agora_version": AGORA_VERSION,
        "build_date": format!("agora {AGORA_VERSION}"),
        "build_time": 0.0,
        "build_user": "agora",
        "start_time": st.start_time,
        "elected_time": st.elected_time,
        "id": st.master_info.id,
        "pid": st.master_info.pid,
        "hostname": hostname,
        "capabilities": st.master_info.capabilities.iter().map(|c| c.kind.clone()).collect::<Vec<_>>(),
        "activated_slaves": st.agents.values().filter(|a| a.active && a.connected()).count(),
        "deactivated_slaves": st.agents.values().filter(|a| !(a.active && a.connected())).count(),
        "unreachable_slaves": st.unreachable_agents.len(),
        "leader": st.master_info.pid,
        "leader_info": st.master_info,
        "flags": flags,
        "recovered_slaves": recovered_slaves(st),
        "orphan_tasks": [],
        "unregistered_frameworks": [],
    })
}

fn state_summary(st: &State) -> Value {
    json!({
        "hostname": st.master_info.hostname,
        "cluster": Value::Null,
        "slaves": st.agents.values().map(|a| {
            let id = a.id();
            json!({
                "id": id.value, "pid": a.pid, "hostname": a.info.hostname,
                "registered_time": a.registered_time,
                "resources": a.total.to_legacy_map(),
                "used_resources": st.used_on(&id).to_legacy_map(),
                "offered_resources": st.offered_on(&id).to_legacy_map(),
                "active": a.active && a.connected(),
                "TASK_RUNNING": count_on(st, &id, TaskState::Running),
            })
        }).collect::<Vec<_>>(),
        "frameworks": st.frameworks.values().map(|f| {
            let id = f.id();
            json!({
                "id": id.value, "name": f.info.name, "active": f.active, "connected": f.connected(),
                "used_resources": st.used_by(&id).to_legacy_map(),
                "offered_resources": st.offered_to(&id).to_legacy_map(),
                "TASK_RUNNING": f.tasks.values().filter(|t| t.task.state == TaskState::Running).count(),
            })
        }).collect::<Vec<_>>(),
    })
}

fn count_on(st: &State, aid: &AgentId, state: TaskState) -> usize {
    let Some(a) = st.agents.get(aid) else { return 0 };
    a.tasks
        .iter()
        .filter_map(|(fid, tid)| st.frameworks.get(fid).and_then(|f| f.tasks.get(tid)))
        .filter(|t| t.task.state == state)
        .count()
}

/// cpus, mem, disk, gpus of some resources, summed as plain numbers.
#[derive(Default)]
struct Scalars([f64; 4]);

impl Scalars {
    fn add(&mut self, rs: &[agora_api::Resource]) {
        for r in rs {
            let i = match r.name.as_str() {
                "cpus" => 0,
                "mem" => 1,
                "disk" => 2,
                "gpus" => 3,
                _ => continue,
            };
            self.0[i] += r.scalar.as_ref().map(|s| s.value).unwrap_or(0.0);
        }
    }
    fn scalar(&self, name: &str) -> f64 {
        match name {
            "cpus" => self.0[0],
            "mem" => self.0[1],
            "disk" => self.0[2],
            _ => self.0[3],
        }
    }
}

/// `/metrics/snapshot`: one pass over agents and tasks, no resource arithmetic (it is
/// polled, and a cluster holds hundreds of thousands of tasks).
fn metrics(st: &State) -> Value {
    let mut total = Scalars::default();
    let mut used = Scalars::default();
    for a in st.agents.values() {
        total.add(&a.total.0);
    }
    let mut states: HashMap<TaskState, usize> = HashMap::new();
    for t in st.frameworks.values().flat_map(|f| f.tasks.values()) {
        *states.entry(t.task.state).or_default() += 1;
        if !t.released {
            used.add(&t.task.resources);
        }
    }
    let count = |s: TaskState| states.get(&s).copied().unwrap_or(0);
    let c = &st.counters;
    json!({
        "master/elected": u8::from(st.role == crate::state::Role::Leading),
        "master/slaves_recovered": st.recovered_agents.len(),
        "master/uptime_secs": st.uptime(),
        "master/slaves_active": st.agents.values().filter(|a| a.active && a.connected()).count(),
        "master/slaves_inactive": st.agents.values().filter(|a| !(a.active && a.connected())).count(),
        "master/slaves_connected": st.agents.values().filter(|a| a.connected()).count(),
        "master/slaves_disconnected": st.agents.values().filter(|a| !a.connected()).count(),
        "master/slaves_unreachable": st.unreachable_agents.len(),
        "master/slave_registrations": c.agents_registered,
        "master/slave_reregistrations": c.agents_reregistered,
        "master/slave_unreachable_completed": c.agents_unreachable,
        "master/frameworks_active": st.frameworks.values().filter(|f| f.active).count(),
        "master/frameworks_inactive": st.frameworks.values().filter(|f| !f.active).count(),
        "master/frameworks_connected": st.frameworks.values().filter(|f| f.connected()).count(),
        "master/frameworks_disconnected": st.frameworks.values().filter(|f| !f.connected()).count(),
        "master/frameworks_removed": c.frameworks_removed,
        "master/outstanding_offers": st.offers.len(),
        "master/offers_sent": c.offers_sent,
        "master/offers_declined": c.offers_declined,
        "master/offers_rescinded": c.offers_rescinded,
        "master/invalid_calls": c.invalid_calls,
        "master/tasks_staging": count(TaskState::Staging),
        "master/tasks_starting": count(TaskState::Starting),
        "master/tasks_running": count(TaskState::Running),
        "master/tasks_killing": count(TaskState::Killing),
        "master/tasks_unreachable": st.frameworks.values().map(|f| f.unreachable_tasks.len()).sum::<usize>(),
        "master/tasks_finished": c.tasks_finished,
        "master/tasks_failed": c.tasks_failed,
        "master/tasks_killed": c.tasks_killed,
        "master/tasks_lost": c.tasks_lost,
        "master/tasks_error": c.tasks_error,
        "master/tasks_dropped": c.tasks_dropped,
        "master/tasks_gone": c.tasks_gone,
        "master/cpus_total": total.scalar("cpus"),
        "master/cpus_used": used.scalar("cpus"),
        "master/cpus_percent": ratio(used.scalar("cpus"), total.scalar("cpus")),
        "master/mem_total": total.scalar("mem"),
        "master/mem_used": used.scalar("mem"),
        "master/mem_percent": ratio(used.scalar("mem"), total.scalar("mem")),
        "master/disk_total": total.scalar("disk"),
        "master/disk_used": used.scalar("disk"),
        "master/disk_percent": ratio(used.scalar("disk"), total.scalar("disk")),
        "master/gpus_total": total.scalar("gpus"),
        "master/gpus_used": used.scalar("gpus"),
    })
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn roles(st: &State) -> Value {
    let mut roles: std::collections::BTreeMap<String, (Vec<String>, Resources)> = std::collections::BTreeMap::new();
    for f in st.frameworks.values() {
        let id = f.id();
        for r in f.info.effective_roles() {
            let e = roles.entry(r).or_insert_with(|| (vec![], Resources::new()));
            e.0.push(id.value.clone());
        }
        for t in f.tasks.values().filter(|t| !t.released) {
            t.add_resources_to(&mut roles.entry(t.role.clone()).or_insert_with(|| (vec![], Resources::new())).1);
        }
    }
    for role in st.quotas.keys() {
        roles.entry(role.clone()).or_insert_with(|| (vec![], Resources::new()));
    }
    json!({
        "roles": roles.into_iter().map(|(name, (fws, res))| {
            let quota = st.quotas.get(&name).cloned().unwrap_or_else(|| agora_api::quota::QuotaConfig {
                role: name.clone(),
                ..Default::default()
            });
            json!({
                "weight": st.weights.get(&name).copied().unwrap_or(1.0),
                "quota": {
                    "role": name, "guarantee": quota.guarantees.iter().map(|(k, v)| (k.clone(), v.value)).collect::<BTreeMap<_, _>>(),
                    "limit": quota.limits.iter().map(|(k, v)| (k.clone(), v.value)).collect::<BTreeMap<_, _>>(),
                    "consumed": res.to_legacy_map(),
                },
                "name": name, "frameworks": fws, "resources": res.to_legacy_map(),
            })
        }).collect::<Vec<_>>()
    })
}

pub(crate) fn get_tasks(st: &State) -> GetTasks {
    let mut g = GetTasks::default();
    for f in st.frameworks.values() {
        g.tasks.extend(f.tasks.values().map(|t| t.task.clone()));
        g.unreachable_tasks.extend(f.unreachable_tasks.values().map(|t| t.task.clone()));
        g.completed_tasks.extend(f.completed_tasks.iter().cloned());
    }
    for f in &st.completed_frameworks {
        g.completed_tasks.extend(f.completed_tasks.iter().cloned());
    }
    g
}

fn framework_entry(st: &State, f: &Framework) -> FrameworkEntry {
    let id = f.id();
    FrameworkEntry {
        framework_info: f.info.clone(),
        active: f.active,
        connected: f.connected(),
        recovered: f.recovered,
        registered_time: Some(DurationInfo::from_secs_f64(f.registered_time)),
        unregistered_time: f.unregistered_time.map(DurationInfo::from_secs_f64),
        offers: f.offers.iter().filter_map(|o| st.offers.get(o)).map(|o| o.offer.clone()).collect(),
        allocated_resources: st.used_by(&id).into_vec(),
        offered_resources: st.offered_to(&id).into_vec(),
    }
}

pub(crate) fn get_frameworks(st: &State) -> GetFrameworks {
    GetFrameworks {
        frameworks: st.frameworks.values().map(|f| framework_entry(st, f)).collect(),
        completed_frameworks: st.completed_frameworks.iter().map(|f| framework_entry(st, f)).collect(),
    }
}

pub(crate) fn get_agents(st: &State) -> GetAgents {
    GetAgents {
        agents: st
            .agents
            .values()
            .map(|a| {
                let id = a.id();
                AgentEntry {
                    agent_info: a.info.clone(),
                    active: a.active && a.connected(),
                    deactivated: false,
                    version: a.version.clone(),
                    pid: Some(a.pid.clone()),
                    registered_time: Some(DurationInfo::from_secs_f64(a.registered_time)),
                    reregistered_time: a.reregistered_time.map(DurationInfo::from_secs_f64),
                    total_resources: a.total.clone().into_vec(),
                    allocated_resources: st.used_on(&id).into_vec(),
                    offered_resources: st.offered_on(&id).into_vec(),
                }
            })
            .collect(),
        recovered_agents: st.recovered_agents.values().map(|r| r.info.clone()).collect(),
    }
}

/// Agents in the registry that have not re-registered since this master was elected.
fn recovered_slaves(st: &State) -> Vec<Value> {
    st.recovered_agents
        .iter()
        .map(|(id, r)| {
            json!({
                "id": id.value,
                "hostname": r.info.hostname,
                "port": r.info.port,
                "pid": r.pid,
                "version": r.version,
                "resources": Resources::from_vec(r.info.resources.clone()).to_legacy_map(),
                "attributes": attributes_json(&r.info.attributes),
            })
        })
        .collect()
}

pub(crate) fn get_executors(st: &State) -> GetExecutors {
    let mut g = GetExecutors::default();
    for f in st.frameworks.values() {
        for (aid, m) in &f.executors {
            for e in m.values() {
                g.executors.push(ExecutorEntry { executor_info: e.clone(), agent_id: aid.clone() });
            }
        }
    }
    g
}

pub(crate) fn get_state(st: &State) -> GetState {
    GetState {
        get_tasks: get_tasks(st),
        get_executors: get_executors(st),
        get_frameworks: get_frameworks(st),
        get_agents: get_agents(st),
    }
}
