//! Unwind support: an exception (C++ throw, Rust panic, a thread's forced
//! unwind) that crosses a function with a return probe must not meet the
//! kernel's uretprobe trampoline on the stack, where the unwinder finds no
//! unwind info and the process terminates.
//!
//! - `unwind_raise` (entry of `_Unwind_RaiseException`,
//!   `_Unwind_Resume_or_Rethrow`, `_Unwind_ForcedUnwind`): before the
//!   unwinder reads a single return address, every open traced call of the
//!   thread whose slot holds the trampoline gets its original return
//!   address back: the kernel's own `return_instance::orig_ret_vaddr` for
//!   that very slot.
//! - `unwind_catch` (entry of `__cxa_begin_catch`, Rust's
//!   `__rust_panic_cleanup`): calls below the catching frame were unwound:
//!   their spans end here, marked; calls still alive get the trampoline
//!   back so their return probe fires (the kernel still holds their
//!   return instances and skips the dead ones itself).
//! - `unwind_thread_exit` (sched_process_exit): after a forced unwind the
//!   thread exits without a catch; its open calls end there, marked.
//!
//! What is written, and where, is deliberately narrow: only into a slot
//! recorded by our own entry probe on the current thread's stack, only
//! the value the kernel recorded for that slot or the trampoline, and only
//! after reading back the value we expect to replace. Anything else is
//! counted in `COUNTER_UNWIND_SKIPPED` and left alone.
use adeline_trace_common::{
    ThreadCalls, COUNTER_UNWIND_SKIPPED, COUNTER_UNWOUND, MAX_DEPTH, OPEN_RESTORED,
    SPAN_FLAG_EXCEPTION,
};
use aya_ebpf::{
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_write_user,
    },
    macros::{tracepoint, uprobe},
    programs::{ProbeContext, TracePointContext},
    EbpfContext,
};

use crate::{
    maps::{bump, pid_allowed, THREADS},
    stage::close_call,
};

/// Attach cookie of `unwind_raise` at `_Unwind_ForcedUnwind`.
const COOKIE_FORCED: u64 = 1;

/// Kernel structure offsets (bytes), read by the agent from the kernel's
/// BTF and set at load time. All zero: unwind support is off (the
/// programs are then never attached either).
#[no_mangle]
static UW_TASK_MM: u32 = 0;
/// `offsetof(struct mm_struct, uprobes_state.xol_area)`.
#[no_mangle]
static UW_MM_XOL_AREA: u32 = 0;
/// `offsetof(struct xol_area, vaddr)`: the trampoline is the area's
/// first slot (`uprobe_get_trampoline_vaddr`).
#[no_mangle]
static UW_XOL_VADDR: u32 = 0;
/// `offsetof(struct task_struct, utask)`.
#[no_mangle]
static UW_TASK_UTASK: u32 = 0;
/// `offsetof(struct uprobe_task, return_instances)`.
#[no_mangle]
static UW_UTASK_RI: u32 = 0;
/// `offsetof(struct return_instance, stack)`.
#[no_mangle]
static UW_RI_STACK: u32 = 0;
/// `offsetof(struct return_instance, orig_ret_vaddr)`.
#[no_mangle]
static UW_RI_ORIG: u32 = 0;
/// `offsetof(struct return_instance, next)`.
#[no_mangle]
static UW_RI_NEXT: u32 = 0;

/// The kernel keeps at most this many return instances per thread
/// (`MAX_URETPROBE_DEPTH`); the walks below are bounded by it plus ours.
const MAX_RI: usize = 64;

#[inline(always)]
fn off(v: &'static u32) -> u64 {
    // SAFETY: read of a load-time constant.
    unsafe { core::ptr::read_volatile(v) as u64 }
}

#[inline(always)]
fn kread(addr: u64) -> u64 {
    if addr == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; failure reads as 0.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.unwrap_or(0)
}

/// The value at a user address of the current thread, if readable.
#[inline(always)]
fn uread(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the address.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// Writes `value` at `addr` of the current process's memory.
#[inline(always)]
fn uwrite(addr: u64, value: u64) -> bool {
    // SAFETY: the callers only pass a return-address slot recorded by the
    // entry probe on this thread's stack, after checking its content.
    unsafe { bpf_probe_write_user(addr as *mut u64, &value as *const u64) }.is_ok()
}

/// This process's uretprobe trampoline address (0 if it has none yet:
/// then no return address was replaced).
#[inline(always)]
fn trampoline(task: u64) -> u64 {
    let mm = kread(task + off(&UW_TASK_MM));
    if mm == 0 {
        return 0;
    }
    let area = kread(mm + off(&UW_MM_XOL_AREA));
    if area == 0 {
        return 0;
    }
    kread(area + off(&UW_XOL_VADDR))
}

/// The innermost of the kernel's return instances of this thread.
#[inline(always)]
fn first_instance(task: u64) -> u64 {
    let utask = kread(task + off(&UW_TASK_UTASK));
    if utask == 0 {
        return 0;
    }
    kread(utask + off(&UW_UTASK_RI))
}

/// What to do with the open calls that the kernel has a return instance
/// for (same slot).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Put the original return address back where the trampoline is.
    Restore,
    /// Put the trampoline back where we restored the original.
    Rearm,
}

