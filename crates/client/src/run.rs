//! `agora run`: the simplest framework (Mesos's `mesos-execute`). It launches one command
//! task, prints its state changes to stderr, streams its stdout and stderr through the
//! agent's files API, and exits with the task's exit code. It outlives a master failover:
//! when the master goes away it subscribes again (to the new leader) as the same framework.
use crate::{framework_info, Scheduler, SchedulerError};
use agora_api::scheduler::EventType;
use agora_api::*;
use agora_http::{base_url, Client};
use std::io::Write as _;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub master: String,
    pub name: String,
    pub cpus: f64,
    pub mem: f64,
    pub role: String,
    /// Run through the shell (`sh -c`) when one string is given; else exec argv. May be
    /// empty with an image: the image's Entrypoint/Cmd run.
    pub command: Vec<String>,
    /// A Docker image reference the task runs in (`ContainerInfo.mesos.image`).
    pub image: Option<String>,
    /// Print state changes to stderr.
    pub verbose: bool,
}

/// Where the task's sandbox can be read.
struct Sandbox {
    agent_url: String,
    framework_id: String,
    task_id: String,
    offsets: [u64; 2],
}

impl Sandbox {
    /// Copies new bytes of stdout and stderr to ours.
    async fn pump(&mut self, client: &Client) {
        for (i, name) in ["stdout", "stderr"].iter().enumerate() {
            loop {
                let path = format!("/frameworks/{}/executors/{}/runs/latest/{}", self.framework_id, self.task_id, name);
                let url = format!(
                    "{}/files/read?path={}&offset={}&length=65536",
                    self.agent_url,
                    encode(&path),
                    self.offsets[i]
                );
                let Ok(reply) = client.get(&url, Duration::from_secs(5)).await else { break };
                if !reply.status.is_success() {
                    break;
                }
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&reply.body) else { break };
                let data = v["data"].as_str().unwrap_or("");
                if data.is_empty() {
                    break;
                }
                self.offsets[i] += data.len() as u64;
                if i == 0 {
                    let _ = std::io::stdout().write_all(data.as_bytes());
                    let _ = std::io::stdout().flush();
                } else {
                    let _ = std::io::stderr().write_all(data.as_bytes());
                }
            }
        }
    }
}

pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `ContainerInfo` running a task in a Docker image with the Mesos containerizer.
pub fn container_with_image(name: &str) -> serde_json::Value {
    serde_json::json!({"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": name}}}})
}

/// The exit code a shell would report for the task's end.
pub fn exit_code(status: &TaskStatus) -> i32 {
    let msg = status.message.as_deref().unwrap_or("");
    match status.state {
        TaskState::Finished => 0,
        TaskState::Failed => {
            if let Some(n) = msg.strip_prefix("Command exited with status ").and_then(|r| r.trim().parse::<i32>().ok())
            {
                return n;
            }
            if let Some(sig) = signal_in(msg) {
                return 128 + sig;
            }
            1
        }
        TaskState::Killed => 128 + signal_in(msg).unwrap_or(15),
        _ => 1,
    }
}

fn signal_in(msg: &str) -> Option<i32> {
    let table = [
        ("SIGHUP", 1),
        ("SIGINT", 2),
        ("SIGQUIT", 3),
        ("SIGABRT", 6),
        ("SIGKILL", 9),
        ("SIGSEGV", 11),
        ("SIGPIPE", 13),
        ("SIGTERM", 15),
    ];
    table.iter().find(|(n, _)| msg.contains(n)).map(|(_, v)| *v)
}

/// A call that failed because the master went away (the connection broke, it timed out,
/// or the master no longer leads) is not fatal: the event stream breaks too, and `agora run`
/// subscribes again and reconciles. Any other failure (a refused call) is.
fn tolerate(r: Result<(), SchedulerError>) -> Result<(), SchedulerError> {
    use agora_http::http::StatusCode;
    match r {
        Err(SchedulerError::Http(
            agora_http::ClientError::Request { .. } | agora_http::ClientError::Timeout { .. },
        )) => Ok(()),
        Err(SchedulerError::Http(agora_http::ClientError::Status { status, .. }))
            if status == StatusCode::TEMPORARY_REDIRECT || status == StatusCode::SERVICE_UNAVAILABLE =>
        {
            Ok(())
        }
        other => other,
    }
}

/// How long `agora run` keeps trying to subscribe again after losing the master.
const RESUBSCRIBE_WINDOW: Duration = Duration::from_secs(60);

