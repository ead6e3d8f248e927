//! The durable policy cache on disk: `<state dir>/policies.journal`, which remembers every policy
//! the daemon answered across restarts, crashes and SIGKILL (RFC 8461 §10.2 trust on first use).
//!
//! Why an append-only journal with compaction: it is one file in our own line format (a header
//! with a format version, then one record per line, each with its own CRC-32 and record version),
//! so it needs no database and no extra dependency; writers are group-committed, so the fsync is
//! paid once per batch rather than once per policy; and loading is tolerant: a torn tail or a
//! damaged record costs that record only, never the rest of the file.
//!
//! This module owns the file format, loading, and the writer thread ("store-writer") that holds
//! the open file and a copy of the live line per domain, so that compaction needs nothing from
//! the in-memory cache and never runs on the lookup path.
//!
//! Format, one record per line after the header line `mta-sts-policyd journal 1`:
//! `<CRC-32 (IEEE) of the JSON as 8 lowercase hex digits> <JSON>`, the JSON being one of
//! `{"v":1,"t":"policy","d":…,"id":…,"fetched":<unix seconds>,"policy":<Policy::to_text()>}`,
//! `{"v":1,"t":"negative","d":…,"reason":…,"until":<unix seconds>}` or
//! `{"v":1,"t":"remove","d":…}`. The latest valid record per domain wins. A record counts only
//! with its final newline: an unterminated last line is a write that never completed. Times are
//! whole seconds, so a reloaded policy may expire up to a second earlier than in memory.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::cache::PolicyEntry;
use crate::policy::parse_policy;

const JOURNAL: &str = "policies.journal";
const JOURNAL_TMP: &str = "policies.journal.tmp";
const HEADER_PREFIX: &str = "mta-sts-policyd journal ";
const HEADER: &str = "mta-sts-policyd journal 1";
const RECORD_VERSION: u64 = 1;
/// Skipped records get a warning each up to this many, then one summary line: a garbage file
/// must not flood the log.
const MAX_WARNINGS: usize = 20;
/// Compaction runs when the journal holds more than `2 × live + COMPACT_SLACK` records: the file
/// stays within a small multiple of the live set, and a small cache is not rewritten constantly.
const COMPACT_SLACK: usize = 1024;
/// Most requests committed by one fsync; bounds how long the first waiter of a batch waits.
const MAX_BATCH: usize = 4096;

/// One change to the persisted state of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A fetched policy; `entry.expires()` is recomputed from `fetched` and max_age at load.
    Policy {
        domain: Arc<str>,
        entry: Arc<PolicyEntry>,
    },
    /// A remembered "no policy" (or fetch back-off) that holds until `until`.
    Negative {
        domain: Arc<str>,
        reason: String,
        until: SystemTime,
    },
    /// Forget the domain.
    Remove { domain: Arc<str> },
}

/// What [`Store::open`] found in the journal.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Policies unexpired at `now`, the latest record per domain, in the order they were last
    /// written (so that inserting them in order leaves the most recent at the top of an LRU).
    /// The domain is the same `Arc` as the store's own index, so handing it on to the cache
    /// costs no further copy.
    pub policies: Vec<(Arc<str>, Arc<PolicyEntry>)>,
    /// `(domain, reason, until)` with `until > now`, in the same order.
    pub negatives: Vec<(Arc<str>, String, SystemTime)>,
    /// Valid records read, superseded ones included.
    pub records: usize,
    /// Records skipped as truncated, corrupt, unparsable or of an unknown version.
    pub skipped: usize,
    /// Latest records per domain dropped because they had expired at `now`.
    pub expired: usize,
    /// Size of the journal as found, in bytes.
    pub bytes: u64,
}

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

/// A failure of the state directory or the journal in it, naming the directory.
#[derive(Debug, Clone)]
pub struct StoreError {
    dir: PathBuf,
    what: String,
    cause: Option<String>,
    kind: Option<io::ErrorKind>,
}

impl StoreError {
    fn io(dir: &Path, what: impl Into<String>, e: &io::Error) -> StoreError {
        StoreError {
            dir: dir.to_owned(),
            what: what.into(),
            cause: Some(io_message(e)),
            kind: Some(e.kind()),
        }
    }

    fn other(dir: &Path, what: impl Into<String>) -> StoreError {
        StoreError {
            dir: dir.to_owned(),
            what: what.into(),
            cause: None,
            kind: None,
        }
    }

