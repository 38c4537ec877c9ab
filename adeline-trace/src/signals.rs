//! The signals the agent handles, and what each one does: SIGINT and
//! SIGTERM stop tracing cleanly (the last records written, every probe
//! detached); SIGHUP reloads the config in service mode (`--config`), and
//! stops like SIGTERM otherwise.
use tokio::signal::unix::{signal, Signal, SignalKind};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stop,
    Reload,
}

pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    /// SIGHUP reloads (a config file to re-read).
    reloads: bool,
}

impl Signals {
    /// Installs the handlers (inside the tokio runtime).
    pub fn new(reloads: bool) -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
            reloads,
        })
    }

    /// The next signal's action.
    pub async fn next(&mut self) -> Action {
        tokio::select! {
            _ = self.interrupt.recv() => Action::Stop,
            _ = self.terminate.recv() => Action::Stop,
            _ = self.hangup.recv() => match self.reloads {
                true => Action::Reload,
                false => Action::Stop,
            },
        }
    }
}
