//! Self-test of the offline test world (tests/common/world.rs) with real
//! clients: hickory-resolver for DNS and a tokio-rustls client for HTTPS.
//! No daemon code is involved.

mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{CertKind, Http, World};
use hickory_resolver::{
    Resolver, TokioResolver,
    config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider},
    proto::{
        op::ResponseCode,
        rr::{RData, RecordType},
    },
};
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

// ------------------------------------------------------------------ helpers

/// A resolver pointed at the world only: cache off, hosts file off.
fn resolver(addr: SocketAddr, timeout: Duration) -> TokioResolver {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    for c in &mut ns.connections {
        c.port = addr.port();
    }
    let cfg = ResolverConfig::from_name_servers(vec![ns]);
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = timeout;
    opts.attempts = 0;
    Resolver::builder_with_config(cfg, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .expect("building the test resolver")
}

fn world_resolver(world: &World) -> TokioResolver {
    resolver(world.dns_addr(), Duration::from_secs(2))
}

/// TXT records at `name` (each as its list of character-strings).
async fn txt(r: &TokioResolver, name: &str) -> Result<Vec<Vec<String>>, NetError> {
    let lookup = r.txt_lookup(name).await?;
    Ok(lookup
        .answers()
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

fn client_config(ca_file: &std::path::Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("opening ca_file") {
        roots
            .add(cert.expect("parsing ca_file"))
            .expect("adding the test root");
    }
    assert_eq!(roots.len(), 1, "ca_file must hold exactly the test root");
    let cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(cfg)
}

/// GET https://<host>/.well-known/mta-sts.txt from the world's HTTPS port,
/// trusting only ca_file. Returns the whole raw response.
async fn https_get(world: &World, host: &str) -> std::io::Result<Vec<u8>> {
    https_get_path(world, host, "/.well-known/mta-sts.txt").await
}

async fn https_get_path(world: &World, host: &str, path: &str) -> std::io::Result<Vec<u8>> {
    let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, world.https_port())).await?;
    let connector = TlsConnector::from(client_config(world.ca_file()));
    let name = ServerName::try_from(host.to_string()).expect("valid server name");
    let mut tls = connector.connect(name, tcp).await?;
    let port = world.https_port();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    Ok(out)
}

/// Splits a raw HTTP/1.1 response into (head, body-bytes-as-sent).
fn split_response(raw: &[u8]) -> (String, Vec<u8>) {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(raw)));
    (
        String::from_utf8_lossy(&raw[..end]).into_owned(),
        raw[end + 4..].to_vec(),
    )
}

/// The rustls certificate error behind a failed handshake.
fn cert_error(e: &std::io::Error) -> rustls::CertificateError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => c.clone(),
        other => panic!("expected an invalid-certificate error, got {e:?} (inner {other:?})"),
    }
}

// ---------------------------------------------------------------------- DNS

#[tokio::test]
async fn dns_txt_strings_replace_and_remove() {
    let world = World::start().await;
    let r = world_resolver(&world);

    world
        .set_txt("_mta-sts.good.test", &[&["v=STSv1; ", "id=abc"]])
        .await;
    assert_eq!(
        txt(&r, "_mta-sts.good.test.").await.expect("TXT lookup"),
        vec![vec!["v=STSv1; ".to_string(), "id=abc".to_string()]],
        "two character-strings arrive as two entries of txt_data"
    );

    // set_sts replaces, never adds.
    world.set_sts("good.test", "2").await;
    assert_eq!(
        txt(&r, "_mta-sts.good.test.").await.expect("TXT lookup"),
        vec![vec!["v=STSv1; id=2".to_string()]]
    );

    // Two TXT RRs.
    world
        .set_txt(
            "_mta-sts.two.test",
            &[&["v=STSv1; id=1"], &["v=STSv1; id=2"]],
        )
        .await;
    let mut two = txt(&r, "_mta-sts.two.test.").await.expect("TXT lookup");
    two.sort();
    assert_eq!(
        two,
        vec![
            vec!["v=STSv1; id=1".to_string()],
            vec!["v=STSv1; id=2".to_string()]
        ]
    );

    // Removal: the name has no records left → NXDOMAIN/NODATA.
    world.set_txt("_mta-sts.good.test", &[]).await;
    let e = txt(&r, "_mta-sts.good.test.")
        .await
        .expect_err("TXT removed");
    assert!(e.is_no_records_found(), "expected no records, got {e:?}");

    // A record.
    world
        .set_a("mta-sts.good.test", Ipv4Addr::new(127, 0, 0, 9))
        .await;
    let ips: Vec<IpAddr> = r
        .lookup_ip("mta-sts.good.test.")
        .await
        .expect("A lookup")
        .iter()
        .collect();
    assert_eq!(ips, vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))]);
}

