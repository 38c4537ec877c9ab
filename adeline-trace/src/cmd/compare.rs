//! `adeline-trace compare BASELINE CURRENT`: the regression gate.
//!
//! Each input is a snapshot JSON (`run --summary-out`, `summary --json`) or a
//! JSON Lines event stream (`run -o`) whose last `summary` record is used.
//! Both carry every stage's latency in the one schema,
//! [`Percentiles`](crate::metrics::snapshot::Percentiles).
//! Stages are matched by name and one statistic (`--metric`, default p95)
//! is compared. A stage present in only one file (or with no calls in it) is
//! reported as NEW or MISSING but does not fail the gate. Frames (snapshot
//! files with a frame stage) are compared too, as the row `(frames)`.
//!
//! Exit status: 0 no stage grew by more than `--max-regression`, 1 at least
//! one did, 2 bad input (one `error: ...` line on stderr).
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;
use thiserror::Error;

use crate::{cli::CompareArgs, format, metrics::snapshot::Stat};

/// The label of the end-to-end frame latency row.
const FRAMES_ROW: &str = "(frames)";

/// Why the inputs cannot be compared (exit status 2).
#[derive(Debug, Error)]
pub enum CompareError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: not JSON ({detail}); expected a snapshot from `run --summary-out` or \
         `summary --json`, or a `run -o` event stream",
        .path.display()
    )]
    NotJson { path: PathBuf, detail: String },
    #[error(
        "{}: no stages (a snapshot has a \"stages\" list; a `run -o` stream has one in its \
         last \"summary\" record, written when the run ends)",
        .path.display()
    )]
    NoStages { path: PathBuf },
    #[error("{}: stages[{index}] has no \"stage\" name", .path.display())]
    BadStage { path: PathBuf, index: usize },
    #[error(
        "{}: stage '{stage}' is not a latency summary ({detail}); write the file again \
         with this version of adeline-trace",
        .path.display()
    )]
    BadLatency {
        path: PathBuf,
        stage: String,
        detail: String,
    },
    #[error(
        "{}: stage '{stage}' has no {metric} (no \"{metric}_ns\": the file was written \
         before adeline-trace recorded it); pass a --metric it has ({present}), or write \
         the file again",
        .path.display()
    )]
    MissingMetric {
        path: PathBuf,
        stage: String,
        metric: &'static str,
        present: String,
    },
    #[error("--max-regression '{0}': expected a percentage of 0 or more, such as 10%")]
    BadThreshold(String),
    #[error("--metric '{0}': expected one of p50, p90, p95, p99, p999, mean, min or max")]
    UnknownMetric(String),
}

/// Runs the comparison, prints the table on stdout and returns the exit
/// status: 0 no regression, 1 regression, 2 bad input.
pub fn compare(args: &CompareArgs) -> ExitCode {
    let mut out = std::io::stdout().lock();
    ExitCode::from(compare_to(args, &mut out))
}

