//! Hostile servers (issue 6, point 3): policy hosts that never end their body, flood it, send one
//! endless line or a header flood, hang inside TLS or reset mid-body; DNS servers that truncate,
//! send huge TXT sets, CNAME loops or only wrong-id answers; and 100 of the slow kinds at once.
//! Policy hosts are `common::hostile_https` (streams its bodies, its own test CA); DNS is
//! `common::rawdns` (hand-made replies), except case 5, which uses the world's `Http::HangTls`.
//!
//! Every case must end in the documented answer for a domain with nothing cached (`NOTFOUND`,
//! README "Answer semantics") within the lookup deadline (`dns.timeout + https.timeout` of the
//! harness config), with bounded memory (the test process's VmRSS, sampled during the lookup,
//! grows by less than 64 MiB; the daemon runs in this process), and while it goes on the same
//! daemon keeps answering well-behaved domains promptly. Each case prints one `HOSTILE |` row
//! (time to answer, RSS growth, checks of well-behaved domains); run with `--nocapture` to see
//! them.
//!
//! The cases run one at a time (a process-wide lock), so that one case's memory does not show in
//! another's figures.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::harness::{self, SocketmapClient, TestDaemon, config_text, enforce_body};
use common::hostile_https::{Conn, HostStats, HostileHttps, Script, script};
use common::rawdns::{self, Action, Query, RawDns, Reply, Transport};
use common::{Http, World};
use mta_sts_policyd::config::Config;
use tokio::time::Instant;

const NOTFOUND: &str = "NOTFOUND ";

/// Peak growth of the test process's resident memory allowed during one hostile lookup.
const RSS_LIMIT_KIB: i64 = 64 * 1024;

/// Scheduling slack on top of a timeout (2 shared cores, debug build).
const SLACK: Duration = Duration::from_millis(750);

/// A well-behaved domain (cold: TXT, A, TLS, fetch) must be answered within this while a hostile
/// lookup is in progress.
const GOOD_WITHIN: Duration = Duration::from_secs(1);

/// As [`GOOD_WITHIN`] while 100 hostile lookups start at once: their 100 TLS handshakes (the
/// daemon's and the hostile server's, both in this debug-build process) compete for the same 2
/// cores. Still well below the HTTPS timeout the hostile lookups wait for.
const GOOD_WITHIN_UNDER_LOAD: Duration = Duration::from_secs(2);

/// How often a well-behaved domain is asked while a hostile lookup runs.
const GOOD_EVERY: Duration = Duration::from_millis(400);

/// Well-behaved domains `good0.test` ... provisioned per test.
const GOOD_DOMAINS: usize = 100;

/// A valid policy head: a daemon that parsed a cut-off prefix of a flood would find a policy.
const POLICY_PREFIX: &str = "version: STSv1\nmode: enforce\nmax_age: 86400\n";

/// Serialises the cases (see the module doc).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn secure(matches: &str) -> String {
    format!("OK secure match={matches} servername=hostname")
}

fn dns_timeout() -> Duration {
    humantime::parse_duration(harness::DNS_TIMEOUT).expect("harness DNS_TIMEOUT")
}

fn https_timeout() -> Duration {
    humantime::parse_duration(harness::HTTPS_TIMEOUT).expect("harness HTTPS_TIMEOUT")
}

/// The daemon's lookup deadline: `dns.timeout + https.timeout`.
fn deadline() -> Duration {
    dns_timeout() + https_timeout()
}

/// With `RUST_LOG` set, the daemon's logs go to the test output (to see why each case failed).
fn init_log() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// When a case must be answered.
#[derive(Clone, Copy, Debug)]
enum When {
    /// Well before either timeout: the daemon gave up on its own (cap, parse error, reset).
    Quick,
    /// No later than the DNS timeout.
    WithinDnsTimeout,
    /// At the DNS timeout (nothing usable ever arrives).
    AtDnsTimeout,
    /// At the HTTPS timeout (the fetch never completes), within the lookup deadline.
    AtHttpsTimeout,
}

