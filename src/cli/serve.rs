//! `serve`: logging set-up, the daemon's start, and the signal loop (stop, reload, watchdog and
//! status for systemd).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{error, info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::clock::SystemClock;
use crate::config::{Config, LogConfig};
use crate::daemon::{Daemon, Options, StartError};
use crate::serve::control::ReloadRequest;
use crate::service::{self, Activated, Notifier, Signal, Signals};

use super::journald;
use super::source::net_source;

/// How often `STATUS=` is refreshed for `systemctl status`.
const STATUS_EVERY: Duration = Duration::from_secs(60);

/// Logs go to stderr as text or JSON lines, except under systemd (standard error is the
/// journal's stream) with text logs: then through the journal's native protocol, each event's
/// fields as journal fields (`journald.rs`), or, when the journal socket cannot be reached, as
/// text without timestamps (the journal adds them). The level comes from `[log] level` unless
/// `RUST_LOG` is set, and can change on reload.
pub(super) struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    env_override: bool,
}

impl Logging {
    pub(super) fn init(cfg: &LogConfig) -> Logging {
        let env_override = std::env::var_os("RUST_LOG").is_some();
        let filter = if env_override {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
        } else {
            EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"))
        };
        let (filter, handle) = reload::Layer::new(filter);
        let journal = journald::stderr_is_journal();
        let native = if journal && !cfg.json {
            journald::Journald::connect(&journald::socket_path()).ok()
        } else {
            None
        };
        let fmt: Box<dyn Layer<_> + Send + Sync> = if cfg.json {
            Box::new(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
        } else if let Some(native) = native {
            Box::new(native)
        } else if journal {
            Box::new(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(false)
                    .without_time(),
            )
        } else {
            // Colour only for a person at a terminal, never in files or pipes.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            Box::new(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(ansi),
            )
        };
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init();
        Logging {
            handle,
            env_override,
        }
    }

    fn set_level(&self, level: &str) {
        if self.env_override {
            info!("RUST_LOG is set; log.level from the configuration is not applied");
            return;
        }
        match EnvFilter::try_new(level) {
            Ok(f) => {
                if let Err(e) = self.handle.reload(f) {
                    warn!(error = %e, "cannot change the log level");
                }
            }
            Err(e) => warn!(error = %e, level, "bad log level"),
        }
    }
}

/// Descriptors the daemon needs besides client connections: listeners, the journal, the
/// control socket, DNS queries and policy fetches in flight.
const FD_RESERVE: u64 = 256;

/// Raises the open-files limit and says when `limits.max_connections` cannot be reached, so an
/// operator learns it from the log at start rather than from EMFILE under load.
fn check_open_files(config: &Config) {
    let max = config.limits.max_connections as u64;
    match service::raise_open_files_limit() {
        Ok((before, after)) => {
            if after != before {
                info!(
                    from = before,
                    to = after,
                    "raised the open files limit (RLIMIT_NOFILE)"
                );
            }
            if max + FD_RESERVE > after {
                warn!(
                    limit = after,
                    max_connections = max,
                    "limits.max_connections plus {FD_RESERVE} for the daemon's own sockets exceeds \
                     the open files limit: connections past it are refused (accept backs off on \
                     EMFILE); raise LimitNOFILE / ulimit -n or lower limits.max_connections"
                );
            }
        }
        Err(e) => warn!("cannot raise the open files limit: {e}"),
    }
}

/// Logs a start-up failure (stderr is the journal under systemd) and ends with its status.
fn logged(e: StartError) -> ExitCode {
    error!("{e}");
    ExitCode::from(e.exit_code())
}

