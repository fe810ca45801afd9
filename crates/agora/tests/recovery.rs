//! Kill the agent at any moment: checkpointed executors and tasks survive, the restarted
//! agent reconnects to them and reports everything, nothing acknowledged is lost.
#![allow(clippy::unwrap_used)] // test helpers may panic

mod common;

use agora_api::scheduler::EventType;
use agora_api::*;
use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn checkpointing(name: &str, partition_aware: bool) -> FrameworkInfo {
    let mut i = info(name, partition_aware, 3600.0);
    i.checkpoint = true;
    i
}

/// Launches `n` tasks (one command each) as offers allow; returns when all are RUNNING.
async fn launch_running(fw: &mut Fw, tasks: &[(String, String)]) {
    let mut next = 0;
    let mut running = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while running.len() < tasks.len() {
        assert!(Instant::now() < deadline, "only {} of {} running", running.len(), tasks.len());
        let ev = fw.next_matching(T, |_| true).await.expect("events stopped");
        if let Some(o) = ev.offers {
            for offer in o.offers {
                let res = Resources::from_vec(offer.resources.clone());
                let fit = ((res.scalar("cpus") / 0.01).floor() as usize).min((res.scalar("mem") / 32.0) as usize);
                let n = fit.min(tasks.len() - next);
                let infos: Vec<TaskInfo> = tasks[next..next + n]
                    .iter()
                    .map(|(id, cmd)| task_info(id, &offer.agent_id, CommandInfo::shell(cmd.clone()), 0.01, 32.0))
                    .collect();
                next += n;
                fw.s.launch(vec![offer.id.clone()], infos, 0.0).await.unwrap();
            }
        } else if let Some(u) = ev.update {
            assert!(!u.status.state.is_terminal(), "{:?}", u.status);
            if u.status.state == TaskState::Running {
                running.insert(u.status.task_id.value.clone());
            }
        }
    }
}

/// The host pid of the (non-zombie) process with exactly this command line, 0 if none.
fn host_pid(cmdline: &str) -> i32 {
    let want: Vec<&str> = cmdline.split(' ').collect();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let parts: Vec<String> =
            c.split(|b| *b == 0).filter(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        if parts == want && alive(pid) {
            return pid;
        }
    }
    0
}

