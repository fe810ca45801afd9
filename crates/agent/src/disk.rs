//! `disk/du`: how much a container's sandbox holds, measured like `du` (allocated blocks,
//! each hard-linked file once, symlinks not followed, other filesystems not entered), and
//! the limitation a container over its `disk` gets when the quota is enforced.
use agora_api::{Reason, Resource};
use agora_containerizer::Limitation;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes allocated under `root` (0 when it cannot be read).
pub fn usage(root: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(root) else { return 0 };
    let dev = top.dev();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut total = top.blocks() * 512;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue; // A mount (a volume, /tmp): not the sandbox's.
            }
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// What a container over its disk quota ends with (Mesos's wording).
pub fn limitation(used: u64, limit: u64) -> Limitation {
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    Limitation {
        reason: Reason::ReasonContainerLimitationDisk,
        message: format!("Disk usage ({:.1}MB) exceeds quota ({:.1}MB)", mb(used), mb(limit)),
        resources: vec![Resource::scalar("disk", mb(limit))],
    }
}

/// The sandbox quota in bytes: the `disk` among these resources, persistent volumes aside.
pub fn quota(resources: &[Resource]) -> Option<u64> {
    let mb: f64 = resources
        .iter()
        .filter(|r| r.name == "disk" && r.persistence_id().is_none())
        .filter_map(|r| r.scalar.as_ref().map(|s| s.value))
        .sum();
    (mb > 0.0).then_some((mb * 1024.0 * 1024.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_and_hard_links_once() {
        let d = std::env::temp_dir().join(format!("agora-du-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let empty = usage(&d);
        std::fs::write(d.join("sub/a"), vec![1u8; 1 << 20]).unwrap();
        std::fs::hard_link(d.join("sub/a"), d.join("b")).unwrap();
        std::os::unix::fs::symlink("/usr", d.join("ln")).unwrap();
        let used = usage(&d);
        assert!(used >= empty + (1 << 20) && used < empty + (1 << 20) + 64 * 1024, "{used}");
        let _ = std::fs::remove_dir_all(&d);
        let l = limitation(3 << 20, 1 << 20);
        assert_eq!(l.reason, Reason::ReasonContainerLimitationDisk);
        assert!(l.message.contains("exceeds quota (1.0MB)"), "{}", l.message);
        assert_eq!(quota(&[Resource::scalar("disk", 2.0)]), Some(2 << 20));
        assert_eq!(quota(&[Resource::scalar("cpus", 2.0)]), None);
    }
}
