//! A framework's task map, keeping the figures `/metrics/snapshot` reports (tasks per state,
//! resources used) and the resources in use per agent and per framework (a [`Ledger`]) as
//! it changes, so that reading them costs nothing per task.
use crate::state::TaskEntry;
use agora_api::resources::AllocationInfo;
use agora_api::resources::ValueType;
use agora_api::{AgentId, FrameworkId, Resource, Resources, TaskId, TaskState, Text};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Number of [`TaskState`] variants (indexes of [`TaskStats::by_state`]).
const STATES: usize = TaskState::Unknown as usize + 1;

/// Running figures of a task map: entries per state, and the cpus/mem/disk/gpus of the
/// entries not yet released, in thousandths (resource values have three decimals), so
/// that adding and removing a task leaves them exactly as they were.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TaskStats {
    pub by_state: [u64; STATES],
    pub used_milli: [i64; 4],
}

/// Index of a scalar resource in [`TaskStats::used_milli`].
pub(crate) fn scalar_index(name: &str) -> Option<usize> {
    match name {
        "cpus" => Some(0),
        "mem" => Some(1),
        "disk" => Some(2),
        "gpus" => Some(3),
        _ => None,
    }
}

impl TaskStats {
    fn apply(&mut self, e: &TaskEntry, sign: i64) {
        let n = &mut self.by_state[e.task.state as usize];
        *n = if sign > 0 { *n + 1 } else { n.saturating_sub(1) };
        if !e.released {
            for r in &e.task.resources {
                if let (Some(i), Some(s)) = (scalar_index(&r.name), r.scalar.as_ref()) {
                    self.used_milli[i] += sign * (s.value * 1000.0).round() as i64;
                }
            }
        }
    }

    /// Adds another map's figures.
    pub fn add(&mut self, o: &TaskStats) {
        for (a, b) in self.by_state.iter_mut().zip(o.by_state) {
            *a += b;
        }
        for (a, b) in self.used_milli.iter_mut().zip(o.used_milli) {
            *a += b;
        }
    }

    pub fn count(&self, s: TaskState) -> u64 {
        self.by_state[s as usize]
    }

    /// Used cpus, mem, disk or gpus.
    pub fn used(&self, name: &str) -> f64 {
        scalar_index(name).map_or(0.0, |i| self.used_milli[i] as f64 / 1000.0)
    }

    /// The figures of `entries`, counted one by one (to check the running ones).
    pub fn of<'a>(entries: impl Iterator<Item = &'a Arc<TaskEntry>>) -> TaskStats {
        let mut s = TaskStats::default();
        for e in entries {
            s.apply(e, 1);
        }
        s
    }
}

/// Scalar resources a [`Sum`] keeps as integers, in this order.
const SCALARS: [&str; 4] = ["cpus", "mem", "disk", "gpus"];

/// A sum of task resources, compact: the usual resource (cpus, mem, disk or gpus allocated
/// to a role, nothing else set) as thousandths per role, exact under adding and taking
/// away; any other resource (ports, reservations, volumes, ...) in `other`. A role's four
/// figures take 48 bytes where four `Resource`s would take 740.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Sum {
    by_role: Vec<(Text, [i64; 4])>,
    other: Resources,
}

