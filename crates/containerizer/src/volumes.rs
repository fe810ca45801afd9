//! Volumes in the linux launcher: [`VolumeMount`]s (already resolved to host paths by the
//! agent) are checked before anything is started ([`plan`]) and turned into
//! [`VolumeSpec`]s the supervisor's child mounts in the container's mount namespace before
//! the init runs ([`mount_volume`]).
//!
//! Where a volume goes:
//! - a relative target lives under the sandbox: it is mounted at `<host sandbox>/<target>`
//!   (the path the executor and a host-root task see) and again at
//!   `/mnt/mesos/sandbox/<target>` (or, in an image container,
//!   `/mnt/mesos/rootfs/mnt/mesos/sandbox/<target>`);
//! - an absolute target lives in the container's root: the image's prepared rootfs
//!   (`/mnt/mesos/rootfs/<target>`), or, without an image, the host's root seen from the
//!   container's private mount namespace, where it must already exist (Mesos refuses to
//!   create mount points on the host).
//!
//! A target is resolved component by component under its root: `.`/`..` are refused, and so
//! is any existing component that is a symlink (an image or a task could point it at the
//! host). Missing components are created (directories; the last one a directory or an empty
//! file, as the source is).
//!
//! Propagation: with volumes, the container's mount namespace is made a slave of the host's
//! (Mesos's `--make-rslave /`) instead of private, so mounts the host makes under a
//! HOST_TO_CONTAINER source later appear in the container, and nothing the container mounts
//! goes back. A BIDIRECTIONAL source is made a shared mount on the host first (a bind mount
//! of itself, left in place as Mesos does) and stays a peer of it in the container.
use crate::{Propagation, VolumeMount};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One mount of a volume, as the supervisor makes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// The host file or directory.
    pub source: PathBuf,
    /// The directory the target is resolved under, in the container's mount namespace.
    pub root: PathBuf,
    /// The target relative to `root`.
    pub path: String,
    /// The source is a file (the mount point is created as an empty file).
    pub file: bool,
    pub read_only: bool,
    pub propagation: Propagation,
    /// Missing components may be created.
    pub create: bool,
    /// Made after the image rootfs and the launcher's own mounts (else: before them).
    pub late: bool,
}

/// Checks a target's syntax: not empty, no `.` or `..` components, no NUL.
pub fn check_target(target: &str) -> Result<(), String> {
    if target.trim().is_empty() {
        return Err("a volume's container path must not be empty".into());
    }
    if target.contains('\0') {
        return Err(format!("volume container path '{}' contains a NUL byte", target.escape_debug()));
    }
    if target.split('/').any(|c| c == ".." || c == ".") {
        return Err(format!("volume container path '{target}' must not contain '.' or '..'"));
    }
    if target.split('/').all(|c| c.is_empty()) {
        return Err(format!("volume container path '{target}' names the container's root"));
    }
    Ok(())
}

/// `root/rel` resolved without following symlinks: every existing component must be a
/// directory (the last may be a file too) and none a symlink. `create`: missing components
/// are made (directories; the last one an empty file when `file`). Without `create`, a
/// missing component ends the walk successfully (it would be created later).
pub fn resolve(root: &Path, rel: &str, create: bool, file: bool) -> Result<PathBuf, String> {
    check_target(rel)?;
    let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let mut p = root.to_path_buf();
    for (i, c) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "volume container path '{rel}': {} is a symlink (it could lead out of {}); refused",
                    p.display(),
                    root.display()
                ));
            }
            Ok(m) if !last && !m.is_dir() => {
                return Err(format!("volume container path '{rel}': {} is not a directory", p.display()));
            }
            Ok(m) if last && m.is_dir() == file => {
                let (is, want) = if file { ("a directory", "file") } else { ("not a directory", "directory") };
                return Err(format!(
                    "volume container path '{rel}': {} is {is} but the volume's source is a {want}",
                    p.display()
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Ok(root.join(rel.trim_start_matches('/')));
                }
                let made = if last && file {
                    std::fs::OpenOptions::new().write(true).create_new(true).open(&p).map(|_| ())
                } else {
                    std::fs::create_dir(&p)
                };
                made.map_err(|e| format!("cannot create the mount point {}: {e}", p.display()))?;
            }
            Err(e) => return Err(format!("cannot stat {}: {e}", p.display())),
        }
    }
    Ok(p)
}

