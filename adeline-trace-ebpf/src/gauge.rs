//! Gauges: an integer argument (uprobe) or return value (uretprobe) of a
//! function, sampled on every call. The gauge id and argument index travel
//! in the attach cookie (see `gauge_cookie`).
use adeline_trace_common::{GaugeRecord, COUNTER_RING_FULL, KIND_GAUGE};
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
    let value: Option<u64> = match (cookie >> 32) as u8 {
        0 => ctx.arg(0),
        1 => ctx.arg(1),
        2 => ctx.arg(2),
        3 => ctx.arg(3),
        4 => ctx.arg(4),
        5 => ctx.arg(5),
        _ => None,
    };
    if let Some(v) = value {
        emit(cookie as u32, v as i64);
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
fn emit(gauge: u32, value: i64) {
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
        None => bump(COUNTER_RING_FULL),
    }
}
