//! Probe kind `usdt`: USDT probes (SystemTap SDT notes, symbols/usdt.rs)
//! in any binary (docs/usdt.md).
//!
//! - A stage is a pair of probes: `usdt_entry` at every site of the entry
//!   probe opens a call (marked as a USDT call: it may span frames, so the
//!   exit-instruction mode's abandonment and catches leave it open), `usdt_return` at every site of the return probe
//!   ends the innermost open call of the stage (cookie = stage id), so a
//!   pair nests with function and Python stages on the thread's stack.
//! - A gauge is one probe: `usdt_arg` decodes one argument from the
//!   probe's registers per its note (a register, memory at register +
//!   displacement, or a constant), or records 1 per hit (an event). Its
//!   cookie is an index into the `USDT_ARGS` array ([`UsdtArgSpec`]).
//!
//! Every site is attached with its semaphore's file offset as the uprobe's
//! `ref_ctr_offset`: the kernel raises the semaphore in every process that
//! maps the file while the probe is attached and lowers it on detach, so a
//! probe guarded by `if (PROVIDER_NAME_ENABLED())` fires only then.
//! Kernel side: adeline-trace-ebpf/src/usdt.rs (and stage.rs's entry).
use std::path::{Path, PathBuf};

use adeline_trace_common::usdt::{
    UsdtArgSpec, MAX_USDT_ARGS, USDT_ARG_CONST, USDT_ARG_DEREF, USDT_ARG_HIT, USDT_ARG_REG,
};
use aya::{maps::Array, Ebpf};
use thiserror::Error;

use crate::symbols::{
    placement::{on_instruction, Emulation, Reason},
    process,
    usdt::{usdt_probes, x86_64_pt_regs_offset, UsdtArg, UsdtArgLoc, UsdtProbe},
    TargetError,
};

use super::{
    resolve::Resolver,
    site::{chain, ProbeError, ProbeSite, Program},
};

/// A stage's entry probe opens a call ...
pub const ENTRY: &[Program] = &[Program::entry("usdt_entry")];
/// ... its return probe ends it (a uprobe that ends calls).
pub const RETURN: &[Program] = &[Program::exit("usdt_return")];
/// A gauge's probe.
pub const ARG: &[Program] = &[Program::entry("usdt_arg")];

/// What a USDT probe names: `PROVIDER:NAME` in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeName {
    pub provider: String,
    pub name: String,
}

impl ProbeName {
    /// `PROVIDER:NAME` (both non-empty, no further ':').
    pub fn parse(text: &str) -> Option<ProbeName> {
        let (provider, name) = text.split_once(':')?;
        let (provider, name) = (provider.trim(), name.trim());
        let ok = |s: &str| !s.is_empty() && !s.contains([':', ',']);
        (ok(provider) && ok(name)).then(|| ProbeName {
            provider: provider.to_string(),
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for ProbeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.provider, self.name)
    }
}

/// Why USDT probes cannot be placed (a user error, before anything is
/// loaded).
#[derive(Debug, Error)]
pub enum UsdtError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{what} '{label}': no USDT probe {probe} in {}{}", path.display(), available(known))]
    NoProbe {
        what: &'static str,
        label: String,
        probe: String,
        path: PathBuf,
        /// The probes the file has (`PROVIDER:NAME`, deduplicated).
        known: Vec<String>,
    },
    #[error("gauge '{label}': USDT probe {probe} in {} has {}, not arg{index}", path.display(), arguments(*count))]
    NoArgument {
        label: String,
        probe: String,
        path: PathBuf,
        count: usize,
        index: u8,
    },
    #[error("gauge '{label}': USDT probe {probe} in {}: its arguments cannot be decoded ({reason})", path.display())]
    BadArguments {
        label: String,
        probe: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} '{label}': USDT probe {probe} at file offset {offset:#x} in {} cannot be probed: {reason}", path.display())]
    Unprobeable {
        what: &'static str,
        label: String,
        probe: String,
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("too many USDT gauge sites ({count}); at most {max}")]
    TooManyArgSites { count: usize, max: u32 },
}

fn arguments(count: usize) -> String {
    match count {
        0 => "no arguments".to_string(),
        1 => "1 argument (arg0)".to_string(),
        n => format!("{n} arguments (arg0..arg{})", n - 1),
    }
}

fn available(known: &[String]) -> String {
    match known {
        [] => " (it has no USDT probes: no .note.stapsdt section; `adeline-trace list FILE` shows what a file has)".to_string(),
        some => format!(" (it has: {})", some.join(", ")),
    }
}

/// The file `target` names for the traced pids and its USDT probes.
fn notes(resolver: &Resolver<'_>, target: &str) -> Result<(PathBuf, Vec<UsdtProbe>), UsdtError> {
    let path = process::resolve_target(target, resolver.pids())?;
    let probes = usdt_probes(&path)?;
    Ok((path, probes))
}

/// Every site (note) of `probe` in `probes`, or the error naming what the
/// file has.
fn sites_of<'p>(
    probes: &'p [UsdtProbe],
    probe: &ProbeName,
    path: &Path,
    what: &'static str,
    label: &str,
) -> Result<Vec<&'p UsdtProbe>, UsdtError> {
    let found: Vec<&UsdtProbe> = probes
        .iter()
        .filter(|p| p.provider == probe.provider && p.name == probe.name)
        .collect();
    if !found.is_empty() {
        return Ok(found);
    }
    let mut known: Vec<String> = probes
        .iter()
        .map(|p| format!("{}:{}", p.provider, p.name))
        .collect();
    known.dedup();
    known.sort();
    known.dedup();
    Err(UsdtError::NoProbe {
        what,
        label: label.to_string(),
        probe: probe.to_string(),
        path: path.to_path_buf(),
        known,
    })
}

