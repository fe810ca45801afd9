//! A tiny fake registry (tokio TCP) serving broken answers: each must give a clear error
//! and leave nothing in the store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use agora_image::digest::Digest;
use agora_image::reference::Reference;
use agora_image::registry::{RegistryError, Timeouts};
use agora_image::store::{PullOptions, Store, StoreConfig, StoreError};
use common::layers::LayerBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone)]
enum Reply {
    Ok(&'static str, Vec<u8>),
    Status(u16),
    /// Announces the full length, sends a prefix, closes.
    Truncated(Vec<u8>, usize),
    Hang,
}

type Routes = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

async fn serve(routes: Routes) -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let h = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let path = text.split(' ').nth(1).unwrap_or("").to_string();
                let (status, ct, body, send) = match routes(&path) {
                    Reply::Ok(ct, body) => (200, ct, body.clone(), body.len()),
                    Reply::Status(c) => (c, "application/json", br#"{"errors":[{"code":"X"}]}"#.to_vec(), 25),
                    Reply::Truncated(body, n) => (200, "application/octet-stream", body, n),
                    Reply::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.write_all(&body[..send.min(body.len())]).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, h)
}

struct Image {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
}

fn image(layer_media_type: &str) -> Image {
    let tar = LayerBuilder::new().file("hello", b"world", 0o644).tar();
    let diff = Digest::sha256_of(&tar);
    let layer = LayerBuilder::new().file("hello", b"world", 0o644).gzip();
    let config = format!(r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["x"]}},"rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#)
        .into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"{layer_media_type}","digest":"{}","size":{}}}]}}"#,
        Digest::sha256_of(&config),
        config.len(),
        Digest::sha256_of(&layer),
        layer.len()
    )
    .into_bytes();
    Image { manifest, config, layer }
}

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

async fn pull_with(
    routes: Routes,
    reference_suffix: &str,
) -> (Result<agora_image::store::Image, StoreError>, Store, tempfile::TempDir) {
    let (addr, _h) = serve(routes).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = StoreConfig::new(tmp.path().join("store"));
    c.registry.insecure = vec![addr.clone()];
    c.registry.attempts = 2;
    c.registry.timeouts =
        Timeouts { connect: Duration::from_secs(1), response: Duration::from_secs(1), idle: Duration::from_secs(1) };
    c.sync = false;
    let store = Store::open(c).await.expect("open");
    let r = Reference::parse(&format!("{addr}/test/img{reference_suffix}")).expect("ref");
    let res = store.pull(&r, &PullOptions::default()).await;
    (res, store, tmp)
}

fn nothing_stored(store: &Store) {
    assert!(store.list().is_empty(), "images stored");
    assert!(store.layers().is_empty(), "layers stored");
    assert_eq!(std::fs::read_dir(store.root().join("tmp")).expect("tmp").count(), 0, "temp files left");
}

fn routes_for(img: Image, f: impl Fn(&str, &Image) -> Option<Reply> + Send + Sync + 'static) -> Routes {
    Arc::new(move |path: &str| {
        if let Some(r) = f(path, &img) {
            return r;
        }
        if path.contains("/manifests/") {
            Reply::Ok(OCI, img.manifest.clone())
        } else if path.ends_with(&Digest::sha256_of(&img.config).to_string()) {
            Reply::Ok("application/octet-stream", img.config.clone())
        } else if path.ends_with(&Digest::sha256_of(&img.layer).to_string()) {
            Reply::Ok("application/octet-stream", img.layer.clone())
        } else if path == "/v2/" {
            Reply::Ok("application/json", b"{}".to_vec())
        } else {
            Reply::Status(404)
        }
    })
}

#[tokio::test]
async fn a_good_image_from_the_fake_server_pulls() {
    let (res, store, _t) = pull_with(routes_for(image(GZ), |_, _| None), ":v1").await;
    let img = res.expect("pull");
    assert_eq!(img.config.cmd, Some(vec!["x".to_string()]));
    assert_eq!(std::fs::read_to_string(store.layer_path(&img.layers[0]).join("hello")).expect("hello"), "world");
}

#[tokio::test]
async fn layer_with_wrong_content_is_a_digest_mismatch() {
    let routes = routes_for(image(GZ), |p, img| {
        (p.ends_with(&Digest::sha256_of(&img.layer).to_string())).then(|| {
            let mut bad = img.layer.clone();
            let n = bad.len();
            bad[n - 9] ^= 0xff; // inside the gzip trailer's CRC: same size, different digest
            Reply::Ok("application/octet-stream", bad)
        })
    });
    let (res, store, _t) = pull_with(routes, ":v1").await;
    let err = res.expect_err("must fail");
    assert!(matches!(err, StoreError::DigestMismatch { what: "layer", .. }), "{err}");
    nothing_stored(&store);
}

