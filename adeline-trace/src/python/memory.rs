//! Reading a live interpreter's memory through /proc/PID/mem.
use std::{fs::File, os::unix::fs::FileExt, path::Path};

/// A process's memory, read-only.
pub struct Mem {
    file: File,
}

impl Mem {
    pub fn open(pid: u32) -> std::io::Result<Mem> {
        Ok(Mem {
            file: File::open(format!("/proc/{pid}/mem"))?,
        })
    }

    pub fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, addr).ok()?;
        Some(buf)
    }

    pub fn u64(&self, addr: u64) -> Option<u64> {
        let b = self.bytes(addr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    pub fn i32(&self, addr: u64) -> Option<i32> {
        let b = self.bytes(addr, 4)?;
        Some(i32::from_le_bytes(b.try_into().ok()?))
    }

    /// A compact ASCII `str` object's text (None for other strings).
    pub fn ascii(&self, s: u64, data_off: u64) -> Option<String> {
        let len = self.u64(s + 16)?;
        let state = self.i32(s + 32)? as u32;
        if state & 0x60 != 0x60 || len > 4096 {
            return None;
        }
        let b = self.bytes(s + data_off, len as usize)?;
        String::from_utf8(b).ok()
    }
}

/// The load bias of `file` in `pid` (runtime address minus link-time
/// address): the start of its mapping at file offset 0, minus the first
/// segment's address (`first_vaddr`: 0 for a library, 0x400000 for a
/// classic executable). None when the process does not map it.
pub fn load_bias(pid: u32, file: &Path, first_vaddr: u64) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let want = std::fs::metadata(file).ok()?;
    use std::os::unix::fs::MetadataExt;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let range = f.next()?;
        let _perms = f.next()?;
        let offset = u64::from_str_radix(f.next()?, 16).ok()?;
        let _dev = f.next()?;
        let inode: u64 = f.next()?.parse().ok()?;
        if offset != 0 || inode != want.ino() {
            continue;
        }
        let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
        return Some(start.wrapping_sub(first_vaddr));
    }
    None
}
