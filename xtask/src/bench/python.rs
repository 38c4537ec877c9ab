//! `cargo xtask bench python`: what Python stages cost the traced process.
//!
//! 1. ns per Python call (xtask/bench/pycalls.py): an empty stage function
//!    and an empty non-stage function, untraced, traced always, and with
//!    bpftrace counting the same entry sites (its floor: the traps alone).
//! 2. The fixture pipeline's slowdown (tests/fixtures/python/pipeline.py,
//!    --broker none): wall time of its frame loop (its own report) traced
//!    always and windowed, over the untraced run, runs interleaved.
use std::{path::PathBuf, process::Command};

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

pub fn python(runs: usize, calls: u64, frames: u64) -> Result<i32> {
    if !crate::status(Command::new("cargo").args(["build", "--release", "-p", "adeline-trace"]))?
        .success()
    {
        bail!("building the agent failed");
    }
    let work = root_dir().join("target/bench-python");
    std::fs::create_dir_all(&work)?;
    let pycalls = root_dir().join("xtask/bench/pycalls.py");
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
        let stage = vec![
            "--stage".to_string(),
            format!("s=python:{exe_s}:pycalls.py:bench_stage"),
        ];
        let mut results: Vec<(&str, Vec<(f64, f64)>)> =
            vec![("untraced", vec![]), ("always", vec![])];
        for _ in 0..runs {
            for (mode, v) in results.iter_mut() {
                let mut c = if *mode == "untraced" {
                    let mut c = Command::new(&cmd[0]);
                    c.args(&cmd[1..]);
                    c
                } else {
                    traced(&stage, &cmd)
                };
                let out = run_captured(&mut c, &work)?;
                let line = out
                    .stdout
                    .lines()
                    .find(|l| l.contains("stage_ns"))
                    .context("pycalls.py printed no result")?;
                let loop_ns = json_number(line, "loop_ns").unwrap_or(0.0);
                v.push((
                    json_number(line, "stage_ns").unwrap_or(f64::NAN) - loop_ns,
                    json_number(line, "other_ns").unwrap_or(f64::NAN) - loop_ns,
                ));
            }
        }
        let med = |v: &Vec<(f64, f64)>| {
            (
                median(v.iter().map(|x| x.0).collect()),
                median(v.iter().map(|x| x.1).collect()),
            )
        };
        let base = med(&results[0].1);
        for (mode, v) in &results {
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
    println!("## Fixture slowdown (pipeline.py --frames {frames} --broker none, median of {runs})");
    println!("| interpreter | untraced | always | window 1s/10s | window 200ms/10s |");
    println!("|---|---|---|---|---|");
    let pipeline = root_dir().join("tests/fixtures/python/pipeline.py");
    for (label, _, venv) in interpreters() {
        if !venv.exists() {
            eprintln!(
                "bench: no venv for {label} ({}): cargo xtask setup",
                venv.display()
            );
            continue;
        }
        let py = venv.display().to_string();
        let report = work.join("report.json");
        let cmd: Vec<String> = vec![
            py.clone(),
            pipeline.display().to_string(),
            "--frames".into(),
            frames.to_string(),
            "--broker".into(),
            "none".into(),
            "--report".into(),
            report.display().to_string(),
        ];
        let stages: Vec<String> = [
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
        .collect();
        let modes: [(&str, Option<&str>); 4] = [
            ("untraced", None),
            ("always", Some("always")),
            ("1s/10s", Some("1s/10s")),
            ("200ms/10s", Some("200ms/10s")),
        ];
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        for _ in 0..runs {
            for (i, (_, window)) in modes.iter().enumerate() {
                let mut c = match window {
                    None => {
                        let mut c = Command::new(&cmd[0]);
                        c.args(&cmd[1..]);
                        c
                    }
                    Some(w) => {
                        let mut a = stages.clone();
                        a.extend(["--python-window".to_string(), w.to_string()]);
                        traced(&a, &cmd)
                    }
                };
                run_captured(&mut c, &work)?;
                let text = std::fs::read_to_string(&report)?;
                let elapsed = json_number(&text.replace([' ', '\n'], ""), "elapsed_ns")
                    .context("no elapsed_ns in the pipeline's report")?;
                times[i].push(elapsed);
            }
        }
        let base = median(times[0].clone());
        let cells: Vec<String> = times
            .iter()
            .map(|t| {
                let m = median(t.clone());
                format!("{:.2} s ({:.3}x)", m / 1e9, m / base)
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    Ok(0)
}
