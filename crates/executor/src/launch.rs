//! Starting the task's command and signalling its process group.
//!
//! The task runs in its own process group (its leader's pid is the group id), in the
//! sandbox directory, with the executor's stdout and stderr (the agent pointed those at
//! the sandbox's `stdout` and `stderr` files).
use crate::Config;
use agora_api::TaskInfo;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::{Gid, Pid, Uid, User};
use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Variables of the executor's own environment that are plumbing between agent and
/// executor and are not passed on to the task.
const INTERNAL_PREFIXES: &[&str] = &["MESOS_EXECUTOR_", "MESOS_AGENT_"];
const INTERNAL_NAMES: &[&str] = &[
    "MESOS_CHECKPOINT",
    "MESOS_RECOVERY_TIMEOUT",
    "MESOS_SUBSCRIPTION_BACKOFF_MAX",
    "MESOS_HTTP_COMMAND_EXECUTOR",
    "MESOS_DOMAIN_SOCKET",
];
/// Kept although it matches an internal prefix: it names the executor, tasks may read it.
const KEPT_NAMES: &[&str] = &["MESOS_EXECUTOR_ID"];

/// The user a task runs as when it differs from the executor's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

/// Everything needed to start the task, worked out before anything is spawned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub program: String,
    pub argv0: String,
    pub args: Vec<String>,
    pub env: BTreeMap<OsString, OsString>,
    pub cwd: PathBuf,
    pub user: Option<Credentials>,
}

/// A started task: the leader's handle; its pid is also the process group id.
#[derive(Debug)]
pub(crate) struct Process {
    pub child: Child,
    pub pid: Pid,
}

impl Process {
    /// Sends `sig` to the task's whole process group. A group that is already gone is
    /// not an error.
    pub(crate) fn signal_group(&self, sig: Signal) {
        match killpg(self.pid, sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pgid = self.pid.as_raw(), signal = sig.as_str(), error = %e, "could not signal the task's process group")
            }
        }
    }
}

/// Works out how to run the task's command. `Err` is the reason, for the
/// `"Failed to launch command: ..."` update.
pub(crate) fn plan(
    task: &TaskInfo,
    config: &Config,
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Plan, String> {
    let command = task.command.as_ref().ok_or_else(|| "the task has no command".to_string())?;
    let value = command.value.clone().unwrap_or_default();
    let (program, argv0, args) = if command.shell {
        if value.trim().is_empty() {
            return Err("the task's shell command is empty".to_string());
        }
        ("/bin/sh".to_string(), "sh".to_string(), vec!["-c".to_string(), value])
    } else {
        if value.is_empty() {
            return Err("the task's command has no value (the program to run)".to_string());
        }
        let argv0 = command.arguments.first().cloned().unwrap_or_else(|| value.clone());
        let args = command.arguments.iter().skip(1).cloned().collect();
        (value, argv0, args)
    };

    let mut env: BTreeMap<OsString, OsString> = inherited
        .into_iter()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            KEPT_NAMES.contains(&k.as_ref())
                || !(INTERNAL_PREFIXES.iter().any(|p| k.starts_with(p)) || INTERNAL_NAMES.contains(&k.as_ref()))
        })
        .collect();
    env.insert("MESOS_SANDBOX".into(), config.sandbox.clone().into_os_string());
    env.insert("MESOS_TASK_ID".into(), task.task_id.value.clone().into());
    for var in command.environment.iter().flat_map(|e| e.variables.iter()) {
        match var.kind.as_deref() {
            None | Some("VALUE") => {
                env.insert(var.name.clone().into(), var.value.clone().unwrap_or_default().into());
            }
            Some(other) => {
                tracing::warn!(variable = %var.name, kind = other, "environment variable not passed to the task: only VALUE variables are supported");
            }
        }
    }

    let user = match command.user.as_deref() {
        Some(name) if !name.is_empty() => resolve_user(name)?,
        _ => None,
    };

    // Inside a container the host path of the sandbox may be hidden (e.g. under a private
    // /tmp); MESOS_SANDBOX is the sandbox as the container sees it.
    let cwd = if config.sandbox.is_dir() { config.sandbox.clone() } else { config.directory.clone() };
    Ok(Plan { program, argv0, args, env, cwd, user })
}

