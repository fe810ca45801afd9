//! Finding the cgroup hierarchies in `/proc/self/mountinfo` (proc(5)).
//!
//! A line reads `36 35 98:0 /root /mnt/point rw,noatime master:1 - fstype source
//! super,options`: field 4 is the root of the mount inside its filesystem, field 5 the
//! mount point (octal-escaped), and after the `-` come the filesystem type and its
//! super-block options, which for a v1 `cgroup` mount list its controllers.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The v1 controllers this crate recognises in mount options.
const V1_CONTROLLERS: [&str; 14] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "blkio",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// The cgroup mounts found.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Mounts {
    /// v1 controller -> mount point (comounted controllers share one).
    pub(crate) v1: BTreeMap<String, PathBuf>,
    /// The cgroup2 mount point, if any.
    pub(crate) v2: Option<PathBuf>,
}

/// Parses mountinfo content. Mounts of the filesystem's root (`/`) win over bind mounts
/// of a subdirectory; among equals the first listed wins.
pub(crate) fn parse(content: &str) -> Mounts {
    let mut v1: BTreeMap<String, (PathBuf, bool)> = BTreeMap::new();
    let mut v2: Option<(PathBuf, bool)> = None;
    for line in content.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().skip(6).position(|f| *f == "-").map(|i| i + 6) else {
            continue;
        };
        let (Some(root), Some(mount_point), Some(fstype), Some(super_opts)) =
            (fields.get(3), fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
        else {
            continue;
        };
        let whole = *root == "/";
        let point = PathBuf::from(unescape(mount_point));
        match *fstype {
            "cgroup" => {
                for opt in super_opts.split(',') {
                    if !V1_CONTROLLERS.contains(&opt) {
                        continue;
                    }
                    let replace = match v1.get(opt) {
                        None => true,
                        Some((_, existing_whole)) => whole && !existing_whole,
                    };
                    if replace {
                        v1.insert(opt.to_owned(), (point.clone(), whole));
                    }
                }
            }
            "cgroup2" => {
                let replace = match &v2 {
                    None => true,
                    Some((_, existing_whole)) => whole && !existing_whole,
                };
                if replace {
                    v2 = Some((point, whole));
                }
            }
            _ => {}
        }
    }
    Mounts { v1: v1.into_iter().map(|(k, (p, _))| (k, p)).collect(), v2: v2.map(|(p, _)| p) }
}

/// Undoes the `\ooo` octal escapes mountinfo uses for space, tab, newline and backslash.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(digits) = bytes.get(i + 1..i + 4) {
                if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                    if let Ok(byte) = u8::try_from(value) {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_layout() {
        let m = parse(HYBRID);
        assert_eq!(m.v1["cpu"], PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(m.v1["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpuacct"));
        assert_eq!(m.v1["freezer"], PathBuf::from("/sys/fs/cgroup/freezer"));
        assert!(!m.v1.contains_key("name=systemd"));
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn comounted_and_optional_fields() {
        let m = parse(
            "25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
             26 24 0:23 / /sys/fs/cgroup/net_cls,net_prio rw shared:10 master:3 - cgroup cgroup rw,net_cls,net_prio\n",
        );
        assert_eq!(m.v1["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m.v1["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m.v1["net_prio"], PathBuf::from("/sys/fs/cgroup/net_cls,net_prio"));
        assert_eq!(m.v2, None);
    }

    #[test]
    fn pure_v2_prefers_whole_mount_and_unescapes() {
        let m = parse(
            "30 20 0:26 /sub /mnt/bind rw - cgroup2 cgroup2 rw\n\
             31 20 0:26 / /sys/fs/cgroup rw,nsdelegate shared:4 - cgroup2 cgroup2 rw,nsdelegate\n\
             32 20 0:26 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n",
        );
        assert!(m.v1.is_empty());
        assert_eq!(m.v2, Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(unescape("/mnt/with\\040space\\134x"), "/mnt/with space\\x");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn garbage_is_skipped() {
        assert_eq!(parse("nonsense\n\n1 2 3\n"), Mounts::default());
    }
}
