//! `exec` hooks: run a rule's shell command with the alert JSON on stdin.
//!
//! [`HookRunner::run`] never blocks its caller: it spawns `sh -c EXEC` in a
//! process group of its own and hands the child to a supervisor thread, which
//! writes the event (from one more thread, so a hook that never reads stdin
//! cannot delay the timeout), waits for the exit, kills the whole group after
//! the timeout (10 s by default) and reaps the child: no zombies. A hook that
//! fails, cannot start or times out prints one warning line on stderr. The
//! hook's stdout goes to the agent's stderr, never into the JSON stream.
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::AlertEvent;
use crate::{
    events::SCHEMA_VERSION,
    journal::{self, Priority},
};

/// How long a hook may run before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Most hooks running at once; beyond that new ones are skipped with a warning
/// (a flapping rule must not fork without bound).
pub const MAX_RUNNING_HOOKS: usize = 32;

/// How often a supervisor checks whether its hook has exited.
const POLL: Duration = Duration::from_millis(10);

/// One hook to run: the rule's command and the event it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct HookJob {
    pub exec: String,
    pub event: AlertEvent,
}

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// Exited with status 0.
    Ok,
    /// Exited with a non-zero status or was killed by a signal.
    Failed(ExitStatus),
    /// Still running after the timeout: killed.
    TimedOut,
    /// Could not be started or waited for.
    Error(String),
    /// Not started: too many hooks were running.
    Skipped,
}

/// The alert as one JSON object: the [`AlertEvent`] with `"v"` and
/// `"type":"alert"`, the same object the JSON Lines stream carries.
pub fn alert_json(event: &AlertEvent) -> String {
    #[derive(Serialize)]
    struct Record<'a> {
        v: u32,
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(flatten)]
        event: &'a AlertEvent,
    }
    serde_json::to_string(&Record {
        v: SCHEMA_VERSION,
        kind: "alert",
        event,
    })
    // An AlertEvent always serializes (strings and numbers only).
    .unwrap_or_default()
}

/// Starts hooks and keeps their supervisor threads.
#[derive(Debug)]
pub struct HookRunner {
    timeout: Duration,
    hooks: Vec<Slot>,
}

/// A hook started by [`HookRunner::run`]: supervised, or ended before it ran.
#[derive(Debug)]
enum Slot {
    Supervised(JoinHandle<HookOutcome>),
    Ended(HookOutcome),
}

impl Default for HookRunner {
    fn default() -> Self {
        Self::new()
    }
}

impl HookRunner {
    /// A runner with the default [`HOOK_TIMEOUT`].
    pub fn new() -> HookRunner {
        HookRunner::with_timeout(HOOK_TIMEOUT)
    }

    pub fn with_timeout(timeout: Duration) -> HookRunner {
        HookRunner {
            timeout,
            hooks: Vec::new(),
        }
    }

    /// Starts `sh -c EXEC` with the event's JSON line on stdin and returns at
    /// once. Failures are reported on stderr by the supervisor.
    pub fn run(&mut self, job: &HookJob) {
        self.prune();
        let outcome = if self.running() >= MAX_RUNNING_HOOKS {
            HookOutcome::Skipped
        } else {
            let mut payload = alert_json(&job.event).into_bytes();
            payload.push(b'\n');
            match spawn(&job.exec) {
                Ok(child) => {
                    let exec = job.exec.clone();
                    let timeout = self.timeout;
                    let spawned =
                        thread::Builder::new()
                            .name("alert-hook".into())
                            .spawn(move || {
                                let outcome = supervise(child, payload, timeout);
                                warn(&exec, &outcome);
                                outcome
                            });
                    match spawned {
                        Ok(handle) => {
                            self.hooks.push(Slot::Supervised(handle));
                            return;
                        }
                        // Only when the system is out of threads; the child
                        // (moved into the closure) cannot be reaped then.
                        Err(e) => HookOutcome::Error(format!("cannot start a thread: {e}")),
                    }
                }
                Err(e) => HookOutcome::Error(e),
            }
        };
        warn(&job.exec, &outcome);
        self.hooks.push(Slot::Ended(outcome));
    }

    /// Hooks still running.
    pub fn running(&self) -> usize {
        self.hooks
            .iter()
            .filter(|slot| matches!(slot, Slot::Supervised(h) if !h.is_finished()))
            .count()
    }

    /// Forgets the hooks that ended once there are many of them, so a long
    /// run keeps a bounded list.
    fn prune(&mut self) {
        if self.hooks.len() >= 2 * MAX_RUNNING_HOOKS {
            self.hooks
                .retain(|slot| matches!(slot, Slot::Supervised(h) if !h.is_finished()));
        }
    }

