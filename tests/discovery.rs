//! RFC 8461 §3 discovery end to end: the real daemon, an in-process DNS server and an HTTPS server
//! with a test CA; every scenario is checked through the socketmap reply Postfix would get.

mod common;

use common::harness::{ConfigText, TestDaemon, enforce_body, good_world, good_world_and_daemon};
use common::{CertKind, Http, World};

const NOTFOUND: &str = "NOTFOUND ";

fn secure(matches: &str) -> String {
    format!("OK secure match={matches} servername=hostname")
}

/// Runs each (key, expected reply) on one connection, collecting every mismatch before failing so
/// one run shows all broken scenarios.
async fn check_all(d: &TestDaemon, cases: &[(&str, String)]) {
    let mut c = d.socketmap().await;
    let mut bad = Vec::new();
    for (key, want) in cases {
        let got = c.query("postfix", key.as_bytes()).await;
        if &got != want {
            bad.push(format!("{key}: want {want:?}, got {got:?}"));
        }
    }
    assert!(bad.is_empty(), "mismatches:\n{}", bad.join("\n"));
}

#[tokio::test]
async fn rfc8461_3_1_txt_record_scenarios() {
    let w = World::start().await;
    let body = |d: &str| enforce_body(&[&format!("mx1.{d}")]);

    w.good_domain("good.test", "20240101", &body("good.test"))
        .await;
    // No TXT record at all: the policy host exists but must not be asked.
    w.serve_policy("notxt.test", &body("notxt.test")).await;
    // A record that does not start with v=STSv1 is discarded (§3.1).
    w.set_txt("_mta-sts.notsts.test", &[&["v=spf1 -all; id=1"]])
        .await;
    w.serve_policy("notsts.test", &body("notsts.test")).await;
    // Two STS records: no policy (§3.1).
    w.set_txt(
        "_mta-sts.two.test",
        &[&["v=STSv1; id=1"], &["v=STSv1; id=2"]],
    )
    .await;
    w.serve_policy("two.test", &body("two.test")).await;
    // SPF beside STS: the SPF record is ignored.
    w.set_txt(
        "_mta-sts.spf.test",
        &[&["v=spf1 mx -all"], &["v=STSv1; id=spf1"]],
    )
    .await;
    w.serve_policy("spf.test", &body("spf.test")).await;
    // A look-alike version beside a valid record: "v=STSv10;" does not begin with "v=STSv1;",
    // so it is discarded and exactly one record is left (§3.1).
    w.set_txt(
        "_mta-sts.lookalike.test",
        &[&["v=STSv10; id=zzz"], &["v=STSv1; id=abc"]],
    )
    .await;
    w.serve_policy("lookalike.test", &body("lookalike.test"))
        .await;
    // Delegation through a CNAME (§8.2): the TXT is the provider's, the policy host ours.
    w.set_txt("_mta-sts.provider.test", &[&["v=STSv1; id=prov1"]])
        .await;
    w.set_cname("_mta-sts.alias.test", "_mta-sts.provider.test")
        .await;
    w.serve_policy("alias.test", &body("alias.test")).await;
    // One record in two character-strings, joined without a space (§3.1).
    w.set_txt("_mta-sts.split.test", &[&["v=STSv1; ", "id=split1"]])
        .await;
    w.serve_policy("split.test", &body("split.test")).await;
    // Bad ids: not alphanumeric, too long.
    w.set_txt("_mta-sts.badid.test", &[&["v=STSv1; id=2024-01-01"]])
        .await;
    w.serve_policy("badid.test", &body("badid.test")).await;
    w.set_txt(
        "_mta-sts.longid.test",
        &[&["v=STSv1; id=123456789012345678901234567890123"]],
    )
    .await;
    w.serve_policy("longid.test", &body("longid.test")).await;
    // An SERVFAIL TXT answer with nothing cached: no policy, and no fetch.
    w.servfail("_mta-sts.servfail.test");
    w.serve_policy("servfail.test", &body("servfail.test"))
        .await;

    let d = TestDaemon::start(&w).await;
    check_all(
        &d,
        &[
            ("good.test", secure("mx1.good.test")),
            ("notxt.test", NOTFOUND.into()),
            ("notsts.test", NOTFOUND.into()),
            ("two.test", NOTFOUND.into()),
            ("spf.test", secure("mx1.spf.test")),
            ("lookalike.test", secure("mx1.lookalike.test")),
            ("alias.test", secure("mx1.alias.test")),
            ("split.test", secure("mx1.split.test")),
            ("badid.test", NOTFOUND.into()),
            ("longid.test", NOTFOUND.into()),
            ("servfail.test", NOTFOUND.into()),
        ],
    )
    .await;
    for d in [
        "notxt.test",
        "notsts.test",
        "two.test",
        "badid.test",
        "longid.test",
        "servfail.test",
    ] {
        assert_eq!(w.fetches(d), 0, "{d}: no valid TXT record, so no fetch");
    }
    // The delegated policy was fetched from the policy domain's own host (§8.2).
    assert_eq!(w.fetches("alias.test"), 1);
    assert_eq!(w.fetches("provider.test"), 0);
}

