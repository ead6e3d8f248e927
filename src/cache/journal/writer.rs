//! The writer thread ("store-writer"): it alone holds the open journal, appends records in group
//! commits (whatever queued up during one fdatasync goes out with the next), acknowledges the
//! waiters of each batch, and compacts the file.
//!
//! It keeps the live record per domain itself, so compaction needs nothing from the in-memory
//! cache and never runs on the lookup path. A failed write, at start or later (a full or
//! read-only file system, an I/O error), leaves the daemon serving from memory with the journal
//! read-only: the records keep going into the live map, and the file is rewritten from it once a
//! retry succeeds. Retries back off (1 s, doubling to a minute) so that a full disk is not
//! rewritten for every new policy; an explicit flush (shutdown, purge) retries at once.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use tracing::{error, info};

use super::error::StoreError;
use super::format::{HEADER, JOURNAL, JOURNAL_TMP, Record};
use super::load::{self, Expiry, Kept, Live, Loaded, Scan};
use crate::cache::Name;

/// Compaction runs when the journal holds more than `2 × live + COMPACT_SLACK` records: the file
/// stays within a small multiple of the live set, and a small cache is not rewritten constantly.
pub(super) const COMPACT_SLACK: usize = 1024;
/// Most requests committed by one fsync; bounds how long the first waiter of a batch waits.
pub(super) const MAX_BATCH: usize = 4096;
/// The first retry of a journal that cannot be written; each failed retry doubles the wait.
pub(super) const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between retries: how long a freed disk may go unused.
pub(super) const MAX_RETRY: Duration = Duration::from_secs(60);

/// Counters of the store, for status output and metrics.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// Domains with a live record in the journal.
    pub live: usize,
    /// Records in the journal file (the header not counted).
    pub journal_records: usize,
    pub journal_bytes: u64,
    pub compactions: u64,
    /// Write attempts that failed (appends, rewrites, directory syncs).
    pub write_errors: u64,
    /// Why the journal cannot be written now (the last failure), while it cannot: records are
    /// then kept in memory only, and the file is rewritten with all of them once a retry works.
    pub read_only: Option<String>,
}

pub(super) enum Ack {
    None,
    Async(oneshot::Sender<Result<(), StoreError>>),
    Blocking(mpsc::SyncSender<Result<(), StoreError>>),
}

