//! Read views of the master state: the v0 JSON endpoints (`/state`, `/slaves`, `/frameworks`,
//! `/tasks`, `/metrics/snapshot`, ...) with their v0 field names, and the operator API's
//! typed GET_* replies.
use crate::state::{Framework, Query, State, TaskEntry};
use crate::tasks::{Sum, TaskStats, Tasks};
use crate::views::{write_each, write_json, TaskForm, TaskRef, View};
use agora_api::operator::*;
use agora_api::*;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

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
        Query::Tasks { limit, offset, ascending, framework_id, task_id } => {
            let mut all: Vec<&Task> = Vec::new();
            for f in st.frameworks.values().chain(st.completed_frameworks.iter()) {
                if framework_id.as_ref().map(|id| f.id().value != *id).unwrap_or(false) {
                    continue;
                }
                all.extend(f.tasks.values().map(|t| &t.task));
                all.extend(f.unreachable_tasks.values().map(|t| &t.task));
                all.extend(f.completed_tasks.iter().map(|t| &**t));
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
        // The big reads: the state loop answers them with `view` (encoded off the loop);
        // as a `Value` only for completeness.
        Query::State
        | Query::StateSummary
        | Query::Slaves
        | Query::Frameworks { .. }
        | Query::GetState
        | Query::GetTasks => {
            view(st, q).and_then(|v| serde_json::from_slice(&v.encode_to_vec()).ok()).unwrap_or(Value::Null)
        }
    }
}

/// Sets a v0 framework's `used_resources` (and its alias `resources`).
fn with_used(v: &mut Value, used: &Resources) {
    let used = used.to_legacy_map();
    v["used_resources"] = used.clone();
    v["resources"] = used;
}

/// A framework in v0 JSON without its task lists and the resources in use
/// (`used_resources`, `resources`: see [`with_used`]).
fn framework_json_head(st: &State, f: &Framework) -> Value {
    let id = f.id();
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
        "offered_resources": st.offered_to(&id).to_legacy_map(),
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

/// What a view shows of an agent, taken on the state loop (pointer copies and small
/// clones, the resources in use as the ledger's compact sum), written off the loop.
struct AgentSnap {
    info: Arc<AgentInfo>,
    pid: String,
    version: String,
    active: bool,
    registered_time: f64,
    reregistered_time: Option<f64>,
    total: Resources,
    offered: Resources,
    used: Sum,
}

impl AgentSnap {
    fn of(st: &State, a: &crate::state::Agent) -> AgentSnap {
        AgentSnap {
            info: a.info.clone(),
            pid: a.pid.clone(),
            version: a.version.clone(),
            active: a.active && a.connected(),
            registered_time: a.registered_time,
            reregistered_time: a.reregistered_time,
            total: a.total.clone(),
            offered: if a.offers.is_empty() { Resources::new() } else { st.offered_on(&a.id()) },
            used: st.used_sum_on(&a.id()),
        }
    }

    /// The operator API's `GetAgents.Agent`.
    fn entry(&self) -> AgentEntry {
        AgentEntry {
            agent_info: (*self.info).clone(),
            active: self.active,
            deactivated: false,
            version: self.version.clone(),
            pid: Some(self.pid.clone()),
            registered_time: Some(DurationInfo::from_secs_f64(self.registered_time)),
            reregistered_time: self.reregistered_time.map(DurationInfo::from_secs_f64),
            total_resources: self.total.clone().into_vec(),
            allocated_resources: self.used.to_resources().into_vec(),
            offered_resources: self.offered.clone().into_vec(),
        }
    }
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

fn agent_v0(a: &AgentSnap) -> AgentV0<'_> {
    let used = &a.used.to_resources();
    let id = a.info.id.as_ref().map(|i| i.value.as_str()).unwrap_or("");
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
    let offered = &a.offered;
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
        active: a.active,
        deactivated: false,
        version: &a.version,
        capabilities: ["MULTI_ROLE", "HIERARCHICAL_ROLE", "RESERVATION_REFINEMENT", "TASK_NO_EXECUTOR"],
        resources_full: a.total.with_legacy_roles().into_vec(),
        used_resources_full: used.with_legacy_roles().into_vec(),
        offered_resources_full: offered.with_legacy_roles().into_vec(),
    }
}

