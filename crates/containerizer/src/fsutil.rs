//! Crash-safe files: a record is written to a temporary file, fsynced, renamed over the
//! target and the directory fsynced, so a reader sees the old record or the new one, never
//! a torn one.
use std::io::Write as _;
use std::path::Path;

/// Atomically replaces `path` with `data`.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("path has no parent directory"))?;
    let name = path.file_name().ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Atomically writes a value as JSON.
pub fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    let data = serde_json::to_vec_pretty(v).map_err(std::io::Error::other)?;
    write_atomic(path, &data)
}

/// Reads a JSON record; `Ok(None)` when the file does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(d) => {
            serde_json::from_slice(&d).map(Some).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_replace() {
        let dir = std::env::temp_dir().join(format!("agora-fsutil-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("rec.json");
        assert_eq!(read_json::<u32>(&p).unwrap(), None);
        write_json(&p, &1u32).unwrap();
        write_json(&p, &2u32).unwrap();
        assert_eq!(read_json::<u32>(&p).unwrap(), Some(2));
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::write(&p, b"{torn").unwrap();
        assert!(read_json::<u32>(&p).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
