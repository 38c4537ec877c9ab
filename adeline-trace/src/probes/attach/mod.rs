//! Attaches one BPF program to many uprobe sites of one file, and detaches
//! them quickly.
//!
//! - **uprobe-multi** (kernel 6.6+): one `BPF_LINK_CREATE`
//!   (`BPF_TRACE_UPROBE_MULTI`) per (program, file, pid scope) carries every
//!   offset with its cookie and USDT semaphore offset; closing it removes all
//!   of them with one wait for the kernel's grace periods. The program must
//!   be loaded with that expected attach type: [`MultiLoader`].
//! - **perf-event** (any kernel with attach cookies, 5.15+): one uprobe perf
//!   event plus one BPF link per site, semaphore in `config[63:32]`. The
//!   kernel removes such probes one at a time (event_mutex is held across
//!   each removal's grace-period wait: ~85 ms each on 6.18), so
//!   [`LinkSet`] closes every BPF link first (the programs stop at once),
//!   then the perf events from many threads (which helps only on kernels
//!   that do not serialize them), and says on stderr that it is waiting.
//!
//! [`AttachMode::detect`] picks the first the kernel supports, once.
//! `bpf_get_attach_cookie` returns the per-site cookie under both: the
//! kernel picks the helper's implementation from the program's attach type.
//!
//! API: [`ProgramLoader`] loads a program of an aya-loaded object for a
//! mode; [`LoadedUprobe::attach`] (or [`attach`] with any program fd) takes
//! a path, [`UprobeSpec`]s (offset, cookie, ref_ctr_offset), an optional
//! pid and gives an [`UprobeLink`]; dropping it, or the [`LinkSet`] holding
//! it, detaches.
mod load;
mod sys;

use std::{
    ffi::CString,
    fmt, io,
    mem::zeroed,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use aya::{
    programs::{ProbeKind, ProgramError, UProbe},
    Ebpf,
};
use aya_obj::generated::{bpf_attach_type, bpf_insn, bpf_prog_type};
use thiserror::Error;

pub use load::MultiLoader;

/// Entry (uprobe) or return (uretprobe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Entry,
    Return,
}

/// How probes are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// One uprobe-multi link per program, file and pid scope (6.6+).
    Multi,
    /// One perf event and BPF link per site.
    Perf,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Multi => "uprobe-multi",
            AttachMode::Perf => "perf-event",
        })
    }
}

impl AttachMode {
    /// uprobe-multi when the kernel has it, else perf-event. Probed once
    /// per process (a one-instruction program and a link to `/`, which a
    /// kernel with uprobe-multi refuses with EBADF: not a regular file).
    pub fn detect() -> AttachMode {
        static MODE: OnceLock<AttachMode> = OnceLock::new();
        *MODE.get_or_init(|| match probe_multi() {
            true => AttachMode::Multi,
            false => AttachMode::Perf,
        })
    }
}

fn probe_multi() -> bool {
    // r0 = 0; exit
    // SAFETY: bpf_insn is plain old data; zero registers and immediates.
    let mut insns: [bpf_insn; 2] = unsafe { zeroed() };
    insns[0].code = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    insns[1].code = 0x95; // BPF_JMP | BPF_EXIT
    let Ok(prog) = sys::prog_load(&sys::ProgLoad {
        name: "uprobe_multi_probe",
        prog_type: bpf_prog_type::BPF_PROG_TYPE_KPROBE,
        expected_attach_type: Some(bpf_attach_type::BPF_TRACE_UPROBE_MULTI),
        insns: &insns,
        license: c"GPL",
        btf: None,
    }) else {
        return false;
    };
    let res = sys::link_create_uprobe_multi(
        prog.as_fd(),
        &sys::MultiLink {
            path: c"/",
            offsets: &[0],
            cookies: &[0],
            ref_ctr_offsets: &[],
            pid: None,
            retprobe: false,
        },
    );
    match res {
        Err(e) => e.raw_os_error() == Some(libc::EBADF),
        // Cannot happen ("/" is a directory); a link is a link.
        Ok(_) => true,
    }
}

/// Loads the uprobe programs of an aya-loaded object for one attach mode.
pub struct ProgramLoader {
    mode: AttachMode,
    multi: Option<MultiLoader>,
}

