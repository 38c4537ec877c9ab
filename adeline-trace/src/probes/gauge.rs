//! Probe kind `gauge`: an integer argument (at entry) or the return value
//! of functions, recorded on every call. The cookie carries the gauge id
//! and the argument index. Kernel side: adeline-trace-ebpf/src/gauge.rs.
use adeline_trace_common::gauge_cookie;

use crate::symbols::{placement::Needs, TargetError};

use super::{
    resolve::Resolver,
    site::{ProbeSite, Program},
    usdt::UsdtValue,
};

/// A gauge: NAME=TARGET:SYMBOL:argN|ret, or a USDT probe's argument or
/// hits (NAME=usdt:TARGET:PROVIDER:PROBE[:argN], `symbol` =
/// PROVIDER:PROBE; see [`super::usdt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaugeSpec {
    pub name: String,
    pub target: String,
    pub symbol: String,
    pub source: GaugeSource,
}

/// Where a gauge's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaugeSource {
    /// Integer argument N (0..=5) at entry.
    Arg(u8),
    /// Return value.
    Ret,
    /// A USDT probe's argument, or 1 per hit ([`super::usdt`]).
    Usdt(UsdtValue),
}

/// An argument gauge's program (at entry).
pub const ARG: &[Program] = &[Program::entry("gauge_arg")];
/// A return-value gauge's program.
pub const RET: &[Program] = &[Program::ret("gauge_ret")];

/// Sites of function gauge `id`: every function its target and symbol
/// match (a USDT gauge has none here: [`super::usdt::gauge_sites`]).
pub fn sites(
    resolver: &mut Resolver<'_>,
    id: u32,
    gauge: &GaugeSpec,
) -> Result<Vec<ProbeSite>, TargetError> {
    // An argument gauge's probe must come before its register changes.
    let (programs, cookie, needs) = match gauge.source {
        GaugeSource::Arg(n) => (ARG, gauge_cookie(id, n), Needs::arg(n)),
        GaugeSource::Ret => (RET, u64::from(id), Needs::CALL),
        GaugeSource::Usdt(_) => return Ok(Vec::new()),
    };
    let (name, target, symbol) = (&gauge.name, &gauge.target, &gauge.symbol);
    resolver.functions(name, cookie, target, symbol, programs, &needs)
}
