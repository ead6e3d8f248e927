//! Wall-clock time for policy lifetimes (RFC 8461 §3.2: max_age counts from the fetch), behind a
//! trait so that expiry can be tested with `tokio::time::pause()`.
//!
//! Scheduling and deadlines use `tokio::time::Instant` directly; only what is persisted or shown
//! to operators (fetch and expiry times) goes through a [`Clock`].

use std::time::SystemTime;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The system's wall clock: what production uses.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Wall time that advances with tokio's clock: starts at the real time of its creation and moves
/// with `tokio::time::Instant`, so paused-time tests can step through max_age and back-offs.
pub struct TokioClock {
    wall: SystemTime,
    mono: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock {
            wall: SystemTime::now(),
            mono: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.wall + self.mono.elapsed()
    }
}
