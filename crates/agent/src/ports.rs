//! `network/ports`: which TCP ports a host-network container listens on (its processes'
//! sockets in the LISTEN state, from `/proc/<pid>/fd` and `/proc/<pid>/net/tcp{,6}`), and
//! the limitation a container listening outside its `ports` resources gets.
use agora_api::{Reason, Resource};
use agora_containerizer::Limitation;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

/// `--container-ports-watch-interval`, `--check-agent-port-range-only`,
/// `--enforce-container-ports`.
#[derive(Clone, Debug)]
pub struct PortsConfig {
    pub watch_interval: Duration,
    pub check_agent_port_range_only: bool,
    /// Kill a violating container (else only log it).
    pub enforce: bool,
}

impl Default for PortsConfig {
    fn default() -> Self {
        PortsConfig { watch_interval: Duration::from_secs(30), check_agent_port_range_only: false, enforce: false }
    }
}

/// `/proc/net/tcp` lines in the LISTEN state: (socket inode, local port).
fn listening_in(table: &str) -> Vec<(u64, u16)> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let port = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
            Some((f[9].parse().ok()?, port))
        })
        .collect()
}

/// Socket inodes the process holds.
fn sockets_of(pid: i32) -> HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            let s = t.to_string_lossy().into_owned();
            s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// The TCP ports `pids` listen on.
pub fn listening(pids: &[i32]) -> BTreeSet<u16> {
    let Some(first) = pids.first() else { return BTreeSet::new() };
    let mut table = Vec::new();
    for t in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{first}/net/{t}")) {
            table.extend(listening_in(&text));
        }
    }
    let mine: HashSet<u64> = pids.iter().flat_map(|p| sockets_of(*p)).collect();
    table.into_iter().filter(|(inode, _)| mine.contains(inode)).map(|(_, port)| port).collect()
}

/// The ports a container may listen on, from its resources.
pub fn allowed(resources: &[Resource]) -> Vec<(u64, u64)> {
    agora_api::Resources::from_vec(resources.to_vec()).ranges_of("ports")
}

/// The first port in `listening` that is not allowed (and, with `only_in`, lies in the
/// agent's own port range).
pub fn violation(listening: &BTreeSet<u16>, allowed: &[(u64, u64)], only_in: Option<&[(u64, u64)]>) -> Option<u16> {
    let within = |p: u64, r: &[(u64, u64)]| r.iter().any(|(b, e)| *b <= p && p <= *e);
    listening.iter().copied().find(|p| {
        let p64 = u64::from(*p);
        let counted = match only_in {
            Some(r) => within(p64, r),
            None => true,
        };
        !within(p64, allowed) && counted
    })
}

pub fn limitation(port: u16) -> Limitation {
    Limitation {
        reason: Reason::ReasonContainerLimitation,
        message: format!("Container is listening on port {port}, which is not among its ports resources"),
        resources: vec![Resource::ranges("ports", vec![(u64::from(port), u64::from(port))])],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_of_this_process_are_found_and_checked() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ports = listening(&[std::process::id() as i32]);
        assert!(ports.contains(&port), "{ports:?}");
        assert_eq!(violation(&ports, &[(u64::from(port), u64::from(port))], None), None);
        assert_eq!(violation(&BTreeSet::from([port]), &[], None), Some(port));
        assert_eq!(violation(&BTreeSet::from([port]), &[], Some(&[(1, 2)])), None, "outside the agent's range");
        let table = "  sl  local_address rem_address   st\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n";
        assert_eq!(listening_in(table), [(4242, 8080)]);
    }
}