#[tokio::test]
async fn config_with_wrong_content_is_a_digest_mismatch() {
    let routes = routes_for(image(GZ), |p, img| {
        (p.ends_with(&Digest::sha256_of(&img.config).to_string())).then(|| {
            let mut bad = img.config.clone();
            bad[0] = b' ';
            Reply::Ok("application/octet-stream", bad)
        })
    });
    let (res, store, _t) = pull_with(routes, ":v1").await;
    let err = res.expect_err("must fail");
    assert!(matches!(err, StoreError::Registry { source: RegistryError::DigestMismatch { .. }, .. }), "{err}");
    nothing_stored(&store);
}

#[tokio::test]
async fn manifest_not_matching_the_pinned_digest_is_refused() {
    let img = image(GZ);
    let other = Digest::sha256_of(b"something else");
    let (res, store, _t) = pull_with(routes_for(img, |_, _| None), &format!("@{other}")).await;
    let err = res.expect_err("must fail");
    assert!(matches!(err, StoreError::Registry { source: RegistryError::DigestMismatch { .. }, .. }), "{err}");
    nothing_stored(&store);
}

#[tokio::test]
async fn truncated_blob_fails_after_resume_attempts() {
    let routes = routes_for(image(GZ), |p, img| {
        p.ends_with(&Digest::sha256_of(&img.layer).to_string())
            .then(|| Reply::Truncated(img.layer.clone(), img.layer.len() / 2))
    });
    let (res, store, _t) = pull_with(routes, ":v1").await;
    let err = res.expect_err("must fail");
    assert!(matches!(err, StoreError::Registry { .. }), "{err}");
    nothing_stored(&store);
}

#[tokio::test]
async fn not_found_and_server_errors() {
    let (res, store, _t) =
        pull_with(routes_for(image(GZ), |p, _| p.contains("/manifests/").then_some(Reply::Status(404))), ":v1").await;
    let err = res.expect_err("404");
    assert!(matches!(err, StoreError::Registry { source: RegistryError::NotFound { .. }, .. }), "{err}");
    assert!(err.to_string().contains("/v2/test/img/manifests/v1"), "{err}");
    nothing_stored(&store);
    let (res, store, _t) =
        pull_with(routes_for(image(GZ), |p, _| p.contains("/blobs/").then_some(Reply::Status(500))), ":v1").await;
    let err = res.expect_err("500");
    assert!(matches!(err, StoreError::Registry { source: RegistryError::Status { status: 500, .. }, .. }), "{err}");
    nothing_stored(&store);
}

#[tokio::test]
async fn a_hanging_registry_times_out() {
    let started = std::time::Instant::now();
    let (res, store, _t) =
        pull_with(routes_for(image(GZ), |p, _| p.contains("/blobs/").then_some(Reply::Hang)), ":v1").await;
    let err = res.expect_err("hang");
    assert!(matches!(err, StoreError::Registry { source: RegistryError::Timeout { .. }, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    nothing_stored(&store);
}

#[tokio::test]
async fn unknown_layer_media_type_is_refused() {
    let (res, store, _t) = pull_with(routes_for(image("application/x-foo"), |_, _| None), ":v1").await;
    let err = res.expect_err("media type");
    assert!(matches!(err, StoreError::UnsupportedMediaType { .. }), "{err}");
    nothing_stored(&store);
}

#[tokio::test]
async fn malicious_layer_from_a_registry_is_refused_and_discarded() {
    let mut img = image(GZ);
    let tar = LayerBuilder::new().file("../../escape", b"x", 0o644).tar();
    let diff = Digest::sha256_of(&tar);
    img.layer = LayerBuilder::new().file("../../escape", b"x", 0o644).gzip();
    img.config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#).into_bytes();
    img.manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{}","size":{}}},"layers":[{{"mediaType":"{GZ}","digest":"{}","size":{}}}]}}"#,
        Digest::sha256_of(&img.config),
        img.config.len(),
        Digest::sha256_of(&img.layer),
        img.layer.len()
    )
    .into_bytes();
    let (res, store, _t) = pull_with(routes_for(img, |_, _| None), ":v1").await;
    let err = res.expect_err("malicious");
    assert!(matches!(err, StoreError::Unpack { .. }), "{err}");
    nothing_stored(&store);
}
