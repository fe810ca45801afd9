//! Agora's built-in **command executor**: runs one command task (`TaskInfo.command`) and
//! speaks the Mesos v1 executor HTTP API to the agent. The `agora` binary runs it as the
//! hidden subcommand `agora executor`; the agent starts one per command task, as its own
//! process group, with the `MESOS_*` environment that [`Config::from_env`] reads.
//!
//! # Protocol
//!
//! Against `POST http://{MESOS_AGENT_ENDPOINT}/api/v1/executor`:
//!
//! * The executor MUST subscribe first (`SUBSCRIBE`, answered by a RecordIO event stream
//!   whose first event is `SUBSCRIBED`). Every `SUBSCRIBE` carries the launched task while
//!   none of its updates is acknowledged, and every update not yet acknowledged, in order.
//! * Every update (`UPDATE`, answered 202) MUST carry `source: SOURCE_EXECUTOR`, the
//!   executor id, a fresh 16-byte `uuid` and a `timestamp`. Updates are POSTed one at a
//!   time, in the order they were made, and each is kept until the agent's `ACKNOWLEDGED`
//!   for its uuid arrives. A failed POST is not retried on its own: the connection is
//!   treated as lost and the update goes out again in the next `SUBSCRIBE`.
//! * The task's updates are `TASK_STARTING`, `TASK_RUNNING`, then one terminal state;
//!   `TASK_KILLING` is sent before the terminal state of a kill only when the framework
//!   has the `TASK_KILLING_STATE` capability (read from `SUBSCRIBED.framework_info`).
//! * When the stream ends or a call fails: with checkpointing the executor re-subscribes
//!   with backoff (100 ms doubling to 1 s) for up to `MESOS_RECOVERY_TIMEOUT`, and the task
//!   keeps running meanwhile; without checkpointing the agent is gone, and the executor
//!   kills the task's process group and exits with an error. A 503 answer (agent still
//!   recovering) is retried like a refused connection. Before the first `SUBSCRIBED` a
//!   non-checkpointing executor retries for at most a minute (the agent's registration
//!   timeout).
//! * The executor exits once the task's terminal update (and every other update) is
//!   acknowledged, after `SHUTDOWN` (at the latest when the shutdown grace period ends),
//!   or on an `ERROR` event (with an error). It MUST leave no process of the task's group
//!   behind: the group is sent SIGKILL as soon as the task's leading process has exited
//!   (while its zombie still pins the group id) and again, if still running, on exit.
//! * SIGTERM or SIGINT to the executor is handled like `SHUTDOWN`; a second one makes it
//!   exit at once (killing the task's group).
//! * Nothing the agent sends makes the executor panic: malformed events are logged and
//!   skipped.
//!
//! # The task
//!
//! `shell: true` runs `/bin/sh -c <value>`; `shell: false` executes `value` (searched in
//! `PATH`) with `arguments` as its argv. The task runs in its own process group, in
//! `MESOS_DIRECTORY`, with the executor's stdout/stderr and environment (less the
//! agent-to-executor plumbing such as `MESOS_AGENT_ENDPOINT` and
//! `MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD`), plus `MESOS_SANDBOX`, `MESOS_TASK_ID` and the
//! command's `VALUE` environment variables. A `CommandInfo.user` other than the executor's
//! is switched to (with its supplementary groups) when the executor runs as root.
//!
//! A kill sends SIGTERM to the group and SIGKILL after the grace period: the KILL event's
//! `kill_policy`, else the task's, else 3 s. `SHUTDOWN` kills with the shutdown grace
//! period less one second, so that `TASK_KILLED` can still be sent before the agent
//! destroys the container. `max_completion_time` kills the task the same way and reports
//! `TASK_FAILED` with `REASON_MAX_COMPLETION_TIME_REACHED`.
#![deny(unsafe_code)]

mod driver;
mod duration;
mod launch;
mod status;

pub use duration::{format_mesos_duration, parse_mesos_duration};

use agora_api::{ExecutorId, FrameworkId};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// Set by the launcher: where the task's prepared image rootfs is.
pub const ROOTFS_ENV: &str = "AGORA_TASK_ROOTFS";

