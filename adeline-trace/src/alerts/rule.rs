//! Alert rule grammar: rule text -> [`Rule`] ([`parse_rule`]), and the checks
//! against the plan's stage, gauge and frame names ([`validate`]).
//!
//! A hand-written recursive-descent parser over characters (the lexical
//! helpers are methods of [`Parser`]: words, stage names, numbers, units).
//! Every error names the rule, the 1-based column and what was expected.
//! Grammar (EBNF) and semantics: docs/alerts.md.
use std::fmt;

use thiserror::Error;

/// A parsed alert rule: `METRIC OP THRESHOLD [for DURATION]`.
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
}

/// A latency statistic of a set of calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    P50,
    P90,
    P95,
    P99,
    P999,
    Mean,
    Min,
    Max,
}

impl Stat {
    /// The function name in the grammar (`p99`, `mean`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Stat::P50 => "p50",
            Stat::P90 => "p90",
            Stat::P95 => "p95",
            Stat::P99 => "p99",
            Stat::P999 => "p999",
            Stat::Mean => "mean",
            Stat::Min => "min",
            Stat::Max => "max",
        }
    }

    fn from_word(word: &str) -> Option<Stat> {
        Some(match word {
            "p50" => Stat::P50,
            "p90" => Stat::P90,
            "p95" => Stat::P95,
            "p99" => Stat::P99,
            "p999" => Stat::P999,
            "mean" => Stat::Mean,
            "min" => Stat::Min,
            "max" => Stat::Max,
            _ => return None,
        })
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
}

impl Metric {
    /// True for durations: their thresholds need a unit and are kept in ns.
    pub fn is_duration(&self) -> bool {
        matches!(self, Metric::Latency { .. })
    }

