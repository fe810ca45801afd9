//! The agent's connection to the master.
//!
//! [`run`] finds the leading master, registers (or re-registers, with everything the agent
//! runs) and feeds the master's messages to the actor; when the stream ends it looks for the
//! leader again and reconnects with a randomised, growing backoff, which starts over when the
//! leader changes. [`outbound`] POSTs the agent's calls in order to the current leader; a 403
//! (stale session), 307 or 503 (not the leader) makes the link re-register at once, if the
//! refused call was made in the current session: a refusal of a call from an older session
//! (queued while the master was busy, answered after the agent re-registered) says nothing
//! about the new one, and acting on it would make every slow master answer a fresh round of
//! re-registrations.
//!
//! `--master` is one master, a list, or `etcd://...` (see `agora_registry::detector`).
use crate::state::{Handle, Msg};
use crate::AgentConfig;
use agora_api::agent_proto::{AgentToMaster, MasterToAgent, AGENT_PATH};
use agora_http::http::StatusCode;
use agora_http::{base_url, Client, ClientError};
use agora_registry::detector::Detector;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// One detector per `--master` value in this process: the registration loop and the
/// outbound queue must talk to the same leader.
pub(crate) fn detector(master: &str) -> Result<Arc<Detector>, String> {
    static DETECTORS: OnceLock<Mutex<HashMap<String, Arc<Detector>>>> = OnceLock::new();
    let map = DETECTORS.get_or_init(Default::default);
    let mut map = map.lock().map_err(|_| "detector table poisoned".to_string())?;
    if let Some(d) = map.get(master) {
        return Ok(d.clone());
    }
    let d = Arc::new(Detector::new(master)?);
    map.insert(master.to_string(), d.clone());
    Ok(d)
}

/// Whether a refusal of a call made in session `refused` (403 stale, 307/503 not led) ends
/// the session `current` (empty until the master has named one). A refusal of an older
/// session's call, answered late by a busy master, does not: acting on it made every slow
/// answer a new round of re-registrations.
pub(crate) fn refusal_ends_session(current: &str, refused: &str) -> bool {
    !refused.is_empty() && refused == current
}

/// Whether a failed call says "not the leader" (307 to it, 503 none elected yet).
pub(crate) fn not_leader(e: &ClientError) -> bool {
    matches!(e, ClientError::Status { status, .. }
        if *status == StatusCode::TEMPORARY_REDIRECT || *status == StatusCode::SERVICE_UNAVAILABLE)
}

pub(crate) fn jitter(max: Duration) -> Duration {
    // Spread reconnects of many agents; the uuid is a cheap source of randomness.
    let r = uuid::Uuid::new_v4().as_u128() as u64 % 1000;
    max.mul_f64(r as f64 / 1000.0)
}

pub async fn run(
    config: AgentConfig,
    handle: Handle,
    mut reconnect: mpsc::UnboundedReceiver<String>,
    recovered: tokio::sync::oneshot::Receiver<()>,
) {
    // Register only once recovery is complete, so the report is the truth.
    let _ = recovered.await;
    let detector = match detector(&config.master) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot find the master");
            return;
        }
    };
    let client = Client::new();
    let factor = config.registration_backoff_factor;
    let mut backoff = factor;
    // With several masters the leader can move: look again at least every second.
    let max_backoff = if detector.is_ha() { Duration::from_secs(1).max(factor) } else { Duration::from_secs(60) };
    let mut leader_seen: Option<String> = None;
    loop {
        let Some(leader) = detector.leader().await else {
            tracing::warn!(master = %config.master, "no leading master found");
            let wait = jitter(backoff);
            backoff = (backoff * 2).min(max_backoff);
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
            continue;
        };
        if leader_seen.as_deref() != Some(leader.as_str()) {
            if leader_seen.is_some() {
                tracing::info!(%leader, "new leading master");
            }
            leader_seen = Some(leader.clone());
            backoff = factor;
        }
        let url = format!("{}{}", base_url(&leader), AGENT_PATH);
        let Some(call) = handle.ask(|reply| Msg::RegistrationCall { reply }).await else { return };
        let reregister = matches!(call, AgentToMaster::Reregister { .. });
        match client.subscribe(&url, &[], &call, Duration::from_secs(10)).await {
            Err(e) if not_leader(&e) => {
                // Ask it where the leader is; the next round goes there.
                tracing::info!(%leader, error = %e, "not the leading master");
                match detector.ask(&leader).await {
                    Some(l) if l != leader => detector.remember(&l),
                    _ => detector.forget(),
                }
            }
            Err(ClientError::Status { status, body, .. })
                if status == StatusCode::BAD_REQUEST || status == StatusCode::FORBIDDEN =>
            {
                // Refused (a bad registration, a machine down for maintenance): say why and
                // try again later, as the refusal can be lifted.
                tracing::error!(%status, %body, "the master refused this agent's registration");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the master");
                if !matches!(e, ClientError::Status { .. }) {
                    detector.forget();
                }
            }
            Ok(mut stream) => {
                backoff = config.registration_backoff_factor;
                // This stream's session, once the master has said which.
                let mut session = String::new();
                loop {
                    let next = tokio::select! {
                        r = stream.next() => r,
                        Some(refused) = reconnect.recv() => {
                            if !refusal_ends_session(&session, &refused) {
                                tracing::debug!(session = %refused, "a call of an older session was refused; ignored");
                                continue;
                            }
                            tracing::info!("the master no longer knows this session; re-registering");
                            None
                        }
                    };
                    let Some(record) = next else { break };
                    let record = match record {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(error = %e, "master stream broke");
                            break;
                        }
                    };
                    let msg: MasterToAgent = match serde_json::from_slice(&record) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable message from the master; skipped");
                            continue;
                        }
                    };
                    match msg {
                        MasterToAgent::Registered { agent_id, session_id, .. }
                        | MasterToAgent::Reregistered { agent_id, session_id, .. } => {
                            tracing::info!(%agent_id, reregister, "registered with the master");
                            session = session_id.clone();
                            let _ = handle.tx.send(Msg::Connected { agent_id, session_id });
                        }
                        other => {
                            if handle.tx.send(Msg::FromMaster(other)).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = handle.tx.send(Msg::Disconnected);
                // The master may have died or stepped down: look for the leader again.
                detector.forget();
            }
        }
        let wait = jitter(backoff);
        backoff = (backoff * 2).min(max_backoff);
        tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
    }
}

