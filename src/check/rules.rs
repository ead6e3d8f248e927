//! The rules of `check`, one function per concern: whether `smtp_tls_policy_maps` reaches this
//! daemon ([`check_policy_maps`]), the SMTP client's trust anchors ([`check_trust_anchors`]),
//! the Postfix version against the attributes of the answers ([`check_versions`]), and DANE
//! next to MTA-STS ([`check_dane`]). Each turns a problem into a [`Finding`] with its fix.
//!
//! A policy answer Postfix cannot parse defers the mail with `4.7.5 client TLS configuration
//! problem`: `servername=` needs Postfix 3.4, the TLSRPT attributes need 3.10 (`TLSRPT_README`),
//! and exact MX matching (`smtp_tls_enforce_sts_mx_patterns`, `postconf(5)`) needs 3.10.5.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::findings::Finding;
use super::postconf::Postfix;
use super::tables::{
    Endpoint, Hit, Table, chroot_relative, collect_tables, inet_hit, inet_table, loopback,
    normalize, seen_path, socketmap_syntax, table_text, table_type,
};
use crate::config::{Config, DEFAULT_MAP, DEFAULT_PATH, ListenAddr};
use crate::proto::Protocol;

/// A table that is this daemon (or meant to be), with the config map that renders its answers.
pub(super) struct Used {
    table: String,
    map_key: String,
}

// ---- smtp_tls_policy_maps --------------------------------------------------------------------

/// Every listener of this daemon, with its protocol, in registry order.
fn listeners(cfg: &Config) -> impl Iterator<Item = (Protocol, &ListenAddr)> {
    cfg.listeners()
        .flat_map(|(p, ls)| ls.listen.iter().map(move |l| (p, l)))
}

/// The first TCP listener of `proto` that Postfix can connect to, as Postfix should name it.
fn tcp_listener(cfg: &Config, proto: Protocol) -> Option<SocketAddr> {
    listeners(cfg).find_map(|(p, l)| match l {
        ListenAddr::Tcp(a) if p == proto && a.port() != 0 => Some(loopback(a)),
        _ => None,
    })
}

