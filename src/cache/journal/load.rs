//! Reading the journal at start: [`scan`] turns whatever the file holds into the [`Loaded`]
//! state handed to the cache and the live map the writer starts from, and decides whether the
//! file must be compacted before anything is appended.
//!
//! Loading is tolerant: the latest valid record per domain wins, a record counts only with its
//! final newline (an unterminated last line is a write that never completed), and a torn tail or
//! a damaged record costs that record only, never the rest of the file.
//!
//! Loading does not trust the wall clock blindly either ([`Expiry`]): a host that boots with its
//! clock far ahead must not delete its whole trust-on-first-use cache (RFC 8461 §10.2) because
//! every record looks expired.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::error::StoreError;
use super::format::{DANE_PREFIX, HEADER, HEADER_PREFIX, JOURNAL, Record, unix_seconds};
use crate::cache::Name;
use crate::cache::dane::DaneEntry;
use crate::cache::memory::PolicyEntry;

/// Skipped records get a warning each up to this many, then one summary line: a garbage file
/// must not flood the log.
const MAX_WARNINGS: usize = 20;

/// How far the clock may be past the newest record of the journal before it is suspected of
/// being wrong rather than the daemon having been stopped for a while.
pub(super) const CLOCK_AHEAD_SLACK: Duration = Duration::from_secs(86_400);

/// What may be deleted from disk as expired, given the journal's own times.
///
/// The clock is suspect when it is more than [`CLOCK_AHEAD_SLACK`] past the newest time the
/// records read at start speak of (a policy fetch, or the end of a negative entry: its check plus
/// `cache.negative_ttl`). While it is, records that look expired are not served but stay on disk
/// for a start with a sane clock; only those that had expired by the latest policy fetch, a time
/// that has certainly passed, are deleted. As soon as the clock is back within the slack
/// (corrected by time synchronisation), expiry follows the clock again. A daemon with a right
/// clock that fetched nothing for over a day looks the same: that costs a warning, and dead
/// records stay on disk until superseded or until a start that finds newer records.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Expiry {
    /// The latest policy fetch.
    fetched: Option<SystemTime>,
    /// The latest policy fetch or negative-entry end.
    newest: Option<SystemTime>,
}

impl Expiry {
    /// How far `now` is past the newest record, when that is more than the slack.
    pub(super) fn clock_ahead(&self, now: SystemTime) -> Option<Duration> {
        let ahead = now.duration_since(self.newest?).ok()?;
        (ahead > CLOCK_AHEAD_SLACK).then_some(ahead)
    }

    /// Records that expire at or before this time may be deleted from disk.
    pub(super) fn cutoff(&self, now: SystemTime) -> SystemTime {
        match self.clock_ahead(now) {
            Some(_) => self.fetched.unwrap_or(UNIX_EPOCH),
            None => now,
        }
    }
}

/// What [`Store::open`](super::Store::open) found in the journal.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Policies unexpired at `now`, the latest record per domain, in the order they were last
    /// written (so that inserting them in order leaves the most recent at the top of an LRU).
    /// The domain is the same `Arc` as the store's own index, so handing it on to the cache
    /// costs no further copy.
    pub policies: Vec<(Name, Arc<PolicyEntry>)>,
    /// `(domain, reason, until)` with `until > now`, in the same order.
    pub negatives: Vec<(Name, String, SystemTime)>,
    /// DANE states unexpired at `now`, by destination (without the journal's `dane:` prefix).
    pub dane: Vec<(String, Arc<DaneEntry>)>,
    /// Valid records read, superseded ones included.
    pub records: usize,
    /// Records skipped as truncated, corrupt, unparsable or of an unknown version.
    pub skipped: usize,
    /// Latest records per domain dropped because they had expired at `now`.
    pub expired: usize,
    /// Latest records per domain that look expired at `now` but stay on disk, not served,
    /// because the clock looks ahead of the journal (see [`Expiry`]).
    pub held: usize,
    /// Size of the journal as found, in bytes.
    pub bytes: u64,
}

