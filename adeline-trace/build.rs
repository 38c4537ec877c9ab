//! Builds the kernel programs (adeline-trace-ebpf) into OUT_DIR with the
//! stable toolchain: RUSTC_BOOTSTRAP=1 applies to that child build only and
//! makes aya-build add `-Z build-std=core`. It needs rust-src and a
//! bpf-linker built against the Rust toolchain's own LLVM, which
//! `cargo xtask setup` installs (see xtask/src/setup.rs).
use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let linker_ok = std::process::Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !linker_ok {
        return Err(anyhow!(
            "bpf-linker is missing or does not start: run `cargo xtask setup` first"
        ));
    }
    let meta = cargo_metadata_root()?;
    // The child cargo inherits this; the host build is unaffected.
    std::env::set_var("RUSTC_BOOTSTRAP", "1");
    let toolchain = std::env::var("ADELINE_EBPF_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    println!("cargo:rerun-if-env-changed=ADELINE_EBPF_TOOLCHAIN");
    aya_build::build_ebpf(
        [Package {
            name: "adeline-trace-ebpf",
            root_dir: &meta,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF programs")
}

fn cargo_metadata_root() -> anyhow::Result<String> {
    let here = std::env::var("CARGO_MANIFEST_DIR")?;
    let dir = std::path::Path::new(&here).join("../adeline-trace-ebpf");
    let dir = dir.canonicalize().context("finding adeline-trace-ebpf")?;
    Ok(dir.to_string_lossy().into_owned())
}
