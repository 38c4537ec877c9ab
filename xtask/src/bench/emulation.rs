//! `cargo xtask bench emulation`: which x86-64 instructions this kernel
//! emulates at a uprobe and which it single-steps (or refuses), measured.
//!
//! xtask/bench/emulation.c has one tiny function per instruction form. For
//! each, a tracefs uprobe event (`p:`, for some rows also a `r:` return
//! probe, no fetch arguments) is put on the instruction at its exact file
//! offset, enabled in a private tracefs instance, and the fixture's CPU time
//! per call (thread CPU: user + system, traps included) is compared with the
//! untraced run. The verdict comes from the measurement: the kernel's hit
//! count says whether the probe fired at all, and the extra cost is
//! compared with two reference rows of the same run, `push %rbx` and `mov`
//! (the geometric mean of their costs is the threshold). Only this bench's
//! own events are created and removed (`-:GROUP/EVENT`), never the whole
//! uprobe_events file. Needs root and tracefs.
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::tracefs::{self, Events};
use super::{build_c_fixture, fmt_ns, json_number, median};
use crate::target_dir;

/// (label, function, offset of the probed instruction, with a return probe).
const ROWS: &[(&str, &str, u64, bool)] = &[
    ("`endbr64`", "e_endbr64", 0, true),
    ("`push %rbx`", "e_push_rbx", 0, true),
    ("`push %rbp`", "e_push_rbp", 0, false),
    ("`push %r12`", "e_push_r12", 0, false),
    ("`push $imm8`", "e_push_imm8", 0, false),
    ("`push $imm32`", "e_push_imm32", 0, false),
    ("`nop` (90)", "e_nop", 0, false),
    ("`xchg %ax,%ax` (66 90)", "e_xchg_ax_ax", 0, false),
    ("`pause` (f3 90)", "e_pause", 0, false),
    ("`nopl (%rax)` (3 bytes)", "e_nopl_rax", 0, false),
    ("`nopl 0(%rax)` (4)", "e_nopl_0_rax", 0, false),
    ("`nopl 0(%rax,%rax,1)` (5)", "e_nopl_0_rax_rax", 0, true),
    ("`nopw 0(%rax,%rax,1)` (6)", "e_nopw_0_rax_rax", 0, false),
    ("`nopl 0L(%rax)` (7)", "e_nopl_0l_rax", 0, false),
    ("`nopl 0L(%rax,%rax,1)` (8)", "e_nopl_0l_rax_rax", 0, false),
    ("`nopw 0L(%rax,%rax,1)` (9)", "e_nopw_0l_rax_rax", 0, false),
    ("`cs nopw 0L(%rax,%rax,1)` (10)", "e_cs_nopw", 0, false),
    ("`nop %eax` (0f 1f c0)", "e_nop_eax", 0, false),
    ("`jmp rel8`", "e_jmp_rel8", 0, false),
    ("`jmp rel32`", "e_jmp_rel32", 0, false),
    ("`je rel8` (after `test`)", "e_je_rel8", 2, true),
    ("`je rel32` (after `test`)", "e_je_rel32", 2, false),
    ("`call rel32`", "e_call_rel32", 0, false),
    ("`ret`", "e_ret", 0, false),
    ("`mov %edi,%eax`", "e_mov", 0, false),
    ("`sub $8,%rsp`", "e_sub_rsp", 0, false),
    ("`test %edi,%edi`", "e_test", 0, false),
    ("`cmp $1,%edi`", "e_cmp", 0, false),
    ("`lea 1(%rdi),%eax`", "e_lea", 0, false),
];

/// Calls per run: ~0.3 s of CPU when every call is single-stepped.
const CALLS: u64 = 20_000;

