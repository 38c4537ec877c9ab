//! The profiler (`run --profile`) on fixtures with a known split
//! (tests/fixtures/profile/split.c, built with frame pointers): on-CPU
//! shares, off-CPU attribution of a sleep and a lock wait, nested stages,
//! pprof decoded by the independent decoder below, the alert-triggered
//! profile and its link. Accuracy numbers are benchmarks (`cargo xtask
//! bench profile`); the bounds here are loose enough for a shared 2-CPU
//! machine.
use std::{collections::HashMap, path::Path, time::Duration};

use adeline_trace_tests::*;

/// Runs the agent on `split MODE SECONDS` with `--profile HZ`, the given
/// stages and extra flags; returns the folded profile and the output.
fn profile_run(
    mode: &str,
    seconds: u32,
    hz: u32,
    stages: &[&str],
    extra: &[&str],
) -> (Vec<(String, u64)>, AgentOutput) {
    let exe = profile_split_fixture();
    let dir = scratch_dir("profile");
    let out = dir.join("profile.folded");
    let mut args: Vec<String> = vec!["run".into(), "--no-api".into(), "--no-spans".into()];
    for s in stages {
        args.push("--stage".into());
        args.push(format!("{s}={}:{s}", exe.display()));
    }
    args.extend(["--profile".into(), hz.to_string()]);
    args.extend(["--profile-out".into(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([
        "--".into(),
        exe.display().to_string(),
        mode.into(),
        seconds.to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = Agent::run(&args, Duration::from_secs(u64::from(seconds) + 60));
    assert!(output.status.success(), "agent failed: {}", output.stderr);
    let text = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("no profile at {out:?} ({e}); stderr: {}", output.stderr));
    (parse_folded(&text), output)
}

fn frames(stack: &str) -> Vec<&str> {
    stack.split(';').collect()
}

/// µs of the lines `pred` accepts.
fn sum(lines: &[(String, u64)], pred: impl Fn(&[&str]) -> bool) -> u64 {
    lines
        .iter()
        .filter(|(s, _)| pred(&frames(s)))
        .map(|(_, n)| n)
        .sum()
}

fn on_cpu(f: &[&str]) -> bool {
    f.last() != Some(&"[off-cpu]")
}

fn blocked(f: &[&str]) -> bool {
    f.last() == Some(&"[off-cpu]") && !f.contains(&"[runqueue]")
}

#[test]
fn known_split_native_70_30() {
    if !require_bpf() {
        return;
    }
    let (lines, out) = profile_run("split", 4, 999, &["work"], &[]);
    // Every line starts with the stage (or "(no stage)").
    assert!(lines
        .iter()
        .all(|(s, _)| s.starts_with("work;") || s.starts_with("(no stage);")));
    let hot = sum(&lines, |f| {
        f[0] == "work" && on_cpu(f) && f.contains(&"hot")
    });
    let cold = sum(&lines, |f| {
        f[0] == "work" && on_cpu(f) && f.contains(&"cold")
    });
    assert!(
        hot + cold > 1_000_000,
        "too few samples: {hot} + {cold} µs; {}",
        out.stderr
    );
    let share = hot as f64 / (hot + cold) as f64;
    assert!(
        (share - 0.70).abs() <= 0.03,
        "hot() share {share:.3} (hot {hot} µs, cold {cold} µs), expected 0.70 ± 0.03"
    );
    // The function frames are there, root first: work calls hot.
    assert!(lines
        .iter()
        .any(|(s, _)| s.contains(";work;hot") || s.ends_with(";work;hot")));
    assert!(out.stderr.contains("on-CPU samples"), "{}", out.stderr);
}

#[test]
fn off_cpu_sleep_is_attributed_and_weighted_by_time() {
    if !require_bpf() {
        return;
    }
    let (lines, out) = profile_run("offcpu", 3, 499, &["napper"], &[]);
    let report = out
        .fixture_report()
        .cloned()
        .unwrap_or_else(|| panic!("no fixture report: {:?}", out.lines));
    let calls = report["calls"].as_u64().expect("calls");
    let slept = sum(&lines, |f| f[0] == "napper" && blocked(f));
    let ran = sum(&lines, |f| f[0] == "napper" && on_cpu(f));
    // Blocked stacks end in the kernel's sleep, then [off-cpu].
    assert!(
        lines.iter().any(|(s, _)| s.starts_with("napper;")
            && blocked(&frames(s))
            && (s.contains("do_nanosleep") || s.contains("hrtimer_nanosleep"))),
        "no napper sleep stack in:\n{lines:#?}"
    );
    // 1.5 ms asked per call (plus timer slack and wake-up).
    let per_call = slept as f64 / calls as f64;
    assert!(
        (1450.0..2500.0).contains(&per_call),
        "{per_call:.0} µs blocked per call ({calls} calls)"
    );
    let share = slept as f64 / (slept + ran) as f64;
    assert!(
        (0.55..0.85).contains(&share),
        "blocked share {share:.3} (slept {slept} µs, ran {ran} µs), expected ~0.75"
    );
}

#[test]
fn lock_wait_is_attributed_to_the_waiting_stage() {
    if !require_bpf() {
        return;
    }
    let (lines, _) = profile_run("lock", 3, 199, &["waiter"], &[]);
    let waited = sum(&lines, |f| {
        f[0] == "waiter" && blocked(f) && f.iter().any(|x| x.starts_with("futex_wait"))
    });
    let total_blocked = sum(&lines, |f| f[0] == "waiter" && blocked(f));
    assert!(
        waited > 500_000,
        "waiter blocked on a futex only {waited} µs of {total_blocked} µs:\n{lines:#?}"
    );
    // The holder's own sleeps are not the waiter's.
    assert!(sum(&lines, |f| f[0] == "(no stage)" && blocked(f)) > 0);
}

#[test]
fn nested_stage_samples_go_to_the_innermost_stage() {
    if !require_bpf() {
        return;
    }
    let (lines, _) = profile_run("nested", 3, 499, &["outer", "inner"], &[]);
    let inner = sum(&lines, |f| f[0] == "inner" && on_cpu(f));
    let outer = sum(&lines, |f| f[0] == "outer" && on_cpu(f));
    assert!(inner + outer > 500_000, "too few samples");
    // No sample tagged `outer` is inside inner(), except at its entry
    // breakpoint (the uprobe that opens the stage is still running).
    let in_probe = |f: &[&str]| {
        f.iter()
            .any(|x| x.starts_with("asm_exc_int3") || x.contains("uprobe"))
    };
    assert_eq!(
        sum(&lines, |f| f[0] == "outer"
            && f.contains(&"inner")
            && !in_probe(f)),
        0,
        "{lines:#?}"
    );
    assert!(lines
        .iter()
        .any(|(s, _)| s.starts_with("inner;") && s.contains(";inner;compute")));
    let share = inner as f64 / (inner + outer) as f64;
    assert!(
        (0.70..0.90).contains(&share),
        "inner share {share:.3}, expected ~0.8"
    );
}

// ---------------------------------------------------------------------------
// An independent protobuf decoder (the wire format; field numbers of
// perftools.profiles.Profile), sharing no code with the agent's encoder.

#[derive(Debug, Clone)]
enum Field {
    Varint(u64),
    Bytes(Vec<u8>),
}

fn varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = buf[*pos];
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
        assert!(shift < 64, "varint too long");
    }
}

/// (field number, value) of one message, packed repeated varints unpacked
/// only when asked for (see `ints`).
fn fields(buf: &[u8]) -> Vec<(u64, Field)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos);
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((num, Field::Varint(varint(buf, &mut pos)))),
            2 => {
                let len = varint(buf, &mut pos) as usize;
                out.push((num, Field::Bytes(buf[pos..pos + len].to_vec())));
                pos += len;
            }
            1 => pos += 8,
            5 => pos += 4,
            other => panic!("wire type {other} of field {num}"),
        }
    }
    out
}

