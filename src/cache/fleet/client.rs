//! The connection to the Redis/Valkey server: one multiplexed connection that reconnects by
//! itself (redis-rs's `ConnectionManager`), every operation bounded by `[fleet] timeout`, errors
//! sorted by kind, and a circuit breaker so that an unreachable server costs the lookup path
//! nothing for a while instead of one timeout per miss.
//!
//! The breaker: after [`TRIP_AFTER`] connectivity failures in a row (timeouts, refused or broken
//! connections, authentication) it opens for [`OPEN_FOR`]; then one operation probes, and its
//! success closes it. Garbage values and a full server (`OOM`) are not connectivity failures:
//! the server answers. A warning is logged once per state change, never per operation.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::{Cmd, ErrorKind, FromRedisValue, IntoConnectionInfo, RedisError};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::metrics::{FleetError, Metrics};

/// Connectivity failures in a row that open the breaker.
pub const TRIP_AFTER: u32 = 3;
/// How long an open breaker skips the server before one operation probes it again.
pub const OPEN_FOR: Duration = Duration::from_secs(2);
/// Longest wait for a new TCP (or TLS, or unix socket) connection; it is made in the
/// background, so a lookup still waits only `[fleet] timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an operation gave no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The breaker is open: the server was not asked.
    Skipped,
    Failed(FleetError, String),
}

impl Failure {
    pub fn kind(&self) -> Option<FleetError> {
        match self {
            Failure::Skipped => None,
            Failure::Failed(k, _) => Some(*k),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Skipped => f.write_str("not asked: circuit breaker open"),
            Failure::Failed(k, m) => write!(f, "{}: {m}", k.label()),
        }
    }
}

/// The breaker's state, also what `ctl status` shows.
#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    /// None until the first operation finished.
    up: Option<bool>,
    last_error: Option<String>,
}

