//! `adeline-trace history`: per-stage trends from a run's history database
//! (docs/history.md). Reads the file directly (read-only), so it works while
//! the agent writes it, after the agent stopped, and after it was killed.
use std::{
    fmt::Write as _,
    time::{Duration, UNIX_EPOCH},
};

use crate::{
    alerts::{rule::value_formatter, AlertEvent},
    cli::HistoryArgs,
    format,
    sinks::history::{now_ns, parse_since, since_ns, HistoryReader, HistoryReport, HistoryRow},
};

pub fn history(args: &HistoryArgs) -> anyhow::Result<()> {
    let since = parse_since("--since", &args.since)?;
    let reader = HistoryReader::open(&args.db)?;
    let from = since_ns(now_ns(), since);
    let report = reader.report(args.stage.as_deref(), from)?;
    if let Some(stage) = &args.stage {
        if report.rows.is_empty() {
            let known = reader.stages()?;
            if !known.contains(stage) {
                let known = match known.is_empty() {
                    true => "it has none yet".to_string(),
                    false => format!("its stages are {}", known.join(", ")),
                };
                anyhow::bail!("no stage '{stage}' in {}: {known}", args.db.display());
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if report.rows.is_empty() && report.alerts.is_empty() {
        let newest = match reader.newest_ns()? {
            Some(ts) => format!("the newest is from {}", time(ts)),
            None => "it has none yet".to_string(),
        };
        println!(
            "no history in {} in the last {}: {newest}",
            args.db.display(),
            args.since.trim()
        );
        return Ok(());
    }
    print!("{}", render(&report));
    Ok(())
}

/// One table per stage (in plan order), then frames and alert transitions.
pub fn render(report: &HistoryReport) -> String {
    let mut stages: Vec<&str> = Vec::new();
    for r in &report.rows {
        if !stages.contains(&r.stats.stage.as_str()) {
            stages.push(&r.stats.stage);
        }
    }
    let mut out = String::new();
    for stage in stages {
        let rows: Vec<&HistoryRow> = report
            .rows
            .iter()
            .filter(|r| r.stats.stage == stage)
            .collect();
        let _ = writeln!(out, "STAGE {stage}");
        let mut table =
            vec![["TIME (UTC)", "CALLS/S", "P50", "P95", "P99", "SHARE"].map(String::from)];
        for r in rows {
            let (s, l) = (&r.stats, &r.stats.latency);
            let cell = |ns| format::latency(l.count, ns);
            table.push([
                time(r.ts_ns),
                format!("{:.1}", s.rate_hz),
                cell(l.p50_ns),
                cell(l.p95_ns),
                cell(l.p99_ns),
                s.frame_share.map_or("-".into(), format::percent),
            ]);
        }
        out.push_str(&format::align(&table, &[0]));
        out.push('\n');
    }
    out.push_str(&frames(&report.rows));
    out.push_str(&alerts(&report.alerts));
    out
}

/// The frames of each interval (once, from the first stage's rows).
fn frames(rows: &[HistoryRow]) -> String {
    let mut table = vec![["TIME (UTC)", "FPS", "P50", "P95", "P99"].map(String::from)];
    let mut last_ts = None;
    for r in rows {
        let Some(fps) = r.fps else { continue };
        if last_ts == Some(r.ts_ns) {
            continue;
        }
        last_ts = Some(r.ts_ns);
        let cell = |ns: Option<u64>| match (r.frame_count, ns) {
            (Some(n), Some(ns)) if n > 0 => format::ns(ns),
            _ => "-".into(),
        };
        table.push([
            time(r.ts_ns),
            format!("{fps:.1}"),
            cell(r.frame_p50_ns),
            cell(r.frame_p95_ns),
            cell(r.frame_p99_ns),
        ]);
    }
    if table.len() == 1 {
        return String::new();
    }
    format!("FRAMES\n{}\n", format::align(&table, &[0]))
}

fn alerts(alerts: &[AlertEvent]) -> String {
    if alerts.is_empty() {
        return String::new();
    }
    let mut table = vec![["TIME (UTC)", "STATE", "VALUE", "THRESHOLD", "RULE"].map(String::from)];
    for a in alerts {
        let value = value_formatter(&a.rule);
        table.push([
            time(a.ts_ns),
            a.state.as_str().to_string(),
            value(a.value),
            value(a.threshold),
            a.rule.clone(),
        ]);
    }
    format!("ALERTS\n{}", format::align(&table, &[0, 1, 4]))
}

/// Wall-clock ns as `2023-11-14T22:13:20Z` (UTC, whole seconds).
fn time(ts_ns: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ts_ns)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        alerts::AlertState,
        metrics::snapshot::{Percentiles, StageStats},
    };

    const T0: u64 = 1_700_000_000_000_000_000;

    fn row(ts_ns: u64, stage: &str, count: u64, frames: bool) -> HistoryRow {
        HistoryRow {
            ts_ns,
            interval_ns: 10_000_000_000,
            stats: StageStats {
                stage: stage.into(),
                rate_hz: count as f64 / 10.0,
                latency: Percentiles {
                    count,
                    min_ns: 1_000_000,
                    mean_ns: 2_000_000,
                    p50_ns: 2_000_000,
                    p90_ns: 3_000_000,
                    p95_ns: 3_500_000,
                    p99_ns: 4_000_000,
                    p999_ns: 4_500_000,
                    max_ns: 5_000_000,
                },
                total_ns: count * 2_000_000,
                self_ns: count * 1_000_000,
                frame_share: frames.then_some(0.125),
            },
            fps: frames.then_some(29.5),
            frame_count: frames.then_some(295),
            frame_p50_ns: frames.then_some(31_000_000),
            frame_p95_ns: frames.then_some(38_000_000),
            frame_p99_ns: frames.then_some(45_000_000),
            frame_max_ns: frames.then_some(48_000_000),
            rss_bytes: None,
            rss_growth_bytes_per_s: None,
        }
    }

    #[test]
    fn a_table_per_stage_then_frames_and_alerts() {
        let report = HistoryReport {
            rows: vec![
                row(T0, "infer", 300, true),
                row(T0, "track", 0, true),
                row(T0 + 10_000_000_000, "infer", 250, true),
                row(T0 + 10_000_000_000, "track", 1, true),
            ],
            alerts: vec![AlertEvent {
                state: AlertState::Firing,
                rule: "p99(infer) > 3ms for 5s".into(),
                value: 4_000_000.0,
                threshold: 3_000_000.0,
                since_ns: T0 - 5_000_000_000,
                ts_ns: T0,
                profile: None,
            }],
        };
        let text = render(&report);
        let want = "\
STAGE infer
TIME (UTC)            CALLS/S     P50     P95     P99  SHARE
2023-11-14T22:13:20Z     30.0  2.00ms  3.50ms  4.00ms  12.5%
2023-11-14T22:13:30Z     25.0  2.00ms  3.50ms  4.00ms  12.5%

STAGE track
TIME (UTC)            CALLS/S     P50     P95     P99  SHARE
2023-11-14T22:13:20Z      0.0       -       -       -  12.5%
2023-11-14T22:13:30Z      0.1  2.00ms  3.50ms  4.00ms  12.5%

FRAMES
TIME (UTC)             FPS     P50     P95     P99
2023-11-14T22:13:20Z  29.5  31.0ms  38.0ms  45.0ms
2023-11-14T22:13:30Z  29.5  31.0ms  38.0ms  45.0ms

ALERTS
TIME (UTC)            STATE    VALUE  THRESHOLD  RULE
2023-11-14T22:13:20Z  firing  4.00ms     3.00ms  p99(infer) > 3ms for 5s
";
        assert_eq!(text, want, "got:\n{text}");
    }

    #[test]
    fn without_frames_there_is_no_frames_table() {
        let report = HistoryReport {
            rows: vec![row(T0, "infer", 3, false)],
            alerts: vec![],
        };
        let text = render(&report);
        assert!(!text.contains("FRAMES"), "{text}");
        assert!(text.contains("  -\n"), "no share: {text}");
    }
}
