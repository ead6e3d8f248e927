//! The daemon's life under systemd, as the real binary: the exact sd_notify messages (READY,
//! STATUS, WATCHDOG, RELOADING with MONOTONIC_USEC, STOPPING), a reload that changes map profiles
//! and listeners while a Postfix connection stays open, an invalid reload that keeps the old
//! configuration, `ctl reload`, a clean SIGTERM, and socket activation.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::harness::{
    ConfigText, SocketmapClient, TcpTableClient, config_text, good_world, serve_child_env,
};

const BIN: &str = env!("CARGO_BIN_EXE_mta-sts-policyd");

/// Receives notify datagrams until one starts with `prefix` (others are returned too).
fn until(sock: &UnixDatagram, prefix: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.starts_with(prefix);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {prefix:?} notification; got {seen:?}");
}

fn signal(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn notify_reload_and_stop_with_a_postfix_connection_open() {
    let w = good_world().await;
    w.good_domain(
        "testing.test",
        "1",
        "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n",
    )
    .await;
    let notify_path = w.dir().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let cfg = w.dir().join("serve.toml");
    let base = ConfigText::of(&w).replace(
        "[tcp_table]\nlisten = [\"inet:127.0.0.1:0\"]",
        "[tcp_table]\nlisten = []",
    );
    std::fs::write(&cfg, base.as_str()).unwrap();
    let (mut child, addr, logs) = serve_child_env(
        BIN,
        &cfg,
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let pid = child.id();

    let first = until(&notify, "READY=1");
    let ready = first.last().unwrap();
    assert!(ready.starts_with("READY=1\nSTATUS=serving"), "{ready:?}");
    // WATCHDOG_USEC/2 = 200 ms: pings keep coming.
    let pings = until(&notify, "WATCHDOG=1");
    assert_eq!(pings.last().unwrap(), "WATCHDOG=1");

    let mut c = SocketmapClient::connect(addr).await;
    assert_eq!(c.query("postfix", b"testing.test").await, "NOTFOUND ");
    assert_eq!(
        c.query("postfix", b"good.test").await,
        "OK secure match=mx.good.test servername=hostname"
    );

    // Reload: testing is now enforced by the default map, and a tcp_table listener appears.
    let new = base
        .clone()
        .replace(
            "[tcp_table]\nlisten = []",
            "[tcp_table]\nlisten = [\"inet:127.0.0.1:0\"]",
        )
        .append("[maps.default]\nstrict_testing = true\n");
    std::fs::write(&cfg, new.as_str()).unwrap();
    signal(pid, "-HUP");
    let msgs = until(&notify, "READY=1");
    let reloading = msgs
        .iter()
        .find(|m| m.starts_with("RELOADING=1"))
        .expect("RELOADING=1 before READY=1");
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .expect("RELOADING and MONOTONIC_USEC in one datagram")
        .trim()
        .parse()
        .unwrap();
    assert!(usec > 0);
    // The connection opened before the reload is still served, with the new profile.
    assert_eq!(
        c.query("postfix", b"testing.test").await,
        "OK secure match=mx.testing.test servername=hostname"
    );
    let tcp_line = std::iter::from_fn(|| logs.recv_timeout(Duration::from_secs(5)).ok())
        .find(|l| l.contains("listening") && l.contains("tcp_table"))
        .expect("the new tcp_table listener is logged");
    let tcp_addr: std::net::SocketAddr = tcp_line
        .split("inet:")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|ch| !ch.is_whitespace() && *ch != '"')
        .collect::<String>()
        .parse()
        .unwrap();
    let mut t = TcpTableClient::connect(tcp_addr).await;
    assert!(t.get(b"good.test").await.starts_with("200 secure"));

    // An invalid file: logged, the running configuration stays.
    std::fs::write(&cfg, "[dns]\ntimeout = \"never\"\n").unwrap();
    signal(pid, "-HUP");
    until(&notify, "READY=1");
    assert!(
        std::iter::from_fn(|| logs.recv_timeout(Duration::from_secs(5)).ok())
            .any(|l| l.contains("reload failed") && l.contains("dns.timeout"))
    );
    assert_eq!(
        c.query("postfix", b"testing.test").await,
        "OK secure match=mx.testing.test servername=hostname"
    );

    // `ctl reload` goes through the same path and reports the result.
    std::fs::write(&cfg, base.as_str()).unwrap();
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&cfg)
        .args(["ctl", "reload"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 removed"));
    assert_eq!(c.query("postfix", b"testing.test").await, "NOTFOUND ");

    signal(pid, "-TERM");
    until(&notify, "STOPPING=1");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn socket_activation_uses_the_inherited_listener() {
    let w = good_world().await;
    let cfg = w.dir().join("activated.toml");
    std::fs::write(&cfg, config_text(&w, "")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{port}"), "--fdname=socketmap"])
        .arg(BIN)
        .arg("-c")
        .arg(&cfg)
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (part of systemd) runs");
    // The tool listens first and starts the daemon on the first connection, which waits in the
    // inherited listener's queue until the daemon accepts it.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = SocketmapClient::connect(addr).await;
    assert_eq!(
        c.query("postfix", b"good.test").await,
        "OK secure match=mx.good.test servername=hostname"
    );
    signal(child.id(), "-TERM");
    let out = tokio::task::spawn_blocking(move || {
        let _ = child.wait();
        let mut s = String::new();
        use std::io::Read;
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    })
    .await
    .unwrap();
    assert!(out.contains("inherited=true"), "{out}");
    // The configured socketmap listener (port 0) was not bound: only the tcp_table one was.
    let own: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("listening") && l.contains("inherited=false"))
        .collect();
    assert!(own.iter().all(|l| l.contains("tcp_table")), "{own:?}");
}