impl When {
    fn bounds(self) -> (Duration, Duration) {
        let early = Duration::from_millis(100);
        match self {
            When::Quick => (Duration::ZERO, Duration::from_millis(1500)),
            When::WithinDnsTimeout => (Duration::ZERO, dns_timeout() + SLACK),
            When::AtDnsTimeout => (dns_timeout() - early, dns_timeout() + SLACK),
            When::AtHttpsTimeout => (https_timeout() - early, deadline() + SLACK),
        }
    }
}

// ------------------------------------------------------------------------------------ memory

/// VmRSS of this process in KiB.
fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Samples VmRSS every 2 ms on a thread of its own; [`RssPeak::stop`] gives the highest value.
struct RssPeak {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<i64>,
}

impl RssPeak {
    fn start() -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut peak = rss_kib();
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max(rss_kib());
                    std::thread::sleep(Duration::from_millis(2));
                }
                peak.max(rss_kib())
            }
        });
        RssPeak { stop, thread }
    }

    fn stop(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("RSS sampler")
    }
}

// ------------------------------------------------------------------------ well-behaved domains

/// Asks `good<N>.test` (a fresh domain each time, so each is a full cold discovery) and checks
/// it is answered with its policy within [`GOOD_WITHIN`].
struct Good {
    within: Duration,
    next: usize,
    checks: usize,
    max: Duration,
}

impl Good {
    fn new() -> Good {
        Good {
            within: GOOD_WITHIN,
            next: 0,
            checks: 0,
            max: Duration::ZERO,
        }
    }

    async fn check(&mut self, d: &TestDaemon, during: &str) {
        assert!(self.next < GOOD_DOMAINS, "out of well-behaved domains");
        let domain = format!("good{}.test", self.next);
        self.next += 1;
        let t = Instant::now();
        let got = d.ask(&domain).await;
        let took = t.elapsed();
        assert_eq!(
            got,
            secure(&format!("mx.{domain}")),
            "well-behaved {domain} during {during}"
        );
        assert!(
            took < self.within,
            "well-behaved {domain} took {took:?} during {during}"
        );
        self.checks += 1;
        self.max = self.max.max(took);
    }
}

fn good_body(domain: &str) -> String {
    enforce_body(&[&format!("mx.{domain}")])
}

// ------------------------------------------------------------------------------- one case

/// Asks `key` on its own connection while checking well-behaved domains every [`GOOD_EVERY`],
/// then checks the answer (NOTFOUND), its time against `when`, and the peak RSS growth. Prints
/// one `HOSTILE |` row; `server_bytes` (if given) is added to it after the lookup.
async fn case(
    d: &TestDaemon,
    good: &mut Good,
    name: &str,
    key: &str,
    when: When,
    server_bytes: Option<&HostStats>,
) {
    // Healthy before (and warms up the daemon's TLS and DNS paths).
    good.check(d, &format!("{name} (before)")).await;
    let checks_before = good.checks;
    let max_before = good.max;
    good.max = Duration::ZERO;

    let rss_before = rss_kib();
    let peak = RssPeak::start();
    let hostile = tokio::spawn({
        let addr = d.socketmap;
        let key = key.to_string();
        async move {
            let mut c = SocketmapClient::connect(addr).await;
            let t = Instant::now();
            let answer = c.query("postfix", key.as_bytes()).await;
            (answer, t.elapsed())
        }
    });
    loop {
        tokio::time::sleep(GOOD_EVERY).await;
        if hostile.is_finished() {
            break;
        }
        good.check(d, name).await;
    }
    let (answer, elapsed) = hostile.await.expect("hostile lookup task");
    let rss_after = rss_kib();
    let rss_peak = peak.stop().max(rss_after);
    let during = good.checks - checks_before;
    let during_max = good.max;
    good.max = good.max.max(max_before);
    // Healthy after.
    good.check(d, &format!("{name} (after)")).await;

    let growth = rss_after - rss_before;
    let peak_growth = rss_peak - rss_before;
    let bytes = server_bytes
        .map(|s| format!("{} KiB", s.bytes_written() / 1024))
        .unwrap_or_else(|| "-".to_string());
    println!(
        "HOSTILE | {name} | {answer:?} | {ms} ms | {growth} KiB | {peak_growth} KiB | {during} \
         in flight, max {gmax} ms | {bytes} |",
        ms = elapsed.as_millis(),
        gmax = during_max.as_millis(),
    );

    assert_eq!(answer, NOTFOUND, "{name}: answer");
    let (lo, hi) = when.bounds();
    assert!(
        elapsed >= lo && elapsed <= hi,
        "{name}: answered after {elapsed:?}, expected {when:?} ({lo:?}..={hi:?})"
    );
    assert!(
        peak_growth < RSS_LIMIT_KIB,
        "{name}: RSS grew by {peak_growth} KiB at peak ({rss_before} -> {rss_peak} KiB)"
    );
    if elapsed > GOOD_EVERY * 2 {
        assert!(
            during > 0,
            "{name}: no well-behaved lookup ran during the case"
        );
    }
}

