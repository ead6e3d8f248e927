//! The writer thread ("store-writer"): it alone holds the open journal, appends records in group
//! commits (whatever queued up during one fdatasync goes out with the next), acknowledges the
//! waiters of each batch, and compacts the file.
//!
//! It keeps the live record per domain itself, so compaction needs nothing from the in-memory
//! cache and never runs on the lookup path. A failed write leaves the daemon serving from memory;
//! the next commit rewrites the file from the live map.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::SystemTime;

use tokio::sync::oneshot;
use tracing::{error, info};

use super::error::StoreError;
use super::format::{HEADER, JOURNAL, JOURNAL_TMP, Record};
use super::load::{self, Kept, Live, Loaded, Scan};

/// Compaction runs when the journal holds more than `2 × live + COMPACT_SLACK` records: the file
/// stays within a small multiple of the live set, and a small cache is not rewritten constantly.
pub(super) const COMPACT_SLACK: usize = 1024;
/// Most requests committed by one fsync; bounds how long the first waiter of a batch waits.
pub(super) const MAX_BATCH: usize = 4096;

/// Counters of the store, for status output and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    /// Domains with a live record in the journal.
    pub live: usize,
    /// Records in the journal file (the header not counted).
    pub journal_records: usize,
    pub journal_bytes: u64,
    pub compactions: u64,
    pub write_errors: u64,
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
    Flush(Ack),
}

#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    records: usize,
    acks: Vec<Ack>,
}

pub(super) struct Writer {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
    /// The journal, positioned at its end. None only before the first compaction at open.
    file: Option<File>,
    /// The live line per domain: exactly what a compaction writes.
    live: HashMap<Arc<str>, Live>,
    seq: u64,
    journal_records: usize,
    journal_bytes: u64,
    /// A write failed, so the file may end in a torn line and lack records the live map has:
    /// the next commit rewrites the file from the live map instead of appending.
    needs_rewrite: bool,
    compactions: u64,
    write_errors: u64,
    stats: Arc<Mutex<StoreStats>>,
}

impl Writer {
    /// Everything [`Store::open`](super::Store::open) does in an existing directory except
    /// starting the thread: reading the journal, and compacting it unless it is already clean.
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
            compactions: 0,
            write_errors: 0,
            stats,
            path,
        };
        if clean {
            let file = OpenOptions::new()
                .append(true)
                .open(&writer.path)
                .map_err(|e| StoreError::io(dir, format!("cannot open {JOURNAL}"), &e))?;
            writer.file = Some(file);
        } else {
            writer.compact(now)?;
        }
        writer.publish();
        info!(
            journal = %writer.path.display(),
            policies = loaded.policies.len(),
            negatives = loaded.negatives.len(),
            records = loaded.records,
            skipped = loaded.skipped,
            expired = loaded.expired,
            bytes = loaded.bytes,
            compacted = !clean,
            "policy journal loaded"
        );

        Ok((writer, loaded))
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut batch = Batch::default();
        // Group commit: whatever queued up during the previous fsync goes out with the next one.
        while let Ok(msg) = rx.recv() {
            self.take(msg, &mut batch);
            for _ in 1..MAX_BATCH {
                match rx.try_recv() {
                    Ok(msg) => self.take(msg, &mut batch),
                    Err(_) => break,
                }
            }
            let result = self.commit(&batch.buf, batch.records);
            self.publish();
            for ack in batch.acks.drain(..) {
                ack.send(result.clone());
            }
            batch.buf.clear();
            batch.records = 0;
        }
        // Every handle is gone and every batch was committed; a failed one gets a last try.
        if self.needs_rewrite {
            let _ = self.commit(&[], 0);
            self.publish();
        }
    }

    fn take(&mut self, msg: Msg, batch: &mut Batch) {
        let (record, ack) = match msg {
            Msg::Write(record, ack) => (record, ack),
            Msg::Flush(ack) => {
                batch.acks.push(ack);
                return;
            }
        };
        let line = match record.encode() {
            Ok(line) => line,
            Err(e) => {
                // Unreachable with strings and integers; answered rather than assumed.
                let e = StoreError::other(&self.dir, format!("cannot encode a record: {e}"));
                self.failed(&e);
                ack.send(Err(e));
                return;
            }
        };
        batch.buf.extend_from_slice(line.as_bytes());
        batch.buf.push(b'\n');
        batch.records += 1;
        batch.acks.push(ack);
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
    }

    /// Makes the batch (already applied to the live map) durable.
    fn commit(&mut self, buf: &[u8], records: usize) -> Result<(), StoreError> {
        if self.needs_rewrite || self.file.is_none() {
            // The live map already holds this batch and every record of failed batches.
            return self
                .compact(SystemTime::now())
                .inspect_err(|e| self.failed(e));
        }
        if records == 0 {
            return Ok(());
        }
        if self.journal_records + records > 2 * self.live.len() + COMPACT_SLACK {
            match self.compact(SystemTime::now()) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.failed(&e);
                    if self.needs_rewrite {
                        return Err(e);
                    }
                    // The old journal is untouched: appending still makes the batch durable.
                }
            }
        }
        self.append(buf, records).inspect_err(|e| self.failed(e))
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
    fn compact(&mut self, now: SystemTime) -> Result<(), StoreError> {
        self.live.retain(|_, l| l.expires() > now);
        let mut order: Vec<(&Arc<str>, &Live)> = self.live.iter().collect();
        order.sort_unstable_by_key(|(_, l)| l.seq);
        let mut lines = Vec::with_capacity(order.len());
        for (domain, l) in order {
            // Every entry left after the retain above has a record (expires() > now).
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
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
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

    fn failed(&mut self, e: &StoreError) {
        self.write_errors += 1;
        // The daemon keeps serving from memory; the next write retries.
        error!("{e}; policies are kept in memory and the next write retries");
    }

    fn publish(&self) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        *stats = StoreStats {
            live: self.live.len(),
            journal_records: self.journal_records,
            journal_bytes: self.journal_bytes,
            compactions: self.compactions,
            write_errors: self.write_errors,
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
        w.commit(&batch.buf, batch.records).unwrap();

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
        let err = w.commit(&batch.buf, batch.records).unwrap_err();
        assert!(err.to_string().contains(JOURNAL_TMP), "{err}");
        assert!(w.needs_rewrite);
        assert_eq!(w.write_errors, 1);

        // The next commit, even an empty one (a flush), retries and brings b.test along.
        unblock_compaction(dir.path());
        w.commit(&[], 0).unwrap();
        assert!(!w.needs_rewrite);
        let s = scan_bytes(&fs::read(journal(dir.path())).unwrap(), now);
        assert_eq!(domains(&s.loaded), [("a.test", "1"), ("b.test", "2")]);
        assert_eq!(s.loaded.skipped, 0);
        assert!(s.clean);

        // Appends continue in the rewritten file.
        let mut batch = Batch::default();
        w.take(Msg::Write(remove("a.test"), Ack::None), &mut batch);
        w.commit(&batch.buf, batch.records).unwrap();
        let s = scan_bytes(&fs::read(journal(dir.path())).unwrap(), now);
        assert_eq!(domains(&s.loaded), [("b.test", "2")]);
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
    fn open_fails_when_the_journal_cannot_be_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        block_compaction(dir.path());
        let err = Store::open(dir.path(), base()).unwrap_err();
        assert!(err.to_string().starts_with(&format!(
            "state directory {}: cannot write {JOURNAL_TMP}: ",
            dir.path().display()
        )));
    }
}
