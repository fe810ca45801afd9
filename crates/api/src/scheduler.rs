//! The v1 scheduler API: `Call`s frameworks POST to `/api/v1/scheduler`, and the `Event`s
//! streamed back on the subscription connection.
use crate::ids::*;
use crate::json::{lenient_f64, write_f64, Bytes};
use crate::mesos::*;
use serde::{Deserialize, Serialize};

/// Heartbeat interval announced in SUBSCRIBED.
pub const HEARTBEAT_INTERVAL_SECS: f64 = 15.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallType {
    Subscribe,
    Teardown,
    Accept,
    Decline,
    AcceptInverseOffers,
    DeclineInverseOffers,
    Revive,
    Kill,
    Shutdown,
    Acknowledge,
    AcknowledgeOperationStatus,
    Reconcile,
    ReconcileOperations,
    Message,
    Request,
    Suppress,
    UpdateFramework,
    #[serde(other)]
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscribe {
    pub framework_info: FrameworkInfo,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed_roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_constraints: Option<serde_json::Value>,
}

/// One offer operation (`Offer.Operation`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    #[serde(rename = "type")]
    pub kind: OperationType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<OperationId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<Launch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_group: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreserve: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy: Option<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationType {
    Launch,
    LaunchGroup,
    Reserve,
    Unreserve,
    Create,
    Destroy,
    GrowVolume,
    ShrinkVolume,
    CreateDisk,
    DestroyDisk,
    #[serde(other)]
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    #[serde(default)]
    pub task_infos: Vec<TaskInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accept {
    #[serde(default)]
    pub offer_ids: Vec<OfferId>,
    #[serde(default)]
    pub operations: Vec<Operation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filters>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decline {
    #[serde(default)]
    pub offer_ids: Vec<OfferId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filters>,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Roles {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Deprecated single-role form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl Roles {
    pub fn all(&self) -> Vec<String> {
        let mut v = self.roles.clone();
        if let Some(r) = &self.role {
            v.push(r.clone());
        }
        v
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kill {
    pub task_id: TaskId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_policy: Option<KillPolicy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shutdown {
    pub executor_id: ExecutorId,
    pub agent_id: AgentId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Acknowledge {
    pub agent_id: AgentId,
    pub task_id: TaskId,
    pub uuid: Bytes,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconcileTask {
    pub task_id: TaskId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Reconcile {
    #[serde(default)]
    pub tasks: Vec<ReconcileTask>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub agent_id: AgentId,
    pub executor_id: ExecutorId,
    pub data: Bytes,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateFramework {
    pub framework_info: FrameworkInfo,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed_roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_constraints: Option<serde_json::Value>,
}

/// A scheduler `Call`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_id: Option<FrameworkId>,
    #[serde(rename = "type")]
    pub kind: CallType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Subscribe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<Accept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline: Option<Decline>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revive: Option<Roles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress: Option<Roles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<Kill>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<Shutdown>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledge: Option<Acknowledge>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<Reconcile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_framework: Option<UpdateFramework>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_inverse_offers: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_inverse_offers: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledge_operation_status: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile_operations: Option<serde_json::Value>,
}

impl Call {
    pub fn new(kind: CallType, framework_id: Option<FrameworkId>) -> Self {
        Call {
            framework_id,
            kind,
            subscribe: None,
            accept: None,
            decline: None,
            revive: None,
            suppress: None,
            kill: None,
            shutdown: None,
            acknowledge: None,
            reconcile: None,
            message: None,
            request: None,
            update_framework: None,
            accept_inverse_offers: None,
            decline_inverse_offers: None,
            acknowledge_operation_status: None,
            reconcile_operations: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Subscribed,
    Offers,
    InverseOffers,
    Rescind,
    RescindInverseOffer,
    Update,
    UpdateOperationStatus,
    Message,
    Failure,
    Error,
    Heartbeat,
    #[serde(other)]
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscribed {
    pub framework_id: FrameworkId,
    #[serde(default, deserialize_with = "lenient_f64", serialize_with = "write_f64")]
    pub heartbeat_interval_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_info: Option<MasterInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offers {
    #[serde(default)]
    pub offers: Vec<Offer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rescind {
    pub offer_id: OfferId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub status: TaskStatus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventMessage {
    pub agent_id: AgentId,
    pub executor_id: ExecutorId,
    pub data: Bytes,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<ExecutorId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub message: String,
}

/// A scheduler `Event`; exactly the field matching `type` is set (none for HEARTBEAT).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<Subscribed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offers: Option<Offers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescind: Option<Rescind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<Update>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<EventMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorEvent>,
}

impl Event {
    fn empty(kind: EventType) -> Self {
        Event {
            kind,
            subscribed: None,
            offers: None,
            rescind: None,
            update: None,
            message: None,
            failure: None,
            error: None,
        }
    }
    pub fn heartbeat() -> Self {
        Self::empty(EventType::Heartbeat)
    }
    pub fn subscribed(s: Subscribed) -> Self {
        Event { subscribed: Some(s), ..Self::empty(EventType::Subscribed) }
    }
    pub fn offers(offers: Vec<Offer>) -> Self {
        Event { offers: Some(Offers { offers }), ..Self::empty(EventType::Offers) }
    }
    pub fn rescind(offer_id: OfferId) -> Self {
        Event { rescind: Some(Rescind { offer_id }), ..Self::empty(EventType::Rescind) }
    }
    pub fn update(status: TaskStatus) -> Self {
        Event { update: Some(Update { status }), ..Self::empty(EventType::Update) }
    }
    pub fn message(m: EventMessage) -> Self {
        Event { message: Some(m), ..Self::empty(EventType::Message) }
    }
    pub fn failure(f: Failure) -> Self {
        Event { failure: Some(f), ..Self::empty(EventType::Failure) }
    }
    pub fn error(message: impl Into<String>) -> Self {
        Event { error: Some(ErrorEvent { message: message.into() }), ..Self::empty(EventType::Error) }
    }
}

/// Resources of an offer that a framework may use in LAUNCH, as a helper for clients.
pub fn offer_resources(offer: &Offer) -> crate::resources::Resources {
    crate::resources::Resources::from_vec(offer.resources.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_shapes() {
        let e = serde_json::to_value(Event::heartbeat()).unwrap();
        assert_eq!(e, serde_json::json!({"type":"HEARTBEAT"}));
        let e = serde_json::to_value(Event::error("boom")).unwrap();
        assert_eq!(e, serde_json::json!({"type":"ERROR","error":{"message":"boom"}}));
    }

    #[test]
    fn call_parses_with_junk() {
        let c: Call = serde_json::from_str(
            r#"{"type":"ACCEPT","framework_id":{"value":"f"},"accept":{"offer_ids":[{"value":"o"}],
            "operations":[{"type":"LAUNCH","launch":{"task_infos":[{"name":"t","task_id":{"value":"t"},
            "agent_id":{"value":"a"},"slave_id":{"value":"a"},"command":{"value":"true"}}]}}],
            "filters":{"refuse_seconds":"Infinity"}}}"#,
        )
        .unwrap();
        let a = c.accept.unwrap();
        assert!(a.filters.unwrap().refuse_seconds.is_infinite());
        assert_eq!(a.operations[0].launch.as_ref().unwrap().task_infos[0].name, "t");
        let c: Call = serde_json::from_str(r#"{"type":"FLY"}"#).unwrap();
        assert_eq!(c.kind, CallType::Unknown);
    }
}
