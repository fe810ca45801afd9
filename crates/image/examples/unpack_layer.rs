//! Unpacks one layer blob (gzip, zstd or plain tar) into a directory and prints the time.
//! Used by bench/image-unpack.sh: `unpack_layer LAYER OUTDIR`.

use std::time::Instant;

use agora_image::spec::Compression;
use agora_image::unpack::{unpack_blob, UnpackOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(layer), Some(out)) = (args.next(), args.next()) else {
        eprintln!("usage: unpack_layer LAYER OUTDIR");
        std::process::exit(2);
    };
    let mut head = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open(&layer)?, &mut head)?;
    let compression = Compression::sniff(&head);
    std::fs::create_dir_all(&out)?;
    let start = Instant::now();
    let f = std::fs::File::open(&layer)?;
    let mut opts = UnpackOptions::default();
    if let Some(n) = std::env::var("AGORA_IMAGE_WRITERS").ok().and_then(|v| v.parse().ok()) {
        opts.writer_threads = n;
    }
    let (stats, digests) = unpack_blob(f, compression, agora_image::digest::Algorithm::Sha256, out.as_ref(), &opts)?;
    let secs = start.elapsed().as_secs_f64();
    println!("{secs:.4} {} files, {} bytes, diff_id {}", stats.files, stats.file_bytes, digests.diff_id);
    Ok(())
}
