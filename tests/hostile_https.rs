//! Hostile policy hosts: bodies that never end, a million mx lines, one endless line, header,
//! trailer and interim-response floods, a TLS handshake that never completes, connections reset
//! or closed mid-body, and 100 of the slow kind at once. The policy hosts are
//! `common::scripted_https` (streams its bodies, its own test CA), except for the TLS hang, which
//! uses the world's `Http::HangTls`; DNS is the world's.
//!
//! What every case must show (answer, deadline, memory, well-behaved domains meanwhile) is in
//! `common::hostile`.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use common::harness::{ConfigText, TestDaemon, enforce_body};
use common::hostile::{
    GOOD_DOMAINS, Good, SERIAL, When, case, concurrent_case, control, good_body, init_log, secure,
};
use common::scripted_https::{Conn, HostStats, HostileHttps, Script, script};
use common::{Http, World};
use tokio::time::Instant;

/// A valid policy head: a daemon that parsed a cut-off prefix of a flood would find a policy.
const POLICY_PREFIX: &str = "version: STSv1\nmode: enforce\nmax_age: 86400\n";

// ------------------------------------------------------------------------ HTTPS test bed

struct HttpsBed {
    _world: World,
    https: HostileHttps,
    daemon: TestDaemon,
    good: Good,
}

/// DNS from `world` (TXT and A records), HTTPS from the hostile server: `good<N>.test` served
/// properly there, and `hostile` domains with a TXT record and a policy host on 127.0.0.1, whose
/// scripts the test sets.
async fn https_bed(hostile: &[&str]) -> HttpsBed {
    let world = World::start().await;
    let https = HostileHttps::start().await;
    for n in 0..GOOD_DOMAINS {
        let domain = format!("good{n}.test");
        world.set_sts(&domain, "1").await;
        world
            .set_a(&format!("mta-sts.{domain}"), Ipv4Addr::LOCALHOST)
            .await;
        https.set(&format!("mta-sts.{domain}"), ok_policy(good_body(&domain)));
    }
    for domain in hostile {
        world.set_sts(domain, "1").await;
        world
            .set_a(&format!("mta-sts.{domain}"), Ipv4Addr::LOCALHOST)
            .await;
    }
    let daemon = ConfigText::of(&world)
        .https_port(https.port())
        .ca_file(https.ca_file())
        .start()
        .await;
    HttpsBed {
        _world: world,
        https,
        daemon,
        good: Good::new(),
    }
}

impl HttpsBed {
    /// Sets `mta-sts.<domain>`'s script.
    fn set(&self, domain: &str, s: Script) {
        self.https.set(&format!("mta-sts.{domain}"), s);
    }

    fn stats(&self, domain: &str) -> Arc<HostStats> {
        self.https.stats(&format!("mta-sts.{domain}"))
    }

    /// Runs one case for `domain`, then checks that the daemon fetched once and let go of the
    /// connection (no fetch left running against the hostile host after the answer).
    async fn run(&mut self, name: &str, domain: &str, when: When) {
        let stats = self.stats(domain);
        case(
            &self.daemon,
            &mut self.good,
            name,
            domain,
            when,
            Some(&stats),
        )
        .await;
        assert_eq!(stats.requests(), 1, "{name}: policy host requests");
        let t = Instant::now();
        while stats.open() > 0 && t.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            stats.open(),
            0,
            "{name}: the daemon still holds the connection to the hostile host {:?} after answering",
            t.elapsed()
        );
    }
}

// ------------------------------------------------------------------------- HTTPS scripts

fn head(extra: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{extra}\r\n").into_bytes()
}

fn chunk(piece: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", piece.len()).into_bytes();
    v.extend_from_slice(piece);
    v.extend_from_slice(b"\r\n");
    v
}

fn ok_policy(body: String) -> Script {
    script(move |mut c: Conn| {
        let body = body.clone();
        async move {
            let h = head(&format!(
                "Content-Length: {}\r\nConnection: close\r\n",
                body.len()
            ));
            if c.send(&h).await && c.send(body.as_bytes()).await {
                c.finish().await;
            }
        }
    })
}

