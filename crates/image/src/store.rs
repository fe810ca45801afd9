//! The content-addressed image store.
//!
//! Layout under the store root (`--docker-store-dir`):
//!
//! ```text
//! blobs/sha256/<hex>                 manifests and configs, verified, as fetched
//! layers/sha256/<diff_id>/fs/        an unpacked layer (whiteouts in the store's form)
//! layers/sha256/<diff_id>/layer.json what it is: blob digest, compression, size, stats
//! images/sha256/<manifest>.json      an image: config, layer list, timestamps
//! repositories.json                  reference → image id
//! tmp/                               work in progress; emptied at open
//! ```
//!
//! Layers are keyed by their uncompressed digest (the config's `diff_id`), so the same
//! layer compressed two ways (gzip and zstd) is unpacked once and shared. Everything is
//! built under `tmp/` and published with one `rename`: after `syncfs` for layer trees, after
//! `fsync` for JSON files; so a crash leaves either nothing or something complete, and
//! whatever is in `tmp/` is removed when the store is opened again.
//!
//! Concurrency: pulls of the same layer or config in this process are serialised on a
//! per-digest lock; the second waits and then finds the layer present (one download).
//! Layer downloads are bounded by a semaphore. `prune`/`gc` take a write lock that
//! excludes pulls, so a layer just published cannot be collected before its image record
//! is written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::digest::{Algorithm, Digest};
use crate::reference::{Reference, ReferenceDefaults, ReferenceError};
use crate::registry::{RegistryClient, RegistryConfig, RegistryError};
use crate::spec::{Compression, Descriptor, ImageConfigDoc, Platform};
use crate::unpack::{self, BlobUnpackError, UnpackError, UnpackOptions, UnpackStats, WhiteoutMode};

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root directory (`--docker-store-dir`). Must not contain `:` or `,` (overlay options).
    pub root: PathBuf,
    pub registry: RegistryConfig,
    /// Registry for references that name none (`--docker-registry` when it is a host).
    pub defaults: ReferenceDefaults,
    /// Platform picked from image indexes (default linux/amd64).
    pub platform: Platform,
    /// Layers downloaded at once, over all pulls.
    pub max_concurrent_downloads: usize,
    /// `syncfs` each unpacked layer before publishing it (crash safety; costs some time).
    pub sync: bool,
    /// A directory of `docker save` tarballs used instead of a registry (Mesos's local
    /// registry, `--docker-registry=/path`): `<repo>:<tag>.tar`, see [`crate::sources`].
    pub local_registry: Option<PathBuf>,
}

impl StoreConfig {
    pub fn new(root: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            root: root.into(),
            registry: RegistryConfig::default(),
            defaults: ReferenceDefaults::default(),
            platform: Platform::linux_amd64(),
            max_concurrent_downloads: 3,
            sync: true,
            local_registry: None,
        }
    }
}

/// Which image spec an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    Docker,
    Appc,
}

/// What a container needs from an image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `8080/tcp`-style port names.
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    pub(crate) fn from_doc(doc: &ImageConfigDoc) -> ImageConfig {
        let c = doc.config.clone().unwrap_or_default();
        ImageConfig {
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            user: c.user.filter(|u| !u.is_empty()),
            exposed_ports: c.exposed_ports.map(|p| p.into_keys().collect()).unwrap_or_default(),
            volumes: c.volumes.map(|v| v.into_keys().collect()).unwrap_or_default(),
            labels: c.labels.unwrap_or_default(),
            stop_signal: c.stop_signal,
        }
    }
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The image manifest's digest (for local archives without one: the digest of a
    /// manifest synthesised from config and layers).
    pub id: Digest,
    pub kind: ImageKind,
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// Layers by uncompressed digest, base first.
    pub layers: Vec<Digest>,
    pub os: String,
    pub architecture: String,
    /// Where it came from: `registry`, `docker-archive`, `oci-layout`, `local-registry`, `appc`.
    pub source: String,
    /// Bytes on disk of its layers (shared layers counted in full).
    pub size: u64,
    /// Unix seconds.
    pub created: u64,
    pub last_used: u64,
    /// References pointing at it (filled in by `list`/`inspect`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
}

/// A stored layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub diff_id: Digest,
    pub blob_digest: Option<Digest>,
    pub compression: Compression,
    pub whiteouts: WhiteoutMode,
    /// Bytes on disk.
    pub size: u64,
    pub stats: UnpackStats,
}

/// When to talk to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Resolve the reference with the registry every time; download what is missing.
    #[default]
    Always,
    /// Use the stored image for this reference if there is one (Mesos `Image.cached`).
    IfNotPresent,
}

