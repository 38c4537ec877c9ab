use std::process::ExitCode;

use adeline_trace::{
    cli::{Cli, Command},
    config::Plan,
    journal::{self, Priority},
};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(args) => Plan::from_args(args)
            .map_err(anyhow::Error::from)
            .and_then(|plan| adeline_trace::cmd::run::run(plan, args)),
        Command::List(args) => adeline_trace::cmd::list::list(args),
        Command::Summary(args) => adeline_trace::cmd::summary::summary(args),
        Command::History(args) => adeline_trace::cmd::history::history(args),
        Command::Completions(args) => adeline_trace::cmd::completions::completions(args),
        Command::Manpages(args) => adeline_trace::cmd::completions::manpages(args),
        Command::Profile(args) => adeline_trace::cmd::profile::profile(args),
        // compare prints its own errors: exit 1 = regression, 2 = bad input.
        Command::Compare(args) => return adeline_trace::cmd::compare::compare(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}error: {e:#}", journal::prefix(Priority::Err));
            ExitCode::FAILURE
        }
    }
}
