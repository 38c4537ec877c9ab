//! Plan -> probes: where each probe goes, and the one path that loads the
//! kernel programs and attaches them. Each probe kind is one file with its
//! resolver and the programs it attaches:
//!
//! - [`function`]: a stage timed at functions' entry and return;
//! - [`gauge`]: an integer argument or the return value of functions;
//! - [`alloc`]: alloc mode's allocator functions in the C library;
//! - [`memory`]: the memory tracepoints (mappings, kmem:rss_stat).
//!
//! [`resolve`] is what they share (files, symbols, the kernel's refusals);
//! [`resolve_plan`] is the one place that lists the kinds. [`Probes::attach`]
//! loads the object with the filter configuration, attaches every site's
//! programs with cookie = stage id and the kinds' tracepoints, and owns the
//! links: dropping [`Probes`] detaches everything.
//!
//! A new kind that times stages (USDT, Python functions) is one file here
//! and one variant of [`Location`] (with its arm in [`resolve_plan`]).
use std::{num::NonZeroU32, time::Duration};

use adeline_trace_common::{COUNTERS, NO_FRAME_STAGE};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachPoint, UProbeScope},
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
pub mod alloc;
pub mod follow;
pub mod function;
pub mod gauge;
pub mod memory;
pub mod resolve;
pub mod site;

use alloc::{AllocMaps, AllocSiteError, AllocSpec};
use site::chain;
pub use site::{ProbeError, ProbeSite, Program, Tracepoint};
use thiserror::Error;

use crate::symbols::TargetError;
use gauge::GaugeSpec;
use memory::MemoryMode;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/adeline-trace-ebpf"));

/// One stage as the user named it: its name and where its probes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpec {
    pub name: String,
    pub location: Location,
}

/// Where a stage's probes go: one variant per probe kind that times a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The entry and return of every function of `target` (a path or a
    /// bare library name) matching `symbol` (exact or glob): [`function`].
    Function { target: String, symbol: String },
}

/// What the plan asks to probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbePlan<'a> {
    pub stages: &'a [StageSpec],
    pub gauges: &'a [GaugeSpec],
    /// Processes to resolve targets for (empty: the host's files).
    pub pids: &'a [u32],
    pub alloc: Option<&'a AllocSpec>,
}

/// Probe sites, and warnings about glob matches that had to be skipped.
#[derive(Debug, Default)]
pub struct Resolved {
    pub sites: Vec<ProbeSite>,
    pub warnings: Vec<String>,
}

/// Why the plan's probes cannot be placed (a user error, before anything
/// is loaded).
#[derive(Debug, Error)]
pub enum ResolveError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Alloc(#[from] AllocSiteError),
}

/// Resolves every probe of the plan, kind by kind (stage ids and gauge
/// ids are their positions in the plan). The one place that lists the kinds.
pub fn resolve_plan(plan: &ProbePlan<'_>) -> Result<Resolved, ResolveError> {
    let mut resolver = resolve::Resolver::new(plan.pids);
    let mut sites = Vec::new();
    for (id, stage) in plan.stages.iter().enumerate() {
        let id = id as u32;
        sites.extend(match &stage.location {
            Location::Function { target, symbol } => {
                function::sites(&mut resolver, id, &stage.name, target, symbol)?
            }
        });
    }
    // Stage sites so far: a function is timed by one stage only.
    resolve::check_overlaps(&sites)?;
    for (id, g) in plan.gauges.iter().enumerate() {
        sites.extend(gauge::sites(&mut resolver, id as u32, g)?);
    }
    if plan.alloc.is_some() {
        sites.extend(alloc::sites(&mut resolver)?);
    }
    Ok(Resolved {
        sites,
        warnings: resolver.warnings,
    })
}

