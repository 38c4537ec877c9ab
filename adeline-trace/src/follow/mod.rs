//! Following the targets while tracing (docs/follow.md). Every
//! [`FOLLOW_EVERY`] the [`Follower`] checks each target path: when it names
//! another file than the one probed (a deploy: `mv prog.tmp prog`), the
//! plan is resolved again, the new file's probes are attached (same stage
//! ids: same names and series) and an `attach` record says so, with the
//! processes that ran the new file before (`missed`). Probes of a replaced
//! file stay while a process still maps it.
//!
//! Used whenever probes are placed for every process (no `-p`, or a
//! command whose children are followed); `procs` reads procfs for it.
pub mod procs;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use procs::FileId;

use crate::{
    probes::{
        follow::SiteLinks, gauge::GaugeSpec, resolve_plan, ProbePlan, ProbeSite, Probes, StageSpec,
    },
    sinks::{Attach, AttachReason, AttachedProbe, Missed},
};

/// How often target paths are checked.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// How often probes of replaced files are checked for processes still
/// mapping them.
const RETIRE_EVERY: Duration = Duration::from_secs(10);

/// A file probed for the plan, by the path it was found at.
#[derive(Debug)]
struct Target {
    path: PathBuf,
    file: FileId,
    /// Links of a file attached while tracing (None: attached at start,
    /// owned by [`Probes`]).
    links: Option<SiteLinks>,
    /// A file found at `path` that cannot be probed (warned once).
    refused: Option<FileId>,
}

/// Links to a file no longer at its path.
#[derive(Debug)]
struct Retired {
    file: FileId,
    links: SiteLinks,
}

/// What a check found.
#[derive(Debug)]
pub enum Followed {
    Attached(Attach),
    /// A line for stderr.
    Warning(String),
}

pub struct Follower {
    stages: Vec<StageSpec>,
    gauges: Vec<GaugeSpec>,
    targets: Vec<Target>,
    retired: Vec<Retired>,
    next_retire: Instant,
    /// The kernel pid filter is on: only processes in it are traced.
    filtered: bool,
}

impl Follower {
    /// Follows the files of `sites` (as resolved at start for `stages` and
    /// `gauges`).
    pub fn new(
        stages: Vec<StageSpec>,
        gauges: Vec<GaugeSpec>,
        sites: &[ProbeSite],
        filtered: bool,
    ) -> Follower {
        let mut targets: Vec<Target> = Vec::new();
        for site in sites {
            if targets.iter().any(|t| t.path == site.path) {
                continue;
            }
            if let Ok((file, _)) = FileId::of(&site.path) {
                targets.push(Target {
                    path: site.path.clone(),
                    file,
                    links: None,
                    refused: None,
                });
            }
        }
        Follower {
            stages,
            gauges,
            targets,
            retired: Vec::new(),
            next_retire: Instant::now() + RETIRE_EVERY,
            filtered,
        }
    }

    /// The `start` attach records: one per target file, with the processes
    /// running it now.
    pub fn started(&self, sites: &[ProbeSite], probes: &Probes) -> Vec<Attach> {
        self.targets
            .iter()
            .map(|t| {
                let pids = self.traced(probes, procs::mapping(t.file));
                let of_target: Vec<ProbeSite> =
                    sites.iter().filter(|s| s.path == t.path).cloned().collect();
                record(AttachReason::Start, t, None, pids, &of_target, Vec::new())
            })
            .collect()
    }

    /// Checks every target path; attaches to files that replaced them.
    pub fn poll(&mut self, probes: &mut Probes) -> Vec<Followed> {
        let mut out = Vec::new();
        for i in 0..self.targets.len() {
            let t = &self.targets[i];
            // Missing: a deploy between its unlink and its rename.
            let Ok((file, changed_ns)) = FileId::of(&t.path) else {
                continue;
            };
            if file == t.file || Some(file) == t.refused {
                continue;
            }
            out.push(self.replaced(probes, i, file, changed_ns));
        }
        if Instant::now() >= self.next_retire {
            self.next_retire = Instant::now() + RETIRE_EVERY;
            self.retire(probes);
        }
        out
    }

