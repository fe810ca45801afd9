//! Container start benchmark client: launches N `/bin/true` tasks one after another through
//! the real scheduler API, optionally in a container image, and reports the latencies the
//! framework and the agent saw. With an image, `cold` removes it from the agent's store
//! (PRUNE_IMAGES) before every launch, so each start pulls, unpacks and provisions it;
//! `warm` (the default) keeps it.
//!
//! With NETWORK (a CNI network name), each container joins it (network/cni).
//!
//! `cargo run --release -p agora-client --example launch_bench -- MASTER AGENT N [IMAGE|- [warm|cold [NETWORK]]]`
use agora_api::scheduler::EventType;
use agora_api::*;
use agora_client::{framework_info, Scheduler};
use std::time::{Duration, Instant};

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Empties the agent's store (waits until the previous container's rootfs is gone).
async fn prune(agent: &str) -> Result<(), Box<dyn std::error::Error>> {
    let c = agora_http::Client::new();
    for _ in 0..200 {
        let r = c
            .post(
                &format!("http://{agent}/api/v1"),
                &[],
                br#"{"type":"PRUNE_IMAGES"}"#.to_vec(),
                Duration::from_secs(30),
            )
            .await?;
        if !r.status.is_success() {
            return Err(format!("PRUNE_IMAGES: {}", r.status).into());
        }
        let l = c.get(&format!("http://{agent}/agora/v1/images"), Duration::from_secs(10)).await?;
        let v: serde_json::Value = serde_json::from_slice(&l.body)?;
        if v.as_array().is_some_and(|a| a.is_empty()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("the store did not empty".into())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let master = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:5050".into());
    let agent = args.get(2).cloned().unwrap_or_else(|| "127.0.0.1:5051".into());
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200);
    let image = args.get(4).cloned().filter(|i| i != "-");
    let cold = args.get(5).map(|m| m == "cold").unwrap_or(false);
    let network = args.get(6).cloned().filter(|n| n != "-");
    let mut info = framework_info("launch-bench", "*");
    info.user = "root".into();
    let mut s = Scheduler::subscribe(&master, info).await?;
    let mut to_running = Vec::new();
    let mut to_exit = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    // Offers that arrive while a task runs are kept for the next launches.
    let mut pool: Vec<Offer> = Vec::new();
    while i < n {
        if pool.is_empty() {
            let ev = tokio::time::timeout(Duration::from_secs(60), s.next_event()).await??;
            if ev.kind != EventType::Offers {
                continue;
            }
            pool.extend(ev.offers.map(|o| o.offers).unwrap_or_default());
        }
        let Some(offer) = pool.pop() else { continue };
        let res = Resources::from_vec(offer.resources.clone());
        if res.scalar("cpus") < 0.1 || res.scalar("mem") < 32.0 {
            s.decline(vec![offer.id.clone()], 0.0).await?;
            continue;
        }
        if cold && image.is_some() {
            prune(&agent).await?;
        }
        let id = TaskId::new(format!("true-{i}"));
        let argv = CommandInfo {
            shell: false,
            value: Some("/bin/true".into()),
            arguments: vec!["true".into()],
            environment: None,
            user: None,
            uris: vec![],
        };
        let resources = vec![Resource::scalar("cpus", 0.1), Resource::scalar("mem", 32.0)];
        let mut task = TaskInfo::command(id.clone(), offer.agent_id.clone(), resources, argv);
        if let Some(img) = &image {
            task.container = Some(agora_client::run::container_with_image(img));
        }
        if let Some(net) = &network {
            let mut c = task.container.take().unwrap_or_else(|| serde_json::json!({"type": "MESOS"}));
            c["network_infos"] = serde_json::json!([{ "name": net }]);
            task.container = Some(c);
        }
        let t0 = Instant::now();
        s.launch(vec![offer.id.clone()], vec![task], 0.0).await?;
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(60), s.next_event()).await??;
            if let Some(o) = ev.offers {
                pool.extend(o.offers);
                continue;
            }
            let Some(u) = ev.update else { continue };
            if u.status.task_id != id {
                continue;
            }
            s.acknowledge(&u.status).await?;
            match u.status.state {
                TaskState::Running => to_running.push(t0.elapsed().as_secs_f64() * 1000.0),
                TaskState::Finished => {
                    to_exit.push(t0.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                st if st.is_terminal() => return Err(format!("task {id} ended {st:?}: {:?}", u.status.message).into()),
                _ => {}
            }
        }
        i += 1;
    }
    let total = start.elapsed().as_secs_f64();
    let _ = s.teardown().await;
    let m = agora_http::Client::new().get(&format!("http://{agent}/metrics/snapshot"), Duration::from_secs(5)).await?;
    let m: serde_json::Value = serde_json::from_slice(&m.body)?;
    let out = serde_json::json!({
        "launches": n,
        "image": image,
        "mode": if cold { "cold" } else { "warm" },
        "network": network,
        "total_secs": total,
        "framework_accept_to_running_ms_p50": pct(&mut to_running, 0.5),
        "framework_accept_to_running_ms_p99": pct(&mut to_running, 0.99),
        "framework_accept_to_finished_ms_p50": pct(&mut to_exit, 0.5),
        "framework_accept_to_finished_ms_p99": pct(&mut to_exit, 0.99),
        "agent_run_task_to_running_ms_p50": m["slave/task_launch_to_running_ms_p50"],
        "agent_run_task_to_running_ms_p99": m["slave/task_launch_to_running_ms_p99"],
        "agent_run_task_to_exit_ms_p50": m["slave/task_launch_to_exit_ms_p50"],
        "agent_run_task_to_exit_ms_p99": m["slave/task_launch_to_exit_ms_p99"],
        "agent_run_task_to_spawned_ms_p50": m["slave/task_launch_to_spawned_ms_p50"],
        "agent_run_task_to_spawned_ms_p99": m["slave/task_launch_to_spawned_ms_p99"],
        "agent_run_task_to_executor_subscribed_ms_p50": m["slave/task_launch_to_executor_subscribed_ms_p50"],
        "agent_run_task_to_executor_subscribed_ms_p99": m["slave/task_launch_to_executor_subscribed_ms_p99"],
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
