//! Tests of [`analyze`](super::analyze) on `postconf` output: the fixtures in
//! `tests/fixtures/postconf/` (real Postfix installs) and hand-made configurations.

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

const DEBIAN_DEFAULT: &str = include_str!("../../tests/fixtures/postconf/debian-3.7-default.txt");
const GOOD: &str = include_str!("../../tests/fixtures/postconf/good-3.7.txt");
const UNIX_CHROOT: &str = include_str!("../../tests/fixtures/postconf/unix-chroot-3.7.txt");
const UNIX_CHROOT_OK: &str = include_str!("../../tests/fixtures/postconf/unix-chroot-ok-3.7.txt");
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
        found[0]
            .fix
            .contains("`listen = [\"unix:/var/spool/postfix/mta-sts-policyd/socketmap.sock\"]`"),
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
fn rfc8461_2_a_dane_map_is_not_overridden_and_needs_dnssec_in_postfix() {
    let mut pf = load(DANE);
    // The map the fixture's main.cf names answers from DANE: no override warning.
    let dane_all = "[maps.default]\ndane = true\n[maps.postfix]\ndane = true\n";
    assert_findings(&analyze(&pf, &cfg(dane_all)), &[]);
    // Without DNSSEC in Postfix, DANE answers lose their meaning: an error with its fix.
    pf.params
        .insert("smtp_dns_support_level".into(), "enabled".into());
    let found = analyze(&pf, &cfg(dane_all));
    assert_findings(
        &found,
        &[(Severity::Error, "smtp_dns_support_level is not dnssec")],
    );
    assert!(found[0].fix.contains("smtp_dns_support_level = dnssec"));
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
