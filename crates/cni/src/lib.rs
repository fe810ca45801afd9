//! A CNI runtime (spec 1.0): network configuration lists from a directory, the plugins run
//! for ADD / DEL / CHECK with the spec's environment and stdin (each plugin's config with
//! `name`, `cniVersion`, the previous result, and `runtimeConfig.portMappings` for plugins
//! that declare the capability), bounded by a timeout; results parsed for the addresses;
//! each attachment's exact arguments and result cached on disk, so DEL after a restart
//! passes what ADD did (portmap removes nothing otherwise); and network namespaces pinned
//! by a bind mount so they outlive any process.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CniError {
    #[error("CNI config {path}: {why}")]
    Config { path: PathBuf, why: String },
    #[error("unknown CNI network '{name}' (known: {known})")]
    UnknownNetwork { name: String, known: String },
    #[error("CNI plugin '{plugin}' {command} for network '{network}' failed: {why}")]
    Plugin { plugin: String, command: String, network: String, why: String },
    #[error("CNI plugin '{plugin}' {command} for network '{network}' did not finish within {secs} s")]
    Timeout { plugin: String, command: String, network: String, secs: u64 },
    #[error("network namespace {path}: {why}")]
    Netns { path: PathBuf, why: String },
    #[error("CNI cache {path}: {why}")]
    Cache { path: PathBuf, why: String },
}

/// One network: a `.conflist` (or a single-plugin `.conf` turned into a list of one).
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<serde_json::Value>,
    pub file: PathBuf,
}

/// Reads every `*.conflist`, `*.conf` and `*.json` of `dir` (in name order; the first of a
/// name wins). A file that does not parse is an error naming it.
pub fn load_networks(dir: &Path) -> Result<Vec<NetworkList>, CniError> {
    let err = |path: &Path, why: String| CniError::Config { path: path.to_path_buf(), why };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("conflist" | "conf" | "json")))
        .collect();
    files.sort();
    let mut out: Vec<NetworkList> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| err(&f, e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(&f, e.to_string()))?;
        let name = v.get("name").and_then(|n| n.as_str()).filter(|n| !n.is_empty());
        let name = name.ok_or_else(|| err(&f, "no 'name'".into()))?.to_string();
        let cni_version = v.get("cniVersion").and_then(|n| n.as_str()).unwrap_or("0.4.0").to_string();
        let plugins = match v.get("plugins") {
            Some(p) => p.as_array().cloned().ok_or_else(|| err(&f, "'plugins' is not a list".into()))?,
            None if v.get("type").is_some() => vec![v.clone()],
            None => return Err(err(&f, "neither 'plugins' nor 'type'".into())),
        };
        if plugins.is_empty() || plugins.iter().any(|p| p.get("type").and_then(|t| t.as_str()).is_none()) {
            return Err(err(&f, "every plugin needs a 'type'".into()));
        }
        if !out.iter().any(|n| n.name == name) {
            out.push(NetworkList { name, cni_version, plugins, file: f });
        }
    }
    Ok(out)
}

/// Finds a network by name among `lists`.
pub fn find<'a>(lists: &'a [NetworkList], name: &str) -> Result<&'a NetworkList, CniError> {
    lists.iter().find(|n| n.name == name).ok_or_else(|| CniError::UnknownNetwork {
        name: name.to_string(),
        known: if lists.is_empty() {
            "none".into()
        } else {
            lists.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
        },
    })
}

/// A port mapping as CNI's `runtimeConfig.portMappings` has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

/// Where and how the plugins run.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// `CNI_PATH`: where plugin binaries are.
    pub plugin_dirs: Vec<PathBuf>,
    /// Run the plugins inside this network namespace instead of the agent's own (through
    /// `nsenter`), e.g. a namespace a test made, so the machine's is never touched.
    pub root_netns: Option<PathBuf>,
    pub timeout: Duration,
}