/// [`compare`] writing the table to `out`; returns the exit status.
pub fn compare_to(args: &CompareArgs, out: &mut dyn Write) -> u8 {
    match gate(args) {
        Ok(report) => {
            // A closed stdout (e.g. `| head`) does not change the verdict.
            let _ = out.write_all(report.text.as_bytes());
            u8::from(report.regressed)
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// The printed report and whether any stage regressed.
#[derive(Debug)]
pub struct Report {
    pub text: String,
    pub regressed: bool,
}

/// Reads both files and compares them.
pub fn gate(args: &CompareArgs) -> Result<Report, CompareError> {
    let max_pct = parse_max_regression(&args.max_regression)?;
    let stat = Stat::from_word(args.metric.trim())
        .ok_or_else(|| CompareError::UnknownMetric(args.metric.clone()))?;
    let baseline = load(&args.baseline, stat)?;
    let current = load(&args.current, stat)?;
    Ok(report(&baseline, &current, stat.as_str(), max_pct))
}

/// `10%`, `10` or `2.5%` -> percent; negative, non-finite or not a number is an error.
pub fn parse_max_regression(text: &str) -> Result<f64, CompareError> {
    let t = text.trim();
    let number = t.strip_suffix('%').unwrap_or(t).trim();
    match number.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && !number.starts_with(['+', '-']) => Ok(v),
        _ => Err(CompareError::BadThreshold(text.to_string())),
    }
}

/// One stage's metric in one file: None when it made no calls.
type Measured = Vec<(String, Option<u64>)>;

/// Reads a snapshot or JSON Lines file into (stage, statistic) pairs.
fn load(path: &Path, stat: Stat) -> Result<Measured, CompareError> {
    let text = std::fs::read_to_string(path).map_err(|source| CompareError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let summary = find_summary(path, &text)?;
    let no_stages = || CompareError::NoStages {
        path: path.to_path_buf(),
    };
    let stages = summary
        .get("stages")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
        .ok_or_else(no_stages)?;
    let mut measured = Measured::new();
    for (index, stage) in stages.iter().enumerate() {
        let name =
            stage
                .get("stage")
                .and_then(Value::as_str)
                .ok_or_else(|| CompareError::BadStage {
                    path: path.to_path_buf(),
                    index,
                })?;
        if measured.iter().any(|(n, _)| n == name) {
            continue;
        }
        let value = stat_of(path, name, stage, stat)?;
        measured.push((name.to_string(), value));
    }
    if let Some(frames) = summary.get("frames").filter(|f| f.is_object()) {
        measured.push((
            FRAMES_ROW.to_string(),
            stat_of(path, FRAMES_ROW, frames, stat)?,
        ));
    }
    Ok(measured)
}

/// The object holding `stages`: the whole file if it is one JSON value,
/// else the last `"type":"summary"` line of a JSON Lines stream.
fn find_summary(path: &Path, text: &str) -> Result<Value, CompareError> {
    let whole_error = match serde_json::from_str::<Value>(text) {
        Ok(value) if value.is_object() => return Ok(value),
        Ok(_) => {
            return Err(CompareError::NoStages {
                path: path.to_path_buf(),
            })
        }
        Err(e) => e,
    };
    let mut parsed_any = false;
    let mut summary = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // A line cut short (an agent killed mid-write) is skipped.
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        parsed_any = true;
        if value.get("type").and_then(Value::as_str) == Some("summary") {
            summary = Some(value);
        }
    }
    match summary {
        Some(value) => Ok(value),
        None if parsed_any => Err(CompareError::NoStages {
            path: path.to_path_buf(),
        }),
        None => Err(CompareError::NotJson {
            path: path.to_path_buf(),
            detail: whole_error.to_string(),
        }),
    }
}

/// `stat` of a stage (or frames) object (its `count` and the statistic's
/// field, `<stat>_ns`, of the `Percentiles` schema); None if it made no
/// calls. Only these two fields are read, so a file written before a
/// statistic existed (p95 and p99.9 came later) still serves the others.
fn stat_of(
    path: &Path,
    name: &str,
    stage: &Value,
    stat: Stat,
) -> Result<Option<u64>, CompareError> {
    let number = |field: &str| {
        let v = stage.get(field)?;
        v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64))
    };
    let bad = |detail: String| CompareError::BadLatency {
        path: path.to_path_buf(),
        stage: name.to_string(),
        detail,
    };
    let count = number("count").ok_or_else(|| bad("no \"count\"".to_string()))?;
    if count == 0 {
        return Ok(None);
    }
    let field = format!("{}_ns", stat.as_str());
    match (stage.get(&field), number(&field)) {
        (_, Some(v)) => Ok(Some(v)),
        (None, _) => Err(CompareError::MissingMetric {
            path: path.to_path_buf(),
            stage: name.to_string(),
            metric: stat.as_str(),
            present: stats_present(stage),
        }),
        (Some(v), None) => Err(bad(format!("\"{field}\" is {v}, not a number"))),
    }
}

