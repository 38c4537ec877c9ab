//! What procfs says about the processes running a file: which they are,
//! and when they started (for the `missed` gap of an `attach` record).
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// A file as the kernel knows it: device and inode (a replaced file has
/// another inode at the same path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// The file `path` names now, and when it was last changed or renamed
    /// (wall-clock ns: a deploy's rename sets it).
    pub fn of(path: &Path) -> std::io::Result<(FileId, u64)> {
        let m = fs::metadata(path)?;
        let changed = (m.ctime().max(0) as u64) * 1_000_000_000 + m.ctime_nsec().max(0) as u64;
        Ok((
            FileId {
                dev: m.dev(),
                ino: m.ino(),
            },
            changed,
        ))
    }

    /// The `dev` column of /proc/PID/maps: "major:minor" in hex.
    fn maps_dev(&self) -> String {
        format!(
            "{:02x}:{:02x}",
            libc::major(self.dev),
            libc::minor(self.dev)
        )
    }
}

/// `path` without a `/proc/PID/root` prefix: the path as the process
/// sees it (the host's path too when it shares the host's mounts).
pub fn in_namespace(path: &Path) -> PathBuf {
    let mut parts = path.components();
    let prefix: Vec<_> = parts.by_ref().take(4).collect();
    let is_root = prefix.len() == 4
        && prefix[1].as_os_str() == "proc"
        && prefix[2]
            .as_os_str()
            .to_str()
            .is_some_and(|p| p.parse::<u32>().is_ok())
        && prefix[3].as_os_str() == "root";
    match is_root {
        true => Path::new("/").join(parts.as_path()),
        false => path.to_path_buf(),
    }
}

/// Every process id in /proc.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn proc_path(pid: u32, what: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{what}"))
}

/// Whether `pid` runs `file` as its executable.
pub fn runs(pid: u32, file: FileId) -> bool {
    FileId::of(&proc_path(pid, "exe")).is_ok_and(|(id, _)| id == file)
}

/// Whether `pid` runs or maps `file` (an executable or a library).
pub fn maps(pid: u32, file: FileId) -> bool {
    if runs(pid, file) {
        return true;
    }
    let Ok(maps) = fs::read_to_string(proc_path(pid, "maps")) else {
        return false;
    };
    let dev = file.maps_dev();
    let ino = file.ino.to_string();
    maps.lines().any(|line| {
        let mut cols = line.split_ascii_whitespace().skip(3);
        cols.next() == Some(dev.as_str()) && cols.next() == Some(ino.as_str())
    })
}

/// The processes that map `file`, in pid order.
pub fn mapping(file: FileId) -> Vec<u32> {
    let mut pids: Vec<u32> = all_pids().into_iter().filter(|&p| maps(p, file)).collect();
    pids.sort_unstable();
    pids
}

/// When `pid` started, CLOCK_BOOTTIME ns (clock-tick resolution).
pub fn start_boot_ns(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(proc_path(pid, "stat")).ok()?;
    let (_, after_comm) = stat.rsplit_once(')')?;
    // Fields after the comm start at 3 (state); starttime is field 22.
    let ticks: u64 = after_comm.split_ascii_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * (1_000_000_000 / hz))
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_BOOTTIME now, ns.
pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// A wall-clock time as CLOCK_BOOTTIME ns.
pub fn wall_to_boot_ns(wall_ns: u64) -> u64 {
    let offset = clock_ns(libc::CLOCK_REALTIME).saturating_sub(boot_ns());
    wall_ns.saturating_sub(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_root_prefixes_are_dropped() {
        assert_eq!(
            in_namespace(Path::new("/proc/42/root/opt/app/prog")),
            Path::new("/opt/app/prog")
        );
        assert_eq!(
            in_namespace(Path::new("/opt/app/prog")),
            Path::new("/opt/app/prog")
        );
        assert_eq!(
            in_namespace(Path::new("/proc/self/root/x")),
            Path::new("/proc/self/root/x")
        );
    }

    #[test]
    fn this_process_runs_its_executable() {
        let me = std::process::id();
        let (exe, _) = FileId::of(Path::new("/proc/self/exe")).unwrap();
        assert!(runs(me, exe));
        assert!(maps(me, exe));
        assert!(mapping(exe).contains(&me));
        let started = start_boot_ns(me).unwrap();
        assert!(started <= boot_ns());
    }

    #[test]
    fn a_mapped_library_is_found_in_maps() {
        let me = std::process::id();
        let text = fs::read_to_string("/proc/self/maps").unwrap();
        let lib = text
            .lines()
            .filter_map(|l| l.split_ascii_whitespace().nth(5))
            .find(|p| p.contains("libc.so"))
            .expect("libc is mapped");
        let (id, _) = FileId::of(Path::new(lib)).unwrap();
        assert!(!runs(me, id));
        assert!(maps(me, id));
    }
}
