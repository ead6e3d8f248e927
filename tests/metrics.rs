//! The `/metrics` HTTP endpoint over real sockets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mta_sts_policyd::metrics::{
    Answer, FleetError, FleetLookup, GaugeFn, Gauges, Metrics, Outcome, Protocol,
};
use mta_sts_policyd::serve::metrics_http::{MAX_REQUEST_HEAD, REQUEST_TIMEOUT, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Generous bound for anything that must not hang.
const GUARD: Duration = Duration::from_secs(30);

struct Server {
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let metrics = Arc::new(Metrics::with_maps(&["default", "tls\"rpt"]));
    let gauges: Arc<GaugeFn> = Arc::new(|| Gauges {
        entries_enforce: 3,
        entries_testing: 2,
        entries_none: 1,
        entries_negative: 5,
        expiring_within_day: 1,
        connections: 7,
        journal_read_only: 0,
        dane_entries: [4, 3, 0, 0, 0, 0],
        cache_max_entries: 100,
    });
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, metrics.clone(), gauges, rx));
    Server {
        addr,
        metrics,
        shutdown: tx,
        task,
    }
}

/// Sends `request`, reads until the server closes; the raw response.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut out))
        .await
        .expect("server closes the connection")
        .expect("read");
    out
}

fn split(resp: &[u8]) -> (String, String) {
    let text = String::from_utf8(resp.to_vec()).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    (head.to_string(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Parses one sample line `name{labels} value` strictly: a valid metric name, well-formed
/// labels with escaped values, and a numeric value.
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit()),
        "bad metric name in {line:?}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let close;
        loop {
            // label name
            let start = chars.peek().expect("label").0;
            let mut eq = None;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    eq = Some(i);
                    break;
                }
                assert!(
                    c.is_ascii_alphanumeric() || c == '_',
                    "label name: {line:?}"
                );
            }
            let eq = eq.expect("label =");
            let lname = r[start..eq].to_string();
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
            let mut value = String::new();
            loop {
                match chars.next().expect("unterminated label value").1 {
                    '\\' => match chars.next().expect("escape").1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => panic!("bad escape \\{c} in {line:?}"),
                    },
                    '"' => break,
                    '\n' => panic!("raw line feed in {line:?}"),
                    c => value.push(c),
                }
            }
            assert!(labels.insert(lname, value).is_none(), "dup label: {line:?}");
            match chars.next().expect("label separator") {
                (_, ',') => continue,
                (i, '}') => {
                    close = i;
                    break;
                }
                (_, c) => panic!("unexpected {c:?} in {line:?}"),
            }
        }
        rest = &r[close + 1..];
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before value: {line:?}"));
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value: {line:?}")),
    };
    (name.to_string(), labels, v)
}

