//! Volumes on the agent: a task's `ContainerInfo.volumes[]` turned into the
//! [`VolumeMount`]s the launcher mounts (`volume/sandbox_path`, `volume/host_path`), and
//! the storage flags (`--allowed-host-paths`, the disk quota flags).
//!
//! Everything is checked before anything is created: a bad volume fails the task with a
//! message naming it, and leaves nothing behind.
use agora_containerizer::isolation::Isolation;
use agora_containerizer::{Propagation, VolumeMount};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The storage part of the agent's configuration.
#[derive(Clone, Debug)]
pub struct VolumeConfig {
    /// `--allowed-host-paths`: host path prefixes HOST_PATH volumes may name (empty: none).
    pub allowed_host_paths: Vec<PathBuf>,
    /// `--enforce-container-disk-quota`: kill a container over its `disk` (disk/du).
    pub enforce_container_disk_quota: bool,
    /// `--container-disk-watch-interval`: how often disk/du measures sandboxes.
    pub container_disk_watch_interval: Duration,
    /// `--xfs-project-range`: project ids disk/xfs may use.
    pub xfs_project_range: (u32, u32),
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            allowed_host_paths: Vec::new(),
            enforce_container_disk_quota: false,
            container_disk_watch_interval: Duration::from_secs(15),
            xfs_project_range: (5000, 10000),
        }
    }
}

/// Parses `--xfs-project-range`, `[5000-10000]` (brackets optional).
pub fn parse_project_range(s: &str) -> Result<(u32, u32), String> {
    let t = s.trim().trim_start_matches('[').trim_end_matches(']');
    let (a, b) = t.split_once('-').ok_or_else(|| format!("invalid project range '{s}' (want [FIRST-LAST])"))?;
    let a: u32 = a.trim().parse().map_err(|_| format!("invalid project range '{s}'"))?;
    let b: u32 = b.trim().parse().map_err(|_| format!("invalid project range '{s}'"))?;
    if a == 0 || a > b {
        return Err(format!("invalid project range '{s}': want 0 < FIRST <= LAST"));
    }
    Ok((a, b))
}

/// The volume isolators the agent runs with (`--isolation`).
#[derive(Clone, Copy, Debug, Default)]
pub struct VolumeIsolators {
    pub sandbox_path: bool,
    pub host_path: bool,
    pub image: bool,
}

impl VolumeIsolators {
    pub fn from_isolation(iso: &Isolation) -> Self {
        VolumeIsolators {
            sandbox_path: iso.volume_sandbox_path,
            host_path: iso.volume_host_path,
            image: iso.volume_image,
        }
    }
}

/// The volume isolators of an agent configuration (its `--isolation`, or the default).
pub fn isolators(config: &crate::AgentConfig) -> VolumeIsolators {
    use agora_containerizer::isolation::{DEFAULT_ROOT, DEFAULT_USER};
    let root = nix::unistd::Uid::effective().is_root();
    let names = config.isolation.clone().unwrap_or_else(|| if root { DEFAULT_ROOT } else { DEFAULT_USER }.to_string());
    Isolation::parse(&names).map(|i| VolumeIsolators::from_isolation(&i)).unwrap_or_default()
}

/// A volume to be made: the mount, and for a sandbox path the directory to create first.
struct Planned {
    mount: VolumeMount,
    create: Option<PathBuf>,
}

fn mode_read_only(v: &serde_json::Value, i: usize) -> Result<bool, String> {
    match v.get("mode").and_then(|m| m.as_str()) {
        None | Some("RW") => Ok(false),
        Some("RO") => Ok(true),
        Some(other) => Err(format!("volume {i}: unknown mode '{other}' (want RO or RW)")),
    }
}

fn str_field<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for p in path {
        v = v.get(*p)?;
    }
    v.as_str()
}

/// A relative path inside the sandbox, created if missing, never through a symlink.
fn sandbox_path(sandbox: &Path, rel: &str, i: usize) -> Result<PathBuf, String> {
    if rel.is_empty() || rel.starts_with('/') {
        return Err(format!("volume {i}: sandbox_path.path '{rel}' must be a relative path in the sandbox"));
    }
    agora_containerizer::volumes::check_target(rel).map_err(|e| format!("volume {i}: sandbox_path.path: {e}"))?;
    // Checked without creating anything (a file or missing parts are fine).
    let mut p = sandbox.to_path_buf();
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        p.push(c);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            if m.file_type().is_symlink() {
                return Err(format!("volume {i}: sandbox_path.path '{rel}': {} is a symlink; refused", p.display()));
            }
        }
    }
    Ok(p)
}

