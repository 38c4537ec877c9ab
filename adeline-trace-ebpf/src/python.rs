//! Python stages: probes inside CPython's eval loop time the calls of the
//! Python functions that match a stage's patterns.
//!
//! `py_entry` runs where a frame starts (or resumes) executing, `py_exit`
//! where it stops (return, exception, yield). The cookie of each site is
//! its index in `PY_SITES`, which says how to find the frame there. An
//! entry reads the frame's code object; its match against the compiled
//! patterns is cached per code object (validated by the code object's
//! name and file pointers, so a new code object at a reused address is
//! matched again). A matching call is pushed on the thread's call stack
//! shared with the native stages (`THREADS`), keyed by its frame address,
//! and an exit closes the open call with the same key; exits that match
//! nothing are ignored. Generators and coroutines: each activation (first
//! start or resume to the next yield) is an open call; between them the
//! call lives in `PY_GENS` and its span covers first start to final
//! return, with the summed activations as its self time.
//!
//! The maps of this concern are declared here rather than in maps.rs.
use adeline_trace_common::{
    python::{
        PyCodeInfo, PyGenState, PyGlob, PyLayout, PyObjKey, PyPattern, PySite, CO_GENERATOR_LIKE,
        MAX_PY_PATTERNS, MAX_PY_SITES, PY_CODE_CACHE, PY_COUNTERS, PY_COUNTER_ENTRIES,
        PY_COUNTER_EXITS, PY_COUNTER_MATCHES, PY_COUNTER_READ_FAIL, PY_COUNTER_STAGE_ENTRIES,
        PY_FILE_MAX, PY_FRAME_CHAIN, PY_FRAME_MASK, PY_FRAME_RSI, PY_FRAME_TOP_DETACHED,
        PY_FRAME_TOP_POPPED, PY_GEN_MAX, PY_HASH_BASE, PY_QUAL_MAX, PY_ROLE_ENTRY_310,
        PY_ROLE_EXIT_310, PY_ROLE_POP, PY_ROLE_RETURN, PY_ROLE_UNWIND, PY_ROLE_YIELD,
    },
    OpenCall, SpanRecord, ThreadCalls, COUNTER_DEPTH_OVERFLOW, COUNTER_FILTERED_SHORT,
    COUNTER_RING_FULL, KIND_SPAN, MAX_DEPTH, NO_STAGE, OPEN_GENERATOR, OPEN_PYTHON,
    SPAN_FLAG_ERROR, SPAN_FLAG_GENERATOR,
};
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated as gen,
    },
    macros::{map, uprobe},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::ProbeContext,
    EbpfContext,
};

use crate::{
    maps::{bump, frame_stage, min_duration, pid_allowed, EVENTS, THREADS},
    stage::pop_call,
};

/// Number of compiled patterns in `PY_PATTERNS` (set at load time).
#[no_mangle]
static PY_NPATTERNS: u32 = 0;

/// What each probed site means (index = attach cookie).
#[map(name = "PY_SITES")]
static PY_SITES: Array<PySite> = Array::with_max_entries(MAX_PY_SITES, 0);

/// Compiled function patterns of the Python stages.
#[map(name = "PY_PATTERNS")]
static PY_PATTERNS: Array<PyPattern> = Array::with_max_entries(MAX_PY_PATTERNS, 0);

/// The window epoch (slot 0): bumped by the agent each time the probes are
/// attached again, so calls left open by an earlier window never pair.
#[map(name = "PY_EPOCH")]
static PY_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// Match result per code object.
#[map(name = "PY_CODES")]
static PY_CODES: LruHashMap<PyObjKey, PyCodeInfo> = LruHashMap::with_max_entries(PY_CODE_CACHE, 0);

/// Generator/coroutine calls in progress, by frame address.
#[map(name = "PY_GENS")]
static PY_GENS: LruHashMap<PyObjKey, PyGenState> = LruHashMap::with_max_entries(PY_GEN_MAX, 0);

