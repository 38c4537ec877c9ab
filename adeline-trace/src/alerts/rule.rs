//! Alert rule grammar: rule text -> [`Rule`] ([`parse_rule`]), and the checks
//! against the plan's stage, gauge and frame names ([`validate`]).
//!
//! A hand-written recursive-descent parser over characters (the lexical
//! helpers are methods of [`Parser`]: words, stage names, numbers, units).
//! Every error names the rule, the 1-based column and what was expected.
//! Grammar (EBNF) and semantics: docs/alerts.md.
use std::fmt;

use thiserror::Error;

use crate::units::{ByteUnits, Per};
use crate::{
    format,
    metrics::snapshot::Stat,
    units::{duration_unit_ns, size_unit, MIB},
};

/// Default threshold of a bare `leak(STAGE)`: 1 MiB/min, in bytes/s.
pub const LEAK_DEFAULT_BYTES_PER_S: f64 = MIB / 60.0;
/// Default `for` of a `leak(STAGE)` rule written without one: 30 s.
pub const LEAK_DEFAULT_FOR_NS: u64 = 30_000_000_000;
/// How the default leak threshold is printed: binary sizes per minute.
const LEAK_DEFAULT_UNITS: ByteUnits = ByteUnits {
    binary: true,
    per: Some(Per::Min),
};

/// A parsed alert rule: `METRIC OP THRESHOLD [for DURATION]`, or
/// `leak(STAGE)` with its threshold and/or `for` left to the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule as written (alert events and errors quote it).
    pub text: String,
    /// What is measured.
    pub metric: Metric,
    /// 1-based column of what the metric is about (the stage or gauge name,
    /// `frame`, or the `fps` keyword), for the errors of [`validate`].
    pub subject_column: usize,
    pub op: CmpOp,
    pub threshold: Threshold,
    /// How long (ns) the condition must hold before the rule fires (0: at once).
    pub for_ns: u64,
    /// Memory metrics: how the threshold was written, to print values alike.
    pub byte_units: Option<ByteUnits>,
}

/// What kind of value a metric is, which decides the threshold's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// A plain number (no unit).
    Number,
    /// A duration (ns): `ns` `us` `ms` `s` `m`.
    Duration,
    /// A size (bytes): `B` `KB` `MB` `GB` `KiB` `MiB` `GiB`.
    Size,
    /// A rate (bytes/s): a size unit then `/s`, `/min` or `/h`.
    Rate,
}

impl Quantity {
    fn article(self) -> &'static str {
        match self {
            Quantity::Number => "a plain number",
            Quantity::Duration => "a duration",
            Quantity::Size => "a size",
            Quantity::Rate => "a rate",
        }
    }

    /// The units of this kind, for errors.
    fn units(self) -> &'static str {
        match self {
            Quantity::Number => "a plain number, without a unit",
            Quantity::Duration => "ns, us, ms, s or m",
            Quantity::Size => "B, KB, MB, GB, KiB, MiB or GiB",
            Quantity::Rate => "a size unit per s, min or h, such as MB/min or KiB/s",
        }
    }

    /// An example unit to append to a number, for errors.
    fn example(self) -> &'static str {
        match self {
            Quantity::Number | Quantity::Duration => "ms",
            Quantity::Size => "MB",
            Quantity::Rate => "MB/min",
        }
    }
}

/// The calls a latency, rate or count function is taken over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// The calls of one stage.
    Stage(String),
    /// Whole frames (calls of the frame-root stage); written `frame`.
    Frame,
}

/// What a rule measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metric {
    /// `p50(..)` .. `max(..)`: a latency statistic in ns.
    Latency { stat: Stat, of: Subject },
    /// `rate(..)`: calls per second (`rate(frame)` is the FPS).
    Rate(Subject),
    /// `count(..)`: calls in the window.
    Count(Subject),
    /// `share(STAGE)`: fraction (0..1) of frame time spent in the stage's own code.
    Share(String),
    /// `gauge(NAME)`: the gauge's last recorded value.
    Gauge(String),
    /// `fps`: frames completed per second.
    Fps,
    /// `drops`: events lost in the kernel over the last second.
    Drops,
    /// `rss`: resident bytes of the traced process (largest over its pids).
    Rss,
    /// `rss_growth`: RSS growth in bytes/s (largest over the traced pids).
    RssGrowth,
    /// `outstanding(STAGE)`: bytes the stage holds (alloc mode: allocated
    /// and not freed; otherwise mmap'ed and not munmap'ed).
    Outstanding(String),
    /// `leak(STAGE)`: growth of the stage's outstanding bytes, in bytes/s.
    Leak(String),
}

impl Metric {
    /// The stage the metric is about (`Subject::Frame`: the frame stage,
    /// named by the caller), or None (fps, drops, rss, gauges).
    pub fn subject(&self) -> Option<&Subject> {
        match self {
            Metric::Latency { of, .. } | Metric::Rate(of) | Metric::Count(of) => Some(of),
            _ => None,
        }
    }

    /// The stage named by `share`, `outstanding` and `leak`.
    pub fn stage(&self) -> Option<&str> {
        match self {
            Metric::Share(s) | Metric::Outstanding(s) | Metric::Leak(s) => Some(s),
            _ => match self.subject() {
                Some(Subject::Stage(s)) => Some(s),
                _ => None,
            },
        }
    }

    /// True for durations: their thresholds need a unit and are kept in ns.
    pub fn is_duration(&self) -> bool {
        self.quantity() == Quantity::Duration
    }

    /// The kind of value: durations (ns), sizes (bytes) and rates (bytes/s)
    /// need a unit on their threshold, plain numbers take none.
    pub fn quantity(&self) -> Quantity {
        match self {
            Metric::Latency { .. } => Quantity::Duration,
            Metric::Rss | Metric::Outstanding(_) => Quantity::Size,
            Metric::RssGrowth | Metric::Leak(_) => Quantity::Rate,
            _ => Quantity::Number,
        }
    }

    /// Whether `N * baseline` makes sense: counts depend on the window's
    /// length and drops are a run-wide counter, so those two cannot; the
    /// baseline snapshot holds no memory, so memory metrics cannot either.
    fn allows_baseline(&self) -> bool {
        !matches!(self, Metric::Count(_) | Metric::Drops) && !self.is_memory()
    }

    fn is_memory(&self) -> bool {
        matches!(self.quantity(), Quantity::Size | Quantity::Rate)
    }

