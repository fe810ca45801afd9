//! The master's HTTP front end: routing (longest prefix, `/master` process prefix, `.json`
//! aliases), request validation, and translation into actor messages. A master that does not
//! lead answers what only the leader can answer with 307 to the leader (`Location:
//! //host:port/path?query`, protocol-relative as in Mesos) or 503 when it knows of none;
//! `/health`, `/version`, `/flags`, `/metrics/snapshot` and `/redirect` work on every master.
use crate::state::{ApiError, CallReply, Handle, Msg, Query, QueryReply, Role};
use agora_api::agent_proto::AgentToMaster;
use agora_api::{operator, scheduler};
use agora_http::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use agora_http::parse_query;
use agora_http::{Body, IncomingBody};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

const MAX_BODY: usize = 64 * 1024 * 1024;

/// The routes, matched by longest prefix on whole path segments.
const ROUTES: &[&str] = &[
    "/api/v1/scheduler",
    "/quota",
    "/maintenance/schedule",
    "/maintenance/status",
    "/api/v1",
    "/agora/v1/agent",
    "/state",
    "/state-summary",
    "/slaves",
    "/frameworks",
    "/tasks",
    "/version",
    "/health",
    "/redirect",
    "/metrics/snapshot",
    "/flags",
    "/roles",
    "/teardown",
    "/quota",
    "/maintenance/schedule",
    "/maintenance/status",
];

/// Maps a request path to its route (`/master` is the master's libprocess id).
pub fn route(path: &str) -> Option<&'static str> {
    agora_http::route(path, "/master", ROUTES)
}

/// Routes only the leader answers.
const LEADER_ONLY: &[&str] = &[
    "/api/v1/scheduler",
    "/api/v1",
    "/agora/v1/agent",
    "/state",
    "/state-summary",
    "/slaves",
    "/frameworks",
    "/tasks",
    "/roles",
    "/teardown",
];

fn same_address(a: &agora_api::MasterInfo, b: &agora_api::MasterInfo) -> bool {
    agora_registry::master_addr(a) == agora_registry::master_addr(b)
}

/// 307 to `//leader{suffix}`, or 503 when no leader is known.
fn redirect(h: &Handle, suffix: &str) -> Response<Body> {
    let role = h.role.borrow().clone();
    let leader = match role {
        Role::Leading => h.master_info.clone(),
        // The leader key still names this master's address from before a restart: that
        // leader is gone (its lease will expire); redirecting would loop.
        Role::Following(Some(l)) if l.id != h.master_info.id && same_address(&l, &h.master_info) => {
            return agora_http::text(StatusCode::SERVICE_UNAVAILABLE, "No leader elected")
        }
        Role::Following(Some(l)) => l,
        Role::Following(None) => return agora_http::text(StatusCode::SERVICE_UNAVAILABLE, "No leader elected"),
        Role::Recovering => {
            return agora_http::text(StatusCode::SERVICE_UNAVAILABLE, "Master has not finished recovery")
        }
    };
    let loc = format!("//{}{suffix}", agora_registry::master_addr(&leader));
    let mut resp = agora_http::empty(StatusCode::TEMPORARY_REDIRECT);
    if let Ok(v) = HeaderValue::from_str(&loc) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub fn handler(h: Handle) -> agora_http::Handler {
    let h = Arc::new(h);
    Arc::new(move |req, _peer| {
        let h = h.clone();
        Box::pin(async move { dispatch(&h, req).await })
    })
}

fn err(e: ApiError) -> Response<Body> {
    agora_http::text(e.status, e.message)
}

fn unavailable() -> Response<Body> {
    agora_http::text(StatusCode::SERVICE_UNAVAILABLE, "Master is shutting down")
}

/// A JSON reply for the GET endpoints, wrapped for `?jsonp=cb`.
fn json_or_jsonp(v: &serde_json::Value, q: &HashMap<String, String>) -> Response<Body> {
    json_chunks_or_jsonp(vec![Bytes::from(serde_json::to_vec(v).unwrap_or_default())], jsonp_callback(q))
}

/// The `?jsonp=callback` a GET asks for, if it is a plain name.
fn jsonp_callback(q: &HashMap<String, String>) -> Option<&str> {
    q.get("jsonp").map(String::as_str).filter(|cb| {
        !cb.is_empty() && cb.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$')
    })
}

/// A JSON body, or with a `?jsonp=callback` that body wrapped as `callback(...);`.
fn json_chunks_or_jsonp(mut body: Vec<Bytes>, callback: Option<&str>) -> Response<Body> {
    match callback {
        Some(cb) => {
            body.insert(0, Bytes::from(format!("{cb}(")));
            body.push(Bytes::from_static(b");"));
            agora_http::chunks(StatusCode::OK, "text/javascript", body)
        }
        None => agora_http::chunks(StatusCode::OK, "application/json", body),
    }
}

/// Chunks of a big read queued for its client, at most (each up to a few megabytes).
const READ_QUEUE: usize = 4;

/// How long a big read waits for its client to take a chunk before giving up.
const READ_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Big reads being encoded and streamed at once, at most: each holds a blocking thread and
/// its encoding threads for as long as its client takes to read, so slow or stalled readers
/// must not take every blocking thread (the registry writes on them). Further big reads wait
/// for a turn, holding no thread and no snapshot.
static BIG_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

/// A turn for a big read (`None` for the others, which are answered at once).
async fn big_read_turn(query: &Query) -> Option<tokio::sync::SemaphorePermit<'static>> {
    if query.is_big() {
        BIG_READS.acquire().await.ok()
    } else {
        None
    }
}

