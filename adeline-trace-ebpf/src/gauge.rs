//! Gauges: an integer argument (uprobe) or return value (uretprobe) of a
//! function, sampled on every call. The gauge id and argument index travel
//! in the attach cookie (see `gauge_cookie`).
use core::ptr::read_volatile;

use adeline_trace_common::{GaugeRecord, COUNTER_OTHER_RING_FULL, KIND_GAUGE};
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};

use crate::maps::{bump, pid_allowed, EVENTS};

#[uprobe]
pub fn gauge_arg(ctx: ProbeContext) -> u32 {
    // SAFETY: helper on the probe's own context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    // Each register is read with its own fixed-offset (volatile) load: the
    // verifier rejects a ctx load at a computed offset, which is what the
    // compiler makes of a `match` over `ctx.arg(n)`.
    // SAFETY: ctx.regs points at the probe's pt_regs.
    let args = unsafe {
        let r = ctx.regs;
        [
            read_volatile(&raw const (*r).rdi),
            read_volatile(&raw const (*r).rsi),
            read_volatile(&raw const (*r).rdx),
            read_volatile(&raw const (*r).rcx),
            read_volatile(&raw const (*r).r8),
            read_volatile(&raw const (*r).r9),
        ]
    };
    let idx = (cookie >> 32) as usize;
    if idx < args.len() {
        emit(cookie as u32, args[idx] as i64);
    }
    0
}

#[uretprobe]
pub fn gauge_ret(ctx: RetProbeContext) -> u32 {
    // SAFETY: helper on the probe's own context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let v: u64 = ctx.ret();
    emit(cookie as u32, v as i64);
    0
}

#[inline(always)]
pub fn emit(gauge: u32, value: i64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !pid_allowed((pid_tgid >> 32) as u32) {
        return;
    }
    match EVENTS.reserve::<GaugeRecord>(0) {
        Some(mut entry) => {
            entry.write(GaugeRecord {
                kind: KIND_GAUGE,
                gauge,
                pid: (pid_tgid >> 32) as u32,
                tid: pid_tgid as u32,
                // SAFETY: plain helper call.
                ts_ns: unsafe { bpf_ktime_get_ns() },
                value,
            });
            entry.submit(BPF_RB_NO_WAKEUP as u64);
        }
        None => bump(COUNTER_OTHER_RING_FULL),
    }
}