pub(crate) fn emulation(runs: usize) -> Result<i32> {
    let work = target_dir().join("bench");
    std::fs::create_dir_all(&work)?;
    let fixture = work.join("emulation");
    build_c_fixture("emulation", &fixture)?;
    let fixture = fixture.canonicalize()?;
    let addresses = symbols(&fixture)?;
    let tracefs = tracefs::root()?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();

    // samples[row] = (untraced, entry, entry+return, hits entry, hits return)
    let mut untraced = vec![Vec::new(); ROWS.len()];
    let mut entry = vec![Vec::new(); ROWS.len()];
    let mut both = vec![Vec::new(); ROWS.len()];
    let mut hits = vec![(0u64, 0u64); ROWS.len()];
    for r in 0..runs {
        for (i, &(label, func, within, ret)) in ROWS.iter().enumerate() {
            let offset = addresses
                .iter()
                .find(|(n, _)| n == func)
                .with_context(|| format!("{func} not in the fixture"))?
                .1
                + within;
            untraced[i].push(run(&fixture, func)?);
            let probe = Events::new(&tracefs, &fixture, &[("p", offset)])?;
            entry[i].push(run(&fixture, func)?);
            hits[i].0 = probe.hits()?[0];
            drop(probe);
            if ret {
                let probe = Events::new(&tracefs, &fixture, &[("p", offset), ("r", offset)])?;
                both[i].push(run(&fixture, func)?);
                hits[i].1 = probe.hits()?[1];
            }
            eprintln!(
                "bench emulation [run {}/{runs}] {label:<34} {:>8} ns/call with a uprobe",
                r + 1,
                fmt_ns(*entry[i].last().unwrap())
            );
        }
    }
    let cost = |i: usize| median(entry[i].clone()) - median(untraced[i].clone());
    let at = |f: &str| ROWS.iter().position(|r| r.1 == f).unwrap();
    let threshold = (cost(at("e_push_rbx")) * cost(at("e_mov"))).sqrt();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nuprobe cost per instruction, Linux {kernel}: median of {runs} interleaved runs of \
         {CALLS} calls, thread CPU ns per call ({})\n",
        fixture.display()
    );
    let _ = writeln!(
        out,
        "| probed instruction | untraced | `p:` uprobe | `p:` + `r:` | hits | verdict |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---|");
    for (i, &(label, _, _, ret)) in ROWS.iter().enumerate() {
        let verdict = if hits[i].0 == 0 {
            "refused (never fires)"
        } else if cost(i) < threshold {
            "emulated"
        } else {
            "single-stepped"
        };
        let pair = if ret {
            fmt_ns(median(both[i].clone()))
        } else {
            "-".to_string()
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {pair} | {} | {verdict} |",
            fmt_ns(median(untraced[i].clone())),
            fmt_ns(median(entry[i].clone())),
            if ret {
                format!("{} / {}", hits[i].0, hits[i].1)
            } else {
                hits[i].0.to_string()
            }
        );
    }
    let _ = writeln!(
        out,
        "\nThreshold between emulated and single-stepped: {} ns of extra cost (geometric mean of \
         the `push %rbx` and `mov` rows). Command per row: `echo 'p:GROUP/EVENT {}:0xOFFSET' >> \
         {}/uprobe_events` (and `r:` for the return probe), enabled in the instance \
         {}/instances/GROUP, then `emulation FUNCTION {CALLS}`.",
        fmt_ns(threshold),
        fixture.display(),
        tracefs.display(),
        tracefs.display()
    );
    println!("{out}");
    Ok(0)
}

/// Runs the fixture once: thread CPU ns per call.
fn run(fixture: &Path, func: &str) -> Result<f64> {
    let out = Command::new(fixture)
        .arg(func)
        .arg(CALLS.to_string())
        .output()
        .with_context(|| format!("running {}", fixture.display()))?;
    if !out.status.success() {
        bail!("{} {func} failed", fixture.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    json_number(&text, "ns_per_call").context("no ns_per_call")
}

/// Function symbols of `bin` and their addresses (= file offsets in this
/// PIE's text segment, checked by the caller's hit counts).
fn symbols(bin: &Path) -> Result<Vec<(String, u64)>> {
    let out = Command::new("nm").arg(bin).output().context("running nm")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    for l in text.lines() {
        let parts: Vec<&str> = l.split_whitespace().collect();
        if let [addr, "T", name] = parts[..] {
            v.push((name.to_string(), u64::from_str_radix(addr, 16)?));
        }
    }
    // .text is mapped at file offset = address in gcc's default PIE layout.
    let headers = Command::new("readelf").arg("-lW").arg(bin).output()?;
    let headers = String::from_utf8_lossy(&headers.stdout);
    let exec_load = headers
        .lines()
        .find(|l| l.contains("LOAD") && l.contains("R E"))
        .context("no executable segment")?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16);
    let f: Vec<&str> = exec_load.split_whitespace().collect();
    if f.len() < 3 || hex(f[1])? != hex(f[2])? {
        bail!("the fixture's text segment is not mapped at file offset = address");
    }
    Ok(v)
}
