//! Following processes: the kernel side that lets a traced process's
//! children join the pid filter (kernel programs in
//! adeline-trace-ebpf/src/follow.rs), the pid filter's updates from the
//! agent (a process found running a target), and attaching and detaching
//! probe sites while the agent runs (a replaced binary, a reloaded config).
//!
//! Probes attached here are for every process (the pid filter, when on,
//! decides who is traced): a new process of a target must be traced from
//! its first call without attaching anything for it.
use std::{collections::HashMap as Programs, path::PathBuf};

use aya::{maps::HashMap, Ebpf, EbpfLoader};

use super::{
    attach::{LinkSet, LoadedUprobe, ProgramLoader, UprobeLink, UprobeSpec},
    attach_error, attach_order, function,
    resolve::Resolver,
    site::{chain, ProbeError, ProbeSite, Tracepoint},
    unwind::{self, ExitProbes},
    usdt, Location, Probes, StageSpec,
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

/// One uprobe link: the sites of one program in one file, for one stage
/// (stage sites) or for everything else there.
pub struct SiteLink {
    /// The stage id (stage sites).
    pub cookie: u64,
    /// A stage site (entry, return or exit instruction of a stage), not a
    /// gauge, alloc, Python or unwind-hook site.
    pub stage: bool,
    /// The file attached to.
    pub path: PathBuf,
    link: UprobeLink,
}

/// Whether `site` times a stage (its cookie is the stage id).
fn is_stage(site: &ProbeSite) -> bool {
    [
        function::PROGRAMS,
        unwind::ENTRY,
        unwind::EXIT,
        usdt::ENTRY,
        usdt::RETURN,
    ]
    .contains(&site.programs)
}

/// Uprobe links, in attach order (detached in reverse: entry programs
/// first, so no call is left open without its end being watched).
#[derive(Default)]
pub struct SiteLinks(Vec<SiteLink>);

impl std::fmt::Debug for SiteLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SiteLinks({} links, {} probes)",
            self.0.len(),
            self.probes()
        )
    }
}

impl SiteLinks {
    /// Moves the links matching `pred` out.
    pub fn take(&mut self, pred: impl Fn(&SiteLink) -> bool) -> SiteLinks {
        let (taken, kept) = std::mem::take(&mut self.0).into_iter().partition(pred);
        self.0 = kept;
        SiteLinks(taken)
    }

    pub fn extend(&mut self, other: SiteLinks) {
        self.0.extend(other.0);
    }

    /// Number of probe sites attached.
    pub fn probes(&self) -> usize {
        self.0.iter().map(|l| l.link.probes()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One set, to close every link together ([`LinkSet::detach`]).
    pub fn into_set(self) -> LinkSet {
        let mut set = LinkSet::default();
        for l in self.0 {
            set.push(l.link);
        }
        set
    }

    /// Detaches now, entry programs first.
    pub fn detach(self) {
        self.0.into_iter().rev().for_each(drop);
    }
}

/// Sites of one link: by file and stage id (None: not a stage's).
type Group<'a> = ((&'a PathBuf, Option<u64>), Vec<&'a ProbeSite>);

/// Attaches `sites` for each of `scopes` (a pid, or None: every process),
/// return programs first, one link per program, file and stage (the rest
/// of a file's sites together). Programs are loaded once, into
/// `programs`. On error, what this call attached is detached again.
pub(super) fn attach_links(
    ebpf: &mut Ebpf,
    loader: &ProgramLoader,
    programs: &mut Programs<&'static str, LoadedUprobe>,
    sites: &[ProbeSite],
    scopes: &[Option<u32>],
) -> Result<SiteLinks, ProbeError> {
    let mut links = SiteLinks::default();
    for program in attach_order(sites) {
        if !programs.contains_key(program.name) {
            let loaded = loader
                .load(ebpf, program.name)
                .map_err(|e| ProbeError::Load(chain(&e)))?;
            programs.insert(program.name, loaded);
        }
        let prog = &programs[program.name];
        let mut groups: Vec<Group<'_>> = Vec::new();
        for site in sites.iter().filter(|s| s.programs.contains(&program)) {
            let key = (&site.path, is_stage(site).then_some(site.cookie));
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, g)) => g.push(site),
                None => groups.push((key, vec![site])),
            }
        }
        for ((path, stage), group) in groups {
            let specs: Vec<UprobeSpec> = group.iter().map(|s| s.spec()).collect();
            for &pid in scopes {
                let link = prog
                    .attach(path, &specs, pid)
                    .map_err(|e| attach_error(&group, &e))?;
                links.0.push(SiteLink {
                    cookie: stage.unwrap_or(u64::MAX),
                    stage: stage.is_some(),
                    path: path.clone(),
                    link,
                });
            }
        }
    }
    Ok(links)
}

/// The sites of stage `id` (the one place besides [`super::resolve_plan`]
/// that lists the kinds that time stages: a stage resolved while tracing),
/// with `--exit-probes` applied. Unwind hooks are left out: those of the
/// start stay attached. Python stages are not resolved while tracing
/// (their interpreter tables are filled at start).
pub fn stage_sites(
    resolver: &mut Resolver<'_>,
    id: u32,
    stage: &StageSpec,
    exit_probes: ExitProbes,
    pids: &[u32],
) -> Result<Vec<ProbeSite>, String> {
    let mut sites = match &stage.location {
        Location::Function { target, symbol } => {
            function::sites(resolver, id, &stage.name, target, symbol).map_err(|e| e.to_string())?
        }
        Location::Usdt { target, entry, ret } => {
            usdt::stage_sites(resolver, id, &stage.name, target, entry, ret)
                .map_err(|e| e.to_string())?
        }
        Location::Python { .. } => {
            return Err(format!(
                "Python stage '{}' cannot be resolved while tracing: restart the agent to add or change it",
                stage.name
            ))
        }
    };
    unwind::plan(&mut sites, exit_probes, pids);
    sites.retain(is_stage);
    Ok(sites)
}

impl Probes {
    /// Attaches `sites` for every process (the pid filter, when on,
    /// decides who is traced). On error nothing of them stays attached.
    pub fn attach_sites(&mut self, sites: &[ProbeSite]) -> Result<SiteLinks, ProbeError> {
        attach_links(
            &mut self.ebpf,
            &self.loader,
            &mut self.programs,
            sites,
            &[None],
        )
    }

    /// Links kept by [`Probes`] (detached with the others at the end).
    pub fn keep_links(&mut self, links: SiteLinks) {
        self.uprobes.extend(links);
    }

    /// Moves the links matching `pred` out of [`Probes`] (to detach later,
    /// or now with [`SiteLinks::detach`]).
    pub fn take_links(&mut self, pred: impl Fn(&SiteLink) -> bool) -> SiteLinks {
        self.uprobes.take(pred)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_stage_is_not_resolved_while_tracing() {
        let stage = StageSpec {
            name: "handle".into(),
            location: Location::Python {
                interpreter: "python3".into(),
                pattern: "app:handle".into(),
            },
        };
        let mut resolver = Resolver::new(&[]);
        assert_eq!(
            stage_sites(&mut resolver, 0, &stage, ExitProbes::Auto, &[]),
            Err("Python stage 'handle' cannot be resolved while tracing: restart the agent to add or change it".to_string())
        );
    }

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
