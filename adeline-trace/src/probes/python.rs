//! Probe kind `python`: Python stages (`--stage NAME=python:INTERPRETER:
//! PATTERN`, docs/python.md). CPython introspection (which file runs the
//! eval loop, its version, layout and handler sites, the compiled
//! patterns) is python/; this file turns it into probe sites, the kernel
//! tables the programs read, and the windowed mode (`--python-window`):
//! the probes attached for a window every period. Kernel side:
//! adeline-trace-ebpf/src/python.rs.
use std::{collections::HashMap, path::PathBuf, time::Duration};

use adeline_trace_common::python::{PyPattern, PySite, MAX_PY_PATTERNS, MAX_PY_SITES};
use aya::{maps::Array, Ebpf};

use crate::{
    python::{check, pattern, Interpreter, PythonError},
    symbols::placement::{on_instruction, Reason},
};

use super::{
    attach::{group_by_path, LinkSet, LoadedUprobe, UprobeSpec},
    site::{chain, ProbeError, ProbeSite, Program},
};

/// A frame starts or resumes in the eval loop ...
pub const ENTRY: &[Program] = &[Program::entry("py_entry")];
/// ... or leaves it (return, exception, yield); cookie = site index. It
/// ends calls: attached before the entries.
pub const EXIT: &[Program] = &[Program::exit("py_exit")];

/// Whether a site is one of the interpreter's (windowed mode re-attaches
/// them).
pub fn is_python(site: &ProbeSite) -> bool {
    site.programs == ENTRY || site.programs == EXIT
}

/// The kernel's Python tables: the probed sites (indexed by cookie) and
/// the compiled patterns of every Python stage.
#[derive(Debug, Clone, Default)]
pub struct PythonTables {
    pub sites: Vec<PySite>,
    pub patterns: Vec<PyPattern>,
}

/// What the Python stages of a plan attach.
#[derive(Debug, Default)]
pub struct PyPlan {
    /// Attach points (cookie = index into `tables.sites`).
    pub sites: Vec<ProbeSite>,
    pub tables: PythonTables,
    pub warnings: Vec<String>,
}

/// One Python stage of the plan: its id, name, interpreter and pattern.
pub struct PyStage<'a> {
    pub id: u32,
    pub name: &'a str,
    pub interpreter: &'a str,
    pub pattern: &'a str,
}

/// Resolves the Python stages: each interpreter file once (its handler
/// sites, checked against every traced pid that runs it), every stage's
/// pattern compiled for its interpreter's version.
pub fn sites(stages: &[PyStage<'_>], pids: &[u32]) -> Result<PyPlan, PythonError> {
    let mut plan = PyPlan::default();
    if stages.is_empty() {
        return Ok(plan);
    }
    let mut by_path: HashMap<PathBuf, Interpreter> = HashMap::new();
    for stage in stages {
        let interp = Interpreter::open(stage.interpreter, pids)?;
        let parsed = pattern::parse(stage.pattern)?;
        let (pats, warning) = pattern::compile(&parsed, stage.id, interp.version);
        if let Some(w) = warning {
            plan.warnings.push(format!("'{}': {w}", stage.name));
        }
        plan.tables.patterns.extend(pats);
        by_path.entry(interp.path.clone()).or_insert(interp);
    }
    if plan.tables.patterns.len() > MAX_PY_PATTERNS as usize {
        return Err(PythonError::TooManyPatterns {
            count: plan.tables.patterns.len(),
            max: MAX_PY_PATTERNS,
        });
    }
    let mut interps: Vec<Interpreter> = by_path.into_values().collect();
    interps.sort_by(|a, b| a.path.cmp(&b.path));
    for interp in interps {
        for &pid in pids {
            check::sanity(pid, &interp)?;
        }
        for s in &interp.sites {
            if plan.tables.sites.len() >= MAX_PY_SITES as usize {
                break;
            }
            let bad = |reason: String| PythonError::Sites {
                path: interp.path.clone(),
                version: interp.version,
                reason,
            };
            let offset = interp
                .image
                .file_offset(s.vaddr)
                .ok_or_else(|| bad(format!("site {:#x} is not in the file", s.vaddr)))?;
            let placement = on_instruction(&interp.path, offset, Reason::Interpreter)
                .map_err(|e| bad(e.to_string()))?
                .map_err(|refusal| bad(format!("site {:#x}: {}", s.vaddr, refusal.0)))?;
            let mut unwind_ret = [0i64; 2];
            for (slot, d) in unwind_ret.iter_mut().zip(&s.unwind_ret) {
                *slot = *d;
            }
            let cookie = plan.tables.sites.len() as u64;
            plan.tables.sites.push(PySite {
                role: s.role,
                frame_src: s.frame_src,
                runtime_delta: interp.runtime as i64 - s.vaddr as i64,
                unwind_ret,
                layout: interp.layout,
            });
            plan.sites.push(ProbeSite {
                stage: format!("python {}", interp.version),
                cookie,
                path: interp.path.clone(),
                symbol: s.what.clone(),
                offset,
                placement,
                ref_ctr_offset: 0,
                programs: if s.is_entry() { ENTRY } else { EXIT },
            });
        }
    }
    Ok(plan)
}

/// Fills the kernel's Python tables (before any probe is attached).
pub fn fill_maps(ebpf: &mut Ebpf, tables: &PythonTables) -> Result<(), ProbeError> {
    fn array<'a, T: aya::Pod>(
        ebpf: &'a mut Ebpf,
        name: &'static str,
    ) -> Result<Array<&'a mut aya::maps::MapData, T>, ProbeError> {
        let map = ebpf
            .map_mut(name)
            .ok_or_else(|| ProbeError::Load(format!("no {name} map in the object")))?;
        Array::try_from(map).map_err(|e| ProbeError::Load(chain(&e)))
    }
    let err = |map: &'static str| {
        move |e: aya::maps::MapError| ProbeError::Map {
            map,
            reason: chain(&e),
        }
    };
    let mut sites = array::<PySite>(ebpf, "PY_SITES")?;
    for (i, s) in tables.sites.iter().enumerate() {
        sites.set(i as u32, *s, 0).map_err(err("PY_SITES"))?;
    }
    let mut patterns = array::<PyPattern>(ebpf, "PY_PATTERNS")?;
    for (i, p) in tables.patterns.iter().enumerate() {
        patterns.set(i as u32, *p, 0).map_err(err("PY_PATTERNS"))?;
    }
    Ok(())
}

