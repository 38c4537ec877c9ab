//! Processes: liveness, executables, mapped files, and turning a user's
//! target (a path or a bare library/executable name) into a file to attach to.
//!
//! Paths inside a process's mount namespace are returned as
//! `/proc/PID/root/<path>`, which opens the same inode the process sees.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::TargetError;

/// Succeeds when `pid` names a live (non-zombie) process.
pub fn ensure_running(pid: u32) -> Result<(), TargetError> {
    let stat_path = proc_path(pid, "stat");
    let stat = match std::fs::read_to_string(&stat_path) {
        Ok(stat) => stat,
        Err(e) => return Err(proc_error(pid, stat_path, e)),
    };
    match process_state(&stat) {
        Some('Z' | 'X' | 'x') | None => Err(TargetError::PidNotRunning { pid }),
        Some(_) => Ok(()),
    }
}

/// The state letter of a `/proc/PID/stat` line (the field after `(comm)`).
fn process_state(stat: &str) -> Option<char> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    after_comm.trim_start().chars().next()
}

/// The executable of `pid`, as `/proc/PID/root/<path>` (or `/proc/PID/exe`
/// itself when the file was deleted or replaced since the process started).
pub fn exe_path(pid: u32) -> Result<PathBuf, TargetError> {
    let link = proc_path(pid, "exe");
    let target = std::fs::read_link(&link).map_err(|e| proc_error(pid, link.clone(), e))?;
    if target.to_string_lossy().ends_with(" (deleted)") {
        return Ok(link);
    }
    Ok(in_root(pid, &target))
}

/// The unique file-backed paths mapped by `pid` (as the process sees them),
/// in address order; pseudo mappings (`[heap]`, `[stack]`, anonymous) and
/// deleted files are left out.
pub fn mapped_files(pid: u32) -> Result<Vec<PathBuf>, TargetError> {
    let maps_path = proc_path(pid, "maps");
    let maps = std::fs::read_to_string(&maps_path).map_err(|e| proc_error(pid, maps_path, e))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for path in maps.lines().filter_map(mapped_path) {
        if !files.iter().any(|f| f.as_os_str() == path) {
            files.push(PathBuf::from(path));
        }
    }
    Ok(files)
}

/// The path column of one `/proc/PID/maps` line, if it names a live file.
fn mapped_path(line: &str) -> Option<&str> {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start().split_once(' ')?.1;
    }
    let path = rest.trim_start();
    (path.starts_with('/') && !path.ends_with(" (deleted)")).then_some(path)
}

/// Resolve a user's target to a file to attach to.
///
/// * A target containing `/` is a path. With `pids`, an absolute path is
///   first looked up inside each process's mount namespace
///   (`/proc/PID/root/<path>`); otherwise the host path is used. It must exist.
/// * A bare name (`detector`, `libdetector.so`, `c`) is searched in the files
///   mapped by each pid, then in the linker cache (`ldconfig -p`), then in
///   `$PATH`. A file matches when its name equals the target or starts with
///   `lib<name>.so` / `<name>.so`.
pub fn resolve_target(target: &str, pids: &[u32]) -> Result<PathBuf, TargetError> {
    if target.contains('/') {
        resolve_path(target, pids)
    } else {
        resolve_name(target, pids)
    }
}

fn resolve_path(target: &str, pids: &[u32]) -> Result<PathBuf, TargetError> {
    let path = Path::new(target);
    if path.is_absolute() {
        if let Some(found) = pids
            .iter()
            .map(|&pid| in_root(pid, path))
            .find(|p| p.exists())
        {
            return Ok(found);
        }
    }
    if path.exists() {
        Ok(path.to_path_buf())
    } else {
        Err(TargetError::NotFound {
            path: path.to_path_buf(),
        })
    }
}

