//! Status updates the executor sends: how a task's end maps to a state, message and
//! reason, and the fields every executor update carries.
use agora_api::json::Bytes;
use agora_api::{AgentId, ExecutorId, Reason, Source, TaskId, TaskState, TaskStatus};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How the task's leading process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Termination {
    /// Exited with this status.
    Exited(i32),
    /// Terminated by this signal number.
    Signaled(i32),
    /// The status could not be read.
    Unknown(String),
}

impl Termination {
    pub(crate) fn from_exit_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        if let Some(code) = status.code() {
            Termination::Exited(code)
        } else if let Some(sig) = status.signal() {
            Termination::Signaled(sig)
        } else {
            Termination::Unknown(format!("{status}"))
        }
    }

    /// `"Command exited with status 3"`, `"Command terminated with signal SIGKILL"`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Termination::Exited(code) => format!("Command exited with status {code}"),
            Termination::Signaled(sig) => {
                format!("Command terminated with signal {}", signal_name(*sig))
            }
            Termination::Unknown(why) => {
                format!("Command terminated with an unknown status: {why}")
            }
        }
    }
}

/// The `SIG*` name of a signal number, or the number itself when it has none.
pub(crate) fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("{sig}"),
    }
}

/// Why the executor itself killed the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KillCause {
    /// A KILL event from the agent (the framework or an operator asked).
    Requested,
    /// A SHUTDOWN event from the agent.
    Shutdown,
    /// `TaskInfo.max_completion_time` passed.
    MaxCompletionTime(Duration),
}

/// The terminal state, message and reason for a task whose process ended.
pub(crate) fn outcome(end: &Termination, killed: Option<KillCause>) -> (TaskState, String, Option<Reason>) {
    match killed {
        Some(KillCause::MaxCompletionTime(limit)) => (
            TaskState::Failed,
            format!(
                "Task exceeded its maximum completion time of {}: {}",
                crate::duration::format_mesos_duration(limit),
                end.describe()
            ),
            Some(Reason::ReasonMaxCompletionTimeReached),
        ),
        Some(KillCause::Requested | KillCause::Shutdown) => (TaskState::Killed, end.describe(), None),
        None => match end {
            Termination::Exited(0) => (TaskState::Finished, end.describe(), None),
            _ => (TaskState::Failed, end.describe(), None),
        },
    }
}

/// A fresh status update from this executor: `source`, `executor_id`, `agent_id` (when
/// known), a random 16-byte `uuid` and the current `timestamp` are set.
pub(crate) fn new_update(
    task_id: &TaskId,
    state: TaskState,
    message: Option<String>,
    reason: Option<Reason>,
    executor_id: &ExecutorId,
    agent_id: Option<&AgentId>,
) -> TaskStatus {
    let mut s = TaskStatus::new(task_id.clone(), state);
    s.message = message;
    s.reason = reason;
    s.source = Some(Source::Executor);
    s.executor_id = Some(executor_id.clone());
    s.agent_id = agent_id.cloned();
    s.uuid = Some(Bytes(uuid::Uuid::new_v4().into_bytes().to_vec()));
    s.timestamp = Some(now_secs());
    s
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn exit_codes_map_to_finished_and_failed() {
        let (state, msg, reason) = outcome(&Termination::Exited(0), None);
        assert_eq!((state, msg.as_str(), reason), (TaskState::Finished, "Command exited with status 0", None));
        let (state, msg, reason) = outcome(&Termination::Exited(3), None);
        assert_eq!((state, msg.as_str(), reason), (TaskState::Failed, "Command exited with status 3", None));
        let (state, msg, _) = outcome(&Termination::Exited(127), None);
        assert_eq!((state, msg.as_str()), (TaskState::Failed, "Command exited with status 127"));
    }

    #[test]
    fn foreign_signal_is_failed_with_its_name() {
        let (state, msg, reason) = outcome(&Termination::Signaled(Signal::SIGSEGV as i32), None);
        assert_eq!(state, TaskState::Failed);
        assert_eq!(msg, "Command terminated with signal SIGSEGV");
        assert_eq!(reason, None);
        assert_eq!(Termination::Signaled(200).describe(), "Command terminated with signal 200");
    }

    #[test]
    fn our_kills_are_killed() {
        let (state, msg, _) = outcome(&Termination::Signaled(Signal::SIGTERM as i32), Some(KillCause::Requested));
        assert_eq!((state, msg.as_str()), (TaskState::Killed, "Command terminated with signal SIGTERM"));
        let (state, msg, _) = outcome(&Termination::Signaled(Signal::SIGKILL as i32), Some(KillCause::Shutdown));
        assert_eq!((state, msg.as_str()), (TaskState::Killed, "Command terminated with signal SIGKILL"));
        // A task that traps SIGTERM and exits is still reported as killed.
        let (state, msg, _) = outcome(&Termination::Exited(0), Some(KillCause::Requested));
        assert_eq!((state, msg.as_str()), (TaskState::Killed, "Command exited with status 0"));
    }

    #[test]
    fn max_completion_time_is_failed_with_reason() {
        let (state, msg, reason) = outcome(
            &Termination::Signaled(Signal::SIGTERM as i32),
            Some(KillCause::MaxCompletionTime(Duration::from_millis(1500))),
        );
        assert_eq!(state, TaskState::Failed);
        assert_eq!(reason, Some(Reason::ReasonMaxCompletionTimeReached));
        assert_eq!(msg, "Task exceeded its maximum completion time of 1.5secs: Command terminated with signal SIGTERM");
    }

    #[test]
    fn updates_carry_executor_fields() {
        let a = new_update(
            &TaskId::new("t1"),
            TaskState::Running,
            None,
            None,
            &ExecutorId::new("e1"),
            Some(&AgentId::new("a-S0")),
        );
        let b = new_update(&TaskId::new("t1"), TaskState::Running, None, None, &ExecutorId::new("e1"), None);
        assert_eq!(a.source, Some(Source::Executor));
        assert_eq!(a.executor_id, Some(ExecutorId::new("e1")));
        assert_eq!(a.agent_id, Some(AgentId::new("a-S0")));
        assert_eq!(b.agent_id, None);
        assert_eq!(a.uuid.as_ref().map(|u| u.0.len()), Some(16));
        assert_ne!(a.uuid, b.uuid);
        let ts = a.timestamp.expect("timestamp set");
        assert!(ts > 1.6e9, "{ts}");
        let json = serde_json::to_value(&a).expect("serialises");
        assert_eq!(json["source"], "SOURCE_EXECUTOR");
        assert_eq!(json["state"], "TASK_RUNNING");
        assert!(json["uuid"].as_str().is_some_and(|u| u.len() == 24), "{json}");
        assert!(json["timestamp"].is_f64());
        assert!(json.get("message").is_none());
    }
}