/// The live record of a domain, as the writer thread keeps it. A policy is the same
/// `Arc<PolicyEntry>` the cache holds, so the writer's copy costs a pointer, not a second copy of
/// the journal line; lines are encoded again only when the journal is rewritten.
///
/// 24 bytes: one is kept per cached domain, so the expiry is derived rather than stored and the
/// rare negative record is boxed.
pub(super) struct Live {
    /// Write order: compaction keeps it, so reloads see domains in the order they were written.
    pub(super) seq: u64,
    /// None only while [`scan`] has not yet decided about the domain.
    pub(super) kept: Option<Kept>,
}

impl Live {
    /// When the record stops mattering: compaction drops it from then on.
    pub(super) fn expires(&self) -> SystemTime {
        match &self.kept {
            Some(Kept::Policy(entry)) => entry.expires(),
            Some(Kept::Negative(n)) => n.1,
            Some(Kept::Dane(entry)) => entry.expires(),
            None => UNIX_EPOCH,
        }
    }
}

pub(super) enum Kept {
    Policy(Arc<PolicyEntry>),
    /// (reason, until).
    Negative(Box<(Box<str>, SystemTime)>),
    Dane(Arc<DaneEntry>),
}

impl Kept {
    pub(super) fn from_record(record: &Record) -> Option<Kept> {
        match record {
            Record::Policy { entry, .. } => Some(Kept::Policy(entry.clone())),
            Record::Negative { reason, until, .. } => {
                Some(Kept::Negative(Box::new((reason.as_str().into(), *until))))
            }
            Record::Dane { entry, .. } => Some(Kept::Dane(entry.clone())),
            Record::Remove { .. } => None,
        }
    }

    /// The journal line of this record for `domain`, without its newline.
    pub(super) fn line(&self, domain: &Name) -> Result<String, serde_json::Error> {
        let record = match self {
            Kept::Policy(entry) => Record::Policy {
                domain: domain.clone(),
                entry: entry.clone(),
            },
            Kept::Negative(n) => Record::Negative {
                domain: domain.clone(),
                reason: n.0.to_string(),
                until: n.1,
            },
            Kept::Dane(entry) => Record::Dane {
                domain: domain.clone(),
                entry: entry.clone(),
            },
        };
        record.encode()
    }
}

/// The result of reading a journal: what to hand out, and what the writer starts from.
pub(super) struct Scan {
    pub(super) loaded: Loaded,
    pub(super) live: HashMap<Name, Live>,
    /// Larger than every `seq` in `live`.
    pub(super) next_seq: u64,
    /// What later compactions may delete as expired.
    pub(super) expiry: Expiry,
    /// The file is already exactly what a compaction would write.
    pub(super) clean: bool,
}

struct Skips<'a> {
    path: &'a Path,
    count: usize,
}

impl Skips<'_> {
    fn skip(&mut self, line: usize, reason: &str) {
        if self.count < MAX_WARNINGS {
            warn!(journal = %self.path.display(), line, "skipping journal record: {reason}");
        }
        self.count += 1;
    }

    fn finish(&self) {
        if self.count > MAX_WARNINGS {
            warn!(
                journal = %self.path.display(),
                "skipped {} more unusable journal records without a warning each ({} in all)",
                self.count - MAX_WARNINGS,
                self.count
            );
        }
    }
}

/// Reads and scans the journal at `path` in `dir`; a missing journal is an empty one. Only a
/// journal that cannot be read at all is an error.
pub(super) fn read(dir: &Path, path: &Path, now: SystemTime) -> Result<Scan, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(StoreError::io(dir, format!("cannot read {JOURNAL}"), &e)),
    };
    Ok(scan(&bytes, now, path))
}