impl Sum {
    fn apply(&mut self, r: &Resource, sign: i64) {
        if let Some((role, i, milli)) = usual(r) {
            let at = match self.by_role.iter().position(|(x, _)| *x == *role) {
                Some(at) => at,
                None => {
                    self.by_role.push((role.clone(), [0; 4]));
                    self.by_role.len() - 1
                }
            };
            let v = &mut self.by_role[at].1;
            v[i] += sign * milli;
            if *v == [0; 4] {
                self.by_role.swap_remove(at);
            }
        } else if sign > 0 {
            self.other.add(r);
        } else {
            self.other.subtract(r);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_role.is_empty() && self.other.is_empty()
    }

    /// The sum as resources (each role's scalars allocated to it, then the others).
    pub fn to_resources(&self) -> Resources {
        let mut out = Resources::new();
        for (role, v) in &self.by_role {
            for (name, milli) in SCALARS.iter().zip(v) {
                if *milli > 0 {
                    let mut r = Resource::scalar(name, *milli as f64 / 1000.0);
                    r.allocation_info = Some(AllocationInfo { role: Some(role.clone()) });
                    out.add(&r);
                }
            }
        }
        for r in self.other.iter() {
            out.add(r);
        }
        out
    }
}

/// A usual resource's role, index in [`SCALARS`] and value in thousandths.
fn usual(r: &Resource) -> Option<(&Text, usize, i64)> {
    let i = scalar_index(&r.name)?;
    let role = r.allocation_info.as_ref()?.role.as_ref()?;
    let plain = r.kind == ValueType::Scalar
        && r.ranges.is_none()
        && r.set.is_none()
        && r.role.is_none()
        && r.reservation.is_none()
        && r.reservations.is_empty()
        && r.disk.is_none()
        && r.revocable.is_none()
        && r.shared.is_none()
        && r.provider_id.is_none();
    let v = r.scalar.as_ref()?.value;
    (plain && v.is_finite() && v > 0.0).then(|| (role, i, (v * 1000.0).round() as i64))
}

/// The resources in use (of tasks not released) per agent and per framework, kept by
/// every framework's [`Tasks`] as its tasks change, as Mesos keeps them: a big read or an
/// agent's entry need not add up its tasks. Shared by the task maps of one master's
/// frameworks, all on its state loop (the lock is never contended). Like Mesos's, it
/// relies on what the allocator guarantees: no two live tasks on an agent hold the same
/// port (or set item), which a sum of ranges could not count twice.
#[derive(Default)]
pub(crate) struct Ledger {
    by_agent: HashMap<AgentId, Sum>,
    by_framework: HashMap<FrameworkId, Sum>,
}

/// A handle on the master's [`Ledger`].
pub(crate) type SharedLedger = Arc<Mutex<Ledger>>;

impl Ledger {
    fn apply(&mut self, e: &TaskEntry, sign: i64) {
        if e.released || e.task.resources.is_empty() {
            return;
        }
        add_to(&mut self.by_agent, &e.task.agent_id, &e.task.resources, sign);
        add_to(&mut self.by_framework, &e.task.framework_id, &e.task.resources, sign);
    }

    pub fn agent(&self, id: &AgentId) -> Sum {
        self.by_agent.get(id).cloned().unwrap_or_default()
    }

    pub fn framework(&self, id: &FrameworkId) -> Sum {
        self.by_framework.get(id).cloned().unwrap_or_default()
    }

    /// Where the ledger differs from a sum of `live` (every framework's live tasks), if
    /// anywhere: for tests and debug builds' checks.
    pub fn differs_from<'a>(&self, live: impl Iterator<Item = &'a TaskEntry>) -> Option<String> {
        let mut agents: HashMap<AgentId, Resources> = HashMap::new();
        let mut frameworks: HashMap<FrameworkId, Resources> = HashMap::new();
        for e in live.filter(|e| !e.released) {
            e.add_resources_to(agents.entry(e.task.agent_id.clone()).or_default());
            e.add_resources_to(frameworks.entry(e.task.framework_id.clone()).or_default());
        }
        // The same resources, whatever their order and however they were merged.
        let same = |a: &Resources, b: &Resources| a.contains(b) && b.contains(a);
        let empty = Sum::default();
        if self.by_agent.values().chain(self.by_framework.values()).any(Sum::is_empty) {
            return Some("an empty sum is kept".into());
        }
        for (id, want) in agents.iter().filter(|(_, r)| !r.is_empty()) {
            let got = self.by_agent.get(id).unwrap_or(&empty).to_resources();
            if !same(&got, want) {
                return Some(format!("agent {id}: ledger {got}, tasks {want}"));
            }
        }
        for (id, want) in frameworks.iter().filter(|(_, r)| !r.is_empty()) {
            let got = self.by_framework.get(id).unwrap_or(&empty).to_resources();
            if !same(&got, want) {
                return Some(format!("framework {id}: ledger {got}, tasks {want}"));
            }
        }
        if let Some(id) = self.by_agent.keys().find(|id| agents.get(*id).is_none_or(Resources::is_empty)) {
            return Some(format!("agent {id}: in the ledger, no task in use"));
        }
        if let Some(id) = self.by_framework.keys().find(|id| frameworks.get(*id).is_none_or(Resources::is_empty)) {
            return Some(format!("framework {id}: in the ledger, no task in use"));
        }
        None
    }
}

fn add_to<K: Clone + Eq + std::hash::Hash>(map: &mut HashMap<K, Sum>, key: &K, resources: &[Resource], sign: i64) {
    let sum = map.entry(key.clone()).or_default();
    for r in resources {
        sum.apply(r, sign);
    }
    if sum.is_empty() {
        map.remove(key);
    }
}

