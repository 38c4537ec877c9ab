//! Generic stage timing: one entry and one exit program serve every stage;
//! the stage id is the attach cookie.
use adeline_trace_common::{
    agg_bin, OpenCall, SpanRecord, ThreadCalls, COUNTER_ABANDONED, COUNTER_DEPTH_OVERFLOW,
    COUNTER_FILTERED_SHORT, COUNTER_RING_FULL, COUNTER_UNMATCHED_EXIT, KIND_SPAN, MAX_DEPTH,
    NO_STAGE, OPEN_PYTHON, OPEN_USDT,
};
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};

use crate::maps::{
    aggregated, bump, frame_stage, min_duration, pid_allowed, read_return_address,
    record_return_address, EVENTS, THREADS,
};

#[uprobe]
pub fn stage_entry(ctx: ProbeContext) -> u32 {
    open_stage(&ctx, 0)
}

/// Opens a call of the stage (the cookie) on this thread's stack, with
/// `OpenCall::flags` = `flags` (0: a native function; `OPEN_USDT`).
#[inline(always)]
pub fn open_stage(ctx: &ProbeContext, flags: u32) -> u32 {
    // SAFETY: plain helper calls on the probe's own context.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    if !pid_allowed((pid_tgid >> 32) as u32) {
        return 0;
    }
    let stage = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let calls = THREADS.current(true);
    if calls.is_null() {
        return 0;
    }
    // SAFETY: task-local storage of the current thread: no other writer.
    let calls = unsafe { &mut *calls };
    // Exit instructions and unwind support (unwind.rs) find a call by its
    // return-address slot (`OpenCall::key`): the probe sits before the stack pointer moves.
    // SAFETY: reading the probe's own register context.
    let rsp = unsafe { (*ctx.regs).rsp };
    // Exit-instruction mode (catch hooks attached): open calls whose slot
    // is below this one's belong to frames that are gone (longjmp, an exit
    // not probed): drop them, counted, so they are neither matched nor
    // taken for unwound ones by a catch. (An equal slot is a uretprobe's
    // chained tail call, alive.) Uretprobe mode keeps its old behaviour:
    // a program that switches stacks (fibers, sigaltstack) is unaffected.
    let unwind_mode = read_return_address();
    for _ in 0..MAX_DEPTH {
        if !unwind_mode {
            break;
        }
        let d = calls.depth as usize;
        if d == 0 || d > MAX_DEPTH {
            break;
        }
        // A Python call's key is its frame, a USDT call's the stack
        // pointer at its probe, not a slot: they stay.
        let top = &calls.calls[(d - 1) & (MAX_DEPTH - 1)];
        if top.flags & (OPEN_PYTHON | OPEN_USDT) != 0 || top.key >= rsp {
            break;
        }
        calls.depth -= 1;
        if calls.frame_level as usize >= d {
            calls.frame_level = 0;
        }
        bump(COUNTER_ABANDONED);
    }
    let depth = calls.depth as usize;
    if depth < MAX_DEPTH {
        calls.calls[depth] = OpenCall {
            stage,
            flags,
            start_ns: now,
            child_ns: 0,
            key: rsp,
            // The return address, which tells a catch whether this frame is
            // gone, and the profiler what a uretprobe replaced: read only
            // when catch hooks or the profiler are attached (~100 ns), and
            // only for native calls (Python and USDT keys are no slots).
            orig: match record_return_address() && flags == 0 {
                // SAFETY: bpf_probe_read_user checks the address.
                true => unsafe { bpf_probe_read_user(rsp as *const u64) }.unwrap_or(0),
                false => 0,
            },
        };
        if stage == frame_stage() && calls.frame_level == 0 {
            calls.frame_level = depth as u32 + 1;
            calls.frame_ns = now;
        }
    } else {
        // Keep counting so the matching returns unwind to the right level.
        bump(COUNTER_DEPTH_OVERFLOW);
    }
    calls.depth += 1;
    0
}

#[uretprobe]
pub fn stage_exit(ctx: RetProbeContext) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let stage = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    end_stage(stage, now, pid_tgid);
    0
}

/// Ends the innermost open call of `stage` on this thread at `now`. Shared
/// by the uretprobe and USDT return probes (usdt.rs).
#[inline(always)]
pub fn end_stage(stage: u32, now: u64, pid_tgid: u64) {
    let calls = THREADS.current(false);
    if calls.is_null() {
        // Probes for every process with the pid filter on (following
        // children): an untraced process's return is not unmatched.
        if pid_allowed((pid_tgid >> 32) as u32) {
            bump(COUNTER_UNMATCHED_EXIT);
        }
        return;
    }
    // SAFETY: task-local storage of the current thread: no other writer.
    let calls = unsafe { &mut *calls };
    let depth = calls.depth as usize;
    if depth == 0 {
        bump(COUNTER_UNMATCHED_EXIT);
        return;
    }
    if depth > MAX_DEPTH {
        calls.depth -= 1;
        return;
    }
    // The innermost open call of this stage: normally the top of the stack.
    // Calls above it were left without a return (exception, longjmp): drop
    // them rather than mis-time them.
    let mut found = depth - 1;
    if calls.calls[found].stage != stage {
        found = MAX_DEPTH;
        for i in 1..MAX_DEPTH {
            let idx = MAX_DEPTH - 1 - i;
            if idx + 1 < depth && calls.calls[idx].stage == stage {
                found = idx;
                break;
            }
        }
        if found >= MAX_DEPTH {
            bump(COUNTER_UNMATCHED_EXIT);
            return;
        }
    }
    close_call(calls, found, now, stage, pid_tgid, 0);
}

