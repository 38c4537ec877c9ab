//! `adeline-trace completions SHELL` and the hidden `manpages DIR`: shell
//! completion scripts and man pages generated from the clap definitions
//! (cli.rs), so they never drift from the flags. `cargo xtask deb` packages
//! them.
use std::io::Write;

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManpagesArgs, Shell};

/// The completion script for `args.shell` on stdout.
pub fn completions(args: &CompletionsArgs) -> Result<()> {
    let mut out = Vec::new();
    write_completions(args.shell, &mut out);
    std::io::stdout()
        .write_all(&out)
        .context("writing the completion script")
}

/// The completion script for `shell`.
pub fn write_completions(shell: Shell, out: &mut dyn Write) {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), "adeline-trace", out);
}

/// One man page per command into `args.dir`.
pub fn manpages(args: &ManpagesArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    clap_mangen::generate_to(Cli::command(), &args.dir)
        .with_context(|| format!("cannot write the man pages into {}", args.dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_know_the_subcommands_and_flags() {
        for (shell, marker) in [
            (Shell::Bash, "complete -F"),
            (Shell::Zsh, "#compdef adeline-trace"),
            (Shell::Fish, "complete -c adeline-trace"),
        ] {
            let mut out = Vec::new();
            write_completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains(marker), "{shell:?}");
            for word in ["run", "summary"] {
                assert!(text.contains(word), "{shell:?} lacks {word}");
            }
            // Fish spells a long flag `-l NAME`, the others `--NAME`.
            for flag in ["otlp", "frame-stage", "kubelet-pods-dir"] {
                let word = match shell {
                    Shell::Fish => format!("-l {flag} "),
                    _ => format!("--{flag}"),
                };
                assert!(text.contains(&word), "{shell:?} lacks {word}");
            }
        }
    }

    #[test]
    fn man_pages_for_every_command() {
        let dir = tempfile::tempdir().unwrap();
        manpages(&ManpagesArgs {
            dir: dir.path().to_path_buf(),
        })
        .unwrap();
        let run = std::fs::read_to_string(dir.path().join("adeline-trace-run.1")).unwrap();
        assert!(run.starts_with(".ie") || run.contains(".TH"), "{run}");
        assert!(run.contains("otlp"), "{run}");
        for page in [
            "adeline-trace.1",
            "adeline-trace-summary.1",
            "adeline-trace-completions.1",
        ] {
            assert!(dir.path().join(page).is_file(), "{page}");
        }
    }
}
