//! Runs the executor against a small in-test agent that implements just enough of
//! `POST /api/v1/executor`: SUBSCRIBE answers with a RecordIO stream that starts with
//! SUBSCRIBED; every call is handed to the test, which sends events on the stream.
use agora_api::executor::{Call, CallType};
use agora_api::{TaskState, TaskStatus};
use agora_executor::{run, Config, ExecutorError};
use agora_http::http::{Request, Response, StatusCode};
use agora_http::{Body, IncomingBody};
use bytes::Bytes;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const WAIT: Duration = Duration::from_secs(5);

struct Shared {
    stream: Mutex<Option<agora_http::StreamTx>>,
    calls: mpsc::UnboundedSender<Call>,
    capabilities: Vec<&'static str>,
    /// Answer this many SUBSCRIBEs with 503 (agent recovering) first.
    refuse_subscribes: AtomicUsize,
}

/// `refuse_subscribes` for an agent that never recovers.
const FOREVER: usize = usize::MAX;

struct Agent {
    addr: SocketAddr,
    shared: Arc<Shared>,
    calls: mpsc::UnboundedReceiver<Call>,
    server: JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn record(v: &Value) -> Bytes {
    Bytes::from(agora_api::recordio::encode(&serde_json::to_vec(v).expect("json")))
}

async fn handle(shared: Arc<Shared>, req: Request<IncomingBody>) -> Response<Body> {
    let body = agora_http::read_body(req.into_body(), 1 << 20).await.expect("request body");
    let call: Call = serde_json::from_slice(&body).expect("executor call");
    match call.kind {
        CallType::Subscribe => {
            if shared.refuse_subscribes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                let _ = shared.calls.send(call);
                return agora_http::text(StatusCode::SERVICE_UNAVAILABLE, "Agent has not finished recovery");
            }
            let (tx, resp) = agora_http::stream(StatusCode::OK, agora_http::JSON);
            let caps: Vec<Value> = shared.capabilities.iter().map(|c| json!({ "type": c })).collect();
            let subscribed = json!({
                "type": "SUBSCRIBED",
                "subscribed": {
                    "executor_info": {"executor_id": call.executor_id, "framework_id": call.framework_id},
                    "framework_info": {"user": "root", "name": "test", "id": call.framework_id, "capabilities": caps},
                    "agent_info": {"hostname": "localhost", "id": {"value": "agent-S0"}},
                    "container_id": {"value": "c1"}
                }
            });
            let _ = tx.send(record(&subscribed));
            *shared.stream.lock().expect("lock") = Some(tx);
            let _ = shared.calls.send(call);
            resp
        }
        _ => {
            let _ = shared.calls.send(call);
            agora_http::empty(StatusCode::ACCEPTED)
        }
    }
}

