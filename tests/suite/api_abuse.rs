//! The local API under abuse, against the real agent with its default
//! limits (docs/api.md, "Limits"): a flood of half-open connections is
//! capped, `/healthz` keeps answering, the header timeout closes every
//! connection left, and the agent's memory returns to where it was; and
//! `summary` gives up on a server that trickles its answer, in one line.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use adeline_trace_tests::*;

/// Half-open connections in the flood (issue 9: 22,000 took the agent down;
/// 5,000 is more than the 4,096 a listen backlog holds here).
const FLOOD: usize = 5_000;
/// The agent's connection cap (Limits::DEFAULT.max_connections).
const CAP: usize = 256;
/// The agent's header timeout (Limits::DEFAULT.header_timeout) and how
/// often it checks it (conn.rs SWEEP_EVERY).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const SWEEP_EVERY: Duration = Duration::from_millis(200);
const MIB: f64 = 1024.0 * 1024.0;

/// Descriptors `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises this process's soft descriptor limit to its hard limit (the
/// flood holds FLOOD sockets).
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// `GET /healthz` with every wait bounded by `timeout`: (status line, took).
fn healthz(port: u16, timeout: Duration) -> (String, Duration) {
    let started = Instant::now();
    let addr = ([127, 0, 0, 1], port).into();
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        Ok(raw)
    };
    let status = match attempt() {
        Ok(raw) if raw.ends_with("{\"status\":\"ok\"}") => {
            raw.lines().next().unwrap_or_default().to_string()
        }
        Ok(raw) => format!("unexpected answer: {raw:?}"),
        Err(e) => format!("failed: {e}"),
    };
    (status, started.elapsed())
}

/// What a prober saw while the flood ran.
#[derive(Default)]
struct Probed {
    answers: Vec<(String, Duration)>,
    max_fds: usize,
    max_rss: u64,
}

