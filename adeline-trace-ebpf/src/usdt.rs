//! USDT probes (probes/usdt.rs): an entry/return pair of probes times a
//! stage (`usdt_entry` at the entry probe, `usdt_return` at the return
//! probe), and a single probe feeds a gauge with one decoded
//! argument (`usdt_arg`), or the value 1 per hit (an event).
//!
//! The maps of this concern are declared here rather than in maps.rs.
use adeline_trace_common::{
    usdt::{
        UsdtArgSpec, MAX_USDT_ARGS, USDT_ARG_CONST, USDT_ARG_DEREF, USDT_ARG_HIT, USDT_ARG_REG,
    },
    OPEN_USDT,
};
use aya_ebpf::{
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user,
    },
    macros::{map, uprobe},
    maps::Array,
    programs::ProbeContext,
    EbpfContext,
};

use crate::{
    gauge::emit,
    stage::{end_stage, open_stage},
};

/// How to decode each `usdt_arg` site's argument (index = attach cookie).
#[map(name = "USDT_ARGS")]
static USDT_ARGS: Array<UsdtArgSpec> = Array::with_max_entries(MAX_USDT_ARGS, 0);

/// Size of the kernel's x86-64 `struct pt_regs`.
const PT_REGS_SIZE: u32 = 168;

/// The entry probe of a USDT stage: opens a call, marked `OPEN_USDT`.
#[uprobe]
pub fn usdt_entry(ctx: ProbeContext) -> u32 {
    open_stage(&ctx, OPEN_USDT)
}

/// The return probe of a USDT stage: ends the innermost open call of the
/// stage (the cookie) on this thread, as a function's return would.
#[uprobe]
pub fn usdt_return(ctx: ProbeContext) -> u32 {
    // SAFETY: plain helper calls on the probe's own context.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let stage = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    end_stage(stage, now, pid_tgid);
    0
}

/// A USDT gauge: decodes the site's argument (see [`UsdtArgSpec`]) and
/// records it, as libbpf's usdt.bpf.h does.
#[uprobe]
pub fn usdt_arg(ctx: ProbeContext) -> u32 {
    // SAFETY: helper on the probe's own context.
    let index = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some(spec) = USDT_ARGS.get(index) else {
        return 0;
    };
    let raw = match spec.kind {
        USDT_ARG_CONST => spec.value as u64,
        USDT_ARG_HIT => 1,
        USDT_ARG_REG | USDT_ARG_DEREF => {
            let off = spec.reg_off;
            if off > PT_REGS_SIZE - 8 {
                return 0;
            }
            // A computed offset into the context is refused by the
            // verifier as a load; through the helper it is a plain read.
            // SAFETY: bpf_probe_read_kernel checks the address.
            let reg = match unsafe {
                bpf_probe_read_kernel((ctx.regs as *const u8).add(off as usize) as *const u64)
            } {
                Ok(v) => v,
                Err(_) => return 0,
            };
            if spec.kind == USDT_ARG_REG {
                reg
            } else {
                let addr = (reg as i64).wrapping_add(spec.value) as *const u64;
                // SAFETY: bpf_probe_read_user checks the address.
                match unsafe { bpf_probe_read_user(addr) } {
                    Ok(v) => v,
                    Err(_) => return 0,
                }
            }
        }
        _ => return 0,
    };
    let shift = spec.bitshift & 63;
    let value = match spec.signed {
        0 => ((raw << shift) >> shift) as i64,
        _ => ((raw << shift) as i64) >> shift,
    };
    emit(spec.gauge, value);
    0
}