/// Alive and not a zombie (zombies wait for whoever reaps orphans on this machine).
fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_string));
    matches!(state.as_deref(), Some(s) if s != "Z" && s != "X")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_agent_and_every_task_lives_on() {
    let mut c = Cluster::start(1, &[], &["--resources", "cpus:4;mem:8192;disk:100;ports:[31000-32000]"]).await;
    let mut fw = Fw::subscribe(&c.master.addr, checkpointing("survivor", true)).await;
    let n = 100;
    // Each task's process is found from the host by its unique command line (inside the
    // container `$$` is a pid of the container's own namespace).
    let tasks: Vec<(String, String)> = (0..n).map(|i| (format!("t{i}"), format!("exec sleep 1000.{i}"))).collect();
    launch_running(&mut fw, &tasks).await;
    let agent_id = c.state().await["slaves"][0]["id"].as_str().unwrap().to_string();
    let pid_of = |_: &Cluster, _: &Fw, t: &str| -> i32 { host_pid(&format!("sleep 1000.{}", &t[1..])) };
    let pids: Vec<i32> = wait_until(T, || async {
        let p: Vec<i32> = (0..n).map(|i| pid_of(&c, &fw, &format!("t{i}"))).collect();
        p.iter().all(|x| *x > 0).then_some(p)
    })
    .await
    .expect("every task's process is visible");
    assert!(pids.iter().all(|p| *p > 0 && alive(*p)), "every task wrote its pid");
    let seen_before = fw.updates.len();

    c.crash_agent(0);
    assert!(pids.iter().all(|p| alive(*p)), "tasks die with the agent");
    c.restart_agent(0, &[]).unwrap();
    wait_agent_registered(&c, 0, T).await;
    // No spurious update: nothing arrives for a while after the re-registration.
    let spurious = fw.next_matching(Duration::from_secs(2), |e| e.kind == EventType::Update).await;
    assert!(spurious.is_none(), "unexpected update after the restart: {spurious:?}");
    assert_eq!(fw.updates.len(), seen_before);
    // Same agent, same tasks, same processes.
    let st = c.state().await;
    assert_eq!(st["slaves"].as_array().unwrap().len(), 1);
    assert_eq!(st["slaves"][0]["id"], agent_id);
    fw.s.reconcile(vec![]).await.unwrap();
    let mut states = std::collections::HashMap::new();
    while states.len() < n {
        let ev = fw.next_matching(T, |e| e.kind == EventType::Update).await.expect("reconciliation answers");
        let s = ev.update.unwrap().status;
        states.insert(s.task_id.value.clone(), s.state);
    }
    assert!(states.values().all(|s| *s == TaskState::Running), "{states:?}");
    for (i, p) in pids.iter().enumerate() {
        assert_eq!(pid_of(&c, &fw, &format!("t{i}")), *p);
        assert!(alive(*p));
    }
    // And kills still work.
    for i in 0..5 {
        fw.s.kill(TaskId::new(format!("t{i}")), None).await.unwrap();
    }
    for (i, pid) in pids.iter().enumerate().take(5) {
        fw.until_state(&format!("t{i}"), TaskState::Killed, T).await;
        let dead = wait_until(T, || async { (!alive(*pid)).then_some(()) }).await;
        assert!(dead.is_some(), "killed task {i} (pid {pid}) is still alive");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_ending_while_the_agent_is_down_report_real_exit_codes() {
    let mut c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, checkpointing("late", true)).await;
    let tasks =
        vec![("three".to_string(), "sleep 1.5; exit 3".to_string()), ("zero".to_string(), "sleep 1.5".to_string())];
    launch_running(&mut fw, &tasks).await;
    c.crash_agent(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.restart_agent(0, &[]).unwrap();
    let three = fw.until_state("three", TaskState::Failed, T).await;
    assert_eq!(three.last().unwrap().message.as_deref(), Some("Command exited with status 3"));
    fw.until_state("zero", TaskState::Finished, T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_supervisor_or_executor_fails_its_tasks() {
    let c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, checkpointing("victims", true)).await;
    let tasks = vec![
        ("by-supervisor".to_string(), "sleep 1000".to_string()),
        ("by-executor".to_string(), "sleep 1000".to_string()),
    ];
    launch_running(&mut fw, &tasks).await;
    let containers = c.dir.join("agent0/containers");
    let started = |task: &str| -> serde_json::Value {
        for e in std::fs::read_dir(&containers).unwrap().flatten() {
            let spec = std::fs::read_to_string(e.path().join("spec.json")).unwrap_or_default();
            let env_has = spec.contains(&format!("\"MESOS_EXECUTOR_ID\",\n      \"{task}\""))
                || spec.contains(&format!("[\"MESOS_EXECUTOR_ID\",\"{task}\"]"));
            if env_has {
                return serde_json::from_str(&std::fs::read_to_string(e.path().join("started.json")).unwrap()).unwrap();
            }
        }
        panic!("no container for {task}");
    };
    let sup = started("by-supervisor")["supervisor_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup), nix::sys::signal::Signal::SIGKILL).unwrap();
    let end = fw.until_state("by-supervisor", TaskState::Failed, T).await;
    assert_eq!(end.last().unwrap().reason, Some(Reason::ReasonExecutorTerminated), "{:?}", end.last());
    let init = started("by-executor")["init_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(init), nix::sys::signal::Signal::SIGKILL).unwrap();
    let end = fw.until_state("by-executor", TaskState::Failed, T).await;
    assert_eq!(end.last().unwrap().reason, Some(Reason::ReasonExecutorTerminated), "{:?}", end.last());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_checkpoints_stop_strict_agents_and_lax_ones_recover_the_rest() {
    let mut c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, checkpointing("fragile", true)).await;
    launch_running(&mut fw, &[("keep".into(), "sleep 1000".into())]).await;
    c.crash_agent(0);
    let meta = c.dir.join("agent0/meta/frameworks");
    // A second framework whose checkpoint is torn garbage.
    std::fs::create_dir_all(meta.join("broken")).unwrap();
    std::fs::write(meta.join("broken/framework.json"), b"{\"user\": \"x\", \"na").unwrap();
    let err = c.restart_agent(0, &[]).expect_err("strict recovery must refuse");
    assert!(err.contains("broken/framework.json"), "the message names the file: {err}");
    c.restart_agent(0, &["--strict=false"]).unwrap();
    wait_agent_registered(&c, 0, T).await;
    fw.s.reconcile(vec![(TaskId::new("keep"), None)]).await.unwrap();
    assert_eq!(fw.update("keep", T).await.unwrap().state, TaskState::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_rules_non_checkpointing_frameworks_and_reconfiguration() {
    let mut c = Cluster::start(1, &[], &["--resources", "cpus:4;mem:4096;disk:100;ports:[31000-32000]"]).await;
    // A framework that does not checkpoint loses its tasks when the agent restarts.
    let mut plain = Fw::subscribe(&c.master.addr, info("forgetful", false, 3600.0)).await;
    launch_running(&mut plain, &[("gone".into(), "sleep 1001".into())]).await;
    c.crash_agent(0);
    // A changed configuration is refused under the default policy...
    let err =
        c.restart_agent(0, &["--resources", "cpus:2;mem:4096;disk:100;ports:[31000-32000]"]).expect_err("refused");
    assert!(err.contains("reconfiguration-policy"), "{err}");
    // ...and growth is accepted with --reconfiguration-policy=additive.
    c.restart_agent(
        0,
        &["--resources", "cpus:8;mem:4096;disk:100;ports:[31000-32000]", "--reconfiguration-policy", "additive"],
    )
    .unwrap();
    let s = plain.update("gone", T).await.expect("the lost task is reported");
    assert_eq!(s.state, TaskState::Lost);
    assert_eq!(s.reason, Some(Reason::ReasonAgentRestarted));
    let st = c.state().await;
    assert_eq!(st["slaves"][0]["resources"]["cpus"], 8.0);
    let dead = wait_until(T, || async { (!common_process_running("sleep 1001")).then_some(()) }).await;
    assert!(dead.is_some(), "the non-checkpointed task's process was left running");
}

fn common_process_running(cmdline: &str) -> bool {
    let want: Vec<&str> = cmdline.split(' ').collect();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let parts: Vec<String> =
            c.split(|b| *b == 0).filter(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        parts == want
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reboot_the_agent_is_a_new_agent() {
    let mut c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, checkpointing("rebooted", true)).await;
    launch_running(&mut fw, &[("before".into(), "exec sleep 1002".into())]).await;
    let old_id = c.state().await["slaves"][0]["id"].as_str().unwrap().to_string();
    c.crash_agent(0);
    // A reboot changes the host's boot id (and kills every process; the orphaned container
    // is what a reboot would not leave, and the new agent must clean it up).
    std::fs::write(c.dir.join("agent0/meta/boot_id"), "00000000-0000-0000-0000-000000000000").unwrap();
    c.restart_agent(0, &[]).unwrap();
    let s = fw.update("before", T).await.expect("the old task is reported gone");
    assert_eq!(s.state, TaskState::Gone);
    assert_eq!(s.reason, Some(Reason::ReasonAgentRestarted));
    let st = wait_until(T, || async {
        let st = c.state().await;
        let ids: Vec<String> =
            st["slaves"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap_or("").to_string()).collect();
        (ids.len() == 1 && ids[0] != old_id).then_some(st)
    })
    .await;
    assert!(st.is_some(), "the agent did not come back as a new agent:\n{}", c.logs());
    let gone = wait_until(T, || async { (host_pid("sleep 1002") == 0).then_some(()) }).await;
    assert!(gone.is_some(), "the old incarnation's container was not cleaned up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_cleanup_kills_everything_and_exits() {
    let mut c = Cluster::start(1, &[], &[]).await;
    let mut fw = Fw::subscribe(&c.master.addr, checkpointing("cleaned", true)).await;
    launch_running(&mut fw, &[("doomed".into(), "exec sleep 1003".into())]).await;
    assert!(host_pid("sleep 1003") > 0);
    c.crash_agent(0);
    let err = c.restart_agent(0, &["--recover", "cleanup"]).expect_err("cleanup mode exits");
    assert!(err.contains("--recover=cleanup: destroyed 1 containers"), "{err}");
    let gone = wait_until(T, || async { (host_pid("sleep 1003") == 0).then_some(()) }).await;
    assert!(gone.is_some(), "the task survived --recover=cleanup");
    assert!(!c.dir.join("agent0/meta").exists(), "the checkpoint was not removed");
}