/// Where the container's roots are, for [`plan`].
pub struct Roots<'a> {
    /// The host sandbox.
    pub sandbox: &'a Path,
    /// The sandbox as the container's task sees it (`/mnt/mesos/sandbox`, or inside the
    /// rootfs mount for an image container).
    pub container_sandbox: PathBuf,
    /// The image rootfs on the host (for checking before launch) and where it is mounted
    /// in the container's namespace.
    pub rootfs: Option<(&'a Path, PathBuf)>,
}

/// Checks every volume (source exists, target stays inside its root) and turns them into
/// the mounts the supervisor makes. Nothing is created or mounted here.
pub fn plan(volumes: &[VolumeMount], roots: &Roots<'_>) -> Result<Vec<VolumeSpec>, String> {
    let mut out = Vec::new();
    for v in volumes {
        check_target(&v.target)?;
        if !v.source.is_absolute() {
            return Err(format!("volume source {} is not an absolute path", v.source.display()));
        }
        let meta = std::fs::metadata(&v.source)
            .map_err(|e| format!("volume source {} for container path '{}': {e}", v.source.display(), v.target))?;
        let file = !meta.is_dir();
        if file && !meta.is_file() {
            return Err(format!("volume source {} is neither a directory nor a regular file", v.source.display()));
        }
        let base = VolumeSpec {
            source: v.source.clone(),
            file,
            read_only: v.read_only,
            propagation: v.propagation,
            ..Default::default()
        };
        if !v.target.starts_with('/') {
            resolve(roots.sandbox, &v.target, false, file)?;
            out.push(VolumeSpec {
                root: roots.sandbox.to_path_buf(),
                path: v.target.clone(),
                create: true,
                late: false,
                ..base.clone()
            });
            out.push(VolumeSpec {
                root: roots.container_sandbox.clone(),
                path: v.target.clone(),
                create: false,
                late: true,
                ..base
            });
            continue;
        }
        match &roots.rootfs {
            Some((host_rootfs, mounted)) => {
                resolve(host_rootfs, &v.target, false, file)?;
                out.push(VolumeSpec {
                    root: mounted.clone(),
                    path: v.target.clone(),
                    create: true,
                    late: true,
                    ..base
                });
            }
            None => {
                // The host's own root: the mount point must exist (nothing is created on
                // the host), and symlinks within the host's root cannot lead out of it.
                let m = std::fs::metadata(&v.target).map_err(|e| {
                    format!("volume container path '{}' does not exist on the host (a container without an image cannot create it): {e}", v.target)
                })?;
                if m.is_dir() == file {
                    return Err(format!(
                        "volume container path '{}' and its source {} are not both directories or both files",
                        v.target,
                        v.source.display()
                    ));
                }
                let canon = std::fs::canonicalize(&v.target)
                    .map_err(|e| format!("volume container path '{}': {e}", v.target))?;
                out.push(VolumeSpec {
                    root: "/".into(),
                    path: canon.to_string_lossy().trim_start_matches('/').to_string(),
                    create: false,
                    late: true,
                    ..base
                });
            }
        }
    }
    Ok(out)
}

/// One line of `/proc/self/mountinfo`: (mount point, optional fields).
fn mountinfo() -> Vec<(PathBuf, String)> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return vec![] };
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let point = f.get(4)?;
            let sep = f.iter().position(|x| *x == "-")?;
            Some((PathBuf::from(crate::supervisor::unescape_mountinfo(point)), f[6..sep].join(" ")))
        })
        .collect()
}

/// Makes `source` a shared mount point in the host's namespace, for a BIDIRECTIONAL volume:
/// unless it already is one, it is bind-mounted onto itself and marked shared (left in
/// place, as Mesos does).
pub fn ensure_shared(source: &Path) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    let canon = std::fs::canonicalize(source).map_err(|e| format!("{}: {e}", source.display()))?;
    let shared = mountinfo().iter().any(|(p, opt)| *p == canon && opt.contains("shared:"));
    if shared {
        return Ok(());
    }
    let is_point = mountinfo().iter().any(|(p, _)| *p == canon);
    if !is_point {
        mount(Some(&canon), &canon, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| format!("cannot bind-mount {} onto itself: {e}", canon.display()))?;
    }
    mount(None::<&str>, &canon, None::<&str>, MsFlags::MS_SHARED, None::<&str>)
        .map_err(|e| format!("cannot make {} a shared mount: {e}", canon.display()))?;
    Ok(())
}