/// Counters of the Python probes (`PY_COUNTER_*`).
#[map(name = "PY_COUNTERS")]
static PY_COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(PY_COUNTERS, 0);

/// Name buffers and their prefix hashes (too big for the BPF stack).
#[repr(C)]
pub struct Scratch {
    qual: [u8; PY_QUAL_MAX],
    file: [u8; PY_FILE_MAX],
    /// hq[i] = hash of qual[..i].
    hq: [u64; 2 * PY_QUAL_MAX],
    /// hf[i] = hash of file window[..i].
    hf: [u64; 2 * PY_FILE_MAX],
}

#[map(name = "PY_SCRATCH")]
static PY_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const POW_LEN: usize = 2 * PY_FILE_MAX;

const fn pow_table() -> [u64; POW_LEN] {
    let mut t = [0u64; POW_LEN];
    let mut p = 1u64;
    let mut i = 0;
    while i < POW_LEN {
        t[i] = p;
        p = p.wrapping_mul(PY_HASH_BASE);
        i += 1;
    }
    t
}

/// POW[n] = PY_HASH_BASE^n.
static POW: [u64; POW_LEN] = pow_table();

#[inline(always)]
fn count(counter: u32) {
    if let Some(p) = PY_COUNTERS_MAP.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the address.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
fn epoch() -> u64 {
    PY_EPOCH.get(0).copied().unwrap_or(0)
}

/// The thread state's current frame (the chain of `PyLayout`), starting
/// from `_PyRuntime` found relative to the probed address.
#[inline(always)]
fn chain_frame(ip: u64, site: &PySite) -> Option<u64> {
    let l = &site.layout;
    let runtime = (ip as i64).wrapping_add(site.runtime_delta) as u64;
    let tstate = if l.runtime_tstate != 0 {
        read_u64(runtime + l.runtime_tstate as u64)?
    } else {
        let interp = read_u64(runtime + l.runtime_interp_main as u64)?;
        read_u64(interp + l.interp_gil_holder as u64)?
    };
    if tstate == 0 {
        return None;
    }
    let mut frame = read_u64(tstate + l.tstate_frame as u64)?;
    if l.cframe_frame != 0 && frame != 0 {
        frame = read_u64(frame + l.cframe_frame as u64 - 1)?;
    }
    Some(frame)
}

#[uprobe]
pub fn py_entry(ctx: ProbeContext) -> u32 {
    let _ = try_entry(&ctx);
    0
}

#[uprobe]
pub fn py_exit(ctx: ProbeContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

#[inline(always)]
fn site_of(ctx: &ProbeContext) -> Option<&'static PySite> {
    // SAFETY: helper on the probe's own context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    PY_SITES.get(cookie)
}

fn try_entry(ctx: &ProbeContext) -> Option<()> {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !pid_allowed(tgid) {
        return None;
    }
    count(PY_COUNTER_ENTRIES);
    let site = site_of(ctx)?;
    let l = &site.layout;
    // SAFETY: ctx.regs points at the probe's pt_regs.
    let (ip, rsi) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rsi) };
    let frame = if site.frame_src == PY_FRAME_RSI {
        rsi
    } else {
        chain_frame(ip, site)?
    };
    if frame == 0 {
        return None;
    }
    let Some(code) = read_u64(frame + l.frame_code as u64) else {
        count(PY_COUNTER_READ_FAIL);
        return None;
    };
    let info = code_info(tgid, code, l)?;
    if info.stage == NO_STAGE {
        return None;
    }
    count(PY_COUNTER_STAGE_ENTRIES);
    let ep = epoch();
    let key = (frame & PY_FRAME_MASK) | (ep << 48);
    let calls = THREADS.current(true);
    if calls.is_null() {
        return None;
    }
    // SAFETY: task-local storage of the current thread: no other writer.
    let calls: &mut ThreadCalls = unsafe { &mut *calls };
    let depth = calls.depth as usize;
    if depth > MAX_DEPTH {
        return None;
    }
    // The same frame entered again while open (RESUME re-run after an
    // instrumentation change): keep the first entry.
    let top = &calls.calls[(depth.wrapping_sub(1)) & (MAX_DEPTH - 1)];
    if depth > 0 && top.flags & OPEN_PYTHON != 0 && top.key == key {
        return None;
    }
    if depth >= MAX_DEPTH {
        bump(COUNTER_DEPTH_OVERFLOW);
        return None;
    }
    let mut flags = OPEN_PYTHON;
    let mut call_start = now;
    if info.flags & CO_GENERATOR_LIKE != 0 {
        flags |= OPEN_GENERATOR;
        call_start = generator_start(tgid, frame, code, ep, now, site, info.stage)?;
    }
    calls.calls[depth] = OpenCall {
        stage: info.stage,
        flags,
        start_ns: now,
        child_ns: 0,
        key,
        orig: 0,
    };
    if info.stage == frame_stage() && calls.frame_level == 0 {
        calls.frame_level = depth as u32 + 1;
        calls.frame_ns = call_start;
    }
    calls.depth = depth as u32 + 1;
    Some(())
}

