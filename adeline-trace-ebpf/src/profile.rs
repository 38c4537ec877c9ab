//! The profiler: on-CPU samples from a `perf_event` (cpu-clock) program and
//! off-CPU intervals from the `sched_switch` raw tracepoint, for the traced
//! processes (the pid filter; without one, the threads that have entered a
//! traced stage). Each record carries the user stack (frame-pointer walk,
//! with whether it reached the outermost frame), the kernel stack and the
//! innermost open stage of the thread, read from its task storage
//! (`THREADS`, written by the stage probes).
//!
//! A return address a stage's uretprobe replaced (the kernel's trampoline)
//! is put back: the open call whose return-address slot the walk reads
//! holds the original (`OpenCall::orig`, recorded at entry while the
//! profiler runs). In a CPython process the agent knows (`PROFILE_PY`),
//! the thread's own Python frames follow: its thread state from the
//! interpreter's pthread key (so threads that do not hold the GIL are
//! walked too), then the frame chain, one code object address per frame.
//!
//! Off-CPU without reading any task_struct field: every `sched_switch`
//! notes, per CPU, when the incoming thread starts running. When a traced
//! thread leaves the CPU, its entry in `OFF_CPU` keeps the time; at its
//! next switch-out the CPU's note says when it came back, which closes the
//! interval (its weight is the whole time it was off: blocked, then waiting
//! for a CPU). The thread's own `sched_info.run_delay` (the kernel's total
//! of its waits for a CPU, read at both switch-outs) tells how much of it
//! was a wait for a CPU after the wake-up: the rest was blocked.
//!
//! Off-CPU intervals are sampled: the stacks are taken (the costly part)
//! for an interval with probability `off_cpu_probability` of the thread's
//! recent average interval, about the share of a sampling period it
//! covers, and a recorded interval's times are divided by that probability
//! (an unbiased estimate of the total: the probability is drawn before the
//! interval's length is known, from the thread's past ones). A thread
//! blocked for a period or more is recorded every time.
use adeline_trace_common::{
    profile::{
        off_cpu_probability, off_cpu_weight, sample_bytes, PyProc, SampleBuf, SampleHeader,
        FRAME_SLOTS, KIND_SAMPLE, MAX_FRAMES, MAX_KERNEL_FRAMES, MAX_PY_FRAMES, MAX_USER_FRAMES,
        OFF_CPU_PI_ONE, PCOUNTERS as N_PCOUNTERS, PCOUNTER_OFF_CPU, PCOUNTER_OFF_CPU_SEEN,
        PCOUNTER_OFF_CPU_SHORT, PCOUNTER_PY_NO_TSTATE, PCOUNTER_RING_FULL, PCOUNTER_SAMPLES,
        PY_CODE_MASK, PY_CSTACK_ENTRY, PY_ENTRY_CSTACK_FRAME, PY_ENTRY_EVERY_FRAME, PY_ENTRY_FLAG,
        PY_INSTR_MAX, PY_INSTR_SHIFT, PY_LAST_OF_EVAL, PY_OWNED_BY_CSTACK, SAMPLE_OFF_CPU,
        SAMPLE_ON_CPU, SAMPLE_PREEMPTED, SAMPLE_USER_COMPLETE, SAMPLE_WOKEN,
    },
    ThreadCalls, MAX_DEPTH, NO_STAGE, OPEN_PYTHON,
};
use aya_ebpf::{
    bindings::{pt_regs, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_prandom_u32, bpf_get_stack,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs,
    },
    macros::{map, perf_event, raw_tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{PerfEventContext, RawTracePointContext},
    EbpfContext,
};

use crate::{
    maps::{pid_allowed, pid_filter_on, EVENTS, THREADS},
    stage::current_stage,
};

/// The cpu-clock period in ns (set by the agent: 1e9 / HZ).
#[no_mangle]
static PROFILE_PERIOD_NS: u64 = 10_101_010;

/// Off-CPU intervals shorter than this are counted, not sent.
#[no_mangle]
static OFF_CPU_MIN_NS: u64 = 0;

/// Non-zero when `sched_switch` has its 4th argument, `prev_state`
/// (Linux 5.18+): 0 (TASK_RUNNING) there means the thread left the CPU
/// runnable. Older kernels only tell kernel preemption (`preempt`).
#[no_mangle]
static SWITCH_HAS_STATE: u32 = 0;

/// Offset of `thread.fsbase` in `task_struct` (the agent reads it from
/// the kernel's BTF); 0: unknown, no Python frames.
#[no_mangle]
static TASK_FSBASE_OFF: u64 = 0;

/// Offset of `sched_info.run_delay` (ns the thread waited for a CPU, in
/// total) in `task_struct` (BTF); 0: unknown, an interval's blocked time
/// then runs to the switch-in.
#[no_mangle]
static TASK_RUN_DELAY_OFF: u64 = 0;

/// CPython processes whose Python frames are walked, by tgid.
#[map(name = "PROFILE_PY")]
static PROFILE_PY: HashMap<u32, PyProc> = HashMap::with_max_entries(1024, 0);

/// Threads whose off-CPU state is kept at once (least recently used go).
const MAX_OFF_CPU_THREADS: u32 = 4096;

/// No off-CPU interval open (`OffCpu::open`).
const OPEN_NONE: u32 = 0;
/// An interval open, not sampled: only its start is kept.
const OPEN_UNSAMPLED: u32 = 1;
/// An interval open with its stacks in `OffCpu::sample`.
const OPEN_SAMPLED: u32 = 2;

/// A traced thread's off-CPU state (`OFF_CPU`, kernel only).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OffCpu {
    /// `OPEN_*`.
    open: u32,
    /// The open sampled interval's probability (1/`OFF_CPU_PI_ONE`).
    pi: u32,
    /// When the open interval began.
    start_ns: u64,
    /// The thread's `run_delay` when the open interval began.
    run_delay: u64,
    /// Moving average of the thread's intervals (ns; 0: none yet).
    avg_ns: u64,
    /// The open sampled interval's record: header and stacks.
    sample: SampleBuf,
}

