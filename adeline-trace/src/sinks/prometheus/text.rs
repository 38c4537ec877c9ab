//! The Prometheus text exposition format, version 0.0.4: family headers
//! (`# HELP`, `# TYPE`), samples, classic histograms, escaping, numbers.
use std::fmt::Write as _;

use crate::metrics::buckets::Buckets;

/// The `Content-Type` of an exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value, printed without loss where the source is an integer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(i64),
    Count(u64),
    /// Nanoseconds, printed as exact decimal seconds.
    Seconds(u64),
    Float(f64),
}

impl Value {
    fn write(self, out: &mut String) {
        match self {
            Value::Int(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Count(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Seconds(ns) => out.push_str(&seconds(ns)),
            Value::Float(v) if v.is_nan() => out.push_str("NaN"),
            Value::Float(v) if v.is_infinite() => {
                out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" })
            }
            Value::Float(v) => {
                let _ = write!(out, "{v}");
            }
        }
    }
}

/// An exposition being written, family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts family `name`: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(
            self.text,
            "# HELP {name} {}\n# TYPE {name} {}",
            escape_help(help),
            kind.as_str()
        );
    }

    /// One sample line: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value) {
        self.text.push_str(name);
        write_labels(&mut self.text, labels);
        self.text.push(' ');
        value.write(&mut self.text);
        self.text.push('\n');
    }

    /// The samples of a histogram of durations (family `name` started by
    /// [`Self::family`] with [`Kind::Histogram`]): `_bucket` per bound in
    /// seconds and `+Inf`, then `_sum` in seconds and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], b: &Buckets) {
        let bucket = format!("{name}_bucket");
        let bounds = b.le.iter().map(|&(bound_ns, n)| (seconds(bound_ns), n));
        for (le, n) in bounds.chain([("+Inf".to_string(), b.count)]) {
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, Value::Count(n));
        }
        self.sample(&format!("{name}_sum"), labels, Value::Seconds(b.sum_ns));
        self.sample(&format!("{name}_count"), labels, Value::Count(b.count));
    }

    /// The exposition text.
    pub fn finish(self) -> String {
        self.text
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape_label(value));
    }
    out.push('}');
}

/// A label value with `\`, `"` and newline escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text with `\` and newline escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Nanoseconds as exact decimal seconds, without trailing zeros:
/// `500000` -> `0.0005`, `1000000000` -> `1`.
pub fn seconds(ns: u64) -> String {
    let (whole, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:09}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label("p99(infer) > 5ms"), "p99(infer) > 5ms");
        let mut e = Exposition::new();
        e.family("m", Kind::Gauge, "a \\ b\nc \"d\"");
        e.sample("m", &[("rule", "q\"\\\n"), ("x", "")], Value::Int(-3));
        assert_eq!(
            e.finish(),
            "# HELP m a \\\\ b\\nc \"d\"\n# TYPE m gauge\nm{rule=\"q\\\"\\\\\\n\",x=\"\"} -3\n"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(500_000), "0.0005");
        assert_eq!(seconds(1_000_000_000), "1");
        assert_eq!(seconds(2_500_000_001), "2.500000001");
        assert_eq!(seconds(u64::MAX), "18446744073.709551615");
        let text = |v: Value| {
            let mut s = String::new();
            v.write(&mut s);
            s
        };
        assert_eq!(text(Value::Float(29.5)), "29.5");
        assert_eq!(text(Value::Float(0.0)), "0");
        assert_eq!(text(Value::Float(f64::NAN)), "NaN");
        assert_eq!(text(Value::Float(f64::NEG_INFINITY)), "-Inf");
        assert_eq!(text(Value::Int(i64::MIN)), "-9223372036854775808");
        assert_eq!(text(Value::Count(u64::MAX)), "18446744073709551615");
    }

    #[test]
    fn histogram_lines() {
        let b = Buckets {
            le: vec![(500_000, 1), (1_000_000, 3)],
            count: 4,
            sum_ns: 3_250_000,
        };
        let mut e = Exposition::new();
        e.histogram("h_seconds", &[("stage", "a")], &b);
        assert_eq!(
            e.finish(),
            "h_seconds_bucket{stage=\"a\",le=\"0.0005\"} 1\n\
             h_seconds_bucket{stage=\"a\",le=\"0.001\"} 3\n\
             h_seconds_bucket{stage=\"a\",le=\"+Inf\"} 4\n\
             h_seconds_sum{stage=\"a\"} 0.00325\n\
             h_seconds_count{stage=\"a\"} 4\n"
        );
    }
}
