//! The tables of `smtp_tls_policy_maps` that may be this daemon, and where they connect.
//!
//! Owns the main.cf table syntax of the registered protocols ([`table_type`], [`table_ref`],
//! [`table_text`]), the endpoints they name, and the address and path arithmetic that decides
//! whether such an endpoint reaches a listener: IP matching for `inet:` ([`inet_hit`]) and the
//! chroot view of `unix:` paths ([`seen_path`]).
//!
//! What Postfix does that this relies on:
//! * `smtp_tls_policy_maps` is a list of `type:name` tables separated by commas and/or
//!   whitespace (`postconf(5)`); `proxy:` wraps a table that proxymap(8) then opens,
//!   `unionmap:{…}` and `pipemap:{…}` hold a list of their own.
//! * socketmap and tcp tables connect lazily, at the first lookup, after smtp(8) entered its
//!   chroot (master.cf column 5, `master(5)`). A UNIX socket path is therefore resolved inside
//!   `queue_directory`; a relative path is relative to `queue_directory` chrooted or not, because
//!   Postfix daemons run with it as their working directory.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use crate::proto::Protocol;

/// The Postfix table type that speaks protocol `p` (`socketmap:`, `tcp:`), without the colon.
///
/// Postfix calls a table by the protocol's name, except the tcp_table(5) client, whose type is
/// `tcp`. A protocol added to the registry under its Postfix type name needs no entry here.
pub(super) fn table_type(p: Protocol) -> &'static str {
    match p.name() {
        "tcp_table" => "tcp",
        name => name,
    }
}

/// Whether tables of `p` are written like socketmap (`socketmap_table(5)`):
/// `type:inet:host:port:name` or `type:unix:path:name`; otherwise like tcp (`tcp_table(5)`):
/// `type:host:port`, with no map name and no UNIX sockets. A table names the map exactly when
/// the protocol's requests do.
pub(super) fn socketmap_syntax(p: Protocol) -> bool {
    p.names_map()
}

#[derive(Debug, Clone)]
pub(super) enum Endpoint {
    Inet { host: String, port: String },
    Unix(String),
}

/// A table in `smtp_tls_policy_maps` that speaks a protocol of this daemon.
#[derive(Debug, Clone)]
pub(super) struct Table {
    /// As written in main.cf (with `proxy:` when present).
    pub(super) text: String,
    pub(super) proto: Protocol,
    pub(super) endpoint: Endpoint,
    /// The map name (the text after the last `:`), for protocols whose requests name the map.
    pub(super) name: Option<String>,
    pub(super) via_proxy: bool,
}

/// The tables of a Postfix list that speak a registered protocol, nested lists included.
pub(super) fn collect_tables(list: &str, via_proxy: bool, out: &mut Vec<Table>) {
    for tok in split_list(list) {
        table_ref(tok, tok, via_proxy, out);
    }
}

/// Splits a Postfix list at commas and whitespace outside `{ }`.
pub(super) fn split_list(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start: Option<usize> = None;
    for (i, c) in s.char_indices() {
        match c {
            '{' => {
                depth += 1;
                start.get_or_insert(i);
            }
            '}' => {
                depth = depth.saturating_sub(1);
                start.get_or_insert(i);
            }
            c if depth == 0 && (c == ',' || c.is_whitespace()) => {
                if let Some(st) = start.take() {
                    out.push(&s[st..i]);
                }
            }
            _ => {
                start.get_or_insert(i);
            }
        }
    }
    if let Some(st) = start {
        out.push(&s[st..]);
    }
    out
}

