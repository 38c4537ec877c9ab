//! The raw system calls this module needs and aya 0.14 does not expose:
//! `bpf(BPF_PROG_LOAD)` with an expected attach type, `bpf(BPF_LINK_CREATE)`
//! for uprobe-multi and perf-event links, and `perf_event_open(2)` on the
//! uprobe PMU with a reference counter (USDT semaphore) offset.
use std::{
    ffi::CStr,
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{
    bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type, perf_event_attr,
    BPF_F_UPROBE_MULTI_RETURN,
};

/// `bpf(cmd, attr)` returning a new file descriptor.
fn bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `attr` is a zero-initialised `bpf_attr` with the fields of
        // `cmd` set; the kernel reads at most `size_of::<bpf_attr>()` bytes of
        // it and every pointer in it refers to memory the caller keeps alive
        // for the duration of the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd as libc::c_long,
                attr as *mut bpf_attr,
                size_of::<bpf_attr>() as libc::c_uint,
            )
        };
        if ret >= 0 {
            // SAFETY: on success these commands return a new descriptor we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A program for `BPF_PROG_LOAD`.
pub struct ProgLoad<'a> {
    pub name: &'a str,
    pub prog_type: bpf_prog_type,
    pub expected_attach_type: Option<bpf_attach_type>,
    pub insns: &'a [bpf_insn],
    pub license: &'a CStr,
    /// The object's BTF and the program's function and line info (needed
    /// by a program with BPF-to-BPF calls or callbacks, e.g. `bpf_loop`).
    pub btf: Option<BtfInfo<'a>>,
}

/// The BTF a program is loaded with: the loaded BTF object, and the
/// program's `bpf_func_info` / `bpf_line_info` records.
pub struct BtfInfo<'a> {
    pub fd: BorrowedFd<'a>,
    pub func_info: &'a [u8],
    pub func_info_rec_size: u32,
    pub line_info: &'a [u8],
    pub line_info_rec_size: u32,
}

/// Loads raw BTF (`BPF_BTF_LOAD`).
pub fn btf_load(raw: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: bpf_attr is plain old data; all-zero is its documented default.
    let mut attr: bpf_attr = unsafe { zeroed() };
    // SAFETY: writing the fields of the BPF_BTF_LOAD member of the union.
    let u = unsafe { &mut attr.__bindgen_anon_7 };
    u.btf = raw.as_ptr() as u64;
    u.btf_size = raw.len() as u32;
    bpf_fd(bpf_cmd::BPF_BTF_LOAD, &mut attr)
}

/// A failed `BPF_PROG_LOAD`: the error and the end of the verifier log.
#[derive(Debug)]
pub struct LoadFailure {
    pub error: io::Error,
    pub log: String,
}

/// Loads a program. On failure, loads it again with the verifier log on and
/// returns the log's last lines with the error.
pub fn prog_load(p: &ProgLoad<'_>) -> Result<OwnedFd, LoadFailure> {
    match prog_load_with_log(p, None) {
        Ok(fd) => Ok(fd),
        Err(error) => {
            let mut buf = vec![0u8; 1 << 20];
            let log = match prog_load_with_log(p, Some(&mut buf)) {
                // Loaded the second time (a transient failure): keep it.
                Ok(fd) => return Ok(fd),
                Err(_) => {
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    let text = String::from_utf8_lossy(&buf[..end]);
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(5)..].join(" | ")
                }
            };
            Err(LoadFailure { error, log })
        }
    }
}

fn prog_load_with_log(p: &ProgLoad<'_>, log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    // SAFETY: bpf_attr is plain old data; all-zero is its documented default.
    let mut attr: bpf_attr = unsafe { zeroed() };
    // SAFETY: writing the fields of the BPF_PROG_LOAD member of the union.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = p.prog_type as u32;
    load.expected_attach_type = p.expected_attach_type.map_or(0, |t| t as u32);
    load.insns = p.insns.as_ptr() as u64;
    load.insn_cnt = p.insns.len() as u32;
    load.license = p.license.as_ptr() as u64;
    // The kernel keeps 15 bytes of the name plus its NUL; only [A-Za-z0-9_.].
    for (dst, src) in load.prog_name.iter_mut().zip(
        p.name
            .bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .take(15),
    ) {
        *dst = src as libc::c_char;
    }
    if let Some(btf) = &p.btf {
        load.prog_btf_fd = btf.fd.as_raw_fd() as u32;
        if let Some(n) = (btf.func_info.len() as u32).checked_div(btf.func_info_rec_size) {
            load.func_info = btf.func_info.as_ptr() as u64;
            load.func_info_cnt = n;
            load.func_info_rec_size = btf.func_info_rec_size;
        }
        if let Some(n) = (btf.line_info.len() as u32).checked_div(btf.line_info_rec_size) {
            load.line_info = btf.line_info.as_ptr() as u64;
            load.line_info_cnt = n;
            load.line_info_rec_size = btf.line_info_rec_size;
        }
    }
    if let Some(buf) = log {
        load.log_level = 1;
        load.log_buf = buf.as_mut_ptr() as u64;
        load.log_size = buf.len() as u32;
    }
    let mut tries = 0;
    loop {
        match bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
            // The verifier may ask to be retried (e.g. while it is busy).
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 5 => tries += 1,
            other => return other,
        }
    }
}

