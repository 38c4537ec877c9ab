//! Alert rule text (adeline-trace/src/alerts/rule.rs): parse, validate
//! against a plan, format values. Properties beyond "no panic, no hang":
//! every error is one line with its column inside the rule, and a rule
//! that parses validates against a plan that has its names.
#![no_main]

use adeline_trace::alerts::rule::{parse_rule, validate, value_formatter, Metric, Subject, Threshold};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let columns = text.chars().count() + 1;
    let stages = vec!["decode".to_string(), "infer".to_string(), "track".to_string()];
    let gauges = vec!["tracks".to_string()];
    match parse_rule(text) {
        Err(e) => {
            assert!((1..=columns).contains(&e.column), "column {} of {columns}: {e}", e.column);
            assert!(!e.to_string().contains(['\n', '\r']), "{e}");
        }
        Ok(rule) => {
            assert!((1..=columns).contains(&rule.subject_column));
            match rule.threshold {
                Threshold::Value(v) | Threshold::Baseline(v) => assert!(v.is_finite(), "{v}"),
            }
            // The plan of the demo, then one that has the rule's names.
            for has_frames in [false, true] {
                if let Err(e) = validate(&rule, &stages, &gauges, has_frames) {
                    assert!((1..=columns).contains(&e.column));
                    assert!(!e.to_string().contains(['\n', '\r']), "{e}");
                }
            }
            let name = match &rule.metric {
                Metric::Latency { of: Subject::Stage(s), .. }
                | Metric::Rate(Subject::Stage(s))
                | Metric::Count(Subject::Stage(s))
                | Metric::Share(s)
                | Metric::Gauge(s)
                | Metric::Outstanding(s)
                | Metric::Leak(s) => Some(s.clone()),
                _ => None,
            };
            if let Some(name) = name {
                let named = vec![name];
                validate(&rule, &named, &named, true).expect("a plan with the rule's names");
            }
            let format = value_formatter(text);
            for v in [0.0, -1.5, 0.37, 1e6, 3.2e12, f64::MAX, f64::NAN, f64::INFINITY] {
                let _ = format(v);
            }
        }
    }
});
