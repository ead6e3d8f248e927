//! The durable policy cache on disk: `<state dir>/policies.journal`, which remembers every policy
//! the daemon answered across restarts, crashes and SIGKILL (RFC 8461 §10.2 trust on first use).
//!
//! Why an append-only journal with compaction: it is one file in our own line format (a header
//! with a format version, then one record per line, each with its own CRC-32 and record version),
//! so it needs no database and no extra dependency; writers are group-committed, so the fsync is
//! paid once per batch rather than once per policy; and loading is tolerant: a torn tail or a
//! damaged record costs that record only, never the rest of the file.
//!
//! Owns the state directory and the journal in it: the line format (`format.rs`, pure, no I/O),
//! reading the file at start (`load.rs`), the writer thread that appends, group-commits and
//! compacts (`writer.rs`), the failure type (`error.rs`), and here the [`Store`] handle the
//! resolver writes through.
//!
//! May import: `policy`, the `cache::memory` types, `metrics`, `clock`. Never the resolver,
//! discovery or the servers. Inside: `error` and `format` are leaves, `load` uses them, `writer`
//! uses all three, and this file uses the rest; only tests import this file.

mod error;
mod format;
mod load;
#[cfg(test)]
mod test_support;
mod writer;

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::SystemTime;

use tokio::sync::oneshot;
use tracing::error;

pub use error::StoreError;
pub use format::Record;
pub use load::Loaded;
pub use writer::StoreStats;
use writer::{Ack, Msg, Writer};

/// The names of the files the store keeps in its state directory: the journal and the
/// temporary file a compaction writes before renaming it over the journal.
pub const FILES: [&str; 2] = [format::JOURNAL, format::JOURNAL_TMP];

struct Inner {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Mutex<StoreStats>>,
    dir: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer commit what is queued and exit; waiting for it
        // means that records sent without waiting are on disk once the last handle is gone.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The durable policy cache. Cheap to clone; all clones feed one writer thread. Dropping the
/// last clone waits for the writer to commit what is queued (at most one batch and fsync).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Creates a missing state directory (and its parents) with mode 0700; anything else in its
/// place is an error.
fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StoreError::other(dir, "not a directory")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StoreError::io(dir, "cannot create", &e)),
        Err(e) => Err(StoreError::io(dir, "cannot access", &e)),
    }
}

