//! The Postfix listener sections: one per registered protocol (`[socketmap]`, `[tcp_table]`),
//! with `listen`, `unix_mode`, and `map` for protocols whose requests name no map.
//!
//! Imports `raw` (the sections as written), `error` and `maps` (the map a section names must
//! exist) from `config/`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::proto::Protocol;

use super::error::{ConfigError, Ctx};
use super::maps::{DEFAULT_MAP, MapProfile};
use super::raw::RawProtocol;

/// Mode of `unix:` sockets when `unix_mode` is absent.
const DEFAULT_UNIX_MODE: &str = "0666";

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

/// One registered protocol's section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolSection {
    pub protocol: Protocol,
    pub listeners: Listeners,
    /// The `[maps.NAME]` profile for protocols whose requests name no map (tcp_table(5) has no
    /// map name on the wire); None for protocols whose requests do.
    pub map: Option<String>,
}

impl ProtocolSection {
    /// The map answering requests that name none: the section's `map`, else [`DEFAULT_MAP`].
    pub fn map_name(&self) -> &str {
        self.map.as_deref().unwrap_or(DEFAULT_MAP)
    }
}

/// Validates every protocol's section: addresses, modes, at least one listener overall, and no
/// address twice. Whether `map` names a table is checked later, by [`check_maps`].
pub(super) fn validate(
    ctx: &Ctx<'_>,
    raw: Vec<(Protocol, RawProtocol)>,
) -> Result<Vec<ProtocolSection>, ConfigError> {
    let mut sections = Vec::with_capacity(raw.len());
    for (protocol, r) in raw {
        let name = protocol.name();
        let listen = match r.listen {
            Some(list) => list,
            None => protocol
                .spec()
                .default_listen
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let listen_key = format!("{name}.listen");
        let listen = listen
            .iter()
            .map(|s| ListenAddr::parse(s).map_err(|m| ctx.err(&listen_key, m)))
            .collect::<Result<Vec<_>, _>>()?;
        let unix_mode = ctx.mode(
            &format!("{name}.unix_mode"),
            r.unix_mode.as_deref().unwrap_or(DEFAULT_UNIX_MODE),
        )?;
        let map = (!protocol.names_map()).then(|| r.map.unwrap_or_else(|| DEFAULT_MAP.to_string()));
        sections.push(ProtocolSection {
            protocol,
            listeners: Listeners { listen, unix_mode },
            map,
        });
    }
    if sections.iter().all(|s| s.listeners.listen.is_empty()) {
        let keys: Vec<String> = sections
            .iter()
            .map(|s| format!("{}.listen", s.protocol.name()))
            .collect();
        return Err(ctx.err(
            keys.first().map_or("listen", String::as_str),
            format!("no listener configured: set {}", keys.join(" or ")),
        ));
    }
    let mut seen = Vec::new();
    for s in &sections {
        for a in &s.listeners.listen {
            // Port 0 asks the kernel for a free port, so several of them never clash.
            let any_port = matches!(a, ListenAddr::Tcp(s) if s.port() == 0);
            if !any_port && seen.contains(&a) {
                return Err(ctx.err(
                    &format!("{}.listen", s.protocol.name()),
                    format!("{a} is configured twice"),
                ));
            }
            seen.push(a);
        }
    }
    Ok(sections)
}

/// Checks that each section's `map` has a `[maps.NAME]` table (once the maps are validated).
pub(super) fn check_maps(
    ctx: &Ctx<'_>,
    sections: &[ProtocolSection],
    maps: &std::collections::BTreeMap<String, MapProfile>,
) -> Result<(), ConfigError> {
    for s in sections {
        if let Some(m) = &s.map
            && !maps.contains_key(m)
        {
            return Err(ctx.err(
                &format!("{}.map", s.protocol.name()),
                format!("no [maps.{m}] table"),
            ));
        }
    }
    Ok(())
}
