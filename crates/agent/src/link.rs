//! The agent's connection to the master.
//!
//! [`run`] registers (or re-registers, with everything the agent runs) and feeds the master's
//! messages to the actor; when the stream ends it reconnects with a randomised, growing
//! backoff. [`outbound`] POSTs the agent's calls in order; a 403 (stale session) makes the
//! link re-register at once.
use crate::state::{Handle, Msg};
use crate::AgentConfig;
use agora_api::agent_proto::{AgentToMaster, MasterToAgent, AGENT_PATH};
use agora_http::http::StatusCode;
use agora_http::{base_url, Client, ClientError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

fn jitter(max: Duration) -> Duration {
    // Spread reconnects of many agents; the uuid is a cheap source of randomness.
    let r = uuid::Uuid::new_v4().as_u128() as u64 % 1000;
    max.mul_f64(r as f64 / 1000.0)
}

pub async fn run(
    config: AgentConfig,
    handle: Handle,
    reconnect: Arc<Notify>,
    recovered: tokio::sync::oneshot::Receiver<()>,
) {
    // Register only once recovery is complete, so the report is the truth.
    let _ = recovered.await;
    let client = Client::new();
    let url = format!("{}{}", base_url(&config.master), AGENT_PATH);
    let mut backoff = config.registration_backoff_factor;
    let max_backoff = Duration::from_secs(60);
    loop {
        let Some(call) = handle.ask(|reply| Msg::RegistrationCall { reply }).await else { return };
        let reregister = matches!(call, AgentToMaster::Reregister { .. });
        match client.subscribe(&url, &[], &call, Duration::from_secs(10)).await {
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the master");
                if let ClientError::Status { status, body, .. } = &e {
                    if *status == StatusCode::BAD_REQUEST {
                        tracing::error!(%body, "the master refused this agent's registration");
                    }
                }
            }
            Ok(mut stream) => {
                backoff = config.registration_backoff_factor;
                loop {
                    let next = tokio::select! {
                        r = stream.next() => r,
                        _ = reconnect.notified() => {
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
            }
        }
        let wait = jitter(backoff);
        backoff = (backoff * 2).min(max_backoff);
        tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
    }
}

pub async fn outbound(config: AgentConfig, mut rx: mpsc::UnboundedReceiver<AgentToMaster>, reconnect: Arc<Notify>) {
    let client = Client::new();
    let url = format!("{}{}", base_url(&config.master), AGENT_PATH);
    while let Some(call) = rx.recv().await {
        match client.call(&url, &[], &call, Duration::from_secs(10)).await {
            Ok(_) => {}
            Err(ClientError::Status { status, body, .. }) if status == StatusCode::FORBIDDEN => {
                tracing::info!(%body, "master refused a call");
                reconnect.notify_one();
            }
            Err(e) => tracing::debug!(error = %e, "call to the master failed (retried by its owner if it matters)"),
        }
    }
}