/// The table line that reaches this daemon, for fix texts, and what else must change for it to.
///
/// Prefers, protocol by protocol in registry order, a TCP listener and then a UNIX socket that
/// smtp(8) can reach from its chroot.
fn suggested_table(pf: &Postfix, cfg: &Config) -> (String, Option<String>) {
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
    let unix_listener = |proto: Protocol| {
        listeners(cfg).find_map(|(p, l)| match l {
            ListenAddr::Unix(path) if p == proto => Some(path),
            _ => None,
        })
    };
    let mut unix_fallback = None;
    for proto in Protocol::all() {
        if let Some(a) = tcp_listener(cfg, proto) {
            return (inet_table(proto, a, "postfix"), None);
        }
        if !socketmap_syntax(proto) {
            continue;
        }
        let Some(path) = unix_listener(proto) else {
            continue;
        };
        let ty = table_type(proto);
        if chrooted == 0 {
            return (format!("{ty}:unix:{}:postfix", path.display()), None);
        }
        if let Some(rel) = chroot_relative(path, &queue_dir) {
            let rel = rel.trim_start_matches('/');
            return (format!("{ty}:unix:{}:postfix", inside(rel)), None);
        }
        unix_fallback = unix_fallback.or(Some(proto));
    }
    if let Some(proto) = unix_fallback {
        let qd = queue_dir.display();
        let (name, ty) = (proto.name(), table_type(proto));
        return (
            format!(
                "{ty}:unix:{}:postfix",
                inside(&format!("mta-sts-policyd/{name}.sock"))
            ),
            Some(format!(
                "smtp(8) is chrooted in {qd}: also set `listen = [\"unix:{qd}/mta-sts-policyd/{name}.sock\"]` under [{name}] in {}",
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
    listeners(cfg)
        .map(|(p, l)| format!("{} {l}", p.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one table is, relative to this daemon.
enum Status {
    /// Reaches a listener of the right protocol.
    Reaches,
    /// Meant for this daemon but broken or unverifiable: the finding says how.
    Daemon(Finding),
    /// Reaches a listener of another protocol.
    WrongProtocol(Finding),
    /// Something else (another daemon, a mistyped address).
    Other,
}

fn classify(t: &Table, pf: &Postfix, cfg: &Config) -> Status {
    match &t.endpoint {
        Endpoint::Inet { host, port } => classify_inet(t, host, port, pf, cfg),
        Endpoint::Unix(path) => classify_unix(t, path, pf, cfg),
    }
}

/// `t` reaches listener `l`, which speaks `lp`, another protocol: every lookup fails.
fn wrong_protocol(t: &Table, l: &ListenAddr, lp: Protocol, pf: &Postfix) -> Status {
    let replacement = if socketmap_syntax(lp) || matches!(l, ListenAddr::Tcp(_)) {
        match table_text(lp, &t.endpoint, "postfix") {
            Some(text) => format!("`{text}`"),
            None => format!("a {}:HOST:PORT table", table_type(lp)),
        }
    } else {
        format!(
            "a {} table (Postfix's {} client cannot use UNIX sockets)",
            table_type(t.proto),
            table_type(lp)
        )
    };
    Status::WrongProtocol(Finding::error(
        format!(
            "wrong protocol: `{}` in smtp_tls_policy_maps speaks {} to this daemon's {} listener {l}; every lookup fails and Postfix defers the mail (4.7.5 client TLS configuration problem)",
            t.text,
            t.proto.name(),
            lp.name()
        ),
        format!(
            "In {}, replace `{}` with {replacement} in smtp_tls_policy_maps, then run `postfix reload`",
            pf.main_cf(),
            t.text
        ),
    ))
}

/// An `inet:` (or tcp) table: compared with the TCP listeners by IP address and port.
fn classify_inet(t: &Table, host: &str, port: &str, pf: &Postfix, cfg: &Config) -> Status {
    let fam = pf.families();
    let mut maybe: Option<(String, &ListenAddr, SocketAddr)> = None;
    let mut other: Option<(&ListenAddr, Protocol)> = None;
    for (lp, l) in listeners(cfg) {
        let ListenAddr::Tcp(sa) = l else { continue };
        match inet_hit(host, port, *sa, fam) {
            Some(Hit::Exact) if lp == t.proto => return Status::Reaches,
            Some(Hit::Exact) => other = other.or(Some((l, lp))),
            Some(Hit::Maybe(why)) if lp == t.proto => maybe = maybe.or(Some((why, l, *sa))),
            _ => {}
        }
    }
    if let Some((l, lp)) = other {
        return wrong_protocol(t, l, lp, pf);
    }
    let Some((why, l, sa)) = maybe else {
        return Status::Other;
    };
    let literal = inet_table(
        t.proto,
        loopback(&sa),
        t.name.as_deref().unwrap_or("postfix"),
    );
    Status::Daemon(Finding::warning(
        format!(
            "cannot tell whether `{}` in smtp_tls_policy_maps reaches this daemon ({l}): {why}",
            t.text
        ),
        format!(
            "In {}, name the listener by its IP address and port: `{literal}` in smtp_tls_policy_maps",
            pf.main_cf()
        ),
    ))
}

/// The listener (of any protocol) on the UNIX socket at host path `p`.
fn unix_listener<'c>(cfg: &'c Config, p: &Path) -> Option<(Protocol, &'c ListenAddr)> {
    listeners(cfg).find(|(_, l)| matches!(l, ListenAddr::Unix(lp) if normalize(lp) == p))
}

/// A `unix:` table: the path each service that opens it sees (smtp(8), or proxymap(8) for
/// `proxy:`), chrooted or not, compared with the UNIX listeners.
fn classify_unix(t: &Table, path: &str, pf: &Postfix, cfg: &Config) -> Status {
    let queue_dir = pf.queue_directory();
    let views: Vec<(String, bool)> = if t.via_proxy {
        vec![("proxymap".to_string(), pf.proxymap_chroot())]
    } else {
        pf.smtp_clients()
    };
    let hits: Vec<Option<(Protocol, &ListenAddr)>> = views
        .iter()
        .map(|(_, chrooted)| unix_listener(cfg, &seen_path(path, *chrooted, &queue_dir)))
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
        return wrong_protocol(t, l, *lp, pf);
    }
    if hits.iter().any(Option::is_some) {
        return chroot_disagreement(t, path, &views, &hits, pf, cfg);
    }
    moved_by_chroot(t, path, &views, pf, cfg).unwrap_or(Status::Other)
}

/// The names of the services in `views` that are (or are not) chrooted.
fn services(views: &[(String, bool)], chrooted: bool) -> Vec<&str> {
    views
        .iter()
        .filter(|(_, c)| *c == chrooted)
        .map(|(s, _)| s.as_str())
        .collect()
}

/// Some services reach the socket and others do not: they disagree on the chroot.
fn chroot_disagreement(
    t: &Table,
    path: &str,
    views: &[(String, bool)],
    hits: &[Option<(Protocol, &ListenAddr)>],
    pf: &Postfix,
    cfg: &Config,
) -> Status {
    let queue_dir = pf.queue_directory();
    let qd = queue_dir.display();
    let main_cf = pf.main_cf();
    let (host_path, rel) = match views
        .iter()
        .zip(hits)
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
    let ty = table_type(t.proto);
    let fix = match rel {
        Some(rel) => format!(
            "In {main_cf}, replace `{}` with the path relative to queue_directory, which chrooted and unchrooted services resolve alike: `{ty}:unix:{rel}:{}` in smtp_tls_policy_maps; or give every smtp service the same chroot column in master.cf",
            t.text,
            t.name.as_deref().unwrap_or("postfix")
        ),
        None => format!(
            "Move this daemon's socket under {qd} (e.g. `listen = [\"unix:{qd}/mta-sts-policyd/{name}.sock\"]` in {}) and use `{ty}:unix:mta-sts-policyd/{name}.sock:postfix` (relative to queue_directory) in {main_cf}; or give every smtp service the same chroot column in master.cf",
            config_file(cfg),
            name = t.proto.name(),
        ),
    };
    Status::Daemon(Finding::error(
        format!(
            "smtp(8) services disagree on the chroot (chrooted: {}; not chrooted: {}), so `{}` reaches this daemon ({}) from some of them only; the others defer mail",
            services(views, true).join(", "),
            services(views, false).join(", "),
            t.text,
            host_path.display()
        ),
        fix,
    ))
}

/// Nothing reached: is it the chroot that moved an absolute path away from a listener of the
/// table's protocol?
fn moved_by_chroot(
    t: &Table,
    path: &str,
    views: &[(String, bool)],
    pf: &Postfix,
    cfg: &Config,
) -> Option<Status> {
    let chrooted = services(views, true);
    let literal = normalize(Path::new(path));
    if chrooted.is_empty() || !Path::new(path).is_absolute() {
        return None;
    }
    let (lp, l) = unix_listener(cfg, &literal)?;
    if lp != t.proto {
        return None;
    }
    let queue_dir = pf.queue_directory();
    let qd = queue_dir.display();
    let main_cf = pf.main_cf();
    let seen = seen_path(path, true, &queue_dir);
    let who = if t.via_proxy {
        "proxymap(8) runs chrooted (master.cf service `proxymap`, column 5 = y)".to_string()
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
    let (ty, section) = (table_type(t.proto), t.proto.name());
    let fix = match chroot_relative(&literal, &queue_dir) {
        Some(inside) => format!(
            "In {main_cf}, give the path as seen inside the chroot: replace `{text}` with `{proxy}{ty}:unix:{inside}:{name}` in smtp_tls_policy_maps, then run `postfix reload`"
        ),
        None => format!(
            "Put the socket inside the chroot, in a directory of its own (not private/ or public/): set `listen = [\"unix:{qd}/mta-sts-policyd/{section}.sock\"]` under [{section}] in {} and replace `{text}` with `{proxy}{ty}:unix:/mta-sts-policyd/{section}.sock:{name}` in smtp_tls_policy_maps in {main_cf}; or use TCP: `{proxy}{ty}:inet:127.0.0.1:8461:{name}` with `listen = [\"inet:127.0.0.1:8461\"]`",
            config_file(cfg)
        ),
    };
    Some(Status::Daemon(Finding::error(what, fix)))
}

/// The config map whose profile renders the answers `t` gets: the map the table names (unknown
/// names fall back to [`DEFAULT_MAP`], as the server does), or, for a protocol whose requests
/// name no map, the `map` of its listener section.
fn map_key(t: &Table, cfg: &Config) -> String {
    if !t.proto.names_map() {
        return cfg.profile_for(t.proto, None).0.to_string();
    }
    match &t.name {
        Some(n) if cfg.maps.contains_key(n) => n.clone(),
        _ => DEFAULT_MAP.to_string(),
    }
}

/// `smtp_tls_policy_maps` reaches a listener of this daemon with the right protocol, seen from
/// smtp(8)'s chroot. Returns the tables that are this daemon.
pub(super) fn check_policy_maps(
    pf: &Postfix,
    cfg: &Config,
    findings: &mut Vec<Finding>,
) -> Vec<Used> {
    let current = pf.param("smtp_tls_policy_maps");
    let mut tables = Vec::new();
    collect_tables(current, false, &mut tables);
    let mut used = Vec::new();
    let mut related = false;
    for t in &tables {
        let is_daemon = match classify(t, pf, cfg) {
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
            used.push(Used {
                table: t.text.clone(),
                map_key: map_key(t, cfg),
            });
        }
    }
    if !related {
        findings.push(never_asked(pf, cfg, current, &tables));
    }
    used
}

/// No table of `smtp_tls_policy_maps` (`current`) is this daemon.
fn never_asked(pf: &Postfix, cfg: &Config, current: &str, tables: &[Table]) -> Finding {
    let (suggested, note) = suggested_table(pf, cfg);
    let main_cf = pf.main_cf();
    let what = if current.is_empty() {
        "smtp_tls_policy_maps is empty, so Postfix never asks this daemon for MTA-STS policies"
            .to_string()
    } else {
        let queue_dir = pf.queue_directory();
        let mut seen = vec![listeners_text(cfg)];
        for t in tables {
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
    Finding::error(what, fix)
}

// ---- trust anchors -------------------------------------------------------------------------

/// The SMTP client has trust anchors for `secure` answers (`smtp_tls_CAfile`, `smtp_tls_CApath`,
/// `tls_append_default_CA`) and `smtp_tls_trust_anchor_file` does not replace them.
pub(super) fn check_trust_anchors(pf: &Postfix, findings: &mut Vec<Finding>) {
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

/// The Postfix version accepts the answers of the maps in use: `servername` needs 3.4, `tlsrpt`
/// 3.10, and exact MX matching 3.10.5 with `smtp_tls_enforce_sts_mx_patterns` on.
pub(super) fn check_versions(
    pf: &Postfix,
    cfg: &Config,
    used: &[Used],
    findings: &mut Vec<Finding>,
) {
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

/// DANE next to MTA-STS (RFC 8461 §2, RFC 7672). A map with `dane = true` answers `dane-only`
/// or `dane` itself, which Postfix can only act on with `smtp_dns_support_level = dnssec` (else
/// its DANE levels lose their DNSSEC and `dane` is only `may`). A map without it answers
/// `secure` for a domain that has both, which replaces the `dane` level of a DANE-configured
/// Postfix (a policy table answer overrides smtp_tls_security_level), while RFC 8461 §2 says
/// MTA-STS must not override a failing DANE validation.
pub(super) fn check_dane(pf: &Postfix, cfg: &Config, used: &[Used], findings: &mut Vec<Finding>) {
    if used.is_empty() {
        return;
    }
    let dnssec = pf
        .param("smtp_dns_support_level")
        .eq_ignore_ascii_case("dnssec");
    let (dane_maps, plain_maps): (Vec<&Used>, Vec<&Used>) = used
        .iter()
        .partition(|u| cfg.profile(&u.map_key).answer.dane);
    if let Some(u) = dane_maps.first()
        && !dnssec
    {
        findings.push(Finding::error(
            format!(
                "{} answers from DANE (`dane = true` in [maps.{}]), but smtp_dns_support_level is not dnssec: Postfix then cannot authenticate TLSA records and its `dane` level is only `may`",
                u.table, u.map_key
            ),
            format!(
                "Set `smtp_dns_support_level = dnssec` in {} with a validating resolver in /etc/resolv.conf (on loopback), then run `postfix reload`",
                pf.main_cf()
            ),
        ));
    }
    let level = pf.param("smtp_tls_security_level").to_ascii_lowercase();
    if plain_maps.is_empty() || !(level == "dane" || level == "dane-only") || !dnssec {
        return;
    }
    let u = plain_maps[0];
    findings.push(Finding::warning(
        format!(
            "smtp_tls_security_level = {level} with smtp_dns_support_level = dnssec: for a domain that has both DANE TLSA records and an MTA-STS policy, the `secure` answer of {} ([maps.{}] without `dane = true`) replaces DANE (a policy table answer overrides smtp_tls_security_level), while RFC 8461 §2 says MTA-STS must not override a failing DANE validation",
            u.table, u.map_key
        ),
        format!(
            "Set `dane = true` in [maps.{}] of {}: the daemon then answers `dane-only` or `dane` where the destination publishes DANE and MTA-STS elsewhere",
            u.map_key,
            config_file(cfg)
        ),
    ));
}
