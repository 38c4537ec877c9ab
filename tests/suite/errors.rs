//! Bad input: each case is one `error: ` line naming the problem, a non-zero
//! exit, and no BPF program (hence no uprobe link) left in the kernel.
use std::time::Duration;

use adeline_trace_tests::*;

const T: Duration = Duration::from_secs(60);

/// Runs the agent, expects failure, returns its single error line.
fn fails(args: &[&str]) -> String {
    let out = Agent::run(args, T);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    assert!(out.lines.is_empty(), "no events expected: {:?}", out.lines);
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected: {}", out.stderr);
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "nothing but the error: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert_no_programs_left();
    errors[0].to_string()
}

fn assert_no_programs_left() {
    if require_bpf() {
        assert_eq!(
            adeline_bpf_programs(),
            Vec::<String>::new(),
            "BPF programs left loaded"
        );
    }
}

fn demo_stage(symbol: &str) -> String {
    format!("s={}:{symbol}", demo_bin().display())
}

#[test]
fn path_that_does_not_exist() {
    assert_eq!(
        fails(&["run", "--stage", "s=/no/such/file:f"]),
        "error: /no/such/file does not exist; check the path (for a containerized process also pass its pid with -p)"
    );
}

#[test]
fn file_that_is_not_elf() {
    let dir = scratch_dir("notelf");
    let file = dir.join("pipeline.toml");
    std::fs::write(&file, "not an ELF file\n").unwrap();
    assert_eq!(
        fails(&["run", "--stage", &format!("s={}:f", file.display())]),
        format!(
            "error: {} is not an ELF executable or shared library (no ELF magic); point at the binary or .so that contains the code",
            file.display()
        )
    );
}

#[test]
fn symbol_not_found_lists_close_candidates() {
    let err = fails(&["run", "--stage", &demo_stage("infr")]);
    let prefix = format!(
        "error: no function matching 'infr' in {} (did you mean: infer, infer_layer",
        demo_bin().display()
    );
    assert!(err.starts_with(&prefix), "{err}");
}

#[test]
fn glob_with_no_match() {
    let err = fails(&["run", "--stage", &demo_stage("*Detector::infer*")]);
    assert!(
        err.starts_with(&format!(
            "error: no function matching '*Detector::infer*' in {}",
            demo_bin().display()
        )),
        "{err}"
    );
}

#[test]
fn stripped_binary_without_the_symbol() {
    let fx = cpp_fixture();
    let err = fails(&[
        "run",
        "--stage",
        &format!("f={}:app::process_frame", fx.stripped.display()),
    ]);
    let want = format!(
        "error: no function matching 'app::process_frame' in {}: the file is stripped (no .symtab); only its ",
        fx.stripped.display()
    );
    assert!(err.starts_with(&want), "{err}");
    assert!(err.ends_with(" dynamic symbols can be probed"), "{err}");
}

#[test]
fn pid_not_running() {
    // The pid of a reaped child cannot be running (pid reuse aside).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert_eq!(
        fails(&[
            "run",
            "-p",
            &pid.to_string(),
            "--stage",
            &demo_stage("decode")
        ]),
        format!("error: process {pid} is not running; check the pid with `ps -p {pid}`")
    );
}

#[test]
fn malformed_stage_flags() {
    for (spec, problem) in [
        ("decode", "missing '='"),
        ("decode=/bin/true", "missing ':' between TARGET and SYMBOL"),
        ("decode=/bin/true:", "empty SYMBOL"),
    ] {
        assert_eq!(
            fails(&["run", "--stage", spec]),
            format!("error: malformed --stage '{spec}': expected NAME=TARGET:SYMBOL, e.g. infer=/opt/app/libdetector.so:'*Detector::infer*' ({problem})")
        );
    }
    assert_eq!(
        fails(&["run"]),
        "error: no stages to trace: give --stage NAME=TARGET:SYMBOL or a --config file with [[stage]] entries"
    );
}