/// As [`case`], for many hostile `keys` looked up at once.
async fn concurrent_case(d: &TestDaemon, good: &mut Good, name: &str, keys: &[String], when: When) {
    good.check(d, &format!("{name} (before)")).await;
    let checks_before = good.checks;
    let max_before = good.max;
    good.max = Duration::ZERO;

    good.within = GOOD_WITHIN_UNDER_LOAD;
    let rss_before = rss_kib();
    let peak = RssPeak::start();
    let lookups: Vec<_> = keys
        .iter()
        .map(|key| {
            let addr = d.socketmap;
            let key = key.clone();
            tokio::spawn(async move {
                let mut c = SocketmapClient::connect(addr).await;
                let t = Instant::now();
                let answer = c.query("postfix", key.as_bytes()).await;
                (key, answer, t.elapsed())
            })
        })
        .collect();
    loop {
        tokio::time::sleep(GOOD_EVERY).await;
        if lookups.iter().all(|h| h.is_finished()) {
            break;
        }
        good.check(d, name).await;
    }
    let mut answers = Vec::new();
    for h in lookups {
        answers.push(h.await.expect("lookup task"));
    }
    good.within = GOOD_WITHIN;
    let rss_after = rss_kib();
    let rss_peak = peak.stop().max(rss_after);
    let during = good.checks - checks_before;
    let during_max = good.max;
    good.max = good.max.max(max_before);
    good.check(d, &format!("{name} (after)")).await;

    let slowest = answers.iter().map(|a| a.2).max().unwrap_or_default();
    let fastest = answers.iter().map(|a| a.2).min().unwrap_or_default();
    let peak_growth = rss_peak - rss_before;
    println!(
        "HOSTILE | {name} | {n} x {NOTFOUND:?} | {lo}-{hi} ms | {growth} KiB | {peak_growth} KiB | \
         {during} in flight, max {gmax} ms | - |",
        n = answers.iter().filter(|a| a.1 == NOTFOUND).count(),
        lo = fastest.as_millis(),
        hi = slowest.as_millis(),
        growth = rss_after - rss_before,
        gmax = during_max.as_millis(),
    );
    let (lo, hi) = when.bounds();
    for (key, answer, elapsed) in &answers {
        assert_eq!(answer, NOTFOUND, "{name}: {key}");
        assert!(
            *elapsed >= lo && *elapsed <= hi,
            "{name}: {key} answered after {elapsed:?}, expected {when:?} ({lo:?}..={hi:?})"
        );
    }
    assert!(
        peak_growth < RSS_LIMIT_KIB,
        "{name}: RSS grew by {peak_growth} KiB at peak ({rss_before} -> {rss_peak} KiB)"
    );
    assert!(during > 0, "{name}: no well-behaved lookup ran meanwhile");
}

/// A positive control: `key`, served by the same hostile server but without the hostile part,
/// gets `want` (so that a case's NOTFOUND is down to what the case does, not to the test's own
/// server or message crafting).
async fn control(d: &TestDaemon, key: &str, want: &str) {
    let got = d.ask(key).await;
    println!("HOSTILE control | {key} | {got:?} |");
    assert_eq!(got, want, "control {key}");
}

// ------------------------------------------------------------------------ HTTPS test bed

struct HttpsBed {
    _world: World,
    https: HostileHttps,
    daemon: TestDaemon,
    good: Good,
}