/// `BPF_LINK_CREATE` of a uprobe-multi link: one program at every offset of
/// `path`, each with its cookie and reference counter offset (all zero: no
/// semaphores), for `pid`'s process only when given.
pub struct MultiLink<'a> {
    pub path: &'a CStr,
    pub offsets: &'a [u64],
    pub cookies: &'a [u64],
    /// Empty, or one per offset.
    pub ref_ctr_offsets: &'a [u64],
    pub pid: Option<u32>,
    pub retprobe: bool,
}

pub fn link_create_uprobe_multi(prog: BorrowedFd<'_>, l: &MultiLink<'_>) -> io::Result<OwnedFd> {
    debug_assert_eq!(l.offsets.len(), l.cookies.len());
    debug_assert!(l.ref_ctr_offsets.is_empty() || l.ref_ctr_offsets.len() == l.offsets.len());
    // SAFETY: bpf_attr is plain old data; all-zero is its documented default.
    let mut attr: bpf_attr = unsafe { zeroed() };
    // SAFETY: writing the fields of the BPF_LINK_CREATE member of the union.
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    link.attach_type = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;
    // SAFETY: as above, the uprobe_multi member of the link_create union.
    let multi = unsafe { &mut link.__bindgen_anon_3.uprobe_multi };
    multi.path = l.path.as_ptr() as u64;
    multi.offsets = l.offsets.as_ptr() as u64;
    multi.cookies = l.cookies.as_ptr() as u64;
    if !l.ref_ctr_offsets.is_empty() {
        multi.ref_ctr_offsets = l.ref_ctr_offsets.as_ptr() as u64;
    }
    multi.cnt = l.offsets.len() as u32;
    multi.pid = l.pid.unwrap_or(0);
    if l.retprobe {
        multi.flags = BPF_F_UPROBE_MULTI_RETURN;
    }
    bpf_fd(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// `BPF_LINK_CREATE` of a perf-event link (kernel 5.15+ for the cookie).
pub fn link_create_perf_event(
    prog: BorrowedFd<'_>,
    event: BorrowedFd<'_>,
    cookie: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: bpf_attr is plain old data; all-zero is its documented default.
    let mut attr: bpf_attr = unsafe { zeroed() };
    // SAFETY: writing the fields of the BPF_LINK_CREATE member of the union.
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    link.__bindgen_anon_2.target_fd = event.as_raw_fd() as u32;
    link.attach_type = bpf_attach_type::BPF_PERF_EVENT as u32;
    link.__bindgen_anon_3.perf_event.bpf_cookie = cookie;
    bpf_fd(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// The uprobe PMU as sysfs describes it.
#[derive(Debug, Clone, Copy)]
pub struct UprobePmu {
    /// perf_event_attr.type
    pub pmu_type: u32,
    /// The config bit that makes a return probe.
    pub retprobe_bit: u32,
    /// Whether config:32-63 carries a reference counter offset (4.20+).
    pub ref_ctr: bool,
}

impl UprobePmu {
    pub fn read() -> io::Result<UprobePmu> {
        let dir = std::path::Path::new("/sys/bus/event_source/devices/uprobe");
        let read = |p: &str| std::fs::read_to_string(dir.join(p));
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let pmu_type = read("type")?
            .trim()
            .parse()
            .map_err(|_| bad("bad uprobe PMU type"))?;
        // "config:0"
        let retprobe_bit = read("format/retprobe")?
            .trim()
            .strip_prefix("config:")
            .and_then(|b| b.parse().ok())
            .ok_or_else(|| bad("bad uprobe retprobe format"))?;
        let ref_ctr = read("format/ref_ctr_offset").is_ok_and(|f| f.trim() == "config:32-63");
        Ok(UprobePmu {
            pmu_type,
            retprobe_bit,
            ref_ctr,
        })
    }
}

/// Opens a uprobe perf event at `offset` of `path` (the kernel raises the
/// semaphore at `ref_ctr_offset` while it exists, if not zero), for `pid`'s
/// process or every process.
pub fn perf_uprobe_open(
    pmu: &UprobePmu,
    path: &CStr,
    offset: u64,
    ref_ctr_offset: u64,
    retprobe: bool,
    pid: Option<u32>,
) -> io::Result<OwnedFd> {
    // SAFETY: perf_event_attr is plain old data; all-zero is its default.
    let mut attr: perf_event_attr = unsafe { zeroed() };
    attr.type_ = pmu.pmu_type;
    attr.size = size_of::<perf_event_attr>() as u32;
    attr.config = (ref_ctr_offset << 32) | (u64::from(retprobe) << pmu.retprobe_bit);
    attr.__bindgen_anon_1.sample_period = 1;
    attr.__bindgen_anon_2.wakeup_events = 1;
    attr.__bindgen_anon_3.uprobe_path = path.as_ptr() as u64;
    attr.__bindgen_anon_4.probe_offset = offset;
    // Every process: any one CPU (the program runs wherever the probe hits).
    let (pid, cpu) = match pid {
        Some(p) => (p as libc::pid_t, -1),
        None => (-1, 0),
    };
    loop {
        // SAFETY: `attr` is initialised and `path` outlives the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const perf_event_attr,
                pid,
                cpu,
                -1,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if ret >= 0 {
            // SAFETY: a new descriptor we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `ioctl(PERF_EVENT_IOC_ENABLE)`.
pub fn perf_enable(event: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a plain ioctl on a perf event descriptor we hold.
    let ret = unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// _IO('$', 0)
const PERF_EVENT_IOC_ENABLE: libc::Ioctl = 0x2400;
/// perf_event_open(2) flag: close the descriptor on exec.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
