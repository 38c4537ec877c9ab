//! Probe kind `alloc` (`run --alloc`): the allocator functions of the C
//! library the traced process uses (its mappings with `-p`, the linker
//! cache for a launched command), the options they are loaded with, and
//! the readers of the maps they fill: per-stage totals and the outstanding
//! allocations grouped by user stack. Kernel side: adeline-trace-ebpf/src/alloc.rs.
use std::{collections::HashMap as StdHashMap, path::Path, time::Duration};

use adeline_trace_common::{
    stage_slots, AllocInfo, AllocStats, ALLOC_FN_ALIGNED, ALLOC_FN_CALLOC, ALLOC_FN_MALLOC,
    ALLOC_FN_MMAP, ALLOC_FN_POSIX_MEMALIGN, ALLOC_FN_REALLOC, MAX_ALLOCS, MAX_ALLOC_STACKS,
    NO_STACK,
};
use aya::{
    maps::{HashMap, MapData, PerCpuArray, StackTraceMap},
    Ebpf, EbpfLoader,
};
use thiserror::Error;

use crate::symbols::{
    placement::{place_symbol, Needs},
    process,
    symbolize::StackSymbolizer,
    TargetError,
};

use super::{
    resolve::Resolver,
    site::{chain, ProbeError, ProbeSite, Program},
};

/// Alloc mode options (present = `--alloc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocSpec {
    /// Allocations smaller than this are not tracked (in the kernel).
    pub min_bytes: u64,
    /// Track one allocation in this many, chosen at random (1 = all).
    pub sample: u32,
    /// Allocation sites report only allocations at least this old.
    pub min_age: Duration,
    /// How many sites to report.
    pub top: usize,
}

pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(1);
pub const DEFAULT_TOP: usize = 10;

/// Functions that return a new block, with how to read them (the cookie).
const ALLOCATORS: &[(&str, u32)] = &[
    ("malloc", ALLOC_FN_MALLOC),
    ("calloc", ALLOC_FN_CALLOC),
    ("realloc", ALLOC_FN_REALLOC),
    ("posix_memalign", ALLOC_FN_POSIX_MEMALIGN),
    ("aligned_alloc", ALLOC_FN_ALIGNED),
    ("memalign", ALLOC_FN_ALIGNED),
    ("valloc", ALLOC_FN_MALLOC),
    ("pvalloc", ALLOC_FN_MALLOC),
    ("mmap", ALLOC_FN_MMAP),
];

/// Functions that end a block (first argument = its address).
const RELEASERS: &[&str] = &["free", "munmap"];

/// An allocator's return (the address) before its entry (the size).
pub const ALLOCATOR: &[Program] = &[Program::ret("alloc_exit"), Program::entry("alloc_enter")];
/// A releaser's entry only.
pub const RELEASER: &[Program] = &[Program::entry("free_enter")];

/// The stage name alloc sites carry (they belong to no stage).
pub const ALLOC_SITE_NAME: &str = "(alloc)";

