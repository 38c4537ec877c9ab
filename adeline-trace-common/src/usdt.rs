//! USDT gauges: how the kernel decodes one argument of a USDT probe from
//! the probe's registers, per the probe's note (`-4@%edi`, `8@-8(%rbp)`,
//! `4@$5`). The attach cookie of a `usdt_arg` site is its index in the
//! `USDT_ARGS` array, whose [`UsdtArgSpec`] says which gauge it feeds and
//! how to find the value.

/// The argument is the constant `UsdtArgSpec::value`.
pub const USDT_ARG_CONST: u32 = 0;
/// The argument is a register (`UsdtArgSpec::reg_off` in `pt_regs`).
pub const USDT_ARG_REG: u32 = 1;
/// The argument is in memory at register + `UsdtArgSpec::value`.
pub const USDT_ARG_DEREF: u32 = 2;
/// No argument: the probe is an event, every hit records the value 1.
pub const USDT_ARG_HIT: u32 = 3;

/// Most `usdt_arg` sites (over all USDT gauges).
pub const MAX_USDT_ARGS: u32 = 256;

/// One USDT gauge site: which gauge, and how to decode its argument.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtArgSpec {
    /// Gauge id (the `GaugeRecord::gauge` it records under).
    pub gauge: u32,
    /// `USDT_ARG_*`.
    pub kind: u32,
    /// Byte offset of the register in the kernel's x86-64 `struct pt_regs`.
    pub reg_off: u32,
    /// 64 minus the argument's size in bits: the value is shifted left and
    /// back by this much to truncate (and sign-extend) it.
    pub bitshift: u32,
    /// Non-zero: sign-extend (a negative size in the note).
    pub signed: u32,
    pub _pad: u32,
    /// The constant, or the displacement added to the register.
    pub value: i64,
}