/// Scratch space for building one sample (per CPU: programs do not nest
/// on one CPU for these hooks; a nested one would only garble a sample),
/// and the first `OFF_CPU` entry of a thread.
#[map(name = "PROFILE_SCRATCH")]
static SCRATCH: PerCpuArray<OffCpu> = PerCpuArray::with_max_entries(1, 0);

/// When the thread now running on each CPU was switched in.
#[map(name = "RUN_START")]
static RUN_START: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per traced thread (tid): the off-CPU interval in progress and, when
/// it is sampled, the stacks at the moment it began.
#[map(name = "OFF_CPU")]
static OFF_CPU: LruHashMap<u32, OffCpu> = LruHashMap::with_max_entries(MAX_OFF_CPU_THREADS, 0);

/// The profiler's per-CPU counters, indexed by `PCOUNTER_*`.
#[map(name = "PROFILE_COUNTERS")]
static PCOUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_PCOUNTERS, 0);

#[inline(always)]
fn pbump(counter: u32) {
    if let Some(p) = PCOUNTERS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Whether the current thread (of `tgid`) is profiled: its process passes
/// the pid filter or, without one, it has entered a traced stage.
#[inline(always)]
fn profiled(tgid: u32) -> bool {
    if pid_filter_on() {
        return pid_allowed(tgid);
    }
    !THREADS.current(false).is_null()
}

/// The user-mode registers of the current thread: the interrupted ones
/// when it was in user mode, else those saved at kernel entry.
#[inline(always)]
fn user_regs(interrupted: Option<&pt_regs>) -> Option<(u64, u64)> {
    if let Some(r) = interrupted {
        if r.cs & 3 == 3 {
            return Some((r.rip, r.rbp));
        }
    }
    // SAFETY: the helper takes the current task (a BTF pointer) and returns
    // its saved user registers; read with a checked kernel read.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf().cast()) } as *const pt_regs;
    if regs.is_null() {
        return None;
    }
    let r = unsafe { bpf_probe_read_kernel(regs) }.ok()?;
    if r.rip == 0 {
        return None; // a kernel thread
    }
    Some((r.rip, r.rbp))
}

/// Walks the user frame-pointer chain into the start of `buf.frames`;
/// sets `SAMPLE_USER_COMPLETE` when it ends at a zero frame pointer (the
/// thread's outermost frame) rather than at an unreadable or implausible one.
/// A return address read from the slot of an open traced call is that
/// call's recorded original (a uretprobe put its trampoline there).
#[inline(always)]
fn walk_user(buf: &mut SampleBuf, ip: u64, bp: u64) {
    buf.frames[0] = ip;
    let calls = THREADS.current(false);
    let calls: Option<&ThreadCalls> = if calls.is_null() {
        None
    } else {
        // SAFETY: task-local storage of the current thread, read only.
        Some(unsafe { &*calls })
    };
    // The innermost open call not yet passed (slots grow toward the root).
    let mut ci: usize = match calls {
        Some(c) if (c.depth as usize) <= MAX_DEPTH => c.depth as usize,
        _ => 0,
    };
    let mut n = 1usize;
    let mut fp = bp;
    let mut complete = false;
    for _ in 1..MAX_USER_FRAMES {
        if fp == 0 {
            complete = true;
            break;
        }
        if fp & 7 != 0 {
            break;
        }
        // SAFETY: a checked read of user memory of the current task.
        let Ok(frame) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            break;
        };
        let (next, mut ret) = (frame[0], frame[1]);
        if ret == 0 {
            complete = next == 0;
            break;
        }
        if let Some(c) = calls {
            ret = original_return(c, &mut ci, fp + 8, ret);
        }
        if n < MAX_USER_FRAMES {
            buf.frames[n] = ret;
            n += 1;
        }
        // The stack grows down: a caller's frame is above its callee's.
        if next != 0 && next <= fp {
            break;
        }
        fp = next;
    }
    buf.header.n_user = n as u32;
    if complete {
        buf.header.flags |= SAMPLE_USER_COMPLETE;
    }
}

