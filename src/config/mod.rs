//! Configuration: one TOML file → a validated [`Config`] of typed values.
//!
//! Owns the operator interface (key names, defaults, limits) and nothing else: it reads one file,
//! opens no socket and sets no global. Unknown keys are rejected so that a typo is an error, not a
//! silently ignored setting. Every error names the file and the key.

use crate::proto::Protocol;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::answer::Profile;

/// A map's profile: how answers are rendered, and what a failed lookup answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapProfile {
    pub answer: Profile,
    pub on_lookup_error: OnLookupError,
}

/// What to answer when DNS or HTTPS failed and nothing valid is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLookupError {
    /// RFC 8461 §3.3: deliver as if the domain had no policy (Postfix's own TLS level applies).
    NotFound,
    /// Defer the mail instead (fail closed); Postfix retries later.
    Temp,
}

/// Where `serve`, `query` and `check-config` look when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/mta-sts-policyd/config.toml";

/// The map profile used for socketmap names without a table of their own.
pub const DEFAULT_MAP: &str = "default";

/// RFC 8461 §3.3 suggests one minute for the policy fetch; more would keep a Postfix lookup waiting
/// past any sensible deadline (Postfix gives up after 100 s, spec C8).
const MAX_HTTPS_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_DNS_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_TIMEOUT: Duration = Duration::from_millis(100);

/// A listener address as written in the config: `inet:HOST:PORT` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "inet:{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{s:?}: a unix socket path must be absolute"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let rest = s
            .strip_prefix("inet:")
            .ok_or_else(|| format!("{s:?}: expected \"inet:HOST:PORT\" or \"unix:/path\""))?;
        // Accept both "127.0.0.1:8461" and "[::1]:8461"; host names are refused on purpose: the
        // listener must not depend on DNS at start-up.
        rest.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("{s:?}: expected inet:IP:PORT with a literal IP address"))
    }
}

/// One Postfix protocol's listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listeners {
    pub listen: Vec<ListenAddr>,
    /// Mode of `unix:` sockets; Postfix's smtp(8) runs as another user, so the default is 0666.
    pub unix_mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Empty: the system's resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsConfig {
    /// Whole fetch: resolving the policy host, connect, TLS, headers and body.
    pub timeout: Duration,
    pub ca_files: Vec<PathBuf>,
    /// RFC 8461 §3.2 fetches from port 443; another port exists for test worlds and labs only.
    pub port: u16,
    /// HTTP proxy for policy fetches (CONNECT tunnel; TLS stays end to end with the policy host).
    pub proxy: Option<Proxy>,
    /// Policy domains fetched directly even when a proxy is set: a name equal to an entry or
    /// ending in `.entry` (a leading dot in an entry is ignored); `*` matches everything.
    pub no_proxy: Vec<String>,
    /// Fetch from policy hosts on loopback, private or link-local addresses (off by default: a
    /// hostile domain could point its policy host at internal services).
    pub allow_private_addresses: bool,
}

/// An HTTP proxy: `http://host:port`, no credentials in the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
}

impl Proxy {
    pub fn parse(s: &str) -> Result<Proxy, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("{s:?}: expected http://HOST:PORT"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') || rest.contains('/') {
            return Err(format!(
                "{s:?}: expected http://HOST:PORT without credentials or path"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{s:?}: bad port {p:?}"))?,
            ),
            _ => (rest, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(format!("{s:?}: expected http://HOST:PORT"));
        }
        Ok(Proxy {
            host: host.to_string(),
            port,
        })
    }
}

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

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from, or None when the defaults were used because it did not exist.
    pub path: Option<PathBuf>,
    pub socketmap: Listeners,
    pub tcp_table: Listeners,
    /// The map profile used for tcp_table answers (tcp_table has no map name on the wire).
    pub tcp_table_map: String,
    pub dns: DnsConfig,
    pub https: HttpsConfig,
    /// Always contains [`DEFAULT_MAP`].
    pub maps: BTreeMap<String, MapProfile>,
    pub cache: CacheConfig,
    pub refresh: RefreshConfig,
    /// Prometheus `/metrics` listener, off when None.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub log: LogConfig,
    pub control: ControlConfig,
    pub daemon: DaemonConfig,
    pub limits: Limits,
}

