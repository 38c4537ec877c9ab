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
mod tests {}
