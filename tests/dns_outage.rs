//! A resolver outage against the real binary: an unreachable nameserver costs one DNS timeout per
//! domain per `[cache] dns_failure_ttl`, not one per lookup, and a recovered resolver is asked
//! again once that period has passed. Also how `query` and the classifier report such failures.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::harness::{SocketmapClient, serve_child};
use mta_sts_policyd::config::Config;
use mta_sts_policyd::discovery::dns::Dns;
use mta_sts_policyd::discovery::{DnsError, TxtLookup};

const DNS_TIMEOUT: Duration = Duration::from_millis(300);
const FAILURE_TTL: Duration = Duration::from_secs(1);

fn config_text(dir: &Path, nameserver: SocketAddr) -> String {
    format!(
        r#"
[socketmap]
listen = ["inet:127.0.0.1:0"]
[tcp_table]
listen = []
[dns]
nameservers = ["{nameserver}"]
timeout = "300ms"
[https]
timeout = "1s"
[cache]
dir = "{state}"
dns_failure_ttl = "1s"
[control]
socket = ""
[maps.temp]
on_lookup_error = "temp"
"#,
        state = dir.join("state").display(),
    )
}

/// Queries the silent nameserver received since the last call (it never answers them).
fn queries_received(s: &UdpSocket) -> usize {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1500];
    let mut n = 0;
    while s.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// One socketmap lookup and how long it took.
async fn timed(c: &mut SocketmapClient, map: &str, key: &str) -> (String, Duration) {
    let t = Instant::now();
    let reply = c.query(map, key.as_bytes()).await;
    (reply, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_nameserver_costs_one_timeout_per_domain_per_dns_failure_ttl() {
    // Bound and never read: every query to it goes unanswered.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("outage.toml");
    std::fs::write(&cfg, config_text(dir.path(), silent.local_addr().unwrap())).unwrap();
    let (mut child, addr, _logs) = serve_child(env!("CARGO_BIN_EXE_mta-sts-policyd"), &cfg);
    let mut c = SocketmapClient::connect(addr).await;

    let (first, took) = timed(&mut c, "temp", "down.test").await;
    assert!(first.starts_with("TEMP "), "{first}");
    assert!(first.contains("timeout"), "{first}");
    assert!(took >= DNS_TIMEOUT - Duration::from_millis(50), "{took:?}");
    assert!(queries_received(&silent) >= 1);

    // Within the TTL: the same answer at once, in every map, without asking DNS.
    for _ in 0..5 {
        let (again, took) = timed(&mut c, "temp", "down.test").await;
        assert_eq!(
            again, first,
            "a remembered failure answers like the fresh one"
        );
        assert!(took < Duration::from_millis(50), "{took:?}");
    }
    let (notfound, took) = timed(&mut c, "postfix", "down.test").await;
    assert!(notfound.starts_with("NOTFOUND"), "{notfound}");
    assert!(took < Duration::from_millis(50), "{took:?}");
    assert_eq!(
        queries_received(&silent),
        0,
        "DNS is not asked within the TTL"
    );

    // Another domain is not covered by this domain's failure.
    let (_, took) = timed(&mut c, "temp", "other.test").await;
    assert!(took >= DNS_TIMEOUT - Duration::from_millis(50), "{took:?}");

    assert!(queries_received(&silent) >= 1);

    // After the TTL, DNS is asked again (and still times out).
    tokio::time::sleep(FAILURE_TTL + Duration::from_millis(100)).await;
    let (later, took) = timed(&mut c, "temp", "down.test").await;
    assert_eq!(later, first);
    assert!(took >= DNS_TIMEOUT - Duration::from_millis(50), "{took:?}");
    assert!(queries_received(&silent) >= 1, "asked again after the TTL");

    let _ = child.kill();
    let _ = child.wait();
    drop(silent);
}

/// `query` reports a DNS failure with its class and the exact answers the daemon would give:
/// TEMP with the same reason in a map with `on_lookup_error = "temp"`, NOTFOUND elsewhere.
#[tokio::test]
async fn query_reports_a_dns_failure_with_its_class_and_the_daemons_answers() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("query.toml");
    std::fs::write(&cfg, config_text(dir.path(), silent.local_addr().unwrap())).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mta-sts-policyd"))
            .arg("-c")
            .arg(&cfg)
            .args(["query", "down.test", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "dns-error", "{v}");
    assert_eq!(v["class"], "timeout", "{v}");
    assert_eq!(
        v["reason"], "TXT lookup failed [timeout]: DNS timeout",
        "{v}"
    );
    assert_eq!(
        v["answers"]["socketmap:temp"], "39:TEMP MTA-STS lookup failed: DNS timeout,",
        "{v}"
    );
    assert_eq!(v["answers"]["socketmap:default"], "9:NOTFOUND ,", "{v}");
    drop(silent);
}

/// hickory sends UDP queries from unconnected sockets (its `RuntimeProvider::bind_udp` contract
/// says so), and Linux reports ICMP port unreachable only on connected sockets: a nameserver
/// whose UDP port is closed is indistinguishable from one that never answers. A refused TCP
/// connection or an RCODE REFUSED answer is classified as refused (see `discovery::dns`). If a
/// hickory upgrade starts reporting ECONNREFUSED here, expect `DnsError::Refused` instead.
#[tokio::test]
async fn refused_udp_port_reads_as_a_timeout_because_hickory_cannot_see_it() {
    let closed = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let text = format!("[dns]\nnameservers = [\"{closed}\"]\ntimeout = \"300ms\"\n");
    let config = Config::parse(&text, None).unwrap();
    let dns = Dns::new(&config.dns).unwrap();
    match dns.sts_txt("refused.test").await {
        TxtLookup::Temp(e) => {
            assert_eq!(e, DnsError::Timeout, "{e}");
            assert_eq!(e.to_string(), "DNS timeout");
            assert_eq!(e.label(), "timeout");
        }
        other => panic!("{other:?}"),
    }
}
