//! Harness for the adeline-trace integration tests (`tests/suite/*.rs`).
//!
//! - [`require_bpf`]: start every test that loads BPF with
//!   `if !require_bpf() { return; }` (skips unless root; fails under CI=true).
//! - Binaries: [`agent_bin`] and [`demo_bin`] build with cargo once per test
//!   process; [`cpp_fixture`] builds the C++ fixture with g++ once, and
//!   [`many_fixture`] the 5,000-function C fixture with gcc.
//! - [`Agent`] drives `adeline-trace` (JSON Lines on stdout, stderr captured);
//!   [`AgentOutput`] holds what it printed.
//! - [`Pipeline`] runs a fixture pipeline held at `--go-file` until
//!   [`Pipeline::go`], so a tracer can attach by pid first.
//! - [`adeline_bpf_programs`]: our BPF programs still loaded in the kernel;
//!   [`bpf_link_types`]: the BPF links a process holds.
//! - [`cgroup`]: real cgroups named as container runtimes name theirs;
//!   [`otlp`]: an OTLP/HTTP receiver decoding with the upstream protobuf
//!   definitions.
//! - Python fixtures (module `python`, re-exported): [`python_matrix`] /
//!   [`pipeline_matrix`] (the interpreters and their venvs, from
//!   [`python_env`]), [`PyFixture`] (a fixture held at its go file, its
//!   real pid, stdout and JSON report), [`Mosquitto`] (a private broker on a
//!   free loopback port) and [`MqttSubscriber`]. See
//!   tests/fixtures/python/README.md.
//!
//! Binaries are built with the same profile and into the same target
//! directory as the running test executable (`<target>/<profile>/deps/...`),
//! so `cargo test` and `cargo test --release` each find their own.

pub mod python_env;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod cgroup;
pub mod namespaces;
pub mod otlp;
mod python;
pub use python::*;

/// How long [`Agent::stop`] and [`Pipeline::wait`] wait before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

#[path = "../fixtures/demo_stages.rs"]
mod demo_stages;
pub use demo_stages::DEMO_STAGES;

// ---------------------------------------------------------------------------
// Privileges

/// Whether this test can load BPF (effective uid 0).
///
/// When it cannot: panics under `CI=true` (CI must run these tests), else
/// prints the skip reason on stderr and returns false.
pub fn require_bpf() -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: this test needs root to load BPF (effective uid is {euid})");
    }
    eprintln!(
        "skipped: this test needs root to load BPF (effective uid is {euid}); \
         run as root: sudo -E cargo xtask test"
    );
    false
}

// ---------------------------------------------------------------------------
// Paths and builds

/// The workspace root (the parent of this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

struct Layout {
    target_dir: PathBuf,
    profile_dir: PathBuf,
    cargo_profile: String,
}

/// Derived from the running test executable, `<target>/<profile>/deps/<exe>`;
/// falls back to `$CARGO_TARGET_DIR` (or `<root>/target`) and `debug`.
fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let exe = std::env::current_exe().ok();
        let deps = exe.as_deref().and_then(Path::parent);
        if let Some(deps) = deps.filter(|d| d.file_name().is_some_and(|n| n == "deps")) {
            let profile_dir = deps.parent().expect("deps has a parent").to_path_buf();
            let target_dir = profile_dir
                .parent()
                .expect("profile dir has a parent")
                .to_path_buf();
            let name = profile_dir
                .file_name()
                .expect("profile dir has a name")
                .to_string_lossy()
                .into_owned();
            let cargo_profile = if name == "debug" { "dev".into() } else { name };
            return Layout {
                target_dir,
                profile_dir,
                cargo_profile,
            };
        }
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(d) => workspace_root().join(d),
            None => workspace_root().join("target"),
        };
        Layout {
            profile_dir: target_dir.join("debug"),
            target_dir,
            cargo_profile: "dev".into(),
        }
    })
}

/// The cargo target directory the test binaries live in.
pub fn target_dir() -> PathBuf {
    layout().target_dir.clone()
}

