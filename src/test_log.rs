//! Test support: what `tracing` logs on the current thread while a capture is in place, for
//! the unit tests that assert the log lines an operator sees (one warning, not one per failure).
//! Compiled for tests only; imports nothing from the crate, so any layer's tests may use it.

use std::sync::{Arc, Mutex};

use tracing::Level;
use tracing::subscriber::DefaultGuard;

/// The captured text; clones share it.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures lines at `level` and above on this thread until the guard is dropped.
    pub fn capture(level: Level) -> (Logs, DefaultGuard) {
        let logs = Logs::default();
        let w = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        // A call site first reached by another test thread while no subscriber wanted it can
        // keep a cached "never" interest; rebuilding makes this thread's subscriber count.
        tracing::callsite::rebuild_interest_cache();
        (logs, guard)
    }

    /// Lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}
