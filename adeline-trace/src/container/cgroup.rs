//! Which container, and which Kubernetes pod, a process runs in, read from
//! the cgroup path the container runtime created for it (`/proc/PID/cgroup`).
//!
//! Path shapes recognised (`<id>` is the 64-hex container id, `<uid>` the
//! pod UID; systemd slices spell the UID with `_` for `-`); anything may
//! come before them (a cgroup namespace shows `/..` components, nested
//! runtimes a prefix), and anything after (runc/crun's `container`
//! sub-cgroup, a process's own sub-cgroups):
//!
//! | runtime | cgroupfs driver | systemd driver |
//! |---------|-----------------|----------------|
//! | Docker (also cri-dockerd) | `/docker/<id>` | `/system.slice/docker-<id>.scope` |
//! | containerd, CRI | `/kubepods/<qos>/pod<uid>/<id>` (runtime `cri`: the path does not name it) | `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope` |
//! | containerd, ctr / nerdctl | `/<namespace>/<id>` (e.g. `/default/<id>`) | `/system.slice/nerdctl-<id>.scope` |
//! | CRI-O | `/kubepods/<qos>/pod<uid>/crio-<id>` | `.../kubepods-<qos>-pod<uid>.slice/crio-<id>.scope` |
//! | Podman | `/libpod_parent/libpod-<id>` | `/machine.slice/libpod-<id>.scope`, rootless `/user.slice/.../libpod-<id>.scope` |
//!
//! `<qos>` is `burstable` or `besteffort`, absent for Guaranteed pods
//! (`/kubepods/pod<uid>/...`, `kubepods-pod<uid>.slice`); kind and other
//! kubelets under a systemd slice of their own (`kubelet-kubepods-...`) are
//! recognised too. Runtime helpers (`crio-conmon-<id>`,
//! `libpod-conmon-<id>`) are not containers.
//!
//! Cgroup v2 (`0::PATH`), v1 (`N:controllers:PATH`) and hybrid files (v1
//! controllers plus v2 in `unified`) are read: the v2 line first, then
//! `name=systemd`, then the other v1 hierarchies; the first path that names
//! a container wins.
use serde::{Deserialize, Serialize};

/// The container runtime, as the cgroup path names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Runtime {
    #[serde(rename = "docker")]
    Docker,
    #[serde(rename = "containerd")]
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    #[serde(rename = "podman")]
    Podman,
    /// A Kubernetes container whose cgroup path (cgroupfs driver) does not
    /// name the CRI runtime (containerd or cri-dockerd).
    #[serde(rename = "cri")]
    Cri,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Cri => "cri",
        }
    }
}

/// The Kubernetes pod quality-of-service class (the kubelet's cgroup level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Qos {
    Guaranteed,
    Burstable,
    Besteffort,
}

/// What a cgroup path says about its process's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupContainer {
    pub runtime: Runtime,
    /// The full container id (64 lowercase hex digits).
    pub id: String,
    /// The Kubernetes pod, when the path is under the kubelet's `kubepods`.
    pub pod: Option<CgroupPod>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPod {
    /// The pod UID, with dashes (`0f3c...-...`).
    pub uid: String,
    pub qos: Qos,
}

/// One line of `/proc/PID/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine<'a> {
    /// 0 for the v2 hierarchy.
    pub hierarchy: u32,
    /// Comma-separated v1 controllers (`cpu,cpuacct`, `name=systemd`);
    /// empty for v2.
    pub controllers: &'a str,
    pub path: &'a str,
}

/// The lines of a `/proc/PID/cgroup` file (malformed lines are skipped).
pub fn parse_lines(text: &str) -> Vec<CgroupLine<'_>> {
    text.lines()
        .filter_map(|line| {
            let (hierarchy, rest) = line.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            Some(CgroupLine {
                hierarchy: hierarchy.parse().ok()?,
                controllers,
                path,
            })
        })
        .collect()
}

