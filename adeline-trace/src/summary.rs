//! `adeline-trace summary`: query the running agent.

use crate::cli::SummaryArgs;

pub fn summary(_args: &SummaryArgs) -> anyhow::Result<()> {
    anyhow::bail!("summary is not implemented yet")
}
