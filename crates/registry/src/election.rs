//! Leader election on etcd: the leader is whoever created the leader key, attached to its
//! lease. A contender reads the key; when it is absent it grants a lease and creates the key
//! in a transaction that succeeds only if the key still does not exist. The winner renews
//! its lease every twelfth of the TTL and steps down on its own when it has not managed to
//! renew it for eleven twelfths of the TTL, counted from when the last successful renewal
//! was *sent*: etcd cannot have expired the lease before then, so the old leader has stopped
//! before anyone else can be elected. With the default 3 s TTL a leader rides out 2.5 s
//! without etcd (an etcd leader election takes 1 to 2 s). It also steps down when the key
//! is no longer its own (checked every third renewal).
//! Followers poll the key (a tenth of the TTL, 100-500 ms) and report who leads.
use crate::etcd::{Compare, EtcdClient, TxnOp};
use crate::Fence;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// The leader key (see [`crate::leader_key`]).
    pub key: Vec<u8>,
    /// What the leader writes into it (its MasterInfo, JSON).
    pub value: Vec<u8>,
    /// The lease TTL (etcd rounds it up to at least 2 s; whole seconds).
    pub ttl: Duration,
}

#[derive(Debug, PartialEq)]
pub enum ElectionEvent {
    /// This contender leads, until `Lost`.
    Elected(Fence),
    /// Leadership ended: the lease could not be renewed in time, the key was taken away, or
    /// the holder abdicated.
    Lost,
    /// Not leading; the leader key's value, `None` when there is no leader or etcd cannot be
    /// reached. Sent when it changes.
    Following(Option<Vec<u8>>),
}

/// Why a term of leadership ended.
#[derive(Debug, PartialEq)]
enum End {
    Expiring,
    LeaseGone,
    KeyLost,
    Abdicated,
}

/// Campaigns, leads and follows until `events` is closed. A message on `abdicate` while
/// leading ends the term (the master could not write its registry, say).
pub async fn run(
    client: EtcdClient,
    config: ElectionConfig,
    events: mpsc::UnboundedSender<ElectionEvent>,
    mut abdicate: mpsc::UnboundedReceiver<()>,
) {
    let ttl = Duration::from_secs(config.ttl.as_secs().max(1));
    let poll = (ttl / 10).clamp(Duration::from_millis(100), Duration::from_millis(500));
    let mut reported: Option<Option<Vec<u8>>> = None;
    let mut last_contact = Instant::now();
    fn report(
        reported: &mut Option<Option<Vec<u8>>>,
        events: &mpsc::UnboundedSender<ElectionEvent>,
        v: Option<Vec<u8>>,
    ) {
        if reported.as_ref() != Some(&v) {
            *reported = Some(v.clone());
            let _ = events.send(ElectionEvent::Following(v));
        }
    }
    loop {
        if events.is_closed() {
            return;
        }
        while abdicate.try_recv().is_ok() {}
        match client.get(&config.key, Instant::now() + ttl / 2).await {
            Ok(Some(kv)) => {
                last_contact = Instant::now();
                report(&mut reported, &events, Some(kv.value));
                tokio::time::sleep(poll).await;
                continue;
            }
            Ok(None) => last_contact = Instant::now(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the leader key");
                if last_contact.elapsed() >= ttl {
                    report(&mut reported, &events, None);
                }
                tokio::time::sleep(poll).await;
                continue;
            }
        }
        // No leader: campaign.
        let sent = Instant::now();
        let (lease, granted) = match client.grant(ttl.as_secs() as i64, sent + ttl / 2).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot grant a lease to campaign with");
                tokio::time::sleep(poll).await;
                continue;
            }
        };
        let txn = client
            .txn(
                &[Compare::CreateRevision { key: config.key.clone(), revision: 0 }],
                &[TxnOp::Put { key: config.key.clone(), value: config.value.clone(), lease: Some(lease) }],
                &[TxnOp::Get { key: config.key.clone() }],
                sent + ttl / 2,
            )
            .await;
        let won = match txn {
            Ok(r) if r.succeeded => Some(r.revision),
            Ok(r) => match r.reads.first().and_then(|kvs| kvs.first()) {
                // A retried attempt whose first try had in fact succeeded.
                Some(kv) if kv.lease == lease => Some(kv.create_revision),
                Some(kv) => {
                    report(&mut reported, &events, Some(kv.value.clone()));
                    None
                }
                None => None,
            },
            Err(e) => {
                tracing::warn!(error = %e, "campaign failed");
                None
            }
        };
        let Some(create_revision) = won else {
            let c = client.clone();
            tokio::spawn(async move { c.revoke(lease, Instant::now() + Duration::from_secs(2)).await });
            tokio::time::sleep(poll).await;
            continue;
        };
        let fence = Fence { leader_key: config.key.clone(), create_revision, lease };
        tracing::info!(create_revision, lease, ttl = granted, "elected leader");
        reported = None;
        if events.send(ElectionEvent::Elected(fence)).is_err() {
            return;
        }
        let granted = Duration::from_secs(granted.max(1) as u64);
        let end = lead(&client, &config.key, create_revision, lease, granted, sent, &mut abdicate).await;
        tracing::warn!(reason = ?end, "leadership ended");
        let _ = events.send(ElectionEvent::Lost);
        // Give the key up at once so that another contender need not wait for the lease.
        let _ = client.revoke(lease, Instant::now() + ttl / 4).await;
        last_contact = Instant::now();
        tokio::time::sleep(poll).await;
    }
}

async fn lead(
    client: &EtcdClient,
    key: &[u8],
    create_revision: i64,
    lease: i64,
    ttl: Duration,
    granted_at: Instant,
    abdicate: &mut mpsc::UnboundedReceiver<()>,
) -> End {
    let slice = ttl / 12;
    let mut renewed = granted_at;
    let mut ticks = 0u64;
    loop {
        let deadline = renewed + ttl - slice;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return End::Expiring,
            // An abdication, or the master is gone (the sender dropped).
            _ = abdicate.recv() => return End::Abdicated,
            _ = tokio::time::sleep(slice) => {
                let sent = Instant::now();
                match tokio::time::timeout_at(deadline, client.keepalive(lease, deadline)).await {
                    Ok(Ok(t)) if t > 0 => renewed = sent,
                    Ok(Ok(_)) => return End::LeaseGone,
                    Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed"),
                    Err(_) => {}
                }
                ticks += 1;
                if ticks == 3 {
                    ticks = 0;
                    match tokio::time::timeout_at(deadline, client.get(key, deadline)).await {
                        Ok(Ok(Some(kv))) if kv.create_revision == create_revision => {}
                        Ok(Ok(_)) => return End::KeyLost,
                        _ => {}
                    }
                }
            }
        }
    }
}
