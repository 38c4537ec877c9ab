//! `run -- COMMAND`: start the command held before exec, so probes are
//! attached (filtered to its pid) before its first instruction runs.
use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("command '{0}' not found in PATH")]
    NotFound(String),
    #[error("command '{0}' is not executable")]
    NotExecutable(String),
    #[error("argument contains a NUL byte: {0:?}")]
    Nul(String),
    #[error("starting '{command}' failed: {reason}")]
    Spawn { command: String, reason: String },
}

/// A launched child, stopped before exec until [`Launched::release`].
pub struct Launched {
    pid: u32,
    go: libc::c_int,
    released: bool,
    status: Option<i32>,
}

/// The program `name` runs: a path, or the first executable of that name
/// in `$PATH`.
pub fn find_program(name: &str) -> Result<PathBuf, LaunchError> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return match (p.exists(), is_exec(&p)) {
            (false, _) => Err(LaunchError::NotFound(name.into())),
            (true, false) => Err(LaunchError::NotExecutable(name.into())),
            (true, true) => Ok(p),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_exec(p))
        .ok_or_else(|| LaunchError::NotFound(name.into()))
}

fn cstr(s: &[u8]) -> Result<CString, LaunchError> {
    CString::new(s).map_err(|_| LaunchError::Nul(String::from_utf8_lossy(s).into_owned()))
}

impl Launched {
    /// Forks; the child waits on a pipe, then execs `argv`. Call before any
    /// other thread exists (the child runs only async-signal-safe code).
    pub fn spawn(argv: &[String]) -> Result<Launched, LaunchError> {
        let program = find_program(&argv[0])?;
        let c_program = cstr(program.as_os_str().as_bytes())?;
        let c_args = argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
        c_argv.push(std::ptr::null());
        let spawn_err = |what: &str| LaunchError::Spawn {
            command: argv[0].clone(),
            reason: format!("{what}: {}", std::io::Error::last_os_error()),
        };
        let mut fds = [0; 2];
        // SAFETY: valid array of two fds.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(spawn_err("pipe"));
        }
        // SAFETY: the child only calls read, close, execv and _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(spawn_err("fork"));
        }
        if pid == 0 {
            // Child: drop its copy of the write end, then wait for the go
            // byte (EOF means the agent gave up or died: quit).
            unsafe { libc::close(fds[1]) };
            let mut byte = 0u8;
            let n = unsafe { libc::read(fds[0], (&mut byte as *mut u8).cast(), 1) };
            if n != 1 {
                unsafe { libc::_exit(127) };
            }
            unsafe {
                libc::execv(c_program.as_ptr(), c_argv.as_ptr());
                libc::_exit(127);
            }
        }
        // SAFETY: closing our copy of the read end.
        unsafe { libc::close(fds[0]) };
        Ok(Launched {
            pid: pid as u32,
            go: fds[1],
            released: false,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Lets the child exec.
    pub fn release(&mut self) {
        if !self.released {
            let byte = 1u8;
            // SAFETY: writing one byte to our pipe end.
            unsafe {
                libc::write(self.go, (&byte as *const u8).cast(), 1);
                libc::close(self.go);
            }
            self.released = true;
        }
    }

    /// The exit code (or 128+signal) once the child has ended; non-blocking.
    pub fn try_wait(&mut self) -> Option<i32> {
        if self.status.is_none() {
            let mut status = 0;
            // SAFETY: our own child.
            let r = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) };
            if r == self.pid as i32 {
                self.status = Some(if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                });
            }
        }
        self.status
    }

    /// Asks the child to end: SIGTERM if it runs; a held child exits unrun.
    pub fn request_stop(&mut self) {
        if !self.released {
            // Closing the pipe makes the held child exit without running.
            // SAFETY: closing our own pipe end once (released guards it).
            unsafe { libc::close(self.go) };
            self.released = true;
        } else if self.try_wait().is_none() {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        }
    }

    /// Ends the child if it is still running: SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Option<i32> {
        self.request_stop();
        let deadline = Instant::now() + grace;
        while self.try_wait().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.try_wait().is_none() {
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            let mut status = 0;
            unsafe { libc::waitpid(self.pid as i32, &mut status, 0) };
            self.status = Some(128 + libc::SIGKILL);
        }
        self.status
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_child_runs_only_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("touch {}; exit 3", marker.display()),
        ];
        let mut child = Launched::spawn(&argv).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!marker.exists());
        assert_eq!(child.try_wait(), None);
        child.release();
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(child.try_wait(), Some(3));
        assert!(marker.exists());
    }

    #[test]
    fn unreleased_child_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let argv = vec!["touch".to_string(), marker.display().to_string()];
        let mut child = Launched::spawn(&argv).unwrap();
        assert_eq!(child.terminate(Duration::from_secs(2)), Some(127));
        assert!(!marker.exists());
    }

    #[test]
    fn missing_command_is_reported() {
        let err = Launched::spawn(&["no-such-cmd-xyz".to_string()])
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "command 'no-such-cmd-xyz' not found in PATH"
        );
    }
}