#[tokio::test]
async fn rfc8461_3_3_http_scenarios() {
    let w = World::start().await;
    let body = |d: &str| enforce_body(&[&format!("mx.{d}")]);
    let mut cases: Vec<(&str, String)> = Vec::new();

    for (d, code) in [
        ("s404.test", 404),
        ("s500.test", 500),
        ("s301.test", 301),
        ("s302.test", 302),
        ("s307.test", 307),
    ] {
        w.set_sts(d, "1").await;
        let location = format!(
            "https://mta-sts.good.test:{}/.well-known/mta-sts.txt",
            w.https_port()
        );
        w.set_http(
            d,
            Http::status(code, (code / 100 == 3).then_some(location.as_str())),
        )
        .await;
        cases.push((d, NOTFOUND.into()));
    }
    // The redirect target serves a valid policy; following the redirect would be a bug.
    w.good_domain("good.test", "1", &body("good.test")).await;

    w.set_sts("html.test", "1").await;
    w.set_http("html.test", Http::ok(Some("text/html"), &body("html.test")))
        .await;
    cases.push(("html.test", NOTFOUND.into()));
    w.set_sts("charset.test", "1").await;
    w.set_http(
        "charset.test",
        Http::ok(Some("TEXT/Plain; charset=utf-8"), &body("charset.test")),
    )
    .await;
    cases.push(("charset.test", secure("mx.charset.test")));
    w.set_sts("noctype.test", "1").await;
    w.set_http("noctype.test", Http::ok(None, &body("noctype.test")))
        .await;
    cases.push(("noctype.test", NOTFOUND.into()));

    // Over 64 KiB: announced by Content-Length, and streamed in chunks without one.
    let mut big = body("big.test");
    big.push_str(&format!("x-pad: {}\n", "a".repeat(70_000)));
    w.set_sts("biglen.test", "1").await;
    w.set_http("biglen.test", Http::ok(Some("text/plain"), &big))
        .await;
    cases.push(("biglen.test", NOTFOUND.into()));
    w.set_sts("bigchunk.test", "1").await;
    w.set_http(
        "bigchunk.test",
        Http::Chunked {
            content_type: Some("text/plain".into()),
            body: big.clone().into_bytes(),
        },
    )
    .await;
    cases.push(("bigchunk.test", NOTFOUND.into()));
    // A small chunked body is fine.
    w.set_sts("chunk.test", "1").await;
    w.set_http(
        "chunk.test",
        Http::Chunked {
            content_type: Some("text/plain".into()),
            body: body("chunk.test").into_bytes(),
        },
    )
    .await;
    cases.push(("chunk.test", secure("mx.chunk.test")));
    // Exactly 64 KiB is allowed.
    let mut exact = body("exact.test");
    let pad = 65_536 - exact.len() - "x-pad: \n".len();
    exact.push_str(&format!("x-pad: {}\n", "a".repeat(pad)));
    assert_eq!(exact.len(), 65_536);
    w.set_sts("exact.test", "1").await;
    w.set_http("exact.test", Http::ok(Some("text/plain"), &exact))
        .await;
    cases.push(("exact.test", secure("mx.exact.test")));
    // The policy host has no address.
    w.set_sts("noaddr.test", "1").await;
    cases.push(("noaddr.test", NOTFOUND.into()));

    let d = TestDaemon::start(&w).await;
    check_all(&d, &cases).await;
    assert_eq!(w.fetches("good.test"), 0, "redirects must not be followed");
    assert_eq!(w.fetches("s301.test"), 1);

    // RFC 8461 §3.3: a failed fetch is not retried for five minutes.
    check_all(&d, &[("s404.test", NOTFOUND.into())]).await;
    assert_eq!(w.fetches("s404.test"), 1, "back-off after a failed fetch");
}

