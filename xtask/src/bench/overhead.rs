//! `cargo xtask bench overhead`: nanoseconds per traced call of a tiny
//! function, measured by the traced process itself, in one run:
//!
//! - five functions from xtask/bench/overhead.c (built with `gcc -O2
//!   -fcf-protection=full`): `bench_push` (first instruction `push %rbp`,
//!   emulated by the kernel at a uprobe) and `bench_mov` (`mov`,
//!   single-stepped), both assembly; and three CET-built C functions that
//!   start with `endbr64` (single-stepped) followed by `push %rbx`, `test;
//!   jcc`, or `mov; push %rbx`, where adeline-trace's probe placement moves
//!   its probes onto the emulated instruction;
//! - three configurations each: untraced; adeline-trace timing; bpftrace
//!   timing the same function into a histogram (uprobe + uretprobe with a
//!   start map; bpftrace always probes the function's first byte);
//! - every configuration run `--runs` times, interleaved round-robin so
//!   machine noise spreads over all of them; medians are reported, with
//!   ratios against bpftrace and the untraced run measured in the same run.
//!   The goal is adeline / bpftrace <= 0.35 where placement put the probes
//!   on an emulated instruction past the entry, <= 1.05 elsewhere.
//!
//! The adeline-trace runs write their spans to a real file, read afterwards
//! to check that every call produced a span, that nothing was dropped, and
//! where the probes sat (the `start` event's placement). Tracer CPU (agent
//! or bpftrace) is the CPU of the tracer's process tree minus the traced
//! process's own CPU (which includes its traps and the BPF programs run on
//! its behalf); it includes the tracer's start-up. Needs root.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::{
    build_c_fixture_with, fmt_ns, have_bpftrace, json_number, median, min_max, run_captured,
};
use crate::{build_for, target_dir};

/// The probed functions and their default call counts.
const FUNCTIONS: [(&str, u64); 5] = [
    ("bench_push", 300_000),
    ("bench_mov", 100_000),
    ("cet_push", 100_000),
    ("cet_test_je", 100_000),
    ("cet_mov_push", 100_000),
];

/// adeline / bpftrace goals: where placement found an emulated instruction
/// past the entry, and elsewhere.
const GOAL_PLACED: f64 = 0.35;
const GOAL_ELSEWHERE: f64 = 1.05;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    Untraced,
    Adeline,
    /// adeline-trace with `--exit-probes ret`: exit-instruction probes
    /// (exception-safe) instead of the uretprobe trampoline.
    AdelineRet,
    /// adeline-trace with in-kernel aggregation (`--no-spans
    /// --aggregate-above 0`): no record per call.
    AdelineAgg,
    Bpftrace,
}

impl Config {
    const ALL: [Config; 5] = [
        Config::Untraced,
        Config::Adeline,
        Config::AdelineRet,
        Config::AdelineAgg,
        Config::Bpftrace,
    ];

    fn label(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::Adeline => "adeline-trace",
            Config::AdelineRet => "adeline-trace --exit-probes ret",
            Config::AdelineAgg => "adeline-trace --no-spans (in-kernel aggregation)",
            Config::Bpftrace => "bpftrace (hist)",
        }
    }

    /// Runs the agent and checks its spans.
    fn is_adeline(self) -> bool {
        matches!(
            self,
            Config::Adeline | Config::AdelineRet | Config::AdelineAgg
        )
    }

    fn uses_bpftrace(self) -> bool {
        self == Config::Bpftrace
    }
}

/// One run's result.
struct Sample {
    ns_per_call: f64,
    /// The traced process's own CPU time (user + system: its traps and the
    /// BPF programs run on its behalf) per call, ns.
    cpu_per_call: f64,
    /// Tracer CPU (process tree minus the traced process), ns.
    tracer_cpu_ns: Option<f64>,
    /// adeline-trace only: span lines and the summary's drops.
    spans: Option<u64>,
    drops: Option<u64>,
    /// adeline-trace only: where its probes sat (offset, instruction,
    /// emulated), from the start event.
    placement: Option<(u64, String, bool)>,
}

struct Paths {
    agent: PathBuf,
    fixture: PathBuf,
    work: PathBuf,
}