    fn name(&self) -> &'static str {
        match self {
            Metric::Latency { stat, .. } => stat.as_str(),
            Metric::Rate(_) => "rate",
            Metric::Count(_) => "count",
            Metric::Share(_) => "share",
            Metric::Gauge(_) => "gauge",
            Metric::Fps => "fps",
            Metric::Drops => "drops",
            Metric::Rss => "rss",
            Metric::RssGrowth => "rss_growth",
            Metric::Outstanding(_) => "outstanding",
            Metric::Leak(_) => "leak",
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    /// Whether `value OP threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            CmpOp::Gt => value > threshold,
            CmpOp::Ge => value >= threshold,
            CmpOp::Lt => value < threshold,
            CmpOp::Le => value <= threshold,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }
}

/// What the metric is compared with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// A fixed value (durations already in ns, sizes in bytes, rates in bytes/s).
    Value(f64),
    /// This factor times the same metric in the baseline snapshot.
    Baseline(f64),
}

/// A rule that cannot be parsed or does not fit the plan. Displays as one
/// line: `alert rule 'TEXT': column N: WHAT`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("alert rule '{}': column {column}: {kind}", one_line(.rule))]
pub struct RuleError {
    /// The rule as written.
    pub rule: String,
    /// 1-based column (in characters) where the problem is.
    pub column: usize,
    pub kind: RuleErrorKind,
}

/// What is wrong with a rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleErrorKind {
    #[error("expected {expected}{}, found {found}", after_clause(.after))]
    Expected {
        expected: &'static str,
        /// The text just before, quoted, if any.
        after: Option<String>,
        /// What is there instead, quoted, or `end of rule`.
        found: String,
    },
    #[error(
        "unknown metric '{0}'; expected p50, p90, p95, p99, p999, mean, min, max, rate, count, \
         share, gauge, outstanding or leak (each followed by '(NAME)'), fps, drops, rss or \
         rss_growth"
    )]
    UnknownMetric(String),
    #[error("unknown unit '{unit}'; expected {}", .expected.units())]
    UnknownUnit { unit: String, expected: Quantity },
    #[error("{}", missing_unit(.metric, *.quantity, .value))]
    MissingUnit {
        metric: &'static str,
        quantity: Quantity,
        value: String,
    },
    #[error("a duration needs a unit (ns, us, ms, s or m), e.g. {0}s")]
    MissingDurationUnit(String),
    #[error("{metric} is not {}: write the threshold as a plain number", .unit_kind.article())]
    UnexpectedUnit {
        metric: &'static str,
        unit_kind: Quantity,
    },
    #[error(
        "{metric} is {}: '{unit}' is {} unit; use {}",
        .quantity.article(),
        .unit_kind.article(),
        .quantity.units()
    )]
    WrongUnit {
        metric: &'static str,
        quantity: Quantity,
        unit: String,
        unit_kind: Quantity,
    },
    #[error("expected a duration unit (ns, us, ms, s or m) after the number, found '{0}'")]
    NotADuration(String),
    #[error("expected s, min or h after '{0}/', found {1}")]
    MissingPer(String, String),
    #[error("{metric} cannot be compared with a baseline{hint}", metric = .0, hint = baseline_hint(.0))]
    NoBaseline(&'static str),
    #[error(
        "{0}(frame) is not defined; frame works with p50..p999, mean, min, max, rate and count"
    )]
    FrameNotAllowed(&'static str),
    #[error("a duration cannot be negative")]
    NegativeDuration,
    #[error("a size cannot be negative")]
    NegativeSize,
    #[error("the baseline factor cannot be negative")]
    NegativeFactor,
    #[error("number out of range")]
    OutOfRange,
    #[error("unknown stage '{name}'{}; {}", did_you_mean(.suggestion), known_names("stages", .known))]
    UnknownStage {
        name: String,
        suggestion: Option<String>,
        known: Vec<String>,
    },
    #[error("unknown gauge '{name}'{}; {}", did_you_mean(.suggestion), known_names("gauges", .known))]
    UnknownGauge {
        name: String,
        suggestion: Option<String>,
        known: Vec<String>,
    },
    #[error("{0} needs a frame stage and none is configured (set one with --frame-stage)")]
    NoFrames(&'static str),
}

/// The text with control characters (newlines...) escaped, so that an error
/// stays on one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn after_clause(after: &Option<String>) -> String {
    after
        .as_ref()
        .map(|a| format!(" after {a}"))
        .unwrap_or_default()
}

fn baseline_hint(metric: &str) -> &'static str {
    match metric {
        "count" => " (it depends on the window's length); use rate(..) instead",
        "drops" => " (it is a run-wide counter)",
        "rss" | "outstanding" => " (the baseline has no memory data); use a size such as 500MB",
        _ => " (the baseline has no memory data); use a rate such as 20MB/min",
    }
}

fn missing_unit(metric: &str, quantity: Quantity, value: &str) -> String {
    match quantity {
        // The wording of durations predates sizes and rates.
        Quantity::Duration | Quantity::Number => format!(
            "{metric} is a duration: give the threshold a unit (ns, us, ms, s), e.g. {value}ms"
        ),
        q => format!(
            "{metric} is {}: give the threshold a unit ({}), e.g. {value}{}",
            q.article(),
            q.units(),
            q.example()
        ),
    }
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean '{s}'?)"))
        .unwrap_or_default()
}

fn known_names(what: &str, names: &[String]) -> String {
    if names.is_empty() {
        format!("no {what} are configured")
    } else {
        format!("known {what}: {}", names.join(", "))
    }
}

/// A unit after a number.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    /// ns per unit.
    Duration(f64),
    /// Bytes per unit.
    Size(f64, bool),
    /// Bytes per size unit, and the units (with the time unit).
    Rate(f64, ByteUnits),
}

impl Unit {
    fn quantity(self) -> Quantity {
        match self {
            Unit::Duration(_) => Quantity::Duration,
            Unit::Size(..) => Quantity::Size,
            Unit::Rate(..) => Quantity::Rate,
        }
    }
}

/// Parses one rule, e.g. `p99(infer) > 50ms for 5s` or
/// `p95(frame) > 1.2 * baseline`. Names are not checked here: see [`validate`].
pub fn parse_rule(text: &str) -> Result<Rule, RuleError> {
    Parser { text, pos: 0 }.rule()
}