/// The default `MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD` (the agent flag's default).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The default `MESOS_RECOVERY_TIMEOUT` (the agent flag's default).
pub const DEFAULT_RECOVERY_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The environment variable holding the task's image runtime configuration (JSON of
/// [`ImageRuntime`] without `rootfs`), set by the agent for tasks with a container image.
pub const IMAGE_ENV: &str = "AGORA_TASK_IMAGE";

/// How to run the task in a container image (Mesos's docker/runtime isolator): the image's
/// Entrypoint, Cmd, Env, WorkingDir and User, and where the launcher prepared its rootfs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRuntime {
    /// The prepared rootfs as the executor sees it (`AGORA_TASK_ROOTFS`, set by the launcher).
    #[serde(default, skip)]
    pub rootfs: PathBuf,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `NAME=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

/// What the executor needs to know, normally read from the environment the agent sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The agent's `ip:port` (`MESOS_AGENT_ENDPOINT`), e.g. `127.0.0.1:5051`.
    pub agent_endpoint: String,
    pub framework_id: FrameworkId,
    pub executor_id: ExecutorId,
    /// The sandbox on the host (`MESOS_DIRECTORY`): the task's working directory.
    pub directory: PathBuf,
    /// The sandbox as the task sees it (`MESOS_SANDBOX`).
    pub sandbox: PathBuf,
    /// How long the agent gives the executor to shut down.
    pub shutdown_grace: Duration,
    /// Whether the framework checkpoints: then the executor survives agent restarts.
    pub checkpoint: bool,
    /// How long to keep trying to re-subscribe to a restarting agent.
    pub recovery_timeout: Duration,
    /// The task runs in this image (`AGORA_TASK_IMAGE` and `AGORA_TASK_ROOTFS`).
    pub image: Option<ImageRuntime>,
}

impl Config {
    /// Reads `MESOS_AGENT_ENDPOINT`, `MESOS_FRAMEWORK_ID`, `MESOS_EXECUTOR_ID`,
    /// `MESOS_DIRECTORY` (all required), `MESOS_SANDBOX` (default: the directory),
    /// `MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD` (default 5secs), `MESOS_CHECKPOINT`
    /// (`1`/`0`, default `0`) and `MESOS_RECOVERY_TIMEOUT` (default 15mins).
    pub fn from_env() -> Result<Config, ExecutorError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ExecutorError> {
        let required = |name: &str| match get(name) {
            Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(ExecutorError::Env { var: name.to_string(), why: "not set".to_string() }),
        };
        let duration = |name: &str, default: Duration| match get(name) {
            Some(v) if !v.trim().is_empty() => {
                parse_mesos_duration(&v).map_err(|e| ExecutorError::Env { var: name.to_string(), why: e.to_string() })
            }
            _ => Ok(default),
        };
        let directory = PathBuf::from(required("MESOS_DIRECTORY")?);
        let sandbox = match get("MESOS_SANDBOX") {
            Some(v) if !v.trim().is_empty() => PathBuf::from(v.trim()),
            _ => directory.clone(),
        };
        let checkpoint = match get("MESOS_CHECKPOINT").as_deref().map(str::trim) {
            None | Some("") | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(other) => {
                return Err(ExecutorError::Env {
                    var: "MESOS_CHECKPOINT".to_string(),
                    why: format!("expected 1 or 0, got '{other}'"),
                })
            }
        };
        let image = match (get(IMAGE_ENV), get(ROOTFS_ENV)) {
            (None, None) => None,
            (Some(json), Some(rootfs)) if !rootfs.trim().is_empty() => {
                let mut img: ImageRuntime = serde_json::from_str(&json)
                    .map_err(|e| ExecutorError::Env { var: IMAGE_ENV.to_string(), why: e.to_string() })?;
                img.rootfs = PathBuf::from(rootfs.trim());
                Some(img)
            }
            (Some(_), _) => {
                return Err(ExecutorError::Env {
                    var: ROOTFS_ENV.to_string(),
                    why: "not set, but the task has an image (the launcher prepares no rootfs)".to_string(),
                })
            }
            (None, Some(_)) => {
                return Err(ExecutorError::Env { var: IMAGE_ENV.to_string(), why: "not set".to_string() })
            }
        };
        Ok(Config {
            image,
            agent_endpoint: required("MESOS_AGENT_ENDPOINT")?,
            framework_id: FrameworkId::new(required("MESOS_FRAMEWORK_ID")?),
            executor_id: ExecutorId::new(required("MESOS_EXECUTOR_ID")?),
            directory,
            sandbox,
            shutdown_grace: duration("MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD", DEFAULT_SHUTDOWN_GRACE)?,
            checkpoint,
            recovery_timeout: duration("MESOS_RECOVERY_TIMEOUT", DEFAULT_RECOVERY_TIMEOUT)?,
        })
    }
}

/// Why the executor stopped other than by finishing its task.
#[derive(Debug, Error)]
pub enum ExecutorError {
    #[error("environment variable {var}: {why}")]
    Env { var: String, why: String },
    #[error("invalid duration '{input}': {why}")]
    Duration { input: String, why: String },
    #[error("lost the connection to the agent at {endpoint} and the framework does not checkpoint: {why}")]
    AgentDisconnected { endpoint: String, why: String },
    #[error("could not subscribe to the agent at {endpoint} within {}: {last_error}", format_mesos_duration(*.waited))]
    SubscribeTimeout { endpoint: String, waited: Duration, last_error: String },
    #[error("the agent sent an ERROR event: {message}")]
    Agent { message: String },
}

/// Runs the executor until it is done: the task's terminal update acknowledged by the
/// agent, a `SHUTDOWN` handled, or an error. No process of the task is left running when
/// this returns, or when the future is dropped.
pub async fn run(config: Config) -> Result<(), ExecutorError> {
    use tracing::Instrument as _;
    if config.image.is_some() {
        // The task shares the executor's PID namespace: without this a root task could reach
        // the host's filesystem through /proc/1/root (the executor's root).
        if let Err(e) = nix::sys::prctl::set_dumpable(false) {
            tracing::warn!(error = %e, "could not make the executor non-dumpable");
        }
    }
    let span = tracing::info_span!("executor", framework = %config.framework_id, executor = %config.executor_id);
    driver::Driver::new(config).run().instrument(span).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<Config, ExecutorError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: &[(&str, &str)] = &[
        ("MESOS_AGENT_ENDPOINT", "127.0.0.1:5051"),
        ("MESOS_FRAMEWORK_ID", "m-0000"),
        ("MESOS_EXECUTOR_ID", "task-1"),
        ("MESOS_DIRECTORY", "/var/lib/agora/sandbox"),
    ];

    #[test]
    fn config_defaults() {
        let c = from(BASE).expect("config");
        assert_eq!(c.agent_endpoint, "127.0.0.1:5051");
        assert_eq!(c.framework_id, FrameworkId::new("m-0000"));
        assert_eq!(c.executor_id, ExecutorId::new("task-1"));
        assert_eq!(c.sandbox, PathBuf::from("/var/lib/agora/sandbox"));
        assert_eq!(c.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        assert!(!c.checkpoint);
        assert_eq!(c.recovery_timeout, DEFAULT_RECOVERY_TIMEOUT);
    }

    #[test]
    fn config_reads_everything() {
        let mut vars = BASE.to_vec();
        vars.extend([
            ("MESOS_SANDBOX", "/mnt/mesos/sandbox"),
            ("MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD", "3.5secs"),
            ("MESOS_CHECKPOINT", "1"),
            ("MESOS_RECOVERY_TIMEOUT", "2mins"),
        ]);
        let c = from(&vars).expect("config");
        assert_eq!(c.sandbox, PathBuf::from("/mnt/mesos/sandbox"));
        assert_eq!(c.shutdown_grace, Duration::from_millis(3500));
        assert!(c.checkpoint);
        assert_eq!(c.recovery_timeout, Duration::from_secs(120));
    }

    #[test]
    fn config_errors_name_the_variable() {
        let err = from(&BASE[1..]).expect_err("missing endpoint");
        assert_eq!(err.to_string(), "environment variable MESOS_AGENT_ENDPOINT: not set");
        let mut vars = BASE.to_vec();
        vars.push(("MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD", "soon"));
        let err = from(&vars).expect_err("bad duration");
        assert!(
            err.to_string()
                .starts_with("environment variable MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD: invalid duration 'soon'"),
            "{err}"
        );
        let mut vars = BASE.to_vec();
        vars.push(("MESOS_CHECKPOINT", "yes"));
        assert!(from(&vars).is_err());
    }
}
