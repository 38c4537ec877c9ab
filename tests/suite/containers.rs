//! Containers: pipelines in a mount and pid namespace of their own (made by
//! `unshare`), traced from the host with host pids; container and pod
//! labels from real cgroups named as Docker, containerd, CRI-O and the
//! kubelet name theirs, in both the v2 and v1 hierarchies of this hybrid
//! host, with the processes moved into them.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use adeline_trace_tests::cgroup::{container_id, hierarchies, pod_uid, TestCgroup};
use adeline_trace_tests::namespaces::Namespaced;
use adeline_trace_tests::*;
use serde_json::Value;

/// `--stage NAME=PATH:NAME` for every demo stage at `path`.
fn stages_at(path: &str) -> Vec<String> {
    DEMO_STAGES
        .iter()
        .flat_map(|s| ["--stage".to_string(), format!("{s}={path}:{s}")])
        .collect()
}

/// Span counts per stage equal the demo's own counts.
fn assert_exact_counts(out: &AgentOutput, report: &Value) {
    for stage in DEMO_STAGES {
        assert_eq!(
            out.spans_of(stage).len() as u64,
            report["calls"][stage].as_u64().unwrap(),
            "calls of {stage}; report {report}"
        );
    }
    assert_eq!(out.summary().unwrap()["span_drops"], 0);
}

