//! The v1 operator API (`POST /api/v1`): the calls Agora answers so far and their replies.
use crate::ids::*;
use crate::mesos::*;
use crate::resources::Resource;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallType {
    GetHealth,
    GetFlags,
    GetVersion,
    GetMetrics,
    GetState,
    GetAgents,
    GetFrameworks,
    GetExecutors,
    GetTasks,
    GetRoles,
    GetMaster,
    Teardown,
    MarkAgentGone,
    GetWeights,
    UpdateWeights,
    GetQuota,
    UpdateQuota,
    SetQuota,
    RemoveQuota,
    GetMaintenanceStatus,
    GetMaintenanceSchedule,
    UpdateMaintenanceSchedule,
    StartMaintenance,
    StopMaintenance,
    ReserveResources,
    UnreserveResources,
    CreateVolumes,
    DestroyVolumes,
    #[default]
    #[serde(other)]
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeardownCall {
    pub framework_id: FrameworkId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarkAgentGone {
    pub agent_id: AgentId,
}

/// RESERVE_RESOURCES / UNRESERVE_RESOURCES (`resources`), CREATE_VOLUMES /
/// DESTROY_VOLUMES (`volumes`): on one agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentResources {
    pub agent_id: AgentId,
    #[serde(default)]
    pub resources: Vec<Resource>,
    #[serde(default)]
    pub volumes: Vec<Resource>,
}

/// A role's weight (Mesos's `WeightInfo`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightInfo {
    pub weight: f64,
    #[serde(default)]
    pub role: String,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct WeightInfos {
    #[serde(default)]
    pub weight_infos: Vec<WeightInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Call {
    #[serde(rename = "type")]
    pub kind: CallType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teardown: Option<TeardownCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark_agent_gone: Option<MarkAgentGone>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_weights: Option<WeightInfos>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_quota: Option<crate::quota::UpdateQuota>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_quota: Option<crate::quota::SetQuota>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_quota: Option<crate::quota::RemoveQuota>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_maintenance_schedule: Option<crate::maintenance::UpdateSchedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_maintenance: Option<crate::maintenance::Machines>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_maintenance: Option<crate::maintenance::Machines>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_resources: Option<AgentResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreserve_resources: Option<AgentResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_volumes: Option<AgentResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy_volumes: Option<AgentResources>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentEntry {
    pub agent_info: AgentInfo,
    pub active: bool,
    #[serde(default)]
    pub deactivated: bool,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_time: Option<TimeInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reregistered_time: Option<TimeInfo>,
    #[serde(default)]
    pub total_resources: Vec<Resource>,
    #[serde(default)]
    pub allocated_resources: Vec<Resource>,
    #[serde(default)]
    pub offered_resources: Vec<Resource>,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct GetAgents {
    #[serde(default)]
    pub agents: Vec<AgentEntry>,
    #[serde(default)]
    pub recovered_agents: Vec<AgentInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameworkEntry {
    pub framework_info: FrameworkInfo,
    pub active: bool,
    pub connected: bool,
    #[serde(default)]
    pub recovered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_time: Option<TimeInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unregistered_time: Option<TimeInfo>,
    #[serde(default)]
    pub offers: Vec<Offer>,
    #[serde(default)]
    pub allocated_resources: Vec<Resource>,
    #[serde(default)]
    pub offered_resources: Vec<Resource>,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct GetFrameworks {
    #[serde(default)]
    pub frameworks: Vec<FrameworkEntry>,
    #[serde(default)]
    pub completed_frameworks: Vec<FrameworkEntry>,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct GetTasks {
    #[serde(default)]
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub unreachable_tasks: Vec<Task>,
    #[serde(default)]
    pub completed_tasks: Vec<Task>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutorEntry {
    pub executor_info: ExecutorInfo,
    pub agent_id: AgentId,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct GetExecutors {
    #[serde(default)]
    pub executors: Vec<ExecutorEntry>,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct GetState {
    #[serde(default)]
    pub get_tasks: GetTasks,
    #[serde(default)]
    pub get_executors: GetExecutors,
    #[serde(default)]
    pub get_frameworks: GetFrameworks,
    #[serde(default)]
    pub get_agents: GetAgents,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetMaster {
    pub master_info: MasterInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elected_time: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_user: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetVersion {
    pub version_info: VersionInfo,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetHealth {
    pub healthy: bool,
}

/// An operator `Response`: `{"type": T, "<t>": {...}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    #[serde(rename = "type")]
    pub kind: CallType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_health: Option<GetHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_version: Option<GetVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_state: Option<GetState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_agents: Option<GetAgents>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_frameworks: Option<GetFrameworks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_executors: Option<GetExecutors>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_tasks: Option<GetTasks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_master: Option<GetMaster>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_flags: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_metrics: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_roles: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_weights: Option<WeightInfos>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_quota: Option<crate::quota::GetQuota>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_maintenance_status: Option<crate::maintenance::GetStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_maintenance_schedule: Option<crate::maintenance::GetSchedule>,
}

impl Response {
    pub fn of(kind: CallType) -> Self {
        Response { kind, ..Default::default() }
    }
}
