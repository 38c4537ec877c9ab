//! Traced processes as a fleet sees them: the host pid (what the kernel
//! programs report and `-p` takes), the pid inside the process's own pid
//! namespace, its cgroup, and the container and Kubernetes pod that cgroup
//! names ([`cgroup`]), with the pod's namespace and name from the kubelet's
//! log directories ([`kubelet`]). Read from `/proc/PID/{status,cgroup}`
//! once per process.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub mod cgroup;
pub mod kubelet;

pub use cgroup::{Qos, Runtime};

/// One traced process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// The host's pid (the initial pid namespace's).
    pub pid: u32,
    /// Its pid inside its own pid namespace, when that is not the host's
    /// (a container: often 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    /// Its cgroup path (`/proc/PID/cgroup`: the v2 path, or in hybrid mode
    /// the one naming its container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

/// The container a process runs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub runtime: Runtime,
    /// The full container id (64 hex digits).
    pub id: String,
    /// The container's name in its pod (from the kubelet's log links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
}

/// The Kubernetes pod a container belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub uid: String,
    pub qos: Qos,
    /// From the kubelet's pod log directory; None when it is not readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ProcessInfo {
    /// The labels of this process for metrics: `(name, value)` with the
    /// names of `/metrics` (`container_id`, `pod_name`, ...), only those
    /// known.
    pub fn prometheus_labels(&self) -> Vec<(&'static str, String)> {
        let mut labels: Vec<(&'static str, String)> = self
            .ns_pid
            .map(|p| ("ns_pid", p.to_string()))
            .into_iter()
            .collect();
        labels.extend(self.labels([
            "container_id",
            "container_runtime",
            "container_name",
            "pod_uid",
            "pod_namespace",
            "pod_name",
        ]));
        labels
    }

    /// The same as OpenTelemetry resource attributes (semantic conventions:
    /// `container.id`, `k8s.pod.name`, ...), without the pids.
    pub fn otel_attributes(&self) -> Vec<(&'static str, String)> {
        self.labels([
            "container.id",
            "container.runtime",
            "k8s.container.name",
            "k8s.pod.uid",
            "k8s.namespace.name",
            "k8s.pod.name",
        ])
    }

    /// The known values of container id, runtime, container name, pod uid,
    /// namespace and pod name, under the given names.
    fn labels(&self, names: [&'static str; 6]) -> Vec<(&'static str, String)> {
        let c = self.container.as_ref();
        let pod = c.and_then(|c| c.pod.as_ref());
        let values = [
            c.map(|c| c.id.clone()),
            c.map(|c| c.runtime.as_str().to_string()),
            c.and_then(|c| c.name.clone()),
            pod.map(|p| p.uid.clone()),
            pod.and_then(|p| p.namespace.clone()),
            pod.and_then(|p| p.name.clone()),
        ];
        names
            .into_iter()
            .zip(values)
            .filter_map(|(n, v)| Some((n, v?)))
            .collect()
    }
}

/// Reads what procfs says about `pid` (a process that is gone yields just
/// its pid). `pods_dir` is the kubelet's pod log directory.
pub fn read_process(pid: u32, pods_dir: &Path) -> ProcessInfo {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let ns_pid = std::fs::read_to_string(proc.join("status"))
        .ok()
        .and_then(|s| ns_pid(&s));
    let (cgroup, container) = match std::fs::read_to_string(proc.join("cgroup")) {
        Ok(text) => from_cgroup_file(&text, pods_dir),
        Err(_) => (None, None),
    };
    ProcessInfo {
        pid,
        ns_pid,
        cgroup,
        container,
    }
}

/// The cgroup path and container of a `/proc/PID/cgroup` file.
fn from_cgroup_file(text: &str, pods_dir: &Path) -> (Option<String>, Option<Container>) {
    let lines = cgroup::parse_lines(text);
    match cgroup::container_of(&lines) {
        Some((c, path)) => (Some(path.to_string()), Some(named(c, pods_dir))),
        None => (cgroup::main_path(&lines).map(str::to_string), None),
    }
}

/// A container with its pod's namespace and name and its own name, when
/// the kubelet's log directories have them.
fn named(c: cgroup::CgroupContainer, pods_dir: &Path) -> Container {
    let pod = c.pod.map(|p| {
        let found = kubelet::pod_by_uid(pods_dir, &p.uid);
        Pod {
            uid: p.uid,
            qos: p.qos,
            namespace: found.as_ref().map(|f| f.0.clone()),
            name: found.map(|f| f.1),
        }
    });
    let name = pod.as_ref().and_then(|p| {
        kubelet::container_name(
            &kubelet::containers_dir(pods_dir),
            p.namespace.as_deref()?,
            p.name.as_deref()?,
            &c.id,
        )
    });
    Container {
        runtime: c.runtime,
        id: c.id,
        name,
        pod,
    }
}

/// The innermost pid of the `NSpid:` line of `/proc/PID/status`, when the
/// process is in a pid namespace below the reader's.
fn ns_pid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let pids: Vec<u32> = line
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    (pids.len() > 1).then(|| *pids.last().expect("two or more"))
}

/// The inode of the initial pid namespace (PROC_PID_INIT_INO, fixed by the
/// kernel): `/proc/self/ns/pid` of a process in the host's pid namespace
/// reads `pid:[4026531836]`.
const INIT_PID_NS: &str = "pid:[4026531836]";