/// In the container's new mount namespace, before any mount: makes every mount a slave of
/// the host's (so mounts flow in, never out), except the bidirectional sources, which stay
/// peers of the host's.
pub fn enslave_root(volumes: &[VolumeSpec]) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    let bidirectional: Vec<PathBuf> = volumes
        .iter()
        .filter(|v| v.propagation == Propagation::Bidirectional)
        .filter_map(|v| std::fs::canonicalize(&v.source).ok())
        .collect();
    if bidirectional.is_empty() {
        return mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
            .map_err(|e| std::io::Error::other(format!("make / a slave mount: {e}")));
    }
    for (point, _) in mountinfo() {
        if bidirectional.contains(&point) {
            continue;
        }
        // Mounts hidden under others cannot be reached by path (nor mounted on): skipped.
        let _ = mount(None::<&str>, &point, None::<&str>, MsFlags::MS_SLAVE, None::<&str>);
    }
    Ok(())
}

/// Mounts one volume (in the container's mount namespace).
pub fn mount_volume(v: &VolumeSpec) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    let err = |what: String| std::io::Error::other(what);
    let target = resolve(&v.root, &v.path, true, v.file).map_err(err)?;
    if !v.create && !target.exists() {
        return Err(err(format!("volume mount point {} does not exist", target.display())));
    }
    mount(Some(&v.source), &target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| err(format!("mount volume {} at {}: {e}", v.source.display(), target.display())))?;
    if v.read_only {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| err(format!("remount volume {} read-only: {e}", target.display())))?;
    }
    let prop = match v.propagation {
        Propagation::HostToContainer => MsFlags::MS_SLAVE,
        Propagation::Bidirectional => MsFlags::MS_SHARED,
    };
    mount(None::<&str>, &target, None::<&str>, MsFlags::MS_REC | prop, None::<&str>)
        .map_err(|e| err(format!("set the propagation of volume {}: {e}", target.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("agora-vol-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn targets_with_dots_or_empty_are_refused() {
        for bad in ["", "/", "a/../b", "../x", "./x", "/a/./b", "//"] {
            assert!(check_target(bad).is_err(), "{bad:?}");
        }
        for ok in ["a", "a/b", "/data", "/a//b/"] {
            assert!(check_target(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn resolve_refuses_symlinks_and_creates_mount_points() {
        let root = tmp("resolve");
        std::fs::create_dir(root.join("d")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("d/esc")).unwrap();
        let e = resolve(&root, "d/esc/x", true, false).unwrap_err();
        assert!(e.contains("symlink"), "{e}");
        assert!(!Path::new("/etc/x").exists());
        // Checking does not create anything.
        assert_eq!(resolve(&root, "d/new/sub", false, false).unwrap(), root.join("d/new/sub"));
        assert!(!root.join("d/new").exists());
        let p = resolve(&root, "d/new/f", true, true).unwrap();
        assert!(p.is_file());
        assert!(resolve(&root, "d/new/f", true, false).unwrap_err().contains("not a directory"));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn plan_checks_sources_and_roots() {
        let sandbox = tmp("plan");
        let src = tmp("plan-src");
        let roots = Roots { sandbox: &sandbox, container_sandbox: "/mnt/mesos/sandbox".into(), rootfs: None };
        let v = |source: &Path, target: &str| VolumeMount {
            source: source.to_path_buf(),
            target: target.into(),
            ..Default::default()
        };
        let specs = plan(&[v(&src, "data")], &roots).unwrap();
        assert_eq!(specs.len(), 2);
        assert!(!specs[0].late && specs[1].late && specs[0].root == sandbox);
        assert!(plan(&[v(&src.join("missing"), "data")], &roots).unwrap_err().contains("missing"));
        assert!(plan(&[v(&src, "../up")], &roots).is_err());
        assert!(plan(&[v(&src, "/no/such/dir/on/host")], &roots).unwrap_err().contains("does not exist"));
        assert!(plan(&[v(Path::new("rel"), "x")], &roots).is_err());
        std::fs::remove_dir_all(sandbox).unwrap();
        std::fs::remove_dir_all(src).unwrap();
    }
}
