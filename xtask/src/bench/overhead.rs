//! `cargo xtask bench overhead`: nanoseconds per traced call of an empty
//! function, measured by the traced process itself, in one run:
//!
//! - two functions from xtask/bench/overhead.c: `bench_push` (first
//!   instruction `push %rbp`, emulated by the kernel at a uprobe) and
//!   `bench_mov` (first instruction `mov`, single-stepped: one more trap);
//! - five configurations each: untraced; the floor (`adeline-trace run
//!   --probe-floor`: empty uprobe+uretprobe programs at the same sites);
//!   adeline-trace timing; bpftrace timing the same function into a
//!   histogram; bpftrace with empty uprobe+uretprobe;
//! - every configuration run `--runs` times, interleaved round-robin so
//!   machine noise spreads over all of them; medians are reported, with
//!   ratios against the floor and bpftrace measured in the same run.
//!
//! The adeline-trace runs write their spans to a real file, read afterwards
//! to check that every call produced a span and that nothing was dropped.
//! Tracer CPU (agent or bpftrace) is the CPU of the tracer's process tree
//! minus the traced process's own CPU (which includes its traps and the BPF
//! programs run on its behalf); it includes the tracer's start-up (loading
//! BPF, reading the ELF), so compare it with the floor's. Needs root.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::{build_c_fixture, fmt_ns, have_bpftrace, json_number, median, min_max, run_captured};
use crate::{build_for, target_dir};

/// The probed functions and their default call counts.
const FUNCTIONS: [(&str, u64); 2] = [("bench_push", 500_000), ("bench_mov", 150_000)];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    Untraced,
    Floor,
    Adeline,
    /// adeline-trace with `--exit-probes ret`: exit-instruction probes
    /// (exception-safe) instead of the uretprobe trampoline.
    AdelineRet,
    Bpftrace,
    BpftraceEmpty,
}

impl Config {
    const ALL: [Config; 6] = [
        Config::Untraced,
        Config::Floor,
        Config::Adeline,
        Config::AdelineRet,
        Config::Bpftrace,
        Config::BpftraceEmpty,
    ];

    fn label(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::Floor => "floor (empty progs, adeline)",
            Config::Adeline => "adeline-trace",
            Config::AdelineRet => "adeline-trace --exit-probes ret",
            Config::Bpftrace => "bpftrace (hist)",
            Config::BpftraceEmpty => "bpftrace empty",
        }
    }

    /// Runs the agent and checks its spans.
    fn is_adeline(self) -> bool {
        matches!(self, Config::Adeline | Config::AdelineRet)
    }

    fn uses_bpftrace(self) -> bool {
        matches!(self, Config::Bpftrace | Config::BpftraceEmpty)
    }
}

