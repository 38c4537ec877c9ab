//! `cargo xtask setup`: make this machine able to build and test
//! adeline-trace. Idempotent and fast (< 2 s) when everything is present;
//! prints one line per item: `ok` or what it did. Recipe and reasons:
//! shared/TOOLCHAIN.md.
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
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{cargo, is_root, status};

const BPF_LINKER_VERSION: &str = "0.13.0";
const PACKAGES: [&str; 8] = [
    "bpftrace",
    "bpftool",
    "systemtap-sdt-dev",
    "g++",
    "binutils",
    // Headless browser and its WebDriver, for tests/suite/dashboard.rs.
    "chromium",
    "chromium-driver",
    "prometheus", // promtool and the server, for tests/suite/prometheus.rs
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
}
