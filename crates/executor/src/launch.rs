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
    /// The image rootfs the task is confined to (`chroot`), `cwd` then being inside it.
    pub rootfs: Option<PathBuf>,
    /// The sandbox as the executor sees it (made the task user's).
    pub sandbox: PathBuf,
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
    let (program, argv0, args) = match &config.image {
        Some(img) => image_command(command, img)?,
        None if command.shell => {
            if value.trim().is_empty() {
                return Err("the task's shell command is empty".to_string());
            }
            ("/bin/sh".to_string(), "sh".to_string(), vec!["-c".to_string(), value])
        }
        None => {
            if value.is_empty() {
                return Err("the task's command has no value (the program to run)".to_string());
            }
            let argv0 = command.arguments.first().cloned().unwrap_or_else(|| value.clone());
            let args = command.arguments.iter().skip(1).cloned().collect();
            (value, argv0, args)
        }
    };

    let keep = |k: &str| {
        KEPT_NAMES.contains(&k) || !(INTERNAL_PREFIXES.iter().any(|p| k.starts_with(p)) || INTERNAL_NAMES.contains(&k))
    };
    let mut env: BTreeMap<OsString, OsString> = BTreeMap::new();
    if let Some(img) = &config.image {
        // The image's environment first; of the executor's own only the MESOS_* variables
        // (the host's PATH, HOME... mean nothing inside the image).
        for kv in &img.env {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            if !k.is_empty() {
                env.insert(k.into(), v.into());
            }
        }
        env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
        for (k, v) in inherited {
            let name = k.to_string_lossy();
            if name.starts_with("MESOS_") && keep(&name) {
                env.insert(k, v);
            }
        }
    } else {
        env.extend(inherited.into_iter().filter(|(k, _)| keep(&k.to_string_lossy())));
    }
    env.insert("MESOS_SANDBOX".into(), config.sandbox.clone().into_os_string());
    env.insert("MESOS_TASK_ID".into(), task.task_id.value.to_string().into());
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

    let name = command.user.as_deref().filter(|n| !n.is_empty());
    let user = match (&config.image, name) {
        (_, None) => None,
        (Some(img), Some(name)) => image_user(&img.rootfs, name)?,
        (None, Some(name)) => resolve_user(name)?,
    };

    // Inside a container the host path of the sandbox may be hidden (e.g. under a private
    // /tmp); MESOS_SANDBOX is the sandbox as the container sees it.
    let sandbox = if config.sandbox.is_dir() { config.sandbox.clone() } else { config.directory.clone() };
    let (cwd, rootfs) = match &config.image {
        // In the image, the working directory is the image's WorkingDir, else the sandbox
        // (mounted at MESOS_SANDBOX inside the rootfs).
        Some(img) => {
            let wd = img.working_dir.clone().filter(|w| w.starts_with('/'));
            (wd.map(PathBuf::from).unwrap_or_else(|| config.sandbox.clone()), Some(img.rootfs.clone()))
        }
        None => (sandbox.clone(), None),
    };
    Ok(Plan { program, argv0, args, env, cwd, user, rootfs, sandbox })
}

/// The PATH of a task whose image sets none (Docker's default).
pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The command of a task in an image, by Mesos's docker/runtime rules: `shell` runs
/// `/bin/sh -c value` (Entrypoint and Cmd ignored); a `value` runs with `arguments` as its
/// argv (Entrypoint and Cmd ignored); without a value the image's Entrypoint runs with the
/// task's `arguments` appended, or else its Cmd; without an Entrypoint the `arguments`
/// (else the Cmd) are the whole command.
pub(crate) fn image_command(
    command: &agora_api::CommandInfo,
    img: &crate::ImageRuntime,
) -> Result<(String, String, Vec<String>), String> {
    let value = command.value.clone().unwrap_or_default();
    if command.shell {
        if value.trim().is_empty() {
            return Err("the task's shell command is empty".to_string());
        }
        return Ok(("/bin/sh".to_string(), "sh".to_string(), vec!["-c".to_string(), value]));
    }
    if !value.is_empty() {
        let argv0 = command.arguments.first().cloned().unwrap_or_else(|| value.clone());
        return Ok((value, argv0, command.arguments.iter().skip(1).cloned().collect()));
    }
    let entrypoint = img.entrypoint.clone().unwrap_or_default();
    let cmd = img.cmd.clone().unwrap_or_default();
    let argv: Vec<String> = if !entrypoint.is_empty() {
        let rest = if command.arguments.is_empty() { cmd } else { command.arguments.clone() };
        entrypoint.into_iter().chain(rest).collect()
    } else if !command.arguments.is_empty() {
        command.arguments.clone()
    } else {
        cmd
    };
    match argv.split_first() {
        Some((first, rest)) if !first.is_empty() => Ok((first.clone(), first.clone(), rest.to_vec())),
        _ => Err("the task has no command and its image has neither an Entrypoint nor a Cmd".to_string()),
    }
}

/// Looks `name` up in a passwd or group file: its id and (passwd) primary group.
fn lookup_db(file: &std::path::Path, name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 3 && f[0] == name {
            let id = f[2].parse().ok()?;
            let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
            Some((id, gid))
        } else {
            None
        }
    })
}

