//! Helpers shared by the integration tests: uniquely named test cgroups destroyed on
//! drop, gated child processes, temp fixture trees.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use agora_cgroups::Cgroups;

/// A test's own top-level cgroup, `agora-test-<uuid>`, destroyed (with everything
/// below it) when dropped, even when the test panics.
pub struct TestCgroup {
    pub cgroups: Cgroups,
    pub top: String,
}

impl TestCgroup {
    pub fn new(cgroups: Cgroups) -> TestCgroup {
        TestCgroup { cgroups, top: format!("agora-test-{}", uuid::Uuid::new_v4()) }
    }

    /// `agora-test-<uuid>/<child>`.
    pub fn child(&self, child: &str) -> String {
        format!("{}/{child}", self.top)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.cgroups.destroy(&self.top) {
            eprintln!("cleanup of {} failed: {e}", self.top);
        }
    }
}

/// A child started as `sh -c 'read _; <script>'`: it waits on stdin until released,
/// so it can be put in a cgroup before it starts doing anything (and anything it forks
/// lands there too). Killed and reaped on drop.
pub struct Gated {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Gated {
    pub fn spawn(script: &str) -> Gated {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        Gated { child, stdin, stdout }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Lets the script run.
    pub fn release(&mut self) {
        let mut stdin = self.stdin.take().expect("released twice");
        stdin.write_all(b"go\n").expect("release child");
    }

    /// The next line the script prints.
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.as_mut().expect("stdout").read_line(&mut line).expect("read child stdout");
        line.trim().to_owned()
    }

    /// Waits for the child to exit (bounded), returning its wait status.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "child {} did not exit", self.pid());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `pid` is gone or a zombie (dead, not yet reaped by its parent).
pub fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // "pid (comm) S ...": the state follows the last ')'.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            matches!(state, Some("Z") | Some("X"))
        }
    }
}

/// Polls `f` until it returns true (bounded).
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())).trim().to_owned()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The mount point of the first cgroup2 filesystem, if any.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (fields.get(sep + 1) == Some(&"cgroup2")).then(|| PathBuf::from(fields[4]))
    })
}

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("agora-cgroups-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `files` (name, content) into `dir`, creating it.
pub fn fixture(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).expect("create fixture dir");
    for (name, content) in files {
        std::fs::write(dir.join(name), content).expect("write fixture file");
    }
}