impl Agent {
    async fn start(capabilities: Vec<&'static str>, refuse_subscribes: usize) -> Agent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            stream: Mutex::new(None),
            calls: calls_tx,
            capabilities,
            refuse_subscribes: AtomicUsize::new(refuse_subscribes),
        });
        let s = shared.clone();
        let handler: agora_http::Handler = Arc::new(move |req, _peer| {
            let s = s.clone();
            Box::pin(handle(s, req))
        });
        let server = tokio::spawn(agora_http::serve(listener, handler));
        Agent { addr, shared, calls, server }
    }

    async fn next_call(&mut self) -> Call {
        timeout(WAIT, self.calls.recv()).await.expect("a call from the executor in time").expect("agent alive")
    }

    async fn expect_subscribe(&mut self) -> Call {
        let call = self.next_call().await;
        assert_eq!(call.kind, CallType::Subscribe, "{call:?}");
        call
    }

    async fn expect_update(&mut self) -> TaskStatus {
        let call = self.next_call().await;
        assert_eq!(call.kind, CallType::Update, "{call:?}");
        assert_eq!(call.executor_id.value, "task-1");
        assert_eq!(call.framework_id.value, "fw-1");
        let status = call.update.expect("update body").status;
        assert_eq!(status.source, Some(agora_api::Source::Executor));
        assert_eq!(status.executor_id.as_ref().map(|e| e.value.as_str()), Some("task-1"));
        assert_eq!(status.agent_id.as_ref().map(|e| e.value.as_str()), Some("agent-S0"));
        assert_eq!(status.uuid.as_ref().map(|u| u.0.len()), Some(16));
        assert!(status.timestamp.is_some());
        status
    }

    /// Expects the next update to be in `state`, and acknowledges it.
    async fn expect_acked(&mut self, state: TaskState) -> TaskStatus {
        let status = self.expect_update().await;
        assert_eq!(status.state, state, "{status:?}");
        self.ack(&status);
        status
    }

    fn send(&self, event: Value) {
        let guard = self.shared.stream.lock().expect("lock");
        let tx = guard.as_ref().expect("an open subscription");
        tx.send(record(&event)).expect("stream open");
    }

    fn ack(&self, status: &TaskStatus) {
        self.send(json!({
            "type": "ACKNOWLEDGED",
            "acknowledged": {"task_id": status.task_id, "uuid": status.uuid}
        }));
    }

    fn launch(&self, task: Value) {
        self.send(json!({"type": "LAUNCH", "launch": {"task": task}}));
    }

    fn kill(&self, grace: Option<Duration>) {
        let mut kill = json!({"task_id": {"value": "task-1"}});
        if let Some(g) = grace {
            kill["kill_policy"] = json!({"grace_period": {"nanoseconds": g.as_nanos() as u64}});
        }
        self.send(json!({"type": "KILL", "kill": kill}));
    }

    fn drop_stream(&self) {
        self.shared.stream.lock().expect("lock").take();
    }

    /// The agent goes away for good: no new connections, no stream, and SUBSCRIBEs on
    /// connections the client still pools are refused.
    fn stop(&self) {
        self.server.abort();
        self.shared.refuse_subscribes.store(FOREVER, Ordering::SeqCst);
        self.drop_stream();
    }
}

