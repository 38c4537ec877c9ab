//! `--follow`: processes that start running a followed executable join the
//! traced processes (the kernel pid filter), so a pipeline that exits and
//! starts again (a new pid, a supervisor's restart, a new container) is
//! traced again within one check ([`super::FOLLOW_EVERY`]).
//!
//! Followed executables: the stage target files that are a process's
//! executable (by path, as the process sees it), and each `-p` process's
//! or the launched command's program, when also started with the same
//! arguments (so `python app.py` follows `python app.py`, not every
//! Python process).
use std::{collections::HashSet, fs, path::PathBuf};

use super::procs::{self, FileId};
use crate::{
    launch::find_program,
    probes::Probes,
    sinks::{Attach, AttachReason, Missed},
};

/// One followed executable.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exe {
    /// The path as a process sees it (`/proc/PID/exe`'s link).
    path: PathBuf,
    /// Its arguments after argv[0] must also match (NUL-separated).
    args: Option<Vec<u8>>,
}

pub struct Restarts {
    exes: Vec<Exe>,
    /// Pids already looked at (the processes alive at the last check).
    known: HashSet<u32>,
}

fn exe_link(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// argv[1..] of `pid`, NUL-separated.
fn args(pid: u32) -> Option<Vec<u8>> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = cmdline.iter().position(|&b| b == 0)?;
    Some(cmdline[first + 1..].to_vec())
}

impl Restarts {
    /// Follows the executables of `pids` and of the launched `command`
    /// (with their arguments) and the `targets` files (any arguments).
    /// Processes alive now are not new.
    pub fn new(pids: &[u32], command: &[String], targets: &[PathBuf]) -> Restarts {
        let mut exes: Vec<Exe> = targets
            .iter()
            .map(|t| Exe {
                path: procs::in_namespace(t),
                args: None,
            })
            .collect();
        for &pid in pids {
            if let Some(path) = exe_link(pid) {
                let exe = Exe {
                    path,
                    args: args(pid),
                };
                if !exes.contains(&exe) {
                    exes.push(exe);
                }
            }
        }
        if let Some(program) = command
            .first()
            .and_then(|c| find_program(c).ok())
            .and_then(|p| p.canonicalize().ok())
        {
            let mut args = Vec::new();
            for a in &command[1..] {
                args.extend_from_slice(a.as_bytes());
                args.push(0);
            }
            exes.push(Exe {
                path: program,
                args: Some(args),
            });
        }
        Restarts {
            exes,
            known: procs::all_pids().into_iter().collect(),
        }
    }

    fn followed(&self, pid: u32) -> Option<&Exe> {
        let path = exe_link(pid)?;
        let mut args_of = None;
        self.exes.iter().find(|e| {
            e.path == path
                && match &e.args {
                    None => true,
                    Some(a) => args_of.get_or_insert_with(|| args(pid)).as_ref() == Some(a),
                }
        })
    }

    /// New processes running a followed executable join the traced ones.
    pub fn poll(&mut self, probes: &mut Probes) -> Vec<Attach> {
        let alive: HashSet<u32> = procs::all_pids().into_iter().collect();
        let mut out = Vec::new();
        for &pid in alive.difference(&self.known) {
            let Some(exe) = self.followed(pid) else {
                continue;
            };
            if probes.follows(pid) || probes.follow_pid(pid).is_err() {
                continue;
            }
            let joined = procs::boot_ns();
            let gap_ms = procs::start_boot_ns(pid)
                .map_or(0, |start| joined.saturating_sub(start) / 1_000_000);
            let inode =
                FileId::of(&PathBuf::from(format!("/proc/{pid}/exe"))).map_or(0, |(f, _)| f.ino);
            out.push(Attach {
                ts_ns: 0,
                reason: AttachReason::Restart,
                target: exe.path.display().to_string(),
                inode,
                previous_inode: None,
                pids: vec![pid],
                pids_total: 1,
                probes: Vec::new(),
                missed: vec![Missed { pid, gap_ms }],
            });
        }
        self.known = alive;
        out
    }
}