/// Every integer of repeated field `num` (packed or not).
fn ints(msg: &[(u64, Field)], num: u64) -> Vec<u64> {
    let mut v = Vec::new();
    for (n, f) in msg {
        if *n != num {
            continue;
        }
        match f {
            Field::Varint(x) => v.push(*x),
            Field::Bytes(b) => {
                let mut p = 0;
                while p < b.len() {
                    v.push(varint(b, &mut p));
                }
            }
        }
    }
    v
}

fn int(msg: &[(u64, Field)], num: u64) -> u64 {
    ints(msg, num).first().copied().unwrap_or(0)
}

fn messages(msg: &[(u64, Field)], num: u64) -> Vec<Vec<(u64, Field)>> {
    msg.iter()
        .filter(|(n, _)| *n == num)
        .map(|(_, f)| match f {
            Field::Bytes(b) => fields(b),
            Field::Varint(_) => panic!("field {num} is not a message"),
        })
        .collect()
}

/// A decoded pprof profile: sample types, and each sample's values and
/// function names (leaf first).
struct Pprof {
    sample_types: Vec<(String, String)>,
    samples: Vec<(Vec<i64>, Vec<String>)>,
}

fn decode_pprof(bytes: &[u8]) -> Pprof {
    let p = fields(bytes);
    let strings: Vec<String> = p
        .iter()
        .filter(|(n, _)| *n == 6)
        .map(|(_, f)| match f {
            Field::Bytes(b) => String::from_utf8(b.clone()).expect("UTF-8 string"),
            Field::Varint(_) => panic!("string_table entry is a varint"),
        })
        .collect();
    assert_eq!(
        strings.first().map(String::as_str),
        Some(""),
        "string_table[0]"
    );
    let s = |i: u64| strings[i as usize].clone();
    let functions: HashMap<u64, String> = messages(&p, 5)
        .iter()
        .map(|f| (int(f, 1), s(int(f, 2))))
        .collect();
    let locations: HashMap<u64, Vec<String>> = messages(&p, 4)
        .iter()
        .map(|l| {
            let names = messages(l, 4)
                .iter()
                .map(|line| functions[&int(line, 1)].clone())
                .collect();
            (int(l, 1), names)
        })
        .collect();
    let sample_types = messages(&p, 1)
        .iter()
        .map(|vt| (s(int(vt, 1)), s(int(vt, 2))))
        .collect();
    let samples = messages(&p, 2)
        .iter()
        .map(|sm| {
            let names = ints(sm, 1)
                .iter()
                .flat_map(|id| {
                    locations
                        .get(id)
                        .unwrap_or_else(|| panic!("location {id} missing"))
                        .clone()
                })
                .collect();
            let values = ints(sm, 2).iter().map(|&v| v as i64).collect();
            (values, names)
        })
        .collect();
    Pprof {
        sample_types,
        samples,
    }
}