/// The return address of the frame whose return-address slot is `slot`:
/// `ret`, or the original an open native call at that slot recorded.
/// `ci` (1 + index of the innermost call not passed yet) moves toward the
/// root past calls whose slot is below this one (a few per frame).
#[inline(always)]
fn original_return(calls: &ThreadCalls, ci: &mut usize, slot: u64, ret: u64) -> u64 {
    for _ in 0..4 {
        let i = *ci;
        if i == 0 || i > MAX_DEPTH {
            return ret;
        }
        let call = &calls.calls[(i - 1) & (MAX_DEPTH - 1)];
        if call.flags & OPEN_PYTHON != 0 || call.key < slot {
            *ci = i - 1;
            continue;
        }
        if call.key == slot {
            *ci = i - 1;
            if call.orig != 0 {
                return call.orig;
            }
        }
        return ret;
    }
    ret
}

#[inline(always)]
fn read_user_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the address.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The Python frames of the current thread, after the user and kernel
/// frames: code object addresses, innermost first, the outermost frame of
/// each eval-loop call marked `PY_LAST_OF_EVAL` (3.10, 3.11), or followed
/// by the call's own entry frame marked `PY_CSTACK_ENTRY` (3.12+).
#[inline(always)]
fn walk_python(buf: &mut SampleBuf, tgid: u32) {
    let Some(p) = (unsafe { PROFILE_PY.get(&tgid) }) else {
        return;
    };
    // SAFETY: read of a load-time constant.
    let fs_off = unsafe { core::ptr::read_volatile(&TASK_FSBASE_OFF) };
    if fs_off == 0 {
        return;
    }
    let Some(tstate) = thread_state(p, fs_off) else {
        pbump(PCOUNTER_PY_NO_TSTATE);
        return;
    };
    let Some(mut frame) = read_user_u64(tstate + p.tstate_frame as u64) else {
        return;
    };
    if p.cframe_frame != 0 && frame != 0 {
        let Some(f) = read_user_u64(frame + p.cframe_frame as u64 - 1) else {
            return;
        };
        frame = f;
    }
    let base = (buf.header.n_user + buf.header.n_kernel) as usize;
    let mut n = 0usize;
    // Every path through the loop writes one slot (the verifier then
    // prunes the paths: a walk of 64 frames stays cheap to verify).
    for _ in 0..MAX_PY_FRAMES {
        if frame == 0 {
            break;
        }
        // SAFETY: a checked read of user memory.
        let byte =
            unsafe { bpf_probe_read_user((frame + p.entry_off as u64) as *const u8) }.unwrap_or(0);
        let mark = match p.entry_kind {
            PY_ENTRY_EVERY_FRAME => PY_LAST_OF_EVAL,
            PY_ENTRY_FLAG if byte != 0 => PY_LAST_OF_EVAL,
            PY_ENTRY_CSTACK_FRAME if byte == PY_OWNED_BY_CSTACK => PY_CSTACK_ENTRY,
            _ => 0,
        };
        let Some(code) = read_user_u64(frame + p.frame_code as u64) else {
            break;
        };
        let instr = instr_index(p, frame, code);
        buf.frames[(base + n) & (FRAME_SLOTS - 1)] =
            (code & PY_CODE_MASK) | (instr << PY_INSTR_SHIFT) | mark;
        n += 1;
        match read_user_u64(frame + p.frame_previous as u64) {
            Some(prev) => frame = prev,
            None => break,
        }
    }
    buf.header.n_py = n as u32;
}

