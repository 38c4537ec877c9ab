//! Alert rules over metrics snapshots -> alert events (with hysteresis).
//!
//! [`rule`] parses and checks rule text, [`engine`] evaluates rules over
//! snapshots, [`hook`] runs `exec` hooks. Rules and semantics: docs/alerts.md.
use serde::{Deserialize, Serialize};

pub mod alerting;
pub mod engine;
pub mod hook;
pub mod rule;

pub use engine::AlertEngine;
pub use hook::{HookJob, HookRunner};
pub use rule::{parse_rule, validate, Rule, RuleError};

/// An alert rule as written (parsed by [`rule`]), and its optional hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSpec {
    pub rule: String,
    /// Shell command run with the alert JSON on stdin when it fires/resolves.
    pub exec: Option<String>,
}

/// Firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    /// The word in JSON and in the history database.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One transition of one rule, as written to the JSON stream (`type`
/// "alert"), served by `GET /api/alerts` and piped to `exec` hooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub state: AlertState,
    /// The rule as written.
    pub rule: String,
    /// The metric's value when the transition happened.
    pub value: f64,
    /// The threshold it was compared with (after applying any baseline factor).
    pub threshold: f64,
    /// Wall-clock ns since when the condition held (firing) or the alert fired (resolved).
    pub since_ns: u64,
    /// Wall-clock ns of this transition.
    pub ts_ns: u64,
    /// Firing alerts on a stage, when the run profiles: the API path of the
    /// stage's profile captured after the alert, diffed against before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}
