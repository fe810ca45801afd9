//! Container root filesystems from stored images: the `overlay` and `copy` backends.
//!
//! Layout under the provisioner directory:
//!
//! ```text
//! containers/<container_id>/provision.json   image id and backend (written first)
//! containers/<container_id>/rootfs/          the root filesystem (overlay mount point)
//! containers/<container_id>/upper/, work/    overlay's writable layer and work dir
//! ```
//!
//! `overlay` mounts the image's layer directories read-only as lowerdirs (they are shared
//! by every container of every image using them) with a per-container upper/work dir.
//! `copy` flattens the layers into `rootfs/`, applying whiteouts; it needs nothing from the
//! kernel and leaves the store free to collect the image afterwards.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::digest::Digest;
use crate::store::{Image, Store};
use crate::unpack::{WhiteoutMode, OVERLAY_OPAQUE_XATTR};

/// How a rootfs is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Overlay,
    Copy,
}

impl Backend {
    /// `overlay` when the kernel has overlayfs and the store keeps overlay whiteouts, else `copy`.
    pub fn default_for(store: &Store) -> Backend {
        if overlay_supported() && store.whiteout_mode() == WhiteoutMode::Overlay {
            Backend::Overlay
        } else {
            Backend::Copy
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "overlay" => Ok(Backend::Overlay),
            "copy" => Ok(Backend::Copy),
            _ => Err(format!("unknown image provisioner backend {s:?} (want overlay or copy)")),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Overlay => "overlay",
            Backend::Copy => "copy",
        })
    }
}

/// Whether `/proc/filesystems` lists overlay.
pub fn overlay_supported() -> bool {
    fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.lines().any(|l| l.trim_end().ends_with("\toverlay")))
}

/// A provisioned rootfs, as found on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provisioned {
    pub container_id: String,
    pub image: Digest,
    pub backend: Backend,
    pub rootfs: PathBuf,
    /// For overlay: whether the rootfs is mounted now (false after a reboot).
    #[serde(skip)]
    pub mounted: bool,
}