async fn resubscribe(master: &str, info: &FrameworkInfo) -> Result<Scheduler, SchedulerError> {
    let deadline = tokio::time::Instant::now() + RESUBSCRIBE_WINDOW;
    loop {
        match Scheduler::subscribe(master, info.clone()).await {
            Ok(s) => return Ok(s),
            Err(e @ SchedulerError::Refused(_)) => return Err(e),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Runs the task to its end; returns the process exit code.
pub async fn run(opts: RunOptions) -> Result<i32, SchedulerError> {
    let mut info = framework_info(&format!("agora-run {}", opts.name), &opts.role);
    // The master keeps the framework (and its task) this long while we re-subscribe after
    // losing it (a master failover); a clean end tears it down at once.
    info.failover_timeout = RESUBSCRIBE_WINDOW.as_secs_f64();
    let mut sched = Scheduler::subscribe(&opts.master, info.clone()).await?;
    info.id = Some(sched.framework_id.clone());
    let client = Client::new();
    let task_id = TaskId::new(format!("{}-{}", opts.name, std::process::id()));
    let say = |m: String| {
        if opts.verbose {
            eprintln!("{m}");
        }
    };
    say(format!("Subscribed with framework id {}", sched.framework_id));
    let mut launched: Option<AgentId> = None;
    let mut sandbox: Option<Sandbox> = None;
    let mut killing = false;
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let code = loop {
        tokio::select! {
            ev = sched.next_event() => {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e @ SchedulerError::Refused(_)) => return Err(e),
                    Err(e) => {
                        // The master went away (or stopped leading): find the leader and
                        // subscribe again as the same framework, then ask where the task is.
                        say(format!("Lost the master ({e}); subscribing again"));
                        sched = resubscribe(&opts.master, &info).await?;
                        say(format!("Subscribed again with framework id {}", sched.framework_id));
                        if let Some(agent) = &launched {
                            tolerate(sched.reconcile(vec![(task_id.clone(), Some(agent.clone()))]).await)?;
                            if killing {
                                // A kill sent while the master was away may be lost.
                                tolerate(sched.kill(task_id.clone(), Some(agent.clone())).await)?;
                            }
                        }
                        continue;
                    }
                };
                match ev.kind {
                    EventType::Offers => {
                        let offers = ev.offers.map(|o| o.offers).unwrap_or_default();
                        let mut decline = Vec::new();
                        for offer in offers {
                            let res = Resources::from_vec(offer.resources.clone());
                            let fits = res.scalar("cpus") + 1e-9 >= opts.cpus && res.scalar("mem") + 1e-9 >= opts.mem;
                            if launched.is_some() || killing || !fits {
                                decline.push(offer.id.clone());
                                continue;
                            }
                            let role = offer.allocation_info.as_ref().and_then(|a| a.role.as_deref().map(str::to_string)).unwrap_or_else(|| opts.role.clone());
                            let resources = vec![
                                Resource::scalar("cpus", opts.cpus).with_allocation(Some(&role)),
                                Resource::scalar("mem", opts.mem).with_allocation(Some(&role)),
                            ];
                            let command = if opts.command.is_empty() {
                                // The image's Entrypoint/Cmd (Mesos: shell false, no value).
                                CommandInfo { shell: false, value: None, arguments: vec![], environment: None, user: None, uris: vec![] }
                            } else if opts.command.len() == 1 {
                                CommandInfo::shell(opts.command[0].clone())
                            } else {
                                CommandInfo {
                                    shell: false,
                                    value: opts.command.first().cloned(),
                                    arguments: opts.command.clone(),
                                    environment: None,
                                    user: None,
                                    uris: vec![],
                                }
                            };
                            let mut task = TaskInfo { name: opts.name.clone(), ..TaskInfo::command(task_id.clone(), offer.agent_id.clone(), resources, command) };
                            if let Some(image) = &opts.image {
                                task.container = Some(container_with_image(image));
                            }
                            let agent_url = offer
                                .url
                                .as_ref()
                                .and_then(|u| {
                                    let a = &u["address"];
                                    let host = a["ip"].as_str().or(a["hostname"].as_str())?;
                                    Some(format!("{}:{}", host, a["port"].as_u64()?))
                                })
                                .unwrap_or_else(|| format!("{}:5051", offer.hostname));
                            sandbox = Some(Sandbox {
                                agent_url: base_url(&agent_url),
                                framework_id: sched.framework_id.value.to_string(),
                                task_id: task_id.value.to_string(),
                                offsets: [0, 0],
                            });
                            say(format!("Launching task '{}' on agent {} ({})", task_id, offer.agent_id, offer.hostname));
                            // If the master went away mid-call, the reconciliation after re-subscribing
                            // tells whether the launch got through.
                            tolerate(sched.launch(vec![offer.id.clone()], vec![task], 5.0).await)?;
                            launched = Some(offer.agent_id.clone());
                        }
                        if !decline.is_empty() {
                            tolerate(sched.decline(decline, 3600.0).await)?;
                        }
                    }
                    EventType::Update => {
                        let Some(u) = ev.update else { continue };
                        let s = u.status;
                        if s.task_id != task_id {
                            continue;
                        }
                        let detail = s.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
                        say(format!("Received status update {} for task '{}'{}", s.state.name(), s.task_id, detail));
                        // An update not acknowledged is sent again (after a re-subscription too).
                        tolerate(sched.acknowledge(&s).await)?;
                        if s.state.is_terminal() {
                            if let Some(sb) = sandbox.as_mut() {
                                sb.pump(&client).await;
                            }
                            break exit_code(&s);
                        }
                    }
                    EventType::Error => {
                        let m = ev.error.map(|e| e.message).unwrap_or_default();
                        return Err(SchedulerError::Refused(m));
                    }
                    _ => {}
                }
            }
            _ = ticker.tick() => {
                if let Some(sb) = sandbox.as_mut() {
                    sb.pump(&client).await;
                }
            }
            _ = &mut ctrl_c, if !killing => {
                killing = true;
                say("Interrupted: killing the task".to_string());
                match &launched {
                    Some(agent) => tolerate(sched.kill(task_id.clone(), Some(agent.clone())).await)?,
                    None => break 130,
                }
            }
        }
    };
    let _ = sched.teardown().await;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let mut s = TaskStatus::new(TaskId::new("t"), TaskState::Failed);
        s.message = Some("Command exited with status 7".into());
        assert_eq!(exit_code(&s), 7);
        s.state = TaskState::Killed;
        s.message = Some("Command terminated with signal SIGKILL".into());
        assert_eq!(exit_code(&s), 137);
        s.message = None;
        assert_eq!(exit_code(&s), 143);
        s.state = TaskState::Finished;
        assert_eq!(exit_code(&s), 0);
        s.state = TaskState::Lost;
        assert_eq!(exit_code(&s), 1);
    }
}
