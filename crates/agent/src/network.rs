//! `network/cni` on the agent: a container whose `ContainerInfo.network_infos` names CNI
//! networks gets a network namespace of its own (pinned under
//! `<work-dir>/cni/<container-id>/netns`), joined to each network by the CNI plugins before
//! its init starts; each attachment's arguments and result are cached beside it
//! (`<n>-<network>.json`), so the container's end (or a later agent run) deletes exactly
//! what was added. Containers without `network_infos` stay on the host's network.
use agora_cni::{Attachment, PortMapping, Runtime};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `--network-cni-config-dir`, `--network-cni-plugins-dir`, `--network-cni-root-netns`.
#[derive(Clone, Debug)]
pub struct CniConfig {
    /// Where the network configuration lists are; `None`: no CNI networks.
    pub config_dir: Option<PathBuf>,
    pub plugins_dir: PathBuf,
    /// Run the plugins in this network namespace (tests: never the machine's own).
    pub root_netns: Option<PathBuf>,
    /// Bound on each plugin run.
    pub timeout: Duration,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            config_dir: None,
            plugins_dir: PathBuf::from("/usr/lib/cni"),
            root_netns: None,
            timeout: Duration::from_secs(30),
        }
    }
}

impl CniConfig {
    fn runtime(&self) -> Runtime {
        Runtime {
            plugin_dirs: vec![self.plugins_dir.clone()],
            root_netns: self.root_netns.clone(),
            timeout: self.timeout,
        }
    }
}

/// One entry of `network_infos`: a network name and its port mappings.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub name: String,
    pub port_mappings: Vec<PortMapping>,
}

/// Reads `ContainerInfo.network_infos[]`; only named (CNI) networks count.
pub fn requests(container_info: Option<&serde_json::Value>) -> Result<Vec<Request>, String> {
    let Some(list) = container_info.and_then(|c| c.get("network_infos")).and_then(|n| n.as_array()) else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for (i, n) in list.iter().enumerate() {
        let Some(name) = n.get("name").and_then(|x| x.as_str()) else { continue };
        if name.is_empty() {
            return Err(format!("network_infos[{i}]: empty network name"));
        }
        let mut port_mappings = Vec::new();
        for pm in n.get("port_mappings").and_then(|p| p.as_array()).into_iter().flatten() {
            let port = |k: &str| {
                pm.get(k)
                    .and_then(|v| v.as_u64())
                    .and_then(|v| u16::try_from(v).ok())
                    .filter(|v| *v > 0)
                    .ok_or_else(|| format!("network '{name}': port mapping needs a valid '{k}'"))
            };
            let protocol = pm.get("protocol").and_then(|p| p.as_str()).unwrap_or("tcp").to_lowercase();
            if protocol != "tcp" && protocol != "udp" {
                return Err(format!("network '{name}': port mapping protocol '{protocol}' (want tcp or udp)"));
            }
            port_mappings.push(PortMapping {
                host_port: port("host_port")?,
                container_port: port("container_port")?,
                protocol,
            });
        }
        if out.iter().any(|r: &Request| r.name == name) {
            return Err(format!("network '{name}' is named twice"));
        }
        out.push(Request { name: name.to_string(), port_mappings });
    }
    Ok(out)
}

/// What a container's networks gave it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Networks {
    pub netns: PathBuf,
    pub attachments: Vec<Attachment>,
}

impl Networks {
    /// The container's first IPv4 address (`MESOS_CONTAINER_IP`).
    pub fn ip(&self) -> Option<String> {
        self.attachments.iter().flat_map(|a| a.ipv4()).next()
    }

    pub fn nameservers(&self) -> Vec<String> {
        self.attachments.iter().flat_map(|a| a.nameservers()).collect()
    }

    /// `ContainerStatus.network_infos` as Mesos reports them.
    pub fn network_infos(&self) -> Vec<serde_json::Value> {
        self.attachments
            .iter()
            .map(|a| {
                let ips: Vec<serde_json::Value> = agora_cni::ips_of(&a.result)
                    .into_iter()
                    .map(|ip| {
                        let protocol = if ip.contains(':') { "IPv6" } else { "IPv4" };
                        serde_json::json!({"protocol": protocol, "ip_address": ip})
                    })
                    .collect();
                let mut v = serde_json::json!({"name": a.network, "ip_addresses": ips});
                if !a.port_mappings.is_empty() {
                    v["port_mappings"] = a
                        .port_mappings
                        .iter()
                        .map(|p| {
                            serde_json::json!({"host_port": p.host_port, "container_port": p.container_port,
                                               "protocol": p.protocol})
                        })
                        .collect();
                }
                v
            })
            .collect()
    }
}

/// CNI operations run one at a time in an agent: plugins are not required to be safe
/// against concurrent ADDs on one network (the bridge plugin races creating its bridge).
static CNI_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn dir_of(work_dir: &Path, container_id: &str) -> PathBuf {
    work_dir.join("cni").join(container_id)
}

/// Host ports of the mappings must be among the `ports` the container was given.
pub fn check_ports(requests: &[Request], given: &[(u64, u64)]) -> Result<(), String> {
    for r in requests {
        for p in &r.port_mappings {
            let hp = u64::from(p.host_port);
            if !given.iter().any(|(b, e)| *b <= hp && hp <= *e) {
                return Err(format!(
                    "network '{}': host port {} is not among the task's ports resources",
                    r.name, p.host_port
                ));
            }
        }
    }
    Ok(())
}