/// Adds the table `tok` (shown as `shown`) to `out` when it speaks a registered protocol, in
/// that protocol's syntax ([`socketmap_syntax`]).
pub(super) fn table_ref(tok: &str, shown: &str, via_proxy: bool, out: &mut Vec<Table>) {
    if let Some(rest) = tok.strip_prefix("proxy:") {
        return table_ref(rest, shown, true, out);
    }
    for composite in ["unionmap:", "pipemap:"] {
        if let Some(rest) = tok.strip_prefix(composite) {
            if let Some(inner) = rest
                .trim()
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
            {
                collect_tables(inner, via_proxy, out);
            }
            return;
        }
    }
    let Some((proto, rest)) = Protocol::all().find_map(|p| {
        let rest = tok.strip_prefix(table_type(p))?.strip_prefix(':')?;
        Some((p, rest))
    }) else {
        return;
    };
    let (endpoint, name) = if socketmap_syntax(proto) {
        let Some((ep, name)) = rest.rsplit_once(':') else {
            return;
        };
        let endpoint = if let Some(hp) = ep.strip_prefix("inet:") {
            match host_port(hp) {
                Some(e) => e,
                None => return,
            }
        } else if let Some(path) = ep.strip_prefix("unix:") {
            Endpoint::Unix(path.to_string())
        } else {
            return;
        };
        (endpoint, Some(name.to_string()))
    } else {
        match host_port(rest) {
            Some(e) => (e, None),
            None => return,
        }
    };
    out.push(Table {
        text: shown.to_string(),
        proto,
        endpoint,
        name,
        via_proxy,
    });
}

/// How main.cf names a table of `proto` at `endpoint` (see [`table_ref`]); None for a UNIX
/// socket when the table type has none.
pub(super) fn table_text(proto: Protocol, endpoint: &Endpoint, name: &str) -> Option<String> {
    let ty = table_type(proto);
    let hp = match endpoint {
        Endpoint::Inet { host, port } if host.contains(':') => format!("[{host}]:{port}"),
        Endpoint::Inet { host, port } => format!("{host}:{port}"),
        Endpoint::Unix(path) if socketmap_syntax(proto) => {
            return Some(format!("{ty}:unix:{path}:{name}"));
        }
        Endpoint::Unix(_) => return None,
    };
    Some(if socketmap_syntax(proto) {
        format!("{ty}:inet:{hp}:{name}")
    } else {
        format!("{ty}:{hp}")
    })
}

/// How main.cf names a table of `proto` that connects to `addr` (see [`table_ref`]).
pub(super) fn inet_table(proto: Protocol, addr: SocketAddr, name: &str) -> String {
    let ty = table_type(proto);
    if socketmap_syntax(proto) {
        format!("{ty}:inet:{addr}:{name}")
    } else {
        format!("{ty}:{addr}")
    }
}

/// `host:port` or `[host]:port`.
fn host_port(s: &str) -> Option<Endpoint> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (host, after.strip_prefix(':')?)
    } else {
        s.rsplit_once(':')?
    };
    if host.is_empty() || port.is_empty() {
        return None;
    }
    Some(Endpoint::Inet {
        host: host.to_string(),
        port: port.to_string(),
    })
}

/// How a table relates to one listener.
pub(super) enum Hit {
    Exact,
    Maybe(String),
}

fn host_ips(host: &str, (v4, v6): (bool, bool)) -> Option<Vec<IpAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(vec![ip]);
    }
    if host.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
        let mut ips = Vec::new();
        if v4 {
            ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        if v6 {
            ips.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
        }
        return Some(ips);
    }
    None
}

/// Whether a connection to `target` arrives at a socket bound to `listener`.
fn ip_reaches(listener: IpAddr, target: IpAddr) -> Option<Hit> {
    let (l, t) = (listener.to_canonical(), target.to_canonical());
    if l == t {
        return Some(Hit::Exact);
    }
    if !l.is_unspecified() {
        return None;
    }
    // A socket on [::] also takes IPv4 on Linux (bindv6only = 0, which Rust does not change).
    if l.is_ipv4() && t.is_ipv6() {
        return None;
    }
    if t.is_loopback() || t.is_unspecified() {
        return Some(Hit::Exact);
    }
    Some(Hit::Maybe(format!(
        "this daemon listens on every address ({l}) and check cannot tell whether {t} is one of this host's"
    )))
}

pub(super) fn inet_hit(
    host: &str,
    port: &str,
    listener: SocketAddr,
    fam: (bool, bool),
) -> Option<Hit> {
    let Ok(port) = port.parse::<u16>() else {
        return Some(Hit::Maybe(format!(
            "port {port:?} is a service name, which check does not look up"
        )));
    };
    if port != listener.port() {
        return None;
    }
    let Some(ips) = host_ips(host, fam) else {
        return Some(Hit::Maybe(format!(
            "{host} is a host name, which check does not resolve"
        )));
    };
    let mut best = None;
    for ip in ips {
        match ip_reaches(listener.ip(), ip) {
            Some(Hit::Exact) => return Some(Hit::Exact),
            Some(m) => best = Some(m),
            None => {}
        }
    }
    best
}

