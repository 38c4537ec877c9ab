//! Benchmarks (`cargo xtask bench ...`): each prints ratios against a
//! baseline measured in the same run; results go to BENCHMARKS.md.

mod agent;
mod alert;
mod overhead;

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {
    /// ns per traced call of an empty function (push- and mov-first), for
    /// untraced, the empty-probe floor, adeline-trace and bpftrace. Root.
    Overhead {
        /// Runs per configuration (interleaved); the median is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Calls per run for every function (default: 500000 for bench_push,
        /// 150000 for bench_mov, about 0.5-1 s traced each).
        #[arg(long)]
        calls: Option<u64>,
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
    /// Seconds from a latency step to the alert firing, beyond the rule's
    /// `for` duration (goal <= 2 s), and to resolving. Root.
    Alert {
        /// Latency steps injected (one agent run).
        #[arg(long, default_value_t = 5)]
        steps: usize,
    },
}

pub fn run(what: Bench) -> Result<i32> {
    match what {
        Bench::Overhead { runs, calls } => overhead::overhead(runs.max(1), calls),
        Bench::Agent { runs, frames } => agent::agent(runs.max(1), frames),
        Bench::Alert { steps } => alert::alert(steps.max(1)),
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
