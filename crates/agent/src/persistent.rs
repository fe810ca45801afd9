//! Dynamic reservations and persistent volumes on the agent: the checkpoint of what the
//! master converted (`<work-dir>/resources.json`, outside `meta/` so it outlives a reboot,
//! as volumes do), the volume directories `<work-dir>/volumes/roles/<role>/<id>`, and the
//! mounts of a task's volumes.
use agora_api::operations;
use agora_api::{Resource, Resources};
use agora_containerizer::{Propagation, VolumeMount};
use std::path::{Path, PathBuf};

const FILE: &str = "resources.json";

/// The checkpointed resources, if any were ever checkpointed.
pub fn read(work_dir: &Path) -> Result<Option<Resources>, String> {
    let path = work_dir.join(FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice::<Vec<Resource>>(&b)
            .map(|v| Some(Resources::from_vec(v)))
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes them atomically (temp file, fsync, rename).
pub fn write(work_dir: &Path, res: &Resources) -> Result<(), String> {
    let path = work_dir.join(FILE);
    agora_containerizer::fsutil::write_json(&path, &res.0).map_err(|e| format!("{}: {e}", path.display()))
}

/// Forgets them (the master removed this agent: its reservations died with it).
pub fn remove(work_dir: &Path) {
    let _ = std::fs::remove_file(work_dir.join(FILE));
}

/// The agent's `--resources`, from a total that has checkpointed changes in it.
pub fn base_of(total: &Resources) -> Resources {
    operations::base(total)
}

/// Where a persistent volume's data lives.
pub fn volume_dir(work_dir: &Path, r: &Resource) -> Option<PathBuf> {
    let id = r.persistence_id()?;
    let role = r.reservation_role();
    let safe = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('\0');
    if !operations::valid_volume_id(id) || role == "*" || !role.split('/').all(safe) {
        return None;
    }
    Some(work_dir.join("volumes").join("roles").join(role).join(id))
}

/// Makes the directories of volumes in `new` that are not in `old`, and deletes the data
/// of those in `old` no longer in `new` (DESTROY), except `in_use`: those are returned, to
/// be deleted once no task holds them.
pub fn sync_dirs(work_dir: &Path, old: &Resources, new: &Resources, in_use: &[String]) -> Vec<Resource> {
    let mut kept = Vec::new();
    let ids = |r: &Resources| operations::volume_ids(r);
    let (before, after) = (ids(old), ids(new));
    for r in new.iter().filter(|r| r.persistence_id().is_some_and(|id| !before.iter().any(|b| b == id))) {
        match volume_dir(work_dir, r) {
            Some(d) => match std::fs::create_dir_all(&d) {
                Ok(()) => tracing::info!(volume = %d.display(), "persistent volume created"),
                Err(e) => tracing::error!(volume = %d.display(), error = %e, "cannot create a persistent volume"),
            },
            None => tracing::error!(resource = %r, "refusing a persistent volume with an unsafe role or id"),
        }
    }
    for r in old.iter().filter(|r| r.persistence_id().is_some_and(|id| !after.iter().any(|a| a == id))) {
        let Some(id) = r.persistence_id() else { continue };
        if in_use.iter().any(|u| u == id) {
            tracing::warn!(volume = id, "a destroyed volume is still held by a container; deleted when it ends");
            kept.push(r.clone());
            continue;
        }
        delete(work_dir, r);
    }
    kept
}

/// Deletes a destroyed volume's data.
pub fn delete(work_dir: &Path, r: &Resource) {
    if let Some(d) = volume_dir(work_dir, r) {
        match std::fs::remove_dir_all(&d) {
            Ok(()) => tracing::info!(volume = %d.display(), "persistent volume destroyed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(volume = %d.display(), error = %e, "cannot delete a persistent volume"),
        }
    }
}

/// The mounts of the persistent volumes among a task's (or executor's) resources, made if
/// missing: `disk.volume.container_path` (relative: in the sandbox) with its mode.
pub fn mounts_for(work_dir: &Path, resources: &[Resource]) -> Result<Vec<VolumeMount>, String> {
    let mut out = Vec::new();
    for r in resources.iter().filter(|r| r.persistence_id().is_some()) {
        let dir = volume_dir(work_dir, r).ok_or_else(|| format!("persistent volume {r}: unsafe role or id"))?;
        let (path, read_only) =
            r.volume_mount().ok_or_else(|| format!("persistent volume {r} has no disk.volume.container_path"))?;
        agora_containerizer::volumes::check_target(path).map_err(|e| format!("persistent volume {r}: {e}"))?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        out.push(VolumeMount {
            source: dir,
            target: path.to_string(),
            read_only,
            propagation: Propagation::HostToContainer,
        });
    }
    Ok(out)
}

/// The ids of the persistent volumes in these resources.
pub fn ids_in(resources: &[Resource]) -> Vec<String> {
    resources.iter().filter_map(|r| r.persistence_id().map(str::to_string)).collect()
}
