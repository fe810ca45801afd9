//! Local sources: docker-archive tarballs (current and legacy), Mesos's local registry
//! directory, OCI layouts (with an index), appc ACIs.

mod common;

use std::io::Write;

use agora_image::provision::{Backend, Provisioner};
use agora_image::reference::Reference;
use agora_image::store::{ImageKind, PullOptions, Store, StoreConfig};
use common::layers::LayerBuilder;
use common::{check_multilayer, digests, fixtures_dir, images_dir};

fn config(root: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(root);
    c.sync = false;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archives_and_oci_layouts() {
    if fixtures_dir().is_none() {
        return;
    }
    let images = images_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(&tmp.path().join("store"))).await.expect("open");
    for name in ["busybox", "multilayer", "httpd"] {
        let imgs =
            store.import_docker_archive(&images.join(format!("docker-archive/{name}.tar")), None).await.expect(name);
        assert_eq!(imgs.len(), 1);
        assert!(
            imgs[0].references.contains(&format!("registry-1.docker.io/library/{name}:latest")),
            "{:?}",
            imgs[0].references
        );
    }
    let ml = store.inspect("multilayer").expect("multilayer by familiar name");
    assert_eq!(ml.layers.len(), 3);
    let prov = Provisioner::open(tmp.path().join("prov"), store.clone()).expect("prov");
    let rootfs = prov.provision("archive-ml", &ml, Backend::Copy).await.expect("copy");
    check_multilayer(&rootfs, &images.join("expected/multilayer.txt"));

    // OCI layout with an index: the amd64 manifest is picked, and it is busybox's.
    let want = digests(&images);
    let r = Reference::parse("example.org/multiarch:latest").expect("ref");
    let img = store.import_oci_layout(&images.join("oci/multiarch"), Some("latest"), &r).await.expect("oci layout");
    assert_eq!(img.id.to_string(), want["busybox"]);
    let r = Reference::parse("example.org/bbz").expect("ref");
    let img = store.import_oci_layout(&images.join("oci/busybox-zstd"), Some("latest"), &r).await.expect("zstd layout");
    assert_eq!(img.layers, store.inspect("busybox").expect("busybox").layers, "zstd and gzip share the layer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_registry_directory() {
    if fixtures_dir().is_none() {
        return;
    }
    let images = images_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("registry");
    std::fs::create_dir_all(dir.join("team")).expect("dir");
    std::fs::copy(images.join("docker-archive/busybox.tar"), dir.join("busybox:latest.tar")).expect("copy");
    std::fs::copy(images.join("docker-archive/httpd.tar"), dir.join("team/web:1.0.tar")).expect("copy");
    let mut c = config(&tmp.path().join("store"));
    c.local_registry = Some(dir.clone());
    let store = Store::open(c).await.expect("open");
    let bb = store.pull(&Reference::parse("busybox").expect("ref"), &PullOptions::default()).await.expect("busybox");
    assert_eq!(bb.config.cmd, Some(vec!["sh".to_string()]));
    let web =
        store.pull(&Reference::parse("team/web:1.0").expect("ref"), &PullOptions::default()).await.expect("team/web");
    assert_eq!(web.config.exposed_ports, vec!["8080/tcp".to_string()]);
    let err = store.pull(&Reference::parse("nope").expect("ref"), &PullOptions::default()).await.expect_err("missing");
    assert!(err.to_string().contains("local registry"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_from_a_local_registry_directory_all_succeed() {
    // Two tasks of one image started at once pull the same archive concurrently: both
    // unpack its layers, one publishes each, and neither fails on the other's layer.
    if fixtures_dir().is_none() {
        return;
    }
    let images = images_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("registry");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(images.join("docker-archive/httpd.tar"), dir.join("httpd.tar")).expect("copy");
    std::fs::copy(images.join("docker-archive/busybox.tar"), dir.join("busybox.tar")).expect("copy");
    let mut c = config(&tmp.path().join("store"));
    c.local_registry = Some(dir.clone());
    let store = Store::open(c).await.expect("open");
    let pulls: Vec<_> = ["httpd", "httpd", "busybox", "httpd", "busybox", "httpd"]
        .into_iter()
        .map(|name| {
            let store = store.clone();
            tokio::spawn(async move {
                store.pull(&Reference::parse(name).expect("ref"), &PullOptions::default()).await.map(|i| i.layers)
            })
        })
        .collect();
    for p in pulls {
        let layers = p.await.expect("join").expect("every concurrent pull succeeds");
        for l in &layers {
            assert!(store.layer(l).is_some(), "layer {l} published");
        }
    }
    assert!(
        std::fs::read_dir(tmp.path().join("store/tmp")).expect("tmp").next().is_none(),
        "no leftover in the store's tmp"
    );
}

#[tokio::test]
async fn legacy_docker_save_format() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = LayerBuilder::new().file("etc/base", b"base", 0o644).file("etc/gone", b"x", 0o644).tar();
    let top = LayerBuilder::new().file("etc/top", b"top", 0o644).file("etc/.wh.gone", b"", 0o644).tar();
    let (b_id, t_id) = ("a".repeat(64), "b".repeat(64));
    let mut ar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        ar.append_data(&mut h, path, data).expect("append");
    };
    add("repositories", format!(r#"{{"legacy/app":{{"v1":"{t_id}"}}}}"#).as_bytes());
    add(&format!("{b_id}/json"), format!(r#"{{"id":"{b_id}","os":"linux","architecture":"amd64"}}"#).as_bytes());
    add(&format!("{b_id}/layer.tar"), &base);
    add(
        &format!("{t_id}/json"),
        format!(r#"{{"id":"{t_id}","parent":"{b_id}","os":"linux","architecture":"amd64","config":{{"Cmd":["/bin/app"],"Env":["A=1"]}}}}"#).as_bytes(),
    );
    add(&format!("{t_id}/layer.tar"), &top);
    let data = ar.into_inner().expect("tar");
    let path = tmp.path().join("legacy.tar");
    std::fs::File::create(&path).expect("create").write_all(&data).expect("write");
    let store = Store::open(config(&tmp.path().join("store"))).await.expect("open");
    let imgs = store.import_docker_archive(&path, None).await.expect("legacy import");
    assert_eq!(imgs.len(), 1);
    let img = store.inspect("legacy/app:v1").expect("by tag");
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.config.cmd, Some(vec!["/bin/app".to_string()]));
    assert_eq!(img.config.env, vec!["A=1".to_string()]);
    let prov = Provisioner::open(tmp.path().join("prov"), store.clone()).expect("prov");
    let rootfs = prov.provision("legacy", &img, Backend::Copy).await.expect("copy");
    assert!(rootfs.join("etc/base").is_file() && rootfs.join("etc/top").is_file());
    assert!(!rootfs.join("etc/gone").exists());
}

#[tokio::test]
async fn appc_aci() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let manifest = br#"{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/hello",
        "labels":[{"name":"version","value":"1.0"},{"name":"os","value":"linux"},{"name":"arch","value":"amd64"}],
        "app":{"exec":["/bin/hello"],"user":"0","group":"0","environment":[{"name":"X","value":"y"}],
               "workingDirectory":"/srv","ports":[{"name":"http","protocol":"tcp","port":80}]}}"#;
    let aci = LayerBuilder::new()
        .file("manifest", manifest, 0o644)
        .dir("rootfs", 0o755)
        .file("rootfs/bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
        .file("rootfs/.wh.not-a-whiteout", b"kept", 0o644)
        .gzip();
    let path = tmp.path().join("hello.aci");
    std::fs::write(&path, aci).expect("write");
    let store = Store::open(config(&tmp.path().join("store"))).await.expect("open");
    let img = store.import_aci(&path).await.expect("aci");
    assert_eq!(img.kind, ImageKind::Appc);
    assert_eq!(img.config.entrypoint, Some(vec!["/bin/hello".to_string()]));
    assert_eq!(img.config.env, vec!["X=y".to_string()]);
    assert_eq!(img.config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(img.config.exposed_ports, vec!["80/tcp".to_string()]);
    assert_eq!(store.inspect("appc:example.com/hello:1.0").map(|i| i.id), Some(img.id.clone()));
    let prov = Provisioner::open(tmp.path().join("prov"), store.clone()).expect("prov");
    let rootfs = prov.provision("aci", &img, Backend::Copy).await.expect("copy");
    assert!(rootfs.join("bin/hello").is_file());
    assert!(!rootfs.join("manifest").exists());
    assert!(rootfs.join(".wh.not-a-whiteout").is_file(), "ACIs have no whiteouts");
}
