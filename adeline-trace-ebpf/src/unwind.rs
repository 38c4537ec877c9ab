//! Exception-safe return probes and unwind bookkeeping. Nothing here
//! writes the traced process's memory.
//!
//! A uretprobe replaces the function's return address with the kernel's
//! trampoline, which has no unwind info: an exception (C++ throw, Rust
//! panic, a thread's forced unwind) that crosses the function makes the
//! unwinder give up and the process terminate. Putting the address back
//! from BPF needs `bpf_probe_write_user`, which kernel lockdown refuses.
//! So stages can instead be timed with uprobes on the function's own exit
//! instructions (`ret`, tail-call jumps: `stage_ret`), which leave the
//! stack alone; the unwinder then never meets anything but real return
//! addresses. Calls that an exception unwound never reach an exit
//! instruction: `unwind_catch` (at `__cxa_begin_catch`, Rust's
//! `__rust_panic_cleanup`) ends them, and `unwind_thread_exit` ends those
//! of a thread whose forced unwind (`unwind_forced`, at
//! `_Unwind_ForcedUnwind`) ends with its exit.
use adeline_trace_common::{
    COUNTER_UNMATCHED_EXIT, COUNTER_UNWOUND, MAX_DEPTH, OPEN_PYTHON, OPEN_USDT, SPAN_FLAG_EXCEPTION,
};
use aya_ebpf::{
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{tracepoint, uprobe},
    programs::{ProbeContext, TracePointContext},
    EbpfContext,
};

use crate::{
    maps::{bump, pid_allowed, THREADS},
    stage::close_call,
};

/// An exit instruction of a stage function (`ret`, or a jump that leaves
/// the function): the frame is torn down, so the stack pointer is the
/// call's return-address slot. The call is the innermost open one with
/// that slot; any above it were left without a return (longjmp) and are
/// dropped, as by `stage_exit`.
#[uprobe]
pub fn stage_ret(ctx: ProbeContext) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    if !pid_allowed((pid_tgid >> 32) as u32) {
        return 0;
    }
    // SAFETY: plain helper call on the probe's own context.
    let stage = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let calls = THREADS.current(false);
    if calls.is_null() {
        bump(COUNTER_UNMATCHED_EXIT);
        return 0;
    }
    // SAFETY: task-local storage of the current thread: no other writer.
    let calls = unsafe { &mut *calls };
    // SAFETY: reading the probe's own register context.
    let rsp = unsafe { (*ctx.regs).rsp };
    let depth = calls.depth as usize;
    if depth == 0 {
        bump(COUNTER_UNMATCHED_EXIT);
        return 0;
    }
    if depth > MAX_DEPTH {
        // The entry was not recorded (too deep): keep the count right.
        calls.depth -= 1;
        return 0;
    }
    for i in 0..MAX_DEPTH {
        if i >= depth {
            break;
        }
        let idx = (depth - 1 - i) & (MAX_DEPTH - 1);
        let call = &calls.calls[idx];
        if call.flags & (OPEN_PYTHON | OPEN_USDT) != 0 {
            // A Python call (left open by a window's end, say) or a USDT
            // pair's: its key is not a slot; the native call may be below it.
            continue;
        }
        if call.key == rsp && call.stage == stage {
            close_call(calls, idx, now, stage, pid_tgid, 0);
            return 0;
        }
        if call.key > rsp {
            // Outer frames only from here on: this exit has no entry.
            break;
        }
    }
    bump(COUNTER_UNMATCHED_EXIT);
    0
}

/// Whether an open call's frame is gone at a catch whose stack pointer is
/// `rsp`: its slot is at or below the catch function's own return-address
/// slot, or (Rust catches a frame or two below the catching frame) its
/// slot no longer holds the return address read at its entry.
#[inline(always)]
fn unwound(slot: u64, orig: u64, rsp: u64) -> bool {
    if slot <= rsp {
        return true;
    }
    // SAFETY: bpf_probe_read_user checks the address.
    match unsafe { bpf_probe_read_user(slot as *const u64) } {
        Ok(v) => orig != 0 && v != orig,
        Err(_) => true,
    }
}

/// A catch: every open call whose frame the exception unwound ends now,
/// marked. Calls still on the stack stay open.
#[uprobe]
pub fn unwind_catch(ctx: ProbeContext) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    if !pid_allowed((pid_tgid >> 32) as u32) {
        return 0;
    }
    let calls = THREADS.current(false);
    if calls.is_null() {
        return 0;
    }
    // SAFETY: task-local storage of the current thread: no other writer.
    let calls = unsafe { &mut *calls };
    // SAFETY: reading the probe's own register context.
    let rsp = unsafe { (*ctx.regs).rsp };
    for _ in 0..MAX_DEPTH {
        let depth = calls.depth as usize;
        if depth == 0 || depth > MAX_DEPTH {
            break;
        }
        let idx = (depth - 1) & (MAX_DEPTH - 1);
        let call = calls.calls[idx];
        // A native exception never crosses an open Python frame (the
        // interpreter is C): the Python call and those below it stay.
        // A USDT pair's call may span frames: only its return probe ends it.
        if call.flags & (OPEN_PYTHON | OPEN_USDT) != 0 || !unwound(call.key, call.orig, rsp) {
            break;
        }
        bump(COUNTER_UNWOUND);
        close_call(calls, idx, now, call.stage, pid_tgid, SPAN_FLAG_EXCEPTION);
    }
    0
}

/// `_Unwind_ForcedUnwind` (pthread_exit, pthread_cancel): the thread's
/// open calls will end at its exit.
#[uprobe]
pub fn unwind_forced(_ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !pid_allowed((pid_tgid >> 32) as u32) {
        return 0;
    }
    let calls = THREADS.current(false);
    if !calls.is_null() {
        // SAFETY: task-local storage of the current thread: no other writer.
        unsafe { (*calls).forced_unwind = 1 };
    }
    0
}

/// A thread exits: after a forced unwind, its open calls were unwound.
#[tracepoint]
pub fn unwind_thread_exit(_ctx: TracePointContext) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    if !pid_allowed((pid_tgid >> 32) as u32) {
        return 0;
    }
    let calls = THREADS.current(false);
    if calls.is_null() {
        return 0;
    }
    // SAFETY: task-local storage of the current thread: no other writer.
    let calls = unsafe { &mut *calls };
    if calls.forced_unwind == 0 {
        return 0;
    }
    for _ in 0..MAX_DEPTH {
        let depth = calls.depth as usize;
        if depth == 0 || depth > MAX_DEPTH {
            break;
        }
        let idx = (depth - 1) & (MAX_DEPTH - 1);
        let stage = calls.calls[idx].stage;
        bump(COUNTER_UNWOUND);
        close_call(calls, idx, now, stage, pid_tgid, SPAN_FLAG_EXCEPTION);
    }
    0
}
