//! Test support: the registry fixture (started per test, stopped by a Drop guard), a
//! counting HTTP proxy, and helpers. Also used by the agora crate's image end-to-end tests
//! (`#[path]`), so it uses std and tokio only.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const FIXTURES: &str = "/work/shared/fixtures";

/// The fixture scripts, or None (the test then skips with a message).
pub fn fixtures_dir() -> Option<PathBuf> {
    let d = std::env::var("AGORA_FIXTURES").map(PathBuf::from).unwrap_or_else(|_| {
        // shared/ sits beside the repository in CI clones.
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let beside = here.join("../../../shared/fixtures");
        if beside.join("registry.sh").exists() {
            beside
        } else {
            PathBuf::from(FIXTURES)
        }
    });
    if d.join("registry.sh").exists() && d.join("make-images.sh").exists() {
        Some(d)
    } else {
        eprintln!("SKIP: fixture scripts not found at {} (set AGORA_FIXTURES)", d.display());
        None
    }
}

/// Images built by make-images.sh (shared by all tests; the script is idempotent and locks).
pub fn images_dir() -> PathBuf {
    let fx = fixtures_dir().expect("fixtures");
    let out = std::env::temp_dir().join("agora-image-test-images");
    let log = std::env::temp_dir().join(format!("agora-image-make-images-{}.log", std::process::id()));
    let st = Command::new("bash")
        .arg(fx.join("make-images.sh"))
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(log.with_extension("err")).expect("log"))
        .status()
        .expect("make-images.sh");
    assert!(st.success(), "make-images.sh failed; see {}", log.display());
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(log.with_extension("err"));
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A running registry fixture; stopped (by its own `stop`) on drop.
pub struct Registry {
    pub addr: String,
    state: PathBuf,
    script: PathBuf,
    log: PathBuf,
}

