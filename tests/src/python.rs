//! Python fixtures (tests/fixtures/python): the interpreter matrix with its
//! venvs, a fixture process held at its go file, and a private MQTT broker.
//!
//! - [`python_matrix`]: every interpreter of the matrix whose venv setup
//!   completed ([`PyEnv`]); [`pipeline_matrix`]: those that also have
//!   pipeline.py's packages. A missing interpreter or venv panics under
//!   `CI=true` and is skipped with a printed reason elsewhere.
//! - [`PyFixture::start`] runs `<venv>/bin/python <fixture> ARGS...` (the
//!   interpreter itself: the venv's `bin/python` is a symlink to it, so the
//!   pid is the interpreter's, never a pyenv shim's) with `--ready-file`,
//!   `--go-file` and `--report`, and returns once the fixture has imported
//!   everything and waits at the go file; [`PyFixture::go`],
//!   [`PyFixture::wait`] -> [`PyRun`] (stdout, stderr, parsed report).
//! - [`Mosquitto::start`] runs a broker on a free loopback port from a
//!   config written here (no persistence); [`Mosquitto::subscribe`] starts
//!   `mosquitto_sub` and returns once the broker acknowledged the
//!   subscription.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::python_env::{self, VenvStatus, PIPELINE_PACKAGES};
use crate::{free_port, scratch_dir, wait_timeout, workspace_root};

/// Whether tests run under CI (`CI=true`): a missing prerequisite fails.
pub fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Under CI, panics with `why`; elsewhere prints `skipped: why` and
/// returns false.
pub fn require(ok: bool, why: impl FnOnce() -> String) -> bool {
    if ok {
        return true;
    }
    let why = why();
    if under_ci() {
        panic!("CI=true: {why}");
    }
    eprintln!("skipped: {why}");
    false
}

/// `tests/fixtures/python/NAME`.
pub fn python_fixture(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/python").join(name)
}

/// One interpreter of the matrix with its complete venv.
#[derive(Debug, Clone)]
pub struct PyEnv {
    /// `3.10`, `3.11`, `3.12`, `3.13`, `deb-3.11`.
    pub label: &'static str,
    /// `3.12.1`.
    pub version: String,
    /// The interpreter executable itself (what `/proc/PID/exe` shows).
    pub exe: PathBuf,
    /// `<venv>/bin/python` (a symlink to `exe`): run fixtures with this.
    pub python: PathBuf,
    pub venv: PathBuf,
    /// pyenv builds: `<prefix>/lib/libpython3.X.so.1.0` (where the eval
    /// loop lives); None for Debian's statically linked interpreter.
    pub libpython: Option<PathBuf>,
    /// What setup recorded (pins installed, packages without a wheel).
    pub status: VenvStatus,
}

impl PyEnv {
    /// pipeline.py's packages (pip names) setup could not install here.
    pub fn missing_pipeline_packages(&self) -> Vec<&'static str> {
        PIPELINE_PACKAGES
            .iter()
            .map(|(pkg, _)| *pkg)
            .filter(|pkg| self.status.is_missing(pkg))
            .collect()
    }

    pub fn has_pipeline(&self) -> bool {
        self.missing_pipeline_packages().is_empty()
    }

    /// `Python 3.12.1 (3.12)`, for messages.
    pub fn name(&self) -> String {
        format!("CPython {} ({})", self.version, self.label)
    }
}

fn requirements_hash() -> String {
    let path = python_fixture("requirements.txt");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
    python_env::fnv1a_hex(&bytes)
}