/// `/state`'s `slaves`, written off the loop.
fn agents_v0_later(v: &mut View, st: &State) {
    let snaps: Vec<AgentSnap> = st.agents.values().map(|a| AgentSnap::of(st, a)).collect();
    v.later(move || {
        let mut out = Vec::with_capacity(snaps.len() * 1024);
        write_each(&mut out, &snaps, agent_v0);
        out
    });
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

/// A task in v0 JSON, as a `Value` (for `/tasks`, a page at a time; see [`write_task_v0`]).
pub fn task_json(t: &Task) -> Value {
    let mut buf = Vec::new();
    match write_task_v0(&mut buf, t) {
        Ok(()) => serde_json::from_slice(&buf).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Appends a task in v0 JSON, written straight to the output with no `Value` tree and no
/// per-key escaping (a big `/state` is mostly these).
pub(crate) fn write_task_v0(out: &mut Vec<u8>, t: &Task) -> Result<(), serde_json::Error> {
    use agora_api::encode::string;
    out.extend_from_slice(b"{\"id\":");
    string(out, &t.task_id.value);
    out.extend_from_slice(b",\"name\":");
    string(out, &t.name);
    out.extend_from_slice(b",\"framework_id\":");
    string(out, &t.framework_id.value);
    out.extend_from_slice(b",\"executor_id\":");
    string(out, t.executor_id.as_ref().map(|e| e.value.as_str()).unwrap_or(""));
    out.extend_from_slice(b",\"slave_id\":");
    string(out, &t.agent_id.value);
    out.extend_from_slice(b",\"state\":");
    string(out, t.state.name());
    out.extend_from_slice(b",\"resources\":");
    serde_json::to_writer(&mut *out, &LegacyResources(&t.resources))?;
    out.extend_from_slice(b",\"role\":");
    string(out, t.resources.iter().find_map(|r| r.allocation_role()).unwrap_or("*"));
    out.extend_from_slice(b",\"statuses\":[");
    for (i, st) in t.statuses.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"state\":");
        string(out, st.state.name());
        out.extend_from_slice(b",\"timestamp\":");
        serde_json::to_writer(&mut *out, &st.timestamp.unwrap_or(0.0))?;
        if let Some(h) = st.healthy {
            out.extend_from_slice(if h { b",\"healthy\":true" } else { b",\"healthy\":false" });
        }
        if let Some(c) = &st.container_status {
            out.extend_from_slice(b",\"container_status\":");
            serde_json::to_writer(&mut *out, c)?;
        }
        if let Some(l) = &st.labels {
            out.extend_from_slice(b",\"labels\":");
            serde_json::to_writer(&mut *out, &l.labels)?;
        }
        out.push(b'}');
    }
    out.push(b']');
    if let Some(u) = &t.user {
        out.extend_from_slice(b",\"user\":");
        string(out, u);
    }
    if let Some(l) = &t.labels {
        out.extend_from_slice(b",\"labels\":");
        serde_json::to_writer(&mut *out, &l.labels)?;
    }
    for (key, v) in [
        (&b",\"discovery\":"[..], &t.discovery),
        (b",\"container\":", &t.container),
        (b",\"health_check\":", &t.health_check),
    ] {
        if let Some(v) = v {
            out.extend_from_slice(key);
            serde_json::to_writer(&mut *out, v)?;
        }
    }
    out.push(b'}');
    Ok(())
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

fn live(tasks: &Tasks) -> impl Iterator<Item = TaskRef> + '_ {
    tasks.values().map(|t| TaskRef::Live(t.clone()))
}

fn done(tasks: &std::collections::VecDeque<Arc<Task>>) -> impl Iterator<Item = TaskRef> + '_ {
    tasks.iter().map(|t| TaskRef::Done(t.clone()))
}

/// A framework in v0 JSON: [`framework_json_head`]'s fields with the resources in use
/// (written on the loop: a framework is small), then its task lists (encoded off it).
fn framework_v0(v: &mut View, st: &State, f: &Framework) {
    let mut head = framework_json_head(st, f);
    with_used(&mut head, &st.used_by(&f.id()));
    v.raw("{");
    let mut first = true;
    if let Value::Object(fields) = &head {
        for (k, val) in fields {
            v.key(first, k);
            v.value(val);
            first = false;
        }
    }
    v.key(first, "tasks");
    v.tasks(TaskForm::V0, live(&f.tasks).collect());
    v.key(false, "unreachable_tasks");
    v.tasks(TaskForm::V0, live(&f.unreachable_tasks).collect());
    v.key(false, "completed_tasks");
    v.tasks(TaskForm::V0, done(&f.completed_tasks).collect());
    v.raw("}");
}

