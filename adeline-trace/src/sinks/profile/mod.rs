//! Profile outputs: folded stacks, flame graph SVGs (inferno), differential
//! flame graphs, and pprof protobuf ([`pprof`]); the `--profile-out` file
//! ([`out`]). The HTTP API serves the same renderings (`/api/profile`).
use std::{fmt::Write as _, path::Path};

use crate::metrics::profile::Profile;

pub mod out;
pub mod pprof;

/// A profile rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `frame;frame;… µs` lines.
    Folded,
    /// A flame graph.
    Svg,
    /// pprof protobuf (`profile.proto`).
    Pprof,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "folded" => Some(Format::Folded),
            "svg" => Some(Format::Svg),
            "pprof" => Some(Format::Pprof),
            _ => None,
        }
    }

    /// By file name: `.svg`, `.pb`/`.pprof`, else folded.
    pub fn for_path(path: &Path) -> Format {
        let name = path.to_string_lossy();
        if name.ends_with(".svg") {
            Format::Svg
        } else if name.ends_with(".pb") || name.ends_with(".pprof") || name.ends_with(".pb.gz") {
            Format::Pprof
        } else {
            Format::Folded
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Folded => "text/plain; charset=utf-8",
            Format::Svg => "image/svg+xml",
            Format::Pprof => "application/octet-stream",
        }
    }
}

/// Rounds ns to whole µs (half up).
fn micros(ns: u64) -> u64 {
    (ns + 500) / 1000
}

/// Folded stacks, one `frame;frame;… µs` line per stack (root first, the
/// stage first; lines of less than 1 µs are left out), sorted.
pub fn folded(profile: &Profile) -> String {
    let mut lines: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for s in &profile.stacks {
        let key = s
            .frames
            .iter()
            .map(|f| f.label())
            .collect::<Vec<_>>()
            .join(";");
        *lines.entry(key).or_default() += s.ns;
    }
    let mut out = String::new();
    for (stack, ns) in lines {
        let us = micros(ns);
        if us > 0 {
            let _ = writeln!(out, "{stack} {us}");
        }
    }
    out
}

/// A flame graph of folded stacks (µs), titled.
pub fn svg_of_folded(folded: &str, title: &str) -> std::io::Result<Vec<u8>> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "µs".to_string();
    opts.name_type = "Frame:".to_string();
    // A profile with no sample is still a valid (empty) SVG.
    let mut out = Vec::new();
    if folded.trim().is_empty() {
        inferno::flamegraph::from_lines(&mut opts, ["(no samples) 0"].iter().copied(), &mut out)
            .or_else(|_| {
                out.clear();
                out.extend_from_slice(EMPTY_SVG.as_bytes());
                Ok::<(), std::io::Error>(())
            })?;
        return Ok(out);
    }
    inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut out)?;
    Ok(out)
}

/// What inferno refuses to draw (no sample) is this.
const EMPTY_SVG: &str = r#"<?xml version="1.0" standalone="no"?><svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg"><text x="600" y="30" text-anchor="middle" font-family="Verdana" font-size="17">No samples</text></svg>"#;

/// A flame graph of `profile`.
pub fn svg(profile: &Profile, title: &str) -> std::io::Result<Vec<u8>> {
    svg_of_folded(&folded(profile), title)
}

/// A differential flame graph: the shape of `after`, colored by the change
/// of each frame's share from `before` (red grew, blue shrank). Both are
/// normalized to the same total first.
pub fn diff_svg(before: &Profile, after: &Profile, title: &str) -> std::io::Result<Vec<u8>> {
    let (b, a) = (folded(before), folded(after));
    let mut diff = Vec::new();
    let opts = inferno::differential::Options {
        normalize: true,
        ..Default::default()
    };
    inferno::differential::from_readers(opts, b.as_bytes(), a.as_bytes(), &mut diff)?;
    let diff = String::from_utf8_lossy(&diff).into_owned();
    let mut fg = inferno::flamegraph::Options::default();
    fg.title = title.to_string();
    fg.subtitle = Some("red: grew since before the alert, blue: shrank".to_string());
    fg.count_name = "µs".to_string();
    let mut out = Vec::new();
    if diff.trim().is_empty() {
        out.extend_from_slice(EMPTY_SVG.as_bytes());
        return Ok(out);
    }
    inferno::flamegraph::from_lines(&mut fg, diff.lines(), &mut out)?;
    Ok(out)
}

/// `profile` in `format` (pprof needs the run's wall-clock start).
pub fn render(
    profile: &Profile,
    format: Format,
    title: &str,
    wall_start_ns: u64,
) -> std::io::Result<Vec<u8>> {
    match format {
        Format::Folded => Ok(folded(profile).into_bytes()),
        Format::Svg => svg(profile, title),
        Format::Pprof => Ok(pprof::encode(profile, wall_start_ns)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::profile::{
        names::{Frame, FrameKind},
        ProfileStack, TimeKind,
    };

    fn f(name: &str, kind: FrameKind) -> Frame {
        Frame {
            name: name.into(),
            file: None,
            line: None,
            kind,
        }
    }

    pub(crate) fn sample_profile() -> Profile {
        let stack = |names: &[(&str, FrameKind)], kind, ns| ProfileStack {
            frames: names.iter().map(|&(n, k)| f(n, k)).collect(),
            kind,
            ns,
            samples: 1,
        };
        Profile {
            stacks: vec![
                stack(
                    &[
                        ("infer", FrameKind::Marker),
                        ("main", FrameKind::User),
                        ("hot", FrameKind::User),
                    ],
                    TimeKind::OnCpu,
                    70_000_000,
                ),
                stack(
                    &[
                        ("infer", FrameKind::Marker),
                        ("main", FrameKind::User),
                        ("cold", FrameKind::User),
                    ],
                    TimeKind::OnCpu,
                    30_000_000,
                ),
                stack(
                    &[
                        ("infer", FrameKind::Marker),
                        ("main", FrameKind::User),
                        ("schedule", FrameKind::Kernel),
                        ("[off-cpu]", FrameKind::Marker),
                    ],
                    TimeKind::OffCpu,
                    1_500_400,
                ),
            ],
            period_ns: 10_000_000,
            range: None,
            truncated: 0,
        }
    }

    #[test]
    fn folded_lines_are_root_first_in_microseconds() {
        let text = folded(&sample_profile());
        assert_eq!(
            text,
            "infer;main;cold 30000\ninfer;main;hot 70000\ninfer;main;schedule_[k];[off-cpu] 1500\n"
        );
    }

    #[test]
    fn flame_graphs_are_svg() {
        let p = sample_profile();
        let svg = String::from_utf8(svg(&p, "t").unwrap()).unwrap();
        assert!(svg.contains("<svg") && svg.contains("hot") && svg.contains("[off-cpu]"));
        let empty = String::from_utf8(svg_of_folded("", "t").unwrap()).unwrap();
        assert!(empty.contains("<svg"), "{empty}");
        let mut after = p.clone();
        after.stacks[0].ns *= 3;
        let d = String::from_utf8(diff_svg(&p, &after, "d").unwrap()).unwrap();
        assert!(d.contains("<svg") && d.contains("hot"), "{d}");
    }
}