    /// Target `i`'s path names `file` now (since `changed_ns`, wall clock).
    fn replaced(
        &mut self,
        probes: &mut Probes,
        i: usize,
        file: FileId,
        changed_ns: u64,
    ) -> Followed {
        let path = self.targets[i].path.clone();
        let sites = match self.resolve(&path) {
            Ok(sites) if !sites.is_empty() => sites,
            Ok(_) => return self.refuse(i, file, "none of the stages' functions is in it".into()),
            Err(why) => return self.refuse(i, file, why),
        };
        let links = match probes.attach_sites(&sites) {
            Ok(links) => links,
            Err(e) => return self.refuse(i, file, e.to_string()),
        };
        let attached = procs::boot_ns();
        let since = procs::wall_to_boot_ns(changed_ns);
        let running = self.traced(probes, procs::mapping(file));
        let missed = running
            .iter()
            .filter_map(|&pid| {
                let start = procs::start_boot_ns(pid)?.max(since);
                Some(Missed {
                    pid,
                    gap_ms: attached.saturating_sub(start) / 1_000_000,
                })
            })
            .collect();
        let t = &mut self.targets[i];
        let previous = t.file;
        if let Some(old) = t.links.replace(links) {
            self.retired.push(Retired {
                file: previous,
                links: old,
            });
        }
        t.file = file;
        t.refused = None;
        Followed::Attached(record(
            AttachReason::Replaced,
            t,
            Some(previous.ino),
            running,
            &sites,
            missed,
        ))
    }

    fn refuse(&mut self, i: usize, file: FileId, why: String) -> Followed {
        let t = &mut self.targets[i];
        t.refused = Some(file);
        Followed::Warning(format!(
            "{} was replaced (inode {} -> {}) and the new file gets no probes: {why}; its processes are not traced",
            t.path.display(),
            t.file.ino,
            file.ino
        ))
    }

    /// The plan's sites in `path` (the plan resolved again: stage ids stay).
    fn resolve(&self, path: &std::path::Path) -> Result<Vec<ProbeSite>, String> {
        let resolved = resolve_plan(&ProbePlan {
            stages: &self.stages,
            gauges: &self.gauges,
            pids: &[],
            alloc: None,
        })
        .map_err(|e| e.to_string())?;
        Ok(resolved
            .sites
            .into_iter()
            .filter(|s| s.path == path)
            .collect())
    }

    /// Of `pids`, those traced (in the kernel pid filter when it is on).
    fn traced(&self, probes: &Probes, pids: Vec<u32>) -> Vec<u32> {
        match self.filtered {
            true => pids.into_iter().filter(|&p| probes.follows(p)).collect(),
            false => pids,
        }
    }

    /// Detaches the probes of replaced files no process maps any more.
    fn retire(&mut self, probes: &mut Probes) {
        let (gone, kept): (Vec<Retired>, Vec<Retired>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|r| procs::mapping(r.file).is_empty());
        self.retired = kept;
        for r in gone {
            probes.detach_sites(r.links);
        }
    }
}

fn record(
    reason: AttachReason,
    t: &Target,
    previous_inode: Option<u64>,
    pids: Vec<u32>,
    sites: &[ProbeSite],
    missed: Vec<Missed>,
) -> Attach {
    let pids_total = pids.len();
    Attach {
        ts_ns: 0,
        reason,
        target: t.path.display().to_string(),
        inode: t.file.ino,
        previous_inode,
        pids: pids.into_iter().take(Attach::MAX_PIDS).collect(),
        pids_total,
        probes: sites
            .iter()
            .map(|s| AttachedProbe {
                stage: s.stage.clone(),
                symbol: s.symbol.clone(),
                offset: s.offset,
            })
            .collect(),
        missed,
    }
}
