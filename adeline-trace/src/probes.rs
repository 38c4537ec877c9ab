//! Loads the BPF object, configures its maps, attaches every resolved probe
//! with cookie = stage id, and owns the links: dropping [`Probes`] detaches
//! everything.
use std::{num::NonZeroU32, time::Duration};

use adeline_trace_common::{
    python::{PyPattern, PySite},
    stage_slots, RssState, COUNTERS, MAX_ALLOCS, MAX_ALLOC_STACKS, NO_FRAME_STAGE,
};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        uprobe::{UProbeAttachPoint, UProbeScope},
        TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use thiserror::Error;

use crate::{
    alloc::{maps::AllocMaps, AllocSpec},
    cli::MemoryMode,
    resolve::{ProbeSite, SiteKind},
};

pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/adeline-trace-ebpf"));

/// How to load and attach the programs.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    /// Processes to trace (empty: all).
    pub pids: Vec<u32>,
    pub min_duration: Duration,
    pub ring_bytes: u32,
    /// Stage id of the frame root.
    pub frame_stage: Option<u32>,
    /// Attach empty programs at stage sites (benchmark floor).
    pub floor: bool,
    /// Alloc mode (its sites come with the others, kind Alloc*/Free).
    pub alloc: Option<AllocSpec>,
    /// Which memory tracepoints to attach (when pids are known).
    pub memory: MemoryMode,
    /// Python stages: the site table and compiled patterns.
    pub python: Option<(Vec<PySite>, Vec<PyPattern>)>,
}

/// Kernel programs in attach order: every return probe before any entry
/// probe, so no entry is recorded without its return being watched.
fn programs_for(floor: bool) -> [(&'static str, SiteKind); 9] {
    let (exit, entry) = match floor {
        true => ("floor_exit", "floor_entry"),
        false => ("stage_exit", "stage_entry"),
    };
    [
        (exit, SiteKind::Stage),
        ("gauge_ret", SiteKind::GaugeRet),
        ("alloc_exit", SiteKind::AllocExit),
        ("py_exit", SiteKind::PyExit),
        (entry, SiteKind::Stage),
        ("py_entry", SiteKind::PyEntry),
        ("gauge_arg", SiteKind::GaugeArg),
        ("alloc_enter", SiteKind::AllocEnter),
        ("free_enter", SiteKind::Free),
    ]
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
    /// The Python sites' links (windowed mode detaches and re-attaches them).
    python: crate::python::window::Links,
}

fn load_err(e: impl std::fmt::Display) -> ProbeError {
    ProbeError::Load(e.to_string())
}

/// Joins an error and its sources into one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let msg = inner.to_string();
        // Some errors already print their source; do not repeat it.
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = inner.source();
    }
    s
}