/// Whether `path` (canonical) lies under one of the allowed prefixes (canonicalised too, so
/// neither symlinks nor `..` can lead out of them).
fn allowed(path: &Path, allowed: &[PathBuf]) -> bool {
    allowed.iter().any(|a| {
        let a = std::fs::canonicalize(a).unwrap_or_else(|_| a.clone());
        path.starts_with(&a)
    })
}

/// Turns `ContainerInfo.volumes[]` into mounts. `has_image`: the container runs in an image
/// (absolute container paths are then in the image's rootfs). Nothing is created unless
/// every volume is valid; then missing SANDBOX_PATH directories are made (owned by `user`).
pub fn mounts_for(
    container_info: Option<&serde_json::Value>,
    sandbox: &Path,
    user: Option<&str>,
    isolators: VolumeIsolators,
    config: &VolumeConfig,
) -> Result<Vec<VolumeMount>, String> {
    let Some(list) = container_info.and_then(|c| c.get("volumes")).and_then(|v| v.as_array()) else {
        return Ok(vec![]);
    };
    let mut planned = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let container_path = v
            .get("container_path")
            .and_then(|p| p.as_str())
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| format!("volume {i}: 'container_path' is required"))?;
        agora_containerizer::volumes::check_target(container_path).map_err(|e| format!("volume {i}: {e}"))?;
        let read_only = mode_read_only(v, i)?;
        let source_type = str_field(v, &["source", "type"]);
        let legacy_host = v.get("host_path").and_then(|h| h.as_str());
        if let Some(image) = v.get("image") {
            if !isolators.image {
                return Err(format!(
                    "volume {i} ('{container_path}'): image volumes need the volume/image isolator (--isolation)"
                ));
            }
            crate::images::ImageRequest::from_image(image).map_err(|e| format!("volume {i}: {e}"))?;
            if !read_only {
                return Err(format!("volume {i} ('{container_path}'): an image volume is read-only: want mode RO"));
            }
            // The source is the image's rootfs, filled in once provisioned (`image_volumes`).
            planned.push(Planned {
                create: None,
                mount: VolumeMount {
                    source: PathBuf::new(),
                    target: container_path.to_string(),
                    read_only: true,
                    propagation: Propagation::HostToContainer,
                },
            });
            continue;
        }
        let p = match (source_type, legacy_host) {
            (Some("SANDBOX_PATH"), _) => {
                if !isolators.sandbox_path {
                    return Err(format!(
                        "volume {i} ('{container_path}'): SANDBOX_PATH volumes need the volume/sandbox_path isolator (--isolation)"
                    ));
                }
                let sp = v.get("source").and_then(|s| s.get("sandbox_path"));
                let kind = sp.and_then(|s| s.get("type")).and_then(|t| t.as_str()).unwrap_or("SELF");
                let rel = sp.and_then(|s| s.get("path")).and_then(|p| p.as_str()).unwrap_or("");
                match kind {
                    "SELF" => {}
                    "PARENT" => {
                        return Err(format!(
                            "volume {i} ('{container_path}'): SANDBOX_PATH of type PARENT needs a nested container (task groups), which Agora does not have yet"
                        ));
                    }
                    other => {
                        return Err(format!("volume {i}: unknown sandbox_path type '{other}' (want SELF or PARENT)"))
                    }
                }
                let source = sandbox_path(sandbox, rel, i)?;
                Planned {
                    create: Some(source.clone()),
                    mount: VolumeMount {
                        source,
                        target: container_path.to_string(),
                        read_only,
                        propagation: Propagation::HostToContainer,
                    },
                }
            }
            (Some("HOST_PATH"), _) => {
                let hp = v.get("source").and_then(|s| s.get("host_path"));
                let path = hp
                    .and_then(|h| h.get("path"))
                    .and_then(|p| p.as_str())
                    .ok_or_else(|| format!("volume {i}: a HOST_PATH volume needs source.host_path.path"))?;
                let propagation = match hp.and_then(|h| str_field(h, &["mount_propagation", "mode"])) {
                    None | Some("HOST_TO_CONTAINER") => Propagation::HostToContainer,
                    Some("BIDIRECTIONAL") => Propagation::Bidirectional,
                    Some(other) => {
                        return Err(format!(
                            "volume {i}: unknown mount_propagation mode '{other}' (want HOST_TO_CONTAINER or BIDIRECTIONAL)"
                        ))
                    }
                };
                host_path(path, container_path, read_only, propagation, i, isolators, config)?
            }
            (Some(other), _) => {
                return Err(format!(
                    "volume {i} ('{container_path}'): source type '{other}' is not supported (Agora has SANDBOX_PATH and HOST_PATH)"
                ));
            }
            (None, Some(h)) if h.starts_with('/') => {
                host_path(h, container_path, read_only, Propagation::HostToContainer, i, isolators, config)?
            }
            (None, Some(rel)) => {
                // The legacy form with a relative host path: a path in the sandbox.
                if !isolators.sandbox_path {
                    return Err(format!(
                        "volume {i} ('{container_path}'): a sandbox volume needs the volume/sandbox_path isolator (--isolation)"
                    ));
                }
                let source = sandbox_path(sandbox, rel, i)?;
                Planned {
                    create: Some(source.clone()),
                    mount: VolumeMount {
                        source,
                        target: container_path.to_string(),
                        read_only,
                        propagation: Propagation::HostToContainer,
                    },
                }
            }
            (None, None) => {
                return Err(format!("volume {i} ('{container_path}'): no source (want source.type or host_path)"));
            }
        };
        planned.push(p);
    }
    let mut out = Vec::new();
    for p in planned {
        if let Some(dir) = &p.create {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                chown_tree(sandbox, dir, user);
            }
        }
        out.push(p.mount);
    }
    Ok(out)
}

