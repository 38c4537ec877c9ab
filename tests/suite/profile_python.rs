//! The profiler on CPython processes (`run --profile` with Python
//! stages), across the interpreter matrix: each sample's Python frames
//! (`qualname (file:line)`) in place of the eval loop, from each thread's
//! own thread state (the GIL holder's and the others'), tagged with the
//! Python stage they run in; a known 70/30 CPU split between two pure
//! Python functions (tests/fixtures/profile/split.py, which measures its
//! own thread CPU time: the truth compared with); and pipeline.py, whose
//! stages show their functions and the native code (onnxruntime, OpenCV,
//! numpy) under them.
use std::{path::PathBuf, time::Duration};

use adeline_trace_tests::*;
use serde_json::Value;

fn split_py() -> PathBuf {
    workspace_root().join("tests/fixtures/profile/split.py")
}

fn on_cpu(stack: &str) -> bool {
    !stack.ends_with(";[off-cpu]")
}

fn sum(lines: &[(String, u64)], pred: impl Fn(&str) -> bool) -> u64 {
    lines.iter().filter(|(s, _)| pred(s)).map(|(_, n)| n).sum()
}

/// Runs the agent on `python ARGS` with `--profile HZ` and the Python
/// stages `(name, pattern)`; the folded profile and the agent's output.
fn profile_python(
    env: &PyEnv,
    stages: &[(&str, &str)],
    hz: u32,
    args: &[String],
    timeout: Duration,
) -> (Vec<(String, u64)>, AgentOutput) {
    let dir = scratch_dir(&format!("profile-py-{}", env.label));
    let out = dir.join("profile.folded");
    let exe = env.exe.display().to_string();
    let mut a: Vec<String> = vec![
        "run".into(),
        "--no-api".into(),
        "--no-spans".into(),
        "--memory".into(),
        "off".into(),
        "--python-window".into(),
        "always".into(),
        "--profile".into(),
        hz.to_string(),
        "--profile-out".into(),
        out.display().to_string(),
    ];
    for (name, pattern) in stages {
        a.push("--stage".into());
        a.push(format!("{name}=python:{exe}:{pattern}"));
    }
    a.push("--".into());
    a.push(env.python.display().to_string());
    a.extend(args.iter().cloned());
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let output = Agent::run(&refs, timeout);
    assert!(
        output.status.success(),
        "{}: agent failed: {}",
        env.label,
        output.stderr
    );
    let text = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("{}: no profile at {out:?} ({e})", env.label));
    (parse_folded(&text), output)
}

