//! Helpers shared by the journal's tests: records, file paths and a log capture.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::test_runner::Config as ProptestConfig;

use super::format::{JOURNAL, Record, crc32, unix_seconds};
use super::load::{Loaded, Scan, scan};
use crate::cache::memory::PolicyEntry;
use crate::policy::parse_policy;
use crate::test_log::Logs;

/// Now, in whole seconds: the journal stores seconds, and the writer's compaction uses the
/// real clock, so test times stay near it.
pub(super) fn base() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_seconds(SystemTime::now()))
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(super) fn entry(domain: &str, id: &str, max_age: u32, fetched: SystemTime) -> Arc<PolicyEntry> {
    let body = format!(
        "version: STSv1\nmode: enforce\nmx: mx1.{mx}\nmx: *.example.net\nmax_age: {max_age}\n",
        // Odd test domains (quotes, non-ASCII) are not valid MX names.
        mx = if domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            domain
        } else {
            "example.com"
        }
    );
    Arc::new(PolicyEntry::new(
        id.to_owned(),
        parse_policy(body.as_bytes()).unwrap(),
        fetched,
    ))
}

pub(super) fn policy(domain: &str, id: &str, fetched: SystemTime) -> Record {
    Record::Policy {
        domain: domain.into(),
        entry: entry(domain, id, 86_400, fetched),
    }
}

pub(super) fn negative(domain: &str, reason: &str, until: SystemTime) -> Record {
    Record::Negative {
        domain: domain.into(),
        reason: reason.to_owned(),
        until,
    }
}

pub(super) fn remove(domain: &str) -> Record {
    Record::Remove {
        domain: domain.into(),
    }
}

/// A journal line with a correct checksum around arbitrary JSON.
pub(super) fn line(json: &str) -> String {
    format!("{:08x} {json}\n", crc32(json.as_bytes()))
}

pub(super) fn journal(dir: &Path) -> PathBuf {
    dir.join(JOURNAL)
}

pub(super) fn domains(loaded: &Loaded) -> Vec<(&str, &str)> {
    loaded
        .policies
        .iter()
        .map(|(d, e)| (&**d, &*e.id))
        .collect()
}

pub(super) fn scan_bytes(bytes: &[u8], now: SystemTime) -> Scan {
    scan(bytes, now, Path::new("test.journal"))
}

/// Captures what `tracing` logs at warn and above on this thread while `f` runs.
pub(super) fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    let (logs, guard) = Logs::capture(tracing::Level::WARN);
    let out = f();
    drop(guard);
    (out, logs.text())
}

pub(super) fn policy_json(domain: &str, id: &str, fetched: SystemTime) -> String {
    let l = policy(domain, id, fetched).encode().unwrap();
    l.split_once(' ').unwrap().1.to_owned()
}

pub(super) fn config() -> ProptestConfig {
    // Few cases: each one opens a store twice (with fsyncs). No regression files in src/.
    ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

pub(super) const DOMAINS: [&str; 6] = [
    "a.test",
    "b.example",
    "xn--bcher-kva.example",
    "c.test",
    "quote\"back\\slash.test",
    "ünïcode.test",
];