/// Sends the agent's calls; the session of a call refused as stale or not led goes to
/// `reconnect` ([`run`] re-registers if it is still the current one).
pub async fn outbound(
    config: AgentConfig,
    mut rx: mpsc::UnboundedReceiver<AgentToMaster>,
    reconnect: mpsc::UnboundedSender<String>,
) {
    let client = Client::new();
    let detector = match detector(&config.master) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot find the master");
            return;
        }
    };
    while let Some(call) = rx.recv().await {
        // Calls go to the master the registration loop found last; whatever cannot be
        // delivered is retried by its owner (status updates until acknowledged).
        let Some(leader) = detector.current() else {
            tracing::debug!("no leading master known; call dropped");
            continue;
        };
        let url = format!("{}{}", base_url(&leader), AGENT_PATH);
        let session = call.session_id().unwrap_or_default().to_string();
        match client.call(&url, &[], &call, Duration::from_secs(10)).await {
            Ok(_) => {}
            Err(ClientError::Status { status, body, .. }) if status == StatusCode::FORBIDDEN => {
                tracing::info!(%body, %session, "master refused a call");
                let _ = reconnect.send(session);
            }
            Err(e) if not_leader(&e) => {
                tracing::info!(error = %e, %session, "the master no longer leads");
                let _ = reconnect.send(session);
            }
            Err(e) => tracing::debug!(error = %e, "call to the master failed (retried by its owner if it matters)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_api::AgentId;

    /// A master that refuses every call with `status`, counting them.
    async fn refusing_master(status: StatusCode) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = agora_http::listen("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = calls.clone();
        let handler: agora_http::Handler = Arc::new(move |_req, _peer| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { agora_http::text(status, "refused") })
        });
        tokio::spawn(agora_http::serve(listener, handler));
        (addr, calls)
    }

    #[test]
    fn only_a_refusal_in_the_current_session_ends_it() {
        assert!(refusal_ends_session("s2", "s2"));
        // A call of the session before, answered after the agent re-registered.
        assert!(!refusal_ends_session("s2", "s1"));
        // Not registered yet: no refusal (not even of a call without a session) ends it.
        assert!(!refusal_ends_session("", ""));
        assert!(!refusal_ends_session("", "s1"));
    }

    fn pong(session: &str) -> AgentToMaster {
        AgentToMaster::Pong { agent_id: AgentId::new("a"), session_id: session.into() }
    }

    #[tokio::test]
    async fn a_refused_call_names_the_session_it_was_made_in() {
        for status in [StatusCode::FORBIDDEN, StatusCode::SERVICE_UNAVAILABLE, StatusCode::BAD_REQUEST] {
            let (addr, calls) = refusing_master(status).await;
            let config = AgentConfig { master: addr.clone(), ..AgentConfig::default() };
            // The registration loop sets the detector's leader; here it is the only master.
            detector(&addr).unwrap().remember(&addr);
            let (call_tx, call_rx) = mpsc::unbounded_channel();
            let (reconnect_tx, mut reconnect_rx) = mpsc::unbounded_channel();
            let out = tokio::spawn(outbound(config, call_rx, reconnect_tx));
            call_tx.send(pong("session-1")).unwrap();
            call_tx.send(pong("session-2")).unwrap();
            drop(call_tx);
            out.await.unwrap();
            assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2, "{status}");
            let mut refused = vec![];
            while let Ok(s) = reconnect_rx.try_recv() {
                refused.push(s);
            }
            if status == StatusCode::BAD_REQUEST {
                // A bad call is the agent's bug, not a sign its session is gone.
                assert!(refused.is_empty());
            } else {
                assert_eq!(refused, ["session-1", "session-2"], "{status}");
            }
        }
    }
}