/// The image volumes of `ContainerInfo.volumes[]`: each one's index (which is also its
/// index in what [`mounts_for`] returns, whose source it fills once provisioned) and image.
/// Call after `mounts_for` accepted the volumes.
pub fn image_volumes(container_info: Option<&serde_json::Value>) -> Vec<(usize, crate::images::ImageRequest)> {
    let Some(list) = container_info.and_then(|c| c.get("volumes")).and_then(|v| v.as_array()) else {
        return vec![];
    };
    list.iter()
        .enumerate()
        .filter_map(|(i, v)| Some((i, crate::images::ImageRequest::from_image(v.get("image")?).ok()?)))
        .collect()
}

/// Gives the directories from `sandbox` down to `dir` to the task's user (when the agent
/// switches users), as the sandbox itself is.
fn chown_tree(sandbox: &Path, dir: &Path, user: Option<&str>) {
    let Some(u) = user else { return };
    let Ok(Some(user)) = nix::unistd::User::from_name(u) else { return };
    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    let mut p = dir.to_path_buf();
    while p.starts_with(sandbox) && p != sandbox {
        let _ = nix::unistd::chown(&p, Some(user.uid), Some(user.gid));
        if !p.pop() {
            break;
        }
    }
}

fn host_path(
    path: &str,
    container_path: &str,
    read_only: bool,
    propagation: Propagation,
    i: usize,
    isolators: VolumeIsolators,
    config: &VolumeConfig,
) -> Result<Planned, String> {
    if !isolators.host_path {
        return Err(format!(
            "volume {i} ('{container_path}'): HOST_PATH volumes need the volume/host_path isolator (--isolation)"
        ));
    }
    if !path.starts_with('/') {
        return Err(format!("volume {i}: host path '{path}' must be absolute"));
    }
    let canon = std::fs::canonicalize(path).map_err(|e| format!("volume {i}: host path '{path}': {e}"))?;
    if !allowed(&canon, &config.allowed_host_paths) {
        let list = if config.allowed_host_paths.is_empty() {
            "none is allowed".to_string()
        } else {
            config.allowed_host_paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(",")
        };
        let resolved =
            if canon != Path::new(path) { format!(" (resolved to {})", canon.display()) } else { String::new() };
        return Err(format!("volume {i}: host path '{path}'{resolved} is not under --allowed-host-paths ({list})"));
    }
    Ok(Planned {
        create: None,
        mount: VolumeMount { source: canon, target: container_path.to_string(), read_only, propagation },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("agora-agent-vol-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const ALL: VolumeIsolators = VolumeIsolators { sandbox_path: true, host_path: true, image: false };

    #[test]
    fn sandbox_and_host_paths_become_mounts() {
        let sb = tmp("sb");
        let host = tmp("host");
        let cfg = VolumeConfig { allowed_host_paths: vec![host.clone()], ..Default::default() };
        let ci = json!({"volumes": [
            {"container_path": "shared", "mode": "RW",
             "source": {"type": "SANDBOX_PATH", "sandbox_path": {"type": "SELF", "path": "data/x"}}},
            {"container_path": "/h", "mode": "RO",
             "source": {"type": "HOST_PATH", "host_path": {"path": host.to_str().unwrap(),
                "mount_propagation": {"mode": "BIDIRECTIONAL"}}}},
            {"container_path": "legacy", "host_path": host.to_str().unwrap(), "mode": "RW"}
        ]});
        let m = mounts_for(Some(&ci), &sb, None, ALL, &cfg).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].source, sb.join("data/x"));
        assert!(sb.join("data/x").is_dir());
        assert!(m[1].read_only && m[1].propagation == Propagation::Bidirectional);
        assert_eq!(m[2].source, std::fs::canonicalize(&host).unwrap());
    }

    #[test]
    fn escapes_and_disallowed_paths_are_refused_and_nothing_is_created() {
        let sb = tmp("sb2");
        let host = tmp("host2");
        let cfg = VolumeConfig { allowed_host_paths: vec![host.join("ok")], ..Default::default() };
        std::fs::create_dir(host.join("ok")).unwrap();
        std::os::unix::fs::symlink("/etc", host.join("ok/link")).unwrap();
        let vol = |path: String| {
            json!({"volumes": [
                {"container_path": "made", "source": {"type": "SANDBOX_PATH", "sandbox_path": {"type": "SELF", "path": "made"}}},
                {"container_path": "/x", "source": {"type": "HOST_PATH", "host_path": {"path": path}}}]})
        };
        for p in [
            "/etc".to_string(),
            format!("{}/ok/../", host.display()),
            format!("{}/ok/link", host.display()),
            format!("{}/okay", host.display()),
        ] {
            let _ = std::fs::create_dir(host.join("okay"));
            let e = mounts_for(Some(&vol(p.clone())), &sb, None, ALL, &cfg).unwrap_err();
            assert!(e.contains("--allowed-host-paths") && e.contains(&p), "{p}: {e}");
            assert!(!sb.join("made").exists(), "created before validation");
        }
        // Isolator off; PARENT; `..` in a sandbox path.
        let none = VolumeIsolators::default();
        let e = mounts_for(Some(&vol("/etc".into())), &sb, None, none, &cfg).unwrap_err();
        assert!(e.contains("volume/sandbox_path"), "{e}");
        let parent = json!({"volumes": [{"container_path": "p",
            "source": {"type": "SANDBOX_PATH", "sandbox_path": {"type": "PARENT", "path": "x"}}}]});
        assert!(mounts_for(Some(&parent), &sb, None, ALL, &cfg).unwrap_err().contains("PARENT"));
        let dots = json!({"volumes": [{"container_path": "p",
            "source": {"type": "SANDBOX_PATH", "sandbox_path": {"type": "SELF", "path": "../x"}}}]});
        assert!(mounts_for(Some(&dots), &sb, None, ALL, &cfg).is_err());
        let bad_target = json!({"volumes": [{"container_path": "../../etc", "host_path": "rel"}]});
        assert!(mounts_for(Some(&bad_target), &sb, None, ALL, &cfg).is_err());
    }

    #[test]
    fn project_range_parses() {
        assert_eq!(parse_project_range("[5000-10000]").unwrap(), (5000, 10000));
        assert_eq!(parse_project_range("10-20").unwrap(), (10, 20));
        assert!(parse_project_range("[20-10]").is_err());
        assert!(parse_project_range("x").is_err());
    }
}
