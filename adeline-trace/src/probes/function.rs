//! Probe kind `function`: a stage timed at the entry and return of
//! functions (a uprobe and a uretprobe each), with the stage id as the
//! attach cookie. Kernel side: adeline-trace-ebpf/src/stage.rs.
use crate::symbols::{placement::Needs, TargetError};

use super::{
    resolve::Resolver,
    site::{ProbeSite, Program},
};

/// The programs of a timed function: the return before the entry, so no
/// entry is recorded without its return being watched.
pub const PROGRAMS: &[Program] = &[Program::ret("stage_exit"), Program::entry("stage_entry")];

/// Sites of stage `id` named `name`: every function of `target` matching
/// `symbol` (see [`Resolver::functions`]).
pub fn sites(
    resolver: &mut Resolver<'_>,
    id: u32,
    name: &str,
    target: &str,
    symbol: &str,
) -> Result<Vec<ProbeSite>, TargetError> {
    resolver.functions(name, u64::from(id), target, symbol, PROGRAMS, &Needs::CALL)
}
