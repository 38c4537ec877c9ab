//! Plan -> probes: where each probe goes, and the one path that loads the
//! kernel programs and attaches them. Each probe kind is one file with its
//! resolver and the programs it attaches:
//!
//! - [`function`]: a stage timed at functions' entry and return;
//! - [`gauge`]: an integer argument or the return value of functions;
//! - [`alloc`]: alloc mode's allocator functions in the C library;
//! - [`memory`]: the memory tracepoints (mappings, kmem:rss_stat);
//! - [`profile`]: the profiler (cpu-clock samples, sched_switch).
//! - [`python`]: Python stages (interpreter handler sites, in-kernel
//!   pattern match; CPython introspection is python/), windowed mode;
//! - [`usdt`]: USDT probes in any binary: an entry/return pair as a
//!   stage, one probe's argument (or hits) as a gauge, with kernel-managed
//!   semaphores;
//! - [`unwind`]: stages timed at their exit instructions, and the catch
//!   and forced-unwind hooks that end calls an exception unwound
//!   (`--exit-probes`; it rewrites the [`function`] kind's sites).
//!
//! [`resolve`] is what they share (files, symbols, the kernel's refusals;
//! [`btf`] the kernel's type layouts);
//! [`resolve_plan`] is the one place that lists the kinds. [`Probes::attach`]
//! loads the object with the filter configuration, attaches every site's
//! programs with cookie = stage id through [`attach`] (uprobe-multi links,
//! or one perf event per site) and the kinds' tracepoints, and owns the
//! links: dropping [`Probes`] detaches everything.
//!
//! A new kind that times stages is one file here and one variant of
//! [`Location`] (with its arm in [`resolve_plan`]).
use std::time::{Duration, Instant};

use adeline_trace_common::{
    COUNTERS, NO_FRAME_STAGE, RETURN_ADDRESS_PROFILE, RETURN_ADDRESS_UNWIND,
};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
pub mod aggregation;
pub mod alloc;
pub mod attach;
pub mod btf;
pub mod follow;
pub mod function;
pub mod gauge;
pub mod memory;
pub mod profile;
pub mod python;
pub mod resolve;
pub mod site;
pub mod unwind;
pub mod usdt;

use alloc::{AllocMaps, AllocSiteError, AllocSpec};
use attach::{
    group_by_path, AttachError, AttachMode, Detached, LinkSet, LoadedUprobe, ProgramLoader,
    UprobeSpec,
};
use site::chain;
pub use site::{ProbeError, ProbeSite, Program, Tracepoint};
use thiserror::Error;

use crate::symbols::TargetError;
use adeline_trace_common::usdt::UsdtArgSpec;
use gauge::{GaugeSource, GaugeSpec};
use memory::MemoryMode;
use profile::{ProfileMaps, ProfileSpec};

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
    /// Python functions whose qualified name matches `pattern`
    /// (`[FILE.py:|MODULE:]QUALNAME` glob) in the CPython `interpreter`
    /// runs (an executable, a venv's python, a libpython): [`python`].
    Python {
        interpreter: String,
        pattern: String,
    },
    /// Between a USDT probe and the next return probe on the same thread,
    /// in `target` (a path or a bare library name): [`usdt`].
    Usdt {
        target: String,
        entry: usdt::ProbeName,
        ret: usdt::ProbeName,
    },
}

/// What the plan asks to probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbePlan<'a> {
    pub stages: &'a [StageSpec],
    pub gauges: &'a [GaugeSpec],
    /// Processes to resolve targets for (empty: the host's files).
    pub pids: &'a [u32],
    pub alloc: Option<&'a AllocSpec>,
    /// At most this many stage and gauge sites (functions) in all.
    pub max_probes: usize,
    /// How stage returns are observed (`--exit-probes`, [`unwind`]).
    pub exit_probes: unwind::ExitProbes,
}

/// Probe sites, and warnings about glob matches that had to be skipped.
#[derive(Debug, Default)]
pub struct Resolved {
    pub sites: Vec<ProbeSite>,
    pub warnings: Vec<String>,
    /// Why an exception could still terminate a traced process (also in
    /// `warnings`; the `start` record lists them).
    pub unwind_warnings: Vec<String>,
    /// The kernel's Python tables (None without Python stages).
    pub python: Option<python::PythonTables>,
    /// How each USDT gauge site decodes its value (index = cookie).
    pub usdt_args: Vec<UsdtArgSpec>,
}

