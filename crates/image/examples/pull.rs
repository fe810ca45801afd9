//! Cold pull + provision (copy backend) of one image from an insecure registry into a fresh
//! store, printing the seconds taken. Used by bench/image-pull.sh: `pull REF STORE_DIR ROOTFS_PARENT`
//! (`AGORA_BENCH_NO_PROVISION=1`: the pull alone, no rootfs). Prints the seconds from start
//! (store opened, TLS roots loaded, pulled, provisioned) and, as `pull=S`, those of the
//! pull itself in a store already open, as in an agent, which opens its store once.

use std::time::Instant;

use agora_image::{Backend, Provisioner, PullOptions, Reference, Store, StoreConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 3 {
        eprintln!("usage: pull REF STORE_DIR PROVISIONER_DIR");
        std::process::exit(2);
    }
    let r = Reference::parse(&args[0])?;
    let mut cfg = StoreConfig::new(&args[1]);
    cfg.registry.insecure = vec![r.registry().to_string()];
    cfg.sync = std::env::var("AGORA_IMAGE_SYNC").is_ok_and(|v| v == "1");
    let start = Instant::now();
    let store = Store::open(cfg).await?;
    let pull_start = Instant::now();
    let img = store.pull(&r, &PullOptions::default()).await?;
    let pull = pull_start.elapsed().as_secs_f64();
    if std::env::var("AGORA_BENCH_NO_PROVISION").is_ok_and(|v| v == "1") {
        println!("{:.4} {} pull={pull:.4}", start.elapsed().as_secs_f64(), img.id);
        return Ok(());
    }
    let prov = Provisioner::open(&args[2], store.clone())?;
    let rootfs = prov.provision("bench", &img, Backend::Copy).await?;
    println!("{:.4} {} pull={pull:.4}", start.elapsed().as_secs_f64(), rootfs.display());
    Ok(())
}
