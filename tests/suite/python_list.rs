//! `list --python -p PID` on the pipeline.py fixture across the interpreter
//! matrix: every stage function of the fixture appears with its file and
//! first line (the fixture's own report says which); without -p, `list
//! --python TARGET` says what can be listed; a process that is not Python
//! is one clear error line.
use std::time::Duration;

use adeline_trace_tests::*;
use serde_json::Value;

fn list_json(args: &[&str]) -> Value {
    let (status, stdout, stderr) = run_captured(
        std::process::Command::new(agent_bin()).args(args),
        Duration::from_secs(60),
    );
    assert!(status.success(), "list {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn lists_the_pipeline_functions_with_file_and_first_line() {
    let mut failures = Vec::new();
    for env in pipeline_matrix() {
        let fx = PyFixture::start(&env, "pipeline.py", &["--frames", "2", "--broker", "none"]);
        let pid = fx.pid().to_string();
        let listing = list_json(&["list", "--python", "-p", &pid, "--json"]);
        // A glob over the qualified name, through the venv's python.
        let python = env.python.display().to_string();
        let tracker = list_json(&[
            "list",
            "--python",
            "-p",
            &pid,
            &python,
            "Tracker.*",
            "--json",
        ]);
        fx.go();
        let run = fx.wait(Duration::from_secs(120));
        let file = run.report["file"].as_str().unwrap().to_string();
        let functions = listing["functions"].as_array().expect("functions");
        assert!(
            listing["incomplete"].is_null(),
            "{}: {}",
            env.name(),
            listing["incomplete"]
        );
        for (qual, f) in run.report["functions"].as_object().unwrap() {
            let line = f["line"].as_u64().unwrap();
            let hit = functions
                .iter()
                .any(|g| g["qualname"] == qual.as_str() && g["file"] == file && g["line"] == line);
            if !hit {
                let near: Vec<&Value> = functions
                    .iter()
                    .filter(|g| g["qualname"] == qual.as_str())
                    .collect();
                failures.push(format!(
                    "{}: {qual} {file}:{line} not listed (same name: {near:?})",
                    env.name()
                ));
            }
        }
        // Library functions are there too (numpy, paho), and methods.
        assert!(
            functions
                .iter()
                .any(|g| g["file"].as_str().unwrap().contains("paho")),
            "{}",
            env.name()
        );
        let names: Vec<&str> = tracker["functions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["qualname"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"Tracker.update") && names.contains(&"Tracker.__init__"),
            "{names:?}"
        );
        assert!(names.iter().all(|n| n.starts_with("Tracker.")), "{names:?}");
        assert_eq!(
            tracker["version"].as_str().unwrap(),
            &run.report["python"].as_str().unwrap()[..tracker["version"].as_str().unwrap().len()]
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn without_a_process_it_says_what_can_be_listed() {
    for env in python_matrix() {
        let python = env.python.display().to_string();
        let v = list_json(&["list", "--python", &python, "--json"]);
        assert!(v["functions"].is_null(), "{v}");
        let note = v["note"].as_str().unwrap();
        assert!(
            note.starts_with("Python functions exist only in a running interpreter: give -p PID"),
            "{note}"
        );
        // The probe sites a stage would use: calls enter and leave somewhere.
        let sites = v["sites"].as_array().expect("sites[]");
        for role in ["entry", "exit"] {
            assert!(
                sites.iter().any(|s| s["role"] == role),
                "no {role} site: {v}"
            );
        }
        let out = Agent::run(&["list", "--python", &python], Duration::from_secs(60));
        assert!(out.status.success());
        assert!(out.stderr.contains("give -p PID"), "{}", out.stderr);
        // Plain text: every stdout line is in non_json.
        let text = out.non_json.join("\n");
        assert!(
            text.contains(&format!("{} eval-loop probe sites", sites.len())),
            "{text}"
        );
        for s in sites {
            let (address, what) = (s["address"].as_str().unwrap(), s["what"].as_str().unwrap());
            assert!(address.starts_with("0x"), "{s}");
            assert!(
                out.non_json
                    .iter()
                    .any(|l| l.contains(address) && l.contains(what)),
                "site {s} not in:\n{text}"
            );
        }
    }
    // Not a Python process: one line, exit 1.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = sleeper.id().to_string();
    let out = Agent::run(&["list", "--python", "-p", &pid], Duration::from_secs(30));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(!out.status.success());
    let line = out.error_line().expect("an error line");
    assert!(line.contains("is not a CPython interpreter"), "{line}");
}