/// A generator/coroutine activation starts: the start of its call (now
/// for a new call, the first activation's start for a resume). None when
/// it resumes a call that started before tracing did.
#[inline(always)]
fn generator_start(
    tgid: u32,
    frame: u64,
    code: u64,
    ep: u64,
    now: u64,
    site: &PySite,
    stage: u32,
) -> Option<u64> {
    let l = &site.layout;
    let gkey = PyObjKey {
        tgid,
        _pad: 0,
        addr: frame,
    };
    // Whether this is a new call, a resume, or unknown (None).
    let fresh: Option<bool> = if site.role == PY_ROLE_ENTRY_310 {
        // SAFETY: checked user read.
        let lasti: i32 =
            unsafe { bpf_probe_read_user((frame + l.frame_instr as u64) as *const i32) }.ok()?;
        Some(lasti < 0)
    } else {
        // RESUME's oparg: 0 = start of the call, else after yield/await.
        // The instruction pointer may not be stored yet (then unknown).
        let ip = read_u64(frame + l.frame_instr as u64).unwrap_or(0);
        // SAFETY: checked user read.
        let word: u16 = if ip != 0 {
            unsafe { bpf_probe_read_user(ip as *const u16) }.unwrap_or(0)
        } else {
            0
        };
        let op = (word & 0xff) as u32;
        let ops = l.resume_ops;
        if op != 0
            && (op == ops & 0xff
                || op == (ops >> 8) & 0xff
                || op == (ops >> 16) & 0xff
                || op == (ops >> 24) & 0xff)
        {
            Some((word >> 8) & 3 == 0)
        } else {
            None
        }
    };
    if fresh != Some(true) {
        // SAFETY: value copied out at once.
        if let Some(g) = unsafe { PY_GENS.get(&gkey) } {
            if g.code == code && g.epoch == ep {
                return Some(g.start_ns);
            }
        }
        if fresh == Some(false) {
            // A resume of a call that started before tracing: skip it.
            return None;
        }
    }
    let state = PyGenState {
        stage,
        _pad: 0,
        code,
        epoch: ep,
        start_ns: now,
        active_ns: 0,
        child_ns: 0,
    };
    PY_GENS.insert(&gkey, &state, 0).ok()?;
    Some(now)
}

/// The cached match of a code object, matching it on a miss.
#[inline(always)]
fn code_info(tgid: u32, code: u64, l: &PyLayout) -> Option<PyCodeInfo> {
    let filename = read_u64(code + l.code_filename as u64)?;
    let qualname = read_u64(code + l.code_qualname as u64)?;
    let key = PyObjKey {
        tgid,
        _pad: 0,
        addr: code,
    };
    // SAFETY: value copied out at once.
    if let Some(c) = unsafe { PY_CODES.get(&key) } {
        if c.filename == filename && c.qualname == qualname {
            return Some(*c);
        }
    }
    count(PY_COUNTER_MATCHES);
    // SAFETY: checked user read.
    let flags: u32 =
        unsafe { bpf_probe_read_user((code + l.code_flags as u64) as *const u32) }.ok()?;
    let stage = match_names(qualname, filename, l).unwrap_or(NO_STAGE);
    let info = PyCodeInfo {
        stage,
        flags,
        filename,
        qualname,
    };
    let _ = PY_CODES.insert(&key, &info, 0);
    Some(info)
}