/// 1 + the index (code units) of the instruction `frame` (running `code`)
/// is at, or 0 when unknown.
#[inline(always)]
fn instr_index(p: &PyProc, frame: u64, code: u64) -> u64 {
    let at = frame + p.frame_instr as u64;
    let i = if p.code_units == 0 {
        // SAFETY: a checked read of user memory (3.10 `f_lasti`, an int;
        // -1 before the first instruction).
        match unsafe { bpf_probe_read_user(at as *const i32) } {
            Ok(i) if i >= 0 => i as u64 + 1,
            _ => 0,
        }
    } else {
        let first = code + p.code_units as u64;
        match read_user_u64(at) {
            Some(ptr) if ptr >= first => (ptr - first) / 2 + 1,
            _ => 0,
        }
    };
    if i > PY_INSTR_MAX {
        0
    } else {
        i
    }
}

/// The current thread's own Python thread state: `_PyRuntime`'s pthread
/// key, looked up in the thread's first block of thread-specific data.
#[inline(always)]
fn thread_state(p: &PyProc, fs_off: u64) -> Option<u64> {
    // SAFETY: a checked read of the runtime's key (an int).
    let key =
        unsafe { bpf_probe_read_user((p.runtime + p.tss_key_off as u64) as *const u32) }.ok()?;
    if key >= 32 {
        return None;
    }
    // SAFETY: the current task (a BTF pointer); a checked kernel read of
    // its saved thread pointer.
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    let fsbase = unsafe { bpf_probe_read_kernel((task + fs_off) as *const u64) }.ok()?;
    if fsbase == 0 {
        return None;
    }
    let tstate = read_user_u64(fsbase + p.tsd_off as u64 + 16 * key as u64 + 8)?;
    (tstate != 0).then_some(tstate)
}

