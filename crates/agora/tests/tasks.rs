//! Task lifecycles, reconciliation, acknowledgements and framework failover against real
//! master and agent processes.
mod common;

use agora_api::*;
use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_tasks_end_in_the_right_states() {
    let c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("lifecycle", true, 0.0)).await;
    let offer = fw.offers().await.remove(0);
    fw.launch_on(
        &offer,
        &[("ok", "echo done"), ("three", "exit 3"), ("sleeper", "sleep 100"), ("nosuch", "/no/such/command")],
        0.1,
        32.0,
    )
    .await;
    // argv form with a program that does not exist.
    let offer2 = loop {
        let o = fw.offers().await;
        if let Some(o) = o.into_iter().next() {
            break o;
        }
    };
    let argv = CommandInfo {
        shell: false,
        value: Some("/no/such/binary".into()),
        arguments: vec!["x".into()],
        environment: None,
        user: None,
        uris: vec![],
    };
    fw.s.launch(vec![offer2.id.clone()], vec![task_info("argv", &offer2.agent_id, argv, 0.1, 32.0)], 0.0)
        .await
        .unwrap();

    let ok = fw.until_state("ok", TaskState::Finished, T).await;
    assert_eq!(states(&ok), vec![TaskState::Starting, TaskState::Running, TaskState::Finished], "{}", c.logs());
    assert!(ok.iter().all(|s| s.uuid.is_some() && s.agent_id.is_some() && s.source == Some(Source::Executor)));

    let three = fw.until_state("three", TaskState::Failed, T).await;
    assert_eq!(three.last().unwrap().message.as_deref(), Some("Command exited with status 3"));

    let nosuch = fw.until_state("nosuch", TaskState::Failed, T).await;
    assert_eq!(nosuch.last().unwrap().message.as_deref(), Some("Command exited with status 127"));

    let argv = fw.until_state("argv", TaskState::Failed, T).await;
    let msg = argv.last().unwrap().message.clone().unwrap_or_default();
    assert!(msg.contains("/no/such/binary"), "argv failure should name the program: {msg}");

    fw.until_state("sleeper", TaskState::Running, T).await;
    let t0 = Instant::now();
    fw.s.kill(TaskId::new("sleeper"), Some(offer.agent_id.clone())).await.unwrap();
    let killed = fw.until_state("sleeper", TaskState::Killed, T).await;
    // TASK_KILLING_STATE frameworks see KILLING first.
    assert_eq!(states(&killed), vec![TaskState::Killing, TaskState::Killed]);
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "sleep dies on SIGTERM, well within the 3 s grace: {:?}",
        t0.elapsed()
    );

    // The sandbox holds the task's output, at the Mesos path.
    let st = c.state().await;
    let agent_id = offer.agent_id.value.clone();
    let fid = fw.s.framework_id.value.clone();
    let stdout = c
        .dir
        .join("agent0/slaves")
        .join(&agent_id)
        .join("frameworks")
        .join(&fid)
        .join("executors/ok/runs/latest/stdout");
    assert_eq!(std::fs::read_to_string(&stdout).unwrap_or_default(), "done\n", "{stdout:?}");
    assert_eq!(st["frameworks"][0]["id"], fid);

    // A master that fails over learns the ended tasks back from the agent, as Mesos's does:
    // once the agent has them as completed (their last update acknowledged), kill -9 the
    // master; after the agent re-registers the framework's completed tasks are all there.
    let ended = ["ok", "three", "nosuch", "argv", "sleeper"];
    let completed_ids = |v: &serde_json::Value| -> Vec<String> {
        let mut ids: Vec<String> = v["frameworks"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(v["unregistered_frameworks"].as_array().into_iter().flatten())
            .chain(v["completed_frameworks"].as_array().into_iter().flatten())
            .flat_map(|f| f["completed_executors"].as_array().into_iter().flatten().chain(std::iter::once(f)))
            .flat_map(|x| x["completed_tasks"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let mut want: Vec<String> = ended.iter().map(|s| s.to_string()).collect();
    want.sort();
    let agent_url = format!("http://{}/state", c.agents[0].addr);
    let on_agent = wait_until(T, || async { (completed_ids(&get_json(&agent_url).await) == want).then_some(()) }).await;
    assert!(on_agent.is_some(), "the agent never had them all as completed: {}", get_json(&agent_url).await);
    drop(fw);
    let mut c = c;
    c.restart_master();
    let back = wait_until(T, || async {
        let st = c.state().await;
        (completed_ids(&st) == want).then_some(st)
    })
    .await;
    let Some(st) = back else {
        panic!("completed tasks after the failover: {}\n{}", c.state().await, c.logs());
    };
    let f = st["frameworks"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(st["unregistered_frameworks"].as_array().into_iter().flatten())
        .find(|f| f["id"] == fid)
        .expect("the framework, recovered");
    let states: std::collections::HashMap<&str, &str> = f["completed_tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["id"].as_str()?, t["state"].as_str()?)))
        .collect();
    assert_eq!(f["completed_tasks"].as_array().map(Vec::len), Some(ended.len()), "each once: {f}");
    assert_eq!(states["ok"], "TASK_FINISHED", "{f}");
    assert_eq!(states["three"], "TASK_FAILED", "{f}");
    assert_eq!(states["sleeper"], "TASK_KILLED", "{f}");
    assert!(f["tasks"].as_array().is_none_or(|t| t.is_empty()), "nothing ended is live again: {f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_updates_are_resent_and_acknowledged_ones_never() {
    let c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("acks", true, 0.0)).await;
    fw.auto_ack = false;
    let offer = fw.offers().await.remove(0);
    fw.launch_on(&offer, &[("t", "sleep 100")], 0.1, 32.0).await;
    let first = fw.update("t", T).await.expect("first update");
    assert_eq!(first.state, TaskState::Starting);
    // Not acknowledged: the agent sends it again (retry interval 1 s), same uuid, and holds
    // RUNNING back until STARTING is acknowledged.
    let again = fw.update("t", Duration::from_secs(5)).await.expect("STARTING re-sent");
    assert_eq!(again.state, TaskState::Starting);
    assert_eq!(again.uuid, first.uuid);
    fw.s.acknowledge(&again).await.unwrap();
    let running = loop {
        let s = fw.update("t", Duration::from_secs(5)).await.expect("RUNNING after the ack");
        if s.state == TaskState::Running {
            break s;
        }
        assert_eq!(s.uuid, first.uuid, "only the unacknowledged STARTING may come again");
    };
    fw.s.acknowledge(&running).await.unwrap();
    // Acknowledged updates never come back (the first retry would come after 1 s, the next 2 s later).
    let extra = fw.update("t", Duration::from_millis(3500)).await;
    assert!(extra.is_none(), "an acknowledged update was re-sent: {extra:?}");
    let m = get_json(&format!("http://{}/metrics/snapshot", c.agents[0].addr)).await;
    assert_eq!(m["slave/pending_status_updates"], 0);
    // The launch's phases, in order: the container spawned, its executor subscribed, RUNNING.
    let ms = |k: &str| m[format!("slave/task_launch_to_{k}_ms_p50")].as_f64().unwrap_or_else(|| panic!("{k}: {m}"));
    let (spawned, subscribed, running) = (ms("spawned"), ms("executor_subscribed"), ms("running"));
    assert!(0.0 < spawned && spawned <= subscribed && subscribed <= running, "{spawned} {subscribed} {running}");

    // Implicit reconciliation: latest state, from the master, no uuid.
    fw.s.reconcile(vec![]).await.unwrap();
    let r = fw.update("t", T).await.expect("implicit reconciliation answer");
    assert_eq!(r.state, TaskState::Running);
    assert_eq!(r.reason, Some(Reason::ReasonReconciliation));
    assert_eq!(r.source, Some(Source::Master));
    assert!(r.uuid.is_none());

    // Explicit: known task, unknown task on a known agent, unknown task on an unknown agent.
    fw.s.reconcile(vec![
        (TaskId::new("t"), Some(offer.agent_id.clone())),
        (TaskId::new("ghost"), Some(offer.agent_id.clone())),
        (TaskId::new("phantom"), Some(AgentId::new("no-such-agent"))),
    ])
    .await
    .unwrap();
    assert_eq!(fw.update("t", T).await.unwrap().state, TaskState::Running);
    assert_eq!(fw.update("ghost", T).await.unwrap().state, TaskState::Gone);
    assert_eq!(fw.update("phantom", T).await.unwrap().state, TaskState::Unknown);

    // A framework without PARTITION_AWARE sees TASK_LOST for both.
    let mut old = Fw::subscribe(&c.master.addr, info("old-school", false, 0.0)).await;
    old.s
        .reconcile(vec![(TaskId::new("ghost"), Some(offer.agent_id.clone())), (TaskId::new("phantom"), None)])
        .await
        .unwrap();
    assert_eq!(old.update("ghost", T).await.unwrap().state, TaskState::Lost);
    assert_eq!(old.update("phantom", T).await.unwrap().state, TaskState::Lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_failover_keeps_tasks_and_timeout_tears_down() {
    let c = Cluster::start(1, &[], &[]).await;
    // Within the failover timeout: the re-subscribed framework keeps its task.
    let mut fw = Fw::subscribe(&c.master.addr, info("failover", true, 60.0)).await;
    let offer = fw.offers().await.remove(0);
    fw.launch_on(&offer, &[("keep", "sleep 100")], 0.1, 32.0).await;
    fw.until_state("keep", TaskState::Running, T).await;
    let id_info = fw.info.clone();
    drop(fw);
    let st = wait_until(T, || async {
        let st = c.state().await;
        (st["frameworks"][0]["connected"] == false).then_some(st)
    })
    .await;
    assert!(st.is_some(), "the master never noticed the disconnect:\n{}", c.logs());
    let mut fw = Fw::subscribe(&c.master.addr, id_info.clone()).await;
    assert_eq!(Some(&fw.s.framework_id), id_info.id.as_ref(), "same framework id after failover");
    fw.s.reconcile(vec![]).await.unwrap();
    assert_eq!(fw.update("keep", T).await.unwrap().state, TaskState::Running);
    fw.s.kill(TaskId::new("keep"), None).await.unwrap();
    fw.until_state("keep", TaskState::Killed, T).await;
    // Leave the agent to the next framework (this one would hold its offers).
    fw.s.teardown().await.unwrap();

    // Past the timeout: torn down, its tasks killed.
    let mut short = Fw::subscribe(&c.master.addr, info("short", true, 1.0)).await;
    let offer = short.offers().await.remove(0);
    short.launch_on(&offer, &[("doomed", "sleep 137")], 0.1, 32.0).await;
    short.until_state("doomed", TaskState::Running, T).await;
    let fid = short.s.framework_id.value.clone();
    drop(short);
    let gone = wait_until(Duration::from_secs(30), || async {
        let st = c.state().await;
        let done = st["completed_frameworks"].as_array().map(|a| a.iter().any(|f| f["id"] == fid)).unwrap_or(false);
        done.then_some(st)
    })
    .await
    .unwrap_or_else(|| panic!("framework was not torn down:\n{}", c.logs()));
    let f = gone["completed_frameworks"].as_array().unwrap().iter().find(|f| f["id"] == fid).unwrap().clone();
    assert_eq!(f["completed_tasks"][0]["state"], "TASK_KILLED");
    // And on the agent nothing of it runs any more.
    let agent = &c.agents[0].addr;
    let cleared = wait_until(T, || async {
        let st = get_json(&format!("http://{agent}/state")).await;
        let live = st["frameworks"].as_array().map(|a| a.iter().any(|f| f["id"] == fid)).unwrap_or(false);
        (!live).then_some(())
    })
    .await;
    assert!(cleared.is_some(), "the agent still runs the torn-down framework:\n{}", c.logs());
    let dead = wait_until(T, || async { (!process_running("sleep 137")).then_some(()) }).await;
    assert!(dead.is_some(), "the torn-down framework's task process is still alive");
}

/// Whether a process with exactly this command line is running (checks /proc).
pub fn process_running(cmdline: &str) -> bool {
    let want: Vec<&str> = cmdline.split(' ').collect();
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten().any(|e| {
                let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let parts: Vec<&str> = c
                    .split(|b| *b == 0)
                    .filter(|p| !p.is_empty())
                    .map(|p| std::str::from_utf8(p).unwrap_or(""))
                    .collect();
                parts == want
            })
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tasks_over_two_agents_all_finish() {
    let c = Cluster::start(
        2,
        &["--max-completed-tasks-per-framework", "150"],
        &["--resources", "cpus:16;mem:16384;disk:1000;ports:[31000-32000]"],
    )
    .await;
    let mut fw = Fw::subscribe(&c.master.addr, info("storm", true, 0.0)).await;
    let total = 200;
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut finished = std::collections::HashSet::new();
    let mut agents_used = std::collections::HashSet::new();
    while finished.len() < total {
        assert!(Instant::now() < deadline, "only {} of {total} finished:\n{}", finished.len(), c.logs());
        let ev = fw.next_matching(Duration::from_secs(30), |_| true).await.expect("events stop");
        if let Some(o) = ev.offers {
            for offer in o.offers {
                let res = Resources::from_vec(offer.resources.clone());
                let fit =
                    ((res.scalar("cpus") / 0.1).floor() as usize).min((res.scalar("mem") / 32.0).floor() as usize);
                let n = fit.min(total - next);
                if n == 0 {
                    fw.s.decline(vec![offer.id.clone()], 0.0).await.unwrap();
                    continue;
                }
                let infos = (next..next + n)
                    .map(|i| task_info(&format!("task-{i}"), &offer.agent_id, CommandInfo::shell("true"), 0.1, 32.0))
                    .collect();
                next += n;
                agents_used.insert(offer.agent_id.clone());
                fw.s.launch(vec![offer.id.clone()], infos, 0.0).await.unwrap();
            }
        } else if let Some(u) = ev.update {
            assert_ne!(u.status.state, TaskState::Failed, "{:?}\n{}", u.status, c.logs());
            if u.status.state == TaskState::Finished {
                finished.insert(u.status.task_id.value.clone());
            }
        }
    }
    assert_eq!(agents_used.len(), 2, "both agents ran tasks");
    // Every update was acknowledged: nothing pending on the agents, nothing live at the master.
    let settled = wait_until(T, || async {
        let mut pending = 0;
        for a in &c.agents {
            let m = get_json(&format!("http://{}/metrics/snapshot", a.addr)).await;
            pending += m["slave/pending_status_updates"].as_u64().unwrap_or(1);
        }
        let st = c.state().await;
        let live = st["frameworks"][0]["tasks"].as_array().map(|a| a.len()).unwrap_or(1);
        (pending == 0 && live == 0).then_some(())
    })
    .await;
    assert!(settled.is_some(), "updates left unacknowledged:\n{}", c.logs());
    let m = c.get("/metrics/snapshot").await;
    assert_eq!(m["master/tasks_finished"], total as u64);
    // The master keeps the newest --max-completed-tasks-per-framework of them.
    let st = c.state().await;
    let kept: std::collections::HashSet<&str> = st["frameworks"][0]["completed_tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(kept.len(), 150, "{}", st["frameworks"][0]["completed_tasks"]);
    // Each task went STARTING -> RUNNING -> FINISHED, in order (an update retried before
    // its acknowledgement arrived may be seen twice: delivery is at least once).
    for i in 0..total {
        let id = format!("task-{i}");
        let mut seq: Vec<TaskState> = fw.updates.iter().filter(|s| s.task_id.value == id).map(|s| s.state).collect();
        seq.dedup();
        assert_eq!(seq, vec![TaskState::Starting, TaskState::Running, TaskState::Finished], "task {id}");
    }
}