/// 200, chunked, the policy head in the first chunk, then one mx line every 100 ms, forever.
fn slow_chunked() -> Script {
    script(|mut c: Conn| async move {
        if !c.send(&head("Transfer-Encoding: chunked\r\n")).await {
            return;
        }
        if !c.send(&chunk(POLICY_PREFIX.as_bytes())).await {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !c.send(&chunk(b"mx: slow.example.test\n")).await {
                return;
            }
        }
    })
}

/// One line of the mx flood: all the same length (about 90 bytes).
fn mx_line(n: usize) -> String {
    format!("mx: mx{n:07}.{}.flood.test\n", "a".repeat(60))
}

/// Body length of a flood of `lines` mx lines after [`POLICY_PREFIX`].
fn mx_flood_len(lines: usize) -> u64 {
    (POLICY_PREFIX.len() + mx_line(0).len() * lines) as u64
}

/// [`POLICY_PREFIX`] and `lines` mx lines, produced lazily in about 64 KiB pieces (chunked
/// framing if asked), so the server never holds the body.
fn mx_flood(lines: usize, chunked: bool) -> impl FnMut() -> Option<Vec<u8>> + Send {
    let mut n = 0;
    let mut state = 0; // 0: prefix not sent, 1: lines, 2: done
    move || {
        if state == 2 {
            return None;
        }
        let mut piece = Vec::with_capacity(70 * 1024);
        if state == 0 {
            piece.extend_from_slice(POLICY_PREFIX.as_bytes());
            state = 1;
        }
        while piece.len() < 64 * 1024 && n < lines {
            piece.extend_from_slice(mx_line(n).as_bytes());
            n += 1;
        }
        if piece.is_empty() {
            state = 2;
            return chunked.then(|| b"0\r\n\r\n".to_vec());
        }
        Some(if chunked { chunk(&piece) } else { piece })
    }
}

/// `prefix`, then `total` bytes of `a` (no newline; `None` = endless), in 64 KiB pieces.
fn long_line(
    prefix: &'static str,
    total: Option<usize>,
    chunked: bool,
) -> impl FnMut() -> Option<Vec<u8>> + Send {
    let mut sent = 0usize;
    let mut state = 0;
    move || {
        if state == 2 {
            return None;
        }
        let mut piece = Vec::new();
        if state == 0 {
            piece.extend_from_slice(prefix.as_bytes());
            state = 1;
        }
        let want = match total {
            Some(t) => (t - sent).min(64 * 1024),
            None => 64 * 1024,
        };
        piece.resize(piece.len() + want, b'a');
        sent += want;
        if piece.is_empty() {
            state = 2;
            return chunked.then(|| b"0\r\n\r\n".to_vec());
        }
        Some(if chunked { chunk(&piece) } else { piece })
    }
}

/// The mx flood of `policy_host_sends_a_million_mx_lines`.
const FLOOD_LINES: usize = 1_000_000;

/// What a server may have pushed before the daemon stopped reading: socket buffers on both
/// sides of a loopback connection are a few MiB; the flood bodies are far larger.
const FLOOD_SENT_LIMIT: u64 = 32 * 1024 * 1024;

// ================================================================================ HTTPS cases

/// A body that never ends: a Content-Length that is never reached, an endless slow
/// chunked body, an endless trickle of bytes. NOTFOUND at the HTTPS timeout, connection dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_host_never_ends_its_body() {
    let _serial = SERIAL.lock().await;
    init_log();
    let mut bed = https_bed(&["cl-silence.test", "chunked-slow.test", "trickle.test"]).await;
    bed.set(
        "cl-silence.test",
        script(|mut c: Conn| async move {
            if c.send(&head("Content-Length: 1000\r\n")).await
                && c.send(POLICY_PREFIX.as_bytes()).await
            {
                c.wait_client_close().await;
            }
        }),
    );
    bed.set("chunked-slow.test", slow_chunked());
    bed.set(
        "trickle.test",
        script(|mut c: Conn| async move {
            // Close-delimited: no Content-Length, no chunked; one byte every 50 ms, forever.
            if !c.send(&head("Connection: close\r\n")).await {
                return;
            }
            for b in POLICY_PREFIX.bytes().cycle() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if !c.send(&[b]).await {
                    return;
                }
            }
        }),
    );
    bed.run(
        "body never ends: Content-Length 1000, 44 bytes sent, silence",
        "cl-silence.test",
        When::AtHttpsTimeout,
    )
    .await;
    bed.run(
        "body never ends: chunked, one chunk per 100 ms forever",
        "chunked-slow.test",
        When::AtHttpsTimeout,
    )
    .await;
    bed.run(
        "body never ends: close-delimited, 1 byte per 50 ms forever",
        "trickle.test",
        When::AtHttpsTimeout,
    )
    .await;
}

