//! Store housekeeping: leftovers removed at open, remove/prune/gc, a full disk.

mod common;

use std::process::{Command, Stdio};

use agora_image::store::{GcPolicy, Store, StoreConfig, StoreError};
use common::layers::LayerBuilder;
use common::{fixtures_dir, images_dir};

fn config(root: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(root);
    c.sync = false;
    c
}

#[tokio::test]
async fn leftovers_of_an_interrupted_pull_are_removed_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("store");
    drop(Store::open(config(&root)).await.expect("open"));
    // What a crash in the middle of an unpack leaves behind.
    let stale = root.join("tmp/layer-123-456-0/fs/usr/bin");
    std::fs::create_dir_all(&stale).expect("stale");
    std::fs::write(stale.join("half"), "x").expect("stale file");
    std::fs::write(root.join("tmp/w-123"), "partial json").expect("stale file");
    let store = Store::open(config(&root)).await.expect("reopen");
    assert_eq!(std::fs::read_dir(root.join("tmp")).expect("tmp").count(), 0);
    assert!(store.list().is_empty() && store.layers().is_empty());
}

#[tokio::test]
async fn remove_prune_and_threshold_gc() {
    if fixtures_dir().is_none() {
        return;
    }
    let images = images_dir();
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(&tmp.path().join("store"))).await.expect("open");
    for n in ["busybox", "httpd", "multilayer"] {
        store.import_docker_archive(&images.join(format!("docker-archive/{n}.tar")), None).await.expect(n);
    }
    assert_eq!(store.list().len(), 3);
    assert_eq!(store.layers().len(), 4);
    let bb = store.inspect("busybox").expect("busybox");
    // remove: untags and drops the record; layers stay until collected.
    assert!(store.remove("httpd").await.expect("remove"));
    assert!(!store.remove("httpd").await.expect("remove again"));
    assert!(store.inspect("httpd").is_none());
    assert_eq!(store.layers().len(), 4);
    let report = store.prune(&["busybox".into(), "multilayer".into()]).await.expect("prune");
    assert_eq!(report.layers_removed.len(), 1, "httpd's own layer: {report:?}");
    // gc: over the size limit, the least recently used image not kept goes first.
    let base = store.layer(&bb.layers[0]).expect("base layer").size;
    let policy = GcPolicy { max_store_bytes: Some(base + 1), ..Default::default() };
    let report = store.gc(&["busybox".into()], &policy).await.expect("gc");
    assert_eq!(report.images_removed.len(), 1);
    assert!(store.inspect("multilayer").is_none());
    assert!(store.inspect("busybox").is_some());
    assert_eq!(store.layers().len(), 1);
    // Under the limit: nothing happens.
    let report = store.gc(&[], &policy).await.expect("gc");
    assert!(report.images_removed.is_empty());
}

struct Tmpfs(std::path::PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_is_a_clear_error_and_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).expect("mkdir");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP: cannot mount a tmpfs here (not root?)");
        return;
    }
    let _guard = Tmpfs(mnt.clone());
    // A docker-archive whose one layer holds 8 MB of non-zero data.
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    let layer = LayerBuilder::new().file("big", &big, 0o644).tar();
    let diff = agora_image::Digest::sha256_of(&layer);
    let config =
        format!(r#"{{"os":"linux","architecture":"amd64","rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#);
    let mut ar = tar::Builder::new(Vec::new());
    for (p, d) in [
        ("manifest.json", br#"[{"Config":"config.json","RepoTags":["big:latest"],"Layers":["layer.tar"]}]"#.to_vec()),
        ("config.json", config.into_bytes()),
        ("layer.tar", layer),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(d.len() as u64);
        h.set_mode(0o644);
        ar.append_data(&mut h, p, &d[..]).expect("append");
    }
    let archive = tmp.path().join("big.tar");
    std::fs::write(&archive, ar.into_inner().expect("tar")).expect("write");
    let store = Store::open(config_for(&mnt)).await.expect("open");
    let err = store.import_docker_archive(&archive, None).await.expect_err("must not fit");
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(store.list().is_empty() && store.layers().is_empty());
    assert_eq!(std::fs::read_dir(store.root().join("tmp")).expect("tmp").count(), 0);
}

fn config_for(mnt: &std::path::Path) -> StoreConfig {
    config(&mnt.join("store"))
}
