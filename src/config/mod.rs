//! Configuration: one TOML file → a validated [`Config`] of typed values.
//!
//! Owns the operator interface (key names, defaults, limits) and nothing else: it reads one file,
//! opens no socket and sets no global. Unknown keys are rejected so that a typo is an error, not a
//! silently ignored setting. Every error names the file and the key.
//!
//! One file per concern: `raw` (the file as written, with defaults), `listen` (one listener
//! section per registered protocol), `net` (`[dns]`, `[https]`), `maps` (`[maps.NAME]`),
//! `runtime` (the daemon's own sections), `fleet` (`[fleet]`), `error`, and `redact` (URL
//! credentials kept out of every message); each section has its own validation.
//! This file assembles them. `config/` may import `answer` (rendering profiles) and `proto` (the
//! protocol registry) and nothing higher.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::Protocol;

mod error;
mod fleet;
mod listen;
mod maps;
mod net;
mod raw;
mod redact;
mod runtime;

pub use error::ConfigError;
pub use fleet::FleetConfig;
pub use listen::{ListenAddr, Listeners, ProtocolSection};
pub use maps::{DEFAULT_MAP, MapProfile, OnLookupError};
pub use net::{DnsConfig, HttpsConfig, Proxy};
pub use redact::redact_userinfo;
pub use runtime::{CacheConfig, ControlConfig, DaemonConfig, Limits, LogConfig, RefreshConfig};

use error::Ctx;
use maps::DEFAULT_PROFILE;

/// Where `serve`, `query` and `check-config` look when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/mta-sts-policyd/config.toml";

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from, or None when the defaults were used because it did not exist.
    pub path: Option<PathBuf>,
    /// One section per registered protocol, in registry order.
    pub protocols: Vec<ProtocolSection>,
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
    /// `[fleet]`: the shared Redis/Valkey cache; None when off.
    pub fleet: Option<FleetConfig>,
}

impl Config {
    /// The profile for a map name; unknown names use `default`.
    pub fn profile(&self, map: &str) -> &MapProfile {
        self.answering_profile(map).1
    }