impl Store {
    /// Creates `dir` (mode 0700) if missing, reads the journal tolerantly, and starts the writer
    /// thread.
    ///
    /// A truncated or corrupt tail, a bad record (bad CRC, bad JSON, unparsable policy text), a
    /// record with an unknown "v", or an unknown or missing header cost a warning and that record
    /// only. Only a directory that cannot be created or read, or a journal that cannot be read,
    /// is an error. Unless the file already holds exactly the live records, it is compacted
    /// before this returns, so a torn tail never stays and appends start on a clean line
    /// boundary. A journal that cannot be written (a full or read-only file system) is not an
    /// error: the store starts read-only ([`StoreStats::read_only`]), with what was loaded, and
    /// the writer thread retries in the background until it can rewrite the journal.
    ///
    /// Records that look expired at `now` are not loaded; they stay on disk while `now` is
    /// more than a day past the newest record of the journal, a clock that is probably ahead
    /// ([`Loaded::held`]).
    pub fn open(dir: &Path, now: SystemTime) -> Result<(Store, Loaded), StoreError> {
        ensure_dir(dir)?;
        let stats = Arc::new(Mutex::new(StoreStats::default()));
        let (writer, loaded) = Writer::load(dir, now, stats.clone())?;
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::io(dir, "cannot start the writer thread", &e))?;
        let store = Store {
            inner: Arc::new(Inner {
                tx: Some(tx),
                thread: Some(thread),
                stats,
                dir: dir.to_owned(),
            }),
        };
        Ok((store, loaded))
    }

    fn send(&self, msg: Msg) -> Result<(), StoreError> {
        match &self.inner.tx {
            Some(tx) if tx.send(msg).is_ok() => Ok(()),
            _ => Err(self.stopped()),
        }
    }

    fn stopped(&self) -> StoreError {
        StoreError::other(&self.inner.dir, "the journal writer thread has stopped")
    }

    /// Appends one record and returns once it is on disk (write + fdatasync). Concurrent
    /// callers are batched: the writer drains everything queued, writes it, syncs once, then
    /// acknowledges all (group commit). Dropping the future does not take the record back.
    pub async fn write(&self, r: Record) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Write(r, Ack::Async(tx)))?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// Appends `records` in order and returns once all are on disk: one message to the writer,
    /// so they go out in one group commit (one fdatasync for the lot, however many there are)
    /// and are acknowledged together. Dropping the future does not take them back.
    pub async fn write_many(&self, records: Vec<Record>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.send(Msg::WriteMany(records, Ack::Async(tx)))?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// Same as [`Store::write`] without waiting: for removals and negatives, where durability is
    /// not the security property. Failures are logged and counted by the writer.
    pub fn write_nowait(&self, r: Record) {
        if let Err(e) = self.send(Msg::Write(r, Ack::None)) {
            self.inner
                .stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_errors += 1;
            error!("{e}; record not persisted");
        }
    }

    /// Blocking variant of [`Store::write`] for non-async callers and shutdown.
    pub fn write_blocking(&self, r: Record) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Msg::Write(r, Ack::Blocking(tx)))?;
        rx.recv().map_err(|_| self.stopped())?
    }

    /// Waits until everything queued so far is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Flush(Ack::Async(tx)))?;
        rx.await.map_err(|_| self.stopped())?
    }

    pub fn stats(&self) -> StoreStats {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::cache::journal::format::JOURNAL_TMP;
    use crate::cache::journal::test_support::*;
    use crate::cache::memory::PolicyEntry;
    use crate::policy::parse_policy;

    #[test]
    fn round_trip_keeps_exactly_the_latest_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let now = base();
        let (store, loaded) = Store::open(dir.path(), now).unwrap();
        assert_eq!(loaded.records, 0);
        assert_eq!(loaded.policies.len(), 0);
        let records = [
            policy("a.test", "a1", now - secs(10)),
            policy("b.test", "b1", now - secs(10)),
            negative("n.test", "no TXT record", now + secs(600)),
            negative("gone.test", "back-off", now - secs(1)),
            policy("old.test", "o1", now - secs(86_400 + 5)),
            policy("c.test", "c1", now),
            remove("b.test"),
            policy("a.test", "a2", now - secs(5)),
            negative("c.test", "fetch failed", now + secs(60)),
            remove("never-seen.test"),
            policy("weird \"dom\\ain\"\n.test", "w1", now),
        ];
        for r in &records[..records.len() - 1] {
            store.write_blocking(r.clone()).unwrap();
        }
        store.write_nowait(records[records.len() - 1].clone());
        drop(store);

        let (store, loaded) = Store::open(dir.path(), now).unwrap();
        assert_eq!(loaded.records, records.len());
        assert_eq!(loaded.skipped, 0);
        assert_eq!(loaded.expired, 2, "old.test and gone.test");
        assert_eq!(
            domains(&loaded),
            [("a.test", "a2"), ("weird \"dom\\ain\"\n.test", "w1")]
        );
        assert_eq!(
            loaded.policies[0].1,
            entry("a.test", "a2", 86_400, now - secs(5))
        );
        assert_eq!(
            loaded.negatives,
            [
                ("n.test".into(), "no TXT record".into(), now + secs(600)),
                ("c.test".into(), "fetch failed".into(), now + secs(60)),
            ]
        );
        let stats = store.stats();
        assert_eq!(stats.live, 4);
        assert_eq!(stats.journal_records, 4, "compacted at open");
        drop(store);

        // The compacted file reloads identically, and is clean: no second rewrite.
        let before = fs::read(journal(dir.path())).unwrap();
        let (store, again) = Store::open(dir.path(), now).unwrap();
        assert_eq!(again.policies, loaded.policies);
        assert_eq!(again.negatives, loaded.negatives);
        assert_eq!((again.records, again.skipped, again.expired), (4, 0, 0));
        assert_eq!(store.stats().compactions, 0);
        assert_eq!(fs::read(journal(dir.path())).unwrap(), before);
    }

    /// An import's batch: one message, appended in order and durable when the call returns.
    #[tokio::test]
    async fn write_many_appends_in_order_and_acknowledges_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let now = base();
        let (store, _) = Store::open(dir.path(), now).unwrap();
        store.write_many(Vec::new()).await.unwrap();
        store
            .write_many(vec![
                policy("a.test", "a1", now - secs(10)),
                policy("b.test", "b1", now - secs(10)),
                policy("a.test", "a2", now - secs(5)),
            ])
            .await
            .unwrap();
        let stats = store.stats();
        assert_eq!((stats.journal_records, stats.live), (3, 2));
        // On disk before the answer: read back while the store is still open.
        let scan = scan_bytes(&fs::read(journal(dir.path())).unwrap(), now);
        assert_eq!(scan.loaded.records, 3);
        assert_eq!(domains(&scan.loaded), [("b.test", "b1"), ("a.test", "a2")]);
    }

    #[test]
    fn journal_and_directory_modes() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("state").join("sub");
        let (_store, _) = Store::open(&dir, base()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&journal(&dir)), 0o600);
        assert_eq!(
            fs::read(journal(&dir)).unwrap(),
            b"mta-sts-policyd journal 1\n"
        );
        assert!(!dir.join(JOURNAL_TMP).exists());
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_an_error_naming_it() {
        let parent = tempfile::tempdir().unwrap();
        let file = parent.path().join("state");
        fs::write(&file, b"x").unwrap();
        let err = Store::open(&file, base()).unwrap_err();
        assert_eq!(err.path(), file);
        assert_eq!(
            err.to_string(),
            format!("state directory {}: not a directory", file.display())
        );
        let below = file.join("sub");
        let err = Store::open(&below, base()).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(&format!("state directory {}: ", below.display())));
        assert!(!text.contains("os error"), "{text}");
    }

    #[test]
    fn a_journal_that_is_a_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(journal(dir.path())).unwrap();
        let err = Store::open(dir.path(), base()).unwrap_err();
        assert!(
            err.to_string().contains("cannot read policies.journal"),
            "{err}"
        );
    }

    // ---- property tests ----

    #[derive(Debug, Clone)]
    enum Op {
        Policy {
            d: usize,
            id: String,
            body: String,
            age: u64,
        },
        Negative {
            d: usize,
            reason: String,
            until: i64,
        },
        Remove(usize),
    }

    fn body() -> impl Strategy<Value = String> {
        (
            prop_oneof![Just("enforce"), Just("testing"), Just("none")],
            prop_oneof![1u64..200_000, Just(9_999_999_999u64)],
            proptest::collection::vec("(\\*\\.)?[a-z0-9]{1,8}\\.[a-z]{2,5}", 1..4),
            proptest::collection::vec(("x[a-z_]{0,6}", "[!-~]{1,10}"), 0..2),
        )
            .prop_map(|(mode, max_age, mx, ext)| {
                let mut s = format!("version: STSv1\nmode: {mode}\nmax_age: {max_age}\n");
                for m in mx {
                    s += &format!("mx: {m}\n");
                }
                for (k, v) in ext {
                    s += &format!("{k}: {v}\n");
                }
                s
            })
    }

    fn op() -> impl Strategy<Value = Op> {
        let d = 0..DOMAINS.len();
        prop_oneof![
            4 => (d.clone(), "[A-Za-z0-9]{1,32}", body(), 0u64..300_000)
                .prop_map(|(d, id, body, age)| Op::Policy { d, id, body, age }),
            2 => (d.clone(), "[ -~é\n]{0,20}", -1000i64..1000)
                .prop_map(|(d, reason, until)| Op::Negative { d, reason, until }),
            1 => d.prop_map(Op::Remove),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn random_operations_round_trip(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let now = base();
            // The model: the latest record per domain with its write order.
            let mut model: HashMap<&str, (usize, Record)> = HashMap::new();
            let (store, _) = Store::open(dir.path(), now).unwrap();
            for (seq, op) in ops.iter().enumerate() {
                let record = match op {
                    Op::Policy { d, id, body, age } => Record::Policy {
                        domain: DOMAINS[*d].into(),
                        entry: Arc::new(PolicyEntry::new(
                            id.clone(),
                            parse_policy(body.as_bytes()).unwrap(),
                            now - secs(*age),
                        )),
                    },
                    Op::Negative { d, reason, until } => Record::Negative {
                        domain: DOMAINS[*d].into(),
                        reason: reason.clone(),
                        until: if *until >= 0 {
                            now + secs(until.unsigned_abs())
                        } else {
                            now - secs(until.unsigned_abs())
                        },
                    },
                    Op::Remove(d) => Record::Remove { domain: DOMAINS[*d].into() },
                };
                let domain = DOMAINS[match op {
                    Op::Policy { d, .. } | Op::Negative { d, .. } | Op::Remove(d) => *d,
                }];
                if matches!(record, Record::Remove { .. }) {
                    model.remove(domain);
                } else {
                    model.insert(domain, (seq, record.clone()));
                }
                if seq.is_multiple_of(7) {
                    store.write_blocking(record).unwrap();
                } else {
                    store.write_nowait(record);
                }
            }
            drop(store);

            let mut latest: Vec<(usize, Record)> = model.into_values().collect();
            latest.sort_by_key(|(seq, _)| *seq);
            let mut want_policies = Vec::new();
            let mut want_negatives = Vec::new();
            for (_, r) in latest {
                match r {
                    Record::Policy { domain, entry } if entry.is_valid(now) => {
                        want_policies.push((domain, entry));
                    }
                    Record::Negative { domain, reason, until } if until > now => {
                        want_negatives.push((domain, reason, until));
                    }
                    _ => {}
                }
            }
            let (store, loaded) = Store::open(dir.path(), now).unwrap();
            prop_assert_eq!(loaded.records, ops.len());
            prop_assert_eq!(loaded.skipped, 0);
            prop_assert_eq!(&loaded.policies, &want_policies);
            prop_assert_eq!(&loaded.negatives, &want_negatives);
            drop(store);
            let (_store, again) = Store::open(dir.path(), now).unwrap();
            prop_assert_eq!(&again.policies, &want_policies);
            prop_assert_eq!(&again.negatives, &want_negatives);
            prop_assert_eq!(again.skipped + again.expired, 0);
        }
    }
}