#[tokio::test]
async fn rfc8461_3_2_policy_file_scenarios() {
    let w = World::start().await;
    let mut cases: Vec<(&str, String)> = Vec::new();
    let policies: &[(&str, &str, Option<&str>)] = &[
        (
            "crlf.test",
            "version: STSv1\r\nmode: enforce\r\nmx: mx.crlf.test\r\nmax_age: 86400\r\n",
            Some("mx.crlf.test"),
        ),
        (
            "multi.test",
            "version: STSv1\nmode: enforce\nmx: mail.multi.test\nmx: *.multi.test\nmx: backupmx.other.test\nmax_age: 604800\n",
            Some("mail.multi.test:.multi.test:backupmx.other.test"),
        ),
        (
            "upper.test",
            "version: STSv1\nmode: enforce\nmx: MX.Upper.Test\nmx: mx.upper.test\nmax_age: 86400\n",
            Some("mx.upper.test"),
        ),
        (
            "noversion.test",
            "mode: enforce\nmx: mx.noversion.test\nmax_age: 86400\n",
            None,
        ),
        (
            "nomode.test",
            "version: STSv1\nmx: mx.nomode.test\nmax_age: 86400\n",
            None,
        ),
        (
            "nomaxage.test",
            "version: STSv1\nmode: enforce\nmx: mx.nomaxage.test\n",
            None,
        ),
        (
            "badmode.test",
            "version: STSv1\nmode: Enforce\nmx: mx.badmode.test\nmax_age: 86400\n",
            None,
        ),
        (
            "nomx.test",
            "version: STSv1\nmode: enforce\nmax_age: 86400\n",
            None,
        ),
        (
            "ipmx.test",
            "version: STSv1\nmode: enforce\nmx: 192.0.2.1\nmax_age: 86400\n",
            None,
        ),
        (
            "unknown.test",
            "version: STSv1\nmode: enforce\nfoo: bar baz\nmx: mx.unknown.test\nmax_age: 86400\n",
            Some("mx.unknown.test"),
        ),
        (
            // RFC 8461 §3.2: a repeated field counts once, the first time.
            "repeat.test",
            "version: STSv1\nmode: enforce\nmode: testing\nmx: mx.repeat.test\nmax_age: 86400\nmax_age: 0\n",
            Some("mx.repeat.test"),
        ),
        (
            // RFC 8461 §3.2 allows at most 31557600; a larger max_age is capped, not refused.
            "longage.test",
            "version: STSv1\nmode: enforce\nmx: mx.longage.test\nmax_age: 31557601\n",
            Some("mx.longage.test"),
        ),
        (
            // A line outside the §3.2 grammar (no colon) invalidates the whole policy.
            "badline.test",
            "version: STSv1\nmode: enforce\nmx: mx.badline.test\nmax_age: 86400\nthis line has no colon\n",
            None,
        ),
        (
            "testing.test",
            "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n",
            None,
        ),
        (
            "none.test",
            "version: STSv1\nmode: none\nmax_age: 86400\n",
            None,
        ),
    ];
    for (d, body, want) in policies {
        w.good_domain(d, "1", body).await;
        cases.push((d, want.map(secure).unwrap_or_else(|| NOTFOUND.into())));
    }
    let d = TestDaemon::start(&w).await;
    check_all(&d, &cases).await;

    // Map profiles: strict_testing enforces testing; servername can be left out; none stays
    // NOTFOUND everywhere (never the Postfix level "none").
    let mut c = d.socketmap().await;
    assert_eq!(
        c.query("strict", b"testing.test").await,
        secure("mx.testing.test")
    );
    assert_eq!(c.query("strict", b"none.test").await, NOTFOUND);
    assert_eq!(
        c.query("nosni", b"crlf.test").await,
        "OK secure match=mx.crlf.test"
    );
    assert_eq!(
        c.query("tlsrpt", b"multi.test").await,
        "OK secure match=mail.multi.test:.multi.test:backupmx.other.test servername=hostname \
         policy_type=sts policy_domain=multi.test mx_host_pattern=mail.multi.test \
         mx_host_pattern=*.multi.test mx_host_pattern=backupmx.other.test \
         { policy_string = version: STSv1 } { policy_string = mode: enforce } \
         { policy_string = mx: mail.multi.test } { policy_string = mx: *.multi.test } \
         { policy_string = mx: backupmx.other.test } { policy_string = max_age: 604800 }"
    );
    // Unknown map names use the default profile.
    assert_eq!(c.query("other", b"testing.test").await, NOTFOUND);
}