fn resolve_name(name: &str, pids: &[u32]) -> Result<PathBuf, TargetError> {
    let mut searched: Vec<String> = Vec::new();
    for &pid in pids {
        let files = mapped_files(pid)?;
        if let Some(found) = best_match(name, files.iter().map(PathBuf::as_path)) {
            return Ok(in_root(pid, found));
        }
        searched.push(format!("the files mapped by pid {pid}"));
    }
    match ldconfig_cache() {
        Some(cache) => {
            let found = best_match(name, cache.iter().map(PathBuf::as_path));
            if let Some(found) = found.filter(|p| p.exists()) {
                return Ok(found.to_path_buf());
            }
            searched.push("the linker cache (ldconfig -p)".to_string());
        }
        None => searched.push("no linker cache (ldconfig -p failed)".to_string()),
    }
    if let Some(found) = search_path_env(name) {
        return Ok(found);
    }
    searched.push("the directories in $PATH".to_string());
    Err(TargetError::LibraryNotFound {
        name: name.to_string(),
        searched: searched.join(", "),
    })
}

/// How well a file name matches a bare target name: 0 = equal, 1 = starts
/// with `lib<name>.so` or `<name>.so` (followed by nothing or a `.`).
fn match_rank(name: &str, file_name: &str) -> Option<u8> {
    if file_name == name {
        return Some(0);
    }
    let is_prefix = |prefix: &str| {
        file_name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    };
    (is_prefix(&format!("lib{name}.so")) || is_prefix(&format!("{name}.so"))).then_some(1)
}

/// The best-ranked path whose file name matches `name` (first one on ties).
fn best_match<'p>(name: &str, paths: impl Iterator<Item = &'p Path>) -> Option<&'p Path> {
    paths
        .filter_map(|p| {
            let file_name = p.file_name()?.to_str()?;
            Some((match_rank(name, file_name)?, p))
        })
        .min_by_key(|&(rank, _)| rank)
        .map(|(_, p)| p)
}

/// Library paths from `ldconfig -p` for this machine's architecture, in
/// cache order; `None` when ldconfig cannot be run.
fn ldconfig_cache() -> Option<Vec<PathBuf>> {
    let output = ["/sbin/ldconfig", "ldconfig"]
        .iter()
        .find_map(|cmd| Command::new(cmd).arg("-p").output().ok())
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&output.stdout);
    Some(text.lines().filter_map(ldconfig_entry).collect())
}

/// The path of one `ldconfig -p` line such as
/// `libc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6`, if it is
/// for this architecture. The path is used rather than the soname so that
/// matching works on what will be opened.
fn ldconfig_entry(line: &str) -> Option<PathBuf> {
    let (left, path) = line.split_once(" => ")?;
    let (_, flags) = left.trim().split_once(" (")?;
    let wanted = if cfg!(target_arch = "x86_64") {
        Some("x86-64")
    } else if cfg!(target_arch = "aarch64") {
        Some("AArch64")
    } else {
        None
    };
    if wanted.is_some_and(|w| !flags.contains(w)) {
        return None;
    }
    Some(PathBuf::from(path.trim()))
}