/// The lines in the order they are searched: v2, `name=systemd`, the rest.
fn search_order<'a>(lines: &'a [CgroupLine<'a>]) -> Vec<&'a CgroupLine<'a>> {
    let rank = |l: &CgroupLine| match (l.hierarchy, l.controllers) {
        (0, "") => 0,
        (_, c) if c.split(',').any(|c| c == "name=systemd") => 1,
        _ => 2,
    };
    let mut ordered: Vec<&CgroupLine> = lines.iter().collect();
    ordered.sort_by_key(|l| rank(l));
    ordered
}

/// The process's cgroup path worth reporting: the v2 path unless it is the
/// root (hybrid mode with everything in v1), else the `name=systemd` one,
/// else the first line's.
pub fn main_path<'a>(lines: &'a [CgroupLine<'a>]) -> Option<&'a str> {
    let ordered = search_order(lines);
    ordered
        .iter()
        .find(|l| l.path != "/")
        .or(ordered.first())
        .map(|l| l.path)
}

/// The container named by the first path (in search order) that names one,
/// and that path.
pub fn container_of<'a>(lines: &'a [CgroupLine<'a>]) -> Option<(CgroupContainer, &'a str)> {
    search_order(lines)
        .into_iter()
        .find_map(|l| Some((parse_path(l.path)?, l.path)))
}

/// The container a cgroup path names, if any.
pub fn parse_path(path: &str) -> Option<CgroupContainer> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .collect();
    // The innermost component naming a container (runc and crun may put the
    // process in a sub-cgroup of the container's).
    let (at, runtime, id) = parts.iter().enumerate().rev().find_map(|(i, c)| {
        let parent = i.checked_sub(1).map(|p| parts[p]);
        let (runtime, id) = container_component(c, parent, i)?;
        Some((i, runtime, id))
    })?;
    let pod = pod_of(&parts[..at]);
    let runtime = match (runtime, &pod) {
        // A bare id under a pod: a CRI runtime that does not name itself.
        (None, Some(_)) => Runtime::Cri,
        (None, None) => match at {
            // containerd's cgroupfs layout: /<namespace>/<id>.
            1 => Runtime::Containerd,
            _ => return None,
        },
        (Some(r), _) => r,
    };
    Some(CgroupContainer {
        runtime,
        id: id.to_string(),
        pod,
    })
}

/// A component naming a container: its runtime (None for a bare id that
/// only its place in the path can attribute) and id. `index` is its
/// position in the path, `parent` the component before it.
fn container_component<'a>(
    c: &'a str,
    parent: Option<&str>,
    index: usize,
) -> Option<(Option<Runtime>, &'a str)> {
    let name = c.strip_suffix(".scope").unwrap_or(c);
    const PREFIXES: [(&str, Runtime); 5] = [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("nerdctl-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix).filter(|id| is_container_id(id)) {
            return Some((Some(runtime), id));
        }
    }
    if c.ends_with(".scope") || !is_container_id(c) {
        return None;
    }
    match parent {
        Some("docker") => Some((Some(Runtime::Docker), c)),
        _ if index > 0 => Some((None, c)),
        _ => None,
    }
}

/// 64 lowercase hex digits: the ids of Docker, containerd, CRI-O and Podman.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The pod of the components above a container's, when they are under the
/// kubelet's `kubepods` hierarchy.
fn pod_of(parts: &[&str]) -> Option<CgroupPod> {
    let kube = parts.iter().position(|c| is_kubepods(c))?;
    let above = &parts[kube..];
    let uid = above.iter().rev().find_map(|c| pod_uid(c))?;
    let qos = if above.iter().any(|c| c.contains("besteffort")) {
        Qos::Besteffort
    } else if above.iter().any(|c| c.contains("burstable")) {
        Qos::Burstable
    } else {
        Qos::Guaranteed
    };
    Some(CgroupPod { uid, qos })
}

