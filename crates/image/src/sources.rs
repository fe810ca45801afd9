//! Images from local files: `docker save` tarballs (current and legacy format), Mesos's
//! local registry directory of such tarballs, OCI image layouts, and appc ACIs.
//!
//! Local registry naming (Mesos `--docker_registry=/dir`, `ImageTarPuller`): an image is
//! the tarball `<dir>/<repo>:<tag>.tar`, where `<repo>` is the repository as written by
//! the user (`busybox`, or `library/busybox`, or `ns/name`, which is a subdirectory).
//! We look for, in order: `<familiar repo>:<tag>.tar`, `<full repo>:<tag>.tar`, and for tag
//! `latest` also `<familiar repo>.tar`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::Instrument;

use crate::digest::{Algorithm, Digest};
use crate::reference::{Reference, DOCKER_HUB};
use crate::spec::{self, Compression, Descriptor, ImageConfigDoc, ManifestKind, Platform, RootFs};
use crate::store::{sha256, Image, ImageKind, LayerRecord, Store, StoreError, TempDir};
use crate::unpack::{self, BlobUnpackError, UnpackOptions};

/// Where a layer's bytes are.
#[derive(Clone)]
struct FileSlice {
    path: PathBuf,
    offset: u64,
    len: u64,
}

impl FileSlice {
    fn open(&self) -> io::Result<io::Take<File>> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        Ok(f.take(self.len))
    }
    fn read_all(&self, limit: u64) -> io::Result<Vec<u8>> {
        if self.len > limit {
            return Err(io::Error::other(format!("{} bytes is too large", self.len)));
        }
        let mut v = Vec::with_capacity(self.len as usize);
        self.open()?.read_to_end(&mut v)?;
        Ok(v)
    }
    fn sniff(&self) -> io::Result<Compression> {
        let mut head = [0u8; 4];
        let mut r = self.open()?;
        let mut n = 0;
        while n < 4 {
            let k = r.read(&mut head[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        Ok(Compression::sniff(&head[..n]))
    }
}

/// Indexes the members of a tarball (path → data slice) without reading their data.
fn index_tar(path: &Path) -> io::Result<HashMap<String, FileSlice>> {
    let f = File::open(path)?;
    let mut a = tar::Archive::new(io::BufReader::new(f));
    let mut out = HashMap::new();
    for e in a.entries()? {
        let e = e?;
        if !matches!(e.header().entry_type(), tar::EntryType::Regular | tar::EntryType::Continuous) {
            continue;
        }
        let name = String::from_utf8_lossy(&e.path_bytes()).trim_start_matches("./").to_string();
        out.insert(name, FileSlice { path: path.to_path_buf(), offset: e.raw_file_position(), len: e.size() });
    }
    Ok(out)
}

struct LocalLayer {
    slice: FileSlice,
    compression: Option<Compression>,
    /// Expected blob digest (OCI layout) — verified.
    blob: Option<Descriptor>,
    /// Expected uncompressed digest — verified; computed when unknown.
    diff_id: Option<Digest>,
}

/// Unpacks one local layer into the store (once per diff_id).
async fn import_layer(
    store: &Store,
    image: &str,
    layer: LocalLayer,
    opts: UnpackOptions,
) -> Result<LayerRecord, StoreError> {
    if let Some(d) = &layer.diff_id {
        if let Some(rec) = store.layer(d) {
            return Ok(rec);
        }
    }
    let tmp = TempDir::new(&store.root().join("tmp"), "layer")?;
    let fs_dir = tmp.path().join("fs");
    std::fs::create_dir(&fs_dir).map_err(StoreError::io("create", &fs_dir))?;
    let slice = layer.slice.clone();
    let compression = match layer.compression {
        Some(c) => c,
        None => slice.sniff().map_err(StoreError::io("read", &slice.path))?,
    };
    let algo = layer.blob.as_ref().map_or(Algorithm::Sha256, |d| d.digest.algorithm());
    let fs2 = fs_dir.clone();
    let src = slice.path.clone();
    let res = tokio::task::spawn_blocking(move || {
        let r = slice.open().map_err(BlobUnpackError::Decompress)?;
        unpack::unpack_blob(r, compression, algo, &fs2, &opts)
    })
    .await
    .map_err(|e| StoreError::Io { op: "unpack task", path: src.clone(), source: io::Error::other(e) })?;
    let name =
        layer.blob.as_ref().map(|b| b.digest.to_string()).unwrap_or_else(|| layer.slice.path.display().to_string());
    let (stats, digests) = res.map_err(|e| match e {
        BlobUnpackError::Unpack(source) if source.is_no_space() => StoreError::NoSpace { path: store.root().into() },
        BlobUnpackError::Unpack(source) => StoreError::Unpack { image: image.into(), layer: name.clone(), source },
        BlobUnpackError::Decompress(e) => {
            StoreError::Decompress { image: image.into(), layer: name.clone(), message: e.to_string() }
        }
        BlobUnpackError::Corrupt { blob, error } => match layer.blob.as_ref().map(|b| &b.digest) {
            Some(expected) if *expected != blob.blob => StoreError::DigestMismatch {
                image: image.into(),
                what: "layer",
                expected: expected.clone(),
                actual: blob.blob,
            },
            _ => StoreError::Decompress { image: image.into(), layer: name.clone(), message: error.to_string() },
        },
    })?;
    if let Some(b) = &layer.blob {
        if digests.blob_size != b.size {
            return Err(StoreError::SizeMismatch {
                image: image.into(),
                what: "layer",
                digest: b.digest.clone(),
                expected: b.size,
                actual: digests.blob_size,
            });
        }
        if digests.blob != b.digest {
            return Err(StoreError::DigestMismatch {
                image: image.into(),
                what: "layer",
                expected: b.digest.clone(),
                actual: digests.blob,
            });
        }
    }
    if let Some(d) = &layer.diff_id {
        if *d != digests.diff_id {
            return Err(StoreError::DigestMismatch {
                image: image.into(),
                what: "layer diff_id",
                expected: d.clone(),
                actual: digests.diff_id,
            });
        }
    }
    // One publisher per layer at a time (as a registry pull's `fetch_layer`): two pulls of
    // the same archive unpack it twice, and the second finds the first's layer here.
    let _l = store.inner.locks.lock(&format!("layer:{}", digests.diff_id)).await;
    if let Some(rec) = store.layer(&digests.diff_id) {
        return Ok(rec);
    }
    store
        .publish_layer(
            tmp,
            LayerRecord {
                diff_id: digests.diff_id,
                blob_digest: Some(digests.blob),
                compression,
                whiteouts: store.whiteout_mode(),
                size: 0,
                stats,
            },
        )
        .await
}

fn invalid(image: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidImage { image: image.into(), reason: reason.into() }
}

/// A manifest for images that came without one, so every image has a manifest digest.
fn synth_manifest(config: &[u8], layers: &[(Digest, u64)]) -> Vec<u8> {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": spec::OCI_MANIFEST,
        "config": {"mediaType": spec::OCI_CONFIG, "digest": sha256(config).to_string(), "size": config.len()},
        "layers": layers.iter().map(|(d, s)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": s
        })).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&m).unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