/// Replaces the one occurrence of `from` in `text`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected exactly one {from:?} in the harness config:\n{text}"
    );
    text.replace(from, to)
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
    let text = config_text(&world, "");
    let text = replace_once(
        &text,
        &format!("port = {}", world.https_port()),
        &format!("port = {}", https.port()),
    );
    let text = replace_once(
        &text,
        &format!("ca_files = [\"{}\"]", world.ca_file().display()),
        &format!("ca_files = [\"{}\"]", https.ca_file().display()),
    );
    let config = Config::parse(&text, Some(Path::new("hostile-https.toml")))
        .expect("hostile HTTPS config must be valid");
    let daemon = TestDaemon::from_config(config).await;
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

/// The mx flood of case 2.
const FLOOD_LINES: usize = 1_000_000;

/// What a server may have pushed before the daemon stopped reading: socket buffers on both
/// sides of a loopback connection are a few MiB; the flood bodies are far larger.
const FLOOD_SENT_LIMIT: u64 = 32 * 1024 * 1024;

// ================================================================================ HTTPS cases

/// Case 1: a body that never ends: a Content-Length that is never reached, an endless slow
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
        "1 body never ends: Content-Length 1000, 44 bytes sent, silence",
        "cl-silence.test",
        When::AtHttpsTimeout,
    )
    .await;
    bed.run(
        "1 body never ends: chunked, one chunk per 100 ms forever",
        "chunked-slow.test",
        When::AtHttpsTimeout,
    )
    .await;
    bed.run(
        "1 body never ends: close-delimited, 1 byte per 50 ms forever",
        "trickle.test",
        When::AtHttpsTimeout,
    )
    .await;
}

/// Case 2: 10^6 mx lines (about 86 MB, more than the RSS limit, so buffering it whole would
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
        ("2 10^6 mx lines, Content-Length", "mx-cl.test"),
        ("2 10^6 mx lines, chunked", "mx-chunked.test"),
        ("2 10^6 mx lines, close-delimited", "mx-close.test"),
        ("2 10^6 mx lines, Content-Length u64::MAX", "mx-clmax.test"),
    ] {
        bed.run(name, domain, When::Quick).await;
        let sent = bed.stats(domain).bytes_written();
        assert!(
            sent < FLOOD_SENT_LIMIT && sent < mx_flood_len(FLOOD_LINES),
            "{name}: the server could send {sent} bytes: the body was read far past the cap"
        );
    }
}

/// Case 3: one line of 2 MiB without a newline (by Content-Length, chunked, close-delimited), and
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
        ("3 one 2 MiB line, Content-Length", "line-cl.test"),
        ("3 one 2 MiB line, chunked", "line-chunked.test"),
        ("3 one 2 MiB line, close-delimited", "line-close.test"),
        ("3 one endless line, close-delimited", "line-endless.test"),
    ] {
        bed.run(name, domain, When::Quick).await;
        let sent = bed.stats(domain).bytes_written();
        assert!(
            sent < FLOOD_SENT_LIMIT,
            "{name}: the server could send {sent} bytes"
        );
    }
}

/// Case 4: a header flood (100,000 headers), one 1 MiB header, one endless header, and headers
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
            "4 header flood: 100,000 headers",
            "hdr-many.test",
            When::Quick,
        ),
        (
            "4 header flood: one 1 MiB header",
            "hdr-big.test",
            When::Quick,
        ),
        (
            "4 header flood: one endless header",
            "hdr-endless.test",
            When::Quick,
        ),
        (
            "4 header flood: one header per 100 ms forever",
            "hdr-trickle.test",
            When::AtHttpsTimeout,
        ),
        (
            "4 trailer flood: complete chunked policy, endless trailers",
            "hdr-trailers.test",
            When::Quick,
        ),
        (
            "4 chunk-extension flood: endless extension on a chunk-size line",
            "hdr-chunkext.test",
            When::Quick,
        ),
        (
            "4 interim-response flood: endless 100 Continue",
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

/// Case 5: the policy host accepts TCP, reads the ClientHello and never completes the handshake
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
        "5 hangs inside TLS (ClientHello read, no ServerHello)",
        "hangtls.test",
        When::AtHttpsTimeout,
        None,
    )
    .await;
    // The handshake never completed, so no request was ever read.
    assert_eq!(w.fetches("hangtls.test"), 0);
}

