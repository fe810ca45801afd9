//! The client side of Agora, speaking only the public wire API (the api crate's types over
//! HTTP): a small Mesos v1 scheduler client ([`Scheduler`]), `agora run` ([`run`]), and the
//! operator views behind `agora agent|framework|task list` ([`views`]).
//!
//! Everywhere a master is named it may be one `host:port`, several
//! (`h1:5050,h2:5050,h3:5050`) or `etcd://h1:2379,...[/prefix]`: [`leading_master`] finds
//! the one that leads ([`call_leader`] makes one call there), and a 307 from a master that
//! does not lead is followed.
#![forbid(unsafe_code)]

pub mod image;
pub mod load;
pub mod run;
pub mod views;

use agora_api::scheduler::{self as sched, Call, CallType, Event};
use agora_api::*;
use agora_http::{base_url, Client, ClientError, RecordStream};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Http(#[from] ClientError),
    #[error("the master closed the subscription")]
    Closed,
    #[error("the master sent an undecodable event: {0}")]
    Decode(String),
    #[error("the master answered the subscription with an error: {0}")]
    Refused(String),
    #[error("no leading master found for '{0}'")]
    NoLeader(String),
}

/// The leading master's `host:port` for a `--master` value (see the crate docs).
pub async fn leading_master(master: &str) -> Result<String, SchedulerError> {
    let d = agora_registry::detector::Detector::new(master).map_err(SchedulerError::Refused)?;
    d.leader().await.ok_or_else(|| SchedulerError::NoLeader(master.to_string()))
}

