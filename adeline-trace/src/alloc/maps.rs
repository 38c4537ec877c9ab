//! Reads alloc mode's kernel maps: per-stage totals, and the outstanding
//! allocations grouped into sites (user stack + stage).
use std::collections::HashMap as StdHashMap;

use adeline_trace_common::{stage_slots, AllocInfo, AllocStats, NO_STACK, NO_STAGE};
use aya::maps::{HashMap, MapData, PerCpuArray, StackTraceMap};

use crate::metrics::snapshot::AllocSite;

use super::AllocSpec;
use crate::{metrics::memory::alloc::NO_STAGE_NAME, symbols::symbolize::StackSymbolizer};

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
    pub fn new(
        spec: AllocSpec,
        allocs: HashMap<MapData, u64, AllocInfo>,
        stacks: StackTraceMap<MapData>,
        stats: PerCpuArray<MapData, AllocStats>,
    ) -> AllocMaps {
        AllocMaps {
            spec,
            allocs,
            stacks,
            stats,
            symbolizer: StackSymbolizer::default(),
        }
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
    pub fn sites(&mut self, now_ns: u64, names: &[String]) -> Vec<AllocSite> {
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
                |((pid, stack_id, stage), (bytes, count, oldest))| AllocSite {
                    stage: match stage {
                        NO_STAGE => NO_STAGE_NAME.to_string(),
                        s => names
                            .get(s as usize)
                            .cloned()
                            .unwrap_or_else(|| NO_STAGE_NAME.to_string()),
                    },
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