/// `dir/name` for the first directory of `$PATH` holding an executable `name`.
fn search_path_env(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path_var = std::env::var_os("PATH")?;
    std::env::split_paths(&path_var)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn proc_path(pid: u32, entry: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{entry}"))
}

/// `path` as seen from inside `pid`'s mount namespace.
fn in_root(pid: u32, path: &Path) -> PathBuf {
    let relative = path.strip_prefix("/").unwrap_or(path);
    proc_path(pid, "root").join(relative)
}

/// A failed read of a `/proc/PID/...` entry: the process is gone, or the
/// entry is unreadable (permissions, kernel thread without an executable).
fn proc_error(pid: u32, path: PathBuf, error: std::io::Error) -> TargetError {
    if pid == 0 || !proc_path(pid, "").exists() {
        TargetError::PidNotRunning { pid }
    } else {
        TargetError::Io { path, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    /// A `sleep` child that is killed and reaped when dropped.
    struct Sleeper(Child);

    impl Sleeper {
        fn spawn(secs: &str) -> Sleeper {
            let child = Command::new("sleep")
                .arg(secs)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep");
            let sleeper = Sleeper(child);
            // Spawn returns once exec has begun; the kernel maps the ELF and
            // ld.so maps libc a moment later. Wait for libc to be mapped.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let maps = mapped_files(sleeper.pid()).unwrap_or_default();
                if maps
                    .iter()
                    .any(|m| m.to_string_lossy().contains("/libc.so"))
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            sleeper
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A pid that cannot exist (above the kernel's pid_max limit).
    const NO_SUCH_PID: u32 = u32::MAX - 1;

    fn me() -> u32 {
        std::process::id()
    }

    #[test]
    fn running_and_missing_processes() {
        ensure_running(me()).unwrap();
        let child = Sleeper::spawn("30");
        ensure_running(child.pid()).unwrap();
        for pid in [NO_SUCH_PID, 0] {
            let err = ensure_running(pid).unwrap_err();
            assert!(matches!(err, TargetError::PidNotRunning { pid: p } if p == pid));
        }
        assert!(ensure_running(NO_SUCH_PID)
            .unwrap_err()
            .to_string()
            .starts_with(&format!("process {NO_SUCH_PID} is not running")));
    }

    #[test]
    fn zombie_is_not_running() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ensure_running(pid).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stat = std::fs::read_to_string(proc_path(pid, "stat")).unwrap();
        assert_eq!(process_state(&stat), Some('Z'));
        assert!(matches!(
            ensure_running(pid),
            Err(TargetError::PidNotRunning { .. })
        ));
        child.wait().unwrap();
        assert!(matches!(
            ensure_running(pid),
            Err(TargetError::PidNotRunning { .. })
        ));
    }

    #[test]
    fn stat_state_parsing() {
        assert_eq!(process_state("42 (a) b) S 1 2 3"), Some('S'));
        assert_eq!(process_state("42 (zombie) Z 1"), Some('Z'));
        assert_eq!(process_state("garbage"), None);
        assert_eq!(process_state("42 (x)"), None);
    }

    #[test]
    fn exe_and_mapped_files() {
        let child = Sleeper::spawn("30");
        let pid = child.pid();
        let exe = exe_path(pid).unwrap();
        assert!(
            exe.starts_with(format!("/proc/{pid}/root/")),
            "{}",
            exe.display()
        );
        assert_eq!(exe.file_name().unwrap(), "sleep");
        assert!(exe.exists());

        let files = mapped_files(pid).unwrap();
        assert!(files.iter().all(|f| f.is_absolute()));
        assert!(
            files.iter().any(|f| f.file_name().unwrap() == "sleep"),
            "{files:?}"
        );
        let unique: std::collections::HashSet<_> = files.iter().collect();
        assert_eq!(unique.len(), files.len());

        let mine = mapped_files(me()).unwrap();
        let current = std::env::current_exe().unwrap();
        assert!(
            mine.contains(&current),
            "{} not in {mine:?}",
            current.display()
        );

        assert!(matches!(
            exe_path(NO_SUCH_PID),
            Err(TargetError::PidNotRunning { .. })
        ));
        assert!(matches!(
            mapped_files(NO_SUCH_PID),
            Err(TargetError::PidNotRunning { .. })
        ));
    }

    #[test]
    fn maps_line_parsing() {
        let lines = [
            (
                "7f5c6f5d1000-7f5c6f5d3000 r--p 001c7000 08:04 21238613      /usr/lib/libc.so.6",
                Some("/usr/lib/libc.so.6"),
            ),
            ("7f5c6f5d3000-7f5c6f5d8000 rw-p 00000000 00:00 0", None),
            (
                "7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]",
                None,
            ),
            ("55d0-55d1 rw-p 00000000 00:00 0   [heap]", None),
            (
                "7f00-7f01 r-xp 00000000 08:04 12  /opt/my app/lib x.so",
                Some("/opt/my app/lib x.so"),
            ),
            (
                "7f00-7f01 r-xp 00000000 08:04 12  /tmp/gone.so (deleted)",
                None,
            ),
            (
                "7f00-7f01 rw-s 00000000 00:01 3   /memfd:buf (deleted)",
                None,
            ),
            ("", None),
            ("garbage", None),
        ];
        for (line, expected) in lines {
            assert_eq!(mapped_path(line), expected, "{line}");
        }
    }

    #[test]
    fn name_matching_rules() {
        assert_eq!(match_rank("c", "libc.so.6"), Some(1));
        assert_eq!(match_rank("c", "libcrypto.so.3"), None);
        assert_eq!(match_rank("c", "libc.so"), Some(1));
        assert_eq!(match_rank("detector", "libdetector.so"), Some(1));
        assert_eq!(match_rank("libdetector.so", "libdetector.so"), Some(0));
        assert_eq!(match_rank("libdetector", "libdetector.so.1"), Some(1));
        assert_eq!(match_rank("sleep", "sleep"), Some(0));
        assert_eq!(match_rank("python3.11", "libpython3.11.so.1.0"), Some(1));
        assert_eq!(match_rank("c", "libc.sox"), None);

        let paths = [
            Path::new("/usr/lib/libpython3.11.so.1.0"),
            Path::new("/usr/bin/python3.11"),
        ];
        assert_eq!(best_match("python3.11", paths.into_iter()), Some(paths[1]));

        let entry =
            "\tlibc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libc.so.6";
        assert_eq!(
            ldconfig_entry(entry),
            Some(PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"))
        );
        assert_eq!(
            ldconfig_entry("\tlibc.so.6 (libc6) => /lib32/libc.so.6"),
            None
        );
        assert_eq!(
            ldconfig_entry("526 libs found in cache `/etc/ld.so.cache'"),
            None
        );
    }

    #[test]
    fn bare_names_resolve_through_maps_ldconfig_and_path() {
        let child = Sleeper::spawn("30");
        let pid = child.pid();

        let libc = resolve_target("c", &[me()]).unwrap();
        assert!(
            libc.starts_with(format!("/proc/{}/root/", me())),
            "{}",
            libc.display()
        );
        assert!(libc
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("libc.so"));
        assert!(libc.exists());

        let sleep = resolve_target("sleep", &[pid]).unwrap();
        assert_eq!(sleep, exe_path(pid).unwrap());

        let cached = resolve_target("c", &[]).unwrap();
        assert!(!cached.starts_with("/proc"), "{}", cached.display());
        assert!(cached
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("libc.so"));

        let on_path = resolve_target("sleep", &[]).unwrap();
        assert_eq!(on_path.file_name().unwrap(), "sleep");
        assert!(on_path.is_absolute());

        let err = resolve_target("definitely_not_a_library_xyz", &[pid]).unwrap_err();
        let TargetError::LibraryNotFound { name, searched } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(name, "definitely_not_a_library_xyz");
        assert!(
            searched.contains(&format!("pid {pid}"))
                && searched.contains("ldconfig")
                && searched.contains("$PATH")
        );
        assert!(!err.to_string().contains('\n'));

        assert!(matches!(
            resolve_target("c", &[NO_SUCH_PID]),
            Err(TargetError::PidNotRunning { .. })
        ));
    }

    #[test]
    fn paths_resolve_in_the_process_mount_namespace() {
        let child = Sleeper::spawn("30");
        let pid = child.pid();
        let host = std::fs::canonicalize("/usr/bin/sleep").unwrap();
        let host = host.to_str().unwrap();

        let inside = resolve_target(host, &[pid]).unwrap();
        assert_eq!(inside, PathBuf::from(format!("/proc/{pid}/root{host}")));
        assert_eq!(resolve_target(host, &[]).unwrap(), PathBuf::from(host));
        // A pid that is gone: fall back to the host path.
        assert_eq!(
            resolve_target(host, &[NO_SUCH_PID]).unwrap(),
            PathBuf::from(host)
        );

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope/bin");
        let err = resolve_target(missing.to_str().unwrap(), &[pid]).unwrap_err();
        assert!(matches!(err, TargetError::NotFound { path } if path == missing));
    }
}
