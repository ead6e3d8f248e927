//! DANE first (RFC 8461 §2, RFC 7672) end to end: the real daemon on loopback, a `dane = true`
//! map beside plain ones on the same listeners, the test world's DNS playing a validating
//! resolver (`World::sign` sets `AD` for a zone), and a real validating resolver (unbound over a
//! locally signed hierarchy) for the `AD` path.
//!
//! Each case asks through the Postfix protocols and checks the exact reply Postfix would get.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::World;
use common::harness::{TestDaemon, config_text, enforce_body};
use common::unbound::{self, Unbound};
use mta_sts_policyd::config::Config;
use mta_sts_policyd::serve::control;
use serde_json::{Value, json};

const DANE_MAP: &str = "[maps.dane]\ndane = true\n[maps.danetlsrpt]\ndane = true\ntlsrpt = true\n";

const HASH: &[u8] = &[0xab; 32];

/// `domain` with an enforce MTA-STS policy for `mx.<domain>`, its MX, and the MX host's address.
async fn sts_and_mx(w: &World, domain: &str) {
    let mx = format!("mx.{domain}");
    w.good_domain(domain, "1", &enforce_body(&[&mx])).await;
    w.set_mx(domain, &[(10, &mx)]).await;
    w.set_a(&mx, Ipv4Addr::new(192, 0, 2, 25)).await;
}

fn secure(domain: &str) -> String {
    format!("OK secure match=mx.{domain} servername=hostname")
}

async fn ask(d: &TestDaemon, map: &str, key: &str) -> String {
    d.socketmap().await.query(map, key.as_bytes()).await
}

async fn ctl(socket: &Path, req: Value) -> Value {
    let lines = control::request(socket, &req, None).await.unwrap();
    lines.last().cloned().unwrap()
}

#[tokio::test]
async fn rfc8461_2_dane_map_answers_dane_only_while_the_plain_map_keeps_mta_sts() {
    let w = World::start().await;
    sts_and_mx(&w, "both.test").await;
    w.set_tlsa("_25._tcp.mx.both.test", &[(3, 1, 1, HASH)])
        .await;
    w.sign("both.test");
    let d = TestDaemon::start_with(&w, DANE_MAP).await;

    assert_eq!(ask(&d, "dane", "both.test").await, "OK dane-only");
    // Same listener, same moment: a map without dane = true still answers MTA-STS.
    assert_eq!(ask(&d, "postfix", "both.test").await, secure("both.test"));
    assert_eq!(
        d.tcp_table().await.get(b"both.test").await,
        "200 secure%20match=mx.both.test%20servername=hostname"
    );
    // Postfix's TLSRPT_README: the STS attributes are an error in a non-STS answer.
    assert_eq!(ask(&d, "danetlsrpt", "both.test").await, "OK dane-only");
    // Cached: asking again costs no DNS query.
    let before = w.dns_queries("_25._tcp.mx.both.test") + w.dns_queries("both.test");
    for _ in 0..5 {
        assert_eq!(ask(&d, "dane", "Both.Test.").await, "OK dane-only");
    }
    assert_eq!(
        w.dns_queries("_25._tcp.mx.both.test") + w.dns_queries("both.test"),
        before
    );
    d.daemon.shutdown().await;
}

#[tokio::test]
async fn rfc7672_partial_and_unusable_tlsa_answer_dane() {
    let w = World::start().await;
    // Two MX hosts, only one with TLSA.
    sts_and_mx(&w, "partial.test").await;
    w.set_mx(
        "partial.test",
        &[(10, "mx.partial.test"), (20, "mx2.partial.test")],
    )
    .await;
    w.set_a("mx2.partial.test", Ipv4Addr::new(192, 0, 2, 26))
        .await;
    w.set_tlsa("_25._tcp.mx.partial.test", &[(3, 1, 1, HASH)])
        .await;
    w.sign("partial.test");
    // Only PKIX-EE records (usage 1): unusable for SMTP (RFC 7672 §3.1).
    sts_and_mx(&w, "pkix.test").await;
    w.set_tlsa("_25._tcp.mx.pkix.test", &[(1, 1, 1, HASH)])
        .await;
    w.sign("pkix.test");
    let d = TestDaemon::start_with(&w, DANE_MAP).await;
    assert_eq!(ask(&d, "dane", "partial.test").await, "OK dane");
    assert_eq!(ask(&d, "dane", "pkix.test").await, "OK dane");
    d.daemon.shutdown().await;
}

