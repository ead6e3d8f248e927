//! The two Postfix protocols on the wire, against the real daemon: exact reply bytes, byte-at-a-time
//! input, pipelining, malformed and oversize frames (only that connection closes), tcp_table %XX
//! coding, unix sockets.

mod common;

use std::time::Duration;

use common::World;
use common::harness::{
    ConfigText, SocketmapClient, TcpTableClient, TestDaemon, enforce_body, good_world,
    good_world_and_daemon, netstring,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GOOD: &str = "OK secure match=mx.good.test servername=hostname";

#[tokio::test]
async fn socketmap_replies_are_exact_netstrings() {
    let (_w, d) = good_world_and_daemon().await;
    let mut s = tokio::net::TcpStream::connect(d.socketmap).await.unwrap();
    s.write_all(b"20:postfix example.test,").await.unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"9:NOTFOUND ,");
    s.write_all(b"17:postfix good.test,").await.unwrap();
    let want = format!("{}:{GOOD},", GOOD.len());
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(String::from_utf8(got).unwrap(), want);
}

#[tokio::test]
async fn socketmap_byte_at_a_time_and_pipelined() {
    let (_w, d) = good_world_and_daemon().await;
    let mut c = SocketmapClient::connect(d.socketmap).await;
    let frame = netstring(b"postfix good.test");
    for b in &frame {
        c.send_raw(std::slice::from_ref(b)).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(c.reply().await.unwrap(), GOOD);
    // Three requests in one write are answered in order.
    let mut batch = netstring(b"postfix good.test");
    batch.extend(netstring(b"postfix .good.test"));
    batch.extend(netstring(b"postfix GOOD.TEST"));
    c.send_raw(&batch).await;
    assert_eq!(c.reply().await.unwrap(), GOOD);
    assert_eq!(c.reply().await.unwrap(), "NOTFOUND ");
    assert_eq!(c.reply().await.unwrap(), GOOD);
}

#[tokio::test]
async fn socketmap_malformed_frame_closes_only_that_connection() {
    let (_w, d) = good_world_and_daemon().await;
    let mut other = SocketmapClient::connect(d.socketmap).await;
    assert_eq!(other.query("postfix", b"good.test").await, GOOD);

    for garbage in [
        &b"x9:NOTFOUND ,"[..],
        b"5:abcdeX",
        b"GET / HTTP/1.1\r\n\r\n",
        b"\xff\xfe\x00\x01",
    ] {
        let mut bad = SocketmapClient::connect(d.socketmap).await;
        bad.send_raw(garbage).await;
        assert!(
            bad.is_closed().await,
            "{garbage:?} must close the connection"
        );
    }
    // A well-framed request that is not "<map> <key>" gets PERM and the connection stays.
    let mut c = SocketmapClient::connect(d.socketmap).await;
    c.send_raw(&netstring(b"nospace")).await;
    assert!(c.reply().await.unwrap().starts_with("PERM "));
    assert_eq!(c.query("postfix", b"good.test").await, GOOD);
    // The established connection was never disturbed.
    assert_eq!(other.query("postfix", b"good.test").await, GOOD);
}

#[tokio::test]
async fn socketmap_oversize_request_gets_perm_and_close_without_allocating() {
    let (_w, d) = good_world_and_daemon().await;
    // 2^40 declared: refused from the length digits alone.
    let mut c = SocketmapClient::connect(d.socketmap).await;
    c.send_raw(b"1099511627776:postfix ").await;
    assert_eq!(c.reply().await.unwrap(), "PERM request too large");
    assert!(c.is_closed().await);
    // A 10,241-byte payload is refused; a 10,240-byte one is answered (NOTFOUND: not a hostname).
    let mut c = SocketmapClient::connect(d.socketmap).await;
    let mut payload = b"postfix ".to_vec();
    payload.resize(10_241, b'a');
    c.send_raw(&netstring(&payload)).await;
    assert_eq!(c.reply().await.unwrap(), "PERM request too large");
    let mut c = SocketmapClient::connect(d.socketmap).await;
    payload.truncate(10_240);
    c.send_raw(&netstring(&payload)).await;
    assert_eq!(c.reply().await.unwrap(), "NOTFOUND ");
    assert_eq!(c.query("postfix", b"good.test").await, GOOD);
}

#[tokio::test]
async fn idle_connections_are_kept_and_slow_requests_are_cut() {
    let w = good_world().await;
    let d = TestDaemon::start_with(&w, "[limits]\nrequest_timeout = \"500ms\"\n").await;
    let mut idle = SocketmapClient::connect(d.socketmap).await;
    assert_eq!(idle.query("postfix", b"good.test").await, GOOD);
    // Idle well beyond request_timeout: still open (only idle_timeout, 1 h, closes it).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(idle.query("postfix", b"good.test").await, GOOD);
    // A request started but not finished within request_timeout closes the connection.
    let mut slow = SocketmapClient::connect(d.socketmap).await;
    slow.send_raw(b"17:postfix go").await;
    let t = tokio::time::Instant::now();
    assert!(slow.is_closed().await);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// Each pipelined request has its own `request_timeout`: one that arrives behind a slow cold
/// lookup starts its clock when that lookup is answered, not when the bytes before it began to
/// arrive (a Postfix client that pipelines must not be cut as slow).
#[tokio::test]
async fn a_request_pipelined_behind_a_slow_lookup_gets_its_own_deadline() {
    let w = good_world().await;
    // The TXT query of slow.test is never answered: its lookup takes the whole DNS timeout
    // (2 s in the test config), four times request_timeout.
    w.drop_queries("_mta-sts.slow.test");
    let d = TestDaemon::start_with(&w, "[limits]\nrequest_timeout = \"500ms\"\n").await;
    let mut c = SocketmapClient::connect(d.socketmap).await;
    let slow = netstring(b"postfix slow.test");
    let good = netstring(b"postfix good.test");
    // The slow request arrives in two pieces, so a request clock is running when it completes;
    // the good one follows at once, cut in the middle.
    c.send_raw(&slow[..5]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut rest = slow[5..].to_vec();
    rest.extend_from_slice(&good[..8]);
    c.send_raw(&rest).await;
    let t = tokio::time::Instant::now();
    assert_eq!(c.reply().await.unwrap(), "NOTFOUND ");
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // Well within its own deadline, the rest of the second request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send_raw(&good[8..]).await;
    assert_eq!(c.reply().await.unwrap(), GOOD);
}

#[tokio::test]
async fn tcp_table_replies_and_key_encoding() {
    let (_w, d) = good_world_and_daemon().await;
    let mut c = TcpTableClient::connect(d.tcp_table).await;
    assert_eq!(
        c.get(b"good.test").await,
        "200 secure%20match=mx.good.test%20servername=hostname"
    );
    assert_eq!(c.get(b"nothing.test").await, "500 not%20found");
    // Postfix %XX-encodes keys; upper case arrives encoded as is.
    c.send_raw(b"get GOOD%2etest\n").await;
    assert_eq!(
        c.line().await.unwrap(),
        "200 secure%20match=mx.good.test%20servername=hostname"
    );
    // Byte at a time.
    for b in b"get good.test\n" {
        c.send_raw(std::slice::from_ref(b)).await;
    }
    assert!(c.line().await.unwrap().starts_with("200 "));
    // A bad request gets 400 and the connection stays usable.
    c.send_raw(b"put good.test x\n").await;
    assert!(c.line().await.unwrap().starts_with("400 "));
    c.send_raw(b"get bad%zz\n").await;
    assert!(c.line().await.unwrap().starts_with("400 "));
    assert_eq!(c.get(b".good.test").await, "500 not%20found");
    // Never CRLF: every reply line ends in a bare LF.
    let mut raw = tokio::net::TcpStream::connect(d.tcp_table).await.unwrap();
    raw.write_all(b"get good.test\n").await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = raw.read(&mut buf).await.unwrap();
    assert!(buf[..n].ends_with(b"hostname\n") && !buf[..n].contains(&b'\r'));
}

#[tokio::test]
async fn tcp_table_oversize_line_gets_400_and_close() {
    let (_w, d) = good_world_and_daemon().await;
    let mut c = TcpTableClient::connect(d.tcp_table).await;
    let long = vec![b'a'; 5000];
    c.send_raw(b"get ").await;
    c.send_raw(&long).await;
    assert!(c.line().await.unwrap().starts_with("400 "));
    assert!(c.line().await.is_none(), "closed after an oversize line");
    let mut ok = TcpTableClient::connect(d.tcp_table).await;
    assert!(ok.get(b"good.test").await.starts_with("200 "));
}

#[tokio::test]
async fn tlsrpt_tcp_table_answer_is_encoded_exactly() {
    let w = World::start().await;
    w.good_domain(
        "good.test",
        "1",
        &enforce_body(&["mx.good.test", "*.good.test"]),
    )
    .await;
    let d = ConfigText::of_map(&w, "tlsrpt").start().await;
    let mut c = TcpTableClient::connect(d.tcp_table).await;
    let line = c.get(b"good.test").await;
    // Spaces, braces are the only characters here that tcp_table(5) asks to encode; '{' and '}'
    // are printable and pass as they are.
    let want = "secure match=mx.good.test:.good.test servername=hostname policy_type=sts \
                policy_domain=good.test mx_host_pattern=mx.good.test mx_host_pattern=*.good.test \
                { policy_string = version: STSv1 } { policy_string = mode: enforce } \
                { policy_string = mx: mx.good.test } { policy_string = mx: *.good.test } \
                { policy_string = max_age: 86400 }";
    assert_eq!(line, format!("200 {}", want.replace(' ', "%20")));
    // The same profile over socketmap carries the same value unencoded.
    let mut s = SocketmapClient::connect(d.socketmap).await;
    assert_eq!(s.query("tlsrpt", b"good.test").await, format!("OK {want}"));
}

#[tokio::test]
async fn unix_socket_listener_with_mode() {
    use std::os::unix::fs::PermissionsExt;
    let w = good_world().await;
    let path = w.dir().join("policyd.sock");
    let d = ConfigText::of(&w)
        .replace(
            "[socketmap]\nlisten = [\"inet:127.0.0.1:0\"]",
            &format!(
                "[socketmap]\nlisten = [\"inet:127.0.0.1:0\", \"unix:{}\"]\nunix_mode = \"0660\"",
                path.display()
            ),
        )
        .start()
        .await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    s.write_all(&netstring(b"postfix good.test")).await.unwrap();
    let want = format!("{}:{GOOD},", GOOD.len());
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(String::from_utf8(got).unwrap(), want);
    // Shutdown removes the socket file.
    d.daemon.shutdown().await;
    assert!(!path.exists());
}