/// The answer to a query: JSON written on the loop as it is; a view encoded on blocking
/// threads and streamed while it is written (chunked), wrapped for `callback` if given.
/// A client that takes nothing for `stall` is given up on.
fn query_response(
    r: QueryReply,
    callback: Option<&str>,
    turn: Option<tokio::sync::SemaphorePermit<'static>>,
    stall: std::time::Duration,
) -> Response<Body> {
    let v = match r {
        QueryReply::Json(b) => return json_chunks_or_jsonp(vec![Bytes::from(b)], callback),
        QueryReply::View(v) => v,
    };
    let content_type = if callback.is_some() { "text/javascript" } else { "application/json" };
    let (tx, response) = agora_http::bounded_stream(StatusCode::OK, content_type, READ_QUEUE);
    let callback = callback.map(str::to_string);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let started = std::time::Instant::now();
        let mut bytes = 0usize;
        // A client that takes nothing for `stall` is given up on (its turn freed).
        let mut send = |b: Bytes| {
            bytes += b.len();
            runtime.block_on(tokio::time::timeout(stall, tx.send(b))).is_ok_and(|sent| sent.is_ok())
        };
        let complete = callback.as_ref().is_none_or(|cb| send(Bytes::from(format!("{cb}("))))
            && v.encode_into(crate::views::encode_threads(), &mut send)
            && callback.is_none_or(|_| send(Bytes::from_static(b");")));
        tracing::debug!(ms = started.elapsed().as_millis() as u64, bytes, complete, "streamed a view");
    });
    response
}

async fn query(h: &Handle, query: Query, q: &HashMap<String, String>) -> Response<Body> {
    let turn = big_read_turn(&query).await;
    match h.ask(|reply| Msg::Query { query, reply }).await {
        Some(r) => query_response(r, jsonp_callback(q), turn, READ_STALL),
        None => unavailable(),
    }
}