/// `GET path` on the agent's API as bytes.
fn get_bytes(port: u16, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap().trim(), 16)
            .expect("hex size");
        rest = &rest[end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// The agent on `split MODE 600` with the API on a free port.
fn live_agent(mode: &str, stages: &[&str], extra: &[&str]) -> (Agent, u16) {
    let exe = profile_split_fixture();
    let port = free_port();
    let mut args: Vec<String> = vec![
        "run".into(),
        "--no-spans".into(),
        "--api-port".into(),
        port.to_string(),
    ];
    for s in stages {
        args.push("--stage".into());
        args.push(format!("{s}={}:{s}", exe.display()));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([
        "--".into(),
        exe.display().to_string(),
        mode.into(),
        "600".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn(&args);
    agent.wait_ready(Duration::from_secs(30));
    (agent, port)
}

#[test]
fn pprof_from_the_api_decodes_independently() {
    if !require_bpf() {
        return;
    }
    let (agent, port) = live_agent("split", &["work"], &["--profile", "499"]);
    std::thread::sleep(Duration::from_secs(3));
    let (status, body) = get_bytes(port, "/api/profile?stage=work&seconds=all&format=pprof");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let p = decode_pprof(&body);
    assert_eq!(
        p.sample_types,
        vec![
            ("samples".to_string(), "count".to_string()),
            ("wall".to_string(), "microseconds".to_string())
        ]
    );
    assert!(!p.samples.is_empty());
    // Leaf first, the stage outermost.
    assert!(p
        .samples
        .iter()
        .all(|(_, names)| names.last().map(String::as_str) == Some("work")));
    let hot: i64 = p
        .samples
        .iter()
        .filter(|(_, n)| n.first().map(String::as_str) == Some("hot"))
        .map(|(v, _)| v[1])
        .sum();
    assert!(hot > 100_000, "hot() has {hot} µs");
    // The same profile folded, and errors as JSON.
    let (status, folded) = get_bytes(port, "/api/profile?stage=work&seconds=all");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&folded)
        .lines()
        .all(|l| l.starts_with("work;")));
    let (status, err) = get_bytes(port, "/api/profile?stage=nope");
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&err).contains("no stage 'nope'"));
    // The CLI asks the same.
    let cli = run_captured(
        std::process::Command::new(agent_bin()).args([
            "profile",
            "--api-port",
            &port.to_string(),
            "--stage",
            "work",
            "--seconds",
            "all",
        ]),
        Duration::from_secs(120),
    );
    assert!(cli.0.success(), "{}", cli.2);
    assert!(
        cli.1
            .lines()
            .any(|l| l.starts_with("work;") && l.contains(";hot")),
        "{}",
        cli.1
    );
    drop(agent);
}

