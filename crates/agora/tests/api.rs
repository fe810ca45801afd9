//! The wire contract: bad input gets Mesos's status codes and changes nothing; invalid
//! launches end TASK_ERROR / TASK_DROPPED; the legacy endpoints answer in v0 shape.
mod common;

use agora_api::scheduler::{self as sched, Call, CallType};
use agora_api::*;
use agora_http::http::StatusCode;
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

async fn post(url: &str, headers: &[(&str, &str)], body: &str) -> agora_http::Reply {
    let h: Vec<(&str, String)> = headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
    agora_http::Client::new().post(url, &h, body.as_bytes().to_vec(), Duration::from_secs(10)).await.expect("post")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_scheduler_calls_get_clear_errors_and_change_nothing() {
    let c = Cluster::start(1, &[], &[]).await;
    let url = c.url("/api/v1/scheduler");
    let fw = Fw::subscribe(&c.master.addr, info("victim", true, 0.0)).await;
    let fid = fw.s.framework_id.value.clone();
    let sid = fw.s.stream_id.clone();
    let before = c.get("/state").await["frameworks"].clone();

    let r = post(&url, &[], "{not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&r.body).contains("Failed to parse"), "{:?}", r.body);

    let r = post(&url, &[], r#"{"type":"FLY","framework_id":{"value":"x"}}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // SUBSCRIBE without the required FrameworkInfo fields.
    let r = post(&url, &[], r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"name":"x"}}}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&r.body).contains("user"), "names the missing field: {:?}", r.body);

    // SUBSCRIBE with a stream id header.
    let r = post(
        &url,
        &[("Mesos-Stream-Id", "abc")],
        r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"u","name":"x"}}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let decline = format!(r#"{{"type":"DECLINE","framework_id":{{"value":"{fid}"}},"decline":{{"offer_ids":[]}}}}"#);
    // Missing and wrong stream ids.
    assert_eq!(post(&url, &[], &decline).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(post(&url, &[("Mesos-Stream-Id", "not-the-stream")], &decline).await.status, StatusCode::BAD_REQUEST);
    // The right one works.
    assert_eq!(post(&url, &[("Mesos-Stream-Id", &sid)], &decline).await.status, StatusCode::ACCEPTED);
    // Unknown framework.
    let r = post(
        &url,
        &[("Mesos-Stream-Id", &sid)],
        r#"{"type":"DECLINE","framework_id":{"value":"nope"},"decline":{"offer_ids":[]}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&r.body).contains("Framework cannot be found"));
    // A call type without its body.
    let r =
        post(&url, &[("Mesos-Stream-Id", &sid)], &format!(r#"{{"type":"ACCEPT","framework_id":{{"value":"{fid}"}}}}"#))
            .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&r.body).contains("accept"));

    // Content types and methods.
    let client = agora_http::Client::new();
    let r = client
        .post(&url, &[("Content-Type", "text/plain".to_string())], b"{}".to_vec(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = client.get(&url, Duration::from_secs(5)).await.unwrap();
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = post(&url, &[("Accept", "text/html")], &decline).await;
    assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE);

    // Nothing changed.
    let after = c.get("/state").await["frameworks"].clone();
    assert_eq!(before.as_array().map(|a| a.len()), after.as_array().map(|a| a.len()));
    assert_eq!(after[0]["id"], fid);
    assert_eq!(after[0]["connected"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_launches_end_with_the_right_states() {
    let c = Cluster::start(1, &[], &["--resources", "cpus:2;mem:1024;disk:100;ports:[31000-32000]"]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("invalid", true, 0.0)).await;
    let mut other = Fw::subscribe(&c.master.addr, info("other", true, 0.0)).await;
    let offer = fw.offers().await.remove(0);
    let agent = offer.agent_id.clone();

    // More than offered, a duplicate id within one accept, no command, and one good task.
    let mut too_big = task_info("too-big", &agent, CommandInfo::shell("true"), 64.0, 32.0);
    too_big.name = "too big".into();
    let dup1 = task_info("dup", &agent, CommandInfo::shell("sleep 100"), 0.1, 32.0);
    let dup2 = task_info("dup", &agent, CommandInfo::shell("true"), 0.1, 32.0);
    let mut nocmd = task_info("nocmd", &agent, CommandInfo::shell("true"), 0.1, 32.0);
    nocmd.command = None;
    let bad_id = task_info("bad/id", &agent, CommandInfo::shell("true"), 0.1, 32.0);
    fw.s.launch(vec![offer.id.clone()], vec![too_big, dup1, dup2, nocmd, bad_id], 0.0).await.unwrap();
    let s = fw.update("too-big", T).await.unwrap();
    assert_eq!((s.state, s.reason), (TaskState::Error, Some(Reason::ReasonTaskInvalid)));
    assert!(s.message.unwrap_or_default().contains("more resources"));
    let s = fw.update("nocmd", T).await.unwrap();
    assert_eq!(s.state, TaskState::Error);
    assert_eq!(fw.update("bad/id", T).await.unwrap().state, TaskState::Error);
    // The first "dup" launches; the second is refused.
    let mut dup_states = vec![];
    for _ in 0..3 {
        dup_states.push(fw.update("dup", T).await.unwrap().state);
    }
    assert!(dup_states.contains(&TaskState::Error), "{dup_states:?}");
    assert!(dup_states.contains(&TaskState::Starting) || dup_states.contains(&TaskState::Running), "{dup_states:?}");

    // Re-using an offer that was already used, and using another framework's offer.
    let again = task_info("reuse", &agent, CommandInfo::shell("true"), 0.1, 32.0);
    fw.s.launch(vec![offer.id.clone()], vec![again], 0.0).await.unwrap();
    let s = fw.update("reuse", T).await.unwrap();
    assert_eq!((s.state, s.reason), (TaskState::Dropped, Some(Reason::ReasonInvalidOffers)));
    let foreign = other.offers().await.remove(0);
    fw.s.launch(vec![foreign.id.clone()], vec![task_info("thief", &agent, CommandInfo::shell("true"), 0.1, 32.0)], 0.0)
        .await
        .unwrap();
    let s = fw.update("thief", T).await.unwrap();
    assert_eq!(s.state, TaskState::Dropped);
    // The other framework's offer is untouched: it can still use it.
    other.launch_on(&foreign, &[("legit", "true")], 0.1, 32.0).await;
    other.until_state("legit", TaskState::Finished, T).await;
    // Leave the agent's resources to the first framework.
    other.s.teardown().await.unwrap();

    // A duplicate of a live task id across accepts.
    let offer = loop {
        let offers = fw.offers().await;
        if let Some(o) = offers.into_iter().next() {
            break o;
        }
    };
    fw.s.launch(vec![offer.id.clone()], vec![task_info("dup", &agent, CommandInfo::shell("true"), 0.1, 32.0)], 0.0)
        .await
        .unwrap();
    let s = fw.update("dup", T).await.unwrap();
    assert_eq!(s.state, TaskState::Error);
    assert!(s.message.unwrap_or_default().contains("duplicate"));
    // Killing an unknown task answers TASK_LOST... for a partition-aware framework too, per Mesos.
    fw.s.kill(TaskId::new("never-was"), None).await.unwrap();
    assert_eq!(fw.update("never-was", T).await.unwrap().state, TaskState::Lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_endpoints_answer_in_v0_shape() {
    let c = Cluster::start(1, &[], &["--attributes", "rack:r1;level:2"]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("legacy", true, 0.0)).await;
    let offer = fw.offers().await.remove(0);
    assert_eq!(offer.attributes.len(), 2);
    fw.launch_on(&offer, &[("l1", "sleep 100")], 0.5, 64.0).await;
    fw.until_state("l1", TaskState::Running, T).await;

    let v = c.get("/version").await;
    let version = v["version"].as_str().unwrap();
    assert!(version.split('.').all(|p| p.parse::<u32>().is_ok()), "dotted integers: {version}");
    for path in ["/state", "/master/state", "/state.json", "/master/state/"] {
        let st = c.get(path).await;
        assert_eq!(st["slaves"][0]["attributes"]["rack"], "r1", "{path}");
        assert_eq!(st["slaves"][0]["attributes"]["level"], 2.0);
        assert!(st["slaves"][0]["pid"].as_str().unwrap().starts_with("slave(1)@"));
        assert!(st["pid"].as_str().unwrap().starts_with("master@"));
        assert_eq!(st["leader"], st["pid"]);
        let task = &st["frameworks"][0]["tasks"][0];
        assert_eq!(task["slave_id"], offer.agent_id.value);
        assert_eq!(task["state"], "TASK_RUNNING");
        assert_eq!(task["resources"]["cpus"], 0.5);
        assert_eq!(task["resources"]["gpus"], 0.0);
        assert_eq!(task["statuses"].as_array().unwrap().len(), 2);
        assert_eq!(st["slaves"][0]["used_resources"]["cpus"], 0.5);
        assert_eq!(st["slaves"][0]["used_resources"]["mem"], 64.0);
        // The framework's resources in use are summed from its tasks off the state loop.
        assert_eq!(st["frameworks"][0]["used_resources"]["cpus"], 0.5, "{path}");
        assert_eq!(st["frameworks"][0]["resources"]["mem"], 64.0);
        assert_eq!(st["frameworks"][0]["name"], "legacy");
    }
    let slaves = c.get("/slaves").await;
    assert_eq!(slaves["slaves"].as_array().unwrap().len(), 1);
    let fws = c.get(&format!("/frameworks?framework_id={}", fw.s.framework_id)).await;
    assert_eq!(fws["frameworks"].as_array().unwrap().len(), 1);
    let tasks = c.get("/tasks?limit=-1").await;
    assert_eq!(tasks["tasks"][0]["id"], "l1");
    let m = c.get("/metrics/snapshot").await;
    assert_eq!(m["master/tasks_running"], 1);
    assert_eq!(m["master/slaves_active"], 1);
    assert_eq!(m["master/cpus_used"], 0.5);
    assert_eq!(m["master/mem_used"], 64.0);
    // jsonp and /health and /redirect.
    let r = agora_http::Client::new().get(&c.url("/state?jsonp=cb"), T).await.unwrap();
    assert!(String::from_utf8_lossy(&r.body).starts_with("cb({"));
    let r = agora_http::Client::new().get(&c.url("/health"), T).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let r = agora_http::Client::new().get(&c.url("/master/redirect"), T).await.unwrap();
    assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT);
    assert!(r.headers["location"].to_str().unwrap().starts_with("//"));
    // The operator API answers GET_STATE with typed data.
    let r = agora_http::Client::new()
        .call(&c.url("/api/v1/operator"), &[], &serde_json::json!({"type": "GET_TASKS"}), T)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["type"], "GET_TASKS");
    assert_eq!(v["get_tasks"]["tasks"][0]["task_id"]["value"], "l1");
    // GET_STATE (written straight from the master's state) decodes as the typed response.
    let r = agora_http::Client::new()
        .call(&c.url("/api/v1"), &[], &serde_json::json!({"type": "GET_STATE"}), T)
        .await
        .unwrap();
    let st: agora_api::operator::Response = serde_json::from_slice(&r.body).unwrap();
    // Its agents (written one by one off the state loop) are GET_AGENTS' answer; offers
    // may come and go between the two calls.
    let whole: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let r = agora_http::Client::new()
        .call(&c.url("/api/v1"), &[], &serde_json::json!({"type": "GET_AGENTS"}), T)
        .await
        .unwrap();
    let agents: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let without_offers = |v: &serde_json::Value| {
        let mut v = v.clone();
        for a in v["agents"].as_array_mut().into_iter().flatten() {
            a.as_object_mut().map(|o| o.remove("offered_resources"));
        }
        v
    };
    assert_eq!(without_offers(&whole["get_state"]["get_agents"]), without_offers(&agents["get_agents"]));
    assert!(whole["get_state"]["get_agents"]["recovered_agents"].is_array());
    let gs = st.get_state.expect("get_state");
    assert_eq!(gs.get_tasks.tasks[0].task_id.value, "l1");
    assert_eq!(gs.get_agents.agents.len(), 1);
    assert!(!gs.get_frameworks.frameworks.is_empty());
    let cpus = |rs: &[agora_api::Resource]| {
        rs.iter().filter(|r| r.name == "cpus").filter_map(|r| r.scalar.as_ref()).map(|s| s.value).sum::<f64>()
    };
    assert_eq!(cpus(&gs.get_agents.agents[0].allocated_resources), 0.5);
    assert_eq!(cpus(&gs.get_frameworks.frameworks[0].allocated_resources), 0.5);
    // /roles and /state-summary show what the task uses, under its role.
    let roles = c.get("/roles").await;
    let star = roles["roles"].as_array().and_then(|r| r.iter().find(|r| r["name"] == "*")).cloned().unwrap_or_default();
    assert_eq!(
        (star["resources"]["cpus"].as_f64(), star["resources"]["mem"].as_f64()),
        (Some(0.5), Some(64.0)),
        "{roles}"
    );
    let summary = c.get("/state-summary").await;
    assert_eq!(summary["slaves"][0]["used_resources"]["cpus"], 0.5, "{summary}");
    assert_eq!(summary["slaves"][0]["TASK_RUNNING"], 1, "{summary}");
    assert_eq!(summary["slaves"][0]["id"], offer.agent_id.value.as_str(), "{summary}");
    assert!(summary["hostname"].is_string() && summary["cluster"].is_null(), "{summary}");
    // /slaves: the agents as in /state.
    let slaves = c.get("/slaves").await;
    assert_eq!(slaves["slaves"][0]["id"], offer.agent_id.value.as_str(), "{slaves}");
    assert_eq!(slaves["slaves"][0]["used_resources"]["mem"], 64.0, "{slaves}");
    assert_eq!(slaves["slaves"][0]["attributes"]["rack"], "r1", "{slaves}");
    assert!(slaves["recovered_slaves"].is_array(), "{slaves}");
    assert_eq!(summary["frameworks"][0]["used_resources"]["mem"], 64.0, "{summary}");
    assert_eq!(summary["frameworks"][0]["TASK_RUNNING"], 1, "{summary}");
    // Suppress then revive: no offers while suppressed.
    fw.s.call(Call::new(CallType::Suppress, None)).await.unwrap();
    // Give back whatever was offered before the suppression; it must not come back.
    while let Some(e) = fw.next_matching(Duration::from_millis(500), |e| e.offers.is_some()).await {
        let ids = e.offers.map(|o| o.offers.into_iter().map(|o| o.id).collect()).unwrap_or_default();
        fw.s.decline(ids, 0.0).await.unwrap();
    }
    let leaked = fw.next_matching(Duration::from_millis(1500), |e| e.offers.is_some()).await;
    assert!(leaked.is_none(), "offers while suppressed: {leaked:?}");
    let mut revive = Call::new(CallType::Revive, None);
    revive.revive = Some(sched::Roles::default());
    fw.s.call(revive).await.unwrap();
    assert!(
        fw.next_matching(Duration::from_secs(5), |e| e.offers.is_some()).await.is_some(),
        "offers return after REVIVE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_framework_shutdown_and_message() {
    let c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("updatable", true, 0.0)).await;
    let url = c.url("/api/v1/scheduler");
    let sid = fw.s.stream_id.clone();

    // UPDATE_FRAMEWORK: 200 once applied; the new roles show in /state.
    let mut new_info = fw.info.clone();
    new_info.roles = vec!["web".into()];
    new_info.name = "renamed".into();
    let mut call = Call::new(CallType::UpdateFramework, Some(fw.s.framework_id.clone()));
    call.update_framework = Some(sched::UpdateFramework {
        framework_info: new_info.clone(),
        suppressed_roles: vec![],
        offer_constraints: None,
    });
    let r = post(&url, &[("Mesos-Stream-Id", &sid)], &serde_json::to_string(&call).unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let st = c.state().await;
    assert_eq!(st["frameworks"][0]["name"], "renamed");
    assert_eq!(st["frameworks"][0]["roles"], serde_json::json!(["web"]));
    // Changing the user is refused and changes nothing.
    let mut bad = new_info.clone();
    bad.user = "someone-else".into();
    bad.name = "should-not-stick".into();
    call.update_framework =
        Some(sched::UpdateFramework { framework_info: bad, suppressed_roles: vec![], offer_constraints: None });
    let r = post(&url, &[("Mesos-Stream-Id", &sid)], &serde_json::to_string(&call).unwrap()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(c.state().await["frameworks"][0]["name"], "renamed");

    // Offers now come for role "web".
    let offer = loop {
        let o = fw.offers().await.remove(0);
        if o.allocation_info.as_ref().and_then(|a| a.role.as_deref()) == Some("web") {
            break o;
        }
    };
    fw.launch_on(&offer, &[("svc", "sleep 100")], 0.1, 32.0).await;
    fw.until_state("svc", TaskState::Running, T).await;
    assert_eq!(c.state().await["frameworks"][0]["tasks"][0]["role"], "web");

    // MESSAGE is accepted (the command executor ignores it); SHUTDOWN of the command
    // executor kills its task.
    let mut msg = Call::new(CallType::Message, None);
    msg.message = Some(sched::Message {
        agent_id: offer.agent_id.clone(),
        executor_id: ExecutorId::new("svc"),
        data: agora_api::json::Bytes(b"hi".to_vec()),
    });
    fw.s.call(msg).await.unwrap();
    let mut shutdown = Call::new(CallType::Shutdown, None);
    shutdown.shutdown = Some(sched::Shutdown { executor_id: ExecutorId::new("svc"), agent_id: offer.agent_id.clone() });
    fw.s.call(shutdown).await.unwrap();
    let end = fw.until_state("svc", TaskState::Killed, T).await;
    assert_eq!(end.last().unwrap().state, TaskState::Killed);
    // The executor's exit reaches the framework as FAILURE.
    let failure = fw.next_matching(T, |e| e.failure.is_some()).await.expect("FAILURE event");
    assert_eq!(failure.failure.unwrap().executor_id, Some(ExecutorId::new("svc")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_executor_ids_are_validated() {
    let c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("custom", true, 0.0)).await;
    let offer = fw.offers().await.remove(0);
    let mut t = task_info("escape", &offer.agent_id, CommandInfo::shell("true"), 0.1, 32.0);
    t.command = None;
    t.executor = Some(
        serde_json::from_value(serde_json::json!({
            "executor_id": {"value": "../../etc"},
            "command": {"value": "true"},
        }))
        .unwrap(),
    );
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.unwrap();
    let s = fw.update("escape", T).await.unwrap();
    assert_eq!((s.state, s.reason), (TaskState::Error, Some(Reason::ReasonTaskInvalid)));
    assert!(s.message.unwrap_or_default().contains("executor id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_agent_gone_and_weights_through_the_operator_api() {
    let c = Cluster::start(1, &[], &[]).await;
    let url = c.url("/api/v1");
    let mut fw = Fw::subscribe(&c.master.addr, info("gone", true, 0.0)).await;
    let offers = fw.offers().await;
    let agent = offers[0].agent_id.clone();
    fw.launch_on(&offers[0], &[("sleeper", "sleep 600")], 0.1, 32.0).await;
    fw.until_state("sleeper", TaskState::Running, T).await;

    // Bad input: 400 and nothing changes.
    let r = post(&url, &[], r#"{"type":"MARK_AGENT_GONE"}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post(&url, &[], r#"{"type":"MARK_AGENT_GONE","mark_agent_gone":{"agent_id":{"value":"nope"}}}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&r.body).contains("not known"), "{:?}", r.body);
    let r = post(&url, &[], r#"{"type":"UPDATE_WEIGHTS","update_weights":{"weight_infos":[{"role":"a","weight":2},{"role":"b","weight":-1}]}}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post(&url, &[], r#"{"type":"GET_WEIGHTS"}"#).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["get_weights"]["weight_infos"], serde_json::json!([]), "a rejected update changes nothing: {v}");

    // Weights: set, then read back.
    let r =
        post(&url, &[], r#"{"type":"UPDATE_WEIGHTS","update_weights":{"weight_infos":[{"role":"a","weight":2.5}]}}"#)
            .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = post(&url, &[], r#"{"type":"GET_WEIGHTS"}"#).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["get_weights"]["weight_infos"], serde_json::json!([{"role": "a", "weight": 2.5}]), "{v}");

    // The agent marked gone: its task ends GONE_BY_OPERATOR, the agent leaves the cluster
    // and may not come back; a second mark is a no-op.
    let body =
        format!(r#"{{"type":"MARK_AGENT_GONE","mark_agent_gone":{{"agent_id":{{"value":"{}"}}}}}}"#, agent.value);
    let r = post(&url, &[], &body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let seen = fw.until_state("sleeper", TaskState::GoneByOperator, T).await;
    let last = seen.last().expect("an update");
    assert_eq!(last.reason, Some(Reason::ReasonAgentRemovedByOperator), "{last:?}");
    assert_eq!(post(&url, &[], &body).await.status, StatusCode::OK);
    let state = c.state().await;
    assert_eq!(state["slaves"].as_array().map(|a| a.len()), Some(0), "{}", state["slaves"]);
    let gone = wait_until(T, || async {
        let r = post(&c.url("/api/v1"), &[], r#"{"type":"GET_AGENTS"}"#).await;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        v["get_agents"]["agents"].as_array().map(|a| a.is_empty()).unwrap_or(false).then_some(())
    })
    .await;
    assert!(gone.is_some());
}

/// A framework that stops reading its event stream does not make the master buffer without
/// bound: past `--max-stream-backlog` (8x it at once here) the master ends the stream,
/// marks the framework disconnected, and the framework can subscribe again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framework_that_stops_reading_is_cut_off_and_can_resubscribe() {
    use std::io::{Read, Write};
    let c = Cluster::start(1, &["--max-stream-backlog", "65536"], &[]).await;
    // Subscribe by hand and read only up to the SUBSCRIBED event.
    let mut sock = std::net::TcpStream::connect(&c.master.addr).unwrap();
    let body =
        r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"root","name":"stuck","failover_timeout":600}}}"#;
    write!(
        sock,
        "POST /api/v1/scheduler HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let field = |text: &str, after: &str| -> Option<String> {
        let i = text.find(after)? + after.len();
        let rest = &text[i..];
        Some(rest[..rest.find(['"', '\r'])?].to_string())
    };
    let (fid, sid) = loop {
        let mut buf = [0u8; 4096];
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "the subscription ended early");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let (Some(f), Some(s)) = (
            field(&text, r#""framework_id":{"value":""#),
            field(&text, "Mesos-Stream-Id: ").or(field(&text, "mesos-stream-id: ")),
        ) {
            break (f, s);
        }
    };
    // Reconciling many unknown tasks makes one UPDATE event each; the client reads none.
    let url = c.url("/api/v1/scheduler");
    let tasks: Vec<String> = (0..5000)
        .map(|i| format!(r#"{{"task_id":{{"value":"ghost-{i}"}},"agent_id":{{"value":"nowhere"}}}}"#))
        .collect();
    let call = format!(
        r#"{{"type":"RECONCILE","framework_id":{{"value":"{fid}"}},"reconcile":{{"tasks":[{}]}}}}"#,
        tasks.join(",")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let cut = "does not keep up with its event stream";
    while !c.master.log_tail().contains(cut) {
        assert!(std::time::Instant::now() < deadline, "the stream was never cut:\n{}", c.master.log_tail());
        let r = post(&url, &[("Mesos-Stream-Id", &sid)], &call).await;
        if r.status != StatusCode::ACCEPTED {
            break; // Disconnected already: the call is refused.
        }
    }
    let disconnected = wait_until(T, || async {
        let st = c.state().await;
        let fw = st["frameworks"].as_array().and_then(|a| a.iter().find(|f| f["id"] == fid.as_str()).cloned());
        fw.filter(|f| f["connected"] == false).map(|_| ())
    })
    .await;
    assert!(disconnected.is_some(), "{}", c.master.log_tail());
    assert!(c.master.log_tail().contains(cut), "{}", c.master.log_tail());
    // The master is still well: the framework subscribes again under its id and is offered.
    let mut again = info("stuck", true, 600.0);
    again.id = Some(FrameworkId::new(fid.clone()));
    let mut fw = Fw::subscribe(&c.master.addr, again).await;
    assert_eq!(fw.s.framework_id.value, fid);
    assert!(!fw.offers().await.is_empty());
    drop(sock);
}