impl Config {
    /// The profile for a socketmap map name; unknown names use `default`.
    pub fn profile(&self, map: &str) -> &MapProfile {
        self.maps
            .get(map)
            .or_else(|| self.maps.get(DEFAULT_MAP))
            .unwrap_or(&DEFAULT_PROFILE)
    }

    /// The Postfix listeners of every registered protocol.
    pub fn listeners(&self) -> [(Protocol, &Listeners); 2] {
        let named =
            |n: &str| Protocol::from_name(n).unwrap_or_else(|| unreachable!("{n} is registered"));
        [
            (named("socketmap"), &self.socketmap),
            (named("tcp_table"), &self.tcp_table),
        ]
    }

    pub fn tcp_table_profile(&self) -> &MapProfile {
        self.profile(&self.tcp_table_map)
    }

    /// Upper bound for a cold lookup: the TXT query plus the whole fetch. Each is bounded on its
    /// own, so the sum is what a Postfix client may wait for the first answer for a domain.
    pub fn lookup_deadline(&self) -> Duration {
        self.dns.timeout + self.https.timeout
    }

    /// Reads `path`. A file that does not exist gives the defaults (so `serve` works with no setup);
    /// any other read error, a syntax error or an invalid value is a [`ConfigError`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut c = Config::parse("", None)?;
                c.path = None;
                Ok(c)
            }
            Err(e) => Err(ConfigError {
                file: path.display().to_string(),
                key: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }

    pub fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let file = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<defaults>".to_string());
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file.clone(),
            key: None,
            message: e.to_string().trim_end().to_string(),
        })?;
        raw.validate(&file, path)
    }
}

static DEFAULT_PROFILE: MapProfile = MapProfile {
    answer: Profile {
        strict_testing: false,
        servername: true,
        tlsrpt: false,
    },
    on_lookup_error: OnLookupError::NotFound,
};

/// A configuration problem, naming the file and (when known) the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}: {}: {}", self.file, k, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

