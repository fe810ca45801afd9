//! The embedded registry store: a JSON snapshot plus an append log under the master's work
//! dir. Each write appends one line (the batch of operations, JSON) and fsyncs it before it
//! is acknowledged; once the log holds more lines than the snapshot has entries (at least
//! [`COMPACT_AFTER`]), the state is written to a new snapshot (write, fsync, rename, fsync
//! the directory) and the log is emptied. Recovery reads the snapshot and replays the log; a
//! last line without its newline is a write that never completed (it was never
//! acknowledged) and is cut off. Operations are idempotent, so replaying a log whose
//! truncation was interrupted by a crash after a compaction changes nothing.
use crate::{Op, Registry, RegistryError, Store};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const SNAPSHOT: &str = "registry.json";
pub const LOG: &str = "registry.log";
/// The log is compacted once it has this many lines, or as many as the snapshot has entries.
pub const COMPACT_AFTER: usize = 1000;

struct Inner {
    dir: PathBuf,
    state: Registry,
    log: Option<File>,
    lines: usize,
    broken: bool,
}

/// The default registry store of a single master.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Mutex<Inner>>,
}

fn io(path: &Path, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Io { path: path.to_path_buf(), why: e.to_string() }
}

fn fsync_dir(dir: &Path) -> Result<(), RegistryError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))
}

impl EmbeddedStore {
    /// A store in `dir` (created on recovery if missing).
    pub fn new(dir: impl Into<PathBuf>) -> EmbeddedStore {
        EmbeddedStore {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.into(),
                state: Registry::default(),
                log: None,
                lines: 0,
                broken: false,
            })),
        }
    }

    /// Runs `f` on the store's state in a blocking thread (file I/O and fsync).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let inner = self.inner.clone();
        let dir = match self.inner.lock() {
            Ok(g) => g.dir.clone(),
            Err(p) => p.into_inner().dir.clone(),
        };
        tokio::task::spawn_blocking(move || {
            let mut g = match inner.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            f(&mut g)
        })
        .await
        .map_err(|e| io(&dir, e))?
    }
}

impl Inner {
    fn recover(&mut self) -> Result<Registry, RegistryError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let snap = self.dir.join(SNAPSHOT);
        let mut state = match std::fs::read(&snap) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| RegistryError::Corrupt {
                path: snap.clone(),
                offset: e.column(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Registry::default(),
            Err(e) => return Err(io(&snap, e)),
        };
        let log_path = self.dir.join(LOG);
        let bytes = match std::fs::read(&log_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&log_path, e)),
        };
        // Complete lines (a torn last write has no newline), decoded in parallel: a master
        // failover waits for this, and the log of 40,000 agents is tens of megabytes.
        let mut starts = Vec::new();
        let mut good = 0usize;
        while let Some(nl) = bytes[good..].iter().position(|b| *b == b'\n') {
            starts.push((good, good + nl));
            good += nl + 1;
        }
        let lines = starts.len();
        let decode = |chunk: &[(usize, usize)]| -> Result<Vec<Vec<Op>>, RegistryError> {
            chunk
                .iter()
                .map(|&(a, b)| {
                    serde_json::from_slice(&bytes[a..b]).map_err(|e| RegistryError::Corrupt {
                        path: log_path.clone(),
                        offset: a,
                        why: e.to_string(),
                    })
                })
                .collect()
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let decoded: Vec<Result<Vec<Vec<Op>>, RegistryError>> = if threads < 2 || bytes.len() < (1 << 20) {
            vec![decode(&starts)]
        } else {
            let per = starts.len().div_ceil(threads).max(1);
            std::thread::scope(|s| {
                let handles: Vec<_> = starts.chunks(per).map(|c| s.spawn(move || decode(c))).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(io(&log_path, "a registry log decoder panicked"))))
                    .collect()
            })
        };
        // Applied in log order; the first undecodable line (in order) is the error.
        for chunk in decoded {
            for ops in chunk? {
                for op in &ops {
                    state.apply(op);
                }
            }
        }
        let log = OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| io(&log_path, e))?;
        if good < bytes.len() {
            tracing::warn!(path = %log_path.display(), bytes = bytes.len() - good, "cutting off an incomplete last registry write");
            log.set_len(good as u64).map_err(|e| io(&log_path, e))?;
            log.sync_all().map_err(|e| io(&log_path, e))?;
        }
        fsync_dir(&self.dir)?;
        self.state = state.clone();
        self.log = Some(log);
        self.lines = lines;
        self.broken = false;
        Ok(state)
    }

    fn apply(&mut self, ops: &[Op]) -> Result<(), RegistryError> {
        if self.broken {
            return Err(RegistryError::Broken);
        }
        let log_path = self.dir.join(LOG);
        let Some(log) = self.log.as_mut() else { return Err(RegistryError::Broken) };
        let mut line = serde_json::to_vec(ops).map_err(|e| io(&log_path, e))?;
        line.push(b'\n');
        if let Err(e) = log.write_all(&line).and_then(|_| log.sync_data()) {
            // The log may end in a torn line now: nothing more is appended until a recovery
            // has cut it off.
            self.broken = true;
            return Err(io(&log_path, e));
        }
        for op in ops {
            self.state.apply(op);
        }
        self.lines += 1;
        if self.lines >= COMPACT_AFTER.max(self.state.len()) {
            if let Err(e) = self.compact() {
                self.broken = true;
                return Err(e);
            }
        }
        Ok(())
    }

    fn compact(&mut self) -> Result<(), RegistryError> {
        let snap = self.dir.join(SNAPSHOT);
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        let body = serde_json::to_vec(&self.state).map_err(|e| io(&snap, e))?;
        let mut f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(&body).and_then(|_| f.sync_all()).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &snap).map_err(|e| io(&snap, e))?;
        fsync_dir(&self.dir)?;
        if let Some(log) = self.log.as_mut() {
            let log_path = self.dir.join(LOG);
            log.set_len(0).and_then(|_| log.sync_all()).map_err(|e| io(&log_path, e))?;
        }
        self.lines = 0;
        Ok(())
    }
}

