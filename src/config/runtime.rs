//! The daemon's own sections: `[cache]`, `[refresh]`, `[metrics]`, `[log]`, `[control]`,
//! `[daemon]` and `[limits]`, with the state and runtime directories they default to.
//!
//! Imports `raw`, `error` and `listen` (the metrics address syntax) from `config/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{ConfigError, Ctx, MIN_TIMEOUT};
use super::listen::ListenAddr;
use super::raw::{RawCache, RawControl, RawDaemon, RawLimits, RawLog, RawMetrics, RawRefresh};

const WEEK: Duration = Duration::from_secs(7 * 86_400);
/// `[cache] dns_failure_ttl` when not set (bounded by `negative_ttl`).
const DEFAULT_DNS_FAILURE_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A tracing filter: "info", "debug", "mta_sts_policyd=debug,info" ... `RUST_LOG` overrides it.
    pub level: String,
    pub json: bool,
}

/// Whom to run as after binding, when started as root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DaemonConfig {
    pub user: Option<String>,
    /// Default: the user's primary group.
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// The operator socket; None when disabled (`socket = ""`).
    pub socket: Option<PathBuf>,
    /// Members of this group may use the control socket besides root and the daemon's user.
    pub group: Option<String>,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// The state directory holding the policy journal.
    pub dir: PathBuf,
    /// How long "no TXT record" and "no valid policy" are remembered.
    pub negative_ttl: Duration,
    /// How long a failed `_mta-sts` TXT lookup (timeout, SERVFAIL, ...) of a domain with no valid
    /// cached policy is remembered: during a resolver outage each domain costs one DNS timeout
    /// per this period instead of one per lookup. Zero: not remembered. At most `negative_ttl`.
    pub dns_failure_ttl: Duration,
    pub max_entries: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshConfig {
    /// How often each cached domain's TXT record is checked (jittered).
    pub interval: Duration,
    /// Discoveries the background refresh runs at once.
    pub concurrency: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// A Postfix connection with no request for this long is closed. tcp_table clients never hang
    /// up on their own (tcp_table(5) BUGS), so this must be long; Postfix reconnects when needed.
    pub idle_timeout: Duration,
    /// From the first byte of a request to its last, and for writing a reply: a client that
    /// trickles bytes or never reads cannot hold a connection slot for ever.
    pub request_timeout: Duration,
}

pub(super) fn validate_cache(ctx: &Ctx<'_>, raw: RawCache) -> Result<CacheConfig, ConfigError> {
    let dir = match raw.dir {
        Some(d) if d.is_relative() => {
            return Err(ctx.err(
                "cache.dir",
                format!("{}: must be an absolute path", d.display()),
            ));
        }
        Some(d) => d,
        None => default_state_dir(),
    };
    let negative_ttl = ctx.duration(
        "cache.negative_ttl",
        &raw.negative_ttl,
        Duration::from_secs(1),
        WEEK,
    )?;
    let dns_failure_ttl = match &raw.dns_failure_ttl {
        None => DEFAULT_DNS_FAILURE_TTL.min(negative_ttl),
        Some(s) => {
            let d = ctx.duration("cache.dns_failure_ttl", s, Duration::ZERO, WEEK)?;
            // A failure is weaker evidence than an answer: never remembered longer.
            if d > negative_ttl {
                return Err(ctx.err(
                    "cache.dns_failure_ttl",
                    format!("{s:?} is longer than cache.negative_ttl"),
                ));
            }
            d
        }
    };
    let cache = CacheConfig {
        dir,
        negative_ttl,
        dns_failure_ttl,
        max_entries: raw.max_entries,
    };
    if cache.max_entries < 16 || cache.max_entries > 100_000_000 {
        return Err(ctx.err("cache.max_entries", "must be 16..100000000".to_string()));
    }
    Ok(cache)
}

pub(super) fn validate_refresh(
    ctx: &Ctx<'_>,
    raw: RawRefresh,
) -> Result<RefreshConfig, ConfigError> {
    let refresh = RefreshConfig {
        interval: ctx.duration(
            "refresh.interval",
            &raw.interval,
            Duration::from_secs(60),
            WEEK,
        )?,
        concurrency: raw.concurrency,
    };
    if refresh.concurrency == 0 || refresh.concurrency > 1024 {
        return Err(ctx.err("refresh.concurrency", "must be 1..1024".to_string()));
    }
    Ok(refresh)
}

