//! Operating on a fleet: the Debian package and its systemd unit, journald
//! priorities, and the examples of docs/fleet.md (the DaemonSet against
//! the Kubernetes API types, its capability list by running the agent with
//! exactly those capabilities, the Prometheus and Collector configs).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use adeline_trace_tests::namespaces::Namespaced;
use adeline_trace_tests::*;
use serde_json::Value;

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// A tool the test needs: its path, or None (a skip; under CI a failure).
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        assert!(
            !ci(),
            "CI=true: {name} is missing (cargo xtask setup installs it)"
        );
        eprintln!("skipped: {name} is not installed");
    }
    found
}

fn fleet_md() -> String {
    std::fs::read_to_string(workspace_root().join("docs/fleet.md")).expect("docs/fleet.md")
}

/// The ```yaml blocks of docs/fleet.md, each as its documents (JSON values).
fn yaml_blocks() -> Vec<Vec<Value>> {
    let text = fleet_md();
    let mut blocks = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let end = body.find("\n```").expect("a closed yaml block");
        let docs = body[..end]
            .split("\n---\n")
            .map(|doc| {
                serde_yaml_ng::from_str::<Value>(doc)
                    .unwrap_or_else(|e| panic!("docs/fleet.md: bad YAML ({e}):\n{doc}"))
            })
            .collect();
        blocks.push(docs);
        rest = &body[end + 4..];
    }
    blocks
}

fn block_with(key: &str) -> Vec<Value> {
    yaml_blocks()
        .into_iter()
        .find(|docs| {
            docs.iter()
                .any(|d| d.get(key).is_some() || d["kind"] == key)
        })
        .unwrap_or_else(|| panic!("no yaml block with {key} in docs/fleet.md"))
}

/// `value` deserializes into `T` and serializes back to itself: every
/// field is one the API knows, with the right type.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("not a valid object ({e}): {value}"));
    let back = serde_json::to_value(&typed).expect("serializes");
    assert_eq!(
        &back, value,
        "fields the Kubernetes API does not know were dropped"
    );
    typed
}

#[test]
fn the_daemonset_is_a_valid_kubernetes_object() {
    use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::ConfigMap};
    let docs = block_with("DaemonSet");
    assert_eq!(docs.len(), 2);
    let config: ConfigMap = round_trip(&docs[0]);
    let ds: DaemonSet = round_trip(&docs[1]);
    let spec = ds.spec.expect("spec");
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.host_pid, Some(true));
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    assert_eq!(
        spec.selector.match_labels.unwrap(),
        labels,
        "the selector matches the pods"
    );
    let agent = &pod.containers[0];
    let sc = agent.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    // Every mount names a volume, every volume is mounted.
    let volumes: Vec<&str> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    let mut mounted: Vec<&str> = Vec::new();
    for c in &pod.containers {
        for m in c.volume_mounts.as_deref().unwrap_or_default() {
            assert!(
                volumes.contains(&m.name.as_str()),
                "{} is no volume",
                m.name
            );
            mounted.push(&m.name);
        }
    }
    assert!(volumes.iter().all(|v| mounted.contains(v)), "{volumes:?}");
    let paths: Vec<&str> = agent
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    for path in ["/sys/kernel/tracing", "/var/log/pods", "/etc/adeline-trace"] {
        assert!(paths.contains(&path), "{path} not mounted: {paths:?}");
    }
    // The metrics port the scrape config keeps.
    let sidecar = &pod.containers[1];
    assert_eq!(
        sidecar.ports.as_ref().unwrap()[0].name.as_deref(),
        Some("metrics")
    );
    // The agent's config is one the agent accepts: it fails only on the
    // stage files, which do not exist here.
    let toml = &config.data.as_ref().unwrap()["pipeline.toml"];
    let dir = scratch_dir("daemonset");
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Agent::run(
        &[
            "run",
            "--config",
            path.to_str().unwrap(),
            "--no-api",
            "--duration",
            "1s",
        ],
        Duration::from_secs(30),
    );
    let error = out.error_line().unwrap_or_default().to_string();
    assert!(
        error.contains("/var/lib/vision/bin/pipeline"),
        "the config itself is wrong: {}",
        out.stderr
    );
}