/// A scratch sandbox directory, removed on drop.
struct Sandbox(PathBuf);

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("agora-executor-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("sandbox dir");
        Sandbox(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(agent: &Agent, sandbox: &Sandbox, checkpoint: bool) -> Config {
    Config {
        agent_endpoint: agent.addr.to_string(),
        framework_id: "fw-1".into(),
        executor_id: "task-1".into(),
        directory: sandbox.0.clone(),
        sandbox: sandbox.0.clone(),
        shutdown_grace: Duration::from_secs(2),
        checkpoint,
        recovery_timeout: Duration::from_secs(5),
        image: None,
    }
}

fn shell_task(cmd: &str) -> Value {
    json!({
        "name": "test", "task_id": {"value": "task-1"}, "agent_id": {"value": "agent-S0"},
        "command": {"value": cmd}
    })
}

fn argv_task(argv: &[&str]) -> Value {
    json!({
        "name": "test", "task_id": {"value": "task-1"}, "agent_id": {"value": "agent-S0"},
        "command": {"shell": false, "value": argv[0], "arguments": argv}
    })
}

async fn finished(exec: JoinHandle<Result<(), ExecutorError>>) -> Result<(), ExecutorError> {
    timeout(WAIT, exec).await.expect("executor exits in time").expect("executor task")
}

async fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + WAIT;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `path` holds a whole pid: the shell creates the file before writing it.
async fn wait_for_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(pid) = text.strip_suffix('\n').and_then(|t| t.trim().parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether `pid` is a live process: not gone, and not a zombie waiting to be reaped.
fn running(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state is the first field after the parenthesised command name.
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    matches!(state, Some(s) if s != 'Z' && s != 'X')
}

#[tokio::test]
async fn failing_command_reports_starting_running_failed_in_order() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("failing");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    let sub = agent.expect_subscribe().await;
    assert_eq!(sub.subscribe.expect("subscribe body"), Default::default());

    agent.launch(shell_task("echo hi; exit 3"));
    agent.expect_acked(TaskState::Starting).await;
    agent.expect_acked(TaskState::Running).await;
    let failed = agent.expect_update().await;
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(failed.message.as_deref(), Some("Command exited with status 3"));
    assert_eq!(failed.reason, None);
    // Not done until the terminal update is acknowledged.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!exec.is_finished(), "exited before the terminal update was acknowledged");
    agent.ack(&failed);
    finished(exec).await.expect("clean exit");
}

#[tokio::test]
async fn task_environment_and_working_directory() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("env");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    agent.expect_subscribe().await;
    let mut task = shell_task(
        r#"echo "$MESOS_TASK_ID $MESOS_SANDBOX $FOO ${MESOS_AGENT_ENDPOINT:-unset}" > env.out && pwd > pwd.out"#,
    );
    task["command"]["environment"] = json!({"variables": [{"name": "FOO", "value": "bar baz"}]});
    agent.launch(task);
    agent.expect_acked(TaskState::Starting).await;
    agent.expect_acked(TaskState::Running).await;
    let done = agent.expect_acked(TaskState::Finished).await;
    assert_eq!(done.message.as_deref(), Some("Command exited with status 0"));
    finished(exec).await.expect("clean exit");
    let env = std::fs::read_to_string(sandbox.path("env.out")).expect("env.out");
    assert_eq!(env.trim(), format!("task-1 {} bar baz unset", sandbox.0.display()));
    let pwd = std::fs::read_to_string(sandbox.path("pwd.out")).expect("pwd.out");
    assert_eq!(Path::new(pwd.trim()).canonicalize().ok(), sandbox.0.canonicalize().ok());
}

#[tokio::test]
async fn kill_sends_sigterm_and_reports_killed_after_killing() {
    // The framework understands TASK_KILLING, so it comes before TASK_KILLED.
    let mut agent = Agent::start(vec!["TASK_KILLING_STATE"], 0).await;
    let sandbox = Sandbox::new("kill");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    agent.expect_subscribe().await;
    agent.launch(argv_task(&["sleep", "100"]));
    agent.expect_acked(TaskState::Starting).await;
    agent.expect_acked(TaskState::Running).await;
    let start = Instant::now();
    agent.kill(Some(Duration::from_secs(5)));
    agent.expect_acked(TaskState::Killing).await;
    let killed = agent.expect_acked(TaskState::Killed).await;
    assert_eq!(killed.message.as_deref(), Some("Command terminated with signal SIGTERM"));
    assert!(start.elapsed() < Duration::from_secs(3), "SIGTERM should end sleep at once");
    finished(exec).await.expect("clean exit");
}

#[tokio::test]
async fn task_ignoring_sigterm_is_killed_with_sigkill_after_grace() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("sigkill");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    agent.expect_subscribe().await;
    agent.launch(shell_task(r#"trap "" TERM; touch ready; sleep 100"#));
    agent.expect_acked(TaskState::Starting).await;
    agent.expect_acked(TaskState::Running).await;
    // Only once the trap is in place is SIGTERM sure to be ignored.
    wait_for_file(&sandbox.path("ready")).await;
    let start = Instant::now();
    agent.kill(Some(Duration::from_millis(500)));
    // No TASK_KILLING: the framework lacks the capability.
    let killed = agent.expect_acked(TaskState::Killed).await;
    let took = start.elapsed();
    assert_eq!(killed.message.as_deref(), Some("Command terminated with signal SIGKILL"));
    assert!(took >= Duration::from_millis(450), "SIGKILL came before the grace period: {took:?}");
    assert!(took < Duration::from_secs(3), "SIGKILL came late: {took:?}");
    finished(exec).await.expect("clean exit");
}

#[tokio::test]
async fn unacknowledged_updates_are_resent_on_resubscribe() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("resubscribe");
    let exec = tokio::spawn(run(config(&agent, &sandbox, true)));
    agent.expect_subscribe().await;
    agent.launch(shell_task("sleep 100"));
    let starting = agent.expect_update().await;
    let running = agent.expect_update().await;
    assert_eq!((starting.state, running.state), (TaskState::Starting, TaskState::Running));

    // The agent goes away before acknowledging anything; the task keeps running.
    agent.drop_stream();
    let sub = agent.expect_subscribe().await.subscribe.expect("subscribe body");
    let resent: Vec<&TaskStatus> = sub.unacknowledged_updates.iter().map(|u| &u.status).collect();
    assert_eq!(resent, vec![&starting, &running], "same updates, same uuids, same order");
    assert_eq!(sub.unacknowledged_tasks.len(), 1);
    assert_eq!(sub.unacknowledged_tasks[0].task_id.value, "task-1");

    agent.ack(&starting);
    agent.ack(&running);
    agent.kill(Some(Duration::from_secs(5)));
    let killed = agent.expect_acked(TaskState::Killed).await;
    assert_eq!(killed.message.as_deref(), Some("Command terminated with signal SIGTERM"));
    finished(exec).await.expect("clean exit");
}

#[tokio::test]
async fn subscribe_is_retried_while_the_agent_answers_503() {
    let mut agent = Agent::start(vec![], 2).await;
    let sandbox = Sandbox::new("503");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    for _ in 0..3 {
        agent.expect_subscribe().await;
    }
    agent.launch(shell_task("exit 0"));
    agent.expect_acked(TaskState::Starting).await;
    agent.expect_acked(TaskState::Running).await;
    agent.expect_acked(TaskState::Finished).await;
    finished(exec).await.expect("clean exit");
}

#[tokio::test]
async fn lost_agent_without_checkpoint_kills_the_task() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("lost");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    agent.expect_subscribe().await;
    // A background child too: the whole process group must go.
    agent.launch(shell_task("sleep 100 & echo $! > child.pid; echo $$ > pid; wait"));
    agent.expect_acked(TaskState::Starting).await;
    agent.expect_acked(TaskState::Running).await;
    let pid = wait_for_pid(&sandbox.path("pid")).await;
    let child = wait_for_pid(&sandbox.path("child.pid")).await;
    assert!(running(pid) && running(child));

    agent.drop_stream();
    let err = finished(exec).await.expect_err("agent gone");
    assert!(matches!(err, ExecutorError::AgentDisconnected { .. }), "{err}");
    // SIGKILL is delivered asynchronously: give the group a moment to die. (The leader
    // stays a zombie of this test process and the background sleep one of init until
    // reaped; neither is running.)
    let deadline = Instant::now() + WAIT;
    while (running(pid) || running(child)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!running(pid), "task leader survived");
    assert!(!running(child), "background process survived");
}