/// Runs `cargo build -p PACKAGE --bin BIN` from the workspace root with the
/// test's profile and target dir; returns the binary's path.
fn cargo_build_bin(package: &str, bin: &str) -> PathBuf {
    let l = layout();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "-p", package, "--bin", bin, "--profile"])
        .arg(&l.cargo_profile)
        .arg("--target-dir")
        .arg(&l.target_dir);
    // Variables cargo set for this test binary are not meant for a nested cargo.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_MANIFEST_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || key == "CARGO_PRIMARY_PACKAGE"
            || key == "CARGO_TARGET_TMPDIR"
        {
            cmd.env_remove(&*key);
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {bin}: {e}"));
    if !out.status.success() {
        panic!(
            "`cargo build -p {package} --bin {bin}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = l.profile_dir.join(bin);
    assert!(path.is_file(), "cargo built {bin} but {path:?} is missing");
    path
}

/// The agent binary, built once per test process
/// (`cargo build -p adeline-trace --bin adeline-trace`).
pub fn agent_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| cargo_build_bin("adeline-trace", "adeline-trace"))
        .clone()
}

/// The demo-pipeline fixture, built once per test process. Integration
/// suites may use `env!("CARGO_BIN_EXE_demo-pipeline")` instead (same file
/// when built with the same profile); this function also works from unit
/// tests and other packages, where that variable does not exist.
pub fn demo_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| cargo_build_bin("adeline-trace-tests", "demo-pipeline"))
        .clone()
}

/// Demo arguments setting every sleeping stage to 0 µs (the pipeline runs
/// flat out).
pub const DEMO_NO_SLEEPS: [&str; 14] = [
    "--sleep-us",
    "decode=0",
    "--sleep-us",
    "preprocess=0",
    "--sleep-us",
    "infer_layer=0",
    "--sleep-us",
    "postprocess=0",
    "--sleep-us",
    "refine=0",
    "--sleep-us",
    "track=0",
    "--sleep-us",
    "publish=0",
];

/// `--stage NAME=DEMO:NAME` for every demo stage, ready for `adeline-trace run`.
pub fn demo_stage_args(demo: &Path) -> Vec<String> {
    DEMO_STAGES
        .iter()
        .flat_map(|s| ["--stage".to_string(), format!("{s}={}:{s}", demo.display())])
        .collect()
}

/// `run <every demo stage> EXTRA... -- <demo> DEMO_ARGS...`: the agent
/// launching the demo pipeline and timing all its stages.
pub fn demo_run_args(extra: &[&str], demo_args: &[&str]) -> Vec<String> {
    let demo = demo_bin();
    let mut args: Vec<String> = vec!["run".into()];
    args.extend(demo_stage_args(&demo));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.push(demo.display().to_string());
    args.extend(demo_args.iter().map(|s| s.to_string()));
    args
}

/// A fresh, empty directory `<target>/tmp/adeline-tests/NAME-PID-N`.
pub fn scratch_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = target_dir()
        .join("tmp/adeline-tests")
        .join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {dir:?}: {e}"));
    dir
}

// ---------------------------------------------------------------------------
// C++ fixture

/// The C++ fixture (sources in tests/fixtures/cpp), built by [`cpp_fixture`]
/// into `<target>/fixtures/cpp`.
#[derive(Debug)]
pub struct CppFixture {
    pub dir: PathBuf,
    /// `cpp-pipeline [FRAMES [GO_FILE]]`, linked to `lib` (rpath $ORIGIN).
    pub exe: PathBuf,
    /// `libdetector.so`: vision::Detector::infer, vision::scale overloads,
    /// vision::normalize<float|int>, vision::pyramid.
    pub lib: PathBuf,
    /// `cpp-pipeline-stripped`: `strip`ped copy of `exe` (no .symtab; the
    /// .note.stapsdt USDT note and .dynsym remain).
    pub stripped: PathBuf,
}

/// Builds the C++ fixture once per test process (g++ -O2 -g; skipped when
/// the outputs are newer than the sources and the commands are unchanged).
/// Panics with the compiler's stderr on failure.
pub fn cpp_fixture() -> &'static CppFixture {
    static FIXTURE: OnceLock<CppFixture> = OnceLock::new();
    FIXTURE.get_or_init(build_cpp_fixture)
}