/// 10^6 mx lines (about 86 MB, more than the RSS limit, so buffering it whole would
/// fail the test), announced by Content-Length, chunked, close-delimited, or under a
/// Content-Length of u64::MAX. Cut at the 64 KiB cap: NOTFOUND at once, the server never gets to
/// send the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_host_sends_a_million_mx_lines() {
    let _serial = SERIAL.lock().await;
    init_log();
    let domains = [
        "mx-cl.test",
        "mx-chunked.test",
        "mx-close.test",
        "mx-clmax.test",
        "mx-few.test",
    ];
    let mut bed = https_bed(&domains).await;
    bed.set(
        "mx-cl.test",
        script(|mut c: Conn| async move {
            let h = head(&format!(
                "Content-Length: {}\r\n",
                mx_flood_len(FLOOD_LINES)
            ));
            c.stream(&h, mx_flood(FLOOD_LINES, false)).await;
        }),
    );
    bed.set(
        "mx-chunked.test",
        script(|mut c: Conn| async move {
            let h = head("Transfer-Encoding: chunked\r\n");
            c.stream(&h, mx_flood(FLOOD_LINES, true)).await;
        }),
    );
    bed.set(
        "mx-close.test",
        script(|mut c: Conn| async move {
            let h = head("Connection: close\r\n");
            if c.stream(&h, mx_flood(FLOOD_LINES, false)).await {
                c.finish().await;
            }
        }),
    );
    bed.set(
        "mx-clmax.test",
        script(|mut c: Conn| async move {
            let h = head(&format!("Content-Length: {}\r\n", u64::MAX));
            c.stream(&h, mx_flood(FLOOD_LINES, false)).await;
        }),
    );
    // Control: the same lines, three of them, are a valid policy.
    bed.set(
        "mx-few.test",
        script(|mut c: Conn| async move {
            let h = head(&format!("Content-Length: {}\r\n", mx_flood_len(3)));
            c.stream(&h, mx_flood(3, false)).await;
        }),
    );
    let few: Vec<String> = (0..3)
        .map(|n| mx_line(n).trim_start_matches("mx: ").trim_end().to_string())
        .collect();
    control(&bed.daemon, "mx-few.test", &secure(&few.join(":"))).await;
    println!(
        "HOSTILE info: the mx flood body is {} bytes",
        mx_flood_len(FLOOD_LINES)
    );
    for (name, domain) in [
        ("10^6 mx lines, Content-Length", "mx-cl.test"),
        ("10^6 mx lines, chunked", "mx-chunked.test"),
        ("10^6 mx lines, close-delimited", "mx-close.test"),
        ("10^6 mx lines, Content-Length u64::MAX", "mx-clmax.test"),
    ] {
        bed.run(name, domain, When::Quick).await;
        let sent = bed.stats(domain).bytes_written();
        assert!(
            sent < FLOOD_SENT_LIMIT && sent < mx_flood_len(FLOOD_LINES),
            "{name}: the server could send {sent} bytes: the body was read far past the cap"
        );
    }
}