/// Default when Python stages are traced and no `--python-window` is
/// given: a 1 s window every 30 s. Always-on tracing slowed the fixture
/// pipeline by 13-39 % (`cargo xtask bench python`, BENCHMARKS.md), so a
/// 1/30 duty cycle is what keeps a pipeline like it within 3 %.
/// `--python-window always` gives exact counts over the whole run.
pub const DEFAULT_WINDOW: Option<(Duration, Duration)> =
    Some((Duration::from_secs(1), Duration::from_secs(30)));

/// Parses `--python-window`: `WINDOW/PERIOD` or `always` (None: always);
/// the default applies when Python stages are traced. Errs with (the
/// value, why).
pub fn parse_window(
    text: Option<&str>,
    has_python: bool,
) -> Result<Option<(Duration, Duration)>, (String, String)> {
    let Some(text) = text else {
        return Ok(if has_python { DEFAULT_WINDOW } else { None });
    };
    let bad = |reason: &str| (text.to_string(), reason.to_string());
    if text.trim() == "always" {
        return Ok(None);
    }
    let (w, p) = text
        .split_once('/')
        .ok_or_else(|| bad("missing '/' between WINDOW and PERIOD"))?;
    let w = humantime::parse_duration(w.trim()).map_err(|e| bad(&e.to_string()))?;
    let p = humantime::parse_duration(p.trim()).map_err(|e| bad(&e.to_string()))?;
    if w < Duration::from_millis(100) {
        return Err(bad("the window must be at least 100ms"));
    }
    if w >= p {
        return Err(bad("the window must be shorter than the period"));
    }
    Ok(Some((w, p)))
}

/// When the windowed mode toggles next.
struct Schedule {
    window: Duration,
    period: Duration,
    open: bool,
    opened_at: tokio::time::Instant,
}

impl Schedule {
    /// Starts with the window open (probes attached at start).
    fn new(window: Duration, period: Duration) -> Schedule {
        Schedule {
            window,
            period,
            open: true,
            opened_at: tokio::time::Instant::now(),
        }
    }

    fn next(&self) -> tokio::time::Instant {
        if self.open {
            self.opened_at + self.window
        } else {
            self.opened_at + self.period
        }
    }

    /// Toggles: returns whether the probes must now be attached.
    fn toggle(&mut self) -> bool {
        if self.open {
            self.open = false;
        } else {
            self.open = true;
            self.opened_at = tokio::time::Instant::now();
        }
        self.open
    }
}