/// The matrix slot's environment, or why it cannot be used.
fn load_env(slot: &python_env::Slot, req_hash: &str) -> Result<PyEnv, String> {
    let interp = python_env::find(slot)?;
    let venv = interp.venv();
    let status = VenvStatus::read(&venv).ok_or_else(|| {
        format!(
            "no complete venv at {} for {} (run cargo xtask setup)",
            venv.display(),
            interp.exe.display()
        )
    })?;
    if status.requirements != req_hash
        || status.version != interp.version
        || Path::new(&status.interpreter) != interp.exe
    {
        return Err(format!(
            "venv {} is out of date (interpreter or tests/fixtures/python/requirements.txt \
             changed): run cargo xtask setup",
            venv.display()
        ));
    }
    let python = interp.venv_python();
    let real = |p: &Path| std::fs::canonicalize(p).ok();
    if real(&python).is_none() || real(&python) != real(&interp.exe) {
        return Err(format!(
            "{} does not lead to {} (run cargo xtask setup)",
            python.display(),
            interp.exe.display()
        ));
    }
    let minor = interp.version.split('.').nth(1).unwrap_or("0").to_string();
    let libpython = interp
        .exe
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join(format!("lib/libpython3.{minor}.so.1.0")))
        .filter(|p| matches!(slot.source, python_env::Source::Pyenv { .. }) && p.is_file());
    Ok(PyEnv {
        label: slot.label,
        version: interp.version.clone(),
        exe: interp.exe.clone(),
        python,
        venv,
        libpython,
        status,
    })
}

/// Every interpreter of the matrix with a complete, current venv, in matrix
/// order. Looked up once per test process. A slot that is not usable panics
/// under `CI=true` (setup must have made it), else is left out with a
/// printed `skipped:` reason.
pub fn python_matrix() -> Vec<PyEnv> {
    static MATRIX: OnceLock<Vec<Result<PyEnv, String>>> = OnceLock::new();
    let all = MATRIX.get_or_init(|| {
        let req = requirements_hash();
        python_env::MATRIX
            .iter()
            .map(|slot| load_env(slot, &req).map_err(|e| format!("Python {}: {e}", slot.label)))
            .collect()
    });
    let mut found = Vec::new();
    for entry in all {
        match entry {
            Ok(env) => found.push(env.clone()),
            Err(why) => {
                require(false, || why.clone());
            }
        }
    }
    found
}

/// The interpreters of [`python_matrix`] that have every package of
/// pipeline.py. Others are skipped with a printed reason, also under CI
/// when setup recorded that a package has no wheel for them. Under CI it
/// panics unless Debian's 3.11 and at least one other interpreter are
/// among them.
pub fn pipeline_matrix() -> Vec<PyEnv> {
    let (ok, without): (Vec<PyEnv>, Vec<PyEnv>) =
        python_matrix().into_iter().partition(PyEnv::has_pipeline);
    for env in &without {
        eprintln!(
            "skipped: pipeline.py on {}: no wheel for {} here ({})",
            env.name(),
            env.missing_pipeline_packages().join(", "),
            env.status.missing.join("; ")
        );
    }
    if under_ci() {
        assert!(
            ok.iter().any(|e| e.label == "deb-3.11") && ok.len() >= 2,
            "CI=true: pipeline.py must run on Debian's python3.11 and one more interpreter; \
             it can run on: {:?}",
            ok.iter().map(|e| e.label).collect::<Vec<_>>()
        );
    }
    ok
}

// ---------------------------------------------------------------------------
// Fixture processes

/// A Python fixture started with `--ready-file`, `--go-file` and
/// `--report` in a scratch directory. Dropping it SIGKILLs the process.
pub struct PyFixture {
    child: Child,
    pub env: PyEnv,
    pub script: String,
    pub dir: PathBuf,
    go_file: PathBuf,
    report_file: PathBuf,
    stdout: Option<JoinHandle<String>>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
}

/// What a finished fixture printed and reported.
#[derive(Debug, Clone)]
pub struct PyRun {
    pub status: ExitStatus,
    pub pid: u32,
    pub stdout: String,
    pub stderr: String,
    /// The `--report` JSON (Null when the fixture wrote none).
    pub report: Value,
}

/// How long [`PyFixture::start`] waits for the fixture's imports and set-up.
pub const PY_READY_TIMEOUT: Duration = Duration::from_secs(120);

