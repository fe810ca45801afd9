//! Feeds a [`Store`] its changes in order without making the submitter wait: changes queue
//! up while a write is in flight and go out together in the next one (group commit). After
//! each write the `notify` callback gets the tags of the changes it carried and the result;
//! after a failed write the writer stops (every later change is refused) and the store
//! must be recovered again before anything else is written.
use crate::{Op, RegistryError, Store};
use tokio::sync::mpsc;

/// At most this many operations go into one write.
pub const MAX_BATCH_OPS: usize = 512;

pub struct Writer<T> {
    tx: mpsc::UnboundedSender<(Vec<Op>, T)>,
    task: tokio::task::JoinHandle<()>,
}

impl<T: Send + 'static> Writer<T> {
    pub fn spawn<S: Store>(mut store: S, notify: impl Fn(Vec<T>, Result<(), RegistryError>) + Send + 'static) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<Op>, T)>();
        let task = tokio::spawn(async move {
            while let Some((first, tag)) = rx.recv().await {
                let mut ops = first;
                let mut tags = vec![tag];
                while ops.len() < MAX_BATCH_OPS {
                    match rx.try_recv() {
                        Ok((more, tag)) => {
                            ops.extend(more);
                            tags.push(tag);
                        }
                        Err(_) => break,
                    }
                }
                let r = store.apply(&ops).await;
                let failed = r.is_err();
                if let Err(e) = &r {
                    tracing::error!(error = %e, ops = ops.len(), "registry write failed");
                }
                notify(tags, r);
                if failed {
                    return;
                }
            }
        });
        Writer { tx, task }
    }

    /// Queues a change; false when the writer has stopped after a failure.
    pub fn submit(&self, ops: Vec<Op>, tag: T) -> bool {
        self.tx.send((ops, tag)).is_ok()
    }
}

impl<T> Drop for Writer<T> {
    /// Dropping the writer abandons what is queued; a write in flight may still land (the
    /// etcd store's fence keeps it harmless once leadership has moved on).
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{conformance, EmbeddedStore, Registry};
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn changes_are_written_in_order_and_batched() {
        let dir = std::env::temp_dir().join(format!("agora-writer-{}", uuid::Uuid::new_v4()));
        let mut store = EmbeddedStore::new(&dir);
        store.recover().await.expect("recover");
        type Seen = Vec<(Vec<u32>, bool)>;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let s = seen.clone();
        let w = Writer::spawn(store, move |tags, r| s.lock().expect("lock").push((tags, r.is_ok())));
        for i in 0..100u32 {
            assert!(w.submit(vec![Op::AdmitAgent { agent: conformance::agent(&format!("a{i}"), i) }], i));
        }
        assert!(w.submit(vec![Op::MarkUnreachable { agent_id: "a7".into(), time: 1.0 }], 100));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let done: usize = seen.lock().expect("lock").iter().map(|(t, _)| t.len()).sum();
            if done == 101 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "writes did not complete");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let seen = seen.lock().expect("lock").clone();
        let order: Vec<u32> = seen.iter().flat_map(|(t, _)| t.clone()).collect();
        assert_eq!(order, (0..=100).collect::<Vec<_>>());
        assert!(seen.iter().all(|(_, ok)| *ok));
        assert!(seen.len() < 101, "queued changes share writes");
        let r: Registry = EmbeddedStore::new(&dir).recover().await.expect("recover");
        assert_eq!(r.agents.len(), 99);
        assert_eq!(r.unreachable.get("a7"), Some(&1.0));
        let _ = std::fs::remove_dir_all(dir);
    }
}
