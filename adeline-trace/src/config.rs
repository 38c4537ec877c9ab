//! TOML file + CLI flags -> a validated [`Plan`]. All user-input validation
//! that does not need the file system's ELF contents happens here.
use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use thiserror::Error;

use crate::{
    alerts::AlertSpec,
    cli::RunArgs,
    probes::{
        alloc::{AllocSpec, DEFAULT_MIN_AGE, DEFAULT_TOP},
        attach::AttachMode,
        gauge::{GaugeSource, GaugeSpec},
        memory::MemoryMode,
        python, Location, StageSpec,
    },
    sinks::{
        api::{ApiSpec, DEFAULT_API_PORT},
        history::HistorySpec,
        jsonl::Output,
        otlp::{self, OtlpSpec, SampleRatio},
        Outputs,
    },
    units::parse_size,
};

/// What a stage's TARGET:SYMBOL names: a native function, or Python
/// functions (`python:INTERPRETER:PATTERN`, TOML `kind = "python"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StageKind {
    Native,
    Python,
}

/// Default Prometheus histogram bounds, seconds.
pub const DEFAULT_PROM_BUCKETS: &str = "0.0005,0.001,0.0025,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1";

/// Parses comma-separated bucket bounds in seconds into increasing nanoseconds.
pub fn parse_buckets(text: &str) -> Result<Vec<u64>, ConfigError> {
    let bad = |reason: &str| ConfigError::Buckets {
        value: text.to_string(),
        reason: reason.to_string(),
    };
    let mut out: Vec<u64> = Vec::new();
    for part in text.split(',') {
        let secs: f64 = part.trim().parse().map_err(|_| bad("not a number"))?;
        if !(secs > 0.0 && secs.is_finite()) {
            return Err(bad("bounds must be positive"));
        }
        let ns = (secs * 1e9).round() as u64;
        if out.last().is_some_and(|&last| ns <= last) {
            return Err(bad("bounds must increase"));
        }
        out.push(ns);
    }
    Ok(out)
}

/// Everything `run` needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub stages: Vec<StageSpec>,
    pub pids: Vec<u32>,
    pub command: Vec<String>,
    pub duration: Option<Duration>,
    pub min_duration: Duration,
    pub stats_interval: Duration,
    /// Ring buffer size in bytes.
    pub ring_bytes: u32,
    /// Stage whose calls are frames.
    pub frame_stage: Option<String>,
    pub gauges: Vec<GaugeSpec>,
    pub alerts: Vec<AlertSpec>,
    /// Snapshot file for `baseline` in alert rules.
    pub alert_baseline: Option<PathBuf>,
    /// None: no API.
    pub api: Option<ApiSpec>,
    /// Prometheus histogram bounds, increasing nanoseconds.
    pub prom_buckets_ns: Vec<u64>,
    /// Alloc mode (`--alloc`).
    pub alloc: Option<AllocSpec>,
    /// Which kernel memory tracepoints to attach (`--memory`).
    pub memory: MemoryMode,
    /// Where results go (the sinks).
    pub outputs: Outputs,
    /// At most this many probe sites (functions) per run (`--max-probes`).
    pub max_probes: usize,
    /// How to attach uprobes (`--attach`; None: detect).
    pub attach: Option<AttachMode>,
    /// How stage returns are observed (`--exit-probes`, probes/unwind.rs).
    pub exit_probes: crate::probes::unwind::ExitProbes,
    /// Python stages: probes attached for `.0` every `.1` (None: always).
    pub python_window: Option<(Duration, Duration)>,
    /// The kubelet's pod log directory (None: the default).
    pub kubelet_pods_dir: Option<PathBuf>,
    /// In-kernel aggregation of the stages above this many calls per
    /// second (None: off; only with --no-spans).
    pub aggregate_above: Option<u64>,
}

/// The ring buffer's default size with `--no-spans` (4 MiB: 65,536 span
/// records, 130 ms of 500,000 records a second; 16 MiB otherwise).
pub const NO_SPANS_RING_BYTES: u32 = 1 << 22;

/// `--aggregate-above`'s default, calls per second: the agent's ~0.4 us of
/// CPU per record makes 10,000 records/s cost it ~0.4% of a core.
pub const DEFAULT_AGGREGATE_ABOVE: u64 = 10_000;

