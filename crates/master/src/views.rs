//! Big reads (`/state`, `/frameworks`, GET_STATE, GET_TASKS) taken on the state loop and
//! encoded off it.
//!
//! On the state loop a read takes what it shows: every task as an `Arc` (a pointer copy
//! per task, see [`TaskEntry`](crate::state::TaskEntry)), the agents as small snapshots
//! (with the resources they have in use, which the master keeps as tasks change), the rest
//! written as JSON at once. Off the loop, on blocking threads, the agents are written and
//! the tasks (most of the bytes) encoded in parallel chunks, streamed to the client in
//! order while the next few are encoded: a read holds a few chunks, not its whole body
//! (300 MB for GET_STATE at 400,000 tasks).
use crate::legacy::write_task_v0;
use crate::state::TaskEntry;
use agora_api::Task;
use bytes::Bytes;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// One task of a snapshot: live (its entry in the master) or completed.
pub(crate) enum TaskRef {
    Live(Arc<TaskEntry>),
    Done(Arc<Task>),
}

impl TaskRef {
    fn task(&self) -> &Task {
        match self {
            TaskRef::Live(e) => &e.task,
            TaskRef::Done(t) => t,
        }
    }

    /// Where the task lies in memory.
    fn address(&self) -> usize {
        match self {
            TaskRef::Live(e) => Arc::as_ptr(e) as usize,
            TaskRef::Done(t) => Arc::as_ptr(t) as usize,
        }
    }
}

/// How tasks are written: v0 (`/state`) or the v1 `Task` message (operator API).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TaskForm {
    V0,
    V1,
}

/// A part written off the loop.
type Later = Box<dyn FnOnce() -> Vec<u8> + Send + Sync>;

enum Part {
    /// JSON written on the state loop.
    Json(Vec<u8>),
    /// The elements of a JSON array of tasks (the brackets are in the neighbouring parts).
    Tasks {
        form: TaskForm,
        tasks: Vec<TaskRef>,
    },
    Later(Later),
}

/// A read view: JSON fragments, task lists and deferred parts, in output order.
pub struct View {
    parts: Vec<Part>,
    cur: Vec<u8>,
}

/// Tasks per unit of work when encoding in parallel.
const CHUNK_TASKS: usize = 4096;

/// Task chunks (of [`CHUNK_TASKS`]) encoded ahead of the one being sent, at most.
const AHEAD: usize = 4;

/// Where the encoding of a view's task chunks stands: the chunks encoded and not yet sent,
/// how many were sent, and whether to stop (the reader went away, or a thread panicked).
struct Progress {
    done: Vec<Option<Vec<u8>>>,
    sent: usize,
    stop: bool,
}

/// Stops the encoding if the thread holding it unwinds, so that the sender does not wait
/// forever for a chunk that will not come.
struct StopOnPanic<'a>(&'a Mutex<Progress>, &'a Condvar);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(mut g) = self.0.lock() {
                g.stop = true;
            }
            self.1.notify_all();
        }
    }
}

/// Waits for task chunk `w`, takes it and counts it sent; `None` if the encoding stopped.
fn take_done(progress: &Mutex<Progress>, changed: &Condvar, w: usize) -> Option<Vec<u8>> {
    let mut g = progress.lock().ok()?;
    loop {
        if let Some(buf) = g.done.get_mut(w).and_then(Option::take) {
            g.sent += 1;
            drop(g);
            changed.notify_all();
            return Some(buf);
        }
        if g.stop || w >= g.done.len() {
            return None;
        }
        g = changed.wait(g).ok()?;
    }
}

impl View {
    pub(crate) fn new() -> View {
        View { parts: Vec::new(), cur: Vec::new() }
    }

    /// Appends raw JSON text.
    pub(crate) fn raw(&mut self, s: &str) {
        self.cur.extend_from_slice(s.as_bytes());
    }

    /// Appends a value as JSON.
    pub(crate) fn value<T: Serialize + ?Sized>(&mut self, v: &T) {
        write_json(&mut self.cur, v);
    }

    /// Appends `"key":` (after a comma unless `first`).
    pub(crate) fn key(&mut self, first: bool, k: &str) {
        if !first {
            self.cur.push(b',');
        }
        self.value(k);
        self.cur.push(b':');
    }

    fn flush(&mut self) {
        if !self.cur.is_empty() {
            let json = std::mem::take(&mut self.cur);
            self.parts.push(Part::Json(json));
        }
    }