pub(crate) fn overhead(runs: usize, calls: Option<u64>) -> Result<i32> {
    let release = match build_for("bench overhead", true, false)? {
        Ok(dir) => dir,
        Err(code) => return Ok(code),
    };
    let work = target_dir().join("bench");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let paths = Paths {
        agent: release.join("adeline-trace"),
        fixture: work.join("overhead"),
        work,
    };
    build_c_fixture_with("overhead", &paths.fixture, &["-fcf-protection=full"])?;
    let first_insns = FUNCTIONS
        .iter()
        .map(|(f, _)| first_instructions(&paths.fixture, f))
        .collect::<Result<Vec<_>>>()?;

    let have_bpftrace = have_bpftrace();
    let configs: Vec<Config> = Config::ALL
        .into_iter()
        .filter(|c| have_bpftrace || !c.uses_bpftrace())
        .collect();
    let n_calls: Vec<u64> = FUNCTIONS
        .iter()
        .map(|&(_, d)| calls.unwrap_or(d).max(1))
        .collect();

    // samples[function][config] = one Sample per run.
    let mut samples: Vec<Vec<Vec<Sample>>> = FUNCTIONS
        .iter()
        .map(|_| configs.iter().map(|_| Vec::new()).collect())
        .collect();
    let total = runs * FUNCTIONS.len() * configs.len();
    let mut done = 0;
    for r in 0..runs {
        for (fi, &(func, _)) in FUNCTIONS.iter().enumerate() {
            // Rotate the order each round so no configuration always runs
            // right after the same other one.
            for k in 0..configs.len() {
                let ci = (k + r) % configs.len();
                let config = configs[ci];
                done += 1;
                let s = run_one(&paths, config, func, n_calls[fi])
                    .with_context(|| format!("{func}, {}, run {}", config.label(), r + 1))?;
                eprintln!(
                    "bench [{done}/{total}] {func:<10} {:<28} {:>10.1} ns/call",
                    config.label(),
                    s.ns_per_call
                );
                samples[fi][ci].push(s);
            }
        }
    }

    let report = report(
        runs,
        &configs,
        &first_insns,
        &n_calls,
        &samples,
        &paths.fixture,
    );
    println!("{report}");

    // Every adeline-trace run must have produced one span per call, no drops.
    let complete = configs
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_adeline())
        .all(|(ai, _)| {
            samples.iter().zip(&n_calls).all(|(per_cfg, &n)| {
                per_cfg[ai]
                    .iter()
                    .all(|s| s.spans == Some(n) && s.drops == Some(0))
            })
        });
    if !complete {
        eprintln!("bench: an adeline-trace run lost spans (see the spans/drops column)");
        return Ok(1);
    }
    Ok(0)
}

