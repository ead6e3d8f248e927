//! The network sections: `[dns]` (TXT lookups, RFC 8461 §3.1) and `[https]` (policy fetches,
//! RFC 8461 §3.3), with the optional HTTP proxy.
//!
//! Imports `raw`, `error` and `redact` from `config/`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{ConfigError, Ctx, MIN_TIMEOUT};
use super::raw::{RawDns, RawHttps};
use super::redact::redact_userinfo;

/// RFC 8461 §3.3 suggests one minute for the policy fetch; more would keep a Postfix lookup waiting
/// past any sensible deadline (Postfix gives up on a table lookup after 100 s).
const MAX_HTTPS_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_DNS_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Err quotes `s` with any `user:password@` redacted: the message reaches logs and
    /// `check-config` output.
    pub fn parse(s: &str) -> Result<Proxy, String> {
        Proxy::parse_unredacted(s).map_err(|m| redact_userinfo(&m))
    }

    fn parse_unredacted(s: &str) -> Result<Proxy, String> {
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

pub(super) fn validate_dns(ctx: &Ctx<'_>, raw: RawDns) -> Result<DnsConfig, ConfigError> {
    let nameservers = raw
        .nameservers
        .iter()
        .map(|s| parse_nameserver(s).map_err(|m| ctx.err("dns.nameservers", m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DnsConfig {
        nameservers,
        timeout: ctx.duration("dns.timeout", &raw.timeout, MIN_TIMEOUT, MAX_DNS_TIMEOUT)?,
    })
}

/// `path` is the config file: relative `ca_files` are relative to its directory. `env` reads the
/// environment, for `proxy = "env"`.
pub(super) fn validate_https(
    ctx: &Ctx<'_>,
    raw: RawHttps,
    path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<HttpsConfig, ConfigError> {
    let base = path.and_then(Path::parent).unwrap_or(Path::new(""));
    let mut ca_files = Vec::new();
    for f in raw.ca_files {
        // Relative paths are relative to the config file, not to the daemon's working
        // directory, which systemd sets to /.
        let f = if f.is_relative() { base.join(f) } else { f };
        if !f.is_file() {
            return Err(ctx.err(
                "https.ca_files",
                format!("{} does not exist or is not a file", f.display()),
            ));
        }
        ca_files.push(f);
    }
    if raw.port == 0 {
        return Err(ctx.err("https.port", "must be 1..65535".to_string()));
    }
    // The environment's proxy variables apply only when the operator asks for them
    // (`proxy = "env"`): a daemon must not change where it fetches from with its environment.
    let env = |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()));
    let (proxy_text, mut no_proxy) = match raw.proxy.as_str() {
        "" => (None, raw.no_proxy.clone()),
        "env" => {
            let mut np = raw.no_proxy.clone();
            if let Some(v) = env(&["NO_PROXY", "no_proxy"]) {
                np.extend(v.split(',').map(|s| s.trim().to_string()));
            }
            (env(&["HTTPS_PROXY", "https_proxy"]), np)
        }
        other => (Some(other.to_string()), raw.no_proxy.clone()),
    };
    let proxy = match proxy_text {
        None => None,
        Some(p) => Some(Proxy::parse(&p).map_err(|m| ctx.err("https.proxy", m))?),
    };
    no_proxy.retain(|s| !s.is_empty());
    let no_proxy: Vec<String> = no_proxy
        .into_iter()
        .map(|s| s.trim_start_matches('.').to_ascii_lowercase())
        .collect();
    Ok(HttpsConfig {
        timeout: ctx.duration(
            "https.timeout",
            &raw.timeout,
            MIN_TIMEOUT,
            MAX_HTTPS_TIMEOUT,
        )?,
        ca_files,
        port: raw.port,
        proxy,
        no_proxy,
        allow_private_addresses: raw.allow_private_addresses,
    })
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