    /// Appends a JSON array of tasks, encoded off the loop.
    pub(crate) fn tasks(&mut self, form: TaskForm, tasks: Vec<TaskRef>) {
        self.cur.push(b'[');
        if !tasks.is_empty() {
            self.flush();
            self.parts.push(Part::Tasks { form, tasks });
        }
        self.cur.push(b']');
    }

    /// Appends JSON written off the loop by `f`.
    pub(crate) fn later(&mut self, f: impl FnOnce() -> Vec<u8> + Send + Sync + 'static) {
        self.flush();
        self.parts.push(Part::Later(Box::new(f)));
    }

    /// Encodes the view with up to `threads` threads; returns the body's chunks in order.
    #[cfg(test)]
    pub(crate) fn encode(self, threads: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.encode_into(threads, |b| {
            out.push(b);
            true
        });
        out
    }

    /// Encodes the view and hands its chunks to `send` in order, as they are written:
    /// `threads` threads encode the task lists, at most [`AHEAD`] chunks ahead of the one
    /// being sent, so a read holds a few megabytes however big it is and however slow its
    /// client; another writes the deferred parts (the agents). `send`
    /// returns false when the reader is gone: encoding stops. Returns whether every chunk
    /// was sent.
    pub(crate) fn encode_into(mut self, threads: usize, mut send: impl FnMut(Bytes) -> bool) -> bool {
        self.flush();
        let mut parts = self.parts;
        // Deferred parts, taken out of `parts` (their slot left as an empty Json).
        let mut later: Vec<(usize, Later)> = Vec::new();
        for (i, p) in parts.iter_mut().enumerate() {
            if matches!(p, Part::Later(_)) {
                if let Part::Later(f) = std::mem::replace(p, Part::Json(Vec::new())) {
                    later.push((i, f));
                }
            }
        }
        let later_slots: Vec<usize> = later.iter().map(|(i, _)| *i).collect();
        // The JSON written on the loop, taken out so that the workers only read `parts`.
        let mut fixed: Vec<Option<Bytes>> = parts
            .iter_mut()
            .map(|p| match p {
                Part::Json(j) => Some(Bytes::from(std::mem::take(j))),
                _ => None,
            })
            .collect();
        // Live tasks are listed in no particular order (they come from hash maps): write
        // them in the order they lie in memory, so that neighbours are read together rather
        // than each from a page of its own (a third less CPU for a big read). Completed ones
        // keep their order (oldest first).
        for p in parts.iter_mut() {
            if let Part::Tasks { tasks, .. } = p {
                if tasks.iter().all(|t| matches!(t, TaskRef::Live(_))) {
                    tasks.sort_unstable_by_key(TaskRef::address);
                }
            }
        }
        let parts = parts;
        // Units of task work: (part, range of its tasks), in output order.
        let mut work: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            if let Part::Tasks { tasks, .. } = p {
                let mut start = 0;
                while start < tasks.len() {
                    let end = (start + CHUNK_TASKS).min(tasks.len());
                    work.push((i, start..end));
                    start = end;
                }
            }
        }
        let progress = Mutex::new(Progress { done: (0..work.len()).map(|_| None).collect(), sent: 0, stop: false });
        let changed = Condvar::new();
        let next = AtomicUsize::new(0);
        let worker = || {
            let _stop_on_panic = StopOnPanic(&progress, &changed);
            loop {
                let w = next.fetch_add(1, Ordering::Relaxed);
                let Some((i, range)) = work.get(w) else { break };
                let Ok(mut g) = progress.lock() else { return };
                while !g.stop && w >= g.sent + AHEAD {
                    g = match changed.wait(g) {
                        Ok(g) => g,
                        Err(_) => return,
                    };
                }
                if g.stop {
                    return;
                }
                drop(g);
                // Every unit is a task list's; anything else still fills its slot (the
                // sender waits for each slot in turn).
                let buf = match &parts[*i] {
                    Part::Tasks { form, tasks, .. } => encode_tasks(*form, &tasks[range.clone()]),
                    _ => Vec::new(),
                };
                if let Ok(mut g) = progress.lock() {
                    g.done[w] = Some(buf);
                }
                changed.notify_all();
            }
        };
        // The deferred parts, on a thread of their own.
        let later_work = || -> Vec<(usize, Vec<u8>)> { later.into_iter().map(|(i, f)| (i, f())).collect() };
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(worker);
            }
            let mut later_job = (!later_slots.is_empty()).then(|| s.spawn(later_work));
            let mut written: Vec<(usize, Vec<u8>)> = Vec::new();
            let mut w = 0;
            let mut complete = true;
            'parts: for (i, p) in parts.iter().enumerate() {
                match p {
                    Part::Tasks { .. } => {
                        let mut k = 0;
                        while work.get(w).is_some_and(|(wi, _)| *wi == i) {
                            let Some(buf) = take_done(&progress, &changed, w) else {
                                complete = false;
                                break 'parts;
                            };
                            if (k > 0 && !send(Bytes::from_static(b","))) || !send(Bytes::from(buf)) {
                                complete = false;
                                break 'parts;
                            }
                            k += 1;
                            w += 1;
                        }
                    }
                    _ => {
                        if later_slots.contains(&i) {
                            if let Some(job) = later_job.take() {
                                match job.join() {
                                    Ok(x) => written = x,
                                    Err(_) => {
                                        complete = false;
                                        break 'parts;
                                    }
                                }
                            }
                        }
                        let chunk = match written.iter().position(|(wi, _)| *wi == i) {
                            Some(at) => Bytes::from(written.swap_remove(at).1),
                            None => fixed[i].take().unwrap_or_default(),
                        };
                        if !chunk.is_empty() && !send(chunk) {
                            complete = false;
                            break 'parts;
                        }
                    }
                }
            }
            if !complete {
                if let Ok(mut g) = progress.lock() {
                    g.stop = true;
                }
                changed.notify_all();
            }
            complete
        })
    }

    /// Encodes into one buffer, with one encoding thread (for the few callers that want a
    /// `Value` or bytes at once).
    pub(crate) fn encode_to_vec(self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(1, |b| {
            out.extend_from_slice(&b);
            true
        });
        out
    }
}