/// Why provisioning or destroying failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("invalid container id {0:?}")]
    InvalidContainerId(String),
    #[error("container {0} already has a rootfs")]
    AlreadyProvisioned(String),
    #[error("container {container}: layer {layer} of image {image} is not in the store")]
    MissingLayer { container: String, image: Digest, layer: Digest },
    #[error("container {container}: overlay backend unavailable: {reason}")]
    OverlayUnavailable { container: String, reason: String },
    #[error("container {container}: {op} {path}: {source}")]
    Io {
        container: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Builds and removes container root filesystems.
#[derive(Clone)]
pub struct Provisioner {
    dir: PathBuf,
    store: Store,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Provisioner {
    /// Opens (creating) the provisioner directory, e.g. `<work_dir>/provisioner`.
    pub fn open(dir: impl Into<PathBuf>, store: Store) -> io::Result<Provisioner> {
        let dir = dir.into();
        fs::create_dir_all(dir.join("containers"))?;
        Ok(Provisioner { dir: fs::canonicalize(&dir)?, store })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join("containers").join(id)
    }

    /// Builds the rootfs of `container_id` from `image` and returns its path. The image's
    /// layers must be in the store (pull first).
    pub async fn provision(
        &self,
        container_id: &str,
        image: &Image,
        backend: Backend,
    ) -> Result<PathBuf, ProvisionError> {
        let span = tracing::info_span!("provision", container = container_id, image = %image.id, %backend);
        self.provision_inner(container_id, image, backend).instrument(span).await
    }

    async fn provision_inner(
        &self,
        container_id: &str,
        image: &Image,
        backend: Backend,
    ) -> Result<PathBuf, ProvisionError> {
        if !valid_id(container_id) {
            return Err(ProvisionError::InvalidContainerId(container_id.into()));
        }
        let cid = container_id.to_string();
        let ioe = |op: &'static str, path: &Path| {
            let (c, p) = (cid.clone(), path.to_path_buf());
            move |source| ProvisionError::Io { container: c, op, path: p, source }
        };
        let dir = self.container_dir(container_id);
        if dir.exists() {
            return Err(ProvisionError::AlreadyProvisioned(cid));
        }
        let mut lowers = Vec::new();
        for l in &image.layers {
            let rec = self.store.layer(l).ok_or_else(|| ProvisionError::MissingLayer {
                container: cid.clone(),
                image: image.id.clone(),
                layer: l.clone(),
            })?;
            lowers.push((self.store.layer_path(l), rec.whiteouts));
        }
        if backend == Backend::Overlay {
            if !overlay_supported() {
                return Err(ProvisionError::OverlayUnavailable {
                    container: cid,
                    reason: "kernel has no overlayfs".into(),
                });
            }
            if lowers.iter().any(|(_, w)| *w != WhiteoutMode::Overlay) {
                return Err(ProvisionError::OverlayUnavailable {
                    container: cid,
                    reason: "layers were stored without overlay whiteouts (store filesystem lacks trusted xattrs)"
                        .into(),
                });
            }
        }
        fs::create_dir(&dir).map_err(ioe("create", &dir))?;
        let rootfs = dir.join("rootfs");
        let rec = Provisioned {
            container_id: cid.clone(),
            image: image.id.clone(),
            backend,
            rootfs: rootfs.clone(),
            mounted: false,
        };
        let meta = dir.join("provision.json");
        let json = serde_json::to_vec_pretty(&rec).map_err(|e| ioe("encode", &meta)(io::Error::other(e)))?;
        // Not fsynced (it is on every launch's path): after a power failure the record may be
        // missing, and `container_ids` still finds the directory for `destroy`.
        crate::store::write_replace(&dir, &meta, &json)
            .map_err(|e| ioe("write", &meta)(io::Error::other(e.to_string())))?;
        fs::create_dir(&rootfs).map_err(ioe("create", &rootfs))?;
        let res =
            match backend {
                Backend::Overlay => self.mount_overlay(&cid, &dir, &lowers),
                Backend::Copy => {
                    let (root2, cid2) = (rootfs.clone(), cid.clone());
                    tokio::task::spawn_blocking(move || -> Result<(), ProvisionError> {
                        for (layer, mode) in &lowers {
                            let mut links = HashMap::new();
                            flatten(layer, &root2, *mode, &mut links).map_err(|(op, path, source)| {
                                ProvisionError::Io { container: cid2.clone(), op, path, source }
                            })?;
                        }
                        Ok(())
                    })
                    .await
                    .unwrap_or_else(|e| Err(ioe("copy", &rootfs)(io::Error::other(e))))
                }
            };
        if let Err(e) = res {
            let _ = self.destroy(container_id).await;
            return Err(e);
        }
        tracing::info!(rootfs = %rootfs.display(), "rootfs provisioned");
        Ok(rootfs)
    }

    fn mount_overlay(&self, cid: &str, dir: &Path, lowers: &[(PathBuf, WhiteoutMode)]) -> Result<(), ProvisionError> {
        let ioe = |op: &'static str, path: &Path, source| ProvisionError::Io {
            container: cid.into(),
            op,
            path: path.into(),
            source,
        };
        let upper = dir.join("upper");
        let work = dir.join("work");
        for d in [&upper, &work] {
            fs::create_dir(d).map_err(|e| ioe("create", d, e))?;
        }
        let mut lower: Vec<String> = lowers.iter().rev().map(|(p, _)| p.to_string_lossy().into_owned()).collect();
        if lower.is_empty() {
            let empty = dir.join("empty");
            fs::create_dir(&empty).map_err(|e| ioe("create", &empty, e))?;
            lower.push(empty.to_string_lossy().into_owned());
        }
        let opts = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
        if opts.len() >= 4000 {
            return Err(ProvisionError::OverlayUnavailable {
                container: cid.into(),
                reason: format!(
                    "{} layers make the mount options longer than a page; use the copy backend",
                    lowers.len()
                ),
            });
        }
        let rootfs = dir.join("rootfs");
        nix::mount::mount(Some("overlay"), &rootfs, Some("overlay"), nix::mount::MsFlags::empty(), Some(opts.as_str()))
            .map_err(|e| ioe("mount overlay on", &rootfs, io::Error::from(e)))
    }

    /// Unmounts and removes everything of `container_id`. Returns whether there was anything.
    pub async fn destroy(&self, container_id: &str) -> Result<bool, ProvisionError> {
        if !valid_id(container_id) {
            return Err(ProvisionError::InvalidContainerId(container_id.into()));
        }
        let dir = self.container_dir(container_id);
        if !dir.exists() {
            return Ok(false);
        }
        let rootfs = dir.join("rootfs");
        let cid = container_id.to_string();
        tokio::task::spawn_blocking(move || -> Result<bool, ProvisionError> {
            let ioe = |op: &'static str, path: &Path, source| ProvisionError::Io {
                container: cid.clone(),
                op,
                path: path.into(),
                source,
            };
            // Everything mounted at or under the rootfs (the launcher may have added mounts).
            let mut mounts: Vec<PathBuf> = mount_points().into_iter().filter(|m| m.starts_with(&rootfs)).collect();
            mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
            for m in mounts {
                nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(|e| ioe("unmount", &m, io::Error::from(e)))?;
            }
            fs::remove_dir_all(&dir).map_err(|e| ioe("remove", &dir, e))?;
            Ok(true)
        })
        .await
        .unwrap_or_else(|e| {
            Err(ProvisionError::Io {
                container: container_id.into(),
                op: "destroy",
                path: PathBuf::new(),
                source: io::Error::other(e),
            })
        })
    }

    /// Every provisioned rootfs on disk (after a restart: what to keep or destroy).
    pub fn list(&self) -> Vec<Provisioned> {
        let mounts = mount_points();
        let mut out: Vec<Provisioned> = fs::read_dir(self.dir.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let b = fs::read(e.path().join("provision.json")).ok()?;
                let mut p: Provisioned = serde_json::from_slice(&b).ok()?;
                p.mounted = mounts.contains(&p.rootfs);
                Some(p)
            })
            .collect();
        out.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        out
    }

    /// The container id of every directory under the provisioner, with or without a record
    /// (one cut short by a crash): what recovery passes to `destroy` when unclaimed.
    pub fn container_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(self.dir.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|id| valid_id(id))
            .collect();
        out.sort();
        out
    }

    /// Ids of images that provisioned rootfses use: pass them to `Store::prune`/`gc`.
    pub fn images_in_use(&self) -> Vec<String> {
        self.list().into_iter().map(|p| p.image.to_string()).collect()
    }
}