/// Case 6: the connection breaks mid-body after a complete-looking policy was sent (so that
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
            "6 closed after body: FIN without close_notify, close-delimited",
            "fin-close.test",
        ),
        (
            "6 reset mid-body: RST, Content-Length half sent",
            "rst-cl.test",
        ),
        (
            "6 reset mid-body: RST, chunked without last chunk",
            "rst-chunked.test",
        ),
        ("6 reset mid-head: RST", "rst-head.test"),
        (
            "6 closed mid-body: FIN without close_notify, Content-Length half sent",
            "fin-cl.test",
        ),
    ] {
        bed.run(name, domain, When::Quick).await;
    }
}

/// Case 11 under load: 100 policy hosts at once that never end their body (case 1, slow
/// chunked), all looked up together. Each gets NOTFOUND at the HTTPS timeout, memory stays
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
        "11 100 endless slow chunked bodies at once",
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

// ========================================================================== DNS test bed

struct DnsBed {
    world: World,
    dns: RawDns,
    daemon: TestDaemon,
    good: Good,
}

/// The answers of `good<N>.test` (TXT, policy host 127.0.0.1), for any N. For odd N the TXT
/// set also holds eight 200-byte SPF-like records, too large for UDP: those domains are resolved
/// over TCP (after TC), so that the checks cover both transports.
fn good_dns(q: &Query) -> Option<Reply> {
    let rest = q
        .name
        .strip_prefix("_mta-sts.")
        .or_else(|| q.name.strip_prefix("mta-sts."))?;
    let label = rest.strip_suffix(".test.")?;
    let n = label.strip_prefix("good")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let reply = rawdns::sts_domain_reply(q, &format!("{label}.test"), "1")?;
    let odd = n.bytes().last().is_some_and(|b| (b - b'0') % 2 == 1);
    if odd && q.name.starts_with("_mta-sts.") && q.qtype == rawdns::TYPE_TXT {
        let junk = format!("v=spf1 {}-all", "a ".repeat(96));
        return Some((0..8).fold(reply, |r, _| r.txt(&q.name, &[junk.as_bytes()])));
    }
    Some(reply)
}

/// The daemon asks the raw DNS server `dns`, which answers `good<N>.test` properly, A
/// `mta-sts.*` with 127.0.0.1 (the world's HTTPS server, which serves a policy for
/// `good<N>.test` and for each of `policies`, so that a wrongly accepted hostile TXT answer would
/// show as a policy), asks `hostile` for everything else, and answers NXDOMAIN when it declines.
async fn dns_bed<F>(policies: &[&str], hostile: F) -> DnsBed
where
    F: Fn(&Query, Transport) -> Option<Vec<Action>> + Send + Sync + 'static,
{
    let world = World::start().await;
    for n in 0..GOOD_DOMAINS {
        let domain = format!("good{n}.test");
        world.serve_policy(&domain, &good_body(&domain)).await;
    }
    for domain in policies {
        world
            .serve_policy(domain, &enforce_body(&[&format!("mx.{domain}")]))
            .await;
    }
    let script: rawdns::Script = Arc::new(move |q: &Query, t: Transport| {
        if let Some(r) = good_dns(q) {
            return r.fit(t);
        }
        if let Some(actions) = hostile(q, t) {
            return actions;
        }
        if q.name.starts_with("mta-sts.") {
            let r = Reply::to(q);
            return if q.qtype == rawdns::TYPE_A {
                r.a(&q.name, Ipv4Addr::LOCALHOST).send()
            } else {
                r.send()
            };
        }
        Reply::to(q).rcode(rawdns::RCODE_NXDOMAIN).send()
    });
    let dns = RawDns::start(script).await;
    let text = replace_once(
        &config_text(&world, ""),
        &format!("nameservers = [\"{}\"]", world.dns_addr()),
        &format!("nameservers = [\"{}\"]", dns.addr()),
    );
    let config = Config::parse(&text, Some(Path::new("hostile-dns.toml")))
        .expect("hostile DNS config must be valid");
    let daemon = TestDaemon::from_config(config).await;
    DnsBed {
        world,
        dns,
        daemon,
        good: Good::new(),
    }
}

impl DnsBed {
    /// Runs one case for `domain`; no policy fetch may follow a hostile answer.
    async fn run(&mut self, name: &str, domain: &str, when: When) {
        case(&self.daemon, &mut self.good, name, domain, when, None).await;
        assert_eq!(
            self.world.fetches(domain),
            0,
            "{name}: a policy was fetched on the strength of a hostile DNS answer"
        );
    }
}

