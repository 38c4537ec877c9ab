//! A pod's namespace and name, and a container's name, from the log
//! directories the kubelet keeps on every node (the cgroup path only
//! carries the pod UID and the container id):
//!
//! - `/var/log/pods/<namespace>_<pod name>_<pod uid>/<container name>/`
//! - `/var/log/containers/<pod name>_<namespace>_<container name>-<container id>.log`
//!   (a symlink into the former)
//!
//! Both are what log shippers read; in a DaemonSet, mount them read-only.
use std::path::{Path, PathBuf};

/// Where the kubelet keeps pod logs (`run --kubelet-pods-dir`).
pub const DEFAULT_PODS_DIR: &str = "/var/log/pods";

/// A pod's namespace and name, found by UID under `pods_dir`.
pub fn pod_by_uid(pods_dir: &Path, uid: &str) -> Option<(String, String)> {
    let entries = std::fs::read_dir(pods_dir).ok()?;
    entries.flatten().find_map(|e| {
        let name = e.file_name();
        let (namespace, pod, found) = split_pod_dir(name.to_str()?)?;
        (found == uid).then(|| (namespace.to_string(), pod.to_string()))
    })
}

/// `<namespace>_<pod>_<uid>`: namespaces and pod names never hold `_`
/// (DNS labels and subdomains), so the split is unambiguous.
fn split_pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let (namespace, rest) = name.split_once('_')?;
    let (pod, uid) = rest.split_once('_')?;
    Some((namespace, pod, uid))
}

/// The kubelet's `containers` directory beside its pods directory.
pub fn containers_dir(pods_dir: &Path) -> PathBuf {
    pods_dir
        .parent()
        .unwrap_or(Path::new("/"))
        .join("containers")
}

/// The name of the container with id `id` in pod `pod` of `namespace`,
/// from its log symlink in `containers_dir`.
pub fn container_name(
    containers_dir: &Path,
    namespace: &str,
    pod: &str,
    id: &str,
) -> Option<String> {
    let prefix = format!("{pod}_{namespace}_");
    let suffix = format!("-{id}.log");
    let entries = std::fs::read_dir(containers_dir).ok()?;
    entries.flatten().find_map(|e| {
        let name = e.file_name();
        let name = name.to_str()?;
        let container = name.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
        (!container.is_empty()).then(|| container.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_and_containers_from_the_log_directories() {
        let root = tempfile::tempdir().unwrap();
        let pods = root.path().join("pods");
        let containers = root.path().join("containers");
        let uid = "0f3c9a52-6a2d-4c1e-9b7e-2f1d7a8c9e01";
        let id = "4b825dc642cb6eb9a060e54bf8d69288fbee4904e4b825dc642cb6eb9a060e54";
        for dir in [
            pods.join(
                "kube-system_coredns-5d78c9869d-abcde_11111111-2222-3333-4444-555555555555/coredns",
            ),
            pods.join(format!("vision_detector-7c9f_{uid}/infer")),
            containers.clone(),
        ] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(
            containers.join(format!("detector-7c9f_vision_infer-{id}.log")),
            "",
        )
        .unwrap();
        std::fs::write(containers.join(format!("other_vision_x-{id}.log")), "").unwrap();

        assert_eq!(
            pod_by_uid(&pods, uid),
            Some(("vision".to_string(), "detector-7c9f".to_string()))
        );
        assert_eq!(pod_by_uid(&pods, "no-such-uid"), None);
        assert_eq!(pod_by_uid(&root.path().join("missing"), uid), None);
        assert_eq!(containers_dir(&pods), containers);
        assert_eq!(
            container_name(&containers, "vision", "detector-7c9f", id).as_deref(),
            Some("infer")
        );
        assert_eq!(
            container_name(&containers, "vision", "detector-7c9f", "ab"),
            None
        );
        assert_eq!(split_pod_dir("a_b"), None);
    }
}
