//! Memory of traced processes, from kernel tracepoints filtered by tgid in
//! the kernel (attached only when the traced pids are known):
//! - mmap/munmap/mremap/brk syscalls: bytes mapped and released, attributed
//!   to the traced stage running on the thread (the innermost open call);
//! - `kmem:rss_stat`: the resident set per mm, kept in a map the agent
//!   reads, and the resident bytes each stage's page faults (and frees)
//!   added, per stage.
use adeline_trace_common::{
    stage_slot, MapRecord, COUNTER_OTHER_RING_FULL, KIND_MAP, MAP_OP_MMAP, MAP_OP_MUNMAP,
};
use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};

use crate::{
    maps::{bump, pid_allowed, BRKS, EVENTS, MM_IDS, RSS, RSS_SCRATCH, STAGE_RSS},
    stage::current_stage,
};

/// Offset of `len` in sys_enter_mmap and sys_enter_munmap
/// (/sys/kernel/tracing/events/syscalls/sys_enter_mmap/format).
const LEN_OFFSET: usize = 24;
/// `old_len` and `new_len` in sys_enter_mremap.
const MREMAP_OLD_LEN: usize = 24;
const MREMAP_NEW_LEN: usize = 32;
/// `ret` in sys_exit_brk (the new program break).
const BRK_RET: usize = 16;
/// kmem:rss_stat: `mm_id` (u32), `curr` (u32), `member` (int), `size` (long).
const RSS_MM_ID: usize = 8;
const RSS_CURR: usize = 12;
const RSS_MEMBER: usize = 16;
const RSS_SIZE: usize = 24;
/// The `member` of swap entries (not resident).
const MM_SWAPENTS: usize = 2;

/// A field of the tracepoint record at `offset`, loaded directly from the
/// context (tracepoint programs may read their record; a probe-read helper
/// call per field costs ~25 ns, which kmem:rss_stat pays per page fault).
#[inline(always)]
pub fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: `offset` is a field of this tracepoint's record (format file),
    // inside the record and aligned to the field's size.
    unsafe { read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

#[tracepoint]
pub fn mem_mmap(ctx: TracePointContext) -> u32 {
    if let Some(tgid) = traced() {
        emit(tgid, MAP_OP_MMAP, field::<u64>(&ctx, LEN_OFFSET));
    }
    0
}

#[tracepoint]
pub fn mem_munmap(ctx: TracePointContext) -> u32 {
    if let Some(tgid) = traced() {
        emit(tgid, MAP_OP_MUNMAP, field::<u64>(&ctx, LEN_OFFSET));
    }
    0
}

/// A mremap changes a mapping's length by new_len - old_len (as asked).
#[tracepoint]
pub fn mem_mremap(ctx: TracePointContext) -> u32 {
    if let Some(tgid) = traced() {
        let old = field::<u64>(&ctx, MREMAP_OLD_LEN);
        change(tgid, old, field::<u64>(&ctx, MREMAP_NEW_LEN));
    }
    0
}

/// brk returns the program break in force: the heap moved by its change
/// since the last brk of the process (the first one only sets the base).
#[tracepoint]
pub fn mem_brk(ctx: TracePointContext) -> u32 {
    if let Some(tgid) = traced() {
        let now = field::<u64>(&ctx, BRK_RET);
        // SAFETY: the value is copied out.
        let before = unsafe { BRKS.get(&tgid) }.copied();
        let _ = BRKS.insert(&tgid, &now, 0);
        if let Some(before) = before {
            change(tgid, before, now);
        }
    }
    0
}

/// `kmem:rss_stat`: a resident-page counter of an mm changed. Events of a
/// traced process's own threads (curr = 1) record its mm; events raised on
/// its mm by other tasks (reclaim, exit) update an mm already recorded.
#[tracepoint]
pub fn mem_rss(ctx: TracePointContext) -> u32 {
    let mm_id = u64::from(field::<u32>(&ctx, RSS_MM_ID));
    let curr = field::<u32>(&ctx, RSS_CURR);
    let member = (field::<i32>(&ctx, RSS_MEMBER) as usize) & 3;
    let size = field::<i64>(&ctx, RSS_SIZE);
    if let Some(state) = RSS.get_ptr_mut(&mm_id) {
        // SAFETY: a map value; a concurrent update of another member of the
        // same mm may be lost until that member changes again.
        let before = unsafe {
            let before = (*state).member_bytes[member];
            (*state).member_bytes[member] = size;
            (*state).updates += 1;
            before
        };
        // The process's own thread changed its resident pages (swap
        // entries are not resident): charge the stage it is running.
        if curr != 0 && member != MM_SWAPENTS {
            let (stage, _) = current_stage();
            if let Some(p) = STAGE_RSS.get_ptr_mut(stage_slot(stage)) {
                // SAFETY: per-CPU slot, no concurrent writer on this CPU.
                unsafe { *p += size - before };
            }
        }
        return 0;
    }
    if curr == 0 {
        return 0;
    }
    let Some(tgid) = traced() else {
        return 0;
    };
    // The state is built in a per-CPU scratch slot (too big for the stack);
    // `shares` is the tp_btf path's and not read here.
    let Some(state) = RSS_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot.
    unsafe {
        (*state).member_bytes = [0; 4];
        (*state).member_bytes[member] = size;
        (*state).updates = 1;
        (*state).owner = tgid;
        let _ = RSS.insert(&mm_id, &*state, 0);
    }
    let _ = MM_IDS.insert(&tgid, &mm_id, 0);
    0
}

/// The current tgid when it is traced.
#[inline(always)]
fn traced() -> Option<u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    pid_allowed(tgid).then_some(tgid)
}

/// Emits the growth or shrinking from `before` to `after` bytes.
#[inline(always)]
fn change(tgid: u32, before: u64, after: u64) {
    if after > before {
        emit(tgid, MAP_OP_MMAP, after - before);
    } else if before > after {
        emit(tgid, MAP_OP_MUNMAP, before - after);
    }
}

#[inline(always)]
fn emit(tgid: u32, op: u32, bytes: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (stage, frame_ns) = current_stage();
    match EVENTS.reserve::<MapRecord>(0) {
        Some(mut entry) => {
            entry.write(MapRecord {
                kind: KIND_MAP,
                op,
                pid: tgid,
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