/// Writes a value as JSON (`null`, logged, if it cannot be).
pub(crate) fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    if let Err(e) = serde_json::to_writer(&mut *out, v) {
        tracing::error!(error = %e, "cannot render part of a view");
        out.extend_from_slice(b"null");
    }
}

/// Writes a JSON array of `items`, each made by `make` only as it is written: a big list of
/// values built just to be written is never held whole.
pub(crate) fn write_each<I, T: Serialize>(
    out: &mut Vec<u8>,
    items: impl IntoIterator<Item = I>,
    mut make: impl FnMut(I) -> T,
) {
    out.push(b'[');
    for (i, x) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(out, &make(x));
    }
    out.push(b']');
}

/// A slice of tasks as comma-separated JSON objects.
fn encode_tasks(form: TaskForm, tasks: &[TaskRef]) -> Vec<u8> {
    let mut buf = Vec::new();
    for (k, t) in tasks.iter().enumerate() {
        if k == 1 {
            // Sized by the first task (plus an eighth), not grown by doubling: a chunk is
            // megabytes, and each doubling copies it and faults in fresh pages.
            buf.reserve(buf.len() * (tasks.len() - 1) * 9 / 8 + 64);
        }
        if k > 0 {
            buf.push(b',');
        }
        let start = buf.len();
        let r = match form {
            TaskForm::V0 => write_task_v0(&mut buf, t.task()),
            TaskForm::V1 => agora_api::encode::task(&mut buf, t.task()),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, task_id = %t.task().task_id.value, "cannot encode a task");
            buf.truncate(start);
            buf.extend_from_slice(b"null");
        }
    }
    buf
}

