//! Container images on the agent: the image store (`--docker-store-dir`) and the rootfs
//! provisioner (`--image-provisioner-backend`) of `agora-image`, and what the agent asks of
//! them: pull and provision before a launch (off the actor), destroy at cleanup, remove
//! orphans at recovery, garbage-collect by the `--image-gc-*` thresholds.
use crate::{AgentConfig, AgentError};
use agora_image::{
    Backend, DockerConfig, GcPolicy, Image, ImageKind, PullEvent, PullOptions, PullPolicy, Store, StoreConfig,
};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The image a task asks for (`ContainerInfo.mesos.image`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRequest {
    pub kind: ImageKind,
    /// Docker reference, or appc name.
    pub name: String,
    /// `Image.cached` (default true): a stored image for the name is used without asking
    /// the registry.
    pub cached: bool,
    /// appc labels (`version`, `os`, `arch`).
    pub labels: Vec<(String, String)>,
}

impl ImageRequest {
    /// Reads `ContainerInfo` JSON: `None` without an image, `Err` for a malformed one.
    pub fn from_container_info(ci: &serde_json::Value) -> Result<Option<ImageRequest>, String> {
        let kind = ci.get("type").and_then(|t| t.as_str()).unwrap_or("MESOS");
        let Some(image) = ci.get("mesos").and_then(|m| m.get("image")) else { return Ok(None) };
        if kind != "MESOS" {
            return Err(format!("ContainerInfo.mesos.image needs type MESOS, not {kind}"));
        }
        Self::from_image(image).map(Some)
    }

    /// Reads an `Image` message (`{type, docker{name} | appc{name, labels}, cached}`).
    pub fn from_image(image: &serde_json::Value) -> Result<ImageRequest, String> {
        let cached = image.get("cached").and_then(|c| c.as_bool()).unwrap_or(true);
        match image.get("type").and_then(|t| t.as_str()) {
            Some("DOCKER") => {
                let name = image
                    .get("docker")
                    .and_then(|d| d.get("name"))
                    .and_then(|n| n.as_str())
                    .filter(|n| !n.trim().is_empty())
                    .ok_or("a DOCKER image needs 'docker.name'")?;
                Ok(ImageRequest { kind: ImageKind::Docker, name: name.trim().to_string(), cached, labels: vec![] })
            }
            Some("APPC") => {
                let appc = image.get("appc").ok_or("an APPC image needs 'appc'")?;
                let name = appc
                    .get("name")
                    .and_then(|n| n.as_str())
                    .filter(|n| !n.trim().is_empty())
                    .ok_or("an APPC image needs 'appc.name'")?;
                let labels = appc
                    .get("labels")
                    .and_then(|l| l.get("labels"))
                    .and_then(|l| l.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|l| {
                                Some((l.get("key")?.as_str()?.to_string(), l.get("value")?.as_str()?.to_string()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(ImageRequest { kind: ImageKind::Appc, name: name.trim().to_string(), cached, labels })
            }
            Some(other) => Err(format!("unknown image type '{other}' (want DOCKER or APPC)")),
            None => Err("the image needs a 'type' (DOCKER or APPC)".into()),
        }
    }

    /// How the image is shown in messages.
    pub fn display(&self) -> String {
        match self.kind {
            ImageKind::Docker => self.name.clone(),
            ImageKind::Appc => format!("appc:{}", self.name),
        }
    }
}

/// Pull progress, summed over layers, for the agent log and TASK_STARTING messages.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub layers: usize,
    pub bytes: u64,
    pub layers_done: usize,
    done: HashMap<String, u64>,
}

impl Progress {
    pub fn apply(&mut self, e: &PullEvent) {
        match e {
            PullEvent::Resolved { layers, bytes, .. } => {
                self.layers = *layers;
                self.bytes = *bytes;
            }
            PullEvent::LayerCached { .. } | PullEvent::LayerDone { .. } => self.layers_done += 1,
            PullEvent::LayerProgress { digest, done, .. } => {
                self.done.insert(digest.to_string(), *done);
            }
        }
    }

    pub fn bytes_done(&self) -> u64 {
        self.done.values().sum()
    }

    /// `3/5 layers, 1.2 MB of 4.0 MB`.
    pub fn summary(&self) -> String {
        let mb = |b: u64| b as f64 / 1_000_000.0;
        if self.layers == 0 {
            return "resolving the manifest".into();
        }
        format!(
            "{}/{} layers, {:.1} MB of {:.1} MB",
            self.layers_done,
            self.layers,
            mb(self.bytes_done()),
            mb(self.bytes)
        )
    }
}

/// What a provisioned container gets.
#[derive(Clone, Debug)]
pub struct Provisioned {
    pub rootfs: PathBuf,
    pub image: Image,
}

/// Everything a container's launch waits for: its own image (if any) and the rootfs of
/// each image volume, by the volume's index in the launch's mounts.
#[derive(Clone, Debug, Default)]
pub struct ProvisionedAll {
    pub main: Option<Provisioned>,
    pub volumes: Vec<(usize, PathBuf)>,
    /// The container's CNI networks, joined after its images were provisioned.
    pub networks: Option<crate::network::Networks>,
}

/// The provisioner key of a container's image volume `index`: `<container id>.volume<index>`
/// (container ids never hold a '.', so the container a key belongs to is unambiguous).
fn volume_key(container_id: &str, index: usize) -> String {
    format!("{container_id}.volume{index}")
}

/// The container a provisioner key belongs to (itself, or the owner of an image volume).
fn owner_of(key: &str) -> &str {
    key.split_once(".volume").map(|(c, _)| c).unwrap_or(key)
}

/// The agent's image store and provisioner.
pub struct Images {
    pub store: Store,
    pub provisioner: agora_image::Provisioner,
    pub backend: Backend,
    pub gc: GcPolicy,
}

/// `--docker-registry`: a registry (`host[:port]`, `http://host:port`, `https://host`) or a
/// local directory of `docker save` tarballs.
fn registry_setting(value: &str, cfg: &mut StoreConfig) {
    let v = value.trim();
    if let Some(dir) = v.strip_prefix("file://") {
        cfg.local_registry = Some(PathBuf::from(dir));
    } else if v.starts_with('/') || std::path::Path::new(v).is_dir() {
        cfg.local_registry = Some(PathBuf::from(v));
    } else if let Some(host) = v.strip_prefix("http://") {
        let host = host.trim_end_matches('/').to_string();
        if !cfg.registry.insecure.contains(&host) {
            cfg.registry.insecure.push(host.clone());
        }
        cfg.defaults.registry = host;
    } else {
        cfg.defaults.registry = v.trim_start_matches("https://").trim_end_matches('/').to_string();
    }
}

impl Images {
    /// Opens the store and the provisioner (`<work dir>/provisioner`).
    pub async fn open(config: &AgentConfig) -> Result<Images, AgentError> {
        let root = config.docker_store_dir.clone().unwrap_or_else(|| config.work_dir.join("store").join("docker"));
        let mut cfg = StoreConfig::new(&root);
        cfg.registry.insecure = config.docker_registry_insecure.clone();
        if let Some(path) = &config.docker_config {
            cfg.registry.credentials = DockerConfig::load(path)
                .map_err(|e| AgentError::Images(format!("--docker-config {}: {e}", path.display())))?;
        }
        if let Some(r) = &config.docker_registry {
            registry_setting(r, &mut cfg);
        }
        let store = Store::open(cfg)
            .await
            .map_err(|e| AgentError::Images(format!("cannot open the image store {}: {e}", root.display())))?;
        let dir = config.work_dir.join("provisioner");
        let provisioner = agora_image::Provisioner::open(&dir, store.clone())
            .map_err(|e| AgentError::Images(format!("cannot open the provisioner at {}: {e}", dir.display())))?;
        let backend = match &config.image_provisioner_backend {
            Some(b) => {
                let b: Backend = b.parse().map_err(AgentError::Images)?;
                if b == Backend::Overlay && Backend::default_for(&store) != Backend::Overlay {
                    return Err(AgentError::Images(
                        "--image-provisioner-backend=overlay: the kernel or the store's filesystem cannot do it; use copy"
                            .into(),
                    ));
                }
                b
            }
            None => Backend::default_for(&store),
        };
        let gc = GcPolicy {
            disk_headroom: config.image_gc_headroom,
            max_store_bytes: config.image_gc_max_store_bytes,
            excluded: config.image_gc_excluded.clone(),
        };
        tracing::info!(store = %root.display(), %backend, "image store opened");
        Ok(Images { store, provisioner, backend, gc })
    }

    /// Removes rootfses of containers nobody claims (after a restart).
    pub async fn remove_orphans(&self, claimed: &HashSet<String>) -> usize {
        let mut n = 0;
        for id in self.provisioner.container_ids() {
            if claimed.contains(owner_of(&id)) {
                continue;
            }
            tracing::info!(container_id = %id, "removing an orphaned rootfs");
            match self.provisioner.destroy(&id).await {
                Ok(_) => n += 1,
                Err(e) => tracing::warn!(container_id = %id, error = %e, "cannot remove an orphaned rootfs"),
            }
        }
        n
    }

    /// Finds or pulls the image (reporting progress), then builds the container's rootfs.
    pub async fn provision(
        &self,
        container_id: &str,
        req: &ImageRequest,
        progress: Arc<Mutex<Progress>>,
    ) -> Result<Provisioned, String> {
        let image = self.find_or_pull(req, progress).await?;
        if req.kind == ImageKind::Appc {
            // (A pull marks the image used itself.)
            self.store.mark_used(&image.id).await;
        }
        let rootfs = self
            .provisioner
            .provision(container_id, &image, self.backend)
            .await
            .map_err(|e| format!("cannot build the rootfs of image '{}': {e}", req.display()))?;
        Ok(Provisioned { rootfs, image })
    }

    /// Provisions a container's image (if it has one) and its image volumes (read-only
    /// roots under keys of their own); on any failure nothing provisioned is left.
    pub async fn provision_all(
        &self,
        container_id: &str,
        main: Option<&ImageRequest>,
        volumes: &[(usize, ImageRequest)],
        progress: Arc<Mutex<Progress>>,
    ) -> Result<ProvisionedAll, String> {
        let mut out = ProvisionedAll::default();
        let result: Result<(), String> = async {
            if let Some(req) = main {
                out.main = Some(self.provision(container_id, req, progress.clone()).await?);
            }
            for (index, req) in volumes {
                let p = self
                    .provision(&volume_key(container_id, *index), req, progress.clone())
                    .await
                    .map_err(|e| format!("image volume '{}': {e}", req.display()))?;
                out.volumes.push((*index, p.rootfs));
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(out),
            Err(e) => {
                self.release(container_id).await;
                Err(e)
            }
        }
    }

    async fn find_or_pull(&self, req: &ImageRequest, progress: Arc<Mutex<Progress>>) -> Result<Image, String> {
        match req.kind {
            ImageKind::Appc => {
                let version = req.labels.iter().find(|(k, _)| k == "version").map(|(_, v)| v.clone());
                let mut names = vec![];
                if let Some(v) = &version {
                    names.push(format!("appc:{}:{v}", req.name));
                }
                names.push(format!("appc:{}", req.name));
                let prefix = format!("appc:{}:", req.name);
                let found = self.store.list().into_iter().find(|i| {
                    i.kind == ImageKind::Appc
                        && i.references
                            .iter()
                            .any(|r| names.contains(r) || (version.is_none() && r.starts_with(&prefix)))
                });
                if let Some(img) = found {
                    return Ok(img);
                }
                if req.name.starts_with('/') {
                    return self
                        .store
                        .import_aci(std::path::Path::new(&req.name))
                        .await
                        .map_err(|e| format!("cannot import the ACI '{}': {e}", req.name));
                }
                Err(format!(
                    "appc image '{}' is not in the store (import it with `agora image pull --aci FILE`)",
                    req.name
                ))
            }
            ImageKind::Docker => {
                let reference = self
                    .store
                    .parse_reference(&req.name)
                    .map_err(|e| format!("invalid image reference '{}': {e}", req.name))?;
                let p2 = progress.clone();
                let opts = PullOptions {
                    policy: if req.cached { PullPolicy::IfNotPresent } else { PullPolicy::Always },
                    platform: None,
                    progress: Some(Arc::new(move |e: &PullEvent| {
                        if let Ok(mut p) = p2.lock() {
                            p.apply(e);
                        }
                    })),
                };
                self.store.pull(&reference, &opts).await.map_err(|e| format!("cannot pull image '{}': {e}", req.name))
            }
        }
    }

    /// Destroys a container's rootfs (if it has one), then collects garbage by the
    /// `--image-gc-*` thresholds.
    pub async fn release(&self, container_id: &str) {
        let mut any = false;
        for key in self.provisioner.container_ids().into_iter().filter(|k| owner_of(k) == container_id) {
            match self.provisioner.destroy(&key).await {
                Ok(true) => {
                    tracing::info!(%container_id, rootfs = %key, "rootfs destroyed");
                    any = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(%container_id, rootfs = %key, error = %e, "cannot destroy the rootfs"),
            }
        }
        if any {
            self.collect().await;
        }
    }

    /// Threshold garbage collection, when thresholds are set.
    pub async fn collect(&self) {
        if self.gc.disk_headroom.is_none() && self.gc.max_store_bytes.is_none() {
            return;
        }
        match self.store.gc(&self.provisioner.images_in_use(), &self.gc).await {
            Ok(r) if !r.images_removed.is_empty() => tracing::info!(
                images = r.images_removed.len(),
                layers = r.layers_removed.len(),
                bytes = r.bytes_freed,
                "image garbage collection"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "image garbage collection failed"),
        }
    }

    /// Destroys every rootfs (the agent is shutting down and destroyed its containers).
    pub async fn release_all(&self) {
        for id in self.provisioner.container_ids() {
            if let Err(e) = self.provisioner.destroy(&id).await {
                tracing::warn!(container_id = %id, error = %e, "cannot destroy the rootfs");
            }
        }
    }
}

/// An image as the agent's image API shows it.
pub fn image_json(img: &Image) -> serde_json::Value {
    serde_json::json!({
        "id": img.id.to_string(),
        "kind": img.kind,
        "references": img.references,
        "config_digest": img.config_digest.to_string(),
        "layers": img.layers.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        "os": img.os,
        "architecture": img.architecture,
        "size": img.size,
        "created": img.created,
        "last_used": img.last_used,
        "source": img.source,
        "config": img.config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_requests_from_container_info() {
        let ci =
            serde_json::json!({"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": "busybox"}}}});
        let r = ImageRequest::from_container_info(&ci).unwrap().unwrap();
        assert_eq!((r.kind, r.name.as_str(), r.cached), (ImageKind::Docker, "busybox", true));
        let ci = serde_json::json!({"type": "MESOS", "mesos": {"image": {"type": "APPC", "cached": false,
            "appc": {"name": "example.com/app", "labels": {"labels": [{"key": "version", "value": "1"}]}}}}});
        let r = ImageRequest::from_container_info(&ci).unwrap().unwrap();
        assert_eq!((r.kind, r.cached), (ImageKind::Appc, false));
        assert_eq!(r.labels, vec![("version".to_string(), "1".to_string())]);
        assert!(ImageRequest::from_container_info(&serde_json::json!({"type": "MESOS"})).unwrap().is_none());
        let bad = serde_json::json!({"type": "MESOS", "mesos": {"image": {"type": "DOCKER"}}});
        assert!(ImageRequest::from_container_info(&bad).is_err());
        let bad = serde_json::json!({"type": "MESOS", "mesos": {"image": {"type": "OCI"}}});
        assert!(ImageRequest::from_container_info(&bad).is_err());
    }

    #[test]
    fn registry_flag_forms() {
        let mut c = StoreConfig::new("/tmp/x");
        registry_setting("http://127.0.0.1:5000", &mut c);
        assert_eq!(c.defaults.registry, "127.0.0.1:5000");
        assert_eq!(c.registry.insecure, vec!["127.0.0.1:5000".to_string()]);
        let mut c = StoreConfig::new("/tmp/x");
        registry_setting("registry.example:5000", &mut c);
        assert_eq!(c.defaults.registry, "registry.example:5000");
        assert!(c.registry.insecure.is_empty());
        let mut c = StoreConfig::new("/tmp/x");
        registry_setting("/srv/images", &mut c);
        assert_eq!(c.local_registry, Some(PathBuf::from("/srv/images")));
    }
}
