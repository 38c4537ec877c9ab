//! `cargo xtask test`: setup, build everything, run every test serially.
//! The integration tests measure timing on a small machine, so the test
//! binaries run with --test-threads=1 (cargo runs the binaries one by one).
use anyhow::Result;

use crate::{cargo, setup, status};

pub fn run(test_args: &[String]) -> Result<i32> {
    setup::run(false)?;
    let built = status(cargo().args(["build", "--workspace"]))?;
    if !built.success() {
        return Ok(built.code().unwrap_or(1));
    }
    let tested = status(
        cargo()
            .args(["test", "--workspace", "--", "--test-threads=1"])
            .args(test_args),
    )?;
    Ok(tested.code().unwrap_or(1))
}
