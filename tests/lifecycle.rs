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

/// A reload that finds the file missing, unreadable or invalid changes nothing: no fall-back to
/// the defaults (which would drop the configured listener, bind 127.0.0.1:8461 and turn a
/// fail-closed map back into NOTFOUND), an error in the log, in STATUS= after RELOADING=1 and
/// READY=1 (systemd.service(5) Type=notify-reload), and from `ctl reload` with exit status 1.
#[tokio::test]
async fn a_reload_without_a_usable_file_keeps_the_running_configuration() {
    let w = good_world().await;
    w.set_sts("broken.test", "1").await;
    w.set_http("broken.test", common::Http::status(500, None))
        .await;
    let notify_path = w.dir().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let cfg = w.dir().join("serve.toml");
    let text = ConfigText::of(&w).append("[maps.default]\non_lookup_error = \"temp\"\n");
    std::fs::write(&cfg, text.as_str()).unwrap();
    let (mut child, addr, logs) = serve_child_env(
        BIN,
        &cfg,
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let pid = child.id();
    until(&notify, "READY=1");
    let sock = w.dir().join("control.sock");
    let ctl = |verb: &str| {
        Command::new(BIN)
            .args(["ctl", verb, "--json", "--socket"])
            .arg(&sock)
            .output()
            .unwrap()
    };
    let temp = "TEMP MTA-STS lookup failed: ";
    let unchanged = |why: &str| {
        let st = ctl("status");
        assert!(st.status.success(), "{why}");
        let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        assert_eq!(st["config"], cfg.display().to_string(), "{why}");
        let listeners = st["listeners"].to_string();
        assert!(listeners.contains(&addr.to_string()), "{why}: {listeners}");
        assert!(!listeners.contains(":8461"), "{why}: {listeners}");
    };
    let mut c = SocketmapClient::connect(addr).await;
    assert!(c.query("postfix", b"broken.test").await.starts_with(temp));

    let moved = w.dir().join("moved.toml");
    let mut errors = 0;
    for why in ["missing", "unreadable", "invalid"] {
        // Each time the file is gone or broken in a new way, SIGHUP and then `ctl reload`.
        match why {
            "missing" => std::fs::rename(&cfg, &moved).unwrap(),
            // A directory where the file was: read_to_string fails (EISDIR), even for root.
            "unreadable" => std::fs::create_dir(&cfg).unwrap(),
            _ => {
                std::fs::remove_dir(&cfg).unwrap();
                std::fs::write(&cfg, "[dns]\ntimeout = \"never\"\n").unwrap();
            }
        }
        signal(pid, "-HUP");
        let msgs = until(&notify, "READY=1");
        assert!(
            msgs.iter().any(|m| m.starts_with("RELOADING=1")),
            "{why}: {msgs:?}"
        );
        let ready = msgs.last().unwrap();
        assert!(
            ready.starts_with("READY=1\nSTATUS=serving")
                && ready.contains("reload failed")
                && ready.contains(&cfg.display().to_string()),
            "{why}: {ready:?}"
        );
        let out = ctl("reload");
        assert_eq!(out.status.code(), Some(1), "{why}");
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(&cfg.display().to_string()), "{why}: {error}");
        until(&notify, "READY=1");
        errors += 2;
        // The connection opened before, a new one, and the profile: as they were.
        assert!(
            c.query("postfix", b"broken.test").await.starts_with(temp),
            "{why}"
        );
        let mut fresh = SocketmapClient::connect(addr).await;
        assert!(
            fresh
                .query("postfix", b"broken.test")
                .await
                .starts_with(temp),
            "{why}"
        );
        unchanged(why);
    }
    let logged = std::iter::from_fn(|| logs.recv_timeout(Duration::from_secs(2)).ok())
        .filter(|l| l.contains("reload failed") && l.contains("the running configuration stays"))
        .count();
    assert_eq!(logged, errors);

    // The file back: the reload succeeds and STATUS= no longer reports a failure.
    std::fs::write(&cfg, text.as_str()).unwrap();
    let out = ctl("reload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ready = until(&notify, "READY=1").pop().unwrap();
    assert!(!ready.contains("reload failed"), "{ready:?}");

    signal(pid, "-TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
