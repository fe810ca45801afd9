//! network/cni end to end: real `agora master` / `agora agent` processes, Debian's CNI
//! plugins (bridge, host-local, portmap, loopback) from a conflist made by the fixture
//! (`shared/fixtures/cni.sh conf`), and the httpd fixture image. The plugins run inside a
//! network namespace each test makes (`--network-cni-root-netns`), so the machine's own
//! namespace never gets a bridge, a veth or an iptables rule.
#![allow(clippy::unwrap_used)] // test helpers may panic

mod common;
#[path = "../../image/tests/common/fixture.rs"]
#[allow(dead_code, clippy::all)]
mod fx;

use agora_api::*;
use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// A network namespace standing in for the host's, deleted on drop, with its conflist.
/// A veth pair links it to the machine's namespace (a /30 of 10.199.0.0/16, no bridge, no
/// iptables rule there): the agent listens on the machine's end, so executors inside
/// containers reach it through the bridge's masquerade, as on a real host.
struct HostNs {
    name: String,
    dir: PathBuf,
    conf_dir: PathBuf,
    /// The agent's address, on the machine's end of the link.
    agent_ip: String,
}

impl HostNs {
    fn new() -> Option<HostNs> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: network tests need root");
            return None;
        }
        let fixtures = fx::fixtures_dir()?;
        let name = format!("agora-it-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let ok = Command::new("ip").args(["netns", "add", &name]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "ip netns add failed");
        let _ = Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]).status();
        let id = uuid::Uuid::new_v4().as_u128();
        let (a, b) = ((id % 256) as u8, ((id >> 8) % 64) as u8 * 4);
        let (agent_ip, ns_ip) = (format!("10.199.{a}.{}", b + 1), format!("10.199.{a}.{}", b + 2));
        let (outer, inner) = (format!("agh{}", &name[9..]), format!("agn{}", &name[9..]));
        let run = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().map(|s| s.success()).unwrap_or(false);
            assert!(ok, "ip {args:?} failed");
        };
        run(&["link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &name]);
        run(&["addr", "add", &format!("{agent_ip}/30"), "dev", &outer]);
        run(&["link", "set", &outer, "up"]);
        run(&["-n", &name, "addr", "add", &format!("{ns_ip}/30"), "dev", &inner]);
        run(&["-n", &name, "link", "set", &inner, "up"]);
        run(&["-n", &name, "route", "add", "default", "via", &agent_ip]);
        let dir = std::env::temp_dir().join(&name);
        let conf_dir = dir.join("net.d");
        std::fs::create_dir_all(&conf_dir).unwrap();
        let out = Command::new("bash")
            .arg(fixtures.join("cni.sh"))
            .args(["conf", &conf_dir.display().to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "cni.sh conf: {}", String::from_utf8_lossy(&out.stderr));
        // A second network, on a bridge and subnet of its own.
        let second = dir.join("second");
        let out = Command::new("bash")
            .arg(fixtures.join("cni.sh"))
            .args(["conf", &second.display().to_string()])
            .envs([
                ("CNI_NET_NAME", "second"),
                ("CNI_BRIDGE", "cni-fx1"),
                ("CNI_SUBNET", "10.89.0.0/16"),
                ("CNI_GATEWAY", "10.89.0.1"),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "cni.sh conf: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::copy(second.join("10-fixture.conflist"), conf_dir.join("20-second.conflist")).unwrap();
        Some(HostNs { name, dir, conf_dir, agent_ip })
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs a command in this namespace; (success, stdout).
    fn exec(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip").args(["netns", "exec", &self.name]).args(args).stdin(Stdio::null()).output();
        let out = out.unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn veths(&self) -> Vec<String> {
        let (_, links) = self.exec(&["ip", "-o", "link", "show", "type", "veth"]);
        // Containers' veths only, not this namespace's own link to the machine.
        let own = format!("agn{}", &self.name[9..]);
        links.lines().filter(|l| !l.contains(&own)).map(str::to_string).collect()
    }

    fn leases(&self) -> Vec<String> {
        [self.conf_dir.join("ipam/fixture"), self.dir.join("second/ipam/second")]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("10."))
            .collect()
    }

    fn nat_rules_for(&self, ip: &str) -> Vec<String> {
        let (_, rules) = self.exec(&["iptables-save", "-t", "nat"]);
        rules.lines().filter(|l| l.contains(ip)).map(str::to_string).collect()
    }
}

impl Drop for HostNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A local directory of `docker save` tarballs (httpd) for `--docker-registry`.
fn local_registry(ns: &HostNs) -> String {
    let dir = ns.dir.join("registry");
    std::fs::create_dir_all(&dir).unwrap();
    let images = fx::images_dir();
    std::os::unix::fs::symlink(images.join("docker-archive/httpd.tar"), dir.join("httpd.tar")).unwrap();
    format!("--docker-registry={}", dir.display())
}

fn networked(id: &str, agent: &AgentId, cmd: Option<&str>, networks: serde_json::Value, port: Option<u64>) -> TaskInfo {
    let command = match cmd {
        Some(c) => CommandInfo::shell(c),
        None => {
            CommandInfo { shell: false, value: None, arguments: vec![], environment: None, user: None, uris: vec![] }
        }
    };
    let mut t = task_info(id, agent, command, 0.1, 64.0);
    if let Some(p) = port {
        t.resources.push(Resource::ranges("ports", vec![(p, p)]));
    }
    t.container = Some(json!({"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": "httpd"}}},
                               "network_infos": networks, "hostname": id}));
    t
}

fn ip_of(s: &TaskStatus) -> String {
    let cs = s.container_status.as_ref().expect("container_status");
    cs["network_infos"][0]["ip_addresses"][0]["ip_address"].as_str().expect("an address").to_string()
}

fn cni_dirs(c: &Cluster) -> Vec<String> {
    std::fs::read_dir(c.dir.join("agent0/cni"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

async fn start(ns: &HostNs) -> Cluster {
    let conf = format!("--network-cni-config-dir={}", ns.conf_dir.display());
    let root = format!("--network-cni-root-netns={}", ns.path());
    let ip = format!("--ip={}", ns.agent_ip);
    Cluster::start(1, &[], &[&conf, &root, &local_registry(ns), &ip]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_on_a_cni_network_reach_each_other_and_the_host_reaches_a_mapped_port() {
    let Some(ns) = HostNs::new() else { return };
    let c = start(&ns).await;
    let mut fw = Fw::subscribe(&c.master.addr, info("cni", true, 0.0)).await;

    // Two httpd tasks on the fixture network, one with host port 31080 -> 8080.
    let offer = one_offer(&mut fw).await;
    let agent = offer.agent_id.clone();
    let mapped = json!([{"name": "fixture", "port_mappings": [{"host_port": 31080, "container_port": 8080}]}]);
    let a = networked("web-a", &agent, None, mapped, Some(31080));
    let b = networked("web-b", &agent, None, json!([{"name": "fixture"}]), None);
    fw.s.launch(vec![offer.id.clone()], vec![a, b], 0.0).await.unwrap();
    let a_running = fw.until_state("web-a", TaskState::Running, T).await;
    let b_running = fw.until_state("web-b", TaskState::Running, T).await;
    for s in a_running.iter().chain(&b_running) {
        assert_ne!(s.state, TaskState::Failed, "{s:?}\n{}", c.logs());
    }
    let (ip_a, ip_b) = (ip_of(a_running.last().unwrap()), ip_of(b_running.last().unwrap()));
    assert!(ip_a.starts_with("10.88.") && ip_b.starts_with("10.88.") && ip_a != ip_b, "{ip_a} {ip_b}");
    let cs = a_running.last().unwrap().container_status.clone().unwrap();
    assert_eq!(cs["network_infos"][0]["name"], "fixture", "{cs}");

    // A third container on the network fetches from both by IP, and sees its own address
    // and hostname in its environment and /etc files.
    let offer = one_offer(&mut fw).await;
    let cmd = format!(
        "set -e; wget -qO- http://{ip_a}:8080/; wget -qO- http://{ip_b}:8080/; echo ip=$MESOS_CONTAINER_IP; \
         grep \"$MESOS_CONTAINER_IP\" /etc/hosts; hostname; ip -o -4 addr show eth1; \
         ip -o link show lo | grep -q LOWER_UP && echo lo-up"
    );
    // On two networks: eth0 on the fixture one, eth1 on the second.
    let probe = networked("probe", &agent, Some(&cmd), json!([{"name": "fixture"}, {"name": "second"}]), None);
    fw.s.launch(vec![offer.id.clone()], vec![probe], 0.0).await.unwrap();
    let seen = until_terminal(&mut fw, "probe", T).await;
    let out = sandbox_file(&c, &fw, &agent, "probe", "stdout");
    assert_eq!(seen.last().unwrap().state, TaskState::Finished, "{out}\n{seen:?}\n{}", c.logs());
    assert_eq!(out.matches("hello from the httpd fixture").count(), 2, "{out}");
    let running = seen.iter().find(|s| s.state == TaskState::Running).unwrap();
    let probe_ip = ip_of(running);
    assert!(out.contains(&format!("ip={probe_ip}")) && out.contains("probe") && out.contains("lo-up"), "{out}");
    let infos = &running.container_status.as_ref().unwrap()["network_infos"];
    assert_eq!(infos[1]["name"], "second", "{infos}");
    let second_ip = infos[1]["ip_addresses"][0]["ip_address"].as_str().unwrap_or_default().to_string();
    assert!(second_ip.starts_with("10.89.") && out.contains(&second_ip), "{second_ip}\n{out}");

    // The "host" reaches web-a through its mapped port on the bridge's address.
    let (ok, body) = ns.exec(&["curl", "-sf", "--max-time", "5", "http://10.88.0.1:31080/"]);
    assert!(ok && body.contains("hello from the httpd fixture"), "{body}");

    // When the tasks end, nothing is left: interfaces, leases, NAT rules, namespaces.
    for t in ["web-a", "web-b"] {
        fw.s.kill(TaskId::new(t), Some(agent.clone())).await.unwrap();
        fw.until_state(t, TaskState::Killed, T).await;
    }
    let clean = wait_until(T, || async {
        (ns.veths().is_empty() && ns.leases().is_empty() && cni_dirs(&c).is_empty()).then_some(())
    })
    .await;
    assert!(clean.is_some(), "left: {:?} {:?} {:?}\n{}", ns.veths(), ns.leases(), cni_dirs(&c), c.logs());
    for ip in [&ip_a, &ip_b, &probe_ip] {
        assert!(ns.nat_rules_for(ip).is_empty(), "{:?}", ns.nat_rules_for(ip));
    }
    // No namespace of theirs is pinned anywhere any more (nsfs mounts named after them).
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&c.dir.join("agent0/cni").display().to_string()), "{mounts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networked_tasks_survive_an_agent_restart_and_bad_networks_fail_cleanly() {
    let Some(ns) = HostNs::new() else { return };
    let mut c = start(&ns).await;
    let mut checkpointing = info("cni-restart", true, 0.0);
    checkpointing.checkpoint = true;
    let mut fw = Fw::subscribe(&c.master.addr, checkpointing).await;
    let offer = one_offer(&mut fw).await;
    let agent = offer.agent_id.clone();
    let t = networked("web", &agent, None, json!([{"name": "fixture"}]), None);
    fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.unwrap();
    let running = fw.until_state("web", TaskState::Running, T).await;
    let ip = ip_of(running.last().unwrap());
    let url = format!("http://{ip}:8080/");
    let reach = || ns.exec(&["curl", "-sf", "--max-time", "3", &url]);
    assert!(reach().0, "not reachable before the restart");

    c.crash_agent(0);
    c.restart_agent(0, &[]).unwrap();
    c.wait_agents(1).await;
    assert!(reach().0, "not reachable after the agent restart");
    // The restarted agent CHECKs the recovered container's network with the plugins.
    let checked =
        wait_until(T, || async { c.agents[0].log_tail().contains("CNI CHECK passed after recovery").then_some(()) })
            .await;
    assert!(checked.is_some(), "{}", c.agents[0].log_tail());
    fw.s.kill(TaskId::new("web"), Some(agent.clone())).await.unwrap();
    fw.until_state("web", TaskState::Killed, T).await;
    let clean = wait_until(T, || async { (ns.leases().is_empty() && cni_dirs(&c).is_empty()).then_some(()) }).await;
    assert!(clean.is_some(), "left: {:?} {:?}\n{}", ns.leases(), cni_dirs(&c), c.logs());
    assert!(ns.veths().is_empty(), "{:?}", ns.veths());

    // An unknown network, and a host port the task was not given: clear failures.
    for (id, nets, port, why) in [
        ("nope", json!([{"name": "nope"}]), None, "unknown CNI network 'nope' (known: fixture, second)"),
        (
            "port",
            json!([{"name": "fixture", "port_mappings": [{"host_port": 31090, "container_port": 8080}]}]),
            None,
            "host port 31090 is not among the task's ports",
        ),
    ] {
        // Offers made before the agent restart are rescinded: launch until one holds.
        let mut last = None;
        for _ in 0..5 {
            let offer = one_offer(&mut fw).await;
            let t = networked(id, &agent, None, nets.clone(), port);
            fw.s.launch(vec![offer.id.clone()], vec![t], 0.0).await.unwrap();
            let seen = until_terminal(&mut fw, id, T).await;
            let s = seen.last().cloned().unwrap();
            if s.state != TaskState::Dropped {
                last = Some(s);
                break;
            }
        }
        let last = last.expect("every offer was stale");
        assert_eq!(last.state, TaskState::Failed, "{last:?}");
        assert!(last.message.as_deref().unwrap_or("").contains(why), "{last:?}");
    }
    assert!(cni_dirs(&c).is_empty() && ns.leases().is_empty(), "{:?}", cni_dirs(&c));
}
