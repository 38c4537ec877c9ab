//! Real cgroups for the tests, named the way container runtimes name
//! theirs, under a mounted hierarchy (`/sys/fs/cgroup/unified` for v2 in
//! hybrid mode, `/sys/fs/cgroup/pids` or `/sys/fs/cgroup/systemd` for v1,
//! or `/sys/fs/cgroup` itself on a v2-only host).
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A cgroup made for a test; its directories (the ones it created) are
/// removed when dropped, after moving any process left back to the root.
pub struct TestCgroup {
    root: PathBuf,
    /// The cgroup's directory.
    pub dir: PathBuf,
    /// Its path inside the hierarchy (`/system.slice/docker-ID.scope`).
    pub path: String,
    created: Vec<PathBuf>,
}

impl TestCgroup {
    /// Creates `root/<path>` (and its missing parents).
    pub fn create(root: &Path, path: &str) -> TestCgroup {
        let dir = root.join(path.trim_start_matches('/'));
        let mut missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| *d != root && !d.exists())
            .map(Path::to_path_buf)
            .collect();
        missing.reverse();
        for d in &missing {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("creating cgroup {d:?}: {e}"));
        }
        TestCgroup {
            root: root.to_path_buf(),
            dir,
            path: path.to_string(),
            created: missing,
        }
    }

    /// Moves process `pid` (all its threads) into this cgroup.
    pub fn add(&self, pid: u32) {
        let procs = self.dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {procs:?}: {e}"));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Ok(left) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in left.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        for d in self.created.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Where cgroup hierarchies are mounted here: the v2 one (`unified` in
/// hybrid mode, the root on a v2-only host) and one v1 hierarchy (None on
/// a v2-only host).
pub fn hierarchies() -> (PathBuf, Option<PathBuf>) {
    let base = Path::new("/sys/fs/cgroup");
    let unified = base.join("unified");
    if unified.join("cgroup.procs").exists() {
        let v1 = ["pids", "systemd"]
            .iter()
            .map(|h| base.join(h))
            .find(|h| h.join("cgroup.procs").exists());
        (unified, v1)
    } else {
        (base.to_path_buf(), None)
    }
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix(t ^ u64::from(std::process::id()) << 32 ^ N.fetch_add(1, Ordering::Relaxed))
}

/// A fresh 64-hex container id.
pub fn container_id() -> String {
    let seed = unique();
    (0..4).map(|i| format!("{:016x}", mix(seed + i))).collect()
}

/// A fresh pod UID (8-4-4-4-12 hex digits).
pub fn pod_uid() -> String {
    let h = format!("{:016x}{:016x}", unique(), unique());
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