/// How to load and attach the programs.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    /// Processes to trace (empty: all).
    pub pids: Vec<u32>,
    pub min_duration: Duration,
    pub ring_bytes: u32,
    /// Stage id of the frame root.
    pub frame_stage: Option<u32>,
    /// Alloc mode (its sites come with the others).
    pub alloc: Option<AllocSpec>,
    /// Which memory tracepoints to attach (when pids are known).
    pub memory: MemoryMode,
    /// Follow the pids' descendants ([`follow`]): probes for every
    /// process, the pid filter kept by fork and exit tracepoints.
    pub follow_children: bool,
}

/// Checks the effective capabilities: CAP_SYS_ADMIN, or CAP_BPF + CAP_PERFMON.
pub fn check_privileges() -> Result<(), ProbeError> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(ProbeError::NotPrivileged)
    }
}

/// Loaded and attached kernel programs with the maps the agent reads.
pub struct Probes {
    // Field order matters for drop: links (inside `ebpf`) go last.
    pub ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    // Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    attached: usize,
    /// Why memory mappings are not traced, if they are not.
    pub memory_untraced: Option<String>,
    /// Alloc mode's maps (None without --alloc).
    pub alloc: Option<AllocMaps>,
    /// The uprobe links made here, until [`Probes::take_start_links`].
    start_links: follow::SiteLinks,
}

fn load_err(e: impl std::fmt::Display) -> ProbeError {
    ProbeError::Load(e.to_string())
}

/// The programs of `sites` in attach order: every return program before
/// any entry program (so no entry is recorded without its return being
/// watched), each in the order the sites first name it.
fn attach_order(sites: &[ProbeSite]) -> Vec<Program> {
    let mut order: Vec<Program> = Vec::new();
    for ret in [true, false] {
        for p in sites.iter().flat_map(|s| s.programs) {
            if p.ret == ret && !order.contains(p) {
                order.push(*p);
            }
        }
    }
    order
}

