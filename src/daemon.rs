//! Starting, reloading and stopping the serving part of the daemon: load the policy journal,
//! build the resolver, bind (or adopt, under socket activation) every listener, run the refresh,
//! metrics and control tasks. Used by `serve` and by the integration tests, which start the real
//! daemon in-process on port 0. Holds no protocol or policy logic.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::cache::Cache;
use crate::cache::fleet::{Fleet, Settings as FleetSettings};
use crate::cache::journal::Store;
use crate::clock::Clock;
use crate::config::{Config, ListenAddr};
use crate::discovery::{DaneSource, DnssecDns, PolicySource};
use crate::metrics::{self, Metrics};
use crate::proto::Protocol;
use crate::resolve::refresh;
use crate::resolve::{Resolver, Settings};
use crate::serve::control::{self, Control, ReloadRequest};
use crate::serve::listen::Listener;
use crate::serve::metrics_http;
use crate::serve::postfix::{self, Shared};
use crate::service::Activated;

/// The DNSSEC-aware source DANE states are learnt from, when a map asks for DANE: the
/// configured nameservers, whose `AD` bit is trusted as Postfix trusts it. Checks once, in the
/// background, that they validate at all, and says so at warn when they do not: every
/// destination would then look unsigned and get the MTA-STS answer.
fn dane_source(config: &Config) -> Option<Arc<dyn DaneSource>> {
    if !config.maps.values().any(|m| m.answer.dane) {
        return None;
    }
    match DnssecDns::new(&config.dns) {
        Ok(d) => {
            let probe = d.clone();
            tokio::spawn(async move { check_validating(&probe).await });
            Some(Arc::new(d))
        }
        Err(e) => {
            error!(error = %e, "cannot build the DNSSEC resolver for DANE; DANE lookups answer TEMP");
            None
        }
    }
}

async fn check_validating(dns: &DnssecDns) {
    let servers: Vec<String> = dns.nameservers().iter().map(|s| s.to_string()).collect();
    match dns.validates().await {
        Ok(true) => {
            info!(nameservers = ?servers, "DANE: the resolver validates DNSSEC (AD set on the root's SOA)")
        }
        Ok(false) => warn!(
            nameservers = ?servers,
            "DANE: the resolver does not validate DNSSEC (no AD bit on the root's SOA): every destination looks unsigned and gets the MTA-STS answer; point [dns] nameservers at a validating resolver on loopback (unbound, knot-resolver, systemd-resolved with DNSSEC=yes)"
        ),
        Err(e) => warn!(
            nameservers = ?servers, error = %e,
            "DANE: cannot tell whether the resolver validates DNSSEC (no answer for the root's SOA)"
        ),
    }
}

/// How long `shutdown` waits for listeners and connections to finish their current request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What `start` needs besides the config: how to reach the network, the clock, sockets systemd
/// passed, and where control-socket reload requests go.
pub struct Options {
    pub source: Arc<dyn PolicySource>,
    pub clock: Arc<dyn Clock>,
    pub activated: Option<Activated>,
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
    /// Where DANE states come from. None: built from `[dns]` when a map has `dane = true`.
    pub dane: Option<Arc<dyn DaneSource>>,
}

impl Options {
    pub fn new(source: Arc<dyn PolicySource>, clock: Arc<dyn Clock>) -> Options {
        Options {
            source,
            clock,
            activated: None,
            reload: None,
            dane: None,
        }
    }
}

/// A running Postfix listener, stoppable on its own (reload).
struct Running {
    protocol: Protocol,
    /// The configured address, or None for a socket systemd passed.
    configured: Option<ListenAddr>,
    bound: ListenAddr,
    stop: watch::Sender<bool>,
}

