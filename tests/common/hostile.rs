//! Running one case against a hostile peer (tests/hostile_https.rs, tests/hostile_dns.rs): a
//! lookup of a domain with nothing cached must end in the documented answer (`NOTFOUND`, README
//! "Answer semantics") within the lookup deadline (`dns.timeout + https.timeout` of the harness
//! config), with bounded memory (the test process's VmRSS, sampled during the lookup, grows by
//! less than 64 MiB; the daemon runs in this process), and while it goes on the same daemon keeps
//! answering well-behaved domains promptly. Each case prints one `HOSTILE |` row (time to answer,
//! RSS growth, checks of well-behaved domains); run with `--nocapture` to see them.
//!
//! The cases of one test binary run one at a time ([`SERIAL`]), so that one case's memory does
//! not show in another's figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::harness::{self, SocketmapClient, TestDaemon, enforce_body};
use super::scripted_https::HostStats;

pub const NOTFOUND: &str = "NOTFOUND ";

/// Peak growth of the test process's resident memory allowed during one hostile lookup.
pub const RSS_LIMIT_KIB: i64 = 64 * 1024;

/// Scheduling slack on top of a timeout (2 shared cores, debug build).
pub const SLACK: Duration = Duration::from_millis(750);

/// A well-behaved domain (cold: TXT, A, TLS, fetch) must be answered within this while a hostile
/// lookup is in progress.
pub const GOOD_WITHIN: Duration = Duration::from_secs(1);

/// As [`GOOD_WITHIN`] while 100 hostile lookups start at once: their 100 TLS handshakes (the
/// daemon's and the hostile server's, both in this debug-build process) compete for the same 2
/// cores. Still well below the HTTPS timeout the hostile lookups wait for.
pub const GOOD_WITHIN_UNDER_LOAD: Duration = Duration::from_secs(2);

/// How often a well-behaved domain is asked while a hostile lookup runs.
pub const GOOD_EVERY: Duration = Duration::from_millis(400);

/// Well-behaved domains `good0.test` ... provisioned per test.
pub const GOOD_DOMAINS: usize = 100;

/// Serialises the cases (see the module doc).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn secure(matches: &str) -> String {
    format!("OK secure match={matches} servername=hostname")
}

pub fn dns_timeout() -> Duration {
    humantime::parse_duration(harness::DNS_TIMEOUT).expect("harness DNS_TIMEOUT")
}

pub fn https_timeout() -> Duration {
    humantime::parse_duration(harness::HTTPS_TIMEOUT).expect("harness HTTPS_TIMEOUT")
}

/// The daemon's lookup deadline: `dns.timeout + https.timeout`.
pub fn deadline() -> Duration {
    dns_timeout() + https_timeout()
}

/// With `RUST_LOG` set, the daemon's logs go to the test output (to see why each case failed).
pub fn init_log() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// When a case must be answered.
#[derive(Clone, Copy, Debug)]
pub enum When {
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
    pub fn bounds(self) -> (Duration, Duration) {
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
pub fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Samples VmRSS every 2 ms on a thread of its own; [`RssPeak::stop`] gives the highest value.
pub struct RssPeak {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<i64>,
}

impl RssPeak {
    pub fn start() -> RssPeak {
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

    pub fn stop(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("RSS sampler")
    }
}

// ------------------------------------------------------------------------ well-behaved domains

/// Asks `good<N>.test` (a fresh domain each time, so each is a full cold discovery) and checks
/// it is answered with its policy within [`GOOD_WITHIN`].
pub struct Good {
    within: Duration,
    next: usize,
    checks: usize,
    max: Duration,
}

impl Default for Good {
    fn default() -> Good {
        Good {
            within: GOOD_WITHIN,
            next: 0,
            checks: 0,
            max: Duration::ZERO,
        }
    }
}

impl Good {
    pub fn new() -> Good {
        Good::default()
    }

    pub async fn check(&mut self, d: &TestDaemon, during: &str) {
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

pub fn good_body(domain: &str) -> String {
    enforce_body(&[&format!("mx.{domain}")])
}

// ------------------------------------------------------------------------------- one case

/// Asks `key` on its own connection while checking well-behaved domains every [`GOOD_EVERY`],
/// then checks the answer (NOTFOUND), its time against `when`, and the peak RSS growth. Prints
/// one `HOSTILE |` row; `server_bytes` (if given) is added to it after the lookup.
pub async fn case(
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
pub async fn concurrent_case(
    d: &TestDaemon,
    good: &mut Good,
    name: &str,
    keys: &[String],
    when: When,
) {
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
pub async fn control(d: &TestDaemon, key: &str, want: &str) {
    let got = d.ask(key).await;
    println!("HOSTILE control | {key} | {got:?} |");
    assert_eq!(got, want, "control {key}");
}