// ---- the file as written -------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    socketmap: RawSocketmap,
    tcp_table: RawTcpTable,
    dns: RawDns,
    https: RawHttps,
    maps: BTreeMap<String, RawMap>,
    cache: RawCache,
    refresh: RawRefresh,
    metrics: RawMetrics,
    log: RawLog,
    control: RawControl,
    daemon: RawDaemon,
    limits: RawLimits,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDaemon {
    user: String,
    group: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
    format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".to_string(),
            format: "text".to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawControl {
    socket: Option<String>,
    group: String,
    mode: String,
}

impl Default for RawControl {
    fn default() -> Self {
        RawControl {
            socket: None,
            group: String::new(),
            mode: "0660".to_string(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCache {
    dir: Option<PathBuf>,
    negative_ttl: String,
    max_entries: usize,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            dir: None,
            negative_ttl: "1h".to_string(),
            max_entries: 1_000_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRefresh {
    interval: String,
    concurrency: usize,
}

impl Default for RawRefresh {
    fn default() -> Self {
        RawRefresh {
            interval: "24h".to_string(),
            concurrency: 16,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSocketmap {
    listen: Vec<String>,
    unix_mode: String,
}

impl Default for RawSocketmap {
    fn default() -> Self {
        RawSocketmap {
            listen: vec!["inet:127.0.0.1:8461".to_string()],
            unix_mode: "0666".to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTcpTable {
    listen: Vec<String>,
    unix_mode: String,
    map: String,
}

impl Default for RawTcpTable {
    fn default() -> Self {
        RawTcpTable {
            listen: Vec::new(),
            unix_mode: "0666".to_string(),
            map: DEFAULT_MAP.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDns {
    nameservers: Vec<String>,
    timeout: String,
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            nameservers: Vec::new(),
            timeout: "5s".to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttps {
    timeout: String,
    ca_files: Vec<PathBuf>,
    port: u16,
    proxy: String,
    no_proxy: Vec<String>,
    allow_private_addresses: bool,
}

impl Default for RawHttps {
    fn default() -> Self {
        RawHttps {
            timeout: "10s".to_string(),
            ca_files: Vec::new(),
            port: 443,
            proxy: String::new(),
            no_proxy: Vec::new(),
            allow_private_addresses: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMap {
    strict_testing: bool,
    servername: bool,
    tlsrpt: bool,
    on_lookup_error: String,
}

impl Default for RawMap {
    fn default() -> Self {
        RawMap {
            strict_testing: DEFAULT_PROFILE.answer.strict_testing,
            servername: DEFAULT_PROFILE.answer.servername,
            tlsrpt: DEFAULT_PROFILE.answer.tlsrpt,
            on_lookup_error: "notfound".to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_connections: usize,
    idle_timeout: String,
    request_timeout: String,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            // Postfix runs up to default_process_limit (100) smtp(8) processes per transport, each
            // with its own connection; a busy relay with several transports stays well below this.
            max_connections: 4096,
            idle_timeout: "1h".to_string(),
            request_timeout: "10s".to_string(),
        }
    }
}

impl RawConfig {
    fn validate(self, file: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: file.to_string(),
            key: Some(key.to_string()),
            message,
        };
        let listeners = |key: &str, list: &[String]| -> Result<Vec<ListenAddr>, ConfigError> {
            list.iter()
                .map(|s| ListenAddr::parse(s).map_err(|m| err(key, m)))
                .collect()
        };
        let mode = |key: &str, s: &str| -> Result<u32, ConfigError> {
            u32::from_str_radix(s.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    err(
                        key,
                        format!("{s:?} is not an octal file mode such as \"0660\""),
                    )
                })
        };
        let duration = |key: &str, s: &str, min: Duration, max: Duration| {
            let d = humantime::parse_duration(s)
                .map_err(|e| err(key, format!("{s:?} is not a duration such as \"5s\": {e}")))?;
            if d < min || d > max {
                return Err(err(
                    key,
                    format!(
                        "{s:?} is out of range ({} to {})",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                ));
            }
            Ok(d)
        };

        let socketmap = Listeners {
            listen: listeners("socketmap.listen", &self.socketmap.listen)?,
            unix_mode: mode("socketmap.unix_mode", &self.socketmap.unix_mode)?,
        };
        let tcp_table = Listeners {
            listen: listeners("tcp_table.listen", &self.tcp_table.listen)?,
            unix_mode: mode("tcp_table.unix_mode", &self.tcp_table.unix_mode)?,
        };
        if socketmap.listen.is_empty() && tcp_table.listen.is_empty() {
            return Err(err(
                "socketmap.listen",
                "no listener configured: set socketmap.listen or tcp_table.listen".to_string(),
            ));
        }
        let mut seen = Vec::new();
        for a in socketmap.listen.iter().chain(&tcp_table.listen) {
            // Port 0 asks the kernel for a free port, so several of them never clash.
            let any_port = matches!(a, ListenAddr::Tcp(s) if s.port() == 0);
            if !any_port && seen.contains(&a) {
                return Err(err("tcp_table.listen", format!("{a} is configured twice")));
            }
            seen.push(a);
        }

        let nameservers = self
            .dns
            .nameservers
            .iter()
            .map(|s| parse_nameserver(s).map_err(|m| err("dns.nameservers", m)))
            .collect::<Result<Vec<_>, _>>()?;
        let dns = DnsConfig {
            nameservers,
            timeout: duration(
                "dns.timeout",
                &self.dns.timeout,
                MIN_TIMEOUT,
                MAX_DNS_TIMEOUT,
            )?,
        };

        let base = path.and_then(Path::parent).unwrap_or(Path::new(""));
        let mut ca_files = Vec::new();
        for f in self.https.ca_files {
            // Relative paths are relative to the config file, not to the daemon's working
            // directory, which systemd sets to /.
            let f = if f.is_relative() { base.join(f) } else { f };
            if !f.is_file() {
                return Err(err(
                    "https.ca_files",
                    format!("{} does not exist or is not a file", f.display()),
                ));
            }
            ca_files.push(f);
        }
        if self.https.port == 0 {
            return Err(err("https.port", "must be 1..65535".to_string()));
        }
        // A3.10: the environment's proxy variables apply only when the operator asks for them.
        let env = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        };
        let (proxy_text, mut no_proxy) = match self.https.proxy.as_str() {
            "" => (None, self.https.no_proxy.clone()),
            "env" => {
                let mut np = self.https.no_proxy.clone();
                if let Some(v) = env(&["NO_PROXY", "no_proxy"]) {
                    np.extend(v.split(',').map(|s| s.trim().to_string()));
                }
                (env(&["HTTPS_PROXY", "https_proxy"]), np)
            }
            other => (Some(other.to_string()), self.https.no_proxy.clone()),
        };
        let proxy = match proxy_text {
            None => None,
            Some(p) => Some(Proxy::parse(&p).map_err(|m| err("https.proxy", m))?),
        };
        no_proxy.retain(|s| !s.is_empty());
        let no_proxy: Vec<String> = no_proxy
            .into_iter()
            .map(|s| s.trim_start_matches('.').to_ascii_lowercase())
            .collect();
        let https = HttpsConfig {
            timeout: duration(
                "https.timeout",
                &self.https.timeout,
                MIN_TIMEOUT,
                MAX_HTTPS_TIMEOUT,
            )?,
            ca_files,
            port: self.https.port,
            proxy,
            no_proxy,
            allow_private_addresses: self.https.allow_private_addresses,
        };

        let mut maps: BTreeMap<String, MapProfile> = BTreeMap::new();
        for (name, m) in self.maps {
            let on_lookup_error = match m.on_lookup_error.as_str() {
                "notfound" => OnLookupError::NotFound,
                "temp" => OnLookupError::Temp,
                other => {
                    return Err(err(
                        &format!("maps.{name}.on_lookup_error"),
                        format!("{other:?}: expected \"notfound\" or \"temp\""),
                    ));
                }
            };
            let profile = MapProfile {
                answer: Profile {
                    strict_testing: m.strict_testing,
                    servername: m.servername,
                    tlsrpt: m.tlsrpt,
                },
                on_lookup_error,
            };
            maps.insert(name, profile);
        }
        for name in maps.keys() {
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b == b':') {
                return Err(err(
                    &format!("maps.{name}"),
                    "a map name cannot be empty or contain spaces or ':' (Postfix takes the text after the last ':' as the name)".to_string(),
                ));
            }
        }
        maps.entry(DEFAULT_MAP.to_string())
            .or_insert_with(|| DEFAULT_PROFILE.clone());
        if !maps.contains_key(&self.tcp_table.map) {
            return Err(err(
                "tcp_table.map",
                format!("no [maps.{}] table", self.tcp_table.map),
            ));
        }

        let cache = CacheConfig {
            dir: match self.cache.dir {
                Some(d) if d.is_relative() => {
                    return Err(err(
                        "cache.dir",
                        format!("{}: must be an absolute path", d.display()),
                    ));
                }
                Some(d) => d,
                None => default_state_dir(),
            },
            negative_ttl: duration(
                "cache.negative_ttl",
                &self.cache.negative_ttl,
                Duration::from_secs(1),
                Duration::from_secs(7 * 86_400),
            )?,
            max_entries: self.cache.max_entries,
        };
        if cache.max_entries < 16 || cache.max_entries > 100_000_000 {
            return Err(err(
                "cache.max_entries",
                "must be 16..100000000".to_string(),
            ));
        }
        let refresh = RefreshConfig {
            interval: duration(
                "refresh.interval",
                &self.refresh.interval,
                Duration::from_secs(60),
                Duration::from_secs(7 * 86_400),
            )?,
            concurrency: self.refresh.concurrency,
        };
        if refresh.concurrency == 0 || refresh.concurrency > 1024 {
            return Err(err("refresh.concurrency", "must be 1..1024".to_string()));
        }

        let metrics_listen = match self.metrics.listen.as_deref() {
            None | Some("") => None,
            Some(s) => match ListenAddr::parse(s) {
                Ok(ListenAddr::Tcp(a)) => Some(a),
                Ok(ListenAddr::Unix(_)) => {
                    return Err(err(
                        "metrics.listen",
                        format!("{s:?}: the metrics listener is TCP only (inet:IP:PORT)"),
                    ));
                }
                Err(m) => return Err(err("metrics.listen", m)),
            },
        };

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(err(
                "log.level",
                format!("{:?}: not a log filter: {e}", self.log.level),
            ));
        }
        let log = LogConfig {
            level: self.log.level,
            json: match self.log.format.as_str() {
                "text" => false,
                "json" => true,
                other => {
                    return Err(err(
                        "log.format",
                        format!("{other:?}: expected \"text\" or \"json\""),
                    ));
                }
            },
        };
        let control = ControlConfig {
            socket: match self.control.socket.as_deref() {
                Some("") => None,
                Some(p) if !p.starts_with('/') => {
                    return Err(err(
                        "control.socket",
                        format!("{p:?}: must be an absolute path, or \"\" to disable"),
                    ));
                }
                Some(p) => Some(PathBuf::from(p)),
                None => Some(default_runtime_dir().join("control.sock")),
            },
            group: Some(self.control.group).filter(|g| !g.is_empty()),
            mode: mode("control.mode", &self.control.mode)?,
        };

        if self.limits.max_connections == 0 || self.limits.max_connections > 1_000_000 {
            return Err(err(
                "limits.max_connections",
                "must be 1..1000000".to_string(),
            ));
        }
        let limits = Limits {
            max_connections: self.limits.max_connections,
            idle_timeout: duration(
                "limits.idle_timeout",
                &self.limits.idle_timeout,
                Duration::from_secs(1),
                Duration::from_secs(7 * 86_400),
            )?,
            request_timeout: duration(
                "limits.request_timeout",
                &self.limits.request_timeout,
                MIN_TIMEOUT,
                Duration::from_secs(100),
            )?,
        };

        Ok(Config {
            path: path.map(Path::to_path_buf),
            socketmap,
            tcp_table,
            tcp_table_map: self.tcp_table.map,
            dns,
            https,
            maps,
            cache,
            refresh,
            metrics_listen,
            log,
            control,
            daemon: DaemonConfig {
                user: Some(self.daemon.user).filter(|u| !u.is_empty()),
                group: Some(self.daemon.group).filter(|g| !g.is_empty()),
            },
            limits,
        })
    }
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

fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "{s:?}: expected an IP address with an optional port, e.g. \"127.0.0.1:53\" or \"[::1]:53\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("", None).unwrap();
        assert_eq!(
            c.socketmap.listen,
            vec![ListenAddr::Tcp("127.0.0.1:8461".parse().unwrap())]
        );
        assert_eq!(c.socketmap.unix_mode, 0o666);
        assert!(c.tcp_table.listen.is_empty());
        assert_eq!(c.tcp_table_map, "default");
        assert_eq!(c.dns.timeout, Duration::from_secs(5));
        assert_eq!(c.https.timeout, Duration::from_secs(10));
        assert_eq!(c.https.port, 443);
        assert_eq!(c.lookup_deadline(), Duration::from_secs(15));
        assert_eq!(c.profile("anything"), &DEFAULT_PROFILE);
        assert!(c.profile("postfix").answer.servername);
        assert_eq!(
            c.profile("postfix").on_lookup_error,
            OnLookupError::NotFound
        );
        assert_eq!(c.cache.negative_ttl, Duration::from_secs(3600));
        assert_eq!(c.cache.max_entries, 1_000_000);
        assert!(c.cache.dir.is_absolute());
        assert_eq!(c.refresh.interval, Duration::from_secs(86_400));
        assert_eq!(c.refresh.concurrency, 16);
    }

    #[test]
    fn example_config_is_valid_and_matches_defaults() {
        let text = include_str!("../../config.example.toml");
        let c = Config::parse(text, None).unwrap();
        let d = Config::parse("", None).unwrap();
        assert_eq!(c, d, "config.example.toml must document the defaults");
    }

    #[test]
    fn unknown_key_names_the_key() {
        let e = Config::parse("[dns]\ntimout = \"5s\"\n", Some(Path::new("/x.toml"))).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("/x.toml: "), "{s}");
        assert!(s.contains("timout"), "{s}");
    }

    #[test]
    fn bad_values_name_file_and_key() {
        let cases = [
            ("[dns]\ntimeout = \"five\"\n", "dns.timeout"),
            ("[https]\ntimeout = \"2m\"\n", "https.timeout"),
            (
                "[socketmap]\nlisten = [\"127.0.0.1:1\"]\n",
                "socketmap.listen",
            ),
            (
                "[socketmap]\nlisten = [\"unix:rel.sock\"]\n",
                "socketmap.listen",
            ),
            ("[socketmap]\nunix_mode = \"999\"\n", "socketmap.unix_mode"),
            ("[dns]\nnameservers = [\"ns.example\"]\n", "dns.nameservers"),
            ("[tcp_table]\nmap = \"nope\"\n", "tcp_table.map"),
            (
                "[https]\nca_files = [\"/does/not/exist.pem\"]\n",
                "https.ca_files",
            ),
            ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
            ("[cache]\ndir = \"relative\"\n", "cache.dir"),
            ("[cache]\nnegative_ttl = \"0s\"\n", "cache.negative_ttl"),
            ("[refresh]\nconcurrency = 0\n", "refresh.concurrency"),
            (
                "[metrics]\nlisten = \"unix:/run/m.sock\"\n",
                "metrics.listen",
            ),
            ("[metrics]\nlisten = \"9461\"\n", "metrics.listen"),
            ("[https]\nproxy = \"socks5://x:1\"\n", "https.proxy"),
            ("[https]\nproxy = \"http://u:p@x:1\"\n", "https.proxy"),
            ("[log]\nformat = \"xml\"\n", "log.format"),
            ("[log]\nlevel = \"=,=\"\n", "log.level"),
            ("[control]\nsocket = \"rel.sock\"\n", "control.socket"),
            ("[control]\nmode = \"x\"\n", "control.mode"),
            (
                "[maps.x]\non_lookup_error = \"defer\"\n",
                "maps.x.on_lookup_error",
            ),
            (
                "[socketmap]\nlisten = []\n[tcp_table]\nlisten = []\n",
                "socketmap.listen",
            ),
        ];
        for (text, key) in cases {
            let e = Config::parse(text, Some(Path::new("/etc/x.toml"))).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
            assert_eq!(e.file, "/etc/x.toml");
        }
    }

    #[test]
    fn maps_and_listeners_parse() {
        let c = Config::parse(
            r#"
[socketmap]
listen = ["inet:[::1]:8461", "unix:/run/x/socketmap.sock"]
unix_mode = "0660"
[tcp_table]
listen = ["inet:127.0.0.1:8462"]
map = "tlsrpt"
[dns]
nameservers = ["127.0.0.1:5353", "::1"]
[maps.tlsrpt]
tlsrpt = true
[maps.strict]
strict_testing = true
servername = false
"#,
            None,
        )
        .unwrap();
        assert_eq!(c.socketmap.listen.len(), 2);
        assert_eq!(c.socketmap.unix_mode, 0o660);
        assert_eq!(
            c.dns.nameservers,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert!(c.tcp_table_profile().answer.tlsrpt);
        assert!(c.profile("strict").answer.strict_testing);
        assert!(!c.profile("strict").answer.servername);
        assert!(
            !c.profile("postfix").answer.tlsrpt,
            "unknown names use default"
        );
    }

    #[test]
    fn missing_file_means_defaults() {
        let c = Config::load(Path::new("/nonexistent/mta-sts-policyd.toml")).unwrap();
        assert_eq!(c.path, None);
        assert_eq!(c.https.port, 443);
    }

    #[test]
    fn proxy_urls() {
        assert_eq!(
            Proxy::parse("http://proxy.example:3128").unwrap(),
            Proxy {
                host: "proxy.example".into(),
                port: 3128
            }
        );
        assert_eq!(
            Proxy::parse("http://[::1]:8080/").unwrap(),
            Proxy {
                host: "::1".into(),
                port: 8080
            }
        );
        assert_eq!(Proxy::parse("http://proxy").unwrap().port, 80);
        assert!(Proxy::parse("https://proxy:1").is_err());
        let c = Config::parse(
            "[https]\nproxy = \"http://127.0.0.1:3128\"\nno_proxy = [\".internal.example\", \"\"]\n",
            None,
        )
        .unwrap();
        assert_eq!(c.https.proxy.unwrap().port, 3128);
        assert_eq!(c.https.no_proxy, vec!["internal.example".to_string()]);
    }
}