/// Reads a whole journal. Never fails: whatever cannot be used is skipped with a warning.
pub(super) fn scan(bytes: &[u8], now: SystemTime, path: &Path) -> Scan {
    let mut skips = Skips { path, count: 0 };
    let mut header_ok = false;
    let mut records = 0;
    let mut expiry = Expiry::default();
    // The latest record per domain: `live[domain].seq` indexes `slots`, superseded slots become
    // None. The map becomes the writer's live map, filled in at the end, so it is built once.
    //
    // Everything is sized from the line count up front. Growing these by doubling would free
    // multi-megabyte blocks midway, which makes glibc raise its mmap threshold; the long-lived
    // cache allocated next would then sit above freed holes the kernel never gets back (measured:
    // 9 MiB more RSS with 100,000 policies).
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    let mut live: HashMap<Name, Live> = HashMap::with_capacity(lines);
    let mut slots: Vec<Option<(Record, &[u8])>> = Vec::with_capacity(lines);

    for (i, raw) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let Some(line) = raw.strip_suffix(b"\n") else {
            skips.skip(
                line_no,
                "truncated record at the end of the file (a write that never completed)",
            );
            continue;
        };
        if i == 0 {
            if line == HEADER.as_bytes() {
                header_ok = true;
                continue;
            }
            if line.starts_with(HEADER_PREFIX.as_bytes()) {
                let shown = String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned();
                warn!(journal = %path.display(), header = %shown,
                      "unknown journal version; reading its records one by one anyway");
                continue;
            }
            // Each record carries its own version, so a lost header costs nothing else.
            warn!(journal = %path.display(), "journal has no header; reading its records anyway");
        }
        let record = match Record::decode(line) {
            Ok(r) => r,
            Err(reason) => {
                skips.skip(line_no, &reason);
                continue;
            }
        };
        records += 1;
        match &record {
            Record::Policy { entry, .. } => {
                expiry.fetched = expiry.fetched.max(Some(entry.fetched));
                expiry.newest = expiry.newest.max(Some(entry.fetched));
            }
            Record::Negative { until, .. } => expiry.newest = expiry.newest.max(Some(*until)),
            Record::Dane { entry, .. } => expiry.newest = expiry.newest.max(Some(entry.checked)),
            Record::Remove { .. } => {}
        }
        if let Record::Remove { domain } = &record {
            if let Some(old) = live.remove(domain) {
                slots[old.seq as usize] = None;
            }
            continue;
        }
        let placeholder = Live {
            seq: slots.len() as u64,
            kept: None,
        };
        // The same Arc as the record's, which `Loaded` hands to the cache: one copy per domain.
        if let Some(old) = live.insert(record.domain_arc().clone(), placeholder) {
            slots[old.seq as usize] = None;
        }
        slots.push(Some((record, line)));
    }
    skips.finish();

    let mut loaded = Loaded {
        records,
        skipped: skips.count,
        bytes: bytes.len() as u64,
        policies: Vec::with_capacity(live.len()),
        ..Loaded::default()
    };
    let cutoff = expiry.cutoff(now);
    // In file order, so that `loaded` lists domains in the order they were last written.
    let next_seq = slots.len() as u64;
    let mut kept: Vec<Option<Kept>> = Vec::with_capacity(slots.len());
    for slot in slots {
        let Some((record, _line)) = slot else {
            kept.push(None);
            continue;
        };
        let keep = Kept::from_record(&record);
        match record {
            Record::Policy { domain, entry } if entry.is_valid(now) => {
                loaded.policies.push((domain, entry));
            }
            Record::Negative {
                domain,
                reason,
                until,
            } if until > now => {
                loaded.negatives.push((domain, reason, until));
            }
            Record::Dane { domain, entry } if entry.is_valid(now) => {
                let destination = domain.strip_prefix(DANE_PREFIX).unwrap_or(&domain);
                loaded.dane.push((destination.to_string(), entry));
            }
            Record::Dane { entry, .. } if entry.expires() > cutoff => loaded.held += 1,
            Record::Policy { entry, .. } if entry.expires() > cutoff => loaded.held += 1,
            Record::Negative { until, .. } if until > cutoff => loaded.held += 1,
            _ => {
                loaded.expired += 1;
                kept.push(None);
                continue;
            }
        }
        kept.push(keep);
    }
    if let (Some(ahead), Some(newest)) = (expiry.clock_ahead(now), expiry.newest) {
        warn!(
            journal = %path.display(),
            ahead = %humantime::format_duration(ahead),
            newest_unix = unix_seconds(newest),
            held = loaded.held,
            "the clock is more than a day past the newest journal record: either the daemon was \
             stopped that long or the clock is ahead; records that look expired are kept on disk, \
             not served, until the clock is within a day of that record"
        );
    }
    live.retain(
        |_, l| match kept.get_mut(l.seq as usize).and_then(Option::take) {
            Some(k) => {
                l.kept = Some(k);
                true
            }
            None => false,
        },
    );
    // A journal due for compaction holds up to twice the live records; the map lives on in the
    // writer, so give back what superseded lines made it reserve.
    if live.len() * 2 < live.capacity() {
        live.shrink_to_fit();
    }
    let clean = header_ok && loaded.skipped == 0 && loaded.expired == 0 && live.len() == records;
    Scan {
        loaded,
        live,
        next_seq,
        expiry,
        clean,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use proptest::prelude::*;

    use super::*;
    use crate::cache::journal::Store;
    use crate::cache::journal::format::{HEADER, unix_seconds};
    use crate::cache::journal::test_support::*;

    fn three_policies(dir: &Path, now: SystemTime) -> Vec<u8> {
        let (store, _) = Store::open(dir, now).unwrap();
        for d in ["a.test", "b.test", "c.test"] {
            store.write_blocking(policy(d, "1", now)).unwrap();
        }
        drop(store);
        fs::read(journal(dir)).unwrap()
    }

    #[test]
    fn truncation_anywhere_in_the_last_record_keeps_the_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let now = base();
        let full = three_policies(dir.path(), now);
        let start = full[..full.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        let earlier = full[..start].to_vec();
        for cut in start + 1..full.len() {
            fs::write(journal(dir.path()), &full[..cut]).unwrap();
            let ((store, loaded), log) = logged(|| Store::open(dir.path(), now).unwrap());
            assert_eq!(
                domains(&loaded),
                [("a.test", "1"), ("b.test", "1")],
                "cut at {cut}"
            );
            assert_eq!((loaded.records, loaded.skipped), (2, 1), "cut at {cut}");
            assert!(log.contains("truncated record"), "cut at {cut}: {log}");
            // Compacted at open: the torn tail is gone before anything is appended.
            drop(store);
            assert_eq!(fs::read(journal(dir.path())).unwrap(), earlier);
        }
        // Appends after a torn tail land on a clean line.
        fs::write(journal(dir.path()), &full[..full.len() - 3]).unwrap();
        let (store, _) = Store::open(dir.path(), now).unwrap();
        store.write_blocking(policy("d.test", "2", now)).unwrap();
        drop(store);
        let (_store, loaded) = Store::open(dir.path(), now).unwrap();
        assert_eq!(
            domains(&loaded),
            [("a.test", "1"), ("b.test", "1"), ("d.test", "2")]
        );
        assert_eq!(loaded.skipped, 0);
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_record_skips_that_record_only() {
        let dir = tempfile::tempdir().unwrap();
        let now = base();
        let full = three_policies(dir.path(), now);
        let lines: Vec<usize> = full
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i)
            .collect();
        // Line 0 is the header; the middle record spans lines[1]+1 .. lines[2].
        let (from, to) = (lines[1] + 1, lines[2]);
        for at in from..to {
            for bit in [0x01u8, 0x20, 0x80] {
                let mut damaged = full.clone();
                damaged[at] ^= bit;
                let s = scan_bytes(&damaged, now);
                assert_eq!(
                    domains(&s.loaded),
                    [("a.test", "1"), ("c.test", "1")],
                    "byte {at} ^ {bit:#x}"
                );
                assert_eq!(s.loaded.records, 2);
                // One bad record, or two halves when the flip made a newline ('*' ^ 0x20).
                let halves = usize::from(damaged[at] == b'\n');
                assert_eq!(s.loaded.skipped, 1 + halves, "byte {at} ^ {bit:#x}");
                assert!(!s.clean);
            }
        }
        let mut damaged = full.clone();
        damaged[(from + to) / 2] ^= 0x04;
        fs::write(journal(dir.path()), &damaged).unwrap();
        let ((_store, loaded), log) = logged(|| Store::open(dir.path(), now).unwrap());
        assert_eq!(domains(&loaded), [("a.test", "1"), ("c.test", "1")]);
        assert_eq!(loaded.skipped, 1);
        assert!(log.contains("skipping journal record"), "{log}");
    }

    #[test]
    fn unknown_record_versions_and_types_are_skipped() {
        let now = base();
        let t = unix_seconds(now);
        let mut file = format!("{HEADER}\n");
        file += &line(&policy_json("a.test", "1", now));
        file += &line(&format!(
            r#"{{"v":2,"t":"policy","d":"b.test","id":"2","fetched":{t},"policy":"whatever"}}"#
        ));
        file += &line(r#"{"v":1,"t":"rename","d":"a.test","to":"z.test"}"#);
        file += &line(r#"{"t":"remove","d":"a.test"}"#);
        file += &line(r#"{"v":"1","t":"remove","d":"a.test"}"#);
        file += &line(r#"{"v":1,"t":"remove"}"#);
        file += &line(&format!(
            r#"{{"v":1,"t":"negative","d":"n.test","until":{}}}"#,
            t + 60
        ));
        // A later v1 writer may add fields: ignored, the record is used.
        file += &line(&format!(
            r#"{{"v":1,"t":"negative","d":"m.test","reason":"r","until":{},"extra":[1]}}"#,
            t + 60
        ));
        file += &line(&policy_json("c.test", "3", now));
        let s = scan_bytes(file.as_bytes(), now);
        assert_eq!(domains(&s.loaded), [("a.test", "1"), ("c.test", "3")]);
        assert_eq!(s.loaded.negatives.len(), 1);
        assert_eq!((s.loaded.records, s.loaded.skipped), (3, 6));
    }

    #[test]
    fn unknown_or_missing_header_still_loads_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let now = base();
        let records =
            line(&policy_json("a.test", "1", now)) + &line(&policy_json("b.test", "2", now));
        for (header, warning) in [
            ("mta-sts-policyd journal 7\n", "unknown journal version"),
            ("", "no header"),
            ("some other file\n", "no header"),
        ] {
            fs::write(journal(dir.path()), format!("{header}{records}")).unwrap();
            let ((store, loaded), log) = logged(|| Store::open(dir.path(), now).unwrap());
            assert_eq!(
                domains(&loaded),
                [("a.test", "1"), ("b.test", "2")],
                "{header:?}"
            );
            assert_eq!(loaded.records, 2);
            assert_eq!(loaded.skipped, usize::from(header == "some other file\n"));
            assert!(log.contains(warning), "{header:?}: {log}");
            drop(store);
            let rewritten = fs::read_to_string(journal(dir.path())).unwrap();
            assert_eq!(rewritten, format!("{HEADER}\n{records}"));
        }
    }

    #[test]
    fn garbage_loads_empty_without_error() {
        let dir = tempfile::tempdir().unwrap();
        // A fixed pseudo-random byte soup with some newlines in it.
        let mut x: u32 = 0x1234_5678;
        let garbage: Vec<u8> = (0..20_000)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect();
        for bytes in [garbage, b"\n\n\n".to_vec(), b"\0\0\0\0".to_vec()] {
            fs::write(journal(dir.path()), &bytes).unwrap();
            let (store, loaded) = Store::open(dir.path(), base()).unwrap();
            assert_eq!(loaded.records, 0);
            assert!(loaded.policies.is_empty() && loaded.negatives.is_empty());
            assert_eq!(loaded.bytes, bytes.len() as u64);
            store.write_blocking(policy("a.test", "1", base())).unwrap();
            drop(store);
            let (_store, loaded) = Store::open(dir.path(), base()).unwrap();
            assert_eq!(domains(&loaded), [("a.test", "1")]);
            assert_eq!(loaded.skipped, 0);
        }
    }

    #[test]
    fn warnings_stop_after_twenty_then_summarize() {
        let mut file = format!("{HEADER}\n");
        for i in 0..30 {
            file += &format!("00000000 {{\"bad\":{i}}}\n");
        }
        let (s, log) = logged(|| scan_bytes(file.as_bytes(), base()));
        assert_eq!(s.loaded.skipped, 30);
        assert_eq!(log.matches("skipping journal record").count(), 20, "{log}");
        assert!(log.contains("skipped 10 more"), "{log}");
    }

    #[test]
    fn a_policy_that_no_longer_parses_is_skipped_and_the_earlier_one_wins() {
        let now = base();
        let t = unix_seconds(now);
        let mut file = format!("{HEADER}\n");
        file += &line(&policy_json("a.test", "good", now));
        file += &line(&format!(
            r#"{{"v":1,"t":"policy","d":"a.test","id":"bad","fetched":{t},"policy":"version: STSv2\nmode: enforce\nmx: a\nmax_age: 5\n"}}"#
        ));
        file += &line(&format!(
            r#"{{"v":1,"t":"policy","d":"b.test","id":"bad","fetched":{t},"policy":"version: STSv1\nmode: enforce\nmax_age: 5\n"}}"#
        ));
        let (s, log) = logged(|| scan_bytes(file.as_bytes(), now));
        assert_eq!(domains(&s.loaded), [("a.test", "good")]);
        assert_eq!((s.loaded.records, s.loaded.skipped), (1, 2));
        assert!(log.contains("stored policy no longer parses"), "{log}");
    }

    #[test]
    fn out_of_range_times_are_skipped_not_panicked_on() {
        let now = base();
        let body = r#"version: STSv1\nmode: none\nmax_age: 31557600\n"#;
        let mut file = format!("{HEADER}\n");
        for fetched in [u64::MAX, i64::MAX as u64, i64::MAX as u64 - 10] {
            file += &line(&format!(
                r#"{{"v":1,"t":"policy","d":"a.test","id":"x","fetched":{fetched},"policy":"{body}"}}"#
            ));
        }
        file += &line(&format!(
            r#"{{"v":1,"t":"negative","d":"n.test","reason":"r","until":{}}}"#,
            u64::MAX
        ));
        let s = scan_bytes(file.as_bytes(), now);
        assert_eq!((s.loaded.records, s.loaded.skipped), (0, 4));
    }

    /// A journal whose latest policy was fetched at `t` and whose newest time is `t` + 1 h:
    /// `a.test` fetched just before `t` (expires 100 s before a day has passed), `b.test` at `t`,
    /// a negative until `t` + 1 h, and `old.test`, which had expired two days before `t`.
    fn journal_as_of(t: SystemTime) -> String {
        let mut file = format!("{HEADER}\n");
        for r in [
            policy("old.test", "o", t - secs(3 * 86_400)),
            policy("a.test", "a", t - secs(100)),
            negative("n.test", "no TXT record", t + secs(3600)),
            policy("b.test", "b", t),
        ] {
            file += &r.encode().unwrap();
            file.push('\n');
        }
        file
    }

    #[test]
    fn a_clock_far_ahead_keeps_records_that_look_expired_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let t = base();
        fs::write(journal(dir.path()), journal_as_of(t)).unwrap();
        // The host boots a month ahead: everything looks expired.
        let ahead = t + secs(30 * 86_400);
        let ((store, loaded), log) = logged(|| Store::open(dir.path(), ahead).unwrap());
        assert!(loaded.policies.is_empty() && loaded.negatives.is_empty());
        assert_eq!(
            (loaded.held, loaded.expired),
            (3, 1),
            "old.test had expired by t"
        );
        assert!(
            log.contains("more than a day past the newest journal record"),
            "{log}"
        );
        assert!(log.contains("held=3"), "{log}");
        drop(store);
        // Compacted (old.test was dead for sure), but nothing that only looked expired is gone.
        let text = fs::read_to_string(journal(dir.path())).unwrap();
        assert!(!text.contains("old.test"), "{text}");

        // The next start with a corrected clock serves all of it again.
        let (_store, loaded) = Store::open(dir.path(), t + secs(60)).unwrap();
        assert_eq!(domains(&loaded), [("a.test", "a"), ("b.test", "b")]);
        assert_eq!(loaded.negatives.len(), 1);
        assert_eq!((loaded.held, loaded.expired), (0, 0));
    }

    #[test]
    fn within_a_day_of_the_newest_record_expired_records_are_deleted() {
        let t = base();
        let file = journal_as_of(t);
        // Just under a day after `t`: a.test and the negative have expired, b.test has not.
        let (s, log) = logged(|| scan_bytes(file.as_bytes(), t + secs(86_350)));
        assert_eq!(domains(&s.loaded), [("b.test", "b")]);
        assert_eq!((s.loaded.held, s.loaded.expired), (0, 3));
        assert!(!s.clean);
        assert!(!log.contains("newest journal record"), "{log}");
        // Exactly a day past the newest time (the negative's end) is still sane; a second more
        // is not, and then only what had expired by the last fetch is deleted.
        let newest = t + secs(3600);
        let at_slack = scan_bytes(file.as_bytes(), newest + CLOCK_AHEAD_SLACK);
        assert_eq!((at_slack.loaded.held, at_slack.loaded.expired), (0, 4));
        let past = scan_bytes(file.as_bytes(), newest + CLOCK_AHEAD_SLACK + secs(1));
        assert_eq!((past.loaded.held, past.loaded.expired), (3, 1));
        assert!(past.live.contains_key("a.test") && !past.live.contains_key("old.test"));
    }

    #[test]
    fn held_records_alone_do_not_force_a_rewrite() {
        let t = base();
        let mut file = format!("{HEADER}\n");
        file += &line(&policy_json("a.test", "a", t));
        let s = scan_bytes(file.as_bytes(), t + secs(10 * 86_400));
        assert_eq!((s.loaded.held, s.loaded.expired), (1, 0));
        assert!(
            s.clean,
            "the file already holds exactly what a compaction would write"
        );
    }

    #[test]
    fn expiry_cutoff_follows_the_clock_unless_it_is_far_ahead_of_the_journal() {
        let t = base();
        let none = Expiry::default();
        assert_eq!(none.cutoff(t + secs(999_999)), t + secs(999_999));
        assert_eq!(none.clock_ahead(t), None);
        let e = Expiry {
            fetched: Some(t),
            newest: Some(t + secs(600)),
        };
        // Behind the journal (a clock set back) or within a day: the clock decides.
        assert_eq!(e.cutoff(t - secs(5)), t - secs(5));
        assert_eq!(e.cutoff(t + secs(87_000)), t + secs(87_000));
        assert_eq!(e.clock_ahead(t + secs(87_000)), None);
        // Further ahead: only what had expired by the latest fetch.
        assert_eq!(e.cutoff(t + secs(87_001)), t);
        assert_eq!(e.clock_ahead(t + secs(87_001)), Some(secs(86_401)));
        // Negatives only: nothing is deleted as expired while the clock is ahead.
        let negatives = Expiry {
            fetched: None,
            newest: Some(t),
        };
        assert_eq!(negatives.cutoff(t + secs(10 * 86_400)), UNIX_EPOCH);
    }

    #[test]
    fn a_journal_of_removals_only_has_no_newest_time() {
        let t = base();
        let mut file = format!("{HEADER}\n");
        file += &remove("a.test").encode().unwrap();
        file.push('\n');
        let s = scan_bytes(file.as_bytes(), t);
        assert_eq!(s.expiry.clock_ahead(t + secs(1_000_000)), None);
    }

    #[test]
    fn a_damaged_header_and_a_byte_turned_line_feed_are_each_skipped() {
        // Found by the property below in CI: a broken header line plus an 'n' that became
        // '\n' inside a record gives one more line than the file was written with.
        let now = base();
        let mut file = format!("{HEADER}\n").into_bytes();
        for d in DOMAINS {
            file.extend_from_slice(line(&policy_json(d, "1", now)).as_bytes());
        }
        file[0] ^= 183;
        let second = format!("{HEADER}\n").len() + 3;
        let at = file[second..]
            .iter()
            .position(|&b| b == b'n')
            .map(|i| i + second);
        let Some(at) = at else {
            panic!("every record holds an n");
        };
        file[at] = b'\n';
        let s = scan_bytes(&file, now);
        assert!(s.loaded.records + s.loaded.skipped <= DOMAINS.len() + 3);
        assert!(!s.clean);
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let s = scan_bytes(&bytes, base());
            prop_assert!(s.loaded.records <= bytes.len());
        }

        #[test]
        fn damaged_valid_journals_never_panic(
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let now = base();
            let mut file = format!("{HEADER}\n").into_bytes();
            for d in DOMAINS {
                file.extend_from_slice(line(&policy_json(d, "1", now)).as_bytes());
            }
            // A flipped byte may become a line feed and split one line in two, so each
            // flip can add one line to the header plus one line per domain.
            let most = DOMAINS.len() + 1 + flips.len();
            for (at, x) in flips {
                let i = at.index(file.len());
                file[i] ^= x;
            }
            file.truncate(cut.index(file.len() + 1));
            let s = scan_bytes(&file, now);
            prop_assert!(s.loaded.records + s.loaded.skipped <= most);
        }
    }

    fn dane_state() -> crate::dane::DaneState {
        crate::dane::DaneState {
            verdict: crate::dane::Verdict::DaneOnly,
            mx_authenticated: true,
            hosts: vec![crate::dane::HostState {
                name: "mx.example.com".into(),
                secure: true,
                addressable: true,
                tlsa_authenticated: true,
                tlsa: vec![crate::dane::Tlsa::new(3, 1, 1, &[0xab; 32])],
            }],
            ttl: secs(3600),
        }
    }

    #[test]
    fn dane_records_round_trip_and_live_apart_from_the_policy_of_the_same_name() {
        let t = UNIX_EPOCH + secs(1_700_000_000);
        let entry = Arc::new(crate::cache::dane::DaneEntry::new(dane_state(), t));
        let rec = crate::cache::journal::format::Record::dane("example.com", entry.clone());
        let line = rec.encode().unwrap();
        assert!(line.contains(r#""t":"dane","d":"dane:example.com","fetched":1700000000"#));
        assert_eq!(
            crate::cache::journal::format::Record::decode(line.as_bytes()),
            Ok(rec.clone())
        );

        let mut file = format!("{HEADER}\n");
        for r in [
            policy("example.com", "1", t),
            rec,
            crate::cache::journal::format::Record::dane("[relay.example.com]:587", entry.clone()),
            crate::cache::journal::format::Record::dane_remove("[relay.example.com]:587"),
        ] {
            file += &r.encode().unwrap();
            file.push('\n');
        }
        let s = super::scan(file.as_bytes(), t + secs(60), std::path::Path::new("j"));
        assert_eq!(s.loaded.policies.len(), 1);
        assert_eq!(s.loaded.dane.len(), 1);
        assert_eq!(s.loaded.dane[0].0, "example.com");
        assert_eq!(*s.loaded.dane[0].1, *entry);
        // Expired after its TTL.
        let s = super::scan(file.as_bytes(), t + secs(3601), std::path::Path::new("j"));
        assert!(s.loaded.dane.is_empty());
    }

    #[test]
    fn a_forged_dane_state_is_skipped() {
        let t = UNIX_EPOCH + secs(1_700_000_000);
        let mut forged = dane_state();
        forged.hosts[0].tlsa[0].usage = 0;
        let line = crate::cache::journal::format::Record::dane(
            "example.com",
            Arc::new(crate::cache::dane::DaneEntry::new(forged, t)),
        )
        .encode()
        .unwrap();
        let err = crate::cache::journal::format::Record::decode(line.as_bytes()).unwrap_err();
        assert!(err.contains("not valid"), "{err}");
        let no_prefix = crate::cache::journal::format::Record::Dane {
            domain: "example.com".into(),
            entry: Arc::new(crate::cache::dane::DaneEntry::new(dane_state(), t)),
        }
        .encode()
        .unwrap();
        assert!(crate::cache::journal::format::Record::decode(no_prefix.as_bytes()).is_err());
    }

    #[test]
    fn an_oversized_dane_record_is_refused_before_its_state_is_parsed() {
        let json = format!(
            r#"{{"v":1,"t":"dane","d":"dane:example.com","fetched":1700000000,"policy":"{}"}}"#,
            " ".repeat(70 * 1024)
        );
        let line = format!(
            "{:08x} {json}",
            crate::cache::journal::format::crc32(json.as_bytes())
        );
        let err = crate::cache::journal::format::Record::decode(line.as_bytes()).unwrap_err();
        assert!(err.contains("oversized"), "{err}");
    }
}