impl Probes {
    /// Loads the programs with the filter configuration and attaches them
    /// at every site (see [`attach_order`]), then the memory tracepoints
    /// (their failure only leaves memory untraced). On any error all that
    /// was attached is detached before returning.
    pub fn attach(sites: &[ProbeSite], opts: &ProbeOptions) -> Result<Probes, ProbeError> {
        check_privileges()?;
        raise_memlock();
        let pids = &opts.pids;
        let filter_pids = u32::from(!pids.is_empty());
        let min_dur_ns = u64::try_from(opts.min_duration.as_nanos()).unwrap_or(u64::MAX);
        let frame_stage = opts.frame_stage.unwrap_or(NO_FRAME_STAGE);
        let alloc_globals = alloc::Globals::new(opts.alloc.as_ref());
        let mut loader = EbpfLoader::new();
        // THREADS is a task-storage map, which aya creates but has no type for.
        loader
            .allow_unsupported_maps()
            .override_global("FILTER_PIDS", &filter_pids, true)
            .override_global("MIN_DUR_NS", &min_dur_ns, true)
            .override_global("FRAME_STAGE", &frame_stage, true)
            .map_max_entries("EVENTS", opts.ring_bytes);
        alloc_globals.configure(&mut loader);
        follow::configure(&mut loader);
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(chain(&e)))?;
        fill_pid_filter(&mut ebpf, pids)?;
        let scopes: Vec<UProbeScope> = if pids.is_empty() || opts.follow_children {
            vec![UProbeScope::AllProcesses]
        } else {
            pids.iter()
                .filter_map(|&p| NonZeroU32::new(p))
                .map(UProbeScope::OneProcess)
                .collect()
        };
        let mut attached = 0;
        let mut start_links = follow::SiteLinks::default();
        for program in attach_order(sites) {
            let name = program.name;
            let prog: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| load_err(format!("program {name} missing from the object")))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| ProbeError::Load(chain(&e)))?;
            prog.load().map_err(|e| ProbeError::Load(chain(&e)))?;
            for site in sites.iter().filter(|s| s.programs.contains(&program)) {
                for scope in &scopes {
                    let point = UProbeAttachPoint {
                        location: site.offset.into(),
                        cookie: Some(site.cookie),
                    };
                    let id =
                        prog.attach(point, &site.path, *scope)
                            .map_err(|e| ProbeError::Attach {
                                stage: site.stage.clone(),
                                symbol: site.symbol.clone(),
                                path: site.path.display().to_string(),
                                reason: chain(&e),
                            })?;
                    start_links.push(program, site, id);
                    attached += 1;
                }
            }
        }
        if opts.follow_children && !pids.is_empty() {
            attached += attach_tracepoints(&mut ebpf, &follow::TRACEPOINTS)
                .map_err(|e| load_err(format!("following child processes: {e}")))?;
        }
        let memory_untraced = match memory::tracepoints(opts.memory, pids)
            .and_then(|points| attach_tracepoints(&mut ebpf, points))
        {
            Ok(n) => {
                attached += n;
                None
            }
            Err(why) => Some(why),
        };
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or_else(|| load_err("no EVENTS map"))?,
        )
        .map_err(|e| ProbeError::Load(chain(&e)))?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map("COUNTERS")
                .ok_or_else(|| load_err("no COUNTERS map"))?,
        )
        .map_err(|e| ProbeError::Load(chain(&e)))?;
        let alloc = match &opts.alloc {
            Some(spec) => Some(AllocMaps::take(&mut ebpf, spec.clone())?),
            None => None,
        };
        Ok(Probes {
            ring,
            counters,
            alloc,
            ebpf,
            attached,
            memory_untraced,
            start_links,
        })
    }

    /// Number of kernel attachments (entry and exit count separately).
    pub fn attached(&self) -> usize {
        self.attached
    }

    /// The resident set of `pid` as `kmem:rss_stat` last reported it (None
    /// before its first event, or when memory is not traced).
    pub fn kernel_rss(&self, pid: u32) -> Option<u64> {
        memory::kernel_rss(&self.ebpf, pid)
    }

    /// Resident bytes charged to stage ids `0..stages`, then to "(no
    /// stage)" (summed over CPUs; kmem:rss_stat).
    pub fn stage_resident(&self, stages: usize) -> Result<Vec<i64>, ProbeError> {
        memory::stage_resident(&self.ebpf, stages)
    }

    /// Totals of the per-CPU counters, indexed by `COUNTER_*`.
    pub fn counters(&self) -> Result<[u64; COUNTERS as usize], ProbeError> {
        let mut out = [0u64; COUNTERS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = self
                .counters
                .get(&(i as u32), 0)
                .map_err(|e| ProbeError::Map {
                    map: "COUNTERS",
                    reason: chain(&e),
                })?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}

/// Attaches tracepoint programs; the number of attachments, or why not
/// (e.g. tracefs not mounted).
fn attach_tracepoints(ebpf: &mut Ebpf, points: &[Tracepoint]) -> Result<usize, String> {
    for point in points {
        let name = point.program;
        let prog: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| chain(&e))?;
        prog.load().map_err(|e| chain(&e))?;
        prog.attach(point.category, point.event)
            .map_err(|e| chain(&e))?;
    }
    Ok(points.len())
}

/// Fills the in-kernel pid filter (used when `FILTER_PIDS` is set).
fn fill_pid_filter(ebpf: &mut Ebpf, pids: &[u32]) -> Result<(), ProbeError> {
    let map = ebpf
        .map_mut("PIDS")
        .ok_or_else(|| load_err("no PIDS map"))?;
    let mut map: HashMap<_, u32, u8> =
        HashMap::try_from(map).map_err(|e| ProbeError::Load(chain(&e)))?;
    for &pid in pids {
        map.insert(pid, 1, 0).map_err(|e| ProbeError::Map {
            map: "PIDS",
            reason: chain(&e),
        })?;
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer; failure is harmless here.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}
