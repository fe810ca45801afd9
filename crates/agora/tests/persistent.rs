//! Reservations and persistent volumes, end to end: real `agora master` / `agora agent`
//! processes; a framework in role `db` reserves resources and creates a volume in one
//! ACCEPT, a task writes to it, a later task reads the data back, the volume is offered
//! again after an agent crash and a master restart, DESTROY deletes the data and UNRESERVE
//! gives the resources back. The operator API's RESERVE_RESOURCES / CREATE_VOLUMES /
//! DESTROY_VOLUMES / UNRESERVE_RESOURCES with their refusals, and static reservations.
#![allow(clippy::unwrap_used)] // test helpers may panic

mod common;

use agora_api::resources::{ReservationInfo, ReservationType};
use agora_api::scheduler::{self as sched, EventType};
use agora_api::*;
use agora_http::http::StatusCode;
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn framework(name: &str, role: &str) -> FrameworkInfo {
    let mut i = info(name, true, 0.0);
    i.roles = vec![role.into()];
    i.principal = Some("ops".into());
    i
}

fn reserved(mut r: Resource, role: &str) -> Resource {
    r.reservations.push(ReservationInfo {
        kind: Some(ReservationType::Dynamic),
        role: Some(role.into()),
        principal: Some("ops".into()),
        labels: None,
    });
    r
}

fn volume(disk: Resource, id: &str, path: &str) -> Resource {
    let mut v = disk;
    v.disk = Some(Box::new(serde_json::json!({
        "persistence": {"id": id, "principal": "ops"},
        "volume": {"container_path": path, "mode": "RW"}})));
    v
}

fn op(kind: sched::OperationType, field: &str, list: &[Resource]) -> sched::Operation {
    let payload = Some(serde_json::json!({ field: list }));
    let mut o = sched::Operation {
        kind,
        id: None,
        launch: None,
        launch_group: None,
        reserve: None,
        unreserve: None,
        create: None,
        destroy: None,
    };
    match kind {
        sched::OperationType::Reserve => o.reserve = payload,
        sched::OperationType::Unreserve => o.unreserve = payload,
        sched::OperationType::Create => o.create = payload,
        _ => o.destroy = payload,
    }
    o
}

fn launch(tasks: Vec<TaskInfo>) -> sched::Operation {
    sched::Operation {
        kind: sched::OperationType::Launch,
        id: None,
        launch: Some(sched::Launch { task_infos: tasks }),
        launch_group: None,
        reserve: None,
        unreserve: None,
        create: None,
        destroy: None,
    }
}

fn task_with(id: &str, agent: &AgentId, cmd: &str, resources: Vec<Resource>) -> TaskInfo {
    let mut t = task_info(id, agent, CommandInfo::shell(cmd), 0.1, 32.0);
    t.resources = resources;
    t
}

/// The next offer holding the persistent volume `id`, declining others.
async fn offer_with_volume(fw: &mut Fw, id: &str) -> (Offer, Resource) {
    let deadline = std::time::Instant::now() + T;
    loop {
        assert!(std::time::Instant::now() < deadline, "volume {id} was never offered");
        let Some(ev) = fw.next_matching(Duration::from_secs(5), |e| e.kind == EventType::Offers).await else {
            continue;
        };
        for o in ev.offers.map(|o| o.offers).unwrap_or_default() {
            if let Some(v) = o.resources.iter().find(|r| r.persistence_id() == Some(id)).cloned() {
                return (o, v);
            }
            fw.s.decline(vec![o.id.clone()], 0.0).await.unwrap();
        }
    }
}

