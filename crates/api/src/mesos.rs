//! Messages of `mesos.proto` (v1) that Agora reads and writes.
use crate::ids::*;
use crate::json::{exact_vec, lenient_f64, lenient_i64, lenient_opt_f64, write_f64, Bytes};
use crate::resources::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// An optional enum: an unknown name (or a value that is not a name) is dropped rather
/// than rejected (stout's rule). The name is matched where it lies in the input, not
/// through a `serde_json::Value` (an allocation per status, two per re-registered task).
pub fn lenient_enum<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    use serde::de::{self, IgnoredAny, IntoDeserializer, Visitor};
    struct Lenient<T>(std::marker::PhantomData<T>);
    impl<'de, T: DeserializeOwned> Visitor<'de> for Lenient<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an enum name")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Option<T>, E> {
            let d: de::value::StrDeserializer<'_, de::value::Error> = s.into_deserializer();
            Ok(T::deserialize(d).ok())
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Option<T>, A::Error> {
            while a.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Option<T>, A::Error> {
            while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    d.deserialize_option(Lenient(std::marker::PhantomData))
}

fn default_true() -> bool {
    true
}

fn default_star() -> String {
    "*".to_string()
}

#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Label {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Labels {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Label>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DurationInfo {
    #[serde(deserialize_with = "lenient_i64")]
    pub nanoseconds: i64,
}

impl DurationInfo {
    pub fn from_secs_f64(s: f64) -> Self {
        Self { nanoseconds: (s * 1e9) as i64 }
    }
    pub fn as_duration(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.nanoseconds.max(0) as u64)
    }
}

pub type TimeInfo = DurationInfo;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameworkCapability {
    #[serde(rename = "type")]
    pub kind: String,
}

/// `FrameworkInfo`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameworkInfo {
    pub user: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<FrameworkId>,
    #[serde(default, deserialize_with = "lenient_f64", serialize_with = "write_f64")]
    pub failover_timeout: f64,
    #[serde(default)]
    pub checkpoint: bool,
    #[serde(default = "default_star", skip_serializing)]
    pub role: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webui_url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<FrameworkCapability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_filters: Option<serde_json::Value>,
}

impl FrameworkInfo {
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c.kind == name)
    }
    pub fn partition_aware(&self) -> bool {
        self.has_capability("PARTITION_AWARE")
    }
    /// The roles the framework subscribes to: `roles` with MULTI_ROLE, else the single `role`.
    pub fn effective_roles(&self) -> Vec<String> {
        if self.has_capability("MULTI_ROLE") {
            self.roles.clone()
        } else {
            vec![self.role.clone()]
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attribute {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: crate::resources::ValueType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalar: Option<crate::resources::Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<crate::resources::Ranges>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<crate::resources::Set>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<crate::resources::TextValue>,
}

impl Attribute {
    /// Parses `rack:r1;zone:a;level:2` into attributes (numbers become scalars).
    pub fn parse_list(text: &str) -> Result<Vec<Attribute>, String> {
        let mut out = Vec::new();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once(':').ok_or_else(|| format!("attribute '{part}' is not NAME:VALUE"))?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                return Err(format!("attribute '{part}' has an empty name"));
            }
            let attr = if let Ok(n) = v.parse::<f64>() {
                Attribute {
                    name: k.into(),
                    kind: crate::resources::ValueType::Scalar,
                    scalar: Some(crate::resources::Scalar { value: n }),
                    ranges: None,
                    set: None,
                    text: None,
                }
            } else {
                Attribute {
                    name: k.into(),
                    kind: crate::resources::ValueType::Text,
                    scalar: None,
                    ranges: None,
                    set: None,
                    text: Some(crate::resources::TextValue { value: v.into() }),
                }
            };
            out.push(attr);
        }
        Ok(out)
    }

    /// The value as v0 endpoints show it.
    pub fn legacy_value(&self) -> serde_json::Value {
        if let Some(s) = &self.scalar {
            serde_json::json!(s.value)
        } else if let Some(t) = &self.text {
            serde_json::json!(t.value)
        } else if let Some(s) = &self.set {
            serde_json::json!(format!("{{{}}}", s.item.join(",")))
        } else if let Some(r) = &self.ranges {
            let v: Vec<(u64, u64)> = r.range.iter().map(|r| (r.begin, r.end)).collect();
            serde_json::json!(crate::resources::format_ranges(&v))
        } else {
            serde_json::Value::Null
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub port: u32,
}

/// `MasterInfo`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MasterInfo {
    pub id: String,
    /// IPv4 address as a uint32 in network byte order, as Mesos encodes it.
    pub ip: u32,
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<FrameworkCapability>,
}

/// `AgentInfo`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub hostname: String,
    #[serde(default = "default_agent_port")]
    pub port: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "exact_vec")]
    pub resources: Vec<Resource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<serde_json::Value>,
}