#[test]
fn a_flood_of_half_open_connections_is_capped_healthz_answers_and_memory_returns() {
    if !require_bpf() {
        return;
    }
    let port = free_port();
    let port_arg = port.to_string();
    let args = demo_run_args(
        &["--no-spans", "--api-port", &port_arg],
        &["--frames", "0", "--fps", "50"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn(&args);
    agent.wait_ready(Duration::from_secs(30));
    let pid = agent.pid();
    // Warm: a few requests served, the windows filled.
    for _ in 0..5 {
        assert_eq!(http_get(port, "/api/summary").0, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    let base_fds = open_fds(pid);
    let base_rss = status_vmrss_bytes(pid).unwrap();
    assert!(
        raise_fd_limit() as usize > FLOOD + 100,
        "cannot hold the flood"
    );

    // A prober: /healthz every 50 ms (2 s allowed), and the agent's
    // descriptors and memory, until told to stop.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let prober = std::thread::spawn(move || {
        let mut seen = Probed::default();
        while stop_rx.try_recv().is_err() {
            seen.answers.push(healthz(port, Duration::from_secs(2)));
            seen.max_fds = seen.max_fds.max(open_fds(pid));
            seen.max_rss = seen.max_rss.max(status_vmrss_bytes(pid).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(50));
        }
        seen
    });

    // The flood: connected, never a byte sent.
    let flood_started = Instant::now();
    let addr = ([127, 0, 0, 1], port).into();
    let mut flood = Vec::with_capacity(FLOOD);
    let mut refused = Vec::new();
    for _ in 0..FLOOD {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => flood.push(s),
            Err(e) => refused.push(e.to_string()),
        }
    }
    let flood_took = flood_started.elapsed();
    assert_eq!(refused, Vec::<String>::new(), "connections not taken");

    // The agent holds at most CAP of them, sheds the rest, and closes the
    // last ones after the header timeout: its descriptors return to what
    // they were without a byte sent or a socket closed here.
    let flood_ended = Instant::now();
    let mut back_after = None;
    while flood_ended.elapsed() < HEADER_TIMEOUT + Duration::from_secs(3) {
        if open_fds(pid) <= base_fds {
            back_after = Some(flood_ended.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let back_after = back_after.unwrap_or_else(|| {
        panic!(
            "the agent still holds {} descriptors (before the flood: {base_fds})",
            open_fds(pid)
        )
    });
    // Every connection of the flood was closed by the agent.
    let mut still_open = 0;
    for s in &mut flood {
        s.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        match s.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            _ => still_open += 1,
        }
    }
    drop(flood);
    stop_tx.send(()).unwrap();
    let seen = prober.join().unwrap();

    // Memory: given back once the flood is over (malloc_trim), so the
    // agent's RSS is near where it was.
    std::thread::sleep(Duration::from_millis(1000));
    let after_rss = status_vmrss_bytes(pid).unwrap();
    let mut took: Vec<Duration> = seen.answers.iter().map(|(_, t)| *t).collect();
    took.sort();
    let median = took[took.len() / 2];
    let slowest = took[took.len() - 1];
    let over_500ms = took
        .iter()
        .filter(|t| **t > Duration::from_millis(500))
        .count();
    let failed: Vec<&(String, Duration)> = seen
        .answers
        .iter()
        .filter(|(s, _)| s != "HTTP/1.1 200 OK")
        .collect();
    eprintln!(
        "flood of {FLOOD} connections in {flood_took:?}: agent descriptors {base_fds} -> max {} \
         -> {base_fds} after {back_after:?}; /healthz {} answers, median {median:?}, slowest {slowest:?}, {over_500ms} over 0.5 s; \
         RSS {:.1} MiB -> max {:.1} MiB -> {:.1} MiB",
        seen.max_fds,
        seen.answers.len(),
        base_rss as f64 / MIB,
        seen.max_rss as f64 / MIB,
        after_rss as f64 / MIB,
    );
    assert_eq!(still_open, 0, "connections the agent never closed");
    assert!(
        seen.max_fds <= base_fds + CAP + 2,
        "the cap did not hold: {} descriptors, {base_fds} before",
        seen.max_fds
    );
    // The last connections were accepted as the flood ended: they time
    // out HEADER_TIMEOUT (plus at most a sweep) after it.
    assert!(
        back_after <= HEADER_TIMEOUT + SWEEP_EVERY + Duration::from_millis(300),
        "{back_after:?}"
    );
    assert!(
        back_after >= HEADER_TIMEOUT - Duration::from_millis(100),
        "closed before the header timeout: {back_after:?}"
    );
    assert!(seen.answers.len() >= 50, "{} probes", seen.answers.len());
    assert_eq!(failed, Vec::<&(String, Duration)>::new());
    // A probe queued behind the flood is answered in a millisecond or so;
    // one whose connection the kernel dropped (a full accept queue) is
    // retried by the client's TCP a second later.
    assert!(median < Duration::from_millis(50), "{median:?}");
    assert!(
        over_500ms * 100 <= took.len(),
        "{over_500ms} of {}",
        took.len()
    );
    assert!(slowest < Duration::from_millis(1500), "{slowest:?}");
    // Memory during the flood is bounded by the cap...
    assert!(
        seen.max_rss <= base_rss + (16 << 20),
        "RSS {:.1} MiB during the flood, {:.1} MiB before",
        seen.max_rss as f64 / MIB,
        base_rss as f64 / MIB
    );
    // ...and given back after it.
    assert!(
        after_rss <= base_rss + (4 << 20),
        "RSS {:.1} MiB after the flood, {:.1} MiB before",
        after_rss as f64 / MIB,
        base_rss as f64 / MIB
    );
    // And tracing went on: the agent stops cleanly.
    let out = agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.summary_of("decode").unwrap()["count"].as_u64().unwrap() > 0);
}

#[test]
fn summary_gives_up_on_a_server_that_trickles_its_headers() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // A byte of a status line every 200 ms, for up to 30 s.
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        for b in b"HTTP/1.1 200 OK\r\nX-Slow: "
            .iter()
            .chain([b'a'; 150].iter())
        {
            if s.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let started = Instant::now();
    let out = std::process::Command::new(agent_bin())
        .args(["summary", "--api-port", &port.to_string()])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "");
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!("error: the adeline-trace agent on 127.0.0.1:{port} did not answer within 5s\n")
    );
    // summary's response deadline (client.rs RESPONSE_TIMEOUT), not a
    // per-read timeout that each trickled byte would renew.
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_millis(6500),
        "{took:?}"
    );
}
