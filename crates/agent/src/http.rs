//! The agent's HTTP front end: the v1 executor API, the legacy read endpoints and the
//! sandbox files API (`/files/browse`, `/files/read`, `/files/download`).
use crate::images::Images;
use crate::state::{ApiError, Handle, Msg, Query};
use crate::AgentConfig;
use agora_api::executor as exec;
use agora_http::http::{Method, Request, Response, StatusCode};
use agora_http::parse_query;
use agora_http::{Body, IncomingBody};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const ROUTES: &[&str] = &[
    "/api/v1/executor",
    "/api/v1",
    "/state",
    "/health",
    "/version",
    "/flags",
    "/metrics/snapshot",
    "/monitor/statistics",
    "/containers",
    "/files/browse",
    "/files/read",
    "/files/download",
    "/agora/v1/images",
    "/agora/v1/images/pull",
    "/agora/v1/images/remove",
];

/// Maps a request path to its route (`/slave(1)` is the agent's libprocess id).
pub fn route(path: &str) -> Option<&'static str> {
    agora_http::route(path, "/slave(1)", ROUTES)
}

pub fn handler(h: Handle, config: AgentConfig, images: Arc<Images>) -> agora_http::Handler {
    let shared = Arc::new((h, config, images));
    Arc::new(move |req, _peer| {
        let s = shared.clone();
        Box::pin(async move { dispatch(&s.0, &s.1, &s.2, req).await })
    })
}

fn err(e: ApiError) -> Response<Body> {
    agora_http::text(e.status, e.message)
}

fn unavailable() -> Response<Body> {
    agora_http::text(StatusCode::SERVICE_UNAVAILABLE, "Agent is shutting down")
}

async fn dispatch(
    h: &Handle,
    config: &AgentConfig,
    images: &Arc<Images>,
    req: Request<IncomingBody>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let q = parse_query(req.uri().query());
    let Some(r) = route(&path) else {
        return agora_http::text(StatusCode::NOT_FOUND, format!("No route for '{path}'"));
    };
    match r {
        "/api/v1/executor" => executor_api(h, req).await,
        "/api/v1" => operator_api(h, images, req).await,
        "/agora/v1/images" | "/agora/v1/images/pull" | "/agora/v1/images/remove" => {
            crate::images_api::serve(images, r, &q, req).await
        }
        "/health" => agora_http::empty(StatusCode::OK),
        "/version" => agora_http::json(
            StatusCode::OK,
            &serde_json::json!({"version": agora_api::MESOS_VERSION, "agora_version": agora_api::AGORA_VERSION, "build_user": "agora"}),
        ),
        "/flags" => {
            let flags: serde_json::Map<String, serde_json::Value> =
                config.flags.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
            agora_http::json(StatusCode::OK, &serde_json::json!({ "flags": flags }))
        }
        "/state" => match h.ask(|reply| Msg::Query { query: Query::State, reply }).await {
            Some(v) => agora_http::json(StatusCode::OK, &v),
            None => unavailable(),
        },
        "/metrics/snapshot" => match h.ask(|reply| Msg::Query { query: Query::Metrics, reply }).await {
            Some(v) => agora_http::json(StatusCode::OK, &v),
            None => unavailable(),
        },
        "/monitor/statistics" | "/containers" => {
            let query = Query::Containers { detailed: r == "/containers" };
            match h.ask(|reply| Msg::Query { query, reply }).await {
                Some(v) => agora_http::json(StatusCode::OK, &v),
                None => unavailable(),
            }
        }
        "/files/browse" | "/files/read" | "/files/download" => files(h, r, &q).await,
        _ => agora_http::text(StatusCode::NOT_FOUND, format!("No route for '{path}'")),
    }
}