async fn post(url: &str, body: &serde_json::Value) -> (StatusCode, String) {
    let r = agora_http::Client::new()
        .post(url, &[], serde_json::to_vec(body).unwrap(), Duration::from_secs(10))
        .await
        .expect("post");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_task_keeps_its_data_on_a_persistent_volume() {
    let mut c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, framework("db", "db")).await;
    let offer = one_offer(&mut fw).await;
    let agent = offer.agent_id.clone();
    let role = Some("db");
    let cpus = reserved(Resource::scalar("cpus", 1.0), "db").with_allocation(role);
    let mem = reserved(Resource::scalar("mem", 128.0), "db").with_allocation(role);
    let disk = reserved(Resource::scalar("disk", 64.0), "db").with_allocation(role);
    let vol = volume(disk.clone(), "pgdata", "data");
    // One ACCEPT: reserve, make the volume, launch a task on it.
    let writer = task_with(
        "writer",
        &agent,
        "echo first-run > data/file && sleep 600",
        vec![
            reserved(Resource::scalar("cpus", 0.5), "db").with_allocation(role),
            reserved(Resource::scalar("mem", 64.0), "db").with_allocation(role),
            vol.clone(),
        ],
    );
    let ops = vec![
        op(sched::OperationType::Reserve, "resources", &[cpus.clone(), mem.clone(), disk.clone()]),
        op(sched::OperationType::Create, "volumes", std::slice::from_ref(&vol)),
        launch(vec![writer]),
    ];
    fw.s.accept(vec![offer.id.clone()], ops, 0.0).await.unwrap();
    fw.until_state("writer", TaskState::Running, T).await;
    let data = c.dir.join("agent0/volumes/roles/db/pgdata/file");
    let written = wait_until(T, || async { std::fs::read_to_string(&data).ok().filter(|s| !s.is_empty()) }).await;
    assert_eq!(written.as_deref(), Some("first-run\n"), "{}", c.logs());
    let st = c.state().await;
    assert_eq!(st["slaves"][0]["reserved_resources"]["db"]["cpus"], 1.0, "{}", st["slaves"][0]);
    fw.s.kill(TaskId::new("writer"), Some(agent.clone())).await.unwrap();
    fw.until_state("writer", TaskState::Killed, T).await;

    // The volume comes back in an offer; a new task reads what the first one wrote.
    let (offer, v) = offer_with_volume(&mut fw, "pgdata").await;
    let reader = task_with(
        "reader",
        &agent,
        "cat data/file",
        vec![reserved(Resource::scalar("cpus", 0.5), "db").with_allocation(role), v],
    );
    fw.s.launch(vec![offer.id.clone()], vec![reader], 0.0).await.unwrap();
    let seen = until_terminal(&mut fw, "reader", T).await;
    assert_eq!(seen.last().unwrap().state, TaskState::Finished, "{seen:?}");
    assert_eq!(sandbox_file(&c, &fw, &agent, "reader", "stdout"), "first-run\n");

    // An agent crash and restart, then a master restart: still offered to db.
    c.crash_agent(0);
    c.restart_agent(0, &[]).unwrap();
    offer_with_volume(&mut fw, "pgdata").await;
    drop(fw);
    c.restart_master();
    c.wait_agents(1).await;
    let mut fw = Fw::subscribe(&c.master.addr, framework("db2", "db")).await;
    let (offer, v) = offer_with_volume(&mut fw, "pgdata").await;

    // DESTROY deletes the data; UNRESERVE gives the resources back.
    let ops = vec![op(sched::OperationType::Destroy, "volumes", std::slice::from_ref(&v))];
    fw.s.accept(vec![offer.id.clone()], ops, 0.0).await.unwrap();
    let gone = wait_until(T, || async { (!data.exists()).then_some(()) }).await;
    assert!(gone.is_some(), "DESTROY left the data: {}", c.logs());
    let offer = one_offer(&mut fw).await;
    let res = Resources::from_vec(offer.resources.clone());
    let to_free: Vec<Resource> = res.iter().filter(|r| r.dynamic_reservation().is_some()).cloned().collect();
    assert_eq!(to_free.len(), 3, "cpus, mem and disk still reserved: {res}");
    assert!(res.iter().all(|r| r.persistence_id().is_none()), "{res}");
    let ops = vec![op(sched::OperationType::Unreserve, "resources", &to_free)];
    fw.s.accept(vec![offer.id.clone()], ops, 0.0).await.unwrap();
    let unreserved = wait_until(T, || async {
        let st = c.state().await;
        st["slaves"][0]["reserved_resources"].as_object().is_some_and(|m| m.is_empty()).then_some(())
    })
    .await;
    assert!(unreserved.is_some(), "{}", c.state().await["slaves"][0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reservations_and_volumes_with_their_refusals() {
    let c = Cluster::start(1, &[], &["--resources", "cpus:4;cpus(web):2;mem:4096;disk:1000"]).await;
    let url = c.url("/api/v1");
    let agent = c.state().await["slaves"][0]["id"].as_str().unwrap().to_string();
    let call = |kind: &str, field: &str, list: &[Resource]| {
        let key = kind.to_lowercase();
        serde_json::json!({"type": kind, key: {"agent_id": {"value": agent}, field: list}})
    };
    // More than the agent has: 409, nothing changes.
    let too_much = reserved(Resource::scalar("cpus", 100.0), "web");
    let (status, text) = post(&url, &call("RESERVE_RESOURCES", "resources", &[too_much])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    let before = c.state().await["slaves"][0]["reserved_resources"].clone();
    assert_eq!(before["web"]["cpus"], 2.0, "the static reservation only: {before}");
    // Malformed: no reservation on the resource, an unknown agent.
    let (status, text) = post(&url, &call("RESERVE_RESOURCES", "resources", &[Resource::scalar("cpus", 1.0)])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let bad_agent = serde_json::json!({"type": "RESERVE_RESOURCES",
        "reserve_resources": {"agent_id": {"value": "nope"}, "resources": [reserved(Resource::scalar("cpus", 1.0), "web")]}});
    assert_eq!(post(&url, &bad_agent).await.0, StatusCode::BAD_REQUEST);

    // Reserve cpus and disk for web, make a volume; twice is refused.
    let disk = reserved(Resource::scalar("disk", 100.0), "web");
    let res = [reserved(Resource::scalar("cpus", 1.0), "web"), disk.clone()];
    let (status, text) = post(&url, &call("RESERVE_RESOURCES", "resources", &res)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let vol = volume(disk.clone(), "cache", "cache");
    let (status, text) = post(&url, &call("CREATE_VOLUMES", "volumes", std::slice::from_ref(&vol))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let dir = c.dir.join("agent0/volumes/roles/web/cache");
    assert!(wait_until(T, || async { dir.is_dir().then_some(()) }).await.is_some(), "{}", c.logs());
    let (status, text) = post(&url, &call("CREATE_VOLUMES", "volumes", std::slice::from_ref(&vol))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("already exists"), "{text}");
    let st = c.state().await;
    assert_eq!(st["slaves"][0]["reserved_resources"]["web"]["cpus"], 3.0, "{}", st["slaves"][0]);

    // A web task uses the volume: destroying it is refused while it runs.
    let mut fw = Fw::subscribe(&c.master.addr, framework("web", "web")).await;
    let (offer, v) = offer_with_volume(&mut fw, "cache").await;
    let mut cpu = Resource::scalar("cpus", 0.5);
    cpu.reservations = vec![ReservationInfo {
        kind: Some(ReservationType::Static),
        role: Some("web".into()),
        principal: None,
        labels: None,
    }];
    let t = task_with("user", &offer.agent_id, "sleep 600", vec![cpu.with_allocation(Some("web")), v]);
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.unwrap();
    fw.until_state("user", TaskState::Running, T).await;
    let (status, text) = post(&url, &call("DESTROY_VOLUMES", "volumes", std::slice::from_ref(&vol))).await;
    assert_eq!(status, StatusCode::CONFLICT, "in use: {text}");
    assert!(dir.is_dir());
    fw.s.kill(TaskId::new("user"), Some(offer.agent_id.clone())).await.unwrap();
    fw.until_state("user", TaskState::Killed, T).await;
    drop(fw);
    // Now free (its offers rescinded if need be): destroyed, then unreserved.
    let destroyed = wait_until(T, || async {
        (post(&url, &call("DESTROY_VOLUMES", "volumes", std::slice::from_ref(&vol))).await.0 == StatusCode::ACCEPTED)
            .then_some(())
    })
    .await;
    assert!(destroyed.is_some(), "{}", c.logs());
    assert!(wait_until(T, || async { (!dir.exists()).then_some(()) }).await.is_some());
    let (status, text) = post(&url, &call("UNRESERVE_RESOURCES", "resources", &res)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let st = c.state().await;
    assert_eq!(
        st["slaves"][0]["reserved_resources"]["web"]["cpus"], 2.0,
        "back to the static one: {}",
        st["slaves"][0]
    );

    // The master's record wins: an agent that lost its checkpoint of a reservation gets it
    // back when it re-registers.
    let keep = [reserved(Resource::scalar("cpus", 1.0), "web")];
    let (status, text) = post(&url, &call("RESERVE_RESOURCES", "resources", &keep)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    let ckpt = c.dir.join("agent0/resources.json");
    let has = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default().contains("DYNAMIC");
    assert!(wait_until(T, || async { has(&ckpt).then_some(()) }).await.is_some());
    let mut c = c;
    c.crash_agent(0);
    std::fs::remove_file(&ckpt).unwrap();
    c.restart_agent(0, &[]).unwrap();
    assert!(wait_until(T, || async { has(&ckpt).then_some(()) }).await.is_some(), "{}", c.logs());
    let st = c.state().await;
    assert_eq!(st["slaves"][0]["reserved_resources"]["web"]["cpus"], 3.0, "{}", st["slaves"][0]);

    // The static reservation is offered to web only.
    let mut other = Fw::subscribe(&c.master.addr, framework("other", "other")).await;
    let offers = other.offers().await;
    assert!(offers.iter().flat_map(|o| o.resources.iter()).all(|r| !r.is_reserved()), "{offers:?}");
}