/// One run's result.
struct Sample {
    ns_per_call: f64,
    /// Tracer CPU (process tree minus the traced process), ns.
    tracer_cpu_ns: Option<f64>,
    /// adeline-trace only: span lines and the summary's drops.
    spans: Option<u64>,
    drops: Option<u64>,
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
    build_c_fixture("overhead", &paths.fixture)?;
    let first_insns = FUNCTIONS
        .iter()
        .map(|(f, _)| first_instruction(&paths.fixture, f))
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

/// The first instruction of `func` in `bin`, from `objdump -d`.
fn first_instruction(bin: &Path, func: &str) -> Result<String> {
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
    let insn = lines
        .find(|l| !l.trim().is_empty())
        .and_then(|l| l.split_once(':'))
        .map(|(_, i)| i.split_whitespace().collect::<Vec<_>>().join(" "))
        .with_context(|| format!("no instruction after {func}"))?;
    Ok(insn)
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
        Config::Floor | Config::Adeline | Config::AdelineRet => {
            let mut c = Command::new(&paths.agent);
            c.arg("run");
            if config == Config::Floor {
                c.arg("--probe-floor");
            }
            if config == Config::AdelineRet {
                c.args(["--exit-probes", "ret"]);
            }
            c.args(["--stage", &stage, "-o"]);
            if config == Config::Floor {
                c.arg("/dev/null");
            } else {
                let _ = std::fs::remove_file(&spans_file);
                c.arg(&spans_file);
            }
            c.arg("--")
                .arg(&paths.fixture)
                .arg(func)
                .arg(calls.to_string());
            c
        }
        Config::Bpftrace | Config::BpftraceEmpty => {
            let probe = format!("{fixture}:{func}");
            let script = if config == Config::Bpftrace {
                format!(
                    "uprobe:{probe} {{ @s[tid] = nsecs; }} \
                     uretprobe:{probe} /@s[tid]/ {{ @h = hist(nsecs - @s[tid]); delete(@s[tid]); }}"
                )
            } else {
                format!("uprobe:{probe} {{}} uretprobe:{probe} {{}}")
            };
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

    let (mut spans, mut drops) = (None, None);
    if config.is_adeline() {
        let text = std::fs::read_to_string(&spans_file)
            .with_context(|| format!("reading {}", spans_file.display()))?;
        spans = Some(
            text.lines()
                .filter(|l| l.contains("\"type\":\"span\""))
                .count() as u64,
        );
        drops = text
            .lines()
            .rev()
            .find(|l| l.contains("\"type\":\"summary\""))
            .and_then(|l| json_number(l, "drops"))
            .map(|d| d as u64);
        let _ = std::fs::remove_file(&spans_file);
    }
    Ok(Sample {
        ns_per_call,
        tracer_cpu_ns,
        spans,
        drops,
    })
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
        "| function | first instruction | calls/run | configuration | ns/call (median) | min - max | tracer CPU, ms/run | spans / drops |"
    );
    let _ = writeln!(out, "|---|---|---:|---|---:|---:|---:|---|");
    let mut medians = vec![vec![f64::NAN; configs.len()]; FUNCTIONS.len()];
    let mut cpu_medians = medians.clone();
    for (fi, &(func, _)) in FUNCTIONS.iter().enumerate() {
        for (ci, &config) in configs.iter().enumerate() {
            let ss = &samples[fi][ci];
            let ns: Vec<f64> = ss.iter().map(|s| s.ns_per_call).collect();
            let (lo, hi) = min_max(&ns);
            let m = median(ns);
            medians[fi][ci] = m;
            let cpu = if config == Config::Untraced {
                "-".to_string()
            } else {
                let c = median(ss.iter().filter_map(|s| s.tracer_cpu_ns).collect());
                cpu_medians[fi][ci] = c;
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
                "| `{func}` | `{}` | {} | {} | {} | {} - {} | {cpu} | {check} |",
                first_insns[fi],
                n_calls[fi],
                config.label(),
                fmt_ns(m),
                fmt_ns(lo),
                fmt_ns(hi)
            );
        }
    }

    let _ = writeln!(
        out,
        "\nCommands (BIN = the fixture, FN = the function, N = calls/run):\n\n\
         - untraced: `BIN FN N`\n\
         - floor: `adeline-trace run --probe-floor --stage FN=BIN:FN -o /dev/null -- BIN FN N`\n\
         - adeline-trace: `adeline-trace run --stage FN=BIN:FN -o target/bench/adeline-FN.jsonl -- BIN FN N`\n\
         - bpftrace (hist): `bpftrace -e 'uprobe:BIN:FN {{ @s[tid] = nsecs; }} \
         uretprobe:BIN:FN /@s[tid]/ {{ @h = hist(nsecs - @s[tid]); delete(@s[tid]); }}' -c 'BIN FN N'`\n\
         - bpftrace empty: `bpftrace -e 'uprobe:BIN:FN {{}} uretprobe:BIN:FN {{}}' -c 'BIN FN N'`"
    );

    let idx = |c: Config| configs.iter().position(|&x| x == c);
    let ratio = |fi: usize, a: Config, b: Config| match (idx(a), idx(b)) {
        (Some(a), Some(b)) => format!("{:.2}", medians[fi][a] / medians[fi][b]),
        _ => "-".to_string(),
    };
    // The agent's own CPU per span: adeline minus floor (same start-up).
    let agent_per_span = |fi: usize| match (idx(Config::Adeline), idx(Config::Floor)) {
        (Some(a), Some(f)) => format!(
            "{:.0}",
            (cpu_medians[fi][a] - cpu_medians[fi][f]) / n_calls[fi] as f64
        ),
        _ => "-".to_string(),
    };
    let _ = writeln!(
        out,
        "\n| function | adeline / floor (goal <= 1.10) | adeline / bpftrace | floor / untraced | bpftrace / bpftrace empty | agent CPU per span, ns (adeline - floor) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for (fi, &(func, _)) in FUNCTIONS.iter().enumerate() {
        let _ = writeln!(
            out,
            "| `{func}` | {} | {} | {} | {} | {} |",
            ratio(fi, Config::Adeline, Config::Floor),
            ratio(fi, Config::Adeline, Config::Bpftrace),
            ratio(fi, Config::Floor, Config::Untraced),
            ratio(fi, Config::Bpftrace, Config::BpftraceEmpty),
            agent_per_span(fi)
        );
    }
    out
}
