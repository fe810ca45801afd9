//! The crash harness: two agents, a storm of launches and kills, and an agent SIGKILLed at
//! a random moment in every round. Afterwards every task has exactly one terminal state at
//! the framework, no task ran twice, no update was lost, no acknowledged update came back,
//! and nothing leaked. Runs on its own too:
//!
//! `AGORA_CRASH_ROUNDS=20 AGORA_CRASH_LAUNCHES=200 AGORA_CRASH_KILLS=50 cargo test -p agora --test crash_harness -- --nocapture`
#![allow(clippy::unwrap_used)] // test helpers may panic

mod common;

use agora_api::*;
use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small deterministic generator; the seed is printed so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn cgroup_children(root: &str) -> usize {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|h| {
                    std::fs::read_dir(h.path().join(root))
                        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
                        .unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_killed_at_random_lose_nothing() {
    let rounds = knob("AGORA_CRASH_ROUNDS", 20);
    let launches = knob("AGORA_CRASH_LAUNCHES", 200);
    let kills = knob("AGORA_CRASH_KILLS", 50);
    let seed = std::env::var("AGORA_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let mut rng = Rng(seed);
    let root = format!("agora-crash-{}", &uuid::Uuid::new_v4().to_string()[..8]);
    let runs = std::path::PathBuf::from(format!("/var/tmp/{root}-runs"));
    std::fs::create_dir_all(&runs).unwrap();
    let mut c = Cluster::start(
        2,
        &[],
        &["--cgroups-root", &root, "--resources", "cpus:4;mem:8192;disk:100;ports:[31000-32000]"],
    )
    .await;
    let mut fi = info("crash-harness", true, 3600.0);
    fi.checkpoint = true;
    let mut fw = Fw::subscribe(&c.master.addr, fi).await;
    fw.auto_ack = false;

    let per_round = launches.div_ceil(rounds.max(1));
    let kills_per_round = kills.div_ceil(rounds.max(1));
    let mut launched: Vec<String> = Vec::new();
    let mut killed = 0;
    let mut crashes = 0;
    let mut terminal: HashMap<String, TaskState> = HashMap::new();
    let mut violations: Vec<String> = Vec::new();
    // Acknowledged terminal updates and when; a re-send counts as a violation only when no
    // agent crashed since (a crash may lose an acknowledgement that was still on its way,
    // and then the update must come again) and it came well after the acknowledgement
    // (an agent's retry can cross an acknowledgement in flight, as in Mesos).
    let mut acked: HashMap<Vec<u8>, Instant> = HashMap::new();
    let mut last_crash: Option<Instant> = None;
    let mut benign_duplicates = 0usize;
    let mut updates_seen = 0usize;
    let mut acks_sent = 0usize;
    let mut pool: Vec<Offer> = Vec::new();

    // Handles one event: checks and acknowledges updates, keeps offers.
    macro_rules! handle {
        ($ev:expr) => {{
            let ev = $ev;
            if let Some(o) = ev.offers {
                pool.extend(o.offers);
            }
            if let Some(r) = &ev.rescind {
                pool.retain(|o| o.id != r.offer_id);
            }
            if let Some(u) = ev.update {
                let s = u.status;
                updates_seen += 1;
                // The master's answers to KILL/RECONCILE of a task it no longer tracks are
                // information, not a state change of the task.
                let answer = s.reason == Some(Reason::ReasonReconciliation);
                let id = s.task_id.value.to_string();
                if let Some(uuid) = &s.uuid {
                    if let Some(at) = acked.get(&uuid.0) {
                        let crashed_since = last_crash.map(|c| c > *at).unwrap_or(false);
                        if crashed_since || at.elapsed() < Duration::from_secs(3) {
                            benign_duplicates += 1;
                        } else {
                            violations.push(format!("acknowledged update re-sent: {id} {:?}", s.state));
                        }
                    }
                }
                match terminal.get(&id).filter(|_| !answer) {
                    Some(prev) if s.state.is_terminal() && *prev != s.state => {
                        violations.push(format!("{id}: second terminal state {:?} after {prev:?}", s.state))
                    }
                    Some(prev) if !s.state.is_terminal() => {
                        violations.push(format!("{id}: {:?} after terminal {prev:?}", s.state))
                    }
                    None if s.state.is_terminal() && !answer => {
                        terminal.insert(id.clone(), s.state);
                    }
                    _ => {}
                }
                if let (Some(uuid), Some(_)) = (&s.uuid, &s.agent_id) {
                    // The acknowledgement may be lost if the agent is down; the update then
                    // comes again (not a violation: it was never acknowledged by the agent).
                    if fw.s.acknowledge(&s).await.is_ok() {
                        acks_sent += 1;
                        if s.state.is_terminal() {
                            acked.entry(uuid.0.clone()).or_insert_with(Instant::now);
                        }
                    }
                }
            }
        }};
    }

    for round in 0..rounds {
        // Launch this round's tasks on whatever is offered.
        let target = (launched.len() + per_round).min(launches);
        let deadline = Instant::now() + Duration::from_secs(30);
        while launched.len() < target && Instant::now() < deadline {
            if pool.is_empty() {
                if let Some(ev) = fw.next_matching(Duration::from_secs(2), |_| true).await {
                    handle!(ev);
                }
                continue;
            }
            let offer = pool.remove(0);
            let res = Resources::from_vec(offer.resources.clone());
            let room = ((res.scalar("cpus") / 0.05) as usize).min((res.scalar("mem") / 32.0) as usize);
            let n = room.min(target - launched.len());
            if n == 0 {
                fw.s.decline(vec![offer.id.clone()], 0.0).await.unwrap();
                continue;
            }
            let mut infos = Vec::new();
            for _ in 0..n {
                let id = format!("r{round}-{}", launched.len());
                let secs = rng.below(30) as f64 / 10.0;
                let cmd = format!("echo run >> {}/{id}; sleep {secs}", runs.display());
                infos.push(task_info(&id, &offer.agent_id, CommandInfo::shell(cmd), 0.05, 32.0));
                launched.push(id);
            }
            fw.s.launch(vec![offer.id.clone()], infos, 0.0).await.unwrap();
        }
        // Kill some live tasks.
        for _ in 0..kills_per_round {
            if killed >= kills || launched.is_empty() {
                break;
            }
            let victim = launched[rng.below(launched.len() as u64) as usize].clone();
            if !terminal.contains_key(&victim) {
                let _ = fw.s.kill(TaskId::new(victim), None).await;
                killed += 1;
            }
        }
        // Crash one agent at a random moment, then bring it back.
        let wait = Duration::from_millis(rng.below(800));
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Some(ev) = fw.next_matching(until.saturating_duration_since(Instant::now()), |_| true).await {
                handle!(ev);
            }
        }
        let victim = rng.below(2) as usize;
        c.crash_agent(victim);
        last_crash = Some(Instant::now());
        crashes += 1;
        c.restart_agent(victim, &[]).unwrap_or_else(|e| panic!("agent {victim} did not come back: {e}"));
    }
    // Let everything finish and be acknowledged.
    let deadline = Instant::now() + Duration::from_secs(120);
    while terminal.len() < launched.len() && Instant::now() < deadline {
        if let Some(ev) = fw.next_matching(Duration::from_secs(2), |_| true).await {
            handle!(ev);
        }
        // Offers are not needed any more.
        if !pool.is_empty() {
            let ids = pool.drain(..).map(|o| o.id).collect();
            let _ = fw.s.decline(ids, 3600.0).await;
        }
    }
    let missing: Vec<&String> = launched.iter().filter(|t| !terminal.contains_key(*t)).collect();
    let mut ran_twice = Vec::new();
    for t in &launched {
        let n = std::fs::read_to_string(runs.join(t)).map(|s| s.lines().count()).unwrap_or(0);
        if n > 1 {
            ran_twice.push(t.clone());
        }
    }
    let mut by_state: HashMap<TaskState, usize> = HashMap::new();
    for s in terminal.values() {
        *by_state.entry(*s).or_default() += 1;
    }
    println!(
        "crash harness (seed {seed}): {} rounds, {} launches, {} kill requests, {} agent crashes, {} updates, {} acks, {} re-sent after an acknowledgement lost in a crash or in flight; terminal states {:?}",
        rounds,
        launched.len(),
        killed,
        crashes,
        updates_seen,
        acks_sent,
        benign_duplicates,
        by_state
    );
    assert!(missing.is_empty(), "tasks without a terminal state (seed {seed}): {missing:?}\n{}", c.logs());
    assert!(ran_twice.is_empty(), "tasks that ran twice (seed {seed}): {ran_twice:?}");
    if !violations.is_empty() {
        let master_log = std::fs::read_to_string(&c.master.log).unwrap_or_default();
        for v in violations.iter().take(3) {
            let id = v.split(':').next().unwrap_or("").to_string();
            for line in master_log.lines().filter(|l| l.contains(&format!("={id} ")) || l.contains(&format!("{id} "))) {
                println!("master: {line}");
            }
        }
    }
    assert!(violations.is_empty(), "violations (seed {seed}): {violations:#?}");
    // Nothing leaked: no container processes, cgroups or runtime directories.
    let leaks = wait_until(Duration::from_secs(60), || async {
        let containers: usize = (0..2)
            .map(|i| std::fs::read_dir(c.dir.join(format!("agent{i}/containers"))).map(|d| d.count()).unwrap_or(0))
            .sum();
        (containers == 0 && cgroup_children(&root) == 0).then_some(())
    })
    .await;
    if leaks.is_none() {
        for a in &c.agents {
            let st = get_json(&format!("http://{}/state", a.addr)).await;
            for f in st["frameworks"].as_array().cloned().unwrap_or_default() {
                for e in f["executors"].as_array().cloned().unwrap_or_default() {
                    let tasks: Vec<String> = e["tasks"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|t| format!("{}={}", t["id"], t["state"]))
                        .collect();
                    let queued: Vec<String> = e["queued_tasks"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|t| t["id"].to_string())
                        .collect();
                    println!(
                        "live executor {} tasks {:?} queued {:?} (framework saw {:?})",
                        e["id"],
                        tasks,
                        queued,
                        terminal.get(e["id"].as_str().unwrap_or(""))
                    );
                }
            }
        }
        let names: Vec<String> = std::fs::read_dir(format!("/sys/fs/cgroup/memory/{root}"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for i in 0..2 {
            let log = std::fs::read_to_string(c.dir.join(format!("agent{i}.log"))).unwrap_or_default();
            let master_log = std::fs::read_to_string(&c.master.log).unwrap_or_default();
            for n in &names {
                for l in log.lines().filter(|l| l.contains(n.as_str())) {
                    println!("agent{i}: {}", l.chars().take(300).collect::<String>());
                    if let Some(task) = l.split("executor_id=").nth(1).and_then(|r| r.split_whitespace().next()) {
                        for m in master_log.lines().chain(log.lines()).filter(|m| m.contains(task)) {
                            println!("  {task}: {}", m.chars().take(300).collect::<String>());
                        }
                    }
                }
            }
            for l in log.lines().filter(|l| l.contains("cannot") || l.contains("orphan")) {
                println!("agent{i}: {}", l.chars().take(300).collect::<String>());
            }
        }
    }
    assert!(leaks.is_some(), "containers or cgroups left behind (seed {seed}): cgroups {}", cgroup_children(&root));
    drop(c);
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(h.path().join(&root));
    }
    let _ = std::fs::remove_dir_all(&runs);
}