#[tokio::test]
async fn unsigned_zone_or_signed_without_tlsa_gets_the_mta_sts_answer() {
    let w = World::start().await;
    // TLSA published but nothing authenticated: DANE cannot apply (RFC 7672 §2.2).
    sts_and_mx(&w, "unsigned.test").await;
    w.set_tlsa("_25._tcp.mx.unsigned.test", &[(3, 1, 1, HASH)])
        .await;
    // Signed, no TLSA anywhere.
    sts_and_mx(&w, "notlsa.test").await;
    w.sign("notlsa.test");
    // Unsigned and no MTA-STS policy: not found, as without DANE.
    w.set_mx("plain.test", &[(10, "mx.plain.test")]).await;
    w.set_a("mx.plain.test", Ipv4Addr::new(192, 0, 2, 27)).await;
    let d = TestDaemon::start_with(&w, DANE_MAP).await;
    assert_eq!(
        ask(&d, "dane", "unsigned.test").await,
        secure("unsigned.test")
    );
    assert_eq!(ask(&d, "dane", "notlsa.test").await, secure("notlsa.test"));
    assert_eq!(ask(&d, "dane", "plain.test").await, "NOTFOUND ");
    d.daemon.shutdown().await;
}

#[tokio::test]
async fn rfc7505_null_mx_and_nxdomain_are_not_found_even_with_a_policy() {
    let w = World::start().await;
    sts_and_mx(&w, "nullmx.test").await;
    w.set_mx("nullmx.test", &[(0, ".")]).await;
    w.sign("nullmx.test");
    w.sign("gone.test");
    let d = TestDaemon::start_with(&w, DANE_MAP).await;
    assert_eq!(ask(&d, "dane", "nullmx.test").await, "NOTFOUND ");
    assert_eq!(
        ask(&d, "postfix", "nullmx.test").await,
        secure("nullmx.test")
    );
    assert_eq!(ask(&d, "dane", "gone.test").await, "NOTFOUND ");
    d.daemon.shutdown().await;
}

#[tokio::test]
async fn rfc7672_2_1_1_failing_dns_on_a_signed_destination_is_temp_never_weaker() {
    let w = World::start().await;
    sts_and_mx(&w, "servfail.test").await;
    w.sign("servfail.test");
    w.servfail("_25._tcp.mx.servfail.test");
    sts_and_mx(&w, "slow.test").await;
    w.sign("slow.test");
    w.drop_queries("_25._tcp.mx.slow.test");
    let d = TestDaemon::start_with(&w, DANE_MAP).await;

    let got = ask(&d, "dane", "servfail.test").await;
    assert!(
        got.starts_with("TEMP DANE state unknown: TLSA _25._tcp.mx.servfail.test"),
        "{got}"
    );
    let t = Instant::now();
    let got = ask(&d, "dane", "slow.test").await;
    assert!(got.starts_with("TEMP "), "{got}");
    // Within dns.timeout (2 s) for the MX plus dns.timeout for the TLSA, and the deadline.
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert_eq!(
        d.tcp_table().await.get(b"servfail.test").await,
        // The tcp_table map is the default one (no DANE): MTA-STS as before.
        "200 secure%20match=mx.servfail.test%20servername=hostname"
    );
    // Once DNS answers, the next lookup learns the state: no failure is remembered.
    w.answer_normally("_25._tcp.mx.servfail.test");
    w.set_tlsa("_25._tcp.mx.servfail.test", &[(3, 1, 1, HASH)])
        .await;
    assert_eq!(ask(&d, "dane", "servfail.test").await, "OK dane-only");
    d.daemon.shutdown().await;
}

#[tokio::test]
async fn rfc7672_3_2_2_bracketed_host_keys_use_the_host_and_port_without_mx() {
    let w = World::start().await;
    w.set_a("relay.smart.test", Ipv4Addr::new(192, 0, 2, 30))
        .await;
    w.set_tlsa("_587._tcp.relay.smart.test", &[(2, 0, 1, HASH)])
        .await;
    w.sign("smart.test");
    let d = TestDaemon::start_with(&w, DANE_MAP).await;
    assert_eq!(
        ask(&d, "dane", "[relay.smart.test]:587").await,
        "OK dane-only"
    );
    // Port 25 has no TLSA: signed, no TLSA, no MTA-STS policy → not found.
    assert_eq!(ask(&d, "dane", "[relay.smart.test]").await, "NOTFOUND ");
    d.daemon.shutdown().await;
}