/// A site on the probe's own instruction (its nop): the registers the
/// note names hold the arguments there and nowhere else.
fn site(
    what: &'static str,
    label: &str,
    path: &Path,
    probe: &UsdtProbe,
    cookie: u64,
    programs: &'static [Program],
) -> Result<ProbeSite, UsdtError> {
    let name = format!("{}:{}", probe.provider, probe.name);
    let unprobeable = |reason: String| UsdtError::Unprobeable {
        what,
        label: label.to_string(),
        probe: name.clone(),
        path: path.to_path_buf(),
        offset: probe.file_offset,
        reason,
    };
    let placement = on_instruction(path, probe.file_offset, Reason::Emulated(Emulation::Nop))
        .map_err(|e| unprobeable(e.to_string()))?
        .map_err(|refusal| unprobeable(refusal.0.to_string()))?;
    Ok(ProbeSite {
        stage: label.to_string(),
        cookie,
        path: path.to_path_buf(),
        symbol: format!("usdt:{name}"),
        offset: probe.file_offset,
        placement,
        ref_ctr_offset: probe.semaphore_offset,
        programs,
    })
}

/// Sites of USDT stage `id` named `name`: `ENTRY` at every site of the
/// entry probe, `RETURN` at every site of the return probe of `target`.
pub fn stage_sites(
    resolver: &Resolver<'_>,
    id: u32,
    name: &str,
    target: &str,
    entry: &ProbeName,
    ret: &ProbeName,
) -> Result<Vec<ProbeSite>, UsdtError> {
    let (path, probes) = notes(resolver, target)?;
    let entries = sites_of(&probes, entry, &path, "stage", name)?;
    let returns = sites_of(&probes, ret, &path, "stage", name)?;
    let mut sites = Vec::new();
    for p in returns {
        sites.push(site("stage", name, &path, p, u64::from(id), RETURN)?);
    }
    for p in entries {
        sites.push(site("stage", name, &path, p, u64::from(id), ENTRY)?);
    }
    Ok(sites)
}

/// What a USDT gauge records: argument N of the probe, or 1 per hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsdtValue {
    Arg(u8),
    Hit,
}

/// How the kernel decodes `arg` (see [`UsdtArgSpec`]).
fn arg_spec(gauge: u32, arg: &UsdtArg) -> Result<UsdtArgSpec, String> {
    let reg_off = |reg: &str| {
        x86_64_pt_regs_offset(reg)
            .map(|o| o as u32)
            .ok_or_else(|| format!("register %{reg} is not in pt_regs"))
    };
    let (kind, reg_off, value) = match &arg.loc {
        UsdtArgLoc::Const(v) => (USDT_ARG_CONST, 0, *v),
        UsdtArgLoc::Reg(reg) => (USDT_ARG_REG, reg_off(reg)?, 0),
        UsdtArgLoc::Deref { reg, offset } => (USDT_ARG_DEREF, reg_off(reg)?, *offset),
    };
    Ok(UsdtArgSpec {
        gauge,
        kind,
        reg_off,
        bitshift: 64 - 8 * u32::from(arg.size),
        signed: u32::from(arg.signed),
        _pad: 0,
        value,
    })
}