#[test]
fn malformed_toml() {
    let dir = scratch_dir("toml");
    let file = dir.join("pipeline.toml");
    std::fs::write(
        &file,
        "[[stage]]\nname = \"decode\"\ntarget = \"/bin/true\"\nsymbol = decode\n",
    )
    .unwrap();
    let err = fails(&["run", "--config", file.to_str().unwrap()]);
    assert!(
        err.starts_with(&format!("error: config {}:4:10: ", file.display())),
        "{err}"
    );
    std::fs::write(
        &file,
        "[[stage]]\nname = \"decode\"\ntarget = \"/bin/true\"\nsymbol = \"f\"\nfrequency = 3\n",
    )
    .unwrap();
    let err = fails(&["run", "--config", file.to_str().unwrap()]);
    assert!(
        err.starts_with(&format!(
            "error: config {}:5:1: unknown field `frequency`",
            file.display()
        )),
        "{err}"
    );
    assert_eq!(
        fails(&["run", "--config", "/no/such.toml"]),
        "error: cannot read config /no/such.toml: No such file or directory (os error 2)"
    );
}

#[test]
fn command_not_found() {
    assert_eq!(
        fails(&[
            "run",
            "--stage",
            &demo_stage("decode"),
            "--",
            "no-such-command-xyz"
        ]),
        "error: command 'no-such-command-xyz' not found in PATH"
    );
}

#[test]
fn not_root_or_missing_capability() {
    if !require_bpf() {
        return;
    }
    // Drop to nobody with no capabilities (setpriv, util-linux).
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(agent_bin())
    .args(["run", "--stage", &demo_stage("decode")]);
    let mut agent = Agent::spawn_command(cmd);
    agent.wait_exit(T);
    let out = agent.output();
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(
        out.stderr.trim_end(),
        "error: adeline-trace needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs: run it with sudo"
    );
    assert_no_programs_left();
}

#[test]
fn killed_agent_leaves_nothing_attached() {
    if !require_bpf() {
        return;
    }
    let pipeline = Pipeline::demo(&["--frames", "0", "--fps", "50"]);
    let mut agent = Agent::spawn(&[
        "run",
        "-p",
        &pipeline.pid().to_string(),
        "--stage",
        &demo_stage("decode"),
    ]);
    agent.wait_ready(Duration::from_secs(30));
    pipeline.go();
    assert_eq!(
        bpf_prog_names_of(agent.pid())
            .into_iter()
            .filter(|n| n.starts_with("stage_"))
            .collect::<Vec<_>>(),
        // The demo is Rust: the default `--exit-probes auto` times its
        // stages at their exit instructions.
        ["stage_entry", "stage_ret"],
        "entry and exit loaded while tracing"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
    agent.wait_exit(T);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !adeline_bpf_programs().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_no_programs_left();
    pipeline.signal(libc::SIGTERM);
    pipeline.wait(T);
}

#[test]
fn function_whose_first_instruction_uprobes_refuse() {
    let fx = cpp_fixture();
    assert_eq!(
        fails(&["run", "--stage", &format!("s={}:vision_lock_first", fx.lib.display())]),
        format!(
            "error: cannot probe vision_lock_first in {}: its first instruction has a LOCK prefix, which the kernel's x86 uprobes refuse (the probe would never fire); probe its caller or a function it calls",
            fx.lib.display()
        )
    );
}

#[test]
fn bad_alert_rules_fail_at_start_naming_rule_and_position() {
    assert_eq!(
        fails(&[
            "run",
            "--stage",
            &demo_stage("decode"),
            "--alert",
            "p99(s) >> 5ms"
        ]),
        "error: alert rule 'p99(s) >> 5ms': column 9: expected a number after '>', found '>'"
    );
    let err = fails(&[
        "run",
        "--stage",
        &demo_stage("decode"),
        "--alert",
        "p99(infer) > 5ms for 2s",
    ]);
    assert!(
        err.starts_with(
            "error: alert rule 'p99(infer) > 5ms for 2s': column 5: unknown stage 'infer'"
        ),
        "{err}"
    );
    let err = fails(&[
        "run",
        "--stage",
        &demo_stage("decode"),
        "--alert",
        "fps < 25",
    ]);
    assert!(
        err.starts_with("error: alert rule 'fps < 25': column 1: "),
        "{err}"
    );
}

#[test]
fn alert_baseline_that_cannot_be_read_or_parsed() {
    assert_eq!(
        fails(&["run", "--stage", &demo_stage("decode"), "--alert-baseline", "/no/such.json"]),
        "error: cannot read the alert baseline /no/such.json: No such file or directory (os error 2)"
    );
    let dir = scratch_dir("baseline");
    let bad = dir.join("events.jsonl");
    std::fs::write(&bad, "{\"v\":1,\"type\":\"start\"}\n").unwrap();
    let err = fails(&[
        "run",
        "--stage",
        &demo_stage("decode"),
        "--alert-baseline",
        bad.to_str().unwrap(),
    ]);
    assert!(
        err.starts_with(&format!(
            "error: alert baseline {} is not a summary snapshot (write one with run --summary-out): ",
            bad.display()
        )),
        "{err}"
    );
}

#[test]
fn alloc_mode_and_memory_rules_bad_input() {
    let demo = demo_bin().display().to_string();
    let stage = demo_stage("track");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--alloc"],
            "error: --alloc needs -p PID or a command to launch (after --): the allocator of every process is not traced",
        ),
        (
            &["--alloc", "--alloc-sample", "0", "--", &demo],
            "error: --alloc-sample must be at least 1 (1 = every allocation)",
        ),
        (
            &["--alloc", "--alloc-min-bytes", "12kb", "--", &demo],
            "error: invalid --alloc-min-bytes '12kb': unknown unit 'kb' (examples: 4096, 64KiB, 1MB)",
        ),
        (
            &["--alert", "rss>5ms", "--", &demo],
            "error: alert rule 'rss>5ms': column 6: rss is a size: 'ms' is a duration unit; use B, KB, MB, GB, KiB, MiB or GiB",
        ),
        (
            &["--alert", "leak(trak)", "--", &demo],
            "error: alert rule 'leak(trak)': column 6: unknown stage 'trak'; known stages: s",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["run", "--stage", &stage];
        args.extend_from_slice(extra);
        assert_eq!(fails(&args), expected, "{args:?}");
    }
}

