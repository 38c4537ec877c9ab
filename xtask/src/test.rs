//! `cargo xtask test`: setup, build everything, run every test serially.
//! The integration tests measure timing on a small machine, so the test
//! binaries run with --test-threads=1 (cargo runs the binaries one by one).
//! The eBPF crate only builds for the BPF target (the agent's build script
//! builds it), so it is excluded from `--workspace`.
use anyhow::Result;

use crate::{cargo, setup, status};

const WORKSPACE: [&str; 3] = ["--workspace", "--exclude", "adeline-trace-ebpf"];

pub fn run(test_args: &[String]) -> Result<i32> {
    setup::run(false)?;
    let built = status(cargo().arg("build").args(WORKSPACE))?;
    if !built.success() {
        return Ok(built.code().unwrap_or(1));
    }
    let tested = status(
        cargo()
            .arg("test")
            .args(WORKSPACE)
            // Every suite runs even after one fails: one run reports them all.
            .arg("--no-fail-fast")
            .args(["--", "--test-threads=1"])
            .args(test_args),
    )?;
    Ok(tested.code().unwrap_or(1))
}