/// Sites of USDT gauge `id` named `name` on `probe` of `target`, and the
/// decoding of each (their cookies are `first` and on: indexes into
/// `USDT_ARGS`).
pub fn gauge_sites(
    resolver: &Resolver<'_>,
    (id, name): (u32, &str),
    target: &str,
    probe: &ProbeName,
    value: UsdtValue,
    first: usize,
) -> Result<(Vec<ProbeSite>, Vec<UsdtArgSpec>), UsdtError> {
    let (path, probes) = notes(resolver, target)?;
    let mut sites = Vec::new();
    let mut specs = Vec::new();
    for p in sites_of(&probes, probe, &path, "gauge", name)? {
        let spec = match value {
            UsdtValue::Hit => UsdtArgSpec {
                gauge: id,
                kind: USDT_ARG_HIT,
                ..UsdtArgSpec::default()
            },
            UsdtValue::Arg(index) => {
                if let Some(reason) = &p.args_error {
                    return Err(UsdtError::BadArguments {
                        label: name.to_string(),
                        probe: probe.to_string(),
                        path,
                        reason: reason.clone(),
                    });
                }
                let Some(arg) = p.args.get(usize::from(index)) else {
                    return Err(UsdtError::NoArgument {
                        label: name.to_string(),
                        probe: probe.to_string(),
                        path,
                        count: p.args.len(),
                        index,
                    });
                };
                arg_spec(id, arg).map_err(|reason| UsdtError::BadArguments {
                    label: name.to_string(),
                    probe: probe.to_string(),
                    path: path.clone(),
                    reason,
                })?
            }
        };
        let index = first + specs.len();
        if index >= MAX_USDT_ARGS as usize {
            return Err(UsdtError::TooManyArgSites {
                count: index + 1,
                max: MAX_USDT_ARGS,
            });
        }
        sites.push(site("gauge", name, &path, p, index as u64, ARG)?);
        specs.push(spec);
    }
    Ok((sites, specs))
}

/// Fills `USDT_ARGS` (index = the sites' cookies).
pub fn fill_map(ebpf: &mut Ebpf, specs: &[UsdtArgSpec]) -> Result<(), ProbeError> {
    if specs.is_empty() {
        return Ok(());
    }
    let map_err = |e: &dyn std::error::Error| ProbeError::Map {
        map: "USDT_ARGS",
        reason: chain(e),
    };
    let map = ebpf.map_mut("USDT_ARGS").ok_or(ProbeError::Map {
        map: "USDT_ARGS",
        reason: "missing from the object".into(),
    })?;
    let mut array: Array<_, UsdtArgSpec> = Array::try_from(map).map_err(|e| map_err(&e))?;
    for (i, spec) in specs.iter().enumerate() {
        array.set(i as u32, *spec, 0).map_err(|e| map_err(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_names() {
        let p = ProbeName::parse("python:gc__start").unwrap();
        assert_eq!(
            (p.provider.as_str(), p.name.as_str()),
            ("python", "gc__start")
        );
        assert_eq!(p.to_string(), "python:gc__start");
        for bad in ["python", ":x", "x:", "a:b:c", "a:b,c"] {
            assert_eq!(ProbeName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn argument_specs_for_the_kernel() {
        let regs = |spec: &str| {
            let args = crate::symbols::usdt::parse_args(spec, 0x1000, &|_| None).unwrap();
            args.iter()
                .map(|a| arg_spec(7, a).unwrap())
                .collect::<Vec<_>>()
        };
        let s = regs("-4@%edi 8@-8(%rbp) 2@$5 1@%al");
        assert_eq!(
            (s[0].kind, s[0].reg_off, s[0].bitshift, s[0].signed),
            (USDT_ARG_REG, 112, 32, 1)
        );
        assert_eq!(
            (
                s[1].kind,
                s[1].reg_off,
                s[1].value,
                s[1].bitshift,
                s[1].signed
            ),
            (USDT_ARG_DEREF, 32, -8, 0, 0)
        );
        assert_eq!(
            (s[2].kind, s[2].value, s[2].bitshift),
            (USDT_ARG_CONST, 5, 48)
        );
        assert_eq!((s[3].reg_off, s[3].bitshift), (80, 56));
        assert!(s.iter().all(|a| a.gauge == 7));
    }

    #[test]
    fn a_missing_probe_names_what_the_file_has() {
        let e = UsdtError::NoProbe {
            what: "stage",
            label: "gc".into(),
            probe: "python:gc_start".into(),
            path: "/usr/bin/python3.11".into(),
            known: vec!["python:gc__done".into(), "python:gc__start".into()],
        };
        assert_eq!(
            e.to_string(),
            "stage 'gc': no USDT probe python:gc_start in /usr/bin/python3.11 (it has: python:gc__done, python:gc__start)"
        );
    }
}