/// The first two instructions of `func` in `bin`, from `objdump -d`.
fn first_instructions(bin: &Path, func: &str) -> Result<String> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(bin)
        .output()
        .context("cannot run objdump")?;
    if !out.status.success() {
        bail!("objdump -d {} failed", bin.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let header = format!("<{func}>:");
    let mut lines = text
        .lines()
        .skip_while(|l| !l.trim_end().ends_with(&header));
    lines.next().with_context(|| format!("{func} not found"))?;
    let insns: Vec<String> = lines
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(_, i)| {
            let i = i
                .split('#')
                .next()
                .unwrap_or(i)
                .split('<')
                .next()
                .unwrap_or(i);
            i.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .take(2)
        .collect();
    if insns.is_empty() {
        bail!("no instruction after {func}");
    }
    Ok(insns.join("; "))
}

/// Runs the fixture once under `config`.
fn run_one(paths: &Paths, config: Config, func: &str, calls: u64) -> Result<Sample> {
    let fixture = paths.fixture.display().to_string();
    let spans_file = paths.work.join(format!("adeline-{func}.jsonl"));
    let stage = format!("{func}={fixture}:{func}");
    let mut cmd = match config {
        Config::Untraced => {
            let mut c = Command::new(&paths.fixture);
            c.arg(func).arg(calls.to_string());
            c
        }
        Config::Adeline | Config::AdelineRet | Config::AdelineAgg => {
            let mut c = Command::new(&paths.agent);
            // No API: the default port may be taken by another agent.
            c.args(["run", "--no-api"]);
            if config == Config::AdelineRet {
                c.args(["--exit-probes", "ret"]);
            }
            if config == Config::AdelineAgg {
                c.args(["--no-spans", "--aggregate-above", "0"]);
            }
            c.args(["--stage", &stage, "-o"]);
            let _ = std::fs::remove_file(&spans_file);
            c.arg(&spans_file);
            c.arg("--")
                .arg(&paths.fixture)
                .arg(func)
                .arg(calls.to_string());
            c
        }
        Config::Bpftrace => {
            let probe = format!("{fixture}:{func}");
            let script = format!(
                "uprobe:{probe} {{ @s[tid] = nsecs; }} \
                 uretprobe:{probe} /@s[tid]/ {{ @h = hist(nsecs - @s[tid]); delete(@s[tid]); }}"
            );
            let mut c = Command::new("bpftrace");
            c.arg("-e")
                .arg(script)
                .arg("-c")
                .arg(format!("{fixture} {func} {calls}"));
            c
        }
    };

    let run = run_captured(&mut cmd, &paths.work)?;
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("{\"fn\""))
        .with_context(|| format!("no result line from the fixture: {}", run.stderr_tail()))?;
    let ns_per_call = json_number(line, "ns_per_call").context("no ns_per_call")?;
    let fixture_cpu_ns = json_number(line, "cpu_ns").context("no cpu_ns")?;
    let tracer_cpu_ns =
        (config != Config::Untraced).then(|| (run.tree_cpu_ns - fixture_cpu_ns).max(0.0));

    let (mut spans, mut drops, mut placement) = (None, None, None);
    if config.is_adeline() {
        let text = std::fs::read_to_string(&spans_file)
            .with_context(|| format!("reading {}", spans_file.display()))?;
        let summary = text
            .lines()
            .rev()
            .find(|l| l.contains("\"type\":\"summary\""));
        // Aggregated: no span lines; the summary's count is the calls seen.
        spans = match config {
            Config::AdelineAgg => summary
                .and_then(|l| l.split("\"stages\":").nth(1))
                .and_then(|l| json_number(l, "count"))
                .map(|c| c as u64),
            _ => Some(
                text.lines()
                    .filter(|l| l.contains("\"type\":\"span\""))
                    .count() as u64,
            ),
        };
        drops = text
            .lines()
            .rev()
            .find(|l| l.contains("\"type\":\"summary\""))
            .and_then(|l| json_number(l, "drops"))
            .map(|d| d as u64);
        placement = text
            .lines()
            .find(|l| l.contains("\"type\":\"start\""))
            .and_then(start_placement);
        let _ = std::fs::remove_file(&spans_file);
    }
    Ok(Sample {
        ns_per_call,
        cpu_per_call: fixture_cpu_ns / calls as f64,
        tracer_cpu_ns,
        spans,
        drops,
        placement,
    })
}

/// (offset, instruction, emulated) of the first probe in a start event.
fn start_placement(line: &str) -> Option<(u64, String, bool)> {
    let p = &line[line.find("\"placement\":")?..];
    let offset = json_number(p, "offset")? as u64;
    let insn = p
        .split("\"insn\":\"")
        .nth(1)?
        .split('"')
        .next()?
        .to_string();
    let emulated = p.contains("\"emulated\":true");
    Some((offset, insn, emulated))
}

/// Where adeline-trace's probes sat for function `fi` (the first run's
/// start event), as `+4 push rbx`, and whether that is an emulated
/// instruction past the entry.
fn placed(samples: &[Vec<Sample>], ai: Option<usize>) -> (String, bool) {
    match ai.and_then(|ai| samples[ai].iter().find_map(|s| s.placement.clone())) {
        Some((offset, insn, emulated)) => (
            format!(
                "+{offset} {insn}{}",
                if emulated { "" } else { " (stepped)" }
            ),
            offset > 0 && emulated,
        ),
        None => ("?".to_string(), false),
    }
}

/// Markdown tables of medians and ratios.
fn report(
    runs: usize,
    configs: &[Config],
    first_insns: &[String],
    n_calls: &[u64],
    samples: &[Vec<Vec<Sample>>],
    fixture: &Path,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nOverhead per traced call: median of {runs} interleaved runs, ns per call as \
         measured by the traced process ({})\n",
        fixture.display()
    );
    let _ = writeln!(
        out,
        "| function | first instructions | adeline-trace probes at | calls/run | configuration | ns/call (median) | min - max | CPU ns/call (median) | min - max | tracer CPU, ms/run | spans / drops |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|");
    let idx = |c: Config| configs.iter().position(|&x| x == c);
    let mut medians = vec![vec![f64::NAN; configs.len()]; FUNCTIONS.len()];
    let mut cpu_medians = medians.clone();
    for (fi, &(func, _)) in FUNCTIONS.iter().enumerate() {
        let (site, _) = placed(&samples[fi], idx(Config::Adeline));
        for (ci, &config) in configs.iter().enumerate() {
            let ss = &samples[fi][ci];
            let ns: Vec<f64> = ss.iter().map(|s| s.ns_per_call).collect();
            let (lo, hi) = min_max(&ns);
            let m = median(ns);
            medians[fi][ci] = m;
            let per_call: Vec<f64> = ss.iter().map(|s| s.cpu_per_call).collect();
            let (cpu_lo, cpu_hi) = min_max(&per_call);
            let cpu_m = median(per_call);
            cpu_medians[fi][ci] = cpu_m;
            let cpu = if config == Config::Untraced {
                "-".to_string()
            } else {
                let c = median(ss.iter().filter_map(|s| s.tracer_cpu_ns).collect());
                format!("{:.0}", c / 1e6)
            };
            let check = if config.is_adeline() {
                let spans_ok = ss.iter().all(|s| s.spans == Some(n_calls[fi]));
                let max_drops = ss.iter().filter_map(|s| s.drops).max();
                format!(
                    "{} / {}",
                    if spans_ok {
                        "all = calls".to_string()
                    } else {
                        format!(
                            "MISSING (min {})",
                            ss.iter().filter_map(|s| s.spans).min().unwrap_or(0)
                        )
                    },
                    max_drops.map_or("?".to_string(), |d| d.to_string())
                )
            } else {
                "-".to_string()
            };
            let _ = writeln!(
                out,
                "| `{func}` | `{}` | `{site}` | {} | {} | {} | {} - {} | {} | {} - {} | {cpu} | {check} |",
                first_insns[fi],
                n_calls[fi],
                config.label(),
                fmt_ns(m),
                fmt_ns(lo),
                fmt_ns(hi),
                fmt_ns(cpu_m),
                fmt_ns(cpu_lo),
                fmt_ns(cpu_hi)
            );
        }
    }

    let _ = writeln!(
        out,
        "\nCommands (BIN = the fixture, FN = the function, N = calls/run):\n\n\
         - untraced: `BIN FN N`\n\
         - adeline-trace: `adeline-trace run --no-api --stage FN=BIN:FN -o target/bench/adeline-FN.jsonl -- BIN FN N`\n\
         - in-kernel aggregation: the same with `--no-spans --aggregate-above 0` (the \
         check column then compares the summary's count with the calls)\n\
         - bpftrace (hist): `bpftrace -e 'uprobe:BIN:FN {{ @s[tid] = nsecs; }} \
         uretprobe:BIN:FN /@s[tid]/ {{ @h = hist(nsecs - @s[tid]); delete(@s[tid]); }}' -c 'BIN FN N'`"
    );

    let ratio = |m: &[Vec<f64>], fi: usize, a: Config, b: Config| match (idx(a), idx(b)) {
        (Some(a), Some(b)) => Some(m[fi][a] / m[fi][b]),
        _ => None,
    };
    let show = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
    // The verdict uses the traced process's CPU per call: the same traps
    // and programs as wall time, without the time it waits for a CPU on a
    // shared machine. Wall-time ratios are shown beside it.
    let _ = writeln!(
        out,
        "\n| function | adeline-trace probes at | adeline / bpftrace (CPU) | goal | verdict | adeline / bpftrace (wall) | traced - untraced, ns (CPU): adeline | bpftrace |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---|---:|---:|---:|");
    for (fi, &(func, _)) in FUNCTIONS.iter().enumerate() {
        let (site, moved) = placed(&samples[fi], idx(Config::Adeline));
        let goal = if moved { GOAL_PLACED } else { GOAL_ELSEWHERE };
        let r = ratio(&cpu_medians, fi, Config::Adeline, Config::Bpftrace);
        let verdict = match r {
            Some(r) if r <= goal => "PASS",
            Some(_) => "FAIL",
            None => "-",
        };
        let extra = |c: Config| match (idx(c), idx(Config::Untraced)) {
            (Some(c), Some(u)) => fmt_ns(cpu_medians[fi][c] - cpu_medians[fi][u]),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "| `{func}` | `{site}` | {} | {goal} | {verdict} | {} | {} | {} |",
            show(r),
            show(ratio(&medians, fi, Config::Adeline, Config::Bpftrace)),
            extra(Config::Adeline),
            extra(Config::Bpftrace),
        );
    }
    // In-kernel aggregation against spans and bpftrace: ns per call (the
    // traced process's CPU) and tracer CPU per call (start-up included).
    let _ = writeln!(
        out,
        "\n| function | traced - untraced, ns (CPU): spans | aggregation | bpftrace | tracer CPU per call, ns: spans | aggregation | bpftrace |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for (fi, &(func, _)) in FUNCTIONS.iter().enumerate() {
        let extra = |c: Config| match (idx(c), idx(Config::Untraced)) {
            (Some(c), Some(u)) => fmt_ns(cpu_medians[fi][c] - cpu_medians[fi][u]),
            _ => "-".to_string(),
        };
        let tracer = |c: Config| match idx(c) {
            Some(ci) => {
                let ns = median(
                    samples[fi][ci]
                        .iter()
                        .filter_map(|s| s.tracer_cpu_ns)
                        .collect(),
                );
                fmt_ns(ns / n_calls[fi] as f64)
            }
            None => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "| `{func}` | {} | {} | {} | {} | {} | {} |",
            extra(Config::Adeline),
            extra(Config::AdelineAgg),
            extra(Config::Bpftrace),
            tracer(Config::Adeline),
            tracer(Config::AdelineAgg),
            tracer(Config::Bpftrace),
        );
    }
    out
}
