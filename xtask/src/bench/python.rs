//! `cargo xtask bench python`: what Python stages cost the traced process.
//!
//! 1. ns per Python call (xtask/bench/pycalls.py): an empty stage function
//!    and an empty non-stage function, untraced, traced always, and with
//!    the kernel's own uprobe trace events on the same eval-loop sites (no
//!    BPF program: the floor any uprobe-based tracer pays there). bpftrace
//!    cannot be the reference: 0.17 as packaged (no libbfd) refuses a probe
//!    inside a function, and the sites are inside the eval loop; bcc's
//!    `ucalls` needs USDT `function__entry` (3.11 fires it only under a
//!    trace function; 3.12+ lack it) and bcc needs kernel headers.
//! 2. The fixture pipeline's slowdown (tests/fixtures/python/pipeline.py,
//!    --broker none): wall time of its frame loop (its own report) traced
//!    always, over the untraced run, runs interleaved, per interpreter.
//! 3. The windowed modes on one interpreter, with runs long enough to hold
//!    several periods (`--window-seconds`, untraced length).
use std::{path::Path, path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};

use super::{fmt_ns, json_number, median, run_captured};
use crate::root_dir;

fn agent() -> PathBuf {
    root_dir().join("target/release/adeline-trace")
}

/// The venv python of the fixture for a pyenv version, else the
/// interpreter itself.
fn interpreters() -> Vec<(String, PathBuf, PathBuf)> {
    let home = std::env::var("HOME").unwrap_or_default();
    let venvs = std::env::var("ADELINE_PY_VENVS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(&home).join(".local/share/adeline-trace/python"));
    let mut out = Vec::new();
    for (label, key, exe) in [
        (
            "3.11",
            "pyenv-3.11.7",
            format!("{home}/.pyenv/versions/3.11.7/bin/python3.11"),
        ),
        (
            "3.12",
            "pyenv-3.12.1",
            format!("{home}/.pyenv/versions/3.12.1/bin/python3.12"),
        ),
        (
            "3.13",
            "pyenv-3.13.0",
            format!("{home}/.pyenv/versions/3.13.0/bin/python3.13"),
        ),
        (
            "3.10",
            "pyenv-3.10.13",
            format!("{home}/.pyenv/versions/3.10.13/bin/python3.10"),
        ),
        (
            "deb-3.11",
            "debian-3.11.2",
            "/usr/bin/python3.11".to_string(),
        ),
    ] {
        let exe = PathBuf::from(exe);
        if exe.exists() {
            out.push((label.to_string(), exe, venvs.join(key).join("bin/python")));
        }
    }
    out
}

fn traced(args: &[String], cmd: &[String]) -> Command {
    let mut c = Command::new(agent());
    c.args([
        "run",
        "--no-api",
        "--memory",
        "off",
        "--no-spans",
        "-o",
        "/dev/null",
    ])
    .args(args)
    .arg("--")
    .args(cmd);
    c
}

/// The eval-loop sites of an interpreter (`list --python --json`): the
/// file holding them and their file offsets.
fn sites(exe: &str) -> Result<(PathBuf, Vec<u64>)> {
    let out = Command::new(agent())
        .args(["list", "--python", exe, "--json"])
        .output()?;
    if !out.status.success() {
        bail!(
            "list --python {exe}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let offsets = v["sites"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            s["offset"]
                .as_str()
                .and_then(|o| u64::from_str_radix(o.trim_start_matches("0x"), 16).ok())
                .with_context(|| format!("site without a file offset: {s}"))
        })
        .collect::<Result<Vec<u64>>>()?;
    let file = PathBuf::from(v["interpreter"].as_str().unwrap_or_default());
    Ok((file, offsets))
}

/// A command line as a Command.
fn command(cmd: &[String]) -> Command {
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]);
    c
}

