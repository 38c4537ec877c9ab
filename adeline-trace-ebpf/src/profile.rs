//! The profiler: on-CPU samples from a `perf_event` (cpu-clock) program and
//! off-CPU intervals from the `sched_switch` raw tracepoint, for the traced
//! processes (the pid filter; without one, the threads that have entered a
//! traced stage). Each record carries the user stack (frame-pointer walk,
//! with whether it reached the outermost frame), the kernel stack and the
//! innermost open stage of the thread, read from its task storage
//! (`THREADS`, written by the stage probes).
//!
//! Off-CPU without reading any task_struct field: every `sched_switch`
//! notes, per CPU, when the incoming thread starts running. When a traced
//! thread leaves the CPU, its state keeps the time and its stacks; at its
//! next switch-out the CPU's note says when it came back, which closes the
//! interval (so an interval is reported when the thread next leaves the
//! CPU, and its weight is the whole time it was off: blocked, then waiting
//! for a CPU).
use adeline_trace_common::{
    profile::{
        sample_bytes, SampleBuf, SampleHeader, KIND_SAMPLE, MAX_FRAMES, MAX_KERNEL_FRAMES,
        MAX_USER_FRAMES, PCOUNTERS as N_PCOUNTERS, PCOUNTER_OFF_CPU, PCOUNTER_OFF_CPU_SHORT,
        PCOUNTER_RING_FULL, PCOUNTER_SAMPLES, SAMPLE_OFF_CPU, SAMPLE_ON_CPU, SAMPLE_PREEMPTED,
        SAMPLE_USER_COMPLETE,
    },
    NO_STAGE,
};
use aya_ebpf::{
    bindings::{pt_regs, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_stack, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_task_pt_regs,
    },
    macros::{map, perf_event, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray},
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

/// Threads whose off-CPU state is kept at once (least recently used go).
const MAX_OFF_CPU_THREADS: u32 = 4096;

/// Scratch space for building one sample (per CPU: programs do not nest
/// on one CPU for these hooks; a nested one would only garble a sample).
#[map(name = "PROFILE_SCRATCH")]
static SCRATCH: PerCpuArray<SampleBuf> = PerCpuArray::with_max_entries(1, 0);

/// When the thread now running on each CPU was switched in.
#[map(name = "RUN_START")]
static RUN_START: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per traced thread (tid): the off-CPU interval in progress, with the
/// stacks at the moment it began (`header.ts_ns` = its start).
#[map(name = "OFF_CPU")]
static OFF_CPU: LruHashMap<u32, SampleBuf> = LruHashMap::with_max_entries(MAX_OFF_CPU_THREADS, 0);

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
#[inline(always)]
fn walk_user(buf: &mut SampleBuf, ip: u64, bp: u64) {
    buf.frames[0] = ip;
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
        let (next, ret) = (frame[0], frame[1]);
        if ret == 0 {
            complete = next == 0;
            break;
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
    let frames = (buf.header.n_user as usize + buf.header.n_kernel as usize).min(MAX_FRAMES);
    let len = sample_bytes(frames, 0);
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
    let buf = unsafe { &mut *buf };
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
    pbump(PCOUNTER_SAMPLES);
    submit(buf);
    0
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
    // SAFETY: read of a load-time constant.
    let min_ns = unsafe { core::ptr::read_volatile(&OFF_CPU_MIN_NS) };
    // The interval that ended when this thread came back (at `ran_from`).
    if let Some(open) = OFF_CPU.get_ptr_mut(&tid) {
        // SAFETY: this thread's own entry; only it writes it (here).
        let open = unsafe { &mut *open };
        let start = open.header.ts_ns;
        if ran_from > start && open.header.kind == KIND_SAMPLE {
            let off = ran_from - start;
            if off < min_ns {
                pbump(PCOUNTER_OFF_CPU_SHORT);
            } else {
                if open.header.flags & SAMPLE_PREEMPTED != 0 {
                    open.header.wait_ns = off;
                } else {
                    open.header.weight_ns = off;
                }
                pbump(PCOUNTER_OFF_CPU);
                submit(open);
            }
        }
        open.header.kind = 0;
    }
    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch entry.
    let buf = unsafe { &mut *buf };
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
    let _ = OFF_CPU.insert(&tid, buf, 0);
    0
}

/// Keeps `NO_STAGE` in use for readers of this file: a sample outside any
/// traced call carries it (from `current_stage`).
const _: u32 = NO_STAGE;
