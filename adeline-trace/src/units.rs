//! Unit tables shared by everything that reads or prints a quantity: the
//! duration units of alert rules, the byte sizes of alert rules and
//! `--alloc-min-bytes`, the time units of rates, and the prefixes the byte
//! formatter ([`crate::format::bytes`]) prints. A leaf: imports nothing.

/// Bytes in a KiB, MiB and GiB.
pub const KIB: f64 = 1024.0;
pub const MIB: f64 = KIB * KIB;
pub const GIB: f64 = MIB * KIB;

/// Duration units accepted after a number, and their length in ns.
pub const DURATION_UNITS: [(&str, f64); 5] = [
    ("ns", 1.0),
    ("us", 1e3),
    ("ms", 1e6),
    ("s", 1e9),
    ("m", 60e9),
];

/// The length in ns of a duration unit (`ns` `us` `ms` `s` `m`).
pub fn duration_unit_ns(word: &str) -> Option<f64> {
    DURATION_UNITS
        .iter()
        .find(|(u, _)| *u == word)
        .map(|(_, f)| *f)
}

/// Size units and their length in bytes; true for the binary ones.
pub const SIZE_UNITS: [(&str, f64, bool); 7] = [
    ("B", 1.0, true),
    ("KB", 1e3, false),
    ("MB", 1e6, false),
    ("GB", 1e9, false),
    ("KiB", KIB, true),
    ("MiB", MIB, true),
    ("GiB", GIB, true),
];

/// The length in bytes of a size unit (`B`, `KB` ... `GiB`) and whether it
/// is a binary one; None for anything else.
pub fn size_unit(word: &str) -> Option<(f64, bool)> {
    SIZE_UNITS
        .iter()
        .find(|(u, _, _)| *u == word)
        .map(|(_, f, binary)| (*f, *binary))
}

/// The prefixes printed for sizes from 1000 on, smallest first: decimal
/// (powers of 1000) and binary (powers of 1024).
pub const PRINTED_DECIMAL: [&str; 4] = ["KB", "MB", "GB", "TB"];
pub const PRINTED_BINARY: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];

/// The time unit of a rate (`/s`, `/min`, `/h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    S,
    Min,
    H,
}

impl Per {
    pub fn as_str(self) -> &'static str {
        match self {
            Per::S => "s",
            Per::Min => "min",
            Per::H => "h",
        }
    }

    /// Seconds in the unit.
    pub fn seconds(self) -> f64 {
        match self {
            Per::S => 1.0,
            Per::Min => 60.0,
            Per::H => 3600.0,
        }
    }

    pub fn from_word(word: &str) -> Option<Per> {
        Some(match word {
            "s" => Per::S,
            "min" => Per::Min,
            "h" => Per::H,
            _ => return None,
        })
    }
}

/// The units a size or a rate was written in (to print values alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteUnits {
    /// `B`, `KiB`, `MiB`, `GiB` (powers of 1024) rather than `KB`, `MB`, `GB`.
    pub binary: bool,
    /// The time unit of a rate; None for a size.
    pub per: Option<Per>,
}

/// Parses a byte size: a whole number with an optional unit of
/// [`SIZE_UNITS`] (`B`, `KB` ... `GiB`), e.g. `4096`, `64KiB`, ` 2 MB `.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| "expected a whole number of bytes".to_string())?;
    let mult = match unit.trim() {
        "" => 1,
        word => {
            size_unit(word)
                .ok_or_else(|| format!("unknown unit '{word}'"))?
                .0 as u64
        }
    };
    n.checked_mul(mult).ok_or_else(|| "too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size(" 2 MB "), Ok(2_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("12kb"), Err("unknown unit 'kb'".into()));
        assert_eq!(
            parse_size("MB"),
            Err("expected a whole number of bytes".into())
        );
    }

    #[test]
    fn unit_lookups() {
        assert_eq!(duration_unit_ns("ms"), Some(1e6));
        assert_eq!(duration_unit_ns("min"), None);
        assert_eq!(size_unit("MiB"), Some((MIB, true)));
        assert_eq!(size_unit("MB"), Some((1e6, false)));
        assert_eq!(size_unit("mb"), None);
        assert_eq!(Per::from_word("min").map(Per::seconds), Some(60.0));
    }
}