async fn read_call(req: Request<IncomingBody>) -> Result<bytes::Bytes, Response<Body>> {
    if req.method() != Method::POST {
        return Err(agora_http::text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Expecting a 'POST' request, received '{}'", req.method()),
        ));
    }
    agora_http::require_json(req.headers())?;
    agora_http::require_json_accept(req.headers())?;
    agora_http::read_body(req.into_body(), 16 * 1024 * 1024)
        .await
        .map_err(|e| agora_http::text(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn executor_api(h: &Handle, req: Request<IncomingBody>) -> Response<Body> {
    let body = match read_call(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let call: exec::Call = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return agora_http::text(StatusCode::BAD_REQUEST, format!("Failed to parse body into Call: {e}")),
    };
    if call.kind == exec::CallType::Subscribe {
        let (tx, resp) = agora_http::stream(StatusCode::OK, agora_http::JSON);
        match h.ask(|reply| Msg::ExecutorSubscribe { call, tx, reply }).await {
            Some(Ok(())) => resp,
            Some(Err(e)) => err(e),
            None => unavailable(),
        }
    } else {
        match h.ask(|reply| Msg::ExecutorCall { call, reply }).await {
            Some(Ok(())) => agora_http::empty(StatusCode::ACCEPTED),
            Some(Err(e)) => err(e),
            None => unavailable(),
        }
    }
}

async fn operator_api(h: &Handle, images: &Arc<Images>, req: Request<IncomingBody>) -> Response<Body> {
    let body = match read_call(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return agora_http::text(StatusCode::BAD_REQUEST, format!("Failed to parse body into Call: {e}")),
    };
    match v.get("type").and_then(|t| t.as_str()) {
        Some("GET_HEALTH") => agora_http::json(
            StatusCode::OK,
            &serde_json::json!({"type": "GET_HEALTH", "get_health": {"healthy": true}}),
        ),
        Some("GET_VERSION") => agora_http::json(
            StatusCode::OK,
            &serde_json::json!({"type": "GET_VERSION", "get_version": {"version_info": {"version": agora_api::MESOS_VERSION}}}),
        ),
        Some("GET_CONTAINERS") => {
            match h.ask(|reply| Msg::Query { query: Query::Containers { detailed: true }, reply }).await {
                Some(v) => {
                    let list: Vec<serde_json::Value> = v
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|c| {
                                    serde_json::json!({
                                        "framework_id": {"value": c["framework_id"]},
                                        "executor_id": {"value": c["executor_id"]},
                                        "executor_name": c["executor_name"],
                                        "container_id": {"value": c["container_id"]},
                                        "container_status": {"executor_pid": c["status"]["executor_pid"]},
                                        "resource_statistics": c["statistics"],
                                    })
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    agora_http::json(
                        StatusCode::OK,
                        &serde_json::json!({"type": "GET_CONTAINERS", "get_containers": {"containers": list}}),
                    )
                }
                None => unavailable(),
            }
        }
        Some("GET_METRICS") => match h.ask(|reply| Msg::Query { query: Query::Metrics, reply }).await {
            Some(m) => {
                let list: Vec<serde_json::Value> = m
                    .as_object()
                    .map(|o| o.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect())
                    .unwrap_or_default();
                agora_http::json(
                    StatusCode::OK,
                    &serde_json::json!({"type": "GET_METRICS", "get_metrics": {"metrics": list}}),
                )
            }
            None => unavailable(),
        },
        Some("PRUNE_IMAGES") => {
            // Mesos: `prune_images.excluded_images` are kept besides the images in use.
            let mut keep = images.provisioner.images_in_use();
            if let Some(list) = v.pointer("/prune_images/excluded_images").and_then(|l| l.as_array()) {
                for i in list {
                    if let Some(n) = i.pointer("/docker/name").and_then(|n| n.as_str()) {
                        keep.push(n.to_string());
                    }
                    if let Some(n) = i.pointer("/appc/name").and_then(|n| n.as_str()) {
                        keep.push(format!("appc:{n}"));
                    }
                }
            }
            match images.store.prune(&keep).await {
                Ok(r) => {
                    tracing::info!(
                        images = r.images_removed.len(),
                        layers = r.layers_removed.len(),
                        bytes = r.bytes_freed,
                        "PRUNE_IMAGES"
                    );
                    agora_http::empty(StatusCode::OK)
                }
                Err(e) => agora_http::text(StatusCode::INTERNAL_SERVER_ERROR, format!("Failed to prune images: {e}")),
            }
        }
        Some(t) => {
            agora_http::text(StatusCode::BAD_REQUEST, format!("Operator call '{t}' is not supported by this agent yet"))
        }
        None => agora_http::text(StatusCode::BAD_REQUEST, "Expecting 'type' to be present"),
    }
}

/// Maps a files-API path to a host path inside the work dir, or refuses it.
fn resolve(work_dir: &Path, agent_id: Option<&str>, path: &str) -> Result<PathBuf, (StatusCode, String)> {
    if path.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "Expecting 'path' to be present".into()));
    }
    let candidate = if path.starts_with("/frameworks/") {
        let Some(aid) = agent_id else {
            return Err((StatusCode::NOT_FOUND, format!("No file or directory found at path '{path}'")));
        };
        work_dir.join("slaves").join(aid).join(path.trim_start_matches('/'))
    } else {
        PathBuf::from(path)
    };
    let root = std::fs::canonicalize(work_dir).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let real = std::fs::canonicalize(&candidate)
        .map_err(|_| (StatusCode::NOT_FOUND, format!("No file or directory found at path '{path}'")))?;
    if !real.starts_with(&root) {
        return Err((StatusCode::NOT_FOUND, format!("No file or directory found at path '{path}'")));
    }
    Ok(real)
}