    /// The state directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The kind of the underlying I/O error, if there was one.
    pub fn kind(&self) -> Option<io::ErrorKind> {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state directory {}: {}", self.dir.display(), self.what)?;
        match &self.cause {
            Some(cause) => write!(f, ": {cause}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for StoreError {}

/// strerror text without std's " (os error N)" suffix: operators read these lines.
fn io_message(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

// ---- CRC-32 ---------------------------------------------------------------------------------

/// CRC-32/IEEE (reflected polynomial 0xEDB88320), the zlib/PNG checksum.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8);
    }
    !c
}

/// Exactly eight lowercase hex digits, as written: any other spelling is damage.
fn parse_crc(field: &[u8]) -> Option<u32> {
    if field.len() != 8 {
        return None;
    }
    field.iter().try_fold(0u32, |acc, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u32::from(digit))
    })
}

// ---- records as lines -----------------------------------------------------------------------

#[derive(Serialize)]
struct RecordOut<'a> {
    v: u64,
    t: &'static str,
    d: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fetched: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<u64>,
}

/// Every field optional, so that the version is checked before anything else and unknown
/// fields of later v1 writers are ignored.
#[derive(Deserialize)]
struct RecordIn {
    v: Option<u64>,
    t: Option<Kind>,
    d: Option<String>,
    id: Option<String>,
    fetched: Option<u64>,
    policy: Option<String>,
    reason: Option<String>,
    until: Option<u64>,
}

/// The record type, `"t"`: an enum so that reading it allocates nothing.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Policy,
    Negative,
    Remove,
    #[serde(other)]
    Unknown,
}