impl ProgramLoader {
    /// `object` is the bytes `ebpf` was loaded from (see [`MultiLoader::new`]).
    pub fn new(mode: AttachMode, object: &[u8], ebpf: &Ebpf) -> Result<ProgramLoader, AttachError> {
        let multi = match mode {
            AttachMode::Multi => Some(MultiLoader::new(object, ebpf)?),
            AttachMode::Perf => None,
        };
        Ok(ProgramLoader { mode, multi })
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Loads uprobe program `name`: by [`MultiLoader`] for uprobe-multi, by
    /// aya (`UProbe::load`, which stays the owner) for perf events.
    pub fn load(&self, ebpf: &mut Ebpf, name: &str) -> Result<LoadedUprobe, AttachError> {
        let (fd, direction) = match &self.multi {
            Some(multi) => multi.load(name)?,
            None => {
                let err = |e: &dyn std::error::Error| AttachError::Load {
                    program: name.to_string(),
                    reason: crate::format::error_chain(e),
                };
                let prog: &mut UProbe = ebpf
                    .program_mut(name)
                    .ok_or_else(|| AttachError::Load {
                        program: name.to_string(),
                        reason: "no such program in the object".into(),
                    })?
                    .try_into()
                    .map_err(|e: ProgramError| err(&e))?;
                prog.load().map_err(|e| err(&e))?;
                let direction = match prog.kind() {
                    ProbeKind::Entry => Direction::Entry,
                    ProbeKind::Return => Direction::Return,
                };
                let fd = prog
                    .fd()
                    .map_err(|e| err(&e))?
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| err(&e))?;
                (fd, direction)
            }
        };
        Ok(LoadedUprobe {
            fd,
            direction,
            mode: self.mode,
        })
    }
}

/// A uprobe program loaded for one attach mode.
pub struct LoadedUprobe {
    fd: OwnedFd,
    direction: Direction,
    mode: AttachMode,
}

impl LoadedUprobe {
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// See [`attach`].
    pub fn attach(
        &self,
        path: &Path,
        sites: &[UprobeSpec],
        pid: Option<u32>,
    ) -> Result<UprobeLink, AttachError> {
        attach(self.mode, self.fd.as_fd(), path, sites, pid, self.direction)
    }
}

/// One site: a file offset, the cookie the program reads, and the file
/// offset of its USDT semaphore (0: none). The kernel raises the semaphore
/// in every traced process while the probe is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UprobeSpec {
    pub offset: u64,
    pub cookie: u64,
    pub ref_ctr_offset: u64,
}

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("loading BPF program {program} for uprobe-multi failed: {reason}")]
    Load { program: String, reason: String },
    #[error("{mode} attach of {probes} probe(s) in {} failed: {}", path.display(), errno_hint(source))]
    Link {
        mode: AttachMode,
        path: PathBuf,
        probes: usize,
        source: io::Error,
    },
    #[error("uprobe at offset {offset:#x} of {} failed: {}", path.display(), errno_hint(source))]
    PerfEvent {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },
    #[error("the kernel's uprobe PMU cannot be used ({0}): is /sys mounted?")]
    Pmu(io::Error),
    #[error("this kernel's perf uprobes take no semaphore (ref_ctr_offset needs Linux 4.20+)")]
    NoRefCtr,
    #[error("{} contains a NUL byte", path.display())]
    BadPath { path: PathBuf },
}

fn errno_hint(e: &io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::ESRCH) => "; the process has exited",
        Some(libc::ENOENT) => "; the file is gone",
        Some(libc::EINVAL) => {
            "; an offset is outside the file or two semaphores differ for one offset"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => "; run as root (CAP_BPF and CAP_PERFMON)",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "; too many open files (raise `ulimit -n`)",
        _ => "",
    };
    format!("{e}{hint}")
}

/// Items grouped by the file they attach to, files in first-seen order and
/// items in their order: one link per group (and pid scope).
pub fn group_by_path<'a, T>(
    items: impl IntoIterator<Item = &'a T>,
    path_of: impl Fn(&'a T) -> &'a Path,
) -> Vec<(&'a Path, Vec<&'a T>)> {
    let mut groups: Vec<(&Path, Vec<&T>)> = Vec::new();
    for item in items {
        let path = path_of(item);
        match groups.iter_mut().find(|(p, _)| *p == path) {
            Some((_, g)) => g.push(item),
            None => groups.push((path, vec![item])),
        }
    }
    groups
}

/// Largest count the kernel accepts in one uprobe-multi link
/// (MAX_UPROBE_MULTI_CNT).
const MAX_MULTI: usize = 1 << 20;

