//! Alloc mode (`--alloc`): uprobes on the C library's allocator entry
//! points keep a map of outstanding allocations (address -> size, stage,
//! user stack, time) and per-stage totals, all in the kernel; nothing goes
//! through the ring buffer. The size threshold and 1-in-N sampling are
//! applied at entry, before any map work.
use core::ptr::read_volatile;

use adeline_trace_common::{
    stage_slot, AllocInfo, ALLOC_FN_ALIGNED, ALLOC_FN_CALLOC, ALLOC_FN_MALLOC, ALLOC_FN_MMAP,
    ALLOC_FN_POSIX_MEMALIGN, ALLOC_FN_REALLOC, COUNTER_ALLOC_MAP_FULL, COUNTER_ALLOC_NO_STACK,
    NO_STACK,
};
use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns,
        bpf_probe_read_user,
    },
    macros::{uprobe, uretprobe},
    programs::{tracing::StackIdContext, ProbeContext, RetProbeContext},
    EbpfContext,
};

use crate::{
    maps::{alloc_settings, bump, pid_allowed, ALLOCS, ALLOC_STACKS, ALLOC_STATS, ALLOC_THREADS},
    stage::current_stage,
};

#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    if !pid_allowed((bpf_get_current_pid_tgid() >> 32) as u32) {
        return 0;
    }
    let pending = ALLOC_THREADS.current(true);
    if pending.is_null() {
        return 0;
    }
    // SAFETY: task-local storage of the current thread: no other writer.
    let pending = unsafe { &mut *pending };
    pending.depth += 1;
    if pending.depth != 1 {
        // Inside another allocator call (malloc's own mmap): counted there.
        return 0;
    }
    // SAFETY: helper on the probe's own context.
    let kind = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    // Fixed-offset loads (the verifier rejects computed ctx offsets).
    // SAFETY: ctx.regs points at the probe's pt_regs.
    let (a0, a1, a2) = unsafe {
        let r = ctx.regs;
        (
            read_volatile(&raw const (*r).rdi),
            read_volatile(&raw const (*r).rsi),
            read_volatile(&raw const (*r).rdx),
        )
    };
    let (size, arg) = match kind {
        ALLOC_FN_MALLOC => (a0, 0),
        ALLOC_FN_CALLOC => (a0.wrapping_mul(a1), 0),
        ALLOC_FN_REALLOC => (a1, a0),
        ALLOC_FN_POSIX_MEMALIGN => (a2, a0),
        ALLOC_FN_ALIGNED | ALLOC_FN_MMAP => (a1, 0),
        _ => (0, 0),
    };
    let (min_bytes, sample, _) = alloc_settings();
    // SAFETY: plain helper call.
    let sampled = sample <= 1 || unsafe { bpf_get_prandom_u32() } % sample == 0;
    pending.kind = kind;
    pending.keep = u32::from(size >= min_bytes && sampled);
    pending.size = size;
    pending.arg = arg;
    0
}

#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !pid_allowed(tgid) {
        return 0;
    }
    let pending = ALLOC_THREADS.current(false);
    if pending.is_null() {
        return 0;
    }
    // SAFETY: task-local storage of the current thread: no other writer.
    let pending = unsafe { &mut *pending };
    if pending.depth == 0 {
        return 0;
    }
    pending.depth -= 1;
    if pending.depth != 0 {
        return 0;
    }
    let (kind, keep, size, arg) = (pending.kind, pending.keep, pending.size, pending.arg);
    pending.kind = 0;
    let ret: u64 = ctx.ret();
    let addr = match kind {
        ALLOC_FN_REALLOC => {
            // The old block is gone when realloc succeeds, or frees on size 0.
            if arg != 0 && (ret != 0 || size == 0) {
                forget(arg);
            }
            ret
        }
        ALLOC_FN_POSIX_MEMALIGN => {
            if ret as u32 != 0 || keep == 0 {
                return 0;
            }
            // SAFETY: reads the caller's pointer variable in user memory.
            unsafe { bpf_probe_read_user(arg as *const u64) }.unwrap_or(0)
        }
        ALLOC_FN_MMAP if ret == u64::MAX => 0,
        _ => ret,
    };
    if addr == 0 || keep == 0 {
        return 0;
    }
    // A block at an address still in the map was freed by a path not traced.
    forget(addr);
    let (stage, _) = current_stage();
    let (_, _, stacks) = alloc_settings();
    let stack_id = if stacks {
        // At the return probe the first frame is the allocator's caller.
        match ctx.get_stackid(&ALLOC_STACKS, BPF_F_USER_STACK as u64) {
            Ok(id) => id as u32,
            Err(_) => {
                bump(COUNTER_ALLOC_NO_STACK);
                NO_STACK
            }
        }
    } else {
        NO_STACK
    };
    let info = AllocInfo {
        size,
        // SAFETY: plain helper call.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        stage,
        stack_id,
        pid: tgid,
        _pad: 0,
    };
    if ALLOCS.insert(&addr, &info, 0).is_err() {
        bump(COUNTER_ALLOC_MAP_FULL);
        return 0;
    }
    if let Some(s) = ALLOC_STATS.get_ptr_mut(stage_slot(stage)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*s).allocs += 1;
            (*s).alloc_bytes += size;
        }
    }
    0
}

/// `free(ptr)` and `munmap(addr, len)`: the block is no longer outstanding.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    if !pid_allowed((bpf_get_current_pid_tgid() >> 32) as u32) {
        return 0;
    }
    // SAFETY: ctx.regs points at the probe's pt_regs.
    let addr = unsafe { read_volatile(&raw const (*ctx.regs).rdi) };
    if addr != 0 {
        forget(addr);
    }
    0
}

/// Removes `addr` from the outstanding map and counts it freed against the
/// stage that allocated it.
#[inline(always)]
fn forget(addr: u64) {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(info) = (unsafe { ALLOCS.get(&addr) }).copied() else {
        return;
    };
    if ALLOCS.remove(&addr).is_err() {
        return; // freed concurrently by another thread: counted there
    }
    if let Some(s) = ALLOC_STATS.get_ptr_mut(stage_slot(info.stage)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*s).frees += 1;
            (*s).freed_bytes += info.size;
        }
    }
}