#[tokio::test]
async fn scrape_parses_and_every_sample_has_a_declared_type() {
    let srv = start().await;
    srv.metrics.lookup(
        Protocol::from_name("socketmap").expect("registered"),
        "tls\"rpt",
        Answer::Found,
        Duration::from_micros(300),
    );
    srv.metrics.lookup(
        Protocol::from_name("tcp_table").expect("registered"),
        "unknown",
        Answer::Temp,
        Duration::from_millis(2),
    );
    srv.metrics.cache(false);
    srv.metrics.discovery(Outcome::NxDomain);
    srv.metrics.refresh(true);
    srv.metrics.connection_evicted();
    srv.metrics.connection_evicted();
    srv.metrics.fleet().lookup(FleetLookup::Hit);
    srv.metrics.fleet().error(FleetError::Oom);
    srv.metrics.fleet().publish(false);

    let resp = exchange(srv.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (head, body) = split(&resp);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(header(&head, "connection"), Some("close"));
    assert_eq!(
        header(&head, "content-length").map(|v| v.parse::<usize>().expect("length")),
        Some(body.len())
    );

    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = 0;
    let mut samples: Vec<(String, BTreeMap<String, String>, f64)> = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(matches!(kind, "counter" | "gauge" | "histogram"), "{line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice: {line}"
            );
        } else if line.starts_with("# HELP ") {
            helps += 1;
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            samples.push(parse_sample(line));
        }
    }
    assert_eq!(helps, types.len());
    assert!(!samples.is_empty());
    for (name, labels, v) in &samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("{name} has no TYPE"));
        match kind.as_str() {
            "counter" => {
                assert!(name.ends_with("_total"), "{name}");
                assert!(*v >= 0.0 && v.fract() == 0.0, "{name} {v}");
            }
            "gauge" => assert!(*v >= 0.0, "{name} {v}"),
            _ => {
                if name.ends_with("_bucket") {
                    assert!(labels.contains_key("le"), "{name}");
                }
            }
        }
    }

    let get = |name: &str, want: &[(&str, &str)]| -> f64 {
        let matching: Vec<f64> = samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && l.len() == want.len()
                    && want
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(matching.len(), 1, "{name} {want:?}");
        matching[0]
    };
    assert_eq!(
        get(
            "mta_sts_lookups_total",
            &[
                ("protocol", "socketmap"),
                ("map", "tls\"rpt"),
                ("answer", "found")
            ]
        ),
        1.0
    );
    assert_eq!(
        get(
            "mta_sts_lookups_total",
            &[
                ("protocol", "tcp_table"),
                ("map", "other"),
                ("answer", "temp")
            ]
        ),
        1.0
    );
    assert_eq!(get("mta_sts_cache_misses_total", &[]), 1.0);
    assert_eq!(
        get("mta_sts_discoveries_total", &[("outcome", "nxdomain")]),
        1.0
    );
    assert_eq!(
        get("mta_sts_discoveries_total", &[("outcome", "policy")]),
        0.0
    );
    assert_eq!(get("mta_sts_refreshes_total", &[("result", "ok")]), 1.0);
    assert_eq!(get("mta_sts_cache_entries", &[("mode", "negative")]), 5.0);
    assert_eq!(get("mta_sts_connections", &[]), 7.0);
    assert_eq!(
        get("mta_sts_dane_entries", &[("verdict", "dane-only")]),
        4.0
    );
    assert_eq!(get("mta_sts_dane_entries", &[("verdict", "dane")]), 3.0);
    assert_eq!(types["mta_sts_dane_entries"], "gauge");
    assert_eq!(types["mta_sts_answers_by_level_total"], "counter");
    assert_eq!(
        get("mta_sts_dane_discoveries_total", &[("outcome", "failed")]),
        0.0
    );
    assert_eq!(get("mta_sts_connections_evicted_total", &[]), 2.0);
    assert_eq!(types["mta_sts_connections_evicted_total"], "counter");
    assert_eq!(get("mta_sts_policies_expiring_within_day", &[]), 1.0);
    assert_eq!(get("mta_sts_cache_max_entries", &[]), 100.0);
    assert_eq!(types["mta_sts_cache_max_entries"], "gauge");
    assert_eq!(
        get("mta_sts_fleet_lookups_total", &[("result", "hit")]),
        1.0
    );
    assert_eq!(
        get("mta_sts_fleet_lookups_total", &[("result", "miss")]),
        0.0
    );
    assert_eq!(get("mta_sts_fleet_errors_total", &[("kind", "oom")]), 1.0);
    assert_eq!(get("mta_sts_fleet_errors_total", &[("kind", "auth")]), 0.0);
    assert_eq!(
        get("mta_sts_fleet_publishes_total", &[("result", "failed")]),
        1.0
    );
    assert_eq!(get("mta_sts_fleet_up", &[]), 0.0);
    assert_eq!(types["mta_sts_fleet_up"], "gauge");
    assert_eq!(get("mta_sts_lookup_duration_seconds_count", &[]), 2.0);
    assert_eq!(
        get(
            "mta_sts_lookup_duration_seconds_bucket",
            &[("le", "0.0005")]
        ),
        1.0
    );
    assert_eq!(
        get("mta_sts_lookup_duration_seconds_bucket", &[("le", "+Inf")]),
        2.0
    );
    assert!((get("mta_sts_lookup_duration_seconds_sum", &[]) - 0.0023).abs() < 1e-9);

    // HEAD: the same head, no body; the length announced is the GET body's (RFC 9110 §9.3.2).
    let resp = exchange(srv.addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let text = String::from_utf8(resp).expect("utf-8");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "HEAD has no body");
    assert_eq!(
        header(&text, "content-length").map(|v| v.parse::<usize>().expect("length")),
        Some(body.len())
    );
    assert_eq!(header(&text, "connection"), Some("close"));
    // An HTTP/1.0 client is answered in HTTP/1.0 (hyper's choice, allowed by RFC 9110 §6.2),
    // and told the connection closes.
    let resp = exchange(srv.addr, b"HEAD /metrics HTTP/1.0\r\n\r\n").await;
    let text = String::from_utf8(resp).expect("utf-8");
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "HEAD has no body");
    assert_eq!(header(&text, "connection"), Some("close"));

    srv.shutdown.send(true).expect("server running");
    tokio::time::timeout(GUARD, srv.task)
        .await
        .expect("serve returns on shutdown")
        .expect("serve task");
}