/// Everything DEL must repeat: cached per attachment at ADD.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub port_mappings: Vec<PortMapping>,
    /// The list as it was at ADD (the file may change or go later).
    pub plugins: Vec<serde_json::Value>,
    pub cni_version: String,
    /// The final result of ADD.
    pub result: serde_json::Value,
}

impl Attachment {
    /// The IPv4 addresses of the result (without prefix length).
    pub fn ipv4(&self) -> Vec<String> {
        ips_of(&self.result).into_iter().filter(|ip| !ip.contains(':')).collect()
    }

    /// The nameservers of the result's DNS section.
    pub fn nameservers(&self) -> Vec<String> {
        self.result
            .pointer("/dns/nameservers")
            .and_then(|n| n.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }
}

/// The addresses of a CNI result, without their prefix lengths.
pub fn ips_of(result: &serde_json::Value) -> Vec<String> {
    result
        .get("ips")
        .and_then(|i| i.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|ip| ip.get("address").and_then(|x| x.as_str()))
                .map(|a| a.split('/').next().unwrap_or(a).to_string())
                .collect()
        })
        .unwrap_or_default()
}

impl Runtime {
    fn plugin(&self, kind: &str) -> Option<PathBuf> {
        if kind.contains('/') || kind.is_empty() {
            return None;
        }
        self.plugin_dirs.iter().map(|d| d.join(kind)).find(|p| p.is_file())
    }

