//! Memory benchmarks (issue 4), both on xtask/bench/alloc_heavy.c:
//!
//! - `cargo xtask bench memory`: time per iteration of allocation-heavy work
//!   (small blocks, a heap block that grows and trims brk, an mmapped 1 MiB
//!   block whose pages are all touched) untraced and with the agent attached
//!   to the process with a stage on `iteration()`: in the default mode
//!   (memory tracepoints filtered by tgid in the kernel, procfs sampler; the
//!   goal is <= 1.03x untraced), and for reference with `--alloc` and
//!   `--alloc --alloc-sample 100`.
//! - `cargo xtask bench alloc`: ns per malloc(64)+free pair, untraced, with
//!   the agent in the default mode, with `--alloc` (every call kept, 1 in
//!   100, or filtered at entry by `--alloc-min-bytes 128`) and a memleak-like
//!   bpftrace script.
//!
//! Every configuration runs `--runs` times, interleaved round-robin (order
//! rotated each round); medians are reported with ratios against the
//! untraced runs of the same invocation. The agent writes its stream
//! (`--no-spans`: stats and the summary only) to a file read afterwards: the
//! stage's count in the summary must equal the calls the fixture made, and
//! the agent must not have warned that memory mappings are not traced.
//! Needs root.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::{build_c_fixture, fmt_ns, have_bpftrace, json_number, median, min_max, run_captured};
use crate::{build_for, target_dir};

/// Page faults in one `fault_round()` (64 MiB of 4 KiB pages).
const FAULTS_PER_ROUND: u64 = 16_384;

/// The default mode's goal: at most this slowdown against untraced.
const SLOWDOWN_GOAL: f64 = 1.03;

/// The agent's warning when the memory tracepoints are not attached.
const MEMORY_UNTRACED: &str = "memory mappings are not traced";

/// The agent's warning when rss_stat falls back to the classic tracepoint.
const RSS_FALLBACK: &str = "tp_btf/rss_stat not used";

/// Asks the agent for rss_stat as a BTF raw tracepoint (docs/memory.md).
const BTF_ENV: (&str, &str) = ("ADELINE_TRACE_RSS_HOOK", "tp_btf");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    Untraced,
    NoMemory,
    Maps,
    Default,
    Btf,
    Alloc,
    AllocSample,
    AllocMinBytes,
    Bpftrace,
}

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::NoMemory => "agent --memory off (stage probe only)",
            Config::Maps => "agent --memory maps (syscalls, no rss_stat)",
            Config::Default => "agent, default mode (kmem:rss_stat)",
            Config::Btf => "agent, default mode on tp_btf/rss_stat",
            Config::Alloc => "agent --alloc",
            Config::AllocSample => "agent --alloc --alloc-sample 100",
            Config::AllocMinBytes => "agent --alloc --alloc-min-bytes 128",
            Config::Bpftrace => "bpftrace (memleak-like)",
        }
    }

    /// The agent's options beyond the common ones (None: not the agent).
    fn agent_args(self) -> Option<&'static [&'static str]> {
        match self {
            Config::Untraced | Config::Bpftrace => None,
            Config::NoMemory => Some(&["--memory", "off"]),
            Config::Maps => Some(&["--memory", "maps"]),
            Config::Default | Config::Btf => Some(&[]),
            Config::Alloc => Some(&["--alloc"]),
            Config::AllocSample => Some(&["--alloc", "--alloc-sample", "100"]),
            Config::AllocMinBytes => Some(&["--alloc", "--alloc-min-bytes", "128"]),
        }
    }
}

/// What the fixture does in a run of N.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// N calls of `iteration()`.
    Churn,
    /// One call of `malloc_free_loop(N)`.
    Pairs,
    /// N calls of `fault_round()` (16384 page faults each).
    Faults,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Churn => "churn",
            Mode::Pairs => "pairs",
            Mode::Faults => "faults",
        }
    }

    /// The function the agent's stage is attached to.
    fn stage_fn(self) -> &'static str {
        match self {
            Mode::Churn => "iteration",
            Mode::Pairs => "malloc_free_loop",
            Mode::Faults => "fault_round",
        }
    }

    /// The fixture's result key: ns per iteration or per pair.
    fn result_key(self) -> &'static str {
        match self {
            Mode::Churn => "ns_per_iter",
            Mode::Pairs => "ns_per_pair",
            Mode::Faults => "ns_per_fault",
        }
    }

    /// The same in CPU time of the fixture (user + system).
    fn cpu_key(self) -> &'static str {
        match self {
            Mode::Churn => "cpu_ns_per_iter",
            Mode::Pairs => "cpu_ns_per_pair",
            Mode::Faults => "cpu_ns_per_fault",
        }
    }

    /// Calls of the stage function in a run of `n`.
    fn stage_calls(self, n: u64) -> u64 {
        match self {
            Mode::Churn | Mode::Faults => n,
            Mode::Pairs => 1,
        }
    }
}