/// The capabilities the DaemonSet adds, as setpriv names them.
fn daemonset_caps() -> Vec<String> {
    let docs = block_with("DaemonSet");
    docs[1]["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().unwrap().to_lowercase())
        .collect()
}

/// Traces a demo in pid and mount namespaces of its own (a container) by
/// its path inside and its host pid, with exactly `caps` (the bounding set
/// of a root process: what it keeps across exec), memory tracepoints
/// included; None for the report when the agent stopped before tracing.
fn trace_with_caps(caps: &[String], expect_start: bool) -> (AgentOutput, Option<Value>) {
    trace_with_caps_args(caps, expect_start, &[])
}

/// [`trace_with_caps`] with more agent arguments.
fn trace_with_caps_args(
    caps: &[String],
    expect_start: bool,
    extra: &[&str],
) -> (AgentOutput, Option<Value>) {
    let setpriv = tool("setpriv").expect("setpriv (util-linux)");
    let demo = Namespaced::start(true, "--frames 20 --fps 100");
    let bounding = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new(setpriv);
    cmd.args(["--bounding-set", &bounding, "--"])
        .arg(agent_bin())
        .args(["run", "--no-api", "-p", &demo.host_pid.to_string()])
        .args(extra);
    for s in DEMO_STAGES {
        cmd.args(["--stage", &format!("{s}=/mnt/app/pipeline:{s}")]);
    }
    let mut agent = Agent::spawn_command(cmd);
    if !expect_start {
        // Held at its go file, the demo makes no call: an agent that does
        // not stop by itself is tracing.
        agent.wait_exit(Duration::from_secs(20));
        return (agent.output(), None);
    }
    agent.wait_ready(Duration::from_secs(60));
    demo.go();
    let report = demo.wait();
    agent.wait_exit(Duration::from_secs(30));
    (agent.output(), Some(report))
}

#[test]
fn the_daemonsets_capabilities_are_enough_and_each_needed() {
    if !require_bpf() || tool("setpriv").is_none() {
        return;
    }
    let caps = daemonset_caps();
    assert_eq!(caps, ["sys_admin", "sys_ptrace"]);
    let (out, report) = trace_with_caps(&caps, true);
    let report = report.expect("traced");
    assert!(out.status.success(), "{}", out.stderr);
    for stage in DEMO_STAGES {
        assert_eq!(
            out.spans_of(stage).len() as u64,
            report["calls"][stage].as_u64().unwrap(),
            "{stage}"
        );
    }
    assert!(
        !out.stderr.contains("memory mappings are not traced"),
        "{}",
        out.stderr
    );
    assert!(!out.of_type("memory").is_empty());
    // CAP_BPF and CAP_PERFMON do not replace CAP_SYS_ADMIN for perf-event
    // uprobes: the uprobe PMU refuses them (perf_event_open: EACCES, as
    // "uprobe at offset ... failed: Permission denied").
    // (uprobe-multi links, the default where the kernel has them, are
    // made with BPF_LINK_CREATE and need no PMU.)
    let (out, _) = trace_with_caps_args(
        &["bpf".into(), "perfmon".into(), "sys_ptrace".into()],
        false,
        &["--attach", "perf"],
    );
    assert!(
        out.stderr.contains("Permission denied (os error 13)") && !out.status.success(),
        "{}",
        out.stderr
    );
    for needed in ["sys_admin", "sys_ptrace"] {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != needed).cloned().collect();
        let (out, _) = trace_with_caps(&fewer, false);
        assert!(
            !out.status.success() && out.error_line().is_some(),
            "without {needed} it still ran: {}",
            out.stderr
        );
    }
}