impl PyFixture {
    /// Starts `<env.python> tests/fixtures/python/SCRIPT ARGS... --ready-file
    /// D/ready --go-file D/go --report D/report.json` and waits until it is
    /// ready (imports done, waiting for the go file). Checks that the ready
    /// file's pid is the child's and that `/proc/PID/exe` is the interpreter
    /// itself. Panics, with the fixture's stderr, if it exits first.
    pub fn start(env: &PyEnv, script: &str, args: &[&str]) -> PyFixture {
        let dir = scratch_dir(&format!(
            "py-{}-{}",
            env.label,
            script.trim_end_matches(".py")
        ));
        let ready_file = dir.join("ready");
        let go_file = dir.join("go");
        let report_file = dir.join("report.json");
        let mut cmd = Command::new(&env.python);
        cmd.arg(python_fixture(script))
            .args(args)
            .arg("--ready-file")
            .arg(&ready_file)
            .arg("--go-file")
            .arg(&go_file)
            .arg("--report")
            .arg(&report_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut out = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                lock(&sink).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut fx = PyFixture {
            child,
            env: env.clone(),
            script: script.to_string(),
            dir,
            go_file,
            report_file,
            stdout: Some(stdout),
            stderr,
            stderr_thread: Some(stderr_thread),
        };
        fx.wait_ready(&ready_file);
        fx
    }

    fn wait_ready(&mut self, ready_file: &Path) {
        let deadline = Instant::now() + PY_READY_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(ready_file) {
                let pid: u32 = text
                    .trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{ready_file:?}: no pid ({e}): {text:?}"));
                assert_eq!(
                    pid,
                    self.child.id(),
                    "{} reports pid {pid} but the process started is {}",
                    self.script,
                    self.child.id()
                );
                let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                    .unwrap_or_else(|e| panic!("/proc/{pid}/exe: {e}"));
                let want = std::fs::canonicalize(&self.env.exe).expect("interpreter path");
                assert_eq!(
                    exe, want,
                    "pid {pid} runs {exe:?}, not the interpreter {want:?}"
                );
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_stderr();
                panic!(
                    "{} on {} exited ({status}) before it was ready; stderr:\n{}",
                    self.script,
                    self.env.name(),
                    self.stderr_so_far()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} on {} not ready within {PY_READY_TIMEOUT:?}; stderr:\n{}",
                    self.script,
                    self.env.name(),
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The interpreter's pid (the process itself, no wrapper).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Lets the fixture start its work.
    pub fn go(&self) {
        std::fs::write(&self.go_file, b"go\n")
            .unwrap_or_else(|e| panic!("writing {:?}: {e}", self.go_file));
    }

    /// Sends `sig` (pipeline.py: SIGINT/SIGTERM stop after the current frame).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    pub fn stderr_so_far(&self) -> String {
        lock(&self.stderr).clone()
    }

    fn join_stderr(&mut self) {
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
    }

    /// Waits for exit (SIGKILL + panic after `timeout`) and collects stdout,
    /// stderr and the report. Does not check the exit status.
    pub fn wait_any(mut self, timeout: Duration) -> PyRun {
        let pid = self.child.id();
        let status = match wait_timeout(&mut self.child, timeout) {
            Some(s) => s,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.join_stderr();
                panic!(
                    "{} on {} did not exit within {timeout:?}; stderr:\n{}",
                    self.script,
                    self.env.name(),
                    self.stderr_so_far()
                );
            }
        };
        let stdout = self
            .stdout
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        self.join_stderr();
        let report = match std::fs::read_to_string(&self.report_file) {
            Ok(text) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{:?}: not JSON ({e})", self.report_file)),
            Err(_) => Value::Null,
        };
        PyRun {
            status,
            pid,
            stdout,
            stderr: self.stderr_so_far(),
            report,
        }
    }

    /// Like [`PyFixture::wait_any`], and asserts exit status 0 and a report.
    pub fn wait(self, timeout: Duration) -> PyRun {
        let label = format!("{} on {}", self.script, self.env.name());
        let run = self.wait_any(timeout);
        assert!(
            run.status.success(),
            "{label} failed ({}); stderr:\n{}\nstdout tail:\n{}",
            run.status,
            run.stderr,
            tail(&run.stdout, 5)
        );
        assert!(!run.report.is_null(), "{label} wrote no report");
        run
    }

    /// start + go + wait.
    pub fn run(env: &PyEnv, script: &str, args: &[&str], timeout: Duration) -> PyRun {
        let fx = PyFixture::start(env, script, args);
        fx.go();
        fx.wait(timeout)
    }
}

impl Drop for PyFixture {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// MQTT broker

/// Debian's broker binary (package mosquitto).
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// Debian's subscriber client (package mosquitto-clients).
pub const MOSQUITTO_SUB: &str = "/usr/bin/mosquitto_sub";

/// Whether the broker and its clients are installed: panics under CI,
/// else prints the skip reason.
pub fn require_mosquitto() -> bool {
    require(
        Path::new(MOSQUITTO).is_file() && Path::new(MOSQUITTO_SUB).is_file(),
        || {
            format!("{MOSQUITTO} or {MOSQUITTO_SUB} is missing: run cargo xtask setup (Debian mosquitto, mosquitto-clients)")
        },
    )
}

/// A private mosquitto on 127.0.0.1:`port` (anonymous, no persistence,
/// log on its stderr). Dropping it SIGKILLs the broker.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Mosquitto {
    /// Starts the broker on a free loopback port and waits until it accepts
    /// connections (retries with another port if the port was taken).
    pub fn start() -> Mosquitto {
        let dir = scratch_dir("mosquitto");
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "# written by the adeline-trace test harness\n\
                     listener {port} 127.0.0.1\n\
                     allow_anonymous true\n\
                     persistence false\n\
                     log_dest stderr\n\
                     log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
                     connection_messages true\n"
                ),
            )
            .unwrap_or_else(|e| panic!("writing {conf:?}: {e}"));
            let mut child = Command::new(MOSQUITTO)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {MOSQUITTO}: {e} (run cargo xtask setup)")
                });
            let log = Arc::new(Mutex::new(String::new()));
            let mut pipe = child.stderr.take().expect("piped stderr");
            let sink = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    lock(&sink).push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Mosquitto {
                        child,
                        port,
                        dir,
                        log,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile? try another
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "mosquitto did not accept connections on 127.0.0.1:{port} within 10 s; log:\n{}",
                        lock(&log)
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(50));
            last_log = lock(&log).clone();
        }
        panic!("mosquitto would not start; last log:\n{last_log}");
    }

    /// `127.0.0.1:PORT`, for pipeline.py's `--broker`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        lock(&self.log).clone()
    }

    /// Subscribes to `topic` (exact, no wildcards) with QoS 1; returns once
    /// the broker acknowledged the subscription.
    pub fn subscribe(&self, topic: &str) -> MqttSubscriber {
        assert!(
            !topic.contains(['+', '#']),
            "subscribe to an exact topic: {topic}"
        );
        // Line-buffered stdout (coreutils stdbuf): mosquitto_sub's debug
        // lines, the SUBACK among them, are block-buffered into a pipe.
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg(MOSQUITTO_SUB)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-t", topic, "-q", "1", "-v", "-d"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {MOSQUITTO_SUB}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sub = MqttSubscriber {
            child,
            rx,
            prefix: format!("{topic} "),
            messages: Vec::new(),
            debug: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match sub.rx.recv_timeout(left) {
                Ok(line) => {
                    let acked = line.contains("received SUBACK");
                    sub.take(line);
                    if acked {
                        return sub;
                    }
                }
                Err(_) => panic!(
                    "mosquitto_sub got no SUBACK for {topic} within 10 s; it printed:\n{}\nbroker log:\n{}",
                    sub.debug.join("\n"),
                    self.log()
                ),
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `mosquitto_sub -v -d` on one topic.
pub struct MqttSubscriber {
    child: Child,
    rx: Receiver<String>,
    prefix: String,
    /// Payloads received so far, in order.
    messages: Vec<String>,
    /// mosquitto_sub's debug lines (CONNACK, SUBACK, PUBLISH, PUBACK ...).
    pub debug: Vec<String>,
}

impl MqttSubscriber {
    fn take(&mut self, line: String) {
        match line.strip_prefix(&self.prefix) {
            Some(payload) => self.messages.push(payload.to_string()),
            None => self.debug.push(line),
        }
    }

    /// Waits until `n` messages arrived (or `timeout` passed), stops the
    /// subscriber and returns every payload received, in order.
    pub fn wait_messages(mut self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        while self.messages.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => self.take(line),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // A short grace period shows extra (unexpected) messages too.
        while let Ok(line) = self.rx.recv_timeout(Duration::from_millis(100)) {
            self.take(line);
        }
        std::mem::take(&mut self.messages)
    }
}

impl Drop for MqttSubscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
