//! The metrics registry: process-wide counters and the gauges handed in per scrape, rendered in
//! the Prometheus text exposition format 0.0.4 (`exposition.rs`). Serving them over HTTP is
//! `serve::metrics_http`.
//!
//! The lookup hot path only does relaxed atomic adds: no lock, no allocation. Map names are
//! registered once at construction ([`Metrics::with_maps`]); the caller labels a lookup with
//! the map profile that answered it (a request naming no configured map is answered, and
//! counted, by `default`), and a name not registered (a map added by a later reload) is counted
//! under `map="other"`, so the table never grows after start. Every series is
//! rendered from the start, zero included, so dashboards see no gaps.
//!
//! Series are read one by one while lookups go on, so a scrape is not an atomic snapshot across
//! series; within the histogram, `_count` and every `_bucket` come from the same bucket loads, so
//! they always agree with each other.
//!
//! The shared fleet cache's series live in `fleet.rs`.
//!
//! A leaf layer: may import only `proto::Protocol` (for the `protocol` label) from the crate.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod dane;
mod exposition;
mod fleet;

pub use dane::{DANE_OUTCOMES, DaneMetrics, LEVELS};

pub use exposition::{CONTENT_TYPE, escape_label};
use exposition::{Family, Kind, Value};
pub use fleet::{FleetCounters, FleetError, FleetLookup};

/// The label of map profiles not registered at start (added by a reload since).
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
    /// (`discovery::FetchError::label`, `discovery::FetchFailure::label`) are such labels.
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
    /// 1 while the policy journal cannot be written (policies are then kept in memory only).
    pub journal_read_only: u64,
    /// Unexpired DANE states by verdict, in [`DANE_OUTCOMES`] order (`failed` excluded).
    pub dane_entries: [u64; 6],
    /// `cache.max_entries`: what the entries are compared with to see the cache filling up.
    pub cache_max_entries: u64,
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
    connections_evicted: AtomicU64,
    /// DANE answers, discoveries and states.
    pub dane: DaneMetrics,
    fleet: FleetCounters,
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
            connections_evicted: AtomicU64::new(0),
            dane: DaneMetrics::default(),
            fleet: FleetCounters::default(),
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

    /// Counts an idle Postfix connection closed to admit a new client at the connection cap.
    pub fn connection_evicted(&self) {
        self.connections_evicted.fetch_add(1, Ordering::Relaxed);
    }

    /// The shared fleet cache's counters (`[fleet]`).
    pub fn fleet(&self) -> &FleetCounters {
        &self.fleet
    }

    /// Every family with its current samples, in render order. Gauge families only when
    /// `gauges` is given.
    fn families(&self, gauges: Option<&Gauges>) -> Vec<Family> {
        let load = |a: &AtomicU64| Value::Count(a.load(Ordering::Relaxed));
        let mut out = Vec::with_capacity(15);

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
        out.push(Family::single(
            "mta_sts_connections_evicted_total",
            "Idle socketmap and tcp_table connections closed to admit a new client at limits.max_connections.",
            Kind::Counter,
            load(&self.connections_evicted),
        ));
        out.extend(self.fleet.counter_families());

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
                "mta_sts_cache_max_entries",
                "The configured cache.max_entries: past it, new domains evict old entries.",
                Kind::Gauge,
                Value::Count(g.cache_max_entries),
            ));
            out.push(Family::single(
                "mta_sts_policies_expiring_within_day",
                "Cached policies whose max_age ends within 24 hours.",
                Kind::Gauge,
                Value::Count(g.expiring_within_day),
            ));
            out.push(Family::single(
                "mta_sts_journal_read_only",
                "1 while the policy journal cannot be written (full or read-only file system): new policies are kept in memory only until a retry rewrites it.",
                Kind::Gauge,
                Value::Count(g.journal_read_only),
            ));
            out.push(self.fleet.up_family());
            out.push(Family::single(
                "mta_sts_connections",
                "Open socketmap and tcp_table client connections.",
                Kind::Gauge,
                Value::Count(g.connections),
            ));
        }
        self.dane
            .families(gauges.map(|g| &g.dane_entries), &mut out);
        out
    }

    /// The Prometheus text exposition (format 0.0.4) of every series.
    pub fn render(&self, gauges: &Gauges) -> String {
        exposition::render(&self.families(Some(gauges)))
    }

    /// Every counter as `"name{labels}" → value`, keyed as in [`Metrics::render`]. The duration
    /// sum, the one value that is not an integer in seconds, is
    /// `mta_sts_lookup_duration_microseconds_sum`, in microseconds. No gauges.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        exposition::snapshot(self.families(None))
    }

    /// [`Metrics::snapshot`] plus the gauge series.
    pub fn snapshot_with_gauges(&self, gauges: &Gauges) -> BTreeMap<String, u64> {
        exposition::snapshot(self.families(Some(gauges)))
    }
}

/// The scrape callback: the gauge values at this moment.
pub type GaugeFn = dyn Fn() -> Gauges + Send + Sync;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
                "# TYPE mta_sts_connections_evicted_total counter",
                "# TYPE mta_sts_fleet_lookups_total counter",
                "# TYPE mta_sts_fleet_publishes_total counter",
                "# TYPE mta_sts_fleet_errors_total counter",
                "# TYPE mta_sts_fleet_refreshes_left_total counter",
                "# TYPE mta_sts_cache_entries gauge",
                "# TYPE mta_sts_cache_max_entries gauge",
                "# TYPE mta_sts_policies_expiring_within_day gauge",
                "# TYPE mta_sts_journal_read_only gauge",
                "# TYPE mta_sts_fleet_up gauge",
                "# TYPE mta_sts_connections gauge",
                "# TYPE mta_sts_answers_by_level_total counter",
                "# TYPE mta_sts_dane_discoveries_total counter",
                "# TYPE mta_sts_dane_entries gauge",
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
            "mta_sts_connections_evicted_total",
            "mta_sts_cache_entries{mode=\"enforce\"}",
            "mta_sts_cache_entries{mode=\"testing\"}",
            "mta_sts_cache_entries{mode=\"none\"}",
            "mta_sts_cache_entries{mode=\"negative\"}",
            "mta_sts_cache_max_entries",
            "mta_sts_policies_expiring_within_day",
            "mta_sts_connections",
            "mta_sts_journal_read_only",
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
    fn outcome_labels_are_stable_and_round_trip() {
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
        m.connection_evicted();
        m.connection_evicted();
        m.connection_evicted();
        let g = Gauges {
            entries_enforce: 10,
            entries_testing: 3,
            entries_none: 2,
            entries_negative: 7,
            expiring_within_day: 1,
            connections: 4,
            journal_read_only: 1,
            dane_entries: [5, 4, 3, 2, 1, 0],
            cache_max_entries: 1_000_000,
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
            ("mta_sts_connections_evicted_total", "3"),
            ("mta_sts_cache_entries{mode=\"enforce\"}", "10"),
            ("mta_sts_cache_entries{mode=\"testing\"}", "3"),
            ("mta_sts_cache_entries{mode=\"none\"}", "2"),
            ("mta_sts_cache_entries{mode=\"negative\"}", "7"),
            ("mta_sts_policies_expiring_within_day", "1"),
            ("mta_sts_connections", "4"),
            ("mta_sts_journal_read_only", "1"),
            ("mta_sts_cache_max_entries", "1000000"),
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
                        m.connection_evicted();
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
        assert_eq!(s["mta_sts_connections_evicted_total"], n);
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
}
