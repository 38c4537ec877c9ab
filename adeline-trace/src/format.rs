//! How numbers are printed for people (tables on stderr, `summary`,
//! `history`, `compare`, alert lines): one formatter for durations, one for
//! byte sizes, and column alignment. JSON always carries raw integers. A
//! leaf: imports only the unit tables.

use crate::units::{PRINTED_BINARY, PRINTED_DECIMAL};

/// Nanoseconds in ns, us, ms or s with 3 significant figures (`1.50us`,
/// `12.3ms`, `123us`); whole nanoseconds below 1us, whole seconds from 1000s.
pub fn ns(ns: u64) -> String {
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    let mut value = ns as f64 / 1e3;
    for unit in ["us", "ms"] {
        let rounded = round3(value);
        if rounded < 1_000.0 {
            return format!("{}{unit}", fixed3(rounded));
        }
        value /= 1e3;
    }
    let rounded = round3(value);
    if rounded < 1_000.0 {
        format!("{}s", fixed3(rounded))
    } else {
        format!("{value:.0}s")
    }
}

/// A latency cell of a table: [`ns`], or `-` when there were no calls
/// (`count` 0: the figure is no data, not zero).
pub fn latency(count: u64, ns: u64) -> String {
    if count == 0 {
        "-".into()
    } else {
        self::ns(ns)
    }
}

/// Bytes with 3 significant figures in B, KB, MB, GB, TB (powers of 1000)
/// or, when `binary`, B, KiB, MiB, GiB, TiB (powers of 1024): `12.3 MiB`.
pub fn bytes(bytes: f64, binary: bool) -> String {
    if !bytes.is_finite() {
        return format!("{bytes} B");
    }
    let sign = if bytes < 0.0 { "-" } else { "" };
    let (base, units) = if binary {
        (1024.0, PRINTED_BINARY)
    } else {
        (1000.0, PRINTED_DECIMAL)
    };
    let mut value = bytes.abs();
    if value.round() < 1000.0 {
        return format!("{sign}{} B", number(value));
    }
    for (i, unit) in units.iter().enumerate() {
        value /= base;
        let rounded = round3(value);
        if rounded < 1000.0 || i == units.len() - 1 {
            let decimals = match rounded {
                r if r >= 100.0 => 0,
                r if r >= 10.0 => 1,
                r if r >= 1.0 => 2,
                _ => 3,
            };
            return format!("{sign}{rounded:.decimals$} {unit}");
        }
    }
    unreachable!("the last unit returns")
}

/// A plain number: whole numbers as integers, others with 3 significant figures.
pub fn number(v: f64) -> String {
    if !v.is_finite() || (v.fract() == 0.0 && v.abs() < 1e15) {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (2 - magnitude).max(0) as usize;
    format!("{v:.decimals$}")
}

/// A fraction as a percentage with one decimal.
pub fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// Rows aligned into columns two spaces apart: the columns in `left`
/// left-aligned (names, times, rules), the others right-aligned; no
/// trailing spaces.
pub fn align<const N: usize>(rows: &[[String; N]], left: &[usize]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(&pad(cell, w, left.contains(&i)));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `cell` padded with spaces to `width` characters: on the right when
/// `left` (left-aligned), else on the left. Unlike a `{:<width$}` format it
/// has no upper bound on `width` (format widths above 65535 panic).
pub fn pad(cell: &str, width: usize, left: bool) -> String {
    let fill = " ".repeat(width.saturating_sub(cell.chars().count()));
    if left {
        format!("{cell}{fill}")
    } else {
        format!("{fill}{cell}")
    }
}

/// Text echoed in a one-line message (an HTTP error body): control
/// characters (newlines) replaced by `?`, cut to `max_chars` (then `...`).
pub fn one_line(text: &str, max_chars: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max_chars)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > max_chars {
        out.push_str("...");
    }
    out
}

/// `v` (>= 1) rounded to 3 significant figures.
fn round3(v: f64) -> f64 {
    let scale = 10f64.powi(2 - v.log10().floor() as i32);
    (v * scale).round() / scale
}

/// A value in [1, 1000) already rounded to 3 significant figures, printed
/// with exactly 3 (1.50, 12.3, 123).
fn fixed3(v: f64) -> String {
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.decimals$}")
}

/// Joins an error and its sources into one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let msg = inner.to_string();
        // Some errors already print their source; do not repeat it.
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_three_significant_figures() {
        for (v, text) in [
            (0, "0ns"),
            (999, "999ns"),
            (1_000, "1.00us"),
            (1_500, "1.50us"),
            (9_996, "10.0us"),
            (12_345, "12.3us"),
            (123_456, "123us"),
            (999_499, "999us"),
            (999_500, "1.00ms"),
            (2_345_678, "2.35ms"),
            (999_999_600, "1.00s"),
            (3_000_000_000, "3.00s"),
            (61_000_000_000, "61.0s"),
            (999_600_000_000, "1000s"),
            (3_600_000_000_000, "3600s"),
        ] {
            assert_eq!(ns(v), text, "{v}");
        }
        assert_eq!(latency(0, 1_500), "-");
        assert_eq!(latency(3, 1_500), "1.50us");
    }

    #[test]
    fn numbers_print_whole_or_with_three_figures() {
        assert_eq!(number(2.0), "2");
        assert_eq!(number(24.5), "24.5");
        assert_eq!(number(0.012345), "0.0123");
        assert_eq!(number(1234.5678), "1235");
        assert_eq!(number(-2.5), "-2.50");
        assert_eq!(percent(0.625), "62.5%");
    }

    #[test]
    fn bytes_keep_three_significant_figures() {
        for (v, binary, text) in [
            (0.0, true, "0 B"),
            (0.5, true, "0.500 B"),
            (999.0, false, "999 B"),
            (1000.0, false, "1.00 KB"),
            (1000.0, true, "0.977 KiB"),
            (1023.0, true, "0.999 KiB"),
            (1024.0, true, "1.00 KiB"),
            (1536.0, true, "1.50 KiB"),
            (999_600.0, false, "1.00 MB"),
            (123_456_789.0, false, "123 MB"),
            (-5e6, false, "-5.00 MB"),
            (5e15, false, "5000 TB"),
        ] {
            assert_eq!(bytes(v, binary), text, "{v} {binary}");
        }
    }

    #[test]
    fn echoed_input_stays_one_short_line() {
        assert_eq!(one_line("a\nb\r", 80), "a?b?");
        let long = "x".repeat(200);
        assert_eq!(one_line(&long, 80), format!("{}...", "x".repeat(80)));
        assert_eq!(one_line(&long, 200), long);
    }

    #[test]
    fn columns_align_left_or_right_without_trailing_spaces() {
        let rows = [
            ["NAME", "N", "NOTE"].map(String::from),
            ["a", "1000", ""].map(String::from),
            ["longer", "7", "x"].map(String::from),
        ];
        assert_eq!(
            align(&rows, &[0, 2]),
            "NAME       N  NOTE\na       1000\nlonger     7  x\n"
        );
    }
}
