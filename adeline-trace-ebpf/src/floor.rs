//! Empty entry and exit programs: the cost floor of a uprobe+uretprobe pair,
//! used only by the overhead benchmark (`run --probe-floor`).
use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

#[uprobe]
pub fn floor_entry(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe]
pub fn floor_exit(_ctx: RetProbeContext) -> u32 {
    0
}