/// Supplementary groups of `name` in the image's /etc/group.
fn image_groups(rootfs: &std::path::Path, name: &str, primary: u32) -> Vec<Gid> {
    let mut out = vec![Gid::from_raw(primary)];
    if let Ok(text) = std::fs::read_to_string(rootfs.join("etc/group")) {
        for l in text.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if !out.contains(&Gid::from_raw(g)) {
                        out.push(Gid::from_raw(g));
                    }
                }
            }
        }
    }
    out
}

/// Resolves a task user inside the image: `name`, `uid`, `name:group` or `uid:gid`, looked
/// up in the image's own /etc/passwd and /etc/group (numeric ids need no entry). `None`
/// when nothing needs switching (the executor's own user, or the executor is not root).
fn image_user(rootfs: &std::path::Path, spec: &str) -> Result<Option<Credentials>, String> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = rootfs.join("etc/passwd");
    let (uid, mut gid, named) = match u.parse::<u32>() {
        Ok(n) => (n, lookup_db(&passwd, u).map(|(_, g)| g).unwrap_or(n), false),
        Err(_) => match lookup_db(&passwd, u) {
            Some((uid, gid)) => (uid, gid, true),
            None => return Err(format!("user '{u}' does not exist in the image (no entry in its /etc/passwd)")),
        },
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup_db(&rootfs.join("etc/group"), g)
                .map(|(id, _)| id)
                .ok_or_else(|| format!("group '{g}' does not exist in the image (no entry in its /etc/group)"))?,
        };
    }
    let me = Uid::effective();
    if uid == me.as_raw() && gid == Gid::effective().as_raw() {
        return Ok(None);
    }
    if !me.is_root() {
        tracing::warn!(user = spec, "the executor is not running as root: the task runs as the executor's user");
        return Ok(None);
    }
    let groups = if named { image_groups(rootfs, u, gid) } else { vec![Gid::from_raw(gid)] };
    Ok(Some(Credentials { name: spec.to_string(), uid: Uid::from_raw(uid), gid: Gid::from_raw(gid), groups }))
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
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .process_group(0);
    if let (Some(creds), true) = (&plan.user, Uid::effective().is_root()) {
        // The sandbox belongs to the task's user, so it can write there.
        if let Err(e) = nix::unistd::chown(&plan.sandbox, Some(creds.uid), Some(creds.gid)) {
            tracing::warn!(sandbox = %plan.sandbox.display(), error = %e, "could not give the sandbox to the task's user");
        }
    }
    let where_ = match &plan.rootfs {
        Some(rootfs) => {
            enter_rootfs(&mut cmd, rootfs, &plan.cwd, plan.user.as_ref())?;
            format!("'{}' of the image", plan.cwd.display())
        }
        None => {
            cmd.current_dir(&plan.cwd);
            if let Some(creds) = &plan.user {
                switch_user(&mut cmd, creds);
            }
            format!("'{}'", plan.cwd.display())
        }
    };
    let child = cmd.spawn().map_err(|e| match &plan.user {
        Some(u) => format!("could not run '{}' as user '{}' in {where_}: {e}", plan.program, u.name),
        None => format!("could not run '{}' in {where_}: {e}", plan.program),
    })?;
    let raw = i32::try_from(child.id()).map_err(|_| format!("pid {} out of range", child.id()))?;
    Ok(Process { child, pid: Pid::from_raw(raw) })
}

/// `CAP_SYS_CHROOT`'s number (linux/capability.h).
const CAP_SYS_CHROOT: libc::c_ulong = 18;

