//! Console logging: tracing events as text lines on stderr, through a
//! non-blocking writer thread so that a slow or stalled stderr (a full
//! pipe, a stopped terminal) never stalls the event loop. Lossy: when the
//! writer's buffer is full, lines are dropped and counted. ANSI colours only
//! when stderr is a terminal (and `NO_COLOR` is unset). `RUST_LOG` filters
//! (default `info`).

use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::Duration;

use tracing::warn;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Lines the console writer buffers before it drops new ones.
pub const BUFFERED_LINES: usize = 128_000;
/// The longest dropping the [`Guard`] waits for buffered lines to be
/// written (the writer's own bound is 1.1 s; this one holds even if stderr
/// and stdout are both blocked).
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(2);

/// Keeps the console writer running. Hold it until the process ends: when
/// it is dropped, buffered lines are written (within [`FLUSH_DEADLINE`]),
/// after a last line saying how many were dropped, if any.
#[derive(Debug)]
pub struct Guard {
    worker: Option<WorkerGuard>,
    dropped: ErrorCounter,
}

/// Install the console subscriber for the process (once, from `main`).
pub fn init() -> Guard {
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("console-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(use_ansi(std::io::stderr().is_terminal()))
        .init();
    Guard {
        worker: Some(worker),
        dropped,
    }
}

/// Colours on a terminal, unless `NO_COLOR` is set (no-color.org).
fn use_ansi(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

impl Drop for Guard {
    fn drop(&mut self) {
        let dropped_lines = self.dropped.dropped_lines();
        if dropped_lines > 0 {
            warn!(
                dropped_lines,
                "console log lines dropped: stderr did not keep up"
            );
        }
        let Some(worker) = self.worker.take() else {
            return;
        };
        // The worker guard's drop waits for the writer, and prints to
        // stdout when it cannot reach it: bound it from another thread.
        let (done_tx, done) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("console-flush".into())
            .spawn(move || {
                drop(worker);
                drop(done_tx);
            });
        if spawned.is_ok() {
            let _ = done.recv_timeout(FLUSH_DEADLINE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal() {
        assert!(!use_ansi(false));
        if std::env::var_os("NO_COLOR").is_none() {
            assert!(use_ansi(true));
        }
    }
}