/// Polls the tasks of `pid` until it exits: every thread id the host gave it.
fn host_tids_until_exit(pid: u32) -> BTreeSet<u32> {
    let mut tids = BTreeSet::new();
    while let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        tids.extend(
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    tids
}

#[test]
fn pipeline_in_its_own_mount_and_pid_namespace_traced_by_its_path_inside() {
    if !require_bpf() {
        return;
    }
    assert!(
        !Path::new("/mnt/app/pipeline").exists(),
        "the host must not have /mnt/app/pipeline"
    );
    let ns = Namespaced::start(true, "--frames 40 --threads 2 --fps 100");
    let pid = ns.host_pid;
    let pid_arg = pid.to_string();
    let mut args: Vec<String> = vec!["run".into(), "-p".into(), pid_arg, "--no-api".into()];
    args.extend(stages_at("/mnt/app/pipeline"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn(&args);
    let start = agent.wait_ready(Duration::from_secs(60));
    assert_eq!(start["pids"], serde_json::json!([pid]));
    assert_eq!(start["processes"][0]["pid"], pid);
    assert_eq!(
        start["processes"][0]["ns_pid"], 1,
        "the demo is its namespace's init: {start}"
    );
    let target = format!("/proc/{pid}/root/mnt/app/pipeline");
    assert!(
        start["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["target"] == target.as_str()),
        "{start}"
    );
    ns.go();
    let tids = host_tids_until_exit(pid);
    let report = ns.wait();
    // Inside its namespace the demo is pid 1.
    assert_eq!(report["pid"], 1);
    let status = agent.wait_exit(Duration::from_secs(30));
    let out = agent.output();
    assert!(status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("traced processes exited"),
        "{}",
        out.stderr
    );
    assert_exact_counts(&out, &report);
    for span in out.spans() {
        assert_eq!(span["pid"], pid, "{span}");
        let tid = span["tid"].as_u64().unwrap() as u32;
        assert!(
            tids.contains(&tid),
            "tid {tid} is not a host tid of {pid}: {tids:?}"
        );
    }
    // Memory and stats name the process by its host pid.
    let stats = out.of_type("stats");
    assert!(stats
        .iter()
        .any(|s| s["processes"][0]["pid"] == pid && s["processes"][0]["ns_pid"] == 1));
}

#[test]
fn namespaced_pipeline_traced_by_host_path_without_a_pid() {
    if !require_bpf() {
        return;
    }
    let demo = demo_bin();
    let mut args: Vec<String> = vec!["run".into(), "--no-api".into()];
    args.extend(stages_at(&demo.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ns = Namespaced::start(false, "--frames 30 --fps 100");
    let pid = ns.host_pid;
    let mut agent = Agent::spawn(&args);
    let start = agent.wait_ready(Duration::from_secs(60));
    assert_eq!(start["pids"], serde_json::json!([]));
    ns.go();
    let report = ns.wait();
    assert_eq!(report["pid"], 1);
    // Tracing every process: stop once the last span is surely drained.
    std::thread::sleep(Duration::from_millis(1500));
    let out = agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    assert_exact_counts(&out, &report);
    assert!(out.spans().iter().all(|s| s["pid"] == pid));
    // The pid it saw is sampled, with its namespace pid.
    let seen = out
        .of_type("stats")
        .into_iter()
        .flat_map(|s| s["processes"].as_array().cloned().unwrap_or_default())
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} never listed in stats"));
    assert_eq!(seen["ns_pid"], 1);
}

/// One layout: where the cgroup goes and what the agent should say.
struct Layout {
    what: &'static str,
    cgroup: TestCgroup,
    runtime: &'static str,
    id: String,
    pod: Option<(String, &'static str)>,
}

#[test]
fn container_and_pod_labels_from_real_cgroups_in_both_hierarchies() {
    if !require_bpf() {
        return;
    }
    let (v2, v1) = hierarchies();
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let Some(v1) = v1 else {
        assert!(
            !ci,
            "CI=true: this host mounts no v1 hierarchy (hybrid mode expected)"
        );
        eprintln!("skipped: no v1 cgroup hierarchy mounted (v2-only host)");
        return;
    };
    let ids: Vec<String> = (0..5).map(|_| container_id()).collect();
    let (uid_a, uid_b) = (pod_uid(), pod_uid());
    let systemd_uid = uid_a.replace('-', "_");
    let layouts = vec![
        Layout {
            what: "Docker, systemd driver, v2",
            cgroup: TestCgroup::create(&v2, &format!("/system.slice/docker-{}.scope", ids[0])),
            runtime: "docker",
            id: ids[0].clone(),
            pod: None,
        },
        Layout {
            what: "Docker, cgroupfs driver, v1",
            cgroup: TestCgroup::create(&v1, &format!("/docker/{}", ids[1])),
            runtime: "docker",
            id: ids[1].clone(),
            pod: None,
        },
        Layout {
            what: "Kubernetes + containerd, systemd driver, v2",
            cgroup: TestCgroup::create(
                &v2,
                &format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{systemd_uid}.slice/cri-containerd-{}.scope",
                    ids[2]
                ),
            ),
            runtime: "containerd",
            id: ids[2].clone(),
            pod: Some((uid_a.clone(), "burstable")),
        },
        Layout {
            what: "Kubernetes + CRI, cgroupfs driver, v1",
            cgroup: TestCgroup::create(&v1, &format!("/kubepods/besteffort/pod{uid_b}/{}", ids[3])),
            runtime: "cri",
            id: ids[3].clone(),
            pod: Some((uid_b.clone(), "besteffort")),
        },
        Layout {
            what: "containerd (ctr), cgroupfs driver, v2",
            cgroup: TestCgroup::create(&v2, &format!("/default/{}", ids[4])),
            runtime: "containerd",
            id: ids[4].clone(),
            pod: None,
        },
    ];
    // The kubelet's log directories: pod A is known (namespace, name, and
    // its container's log link), pod B is not.
    let kubelet = scratch_dir("kubelet");
    let pods_dir = kubelet.join("pods");
    std::fs::create_dir_all(pods_dir.join(format!("vision_detector-0_{uid_a}/infer"))).unwrap();
    std::fs::create_dir_all(kubelet.join("containers")).unwrap();
    std::fs::write(
        kubelet.join(format!("containers/detector-0_vision_infer-{}.log", ids[2])),
        "",
    )
    .unwrap();

    let pipelines: Vec<Pipeline> = layouts
        .iter()
        .map(|l| {
            let p = Pipeline::demo(&["--frames", "5", "--fps", "50"]);
            l.cgroup.add(p.pid());
            p
        })
        .collect();
    let pids: Vec<u32> = pipelines.iter().map(Pipeline::pid).collect();
    let port = free_port();
    let demo = demo_bin();
    let mut args: Vec<String> = vec![
        "run".into(),
        "--api-port".into(),
        port.to_string(),
        "--kubelet-pods-dir".into(),
        pods_dir.display().to_string(),
    ];
    for pid in &pids {
        args.extend(["-p".to_string(), pid.to_string()]);
    }
    args.extend(stages_at(&demo.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn(&args);
    let start = agent.wait_ready(Duration::from_secs(60));

    let by_pid = |list: &Value| -> BTreeMap<u64, Value> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|p| (p["pid"].as_u64().unwrap(), p.clone()))
            .collect()
    };
    let listed = by_pid(&start["processes"]);
    let summary = http_json(port, "/api/summary?window=1s");
    let api = by_pid(&summary["processes"]);
    let (status, metrics) = http_get(port, "/metrics");
    assert_eq!(status, 200);
    for (l, &pid) in layouts.iter().zip(&pids) {
        for (source, p) in [
            ("start", &listed[&u64::from(pid)]),
            ("api", &api[&u64::from(pid)]),
        ] {
            let c = &p["container"];
            assert_eq!(c["runtime"], l.runtime, "{}: {source} {p}", l.what);
            assert_eq!(c["id"], l.id.as_str(), "{}: {source} {p}", l.what);
            assert_eq!(
                p["cgroup"],
                l.cgroup.path.as_str(),
                "{}: {source} {p}",
                l.what
            );
            match &l.pod {
                None => assert!(c.get("pod").is_none(), "{}: {p}", l.what),
                Some((uid, qos)) => {
                    assert_eq!(c["pod"]["uid"], uid.as_str(), "{}: {p}", l.what);
                    assert_eq!(c["pod"]["qos"], *qos, "{}: {p}", l.what);
                }
            }
        }
        let info = format!(
            "adeline_process_info{{pid=\"{pid}\",container_id=\"{}\",container_runtime=\"{}\"",
            l.id, l.runtime
        );
        assert!(
            metrics.contains(&info),
            "{}: no {info} in\n{metrics}",
            l.what
        );
    }
    // Pod A's namespace, name and container name come from the kubelet's
    // directories; pod B has its UID only.
    let a = &listed[&u64::from(pids[2])]["container"];
    assert_eq!(a["name"], "infer");
    assert_eq!(a["pod"]["namespace"], "vision");
    assert_eq!(a["pod"]["name"], "detector-0");
    let b = &listed[&u64::from(pids[3])]["container"]["pod"];
    assert!(
        b.get("namespace").is_none() && b.get("name").is_none(),
        "{b}"
    );
    assert!(
        metrics.contains(&format!(
            "container_runtime=\"containerd\",container_name=\"infer\",pod_uid=\"{uid_a}\",pod_namespace=\"vision\",pod_name=\"detector-0\""
        )),
        "{metrics}"
    );

    let reports: Vec<Value> = pipelines
        .into_iter()
        .map(|p| {
            p.go();
            p.wait(Duration::from_secs(30))
        })
        .collect();
    let status = agent.wait_exit(Duration::from_secs(30));
    let out = agent.output();
    assert!(status.success(), "{}", out.stderr);
    for (pid, report) in pids.iter().zip(&reports) {
        let decode = out
            .spans_of("decode")
            .iter()
            .filter(|s| s["pid"] == *pid)
            .count() as u64;
        assert_eq!(decode, report["calls"]["decode"].as_u64().unwrap());
    }
    // Every stats object lists the traced processes with their labels.
    let stats = out.of_type("stats");
    let last = stats.last().expect("stats");
    assert_eq!(
        last["processes"].as_array().unwrap().len(),
        pids.len(),
        "{last}"
    );
    drop(layouts);
}
