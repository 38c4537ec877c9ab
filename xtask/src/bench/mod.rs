//! Benchmarks (`cargo xtask bench ...`): each prints ratios against a
//! baseline measured in the same run; results go to BENCHMARKS.md.

mod agent;
mod alert;
mod attach;
mod emulation;
mod footprint;
mod memory;
mod overhead;
mod profile;
mod python;
mod soak;
mod tracefs;

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;

use crate::{root_dir, status};

#[derive(Subcommand)]
pub enum Bench {
    /// ns per traced call of a tiny function (push- and mov-first, and
    /// CET-built endbr64-first ones), for untraced, adeline-trace and a
    /// bpftrace timing script. Root.
    Overhead {
        /// Runs per configuration (interleaved); the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Calls per run for every function (default: 300000 for bench_push,
        /// 100000 for the others, about 0.5-2 s traced each).
        #[arg(long)]
        calls: Option<u64>,
    },
    /// Which x86-64 instructions the kernel emulates at a uprobe and which
    /// it single-steps or refuses: tracefs uprobes on one tiny function per
    /// instruction, CPU ns per call with and without. Root.
    Emulation {
        /// Interleaved runs per instruction; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Agent CPU per event (decode + aggregate) at the highest event rate a
    /// 2-thread demo pipeline produces, and drops. Root.
    Agent {
        /// Runs per configuration (interleaved); the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Frames per demo thread per run.
        #[arg(long, default_value_t = 20_000)]
        frames: u64,
    },
    /// Slowdown of an allocation-heavy C fixture traced in the default
    /// memory mode (goal <= 1.03x untraced), `--memory maps` and `off`,
    /// and with --alloc (`--with-alloc`). Root.
    Memory {
        /// Runs per configuration (interleaved); the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Calls per run: iterations of the churn fixture (about 0.4 ms
        /// each; default 2000), or rounds of 16384 faults with --faults
        /// (about 35 ms each; default 10).
        #[arg(long)]
        iterations: Option<u64>,
        /// Also run the agent with --alloc and --alloc --alloc-sample 100.
        #[arg(long)]
        with_alloc: bool,
        /// Instead of the churn fixture, a loop of page faults (64 MiB
        /// mapped, every page written, unmapped; ITERATIONS rounds): the
        /// cost per page fault of each memory mode.
        #[arg(long)]
        faults: bool,
    },
    /// ns per malloc(64)+free pair, untraced, with the agent attached, in
    /// alloc mode (all, sampled, size-filtered) and bpftrace. Root.
    Alloc {
        /// Runs per configuration (interleaved); the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// malloc+free pairs per run.
        #[arg(long, default_value_t = 300_000)]
        calls: u64,
    },
    /// The demo pipeline at its highest rate traced for `--minutes` by one
    /// agent (spans included): exact counts (span lines == summary spans ==
    /// the fixture's calls, per stage; 0 drops), a flat agent RSS after the
    /// first minute, its peak, and the slowdown against the untraced demo
    /// run before and after. Root.
    Soak {
        /// How long to trace (at least 2).
        #[arg(long, default_value_t = 5)]
        minutes: u64,
        /// The largest agent RSS slope after the first minute that counts
        /// as flat, in MB/min.
        #[arg(long, default_value_t = 0.25)]
        max_slope: f64,
        /// Seconds between RSS samples.
        #[arg(long, default_value_t = 5)]
        sample_secs: u64,
        /// Seconds of each untraced baseline run (before and after).
        #[arg(long, default_value_t = 30)]
        baseline_secs: u64,
    },
    /// The profiler: agent + BPF CPU at 99 and 999 Hz on the demo pipeline,
    /// and accuracy on the known-split fixture (70/30, 1.5 ms sleep). Root.
    Profile {
        /// Seconds per cost run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Attach and detach time of N uprobes through uprobe-multi links, the
    /// perf-event fallback and bpftrace (5,000-function fixture). Root.
    /// The perf-event path takes ~85 ms per probe to detach here: the
    /// default sizes take ~15 minutes, most of it in perf-event detaches.
    Attach {
        /// Numbers of probes (entry + return on N/2 functions), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
        sizes: Vec<usize>,
        /// Runs per size and tracer; the median is reported.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Only sizes up to this many probes for the perf-event path and
        /// bpftrace (their detach is ~85 ms per probe here).
        #[arg(long, default_value_t = 5000)]
        perf_max: usize,
        /// Skip bpftrace.
        #[arg(long)]
        no_bpftrace: bool,
    },
    /// Seconds from a latency step to the alert firing, beyond the rule's
    /// `for` duration (goal <= 2 s), and to resolving. Root.
    Alert {
        /// Latency steps injected (one agent run).
        #[arg(long, default_value_t = 5)]
        steps: usize,
    },
    /// Agent RSS over a steady load on 50 and 500 stages, with records
    /// and with --no-spans (goal <= 40 MB at 50 stages). Root.
    Footprint {
        /// Stage counts (1..500), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "50,500")]
        stages: Vec<usize>,
        /// Agent modes, comma-separated: records (the default mode, spans
        /// to /dev/null), no-spans.
        #[arg(long, value_delimiter = ',', default_value = "records,no-spans")]
        modes: Vec<String>,
        /// Minutes per run.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Calls per second in all, spread round-robin over the stages.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
    },
    /// Python stages: ns per Python call (stage and non-stage) untraced and
    /// traced, and the fixture pipeline's slowdown per mode. Root.
    Python {
        /// Runs per configuration (interleaved); the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Calls per run of each function in pycalls.py.
        #[arg(long, default_value_t = 200_000)]
        calls: u64,
        /// Frames of the fixture pipeline per run.
        #[arg(long, default_value_t = 300)]
        frames: u64,
        /// Untraced length of the windowed-mode runs, seconds (several
        /// periods of the 30 s default).
        #[arg(long, default_value_t = 60)]
        window_seconds: u64,
        /// Only the windowed-mode runs (part 3).
        #[arg(long)]
        windows_only: bool,
    },
}

pub fn run(what: Bench) -> Result<i32> {
    match what {
        Bench::Overhead { runs, calls } => overhead::overhead(runs.max(1), calls),
        Bench::Emulation { runs } => emulation::emulation(runs.max(1)),
        Bench::Agent { runs, frames } => agent::agent(runs.max(1), frames),
        Bench::Memory {
            runs,
            iterations,
            with_alloc,
            faults,
        } => {
            let n = iterations.unwrap_or(if faults { 10 } else { 2000 });
            memory::memory(runs.max(1), n.max(1), with_alloc, faults)
        }
        Bench::Alloc { runs, calls } => memory::alloc(runs.max(1), calls.max(1)),
        Bench::Alert { steps } => alert::alert(steps.max(1)),
        Bench::Soak {
            minutes,
            sample_secs,
            baseline_secs,
            max_slope,
        } => soak::soak(
            minutes.max(2),
            sample_secs.max(1),
            baseline_secs.max(1),
            max_slope,
        ),
        Bench::Profile { seconds } => profile::profile(seconds.max(2)),
        Bench::Attach {
            sizes,
            runs,
            perf_max,
            no_bpftrace,
        } => attach::attach(&sizes, runs.max(1), perf_max, !no_bpftrace),
        Bench::Footprint {
            stages,
            modes,
            minutes,
            rate,
        } => footprint::footprint(&stages, &modes, minutes, rate.max(1)),
        Bench::Python {
            runs,
            calls,
            frames,
            window_seconds,
            windows_only,
        } => python::python(
            runs.max(1),
            calls.max(1),
            frames.max(1),
            window_seconds.max(1),
            windows_only,
        ),
    }
}

/// A run cannot take longer than this.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Clock ticks per second of /proc/PID/stat times (USER_HZ, 100 on Linux).
const USER_HZ: u64 = 100;

/// CPU time (user + system) of this process's waited-for children, ns,
/// from /proc/self/stat (cutime, cstime; USER_HZ ticks).
pub(crate) fn children_cpu_ns() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after "pid (comm)": state is field 3, cutime 16, cstime 17.
    let rest = stat.rsplit_once(')').context("bad /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("bad /proc/self/stat")
    };
    let ticks = tick(13)? + tick(14)?;
    Ok((ticks * (1_000_000_000 / USER_HZ)) as f64)
}

/// The number after `"key":` in a flat JSON line.
pub(crate) fn json_number(line: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let start = line.find(&pat)? + pat.len();
    let num: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+'))
        .collect();
    num.parse().ok()
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Smallest and largest of `v` (infinities when empty).
pub(crate) fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// Nanoseconds with one decimal below 100, none above.
pub(crate) fn fmt_ns(ns: f64) -> String {
    if ns >= 100.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.1}")
    }
}