/// The fixture pipeline's command for `py` and its report file.
fn pipeline(py: &str, frames: u64, report: &Path) -> Vec<String> {
    let pipeline = root_dir().join("tests/fixtures/python/pipeline.py");
    [
        py,
        &pipeline.display().to_string(),
        "--frames",
        &frames.to_string(),
        "--broker",
        "none",
        "--report",
        &report.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// `--stage` arguments for the fixture's six stages.
fn pipeline_stages(py: &str) -> Vec<String> {
    [
        "frame=pipeline.py:process_frame",
        "pre=pipeline.py:preprocess_frame",
        "infer=pipeline.py:StandardInferenceHandler.run_inference",
        "post=pipeline.py:postprocess",
        "track=pipeline.py:Tracker.update",
        "publish=pipeline.py:publish_results",
    ]
    .iter()
    .flat_map(|s| {
        let (n, p) = s.split_once('=').unwrap_or_default();
        ["--stage".to_string(), format!("{n}=python:{py}:{p}")]
    })
    .collect()
}

/// Runs `c` and returns the pipeline's frame-loop wall and CPU time
/// (the whole process, traps included) from its report, ns.
fn frame_loop_ns(c: &mut Command, report: &Path, work: &Path) -> Result<(f64, f64)> {
    run_captured(c, work)?;
    let text = std::fs::read_to_string(report)?.replace([' ', '\n'], "");
    let get =
        |key| json_number(&text, key).with_context(|| format!("no {key} in the pipeline's report"));
    Ok((get("elapsed_ns")?, get("cpu_ns")?))
}

/// Runs each mode `runs` times, interleaved; the pipeline's frame-loop
/// (wall, CPU) times per mode. A mode is None (untraced) or a
/// `--python-window` value.
fn pipeline_modes(
    py: &str,
    frames: u64,
    modes: &[Option<&str>],
    runs: usize,
    work: &Path,
) -> Result<Vec<Vec<(f64, f64)>>> {
    let report = work.join("report.json");
    let cmd = pipeline(py, frames, &report);
    let mut times: Vec<Vec<(f64, f64)>> = vec![Vec::new(); modes.len()];
    for _ in 0..runs {
        for (i, window) in modes.iter().enumerate() {
            let mut c = match window {
                None => command(&cmd),
                Some(w) => {
                    let mut a = pipeline_stages(py);
                    a.extend(["--python-window".to_string(), w.to_string()]);
                    traced(&a, &cmd)
                }
            };
            times[i].push(frame_loop_ns(&mut c, &report, work)?);
        }
    }
    Ok(times)
}

/// Table cells: median wall time and its ratio to the first mode's, and
/// the same ratio of CPU time.
fn cells(times: &[Vec<(f64, f64)>]) -> String {
    let med = |t: &Vec<(f64, f64)>, cpu: bool| {
        median(t.iter().map(|x| if cpu { x.1 } else { x.0 }).collect())
    };
    let (wall, cpu) = (med(&times[0], false), med(&times[0], true));
    times
        .iter()
        .map(|t| {
            let w = med(t, false);
            format!(
                "{:.2} s ({:.3}x), CPU {:.3}x",
                w / 1e9,
                w / wall,
                med(t, true) / cpu
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Part 1: ns per Python call, per interpreter and mode.
fn calls_table(tracefs: &Path, runs: usize, calls: u64, pycalls: &Path, work: &Path) -> Result<()> {
    println!("## ns per Python call (pycalls.py, {calls} calls, median of {runs})");
    println!("| interpreter | mode | stage call | non-stage call | stage - untraced | non-stage - untraced |");
    println!("|---|---|---|---|---|---|");
    for (label, exe, _) in interpreters() {
        let exe_s = exe.display().to_string();
        let cmd = vec![
            exe_s.clone(),
            pycalls.display().to_string(),
            calls.to_string(),
        ];
        let stage = [
            "--stage",
            &format!("s=python:{exe_s}:pycalls.py:bench_stage"),
            "--python-window",
            "always",
        ]
        .map(String::from)
        .to_vec();
        let (file, offsets) = sites(&exe_s)?;
        let probes: Vec<(&str, u64)> = offsets.iter().map(|&o| ("p", o)).collect();
        let modes = [
            "untraced",
            "adeline-trace always",
            "uprobe trace events, same sites (reference)",
        ];
        let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); modes.len()];
        for _ in 0..runs {
            for (i, mode) in modes.iter().enumerate() {
                let events = match i {
                    2 => Some(super::tracefs::Events::new(tracefs, &file, &probes)?),
                    _ => None,
                };
                let mut c = match i {
                    1 => traced(&stage, &cmd),
                    _ => command(&cmd),
                };
                let out = run_captured(&mut c, work)?;
                if let Some(events) = events {
                    // An entry and an exit per call of the two functions, at least.
                    let hits: u64 = events.hits()?.iter().sum();
                    if hits < 4 * calls {
                        bail!("{label}: the reference events hit {hits} times, fewer than 4 x {calls}");
                    }
                }
                let line = out
                    .stdout
                    .lines()
                    .find(|l| l.contains("stage_ns"))
                    .with_context(|| format!("pycalls.py printed no result ({mode})"))?;
                let line = line.replace(' ', "");
                let loop_ns = json_number(&line, "loop_ns").unwrap_or(0.0);
                results[i].push((
                    json_number(&line, "stage_ns").unwrap_or(f64::NAN) - loop_ns,
                    json_number(&line, "other_ns").unwrap_or(f64::NAN) - loop_ns,
                ));
            }
        }
        let med = |v: &Vec<(f64, f64)>| {
            (
                median(v.iter().map(|x| x.0).collect()),
                median(v.iter().map(|x| x.1).collect()),
            )
        };
        let base = med(&results[0]);
        for (mode, v) in modes.iter().zip(&results) {
            let (s, o) = med(v);
            println!(
                "| {label} | {mode} | {} | {} | {} | {} |",
                fmt_ns(s),
                fmt_ns(o),
                fmt_ns(s - base.0),
                fmt_ns(o - base.1)
            );
        }
    }
    println!();
    Ok(())
}

pub fn python(
    runs: usize,
    calls: u64,
    frames: u64,
    window_seconds: u64,
    windows_only: bool,
) -> Result<i32> {
    if !crate::status(Command::new("cargo").args(["build", "--release", "-p", "adeline-trace"]))?
        .success()
    {
        bail!("building the agent failed");
    }
    let work = root_dir().join("target/bench-python");
    std::fs::create_dir_all(&work)?;
    let pycalls = root_dir().join("xtask/bench/pycalls.py");
    let tracefs = super::tracefs::root()?;
    if !windows_only {
        calls_table(&tracefs, runs, calls, &pycalls, &work)?;
    }
    if !windows_only {
        println!("## Fixture slowdown, always on (pipeline.py --frames {frames} --broker none, median of {runs})");
        println!("| interpreter | untraced | always |");
        println!("|---|---|---|");
    }
    let mut windowed_py = None;
    for (label, _, venv) in interpreters() {
        if !venv.exists() {
            eprintln!(
                "bench: no venv for {label} ({}): cargo xtask setup",
                venv.display()
            );
            continue;
        }
        let py = venv.display().to_string();
        // --windows-only: one untraced run, to size the long runs.
        let (modes, n): (&[Option<&str>], usize) = match windows_only {
            true => (&[None], 1),
            false => (&[None, Some("always")], runs),
        };
        let times = pipeline_modes(&py, frames, modes, n, &work)?;
        if !windows_only {
            println!("| {label} | {} |", cells(&times));
        }
        if windowed_py.is_none() {
            windowed_py = Some((label, py, median(times[0].iter().map(|x| x.0).collect())));
        }
    }
    let Some((label, py, untraced_ns)) = windowed_py else {
        bail!("no fixture venv: cargo xtask setup");
    };
    // Long enough for several periods of the slowest window mode.
    let long_frames = ((frames as f64) * (window_seconds as f64 * 1e9) / untraced_ns).ceil() as u64;
    let modes = [None, Some("1s/10s"), Some("1s/30s")];
    println!();
    println!(
        "## Windowed modes, {label} (pipeline.py --frames {long_frames}: ~{window_seconds} s untraced, median of {runs})"
    );
    println!("| untraced | window 1s/10s | window 1s/30s (default) |");
    println!("|---|---|---|");
    let times = pipeline_modes(&py, long_frames, &modes, runs, &work)?;
    println!("| {} |", cells(&times));
    Ok(0)
}