    /// The map a request on `protocol` is answered with, and its profile: the map the request
    /// names when its protocol carries one, else the one the protocol's section names.
    pub fn profile_for<'a>(
        &'a self,
        protocol: Protocol,
        map: Option<&'a str>,
    ) -> (&'a str, &'a MapProfile) {
        let name = self.map_name(protocol, map);
        (name, self.profile(name))
    }

    /// The map name a request on `protocol` is answered under: the one it names, else its
    /// section's.
    pub fn map_name<'a>(&'a self, protocol: Protocol, map: Option<&'a str>) -> &'a str {
        match map {
            Some(m) => m,
            None => self
                .section(protocol)
                .map_or(DEFAULT_MAP, ProtocolSection::map_name),
        }
    }

    /// The profile for a map name and the name of the table it comes from: `default` for a
    /// name without a `[maps.NAME]` table. One map lookup, for the lookup path.
    pub fn answering_profile<'a>(&'a self, map: &str) -> (&'a str, &'a MapProfile) {
        match self.maps.get_key_value(map) {
            Some((name, profile)) => (name, profile),
            None => (
                DEFAULT_MAP,
                self.maps.get(DEFAULT_MAP).unwrap_or(&DEFAULT_PROFILE),
            ),
        }
    }

    /// The Postfix listeners of every registered protocol, in registry order.
    pub fn listeners(&self) -> impl Iterator<Item = (Protocol, &Listeners)> + '_ {
        self.protocols.iter().map(|s| (s.protocol, &s.listeners))
    }

    /// `protocol`'s section.
    pub fn section(&self, protocol: Protocol) -> Option<&ProtocolSection> {
        self.protocols.iter().find(|s| s.protocol == protocol)
    }

    /// The listen addresses of the protocol registered as `name` (empty for an unknown name).
    pub fn listen_of(&self, name: &str) -> &[ListenAddr] {
        self.protocols
            .iter()
            .find(|s| s.protocol.name() == name)
            .map_or(&[], |s| s.listeners.listen.as_slice())
    }

    /// Upper bound for a cold lookup: the TXT query plus the whole fetch. Each is bounded on its
    /// own, so the sum is what a Postfix client may wait for the first answer for a domain.
    pub fn lookup_deadline(&self) -> Duration {
        self.dns.timeout + self.https.timeout
    }

    /// Reads `path`, a file the operator named (or the one a running daemon was started from):
    /// a file that does not exist is an error like any other read error, never the defaults, so
    /// that a typo in `--config` or a file moved away cannot silently change how mail is sent.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, Some(path)),
            Err(e) => Err(ConfigError {
                file: path.display().to_string(),
                key: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// Reads `path` when `--config` was not given (it is [`DEFAULT_PATH`]): only there does a
    /// missing file mean the defaults (with `path` None), so that `serve` works with no setup.
    pub fn load_or_defaults(path: &Path) -> Result<Config, ConfigError> {
        // A dangling symlink there is a file the operator meant to have: an error, not absence.
        let absent = |p: &Path| matches!(std::fs::symlink_metadata(p), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
        match Config::load(path) {
            Err(_) if absent(path) => Config::parse("", None),
            other => other,
        }
    }

    pub fn parse(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, path, &|name| std::env::var(name).ok())
    }

    /// [`Config::parse`] with `env` for the environment (`proxy = "env"`), so that tests need not
    /// change the process environment.
    fn parse_with_env(
        text: &str,
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<defaults>".to_string());
        // A syntax or type error quotes the offending line or value, which may be a proxy URL
        // with a password.
        let doc = raw::read(text).map_err(|e| ConfigError {
            file: file.clone(),
            key: None,
            message: redact_userinfo(e.to_string().trim_end()),
        })?;
        let ctx = Ctx { file: &file };
        // Section by section, in the order the first problem is reported in.
        let protocols = listen::validate(&ctx, doc.protocols)?;
        let r = doc.rest;
        let dns = net::validate_dns(&ctx, r.dns)?;
        let https = net::validate_https(&ctx, r.https, path, env)?;
        let maps = maps::validate(&ctx, r.maps)?;
        listen::check_maps(&ctx, &protocols, &maps)?;
        Ok(Config {
            path: path.map(Path::to_path_buf),
            protocols,
            dns,
            https,
            maps,
            cache: runtime::validate_cache(&ctx, r.cache)?,
            refresh: runtime::validate_refresh(&ctx, r.refresh)?,
            metrics_listen: runtime::validate_metrics(&ctx, r.metrics)?,
            log: runtime::validate_log(&ctx, r.log)?,
            control: runtime::validate_control(&ctx, r.control)?,
            daemon: runtime::validate_daemon(r.daemon),
            limits: runtime::validate_limits(&ctx, r.limits)?,
            fleet: fleet::validate_fleet(&ctx, r.fleet)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(name: &str) -> Protocol {
        Protocol::from_name(name).unwrap()
    }

    fn section<'a>(c: &'a Config, name: &str) -> &'a ProtocolSection {
        c.section(proto(name)).unwrap()
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("", None).unwrap();
        assert_eq!(
            section(&c, "socketmap").listeners.listen,
            vec![ListenAddr::Tcp("127.0.0.1:8461".parse().unwrap())]
        );
        assert_eq!(section(&c, "socketmap").listeners.unix_mode, 0o666);
        assert_eq!(section(&c, "socketmap").map, None);
        assert!(c.listen_of("tcp_table").is_empty());
        assert_eq!(section(&c, "tcp_table").listeners.unix_mode, 0o666);
        assert_eq!(section(&c, "tcp_table").map_name(), "default");
        assert_eq!(
            c.listeners().map(|(p, _)| p.name()).collect::<Vec<_>>(),
            ["socketmap", "tcp_table"]
        );
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
        assert_eq!(c.cache.dns_failure_ttl, Duration::from_secs(60));
        assert_eq!(c.cache.max_entries, 1_000_000);
        assert!(c.cache.dir.is_absolute());
        assert_eq!(c.refresh.interval, Duration::from_secs(86_400));
        assert_eq!(c.refresh.concurrency, 16);
    }

    #[test]
    fn dns_failure_ttl_is_bounded_by_negative_ttl_and_zero_disables_it() {
        let short = Config::parse("[cache]\nnegative_ttl = \"10s\"\n", None).unwrap();
        assert_eq!(short.cache.dns_failure_ttl, Duration::from_secs(10));
        let off = Config::parse("[cache]\ndns_failure_ttl = \"0s\"\n", None).unwrap();
        assert_eq!(off.cache.dns_failure_ttl, Duration::ZERO);
        let equal = "[cache]\nnegative_ttl = \"5m\"\ndns_failure_ttl = \"5m\"\n";
        let equal = Config::parse(equal, None).unwrap();
        assert_eq!(equal.cache.dns_failure_ttl, Duration::from_secs(300));
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
            (
                "[cache]\ndns_failure_ttl = \"2h\"\n",
                "cache.dns_failure_ttl",
            ),
            (
                "[cache]\nnegative_ttl = \"10s\"\ndns_failure_ttl = \"11s\"\n",
                "cache.dns_failure_ttl",
            ),
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
    fn syntax_and_type_errors_point_into_the_file() {
        let msg = |text: &str| {
            let e = Config::parse(text, Some(Path::new("/x.toml"))).unwrap_err();
            assert_eq!(e.key, None, "{text}: {e}");
            e.to_string()
        };
        let s = msg("[bogus]\nx = 1\n");
        assert!(
            s.starts_with("/x.toml: TOML parse error at line 1, column 2\n"),
            "{s}"
        );
        assert!(
            s.ends_with(
                "unknown field `bogus`, expected one of `socketmap`, `tcp_table`, `dns`, `https`, \
                 `maps`, `cache`, `refresh`, `metrics`, `log`, `control`, `daemon`, `limits`, `fleet`"
            ),
            "{s}"
        );
        // Only protocols whose requests name no map have a `map` key.
        let s = msg("[socketmap]\nmap = \"x\"\n");
        assert!(s.contains("line 2, column 1"), "{s}");
        assert!(
            s.ends_with("unknown field `map`, expected `listen` or `unix_mode`"),
            "{s}"
        );
        let s = msg("[tcp_table]\nmapp = \"x\"\n");
        assert!(
            s.ends_with("unknown field `mapp`, expected one of `listen`, `unix_mode`, `map`"),
            "{s}"
        );
        let s = msg("socketmap = 5\n");
        assert!(s.contains("line 1, column 13"), "{s}");
        assert!(
            s.ends_with("invalid type: integer `5`, expected struct RawSocketmap"),
            "{s}"
        );
        let s = msg("tcp_table = \"x\"\n");
        assert!(s.ends_with("expected struct RawTcpTable"), "{s}");
        let s = msg("[tcp_table]\nlisten = \"inet:127.0.0.1:1\"\n");
        assert!(s.contains("line 2, column 10"), "{s}");
        assert!(s.ends_with("expected a sequence"), "{s}");
        // Sections are read in key order: the first problem in that order is the one reported.
        let s = msg("[socketmap]\nlisten = 1\n[dns]\ntimout = 1\n");
        assert!(s.contains("unknown field `timout`"), "{s}");
        let s = msg("[tcp_table]\nlisten = 1\n[zzz]\n");
        assert!(s.contains("expected a sequence"), "{s}");
    }

    #[test]
    fn an_address_configured_twice_names_the_section_it_repeats_in() {
        let twice = |text: &str| Config::parse(text, None).unwrap_err();
        let e = twice("[socketmap]\nlisten = [\"inet:127.0.0.1:1\", \"inet:127.0.0.1:1\"]\n");
        assert_eq!(e.key.as_deref(), Some("socketmap.listen"));
        assert_eq!(e.message, "inet:127.0.0.1:1 is configured twice");
        let e = twice(
            "[socketmap]\nlisten = [\"unix:/run/x.sock\"]\n[tcp_table]\nlisten = [\"unix:/run/x.sock\"]\n",
        );
        assert_eq!(e.key.as_deref(), Some("tcp_table.listen"));
        // Port 0 asks the kernel for a free port: never a clash.
        Config::parse(
            "[socketmap]\nlisten = [\"inet:127.0.0.1:0\"]\n[tcp_table]\nlisten = [\"inet:127.0.0.1:0\"]\n",
            None,
        )
        .unwrap();
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
        assert_eq!(c.listen_of("socketmap").len(), 2);
        assert_eq!(section(&c, "socketmap").listeners.unix_mode, 0o660);
        assert_eq!(
            c.dns.nameservers,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(c.profile_for(proto("tcp_table"), None).0, "tlsrpt");
        assert!(c.profile_for(proto("tcp_table"), None).1.answer.tlsrpt);
        assert_eq!(
            c.profile_for(proto("socketmap"), Some("strict")).0,
            "strict"
        );
        assert_eq!(
            c.profile_for(proto("socketmap"), Some("postfix")),
            ("postfix", c.profile(DEFAULT_MAP))
        );
        assert!(c.profile("strict").answer.strict_testing);
        assert!(!c.profile("strict").answer.servername);
        assert!(
            !c.profile("postfix").answer.tlsrpt,
            "unknown names use default"
        );
    }

    #[test]
    fn a_named_missing_file_is_an_error_naming_it() {
        let path = Path::new("/nonexistent/mta-sts-policyd.toml");
        let e = Config::load(path).unwrap_err();
        assert_eq!(e.file, "/nonexistent/mta-sts-policyd.toml");
        assert_eq!(e.key, None);
        assert!(e.message.starts_with("cannot read: "), "{e}");
    }

    #[test]
    fn only_an_absent_default_file_means_defaults() {
        let c = Config::load_or_defaults(Path::new("/nonexistent/mta-sts-policyd.toml")).unwrap();
        assert_eq!(c.path, None);
        assert_eq!(c.https.port, 443);
        // Present but unreadable (a directory here) is an error, not the defaults.
        let dir = std::env::temp_dir();
        let e = Config::load_or_defaults(&dir).unwrap_err();
        assert_eq!(e.file, dir.display().to_string());
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

    /// Parses `text` with `HTTPS_PROXY` set to `proxy` in a private environment.
    fn parse_with_https_proxy(text: &str, proxy: &str) -> Result<Config, ConfigError> {
        let env = |name: &str| (name == "HTTPS_PROXY").then(|| proxy.to_string());
        Config::parse_with_env(text, Some(Path::new("/etc/x.toml")), &env)
    }

    #[test]
    fn proxy_errors_never_show_the_password() {
        // Credentials in the URL are refused, and the error says so without repeating them.
        for text in [
            "[https]\nproxy = \"http://user:secret@proxy.example:3128\"\n",
            "[https]\nproxy = \"http://user:secret@proxy.example:notaport\"\n",
            "[https]\nproxy = \"socks5://user:secret@proxy.example:1080\"\n",
            "[https]\nproxy = \"user:secret@proxy.example:3128\"\n",
            "[https]\nproxy = \"http://user:p@secret@proxy.example:3128\"\n",
        ] {
            let e = Config::parse(text, Some(Path::new("/etc/x.toml"))).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("https.proxy"), "{e}");
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("secret"), "{shown}");
            assert!(shown.contains("***@proxy.example"), "{shown}");
        }
        let e = Proxy::parse("http://user:secret@proxy.example:3128").unwrap_err();
        assert!(!e.contains("secret") && e.contains("credentials"), "{e}");
    }

    #[test]
    fn syntax_and_type_errors_quoting_a_proxy_url_hide_the_password() {
        for text in [
            // Unterminated string: the error quotes the line.
            "[https]\nproxy = \"http://user:secret@proxy.example:3128\n",
            // Unquoted value.
            "[https]\nproxy = http://user:secret@proxy.example:3128\n",
            // Wrong type: serde quotes the value.
            "[https]\nno_proxy = \"http://user:secret@proxy.example:3128\"\n",
        ] {
            let e = Config::parse(text, Some(Path::new("/etc/x.toml"))).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("secret"), "{shown}");
        }
    }

    #[test]
    fn proxy_from_the_environment_never_shows_the_password() {
        let text = "[https]\nproxy = \"env\"\n";
        let e = parse_with_https_proxy(text, "http://user:secret@proxy.example:3128").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("https.proxy"));
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("http://***@proxy.example:3128"), "{shown}");
        // Without credentials the environment's proxy is used as it is.
        let c = parse_with_https_proxy(text, "http://proxy.example:3128").unwrap();
        assert_eq!(
            c.https.proxy,
            Some(Proxy {
                host: "proxy.example".into(),
                port: 3128
            })
        );
        // And only with `proxy = "env"`.
        let c = parse_with_https_proxy("", "http://proxy.example:3128").unwrap();
        assert_eq!(c.https.proxy, None);
    }
}