#[test]
fn too_many_matches_name_the_stage_pattern_and_count() {
    let many = many_fixture().display().to_string();
    let all = format!("all={many}:f*");
    // `f*` also matches frame_dummy: 5,001 functions.
    assert_eq!(
        fails(&["run", "--stage", &all]),
        format!(
            "error: stage 'all' pattern '{many}:f*' matches 5001 functions, over the limit of 1000 probed functions per run; narrow the pattern, or raise the limit with --max-probes 5001 (config: max_probes = 5001)"
        )
    );
    // The stage that goes over the limit is named, with the total so far.
    let a = format!("a={many}:f0*");
    let b = format!("b={many}:f1*");
    let g = format!("g={many}:f4999:arg0");
    assert_eq!(
        fails(&["run", "--stage", &a, "--stage", &b, "--gauge", &g, "--max-probes", "2000"]),
        format!(
            "error: gauge 'g' pattern '{many}:f4999' matches 1 function (2001 with the stages and gauges before it), over the limit of 2000 probed functions per run; narrow the pattern, or raise the limit with --max-probes 2001 (config: max_probes = 2001)"
        )
    );
    // The config key sets the limit too (the flag wins over it).
    let dir = scratch_dir("maxprobes");
    let config = dir.join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "max_probes = 999\n[[stage]]\nname = \"a\"\ntarget = \"{many}\"\nsymbol = \"f0*\"\n"
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    assert_eq!(
        fails(&["run", "--config", &config]),
        format!(
            "error: stage 'a' pattern '{many}:f0*' matches 1000 functions, over the limit of 999 probed functions per run; narrow the pattern, or raise the limit with --max-probes 1000 (config: max_probes = 1000)"
        )
    );
    assert_eq!(
        fails(&["run", "--config", &config, "--max-probes", "0"]),
        "error: --max-probes must be at least 1"
    );
}