#[tokio::test]
async fn a_restart_serves_the_cached_dane_state_with_dns_down() {
    let w = World::start().await;
    sts_and_mx(&w, "kept.test").await;
    w.set_tlsa("_25._tcp.mx.kept.test", &[(3, 1, 1, HASH)])
        .await;
    w.sign("kept.test");
    let text = config_text(&w, DANE_MAP);
    let config = || Config::parse(&text, Some(Path::new("test.toml"))).expect("config");
    let d = TestDaemon::from_config(config()).await;
    assert_eq!(ask(&d, "dane", "kept.test").await, "OK dane-only");
    d.daemon.shutdown().await;

    // DNS now fails for everything the destination needs.
    for name in [
        "kept.test",
        "mx.kept.test",
        "_25._tcp.mx.kept.test",
        "_mta-sts.kept.test",
    ] {
        w.servfail(name);
    }
    let d = TestDaemon::from_config(config()).await;
    let before = w.dns_queries("kept.test");
    assert_eq!(ask(&d, "dane", "kept.test").await, "OK dane-only");
    assert_eq!(ask(&d, "postfix", "kept.test").await, secure("kept.test"));
    assert_eq!(
        w.dns_queries("kept.test"),
        before,
        "answered from the journal"
    );
    d.daemon.shutdown().await;
}