    /// Runs one plugin; its stdout on success.
    fn exec(&self, command: &str, att: &Attachment, conf: &serde_json::Value) -> Result<serde_json::Value, CniError> {
        let kind = conf.get("type").and_then(|t| t.as_str()).unwrap_or_default().to_string();
        let fail = |why: String| CniError::Plugin {
            plugin: kind.clone(),
            command: command.to_string(),
            network: att.network.clone(),
            why,
        };
        let path = self.plugin(&kind).ok_or_else(|| {
            fail(format!(
                "no such plugin in {}",
                self.plugin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
            ))
        })?;
        let mut cmd = match &self.root_netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("--").arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let cni_path = std::env::join_paths(&self.plugin_dirs).map_err(|e| fail(e.to_string()))?;
        cmd.env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| fail(format!("cannot run {}: {e}", path.display())))?;
        let input = serde_json::to_vec(conf).map_err(|e| fail(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input);
        }
        // Bounded: a hung plugin is killed.
        let deadline = Instant::now() + self.timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CniError::Timeout {
                        plugin: kind,
                        command: command.to_string(),
                        network: att.network.clone(),
                        secs: self.timeout.as_secs(),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        let stdout: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        if !out.status.success() {
            let msg = stdout
                .get("msg")
                .and_then(|m| m.as_str())
                .map(|m| {
                    let details = stdout.get("details").and_then(|d| d.as_str()).unwrap_or("");
                    if details.is_empty() {
                        m.to_string()
                    } else {
                        format!("{m}: {details}")
                    }
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            return Err(fail(format!("{} ({})", msg, out.status)));
        }
        Ok(stdout)
    }

    /// The stdin of plugin `i` of the attachment's list.
    fn conf(&self, att: &Attachment, i: usize, prev: Option<&serde_json::Value>) -> serde_json::Value {
        let mut c = att.plugins[i].clone();
        if let Some(o) = c.as_object_mut() {
            o.insert("name".into(), att.network.clone().into());
            o.insert("cniVersion".into(), att.cni_version.clone().into());
            let wants_ports = o.get("capabilities").and_then(|c| c.get("portMappings")).and_then(|p| p.as_bool());
            if wants_ports == Some(true) && !att.port_mappings.is_empty() {
                o.insert("runtimeConfig".into(), serde_json::json!({ "portMappings": att.port_mappings }));
            }
            if let Some(p) = prev.filter(|p| !p.is_null()) {
                o.insert("prevResult".into(), p.clone());
            }
        }
        c
    }

    /// ADD: every plugin in order, each fed the previous result. On failure the plugins
    /// already run are deleted again (best effort) and the error returned.
    pub fn add(
        &self,
        list: &NetworkList,
        container_id: &str,
        netns: &Path,
        ifname: &str,
        port_mappings: Vec<PortMapping>,
    ) -> Result<Attachment, CniError> {
        let mut att = Attachment {
            network: list.name.clone(),
            container_id: container_id.to_string(),
            netns: netns.to_path_buf(),
            ifname: ifname.to_string(),
            port_mappings,
            plugins: list.plugins.clone(),
            cni_version: list.cni_version.clone(),
            result: serde_json::Value::Null,
        };
        let mut prev = serde_json::Value::Null;
        for i in 0..att.plugins.len() {
            let conf = self.conf(&att, i, Some(&prev));
            match self.exec("ADD", &att, &conf) {
                Ok(r) => prev = r,
                Err(e) => {
                    att.result = prev;
                    if let Err(d) = self.del(&att) {
                        tracing::warn!(error = %d, "CNI DEL after a failed ADD failed");
                    }
                    return Err(e);
                }
            }
        }
        att.result = prev;
        Ok(att)
    }

    /// DEL: every plugin in reverse order with the ADD's arguments and result. Every plugin
    /// is run even when one fails; the first error is returned.
    pub fn del(&self, att: &Attachment) -> Result<(), CniError> {
        let mut first = None;
        for i in (0..att.plugins.len()).rev() {
            let conf = self.conf(att, i, Some(&att.result));
            if let Err(e) = self.exec("DEL", att, &conf) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// CHECK: every plugin in order with the ADD's result.
    pub fn check(&self, att: &Attachment) -> Result<(), CniError> {
        for i in 0..att.plugins.len() {
            let conf = self.conf(att, i, Some(&att.result));
            self.exec("CHECK", att, &conf)?;
        }
        Ok(())
    }
}

/// Writes an attachment's cache record atomically (temp file, fsync, rename).
pub fn save(path: &Path, att: &Attachment) -> Result<(), CniError> {
    let err = |why: String| CniError::Cache { path: path.to_path_buf(), why };
    let dir = path.parent().ok_or_else(|| err("no parent directory".into()))?;
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    let data = serde_json::to_vec_pretty(att).map_err(|e| err(e.to_string()))?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
    f.write_all(&data).and_then(|_| f.sync_all()).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads the cached attachments under `dir` (`*.json`), in name order.
pub fn load_cached(dir: &Path) -> Vec<Attachment> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
        .collect();
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok().and_then(|b| serde_json::from_slice(&b).ok())).collect()
}

/// A network namespace pinned at `path` by a bind mount, its loopback up: made by a thread
/// that leaves the agent's namespace for a new one (the process's other threads are not
/// affected), so it outlives every process and survives an agent restart.
pub fn create_netns(path: &Path) -> Result<(), CniError> {
    let err = |why: String| CniError::Netns { path: path.to_path_buf(), why };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    std::fs::File::create(path).map_err(|e| err(e.to_string()))?;
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> Result<(), String> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare: {e}"))?;
        // Its loopback up (a child forked by this thread is in the new namespace); cheaper
        // than the loopback plugin, a Go binary.
        let lo = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("ip link set lo up: {e}"))?;
        if !lo.status.success() {
            return Err(format!("ip link set lo up: {}", String::from_utf8_lossy(&lo.stderr).trim()));
        }
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind mount: {e}"))
    })
    .join()
    .map_err(|_| err("the namespace thread panicked".into()))?;
    if let Err(why) = made {
        let _ = std::fs::remove_file(path);
        return Err(err(why));
    }
    Ok(())
}

