//! `[https] proxy`: policy fetches through an HTTP CONNECT tunnel, with TLS verified end to end
//! against the policy host. A tiny CONNECT proxy runs in the test beside the offline test world;
//! every scenario is checked through the socketmap reply Postfix would get, and the failure
//! classes through the `Fetcher` itself.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::harness::{ConfigText, TestDaemon, enforce_body, fetcher, serve_child_env};
use common::{CertKind, World};
use mta_sts_policyd::config::Config;
use mta_sts_policyd::discovery::FetchError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

const NOTFOUND: &str = "NOTFOUND ";
const BIN: &str = env!("CARGO_BIN_EXE_mta-sts-policyd");

fn secure(matches: &str) -> String {
    format!("OK secure match={matches} servername=hostname")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `200 Connection established`, then bytes copied both ways.
    Tunnel,
    /// `403 Forbidden`, then close.
    Refuse,
}

/// A minimal HTTP CONNECT proxy on 127.0.0.1. Every world host lives on 127.0.0.1, so a
/// `CONNECT mta-sts.<domain>:<port>` is tunnelled to the world's HTTPS server.
struct TestProxy {
    addr: SocketAddr,
    connects: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl TestProxy {
    async fn start(world_https_port: u16, mode: Mode) -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let connects = Arc::new(Mutex::new(Vec::new()));
        let seen = connects.clone();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: aborting `task` ends every tunnel too.
            let mut conns = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                conns.spawn(serve(client, world_https_port, mode, seen.clone()));
            }
        });
        TestProxy {
            addr,
            connects,
            task,
        }
    }

    /// The CONNECT targets seen so far, in order.
    fn connects(&self) -> Vec<String> {
        self.connects.lock().unwrap().clone()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut client: TcpStream,
    world_https_port: u16,
    mode: Mode,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 8192 {
            return;
        }
        let mut chunk = [0u8; 1024];
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut words = head.lines().next().unwrap_or_default().split(' ');
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await;
        return;
    };
    seen.lock().unwrap().push(target.to_string());
    let host = target.rsplit_once(':').map(|(h, _)| h).unwrap_or(target);
    if mode == Mode::Refuse || !(host.starts_with("mta-sts.") && host.ends_with(".test")) {
        let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        return;
    }
    // "Resolving" mta-sts.<domain>: every world host is 127.0.0.1.
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", world_https_port)).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    if buf.len() > head_end && upstream.write_all(&buf[head_end..]).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// The harness config with `https_lines` added to its `[https]` table.
fn config(world: &World, https_lines: &str) -> Config {
    ConfigText::of(world)
        .replace("[https]\n", &format!("[https]\n{https_lines}"))
        .config()
}

fn proxy_lines(proxy_url: &str, no_proxy: &[&str]) -> String {
    let list: Vec<String> = no_proxy.iter().map(|d| format!("{d:?}")).collect();
    format!(
        "proxy = \"{proxy_url}\"\nno_proxy = [{}]\n",
        list.join(", ")
    )
}

#[tokio::test]
async fn policy_is_fetched_through_the_connect_tunnel_and_no_proxy_goes_direct() {
    let w = World::start().await;
    w.good_domain("good.test", "1", &enforce_body(&["mx1.good.test"]))
        .await;
    w.good_domain("direct.test", "1", &enforce_body(&["mx1.direct.test"]))
        .await;
    let proxy = TestProxy::start(w.https_port(), Mode::Tunnel).await;
    let cfg = config(&w, &proxy_lines(&proxy.url(), &["direct.test"]));
    let d = TestDaemon::from_config(cfg).await;

    assert_eq!(d.ask("good.test").await, secure("mx1.good.test"));
    let target = format!("mta-sts.good.test:{}", w.https_port());
    assert_eq!(proxy.connects(), vec![target.clone()]);
    assert_eq!(w.fetches("good.test"), 1);
    // The proxy resolves the policy host, not the daemon.
    assert_eq!(w.dns_queries("mta-sts.good.test"), 0);
    // The request inside the tunnel is the ordinary origin-form GET.
    let req = w.last_request("good.test").expect("request seen");
    assert!(
        req.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n"),
        "{req:?}"
    );

    // A domain in no_proxy: fetched directly, resolved by the daemon, the proxy not asked.
    assert_eq!(d.ask("direct.test").await, secure("mx1.direct.test"));
    assert_eq!(proxy.connects(), vec![target]);
    assert_eq!(w.fetches("direct.test"), 1);
    assert!(w.dns_queries("mta-sts.direct.test") > 0);
}