/// Reads a compact ASCII string's characters into `buf` (the last
/// `buf.len()` when longer): (bytes read, whole string read).
#[inline(always)]
fn read_ascii<const N: usize>(s: u64, l: &PyLayout, buf: &mut [u8; N]) -> Option<(usize, bool)> {
    let len = read_u64(s + 16)?;
    // SAFETY: checked user read.
    let state: u32 = unsafe { bpf_probe_read_user((s + 32) as *const u32) }.ok()?;
    // compact (bit 5) and ascii (bit 6)
    if state & 0x60 != 0x60 {
        return None;
    }
    let (skip, n, whole) = if len as usize > N {
        (len - N as u64, N, false)
    } else {
        (0, len as usize, true)
    };
    if n == 0 || n > N {
        return Some((0, whole));
    }
    let src = s + l.str_ascii_data as u64 + skip;
    // SAFETY: n <= N, the buffer's size; checked user read.
    let r = unsafe {
        gen::bpf_probe_read_user(
            buf.as_mut_ptr().cast(),
            n as u32,
            src as *const core::ffi::c_void,
        )
    };
    if r != 0 {
        return None;
    }
    Some((n, whole))
}

/// Prefix hashes h[0..=n] of `bytes[..n]`.
#[inline(always)]
fn prefix_hashes<const N: usize, const H: usize>(bytes: &[u8; N], n: usize, h: &mut [u64; H]) {
    // Every position, without an early exit: a loop that stops at a
    // data-dependent point multiplies the verifier's states.
    let _ = n;
    h[0] = 0;
    let mut acc = 0u64;
    for i in 0..N {
        acc = acc
            .wrapping_mul(PY_HASH_BASE)
            .wrapping_add(bytes[i] as u64 + 1);
        h[(i + 1) & (H - 1)] = acc;
    }
}

/// Hash of `s[i..i+len]` from its prefix hashes.
#[inline(always)]
fn sub_hash<const H: usize>(h: &[u64; H], i: usize, len: usize) -> u64 {
    let end = h[(i + len) & (H - 1)];
    let start = h[i & (H - 1)];
    end.wrapping_sub(start.wrapping_mul(POW[len & (POW_LEN - 1)]))
}

#[inline(always)]
fn glob_match<const H: usize>(
    g: &PyGlob,
    h: &[u64; H],
    n: usize,
    whole: bool,
    max: usize,
    with_mid: bool,
) -> bool {
    if g.any != 0 {
        return true;
    }
    let (pre, mid, suf) = (
        g.pre.len as usize & (H - 1),
        g.mid.len as usize & (H - 1),
        g.suf.len as usize & (H - 1),
    );
    if g.star == 0 {
        return whole && n == pre && sub_hash(h, 0, n) == g.pre.hash;
    }
    if n < pre + mid + suf || n > max {
        return false;
    }
    if pre > 0 && (!whole || sub_hash(h, 0, pre) != g.pre.hash) {
        return false;
    }
    if suf > 0 && sub_hash(h, n - suf, suf) != g.suf.hash {
        return false;
    }
    if !with_mid || mid == 0 {
        return true;
    }
    // Positions pre..=n-suf-mid, searched by a bpf_loop callback (in
    // the qualified name's hashes: file globs have no middle part).
    let mut ctx = MidCtx {
        pre: pre as u64,
        len: mid as u64,
        hash: g.mid.hash,
        found: 0,
    };
    let count = (n - suf - mid + 1 - pre) as u32;
    // SAFETY: callback and context as bpf_loop expects them.
    unsafe {
        gen::bpf_loop(
            count & (PY_QUAL_MAX as u32 * 2 - 1),
            find_mid as *mut core::ffi::c_void,
            (&raw mut ctx).cast(),
            0,
        )
    };
    ctx.found != 0
}

