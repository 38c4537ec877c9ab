//! Following processes: the kernel side that lets a traced process's
//! children join the pid filter (kernel programs in
//! adeline-trace-ebpf/src/follow.rs), the pid filter's updates from the
//! agent (a process found running a target), and attaching and detaching
//! probe sites while the agent runs (a replaced binary, a reloaded config).
//!
//! Probes attached here are for every process (the pid filter, when on,
//! decides who is traced): a new process of a target must be traced from
//! its first call without attaching anything for it.
use aya::{
    maps::HashMap,
    programs::{
        uprobe::{UProbeAttachPoint, UProbeLinkId, UProbeScope},
        ProgramError, UProbe,
    },
    EbpfLoader,
};

use std::path::PathBuf;

use super::{
    attach_order, function,
    resolve::Resolver,
    site::{chain, ProbeError, ProbeSite, Program, Tracepoint},
    Location, Probes, StageSpec,
};
use crate::symbols::TargetError;

/// The fork and exit tracepoints that keep the pid filter following a
/// traced process's descendants.
pub const TRACEPOINTS: [Tracepoint; 2] = [
    Tracepoint::new("follow_fork", "task", "task_newtask"),
    Tracepoint::new("follow_exit", "sched", "sched_process_exit"),
];

/// Sets the kernel programs' configuration (the exit record's layout).
pub fn configure(loader: &mut EbpfLoader<'_>) {
    static YES: u32 = 1;
    static NO: u32 = 0;
    let has = if exit_has_group_dead() { &YES } else { &NO };
    loader.override_global("EXIT_HAS_GROUP_DEAD", has, true);
}

/// Whether sched_process_exit carries `group_dead` at offset 32 (Linux
/// 6.16+): the last thread's exit, rather than the main thread's.
fn exit_has_group_dead() -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .filter_map(|root| {
            std::fs::read_to_string(format!("{root}/events/sched/sched_process_exit/format")).ok()
        })
        .any(|format| has_field(&format, "bool group_dead", 32))
}

/// Whether a tracepoint format file declares `decl` at `offset`.
fn has_field(format: &str, decl: &str, offset: usize) -> bool {
    format.lines().any(|l| {
        let l = l.trim();
        l.starts_with(&format!("field:{decl};")) && l.contains(&format!("offset:{offset};"))
    })
}

/// One uprobe link: what it is for, to detach it later.
#[derive(Debug)]
pub struct SiteLink {
    program: &'static str,
    /// The site's cookie (stage id for stage sites).
    pub cookie: u64,
    /// A stage site (function entry or return), not a gauge or alloc site.
    pub stage: bool,
    /// The file attached to.
    pub path: PathBuf,
    id: UProbeLinkId,
}

/// Uprobe links, to detach later ([`Probes::detach_sites`]).
#[derive(Debug, Default)]
pub struct SiteLinks(Vec<SiteLink>);

impl SiteLinks {
    pub(super) fn push(&mut self, program: Program, site: &ProbeSite, id: UProbeLinkId) {
        self.0.push(SiteLink {
            program: program.name,
            cookie: site.cookie,
            stage: site.programs == function::PROGRAMS,
            path: site.path.clone(),
            id,
        });
    }

    /// Moves the links matching `pred` out.
    pub fn take(&mut self, pred: impl Fn(&SiteLink) -> bool) -> SiteLinks {
        let (taken, kept) = std::mem::take(&mut self.0).into_iter().partition(pred);
        self.0 = kept;
        SiteLinks(taken)
    }

    pub fn extend(&mut self, other: SiteLinks) {
        self.0.extend(other.0);
    }

    /// Number of kernel attachments.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The sites of stage `id` (the one place besides [`super::resolve_plan`]
/// that lists the kinds that time stages: a stage resolved while tracing).
pub fn stage_sites(
    resolver: &mut Resolver<'_>,
    id: u32,
    stage: &StageSpec,
) -> Result<Vec<ProbeSite>, TargetError> {
    match &stage.location {
        Location::Function { target, symbol } => {
            function::sites(resolver, id, &stage.name, target, symbol)
        }
    }
}

impl Probes {
    /// Attaches `sites` (programs already loaded by [`Probes::attach`]) for
    /// every process, return programs first. On error what this call
    /// attached is detached again.
    pub fn attach_sites(&mut self, sites: &[ProbeSite]) -> Result<SiteLinks, ProbeError> {
        let mut links = SiteLinks::default();
        for program in attach_order(sites) {
            for site in sites.iter().filter(|s| s.programs.contains(&program)) {
                let point = UProbeAttachPoint {
                    location: site.offset.into(),
                    cookie: Some(site.cookie),
                };
                let attached = self
                    .uprobe(program.name)
                    .and_then(|prog| {
                        prog.attach(point, &site.path, UProbeScope::AllProcesses)
                            .map_err(|e| chain(&e))
                    })
                    .map_err(|reason| ProbeError::Attach {
                        stage: site.stage.clone(),
                        symbol: site.symbol.clone(),
                        path: site.path.display().to_string(),
                        reason,
                    });
                match attached {
                    Ok(id) => links.push(program, site, id),
                    Err(e) => {
                        self.detach_sites(links);
                        return Err(e);
                    }
                }
            }
        }
        Ok(links)
    }

    /// Detaches links made by [`Probes::attach_sites`] (entry programs
    /// first, so no call is left open without its return probe).
    pub fn detach_sites(&mut self, links: SiteLinks) {
        for link in links.0.into_iter().rev() {
            if let Ok(prog) = self.uprobe(link.program) {
                let _ = prog.detach(link.id);
            }
        }
    }

    /// The links [`Probes::attach`] made, for the caller to detach some
    /// of them later (once; dropping [`Probes`] detaches them all anyway).
    pub fn take_start_links(&mut self) -> SiteLinks {
        std::mem::take(&mut self.start_links)
    }

    /// Adds `pid` to the kernel pid filter (a process found running a target).
    pub fn follow_pid(&mut self, pid: u32) -> Result<(), ProbeError> {
        let map = self.ebpf.map_mut("PIDS").ok_or_else(|| ProbeError::Map {
            map: "PIDS",
            reason: "missing".into(),
        })?;
        let mut map: HashMap<_, u32, u8> = HashMap::try_from(map).map_err(|e| ProbeError::Map {
            map: "PIDS",
            reason: chain(&e),
        })?;
        map.insert(pid, 1, 0).map_err(|e| ProbeError::Map {
            map: "PIDS",
            reason: chain(&e),
        })
    }

    /// Whether `pid` is in the kernel pid filter.
    pub fn follows(&self, pid: u32) -> bool {
        let Some(map) = self.ebpf.map("PIDS") else {
            return false;
        };
        HashMap::<_, u32, u8>::try_from(map).is_ok_and(|m| m.get(&pid, 0).is_ok())
    }

    /// Program `name`, loaded (a kind the first attach did not use is
    /// loaded now).
    fn uprobe(&mut self, name: &str) -> Result<&mut UProbe, String> {
        let prog: &mut UProbe = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the object"))?
            .try_into()
            .map_err(|e: ProgramError| chain(&e))?;
        match prog.load() {
            Ok(()) | Err(ProgramError::AlreadyLoaded) => Ok(prog),
            Err(e) => Err(chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_dead_is_found_at_its_offset() {
        let format = "name: sched_process_exit\nformat:\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";
        assert!(has_field(format, "bool group_dead", 32));
        assert!(!has_field(format, "bool group_dead", 28));
        assert!(!has_field(
            "field:pid_t pid;\toffset:24;",
            "bool group_dead",
            32
        ));
    }
}
