//! Crafted malicious layers never write outside the root; whiteouts in both forms.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use agora_image::unpack::{unpack, UnpackError, UnpackOptions, WhiteoutMode, OVERLAY_OPAQUE_XATTR};
use common::layers::LayerBuilder;

fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    std::fs::create_dir(&root).expect("root");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::write(outside.join("secret"), "secret").expect("secret");
    (t, root, outside)
}

fn opts(mode: WhiteoutMode) -> UnpackOptions {
    UnpackOptions { whiteouts: mode, ..UnpackOptions::default() }
}

fn outside_untouched(outside: &Path) {
    let names: Vec<_> = std::fs::read_dir(outside).expect("read").flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")], "something was written outside the root");
    assert_eq!(std::fs::read_to_string(outside.join("secret")).expect("secret"), "secret");
    assert_eq!(std::fs::metadata(outside.join("secret")).expect("meta").nlink(), 1);
}

#[test]
fn dotdot_entries_are_refused() {
    let (_t, root, outside) = setup();
    let layer = LayerBuilder::new().file("../outside/pwned", b"x", 0o644).tar();
    let err = unpack(&layer[..], &root, &opts(WhiteoutMode::Overlay)).expect_err("must refuse");
    assert!(matches!(err, UnpackError::UnsafePath { .. }), "{err}");
    let layer = LayerBuilder::new().file("a/../../outside/pwned", b"x", 0o644).tar();
    assert!(unpack(&layer[..], &root, &opts(WhiteoutMode::Overlay)).is_err());
    outside_untouched(&outside);
}

#[test]
fn absolute_paths_land_inside_the_root() {
    let (_t, root, outside) = setup();
    let abs = format!("{}/abs-file", outside.display());
    let layer = LayerBuilder::new().file(&abs, b"in root", 0o644).tar();
    unpack(&layer[..], &root, &opts(WhiteoutMode::Overlay)).expect("unpack");
    assert_eq!(std::fs::read_to_string(root.join(abs.trim_start_matches('/'))).expect("read"), "in root");
    outside_untouched(&outside);
}

#[test]
fn symlinked_parents_resolve_inside_the_root() {
    let (_t, root, outside) = setup();
    let abs_outside = outside.display().to_string();
    let layer = LayerBuilder::new()
        .symlink("rel", "../../../../../../outside")
        .file("rel/pwned", b"x", 0o644)
        .symlink("abs", &abs_outside)
        .file("abs/pwned", b"x", 0o644)
        .symlink("etc", "/host/etc")
        .file("etc/shadow", b"root::0:0:::::", 0o600)
        .tar();
    unpack(&layer[..], &root, &opts(WhiteoutMode::Overlay)).expect("unpack");
    // Followed as if the root were "/": the files exist inside the root.
    assert!(root.join("outside/pwned").is_file());
    assert!(root.join(abs_outside.trim_start_matches('/')).join("pwned").is_file());
    assert!(root.join("etc").is_symlink());
    assert!(root.join("host/etc/shadow").is_file());
    outside_untouched(&outside);
    assert_ne!(std::fs::read_to_string("/etc/shadow").unwrap_or_default(), "root::0:0:::::");
}

#[test]
fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
    let (_t, root, outside) = setup();
    let secret = outside.join("secret").display().to_string();
    let layer = LayerBuilder::new().symlink("x", &secret).file("x", b"overwritten", 0o644).tar();
    unpack(&layer[..], &root, &opts(WhiteoutMode::Overlay)).expect("unpack");
    let m = std::fs::symlink_metadata(root.join("x")).expect("x");
    assert!(m.is_file());
    assert_eq!(std::fs::read_to_string(root.join("x")).expect("x"), "overwritten");
    outside_untouched(&outside);
}

#[test]
fn hardlinks_must_point_inside_the_layer() {
    let (_t, root, outside) = setup();
    let secret = outside.join("secret").display().to_string();
    for target in [secret.as_str(), "../outside/secret", "etc/shadow"] {
        let layer = LayerBuilder::new().hardlink("hl", target).tar();
        let err = unpack(&layer[..], &root, &opts(WhiteoutMode::Overlay)).expect_err(target);
        assert!(matches!(err, UnpackError::BadLink { .. }), "{target}: {err}");
    }
    // Through a symlinked parent: resolved inside the root, where there is no such file.
    let layer = LayerBuilder::new().symlink("o", &outside.display().to_string()).hardlink("hl2", "o/secret").tar();
    assert!(unpack(&layer[..], &root, &opts(WhiteoutMode::Overlay)).is_err());
    // A good one.
    let layer = LayerBuilder::new().file("a", b"data", 0o644).hardlink("b", "a").tar();
    unpack(&layer[..], &root, &opts(WhiteoutMode::Overlay)).expect("unpack");
    assert_eq!(std::fs::metadata(root.join("b")).expect("b").nlink(), 2);
    outside_untouched(&outside);
}