#[test]
fn an_alert_captures_and_links_the_stage_profile() {
    if !require_bpf() {
        return;
    }
    let (mut agent, port) = live_agent(
        "split",
        &["work"],
        &[
            "--profile",
            "199",
            "--alert",
            "p99(work) > 1ms",
            "--alert-profile",
            "2s",
        ],
    );
    let fired = agent
        .wait_for_event(Duration::from_secs(30), |v| {
            v["type"] == "alert" && v["state"] == "firing"
        })
        .expect("the alert fired");
    let path = fired["profile"]
        .as_str()
        .expect("the alert links a profile")
        .to_string();
    assert_eq!(path, "/api/alerts/1/profile");
    // /api/alerts links it too.
    let alerts = http_json(port, "/api/alerts");
    assert_eq!(alerts["alerts"][0]["profile"], path.as_str(), "{alerts}");
    // The capture completes 2 s after the alert.
    let mut svg = String::new();
    for _ in 0..100 {
        let (status, body) = get_bytes(port, &path);
        if status == 200 {
            svg = String::from_utf8_lossy(&body).into_owned();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(svg.contains("<svg") && svg.contains("hot"), "{svg}");
    let list = http_json(port, "/api/profile/alerts");
    assert_eq!(list["profiles"][0]["stage"], "work");
    assert_eq!(list["profiles"][0]["path"], path.as_str());
    let (status, after) = get_bytes(port, &format!("{path}?format=folded"));
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&after)
        .lines()
        .all(|l| l.starts_with("work;")));
    let _ = Path::new(&path);
}

#[test]
fn uretprobe_trampolines_are_replaced_by_the_callers() {
    if !require_bpf() {
        return;
    }
    // outer() and inner() both have a uretprobe (the default exit
    // probes): their return addresses on the stack are the kernel's
    // trampoline; the profile shows their real callers instead.
    let (lines, _) = profile_run("nested", 3, 499, &["outer", "inner"], &[]);
    let marked: Vec<&String> = lines
        .iter()
        .map(|(s, _)| s)
        .filter(|s| s.contains("[uretprobe]"))
        .collect();
    assert!(marked.is_empty(), "[uretprobe] frames left: {marked:#?}");
    let nested = sum(&lines, |f| {
        f[0] == "inner"
            && on_cpu(f)
            && f.windows(4)
                .any(|w| w == ["main", "outer", "inner", "compute"])
    });
    assert!(
        nested > 100_000,
        "main;outer;inner;compute has {nested} µs:\n{lines:#?}"
    );
}