#[tokio::test]
async fn kill_before_launch_reports_killed_without_running() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("early-kill");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    agent.expect_subscribe().await;
    agent.kill(None);
    agent.launch(shell_task("touch ran"));
    let killed = agent.expect_acked(TaskState::Killed).await;
    assert_eq!(killed.reason, Some(agora_api::Reason::ReasonTaskKilledDuringLaunch));
    finished(exec).await.expect("clean exit");
    assert!(!sandbox.path("ran").exists());
}

#[tokio::test]
async fn unlaunchable_command_fails_with_a_clear_message() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("enoent");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    agent.expect_subscribe().await;
    agent.launch(argv_task(&["agora-no-such-program-xyz"]));
    agent.expect_acked(TaskState::Starting).await;
    let failed = agent.expect_acked(TaskState::Failed).await;
    let msg = failed.message.unwrap_or_default();
    assert!(msg.starts_with("Failed to launch command: "), "{msg}");
    assert!(msg.contains("agora-no-such-program-xyz"), "{msg}");
    finished(exec).await.expect("clean exit");
}

#[tokio::test]
async fn unknown_user_fails_the_task() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("user");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    agent.expect_subscribe().await;
    let mut task = shell_task("true");
    task["command"]["user"] = json!("agora-no-such-user");
    agent.launch(task);
    agent.expect_acked(TaskState::Starting).await;
    let failed = agent.expect_acked(TaskState::Failed).await;
    assert_eq!(failed.message.as_deref(), Some("Failed to launch command: user 'agora-no-such-user' does not exist"));
    finished(exec).await.expect("clean exit");
}

#[tokio::test]
async fn max_completion_time_fails_the_task() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("max-completion");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    agent.expect_subscribe().await;
    let mut task = shell_task("sleep 100");
    task["max_completion_time"] = json!({"nanoseconds": 300_000_000u64});
    agent.launch(task);
    agent.expect_acked(TaskState::Starting).await;
    agent.expect_acked(TaskState::Running).await;
    let failed = agent.expect_acked(TaskState::Failed).await;
    assert_eq!(failed.reason, Some(agora_api::Reason::ReasonMaxCompletionTimeReached));
    assert!(failed.message.unwrap_or_default().contains("maximum completion time of 300ms"));
    finished(exec).await.expect("clean exit");
}

#[tokio::test]
async fn shutdown_kills_the_task_and_exits() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("shutdown");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    agent.expect_subscribe().await;
    agent.launch(shell_task("sleep 100"));
    agent.expect_acked(TaskState::Starting).await;
    agent.expect_acked(TaskState::Running).await;
    agent.send(json!({"type": "SHUTDOWN"}));
    agent.expect_acked(TaskState::Killed).await;
    finished(exec).await.expect("clean exit");
}

