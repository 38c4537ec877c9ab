//! The resident set from the BTF raw tracepoint `tp_btf/rss_stat`, which
//! the default memory mode uses when the kernel's BTF gives the layouts
//! below (else `mem_rss`, the classic `kmem:rss_stat`, in memory.rs).
//!
//! The raw tracepoint passes `(struct mm_struct *mm, int member)` and
//! skips what the classic one does before any program runs: building the
//! trace record, whose `size` is the counter's sum over CPUs taken under
//! its spinlock with interrupts off. This program reads the same sum
//! itself, without the lock: `mm->rss_stat[member]` is a `percpu_counter`
//! (`count` plus one `s32` per CPU); its lock and `count`, loaded directly
//! through the typed `mm`, are read twice around the per-CPU reads;
//! the sum counts only if the lock was free and `count` unchanged both
//! times (a CPU folding its share into `count` holds the lock and changes
//! `count`), so every stored value is a sum the kernel itself could have
//! reported at that instant.
//!
//! aya-ebpf has no CO-RE field access and this kernel's BTF has no
//! `__percpu` tags, so the agent reads the offsets from
//! /sys/kernel/btf/vmlinux (load-time constants below) and the per-CPU
//! area offsets are found once, in the kernel, from a per-CPU array of
//! this program's own: `bpf_map_lookup_percpu_elem` gives each CPU's copy
//! of its element and `struct bpf_array`'s `pptrs[0]` the per-CPU pointer
//! they share.
use adeline_trace_common::{stage_slot, RSS_MAX_CPUS};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_get_smp_processor_id,
        bpf_map_lookup_percpu_elem, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map},
    maps::{Array, PerCpuArray},
    programs::BtfTracePointContext,
};
use core::{
    ffi::c_void,
    ptr::{read_volatile, write_volatile},
};

use crate::{
    maps::{pid_allowed, MM_IDS, RSS, RSS_SCRATCH, STAGE_RSS},
    stage::current_stage,
};

/// Most CPUs handled (the agent uses the classic tracepoint above).
const MAX_CPUS: u32 = RSS_MAX_CPUS as u32;
/// `member` values: file, anon, swap entries, shmem.
const MM_SWAPENTS: u64 = 2;
const MM_SHMEMPAGES: u64 = 3;

// Load-time constants from the kernel's BTF (0: the program is not used).
/// Offsets of `rss_stat[MM_FILEPAGES]`, `[MM_ANONPAGES]` and
/// `[MM_SHMEMPAGES]` in `struct mm_struct` (three constants, not one
/// offset times `member`: each load's offset must be known to the verifier).
#[no_mangle]
static RSS_FILE_OFF: u64 = 0;
#[no_mangle]
static RSS_ANON_OFF: u64 = 0;
#[no_mangle]
static RSS_SHMEM_OFF: u64 = 0;
/// Offsets of `lock`, `count` and `counters` in `struct percpu_counter`.
#[no_mangle]
static PCPU_LOCK_OFF: u64 = 0;
#[no_mangle]
static PCPU_COUNT_OFF: u64 = 0;
#[no_mangle]
static PCPU_COUNTERS_OFF: u64 = 0;
/// `offsetof(struct bpf_array, pptrs)` and `offsetof(struct task_struct, mm)`.
#[no_mangle]
static BPF_ARRAY_PPTRS_OFF: u64 = 0;
#[no_mangle]
static TASK_MM_OFF: u64 = 0;
/// Possible CPUs (`nr_cpu_ids`, at most `MAX_CPUS`) and the page shift.
#[no_mangle]
static NR_CPUS: u32 = 0;
#[no_mangle]
static PAGE_SHIFT: u64 = 12;

/// Each CPU's per-CPU area offset (index = CPU; slot `MAX_CPUS`: non-zero
/// once found).
#[map(name = "RSS_CPU_OFF")]
static CPU_OFF: Array<u64> = Array::with_max_entries(MAX_CPUS + 1, 0);

/// A per-CPU array whose copies give the per-CPU offsets; slot 0 of each
/// CPU is also where a pointer is stored to be read back as a number.
#[map(name = "RSS_PCPU")]
static PCPU: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn konst(v: &u64) -> u64 {
    // SAFETY: read of a load-time constant.
    unsafe { read_volatile(v) }
}