pub struct Daemon {
    /// Held for the daemon's life: one instance per state directory.
    _lock: nix::fcntl::Flock<std::fs::File>,
    resolver: Arc<Resolver>,
    store: Store,
    shared: Arc<Shared>,
    metrics_addr: Option<std::net::SocketAddr>,
    control_path: Option<PathBuf>,
    running: Vec<Running>,
    /// Protocols whose sockets came from systemd: their configured listeners are not used.
    inherited: BTreeSet<&'static str>,
    listeners_view: Arc<RwLock<Vec<String>>>,
    /// Ends connections, refresh, metrics and the control socket.
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Dropped or set: the task applying the fleet's operator channel ends.
    fleet_stop: Option<watch::Sender<bool>>,
}

/// Why the daemon could not start, each kind with the exit status (sysexits.h) `serve` ends
/// with, so that an operator or a supervisor can tell a bad setting from a busy port.
#[derive(Debug)]
pub enum StartError {
    /// The configuration cannot be applied as written (an unknown `control.group`, a policy
    /// source that cannot be built).
    Config(String),
    /// Sockets passed by systemd that cannot be used (sd_listen_fds(3)).
    Activation(String),
    /// A configured listener cannot be bound (address in use, not local, no permission).
    Bind(String),
    /// The state directory cannot be created, locked (another instance holds it) or read.
    StateDir(String),
    /// Switching to `[daemon] user` failed.
    Privileges(String),
    /// Anything else: a failed task, a runtime that cannot start, signal handlers.
    Software(String),
}

/// sysexits.h: a service is unavailable.
pub const EX_UNAVAILABLE: u8 = 69;
/// sysexits.h: an internal software error.
pub const EX_SOFTWARE: u8 = 70;
/// sysexits.h: a (user specified) output file cannot be created.
pub const EX_CANTCREAT: u8 = 73;
/// sysexits.h: insufficient permission to perform the operation.
pub const EX_NOPERM: u8 = 77;
/// sysexits.h: a configuration error.
pub const EX_CONFIG: u8 = 78;

