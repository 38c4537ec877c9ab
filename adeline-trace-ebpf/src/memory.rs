//! Memory mappings of traced processes: the mmap and munmap syscall
//! tracepoints, filtered by tgid in the kernel (attached only when the
//! traced pids are known), attributed to the traced stage running on the
//! thread (the innermost open call of the stage programs' stack).
use adeline_trace_common::{
    MapRecord, COUNTER_OTHER_RING_FULL, KIND_MAP, MAP_OP_MMAP, MAP_OP_MUNMAP,
};
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    maps::{bump, pid_allowed, EVENTS},
    stage::current_stage,
};

/// Offset of `len` in sys_enter_mmap and sys_enter_munmap
/// (/sys/kernel/tracing/events/syscalls/sys_enter_mmap/format).
const LEN_OFFSET: usize = 24;

#[tracepoint]
pub fn mem_mmap(ctx: TracePointContext) -> u32 {
    on_map(&ctx, MAP_OP_MMAP);
    0
}

#[tracepoint]
pub fn mem_munmap(ctx: TracePointContext) -> u32 {
    on_map(&ctx, MAP_OP_MUNMAP);
    0
}

#[inline(always)]
fn on_map(ctx: &TracePointContext, op: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !pid_allowed((pid_tgid >> 32) as u32) {
        return;
    }
    // SAFETY: reading a field at its offset in the tracepoint record.
    let Ok(bytes) = (unsafe { ctx.read_at::<u64>(LEN_OFFSET) }) else {
        return;
    };
    let (stage, frame_ns) = current_stage();
    match EVENTS.reserve::<MapRecord>(0) {
        Some(mut entry) => {
            entry.write(MapRecord {
                kind: KIND_MAP,
                op,
                pid: (pid_tgid >> 32) as u32,
                tid: pid_tgid as u32,
                stage,
                _pad: 0,
                // SAFETY: plain helper call.
                ts_ns: unsafe { bpf_ktime_get_ns() },
                bytes,
                frame_ns,
            });
            entry.submit(BPF_RB_NO_WAKEUP as u64);
        }
        None => bump(COUNTER_OTHER_RING_FULL),
    }
}
