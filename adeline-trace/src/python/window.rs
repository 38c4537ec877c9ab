//! Windowed mode: the Python probes are attached for a window every
//! period (`--python-window 1s/10s`), so the per-call trap is paid only
//! inside windows. Every call that starts and ends inside a window is an
//! exact span; calls crossing a window's edge are not reported (the epoch
//! in each open call's key keeps an earlier window's entries from pairing
//! with a later window's exits).
use std::time::Duration;

use crate::config::ConfigError;

/// Default when Python stages are traced and no `--python-window` is
/// given: a 1 s window every 30 s. Always-on tracing slowed the fixture
/// pipeline by 1.3-2.9x on this (heavily loaded) machine (BENCHMARKS.md),
/// so a 1/30 duty cycle is what keeps a pipeline like it within ~3%.
/// `--python-window always` gives exact counts over the whole run.
pub const DEFAULT: Option<(Duration, Duration)> =
    Some((Duration::from_secs(1), Duration::from_secs(30)));

/// Parses `WINDOW/PERIOD` or `always`.
pub fn parse(
    text: Option<&str>,
    has_python: bool,
) -> Result<Option<(Duration, Duration)>, ConfigError> {
    let Some(text) = text else {
        return Ok(if has_python { DEFAULT } else { None });
    };
    let bad = |reason: &str| ConfigError::PythonWindow {
        value: text.to_string(),
        reason: reason.to_string(),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_windows() {
        assert_eq!(
            parse(Some("1s/10s"), true).unwrap(),
            Some((Duration::from_secs(1), Duration::from_secs(10)))
        );
        assert_eq!(parse(Some("always"), true).unwrap(), None);
        assert_eq!(parse(None, false).unwrap(), None);
        assert_eq!(parse(None, true).unwrap(), DEFAULT);
        for bad in ["1s", "10s/1s", "10ms/1s", "x/1s"] {
            assert!(parse(Some(bad), true).is_err(), "{bad}");
        }
    }
}

/// The Python probes' links and what re-attaches them.
#[derive(Default)]
pub struct Links {
    pub sites: Vec<crate::resolve::ProbeSite>,
    pub scopes: Vec<aya::programs::uprobe::UProbeScope>,
    pub links: Vec<(&'static str, aya::programs::uprobe::UProbeLinkId)>,
    /// Window epoch (the kernel's `PY_EPOCH`).
    pub epoch: u64,
}

/// Detaches (`on == false`) or re-attaches every Python probe; a new
/// window gets a new epoch first, so calls left open by the previous
/// window never pair with this window's exits.
pub fn toggle(ebpf: &mut aya::Ebpf, links: &mut Links, on: bool) -> Result<(), String> {
    use aya::programs::{uprobe::UProbeAttachPoint, UProbe};
    if !on {
        for (name, id) in links.links.drain(..) {
            let prog: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| format!("program {name} missing"))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| e.to_string())?;
            prog.detach(id).map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    if !links.links.is_empty() {
        return Ok(());
    }
    links.epoch += 1;
    {
        let map = ebpf.map_mut("PY_EPOCH").ok_or("no PY_EPOCH map")?;
        let mut a: aya::maps::Array<_, u64> =
            aya::maps::Array::try_from(map).map_err(|e| e.to_string())?;
        a.set(0, links.epoch & 0xffff, 0)
            .map_err(|e| e.to_string())?;
    }
    // Exits before entries, as at the first attach.
    for kind in [
        crate::resolve::SiteKind::PyExit,
        crate::resolve::SiteKind::PyEntry,
    ] {
        let name = if kind == crate::resolve::SiteKind::PyExit {
            "py_exit"
        } else {
            "py_entry"
        };
        let prog: &mut UProbe = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        for site in links.sites.iter().filter(|s| s.kind == kind) {
            for scope in &links.scopes {
                let point = UProbeAttachPoint {
                    location: site.offset.into(),
                    cookie: Some(site.cookie),
                };
                let id = prog
                    .attach(point, &site.path, *scope)
                    .map_err(|e| format!("re-attaching {}: {e}", site.symbol))?;
                links.links.push((name, id));
            }
        }
    }
    Ok(())
}

/// When the windowed mode toggles next.
pub struct Schedule {
    pub window: Duration,
    pub period: Duration,
    pub open: bool,
    pub opened_at: tokio::time::Instant,
}

impl Schedule {
    /// Starts with the window open (probes attached at start).
    pub fn new(window: Duration, period: Duration) -> Schedule {
        Schedule {
            window,
            period,
            open: true,
            opened_at: tokio::time::Instant::now(),
        }
    }

    pub fn next(&self) -> tokio::time::Instant {
        if self.open {
            self.opened_at + self.window
        } else {
            self.opened_at + self.period
        }
    }

    /// Toggles: returns whether the probes must now be attached.
    pub fn toggle(&mut self) -> bool {
        if self.open {
            self.open = false;
        } else {
            self.open = true;
            self.opened_at = tokio::time::Instant::now();
        }
        self.open
    }
}
