//! A Docker Registry HTTP API v2 / OCI distribution client (pull side only).
//!
//! Auth: anonymous first; a `401` with `WWW-Authenticate: Basic` is answered with the
//! registry's credentials, `Bearer` with a token from the challenge's realm (asked with the
//! credentials when there are some, anonymously otherwise), cached per registry and scope
//! until `expires_in` (60 s when absent) runs out. Every manifest request sends all four
//! manifest media types. Redirects (blob storage) are followed up to 5 times, dropping the
//! `Authorization` header when the host changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;

use crate::auth::{parse_challenges, Challenge, Credentials, DockerConfig};
use crate::digest::{Digest, Hasher};
use crate::http::{client, tls_config, Client, Connector};
use crate::reference::Reference;
use crate::spec::{self, Descriptor, Manifest, ManifestKind, Platform, MANIFEST_ACCEPT};

/// Largest manifest, index or config accepted (registries cap manifests at 4 MiB).
pub const MAX_DOCUMENT: u64 = 8 << 20;

/// Timeouts for registry traffic. A registry that stops answering fails the pull after at
/// most one of these, never hangs it.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP connect and TLS handshake.
    pub connect: Duration,
    /// From sending a request to its response headers.
    pub response: Duration,
    /// Longest pause between two chunks of a body.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: Duration::from_secs(10), response: Duration::from_secs(30), idle: Duration::from_secs(30) }
    }
}