#[derive(Debug, Error)]
pub enum AllocSiteError {
    #[error("--alloc: cannot find the C library of the traced process: {0}")]
    NoLibc(TargetError),
    #[error("--alloc: {path} has no '{symbol}' function: is the process linked against another allocator?")]
    Missing { path: String, symbol: &'static str },
    #[error("--alloc: {0}")]
    Target(#[from] TargetError),
}

/// Allocator and releaser sites in the C library of the resolver's pids
/// (the linker cache when there are none). `malloc` and `free` are
/// required; the others are probed when present. Aliases (aligned_alloc =
/// memalign) are probed once.
pub fn sites(resolver: &mut Resolver<'_>) -> Result<Vec<ProbeSite>, AllocSiteError> {
    let libc = process::resolve_target("c", resolver.pids()).map_err(AllocSiteError::NoLibc)?;
    sites_in(resolver, &libc)
}

fn sites_in(resolver: &mut Resolver<'_>, libc: &Path) -> Result<Vec<ProbeSite>, AllocSiteError> {
    let elf = resolver.open(libc)?;
    let mut sites: Vec<ProbeSite> = Vec::new();
    let mut seen: Vec<u64> = Vec::new();
    // Each function's probes go where the placement rules allow (past a
    // NULL check's `test`, onto a `push` or a `jcc`, see
    // symbols/placement.rs): the entry probe must still see the arguments
    // its program reads.
    let mut add =
        |symbol: &'static str, programs: &'static [Program], needs: Needs, cookie: u32| {
            let Some(f) = elf.matching(symbol).ok().and_then(|f| f.first().copied()) else {
                return Ok(false);
            };
            if seen.contains(&f.file_offset) {
                return Ok(true);
            }
            let Ok(placement) = place_symbol(libc, elf, f, &needs)? else {
                return Ok(false);
            };
            seen.push(f.file_offset);
            sites.push(ProbeSite {
                stage: ALLOC_SITE_NAME.into(),
                cookie: u64::from(cookie),
                path: libc.to_path_buf(),
                symbol: symbol.into(),
                offset: f.file_offset,
                placement,
                ref_ctr_offset: 0,
                programs,
            });
            Ok::<bool, TargetError>(true)
        };
    let missing = |symbol| AllocSiteError::Missing {
        path: libc.display().to_string(),
        symbol,
    };
    for &(symbol, cookie) in ALLOCATORS {
        // One site for both programs: the entry reads the arguments, the
        // return probe needs the return address at [rsp].
        if !add(symbol, ALLOCATOR, Needs::ALLOC_ARGS, cookie)? && symbol == "malloc" {
            return Err(missing("malloc"));
        }
    }
    for &symbol in RELEASERS {
        if !add(symbol, RELEASER, Needs::FIRST_ARG, 0)? && symbol == "free" {
            return Err(missing("free"));
        }
    }
    Ok(sites)
}

/// The kernel globals and map sizes of alloc mode; without it its big maps
/// are created with one entry.
pub struct Globals {
    min_bytes: u64,
    sample: u32,
    allocs_max: u32,
    stacks_max: u32,
}

impl Globals {
    pub fn new(spec: Option<&AllocSpec>) -> Globals {
        match spec {
            Some(a) => Globals {
                min_bytes: a.min_bytes,
                sample: a.sample,
                allocs_max: MAX_ALLOCS,
                stacks_max: MAX_ALLOC_STACKS,
            },
            None => Globals {
                min_bytes: 0,
                sample: 1,
                allocs_max: 1,
                stacks_max: 1,
            },
        }
    }

    /// Sets them on the loader.
    pub fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader
            .override_global("ALLOC_MIN_BYTES", &self.min_bytes, true)
            .override_global("ALLOC_SAMPLE", &self.sample, true)
            .map_max_entries("ALLOCS", self.allocs_max)
            .map_max_entries("ALLOC_STACKS", self.stacks_max);
    }
}

/// Outstanding allocations of one stage and user stack (alloc mode),
/// sizes scaled by the sampling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutstandingSite {
    /// Stage id, or `NO_STAGE`.
    pub stage: u32,
    pub bytes: u64,
    pub allocs: u64,
    /// Age of the oldest of them (ns).
    pub oldest_age_ns: u64,
    /// The user stack, innermost first, symbolized.
    pub stack: Vec<String>,
}

/// The alloc maps taken from the loaded object, with the options they
/// were loaded with.
pub struct AllocMaps {
    pub spec: AllocSpec,
    pub allocs: HashMap<MapData, u64, AllocInfo>,
    pub stacks: StackTraceMap<MapData>,
    pub stats: PerCpuArray<MapData, AllocStats>,
    symbolizer: StackSymbolizer,
}

