//! The etcd store and election against a real etcd (the `etcd.sh` fixture, one member, in
//! its own state dir and ports), stopped by its PID files even when a test fails.
use agora_registry::election::{self, ElectionConfig, ElectionEvent};
use agora_registry::etcd::{parse_endpoints, EtcdClient};
use agora_registry::{EtcdStore, Op, RegistryError, Store};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

struct Etcd {
    state: PathBuf,
    endpoints: String,
}

/// `$AGORA_FIXTURES/etcd.sh`, by default the steering repo's `shared/fixtures` next to
/// this checkout, else `/work/shared/fixtures`.
fn fixture() -> PathBuf {
    match std::env::var_os("AGORA_FIXTURES") {
        Some(d) => PathBuf::from(d).join("etcd.sh"),
        None => {
            let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/etcd.sh");
            if beside.exists() {
                beside
            } else {
                PathBuf::from("/work/shared/fixtures/etcd.sh")
            }
        }
    }
}

impl Etcd {
    fn start(base_port: u16) -> Etcd {
        let state = std::env::temp_dir().join(format!("agora-registry-etcd-{}", uuid::Uuid::new_v4()));
        let out = Command::new("bash")
            .arg(fixture())
            .args(["start", "1"])
            .env("ETCD_STATE", &state)
            .env("ETCD_BASE_PORT", base_port.to_string())
            .output()
            .expect("run etcd.sh");
        let guard = Etcd { state, endpoints: String::from_utf8_lossy(&out.stdout).trim().to_string() };
        assert!(out.status.success(), "etcd.sh start failed: {}", String::from_utf8_lossy(&out.stderr));
        guard
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(fixture()).arg("stop").env("ETCD_STATE", &self.state).status();
    }
}

fn client(e: &Etcd) -> EtcdClient {
    EtcdClient::new(parse_endpoints(&e.endpoints).expect("endpoints"), Duration::from_secs(1))
}