fn is_txt_of(q: &Query, domain: &str) -> bool {
    q.name == rawdns::fqdn(&format!("_mta-sts.{domain}"))
}

fn sts_txt(q: &Query, id: &str) -> Reply {
    let record = format!("v=STSv1; id={id}");
    Reply::to(q).txt(&q.name, &[record.as_bytes()])
}

// ================================================================================== DNS cases

/// Case 7: truncated UDP answers (TC) and a broken TCP answer: closed at once, a length prefix
/// that is never met, a framed message of garbage, the answer cut in the middle, TC again over
/// TCP, or silence. A truncated UDP answer that carries a valid-looking STS record must not be
/// used. NOTFOUND within the DNS timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_sends_truncated_answers() {
    let _serial = SERIAL.lock().await;
    init_log();
    let domains = [
        "tc-close.test",
        "tc-badlen.test",
        "tc-garbage.test",
        "tc-cut.test",
        "tc-tc.test",
        "tc-hang.test",
        "tc-ok.test",
    ];
    let mut bed = dns_bed(&domains, move |q, t| {
        let d = domains.iter().find(|d| is_txt_of(q, d))?;
        if *d == "tc-ok.test" && t == Transport::Tcp {
            return Some(sts_txt(q, "1").send());
        }
        // UDP: TC set, and the answer the client must not use (RFC 2181 §9) already in it.
        if t == Transport::Udp {
            return Some(sts_txt(q, "1").truncated().send());
        }
        let full = sts_txt(q, "1").build();
        Some(match *d {
            "tc-close.test" => vec![Action::Close],
            "tc-badlen.test" => vec![Action::Raw(vec![0xff, 0xff, 1, 2, 3]), Action::Close],
            "tc-garbage.test" => vec![Action::Send(vec![0xab; 300]), Action::Close],
            "tc-cut.test" => {
                let mut framed = (full.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&full[..full.len() / 2]);
                vec![Action::Raw(framed), Action::Close]
            }
            "tc-tc.test" => sts_txt(q, "1").truncated().send(),
            _ => vec![Action::Hang],
        })
    })
    .await;
    // Control: TC on UDP and a proper answer over TCP is a policy.
    control(&bed.daemon, "tc-ok.test", &secure("mx.tc-ok.test")).await;
    for (name, domain, when) in [
        (
            "7 TC on UDP, TCP closed at once",
            "tc-close.test",
            When::WithinDnsTimeout,
        ),
        (
            "7 TC on UDP, TCP length 65535 then 3 bytes and close",
            "tc-badlen.test",
            When::WithinDnsTimeout,
        ),
        (
            "7 TC on UDP, TCP 300 bytes of garbage",
            "tc-garbage.test",
            When::WithinDnsTimeout,
        ),
        (
            "7 TC on UDP, TCP answer cut in half and closed",
            "tc-cut.test",
            When::WithinDnsTimeout,
        ),
        (
            "7 TC on UDP, TC again on TCP",
            "tc-tc.test",
            When::WithinDnsTimeout,
        ),
        (
            "7 TC on UDP, TCP never answers",
            "tc-hang.test",
            When::AtDnsTimeout,
        ),
    ] {
        bed.run(name, domain, when).await;
        assert!(
            bed.dns
                .queries(&format!("_mta-sts.{domain}"), Transport::Tcp)
                > 0,
            "{name}: the truncated answer was not retried over TCP"
        );
    }
    // The odd well-behaved domains (too large for UDP) were resolved over TCP meanwhile.
    assert!(bed.dns.queries("_mta-sts.good1.test", Transport::Tcp) > 0);
}

/// TXT records of about 200 bytes: how many fit in one 64 KiB message after the header and the
/// question (each record is 13 + 201 bytes with a compressed owner name).
const HUGE_SET: usize = 300;

fn huge_txt_set(q: &Query, records: usize, len: usize) -> Reply {
    let mut r = sts_txt(q, "huge1");
    let junk = vec![b'x'; len];
    for _ in 1..records {
        r = r.txt(&q.name, &[&junk]);
    }
    r
}

