//! Criterion: unpacking a synthetic many-small-files layer (gzip) and parsing references.

use std::io::Write;

use agora_image::digest::Algorithm;
use agora_image::spec::Compression;
use agora_image::unpack::{unpack_blob, UnpackOptions};
use agora_image::Reference;
use criterion::{criterion_group, criterion_main, Criterion};

fn layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..2000 {
        let data = format!("file {i} {}", "x".repeat(i % 700));
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("usr/lib/d{}/f{i}.py", i % 40), data.as_bytes()).expect("append");
    }
    let tar = b.into_inner().expect("tar");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&tar).expect("gzip");
    e.finish().expect("gzip")
}

fn bench(c: &mut Criterion) {
    let gz = layer();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut n = 0;
    c.bench_function("unpack 2000 small files (gzip)", |b| {
        b.iter(|| {
            n += 1;
            let out = tmp.path().join(n.to_string());
            std::fs::create_dir(&out).expect("mkdir");
            unpack_blob(
                std::io::Cursor::new(gz.clone()),
                Compression::Gzip,
                Algorithm::Sha256,
                &out,
                &UnpackOptions::default(),
            )
            .expect("unpack");
            std::fs::remove_dir_all(&out).expect("cleanup");
        })
    });
    c.bench_function("parse reference", |b| {
        b.iter(|| Reference::parse("127.0.0.1:5000/team/app:v1.2.3").expect("parse"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
