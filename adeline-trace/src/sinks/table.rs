//! Human-readable tables (stderr): the final summary and the --live view.
use std::fmt::Write as _;

use crate::{format, metrics::LatencySummary};

/// The end-of-run table: count, min, mean, p50, p90, p99, max per stage.
pub fn summary_table(rows: &[(&str, LatencySummary)]) -> String {
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{:<width$} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "STAGE", "COUNT", "MIN", "MEAN", "P50", "P90", "P99", "MAX"
    );
    for (name, s) in rows {
        let _ = writeln!(
            out,
            "{:<width$} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            name,
            s.count,
            format::ns(s.min_ns),
            format::ns(s.mean_ns),
            format::ns(s.p50_ns),
            format::ns(s.p90_ns),
            format::ns(s.p99_ns),
            format::ns(s.max_ns),
        );
    }
    out
}

/// The --live table for the last interval: calls/s and latency.
pub fn live_table(rows: &[(String, LatencySummary)], interval_s: f64, drops: u64) -> String {
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{:<width$} {:>9} {:>10} {:>10} {:>10}   (last {interval_s:.1}s, drops {drops})\n",
        "STAGE", "CALLS/S", "P50", "P99", "MAX"
    );
    for (name, s) in rows {
        let _ = writeln!(
            out,
            "{:<width$} {:>9.1} {:>10} {:>10} {:>10}",
            name,
            s.count as f64 / interval_s,
            format::ns(s.p50_ns),
            format::ns(s.p99_ns),
            format::ns(s.max_ns),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_table_is_aligned() {
        let s = LatencySummary {
            count: 3,
            min_ns: 1_000,
            mean_ns: 2_000,
            p50_ns: 2_000,
            p90_ns: 3_000,
            p99_ns: 3_000,
            max_ns: 3_000,
        };
        let t = summary_table(&[("decode", s), ("infer_layer", s)]);
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
        assert!(lines[1].starts_with("decode      "));
    }
}
