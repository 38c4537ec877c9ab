//! `cargo xtask deb`: the Debian package of the agent as a system service,
//! built with dpkg-deb (Debian's own tool; nothing to install from
//! elsewhere):
//!
//!   /usr/bin/adeline-trace
//!   /usr/lib/systemd/system/adeline-trace.service   (packaging/)
//!   /etc/adeline-trace/pipeline.toml                (packaging/, a conffile)
//!   /usr/share/man/man1/adeline-trace*.1.gz         (`adeline-trace manpages`)
//!   /usr/share/bash-completion/completions/adeline-trace
//!   /usr/share/zsh/vendor-completions/_adeline-trace
//!   /usr/share/fish/vendor_completions.d/adeline-trace.fish
//!   /usr/share/doc/adeline-trace/{copyright,README.md,fleet.md}
//!
//! Man pages and completions are generated from the clap definitions by the
//! binary being packaged. The service is installed but not enabled: it has
//! nothing to trace until /etc/adeline-trace/pipeline.toml names stages.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{cargo, root_dir, status, target_dir};

/// What `cargo xtask deb` was asked for.
#[derive(Debug, clap::Args)]
pub struct DebArgs {
    /// Package this binary instead of building a release one.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Where the .deb goes (default target/deb).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(args: &DebArgs) -> Result<i32> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => {
            let built = status(cargo().args([
                "build",
                "--release",
                "-p",
                "adeline-trace",
                "--bin",
                "adeline-trace",
            ]))?;
            if !built.success() {
                return Ok(built.code().unwrap_or(1));
            }
            target_dir().join("release/adeline-trace")
        }
    };
    let out = args.out.clone().unwrap_or_else(|| target_dir().join("deb"));
    let deb = build(&binary, &out)?;
    println!("{}", deb.display());
    Ok(0)
}

/// The package's version: the agent crate's.
fn version() -> Result<String> {
    let manifest = std::fs::read_to_string(root_dir().join("Cargo.toml"))?;
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| {
            let v = l.trim().strip_prefix("version")?.trim().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
        .context("no version in [workspace.package]")
}

fn run_ok(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

fn put(stage: &Path, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let dest = stage.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().expect("a file in a directory"))?;
    std::fs::write(&dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Stages and builds the package into `out`; its path.
pub fn build(binary: &Path, out: &Path) -> Result<PathBuf> {
    let version = version()?;
    let arch = String::from_utf8(run_ok(Command::new("dpkg").arg("--print-architecture"))?)?
        .trim()
        .to_string();
    let work = target_dir().join("deb-staging");
    let _ = std::fs::remove_dir_all(&work);
    let stage = work.join("root");
    std::fs::create_dir_all(&stage)?;
    let packaging = root_dir().join("packaging");

    // The binary, without debug info.
    let bin = stage.join("usr/bin/adeline-trace");
    std::fs::create_dir_all(bin.parent().expect("usr/bin"))?;
    run_ok(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&bin)
            .arg(binary),
    )?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;

    let read = |name: &str| {
        std::fs::read(packaging.join(name)).with_context(|| format!("packaging/{name}"))
    };
    put(
        &stage,
        "usr/lib/systemd/system/adeline-trace.service",
        &read("adeline-trace.service")?,
        0o644,
    )?;
    put(
        &stage,
        "etc/adeline-trace/pipeline.toml",
        &read("pipeline.toml")?,
        0o644,
    )?;

    // Generated from the clap definitions by the binary itself.
    for (shell, path) in [
        (
            "bash",
            "usr/share/bash-completion/completions/adeline-trace",
        ),
        ("zsh", "usr/share/zsh/vendor-completions/_adeline-trace"),
        (
            "fish",
            "usr/share/fish/vendor_completions.d/adeline-trace.fish",
        ),
    ] {
        let script = run_ok(Command::new(&bin).args(["completions", shell]))?;
        put(&stage, path, &script, 0o644)?;
    }
    let man = work.join("man");
    run_ok(Command::new(&bin).arg("manpages").arg(&man))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)?
        .map(|e| Ok(e?.path()))
        .collect::<Result<_>>()?;
    pages.sort();
    for page in pages {
        let gz = run_ok(Command::new("gzip").args(["-9", "-n", "-c"]).arg(&page))?;
        let name = page.file_name().expect("a page").to_string_lossy();
        put(&stage, &format!("usr/share/man/man1/{name}.gz"), &gz, 0o644)?;
    }

    let doc = "usr/share/doc/adeline-trace";
    put(
        &stage,
        &format!("{doc}/copyright"),
        b"adeline-trace\nLicense: MIT OR Apache-2.0\n",
        0o644,
    )?;
    put(
        &stage,
        &format!("{doc}/README.md"),
        &std::fs::read(root_dir().join("README.md"))?,
        0o644,
    )?;
    put(
        &stage,
        &format!("{doc}/fleet.md"),
        &std::fs::read(root_dir().join("docs/fleet.md"))?,
        0o644,
    )?;

    // Control files.
    let control = format!(
        "Package: adeline-trace\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: adeline-trace developers <adeline-trace@localhost>\n\
         Depends: {}\n\
         Section: utils\n\
         Priority: optional\n\
         Installed-Size: {}\n\
         Description: per-stage latency of an inference pipeline, traced with eBPF\n \
         A root agent that attaches uprobes to a running pipeline's stage\n \
         functions and reports their latency as JSON Lines, a local HTTP API,\n \
         Prometheus metrics, a dashboard, SQLite history and OpenTelemetry.\n \
         Runs as the adeline-trace systemd service.\n",
        depends(&bin)?,
        installed_kib(&stage)?,
    );
    put(&stage, "DEBIAN/control", control.as_bytes(), 0o644)?;
    put(
        &stage,
        "DEBIAN/conffiles",
        b"/etc/adeline-trace/pipeline.toml\n",
        0o644,
    )?;
    let reload =
        "if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi\n";
    put(
        &stage,
        "DEBIAN/postinst",
        format!("#!/bin/sh\nset -e\n{reload}").as_bytes(),
        0o755,
    )?;
    put(
        &stage,
        "DEBIAN/prerm",
        b"#!/bin/sh\nset -e\nif [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then\n  systemctl stop adeline-trace.service >/dev/null 2>&1 || true\nfi\n",
        0o755,
    )?;
    put(
        &stage,
        "DEBIAN/postrm",
        format!("#!/bin/sh\nset -e\n{reload}").as_bytes(),
        0o755,
    )?;

    std::fs::create_dir_all(out)?;
    let deb = out.join(format!("adeline-trace_{version}_{arch}.deb"));
    run_ok(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group", "-Zxz"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// The Depends line: the shared libraries the binary links, as
/// dpkg-shlibdeps reads them from the installed packages.
fn depends(bin: &Path) -> Result<String> {
    let dir = target_dir().join("deb-staging/shlibdeps");
    std::fs::create_dir_all(dir.join("debian"))?;
    std::fs::write(
        dir.join("debian/control"),
        "Source: adeline-trace\n\nPackage: adeline-trace\nArchitecture: any\n",
    )?;
    let out = run_ok(
        Command::new("dpkg-shlibdeps")
            .current_dir(&dir)
            .arg("-O")
            .arg(format!("-e{}", bin.display())),
    )?;
    let text = String::from_utf8(out)?;
    text.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}

/// The staged files' size in KiB (the control file's Installed-Size).
fn installed_kib(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            bytes += installed_kib(&entry.path())? * 1024;
        } else {
            bytes += meta.len();
        }
    }
    Ok(bytes.div_ceil(1024))
}