/// The memleak-like bpftrace script: sizes at malloc entry, address ->
/// size at its return, forgotten at free (only for the fixture's pid).
const BPFTRACE_SCRIPT: &str = "uprobe:libc:malloc /pid == cpid/ { @s[tid] = arg0; } \
     uretprobe:libc:malloc /@s[tid]/ { @a[retval] = @s[tid]; delete(@s[tid]); } \
     uprobe:libc:free /pid == cpid/ { delete(@a[arg0]); }";

/// One run's result.
struct Sample {
    /// ns per iteration or per malloc+free pair, measured by the fixture.
    ns: f64,
    /// The same in the fixture's CPU time (user + system).
    cpu_ns: f64,
    /// The fixture's minor page faults.
    minflt: f64,
    /// Tracer CPU (process tree minus the fixture), ns.
    tracer_cpu_ns: Option<f64>,
    /// Agent runs: the stage's count, records read and drops in the summary.
    stage_count: Option<u64>,
    events: Option<u64>,
    drops: Option<u64>,
}

struct Paths {
    agent: PathBuf,
    fixture: PathBuf,
    work: PathBuf,
}

/// Builds the agent and the fixture; Err(code) when the build failed.
fn prepare(task: &str) -> Result<std::result::Result<Paths, i32>> {
    let release = match build_for(task, true, false)? {
        Ok(dir) => dir,
        Err(code) => return Ok(Err(code)),
    };
    let work = target_dir().join("bench").join("memory");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let paths = Paths {
        agent: release.join("adeline-trace"),
        fixture: work.join("alloc_heavy"),
        work,
    };
    build_c_fixture("alloc_heavy", &paths.fixture)?;
    Ok(Ok(paths))
}

/// Every configuration `runs` times, interleaved round-robin with the order
/// rotated each round: samples[config] = one Sample per run.
fn measure(
    paths: &Paths,
    configs: &[Config],
    mode: Mode,
    n: u64,
    runs: usize,
) -> Result<Vec<Vec<Sample>>> {
    let mut samples: Vec<Vec<Sample>> = configs.iter().map(|_| Vec::new()).collect();
    let total = runs * configs.len();
    for r in 0..runs {
        for k in 0..configs.len() {
            let ci = (k + r) % configs.len();
            let config = configs[ci];
            let s = run_one(paths, config, mode, n)
                .with_context(|| format!("{}, run {}", config.label(), r + 1))?;
            eprintln!(
                "bench {} [{}/{total}] {:<36} {:>12} ns/{}",
                mode.arg(),
                r * configs.len() + k + 1,
                config.label(),
                fmt_ns(s.ns),
                match mode {
                    Mode::Churn => "iter",
                    Mode::Pairs => "pair",
                    Mode::Faults => "fault",
                }
            );
            samples[ci].push(s);
        }
    }
    Ok(samples)
}