/// Default of `--max-probes`.
pub const DEFAULT_MAX_PROBES: usize = 1000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("malformed --stage '{spec}': expected NAME=TARGET:SYMBOL, e.g. infer=/opt/app/libdetector.so:'*Detector::infer*' ({problem})")]
    MalformedStage { spec: String, problem: &'static str },
    #[error("cannot read config {path}: {reason}")]
    ReadConfig { path: PathBuf, reason: String },
    #[error("config {path}:{line}:{column}: {message}")]
    Toml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid {what} '{value}': {reason} (examples: 500us, 20ms, 5s, 2m)")]
    Duration {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("stage '{name}' is defined twice")]
    DuplicateStage { name: String },
    #[error("stage name '{name}' is invalid: use letters, digits, '_', '-' or '.'")]
    BadStageName { name: String },
    #[error("no stages to trace: give --stage NAME=TARGET:SYMBOL or a --config file with [[stage]] entries")]
    NoStages,
    #[error("--pid and a command to launch (after --) cannot be combined")]
    PidAndCommand,
    #[error("pid 0 is not a process id")]
    PidZero,
    #[error("--stats-interval must be at least 10ms")]
    StatsIntervalTooShort,
    #[error("--ring-bytes {0} is invalid: use a power of two of at least 4096, e.g. 16777216")]
    RingBytes(u32),
    #[error("malformed --gauge '{spec}': expected NAME=TARGET:SYMBOL:argN|ret, e.g. tracks=/opt/app/bin/pipeline:track:ret ({problem})")]
    MalformedGauge { spec: String, problem: &'static str },
    #[error("frame stage '{name}' is not one of the stages ({known})")]
    UnknownFrameStage { name: String, known: String },
    #[error("gauge '{name}' is defined twice")]
    DuplicateGauge { name: String },
    #[error("invalid --prom-buckets '{value}': {reason} (seconds, comma-separated, e.g. 0.001,0.01,0.1)")]
    Buckets { value: String, reason: String },
    #[error("--history-interval must be 1s, 10s or 60s (the windows the agent keeps), not {0}")]
    HistoryInterval(String),
    #[error("invalid {what} '{value}': {reason} (examples: 4096, 64KiB, 1MB)")]
    Size {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("--alloc-sample must be at least 1 (1 = every allocation)")]
    AllocSample,
    #[error("--alloc needs -p PID or a command to launch (after --): the allocator of every process is not traced")]
    AllocNeedsPids,
    #[error("invalid --otlp endpoint '{endpoint}': {reason}")]
    OtlpEndpoint {
        endpoint: String,
        reason: &'static str,
    },
    #[error("--otlp-traces must be a share between 0 and 1, e.g. 0.1, not {0}")]
    OtlpTraces(String),
    #[error(
        "--otlp-traces sends frames: give a frame stage (--frame-stage NAME or frame = \"NAME\")"
    )]
    OtlpTracesNeedFrame,
    #[error("{0} needs an endpoint: --otlp http://HOST:4318 or endpoint = \"...\" in the config's [otlp] table")]
    OtlpWithoutEndpoint(&'static str),
    #[error("too many stages ({count}); at most {max}")]
    TooManyStages { count: usize, max: u32 },
    #[error("--max-probes must be at least 1")]
    MaxProbesZero,
    #[error("invalid --python-window '{value}': {reason} (form WINDOW/PERIOD, e.g. 1s/10s, or 'always')")]
    PythonWindow { value: String, reason: String },
    #[error("--aggregate-above needs --no-spans, and no --trace-out or OTLP traces (they need a record per call)")]
    AggregateNeedsNoSpans,
    #[error("stage '{name}': unknown kind '{kind}' (use \"native\" or \"python\")")]
    StageKindUnknown { name: String, kind: String },
}

/// The TOML file's shape. Unknown keys are errors (catches typos).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    stage: Vec<FileStage>,
    #[serde(default)]
    pids: Vec<u32>,
    duration: Option<String>,
    min_duration: Option<String>,
    stats_interval: Option<String>,
    output: Option<String>,
    frame: Option<String>,
    #[serde(default)]
    gauge: Vec<FileGauge>,
    #[serde(default)]
    alert: Vec<FileAlert>,
    alert_baseline: Option<PathBuf>,
    api_port: Option<u16>,
    api_socket: Option<PathBuf>,
    summary_out: Option<PathBuf>,
    prom_buckets: Option<String>,
    history: Option<PathBuf>,
    history_interval: Option<String>,
    history_retention: Option<String>,
    trace_out: Option<PathBuf>,
    alloc: Option<FileAlloc>,
    max_probes: Option<usize>,
    python_window: Option<String>,
    otlp: Option<FileOtlp>,
    kubelet_pods_dir: Option<PathBuf>,
}

/// The `[otlp]` table of a config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOtlp {
    endpoint: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    traces: Option<f64>,
    service_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGauge {
    name: String,
    target: String,
    symbol: String,
    /// "arg0".."arg5" or "ret".
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAlert {
    rule: String,
    exec: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStage {
    name: String,
    /// "native" (default) or "python".
    kind: Option<String>,
    target: String,
    /// The function: a symbol, or for Python a [FILE:|MODULE:]QUALNAME pattern.
    #[serde(alias = "function")]
    symbol: String,
}

/// The `[alloc]` table of a config file (its presence turns alloc mode on).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAlloc {
    min_bytes: Option<String>,
    sample: Option<u32>,
    min_age: Option<String>,
    top: Option<usize>,
}

/// Flag values (None = not given).
#[derive(Debug, Default)]
struct AllocFlags<'a> {
    on: bool,
    min_bytes: Option<&'a str>,
    sample: Option<u32>,
    min_age: Option<&'a str>,
    top: Option<usize>,
}

