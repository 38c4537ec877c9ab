//! Human-readable tables (stderr): the final summary and the --live view.
use std::fmt::Write as _;

use crate::metrics::LatencySummary;

/// Formats nanoseconds with a unit that keeps 3 significant figures.
pub fn human_ns(ns: u64) -> String {
    let v = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}us", v / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", v / 1e6)
    } else {
        format!("{:.2}s", v / 1e9)
    }
}

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
            human_ns(s.min_ns),
            human_ns(s.mean_ns),
            human_ns(s.p50_ns),
            human_ns(s.p90_ns),
            human_ns(s.p99_ns),
            human_ns(s.max_ns),
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
            human_ns(s.p50_ns),
            human_ns(s.p99_ns),
            human_ns(s.max_ns),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_ns(999), "999ns");
        assert_eq!(human_ns(1_500), "1.5us");
        assert_eq!(human_ns(2_345_678), "2.35ms");
        assert_eq!(human_ns(3_000_000_000), "3.00s");
    }

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