impl AllocMaps {
    /// Takes alloc mode's maps out of the object.
    pub fn take(ebpf: &mut Ebpf, spec: AllocSpec) -> Result<AllocMaps, ProbeError> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| ProbeError::Load(format!("no {name} map")))
        };
        let (allocs, stacks, stats) =
            (take("ALLOCS")?, take("ALLOC_STACKS")?, take("ALLOC_STATS")?);
        let bad = |e: aya::maps::MapError| ProbeError::Load(chain(&e));
        Ok(AllocMaps {
            spec,
            allocs: HashMap::try_from(allocs).map_err(bad)?,
            stacks: StackTraceMap::try_from(stacks).map_err(bad)?,
            stats: PerCpuArray::try_from(stats).map_err(bad)?,
            symbolizer: StackSymbolizer::default(),
        })
    }

    /// Totals (summed over CPUs) of stage ids `0..stages`, then "(no stage)".
    pub fn totals(&self, stages: usize) -> Vec<AllocStats> {
        stage_slots(stages)
            .map(|i| {
                let mut sum = AllocStats::default();
                if let Ok(per_cpu) = self.stats.get(&i, 0) {
                    for s in per_cpu.iter() {
                        sum.allocs += s.allocs;
                        sum.alloc_bytes += s.alloc_bytes;
                        sum.frees += s.frees;
                        sum.freed_bytes += s.freed_bytes;
                    }
                }
                sum
            })
            .collect()
    }

    /// The `--alloc-top` largest sites (by outstanding bytes) among
    /// allocations at least `--min-age` old at `now_ns`, symbolized; sizes
    /// scaled by the sampling. Walks the whole outstanding map (one syscall
    /// per entry).
    pub fn sites(&mut self, now_ns: u64) -> Vec<OutstandingSite> {
        let AllocSpec {
            min_age,
            top,
            sample,
            ..
        } = self.spec;
        let min_age_ns = u64::try_from(min_age.as_nanos()).unwrap_or(u64::MAX);
        // (pid, stack, stage) -> (bytes, count, oldest ts)
        let mut groups: StdHashMap<(u32, u32, u32), (u64, u64, u64)> = StdHashMap::new();
        for (_, info) in self.allocs.iter().flatten() {
            if now_ns.saturating_sub(info.ts_ns) < min_age_ns {
                continue;
            }
            let g = groups
                .entry((info.pid, info.stack_id, info.stage))
                .or_insert((0, 0, u64::MAX));
            g.0 += info.size;
            g.1 += 1;
            g.2 = g.2.min(info.ts_ns);
        }
        let mut ranked: Vec<_> = groups.into_iter().collect();
        ranked.sort_unstable_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
        ranked.truncate(top);
        let scale = u64::from(sample.max(1));
        ranked
            .into_iter()
            .map(
                |((pid, stack_id, stage), (bytes, count, oldest))| OutstandingSite {
                    stage,
                    bytes: bytes * scale,
                    allocs: count * scale,
                    oldest_age_ns: now_ns.saturating_sub(oldest),
                    stack: self.stack(pid, stack_id),
                },
            )
            .collect()
    }

    fn stack(&mut self, pid: u32, id: u32) -> Vec<String> {
        if id == NO_STACK {
            return Vec::new();
        }
        let Ok(trace) = self.stacks.get(&id, 0) else {
            return Vec::new();
        };
        let addrs: Vec<u64> = trace.frames().iter().map(|f| f.ip).collect();
        self.symbolizer.frames(pid, id, &addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_c_library_has_every_entry_point_once() {
        let pid = [std::process::id()];
        let sites = sites(&mut Resolver::new(&pid)).unwrap();
        let names = |programs| -> Vec<&str> {
            sites
                .iter()
                .filter(|s| s.programs == programs)
                .map(|s| s.symbol.as_str())
                .collect()
        };
        // glibc: memalign is an alias of aligned_alloc (same address).
        assert_eq!(
            names(ALLOCATOR),
            [
                "malloc",
                "calloc",
                "realloc",
                "posix_memalign",
                "aligned_alloc",
                "valloc",
                "pvalloc",
                "mmap"
            ]
        );
        assert_eq!(names(RELEASER), ["free", "munmap"]);
        assert_eq!(sites.len(), 10);
        let calloc = sites.iter().find(|s| s.symbol == "calloc").unwrap();
        assert_eq!(calloc.cookie, u64::from(ALLOC_FN_CALLOC));
        assert!(calloc.path.to_string_lossy().contains("libc.so"));
        assert!(sites.iter().all(|s| s.stage == ALLOC_SITE_NAME));
    }

    #[test]
    fn a_library_without_an_allocator_is_a_clear_error() {
        let libm = process::resolve_target("m", &[]).unwrap();
        let err = sites_in(&mut Resolver::new(&[]), &libm)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "--alloc: {} has no 'malloc' function: is the process linked against another allocator?",
                libm.display()
            )
        );
    }
}