fn frameworks_v0<'a>(v: &mut View, st: &State, it: impl Iterator<Item = &'a Framework>) {
    v.raw("[");
    for (i, f) in it.enumerate() {
        if i > 0 {
            v.raw(",");
        }
        framework_v0(v, st, f);
    }
    v.raw("]");
}

/// GET_TASKS' body (`{"tasks": [...], "unreachable_tasks": [...], "completed_tasks": [...]}`).
fn get_tasks_view(v: &mut View, st: &State) {
    let (mut tasks, mut unreachable, mut completed) = (Vec::new(), Vec::new(), Vec::new());
    for f in st.frameworks.values() {
        tasks.extend(live(&f.tasks));
        unreachable.extend(live(&f.unreachable_tasks));
        completed.extend(done(&f.completed_tasks));
    }
    for f in &st.completed_frameworks {
        completed.extend(done(&f.completed_tasks));
    }
    v.raw("{");
    v.key(true, "tasks");
    v.tasks(TaskForm::V1, tasks);
    v.key(false, "unreachable_tasks");
    v.tasks(TaskForm::V1, unreachable);
    v.key(false, "completed_tasks");
    v.tasks(TaskForm::V1, completed);
    v.raw("}");
}

/// An operator response's opening: `{"type":KIND,"FIELD":` (the caller closes it).
fn operator_head(v: &mut View, kind: CallType, field: &str) {
    v.raw("{");
    v.key(true, "type");
    v.value(&kind);
    v.key(false, field);
}

