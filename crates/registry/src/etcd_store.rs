//! The registry in etcd: one key per entry under `<prefix>/registry/`
//! (`agents/<id>`, `unreachable/<id>`, `gone/<id>`, `frameworks/<id>`, `weights`, `quotas`,
//! `maintenance`), values
//! JSON. Every write is a transaction guarded by the writer's leader key: it applies only
//! while that key still has the create revision the writer was elected with, so a master
//! that lost its leadership can never write (fencing).
use crate::etcd::{Compare, EtcdClient, TxnOp};
use crate::{AgentRecord, Op, Registry, RegistryError, Store};
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

/// Etcd refuses transactions with more operations than this (`--max-txn-ops`, default 128).
const MAX_TXN_OPS: usize = 120;

/// What makes a registry write legitimate: the leader key as this master created it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fence {
    pub leader_key: Vec<u8>,
    pub create_revision: i64,
    pub lease: i64,
}

pub struct EtcdStore {
    client: EtcdClient,
    root: String,
    fence: Fence,
    timeout: Duration,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Time {
    time: f64,
}

impl EtcdStore {
    /// The registry under `prefix`, written only while `fence` holds. Each recovery or write
    /// gives up after `timeout`.
    pub fn new(client: EtcdClient, prefix: &str, fence: Fence, timeout: Duration) -> EtcdStore {
        EtcdStore { client, root: format!("{}/registry/", prefix.trim_end_matches('/')), fence, timeout }
    }

    fn key(&self, kind: &str, id: &str) -> Vec<u8> {
        format!("{}{kind}/{id}", self.root).into_bytes()
    }

    fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
        serde_json::to_vec(v).unwrap_or_default()
    }

    fn txn_ops(&self, op: &Op) -> Vec<TxnOp> {
        let put = |key, value| TxnOp::Put { key, value, lease: None };
        match op {
            Op::AdmitAgent { agent } => {
                let id = agent.id();
                vec![
                    put(self.key("agents", &id), Self::json(agent)),
                    TxnOp::Delete { key: self.key("unreachable", &id) },
                ]
            }
            Op::RemoveAgent { agent_id } => vec![TxnOp::Delete { key: self.key("agents", agent_id) }],
            Op::MarkUnreachable { agent_id, time } => vec![
                TxnOp::Delete { key: self.key("agents", agent_id) },
                put(self.key("unreachable", agent_id), Self::json(&Time { time: *time })),
            ],
            Op::MarkGone { agent_id, time } => vec![
                TxnOp::Delete { key: self.key("agents", agent_id) },
                TxnOp::Delete { key: self.key("unreachable", agent_id) },
                put(self.key("gone", agent_id), Self::json(&Time { time: *time })),
            ],
            Op::PutFramework { framework } => {
                let id = framework.id.as_ref().map(|i| i.value.clone()).unwrap_or_default();
                vec![put(self.key("frameworks", &id), Self::json(framework))]
            }
            Op::RemoveFramework { framework_id } => vec![TxnOp::Delete { key: self.key("frameworks", framework_id) }],
            Op::SetWeights { weights } => vec![put(format!("{}weights", self.root).into_bytes(), Self::json(weights))],
            Op::SetQuotas { quotas } => vec![put(format!("{}quotas", self.root).into_bytes(), Self::json(quotas))],
            Op::SetMaintenance { maintenance } => {
                vec![put(format!("{}maintenance", self.root).into_bytes(), Self::json(maintenance))]
            }
            Op::ForgetAgents { agent_ids } => agent_ids
                .iter()
                .flat_map(|id| {
                    [TxnOp::Delete { key: self.key("unreachable", id) }, TxnOp::Delete { key: self.key("gone", id) }]
                })
                .collect(),
        }
    }

    async fn commit(&self, ops: &[TxnOp]) -> Result<(), RegistryError> {
        if ops.is_empty() {
            return Ok(());
        }
        let guard =
            [Compare::CreateRevision { key: self.fence.leader_key.clone(), revision: self.fence.create_revision }];
        let r = self.client.txn(&guard, ops, &[], Instant::now() + self.timeout).await?;
        if !r.succeeded {
            return Err(RegistryError::Fenced { key: String::from_utf8_lossy(&self.fence.leader_key).into_owned() });
        }
        Ok(())
    }

    fn decode(&self, reg: &mut Registry, key: &[u8], value: &[u8]) -> Result<(), RegistryError> {
        let k = String::from_utf8_lossy(key).into_owned();
        let Some(rest) = k.strip_prefix(&self.root) else { return Ok(()) };
        let bad = |e: serde_json::Error| RegistryError::Decode { key: k.clone(), why: e.to_string() };
        match rest.split_once('/') {
            Some(("agents", id)) => {
                let a: AgentRecord = serde_json::from_slice(value).map_err(bad)?;
                reg.agents.insert(id.to_string(), a);
            }
            Some(("unreachable", id)) => {
                let t: Time = serde_json::from_slice(value).map_err(bad)?;
                reg.unreachable.insert(id.to_string(), t.time);
            }
            Some(("gone", id)) => {
                let t: Time = serde_json::from_slice(value).map_err(bad)?;
                reg.gone.insert(id.to_string(), t.time);
            }
            Some(("frameworks", id)) => {
                reg.frameworks.insert(id.to_string(), serde_json::from_slice(value).map_err(bad)?);
            }
            None if rest == "weights" => reg.weights = serde_json::from_slice(value).map_err(bad)?,
            None if rest == "quotas" => reg.quotas = serde_json::from_slice(value).map_err(bad)?,
            None if rest == "maintenance" => reg.maintenance = serde_json::from_slice(value).map_err(bad)?,
            _ => tracing::debug!(key = %k, "ignoring an unknown registry key"),
        }
        Ok(())
    }
}

impl Store for EtcdStore {
    async fn recover(&mut self) -> Result<Registry, RegistryError> {
        let kvs = self.client.get_prefix(self.root.as_bytes(), Instant::now() + self.timeout).await?;
        let mut reg = Registry::default();
        for kv in kvs {
            self.decode(&mut reg, &kv.key, &kv.value)?;
        }
        Ok(reg)
    }

    /// Commits the operations in as few transactions as etcd allows: a transaction ends
    /// before an operation that would exceed the operation limit or touch a key already in
    /// it (etcd refuses duplicate keys in one transaction). One operation is never split.
    async fn apply(&mut self, ops: &[Op]) -> Result<(), RegistryError> {
        let mut batch: Vec<TxnOp> = Vec::new();
        let mut keys: HashSet<Vec<u8>> = HashSet::new();
        let key_of = |o: &TxnOp| match o {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key.clone(),
        };
        for op in ops {
            let t = self.txn_ops(op);
            let clash = t.iter().any(|o| keys.contains(&key_of(o)));
            if clash || batch.len() + t.len() > MAX_TXN_OPS {
                self.commit(&batch).await?;
                batch.clear();
                keys.clear();
            }
            keys.extend(t.iter().map(key_of));
            batch.extend(t);
        }
        self.commit(&batch).await
    }
}