fn unix_seconds(t: SystemTime) -> u64 {
    // A time before 1970 cannot come from a fetch; 0 is expired, the safe reading.
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Record {
    fn domain(&self) -> &str {
        self.domain_arc()
    }

    fn domain_arc(&self) -> &Arc<str> {
        match self {
            Record::Policy { domain, .. }
            | Record::Negative { domain, .. }
            | Record::Remove { domain } => domain,
        }
    }

    /// The journal line, without its newline.
    fn encode(&self) -> Result<String, serde_json::Error> {
        let text;
        let out = match self {
            Record::Policy { domain, entry } => {
                text = entry.policy.to_text();
                RecordOut {
                    v: RECORD_VERSION,
                    t: "policy",
                    d: domain,
                    id: Some(&entry.id),
                    fetched: Some(unix_seconds(entry.fetched)),
                    policy: Some(&text),
                    reason: None,
                    until: None,
                }
            }
            Record::Negative {
                domain,
                reason,
                until,
            } => RecordOut {
                v: RECORD_VERSION,
                t: "negative",
                d: domain,
                id: None,
                fetched: None,
                policy: None,
                reason: Some(reason),
                until: Some(unix_seconds(*until)),
            },
            Record::Remove { domain } => RecordOut {
                v: RECORD_VERSION,
                t: "remove",
                d: domain,
                id: None,
                fetched: None,
                policy: None,
                reason: None,
                until: None,
            },
        };
        let json = serde_json::to_string(&out)?;
        Ok(format!("{:08x} {json}", crc32(json.as_bytes())))
    }

    /// Parses one journal line (without its newline). The error says why it is unusable.
    fn decode(line: &[u8]) -> Result<Record, String> {
        let (Some(crc_field), Some(b' ')) = (line.get(..8), line.get(8)) else {
            return Err("not a \"<crc32> <json>\" line".to_owned());
        };
        let Some(stored) = parse_crc(crc_field) else {
            return Err("checksum field is not 8 lowercase hex digits".to_owned());
        };
        let json = &line[9..];
        let computed = crc32(json);
        if computed != stored {
            return Err(format!(
                "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ));
        }
        let raw: RecordIn = serde_json::from_slice(json).map_err(|e| format!("bad JSON: {e}"))?;
        match raw.v {
            Some(RECORD_VERSION) => {}
            Some(v) => return Err(format!("unknown record version {v}")),
            None => return Err("no record version \"v\"".to_owned()),
        }
        let domain: Arc<str> = raw.d.ok_or("no domain \"d\"")?.into();
        match raw.t {
            Some(Kind::Policy) => {
                let (Some(id), Some(fetched), Some(text)) = (raw.id, raw.fetched, raw.policy)
                else {
                    return Err("policy record without \"id\", \"fetched\" or \"policy\"".into());
                };
                let policy = parse_policy(text.as_bytes())
                    .map_err(|e| format!("stored policy no longer parses: {e}"))?;
                // PolicyEntry::new adds max_age to `fetched`: both must stay representable.
                let max_age = Duration::from_secs(u64::from(policy.max_age));
                let fetched = UNIX_EPOCH
                    .checked_add(Duration::from_secs(fetched))
                    .filter(|t| t.checked_add(max_age).is_some())
                    .ok_or("\"fetched\" is out of range")?;
                Ok(Record::Policy {
                    domain,
                    entry: Arc::new(PolicyEntry::new(id, policy, fetched)),
                })
            }
            Some(Kind::Negative) => {
                let (Some(reason), Some(until)) = (raw.reason, raw.until) else {
                    return Err("negative record without \"reason\" or \"until\"".into());
                };
                let until = UNIX_EPOCH
                    .checked_add(Duration::from_secs(until))
                    .ok_or("\"until\" is out of range")?;
                Ok(Record::Negative {
                    domain,
                    reason,
                    until,
                })
            }
            Some(Kind::Remove) => Ok(Record::Remove { domain }),
            Some(Kind::Unknown) => Err("unknown record type \"t\"".to_owned()),
            None => Err("no record type \"t\"".to_owned()),
        }
    }
}

// ---- loading --------------------------------------------------------------------------------

/// The live record of a domain, as the writer thread keeps it. A policy is the same
/// `Arc<PolicyEntry>` the cache holds, so the writer's copy costs a pointer, not a second copy of
/// the journal line; lines are encoded again only when the journal is rewritten.
///
/// 24 bytes: one is kept per cached domain, so the expiry is derived rather than stored and the
/// rare negative record is boxed.
struct Live {
    /// Write order: compaction keeps it, so reloads see domains in the order they were written.
    seq: u64,
    /// None only while [`scan`] has not yet decided about the domain.
    kept: Option<Kept>,
}

impl Live {
    /// When the record stops mattering: compaction drops it from then on.
    fn expires(&self) -> SystemTime {
        match &self.kept {
            Some(Kept::Policy(entry)) => entry.expires(),
            Some(Kept::Negative(n)) => n.1,
            None => UNIX_EPOCH,
        }
    }
}

enum Kept {
    Policy(Arc<PolicyEntry>),
    /// (reason, until).
    Negative(Box<(Box<str>, SystemTime)>),
}

impl Kept {
    fn from_record(record: &Record) -> Option<Kept> {
        match record {
            Record::Policy { entry, .. } => Some(Kept::Policy(entry.clone())),
            Record::Negative { reason, until, .. } => {
                Some(Kept::Negative(Box::new((reason.as_str().into(), *until))))
            }
            Record::Remove { .. } => None,
        }
    }

    /// The journal line of this record for `domain`, without its newline.
    fn line(&self, domain: &Arc<str>) -> Result<String, serde_json::Error> {
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
        };
        record.encode()
    }
}

/// The result of reading a journal: what to hand out, and what the writer starts from.
struct Scan {
    loaded: Loaded,
    live: HashMap<Arc<str>, Live>,
    /// Larger than every `seq` in `live`.
    next_seq: u64,
    /// The file is already exactly what a compaction would write.
    clean: bool,
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

/// Reads a whole journal. Never fails: whatever cannot be used is skipped with a warning.
fn scan(bytes: &[u8], now: SystemTime, path: &Path) -> Scan {
    let mut skips = Skips { path, count: 0 };
    let mut header_ok = false;
    let mut records = 0;
    // The latest record per domain: `live[domain].seq` indexes `slots`, superseded slots become
    // None. The map becomes the writer's live map, filled in at the end, so it is built once.
    //
    // Everything is sized from the line count up front. Growing these by doubling would free
    // multi-megabyte blocks midway, which makes glibc raise its mmap threshold; the long-lived
    // cache allocated next would then sit above freed holes the kernel never gets back (measured:
    // 9 MiB more RSS with 100,000 policies).
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    let mut live: HashMap<Arc<str>, Live> = HashMap::with_capacity(lines);
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
            _ => {
                loaded.expired += 1;
                kept.push(None);
                continue;
            }
        }
        kept.push(keep);
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
        clean,
    }
}

// ---- the writer thread ----------------------------------------------------------------------

enum Ack {
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

enum Msg {
    Write(Record, Ack),
    Flush(Ack),
}

#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    records: usize,
    acks: Vec<Ack>,
}

struct Writer {
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
    /// Everything [`Store::open`] does except starting the thread: the directory, reading the
    /// journal, and compacting it unless it is already clean.
    fn load(
        dir: &Path,
        now: SystemTime,
        stats: Arc<Mutex<StoreStats>>,
    ) -> Result<(Writer, Loaded), StoreError> {
        ensure_dir(dir)?;
        let path = dir.join(JOURNAL);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::io(dir, format!("cannot read {JOURNAL}"), &e)),
        };
        let Scan {
            loaded,
            live,
            next_seq,
            clean,
        } = scan(&bytes, now, &path);
        drop(bytes);

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

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
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

// ---- the handle -----------------------------------------------------------------------------

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
    /// only. Only an unusable directory or file (permissions, not a directory, no space for the
    /// compacted file) is an error. Unless the file already holds exactly the live records, it is
    /// compacted before this returns, so a torn tail never stays and appends start on a clean
    /// line boundary.
    pub fn open(dir: &Path, now: SystemTime) -> Result<(Store, Loaded), StoreError> {
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
        *self.inner.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Now, in whole seconds: the journal stores seconds, and the writer's compaction uses the
    /// real clock, so test times stay near it.
    fn base() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix_seconds(SystemTime::now()))
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn entry(domain: &str, id: &str, max_age: u32, fetched: SystemTime) -> Arc<PolicyEntry> {
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

    fn policy(domain: &str, id: &str, fetched: SystemTime) -> Record {
        Record::Policy {
            domain: domain.into(),
            entry: entry(domain, id, 86_400, fetched),
        }
    }

    fn negative(domain: &str, reason: &str, until: SystemTime) -> Record {
        Record::Negative {
            domain: domain.into(),
            reason: reason.to_owned(),
            until,
        }
    }

    fn remove(domain: &str) -> Record {
        Record::Remove {
            domain: domain.into(),
        }
    }

    /// A journal line with a correct checksum around arbitrary JSON.
    fn line(json: &str) -> String {
        format!("{:08x} {json}\n", crc32(json.as_bytes()))
    }

    fn journal(dir: &Path) -> PathBuf {
        dir.join(JOURNAL)
    }

    fn domains(loaded: &Loaded) -> Vec<(&str, &str)> {
        loaded
            .policies
            .iter()
            .map(|(d, e)| (&**d, &*e.id))
            .collect()
    }

    fn scan_bytes(bytes: &[u8], now: SystemTime) -> Scan {
        scan(bytes, now, Path::new("test.journal"))
    }

    /// Captures what `tracing` logs on this thread while `f` runs.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
        (out, text)
    }

    #[test]
    fn crc32_known_answer() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(parse_crc(b"cbf43926"), Some(0xCBF4_3926));
        assert_eq!(parse_crc(b"CBF43926"), None);
        assert_eq!(parse_crc(b"cbf4392"), None);
    }

    #[test]
    fn record_lines_have_the_documented_shape() {
        let t = UNIX_EPOCH + secs(1_700_000_000);
        let l = policy("example.com", "abc", t).encode().unwrap();
        let (crc, json) = l.split_once(' ').unwrap();
        assert_eq!(crc, format!("{:08x}", crc32(json.as_bytes())));
        assert_eq!(
            json,
            r#"{"v":1,"t":"policy","d":"example.com","id":"abc","fetched":1700000000,"policy":"version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.example.net\nmax_age: 86400\n"}"#
        );
        let n = negative("x.test", "no TXT", t + secs(3600))
            .encode()
            .unwrap();
        assert!(n.ends_with(
            r#" {"v":1,"t":"negative","d":"x.test","reason":"no TXT","until":1700003600}"#
        ));
        let r = remove("x.test").encode().unwrap();
        assert!(r.ends_with(r#" {"v":1,"t":"remove","d":"x.test"}"#));
        for rec in [policy("example.com", "abc", t), remove("x.test")] {
            assert_eq!(Record::decode(rec.encode().unwrap().as_bytes()), Ok(rec));
        }
    }

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

    fn policy_json(domain: &str, id: &str, fetched: SystemTime) -> String {
        let l = policy(domain, id, fetched).encode().unwrap();
        l.split_once(' ').unwrap().1.to_owned()
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

    // ---- property tests ----

    fn config() -> ProptestConfig {
        // Few cases: each one opens a store twice (with fsyncs). No regression files in src/.
        ProptestConfig {
            cases: 48,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

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

    const DOMAINS: [&str; 6] = [
        "a.test",
        "b.example",
        "xn--bcher-kva.example",
        "c.test",
        "quote\"back\\slash.test",
        "ünïcode.test",
    ];

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
            for (at, x) in flips {
                let i = at.index(file.len());
                file[i] ^= x;
            }
            file.truncate(cut.index(file.len() + 1));
            let s = scan_bytes(&file, now);
            prop_assert!(s.loaded.records + s.loaded.skipped <= DOMAINS.len() + 1);
        }
    }
}
