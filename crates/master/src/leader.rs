//! The leadership drivers: they decide when this master leads and hand the actor its
//! registry. Each term of leadership is numbered; the actor ignores messages of a term that
//! is over.
//!
//! * [`embedded`]: a single master leads as soon as its registry is read. If a write ever
//!   fails, the actor steps down and abdicates; the driver reads the registry again (cutting
//!   off a torn write) and leads again, a second later.
//! * [`etcd`]: the election of `agora_registry::election`; on election the driver reads the
//!   registry from etcd (every later write fenced by the leader key) and hands it over; when
//!   the term ends the actor steps down. Between terms it tells the actor who leads. Asked
//!   to resign (a clean shutdown), it revokes its lease so that another master need not
//!   wait for it to expire.
use crate::state::{Ack, Leadership, Msg};
use crate::EtcdConfig;
use agora_api::MasterInfo;
use agora_registry::election::{self, ElectionConfig, ElectionEvent};
use agora_registry::etcd::EtcdClient;
use agora_registry::{AnyStore, EmbeddedStore, EtcdStore, Registry, RegistryError, Store, Writer};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a registry read or write may take before the leader gives up (and steps down).
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// A writer whose completions come back to the actor as `RegistryWritten` of `term` (only
/// when they acknowledge something or failed).
fn writer(store: AnyStore, term: u64, tx: mpsc::UnboundedSender<Msg>) -> Writer<Ack> {
    Writer::spawn(store, move |acks: Vec<Ack>, result: Result<(), RegistryError>| {
        if result.is_err() || acks.iter().any(|a| *a != Ack::None) {
            let _ = tx.send(Msg::RegistryWritten { term, acks, result });
        }
    })
}

pub async fn embedded(dir: PathBuf, tx: mpsc::UnboundedSender<Msg>, mut ready: Option<(EmbeddedStore, Registry)>) {
    let mut term = 0;
    loop {
        let (store, registry) = match ready.take() {
            Some(r) => r,
            None => {
                let mut store = EmbeddedStore::new(&dir);
                match store.recover().await {
                    Ok(r) => (store, r),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the registry; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
        };
        term += 1;
        let (abdicate, mut abdicated) = mpsc::unbounded_channel();
        let writer = writer(AnyStore::Embedded(store), term, tx.clone());
        if tx.send(Msg::Leadership(Leadership::Recovering { term })).is_err()
            || tx.send(Msg::Leadership(Leadership::Elected { term, registry, writer, abdicate })).is_err()
        {
            return;
        }
        // Until the actor gives up (a failed write) or is gone.
        if abdicated.recv().await.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn etcd(
    config: EtcdConfig,
    me: MasterInfo,
    tx: mpsc::UnboundedSender<Msg>,
    mut resign: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    let ttl = config.lease_ttl.max(Duration::from_secs(1));
    let client = EtcdClient::new(config.endpoints.clone(), (ttl / 4).min(Duration::from_secs(1)));
    let value = serde_json::to_vec(&me).unwrap_or_default();
    let election_config = ElectionConfig { key: agora_registry::leader_key(&config.prefix), value, ttl };
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let (abdicate, abdications) = mpsc::unbounded_channel();
    let election = tokio::spawn(election::run(client.clone(), election_config, ev_tx, abdications));
    let mut term = 0;
    let mut lease: Option<i64> = None;
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            done = resign.recv() => {
                election.abort();
                if let Some(id) = lease {
                    let r = client.revoke(id, tokio::time::Instant::now() + Duration::from_secs(1)).await;
                    tracing::info!(ok = r.is_ok(), "resigned: leader lease revoked");
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
        };
        let Some(ev) = ev else { break };
        match ev {
            ElectionEvent::Elected(fence) => {
                term += 1;
                lease = Some(fence.lease);
                if tx.send(Msg::Leadership(Leadership::Recovering { term })).is_err() {
                    break;
                }
                let mut store = EtcdStore::new(client.clone(), &config.prefix, fence, REGISTRY_TIMEOUT);
                match store.recover().await {
                    Ok(registry) => {
                        let writer = writer(AnyStore::Etcd(store), term, tx.clone());
                        let abdicate = abdicate.clone();
                        let elected = Leadership::Elected { term, registry, writer, abdicate };
                        if tx.send(Msg::Leadership(elected)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the registry from etcd; giving the leadership up");
                        let _ = abdicate.send(());
                    }
                }
            }
            ElectionEvent::Lost => {
                lease = None;
                if tx.send(Msg::Leadership(Leadership::Lost { term })).is_err() {
                    break;
                }
            }
            ElectionEvent::Following(value) => {
                let leader = value.and_then(|v| match serde_json::from_slice::<MasterInfo>(&v) {
                    Ok(info) => Some(info),
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable leader key");
                        None
                    }
                });
                if tx.send(Msg::Leadership(Leadership::Following(leader))).is_err() {
                    break;
                }
            }
        }
    }
    election.abort();
}
