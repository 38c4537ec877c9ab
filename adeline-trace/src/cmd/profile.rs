//! `adeline-trace profile`: asks the running agent (`run --profile`) for a
//! profile, `GET /api/profile` or an alert's `GET /api/alerts/{id}/profile`,
//! and writes it to stdout or a file as it came (folded text, SVG, pprof).
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use super::summary::{client, endpoint_of};
use crate::cli::ProfileArgs;

/// How long the agent may take to name and render a profile.
const RENDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The request path the arguments ask for.
fn path(args: &ProfileArgs) -> String {
    match args.alert {
        Some(id) => {
            // The default of an alert profile is its differential graph.
            let format = args.format.as_deref().unwrap_or("diff");
            format!("/api/alerts/{id}/profile?format={}", encode(format))
        }
        None => {
            let mut p = format!(
                "/api/profile?seconds={}&format={}",
                encode(&args.seconds),
                encode(args.format.as_deref().unwrap_or("folded"))
            );
            if let Some(stage) = &args.stage {
                p.push_str(&format!("&stage={}", encode(stage)));
            }
            p
        }
    }
}

pub fn profile(args: &ProfileArgs) -> Result<()> {
    let endpoint = endpoint_of(args.api_socket.as_ref(), args.api_port)?;
    let response = client::get_within(&endpoint, &path(args), RENDER_TIMEOUT)?;
    if response.status != 200 {
        bail!("{}", response.error_text());
    }
    match &args.output {
        Some(file) => std::fs::write(file, &response.bytes)
            .with_context(|| format!("cannot write the profile to {}", file.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&response.bytes).and_then(|()| out.flush()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.context("writing the profile")?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(stage: Option<&str>, alert: Option<u32>, format: Option<&str>) -> ProfileArgs {
        ProfileArgs {
            stage: stage.map(String::from),
            seconds: "30".into(),
            format: format.map(String::from),
            alert,
            output: None,
            api_port: None,
            api_socket: None,
        }
    }

    #[test]
    fn request_paths() {
        assert_eq!(
            path(&args(Some("infer layer"), None, Some("svg"))),
            "/api/profile?seconds=30&format=svg&stage=infer%20layer"
        );
        assert_eq!(
            path(&args(None, Some(3), None)),
            "/api/alerts/3/profile?format=diff"
        );
        assert_eq!(
            path(&args(None, Some(3), Some("pprof"))),
            "/api/alerts/3/profile?format=pprof"
        );
    }
}