async fn dispatch(h: &Handle, req: Request<IncomingBody>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let q = parse_query(req.uri().query());
    let Some(r) = route(&path) else {
        return agora_http::text(StatusCode::NOT_FOUND, format!("No route for '{path}'"));
    };
    if LEADER_ONLY.contains(&r) && *h.role.borrow() != Role::Leading {
        let suffix = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        return redirect(h, &suffix);
    }
    match r {
        "/api/v1/scheduler" => scheduler_api(h, req).await,
        "/api/v1" => operator_api(h, req).await,
        "/agora/v1/agent" => agent_api(h, req).await,
        "/health" => agora_http::empty(StatusCode::OK),
        "/version" => json_or_jsonp(&crate::legacy::version_json(), &q),
        "/redirect" => {
            // `/redirect/...` would redirect in a loop: Mesos answers 404.
            let p = path.trim_end_matches('/');
            if p == "/redirect" || p == "/master/redirect" {
                redirect(h, "")
            } else {
                agora_http::text(StatusCode::NOT_FOUND, format!("No route for '{path}'"))
            }
        }
        "/flags" => {
            let flags: serde_json::Map<String, serde_json::Value> =
                h.flags.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
            json_or_jsonp(&serde_json::json!({ "flags": flags }), &q)
        }
        "/state" => query(h, Query::State, &q).await,
        "/state-summary" => query(h, Query::StateSummary, &q).await,
        "/slaves" => query(h, Query::Slaves, &q).await,
        "/roles" => query(h, Query::Roles, &q).await,
        "/metrics/snapshot" => query(h, Query::Metrics, &q).await,
        "/frameworks" => query(h, Query::Frameworks { framework_id: q.get("framework_id").cloned() }, &q).await,
        "/tasks" => {
            let limit = match q.get("limit").map(|s| s.parse::<i64>()) {
                None => 100,
                Some(Ok(-1)) => usize::MAX,
                Some(Ok(n)) if n >= 0 => n as usize,
                _ => return agora_http::text(StatusCode::BAD_REQUEST, "'limit' must be a non-negative integer or -1"),
            };
            let offset = match q.get("offset").map(|s| s.parse::<usize>()) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    return agora_http::text(StatusCode::BAD_REQUEST, "'offset' must be a non-negative integer")
                }
            };
            let ascending = match q.get("order").map(String::as_str) {
                None | Some("des") => false,
                Some("asc") => true,
                Some(o) => {
                    return agora_http::text(
                        StatusCode::BAD_REQUEST,
                        format!("'order' must be 'asc' or 'des', not '{o}'"),
                    )
                }
            };
            let query_v = Query::Tasks {
                limit,
                offset,
                ascending,
                framework_id: q.get("framework_id").cloned(),
                task_id: q.get("task_id").cloned(),
            };
            query(h, query_v, &q).await
        }
        "/quota" | "/maintenance/schedule" | "/maintenance/status" => {
            if req.method() != Method::GET {
                return agora_http::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("Expecting a GET request; change {r} through the v1 operator API"),
                );
            }
            use operator::CallType as T;
            let kind = match r {
                "/quota" => T::GetQuota,
                "/maintenance/schedule" => T::GetMaintenanceSchedule,
                _ => T::GetMaintenanceStatus,
            };
            let call = operator::Call { kind, ..Default::default() };
            match h.ask(|reply| Msg::Operator { call, reply }).await {
                Some(Ok(r)) => {
                    let v = match kind {
                        T::GetQuota => serde_json::to_value(r.get_quota.map(|q| q.status)),
                        T::GetMaintenanceSchedule => {
                            serde_json::to_value(r.get_maintenance_schedule.map(|s| s.schedule))
                        }
                        _ => serde_json::to_value(r.get_maintenance_status.map(|s| s.status)),
                    };
                    json_or_jsonp(&v.unwrap_or_default(), &q)
                }
                Some(Err(e)) => err(e),
                None => unavailable(),
            }
        }
        "/teardown" => {
            if req.method() != Method::POST {
                return agora_http::text(StatusCode::METHOD_NOT_ALLOWED, "Expecting a POST request");
            }
            let body = match agora_http::read_body(req.into_body(), MAX_BODY).await {
                Ok(b) => b,
                Err(e) => return agora_http::text(StatusCode::BAD_REQUEST, e.to_string()),
            };
            let form = parse_query(Some(&String::from_utf8_lossy(&body)));
            let Some(fid) = form.get("frameworkId").or_else(|| form.get("framework_id")) else {
                return agora_http::text(StatusCode::BAD_REQUEST, "Missing 'frameworkId' query parameter");
            };
            let call = operator::Call {
                kind: operator::CallType::Teardown,
                teardown: Some(operator::TeardownCall { framework_id: fid.as_str().into() }),
                ..Default::default()
            };
            match h.ask(|reply| Msg::Operator { call, reply }).await {
                Some(Ok(_)) => agora_http::empty(StatusCode::OK),
                Some(Err(e)) => err(e),
                None => unavailable(),
            }
        }
        _ => agora_http::text(StatusCode::NOT_FOUND, format!("No route for '{path}'")),
    }
}

