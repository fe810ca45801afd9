//! The one error type of the crate: every variant names the path (or cgroup) and the
//! operation that failed.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What went wrong while managing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No usable cgroup hierarchy is mounted.
    #[error("no cgroup v1 cpu/memory hierarchy and no cgroup2 mount in {}", .mountinfo.display())]
    NotMounted { mountinfo: PathBuf },

    /// A cgroup name that is empty, absolute or leaves its hierarchy (`..`).
    #[error("invalid cgroup name {name:?}: expected a relative path like \"agora/<id>\" without \".\" or \"..\"")]
    InvalidName { name: String },

    /// A limit needs a controller this machine does not offer (not mounted on v1, not in
    /// `cgroup.controllers` on v2).
    #[error("controller {controller} is not available under {} (needed for {what})", .path.display())]
    ControllerUnavailable { controller: &'static str, what: &'static str, path: PathBuf },

    /// Reading a control file failed.
    #[error("read {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },

    /// Writing a control file failed (the kernel refuses out-of-range values with EINVAL).
    #[error("write {value:?} to {}: {source}", .path.display())]
    Write { path: PathBuf, value: String, source: io::Error },

    /// Creating a cgroup directory failed.
    #[error("create {}: {source}", .path.display())]
    Create { path: PathBuf, source: io::Error },

    /// Removing a cgroup directory failed.
    #[error("remove {}: {source}", .path.display())]
    Remove { path: PathBuf, source: io::Error },

    /// Listing a cgroup directory failed.
    #[error("list {}: {source}", .path.display())]
    List { path: PathBuf, source: io::Error },

    /// A control file held something this crate does not understand.
    #[error("parse {}: unexpected content {content:?}", .path.display())]
    Parse { path: PathBuf, content: String },

    /// The cgroup does not exist.
    #[error("cgroup {cgroup:?} does not exist")]
    NotFound { cgroup: String },

    /// Sending SIGKILL failed for a reason other than the process being gone already.
    #[error("kill pid {pid} in {}: {source}", .path.display())]
    Kill { pid: i32, path: PathBuf, source: nix::errno::Errno },

    /// The calling process is itself inside the cgroup it was asked to kill.
    #[error("refusing to kill the calling process {pid}, which is inside {}", .path.display())]
    KillSelf { pid: i32, path: PathBuf },

    /// Processes were still in the cgroup when the bounded wait of `kill_all` ran out
    /// (typically a process stuck in uninterruptible sleep). Calling again is safe.
    #[error("processes {pids:?} still in {} after {waited:?}", .path.display())]
    KillTimeout { path: PathBuf, pids: Vec<i32>, waited: Duration },
}
