//! The JSON documents of the OCI image spec and Docker's schema2 (manifests, indexes,
//! image configs), read leniently: unknown fields are ignored, missing optional ones default.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The Accept header for manifest requests: all four types, always. Registry 2.8 answers
/// 404 for an OCI manifest not asked for, and rewrites schema2 to schema1 when
/// `DOCKER_MANIFEST` is missing.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer media type, or `None` if it is not a layer type we know.
    pub fn from_layer_media_type(mt: &str) -> Option<Compression> {
        match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Guesses from the first bytes of a blob (for archives that do not say).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// An image manifest (OCI or Docker schema2: the same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An OCI index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An OS/architecture pair, as in an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, rename = "os.version", skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

impl Platform {
    /// `linux/amd64`, the default.
    pub fn linux_amd64() -> Platform {
        Platform { architecture: "amd64".into(), os: "linux".into(), variant: None, os_version: None }
    }

    /// The platform this process runs on, in OCI spelling.
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform { architecture: arch.into(), os: "linux".into(), variant: variant.map(Into::into), os_version: None }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut it = s.split('/');
        let os = it.next().filter(|s| !s.is_empty())?;
        let arch = it.next().filter(|s| !s.is_empty())?;
        let variant = it.next().map(str::to_string);
        if it.next().is_some() {
            return None;
        }
        Some(Platform { architecture: arch.into(), os: os.into(), variant, os_version: None })
    }

    /// Whether an index entry for `candidate` can run here. A wanted variant must match
    /// (`arm64` and `arm64/v8` are the same); a candidate without variant matches any.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        let norm = |v: &Option<String>| match (self.architecture.as_str(), v.as_deref()) {
            ("arm64", Some("v8")) | ("arm64", None) => None,
            (_, v) => v.map(str::to_string),
        };
        match (norm(&self.variant), norm(&candidate.variant)) {
            (Some(want), Some(have)) => want == have,
            (None, Some(_)) => false,
            (_, None) => true,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The parts of an image config (OCI `config` / Docker `container_config`) a container needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_default")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_default")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_default")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_default")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_default")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "null_as_default")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

/// An image config document (the blob the manifest's `config` points at).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfigDoc {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// `rootfs` of an image config: the uncompressed digests of the layers, base first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// What a manifest endpoint answered: an image manifest or an index.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum ManifestKind {
    Image(Manifest),
    Index(Index),
}

/// Parses a manifest body given its Content-Type (falls back to the body's `mediaType`).
pub fn parse_manifest(content_type: Option<&str>, body: &[u8]) -> Result<ManifestKind, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let ct = content_type.map(|c| c.split(';').next().unwrap_or(c).trim()).filter(|c| {
        !c.is_empty() && *c != "application/json" && *c != "text/plain" && *c != "application/octet-stream"
    });
    let mt = ct.map(str::to_string).or(probe.media_type.clone());
    let mt = match mt {
        Some(m) => m,
        // OCI allows mediaType to be absent: decide by shape.
        None if probe.manifests.is_some() => OCI_INDEX.to_string(),
        None => OCI_MANIFEST.to_string(),
    };
    match mt.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            serde_json::from_slice(body).map(ManifestKind::Image).map_err(|e| format!("bad image manifest: {e}"))
        }
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            serde_json::from_slice(body).map(ManifestKind::Index).map_err(|e| format!("bad image index: {e}"))
        }
        "application/vnd.docker.distribution.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v1+prettyjws" => {
            Err(format!("unsupported media type {mt:?} (Docker schema1 manifests are deprecated)"))
        }
        _ if probe.schema_version == Some(1) => Err("unsupported Docker schema1 manifest".into()),
        _ => Err(format!("unsupported manifest media type {mt:?}")),
    }
}

/// Picks the manifest for `want` from an index.
pub fn select_platform<'a>(index: &'a Index, want: &Platform) -> Option<&'a Descriptor> {
    index.manifests.iter().find(|d| {
        // Attestation manifests (buildkit) carry platform unknown/unknown: never chosen.
        d.platform.as_ref().is_some_and(|p| want.matches(p))
            && (d.media_type.is_empty()
                || d.media_type == OCI_MANIFEST
                || d.media_type == DOCKER_MANIFEST
                || d.media_type == OCI_INDEX
                || d.media_type == DOCKER_MANIFEST_LIST)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_matching() {
        let amd = Platform::linux_amd64();
        assert!(amd.matches(&Platform::parse("linux/amd64").expect("p")));
        assert!(!amd.matches(&Platform::parse("linux/arm64/v8").expect("p")));
        let arm = Platform::parse("linux/arm64").expect("p");
        assert!(arm.matches(&Platform::parse("linux/arm64/v8").expect("p")));
        let armv7 = Platform::parse("linux/arm/v7").expect("p");
        assert!(!armv7.matches(&Platform::parse("linux/arm/v6").expect("p")));
        assert!(armv7.matches(&Platform::parse("linux/arm").expect("p")));
        assert!(Platform::parse("linux").is_none());
    }

    #[test]
    fn manifest_parsing_by_type_and_shape() {
        let d = Digest::sha256_of(b"x");
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{d}","size":1}},"layers":[]}}"#
        );
        assert!(matches!(parse_manifest(None, m.as_bytes()), Ok(ManifestKind::Image(_))));
        assert!(matches!(parse_manifest(Some(DOCKER_MANIFEST), m.as_bytes()), Ok(ManifestKind::Image(_))));
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{d}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        let ManifestKind::Index(idx) = parse_manifest(Some("application/json"), i.as_bytes()).expect("index") else {
            panic!("not an index")
        };
        assert!(select_platform(&idx, &Platform::linux_amd64()).is_some());
        assert!(select_platform(&idx, &Platform::parse("linux/arm64").expect("p")).is_none());
        let e =
            parse_manifest(Some("application/vnd.docker.distribution.manifest.v1+prettyjws"), b"{}").expect_err("v1");
        assert!(e.contains("schema1"), "{e}");
        assert!(parse_manifest(Some("application/x-foo"), m.as_bytes()).is_err());
    }

    #[test]
    fn config_with_nulls() {
        let c: ImageConfigDoc = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Env":null,"Cmd":["sh"],"ExposedPorts":{"8080/tcp":{}}},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .expect("config");
        let rc = c.config.expect("config");
        assert_eq!(rc.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(rc.env, None);
        assert!(rc.exposed_ports.expect("ports").contains_key("8080/tcp"));
    }
}
