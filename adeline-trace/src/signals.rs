//! The signals the agent handles, and what each one does: [`HANDLED`] is
//! the one place where a signal is given an action. The run loop
//! (tracer.rs) acts on what [`Signals::recv`] returns.
//!
//! - SIGINT (Ctrl-C), SIGTERM (`kill`, service managers) and SIGQUIT
//!   (Ctrl-\\) stop the agent cleanly: the last records are read, every
//!   output is finished (the end-of-run table, `--summary-out`, history's
//!   last interval), the API's socket file is removed and the launched
//!   command is ended.
//! - SIGHUP reloads the config in service mode (`--config`: the Follower
//!   re-reads it, follow/reload.rs); without a config file it stops the
//!   agent the same way instead of its default action (killed, nothing
//!   written).
//! - SIGPIPE is not handled here: Rust's runtime ignores it before `main`,
//!   so a write to a closed pipe fails instead, and when that pipe is the
//!   JSON Lines output the run stops cleanly.
//!
//! The handlers are installed before the probes are attached (after the
//! launched command was forked: the held child keeps the default actions),
//! so a signal that arrives while they are ends the run as soon as it starts.
use std::{future::poll_fn, task::Poll};

use tokio::signal::unix::{signal, Signal, SignalKind};

/// What the agent does on a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSignal {
    /// Stop cleanly, with every output written.
    Stop,
    /// Re-read the config file (only when there is one: else Stop).
    Reload,
}

/// Every signal the agent handles: its number, its name, its action.
pub const HANDLED: [(libc::c_int, &str, OnSignal); 4] = [
    (libc::SIGINT, "SIGINT", OnSignal::Stop),
    (libc::SIGTERM, "SIGTERM", OnSignal::Stop),
    (libc::SIGQUIT, "SIGQUIT", OnSignal::Stop),
    // A clean stop when there is no config file to re-read.
    (libc::SIGHUP, "SIGHUP", OnSignal::Reload),
];

/// A signal received: its name and what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub name: &'static str,
    pub action: OnSignal,
}

/// The handlers of the [`HANDLED`] signals.
pub struct Signals {
    handlers: Vec<(Received, Signal)>,
}

impl Signals {
    /// Installs the handlers; must be called inside the tokio runtime.
    /// `reloads`: there is a config file to re-read (else Reload stops).
    pub fn install(reloads: bool) -> std::io::Result<Signals> {
        let handlers = HANDLED
            .iter()
            .map(|&(number, name, action)| {
                let action = match action {
                    OnSignal::Reload if !reloads => OnSignal::Stop,
                    action => action,
                };
                let handler = signal(SignalKind::from_raw(number))?;
                Ok((Received { name, action }, handler))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Signals { handlers })
    }

    /// The next signal received (the first in [`HANDLED`] order when
    /// several are pending).
    pub async fn recv(&mut self) -> Received {
        poll_fn(|cx| {
            for (received, handler) in &mut self.handlers {
                if handler.poll_recv(cx).is_ready() {
                    return Poll::Ready(*received);
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_handled_signal_is_received_with_its_action() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for reloads in [true, false] {
                let mut signals = Signals::install(reloads).unwrap();
                for (number, name, action) in HANDLED {
                    // SAFETY: raise(3) on this process, whose handler is installed.
                    assert_eq!(unsafe { libc::raise(number) }, 0);
                    let got = tokio::time::timeout(Duration::from_secs(5), signals.recv())
                        .await
                        .unwrap_or_else(|_| panic!("{name} not received"));
                    let action = match action {
                        OnSignal::Reload if !reloads => OnSignal::Stop,
                        action => action,
                    };
                    assert_eq!(got, Received { name, action });
                }
            }
        });
        let names: Vec<&str> = HANDLED.iter().map(|h| h.1).collect();
        assert_eq!(names, ["SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP"]);
    }
}
