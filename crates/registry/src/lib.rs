//! The master's registry and the machinery of highly available masters.
//!
//! The registry holds what a newly elected master must know to carry on where the last one
//! stopped: the admitted agents, the unreachable and gone ones, the frameworks, the role
//! weights. It sits behind one trait, [`Store`], with two implementations: [`EmbeddedStore`]
//! (the default: an fsynced append log and snapshot under the master's work dir) and
//! [`EtcdStore`] (keys under a prefix in etcd, every write one transaction guarded by the
//! writer's leader key). [`Writer`] feeds a store its changes in order, batching whatever
//! queued up while the previous write was in flight.
//!
//! [`election`] elects one leader among several masters with an etcd lease and a
//! create-if-absent transaction; [`detector`] finds the leading master for agents and
//! clients, from a list of masters or from etcd.
#![forbid(unsafe_code)]

pub mod detector;
pub mod election;
pub mod embedded;
pub mod etcd;
pub mod etcd_store;
pub mod writer;

pub use embedded::EmbeddedStore;
pub use etcd_store::{EtcdStore, Fence};
pub use writer::Writer;

use agora_api::maintenance::MaintenanceState;
use agora_api::quota::QuotaConfig;
use agora_api::{AgentInfo, FrameworkInfo, MasterInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use thiserror::Error;

/// An admitted agent as the registry keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent's info, with its id.
    pub info: AgentInfo,
    /// `slave(1)@host:port`.
    pub pid: String,
    pub version: String,
}

impl AgentRecord {
    pub fn id(&self) -> String {
        self.info.id.as_ref().map(|i| i.value.to_string()).unwrap_or_default()
    }
}

/// Everything the registry holds. Maps are keyed by agent or framework id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    #[serde(default)]
    pub agents: BTreeMap<String, AgentRecord>,
    /// Agents marked unreachable, with the time (seconds since the epoch) they were.
    #[serde(default)]
    pub unreachable: BTreeMap<String, f64>,
    /// Agents marked gone, with the time they were; they may never come back.
    #[serde(default)]
    pub gone: BTreeMap<String, f64>,
    #[serde(default)]
    pub frameworks: BTreeMap<String, FrameworkInfo>,
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    /// Quotas by role.
    #[serde(default)]
    pub quotas: BTreeMap<String, QuotaConfig>,
    #[serde(default)]
    pub maintenance: MaintenanceState,
}

/// One change to the registry. Applying an operation twice has the effect of applying it
/// once, so a write retried after an ambiguous failure is harmless.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// An agent is admitted (or re-admitted with new info): no longer unreachable.
    AdmitAgent {
        agent: AgentRecord,
    },
    /// An agent is removed (it came back under a new id).
    RemoveAgent {
        agent_id: String,
    },
    MarkUnreachable {
        agent_id: String,
        time: f64,
    },
    MarkGone {
        agent_id: String,
        time: f64,
    },
    /// A framework registered, or changed its info.
    PutFramework {
        framework: FrameworkInfo,
    },
    RemoveFramework {
        framework_id: String,
    },
    SetWeights {
        weights: BTreeMap<String, f64>,
    },
    /// Every role's quota (roles absent have none).
    SetQuotas {
        quotas: BTreeMap<String, QuotaConfig>,
    },
    SetMaintenance {
        maintenance: MaintenanceState,
    },
    /// Unreachable or gone agents pruned from the registry (too old, or too many).
    ForgetAgents {
        agent_ids: Vec<String>,
    },
}

