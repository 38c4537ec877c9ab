//! `adeline-trace compare`: the regression gate.

use std::process::ExitCode;

use crate::cli::CompareArgs;

/// Exit 0: no regression beyond the threshold; 1: regression; 2: bad input.
pub fn compare(_args: &CompareArgs) -> ExitCode {
    eprintln!("error: compare is not implemented yet");
    ExitCode::from(2)
}
