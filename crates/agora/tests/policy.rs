//! Operator policy kept in the registry: quotas (guarantees kept free for their role,
//! limits capping offers) and maintenance (offers carry the unavailability, a machine that
//! goes down loses its agents until its maintenance stops); both survive a master restart.
mod common;

use agora_api::scheduler::EventType;
use agora_api::*;
use agora_http::http::StatusCode;
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

async fn post(url: &str, body: &str) -> (StatusCode, serde_json::Value, String) {
    let r = agora_http::Client::new().post(url, &[], body.as_bytes().to_vec(), Duration::from_secs(10)).await;
    let r = r.expect("post");
    let text = String::from_utf8_lossy(&r.body).into_owned();
    (r.status, serde_json::from_str(&text).unwrap_or_default(), text)
}

fn framework(name: &str, role: &str) -> FrameworkInfo {
    let mut i = info(name, true, 0.0);
    i.roles = vec![role.into()];
    i
}

/// Every cpu offered to `fw` over `window` (offers are kept, not declined).
async fn cpus_offered(fw: &mut Fw, window: Duration) -> (f64, Vec<Offer>) {
    let deadline = std::time::Instant::now() + window;
    let mut all = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match fw.next_matching(left, |e| e.kind == EventType::Offers).await {
            Some(ev) => all.extend(ev.offers.map(|o| o.offers).unwrap_or_default()),
            None => break,
        }
    }
    let cpus = all.iter().map(|o| Resources::from_vec(o.resources.clone()).scalar("cpus")).sum();
    (cpus, all)
}

