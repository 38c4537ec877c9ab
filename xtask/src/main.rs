//! Developer tasks for adeline-trace: `cargo xtask <command>` (alias in
//! .cargo/config.toml). No product logic lives here.
//!
//!   cargo xtask setup [--rebuild-bpf-linker]   toolchain, packages, tracefs, Python venvs
//!   cargo xtask test [-- TEST-ARGS...]        setup, build, run every test serially
//!   cargo xtask demo [--seconds S]            trace the demo pipeline live (root)
//!   cargo xtask bench overhead [--runs R]     ns per traced call vs untraced and bpftrace (root)
//!   cargo xtask bench agent [--runs R]        agent CPU per event at the highest rate (root)
//!   cargo xtask bench alert [--steps N]       alert detection delay after a latency step (root)
//!   cargo xtask bench soak [--minutes M]      the demo traced at its highest rate for M minutes (root)
//!   cargo xtask fuzz [--seconds N] [TARGET..] build the cargo-fuzz targets, run each N s
//!   cargo xtask bench attach [--sizes N,..]   attach/detach time of N uprobes: multi, perf, bpftrace (root)
//!   cargo xtask bench footprint [--minutes M] [--stages 50,500] [--modes records,no-spans]
//!                                             agent RSS with 50 and 500 stages, steady load (root)
//!   cargo xtask deb [--binary PATH]           the Debian package (service, config, man, completions)

mod bench;
mod deb;
mod demo;
mod fuzz;
// The Python fixtures' interpreter matrix, shared with the test harness.
#[path = "../../tests/src/python_env.rs"]
mod python_env;
mod setup;
mod test;

use std::path::PathBuf;
use std::process::{Command, ExitStatus};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "adeline-trace developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check and install what builds and tests need (idempotent, fast when
    /// all is present): rust-src, bpf-linker 0.13.0 against the toolchain's
    /// LLVM, Debian packages, tracefs, mosquitto, the Python fixtures' venvs.
    Setup {
        /// Rebuild bpf-linker even if the installed one works.
        #[arg(long)]
        rebuild_bpf_linker: bool,
    },
    /// setup, `cargo build --workspace`, then `cargo test --workspace
    /// --no-fail-fast -- --test-threads=1 TEST-ARGS...` (serial: the tests
    /// measure timing; every suite runs even after a failure),
    /// both excluding adeline-trace-ebpf (BPF target only).
    Test {
        /// Passed to the test binaries (a name filter, --nocapture, ...).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// setup, build, then trace the demo pipeline at 20 fps with the live
    /// per-stage view on stderr; events go to target/demo/events.jsonl.
    /// Needs root.
    Demo {
        /// How long to trace.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
    },
    /// setup, build the cargo-fuzz targets (fuzz/), then run each for
    /// `--seconds` (libFuzzer, on the stable toolchain with
    /// RUSTC_BOOTSTRAP=1); fails if any finds a crash, a hang or an
    /// out-of-memory. Targets: alert_rule, config, elf_symbols,
    /// usdt_notes, event_decode (default: all).
    Fuzz {
        /// How long to run each target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// An input that runs longer than this many seconds is a hang.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Benchmarks (release build); results go to BENCHMARKS.md. Needs root.
    Bench {
        #[command(subcommand)]
        what: bench::Bench,
    },
    /// Build the Debian package (release binary, systemd unit, default
    /// config, man pages, completions) into target/deb with dpkg-deb.
    Deb(deb::DebArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup { rebuild_bpf_linker } => setup::run(rebuild_bpf_linker).map(|()| 0),
        Cmd::Test { args } => test::run(&args),
        Cmd::Demo { seconds } => demo::run(seconds),
        Cmd::Fuzz {
            seconds,
            timeout,
            targets,
        } => fuzz::run(seconds.max(1), timeout.max(1), &targets),
        Cmd::Bench { what } => bench::run(what),
        Cmd::Deb(args) => deb::run(&args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The workspace root.
pub fn root_dir() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().expect("xtask/ has a parent").to_path_buf()
}

/// The cargo target directory: $CARGO_TARGET_DIR (relative to the root) or
/// `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root_dir().join(d),
        None => root_dir().join("target"),
    }
}

/// The cargo that runs us ($CARGO), in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root_dir());
    cmd
}

/// Runs `cmd` with inherited stdio.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))
}

/// Effective uid 0 (from /proc/self/status: no libc needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[path = "../../tests/fixtures/demo_stages.rs"]
mod demo_stages;
pub use demo_stages::DEMO_STAGES;

/// For a task that loads BPF: checks root, then builds the agent (and the
/// demo pipeline when `demo`) in the release or debug profile. Returns the
/// directory holding the binaries, or the exit code to end the task with
/// (after printing why).
pub fn build_for(
    task: &str,
    release: bool,
    demo: bool,
) -> Result<std::result::Result<PathBuf, i32>> {
    if !is_root() {
        eprintln!("{task} needs root: run it as root (sudo -E cargo xtask {task})");
        return Ok(Err(1));
    }
    let mut cmd = cargo();
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    cmd.args(["-p", "adeline-trace", "--bin", "adeline-trace"]);
    if demo {
        cmd.args(["-p", "adeline-trace-tests", "--bin", "demo-pipeline"]);
    }
    let built = status(&mut cmd)?;
    if !built.success() {
        return Ok(Err(built.code().unwrap_or(1)));
    }
    Ok(Ok(target_dir().join(if release {
        "release"
    } else {
        "debug"
    })))
}
