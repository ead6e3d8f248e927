//! Starting and stopping the serving part of the daemon: build the resolver, bind every listener,
//! run them until told to stop. Used by `serve` and by the integration tests, which start the real
//! daemon in-process on port 0.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{error, info};

use crate::cache::Cache;
use crate::clock::Clock;
use crate::config::{Config, ListenAddr};
use crate::metrics::{self, Metrics};
use crate::refresh;
use crate::resolve::{Resolver, Settings};
use crate::server::{self, Listener, Protocol, Shared};
use crate::source::PolicySource;
use crate::store::Store;

/// How long `shutdown` waits for listeners and connections to finish their current request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct Daemon {
    resolver: Arc<Resolver>,
    store: Store,
    shared: Arc<Shared>,
    metrics_addr: Option<std::net::SocketAddr>,
    bound: Vec<(Protocol, ListenAddr)>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Why the daemon could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

impl Daemon {
    /// Binds every configured listener and starts serving. Fails without serving anything if any
    /// listener cannot be bound: a partly started daemon would hide a misconfiguration.
    pub async fn start(
        config: Arc<Config>,
        source: Arc<dyn PolicySource>,
        clock: Arc<dyn Clock>,
    ) -> Result<Daemon, StartError> {
        // The cache is loaded before any listener exists, so the first lookup already sees every
        // policy that was ever answered (warm restart).
        let started = tokio::time::Instant::now();
        let dir = config.cache.dir.clone();
        let now = clock.now();
        let (store, loaded) = tokio::task::spawn_blocking(move || Store::open(&dir, now))
            .await
            .map_err(|e| StartError(format!("policy cache: loader failed: {e}")))?
            .map_err(|e| StartError(format!("policy cache: {e}")))?;
        let capacity = NonZeroUsize::new(config.cache.max_entries).unwrap_or(NonZeroUsize::MIN);
        let map_names: Vec<&str> = config.maps.keys().map(String::as_str).collect();
        let metrics = Arc::new(Metrics::with_maps(&map_names));
        let resolver = Resolver::new(
            Cache::new(capacity).with_metrics(metrics.clone()),
            source,
            clock,
            Settings {
                deadline: config.lookup_deadline(),
                negative_ttl: config.cache.negative_ttl,
                refresh_interval: config.refresh.interval,
            },
        )
        .with_store(store.clone())
        .with_metrics(metrics.clone());
        for (domain, entry) in &loaded.policies {
            resolver.preload(domain, entry.clone());
        }
        for (domain, reason, until) in &loaded.negatives {
            resolver.preload_negative(domain, reason, *until);
        }
        info!(
            dir = %config.cache.dir.display(),
            policies = loaded.policies.len(),
            negatives = loaded.negatives.len(),
            expired = loaded.expired,
            skipped = loaded.skipped,
            bytes = loaded.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "policy cache loaded"
        );
        let resolver = Arc::new(resolver);
        let mut listeners = Vec::new();
        for (protocol, l) in [
            (Protocol::Socketmap, &config.socketmap),
            (Protocol::TcpTable, &config.tcp_table),
        ] {
            for addr in &l.listen {
                let listener = Listener::bind(addr, l.unix_mode).await.map_err(|e| {
                    StartError(format!(
                        "cannot listen on {addr} ({}): {e}",
                        protocol.name()
                    ))
                })?;
                listeners.push((protocol, listener));
            }
        }
        let metrics_listener =
            match config.metrics_listen {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    StartError(format!("cannot listen on inet:{addr} (metrics): {e}"))
                })?),
                None => None,
            };
        let shared = Arc::new(Shared {
            resolver: resolver.clone(),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            metrics: metrics.clone(),
            open: std::sync::atomic::AtomicU64::new(0),
            config,
        });
        let (tx, rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut bound = Vec::new();
        let mut bound_metrics = None;
        for (protocol, listener) in listeners {
            let addr = listener
                .local_addr()
                .map_err(|e| StartError(format!("listener address: {e}")))?;
            // Logged here, before start() returns, so "listening" always precedes "ready".
            info!(protocol = protocol.name(), listen = %addr, "listening");
            bound.push((protocol, addr));
            tasks.spawn(server::run_listener(
                listener,
                protocol,
                shared.clone(),
                rx.clone(),
            ));
        }
        if let Some(listener) = metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                info!(listen = %format!("inet:{addr}"), "metrics listening");
                bound_metrics = Some(addr);
            }
            let gauges_shared = shared.clone();
            let gauges: Arc<metrics::GaugeFn> = Arc::new(move || gauges(&gauges_shared));
            tasks.spawn(metrics::serve(
                listener,
                metrics.clone(),
                gauges,
                rx.clone(),
            ));
        }
        tasks.spawn(refresh::run(
            resolver.clone(),
            shared.config.refresh.concurrency,
            rx.clone(),
        ));
        Ok(Daemon {
            resolver,
            store,
            shared,
            metrics_addr: bound_metrics,
            bound,
            shutdown: tx,
            tasks,
        })
    }

    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// The bound metrics address, when `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The current gauges (cache entries by mode, connections).
    pub fn gauges(&self) -> metrics::Gauges {
        gauges(&self.shared)
    }

    /// Bound addresses of one protocol, with the real port when the config said 0.
    pub fn addrs(&self, protocol: Protocol) -> Vec<ListenAddr> {
        self.bound
            .iter()
            .filter(|(p, _)| *p == protocol)
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// Stops accepting, lets connections finish their current request, removes unix sockets.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            self.tasks.abort_all();
        }
        if let Err(e) = self.store.flush().await {
            error!(error = %e, "policy cache: final flush failed");
        }
    }
}

/// Gauges for a scrape: a pass over the cache under its read lock (about 10 ms per million
/// entries), so it is done per scrape, not per lookup.
fn gauges(shared: &Shared) -> metrics::Gauges {
    let c = shared
        .resolver
        .cache()
        .counts(shared.resolver.clock().now());
    metrics::Gauges {
        entries_enforce: c.enforce,
        entries_testing: c.testing,
        entries_none: c.none,
        entries_negative: c.negative,
        expiring_within_day: c.expiring_within_day,
        connections: shared.open_connections(),
    }
}