    /// Whether `N * baseline` makes sense: counts depend on the window's
    /// length and drops are a run-wide counter, so those two cannot.
    fn allows_baseline(&self) -> bool {
        !matches!(self, Metric::Count(_) | Metric::Drops)
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
    /// A fixed value (durations already in ns).
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
         share or gauge (each followed by '(NAME)'), fps or drops"
    )]
    UnknownMetric(String),
    #[error("unknown unit '{0}'; expected ns, us, ms, s or m")]
    UnknownUnit(String),
    #[error("{metric} is a duration: give the threshold a unit (ns, us, ms, s), e.g. {value}ms")]
    MissingUnit { metric: &'static str, value: String },
    #[error("a duration needs a unit (ns, us, ms, s or m), e.g. {0}s")]
    MissingDurationUnit(String),
    #[error("{0} is not a duration: write the threshold as a plain number")]
    UnexpectedUnit(&'static str),
    #[error("{metric} cannot be compared with a baseline{hint}", metric = .0, hint = baseline_hint(.0))]
    NoBaseline(&'static str),
    #[error(
        "{0}(frame) is not defined; frame works with p50..p999, mean, min, max, rate and count"
    )]
    FrameNotAllowed(&'static str),
    #[error("a duration cannot be negative")]
    NegativeDuration,
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
    if metric == "count" {
        " (it depends on the window's length); use rate(..) instead"
    } else {
        " (it is a run-wide counter)"
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

/// Units accepted after a number, and their length in ns.
const UNITS: [(&str, f64); 5] = [
    ("ns", 1.0),
    ("us", 1e3),
    ("ms", 1e6),
    ("s", 1e9),
    ("m", 60e9),
];

fn unit_ns(word: &str) -> Option<f64> {
    UNITS.iter().find(|(u, _)| *u == word).map(|(_, f)| *f)
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
        Metric::Drops => return Ok(()),
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
        Metric::Share(name) => name,
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
    /// rule = condition [ "for" duration ] ;
    fn rule(mut self) -> Result<Rule, RuleError> {
        self.skip_ws();
        let metric_start = self.pos;
        let (metric, subject_column) = self.metric()?;
        let metric_text = self.text[metric_start..self.pos].to_string();
        let op = self.cmp_op(&metric_text)?;
        let threshold_start = self.skip_ws_pos();
        let threshold = self.threshold(&metric, op)?;
        let threshold_text = self.text[threshold_start..self.pos].to_string();
        let for_ns = self.for_clause(&threshold_text)?;
        Ok(Rule {
            text: self.text.to_string(),
            metric,
            subject_column,
            op,
            threshold,
            for_ns,
        })
    }

    /// metric = func "(" name ")" | "fps" | "drops" ;
    fn metric(&mut self) -> Result<(Metric, usize), RuleError> {
        let start = self.skip_ws_pos();
        let Some(word) = self.word() else {
            return Err(self.expected("a metric such as p99(STAGE), fps or drops", None));
        };
        match word {
            "fps" => return Ok((Metric::Fps, self.column(start))),
            "drops" => return Ok((Metric::Drops, self.column(start))),
            "rate" | "count" | "share" | "gauge" => {}
            w if Stat::from_word(w).is_some() => {}
            w => return Err(self.error_at(start, RuleErrorKind::UnknownMetric(w.to_string()))),
        }
        self.skip_ws();
        if !self.eat('(') {
            return Err(self.expected("'('", Some(word)));
        }
        let name_start = self.skip_ws_pos();
        let what = if word == "gauge" {
            "a gauge name"
        } else {
            "a stage name or frame"
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
    fn cmp_op(&mut self, metric_text: &str) -> Result<CmpOp, RuleError> {
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
            return Err(self.expected("a comparison (>, >=, <, <=)", Some(metric_text)));
        };
        Ok(op)
    }

    /// threshold = [ number "*" ] "baseline" | number [ unit ] ;
    fn threshold(&mut self, metric: &Metric, op: CmpOp) -> Result<Threshold, RuleError> {
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
            return Ok(Threshold::Baseline(1.0));
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
            return Ok(Threshold::Baseline(value));
        }
        self.pos = after_number;
        match self.unit()? {
            Some(ns) if metric.is_duration() => {
                if value < 0.0 {
                    return Err(self.error_at(start, RuleErrorKind::NegativeDuration));
                }
                Ok(Threshold::Value(value * ns))
            }
            Some(_) => {
                Err(self.error_at(after_number, RuleErrorKind::UnexpectedUnit(metric.name())))
            }
            None if metric.is_duration() => Err(self.error_at(
                start,
                RuleErrorKind::MissingUnit {
                    metric: metric.name(),
                    value: number_text,
                },
            )),
            None => Ok(Threshold::Value(value)),
        }
    }

    /// [ "for" duration ] then the end of the rule.
    fn for_clause(&mut self, threshold_text: &str) -> Result<u64, RuleError> {
        self.skip_ws();
        if self.at_end() {
            return Ok(0);
        }
        if !self.word_is("for") {
            return Err(self.expected("'for' or the end of the rule", Some(threshold_text)));
        }
        self.word();
        let start = self.skip_ws_pos();
        let Some((value, number_text)) = self.number()? else {
            return Err(self.expected("a duration such as 5s", Some("for")));
        };
        let Some(ns) = self.unit()? else {
            return Err(self.error_at(start, RuleErrorKind::MissingDurationUnit(number_text)));
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
        Ok(total as u64)
    }

    /// unit = "ns" | "us" | "ms" | "s" | "m" ; directly after a number or
    /// after spaces. A word glued to a number that is not a unit is an error.
    fn unit(&mut self) -> Result<Option<f64>, RuleError> {
        let glued = self.peek().is_some_and(is_word_char);
        let before = self.pos;
        let start = self.skip_ws_pos();
        match self.word() {
            Some(w) => match unit_ns(w) {
                Some(ns) => Ok(Some(ns)),
                None if glued => {
                    Err(self.error_at(start, RuleErrorKind::UnknownUnit(w.to_string())))
                }
                None => {
                    self.pos = before;
                    Ok(None)
                }
            },
            None => {
                self.pos = before;
                Ok(None)
            }
        }
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
             p99, p999, mean, min, max, rate, count, share or gauge (each followed by '(NAME)'), fps or drops"
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
}