#[tokio::test]
async fn error_event_stops_the_executor_with_an_error() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("error");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    agent.expect_subscribe().await;
    agent.send(json!({"type": "HEARTBEAT"}));
    agent.send(json!({"type": "LAUNCH", "launch": {"task": "garbage"}}));
    agent.send(json!({"type": "ERROR", "error": {"message": "framework removed"}}));
    let err = finished(exec).await.expect_err("error event");
    assert_eq!(err.to_string(), "the agent sent an ERROR event: framework removed");
}

#[tokio::test]
async fn leftover_processes_are_killed_when_the_task_exits() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("leftover");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    agent.expect_subscribe().await;
    agent.launch(shell_task("sleep 100 & echo $! > child.pid"));
    agent.expect_acked(TaskState::Starting).await;
    agent.expect_acked(TaskState::Running).await;
    let done = agent.expect_acked(TaskState::Finished).await;
    assert_eq!(done.message.as_deref(), Some("Command exited with status 0"));
    finished(exec).await.expect("clean exit");
    let child = wait_for_pid(&sandbox.path("child.pid")).await;
    let deadline = Instant::now() + WAIT;
    while running(child) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!running(child), "the task's background process survived it");
}

#[tokio::test]
async fn task_runs_as_the_requested_user_with_its_groups() {
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        eprintln!("no user 'nobody' here: nothing to switch to");
        return;
    };
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("not root: the executor cannot switch users here");
        return;
    }
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("user-switch");
    std::os::unix::fs::chown(&sandbox.0, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).expect("chown sandbox");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    agent.expect_subscribe().await;
    let mut task = shell_task("echo $(id -u) $(id -g) $(id -G) > id.out");
    task["command"]["user"] = json!("nobody");
    agent.launch(task);
    agent.expect_acked(TaskState::Starting).await;
    agent.expect_acked(TaskState::Running).await;
    agent.expect_acked(TaskState::Finished).await;
    finished(exec).await.expect("clean exit");
    let ids = std::fs::read_to_string(sandbox.path("id.out")).expect("id.out");
    let cname = std::ffi::CString::new("nobody").expect("name");
    let mut groups: Vec<String> =
        nix::unistd::getgrouplist(&cname, nobody.gid).expect("groups").iter().map(|g| g.to_string()).collect();
    groups.dedup();
    let expected = format!("{} {} {}", nobody.uid, nobody.gid, groups.join(" "));
    assert_eq!(ids.trim(), expected);
}

#[tokio::test]
async fn task_killed_by_a_foreign_signal_fails() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("foreign-signal");
    let exec = tokio::spawn(run(config(&agent, &sandbox, false)));
    agent.expect_subscribe().await;
    agent.launch(shell_task("kill -USR1 $$"));
    agent.expect_acked(TaskState::Starting).await;
    agent.expect_acked(TaskState::Running).await;
    let failed = agent.expect_acked(TaskState::Failed).await;
    assert_eq!(failed.message.as_deref(), Some("Command terminated with signal SIGUSR1"));
    finished(exec).await.expect("clean exit");
}

#[tokio::test]
async fn checkpointed_executor_gives_up_after_the_recovery_timeout() {
    let mut agent = Agent::start(vec![], 0).await;
    let sandbox = Sandbox::new("recovery-timeout");
    let mut cfg = config(&agent, &sandbox, true);
    cfg.recovery_timeout = Duration::from_millis(500);
    let exec = tokio::spawn(run(cfg));
    agent.expect_subscribe().await;
    agent.launch(shell_task("echo $$ > pid; exec sleep 100"));
    agent.expect_acked(TaskState::Starting).await;
    agent.expect_acked(TaskState::Running).await;
    let pid = wait_for_pid(&sandbox.path("pid")).await;

    let start = Instant::now();
    agent.stop();
    let err = finished(exec).await.expect_err("agent never came back");
    assert!(matches!(err, ExecutorError::SubscribeTimeout { .. }), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(500), "gave up early: {:?}", start.elapsed());
    let deadline = Instant::now() + WAIT;
    while running(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!running(pid), "task survived the executor");
}