impl StartError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) | StartError::Activation(_) => EX_CONFIG,
            StartError::Bind(_) => EX_UNAVAILABLE,
            StartError::StateDir(_) => EX_CANTCREAT,
            StartError::Privileges(_) => EX_NOPERM,
            StartError::Software(_) => EX_SOFTWARE,
        }
    }

    fn message(&self) -> &str {
        match self {
            StartError::Config(m)
            | StartError::Activation(m)
            | StartError::Bind(m)
            | StartError::StateDir(m)
            | StartError::Privileges(m)
            | StartError::Software(m) => m,
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for StartError {}

impl Daemon {
    /// Loads the journal, then binds every listener and starts serving (started as root with a
    /// `[daemon] user`: binds, drops privileges, then loads the journal). Fails without serving
    /// anything if any listener cannot be bound: a partly started daemon would hide a
    /// misconfiguration.
    pub async fn start(config: Arc<Config>, opts: Options) -> Result<Daemon, StartError> {
        // The cache is loaded before any listener serves, so the first lookup already sees every
        // policy that was ever answered (warm restart).
        let started = tokio::time::Instant::now();
        // Started as root, the state directory is checked and handed over through descriptors
        // before root touches anything in it; with a `[daemon] user`, the journal is then opened
        // only after privileges are dropped, so a link planted there by a process of that user
        // is never followed by root.
        let dropping = if nix::unistd::geteuid().is_root() {
            let ids = match &config.daemon.user {
                Some(user) => crate::service::daemon_ids(user, config.daemon.group.as_deref())
                    .map(|(uid, gid)| (uid, Some(gid)))
                    .map_err(StartError::Privileges)?,
                None => (nix::unistd::Uid::from_raw(0), None),
            };
            let mut files = crate::cache::journal::FILES.to_vec();
            files.push(LOCK);
            crate::service::prepare_state_dir(&config.cache.dir, ids.0, ids.1, &files)
                .map_err(StartError::StateDir)?;
            !ids.0.is_root()
        } else {
            false
        };
        let lock = lock_state_dir(&config.cache.dir).map_err(StartError::StateDir)?;
        let mut opened = None;
        if !dropping {
            opened = Some(open_store(&config, opts.clock.now()).await?);
        }

        // Sockets passed by systemd replace the configured listeners of their protocol
        // (sd_listen_fds(3): the service binds only what it was not given).
        let mut activated = opts.activated.unwrap_or_default();
        let mut inherited = BTreeSet::new();
        let mut listeners: Vec<(Protocol, Option<ListenAddr>, Listener)> = Vec::new();
        for protocol in Protocol::all() {
            for l in activated.take(protocol) {
                inherited.insert(protocol.name());
                let l = Listener::inherited(l).map_err(|e| {
                    StartError::Activation(format!("socket activation ({}): {e}", protocol.name()))
                })?;
                listeners.push((protocol, None, l));
            }
        }
        for (protocol, l) in config.listeners() {
            if inherited.contains(protocol.name()) {
                continue;
            }
            for addr in &l.listen {
                let listener = Listener::bind(addr, l.unix_mode).await.map_err(|e| {
                    StartError::Bind(format!(
                        "cannot listen on {addr} ({}): {e}",
                        protocol.name()
                    ))
                })?;
                listeners.push((protocol, Some(addr.clone()), listener));
            }
        }
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                StartError::Bind(format!("cannot listen on inet:{addr} (metrics): {e}"))
            })?),
            None => None,
        };
        // Before privileges are dropped: the password file may be readable by root only.
        let fleet_settings = fleet_settings(&config).map_err(StartError::Config)?;
        let control_group = match &config.control.group {
            Some(name) => Some((
                name.clone(),
                control::group_id(name).map_err(StartError::Config)?,
            )),
            None => None,
        };
        let (control_listener, control_path) = match activated.control.pop() {
            Some(l) => match Listener::inherited(l) {
                Ok(Listener::Unix(u, _)) => (Some(u), None),
                Ok(Listener::Tcp(_)) => {
                    return Err(StartError::Activation(
                        "socket activation: the control socket must be a unix socket".into(),
                    ));
                }
                Err(e) => {
                    return Err(StartError::Activation(format!(
                        "socket activation (control): {e}"
                    )));
                }
            },
            None => match &config.control.socket {
                Some(path) => {
                    let l = control::bind(
                        path,
                        config.control.mode,
                        control_group.as_ref().map(|g| g.1),
                    )
                    .await
                    .map_err(|e| {
                        StartError::Bind(format!(
                            "cannot listen on unix:{} (control): {e}",
                            path.display()
                        ))
                    })?;
                    (Some(l), Some(path.clone()))
                }
                None => (None, None),
            },
        };

        // Everything that needs root is bound or open now: run as the configured user from here.
        if let Some(user) = &config.daemon.user {
            let mut owned: Vec<PathBuf> = control_path.iter().cloned().collect();
            for (_, configured, _) in &listeners {
                if let Some(ListenAddr::Unix(p)) = configured {
                    owned.push(p.clone());
                }
            }
            let owned: Vec<&std::path::Path> = owned.iter().map(PathBuf::as_path).collect();
            crate::service::drop_privileges(user, config.daemon.group.as_deref(), &owned)
                .map_err(StartError::Privileges)?;
        }
        let (store, loaded) = match opened {
            Some(opened) => opened,
            None => open_store(&config, opts.clock.now()).await?,
        };
        let capacity = NonZeroUsize::new(config.cache.max_entries).unwrap_or(NonZeroUsize::MIN);
        let map_names: Vec<&str> = config.maps.keys().map(String::as_str).collect();
        let metrics = Arc::new(Metrics::with_maps(&map_names));
        if store.stats().read_only.is_some() {
            // A full or read-only state directory: serve what was loaded (the store logged why
            // and retries), counted like any later failed write.
            metrics.store_write_error();
        }
        let resolver = Resolver::new(
            Cache::new(capacity).with_metrics(metrics.clone()),
            opts.source,
            opts.clock,
            settings(&config),
        )
        .with_store(store.clone())
        .with_metrics(metrics.clone());
        let fleet = Fleet::replace(None, fleet_settings, &metrics).map_err(StartError::Config)?;
        let resolver = resolver.with_fleet(fleet.0);
        let resolver = match opts.dane.or_else(|| dane_source(&config)) {
            Some(source) => resolver.with_dane_source(source),
            None => resolver,
        };
        let (policies, negatives) = (loaded.policies.len(), loaded.negatives.len());
        let dane_states = loaded.dane.len();
        for (destination, entry) in loaded.dane {
            resolver.dane().preload(&destination, entry);
        }
        resolver.reserve(policies + negatives);
        // By value: the domain names move on into the cache (shared with the store's index).
        for (domain, entry) in loaded.policies {
            resolver.preload(domain, entry);
        }
        for (domain, reason, until) in loaded.negatives {
            resolver.preload_negative(&domain, &reason, until);
        }
        info!(
            dir = %config.cache.dir.display(),
            policies,
            negatives,
            dane_states,
            expired = loaded.expired,
            skipped = loaded.skipped,
            bytes = loaded.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "policy cache loaded"
        );
        let resolver = Arc::new(resolver);
        let shared = Arc::new(Shared {
            resolver: resolver.clone(),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            metrics: metrics.clone(),
            open: AtomicU64::new(0),
            idle: Default::default(),
            config: RwLock::new(config.clone()),
            generation: AtomicU64::new(0),
        });
        let (tx, rx) = watch::channel(false);
        let mut daemon = Daemon {
            _lock: lock,
            resolver: resolver.clone(),
            store: store.clone(),
            shared: shared.clone(),
            metrics_addr: None,
            control_path: control_path.clone(),
            running: Vec::new(),
            inherited,
            listeners_view: Arc::new(RwLock::new(Vec::new())),
            shutdown: tx,
            tasks: JoinSet::new(),
            fleet_stop: None,
        };
        daemon.follow_fleet();
        for (protocol, configured, listener) in listeners {
            daemon.spawn_listener(protocol, configured, listener)?;
        }
        daemon.update_view();
        if let Some(listener) = metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                info!(listen = %format!("inet:{addr}"), "metrics listening");
                daemon.metrics_addr = Some(addr);
            }
            let s = shared.clone();
            let gauges: Arc<metrics::GaugeFn> = Arc::new(move || s.gauges());
            daemon.tasks.spawn(metrics_http::serve(
                listener,
                metrics.clone(),
                gauges,
                rx.clone(),
            ));
        }
        if let Some(listener) = control_listener {
            let ctl = Arc::new(Control {
                shared: shared.clone(),
                started: SystemTime::now(),
                listeners: daemon.listeners_view.clone(),
                reload: opts.reload,
                store,
                group: control_group,
            });
            if let Some(p) = &control_path {
                info!(socket = %p.display(), "control socket listening");
            }
            daemon
                .tasks
                .spawn(control::serve(listener, ctl, control_path, rx.clone()));
        }
        daemon
            .tasks
            .spawn(refresh::sweep(resolver.clone(), rx.clone()));
        daemon.tasks.spawn(crate::resolve::dane::refresh_loop(
            resolver.dane().clone(),
            config.refresh.concurrency,
            rx.clone(),
        ));
        daemon.tasks.spawn(refresh::run(
            resolver,
            config.refresh.concurrency,
            rx.clone(),
        ));
        Ok(daemon)
    }

    fn spawn_listener(
        &mut self,
        protocol: Protocol,
        configured: Option<ListenAddr>,
        listener: Listener,
    ) -> Result<(), StartError> {
        let bound = listener
            .local_addr()
            .map_err(|e| StartError::Bind(format!("listener address: {e}")))?;
        // Logged before start() returns, so "listening" always precedes "ready".
        info!(protocol = protocol.name(), listen = %bound, inherited = configured.is_none(), "listening");
        let (stop, stop_rx) = watch::channel(false);
        self.tasks.spawn(postfix::run_listener(
            listener,
            protocol,
            self.shared.clone(),
            stop_rx,
            self.shutdown.subscribe(),
        ));
        self.running.push(Running {
            protocol,
            configured,
            bound,
            stop,
        });
        Ok(())
    }

    fn update_view(&self) {
        let v = self
            .running
            .iter()
            .map(|r| format!("{} {}", r.protocol.name(), r.bound))
            .collect();
        *self
            .listeners_view
            .write()
            .unwrap_or_else(|p| p.into_inner()) = v;
    }

    /// Applies a new configuration without dropping the cache or open Postfix connections:
    /// map profiles, timeouts, DNS and HTTPS settings, refresh and negative-cache timing, and
    /// the listeners (new ones bound first; removed ones stop accepting while their connections
    /// go on). Settings that need a restart are reported. On error nothing changes.
    pub async fn reload(
        &mut self,
        new: Config,
        source: Arc<dyn PolicySource>,
    ) -> Result<String, String> {
        let old = self.shared.config();
        let mut notes = Vec::new();
        let restart = |what: &str, notes: &mut Vec<String>| {
            notes.push(format!("{what} changed: takes effect after a restart"));
        };
        if new.cache.dir != old.cache.dir {
            restart("cache.dir", &mut notes);
        }
        if new.cache.max_entries != old.cache.max_entries {
            restart("cache.max_entries", &mut notes);
        }
        if new.control != old.control {
            restart("[control]", &mut notes);
        }
        if new.metrics_listen != old.metrics_listen {
            restart("metrics.listen", &mut notes);
        }
        if new.limits.max_connections != old.limits.max_connections {
            restart("limits.max_connections", &mut notes);
        }
        if new.refresh.concurrency != old.refresh.concurrency {
            restart("refresh.concurrency", &mut notes);
        }
        if new.log.json != old.log.json {
            restart("log.format", &mut notes);
        }

        // Listeners: bind every new one before changing anything.
        let mut wanted: Vec<(Protocol, ListenAddr, u32)> = Vec::new();
        for (protocol, l) in new.listeners() {
            if self.inherited.contains(protocol.name()) {
                continue;
            }
            for a in &l.listen {
                wanted.push((protocol, a.clone(), l.unix_mode));
            }
        }
        let is_running = |p: Protocol, a: &ListenAddr| {
            self.running
                .iter()
                .any(|r| r.protocol == p && r.configured.as_ref() == Some(a))
        };
        let mut added = Vec::new();
        for (protocol, addr, mode) in &wanted {
            if !is_running(*protocol, addr) {
                let l = Listener::bind(addr, *mode)
                    .await
                    .map_err(|e| format!("cannot listen on {addr} ({}): {e}", protocol.name()))?;
                added.push((*protocol, addr.clone(), l));
            }
        }

        // `[fleet]`, and the password file read again: a changed one reconnects.
        let fleet = fleet_settings(&new)?;
        let (fleet, fleet_changed) =
            Fleet::replace(self.resolver.fleet(), fleet, &self.shared.metrics)?;
        let new = Arc::new(new);
        self.shared.set_config(new.clone());
        self.resolver.reconfigure(source, settings(&new));
        self.resolver.dane().set_source(dane_source(&new));
        if fleet_changed {
            self.resolver.set_fleet(fleet);
            self.follow_fleet();
            notes.push("[fleet] applied".into());
        }

        let mut removed = 0;
        self.running.retain(|r| {
            let keep = match &r.configured {
                None => true,
                Some(a) => wanted.iter().any(|(p, w, _)| *p == r.protocol && w == a),
            };
            if !keep {
                info!(protocol = r.protocol.name(), listen = %r.bound, "listener removed by reload");
                let _ = r.stop.send(true);
                removed += 1;
            }
            keep
        });
        let added_n = added.len();
        for (protocol, addr, l) in added {
            self.spawn_listener(protocol, Some(addr), l)
                .map_err(|e| e.to_string())?;
        }
        // Unix socket modes may have changed for sockets that stay.
        for (_, addr, mode) in &wanted {
            if let ListenAddr::Unix(p) = addr {
                use std::os::unix::fs::PermissionsExt;
                if let Err(e) = std::fs::set_permissions(p, std::fs::Permissions::from_mode(*mode))
                {
                    warn!(socket = %p.display(), error = %e, "cannot set the socket mode");
                }
            }
        }
        self.update_view();
        for n in &notes {
            warn!("reload: {n}");
        }
        let summary = format!(
            "configuration reloaded: {added_n} listener(s) added, {removed} removed{}{}",
            if notes.is_empty() { "" } else { "; " },
            notes.join("; ")
        );
        info!("{summary}");
        Ok(summary)
    }

    /// (Re)starts the task that applies the fleet's operator channel, if in a fleet.
    fn follow_fleet(&mut self) {
        self.fleet_stop = None;
        let Some(fleet) = self.resolver.fleet() else {
            return self.shared.metrics.fleet().set_up(false);
        };
        info!(redis = fleet.redis(), "fleet cache in use");
        let (stop, replaced) = watch::channel(false);
        self.fleet_stop = Some(stop);
        let (r, all) = (self.resolver.clone(), self.shutdown.subscribe());
        self.tasks.spawn(refresh::follow(r, fleet, all, replaced));
    }

    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.shared.config()
    }

    /// The bound metrics address, when `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The control socket path, when the daemon created it.
    pub fn control_path(&self) -> Option<&PathBuf> {
        self.control_path.as_ref()
    }

    /// The current gauges (cache entries by mode, connections).
    pub fn gauges(&self) -> metrics::Gauges {
        self.shared.gauges()
    }

    /// A one-line status for systemd's `STATUS=`.
    pub fn status_line(&self) -> String {
        let g = self.gauges();
        format!(
            "serving; policies: {} enforce, {} testing, {} none; {} negative; {} connections{}",
            g.entries_enforce,
            g.entries_testing,
            g.entries_none,
            g.entries_negative,
            g.connections,
            if g.journal_read_only == 1 {
                "; journal read-only"
            } else {
                ""
            }
        )
    }

    /// Bound addresses of one protocol, with the real port when the config said 0.
    pub fn addrs(&self, protocol: Protocol) -> Vec<ListenAddr> {
        self.running
            .iter()
            .filter(|r| r.protocol == protocol)
            .map(|r| r.bound.clone())
            .collect()
    }

    /// Stops accepting, lets connections finish their current request (up to
    /// [`SHUTDOWN_GRACE`]), flushes the journal and removes the sockets it created.
    pub async fn shutdown(mut self) {
        for r in &self.running {
            let _ = r.stop.send(true);
        }
        let _ = self.shutdown.send(true);
        // Idle connections close at once; one in the middle of a lookup answers it first.
        let shared = self.shared.clone();
        let drain = async {
            while self.tasks.join_next().await.is_some() {}
            while shared.open_connections() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            warn!(
                connections = self.shared.open_connections(),
                "shutdown grace period over; closing the rest"
            );
            self.tasks.abort_all();
        }
        if let Err(e) = self.store.flush().await {
            error!(error = %e, "policy cache: final flush failed");
        }
    }
}

