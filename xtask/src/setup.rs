//! `cargo xtask setup`: make this machine able to build and test
//! adeline-trace. Idempotent and fast (< 2 s) when everything is present;
//! prints one line per item: `ok` or what it did. The recipe and its
//! reasons:
//!
//! 1. rust-src for the toolchain in use (the eBPF crate builds `core`).
//! 2. Debian packages used by builds, tests and benches (installed when
//!    missing, with one `apt-get update` first).
//! 3. bpf-linker 0.13.0 linked against the Rust toolchain's own libLLVM:
//!    prefix P = ~/.local/share/adeline-trace/llvm with P/lib/libLLVM.so and
//!    P/lib/<soname> symlinked to `$(rustc --print sysroot)/lib/<soname>`;
//!    rebuilt with `LLVM_PREFIX=P cargo install bpf-linker --version 0.13.0
//!    --no-default-features --features llvm-<major> --force` when it does
//!    not run, is another version, or needs another libLLVM than the
//!    toolchain's (toolchain updated).
//! 4. tracefs mounted at /sys/kernel/tracing.
//! 5. mosquitto (the MQTT broker the Python pipeline fixture publishes to):
//!    the Debian package only; no system service is left running (the
//!    tests start their own broker on a free loopback port).
//! 6. One Python venv per interpreter of the fixtures' matrix (pyenv
//!    CPython 3.10-3.13 and Debian's python3.11, see
//!    tests/src/python_env.rs) with the exact pins of
//!    tests/fixtures/python/requirements.txt, from PyPI wheels only. An
//!    interpreter that is not on the machine, or a package without a wheel
//!    for one, is one clear line (`NOT AVAILABLE` / `partial`), recorded in
//!    the venv's status file, and does not fail setup: the Python tests say
//!    what they skip (and fail under CI=true). A pip or venv error does.
//! 7. cargo-fuzz 0.13.2 (`cargo xtask fuzz`), from crates.io with
//!    `cargo install --locked`, when `cargo fuzz --version` is not that
//!    version. It drives libFuzzer on the stable toolchain with
//!    RUSTC_BOOTSTRAP=1 (see xtask/src/fuzz.rs).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{cargo, is_root, python_env, root_dir, status};

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const PACKAGES: [&str; 11] = [
    "bpftrace",
    "bpftool",
    "systemtap-sdt-dev",
    "g++",
    "binutils",
    // Headless browser and its WebDriver, for tests/suite/dashboard.rs.
    "chromium",
    "chromium-driver",
    "prometheus", // promtool and the server, for tests/suite/prometheus.rs
    // The Python fixtures (tests/suite/python_fixture.rs): the broker,
    // mosquitto_sub/_pub, and ensurepip for Debian's python3.11 venvs.
    "mosquitto",
    "mosquitto-clients",
    "python3.11-venv",
];
const TRACEFS: &str = "/sys/kernel/tracing";