/// Makes the container's namespace and attaches it to every requested network (blocking;
/// run off the actor). On failure everything done is undone.
pub fn setup(cfg: &CniConfig, work_dir: &Path, container_id: &str, requests: &[Request]) -> Result<Networks, String> {
    let Some(conf_dir) = &cfg.config_dir else {
        return Err(format!(
            "the task asks for network '{}' but this agent has no CNI networks (--network-cni-config-dir)",
            requests.first().map(|r| r.name.as_str()).unwrap_or("")
        ));
    };
    let _serial = CNI_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let lists = agora_cni::load_networks(conf_dir).map_err(|e| e.to_string())?;
    let chosen = requests
        .iter()
        .map(|r| agora_cni::find(&lists, &r.name).cloned().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let dir = dir_of(work_dir, container_id);
    let netns = dir.join("netns");
    agora_cni::create_netns(&netns).map_err(|e| e.to_string())?;
    let rt = cfg.runtime();
    let mut out = Networks { netns: netns.clone(), attachments: vec![] };
    let result: Result<(), String> = (|| {
        for (i, (list, req)) in chosen.iter().zip(requests).enumerate() {
            let ifname = format!("eth{i}");
            let att =
                rt.add(list, container_id, &netns, &ifname, req.port_mappings.clone()).map_err(|e| e.to_string())?;
            let record = dir.join(format!("{i}-{}.json", sanitize(&list.name)));
            if let Err(e) = agora_cni::save(&record, &att) {
                let _ = rt.del(&att);
                return Err(e.to_string());
            }
            tracing::info!(container_id, network = %list.name, ips = ?att.ipv4(), "joined CNI network");
            out.attachments.push(att);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(out),
        Err(e) => {
            teardown_locked(cfg, work_dir, container_id);
            Err(e)
        }
    }
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The networks a container was attached to, from the cache (after an agent restart).
pub fn cached(work_dir: &Path, container_id: &str) -> Option<Networks> {
    let dir = dir_of(work_dir, container_id);
    if !dir.is_dir() {
        return None;
    }
    Some(Networks { netns: dir.join("netns"), attachments: agora_cni::load_cached(&dir) })
}

/// Detaches a container from its networks (DEL with the cached arguments, last network
/// first), unpins its namespace and removes its directory. Blocking; nothing if it had none.
pub fn teardown(cfg: &CniConfig, work_dir: &Path, container_id: &str) {
    let _serial = CNI_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    teardown_locked(cfg, work_dir, container_id);
}

fn teardown_locked(cfg: &CniConfig, work_dir: &Path, container_id: &str) {
    let dir = dir_of(work_dir, container_id);
    if !dir.is_dir() {
        return;
    }
    let rt = cfg.runtime();
    let mut atts = agora_cni::load_cached(&dir);
    atts.reverse();
    let mut clean = true;
    for att in &atts {
        match rt.del(att) {
            Ok(()) => tracing::info!(container_id, network = %att.network, "left CNI network"),
            Err(e) => {
                clean = false;
                tracing::warn!(container_id, network = %att.network, error = %e, "CNI DEL failed");
            }
        }
    }
    if let Err(e) = agora_cni::remove_netns(&dir.join("netns")) {
        clean = false;
        tracing::warn!(container_id, error = %e, "cannot remove the network namespace");
    }
    if clean {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// After an agent restart: CHECK every attachment of a recovered container (the plugins
/// verify its interfaces, addresses and rules are still as ADD made them). Returns the
/// failures, which are logged; the container keeps running either way.
pub fn check(cfg: &CniConfig, work_dir: &Path, container_id: &str) -> Vec<String> {
    let _serial = CNI_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let rt = cfg.runtime();
    let mut failures = Vec::new();
    for att in agora_cni::load_cached(&dir_of(work_dir, container_id)) {
        match rt.check(&att) {
            Ok(()) => tracing::info!(container_id, network = %att.network, "CNI CHECK passed after recovery"),
            Err(e) => {
                tracing::warn!(container_id, network = %att.network, error = %e, "CNI CHECK failed after recovery");
                failures.push(e.to_string());
            }
        }
    }
    failures
}

/// Containers with CNI state on disk (to tear down those no checkpoint claims).
pub fn containers_with_networks(work_dir: &Path) -> Vec<String> {
    std::fs::read_dir(work_dir.join("cni"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_infos_are_read_and_checked() {
        let ci = serde_json::json!({"network_infos": [
            {"name": "a", "port_mappings": [{"host_port": 31001, "container_port": 8080, "protocol": "TCP"}]},
            {"ip_addresses": [{}]}]});
        let r = requests(Some(&ci)).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].port_mappings[0].protocol, "tcp");
        assert!(check_ports(&r, &[(31000, 31005)]).is_ok());
        let e = check_ports(&r, &[(32000, 32005)]).unwrap_err();
        assert!(e.contains("31001"), "{e}");
        let dup = serde_json::json!({"network_infos": [{"name": "a"}, {"name": "a"}]});
        assert!(requests(Some(&dup)).is_err());
        let bad = serde_json::json!({"network_infos": [{"name": "a", "port_mappings": [{"host_port": 0, "container_port": 1}]}]});
        assert!(requests(Some(&bad)).is_err());
        let none = CniConfig::default();
        let e = setup(&none, Path::new("/nonexistent"), "c", &r).unwrap_err();
        assert!(e.contains("--network-cni-config-dir"), "{e}");
    }
}