fn build_cpp_fixture() -> CppFixture {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cpp");
    let dir = target_dir().join("fixtures/cpp");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {dir:?}: {e}"));
    let fx = CppFixture {
        exe: dir.join("cpp-pipeline"),
        lib: dir.join("libdetector.so"),
        stripped: dir.join("cpp-pipeline-stripped"),
        dir: dir.clone(),
    };
    let flags = ["-std=c++17", "-O2", "-g", "-fPIC", "-Wall", "-Wextra"];
    let tmp = |p: &Path| p.with_extension("tmp");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut steps: Vec<(PathBuf, Vec<String>)> = Vec::new();
    let mut lib_cmd: Vec<String> = vec!["g++".into()];
    lib_cmd.extend(flags.iter().map(|f| f.to_string()));
    lib_cmd.extend([
        "-shared".into(),
        "-Wl,-soname,libdetector.so".into(),
        "-o".into(),
        s(&tmp(&fx.lib)),
        s(&src.join("detector.cpp")),
    ]);
    steps.push((fx.lib.clone(), lib_cmd));
    let mut exe_cmd: Vec<String> = vec!["g++".into()];
    exe_cmd.extend(flags.iter().map(|f| f.to_string()));
    exe_cmd.extend([
        "-o".into(),
        s(&tmp(&fx.exe)),
        s(&src.join("main.cpp")),
        format!("-L{}", dir.display()),
        "-ldetector".into(),
        "-Wl,-rpath,$ORIGIN".into(),
    ]);
    steps.push((fx.exe.clone(), exe_cmd));
    steps.push((
        fx.stripped.clone(),
        vec![
            "strip".into(),
            "-o".into(),
            s(&tmp(&fx.stripped)),
            s(&fx.exe),
        ],
    ));

    let stamp_path = dir.join("build-commands.txt");
    let stamp: String = steps.iter().map(|(_, c)| c.join(" ") + "\n").collect();
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest_src = ["detector.hpp", "detector.cpp", "main.cpp"]
        .iter()
        .map(|f| mtime(&src.join(f)).unwrap_or_else(|| panic!("missing fixture source {f}")))
        .max()
        .expect("sources");
    let up_to_date = std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(&stamp)
        && steps
            .iter()
            .all(|(out, _)| mtime(out).is_some_and(|t| t >= newest_src));
    if up_to_date {
        return fx;
    }
    let _ = std::fs::remove_file(&stamp_path);
    for (out, cmd) in &steps {
        let res = Command::new(&cmd[0])
            .args(&cmd[1..])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {} (install it: cargo xtask setup): {e}", cmd[0])
            });
        if !res.status.success() {
            panic!(
                "building the C++ fixture failed ({}):\n$ {}\n{}{}",
                res.status,
                cmd.join(" "),
                String::from_utf8_lossy(&res.stdout),
                String::from_utf8_lossy(&res.stderr)
            );
        }
        // Rename into place: never rewrite a file a running process maps.
        std::fs::rename(tmp(out), out).unwrap_or_else(|e| panic!("renaming to {out:?}: {e}"));
    }
    std::fs::write(&stamp_path, stamp).unwrap_or_else(|e| panic!("writing {stamp_path:?}: {e}"));
    fx
}

