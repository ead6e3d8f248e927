//! `mta-sts-policyd check`: reads Postfix's configuration through `postconf` and reports what
//! would defer mail or leave the daemon unused, each problem with its fix (spec C12, D8, E7, E15,
//! A7, B5).
//!
//! [`Postfix::read`] is the only part that runs anything. [`Postfix::parse`] and [`analyze`] are
//! pure, so every check is tested on `postconf` output kept in `tests/fixtures/postconf/`.
//!
//! What Postfix does that the checks rely on:
//! * `smtp_tls_policy_maps` is a list of `type:name` tables separated by commas and/or
//!   whitespace; `proxy:` wraps a table that proxymap(8) then opens, `unionmap:{…}` and
//!   `pipemap:{…}` hold a list of their own.
//! * socketmap and tcp tables connect lazily, at the first lookup, after smtp(8) entered its
//!   chroot (master.cf column 5). A UNIX socket path is therefore resolved inside
//!   `queue_directory`; a relative path is relative to `queue_directory` chrooted or not, because
//!   Postfix daemons run with it as their working directory.
//! * The chroot column `-` means `n` since Postfix 3.0 (`y` before); Debian's master.cf says `y`.
//! * A policy answer Postfix cannot parse defers the mail (spec E12): `servername=` needs 3.4
//!   (E4), the TLSRPT attributes need 3.10 (B5), exact MX matching needs 3.10.5 (E7).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use crate::config::{Config, DEFAULT_MAP, DEFAULT_PATH, ListenAddr};
use crate::proto::Protocol;

/// What `postconf` said, as plain data, so the analysis is pure and testable from fixtures.
#[derive(Debug, Clone, Default)]
pub struct Postfix {
    /// `mail_version` as (major, minor, patch); a snapshot such as `3.11-20250601` is (3, 11, 0).
    pub version: Option<(u32, u32, u32)>,
    /// `postconf -x`: every parameter with `$name` references expanded.
    pub params: BTreeMap<String, String>,
    /// `postconf -M`: the master.cf services.
    pub master: Vec<MasterEntry>,
}

/// One master.cf service line.
#[derive(Debug, Clone)]
pub struct MasterEntry {
    pub service: String,
    /// `inet`, `unix`, `unix-dgram`, `fifo` or `pass`.
    pub kind: String,
    /// Column 5: `y` → `Some(true)`, `n` → `Some(false)`, `-` (the default) → `None`.
    pub chroot: Option<bool>,
    /// The command and its arguments, continuation lines joined with one space.
    pub command: String,
}

impl Postfix {
    /// Parses the output of `postconf -h mail_version`, `postconf -x` and `postconf -M` (or
    /// `-Mf`). Lines that are not `name = value` are skipped; a line starting with whitespace
    /// continues the previous one. When the first output holds no version, the `mail_version`
    /// parameter is used.
    pub fn parse(version_out: &str, postconf_out: &str, master_out: &str) -> Postfix {
        let params = parse_params(postconf_out);
        let version = parse_version(version_out)
            .or_else(|| params.get("mail_version").and_then(|v| parse_version(v)));
        Postfix {
            version,
            params,
            master: parse_master(master_out),
        }
    }

    /// Runs `postconf -h mail_version`, `postconf -x` and `postconf -M` (with `-c <dir>` when
    /// given); Err when postconf is not installed.
    ///
    /// Also Err when postconf fails (a broken main.cf, a missing config directory: the message
    /// holds its stderr) or prints no parameter at all. Warnings postconf prints on stderr while
    /// succeeding are ignored.
    pub fn read(postconf_bin: &str, config_dir: Option<&Path>) -> Result<Postfix, String> {
        let version = run_postconf(postconf_bin, config_dir, &["-h", "mail_version"])?;
        let params = run_postconf(postconf_bin, config_dir, &["-x"])?;
        let master = run_postconf(postconf_bin, config_dir, &["-M"])?;
        let pf = Postfix::parse(&version, &params, &master);
        if pf.params.is_empty() {
            return Err(format!(
                "{}: printed no parameters",
                shown_command(postconf_bin, config_dir, &["-x"])
            ));
        }
        Ok(pf)
    }

    fn param(&self, name: &str) -> &str {
        self.params.get(name).map(|v| v.trim()).unwrap_or("")
    }

    fn main_cf(&self) -> String {
        match self.param("config_directory") {
            "" => "main.cf".to_string(),
            dir => format!("{}/main.cf", dir.trim_end_matches('/')),
        }
    }

    fn queue_directory(&self) -> PathBuf {
        match self.param("queue_directory") {
            "" => PathBuf::from("/var/spool/postfix"),
            dir => normalize(Path::new(dir)),
        }
    }

    /// Which address families `localhost` may resolve to (`inet_protocols`).
    fn families(&self) -> (bool, bool) {
        let v = self.param("inet_protocols").to_ascii_lowercase();
        if v.is_empty() || v.contains("all") {
            return (true, true);
        }
        (v.contains("ipv4"), v.contains("ipv6"))
    }

    /// The master.cf default for a chroot column of `-`.
    fn default_chroot(&self) -> bool {
        self.version.is_some_and(|v| v < (3, 0, 0))
    }

    /// The smtp(8) delivery services (master.cf lines running `smtp` as a `unix` service) and
    /// whether each is chrooted. With no such line, one unnamed service with the default.
    fn smtp_clients(&self) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = self
            .master
            .iter()
            .filter(|e| e.kind == "unix" && e.program() == "smtp")
            .map(|e| {
                (
                    e.service.clone(),
                    e.chroot.unwrap_or_else(|| self.default_chroot()),
                )
            })
            .collect();
        if out.is_empty() {
            out.push(("smtp".to_string(), self.default_chroot()));
        }
        out
    }

    /// Whether proxymap(8), which opens `proxy:` tables, is chrooted.
    fn proxymap_chroot(&self) -> bool {
        self.master
            .iter()
            .find(|e| e.service == "proxymap")
            .and_then(|e| e.chroot)
            .unwrap_or_else(|| self.default_chroot())
    }
}

impl MasterEntry {
    /// The program name: the command's first word without a directory.
    fn program(&self) -> &str {
        let first = self.command.split_whitespace().next().unwrap_or("");
        first.rsplit('/').next().unwrap_or(first)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem: what is wrong and the setting that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub what: String,
    pub fix: String,
}

impl Finding {
    fn error(what: String, fix: String) -> Finding {
        Finding {
            severity: Severity::Error,
            what,
            fix,
        }
    }

    fn warning(what: String, fix: String) -> Finding {
        Finding {
            severity: Severity::Warning,
            what,
            fix,
        }
    }
}

/// Renders findings for the terminal; "no problems found" when empty.
///
/// Each finding is `error: …` / `warning: …` followed by an indented `fix: …` line, then a
/// count. The text ends with a newline (print it with `print!`).
pub fn render(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "no problems found\n".to_string();
    }
    let mut out = String::new();
    for f in findings {
        out.push_str(&format!("{}: {}\n  fix: {}\n\n", f.severity, f.what, f.fix));
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    out.push_str(&format!(
        "{errors} error{}, {warnings} warning{}\n",
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" }
    ));
    out
}

/// Pure analysis of Postfix's configuration against the daemon's.
///
/// Checks, in this order: `smtp_tls_policy_maps` reaches a listener of this daemon with the
/// right protocol, seen from smtp(8)'s chroot; the SMTP client has trust anchors; the Postfix
/// version accepts the answers of the maps in use (`servername` ≥ 3.4, `tlsrpt` ≥ 3.10, exact MX
/// matching ≥ 3.10.5); DANE is not silently overridden.
pub fn analyze(pf: &Postfix, cfg: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let used = check_policy_maps(pf, cfg, &mut findings);
    check_trust_anchors(pf, &mut findings);
    check_versions(pf, cfg, &used, &mut findings);
    check_dane(pf, &used, &mut findings);
    findings
}

// ---- smtp_tls_policy_maps --------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Socketmap,
    TcpTable,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Socketmap => "socketmap",
            Proto::TcpTable => "tcp_table",
        }
    }
}