#[tokio::test]
async fn dns_cname_chain_followed() {
    let world = World::start().await;
    let r = world_resolver(&world);
    world.set_sts("target.test", "chain1").await;
    world
        .set_cname("_mta-sts.alias.test", "_mta-sts.middle.test")
        .await;
    world
        .set_cname("_mta-sts.middle.test", "_mta-sts.target.test.")
        .await;

    let lookup = r
        .txt_lookup("_mta-sts.alias.test.")
        .await
        .expect("TXT through CNAME chain");
    let types: Vec<RecordType> = lookup.answers().iter().map(|a| a.record_type()).collect();
    assert_eq!(
        types,
        vec![RecordType::CNAME, RecordType::CNAME, RecordType::TXT],
        "answers: {:?}",
        lookup.answers()
    );
    assert_eq!(
        txt(&r, "_mta-sts.alias.test.").await.expect("TXT"),
        vec![vec!["v=STSv1; id=chain1".to_string()]]
    );

    // CNAME to an A record (policy host aliasing).
    world.serve_policy("target.test", "x").await;
    world
        .set_cname("mta-sts.alias.test", "mta-sts.target.test")
        .await;
    let ips: Vec<IpAddr> = r
        .lookup_ip("mta-sts.alias.test.")
        .await
        .expect("A through CNAME")
        .iter()
        .collect();
    assert_eq!(ips, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);

    // set_txt on a CNAME name replaces the CNAME.
    world.set_sts("alias.test", "own").await;
    assert_eq!(
        txt(&r, "_mta-sts.alias.test.").await.expect("TXT"),
        vec![vec!["v=STSv1; id=own".to_string()]]
    );
}

#[tokio::test]
async fn dns_nxdomain_servfail_timeout_and_counts() {
    let world = World::start().await;
    let r = world_resolver(&world);

    // NXDOMAIN for an unknown name under test. (not REFUSED).
    let e = txt(&r, "x.test.").await.expect_err("unknown name");
    assert!(e.is_nx_domain(), "expected NXDOMAIN, got {e:?}");
    assert_eq!(world.dns_queries("x.test"), 1);
    assert_eq!(
        world.dns_queries("X.Test."),
        1,
        "names are case-insensitive"
    );

    // NODATA for an existing name with another type.
    world.serve_policy("good.test", "body").await;
    let e = txt(&r, "mta-sts.good.test.").await.expect_err("no TXT");
    assert!(
        e.is_no_records_found() && !e.is_nx_domain(),
        "expected NODATA, got {e:?}"
    );

    // SERVFAIL, even though the name has records.
    world.set_sts("broken.test", "1").await;
    world.servfail("_mta-sts.broken.test");
    let e = txt(&r, "_mta-sts.broken.test.")
        .await
        .expect_err("servfail");
    assert!(
        matches!(
            e,
            NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))
        ),
        "expected SERVFAIL, got {e:?}"
    );
    assert!(!e.is_no_records_found());
    world.answer_normally("_mta-sts.broken.test");
    assert_eq!(
        txt(&r, "_mta-sts.broken.test.").await.expect("TXT again"),
        vec![vec!["v=STSv1; id=1".to_string()]]
    );

    // Dropped queries time out.
    world.set_sts("slow.test", "1").await;
    world.drop_queries("_mta-sts.slow.test");
    let fast = resolver(world.dns_addr(), Duration::from_millis(300));
    let t0 = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(10), txt(&fast, "_mta-sts.slow.test."))
        .await
        .expect("the resolver's own timeout must fire first");
    let e = res.expect_err("dropped query");
    assert!(
        matches!(e, NetError::Timeout),
        "expected timeout, got {e:?}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(290));
    assert!(world.dns_queries("_mta-sts.slow.test") >= 1);

    // Counting: one query per lookup (cache off).
    let before = world.dns_queries("_mta-sts.count.test");
    assert_eq!(before, 0);
    for _ in 0..3 {
        let _ = txt(&r, "_mta-sts.count.test.").await;
    }
    assert_eq!(world.dns_queries("_mta-sts.count.test"), 3);
    assert_eq!(world.dns_queries("_mta-sts.never.test"), 0);
}