    /// Waits for every hook still running (each at most its timeout) and
    /// returns how the hooks not yet forgotten ended, in start order. Call it when the run ends so
    /// that the last `resolved` hooks complete.
    pub fn finish(&mut self) -> Vec<HookOutcome> {
        self.hooks
            .drain(..)
            .map(|slot| match slot {
                Slot::Ended(outcome) => outcome,
                Slot::Supervised(h) => h
                    .join()
                    .unwrap_or_else(|_| HookOutcome::Error("hook supervisor panicked".into())),
            })
            .collect()
    }
}

/// `sh -c EXEC` in its own process group, stdin piped, stdout to our stderr.
fn spawn(exec: &str) -> Result<Child, String> {
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    Command::new("sh")
        .arg("-c")
        .arg(exec)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))
}

/// Feeds stdin, waits up to `timeout`, kills the group if needed, reaps.
fn supervise(mut child: Child, payload: Vec<u8>, timeout: Duration) -> HookOutcome {
    let started = Instant::now();
    if let Some(mut stdin) = child.stdin.take() {
        // Detached: ends when the payload is written or the pipe closes (the
        // hook exited or was killed). A hook that ignores stdin is fine.
        let _ = thread::Builder::new()
            .name("alert-hook-stdin".into())
            .spawn(move || {
                let _ = stdin.write_all(&payload);
            });
    }
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return HookOutcome::Ok,
            Ok(Some(status)) => return HookOutcome::Failed(status),
            Ok(None) if started.elapsed() >= timeout => {
                kill_group(&mut child);
                return HookOutcome::TimedOut;
            }
            Ok(None) => thread::sleep(POLL.min(timeout.saturating_sub(started.elapsed()))),
            Err(e) => {
                kill_group(&mut child);
                return HookOutcome::Error(format!("cannot wait for the hook: {e}"));
            }
        }
    }
}

/// SIGKILL to the hook's process group (the shell and what it started), then reap.
fn kill_group(child: &mut Child) {
    if let Ok(pgid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory effects; -pgid names the group the
        // child leads (process_group(0) made its pid the group id).
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One warning line on stderr for anything but success.
fn warn(exec: &str, outcome: &HookOutcome) {
    let what = match outcome {
        HookOutcome::Ok => return,
        HookOutcome::Failed(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => format!("failed ({status})"),
        },
        HookOutcome::TimedOut => "was killed after the timeout".to_string(),
        HookOutcome::Error(e) => e.clone(),
        HookOutcome::Skipped => format!("was skipped: {MAX_RUNNING_HOOKS} hooks are still running"),
    };
    // During the run: a closed stderr must not stop it (eprintln! panics).
    let _ = writeln!(
        std::io::stderr(),
        "{}warning: alert hook {exec:?} {what}",
        journal::prefix(Priority::Warning)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::AlertState;

    fn event() -> AlertEvent {
        AlertEvent {
            state: AlertState::Firing,
            rule: "p99(infer) > 50ms for 5s".into(),
            value: 61_000_000.0,
            threshold: 50_000_000.0,
            since_ns: 1_000,
            ts_ns: 5_000_001_000,
        }
    }

    fn job(exec: String) -> HookJob {
        HookJob {
            exec,
            event: event(),
        }
    }

    #[test]
    fn json_has_version_and_type() {
        let v: serde_json::Value = serde_json::from_str(&alert_json(&event())).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["type"], "alert");
        assert_eq!(v["state"], "firing");
        assert_eq!(v["rule"], "p99(infer) > 50ms for 5s");
        assert_eq!(v["threshold"], 50_000_000.0);
        assert_eq!(v["since_ns"], 1_000);
        assert_eq!(v["ts_ns"], 5_000_001_000u64);
    }

    #[test]
    fn hook_gets_the_event_on_stdin_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alert.json");
        let mut runner = HookRunner::new();
        let t = Instant::now();
        // The hook is slow: run() must still return at once.
        runner.run(&job(format!("sleep 0.3; cat > '{}'", file.display())));
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(runner.running(), 1);
        assert_eq!(runner.finish(), vec![HookOutcome::Ok]);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "alert");
        assert_eq!(v["value"], 61_000_000.0);
        assert_eq!(runner.running(), 0);
    }

    #[test]
    fn failing_slow_and_deaf_hooks() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut runner = HookRunner::with_timeout(Duration::from_millis(300));
        runner.run(&job("exit 3".into()));
        // Ignores stdin, leaves a grandchild: the whole group must die.
        runner.run(&job(format!(
            "sleep 30 & echo $! > '{}'; wait",
            pid_file.display()
        )));
        runner.run(&job("true".into()));
        let t = Instant::now();
        let outcomes = runner.finish();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(matches!(&outcomes[0], HookOutcome::Failed(s) if s.code() == Some(3)));
        assert_eq!(outcomes[1], HookOutcome::TimedOut);
        assert_eq!(outcomes[2], HookOutcome::Ok);
        let pid: libc::pid_t = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild `sleep` was killed with the group (it may take a moment
        // to be reaped by init; it must at least no longer be `sleep` running).
        thread::sleep(Duration::from_millis(100));
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z "),
            "grandchild still running: {state}"
        );
    }
}