/// The kernel stack into `buf.frames`, right after the user frames.
#[inline(always)]
fn kernel_stack<C: EbpfContext>(ctx: &C, buf: &mut SampleBuf) {
    let nu = (buf.header.n_user as usize) & 127;
    if nu > MAX_USER_FRAMES {
        return;
    }
    let size = (MAX_KERNEL_FRAMES * 8) as u32;
    // SAFETY: `nu` <= MAX_USER_FRAMES, so `size` bytes from frame `nu` stay
    // inside the buffer; the helper writes at most `size` bytes.
    let got = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            buf.frames.as_mut_ptr().add(nu).cast(),
            size,
            0,
        )
    };
    buf.header.n_kernel = if got > 0 { (got as u32) / 8 } else { 0 };
}

/// Sends the header and the frames it holds.
#[inline(always)]
fn submit(buf: &SampleBuf) {
    let frames =
        (buf.header.n_user as usize + buf.header.n_kernel as usize + buf.header.n_py as usize)
            .min(MAX_FRAMES);
    let len = sample_bytes(frames);
    // SAFETY: `len` <= size_of::<SampleBuf>() bytes of `buf`, initialised.
    let bytes = unsafe { core::slice::from_raw_parts(buf as *const SampleBuf as *const u8, len) };
    if EVENTS
        .output::<[u8]>(bytes, BPF_RB_NO_WAKEUP as u64)
        .is_err()
    {
        pbump(PCOUNTER_RING_FULL);
    }
}

/// Fills the header's identity and stage fields for the current thread.
#[inline(always)]
fn header(buf: &mut SampleBuf, what: u32, pid_tgid: u64, now: u64) {
    let (stage, frame_ns) = current_stage();
    buf.header = SampleHeader {
        kind: KIND_SAMPLE,
        what,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        stage,
        flags: 0,
        n_user: 0,
        n_kernel: 0,
        n_py: 0,
        _pad: 0,
        ts_ns: now,
        weight_ns: 0,
        wait_ns: 0,
        frame_ns,
    };
}

#[perf_event]
pub fn profile_cpu(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if pid_tgid as u32 == 0 || !profiled(tgid) {
        return 0;
    }
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch entry.
    let buf = unsafe { &mut (*buf).sample };
    let now = unsafe { bpf_ktime_get_ns() };
    header(buf, SAMPLE_ON_CPU, pid_tgid, now);
    // SAFETY: read of a load-time constant.
    buf.header.weight_ns = unsafe { core::ptr::read_volatile(&PROFILE_PERIOD_NS) };
    // SAFETY: the context of a perf_event program is bpf_perf_event_data.
    let regs = unsafe { &(*ctx.ctx).regs };
    if let Some((ip, bp)) = user_regs(Some(regs)) {
        walk_user(buf, ip, bp);
    }
    kernel_stack(&ctx, buf);
    walk_python(buf, tgid);
    pbump(PCOUNTER_SAMPLES);
    submit(buf);
    0
}

/// The `OFF_CPU` entry of traced thread `tid`, made on its first switch.
#[inline(always)]
fn off_cpu_entry(tid: u32) -> Option<&'static mut OffCpu> {
    if let Some(p) = OFF_CPU.get_ptr_mut(&tid) {
        // SAFETY: this thread's own entry; only it writes it but for the
        // wake-up, which does while it is off the CPU.
        return Some(unsafe { &mut *p });
    }
    let s = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch entry.
    let s = unsafe { &mut *s };
    s.open = OPEN_NONE;
    s.avg_ns = 0;
    OFF_CPU.insert(&tid, s, 0).ok()?;
    let p = OFF_CPU.get_ptr_mut(&tid)?;
    // SAFETY: as above.
    Some(unsafe { &mut *p })
}