async fn finish_image(
    store: &Store,
    id: Digest,
    kind: ImageKind,
    manifest: &[u8],
    config: &[u8],
    doc: &ImageConfigDoc,
    layers: Vec<Digest>,
    source: &str,
    refs: &[Reference],
) -> Result<Image, StoreError> {
    store.write_blob(&id, manifest).await?;
    let config_digest = sha256(config);
    store.write_blob(&config_digest, config).await?;
    let img = store.record_image(id.clone(), kind, &config_digest, doc, layers, source)?;
    store.write_image(&img).await?;
    for r in refs {
        store.set_ref(r, &id).await?;
    }
    Ok(store.inspect(&id.to_string()).unwrap_or(img))
}

impl Store {
    /// Imports every image of a `docker save` tarball (with `manifest.json`, or the legacy
    /// `repositories` + `<id>/json` + `<id>/layer.tar` format). Each image is registered under
    /// its `RepoTags`, and under `name` too when given.
    pub async fn import_docker_archive(&self, path: &Path, name: Option<&Reference>) -> Result<Vec<Image>, StoreError> {
        let span = tracing::info_span!("import", image = %path.display());
        let _gc = self.inner.gc.read().await;
        self.import_docker_archive_inner(path, name).instrument(span).await
    }

    async fn import_docker_archive_inner(
        &self,
        path: &Path,
        name: Option<&Reference>,
    ) -> Result<Vec<Image>, StoreError> {
        let shown = path.display().to_string();
        let p = path.to_path_buf();
        let index = tokio::task::spawn_blocking(move || index_tar(&p))
            .await
            .map_err(|e| StoreError::Io { op: "read", path: path.into(), source: io::Error::other(e) })?
            .map_err(|e| invalid(&shown, format!("not a tar archive: {e}")))?;
        let read = |n: &str| -> Result<Vec<u8>, StoreError> {
            let s = index.get(n).ok_or_else(|| invalid(&shown, format!("{n} missing")))?;
            s.read_all(spec_limit()).map_err(StoreError::io("read", path))
        };
        let mut out = Vec::new();
        if index.contains_key("manifest.json") {
            #[derive(Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Item {
                config: String,
                #[serde(default)]
                repo_tags: Option<Vec<String>>,
                layers: Vec<String>,
            }
            let items: Vec<Item> = serde_json::from_slice(&read("manifest.json")?)
                .map_err(|e| invalid(&shown, format!("bad manifest.json: {e}")))?;
            if items.is_empty() {
                return Err(invalid(&shown, "manifest.json lists no image"));
            }
            for (i, item) in items.iter().enumerate() {
                let config = read(&item.config)?;
                // Config files are named after their digest (`<hex>.json` or `blobs/sha256/<hex>`).
                let base = item.config.rsplit('/').next().unwrap_or(&item.config).trim_end_matches(".json");
                if base.len() == 64 && base.bytes().all(|b| b.is_ascii_hexdigit()) && sha256(&config).hex() != base {
                    return Err(StoreError::DigestMismatch {
                        image: shown.clone(),
                        what: "config",
                        expected: format!("sha256:{base}").parse().map_err(|_| invalid(&shown, "bad config name"))?,
                        actual: sha256(&config),
                    });
                }
                let doc: ImageConfigDoc =
                    serde_json::from_slice(&config).map_err(|e| invalid(&shown, format!("bad config: {e}")))?;
                let diff_ids = doc.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
                if diff_ids.len() != item.layers.len() {
                    return Err(invalid(&shown, "layer count differs from the config's diff_ids"));
                }
                let mut layers = Vec::new();
                let mut sizes = Vec::new();
                for (lp, diff) in item.layers.iter().zip(diff_ids.iter()) {
                    let slice = index.get(lp.as_str()).ok_or_else(|| invalid(&shown, format!("layer {lp} missing")))?;
                    sizes.push((diff.clone(), slice.len));
                    let l =
                        LocalLayer { slice: slice.clone(), compression: None, blob: None, diff_id: Some(diff.clone()) };
                    layers.push(import_layer(self, &shown, l, self.unpack_options()).await?.diff_id);
                }
                let mut refs = Vec::new();
                for t in item.repo_tags.iter().flatten() {
                    refs.push(self.parse_reference(t)?);
                }
                if i == 0 {
                    refs.extend(name.cloned());
                }
                let manifest = synth_manifest(&config, &sizes);
                let id = sha256(&manifest);
                out.push(
                    finish_image(
                        self,
                        id,
                        ImageKind::Docker,
                        &manifest,
                        &config,
                        &doc,
                        layers,
                        "docker-archive",
                        &refs,
                    )
                    .await?,
                );
            }
            return Ok(out);
        }
        // Legacy format: repositories {"name": {"tag": "<top layer id>"}}, parent chain in <id>/json.
        let repos: HashMap<String, HashMap<String, String>> = serde_json::from_slice(&read("repositories")?)
            .map_err(|e| invalid(&shown, format!("bad repositories file: {e}")))?;
        let mut by_top: HashMap<String, Vec<Reference>> = HashMap::new();
        for (repo, tags) in &repos {
            for (tag, id) in tags {
                by_top.entry(id.clone()).or_default().push(self.parse_reference(&format!("{repo}:{tag}"))?);
            }
        }
        let mut tops: Vec<_> = by_top.into_iter().collect();
        tops.sort_by(|a, b| a.0.cmp(&b.0));
        for (i, (top, mut refs)) in tops.into_iter().enumerate() {
            let mut chain = Vec::new();
            let mut cur = Some(top.clone());
            let mut top_json = None;
            while let Some(id) = cur {
                if chain.len() > 1000 || chain.contains(&id) {
                    return Err(invalid(&shown, "cyclic or too long layer chain"));
                }
                let j: serde_json::Value = serde_json::from_slice(&read(&format!("{id}/json"))?)
                    .map_err(|e| invalid(&shown, format!("bad {id}/json: {e}")))?;
                if top_json.is_none() {
                    top_json = Some(j.clone());
                }
                cur = j.get("parent").and_then(|p| p.as_str()).map(str::to_string);
                chain.push(id);
            }
            chain.reverse();
            let mut layers = Vec::new();
            let mut sizes = Vec::new();
            for id in &chain {
                let slice = index
                    .get(&format!("{id}/layer.tar"))
                    .ok_or_else(|| invalid(&shown, format!("{id}/layer.tar missing")))?;
                let l = LocalLayer { slice: slice.clone(), compression: None, blob: None, diff_id: None };
                let rec = import_layer(self, &shown, l, self.unpack_options()).await?;
                sizes.push((rec.diff_id.clone(), slice.len));
                layers.push(rec.diff_id);
            }
            let mut doc: ImageConfigDoc = serde_json::from_value(top_json.unwrap_or_default())
                .map_err(|e| invalid(&shown, format!("bad image json: {e}")))?;
            doc.rootfs = Some(RootFs { kind: "layers".into(), diff_ids: layers.clone() });
            let config = serde_json::to_vec(&doc).map_err(|e| invalid(&shown, e.to_string()))?;
            if i == 0 {
                refs.extend(name.cloned());
            }
            let manifest = synth_manifest(&config, &sizes);
            let id = sha256(&manifest);
            out.push(
                finish_image(self, id, ImageKind::Docker, &manifest, &config, &doc, layers, "docker-archive", &refs)
                    .await?,
            );
        }
        if out.is_empty() {
            return Err(invalid(&shown, "no image in the archive"));
        }
        Ok(out)
    }

    /// Imports the image tagged `tag` (annotation `org.opencontainers.image.ref.name`;
    /// `None` = the only one) from an OCI image layout directory, picking the store's
    /// platform from an index, and registers it as `name`.
    pub async fn import_oci_layout(
        &self,
        dir: &Path,
        tag: Option<&str>,
        name: &Reference,
    ) -> Result<Image, StoreError> {
        let shown = format!("{}:{}", dir.display(), tag.unwrap_or(""));
        let blob = |d: &Digest| dir.join("blobs").join(d.algorithm().name()).join(d.hex());
        let read_verified = |desc: &Descriptor| -> Result<Vec<u8>, StoreError> {
            let p = blob(&desc.digest);
            let b = std::fs::read(&p).map_err(StoreError::io("read", &p))?;
            if b.len() as u64 != desc.size {
                return Err(StoreError::SizeMismatch {
                    image: shown.clone(),
                    what: "blob",
                    digest: desc.digest.clone(),
                    expected: desc.size,
                    actual: b.len() as u64,
                });
            }
            if !desc.digest.matches(&b) {
                return Err(StoreError::DigestMismatch {
                    image: shown.clone(),
                    what: "blob",
                    expected: desc.digest.clone(),
                    actual: sha256(&b),
                });
            }
            Ok(b)
        };
        let ip = dir.join("index.json");
        let index: spec::Index = serde_json::from_slice(&std::fs::read(&ip).map_err(StoreError::io("read", &ip))?)
            .map_err(|e| invalid(&shown, format!("bad index.json: {e}")))?;
        let entry = match tag {
            Some(t) => index
                .manifests
                .iter()
                .find(|d| d.annotations.get("org.opencontainers.image.ref.name").map(String::as_str) == Some(t)),
            None if index.manifests.len() == 1 => index.manifests.first(),
            None => None,
        }
        .ok_or_else(|| invalid(&shown, "no such tag in index.json"))?
        .clone();
        let mut desc = entry;
        let mut depth = 0;
        let (manifest_bytes, manifest) = loop {
            depth += 1;
            if depth > 3 {
                return Err(invalid(&shown, "nested indexes"));
            }
            let b = read_verified(&desc)?;
            let mt = if desc.media_type.is_empty() { None } else { Some(desc.media_type.as_str()) };
            match spec::parse_manifest(mt, &b).map_err(|e| invalid(&shown, e))? {
                ManifestKind::Image(m) => break (b, m),
                ManifestKind::Index(idx) => {
                    let platform = &self.config().platform;
                    desc = spec::select_platform(&idx, platform)
                        .ok_or_else(|| invalid(&shown, format!("no manifest for {platform}")))?
                        .clone();
                }
            }
        };
        let config = read_verified(&manifest.config)?;
        let doc: ImageConfigDoc =
            serde_json::from_slice(&config).map_err(|e| invalid(&shown, format!("bad config: {e}")))?;
        let diff_ids = doc.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
        if diff_ids.len() != manifest.layers.len() {
            return Err(invalid(&shown, "layer count differs from the config's diff_ids"));
        }
        let mut layers = Vec::new();
        for (l, diff) in manifest.layers.iter().zip(diff_ids.iter()) {
            let compression =
                Compression::from_layer_media_type(&l.media_type).ok_or_else(|| StoreError::UnsupportedMediaType {
                    image: shown.clone(),
                    digest: l.digest.clone(),
                    media_type: l.media_type.clone(),
                })?;
            let p = blob(&l.digest);
            let len = std::fs::metadata(&p).map_err(StoreError::io("stat", &p))?.len();
            let ll = LocalLayer {
                slice: FileSlice { path: p, offset: 0, len },
                compression: Some(compression),
                blob: Some(l.clone()),
                diff_id: Some(diff.clone()),
            };
            layers.push(import_layer(self, &shown, ll, self.unpack_options()).await?.diff_id);
        }
        let id = desc.digest.clone();
        self.write_blob(&id, &manifest_bytes).await?;
        finish_image(
            self,
            id,
            ImageKind::Docker,
            &manifest_bytes,
            &config,
            &doc,
            layers,
            "oci-layout",
            std::slice::from_ref(name),
        )
        .await
    }

    /// Imports an appc ACI (a tar, optionally gzip/zstd-compressed, holding `manifest` and
    /// `rootfs/`) as a one-layer image, registered as `appc:<name>` (+`:<version>` label).
    pub async fn import_aci(&self, path: &Path) -> Result<Image, StoreError> {
        let span = tracing::info_span!("import", image = %path.display());
        let _gc = self.inner.gc.read().await;
        self.import_aci_inner(path).instrument(span).await
    }

    async fn import_aci_inner(&self, path: &Path) -> Result<Image, StoreError> {
        let shown = path.display().to_string();
        let len = std::fs::metadata(path).map_err(StoreError::io("stat", path))?.len();
        let slice = FileSlice { path: path.to_path_buf(), offset: 0, len };
        let compression = slice.sniff().map_err(StoreError::io("read", path))?;
        let s2 = slice.clone();
        let manifest = tokio::task::spawn_blocking(move || -> io::Result<Option<Vec<u8>>> {
            let r = s2.open()?;
            let r: Box<dyn Read> = match compression {
                Compression::None => Box::new(r),
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
                Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
            };
            let mut a = tar::Archive::new(r);
            for e in a.entries()? {
                let mut e = e?;
                if e.path_bytes().as_ref() == b"manifest" || e.path_bytes().as_ref() == b"./manifest" {
                    let mut v = Vec::new();
                    (&mut e).take(spec_limit()).read_to_end(&mut v)?;
                    return Ok(Some(v));
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| StoreError::Io { op: "read", path: path.into(), source: io::Error::other(e) })?
        .map_err(|e| invalid(&shown, format!("not an ACI: {e}")))?
        .ok_or_else(|| invalid(&shown, "no manifest in the ACI"))?;
        let aci: AciManifest =
            serde_json::from_slice(&manifest).map_err(|e| invalid(&shown, format!("bad ACI manifest: {e}")))?;
        if aci.ac_kind != "ImageManifest" {
            return Err(invalid(&shown, format!("acKind is {:?}, not ImageManifest", aci.ac_kind)));
        }
        let opts =
            UnpackOptions { strip_prefix: Some("rootfs".into()), whiteouts_enabled: false, ..self.unpack_options() };
        let rec = import_layer(
            self,
            &shown,
            LocalLayer { slice, compression: Some(compression), blob: None, diff_id: None },
            opts,
        )
        .await?;
        let label = |k: &str| aci.labels.iter().find(|l| l.name == k).map(|l| l.value.clone());
        let app = aci.app.unwrap_or_default();
        let mut cfg = spec::RuntimeConfig {
            entrypoint: if app.exec.is_empty() { None } else { Some(app.exec.clone()) },
            env: Some(app.environment.iter().map(|e| format!("{}={}", e.name, e.value)).collect()),
            working_dir: app.working_directory.clone(),
            user: match (&app.user, &app.group) {
                (Some(u), Some(g)) => Some(format!("{u}:{g}")),
                (Some(u), None) => Some(u.clone()),
                _ => None,
            },
            exposed_ports: Some(
                app.ports.iter().map(|p| (format!("{}/{}", p.port, p.protocol), serde_json::json!({}))).collect(),
            ),
            ..Default::default()
        };
        cfg.labels = Some(aci.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect());
        let doc = ImageConfigDoc {
            architecture: label("arch").unwrap_or_else(|| Platform::host().architecture),
            os: label("os").unwrap_or_else(|| "linux".into()),
            config: Some(cfg),
            rootfs: Some(RootFs { kind: "layers".into(), diff_ids: vec![rec.diff_id.clone()] }),
            ..Default::default()
        };
        let config = serde_json::to_vec(&doc).map_err(|e| invalid(&shown, e.to_string()))?;
        let manifest_doc = synth_manifest(&config, &[(rec.diff_id.clone(), len)]);
        let id = sha256(&manifest_doc);
        let img = finish_image(
            self,
            id.clone(),
            ImageKind::Appc,
            &manifest_doc,
            &config,
            &doc,
            vec![rec.diff_id],
            "appc",
            &[],
        )
        .await?;
        let key = match label("version") {
            Some(v) => format!("appc:{}:{v}", aci.name),
            None => format!("appc:{}", aci.name),
        };
        self.set_raw_ref(&key, &id)?;
        Ok(self.inspect(&id.to_string()).unwrap_or(img))
    }
}

fn spec_limit() -> u64 {
    crate::registry::MAX_DOCUMENT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AciManifest {
    ac_kind: String,
    name: String,
    #[serde(default)]
    labels: Vec<AciLabel>,
    #[serde(default)]
    app: Option<AciApp>,
}

#[derive(Deserialize)]
struct AciLabel {
    name: String,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AciApp {
    #[serde(default)]
    exec: Vec<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    environment: Vec<AciLabel>,
    #[serde(default)]
    working_directory: Option<String>,
    #[serde(default)]
    ports: Vec<AciPort>,
}

#[derive(Deserialize)]
struct AciPort {
    port: u16,
    #[serde(default = "tcp")]
    protocol: String,
}

fn tcp() -> String {
    "tcp".into()
}

/// Candidate tarball paths for `r` in a Mesos-style local registry directory.
pub fn local_registry_candidates(dir: &Path, r: &Reference) -> Vec<PathBuf> {
    let full = r.repository().to_string();
    let familiar = if r.registry() == DOCKER_HUB {
        full.strip_prefix("library/").unwrap_or(&full).to_string()
    } else {
        full.clone()
    };
    let tag = r.tag().unwrap_or("latest");
    let mut v = vec![dir.join(format!("{familiar}:{tag}.tar")), dir.join(format!("{full}:{tag}.tar"))];
    if tag == "latest" {
        v.push(dir.join(format!("{familiar}.tar")));
    }
    v.dedup();
    v
}

pub(crate) async fn pull_local_registry(store: &Store, dir: &Path, r: &Reference) -> Result<Image, StoreError> {
    let Some(path) = local_registry_candidates(dir, r).into_iter().find(|p| p.is_file()) else {
        return Err(StoreError::NotFound { image: format!("{r} (no tarball in local registry {})", dir.display()) });
    };
    let images = store.import_docker_archive(&path, Some(r)).await?;
    let _gc = store.inner.gc.read().await;
    let wanted = r.to_string();
    let img = images
        .iter()
        .find(|i| i.references.contains(&wanted))
        .or(images.first())
        .cloned()
        .ok_or_else(|| StoreError::NotFound { image: wanted.clone() })?;
    store.set_ref(r, &img.id).await?;
    let mut img = img;
    img.source = "local-registry".into();
    Ok(img)
}