/// One line of 2 MiB without a newline (by Content-Length, chunked, close-delimited), and
/// one endless line streamed as fast as the daemon reads. NOTFOUND at once, bounded memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_host_sends_one_huge_line() {
    let _serial = SERIAL.lock().await;
    init_log();
    const LINE: usize = 2 * 1024 * 1024;
    const PREFIX: &str = "version: STSv1\nmode: enforce\nmax_age: 86400\nmx: ";
    let domains = [
        "line-cl.test",
        "line-chunked.test",
        "line-close.test",
        "line-endless.test",
    ];
    let mut bed = https_bed(&domains).await;
    bed.set(
        "line-cl.test",
        script(|mut c: Conn| async move {
            let h = head(&format!("Content-Length: {}\r\n", PREFIX.len() + LINE));
            c.stream(&h, long_line(PREFIX, Some(LINE), false)).await;
        }),
    );
    bed.set(
        "line-chunked.test",
        script(|mut c: Conn| async move {
            let h = head("Transfer-Encoding: chunked\r\n");
            c.stream(&h, long_line(PREFIX, Some(LINE), true)).await;
        }),
    );
    bed.set(
        "line-close.test",
        script(|mut c: Conn| async move {
            let h = head("Connection: close\r\n");
            if c.stream(&h, long_line(PREFIX, Some(LINE), false)).await {
                c.finish().await;
            }
        }),
    );
    bed.set(
        "line-endless.test",
        script(|mut c: Conn| async move {
            let h = head("Connection: close\r\n");
            c.stream(&h, long_line(PREFIX, None, false)).await;
        }),
    );
    for (name, domain) in [
        ("one 2 MiB line, Content-Length", "line-cl.test"),
        ("one 2 MiB line, chunked", "line-chunked.test"),
        ("one 2 MiB line, close-delimited", "line-close.test"),
        ("one endless line, close-delimited", "line-endless.test"),
    ] {
        bed.run(name, domain, When::Quick).await;
        let sent = bed.stats(domain).bytes_written();
        assert!(
            sent < FLOOD_SENT_LIMIT,
            "{name}: the server could send {sent} bytes"
        );
    }
}