#[tokio::test]
async fn rfc8461_3_3_certificate_scenarios() {
    let w = World::start().await;
    let mut cases: Vec<(&str, String)> = Vec::new();
    for (d, kind) in [
        ("expired.test", CertKind::Expired),
        ("wronghost.test", CertKind::WrongHost),
        ("selfsigned.test", CertKind::SelfSigned),
        ("untrusted.test", CertKind::UntrustedCa),
        ("nointermediate.test", CertKind::MissingIntermediate),
    ] {
        w.good_domain(d, "1", &enforce_body(&[&format!("mx.{d}")]))
            .await;
        w.set_cert(d, kind);
        cases.push((d, NOTFOUND.into()));
    }
    w.good_domain("good.test", "1", &enforce_body(&["mx.good.test"]))
        .await;
    cases.push(("good.test", secure("mx.good.test")));
    let d = TestDaemon::start(&w).await;
    check_all(&d, &cases).await;
    for (d, _) in &cases[..5] {
        assert_eq!(
            w.fetches(d),
            0,
            "{d}: the TLS handshake must fail before any request is sent"
        );
    }
}

#[tokio::test]
async fn rfc8461_3_4_lookup_keys() {
    let w = good_world().await;
    w.good_domain("smart.good.test", "1", &enforce_body(&["smart.good.test"]))
        .await;
    w.good_domain(
        "xn--bcher-kva.test",
        "1",
        &enforce_body(&["mx.xn--bcher-kva.test"]),
    )
    .await;
    let d = TestDaemon::start(&w).await;
    let mut c = d.socketmap().await;
    let good = secure("mx.good.test");
    let keys: Vec<(Vec<u8>, String)> = vec![
        (b"GOOD.Test.".to_vec(), good.clone()),
        (b"[smart.good.test]".to_vec(), secure("smart.good.test")),
        (b"[smart.good.test]:25".to_vec(), secure("smart.good.test")),
        (b"good.test:25".to_vec(), good.clone()),
        (
            "bücher.test".as_bytes().to_vec(),
            secure("mx.xn--bcher-kva.test"),
        ),
        (b"[192.0.2.1]".to_vec(), NOTFOUND.into()),
        (b"[ipv6:2001:db8::1]:25".to_vec(), NOTFOUND.into()),
        (b".good.test".to_vec(), NOTFOUND.into()),
        (
            format!("{}.good.test", "a".repeat(64)).into_bytes(),
            NOTFOUND.into(),
        ),
        (b"a..good.test".to_vec(), NOTFOUND.into()),
        ("x".repeat(300).into_bytes(), NOTFOUND.into()),
        (
            vec![0xff, 0x00, 0x1b, b'[', 0x80, b' ', b':'],
            NOTFOUND.into(),
        ),
        (b"/var/spool/lmtp".to_vec(), NOTFOUND.into()),
    ];
    let mut bad = Vec::new();
    for (key, want) in &keys {
        // One connection for all keys: each bad key must leave it usable.
        let got = c.query("postfix", key).await;
        if &got != want {
            bad.push(format!(
                "{:?}: want {want:?}, got {got:?}",
                String::from_utf8_lossy(key)
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    // Parent-domain probes and literals never reach DNS (RFC 8461 §3.4).
    assert_eq!(w.dns_queries("_mta-sts.good.test"), 1);
    assert_eq!(c.query("postfix", b"good.test").await, good);
}

#[tokio::test]
async fn hanging_policy_host_answers_within_deadline_and_others_meanwhile() {
    let w = World::start().await;
    w.set_sts("hang.test", "1").await;
    w.set_http("hang.test", Http::Hang).await;
    w.set_sts("hangtls.test", "1").await;
    w.set_http("hangtls.test", Http::HangTls).await;
    w.good_domain("good.test", "1", &enforce_body(&["mx.good.test"]))
        .await;
    let d = TestDaemon::start(&w).await;

    let started = tokio::time::Instant::now();
    let hang = tokio::spawn({
        let addr = d.socketmap;
        async move {
            let mut c = common::harness::SocketmapClient::connect(addr).await;
            c.query("postfix", b"hang.test").await
        }
    });
    let hangtls = tokio::spawn({
        let addr = d.socketmap;
        async move {
            let mut c = common::harness::SocketmapClient::connect(addr).await;
            c.query("postfix", b"hangtls.test").await
        }
    });
    // While both hang, another domain is answered promptly.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let t = tokio::time::Instant::now();
    assert_eq!(d.ask("good.test").await, secure("mx.good.test"));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "other domains must not wait for a hanging host ({:?})",
        t.elapsed()
    );
    assert_eq!(hang.await.unwrap(), NOTFOUND);
    assert_eq!(hangtls.await.unwrap(), NOTFOUND);
    let waited = started.elapsed();
    // https.timeout is 3 s in the harness; the answer comes at that deadline, not Postfix's 100 s.
    assert!(
        waited >= std::time::Duration::from_secs(2) && waited < std::time::Duration::from_secs(6),
        "answered after {waited:?}"
    );
}

#[tokio::test]
async fn concurrent_cold_lookups_share_one_discovery() {
    // 1,000 clients, each on its own connection like 1,000 smtp(8) processes; the daemon is in
    // this process, so both ends count against our descriptors.
    const CLIENTS: usize = 1_000;
    let limit = common::raise_fd_limit(2 * CLIENTS as u64 + 500);
    assert!(
        limit >= 2 * CLIENTS as u64 + 200,
        "open files limit {limit} is too low for {CLIENTS} loopback connections"
    );
    let (w, d) = good_world_and_daemon().await;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let addr = d.socketmap;
        tasks.push(tokio::spawn(async move {
            let mut c = common::harness::SocketmapClient::connect(addr).await;
            c.query("postfix", b"good.test").await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), secure("mx.good.test"));
    }
    assert_eq!(w.dns_queries("_mta-sts.good.test"), 1, "one TXT query");
    assert_eq!(w.fetches("good.test"), 1, "one HTTPS fetch");
}

#[tokio::test]
async fn cached_policy_is_answered_without_network_work() {
    let w = good_world().await;
    w.set_txt("_mta-sts.none-here.test", &[]).await;
    let d = TestDaemon::start(&w).await;
    let mut c = d.socketmap().await;
    for _ in 0..20 {
        assert_eq!(
            c.query("postfix", b"good.test").await,
            secure("mx.good.test")
        );
        assert_eq!(c.query("postfix", b"none-here.test").await, NOTFOUND);
    }
    assert_eq!(w.dns_queries("_mta-sts.good.test"), 1);
    assert_eq!(w.fetches("good.test"), 1);
    // "No policy" is remembered too (negative cache).
    assert_eq!(w.dns_queries("_mta-sts.none-here.test"), 1);
    // With DNS and HTTPS now failing, the cached policy is still served (RFC 8461 §3.3).
    w.servfail("_mta-sts.good.test");
    w.set_http("good.test", Http::status(500, None)).await;
    assert_eq!(
        c.query("postfix", b"good.test").await,
        secure("mx.good.test")
    );
}

#[tokio::test]
async fn on_lookup_error_temp_defers_failures_but_not_domains_without_policy() {
    let w = World::start().await;
    w.set_sts("broken.test", "1").await;
    w.set_http("broken.test", Http::status(500, None)).await;
    w.servfail("_mta-sts.dnsfail.test");
    w.good_domain("good.test", "1", &enforce_body(&["mx.good.test"]))
        .await;
    let d = TestDaemon::start_with(&w, "[maps.failclosed]\non_lookup_error = \"temp\"\n").await;
    let mut c = d.socketmap().await;
    let temp = "TEMP MTA-STS lookup failed: ";
    let got = c.query("failclosed", b"broken.test").await;
    assert!(
        got.starts_with(temp) && got.contains("HTTP status 500"),
        "{got}"
    );
    // During the five-minute back-off the failure is remembered, and still deferred.
    let got = c.query("failclosed", b"broken.test").await;
    assert!(got.starts_with(temp), "{got}");
    assert_eq!(w.fetches("broken.test"), 1);
    let got = c.query("failclosed", b"dnsfail.test").await;
    assert!(got.starts_with(temp), "{got}");
    // No TXT record is not a failure: Postfix's own TLS level applies.
    assert_eq!(c.query("failclosed", b"nothing.test").await, NOTFOUND);
    assert_eq!(
        c.query("failclosed", b"good.test").await,
        secure("mx.good.test")
    );
    // The default map answers the same failures with NOTFOUND (RFC 8461 §3.3).
    assert_eq!(c.query("postfix", b"broken.test").await, NOTFOUND);
}

#[tokio::test]
async fn policy_hosts_on_internal_addresses_are_not_fetched_by_default() {
    let w = good_world().await;
    // The world's hosts are on 127.0.0.1: with the default setting the daemon must refuse them.
    let text = ConfigText::of(&w).replace(
        "allow_private_addresses = true",
        "allow_private_addresses = false",
    );
    let d = text.start().await;
    assert_eq!(d.ask("good.test").await, NOTFOUND);
    assert_eq!(
        w.fetches("good.test"),
        0,
        "no connection to an internal address"
    );
    let path = w.dir().join("private.toml");
    std::fs::write(&path, text.as_str()).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-policyd"))
            .arg("-c")
            .arg(&path)
            .args(["query", "good.test"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("internal addresses (127.0.0.1)"), "{text}");
}