/// The credentials to switch to for `name`, or `None` when the task runs as the
/// executor's own user (same user, or the executor is not root and cannot switch).
fn resolve_user(name: &str) -> Result<Option<Credentials>, String> {
    let user = match User::from_name(name) {
        Ok(Some(u)) => u,
        Ok(None) => return Err(format!("user '{name}' does not exist")),
        Err(e) => return Err(format!("could not look up user '{name}': {e}")),
    };
    let me = Uid::effective();
    if user.uid == me {
        return Ok(None);
    }
    if !me.is_root() {
        tracing::warn!(user = name, "the executor is not running as root: the task runs as the executor's user");
        return Ok(None);
    }
    let cname = CString::new(name).map_err(|_| format!("user name '{name}' contains a NUL byte"))?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(|e| format!("could not list the groups of user '{name}': {e}"))?;
    Ok(Some(Credentials { name: name.to_string(), uid: user.uid, gid: user.gid, groups }))
}

/// Starts the planned command in a new process group.
pub(crate) fn spawn(plan: &Plan) -> Result<Process, String> {
    let mut cmd = Command::new(&plan.program);
    cmd.arg0(&plan.argv0)
        .args(&plan.args)
        .env_clear()
        .envs(&plan.env)
        .current_dir(&plan.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .process_group(0);
    if let Some(creds) = &plan.user {
        switch_user(&mut cmd, creds);
    }
    let child = cmd.spawn().map_err(|e| match &plan.user {
        Some(u) => format!("could not run '{}' as user '{}' in '{}': {e}", plan.program, u.name, plan.cwd.display()),
        None => format!("could not run '{}' in '{}': {e}", plan.program, plan.cwd.display()),
    })?;
    let raw = i32::try_from(child.id()).map_err(|_| format!("pid {} out of range", child.id()))?;
    Ok(Process { child, pid: Pid::from_raw(raw) })
}

/// Makes the child drop to `creds` (supplementary groups, then group, then user) just
/// before it executes the command.
#[allow(unsafe_code)]
fn switch_user(cmd: &mut Command, creds: &Credentials) {
    let (uid, gid, groups) = (creds.uid, creds.gid, creds.groups.clone());
    // SAFETY: the closure runs in the forked child before exec. It only makes the raw
    // setgroups/setgid/setuid system calls (async-signal-safe) on values computed before
    // the fork, and neither allocates nor takes locks; errors become io::Errors built from
    // the errno alone. std's own `uid()`/`gid()` cannot be used because std clears the
    // supplementary groups and runs these closures after dropping root, when setgroups
    // is no longer permitted.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(gid)?;
            nix::unistd::setuid(uid)?;
            Ok(())
        });
    }
}