/// `v` (a kernel pointer the verifier types) as a plain number: stored in
/// this CPU's slot and read back.
#[inline(always)]
fn number(v: u64) -> Option<u64> {
    let slot = PCPU.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; programs do not migrate while running.
    unsafe {
        write_volatile(slot, v);
        Some(read_volatile(slot))
    }
}

#[inline(always)]
fn read<T: Copy>(addr: u64) -> Option<T> {
    // SAFETY: the helper copies from kernel memory or fails.
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// Finds the per-CPU offsets (once).
#[inline(always)]
fn cpu_offsets_ready() -> bool {
    let Some(done) = CPU_OFF.get_ptr_mut(MAX_CPUS) else {
        return false;
    };
    // SAFETY: an array slot.
    if unsafe { read_volatile(done) } != 0 {
        return true;
    }
    let map = core::ptr::from_ref(&PCPU).cast_mut().cast::<c_void>();
    let Some(base) = number(map as u64).and_then(|m| read::<u64>(m + konst(&BPF_ARRAY_PPTRS_OFF)))
    else {
        return false;
    };
    // SAFETY: read of a load-time constant.
    let nr = unsafe { read_volatile(&NR_CPUS) };
    let key = 0u32;
    for cpu in 0..MAX_CPUS {
        if cpu >= nr {
            break;
        }
        // SAFETY: the helper takes this map and key.
        let copy = unsafe { bpf_map_lookup_percpu_elem(map, (&raw const key).cast(), cpu) };
        if copy.is_null() {
            return false;
        }
        let (Some(addr), Some(slot)) = (number(copy as u64), CPU_OFF.get_ptr_mut(cpu)) else {
            return false;
        };
        // SAFETY: an array slot.
        unsafe { write_volatile(slot, addr.wrapping_sub(base)) };
    }
    // SAFETY: an array slot.
    unsafe { write_volatile(done, 1) };
    true
}

/// A field of `mm_struct` at `off`, loaded directly: `mm` is the
/// tracepoint's typed argument and `off` a load-time constant on every
/// path, so the verifier checks the access against the kernel's BTF (no
/// helper call).
#[inline(always)]
fn field<T: Copy>(mm: *const u8, off: u64) -> T {
    // SAFETY: `off` is inside `struct mm_struct` (from its BTF), checked
    // again by the verifier.
    unsafe { read_volatile(mm.add(off as usize).cast::<T>()) }
}

/// Offset of `mm->rss_stat[member]` (members 0, 1, 3).
#[inline(always)]
fn counter_off(member: u64) -> u64 {
    match member {
        0 => konst(&RSS_FILE_OFF),
        1 => konst(&RSS_ANON_OFF),
        _ => konst(&RSS_SHMEM_OFF),
    }
}

/// The pages `mm->rss_stat[member]` counts: `count` plus every CPU's
/// share, or None when a CPU was folding its share during the read (twice).
/// The shares read go to `shares` when given.
#[inline(always)]
fn counter_sum(mm: *const u8, member: u64, shares: *mut [i32; RSS_MAX_CPUS]) -> Option<i64> {
    let fbc = counter_off(member);
    let (lock_off, count_off) = (fbc + konst(&PCPU_LOCK_OFF), fbc + konst(&PCPU_COUNT_OFF));
    // SAFETY: read of a load-time constant.
    let nr = unsafe { read_volatile(&NR_CPUS) };
    for _ in 0..2 {
        if field::<u32>(mm, lock_off) != 0 {
            continue;
        }
        let count = field::<i64>(mm, count_off);
        let counters = field::<u64>(mm, fbc + konst(&PCPU_COUNTERS_OFF));
        let mut sum = count;
        for cpu in 0..MAX_CPUS {
            if cpu >= nr {
                break;
            }
            let off = *CPU_OFF.get(cpu)?;
            let share = read::<i32>(counters.wrapping_add(off))?;
            if !shares.is_null() {
                // SAFETY: a map value's array, index below its length.
                unsafe { (*shares)[cpu as usize & (RSS_MAX_CPUS - 1)] = share };
            }
            sum += i64::from(share);
        }
        if field::<i64>(mm, count_off) == count && field::<u32>(mm, lock_off) == 0 {
            return Some(sum);
        }
    }
    None
}

/// Index of `member` (0, 1, 3) in `RssState::shares`.
#[inline(always)]
fn share_row(member: u64) -> usize {
    match member {
        0 => 0,
        1 => 1,
        _ => 2,
    }
}

/// `tp_btf/rss_stat`: a resident-page counter of `mm` changed, on this
/// CPU. As `mem_rss`: events of a traced process's own threads record its
/// mm (all three resident counters at once), events of its threads charge
/// the change to the stage running; events raised on a recorded mm by
/// other tasks (reclaim) update it. Swap entries (not resident) are
/// skipped.
///
/// Only this CPU's share of the counter changes on this CPU, so the
/// change is the share now minus the share this program last saw here
/// (one read, of this CPU's own memory), added to the mm's total. A share
/// of 0 may mean the CPU just folded it into `count` (at `percpu_counter`'s
/// batch, 32 pages on small machines): then the whole counter is summed
/// (every CPU's share; reading other CPUs' memory costs a cache miss each
/// when they are busy, hence not on every event) and the total reset.
#[btf_tracepoint(function = "rss_stat")]
pub fn mem_rss_btf(ctx: BtfTracePointContext) -> i32 {
    let member: u64 = ctx.arg::<u64>(1) & 0xffff_ffff;
    if member == MM_SWAPENTS || member > MM_SHMEMPAGES {
        return 0;
    }
    let mm: *const u8 = ctx.arg(0);
    // The map key is the pointer's value (privileged programs may store a
    // pointer on the stack and hash it).
    let key = mm as u64;
    let Some(state) = RSS.get_ptr_mut(&key) else {
        first_event(mm, key);
        return 0;
    };
    // SAFETY: plain helper call.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(&off) = CPU_OFF.get(cpu) else {
        return 0;
    };
    let counters = field::<u64>(mm, counter_off(member) + konst(&PCPU_COUNTERS_OFF));
    let Some(share) = read::<i32>(counters.wrapping_add(off)) else {
        return 0;
    };
    let shift = konst(&PAGE_SHIFT);
    let row = share_row(member);
    // SAFETY: a map value; indexes masked to the arrays' lengths.
    let (added, owner) = unsafe {
        let seen = &mut (*state).shares[row][cpu as usize & (RSS_MAX_CPUS - 1)];
        let slot = &raw mut (*state).member_bytes[member as usize & 3];
        let added = if share != 0 {
            let bytes = i64::from(share - *seen) << shift;
            *seen = share;
            // Threads on other CPUs add to the same total: two adds at the
            // same instant may lose one until the next fold resets it (the
            // BPF target has no atomic add in Rust's core).
            *slot += bytes;
            bytes
        } else {
            let Some(pages) = counter_sum(mm, member, &raw mut (*state).shares[row]) else {
                return 0;
            };
            let bytes = pages << shift;
            let before = *slot;
            *slot = bytes;
            bytes - before
        };
        (*state).updates += 1;
        (added, (*state).owner)
    };
    if (bpf_get_current_pid_tgid() >> 32) as u32 == owner {
        let (stage, _) = current_stage();
        if let Some(p) = STAGE_RSS.get_ptr_mut(stage_slot(stage)) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *p += added };
        }
    }
    0
}

/// The first event of an mm: recorded when raised by a traced process's
/// own thread, with its three resident counters and every CPU's shares.
#[inline(always)]
fn first_event(mm: *const u8, key: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !pid_allowed(tgid) || !cpu_offsets_ready() {
        return;
    }
    // SAFETY: the current task; the helper returns it.
    let task = unsafe { bpf_get_current_task_btf() };
    let own = number(task as u64).and_then(|t| read::<u64>(t + konst(&TASK_MM_OFF)));
    if own != Some(key) {
        return;
    }
    let Some(state) = RSS_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let shift = konst(&PAGE_SHIFT);
    // SAFETY: this CPU's scratch slot.
    unsafe {
        (*state).member_bytes = [0; 4];
        (*state).owner = tgid;
        (*state).updates = 1;
        for member in [0u64, 1, MM_SHMEMPAGES] {
            let shares = &raw mut (*state).shares[share_row(member)];
            let Some(pages) = counter_sum(mm, member, shares) else {
                return;
            };
            (*state).member_bytes[member as usize & 3] = pages << shift;
        }
        let _ = RSS.insert(&key, &*state, 0);
    }
    let _ = MM_IDS.insert(&tgid, &key, 0);
}