impl Ack {
    fn send(self, result: Result<(), StoreError>) {
        // A waiter that went away (cancelled future) does not need the answer.
        match self {
            Ack::None => {}
            Ack::Async(tx) => {
                let _ = tx.send(result);
            }
            Ack::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

pub(super) enum Msg {
    Write(Record, Ack),
    /// Records committed together and acknowledged once, after the last (an import's batch).
    WriteMany(Vec<Record>, Ack),
    Flush(Ack),
}

#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    records: usize,
    acks: Vec<Ack>,
    /// Someone waits for everything so far to be durable: a read-only journal is retried now.
    flush: bool,
}

impl Batch {
    fn clear(&mut self) {
        self.buf.clear();
        self.records = 0;
        self.flush = false;
    }
}

/// The journal cannot be written: the last failure and when to try again.
struct Failing {
    error: StoreError,
    backoff: Duration,
    retry_at: Instant,
}

pub(super) struct Writer {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
    /// The journal, positioned at its end. None only before the first compaction at open.
    file: Option<File>,
    /// The live line per domain: exactly what a compaction writes.
    live: HashMap<Name, Live>,
    seq: u64,
    journal_records: usize,
    journal_bytes: u64,
    /// A write failed, so the file may end in a torn line and lack records the live map has:
    /// the next commit rewrites the file from the live map instead of appending.
    needs_rewrite: bool,
    /// Set while `needs_rewrite` stays after a failed attempt: the journal is read-only, and
    /// further attempts wait for the back-off.
    failing: Option<Failing>,
    /// What compaction may delete as expired (the clock is checked against the journal).
    expiry: Expiry,
    /// The clock looked ahead of the journal at the last compaction.
    clock_ahead: bool,
    compactions: u64,
    write_errors: u64,
    stats: Arc<Mutex<StoreStats>>,
}

impl Writer {
    /// Everything [`Store::open`](super::Store::open) does in an existing directory except
    /// starting the thread: reading the journal, and compacting it unless it is already clean.
    ///
    /// Only a journal that cannot be read is an error. One that cannot be written (opened for
    /// appending or compacted) leaves the writer read-only: what was loaded is served, and the
    /// thread retries in the background.
    pub(super) fn load(
        dir: &Path,
        now: SystemTime,
        stats: Arc<Mutex<StoreStats>>,
    ) -> Result<(Writer, Loaded), StoreError> {
        let path = dir.join(JOURNAL);
        let Scan {
            loaded,
            live,
            next_seq,
            expiry,
            clean,
        } = load::read(dir, &path, now)?;

        let mut writer = Writer {
            dir: dir.to_owned(),
            tmp: dir.join(JOURNAL_TMP),
            file: None,
            seq: next_seq,
            live,
            journal_records: loaded.records,
            journal_bytes: loaded.bytes,
            needs_rewrite: false,
            failing: None,
            clock_ahead: expiry.clock_ahead(now).is_some(),
            expiry,
            compactions: 0,
            write_errors: 0,
            stats,
            path,
        };
        let opened = if clean {
            OpenOptions::new()
                .append(true)
                .open(&writer.path)
                .map(|file| writer.file = Some(file))
                .map_err(|e| StoreError::io(dir, format!("cannot open {JOURNAL}"), &e))
        } else {
            writer.compact(now)
        };
        if let Err(e) = opened {
            // Nothing is open to append to: every later write goes through a rewrite.
            writer.needs_rewrite = true;
            writer.failed(&e, Instant::now());
        }
        writer.publish();
        info!(
            journal = %writer.path.display(),
            policies = loaded.policies.len(),
            negatives = loaded.negatives.len(),
            records = loaded.records,
            skipped = loaded.skipped,
            expired = loaded.expired,
            held = loaded.held,
            bytes = loaded.bytes,
            compacted = !clean && writer.failing.is_none(),
            read_only = writer.failing.is_some(),
            "policy journal loaded"
        );

        Ok((writer, loaded))
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut batch = Batch::default();
        // Group commit: whatever queued up during the previous fsync goes out with the next one.
        loop {
            let first = match &self.failing {
                // Read-only: wake up for the retry even when nothing is written.
                Some(f) => {
                    match rx.recv_timeout(f.retry_at.saturating_duration_since(Instant::now())) {
                        Ok(msg) => Some(msg),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => break,
                },
            };
            if let Some(msg) = first {
                self.take(msg, &mut batch);
                for _ in 1..MAX_BATCH {
                    match rx.try_recv() {
                        Ok(msg) => self.take(msg, &mut batch),
                        Err(_) => break,
                    }
                }
            }
            let result = self.commit(&batch, Instant::now());
            self.publish();
            for ack in batch.acks.drain(..) {
                ack.send(result.clone());
            }
            batch.clear();
        }
        // Every handle is gone and every batch was committed; a failed one gets a last try.
        if self.needs_rewrite {
            batch.flush = true;
            let _ = self.commit(&batch, Instant::now());
            self.publish();
        }
    }

    fn take(&mut self, msg: Msg, batch: &mut Batch) {
        let (records, ack) = match msg {
            Msg::Write(record, ack) => (vec![record], ack),
            Msg::WriteMany(records, ack) => (records, ack),
            Msg::Flush(ack) => {
                batch.acks.push(ack);
                batch.flush = true;
                return;
            }
        };
        let mut failed = None;
        for record in records {
            if let Err(e) = self.take_record(record, batch) {
                failed = Some(e);
            }
        }
        match failed {
            Some(e) => ack.send(Err(e)),
            None => batch.acks.push(ack),
        }
    }

    fn take_record(&mut self, record: Record, batch: &mut Batch) -> Result<(), StoreError> {
        let line = match record.encode() {
            Ok(line) => line,
            Err(e) => {
                // Unreachable with strings and integers; answered rather than assumed.
                let e = StoreError::other(&self.dir, format!("cannot encode a record: {e}"));
                self.write_errors += 1;
                error!("{e}; record not persisted");
                return Err(e);
            }
        };
        batch.buf.extend_from_slice(line.as_bytes());
        batch.buf.push(b'\n');
        batch.records += 1;
        self.seq += 1;
        let seq = self.seq;
        match (Kept::from_record(&record), record) {
            (Some(kept), r) => {
                let live = Live {
                    seq,
                    kept: Some(kept),
                };
                self.live.insert(r.domain_arc().clone(), live);
            }
            (None, r) => {
                self.live.remove(r.domain());
            }
        }
        Ok(())
    }

    /// Makes the batch (already applied to the live map) durable, `at` being the time for the
    /// back-off of a read-only journal.
    fn commit(&mut self, batch: &Batch, at: Instant) -> Result<(), StoreError> {
        if let Some(f) = &self.failing
            && at < f.retry_at
            && !batch.flush
        {
            // Kept in the live map: the retry's rewrite brings this batch along.
            return Err(f.error.clone());
        }
        if self.needs_rewrite || self.file.is_none() {
            // The live map already holds this batch and every record of failed batches.
            self.needs_rewrite = true;
            let result = self.compact(SystemTime::now());
            return match result {
                Ok(()) => {
                    self.recovered();
                    Ok(())
                }
                Err(e) => {
                    self.failed(&e, at);
                    Err(e)
                }
            };
        }
        if batch.records == 0 {
            return Ok(());
        }
        if self.journal_records + batch.records > 2 * self.live.len() + COMPACT_SLACK {
            match self.compact(SystemTime::now()) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.failed(&e, at);
                    if self.needs_rewrite {
                        return Err(e);
                    }
                    // The old journal is untouched: appending still makes the batch durable.
                }
            }
        }
        self.append(&batch.buf, batch.records)
            .inspect_err(|e| self.failed(e, at))
    }

    fn append(&mut self, buf: &[u8], records: usize) -> Result<(), StoreError> {
        let Some(file) = self.file.as_mut() else {
            return Err(StoreError::other(&self.dir, "journal is not open"));
        };
        match file.write_all(buf).and_then(|()| file.sync_data()) {
            Ok(()) => {
                self.journal_records += records;
                self.journal_bytes += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.needs_rewrite = true;
                Err(StoreError::io(
                    &self.dir,
                    format!("cannot append to {JOURNAL}"),
                    &e,
                ))
            }
        }
    }

    /// Rewrites the journal with the live records only (dropping those expired at `now`): to a
    /// temporary file, fsync, rename over the journal, fsync the directory. Until the rename the
    /// old journal stays as it was, so a failure or crash midway loses nothing.
    ///
    /// While the clock looks ahead of the journal, only what had expired by the journal's newest
    /// record is dropped (see [`Expiry`]).
    fn compact(&mut self, now: SystemTime) -> Result<(), StoreError> {
        let ahead = self.expiry.clock_ahead(now).is_some();
        if self.clock_ahead && !ahead {
            info!(
                journal = %self.path.display(),
                "the clock is back within a day of the journal's newest record at start: \
                 compaction deletes expired records again"
            );
        }
        self.clock_ahead = ahead;
        let cutoff = self.expiry.cutoff(now);
        self.live.retain(|_, l| l.expires() > cutoff);
        let mut order: Vec<(&Name, &Live)> = self.live.iter().collect();
        order.sort_unstable_by_key(|(_, l)| l.seq);
        let mut lines = Vec::with_capacity(order.len());
        for (domain, l) in order {
            // Every entry left after the retain above has a record (expires() > cutoff).
            let Some(kept) = &l.kept else { continue };
            match kept.line(domain) {
                Ok(line) => lines.push(line),
                Err(e) => {
                    return Err(StoreError::other(
                        &self.dir,
                        format!("cannot encode a record: {e}"),
                    ));
                }
            }
        }
        let written = (|| -> io::Result<(File, u64)> {
            // A fresh file, never whatever sits under the name: a link planted there would
            // otherwise be followed, and its target truncated and renamed into place.
            match fs::remove_file(&self.tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&self.tmp)?;
            let mut out = BufWriter::with_capacity(1 << 16, file);
            let mut size = HEADER.len() as u64 + 1;
            out.write_all(HEADER.as_bytes())?;
            out.write_all(b"\n")?;
            for line in &lines {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
                size += line.len() as u64 + 1;
            }
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok((file, size))
        })();
        let (file, size) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = fs::remove_file(&self.tmp);
                return Err(StoreError::io(
                    &self.dir,
                    format!("cannot write {JOURNAL_TMP}"),
                    &e,
                ));
            }
        };
        if let Err(e) = fs::rename(&self.tmp, &self.path) {
            let _ = fs::remove_file(&self.tmp);
            return Err(StoreError::io(
                &self.dir,
                format!("cannot rename {JOURNAL_TMP} to {JOURNAL}"),
                &e,
            ));
        }
        // From here on the new file is the journal, whatever happens next. Its handle is at
        // the end, so appends continue in it.
        self.file = Some(file);
        self.journal_records = self.live.len();
        self.journal_bytes = size;
        self.compactions += 1;
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            // The rename may not survive a crash, and the old journal lacks the latest batch.
            self.needs_rewrite = true;
            return Err(StoreError::io(&self.dir, "cannot sync the directory", &e));
        }
        self.needs_rewrite = false;
        Ok(())
    }

    /// Counts and logs a failed attempt at `at`. When the file now needs a rewrite, the journal
    /// is read-only until a retry works, and the wait before the next one doubles.
    fn failed(&mut self, e: &StoreError, at: Instant) {
        self.write_errors += 1;
        if !self.needs_rewrite {
            // The old journal is intact and appends go on (a failed compaction).
            error!("{e}; the journal is still appended to and compaction is retried later");
            return;
        }
        let backoff = match &self.failing {
            Some(f) => (f.backoff * 2).min(MAX_RETRY),
            None => FIRST_RETRY,
        };
        // The daemon keeps serving from memory; the retry rewrites the journal from it.
        error!(
            "{e}; the journal is read-only: policies are kept in memory, retrying in {}",
            humantime::format_duration(backoff)
        );
        self.failing = Some(Failing {
            error: e.clone(),
            backoff,
            retry_at: at + backoff,
        });
    }

    /// A rewrite worked: the journal holds everything again.
    fn recovered(&mut self) {
        if self.failing.take().is_some() {
            info!(
                journal = %self.path.display(),
                records = self.journal_records,
                "the policy journal is writable again: rewritten with every policy kept in memory"
            );
        }
    }

    fn publish(&self) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        *stats = StoreStats {
            live: self.live.len(),
            journal_records: self.journal_records,
            journal_bytes: self.journal_bytes,
            compactions: self.compactions,
            write_errors: self.write_errors,
            read_only: self.failing.as_ref().map(|f| f.error.to_string()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::journal::Store;
    use crate::cache::journal::test_support::*;

    #[test]
    fn compaction_keeps_the_file_small_and_reloads_identically() {
        let dir = tempfile::tempdir().unwrap();
        let now = base();
        let (store, _) = Store::open(dir.path(), now).unwrap();
        let after_open = store.stats().compactions;
        // Expired by the real clock: the writer's compaction drops it.
        store
            .write_blocking(policy("expired.test", "x", now - secs(90_000)))
            .unwrap();
        store.write_blocking(policy("cold.test", "c", now)).unwrap();
        for i in 0..6000 {
            store.write_nowait(policy("hot.test", &format!("h{i}"), now));
        }
        store
            .write_blocking(negative("neg.test", "r", now + secs(600)))
            .unwrap();
        let stats = store.stats();
        assert!(stats.compactions > after_open, "{stats:?}");
        assert!(
            stats.journal_records <= 2 * 3 + COMPACT_SLACK + MAX_BATCH,
            "{stats:?}"
        );
        assert_eq!(stats.write_errors, 0);
        drop(store);
        let size = fs::metadata(journal(dir.path())).unwrap().len();
        assert!(size < 1_500_000, "journal is {size} bytes");
        let text = fs::read_to_string(journal(dir.path())).unwrap();
        assert!(!text.contains("expired.test"));

        let (store, first) = Store::open(dir.path(), now).unwrap();
        assert_eq!(domains(&first), [("cold.test", "c"), ("hot.test", "h5999")]);
        assert_eq!(first.negatives.len(), 1);
        assert_eq!(first.skipped, 0);
        drop(store);
        let (_store, second) = Store::open(dir.path(), now).unwrap();
        assert_eq!(second.policies, first.policies);
        assert_eq!(second.negatives, first.negatives);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_durable_when_their_futures_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let now = base();
        let (store, _) = Store::open(dir.path(), now).unwrap();
        let mut tasks = Vec::new();
        for t in 0..32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..8 {
                    let d = format!("t{t}-{i}.test");
                    store
                        .write(policy(&d, &format!("{t}.{i}"), now))
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // Read the file behind the live store's back: everything acknowledged is there.
        let s = scan_bytes(&fs::read(journal(dir.path())).unwrap(), now);
        assert_eq!(s.loaded.policies.len(), 256);
        assert_eq!(s.loaded.skipped, 0);
        store.write_nowait(remove("t0-0.test"));
        store.flush().await.unwrap();
        let s = scan_bytes(&fs::read(journal(dir.path())).unwrap(), now);
        assert_eq!(s.loaded.policies.len(), 255);
        assert_eq!(store.stats().live, 255);
        drop(store);
        let (_store, loaded) = Store::open(dir.path(), now).unwrap();
        assert_eq!(loaded.policies.len(), 255);
    }

    /// A directory where the compaction's temporary file goes makes every compaction fail.
    fn block_compaction(dir: &Path) {
        fs::create_dir(dir.join(JOURNAL_TMP)).unwrap();
    }

    fn unblock_compaction(dir: &Path) {
        fs::remove_dir(dir.join(JOURNAL_TMP)).unwrap();
    }

    #[test]
    fn a_failed_write_is_retried_by_rewriting_and_then_durable() {
        let dir = tempfile::tempdir().unwrap();
        let now = base();
        let stats = Arc::new(Mutex::new(StoreStats::default()));
        let (mut w, _) = Writer::load(dir.path(), now, stats.clone()).unwrap();
        let mut batch = Batch::default();
        w.take(
            Msg::Write(policy("a.test", "1", now), Ack::None),
            &mut batch,
        );
        w.commit(&batch, Instant::now()).unwrap();

        // As after a failed append (ENOSPC, EIO): a torn line at the end of the file.
        let mut f = OpenOptions::new()
            .append(true)
            .open(journal(dir.path()))
            .unwrap();
        f.write_all(b"0123abcd {\"v\":1,\"t\":\"pol").unwrap();
        w.needs_rewrite = true;
        block_compaction(dir.path());
        let mut batch = Batch::default();
        w.take(
            Msg::Write(policy("b.test", "2", now), Ack::None),
            &mut batch,
        );
        let failed_at = Instant::now();
        let err = w.commit(&batch, failed_at).unwrap_err();
        assert!(err.to_string().contains(JOURNAL_TMP), "{err}");
        assert!(w.needs_rewrite);
        assert_eq!(w.write_errors, 1);
        w.publish();
        let read_only = stats.lock().unwrap().read_only.clone();
        assert_eq!(read_only, Some(err.to_string()));

        // Within the back-off a write is not tried: it is kept in memory and answered with the
        // pending failure.
        unblock_compaction(dir.path());
        let mut batch = Batch::default();
        w.take(
            Msg::Write(policy("c.test", "3", now), Ack::None),
            &mut batch,
        );
        let pending = w.commit(&batch, failed_at + FIRST_RETRY / 2).unwrap_err();
        assert_eq!(pending.to_string(), err.to_string());
        assert_eq!(w.write_errors, 1, "not an attempt");

        // The next commit after the back-off, even an empty one (the thread's timer), retries
        // and brings b.test and c.test along.
        w.commit(&Batch::default(), failed_at + FIRST_RETRY)
            .unwrap();
        assert!(!w.needs_rewrite);
        w.publish();
        assert_eq!(stats.lock().unwrap().read_only, None);
        let s = scan_bytes(&fs::read(journal(dir.path())).unwrap(), now);
        assert_eq!(
            domains(&s.loaded),
            [("a.test", "1"), ("b.test", "2"), ("c.test", "3")]
        );
        assert_eq!(s.loaded.skipped, 0);
        assert!(s.clean);

        // Appends continue in the rewritten file.
        let mut batch = Batch::default();
        w.take(Msg::Write(remove("a.test"), Ack::None), &mut batch);
        w.commit(&batch, Instant::now()).unwrap();
        let s = scan_bytes(&fs::read(journal(dir.path())).unwrap(), now);
        assert_eq!(domains(&s.loaded), [("b.test", "2"), ("c.test", "3")]);
    }

    #[test]
    fn retries_back_off_to_a_minute_and_a_flush_retries_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let now = base();
        let stats = Arc::new(Mutex::new(StoreStats::default()));
        block_compaction(dir.path());
        // Nothing to append to (the new journal could not be written): read-only from the start.
        let (mut w, _) = Writer::load(dir.path(), now, stats).unwrap();
        assert!(w.file.is_none() && w.needs_rewrite);
        assert_eq!(w.write_errors, 1);
        let mut at = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..9 {
            let f = w.failing.as_ref().unwrap();
            waits.push(f.backoff.as_secs());
            at = f.retry_at;
            w.commit(&Batch::default(), at).unwrap_err();
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(w.write_errors, 10);

        // A flush does not wait for the minute to pass.
        unblock_compaction(dir.path());
        let flush = Batch {
            flush: true,
            ..Batch::default()
        };
        w.commit(&Batch::default(), at).unwrap_err();
        assert_eq!(w.write_errors, 10);
        w.commit(&flush, at).unwrap();
        assert!(w.failing.is_none() && !w.needs_rewrite && w.file.is_some());
        // After recovering, a new failure starts the back-off from the beginning.
        block_compaction(dir.path());
        w.needs_rewrite = true;
        w.commit(&Batch::default(), at).unwrap_err();
        assert_eq!(w.failing.as_ref().unwrap().backoff, FIRST_RETRY);
    }

    #[test]
    fn compaction_while_the_clock_is_ahead_deletes_only_what_expired_before_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let t = base();
        let (store, _) = Store::open(dir.path(), t).unwrap();
        store
            .write_blocking(negative("n.test", "r", t + secs(3600)))
            .unwrap();
        store.write_blocking(policy("a.test", "a", t)).unwrap();
        drop(store);

        let stats = Arc::new(Mutex::new(StoreStats::default()));
        let ahead = t + secs(30 * 86_400);
        let (mut w, loaded) = Writer::load(dir.path(), ahead, stats).unwrap();
        assert_eq!(loaded.held, 2);
        w.compact(ahead).unwrap();
        assert_eq!(
            w.live.len(),
            2,
            "both kept on disk while the clock is ahead"
        );
        assert!(w.clock_ahead);
        // Time synchronisation sets the clock back: expiry follows it again.
        w.compact(t + secs(7200)).unwrap();
        assert!(!w.clock_ahead);
        let s = scan_bytes(&fs::read(journal(dir.path())).unwrap(), t);
        assert_eq!(domains(&s.loaded), [("a.test", "a")]);
        assert!(s.loaded.negatives.is_empty(), "expired an hour before");
    }

    #[test]
    fn a_failed_compaction_falls_back_to_appending() {
        let dir = tempfile::tempdir().unwrap();
        let now = base();
        let (store, _) = Store::open(dir.path(), now).unwrap();
        let compactions = store.stats().compactions;
        block_compaction(dir.path());
        for i in 0..3000 {
            store.write_nowait(policy("hot.test", &format!("h{i}"), now));
        }
        store.write_blocking(policy("last.test", "l", now)).unwrap();
        let stats = store.stats();
        assert!(stats.write_errors > 0, "{stats:?}");
        assert_eq!(stats.compactions, compactions);
        assert_eq!(stats.journal_records, 3001);

        unblock_compaction(dir.path());
        store.write_blocking(remove("last.test")).unwrap();
        let stats = store.stats();
        assert_eq!(stats.compactions, compactions + 1);
        assert_eq!(stats.journal_records, 1);
        drop(store);
        let (_store, loaded) = Store::open(dir.path(), now).unwrap();
        assert_eq!(domains(&loaded), [("hot.test", "h2999")]);
    }

    #[test]
    fn open_starts_read_only_when_the_journal_cannot_be_rewritten_then_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let now = base();
        let (store, _) = Store::open(dir.path(), now).unwrap();
        store.write_blocking(policy("a.test", "1", now)).unwrap();
        drop(store);
        // A torn tail: the journal must be rewritten before anything is appended.
        let mut f = OpenOptions::new()
            .append(true)
            .open(journal(dir.path()))
            .unwrap();
        f.write_all(b"0123abcd {\"v\"").unwrap();
        block_compaction(dir.path());

        let ((store, loaded), log) = logged(|| Store::open(dir.path(), now).unwrap());
        assert_eq!(
            domains(&loaded),
            [("a.test", "1")],
            "served from what was loaded"
        );
        let stats = store.stats();
        let reason = stats.read_only.unwrap();
        assert!(
            reason.starts_with(&format!(
                "state directory {}: cannot write {JOURNAL_TMP}: ",
                dir.path().display()
            )),
            "{reason}"
        );
        assert_eq!(stats.write_errors, 1);
        assert!(log.contains("the journal is read-only"), "{log}");
        // Not durable yet: the writer says so, and keeps the record for the retry.
        store
            .write_blocking(policy("b.test", "2", now))
            .unwrap_err();

        // Space or permission is back: the background retry rewrites the journal, without
        // another write to trigger it.
        unblock_compaction(dir.path());
        let deadline = Instant::now() + 4 * MAX_RETRY;
        while store.stats().read_only.is_some() {
            assert!(Instant::now() < deadline, "{:?}", store.stats());
            std::thread::sleep(Duration::from_millis(50));
        }
        let s = scan_bytes(&fs::read(journal(dir.path())).unwrap(), now);
        assert_eq!(domains(&s.loaded), [("a.test", "1"), ("b.test", "2")]);
        assert!(s.clean);
    }

    #[test]
    fn compaction_replaces_a_link_planted_as_the_temporary_file_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("precious");
        fs::write(&target, "precious\n").unwrap();
        let now = base();
        let (store, _) = Store::open(dir.path(), now).unwrap();
        store.write_blocking(policy("a.test", "1", now)).unwrap();
        drop(store);
        // A torn tail, so that opening compacts through the temporary file.
        let mut f = OpenOptions::new()
            .append(true)
            .open(journal(dir.path()))
            .unwrap();
        f.write_all(b"0123abcd {\"v\"").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(JOURNAL_TMP)).unwrap();

        let (store, loaded) = Store::open(dir.path(), now).unwrap();
        assert_eq!(domains(&loaded), [("a.test", "1")]);
        assert!(store.stats().read_only.is_none(), "{:?}", store.stats());
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
        let meta = fs::symlink_metadata(journal(dir.path())).unwrap();
        assert!(
            meta.file_type().is_file(),
            "the journal is a file of its own"
        );
        let s = scan_bytes(&fs::read(journal(dir.path())).unwrap(), now);
        assert!(s.clean);
    }
}