/// Runs the fixture once under `config`.
fn run_one(paths: &Paths, config: Config, mode: Mode, n: u64) -> Result<Sample> {
    let fixture = paths.fixture.display().to_string();
    let stream = paths.work.join("agent.jsonl");
    let mut cmd = match config {
        Config::Untraced => {
            let mut c = Command::new(&paths.fixture);
            c.arg(mode.arg()).arg(n.to_string());
            c
        }
        Config::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.arg("-e")
                .arg(BPFTRACE_SCRIPT)
                .arg("-c")
                .arg(format!("{fixture} {} {n}", mode.arg()));
            c
        }
        _ => {
            let stage = format!("work={fixture}:{}", mode.stage_fn());
            let _ = std::fs::remove_file(&stream);
            let mut c = Command::new(&paths.agent);
            if config == Config::Btf {
                c.env(BTF_ENV.0, BTF_ENV.1);
            }
            c.args(["run", "--stage", &stage, "--no-spans", "--no-api", "-o"])
                .arg(&stream)
                .args(config.agent_args().unwrap_or_default())
                .arg("--")
                .arg(&paths.fixture)
                .arg(mode.arg())
                .arg(n.to_string());
            c
        }
    };
    let run = run_captured(&mut cmd, &paths.work)?;
    let prefix = format!("{{\"mode\":\"{}\"", mode.arg());
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .with_context(|| format!("no result line from the fixture: {}", run.stderr_tail()))?;
    let ns = json_number(line, mode.result_key()).context("no ns per unit")?;
    let cpu_ns = json_number(line, mode.cpu_key()).context("no CPU ns per unit")?;
    let fixture_cpu_ns = json_number(line, "cpu_ns").context("no cpu_ns")?;
    let minflt = json_number(line, "minflt").context("no minflt")?;
    let mut sample = Sample {
        ns,
        cpu_ns,
        minflt,
        tracer_cpu_ns: (config != Config::Untraced)
            .then(|| (run.tree_cpu_ns - fixture_cpu_ns).max(0.0)),
        stage_count: None,
        events: None,
        drops: None,
    };
    if config.agent_args().is_some() {
        if let Some(w) = run.stderr.lines().find(|l| l.contains(MEMORY_UNTRACED)) {
            bail!("the agent did not attach the memory tracepoints: {w}");
        }
        if let Some(w) = run.stderr.lines().find(|l| l.contains(RSS_FALLBACK)) {
            bail!("the agent fell back to kmem:rss_stat: {w}");
        }
        let text = std::fs::read_to_string(&stream)
            .with_context(|| format!("reading {}", stream.display()))?;
        let summary = text
            .lines()
            .rev()
            .find(|l| l.contains("\"type\":\"summary\""))
            .with_context(|| format!("no summary line in {}", stream.display()))?;
        // One stage: the first "count" is its count.
        let get = |key: &str| json_number(summary, key).map(|v| v as u64);
        sample.stage_count = get("count");
        sample.events = get("events");
        sample.drops = get("drops");
        let _ = std::fs::remove_file(&stream);
    }
    Ok(sample)
}

/// rss_stat programs loaded now (between runs: none of ours), from
/// `bpftool prog show` (None without bpftool).
fn foreign_rss_programs() -> Option<usize> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().filter(|l| l.contains("name mem_rss")).count())
}

/// The command line of `config` for the report (BIN = fixture, N = count).
fn command_line(config: Config, mode: Mode) -> String {
    let fixture = format!("BIN {} N", mode.arg());
    match config {
        Config::Untraced => fixture,
        Config::Bpftrace => format!("bpftrace -e '{BPFTRACE_SCRIPT}' -c '{fixture}'"),
        _ => {
            let extra = config.agent_args().unwrap_or_default().join(" ");
            let env = match config {
                Config::Btf => format!("{}={} ", BTF_ENV.0, BTF_ENV.1),
                _ => String::new(),
            };
            format!(
                "{env}adeline-trace run --stage work=BIN:{} --no-spans --no-api -o target/bench/memory/agent.jsonl{}{extra} -- {fixture}",
                mode.stage_fn(),
                if extra.is_empty() { "" } else { " " }
            )
        }
    }
}

/// Whether every agent run counted exactly the stage calls the fixture made.
fn counts_ok(configs: &[Config], samples: &[Vec<Sample>], expected: u64) -> bool {
    configs
        .iter()
        .zip(samples)
        .filter(|(c, _)| c.agent_args().is_some())
        .all(|(_, ss)| ss.iter().all(|s| s.stage_count == Some(expected)))
}

/// "count = N / max drops", or what went wrong.
fn check_column(ss: &[Sample], expected: u64) -> String {
    if ss.iter().all(|s| s.stage_count.is_none()) {
        return "-".to_string();
    }
    let counts = if ss.iter().all(|s| s.stage_count == Some(expected)) {
        "all = calls".to_string()
    } else {
        let got: Vec<String> = ss
            .iter()
            .map(|s| s.stage_count.map_or("?".to_string(), |c| c.to_string()))
            .collect();
        format!("WRONG ({})", got.join(", "))
    };
    let drops = ss
        .iter()
        .filter_map(|s| s.drops)
        .max()
        .map_or("?".to_string(), |d| d.to_string());
    format!("{counts} / {drops}")
}

/// Median tracer CPU in ms per run, or "-".
fn tracer_ms(ss: &[Sample]) -> String {
    let cpu: Vec<f64> = ss.iter().filter_map(|s| s.tracer_cpu_ns).collect();
    if cpu.is_empty() {
        "-".to_string()
    } else {
        format!("{:.0}", median(cpu) / 1e6)
    }
}