/// Unpins and removes a namespace made by [`create_netns`] (nothing if it is not there).
pub fn remove_netns(path: &Path) -> Result<(), CniError> {
    if !path.exists() {
        return Ok(());
    }
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(CniError::Netns { path: path.to_path_buf(), why: format!("unmount: {e}") }),
    }
    std::fs::remove_file(path).map_err(|e| CniError::Netns { path: path.to_path_buf(), why: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("agora-cni-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lists_and_single_confs_load_and_bad_files_are_named() {
        let d = tmp();
        std::fs::write(
            d.join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        std::fs::write(d.join("20-b.conf"), r#"{"cniVersion":"0.4.0","name":"b","type":"ptp"}"#).unwrap();
        std::fs::write(d.join("README"), "not a config").unwrap();
        let nets = load_networks(&d).unwrap();
        assert_eq!(nets.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(nets[1].plugins.len(), 1);
        let e = find(&nets, "c").unwrap_err().to_string();
        assert!(e.contains("'c'") && e.contains("a, b"), "{e}");
        std::fs::write(d.join("30-bad.conflist"), "{").unwrap();
        let e = load_networks(&d).unwrap_err().to_string();
        assert!(e.contains("30-bad.conflist"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn plugin_stdin_chains_results_and_port_mappings() {
        let rt =
            Runtime { plugin_dirs: vec!["/nonexistent".into()], root_netns: None, timeout: Duration::from_secs(1) };
        let att = Attachment {
            network: "n".into(),
            container_id: "c".into(),
            netns: "/x".into(),
            ifname: "eth0".into(),
            port_mappings: vec![PortMapping { host_port: 31000, container_port: 80, protocol: "tcp".into() }],
            plugins: vec![
                serde_json::json!({"type": "bridge"}),
                serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            ],
            cni_version: "1.0.0".into(),
            result: serde_json::json!({"ips": [{"address": "10.1.0.5/16"}, {"address": "fd00::5/64"}],
                                       "dns": {"nameservers": ["10.1.0.1"]}}),
        };
        let c0 = rt.conf(&att, 0, None);
        assert_eq!(c0["name"], "n");
        assert!(c0.get("runtimeConfig").is_none() && c0.get("prevResult").is_none());
        let c1 = rt.conf(&att, 1, Some(&att.result));
        assert_eq!(c1["runtimeConfig"]["portMappings"][0]["hostPort"], 31000);
        assert_eq!(c1["prevResult"]["ips"][0]["address"], "10.1.0.5/16");
        assert_eq!(att.ipv4(), ["10.1.0.5"]);
        assert_eq!(att.nameservers(), ["10.1.0.1"]);
        // A missing plugin is a clear error, not a panic.
        let e = rt.exec("ADD", &att, &c0).unwrap_err().to_string();
        assert!(e.contains("no such plugin"), "{e}");
    }

    #[test]
    fn a_hung_plugin_is_killed_at_the_timeout_and_failures_carry_the_message() {
        let d = tmp();
        std::fs::write(d.join("hang"), "#!/bin/sh\nsleep 30\n").unwrap();
        std::fs::write(
            d.join("fail"),
            "#!/bin/sh\ncat >/dev/null\necho '{\"code\":11,\"msg\":\"no addresses left\"}'\nexit 1\n",
        )
        .unwrap();
        for f in ["hang", "fail"] {
            let p = d.join(f);
            let mut perm = std::fs::metadata(&p).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
            std::fs::set_permissions(&p, perm).unwrap();
        }
        let rt = Runtime { plugin_dirs: vec![d.clone()], root_netns: None, timeout: Duration::from_millis(300) };
        let list = |t: &str| NetworkList {
            name: "n".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![serde_json::json!({"type": t})],
            file: d.join("x"),
        };
        let started = Instant::now();
        let e = rt.add(&list("hang"), "c", Path::new("/x"), "eth0", vec![]).unwrap_err();
        assert!(matches!(e, CniError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let e = rt.add(&list("fail"), "c", Path::new("/x"), "eth0", vec![]).unwrap_err().to_string();
        assert!(e.contains("no addresses left"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