#[test]
fn the_prometheus_and_collector_examples_are_valid() {
    let scrape = block_with("scrape_configs");
    let jobs = scrape[0]["scrape_configs"].as_array().unwrap();
    assert!(jobs.iter().any(|j| j["job_name"] == "adeline"));
    if let Some(promtool) = tool("promtool") {
        // Debian builds Prometheus without Kubernetes service discovery, so
        // promtool checks the other jobs; the Kubernetes one is checked
        // against the field names of Prometheus's documentation below.
        let mut checked = scrape[0].clone();
        checked["scrape_configs"]
            .as_array_mut()
            .unwrap()
            .retain(|j| j.get("kubernetes_sd_configs").is_none());
        let dir = scratch_dir("prometheus");
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, serde_yaml_ng::to_string(&checked).unwrap()).unwrap();
        let (status, out, err) = run_captured(
            Command::new(promtool).args(["check", "config"]).arg(&file),
            Duration::from_secs(30),
        );
        assert!(status.success(), "promtool check config: {out}{err}");
    }
    let k8s = jobs
        .iter()
        .find(|j| j.get("kubernetes_sd_configs").is_some())
        .expect("a Kubernetes job");
    assert_eq!(k8s["kubernetes_sd_configs"][0]["role"], "pod");
    for r in k8s["relabel_configs"].as_array().unwrap() {
        for key in r.as_object().unwrap().keys() {
            assert!(
                [
                    "source_labels",
                    "regex",
                    "action",
                    "target_label",
                    "replacement"
                ]
                .contains(&key.as_str()),
                "relabel field {key}"
            );
        }
    }
    let collector = &block_with("receivers")[0];
    assert!(collector["receivers"]["otlp"]["protocols"]["http"].is_object());
    for (name, pipeline) in collector["service"]["pipelines"].as_object().unwrap() {
        for stage in ["receivers", "exporters"] {
            for component in pipeline[stage].as_array().unwrap() {
                let component = component.as_str().unwrap();
                assert!(
                    collector[stage][component].is_object()
                        || collector[stage].get(component).is_some(),
                    "pipeline {name} uses {component}, which is not defined in {stage}"
                );
            }
        }
    }
}

/// The package built from the test's agent binary.
fn build_deb(out: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let (status, stdout, stderr) = run_captured(
        Command::new(cargo)
            .current_dir(workspace_root())
            .args(["run", "--quiet", "-p", "xtask", "--", "deb", "--binary"])
            .arg(agent_bin())
            .arg("--out")
            .arg(out),
        Duration::from_secs(600),
    );
    assert!(status.success(), "cargo xtask deb: {stdout}{stderr}");
    PathBuf::from(stdout.trim())
}