async fn next(rx: &mut mpsc::UnboundedReceiver<ElectionEvent>) -> ElectionEvent {
    tokio::time::timeout(Duration::from_secs(15), rx.recv()).await.expect("election event in time").expect("event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_election_and_fencing() {
    let etcd = Etcd::start(24_310);
    let c = client(&etcd);
    // A dead endpoint first in the list costs nothing but a refused connection.
    let mut eps = vec!["http://127.0.0.1:1".to_string()];
    eps.extend(parse_endpoints(&etcd.endpoints).expect("endpoints"));
    let with_dead = EtcdClient::new(eps, Duration::from_secs(1));

    let key = agora_registry::leader_key("/t1");
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let (ab_tx, ab_rx) = mpsc::unbounded_channel();
    let cfg = ElectionConfig { key: key.clone(), value: b"one".to_vec(), ttl: Duration::from_secs(2) };
    let one = tokio::spawn(election::run(with_dead.clone(), cfg, ev_tx, ab_rx));
    let ElectionEvent::Elected(fence) = next(&mut ev_rx).await else { panic!("first contender is not elected") };

    // A second contender follows and sees the first one's value.
    let (ev2_tx, mut ev2_rx) = mpsc::unbounded_channel();
    let (_ab2_tx, ab2_rx) = mpsc::unbounded_channel();
    let cfg2 = ElectionConfig { key: key.clone(), value: b"two".to_vec(), ttl: Duration::from_secs(2) };
    let two = tokio::spawn(election::run(c.clone(), cfg2, ev2_tx, ab2_rx));
    assert_eq!(next(&mut ev2_rx).await, ElectionEvent::Following(Some(b"one".to_vec())));

    // The registry conformance suite, fenced by the first contender's key.
    let f = fence.clone();
    let wc = with_dead.clone();
    let open = move || EtcdStore::new(wc.clone(), "/t1", f.clone(), Duration::from_secs(10));
    run_suite(open).await;

    // The first contender abdicates: it reports Lost, the second is elected, and the first
    // one's store can no longer write.
    let started = Instant::now();
    ab_tx.send(()).expect("abdicate");
    assert_eq!(next(&mut ev_rx).await, ElectionEvent::Lost);
    let fence2 = loop {
        match next(&mut ev2_rx).await {
            ElectionEvent::Elected(f) => break f,
            ElectionEvent::Following(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    println!("handover after abdication: {:?}", started.elapsed());
    assert_ne!(fence2.create_revision, fence.create_revision);
    let mut stale = EtcdStore::new(c.clone(), "/t1", fence.clone(), Duration::from_secs(5));
    let err = stale.apply(&[Op::RemoveFramework { framework_id: "x".into() }]).await.expect_err("fenced");
    assert!(matches!(err, RegistryError::Fenced { .. }), "{err}");
    let mut fresh = EtcdStore::new(c.clone(), "/t1", fence2.clone(), Duration::from_secs(5));
    fresh.apply(&[Op::RemoveFramework { framework_id: "x".into() }]).await.expect("the new leader writes");

    // The second contender dies without a word: once its lease runs out, the first one is
    // elected again.
    two.abort();
    let gone = Instant::now();
    loop {
        match next(&mut ev_rx).await {
            ElectionEvent::Elected(f) => {
                assert!(f.create_revision > fence2.create_revision);
                break;
            }
            ElectionEvent::Following(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    println!("re-elected {:?} after the leader died (TTL 2 s)", gone.elapsed());
    assert!(gone.elapsed() < Duration::from_secs(5));
    one.abort();
    drop(etcd);
}

async fn run_suite<F: FnMut() -> EtcdStore>(mut open: F) {
    // A compact version of the crate's conformance suite (that one is crate-private).
    let mut s = open();
    assert!(s.recover().await.expect("recover").is_empty());
    let agent = |id: &str, port: u32| agora_registry::AgentRecord {
        info: agora_api::AgentInfo {
            hostname: "127.0.0.1".into(),
            port,
            resources: vec![],
            attributes: vec![],
            id: Some(agora_api::AgentId::new(id)),
            domain: None,
        },
        pid: format!("slave(1)@127.0.0.1:{port}"),
        version: "1.11.0".into(),
    };
    let mut ops = vec![];
    for i in 0..300u32 {
        ops.push(Op::AdmitAgent { agent: agent(&format!("a{i}"), i) });
    }
    ops.push(Op::MarkUnreachable { agent_id: "a1".into(), time: 2.0 });
    ops.push(Op::MarkGone { agent_id: "a2".into(), time: 3.0 });
    ops.push(Op::SetWeights { weights: [("web".to_string(), 2.0)].into_iter().collect() });
    let quota: agora_api::quota::QuotaConfig =
        serde_json::from_str(r#"{"role":"dev","limits":{"cpus":{"value":3}}}"#).expect("quota");
    ops.push(Op::SetQuotas { quotas: [("dev".to_string(), quota.clone())].into_iter().collect() });
    let maintenance: agora_api::maintenance::MaintenanceState = serde_json::from_str(
        r#"{"schedule":{"windows":[{"machine_ids":[{"hostname":"h"}],"unavailability":{"start":{"nanoseconds":5}}}]},
            "down":[{"hostname":"h"}]}"#,
    )
    .expect("maintenance");
    ops.push(Op::SetMaintenance { maintenance: maintenance.clone() });
    ops.push(Op::MarkGone { agent_id: "a3".into(), time: 3.0 });
    ops.push(Op::MarkUnreachable { agent_id: "a4".into(), time: 3.0 });
    ops.push(Op::ForgetAgents { agent_ids: vec!["a3".into(), "a4".into()] });
    // 300 admissions need several transactions; a1 twice needs a split too.
    s.apply(&ops).await.expect("apply");
    let r = open().recover().await.expect("recover");
    assert_eq!(r.agents.len(), 296);
    assert_eq!(r.unreachable.get("a1"), Some(&2.0));
    assert_eq!(r.gone.get("a2"), Some(&3.0));
    assert!(!r.gone.contains_key("a3") && !r.unreachable.contains_key("a4"), "forgotten");
    assert_eq!(r.quotas.get("dev"), Some(&quota));
    assert_eq!(r.maintenance, maintenance);
    assert_eq!(r.weights.get("web"), Some(&2.0));
    assert_eq!(r.agents.get("a7"), Some(&agent("a7", 7)));
    let mut s = open();
    s.apply(&[Op::AdmitAgent { agent: agent("a1", 1) }]).await.expect("re-admit");
    let r = open().recover().await.expect("recover");
    assert!(r.unreachable.is_empty() && r.agents.contains_key("a1"));
}
