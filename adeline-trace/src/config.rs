//! TOML file + CLI flags -> a validated [`Plan`]. All user-input validation
//! that does not need the file system's ELF contents happens here.
use std::{
    collections::HashSet,
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;

use crate::{
    alerts::AlertSpec,
    cli::RunArgs,
    format::one_line,
    probes::{
        alloc::{AllocSpec, DEFAULT_MIN_AGE, DEFAULT_TOP},
        attach::AttachMode,
        gauge::{GaugeSource, GaugeSpec},
        memory::MemoryMode,
        profile::{ProfileSpec, MAX_HZ},
        python,
        usdt::{self, UsdtValue},
        Location, StageSpec,
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

/// Longest stage or gauge name, in characters: names are table columns,
/// Prometheus labels, alert rule operands and history keys.
pub const MAX_NAME_CHARS: usize = 64;

/// Largest config file read. A config with every stage the agent can
/// trace (1024) is well under 256 KiB; anything bigger is a mistake, and
/// refusing it up front keeps parsing errors fast.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// User text quoted in an error is cut to this many characters (and kept on one line).
const ECHO_CHARS: usize = 80;

/// `text` as quoted in a one-line error.
fn echo(text: &str) -> String {
    one_line(text, ECHO_CHARS)
}

/// What a stage's TARGET:SYMBOL names: a native function, Python
/// functions (`python:INTERPRETER:PATTERN`, TOML `kind = "python"`), or a
/// pair of USDT probes (`usdt:TARGET:PROVIDER:ENTRY,RETURN`, TOML
/// `kind = "usdt"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StageKind {
    Native,
    Python,
    Usdt,
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
    /// The profiler (`--profile HZ`).
    pub profile: Option<ProfileSpec>,
    /// Profiles on alert: capture length (None: off).
    pub alert_profile: Option<Duration>,
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
    /// Trace the processes the traced ones fork (`--no-follow-children`
    /// turns it off).
    pub follow_children: bool,
    /// The config file (service mode: SIGHUP re-reads it).
    pub config: Option<PathBuf>,
    /// `--follow`: pick up restarts of the traced processes.
    pub follow: bool,
    /// In-kernel aggregation of the stages above this many calls per
    /// second (None: off; only with --no-spans).
    pub aggregate_above: Option<u64>,
}

/// `--aggregate-above`'s default, calls per second: the agent's ~0.4 us of
/// CPU per record makes 10,000 records/s cost it ~0.4% of a core.
pub const DEFAULT_AGGREGATE_ABOVE: u64 = 10_000;

/// Default of `--max-probes`.
pub const DEFAULT_MAX_PROBES: usize = 1000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("malformed --stage '{}': expected NAME=TARGET:SYMBOL, e.g. infer=/opt/app/libdetector.so:'*Detector::infer*' ({problem})", echo(spec))]
    MalformedStage { spec: String, problem: &'static str },
    #[error("cannot read config {path}: {reason}")]
    ReadConfig { path: PathBuf, reason: String },
    #[error("config {path} is larger than {} KiB: it cannot be an adeline-trace config (one with {} stages is far smaller)", MAX_CONFIG_BYTES >> 10, adeline_trace_common::MAX_STAGES)]
    ConfigTooLarge { path: PathBuf },
    #[error("config {path}:{line}:{column}: {message}")]
    Toml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "invalid {what} '{}': {reason} (examples: 500us, 20ms, 5s, 2m)",
        echo(value)
    )]
    Duration {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("stage '{name}' is defined twice")]
    DuplicateStage { name: String },
    #[error(
        "{kind} name '{}' is invalid: use letters, digits, '_', '-' or '.'",
        echo(name)
    )]
    BadName { kind: &'static str, name: String },
    #[error(
        "{kind} name '{}' is too long ({chars} characters): at most {MAX_NAME_CHARS}",
        echo(name)
    )]
    NameTooLong {
        kind: &'static str,
        name: String,
        chars: usize,
    },
    #[error("no stages to trace: give --stage NAME=TARGET:SYMBOL or a --config file with [[stage]] entries")]
    NoStages,
    #[error("--pid and a command to launch (after --) cannot be combined")]
    PidAndCommand,
    #[error("pid 0 is not a process id")]
    PidZero,
    #[error("--follow needs -p PID or a command to launch: without them every process running the targets is traced already")]
    FollowNeedsPids,
    #[error("--duration must be more than 0 (e.g. 30s); leave it out to trace until Ctrl-C")]
    ZeroDuration,
    #[error("--stats-interval must be at least 10ms")]
    StatsIntervalTooShort,
    #[error("--ring-bytes {0} is invalid: use a power of two of at least 4096, e.g. 4194304")]
    RingBytes(u32),
    #[error("malformed --gauge '{}': expected NAME=TARGET:SYMBOL:argN|ret, e.g. tracks=/opt/app/bin/pipeline:track:ret, or NAME=usdt:TARGET:PROVIDER:PROBE[:argN|:hits] ({problem})", echo(spec))]
    MalformedGauge { spec: String, problem: &'static str },
    #[error("frame stage '{}' is not one of the stages ({known})", echo(name))]
    UnknownFrameStage { name: String, known: String },
    #[error("gauge '{name}' is defined twice")]
    DuplicateGauge { name: String },
    #[error(
        "invalid --prom-buckets '{}': {reason} (seconds, comma-separated, e.g. 0.001,0.01,0.1)",
        echo(value)
    )]
    Buckets { value: String, reason: String },
    #[error("--history-interval must be 1s, 10s or 60s (the windows the agent keeps), not {}", echo(.0))]
    HistoryInterval(String),
    #[error(
        "invalid {what} '{}': {reason} (examples: 4096, 64KiB, 1MB)",
        echo(value)
    )]
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
    #[error("--profile {0} is invalid: use a rate from 1 to {MAX_HZ} samples per second, e.g. 99")]
    ProfileHz(u32),
    #[error("too many stages ({count}); at most {max}")]
    TooManyStages { count: usize, max: u32 },
    #[error("--max-probes must be at least 1")]
    MaxProbesZero,
    #[error("invalid --python-window '{value}': {reason} (form WINDOW/PERIOD, e.g. 1s/10s, or 'always')")]
    PythonWindow { value: String, reason: String },
    #[error("--aggregate-above needs --no-spans, and no --trace-out or OTLP traces (they need a record per call)")]
    AggregateNeedsNoSpans,
    #[error("stage '{name}': unknown kind '{kind}' (use \"native\", \"python\" or \"usdt\")")]
    StageKindUnknown { name: String, kind: String },
    #[error("gauge '{name}': unknown kind '{kind}' (use \"native\" or \"usdt\")")]
    GaugeKindUnknown { name: String, kind: String },
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
    profile: Option<FileProfile>,
    max_probes: Option<usize>,
    python_window: Option<String>,
    otlp: Option<FileOtlp>,
    kubelet_pods_dir: Option<PathBuf>,
    follow_children: Option<bool>,
    #[serde(default)]
    follow: bool,
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

