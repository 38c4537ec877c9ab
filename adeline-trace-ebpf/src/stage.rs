//! Generic stage timing: one entry and one exit program serve every stage;
//! the stage id is the attach cookie.
use adeline_trace_common::{
    OpenCall, SpanRecord, ThreadCalls, COUNTER_DEPTH_OVERFLOW, COUNTER_FILTERED_SHORT,
    COUNTER_RING_FULL, COUNTER_UNMATCHED_EXIT, KIND_SPAN, MAX_DEPTH, NO_STAGE,
};
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};

use crate::maps::{bump, frame_stage, min_duration, pid_allowed, EVENTS, THREADS};

#[uprobe]
pub fn stage_entry(ctx: ProbeContext) -> u32 {
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
    let depth = calls.depth as usize;
    if depth < MAX_DEPTH {
        calls.calls[depth] = OpenCall {
            stage,
            _pad: 0,
            start_ns: now,
            child_ns: 0,
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
    let calls = THREADS.current(false);
    if calls.is_null() {
        // Probes for every process with the pid filter on (following
        // children): an untraced process's return is not unmatched.
        if pid_allowed((pid_tgid >> 32) as u32) {
            bump(COUNTER_UNMATCHED_EXIT);
        }
        return 0;
    }
    // SAFETY: task-local storage of the current thread: no other writer.
    let calls = unsafe { &mut *calls };
    let depth = calls.depth as usize;
    if depth == 0 {
        bump(COUNTER_UNMATCHED_EXIT);
        return 0;
    }
    if depth > MAX_DEPTH {
        calls.depth -= 1;
        return 0;
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
            return 0;
        }
    }
    let start_ns = calls.calls[found].start_ns;
    let child_ns = calls.calls[found].child_ns;
    calls.depth = found as u32;
    let dur_ns = now.wrapping_sub(start_ns);
    // This call is part of its parent's child time (filtered or not).
    if found > 0 {
        let parent = &mut calls.calls[(found - 1) & (MAX_DEPTH - 1)];
        parent.child_ns = parent.child_ns.wrapping_add(dur_ns);
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
    if dur_ns < min_duration() {
        bump(COUNTER_FILTERED_SHORT);
        return 0;
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
                self_ns: dur_ns.saturating_sub(child_ns),
                frame_ns,
                depth: found as u32,
                _pad: 0,
            });
            entry.submit(BPF_RB_NO_WAKEUP as u64);
        }
        None => bump(COUNTER_RING_FULL),
    }
    0
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