/// The Prometheus `/metrics` listener: TCP only, None when off.
pub(super) fn validate_metrics(
    ctx: &Ctx<'_>,
    raw: RawMetrics,
) -> Result<Option<SocketAddr>, ConfigError> {
    match raw.listen.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => match ListenAddr::parse(s) {
            Ok(ListenAddr::Tcp(a)) => Ok(Some(a)),
            Ok(ListenAddr::Unix(_)) => Err(ctx.err(
                "metrics.listen",
                format!("{s:?}: the metrics listener is TCP only (inet:IP:PORT)"),
            )),
            Err(m) => Err(ctx.err("metrics.listen", m)),
        },
    }
}

pub(super) fn validate_log(ctx: &Ctx<'_>, raw: RawLog) -> Result<LogConfig, ConfigError> {
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.level) {
        return Err(ctx.err(
            "log.level",
            format!("{:?}: not a log filter: {e}", raw.level),
        ));
    }
    let json = match raw.format.as_str() {
        "text" => false,
        "json" => true,
        other => {
            return Err(ctx.err(
                "log.format",
                format!("{other:?}: expected \"text\" or \"json\""),
            ));
        }
    };
    Ok(LogConfig {
        level: raw.level,
        json,
    })
}

pub(super) fn validate_control(
    ctx: &Ctx<'_>,
    raw: RawControl,
) -> Result<ControlConfig, ConfigError> {
    Ok(ControlConfig {
        socket: match raw.socket.as_deref() {
            Some("") => None,
            Some(p) if !p.starts_with('/') => {
                return Err(ctx.err(
                    "control.socket",
                    format!("{p:?}: must be an absolute path, or \"\" to disable"),
                ));
            }
            Some(p) => Some(PathBuf::from(p)),
            None => Some(default_runtime_dir().join("control.sock")),
        },
        group: Some(raw.group).filter(|g| !g.is_empty()),
        mode: ctx.mode("control.mode", &raw.mode)?,
    })
}

pub(super) fn validate_daemon(raw: RawDaemon) -> DaemonConfig {
    DaemonConfig {
        user: Some(raw.user).filter(|u| !u.is_empty()),
        group: Some(raw.group).filter(|g| !g.is_empty()),
    }
}

pub(super) fn validate_limits(ctx: &Ctx<'_>, raw: RawLimits) -> Result<Limits, ConfigError> {
    if raw.max_connections == 0 || raw.max_connections > 1_000_000 {
        return Err(ctx.err("limits.max_connections", "must be 1..1000000".to_string()));
    }
    Ok(Limits {
        max_connections: raw.max_connections,
        idle_timeout: ctx.duration(
            "limits.idle_timeout",
            &raw.idle_timeout,
            Duration::from_secs(1),
            WEEK,
        )?,
        request_timeout: ctx.duration(
            "limits.request_timeout",
            &raw.request_timeout,
            MIN_TIMEOUT,
            Duration::from_secs(100),
        )?,
    })
}

/// `$STATE_DIRECTORY` when systemd sets it (StateDirectory=); for root the FHS location; for
/// anyone else their XDG state directory, so `serve` works for a normal user with no config.
fn default_state_dir() -> PathBuf {
    if let Some(dirs) = std::env::var_os("STATE_DIRECTORY") {
        // systemd joins several StateDirectory= entries with ':'; ours is the first.
        if let Some(first) = dirs
            .to_string_lossy()
            .split(':')
            .next()
            .filter(|s| !s.is_empty())
        {
            return PathBuf::from(first);
        }
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/mta-sts-policyd");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("mta-sts-policyd");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/state/mta-sts-policyd"),
        None => PathBuf::from("/var/lib/mta-sts-policyd"),
    }
}

/// `$RUNTIME_DIRECTORY` when systemd sets it (RuntimeDirectory=); `/run/mta-sts-policyd` for
/// root; else `$XDG_RUNTIME_DIR/mta-sts-policyd`; else the state directory's default.
fn default_runtime_dir() -> PathBuf {
    if let Some(dirs) = std::env::var_os("RUNTIME_DIRECTORY")
        && let Some(first) = dirs
            .to_string_lossy()
            .split(':')
            .next()
            .filter(|s| !s.is_empty())
    {
        return PathBuf::from(first);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/mta-sts-policyd");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
        Some(x) => PathBuf::from(x).join("mta-sts-policyd"),
        None => default_state_dir(),
    }
}
