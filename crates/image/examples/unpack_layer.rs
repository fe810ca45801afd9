//! Unpacks one layer blob (gzip, zstd or plain tar) into a directory and prints the time.
//! Used by bench/image-unpack.sh and bench/image-pull.sh: `unpack_layer LAYER OUTDIR`, or
//! `unpack_layer --decompress-only LAYER` to time this crate's decoder alone (the blob
//! decompressed into nothing, no hashing), the pipeline's decompression stage by itself.

use std::io::Read;
use std::time::Instant;

use agora_image::digest::Algorithm;
use agora_image::spec::Compression;
use agora_image::unpack::{unpack_blob, UnpackOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let decompress_only = args.first().is_some_and(|a| a == "--decompress-only");
    if decompress_only {
        args.remove(0);
    }
    let usage = || -> ! {
        eprintln!("usage: unpack_layer LAYER OUTDIR | unpack_layer --decompress-only LAYER");
        std::process::exit(2);
    };
    let Some(layer) = args.first().cloned() else { usage() };
    let mut head = [0u8; 4];
    std::fs::File::open(&layer)?.read_exact(&mut head)?;
    let compression = Compression::sniff(&head);
    let start = Instant::now();
    let f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&layer)?);
    if decompress_only {
        let mut decoder: Box<dyn Read> = match compression {
            Compression::None => Box::new(f),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(f)?),
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = decoder.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{secs:.4} decompressed {total} bytes");
        return Ok(());
    }
    let Some(out) = args.get(1).cloned() else { usage() };
    std::fs::create_dir_all(&out)?;
    let mut opts = UnpackOptions::default();
    if let Some(n) = std::env::var("AGORA_IMAGE_WRITERS").ok().and_then(|v| v.parse().ok()) {
        opts.writer_threads = n;
    }
    let (stats, digests) = unpack_blob(f, compression, Algorithm::Sha256, out.as_ref(), &opts)?;
    let secs = start.elapsed().as_secs_f64();
    println!("{secs:.4} {} files, {} bytes, diff_id {}", stats.files, stats.file_bytes, digests.diff_id);
    Ok(())
}
