//! Trust on first use survives a crash (RFC 8461 §10.2): the real binary answers a new domain, is
//! killed with SIGKILL at once, and restarted with the test world's DNS and HTTPS unreachable; it
//! must still give the secure answer, before any network work, from its state directory.

mod common;

use std::time::Duration;

use common::World;
use common::harness::{SocketmapClient, config_text, enforce_body, serve_child};
const SECURE: &str = "OK secure match=mx.good.test:.good.test servername=hostname";

#[tokio::test]
async fn sigkill_right_after_the_first_answer_loses_nothing() {
    let w = World::start().await;
    w.good_domain(
        "good.test",
        "1",
        &enforce_body(&["mx.good.test", "*.good.test"]),
    )
    .await;
    w.good_domain("other.test", "1", &enforce_body(&["mx.other.test"]))
        .await;
    let cfg = w.dir().join("serve.toml");
    std::fs::write(&cfg, config_text(&w, "")).unwrap();

    let (mut child, addr, _logs) = serve_child(env!("CARGO_BIN_EXE_mta-sts-policyd"), &cfg);
    let mut c = SocketmapClient::connect(addr).await;
    assert_eq!(c.query("postfix", b"good.test").await, SECURE);
    child.kill().unwrap(); // SIGKILL, with no chance to flush anything.
    child.wait().unwrap();
    assert_eq!(w.fetches("good.test"), 1);

    // The world is gone for the daemon: DNS and HTTPS on ports where nothing answers.
    let dead = config_text(&w, "")
        .replace(&w.dns_addr().to_string(), "127.0.0.1:9")
        .replace(&format!("port = {}", w.https_port()), "port = 9");
    std::fs::write(&cfg, dead).unwrap();
    let (mut child, addr, _logs) = serve_child(env!("CARGO_BIN_EXE_mta-sts-policyd"), &cfg);
    let mut c = SocketmapClient::connect(addr).await;
    let t = tokio::time::Instant::now();
    assert_eq!(c.query("postfix", b"good.test").await, SECURE);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "answered from the cache"
    );
    // A domain it never saw gets no policy (not TEMP) while the network is down.
    assert_eq!(c.query("postfix", b"other.test").await, "NOTFOUND ");
    assert_eq!(
        w.fetches("good.test"),
        1,
        "no network work for the cached domain"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
