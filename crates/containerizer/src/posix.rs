//! The `posix` launcher: the executor runs as a plain process, leader of a session of its
//! own in its sandbox directory, with stdout and stderr in the sandbox. No isolation: it is
//! the fallback when the agent is not root, and the reference the linux launcher is
//! measured against.
use crate::{ContainerExit, Containerizer, ContainerizerError, LaunchSpec};
use agora_api::ContainerId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Starts the executor as the leader of a new session: its tasks (in process groups of their
/// own) and their double-forked children stay in that session, so the container can be
/// destroyed as a whole without cgroups.
#[allow(unsafe_code)]
pub(crate) fn new_session(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2),
    // which is async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
}

/// The session id of a process, from `/proc/<pid>/stat`.
fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may contain spaces): state ppid pgrp session ...
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// SIGKILLs every process of the session led by `sid` until none is left (bounded).
pub fn kill_session(sid: i32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for _ in 0..40 {
        let members: Vec<i32> = std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
                    .filter(|p| session_of(*p) == Some(sid))
                    .collect()
            })
            .unwrap_or_default();
        if members.is_empty() {
            return;
        }
        for p in members {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[derive(Default, Clone)]
pub struct PosixContainerizer {
    pids: Arc<Mutex<HashMap<ContainerId, i32>>>,
}

impl PosixContainerizer {
    pub fn new() -> Self {
        Self::default()
    }
}

fn lookup_user(name: &str) -> Option<nix::unistd::User> {
    nix::unistd::User::from_name(name).ok().flatten()
}

impl Containerizer for PosixContainerizer {
    fn launch(&self, spec: LaunchSpec, exits: mpsc::UnboundedSender<ContainerExit>) -> Result<u32, ContainerizerError> {
        let id = spec.container_id.to_string();
        if spec.rootfs.is_some() {
            return Err(ContainerizerError::Invalid {
                id,
                message: "container images need the filesystem/linux isolator (the linux launcher)".into(),
            });
        }
        if !spec.volumes.is_empty() {
            return Err(ContainerizerError::Invalid {
                id,
                message: "volumes need the filesystem/linux isolator (the linux launcher, as root): the posix launcher has no mount namespace".into(),
            });
        }
        std::fs::create_dir_all(&spec.directory).map_err(|source| ContainerizerError::Sandbox {
            id: id.clone(),
            path: spec.directory.clone(),
            source,
        })?;
        let open = |name: &str| {
            std::fs::OpenOptions::new().create(true).append(true).open(spec.directory.join(name)).map_err(|source| {
                ContainerizerError::Sandbox { id: id.clone(), path: spec.directory.join(name), source }
            })
        };
        let stdout = open("stdout")?;
        let stderr = open("stderr")?;
        let Some(first) = spec.argv.first() else {
            return Err(ContainerizerError::EmptyCommand { id });
        };
        let mut cmd = if spec.shell {
            let mut c = std::process::Command::new("/bin/sh");
            c.arg("-c").arg(first);
            c
        } else {
            let mut c = std::process::Command::new(first);
            c.args(&spec.argv[1..]);
            c
        };
        cmd.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&spec.directory)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        new_session(&mut cmd);
        if let Some(u) = &spec.user {
            let me = nix::unistd::Uid::effective();
            let user =
                lookup_user(u).ok_or_else(|| ContainerizerError::NoSuchUser { id: id.clone(), user: u.clone() })?;
            if me.is_root() && user.uid != me {
                // The sandbox belongs to the task's user.
                let _ = nix::unistd::chown(&spec.directory, Some(user.uid), Some(user.gid));
                for f in ["stdout", "stderr"] {
                    let _ = nix::unistd::chown(&spec.directory.join(f), Some(user.uid), Some(user.gid));
                }
            }
        }
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| ContainerizerError::Spawn { id: id.clone(), program: first.clone(), source })?;
        let pid = child.id().unwrap_or(0);
        if let Ok(mut m) = self.pids.lock() {
            m.insert(spec.container_id.clone(), pid as i32);
        }
        let pids = self.pids.clone();
        let cid = spec.container_id.clone();
        tokio::spawn(async move {
            let res = child.wait().await;
            let (status, message) = match res {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt as _;
                    match (s.code(), s.signal()) {
                        (Some(c), _) => (Some(c), format!("exited with status {c}")),
                        (None, Some(sig)) => (Some(128 + sig), format!("terminated by signal {sig}")),
                        _ => (None, "ended".to_string()),
                    }
                }
                Err(e) => (None, format!("wait failed: {e}")),
            };
            // Whatever the executor left behind in its session goes with it.
            if pid > 0 {
                let _ = tokio::task::spawn_blocking(move || kill_session(pid as i32)).await;
            }
            if let Ok(mut m) = pids.lock() {
                m.remove(&cid);
            }
            let _ = exits.send(ContainerExit { container_id: cid, status, message, limitation: None });
        });
        Ok(pid)
    }

    fn destroy(&self, id: &ContainerId) {
        let pid = self.pids.lock().ok().and_then(|m| m.get(id).copied());
        if let Some(pid) = pid {
            if pid > 0 {
                std::thread::spawn(move || kill_session(pid));
            }
        }
    }

    fn recover(&self, id: &ContainerId, pid: u32, exits: mpsc::UnboundedSender<ContainerExit>) -> bool {
        let alive = pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        if !alive {
            return false;
        }
        if let Ok(mut m) = self.pids.lock() {
            m.insert(id.clone(), pid as i32);
        }
        let pids = self.pids.clone();
        let cid = id.clone();
        tokio::spawn(async move {
            // Not our child: poll until it is gone. Its exit status is not ours to learn.
            while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let _ = tokio::task::spawn_blocking(move || kill_session(pid as i32)).await;
            if let Ok(mut m) = pids.lock() {
                m.remove(&cid);
            }
            let message = "ended while the agent was away".to_string();
            let _ = exits.send(ContainerExit { container_id: cid, status: None, message, limitation: None });
        });
        true
    }

    fn containers(&self) -> Vec<ContainerId> {
        self.pids.lock().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn launch_and_exit_code() {
        let dir = std::env::temp_dir().join(format!("agora-ctest-{}", uuid::Uuid::new_v4()));
        let c = PosixContainerizer::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let spec = LaunchSpec {
            container_id: ContainerId::new("c1"),
            argv: vec!["echo out; echo err >&2; exit 4".into()],
            shell: true,
            env: vec![],
            directory: dir.clone(),
            user: None,
            ..Default::default()
        };
        c.launch(spec, tx).unwrap();
        let exit = rx.recv().await.unwrap();
        assert_eq!(exit.status, Some(4));
        assert_eq!(std::fs::read_to_string(dir.join("stdout")).unwrap(), "out\n");
        assert_eq!(std::fs::read_to_string(dir.join("stderr")).unwrap(), "err\n");
        assert!(c.containers().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn destroy_kills_the_group() {
        let dir = std::env::temp_dir().join(format!("agora-ctest-{}", uuid::Uuid::new_v4()));
        let c = PosixContainerizer::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let spec = LaunchSpec {
            container_id: ContainerId::new("c2"),
            argv: vec!["sleep 100 & sleep 100".into()],
            shell: true,
            env: vec![],
            directory: dir.clone(),
            user: None,
            ..Default::default()
        };
        c.launch(spec, tx).unwrap();
        c.destroy(&ContainerId::new("c2"));
        let exit = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(exit.status, Some(128 + 9));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn unknown_user_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = std::env::temp_dir().join(format!("agora-ctest-{}", uuid::Uuid::new_v4()));
            let c = PosixContainerizer::new();
            let (tx, _rx) = mpsc::unbounded_channel();
            let spec = LaunchSpec {
                container_id: ContainerId::new("c3"),
                argv: vec!["true".into()],
                shell: true,
                env: vec![],
                directory: dir.clone(),
                user: Some("no-such-user-agora".into()),
                ..Default::default()
            };
            let e = c.launch(spec, tx).unwrap_err();
            assert!(e.to_string().contains("does not exist"), "{e}");
            let _ = std::fs::remove_dir_all(dir);
        });
    }
}