/// Walks our open calls (innermost first, slots ascending) beside the
/// kernel's return instances (innermost first, `stack` ascending) and
/// handles each call whose slot is above `rsp` and has a kernel instance
/// with the same `stack`: the innermost such instance is the one the
/// trampoline will consume for that slot (stale instances at the same
/// address are dropped by the kernel before a new one is pushed; chained
/// tail calls share the first caller's original address).
#[inline(always)]
fn walk(calls: &mut ThreadCalls, task: u64, rsp: u64, tramp: u64, pass: Pass) {
    let depth = calls.depth as usize;
    if depth == 0 || depth > MAX_DEPTH {
        // Nesting beyond MAX_DEPTH was not recorded: nothing we can match.
        return;
    }
    let mut i = depth; // calls[i - 1] is the next call to look at
    let mut ri = first_instance(task);
    let mut ri_stack = kread(ri + off(&UW_RI_STACK));
    for _ in 0..(MAX_RI + MAX_DEPTH) {
        if i == 0 || ri == 0 {
            break;
        }
        let idx = (i - 1) & (MAX_DEPTH - 1);
        let slot = calls.calls[idx].slot;
        if slot <= rsp || slot < ri_stack {
            // Not a live frame above us, or the kernel has no instance for
            // it (not hijacked: depth limit, failed allocation).
            i -= 1;
            continue;
        }
        if slot > ri_stack {
            // A kernel instance of no open call of ours (another tool's
            // return probe, or stale): never touched.
            ri = kread(ri + off(&UW_RI_NEXT));
            ri_stack = kread(ri + off(&UW_RI_STACK));
            continue;
        }
        let orig = kread(ri + off(&UW_RI_ORIG));
        let call = &mut calls.calls[idx];
        match (pass, uread(slot)) {
            (_, None) => bump(COUNTER_UNWIND_SKIPPED),
            (Pass::Restore, Some(cur)) => {
                if orig == 0 || orig == tramp {
                    bump(COUNTER_UNWIND_SKIPPED);
                } else if cur == tramp {
                    if uwrite(slot, orig) {
                        call.flags |= OPEN_RESTORED;
                        call.orig = orig;
                    } else {
                        bump(COUNTER_UNWIND_SKIPPED);
                    }
                } else if cur == orig {
                    // Restored already (a rethrow before any catch, or a
                    // chained call sharing the slot): re-arm it at the catch.
                    call.flags |= OPEN_RESTORED;
                    call.orig = orig;
                }
                // Anything else: not hijacked by the kernel for this call.
            }
            (Pass::Rearm, Some(cur)) => {
                if call.flags & OPEN_RESTORED != 0 {
                    // The kernel still expects this slot to return through
                    // the trampoline to exactly this address.
                    if cur == call.orig && orig == call.orig && tramp != 0 {
                        if uwrite(slot, tramp) {
                            call.flags &= !OPEN_RESTORED;
                        } else {
                            bump(COUNTER_UNWIND_SKIPPED);
                        }
                    } else if cur == tramp {
                        call.flags &= !OPEN_RESTORED;
                    } else {
                        bump(COUNTER_UNWIND_SKIPPED);
                    }
                }
            }
        }
        i -= 1;
    }
}

/// Unwinder entry points: put original return addresses back.
#[uprobe]
pub fn unwind_raise(ctx: ProbeContext) -> u32 {
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
    // SAFETY: plain helper calls on the probe's own context.
    if unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } == COOKIE_FORCED {
        calls.forced_unwind = 1;
    }
    if calls.depth == 0 {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() };
    let tramp = trampoline(task);
    if tramp == 0 {
        return 0;
    }
    // SAFETY: reading the probe's own register context.
    let rsp = unsafe { (*ctx.regs).rsp };
    walk(calls, task, rsp, tramp, Pass::Restore);
    0
}

/// A catch: end the unwound calls, re-arm the live ones.
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
    let task = unsafe { bpf_get_current_task() };
    let tramp = trampoline(task);
    // SAFETY: reading the probe's own register context.
    let rsp = unsafe { (*ctx.regs).rsp };
    // The catch function is called by the catching frame (C++) or a frame
    // or two below it (Rust): every slot at or below our return-address
    // slot belongs to a frame that is gone. Above it, a restored slot that
    // no longer holds its original address was reused: gone too.
    for _ in 0..MAX_DEPTH {
        let depth = calls.depth as usize;
        if depth == 0 || depth > MAX_DEPTH {
            break;
        }
        let idx = (depth - 1) & (MAX_DEPTH - 1);
        let call = calls.calls[idx];
        let gone = call.slot <= rsp
            || (call.flags & OPEN_RESTORED != 0
                && match uread(call.slot) {
                    Some(cur) => cur != call.orig && cur != tramp,
                    None => true,
                });
        if !gone {
            break;
        }
        bump(COUNTER_UNWOUND);
        close_call(calls, idx, now, call.stage, pid_tgid, SPAN_FLAG_EXCEPTION);
    }
    if tramp != 0 {
        walk(calls, task, rsp, tramp, Pass::Rearm);
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