fn default_agent_port() -> u32 {
    5051
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub id: OfferId,
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executor_ids: Vec<ExecutorId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_info: Option<crate::resources::AllocationInfo>,
    /// Set when the agent's machine is scheduled for maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailability: Option<crate::maintenance::Unavailability>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVariable {
    pub name: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Environment {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<EnvVariable>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandUri {
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<bool>,
    #[serde(default = "default_true")]
    pub extract: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file: Option<String>,
}

/// `CommandInfo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandInfo {
    #[serde(default = "default_true")]
    pub shell: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arguments: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<CommandUri>,
}

impl CommandInfo {
    pub fn shell(cmd: impl Into<String>) -> Self {
        CommandInfo {
            shell: true,
            value: Some(cmd.into()),
            arguments: vec![],
            environment: None,
            user: None,
            uris: vec![],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutorType {
    Default,
    Custom,
}

/// `ExecutorInfo`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutorInfo {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_enum")]
    pub kind: Option<ExecutorType>,
    pub executor_id: ExecutorId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_id: Option<FrameworkId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "exact_vec")]
    pub resources: Vec<Resource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_period: Option<DurationInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KillPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<DurationInfo>,
}

/// `TaskInfo`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub name: String,
    pub task_id: TaskId,
    pub agent_id: AgentId,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "exact_vec")]
    pub resources: Vec<Resource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_policy: Option<KillPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_time: Option<DurationInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<serde_json::Value>,
}

impl TaskInfo {
    /// A task run by the built-in command executor; every optional field unset.
    pub fn command(task_id: TaskId, agent_id: AgentId, resources: Vec<Resource>, command: CommandInfo) -> Self {
        TaskInfo {
            name: task_id.value.to_string(),
            task_id,
            agent_id,
            resources,
            executor: None,
            command: Some(command),
            container: None,
            health_check: None,
            check: None,
            kill_policy: None,
            data: None,
            labels: None,
            discovery: None,
            max_completion_time: None,
            limits: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(clippy::enum_variant_names)]
pub enum TaskState {
    #[serde(rename = "TASK_STAGING")]
    Staging,
    #[serde(rename = "TASK_STARTING")]
    Starting,
    #[serde(rename = "TASK_RUNNING")]
    Running,
    #[serde(rename = "TASK_KILLING")]
    Killing,
    #[serde(rename = "TASK_FINISHED")]
    Finished,
    #[serde(rename = "TASK_FAILED")]
    Failed,
    #[serde(rename = "TASK_KILLED")]
    Killed,
    #[serde(rename = "TASK_ERROR")]
    Error,
    #[serde(rename = "TASK_LOST")]
    Lost,
    #[serde(rename = "TASK_DROPPED")]
    Dropped,
    #[serde(rename = "TASK_UNREACHABLE")]
    Unreachable,
    #[serde(rename = "TASK_GONE")]
    Gone,
    #[serde(rename = "TASK_GONE_BY_OPERATOR")]
    GoneByOperator,
    #[serde(rename = "TASK_UNKNOWN")]
    Unknown,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished
                | TaskState::Failed
                | TaskState::Killed
                | TaskState::Error
                | TaskState::Lost
                | TaskState::Dropped
                | TaskState::Gone
                | TaskState::GoneByOperator
        )
    }

