//! Isolators by their Mesos names (`--isolation`), validated at agent start.
use std::fmt;

/// Isolators Agora implements.
pub const KNOWN: &[&str] = &[
    "cgroups/cpu",
    "cgroups/mem",
    "cgroups/pids",
    "cgroups/all",
    "namespaces/pid",
    "namespaces/ipc",
    "filesystem/linux",
    "filesystem/posix",
    "linux/capabilities",
    "linux/nnp",
    "linux/seccomp",
    "posix/cpu",
    "posix/mem",
    "posix/rlimits",
];

/// Aliases Mesos accepts.
const ALIASES: &[(&str, &[&str])] =
    &[("cgroups", &["cgroups/cpu", "cgroups/mem"]), ("process", &["posix/cpu", "posix/mem"])];

/// Mesos isolators Agora does not implement yet (refused with that reason, not as unknown).
const LATER: &[&str] = &[
    "appc/runtime",
    "cgroups/blkio",
    "cgroups/cpuset",
    "cgroups/devices",
    "cgroups/hugetlb",
    "cgroups/net_cls",
    "cgroups/net_prio",
    "cgroups/perf_event",
    "disk/du",
    "disk/xfs",
    "docker/runtime",
    "docker/volume",
    "environment_secret",
    "filesystem/shared",
    "gpu/nvidia",
    "linux/devices",
    "network/cni",
    "network/port_mapping",
    "network/ports",
    "posix/disk",
    "volume/csi",
    "volume/host_path",
    "volume/image",
    "volume/sandbox_path",
    "volume/secret",
];

/// The default as root.
pub const DEFAULT_ROOT: &str = "cgroups/cpu,cgroups/mem,cgroups/pids,namespaces/pid,namespaces/ipc,filesystem/linux,linux/capabilities,linux/nnp,linux/seccomp";
/// The default for an unprivileged agent.
pub const DEFAULT_USER: &str = "posix/cpu,posix/mem";

/// The isolation a launcher applies to every container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Isolation {
    pub cgroups_cpu: bool,
    pub cgroups_mem: bool,
    pub cgroups_pids: bool,
    pub namespaces_pid: bool,
    pub namespaces_ipc: bool,
    pub filesystem_linux: bool,
    pub capabilities: bool,
    pub nnp: bool,
    pub seccomp: bool,
    pub rlimits: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct IsolationError(pub String);

impl fmt::Display for IsolationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IsolationError {}

impl Isolation {
    /// Parses a comma-separated list of isolator names.
    pub fn parse(list: &str) -> Result<Isolation, IsolationError> {
        let mut iso = Isolation::default();
        let mut filesystems = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let names: Vec<&str> = match ALIASES.iter().find(|(a, _)| *a == raw) {
                Some((_, expanded)) => expanded.to_vec(),
                None => vec![raw],
            };
            for name in names {
                match name {
                    "cgroups/cpu" => iso.cgroups_cpu = true,
                    "cgroups/mem" => iso.cgroups_mem = true,
                    "cgroups/pids" => iso.cgroups_pids = true,
                    "cgroups/all" => {
                        iso.cgroups_cpu = true;
                        iso.cgroups_mem = true;
                        iso.cgroups_pids = true;
                    }
                    "namespaces/pid" => iso.namespaces_pid = true,
                    "namespaces/ipc" => iso.namespaces_ipc = true,
                    "filesystem/linux" => {
                        iso.filesystem_linux = true;
                        filesystems.push(name);
                    }
                    "filesystem/posix" => filesystems.push(name),
                    "linux/capabilities" => iso.capabilities = true,
                    "linux/nnp" => iso.nnp = true,
                    "linux/seccomp" => iso.seccomp = true,
                    "posix/rlimits" => iso.rlimits = true,
                    "posix/cpu" | "posix/mem" => {}
                    other if LATER.contains(&other) => {
                        return Err(IsolationError(format!("isolator '{other}' is not supported by Agora yet")));
                    }
                    other => {
                        return Err(IsolationError(format!(
                            "unknown isolator '{other}'; known isolators: {}",
                            KNOWN.join(", ")
                        )));
                    }
                }
            }
        }
        if filesystems.len() > 1 {
            return Err(IsolationError(format!(
                "at most one filesystem isolator may be used, got {}",
                filesystems.join(" and ")
            )));
        }
        Ok(iso)
    }

    /// Whether any part needs the linux launcher (namespaces or cgroups).
    pub fn needs_linux_launcher(&self) -> bool {
        self.cgroups_cpu
            || self.cgroups_mem
            || self.cgroups_pids
            || self.namespaces_pid
            || self.namespaces_ipc
            || self.filesystem_linux
            || self.capabilities
            || self.nnp
            || self.seccomp
    }

    pub fn uses_cgroups(&self) -> bool {
        self.cgroups_cpu || self.cgroups_mem || self.cgroups_pids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let iso = Isolation::parse(DEFAULT_ROOT).unwrap();
        assert!(iso.cgroups_cpu && iso.cgroups_mem && iso.cgroups_pids && iso.namespaces_pid && iso.seccomp);
        assert!(iso.needs_linux_launcher());
        let user = Isolation::parse(DEFAULT_USER).unwrap();
        assert!(!user.needs_linux_launcher());
    }

    #[test]
    fn aliases_expand() {
        let iso = Isolation::parse("cgroups").unwrap();
        assert!(iso.cgroups_cpu && iso.cgroups_mem && !iso.cgroups_pids);
        assert_eq!(Isolation::parse("process").unwrap(), Isolation::default());
    }

    #[test]
    fn unknown_names_are_refused_with_the_list() {
        let e = Isolation::parse("cgroups/cpu,bogus/thing").unwrap_err();
        assert!(e.0.contains("bogus/thing") && e.0.contains("cgroups/mem"), "{e}");
        let e = Isolation::parse("network/cni").unwrap_err();
        assert!(e.0.contains("not supported"), "{e}");
        assert!(Isolation::parse("filesystem/linux,filesystem/posix").is_err());
    }
}