impl Probes {
    /// Loads the programs with the filter configuration and attaches them
    /// at every site (see [`programs_for`] for the order). On any error all
    /// that was attached is detached before returning.
    pub fn attach(sites: &[ProbeSite], opts: &ProbeOptions) -> Result<Probes, ProbeError> {
        check_privileges()?;
        raise_memlock();
        let pids = &opts.pids;
        let filter_pids = u32::from(!pids.is_empty());
        let min_dur_ns = u64::try_from(opts.min_duration.as_nanos()).unwrap_or(u64::MAX);
        let frame_stage = opts.frame_stage.unwrap_or(NO_FRAME_STAGE);
        // Without alloc mode its big maps are created with one entry.
        let (min_bytes, sample, allocs_max, stacks_max) = match &opts.alloc {
            Some(a) => (a.min_bytes, a.sample, MAX_ALLOCS, MAX_ALLOC_STACKS),
            None => (0, 1, 1, 1),
        };
        let py_npatterns = opts.python.as_ref().map_or(0u32, |p| p.1.len() as u32);
        let mut ebpf = EbpfLoader::new()
            // THREADS is a task-storage map, which aya creates but has no type for.
            .allow_unsupported_maps()
            .override_global("FILTER_PIDS", &filter_pids, true)
            .override_global("MIN_DUR_NS", &min_dur_ns, true)
            .override_global("FRAME_STAGE", &frame_stage, true)
            .override_global("ALLOC_MIN_BYTES", &min_bytes, true)
            .override_global("ALLOC_SAMPLE", &sample, true)
            .override_global("PY_NPATTERNS", &py_npatterns, true)
            .map_max_entries("ALLOCS", allocs_max)
            .map_max_entries("ALLOC_STACKS", stacks_max)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(chain(&e)))?;
        fill_pid_filter(&mut ebpf, pids)?;
        if let Some((sites, patterns)) = &opts.python {
            crate::python::fill_maps(&mut ebpf, sites, patterns).map_err(ProbeError::Load)?;
        }
        let scopes: Vec<UProbeScope> = if pids.is_empty() {
            vec![UProbeScope::AllProcesses]
        } else {
            pids.iter()
                .filter_map(|&p| NonZeroU32::new(p))
                .map(UProbeScope::OneProcess)
                .collect()
        };
        let mut attached = 0;
        let mut python = crate::python::window::Links {
            sites: sites
                .iter()
                .filter(|s| matches!(s.kind, SiteKind::PyEntry | SiteKind::PyExit))
                .cloned()
                .collect(),
            scopes: scopes.clone(),
            ..Default::default()
        };
        for (name, kind) in programs_for(opts.floor) {
            if !sites.iter().any(|s| s.kind == kind) {
                continue;
            }
            let prog: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| load_err(format!("program {name} missing from the object")))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| ProbeError::Load(chain(&e)))?;
            prog.load().map_err(|e| ProbeError::Load(chain(&e)))?;
            for site in sites.iter().filter(|s| s.kind == kind) {
                for scope in &scopes {
                    let point = UProbeAttachPoint {
                        location: site.offset.into(),
                        cookie: Some(site.cookie),
                    };
                    let link =
                        prog.attach(point, &site.path, *scope)
                            .map_err(|e| ProbeError::Attach {
                                stage: site.stage.clone(),
                                symbol: site.symbol.clone(),
                                path: site.path.display().to_string(),
                                reason: chain(&e),
                            })?;
                    if matches!(kind, SiteKind::PyEntry | SiteKind::PyExit) {
                        python.links.push((name, link));
                    }
                    attached += 1;
                }
            }
        }
        // Memory mappings: syscall tracepoints fire for every process, so
        // they are attached only when the kernel pid filter is on.
        let memory_untraced = if opts.memory == MemoryMode::Off {
            Some("--memory off".into())
        } else if pids.is_empty() {
            Some(
                "tracing every process: memory mappings are traced only with -p or a command"
                    .into(),
            )
        } else {
            match attach_memory(&mut ebpf, opts.memory) {
                Ok(n) => {
                    attached += n;
                    None
                }
                Err(e) => Some(e),
            }
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
            Some(spec) => Some(take_alloc_maps(&mut ebpf, spec.clone())?),
            None => None,
        };
        Ok(Probes {
            ring,
            counters,
            alloc,
            ebpf,
            attached,
            memory_untraced,
            python,
        })
    }

    /// Whether Python probes are attached (or were, in windowed mode).
    pub fn has_python(&self) -> bool {
        !self.python.sites.is_empty()
    }

    /// Windowed Python mode: attaches (`on`) or detaches the Python probes.
    pub fn python_window(&mut self, on: bool) -> Result<(), ProbeError> {
        crate::python::window::toggle(&mut self.ebpf, &mut self.python, on)
            .map_err(ProbeError::Load)
    }

    /// Number of kernel attachments (entry and exit count separately).
    pub fn attached(&self) -> usize {
        self.attached
    }

    /// The resident set of `pid` as `kmem:rss_stat` last reported it (None
    /// before its first event, or when memory is not traced).
    pub fn kernel_rss(&self, pid: u32) -> Option<u64> {
        let mm_ids: HashMap<&MapData, u32, u32> =
            HashMap::try_from(self.ebpf.map("MM_IDS")?).ok()?;
        let rss: HashMap<&MapData, u32, RssState> =
            HashMap::try_from(self.ebpf.map("RSS")?).ok()?;
        let mm = mm_ids.get(&pid, 0).ok()?;
        Some(rss.get(&mm, 0).ok()?.rss_bytes())
    }

    /// Resident bytes charged to stage ids `0..stages`, then to "(no
    /// stage)" (summed over CPUs; kmem:rss_stat).
    pub fn stage_resident(&self, stages: usize) -> Result<Vec<i64>, ProbeError> {
        let err = |reason: String| ProbeError::Map {
            map: "STAGE_RSS",
            reason,
        };
        let map = self
            .ebpf
            .map("STAGE_RSS")
            .ok_or_else(|| err("missing".into()))?;
        let map: PerCpuArray<&MapData, i64> =
            PerCpuArray::try_from(map).map_err(|e| err(chain(&e)))?;
        stage_slots(stages)
            .map(|i| {
                map.get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .map_err(|e| err(chain(&e)))
            })
            .collect()
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

/// Attaches the memory tracepoint programs (mmap, munmap, mremap, brk
/// syscalls and kmem:rss_stat); the number of attachments, or why not
/// (e.g. tracefs not mounted).
fn attach_memory(ebpf: &mut Ebpf, mode: MemoryMode) -> Result<usize, String> {
    let all = [
        ("mem_mmap", "syscalls", "sys_enter_mmap"),
        ("mem_munmap", "syscalls", "sys_enter_munmap"),
        ("mem_mremap", "syscalls", "sys_enter_mremap"),
        ("mem_brk", "syscalls", "sys_exit_brk"),
        ("mem_rss", "kmem", "rss_stat"),
    ];
    let events = match mode {
        MemoryMode::Full => &all[..],
        _ => &all[..4],
    };
    for &(name, category, event) in events {
        let prog: &mut TracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| chain(&e))?;
        prog.load().map_err(|e| chain(&e))?;
        prog.attach(category, event).map_err(|e| chain(&e))?;
    }
    Ok(events.len())
}

/// Takes alloc mode's maps out of the object.
fn take_alloc_maps(ebpf: &mut Ebpf, spec: AllocSpec) -> Result<AllocMaps, ProbeError> {
    let mut take = |name: &'static str| {
        ebpf.take_map(name)
            .ok_or_else(|| load_err(format!("no {name} map")))
    };
    let (allocs, stacks, stats) = (take("ALLOCS")?, take("ALLOC_STACKS")?, take("ALLOC_STATS")?);
    let bad = |e: aya::maps::MapError| ProbeError::Load(chain(&e));
    Ok(AllocMaps::new(
        spec,
        HashMap::try_from(allocs).map_err(bad)?,
        StackTraceMap::try_from(stacks).map_err(bad)?,
        PerCpuArray::try_from(stats).map_err(bad)?,
    ))
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