/// Blocks until the process `pid` (a child of this process) has exited, without
/// reaping it: while the exited leader is a zombie its pid, and so the process group id,
/// cannot be reused, which makes signalling the rest of the group afterwards safe.
pub(crate) fn wait_exited_unreaped(pid: Pid) {
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            // Ok: exited. Any other error (ECHILD, or EINVAL for a status nix cannot
            // decode, such as death by a real-time signal) also means there is nothing
            // left to wait for.
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_api::{CommandInfo, EnvVariable, Environment, ExecutorId, FrameworkId};
    use std::time::Duration;

    fn config() -> Config {
        Config {
            agent_endpoint: "127.0.0.1:5051".into(),
            framework_id: FrameworkId::new("fw"),
            executor_id: ExecutorId::new("t1"),
            directory: PathBuf::from("/var/sandbox"),
            sandbox: PathBuf::from("/nonexistent-agora/sandbox"),
            shutdown_grace: Duration::from_secs(5),
            checkpoint: false,
            recovery_timeout: Duration::from_secs(900),
        }
    }

    fn task(command: CommandInfo) -> TaskInfo {
        serde_json::from_value(serde_json::json!({
            "name": "t", "task_id": {"value": "t1"}, "agent_id": {"value": "a-S0"},
            "command": command,
        }))
        .expect("valid task")
    }

    fn var(name: &str, kind: Option<&str>, value: &str) -> EnvVariable {
        EnvVariable { name: name.into(), kind: kind.map(Into::into), value: Some(value.into()), secret: None }
    }

    #[test]
    fn shell_command_runs_under_sh() {
        let p = plan(&task(CommandInfo::shell("echo hi; exit 3")), &config(), []).expect("plan");
        assert_eq!(p.program, "/bin/sh");
        assert_eq!(p.args, vec!["-c", "echo hi; exit 3"]);
        assert_eq!(p.cwd, PathBuf::from("/var/sandbox"));
        assert_eq!(p.user, None);
    }

    #[test]
    fn argv_command_uses_arguments_as_argv() {
        let mut c = CommandInfo::shell("/bin/echo");
        c.shell = false;
        c.arguments = vec!["echo".into(), "a".into(), "b c".into()];
        let p = plan(&task(c.clone()), &config(), []).expect("plan");
        assert_eq!((p.program.as_str(), p.argv0.as_str()), ("/bin/echo", "echo"));
        assert_eq!(p.args, vec!["a", "b c"]);
        c.arguments.clear();
        let p = plan(&task(c), &config(), []).expect("plan");
        assert_eq!((p.argv0.as_str(), p.args.len()), ("/bin/echo", 0));
    }

    #[test]
    fn missing_command_is_an_error() {
        let mut t = task(CommandInfo::shell("x"));
        t.command = None;
        assert!(plan(&t, &config(), []).is_err());
        assert!(plan(&task(CommandInfo::shell("  ")), &config(), []).is_err());
    }

    #[test]
    fn environment_drops_internals_and_adds_task_variables() {
        let mut c = CommandInfo::shell("env");
        c.environment = Some(Environment {
            variables: vec![
                var("FOO", None, "bar"),
                var("PATH", Some("VALUE"), "/opt/bin"),
                var("TOKEN", Some("SECRET"), "nope"),
            ],
        });
        let inherited = [
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("MESOS_AGENT_ENDPOINT", "127.0.0.1:5051"),
            ("MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD", "5secs"),
            ("MESOS_EXECUTOR_AUTHENTICATION_TOKEN", "secret"),
            ("MESOS_EXECUTOR_ID", "t1"),
            ("MESOS_FRAMEWORK_ID", "fw"),
            ("MESOS_CHECKPOINT", "1"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let p = plan(&task(c), &config(), inherited).expect("plan");
        let get = |k: &str| p.env.get(&OsString::from(k)).map(|v| v.to_string_lossy().into_owned());
        assert_eq!(get("FOO").as_deref(), Some("bar"));
        assert_eq!(get("PATH").as_deref(), Some("/opt/bin"));
        assert_eq!(get("HOME").as_deref(), Some("/root"));
        assert_eq!(get("TOKEN"), None);
        assert_eq!(get("MESOS_AGENT_ENDPOINT"), None);
        assert_eq!(get("MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD"), None);
        assert_eq!(get("MESOS_EXECUTOR_AUTHENTICATION_TOKEN"), None);
        assert_eq!(get("MESOS_CHECKPOINT"), None);
        assert_eq!(get("MESOS_EXECUTOR_ID").as_deref(), Some("t1"));
        assert_eq!(get("MESOS_FRAMEWORK_ID").as_deref(), Some("fw"));
        assert_eq!(get("MESOS_SANDBOX").as_deref(), Some("/nonexistent-agora/sandbox"));
        assert_eq!(get("MESOS_TASK_ID").as_deref(), Some("t1"));
    }

    #[test]
    fn unknown_user_is_an_error() {
        let mut c = CommandInfo::shell("true");
        c.user = Some("agora-no-such-user".into());
        let err = plan(&task(c), &config(), []).expect_err("unknown user");
        assert_eq!(err, "user 'agora-no-such-user' does not exist");
    }

    #[test]
    fn own_user_needs_no_switch() {
        let me = User::from_uid(Uid::effective()).ok().flatten().expect("current user in passwd");
        let mut c = CommandInfo::shell("true");
        c.user = Some(me.name);
        assert_eq!(plan(&task(c), &config(), []).expect("plan").user, None);
    }
}