// -------------------------------------------------------------------- HTTPS

#[tokio::test]
async fn https_good_policy_and_statuses() {
    let world = World::start().await;
    let body = "version: STSv1\nmode: enforce\nmx: mx.good.test\nmax_age: 86400\n";
    world.good_domain("good.test", "1", body).await;

    // DNS side of serve_policy.
    let r = world_resolver(&world);
    let ips: Vec<IpAddr> = r
        .lookup_ip("mta-sts.good.test.")
        .await
        .expect("A of the policy host")
        .iter()
        .collect();
    assert_eq!(ips, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);

    assert_eq!(world.fetches("good.test"), 0);
    let raw = https_get(&world, "mta-sts.good.test")
        .await
        .expect("Good certificate must verify against ca_file");
    let (head, got) = split_response(&raw);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "head: {head}");
    assert!(
        head.contains("Content-Type: text/plain\r\n"),
        "head: {head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", body.len())),
        "head: {head}"
    );
    assert!(head.contains("Connection: close"), "head: {head}");
    assert_eq!(got, body.as_bytes());
    assert_eq!(world.fetches("good.test"), 1);
    assert_eq!(world.fetches_host("MTA-STS.good.test."), 1);

    let last = world
        .last_request("good.test")
        .expect("request head recorded");
    assert!(
        last.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n") && last.ends_with("\r\n\r\n"),
        "last request: {last:?}"
    );

    // Another path on a known host: 404, counted.
    let (head, _) = split_response(
        &https_get_path(&world, "mta-sts.good.test", "/other")
            .await
            .expect("other path"),
    );
    assert!(head.starts_with("HTTP/1.1 404 "), "head: {head}");
    assert_eq!(world.fetches("good.test"), 2);
    assert!(
        world
            .last_request("good.test")
            .is_some_and(|h| h.starts_with("GET /other ")),
        "last request recorded"
    );

    // Redirect.
    world
        .set_http(
            "redir.test",
            Http::status(
                301,
                Some("https://mta-sts.good.test/.well-known/mta-sts.txt"),
            ),
        )
        .await;
    let (head, got) = split_response(&https_get(&world, "mta-sts.redir.test").await.expect("301"));
    assert!(head.starts_with("HTTP/1.1 301 "), "head: {head}");
    assert!(
        head.contains("Location: https://mta-sts.good.test/.well-known/mta-sts.txt\r\n"),
        "head: {head}"
    );
    assert!(head.contains("Content-Length: 0\r\n"), "head: {head}");
    assert!(got.is_empty());

    // Raw bytes, verbatim.
    let raw_resp = b"HTTP/1.0 200 OK\r\n\r\nraw body".to_vec();
    world
        .set_http("raw.test", Http::Raw(raw_resp.clone()))
        .await;
    assert_eq!(
        https_get(&world, "mta-sts.raw.test").await.expect("raw"),
        raw_resp
    );
    assert_eq!(world.fetches("raw.test"), 1);

    // Unknown host: 404, still counted.
    let (head, _) = split_response(
        &https_get(&world, "mta-sts.unknown.test")
            .await
            .expect("404"),
    );
    assert!(head.starts_with("HTTP/1.1 404 "), "head: {head}");
    assert_eq!(world.fetches("unknown.test"), 1);
}