pub(crate) fn memory(runs: usize, iterations: u64, with_alloc: bool, faults: bool) -> Result<i32> {
    let mode = if faults { Mode::Faults } else { Mode::Churn };
    // Faults are reported in ns per page fault; iterations in us.
    let (unit, scale, units_per_run) = if faults {
        ("fault", 1.0, iterations * FAULTS_PER_ROUND)
    } else {
        ("iteration", 1e3, iterations)
    };
    let per = if faults { "ns" } else { "us" };
    let paths = match prepare("bench memory")? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let mut configs = vec![
        Config::Untraced,
        Config::NoMemory,
        Config::Maps,
        Config::Default,
        Config::Btf,
    ];
    if with_alloc {
        configs.extend([Config::Alloc, Config::AllocSample]);
    }
    let foreign_before = foreign_rss_programs();
    let samples = measure(&paths, &configs, mode, iterations, runs)?;
    let foreign_after = foreign_rss_programs();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nMemory mode: median of {runs} interleaved runs of {iterations} {} calls, time per \
         {unit} as measured by the traced process ({})\n",
        mode.stage_fn(),
        paths.fixture.display()
    );
    let _ = writeln!(
        out,
        "| configuration | {per}/{unit} (median) | min - max | / untraced | CPU {per}/{unit} (median) | min - max | CPU / untraced | minor faults/{unit} | agent records/{unit} | tracer CPU, ms/run | stage count / drops |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    let medians: Vec<f64> = samples
        .iter()
        .map(|ss| median(ss.iter().map(|s| s.ns).collect()))
        .collect();
    let cpu_medians: Vec<f64> = samples
        .iter()
        .map(|ss| median(ss.iter().map(|s| s.cpu_ns).collect()))
        .collect();
    for (ci, &config) in configs.iter().enumerate() {
        let ss = &samples[ci];
        let (lo, hi) = min_max(&ss.iter().map(|s| s.ns).collect::<Vec<_>>());
        let minflt = median(ss.iter().map(|s| s.minflt).collect()) / units_per_run as f64;
        let records: Vec<f64> = ss
            .iter()
            .filter_map(|s| s.events)
            .map(|e| e as f64 / units_per_run as f64)
            .collect();
        let records = if records.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}", median(records))
        };
        let (cpu_lo, cpu_hi) = min_max(&ss.iter().map(|s| s.cpu_ns).collect::<Vec<_>>());
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} - {:.1} | {:.3} | {:.1} | {:.1} - {:.1} | {:.3} | {minflt:.2} | {records} | {} | {} |",
            config.label(),
            medians[ci] / scale,
            lo / scale,
            hi / scale,
            medians[ci] / medians[0],
            cpu_medians[ci] / scale,
            cpu_lo / scale,
            cpu_hi / scale,
            cpu_medians[ci] / cpu_medians[0],
            tracer_ms(ss),
            check_column(ss, mode.stage_calls(iterations))
        );
    }
    let _ = writeln!(out, "\nCommands (BIN = the fixture, N = calls/run):\n");
    for &config in &configs {
        let _ = writeln!(
            out,
            "- {}: `{}`",
            config.label(),
            command_line(config, mode)
        );
    }
    // Indexes: 0 untraced, 1 --memory off, 2 --memory maps, 3 default,
    // 4 default on the BTF raw tracepoint.
    // Besides the medians, the median of each round's own ratio (runs of
    // one round are seconds apart: slow drifts of this VM cancel out).
    let verdict = |r: f64| if r <= SLOWDOWN_GOAL { "PASS" } else { "FAIL" };
    for (i, what) in [
        (3, "Default mode (full, kmem:rss_stat)"),
        (4, "Default mode on tp_btf/rss_stat"),
        (2, "--memory maps"),
        (1, "--memory off"),
    ] {
        let cpu = cpu_medians[i] / cpu_medians[0];
        let paired = median(
            samples[i]
                .iter()
                .zip(&samples[0])
                .map(|(a, b)| a.cpu_ns / b.cpu_ns)
                .collect(),
        );
        let _ = writeln!(
            out,
            "{what} / untraced, CPU time: medians {cpu:.3}, paired per round {paired:.3} (goal <= {SLOWDOWN_GOAL:.2}): {}",
            verdict(paired)
        );
    }
    // What the memory tracepoints add over the agent with none: the same
    // launch, the same stage probe.
    let over_off = |i: usize| {
        median(
            samples[i]
                .iter()
                .zip(&samples[1])
                .map(|(a, b)| a.cpu_ns - b.cpu_ns)
                .collect(),
        )
    };
    let _ = writeln!(
        out,
        "CPU time added over --memory off, paired per round: --memory maps {:+.1} {per}/{unit}, default (kmem:rss_stat) {:+.1} {per}/{unit}, default on tp_btf/rss_stat {:+.1} {per}/{unit}",
        over_off(2) / scale,
        over_off(3) / scale,
        over_off(4) / scale
    );
    // Another agent's rss_stat program runs on every page fault of the
    // machine, untraced runs included (the classic tracepoint builds its
    // record for every process): the ratios then understate the cost.
    let _ = writeln!(
        out,
        "Other processes' rss_stat programs attached (bpftool): {} before, {} after",
        foreign_before.map_or("unknown".into(), |n| n.to_string()),
        foreign_after.map_or("unknown".into(), |n| n.to_string())
    );
    println!("{out}");
    if !counts_ok(&configs, &samples, mode.stage_calls(iterations)) {
        eprintln!("bench: an agent run did not count every iteration (see the stage count column)");
        return Ok(1);
    }
    Ok(0)
}

