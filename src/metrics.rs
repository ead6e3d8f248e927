//! Process-wide counters, rendered in the Prometheus text exposition format 0.0.4, and a tiny
//! HTTP/1.x server for `GET /metrics`.
//!
//! The lookup hot path only does relaxed atomic adds: no lock, no allocation. Map names are
//! registered once at construction ([`Metrics::with_maps`]); a name not registered is counted
//! under `map="other"`, so a client inventing map names cannot grow the table. Every series is
//! rendered from the start, zero included, so dashboards see no gaps.
//!
//! Series are read one by one while lookups go on, so a scrape is not an atomic snapshot across
//! series; within the histogram, `_count` and every `_bucket` come from the same bucket loads, so
//! they always agree with each other.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// The map name unknown map names are counted under.
pub const OTHER_MAP: &str = "other";

/// The listener a lookup came in on: the `protocol` label is its registered name.
pub use crate::proto::Protocol;

/// What a lookup answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    Found,
    NotFound,
    Temp,
    Perm,
}

impl Answer {
    pub const ALL: [Answer; 4] = [Answer::Found, Answer::NotFound, Answer::Temp, Answer::Perm];

    /// The `answer` label value.
    pub fn label(self) -> &'static str {
        match self {
            Answer::Found => "found",
            Answer::NotFound => "notfound",
            Answer::Temp => "temp",
            Answer::Perm => "perm",
        }
    }
}

/// How one policy discovery (TXT lookup, then maybe the HTTPS fetch) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A policy was fetched and parsed.
    Policy,
    /// The TXT id is the one already held: no fetch.
    Unchanged,
    /// No `_mta-sts` TXT record: NXDOMAIN.
    NxDomain,
    /// No `_mta-sts` TXT record: NODATA.
    NoData,
    /// A `v=STSv1` TXT record that does not parse.
    BadRecord,
    /// More than one `v=STSv1` TXT record.
    MultipleRecords,
    /// The TXT lookup timed out.
    DnsTimeout,
    /// The TXT lookup failed otherwise (SERVFAIL, network error).
    DnsError,
    /// The policy host's certificate or the TLS handshake failed.
    TlsVerify,
    /// The policy fetch answered anything but 200.
    HttpStatus,
    /// The policy was not served as text/plain.
    ContentType,
    /// The policy body is over 64 KiB.
    TooLarge,
    /// The policy body does not parse.
    ParseError,
    /// The whole fetch did not finish in time.
    FetchTimeout,
    /// TCP connect to the policy host failed.
    Connect,
    /// The policy host name did not resolve.
    Resolve,
    /// The HTTP exchange broke or was malformed.
    Http,
}

impl Outcome {
    pub const ALL: [Outcome; 17] = [
        Outcome::Policy,
        Outcome::Unchanged,
        Outcome::NxDomain,
        Outcome::NoData,
        Outcome::BadRecord,
        Outcome::MultipleRecords,
        Outcome::DnsTimeout,
        Outcome::DnsError,
        Outcome::TlsVerify,
        Outcome::HttpStatus,
        Outcome::ContentType,
        Outcome::TooLarge,
        Outcome::ParseError,
        Outcome::FetchTimeout,
        Outcome::Connect,
        Outcome::Resolve,
        Outcome::Http,
    ];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Policy => "policy",
            Outcome::Unchanged => "unchanged",
            Outcome::NxDomain => "nxdomain",
            Outcome::NoData => "nodata",
            Outcome::BadRecord => "bad-record",
            Outcome::MultipleRecords => "multiple-records",
            Outcome::DnsTimeout => "dns-timeout",
            Outcome::DnsError => "dns-error",
            Outcome::TlsVerify => "tls-verify",
            Outcome::HttpStatus => "http-status",
            Outcome::ContentType => "content-type",
            Outcome::TooLarge => "too-large",
            Outcome::ParseError => "parse-error",
            Outcome::FetchTimeout => "timeout",
            Outcome::Connect => "connect",
            Outcome::Resolve => "resolve",
            Outcome::Http => "http",
        }
    }

    /// The outcome whose label is `label`. The fetch failure class names
    /// (`source::FetchError::class`, `discovery::FetchFailure::class`) are such labels.
    pub fn from_label(label: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.label() == label)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds (inclusive) of the finite histogram buckets, in nanoseconds, and their `le`
/// label values. The `+Inf` bucket follows them.
const BUCKETS: [(u64, &str); 12] = [
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (50_000_000, "0.05"),
    (250_000_000, "0.25"),
    (1_000_000_000, "1"),
    (5_000_000_000, "5"),
    (15_000_000_000, "15"),
];

