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
    "volume/sandbox_path",
    "volume/host_path",
    "volume/image",
    "disk/du",
    "disk/xfs",
    "network/cni",
    "network/ports",
];

/// Aliases Mesos accepts.
const ALIASES: &[(&str, &[&str])] = &[
    ("cgroups", &["cgroups/cpu", "cgroups/mem"]),
    ("process", &["posix/cpu", "posix/mem"]),
    ("posix/disk", &["disk/du"]),
];

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
    "docker/runtime",
    "docker/volume",
    "environment_secret",
    "filesystem/shared",
    "gpu/nvidia",
    "linux/devices",
    "network/port_mapping",
    "volume/csi",
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
    pub volume_sandbox_path: bool,
    pub volume_host_path: bool,
    pub volume_image: bool,
    pub disk_du: bool,
    pub disk_xfs: bool,
    /// network/ports: host-network containers listen only on their `ports`.
    pub network_ports: bool,
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
                    "volume/sandbox_path" => iso.volume_sandbox_path = true,
                    "volume/host_path" => iso.volume_host_path = true,
                    "volume/image" => iso.volume_image = true,
                    "disk/du" => iso.disk_du = true,
                    "disk/xfs" => iso.disk_xfs = true,
                    // Containers with network_infos join CNI networks whenever
                    // --network-cni-config-dir is set (Mesos adds the isolator itself).
                    "network/cni" => {}
                    "network/ports" => iso.network_ports = true,
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
        if iso.filesystem_linux {
            // As Mesos: filesystem/linux brings the volume isolators (host paths stay limited
            // by --allowed-host-paths, which allows none by default).
            iso.volume_sandbox_path = true;
            iso.volume_host_path = true;
            iso.volume_image = true;
        }
        let volumes = [
            ("volume/sandbox_path", iso.volume_sandbox_path),
            ("volume/host_path", iso.volume_host_path),
            ("volume/image", iso.volume_image),
        ];
        if let Some((name, _)) = volumes.iter().find(|(_, on)| *on && !iso.filesystem_linux) {
            return Err(IsolationError(format!(
                "isolator '{name}' needs filesystem/linux (volumes are mounts in the container's mount namespace)"
            )));
        }
        if iso.disk_du && iso.disk_xfs {
            return Err(IsolationError("at most one of disk/du and disk/xfs may be used".into()));
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
            || self.disk_du
            || self.disk_xfs
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
        let e = Isolation::parse("network/port_mapping").unwrap_err();
        assert!(e.0.contains("not supported"), "{e}");
        assert!(Isolation::parse("filesystem/linux,network/cni").is_ok());
        assert!(Isolation::parse("filesystem/linux,filesystem/posix").is_err());
        let e = Isolation::parse("posix/cpu,volume/host_path").unwrap_err();
        assert!(e.0.contains("filesystem/linux"), "{e}");
        let iso = Isolation::parse("filesystem/linux,volume/host_path,volume/sandbox_path,disk/du").unwrap();
        assert!(iso.volume_host_path && iso.volume_sandbox_path && iso.disk_du && iso.volume_image);
        let implied = Isolation::parse("filesystem/linux").unwrap();
        assert!(implied.volume_host_path && implied.volume_sandbox_path && implied.volume_image, "as Mesos");
        assert!(Isolation::parse("disk/du,disk/xfs").is_err());
    }
}
