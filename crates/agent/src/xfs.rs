//! `disk/xfs`: each sandbox its own XFS project with a hard block limit equal to its `disk`
//! resource, so the kernel refuses writes past the quota (EDQUOT) without any polling. The
//! work dir must be on XFS mounted with project quotas (`prjquota`). Project ids come from
//! `--xfs-project-range`; which container holds which is kept in `<work-dir>/xfs-projects.json`
//! (written atomically), so ids are never handed out twice across agent restarts and the
//! quotas of containers gone while the agent was down are cleared at its start. The quota
//! work is done by `xfs_quota` (xfsprogs).
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Held {
    project: u32,
    dir: PathBuf,
}

pub struct Xfs {
    mount: PathBuf,
    range: (u32, u32),
    file: PathBuf,
    held: Mutex<BTreeMap<String, Held>>,
}

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Xfs {
    /// Checks the work dir is on XFS with project quotas and reads which ids are taken.
    pub fn open(work_dir: &Path, range: (u32, u32)) -> Result<Xfs, String> {
        let wd = work_dir.display().to_string();
        let fstype = run(&["stat", "-f", "-c", "%T", &wd])?;
        if fstype != "xfs" {
            return Err(format!("disk/xfs needs the work dir on XFS; {wd} is on {fstype}"));
        }
        let mount = PathBuf::from(run(&["stat", "-c", "%m", &wd])?);
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let quota_on = info.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 4 && Path::new(f[4]) == mount && (l.contains("prjquota") || l.contains("pquota"))
        });
        if !quota_on {
            return Err(format!("disk/xfs needs project quotas: mount {} with -o prjquota", mount.display()));
        }
        let file = work_dir.join("xfs-projects.json");
        let held: BTreeMap<String, Held> =
            std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Ok(Xfs { mount, range, file, held: Mutex::new(held) })
    }

    fn save(&self, held: &BTreeMap<String, Held>) -> Result<(), String> {
        agora_containerizer::fsutil::write_json(&self.file, held).map_err(|e| format!("{}: {e}", self.file.display()))
    }

    fn quota(&self, cmd: &str) -> Result<String, String> {
        run(&["xfs_quota", "-x", "-c", cmd, &self.mount.display().to_string()])
    }

    /// Gives `dir` a project of its own limited to `bytes`.
    pub fn assign(&self, container_id: &str, dir: &Path, bytes: u64) -> Result<u32, String> {
        let mut held = self.held.lock().map_err(|_| "xfs state poisoned".to_string())?;
        if let Some(h) = held.get(container_id) {
            return Ok(h.project);
        }
        let taken: HashSet<u32> = held.values().map(|h| h.project).collect();
        let project = (self.range.0..=self.range.1)
            .find(|p| !taken.contains(p))
            .ok_or_else(|| format!("no free XFS project id in [{}-{}]", self.range.0, self.range.1))?;
        held.insert(container_id.to_string(), Held { project, dir: dir.to_path_buf() });
        // Recorded before the quota is set: a crash in between leaves an id to clear, never
        // one handed out twice.
        self.save(&held)?;
        let d = dir.display().to_string();
        let kb = bytes.div_ceil(1024).max(4);
        let set = self
            .quota(&format!("project -s -p {d} {project}"))
            .and_then(|_| self.quota(&format!("limit -p bhard={kb}k {project}")));
        if let Err(e) = set {
            held.remove(container_id);
            let _ = self.save(&held);
            let _ = self.quota(&format!("limit -p bhard=0 {project}"));
            return Err(e);
        }
        tracing::info!(container_id, project, kb, "XFS project quota set");
        Ok(project)
    }

    /// Clears a container's project (its limit and the project of its sandbox).
    pub fn release(&self, container_id: &str) {
        let Ok(mut held) = self.held.lock() else { return };
        let Some(h) = held.remove(container_id) else { return };
        if let Err(e) = self.quota(&format!("limit -p bhard=0 {}", h.project)) {
            tracing::warn!(container_id, error = %e, "cannot clear an XFS project limit");
        }
        if h.dir.exists() {
            let _ = self.quota(&format!("project -C -p {} {}", h.dir.display(), h.project));
        }
        let _ = self.save(&held);
    }

    /// At start: clears the projects of containers that did not survive.
    pub fn recover(&self, live: &HashSet<String>) {
        let gone: Vec<String> = match self.held.lock() {
            Ok(h) => h.keys().filter(|c| !live.contains(*c)).cloned().collect(),
            Err(_) => return,
        };
        for c in gone {
            self.release(&c);
        }
    }
}
