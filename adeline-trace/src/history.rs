//! `adeline-trace history`: per-stage trends from a run's history database.
use crate::cli::HistoryArgs;

pub fn history(_args: &HistoryArgs) -> anyhow::Result<()> {
    anyhow::bail!("history is not implemented yet")
}
