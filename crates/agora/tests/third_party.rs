//! Third-party Mesos v1 clients, unchanged, driving the real `agora` binary.
//!
//! `pymesos_drives_the_master`: `scripts/setup-python.sh` prepares a venv with
//! pymesos 0.3.15 from PyPI, then `tests/python/pymesos_e2e.py` starts a master
//! and an agent and uses pymesos's `MesosSchedulerDriver` (v1 HTTP scheduler
//! API, JSON) to subscribe, launch, kill, reconcile and tear down. A failed
//! setup fails the test: it never skips.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion with captured output; kills it after `limit`.
fn run_bounded(mut cmd: Command, what: &str, limit: Duration) -> Finished {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let err = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out.join().unwrap_or_default();
                let stderr = err.join().unwrap_or_default();
                panic!("{what} did not finish within {limit:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Finished { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() }
}

#[test]
fn pymesos_drives_the_master() {
    let root = workspace_root();

    let mut setup = Command::new("bash");
    setup.arg(root.join("scripts/setup-python.sh")).current_dir(&root);
    let setup = run_bounded(setup, "scripts/setup-python.sh", Duration::from_secs(600));
    assert!(
        setup.status.success(),
        "scripts/setup-python.sh failed ({}); pymesos is required for this test\n--- stdout ---\n{}\n--- stderr ---\n{}",
        setup.status,
        setup.stdout,
        setup.stderr
    );
    let python = setup
        .stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("setup-python.sh printed no python path\n{}", setup.stderr));
    assert!(python.is_file(), "setup-python.sh printed {python:?}, which is not a file");

    let mut e2e = Command::new(&python);
    e2e.arg(root.join("tests/python/pymesos_e2e.py"))
        .arg("--agora")
        .arg(env!("CARGO_BIN_EXE_agora"))
        .current_dir(&root)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let run = run_bounded(e2e, "tests/python/pymesos_e2e.py", Duration::from_secs(180));
    println!("{}", run.stdout);
    eprintln!("{}", run.stderr);
    assert!(
        run.status.success(),
        "pymesos e2e failed ({}): {}",
        run.status,
        run.stdout.lines().rfind(|l| l.contains("passed")).unwrap_or("no summary line")
    );
    assert!(
        run.stdout.lines().any(|l| l.starts_with("pymesos e2e: ") && l.ends_with(" passed, 0 failed")),
        "no `pymesos e2e: N passed, 0 failed` line in the output"
    );
}