/// Compiles xtask/bench/`name`.c with `gcc -O2` into `out`.
pub(crate) fn build_c_fixture(name: &str, out: &Path) -> Result<()> {
    build_c_fixture_with(name, out, &[])
}

/// Compiles xtask/bench/`name`.c with `gcc -O2` and `flags` into `out`.
pub(crate) fn build_c_fixture_with(name: &str, out: &Path, flags: &[&str]) -> Result<()> {
    let src = root_dir()
        .join("xtask")
        .join("bench")
        .join(format!("{name}.c"));
    let ok = status(
        Command::new("gcc")
            .args(["-O2", "-Wall", "-Wextra"])
            .args(flags)
            .arg("-o")
            .arg(out)
            .arg(&src),
    )?;
    if !ok.success() {
        bail!("gcc failed on {}", src.display());
    }
    Ok(())
}

/// Whether `bpftrace` runs; says so on stderr when not.
pub(crate) fn have_bpftrace() -> bool {
    let ok = Command::new("bpftrace")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("bench: bpftrace not found: its configurations are skipped");
    }
    ok
}

/// What a finished run printed, and the CPU of its process tree.
pub(crate) struct Captured {
    pub stdout: String,
    pub stderr: String,
    /// CPU (user + system) of the whole process tree, ns.
    pub tree_cpu_ns: f64,
}

impl Captured {
    /// The last lines of stderr, on one line (for error messages).
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr)
    }
}

fn tail(s: &str) -> String {
    s.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
}

/// Runs `cmd` to completion (at most RUN_TIMEOUT) with stdin closed and
/// stdout / stderr in files under `work`; fails when it does not exit 0.
pub(crate) fn run_captured(cmd: &mut Command, work: &Path) -> Result<Captured> {
    let stdout_path = work.join("run.stdout");
    let stderr_path = work.join("run.stderr");
    cmd.stdin(Stdio::null())
        .stdout(File::create(&stdout_path).context("creating run.stdout")?)
        .stderr(File::create(&stderr_path).context("creating run.stderr")?);
    let cpu_before = children_cpu_ns()?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let deadline = Instant::now() + RUN_TIMEOUT;
    let exit = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {RUN_TIMEOUT:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let tree_cpu_ns = children_cpu_ns()? - cpu_before;
    let out = Captured {
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        tree_cpu_ns,
    };
    if !exit.success() {
        bail!("{cmd:?} failed ({exit}): {}", out.stderr_tail());
    }
    Ok(out)
}