#[test]
fn the_deb_holds_the_service_config_man_pages_and_completions() {
    for t in ["dpkg-deb", "dpkg", "systemd-analyze"] {
        if tool(t).is_none() {
            return;
        }
    }
    let dir = scratch_dir("deb");
    let deb = build_deb(&dir.join("out"));
    assert!(deb.is_file(), "{deb:?}");
    let (status, listing, err) = run_captured(
        Command::new("dpkg").arg("-c").arg(&deb),
        Duration::from_secs(30),
    );
    assert!(status.success(), "{err}");
    for path in [
        "./usr/bin/adeline-trace",
        "./usr/lib/systemd/system/adeline-trace.service",
        "./etc/adeline-trace/pipeline.toml",
        "./usr/share/man/man1/adeline-trace.1.gz",
        "./usr/share/man/man1/adeline-trace-run.1.gz",
        "./usr/share/bash-completion/completions/adeline-trace",
        "./usr/share/zsh/vendor-completions/_adeline-trace",
        "./usr/share/fish/vendor_completions.d/adeline-trace.fish",
        "./usr/share/doc/adeline-trace/copyright",
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} not in the package:\n{listing}"));
        assert!(line.contains("root/root"), "{line}");
        if path.ends_with("bin/adeline-trace") {
            assert!(line.starts_with("-rwxr-xr-x"), "{line}");
        }
    }
    let (_, info, _) = run_captured(
        Command::new("dpkg-deb").arg("-I").arg(&deb),
        Duration::from_secs(30),
    );
    assert!(info.contains("Package: adeline-trace"), "{info}");
    assert!(info.contains("Depends: libc6"), "{info}");
    assert!(info.contains("conffiles"), "{info}");

    // Unpacked in a scratch root: a unit that parses, a config the agent
    // reads, man pages and completions that are what they say.
    let root = dir.join("root");
    let (status, _, err) = run_captured(
        Command::new("dpkg").arg("-x").arg(&deb).arg(&root),
        Duration::from_secs(30),
    );
    assert!(status.success(), "{err}");
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/adeline-trace.service")).unwrap();
    assert!(unit.contains(
        "ExecStart=/usr/bin/adeline-trace run --config /etc/adeline-trace/pipeline.toml"
    ));
    // Verified against the unpacked binary (systemd-analyze checks that
    // ExecStart is executable); any warning fails the test.
    let bin = root.join("usr/bin/adeline-trace");
    let checked = dir.join("adeline-trace.service");
    std::fs::write(
        &checked,
        unit.replace("/usr/bin/adeline-trace", bin.to_str().unwrap()),
    )
    .unwrap();
    let (status, out, err) = run_captured(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&checked),
        Duration::from_secs(60),
    );
    assert!(
        status.success() && out.trim().is_empty() && err.trim().is_empty(),
        "systemd-analyze verify: {out}{err}"
    );
    // The default config parses: it only lacks stages.
    let config = root.join("etc/adeline-trace/pipeline.toml");
    let (_, _, err) = run_captured(
        Command::new(&bin)
            .args(["run", "--no-api", "--config"])
            .arg(&config),
        Duration::from_secs(30),
    );
    assert!(err.contains("error: no stages to trace"), "{err}");
    let (_, page, _) = run_captured(
        Command::new("zcat").arg(root.join("usr/share/man/man1/adeline-trace-run.1.gz")),
        Duration::from_secs(30),
    );
    assert!(page.contains(".TH") && page.contains("otlp"), "{page}");
    let (status, _, err) = run_captured(
        Command::new("bash")
            .arg("-n")
            .arg(root.join("usr/share/bash-completion/completions/adeline-trace")),
        Duration::from_secs(30),
    );
    assert!(status.success(), "bash completion: {err}");
    if Path::new("/usr/bin/man").exists() {
        let (status, text, err) = run_captured(
            Command::new("man")
                .env("MANWIDTH", "100")
                .arg("-l")
                .arg(root.join("usr/share/man/man1/adeline-trace-run.1.gz")),
            Duration::from_secs(30),
        );
        assert!(status.success() && text.contains("--otlp"), "man: {err}");
    }
}

#[test]
fn stderr_lines_carry_journald_priorities_only_in_the_journal() {
    let dir = scratch_dir("journal");
    let run = |journal: bool| -> String {
        let log = dir.join(format!("stderr-{journal}"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(agent_bin());
        cmd.args(["run", "--stage", "a=/no/such/file:f", "--no-api"])
            .stderr(file.try_clone().unwrap())
            .stdout(std::process::Stdio::null());
        if journal {
            use std::os::unix::fs::MetadataExt;
            let meta = file.metadata().unwrap();
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            cmd.env_remove("JOURNAL_STREAM");
        }
        let status = cmd.status().unwrap();
        assert!(!status.success());
        std::fs::read_to_string(&log).unwrap()
    };
    let plain = run(false);
    assert!(plain.starts_with("error: "), "{plain}");
    let journal = run(true);
    assert!(journal.starts_with("<3>error: "), "{journal}");
    assert_eq!(journal.lines().count(), 1, "{journal}");
}
