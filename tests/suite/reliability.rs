//! Never harm the traced process: split function fragments, IFUNCs, other
//! machines' binaries and overlapping stages are refused or skipped, and
//! the traced program prints exactly what it prints untraced.
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use adeline_trace_tests::*;

const T: Duration = Duration::from_secs(120);

/// `app::work(int)` with a `.cold` fragment (checked, so the test keeps
/// testing what it says if the compiler changes).
fn cold_fixture() -> PathBuf {
    let exe = small_fixture("cold-work", "cold/work.cpp", "g++", &["-O2", "-g"]);
    let (status, nm, _) = run_captured(Command::new("nm").arg(&exe), T);
    assert!(status.success());
    assert!(
        nm.contains("_ZN3app4workEi.cold"),
        "the fixture lost its .cold fragment:\n{nm}"
    );
    exe
}

/// Traces `exe ARGS` with `--stage STAGE`, events to a file; the
/// program's stdout and the spans of stage `w`.
fn trace(exe: &PathBuf, stage: &str, args: &[&str]) -> (String, Vec<serde_json::Value>) {
    let dir = scratch_dir("reliability");
    let events = dir.join("events.jsonl");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--no-api", "--stage", stage, "-o"])
        .arg(&events)
        .arg("--")
        .arg(exe)
        .args(args);
    let (status, stdout, stderr) = run_captured(&mut cmd, T);
    assert!(status.success(), "{stderr}");
    let spans = read_jsonl(&events)
        .into_iter()
        .filter(|v| v["type"] == "span" && v["stage"] == "w")
        .collect();
    (stdout, spans)
}

#[test]
fn cold_fragments_are_never_probed() {
    if !require_bpf() {
        return;
    }
    let exe = cold_fixture();
    let (status, untraced, _) = run_captured(Command::new(&exe).arg("200"), T);
    assert!(status.success());
    assert_eq!(untraced, "calls=200 failed=20 sum=175200420\n");
    for pattern in ["app::work", "app::work*", "*work*", "_ZN3app4workEi"] {
        let stage = format!("w={}:{pattern}", exe.display());
        let (stdout, spans) = trace(&exe, &stage, &["200"]);
        assert_eq!(stdout, untraced, "{pattern}: traced output differs");
        // Every call returns (the 20 exceptions are caught inside), once.
        assert_eq!(spans.len(), 200, "{pattern}");
    }
}

#[test]
fn list_does_not_offer_fragments() {
    let exe = cold_fixture();
    let (status, stdout, stderr) = run_captured(
        Command::new(agent_bin()).args(["list", exe.to_str().unwrap(), "*"]),
        T,
    );
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("app::work(int)"), "{stdout}");
    assert!(!stdout.contains(".cold"), "{stdout}");
}

/// Runs the agent, expects one `error: ` line and exit 1.
fn error_of(args: &[&str]) -> String {
    let out = Agent::run(args, T);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    out.error_line().expect("an error line").to_string()
}

#[test]
fn overlapping_stages_are_refused() {
    let demo = demo_bin().display().to_string();
    assert_eq!(
        error_of(&[
            "run",
            "--stage",
            &format!("a={demo}:infer"),
            "--stage",
            &format!("b={demo}:infer"),
        ]),
        format!("error: stages 'a' and 'b' both probe infer in {demo}: a function can be timed by one stage only; remove it from one of them")
    );
    // An exact overload and a glob over its name.
    let exe = cold_fixture().display().to_string();
    assert_eq!(
        error_of(&[
            "run",
            "--stage",
            &format!("a={exe}:app::work(int)"),
            "--stage",
            &format!("b={exe}:app::*"),
        ]),
        format!("error: stages 'a' and 'b' both probe app::work(int) in {exe}: a function can be timed by one stage only; remove it from one of them")
    );
}

#[test]
fn ifunc_is_refused() {
    let err = error_of(&["run", "--stage", "m=c:memmove"]);
    assert!(
        err.starts_with("error: cannot probe memmove in /")
            && err.ends_with(": it is an IFUNC (its symbol is the resolver that picks an implementation when the library loads, so a probe there would never see a call); probe a function that calls it instead"),
        "{err}"
    );
}

#[test]
fn other_machines_binaries_are_refused() {
    let dir = scratch_dir("machine");
    let exe = cold_fixture();
    // e_machine (offset 18) patched to aarch64 (183).
    let mut bytes = std::fs::read(&exe).unwrap();
    bytes[18..20].copy_from_slice(&183u16.to_le_bytes());
    let arm = dir.join("arm-work");
    std::fs::write(&arm, &bytes).unwrap();
    assert_eq!(
        error_of(&["run", "--stage", &format!("w={}:app::work", arm.display())]),
        format!(
            "error: {} is built for aarch64 (64-bit); adeline-trace probes x86-64 code only",
            arm.display()
        )
    );
    // A real i386 executable.
    let src = dir.join("i386.c");
    std::fs::write(
        &src,
        "int f(int x) { return x + 1; }\nint main(void) { return f(0); }\n",
    )
    .unwrap();
    let i386 = dir.join("i386");
    let (status, _, stderr) = run_captured(
        Command::new("gcc")
            .args(["-m32", "-nostdlib", "-static", "-e", "main", "-o"])
            .arg(&i386)
            .arg(&src),
        T,
    );
    assert!(status.success(), "gcc -m32: {stderr}");
    assert_eq!(
        error_of(&["run", "--stage", &format!("w={}:f", i386.display())]),
        format!(
            "error: {} is built for i386 (32-bit); adeline-trace probes x86-64 code only",
            i386.display()
        )
    );
}
