//! A small etcd v3 client over etcd's JSON gateway (etcd 3.4 serves `POST /v3/kv/range`,
//! `/v3/kv/txn`, `/v3/lease/grant`, `/v3/lease/keepalive`, `/v3/lease/revoke`; keys and values
//! are base64, 64-bit integers are JSON strings).
//!
//! Every call tries the endpoint that answered last first, then the others in turn, until the
//! caller's deadline: a dead member costs a refused connection, a hung one (SIGSTOP, a cut
//! link) one per-attempt timeout, never the whole call.
use agora_http::Client;
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EtcdError {
    #[error("no etcd endpoint answered {path} in time (last error: {last})")]
    Unavailable { path: String, last: String },
    #[error("etcd refused {path}: {message}")]
    Refused { path: String, code: i64, message: String },
    #[error("bad etcd answer to {path}: {why}")]
    Decode { path: String, why: String },
    #[error("invalid etcd endpoint list '{0}'")]
    Endpoints(String),
}

/// gRPC status codes that no other endpoint or retry will change.
fn is_final(code: i64) -> bool {
    // InvalidArgument, NotFound, AlreadyExists, PermissionDenied, FailedPrecondition,
    // OutOfRange, Unimplemented, Unauthenticated.
    matches!(code, 3 | 5 | 6 | 7 | 9 | 11 | 12 | 16)
}

/// Parses `http://h1:2379,http://h2:2379` (scheme optional) into base URLs.
pub fn parse_endpoints(text: &str) -> Result<Vec<String>, EtcdError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p = part.trim_end_matches('/');
        let url = if p.starts_with("http://") {
            p.to_string()
        } else if p.contains("://") {
            return Err(EtcdError::Endpoints(text.to_string()));
        } else {
            format!("http://{p}")
        };
        let hostport = &url["http://".len()..];
        if hostport.is_empty() || hostport.contains('/') || !hostport.contains(':') {
            return Err(EtcdError::Endpoints(text.to_string()));
        }
        out.push(url);
    }
    if out.is_empty() {
        return Err(EtcdError::Endpoints(text.to_string()));
    }
    Ok(out)
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(path: &str, v: &Value) -> Result<Vec<u8>, EtcdError> {
    match v.as_str() {
        None => Ok(Vec::new()),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| EtcdError::Decode { path: path.to_string(), why: e.to_string() }),
    }
}

/// An int64 as the gateway writes it: a string, a number, or absent (zero).
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The key after every key that starts with `prefix` (etcd's `range_end` for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: the whole keyspace from prefix on.
    vec![0]
}

/// One key-value pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

fn kv(path: &str, v: &Value) -> Result<Kv, EtcdError> {
    Ok(Kv {
        key: unb64(path, &v["key"])?,
        value: unb64(path, &v["value"])?,
        create_revision: int(&v["create_revision"]),
        mod_revision: int(&v["mod_revision"]),
        lease: int(&v["lease"]),
    })
}

/// A comparison in a transaction's guard.
#[derive(Clone, Debug)]
pub enum Compare {
    /// The key's create revision equals this (0: the key does not exist).
    CreateRevision { key: Vec<u8>, revision: i64 },
}

/// An operation inside a transaction.
#[derive(Clone, Debug)]
pub enum TxnOp {
    Put { key: Vec<u8>, value: Vec<u8>, lease: Option<i64> },
    Delete { key: Vec<u8> },
    Get { key: Vec<u8> },
}

impl TxnOp {
    fn json(&self) -> Value {
        match self {
            TxnOp::Put { key, value, lease } => {
                let mut p = json!({"key": b64(key), "value": b64(value)});
                if let Some(l) = lease {
                    p["lease"] = json!(l.to_string());
                }
                json!({ "request_put": p })
            }
            TxnOp::Delete { key } => json!({"request_delete_range": {"key": b64(key)}}),
            TxnOp::Get { key } => json!({"request_range": {"key": b64(key)}}),
        }
    }
}

/// What a transaction answered.
#[derive(Clone, Debug)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The store revision after the transaction (the revision of its writes, if any).
    pub revision: i64,
    /// The key-values read by `Get` operations of the branch that ran, in order.
    pub reads: Vec<Vec<Kv>>,
}

struct Inner {
    endpoints: Vec<String>,
    http: Client,
    preferred: AtomicUsize,
    attempt_timeout: Duration,
}

/// An etcd client over several endpoints. Cheap to clone.
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient").field("endpoints", &self.inner.endpoints).finish()
    }
}