#[tokio::test]
async fn other_paths_404_other_methods_405() {
    let srv = start().await;
    for path in ["/", "/metrics/", "/foo", "/metricsz"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (head, _) = split(&exchange(srv.addr, req.as_bytes()).await);
        assert!(head.starts_with("HTTP/1.1 404 "), "{path}: {head}");
        assert_eq!(header(&head, "connection"), Some("close"));
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let req = format!("{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        let (head, _) = split(&exchange(srv.addr, req.as_bytes()).await);
        assert!(head.starts_with("HTTP/1.1 405 "), "{method}: {head}");
        assert_eq!(header(&head, "allow"), Some("GET, HEAD"));
    }
    // A body sent with a refused request does not turn the answer into a reset.
    let mut req = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'a', 20_000));
    let (head, _) = split(&exchange(srv.addr, &req).await);
    assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
    let (head, _) = split(&exchange(srv.addr, b"nonsense\r\n\r\n").await);
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    let _ = srv.shutdown.send(true);
}

#[tokio::test]
async fn oversized_request_head_is_refused_without_hanging() {
    let srv = start().await;
    // One header line pushes the head past 8 KiB; the terminator never arrives in the cap.
    let mut req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', MAX_REQUEST_HEAD));
    req.extend_from_slice(b"\r\n\r\n");
    let started = std::time::Instant::now();
    let resp = exchange(srv.addr, &req).await;
    let (head, _) = split(&resp);
    assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
    assert!(started.elapsed() < GUARD);

    // A client that keeps streaming header bytes and never reads is cut off too.
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\n")
        .await
        .expect("write");
    let pad = [b'a'; 1024];
    let mut refused = false;
    for _ in 0..1024 {
        if s.write_all(&pad).await.is_err() {
            refused = true;
            break;
        }
    }
    if !refused {
        let mut out = Vec::new();
        let r = tokio::time::timeout(GUARD, s.read_to_end(&mut out))
            .await
            .expect("server closes");
        if let Ok(n) = r {
            assert!(n == 0 || out.starts_with(b"HTTP/1.1 431 "));
        }
    }

    // Exactly at the cap is still served.
    let prefix = b"GET /metrics HTTP/1.1\r\nX-Pad: ";
    let mut req = prefix.to_vec();
    req.extend(std::iter::repeat_n(
        b'a',
        MAX_REQUEST_HEAD - prefix.len() - 4,
    ));
    req.extend_from_slice(b"\r\n\r\n");
    assert_eq!(req.len(), MAX_REQUEST_HEAD);
    let (head, _) = split(&exchange(srv.addr, &req).await);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let _ = srv.shutdown.send(true);
}

#[tokio::test(start_paused = true)]
async fn silent_client_is_dropped_after_the_timeout() {
    let srv = start().await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    let mut out = Vec::new();
    // With the clock paused, the runtime jumps to the server's read deadline once idle.
    let n = tokio::time::timeout(Duration::from_secs(3600), s.read_to_end(&mut out))
        .await
        .expect("server drops the silent client")
        .unwrap_or(0);
    assert_eq!(n, 0, "no answer to a silent client");
    let waited = started.elapsed();
    assert!(
        waited >= REQUEST_TIMEOUT && waited < REQUEST_TIMEOUT + Duration::from_secs(1),
        "{waited:?}"
    );

    // A partial request line that never completes is dropped the same way.
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    s.write_all(b"GET /metr").await.expect("write");
    let started = tokio::time::Instant::now();
    let mut out = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(3600), s.read_to_end(&mut out))
        .await
        .expect("server drops the slow client")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= REQUEST_TIMEOUT);

    // The server still answers afterwards.
    let (head, _) = split(&exchange(srv.addr, b"GET /metrics HTTP/1.1\r\n\r\n").await);
    assert!(head.starts_with("HTTP/1.1 200 "));
    srv.shutdown.send(true).expect("server running");
    srv.task.await.expect("serve task");
}

#[tokio::test]
async fn shutdown_before_any_client_stops_serve() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (tx, rx) = watch::channel(true);
    let gauges: Arc<GaugeFn> = Arc::new(Gauges::default);
    tokio::time::timeout(GUARD, serve(listener, Arc::new(Metrics::new()), gauges, rx))
        .await
        .expect("serve returns at once when shutdown is already set");
    drop(tx);
}