/// Case 8: a huge TXT set (300 records of 200 bytes, one of them a valid STS record: 63.9 KB over
/// TCP after TC on UDP, or as one oversized UDP datagram), one record over the daemon's cap of
/// 64, and one TXT record of 250 character-strings (64 KB). NOTFOUND, no fetch, no hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_sends_huge_txt_sets() {
    let _serial = SERIAL.lock().await;
    init_log();
    let domains = [
        "huge-tcp.test",
        "huge-udp.test",
        "cap65.test",
        "huge-one.test",
        "cap64.test",
    ];
    let mut bed = dns_bed(&domains, move |q, t| {
        let d = domains.iter().find(|d| is_txt_of(q, d))?;
        Some(match (*d, t) {
            ("huge-tcp.test", Transport::Udp) => Reply::to(q).truncated().send(),
            ("huge-tcp.test" | "huge-udp.test", _) => {
                let m = huge_txt_set(q, HUGE_SET, 200).build();
                assert!(m.len() <= 65535, "the huge set must fit one message");
                vec![Action::Send(m)]
            }
            ("cap65.test", _) => huge_txt_set(q, 65, 20).fit(t),
            ("cap64.test", _) => huge_txt_set(q, 64, 20).fit(t),
            (_, _) => {
                // One RR: "v=STSv1; id=big1; " and then 249 strings of 255 bytes of junk.
                let junk = vec![b'y'; 255];
                let mut strings: Vec<&[u8]> = vec![b"v=STSv1; id=big1; "];
                strings.extend(std::iter::repeat_n(junk.as_slice(), 249));
                let r = Reply::to(q).txt(&q.name, &strings);
                if t == Transport::Udp {
                    Reply::to(q).truncated().send()
                } else {
                    r.send()
                }
            }
        })
    })
    .await;
    // Control: 64 records, one of them valid, are within the daemon's cap (src/dns.rs).
    control(&bed.daemon, "cap64.test", &secure("mx.cap64.test")).await;
    for (name, domain) in [
        (
            "8 300 TXT records (63.9 KB) over TCP after TC",
            "huge-tcp.test",
        ),
        (
            "8 300 TXT records (63.9 KB) in one UDP datagram",
            "huge-udp.test",
        ),
        (
            "8 65 TXT records, one valid (cap is 64), TCP after TC",
            "cap65.test",
        ),
        (
            "8 one TXT record of 250 strings (64 KB) over TCP",
            "huge-one.test",
        ),
    ] {
        bed.run(name, domain, When::WithinDnsTimeout).await;
    }
}

/// Case 9: CNAME loops: `_mta-sts.a.test` → `_mta-sts.b.test` → `_mta-sts.a.test` with both
/// records in every answer; the same loop answered one hop per query (so the client must chase
/// it); a name that is its own CNAME; and an endless chain of fresh names. NOTFOUND within the
/// DNS timeout, with a bounded number of queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_sends_cname_loops() {
    let _serial = SERIAL.lock().await;
    init_log();
    let mut bed = dns_bed(&["a.test", "c.test", "self.test", "chain.test"], |q, _| {
        let name = q.name.as_str();
        let r = Reply::to(q);
        Some(
            match name {
                "_mta-sts.a.test." => r
                    .cname("_mta-sts.a.test", "_mta-sts.b.test")
                    .cname("_mta-sts.b.test", "_mta-sts.a.test"),
                "_mta-sts.b.test." => r
                    .cname("_mta-sts.b.test", "_mta-sts.a.test")
                    .cname("_mta-sts.a.test", "_mta-sts.b.test"),
                "_mta-sts.c.test." => r.cname(name, "_mta-sts.d.test"),
                "_mta-sts.d.test." => r.cname(name, "_mta-sts.c.test"),
                "_mta-sts.self.test." => r.cname(name, name),
                "_mta-sts.chain.test." => r.cname(name, "hop1.chain.test"),
                _ => {
                    let n: u64 = name
                        .strip_prefix("hop")?
                        .strip_suffix(".chain.test.")?
                        .parse()
                        .ok()?;
                    r.cname(name, &format!("hop{}.chain.test", n + 1))
                }
            }
            .send(),
        )
    })
    .await;
    for (name, domain, zone) in [
        (
            "9 CNAME loop a -> b -> a, both in every answer",
            "a.test",
            "test",
        ),
        (
            "9 CNAME loop c -> d -> c, one hop per answer",
            "c.test",
            "test",
        ),
        ("9 CNAME to itself", "self.test", "self.test"),
        (
            "9 endless CNAME chain of fresh names",
            "chain.test",
            "chain.test",
        ),
    ] {
        let before = bed.dns.queries_under(zone);
        bed.run(name, domain, When::WithinDnsTimeout).await;
        let queries = bed.dns.queries_under(zone) - before;
        println!("HOSTILE info: {name}: {queries} queries under {zone}");
        // `zone` "test" also counts the well-behaved domains (3 queries each, a handful of them).
        assert!(
            queries < 200,
            "{name}: {queries} queries: the loop is not bounded"
        );
    }
}