#[tokio::test]
async fn ctl_shows_the_dane_state_and_lists_by_level() {
    let w = World::start().await;
    sts_and_mx(&w, "shown.test").await;
    w.set_tlsa(
        "_25._tcp.mx.shown.test",
        &[(3, 1, 1, HASH), (0, 0, 1, HASH)],
    )
    .await;
    w.sign("shown.test");
    sts_and_mx(&w, "half.test").await;
    w.set_mx("half.test", &[(10, "mx.half.test"), (20, "mx2.half.test")])
        .await;
    w.set_a("mx2.half.test", Ipv4Addr::new(192, 0, 2, 31)).await;
    w.set_tlsa("_25._tcp.mx.half.test", &[(3, 1, 1, HASH)])
        .await;
    w.sign("half.test");
    let d = TestDaemon::start_with(&w, DANE_MAP).await;
    assert_eq!(ask(&d, "dane", "shown.test").await, "OK dane-only");
    assert_eq!(ask(&d, "dane", "half.test").await, "OK dane");
    let sock = w.dir().join("control.sock");

    let show = ctl(&sock, json!({"verb": "show", "domain": "shown.test"})).await;
    let dane = &show["dane"];
    assert_eq!(dane["verdict"], "dane-only", "{show}");
    assert_eq!(dane["mx_authenticated"], true);
    assert_eq!(dane["hosts"][0]["name"], "mx.shown.test");
    assert_eq!(dane["hosts"][0]["tlsa_authenticated"], true);
    let tlsa = dane["hosts"][0]["tlsa"].as_array().unwrap();
    assert_eq!(tlsa.len(), 2);
    assert!(
        tlsa.iter()
            .any(|t| t.as_str().unwrap().contains("unusable"))
    );
    // The exact bytes Postfix gets (socketmap: a netstring).
    assert_eq!(show["answers"]["socketmap:dane"], "12:OK dane-only,");
    let plain = secure("shown.test");
    assert_eq!(
        show["answers"]["socketmap:default"],
        format!("{}:{plain},", plain.len())
    );

    let list = ctl(&sock, json!({"verb": "list", "mode": "dane-only"})).await;
    let domains: Vec<&str> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["domain"].as_str().unwrap())
        .collect();
    assert_eq!(domains, ["shown.test"]);
    let list = ctl(&sock, json!({"verb": "list", "mode": "dane"})).await;
    assert_eq!(list["count"], 1);
    assert_eq!(list["entries"][0]["domain"], "half.test");

    let stats = ctl(&sock, json!({"verb": "stats"})).await;
    let m = &stats["metrics"];
    assert_eq!(m[r#"mta_sts_answers_by_level_total{level="dane-only"}"#], 1);
    assert_eq!(m[r#"mta_sts_dane_entries{verdict="dane"}"#], 1);
    let status = ctl(&sock, json!({"verb": "status"})).await;
    assert_eq!(status["dane_states"], 2);

    // evict and purge take the DANE state with them (memory and journal).
    let e = ctl(&sock, json!({"verb": "evict", "domain": "shown.test"})).await;
    assert_eq!(e["evicted"], true);
    let show = ctl(&sock, json!({"verb": "show", "domain": "shown.test"})).await;
    assert!(show.get("dane").is_none(), "{show}");
    let p = ctl(&sock, json!({"verb": "purge", "yes": true})).await;
    assert_eq!(p["purged"], 2, "half.test's policy and DANE state");
    let list = ctl(&sock, json!({"verb": "list", "mode": "dane"})).await;
    assert_eq!(list["count"], 0);
    d.daemon.shutdown().await;
}

/// The `AD` path through a real validator: unbound validates a locally signed hierarchy and
/// the daemon trusts what it says, and only that.
#[tokio::test]
async fn a_real_validating_resolver_decides_what_is_signed() {
    if !Unbound::available() {
        return;
    }
    let tlsa_hex = "ab".repeat(32);
    let signed = format!(
        "@ IN MX 10 mx.signed.test.\n\
         mx IN A 192.0.2.25\n\
         _25._tcp.mx IN TLSA 3 1 1 {tlsa_hex}\n"
    );
    let plain = format!(
        "@ IN MX 10 mx.plain.test.\n\
         mx IN A 192.0.2.26\n\
         _25._tcp.mx IN TLSA 3 1 1 {tlsa_hex}\n"
    );
    let u = tokio::task::spawn_blocking(move || Unbound::start(&signed, &plain))
        .await
        .unwrap();
    let w = World::start().await;
    let text = config_text(&w, DANE_MAP).replace(
        &format!("nameservers = [\"{}\"]", w.dns_addr()),
        &format!("nameservers = [\"{}\"]", u.addr),
    );
    let config = Config::parse(&text, Some(Path::new("test.toml"))).expect("config");
    let d = TestDaemon::from_config(config).await;
    // Signed zone, TLSA validated by unbound: dane-only.
    assert_eq!(ask(&d, "dane", "signed.test").await, "OK dane-only");
    // The same records in an insecure delegation: no AD, so DANE does not apply and, with no
    // MTA-STS policy published there, Postfix's own level (not found).
    assert_eq!(ask(&d, "dane", "plain.test").await, "NOTFOUND ");
    // Signatures that do not verify: unbound answers SERVFAIL, the daemon TEMP.
    let got = ask(&d, "dane", unbound::BOGUS).await;
    assert!(got.starts_with("TEMP "), "{got}");
    d.daemon.shutdown().await;
    drop(u);
}

/// `query` learns both states at once and prints the DANE state, per server, and the answer of
/// every map with it.
#[tokio::test]
async fn query_shows_both_states_and_the_answer_per_map() {
    let w = World::start().await;
    sts_and_mx(&w, "q.test").await;
    w.set_tlsa("_25._tcp.mx.q.test", &[(3, 1, 1, HASH)]).await;
    w.sign("q.test");
    let cfg = w.dir().join("query.toml");
    std::fs::write(&cfg, config_text(&w, DANE_MAP)).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-policyd"))
            .arg("-c")
            .arg(&cfg)
            .args(["query", "q.test"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mode: enforce"), "{text}");
    assert!(
        text.contains("DANE q.test: dane-only (MX authenticated, TTL"),
        "{text}"
    );
    assert!(
        text.contains("mx.q.test: addresses authenticated, TLSA [3 1 1 abab"),
        "{text}"
    );
    assert!(
        text.contains("answer socketmap:dane: 12:OK dane-only,"),
        "{text}"
    );
    assert!(
        text.contains(
            "answer socketmap:default: 45:OK secure match=mx.q.test servername=hostname,"
        ),
        "{text}"
    );
}

/// A `dane = true` map with a resolver that does not validate: the daemon says so at start,
/// at warn, naming the resolver; with a validating one it says that instead.
#[tokio::test]
async fn the_daemon_warns_at_start_when_the_resolver_does_not_validate() {
    let w = World::start().await;
    let cfg = w.dir().join("dane.toml");
    std::fs::write(&cfg, config_text(&w, DANE_MAP)).unwrap();
    let bin = env!("CARGO_BIN_EXE_mta-sts-policyd");
    let (mut child, _addr, rx) =
        tokio::task::spawn_blocking(move || common::harness::serve_child(bin, &cfg))
            .await
            .unwrap();
    let want = format!("{}", w.dns_addr());
    let found = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(l) if l.contains("does not validate DNSSEC") => return Some(l),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        None
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = found.expect("a warning that the resolver does not validate");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&want), "names the resolver: {line}");
}