/// Tasks by id, behind `Arc` (see [`TaskEntry`]), with their running [`TaskStats`] and, for
/// a framework's live tasks, their share of the [`Ledger`]. Every change goes through
/// `insert`, `remove`, `drain` or the guard of `get_mut`, which keep the figures right.
#[derive(Default)]
pub(crate) struct Tasks {
    map: HashMap<TaskId, Arc<TaskEntry>>,
    stats: TaskStats,
    ledger: Option<SharedLedger>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        // A map dropped with tasks in it (a framework removed) takes them off the ledger.
        let _ = self.drain().count();
    }
}

impl Tasks {
    /// A map whose tasks' resources count as in use, in `ledger`.
    pub fn in_use(ledger: SharedLedger) -> Tasks {
        Tasks { map: HashMap::new(), stats: TaskStats::default(), ledger: Some(ledger) }
    }

    fn apply(&mut self, e: &TaskEntry, sign: i64) {
        account(&mut self.stats, self.ledger.as_ref(), e, sign);
    }

    pub fn get(&self, id: &TaskId) -> Option<&Arc<TaskEntry>> {
        self.map.get(id)
    }
    pub fn contains_key(&self, id: &TaskId) -> bool {
        self.map.contains_key(id)
    }
    pub fn values(&self) -> impl Iterator<Item = &Arc<TaskEntry>> {
        self.map.values()
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn stats(&self) -> &TaskStats {
        &self.stats
    }

    pub fn insert(&mut self, id: TaskId, e: Arc<TaskEntry>) -> Option<Arc<TaskEntry>> {
        // The old entry's resources leave before the new one's come (they may be the same
        // ports, which the ledger holds once).
        let old = self.map.remove(&id);
        if let Some(o) = &old {
            self.apply(o, -1);
        }
        self.apply(&e, 1);
        self.map.insert(id, e);
        old
    }

    pub fn remove(&mut self, id: &TaskId) -> Option<Arc<TaskEntry>> {
        let e = self.map.remove(id)?;
        self.apply(&e, -1);
        Some(e)
    }

    pub fn drain(&mut self) -> impl Iterator<Item = (TaskId, Arc<TaskEntry>)> + '_ {
        for e in self.map.values() {
            account(&mut self.stats, self.ledger.as_ref(), e, -1);
        }
        self.map.drain()
    }

    /// The entry to change in place (copied first if a snapshot still holds it); the
    /// figures follow the change when the guard is dropped.
    pub fn get_mut(&mut self, id: &TaskId) -> Option<TaskGuard<'_>> {
        let e = self.map.get_mut(id)?;
        account(&mut self.stats, self.ledger.as_ref(), e, -1);
        Some(TaskGuard { entry: Arc::make_mut(e), stats: &mut self.stats, ledger: self.ledger.as_ref() })
    }
}

/// Adds (`sign` 1) or takes off (-1) an entry in a map's figures and in its ledger, if any.
fn account(stats: &mut TaskStats, ledger: Option<&SharedLedger>, e: &TaskEntry, sign: i64) {
    stats.apply(e, sign);
    if let Some(Ok(mut l)) = ledger.map(|l| l.lock()) {
        l.apply(e, sign);
    }
}

/// A task entry being changed (see [`Tasks::get_mut`]).
pub(crate) struct TaskGuard<'a> {
    entry: &'a mut TaskEntry,
    stats: &'a mut TaskStats,
    ledger: Option<&'a SharedLedger>,
}

impl std::ops::Deref for TaskGuard<'_> {
    type Target = TaskEntry;
    fn deref(&self) -> &TaskEntry {
        self.entry
    }
}