/// Lexical normalization: drops `.`, resolves `..`, merges repeated `/`.
pub(super) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The host path a UNIX socket name opens, for a process chrooted or not.
pub(super) fn seen_path(path: &str, chrooted: bool, queue_dir: &Path) -> PathBuf {
    let p = Path::new(path);
    if p.is_relative() {
        return normalize(&queue_dir.join(p));
    }
    if chrooted {
        let inside = p.strip_prefix("/").unwrap_or(p);
        return normalize(&queue_dir.join(inside));
    }
    normalize(p)
}

/// The path to write in main.cf so that a chrooted smtp(8) opens `host_path`.
pub(super) fn chroot_relative(host_path: &Path, queue_dir: &Path) -> Option<String> {
    let rest = normalize(host_path);
    let rest = rest.strip_prefix(queue_dir).ok()?;
    Some(format!("/{}", rest.display()))
}

/// The address Postfix should connect to for a listener: loopback for a wildcard listener.
pub(super) fn loopback(a: &SocketAddr) -> SocketAddr {
    let ip = match a.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &str) -> Vec<Table> {
        let mut out = Vec::new();
        collect_tables(list, false, &mut out);
        out
    }

    #[test]
    fn table_types_of_the_registered_protocols() {
        let ty = |name| Protocol::from_name(name).map(table_type);
        assert_eq!(ty("socketmap"), Some("socketmap"));
        assert_eq!(ty("tcp_table"), Some("tcp"));
    }

    #[test]
    fn every_registered_protocol_is_recognised_in_main_cf() {
        let ep = Endpoint::Inet {
            host: "::1".into(),
            port: "8461".into(),
        };
        for p in Protocol::all() {
            let text = table_text(p, &ep, "postfix").unwrap_or_default();
            let tables = parse(&format!("hash:/etc/postfix/x, proxy:{text}"));
            assert_eq!(tables.len(), 1, "{p}: {text}");
            assert_eq!(tables[0].proto, p, "{text}");
            assert!(tables[0].via_proxy);
            assert_eq!(tables[0].text, format!("proxy:{text}"));
            let addr: SocketAddr = "[::1]:8461".parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(inet_table(p, addr, "postfix"), text);
        }
    }

    #[test]
    fn socketmap_and_tcp_syntax() {
        let t = parse("socketmap:unix:/run/m/s.sock:postfix-tlsrpt");
        assert!(matches!(&t[0].endpoint, Endpoint::Unix(p) if p == "/run/m/s.sock"));
        assert_eq!(t[0].name.as_deref(), Some("postfix-tlsrpt"));
        let t = parse("tcp:[::1]:8462");
        assert!(
            matches!(&t[0].endpoint, Endpoint::Inet { host, port } if host == "::1" && port == "8462")
        );
        assert_eq!(t[0].name, None);
        // socketmap needs inet: or unix: and a name; tcp needs host:port and has no name.
        for not_a_table in [
            "socketmap:127.0.0.1:8461:postfix",
            "socketmap:inet:127.0.0.1:8461",
            "tcp:8462",
            "tcpx:127.0.0.1:8462",
        ] {
            assert!(parse(not_a_table).is_empty(), "{not_a_table}");
        }
        let socketmap = Protocol::from_name("socketmap");
        let tcp = Protocol::from_name("tcp_table");
        let unix = Endpoint::Unix("/run/m/s.sock".into());
        assert_eq!(
            socketmap
                .and_then(|p| table_text(p, &unix, "postfix"))
                .as_deref(),
            Some("socketmap:unix:/run/m/s.sock:postfix")
        );
        assert_eq!(tcp.and_then(|p| table_text(p, &unix, "postfix")), None);
    }

    #[test]
    fn split_list_keeps_braces_together() {
        assert_eq!(
            split_list(" a:b ,c:{ d e }, f:g"),
            vec!["a:b", "c:{ d e }", "f:g"]
        );
    }
}