/// Threads for encoding a big read: the machine's cores.
pub(crate) fn encode_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(i: usize) -> Arc<Task> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "name": format!("t{i}"),
                "task_id": {"value": format!("task-{i}")},
                "framework_id": {"value": "f"},
                "agent_id": {"value": "a"},
                "state": "TASK_RUNNING",
                "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}}],
            }))
            .unwrap(),
        )
    }

    fn view(n: usize) -> View {
        let mut v = View::new();
        v.raw("{");
        v.key(true, "tasks");
        v.tasks(TaskForm::V1, (0..n).map(|i| TaskRef::Done(task(i))).collect());
        v.key(false, "more");
        v.tasks(TaskForm::V1, (0..3).map(|i| TaskRef::Done(task(i))).collect());
        v.key(false, "none");
        v.tasks(TaskForm::V1, vec![]);
        v.key(false, "later");
        v.later(|| b"{\"x\":1}".to_vec());
        v.raw("}");
        v
    }

    fn live(i: usize, fw: &str, agent: usize, released: bool) -> TaskRef {
        let mut t = (*task(i)).clone();
        t.framework_id.value = fw.into();
        t.agent_id.value = format!("agent-{agent}").into();
        t.resources = agora_api::Resources::parse(&format!("cpus:{}.5;mem:{}", i % 3, 10 + i % 7)).unwrap().0;
        TaskRef::Live(Arc::new(TaskEntry { task: t, released }))
    }

    #[test]
    fn live_tasks_are_written_once_each_in_memory_order_and_completed_ones_in_theirs() {
        let n = 2 * CHUNK_TASKS + 9;
        // Live tasks of two frameworks, mixed as GET_STATE lists them, listed in the reverse
        // of the order they were made in, so that list order and memory order differ.
        let mut live_tasks: Vec<TaskRef> =
            (0..n).map(|i| live(i, if i % 3 == 0 { "g" } else { "f" }, i % 11, false)).collect();
        live_tasks.reverse();
        let mut by_address: Vec<(usize, String)> =
            live_tasks.iter().map(|t| (t.address(), t.task().task_id.value.to_string())).collect();
        by_address.sort();
        let completed: Vec<TaskRef> = (0..5).rev().map(|i| TaskRef::Done(task(i))).collect();
        for threads in [1, 2, 4] {
            let mut v = View::new();
            v.raw("{");
            v.key(true, "tasks");
            v.tasks(
                TaskForm::V1,
                live_tasks
                    .iter()
                    .map(|t| match t {
                        TaskRef::Live(e) => TaskRef::Live(e.clone()),
                        TaskRef::Done(t) => TaskRef::Done(t.clone()),
                    })
                    .collect(),
            );
            v.key(false, "completed_tasks");
            v.tasks(TaskForm::V1, completed.iter().map(|t| TaskRef::Done(Arc::new(t.task().clone()))).collect());
            v.raw("}");
            let body: serde_json::Value = serde_json::from_slice(&v.encode(threads).concat()).unwrap();
            let ids = |k: &str| -> Vec<String> {
                body[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["task_id"]["value"].as_str().unwrap().to_string())
                    .collect()
            };
            let want: Vec<String> = by_address.iter().map(|(_, id)| id.clone()).collect();
            assert_eq!(ids("tasks"), want, "threads={threads}");
            assert_eq!(ids("completed_tasks"), ["task-4", "task-3", "task-2", "task-1", "task-0"]);
        }
    }

    #[test]
    fn encoding_stops_when_the_reader_goes_away() {
        let n = (AHEAD + 4) * CHUNK_TASKS;
        for threads in [1, 2, 4] {
            for gone_after in [0, 1, 3] {
                let mut calls = 0;
                let complete = view(n).encode_into(threads, |_| {
                    calls += 1;
                    calls <= gone_after
                });
                assert!(!complete, "threads={threads}");
                // Nothing is offered after the refusal.
                assert_eq!(calls, gone_after + 1, "threads={threads}");
            }
        }
        let mut calls = 0;
        assert!(view(3).encode_into(2, |_| {
            calls += 1;
            true
        }));
        assert!(calls > 0);
    }

    #[test]
    fn parallel_encoding_equals_one_serde_pass_in_order() {
        // The last size has more chunks than are encoded ahead of the one being sent.
        for n in [0, 1, CHUNK_TASKS, CHUNK_TASKS + 1, 2 * CHUNK_TASKS + 7, (AHEAD + 2) * CHUNK_TASKS + 5] {
            let expected = serde_json::to_vec(&serde_json::json!({
                "tasks": (0..n).map(|i| (*task(i)).clone()).collect::<Vec<_>>(),
                "more": (0..3).map(|i| (*task(i)).clone()).collect::<Vec<_>>(),
                "none": Vec::<Task>::new(),
                "later": {"x": 1},
            }))
            .unwrap();
            for threads in [1, 2, 4] {
                let chunks = view(n).encode(threads);
                let got: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                let a: serde_json::Value = serde_json::from_slice(&got).unwrap();
                let b: serde_json::Value = serde_json::from_slice(&expected).unwrap();
                assert_eq!(a, b, "n={n} threads={threads}");
                // And in order: task ids ascending as given.
                let ids: Vec<&str> =
                    a["tasks"].as_array().unwrap().iter().map(|t| t["task_id"]["value"].as_str().unwrap()).collect();
                let want: Vec<String> = (0..n).map(|i| format!("task-{i}")).collect();
                assert_eq!(ids, want);
            }
            assert_eq!(view(n).encode_to_vec(), view(n).encode(3).concat());
        }
    }
}