#[test]
fn python_split_70_30_per_thread_frames_on_every_interpreter() {
    if !require_bpf() {
        return;
    }
    let mut failures = Vec::new();
    for env in python_matrix() {
        let report = scratch_dir(&format!("split-py-{}", env.label)).join("report.json");
        let args = vec![
            split_py().display().to_string(),
            "3".into(),
            report.display().to_string(),
        ];
        let (lines, out) = profile_python(
            &env,
            &[("work", "split.py:work"), ("napper", "split.py:napper")],
            499,
            &args,
            Duration::from_secs(90),
        );
        let truth: Value = serde_json::from_str(
            &std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("{report:?}: {e}")),
        )
        .unwrap();
        let (t_hot, t_cold) = (
            truth["cpu_ns"]["hot"].as_u64().unwrap() / 1000,
            truth["cpu_ns"]["cold"].as_u64().unwrap() / 1000,
        );
        let label = env.label;
        // The stage, then the Python callers root first, the function,
        // each at the line it is at: work() at its call of hot() / cold(),
        // which are in their loops (lines 31-33 / 42-44), not at their def.
        // (Interpreters built without frame pointers may put a
        // `[truncated]` between work() and them.)
        let in_loop = |s: &str, f: &str, first: u32| {
            s.contains("work (split.py:51);")
                && (first..first + 3).any(|l| s.contains(&format!(";{f} (split.py:{l})")))
        };
        let hot = sum(&lines, |s| {
            on_cpu(s) && s.starts_with("work;") && in_loop(s, "hot", 31)
        });
        let cold = sum(&lines, |s| {
            on_cpu(s) && s.starts_with("work;") && in_loop(s, "cold", 42)
        });
        let anywhere = sum(&lines, |s| {
            on_cpu(s) && (s.contains(";hot (split.py:") || s.contains(";cold (split.py:"))
        });
        if (hot + cold) as f64 <= 0.95 * anywhere as f64 {
            failures.push(format!(
                "{}: only {} of {anywhere} µs of hot/cold at their loops' lines:\n{}",
                env.label,
                hot + cold,
                lines
                    .iter()
                    .filter(|(s, _)| s.contains(";hot (") || s.contains(";cold ("))
                    .map(|(s, n)| format!("  {s} {n}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        let share = hot as f64 / (hot + cold).max(1) as f64;
        let truth_share = t_hot as f64 / (t_hot + t_cold) as f64;
        eprintln!(
            "{label}: hot {hot} µs, cold {cold} µs: {share:.3} (the fixture measured {t_hot} / {t_cold} µs: {truth_share:.3})"
        );
        let agent_lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.contains("profile"))
            .collect();
        if (share - truth_share).abs() > 0.05 {
            failures.push(format!(
                "{label}: hot share {share:.3}, the fixture measured {truth_share:.3} (± 0.05); agent: {agent_lines:?}"
            ));
        }
        // Nearly all of the functions' CPU time is in the profile (the
        // first samples, before the agent has read the interpreter, lack
        // their Python frames).
        let seen = (hot + cold) as f64 / (t_hot + t_cold) as f64;
        if !(0.6..1.3).contains(&seen) {
            failures.push(format!(
                "{label}: the profile has {} µs of hot+cold, the fixture measured {} µs",
                hot + cold,
                t_hot + t_cold
            ));
        }
        // The sleeping thread's own frames (it does not hold the GIL while
        // it sleeps): napper's sleep, off-CPU, in its stage.
        let slept = sum(&lines, |s| {
            !on_cpu(s)
                && s.starts_with("napper;")
                && s.contains("nap_loop (split.py:62);napper (split.py:56)")
                // time.sleep: select() on 3.10, clock_nanosleep() later.
                && (s.contains("nanosleep") || s.contains("select"))
        });
        if slept < 200_000 {
            failures.push(format!(
                "{label}: napper slept {slept} µs in its own frames (expected ~2 s):\n{}",
                lines
                    .iter()
                    .filter(|(s, _)| s.starts_with("napper;"))
                    .map(|(s, n)| format!("  {s} {n}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        // Never one thread's frames in the other's samples.
        let mixed: Vec<&String> = lines
            .iter()
            .map(|(s, _)| s)
            .filter(|s| {
                (s.contains("napper (split.py") && (s.contains("hot (") || s.contains("cold (")))
                    || (s.starts_with("work;") && s.contains("napper ("))
            })
            .collect();
        if !mixed.is_empty() {
            failures.push(format!("{label}: frames of both threads in {mixed:?}"));
        }
        if !out
            .stderr
            .contains(&format!("(CPython {}", &env.version[..4]))
        {
            failures.push(format!(
                "{label}: no 'Python frames of pid' line: {}",
                out.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn pipeline_stages_show_their_python_functions_and_native_code_under_them() {
    if !require_bpf() {
        return;
    }
    // One interpreter of each kind: pyenv's shared libpython, Debian's
    // static executable.
    let envs: Vec<PyEnv> = pipeline_matrix()
        .into_iter()
        .filter(|e| e.label == "3.12" || e.label == "deb-3.11")
        .collect();
    let mut failures = Vec::new();
    for env in envs {
        let args: Vec<String> = [
            python_fixture("pipeline.py").display().to_string(),
            "--frames".into(),
            "60".into(),
            "--broker".into(),
            "none".into(),
        ]
        .into();
        let (lines, _) = profile_python(
            &env,
            &[
                ("frame", "pipeline.py:process_frame"),
                ("preprocess", "pipeline.py:preprocess_frame"),
                (
                    "infer",
                    "pipeline.py:StandardInferenceHandler.run_inference",
                ),
                ("track", "pipeline.py:Tracker.update"),
            ],
            999,
            &args,
            Duration::from_secs(180),
        );
        let label = env.label;
        for (stage, frame) in [
            // The functions at any of their lines (the line each is at).
            ("frame", "process_frame (pipeline.py:"),
            ("preprocess", "preprocess_frame (pipeline.py:"),
            (
                "infer",
                "StandardInferenceHandler.run_inference (pipeline.py:",
            ),
            ("track", "Tracker.update (pipeline.py:"),
        ] {
            let tagged = sum(&lines, |s| s.starts_with(&format!("{stage};")));
            let with_frame = sum(&lines, |s| {
                s.starts_with(&format!("{stage};")) && s.contains(frame)
            });
            eprintln!("{label}: {stage}: {with_frame} of {tagged} µs under {frame}");
            if tagged == 0 || (with_frame as f64) < 0.8 * tagged as f64 {
                failures.push(format!(
                    "{label}: stage {stage}: {with_frame} of {tagged} µs under {frame}"
                ));
            }
        }
        // The model runs in onnxruntime's native code, under the Python
        // function that called it.
        let native_under = sum(&lines, |s| {
            s.starts_with("infer;")
                && on_cpu(s)
                && s.split_once("StandardInferenceHandler.run_inference (pipeline.py:")
                    .is_some_and(|(_, rest)| {
                        rest.split(';')
                            .skip(1)
                            .any(|f| f.contains("onnxruntime") || f.contains("Ort"))
                    })
        });
        if native_under == 0 {
            failures.push(format!(
                "{label}: no onnxruntime frame under run_inference:\n{}",
                lines
                    .iter()
                    .filter(|(s, _)| s.starts_with("infer;"))
                    .take(20)
                    .map(|(s, n)| format!("  {s} {n}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