/// Progress of a pull, for logs and `TASK_STARTING` messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The manifest is known: how many layers and bytes (compressed) the image has.
    Resolved { image: Digest, layers: usize, bytes: u64 },
    /// A layer was already in the store.
    LayerCached { digest: Digest },
    /// Bytes of a layer blob received so far.
    LayerProgress { digest: Digest, done: u64, total: u64 },
    /// A layer was verified and published.
    LayerDone { digest: Digest },
}

/// A progress callback; called from the pulling tasks, so it must be cheap.
pub type ProgressFn = Arc<dyn Fn(&PullEvent) + Send + Sync>;

/// Options of one pull.
#[derive(Clone, Default)]
pub struct PullOptions {
    pub policy: PullPolicy,
    /// Overrides the store's platform.
    pub platform: Option<Platform>,
    pub progress: Option<ProgressFn>,
}

/// Why a store operation failed. Nothing half-written is left behind in any case.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{image}: {source}")]
    Registry {
        image: String,
        #[source]
        source: RegistryError,
    },
    #[error("{image}: layer {layer}: {source}")]
    Unpack {
        image: String,
        layer: String,
        #[source]
        source: UnpackError,
    },
    #[error("{image}: layer {layer}: decompressing: {message}")]
    Decompress { image: String, layer: String, message: String },
    #[error("{image}: {what} {expected}: digest mismatch (got {actual}); discarded")]
    DigestMismatch { image: String, what: &'static str, expected: Digest, actual: Digest },
    #[error("{image}: {what} {digest}: size mismatch (expected {expected} bytes, got {actual}); discarded")]
    SizeMismatch { image: String, what: &'static str, digest: Digest, expected: u64, actual: u64 },
    #[error("{image}: layer {digest}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { image: String, digest: Digest, media_type: String },
    #[error("{image}: invalid image: {reason}")]
    InvalidImage { image: String, reason: String },
    #[error("image {image} not found in the store")]
    NotFound { image: String },
    #[error("no space left on device under {path}")]
    NoSpace { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("store root {path} cannot be used: {reason}")]
    BadRoot { path: PathBuf, reason: String },
}

impl StoreError {
    pub(crate) fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
        move |source| {
            if source.raw_os_error() == Some(28) {
                StoreError::NoSpace { path: path.to_path_buf() }
            } else {
                StoreError::Io { op, path: path.to_path_buf(), source }
            }
        }
    }
}

/// What `prune`/`gc` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub images_removed: Vec<Digest>,
    pub layers_removed: Vec<Digest>,
    pub bytes_freed: u64,
}

/// Thresholds for [`Store::gc`] (Mesos's `--image_gc_config`).
#[derive(Debug, Clone, Default)]
pub struct GcPolicy {
    /// Keep at least this fraction (0..1) of the store's filesystem free.
    pub disk_headroom: Option<f64>,
    /// Keep the store's layers under this many bytes.
    pub max_store_bytes: Option<u64>,
    /// References or ids never collected.
    pub excluded: Vec<String>,
}

#[derive(Default)]
pub(crate) struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    pub(crate) async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}

