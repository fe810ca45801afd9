//! The v1 executor API: calls executors POST to the agent's `/api/v1/executor` and the
//! events streamed back on the subscription.
use crate::ids::*;
use crate::json::Bytes;
use crate::mesos::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallType {
    Subscribe,
    Update,
    Message,
    Heartbeat,
    #[serde(other)]
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnackedUpdate {
    pub status: TaskStatus,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Subscribe {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unacknowledged_tasks: Vec<TaskInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unacknowledged_updates: Vec<UnackedUpdate>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateCall {
    pub status: TaskStatus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageCall {
    pub data: Bytes,
}

/// An executor `Call`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub executor_id: ExecutorId,
    pub framework_id: FrameworkId,
    #[serde(rename = "type")]
    pub kind: CallType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Subscribe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageCall>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Subscribed,
    Launch,
    LaunchGroup,
    Kill,
    Acknowledged,
    Message,
    Error,
    Shutdown,
    Heartbeat,
    #[serde(other)]
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscribed {
    pub executor_info: ExecutorInfo,
    pub framework_info: FrameworkInfo,
    pub agent_info: AgentInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<ContainerId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchEvent {
    pub task: TaskInfo,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KillEvent {
    pub task_id: TaskId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_policy: Option<KillPolicy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AcknowledgedEvent {
    pub task_id: TaskId,
    pub uuid: Bytes,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageEvent {
    pub data: Bytes,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub message: String,
}

/// An executor `Event`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<Subscribed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<KillEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<AcknowledgedEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorEvent>,
}

impl Event {
    pub fn of(kind: EventType) -> Self {
        Event { kind, subscribed: None, launch: None, kill: None, acknowledged: None, message: None, error: None }
    }
}
