//! Agora's image provisioner: pulls Docker/OCI images from registries without any daemon,
//! keeps them in a content-addressed store, and builds container root filesystems.
//!
//! # Using it (agent / containerizer / CLI)
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use agora_image::{Backend, Provisioner, PullEvent, PullOptions, Store, StoreConfig};
//!
//! // At agent start: open the store (--docker-store-dir) and the provisioner.
//! let mut cfg = StoreConfig::new("/var/lib/agora/store/docker");
//! cfg.registry.insecure = vec!["127.0.0.1:5000".into()];      // --docker-registry-insecure
//! // cfg.registry.credentials = DockerConfig::load(path)?;     // --docker-config
//! // cfg.defaults.registry = "registry.example:5000".into();   // --docker-registry (a host)
//! // cfg.local_registry = Some("/srv/images".into());          // --docker-registry (a directory)
//! let store = Store::open(cfg).await?;
//! let prov = Provisioner::open("/var/lib/agora/provisioner", store.clone())?;
//!
//! // Recovery: destroy rootfses of containers the agent no longer knows.
//! for p in prov.list() {
//!     # let known = |_: &str| true;
//!     if !known(&p.container_id) { prov.destroy(&p.container_id).await?; }
//! }
//!
//! // Launch: pull (progress goes to logs / TASK_STARTING), then provision.
//! let reference = store.parse_reference("busybox:1.36")?;
//! let progress = Arc::new(|e: &PullEvent| tracing::info!(?e, "pull"));
//! let image = store.pull(&reference, &PullOptions { progress: Some(progress), ..Default::default() }).await?;
//! let rootfs = prov.provision("container-id", &image, Backend::default_for(&store)).await?;
//! // image.config has Entrypoint/Cmd/Env/WorkingDir/User/ExposedPorts for the launcher.
//! # let _ = rootfs;
//!
//! // Teardown and housekeeping.
//! prov.destroy("container-id").await?;
//! store.prune(&prov.images_in_use()).await?;
//! # Ok(()) }
//! ```
//!
//! - [`Store::pull`] resolves a [`Reference`] with the registry (or the local registry
//!   directory), downloads missing layers concurrently (bounded, retried, resumed with
//!   `Range`), decompresses and unpacks each while it streams, verifies every digest and size,
//!   and publishes atomically. [`PullPolicy::IfNotPresent`] is Mesos's `Image.cached`.
//! - [`Store::import_docker_archive`], [`Store::import_oci_layout`], [`Store::import_aci`]
//!   bring in local images; [`Store::list`], [`Store::inspect`], [`Store::remove`],
//!   [`Store::prune`], [`Store::gc`] manage the store.
//! - [`Provisioner::provision`] / [`Provisioner::destroy`] / [`Provisioner::list`] build,
//!   remove and recover rootfses with the `overlay` or `copy` [`Backend`].
//!
//! # Decisions
//!
//! - Layer unpacking ([`unpack`]) never writes outside its root: `..` entries reject the
//!   layer, absolute names are made relative, parents are resolved inside the root (symlinks
//!   followed as if the root were `/`), hard links must point inside the layer, device
//!   nodes are skipped (the runtime provides `/dev`), setuid/setgid bits are kept as the
//!   image says (as Docker does), zero blocks are written as holes.
//! - Whiteouts are stored in overlayfs form (0/0 char devices, `trusted.overlay.opaque`)
//!   when the store's filesystem allows, so layer directories are overlay lowerdirs as they
//!   are; otherwise the `.wh.` markers are kept and only `copy` is available.
//! - HTTPS via rustls (`ring`) with the system trust store (see [`http`]); plain HTTP only for
//!   registries listed as insecure. Every request has connect, response and idle timeouts.
//! - No `unsafe`: mounts, `mknod`, `syncfs` go through `nix`; xattrs through `xattr`.
#![forbid(unsafe_code)]
// Errors carry the image, URL and digests they concern; they are built on cold paths only.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod digest;
pub mod http;
pub mod provision;
pub mod reference;
pub mod registry;
pub mod sources;
pub mod spec;
pub mod store;
pub mod unpack;

pub use auth::{Credentials, DockerConfig};
pub use digest::Digest;
pub use provision::{Backend, ProvisionError, Provisioned, Provisioner};
pub use reference::{Reference, ReferenceDefaults, ReferenceError};
pub use registry::{RegistryConfig, RegistryError, Timeouts};
pub use spec::Platform;
pub use store::{
    GcPolicy, Image, ImageConfig, ImageKind, LayerRecord, PruneReport, PullEvent, PullOptions, PullPolicy, Store,
    StoreConfig, StoreError,
};