fn mode_string(mode: u32, is_dir: bool) -> String {
    let mut s = String::with_capacity(10);
    s.push(if is_dir { 'd' } else { '-' });
    for shift in [6u32, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

async fn files(h: &Handle, route: &str, q: &HashMap<String, String>) -> Response<Body> {
    use std::os::unix::fs::MetadataExt as _;
    let Some(info) = h.ask(|reply| Msg::Query { query: Query::SandboxRoot, reply }).await else {
        return unavailable();
    };
    let work_dir = PathBuf::from(info["work_dir"].as_str().unwrap_or("/nonexistent"));
    let agent_id = info["agent_id"].as_str();
    let path = q.get("path").cloned().unwrap_or_default();
    let real = match resolve(&work_dir, agent_id, &path) {
        Ok(p) => p,
        Err((s, m)) => return agora_http::text(s, m),
    };
    match route {
        "/files/browse" => {
            let Ok(rd) = std::fs::read_dir(&real) else {
                return agora_http::text(StatusCode::NOT_FOUND, format!("'{path}' is not a directory"));
            };
            let mut out = Vec::new();
            for entry in rd.flatten() {
                let Ok(md) = entry.metadata() else { continue };
                out.push(serde_json::json!({
                    "path": format!("{}/{}", path.trim_end_matches('/'), entry.file_name().to_string_lossy()),
                    "nlink": md.nlink(),
                    "size": md.size(),
                    "mtime": md.mtime(),
                    "mode": mode_string(md.mode(), md.is_dir()),
                    "uid": md.uid().to_string(),
                    "gid": md.gid().to_string(),
                }));
            }
            agora_http::json(StatusCode::OK, &out)
        }
        "/files/read" => {
            let parse = |k: &str| -> Result<Option<i64>, String> {
                match q.get(k) {
                    None => Ok(None),
                    Some(v) => match v.parse::<i64>() {
                        Ok(n) if n >= 0 => Ok(Some(n)),
                        Ok(-1) if k == "length" => Ok(None),
                        _ => Err(format!("Failed to parse '{k}': '{v}' is not a non-negative integer")),
                    },
                }
            };
            let (offset, length) = match (parse("offset"), parse("length")) {
                (Ok(o), Ok(l)) => (o, l),
                (Err(e), _) | (_, Err(e)) => return agora_http::text(StatusCode::BAD_REQUEST, e),
            };
            let Ok(md) = std::fs::metadata(&real) else {
                return agora_http::text(StatusCode::NOT_FOUND, format!("No file found at path '{path}'"));
            };
            if md.is_dir() {
                return agora_http::text(StatusCode::BAD_REQUEST, format!("Cannot read a directory: '{path}'"));
            }
            let size = md.len();
            let Some(offset) = offset else {
                return agora_http::json(StatusCode::OK, &serde_json::json!({"offset": size, "data": ""}));
            };
            let offset = (offset as u64).min(size);
            let max = 16 * 1024 * 1024u64;
            let len = length.map(|l| l as u64).unwrap_or(max).min(max).min(size - offset);
            let data = match read_range(&real, offset, len) {
                Ok(d) => d,
                Err(e) => return agora_http::text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            agora_http::json(
                StatusCode::OK,
                &serde_json::json!({"offset": offset, "data": String::from_utf8_lossy(&data)}),
            )
        }
        _ => match std::fs::read(&real) {
            Ok(d) => agora_http::bytes(StatusCode::OK, "application/octet-stream", d),
            Err(e) => agora_http::text(StatusCode::NOT_FOUND, e.to_string()),
        },
    }
}

fn read_range(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_routes() {
        assert_eq!(route("/slave(1)/state"), Some("/state"));
        assert_eq!(route("/api/v1/executor"), Some("/api/v1/executor"));
        assert_eq!(route("/files/read.json"), Some("/files/read"));
        assert_eq!(route("/nope"), None);
    }

    #[test]
    fn files_never_escape_the_work_dir() {
        let dir = std::env::temp_dir().join(format!("agora-files-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("slaves/A/frameworks/f")).unwrap();
        std::fs::write(dir.join("slaves/A/frameworks/f/stdout"), "x").unwrap();
        assert!(resolve(&dir, Some("A"), "/frameworks/f/stdout").is_ok());
        assert_eq!(
            resolve(&dir, Some("A"), "/frameworks/../../../../etc/passwd").unwrap_err().0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(resolve(&dir, Some("A"), "/etc/passwd").unwrap_err().0, StatusCode::NOT_FOUND);
        std::os::unix::fs::symlink("/etc", dir.join("slaves/A/frameworks/f/esc")).unwrap();
        assert_eq!(resolve(&dir, Some("A"), "/frameworks/f/esc/passwd").unwrap_err().0, StatusCode::NOT_FOUND);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn modes() {
        assert_eq!(mode_string(0o755, true), "drwxr-xr-x");
        assert_eq!(mode_string(0o644, false), "-rw-r--r--");
    }
}
