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

use super::{
    attach_order,
    site::{chain, ProbeError, ProbeSite, Tracepoint},
    Probes,
};

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

/// Links made by [`Probes::attach_sites`], to detach them later.
#[derive(Debug, Default)]
pub struct SiteLinks {
    links: Vec<(&'static str, UProbeLinkId)>,
}

impl SiteLinks {
    /// Number of kernel attachments.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
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
                    Ok(id) => links.links.push((program.name, id)),
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
        for (name, id) in links.links.into_iter().rev() {
            if let Ok(prog) = self.uprobe(name) {
                let _ = prog.detach(id);
            }
        }
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