#[tokio::test]
async fn https_certificate_kinds() {
    let world = World::start().await;
    let cases = [
        ("expired.test", CertKind::Expired),
        ("wronghost.test", CertKind::WrongHost),
        ("selfsigned.test", CertKind::SelfSigned),
        ("untrusted.test", CertKind::UntrustedCa),
        ("nointer.test", CertKind::MissingIntermediate),
    ];
    for (domain, kind) in cases {
        world.serve_policy(domain, "body").await;
        world.set_cert(domain, kind);
        let e = https_get(&world, &format!("mta-sts.{domain}"))
            .await
            .expect_err(&format!("{kind:?} certificate must be rejected"));
        let ce = cert_error(&e);
        let text = format!("{ce:?}");
        let expected = match kind {
            CertKind::Expired => "Expired",
            CertKind::WrongHost => "NotValidForName",
            CertKind::SelfSigned | CertKind::UntrustedCa | CertKind::MissingIntermediate => {
                "UnknownIssuer"
            }
            CertKind::Good => unreachable!(),
        };
        assert!(
            text.contains(expected),
            "{kind:?}: expected {expected} in {text} (io error: {e})"
        );
        assert_eq!(world.fetches(domain), 0, "{kind:?}: no request was sent");
    }

    // Switching back to Good works (configs are cached per kind).
    world.set_cert("expired.test", CertKind::Good);
    let (head, body) = split_response(
        &https_get(&world, "mta-sts.expired.test")
            .await
            .expect("Good again"),
    );
    assert!(head.starts_with("HTTP/1.1 200 "), "head: {head}");
    assert_eq!(body, b"body");
}

#[tokio::test]
async fn https_hang_hangtls_and_chunked() {
    let world = World::start().await;

    // Hang: handshake and request OK, no answer.
    world.set_http("hang.test", Http::Hang).await;
    let res = tokio::time::timeout(
        Duration::from_millis(500),
        https_get(&world, "mta-sts.hang.test"),
    )
    .await;
    assert!(res.is_err(), "Hang must not answer, got {res:?}");
    assert_eq!(world.fetches("hang.test"), 1, "Hang counts the request");

    // HangTls: the handshake never completes.
    world.set_http("hangtls.test", Http::HangTls).await;
    let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, world.https_port()))
        .await
        .expect("TCP connect");
    let connector = TlsConnector::from(client_config(world.ca_file()));
    let name = ServerName::try_from("mta-sts.hangtls.test").expect("server name");
    let res = tokio::time::timeout(Duration::from_millis(500), connector.connect(name, tcp)).await;
    assert!(res.is_err(), "HangTls handshake must not complete");
    assert_eq!(world.fetches("hangtls.test"), 0);

    // Other hosts are still served while those two connections hang.
    world.serve_policy("good.test", "still here").await;
    let (_, body) = split_response(
        &https_get(&world, "mta-sts.good.test")
            .await
            .expect("good host while others hang"),
    );
    assert_eq!(body, b"still here");

    // Chunked: 20 000 bytes → 8192 + 8192 + 3616.
    let big: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    world
        .set_http(
            "chunked.test",
            Http::Chunked {
                content_type: Some("text/plain".into()),
                body: big.clone(),
            },
        )
        .await;
    let (head, raw_body) = split_response(
        &https_get(&world, "mta-sts.chunked.test")
            .await
            .expect("chunked"),
    );
    assert!(head.starts_with("HTTP/1.1 200 "), "head: {head}");
    assert!(
        head.contains("Transfer-Encoding: chunked\r\n"),
        "head: {head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "head: {head}"
    );
    // Decode the chunked body by hand.
    let mut decoded = Vec::new();
    let mut sizes = Vec::new();
    let mut rest = &raw_body[..];
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).expect("hex"), 16)
            .expect("chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            assert_eq!(rest, b"\r\n", "chunked body ends with 0 CRLF CRLF");
            break;
        }
        sizes.push(size);
        decoded.extend_from_slice(&rest[..size]);
        assert_eq!(&rest[size..size + 2], b"\r\n");
        rest = &rest[size + 2..];
    }
    assert_eq!(sizes, vec![8192, 8192, 3616]);
    assert_eq!(decoded, big);

    // Response with an explicit chunked header is chunked too.
    world
        .set_http(
            "chunked2.test",
            Http::Response {
                status: 200,
                headers: vec![("Transfer-Encoding".into(), "chunked".into())],
                body: b"abc".to_vec(),
            },
        )
        .await;
    let (head, raw_body) = split_response(
        &https_get(&world, "mta-sts.chunked2.test")
            .await
            .expect("chunked2"),
    );
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "head: {head}"
    );
    assert_eq!(raw_body, b"3\r\nabc\r\n0\r\n\r\n");
}