#[derive(Debug, Clone)]
enum Endpoint {
    Inet { host: String, port: String },
    Unix(String),
}

/// A socketmap or tcp table in `smtp_tls_policy_maps`.
#[derive(Debug, Clone)]
struct Table {
    /// As written in main.cf (with `proxy:` when present).
    text: String,
    proto: Proto,
    endpoint: Endpoint,
    /// The socketmap name (the text after the last `:`).
    name: Option<String>,
    via_proxy: bool,
}

/// A table that is this daemon (or meant to be), with the config map that renders its answers.
struct Used {
    table: String,
    map_key: String,
}

/// Splits a Postfix list at commas and whitespace outside `{ }`.
fn split_list(s: &str) -> Vec<&str> {
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

fn collect_tables(list: &str, via_proxy: bool, out: &mut Vec<Table>) {
    for tok in split_list(list) {
        table_ref(tok, tok, via_proxy, out);
    }
}

fn table_ref(tok: &str, shown: &str, via_proxy: bool, out: &mut Vec<Table>) {
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
    let (proto, endpoint, name) = if let Some(rest) = tok.strip_prefix("socketmap:") {
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
        (Proto::Socketmap, endpoint, Some(name.to_string()))
    } else if let Some(hp) = tok.strip_prefix("tcp:") {
        match host_port(hp) {
            Some(e) => (Proto::TcpTable, e, None),
            None => return,
        }
    } else {
        return;
    };
    out.push(Table {
        text: shown.to_string(),
        proto,
        endpoint,
        name,
        via_proxy,
    });
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
enum Hit {
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

fn inet_hit(host: &str, port: &str, listener: SocketAddr, fam: (bool, bool)) -> Option<Hit> {
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
fn normalize(p: &Path) -> PathBuf {
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
fn seen_path(path: &str, chrooted: bool, queue_dir: &Path) -> PathBuf {
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
fn chroot_relative(host_path: &Path, queue_dir: &Path) -> Option<String> {
    let rest = normalize(host_path);
    let rest = rest.strip_prefix(queue_dir).ok()?;
    Some(format!("/{}", rest.display()))
}

/// The address Postfix should connect to for a listener: loopback for a wildcard listener.
fn loopback(a: &SocketAddr) -> SocketAddr {
    let ip = match a.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, a.port())
}

/// The table line that reaches this daemon, for fix texts, and what else must change for it to.
fn suggested_table(pf: &Postfix, cfg: &Config) -> (String, Option<String>) {
    let tcp = |list: &[ListenAddr]| {
        list.iter().find_map(|l| match l {
            ListenAddr::Tcp(a) if a.port() != 0 => Some(loopback(a)),
            _ => None,
        })
    };
    if let Some(a) = tcp(cfg.listen_of("socketmap")) {
        return (format!("socketmap:inet:{a}:postfix"), None);
    }
    let queue_dir = pf.queue_directory();
    let clients = pf.smtp_clients();
    let chrooted = clients.iter().filter(|(_, c)| *c).count();
    // Inside the chroot: "/x" when every smtp(8) is chrooted, "x" (relative to queue_directory)
    // when only some are.
    let inside = |rel: &str| {
        if chrooted == clients.len() {
            format!("/{rel}")
        } else {
            rel.to_string()
        }
    };
    let unix = cfg.listen_of("socketmap").iter().find_map(|l| match l {
        ListenAddr::Unix(p) => Some(p),
        _ => None,
    });
    if let Some(p) = unix {
        if chrooted == 0 {
            return (format!("socketmap:unix:{}:postfix", p.display()), None);
        }
        if let Some(rel) = chroot_relative(p, &queue_dir) {
            let rel = rel.trim_start_matches('/');
            return (format!("socketmap:unix:{}:postfix", inside(rel)), None);
        }
    }
    if let Some(a) = tcp(cfg.listen_of("tcp_table")) {
        return (format!("tcp:{a}"), None);
    }
    if unix.is_some() {
        let qd = queue_dir.display();
        return (
            format!(
                "socketmap:unix:{}:postfix",
                inside("mta-sts-policyd/socketmap.sock")
            ),
            Some(format!(
                "smtp(8) is chrooted in {qd}: also set `listen = [\"unix:{qd}/mta-sts-policyd/socketmap.sock\"]` under [socketmap] in {}",
                config_file(cfg)
            )),
        );
    }
    ("socketmap:inet:127.0.0.1:8461:postfix".to_string(), None)
}

fn config_file(cfg: &Config) -> String {
    cfg.path
        .as_deref()
        .unwrap_or(Path::new(DEFAULT_PATH))
        .display()
        .to_string()
}

fn listeners_text(cfg: &Config) -> String {
    let mut v: Vec<String> = Vec::new();
    for l in cfg.listen_of("socketmap") {
        v.push(format!("socketmap {l}"));
    }
    for l in cfg.listen_of("tcp_table") {
        v.push(format!("tcp_table {l}"));
    }
    v.join(", ")
}

/// What one table is, relative to this daemon.
enum Status {
    /// Reaches a listener of the right protocol.
    Reaches,
    /// Meant for this daemon but broken or unverifiable: the finding says how.
    Daemon(Finding),
    /// Reaches a listener of the other protocol.
    WrongProtocol(Finding),
    /// Something else (another daemon, a mistyped address).
    Other,
}

fn classify(t: &Table, pf: &Postfix, cfg: &Config) -> Status {
    let listeners = cfg
        .listen_of("socketmap")
        .iter()
        .map(|l| (Proto::Socketmap, l))
        .chain(
            cfg.listen_of("tcp_table")
                .iter()
                .map(|l| (Proto::TcpTable, l)),
        );
    let main_cf = pf.main_cf();
    let wrong = |l: &ListenAddr, lp: Proto| {
        let replacement = match (lp, l) {
            (Proto::Socketmap, _) => {
                let ep = match &t.endpoint {
                    Endpoint::Inet { host, port } if host.contains(':') => {
                        format!("inet:[{host}]:{port}")
                    }
                    Endpoint::Inet { host, port } => format!("inet:{host}:{port}"),
                    Endpoint::Unix(p) => format!("unix:{p}"),
                };
                format!("`socketmap:{ep}:postfix`")
            }
            (Proto::TcpTable, ListenAddr::Tcp(_)) => match &t.endpoint {
                Endpoint::Inet { host, port } if host.contains(':') => {
                    format!("`tcp:[{host}]:{port}`")
                }
                Endpoint::Inet { host, port } => format!("`tcp:{host}:{port}`"),
                Endpoint::Unix(_) => "a tcp:HOST:PORT table".to_string(),
            },
            (Proto::TcpTable, ListenAddr::Unix(_)) => {
                "a socketmap table (Postfix's tcp client cannot use UNIX sockets)".to_string()
            }
        };
        Status::WrongProtocol(Finding::error(
            format!(
                "wrong protocol: `{}` in smtp_tls_policy_maps speaks {} to this daemon's {} listener {l}; every lookup fails and Postfix defers the mail (4.7.5 client TLS configuration problem)",
                t.text,
                t.proto.name(),
                lp.name()
            ),
            format!(
                "In {main_cf}, replace `{}` with {replacement} in smtp_tls_policy_maps, then run `postfix reload`",
                t.text
            ),
        ))
    };

    match &t.endpoint {
        Endpoint::Inet { host, port } => {
            let fam = pf.families();
            let mut maybe: Option<(String, &ListenAddr)> = None;
            let mut other: Option<(&ListenAddr, Proto)> = None;
            for (lp, l) in listeners {
                let ListenAddr::Tcp(sa) = l else { continue };
                match inet_hit(host, port, *sa, fam) {
                    Some(Hit::Exact) if lp == t.proto => return Status::Reaches,
                    Some(Hit::Exact) => other = other.or(Some((l, lp))),
                    Some(Hit::Maybe(why)) if lp == t.proto => maybe = maybe.or(Some((why, l))),
                    _ => {}
                }
            }
            if let Some((l, lp)) = other {
                return wrong(l, lp);
            }
            if let Some((why, l)) = maybe {
                let ListenAddr::Tcp(sa) = l else {
                    return Status::Other;
                };
                let literal = match t.proto {
                    Proto::Socketmap => format!(
                        "socketmap:inet:{}:{}",
                        loopback(sa),
                        t.name.as_deref().unwrap_or("postfix")
                    ),
                    Proto::TcpTable => format!("tcp:{}", loopback(sa)),
                };
                return Status::Daemon(Finding::warning(
                    format!(
                        "cannot tell whether `{}` in smtp_tls_policy_maps reaches this daemon ({l}): {why}",
                        t.text
                    ),
                    format!(
                        "In {main_cf}, name the listener by its IP address and port: `{literal}` in smtp_tls_policy_maps"
                    ),
                ));
            }
            Status::Other
        }
        Endpoint::Unix(path) => {
            let queue_dir = pf.queue_directory();
            let views: Vec<(String, bool)> = if t.via_proxy {
                vec![("proxymap".to_string(), pf.proxymap_chroot())]
            } else {
                pf.smtp_clients()
            };
            let unix_listener = |p: &Path| {
                cfg.listen_of("socketmap")
                    .iter()
                    .map(|l| (Proto::Socketmap, l))
                    .chain(
                        cfg.listen_of("tcp_table")
                            .iter()
                            .map(|l| (Proto::TcpTable, l)),
                    )
                    .find(|(_, l)| matches!(l, ListenAddr::Unix(lp) if normalize(lp) == p))
            };
            let hits: Vec<Option<(Proto, &ListenAddr)>> = views
                .iter()
                .map(|(_, chrooted)| unix_listener(&seen_path(path, *chrooted, &queue_dir)))
                .collect();
            if hits
                .iter()
                .all(|h| matches!(h, Some((p, _)) if *p == t.proto))
            {
                return Status::Reaches;
            }
            if let Some(Some((lp, l))) = hits
                .iter()
                .find(|h| matches!(h, Some((p, _)) if *p != t.proto))
            {
                return wrong(l, *lp);
            }
            let chrooted: Vec<&str> = views
                .iter()
                .filter(|(_, c)| *c)
                .map(|(s, _)| s.as_str())
                .collect();
            let qd = queue_dir.display();
            if hits.iter().any(Option::is_some) {
                // Some services reach it and others do not: they disagree on the chroot.
                let free: Vec<&str> = views
                    .iter()
                    .filter(|(_, c)| !*c)
                    .map(|(s, _)| s.as_str())
                    .collect();
                let (host_path, rel) = match views
                    .iter()
                    .zip(&hits)
                    .find_map(|((_, c), h)| h.map(|_| seen_path(path, *c, &queue_dir)))
                {
                    Some(hp) => {
                        let rel = hp
                            .strip_prefix(&queue_dir)
                            .map(|r| r.display().to_string())
                            .ok();
                        (hp, rel)
                    }
                    None => (PathBuf::from(path), None),
                };
                let fix = match rel {
                    Some(rel) => format!(
                        "In {main_cf}, replace `{}` with the path relative to queue_directory, which chrooted and unchrooted services resolve alike: `socketmap:unix:{rel}:{}` in smtp_tls_policy_maps; or give every smtp service the same chroot column in master.cf",
                        t.text,
                        t.name.as_deref().unwrap_or("postfix")
                    ),
                    None => format!(
                        "Move this daemon's socket under {qd} (e.g. `listen = [\"unix:{qd}/mta-sts-policyd/socketmap.sock\"]` in {}) and use `socketmap:unix:mta-sts-policyd/socketmap.sock:postfix` (relative to queue_directory) in {main_cf}; or give every smtp service the same chroot column in master.cf",
                        config_file(cfg)
                    ),
                };
                return Status::Daemon(Finding::error(
                    format!(
                        "smtp(8) services disagree on the chroot (chrooted: {}; not chrooted: {}), so `{}` reaches this daemon ({}) from some of them only; the others defer mail",
                        chrooted.join(", "),
                        free.join(", "),
                        t.text,
                        host_path.display()
                    ),
                    fix,
                ));
            }
            // Nothing reached. Is it the chroot that moved the path?
            let literal = normalize(Path::new(path));
            if !chrooted.is_empty()
                && Path::new(path).is_absolute()
                && let Some((lp, l)) = unix_listener(&literal)
                && lp == t.proto
            {
                let seen = seen_path(path, true, &queue_dir);
                let who = if t.via_proxy {
                    "proxymap(8) runs chrooted (master.cf service `proxymap`, column 5 = y)"
                        .to_string()
                } else {
                    format!(
                        "smtp(8) runs chrooted (master.cf {} {}, column 5 = y)",
                        if chrooted.len() == 1 {
                            "service"
                        } else {
                            "services"
                        },
                        chrooted
                            .iter()
                            .map(|s| format!("`{s}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                let what = format!(
                    "{who}, so `{}` opens {} inside the chroot {qd}, but this daemon listens on {l}",
                    t.text,
                    seen.display()
                );
                let name = t.name.as_deref().unwrap_or("postfix");
                let proxy = if t.via_proxy { "proxy:" } else { "" };
                let text = &t.text;
                let fix = match chroot_relative(&literal, &queue_dir) {
                    Some(inside) => format!(
                        "In {main_cf}, give the path as seen inside the chroot: replace `{text}` with `{proxy}socketmap:unix:{inside}:{name}` in smtp_tls_policy_maps, then run `postfix reload`"
                    ),
                    None => format!(
                        "Put the socket inside the chroot, in a directory of its own (not private/ or public/): set `listen = [\"unix:{qd}/mta-sts-policyd/socketmap.sock\"]` under [socketmap] in {} and replace `{text}` with `{proxy}socketmap:unix:/mta-sts-policyd/socketmap.sock:{name}` in smtp_tls_policy_maps in {main_cf}; or use TCP: `{proxy}socketmap:inet:127.0.0.1:8461:{name}` with `listen = [\"inet:127.0.0.1:8461\"]`",
                        config_file(cfg)
                    ),
                };
                return Status::Daemon(Finding::error(what, fix));
            }
            Status::Other
        }
    }
}

fn check_policy_maps(pf: &Postfix, cfg: &Config, findings: &mut Vec<Finding>) -> Vec<Used> {
    let current = pf.param("smtp_tls_policy_maps");
    let mut tables = Vec::new();
    collect_tables(current, false, &mut tables);
    let mut used = Vec::new();
    let mut related = false;
    for t in &tables {
        let status = classify(t, pf, cfg);
        let is_daemon = match status {
            Status::Reaches => true,
            Status::Daemon(f) => {
                findings.push(f);
                true
            }
            Status::WrongProtocol(f) => {
                findings.push(f);
                related = true;
                false
            }
            Status::Other => false,
        };
        if is_daemon {
            related = true;
            let map_key = match (t.proto, &t.name) {
                (Proto::Socketmap, Some(n)) if cfg.maps.contains_key(n) => n.clone(),
                (Proto::Socketmap, _) => DEFAULT_MAP.to_string(),
                (Proto::TcpTable, _) => Protocol::from_name("tcp_table")
                    .map_or(DEFAULT_MAP, |p| cfg.profile_for(p, None).0)
                    .to_string(),
            };
            used.push(Used {
                table: t.text.clone(),
                map_key,
            });
        }
    }
    if !related {
        let (suggested, note) = suggested_table(pf, cfg);
        let main_cf = pf.main_cf();
        let what = if current.is_empty() {
            "smtp_tls_policy_maps is empty, so Postfix never asks this daemon for MTA-STS policies"
                .to_string()
        } else {
            let queue_dir = pf.queue_directory();
            let mut seen = vec![listeners_text(cfg)];
            for t in &tables {
                if let Endpoint::Unix(p) = &t.endpoint {
                    let chroot = if t.via_proxy {
                        pf.proxymap_chroot()
                    } else {
                        pf.smtp_clients().iter().any(|(_, c)| *c)
                    };
                    seen.push(format!(
                        "`{}` opens {}",
                        t.text,
                        seen_path(p, chroot, &queue_dir).display()
                    ));
                }
            }
            format!(
                "smtp_tls_policy_maps = {current} reaches none of this daemon's listeners ({}), so Postfix never asks this daemon for MTA-STS policies",
                seen.join("; ")
            )
        };
        // A socket table that reaches nothing fails every lookup, and Postfix stops at the
        // first failing table: it is most likely this daemon, mistyped.
        let stray: Vec<&str> = tables.iter().map(|t| t.text.as_str()).collect();
        let mut fix = if current.is_empty() {
            format!("Set `smtp_tls_policy_maps = {suggested}` in {main_cf}")
        } else if let [one] = stray.as_slice()
            && *one == suggested
        {
            format!("Keep `{one}` in {main_cf}")
        } else if let [one] = stray.as_slice() {
            format!(
                "If `{one}` is meant to be this daemon, replace it with `{suggested}` in smtp_tls_policy_maps in {main_cf}; otherwise add this daemon after your own tables: `smtp_tls_policy_maps = {current}, {suggested}`"
            )
        } else {
            format!(
                "Add this daemon after your own tables in {main_cf}: `smtp_tls_policy_maps = {current}, {suggested}`"
            )
        };
        if let Some(note) = &note {
            fix.push_str("; ");
            fix.push_str(note);
            fix.push_str("; then restart mta-sts-policyd and run `postfix reload`");
        } else {
            fix.push_str("; then run `postfix reload`");
        }
        findings.push(Finding::error(what, fix));
    }
    used
}

// ---- trust anchors -------------------------------------------------------------------------

fn check_trust_anchors(pf: &Postfix, findings: &mut Vec<Finding>) {
    let main_cf = pf.main_cf();
    if pf.param("smtp_tls_CAfile").is_empty()
        && pf.param("smtp_tls_CApath").is_empty()
        && !pf
            .param("tls_append_default_CA")
            .eq_ignore_ascii_case("yes")
    {
        findings.push(Finding::error(
            "the SMTP client has no trust anchors: smtp_tls_CAfile and smtp_tls_CApath are empty and tls_append_default_CA = no, so every `secure` answer from this daemon fails certificate verification and the mail is deferred".to_string(),
            format!(
                "Set `smtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt` in {main_cf} (it is read before smtp(8) enters the chroot), then run `postfix reload`"
            ),
        ));
    }
    let ta = pf.param("smtp_tls_trust_anchor_file");
    if !ta.is_empty() {
        findings.push(Finding::warning(
            format!(
                "smtp_tls_trust_anchor_file = {ta}: the SMTP client then trusts only these anchors, not smtp_tls_CAfile/CApath, so `secure` answers fail for every MX host whose certificate chain does not lead to one of them"
            ),
            format!(
                "Leave `smtp_tls_trust_anchor_file =` empty in {main_cf} (use `tafile=` in a policy table for the destinations that need it), or make sure the files hold the public CA roots"
            ),
        ));
    }
}

// ---- Postfix version against the maps' answers ------------------------------------------------

fn fmt_version((a, b, c): (u32, u32, u32)) -> String {
    format!("{a}.{b}.{c}")
}

fn check_versions(pf: &Postfix, cfg: &Config, used: &[Used], findings: &mut Vec<Finding>) {
    if used.is_empty() {
        return;
    }
    let Some(v) = pf.version else {
        findings.push(Finding::warning(
            "cannot tell the Postfix version (mail_version), so the checks of servername= (Postfix 3.4) and the TLSRPT attributes (Postfix 3.10) were skipped".to_string(),
            "Check that `postconf -h mail_version` prints a version such as 3.7.11".to_string(),
        ));
        return;
    };
    let version = fmt_version(v);
    let file = config_file(cfg);
    // Config map → the tables that use it.
    let mut by_map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for u in used {
        by_map
            .entry(u.map_key.as_str())
            .or_default()
            .push(u.table.as_str());
    }
    let mut tlsrpt_maps = Vec::new();
    for (key, tables) in &by_map {
        let profile = &cfg.profile(key).answer;
        let used_by = tables
            .iter()
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", ");
        if v < (3, 4, 0) && profile.servername {
            findings.push(Finding::error(
                format!(
                    "Postfix {version} does not know the servername= attribute (Postfix 3.4 and later), so it defers all mail to domains with an enforced MTA-STS policy: [maps.{key}] has servername = true (used by {used_by})"
                ),
                format!(
                    "Upgrade Postfix to 3.4 or later, or set `servername = false` under [maps.{key}] in {file} (Postfix then sends no SNI, although RFC 8461 §7.1 asks for it)"
                ),
            ));
        }
        if profile.tlsrpt {
            if v < (3, 10, 0) {
                findings.push(Finding::error(
                    format!(
                        "Postfix {version} does not know the TLSRPT attributes (policy_type=…, Postfix 3.10 and later) and defers all mail to domains with an enforced MTA-STS policy (4.7.5 client TLS configuration problem): [maps.{key}] has tlsrpt = true (used by {used_by})"
                    ),
                    format!(
                        "Set `tlsrpt = false` under [maps.{key}] in {file}, or upgrade Postfix to 3.10.5 or later"
                    ),
                ));
            } else {
                tlsrpt_maps.push(format!("[maps.{key}]"));
            }
        }
    }
    if tlsrpt_maps.is_empty() {
        return;
    }
    let maps = tlsrpt_maps.join(", ");
    if v < (3, 10, 5) {
        findings.push(Finding::warning(
            format!(
                "Postfix {version} accepts the TLSRPT attributes of {maps} but has no smtp_tls_enforce_sts_mx_patterns (Postfix 3.10.5 and later): MX hosts are not checked against the policy's mx patterns, only the certificate names are (RFC 8461 §4.1 is approximated)"
            ),
            "Upgrade Postfix to 3.10.5 or later for exact RFC 8461 MX matching".to_string(),
        ));
    } else if pf
        .param("smtp_tls_enforce_sts_mx_patterns")
        .eq_ignore_ascii_case("no")
    {
        findings.push(Finding::warning(
            format!(
                "smtp_tls_enforce_sts_mx_patterns = no: Postfix ignores the mx_host_pattern attributes of {maps} and checks only certificate names, not the MX host names (RFC 8461 §4.1 is approximated)"
            ),
            format!(
                "Set `smtp_tls_enforce_sts_mx_patterns = yes` (the default) in {}, then run `postfix reload`",
                pf.main_cf()
            ),
        ));
    }
}

// ---- DANE ------------------------------------------------------------------------------------

fn check_dane(pf: &Postfix, used: &[Used], findings: &mut Vec<Finding>) {
    let level = pf.param("smtp_tls_security_level").to_ascii_lowercase();
    if used.is_empty()
        || !(level == "dane" || level == "dane-only")
        || !pf
            .param("smtp_dns_support_level")
            .eq_ignore_ascii_case("dnssec")
    {
        return;
    }
    let daemon = used
        .first()
        .map(|u| u.table.as_str())
        .unwrap_or("socketmap:inet:127.0.0.1:8461:postfix");
    findings.push(Finding::warning(
        format!(
            "smtp_tls_security_level = {level} with smtp_dns_support_level = dnssec: for a domain that has both DANE TLSA records and an MTA-STS policy, this daemon's `secure` answer replaces DANE (a policy table answer overrides smtp_tls_security_level), while RFC 8461 §2 says MTA-STS must not override a failing DANE validation"
        ),
        format!(
            "In {}, list a table that answers `dane-only` for your DANE destinations before this daemon, e.g. `smtp_tls_policy_maps = hash:/etc/postfix/tls_policy, {daemon}`; or accept that MTA-STS wins for domains that publish both",
            pf.main_cf()
        ),
    ));
}

// ---- parsing postconf output -------------------------------------------------------------------

fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let word = s.split_whitespace().next()?;
    // "3.11-20250601" (snapshot) or "3.10.0-RC1": the release part is before '-'.
    let release = word.split('-').next()?;
    let mut parts = release.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

fn valid_param_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn parse_params(text: &str) -> BTreeMap<String, String> {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            last = None;
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if let Some(v) = last.as_ref().and_then(|k| params.get_mut(k)) {
                if !v.is_empty() {
                    v.push(' ');
                }
                v.push_str(line.trim());
            }
            continue;
        }
        last = None;
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if !valid_param_name(name) {
            continue;
        }
        params.insert(name.to_string(), value.trim().to_string());
        last = Some(name.to_string());
    }
    params
}

fn parse_master(text: &str) -> Vec<MasterEntry> {
    let mut entries: Vec<MasterEntry> = Vec::new();
    let mut continues = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if continues && let Some(e) = entries.last_mut() {
                e.command.push(' ');
                e.command.push_str(trimmed);
            }
            continue;
        }
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        continues = fields.len() >= 8;
        if !continues {
            continue;
        }
        entries.push(MasterEntry {
            service: fields[0].to_string(),
            kind: fields[1].to_string(),
            chroot: match fields[4] {
                "y" => Some(true),
                "n" => Some(false),
                _ => None,
            },
            command: fields[7..].join(" "),
        });
    }
    entries
}

// ---- running postconf ------------------------------------------------------------------------

fn shown_command(bin: &str, config_dir: Option<&Path>, args: &[&str]) -> String {
    let mut s = bin.to_string();
    if let Some(d) = config_dir {
        s.push_str(&format!(" -c {}", d.display()));
    }
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

fn run_postconf(bin: &str, config_dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let shown = shown_command(bin, config_dir, args);
    let mut cmd = Command::new(bin);
    if let Some(d) = config_dir {
        cmd.arg("-c").arg(d);
    }
    let out = cmd.args(args).stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("{bin}: not found; is Postfix installed?")
        } else {
            format!("cannot run `{shown}`: {e}")
        }
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        return Err(if stderr.is_empty() {
            format!("`{shown}` failed ({})", out.status)
        } else {
            format!("`{shown}` failed ({}): {stderr}", out.status)
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture: `### postconf -h mail_version`, `### postconf -x` and `### postconf -M`
    /// sections, in this order (tests/fixtures/postconf/README.md).
    fn load(text: &str) -> Postfix {
        let mut secs: Vec<String> = Vec::new();
        for line in text.lines() {
            if line.starts_with("### ") {
                secs.push(String::new());
            } else if let Some(s) = secs.last_mut() {
                s.push_str(line);
                s.push('\n');
            }
        }
        assert_eq!(secs.len(), 3, "a fixture has three sections");
        Postfix::parse(&secs[0], &secs[1], &secs[2])
    }

    fn cfg(toml: &str) -> Config {
        Config::parse(toml, None).unwrap()
    }

    /// The findings are exactly `expected`: one finding per (severity, phrase in `what`).
    #[track_caller]
    fn assert_findings(found: &[Finding], expected: &[(Severity, &str)]) {
        let text = render(found);
        assert_eq!(found.len(), expected.len(), "{text}");
        for (sev, phrase) in expected {
            let n = found
                .iter()
                .filter(|f| f.severity == *sev && f.what.contains(phrase))
                .count();
            assert_eq!(n, 1, "want one {sev} with {phrase:?}:\n{text}");
        }
        for f in found {
            assert!(!f.fix.is_empty(), "{text}");
        }
    }

    const DEBIAN_DEFAULT: &str =
        include_str!("../../tests/fixtures/postconf/debian-3.7-default.txt");
    const GOOD: &str = include_str!("../../tests/fixtures/postconf/good-3.7.txt");
    const UNIX_CHROOT: &str = include_str!("../../tests/fixtures/postconf/unix-chroot-3.7.txt");
    const UNIX_CHROOT_OK: &str =
        include_str!("../../tests/fixtures/postconf/unix-chroot-ok-3.7.txt");
    const OLD_33: &str = include_str!("../../tests/fixtures/postconf/old-3.3.txt");
    const TLSRPT_39: &str = include_str!("../../tests/fixtures/postconf/tlsrpt-on-3.9.txt");
    const TLSRPT_3102: &str = include_str!("../../tests/fixtures/postconf/tlsrpt-on-3.10.2.txt");
    const TLSRPT_3105: &str = include_str!("../../tests/fixtures/postconf/tlsrpt-ok-3.10.5.txt");
    const DANE: &str = include_str!("../../tests/fixtures/postconf/dane-3.7.txt");
    const NO_CA: &str = include_str!("../../tests/fixtures/postconf/no-ca-upstream-3.7.txt");
    const WRONG_PROTO: &str = include_str!("../../tests/fixtures/postconf/wrong-proto-3.7.txt");

    const TLSRPT_CFG: &str = "[maps.postfix-tlsrpt]\ntlsrpt = true\n";

    #[test]
    fn debian_default_has_no_policy_maps() {
        let pf = load(DEBIAN_DEFAULT);
        assert_eq!(pf.version, Some((3, 7, 11)));
        assert!(pf.params.len() > 1000);
        assert_eq!(pf.param("smtp_tls_policy_maps"), "");
        assert_eq!(pf.param("smtp_tls_CApath"), "/etc/ssl/certs");
        let smtp = pf
            .master
            .iter()
            .find(|e| e.service == "smtp" && e.kind == "unix")
            .unwrap();
        assert_eq!(smtp.chroot, Some(true));
        assert_eq!(
            pf.smtp_clients(),
            vec![("smtp".to_string(), true), ("relay".to_string(), true)]
        );
        let found = analyze(&pf, &cfg(""));
        assert_findings(&found, &[(Severity::Error, "never asks")]);
        assert_eq!(
            found[0].fix,
            "Set `smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix` in /etc/postfix/main.cf; then run `postfix reload`"
        );
    }

    #[test]
    fn good_fixture_is_clean() {
        let found = analyze(&load(GOOD), &cfg(""));
        assert_findings(&found, &[]);
        assert_eq!(render(&found), "no problems found\n");
    }

    #[test]
    fn unix_socket_outside_the_chroot() {
        let c = cfg("[socketmap]\nlisten = [\"unix:/run/mta-sts-policyd/socketmap.sock\"]\n");
        let found = analyze(&load(UNIX_CHROOT), &c);
        assert_findings(&found, &[(Severity::Error, "runs chrooted")]);
        assert!(
            found[0]
                .what
                .contains("/var/spool/postfix/run/mta-sts-policyd/socketmap.sock"),
            "{}",
            found[0].what
        );
        assert!(
            found[0]
                .fix
                .contains("unix:/var/spool/postfix/mta-sts-policyd/socketmap.sock"),
            "{}",
            found[0].fix
        );
        // The default TCP listener does not help a unix table.
        assert_findings(
            &analyze(&load(UNIX_CHROOT), &cfg("")),
            &[(Severity::Error, "never asks")],
        );
    }

    #[test]
    fn unix_socket_inside_the_chroot() {
        let inside =
            "[socketmap]\nlisten = [\"unix:/var/spool/postfix/mta-sts-policyd/socketmap.sock\"]\n";
        assert_findings(&analyze(&load(UNIX_CHROOT_OK), &cfg(inside)), &[]);
        // The same listener named by its host path in main.cf: the chroot prefixes it again.
        let mut pf = load(UNIX_CHROOT_OK);
        pf.params.insert(
            "smtp_tls_policy_maps".into(),
            "socketmap:unix:/var/spool/postfix/mta-sts-policyd/socketmap.sock:postfix".into(),
        );
        let found = analyze(&pf, &cfg(inside));
        assert_findings(&found, &[(Severity::Error, "runs chrooted")]);
        assert!(
            found[0].fix.contains(
                "with `socketmap:unix:/mta-sts-policyd/socketmap.sock:postfix` in smtp_tls_policy_maps"
            ),
            "{}",
            found[0].fix
        );
        // With no socket configured where main.cf points, the generic error shows the path.
        let found = analyze(
            &load(UNIX_CHROOT_OK),
            &cfg("[socketmap]\nlisten = [\"unix:/run/x.sock\"]\n"),
        );
        assert_findings(&found, &[(Severity::Error, "never asks")]);
        assert!(
            found[0]
                .what
                .contains("opens /var/spool/postfix/mta-sts-policyd/socketmap.sock"),
            "{}",
            found[0].what
        );
        // The socket is outside the chroot: the fix moves it in.
        assert!(
            found[0].fix.starts_with(
                "Keep `socketmap:unix:/mta-sts-policyd/socketmap.sock:postfix` in /etc/postfix/main.cf; smtp(8) is chrooted"
            ),
            "{}",
            found[0].fix
        );
        assert!(
            found[0].fix.contains(
                "`listen = [\"unix:/var/spool/postfix/mta-sts-policyd/socketmap.sock\"]`"
            ),
            "{}",
            found[0].fix
        );
    }

    #[test]
    fn a_socket_table_that_reaches_nothing_is_probably_this_daemon() {
        let found = analyze(
            &pf_with(
                "3.7.11",
                "hash:/etc/postfix/tls_policy socketmap:inet:127.0.0.1:8641:postfix",
                CHROOT_Y,
            ),
            &cfg(""),
        );
        assert_findings(&found, &[(Severity::Error, "never asks")]);
        assert_eq!(
            found[0].fix,
            "If `socketmap:inet:127.0.0.1:8641:postfix` is meant to be this daemon, replace it with `socketmap:inet:127.0.0.1:8461:postfix` in smtp_tls_policy_maps in /etc/postfix/main.cf; otherwise add this daemon after your own tables: `smtp_tls_policy_maps = hash:/etc/postfix/tls_policy socketmap:inet:127.0.0.1:8641:postfix, socketmap:inet:127.0.0.1:8461:postfix`; then run `postfix reload`"
        );
    }

    #[test]
    fn old_postfix_rejects_servername() {
        let pf = load(OLD_33);
        assert_eq!(pf.version, Some((3, 3, 0)));
        let found = analyze(&pf, &cfg(""));
        assert_findings(&found, &[(Severity::Error, "servername")]);
        assert!(found[0].what.contains("[maps.default]"));
        assert!(found[0].fix.contains("servername = false"));
        assert_findings(
            &analyze(&pf, &cfg("[maps.default]\nservername = false\n")),
            &[],
        );
    }

    #[test]
    fn tlsrpt_on_postfix_3_9_defers_mail() {
        let pf = load(TLSRPT_39);
        let found = analyze(&pf, &cfg(TLSRPT_CFG));
        assert_findings(&found, &[(Severity::Error, "TLSRPT attributes")]);
        assert!(found[0].what.contains("[maps.postfix-tlsrpt]"));
        assert!(found[0].fix.contains("tlsrpt = false"));
        // Without [maps.postfix-tlsrpt] the name falls back to [maps.default] (no tlsrpt).
        assert_findings(&analyze(&pf, &cfg("")), &[]);
    }

    #[test]
    fn tlsrpt_on_postfix_3_10_2_lacks_exact_mx_matching() {
        let found = analyze(&load(TLSRPT_3102), &cfg(TLSRPT_CFG));
        assert_findings(&found, &[(Severity::Warning, "3.10.5")]);
    }

    #[test]
    fn tlsrpt_on_postfix_3_10_5() {
        let mut pf = load(TLSRPT_3105);
        assert_findings(&analyze(&pf, &cfg(TLSRPT_CFG)), &[]);
        pf.params
            .insert("smtp_tls_enforce_sts_mx_patterns".into(), "no".into());
        assert_findings(
            &analyze(&pf, &cfg(TLSRPT_CFG)),
            &[(Severity::Warning, "smtp_tls_enforce_sts_mx_patterns = no")],
        );
    }

    #[test]
    fn dane_is_overridden() {
        let mut pf = load(DANE);
        let found = analyze(&pf, &cfg(""));
        assert_findings(&found, &[(Severity::Warning, "DANE")]);
        assert!(found[0].what.contains("RFC 8461 §2"));
        // Without DNSSEC, Postfix's "dane" level is only "may": nothing to override.
        pf.params
            .insert("smtp_dns_support_level".into(), String::new());
        assert_findings(&analyze(&pf, &cfg("")), &[]);
    }

    #[test]
    fn no_trust_anchors() {
        let pf = load(NO_CA);
        assert_eq!(pf.smtp_clients()[0], ("smtp".to_string(), false));
        let found = analyze(&pf, &cfg(""));
        // `localhost` reaches 127.0.0.1:8461, so the only problem is the missing CAs.
        assert_findings(&found, &[(Severity::Error, "no trust anchors")]);
        assert!(found[0].fix.contains("smtp_tls_CAfile ="));
        let mut pf = pf;
        pf.params
            .insert("tls_append_default_CA".into(), "yes".into());
        assert_findings(&analyze(&pf, &cfg("")), &[]);
        pf.params.insert(
            "smtp_tls_trust_anchor_file".into(),
            "/etc/postfix/ta.pem".into(),
        );
        assert_findings(
            &analyze(&pf, &cfg("")),
            &[(Severity::Warning, "smtp_tls_trust_anchor_file")],
        );
    }

    #[test]
    fn tcp_table_at_the_socketmap_port() {
        let found = analyze(&load(WRONG_PROTO), &cfg(""));
        assert_findings(&found, &[(Severity::Error, "wrong protocol")]);
        assert!(
            found[0]
                .fix
                .contains("`socketmap:inet:127.0.0.1:8461:postfix`"),
            "{}",
            found[0].fix
        );
    }

    // ---- analysis on hand-made configurations --------------------------------------------

    fn pf_with(version: &str, maps: &str, master: &str) -> Postfix {
        let params = format!(
            "queue_directory = /var/spool/postfix\nconfig_directory = /etc/postfix\nsmtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt\nsmtp_tls_policy_maps = {maps}\n"
        );
        Postfix::parse(version, &params, master)
    }

    const CHROOT_Y: &str = "smtp unix - - y - - smtp\nproxymap unix - - n - - proxymap\n";
    const CHROOT_DASH: &str = "smtp unix - - - - - smtp\n";

    #[test]
    fn addresses_are_compared_as_ips() {
        let any4 = cfg("[socketmap]\nlisten = [\"inet:0.0.0.0:8461\"]\n");
        let any6 = cfg("[socketmap]\nlisten = [\"inet:[::]:8461\"]\n");
        let v6 = cfg("[socketmap]\nlisten = [\"inet:[::1]:8461\"]\n");
        let ok = |pf: &Postfix, c: &Config| assert_findings(&analyze(pf, c), &[]);
        ok(
            &pf_with("3.7.11", "socketmap:inet:127.0.0.1:8461:postfix", ""),
            &any4,
        );
        ok(
            &pf_with("3.7.11", "socketmap:inet:localhost:8461:postfix", ""),
            &any4,
        );
        ok(
            &pf_with("3.7.11", "socketmap:inet:127.0.0.1:8461:postfix", ""),
            &any6,
        );
        ok(
            &pf_with("3.7.11", "socketmap:inet:[::1]:8461:postfix", ""),
            &v6,
        );
        ok(
            &pf_with("3.7.11", "socketmap:inet:localhost:8461:postfix", ""),
            &v6,
        );
        // 0.0.0.0 does not take IPv6 connections.
        assert_findings(
            &analyze(
                &pf_with("3.7.11", "socketmap:inet:[::1]:8461:postfix", ""),
                &any4,
            ),
            &[(Severity::Error, "never asks")],
        );
        // localhost is only ::1 when inet_protocols allows IPv6.
        let mut pf = pf_with("3.7.11", "socketmap:inet:localhost:8461:postfix", "");
        pf.params.insert("inet_protocols".into(), "ipv4".into());
        assert_findings(&analyze(&pf, &v6), &[(Severity::Error, "never asks")]);
        // Another port, another loopback address: not this daemon.
        for maps in [
            "socketmap:inet:127.0.0.1:8462:postfix",
            "socketmap:inet:127.0.0.2:8461:postfix",
        ] {
            assert_findings(
                &analyze(&pf_with("3.7.11", maps, ""), &cfg("")),
                &[(Severity::Error, "never asks")],
            );
        }
    }

    #[test]
    fn host_names_and_service_ports_are_only_warned_about() {
        for maps in [
            "socketmap:inet:mx.example.org:8461:postfix",
            "socketmap:inet:127.0.0.1:mta-sts:postfix",
        ] {
            let found = analyze(&pf_with("3.7.11", maps, ""), &cfg(""));
            assert_findings(&found, &[(Severity::Warning, "cannot tell")]);
            assert!(
                found[0]
                    .fix
                    .contains("`socketmap:inet:127.0.0.1:8461:postfix`"),
                "{}",
                found[0].fix
            );
        }
        let found = analyze(
            &pf_with("3.7.11", "socketmap:inet:192.0.2.7:8461:postfix", ""),
            &cfg("[socketmap]\nlisten = [\"inet:0.0.0.0:8461\"]\n"),
        );
        assert_findings(&found, &[(Severity::Warning, "cannot tell")]);
    }

    #[test]
    fn tcp_tables() {
        let c = cfg(
            "[socketmap]\nlisten = []\n[tcp_table]\nlisten = [\"inet:[::1]:8462\"]\nmap = \"rpt\"\n[maps.rpt]\ntlsrpt = true\n",
        );
        assert_findings(&analyze(&pf_with("3.10.5", "tcp:[::1]:8462", ""), &c), &[]);
        // The tcp_table map's profile is what the version checks look at.
        assert_findings(
            &analyze(&pf_with("3.9.1", "tcp:[::1]:8462", ""), &c),
            &[(Severity::Error, "[maps.rpt]")],
        );
        let found = analyze(
            &pf_with("3.10.5", "socketmap:inet:[::1]:8462:postfix", ""),
            &c,
        );
        assert_findings(&found, &[(Severity::Error, "wrong protocol")]);
        assert!(
            found[0].fix.contains("`tcp:[::1]:8462`"),
            "{}",
            found[0].fix
        );
        let found = analyze(&pf_with("3.10.5", "", ""), &c);
        assert!(
            found[0]
                .fix
                .contains("`smtp_tls_policy_maps = tcp:[::1]:8462`"),
            "{}",
            found[0].fix
        );
    }

    #[test]
    fn table_lists() {
        let c = cfg("");
        // Commas, whitespace, proxy:, unionmap:{…} and other tables around the daemon.
        for maps in [
            "hash:/etc/postfix/tls_policy,socketmap:inet:127.0.0.1:8461:postfix",
            "hash:/etc/postfix/tls_policy\tsocketmap:inet:127.0.0.1:8461:postfix",
            "inline:{ { example.com = secure }, b = may } , proxy:socketmap:inet:127.0.0.1:8461:postfix",
            "unionmap:{hash:/etc/postfix/x, socketmap:inet:127.0.0.1:8461:postfix}",
        ] {
            assert_findings(&analyze(&pf_with("3.7.11", maps, CHROOT_Y), &c), &[]);
        }
        let found = analyze(
            &pf_with("3.7.11", "hash:/etc/postfix/tls_policy", CHROOT_Y),
            &c,
        );
        assert_findings(&found, &[(Severity::Error, "never asks")]);
        assert_eq!(
            found[0].fix,
            "Add this daemon after your own tables in /etc/postfix/main.cf: `smtp_tls_policy_maps = hash:/etc/postfix/tls_policy, socketmap:inet:127.0.0.1:8461:postfix`; then run `postfix reload`"
        );
        assert_eq!(
            split_list(" a:b ,c:{ d e }, f:g"),
            vec!["a:b", "c:{ d e }", "f:g"]
        );
    }

    #[test]
    fn unix_paths_and_chroots() {
        let run = cfg("[socketmap]\nlisten = [\"unix:/run/m/s.sock\"]\n");
        let spool = cfg("[socketmap]\nlisten = [\"unix:/var/spool/postfix/m/s.sock\"]\n");
        // proxy: is opened by proxymap(8), which is not chrooted here.
        assert_findings(
            &analyze(
                &pf_with(
                    "3.7.11",
                    "proxy:socketmap:unix:/run/m/s.sock:postfix",
                    CHROOT_Y,
                ),
                &run,
            ),
            &[],
        );
        // ... unless proxymap(8) is chrooted too.
        let found = analyze(
            &pf_with(
                "3.7.11",
                "proxy:socketmap:unix:/run/m/s.sock:postfix",
                "smtp unix - - y - - smtp\nproxymap unix - - y - - proxymap\n",
            ),
            &run,
        );
        assert_findings(&found, &[(Severity::Error, "proxymap(8) runs chrooted")]);
        assert!(
            found[0]
                .fix
                .contains("`proxy:socketmap:unix:/mta-sts-policyd/socketmap.sock:postfix`"),
            "{}",
            found[0].fix
        );
        // "-" means n since Postfix 3.0 and y before.
        assert_findings(
            &analyze(
                &pf_with(
                    "3.7.11",
                    "socketmap:unix:/run/m/s.sock:postfix",
                    CHROOT_DASH,
                ),
                &run,
            ),
            &[],
        );
        assert_findings(
            &analyze(
                &pf_with(
                    "2.11.3",
                    "socketmap:unix:/run/m/s.sock:postfix",
                    CHROOT_DASH,
                ),
                &run,
            ),
            &[
                (Severity::Error, "runs chrooted"),
                (Severity::Error, "servername"),
            ],
        );
        // A relative path is relative to queue_directory, chrooted or not.
        let mixed = "smtp unix - - y - - smtp\nrelay unix - - n - - smtp\n";
        assert_findings(
            &analyze(
                &pf_with("3.7.11", "socketmap:unix:m/s.sock:postfix", mixed),
                &spool,
            ),
            &[],
        );
        let found = analyze(
            &pf_with("3.7.11", "socketmap:unix:/m/s.sock:postfix", mixed),
            &spool,
        );
        assert_findings(&found, &[(Severity::Error, "disagree on the chroot")]);
        assert!(
            found[0].fix.contains("`socketmap:unix:m/s.sock:postfix`"),
            "{}",
            found[0].fix
        );
        // The generic fix names the path as seen inside the chroot.
        let found = analyze(&pf_with("3.7.11", "", CHROOT_Y), &spool);
        assert!(
            found[0]
                .fix
                .contains("`smtp_tls_policy_maps = socketmap:unix:/m/s.sock:postfix`"),
            "{}",
            found[0].fix
        );
    }

    #[test]
    fn unknown_version_skips_version_checks() {
        let pf = Postfix::parse(
            "",
            "smtp_tls_CAfile = /x\nsmtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix\n",
            "",
        );
        assert_eq!(pf.version, None);
        assert_findings(
            &analyze(&pf, &cfg("")),
            &[(Severity::Warning, "cannot tell the Postfix version")],
        );
    }

    // ---- parsing -----------------------------------------------------------------------------

    #[test]
    fn parse_params_continuations_and_empty_values() {
        let out = "smtp_tls_CAfile =\n\
                   smtp_tls_policy_maps = hash:/etc/postfix/tls_policy,\n\
                   \x20   socketmap:inet:127.0.0.1:8461:postfix\n\
                   \tproxy:tcp:127.0.0.1:8462\n\
                   postconf: warning: /etc/postfix/main.cf: undefined parameter: x = y\n\
                   \x20   stray continuation\n\
                   empty_with_space = \n\
                   queue_directory=/var/spool/postfix\r\n\
                   # a comment = no\n\
                   mail_version = 3.10.5\n";
        let pf = Postfix::parse("", out, "");
        assert_eq!(pf.param("smtp_tls_CAfile"), "");
        assert!(pf.params.contains_key("smtp_tls_CAfile"));
        assert_eq!(
            pf.param("smtp_tls_policy_maps"),
            "hash:/etc/postfix/tls_policy, socketmap:inet:127.0.0.1:8461:postfix proxy:tcp:127.0.0.1:8462"
        );
        assert_eq!(pf.param("empty_with_space"), "");
        assert_eq!(pf.param("queue_directory"), "/var/spool/postfix");
        assert_eq!(pf.params.len(), 5, "{:?}", pf.params);
        // The version falls back to the mail_version parameter.
        assert_eq!(pf.version, Some((3, 10, 5)));
    }

    #[test]
    fn parse_master_folded_lines() {
        let out = "smtp       unix  -       -       y       -       -       smtp\n\
                   relay      unix  -       -       n       -       -       smtp\n\
                   \x20   -o syslog_name=postfix/$service_name\n\
                   \x20   -o smtp_helo_timeout=5\n\
                   broken line\n\
                   \x20   -o not_attached=1\n\
                   tlsmgr     unix  -       -       -       1000?   1       tlsmgr\n\
                   postlog    unix-dgram n  -       n       -       1       postlogd\n";
        let m = parse_master(out);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].chroot, Some(true));
        assert_eq!(m[1].chroot, Some(false));
        assert_eq!(
            m[1].command,
            "smtp -o syslog_name=postfix/$service_name -o smtp_helo_timeout=5"
        );
        assert_eq!(m[2].chroot, None);
        assert_eq!(m[3].kind, "unix-dgram");
        assert_eq!(m[3].program(), "postlogd");
    }

    #[test]
    fn parse_versions() {
        assert_eq!(parse_version("3.7.11\n"), Some((3, 7, 11)));
        assert_eq!(parse_version("3.11-20250601"), Some((3, 11, 0)));
        assert_eq!(parse_version("3.10.0-RC2"), Some((3, 10, 0)));
        assert_eq!(parse_version("2.11"), Some((2, 11, 0)));
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("postconf: fatal"), None);
    }

    #[test]
    fn render_lists_findings_and_counts() {
        let found = vec![
            Finding::error("a".into(), "b".into()),
            Finding::warning("c".into(), "d".into()),
        ];
        assert_eq!(
            render(&found),
            "error: a\n  fix: b\n\nwarning: c\n  fix: d\n\n1 error, 1 warning\n"
        );
    }

    // ---- running postconf --------------------------------------------------------------------

    #[test]
    fn read_reports_a_missing_postconf() {
        let e = Postfix::read("/nonexistent/postconf", None).unwrap_err();
        assert!(e.contains("not found"), "{e}");
    }

    #[test]
    fn read_reports_a_broken_postfix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("postconf");
        std::fs::write(
            &bin,
            "#!/bin/sh\necho 'postconf: fatal: open /etc/postfix/main.cf: No such file or directory' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = Postfix::read(bin.to_str().unwrap(), Some(Path::new("/etc/x"))).unwrap_err();
        assert!(e.contains("-c /etc/x -h mail_version"), "{e}");
        assert!(e.contains("No such file or directory"), "{e}");
    }

    #[test]
    fn read_runs_the_real_postconf_when_installed() {
        let bin = "/usr/sbin/postconf";
        if !Path::new(bin).exists() {
            return;
        }
        // A config directory of our own: Debian's "No configuration" install (what CI does)
        // has no /etc/postfix/main.cf, and the machine's own settings are not the test's.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.cf"), "").unwrap();
        std::fs::write(
            dir.path().join("master.cf"),
            "smtp      inet  n       -       y       -       -       smtpd\n\
             smtp      unix  -       -       y       -       -       smtp\n",
        )
        .unwrap();
        let pf = Postfix::read(bin, Some(dir.path())).unwrap();
        assert!(pf.version.is_some());
        assert!(pf.params.contains_key("smtp_tls_policy_maps"));
        assert!(pf.master.iter().any(|e| e.program() == "smtp"));
        let e = Postfix::read(bin, Some(Path::new("/nonexistent/postfix"))).unwrap_err();
        assert!(e.contains("failed"), "{e}");
    }
}