impl Registry {
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::AdmitAgent { agent } => {
                let id = agent.id();
                self.unreachable.remove(&id);
                self.agents.insert(id, agent.clone());
            }
            Op::RemoveAgent { agent_id } => {
                self.agents.remove(agent_id);
            }
            Op::MarkUnreachable { agent_id, time } => {
                self.agents.remove(agent_id);
                self.unreachable.insert(agent_id.clone(), *time);
            }
            Op::MarkGone { agent_id, time } => {
                self.agents.remove(agent_id);
                self.unreachable.remove(agent_id);
                self.gone.insert(agent_id.clone(), *time);
            }
            Op::PutFramework { framework } => {
                let id = framework.id.as_ref().map(|i| i.value.to_string()).unwrap_or_default();
                self.frameworks.insert(id, framework.clone());
            }
            Op::RemoveFramework { framework_id } => {
                self.frameworks.remove(framework_id);
            }
            Op::SetWeights { weights } => self.weights = weights.clone(),
            Op::SetQuotas { quotas } => self.quotas = quotas.clone(),
            Op::SetMaintenance { maintenance } => self.maintenance = maintenance.clone(),
            Op::ForgetAgents { agent_ids } => {
                for id in agent_ids {
                    self.unreachable.remove(id);
                    self.gone.remove(id);
                }
            }
        }
    }

    /// Number of entries (agents of every kind and frameworks).
    pub fn len(&self) -> usize {
        self.agents.len() + self.unreachable.len() + self.gone.len() + self.frameworks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.weights.is_empty() && self.quotas.is_empty() && self.maintenance.is_empty()
    }
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum RegistryError {
    #[error("registry file {path}: {why}")]
    Io { path: PathBuf, why: String },
    #[error("registry file {path} is corrupt at byte {offset}: {why}")]
    Corrupt { path: PathBuf, offset: usize, why: String },
    #[error(transparent)]
    Etcd(#[from] etcd::EtcdError),
    #[error("registry write refused: this master no longer holds the leader key {key}")]
    Fenced { key: String },
    #[error("undecodable registry entry {key}: {why}")]
    Decode { key: String, why: String },
    #[error("the registry store failed earlier; it must be recovered again")]
    Broken,
}

/// A registry store. `recover` reads everything (a new leader's first act); `apply` makes a
/// sequence of operations durable, in order, each one atomically, and returns only once
/// they are.
pub trait Store: Send + 'static {
    fn recover(&mut self) -> impl Future<Output = Result<Registry, RegistryError>> + Send;
    fn apply(&mut self, ops: &[Op]) -> impl Future<Output = Result<(), RegistryError>> + Send;
}

/// The store a master runs with, chosen by its flags.
pub enum AnyStore {
    Embedded(EmbeddedStore),
    Etcd(EtcdStore),
}

impl Store for AnyStore {
    async fn recover(&mut self) -> Result<Registry, RegistryError> {
        match self {
            AnyStore::Embedded(s) => s.recover().await,
            AnyStore::Etcd(s) => s.recover().await,
        }
    }

    async fn apply(&mut self, ops: &[Op]) -> Result<(), RegistryError> {
        match self {
            AnyStore::Embedded(s) => s.apply(ops).await,
            AnyStore::Etcd(s) => s.apply(ops).await,
        }
    }
}

/// The etcd key holding the leading master's MasterInfo (JSON), under `prefix`.
pub fn leader_key(prefix: &str) -> Vec<u8> {
    format!("{}/leader", prefix.trim_end_matches('/')).into_bytes()
}

/// `host:port` of a master: its hostname, else its IP, as Mesos builds redirects.
pub fn master_addr(info: &MasterInfo) -> String {
    let host = info
        .address
        .as_ref()
        .and_then(|a| a.hostname.clone().or_else(|| a.ip.clone()))
        .or_else(|| info.hostname.clone())
        .unwrap_or_else(|| {
            let b = info.ip.to_le_bytes();
            format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3])
        });
    format!("{host}:{}", info.port)
}

#[cfg(test)]
pub(crate) mod conformance {
    //! The behaviour every [`Store`] must have; run against each implementation.
    use super::*;
    use agora_api::{AgentId, FrameworkId};

    pub fn agent(id: &str, port: u32) -> AgentRecord {
        AgentRecord {
            info: AgentInfo {
                hostname: "127.0.0.1".into(),
                port,
                resources: vec![agora_api::Resource::scalar("cpus", 2.0)],
                attributes: vec![],
                id: Some(AgentId::new(id)),
                domain: None,
            },
            pid: format!("slave(1)@127.0.0.1:{port}"),
            version: "1.11.0".into(),
        }
    }

