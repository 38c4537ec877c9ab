//! `adeline-trace summary`: ask the running agent's API for a snapshot and
//! print it as a table (or as the JSON received), once or every second.
use std::{
    fmt::Write as _,
    io::{self, IsTerminal, Write},
    net::{Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

pub mod client;
pub mod memory;

use client::{ClientError, Endpoint};
use memory::{caller_frame, fastest_growing_stage};
use serde::Deserialize;

use crate::{
    alerts::{rule::value_formatter, AlertEvent, AlertState},
    cli::SummaryArgs,
    format,
    metrics::snapshot::{Snapshot, Window, SNAPSHOT_VERSION},
    sinks::api::DEFAULT_API_PORT,
};

/// Time between two refreshes with `--watch`.
const REFRESH: Duration = Duration::from_secs(1);
/// Clear the screen and move the cursor home (ANSI).
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Runs the command. Errors are one line each.
pub fn summary(args: &SummaryArgs) -> anyhow::Result<()> {
    let window = Window::parse(&args.window).with_context(|| {
        format!(
            "unknown window '{}': expected 1s, 10s, 60s or all",
            args.window
        )
    })?;
    let endpoint = endpoint(args)?;
    let view = |endpoint: &Endpoint| view(endpoint, window, args.json);
    let stdout = io::stdout();
    let tty = stdout.is_terminal();
    let mut out = stdout.lock();
    let result = if args.watch {
        watch(
            &endpoint,
            view,
            &mut out,
            tty && !args.json,
            args.json,
            REFRESH,
        )
    } else {
        view(&endpoint).and_then(|text| emit(&mut out, &text, args.json))
    };
    match result {
        // A closed pipe (`| head`) ends the command quietly.
        Err(e)
            if e.downcast_ref::<io::Error>().map(io::Error::kind)
                == Some(io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// The agent's address from `--api-port` / `--api-socket`.
fn endpoint(args: &SummaryArgs) -> anyhow::Result<Endpoint> {
    endpoint_of(args.api_socket.as_ref(), args.api_port)
}

/// The agent's address from an `--api-socket` and an `--api-port` (also
/// used by `profile`).
pub fn endpoint_of(
    api_socket: Option<&std::path::PathBuf>,
    api_port: Option<u16>,
) -> anyhow::Result<Endpoint> {
    match (api_socket, api_port) {
        (Some(_), Some(_)) => bail!("pass either --api-port or --api-socket, not both"),
        (Some(path), None) => Ok(Endpoint::Unix(path.clone())),
        (None, Some(0)) => bail!(
            "--api-port 0 names no port: pass the port the agent serves on (default {DEFAULT_API_PORT})"
        ),
        (None, port) => Ok(Endpoint::Tcp(SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            port.unwrap_or(DEFAULT_API_PORT),
        )))),
    }
}

/// One look at the agent: the snapshot JSON as received, or the table.
fn view(endpoint: &Endpoint, window: Window, json: bool) -> anyhow::Result<String> {
    if json {
        fetch(endpoint, &summary_path(window))
    } else {
        let snapshot = fetch_snapshot(endpoint, window)?;
        let alerts = fetch_alerts(endpoint)?;
        Ok(render(&snapshot, &alerts))
    }
}

/// Shows `view` every `refresh` until an error. JSON: one document per
/// line. Tables: redrawn in place (`in_place`, on a terminal), else
/// separated by a blank line. An agent that stops answering after the first
/// view ends it with "went away".
fn watch(
    endpoint: &Endpoint,
    mut view: impl FnMut(&Endpoint) -> anyhow::Result<String>,
    out: &mut impl Write,
    in_place: bool,
    json: bool,
    refresh: Duration,
) -> anyhow::Result<()> {
    let mut first = true;
    loop {
        let started = Instant::now();
        let text = match view(endpoint) {
            Ok(text) => text,
            Err(e) if !first => return Err(went_away(endpoint, e)),
            Err(e) => return Err(e),
        };
        let text = if in_place {
            format!("{CLEAR}{text}")
        } else if first || json {
            text
        } else {
            format!("\n{text}")
        };
        emit(out, &text, json)?;
        first = false;
        thread::sleep(refresh.saturating_sub(started.elapsed()));
    }
}

/// Says "went away" for an agent that was there and no longer answers.
fn went_away(endpoint: &Endpoint, e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::NotListening { .. }) => {
            anyhow::anyhow!("the adeline-trace agent on {endpoint} went away")
        }
        Some(c) if c.agent_gone() => {
            anyhow::anyhow!("the adeline-trace agent on {endpoint} went away ({c})")
        }
        _ => e,
    }
}

fn summary_path(window: Window) -> String {
    format!("/api/summary?window={}", window.as_str())
}

/// Writes `text` (plus a newline for JSON) and flushes.
fn emit(out: &mut impl Write, text: &str, newline: bool) -> anyhow::Result<()> {
    out.write_all(text.as_bytes())?;
    if newline {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// GETs `path` and returns the body of a 200 answer; any other status
/// becomes the agent's error message.
fn fetch(endpoint: &Endpoint, path: &str) -> anyhow::Result<String> {
    let response = client::get(endpoint, path)?;
    if response.status != 200 {
        bail!(
            "the adeline-trace agent on {endpoint} answered {} to GET {path}: {}",
            response.status,
            response.error_text()
        );
    }
    Ok(response.body)
}

fn fetch_snapshot(endpoint: &Endpoint, window: Window) -> anyhow::Result<Snapshot> {
    let body = fetch(endpoint, &summary_path(window))?;
    parse_snapshot(&body).with_context(|| {
        format!("the adeline-trace agent on {endpoint} sent a summary this version cannot read")
    })
}

/// Parses a snapshot, checking its schema version first.
fn parse_snapshot(body: &str) -> anyhow::Result<Snapshot> {
    let value: serde_json::Value = serde_json::from_str(body)?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(SNAPSHOT_VERSION) => Ok(serde_json::from_value(value)?),
        Some(v) => bail!(
            "schema v{v}, this adeline-trace reads v{SNAPSHOT_VERSION}: use the same version for both"
        ),
        None => bail!("no schema version"),
    }
}

fn fetch_alerts(endpoint: &Endpoint) -> anyhow::Result<Vec<AlertEvent>> {
    #[derive(Deserialize)]
    struct Alerts {
        alerts: Vec<AlertEvent>,
    }
    let body = fetch(endpoint, "/api/alerts")?;
    let alerts: Alerts = serde_json::from_str(&body).with_context(|| {
        format!("the adeline-trace agent on {endpoint} sent alerts this version cannot read")
    })?;
    Ok(alerts.alerts)
}

/// Width of the label column of the one-line sections.
const LABEL: usize = 12;

/// The summary table of `snapshot` and the alerts firing among `alerts`
/// (transitions, newest last).
pub fn render(snapshot: &Snapshot, alerts: &[AlertEvent]) -> String {
    let mut out = format!(
        "window {} ({} covered), {} events\n",
        snapshot.window.as_str(),
        format::ns(snapshot.window_ns),
        snapshot.events
    );
    let mut rows =
        vec![["STAGE", "CALLS/S", "P50", "P95", "P99", "MAX", "SHARE"].map(String::from)];
    for s in &snapshot.stages {
        let l = &s.latency;
        let cell = |ns| format::latency(l.count, ns);
        rows.push([
            s.stage.clone(),
            format!("{:.1}", s.rate_hz),
            cell(l.p50_ns),
            cell(l.p95_ns),
            cell(l.p99_ns),
            cell(l.max_ns),
            s.frame_share.map_or("-".into(), format::percent),
        ]);
    }
    out.push_str(&format::align(&rows, &[0]));

    if let Some(f) = &snapshot.frames {
        let text = if f.latency.count == 0 {
            format!("none in the window (root {})", f.root)
        } else {
            format!(
                "{:.1} fps (root {}), latency p50 {}  p95 {}  p99 {}",
                f.fps,
                f.root,
                format::ns(f.latency.p50_ns),
                format::ns(f.latency.p95_ns),
                format::ns(f.latency.p99_ns)
            )
        };
        line(&mut out, "FRAMES", &text);
    }

    if !snapshot.gauges.is_empty() {
        let mut rows = vec![["GAUGE", "LAST", "MIN", "MAX", "MEAN"].map(String::from)];
        let cell = |v: Option<i64>| v.map_or("-".into(), |v| v.to_string());
        for g in &snapshot.gauges {
            rows.push([
                g.gauge.clone(),
                cell(g.last),
                cell(g.min),
                cell(g.max),
                g.mean.map_or("-".into(), format::number),
            ]);
        }
        out.push_str(&format::align(&rows, &[0]));
    }

    if let Some(top) = &snapshot.bottleneck.top_self_share {
        let text = format!(
            "{}: {} of frame time in its own code",
            top.stage,
            format::percent(top.share)
        );
        line(&mut out, "BOTTLENECK", &text);
    }
    if let Some(g) = &snapshot.bottleneck.p99_growth {
        let text = format!(
            "{}: p99 {}, up from {} ({}x)",
            g.stage,
            format::ns(g.p99_ns),
            format::ns(g.earlier_p99_ns),
            format::number(g.ratio)
        );
        line(&mut out, "SLOWER", &text);
    }

    for m in &snapshot.memory {
        let growth = m.growth_bytes_per_s.map_or("-".into(), |g| {
            format!("{:+.1} MB/min over {} samples", g * 60.0 / 1e6, m.samples)
        });
        let text = format!(
            "pid {}: RSS {:.1} MB, growth {growth}, {} threads",
            m.pid,
            m.rss_bytes as f64 / 1e6,
            m.threads
        );
        line(&mut out, "MEMORY", &text);
    }
    if let Some((stage, growth, held)) = fastest_growing_stage(snapshot) {
        let text = format!(
            "{stage}: {:+.1} MB/min, holds {:.1} MB",
            growth * 60.0 / 1e6,
            held / 1e6
        );
        line(&mut out, "GROWING", &text);
    }
    if let Some(site) = snapshot.alloc.as_ref().and_then(|a| a.sites.first()) {
        let text = format!(
            "{}: {:.1} MB in {} allocations, oldest {:.0}s, at {}",
            site.stage,
            site.bytes as f64 / 1e6,
            site.allocs,
            site.oldest_age_ns as f64 / 1e9,
            caller_frame(&site.stack)
        );
        line(&mut out, "TOP SITE", &text);
    }

    let drops = match snapshot.drops {
        0 => "none".to_string(),
        n => format!("{n} records lost in the kernel (latencies miss those calls)"),
    };
    line(&mut out, "DROPS", &drops);

    let firing = firing(alerts);
    if firing.is_empty() {
        line(&mut out, "ALERTS", "none firing");
    }
    for a in firing {
        let value = value_formatter(&a.rule);
        let text = format!(
            "{}: value {}, threshold {}, firing for {}",
            a.rule,
            value(a.value),
            value(a.threshold),
            format::ns(snapshot.ts_ns.saturating_sub(a.since_ns))
        );
        line(&mut out, "ALERT", &text);
    }
    out
}

/// The latest transition of each rule that is firing, in order of rules.
fn firing(alerts: &[AlertEvent]) -> Vec<&AlertEvent> {
    let mut latest: Vec<&AlertEvent> = Vec::new();
    for a in alerts {
        match latest.iter_mut().find(|l| l.rule == a.rule) {
            Some(slot) => *slot = a,
            None => latest.push(a),
        }
    }
    latest.retain(|a| a.state == AlertState::Firing);
    latest
}

fn line(out: &mut String, label: &str, text: &str) {
    let _ = writeln!(out, "{label:<LABEL$}{text}");
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, sync::Arc};

    use super::*;
    use crate::{
        sinks::api::fixtures::{sample_alerts, sample_snapshot, FakeSource},
        sinks::api::ApiSpec,
    };

    fn args(extra: &[&str]) -> SummaryArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            args: SummaryArgs,
        }
        let argv = std::iter::once("summary").chain(extra.iter().copied());
        Wrap::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn memory_lines_name_the_growing_stage_and_the_top_site() {
        use crate::metrics::snapshot::{AllocReport, AllocSite, StageAlloc};
        let mut snap = sample_snapshot(Window::S10);
        snap.alloc = Some(AllocReport {
            sample: 1,
            min_bytes: 0,
            outstanding_bytes: 50_000_000,
            outstanding_allocs: 2,
            growth_bytes_per_s: Some(1e6),
            stages: vec![StageAlloc {
                stage: "track".into(),
                allocs: 2,
                alloc_bytes: 50_000_000,
                frees: 0,
                freed_bytes: 0,
                outstanding_bytes: 50_000_000,
                growth_bytes_per_s: Some(1e6),
                allocs_per_frame: None,
                bytes_per_frame: None,
            }],
            sites: vec![AllocSite {
                stage: "track".into(),
                bytes: 50_000_000,
                allocs: 2,
                oldest_age_ns: 30_000_000_000,
                stack: vec!["alloc::vec::from_elem".into(), "track (p.rs:9)".into()],
            }],
            map_full: 0,
            no_stack: 0,
        });
        let table = render(&snap, &[]);
        assert!(
            table.contains("track: +60.0 MB/min, holds 50.0 MB"),
            "{table}"
        );
        assert!(
            table.contains("track: 50.0 MB in 2 allocations, oldest 30s, at track (p.rs:9)"),
            "{table}"
        );
    }

    #[test]
    fn table_of_a_fixed_snapshot() {
        let table = render(&sample_snapshot(Window::S10), &sample_alerts());
        assert_eq!(
            table,
            "\
window 10s (10.0s covered), 1234567 events
STAGE         CALLS/S     P50     P95     P99     MAX  SHARE
preprocess       30.0   940ns   999ns  1.50us  12.3us      -
inference        30.0  19.5ms  25.0ms  31.0ms  33.5ms  62.5%
post process      0.0       -       -       -       -   0.0%
tracking         29.9  1.90ms  3.50ms  4.00ms   1.23s   6.2%
FRAMES      29.5 fps (root frame), latency p50 31.0ms  p95 38.0ms  p99 45.0ms
GAUGE        LAST  MIN  MAX  MEAN
queue_depth     3    0    8  2.50
batch           -    -    -     -
BOTTLENECK  inference: 62.5% of frame time in its own code
SLOWER      tracking: p99 4.00ms, up from 2.00ms (2x)
MEMORY      pid 4242: RSS 104.9 MB, growth +31.5 MB/min over 10 samples, 4 threads
DROPS       12 records lost in the kernel (latencies miss those calls)
ALERT       p99(inference) > 30ms for 5s: value 31.0ms, threshold 30.0ms, firing for 10.0s
"
        );
    }

    #[test]
    fn table_without_frames_gauges_bottleneck_drops_or_alerts() {
        let mut s = sample_snapshot(Window::All);
        s.frames = None;
        s.gauges.clear();
        s.bottleneck = Default::default();
        s.drops = 0;
        s.memory[0].growth_bytes_per_s = None;
        s.stages.truncate(1);
        let table = render(&s, &sample_alerts()[1..]);
        assert_eq!(
            table,
            "\
window all (42.5s covered), 1234567 events
STAGE       CALLS/S    P50    P95     P99     MAX  SHARE
preprocess     30.0  940ns  999ns  1.50us  12.3us      -
MEMORY      pid 4242: RSS 104.9 MB, growth -, 4 threads
DROPS       none
ALERTS      none firing
"
        );
    }

    #[test]
    fn only_the_latest_transition_of_each_rule_counts() {
        let alerts = sample_alerts();
        let firing = firing(&alerts);
        assert_eq!(firing.len(), 1);
        assert_eq!(firing[0].rule, "p99(inference) > 30ms for 5s");
    }

    #[test]
    fn endpoint_from_flags() {
        assert_eq!(
            endpoint(&args(&[])).unwrap(),
            Endpoint::Tcp("127.0.0.1:7878".parse().unwrap())
        );
        assert_eq!(
            endpoint(&args(&["--api-port", "9000"])).unwrap(),
            Endpoint::Tcp("127.0.0.1:9000".parse().unwrap())
        );
        assert_eq!(
            endpoint(&args(&["--api-socket", "/run/a.sock"])).unwrap(),
            Endpoint::Unix(PathBuf::from("/run/a.sock"))
        );
        let e = endpoint(&args(&["--api-socket", "/a", "--api-port", "1"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pass either --api-port or --api-socket, not both"
        );
    }

    #[test]
    fn a_bad_window_fails_before_connecting() {
        // Port 1 would fail to connect; the window error comes first.
        let e = summary(&args(&["--window", "5m", "--api-port", "1"])).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "unknown window '5m': expected 1s, 10s, 60s or all"
        );
    }

    #[test]
    fn no_agent_is_one_clear_line() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let port_arg = port.to_string();
        for extra in [&[][..], &["--json"], &["--watch"]] {
            let mut argv = vec!["--api-port", port_arg.as_str()];
            argv.extend_from_slice(extra);
            let e = summary(&args(&argv)).unwrap_err();
            assert_eq!(
                format!("{e:#}"),
                format!(
                    "no adeline-trace agent is listening on 127.0.0.1:{port}: start one with \
                     'adeline-trace run ...' (or pass --api-port/--api-socket)"
                ),
                "{extra:?}"
            );
        }
    }

    #[tokio::test]
    async fn reads_a_live_agent_and_passes_its_errors_on() {
        let handle = crate::sinks::api::serve(
            &ApiSpec {
                port: Some(0),
                socket: None,
            },
            Arc::new(FakeSource::default()),
            std::future::pending(),
        )
        .await
        .unwrap();
        let at = Endpoint::Tcp(handle.tcp_addr().unwrap());
        let (snapshot, alerts, error) = tokio::task::spawn_blocking(move || {
            (
                fetch_snapshot(&at, Window::S1).unwrap(),
                fetch_alerts(&at).unwrap(),
                fetch(&at, "/api/summary?window=5m").unwrap_err(),
            )
        })
        .await
        .unwrap();
        assert_eq!(snapshot, sample_snapshot(Window::S1));
        assert_eq!(alerts, sample_alerts());
        assert_eq!(
            format!("{error:#}"),
            format!(
                "the adeline-trace agent on {} answered 400 to GET /api/summary?window=5m: \
                 unknown window '5m': expected 1s, 10s, 60s or all",
                handle.tcp_addr().unwrap()
            )
        );
    }

    #[tokio::test]
    async fn watch_repeats_until_the_agent_goes_away() {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let handle = crate::sinks::api::serve(
            &ApiSpec {
                port: Some(0),
                socket: None,
            },
            Arc::new(FakeSource::default()),
            async {
                let _ = stop_rx.await;
            },
        )
        .await
        .unwrap();
        let at = Endpoint::Tcp(handle.tcp_addr().unwrap());
        let (stopped_tx, stopped_rx) = std::sync::mpsc::channel::<()>();
        tokio::spawn(async move {
            handle.join().await.unwrap();
            let _ = stopped_tx.send(());
        });
        let watcher = at.clone();
        let (out, error) = tokio::task::spawn_blocking(move || {
            let mut stop = Some(stop_tx);
            let mut calls = 0;
            // The agent stops before the third look.
            let looks = |endpoint: &Endpoint| {
                calls += 1;
                if calls == 3 {
                    if let Some(stop) = stop.take() {
                        let _ = stop.send(());
                        let _ = stopped_rx.recv();
                    }
                }
                view(endpoint, Window::S10, false)
            };
            let mut out = Vec::new();
            let error = watch(&watcher, looks, &mut out, false, false, Duration::ZERO).unwrap_err();
            (String::from_utf8(out).unwrap(), error)
        })
        .await
        .unwrap();
        let table = render(&sample_snapshot(Window::S10), &sample_alerts());
        assert_eq!(out, format!("{table}\n{table}"));
        assert_eq!(
            format!("{error:#}"),
            format!("the adeline-trace agent on {at} went away")
        );
    }

    #[test]
    fn watch_in_place_and_as_json_lines() {
        let at = Endpoint::Tcp("127.0.0.1:1".parse().unwrap());
        for (in_place, json, expected) in [
            (true, false, "\x1b[H\x1b[2Jview 1\n\x1b[H\x1b[2Jview 2\n"),
            (false, true, "view 1\nview 2\n"),
        ] {
            let mut calls = 0;
            let looks = |_: &Endpoint| {
                calls += 1;
                match calls {
                    1 | 2 => Ok(format!("view {calls}{}", if json { "" } else { "\n" })),
                    _ => bail!("stop"),
                }
            };
            let mut out = Vec::new();
            let e = watch(&at, looks, &mut out, in_place, json, Duration::ZERO).unwrap_err();
            assert_eq!(e.to_string(), "stop");
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn snapshots_of_another_schema_are_refused() {
        let mut v = serde_json::to_value(sample_snapshot(Window::S1)).unwrap();
        assert_eq!(
            parse_snapshot(&v.to_string()).unwrap(),
            sample_snapshot(Window::S1)
        );
        v["v"] = 99.into();
        let e = parse_snapshot(&v.to_string()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "schema v99, this adeline-trace reads v1: use the same version for both"
        );
    }
}