#[tokio::test]
async fn certificate_is_verified_end_to_end_through_the_proxy() {
    let w = World::start().await;
    w.good_domain("expired.test", "1", &enforce_body(&["mx1.expired.test"]))
        .await;
    w.set_cert("expired.test", CertKind::Expired);
    let proxy = TestProxy::start(w.https_port(), Mode::Tunnel).await;
    let cfg = config(&w, &proxy_lines(&proxy.url(), &[]));

    // The fetch itself: the tunnel opens, the policy host's certificate is refused.
    match fetcher(&cfg).fetch("expired.test").await {
        Err(FetchError::Tls(_)) => {}
        other => panic!("want a TLS failure, got {other:?}"),
    }
    let target = format!("mta-sts.expired.test:{}", w.https_port());
    assert_eq!(proxy.connects(), vec![target.clone()]);
    assert_eq!(w.fetches("expired.test"), 0);

    let d = TestDaemon::from_config(cfg).await;
    assert_eq!(d.ask("expired.test").await, NOTFOUND);
    assert_eq!(proxy.connects(), vec![target.clone(), target]);
    assert_eq!(w.fetches("expired.test"), 0);
}

#[tokio::test]
async fn proxy_refusing_the_tunnel_is_a_connect_failure() {
    let w = World::start().await;
    w.good_domain("good.test", "1", &enforce_body(&["mx1.good.test"]))
        .await;
    let proxy = TestProxy::start(w.https_port(), Mode::Refuse).await;
    let cfg = config(&w, &proxy_lines(&proxy.url(), &[]));

    match fetcher(&cfg).fetch("good.test").await {
        Err(FetchError::Connect(m)) => {
            assert!(m.contains(&proxy.addr.to_string()), "names the proxy: {m}");
            assert!(m.contains("403 Forbidden"), "gives the status line: {m}");
        }
        other => panic!("want a connect failure, got {other:?}"),
    }

    let d = TestDaemon::from_config(cfg).await;
    assert_eq!(d.ask("good.test").await, NOTFOUND);
    assert_eq!(proxy.connects().len(), 2);
    assert_eq!(w.fetches("good.test"), 0);
}

#[tokio::test]
async fn closed_proxy_port_fails_within_the_timeout() {
    let w = World::start().await;
    w.good_domain("good.test", "1", &enforce_body(&["mx1.good.test"]))
        .await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("address")
    };
    let cfg = config(&w, &proxy_lines(&format!("http://{closed}"), &[]));

    match fetcher(&cfg).fetch("good.test").await {
        Err(FetchError::Connect(m)) => {
            assert!(m.contains(&closed.to_string()), "names the proxy: {m}")
        }
        other => panic!("want a connect failure, got {other:?}"),
    }

    let d = TestDaemon::from_config(cfg).await;
    let started = tokio::time::Instant::now();
    assert_eq!(d.ask("good.test").await, NOTFOUND);
    // https.timeout is 3 s in the harness.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(w.fetches("good.test"), 0);
}

