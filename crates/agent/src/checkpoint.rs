//! The agent's checkpoints under `<work-dir>/meta`: everything a restarted agent needs to
//! recover its frameworks, executors, tasks and unacknowledged status updates.
//!
//! ```text
//! meta/boot_id                                   the host's boot id when last written
//! meta/agent.json                                AgentInfo (with the id the master gave)
//! meta/frameworks/<fw>/framework.json            FrameworkInfo (checkpointing frameworks only)
//! meta/frameworks/<fw>/executors/<ex>/executor.json   ExecutorRecord
//! meta/frameworks/<fw>/executors/<ex>/tasks/<task>/task.json     TaskInfo
//! meta/frameworks/<fw>/executors/<ex>/tasks/<task>/updates.log   one JSON record a line
//! ```
//!
//! Records are written atomically (temp file, fsync, rename, fsync of the directory).
//! `updates.log` is append-only: every status update and every acknowledgement is one line,
//! fsynced before it is acted on; a torn last line (a crash mid-append) is ignored.
use agora_api::json::Bytes as B64;
use agora_api::*;
use agora_containerizer::fsutil::{read_json, write_json};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// An executor as checkpointed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutorRecord {
    pub executor_info: ExecutorInfo,
    pub is_command: bool,
    pub container_id: ContainerId,
    pub directory: PathBuf,
    /// What the containerizer returned at launch (the supervisor's pid, for `linux`).
    #[serde(default)]
    pub pid: u32,
}

/// One line of `updates.log`.
#[allow(clippy::large_enum_variant)] // written and read one at a time
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateRecord {
    Update(TaskStatus),
    Ack(B64),
}

/// What recovery found for one task.
#[derive(Clone, Debug)]
pub struct RecoveredTask {
    pub info: TaskInfo,
    /// Every update recorded, in order.
    pub updates: Vec<TaskStatus>,
    /// Those not yet acknowledged, in order.
    pub pending: Vec<TaskStatus>,
}

#[derive(Clone, Debug)]
pub struct RecoveredExecutor {
    pub record: ExecutorRecord,
    pub tasks: Vec<RecoveredTask>,
}

#[derive(Clone, Debug)]
pub struct RecoveredFramework {
    pub info: FrameworkInfo,
    pub executors: Vec<RecoveredExecutor>,
}

#[derive(Clone, Debug, Default)]
pub struct Recovered {
    pub agent_info: Option<AgentInfo>,
    /// The boot id the checkpoint was written under (a different one means a reboot).
    pub boot_id: Option<String>,
    pub frameworks: Vec<RecoveredFramework>,
    /// Problems met in non-strict mode (the parts they affected were skipped).
    pub errors: Vec<String>,
}

/// Escapes an id into one safe path component.
pub fn component(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    if out.is_empty() || out == "." || out == ".." {
        out = out.replace('.', "%2E");
        if out.is_empty() {
            out.push_str("%00");
        }
    }
    out
}

/// The current host boot id.
pub fn current_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[derive(Clone, Debug)]
pub struct Checkpoints {
    root: PathBuf,
}

impl Checkpoints {
    pub fn new(work_dir: &Path) -> Self {
        Checkpoints { root: work_dir.join("meta") }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn framework_dir(&self, fid: &FrameworkId) -> PathBuf {
        self.root.join("frameworks").join(component(&fid.value))
    }

    fn executor_dir(&self, fid: &FrameworkId, eid: &ExecutorId) -> PathBuf {
        self.framework_dir(fid).join("executors").join(component(&eid.value))
    }

    fn task_dir(&self, fid: &FrameworkId, eid: &ExecutorId, tid: &TaskId) -> PathBuf {
        self.executor_dir(fid, eid).join("tasks").join(component(&tid.value))
    }

    fn write<T: Serialize>(&self, path: &Path, v: &T) -> Result<(), CheckpointError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        write_json(path, v).map_err(io(path))
    }

    pub fn write_agent(&self, info: &AgentInfo) -> Result<(), CheckpointError> {
        self.write(&self.root.join("agent.json"), info)?;
        let p = self.root.join("boot_id");
        agora_containerizer::fsutil::write_atomic(&p, current_boot_id().as_bytes()).map_err(io(&p))
    }

    pub fn write_framework(&self, info: &FrameworkInfo) -> Result<(), CheckpointError> {
        let fid = info.id.clone().unwrap_or_default();
        self.write(&self.framework_dir(&fid).join("framework.json"), info)
    }

    pub fn write_executor(&self, fid: &FrameworkId, rec: &ExecutorRecord) -> Result<(), CheckpointError> {
        self.write(&self.executor_dir(fid, &rec.executor_info.executor_id).join("executor.json"), rec)
    }

    pub fn write_task(&self, fid: &FrameworkId, eid: &ExecutorId, task: &TaskInfo) -> Result<(), CheckpointError> {
        self.write(&self.task_dir(fid, eid, &task.task_id).join("task.json"), task)
    }

