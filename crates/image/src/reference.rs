//! Image references in Docker's grammar (`busybox`, `library/busybox:1.36`,
//! `host:port/ns/name@sha256:…`), normalised against a default registry.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// Docker Hub's registry API host, where references without a registry go by default.
pub const DOCKER_HUB: &str = "registry-1.docker.io";
/// Names that mean Docker Hub in a reference.
const DOCKER_HUB_ALIASES: &[&str] =
    &["docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"];

/// A reference that does not follow Docker's grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

/// How references without a registry are completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceDefaults {
    /// Registry (`host[:port]`) for references that name none; Docker Hub unless configured.
    pub registry: String,
}

impl Default for ReferenceDefaults {
    fn default() -> Self {
        ReferenceDefaults { registry: DOCKER_HUB.to_string() }
    }
}

/// A normalised image reference: registry, repository, and a tag and/or digest.
///
/// Docker Hub is spelled [`DOCKER_HUB`], and one-component Docker Hub repositories get the
/// `library/` prefix (`busybox` → `registry-1.docker.io/library/busybox:latest`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses with Docker Hub as the default registry.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        Reference::parse_with(s, &ReferenceDefaults::default())
    }

    /// Parses, completing a missing registry from `defaults`. A reference with neither tag
    /// nor digest gets the tag `latest`.
    pub fn parse_with(s: &str, defaults: &ReferenceDefaults) -> Result<Reference, ReferenceError> {
        let err = |reason: &str| ReferenceError { reference: s.to_string(), reason: reason.to_string() };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() > 4096 {
            return Err(err("too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (rest, Some(d.parse::<Digest>().map_err(|e| err(&e.to_string()))?)),
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(err)?;
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                validate_domain(first).map_err(err)?;
                (first.to_string(), path)
            }
            _ => (defaults.registry.clone(), name),
        };
        if path.is_empty() {
            return Err(err("empty repository name"));
        }
        if path.len() > 255 {
            return Err(err("repository name longer than 255 characters"));
        }
        for component in path.split('/') {
            validate_component(component).map_err(err)?;
        }
        let registry = if DOCKER_HUB_ALIASES.contains(&registry.as_str()) { DOCKER_HUB.to_string() } else { registry };
        let repository =
            if registry == DOCKER_HUB && !path.contains('/') { format!("library/{path}") } else { path.to_string() };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// Builds a reference from parts (already valid); used by local sources.
    pub fn new(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<Digest>,
    ) -> Result<Self, ReferenceError> {
        let mut s = format!("{registry}/{repository}");
        if let Some(t) = tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        Reference::parse(&s)
    }

    /// Registry host and optional port, e.g. `registry-1.docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }
    /// Repository path within the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }
    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
    /// The same reference pinned to `digest` (tag kept for display).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference { digest: Some(digest), ..self.clone() }
    }
    /// The familiar short form: `busybox:latest`, `127.0.0.1:5000/x/y:t`.
    pub fn familiar(&self) -> String {
        let mut s = if self.registry == DOCKER_HUB {
            self.repository.strip_prefix("library/").unwrap_or(&self.repository).to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, ReferenceError> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Reference::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn validate_tag(tag: &str) -> Result<(), &'static str> {
    let b = tag.as_bytes();
    if b.is_empty() {
        return Err("empty tag");
    }
    if b.len() > 128 {
        return Err("tag longer than 128 characters");
    }
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    if !word(b[0]) {
        return Err("tag must start with a letter, digit or '_'");
    }
    if !b.iter().all(|&c| word(c) || c == b'.' || c == b'-') {
        return Err("tag may only contain letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

fn validate_component(c: &str) -> Result<(), &'static str> {
    let b = c.as_bytes();
    if b.is_empty() {
        return Err("empty path component in repository name");
    }
    if b.iter().any(|c| c.is_ascii_uppercase()) {
        return Err("repository name must be lowercase");
    }
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err("repository path components must start and end with a lowercase letter or digit");
    }
    // Separators: '.', '_', '__', or any number of '-'.
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|&c| c == b'-');
        if !ok {
            return Err("invalid separator in repository name (allowed: '.', '_', '__', '-')");
        }
    }
    Ok(())
}

fn validate_domain(d: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or("unterminated IPv6 address in registry")?;
        if h.is_empty() || !h.bytes().all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.') {
            return Err("invalid IPv6 address in registry");
        }
        (None, p.strip_prefix(':').map(Some).unwrap_or(if p.is_empty() { None } else { Some("") }))
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err("empty registry host");
        }
        for label in host.split('.') {
            let b = label.as_bytes();
            if b.is_empty()
                || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                || b[0] == b'-'
                || b[b.len() - 1] == b'-'
            {
                return Err("invalid registry host name");
            }
        }
    }
    if let Some(p) = port {
        if p.is_empty()
            || p.len() > 5
            || !p.bytes().all(|c| c.is_ascii_digit())
            || p.parse::<u32>().map_or(true, |n| n > 65535)
        {
            return Err("invalid registry port");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_normalisation() {
        let r = p("busybox");
        assert_eq!(r.registry(), DOCKER_HUB);
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.to_string(), "registry-1.docker.io/library/busybox:latest");
        assert_eq!(r.familiar(), "busybox:latest");
        assert_eq!(p("library/busybox:1.36").tag(), Some("1.36"));
        assert_eq!(p("docker.io/busybox").repository(), "library/busybox");
        assert_eq!(p("index.docker.io/library/busybox").registry(), DOCKER_HUB);
        assert_eq!(p("user/app:v1").repository(), "user/app");
    }

    #[test]
    fn registries_ports_and_digests() {
        let d = "sha256:41ac5a89c15adcbece9a49c165fb828f1fd2c445542731da76b1729784c7a05b";
        let r = p(&format!("127.0.0.1:5000/ns/name@{d}"));
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "ns/name");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(|d| d.to_string()), Some(d.to_string()));
        assert_eq!(r.manifest_ref(), d);
        let r = p(&format!("localhost/a:t@{d}"));
        assert_eq!(r.registry(), "localhost");
        assert_eq!(r.tag(), Some("t"));
        assert_eq!(p("localhost:5000/a").repository(), "a");
        assert_eq!(p("quay.io/coreos/etcd:v3.5.0").registry(), "quay.io");
        assert_eq!(p("[::1]:5000/a:b").registry(), "[::1]:5000");
        // A one-component name on a non-Hub registry gets no library/ prefix.
        let defaults = ReferenceDefaults { registry: "127.0.0.1:5000".into() };
        let r = Reference::parse_with("busybox", &defaults).expect("parse");
        assert_eq!(r.to_string(), "127.0.0.1:5000/busybox:latest");
        assert_eq!(p("ns/a.b-c__d---e").repository(), "ns/a.b-c__d---e");
        // A first component with a dot is a registry host, as in Docker.
        assert!(Reference::parse("a.b_c/f").is_err());
    }

    #[test]
    fn bad_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:123",
            "busybox@md5:d41d8cd98f00b204e9800998ecf8427e",
            "/busybox",
            "busybox/",
            "a//b",
            "a..b",
            "a___b",
            "-a",
            "host:99999/a",
            "host:port/a",
            "a b",
            "busybox:tag with space",
        ] {
            let e = Reference::parse(bad).expect_err(bad);
            assert!(!e.reason.is_empty(), "{bad}");
        }
        let e = Reference::parse("Busybox").expect_err("uppercase");
        assert!(e.to_string().contains("lowercase"), "{e}");
    }

    #[test]
    fn serde_round_trip() {
        let r = p("127.0.0.1:5000/x/y:z");
        let j = serde_json::to_string(&r).expect("ser");
        assert_eq!(j, "\"127.0.0.1:5000/x/y:z\"");
        let back: Reference = serde_json::from_str(&j).expect("de");
        assert_eq!(back, r);
    }
}