/// Builds the one-file fixture `tests/fixtures/{src}` with `compiler` and
/// `flags` into `<target>/fixtures/{name}` (rebuilt when the source or the
/// command changed; renamed into place so a running copy is never
/// rewritten). Panics with the compiler's output on failure.
pub fn small_fixture(name: &str, src: &str, compiler: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(src);
    let dir = target_dir().join("fixtures");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {dir:?}: {e}"));
    let out = dir.join(name);
    let stamp_path = dir.join(format!("{name}.cmd"));
    let mut cmd: Vec<String> = vec![compiler.to_string()];
    cmd.extend(flags.iter().map(|f| f.to_string()));
    let tmp = out.with_extension("tmp");
    cmd.extend([
        "-o".to_string(),
        tmp.display().to_string(),
        src.display().to_string(),
    ]);
    let stamp = cmd.join(" ");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let src_time = mtime(&src).unwrap_or_else(|| panic!("missing fixture source {src:?}"));
    if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
        && mtime(&out).is_some_and(|t| t >= src_time)
    {
        return out;
    }
    let res = Command::new(&cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler} (install it: cargo xtask setup): {e}"));
    assert!(
        res.status.success(),
        "building fixture {name} failed:\n$ {stamp}\n{}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    std::fs::rename(&tmp, &out).unwrap_or_else(|e| panic!("renaming to {out:?}: {e}"));
    std::fs::write(&stamp_path, stamp).unwrap_or_else(|e| panic!("writing {stamp_path:?}: {e}"));
    out
}

/// Runs `cmd` to completion; its exit status, stdout and stderr.
pub fn run_captured(cmd: &mut Command, timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = r.read_to_string(&mut text);
            text
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let status = wait_timeout(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{cmd:?} did not finish within {timeout:?}")
    });
    (
        status,
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

/// The profiler fixture (tests/fixtures/profile/split.c, `split MODE
/// SECONDS [GO_FILE]`), built with frame pointers into
/// `<target>/fixtures/profile-split`.
pub fn profile_split_fixture() -> PathBuf {
    small_fixture(
        "profile-split",
        "profile/split.c",
        "gcc",
        &[
            "-O2",
            "-g",
            "-pthread",
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
            "-fno-optimize-sibling-calls",
        ],
    )
}

// ---------------------------------------------------------------------------
// Many-functions fixture

/// Functions in the many-functions fixture: `f0000` .. `f4999`.
pub const MANY_FUNCTIONS: usize = 5000;

/// The many-functions fixture (tests/fixtures/many/many.c), built once per
/// test process with gcc into `<target>/fixtures/many-funcs`:
/// `many-funcs STRIDE [GO_FILE]` calls every function whose index is a
/// multiple of STRIDE, function i `1 + i / 1000` times (see
/// [`many_expected_calls`]); `many-funcs usdt GO DONE` fires the USDT probe
/// `many:tick`, which has a semaphore.
pub fn many_fixture() -> &'static Path {
    static FIXTURE: OnceLock<PathBuf> = OnceLock::new();
    FIXTURE.get_or_init(build_many_fixture)
}

/// Calls the many-functions fixture makes with `stride`, per thousand
/// (`f0xxx`, `f1xxx`, ...).
pub fn many_expected_calls(stride: usize) -> [u64; 5] {
    let mut calls = [0u64; 5];
    for i in (0..MANY_FUNCTIONS).step_by(stride.max(1)) {
        calls[i / 1000] += 1 + (i / 1000) as u64;
    }
    calls
}

fn build_many_fixture() -> PathBuf {
    small_fixture(
        "many-funcs",
        "many/many.c",
        "gcc",
        &["-O1", "-fno-ipa-icf", "-Wall", "-Wextra"],
    )
}

// ---------------------------------------------------------------------------
// Driving the agent

/// A running `adeline-trace` with stdout (JSON Lines) and stderr captured.
/// The agent runs in its own process group; dropping an `Agent` that is
/// still running SIGKILLs that group.
pub struct Agent {
    child: Child,
    lines_rx: Receiver<String>,
    stdout_done: bool,
    lines: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Agent {
    /// Starts `adeline-trace ARGS...` (see [`agent_bin`]).
    pub fn spawn(args: &[&str]) -> Agent {
        let mut cmd = Command::new(agent_bin());
        cmd.args(args);
        Agent::spawn_command(cmd)
    }

    /// Starts a prepared command (extra env, cwd, ...); stdio is set here.
    pub fn spawn_command(mut cmd: Command) -> Agent {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
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
        Agent {
            child,
            lines_rx,
            stdout_done: false,
            lines: Vec::new(),
            stderr,
            stderr_thread: Some(stderr_thread),
            status: None,
        }
    }

    /// Runs `adeline-trace ARGS...` to its end (at most `timeout`, then
    /// SIGINT as in [`Agent::stop`]); for commands that exit by themselves
    /// (errors, `list`, `--duration`).
    pub fn run(args: &[&str], timeout: Duration) -> AgentOutput {
        let mut agent = Agent::spawn(args);
        agent.wait_exit(timeout);
        agent.output()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// stderr printed so far.
    pub fn stderr_so_far(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Waits until the `{"type":"start",...}` line appears on stdout and
    /// returns it (every line read is kept for [`Agent::output`]). Panics,
    /// with the agent's stderr, on timeout or when the agent exits first.
    /// Needs the events on stdout (no `-o FILE`).
    pub fn wait_ready(&mut self, timeout: Duration) -> Value {
        match self.wait_for_event(timeout, |v| v["type"] == "start") {
            Some(v) => v,
            None => {
                self.kill();
                panic!(
                    "agent printed no start line within {timeout:?}; stdout so far:\n{}\nstderr:\n{}",
                    self.lines.join("\n"),
                    self.stderr_so_far()
                );
            }
        }
    }

    /// Reads stdout until a JSON line satisfies `pred` and returns it (every
    /// line read is kept for [`Agent::output`]); None on timeout. Panics,
    /// with the agent's stderr, when the agent exits first.
    pub fn wait_for_event(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines_rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = serde_json::from_str::<Value>(&line).ok().filter(&pred);
                    self.lines.push(line);
                    if hit.is_some() {
                        return hit;
                    }
                }
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.stdout_done = true;
                    let status = self.child.wait().ok();
                    self.finish_stderr(Duration::from_secs(2));
                    panic!(
                        "agent exited ({status:?}) before the awaited event; stdout:\n{}\nstderr:\n{}",
                        self.lines.join("\n"),
                        self.stderr_so_far()
                    );
                }
            }
        }
    }

    /// Sends SIGINT and waits for the agent to exit; after [`STOP_TIMEOUT`]
    /// it SIGKILLs the agent's process group and panics.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        if let Ok(Some(s)) = self.child.try_wait() {
            self.status = Some(s);
            return s;
        }
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        match wait_timeout(&mut self.child, STOP_TIMEOUT) {
            Some(s) => {
                self.status = Some(s);
                s
            }
            None => {
                self.kill();
                panic!(
                    "agent did not exit within {STOP_TIMEOUT:?} after SIGINT; stderr:\n{}",
                    self.stderr_so_far()
                );
            }
        }
    }

    /// Waits up to `timeout` for the agent to exit by itself, then stops it
    /// like [`Agent::stop`].
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        match wait_timeout(&mut self.child, timeout) {
            Some(s) => {
                self.status = Some(s);
                s
            }
            None => self.stop(),
        }
    }

    /// Everything the agent printed. Stops it first if it is still running.
    pub fn output(mut self) -> AgentOutput {
        let status = self.stop();
        // stdout closes when the agent exits unless a child it started
        // still holds it: then take what arrived within a few seconds.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stdout_done {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines_rx.recv_timeout(left) {
                Ok(line) => self.lines.push(line),
                Err(RecvTimeoutError::Disconnected) => self.stdout_done = true,
                Err(RecvTimeoutError::Timeout) => {
                    eprintln!(
                        "warning: agent exited but its stdout is still open (a child alive?)"
                    );
                    break;
                }
            }
        }
        self.finish_stderr(Duration::from_secs(5));
        let mut out = AgentOutput::parse(status, &self.lines.join("\n"));
        out.stderr = self.stderr_so_far();
        out
    }

    fn finish_stderr(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        if let Some(t) = self.stderr_thread.take() {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }

    fn kill(&mut self) {
        // SAFETY: kill(2) on the process group we created for the agent.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        if let Ok(s) = self.child.wait() {
            self.status = Some(s);
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// What an agent run printed: stdout parsed as JSON Lines, stderr as text.
#[derive(Debug, Clone)]
pub struct AgentOutput {
    pub status: ExitStatus,
    /// Every stdout line that parsed as JSON, in order.
    pub lines: Vec<Value>,
    /// stdout lines that were not JSON (should be empty).
    pub non_json: Vec<String>,
    pub stderr: String,
}

impl AgentOutput {
    /// Splits JSON Lines text (stdout, or an `-o FILE`'s content).
    pub fn parse(status: ExitStatus, text: &str) -> AgentOutput {
        let mut lines = Vec::new();
        let mut non_json = Vec::new();
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Value>(l) {
                Ok(v) => lines.push(v),
                Err(_) => non_json.push(l.to_string()),
            }
        }
        AgentOutput {
            status,
            lines,
            non_json,
            stderr: String::new(),
        }
    }

    /// Events with `"type": t`.
    pub fn of_type(&self, t: &str) -> Vec<&Value> {
        self.lines.iter().filter(|v| v["type"] == t).collect()
    }

    pub fn spans(&self) -> Vec<&Value> {
        self.of_type("span")
    }

    pub fn spans_of(&self, stage: &str) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|v| v["type"] == "span" && v["stage"] == stage)
            .collect()
    }

    /// `dur_ns` of every span of `stage`.
    pub fn durations_of(&self, stage: &str) -> Vec<u64> {
        self.spans_of(stage)
            .iter()
            .filter_map(|v| v["dur_ns"].as_u64())
            .collect()
    }

    /// The `start` event.
    pub fn start(&self) -> Option<&Value> {
        self.lines.iter().find(|v| v["type"] == "start")
    }

    /// The (last) `summary` event.
    pub fn summary(&self) -> Option<&Value> {
        self.lines.iter().rev().find(|v| v["type"] == "summary")
    }

    /// The entry of `stage` in the summary's `stages`.
    pub fn summary_of(&self, stage: &str) -> Option<&Value> {
        self.summary()?["stages"]
            .as_array()?
            .iter()
            .find(|s| s["stage"] == stage)
    }

    /// The report line of a fixture pipeline (`{"fixture":...}`), present
    /// when the agent started it with `-- COMMAND` and shared its stdout.
    pub fn fixture_report(&self) -> Option<&Value> {
        self.lines.iter().find(|v| v.get("fixture").is_some())
    }

    /// The first stderr line starting with `error: `.
    pub fn error_line(&self) -> Option<&str> {
        self.stderr.lines().find(|l| l.starts_with("error: "))
    }
}