    /// Appends one record to a task's update log and fsyncs it.
    pub fn append_update(
        &self,
        fid: &FrameworkId,
        eid: &ExecutorId,
        tid: &TaskId,
        rec: &UpdateRecord,
    ) -> Result<(), CheckpointError> {
        let dir = self.task_dir(fid, eid, tid);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join("updates.log");
        let mut line =
            serde_json::to_vec(rec).map_err(|e| CheckpointError::Corrupt { path: path.clone(), why: e.to_string() })?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        f.write_all(&line).map_err(io(&path))?;
        f.sync_data().map_err(io(&path))
    }

    pub fn remove_executor(&self, fid: &FrameworkId, eid: &ExecutorId) {
        let _ = std::fs::remove_dir_all(self.executor_dir(fid, eid));
    }

    pub fn remove_framework(&self, fid: &FrameworkId) {
        let _ = std::fs::remove_dir_all(self.framework_dir(fid));
    }

    /// Removes everything (a reboot, `--recover=cleanup`, or a refused reconfiguration).
    pub fn remove_all(&self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }

    /// Reads everything back. `strict`: the first unreadable record is an error naming it;
    /// otherwise it is skipped (with what depends on it) and listed in `errors`.
    pub fn recover(&self, strict: bool) -> Result<Recovered, CheckpointError> {
        let mut out = Recovered::default();
        let soft = |e: CheckpointError, out: &mut Recovered| -> Result<(), CheckpointError> {
            if strict {
                Err(e)
            } else {
                out.errors.push(e.to_string());
                Ok(())
            }
        };
        let agent_path = self.root.join("agent.json");
        match read_json::<AgentInfo>(&agent_path) {
            Ok(a) => out.agent_info = a,
            Err(e) => soft(CheckpointError::Corrupt { path: agent_path.clone(), why: e.to_string() }, &mut out)?,
        }
        out.boot_id = std::fs::read_to_string(self.root.join("boot_id")).ok().map(|s| s.trim().to_string());
        if out.agent_info.is_none() {
            return Ok(out);
        }
        for fdir in list_dirs(&self.root.join("frameworks")) {
            let path = fdir.join("framework.json");
            let info = match read_json::<FrameworkInfo>(&path) {
                Ok(Some(i)) if i.id.is_some() => i,
                // The directory is made before its record: a crash in between leaves a
                // directory without one, which is an unfinished launch, not corruption.
                Ok(None) => continue,
                Ok(Some(_)) => {
                    soft(CheckpointError::Corrupt { path, why: "no framework id".into() }, &mut out)?;
                    continue;
                }
                Err(e) => {
                    soft(CheckpointError::Corrupt { path, why: e.to_string() }, &mut out)?;
                    continue;
                }
            };
            let mut fw = RecoveredFramework { info, executors: vec![] };
            for edir in list_dirs(&fdir.join("executors")) {
                let path = edir.join("executor.json");
                let record = match read_json::<ExecutorRecord>(&path) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        soft(CheckpointError::Corrupt { path, why: e.to_string() }, &mut out)?;
                        continue;
                    }
                };
                let mut ex = RecoveredExecutor { record, tasks: vec![] };
                for tdir in list_dirs(&edir.join("tasks")) {
                    let path = tdir.join("task.json");
                    let info = match read_json::<TaskInfo>(&path) {
                        Ok(Some(t)) => t,
                        Ok(None) => continue,
                        Err(e) => {
                            soft(CheckpointError::Corrupt { path, why: e.to_string() }, &mut out)?;
                            continue;
                        }
                    };
                    match read_updates(&tdir.join("updates.log")) {
                        Ok((updates, pending)) => ex.tasks.push(RecoveredTask { info, updates, pending }),
                        Err(e) => soft(e, &mut out)?,
                    }
                }
                fw.executors.push(ex);
            }
            out.frameworks.push(fw);
        }
        Ok(out)
    }
}

