//! `agora image pull|ls|inspect|rm`: the image store of one agent, through its image API
//! (`/agora/v1/images`, see `agora_agent::images_api`).
use agora_http::{base_url, Client, ClientError};
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error(transparent)]
    Http(#[from] ClientError),
    #[error("the agent at {agent} answered {status}: {body}")]
    Status { agent: String, status: u16, body: String },
    #[error("undecodable answer from the agent: {0}")]
    Decode(String),
    #[error("{0}")]
    Failed(String),
}

/// What to pull: a reference from a registry, or a local file to import.
#[derive(Clone, Debug, Default)]
pub struct PullRequest {
    pub name: Option<String>,
    pub aci: Option<String>,
    pub docker_archive: Option<String>,
    pub oci_layout: Option<String>,
    /// Use a stored image for the reference without asking the registry.
    pub if_not_present: bool,
}

const T: Duration = Duration::from_secs(30);

fn mb(b: u64) -> f64 {
    b as f64 / 1_000_000.0
}

/// Pulls an image on the agent, showing progress (a bar on a terminal, lines otherwise).
/// Returns the image as the agent shows it.
pub async fn pull(agent: &str, req: &PullRequest) -> Result<serde_json::Value, ImageError> {
    let url = format!("{}/agora/v1/images/pull", base_url(agent));
    let mut body = serde_json::json!({"policy": if req.if_not_present { "if_not_present" } else { "always" }});
    for (k, v) in [
        ("name", &req.name),
        ("aci", &req.aci),
        ("docker_archive", &req.docker_archive),
        ("oci_layout", &req.oci_layout),
    ] {
        if let Some(v) = v {
            body[k] = serde_json::Value::String(v.clone());
        }
    }
    let shown = req.name.clone().or(req.aci.clone()).or(req.docker_archive.clone()).or(req.oci_layout.clone());
    let shown = shown.unwrap_or_default();
    let mut stream = Client::new().subscribe(&url, &[], &body, T).await?;
    let tty = std::io::stderr().is_terminal();
    let mut last_layers = usize::MAX;
    let mut drawn = false;
    while let Some(rec) = stream.next().await {
        let rec = rec?;
        let ev: serde_json::Value = serde_json::from_slice(&rec).map_err(|e| ImageError::Decode(e.to_string()))?;
        match ev["type"].as_str() {
            Some("PROGRESS") => {
                let n = |k: &str| ev[k].as_u64().unwrap_or(0);
                let (layers, done, bytes, got) =
                    (n("layers") as usize, n("layers_done") as usize, n("bytes"), n("bytes_done"));
                if tty {
                    let width = 30usize;
                    let frac = if bytes > 0 { (got as f64 / bytes as f64).min(1.0) } else { 0.0 };
                    let fill = (frac * width as f64) as usize;
                    eprint!(
                        "\r{shown}: [{}{}] {done}/{layers} layers, {:.1}/{:.1} MB ",
                        "#".repeat(fill),
                        ".".repeat(width - fill),
                        mb(got),
                        mb(bytes)
                    );
                    let _ = std::io::stderr().flush();
                    drawn = true;
                } else if done != last_layers {
                    last_layers = done;
                    eprintln!("{shown}: {done}/{layers} layers, {:.1} of {:.1} MB", mb(got), mb(bytes));
                }
            }
            Some("PULLED") => {
                if drawn {
                    eprintln!();
                }
                return Ok(ev["image"].clone());
            }
            Some("ERROR") => {
                if drawn {
                    eprintln!();
                }
                return Err(ImageError::Failed(ev["message"].as_str().unwrap_or("pull failed").to_string()));
            }
            _ => {}
        }
    }
    Err(ImageError::Failed("the agent closed the pull stream without a result".into()))
}

async fn get(agent: &str, query: &str) -> Result<Option<serde_json::Value>, ImageError> {
    let url = format!("{}/agora/v1/images{query}", base_url(agent));
    let r = Client::new().get(&url, T).await?;
    if r.status.as_u16() == 404 {
        return Ok(None);
    }
    if !r.status.is_success() {
        return Err(ImageError::Status {
            agent: agent.into(),
            status: r.status.as_u16(),
            body: String::from_utf8_lossy(&r.body).trim().to_string(),
        });
    }
    serde_json::from_slice(&r.body).map(Some).map_err(|e| ImageError::Decode(e.to_string()))
}

/// Every image in the agent's store.
pub async fn list(agent: &str) -> Result<Vec<serde_json::Value>, ImageError> {
    Ok(get(agent, "").await?.and_then(|v| v.as_array().cloned()).unwrap_or_default())
}

/// One image by reference or id.
pub async fn inspect(agent: &str, name: &str) -> Result<Option<serde_json::Value>, ImageError> {
    get(agent, &format!("?name={}", crate::run::encode(name))).await
}

/// Removes an image reference; `false` when there was none.
pub async fn remove(agent: &str, name: &str) -> Result<bool, ImageError> {
    let url = format!("{}/agora/v1/images/remove", base_url(agent));
    let body = serde_json::to_vec(&serde_json::json!({"name": name})).map_err(|e| ImageError::Decode(e.to_string()))?;
    let r = Client::new().post(&url, &[], body, T).await?;
    match r.status.as_u16() {
        200 => Ok(true),
        404 => Ok(false),
        s => Err(ImageError::Status {
            agent: agent.into(),
            status: s,
            body: String::from_utf8_lossy(&r.body).trim().to_string(),
        }),
    }
}

/// `agora image ls` as a table: reference, id (short), size, layers.
pub fn table(images: &[serde_json::Value]) -> String {
    let mut rows = vec![["REFERENCE".to_string(), "ID".into(), "SIZE".into(), "LAYERS".into()]];
    for i in images {
        let id = i["id"].as_str().unwrap_or("");
        let short = id.strip_prefix("sha256:").unwrap_or(id).chars().take(12).collect::<String>();
        let size = format!("{:.1} MB", mb(i["size"].as_u64().unwrap_or(0)));
        let layers = i["layers"].as_array().map(|a| a.len()).unwrap_or(0).to_string();
        let refs: Vec<String> = i["references"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if refs.is_empty() {
            rows.push(["<none>".into(), short.clone(), size.clone(), layers.clone()]);
        }
        for r in refs {
            rows.push([r, short.clone(), size.clone(), layers.clone()]);
        }
    }
    let widths: Vec<usize> = (0..4).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = (0..4).map(|c| format!("{:<w$}", r[c], w = widths[c])).collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
