//! A demo pipeline in pid and mount namespaces of its own, made by
//! `unshare` (util-linux): a process as a container runtime would start it.
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{demo_bin, scratch_dir, wait_timeout};

/// `unshare --pid --mount --fork --mount-proc`: a demo pipeline in new pid
/// and mount namespaces. With `private_path`, a tmpfs is mounted on /mnt
/// inside and the demo is copied to /mnt/app/pipeline and run from there,
/// a path that exists in no other mount namespace.
pub struct Namespaced {
    unshare: Child,
    /// The demo's pid as the host sees it (unshare's child).
    pub host_pid: u32,
    go_file: PathBuf,
}

impl Namespaced {
    pub fn start(private_path: bool, demo_args: &str) -> Namespaced {
        let demo = demo_bin();
        let go_file = scratch_dir("ns").join("go");
        let exec = if private_path {
            format!(
                "mount -t tmpfs tmpfs /mnt && mkdir /mnt/app && cp {} /mnt/app/pipeline && exec /mnt/app/pipeline",
                demo.display()
            )
        } else {
            format!("exec {}", demo.display())
        };
        let script = format!("{exec} {demo_args} --go-file {}", go_file.display());
        let unshare = Command::new("unshare")
            .args(["--pid", "--mount", "--fork", "--mount-proc", "sh", "-c"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare (util-linux)");
        // unshare forks once: its child is the namespace's pid 1, which
        // execs the demo.
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        let host_pid = loop {
            let found = std::fs::read_to_string(&children)
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok());
            let execed = found.filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
                    let name = exe.file_name().unwrap_or_default().to_string_lossy();
                    name == "pipeline" || name == "demo-pipeline"
                }) && std::fs::read_to_string(format!("/proc/{pid}/maps"))
                    .is_ok_and(|m| m.contains("libc.so"))
            });
            if let Some(pid) = execed {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not start in its namespaces"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        Namespaced {
            unshare,
            host_pid,
            go_file,
        }
    }

    pub fn go(&self) {
        std::fs::write(&self.go_file, "go\n").expect("go file");
    }

    /// Waits for the demo to finish; its report.
    pub fn wait(mut self) -> Value {
        let status = wait_timeout(&mut self.unshare, Duration::from_secs(60))
            .expect("the namespaced demo did not finish");
        let mut out = String::new();
        self.unshare
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut out)
            .expect("report");
        assert!(status.success(), "namespaced demo failed: {status}; {out}");
        let line = out
            .lines()
            .find(|l| l.contains("\"fixture\""))
            .unwrap_or_else(|| panic!("no report: {out}"));
        serde_json::from_str(line).expect("report JSON")
    }
}

impl Drop for Namespaced {
    fn drop(&mut self) {
        if matches!(self.unshare.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the namespace's init (our grandchild) and
            // on unshare itself.
            unsafe { libc::kill(self.host_pid as libc::pid_t, libc::SIGKILL) };
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
    }
}