pub fn run(rebuild_bpf_linker: bool) -> Result<()> {
    let mut failed = Vec::new();
    let mut item = |name: &str, result: Result<String>| match result {
        Ok(msg) => println!("setup: {name}: {msg}"),
        Err(e) => {
            println!("setup: {name}: FAILED: {e:#}");
            failed.push(name.to_string());
        }
    };
    item("rust-src", rust_src());
    // Packages first: building bpf-linker needs a C compiler.
    item("packages", packages());
    item(
        &format!("bpf-linker {BPF_LINKER_VERSION}"),
        bpf_linker(rebuild_bpf_linker),
    );
    item("tracefs", tracefs());
    item(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}"), cargo_fuzz());
    item("mosquitto", mosquitto());
    if let Some(note) = prune_venvs() {
        println!("setup: python venvs: {note}");
    }
    for slot in &python_env::MATRIX {
        match python_env::find(slot) {
            Ok(interp) => item(&format!("python {}", slot.label), python_venv(&interp)),
            // Not installable from here (pyenv builds from source): say so,
            // the Python tests skip it (and fail under CI=true).
            Err(why) => println!(
                "setup: python {}: NOT AVAILABLE: {why}; Python fixture tests skip it",
                slot.label
            ),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("setup incomplete: {}", failed.join(", ")))
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn sysroot() -> Result<PathBuf> {
    // rustup's proxy resolves the toolchain in use (RUSTUP_TOOLCHAIN,
    // rust-toolchain files, default), the same one cargo runs.
    Ok(PathBuf::from(output(
        Command::new("rustc").args(["--print", "sysroot"]),
    )?))
}

// ---------------------------------------------------------------------------

fn rust_src() -> Result<String> {
    let sysroot = sysroot()?;
    let src = sysroot.join("lib/rustlib/src/rust/library");
    if src.is_dir() {
        return Ok("ok".into());
    }
    let st = status(Command::new("rustup").args(["component", "add", "rust-src"]))?;
    if !st.success() || !src.is_dir() {
        bail!("`rustup component add rust-src` failed ({st}); {src:?} is missing");
    }
    Ok(format!(
        "installed (rustup component add rust-src, {})",
        sysroot.display()
    ))
}

// ---------------------------------------------------------------------------

fn package_installed(pkg: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .context("cannot run dpkg-query (not a Debian system? install the packages by hand)")?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

fn packages() -> Result<String> {
    let mut missing = Vec::new();
    for pkg in PACKAGES {
        if !package_installed(pkg)? {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(format!("ok ({})", PACKAGES.join(" ")));
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!("missing {list}: run as root (sudo -E cargo xtask setup) or apt-get install {list}");
    }
    println!("setup: packages: installing {list} ...");
    let apt = |args: &[&str]| -> Result<()> {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("cannot run apt-get")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "apt-get {} failed ({}):\n{}",
                args.join(" "),
                out.status,
                tail.join("\n")
            );
        }
        Ok(())
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)?;
    for pkg in &missing {
        if !package_installed(pkg)? {
            bail!("{pkg} is still not installed after apt-get install");
        }
    }
    Ok(format!("installed {list}"))
}

// ---------------------------------------------------------------------------

/// The toolchain's libLLVM soname file, e.g. `libLLVM.so.22.1-rust-1.95.0-stable`.
fn llvm_soname(sysroot: &Path) -> Result<String> {
    let lib = sysroot.join("lib");
    let mut names: Vec<String> = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("libLLVM.so."))
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no libLLVM.so.* in {}", lib.display()))
}

/// `libLLVM.so.22.1-rust-...` -> 22
fn llvm_major(soname: &str) -> Result<u32> {
    let rest = soname.trim_start_matches("libLLVM.so.");
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits
        .parse()
        .with_context(|| format!("no LLVM major version in {soname}"))
}

fn llvm_prefix() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?;
    Ok(PathBuf::from(home).join(".local/share/adeline-trace/llvm"))
}

/// Makes `link` a symlink to `to`; returns whether it changed anything.
fn ensure_symlink(link: &Path, to: &Path) -> Result<bool> {
    if std::fs::read_link(link).ok().as_deref() == Some(to) {
        return Ok(false);
    }
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(to, link)
        .with_context(|| format!("linking {} -> {}", link.display(), to.display()))?;
    Ok(true)
}

/// bpf-linker on PATH, else in $CARGO_HOME/bin (or ~/.cargo/bin).
fn bpf_linker_path() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .unwrap_or_default();
        home.join("bin/bpf-linker")
    })
}

/// Why the installed bpf-linker cannot be used, or None if it can.
fn bpf_linker_problem(soname: &str) -> Option<String> {
    let path = bpf_linker_path();
    let version = match Command::new(&path).arg("--version").output() {
        Err(e) => return Some(format!("{} does not run ({e})", path.display())),
        Ok(o) if !o.status.success() => {
            return Some(format!(
                "{} does not start: {}",
                path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
    };
    if !version.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
        return Some(format!("{} is `{version}`", path.display()));
    }
    // A linker built for an older toolchain may still start (its libLLVM
    // kept alive elsewhere) but must read this rustc's bitcode: compare the
    // libLLVM it needs with the toolchain's. Skipped without readelf.
    if let Ok(o) = Command::new("readelf").arg("-d").arg(&path).output() {
        let dynamic = String::from_utf8_lossy(&o.stdout);
        let needed: Vec<&str> = dynamic
            .lines()
            .filter(|l| l.contains("(NEEDED)") && l.contains("libLLVM"))
            .filter_map(|l| l.split('[').nth(1)?.split(']').next())
            .collect();
        if o.status.success() && !needed.is_empty() && !needed.contains(&soname) {
            return Some(format!(
                "{} needs {} but the toolchain has {soname}",
                path.display(),
                needed.join(", ")
            ));
        }
    }
    None
}

fn bpf_linker(force: bool) -> Result<String> {
    let sysroot = sysroot()?;
    let soname = llvm_soname(&sysroot)?;
    let major = llvm_major(&soname)?;
    let target = sysroot.join("lib").join(&soname);

    let prefix = llvm_prefix()?;
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let mut relinked = ensure_symlink(&lib.join("libLLVM.so"), &target)?;
    relinked |= ensure_symlink(&lib.join(&soname), &target)?;
    // Links left by an older toolchain.
    for entry in std::fs::read_dir(&lib)?.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM.so.") && name != soname {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            relinked = true;
        }
    }
    let relinked_note = if relinked {
        format!(" (relinked {} -> {})", lib.display(), target.display())
    } else {
        String::new()
    };

    let problem = match bpf_linker_problem(&soname) {
        None if !force => return Ok(format!("ok{relinked_note}")),
        None => "rebuild requested".to_string(),
        Some(p) => p,
    };
    let feature = format!("llvm-{major}");
    println!(
        "setup: bpf-linker {BPF_LINKER_VERSION}: {problem}: building it against {soname} \
         (LLVM_PREFIX={}, feature {feature}; takes a few minutes) ...",
        prefix.display()
    );
    let st = status(
        cargo()
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", &feature, "--force"]),
    )?;
    if !st.success() {
        bail!("cargo install bpf-linker failed ({st})");
    }
    if let Some(p) = bpf_linker_problem(&soname) {
        bail!("bpf-linker still unusable after the rebuild: {p}");
    }
    Ok(format!("rebuilt against {soname}{relinked_note}"))
}