/// Alloc mode from its flags and the file's `[alloc]` table: flags override
/// the file; None when neither turns alloc mode on.
fn alloc_spec(
    flags: AllocFlags<'_>,
    file: Option<FileAlloc>,
) -> Result<Option<AllocSpec>, ConfigError> {
    if !flags.on && file.is_none() {
        return Ok(None);
    }
    let file = file.unwrap_or_default();
    let min_bytes = match flags.min_bytes.or(file.min_bytes.as_deref()) {
        None => 0,
        Some(text) => parse_size(text).map_err(|reason| ConfigError::Size {
            what: "--alloc-min-bytes",
            value: text.to_string(),
            reason,
        })?,
    };
    let sample = flags.sample.or(file.sample).unwrap_or(1);
    if sample == 0 {
        return Err(ConfigError::AllocSample);
    }
    let min_age = match flags.min_age.or(file.min_age.as_deref()) {
        None => DEFAULT_MIN_AGE,
        Some(text) => parse_duration("--min-age", text)?,
    };
    let top = flags.top.or(file.top).unwrap_or(DEFAULT_TOP);
    Ok(Some(AllocSpec {
        min_bytes,
        sample,
        min_age,
        top,
    }))
}

/// Parses `NAME=TARGET:SYMBOL`. TARGET ends at the first ':' (C++ `::` in
/// the symbol is kept).
pub fn parse_stage(spec: &str) -> Result<StageSpec, ConfigError> {
    let bad = |problem| ConfigError::MalformedStage {
        spec: spec.to_string(),
        problem,
    };
    let (name, rest) = spec.split_once('=').ok_or_else(|| bad("missing '='"))?;
    let (target, symbol) = rest
        .split_once(':')
        .ok_or_else(|| bad("missing ':' between TARGET and SYMBOL"))?;
    if name.trim().is_empty() {
        return Err(bad("empty NAME"));
    }
    if target.trim().is_empty() {
        return Err(bad("empty TARGET"));
    }
    if symbol.trim().is_empty() {
        return Err(bad("empty SYMBOL"));
    }
    let (kind, target, symbol) = if target.trim() == "python" {
        let (interp, pattern) = symbol
            .split_once(':')
            .ok_or_else(|| bad("python stages are NAME=python:INTERPRETER:PATTERN"))?;
        if interp.trim().is_empty() || pattern.trim().is_empty() {
            return Err(bad("empty INTERPRETER or PATTERN after python:"));
        }
        (StageKind::Python, interp, pattern)
    } else {
        (StageKind::Native, target, symbol)
    };
    let stage = StageSpec {
        name: name.trim().to_string(),
        location: if kind == StageKind::Python {
            Location::Python {
                interpreter: target.trim().to_string(),
                pattern: symbol.trim().to_string(),
            }
        } else {
            Location::Function {
                target: target.trim().to_string(),
                symbol: symbol.trim().to_string(),
            }
        },
    };
    check_stage_name(&stage.name)?;
    Ok(stage)
}

/// Parses `NAME=TARGET:SYMBOL:argN|ret`; the value source is after the
/// last ':' so C++ `::` in the symbol is kept.
pub fn parse_gauge(spec: &str) -> Result<GaugeSpec, ConfigError> {
    let bad = |problem| ConfigError::MalformedGauge {
        spec: spec.to_string(),
        problem,
    };
    let (name, rest) = spec.split_once('=').ok_or_else(|| bad("missing '='"))?;
    let (target, rest) = rest
        .split_once(':')
        .ok_or_else(|| bad("missing ':' after TARGET"))?;
    let (symbol, source) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("missing ':argN' or ':ret' after SYMBOL"))?;
    if name.trim().is_empty() || target.trim().is_empty() || symbol.trim().is_empty() {
        return Err(bad("empty NAME, TARGET or SYMBOL"));
    }
    let source =
        parse_gauge_source(source.trim()).ok_or_else(|| bad("value must be arg0..arg5 or ret"))?;
    check_stage_name(name.trim())?;
    Ok(GaugeSpec {
        name: name.trim().to_string(),
        target: target.trim().to_string(),
        symbol: symbol.trim().to_string(),
        source,
    })
}

fn parse_gauge_source(s: &str) -> Option<GaugeSource> {
    match s {
        "ret" => Some(GaugeSource::Ret),
        _ => {
            let n: u8 = s.strip_prefix("arg")?.parse().ok()?;
            (n <= 5).then_some(GaugeSource::Arg(n))
        }
    }
}

fn check_stage_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadStageName {
            name: name.to_string(),
        })
    }
}

/// Parses a human duration such as `500us`, `20ms`, `5s`, `2m`.
pub fn parse_duration(what: &'static str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| ConfigError::Duration {
        what,
        value: value.to_string(),
        reason: e.to_string(),
    })
}