/// Loads the journal in `config.cache.dir` (blocking, off the event loop).
async fn open_store(
    config: &Config,
    now: SystemTime,
) -> Result<(Store, crate::cache::journal::Loaded), StartError> {
    let dir = config.cache.dir.clone();
    tokio::task::spawn_blocking(move || Store::open(&dir, now))
        .await
        .map_err(|e| StartError::Software(format!("policy cache: loader failed: {e}")))?
        .map_err(|e| StartError::StateDir(format!("policy cache: {e}")))
}

/// The lock file's name in the state directory.
const LOCK: &str = "lock";

/// Takes `<dir>/lock` exclusively: two daemons appending to one journal would corrupt each
/// other's view of the cache. Creates the directory (0700) when missing.
fn lock_state_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("state directory {}: cannot create: {e}", dir.display()))?;
    }
    let path = dir.join(LOCK);
    // Never through a symbolic link, and without blocking on a FIFO planted in its place.
    let flags = nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK;
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(flags)
        .open(&path)
    {
        Ok(file) => file,
        // A read-only or full state directory still starts, with the journal read-only; flock(2)
        // needs no write access, so the existing lock file is locked for reading, or the
        // directory itself when there is none.
        Err(e) => match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(&path)
        {
            Ok(file) => file,
            Err(missing) if missing.kind() == std::io::ErrorKind::NotFound => {
                warn!(dir = %dir.display(), error = %e, "cannot create the lock file; locking the state directory itself");
                std::fs::File::open(dir)
                    .map_err(|e| format!("state directory {}: cannot open: {e}", dir.display()))?
            }
            Err(_) => {
                return Err(format!(
                    "state directory {}: cannot open {}: {e}",
                    dir.display(),
                    path.display()
                ));
            }
        },
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("state directory {}: {e}", path.display()))?;
    if !meta.is_dir() && (!meta.is_file() || meta.nlink() > 1) {
        // A hard link to a file elsewhere, or a device: not a lock file this daemon made.
        return Err(format!(
            "{} is not a plain lock file (a special file or one with several hard links); remove it",
            path.display()
        ));
    }
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == nix::errno::Errno::EWOULDBLOCK {
            format!(
                "state directory {} is in use by another mta-sts-policyd (lock {} held); \
                 give each instance its own [cache] dir",
                dir.display(),
                path.display()
            )
        } else {
            format!(
                "state directory {}: cannot lock {}: {e}",
                dir.display(),
                path.display()
            )
        }
    })
}