/// The statistics a stage object carries, for the missing-metric hint.
fn stats_present(stage: &Value) -> String {
    let present: Vec<&str> = Stat::ALL
        .iter()
        .map(|s| s.as_str())
        .filter(|s| stage.get(format!("{s}_ns")).is_some())
        .collect();
    match present.is_empty() {
        true => "none".to_string(),
        false => present.join(", "),
    }
}

/// How one stage compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Regression,
    /// Only the current file has it (with calls).
    New,
    /// Only the baseline has it (with calls).
    Missing,
    /// Neither file has calls for it.
    NoData,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Regression => "REGRESSION",
            Verdict::New => "NEW",
            Verdict::Missing => "MISSING",
            Verdict::NoData => "NO DATA",
        }
    }
}

/// Growth in percent of `current` over `baseline` (infinite from 0 to more).
fn growth_pct(baseline: u64, current: u64) -> f64 {
    if baseline == 0 {
        if current == 0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (current as f64 - baseline as f64) / baseline as f64 * 100.0
    }
}

/// Builds the table: baseline's stages in order, then stages only in current.
fn report(baseline: &Measured, current: &Measured, metric: &str, max_pct: f64) -> Report {
    let find = |m: &Measured, name: &str| m.iter().find(|(n, _)| n == name).and_then(|(_, v)| *v);
    let mut names: Vec<&str> = baseline.iter().map(|(n, _)| n.as_str()).collect();
    for (n, _) in current {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let mut rows = Vec::new();
    let mut regressions = Vec::new();
    for name in names {
        let (b, c) = (find(baseline, name), find(current, name));
        let (delta, verdict) = match (b, c) {
            (Some(b), Some(c)) => {
                let pct = growth_pct(b, c);
                // The tolerance keeps growth exactly at the limit (20 -> 23 at
                // 15%) from failing on floating-point rounding.
                let verdict = if pct > max_pct + 1e-9 {
                    regressions.push(name);
                    Verdict::Regression
                } else {
                    Verdict::Ok
                };
                (format!("{pct:+.1}%"), verdict)
            }
            (None, Some(_)) => (String::new(), Verdict::New),
            (Some(_), None) => (String::new(), Verdict::Missing),
            (None, None) => (String::new(), Verdict::NoData),
        };
        let cell = |v: Option<u64>| v.map(format::ns).unwrap_or_else(|| "-".to_string());
        rows.push([
            name.to_string(),
            cell(b),
            cell(c),
            delta,
            verdict.as_str().to_string(),
        ]);
    }
    let upper = metric.to_uppercase();
    let header = [
        "STAGE".to_string(),
        format!("BASELINE {upper}"),
        format!("CURRENT {upper}"),
        "DELTA".to_string(),
        "VERDICT".to_string(),
    ];
    let mut table = vec![header];
    table.extend(rows);
    let mut text = format::align(&table, &[0, 4]);
    let limit = format!("{max_pct}%");
    if regressions.is_empty() {
        let _ = writeln!(text, "OK: no stage's {metric} grew by more than {limit}");
    } else {
        let _ = writeln!(
            text,
            "REGRESSION: {metric} grew by more than {limit} in {}",
            regressions.join(", ")
        );
    }
    Report {
        text,
        regressed: !regressions.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::snapshot::{
        Bottleneck, FrameStats, Percentiles, Snapshot, StageStats, Window,
    };

    fn stage(name: &str, count: u64, p95_ns: u64) -> StageStats {
        StageStats {
            stage: name.into(),
            rate_hz: 30.0,
            latency: Percentiles {
                count,
                p50_ns: p95_ns / 2,
                p95_ns,
                p99_ns: p95_ns * 2,
                ..Percentiles::default()
            },
            total_ns: 0,
            self_ns: 0,
            frame_share: None,
        }
    }

    fn snapshot(stages: Vec<StageStats>) -> String {
        serde_json::to_string_pretty(&Snapshot {
            v: 1,
            ts_ns: 0,
            window: Window::All,
            window_ns: 0,
            stages,
            frames: None,
            gauges: vec![],
            bottleneck: Bottleneck::default(),
            events: 0,
            drops: 0,
            memory: vec![],
            stage_memory: vec![],
            alloc: None,
            host: None,
            processes: Vec::new(),
        })
        .unwrap()
    }

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn put(&self, name: &str, text: &str) -> PathBuf {
            let p = self.dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    fn args(b: &Path, c: &Path, max: &str, metric: &str) -> CompareArgs {
        CompareArgs {
            baseline: b.to_path_buf(),
            current: c.to_path_buf(),
            max_regression: max.into(),
            metric: metric.into(),
        }
    }

    /// Exit status and stdout.
    fn run(a: &CompareArgs) -> (u8, String) {
        let mut out = Vec::new();
        let code = compare_to(a, &mut out);
        (code, String::from_utf8(out).unwrap())
    }

    fn err(a: &CompareArgs) -> String {
        gate(a).unwrap_err().to_string()
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn pass_regression_new_and_missing() {
        let f = Files::new();
        let base = f.put(
            "b.json",
            &snapshot(vec![
                stage("decode", 100, 2 * MS),
                stage("inference", 100, 20 * MS),
                stage("gone", 100, MS),
                stage("idle", 0, 0),
            ]),
        );
        let ok = f.put(
            "ok.json",
            &snapshot(vec![
                stage("decode", 100, 2_100_000), // +5%
                stage("inference", 100, 19 * MS),
                stage("track", 100, 300_000),
                stage("idle", 0, 0),
            ]),
        );
        let (code, out) = run(&args(&base, &ok, "10%", "p95"));
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            out,
            "STAGE      BASELINE P95  CURRENT P95  DELTA  VERDICT\n\
             decode           2.00ms       2.10ms  +5.0%  OK\n\
             inference        20.0ms       19.0ms  -5.0%  OK\n\
             gone             1.00ms            -         MISSING\n\
             idle                  -            -         NO DATA\n\
             track                 -        300us         NEW\n\
             OK: no stage's p95 grew by more than 10%\n"
        );

        let slow = f.put(
            "slow.json",
            &snapshot(vec![
                stage("decode", 100, 2 * MS),
                stage("inference", 100, 23 * MS),
            ]),
        );
        let (code, out) = run(&args(&base, &slow, "10%", "p95"));
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("inference        20.0ms       23.0ms  +15.0%  REGRESSION\n"),
            "{out}"
        );
        assert!(
            out.ends_with("REGRESSION: p95 grew by more than 10% in inference\n"),
            "{out}"
        );
        // A looser gate, another metric, a plain-number threshold.
        assert_eq!(run(&args(&base, &slow, "20%", "p95")).0, 0);
        assert_eq!(run(&args(&base, &slow, "20", "p99")).0, 0);
        assert_eq!(run(&args(&base, &slow, "0%", "p50")).0, 1);
        // Exactly at the threshold passes.
        assert_eq!(run(&args(&base, &slow, "15%", "p95")).0, 0);
    }

    #[test]
    fn table_rows_are_aligned() {
        let f = Files::new();
        let b = f.put(
            "b.json",
            &snapshot(vec![
                stage("a", 1, 999),
                stage("a-much-longer-name", 1, 5 * MS),
            ]),
        );
        let c = f.put(
            "c.json",
            &snapshot(vec![
                stage("a", 1, 3_000_000_000),
                stage("a-much-longer-name", 1, 5 * MS),
            ]),
        );
        let (code, out) = run(&args(&b, &c, "10%", "p95"));
        assert_eq!(code, 1);
        let lines: Vec<&str> = out.lines().collect();
        let verdict_at = lines[0].find("VERDICT").unwrap();
        for line in &lines[1..3] {
            assert!(line.len() > verdict_at, "{out}");
            assert!(line[..verdict_at].ends_with("  "), "{out}");
            assert!(line[verdict_at..].starts_with(['O', 'R']), "{out}");
        }
        assert!(
            lines[1].contains("999ns") && lines[1].contains("3.00s"),
            "{out}"
        );
    }

    #[test]
    fn frames_are_compared() {
        let f = Files::new();
        let with_frames = |p95_ns: u64| {
            let mut v: Value =
                serde_json::from_str(&snapshot(vec![stage("decode", 10, MS)])).unwrap();
            v["frames"] = serde_json::to_value(FrameStats {
                root: "pipeline".into(),
                fps: 30.0,
                latency: Percentiles {
                    count: 10,
                    p95_ns,
                    ..Percentiles::default()
                },
            })
            .unwrap();
            v.to_string()
        };
        let b = f.put("b.json", &with_frames(30 * MS));
        let c = f.put("c.json", &with_frames(40 * MS));
        let (code, out) = run(&args(&b, &c, "10%", "p95"));
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("REGRESSION: p95 grew by more than 10% in (frames)"),
            "{out}"
        );
    }

    fn jsonl(stages: &str) -> String {
        format!(
            "{{\"v\":1,\"type\":\"start\",\"ts_ns\":1,\"pids\":[],\"probes\":[]}}\n\
             {{\"v\":1,\"type\":\"span\",\"ts_ns\":2,\"stage\":\"decode\",\"dur_ns\":5}}\n\
             {{\"v\":1,\"type\":\"summary\",\"ts_ns\":3,\"duration_ns\":9,\"events\":1,\"drops\":0,\
             \"stages\":[{stages}]}}\n"
        )
    }

    #[test]
    fn jsonl_streams_use_their_last_summary() {
        let f = Files::new();
        let one = "{\"stage\":\"decode\",\"count\":100,\"min_ns\":1,\"mean_ns\":2,\
                   \"p50_ns\":1000000,\"p90_ns\":1100000,\"p95_ns\":1150000,\
                   \"p99_ns\":1200000,\"p999_ns\":1250000,\"max_ns\":1300000}";
        let two = one.replace("1200000", "1500000");
        let b = f.put("b.jsonl", &jsonl(one));
        // Two summaries (and a cut-off last line): the last complete one counts.
        let c = f.put(
            "c.jsonl",
            &format!("{}{}{{\"v\":1,\"ty", jsonl(one), jsonl(&two)),
        );
        let (code, out) = run(&args(&b, &c, "10%", "p99"));
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("decode        1.20ms       1.50ms  +25.0%  REGRESSION"),
            "{out}"
        );
        // The stream's summary has the snapshot's latency schema: every statistic.
        assert_eq!(run(&args(&b, &c, "10%", "p95")).0, 0);
        assert_eq!(run(&args(&b, &b, "0%", "p999")).0, 0);
        // A stream written before p95 and p99.9 were recorded (its summary
        // has count, min, mean, p50, p90, p99 and max): still compared on
        // the statistics it has.
        let before = one
            .replace("\"p95_ns\":1150000,", "")
            .replace("\"p999_ns\":1250000,", "");
        let old = f.put("old.jsonl", &jsonl(&before));
        for metric in ["p50", "p90", "p99", "mean", "min", "max"] {
            assert_eq!(
                run(&args(&old, &c, "10%", metric)).0,
                u8::from(metric == "p99")
            );
        }
        let (code, out) = run(&args(&old, &c, "30%", "p99"));
        assert_eq!(code, 0);
        assert!(
            out.contains("decode        1.20ms       1.50ms  +25.0%  OK"),
            "{out}"
        );
        // A statistic it does not have: one line naming the file and the metric.
        for (metric, file) in [("p95", &old), ("p999", &old)] {
            let (code, out) = run(&args(file, &c, "10%", metric));
            assert_eq!((code, out.as_str()), (2, ""));
            assert_eq!(
                err(&args(file, &c, "10%", metric)),
                format!(
                    "{}: stage 'decode' has no {metric} (no \"{metric}_ns\": the file was \
                     written before adeline-trace recorded it); pass a --metric it has (p50, \
                     p90, p99, mean, min, max), or write the file again",
                    old.display()
                )
            );
        }
        // The current file is checked the same way.
        let e = err(&args(&c, &old, "10%", "p95"));
        assert!(
            e.starts_with(&format!("{}: stage 'decode' has no p95", old.display())),
            "{e}"
        );
        // A field of the wrong type is still bad input.
        let odd = f.put("odd.jsonl", &jsonl(&one.replace("1200000", "\"x\"")));
        assert_eq!(
            err(&args(&odd, &c, "10%", "p99")),
            format!(
                "{}: stage 'decode' is not a latency summary (\"p99_ns\" is \"x\", not a \
                 number); write the file again with this version of adeline-trace",
                odd.display()
            )
        );
        // A snapshot against a stream works too.
        let s = f.put("s.json", &snapshot(vec![stage("decode", 100, 600_000)])); // p99 1.2 ms
        assert_eq!(run(&args(&s, &b, "10%", "p99")).0, 0);
    }

    #[test]
    fn bad_input_exits_2_with_one_line() {
        let f = Files::new();
        let good = f.put("good.json", &snapshot(vec![stage("decode", 1, MS)]));
        let missing = f.dir.path().join("nope.json");
        let cases: Vec<(CompareArgs, String)> = vec![
            (
                args(&missing, &good, "10%", "p95"),
                format!(
                    "cannot read {}: No such file or directory (os error 2)",
                    missing.display()
                ),
            ),
            (
                args(&f.put("text.json", "hello\nworld\n"), &good, "10%", "p95"),
                "text.json: not JSON (expected value at line 1 column 1)".into(),
            ),
            (
                args(&f.put("empty.json", ""), &good, "10%", "p95"),
                "empty.json: not JSON".into(),
            ),
            (
                args(
                    &good,
                    &f.put("nostages.json", &snapshot(vec![])),
                    "10%",
                    "p95",
                ),
                "nostages.json: no stages".into(),
            ),
            (
                args(&good, &f.put("array.json", "[1,2]"), "10%", "p95"),
                "array.json: no stages".into(),
            ),
            (
                args(
                    &good,
                    &f.put(
                        "nosummary.jsonl",
                        "{\"type\":\"start\"}\n{\"type\":\"span\"}\n",
                    ),
                    "10%",
                    "p95",
                ),
                "nosummary.jsonl: no stages".into(),
            ),
            (
                args(
                    &good,
                    &f.put("noname.json", "{\"stages\":[{\"p95_ns\":1}]}"),
                    "10%",
                    "p95",
                ),
                "noname.json: stages[0] has no \"stage\" name".into(),
            ),
            (
                args(&good, &good, "abc", "p95"),
                "--max-regression 'abc': expected a percentage of 0 or more, such as 10%".into(),
            ),
            (
                args(&good, &good, "-5%", "p95"),
                "--max-regression '-5%'".into(),
            ),
            (
                args(&good, &good, "%", "p95"),
                "--max-regression '%'".into(),
            ),
            (
                args(&good, &good, "inf", "p95"),
                "--max-regression 'inf'".into(),
            ),
            (
                args(&good, &good, "10%", "p42"),
                "--metric 'p42': expected one of p50, p90, p95, p99, p999, mean, min or max".into(),
            ),
        ];
        for (a, want) in cases {
            let (code, out) = run(&a);
            assert_eq!(code, 2, "{want}");
            assert!(out.is_empty(), "{out}");
            let e = err(&a);
            assert!(e.contains(&want), "{e}\n wanted: {want}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn thresholds_parse() {
        assert_eq!(parse_max_regression("10%").unwrap(), 10.0);
        assert_eq!(parse_max_regression(" 2.5 % ").unwrap(), 2.5);
        assert_eq!(parse_max_regression("0").unwrap(), 0.0);
        for bad in ["", "abc", "-5%", "+5%", "NaN", "1e999", "10%%"] {
            assert!(parse_max_regression(bad).is_err(), "{bad}");
        }
    }
}
