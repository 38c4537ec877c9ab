//! Command-line definitions (clap) only; validation lives in config.rs.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::probes::memory::MemoryMode;

#[derive(Debug, Parser)]
#[command(
    name = "adeline-trace",
    version,
    about = "Measure a running inference pipeline's stages from outside the process (eBPF uprobes)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to stage functions and stream their latency as JSON Lines.
    Run(Box<RunArgs>),
    /// List the functions (and USDT probes) of an executable or library that
    /// can be probed, or with --python -p PID the Python functions a
    /// process has.
    List(ListArgs),
    /// Ask the running agent for per-stage latency, FPS and frame shares.
    Summary(SummaryArgs),
    /// Compare two summary files stage by stage (regression gate for CI).
    Compare(CompareArgs),
    /// Per-stage trends from the history database a `run --history` keeps.
    History(HistoryArgs),
    /// Print a shell completion script on stdout (bash, zsh or fish).
    Completions(CompletionsArgs),
    /// Write the man pages (adeline-trace.1, adeline-trace-run.1, ...) into DIR.
    #[command(hide = true)]
    Manpages(ManpagesArgs),
    /// Ask the running agent (`run --profile`) for a stage's profile.
    Profile(ProfileArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell, e.g. `adeline-trace completions bash > /etc/bash_completion.d/adeline-trace`.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells completion scripts are made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct ManpagesArgs {
    /// The directory to write them to (created if missing).
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Only this stage's samples (default: every stage, and `(no stage)`).
    #[arg(long)]
    pub stage: Option<String>,
    /// How far back, in seconds, or `all` for the whole run.
    #[arg(long, default_value = "10")]
    pub seconds: String,
    /// folded (`stage;frame;… µs`, the default), svg (flame graph), pprof,
    /// or for --alert diff (its differential flame graph, the default there).
    #[arg(long)]
    pub format: Option<String>,
    /// An alert's profile instead (its id in /api/profile/alerts): by
    /// default its differential flame graph (--format diff).
    #[arg(long, value_name = "ID", conflicts_with_all = ["stage", "seconds"])]
    pub alert: Option<u32>,
    /// Write to this file instead of stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The agent's API port on 127.0.0.1.
    #[arg(long, value_name = "PORT")]
    pub api_port: Option<u16>,
    /// Talk to the agent over this unix socket instead of TCP.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The history database (written by `run --history FILE`).
    #[arg(long, value_name = "FILE")]
    pub db: PathBuf,
    /// Only this stage.
    #[arg(long)]
    pub stage: Option<String>,
    /// How far back, e.g. 1h, 30m, 7d.
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// Window: 1s, 10s, 60s or all.
    #[arg(long, default_value = "10s")]
    pub window: String,
    /// Print the agent's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Refresh in place every second until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// The agent's API port on 127.0.0.1.
    #[arg(long, value_name = "PORT")]
    pub api_port: Option<u16>,
    /// Talk to the agent over this unix socket instead of TCP.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Baseline summary (from `run --summary-out` or `summary --json`).
    pub baseline: PathBuf,
    /// Current summary.
    pub current: PathBuf,
    /// Largest allowed growth of the metric, e.g. 10%.
    #[arg(long, default_value = "10%")]
    pub max_regression: String,
    /// Metric to compare: p50, p90, p95, p99, p999, mean or max.
    #[arg(long, default_value = "p95")]
    pub metric: String,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// TOML file with stages and options (flags given here add to / override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A stage to time: NAME=TARGET:SYMBOL. TARGET is a path or a bare library
    /// name; SYMBOL an exact name or a glob over demangled names. Also
    /// NAME=python:INTERPRETER:PATTERN (docs/python.md) and
    /// NAME=usdt:TARGET:PROVIDER:ENTRY,RETURN (docs/usdt.md). Repeatable.
    #[arg(long = "stage", value_name = "NAME=TARGET:SYMBOL")]
    pub stages: Vec<String>,
    /// Trace only this process (repeatable). Default: every process running the targets.
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Stop after this long (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Where to write JSON Lines events: a file, or - for stdout (default).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<String>,
    /// Do not report calls shorter than this (filtered in the kernel), e.g. 100us.
    #[arg(long, value_name = "DURATION")]
    pub min_duration: Option<String>,
    /// How often to emit a `stats` event (and refresh --live), e.g. 1s.
    #[arg(long, value_name = "DURATION")]
    pub stats_interval: Option<String>,
    /// The stage whose calls are frames (FPS, frame latency, per-stage share).
    #[arg(long, value_name = "STAGE")]
    pub frame_stage: Option<String>,
    /// Record an integer argument or return value on every call:
    /// NAME=TARGET:SYMBOL:argN|ret (N = 0..5); or a USDT probe's decoded
    /// argument, or 1 per hit: NAME=usdt:TARGET:PROVIDER:PROBE[:argN|:hits]
    /// (docs/usdt.md). Repeatable.
    #[arg(long = "gauge", value_name = "NAME=TARGET:SYMBOL:argN|ret")]
    pub gauges: Vec<String>,
    /// An alert rule, e.g. 'p99(infer) > 50ms for 5s' (repeatable; see docs/alerts.md).
    #[arg(long = "alert", value_name = "RULE")]
    pub alerts: Vec<String>,
    /// Snapshot JSON (e.g. an earlier `--summary-out`) that `baseline` in
    /// alert rules refers to; without it, the first 60 s of this run.
    #[arg(long, value_name = "FILE")]
    pub alert_baseline: Option<PathBuf>,
    /// Serve the HTTP API on 127.0.0.1:PORT (default 7878; 0 = no TCP listener).
    #[arg(long, value_name = "PORT")]
    pub api_port: Option<u16>,
    /// Serve the HTTP API on this unix socket too (mode 0600).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Do not serve the HTTP API.
    #[arg(long)]
    pub no_api: bool,
    /// Write the final summary snapshot (JSON) to this file on exit.
    #[arg(long, value_name = "FILE")]
    pub summary_out: Option<PathBuf>,
    /// Prometheus histogram bucket bounds in seconds, comma-separated
    /// (default 0.0005,0.001,0.0025,0.005,0.01,0.025,0.05,0.1,0.25,0.5,1).
    #[arg(long, value_name = "SECONDS,...")]
    pub prom_buckets: Option<String>,
    /// Keep per-stage history in this SQLite file (one row per stage per interval).
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// History row interval (default 10s).
    #[arg(long, value_name = "DURATION")]
    pub history_interval: Option<String>,
    /// Delete history rows older than this (default 7d).
    #[arg(long, value_name = "DURATION")]
    pub history_retention: Option<String>,
    /// Write spans as a Chrome trace-event JSON file (opens in Perfetto / chrome://tracing).
    #[arg(long, value_name = "FILE")]
    pub trace_out: Option<PathBuf>,
    /// Ring buffer size in bytes: a power of two, at least 4096 (default
    /// 4194304).
    #[arg(long, value_name = "BYTES")]
    pub ring_bytes: Option<u32>,
    /// Do not write a `span` event per call (summaries, stats, gauges, alerts
    /// and the API still work): the cheapest way to watch a high-rate pipeline.
    #[arg(long)]
    pub no_spans: bool,
    /// With --no-spans: a stage called more than RATE times a second is
    /// counted in kernel histograms (no record per call; percentiles within
    /// 0.78%). 0: every stage from the start. Default 10000.
    #[arg(long, value_name = "RATE")]
    pub aggregate_above: Option<u64>,
    /// Show a live per-stage latency table on stderr.
    #[arg(long)]
    pub live: bool,
    /// Kernel memory tracepoints: `full` (default: mmap, munmap, mremap,
    /// brk and kmem:rss_stat, which runs on every page-counter change of
    /// the process), `maps` (the syscalls only: no exact RSS, no resident
    /// bytes per stage) or `off` (RSS from procfs only).
    #[arg(long, value_name = "full|maps|off", value_enum, default_value = "full")]
    pub memory: MemoryMode,
    /// How stage returns are observed: `ret` puts uprobes on the function's
    /// exit instructions, so C++ exceptions, Rust panics and thread
    /// cancellation can cross it (a single-stepped trap per return);
    /// `uretprobe` uses the kernel's return trampoline (cheaper, but an
    /// exception that unwinds through the function terminates the
    /// process); `auto` (default): `ret` for functions in files with
    /// exception tables (C++, Rust) that call anything, else `uretprobe`.
    /// See docs/unwind.md.
    #[arg(
        long,
        value_name = "auto|ret|uretprobe",
        value_enum,
        default_value = "auto"
    )]
    pub exit_probes: crate::probes::unwind::ExitProbes,
    /// Python stages: attach the interpreter probes for WINDOW every
    /// PERIOD (e.g. 1s/10s: exact spans inside each window, no cost
    /// between), or `always` (every call; see docs/python.md for the cost).
    #[arg(long, value_name = "WINDOW/PERIOD|always")]
    pub python_window: Option<String>,
    /// Alloc mode: trace the C library's allocator (malloc, calloc, realloc,
    /// free, posix_memalign, aligned_alloc, memalign, valloc, mmap, munmap)
    /// of the traced process: allocations per stage, outstanding bytes and
    /// the largest outstanding sites by user stack. Costs a trap per call.
    #[arg(long)]
    pub alloc: bool,
    /// Alloc mode: do not track allocations smaller than this (e.g. 4KiB).
    #[arg(long, value_name = "BYTES", requires = "alloc")]
    pub alloc_min_bytes: Option<String>,
    /// Alloc mode: track one allocation in N, at random (default 1 = all).
    #[arg(long, value_name = "N", requires = "alloc")]
    pub alloc_sample: Option<u32>,
    /// Alloc mode: report outstanding allocations at least this old (default 1s).
    #[arg(long, value_name = "DURATION", requires = "alloc")]
    pub min_age: Option<String>,
    /// Alloc mode: how many allocation sites to report (default 10).
    #[arg(long, value_name = "N", requires = "alloc")]
    pub alloc_top: Option<usize>,
    /// Profile the traced processes: on-CPU stacks sampled HZ times a second
    /// per CPU (cpu-clock, e.g. 99) and off-CPU time from the scheduler,
    /// each tagged with the innermost traced stage (`/api/profile`).
    #[arg(long, value_name = "HZ")]
    pub profile: Option<u32>,
    /// With --profile: no off-CPU time (no sched_switch program).
    #[arg(long, requires = "profile")]
    pub no_off_cpu: bool,
    /// With --profile: leave out off-CPU intervals shorter than this (e.g. 50us).
    #[arg(long, value_name = "DURATION", requires = "profile")]
    pub off_cpu_min: Option<String>,
    /// With --profile: write the whole run's profile to FILE on exit:
    /// folded stacks (`stage;frame;… µs`), a flame graph (*.svg) or pprof (*.pb).
    #[arg(long, value_name = "FILE", requires = "profile")]
    pub profile_out: Option<PathBuf>,
    /// With --profile: when an alert on a stage fires, capture the stage's
    /// profile this long and diff it against as long before (default 10s; 0 = off).
    #[arg(long, value_name = "DURATION", requires = "profile")]
    pub alert_profile: Option<String>,
    /// Refuse to attach to more functions than this in one run (default
    /// 1000; every match of every stage and gauge counts once).
    #[arg(long, value_name = "N")]
    pub max_probes: Option<usize>,
    /// Benchmarks and tests: attach uprobes through `multi` (uprobe-multi
    /// links, Linux 6.6+) or `perf` (a perf event per probe). Default: multi
    /// when the kernel has it.
    #[arg(long, value_name = "multi|perf", value_enum, hide = true)]
    pub attach: Option<crate::probes::attach::AttachMode>,
    /// Send the per-stage metrics to an OpenTelemetry collector over OTLP
    /// HTTP/protobuf, e.g. http://127.0.0.1:4318 (/v1/metrics and
    /// /v1/traces are added).
    #[arg(long, value_name = "ENDPOINT")]
    pub otlp: Option<String>,
    /// OTLP metric export interval (default 10s).
    #[arg(long, value_name = "DURATION")]
    pub otlp_interval: Option<String>,
    /// Also send frames as OTLP traces (the frame root a span, one child
    /// span per stage call), this share of them: 0 to 1.
    #[arg(long, value_name = "RATIO")]
    pub otlp_traces: Option<f64>,
    /// OTLP `service.name` (default: $OTEL_SERVICE_NAME, else adeline-trace).
    #[arg(long, value_name = "NAME")]
    pub otlp_service_name: Option<String>,
    /// The kubelet's pod log directory, where pod namespaces and names are
    /// found by pod UID (default /var/log/pods).
    #[arg(long, value_name = "DIR")]
    pub kubelet_pods_dir: Option<PathBuf>,
    /// Do not trace the processes a launched command (or, with --follow,
    /// a -p process) forks: probe only the launched process itself.
    /// Following them puts the probes in every process running the
    /// targets, where the kernel pid filter drops the untraced ones' calls.
    #[arg(long)]
    pub no_follow_children: bool,
    /// With -p or a command: keep tracing when the processes exit, and
    /// trace every process that starts running the same program again
    /// (same arguments) or a stage's executable: a restarted pipeline is
    /// picked up within a second. Children of -p processes are followed too.
    #[arg(long)]
    pub follow: bool,
    /// Launch this command, trace it and the processes it starts, and stop
    /// when it exits.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Executable or shared library (path or bare library name). With
    /// --python: the interpreter (default with -p: the process's own).
    pub target: Option<String>,
    /// Only functions whose demangled or raw name (with --python: the
    /// qualified name) matches this glob.
    pub glob: Option<String>,
    /// Resolve a bare library name through this process's mappings; with
    /// --python, the process whose Python functions to list.
    #[arg(short = 'p', long = "pid")]
    pub pid: Option<u32>,
    /// List the Python functions a running interpreter (-p PID) has: every
    /// live function object and the code on its threads' stacks.
    #[arg(long)]
    pub python: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