/// `bpf_loop` context of the middle-part search.
#[repr(C)]
struct MidCtx {
    pre: u64,
    len: u64,
    hash: u64,
    found: u64,
}

/// `bpf_loop` callback: whether the qualified name has the middle part at
/// position `pre + i`.
#[inline(never)]
extern "C" fn find_mid(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes the MidCtx given above.
    let c = unsafe { &mut *ctx.cast::<MidCtx>() };
    let Some(s) = PY_SCRATCH.get_ptr(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch filled by match_names.
    let s: &Scratch = unsafe { &*s };
    if sub_hash(&s.hq, (c.pre + i) as usize, c.len as usize) == c.hash {
        c.found = 1;
        return 1;
    }
    0
}

/// State of one pattern search (`bpf_loop` context, on the stack).
#[repr(C)]
struct MatchCtx {
    qual_len: u64,
    file_len: u64,
    file_whole: u64,
    npat: u64,
    stage: u32,
    _pad: u32,
}

/// `bpf_loop` callback: pattern `i` against the names in `PY_SCRATCH`;
/// returns 1 (stop) on a match or past the last pattern. A callback is
/// verified once, not once per iteration.
#[inline(never)]
extern "C" fn match_one(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes the MatchCtx given below.
    let c = unsafe { &mut *ctx.cast::<MatchCtx>() };
    if i >= c.npat {
        return 1;
    }
    let Some(p) = PY_PATTERNS.get(i as u32) else {
        return 1;
    };
    let Some(s) = PY_SCRATCH.get_ptr(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch filled by match_names.
    let s: &Scratch = unsafe { &*s };
    let qn = c.qual_len as usize;
    let fl = c.file_len as usize;
    if glob_match(&p.qual, &s.hq, qn, true, PY_QUAL_MAX, true)
        && glob_match(&p.file, &s.hf, fl, c.file_whole != 0, PY_FILE_MAX, false)
    {
        c.stage = p.stage;
        return 1;
    }
    0
}

/// The stage whose patterns match this qualified name and file name.
#[inline(never)]
fn match_names(qualname: u64, filename: u64, l: &PyLayout) -> Option<u32> {
    let s = PY_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by one program at a time on this CPU.
    let s: &mut Scratch = unsafe { &mut *s };
    let (qn, qwhole) = read_ascii(qualname, l, &mut s.qual)?;
    if !qwhole {
        return None;
    }
    prefix_hashes(&s.qual, qn, &mut s.hq);
    let (fn_, fwhole) = read_ascii(filename, l, &mut s.file).unwrap_or((0, false));
    prefix_hashes(&s.file, fn_, &mut s.hf);
    let mut ctx = MatchCtx {
        qual_len: qn as u64,
        file_len: fn_ as u64,
        file_whole: u64::from(fwhole),
        // SAFETY: read of a load-time constant.
        npat: u64::from(unsafe { core::ptr::read_volatile(&PY_NPATTERNS) }),
        stage: NO_STAGE,
        _pad: 0,
    };
    // SAFETY: callback and context as bpf_loop expects them.
    unsafe {
        gen::bpf_loop(
            MAX_PY_PATTERNS,
            match_one as *mut core::ffi::c_void,
            (&raw mut ctx).cast(),
            0,
        )
    };
    (ctx.stage != NO_STAGE).then_some(ctx.stage)
}

fn try_exit(ctx: &ProbeContext) -> Option<()> {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // Nothing open on this thread: not a stage's exit (the common case),
    // unless an exception ends a suspended generator thrown into.
    let calls = THREADS.current(false);
    if calls.is_null() {
        return unwound_generator(ctx, now, pid_tgid, 0);
    }
    // SAFETY: task-local storage of the current thread: no other writer.
    let calls: &mut ThreadCalls = unsafe { &mut *calls };
    let depth = calls.depth as usize;
    if depth == 0 || depth > MAX_DEPTH {
        return unwound_generator(ctx, now, pid_tgid, depth as u32);
    }
    if !pid_allowed(tgid) {
        return None;
    }
    count(PY_COUNTER_EXITS);
    let site = site_of(ctx)?;
    let l = &site.layout;
    // SAFETY: ctx.regs points at the probe's pt_regs.
    let (ip, rsi, rsp) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rsi, (*ctx.regs).rsp) };
    let top = calls.calls[(depth - 1) & (MAX_DEPTH - 1)];
    let frame = match site.frame_src {
        PY_FRAME_RSI => rsi,
        PY_FRAME_CHAIN => chain_frame(ip, site)?,
        PY_FRAME_TOP_DETACHED => {
            if top.flags & OPEN_PYTHON == 0 {
                return None;
            }
            let f = top.key & PY_FRAME_MASK;
            if read_u64(f + l.frame_previous as u64)? != 0 {
                return None;
            }
            f
        }
        PY_FRAME_TOP_POPPED => {
            if top.flags & OPEN_PYTHON == 0 {
                return None;
            }
            let f = top.key & PY_FRAME_MASK;
            let back = read_u64(f + l.frame_previous as u64)?;
            if back != chain_frame(ip, site)? {
                return None;
            }
            f
        }
        _ => return None,
    };
    let ep = epoch();
    let key = (frame & PY_FRAME_MASK) | (ep << 48);
    let mut found = MAX_DEPTH;
    for i in 0..MAX_DEPTH {
        if i >= depth {
            break;
        }
        let idx = (depth - 1 - i) & (MAX_DEPTH - 1);
        // Native calls share the stack; their key is a stack slot.
        if calls.calls[idx].flags & OPEN_PYTHON != 0 && calls.calls[idx].key == key {
            found = idx;
            break;
        }
    }
    if found >= MAX_DEPTH {
        return unwound_generator(ctx, now, pid_tgid, depth as u32);
    }
    let role = match site.role {
        PY_ROLE_POP => pop_role(site, ip, rsp),
        PY_ROLE_EXIT_310 => {
            // SAFETY: checked user read.
            let state: i8 =
                unsafe { bpf_probe_read_user((frame + l.frame_state as u64) as *const i8) }
                    .unwrap_or(0);
            match state {
                -1 => PY_ROLE_YIELD, // FRAME_SUSPENDED
                3 => PY_ROLE_UNWIND, // FRAME_RAISED
                _ => PY_ROLE_RETURN,
            }
        }
        r => r,
    };
    close(calls, found, now, role, pid_tgid, frame);
    Some(())
}