/// Attaches `prog` at every site of `path` the way `mode` says, for `pid`'s
/// process only or (None) every process that runs the file. `prog` must
/// have been loaded for that mode: by [`MultiLoader`] for
/// [`AttachMode::Multi`], with no attach type (aya's `UProbe::load`) for
/// [`AttachMode::Perf`]. On error nothing stays attached.
pub fn attach(
    mode: AttachMode,
    prog: BorrowedFd<'_>,
    path: &Path,
    sites: &[UprobeSpec],
    pid: Option<u32>,
    direction: Direction,
) -> Result<UprobeLink, AttachError> {
    match mode {
        AttachMode::Multi => attach_multi(prog, path, sites, pid, direction),
        AttachMode::Perf => attach_perf(prog, path, sites, pid, direction),
    }
}

fn c_path(path: &Path) -> Result<CString, AttachError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| AttachError::BadPath {
        path: path.to_path_buf(),
    })
}

/// One uprobe-multi link (one per million sites).
pub fn attach_multi(
    prog: BorrowedFd<'_>,
    path: &Path,
    sites: &[UprobeSpec],
    pid: Option<u32>,
    direction: Direction,
) -> Result<UprobeLink, AttachError> {
    let cpath = c_path(path)?;
    let mut link = UprobeLink {
        mode: AttachMode::Multi,
        probes: 0,
        links: Vec::new(),
        events: Vec::new(),
    };
    for chunk in sites.chunks(MAX_MULTI) {
        let offsets: Vec<u64> = chunk.iter().map(|s| s.offset).collect();
        let cookies: Vec<u64> = chunk.iter().map(|s| s.cookie).collect();
        let ref_ctr_offsets: Vec<u64> = match chunk.iter().any(|s| s.ref_ctr_offset != 0) {
            true => chunk.iter().map(|s| s.ref_ctr_offset).collect(),
            false => Vec::new(),
        };
        let fd = sys::link_create_uprobe_multi(
            prog,
            &sys::MultiLink {
                path: &cpath,
                offsets: &offsets,
                cookies: &cookies,
                ref_ctr_offsets: &ref_ctr_offsets,
                pid,
                retprobe: direction == Direction::Return,
            },
        )
        .map_err(|source| AttachError::Link {
            mode: AttachMode::Multi,
            path: path.to_path_buf(),
            probes: chunk.len(),
            source,
        })?;
        link.links.push(fd);
        link.probes += chunk.len();
    }
    Ok(link)
}

/// One perf event and one BPF link per site.
pub fn attach_perf(
    prog: BorrowedFd<'_>,
    path: &Path,
    sites: &[UprobeSpec],
    pid: Option<u32>,
    direction: Direction,
) -> Result<UprobeLink, AttachError> {
    static PMU: OnceLock<Result<sys::UprobePmu, String>> = OnceLock::new();
    let pmu = PMU
        .get_or_init(|| sys::UprobePmu::read().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| AttachError::Pmu(io::Error::other(e.clone())))?;
    if !pmu.ref_ctr && sites.iter().any(|s| s.ref_ctr_offset != 0) {
        return Err(AttachError::NoRefCtr);
    }
    let cpath = c_path(path)?;
    let mut link = UprobeLink {
        mode: AttachMode::Perf,
        probes: 0,
        links: Vec::with_capacity(sites.len()),
        events: Vec::with_capacity(sites.len()),
    };
    let retprobe = direction == Direction::Return;
    for s in sites {
        let perf_err = |source| AttachError::PerfEvent {
            path: path.to_path_buf(),
            offset: s.offset,
            source,
        };
        let event = sys::perf_uprobe_open(pmu, &cpath, s.offset, s.ref_ctr_offset, retprobe, pid)
            .map_err(perf_err)?;
        let bpf_link =
            sys::link_create_perf_event(prog, event.as_fd(), s.cookie).map_err(|source| {
                AttachError::Link {
                    mode: AttachMode::Perf,
                    path: path.to_path_buf(),
                    probes: 1,
                    source,
                }
            })?;
        sys::perf_enable(event.as_fd()).map_err(perf_err)?;
        link.links.push(bpf_link);
        link.events.push(event);
        link.probes += 1;
    }
    Ok(link)
}

/// Attached probes; dropping it detaches them (see [`LinkSet`]).
pub struct UprobeLink {
    mode: AttachMode,
    probes: usize,
    /// BPF links: one uprobe-multi link, or one per perf event.
    links: Vec<OwnedFd>,
    /// The perf events of the perf-event path.
    events: Vec<OwnedFd>,
}

impl UprobeLink {
    /// Number of probe sites attached.
    pub fn probes(&self) -> usize {
        self.probes
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }
}

