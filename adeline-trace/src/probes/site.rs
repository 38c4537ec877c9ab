//! What every probe kind produces and shares: the programs of the kernel
//! object ([`Program`], [`Tracepoint`]), the places to attach them
//! ([`ProbeSite`]) and [`ProbeError`].
use std::path::PathBuf;

use thiserror::Error;

use crate::symbols::placement::Placement;

use super::attach::UprobeSpec;

/// A kernel program of the object, and whether it ends calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    /// It ends calls: a uretprobe, a probe on an exit instruction or an
    /// unwind hook. Attached before every entry program, so no entry is
    /// recorded without its end being watched.
    pub ret: bool,
}

impl Program {
    pub const fn entry(name: &'static str) -> Program {
        Program { name, ret: false }
    }

    /// A uretprobe.
    pub const fn ret(name: &'static str) -> Program {
        Program { name, ret: true }
    }

    /// A uprobe that ends calls (exit instructions, unwind hooks).
    pub const fn exit(name: &'static str) -> Program {
        Program { name, ret: true }
    }
}

/// A kernel tracepoint program and the event it attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracepoint {
    pub program: &'static str,
    pub category: &'static str,
    pub event: &'static str,
}

impl Tracepoint {
    pub const fn new(program: &'static str, category: &'static str, event: &'static str) -> Self {
        Tracepoint {
            program,
            category,
            event,
        }
    }
}

/// One place to attach: a function (or an instruction) in a file, for one
/// stage, gauge or kind, with the programs attached there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSite {
    /// Stage or gauge name (what errors and the `start` record name).
    pub stage: String,
    /// The attach cookie (stage id, gauge id + argument index, ...).
    pub cookie: u64,
    /// File to attach to (inside the process's mount namespace if a pid was given).
    pub path: PathBuf,
    /// Demangled name of the function.
    pub symbol: String,
    /// File offset of the function.
    pub offset: u64,
    /// Where its probes sit, from the function's entry.
    pub placement: Placement,
    /// File offset of the USDT semaphore the kernel raises while the probe
    /// is attached (0: none).
    pub ref_ctr_offset: u64,
    /// Programs attached here, in attach order.
    pub programs: &'static [Program],
}

impl ProbeSite {
    /// The file offset the kernel probes: the function plus its placement.
    pub fn probe_offset(&self) -> u64 {
        self.offset + self.placement.offset
    }

    /// What the attach module needs of the site.
    pub fn spec(&self) -> UprobeSpec {
        UprobeSpec {
            offset: self.probe_offset(),
            cookie: self.cookie,
            ref_ctr_offset: self.ref_ctr_offset,
        }
    }
}

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("adeline-trace needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs: run it with sudo")]
    NotPrivileged,
    #[error("loading the eBPF programs failed: {0}")]
    Load(String),
    #[error("attaching stage '{stage}' to {symbol} in {path} failed: {reason}")]
    Attach {
        stage: String,
        symbol: String,
        path: String,
        reason: String,
    },
    #[error("reading BPF map {map} failed: {reason}")]
    Map { map: &'static str, reason: String },
}

/// Joins an error and its sources into one line.
pub(crate) use crate::format::error_chain as chain;