/// The `[profile]` table of a config file (its presence turns the
/// profiler on).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProfile {
    hz: Option<u32>,
    off_cpu: Option<bool>,
    off_cpu_min: Option<String>,
    out: Option<PathBuf>,
    alert_capture: Option<String>,
}

/// Default sampling rate of a `[profile]` table without `hz`.
pub const DEFAULT_PROFILE_HZ: u32 = 99;
/// Default capture length of profiles on alert.
pub const DEFAULT_ALERT_PROFILE: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGauge {
    name: String,
    /// "native" (default) or "usdt".
    kind: Option<String>,
    target: String,
    /// The function, or for USDT PROVIDER:PROBE.
    symbol: String,
    /// "arg0".."arg5" or "ret"; USDT: "argN" or "hits" (the default).
    value: Option<String>,
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
    /// "native" (default), "python" or "usdt".
    kind: Option<String>,
    target: String,
    /// The function: a symbol, for Python a [FILE:|MODULE:]QUALNAME
    /// pattern, for USDT PROVIDER:ENTRY,RETURN.
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
    if target.trim() == "usdt" {
        let stage = StageSpec {
            name: name.trim().to_string(),
            location: usdt_stage(symbol).map_err(bad)?,
        };
        check_name("stage", &stage.name)?;
        return Ok(stage);
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
    check_name("stage", &stage.name)?;
    Ok(stage)
}

/// `TARGET:PROVIDER:ENTRY,RETURN` (after `usdt:`): TARGET is everything
/// before the last two ':'; the return probe has the entry's provider.
fn usdt_stage(text: &str) -> Result<Location, &'static str> {
    const FORM: &str =
        "USDT stages are NAME=usdt:TARGET:PROVIDER:ENTRY,RETURN (a single probe is a --gauge)";
    let mut parts = text.rsplitn(3, ':');
    let (Some(probes), Some(provider), Some(target)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(FORM);
    };
    let (entry, ret) = probes.split_once(',').ok_or(FORM)?;
    let probe = |name: &str| usdt::ProbeName::parse(&format!("{provider}:{name}"));
    match (target.trim(), probe(entry), probe(ret)) {
        ("", _, _) => Err("empty TARGET after usdt:"),
        (target, Some(entry), Some(ret)) => Ok(Location::Usdt {
            target: target.to_string(),
            entry,
            ret,
        }),
        _ => Err(FORM),
    }
}

