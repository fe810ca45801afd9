//! Building (possibly malicious) layer tarballs byte by byte.
#![allow(dead_code)]

use std::io::Write;

pub struct LayerBuilder {
    b: tar::Builder<Vec<u8>>,
}

fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    // Write the name bytes directly: the tar crate's set_path refuses `..`, and we want
    // to be able to build exactly what an attacker would.
    let name = &mut h.as_old_mut().name;
    name.fill(0);
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        LayerBuilder { b: tar::Builder::new(Vec::new()) }
    }
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = header(path, tar::EntryType::Directory, 0, mode);
        h.set_cksum();
        self.b.append(&h, &[][..]).expect("append");
        self
    }
    pub fn file(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        let mut h = header(path, tar::EntryType::Regular, data.len() as u64, mode);
        h.set_cksum();
        self.b.append(&h, data).expect("append");
        self
    }
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(path, tar::EntryType::Symlink, 0, 0o777);
        let ln = &mut h.as_old_mut().linkname;
        ln.fill(0);
        ln[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.b.append(&h, &[][..]).expect("append");
        self
    }
    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(path, tar::EntryType::Link, 0, 0o644);
        let ln = &mut h.as_old_mut().linkname;
        ln.fill(0);
        ln[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.b.append(&h, &[][..]).expect("append");
        self
    }
    pub fn device(mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> Self {
        let mut h = header(path, kind, 0, 0o666);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        h.set_cksum();
        self.b.append(&h, &[][..]).expect("append");
        self
    }
    pub fn tar(self) -> Vec<u8> {
        self.b.into_inner().expect("finish")
    }
    pub fn gzip(self) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&self.tar()).expect("gzip");
        e.finish().expect("gzip")
    }
}