/// The Python probes of a run in windowed mode: their loaded programs
/// (exits first), sites and pid scopes, and the links of the open window.
/// Every call that starts and ends inside a window is an exact span; calls
/// crossing a window's edge are not reported (the epoch in each open
/// call's key keeps an earlier window's entries from pairing with a later
/// window's exits).
pub struct Windows {
    programs: Vec<(&'static [Program], LoadedUprobe)>,
    sites: Vec<ProbeSite>,
    scopes: Vec<Option<u32>>,
    links: LinkSet,
    /// Window epoch (the kernel's `PY_EPOCH`).
    epoch: u64,
    schedule: Schedule,
}

impl Windows {
    /// Windowed mode for `sites` (the window is open: they were just
    /// attached into `links`), re-attached with `programs`.
    pub fn new(
        (window, period): (Duration, Duration),
        programs: Vec<(&'static [Program], LoadedUprobe)>,
        sites: Vec<ProbeSite>,
        scopes: Vec<Option<u32>>,
        links: LinkSet,
    ) -> Windows {
        Windows {
            programs,
            sites,
            scopes,
            links,
            epoch: 0,
            schedule: Schedule::new(window, period),
        }
    }

    /// When the window opens or closes next.
    pub fn next(&self) -> tokio::time::Instant {
        self.schedule.next()
    }

    /// Opens or closes the window: detaches every Python probe, or gives
    /// the new window a new epoch first and re-attaches them (exits before
    /// entries, as at the first attach).
    pub fn toggle(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        if !self.schedule.toggle() {
            self.links.detach();
            return Ok(());
        }
        self.epoch += 1;
        let map = ebpf
            .map_mut("PY_EPOCH")
            .ok_or_else(|| ProbeError::Load("no PY_EPOCH map".into()))?;
        let mut epoch: Array<_, u64> =
            Array::try_from(map).map_err(|e| ProbeError::Load(chain(&e)))?;
        epoch
            .set(0, self.epoch & 0xffff, 0)
            .map_err(|e| ProbeError::Map {
                map: "PY_EPOCH",
                reason: chain(&e),
            })?;
        for (programs, prog) in &self.programs {
            let of_program = self.sites.iter().filter(|s| s.programs == *programs);
            for (path, group) in group_by_path(of_program, |s| &s.path) {
                let specs: Vec<UprobeSpec> = group.iter().map(|s| s.spec()).collect();
                for &pid in &self.scopes {
                    let link = prog
                        .attach(path, &specs, pid)
                        .map_err(|e| ProbeError::Attach {
                            stage: group[0].stage.clone(),
                            symbol: format!("{} sites", group.len()),
                            path: path.display().to_string(),
                            reason: chain(&e),
                        })?;
                    self.links.push(link);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_windows() {
        assert_eq!(
            parse_window(Some("1s/10s"), true).unwrap(),
            Some((Duration::from_secs(1), Duration::from_secs(10)))
        );
        assert_eq!(parse_window(Some("always"), true).unwrap(), None);
        assert_eq!(parse_window(None, false).unwrap(), None);
        assert_eq!(parse_window(None, true).unwrap(), DEFAULT_WINDOW);
        for bad in ["1s", "10s/1s", "10ms/1s", "x/1s"] {
            assert!(parse_window(Some(bad), true).is_err(), "{bad}");
        }
    }

    /// Loads the Python programs through the verifier (root only); prints
    /// the verifier's statistics.
    #[test]
    fn python_programs_pass_the_verifier() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: needs root"
            );
            eprintln!("skipped: needs root");
            return;
        }
        let one = 1u32;
        let mut ebpf = aya::EbpfLoader::new()
            .allow_unsupported_maps()
            .override_global("FILTER_PIDS", &one, true)
            .override_global("PY_NPATTERNS", &one, true)
            .verifier_log_level(aya::VerifierLogLevel::STATS)
            .load(super::super::OBJECT)
            .unwrap();
        for name in ["py_entry", "py_exit"] {
            let start = std::time::Instant::now();
            let prog: &mut aya::programs::UProbe =
                ebpf.program_mut(name).unwrap().try_into().unwrap();
            let r = prog.load();
            eprintln!(
                "{name}: {:?} in {:?}",
                r.as_ref().err().map(|e| e.to_string()),
                start.elapsed()
            );
            if let Err(e) = r {
                let mut s = format!("{e:?}");
                s.truncate(4000);
                panic!("{name}: {s}");
            }
        }
    }
}
