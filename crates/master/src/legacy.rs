//! Read views of the master state: the v0 JSON endpoints (`/state`, `/slaves`, `/frameworks`,
//! `/tasks`, `/metrics/snapshot`, ...) with their v0 field names, and the operator API's
//! typed GET_* replies.
use crate::state::{Framework, Query, State};
use agora_api::operator::*;
use agora_api::*;
use serde_json::{json, Value};
use std::collections::HashMap;

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
        Query::State => state_json(st),
        Query::StateSummary => state_summary(st),
        Query::Slaves => json!({
            "slaves": st.agents.values().map(|a| agent_json(st, a)).collect::<Vec<_>>(),
            "recovered_slaves": recovered_slaves(st),
        }),
        Query::Frameworks { framework_id } => {
            let keep = |f: &&Framework| framework_id.as_ref().map(|id| f.id().value == *id).unwrap_or(true);
            json!({
                "frameworks": st.frameworks.values().filter(keep).map(|f| framework_json(st, f)).collect::<Vec<_>>(),
                "completed_frameworks": st.completed_frameworks.iter().filter(keep).map(|f| framework_json(st, f)).collect::<Vec<_>>(),
                "unregistered_frameworks": [],
            })
        }
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
    }
}

fn framework_json(st: &State, f: &Framework) -> Value {
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
        "used_resources": st.used_by(&id).to_legacy_map(),
        "offered_resources": st.offered_to(&id).to_legacy_map(),
        "resources": st.used_by(&id).to_legacy_map(),
        "tasks": f.tasks.values().map(|t| task_json(&t.task)).collect::<Vec<_>>(),
        "unreachable_tasks": f.unreachable_tasks.values().map(|t| task_json(&t.task)).collect::<Vec<_>>(),
        "completed_tasks": f.completed_tasks.iter().map(task_json).collect::<Vec<_>>(),
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
    let id = a.id();
    let attrs = attributes_json(&a.info.attributes);
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
    let mut v = json!({
        "id": id.value,
        "hostname": a.info.hostname,
        "port": a.info.port,
        "pid": a.pid,
        "attributes": attrs,
        "registered_time": a.registered_time,
        "resources": a.total.to_legacy_map(),
        "used_resources": st.used_on(&id).to_legacy_map(),
        "offered_resources": st.offered_on(&id).to_legacy_map(),
        "reserved_resources": reserved,
        "unreserved_resources": unreserved.to_legacy_map(),
        "active": a.active && a.connected(),
        "deactivated": false,
        "version": a.version,
        "capabilities": ["MULTI_ROLE", "HIERARCHICAL_ROLE", "RESERVATION_REFINEMENT", "TASK_NO_EXECUTOR"],
        "resources_full": a.total.with_legacy_roles().into_vec(),
        "used_resources_full": st.used_on(&id).with_legacy_roles().into_vec(),
        "offered_resources_full": st.offered_on(&id).with_legacy_roles().into_vec(),
    });
    if let Some(t) = a.reregistered_time {
        v["reregistered_time"] = json!(t);
    }
    v
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

/// A task in v0 JSON.
pub fn task_json(t: &Task) -> Value {
    let resources = Resources::from_vec(t.resources.clone());
    let role = t.resources.iter().find_map(|r| r.allocation_role().map(str::to_string)).unwrap_or_else(|| "*".into());
    let statuses: Vec<Value> = t
        .statuses
        .iter()
        .map(|s| {
            let mut v = json!({"state": s.state, "timestamp": s.timestamp.unwrap_or(0.0)});
            if let Some(h) = s.healthy {
                v["healthy"] = json!(h);
            }
            if let Some(c) = &s.container_status {
                v["container_status"] = (**c).clone();
            }
            if let Some(l) = &s.labels {
                v["labels"] = json!(l.labels);
            }
            v
        })
        .collect();
    let mut v = json!({
        "id": t.task_id.value,
        "name": t.name,
        "framework_id": t.framework_id.value,
        "executor_id": t.executor_id.as_ref().map(|e| e.value.clone()).unwrap_or_default(),
        "slave_id": t.agent_id.value,
        "state": t.state,
        "resources": resources.to_legacy_map(),
        "role": role,
        "statuses": statuses,
    });
    if let Some(u) = &t.user {
        v["user"] = json!(u);
    }
    if let Some(l) = &t.labels {
        v["labels"] = json!(l.labels);
    }
    if let Some(d) = &t.discovery {
        v["discovery"] = (**d).clone();
    }
    if let Some(c) = &t.container {
        v["container"] = (**c).clone();
    }
    if let Some(h) = &t.health_check {
        v["health_check"] = (**h).clone();
    }
    v
}

fn state_json(st: &State) -> Value {
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
        "slaves": st.agents.values().map(|a| agent_json(st, a)).collect::<Vec<_>>(),
        "recovered_slaves": recovered_slaves(st),
        "frameworks": st.frameworks.values().map(|f| framework_json(st, f)).collect::<Vec<_>>(),
        "completed_frameworks": st.completed_frameworks.iter().map(|f| framework_json(st, f)).collect::<Vec<_>>(),
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
    json!({
        "roles": roles.into_iter().map(|(name, (fws, res))| json!({
            "weight": st.weights.get(&name).copied().unwrap_or(1.0),
            "name": name, "frameworks": fws, "resources": res.to_legacy_map(),
        })).collect::<Vec<_>>()
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