/// Checks the names a rule uses against the plan: its stages, its gauges, and
/// whether it has a frame stage (needed by `fps` and `frame`). `frame` is a
/// reserved word in latency, rate and count functions: it always means frames.
pub fn validate(
    rule: &Rule,
    stages: &[String],
    gauges: &[String],
    has_frames: bool,
) -> Result<(), RuleError> {
    let fail = |kind| {
        Err(RuleError {
            rule: rule.text.clone(),
            column: rule.subject_column,
            kind,
        })
    };
    let stage = match &rule.metric {
        Metric::Fps => {
            return if has_frames {
                Ok(())
            } else {
                fail(RuleErrorKind::NoFrames("fps"))
            }
        }
        Metric::Drops | Metric::Rss | Metric::RssGrowth => return Ok(()),
        Metric::Gauge(name) => {
            return if gauges.iter().any(|g| g == name) {
                Ok(())
            } else {
                fail(RuleErrorKind::UnknownGauge {
                    name: name.clone(),
                    suggestion: closest(name, gauges),
                    known: gauges.to_vec(),
                })
            };
        }
        Metric::Share(name) | Metric::Outstanding(name) | Metric::Leak(name) => name,
        Metric::Latency { of, .. } | Metric::Rate(of) | Metric::Count(of) => match of {
            Subject::Frame if has_frames => return Ok(()),
            Subject::Frame => return fail(RuleErrorKind::NoFrames("'frame'")),
            Subject::Stage(name) => name,
        },
    };
    if stages.iter().any(|s| s == stage) {
        Ok(())
    } else {
        fail(RuleErrorKind::UnknownStage {
            name: stage.clone(),
            suggestion: closest(stage, stages),
            known: stages.to_vec(),
        })
    }
}

/// How to print the values of the metric of the rule written `rule`:
/// durations (ns) in human units, sizes (bytes) and rates (bytes/s) in the
/// size and time units of the rule's threshold (`12.3 MiB/min` for
/// `leak(S) > 1MiB/min`), shares as percentages, anything else (or a rule
/// this version cannot parse) as a plain number. Alert lines on stderr,
/// `summary` and `history` print alert values with it.
pub fn value_formatter(rule: &str) -> Box<dyn Fn(f64) -> String> {
    let Ok(rule) = parse_rule(rule) else {
        return Box::new(format::number);
    };
    match (rule.metric.quantity(), rule.byte_units) {
        (Quantity::Duration, _) => Box::new(|v| format::ns(v.max(0.0).round() as u64)),
        (Quantity::Size | Quantity::Rate, Some(ByteUnits { binary, per })) => {
            Box::new(move |v| match per {
                Some(per) => format!(
                    "{}/{}",
                    format::bytes(v * per.seconds(), binary),
                    per.as_str()
                ),
                None => format::bytes(v, binary),
            })
        }
        _ if matches!(rule.metric, Metric::Share(_)) => Box::new(format::percent),
        _ => Box::new(format::number),
    }
}