pub(super) async fn serve(
    config: Arc<Config>,
    path: PathBuf,
    activated: Option<Activated>,
    logging: Logging,
) -> ExitCode {
    if config.path.is_none() {
        info!(
            config = %path.display(),
            "no configuration file; running on the defaults (a reload reads the file once it exists)"
        );
    }
    let notifier = Notifier::from_env();
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            return logged(StartError::Software(format!(
                "cannot install signal handlers: {e}"
            )));
        }
    };
    let source = match net_source(&config) {
        Ok(s) => s,
        Err(e) => return logged(StartError::Config(e)),
    };
    check_open_files(&config);
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let mut opts = Options::new(source, Arc::new(SystemClock));
    opts.activated = activated;
    opts.reload = Some(reload_tx);
    let mut daemon = match Daemon::start(config.clone(), opts).await {
        Ok(d) => d,
        Err(e) => {
            notifier.status(&format!("failed: {e}"));
            return logged(e);
        }
    };
    // READY=1 only now: the cache is loaded and every listener is bound (sd_notify(3): READY=1
    // tells systemd that start-up is complete).
    notifier.ready(&daemon.status_line());
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = config
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(defaults)".into()),
        "ready"
    );
    // From the main loop, so that a stuck loop stops the pings and systemd notices
    // (sd_watchdog_enabled(3)).
    let mut watchdog = Notifier::watchdog_interval().map(tokio::time::interval);
    let mut status = tokio::time::interval(STATUS_EVERY);
    // The last reload's error, kept in STATUS= until a reload succeeds: the daemon still runs
    // on the older configuration, and `systemctl status` should say so.
    let mut failed: Option<String> = None;
    loop {
        tokio::select! {
            sig = signals.next() => match sig {
                Signal::Reload => {
                    reload(&mut daemon, &notifier, &logging, &path, &mut failed, None).await;
                }
                Signal::Stop => break,
            },
            Some(reply) = reload_rx.recv() => {
                reload(&mut daemon, &notifier, &logging, &path, &mut failed, Some(reply)).await;
            }
            _ = tick(&mut watchdog) => notifier.watchdog(),
            _ = status.tick() => notifier.status(&status_line(&daemon, failed.as_deref())),
        }
    }
    notifier.stopping();
    info!("stopping: finishing lookups in progress");
    tokio::select! {
        _ = daemon.shutdown() => {}
        sig = signals.next() => {
            if sig == Signal::Stop {
                warn!("second stop signal: exiting at once");
            }
        }
    }
    ExitCode::SUCCESS
}

async fn tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// `STATUS=`: the daemon's own line, and the last reload's error while it stands.
fn status_line(daemon: &Daemon, failed: Option<&str>) -> String {
    match failed {
        None => daemon.status_line(),
        Some(e) => format!(
            "{}; reload failed, the previous configuration stays: {e}",
            daemon.status_line()
        ),
    }
}

/// SIGHUP or `ctl reload`: RELOADING=1, re-read the file, apply it, READY=1 (systemd.service(5)
/// Type=notify-reload). A missing, unreadable or invalid file is logged, named in STATUS= and
/// answered to `ctl reload`, and the running configuration stays: a reload never falls back to
/// the defaults. The one exception is a daemon that runs on the defaults because the default
/// file was absent at start: while it is still absent, the defaults stay, and that is no error.
async fn reload(
    daemon: &mut Daemon,
    notifier: &Notifier,
    logging: &Logging,
    path: &Path,
    failed: &mut Option<String>,
    reply: Option<ReloadRequest>,
) {
    notifier.reloading();
    info!(config = %path.display(), "reloading");
    let loaded = if daemon.config().path.is_none() {
        Config::load_or_defaults(path)
    } else {
        Config::load(path)
    };
    let result = match loaded {
        Ok(new) if new.path.is_none() => {
            let note = format!(
                "no configuration file at {}; the defaults stay",
                path.display()
            );
            info!("{note}");
            Ok(note)
        }
        Err(e) => Err(format!("configuration error: {e}")),
        Ok(new) => match net_source(&new) {
            Err(e) => Err(e),
            Ok(source) => {
                let level = new.log.level.clone();
                let r = daemon.reload(new, source).await;
                if r.is_ok() {
                    logging.set_level(&level);
                }
                r
            }
        },
    };
    match &result {
        Ok(_) => *failed = None,
        Err(e) => {
            error!("reload failed; the running configuration stays: {e}");
            *failed = Some(e.clone());
        }
    }
    notifier.ready(&status_line(daemon, failed.as_deref()));
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}