fn list_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Replays an update log: all updates, and the ones not acknowledged (in order).
fn read_updates(path: &Path) -> Result<(Vec<TaskStatus>, Vec<TaskStatus>), CheckpointError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], vec![])),
        Err(e) => return Err(CheckpointError::Io { path: path.to_path_buf(), source: e }),
    };
    let mut all = Vec::new();
    let mut pending: std::collections::VecDeque<TaskStatus> = Default::default();
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let complete = if data.ends_with(b"\n") { lines.len() - 1 } else { lines.len() };
    for (i, line) in lines.iter().enumerate().take(complete.max(lines.len())) {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<UpdateRecord>(line) {
            Ok(UpdateRecord::Update(s)) => {
                all.push(s.clone());
                pending.push_back(s);
            }
            Ok(UpdateRecord::Ack(u)) => {
                if pending.front().and_then(|h| h.uuid.as_ref()) == Some(&u) {
                    pending.pop_front();
                }
            }
            // A torn final line is a crash mid-append: what it held was never acted on.
            Err(_) if i + 1 >= complete => break,
            Err(e) => {
                return Err(CheckpointError::Corrupt { path: path.to_path_buf(), why: format!("line {}: {e}", i + 1) });
            }
        }
    }
    Ok((all, pending.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("agora-ckpt-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn status(state: TaskState, n: u8) -> TaskStatus {
        let mut s = TaskStatus::new(TaskId::new("t"), state);
        s.uuid = Some(B64(vec![n; 16]));
        s
    }

    fn framework() -> FrameworkInfo {
        serde_json::from_value(
            serde_json::json!({"user": "u", "name": "f", "id": {"value": "f/1"}, "checkpoint": true}),
        )
        .unwrap()
    }

    #[test]
    fn components_are_safe() {
        assert_eq!(component("a/b"), "a%2Fb");
        assert_eq!(component(".."), "%2E%2E");
        assert_eq!(component(""), "%00");
        assert_eq!(component("task-1.x_y"), "task-1.x_y");
    }

    #[test]
    fn roundtrip_with_acks_and_a_torn_tail() {
        let d = dir();
        let c = Checkpoints::new(&d);
        let agent: AgentInfo =
            serde_json::from_value(serde_json::json!({"hostname": "h", "id": {"value": "a"}})).unwrap();
        c.write_agent(&agent).unwrap();
        let fw = framework();
        let fid = fw.id.clone().unwrap();
        c.write_framework(&fw).unwrap();
        let eid = ExecutorId::new("e");
        let exec: ExecutorInfo = serde_json::from_value(serde_json::json!({"executor_id": {"value": "e"}})).unwrap();
        c.write_executor(
            &fid,
            &ExecutorRecord {
                executor_info: exec,
                is_command: true,
                container_id: ContainerId::new("c"),
                directory: "/x".into(),
                pid: 0,
            },
        )
        .unwrap();
        let task: TaskInfo = serde_json::from_value(
            serde_json::json!({"name": "t", "task_id": {"value": "t"}, "agent_id": {"value": "a"}}),
        )
        .unwrap();
        c.write_task(&fid, &eid, &task).unwrap();
        let tid = TaskId::new("t");
        c.append_update(&fid, &eid, &tid, &UpdateRecord::Update(status(TaskState::Starting, 1))).unwrap();
        c.append_update(&fid, &eid, &tid, &UpdateRecord::Ack(B64(vec![1; 16]))).unwrap();
        c.append_update(&fid, &eid, &tid, &UpdateRecord::Update(status(TaskState::Running, 2))).unwrap();
        // A crash mid-append.
        let log = d.join("meta/frameworks/f%2F1/executors/e/tasks/t/updates.log");
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"update\":{\"task_id\":").unwrap();
        let r = c.recover(true).unwrap();
        assert_eq!(r.agent_info.unwrap().id.unwrap().value, "a");
        assert_eq!(r.boot_id, Some(current_boot_id()));
        let t = &r.frameworks[0].executors[0].tasks[0];
        assert_eq!(t.updates.len(), 2);
        assert_eq!(t.pending.len(), 1);
        assert_eq!(t.pending[0].state, TaskState::Running);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn strict_names_the_corrupt_file_and_lax_recovers_the_rest() {
        let d = dir();
        let c = Checkpoints::new(&d);
        let agent: AgentInfo =
            serde_json::from_value(serde_json::json!({"hostname": "h", "id": {"value": "a"}})).unwrap();
        c.write_agent(&agent).unwrap();
        let good = framework();
        c.write_framework(&good).unwrap();
        let bad_dir = d.join("meta/frameworks/bad");
        std::fs::create_dir_all(&bad_dir).unwrap();
        std::fs::write(bad_dir.join("framework.json"), b"{not json").unwrap();
        let e = c.recover(true).unwrap_err().to_string();
        assert!(e.contains("frameworks/bad/framework.json"), "{e}");
        let r = c.recover(false).unwrap();
        assert_eq!(r.frameworks.len(), 1);
        assert_eq!(r.errors.len(), 1);
        // A corrupt line in the middle of a log is corruption, not a torn tail.
        let fid = good.id.clone().unwrap();
        let (eid, tid) = (ExecutorId::new("e"), TaskId::new("t"));
        let exec: ExecutorInfo = serde_json::from_value(serde_json::json!({"executor_id": {"value": "e"}})).unwrap();
        c.write_executor(
            &fid,
            &ExecutorRecord {
                executor_info: exec,
                is_command: true,
                container_id: ContainerId::new("c"),
                directory: "/x".into(),
                pid: 0,
            },
        )
        .unwrap();
        let task: TaskInfo = serde_json::from_value(
            serde_json::json!({"name": "t", "task_id": {"value": "t"}, "agent_id": {"value": "a"}}),
        )
        .unwrap();
        c.write_task(&fid, &eid, &task).unwrap();
        let log = d.join("meta/frameworks/f%2F1/executors/e/tasks/t/updates.log");
        std::fs::write(&log, b"garbage\n{\"ack\":\"AQEBAQEBAQEBAQEBAQEBAQ==\"}\n").unwrap();
        std::fs::remove_dir_all(&bad_dir).unwrap();
        let e = c.recover(true).unwrap_err().to_string();
        assert!(e.contains("updates.log") && e.contains("line 1"), "{e}");
        let _ = tid;
        std::fs::remove_dir_all(d).unwrap();
    }
}
