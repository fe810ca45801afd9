//! An agent that stops answering pings (SIGSTOP) becomes unreachable; when it resumes it
//! re-registers and its tasks come back with their real state.
mod common;

use agora_api::*;
use common::*;
use nix::sys::signal::Signal;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_agent_goes_unreachable_and_comes_back() {
    let c = Cluster::start(1, &["--agent-ping-timeout", "300ms", "--max-agent-ping-timeouts", "3"], &[]).await;
    let mut aware = Fw::subscribe(&c.master.addr, info("aware", true, 0.0)).await;
    let mut plain = Fw::subscribe(&c.master.addr, info("plain", false, 0.0)).await;
    let o1 = aware.offers().await.remove(0);
    aware.launch_on(&o1, &[("pa-task", "sleep 100")], 0.1, 32.0).await;
    aware.until_state("pa-task", TaskState::Running, T).await;
    let o2 = plain.offers().await.remove(0);
    plain.launch_on(&o2, &[("plain-task", "sleep 100")], 0.1, 32.0).await;
    plain.until_state("plain-task", TaskState::Running, T).await;

    c.agents[0].signal(Signal::SIGSTOP);
    let u = aware.update("pa-task", T).await.unwrap_or_else(|| panic!("no update after SIGSTOP:\n{}", c.logs()));
    assert_eq!(u.state, TaskState::Unreachable);
    assert_eq!(u.reason, Some(Reason::ReasonAgentRemoved));
    assert!(u.unreachable_time.is_some(), "TASK_UNREACHABLE carries unreachable_time");
    let u = plain.update("plain-task", T).await.expect("update for the plain framework");
    assert_eq!(u.state, TaskState::Lost, "frameworks without PARTITION_AWARE see TASK_LOST");
    let st = c.state().await;
    assert_eq!(st["unreachable_slaves"], 1);
    assert_eq!(st["activated_slaves"], 0);
    // Reconciliation during the partition reports it too.
    aware.s.reconcile(vec![(TaskId::new("pa-task"), None)]).await.unwrap();
    assert_eq!(aware.update("pa-task", T).await.unwrap().state, TaskState::Unreachable);

    c.agents[0].signal(Signal::SIGCONT);
    let back = aware.update("pa-task", T).await.unwrap_or_else(|| panic!("no update after SIGCONT:\n{}", c.logs()));
    assert_eq!(back.state, TaskState::Running);
    assert_eq!(back.reason, Some(Reason::ReasonAgentReregistered));
    assert_eq!(plain.update("plain-task", T).await.unwrap().state, TaskState::Running);
    c.wait_agents(1).await;
    let st = c.state().await;
    assert_eq!(st["unreachable_slaves"], 0);
    assert_eq!(st["slaves"].as_array().unwrap().len(), 1, "the agent came back as itself, not as a second agent");
    assert_eq!(st["slaves"][0]["id"], o1.agent_id.value.as_str());
    // And the tasks are live and killable.
    aware.s.kill(TaskId::new("pa-task"), None).await.unwrap();
    aware.until_state("pa-task", TaskState::Killed, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_removals_are_rate_limited() {
    let c = Cluster::start(
        2,
        &["--agent-ping-timeout", "300ms", "--max-agent-ping-timeouts", "3", "--agent-removal-rate-limit", "1/3secs"],
        &[],
    )
    .await;
    let mut fw = Fw::subscribe(&c.master.addr, info("limited", true, 0.0)).await;
    // One task on each agent.
    let mut agents = std::collections::HashSet::new();
    let mut n = 0;
    while agents.len() < 2 {
        for offer in fw.offers().await {
            if agents.insert(offer.agent_id.clone()) {
                fw.launch_on(&offer, &[(&format!("t{n}"), "sleep 100")], 0.1, 32.0).await;
                n += 1;
            } else {
                fw.s.decline(vec![offer.id.clone()], 0.0).await.unwrap();
            }
        }
    }
    fw.until_state("t0", TaskState::Running, T).await;
    fw.until_state("t1", TaskState::Running, T).await;
    for a in &c.agents {
        a.signal(Signal::SIGSTOP);
    }
    let unreachable = |e: &agora_api::scheduler::Event| {
        e.update.as_ref().map(|u| u.status.state == TaskState::Unreachable).unwrap_or(false)
    };
    fw.next_matching(T, unreachable).await.expect("the first agent becomes unreachable");
    let first = std::time::Instant::now();
    fw.next_matching(T, unreachable).await.expect("the second agent becomes unreachable");
    let gap = first.elapsed();
    assert!(gap >= Duration::from_millis(2500), "second removal only {gap:?} after the first under 1/3secs");
    for a in &c.agents {
        a.signal(Signal::SIGCONT);
    }
    c.wait_agents(2).await;
}
