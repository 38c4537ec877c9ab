//! What people read on stderr: the `--live` table every stats interval,
//! a line per alert transition, and the end-of-run table.
use std::{fmt::Write as _, io::Write as _};

use super::{
    sink::{Finish, Sink, SinkError, StageTotal, Stats},
    source::SnapshotSource,
};
use crate::{
    alerts::{rule::value_formatter, AlertEvent, AlertState},
    format,
    journal::{self, Priority},
    metrics::snapshot::Percentiles,
};

/// The stderr sink.
#[derive(Debug, Default)]
pub struct Console {
    /// Print the per-stage table every stats interval (`--live`).
    live: bool,
}

impl Console {
    pub fn new(live: bool) -> Console {
        Console { live }
    }
}

impl Sink for Console {
    fn stats(&mut self, stats: &Stats<'_>) -> Result<(), SinkError> {
        if self.live {
            let interval_s = stats.interval_ns as f64 / 1e9;
            say(&format!(
                "{}\n",
                live_table(stats.interval, interval_s, stats.drops)
            ));
        }
        Ok(())
    }

    fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError> {
        say(&format!(
            "{}adeline-trace: {}\n",
            journal::prefix(Priority::Warning),
            describe(event)
        ));
        Ok(())
    }

    fn finish(&mut self, finish: &Finish<'_>, _: &dyn SnapshotSource) -> Result<(), SinkError> {
        say(&summary_table(finish.stages));
        Ok(())
    }
}

/// Writes `text` to stderr; a closed stderr (its reader gone) is no
/// reason to stop, so the error is ignored (`eprint!` would panic).
fn say(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// One stderr line for an alert transition, values in the rule's units.
pub fn describe(event: &AlertEvent) -> String {
    let state = match event.state {
        AlertState::Firing => "ALERT firing",
        AlertState::Resolved => "alert resolved",
    };
    let fmt = value_formatter(&event.rule);
    format!(
        "{state}: {} (value {}, threshold {})",
        event.rule,
        fmt(event.value),
        fmt(event.threshold)
    )
}

/// The end-of-run table: count, min, mean, p50, p90, p99, max per stage.
pub fn summary_table(rows: &[StageTotal<'_>]) -> String {
    let width = rows.iter().map(|r| r.stage.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        format::pad("STAGE", width, true),
        "COUNT",
        "MIN",
        "MEAN",
        "P50",
        "P90",
        "P99",
        "MAX"
    );
    for StageTotal {
        stage: name,
        latency: s,
        ..
    } in rows
    {
        let _ = writeln!(
            out,
            "{} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            format::pad(name, width, true),
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
pub fn live_table(rows: &[(String, Percentiles)], interval_s: f64, drops: u64) -> String {
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{} {:>9} {:>10} {:>10} {:>10}   (last {interval_s:.1}s, drops {drops})\n",
        format::pad("STAGE", width, true),
        "CALLS/S",
        "P50",
        "P99",
        "MAX"
    );
    for (name, s) in rows {
        let _ = writeln!(
            out,
            "{} {:>9.1} {:>10} {:>10} {:>10}",
            format::pad(name, width, true),
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
        let s = Percentiles {
            count: 3,
            min_ns: 1_000,
            mean_ns: 2_000,
            p50_ns: 2_000,
            p90_ns: 3_000,
            p99_ns: 3_000,
            max_ns: 3_000,
            ..Percentiles::default()
        };
        let row = |stage| StageTotal {
            stage,
            latency: s,
            aggregated: None,
        };
        let t = summary_table(&[row("decode"), row("infer_layer")]);
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
        assert!(lines[1].starts_with("decode      "));
    }

    #[test]
    fn tables_take_any_name_length() {
        // Names are at most 64 characters when they come from a plan, but
        // the tables never panic on a longer one (format widths above
        // 65535 do).
        let long = "n".repeat(70_000);
        let t = summary_table(&[StageTotal {
            stage: &long,
            latency: Percentiles::default(),
            aggregated: None,
        }]);
        assert!(t.lines().nth(1).unwrap().starts_with(&long));
        let t = live_table(&[(long.clone(), Percentiles::default())], 1.0, 0);
        assert_eq!(t.lines().count(), 2);
        let t = format::align(&[[long.clone(), "1".into()]], &[0]);
        assert_eq!(t, format!("{long}  1\n"));
    }
}