/// `usdt:TARGET:PROVIDER:PROBE[:argN|:hits]` after `NAME=`.
fn usdt_gauge(name: &str, text: &str) -> Result<GaugeSpec, &'static str> {
    const FORM: &str = "USDT gauges are NAME=usdt:TARGET:PROVIDER:PROBE[:argN|:hits]";
    let (rest, value) = match text.rsplit_once(':') {
        Some((rest, "hits")) => (rest, UsdtValue::Hit),
        Some((rest, last)) if last.starts_with("arg") => {
            let n: u8 = last[3..]
                .parse()
                .map_err(|_| "USDT argument must be arg0..arg11")?;
            if n > 11 {
                return Err("USDT argument must be arg0..arg11");
            }
            (rest, UsdtValue::Arg(n))
        }
        _ => (text, UsdtValue::Hit),
    };
    let mut parts = rest.rsplitn(3, ':');
    let (Some(probe), Some(provider), Some(target)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(FORM);
    };
    let probe = usdt::ProbeName::parse(&format!("{provider}:{probe}")).ok_or(FORM)?;
    if target.trim().is_empty() || name.trim().is_empty() {
        return Err("empty NAME or TARGET");
    }
    Ok(GaugeSpec {
        name: name.trim().to_string(),
        target: target.trim().to_string(),
        symbol: probe.to_string(),
        source: GaugeSource::Usdt(value),
    })
}

/// Parses `NAME=TARGET:SYMBOL:argN|ret`; the value source is after the
/// last ':' so C++ `::` in the symbol is kept. `NAME=usdt:...` is a USDT
/// gauge ([`usdt_gauge`]).
pub fn parse_gauge(spec: &str) -> Result<GaugeSpec, ConfigError> {
    let bad = |problem| ConfigError::MalformedGauge {
        spec: spec.to_string(),
        problem,
    };
    let (name, rest) = spec.split_once('=').ok_or_else(|| bad("missing '='"))?;
    let (target, rest) = rest
        .split_once(':')
        .ok_or_else(|| bad("missing ':' after TARGET"))?;
    if target.trim() == "usdt" {
        let gauge = usdt_gauge(name, rest).map_err(bad)?;
        check_name("gauge", &gauge.name)?;
        return Ok(gauge);
    }
    let (symbol, source) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("missing ':argN' or ':ret' after SYMBOL"))?;
    if name.trim().is_empty() || target.trim().is_empty() || symbol.trim().is_empty() {
        return Err(bad("empty NAME, TARGET or SYMBOL"));
    }
    let source =
        parse_gauge_source(source.trim()).ok_or_else(|| bad("value must be arg0..arg5 or ret"))?;
    check_name("gauge", name.trim())?;
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

/// A stage or gauge name (`kind`): 1 to [`MAX_NAME_CHARS`] ASCII letters,
/// digits, '_', '-' or '.' (so it needs no quoting in a table, a rule, a
/// Prometheus label or a URL).
fn check_name(kind: &'static str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(ConfigError::BadName {
            kind,
            name: name.to_string(),
        });
    }
    if name.len() > MAX_NAME_CHARS {
        return Err(ConfigError::NameTooLong {
            kind,
            name: name.to_string(),
            chars: name.len(),
        });
    }
    Ok(())
}