/// Reads a JSON Lines file (e.g. the agent's `-o FILE`); panics on a line
/// that is not JSON.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{path:?}: not JSON ({e}): {l}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Fixture processes

/// A fixture pipeline started paused at its go file; its stdout (the JSON
/// report) is captured. Dropping a running `Pipeline` SIGKILLs it.
pub struct Pipeline {
    child: Child,
    go_file: PathBuf,
}

impl Pipeline {
    /// `demo-pipeline ARGS... --go-file <scratch>/go`.
    pub fn demo(args: &[&str]) -> Pipeline {
        let go_file = scratch_dir("demo").join("go");
        let mut cmd = Command::new(demo_bin());
        cmd.args(args).arg("--go-file").arg(&go_file);
        Pipeline::spawn(cmd, go_file)
    }

    /// `many-funcs STRIDE <scratch>/go` (see [`many_fixture`]).
    pub fn many(stride: usize) -> Pipeline {
        let go_file = scratch_dir("many").join("go");
        let mut cmd = Command::new(many_fixture());
        cmd.arg(stride.to_string()).arg(&go_file);
        Pipeline::spawn(cmd, go_file)
    }

    /// `EXE ARGS... <scratch>/go`: a fixture that takes its go file last.
    pub fn fixture(exe: &Path, args: &[&str]) -> Pipeline {
        let name = exe
            .file_name()
            .map_or("fixture".into(), |n| n.to_string_lossy());
        let go_file = scratch_dir(&name).join("go");
        let mut cmd = Command::new(exe);
        cmd.args(args).arg(&go_file);
        Pipeline::spawn(cmd, go_file)
    }