/// Case 10: only answers with a wrong transaction id (each carrying a valid STS record, so that
/// accepting one would show as a policy), once per query or 500 per query, on UDP and on TCP;
/// and two more spoof-like answers: the right id for another question, and the right question
/// answered with a TXT record of an unrelated name. NOTFOUND (at the DNS timeout when nothing
/// acceptable ever arrives), no fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_sends_wrong_id_answers() {
    let _serial = SERIAL.lock().await;
    init_log();
    let domains = [
        "wrongid.test",
        "wrongid-flood.test",
        "wrong-question.test",
        "other-owner.test",
    ];
    let mut bed = dns_bed(&domains, move |q, _| {
        let d = domains.iter().find(|d| is_txt_of(q, d))?;
        Some(match *d {
            "wrongid.test" | "wrongid-flood.test" => {
                let copies: u16 = if *d == "wrongid.test" { 1 } else { 500 };
                (1..=copies)
                    .map(|k| Action::Send(sts_txt(q, "1").id(q.id.wrapping_add(k)).build()))
                    .collect()
            }
            "wrong-question.test" => {
                // The question echoed as `_mta-stt.wrong-question.test` (same length).
                let mut m = sts_txt(q, "1").build();
                assert_eq!(&m[13..21], b"_mta-sts");
                m[20] = b't';
                vec![Action::Send(m)]
            }
            _ => Reply::to(q)
                .txt("_mta-sts.unrelated.test", &[b"v=STSv1; id=1"])
                .send(),
        })
    })
    .await;
    bed.run(
        "10 wrong-id answers only, one per query",
        "wrongid.test",
        When::AtDnsTimeout,
    )
    .await;
    bed.run(
        "10 wrong-id answers only, 500 per query",
        "wrongid-flood.test",
        When::AtDnsTimeout,
    )
    .await;
    // Over UDP hickory drops the forged answer and waits (NOTFOUND at the DNS timeout); when it
    // reuses a TCP connection (open after a well-behaved domain's TC answer), it takes the answer
    // but none of its records is for the name asked (NODATA, NOTFOUND at once).
    bed.run(
        "10 right id, another question",
        "wrong-question.test",
        When::WithinDnsTimeout,
    )
    .await;
    bed.run(
        "10 right question, TXT of an unrelated name",
        "other-owner.test",
        When::WithinDnsTimeout,
    )
    .await;
}

/// Case 11 under load, DNS side: 100 domains at once whose TXT queries get only wrong-id
/// answers (case 10). Each gets NOTFOUND at the DNS timeout, and well-behaved domains (over UDP
/// and over TCP) are answered promptly throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_wrong_id_lookups_at_once_do_not_starve_others() {
    let _serial = SERIAL.lock().await;
    init_log();
    let names: Vec<String> = (0..100).map(|i| format!("wid{i}.test")).collect();
    let mut bed = dns_bed(&[], |q, _| {
        let rest = q.name.strip_prefix("_mta-sts.wid")?;
        rest.ends_with(".test.").then(|| {
            vec![Action::Send(
                sts_txt(q, "1").id(q.id.wrapping_add(1)).build(),
            )]
        })
    })
    .await;
    concurrent_case(
        &bed.daemon,
        &mut bed.good,
        "11 100 wrong-id-only TXT lookups at once",
        &names,
        When::AtDnsTimeout,
    )
    .await;
    for name in &names {
        assert_eq!(bed.world.fetches(name), 0, "{name} was fetched");
    }
}