    /// The state a framework without PARTITION_AWARE sees.
    pub fn for_framework(self, partition_aware: bool) -> TaskState {
        if partition_aware {
            return self;
        }
        match self {
            TaskState::Dropped
            | TaskState::Unreachable
            | TaskState::Gone
            | TaskState::GoneByOperator
            | TaskState::Unknown => TaskState::Lost,
            s => s,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TaskState::Staging => "TASK_STAGING",
            TaskState::Starting => "TASK_STARTING",
            TaskState::Running => "TASK_RUNNING",
            TaskState::Killing => "TASK_KILLING",
            TaskState::Finished => "TASK_FINISHED",
            TaskState::Failed => "TASK_FAILED",
            TaskState::Killed => "TASK_KILLED",
            TaskState::Error => "TASK_ERROR",
            TaskState::Lost => "TASK_LOST",
            TaskState::Dropped => "TASK_DROPPED",
            TaskState::Unreachable => "TASK_UNREACHABLE",
            TaskState::Gone => "TASK_GONE",
            TaskState::GoneByOperator => "TASK_GONE_BY_OPERATOR",
            TaskState::Unknown => "TASK_UNKNOWN",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    #[serde(rename = "SOURCE_MASTER")]
    Master,
    #[serde(rename = "SOURCE_AGENT")]
    Agent,
    #[serde(rename = "SOURCE_EXECUTOR")]
    Executor,
}

/// `TaskStatus.Reason` (v1 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(clippy::enum_variant_names)]
pub enum Reason {
    ReasonCommandExecutorFailed,
    ReasonContainerLaunchFailed,
    ReasonContainerLimitation,
    ReasonContainerLimitationDisk,
    ReasonContainerLimitationMemory,
    ReasonContainerPreempted,
    ReasonContainerUpdateFailed,
    ReasonMaxCompletionTimeReached,
    ReasonExecutorRegistrationTimeout,
    ReasonExecutorReregistrationTimeout,
    ReasonExecutorTerminated,
    ReasonExecutorUnregistered,
    ReasonFrameworkRemoved,
    ReasonGcError,
    ReasonInvalidFrameworkid,
    ReasonInvalidOffers,
    ReasonIoSwitchboardExited,
    ReasonMasterDisconnected,
    ReasonReconciliation,
    ReasonResourcesUnknown,
    ReasonAgentDisconnected,
    ReasonAgentDraining,
    ReasonAgentRemoved,
    ReasonAgentRemovedByOperator,
    ReasonAgentReregistered,
    ReasonAgentRestarted,
    ReasonAgentUnknown,
    ReasonTaskCheckStatusUpdated,
    ReasonTaskHealthCheckStatusUpdated,
    ReasonTaskGroupInvalid,
    ReasonTaskGroupUnauthorized,
    ReasonTaskInvalid,
    ReasonTaskKilledDuringLaunch,
    ReasonTaskUnauthorized,
    ReasonTaskUnknown,
}

/// `TaskStatus`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: TaskId,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_enum")]
    pub source: Option<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_enum")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<ExecutorId>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt_f64")]
    pub timestamp: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_status: Option<Box<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_status: Option<Box<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_time: Option<TimeInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limitation: Option<Box<serde_json::Value>>,
}

impl TaskStatus {
    pub fn new(task_id: TaskId, state: TaskState) -> Self {
        TaskStatus {
            task_id,
            state,
            message: None,
            source: None,
            reason: None,
            data: None,
            agent_id: None,
            executor_id: None,
            timestamp: None,
            uuid: None,
            healthy: None,
            check_status: None,
            labels: None,
            container_status: None,
            unreachable_time: None,
            limitation: None,
        }
    }
}

