//! A framework's task map, keeping the figures `/metrics/snapshot` reports (tasks per state,
//! resources used) as it changes, so that reading them costs nothing per task.
use crate::state::TaskEntry;
use agora_api::{TaskId, TaskState};
use std::collections::HashMap;
use std::sync::Arc;

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

/// Tasks by id, behind `Arc` (see [`TaskEntry`]), with their running [`TaskStats`]. Every
/// change goes through `insert`, `remove`, `drain` or the guard of `get_mut`, which keep
/// the figures right.
#[derive(Default)]
pub(crate) struct Tasks {
    map: HashMap<TaskId, Arc<TaskEntry>>,
    stats: TaskStats,
}

impl Tasks {
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
        self.stats.apply(&e, 1);
        let old = self.map.insert(id, e);
        if let Some(o) = &old {
            self.stats.apply(o, -1);
        }
        old
    }

    pub fn remove(&mut self, id: &TaskId) -> Option<Arc<TaskEntry>> {
        let e = self.map.remove(id)?;
        self.stats.apply(&e, -1);
        Some(e)
    }

    pub fn drain(&mut self) -> impl Iterator<Item = (TaskId, Arc<TaskEntry>)> + '_ {
        self.stats = TaskStats::default();
        self.map.drain()
    }

    /// The entry to change in place (copied first if a snapshot still holds it); the
    /// figures follow the change when the guard is dropped.
    pub fn get_mut(&mut self, id: &TaskId) -> Option<TaskGuard<'_>> {
        let e = self.map.get_mut(id)?;
        self.stats.apply(e, -1);
        Some(TaskGuard { entry: Arc::make_mut(e), stats: &mut self.stats })
    }
}

/// A task entry being changed (see [`Tasks::get_mut`]).
pub(crate) struct TaskGuard<'a> {
    entry: &'a mut TaskEntry,
    stats: &'a mut TaskStats,
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
        self.stats.apply(self.entry, 1);
    }
}