impl std::ops::DerefMut for TaskGuard<'_> {
    fn deref_mut(&mut self) -> &mut TaskEntry {
        self.entry
    }
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        account(self.stats, self.ledger, self.entry, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_api::Task;

    /// Resources a task may hold: the usual kind, and every kind the ledger keeps apart.
    const PALETTE: [&str; 6] = [
        r#"[{"name":"cpus","type":"SCALAR","scalar":{"value":0.1},"allocation_info":{"role":"web"}},
            {"name":"mem","type":"SCALAR","scalar":{"value":32},"allocation_info":{"role":"web"}}]"#,
        r#"[{"name":"cpus","type":"SCALAR","scalar":{"value":1.25},"allocation_info":{"role":"batch"}},
            {"name":"gpus","type":"SCALAR","scalar":{"value":1},"allocation_info":{"role":"batch"}},
            {"name":"disk","type":"SCALAR","scalar":{"value":100.5},"allocation_info":{"role":"batch"}}]"#,
        r#"[{"name":"ports","type":"RANGES","ranges":{"range":[{"begin":PORT,"end":PORT}]},"allocation_info":{"role":"web"}},
            {"name":"cpus","type":"SCALAR","scalar":{"value":0.3},"allocation_info":{"role":"web"}}]"#,
        r#"[{"name":"cpus","type":"SCALAR","scalar":{"value":0.2},"role":"*","allocation_info":{"role":"web"}}]"#,
        r#"[{"name":"mem","type":"SCALAR","scalar":{"value":64},"allocation_info":{"role":"db"},
             "reservations":[{"type":"DYNAMIC","role":"db","principal":"p"}]},
            {"name":"mem","type":"SCALAR","scalar":{"value":8}}]"#,
        r#"[]"#,
    ];

    /// Task `n` of framework `fw`; its port (if it has one) is its own, as the allocator
    /// sees to.
    fn entry(n: u64, agent: u64, fw: u64, palette: usize, released: bool) -> Arc<TaskEntry> {
        let resources = PALETTE[palette].replace("PORT", &(31000 + 100 * fw + n).to_string());
        let task: Task = serde_json::from_value(serde_json::json!({
            "name": "t", "task_id": {"value": format!("t{n}")}, "framework_id": {"value": format!("f{fw}")},
            "agent_id": {"value": format!("a{agent}")}, "state": "TASK_RUNNING",
            "resources": serde_json::from_str::<serde_json::Value>(&resources).unwrap(),
        }))
        .unwrap();
        Arc::new(TaskEntry { task, released })
    }

    /// The ledger against a sum of every live task, per agent and per framework.
    fn check(ledger: &SharedLedger, maps: &[Tasks]) {
        let live = maps.iter().flat_map(|m| m.values().map(|e| &**e));
        let differs = ledger.lock().unwrap().differs_from(live);
        assert!(differs.is_none(), "{differs:?}");
    }

    #[test]
    fn the_ledger_follows_every_change_to_the_task_maps() {
        let ledger = SharedLedger::default();
        // Three frameworks' live tasks, and one map outside the ledger (unreachable tasks).
        let mut maps: Vec<Tasks> = (0..3).map(|_| Tasks::in_use(ledger.clone())).collect();
        let mut outside = Tasks::default();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for step in 0..4000 {
            let fw = next() % 3;
            let m = &mut maps[fw as usize];
            let id = TaskId::new(format!("t{}", next() % 40).as_str());
            match next() % 10 {
                0..=3 => {
                    let n = id.value[1..].parse().unwrap();
                    m.insert(id, entry(n, next() % 5, fw, (next() % 6) as usize, next() % 5 == 0));
                }
                4 | 5 => {
                    m.remove(&id);
                }
                6 | 7 => {
                    if let Some(mut g) = m.get_mut(&id) {
                        match next() % 3 {
                            0 => g.released = !g.released,
                            1 => {
                                let n = id.value[1..].parse().unwrap();
                                g.task.resources = entry(n, 0, fw, (next() % 6) as usize, false).task.resources.clone();
                            }
                            _ => g.task.state = TaskState::Killing,
                        }
                    }
                }
                8 => {
                    if step % 50 == 0 {
                        let _ = m.drain().count();
                    } else if step % 70 == 0 {
                        // A framework removed with its tasks.
                        maps[fw as usize] = Tasks::in_use(ledger.clone());
                    }
                }
                _ => {
                    outside.insert(id, entry(99, next() % 5, fw, 0, false));
                }
            }
            check(&ledger, &maps);
        }
        drop(maps);
        let l = ledger.lock().unwrap();
        assert!(l.by_agent.is_empty() && l.by_framework.is_empty(), "all gone with their maps");
    }

    #[test]
    fn a_sum_is_exact_under_adding_and_taking_away() {
        let mut s = Sum::default();
        let e = entry(1, 0, 0, 0, false);
        for _ in 0..1000 {
            for r in &e.task.resources {
                s.apply(r, 1);
            }
        }
        let cpus = s.to_resources();
        assert_eq!(cpus.scalar("cpus"), 100.0);
        assert_eq!(cpus.scalar("mem"), 32000.0);
        for _ in 0..1000 {
            for r in &e.task.resources {
                s.apply(r, -1);
            }
        }
        assert!(s.is_empty(), "{s:?}");
        // The usual kind takes no `Resource`s.
        for r in &e.task.resources {
            s.apply(r, 1);
        }
        assert_eq!((s.by_role.len(), s.other.is_empty()), (1, true));
    }
}
