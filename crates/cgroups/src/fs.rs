//! Small helpers over cgroupfs files shared by the v1 and v2 implementations: one
//! `open`+`write` per value, flat-keyed parsing, subtree walks, bounded waits and
//! SIGKILL.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::CgroupError;

/// Reads a whole control file.
pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_path_buf(), source })
}

/// Reads a whole control file; `None` when it does not exist (controller not enabled).
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(content) => Ok(Some(content)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read { path: path.to_path_buf(), source }),
    }
}

/// Writes `value` with a single `write(2)`, as the kernel wants it. The file is never
/// created: a missing control file is an error, not a new regular file. `O_TRUNC` is
/// ignored by cgroupfs and keeps fixture files (regular files) exact.
pub(crate) fn write_io(path: &Path, value: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).truncate(true).open(path)?;
    file.write_all(value.as_bytes())
}

/// [`write_io`] with the error naming the path and the value.
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    write_io(path, value).map_err(|source| write_error(path, value, source))
}

pub(crate) fn write_error(path: &Path, value: &str, source: io::Error) -> CgroupError {
    CgroupError::Write { path: path.to_path_buf(), value: value.to_owned(), source }
}

/// Creates a directory; an existing one is fine (create is idempotent).
pub(crate) fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create { path: path.to_path_buf(), source }),
    }
}

/// Creates a directory and its missing parents.
pub(crate) fn mkdir_all(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(path).map_err(|source| CgroupError::Create { path: path.to_path_buf(), source })
}

/// The value of `key` in a flat-keyed file ("key value" per line).
pub(crate) fn keyed<'a>(content: &'a str, key: &str) -> Option<&'a str> {
    content.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? == key {
            words.next()
        } else {
            None
        }
    })
}

/// Parses a number, naming the file when it is not one.
pub(crate) fn parse_u64(path: &Path, value: &str) -> Result<u64, CgroupError> {
    value.trim().parse().map_err(|_| CgroupError::Parse { path: path.to_path_buf(), content: value.to_owned() })
}

/// [`keyed`] parsed as a number; a missing key is `None`.
pub(crate) fn keyed_u64(path: &Path, content: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    keyed(content, key).map(|v| parse_u64(path, v)).transpose()
}

/// A limit file holding a number or "max" (`None`).
pub(crate) fn parse_max(path: &Path, value: &str) -> Result<Option<u64>, CgroupError> {
    if value.trim() == "max" {
        Ok(None)
    } else {
        parse_u64(path, value).map(Some)
    }
}

/// The pids of a `cgroup.procs` file.
pub(crate) fn read_pids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    parse_pids(path, &read(path)?)
}

/// Like [`read_pids`], a vanished cgroup being empty.
pub(crate) fn read_pids_opt(path: &Path) -> Result<Vec<i32>, CgroupError> {
    match read_opt(path)? {
        Some(content) => parse_pids(path, &content),
        None => Ok(Vec::new()),
    }
}

fn parse_pids(path: &Path, content: &str) -> Result<Vec<i32>, CgroupError> {
    content
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse().map_err(|_| CgroupError::Parse { path: path.to_path_buf(), content: l.to_owned() }))
        .collect()
}

/// `dir` and every cgroup below it, each parent before its children; empty when `dir`
/// does not exist.
pub(crate) fn subtree(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = match fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CgroupError::List { path: current, source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| CgroupError::List { path: current.clone(), source })?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                stack.push(entry.path());
            }
        }
        out.push(current);
    }
    Ok(out)
}

/// Names of the subdirectories (child cgroups) of `dir`; empty when it does not exist.
pub(crate) fn child_names(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CgroupError::List { path: dir.to_path_buf(), source }),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::List { path: dir.to_path_buf(), source })?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
    }
    Ok(names)
}

/// How long `rmdir` is retried while the kernel still reports the cgroup busy.
const RMDIR_TIMEOUT: Duration = Duration::from_secs(2);

/// Removes the cgroup `dir` and every cgroup below it (children first). A missing
/// directory is fine; EBUSY (a process not quite gone) is retried briefly.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    // Fast path: a leaf cgroup goes with one rmdir.
    match fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    for path in subtree(dir)?.iter().rev() {
        rmdir_retry(path)?;
    }
    Ok(())
}

fn rmdir_retry(path: &Path) -> Result<(), CgroupError> {
    let mut backoff = Backoff::new(RMDIR_TIMEOUT);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) && backoff.wait() => {
                tracing::debug!(path = %path.display(), "cgroup busy, retrying rmdir");
            }
            Err(source) => return Err(CgroupError::Remove { path: path.to_path_buf(), source }),
        }
    }
}

/// Sends SIGKILL to every pid; a process already gone is fine. Never signals pid 0 or
/// negative pids (process groups), nor the caller itself.
pub(crate) fn kill_pids(pids: &[i32], path: &Path) -> Result<(), CgroupError> {
    let me = std::process::id() as i32;
    for &pid in pids {
        if pid <= 0 {
            // cgroup.procs shows 0 for processes outside our pid namespace.
            continue;
        }
        if pid == me {
            return Err(CgroupError::KillSelf { pid, path: path.to_path_buf() });
        }
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(source) => return Err(CgroupError::Kill { pid, path: path.to_path_buf(), source }),
        }
    }
    Ok(())
}

/// Exponential sleep (50 µs doubling up to 10 ms) until a deadline.
pub(crate) struct Backoff {
    start: Instant,
    deadline: Instant,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(timeout: Duration) -> Backoff {
        let start = Instant::now();
        Backoff { start, deadline: start + timeout, next: Duration::from_micros(50) }
    }

    /// Sleeps a little; `false` (without sleeping) once the deadline has passed.
    pub(crate) fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        std::thread::sleep(self.next.min(self.deadline - now));
        self.next = (self.next * 2).min(Duration::from_millis(10));
        true
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_finds_values() {
        let content = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(content, "oom_kill"), Some("3"));
        assert_eq!(keyed(content, "under_oom"), Some("0"));
        assert_eq!(keyed(content, "oom"), None);
    }

    #[test]
    fn parse_max_and_numbers() {
        let p = Path::new("/x");
        assert_eq!(parse_max(p, "max\n").expect("max"), None);
        assert_eq!(parse_max(p, "20\n").expect("number"), Some(20));
        assert!(parse_max(p, "lots").is_err());
        assert_eq!(parse_pids(p, "1\n22\n\n").expect("pids"), vec![1, 22]);
    }
}
