//! Following the traced processes' descendants (attached only when asked):
//! a process forked by a traced process joins the pid filter (`PIDS`)
//! before it first runs, and leaves it when its last thread exits. Exec
//! keeps the tgid, so `bash -c 'prog; prog'` is followed into both progs.
use core::ptr::read_volatile;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};

use crate::{maps::PIDS, memory::field};

/// task:task_newtask: `pid` (the new task) and `clone_flags`
/// (/sys/kernel/tracing/events/task/task_newtask/format).
const NEWTASK_PID: usize = 8;
const NEWTASK_CLONE_FLAGS: usize = 32;
/// A new thread of the same process (not a new process).
const CLONE_THREAD: u64 = 0x0001_0000;
/// sched:sched_process_exit: `group_dead` (Linux 6.16+; the agent sets
/// `EXIT_HAS_GROUP_DEAD` when the format file has it at this offset).
const EXIT_GROUP_DEAD: usize = 32;

/// Non-zero: sched_process_exit carries `group_dead` at [`EXIT_GROUP_DEAD`];
/// zero: a process is taken as gone when its main thread exits.
#[no_mangle]
static EXIT_HAS_GROUP_DEAD: u32 = 0;

/// Runs in the parent while the child is created (before it can run).
#[tracepoint]
pub fn follow_fork(ctx: TracePointContext) -> u32 {
    if field::<u64>(&ctx, NEWTASK_CLONE_FLAGS) & CLONE_THREAD != 0 {
        return 0;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: only presence is checked.
    if unsafe { PIDS.get(&parent) }.is_none() {
        return 0;
    }
    let child = field::<i32>(&ctx, NEWTASK_PID) as u32;
    // A full map (MAX_PIDS processes): the child is not traced.
    let _ = PIDS.insert(&child, &1, 0);
    0
}

/// Runs in the exiting thread.
#[tracepoint]
pub fn follow_exit(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: read of a load-time constant.
    let gone = if unsafe { read_volatile(&EXIT_HAS_GROUP_DEAD) } != 0 {
        field::<u8>(&ctx, EXIT_GROUP_DEAD) != 0
    } else {
        pid_tgid as u32 == tgid
    };
    if gone {
        let _ = PIDS.remove(&tgid);
    }
    0
}