/// The first name given twice, in a linear pass.
fn first_duplicate<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = HashSet::new();
    names.into_iter().find(|n| !seen.insert(*n))
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
    let unreadable = |e: std::io::Error| ConfigError::ReadConfig {
        path: path.clone(),
        reason: e.to_string(),
    };
    // Never more than the cap is read (the path may be a device or a FIFO).
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::ConfigTooLarge { path: path.clone() });
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        unreadable(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        ))
    })?;
    parse_file(path, &text)
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        ConfigError::Toml {
            path: path.to_path_buf(),
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
        Plan::build(args, file)
    }

    /// The plan from config file contents `text` (as if read from `path`,
    /// which only names the file in errors) and the flags; `args.config`
    /// is not read.
    pub fn from_config_text(args: &RunArgs, path: &Path, text: &str) -> Result<Plan, ConfigError> {
        Plan::build(args, parse_file(path, text)?)
    }

    fn build(args: &RunArgs, file: FileConfig) -> Result<Plan, ConfigError> {
        let mut stages: Vec<StageSpec> =
            file.stage
                .into_iter()
                .map(|s| {
                    check_name("stage", &s.name)?;
                    let kind = match s.kind.as_deref() {
                        None | Some("native") => StageKind::Native,
                        Some("python") => StageKind::Python,
                        Some("usdt") => StageKind::Usdt,
                        Some(other) => {
                            return Err(ConfigError::StageKindUnknown {
                                name: s.name,
                                kind: other.to_string(),
                            })
                        }
                    };
                    let location = match kind {
                        StageKind::Python => Location::Python {
                            interpreter: s.target,
                            pattern: s.symbol,
                        },
                        StageKind::Native => Location::Function {
                            target: s.target,
                            symbol: s.symbol,
                        },
                        StageKind::Usdt => usdt_stage(&format!("{}:{}", s.target, s.symbol))
                            .map_err(|problem| ConfigError::MalformedStage {
                                spec: format!("{}=usdt:{}:{}", s.name, s.target, s.symbol),
                                problem,
                            })?,
                    };
                    Ok(StageSpec {
                        name: s.name,
                        location,
                    })
                })
                .collect::<Result<_, ConfigError>>()?;
        for spec in &args.stages {
            stages.push(parse_stage(spec)?);
        }
        if stages.is_empty() {
            return Err(ConfigError::NoStages);
        }
        let max = adeline_trace_common::MAX_STAGES;
        if stages.len() > max as usize {
            return Err(ConfigError::TooManyStages {
                count: stages.len(),
                max,
            });
        }
        if let Some(name) = first_duplicate(stages.iter().map(|s| s.name.as_str())) {
            return Err(ConfigError::DuplicateStage {
                name: name.to_string(),
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
        let follow = args.follow || file.follow;
        if follow && pids.is_empty() && args.command.is_empty() {
            return Err(ConfigError::FollowNeedsPids);
        }
        let pick = |flag: &Option<String>, file: Option<String>| flag.clone().or(file);
        let duration = pick(&args.duration, file.duration)
            .map(|d| parse_duration("--duration", &d))
            .transpose()?;
        if duration == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroDuration);
        }
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
        let ring_bytes = args.ring_bytes.unwrap_or(adeline_trace_common::RING_BYTES);
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
            let target = match g.kind.as_deref() {
                None | Some("native") => g.target,
                Some("usdt") => format!("usdt:{}", g.target),
                Some(other) => {
                    return Err(ConfigError::GaugeKindUnknown {
                        name: g.name,
                        kind: other.to_string(),
                    })
                }
            };
            let spec = match g.value {
                Some(value) => format!("{}={target}:{}:{value}", g.name, g.symbol),
                None => format!("{}={target}:{}", g.name, g.symbol),
            };
            gauges.push(parse_gauge(&spec)?);
        }
        for spec in &args.gauges {
            gauges.push(parse_gauge(spec)?);
        }
        if let Some(name) = first_duplicate(gauges.iter().map(|g| g.name.as_str())) {
            return Err(ConfigError::DuplicateGauge {
                name: name.to_string(),
            });
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
        let file_profile = file.profile;
        let profile = match (args.profile, &file_profile) {
            (None, None) => None,
            (hz, fp) => {
                let hz = hz
                    .or(fp.as_ref().and_then(|p| p.hz))
                    .unwrap_or(DEFAULT_PROFILE_HZ);
                if hz == 0 || hz > MAX_HZ {
                    return Err(ConfigError::ProfileHz(hz));
                }
                let off_cpu_min = match args
                    .off_cpu_min
                    .clone()
                    .or(fp.as_ref().and_then(|p| p.off_cpu_min.clone()))
                {
                    Some(t) => parse_duration("--off-cpu-min", &t)?,
                    None => Duration::ZERO,
                };
                Some(ProfileSpec {
                    hz,
                    off_cpu: !args.no_off_cpu
                        && fp.as_ref().and_then(|p| p.off_cpu).unwrap_or(true),
                    off_cpu_min,
                })
            }
        };
        let profile_out = args
            .profile_out
            .clone()
            .or(file_profile.as_ref().and_then(|p| p.out.clone()));
        let alert_profile = match (
            &profile,
            args.alert_profile
                .clone()
                .or(file_profile.and_then(|p| p.alert_capture)),
        ) {
            (None, _) => None,
            (Some(_), None) => Some(DEFAULT_ALERT_PROFILE),
            (Some(_), Some(t)) => {
                Some(parse_duration("--alert-profile", &t)?).filter(|d| !d.is_zero())
            }
        };
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
            profile,
            alert_profile,
            outputs: Outputs {
                events: output,
                spans: !args.no_spans,
                live: args.live,
                trace_out,
                history,
                summary_out,
                otlp,
                profile_out,
            },
            max_probes,
            attach: args.attach,
            exit_probes: args.exit_probes,
            python_window,
            kubelet_pods_dir: args.kubelet_pods_dir.clone().or(file.kubelet_pods_dir),
            follow_children: !args.no_follow_children && file.follow_children.unwrap_or(true),
            config: args.config.clone(),
            follow,
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
    fn names_are_short_plain_words() {
        let long = "a".repeat(70_000);
        let e = parse_stage(&format!("{long}=/x:f")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "stage name '{}...' is too long (70000 characters): at most 64",
                "a".repeat(80)
            )
        );
        assert!(parse_stage(&format!("{}=/x:f", "a".repeat(64))).is_ok());
        assert!(parse_stage(&format!("{}=/x:f", "a".repeat(65))).is_err());
        // Control characters never reach the one-line error.
        let e = parse_stage("a\nb=/x:f").unwrap_err().to_string();
        assert_eq!(
            e,
            "stage name 'a?b' is invalid: use letters, digits, '_', '-' or '.'"
        );
        let e = parse_gauge(&format!("{long}=/x:f:ret")).unwrap_err();
        assert!(
            e.to_string().starts_with("gauge name 'aaa") && e.to_string().len() < 200,
            "{e}"
        );
        // The same rule for names from a config file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            format!("[[stage]]\nname = \"{long}\"\ntarget = \"/x\"\nsymbol = \"f\"\n"),
        )
        .unwrap();
        let e = Plan::from_args(&args(&["--config", path.to_str().unwrap()])).unwrap_err();
        assert!(
            matches!(e, ConfigError::NameTooLong { chars: 70_000, .. }),
            "{e}"
        );
        // A malformed spec is echoed cut short.
        let e = parse_stage(&long).unwrap_err().to_string();
        assert!(e.len() < 250 && e.contains("(missing '=')"), "{e}");
    }

    #[test]
    fn duration_zero_is_refused() {
        for zero in ["0", "0s", "0ms"] {
            let e = Plan::from_args(&args(&["--stage", "a=/x:f", "--duration", zero])).unwrap_err();
            assert_eq!(e, ConfigError::ZeroDuration);
        }
        assert_eq!(
            ConfigError::ZeroDuration.to_string(),
            "--duration must be more than 0 (e.g. 30s); leave it out to trace until Ctrl-C"
        );
    }

    #[test]
    fn large_configs_are_refused_fast() {
        let dir = tempfile::tempdir().unwrap();
        // Over the cap: refused before parsing.
        let big = dir.path().join("big.toml");
        let stage =
            |i: usize| format!("[[stage]]\nname = \"s{i}\"\ntarget = \"/x\"\nsymbol = \"f\"\n");
        let text: String = (0..200_000).map(stage).collect();
        assert!(text.len() as u64 > 10 * MAX_CONFIG_BYTES);
        std::fs::write(&big, &text).unwrap();
        let started = std::time::Instant::now();
        let e = Plan::from_args(&args(&["--config", big.to_str().unwrap()])).unwrap_err();
        assert_eq!(e, ConfigError::ConfigTooLarge { path: big.clone() });
        assert_eq!(
            e.to_string(),
            format!(
                "config {} is larger than 1024 KiB: it cannot be an adeline-trace config (one with 1024 stages is far smaller)",
                big.display()
            )
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Under the cap, with too many stages: the count is checked before
        // the (linear) duplicate check.
        let many = dir.path().join("many.toml");
        let text: String = (0..10_000).map(|_| stage(0)).collect();
        assert!((text.len() as u64) < MAX_CONFIG_BYTES);
        std::fs::write(&many, &text).unwrap();
        let e = Plan::from_args(&args(&["--config", many.to_str().unwrap()])).unwrap_err();
        assert_eq!(
            e,
            ConfigError::TooManyStages {
                count: 10_000,
                max: 1024
            }
        );
        // Not text.
        let bin = dir.path().join("bin.toml");
        std::fs::write(&bin, b"duration = \"\xff\"").unwrap();
        let e = Plan::from_args(&args(&["--config", bin.to_str().unwrap()])).unwrap_err();
        assert!(e.to_string().ends_with("not UTF-8 text (byte 12)"), "{e}");
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
    fn usdt_stages_and_gauges() {
        let probe = |p: &str, n: &str| usdt::ProbeName {
            provider: p.into(),
            name: n.into(),
        };
        let s = parse_stage("gc=usdt:/usr/bin/python3.11:python:gc__start,gc__done").unwrap();
        assert_eq!(
            s.location,
            Location::Usdt {
                target: "/usr/bin/python3.11".into(),
                entry: probe("python", "gc__start"),
                ret: probe("python", "gc__done"),
            }
        );
        for (bad, problem) in [
            ("gc=usdt:/x:python:gc__start", "USDT stages are NAME=usdt:TARGET:PROVIDER:ENTRY,RETURN (a single probe is a --gauge)"),
            ("gc=usdt:python:a,b", "USDT stages are NAME=usdt:TARGET:PROVIDER:ENTRY,RETURN (a single probe is a --gauge)"),
            ("gc=usdt::python:a,b", "empty TARGET after usdt:"),
        ] {
            assert_eq!(
                parse_stage(bad),
                Err(ConfigError::MalformedStage {
                    spec: bad.into(),
                    problem
                }),
                "{bad}"
            );
        }
        let g = parse_gauge("depth=usdt:libq.so:q:push:arg1").unwrap();
        assert_eq!(
            (g.target.as_str(), g.symbol.as_str(), g.source),
            ("libq.so", "q:push", GaugeSource::Usdt(UsdtValue::Arg(1)))
        );
        for hits in ["n=usdt:/bin/x:q:push", "n=usdt:/bin/x:q:push:hits"] {
            let g = parse_gauge(hits).unwrap();
            assert_eq!(
                (g.target.as_str(), g.symbol.as_str(), g.source),
                ("/bin/x", "q:push", GaugeSource::Usdt(UsdtValue::Hit))
            );
        }
        let e = parse_gauge("n=usdt:/bin/x:q:push:arg12").unwrap_err();
        assert!(
            e.to_string()
                .contains("(USDT argument must be arg0..arg11)"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("adeline-usdt-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml = dir.join("c.toml");
        std::fs::write(
            &toml,
            r#"
[[stage]]
name = "gc"
kind = "usdt"
target = "/usr/bin/python3.11"
symbol = "python:gc__start,gc__done"

[[gauge]]
name = "collected"
kind = "usdt"
target = "/usr/bin/python3.11"
symbol = "python:gc__done"
value = "arg0"

[[gauge]]
name = "gcs"
kind = "usdt"
target = "/usr/bin/python3.11"
symbol = "python:gc__start"
"#,
        )
        .unwrap();
        let plan = Plan::from_args(&args(&["--config", toml.to_str().unwrap()])).unwrap();
        assert_eq!(plan.stages[0], s);
        assert_eq!(plan.gauges[0].source, GaugeSource::Usdt(UsdtValue::Arg(0)));
        assert_eq!(plan.gauges[1].source, GaugeSource::Usdt(UsdtValue::Hit));
        assert_eq!(plan.gauges[1].symbol, "python:gc__start");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_spans_aggregates_with_the_same_ring() {
        let spans = Plan::from_args(&args(&["--stage", "a=/x:f"])).unwrap();
        assert_eq!((spans.ring_bytes, spans.aggregate_above), (1 << 22, None));
        let agg = Plan::from_args(&args(&["--stage", "a=/x:f", "--no-spans"])).unwrap();
        assert_eq!(
            (agg.ring_bytes, agg.aggregate_above),
            (1 << 22, Some(DEFAULT_AGGREGATE_ABOVE))
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
