//! USDT notes (adeline-trace/src/symbols/usdt.rs) from ELF bytes, and the
//! x86-64 argument specs on their own (the input as text). Property: probe
//! and semaphore file offsets lie inside the file.
#![no_main]

use std::path::Path;

use adeline_trace::symbols::usdt::{parse_args, usdt_probes_in};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(probes) = usdt_probes_in(Path::new("fuzz.elf"), data) {
        for p in &probes {
            assert!(p.file_offset < data.len() as u64, "{p:?}");
            assert!(p.semaphore == 0 || p.semaphore_offset < data.len() as u64, "{p:?}");
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_args(text, 0x1000, &|s| (s.len() % 3 != 0).then_some(0x4000 + s.len() as u64));
    }
});