impl Drop for UprobeLink {
    fn drop(&mut self) {
        close_all(
            std::mem::take(&mut self.links),
            std::mem::take(&mut self.events),
        );
    }
}

/// What [`LinkSet::detach`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Detached {
    /// Probe sites detached.
    pub probes: usize,
    /// Until no program ran any more (every BPF link closed).
    pub unhooked: Duration,
    /// Until every probe was gone from the traced processes.
    pub elapsed: Duration,
}

/// Every link of a run: dropping the set (or [`LinkSet::detach`]) closes
/// all their descriptors together.
#[derive(Default)]
pub struct LinkSet {
    links: Vec<UprobeLink>,
}

impl LinkSet {
    pub fn push(&mut self, link: UprobeLink) {
        self.links.push(link);
    }

    /// Number of probe sites attached.
    pub fn probes(&self) -> usize {
        self.links.iter().map(|l| l.probes).sum()
    }

    /// Detaches everything now; how many probes and how long it took.
    pub fn detach(&mut self) -> Detached {
        let probes = self.probes();
        let mut links = Vec::new();
        let mut events = Vec::new();
        for l in &mut self.links {
            links.append(&mut l.links);
            events.append(&mut l.events);
        }
        self.links.clear();
        let (unhooked, elapsed) = close_all(links, events);
        Detached {
            probes,
            unhooked,
            elapsed,
        }
    }
}

impl Drop for LinkSet {
    fn drop(&mut self) {
        self.detach();
    }
}

/// At most this many threads close descriptors at once.
const CLOSE_THREADS: usize = 64;

/// Beyond this many perf events, say on stderr that removing them is slow.
const SLOW_EVENTS: usize = 50;

/// Closes the BPF links (the programs stop running), then the perf events
/// (the breakpoints go). Closing a uprobe link or perf event waits for RCU
/// grace periods (~100 ms each here); many threads close at once so that
/// waits which the kernel does not serialize overlap. Kernel 6.18 still
/// serializes perf-event uprobe removal (event_mutex is held across the
/// wait): hence uprobe-multi. Returns the time until the links were closed
/// and until everything was.
fn close_all(links: Vec<OwnedFd>, events: Vec<OwnedFd>) -> (Duration, Duration) {
    let start = Instant::now();
    close_parallel(links);
    let unhooked = start.elapsed();
    if events.len() > SLOW_EVENTS {
        eprintln!(
            "adeline-trace: removing {} perf-event uprobes (the programs are detached; this kernel \
             has no uprobe-multi links, and each removal waits for the kernel)",
            events.len()
        );
    }
    close_parallel(events);
    (unhooked, start.elapsed())
}

fn close_parallel(fds: Vec<OwnedFd>) {
    if fds.len() <= 1 {
        drop(fds);
        return;
    }
    let threads = fds.len().min(CLOSE_THREADS);
    let mut shares: Vec<Vec<OwnedFd>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, fd) in fds.into_iter().enumerate() {
        shares[i % threads].push(fd);
    }
    std::thread::scope(|scope| {
        for share in shares {
            // When no thread can be started the closure, and with it the
            // share, is dropped here: closed inline.
            let _ = std::thread::Builder::new()
                .name("detach".into())
                .stack_size(64 * 1024)
                .spawn_scoped(scope, move || drop(share));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_file_in_first_seen_order() {
        let items = [("/a", 1), ("/b", 2), ("/a", 3), ("/c", 4), ("/b", 5)];
        let groups = group_by_path(&items, |(p, _)| Path::new(*p));
        let flat: Vec<(&Path, Vec<i32>)> = groups
            .into_iter()
            .map(|(p, g)| (p, g.iter().map(|(_, n)| *n).collect()))
            .collect();
        assert_eq!(
            flat,
            [
                (Path::new("/a"), vec![1, 3]),
                (Path::new("/b"), vec![2, 5]),
                (Path::new("/c"), vec![4]),
            ]
        );
    }

    #[test]
    fn errors_name_the_file_and_say_what_to_do() {
        let e = AttachError::Link {
            mode: AttachMode::Multi,
            path: "/opt/app/pipeline".into(),
            probes: 12,
            source: io::Error::from_raw_os_error(libc::ESRCH),
        };
        assert_eq!(
            e.to_string(),
            "uprobe-multi attach of 12 probe(s) in /opt/app/pipeline failed: No such process (os error 3); the process has exited"
        );
        assert_eq!(AttachMode::Perf.to_string(), "perf-event");
    }
}