impl Store for EmbeddedStore {
    async fn recover(&mut self) -> Result<Registry, RegistryError> {
        self.blocking(|i| i.recover()).await
    }

    async fn apply(&mut self, ops: &[Op]) -> Result<(), RegistryError> {
        let ops = ops.to_vec();
        self.blocking(move |i| i.apply(&ops)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("agora-registry-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[tokio::test]
    async fn conformance_suite() {
        let dir = tempdir();
        let d = dir.clone();
        conformance::suite(move || EmbeddedStore::new(d.clone()), 1500).await;
        // 1500 writes to ~100 entries: compacted at least once.
        assert!(dir.join(SNAPSHOT).exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_torn_last_write_is_cut_off_and_writes_go_on() {
        let dir = tempdir();
        let mut s = EmbeddedStore::new(&dir);
        s.recover().await.expect("recover");
        s.apply(&[Op::AdmitAgent { agent: conformance::agent("a1", 1) }]).await.expect("write");
        // A crash in the middle of the next append.
        let mut f = OpenOptions::new().append(true).open(dir.join(LOG)).expect("open log");
        f.write_all(br#"[{"op":"admit_agent","agent":{"info":{"host"#).expect("torn write");
        drop(f);
        let mut s = EmbeddedStore::new(&dir);
        let r = s.recover().await.expect("recover after a torn write");
        assert_eq!(r.agents.keys().collect::<Vec<_>>(), vec!["a1"]);
        s.apply(&[Op::AdmitAgent { agent: conformance::agent("a2", 2) }]).await.expect("write after");
        let r = EmbeddedStore::new(&dir).recover().await.expect("recover again");
        assert_eq!(r.agents.keys().collect::<Vec<_>>(), vec!["a1", "a2"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn corruption_in_the_middle_is_an_error_not_a_silent_loss() {
        let dir = tempdir();
        let mut s = EmbeddedStore::new(&dir);
        s.recover().await.expect("recover");
        s.apply(&[Op::AdmitAgent { agent: conformance::agent("a1", 1) }]).await.expect("write");
        s.apply(&[Op::AdmitAgent { agent: conformance::agent("a2", 2) }]).await.expect("write");
        let log = dir.join(LOG);
        let mut bytes = std::fs::read(&log).expect("read log");
        bytes[3] = b'#';
        std::fs::write(&log, bytes).expect("corrupt");
        let err = EmbeddedStore::new(&dir).recover().await.expect_err("corrupt log");
        assert!(matches!(err, RegistryError::Corrupt { offset: 0, .. }), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_big_log_is_decoded_in_parallel_and_applied_in_order() {
        let dir = tempdir();
        std::fs::create_dir_all(&dir).expect("dir");
        // Over 1 MB, so the decoding is split between threads; the last line undoes the first.
        let mut log = Vec::new();
        let mut offsets = Vec::new();
        for i in 0..6000u32 {
            offsets.push(log.len());
            let op = Op::AdmitAgent { agent: conformance::agent(&format!("a{i}"), i) };
            log.extend_from_slice(&serde_json::to_vec(&[op]).expect("encode"));
            log.push(b'\n');
        }
        log.extend_from_slice(&serde_json::to_vec(&[Op::RemoveAgent { agent_id: "a0".into() }]).expect("encode"));
        log.push(b'\n');
        assert!(log.len() > 1 << 20);
        std::fs::write(dir.join(LOG), &log).expect("write log");
        let reg = EmbeddedStore::new(&dir).recover().await.expect("recover");
        assert_eq!(reg.agents.len(), 5999);
        assert!(!reg.agents.contains_key("a0") && reg.agents.contains_key("a5999"));
        // A bad line late in the log names its own offset.
        let bad = offsets[4500];
        log[bad + 2] = b'#';
        std::fs::write(dir.join(LOG), &log).expect("corrupt");
        let err = EmbeddedStore::new(&dir).recover().await.expect_err("corrupt log");
        assert!(matches!(err, RegistryError::Corrupt { offset, .. } if offset == bad), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