/// Pops the open call at index `found` (and any above it) that lasted
/// `dur_ns`: adds it to its parent's child time (filtered or not) and
/// updates the frame state. Returns the start of the frame it belongs to
/// (0: none). Shared by every kind that ends calls (stage_exit, stage_ret,
/// the unwind hooks, py_exit).
#[inline(always)]
pub fn pop_call(calls: &mut ThreadCalls, found: usize, dur_ns: u64) -> u64 {
    let found = found & (MAX_DEPTH - 1);
    calls.depth = found as u32;
    if found > 0 {
        // A fresh bounded index: inlined into a loop, the compiler would
        // otherwise address the parent as "this call - 1", a pointer offset
        // the verifier cannot bound.
        // SAFETY: a volatile read of a local.
        let pidx = unsafe { core::ptr::read_volatile(&((found - 1) & (MAX_DEPTH - 1))) };
        if let Some(parent) = calls.calls.get_mut(pidx) {
            parent.child_ns = parent.child_ns.wrapping_add(dur_ns);
        }
    }
    let level = calls.frame_level as usize;
    let frame_ns = if level != 0 && found + 1 >= level {
        calls.frame_ns
    } else {
        0
    };
    if level != 0 && found < level {
        // The frame root itself returned (or was unwound past).
        calls.frame_level = 0;
    }
    frame_ns
}

/// Ends the open call at index `found` (and drops any above it) at `now`:
/// adds its duration to its parent's child time, updates the frame state,
/// and sends its span (`flags`: `SPAN_FLAG_*`) unless it is shorter than
/// the minimum duration. Shared by the return probe and unwind support.
#[inline(always)]
pub fn close_call(
    calls: &mut ThreadCalls,
    found: usize,
    now: u64,
    stage: u32,
    pid_tgid: u64,
    flags: u32,
) {
    let found = found & (MAX_DEPTH - 1);
    let start_ns = calls.calls[found].start_ns;
    let child_ns = calls.calls[found].child_ns;
    let dur_ns = now.wrapping_sub(start_ns);
    let frame_ns = pop_call(calls, found, dur_ns);
    if dur_ns < min_duration() {
        bump(COUNTER_FILTERED_SHORT);
        return;
    }
    let self_ns = dur_ns.saturating_sub(child_ns);
    // The frame root keeps its records: frames are measured from them.
    if stage != frame_stage() {
        if let Some(h) = aggregated(stage) {
            // SAFETY: this CPU's slot of a per-CPU map; no other writer.
            let h = unsafe { &mut *h };
            h.count += 1;
            h.sum_ns = h.sum_ns.wrapping_add(dur_ns);
            h.self_ns = h.self_ns.wrapping_add(self_ns);
            if frame_ns != 0 {
                h.frame_self_ns = h.frame_self_ns.wrapping_add(self_ns);
            }
            // Opaque to the compiler, so the bound check the verifier
            // needs is not folded into agg_bin's own clamp.
            // SAFETY: a volatile read of a local.
            let b = unsafe { core::ptr::read_volatile(&agg_bin(dur_ns)) };
            if let Some(n) = h.bins.get_mut(b) {
                *n = n.wrapping_add(1);
            }
            return;
        }
    }
    match EVENTS.reserve::<SpanRecord>(0) {
        Some(mut entry) => {
            entry.write(SpanRecord {
                kind: KIND_SPAN,
                stage,
                pid: (pid_tgid >> 32) as u32,
                tid: pid_tgid as u32,
                start_ns,
                dur_ns,
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

/// The innermost traced stage open on this thread and its frame start.
#[inline(always)]
pub fn current_stage() -> (u32, u64) {
    let calls = THREADS.current(false);
    if calls.is_null() {
        return (NO_STAGE, 0);
    }
    // SAFETY: task-local storage of the current thread.
    let calls: &ThreadCalls = unsafe { &*calls };
    let depth = calls.depth as usize;
    if depth == 0 || depth > MAX_DEPTH {
        return (NO_STAGE, 0);
    }
    let stage = calls.calls[(depth - 1) & (MAX_DEPTH - 1)].stage;
    let frame_ns = if calls.frame_level != 0 {
        calls.frame_ns
    } else {
        0
    };
    (stage, frame_ns)
}