#[test]
fn device_nodes_are_skipped_and_setuid_kept() {
    let (_t, root, outside) = setup();
    let layer = LayerBuilder::new()
        .device("dev/sda", tar::EntryType::Block, 8, 0)
        .device("dev/mem", tar::EntryType::Char, 1, 1)
        .device("fifo", tar::EntryType::Fifo, 0, 0)
        .file("bin/su", b"#!", 0o4755)
        .dir("tmp", 0o1777)
        .tar();
    let stats = unpack(&layer[..], &root, &opts(WhiteoutMode::Overlay)).expect("unpack");
    assert_eq!(stats.devices_skipped, 2);
    assert!(std::fs::symlink_metadata(root.join("dev/sda")).is_err());
    assert!(std::fs::symlink_metadata(root.join("dev/mem")).is_err());
    assert!(std::fs::symlink_metadata(root.join("fifo")).expect("fifo").file_type().is_fifo());
    assert_eq!(std::fs::metadata(root.join("bin/su")).expect("su").permissions().mode() & 0o7777, 0o4755);
    assert_eq!(std::fs::metadata(root.join("tmp")).expect("tmp").permissions().mode() & 0o7777, 0o1777);
    outside_untouched(&outside);
}

#[test]
fn zero_filled_files_stay_sparse() {
    let (_t, root, _outside) = setup();
    let zeros = vec![0u8; 64 << 20];
    let layer = LayerBuilder::new().file("big", &zeros, 0o644).gzip();
    let d = flate2::read::GzDecoder::new(&layer[..]);
    unpack(d, &root, &opts(WhiteoutMode::Overlay)).expect("unpack");
    let m = std::fs::metadata(root.join("big")).expect("big");
    assert_eq!(m.len(), 64 << 20);
    assert!(m.blocks() * 512 < (1 << 20), "64 MiB of zeros took {} bytes on disk", m.blocks() * 512);
}

#[test]
fn symlink_loops_fail_cleanly() {
    let (_t, root, _outside) = setup();
    let layer = LayerBuilder::new().symlink("a", "b").symlink("b", "a").file("a/x", b"x", 0o644).tar();
    let err = unpack(&layer[..], &root, &opts(WhiteoutMode::Overlay)).expect_err("loop");
    assert!(err.to_string().contains("symbolic links"), "{err}");
}

#[test]
fn whiteouts_in_overlay_form() {
    let (_t, root, _outside) = setup();
    let layer = LayerBuilder::new()
        .dir("data", 0o755)
        .file("data/.wh.a", b"", 0o644)
        .dir("data/opq", 0o755)
        .file("data/opq/.wh..wh..opq", b"", 0o644)
        .file("data/opq/z", b"z", 0o644)
        .file("data/.wh..wh.plnk", b"", 0o644)
        .tar();
    let stats = unpack(&layer[..], &root, &opts(WhiteoutMode::Overlay)).expect("unpack");
    assert_eq!(stats.whiteouts, 3);
    let m = std::fs::symlink_metadata(root.join("data/a")).expect("whiteout");
    assert!(m.file_type().is_char_device() && m.rdev() == 0);
    assert_eq!(xattr::get(root.join("data/opq"), OVERLAY_OPAQUE_XATTR).expect("xattr").as_deref(), Some(&b"y"[..]));
    assert!(root.join("data/opq/z").is_file());
    assert!(!root.join("data/.wh.a").exists());
    assert!(!root.join("data/opq/.wh..wh..opq").exists());
}

#[test]
fn whiteouts_kept_as_markers() {
    let (_t, root, _outside) = setup();
    let layer = LayerBuilder::new().file("data/.wh.a", b"", 0o644).file("data/opq/.wh..wh..opq", b"", 0o644).tar();
    unpack(&layer[..], &root, &opts(WhiteoutMode::Keep)).expect("unpack");
    assert!(root.join("data/.wh.a").is_file());
    assert!(root.join("data/opq/.wh..wh..opq").is_file());
    assert!(std::fs::symlink_metadata(root.join("data/a")).is_err());
}

#[test]
fn later_entries_win_with_writer_threads() {
    let (_t, root, _outside) = setup();
    let mut b = LayerBuilder::new();
    for i in 0..200 {
        b = b.file(&format!("d/f{i}"), format!("first {i}").as_bytes(), 0o644);
    }
    let layer = b
        .file("d/f1", b"second", 0o600)
        .symlink("d/f2", "f1")
        .hardlink("d/f3", "d/f1")
        .file("d/.wh.f4", b"", 0o644)
        .dir("d", 0o700)
        .tar();
    for threads in [0, 2, 4] {
        let r = root.join(format!("t{threads}"));
        std::fs::create_dir(&r).expect("mkdir");
        let o = UnpackOptions { writer_threads: threads, ..opts(WhiteoutMode::Keep) };
        unpack(&layer[..], &r, &o).expect("unpack");
        assert_eq!(std::fs::read_to_string(r.join("d/f1")).expect("f1"), "second");
        let m = std::fs::metadata(r.join("d/f1")).expect("f1");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(m.mtime(), 1_700_000_000);
        assert_eq!(m.nlink(), 2, "f3 is a hard link to the second f1");
        assert!(std::fs::symlink_metadata(r.join("d/f2")).expect("f2").is_symlink());
        assert_eq!(std::fs::read_to_string(r.join("d/f199")).expect("f199"), "first 199");
        assert_eq!(std::fs::metadata(r.join("d")).expect("d").permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(r.join("d")).expect("d").mtime(), 1_700_000_000);
    }
}