/// Ends the sampled interval of `e` (`off` ns, of which `waited` for a
/// CPU): sends it, its times divided by its probability.
#[inline(always)]
fn close_sampled(e: &mut OffCpu, off: u64, waited: u64) {
    // SAFETY: read of a load-time constant.
    if off < unsafe { core::ptr::read_volatile(&OFF_CPU_MIN_NS) } {
        pbump(PCOUNTER_OFF_CPU_SHORT);
        return;
    }
    let h = &mut e.sample.header;
    let (blocked, wait) = if h.flags & SAMPLE_PREEMPTED != 0 {
        (0, off)
    } else if waited > 0 {
        // Blocked until the wake-up, then waiting for a CPU.
        h.flags |= SAMPLE_WOKEN;
        let wait = waited.min(off);
        (off - wait, wait)
    } else {
        (off, 0)
    };
    h.weight_ns = off_cpu_weight(blocked, e.pi);
    h.wait_ns = off_cpu_weight(wait, e.pi);
    pbump(PCOUNTER_OFF_CPU);
    submit(&e.sample);
}

/// The current thread's `sched_info.run_delay` (0: unknown).
#[inline(always)]
fn run_delay() -> u64 {
    // SAFETY: read of a load-time constant.
    let off = unsafe { core::ptr::read_volatile(&TASK_RUN_DELAY_OFF) };
    if off == 0 {
        return 0;
    }
    // SAFETY: the current task (a BTF pointer); a checked kernel read.
    let task = unsafe { bpf_get_current_task_btf() } as u64;
    unsafe { bpf_probe_read_kernel((task + off) as *const u64) }.unwrap_or(0)
}

/// `sched_switch(preempt, prev, next, prev_state)`; runs as `prev`.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn profile_switch(ctx: RawTracePointContext) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    // When the incoming thread started: read before it is overwritten.
    let ran_from = match RUN_START.get_ptr_mut(0) {
        Some(p) => {
            // SAFETY: per-CPU slot.
            let was = unsafe { *p };
            unsafe { *p = now };
            was
        }
        None => return 0,
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if tid == 0 || !profiled((pid_tgid >> 32) as u32) {
        return 0;
    }
    let Some(e) = off_cpu_entry(tid) else {
        return 0;
    };
    // The interval that ended when this thread came back (at `ran_from`).
    if e.open != OPEN_NONE && ran_from > e.start_ns {
        let off = ran_from - e.start_ns;
        e.avg_ns = match e.avg_ns {
            0 => off,
            avg => avg - avg / 4 + off / 4,
        };
        pbump(PCOUNTER_OFF_CPU_SEEN);
        if e.open == OPEN_SAMPLED {
            close_sampled(e, off, run_delay().saturating_sub(e.run_delay));
        }
    }
    e.open = OPEN_NONE;
    e.start_ns = now;
    // SAFETY: read of a load-time constant.
    let period = unsafe { core::ptr::read_volatile(&PROFILE_PERIOD_NS) };
    let pi = off_cpu_probability(e.avg_ns, period);
    // SAFETY: plain helper call.
    if pi < OFF_CPU_PI_ONE && unsafe { bpf_get_prandom_u32() } % OFF_CPU_PI_ONE >= pi {
        e.open = OPEN_UNSAMPLED;
        return 0;
    }
    e.pi = pi;
    // (Read only for the sampled intervals: the others need no split.)
    e.run_delay = run_delay();
    let buf = &mut e.sample;
    header(buf, SAMPLE_OFF_CPU, pid_tgid, now);
    let preempt: u64 = ctx.arg(0);
    // SAFETY: read of a load-time constant.
    let runnable = if unsafe { core::ptr::read_volatile(&SWITCH_HAS_STATE) } != 0 {
        let state: u64 = ctx.arg(3);
        state as u32 == 0
    } else {
        false
    };
    if preempt & 1 != 0 || runnable {
        buf.header.flags |= SAMPLE_PREEMPTED;
    }
    if let Some((ip, bp)) = user_regs(None) {
        walk_user(buf, ip, bp);
    }
    kernel_stack(&ctx, buf);
    walk_python(buf, (pid_tgid >> 32) as u32);
    e.open = OPEN_SAMPLED;
    0
}

/// Keeps `NO_STAGE` in use for readers of this file: a sample outside any
/// traced call carries it (from `current_stage`).
const _: u32 = NO_STAGE;