/// The C library `bin` loads, from `ldd`.
fn libc_of(bin: &Path) -> Result<PathBuf> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("libc.so"))
        .find_map(|l| l.split("=>").nth(1)?.split_whitespace().next())
        .map(PathBuf::from)
        .with_context(|| format!("no libc in ldd {}", bin.display()))
}

/// The first instruction of the dynamic symbol `func` in `lib`, from
/// `nm -D` (its address) and `objdump -d` (aliases make the label unusable).
fn first_instruction_at_symbol(lib: &Path, func: &str) -> Result<String> {
    let nm = Command::new("nm")
        .arg("-D")
        .arg(lib)
        .output()
        .context("cannot run nm")?;
    let addr = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, kind, name) = (f.next()?, f.next()?, f.next()?);
            let bare = name.split('@').next()?;
            (kind == "T" && bare == func && name.contains("@@")).then(|| addr.to_string())
        })
        .with_context(|| format!("{func} not in nm -D {}", lib.display()))?;
    let start = u64::from_str_radix(&addr, 16).context("bad address from nm")?;
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(format!("--start-address={start:#x}"))
        .arg(format!("--stop-address={:#x}", start + 16))
        .arg(lib)
        .output()
        .context("cannot run objdump")?;
    let prefix = format!("{start:x}:");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let insn = l.trim_start().strip_prefix(&prefix)?;
            Some(insn.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .with_context(|| format!("no instruction at {func} in {}", lib.display()))
}

pub(crate) fn alloc(runs: usize, calls: u64) -> Result<i32> {
    let paths = match prepare("bench alloc")? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    // The kernel emulates a few first instructions (push) at a uprobe and
    // single-steps the others: one more trap per call.
    let libc = libc_of(&paths.fixture)?;
    let first_insns = ["malloc", "free"]
        .iter()
        .map(|f| {
            Ok(format!(
                "`{f}`: `{}`",
                first_instruction_at_symbol(&libc, f)?
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut configs = vec![
        Config::Untraced,
        Config::Default,
        Config::Alloc,
        Config::AllocSample,
        Config::AllocMinBytes,
    ];
    if have_bpftrace() {
        configs.push(Config::Bpftrace);
    }
    let samples = measure(&paths, &configs, Mode::Pairs, calls, runs)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nCost per malloc: median of {runs} interleaved runs of {calls} malloc(64) + free pairs, \
         as measured by the traced process ({}); {} first instructions {}\n",
        paths.fixture.display(),
        libc.display(),
        first_insns.join(", ")
    );
    let _ = writeln!(
        out,
        "| configuration | ns/pair (median) | min - max | added ns/pair vs untraced | / untraced | tracer CPU, ms/run | stage count / drops |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    let medians: Vec<f64> = samples
        .iter()
        .map(|ss| median(ss.iter().map(|s| s.ns).collect()))
        .collect();
    for (ci, &config) in configs.iter().enumerate() {
        let ss = &samples[ci];
        let (lo, hi) = min_max(&ss.iter().map(|s| s.ns).collect::<Vec<_>>());
        let added = if ci == 0 {
            "-".to_string()
        } else {
            fmt_ns(medians[ci] - medians[0])
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} - {} | {added} | {:.2} | {} | {} |",
            config.label(),
            fmt_ns(medians[ci]),
            fmt_ns(lo),
            fmt_ns(hi),
            medians[ci] / medians[0],
            tracer_ms(ss),
            check_column(ss, Mode::Pairs.stage_calls(calls))
        );
    }
    let _ = writeln!(out, "\nCommands (BIN = the fixture, N = pairs/run):\n");
    for &config in &configs {
        let _ = writeln!(
            out,
            "- {}: `{}`",
            config.label(),
            command_line(config, Mode::Pairs)
        );
    }
    println!("{out}");
    if !counts_ok(&configs, &samples, Mode::Pairs.stage_calls(calls)) {
        eprintln!("bench: an agent run did not count its one stage call");
        return Ok(1);
    }
    Ok(0)
}