impl Registry {
    /// Starts a registry in `mode` ("", "--auth", "--token") with the fixture images pushed.
    pub fn start(mode: &str) -> Registry {
        static N: AtomicUsize = AtomicUsize::new(0);
        let fx = fixtures_dir().expect("fixtures");
        let images = images_dir();
        let state = std::env::temp_dir().join(format!(
            "agora-image-test-registry-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let script = fx.join("registry.sh");
        let log = std::env::temp_dir()
            .join(format!("agora-image-registry-{}.log", state.file_name().expect("n").to_string_lossy()));
        let mut reg = Registry { addr: String::new(), state: state.clone(), script: script.clone(), log: log.clone() };
        let mut cmd = Command::new("bash");
        cmd.arg(&script).arg("start");
        if !mode.is_empty() {
            cmd.arg(mode);
        }
        let out = cmd
            .env("REGISTRY_STATE", &state)
            .env("REGISTRY_PORT", free_port().to_string())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .output()
            .expect("registry.sh start");
        assert!(out.status.success(), "registry.sh start failed; see {}", log.display());
        reg.addr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let st = Command::new("bash")
            .arg(&script)
            .arg("push")
            .arg(&images)
            .env("REGISTRY_STATE", &state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log.with_extension("push")).expect("log"))
            .status()
            .expect("registry.sh push");
        assert!(st.success(), "registry.sh push failed; see {}", log.with_extension("push").display());
        reg
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .env("REGISTRY_STATE", &self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
            let _ = std::fs::remove_file(self.log.with_extension("push"));
        }
    }
}

/// A plain-HTTP forwarding proxy that counts requests by path and can be switched off
/// (connections refused/cut) to simulate a registry that went away.
pub struct CountingProxy {
    pub addr: SocketAddr,
    pub counts: Arc<Mutex<HashMap<String, usize>>>,
    pub up: Arc<AtomicBool>,
    /// Bytes per second of response bodies (0 = unlimited).
    pub throttle: Arc<AtomicUsize>,
    /// When non-zero: cut the next blob response after this many bytes (once).
    pub cut_once_after: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(upstream: &str) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let up = Arc::new(AtomicBool::new(true));
        let throttle = Arc::new(AtomicUsize::new(0));
        let cut = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_string();
        let (c2, u2, t2, x2) = (counts.clone(), up.clone(), throttle.clone(), cut.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                if !u2.load(Ordering::SeqCst) {
                    drop(sock);
                    continue;
                }
                let (c3, u3, t3, up3, x3) = (c2.clone(), u2.clone(), t2.clone(), upstream.clone(), x2.clone());
                tokio::spawn(async move {
                    let _ = proxy_conn(sock, &up3, c3, u3, t3, x3).await;
                });
            }
        });
        CountingProxy { addr, counts, up, throttle, cut_once_after: cut, task }
    }

    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.counts.lock().expect("lock").iter().filter(|(k, _)| pred(k)).map(|(_, v)| *v).sum()
    }

    pub fn blob_counts(&self) -> HashMap<String, usize> {
        self.counts
            .lock()
            .expect("lock")
            .iter()
            .filter(|(k, _)| k.contains("/blobs/"))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn reset(&self) {
        self.counts.lock().expect("lock").clear();
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: read a request head, count it, open a fresh upstream connection, send
/// it with `Connection: close`, and stream the answer back, then close.
async fn proxy_conn(
    mut client: TcpStream,
    upstream: &str,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    up: Arc<AtomicBool>,
    throttle: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut b).await? == 0 {
            return Ok(());
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let path = text.split(' ').nth(1).unwrap_or("").to_string();
    if text.to_ascii_lowercase().contains("\r\nrange:") {
        *counts.lock().expect("lock").entry(format!("RANGE {path}")).or_insert(0) += 1;
    }
    let is_blob = path.contains("/blobs/");
    *counts.lock().expect("lock").entry(path).or_insert(0) += 1;
    let mut lines: Vec<&str> =
        text.trim_end().split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
    lines.push("Connection: close");
    let req = format!("{}\r\n\r\n", lines.join("\r\n"));
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(req.as_bytes()).await?;
    // Read the response fully (upstream closes), forward it with Connection: close.
    let mut buf = vec![0u8; 16384];
    let mut sent = 0usize;
    loop {
        if !up.load(Ordering::SeqCst) {
            return Ok(()); // cut mid-response
        }
        let n = server.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        client.write_all(&buf[..n]).await?;
        sent += n;
        let c = cut.load(Ordering::SeqCst);
        if is_blob && c > 0 && sent >= c && cut.compare_exchange(c, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return Ok(()); // cut once, mid-body
        }
        let bps = throttle.load(Ordering::SeqCst);
        if bps > 0 {
            tokio::time::sleep(std::time::Duration::from_secs_f64(n as f64 / bps as f64)).await;
        }
    }
    Ok(())
}

/// Parses expected/multilayer.txt and checks `root` against it.
pub fn check_multilayer(root: &Path, expected_file: &Path) {
    let text = std::fs::read_to_string(expected_file).expect("expected file");
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(p) = line.strip_prefix('!') {
            let p = root.join(p.trim_start_matches('/'));
            assert!(std::fs::symlink_metadata(&p).is_err(), "{} must not exist", p.display());
            continue;
        }
        let mut parts = line.split_whitespace();
        let path = parts.next().expect("path");
        let kind = parts.next().expect("kind");
        let content: Vec<&str> = parts.collect();
        let p = root.join(path.trim_start_matches('/'));
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(kind, "file");
        assert!(m.is_file(), "{} is not a regular file", p.display());
        let content = content.join(" ");
        if !content.starts_with('(') {
            let got = std::fs::read_to_string(&p).expect("read");
            assert_eq!(got.trim_end(), content, "{}", p.display());
        }
    }
    // No whiteout marker may remain.
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            assert!(!name.contains(".wh."), "whiteout left at {}", e.path().display());
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            }
        }
    }
}

pub fn digests(images: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(images.join("digests.txt"))
        .expect("digests.txt")
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect()
}
