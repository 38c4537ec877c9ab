//! Per-stage memory families: resident bytes charged to each stage and
//! bytes mapped (default mode), allocations (alloc mode).
use crate::metrics::snapshot::{Snapshot, StageAlloc};

use super::text::{Exposition, Kind, Value};

/// An alloc mode family: name, type, help, and its value for a stage.
type AllocFamily = (&'static str, Kind, &'static str, fn(&StageAlloc) -> u64);

/// Adds the per-stage memory families of `s` (none when empty).
pub fn stage_memory(e: &mut Exposition, s: &Snapshot) {
    const RESIDENT: &str = "adeline_stage_resident_bytes";
    const MAPPED: &str = "adeline_stage_mapped_bytes_total";
    if !s.stage_memory.is_empty() {
        e.family(
            RESIDENT,
            Kind::Gauge,
            "Resident bytes the stage's page faults added minus those released while it ran (kmem:rss_stat), whole run.",
        );
        for m in &s.stage_memory {
            e.sample(
                RESIDENT,
                &[("stage", &m.stage)],
                Value::Int(m.resident_bytes),
            );
        }
        e.family(
            MAPPED,
            Kind::Counter,
            "Bytes mapped (mmap, growing mremap and brk) while the stage ran.",
        );
        for m in &s.stage_memory {
            e.sample(MAPPED, &[("stage", &m.stage)], Value::Count(m.mapped_bytes));
        }
    }
    let Some(alloc) = &s.alloc else {
        return;
    };
    let families: [AllocFamily; 3] = [
        (
            "adeline_stage_allocations_total",
            Kind::Counter,
            "Allocations made while the stage ran (alloc mode; estimated x N with --alloc-sample N).",
            |a| a.allocs,
        ),
        (
            "adeline_stage_allocated_bytes_total",
            Kind::Counter,
            "Bytes allocated while the stage ran (alloc mode).",
            |a| a.alloc_bytes,
        ),
        (
            "adeline_stage_outstanding_bytes",
            Kind::Gauge,
            "Bytes the stage allocated and nobody freed yet (alloc mode).",
            |a| a.outstanding_bytes,
        ),
    ];
    for (name, kind, help, value) in families {
        e.family(name, kind, help);
        for a in &alloc.stages {
            e.sample(name, &[("stage", &a.stage)], Value::Count(value(a)));
        }
    }
}