// ---------------------------------------------------------------------------

/// What `cargo fuzz --version` prints, or why it does not run.
fn cargo_fuzz_version() -> std::result::Result<String, String> {
    match cargo().args(["fuzz", "--version"]).output() {
        Err(e) => Err(format!("cargo fuzz does not run ({e})")),
        Ok(o) if !o.status.success() => Err("cargo fuzz is not installed".to_string()),
        Ok(o) => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
    }
}

fn cargo_fuzz() -> Result<String> {
    let problem = match cargo_fuzz_version() {
        Ok(v) if v.split_whitespace().any(|w| w == CARGO_FUZZ_VERSION) => {
            return Ok(format!("ok ({v})"))
        }
        Ok(v) => format!("found `{v}`"),
        Err(why) => why,
    };
    println!("setup: cargo-fuzz {CARGO_FUZZ_VERSION}: {problem}: installing it from crates.io (about a minute) ...");
    let st = status(
        cargo()
            .args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION])
            .args(["--locked", "--force"]),
    )?;
    if !st.success() {
        bail!("cargo install cargo-fuzz failed ({st})");
    }
    match cargo_fuzz_version() {
        Ok(v) if v.split_whitespace().any(|w| w == CARGO_FUZZ_VERSION) => {
            Ok(format!("installed ({v})"))
        }
        Ok(v) => bail!("`cargo fuzz --version` prints `{v}` after the install"),
        Err(why) => bail!("{why} after the install"),
    }
}

// ---------------------------------------------------------------------------

fn tracefs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == TRACEFS && f[2] == "tracefs"
        })
}

fn tracefs() -> Result<String> {
    if tracefs_mounted() {
        return Ok(format!("ok ({TRACEFS})"));
    }
    if !is_root() {
        bail!("not mounted at {TRACEFS}: run as root (sudo -E cargo xtask setup)");
    }
    let st = status(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))?;
    if !st.success() || !tracefs_mounted() {
        bail!("`mount -t tracefs nodev {TRACEFS}` failed ({st})");
    }
    Ok(format!("mounted at {TRACEFS}"))
}

// ---------------------------------------------------------------------------

/// Debian's init script and the package's config use this pid file.
const MOSQUITTO_PIDFILE: &str = "/run/mosquitto/mosquitto.pid";

/// The running system broker's pid, if any (from its pid file).
fn system_mosquitto_pid() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(MOSQUITTO_PIDFILE)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "mosquitto").then_some(pid)
}