/// Why the plan's probes cannot be placed (a user error, before anything
/// is loaded).
#[derive(Debug, Error)]
pub enum ResolveError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Alloc(#[from] AllocSiteError),
    #[error(transparent)]
    Python(#[from] crate::python::PythonError),
    #[error(transparent)]
    Usdt(#[from] usdt::UsdtError),
}

/// Resolves every probe of the plan, kind by kind (stage ids and gauge
/// ids are their positions in the plan). The one place that lists the kinds.
pub fn resolve_plan(plan: &ProbePlan<'_>) -> Result<Resolved, ResolveError> {
    let mut resolver = resolve::Resolver::new(plan.pids);
    let mut sites = Vec::new();
    let mut py_stages = Vec::new();
    for (id, stage) in plan.stages.iter().enumerate() {
        let id = id as u32;
        let (found, pattern) = match &stage.location {
            Location::Function { target, symbol } => (
                function::sites(&mut resolver, id, &stage.name, target, symbol)?,
                format!("{target}:{symbol}"),
            ),
            // All Python stages together: they share interpreter sites.
            Location::Python {
                interpreter,
                pattern,
            } => {
                py_stages.push(python::PyStage {
                    id,
                    name: &stage.name,
                    interpreter,
                    pattern,
                });
                continue;
            }
            Location::Usdt { target, entry, ret } => (
                usdt::stage_sites(&resolver, id, &stage.name, target, entry, ret)?,
                format!("usdt:{target}:{entry},{}", ret.name),
            ),
        };
        let counts = (sites.len() + found.len(), found.len());
        sites.extend(found);
        resolve::check_max_probes(counts, plan.max_probes, "stage", &stage.name, &pattern)?;
    }
    // Stage sites so far: a function is timed by one stage only.
    resolve::check_overlaps(&sites)?;
    let unwind_warnings = unwind::plan(&mut sites, plan.exit_probes, plan.pids);
    let py = python::sites(&py_stages, plan.pids)?;
    sites.extend(py.sites);
    let mut usdt_args = Vec::new();
    for (id, g) in plan.gauges.iter().enumerate() {
        let found = match (g.source, usdt::ProbeName::parse(&g.symbol)) {
            (GaugeSource::Usdt(value), Some(probe)) => {
                let of = (id as u32, g.name.as_str());
                let first = usdt_args.len();
                let (found, specs) =
                    usdt::gauge_sites(&resolver, of, &g.target, &probe, value, first)?;
                usdt_args.extend(specs);
                found
            }
            _ => gauge::sites(&mut resolver, id as u32, g)?,
        };
        let counts = (sites.len() + found.len(), found.len());
        sites.extend(found);
        let pattern = format!("{}:{}", g.target, g.symbol);
        resolve::check_max_probes(counts, plan.max_probes, "gauge", &g.name, &pattern)?;
    }
    if plan.alloc.is_some() {
        sites.extend(alloc::sites(&mut resolver)?);
    }
    let mut warnings = resolver.warnings;
    warnings.extend(py.warnings);
    warnings.extend(unwind_warnings.iter().cloned());
    Ok(Resolved {
        sites,
        warnings,
        unwind_warnings,
        python: (!py_stages.is_empty()).then_some(py.tables),
        usdt_args,
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
    /// The profiler (`--profile`), attached after every probe.
    pub profile: Option<ProfileSpec>,
    /// Follow the pids' descendants ([`follow`]): probes for every
    /// process, the pid filter kept by fork and exit tracepoints.
    pub follow_children: bool,
    /// How to attach uprobes (None: uprobe-multi when the kernel has it).
    pub attach: Option<AttachMode>,
    /// Python stages: the kernel tables ...
    pub python: Option<python::PythonTables>,
    /// ... and the window: probes attached for `.0` every `.1` (None:
    /// always).
    pub python_window: Option<(Duration, Duration)>,
    /// USDT gauges: how each site decodes its value (index = cookie).
    pub usdt_args: Vec<UsdtArgSpec>,
    /// In-kernel aggregation: the number of stages whose calls may be
    /// aggregated (0: off).
    pub aggregate_stages: u32,
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
    /// The uprobe links (dropped before the programs and maps in `ebpf`),
    /// by file and stage: the Follower attaches and detaches some while
    /// tracing ([`follow`]).
    uprobes: follow::SiteLinks,
    /// Loads programs for links made while tracing ...
    loader: ProgramLoader,
    /// ... and those loaded so far, by name.
    programs: std::collections::HashMap<&'static str, LoadedUprobe>,
    // Owns the programs, the maps and the tracepoint links.
    ebpf: Ebpf,
    attached: usize,
    mode: AttachMode,
    attach_time: Duration,
    /// Why memory mappings are not traced, if they are not.
    pub memory_untraced: Option<String>,
    /// How rss_stat is attached, and why not as a BTF raw tracepoint.
    pub memory: memory::Attached,
    /// Alloc mode's maps (None without --alloc).
    pub alloc: Option<AllocMaps>,
    /// The profiler's counters (None without --profile).
    pub profile: Option<ProfileMaps>,
    /// Windowed Python mode: the Python probes' own links.
    python: Option<python::Windows>,
    /// In-kernel aggregation's maps (None when off).
    pub aggregation: Option<aggregation::AggMaps>,
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
        // Unwind support: entries record return addresses for the catch hooks.
        // ... and the profiler puts them back where a uretprobe replaced them.
        let read_return = u32::from(sites.iter().any(unwind::is_hook)) * RETURN_ADDRESS_UNWIND
            + u32::from(opts.profile.is_some()) * RETURN_ADDRESS_PROFILE;
        let py_npatterns = opts
            .python
            .as_ref()
            .map_or(0u32, |p| p.patterns.len() as u32);
        let alloc_globals = alloc::Globals::new(opts.alloc.as_ref());
        let aggregate = u32::from(opts.aggregate_stages > 0);
        let mut loader = EbpfLoader::new();
        // THREADS is a task-storage map, which aya creates but has no type for.
        loader
            .allow_unsupported_maps()
            .override_global("FILTER_PIDS", &filter_pids, true)
            .override_global("MIN_DUR_NS", &min_dur_ns, true)
            .override_global("FRAME_STAGE", &frame_stage, true)
            .override_global("READ_RETURN_ADDRESS", &read_return, true)
            .override_global("PY_NPATTERNS", &py_npatterns, true)
            .override_global("AGGREGATE", &aggregate, true)
            .map_max_entries("STAGE_AGG", opts.aggregate_stages.max(1))
            .map_max_entries("EVENTS", opts.ring_bytes);
        alloc_globals.configure(&mut loader);
        let profile_globals = profile::Globals::new(opts.profile.as_ref());
        profile_globals.configure(&mut loader);
        follow::configure(&mut loader);
        let layout = memory::Layout::new(opts.memory);
        layout.configure(&mut loader);
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(chain(&e)))?;
        fill_pid_filter(&mut ebpf, pids)?;
        if let Some(tables) = &opts.python {
            python::fill_maps(&mut ebpf, tables)?;
        }
        usdt::fill_map(&mut ebpf, &opts.usdt_args)?;
        let started = Instant::now();
        let mode = opts.attach.unwrap_or_else(AttachMode::detect);
        let loader =
            ProgramLoader::new(mode, OBJECT, &ebpf).map_err(|e| ProbeError::Load(chain(&e)))?;
        // Following children: probes for every process (the pid filter
        // decides who is traced).
        let scopes: Vec<Option<u32>> = match pids.is_empty() || opts.follow_children {
            true => vec![None],
            false => pids.iter().map(|&p| Some(p)).collect(),
        };
        // Windowed Python mode: the Python probes get links of their own
        // and keep their loaded programs to attach again.
        let windowed = opts.python_window.is_some();
        let (py_sites, other): (Vec<ProbeSite>, Vec<ProbeSite>) = sites
            .iter()
            .cloned()
            .partition(|s| windowed && python::is_python(s));
        let mut programs = std::collections::HashMap::new();
        let uprobes = follow::attach_links(&mut ebpf, &loader, &mut programs, &other, &scopes)?;
        let (mut py_links, mut py_programs) = (LinkSet::default(), Vec::new());
        for program in attach_order(&py_sites) {
            let prog = loader
                .load(&mut ebpf, program.name)
                .map_err(|e| ProbeError::Load(chain(&e)))?;
            let of_program = py_sites.iter().filter(|s| s.programs.contains(&program));
            for (path, group) in group_by_path(of_program, |s| &s.path) {
                let specs: Vec<UprobeSpec> = group.iter().map(|s| s.spec()).collect();
                for &pid in &scopes {
                    let link = prog
                        .attach(path, &specs, pid)
                        .map_err(|e| attach_error(&group, &e))?;
                    py_links.push(link);
                }
            }
            let programs = match program.ret {
                true => python::EXIT,
                false => python::ENTRY,
            };
            py_programs.push((programs, prog));
        }
        let mut attached = uprobes.probes() + py_links.probes();
        let python = opts
            .python_window
            .filter(|_| !py_programs.is_empty())
            .map(|w| python::Windows::new(w, py_programs, py_sites, scopes.clone(), py_links));
        // Unwind support: a forced unwind ends at the thread's exit.
        if sites.iter().any(|s| s.programs == unwind::FORCED) {
            attached += attach_tracepoints(&mut ebpf, &[unwind::THREAD_EXIT])
                .map_err(|e| load_err(format!("unwind support: {e}")))?;
        }
        if opts.follow_children && !pids.is_empty() {
            attached += attach_tracepoints(&mut ebpf, &follow::TRACEPOINTS)
                .map_err(|e| load_err(format!("following child processes: {e}")))?;
        }
        let attach_time = started.elapsed();
        let (memory_untraced, memory) =
            match memory::attach(&mut ebpf, opts.memory, pids, &layout, attach_tracepoints) {
                Ok(done) => {
                    attached += done.count;
                    (None, done)
                }
                Err(why) => (Some(why), memory::Attached::default()),
            };
        // The profiler last: its samples need the stage probes in place.
        let profile = match &opts.profile {
            Some(spec) => Some(profile::attach(
                &mut ebpf,
                spec,
                profile_globals.fsbase_off(),
            )?),
            None => None,
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
        let aggregation = match opts.aggregate_stages {
            0 => None,
            _ => Some(aggregation::AggMaps::take(&mut ebpf)?),
        };
        Ok(Probes {
            aggregation,
            ring,
            counters,
            alloc,
            profile,
            uprobes,
            ebpf,
            attached,
            mode,
            attach_time,
            memory_untraced,
            memory,
            python,
            loader,
            programs,
        })
    }

    /// Number of kernel attachments (entry and exit count separately).
    pub fn attached(&self) -> usize {
        self.attached
    }

    /// Windowed Python mode: when the window opens or closes next (None:
    /// no Python stages, or always attached).
    pub fn python_next(&self) -> Option<tokio::time::Instant> {
        self.python.as_ref().map(|w| w.next())
    }

    /// Windowed Python mode: opens or closes the window.
    pub fn python_toggle(&mut self) -> Result<(), ProbeError> {
        match self.python.as_mut() {
            Some(w) => w.toggle(&mut self.ebpf),
            None => Ok(()),
        }
    }

    /// How the uprobes were attached, and how long it took.
    pub fn attach_mode(&self) -> (AttachMode, Duration) {
        (self.mode, self.attach_time)
    }

    /// Detaches every uprobe now (dropping [`Probes`] does it too); how
    /// many and how long it took.
    pub fn detach_uprobes(&mut self) -> Detached {
        std::mem::take(&mut self.uprobes).into_set().detach()
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

/// An attach error naming the stages and the function (or how many).
fn attach_error(group: &[&ProbeSite], e: &AttachError) -> ProbeError {
    let mut stages: Vec<&str> = group.iter().map(|s| s.stage.as_str()).collect();
    stages.dedup();
    ProbeError::Attach {
        stage: stages.join("', '"),
        symbol: match group {
            [one] => one.symbol.clone(),
            many => format!("{} functions", many.len()),
        },
        path: group[0].path.display().to_string(),
        reason: chain(e),
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