fn load_file(path: &PathBuf) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ReadConfig {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((1, 1));
        ConfigError::Toml {
            path: path.clone(),
            line,
            column,
            message: e.message().replace('\n', " ").trim().to_string(),
        }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

impl Plan {
    /// Builds the plan from the optional config file and the flags (flags win;
    /// stages and pids from both are combined).
    pub fn from_args(args: &RunArgs) -> Result<Plan, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let mut stages: Vec<StageSpec> = file
            .stage
            .into_iter()
            .map(|s| {
                check_stage_name(&s.name)?;
                let kind = match s.kind.as_deref() {
                    None | Some("native") => StageKind::Native,
                    Some("python") => StageKind::Python,
                    Some(other) => {
                        return Err(ConfigError::StageKindUnknown {
                            name: s.name,
                            kind: other.to_string(),
                        })
                    }
                };
                Ok(StageSpec {
                    name: s.name,
                    location: match kind {
                        StageKind::Python => Location::Python {
                            interpreter: s.target,
                            pattern: s.symbol,
                        },
                        StageKind::Native => Location::Function {
                            target: s.target,
                            symbol: s.symbol,
                        },
                    },
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        for spec in &args.stages {
            stages.push(parse_stage(spec)?);
        }
        if stages.is_empty() {
            return Err(ConfigError::NoStages);
        }
        for (i, s) in stages.iter().enumerate() {
            if stages[..i].iter().any(|o| o.name == s.name) {
                return Err(ConfigError::DuplicateStage {
                    name: s.name.clone(),
                });
            }
        }
        let max = adeline_trace_common::MAX_STAGES;
        if stages.len() > max as usize {
            return Err(ConfigError::TooManyStages {
                count: stages.len(),
                max,
            });
        }
        let mut pids = file.pids;
        pids.extend(&args.pids);
        pids.sort_unstable();
        pids.dedup();
        if pids.contains(&0) {
            return Err(ConfigError::PidZero);
        }
        if !pids.is_empty() && !args.command.is_empty() {
            return Err(ConfigError::PidAndCommand);
        }
        let pick = |flag: &Option<String>, file: Option<String>| flag.clone().or(file);
        let duration = pick(&args.duration, file.duration)
            .map(|d| parse_duration("--duration", &d))
            .transpose()?;
        let min_duration = pick(&args.min_duration, file.min_duration)
            .map(|d| parse_duration("--min-duration", &d))
            .transpose()?
            .unwrap_or(Duration::ZERO);
        let stats_interval = pick(&args.stats_interval, file.stats_interval)
            .map(|d| parse_duration("--stats-interval", &d))
            .transpose()?
            .unwrap_or(Duration::from_secs(1));
        if stats_interval < Duration::from_millis(10) {
            return Err(ConfigError::StatsIntervalTooShort);
        }
        // --no-spans sends fewer records (aggregation takes the busy
        // stages), and the ring's pages count in the agent's RSS twice.
        let ring_bytes = args.ring_bytes.unwrap_or(match args.no_spans {
            true => NO_SPANS_RING_BYTES,
            false => adeline_trace_common::RING_BYTES,
        });
        if ring_bytes < 4096 || !ring_bytes.is_power_of_two() {
            return Err(ConfigError::RingBytes(ring_bytes));
        }
        let frame_stage = args.frame_stage.clone().or(file.frame);
        if let Some(name) = &frame_stage {
            if !stages.iter().any(|s| &s.name == name) {
                return Err(ConfigError::UnknownFrameStage {
                    name: name.clone(),
                    known: stages
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        let mut gauges = Vec::new();
        for g in file.gauge {
            let spec = format!("{}={}:{}:{}", g.name, g.target, g.symbol, g.value);
            gauges.push(parse_gauge(&spec)?);
        }
        for spec in &args.gauges {
            gauges.push(parse_gauge(spec)?);
        }
        for (i, g) in gauges.iter().enumerate() {
            if gauges[..i].iter().any(|o| o.name == g.name) {
                return Err(ConfigError::DuplicateGauge {
                    name: g.name.clone(),
                });
            }
        }
        let mut alerts: Vec<AlertSpec> = file
            .alert
            .into_iter()
            .map(|a| AlertSpec {
                rule: a.rule,
                exec: a.exec,
            })
            .collect();
        alerts.extend(args.alerts.iter().map(|r| AlertSpec {
            rule: r.clone(),
            exec: None,
        }));
        let api = if args.no_api {
            None
        } else {
            let port = args.api_port.or(file.api_port).unwrap_or(DEFAULT_API_PORT);
            Some(ApiSpec {
                port: (port != 0).then_some(port),
                socket: args.api_socket.clone().or(file.api_socket),
            })
        };
        let summary_out = args.summary_out.clone().or(file.summary_out);
        let alert_baseline = args.alert_baseline.clone().or(file.alert_baseline);
        let prom_buckets_ns = parse_buckets(
            args.prom_buckets
                .as_deref()
                .or(file.prom_buckets.as_deref())
                .unwrap_or(DEFAULT_PROM_BUCKETS),
        )?;
        let history = match args.history.clone().or(file.history) {
            None => None,
            Some(path) => Some(HistorySpec {
                path,
                interval: match pick(&args.history_interval, file.history_interval) {
                    None => Duration::from_secs(10),
                    Some(text) => {
                        let d = parse_duration("--history-interval", &text)?;
                        if ![1, 10, 60].map(Duration::from_secs).contains(&d) {
                            return Err(ConfigError::HistoryInterval(text));
                        }
                        d
                    }
                },
                retention: pick(&args.history_retention, file.history_retention)
                    .map(|d| parse_duration("--history-retention", &d))
                    .transpose()?
                    .unwrap_or(Duration::from_secs(7 * 24 * 3600)),
            }),
        };
        let trace_out = args.trace_out.clone().or(file.trace_out);
        let alloc = alloc_spec(
            AllocFlags {
                on: args.alloc,
                min_bytes: args.alloc_min_bytes.as_deref(),
                sample: args.alloc_sample,
                min_age: args.min_age.as_deref(),
                top: args.alloc_top,
            },
            file.alloc,
        )?;
        if alloc.is_some() && pids.is_empty() && args.command.is_empty() {
            return Err(ConfigError::AllocNeedsPids);
        }
        let max_probes = args
            .max_probes
            .or(file.max_probes)
            .unwrap_or(DEFAULT_MAX_PROBES);
        if max_probes == 0 {
            return Err(ConfigError::MaxProbesZero);
        }
        let python_window = python::parse_window(
            pick(&args.python_window, file.python_window).as_deref(),
            stages
                .iter()
                .any(|s| matches!(s.location, Location::Python { .. })),
        )
        .map_err(|(value, reason)| ConfigError::PythonWindow { value, reason })?;
        let otlp = otlp_spec(args, file.otlp, &prom_buckets_ns)?;
        if otlp.as_ref().is_some_and(|o| o.traces.is_some()) && frame_stage.is_none() {
            return Err(ConfigError::OtlpTracesNeedFrame);
        }
        let per_call = trace_out.is_some() || otlp.as_ref().is_some_and(|o| o.traces.is_some());
        let aggregate_above = match (args.no_spans && !per_call, args.aggregate_above) {
            (true, rate) => Some(rate.unwrap_or(DEFAULT_AGGREGATE_ABOVE)),
            (false, None) => None,
            (false, Some(_)) => return Err(ConfigError::AggregateNeedsNoSpans),
        };
        // --no-spans with a per-call output keeps every record: silently.
        let output = match pick(&args.output, file.output).as_deref() {
            None | Some("-") => Output::Stdout,
            Some(path) => Output::File(PathBuf::from(path)),
        };
        Ok(Plan {
            stages,
            pids,
            command: args.command.clone(),
            duration,
            min_duration,
            stats_interval,
            ring_bytes,
            frame_stage,
            gauges,
            alerts,
            alert_baseline,
            api,
            prom_buckets_ns,
            alloc,
            memory: args.memory,
            outputs: Outputs {
                events: output,
                spans: !args.no_spans,
                live: args.live,
                trace_out,
                history,
                summary_out,
                otlp,
            },
            max_probes,
            attach: args.attach,
            exit_probes: args.exit_probes,
            python_window,
            kubelet_pods_dir: args.kubelet_pods_dir.clone().or(file.kubelet_pods_dir),
            aggregate_above,
        })
    }
}

/// OTLP export from its flags and the file's `[otlp]` table (flags win);
/// None without an endpoint.
fn otlp_spec(
    args: &RunArgs,
    file: Option<FileOtlp>,
    bounds_ns: &[u64],
) -> Result<Option<OtlpSpec>, ConfigError> {
    let file = file.unwrap_or_default();
    let Some(endpoint) = args.otlp.clone().or(file.endpoint) else {
        let given = [
            (args.otlp_interval.is_some(), "--otlp-interval"),
            (args.otlp_traces.is_some(), "--otlp-traces"),
            (args.otlp_service_name.is_some(), "--otlp-service-name"),
        ];
        return match given.iter().find(|(on, _)| *on) {
            Some((_, flag)) => Err(ConfigError::OtlpWithoutEndpoint(flag)),
            None => Ok(None),
        };
    };
    if let Some(reason) = otlp::check_endpoint(&endpoint) {
        return Err(ConfigError::OtlpEndpoint { endpoint, reason });
    }
    let interval = match args.otlp_interval.clone().or(file.interval) {
        None => otlp::DEFAULT_INTERVAL,
        Some(text) => {
            let d = parse_duration("--otlp-interval", &text)?;
            if d < std::time::Duration::from_millis(100) {
                return Err(ConfigError::Duration {
                    what: "--otlp-interval",
                    value: text,
                    reason: "at least 100ms".to_string(),
                });
            }
            d
        }
    };
    let timeout = match file.timeout {
        None => otlp::DEFAULT_TIMEOUT,
        Some(text) => parse_duration("[otlp] timeout", &text)?,
    };
    let traces = match args.otlp_traces.or(file.traces) {
        None => None,
        Some(r) if (0.0..=1.0).contains(&r) => Some(SampleRatio(r)),
        Some(r) => return Err(ConfigError::OtlpTraces(r.to_string())),
    };
    let service_name = args
        .otlp_service_name
        .clone()
        .or(file.service_name)
        .or_else(|| std::env::var("OTEL_SERVICE_NAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "adeline-trace".to_string());
    Ok(Some(OtlpSpec {
        endpoint,
        interval,
        timeout,
        traces,
        service_name,
        bounds_ns: bounds_ns.to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(argv: &[&str]) -> RunArgs {
        let mut full = vec!["adeline-trace", "run"];
        full.extend_from_slice(argv);
        match crate::cli::Cli::parse_from(full).command {
            crate::cli::Command::Run(r) => *r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn stage_spec_keeps_cpp_scope_in_symbol() {
        let s = parse_stage("infer=/opt/lib/libdetector.so:*Detector::infer*").unwrap();
        assert_eq!(s.name, "infer");
        assert_eq!(
            s.location,
            Location::Function {
                target: "/opt/lib/libdetector.so".into(),
                symbol: "*Detector::infer*".into()
            }
        );
    }

    #[test]
    fn malformed_stage_specs_name_the_problem() {
        for (spec, problem) in [
            ("infer", "missing '='"),
            ("infer=/bin/x", "missing ':' between TARGET and SYMBOL"),
            ("=/bin/x:f", "empty NAME"),
            ("a=:f", "empty TARGET"),
            ("a=/bin/x:", "empty SYMBOL"),
        ] {
            let err = parse_stage(spec).unwrap_err();
            assert_eq!(
                err,
                ConfigError::MalformedStage {
                    spec: spec.into(),
                    problem
                }
            );
        }
        assert_eq!(
            parse_stage("a b=/x:f").unwrap_err().to_string(),
            "stage name 'a b' is invalid: use letters, digits, '_', '-' or '.'"
        );
    }

    #[test]
    fn flags_build_a_plan() {
        let plan = Plan::from_args(&args(&[
            "--stage",
            "decode=/bin/x:decode",
            "-p",
            "7",
            "-p",
            "7",
            "--duration",
            "2s",
            "--min-duration",
            "100us",
            "-o",
            "out.jsonl",
        ]))
        .unwrap();
        assert_eq!(plan.pids, vec![7]);
        assert_eq!(plan.duration, Some(Duration::from_secs(2)));
        assert_eq!(plan.min_duration, Duration::from_micros(100));
        assert_eq!(plan.outputs.events, Output::File("out.jsonl".into()));
        assert_eq!(plan.stats_interval, Duration::from_secs(1));
    }

    #[test]
    fn toml_errors_point_at_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "duration = \"5s\"\n[[stage]]\nname = \"a\"\ntarget = \"/x\"\nsymbl = \"f\"\n",
        )
        .unwrap();
        let err = Plan::from_args(&args(&["--config", path.to_str().unwrap()])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "config {}:5:1: unknown field `symbl`",
                path.display()
            )),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn alloc_mode_from_toml_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "pids = [7]\n[alloc]\nmin_bytes = \"4KiB\"\nsample = 10\nmin_age = \"30s\"\n[[stage]]\nname = \"a\"\ntarget = \"/x\"\nsymbol = \"f\"\n",
        )
        .unwrap();
        let cfg = path.to_str().unwrap();
        let plan =
            Plan::from_args(&args(&["--config", cfg, "--alloc-top", "3", "--alloc"])).unwrap();
        assert_eq!(
            plan.alloc,
            Some(AllocSpec {
                min_bytes: 4096,
                sample: 10,
                min_age: Duration::from_secs(30),
                top: 3
            })
        );
        let plan = Plan::from_args(&args(&["--stage", "a=/x:f", "--alloc", "--", "cmd"])).unwrap();
        assert_eq!(plan.alloc.map(|a| (a.min_bytes, a.sample)), Some((0, 1)));
        assert_eq!(
            Plan::from_args(&args(&["--stage", "a=/x:f"]))
                .unwrap()
                .alloc,
            None
        );
        assert_eq!(
            Plan::from_args(&args(&["--stage", "a=/x:f", "--alloc"])).unwrap_err(),
            ConfigError::AllocNeedsPids
        );
    }

    #[test]
    fn max_probes_and_attach_mode() {
        let plan = Plan::from_args(&args(&["--stage", "a=/x:f"])).unwrap();
        assert_eq!(plan.max_probes, DEFAULT_MAX_PROBES);
        assert_eq!(plan.attach, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "max_probes = 5000\n").unwrap();
        let config = path.to_str().unwrap();
        let plan = Plan::from_args(&args(&["--config", config, "--stage", "a=/x:f"])).unwrap();
        assert_eq!(plan.max_probes, 5000);
        let plan = Plan::from_args(&args(&[
            "--config",
            config,
            "--stage",
            "a=/x:f",
            "--max-probes",
            "20",
            "--attach",
            "perf",
        ]))
        .unwrap();
        assert_eq!(plan.max_probes, 20);
        assert_eq!(plan.attach, Some(AttachMode::Perf));
        assert_eq!(
            Plan::from_args(&args(&["--stage", "a=/x:f", "--max-probes", "0"])).unwrap_err(),
            ConfigError::MaxProbesZero
        );
    }

    #[test]
    fn toml_stages_and_flags_combine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "min_duration = \"1ms\"\n[[stage]]\nname = \"a\"\ntarget = \"/x\"\nsymbol = \"f\"\n",
        )
        .unwrap();
        let plan = Plan::from_args(&args(&[
            "--config",
            path.to_str().unwrap(),
            "--stage",
            "b=/y:g",
        ]))
        .unwrap();
        let names: Vec<_> = plan.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(plan.min_duration, Duration::from_millis(1));
        let dup = Plan::from_args(&args(&[
            "--config",
            path.to_str().unwrap(),
            "--stage",
            "a=/y:g",
        ]));
        assert_eq!(
            dup.unwrap_err(),
            ConfigError::DuplicateStage { name: "a".into() }
        );
    }

    #[test]
    fn gauges_frames_alerts_and_api() {
        let plan = Plan::from_args(&args(&[
            "--stage",
            "f=/x:frame",
            "--frame-stage",
            "f",
            "--gauge",
            "tracks=/x:vision::Tracker::update:ret",
            "--gauge",
            "queue=/x:push:arg1",
            "--alert",
            "fps < 25 for 10s",
            "--api-port",
            "0",
        ]))
        .unwrap();
        assert_eq!(plan.frame_stage.as_deref(), Some("f"));
        assert_eq!(plan.gauges[0].symbol, "vision::Tracker::update");
        assert_eq!(plan.gauges[0].source, GaugeSource::Ret);
        assert_eq!(plan.gauges[1].source, GaugeSource::Arg(1));
        assert_eq!(plan.alerts[0].rule, "fps < 25 for 10s");
        assert_eq!(
            plan.api,
            Some(ApiSpec {
                port: None,
                socket: None
            })
        );
        let plan = Plan::from_args(&args(&["--stage", "f=/x:frame", "--no-api"])).unwrap();
        assert_eq!(plan.api, None);
        let e =
            Plan::from_args(&args(&["--stage", "f=/x:frame", "--frame-stage", "g"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "frame stage 'g' is not one of the stages (f)"
        );
        for (spec, problem) in [
            ("q=/x:push", "missing ':argN' or ':ret' after SYMBOL"),
            ("q=/x:push:arg6", "value must be arg0..arg5 or ret"),
            ("q", "missing '='"),
        ] {
            assert_eq!(
                parse_gauge(spec).unwrap_err(),
                ConfigError::MalformedGauge {
                    spec: spec.into(),
                    problem
                }
            );
        }
    }

    #[test]
    fn prometheus_buckets_parse_and_validate() {
        assert_eq!(
            parse_buckets("0.001, 0.01,1").unwrap(),
            vec![1_000_000, 10_000_000, 1_000_000_000]
        );
        for (text, reason) in [
            ("0.01,0.001", "bounds must increase"),
            ("x", "not a number"),
            ("0,1", "bounds must be positive"),
        ] {
            assert_eq!(
                parse_buckets(text).unwrap_err(),
                ConfigError::Buckets {
                    value: text.into(),
                    reason: reason.into()
                }
            );
        }
        let plan = Plan::from_args(&args(&["--stage", "a=/x:f", "--history", "h.db"])).unwrap();
        let h = plan.outputs.history.unwrap();
        assert_eq!(h.interval, Duration::from_secs(10));
        assert_eq!(h.retention, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(plan.prom_buckets_ns.len(), 11);
        let e = Plan::from_args(&args(&[
            "--stage",
            "a=/x:f",
            "--history",
            "h.db",
            "--history-interval",
            "5s",
        ]))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--history-interval must be 1s, 10s or 60s (the windows the agent keeps), not 5s"
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        assert_eq!(
            Plan::from_args(&args(&[])).unwrap_err(),
            ConfigError::NoStages
        );
        let e = Plan::from_args(&args(&["--stage", "a=/x:f", "--duration", "soon"])).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid --duration 'soon'"),
            "{e}"
        );
        let e = Plan::from_args(&args(&["--stage", "a=/x:f", "-p", "1", "--", "ls"])).unwrap_err();
        assert_eq!(e, ConfigError::PidAndCommand);
        for bad in ["1000", "6144", "0"] {
            let e =
                Plan::from_args(&args(&["--stage", "a=/x:f", "--ring-bytes", bad])).unwrap_err();
            assert_eq!(e, ConfigError::RingBytes(bad.parse().unwrap()));
        }
        let ok = Plan::from_args(&args(&["--stage", "a=/x:f", "--ring-bytes", "8192"])).unwrap();
        assert_eq!(ok.ring_bytes, 8192);
    }

    #[test]
    fn no_spans_aggregates_and_shrinks_the_ring() {
        let spans = Plan::from_args(&args(&["--stage", "a=/x:f"])).unwrap();
        assert_eq!((spans.ring_bytes, spans.aggregate_above), (1 << 24, None));
        let agg = Plan::from_args(&args(&["--stage", "a=/x:f", "--no-spans"])).unwrap();
        assert_eq!(
            (agg.ring_bytes, agg.aggregate_above),
            (NO_SPANS_RING_BYTES, Some(DEFAULT_AGGREGATE_ABOVE))
        );
        let all = ["--stage", "a=/x:f", "--no-spans", "--aggregate-above", "0"];
        assert_eq!(
            Plan::from_args(&args(&all)).unwrap().aggregate_above,
            Some(0)
        );
        for bad in [
            &["--stage", "a=/x:f", "--aggregate-above", "5"][..],
            &[
                "--stage",
                "a=/x:f",
                "--no-spans",
                "--trace-out",
                "t.json",
                "--aggregate-above",
                "5",
            ],
        ] {
            assert_eq!(
                Plan::from_args(&args(bad)).unwrap_err(),
                ConfigError::AggregateNeedsNoSpans
            );
        }
    }

    #[test]
    fn flags_override_the_file_and_defaults_apply() {
        assert_eq!(alloc_spec(AllocFlags::default(), None), Ok(None));
        let file = FileAlloc {
            min_bytes: Some("1KiB".into()),
            sample: Some(4),
            min_age: None,
            top: Some(3),
        };
        let flags = AllocFlags {
            sample: Some(10),
            ..AllocFlags::default()
        };
        let spec = alloc_spec(flags, Some(file)).unwrap().unwrap();
        assert_eq!(
            spec,
            AllocSpec {
                min_bytes: 1024,
                sample: 10,
                min_age: DEFAULT_MIN_AGE,
                top: 3
            }
        );
        let zero = AllocFlags {
            on: true,
            sample: Some(0),
            ..AllocFlags::default()
        };
        assert_eq!(alloc_spec(zero, None), Err(ConfigError::AllocSample));
    }

    #[test]
    fn otlp_from_flags_and_the_config_table() {
        let stage = ["--stage", "a=/bin/true:main"];
        assert_eq!(Plan::from_args(&args(&stage)).unwrap().outputs.otlp, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "prom_buckets = \"0.001,0.01\"\nkubelet_pods_dir = \"/host/var/log/pods\"\n\
             [otlp]\nendpoint = \"http://collector:4318/\"\ninterval = \"2s\"\n\
             timeout = \"1s\"\ntraces = 0.5\nservice_name = \"vision\"\n",
        )
        .unwrap();
        let mut argv = stage.to_vec();
        argv.extend(["--config", path.to_str().unwrap()]);
        assert_eq!(
            Plan::from_args(&args(&argv)).unwrap_err(),
            ConfigError::OtlpTracesNeedFrame
        );
        argv.extend(["--frame-stage", "a"]);
        let plan = Plan::from_args(&args(&argv)).unwrap();
        assert_eq!(
            plan.outputs.otlp,
            Some(OtlpSpec {
                endpoint: "http://collector:4318/".into(),
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                traces: Some(SampleRatio(0.5)),
                service_name: "vision".into(),
                bounds_ns: vec![1_000_000, 10_000_000],
            })
        );
        assert_eq!(plan.kubelet_pods_dir, Some("/host/var/log/pods".into()));
        // Flags win.
        argv.extend([
            "--otlp",
            "http://127.0.0.1:4318",
            "--otlp-traces",
            "1",
            "--otlp-interval",
            "500ms",
            "--otlp-service-name",
            "cam-3",
        ]);
        let spec = Plan::from_args(&args(&argv)).unwrap().outputs.otlp.unwrap();
        assert_eq!(spec.endpoint, "http://127.0.0.1:4318");
        assert_eq!(spec.traces, Some(SampleRatio(1.0)));
        assert_eq!(spec.interval, Duration::from_millis(500));
        assert_eq!(spec.service_name, "cam-3");

        let err = |extra: &[&str]| {
            let mut a = stage.to_vec();
            a.extend(["--frame-stage", "a"]);
            a.extend_from_slice(extra);
            Plan::from_args(&args(&a)).unwrap_err().to_string()
        };
        assert!(err(&["--otlp", "https://x:4318"]).contains("https is not supported"));
        assert!(err(&["--otlp", "x:4318"]).contains("must start with http://"));
        assert!(err(&["--otlp", "http://x:4318/v1/metrics"]).contains("base URL only"));
        assert!(err(&["--otlp", "http://"]).contains("no host"));
        assert!(err(&["--otlp", "http://x", "--otlp-traces", "1.5"]).contains("between 0 and 1"));
        assert!(err(&["--otlp", "http://x", "--otlp-interval", "1ms"]).contains("at least 100ms"));
        assert_eq!(
            err(&["--otlp-traces", "0.1"]),
            "--otlp-traces needs an endpoint: --otlp http://HOST:4318 or endpoint = \"...\" in the config's [otlp] table"
        );
    }
}