fn mosquitto() -> Result<String> {
    for bin in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto_sub",
        "/usr/bin/mosquitto_pub",
    ] {
        if !Path::new(bin).is_file() {
            bail!("{bin} is missing after the package step (apt-get install mosquitto mosquitto-clients)");
        }
    }
    // The package may start and enable its service (where policy-rc.d
    // allows it); the tests start their own broker and need no other.
    let Some(pid) = system_mosquitto_pid() else {
        return Ok("ok (/usr/sbin/mosquitto; no system service running)".into());
    };
    if !is_root() {
        bail!("the system mosquitto service (pid {pid}) is running: stop it as root (systemctl disable --now mosquitto)");
    }
    let systemd = Path::new("/run/systemd/system").is_dir();
    if systemd {
        let _ = output(Command::new("systemctl").args(["disable", "--now", "mosquitto"]));
    } else {
        let _ = output(Command::new("/etc/init.d/mosquitto").arg("stop"));
        let _ = output(Command::new("update-rc.d").args(["mosquitto", "disable"]));
    }
    for _ in 0..50 {
        if system_mosquitto_pid().is_none() {
            return Ok(format!(
                "stopped and disabled the system service (pid {pid}; {})",
                if systemd { "systemctl" } else { "init.d" }
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("the system mosquitto service (pid {pid}) is still running after stopping it")
}

// ---------------------------------------------------------------------------

/// The fixtures' pinned requirements, relative to the workspace root.
const PY_REQUIREMENTS: &str = "tests/fixtures/python/requirements.txt";

/// `name==version` lines of a requirements file (comments dropped).
fn requirement_pins(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// pip's words for "no distribution of this pin can be installed here".
fn pip_no_wheel(stderr: &str) -> bool {
    stderr.contains("No matching distribution found")
        || stderr.contains("Could not find a version that satisfies")
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Holds an exclusive flock on `path` while alive (setups of several
/// worktrees of one machine share the venvs).
struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    fn acquire(path: &Path, what: &str) -> Result<FileLock> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            println!(
                "setup: {what}: waiting for another setup holding {} ...",
                path.display()
            );
            // SAFETY: as above; blocking.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                bail!(
                    "flock {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(FileLock { _file: f })
    }
}

/// Whether `venv`'s `bin/python` is a link to `exe` (the same file).
fn venv_uses(venv_python: &Path, exe: &Path) -> bool {
    match (
        std::fs::canonicalize(venv_python),
        std::fs::canonicalize(exe),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Removes the venvs whose interpreter is gone (an old pyenv patch
/// release replaced by a newer one); says what it removed.
fn prune_venvs() -> Option<String> {
    let dir = python_env::venvs_dir();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(&dir).ok()?.filter_map(|e| e.ok()) {
        let venv = entry.path();
        let Some(st) = python_env::VenvStatus::read(&venv) else {
            continue;
        };
        if !st.interpreter.is_empty() && !Path::new(&st.interpreter).exists() {
            match std::fs::remove_dir_all(&venv) {
                Ok(()) => {
                    let lock = format!("{}.lock", entry.file_name().to_string_lossy());
                    let _ = std::fs::remove_file(dir.join(lock));
                    removed.push(format!("{} ({} is gone)", venv.display(), st.interpreter));
                }
                Err(e) => removed.push(format!("cannot remove {}: {e}", venv.display())),
            }
        }
    }
    (!removed.is_empty()).then(|| format!("removed {}", removed.join(", ")))
}

/// Makes the venv of one interpreter match the requirements file.
fn python_venv(interp: &python_env::Interpreter) -> Result<String> {
    let what = format!("python {}", interp.label);
    let req_path = root_dir().join(PY_REQUIREMENTS);
    let req =
        std::fs::read(&req_path).with_context(|| format!("reading {}", req_path.display()))?;
    let hash = python_env::fnv1a_hex(&req);
    let pins = requirement_pins(&String::from_utf8_lossy(&req));
    let venv = interp.venv();
    let py = interp.venv_python();
    let exe = interp.exe.display().to_string();

    let up_to_date = |st: &python_env::VenvStatus| {
        st.interpreter == exe
            && st.version == interp.version
            && st.requirements == hash
            && venv_uses(&py, &interp.exe)
    };
    let summary = |st: &python_env::VenvStatus| {
        let mut msg = format!(
            "{} {} -> {}",
            interp.exe.display(),
            interp.version,
            venv.display()
        );
        if st.missing.is_empty() {
            msg.push_str(&format!(" ({} pins)", st.installed.len()));
        } else {
            msg = format!(
                "partial: {msg}: {} pins installed; NOT INSTALLABLE HERE: {}",
                st.installed.len(),
                st.missing.join("; ")
            );
        }
        msg
    };
    if let Some(st) = python_env::VenvStatus::read(&venv).filter(|st| up_to_date(st)) {
        return Ok(format!("ok ({})", summary(&st)));
    }

    let dir = python_env::venvs_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = FileLock::acquire(&dir.join(format!("{}.lock", interp.key)), &what)?;
    // Another setup may have finished it while we waited.
    if let Some(st) = python_env::VenvStatus::read(&venv).filter(|st| up_to_date(st)) {
        return Ok(format!("ok ({})", summary(&st)));
    }
    let _ = std::fs::remove_file(venv.join(python_env::STATUS_FILE));
    let started = std::time::Instant::now();
    println!(
        "setup: {what}: creating {} from {} {} and installing {} pinned packages from PyPI \
         (the first time downloads ~250 MB of wheels) ...",
        venv.display(),
        interp.exe.display(),
        interp.version,
        pins.len()
    );
    // A fresh venv every time the pins or the interpreter change: nothing
    // stale stays installed.
    output(
        Command::new(&interp.exe)
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )
    .with_context(|| {
        format!(
            "creating the venv (Debian's interpreter needs python3.{}-venv)",
            interp.version.split('.').nth(1).unwrap_or("X")
        )
    })?;
    if !venv_uses(&py, &interp.exe) {
        bail!("{} does not lead to {}", py.display(), interp.exe.display());
    }
    let pip = |args: &[&str]| {
        let mut cmd = Command::new(&py);
        cmd.args(["-m", "pip", "install", "--no-deps", "--only-binary=:all:"])
            .args([
                "--disable-pip-version-check",
                "--no-input",
                "--no-compile",
                "-q",
            ])
            .args(args)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
        cmd.output().context("cannot run pip")
    };
    let req_arg = req_path.display().to_string();
    let all = pip(&["-r", &req_arg])?;
    let mut installed = Vec::new();
    let mut missing = Vec::new();
    if all.status.success() {
        installed = pins.clone();
    } else {
        let err = String::from_utf8_lossy(&all.stderr);
        if !pip_no_wheel(&err) {
            bail!(
                "pip install -r {PY_REQUIREMENTS} failed ({}):\n{}",
                all.status,
                tail(&err, 15)
            );
        }
        // Some pin has no wheel for this interpreter: install the others one
        // by one and record exactly which are missing.
        for pin in &pins {
            let one = pip(&[pin])?;
            let err = String::from_utf8_lossy(&one.stderr);
            if one.status.success() {
                installed.push(pin.clone());
            } else if pip_no_wheel(&err) {
                missing.push(format!(
                    "{pin}: no wheel for CPython {} ({})",
                    interp.version,
                    interp.exe.display()
                ));
            } else {
                bail!(
                    "pip install {pin} failed ({}):\n{}",
                    one.status,
                    tail(&err, 15)
                );
            }
        }
    }
    if missing.is_empty() {
        output(Command::new(&py).args(["-m", "pip", "check"]))
            .with_context(|| format!("{PY_REQUIREMENTS} does not pin every dependency"))?;
    }
    // What the fixture imports must import.
    let st = python_env::VenvStatus {
        interpreter: exe.clone(),
        version: interp.version.clone(),
        requirements: hash,
        installed,
        missing,
    };
    for (pkg, module) in python_env::PIPELINE_PACKAGES {
        let pinned = pins.iter().any(|p| p.starts_with(&format!("{pkg}==")));
        if pinned && !st.is_missing(pkg) {
            output(Command::new(&py).args(["-c", &format!("import {module}")])).with_context(
                || {
                    format!(
                        "{pkg} is installed in {} but `import {module}` fails",
                        venv.display()
                    )
                },
            )?;
        }
    }
    let status_path = venv.join(python_env::STATUS_FILE);
    std::fs::write(&status_path, st.render())
        .with_context(|| format!("writing {}", status_path.display()))?;
    Ok(format!(
        "installed in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        summary(&st)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_soname() {
        assert_eq!(
            llvm_major("libLLVM.so.22.1-rust-1.95.0-stable").unwrap(),
            22
        );
        assert_eq!(llvm_major("libLLVM.so.23-rust-1.99.0-nightly").unwrap(), 23);
        assert!(llvm_major("libLLVM.so.x").is_err());
    }

    #[test]
    fn requirements_file_is_fully_pinned() {
        let text = std::fs::read_to_string(root_dir().join(PY_REQUIREMENTS)).unwrap();
        let pins = requirement_pins(&text);
        assert!(pins.len() >= python_env::PIPELINE_PACKAGES.len());
        for pin in &pins {
            let (name, version) = pin
                .split_once("==")
                .unwrap_or_else(|| panic!("not pinned: {pin}"));
            assert!(
                !name.is_empty() && version.split('.').all(|p| p.parse::<u32>().is_ok()),
                "{pin}"
            );
        }
        for (pkg, _) in python_env::PIPELINE_PACKAGES {
            assert!(
                pins.iter().any(|p| p.starts_with(&format!("{pkg}=="))),
                "{pkg} not pinned"
            );
        }
        assert!(pip_no_wheel(
            "ERROR: No matching distribution found for onnxruntime==1.23.2"
        ));
        assert!(!pip_no_wheel(
            "ERROR: Could not install packages due to an OSError"
        ));
    }
}