#[tokio::test]
async fn no_proxy_entries_match_like_curl() {
    let w = World::start().await;
    w.good_domain("direct.test", "1", &enforce_body(&["mx1.direct.test"]))
        .await;
    let proxy = TestProxy::start(w.https_port(), Mode::Tunnel).await;
    let target = format!("mta-sts.direct.test:{}", w.https_port());

    // A leading dot and `*` both cover the domain: fetched directly, the proxy not asked.
    for no_proxy in [&[".direct.test"][..], &["*"], &["DIRECT.test"]] {
        let cfg = config(&w, &proxy_lines(&proxy.url(), no_proxy));
        let body = fetcher(&cfg).fetch("direct.test").await;
        assert!(body.is_ok(), "{no_proxy:?}: {body:?}");
        assert_eq!(proxy.connects(), Vec::<String>::new(), "{no_proxy:?}");
    }
    // IP and CIDR entries never match a policy domain, even one whose host is on that address;
    // neither does a sibling name.
    let cfg = config(
        &w,
        &proxy_lines(&proxy.url(), &["127.0.0.1", "127.0.0.0/8", "other.test"]),
    );
    let body = fetcher(&cfg).fetch("direct.test").await;
    assert!(body.is_ok(), "{body:?}");
    assert_eq!(proxy.connects(), vec![target]);
    assert_eq!(w.fetches("direct.test"), 4);
}

/// `HTTPS_PROXY` with a password, as a shell profile or a unit's `Environment=` might set it.
const PROXY_WITH_PASSWORD: &str = "http://user:secret@127.0.0.1:3128";

/// Runs the binary with `args` and `HTTPS_PROXY` set; yields its exit status and everything it
/// printed (logs go to stderr).
fn run_with_proxy_env(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    run(Command::new(BIN)
        .env("HTTPS_PROXY", PROXY_WITH_PASSWORD)
        .arg("-c")
        .arg(config)
        .args(args))
}

fn run(command: &mut Command) -> (Option<i32>, String) {
    let out = command
        .env("RUST_LOG", "debug")
        .output()
        .expect("run the binary");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), printed)
}

#[tokio::test]
async fn proxy_password_from_the_environment_is_never_printed_or_logged() {
    let w = World::start().await;
    let path = w.dir().join("env-proxy.toml");
    let from_env = ConfigText::of(&w).replace("[https]\n", "[https]\nproxy = \"env\"\n");

    // Start-up, check-config and query refuse the credentials (EX_CONFIG) and say where, but
    // never what the password is.
    std::fs::write(&path, from_env.as_str()).unwrap();
    for args in [&["serve"][..], &["check-config"], &["query", "good.test"]] {
        let (code, printed) = run_with_proxy_env(&path, args);
        assert_eq!(code, Some(78), "{args:?}: {printed}");
        assert!(printed.contains("https.proxy"), "{args:?}: {printed}");
        assert!(
            printed.contains("http://***@127.0.0.1:3128"),
            "{args:?}: {printed}"
        );
        assert!(!printed.contains("secret"), "{args:?}: {printed}");
    }

    // A running daemon reloading into `proxy = "env"`: the failed reload is logged and
    // answered to `ctl reload`, without the password in either. (The ctl client reads the same
    // file, so it runs without the variable: only the daemon sees the password.)
    std::fs::write(&path, ConfigText::of(&w).as_str()).unwrap();
    let (mut child, _addr, logs) = serve_child_env(
        BIN,
        &path,
        &[("HTTPS_PROXY", PROXY_WITH_PASSWORD), ("RUST_LOG", "debug")],
    );
    std::fs::write(&path, from_env.as_str()).unwrap();
    let (code, printed) = run(Command::new(BIN)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .arg("-c")
        .arg(&path)
        .args(["ctl", "reload"]));
    assert_ne!(code, Some(0), "{printed}");
    assert!(printed.contains("https.proxy"), "{printed}");
    assert!(!printed.contains("secret"), "{printed}");
    let mut logged = Vec::new();
    while let Ok(line) = logs.recv_timeout(Duration::from_secs(5)) {
        let done = line.contains("reload failed");
        logged.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let logged = logged.join("\n");
    assert!(
        logged.contains("reload failed") && logged.contains("https.proxy"),
        "{logged}"
    );
    assert!(logged.contains("http://***@127.0.0.1:3128"), "{logged}");
    assert!(!logged.contains("secret"), "{logged}");
}