    /// `cpp-pipeline FRAMES <scratch>/go` with `exe` = the fixture's `exe`
    /// or `stripped`.
    pub fn cpp(exe: &Path, frames: u64) -> Pipeline {
        let go_file = scratch_dir("cpp").join("go");
        let mut cmd = Command::new(exe);
        cmd.arg(frames.to_string()).arg(&go_file);
        Pipeline::spawn(cmd, go_file)
    }

    fn spawn(mut cmd: Command, go_file: PathBuf) -> Pipeline {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Pipeline { child, go_file }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the pipeline start processing frames.
    pub fn go(&self) {
        std::fs::write(&self.go_file, b"go\n")
            .unwrap_or_else(|e| panic!("writing {:?}: {e}", self.go_file));
    }

    /// Sends `sig` (e.g. `libc::SIGINT`: stop after the current frame).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits for exit (SIGKILL + panic after `timeout`), asserts exit code
    /// 0 and returns the parsed JSON report line.
    pub fn wait(mut self, timeout: Duration) -> Value {
        let status = match wait_timeout(&mut self.child, timeout) {
            Some(s) => s,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("fixture pipeline did not exit within {timeout:?}");
            }
        };
        let mut out = String::new();
        if let Some(mut so) = self.child.stdout.take() {
            let _ = so.read_to_string(&mut out);
        }
        assert!(
            status.success(),
            "fixture pipeline failed: {status}; stdout: {out}"
        );
        let line = out.lines().find(|l| l.contains("\"fixture\""));
        let line = line.unwrap_or_else(|| panic!("no JSON report from the fixture: {out:?}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad fixture report ({e}): {line}"))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Kernel state

/// Names of the loaded BPF programs whose (15-character, truncated) name
/// starts with `stage_` (`stage_entry`, `stage_exit`) and that no live
/// process holds (an agent's leftovers: a program lives only as long as a
/// descriptor or link refers to it, so one held by a running process is
/// that process's, e.g. another agent on a shared machine). Waits up to 2
/// s for the list to empty: the kernel frees a closed uprobe-multi link's
/// program only after RCU grace periods. Needs root and bpftool.
pub fn adeline_bpf_programs() -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let held = held_prog_ids();
        let left: Vec<String> = loaded_programs()
            .into_iter()
            .filter(|(id, name)| name.starts_with("stage_") && !held.contains(id))
            .map(|(_, name)| name)
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Names of the BPF programs `pid` holds (see [`bpf_prog_ids_of`]), sorted.
pub fn bpf_prog_names_of(pid: u32) -> Vec<String> {
    let ids = bpf_prog_ids_of(pid);
    let mut names: Vec<String> = loaded_programs()
        .into_iter()
        .filter(|(id, _)| ids.contains(id))
        .map(|(_, name)| name)
        .collect();
    names.sort();
    names
}

/// (id, name) of every loaded BPF program, from `bpftool prog show --json`.
fn loaded_programs() -> Vec<(u32, String)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run bpftool (install it: cargo xtask setup): {e}"));
    assert!(
        out.status.success(),
        "bpftool prog show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let progs: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool printed no JSON: {e}"));
    progs
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p["id"].as_u64()? as u32, p["name"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Ids of the BPF programs every live process holds (see [`bpf_prog_ids_of`]).
fn held_prog_ids() -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .flat_map(bpf_prog_ids_of)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Ids of the BPF programs `pid` holds, directly or through its links
/// (`prog_id` in /proc/PID/fdinfo).
pub fn bpf_prog_ids_of(pid: u32) -> Vec<u32> {
    let dir = format!("/proc/{pid}/fdinfo");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Waits up to `timeout` for the programs `ids` to be unloaded (a closed
/// link frees its program after RCU grace periods); returns those still
/// loaded. Unlike [`adeline_bpf_programs`] this ignores programs of other
/// agents running on the machine.
pub fn wait_programs_unloaded(ids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = Command::new("bpftool")
            .args(["prog", "show", "--json"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run bpftool (install it: cargo xtask setup): {e}"));
        let progs: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let loaded: Vec<u32> = progs
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["id"].as_u64())
                    .map(|i| i as u32)
                    .collect()
            })
            .unwrap_or_default();
        let left: Vec<u32> = ids.iter().copied().filter(|i| loaded.contains(i)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `link_type` of every BPF link `pid` holds open (`uprobe_multi`,
/// `uretprobe_multi`, `perf`, ...), from /proc/PID/fdinfo.
pub fn bpf_link_types(pid: u32) -> Vec<String> {
    let dir = format!("/proc/{pid}/fdinfo");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("link_type:"))
                .map(|t| t.trim().to_string())
        })
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// Helpers

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

// ---------------------------------------------------------------------------
// The agent's HTTP API

/// A free TCP port on 127.0.0.1 for an agent's `--api-port` (the OS picks
/// one; tests run serially, so it stays free until the agent binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// `GET path` on 127.0.0.1:port: (status code, body). Plain HTTP/1.1 with
/// `Connection: close`, so the body is everything after the headers.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("sending the request");
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .expect("reading the response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head}"));
    (status, body.to_string())
}

/// `GET path` parsed as JSON; panics unless the status is 200.
pub fn http_json(port: u16, path: &str) -> Value {
    let (status, body) = http_get(port, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// Replaces the demo pipeline's control file atomically (temp + rename).
pub fn write_control_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {tmp:?}: {e}"));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {path:?}: {e}"));
}

/// Resident memory of `pid` from `/proc/PID/statm` (resident pages x the
/// page size); None once the process is gone.
pub fn statm_rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(pages * page)
}