/// Whether this process runs in the host's (initial) pid namespace, where
/// the pids of procfs, of `-p` and of the kernel programs are one and the
/// same. Err: the link cannot be read (no procfs).
pub fn in_host_pid_namespace() -> std::io::Result<bool> {
    let link = std::fs::read_link("/proc/self/ns/pid")?;
    Ok(link.as_os_str() == INIT_PID_NS)
}

/// The processes seen so far, read once each.
#[derive(Debug)]
pub struct ProcessTable {
    pods_dir: PathBuf,
    known: HashMap<u32, ProcessInfo>,
}

/// A table forgets the processes it has not been asked about when it
/// holds more than this many.
const MAX_REMEMBERED: usize = 1024;

impl ProcessTable {
    pub fn new(pods_dir: PathBuf) -> ProcessTable {
        ProcessTable {
            pods_dir,
            known: HashMap::new(),
        }
    }

    /// What is known of `pids` (read from procfs the first time each is
    /// asked about), in the order given.
    pub fn lookup(&mut self, pids: &[u32]) -> Vec<ProcessInfo> {
        if self.known.len() > MAX_REMEMBERED {
            self.known.retain(|pid, _| pids.contains(pid));
        }
        pids.iter()
            .map(|&pid| {
                self.known
                    .entry(pid)
                    .or_insert_with(|| read_process(pid, &self.pods_dir))
                    .clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_lines() {
        assert_eq!(ns_pid("Name:\tx\nNSpid:\t4242\t1\n"), Some(1));
        assert_eq!(ns_pid("NSpid:\t4242\t77\t1\n"), Some(1));
        assert_eq!(ns_pid("NSpid:\t4242\n"), None);
        assert_eq!(ns_pid("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_is_in_the_host_namespace_and_read_as_such() {
        // The test runs on the host (its own pid namespace would make the
        // agent refuse to run anyway).
        assert!(in_host_pid_namespace().unwrap());
        let me = std::process::id();
        let info = read_process(me, Path::new("/nonexistent"));
        assert_eq!(info.pid, me);
        assert_eq!(info.ns_pid, None);
        assert!(info.cgroup.as_deref().is_some_and(|c| c.starts_with('/')));
        let gone = read_process(u32::MAX - 1, Path::new("/nonexistent"));
        assert_eq!(
            gone,
            ProcessInfo {
                pid: u32::MAX - 1,
                ns_pid: None,
                cgroup: None,
                container: None
            }
        );
    }

    #[test]
    fn labels_json_and_names() {
        let root = tempfile::tempdir().unwrap();
        let pods = root.path().join("pods");
        let uid = "0f3c9a52-6a2d-4c1e-9b7e-2f1d7a8c9e01";
        let id = "4b825dc642cb6eb9a060e54bf8d69288fbee4904e4b825dc642cb6eb9a060e54";
        std::fs::create_dir_all(pods.join(format!("vision_detector-0_{uid}"))).unwrap();
        std::fs::create_dir_all(root.path().join("containers")).unwrap();
        std::fs::write(
            root.path()
                .join(format!("containers/detector-0_vision_infer-{id}.log")),
            "",
        )
        .unwrap();
        let file = format!(
            "1:name=systemd:/kubepods/burstable/pod{uid}/{id}\n0::/kubepods/burstable/pod{uid}/{id}\n"
        );
        let (cgroup, container) = from_cgroup_file(&file, &pods);
        let info = ProcessInfo {
            pid: 4242,
            ns_pid: Some(1),
            cgroup,
            container,
        };
        assert_eq!(
            serde_json::to_value(&info).unwrap(),
            serde_json::json!({
                "pid": 4242, "ns_pid": 1,
                "cgroup": format!("/kubepods/burstable/pod{uid}/{id}"),
                "container": {"runtime": "cri", "id": id, "name": "infer",
                    "pod": {"uid": uid, "qos": "burstable", "namespace": "vision",
                            "name": "detector-0"}}
            })
        );
        let labels = info.prometheus_labels();
        assert_eq!(
            labels,
            vec![
                ("ns_pid", "1".to_string()),
                ("container_id", id.to_string()),
                ("container_runtime", "cri".to_string()),
                ("container_name", "infer".to_string()),
                ("pod_uid", uid.to_string()),
                ("pod_namespace", "vision".to_string()),
                ("pod_name", "detector-0".to_string()),
            ]
        );
        let attrs = info.otel_attributes();
        assert_eq!(attrs.len(), 6);
        assert_eq!(attrs[0], ("container.id", id.to_string()));
        assert_eq!(attrs[5], ("k8s.pod.name", "detector-0".to_string()));

        // Without the kubelet's directories: the UID only.
        let (_, container) = from_cgroup_file(&file, Path::new("/nonexistent"));
        let pod = container.unwrap().pod.unwrap();
        assert_eq!((pod.namespace, pod.name), (None, None));

        // A host process: its cgroup, no labels.
        let host = ProcessInfo {
            pid: 1,
            ns_pid: None,
            cgroup: Some("/system.slice/pipeline.service".into()),
            container: None,
        };
        assert!(host.prometheus_labels().is_empty());
        assert_eq!(
            serde_json::to_string(&host).unwrap(),
            r#"{"pid":1,"cgroup":"/system.slice/pipeline.service"}"#
        );
    }
}