/// `Filters`: `refuse_seconds` defaults to 5.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Filters {
    #[serde(default = "default_refuse", deserialize_with = "lenient_f64", serialize_with = "write_f64")]
    pub refuse_seconds: f64,
}

fn default_refuse() -> f64 {
    5.0
}

impl Default for Filters {
    fn default() -> Self {
        Filters { refuse_seconds: default_refuse() }
    }
}

/// `Task` as the operator API and events show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub task_id: TaskId,
    pub framework_id: FrameworkId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<ExecutorId>,
    pub agent_id: AgentId,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "exact_vec")]
    pub resources: Vec<Resource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "exact_vec")]
    pub statuses: Vec<TaskStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_update_state: Option<TaskState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_update_uuid: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Box<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Box<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_policy: Option<KillPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Box<serde_json::Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framework_info_defaults_written() {
        let fi: FrameworkInfo = serde_json::from_str(r#"{"user":"root","name":"x","junk":{"a":1}}"#).unwrap();
        assert_eq!(fi.role, "*");
        let j = serde_json::to_value(&fi).unwrap();
        assert_eq!(j["failover_timeout"], 0.0);
        assert_eq!(j["checkpoint"], false);
        assert!(j.get("role").is_none());
    }

    #[test]
    fn unknown_optional_enum_is_dropped() {
        let s: TaskStatus = serde_json::from_str(
            r#"{"task_id":{"value":"t"},"state":"TASK_RUNNING","reason":"REASON_FROM_THE_FUTURE"}"#,
        )
        .unwrap();
        assert_eq!(s.reason, None);
        assert!(serde_json::from_str::<TaskStatus>(r#"{"task_id":{"value":"t"},"state":"TASK_NOPE"}"#).is_err());
        // Known names are kept; null and values that are not names are dropped, and the
        // fields after them still decode.
        let s: TaskStatus = serde_json::from_str(
            r#"{"task_id":{"value":"t"},"state":"TASK_FAILED","source":"SOURCE_EXECUTOR",
                "reason":"REASON_COMMAND_EXECUTOR_FAILED","message":"m"}"#,
        )
        .unwrap();
        assert_eq!(s.source, Some(Source::Executor));
        assert_eq!(s.reason, Some(Reason::ReasonCommandExecutorFailed));
        for odd in ["null", "7", "-1.5", "true", r#"[1,"SOURCE_EXECUTOR"]"#, r#"{"a":{"b":[]}}"#] {
            let s: TaskStatus = serde_json::from_str(&format!(
                r#"{{"task_id":{{"value":"t"}},"source":{odd},"state":"TASK_RUNNING","reason":{odd},"message":"m"}}"#
            ))
            .unwrap();
            assert_eq!((s.source, s.reason, s.message.as_deref()), (None, None, Some("m")), "{odd}");
        }
        // An escaped name is still a name.
        let s: TaskStatus =
            serde_json::from_str(r#"{"task_id":{"value":"t"},"state":"TASK_RUNNING","source":"SOURCE\u005fMASTER"}"#)
                .unwrap();
        assert_eq!(s.source, Some(Source::Master));
    }

    #[test]
    fn command_info_shell_default_true() {
        let c: CommandInfo = serde_json::from_str(r#"{"value":"echo hi"}"#).unwrap();
        assert!(c.shell);
        assert_eq!(serde_json::to_value(&c).unwrap()["shell"], true);
    }

    #[test]
    fn partition_aware_mapping() {
        assert_eq!(TaskState::Unreachable.for_framework(false), TaskState::Lost);
        assert_eq!(TaskState::Unreachable.for_framework(true), TaskState::Unreachable);
        assert_eq!(TaskState::Running.for_framework(false), TaskState::Running);
    }
}