    pub fn framework(id: &str, name: &str) -> FrameworkInfo {
        FrameworkInfo {
            user: "root".into(),
            name: name.into(),
            id: Some(FrameworkId::new(id)),
            failover_timeout: 60.0,
            checkpoint: true,
            role: "*".into(),
            roles: vec![],
            hostname: None,
            principal: None,
            webui_url: None,
            capabilities: vec![],
            labels: None,
            offer_filters: None,
        }
    }

    pub fn quota(role: &str) -> QuotaConfig {
        let mut q = QuotaConfig { role: role.into(), ..Default::default() };
        q.guarantees.insert("cpus".into(), agora_api::resources::Scalar { value: 2.0 });
        q
    }

    pub fn maintenance(host: &str) -> MaintenanceState {
        let machine = agora_api::maintenance::MachineId { hostname: Some(host.into()), ip: None };
        let mut m = MaintenanceState::default();
        m.schedule.windows.push(agora_api::maintenance::Window {
            machine_ids: vec![machine.clone()],
            unavailability: Default::default(),
        });
        m.down.insert(machine);
        m
    }

    /// Writes a history with `open` (a fresh handle on the same storage each call) and checks
    /// what a later recovery sees.
    pub async fn suite<S: Store, F: FnMut() -> S>(mut open: F, many: u32) {
        let mut s = open();
        assert_eq!(s.recover().await.expect("recover empty"), Registry::default());
        let ops = vec![
            Op::AdmitAgent { agent: agent("a1", 1) },
            Op::AdmitAgent { agent: agent("a2", 2) },
            Op::PutFramework { framework: framework("f1", "one") },
        ];
        s.apply(&ops).await.expect("first write");
        // One batch touching the same key twice, and every kind of operation.
        s.apply(&[
            Op::AdmitAgent { agent: agent("a3", 3) },
            Op::MarkUnreachable { agent_id: "a3".into(), time: 5.5 },
            Op::MarkGone { agent_id: "a2".into(), time: 6.0 },
            Op::PutFramework { framework: framework("f2", "two") },
            Op::PutFramework { framework: framework("f2", "two-renamed") },
            Op::RemoveFramework { framework_id: "f1".into() },
            Op::SetWeights { weights: [("web".to_string(), 2.0)].into_iter().collect() },
            Op::SetQuotas { quotas: [("dev".to_string(), quota("dev"))].into_iter().collect() },
            Op::SetMaintenance { maintenance: maintenance("h9") },
            Op::MarkGone { agent_id: "old".into(), time: 1.0 },
            Op::MarkUnreachable { agent_id: "old2".into(), time: 1.0 },
            Op::ForgetAgents { agent_ids: vec!["old".into(), "old2".into()] },
        ])
        .await
        .expect("second write");
        let mut expect = Registry::default();
        expect.agents.insert("a1".into(), agent("a1", 1));
        expect.unreachable.insert("a3".into(), 5.5);
        expect.gone.insert("a2".into(), 6.0);
        expect.frameworks.insert("f2".into(), framework("f2", "two-renamed"));
        expect.weights.insert("web".into(), 2.0);
        expect.quotas.insert("dev".into(), quota("dev"));
        expect.maintenance = maintenance("h9");
        let mut again = open();
        assert_eq!(again.recover().await.expect("recover"), expect);
        // Re-admission clears unreachability; writes go on after a recovery.
        again.apply(&[Op::AdmitAgent { agent: agent("a3", 33) }]).await.expect("third write");
        expect.unreachable.remove("a3");
        expect.agents.insert("a3".into(), agent("a3", 33));
        assert_eq!(open().recover().await.expect("recover again"), expect);
        // Many small writes to few keys (the embedded store compacts along the way).
        let mut s = open();
        s.recover().await.expect("recover before many");
        for i in 0..many {
            let id = format!("m{}", i % 100);
            s.apply(&[Op::AdmitAgent { agent: agent(&id, i) }]).await.expect("many");
            expect.agents.insert(id.clone(), agent(&id, i));
        }
        assert_eq!(open().recover().await.expect("recover after many"), expect);
    }
}