/// Point-in-time values the registry does not own; the caller computes them per scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub entries_enforce: u64,
    pub entries_testing: u64,
    pub entries_none: u64,
    pub entries_negative: u64,
    pub expiring_within_day: u64,
    pub connections: u64,
}

/// The registry. Create once and share as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    /// Registered map names; the last one is always [`OTHER_MAP`].
    maps: Box<[String]>,
    /// `[protocol][map][answer]`, flattened.
    lookups: Box<[AtomicU64]>,
    /// Non-cumulative counts: one per finite bucket, then `+Inf`.
    duration_buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of observed lookup durations in microseconds (rounded per observation).
    duration_sum_us: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    discoveries: [AtomicU64; Outcome::ALL.len()],
    refreshes_ok: AtomicU64,
    refreshes_failed: AtomicU64,
    downgrades: AtomicU64,
    evictions: AtomicU64,
    store_write_errors: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with the map `default` (plus `other`).
    pub fn new() -> Metrics {
        Metrics::with_maps(&["default"])
    }

    /// A registry with these map names, in this order, duplicates dropped, plus `other` for any
    /// name not listed.
    pub fn with_maps(maps: &[&str]) -> Metrics {
        let mut names: Vec<String> = Vec::with_capacity(maps.len() + 1);
        for m in maps {
            if *m != OTHER_MAP && !names.iter().any(|n| n == m) {
                names.push((*m).to_string());
            }
        }
        names.push(OTHER_MAP.to_string());
        let cells = Protocol::COUNT * names.len() * Answer::ALL.len();
        Metrics {
            maps: names.into_boxed_slice(),
            lookups: (0..cells).map(|_| AtomicU64::new(0)).collect(),
            duration_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            duration_sum_us: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            discoveries: std::array::from_fn(|_| AtomicU64::new(0)),
            refreshes_ok: AtomicU64::new(0),
            refreshes_failed: AtomicU64::new(0),
            downgrades: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            store_write_errors: AtomicU64::new(0),
        }
    }

    /// The registered map names, `other` last.
    pub fn maps(&self) -> &[String] {
        &self.maps
    }

    fn lookup_cell(&self, protocol: Protocol, map_index: usize, answer: Answer) -> &AtomicU64 {
        let i =
            (protocol.index() * self.maps.len() + map_index) * Answer::ALL.len() + answer as usize;
        &self.lookups[i]
    }

    fn map_index(&self, map: &str) -> usize {
        // `other` is last, so an unknown name and "other" itself both land there.
        self.maps
            .iter()
            .position(|m| m == map)
            .unwrap_or(self.maps.len() - 1)
    }

    /// Counts one answered lookup and observes its duration.
    pub fn lookup(&self, protocol: Protocol, map: &str, answer: Answer, elapsed: Duration) {
        let m = self.map_index(map);
        self.lookup_cell(protocol, m, answer)
            .fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKETS
            .iter()
            .position(|&(bound, _)| ns <= bound)
            .unwrap_or(BUCKETS.len());
        self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us
            .fetch_add(ns.saturating_add(500) / 1_000, Ordering::Relaxed);
    }

    /// Counts a cache hit or miss.
    pub fn cache(&self, hit: bool) {
        let c = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one finished discovery.
    pub fn discovery(&self, outcome: Outcome) {
        self.discoveries[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one proactive refresh.
    pub fn refresh(&self, ok: bool) {
        let c = if ok {
            &self.refreshes_ok
        } else {
            &self.refreshes_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a cached policy replaced by one with a weaker mode.
    pub fn downgrade(&self) {
        self.downgrades.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an unexpired policy evicted because the cache was full.
    pub fn eviction(&self) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed write of the persistent store.
    pub fn store_write_error(&self) {
        self.store_write_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Every family with its current samples, in render order. Gauge families only when
    /// `gauges` is given.
    fn families(&self, gauges: Option<&Gauges>) -> Vec<Family> {
        let load = |a: &AtomicU64| Value::Count(a.load(Ordering::Relaxed));
        let mut out = Vec::with_capacity(14);

        let mut lookups = Family::new(
            "mta_sts_lookups_total",
            "Lookups answered, by listener protocol, map name and answer.",
            Kind::Counter,
        );
        for p in Protocol::all() {
            for (mi, map) in self.maps.iter().enumerate() {
                for a in Answer::ALL {
                    lookups.push(
                        "",
                        format!(
                            "{{protocol=\"{}\",map=\"{}\",answer=\"{}\"}}",
                            p.name(),
                            escape_label(map),
                            a.label()
                        ),
                        load(self.lookup_cell(p, mi, a)),
                    );
                }
            }
        }
        out.push(lookups);

        let mut hist = Family::new(
            "mta_sts_lookup_duration_seconds",
            "Time to answer a lookup, from the decoded request to the answer.",
            Kind::Histogram,
        );
        let counts: Vec<u64> = self
            .duration_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let mut cumulative = 0u64;
        for (i, count) in counts.iter().enumerate() {
            cumulative = cumulative.wrapping_add(*count);
            let le = BUCKETS.get(i).map_or("+Inf", |&(_, le)| le);
            hist.push(
                "_bucket",
                format!("{{le=\"{le}\"}}"),
                Value::Count(cumulative),
            );
        }
        hist.push(
            "_sum",
            String::new(),
            Value::Micros(self.duration_sum_us.load(Ordering::Relaxed)),
        );
        hist.push("_count", String::new(), Value::Count(cumulative));
        out.push(hist);

        out.push(Family::single(
            "mta_sts_cache_hits_total",
            "Lookups answered from a cached policy or cached absence of one.",
            Kind::Counter,
            load(&self.cache_hits),
        ));
        out.push(Family::single(
            "mta_sts_cache_misses_total",
            "Lookups that found no usable cache entry.",
            Kind::Counter,
            load(&self.cache_misses),
        ));

        let mut disc = Family::new(
            "mta_sts_discoveries_total",
            "Policy discoveries (TXT lookup, then HTTPS fetch), by outcome.",
            Kind::Counter,
        );
        for o in Outcome::ALL {
            disc.push(
                "",
                format!("{{outcome=\"{}\"}}", o.label()),
                load(&self.discoveries[o.index()]),
            );
        }
        out.push(disc);

        let mut refreshes = Family::new(
            "mta_sts_refreshes_total",
            "Proactive policy refreshes, by result.",
            Kind::Counter,
        );
        refreshes.push("", "{result=\"ok\"}".into(), load(&self.refreshes_ok));
        refreshes.push(
            "",
            "{result=\"failed\"}".into(),
            load(&self.refreshes_failed),
        );
        out.push(refreshes);

        out.push(Family::single(
            "mta_sts_downgrades_total",
            "Cached policies replaced by a policy with a weaker mode.",
            Kind::Counter,
            load(&self.downgrades),
        ));
        out.push(Family::single(
            "mta_sts_evictions_total",
            "Unexpired policies evicted because the cache was full.",
            Kind::Counter,
            load(&self.evictions),
        ));
        out.push(Family::single(
            "mta_sts_store_write_errors_total",
            "Failed writes of the persistent policy store.",
            Kind::Counter,
            load(&self.store_write_errors),
        ));

        if let Some(g) = gauges {
            let mut entries = Family::new(
                "mta_sts_cache_entries",
                "Cache entries, by policy mode; negative entries remember a domain without a policy.",
                Kind::Gauge,
            );
            for (mode, v) in [
                ("enforce", g.entries_enforce),
                ("testing", g.entries_testing),
                ("none", g.entries_none),
                ("negative", g.entries_negative),
            ] {
                entries.push("", format!("{{mode=\"{mode}\"}}"), Value::Count(v));
            }
            out.push(entries);
            out.push(Family::single(
                "mta_sts_policies_expiring_within_day",
                "Cached policies whose max_age ends within 24 hours.",
                Kind::Gauge,
                Value::Count(g.expiring_within_day),
            ));
            out.push(Family::single(
                "mta_sts_connections",
                "Open socketmap and tcp_table client connections.",
                Kind::Gauge,
                Value::Count(g.connections),
            ));
        }
        out
    }

    /// The Prometheus text exposition (format 0.0.4) of every series.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut s = String::with_capacity(8 * 1024);
        for f in self.families(Some(gauges)) {
            // Writing to a String cannot fail.
            let _ = writeln!(s, "# HELP {} {}", f.name, escape_help(f.help));
            let _ = writeln!(s, "# TYPE {} {}", f.name, f.kind.name());
            for sample in &f.samples {
                let _ = write!(s, "{}{}{} ", f.name, sample.suffix, sample.labels);
                match sample.value {
                    Value::Count(v) => {
                        let _ = writeln!(s, "{v}");
                    }
                    Value::Micros(us) => {
                        let _ = writeln!(s, "{}.{:06}", us / 1_000_000, us % 1_000_000);
                    }
                }
            }
        }
        s
    }

    /// Every counter as `"name{labels}" → value`, keyed as in [`Metrics::render`]. The duration
    /// sum, the one value that is not an integer in seconds, is
    /// `mta_sts_lookup_duration_microseconds_sum`, in microseconds. No gauges.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.snapshot_inner(None)
    }

    /// [`Metrics::snapshot`] plus the gauge series.
    pub fn snapshot_with_gauges(&self, gauges: &Gauges) -> BTreeMap<String, u64> {
        self.snapshot_inner(Some(gauges))
    }

    fn snapshot_inner(&self, gauges: Option<&Gauges>) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for f in self.families(gauges) {
            for s in f.samples {
                match s.value {
                    Value::Count(v) => {
                        out.insert(format!("{}{}{}", f.name, s.suffix, s.labels), v);
                    }
                    Value::Micros(us) => {
                        let base = f.name.strip_suffix("_seconds").unwrap_or(f.name);
                        out.insert(format!("{base}_microseconds{}{}", s.suffix, s.labels), us);
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Value {
    Count(u64),
    /// Rendered as seconds with six decimals.
    Micros(u64),
}

struct Sample {
    suffix: &'static str,
    /// `{a="b",...}` with escaped values, or empty.
    labels: String,
    value: Value,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: Kind) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn single(name: &'static str, help: &'static str, kind: Kind, value: Value) -> Family {
        let mut f = Family::new(name, help, kind);
        f.push("", String::new(), value);
        f
    }

    fn push(&mut self, suffix: &'static str, labels: String, value: Value) {
        self.samples.push(Sample {
            suffix,
            labels,
            value,
        });
    }
}

/// Escapes a label value per the text format: `\` → `\\`, `"` → `\"`, line feed → `\n`.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Escapes HELP text per the text format: `\` → `\\`, line feed → `\n`.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// The request head (request line and headers, with the blank line) may be at most this long.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The whole request head must arrive within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Writing the response must finish within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After an error response, how long and how much of the client's remaining input is read and
/// discarded, so that closing does not reset the connection before the client reads the answer.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// Scrapes served at once; more wait in the kernel's accept queue.
const MAX_SCRAPES: usize = 16;
/// Back-off after a failed accept (EMFILE ...), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The scrape callback: the gauge values at this moment.
pub type GaugeFn = dyn Fn() -> Gauges + Send + Sync;

/// Serves `GET /metrics` (and `HEAD`) until `shutdown` turns true (or its sender is dropped):
/// 200 with the exposition, 404 for other paths, 405 for other methods, 400 for a malformed
/// request line, 431 for a request head over [`MAX_REQUEST_HEAD`]. One request per connection
/// (`Connection: close`); a client that does not send a complete head within
/// [`REQUEST_TIMEOUT`] is dropped without an answer. `gauges` is called once per scrape.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    gauges: Arc<GaugeFn>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_SCRAPES));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let metrics = metrics.clone();
                let gauges = gauges.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    handle(stream, &metrics, &*gauges).await;
                });
            }
            Err(e) => {
                warn!(error = %e, "metrics: accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    tasks.abort_all();
    debug!("metrics listener stopped");
}

enum Head {
    /// The head, up to and including the blank line; `extra` says whether more bytes followed.
    Complete {
        head: Vec<u8>,
        extra: bool,
    },
    TooLarge,
    /// The client closed before a complete head.
    Eof,
}

/// Where the head ends (just after the blank line), accepting bare LF line ends too.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = vec![0u8; MAX_REQUEST_HEAD + 1];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(Head::Eof);
        }
        // The terminator may straddle the previous read: rescan from 3 bytes back.
        let from = len.saturating_sub(3);
        len += n;
        if let Some(end) = head_end(&buf[from..len]).map(|e| from + e) {
            if end > MAX_REQUEST_HEAD {
                return Ok(Head::TooLarge);
            }
            let extra = end < len;
            buf.truncate(end);
            return Ok(Head::Complete { head: buf, extra });
        }
        if len > MAX_REQUEST_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

async fn handle(mut stream: TcpStream, metrics: &Metrics, gauges: &GaugeFn) {
    let (response, linger) =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
            Err(_) => {
                debug!("metrics: no complete request within the timeout; dropping the connection");
                return;
            }
            Ok(Err(e)) => {
                debug!(error = %e, "metrics: read failed");
                return;
            }
            Ok(Ok(Head::Eof)) => return,
            Ok(Ok(Head::TooLarge)) => (
                plain(
                    "431 Request Header Fields Too Large",
                    "request head too large\n",
                    &[],
                ),
                true,
            ),
            Ok(Ok(Head::Complete { head, extra })) => {
                let (resp, error) = respond(&head, metrics, gauges);
                (resp, error || extra)
            }
        };
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    if linger {
        // Unread input at close would make the kernel send a reset, which may destroy the
        // response before the client reads it.
        let _ = tokio::time::timeout(LINGER_TIME, async {
            let mut sink = [0u8; 4096];
            let mut total = 0;
            while total < LINGER_BYTES {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        })
        .await;
    }
}

/// The response to one request head, and whether it is an error (the client may still be
/// sending).
fn respond(head: &[u8], metrics: &Metrics, gauges: &GaugeFn) -> (Vec<u8>, bool) {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let bad = || (plain("400 Bad Request", "bad request\n", &[]), true);
    let Ok(line) = std::str::from_utf8(line) else {
        return bad();
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad();
    };
    if method.is_empty() || target.is_empty() {
        return bad();
    }
    match version {
        "HTTP/1.0" | "HTTP/1.1" => {}
        v if v.starts_with("HTTP/") => {
            return (
                plain("505 HTTP Version Not Supported", "HTTP/1.x only\n", &[]),
                true,
            );
        }
        _ => return bad(),
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != "/metrics" {
        return (plain("404 Not Found", "not found\n", &[]), false);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return (
                plain(
                    "405 Method Not Allowed",
                    "method not allowed\n",
                    &["Allow: GET, HEAD"],
                ),
                true,
            );
        }
    };
    let body = metrics.render(&gauges());
    let mut r = response_head("200 OK", CONTENT_TYPE, body.len(), &[]);
    if !head_only {
        r.extend_from_slice(body.as_bytes());
    }
    (r, false)
}

fn response_head(status: &str, content_type: &str, len: usize, extra: &[&str]) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n"
    );
    for e in extra {
        h.push_str(e);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

fn plain(status: &str, body: &str, extra: &[&str]) -> Vec<u8> {
    let mut r = response_head(status, "text/plain; charset=utf-8", body.len(), extra);
    r.extend_from_slice(body.as_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn sample_lines(text: &str) -> Vec<(&str, &str)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').expect("sample line has a value"))
            .collect()
    }

    fn value(text: &str, series: &str) -> String {
        sample_lines(text)
            .into_iter()
            .find(|(k, _)| *k == series)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    }

    #[test]
    fn help_and_type_lines_are_exact_and_in_order() {
        let text = Metrics::new().render(&Gauges::default());
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(
            types,
            [
                "# TYPE mta_sts_lookups_total counter",
                "# TYPE mta_sts_lookup_duration_seconds histogram",
                "# TYPE mta_sts_cache_hits_total counter",
                "# TYPE mta_sts_cache_misses_total counter",
                "# TYPE mta_sts_discoveries_total counter",
                "# TYPE mta_sts_refreshes_total counter",
                "# TYPE mta_sts_downgrades_total counter",
                "# TYPE mta_sts_evictions_total counter",
                "# TYPE mta_sts_store_write_errors_total counter",
                "# TYPE mta_sts_cache_entries gauge",
                "# TYPE mta_sts_policies_expiring_within_day gauge",
                "# TYPE mta_sts_connections gauge",
            ]
        );
        assert!(text.contains(
            "# HELP mta_sts_lookups_total Lookups answered, by listener protocol, map name and answer.\n# TYPE mta_sts_lookups_total counter\n"
        ));
        assert!(text.contains(
            "# HELP mta_sts_cache_hits_total Lookups answered from a cached policy or cached absence of one.\n"
        ));
        // Each HELP directly precedes its TYPE line for the same name.
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().expect("name");
                assert!(
                    lines[i - 1].starts_with(&format!("# HELP {name} ")),
                    "{}",
                    lines[i - 1]
                );
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn every_series_present_at_zero() {
        let m = Metrics::with_maps(&["default", "tlsrpt"]);
        let text = m.render(&Gauges::default());
        let samples = sample_lines(&text);
        // lookups: 2 protocols x 3 maps (default, tlsrpt, other) x 4 answers
        assert_eq!(
            samples
                .iter()
                .filter(|(k, _)| k.starts_with("mta_sts_lookups_total{"))
                .count(),
            24
        );
        for o in Outcome::ALL {
            assert_eq!(
                value(
                    &text,
                    &format!("mta_sts_discoveries_total{{outcome=\"{}\"}}", o.label())
                ),
                "0"
            );
        }
        for series in [
            "mta_sts_lookups_total{protocol=\"tcp_table\",map=\"tlsrpt\",answer=\"perm\"}",
            "mta_sts_lookups_total{protocol=\"socketmap\",map=\"other\",answer=\"notfound\"}",
            "mta_sts_cache_hits_total",
            "mta_sts_cache_misses_total",
            "mta_sts_refreshes_total{result=\"ok\"}",
            "mta_sts_refreshes_total{result=\"failed\"}",
            "mta_sts_downgrades_total",
            "mta_sts_evictions_total",
            "mta_sts_store_write_errors_total",
            "mta_sts_cache_entries{mode=\"enforce\"}",
            "mta_sts_cache_entries{mode=\"testing\"}",
            "mta_sts_cache_entries{mode=\"none\"}",
            "mta_sts_cache_entries{mode=\"negative\"}",
            "mta_sts_policies_expiring_within_day",
            "mta_sts_connections",
            "mta_sts_lookup_duration_seconds_bucket{le=\"+Inf\"}",
            "mta_sts_lookup_duration_seconds_count",
        ] {
            assert_eq!(value(&text, series), "0", "{series}");
        }
        assert_eq!(
            value(&text, "mta_sts_lookup_duration_seconds_sum"),
            "0.000000"
        );
    }

    #[test]
    fn outcome_labels_match_the_spec_and_round_trip() {
        let labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(
            labels,
            [
                "policy",
                "unchanged",
                "nxdomain",
                "nodata",
                "bad-record",
                "multiple-records",
                "dns-timeout",
                "dns-error",
                "tls-verify",
                "http-status",
                "content-type",
                "too-large",
                "parse-error",
                "timeout",
                "connect",
                "resolve",
                "http",
            ]
        );
        for (i, o) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(o.index(), i);
            assert_eq!(Outcome::from_label(o.label()), Some(o));
        }
        assert_eq!(Outcome::from_label("nope"), None);
    }

    #[test]
    fn map_names_are_escaped() {
        let m = Metrics::with_maps(&["a\"b", "c\\d", "e\nf"]);
        m.lookup(
            Protocol::from_name("socketmap").expect("registered"),
            "a\"b",
            Answer::Found,
            us(1),
        );
        m.lookup(
            Protocol::from_name("socketmap").expect("registered"),
            "c\\d",
            Answer::Temp,
            us(1),
        );
        m.lookup(
            Protocol::from_name("tcp_table").expect("registered"),
            "e\nf",
            Answer::Perm,
            us(1),
        );
        let text = m.render(&Gauges::default());
        assert_eq!(
            value(
                &text,
                r#"mta_sts_lookups_total{protocol="socketmap",map="a\"b",answer="found"}"#
            ),
            "1"
        );
        assert_eq!(
            value(
                &text,
                r#"mta_sts_lookups_total{protocol="socketmap",map="c\\d",answer="temp"}"#
            ),
            "1"
        );
        assert_eq!(
            value(
                &text,
                r#"mta_sts_lookups_total{protocol="tcp_table",map="e\nf",answer="perm"}"#
            ),
            "1"
        );
        // No raw line feed inside a sample: every line is a comment or `series value`.
        for l in text.lines() {
            assert!(l.starts_with('#') || l.starts_with("mta_sts_"), "{l:?}");
        }
        assert_eq!(escape_label(r#"x\"y"#), r#"x\\\"y"#);
    }

    #[test]
    fn unknown_map_is_counted_as_other() {
        let m = Metrics::with_maps(&["default", "tlsrpt"]);
        m.lookup(
            Protocol::from_name("socketmap").expect("registered"),
            "invented",
            Answer::NotFound,
            us(5),
        );
        m.lookup(
            Protocol::from_name("socketmap").expect("registered"),
            "also-invented",
            Answer::NotFound,
            us(5),
        );
        m.lookup(
            Protocol::from_name("socketmap").expect("registered"),
            "tlsrpt",
            Answer::NotFound,
            us(5),
        );
        let snap = m.snapshot();
        assert_eq!(
            snap[r#"mta_sts_lookups_total{protocol="socketmap",map="other",answer="notfound"}"#],
            2
        );
        assert_eq!(
            snap[r#"mta_sts_lookups_total{protocol="socketmap",map="tlsrpt",answer="notfound"}"#],
            1
        );
        assert!(
            !snap.keys().any(|k| k.contains("invented")),
            "unknown names must not become series"
        );
        // "other" registered explicitly, or twice, still gives one series set.
        let m = Metrics::with_maps(&["other", "default", "default"]);
        assert_eq!(m.maps(), ["default", "other"]);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches() {
        let m = Metrics::new();
        let obs = [
            us(50),                  // le 0.0001
            us(100),                 // le 0.0001 (bounds are inclusive)
            us(101),                 // le 0.00025
            us(3_000),               // le 0.005
            us(800_000),             // le 1
            us(1_000_000),           // le 1
            Duration::from_secs(20), // +Inf only
        ];
        for d in obs {
            m.lookup(
                Protocol::from_name("tcp_table").expect("registered"),
                "default",
                Answer::Found,
                d,
            );
        }
        let text = m.render(&Gauges::default());
        let bucket = |le: &str| {
            value(
                &text,
                &format!("mta_sts_lookup_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
            .parse::<u64>()
            .expect("integer")
        };
        let expected = [
            ("0.0001", 2),
            ("0.00025", 3),
            ("0.0005", 3),
            ("0.001", 3),
            ("0.0025", 3),
            ("0.005", 4),
            ("0.01", 4),
            ("0.05", 4),
            ("0.25", 4),
            ("1", 6),
            ("5", 6),
            ("15", 6),
            ("+Inf", 7),
        ];
        for (le, n) in expected {
            assert_eq!(bucket(le), n, "le={le}");
        }
        // Bucket lines appear in increasing `le` order, `+Inf` last.
        let les: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("mta_sts_lookup_duration_seconds_bucket{le=\""))
            .map(|l| l.split('"').next().expect("le"))
            .collect();
        assert_eq!(les, expected.map(|(le, _)| le));
        assert_eq!(value(&text, "mta_sts_lookup_duration_seconds_count"), "7");
        let total_us: u64 = obs.iter().map(|d| d.as_micros() as u64).sum();
        assert_eq!(total_us, 21_803_251);
        assert_eq!(
            value(&text, "mta_sts_lookup_duration_seconds_sum"),
            "21.803251"
        );
        let snap = m.snapshot();
        assert_eq!(snap["mta_sts_lookup_duration_microseconds_sum"], total_us);
        assert_eq!(snap["mta_sts_lookup_duration_seconds_count"], 7);
        assert_eq!(
            snap[r#"mta_sts_lookups_total{protocol="tcp_table",map="default",answer="found"}"#],
            7
        );
    }

    #[test]
    fn counters_and_gauges_render_their_values() {
        let m = Metrics::new();
        m.cache(true);
        m.cache(true);
        m.cache(false);
        m.discovery(Outcome::DnsTimeout);
        m.discovery(Outcome::FetchTimeout);
        m.discovery(Outcome::FetchTimeout);
        m.refresh(true);
        m.refresh(false);
        m.refresh(false);
        m.downgrade();
        m.eviction();
        m.eviction();
        m.store_write_error();
        let g = Gauges {
            entries_enforce: 10,
            entries_testing: 3,
            entries_none: 2,
            entries_negative: 7,
            expiring_within_day: 1,
            connections: 4,
        };
        let text = m.render(&g);
        for (series, v) in [
            ("mta_sts_cache_hits_total", "2"),
            ("mta_sts_cache_misses_total", "1"),
            ("mta_sts_discoveries_total{outcome=\"dns-timeout\"}", "1"),
            ("mta_sts_discoveries_total{outcome=\"timeout\"}", "2"),
            ("mta_sts_discoveries_total{outcome=\"policy\"}", "0"),
            ("mta_sts_refreshes_total{result=\"ok\"}", "1"),
            ("mta_sts_refreshes_total{result=\"failed\"}", "2"),
            ("mta_sts_downgrades_total", "1"),
            ("mta_sts_evictions_total", "2"),
            ("mta_sts_store_write_errors_total", "1"),
            ("mta_sts_cache_entries{mode=\"enforce\"}", "10"),
            ("mta_sts_cache_entries{mode=\"testing\"}", "3"),
            ("mta_sts_cache_entries{mode=\"none\"}", "2"),
            ("mta_sts_cache_entries{mode=\"negative\"}", "7"),
            ("mta_sts_policies_expiring_within_day", "1"),
            ("mta_sts_connections", "4"),
        ] {
            assert_eq!(value(&text, series), v, "{series}");
        }
        let snap = m.snapshot();
        assert!(!snap.contains_key("mta_sts_connections"));
        let snap = m.snapshot_with_gauges(&g);
        assert_eq!(snap["mta_sts_connections"], 4);
        assert_eq!(snap["mta_sts_cache_entries{mode=\"negative\"}"], 7);
        // The snapshot has exactly the rendered integer series, plus the microsecond sum.
        assert_eq!(snap.len(), sample_lines(&text).len());
    }

    #[test]
    fn concurrent_updates_give_exact_totals() {
        const THREADS: u64 = 8;
        const ROUNDS: u64 = 20_000;
        let m = Arc::new(Metrics::with_maps(&["default", "tlsrpt"]));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..ROUNDS {
                        let map = if i % 2 == 0 { "default" } else { "nope" };
                        let proto = if t % 2 == 0 {
                            Protocol::from_name("socketmap").expect("registered")
                        } else {
                            Protocol::from_name("tcp_table").expect("registered")
                        };
                        m.lookup(proto, map, Answer::Found, us(i % 3));
                        m.cache(i % 4 == 0);
                        m.discovery(Outcome::ALL[(i % 17) as usize]);
                        m.refresh(i % 5 == 0);
                        m.downgrade();
                        m.eviction();
                        m.store_write_error();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        let s = m.snapshot();
        let n = THREADS * ROUNDS;
        let half_threads = THREADS / 2;
        for proto in ["socketmap", "tcp_table"] {
            for map in ["default", "other"] {
                assert_eq!(
                    s[&format!(
                        "mta_sts_lookups_total{{protocol=\"{proto}\",map=\"{map}\",answer=\"found\"}}"
                    )],
                    half_threads * ROUNDS / 2
                );
            }
        }
        assert_eq!(s["mta_sts_lookup_duration_seconds_count"], n);
        assert_eq!(
            s["mta_sts_lookup_duration_seconds_bucket{le=\"0.0001\"}"],
            n
        );
        // Per thread: sum over i of i % 3 microseconds.
        let per_thread: u64 = (0..ROUNDS).map(|i| i % 3).sum();
        assert_eq!(
            s["mta_sts_lookup_duration_microseconds_sum"],
            THREADS * per_thread
        );
        assert_eq!(s["mta_sts_cache_hits_total"], n / 4);
        assert_eq!(s["mta_sts_cache_misses_total"], n - n / 4);
        let discoveries: u64 = s
            .iter()
            .filter(|(k, _)| k.starts_with("mta_sts_discoveries_total"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(discoveries, n);
        assert_eq!(s["mta_sts_refreshes_total{result=\"ok\"}"], n / 5);
        assert_eq!(s["mta_sts_refreshes_total{result=\"failed\"}"], n - n / 5);
        assert_eq!(s["mta_sts_downgrades_total"], n);
        assert_eq!(s["mta_sts_evictions_total"], n);
        assert_eq!(s["mta_sts_store_write_errors_total"], n);
    }

    #[test]
    fn sub_microsecond_durations_round_to_nearest() {
        let m = Metrics::new();
        m.lookup(
            Protocol::from_name("socketmap").expect("registered"),
            "default",
            Answer::Found,
            Duration::from_nanos(400),
        );
        m.lookup(
            Protocol::from_name("socketmap").expect("registered"),
            "default",
            Answer::Found,
            Duration::from_nanos(600),
        );
        m.lookup(
            Protocol::from_name("socketmap").expect("registered"),
            "default",
            Answer::Found,
            Duration::MAX,
        );
        let s = m.snapshot();
        assert_eq!(s["mta_sts_lookup_duration_seconds_count"], 3);
        assert_eq!(s["mta_sts_lookup_duration_seconds_bucket{le=\"15\"}"], 2);
    }

    fn respond_str(req: &str) -> String {
        let m = Metrics::new();
        let g: Arc<GaugeFn> = Arc::new(Gauges::default);
        let (r, _) = respond(req.as_bytes(), &m, &*g);
        String::from_utf8(r).expect("utf-8")
    }

    #[test]
    fn request_routing() {
        let ok = respond_str("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(ok.contains("\r\nConnection: close\r\n"));
        assert!(ok.contains("mta_sts_connections 0\n"));
        let q = respond_str("GET /metrics?x=1 HTTP/1.0\n\n");
        assert!(q.starts_with("HTTP/1.1 200 OK\r\n"), "{q}");
        let head = respond_str("HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body");
        assert!(respond_str("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(respond_str("GET /metricsx HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        let post = respond_str("POST /metrics HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("\r\nAllow: GET, HEAD\r\n"));
        assert!(respond_str("GET /metrics\r\n\r\n").starts_with("HTTP/1.1 400 "));
        assert!(respond_str("GET  /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400 "));
        assert!(respond_str("GET /metrics FTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400 "));
        assert!(respond_str("garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
        let m = Metrics::new();
        let g: Arc<GaugeFn> = Arc::new(Gauges::default);
        let (r, error) = respond(b"GET /\xff HTTP/1.1\r\n\r\n", &m, &*g);
        assert!(r.starts_with(b"HTTP/1.1 400 ") && error);
        assert!(respond_str("GET /metrics HTTP/2.0\r\n\r\n").starts_with("HTTP/1.1 505 "));
    }

    #[test]
    fn head_end_finds_either_terminator() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