/// The big reads as a [`View`], taken on the state loop and encoded off it; `None` for the
/// other queries (see [`render`]).
pub(crate) fn view(st: &State, q: &Query) -> Option<View> {
    // The queries answered as views are the big reads, which the HTTP layer limits.
    if !q.is_big() {
        return None;
    }
    let mut v = View::new();
    match q {
        Query::State => {
            v.raw("{");
            let mut first = true;
            if let Value::Object(head) = state_json_head(st) {
                for (k, val) in &head {
                    v.key(first, k);
                    v.value(val);
                    first = false;
                }
            }
            v.key(first, "slaves");
            agents_v0_later(&mut v, st);
            v.key(false, "frameworks");
            frameworks_v0(&mut v, st, st.frameworks.values());
            v.key(false, "completed_frameworks");
            frameworks_v0(&mut v, st, st.completed_frameworks.iter());
            v.raw("}");
        }
        Query::StateSummary => state_summary_view(&mut v, st),
        Query::Slaves => {
            v.raw("{");
            v.key(true, "slaves");
            agents_v0_later(&mut v, st);
            v.key(false, "recovered_slaves");
            v.value(&recovered_slaves(st));
            v.raw("}");
        }
        Query::Frameworks { framework_id } => {
            let keep = |f: &&Framework| framework_id.as_ref().map(|id| f.id().value == *id).unwrap_or(true);
            v.raw("{");
            v.key(true, "frameworks");
            frameworks_v0(&mut v, st, st.frameworks.values().filter(keep));
            v.key(false, "completed_frameworks");
            frameworks_v0(&mut v, st, st.completed_frameworks.iter().filter(keep));
            v.key(false, "unregistered_frameworks");
            v.raw("[]");
            v.raw("}");
        }
        Query::GetState => {
            operator_head(&mut v, CallType::GetState, "get_state");
            v.raw("{");
            v.key(true, "get_tasks");
            get_tasks_view(&mut v, st);
            v.key(false, "get_executors");
            v.value(&get_executors(st));
            v.key(false, "get_frameworks");
            v.value(&get_frameworks(st));
            v.key(false, "get_agents");
            let snaps: Vec<AgentSnap> = st.agents.values().map(|a| AgentSnap::of(st, a)).collect();
            let recovered: Vec<AgentInfo> = st.recovered_agents.values().map(|r| r.info.clone()).collect();
            v.later(move || {
                // `GetAgents`, each agent's entry made, written and dropped in turn: made all
                // at once they were most of the fresh memory a read touched (at 40,000
                // agents, 40 % of its page faults).
                let mut out = Vec::with_capacity(snaps.len() * 1024);
                out.extend_from_slice(b"{\"agents\":");
                write_each(&mut out, &snaps, AgentSnap::entry);
                out.extend_from_slice(b",\"recovered_agents\":");
                write_json(&mut out, &recovered);
                out.push(b'}');
                out
            });
            v.raw("}}");
        }
        Query::GetTasks => {
            operator_head(&mut v, CallType::GetTasks, "get_tasks");
            get_tasks_view(&mut v, st);
            v.raw("}");
        }
        _ => return None,
    }
    Some(v)
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

/// `/state-summary`: the agents (each with its running tasks, counted off the loop from
/// the live tasks' pointer copies) written off the loop, the frameworks on it.
fn state_summary_view(v: &mut View, st: &State) {
    let snaps: Vec<AgentSnap> = st.agents.values().map(|a| AgentSnap::of(st, a)).collect();
    let live: Vec<Arc<TaskEntry>> = st.frameworks.values().flat_map(|f| f.tasks.values().cloned()).collect();
    v.raw("{");
    v.key(true, "hostname");
    v.value(&st.master_info.hostname);
    v.key(false, "cluster");
    v.raw("null");
    v.key(false, "slaves");
    v.later(move || {
        let mut running: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for e in live.iter().filter(|e| e.task.state == TaskState::Running) {
            *running.entry(e.task.agent_id.value.as_str()).or_default() += 1;
        }
        let mut out = Vec::with_capacity(snaps.len() * 512);
        write_each(&mut out, &snaps, |a| {
            let id = a.info.id.as_ref().map(|i| i.value.as_str()).unwrap_or_default();
            json!({
                "id": id, "pid": a.pid, "hostname": a.info.hostname,
                "registered_time": a.registered_time,
                "resources": a.total.to_legacy_map(),
                "used_resources": a.used.to_resources().to_legacy_map(),
                "offered_resources": a.offered.to_legacy_map(),
                "active": a.active,
                "TASK_RUNNING": running.get(id).copied().unwrap_or(0),
            })
        });
        out
    });
    v.key(false, "frameworks");
    let frameworks: Vec<Value> = st
        .frameworks
        .values()
        .map(|f| {
            let id = f.id();
            json!({
                "id": id.value, "name": f.info.name, "active": f.active, "connected": f.connected(),
                "used_resources": st.used_by(&id).to_legacy_map(),
                "offered_resources": st.offered_to(&id).to_legacy_map(),
                "TASK_RUNNING": f.tasks.stats().count(TaskState::Running),
            })
        })
        .collect();
    v.value(&frameworks);
    v.raw("}");
}

/// cpus, mem, disk, gpus of some resources, summed as plain numbers.
#[derive(Default)]
struct Scalars([f64; 4]);

impl Scalars {
    fn add(&mut self, rs: &[agora_api::Resource]) {
        for r in rs {
            if let (Some(i), Some(s)) = (crate::tasks::scalar_index(&r.name), r.scalar.as_ref()) {
                self.0[i] += s.value;
            }
        }
    }
    fn scalar(&self, name: &str) -> f64 {
        crate::tasks::scalar_index(name).map_or(0.0, |i| self.0[i])
    }
}

/// `/metrics/snapshot`: the task figures are the frameworks' running [`TaskStats`] (it is
/// polled, and a cluster holds hundreds of thousands of tasks); one pass over the agents.
fn metrics(st: &State) -> Value {
    let mut total = Scalars::default();
    for a in st.agents.values() {
        total.add(&a.total.0);
    }
    let mut stats = TaskStats::default();
    for f in st.frameworks.values() {
        stats.add(f.tasks.stats());
    }
    if cfg!(debug_assertions) {
        // Tests run debug builds: every poll checks the running figures against a count.
        let counted = TaskStats::of(st.frameworks.values().flat_map(|f| f.tasks.values()));
        if counted != stats {
            tracing::error!(?counted, running = ?stats, "task figures out of step");
            debug_assert_eq!(counted, stats, "task figures out of step");
        }
        // And the resources in use per agent and framework against a sum of the tasks.
        let live = st.frameworks.values().flat_map(|f| f.tasks.values().map(|e| &**e));
        if let Some(why) = st.ledger.lock().ok().and_then(|l| l.differs_from(live)) {
            tracing::error!(%why, "resources in use out of step");
            debug_assert!(false, "resources in use out of step: {why}");
        }
    }
    let count = |s: TaskState| stats.count(s);
    let used = |name: &str| stats.used(name);
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
        "master/cpus_used": used("cpus"),
        "master/cpus_percent": ratio(used("cpus"), total.scalar("cpus")),
        "master/mem_total": total.scalar("mem"),
        "master/mem_used": used("mem"),
        "master/mem_percent": ratio(used("mem"), total.scalar("mem")),
        "master/disk_total": total.scalar("disk"),
        "master/disk_used": used("disk"),
        "master/disk_percent": ratio(used("disk"), total.scalar("disk")),
        "master/gpus_total": total.scalar("gpus"),
        "master/gpus_used": used("gpus"),
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
            e.0.push(id.value.to_string());
        }
        // What its tasks use (the ledger's sum), under the role each resource is allocated to.
        let fallback = f.info.effective_roles().into_iter().next().unwrap_or_else(|| "*".into());
        for r in st.used_by(&id).iter() {
            let role = r.allocation_role().map_or_else(|| fallback.clone(), str::to_string);
            roles.entry(role).or_insert_with(|| (vec![], Resources::new())).1.add(r);
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
        g.completed_tasks.extend(f.completed_tasks.iter().map(|t| (**t).clone()));
    }
    for f in &st.completed_frameworks {
        g.completed_tasks.extend(f.completed_tasks.iter().map(|t| (**t).clone()));
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
        agents: st.agents.values().map(|a| AgentSnap::of(st, a).entry()).collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v0_tasks_are_written_in_the_v0_shape() {
        let full: Task = serde_json::from_value(serde_json::json!({
            "name": "web \"1\"\n",
            "task_id": {"value": "t\\1"},
            "framework_id": {"value": "f"},
            "executor_id": {"value": "e"},
            "agent_id": {"value": "a"},
            "state": "TASK_RUNNING",
            "resources": [
                {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}, "allocation_info": {"role": "web"}},
                {"name": "mem", "type": "SCALAR", "scalar": {"value": 16.0}, "allocation_info": {"role": "web"}},
            ],
            "statuses": [
                {"task_id": {"value": "t"}, "state": "TASK_STARTING"},
                {"task_id": {"value": "t"}, "state": "TASK_RUNNING", "timestamp": 1796371489.8718488, "healthy": true,
                 "container_status": {"network_infos": [{"ip_addresses": [{"ip_address": "10.0.0.2"}]}]},
                 "labels": {"labels": [{"key": "k", "value": "v"}]}},
                {"task_id": {"value": "t"}, "state": "TASK_KILLING", "healthy": false},
            ],
            "user": "root",
            "labels": {"labels": [{"key": "k"}]},
            "discovery": {"visibility": "FRAMEWORK", "name": "n"},
            "container": {"type": "MESOS"},
            "health_check": {"type": "HTTP"},
        }))
        .unwrap();
        let mut bare = full.clone();
        bare.executor_id = None;
        bare.statuses.clear();
        bare.user = None;
        bare.labels = None;
        bare.discovery = None;
        bare.container = None;
        bare.health_check = None;
        // Not the four simple scalars: v0's general resource map.
        let mut ports = full.clone();
        ports.resources.push(agora_api::Resource::ranges("ports", vec![(31000, 31002)]));
        bare.resources.clear();
        // `task_json` is `write_task_v0` parsed back (Null if it failed or wrote bad JSON).
        let v0 = task_json;
        assert_eq!(
            v0(&full),
            serde_json::json!({
                "id": "t\\1", "name": "web \"1\"\n", "framework_id": "f", "executor_id": "e", "slave_id": "a",
                "state": "TASK_RUNNING",
                "resources": {"cpus": 0.1, "gpus": 0.0, "mem": 16.0, "disk": 0.0},
                "role": "web",
                "statuses": [
                    {"state": "TASK_STARTING", "timestamp": 0.0},
                    {"state": "TASK_RUNNING", "timestamp": 1796371489.8718488, "healthy": true,
                     "container_status": {"network_infos": [{"ip_addresses": [{"ip_address": "10.0.0.2"}]}]},
                     "labels": [{"key": "k", "value": "v"}]},
                    {"state": "TASK_KILLING", "timestamp": 0.0, "healthy": false},
                ],
                "user": "root",
                "labels": [{"key": "k"}],
                "discovery": {"visibility": "FRAMEWORK", "name": "n"},
                "container": {"type": "MESOS"},
                "health_check": {"type": "HTTP"},
            })
        );
        assert_eq!(
            v0(&bare),
            serde_json::json!({
                "id": "t\\1", "name": "web \"1\"\n", "framework_id": "f", "executor_id": "", "slave_id": "a",
                "state": "TASK_RUNNING",
                "resources": {"cpus": 0.0, "gpus": 0.0, "mem": 0.0, "disk": 0.0},
                "role": "*",
                "statuses": [],
            })
        );
        let p = v0(&ports);
        assert_eq!(p["resources"], Resources::from_vec(ports.resources.clone()).to_legacy_map());
        assert_eq!(p["resources"]["ports"], "[31000-31002]");
        assert_eq!(p["resources"]["cpus"], 0.1);
    }
}