/// `VmRSS` of `/proc/PID/status` in bytes; None once the process is gone.
pub fn status_vmrss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS")
}

/// A `KEY:   N kB` line of `/proc/PID/status` (`VmRSS`, `RssAnon`, ...),
/// in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A folded profile's `frame;frame;… µs` lines, as (stack, µs).
pub fn parse_folded(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .map(|l| {
            let (stack, n) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let n = n.parse().unwrap_or_else(|_| panic!("bad count in {l:?}"));
            (stack.to_string(), n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nm(args: &[&str], file: &Path) -> String {
        let out = Command::new("nm")
            .args(args)
            .arg(file)
            .output()
            .expect("running nm");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    #[test]
    fn cpp_fixture_builds() {
        let fx = cpp_fixture();
        let lib = nm(&["-C", "--defined-only"], &fx.lib);
        for name in [
            "vision::Detector::infer(vision::Frame const&)",
            "vision::scale(int)",
            "vision::scale(double)",
            "float vision::normalize<float>(float)",
            "int vision::normalize<int>(int)",
            "vision::pyramid(int)",
        ] {
            assert!(
                lib.contains(name),
                "{name} missing from libdetector.so:\n{lib}"
            );
        }
        let exe = nm(&["-C", "--defined-only"], &fx.exe);
        assert!(
            exe.contains("app::process_frame(vision::Detector&, vision::Frame&)"),
            "{exe}"
        );
        assert!(!exe.contains("[clone"), "g++ cloned a function:\n{exe}");
        assert!(nm(&[], &fx.stripped).contains("no symbols"));
        let notes = Command::new("readelf")
            .arg("-n")
            .arg(&fx.stripped)
            .output()
            .expect("running readelf");
        let notes = String::from_utf8_lossy(&notes.stdout);
        assert!(
            notes.contains("Provider: cpp_pipeline") && notes.contains("Name: frame_done"),
            "{notes}"
        );

        let report = Pipeline::cpp(&fx.stripped, 3);
        report.go();
        let report = report.wait(Duration::from_secs(10));
        let calls = &report["calls"];
        assert_eq!(report["frames"], 3);
        assert_eq!(calls["app::process_frame"], 3);
        assert_eq!(calls["vision::Detector::infer"], 3);
        assert_eq!(calls["vision::scale(int)"], 6);
        assert_eq!(calls["vision::scale(double)"], 9);
        assert_eq!(calls["vision::normalize<float>"], 3);
        assert_eq!(calls["vision::normalize<int>"], 6);
        assert_eq!(calls["vision::pyramid"], 9);
        assert_eq!(report["usdt"]["cpp_pipeline:frame_done"], 3);
    }

    #[test]
    fn demo_pipeline_counts_and_timing() {
        let demo = demo_bin();
        let syms = nm(&["--defined-only"], &demo);
        for stage in DEMO_STAGES {
            assert!(
                syms.lines().any(|l| l.ends_with(&format!(" T {stage}"))),
                "{stage} is not an exported symbol of {demo:?}"
            );
        }
        let p = Pipeline::demo(&["--frames", "5", "--threads", "2", "--recursion", "4"]);
        p.go();
        let r = p.wait(Duration::from_secs(20));
        assert_eq!(r["frames"], 10);
        let c = &r["calls"];
        for (stage, n) in [
            ("process_frame", 10),
            ("decode", 10),
            ("preprocess", 10),
            ("infer", 10),
            ("infer_layer", 30),
            ("postprocess", 10),
            ("refine", 40),
            ("track", 10),
            ("publish", 10),
        ] {
            assert_eq!(c[stage], n, "calls of {stage}: {r}");
        }
        // Per frame: 1000 + 500 + 3*1000 + 300 + 4*200 + 300 + 200 us of sleep;
        // the two threads run side by side.
        let sleep_ns = 5 * 6_100_000u64;
        let elapsed = r["elapsed_ns"].as_u64().expect("elapsed_ns");
        assert!(elapsed >= sleep_ns, "{elapsed} < {sleep_ns}");
        assert!(elapsed < sleep_ns * 3, "{elapsed} is far above {sleep_ns}");
    }

    /// The driver against a shell script that behaves like the agent.
    #[test]
    fn agent_driver_with_fake_agent() {
        let script = r#"
            trap 'echo "{\"v\":1,\"type\":\"summary\",\"stages\":[]}"; echo "bye" >&2; exit 0' INT
            echo "starting" >&2
            echo '{"v":1,"type":"span","stage":"early","dur_ns":1}'
            echo '{"v":1,"type":"start","pids":[],"probes":[]}'
            while :; do sleep 0.02; done
        "#;
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        let mut agent = Agent::spawn_command(cmd);
        let start = agent.wait_ready(Duration::from_secs(10));
        assert_eq!(start["type"], "start");
        assert!(agent.stop().success());
        let out = agent.output();
        assert_eq!(out.lines.len(), 3, "{out:?}");
        assert_eq!(out.spans_of("early").len(), 1);
        assert!(out.summary().is_some());
        assert!(out.stderr.contains("starting") && out.stderr.contains("bye"));

        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo 'error: no such stage' >&2; exit 2");
        let mut agent = Agent::spawn_command(cmd);
        assert_eq!(agent.wait_exit(Duration::from_secs(10)).code(), Some(2));
        let out = agent.output();
        assert_eq!(out.error_line(), Some("error: no such stage"));
    }

    #[test]
    fn output_helpers() {
        use std::os::unix::process::ExitStatusExt;
        let text = r#"{"v":1,"type":"start","pids":[1],"probes":[]}
{"v":1,"type":"span","stage":"decode","dur_ns":5}
not json
{"v":1,"type":"span","stage":"infer","dur_ns":7}
{"v":1,"type":"summary","stages":[{"stage":"decode","count":1}]}"#;
        let mut o = AgentOutput::parse(ExitStatus::from_raw(0), text);
        o.stderr = "note\nerror: bad thing\n".into();
        assert_eq!(o.spans().len(), 2);
        assert_eq!(o.durations_of("decode"), vec![5]);
        assert_eq!(o.summary_of("decode").unwrap()["count"], 1);
        assert!(o.start().is_some());
        assert_eq!(o.non_json, vec!["not json".to_string()]);
        assert_eq!(o.error_line(), Some("error: bad thing"));
    }
}