/// POSTs `body` to `path` on the leading master of `master` (following a 307 to it a few
/// times at most); returns the URL that answered and the reply.
pub async fn call_leader<T: serde::Serialize>(
    master: &str,
    path: &str,
    body: &T,
) -> Result<(String, agora_http::Reply), SchedulerError> {
    let detector = agora_registry::detector::Detector::new(master).map_err(SchedulerError::Refused)?;
    let mut leader = detector.leader().await.ok_or_else(|| SchedulerError::NoLeader(master.to_string()))?;
    let client = Client::new();
    let mut hops = 0;
    loop {
        let url = format!("{}{path}", base_url(&leader));
        match client.call(&url, &[], body, Duration::from_secs(10)).await {
            Ok(r) => return Ok((url, r)),
            Err(e) if not_leader(&e) && hops < 3 => {
                hops += 1;
                leader = detector.ask(&leader).await.ok_or(SchedulerError::Http(e))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether an error says the master does not lead (307) or no leader is ready (503).
fn not_leader(e: &ClientError) -> bool {
    matches!(e, ClientError::Status { status, .. }
        if *status == agora_http::http::StatusCode::TEMPORARY_REDIRECT
            || *status == agora_http::http::StatusCode::SERVICE_UNAVAILABLE)
}

/// A subscribed framework: the event stream plus (through `Deref`) the [`Calls`] that
/// need its ids.
pub struct Scheduler {
    calls: Calls,
    stream: RecordStream,
}

impl std::ops::Deref for Scheduler {
    type Target = Calls;
    fn deref(&self) -> &Calls {
        &self.calls
    }
}

/// The calls of a subscribed framework; cheap to clone, so calls can be made from other
/// tasks while one reads the event stream.
#[derive(Clone)]
pub struct Calls {
    client: Client,
    url: String,
    pub framework_id: FrameworkId,
    pub stream_id: String,
}

impl Scheduler {
    /// Finds the leading master, SUBSCRIBEs (or re-subscribes when `info.id` is set) and
    /// waits for SUBSCRIBED. A master that does not lead is asked where the leader is (its
    /// 307), a few times at most.
    pub async fn subscribe(master: &str, info: FrameworkInfo) -> Result<Scheduler, SchedulerError> {
        let client = Client::new();
        let detector = agora_registry::detector::Detector::new(master).map_err(SchedulerError::Refused)?;
        let mut leader = detector.leader().await.ok_or_else(|| SchedulerError::NoLeader(master.to_string()))?;
        let mut call = Call::new(CallType::Subscribe, info.id.clone());
        call.subscribe =
            Some(sched::Subscribe { framework_info: info, suppressed_roles: vec![], offer_constraints: None });
        let mut hops = 0;
        let (url, mut stream) = loop {
            let url = format!("{}/api/v1/scheduler", base_url(&leader));
            match client.subscribe(&url, &[], &call, Duration::from_secs(10)).await {
                Ok(s) => break (url, s),
                Err(e) if not_leader(&e) && hops < 3 => {
                    hops += 1;
                    leader = detector.ask(&leader).await.ok_or(SchedulerError::Http(e))?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let stream_id =
            stream.headers.get("Mesos-Stream-Id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let first = stream.next().await.ok_or(SchedulerError::Closed)??;
        let event: Event = serde_json::from_slice(&first).map_err(|e| SchedulerError::Decode(e.to_string()))?;
        match (event.kind, event.subscribed, event.error) {
            (sched::EventType::Subscribed, Some(s), _) => {
                Ok(Scheduler { calls: Calls { client, url, framework_id: s.framework_id, stream_id }, stream })
            }
            (_, _, Some(e)) => Err(SchedulerError::Refused(e.message)),
            _ => Err(SchedulerError::Decode("first event is not SUBSCRIBED".into())),
        }
    }

    /// The next event; `Err(Closed)` when the master ended the stream.
    pub async fn next_event(&mut self) -> Result<Event, SchedulerError> {
        let rec = self.stream.next().await.ok_or(SchedulerError::Closed)??;
        serde_json::from_slice(&rec).map_err(|e| SchedulerError::Decode(e.to_string()))
    }

    /// A clonable handle for making calls while another task reads events.
    pub fn calls(&self) -> Calls {
        self.calls.clone()
    }
}

impl Calls {
    /// Sends a call on a separate connection with the stream id header.
    pub async fn call(&self, mut call: Call) -> Result<(), SchedulerError> {
        call.framework_id = Some(self.framework_id.clone());
        self.client
            .call(&self.url, &[("Mesos-Stream-Id", self.stream_id.clone())], &call, Duration::from_secs(10))
            .await?;
        Ok(())
    }

    pub async fn launch(
        &self,
        offer_ids: Vec<OfferId>,
        tasks: Vec<TaskInfo>,
        refuse_seconds: f64,
    ) -> Result<(), SchedulerError> {
        let mut call = Call::new(CallType::Accept, None);
        call.accept = Some(sched::Accept {
            offer_ids,
            operations: vec![sched::Operation {
                kind: sched::OperationType::Launch,
                id: None,
                launch: Some(sched::Launch { task_infos: tasks }),
                launch_group: None,
                reserve: None,
                unreserve: None,
                create: None,
                destroy: None,
            }],
            filters: Some(Filters { refuse_seconds }),
        });
        self.call(call).await
    }

    /// ACCEPT with any operations (RESERVE, CREATE, LAUNCH, ...), applied in order.
    pub async fn accept(
        &self,
        offer_ids: Vec<OfferId>,
        operations: Vec<sched::Operation>,
        refuse_seconds: f64,
    ) -> Result<(), SchedulerError> {
        let mut call = Call::new(CallType::Accept, None);
        call.accept = Some(sched::Accept { offer_ids, operations, filters: Some(Filters { refuse_seconds }) });
        self.call(call).await
    }

    pub async fn decline(&self, offer_ids: Vec<OfferId>, refuse_seconds: f64) -> Result<(), SchedulerError> {
        let mut call = Call::new(CallType::Decline, None);
        call.decline = Some(sched::Decline { offer_ids, filters: Some(Filters { refuse_seconds }) });
        self.call(call).await
    }

    pub async fn kill(&self, task_id: TaskId, agent_id: Option<AgentId>) -> Result<(), SchedulerError> {
        let mut call = Call::new(CallType::Kill, None);
        call.kill = Some(sched::Kill { task_id, agent_id, kill_policy: None });
        self.call(call).await
    }

    /// Acknowledges an update if it asks for it (carries a uuid).
    pub async fn acknowledge(&self, status: &TaskStatus) -> Result<(), SchedulerError> {
        let (Some(uuid), Some(agent_id)) = (status.uuid.clone(), status.agent_id.clone()) else { return Ok(()) };
        let mut call = Call::new(CallType::Acknowledge, None);
        call.acknowledge = Some(sched::Acknowledge { agent_id, task_id: status.task_id.clone(), uuid });
        self.call(call).await
    }

    pub async fn reconcile(&self, tasks: Vec<(TaskId, Option<AgentId>)>) -> Result<(), SchedulerError> {
        let mut call = Call::new(CallType::Reconcile, None);
        call.reconcile = Some(sched::Reconcile {
            tasks: tasks.into_iter().map(|(task_id, agent_id)| sched::ReconcileTask { task_id, agent_id }).collect(),
        });
        self.call(call).await
    }

    pub async fn teardown(&self) -> Result<(), SchedulerError> {
        self.call(Call::new(CallType::Teardown, None)).await
    }
}

/// A FrameworkInfo with the usual defaults: current user, role `*`.
pub fn framework_info(name: &str, role: &str) -> FrameworkInfo {
    FrameworkInfo {
        user: std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into()),
        name: name.into(),
        id: None,
        failover_timeout: 0.0,
        checkpoint: false,
        role: "*".into(),
        roles: vec![role.into()],
        hostname: None,
        principal: None,
        webui_url: None,
        capabilities: ["MULTI_ROLE", "TASK_KILLING_STATE", "PARTITION_AWARE"]
            .iter()
            .map(|c| FrameworkCapability { kind: c.to_string() })
            .collect(),
        labels: None,
        offer_filters: None,
    }
}
