//! Trust on first use survives a crash (RFC 8461 §10.2): the real binary answers a new domain, is
//! killed with SIGKILL at once, and restarted with the test world's DNS and HTTPS unreachable; it
//! must still give the secure answer, before any network work, from its state directory.

mod common;

use std::time::Duration;

use common::World;
use common::harness::{
    ConfigText, SocketmapClient, config_text, daemon_options, enforce_body, serve_child,
};
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
    let dead = ConfigText::of(&w).nameserver("127.0.0.1:9").https_port(9);
    std::fs::write(&cfg, dead.as_str()).unwrap();
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

#[tokio::test]
async fn one_daemon_per_state_directory_and_clear_errors() {
    let w = World::start().await;
    let _first = ConfigText::of(&w).start().await;
    // A second instance on the same state directory is refused, naming it.
    let cfg2 = ConfigText::of(&w)
        .control_socket(&w.dir().join("control2.sock"), "")
        .config();
    let err = start_err(cfg2).await;
    assert!(err.contains("in use by another mta-sts-policyd"), "{err}");
    assert!(
        err.contains(&w.dir().join("state").display().to_string()),
        "{err}"
    );

    // A state directory that cannot be created: the error names the path.
    let file = w.dir().join("plainfile");
    std::fs::write(&file, "x").unwrap();
    let bad = file.join("state");
    let cfg3 = ConfigText::of(&w)
        .state_dir(&bad)
        .control_socket(&w.dir().join("control3.sock"), "")
        .config();
    let err = start_err(cfg3).await;
    assert!(err.contains(&bad.display().to_string()), "{err}");
}

async fn start_err(cfg: mta_sts_policyd::config::Config) -> String {
    use std::sync::Arc;
    let opts = daemon_options(&cfg);
    match mta_sts_policyd::daemon::Daemon::start(Arc::new(cfg), opts).await {
        Ok(_) => panic!("the daemon started"),
        Err(e) => e.to_string(),
    }
}
