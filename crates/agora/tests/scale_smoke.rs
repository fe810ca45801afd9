//! CI-sized scale smoke test: a real master, 500 simulated agents from two simulating
//! processes (`agora agent --simulate`, the real agent protocol over HTTP/2 streams) and the
//! load framework placing
//! 5,000 tasks from 5 frameworks in 2 roles. Correctness only, no timings: every task placed
//! once, no resource offered twice, no agent lost; then a master failover after which every
//! agent re-registers with its tasks, and the frameworks' completed tasks are rebuilt from the
//! agents' reports.
mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const AGENTS: usize = 500;
const TASKS: usize = 5_000;
/// Ended tasks each simulated agent holds and reports when it re-registers.
const COMPLETED_PER_AGENT: usize = 3;

struct Sim {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sim {
    fn start(master: &str, name: &str, agents: usize, log: std::path::PathBuf) -> Sim {
        let out = std::fs::File::create(&log).expect("sim log");
        let child = Command::new(env!("CARGO_BIN_EXE_agora"))
            .args(["agent", "--master", master, "--simulate", &agents.to_string()])
            .args(["--simulate-name", name, "--simulate-report-interval", "200ms"])
            .args(["--simulate-completed-tasks", &COMPLETED_PER_AGENT.to_string()])
            .args(["--resources", "cpus:4;mem:1024;disk:1024;ports:[31000-31100]"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn simulator");
        Sim { child, log }
    }

    /// The simulator's last counters line.
    fn stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or(serde_json::Value::Null)
    }
}

/// One counter summed over the simulating processes.
fn total(sims: &[Sim], key: &str) -> u64 {
    sims.iter().map(|s| s.stats()[key].as_u64().unwrap_or(0)).sum()
}

fn all_stats(sims: &[Sim]) -> String {
    sims.iter().map(|s| s.stats().to_string()).collect::<Vec<_>>().join("\n")
}

/// Each agent's `used_resources` in `/state` (kept by the master as tasks change) is what
/// its tasks hold: `per_agent` is (cpus, mem) summed from the tasks.
fn used_is_the_sum_of_the_tasks(state: &serde_json::Value, per_agent: &std::collections::HashMap<String, (f64, f64)>) {
    let slaves = state["slaves"].as_array().expect("slaves");
    assert_eq!(slaves.len(), AGENTS);
    for a in slaves {
        let (cpus, mem) = per_agent.get(a["id"].as_str().expect("id")).copied().unwrap_or_default();
        let used = &a["used_resources"];
        assert!((used["cpus"].as_f64().unwrap_or(-1.0) - cpus).abs() < 1e-6, "{a}: {cpus} cpus");
        assert!((used["mem"].as_f64().unwrap_or(-1.0) - mem).abs() < 1e-6, "{a}: {mem} mem");
    }
}

async fn metric(c: &Cluster, name: &str) -> f64 {
    c.get("/metrics/snapshot").await[name].as_f64().unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_simulated_agents_place_five_thousand_tasks_once() {
    let c = Cluster::start(0, &[], &[]).await;
    // Two simulating processes against one master, as the issue allows.
    let sims = [
        Sim::start(&c.master.addr, "smoke-a", AGENTS / 2, c.dir.join("sim-a.log")),
        Sim::start(&c.master.addr, "smoke-b", AGENTS - AGENTS / 2, c.dir.join("sim-b.log")),
    ];

    let registered = wait_until(Duration::from_secs(60), || async {
        (metric(&c, "master/slaves_connected").await as usize == AGENTS).then_some(())
    })
    .await;
    assert!(registered.is_some(), "agents did not all register: {}\n{}", all_stats(&sims), c.logs());

    let report = agora_client::load::run(agora_client::load::LoadOptions {
        master: c.master.addr.clone(),
        frameworks: 5,
        roles: 2,
        tasks: TASKS,
        cpus: 0.1,
        mem: 16.0,
        timeout: Duration::from_secs(120),
        window: 1_000,
        teardown: false,
    })
    .await
    .expect("load");
    assert!(!report.timed_out, "{report:?}");
    assert_eq!(report.started as usize, TASKS, "{report:?}");
    assert_eq!(report.launched as usize, TASKS, "{report:?}");
    assert_eq!(report.duplicate_starts, 0, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(report.overcommit.is_empty(), "a resource was offered twice: {:?}", report.overcommit);

    // The master's view: every task once, RUNNING, on one agent, within its agent's total.
    let state = c.state().await;
    let mut ids = std::collections::HashSet::new();
    let mut per_agent: std::collections::HashMap<String, (f64, f64)> = Default::default();
    let mut agent_of: std::collections::HashMap<String, String> = Default::default();
    for f in state["frameworks"].as_array().expect("frameworks") {
        // Nothing has ended yet that this master saw end.
        assert_eq!(f["completed_tasks"].as_array().map(Vec::len), Some(0), "{}", f["completed_tasks"]);
        for t in f["tasks"].as_array().expect("tasks") {
            assert_eq!(t["state"], "TASK_RUNNING", "{t}");
            assert!(ids.insert(t["id"].as_str().expect("id").to_string()), "task twice: {t}");
            agent_of
                .insert(t["id"].as_str().expect("id").to_string(), t["slave_id"].as_str().expect("agent").to_string());
            let e = per_agent.entry(t["slave_id"].as_str().expect("agent").to_string()).or_default();
            e.0 += t["resources"]["cpus"].as_f64().unwrap_or(0.0);
            e.1 += t["resources"]["mem"].as_f64().unwrap_or(0.0);
        }
    }
    assert_eq!(ids.len(), TASKS);
    for (agent, (cpus, mem)) in &per_agent {
        assert!(*cpus <= 4.0 + 1e-6 && *mem <= 1024.0 + 1e-6, "agent {agent} overcommitted: {cpus} cpus, {mem} mem");
    }
    assert_eq!(metric(&c, "master/tasks_running").await as usize, TASKS);
    used_is_the_sum_of_the_tasks(&state, &per_agent);

    // The agents' view: each task launched exactly once, nobody lost or shut down.
    let settled = wait_until(Duration::from_secs(30), || async {
        (total(&sims, "running") == TASKS as u64 && total(&sims, "updates_acked") >= TASKS as u64).then_some(())
    })
    .await;
    assert!(settled.is_some(), "simulators did not settle: {}", all_stats(&sims));
    let stats = all_stats(&sims);
    assert_eq!(total(&sims, "launched"), TASKS as u64, "{stats}");
    assert_eq!(total(&sims, "registered"), AGENTS as u64, "{stats}");
    assert_eq!(total(&sims, "connected"), AGENTS as u64, "{stats}");
    assert_eq!(total(&sims, "shut_down"), 0, "{stats}");
    assert_eq!(metric(&c, "master/slaves_connected").await as usize, AGENTS);
    assert_eq!(metric(&c, "master/slaves_unreachable").await, 0.0);

    // Master failover: every agent re-registers with its tasks, none is launched again or
    // lost, and the new master knows every task once.
    let mut c = c;
    c.restart_master();
    let back = wait_until(Duration::from_secs(60), || async {
        // The simulators' counters are printed every 200 ms: wait for theirs too.
        (metric(&c, "master/slave_reregistrations").await as usize == AGENTS
            && metric(&c, "master/tasks_running").await as usize == TASKS
            && total(&sims, "reregistered") == AGENTS as u64)
            .then_some(())
    })
    .await;
    assert!(back.is_some(), "agents did not all re-register: {}\n{}", all_stats(&sims), c.logs());
    let stats = all_stats(&sims);
    assert_eq!(total(&sims, "reregistered"), AGENTS as u64, "{stats}");
    assert_eq!(total(&sims, "launched"), TASKS as u64, "{stats}");
    assert_eq!(total(&sims, "shut_down"), 0, "{stats}");
    assert_eq!(metric(&c, "master/slaves_connected").await as usize, AGENTS);
    let state = c.state().await;
    let n: usize = state["frameworks"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(state["unregistered_frameworks"].as_array().into_iter().flatten())
        .map(|f| f["tasks"].as_array().map_or(0, |t| t.len()))
        .sum();
    assert_eq!(n, TASKS, "tasks in /state after the failover");
    used_is_the_sum_of_the_tasks(&state, &per_agent);

    // Each agent with tasks also reported the tasks that ended on it (the simulator makes
    // up COMPLETED_PER_AGENT from its running ones); the new master keeps them as its
    // frameworks' completed tasks, each once, on the agent that ran it.
    let mut done = std::collections::HashSet::new();
    for f in state["frameworks"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(state["unregistered_frameworks"].as_array().into_iter().flatten())
    {
        let completed = f["completed_tasks"].as_array().expect("completed_tasks");
        assert!(completed.len() <= 1000, "more than --max-completed-tasks-per-framework");
        for t in completed {
            assert_eq!(t["state"], "TASK_FINISHED", "{t}");
            assert_eq!(t["framework_id"], f["id"], "{t}");
            let id = t["id"].as_str().expect("id");
            let (like, _) = id.rsplit_once("-done-").expect("a made-up id");
            assert_eq!(agent_of.get(like), t["slave_id"].as_str().map(str::to_string).as_ref(), "{t}");
            assert!(done.insert(id.to_string()), "completed twice: {t}");
        }
    }
    assert_eq!(done.len(), COMPLETED_PER_AGENT * per_agent.len(), "completed tasks after the failover");
}