/// The image store. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) config: StoreConfig,
    pub(crate) client: RegistryClient,
    pub(crate) whiteouts: WhiteoutMode,
    pub(crate) locks: KeyedLocks,
    downloads: tokio::sync::Semaphore,
    pub(crate) gc: tokio::sync::RwLock<()>,
    refs: Mutex<BTreeMap<String, Digest>>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens (creating if needed) the store at `config.root`: removes leftovers in `tmp/`,
    /// loads the references, and probes whether overlay whiteouts can be written here.
    pub async fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let root = config.root.clone();
        let s = root.to_string_lossy();
        if s.contains(':') || s.contains(',') {
            return Err(StoreError::BadRoot { path: root, reason: "contains ':' or ','".into() });
        }
        let client = RegistryClient::new(config.registry.clone())
            .map_err(|e| StoreError::Registry { image: String::new(), source: e })?;
        let r2 = root.clone();
        let (refs, whiteouts) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            for d in ["blobs/sha256", "layers/sha256", "images/sha256", "tmp"] {
                let p = r2.join(d);
                fs::create_dir_all(&p).map_err(StoreError::io("create", &p))?;
            }
            let root = fs::canonicalize(&r2).map_err(StoreError::io("resolve", &r2))?;
            let tmp = root.join("tmp");
            for e in fs::read_dir(&tmp).map_err(StoreError::io("read", &tmp))?.flatten() {
                let p = e.path();
                tracing::info!(path = %p.display(), "removing leftover from an interrupted operation");
                let r = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                r.map_err(StoreError::io("remove", &p))?;
            }
            let refs_path = root.join("repositories.json");
            let refs: BTreeMap<String, Digest> = match fs::read(&refs_path) {
                Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::BadRoot {
                    path: refs_path.clone(),
                    reason: format!("corrupt repositories.json: {e}"),
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
                Err(e) => return Err(StoreError::io("read", &refs_path)(e)),
            };
            Ok((refs, probe_whiteouts(&tmp)))
        })
        .await
        .map_err(|e| StoreError::Io { op: "open", path: root.clone(), source: io::Error::other(e) })??;
        let root = fs::canonicalize(&root).map_err(StoreError::io("resolve", &root))?;
        tracing::debug!(root = %root.display(), ?whiteouts, "image store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                root,
                downloads: tokio::sync::Semaphore::new(config.max_concurrent_downloads.max(1)),
                config,
                client,
                whiteouts,
                locks: KeyedLocks::default(),
                gc: tokio::sync::RwLock::new(()),
                refs: Mutex::new(refs),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// How whiteouts are stored: `Overlay` if this filesystem takes 0/0 devices and trusted
    /// xattrs (needed by the overlay backend), `Keep` otherwise.
    pub fn whiteout_mode(&self) -> WhiteoutMode {
        self.inner.whiteouts
    }

    /// Parses a reference with the store's defaults.
    pub fn parse_reference(&self, s: &str) -> Result<Reference, ReferenceError> {
        Reference::parse_with(s, &self.inner.config.defaults)
    }

    /// The directory holding layer `diff_id`'s files (an overlay lowerdir).
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.layer_dir(diff_id).join("fs")
    }

    fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.inner.root.join("layers").join(diff_id.algorithm().name()).join(diff_id.hex())
    }

    fn image_path(&self, id: &Digest) -> PathBuf {
        self.inner.root.join("images").join(id.algorithm().name()).join(format!("{}.json", id.hex()))
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner.root.join("blobs").join(d.algorithm().name()).join(d.hex())
    }

    /// The record of a stored layer, if it is complete.
    pub fn layer(&self, diff_id: &Digest) -> Option<LayerRecord> {
        let b = fs::read(self.layer_dir(diff_id).join("layer.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Pulls `reference` (from the registry, or the local registry directory if configured)
    /// and returns the stored image.
    pub async fn pull(&self, reference: &Reference, opts: &PullOptions) -> Result<Image, StoreError> {
        let span = tracing::info_span!("pull", image = %reference);
        self.pull_inner(reference, opts).instrument(span).await
    }

    async fn pull_inner(&self, reference: &Reference, opts: &PullOptions) -> Result<Image, StoreError> {
        let name = reference.to_string();
        if opts.policy == PullPolicy::IfNotPresent {
            if let Some(img) = self.inspect_ref(reference) {
                if img.layers.iter().all(|l| self.layer(l).is_some()) {
                    self.touch(&img.id).await;
                    return Ok(img);
                }
            }
        }
        if let Some(dir) = self.inner.config.local_registry.clone() {
            return crate::sources::pull_local_registry(self, &dir, reference).await;
        }
        let _gc = self.inner.gc.read().await;
        let platform = opts.platform.clone().unwrap_or_else(|| self.inner.config.platform.clone());
        let client = &self.inner.client;
        let reg = |source| StoreError::Registry { image: name.clone(), source };
        let resolved = client.resolve(reference, &platform).await.map_err(reg)?;
        let id = resolved.digest.clone();
        let m = &resolved.manifest;
        if let Some(p) = &opts.progress {
            p(&PullEvent::Resolved {
                image: id.clone(),
                layers: m.layers.len(),
                bytes: m.layers.iter().map(|l| l.size).sum(),
            });
        }
        // Serialise pulls of one image: the second finds everything in place.
        let _img_lock = self.inner.locks.lock(&format!("image:{id}")).await;
        if let Some(img) = self.read_image(&id) {
            if img.layers.iter().all(|l| self.layer(l).is_some()) {
                for l in &img.layers {
                    if let Some(p) = &opts.progress {
                        p(&PullEvent::LayerCached { digest: l.clone() });
                    }
                }
                self.set_ref(reference, &id).await?;
                self.touch(&id).await;
                return Ok(self.with_refs(img));
            }
        }
        self.write_blob(&id, &resolved.manifest_bytes).await?;
        let config_bytes = self.fetch_config(reference, &m.config).await?;
        let doc: ImageConfigDoc = serde_json::from_slice(&config_bytes)
            .map_err(|e| StoreError::InvalidImage { image: name.clone(), reason: format!("bad config: {e}") })?;
        let diff_ids = doc.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
        if diff_ids.len() != m.layers.len() {
            return Err(StoreError::InvalidImage {
                image: name.clone(),
                reason: format!("{} layers but {} diff_ids in the config", m.layers.len(), diff_ids.len()),
            });
        }
        for l in &m.layers {
            if Compression::from_layer_media_type(&l.media_type).is_none() {
                return Err(StoreError::UnsupportedMediaType {
                    image: name.clone(),
                    digest: l.digest.clone(),
                    media_type: l.media_type.clone(),
                });
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (desc, diff) in m.layers.iter().zip(diff_ids.iter()) {
            let this = self.clone();
            let (r, desc, diff, progress, name) =
                (reference.clone(), desc.clone(), diff.clone(), opts.progress.clone(), name.clone());
            tasks.spawn(
                async move { this.fetch_layer(&name, &r, &desc, &diff, progress.as_ref()).await }
                    .instrument(tracing::Span::current()),
            );
        }
        let mut first_err = None;
        while let Some(res) = tasks.join_next().await {
            let res = res.unwrap_or_else(|e| {
                Err(StoreError::Io { op: "layer task", path: self.inner.root.clone(), source: io::Error::other(e) })
            });
            if let Err(e) = res {
                if first_err.is_none() {
                    first_err = Some(e);
                    tasks.abort_all();
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let img = self.record_image(id.clone(), ImageKind::Docker, &m.config.digest, &doc, diff_ids, "registry")?;
        self.write_image(&img).await?;
        self.set_ref(reference, &id).await?;
        Ok(self.with_refs(img))
    }

    pub(crate) fn record_image(
        &self,
        id: Digest,
        kind: ImageKind,
        config_digest: &Digest,
        doc: &ImageConfigDoc,
        layers: Vec<Digest>,
        source: &str,
    ) -> Result<Image, StoreError> {
        let size = layers.iter().filter_map(|l| self.layer(l)).map(|l| l.size).sum();
        let t = now();
        Ok(Image {
            id,
            kind,
            config_digest: config_digest.clone(),
            config: ImageConfig::from_doc(doc),
            layers,
            os: if doc.os.is_empty() { "linux".into() } else { doc.os.clone() },
            architecture: doc.architecture.clone(),
            source: source.into(),
            size,
            created: t,
            last_used: t,
            references: Vec::new(),
        })
    }

    async fn fetch_config(&self, r: &Reference, desc: &Descriptor) -> Result<Bytes, StoreError> {
        let _l = self.inner.locks.lock(&format!("blob:{}", desc.digest)).await;
        let path = self.blob_path(&desc.digest);
        if let Ok(b) = fs::read(&path) {
            if b.len() as u64 == desc.size && desc.digest.matches(&b) {
                return Ok(Bytes::from(b));
            }
        }
        let body = self
            .inner
            .client
            .get_blob_bytes(r, desc)
            .await
            .map_err(|source| StoreError::Registry { image: r.to_string(), source })?;
        self.write_blob(&desc.digest, &body).await?;
        Ok(body)
    }

    pub(crate) async fn write_blob(&self, d: &Digest, data: &[u8]) -> Result<(), StoreError> {
        let path = self.blob_path(d);
        if path.exists() {
            return Ok(());
        }
        write_atomic(&self.inner.root.join("tmp"), &path, data)
    }

    async fn fetch_layer(
        &self,
        image: &str,
        r: &Reference,
        desc: &Descriptor,
        diff_id: &Digest,
        progress: Option<&ProgressFn>,
    ) -> Result<LayerRecord, StoreError> {
        let _l = self.inner.locks.lock(&format!("layer:{diff_id}")).await;
        if let Some(rec) = self.layer(diff_id) {
            if let Some(p) = progress {
                p(&PullEvent::LayerCached { digest: desc.digest.clone() });
            }
            return Ok(rec);
        }
        let compression =
            Compression::from_layer_media_type(&desc.media_type).ok_or_else(|| StoreError::UnsupportedMediaType {
                image: image.into(),
                digest: desc.digest.clone(),
                media_type: desc.media_type.clone(),
            })?;
        let _permit = self.inner.downloads.acquire().await.map_err(|_| StoreError::Io {
            op: "acquire download slot",
            path: self.inner.root.clone(),
            source: io::Error::other("store closed"),
        })?;
        let tmp = TempDir::new(&self.inner.root.join("tmp"), "layer")?;
        let fs_dir = tmp.path().join("fs");
        fs::create_dir(&fs_dir).map_err(StoreError::io("create", &fs_dir))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(32);
        let opts = self.unpack_options();
        let algo = desc.digest.algorithm();
        let fs2 = fs_dir.clone();
        let unpacker = tokio::task::spawn_blocking(move || {
            unpack::unpack_blob(SyncReader::new(rx), compression, algo, &fs2, &opts)
        });
        let downloaded = self.download(r, desc, tx, progress).await;
        let unpacked = unpacker.await.map_err(|e| StoreError::Io {
            op: "unpack task",
            path: fs_dir.clone(),
            source: io::Error::other(e),
        })?;
        let layer = desc.digest.to_string();
        if let Err(e) = downloaded {
            return Err(StoreError::Registry { image: image.into(), source: e });
        }
        let (stats, digests) = unpacked.map_err(|e| match e {
            BlobUnpackError::Unpack(source) if source.is_no_space() => {
                StoreError::NoSpace { path: self.inner.root.clone() }
            }
            BlobUnpackError::Unpack(source) => StoreError::Unpack { image: image.into(), layer: layer.clone(), source },
            BlobUnpackError::Decompress(e) => {
                StoreError::Decompress { image: image.into(), layer: layer.clone(), message: e.to_string() }
            }
            BlobUnpackError::Corrupt { blob, error } => match Some(&desc.digest) {
                Some(expected) if *expected != blob.blob => StoreError::DigestMismatch {
                    image: image.into(),
                    what: "layer",
                    expected: expected.clone(),
                    actual: blob.blob,
                },
                _ => StoreError::Decompress { image: image.into(), layer: layer.clone(), message: error.to_string() },
            },
        })?;
        if digests.blob_size != desc.size {
            return Err(StoreError::SizeMismatch {
                image: image.into(),
                what: "layer",
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: digests.blob_size,
            });
        }
        if digests.blob != desc.digest {
            return Err(StoreError::DigestMismatch {
                image: image.into(),
                what: "layer",
                expected: desc.digest.clone(),
                actual: digests.blob,
            });
        }
        if &digests.diff_id != diff_id {
            return Err(StoreError::DigestMismatch {
                image: image.into(),
                what: "layer diff_id",
                expected: diff_id.clone(),
                actual: digests.diff_id,
            });
        }
        let rec = self
            .publish_layer(
                tmp,
                LayerRecord {
                    diff_id: diff_id.clone(),
                    blob_digest: Some(desc.digest.clone()),
                    compression,
                    whiteouts: self.inner.whiteouts,
                    size: 0,
                    stats,
                },
            )
            .await?;
        if let Some(p) = progress {
            p(&PullEvent::LayerDone { digest: desc.digest.clone() });
        }
        Ok(rec)
    }

    pub(crate) fn unpack_options(&self) -> UnpackOptions {
        UnpackOptions { whiteouts: self.inner.whiteouts, ..UnpackOptions::default() }
    }

    /// Writes layer.json into `tmp`, syncs, and renames it into place.
    pub(crate) async fn publish_layer(&self, tmp: TempDir, mut rec: LayerRecord) -> Result<LayerRecord, StoreError> {
        let dest = self.layer_dir(&rec.diff_id);
        let sync = self.inner.config.sync;
        tokio::task::spawn_blocking(move || -> Result<LayerRecord, StoreError> {
            rec.size = unpack::disk_usage(&tmp.path().join("fs"));
            let meta = tmp.path().join("layer.json");
            let json =
                serde_json::to_vec_pretty(&rec).map_err(|e| StoreError::io("encode", &meta)(io::Error::other(e)))?;
            fs::write(&meta, json).map_err(StoreError::io("write", &meta))?;
            if sync {
                let f = fs::File::open(tmp.path()).map_err(StoreError::io("open", tmp.path()))?;
                nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f))
                    .map_err(|e| StoreError::io("syncfs", tmp.path())(io::Error::from(e)))?;
            }
            if dest.exists() {
                // Another process published it meanwhile: ours is redundant.
                return Ok(rec);
            }
            if let Err(e) = fs::rename(tmp.path(), &dest) {
                // Published by someone else between the check and the rename (a layer is
                // content-addressed, so theirs is the same): ours is redundant, and `tmp`
                // is removed when dropped.
                if dest.join("layer.json").exists() {
                    return Ok(rec);
                }
                return Err(StoreError::io("rename", &dest)(e));
            }
            tmp.disarm();
            if let Some(parent) = dest.parent() {
                fsync_dir(parent);
            }
            Ok(rec)
        })
        .await
        .map_err(|e| StoreError::Io {
            op: "publish",
            path: self.inner.root.clone(),
            source: io::Error::other(e),
        })?
    }

    /// Streams a blob into `tx`, resuming with `Range` after transient failures.
    async fn download(
        &self,
        r: &Reference,
        desc: &Descriptor,
        tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
        progress: Option<&ProgressFn>,
    ) -> Result<(), RegistryError> {
        let client = &self.inner.client;
        let attempts = client.config().attempts.max(1);
        let mut done = 0u64;
        let mut attempt = 0;
        loop {
            let res: Result<(), RegistryError> = async {
                let (mut resp, partial) = client.open_blob(r, &desc.digest, done).await?;
                let mut skip = if done > 0 && !partial { done } else { 0 };
                while let Some(mut chunk) = resp.chunk().await? {
                    if skip > 0 {
                        let n = (skip as usize).min(chunk.len());
                        chunk = chunk.slice(n..);
                        skip -= n as u64;
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    if done + chunk.len() as u64 > desc.size {
                        return Err(RegistryError::SizeMismatch {
                            url: resp.url.clone(),
                            what: "blob",
                            digest: desc.digest.clone(),
                            expected: desc.size,
                            actual: done + chunk.len() as u64,
                        });
                    }
                    done += chunk.len() as u64;
                    if let Some(p) = progress {
                        p(&PullEvent::LayerProgress { digest: desc.digest.clone(), done, total: desc.size });
                    }
                    if tx.send(Ok(chunk)).await.is_err() {
                        return Ok(()); // the unpacker stopped; its error is reported
                    }
                }
                if done < desc.size {
                    return Err(RegistryError::Transport {
                        url: resp.url.clone(),
                        message: format!("blob {} truncated at {done} of {} bytes", desc.digest, desc.size),
                    });
                }
                Ok(())
            }
            .await;
            match res {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && attempt + 1 < attempts => {
                    attempt += 1;
                    tracing::info!(digest = %desc.digest, done, error = %e, "layer download interrupted; resuming");
                    tokio::time::sleep(Duration::from_millis(250 << attempt.min(4))).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                    return Err(e);
                }
            }
        }
    }

    pub(crate) fn read_image(&self, id: &Digest) -> Option<Image> {
        let b = fs::read(self.image_path(id)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    pub(crate) async fn write_image(&self, img: &Image) -> Result<(), StoreError> {
        let mut img = img.clone();
        img.references.clear();
        let json = serde_json::to_vec_pretty(&img)
            .map_err(|e| StoreError::io("encode", &self.inner.root)(io::Error::other(e)))?;
        write_atomic(&self.inner.root.join("tmp"), &self.image_path(&img.id), &json)
    }

    pub(crate) async fn set_ref(&self, r: &Reference, id: &Digest) -> Result<(), StoreError> {
        self.set_raw_ref(&r.to_string(), id)
    }

    /// Points `name` (a canonical reference, or `appc:<name>[:<version>]`) at image `id`.
    pub(crate) fn set_raw_ref(&self, name: &str, id: &Digest) -> Result<(), StoreError> {
        let mut refs = self.inner.refs.lock().unwrap_or_else(|p| p.into_inner());
        if refs.get(name) == Some(id) {
            return Ok(());
        }
        refs.insert(name.to_string(), id.clone());
        self.save_refs(&refs)
    }

    fn save_refs(&self, refs: &BTreeMap<String, Digest>) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(refs)
            .map_err(|e| StoreError::io("encode", &self.inner.root)(io::Error::other(e)))?;
        write_atomic(&self.inner.root.join("tmp"), &self.inner.root.join("repositories.json"), &json)
    }

    async fn touch(&self, id: &Digest) {
        if let Some(mut img) = self.read_image(id) {
            img.last_used = now();
            img.references.clear();
            // Atomic but not fsynced: a `last_used` lost in a power failure only makes the
            // gc's LRU order slightly stale, and this is on every launch's path.
            if let Ok(json) = serde_json::to_vec_pretty(&img) {
                let _ = write_replace(&self.inner.root.join("tmp"), &self.image_path(&img.id), &json);
            }
        }
    }

    /// Marks an image as used now (the gc collects the least recently used first).
    pub async fn mark_used(&self, id: &Digest) {
        self.touch(id).await
    }

    fn with_refs(&self, mut img: Image) -> Image {
        let refs = self.inner.refs.lock().unwrap_or_else(|p| p.into_inner());
        img.references = refs.iter().filter(|(_, d)| **d == img.id).map(|(r, _)| r.clone()).collect();
        img
    }

    fn inspect_ref(&self, r: &Reference) -> Option<Image> {
        let id = self.inner.refs.lock().unwrap_or_else(|p| p.into_inner()).get(&r.to_string()).cloned();
        let id = id.or_else(|| r.digest().cloned())?;
        self.read_image(&id).map(|i| self.with_refs(i))
    }

    /// An image by reference (`busybox`, `127.0.0.1:5000/x:y`) or id (`sha256:…`).
    pub fn inspect(&self, name: &str) -> Option<Image> {
        if let Ok(d) = name.parse::<Digest>() {
            return self.read_image(&d).map(|i| self.with_refs(i));
        }
        let raw = self.inner.refs.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        if let Some(id) = raw {
            return self.read_image(&id).map(|i| self.with_refs(i));
        }
        let r = self.parse_reference(name).ok()?;
        self.inspect_ref(&r)
    }

    /// Every complete image, with the references pointing at it.
    pub fn list(&self) -> Vec<Image> {
        let dir = self.inner.root.join("images/sha256");
        let mut out: Vec<Image> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().strip_suffix(".json")?.to_string();
                let d: Digest = format!("sha256:{name}").parse().ok()?;
                self.read_image(&d)
            })
            .map(|i| self.with_refs(i))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Unpacked layers in the store.
    pub fn layers(&self) -> Vec<LayerRecord> {
        let dir = self.inner.root.join("layers/sha256");
        fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>().ok())
            .filter_map(|d| self.layer(&d))
            .collect()
    }

    /// Removes a reference; the image record goes too when no reference is left. Layers stay
    /// until [`Store::prune`] or [`Store::gc`]. Returns whether anything was removed.
    pub async fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let _gc = self.inner.gc.write().await;
        let id = if let Ok(d) = name.parse::<Digest>() {
            let mut refs = self.inner.refs.lock().unwrap_or_else(|p| p.into_inner());
            refs.retain(|_, v| *v != d);
            self.save_refs(&refs)?;
            d
        } else {
            let key =
                if name.starts_with("appc:") { name.to_string() } else { self.parse_reference(name)?.to_string() };
            let mut refs = self.inner.refs.lock().unwrap_or_else(|p| p.into_inner());
            let Some(id) = refs.remove(&key) else {
                return Ok(false);
            };
            self.save_refs(&refs)?;
            if refs.values().any(|v| *v == id) {
                return Ok(true);
            }
            id
        };
        let p = self.image_path(&id);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("remove", &p)(e)),
        }
    }

    /// Removes every image not named in `keep` (references or ids: the images of running
    /// and provisioned containers, see `Provisioner::images_in_use`) and every layer no
    /// remaining image uses.
    pub async fn prune(&self, keep: &[String]) -> Result<PruneReport, StoreError> {
        let _gc = self.inner.gc.write().await;
        let keep_ids = self.resolve_keep(keep);
        let mut report = PruneReport::default();
        for img in self.list() {
            if !keep_ids.contains(&img.id) {
                self.drop_image(&img)?;
                report.images_removed.push(img.id);
            }
        }
        self.collect_layers(&mut report)?;
        Ok(report)
    }

    /// Threshold-based collection: while the store is over `max_store_bytes` or its
    /// filesystem has less than `disk_headroom` free, removes the least recently used image
    /// not in `keep` or `policy.excluded`, then its unshared layers.
    pub async fn gc(&self, keep: &[String], policy: &GcPolicy) -> Result<PruneReport, StoreError> {
        let _gc = self.inner.gc.write().await;
        let mut keep_all: Vec<String> = keep.to_vec();
        keep_all.extend(policy.excluded.iter().cloned());
        let keep_ids = self.resolve_keep(&keep_all);
        let mut report = PruneReport::default();
        let mut candidates: Vec<Image> = self.list().into_iter().filter(|i| !keep_ids.contains(&i.id)).collect();
        candidates.sort_by_key(|i| i.last_used);
        let over = |s: &Store| -> bool {
            let used: u64 = s.layers().iter().map(|l| l.size).sum();
            if policy.max_store_bytes.is_some_and(|m| used > m) {
                return true;
            }
            if let Some(h) = policy.disk_headroom {
                if let Ok(st) = nix::sys::statvfs::statvfs(&s.inner.root) {
                    let total = st.blocks() as f64;
                    let free = st.blocks_available() as f64;
                    return total > 0.0 && free / total < h;
                }
            }
            false
        };
        for img in candidates {
            if !over(self) {
                break;
            }
            self.drop_image(&img)?;
            report.images_removed.push(img.id.clone());
            self.collect_layers(&mut report)?;
        }
        Ok(report)
    }

    fn resolve_keep(&self, keep: &[String]) -> BTreeSet<Digest> {
        keep.iter().filter_map(|k| self.inspect(k).map(|i| i.id)).collect()
    }

    fn drop_image(&self, img: &Image) -> Result<(), StoreError> {
        let mut refs = self.inner.refs.lock().unwrap_or_else(|p| p.into_inner());
        refs.retain(|_, v| *v != img.id);
        self.save_refs(&refs)?;
        let p = self.image_path(&img.id);
        fs::remove_file(&p)
            .or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
            .map_err(StoreError::io("remove", &p))
    }

    fn collect_layers(&self, report: &mut PruneReport) -> Result<(), StoreError> {
        let images = self.list();
        let used: BTreeSet<&Digest> = images.iter().flat_map(|i| i.layers.iter()).collect();
        let used_blobs: BTreeSet<Digest> =
            images.iter().flat_map(|i| [i.id.clone(), i.config_digest.clone()]).collect();
        for l in self.layers() {
            if used.contains(&l.diff_id) {
                continue;
            }
            let dir = self.layer_dir(&l.diff_id);
            // Rename first so a crash cannot leave a half-deleted layer that looks complete.
            let tmp = TempDir::reserve(&self.inner.root.join("tmp"), "gc")?;
            fs::rename(&dir, tmp.path()).map_err(StoreError::io("rename", &dir))?;
            drop(tmp);
            report.layers_removed.push(l.diff_id.clone());
            report.bytes_freed += l.size;
        }
        let blobs = self.inner.root.join("blobs/sha256");
        for e in fs::read_dir(&blobs).into_iter().flatten().flatten() {
            let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>() else { continue };
            if !used_blobs.contains(&d) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }
}

/// Whether 0/0 character devices and trusted xattrs can be made under `dir`.
fn probe_whiteouts(dir: &Path) -> WhiteoutMode {
    let p = dir.join(format!("probe-{}", std::process::id()));
    let ok = fs::create_dir(&p).is_ok()
        && nix::sys::stat::mknod(
            &p.join("wh"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            nix::sys::stat::makedev(0, 0),
        )
        .is_ok()
        && xattr::set(&p, unpack::OVERLAY_OPAQUE_XATTR, b"y").is_ok();
    let _ = fs::remove_dir_all(&p);
    if ok {
        WhiteoutMode::Overlay
    } else {
        WhiteoutMode::Keep
    }
}

/// Writes `data` to `dest` atomically: temp file in `tmp_dir`, fsync, rename, fsync dir.
pub(crate) fn write_atomic(tmp_dir: &Path, dest: &Path, data: &[u8]) -> Result<(), StoreError> {
    let tmp = tmp_dir.join(format!("w-{}", unique()));
    let res = (|| {
        let mut f = fs::File::create(&tmp).map_err(StoreError::io("create", &tmp))?;
        f.write_all(data).map_err(StoreError::io("write", &tmp))?;
        f.sync_all().map_err(StoreError::io("fsync", &tmp))?;
        fs::rename(&tmp, dest).map_err(StoreError::io("rename", dest))?;
        if let Some(p) = dest.parent() {
            fsync_dir(p);
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Like [`write_atomic`] (a reader sees the old or the new content) without the fsyncs: for
/// records whose loss in a power failure is harmless.
pub(crate) fn write_replace(tmp_dir: &Path, dest: &Path, data: &[u8]) -> Result<(), StoreError> {
    let tmp = tmp_dir.join(format!("w-{}", unique()));
    let res = (|| {
        fs::write(&tmp, data).map_err(StoreError::io("write", &tmp))?;
        fs::rename(&tmp, dest).map_err(StoreError::io("rename", dest))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn fsync_dir(p: &Path) {
    if let Ok(f) = fs::File::open(p) {
        let _ = f.sync_all();
    }
}

pub(crate) fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{}-{}", std::process::id(), t, N.fetch_add(1, Ordering::Relaxed))
}

/// A directory under `tmp/` removed on drop unless published.
pub(crate) struct TempDir {
    path: PathBuf,
    armed: bool,
}

impl TempDir {
    pub(crate) fn new(tmp_root: &Path, prefix: &str) -> Result<TempDir, StoreError> {
        let t = TempDir::reserve(tmp_root, prefix)?;
        fs::create_dir(&t.path).map_err(StoreError::io("create", &t.path))?;
        Ok(t)
    }
    /// A name only (for renaming something into).
    pub(crate) fn reserve(tmp_root: &Path, prefix: &str) -> Result<TempDir, StoreError> {
        Ok(TempDir { path: tmp_root.join(format!("{prefix}-{}", unique())), armed: true })
    }
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Blocking `Read` over an async channel of chunks (for the unpacking thread).
pub(crate) struct SyncReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl SyncReader {
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>) -> Self {
        SyncReader { rx, cur: Bytes::new() }
    }
}

impl Read for SyncReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Sha256 over a byte slice, as a [`Digest`] (helper for sources).
pub(crate) fn sha256(data: &[u8]) -> Digest {
    let mut h = crate::digest::Hasher::new(Algorithm::Sha256);
    h.update(data);
    h.finish()
}
