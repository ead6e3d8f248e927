//! `[fleet] redis = "rediss://…"`: the daemon (a child process, so that its certificate store
//! can be pointed at the test CA with `SSL_CERT_FILE`, as an operator adds a private CA to the
//! system store) shares over TLS with a real `redis-server --tls-port`, and refuses a server
//! whose certificate it cannot verify.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::World;
use common::certs::{new_key, root_ca};
use common::harness::{SocketmapClient, config_text, enforce_body, serve_child_env};
use common::redis_server::{RedisServer, fleet_section, redis_available};
use mta_sts_policyd::serve::control;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_mta-sts-policyd");

/// A TLS-only server on loopback with a certificate for 127.0.0.1 from a CA of its own; the
/// CA's PEM file.
async fn tls_redis(dir: &Path) -> (RedisServer, std::path::PathBuf) {
    let ca = root_ca("Fleet test", "Fleet test CA");
    let key = new_key();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.join("ca.pem"),
        dir.join("redis.pem"),
        dir.join("redis.key"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_port = probe.local_addr().unwrap().port().to_string();
    drop(probe);
    let args = [
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert_file.display().to_string(),
        "--tls-key-file",
        &key_file.display().to_string(),
        "--tls-ca-cert-file",
        &ca_file.display().to_string(),
        "--tls-auth-clients",
        "no",
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let redis = RedisServer::start(&args).await;
    // The TLS port, not the plain one the harness waited for.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", tls_port.parse::<u16>().unwrap()))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the TLS port never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let port = tls_port;
    (
        RedisServer::with_tls_port(redis, port.parse().unwrap()),
        ca_file,
    )
}

async fn status(socket: &Path) -> Value {
    let lines = control::request(socket, &json!({"verb": "status"}), None)
        .await
        .expect("control");
    lines.last().cloned().expect("a reply")
}

#[tokio::test]
async fn rediss_shares_over_tls_with_a_verified_server_and_refuses_an_unverified_one() {
    if !redis_available() {
        return;
    }
    let w = World::start().await;
    w.good_domain("good.test", "1", &enforce_body(&["mx.good.test"]))
        .await;
    let (redis, ca_file) = tls_redis(w.dir()).await;
    let url = format!("rediss://127.0.0.1:{}/0", redis.tls_port());
    let cfg = w.dir().join("tls.toml");
    std::fs::write(&cfg, config_text(&w, &fleet_section(&url, ""))).unwrap();
    let socket = w.dir().join("control.sock");

    // The test CA in the daemon's certificate store: shared over TLS.
    let ca = ca_file.display().to_string();
    let (mut child, addr, _logs) = serve_child_env(BIN, &cfg, &[("SSL_CERT_FILE", &ca)]);
    let mut c = SocketmapClient::connect(addr).await;
    assert_eq!(
        c.query("postfix", b"good.test").await,
        "OK secure match=mx.good.test servername=hostname"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = status(&socket).await;
        if st["fleet"]["publishes"]["ok"] == 1 {
            assert_eq!(st["fleet"]["state"], "up", "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "never published over TLS: {st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // A store without the test CA: the server is refused, lookups go on without it.
    let empty = w.dir().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let none = empty.display().to_string();
    let (mut child, addr, _logs) = serve_child_env(BIN, &cfg, &[("SSL_CERT_FILE", &none)]);
    let mut c = SocketmapClient::connect(addr).await;
    assert_eq!(
        c.query("postfix", b"good.test").await,
        "OK secure match=mx.good.test servername=hostname",
        "answered from the journal the first daemon wrote"
    );
    // Each miss asks the server and each result is published: the breaker opens.
    for d in ["none1.test", "none2.test", "none3.test"] {
        c.query("postfix", d.as_bytes()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = status(&socket).await;
        if st["fleet"]["state"] == "down" {
            assert_eq!(st["fleet"]["publishes"]["ok"], 0, "{st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "an unverified server was used: {st}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