/// The known name closest to `name`, if it is close enough to be a typo.
fn closest(name: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(name, k), k))
        .filter(|(d, _)| *d <= 2.max(name.chars().count() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

/// Recursive-descent parser over the rule's characters. `pos` is a byte
/// offset, always on a character boundary.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    /// rule = condition [ "for" duration ]
    ///      | "leak" "(" stage ")" [ "for" duration ] ;
    fn rule(mut self) -> Result<Rule, RuleError> {
        self.skip_ws();
        let metric_start = self.pos;
        let (metric, subject_column) = self.metric()?;
        let metric_text = self.text[metric_start..self.pos].to_string();
        let is_leak = matches!(metric, Metric::Leak(_));
        self.skip_ws();
        let (op, threshold, byte_units, last_text) =
            if is_leak && (self.at_end() || self.word_is("for")) {
                // A bare leak(STAGE): the default threshold.
                let threshold = Threshold::Value(LEAK_DEFAULT_BYTES_PER_S);
                (CmpOp::Gt, threshold, Some(LEAK_DEFAULT_UNITS), metric_text)
            } else {
                let expected = if is_leak {
                    "a comparison (>, >=, <, <=), 'for' or the end of the rule"
                } else {
                    "a comparison (>, >=, <, <=)"
                };
                let op = self.cmp_op(expected, &metric_text)?;
                let threshold_start = self.skip_ws_pos();
                let (threshold, byte_units) = self.threshold(&metric, op)?;
                let threshold_text = self.text[threshold_start..self.pos].to_string();
                (op, threshold, byte_units, threshold_text)
            };
        let for_ns = match self.for_clause(&last_text)? {
            Some(ns) => ns,
            None if is_leak => LEAK_DEFAULT_FOR_NS,
            None => 0,
        };
        Ok(Rule {
            text: self.text.to_string(),
            metric,
            subject_column,
            op,
            threshold,
            for_ns,
            byte_units,
        })
    }

    /// metric = func "(" name ")" | "fps" | "drops" | "rss" | "rss_growth" ;
    fn metric(&mut self) -> Result<(Metric, usize), RuleError> {
        let start = self.skip_ws_pos();
        let Some(word) = self.word() else {
            return Err(self.expected("a metric such as p99(STAGE), fps or drops", None));
        };
        match word {
            "fps" => return Ok((Metric::Fps, self.column(start))),
            "drops" => return Ok((Metric::Drops, self.column(start))),
            "rss" => return Ok((Metric::Rss, self.column(start))),
            "rss_growth" => return Ok((Metric::RssGrowth, self.column(start))),
            "rate" | "count" | "share" | "gauge" | "outstanding" | "leak" => {}
            w if Stat::from_word(w).is_some() => {}
            w => return Err(self.error_at(start, RuleErrorKind::UnknownMetric(w.to_string()))),
        }
        self.skip_ws();
        if !self.eat('(') {
            return Err(self.expected("'('", Some(word)));
        }
        let name_start = self.skip_ws_pos();
        let what = match word {
            "gauge" => "a gauge name",
            "outstanding" | "leak" => "a stage name",
            _ => "a stage name or frame",
        };
        let Some(name) = self.name() else {
            return Err(self.expected(what, Some("(")));
        };
        self.skip_ws();
        if !self.eat(')') {
            return Err(self.expected("')'", Some(name)));
        }
        let subject = if name == "frame" {
            Subject::Frame
        } else {
            Subject::Stage(name.to_string())
        };
        let metric = match (word, subject) {
            ("gauge", _) => Metric::Gauge(name.to_string()),
            ("share", Subject::Frame) => {
                return Err(self.error_at(name_start, RuleErrorKind::FrameNotAllowed("share")));
            }
            ("share", _) => Metric::Share(name.to_string()),
            (w @ ("outstanding" | "leak"), Subject::Frame) => {
                let w = if w == "leak" { "leak" } else { "outstanding" };
                return Err(self.error_at(name_start, RuleErrorKind::FrameNotAllowed(w)));
            }
            ("outstanding", _) => Metric::Outstanding(name.to_string()),
            ("leak", _) => Metric::Leak(name.to_string()),
            ("rate", of) => Metric::Rate(of),
            ("count", of) => Metric::Count(of),
            (w, of) => Metric::Latency {
                // Checked above: every other word reaching here is a Stat.
                stat: Stat::from_word(w).unwrap_or(Stat::Max),
                of,
            },
        };
        Ok((metric, self.column(name_start)))
    }

    /// cmp = ">" | ">=" | "<" | "<=" ;
    fn cmp_op(&mut self, expected: &'static str, metric_text: &str) -> Result<CmpOp, RuleError> {
        self.skip_ws();
        let op = if self.eat('>') {
            if self.eat('=') {
                CmpOp::Ge
            } else {
                CmpOp::Gt
            }
        } else if self.eat('<') {
            if self.eat('=') {
                CmpOp::Le
            } else {
                CmpOp::Lt
            }
        } else {
            return Err(self.expected(expected, Some(metric_text)));
        };
        Ok(op)
    }

    /// threshold = [ number "*" ] "baseline" | number [ unit ] ;
    /// Returns the threshold and, for memory metrics, the units it was written in.
    fn threshold(
        &mut self,
        metric: &Metric,
        op: CmpOp,
    ) -> Result<(Threshold, Option<ByteUnits>), RuleError> {
        let start = self.skip_ws_pos();
        let baseline_ok = |p: &Self| {
            if metric.allows_baseline() {
                Ok(())
            } else {
                Err(p.error_at(start, RuleErrorKind::NoBaseline(metric.name())))
            }
        };
        if self.word_is("baseline") {
            baseline_ok(self)?;
            self.word();
            return Ok((Threshold::Baseline(1.0), None));
        }
        let Some((value, number_text)) = self.number()? else {
            return Err(self.expected("a number", Some(op.as_str())));
        };
        let after_number = self.pos;
        self.skip_ws();
        if self.eat('*') {
            self.skip_ws();
            if !self.word_is("baseline") {
                return Err(self.expected("'baseline'", Some("*")));
            }
            baseline_ok(self)?;
            if value < 0.0 {
                return Err(self.error_at(start, RuleErrorKind::NegativeFactor));
            }
            self.word();
            return Ok((Threshold::Baseline(value), None));
        }
        self.pos = after_number;
        let quantity = metric.quantity();
        let name = metric.name();
        match (quantity, self.unit(quantity)?) {
            (Quantity::Number, None) => Ok((Threshold::Value(value), None)),
            (Quantity::Number, Some((unit, at, _))) => Err(self.error_at(
                at,
                RuleErrorKind::UnexpectedUnit {
                    metric: name,
                    unit_kind: unit.quantity(),
                },
            )),
            (quantity, None) => Err(self.error_at(
                start,
                RuleErrorKind::MissingUnit {
                    metric: name,
                    quantity,
                    value: number_text,
                },
            )),
            (Quantity::Duration, Some((Unit::Duration(ns), ..))) => {
                if value < 0.0 {
                    return Err(self.error_at(start, RuleErrorKind::NegativeDuration));
                }
                Ok((Threshold::Value(value * ns), None))
            }
            (Quantity::Size, Some((Unit::Size(bytes, binary), ..))) => {
                if value < 0.0 {
                    return Err(self.error_at(start, RuleErrorKind::NegativeSize));
                }
                let units = ByteUnits { binary, per: None };
                Ok((Threshold::Value(value * bytes), Some(units)))
            }
            (Quantity::Rate, Some((Unit::Rate(bytes, units), ..))) => {
                // Rates may be negative: shrinking memory.
                let per_s = units.per.map_or(1.0, Per::seconds);
                Ok((Threshold::Value(value * bytes / per_s), Some(units)))
            }
            (quantity, Some((unit, at, text))) => Err(self.error_at(
                at,
                RuleErrorKind::WrongUnit {
                    metric: name,
                    quantity,
                    unit: one_line(text),
                    unit_kind: unit.quantity(),
                },
            )),
        }
    }

    /// [ "for" duration ] then the end of the rule; None without `for`.
    fn for_clause(&mut self, threshold_text: &str) -> Result<Option<u64>, RuleError> {
        self.skip_ws();
        if self.at_end() {
            return Ok(None);
        }
        if !self.word_is("for") {
            return Err(self.expected("'for' or the end of the rule", Some(threshold_text)));
        }
        self.word();
        let start = self.skip_ws_pos();
        let Some((value, number_text)) = self.number()? else {
            return Err(self.expected("a duration such as 5s", Some("for")));
        };
        let ns = match self.unit(Quantity::Duration)? {
            Some((Unit::Duration(ns), ..)) => ns,
            Some((_, at, text)) => {
                return Err(self.error_at(at, RuleErrorKind::NotADuration(one_line(text))));
            }
            None => {
                return Err(self.error_at(start, RuleErrorKind::MissingDurationUnit(number_text)));
            }
        };
        if value < 0.0 {
            return Err(self.error_at(start, RuleErrorKind::NegativeDuration));
        }
        let total = value * ns;
        if total >= u64::MAX as f64 {
            return Err(self.error_at(start, RuleErrorKind::OutOfRange));
        }
        let end_of_duration = self.text[start..self.pos].to_string();
        self.skip_ws();
        if !self.at_end() {
            return Err(self.expected("the end of the rule", Some(&end_of_duration)));
        }
        Ok(Some(total as u64))
    }

    /// unit = duration_unit | size_unit [ "/" per ] ; directly after a
    /// number or after spaces. A word glued to a number that is not a unit
    /// is an error (listing the units of `expected`). Returns the unit, its
    /// byte offset and its text.
    fn unit(&mut self, expected: Quantity) -> Result<Option<(Unit, usize, &'a str)>, RuleError> {
        let glued = self.peek().is_some_and(is_word_char);
        let before = self.pos;
        let start = self.skip_ws_pos();
        let Some(word) = self.word() else {
            self.pos = before;
            return Ok(None);
        };
        if let Some(ns) = duration_unit_ns(word) {
            return Ok(Some((Unit::Duration(ns), start, word)));
        }
        if let Some((bytes, binary)) = size_unit(word) {
            let after_size = self.pos;
            self.skip_ws();
            if !self.eat('/') {
                self.pos = after_size;
                return Ok(Some((Unit::Size(bytes, binary), start, word)));
            }
            let per_start = self.skip_ws_pos();
            let Some(per) = self.word().and_then(Per::from_word) else {
                self.pos = per_start;
                let found = self.found();
                return Err(self.error_at(
                    per_start,
                    RuleErrorKind::MissingPer(word.to_string(), found),
                ));
            };
            let units = ByteUnits {
                binary,
                per: Some(per),
            };
            return Ok(Some((
                Unit::Rate(bytes, units),
                start,
                &self.text[start..self.pos],
            )));
        }
        if glued {
            return Err(self.error_at(
                start,
                RuleErrorKind::UnknownUnit {
                    unit: word.to_string(),
                    expected,
                },
            ));
        }
        self.pos = before;
        Ok(None)
    }

    // ---- lexical helpers ----

    /// number = [ "-" ] digit { digit } [ "." digit { digit } ] ;
    /// Returns the value and its text, or None (nothing consumed) if no number starts here.
    fn number(&mut self) -> Result<Option<(f64, String)>, RuleError> {
        let start = self.pos;
        let rest = &self.text[start..];
        let sign = usize::from(rest.starts_with('-'));
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let int = digits(&rest[sign..]);
        if int == 0 {
            return Ok(None);
        }
        let mut len = sign + int;
        if rest[len..].starts_with('.') {
            let frac = digits(&rest[len + 1..]);
            if frac > 0 {
                len += 1 + frac;
            }
        }
        let literal = &rest[..len];
        let value: f64 = literal
            .parse()
            .map_err(|_| self.error_at(start, RuleErrorKind::OutOfRange))?;
        if !value.is_finite() {
            return Err(self.error_at(start, RuleErrorKind::OutOfRange));
        }
        self.pos += len;
        Ok(Some((value, literal.to_string())))
    }

    /// word = ( letter | "_" ) { letter | digit | "_" } ; keywords, functions, units.
    fn word(&mut self) -> Option<&'a str> {
        let rest = &self.text[self.pos..];
        let first = rest.chars().next()?;
        if !(first.is_ascii_alphabetic() || first == '_') {
            return None;
        }
        let len = rest.find(|c| !is_word_char(c)).unwrap_or(rest.len());
        self.pos += len;
        Some(&rest[..len])
    }

    /// Whether the word at the cursor is exactly `keyword` (nothing consumed).
    fn word_is(&self, keyword: &str) -> bool {
        Parser {
            text: self.text,
            pos: self.pos,
        }
        .word()
            == Some(keyword)
    }

    /// name = ( letter | digit | "_" | "-" | "." ) { ... } ; as config.rs allows for stages.
    fn name(&mut self) -> Option<&'a str> {
        let rest = &self.text[self.pos..];
        let len = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
        if len == 0 {
            return None;
        }
        self.pos += len;
        Some(&rest[..len])
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
            self.pos += c.len_utf8();
        }
    }

    fn skip_ws_pos(&mut self) -> usize {
        self.skip_ws();
        self.pos
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    /// 1-based column (in characters) of byte offset `pos`.
    fn column(&self, pos: usize) -> usize {
        self.text[..pos].chars().count() + 1
    }

    /// What the cursor (after spaces) is looking at, quoted, for errors.
    fn found(&self) -> String {
        let rest = self.text[self.pos..].trim_start();
        let Some(first) = rest.chars().next() else {
            return "end of rule".to_string();
        };
        let len = if is_name_char(first) {
            rest.find(|c| !is_name_char(c)).unwrap_or(rest.len())
        } else {
            first.len_utf8()
        };
        format!("'{}'", one_line(&rest[..len]))
    }

    fn expected(&mut self, expected: &'static str, after: Option<&str>) -> RuleError {
        let found = self.found();
        let at = self.skip_ws_pos();
        self.error_at(
            at,
            RuleErrorKind::Expected {
                expected,
                after: after.map(|a| format!("'{}'", one_line(a))),
                found,
            },
        )
    }

    fn error_at(&self, pos: usize, kind: RuleErrorKind) -> RuleError {
        RuleError {
            rule: self.text.to_string(),
            column: self.column(pos),
            kind,
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

impl fmt::Display for Rule {
    /// The rule as written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Rule {
        parse_rule(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> String {
        parse_rule(text).expect_err(text).to_string()
    }

    fn stage(name: &str) -> Subject {
        Subject::Stage(name.to_string())
    }

    #[test]
    fn forms_of_the_issue() {
        let r = parse("p99(infer) > 50ms for 5s");
        assert_eq!(
            r.metric,
            Metric::Latency {
                stat: Stat::P99,
                of: stage("infer")
            }
        );
        assert_eq!(r.op, CmpOp::Gt);
        assert_eq!(r.threshold, Threshold::Value(50e6));
        assert_eq!(r.for_ns, 5_000_000_000);
        assert_eq!(r.subject_column, 5);
        assert_eq!(r.text, "p99(infer) > 50ms for 5s");

        let r = parse("p95(frame) > 1.2 * baseline");
        assert_eq!(
            r.metric,
            Metric::Latency {
                stat: Stat::P95,
                of: Subject::Frame
            }
        );
        assert_eq!(r.threshold, Threshold::Baseline(1.2));
        assert_eq!(r.for_ns, 0);

        let r = parse("fps < 25 for 10s");
        assert_eq!((r.metric, r.op), (Metric::Fps, CmpOp::Lt));
        assert_eq!(r.threshold, Threshold::Value(25.0));
        assert_eq!(r.for_ns, 10_000_000_000);

        let r = parse("drops > 0");
        assert_eq!(r.metric, Metric::Drops);
        assert_eq!(r.threshold, Threshold::Value(0.0));

        let r = parse("share(track) > 0.4");
        assert_eq!(r.metric, Metric::Share("track".into()));
        assert_eq!(r.threshold, Threshold::Value(0.4));

        let r = parse("gauge(tracks) > 100 for 30s");
        assert_eq!(r.metric, Metric::Gauge("tracks".into()));
        assert_eq!(r.for_ns, 30_000_000_000);
    }

    #[test]
    fn every_function_operator_and_unit() {
        for (word, stat) in [
            ("p50", Stat::P50),
            ("p90", Stat::P90),
            ("p95", Stat::P95),
            ("p99", Stat::P99),
            ("p999", Stat::P999),
            ("mean", Stat::Mean),
            ("min", Stat::Min),
            ("max", Stat::Max),
        ] {
            let r = parse(&format!("{word}(decode) >= 1us"));
            assert_eq!(
                r.metric,
                Metric::Latency {
                    stat,
                    of: stage("decode")
                }
            );
            assert_eq!(r.threshold, Threshold::Value(1e3));
        }
        assert_eq!(
            parse("rate(infer) < 5").metric,
            Metric::Rate(stage("infer"))
        );
        assert_eq!(
            parse("rate(frame) < 5").metric,
            Metric::Rate(Subject::Frame)
        );
        assert_eq!(
            parse("count(infer) <= 5").metric,
            Metric::Count(stage("infer"))
        );
        for (op, want) in [
            (">", CmpOp::Gt),
            (">=", CmpOp::Ge),
            ("<", CmpOp::Lt),
            ("<=", CmpOp::Le),
        ] {
            assert_eq!(parse(&format!("fps {op} 1")).op, want);
        }
        for (unit, ns) in [
            ("ns", 1.0),
            ("us", 1e3),
            ("ms", 1e6),
            ("s", 1e9),
            ("m", 60e9),
        ] {
            assert_eq!(
                parse(&format!("max(x) > 2{unit}")).threshold,
                Threshold::Value(2.0 * ns)
            );
        }
        // Spaces are optional or free; units may follow after a space.
        let r = parse("  p99 ( my-stage.v2 )>=1.5 ms   for   250ms  ");
        assert_eq!(
            r.metric,
            Metric::Latency {
                stat: Stat::P99,
                of: stage("my-stage.v2")
            }
        );
        assert_eq!(r.threshold, Threshold::Value(1.5e6));
        assert_eq!(r.for_ns, 250_000_000);
        assert_eq!(parse("fps<baseline").threshold, Threshold::Baseline(1.0));
        assert_eq!(
            parse("fps < 0.8*baseline").threshold,
            Threshold::Baseline(0.8)
        );
        assert_eq!(parse("gauge(q) < -5").threshold, Threshold::Value(-5.0));
        assert_eq!(
            parse("p99(3d) > 1s").metric,
            Metric::Latency {
                stat: Stat::P99,
                of: stage("3d")
            }
        );
    }

    #[test]
    fn errors_name_rule_column_and_expectation() {
        assert_eq!(
            err("p99(infer) >> 5ms"),
            "alert rule 'p99(infer) >> 5ms': column 13: expected a number after '>', found '>'"
        );
        assert_eq!(
            err("p99(infer) > 50"),
            "alert rule 'p99(infer) > 50': column 14: p99 is a duration: give the threshold \
             a unit (ns, us, ms, s), e.g. 50ms"
        );
        assert_eq!(
            err("fps < 25ms"),
            "alert rule 'fps < 25ms': column 9: fps is not a duration: write the threshold as a plain number"
        );
        assert_eq!(
            err("p99(infer) > 5xs"),
            "alert rule 'p99(infer) > 5xs': column 15: unknown unit 'xs'; expected ns, us, ms, s or m"
        );
        assert_eq!(
            err("p98(infer) > 5ms"),
            "alert rule 'p98(infer) > 5ms': column 1: unknown metric 'p98'; expected p50, p90, p95, \
             p99, p999, mean, min, max, rate, count, share, gauge, outstanding or leak (each followed \
             by '(NAME)'), fps, drops, rss or rss_growth"
        );
        assert_eq!(
            err("p99 infer > 5ms"),
            "alert rule 'p99 infer > 5ms': column 5: expected '(' after 'p99', found 'infer'"
        );
        assert_eq!(
            err("p99(infer > 5ms"),
            "alert rule 'p99(infer > 5ms': column 11: expected ')' after 'infer', found '>'"
        );
        assert_eq!(
            err("p99() > 5ms"),
            "alert rule 'p99() > 5ms': column 5: expected a stage name or frame after '(', found ')'"
        );
        assert_eq!(
            err("fps = 5"),
            "alert rule 'fps = 5': column 5: expected a comparison (>, >=, <, <=) after 'fps', found '='"
        );
        assert_eq!(
            err("fps < 5 for"),
            "alert rule 'fps < 5 for': column 12: expected a duration such as 5s after 'for', found end of rule"
        );
        assert_eq!(
            err("fps < 5 for 10"),
            "alert rule 'fps < 5 for 10': column 13: a duration needs a unit (ns, us, ms, s or m), e.g. 10s"
        );
        assert_eq!(
            err("fps < 5 during 10s"),
            "alert rule 'fps < 5 during 10s': column 9: expected 'for' or the end of the rule after '5', found 'during'"
        );
        assert_eq!(
            err("fps < 5 for 10s now"),
            "alert rule 'fps < 5 for 10s now': column 17: expected the end of the rule after '10s', found 'now'"
        );
        assert_eq!(
            err("count(x) > 2 * baseline"),
            "alert rule 'count(x) > 2 * baseline': column 12: count cannot be compared with a baseline \
             (it depends on the window's length); use rate(..) instead"
        );
        assert!(err("drops > baseline").contains("drops cannot be compared with a baseline"));
        assert!(err("fps < 2 * base")
            .contains("column 11: expected 'baseline' after '*', found 'base'"));
        assert!(err("share(frame) > 0.5").contains("column 7: share(frame) is not defined"));
        assert!(err("p99(x) > -5ms").contains("column 10: a duration cannot be negative"));
        assert!(err("fps < -1 * baseline").contains("the baseline factor cannot be negative"));
        assert!(err("").contains(
            "column 1: expected a metric such as p99(STAGE), fps or drops, found end of rule"
        ));
        assert!(err("   ").contains("column 4: expected a metric"));
        assert!(err("fps < 5 for 9999999999999999999999s").contains("number out of range"));
        // Columns count characters, not bytes.
        assert!(err("p99(é) > 1ms")
            .contains("column 5: expected a stage name or frame after '(', found 'é'"));
    }

    const MIB: f64 = 1024.0 * 1024.0;

    fn units(binary: bool, per: Option<Per>) -> Option<ByteUnits> {
        Some(ByteUnits { binary, per })
    }

    #[test]
    fn memory_metrics_sizes_and_rates_in_bytes() {
        let r = parse("rss > 500MB");
        assert_eq!((r.metric, r.op), (Metric::Rss, CmpOp::Gt));
        assert_eq!(r.threshold, Threshold::Value(500e6));
        assert_eq!((r.for_ns, r.byte_units), (0, units(false, None)));
        assert_eq!(r.subject_column, 1);

        let r = parse("rss_growth > 20MB/min for 60s");
        assert_eq!(r.metric, Metric::RssGrowth);
        assert_eq!(r.threshold, Threshold::Value(20e6 / 60.0));
        assert_eq!(r.threshold, Threshold::Value(333_333.333_333_333_3));
        assert_eq!(r.for_ns, 60_000_000_000);
        assert_eq!(r.byte_units, units(false, Some(Per::Min)));

        let r = parse("outstanding(track) >= 1.5GiB");
        assert_eq!(r.metric, Metric::Outstanding("track".into()));
        assert_eq!(r.threshold, Threshold::Value(1.5 * 1024.0 * MIB));
        assert_eq!((r.op, r.subject_column), (CmpOp::Ge, 13));

        // Every size unit, as a size and as a rate per s, min and h.
        for (unit, bytes, binary) in [
            ("B", 1.0, true),
            ("KB", 1e3, false),
            ("MB", 1e6, false),
            ("GB", 1e9, false),
            ("KiB", 1024.0, true),
            ("MiB", MIB, true),
            ("GiB", 1024.0 * MIB, true),
        ] {
            let r = parse(&format!("rss < 3{unit}"));
            assert_eq!(r.threshold, Threshold::Value(3.0 * bytes), "{unit}");
            assert_eq!(r.byte_units, units(binary, None));
            for (per, seconds, p) in [
                ("s", 1.0, Per::S),
                ("min", 60.0, Per::Min),
                ("h", 3600.0, Per::H),
            ] {
                let r = parse(&format!("rss_growth > 3{unit}/{per}"));
                assert_eq!(
                    r.threshold,
                    Threshold::Value(3.0 * bytes / seconds),
                    "{unit}/{per}"
                );
                assert_eq!(r.byte_units, units(binary, Some(p)));
            }
        }
        assert_eq!(
            parse("rss_growth > 1.5MiB/s").threshold,
            Threshold::Value(1_572_864.0)
        );
        assert_eq!(
            parse("rss_growth > 100KB/s").threshold,
            Threshold::Value(100_000.0)
        );
        // Spaces around the unit and the slash; negative rates (shrinking).
        let r = parse("rss_growth < -2 MB / h");
        assert_eq!(r.threshold, Threshold::Value(-2e6 / 3600.0));
    }

    #[test]
    fn leak_defaults_its_threshold_and_for() {
        assert_eq!(LEAK_DEFAULT_BYTES_PER_S, 1_048_576.0 / 60.0);
        assert_eq!(LEAK_DEFAULT_FOR_NS, 30_000_000_000);
        let bare = parse("leak(track)");
        assert_eq!(bare.metric, Metric::Leak("track".into()));
        assert_eq!(bare.subject_column, 6);
        // The bare form is exactly its written-out default.
        let full = parse("leak(track) > 1MiB/min for 30s");
        assert_eq!(
            (bare.op, bare.threshold, bare.for_ns, bare.byte_units),
            (full.op, full.threshold, full.for_ns, full.byte_units)
        );
        assert_eq!(bare.threshold, Threshold::Value(17_476.266_666_666_666));
        assert_eq!(bare.byte_units, units(true, Some(Per::Min)));
        // Explicit threshold: default for.
        let r = parse("leak(track) > 100KB/s");
        assert_eq!(r.threshold, Threshold::Value(100e3));
        assert_eq!(r.for_ns, LEAK_DEFAULT_FOR_NS);
        // Explicit for: default threshold.
        let r = parse("  leak( track )  for 5s ");
        assert_eq!(
            (r.op, r.threshold),
            (CmpOp::Gt, Threshold::Value(LEAK_DEFAULT_BYTES_PER_S))
        );
        assert_eq!(r.for_ns, 5_000_000_000);
        // Both, and `for 0s` to fire at once.
        let r = parse("leak(track) >= 2MB/h for 0s");
        assert_eq!(
            (r.op, r.threshold, r.for_ns),
            (CmpOp::Ge, Threshold::Value(2e6 / 3600.0), 0)
        );
    }

    #[test]
    fn memory_errors_name_the_column() {
        // Missing unit.
        assert_eq!(
            err("rss > 500"),
            "alert rule 'rss > 500': column 7: rss is a size: give the threshold a unit \
             (B, KB, MB, GB, KiB, MiB or GiB), e.g. 500MB"
        );
        assert_eq!(
            err("rss_growth > 20 for 60s"),
            "alert rule 'rss_growth > 20 for 60s': column 14: rss_growth is a rate: give the \
             threshold a unit (a size unit per s, min or h, such as MB/min or KiB/s), e.g. 20MB/min"
        );
        assert_eq!(
            err("leak(track) > 5"),
            "alert rule 'leak(track) > 5': column 15: leak is a rate: give the threshold a unit \
             (a size unit per s, min or h, such as MB/min or KiB/s), e.g. 5MB/min"
        );
        // Wrong kind of unit, at the unit's column.
        assert_eq!(
            err("rss > 500ms"),
            "alert rule 'rss > 500ms': column 10: rss is a size: 'ms' is a duration unit; \
             use B, KB, MB, GB, KiB, MiB or GiB"
        );
        assert_eq!(
            err("rss > 5MB/s"),
            "alert rule 'rss > 5MB/s': column 8: rss is a size: 'MB/s' is a rate unit; \
             use B, KB, MB, GB, KiB, MiB or GiB"
        );
        assert_eq!(
            err("rss_growth > 20MB for 60s"),
            "alert rule 'rss_growth > 20MB for 60s': column 16: rss_growth is a rate: 'MB' is a \
             size unit; use a size unit per s, min or h, such as MB/min or KiB/s"
        );
        assert_eq!(
            err("leak(t) > 1s"),
            "alert rule 'leak(t) > 1s': column 12: leak is a rate: 's' is a duration unit; \
             use a size unit per s, min or h, such as MB/min or KiB/s"
        );
        assert_eq!(
            err("p99(infer) > 50MB"),
            "alert rule 'p99(infer) > 50MB': column 16: p99 is a duration: 'MB' is a size unit; \
             use ns, us, ms, s or m"
        );
        assert_eq!(
            err("fps < 25 MB"),
            "alert rule 'fps < 25 MB': column 10: fps is not a size: write the threshold as a plain number"
        );
        assert_eq!(
            err("rss_growth > 1MB/m"),
            "alert rule 'rss_growth > 1MB/m': column 18: expected s, min or h after 'MB/', found 'm'"
        );
        assert_eq!(
            err("rss > 1Mb"),
            "alert rule 'rss > 1Mb': column 8: unknown unit 'Mb'; expected B, KB, MB, GB, KiB, MiB or GiB"
        );
        assert_eq!(
            err("leak(t) for 5MB"),
            "alert rule 'leak(t) for 5MB': column 14: expected a duration unit (ns, us, ms, s or m) \
             after the number, found 'MB'"
        );
        assert!(err("rss > -5MB").contains("column 7: a size cannot be negative"));
        // Baselines: the baseline snapshot has no memory.
        assert_eq!(
            err("leak(track) > 2 * baseline"),
            "alert rule 'leak(track) > 2 * baseline': column 15: leak cannot be compared with a \
             baseline (the baseline has no memory data); use a rate such as 20MB/min"
        );
        assert_eq!(
            err("rss > baseline"),
            "alert rule 'rss > baseline': column 7: rss cannot be compared with a baseline \
             (the baseline has no memory data); use a size such as 500MB"
        );
        assert!(err("outstanding(x) > 1.1 * baseline")
            .contains("column 18: outstanding cannot be compared with a baseline"));
        assert!(err("rss_growth > baseline").contains("column 14: rss_growth cannot be compared"));
        // The shapes of leak and outstanding.
        assert_eq!(
            err("leak(track) 5MB/min"),
            "alert rule 'leak(track) 5MB/min': column 13: expected a comparison (>, >=, <, <=), \
             'for' or the end of the rule after 'leak(track)', found '5MB'"
        );
        assert_eq!(
            err("leak(frame)"),
            "alert rule 'leak(frame)': column 6: leak(frame) is not defined; frame works with \
             p50..p999, mean, min, max, rate and count"
        );
        assert!(err("outstanding() > 1MB")
            .contains("column 13: expected a stage name after '(', found ')'"));
        assert!(err("rss(x) > 1MB")
            .contains("column 4: expected a comparison (>, >=, <, <=) after 'rss'"));
    }

    #[test]
    fn validate_names_unknowns_and_frames() {
        let stages = vec!["decode".to_string(), "infer".to_string()];
        let gauges = vec!["tracks".to_string()];
        let check = |text: &str, frames: bool| {
            validate(&parse(text), &stages, &gauges, frames).map_err(|e| e.to_string())
        };
        assert_eq!(check("p99(infer) > 5ms", false), Ok(()));
        assert_eq!(check("gauge(tracks) > 5", false), Ok(()));
        assert_eq!(check("drops > 0", false), Ok(()));
        assert_eq!(check("fps < 25", true), Ok(()));
        assert_eq!(check("p95(frame) > 1.2 * baseline", true), Ok(()));
        assert_eq!(check("rss > 1GB", false), Ok(()));
        assert_eq!(check("rss_growth > 20MB/min for 60s", false), Ok(()));
        assert_eq!(check("leak(infer)", false), Ok(()));
        assert_eq!(check("outstanding(decode) > 1MB", false), Ok(()));
        assert_eq!(
            check("leak(infr)", true),
            Err(
                "alert rule 'leak(infr)': column 6: unknown stage 'infr' (did you mean 'infer'?); \
                 known stages: decode, infer"
                    .to_string()
            )
        );
        assert_eq!(
            check("outstanding(publish) > 1MB for 5s", true),
            Err(
                "alert rule 'outstanding(publish) > 1MB for 5s': column 13: unknown stage \
                 'publish'; known stages: decode, infer"
                    .to_string()
            )
        );
        assert_eq!(
            check("p99(infr) > 5ms", true),
            Err("alert rule 'p99(infr) > 5ms': column 5: unknown stage 'infr' (did you mean 'infer'?); \
                 known stages: decode, infer"
                .to_string())
        );
        assert_eq!(
            check("share(publish) > 0.5", true),
            Err(
                "alert rule 'share(publish) > 0.5': column 7: unknown stage 'publish'; \
                 known stages: decode, infer"
                    .to_string()
            )
        );
        assert_eq!(
            check("gauge(track) > 5", true),
            Err("alert rule 'gauge(track) > 5': column 7: unknown gauge 'track' (did you mean 'tracks'?); \
                 known gauges: tracks"
                .to_string())
        );
        assert_eq!(
            check("fps < 25 for 10s", false),
            Err("alert rule 'fps < 25 for 10s': column 1: fps needs a frame stage and none is configured \
                 (set one with --frame-stage)"
                .to_string())
        );
        assert!(check("p95(frame) > 1ms", false)
            .unwrap_err()
            .contains("column 5: 'frame' needs a frame stage"));
        assert!(validate(&parse("gauge(x) > 1"), &stages, &[], true)
            .unwrap_err()
            .to_string()
            .ends_with("unknown gauge 'x'; no gauges are configured"));
    }

    /// Tiny deterministic generator (xorshift64*), so the fuzz test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn fuzz_never_panics_and_columns_stay_in_range() {
        const PIECES: &[&str] = &[
            "p99",
            "p999",
            "mean",
            "rate",
            "count",
            "share",
            "gauge",
            "fps",
            "drops",
            "rss",
            "rss_growth",
            "leak",
            "outstanding",
            "MB",
            "KiB",
            "B",
            "/",
            "/min",
            "frame",
            "baseline",
            "for",
            "(",
            ")",
            "*",
            ">",
            ">=",
            "<",
            "<=",
            "=",
            "-",
            ".",
            " ",
            "  ",
            "\t",
            "0",
            "5",
            "1.2",
            "99999999999999999999999999",
            "ms",
            "us",
            "ns",
            "s",
            "m",
            "infer",
            "x-y.z",
            "é",
            "日本",
            "\u{0}",
            "💥",
            "\n",
            "_",
        ];
        const SEEDS: &[&str] = &[
            "p99(infer) > 50ms for 5s",
            "p95(frame) > 1.2 * baseline",
            "fps < 25 for 10s",
            "drops > 0",
            "gauge(tracks) > 100 for 30s",
            "rss_growth > 20MB/min for 60s",
            "leak(infer)",
            "outstanding(infer) > 1.5GiB",
        ];
        let stages = vec!["infer".to_string()];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..20_000 {
            let text: String = if i % 2 == 0 {
                (0..rng.below(12))
                    .map(|_| PIECES[rng.below(PIECES.len())])
                    .collect()
            } else {
                // Mutate a valid rule: replace, insert or delete characters.
                let mut chars: Vec<char> = SEEDS[rng.below(SEEDS.len())].chars().collect();
                for _ in 0..=rng.below(3) {
                    let at = rng.below(chars.len() + 1);
                    let piece: Vec<char> = PIECES[rng.below(PIECES.len())].chars().collect();
                    match rng.below(3) {
                        0 if at < chars.len() => {
                            chars.remove(at);
                        }
                        _ => {
                            chars.splice(at..at, piece);
                        }
                    }
                }
                chars.into_iter().collect()
            };
            match parse_rule(&text) {
                Ok(rule) => {
                    assert_eq!(rule.text, text);
                    let _ = validate(&rule, &stages, &[], i % 3 == 0);
                }
                Err(e) => {
                    assert!(
                        e.column >= 1 && e.column <= text.chars().count() + 1,
                        "{e:?}"
                    );
                    assert_eq!(e.rule, text);
                    assert!(!e.to_string().contains('\n'), "{e}");
                }
            }
        }
    }

    #[test]
    fn alert_values_in_their_metric_units() {
        assert_eq!(value_formatter("p99(infer) > 50ms")(61.5e6), "61.5ms");
        assert_eq!(value_formatter("share(track) > 0.4 for 2s")(0.45), "45.0%");
        assert_eq!(value_formatter("fps < 25")(24.5), "24.5");
        assert_eq!(value_formatter("not a rule")(3.0), "3");
        // Memory: the size and time units of the rule's threshold.
        let per_min = |mib: f64| mib * 1024.0 * 1024.0 / 60.0;
        assert_eq!(
            value_formatter("leak(track)")(per_min(12.3)),
            "12.3 MiB/min"
        );
        assert_eq!(
            value_formatter("rss_growth > 20MB/min for 60s")(20e6 / 60.0),
            "20.0 MB/min"
        );
        assert_eq!(value_formatter("leak(t) > 100KB/s")(-2.5e5), "-250 KB/s");
        assert_eq!(value_formatter("rss > 500MB")(1.234e9), "1.23 GB");
        assert_eq!(
            value_formatter("outstanding(t) > 1GiB")(3.0 * 1024.0 * 1024.0),
            "3.00 MiB"
        );
    }
}
