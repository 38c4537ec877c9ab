//! ELF symbol reader (adeline-trace/src/symbols/elf.rs) from bytes: the
//! function table, exact / glob matching and the no-match suggestions, as
//! `--stage` and `list` use them. Property: every function's file offset
//! lies inside the file.
#![no_main]

use std::path::Path;

use adeline_trace::symbols::ElfFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(elf) = ElfFile::parse(Path::new("fuzz.elf"), data) else {
        return;
    };
    for f in &elf.functions {
        assert!(f.file_offset < data.len() as u64, "{f:?} in {} bytes", data.len());
    }
    let _ = elf.list(None);
    let _ = elf.list(Some("*::*"));
    for pattern in ["main", "infer", "vision::scale", "*Detector::infer*", "a[b", "stage_?"] {
        let _ = elf.matching(pattern);
    }
    if let Some(f) = elf.functions.first().filter(|f| !f.raw.contains(['*', '?', '['])) {
        let found = elf.matching(&f.raw).expect("a function is found by its raw name");
        assert!(found.iter().any(|g| g.file_offset == f.file_offset));
    }
});
