//! Agora's agent <-> master protocol (Mesos used libprocess messages here; Agora uses JSON
//! over HTTP, shaped like the v1 scheduler API).
//!
//! Messages are externally tagged, `{"REREGISTER": {...}}` (`"PING"` for one without
//! fields): a decoder reads the tag first and decodes the body in one pass, where a `type`
//! field inside the body would make serde buffer the whole message (twice the cost for the
//! master, which decodes tens of thousands of re-registrations after a failover).
//!
//! The agent opens the connection: it POSTs REGISTER or REREGISTER to the master's
//! [`AGENT_PATH`] and keeps the response open as a RecordIO stream of [`MasterToAgent`]
//! messages. Its other calls (status updates, pongs, executor exits) are separate POSTs that
//! carry the `session_id` the master handed out in REGISTERED; a call from a superseded
//! session is refused with 403, so a stale agent process can never act on the cluster.
use crate::ids::*;
use crate::json::Bytes;
use crate::mesos::*;
use crate::resources::Resource;
use serde::{Deserialize, Serialize};

pub const AGENT_PATH: &str = "/agora/v1/agent";

/// A status update as it travels agent -> master (Mesos's `StatusUpdate`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub framework_id: FrameworkId,
    pub status: TaskStatus,
    /// The task's newest state at the agent, which may be ahead of `status` while an older
    /// update is still waiting for its acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_state: Option<TaskState>,
}

/// An executor the agent runs, as reported on re-registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutorReport {
    pub framework_id: FrameworkId,
    pub executor_info: ExecutorInfo,
}

#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentToMaster {
    /// A new agent (no id yet). The reply is the event stream.
    Register {
        agent_info: AgentInfo,
        version: String,
    },
    /// A known agent coming back, with everything it runs. The reply is the event stream.
    Reregister {
        agent_info: AgentInfo,
        version: String,
        #[serde(default)]
        frameworks: Vec<FrameworkInfo>,
        #[serde(default)]
        executors: Vec<ExecutorReport>,
        #[serde(default)]
        tasks: Vec<Task>,
        /// Tasks that ended here and whose last update was acknowledged, oldest first (the
        /// agent's own history, bounded by its limits). A master that did not know the
        /// agent (it failed over since) rebuilds its frameworks' completed tasks from them,
        /// as Mesos's master does from re-registering agents.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        completed_tasks: Vec<Task>,
    },
    StatusUpdate {
        agent_id: AgentId,
        session_id: String,
        update: StatusUpdate,
    },
    Pong {
        agent_id: AgentId,
        session_id: String,
    },
    ExecutorExited {
        agent_id: AgentId,
        session_id: String,
        framework_id: FrameworkId,
        executor_id: ExecutorId,
        status: Option<i32>,
    },
    ExecutorMessage {
        agent_id: AgentId,
        session_id: String,
        framework_id: FrameworkId,
        executor_id: ExecutorId,
        data: Bytes,
    },
}

impl AgentToMaster {
    /// The session a call was made in (none for a registration).
    pub fn session_id(&self) -> Option<&str> {
        match self {
            AgentToMaster::Register { .. } | AgentToMaster::Reregister { .. } => None,
            AgentToMaster::StatusUpdate { session_id, .. }
            | AgentToMaster::Pong { session_id, .. }
            | AgentToMaster::ExecutorExited { session_id, .. }
            | AgentToMaster::ExecutorMessage { session_id, .. } => Some(session_id),
        }
    }
}

// Messages are encoded and sent, never stored in bulk: their size spread does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MasterToAgent {
    Registered {
        agent_id: AgentId,
        session_id: String,
        master_info: MasterInfo,
    },
    Reregistered {
        agent_id: AgentId,
        session_id: String,
        master_info: MasterInfo,
    },
    RunTask {
        framework_info: FrameworkInfo,
        task: TaskInfo,
        /// The resources of the task with their allocation role, as the master charged them.
        #[serde(default)]
        resources: Vec<Resource>,
    },
    KillTask {
        framework_id: FrameworkId,
        task_id: TaskId,
        kill_policy: Option<KillPolicy>,
    },
    ShutdownExecutor {
        framework_id: FrameworkId,
        executor_id: ExecutorId,
    },
    ShutdownFramework {
        framework_id: FrameworkId,
    },
    UpdateFramework {
        framework_info: FrameworkInfo,
    },
    Acknowledge {
        framework_id: FrameworkId,
        task_id: TaskId,
        uuid: Bytes,
    },
    FrameworkMessage {
        framework_id: FrameworkId,
        executor_id: ExecutorId,
        data: Bytes,
    },
    Ping,
    /// The agent's dynamic reservations and persistent volumes, all of them, as the master
    /// now has them (after RESERVE, UNRESERVE, CREATE or DESTROY): the agent checkpoints
    /// them and makes or deletes volume directories to match.
    CheckpointResources {
        resources: Vec<Resource>,
    },
    /// The master refuses this agent (e.g. it was removed): the agent must stop.
    Shutdown {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_shapes() {
        let m = MasterToAgent::Ping;
        assert_eq!(serde_json::to_value(&m).unwrap(), serde_json::json!("PING"));
        let c = AgentToMaster::Pong { agent_id: AgentId::new("a"), session_id: "s".into() };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["PONG"]["session_id"], "s");
        let back: AgentToMaster = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }
}