/// A header flood (100,000 headers), one 1 MiB header, one endless header, and headers
/// trickled one per 100 ms. The first three are refused at once (hyper caps the head), the trickle
/// at the HTTPS timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_host_floods_headers() {
    let _serial = SERIAL.lock().await;
    init_log();
    let domains = [
        "hdr-many.test",
        "hdr-big.test",
        "hdr-endless.test",
        "hdr-trickle.test",
        "hdr-trailers.test",
        "hdr-chunkext.test",
        "hdr-continue.test",
    ];
    let mut bed = https_bed(&domains).await;
    bed.set(
        "hdr-trailers.test",
        script(|mut c: Conn| async move {
            // A complete policy, the last chunk, then trailer fields without end.
            let body = enforce_body(&["mx.hdr-trailers.test"]);
            let mut h = head("Transfer-Encoding: chunked\r\n");
            h.extend_from_slice(&chunk(body.as_bytes()));
            h.extend_from_slice(b"0\r\n");
            let mut n = 0u64;
            c.stream(&h, move || {
                let mut piece = Vec::with_capacity(70 * 1024);
                while piece.len() < 64 * 1024 {
                    piece.extend_from_slice(format!("X-Trailer-{n}: v\r\n").as_bytes());
                    n += 1;
                }
                Some(piece)
            })
            .await;
        }),
    );
    bed.set(
        "hdr-chunkext.test",
        script(|mut c: Conn| async move {
            // A chunk-size line whose extension never ends.
            let mut h = head("Transfer-Encoding: chunked\r\n");
            h.extend_from_slice(b"10;ext=");
            c.stream(&h, || Some(vec![b'e'; 64 * 1024])).await;
        }),
    );
    bed.set(
        "hdr-continue.test",
        script(|mut c: Conn| async move {
            // Interim 100 Continue responses, as fast as the daemon reads, never a final one.
            let piece = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(2048);
            c.stream(b"", move || Some(piece.clone())).await;
        }),
    );
    bed.set(
        "hdr-many.test",
        script(|mut c: Conn| async move {
            let mut n = 0usize;
            let mut done = false;
            let headers = move || {
                if done {
                    return None;
                }
                let mut piece = Vec::with_capacity(70 * 1024);
                while piece.len() < 64 * 1024 && n < 100_000 {
                    piece.extend_from_slice(format!("X-Flood-{n:06}: v\r\n").as_bytes());
                    n += 1;
                }
                if n == 100_000 {
                    done = true;
                    let body = enforce_body(&["mx.hdr-many.test"]);
                    piece.extend_from_slice(
                        format!("Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
                    );
                }
                Some(piece)
            };
            c.stream(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n", headers)
                .await;
        }),
    );
    bed.set(
        "hdr-big.test",
        script(|mut c: Conn| async move {
            let body = enforce_body(&["mx.hdr-big.test"]);
            let mut h = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Big: ".to_vec();
            h.resize(h.len() + 1024 * 1024, b'b');
            h.extend_from_slice(
                format!("\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
            );
            // In 64 KiB writes, like any server would.
            let mut pieces = h.chunks(64 * 1024).map(<[u8]>::to_vec).collect::<Vec<_>>();
            pieces.reverse();
            c.stream(b"", move || pieces.pop()).await;
        }),
    );
    bed.set(
        "hdr-endless.test",
        script(|mut c: Conn| async move {
            let h = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Endless: ";
            c.stream(h, || Some(vec![b'e'; 64 * 1024])).await;
        }),
    );
    bed.set(
        "hdr-trickle.test",
        script(|mut c: Conn| async move {
            if !c
                .send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n")
                .await
            {
                return;
            }
            for n in 0.. {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if !c.send(format!("X-Slow-{n}: v\r\n").as_bytes()).await {
                    return;
                }
            }
        }),
    );
    for (name, domain, when) in [
        (
            "header flood: 100,000 headers",
            "hdr-many.test",
            When::Quick,
        ),
        (
            "header flood: one 1 MiB header",
            "hdr-big.test",
            When::Quick,
        ),
        (
            "header flood: one endless header",
            "hdr-endless.test",
            When::Quick,
        ),
        (
            "header flood: one header per 100 ms forever",
            "hdr-trickle.test",
            When::AtHttpsTimeout,
        ),
        (
            "trailer flood: complete chunked policy, endless trailers",
            "hdr-trailers.test",
            When::Quick,
        ),
        (
            "chunk-extension flood: endless extension on a chunk-size line",
            "hdr-chunkext.test",
            When::Quick,
        ),
        (
            "interim-response flood: endless 100 Continue",
            "hdr-continue.test",
            When::AtHttpsTimeout,
        ),
    ] {
        bed.run(name, domain, when).await;
        let sent = bed.stats(domain).bytes_written();
        // The 100 Continue flood is read (and dropped) until the timeout: how much that is
        // depends on the machine.
        assert!(
            domain == "hdr-continue.test" || sent < FLOOD_SENT_LIMIT,
            "{name}: the server could send {sent} bytes"
        );
    }
}

/// The policy host accepts TCP, reads the ClientHello and never completes the handshake
/// (the world's `Http::HangTls`). NOTFOUND at the HTTPS timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_host_hangs_inside_tls() {
    let _serial = SERIAL.lock().await;
    init_log();
    let w = World::start().await;
    for n in 0..GOOD_DOMAINS {
        let domain = format!("good{n}.test");
        w.good_domain(&domain, "1", &good_body(&domain)).await;
    }
    w.set_sts("hangtls.test", "1").await;
    w.set_http("hangtls.test", Http::HangTls).await;
    let d = TestDaemon::start(&w).await;
    let mut good = Good::new();
    case(
        &d,
        &mut good,
        "hangs inside TLS (ClientHello read, no ServerHello)",
        "hangtls.test",
        When::AtHttpsTimeout,
        None,
    )
    .await;
    // The handshake never completed, so no request was ever read.
    assert_eq!(w.fetches("hangtls.test"), 0);
}

/// The connection breaks mid-body after a complete-looking policy was sent (so that
/// accepting a truncated body would show as a policy): TCP RST (SO_LINGER 0) with Content-Length
/// or chunked framing, RST in the middle of the response head, and a FIN without TLS close_notify
/// under a Content-Length not reached. NOTFOUND at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_host_resets_mid_body() {
    let _serial = SERIAL.lock().await;
    init_log();
    let domains = [
        "rst-cl.test",
        "rst-chunked.test",
        "rst-head.test",
        "fin-cl.test",
        "fin-close.test",
        "close-ok.test",
    ];
    let mut bed = https_bed(&domains).await;
    bed.set(
        "rst-cl.test",
        script(|mut c: Conn| async move {
            let body = enforce_body(&["mx.rst-cl.test"]);
            let h = head(&format!("Content-Length: {}\r\n", body.len() * 2));
            if c.send(&h).await && c.send(body.as_bytes()).await {
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.reset();
            }
        }),
    );
    bed.set(
        "rst-chunked.test",
        script(|mut c: Conn| async move {
            let body = enforce_body(&["mx.rst-chunked.test"]);
            if c.send(&head("Transfer-Encoding: chunked\r\n")).await
                && c.send(&chunk(body.as_bytes())).await
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.reset();
            }
        }),
    );
    bed.set(
        "rst-head.test",
        script(|mut c: Conn| async move {
            if c.send(b"HTTP/1.1 200 OK\r\nContent-Ty").await {
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.reset();
            }
        }),
    );
    bed.set(
        "fin-cl.test",
        script(|mut c: Conn| async move {
            let body = enforce_body(&["mx.fin-cl.test"]);
            let h = head(&format!("Content-Length: {}\r\n", body.len() * 2));
            if c.send(&h).await && c.send(body.as_bytes()).await {
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.close_without_notify().await;
            }
        }),
    );
    bed.set(
        "fin-close.test",
        script(|mut c: Conn| async move {
            let body = enforce_body(&["mx.fin-close.test"]);
            if c.send(&head("Connection: close\r\n")).await && c.send(body.as_bytes()).await {
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.close_without_notify().await;
            }
        }),
    );
    // Control: the same close-delimited body, ended with close_notify, is a policy.
    bed.set(
        "close-ok.test",
        script(|mut c: Conn| async move {
            let body = enforce_body(&["mx.close-ok.test"]);
            if c.send(&head("Connection: close\r\n")).await && c.send(body.as_bytes()).await {
                c.finish().await;
            }
        }),
    );
    control(&bed.daemon, "close-ok.test", &secure("mx.close-ok.test")).await;
    for (name, domain) in [
        (
            "closed after body: FIN without close_notify, close-delimited",
            "fin-close.test",
        ),
        (
            "reset mid-body: RST, Content-Length half sent",
            "rst-cl.test",
        ),
        (
            "reset mid-body: RST, chunked without last chunk",
            "rst-chunked.test",
        ),
        ("reset mid-head: RST", "rst-head.test"),
        (
            "closed mid-body: FIN without close_notify, Content-Length half sent",
            "fin-cl.test",
        ),
    ] {
        bed.run(name, domain, When::Quick).await;
    }
}

/// Under load: 100 policy hosts at once that never end their body (slow chunked, as in
/// `policy_host_never_ends_its_body`), all looked up together. Each gets NOTFOUND at the HTTPS timeout, memory stays
/// bounded, every connection is let go, and well-behaved domains are answered promptly
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_hostile_hosts_at_once_do_not_starve_others() {
    let _serial = SERIAL.lock().await;
    init_log();
    const HOSTS: usize = 100;
    let names: Vec<String> = (0..HOSTS).map(|i| format!("slow{i}.test")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut bed = https_bed(&refs).await;
    for name in &names {
        bed.set(name, slow_chunked());
    }
    concurrent_case(
        &bed.daemon,
        &mut bed.good,
        "100 endless slow chunked bodies at once",
        &names,
        When::AtHttpsTimeout,
    )
    .await;
    let t = Instant::now();
    let open = || names.iter().map(|n| bed.stats(n).open()).sum::<usize>();
    while open() > 0 && t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open(), 0, "connections still held after the answers");
}