/// Checks method, content type and accept header; reads the body.
async fn read_call(req: Request<IncomingBody>) -> Result<(agora_http::http::HeaderMap, bytes::Bytes), Response<Body>> {
    if req.method() != Method::POST {
        return Err(agora_http::text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Expecting a 'POST' request, received '{}'", req.method()),
        ));
    }
    agora_http::require_json(req.headers())?;
    agora_http::require_json_accept(req.headers())?;
    let headers = req.headers().clone();
    let body = agora_http::read_body(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| agora_http::text(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok((headers, body))
}

async fn scheduler_api(h: &Handle, req: Request<IncomingBody>) -> Response<Body> {
    let (headers, body) = match read_call(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let call: scheduler::Call = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return agora_http::text(StatusCode::BAD_REQUEST, format!("Failed to parse body into Call: {e}")),
    };
    let stream_id = headers.get("Mesos-Stream-Id").and_then(|v| v.to_str().ok()).map(str::to_string);
    if call.kind == scheduler::CallType::Subscribe {
        if stream_id.is_some() {
            return agora_http::text(
                StatusCode::BAD_REQUEST,
                "Subscribe calls should not include the 'Mesos-Stream-Id' header",
            );
        }
        let (tx, mut resp) = agora_http::stream(StatusCode::OK, agora_http::JSON);
        match h.ask(|reply| Msg::Subscribe { call, tx, reply }).await {
            Some(Ok(id)) => {
                if let Ok(v) = HeaderValue::from_str(&id) {
                    resp.headers_mut().insert("Mesos-Stream-Id", v);
                }
                resp
            }
            Some(Err(e)) => err(e),
            None => unavailable(),
        }
    } else {
        match h.ask(|reply| Msg::Scheduler { call, stream_id, reply }).await {
            Some(Ok(CallReply::Accepted)) => agora_http::empty(StatusCode::ACCEPTED),
            Some(Ok(CallReply::Ok)) => agora_http::empty(StatusCode::OK),
            Some(Err(e)) => err(e),
            None => unavailable(),
        }
    }
}

async fn operator_api(h: &Handle, req: Request<IncomingBody>) -> Response<Body> {
    let (_, body) = match read_call(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let call: operator::Call = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return agora_http::text(StatusCode::BAD_REQUEST, format!("Failed to parse body into Call: {e}")),
    };
    if call.kind == operator::CallType::Unknown {
        return agora_http::text(StatusCode::BAD_REQUEST, "Unknown or unsupported operator call type");
    }
    // The big reads are written straight from the state, without copying every task.
    let big = match call.kind {
        operator::CallType::GetState => Some(Query::GetState),
        operator::CallType::GetTasks => Some(Query::GetTasks),
        _ => None,
    };
    if let Some(query) = big {
        let turn = big_read_turn(&query).await;
        return match h.ask(|reply| Msg::Query { query, reply }).await {
            Some(r) => query_response(r, None, turn, READ_STALL),
            None => unavailable(),
        };
    }
    match h.ask(|reply| Msg::Operator { call, reply }).await {
        Some(Ok(r)) => {
            use operator::CallType as T;
            if matches!(
                r.kind,
                T::Teardown
                    | T::MarkAgentGone
                    | T::UpdateWeights
                    | T::UpdateQuota
                    | T::SetQuota
                    | T::RemoveQuota
                    | T::UpdateMaintenanceSchedule
                    | T::StartMaintenance
                    | T::StopMaintenance
            ) {
                agora_http::empty(StatusCode::OK)
            } else if matches!(
                r.kind,
                T::ReserveResources | T::UnreserveResources | T::CreateVolumes | T::DestroyVolumes
            ) {
                agora_http::empty(StatusCode::ACCEPTED)
            } else {
                agora_http::json(StatusCode::OK, &r)
            }
        }
        Some(Err(e)) => err(e),
        None => unavailable(),
    }
}

async fn agent_api(h: &Handle, req: Request<IncomingBody>) -> Response<Body> {
    let (_, body) = match read_call(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let call: AgentToMaster = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return agora_http::text(StatusCode::BAD_REQUEST, format!("Failed to parse agent call: {e}")),
    };
    match call {
        AgentToMaster::Register { .. } | AgentToMaster::Reregister { .. } => {
            let (tx, resp) = agora_http::stream(StatusCode::OK, agora_http::JSON);
            match h.ask(|reply| Msg::AgentSubscribe { call, tx, reply }).await {
                Some(Ok(())) => resp,
                Some(Err(e)) => err(e),
                None => unavailable(),
            }
        }
        call => match h.ask(|reply| Msg::AgentCall { call, reply }).await {
            Some(Ok(())) => agora_http::empty(StatusCode::ACCEPTED),
            Some(Err(e)) => err(e),
            None => unavailable(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A view bigger than what is encoded ahead plus what the response queues.
    fn big_view() -> crate::views::View {
        let task: agora_api::Task = serde_json::from_value(serde_json::json!({
            "name": "t", "task_id": {"value": "t"}, "framework_id": {"value": "f"},
            "agent_id": {"value": "a"}, "state": "TASK_RUNNING",
        }))
        .unwrap();
        let task = Arc::new(task);
        let mut v = crate::views::View::new();
        v.raw("{");
        v.key(true, "tasks");
        let tasks = (0..40 * 4096).map(|_| crate::views::TaskRef::Done(task.clone())).collect();
        v.tasks(crate::views::TaskForm::V1, tasks);
        v.raw("}");
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_big_read_gives_its_turn_back_when_its_client_stalls_or_leaves() {
        use http_body_util::BodyExt;
        let sem: &'static tokio::sync::Semaphore = Box::leak(Box::new(tokio::sync::Semaphore::new(1)));
        let freed = |sem: &tokio::sync::Semaphore| {
            let t0 = std::time::Instant::now();
            while sem.available_permits() == 0 {
                assert!(t0.elapsed() < std::time::Duration::from_secs(60), "the turn was never given back");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        // A client that reads one chunk, then nothing.
        let turn = sem.try_acquire().ok();
        let mut r = query_response(QueryReply::View(big_view()), None, turn, std::time::Duration::from_millis(300));
        assert!(r.body_mut().frame().await.is_some());
        assert_eq!(sem.available_permits(), 0, "the read holds its turn while streaming");
        tokio::task::spawn_blocking(move || freed(sem)).await.unwrap();
        drop(r);
        // A client that goes away at once.
        let turn = sem.try_acquire().ok();
        let r = query_response(QueryReply::View(big_view()), None, turn, std::time::Duration::from_secs(600));
        drop(r);
        tokio::task::spawn_blocking(move || freed(sem)).await.unwrap();
        // A client that reads everything gets the whole body, wrapped for JSONP.
        let turn = sem.try_acquire().ok();
        let r = query_response(QueryReply::View(big_view()), Some("cb"), turn, std::time::Duration::from_secs(600));
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"cb({\"tasks\":[{") && body.ends_with(b"]});"));
        let json: serde_json::Value = serde_json::from_slice(&body[3..body.len() - 2]).unwrap();
        assert_eq!(json["tasks"].as_array().unwrap().len(), 40 * 4096);
        tokio::task::spawn_blocking(move || freed(sem)).await.unwrap();
    }

    #[test]
    fn longest_prefix_routing() {
        assert_eq!(route("/api/v1/scheduler"), Some("/api/v1/scheduler"));
        assert_eq!(route("/master/api/v1/scheduler"), Some("/api/v1/scheduler"));
        assert_eq!(route("/api/v1/operator"), Some("/api/v1"));
        assert_eq!(route("/master/frameworks/"), Some("/frameworks"));
        assert_eq!(route("/state.json"), Some("/state"));
        assert_eq!(route("/master/state"), Some("/state"));
        assert_eq!(route("/statex"), None);
        assert_eq!(route("/"), None);
        assert_eq!(route("/master"), None);
        assert_eq!(route("/state-summary"), Some("/state-summary"));
    }
}
