//! Postfix's own client against the daemon: `postmap -q` through `socketmap:` and `tcp:`.
//! Runs where Postfix is installed (CI installs it and sets CI=true, which makes a missing
//! `postmap` a failure rather than a skip).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::World;
use common::harness::{SocketmapClient, TestDaemon, enforce_body};

fn postmap_available() -> bool {
    let found = Command::new("postmap")
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .is_ok()
        || Path::new("/usr/sbin/postmap").exists();
    if !found && std::env::var_os("CI").is_some() {
        panic!("postmap is not installed, but CI must run this test (apt-get install postfix)");
    }
    if !found {
        eprintln!("postmap not installed; skipping (install postfix to run this test)");
    }
    found
}

fn postmap_bin() -> &'static str {
    if Path::new("/usr/sbin/postmap").exists() {
        "/usr/sbin/postmap"
    } else {
        "postmap"
    }
}

/// Runs `postmap -c <dir> -q <key> <table>` (or `-q -` with `stdin`) in a blocking thread.
async fn postmap(confdir: &Path, key: &str, table: String, stdin: Option<String>) -> Output {
    let confdir = confdir.to_path_buf();
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(postmap_bin());
        cmd.arg("-c").arg(&confdir).arg("-q").arg(&key).arg(&table);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawn postmap");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("postmap output")
    })
    .await
    .expect("join")
}

#[tokio::test]
async fn postmap_gets_the_secure_answer_through_socketmap_and_tcp() {
    if !postmap_available() {
        return;
    }
    let w = World::start().await;
    w.good_domain(
        "good.test",
        "1",
        &enforce_body(&["mx1.good.test", "*.good.test"]),
    )
    .await;
    w.good_domain(
        "testing.test",
        "1",
        "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n",
    )
    .await;
    let d = TestDaemon::start(&w).await;
    // postmap needs a config directory with a main.cf; an empty one means Postfix defaults.
    let confdir = w.dir().join("postfix");
    std::fs::create_dir_all(&confdir).unwrap();
    std::fs::write(confdir.join("main.cf"), "").unwrap();
    let socketmap = format!("socketmap:inet:{}:postfix", d.socketmap);
    let tcp = format!("tcp:{}", d.tcp_table);
    let want = "secure match=mx1.good.test:.good.test servername=hostname\n";

    for table in [&socketmap, &tcp] {
        let out = postmap(&confdir, "good.test", table.clone(), None).await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            want,
            "{table}: stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{table}: {:?}", out.status);
        assert!(
            out.stderr.is_empty(),
            "{table}: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // No policy: postmap's clean "not found" (exit 1, no warning), for every kind of miss.
        for key in ["testing.test", "nothing.test", ".good.test", "[192.0.2.1]"] {
            let out = postmap(&confdir, key, table.clone(), None).await;
            assert_eq!(out.status.code(), Some(1), "{table} {key}");
            assert!(out.stdout.is_empty(), "{table} {key}");
            assert!(
                out.stderr.is_empty(),
                "{table} {key}: NOTFOUND must not warn: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // Several keys on one connection (postmap -q -), including upper case and a smart host.
        let out = postmap(
            &confdir,
            "-",
            table.clone(),
            Some("GOOD.TEST\nnothing.test\n[good.test]:25\n".into()),
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("GOOD.TEST\t{want}[good.test]:25\t{want}"),
            "{table}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A series of the daemon's `/metrics`, summed over every series whose name and labels start
/// with `prefix`.
async fn metric(addr: std::net::SocketAddr, prefix: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn wait_for_metric(addr: std::net::SocketAddr, prefix: &str, want: f64) {
    let start = std::time::Instant::now();
    loop {
        let v = metric(addr, prefix).await;
        if v == want {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{prefix}: {v}, want {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn still_open(c: &SocketmapClient) -> bool {
    let mut b = [0u8; 1];
    matches!(c.stream.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// With `limits.max_connections` full of idle connections Postfix is still answered: the
/// longest-idle connection is closed for it. And when the connection closed is Postfix's own,
/// kept open between lookups, its next lookup finds it closed, reconnects (socketmap_table(5):
/// the client reconnects on its own) and is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmap_is_answered_at_the_connection_cap_and_after_its_own_connection_was_closed() {
    use std::io::Write;
    if !postmap_available() {
        return;
    }
    const CAP: usize = 20;
    let w = World::start().await;
    w.good_domain(
        "good.test",
        "1",
        &enforce_body(&["mx1.good.test", "*.good.test"]),
    )
    .await;
    let d = TestDaemon::start_with(
        &w,
        &format!("[limits]\nmax_connections = {CAP}\n[metrics]\nlisten = \"inet:127.0.0.1:0\"\n"),
    )
    .await;
    let metrics = d.daemon.metrics_addr().expect("metrics listener");
    let confdir = w.dir().join("postfix");
    std::fs::create_dir_all(&confdir).unwrap();
    std::fs::write(confdir.join("main.cf"), "").unwrap();
    let table = format!("socketmap:inet:{}:postfix", d.socketmap);
    let want = "secure match=mx1.good.test:.good.test servername=hostname\n";
    let lookups = "mta_sts_lookups_total{protocol=\"socketmap\"";
    let evicted = "mta_sts_connections_evicted_total";

    // The first filler is idle clearly longest: connections opened in the same instant may go
    // idle in either order on the daemon's two threads.
    let mut fillers = vec![d.socketmap().await];
    wait_for_metric(metrics, "mta_sts_connections ", 1.0).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for _ in 1..CAP {
        fillers.push(d.socketmap().await);
    }
    wait_for_metric(metrics, "mta_sts_connections ", CAP as f64).await;

    // A one-shot `postmap -q` at the full cap: the longest-idle filler makes room.
    let out = postmap(&confdir, "good.test", table.clone(), None).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        want,
        "stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(metric(metrics, evicted).await, 1.0);
    assert!(fillers.remove(0).is_closed().await);

    // `postmap -q -` keeps one connection for all its keys. After its first lookup, every filler
    // is active again, so Postfix's own connection is the longest idle when a new client comes.
    let mut child = Command::new(postmap_bin())
        .arg("-c")
        .arg(&confdir)
        .arg("-q")
        .arg("-")
        .arg(&table)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn postmap");
    let mut stdin = child.stdin.take().expect("stdin");
    let before = metric(metrics, lookups).await;
    stdin.write_all(b"good.test\n").unwrap();
    stdin.flush().unwrap();
    wait_for_metric(metrics, lookups, before + 1.0).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for f in &mut fillers {
        f.query("postfix", b"good.test").await;
    }
    let mut newcomer = d.socketmap().await;
    assert!(
        newcomer
            .query("postfix", b"good.test")
            .await
            .starts_with("OK ")
    );
    assert_eq!(metric(metrics, evicted).await, 2.0);
    assert!(
        fillers.iter().all(still_open),
        "the connection closed is postmap's"
    );
    // Its next key: postmap finds its connection closed, reconnects and is answered.
    stdin.write_all(b"GOOD.TEST\n").unwrap();
    drop(stdin);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("postmap output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("postmap -q - after its connection was closed: stderr {stderr:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("good.test\t{want}GOOD.TEST\t{want}"),
        "stderr {stderr}"
    );
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(metric(metrics, evicted).await, 3.0);
}