/// Mount points of this mount namespace.
fn mount_points() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| {
            PathBuf::from(p.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\"))
        })
        .collect()
}

type FlattenError = (&'static str, PathBuf, io::Error);

fn is_overlay_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// Copies layer tree `src` over `dst`, applying its whiteouts (either form). `dst` must be a
/// real directory; every directory descended into is made one (a symlink or file in the way
/// from a lower layer is replaced), so nothing is ever written through a symlink.
fn flatten(
    src: &Path,
    dst: &Path,
    mode: WhiteoutMode,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), FlattenError> {
    let e = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |err| (op, p, err)
    };
    let opaque = match mode {
        WhiteoutMode::Overlay => xattr::get(src, OVERLAY_OPAQUE_XATTR).ok().flatten().is_some_and(|v| v == b"y"),
        WhiteoutMode::Keep => fs::symlink_metadata(src.join(".wh..wh..opq")).is_ok(),
    };
    if opaque {
        for entry in fs::read_dir(dst).map_err(e("read", dst))? {
            let p = entry.map_err(e("read", dst))?.path();
            remove_any(&p).map_err(e("remove", &p))?;
        }
    }
    let mut entries: Vec<_> =
        fs::read_dir(src).map_err(e("read", src))?.collect::<Result<_, _>>().map_err(e("read", src))?;
    entries.sort_by_key(|x| x.file_name());
    for entry in entries {
        let name = entry.file_name();
        let s = entry.path();
        let d = dst.join(&name);
        let m = fs::symlink_metadata(&s).map_err(e("stat", &s))?;
        let nb = name.as_encoded_bytes();
        if mode == WhiteoutMode::Keep && nb.starts_with(b".wh.") {
            if nb.starts_with(b".wh..wh.") {
                continue;
            }
            let target = dst.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&nb[4..]));
            remove_any(&target).map_err(e("remove", &target))?;
            continue;
        }
        if mode == WhiteoutMode::Overlay && is_overlay_whiteout(&m) {
            remove_any(&d).map_err(e("remove", &d))?;
            continue;
        }
        let existing = fs::symlink_metadata(&d).ok();
        let ft = m.file_type();
        if ft.is_dir() {
            if !existing.as_ref().is_some_and(|x| x.is_dir()) {
                if existing.is_some() {
                    remove_any(&d).map_err(e("remove", &d))?;
                }
                fs::create_dir(&d).map_err(e("mkdir", &d))?;
            }
            flatten(&s, &d, mode, links)?;
            copy_meta(&s, &d, &m).map_err(e("set metadata", &d))?;
            continue;
        }
        if existing.is_some() {
            remove_any(&d).map_err(e("remove", &d))?;
        }
        if ft.is_file() && m.nlink() > 1 {
            if let Some(first) = links.get(&(m.dev(), m.ino())) {
                fs::hard_link(first, &d).map_err(e("link", &d))?;
                continue;
            }
            links.insert((m.dev(), m.ino()), d.clone());
        }
        if ft.is_file() {
            fs::copy(&s, &d).map_err(e("copy", &d))?;
        } else if ft.is_symlink() {
            let t = fs::read_link(&s).map_err(e("readlink", &s))?;
            std::os::unix::fs::symlink(&t, &d).map_err(e("symlink", &d))?;
        } else if ft.is_fifo() {
            nix::unistd::mkfifo(&d, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|x| ("mkfifo", d.clone(), io::Error::from(x)))?;
        } else {
            continue; // devices are never in stored layers (whiteouts handled above)
        }
        copy_meta(&s, &d, &m).map_err(e("set metadata", &d))?;
    }
    Ok(())
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn copy_meta(s: &Path, d: &Path, m: &fs::Metadata) -> io::Result<()> {
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(d, Some(m.uid()), Some(m.gid()))?;
    }
    if !m.file_type().is_symlink() {
        fs::set_permissions(d, fs::Permissions::from_mode(m.mode() & 0o7777))?;
        if let Ok(names) = xattr::list(s) {
            for n in names {
                let ns = n.to_string_lossy();
                if ns.starts_with("user.") || ns == "security.capability" {
                    if let Ok(Some(v)) = xattr::get(s, &n) {
                        let _ = xattr::set(d, &n, &v);
                    }
                }
            }
        }
    }
    let mt = filetime::FileTime::from_last_modification_time(m);
    filetime::set_symlink_file_times(d, mt, mt)
}
