//! `cargo xtask fuzz [--seconds N] [TARGET...]`: build the cargo-fuzz
//! targets of fuzz/ and run each for a fixed time; fails when one finds a
//! crash, a hang (an input taking longer than `--timeout`) or runs out of
//! memory.
//!
//! cargo-fuzz's flags (`-Zsanitizer=address`, sanitizer coverage) are
//! nightly-only; they run on the pinned stable toolchain with
//! `RUSTC_BOOTSTRAP=1`, as the eBPF build does, so no nightly toolchain
//! is needed (the stable one ships the sanitizer runtimes). cargo-fuzz
//! itself comes from crates.io (`cargo xtask setup`, skipped when the
//! pinned version is already installed).
//!
//! Inputs: libFuzzer reads the seeds kept in the repository
//! (fuzz/seeds/TARGET: the demo's plan, the docs' rules and configs, tiny
//! ELF files built by fuzz/seeds/src/build.sh, encoded records) and a
//! working corpus it grows (target/fuzz/corpus/TARGET, kept between runs,
//! not committed). A crashing input lands in fuzz/artifacts/TARGET/
//! (not committed); the line printed says how to reproduce and minimize
//! it. Each fixed crash becomes a unit test beside the code it hit.
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use crate::{root_dir, setup, status, target_dir};

/// The targets (fuzz/fuzz_targets/NAME.rs), and the largest input each
/// gets (0: libFuzzer's default, the larger of 4096 and the largest seed).
pub const TARGETS: [(&str, usize); 5] = [
    ("alert_rule", 0),
    // Larger than the default: a config's cost grows with its stages and
    // rules, and a blow-up must be reachable.
    ("config", 16384),
    ("elf_symbols", 0),
    ("usdt_notes", 0),
    ("event_decode", 16384),
];

pub fn run(seconds: u64, timeout: u64, targets: &[String]) -> Result<i32> {
    for t in targets {
        if !TARGETS.iter().any(|(name, _)| name == t) {
            bail!(
                "unknown fuzz target '{t}'; targets: {}",
                TARGETS.map(|(n, _)| n).join(", ")
            );
        }
    }
    let chosen: Vec<(&str, usize)> = TARGETS
        .into_iter()
        .filter(|(name, _)| targets.is_empty() || targets.iter().any(|t| t == name))
        .collect();
    // The agent's build script needs bpf-linker; cargo-fuzz itself.
    setup::run(false)?;
    let built = status(fuzz_cmd().arg("build"))?;
    if !built.success() {
        return Ok(built.code().unwrap_or(1));
    }
    let mut failed = Vec::new();
    let mut summary = Vec::new();
    for (name, max_len) in chosen {
        let corpus = target_dir().join("fuzz/corpus").join(name);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let seeds = root_dir().join("fuzz/seeds").join(name);
        println!(
            "fuzz: {name}: {seconds} s (corpus {}, seeds {})",
            corpus.display(),
            seeds.display()
        );
        let started = Instant::now();
        let mut cmd = fuzz_cmd();
        cmd.args(["run", name]).arg(&corpus).arg(&seeds).arg("--");
        cmd.arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={timeout}"))
            .args(["-rss_limit_mb=2048", "-print_final_stats=1"]);
        if max_len > 0 {
            cmd.arg(format!("-max_len={max_len}"));
        }
        let st = status(&mut cmd)?;
        let took = started.elapsed().as_secs();
        let inputs = count_files(&corpus);
        if st.success() {
            summary.push(format!("{name}: ok, {took} s, corpus {inputs} inputs"));
        } else {
            let artifacts = root_dir().join("fuzz/artifacts").join(name);
            summary.push(format!(
                "{name}: FAILED ({st}) after {took} s; input in {}: reproduce with \
                 `RUSTC_BOOTSTRAP=1 cargo fuzz run {name} FILE`, minimize with \
                 `RUSTC_BOOTSTRAP=1 cargo fuzz tmin {name} FILE`",
                artifacts.display()
            ));
            failed.push(name);
        }
    }
    for line in &summary {
        println!("fuzz: {line}");
    }
    Ok(if failed.is_empty() { 0 } else { 1 })
}

/// `cargo fuzz` in the workspace root (it finds fuzz/ there) with the
/// nightly flags allowed on the stable toolchain.
fn fuzz_cmd() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg("fuzz")
        .current_dir(root_dir())
        .env("RUSTC_BOOTSTRAP", "1");
    // The xtask's own CARGO_TARGET_DIR (if any) must not leak into the
    // fuzz workspace, which has its own target directory.
    cmd.env_remove("CARGO_TARGET_DIR");
    cmd
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).count())
        .unwrap_or(0)
}