/// Whether the frame pop at `ip` was called from the exception path
/// (its return address, relative to `ip`, is one the agent found).
#[inline(always)]
fn pop_role(site: &PySite, ip: u64, rsp: u64) -> u32 {
    let ret = read_u64(rsp).unwrap_or(0);
    let delta = ret.wrapping_sub(ip) as i64;
    if delta != 0 && (delta == site.unwind_ret[0] || delta == site.unwind_ret[1]) {
        PY_ROLE_UNWIND
    } else {
        PY_ROLE_RETURN
    }
}

/// An exception exit of a frame with no open call: a suspended generator
/// or coroutine that `throw()`/`close()` ended without resuming it (no
/// RESUME runs). Its call, if traced, ends here with an error span.
#[inline(never)]
fn unwound_generator(ctx: &ProbeContext, now: u64, pid_tgid: u64, depth: u32) -> Option<()> {
    let tgid = (pid_tgid >> 32) as u32;
    let site = site_of(ctx)?;
    // SAFETY: ctx.regs points at the probe's pt_regs.
    let (ip, rsi, rsp) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rsi, (*ctx.regs).rsp) };
    let frame = match site.role {
        PY_ROLE_UNWIND if site.frame_src == PY_FRAME_CHAIN => chain_frame(ip, site)?,
        PY_ROLE_POP if pop_role(site, ip, rsp) == PY_ROLE_UNWIND => rsi,
        _ => return None,
    };
    if !pid_allowed(tgid) {
        return None;
    }
    let gkey = PyObjKey {
        tgid,
        _pad: 0,
        addr: frame,
    };
    // SAFETY: value copied out at once.
    let g = *unsafe { PY_GENS.get(&gkey) }?;
    let _ = PY_GENS.remove(&gkey);
    if g.epoch != epoch() {
        return None;
    }
    let total = now.wrapping_sub(g.start_ns);
    if total < min_duration() {
        bump(COUNTER_FILTERED_SHORT);
        return None;
    }
    match EVENTS.reserve::<SpanRecord>(0) {
        Some(mut entry) => {
            entry.write(SpanRecord {
                kind: KIND_SPAN,
                stage: g.stage,
                pid: tgid,
                tid: pid_tgid as u32,
                start_ns: g.start_ns,
                dur_ns: total,
                self_ns: g.active_ns.saturating_sub(g.child_ns),
                frame_ns: 0,
                depth: depth.min(MAX_DEPTH as u32),
                flags: SPAN_FLAG_GENERATOR | SPAN_FLAG_ERROR,
            });
            entry.submit(BPF_RB_NO_WAKEUP as u64);
        }
        None => bump(COUNTER_RING_FULL),
    }
    Some(())
}

