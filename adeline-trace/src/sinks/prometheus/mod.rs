//! `GET /metrics`: the agent's metrics in the Prometheus text exposition
//! format 0.0.4 (metric list: docs/prometheus.md).
//!
//! [`families`] names and renders the metrics, [`text`] writes the format,
//! [`process`] reads the agent's own CPU and memory use.
use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};

use crate::{
    metrics::snapshot::Window,
    sinks::source::{read_source, SnapshotSource, Source},
};

pub mod families;
pub mod process;
pub mod stage_memory;
pub mod text;

/// Routes served by this module (merged into the API router).
pub fn routes() -> Router<Source> {
    Router::new().route("/metrics", get(metrics))
}

/// `GET /metrics`. Query parameters are ignored (Prometheus may send some).
async fn metrics(State(source): State<Source>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, text::CONTENT_TYPE)],
        read_source(&source, exposition).await,
    )
}

/// The exposition of everything `source` holds now.
pub fn exposition(source: &dyn SnapshotSource) -> String {
    // Buckets first: the counters of the snapshots taken after can only be
    // larger, never smaller, than the calls counted in the histograms.
    let cumulative = source.cumulative();
    let last_second = source.snapshot(Window::S1);
    let whole_run = source.snapshot(Window::All);
    let alerts = source.alert_states();
    let outputs = source.outputs();
    families::render(&families::Scrape {
        version: env!("CARGO_PKG_VERSION"),
        cumulative: cumulative.as_ref(),
        last_second: &last_second,
        whole_run: &whole_run,
        alerts: &alerts,
        agent: process::agent_usage(),
        outputs: &outputs,
    })
}

#[cfg(test)]
mod tests {
    use adeline_trace_common::SpanRecord;

    use super::*;
    use crate::{
        alerts::{AlertEvent, AlertState},
        events::{monotonic_ns, WallClock},
        metrics::Metrics,
        sinks::api::fixtures::FakeSource,
        state::{LiveOptions, LiveState},
    };

    #[test]
    fn the_live_state_exposes_its_buckets_and_every_rule_that_fired() {
        let live = LiveState::new(
            Metrics::new(vec!["decode".into()], vec![], None),
            WallClock::new(),
            LiveOptions {
                prom_buckets_ns: vec![1_000, 2_000],
                ..Default::default()
            },
        );
        let start_ns = monotonic_ns();
        for dur_ns in [500, 1_500, 1_500, 9_000] {
            live.metrics().record_span(&SpanRecord {
                start_ns,
                dur_ns,
                self_ns: dur_ns,
                ..Default::default()
            });
        }
        let firing = |rule: &str| AlertEvent {
            state: AlertState::Firing,
            rule: rule.to_string(),
            value: 1.0,
            threshold: 0.0,
            since_ns: 0,
            ts_ns: 0,
        };
        live.set_alerts(vec![firing("drops > 0"), firing("rate(decode) < 5")]);
        live.set_alerts(vec![firing("rate(decode) < 5")]);
        live.set_counts(4, 0);
        let body = exposition(&live);
        for line in [
            "adeline_stage_calls_total{stage=\"decode\"} 4\n",
            "adeline_stage_duration_seconds_bucket{stage=\"decode\",le=\"0.000001\"} 1\n",
            "adeline_stage_duration_seconds_bucket{stage=\"decode\",le=\"0.000002\"} 3\n",
            "adeline_stage_duration_seconds_bucket{stage=\"decode\",le=\"+Inf\"} 4\n",
            "adeline_stage_duration_seconds_sum{stage=\"decode\"} 0.0000125\n",
            "adeline_stage_self_seconds_total{stage=\"decode\"} 0.0000125\n",
            "adeline_events_total 4\n",
            "adeline_alert_firing{rule=\"drops > 0\"} 0\n",
            "adeline_alert_firing{rule=\"rate(decode) < 5\"} 1\n",
        ] {
            assert!(body.contains(line), "{line} not in\n{body}");
        }
        assert!(!body.contains("adeline_frame"), "{body}");
    }

    #[test]
    fn a_source_without_histograms_still_exposes_its_snapshot() {
        let body = exposition(&FakeSource::default());
        // Snapshot-based families only; the fake's alert list ends with
        // "fps < 25 for 10s" resolved.
        assert!(body.contains("adeline_fps 29.5\n"), "{body}");
        assert!(body.contains("adeline_probe_value{gauge=\"queue_depth\"} 3\n"));
        assert!(!body.contains("gauge=\"batch\""), "{body}");
        assert!(body.contains("adeline_drops_total 12\n"), "{body}");
        assert!(body.contains("adeline_alert_firing{rule=\"p99(inference) > 30ms for 5s\"} 1\n"));
        assert!(body.contains("adeline_alert_firing{rule=\"fps < 25 for 10s\"} 0\n"));
        assert!(!body.contains("adeline_stage_"), "{body}");
        assert!(
            body.contains("adeline_agent_resident_memory_bytes "),
            "{body}"
        );
        // The traced process's container, on its info series and on every
        // per-process series.
        let id = "4b825dc642cb6eb9a060e54bf8d69288fbee4904e4b825dc642cb6eb9a060e54";
        let labels =
            format!("pid=\"4242\",ns_pid=\"1\",container_id=\"{id}\",container_runtime=\"docker\"");
        assert!(
            body.contains(&format!(
                "adeline_process_info{{{labels},cgroup=\"/system.slice/docker-{id}.scope\"}} 1\n"
            )),
            "{body}"
        );
        assert!(
            body.contains(&format!(
                "adeline_process_resident_memory_bytes{{{labels}}} 104857600\n"
            )),
            "{body}"
        );
        assert!(!body.contains("adeline_output_"), "{body}");
    }

    #[test]
    fn outputs_that_lose_records_are_counted() {
        use crate::sinks::source::OutputHealth;
        struct WithOutputs(FakeSource);
        impl SnapshotSource for WithOutputs {
            fn snapshot(&self, w: Window) -> crate::metrics::snapshot::Snapshot {
                self.0.snapshot(w)
            }
            fn alerts(&self) -> Vec<AlertEvent> {
                Vec::new()
            }
            fn outputs(&self) -> Vec<OutputHealth> {
                vec![OutputHealth {
                    output: "otlp_traces",
                    exported: 90,
                    dropped: 7,
                    failed_exports: 2,
                    queued: 3,
                }]
            }
        }
        let body = exposition(&WithOutputs(FakeSource::default()));
        for line in [
            "adeline_output_exported_total{output=\"otlp_traces\"} 90\n",
            "adeline_output_dropped_total{output=\"otlp_traces\"} 7\n",
            "adeline_output_failed_exports_total{output=\"otlp_traces\"} 2\n",
            "adeline_output_queued{output=\"otlp_traces\"} 3\n",
            "# TYPE adeline_output_dropped_total counter\n",
        ] {
            assert!(body.contains(line), "{line} not in\n{body}");
        }
    }
}