#[tokio::test]
async fn world_drop_stops_servers() {
    let world = World::start().await;
    world.serve_policy("good.test", "x").await;
    world.set_http("hang.test", Http::Hang).await;
    let port = world.https_port();
    let dir = world.dir().to_path_buf();
    assert!(dir.is_dir());
    assert!(world.ca_file().starts_with(&dir));
    // A hanging connection must not keep anything alive.
    let w = &world;
    let _ = tokio::time::timeout(
        Duration::from_millis(200),
        https_get(w, "mta-sts.hang.test"),
    )
    .await;
    drop(world);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!dir.exists(), "tempdir removed on drop");
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_err(),
        "HTTPS listener closed on drop"
    );
}

/// The daemon's HTTP stack (hyper 1.x http1 over tokio-rustls) reads what the
/// world sends: a Content-Length body, a chunked body, a status.
#[tokio::test]
async fn https_with_hyper_client() {
    use http_body_util::{BodyExt, Empty};
    use hyper::{Request, body::Bytes};
    use hyper_util::rt::TokioIo;

    async fn hyper_get(world: &World, host: &str) -> (u16, Option<String>, Vec<u8>) {
        let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, world.https_port()))
            .await
            .expect("TCP connect");
        let connector = TlsConnector::from(client_config(world.ca_file()));
        let name = ServerName::try_from(host.to_string()).expect("server name");
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1 handshake");
        tokio::spawn(conn);
        let req = Request::get("/.well-known/mta-sts.txt")
            .header("host", format!("{host}:{}", world.https_port()))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let te = resp
            .headers()
            .get("transfer-encoding")
            .map(|v| v.to_str().expect("ascii").to_string());
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        (status, te, body)
    }

    let world = World::start().await;
    world.good_domain("good.test", "1", "policy body").await;
    world
        .set_http(
            "chunked.test",
            Http::Chunked {
                content_type: None,
                body: vec![b'z'; 70_000],
            },
        )
        .await;
    world.set_http("gone.test", Http::status(410, None)).await;

    assert_eq!(
        hyper_get(&world, "mta-sts.good.test").await,
        (200, None, b"policy body".to_vec())
    );
    let (status, te, body) = hyper_get(&world, "mta-sts.chunked.test").await;
    assert_eq!((status, te.as_deref()), (200, Some("chunked")));
    assert_eq!(body, vec![b'z'; 70_000]);
    assert_eq!(
        hyper_get(&world, "mta-sts.gone.test").await,
        (410, None, Vec::new())
    );
    assert_eq!(world.fetches("good.test"), 1);
    assert_eq!(world.fetches("chunked.test"), 1);
}
