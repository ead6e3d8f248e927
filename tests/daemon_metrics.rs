//! The daemon's `/metrics` endpoint, scraped after real lookups: the counters an operator's
//! dashboard relies on move as the lookups happened.

mod common;

use std::collections::HashMap;

use common::Http;
use common::harness::{TestDaemon, good_world};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body.split("\r\n\r\n")
        .nth(1)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn metrics_count_lookups_discoveries_and_cache_entries() {
    let w = good_world().await;
    w.good_domain(
        "testing.test",
        "1",
        "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n",
    )
    .await;
    w.set_sts("broken.test", "1").await;
    w.set_http("broken.test", Http::ok(Some("text/html"), "x"))
        .await;
    let d = TestDaemon::start_with(&w, "[metrics]\nlisten = \"inet:127.0.0.1:0\"\n").await;
    let addr = d.daemon.metrics_addr().expect("metrics listener");
    let mut c = d.socketmap().await;
    for key in [
        "good.test",
        "good.test",
        "testing.test",
        "broken.test",
        "none.test",
    ] {
        c.query("postfix", key.as_bytes()).await;
    }
    let mut t = d.tcp_table().await;
    t.get(b"good.test").await;

    let m = scrape(addr).await;
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("missing series {k}"));
    assert_eq!(
        get(r#"mta_sts_lookups_total{protocol="socketmap",map="default",answer="found"}"#),
        2.0
    );
    assert_eq!(
        get(r#"mta_sts_lookups_total{protocol="socketmap",map="default",answer="notfound"}"#),
        3.0
    );
    assert_eq!(
        get(r#"mta_sts_lookups_total{protocol="tcp_table",map="default",answer="found"}"#),
        1.0
    );
    // The map name "postfix" has no [maps.postfix]: the default profile answered, so the
    // lookups are labelled as `ctl show` names them, never "other".
    assert_eq!(
        get(r#"mta_sts_lookups_total{protocol="socketmap",map="other",answer="found"}"#),
        0.0
    );
    assert_eq!(get(r#"mta_sts_discoveries_total{outcome="policy"}"#), 2.0);
    assert_eq!(
        get(r#"mta_sts_discoveries_total{outcome="content-type"}"#),
        1.0
    );
    assert_eq!(get(r#"mta_sts_discoveries_total{outcome="nxdomain"}"#), 1.0);
    assert_eq!(get("mta_sts_cache_misses_total"), 4.0);
    assert_eq!(get("mta_sts_cache_hits_total"), 2.0);
    assert_eq!(get(r#"mta_sts_cache_entries{mode="enforce"}"#), 1.0);
    assert_eq!(get(r#"mta_sts_cache_entries{mode="testing"}"#), 1.0);
    // "none.test" remembered as no policy; "broken.test" as a back-off.
    assert_eq!(get(r#"mta_sts_cache_entries{mode="negative"}"#), 2.0);
    assert_eq!(get("mta_sts_connections"), 2.0);
    // The harness leaves cache.max_entries at its default.
    assert_eq!(get("mta_sts_cache_max_entries"), 1_000_000.0);
    assert_eq!(get("mta_sts_lookup_duration_seconds_count"), 6.0);
}