async fn get_quota(url: &str) -> serde_json::Value {
    let (status, v, text) = post(url, r#"{"type":"GET_QUOTA"}"#).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    v["get_quota"]["status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_guarantee_and_limit_what_roles_are_offered_and_survive_a_restart() {
    let mut c = Cluster::start(2, &[], &["--resources", "cpus:8;mem:8192;disk:1000"]).await;
    let url = c.url("/api/v1");

    // Bad input: 400 with a reason, nothing set.
    for (body, why) in [
        (r#"{"type":"UPDATE_QUOTA"}"#, "update_quota"),
        (
            r#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[{"role":"*","limits":{"cpus":{"value":1}}}]}}"#,
            "'*'",
        ),
        (
            r#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[{"role":"dev","limits":{"ports":{"value":1}}}]}}"#,
            "ports",
        ),
        (
            r#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[{"role":"dev","guarantees":{"cpus":{"value":3}},"limits":{"cpus":{"value":2}}}]}}"#,
            "above its limit",
        ),
        (
            r#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[{"role":"dev","guarantees":{"cpus":{"value":100}}}]}}"#,
            "force",
        ),
        (
            r#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[{"role":"ok","limits":{"cpus":{"value":1}}},{"role":"bad role","limits":{"cpus":{"value":1}}}]}}"#,
            "invalid characters",
        ),
        (r#"{"type":"REMOVE_QUOTA","remove_quota":{"role":"nobody"}}"#, "no quota"),
    ] {
        let (status, _, text) = post(&url, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert!(text.contains(why), "{body}: {text}");
    }
    assert_eq!(get_quota(&url).await["configs"], serde_json::json!([]), "rejected updates set nothing");

    // 6 of the 16 cpus guaranteed to `prod`, `dev` limited to 1 cpu.
    let (status, _, text) = post(
        &url,
        r#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[
            {"role":"prod","guarantees":{"cpus":{"value":6}}},
            {"role":"dev","limits":{"cpus":{"value":1}}}]}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let q = get_quota(&url).await;
    assert_eq!(q["configs"].as_array().map(Vec::len), Some(2), "{q}");
    let v0 = c.get("/quota").await;
    assert_eq!(v0["infos"][0]["role"], "prod", "{v0}");
    assert_eq!(v0["infos"][0]["guarantee"][0]["scalar"]["value"], 6.0, "{v0}");
    let roles = c.get("/roles").await;
    let prod = roles["roles"].as_array().and_then(|r| r.iter().find(|r| r["name"] == "prod")).cloned();
    assert_eq!(prod.map(|p| p["quota"]["guarantee"]["cpus"].clone()), Some(serde_json::json!(6.0)), "{roles}");

    // A role without quota gets everything but the 6 guaranteed cpus.
    let mut batch = Fw::subscribe(&c.master.addr, framework("batch", "batch")).await;
    let (cpus, offers) = cpus_offered(&mut batch, Duration::from_millis(1500)).await;
    assert_eq!(cpus, 10.0, "batch may not take prod's guarantee: {offers:?}");
    batch.s.decline(offers.iter().map(|o| o.id.clone()).collect(), 3600.0).await.expect("decline");
    // `dev` never holds more than its limit.
    let mut dev = Fw::subscribe(&c.master.addr, framework("dev", "dev")).await;
    let (cpus, _) = cpus_offered(&mut dev, Duration::from_millis(1500)).await;
    assert_eq!(cpus, 1.0, "dev is limited to 1 cpu");
    // `prod` gets at least its guarantee.
    let mut prod = Fw::subscribe(&c.master.addr, framework("prod", "prod")).await;
    let (cpus, _) = cpus_offered(&mut prod, Duration::from_millis(1500)).await;
    assert!(cpus >= 6.0, "prod got {cpus} cpus, below its guarantee");

    // The registry keeps quotas across a restart of the master.
    drop((batch, dev, prod));
    c.restart_master();
    let after = wait_until(T, || async {
        let (status, v, _) = post(&url, r#"{"type":"GET_QUOTA"}"#).await;
        (status == StatusCode::OK).then(|| v["get_quota"]["status"].clone())
    })
    .await
    .expect("the restarted master answers");
    assert_eq!(after["configs"], q["configs"], "quotas after the restart");
    c.wait_agents(2).await;

    // Removing a quota: a config with neither guarantees nor limits; SET_QUOTA's guarantee
    // is also the limit.
    let (status, _, text) =
        post(&url, r#"{"type":"UPDATE_QUOTA","update_quota":{"quota_configs":[{"role":"prod"}]}}"#).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, _, text) = post(
        &url,
        r#"{"type":"SET_QUOTA","set_quota":{"quota_request":{"role":"ml","guarantee":[{"name":"cpus","type":"SCALAR","scalar":{"value":2}}]}}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let q = get_quota(&url).await;
    let roles: Vec<&str> = q["configs"].as_array().into_iter().flatten().filter_map(|c| c["role"].as_str()).collect();
    assert_eq!(roles, ["dev", "ml"], "{q}");
    let ml = q["configs"].as_array().and_then(|c| c.iter().find(|c| c["role"] == "ml")).cloned().unwrap_or_default();
    assert_eq!(ml["limits"]["cpus"]["value"], 2.0, "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_marks_offers_then_takes_the_machine_down_and_up() {
    let mut c = Cluster::start(1, &[], &[]).await;
    let url = c.url("/api/v1");
    let mut fw = Fw::subscribe(&c.master.addr, info("maint", true, 0.0)).await;
    let first = fw.offers().await;
    assert!(first[0].unavailability.is_none(), "no maintenance scheduled yet");
    fw.launch_on(&first[0], &[("sleeper", "sleep 600")], 0.1, 32.0).await;
    fw.until_state("sleeper", TaskState::Running, T).await;

    // Bad schedules: 400, nothing changes.
    for (body, why) in [
        (
            r#"{"type":"UPDATE_MAINTENANCE_SCHEDULE","update_maintenance_schedule":{"schedule":{"windows":[
              {"machine_ids":[{"hostname":"a"}],"unavailability":{"start":{"nanoseconds":0}}},
              {"machine_ids":[{"hostname":"a"}],"unavailability":{"start":{"nanoseconds":1}}}]}}}"#,
            "more than one window",
        ),
        (
            r#"{"type":"UPDATE_MAINTENANCE_SCHEDULE","update_maintenance_schedule":{"schedule":{"windows":[
              {"machine_ids":[{}],"unavailability":{"start":{"nanoseconds":0}}}]}}}"#,
            "hostname or an IP",
        ),
        (
            r#"{"type":"START_MAINTENANCE","start_maintenance":{"machines":[{"hostname":"127.0.0.1"}]}}"#,
            "not scheduled",
        ),
        (r#"{"type":"STOP_MAINTENANCE","stop_maintenance":{"machines":[{"hostname":"127.0.0.1"}]}}"#, "not down"),
    ] {
        let (status, _, text) = post(&url, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert!(text.contains(why), "{body}: {text}");
    }
    let (_, v, _) = post(&url, r#"{"type":"GET_MAINTENANCE_SCHEDULE"}"#).await;
    assert_eq!(v["get_maintenance_schedule"]["schedule"]["windows"], serde_json::json!([]), "{v}");

    // Scheduled: the machine is draining and its offers say when it goes away.
    let start =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600) * 1_000_000_000;
    let schedule = format!(
        r#"{{"type":"UPDATE_MAINTENANCE_SCHEDULE","update_maintenance_schedule":{{"schedule":{{"windows":[
          {{"machine_ids":[{{"hostname":"127.0.0.1","ip":"127.0.0.1"}}],
            "unavailability":{{"start":{{"nanoseconds":{start}}},"duration":{{"nanoseconds":3600000000000}}}}}}]}}}}}}"#
    );
    let (status, _, text) = post(&url, &schedule).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let deadline = std::time::Instant::now() + T;
    let marked = loop {
        assert!(std::time::Instant::now() < deadline, "no offer with the unavailability");
        let Some(ev) = fw.next_matching(Duration::from_secs(2), |e| e.kind == EventType::Offers).await else {
            continue;
        };
        if let Some(u) = ev.offers.into_iter().flat_map(|o| o.offers).find_map(|o| o.unavailability) {
            break u;
        }
    };
    assert_eq!(marked.start.nanoseconds, start as i64);
    let (_, v, _) = post(&url, r#"{"type":"GET_MAINTENANCE_STATUS"}"#).await;
    assert_eq!(v["get_maintenance_status"]["status"]["draining_machines"][0]["id"]["hostname"], "127.0.0.1", "{v}");

    // Down: the agent is removed (its task GONE) and kept out, also across a master restart.
    let machines = r#"{"machines":[{"hostname":"127.0.0.1","ip":"127.0.0.1"}]}"#;
    let (status, _, text) =
        post(&url, &format!(r#"{{"type":"START_MAINTENANCE","start_maintenance":{machines}}}"#)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let seen = fw.until_state("sleeper", TaskState::Gone, T).await;
    assert_eq!(seen.last().and_then(|s| s.reason), Some(Reason::ReasonAgentRemoved), "{seen:?}");
    // Told to shut down, the agent ends its task and exits, forgetting its id (as Mesos's).
    let exit = c.wait_agent_exit(0, T).await;
    assert!(exit.is_some_and(|s| s.success()), "the removed agent did not exit: {exit:?}\n{}", c.agents[0].log_tail());
    assert!(c.agents[0].log_tail().contains("the master removed this agent"), "{}", c.agents[0].log_tail());
    let (status, _, text) = post(
        &url,
        r#"{"type":"UPDATE_MAINTENANCE_SCHEDULE","update_maintenance_schedule":{"schedule":{"windows":[]}}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a down machine stays scheduled: {text}");
    drop(fw);
    c.restart_master();
    let status = wait_until(T, || async {
        let (s, v, _) = post(&url, r#"{"type":"GET_MAINTENANCE_STATUS"}"#).await;
        (s == StatusCode::OK).then(|| v["get_maintenance_status"]["status"].clone())
    })
    .await
    .expect("the restarted master answers");
    assert_eq!(status["down_machines"][0]["hostname"], "127.0.0.1", "{status}");
    // Started again while its machine is down, the agent is refused and keeps trying.
    c.restart_agent(0, &[]).expect("the agent starts again");
    let refused = wait_until(T, || async {
        c.agents[0].log_tail().contains("the master refused this agent's registration").then_some(())
    })
    .await;
    assert!(refused.is_some(), "{}", c.agents[0].log_tail());
    let st = c.state().await;
    assert_eq!(st["slaves"].as_array().map(Vec::len), Some(0), "the agent stays out while its machine is down");
    let v0 = c.get("/maintenance/status").await;
    assert_eq!(v0["down_machines"][0]["ip"], "127.0.0.1", "{v0}");

    // Up: maintenance stops, the machine leaves the schedule, the agent comes back.
    let (status, _, text) =
        post(&url, &format!(r#"{{"type":"STOP_MAINTENANCE","stop_maintenance":{machines}}}"#)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (_, v, _) = post(&url, r#"{"type":"GET_MAINTENANCE_STATUS"}"#).await;
    assert_eq!(
        v["get_maintenance_status"]["status"],
        serde_json::json!({"draining_machines": [], "down_machines": []})
    );
    c.wait_agents(1).await;
    let new_id = agent_ids(&c).await;
    assert_eq!(new_id.len(), 1);
    assert_ne!(new_id[0], first[0].agent_id.value, "the agent came back as a new agent");
}

/// The ids of the agents the master knows.
async fn agent_ids(c: &Cluster) -> Vec<String> {
    let st = c.state().await;
    st["slaves"].as_array().into_iter().flatten().filter_map(|s| s["id"].as_str().map(String::from)).collect()
}

/// Explicit reconciliation of one task: the state the master answers.
async fn reconcile(fw: &mut Fw, task: &str, agent: &AgentId) -> TaskState {
    fw.s.reconcile(vec![(TaskId::new(task), Some(agent.clone()))]).await.expect("reconcile");
    fw.update(task, T).await.expect("a reconciliation answer").state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_forgets_gone_agents_after_their_max_age() {
    let gc = ["--registry-max-agent-age", "1secs", "--registry-gc-interval", "200ms"];
    let mut c = Cluster::start(1, &gc, &[]).await;
    let url = c.url("/api/v1");
    let mut fw = Fw::subscribe(&c.master.addr, info("gc", true, 0.0)).await;
    let offers = fw.offers().await;
    let agent = offers[0].agent_id.clone();
    fw.launch_on(&offers[0], &[("t", "sleep 600")], 0.1, 32.0).await;
    fw.until_state("t", TaskState::Running, T).await;
    let body =
        format!(r#"{{"type":"MARK_AGENT_GONE","mark_agent_gone":{{"agent_id":{{"value":"{}"}}}}}}"#, agent.value);
    assert_eq!(post(&url, &body).await.0, StatusCode::OK);
    fw.until_state("t", TaskState::GoneByOperator, T).await;
    assert_eq!(reconcile(&mut fw, "t", &agent).await, TaskState::GoneByOperator, "known gone at first");
    // The gone agent leaves for good: it exits, so it never comes back under its old id.
    let exit = c.wait_agent_exit(0, T).await;
    assert!(exit.is_some_and(|s| s.success()), "the gone agent did not exit: {exit:?}\n{}", c.agents[0].log_tail());
    // Older than --registry-max-agent-age: pruned, here and in the registry.
    let deadline = std::time::Instant::now() + T;
    while reconcile(&mut fw, "t", &agent).await != TaskState::Unknown {
        assert!(std::time::Instant::now() < deadline, "the gone agent was never pruned:\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(c.master.log_tail().contains("pruned old unreachable and gone agents"), "{}", c.master.log_tail());
    drop(fw);
    c.restart_master();
    let mut fw = Fw::subscribe(&c.master.addr, info("gc2", true, 0.0)).await;
    assert_eq!(reconcile(&mut fw, "t", &agent).await, TaskState::Unknown, "the registry forgot it too");
}