pub struct Client {
    client: redis::Client,
    /// Made lazily (the daemon starts whether or not the server is reachable) and replaced after
    /// an authentication failure, which the manager would otherwise keep returning.
    manager: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

/// A snapshot of the connection state for `ctl status`.
#[derive(Debug, Clone)]
pub struct Health {
    pub up: Option<bool>,
    pub breaker_open: bool,
    pub failures: u32,
    pub last_error: Option<String>,
}

impl Client {
    /// `url` as `[fleet] redis` has it, `password` from `password_file`. Nothing is connected
    /// yet.
    pub fn new(
        url: &str,
        password: Option<&str>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Client, String> {
        let mut info = url
            .into_connection_info()
            .map_err(|e| format!("fleet.redis: {}", e.category()))?;
        if let Some(pw) = password {
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(|e| format!("fleet.redis: {e}"))?;
        metrics.fleet().set_up(false);
        Ok(Client {
            client,
            manager: Mutex::new(None),
            timeout,
            state: Mutex::new(State::default()),
            metrics,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn manager(&self) -> Result<ConnectionManager, Failure> {
        let mut m = self.manager.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &*m {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(0)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let c = self
            .client
            .get_connection_manager_lazy(config)
            .map_err(|e| Failure::Failed(FleetError::Protocol, e.to_string()))?;
        *m = Some(c.clone());
        Ok(c)
    }

    /// Whether the breaker lets an operation through now.
    fn admit(&self) -> bool {
        let mut s = self.state();
        let now = Instant::now();
        match s.open_until {
            None => true,
            Some(t) if now < t => false,
            // One probe; the breaker is armed again meanwhile, so that a probe whose caller
            // went away cannot keep it open for ever.
            Some(_) => {
                s.open_until = Some(now + OPEN_FOR);
                s.probing = true;
                true
            }
        }
    }

    fn succeeded(&self) {
        let mut s = self.state();
        s.failures = 0;
        s.open_until = None;
        s.probing = false;
        if s.up != Some(true) {
            if s.up.is_some() {
                info!("fleet cache reachable again; sharing resumes");
            }
            s.up = Some(true);
            self.metrics.fleet().set_up(true);
        }
    }

    fn failed(&self, kind: FleetError, message: &str) {
        self.metrics.fleet().error(kind);
        let mut s = self.state();
        s.last_error = Some(format!("{}: {message}", kind.label()));
        if matches!(kind, FleetError::Garbage | FleetError::Oom) {
            // The server answered: not a reason to stop asking it.
            if kind == FleetError::Oom && s.up != Some(false) {
                warn!(
                    error = message,
                    "fleet cache is full (maxmemory): entries are not shared"
                );
            }
            return;
        }
        s.failures = s.failures.saturating_add(1);
        if s.probing || s.failures >= TRIP_AFTER {
            s.open_until = Some(Instant::now() + OPEN_FOR);
            s.probing = false;
            if matches!(kind, FleetError::Auth | FleetError::Connection) {
                // A fresh connection on the next probe (a fixed password is read on reload).
                *self.manager.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
        if s.up != Some(false) && (s.open_until.is_some() || kind == FleetError::Auth) {
            warn!(
                kind = kind.label(),
                error = message,
                "fleet cache unavailable; answering from the local cache and local discovery"
            );
            s.up = Some(false);
            self.metrics.fleet().set_up(false);
        }
    }

    /// Runs one command within the timeout, through the breaker.
    pub async fn run<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, Failure> {
        if !self.admit() {
            return Err(Failure::Skipped);
        }
        let mut conn = match self.manager() {
            Ok(c) => c,
            Err(f) => {
                if let Failure::Failed(k, m) = &f {
                    self.failed(*k, m);
                }
                return Err(f);
            }
        };
        let r = tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await;
        let (kind, message) = match r {
            Ok(Ok(v)) => {
                self.succeeded();
                return Ok(v);
            }
            Ok(Err(e)) => classify(&e),
            Err(_) => (
                FleetError::Timeout,
                format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            ),
        };
        self.failed(kind, &message);
        Err(Failure::Failed(kind, message))
    }

    /// A value the server returned that is not a shared entry: counted, not a connectivity
    /// failure.
    pub fn garbage(&self, message: &str) {
        self.failed(FleetError::Garbage, message);
    }

    /// A connection of its own for the channel subscriber (pub/sub takes a whole connection).
    pub async fn pubsub(&self) -> Result<PubSub, String> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(classify(&e).1),
            Err(_) => Err("connection timed out".into()),
        }
    }

    pub fn health(&self) -> Health {
        let s = self.state();
        Health {
            up: s.up,
            breaker_open: s.open_until.is_some(),
            failures: s.failures,
            last_error: s.last_error.clone(),
        }
    }
}

/// The kind of a failed operation, and a message without any secret (redis-rs errors name
/// the server's error code and text, never the password).
pub fn classify(e: &RedisError) -> (FleetError, String) {
    let message = e.to_string();
    let kind = match (e.kind(), e.code()) {
        (_, Some("NOAUTH" | "WRONGPASS")) | (ErrorKind::AuthenticationFailed, _) => {
            FleetError::Auth
        }
        (_, Some("OOM")) => FleetError::Oom,
        (_, Some("WRONGTYPE")) => FleetError::Garbage,
        _ if e.is_timeout() => FleetError::Timeout,
        _ if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() => {
            FleetError::Connection
        }
        (ErrorKind::UnexpectedReturnType | ErrorKind::Parse, _) => FleetError::Garbage,
        _ => FleetError::Protocol,
    };
    (kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_log::Logs;

    /// Held by the tests that reach the breaker's log lines. A log line's call site caches whether
    /// any subscriber wants it when it is first reached; if the breaker test reached it first on
    /// its thread while the log test was installing its subscriber, the cached answer could miss
    /// the log test's subscriber and the line would never be captured. One at a time, the log
    /// test's `rebuild_interest_cache` always comes after any first use.
    static BREAKER_LOGS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn client() -> Client {
        // Port 9 (discard) on loopback: nothing answers there in a test sandbox.
        Client::new(
            "redis://127.0.0.1:9/0",
            Some("secret"),
            Duration::from_millis(50),
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_repeated_failures_and_probes_once_after_a_while() {
        let _serial = BREAKER_LOGS.lock().await;
        let c = client();
        for _ in 0..TRIP_AFTER {
            assert!(c.admit());
            c.failed(FleetError::Timeout, "slow");
        }
        assert!(!c.admit(), "open: not asked");
        assert_eq!(c.health().up, Some(false));
        tokio::time::advance(OPEN_FOR).await;
        assert!(c.admit(), "one probe");
        assert!(!c.admit(), "only one probe at a time");
        c.failed(FleetError::Connection, "refused");
        assert!(!c.admit(), "a failed probe opens it again");
        // A probe whose caller went away (no success, no failure): another one later.
        tokio::time::advance(OPEN_FOR).await;
        assert!(c.admit());
        tokio::time::advance(OPEN_FOR).await;
        assert!(
            c.admit(),
            "an abandoned probe does not keep the breaker open"
        );
        c.failed(FleetError::Timeout, "slow");
        tokio::time::advance(OPEN_FOR).await;
        assert!(c.admit());
        c.succeeded();
        assert!(c.admit() && c.admit(), "closed again");
        assert_eq!(c.health().up, Some(true));
    }

    #[tokio::test(start_paused = true)]
    async fn one_warning_when_the_server_becomes_unavailable_not_one_per_failure() {
        let _serial = BREAKER_LOGS.lock().await;
        let (logs, _guard) = Logs::capture(tracing::Level::INFO);
        let c = client();
        for _ in 0..3 {
            for _ in 0..50 {
                if c.admit() {
                    c.failed(FleetError::Timeout, "slow");
                }
                tokio::time::advance(Duration::from_millis(100)).await;
            }
        }
        assert_eq!(logs.count("fleet cache unavailable"), 1);
        c.succeeded();
        c.succeeded();
        assert_eq!(logs.count("fleet cache reachable again"), 1);
        for _ in 0..TRIP_AFTER {
            c.failed(FleetError::Connection, "refused");
        }
        assert_eq!(
            logs.count("fleet cache unavailable"),
            2,
            "a new state change"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn garbage_and_a_full_server_do_not_open_the_breaker() {
        let c = client();
        for _ in 0..10 {
            c.failed(FleetError::Garbage, "bad JSON");
            c.failed(FleetError::Oom, "OOM");
        }
        assert!(c.admit());
        assert_eq!(c.metrics.fleet().errors(FleetError::Garbage), 10);
    }

    #[test]
    fn a_bad_url_is_an_error_that_does_not_quote_it() {
        let Err(e) = Client::new(
            "redis://user:hunter2@[::1",
            None,
            Duration::from_millis(50),
            Arc::new(Metrics::new()),
        ) else {
            panic!("an unparsable URL was accepted");
        };
        assert!(!e.contains("hunter2"), "{e}");
    }
}