/// Closes the open call at `found` (and drops the calls above it, left
/// without an exit); emits its span unless it only suspended.
#[inline(always)]
fn close(calls: &mut ThreadCalls, found: usize, now: u64, role: u32, pid_tgid: u64, frame: u64) {
    let found = found & (MAX_DEPTH - 1);
    let open = calls.calls[found];
    let dur_ns = now.wrapping_sub(open.start_ns);
    let frame_ns = pop_call(calls, found, dur_ns);
    let tgid = (pid_tgid >> 32) as u32;
    let (start_ns, total_ns, self_ns, mut flags) = if open.flags & OPEN_GENERATOR != 0 {
        let gkey = PyObjKey {
            tgid,
            _pad: 0,
            addr: frame,
        };
        let Some(g) = PY_GENS.get_ptr_mut(&gkey) else {
            return;
        };
        // SAFETY: map value pointer, valid until removed below.
        let g = unsafe { &mut *g };
        let active = g.active_ns.wrapping_add(dur_ns);
        let child = g.child_ns.wrapping_add(open.child_ns);
        if role == PY_ROLE_YIELD {
            g.active_ns = active;
            g.child_ns = child;
            return;
        }
        let start = g.start_ns;
        let _ = PY_GENS.remove(&gkey);
        (
            start,
            now.wrapping_sub(start),
            active.saturating_sub(child),
            SPAN_FLAG_GENERATOR,
        )
    } else {
        if role == PY_ROLE_YIELD {
            return;
        }
        (
            open.start_ns,
            dur_ns,
            dur_ns.saturating_sub(open.child_ns),
            0,
        )
    };
    if role == PY_ROLE_UNWIND {
        flags |= SPAN_FLAG_ERROR;
    }
    if total_ns < min_duration() {
        bump(COUNTER_FILTERED_SHORT);
        return;
    }
    match EVENTS.reserve::<SpanRecord>(0) {
        Some(mut entry) => {
            entry.write(SpanRecord {
                kind: KIND_SPAN,
                stage: open.stage,
                pid: tgid,
                tid: pid_tgid as u32,
                start_ns,
                dur_ns: total_ns,
                self_ns,
                frame_ns,
                depth: found as u32,
                flags,
            });
            entry.submit(BPF_RB_NO_WAKEUP as u64);
        }
        None => bump(COUNTER_RING_FULL),
    }
}