/// The fleet's settings from `[fleet]` and its password file; None when `[fleet]` is off. The
/// lease outlasts one discovery (both timeouts): its holder publishes before it ends.
fn fleet_settings(config: &Config) -> Result<Option<FleetSettings>, String> {
    let Some(f) = &config.fleet else {
        return Ok(None);
    };
    Ok(Some(FleetSettings {
        redis: f.redis.clone(),
        password: f.password()?,
        key_prefix: f.key_prefix.clone(),
        timeout: f.timeout,
        lease: config.lookup_deadline() + Duration::from_secs(5),
        max_negative: config.cache.negative_ttl,
    }))
}

fn settings(config: &Config) -> Settings {
    Settings {
        deadline: config.lookup_deadline(),
        negative_ttl: config.cache.negative_ttl,
        dns_failure_ttl: config.cache.dns_failure_ttl,
        refresh_interval: config.refresh.interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_errors_map_to_sysexits() {
        let code = |e: StartError| e.exit_code();
        assert_eq!(code(StartError::Config(String::new())), 78);
        assert_eq!(code(StartError::Activation(String::new())), 78);
        assert_eq!(code(StartError::Bind(String::new())), 69);
        assert_eq!(code(StartError::StateDir(String::new())), 73);
        assert_eq!(code(StartError::Privileges(String::new())), 77);
        assert_eq!(code(StartError::Software(String::new())), 70);
        assert_eq!(StartError::Bind("in use".into()).to_string(), "in use");
    }

    #[tokio::test]
    async fn a_state_directory_that_cannot_be_created_is_a_state_dir_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plainfile");
        std::fs::write(&file, "x").unwrap();
        let text = format!(
            "[cache]\ndir = \"{}\"\n[control]\nsocket = \"\"\n",
            file.join("state").display()
        );
        let config = Arc::new(Config::parse(&text, None).unwrap());
        let source = Arc::new(crate::discovery::fake::FakeSource::default());
        let opts = Options::new(source, Arc::new(crate::clock::SystemClock));
        match Daemon::start(config, opts).await {
            Ok(_) => panic!("the daemon started"),
            Err(e) => {
                assert!(matches!(e, StartError::StateDir(_)), "{e:?}");
                assert_eq!(e.exit_code(), 73);
            }
        }
    }
}
