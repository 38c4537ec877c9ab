//! A config file (adeline-trace/src/config.rs): TOML -> validated Plan,
//! then its alert rules against the plan (as `run` does before attaching
//! anything). Nothing is read from disk or attached. Properties beyond "no
//! panic, no hang": every error is one line.
#![no_main]

use std::path::Path;

use adeline_trace::{alerts::engine::AlertEngine, cli, config::Plan};
use clap::Parser as _;
use libfuzzer_sys::fuzz_target;

fn run_args() -> cli::RunArgs {
    match cli::Cli::parse_from(["adeline-trace", "run"]).command {
        cli::Command::Run(r) => *r,
        _ => unreachable!("`run` parses as Command::Run"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let plan = match Plan::from_config_text(&run_args(), Path::new("fuzz.toml"), text) {
        Ok(plan) => plan,
        Err(e) => {
            assert!(!e.to_string().contains(['\n', '\r']), "{e}");
            return;
        }
    };
    let stages: Vec<String> = plan.stages.iter().map(|s| s.name.clone()).collect();
    let gauges: Vec<String> = plan.gauges.iter().map(|g| g.name.clone()).collect();
    if let Err(e) = AlertEngine::from_specs(&plan.alerts, &stages, &gauges, plan.frame_stage.is_some()) {
        assert!(!e.to_string().contains(['\n', '\r']), "{e}");
    }
});