impl EtcdClient {
    /// A client for these base URLs (see [`parse_endpoints`]). Each attempt on one endpoint
    /// gives up after `attempt_timeout` and moves to the next.
    pub fn new(endpoints: Vec<String>, attempt_timeout: Duration) -> EtcdClient {
        EtcdClient {
            inner: Arc::new(Inner { endpoints, http: Client::new(), preferred: AtomicUsize::new(0), attempt_timeout }),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// POSTs `body` to `path`, endpoint after endpoint, until an answer or the deadline.
    async fn call(&self, path: &str, body: &Value, deadline: Instant) -> Result<Value, EtcdError> {
        let payload =
            serde_json::to_vec(body).map_err(|e| EtcdError::Decode { path: path.into(), why: e.to_string() })?;
        let eps = &self.inner.endpoints;
        let mut last = String::from("no attempt made");
        let mut pause = Duration::from_millis(50);
        loop {
            let start = self.inner.preferred.load(Ordering::Relaxed);
            for i in 0..eps.len() {
                let idx = (start + i) % eps.len();
                let now = Instant::now();
                if now >= deadline {
                    return Err(EtcdError::Unavailable { path: path.into(), last });
                }
                let timeout = self.inner.attempt_timeout.min(deadline - now);
                let url = format!("{}{}", eps[idx], path);
                match self.inner.http.post(&url, &[], payload.clone(), timeout).await {
                    Ok(r) if r.status.is_success() => {
                        self.inner.preferred.store(idx, Ordering::Relaxed);
                        return serde_json::from_slice(&r.body)
                            .map_err(|e| EtcdError::Decode { path: path.into(), why: e.to_string() });
                    }
                    Ok(r) => {
                        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                        let code = int(&v["code"]);
                        let message = v["message"]
                            .as_str()
                            .or_else(|| v["error"].as_str())
                            .map(str::to_string)
                            .unwrap_or_else(|| String::from_utf8_lossy(&r.body).trim().to_string());
                        if is_final(code) {
                            return Err(EtcdError::Refused { path: path.into(), code, message });
                        }
                        last = format!("{}: {} {message}", eps[idx], r.status);
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            // A full round failed (no quorum, an election under way): pause, then go again.
            let now = Instant::now();
            if now >= deadline {
                return Err(EtcdError::Unavailable { path: path.into(), last });
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(400));
        }
    }

    /// Reads one key.
    pub async fn get(&self, key: &[u8], deadline: Instant) -> Result<Option<Kv>, EtcdError> {
        let path = "/v3/kv/range";
        let v = self.call(path, &json!({"key": b64(key)}), deadline).await?;
        match v["kvs"].as_array().and_then(|a| a.first()) {
            Some(k) => Ok(Some(kv(path, k)?)),
            None => Ok(None),
        }
    }

    /// Reads every key under `prefix`, in pages, all at one revision (a consistent snapshot).
    pub async fn get_prefix(&self, prefix: &[u8], deadline: Instant) -> Result<Vec<Kv>, EtcdError> {
        const PAGE: i64 = 1000;
        let path = "/v3/kv/range";
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut revision = 0i64;
        let mut out = Vec::new();
        loop {
            let mut req = json!({"key": b64(&from), "range_end": b64(&end), "limit": PAGE.to_string()});
            if revision > 0 {
                req["revision"] = json!(revision.to_string());
            }
            let v = self.call(path, &req, deadline).await?;
            if revision == 0 {
                revision = int(&v["header"]["revision"]);
            }
            let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
            for k in &kvs {
                out.push(kv(path, k)?);
            }
            let more = v["more"].as_bool().unwrap_or(false);
            match out.last() {
                Some(last) if more && !kvs.is_empty() => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// Runs a transaction: `success` if every comparison holds, else `failure`.
    pub async fn txn(
        &self,
        compare: &[Compare],
        success: &[TxnOp],
        failure: &[TxnOp],
        deadline: Instant,
    ) -> Result<TxnResult, EtcdError> {
        let path = "/v3/kv/txn";
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::CreateRevision { key, revision } => json!({
                    "key": b64(key), "target": "CREATE", "result": "EQUAL",
                    "create_revision": revision.to_string(),
                }),
            })
            .collect();
        let req = json!({
            "compare": compare,
            "success": success.iter().map(TxnOp::json).collect::<Vec<_>>(),
            "failure": failure.iter().map(TxnOp::json).collect::<Vec<_>>(),
        });
        let v = self.call(path, &req, deadline).await?;
        let mut reads = Vec::new();
        for r in v["responses"].as_array().cloned().unwrap_or_default() {
            if let Some(range) = r.get("response_range") {
                let kvs = range["kvs"].as_array().cloned().unwrap_or_default();
                reads.push(kvs.iter().map(|k| kv(path, k)).collect::<Result<Vec<_>, _>>()?);
            }
        }
        Ok(TxnResult {
            succeeded: v["succeeded"].as_bool().unwrap_or(false),
            revision: int(&v["header"]["revision"]),
            reads,
        })
    }

    /// Grants a lease; returns its id and the TTL etcd granted (it rounds small TTLs up).
    pub async fn grant(&self, ttl_secs: i64, deadline: Instant) -> Result<(i64, i64), EtcdError> {
        let v = self.call("/v3/lease/grant", &json!({"TTL": ttl_secs.to_string()}), deadline).await?;
        let id = int(&v["ID"]);
        if id == 0 {
            let why = v["error"].as_str().unwrap_or("no lease id in the answer").to_string();
            return Err(EtcdError::Decode { path: "/v3/lease/grant".into(), why });
        }
        Ok((id, int(&v["TTL"])))
    }

    /// Renews a lease once; returns its new TTL, 0 when the lease no longer exists.
    pub async fn keepalive(&self, id: i64, deadline: Instant) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()}), deadline).await?;
        if let Some(e) = v.get("error") {
            return Err(EtcdError::Refused { path: "/v3/lease/keepalive".into(), code: 0, message: e.to_string() });
        }
        Ok(int(&v["result"]["TTL"]))
    }

    /// Revokes a lease (deleting its keys). A lease that is already gone is not an error.
    pub async fn revoke(&self, id: i64, deadline: Instant) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", &json!({"ID": id.to_string()}), deadline).await {
            Ok(_) => Ok(()),
            Err(EtcdError::Refused { code: 5, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoints("http://127.0.0.1:2379, 127.0.0.1:2381/").unwrap(),
            vec!["http://127.0.0.1:2379".to_string(), "http://127.0.0.1:2381".to_string()]
        );
        assert!(parse_endpoints("").is_err());
        assert!(parse_endpoints("https://x:1").is_err());
        assert!(parse_endpoints("http://x:1/path").is_err());
        assert!(parse_endpoints("nohostport").is_err());
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }

    #[test]
    fn ints_as_the_gateway_writes_them() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&Value::Null), 0);
    }
}
