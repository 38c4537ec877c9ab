//! Windowed mode: the Python probes are attached for a window every
//! period (`--python-window 1s/10s`), so the per-call trap is paid only
//! inside windows. Every call that starts and ends inside a window is an
//! exact span; calls crossing a window's edge are not reported (the epoch
//! in each open call's key keeps an earlier window's entries from pairing
//! with a later window's exits).
use std::time::Duration;

use crate::config::ConfigError;

/// Default when Python stages are traced and no `--python-window` is
/// given: always attached (see docs/python.md for what it costs).
pub const DEFAULT: Option<(Duration, Duration)> = None;

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
        for bad in ["1s", "10s/1s", "10ms/1s", "x/1s"] {
            assert!(parse(Some(bad), true).is_err(), "{bad}");
        }
    }
}