/// `kubepods`, `kubepods.slice`, `kubelet-kubepods.slice` (kind), ...
fn is_kubepods(c: &str) -> bool {
    let name = c.strip_suffix(".slice").unwrap_or(c);
    name == "kubepods" || name.ends_with("-kubepods")
}

/// The pod UID of a pod component: `pod<uid>` (cgroupfs) or
/// `...-pod<uid with _>.slice` (systemd).
fn pod_uid(c: &str) -> Option<String> {
    let uid = match c.strip_suffix(".slice") {
        Some(slice) => slice.rsplit_once("-pod")?.1.replace('_', "-"),
        None => c.strip_prefix("pod")?.to_string(),
    };
    is_uid(&uid).then_some(uid)
}

/// A UUID as the API server writes pod UIDs (8-4-4-4-12 hex digits), or
/// the 32 hex digits of a static pod's config hash.
fn is_uid(s: &str) -> bool {
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let groups: Vec<&str> = s.split('-').collect();
    match groups.as_slice() {
        [a, b, c, d, e] => hex(a, 8) && hex(b, 4) && hex(c, 4) && hex(d, 4) && hex(e, 12),
        [one] => hex(one, 32),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904e4b825dc642cb6eb9a060e54";
    const UID: &str = "0f3c9a52-6a2d-4c1e-9b7e-2f1d7a8c9e01";
    const UID_: &str = "0f3c9a52_6a2d_4c1e_9b7e_2f1d7a8c9e01";

    fn container(runtime: Runtime, pod: Option<(&str, Qos)>) -> Option<CgroupContainer> {
        Some(CgroupContainer {
            runtime,
            id: ID.to_string(),
            pod: pod.map(|(uid, qos)| CgroupPod {
                uid: uid.to_string(),
                qos,
            }),
        })
    }

    #[test]
    fn docker() {
        let docker = container(Runtime::Docker, None);
        for path in [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            // Rootless Docker under the user's systemd.
            format!("/user.slice/user-1000.slice/user@1000.service/docker-{ID}.scope"),
            // Seen from inside a cgroup namespace, and a sub-cgroup.
            format!("/../../system.slice/docker-{ID}.scope/init"),
        ] {
            assert_eq!(parse_path(&path), docker, "{path}");
        }
    }

    #[test]
    fn kubernetes_with_containerd_cri_o_and_a_bare_cri_id() {
        let cases = [
            // systemd driver (cgroup v2 default), every QoS class.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                container(Runtime::Containerd, Some((UID, Qos::Burstable))),
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                container(Runtime::Containerd, Some((UID, Qos::Besteffort))),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                container(Runtime::Containerd, Some((UID, Qos::Guaranteed))),
            ),
            // CRI-O, systemd driver, with crun's `container` sub-cgroup.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope/container"),
                container(Runtime::CriO, Some((UID, Qos::Burstable))),
            ),
            // cgroupfs driver: containerd's path does not name it.
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                container(Runtime::Cri, Some((UID, Qos::Besteffort))),
            ),
            (
                format!("/kubepods/pod{UID}/{ID}"),
                container(Runtime::Cri, Some((UID, Qos::Guaranteed))),
            ),
            (
                format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
                container(Runtime::CriO, Some((UID, Qos::Burstable))),
            ),
            // kind (the kubelet under its own slice), seen through a cgroup namespace.
            (
                format!("/../kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                container(Runtime::Containerd, Some((UID, Qos::Besteffort))),
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(parse_path(&path), expected, "{path}");
        }
    }

    #[test]
    fn containerd_without_kubernetes_and_podman() {
        let containerd = container(Runtime::Containerd, None);
        assert_eq!(parse_path(&format!("/default/{ID}")), containerd);
        assert_eq!(parse_path(&format!("/k8s.io/{ID}")), containerd);
        assert_eq!(
            parse_path(&format!("/system.slice/nerdctl-{ID}.scope")),
            containerd
        );
        let podman = container(Runtime::Podman, None);
        for path in [
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            format!(
                "/machine.slice/machine-libpod_pod_{}.slice/libpod-{ID}.scope",
                &ID[..64]
            ),
            format!("/libpod_parent/libpod-{ID}"),
        ] {
            assert_eq!(parse_path(&path), podman, "{path}");
        }
    }

    #[test]
    fn not_containers() {
        for path in [
            "/".to_string(),
            "/user.slice/user-0.slice/session-1.scope".into(),
            "/system.slice/pipeline.service".into(),
            "/process_api/a465d157b1cc510e44292d6e6867598c".into(),
            // Runtime helpers, not the container's processes.
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
            // A 64-hex id deeper than containerd's /<namespace>/<id> and
            // outside Kubernetes and Docker: unknown.
            format!("/a/b/{ID}"),
            // Too short, upper case, not hex.
            format!("/docker/{}", &ID[..63]),
            format!("/docker/{}", ID.to_uppercase()),
            format!("/system.slice/docker-{}x.scope", &ID[..63]),
            // A 64-hex name as the first component is no container.
            format!("/{ID}"),
        ] {
            assert_eq!(parse_path(&path), None, "{path}");
        }
        // A pod directory with no valid UID: the container without a pod.
        assert_eq!(
            parse_path(&format!("/kubepods/burstable/podnotauid/crio-{ID}")),
            container(Runtime::CriO, None)
        );
    }

    #[test]
    fn hybrid_and_v2_files() {
        // Hybrid, Docker with the systemd driver: every hierarchy names it.
        let hybrid = format!(
            "12:pids:/system.slice/docker-{ID}.scope\n\
             3:cpu,cpuacct:/system.slice/docker-{ID}.scope\n\
             1:name=systemd:/system.slice/docker-{ID}.scope\n\
             0::/system.slice/docker-{ID}.scope\n"
        );
        let lines = parse_lines(&hybrid);
        assert_eq!(lines.len(), 4);
        let (c, path) = container_of(&lines).unwrap();
        assert_eq!(c.runtime, Runtime::Docker);
        assert_eq!(path, format!("/system.slice/docker-{ID}.scope"));

        // Hybrid, cgroupfs driver: v2 stays at the shim's cgroup; v1 names
        // the container.
        let cgroupfs = format!(
            "9:name=systemd:/docker/{ID}\n8:pids:/docker/{ID}\n0::/system.slice/containerd.service\n"
        );
        let lines = parse_lines(&cgroupfs);
        let (c, path) = container_of(&lines).unwrap();
        assert_eq!(
            (c.runtime, path),
            (Runtime::Docker, &*format!("/docker/{ID}"))
        );
        assert_eq!(main_path(&lines), Some("/system.slice/containerd.service"));

        // Only a v1 controller hierarchy names the container.
        let pids_only = format!("8:pids:/kubepods/burstable/pod{UID}/{ID}\n4:memory:/\n0::/\n");
        let lines = parse_lines(&pids_only);
        let (c, _) = container_of(&lines).unwrap();
        assert_eq!(c.runtime, Runtime::Cri);
        assert_eq!(c.pod.unwrap().uid, UID);
        assert_eq!(
            main_path(&lines),
            Some(&*format!("/kubepods/burstable/pod{UID}/{ID}"))
        );

        // Pure v2.
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            container_of(&parse_lines(&v2)).map(|(c, _)| c.runtime),
            Some(Runtime::Docker)
        );

        // No container anywhere; a malformed line is skipped.
        let host = "9:name=systemd:/\n0::/user.slice\ngarbage\n";
        let lines = parse_lines(host);
        assert_eq!(lines.len(), 2);
        assert_eq!(container_of(&lines), None);
        assert_eq!(main_path(&lines), Some("/user.slice"));
        assert_eq!(main_path(&parse_lines("0::/\n")), Some("/"));
        assert_eq!(main_path(&[]), None);
    }
}
