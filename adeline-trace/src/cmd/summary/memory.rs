//! Memory facts for people: which stage grows fastest, and the frame of an
//! allocation stack that asked for the memory (summary lines).
use crate::{alerts::rule::LEAK_DEFAULT_BYTES_PER_S, metrics::snapshot::Snapshot};

/// The stage whose memory grows fastest (alloc mode: outstanding bytes;
/// otherwise resident bytes charged), if one grows faster than a bare
/// `leak()` rule's threshold (1 MiB/min): (stage, bytes/s, bytes).
pub fn fastest_growing_stage(snapshot: &Snapshot) -> Option<(String, f64, f64)> {
    snapshot
        .holdings()
        .into_iter()
        .filter_map(|h| Some((h.stage.to_string(), h.growth_bytes_per_s?, h.bytes)))
        .filter(|r| r.1 > LEAK_DEFAULT_BYTES_PER_S)
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// The first frame of an allocation stack outside the Rust runtime's
/// allocation layers: the code that asked for the memory.
pub fn caller_frame(stack: &[String]) -> &str {
    const RUNTIME: [&str; 8] = [
        "alloc::",
        "<alloc::",
        "core::",
        "<core::",
        "std::",
        "<std::",
        "__rust",
        "<u8 as alloc::",
    ];
    stack
        .iter()
        .find(|f| !RUNTIME.iter().any(|p| f.starts_with(p)))
        .or(stack.first())
        .map_or("(no stack)", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_asking_frame_skips_the_allocation_layers() {
        let stack: Vec<String> = [
            "<alloc::raw_vec::RawVecInner>::try_allocate_in",
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem (spec_from_elem.rs:51)",
            "alloc::vec::from_elem (mod.rs:3651)",
            "demo_pipeline::touched (demo_pipeline.rs:219)",
            "track (demo_pipeline.rs:199)",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            caller_frame(&stack),
            "demo_pipeline::touched (demo_pipeline.rs:219)"
        );
        assert_eq!(caller_frame(&stack[..1]), stack[0]);
        assert_eq!(caller_frame(&[]), "(no stack)");
    }
}
