//! The agent's image API (Agora's own, beside the Mesos operator API), used by
//! `agora image pull|ls|inspect|rm`:
//!
//! - `GET /agora/v1/images`: every image in the store (JSON array).
//! - `GET /agora/v1/images?name=NAME`: one image by reference or id; 404 when absent.
//! - `POST /agora/v1/images/pull` `{"name": NAME, "policy": "always"|"if_not_present"}`
//!   (or `{"aci": PATH}` / `{"docker_archive": PATH}` / `{"oci_layout": PATH}` to import a
//!   local file): a RecordIO stream of JSON events, `{"type": "PROGRESS", "layers": n,
//!   "layers_done": n, "bytes": n, "bytes_done": n}` while it runs, then one `{"type":
//!   "PULLED", "image": {...}}` or `{"type": "ERROR", "message": "..."}`.
//! - `POST /agora/v1/images/remove` `{"name": NAME}`: removes the reference (the image with
//!   its last one); 404 when absent, 409 while a container uses it.
use crate::images::{image_json, Images, Progress};
use agora_http::http::{Method, Request, Response, StatusCode};
use agora_http::{Body, IncomingBody};
use agora_image::{PullEvent, PullOptions, PullPolicy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn record(v: &serde_json::Value) -> bytes::Bytes {
    bytes::Bytes::from(agora_api::recordio::encode(&agora_api::json::to_ascii_json(v)))
}

async fn body_json(req: Request<IncomingBody>) -> Result<serde_json::Value, Response<Body>> {
    if req.method() != Method::POST {
        return Err(agora_http::text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Expecting a 'POST' request, received '{}'", req.method()),
        ));
    }
    let b = agora_http::read_body(req.into_body(), 1024 * 1024)
        .await
        .map_err(|e| agora_http::text(StatusCode::BAD_REQUEST, e.to_string()))?;
    serde_json::from_slice(&b).map_err(|e| agora_http::text(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

pub async fn serve(
    images: &Arc<Images>,
    route: &str,
    q: &HashMap<String, String>,
    req: Request<IncomingBody>,
) -> Response<Body> {
    match route {
        "/agora/v1/images" => {
            if req.method() != Method::GET {
                return agora_http::text(StatusCode::METHOD_NOT_ALLOWED, "Expecting a 'GET' request");
            }
            match q.get("name") {
                None => {
                    let list: Vec<serde_json::Value> = images.store.list().iter().map(image_json).collect();
                    agora_http::json(StatusCode::OK, &list)
                }
                Some(name) => match images.store.inspect(name) {
                    Some(img) => agora_http::json(StatusCode::OK, &image_json(&img)),
                    None => agora_http::text(StatusCode::NOT_FOUND, format!("No image '{name}' in the store")),
                },
            }
        }
        "/agora/v1/images/remove" => {
            let v = match body_json(req).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            let Some(name) = v.get("name").and_then(|n| n.as_str()) else {
                return agora_http::text(StatusCode::BAD_REQUEST, "Expecting 'name' to be present");
            };
            let Some(img) = images.store.inspect(name) else {
                return agora_http::text(StatusCode::NOT_FOUND, format!("No image '{name}' in the store"));
            };
            if images.provisioner.images_in_use().contains(&img.id.to_string()) {
                return agora_http::text(
                    StatusCode::CONFLICT,
                    format!("Image '{name}' ({}) is used by a container", img.id),
                );
            }
            match images.store.remove(name).await {
                Ok(true) => {
                    agora_http::json(StatusCode::OK, &serde_json::json!({"removed": name, "id": img.id.to_string()}))
                }
                Ok(false) => agora_http::text(StatusCode::NOT_FOUND, format!("No image '{name}' in the store")),
                Err(e) => {
                    agora_http::text(StatusCode::INTERNAL_SERVER_ERROR, format!("Failed to remove '{name}': {e}"))
                }
            }
        }
        _ => {
            let v = match body_json(req).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            pull(images.clone(), v)
        }
    }
}

/// Starts a pull (or import) and streams its progress.
fn pull(images: Arc<Images>, v: serde_json::Value) -> Response<Body> {
    let str_of = |k: &str| v.get(k).and_then(|n| n.as_str()).map(str::to_string);
    let (name, aci, archive, layout) = (str_of("name"), str_of("aci"), str_of("docker_archive"), str_of("oci_layout"));
    if name.is_none() && aci.is_none() && archive.is_none() && layout.is_none() {
        return agora_http::text(
            StatusCode::BAD_REQUEST,
            "Expecting 'name' (or 'aci', 'docker_archive', 'oci_layout') to be present",
        );
    }
    let policy = match v.get("policy").and_then(|p| p.as_str()) {
        None | Some("always") => PullPolicy::Always,
        Some("if_not_present") => PullPolicy::IfNotPresent,
        Some(p) => {
            return agora_http::text(StatusCode::BAD_REQUEST, format!("unknown policy '{p}' (always, if_not_present)"))
        }
    };
    let reference = match &name {
        Some(n) if aci.is_none() && archive.is_none() && layout.is_none() => match images.store.parse_reference(n) {
            Ok(r) => Some(r),
            Err(e) => return agora_http::text(StatusCode::BAD_REQUEST, format!("invalid image reference '{n}': {e}")),
        },
        _ => None,
    };
    let (tx, resp) = agora_http::stream(StatusCode::OK, agora_http::JSON);
    let progress = Arc::new(Mutex::new(Progress::default()));
    let p2 = progress.clone();
    let tx2 = tx.clone();
    // Progress every 200 ms while the pull runs.
    let ticker = tokio::spawn(async move {
        let mut last = (usize::MAX, u64::MAX);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Some(p) = p2.lock().ok().map(|p| p.clone()) else { return };
            if (p.layers_done, p.bytes_done()) != last && p.layers > 0 {
                last = (p.layers_done, p.bytes_done());
                let ev = serde_json::json!({"type": "PROGRESS", "layers": p.layers, "layers_done": p.layers_done,
                    "bytes": p.bytes, "bytes_done": p.bytes_done()});
                if tx2.send(record(&ev)).is_err() {
                    return;
                }
            }
        }
    });
    tokio::spawn(async move {
        let shown = name.clone().or(aci.clone()).or(archive.clone()).or(layout.clone()).unwrap_or_default();
        let result = if let Some(r) = reference {
            let p3 = progress.clone();
            let opts = PullOptions {
                policy,
                platform: None,
                progress: Some(Arc::new(move |e: &PullEvent| {
                    if let Ok(mut p) = p3.lock() {
                        p.apply(e);
                    }
                })),
            };
            images.store.pull(&r, &opts).await.map_err(|e| e.to_string())
        } else if let Some(path) = aci {
            images.store.import_aci(std::path::Path::new(&path)).await.map_err(|e| e.to_string())
        } else if let Some(path) = archive {
            let r = match name.as_deref().map(|n| images.store.parse_reference(n)).transpose() {
                Ok(r) => r,
                Err(e) => {
                    ticker.abort();
                    let _ = tx.send(record(&serde_json::json!({"type": "ERROR", "message": e.to_string()})));
                    return;
                }
            };
            images
                .store
                .import_docker_archive(std::path::Path::new(&path), r.as_ref())
                .await
                .map_err(|e| e.to_string())
                .and_then(|v| v.into_iter().next().ok_or_else(|| "the archive holds no image".to_string()))
        } else if let Some(path) = layout {
            match name.as_deref().map(|n| images.store.parse_reference(n)) {
                Some(Ok(r)) => images
                    .store
                    .import_oci_layout(std::path::Path::new(&path), v.get("tag").and_then(|t| t.as_str()), &r)
                    .await
                    .map_err(|e| e.to_string()),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("importing an OCI layout needs a 'name' for the image".to_string()),
            }
        } else {
            Err("nothing to pull".to_string())
        };
        ticker.abort();
        let ev = match result {
            Ok(img) => {
                tracing::info!(image = %shown, id = %img.id, "image pulled through the API");
                serde_json::json!({"type": "PULLED", "image": image_json(&img)})
            }
            Err(message) => {
                tracing::warn!(image = %shown, error = %message, "image pull through the API failed");
                serde_json::json!({"type": "ERROR", "message": message})
            }
        };
        let _ = tx.send(record(&ev));
    });
    resp
}