/// Confines the child to the image's rootfs just before it executes the command: `chroot`
/// into the prepared rootfs, change to the working directory inside it, drop
/// `CAP_SYS_CHROOT` from the bounding set (so the task can never chroot again to climb out;
/// exec recomputes its capabilities from the bounding set), then switch users. The program
/// is looked up by exec in the image's `PATH`.
#[allow(unsafe_code)]
fn enter_rootfs(
    cmd: &mut Command,
    rootfs: &std::path::Path,
    cwd: &std::path::Path,
    creds: Option<&Credentials>,
) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = |p: &std::path::Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("path '{}' contains a NUL byte", p.display()))
    };
    let (root, dir) = (c(rootfs)?, c(cwd)?);
    let ids = creds.map(|c| (c.uid, c.gid, c.groups.clone()));
    // SAFETY: the closure runs in the forked child before exec. It only makes system calls
    // (chroot, chdir, prctl, setgroups, setgid, setuid: async-signal-safe) on values computed
    // before the fork (the paths are CStrings, passed without copying), neither allocates nor
    // takes locks, and reports failure with an io::Error built from errno alone.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::chroot(root.as_c_str())?;
            nix::unistd::chdir(dir.as_c_str())?;
            if libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_CHROOT, 0, 0, 0) != 0 {
                let e = std::io::Error::last_os_error();
                // EINVAL: no such capability on this kernel; EPERM without CAP_SETPCAP, when
                // the container kept no capabilities at all (then it has no CAP_SYS_CHROOT).
                if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM)) {
                    return Err(e);
                }
            }
            if let Some((uid, gid, groups)) = &ids {
                nix::unistd::setgroups(groups)?;
                nix::unistd::setgid(*gid)?;
                nix::unistd::setuid(*uid)?;
            }
            Ok(())
        });
    }
    Ok(())
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
            image: None,
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

    fn img(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> crate::ImageRuntime {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        crate::ImageRuntime { entrypoint: entrypoint.map(v), cmd: cmd.map(v), ..Default::default() }
    }

    fn argv(r: (String, String, Vec<String>)) -> Vec<String> {
        let mut out = vec![r.0];
        out.extend(r.2);
        out
    }

    #[test]
    fn image_command_follows_the_mesos_rules() {
        let none =
            CommandInfo { shell: false, value: None, arguments: vec![], environment: None, user: None, uris: vec![] };
        let args = CommandInfo { arguments: vec!["a".into(), "b".into()], ..none.clone() };
        let value =
            CommandInfo { value: Some("/bin/echo".into()), arguments: vec!["echo".into(), "x".into()], ..none.clone() };
        let shell = CommandInfo::shell("echo hi");
        let (e, c) = (Some(&["/ep", "-e"][..]), Some(&["cmd", "-c"][..]));
        // shell: sh -c value, Entrypoint and Cmd ignored.
        assert_eq!(argv(image_command(&shell, &img(e, c)).unwrap()), ["/bin/sh", "-c", "echo hi"]);
        // value: value with arguments, Entrypoint and Cmd ignored.
        assert_eq!(argv(image_command(&value, &img(e, c)).unwrap()), ["/bin/echo", "x"]);
        // No value: Entrypoint + Cmd; arguments replace Cmd.
        assert_eq!(argv(image_command(&none, &img(e, c)).unwrap()), ["/ep", "-e", "cmd", "-c"]);
        assert_eq!(argv(image_command(&args, &img(e, c)).unwrap()), ["/ep", "-e", "a", "b"]);
        assert_eq!(argv(image_command(&none, &img(e, None)).unwrap()), ["/ep", "-e"]);
        // No Entrypoint: the arguments, else the Cmd, are the command.
        assert_eq!(argv(image_command(&none, &img(None, c)).unwrap()), ["cmd", "-c"]);
        assert_eq!(argv(image_command(&args, &img(None, c)).unwrap()), ["a", "b"]);
        assert!(image_command(&none, &img(None, None)).is_err());
        assert!(image_command(&CommandInfo { shell: true, ..none }, &img(e, c)).is_err());
    }

    #[test]
    fn image_environment_user_and_workdir() {
        let root = std::env::temp_dir().join(format!("agora-exec-img-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\n")
            .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:2345:\nextra:x:3000:app\n").unwrap();
        let mut cfg = config();
        cfg.image = Some(crate::ImageRuntime {
            rootfs: root.clone(),
            env: vec!["PATH=/img/bin".into(), "FOO=image".into(), "BAR=image".into()],
            working_dir: Some("/work".into()),
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        });
        let mut c =
            CommandInfo { shell: false, value: None, arguments: vec![], environment: None, user: None, uris: vec![] };
        c.environment = Some(Environment { variables: vec![var("BAR", None, "task")] });
        let inherited = [("HOME", "/root"), ("MESOS_FRAMEWORK_ID", "fw"), ("MESOS_AGENT_ENDPOINT", "x")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let p = plan(&task(c.clone()), &cfg, inherited).expect("plan");
        let get = |k: &str| p.env.get(&OsString::from(k)).map(|v| v.to_string_lossy().into_owned());
        assert_eq!(get("PATH").as_deref(), Some("/img/bin"));
        assert_eq!(get("FOO").as_deref(), Some("image"));
        assert_eq!(get("BAR").as_deref(), Some("task"));
        assert_eq!(get("HOME"), None);
        assert_eq!(get("MESOS_FRAMEWORK_ID").as_deref(), Some("fw"));
        assert_eq!(get("MESOS_AGENT_ENDPOINT"), None);
        assert_eq!(p.cwd, PathBuf::from("/work"));
        assert_eq!(p.rootfs.as_deref(), Some(root.as_path()));
        assert_eq!((p.program.as_str(), p.args.len()), ("sh", 0));
        if Uid::effective().is_root() {
            let u = image_user(&root, "app").unwrap().unwrap();
            assert_eq!((u.uid.as_raw(), u.gid.as_raw()), (1234, 2345));
            assert!(u.groups.contains(&Gid::from_raw(3000)));
            let u = image_user(&root, "4000:app").unwrap().unwrap();
            assert_eq!((u.uid.as_raw(), u.gid.as_raw()), (4000, 2345));
            assert_eq!(image_user(&root, "root").unwrap(), None);
        }
        assert!(image_user(&root, "nobody-here").unwrap_err().contains("does not exist in the image"));
        c.user = Some("ghost".into());
        assert!(plan(&task(c), &cfg, []).is_err());
        let _ = std::fs::remove_dir_all(root);
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