/// Registry client settings.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) spoken to over plain HTTP (`--docker-registry-insecure`).
    /// All others use HTTPS.
    pub insecure: Vec<String>,
    /// Credentials by registry.
    pub credentials: DockerConfig,
    pub timeouts: Timeouts,
    /// Extra PEM CA bundles trusted besides the system store.
    pub extra_ca_files: Vec<std::path::PathBuf>,
    /// Attempts per request on connection errors, 5xx and truncated bodies (≥ 1).
    pub attempts: u32,
    pub user_agent: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            credentials: DockerConfig::default(),
            timeouts: Timeouts::default(),
            extra_ca_files: Vec::new(),
            attempts: 4,
            user_agent: concat!("agora-image/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// A failed registry operation, with the URL (and image) it concerned.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: timed out waiting for {what} after {after:?}")]
    Timeout { url: String, what: &'static str, after: Duration },
    #[error("{url}: unauthorized (HTTP 401){detail}")]
    Unauthorized { url: String, detail: String },
    #[error("{url}: access denied (HTTP 403)")]
    Forbidden { url: String },
    #[error("{url}: not found (HTTP 404)")]
    NotFound { url: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("{url}: {what} {expected}: digest mismatch (got {actual})")]
    DigestMismatch { url: String, what: &'static str, expected: Digest, actual: Digest },
    #[error("{url}: {what} {digest}: size mismatch (expected {expected} bytes, got {actual})")]
    SizeMismatch { url: String, what: &'static str, digest: Digest, expected: u64, actual: u64 },
    #[error("{url}: {reason}")]
    InvalidManifest { url: String, reason: String },
    #[error("{reference}: no manifest for platform {platform} (index has: {available})")]
    NoMatchingPlatform { reference: String, platform: String, available: String },
    #[error("token service {realm}: {reason}")]
    Token { realm: String, reason: String },
    #[error("tls setup: {0}")]
    Tls(String),
}

impl RegistryError {
    /// Whether trying again may help (connection trouble, timeouts, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } | RegistryError::Timeout { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// An image manifest resolved for a platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Digest of the image manifest (the image's id).
    pub digest: Digest,
    pub manifest: Manifest,
    pub manifest_bytes: Bytes,
    pub media_type: String,
    /// Digest of the index it was picked from, if any.
    pub index_digest: Option<Digest>,
}

#[derive(Clone)]
struct Token {
    value: String,
    expires: Instant,
}

/// What we learned about a registry's auth from its challenges.
#[derive(Clone)]
enum AuthMode {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

/// A pooled, authenticating registry client. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: Client,
    config: RegistryConfig,
    modes: Mutex<HashMap<String, AuthMode>>,
    tokens: Mutex<HashMap<(String, String), Token>>,
}

/// A response whose body is still to be read.
pub struct Response {
    pub url: String,
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: hyper::body::Incoming,
    idle: Duration,
}

impl Response {
    /// Next body chunk, `None` at the end; fails if the body stalls longer than the idle timeout.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, RegistryError> {
        loop {
            let frame = tokio::time::timeout(self.idle, self.body.frame()).await.map_err(|_| {
                RegistryError::Timeout { url: self.url.clone(), what: "response body", after: self.idle }
            })?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(RegistryError::Transport { url: self.url.clone(), message: e.to_string() }),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// Reads the whole body, failing past `limit` bytes.
    pub async fn bytes(&mut self, limit: u64) -> Result<Bytes, RegistryError> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            out.extend_from_slice(&c);
            if out.len() as u64 > limit {
                return Err(RegistryError::Transport {
                    url: self.url.clone(),
                    message: format!("body larger than {limit} bytes"),
                });
            }
        }
        Ok(Bytes::from(out))
    }
}

impl RegistryClient {
    pub fn new(config: RegistryConfig) -> Result<RegistryClient, RegistryError> {
        let tls = tls_config(&config.extra_ca_files).map_err(RegistryError::Tls)?;
        let http = client(Connector::new(tls, config.timeouts.connect));
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                http,
                config,
                modes: Mutex::new(HashMap::new()),
                tokens: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    fn base(&self, registry: &str) -> String {
        let insecure = self.inner.config.insecure.iter().any(|r| r == registry);
        format!("{}://{}", if insecure { "http" } else { "https" }, registry)
    }

    /// `GET /v2/<repo>/manifests/<ref>` → (body, content type, digest of the body).
    pub async fn get_manifest(
        &self,
        r: &Reference,
        manifest_ref: &str,
    ) -> Result<(Bytes, String, Digest), RegistryError> {
        let url = format!("{}/v2/{}/manifests/{}", self.base(r.registry()), r.repository(), manifest_ref);
        let mut resp = self.get(r, &url, &[("accept", MANIFEST_ACCEPT)]).await?;
        let ct = resp.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = resp.bytes(MAX_DOCUMENT).await?;
        let algorithm = match manifest_ref.parse::<Digest>() {
            Ok(d) => d.algorithm(),
            Err(_) => crate::digest::Algorithm::Sha256,
        };
        let mut h = Hasher::new(algorithm);
        h.update(&body);
        let actual = h.finish();
        if let Ok(expected) = manifest_ref.parse::<Digest>() {
            if expected != actual {
                return Err(RegistryError::DigestMismatch { url, what: "manifest", expected, actual });
            }
        } else if let Some(claimed) = resp.headers.get("docker-content-digest").and_then(|v| v.to_str().ok()) {
            if let Ok(claimed) = claimed.parse::<Digest>() {
                if claimed.algorithm() == actual.algorithm() && claimed != actual {
                    return Err(RegistryError::DigestMismatch { url, what: "manifest", expected: claimed, actual });
                }
            }
        }
        Ok((body, ct, actual))
    }

    /// Resolves a reference to an image manifest for `platform`, walking an index if needed.
    pub async fn resolve(&self, r: &Reference, platform: &Platform) -> Result<Resolved, RegistryError> {
        let (body, ct, digest) = self.get_manifest(r, &r.manifest_ref()).await?;
        let url = format!("{}/v2/{}/manifests/{}", self.base(r.registry()), r.repository(), r.manifest_ref());
        let invalid = |reason: String| RegistryError::InvalidManifest { url: url.clone(), reason };
        match spec::parse_manifest(Some(&ct), &body).map_err(invalid)? {
            ManifestKind::Image(m) => {
                let media_type = m.media_type.clone().unwrap_or_else(|| ct.clone());
                Ok(Resolved { digest, manifest: m, manifest_bytes: body, media_type, index_digest: None })
            }
            ManifestKind::Index(idx) => {
                let Some(desc) = spec::select_platform(&idx, platform) else {
                    let available = idx
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(RegistryError::NoMatchingPlatform {
                        reference: r.to_string(),
                        platform: platform.to_string(),
                        available,
                    });
                };
                let desc = desc.clone();
                let (body2, ct2, d2) = self.get_manifest(r, &desc.digest.to_string()).await?;
                let url2 = format!("{}/v2/{}/manifests/{}", self.base(r.registry()), r.repository(), desc.digest);
                if body2.len() as u64 != desc.size {
                    return Err(RegistryError::SizeMismatch {
                        url: url2,
                        what: "manifest",
                        digest: desc.digest,
                        expected: desc.size,
                        actual: body2.len() as u64,
                    });
                }
                let invalid2 = |reason: String| RegistryError::InvalidManifest { url: url2.clone(), reason };
                match spec::parse_manifest(Some(&ct2), &body2).map_err(invalid2)? {
                    ManifestKind::Image(m) => {
                        let media_type = m.media_type.clone().unwrap_or(ct2);
                        Ok(Resolved {
                            digest: d2,
                            manifest: m,
                            manifest_bytes: body2,
                            media_type,
                            index_digest: Some(digest),
                        })
                    }
                    ManifestKind::Index(_) => {
                        Err(RegistryError::InvalidManifest { url: url2, reason: "nested image index".into() })
                    }
                }
            }
        }
    }

    /// Fetches a small blob (a config) whole and verifies its digest and size.
    pub async fn get_blob_bytes(&self, r: &Reference, desc: &Descriptor) -> Result<Bytes, RegistryError> {
        let url = self.blob_url(r, &desc.digest);
        if desc.size > MAX_DOCUMENT {
            return Err(RegistryError::InvalidManifest {
                url,
                reason: format!("config of {} bytes is too large", desc.size),
            });
        }
        let mut resp = self.get(r, &url, &[]).await?;
        let body = resp.bytes(desc.size + 1).await?;
        verify(&url, "blob", desc, &body)?;
        Ok(body)
    }

    pub fn blob_url(&self, r: &Reference, digest: &Digest) -> String {
        format!("{}/v2/{}/blobs/{}", self.base(r.registry()), r.repository(), digest)
    }

    /// Starts a blob download at byte `offset` (a `Range` request when > 0). Returns the
    /// response and whether the server honoured the range (206).
    pub async fn open_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        offset: u64,
    ) -> Result<(Response, bool), RegistryError> {
        let url = self.blob_url(r, digest);
        let range = format!("bytes={offset}-");
        let headers: Vec<(&str, &str)> = if offset > 0 { vec![("range", range.as_str())] } else { vec![] };
        let resp = self.get(r, &url, &headers).await?;
        let partial = resp.status == StatusCode::PARTIAL_CONTENT;
        Ok((resp, partial))
    }

    /// A GET with auth, redirects and retries of transient failures (before any body byte).
    pub async fn get(&self, r: &Reference, url: &str, headers: &[(&str, &str)]) -> Result<Response, RegistryError> {
        let attempts = self.inner.config.attempts.max(1);
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
            }
            match self.get_once(r, url, headers).await {
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_transient() => {
                    tracing::debug!(url, attempt, error = %e, "registry request failed; retrying");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Transport { url: url.into(), message: "no attempt made".into() }))
    }

    async fn get_once(&self, r: &Reference, url: &str, headers: &[(&str, &str)]) -> Result<Response, RegistryError> {
        let scope = format!("repository:{}:pull", r.repository());
        let registry = r.registry();
        let mut url = url.to_string();
        let mut authed_retry = false;
        let mut redirects = 0;
        let mut same_host = true;
        loop {
            let auth = if same_host { self.auth_header(registry, &scope, None).await? } else { None };
            let resp = self.send(&url, headers, auth.as_deref()).await?;
            let status = resp.status;
            if status.is_redirection() {
                redirects += 1;
                let loc = resp.headers.get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
                let Some(loc) = loc.filter(|_| redirects <= 5) else {
                    return Err(RegistryError::Status {
                        url,
                        status: status.as_u16(),
                        body: "bad or too many redirects".into(),
                    });
                };
                let next = join_url(&url, &loc);
                same_host = host_of(&next) == host_of(&self.blob_base(registry));
                url = next;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !authed_retry && same_host {
                let challenges = resp
                    .headers
                    .get_all("www-authenticate")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_challenges)
                    .collect::<Vec<_>>();
                if self.learn(registry, &challenges) {
                    // Drop a cached token that no longer works.
                    self.inner.tokens.lock().map(|mut t| t.remove(&(registry.to_string(), scope.clone()))).ok();
                    let scope_hint = challenges.iter().find_map(|c| c.param("scope").map(str::to_string));
                    if self.auth_header(registry, &scope, scope_hint.as_deref()).await?.is_some() {
                        authed_retry = true;
                        continue;
                    }
                }
            }
            return check_status(resp).await;
        }
    }

    fn blob_base(&self, registry: &str) -> String {
        self.base(registry)
    }

    /// Records the auth scheme a registry asked for. Returns whether we can answer it.
    fn learn(&self, registry: &str, challenges: &[Challenge]) -> bool {
        let creds = self.inner.config.credentials.get(registry).is_some();
        let mode = challenges.iter().find_map(|c| match c.scheme.as_str() {
            "bearer" => c.param("realm").map(|realm| AuthMode::Bearer {
                realm: realm.to_string(),
                service: c.param("service").map(str::to_string),
            }),
            "basic" if creds => Some(AuthMode::Basic),
            _ => None,
        });
        match mode {
            Some(m) => {
                if let Ok(mut modes) = self.inner.modes.lock() {
                    modes.insert(registry.to_string(), m);
                }
                true
            }
            None => false,
        }
    }

    /// The Authorization header for a request to `registry` needing `scope`, fetching a
    /// token when the registry wants bearer auth and none is cached.
    async fn auth_header(
        &self,
        registry: &str,
        scope: &str,
        hint: Option<&str>,
    ) -> Result<Option<String>, RegistryError> {
        let mode = self.inner.modes.lock().ok().and_then(|m| m.get(registry).cloned());
        let creds = self.inner.config.credentials.get(registry).cloned();
        match mode {
            None => Ok(None),
            Some(AuthMode::Basic) => Ok(creds.map(|c| c.basic_header())),
            Some(AuthMode::Bearer { realm, service }) => {
                let key = (registry.to_string(), scope.to_string());
                if let Some(t) = self.inner.tokens.lock().ok().and_then(|t| t.get(&key).cloned()) {
                    if t.expires > Instant::now() {
                        return Ok(Some(format!("Bearer {}", t.value)));
                    }
                }
                let scope = hint.filter(|h| h.starts_with("repository:")).unwrap_or(scope);
                let token = self.fetch_token(&realm, service.as_deref(), scope, creds.as_ref()).await?;
                let header = format!("Bearer {}", token.value);
                if let Ok(mut t) = self.inner.tokens.lock() {
                    t.insert(key, token);
                }
                Ok(Some(header))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Result<Token, RegistryError> {
        let err = |reason: String| RegistryError::Token { realm: realm.to_string(), reason };
        let mut url = realm.to_string();
        url.push(if realm.contains('?') { '&' } else { '?' });
        if let Some(s) = service {
            url.push_str(&format!("service={}&", urlencode(s)));
        }
        url.push_str(&format!("scope={}", urlencode(scope)));
        let auth = creds.map(|c| c.basic_header());
        let mut resp = self.send(&url, &[], auth.as_deref()).await?;
        if !resp.status.is_success() {
            let status = resp.status;
            let body = resp.bytes(64 << 10).await.unwrap_or_default();
            return Err(err(format!("HTTP {}: {}", status.as_u16(), String::from_utf8_lossy(&body).trim())));
        }
        let body = resp.bytes(1 << 20).await?;
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let t: T = serde_json::from_slice(&body).map_err(|e| err(format!("invalid token response: {e}")))?;
        let value =
            t.token.or(t.access_token).filter(|v| !v.is_empty()).ok_or_else(|| err("no token in response".into()))?;
        // Refresh a little early; the spec's default lifetime is 60 s.
        let life = Duration::from_secs(t.expires_in.unwrap_or(60).max(10));
        Ok(Token { value, expires: Instant::now() + life - Duration::from_secs(5) })
    }

    async fn send(&self, url: &str, headers: &[(&str, &str)], auth: Option<&str>) -> Result<Response, RegistryError> {
        let t = &self.inner.config.timeouts;
        let mut req = Request::builder().method(Method::GET).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req = req.header("user-agent", self.inner.config.user_agent.as_str());
        if let Some(a) = auth {
            let mut v = HeaderValue::from_str(a)
                .map_err(|_| RegistryError::Transport { url: url.into(), message: "invalid auth header".into() })?;
            v.set_sensitive(true);
            req = req.header("authorization", v);
        }
        let req = req
            .body(http_body_util::Empty::new())
            .map_err(|e| RegistryError::Transport { url: url.into(), message: format!("bad request: {e}") })?;
        let resp = tokio::time::timeout(t.response, self.inner.http.request(req))
            .await
            .map_err(|_| RegistryError::Timeout { url: url.into(), what: "response headers", after: t.response })?
            .map_err(|e| RegistryError::Transport { url: url.into(), message: error_chain(&e) })?;
        let (parts, body) = resp.into_parts();
        Ok(Response { url: url.into(), status: parts.status, headers: parts.headers, body, idle: t.idle })
    }
}

async fn check_status(mut resp: Response) -> Result<Response, RegistryError> {
    let status = resp.status;
    if status.is_success() {
        return Ok(resp);
    }
    let url = resp.url.clone();
    let body = resp.bytes(64 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().chars().take(512).collect::<String>();
    Err(match status {
        StatusCode::UNAUTHORIZED => RegistryError::Unauthorized {
            url,
            detail: if text.is_empty() { String::new() } else { format!(": {text}") },
        },
        StatusCode::FORBIDDEN => RegistryError::Forbidden { url },
        StatusCode::NOT_FOUND => RegistryError::NotFound { url },
        s => RegistryError::Status { url, status: s.as_u16(), body: text },
    })
}

fn verify(url: &str, what: &'static str, desc: &Descriptor, body: &[u8]) -> Result<(), RegistryError> {
    if body.len() as u64 != desc.size {
        return Err(RegistryError::SizeMismatch {
            url: url.into(),
            what,
            digest: desc.digest.clone(),
            expected: desc.size,
            actual: body.len() as u64,
        });
    }
    let mut h = Hasher::new(desc.digest.algorithm());
    h.update(body);
    let actual = h.finish();
    if actual != desc.digest {
        return Err(RegistryError::DigestMismatch { url: url.into(), what, expected: desc.digest.clone(), actual });
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

fn join_url(base: &str, loc: &str) -> String {
    if loc.contains("://") {
        return loc.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    let host = rest.split('/').next().unwrap_or(rest);
    if loc.starts_with('/') {
        format!("{scheme}://{host}{loc}")
    } else {
        let dir = base.rsplit_once('/').map_or(base, |(d, _)| d);
        format!("{dir}/{loc}")
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_helpers() {
        assert_eq!(join_url("http://a:1/v2/x/blobs/d", "/p?q=1"), "http://a:1/p?q=1");
        assert_eq!(join_url("http://a:1/v2/x/blobs/d", "https://s3/x"), "https://s3/x");
        assert_eq!(join_url("http://a:1/v2/x/blobs/d", "e"), "http://a:1/v2/x/blobs/e");
        assert_eq!(host_of("https://h:5/x"), "h:5");
        assert_eq!(urlencode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
