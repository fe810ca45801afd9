//! Registry credentials: `WWW-Authenticate` challenges and Docker's `config.json`.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;

/// A username and password for a registry (or its token service).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.username)
    }
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials { username: username.into(), password: password.into() }
    }
    /// The value of an `Authorization: Basic …` header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased scheme: `basic` or `bearer`.
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.params.get(k).map(String::as_str)
    }
}

/// Parses a `WWW-Authenticate` value (RFC 7235: one or more challenges, each a scheme and
/// comma-separated `key=value` / `key="quoted"` parameters).
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let b = header.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !matches!(b[i], b' ' | b'\t' | b',' | b'=') {
            i += 1;
        }
        let token = &header[start..i];
        if i < b.len() && b[i] == b'=' && !out.is_empty() {
            // key=value of the current challenge
            i += 1;
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    let ch_len = utf8_len(b[i]);
                    v.push_str(&header[i..(i + ch_len).min(b.len())]);
                    i += ch_len;
                }
                i += 1;
                v
            } else {
                let s = i;
                while i < b.len() && b[i] != b',' {
                    i += 1;
                }
                header[s..i].trim().to_string()
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(token.to_ascii_lowercase(), value);
            }
        } else if !token.is_empty() {
            out.push(Challenge { scheme: token.to_ascii_lowercase(), params: BTreeMap::new() });
        } else {
            i += 1;
        }
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Credentials from a Docker `config.json` (`auths` only; credential helpers are not run).
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    auths: BTreeMap<String, Credentials>,
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("docker config {path}: {reason}")]
pub struct DockerConfigError {
    pub path: String,
    pub reason: String,
}

impl DockerConfig {
    /// Reads `path` (e.g. `~/.docker/config.json`).
    pub fn load(path: &Path) -> Result<DockerConfig, DockerConfigError> {
        let err = |reason: String| DockerConfigError { path: path.display().to_string(), reason };
        let data = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        DockerConfig::parse(&data).map_err(err)
    }

    /// Parses the JSON of a config file.
    pub fn parse(data: &[u8]) -> Result<DockerConfig, String> {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            auths: BTreeMap<String, Entry>,
            #[serde(default, rename = "credsStore")]
            creds_store: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(default)]
            auth: Option<String>,
            #[serde(default)]
            username: Option<String>,
            #[serde(default)]
            password: Option<String>,
        }
        let file: File = serde_json::from_slice(data).map_err(|e| format!("invalid JSON: {e}"))?;
        if let Some(store) = file.creds_store {
            tracing::warn!(store, "docker config names a credential store; only 'auths' entries are used");
        }
        let mut auths = BTreeMap::new();
        for (key, e) in file.auths {
            let creds = match (e.auth.filter(|a| !a.is_empty()), e.username, e.password) {
                (Some(a), _, _) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .map_err(|_| format!("auths.{key}.auth is not base64"))?;
                    let raw = String::from_utf8(raw).map_err(|_| format!("auths.{key}.auth is not UTF-8"))?;
                    let (u, p) = raw.split_once(':').ok_or_else(|| format!("auths.{key}.auth is not user:password"))?;
                    Credentials::new(u, p)
                }
                (None, Some(u), Some(p)) => Credentials::new(u, p),
                _ => continue,
            };
            auths.insert(normalise_registry_key(&key), creds);
        }
        Ok(DockerConfig { auths })
    }

    /// Adds (or replaces) credentials for a registry.
    pub fn insert(&mut self, registry: &str, creds: Credentials) {
        self.auths.insert(normalise_registry_key(registry), creds);
    }

    /// Credentials for `registry` (`host[:port]`), if any.
    pub fn get(&self, registry: &str) -> Option<&Credentials> {
        self.auths.get(&normalise_registry_key(registry))
    }
}

/// `https://index.docker.io/v1/` → `registry-1.docker.io`; `http://h:5000/x` → `h:5000`.
fn normalise_registry_key(key: &str) -> String {
    let k = key.trim();
    let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            crate::reference::DOCKER_HUB.to_string()
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/busybox:pull"));
    }

    #[test]
    fn basic_and_multiple_challenges() {
        let c = parse_challenges(r#"Basic realm="fixture-registry""#);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("fixture-registry"));
        let c =
            parse_challenges(r#"Basic realm="a, b", Bearer realm="http://x/token",service=svc, error="invalid_token""#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].param("realm"), Some("a, b"));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("service"), Some("svc"));
        assert_eq!(c[1].param("error"), Some("invalid_token"));
        let c = parse_challenges(r#"Bearer realm="with \"quote\"""#);
        assert_eq!(c[0].param("realm"), Some(r#"with "quote""#));
        assert!(parse_challenges("").is_empty());
    }

    #[test]
    fn docker_config_auths() {
        let cfg = DockerConfig::parse(
            br#"{"auths":{
                "https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
                "127.0.0.1:5000":{"username":"test","password":"te:st"},
                "http://reg.example:8080/v2/":{"auth":"YTpiOmM="},
                "empty.example":{}
            }}"#,
        )
        .expect("parse");
        assert_eq!(cfg.get("registry-1.docker.io"), Some(&Credentials::new("user", "pass")));
        assert_eq!(cfg.get("127.0.0.1:5000"), Some(&Credentials::new("test", "te:st")));
        assert_eq!(cfg.get("reg.example:8080"), Some(&Credentials::new("a", "b:c")));
        assert_eq!(cfg.get("empty.example"), None);
        assert!(DockerConfig::parse(br#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());
        assert!(DockerConfig::parse(b"not json").is_err());
        assert_eq!(Credentials::new("test", "test").basic_header(), "Basic dGVzdDp0ZXN0");
        assert!(!format!("{:?}", Credentials::new("u", "secret")).contains("secret"));
    }
}
