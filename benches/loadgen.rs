//! `loadgen`: the load tool for mta-sts-policyd (a `harness = false` bench that is really a CLI).
//!
//! It speaks both Postfix lookup protocols (socketmap, tcp_table) over TCP and unix sockets, with
//! N concurrent persistent connections that each send one request at a time like a Postfix
//! smtp(8) process (or K in flight with `--pipeline K`), and reports requests/s, latency
//! percentiles, the reply kinds and every error. Every reply frame is parsed and checked.
//!
//! ```text
//! cargo bench --bench loadgen -- null --listen 127.0.0.1:0 [--protocol socketmap|tcp_table]
//! cargo bench --bench loadgen -- seed --dir DIR --domains N
//! cargo bench --bench loadgen -- run --target inet:127.0.0.1:PORT --connections 64 \
//!     [--protocol socketmap|tcp_table] [--pipeline K] [--duration 10s | --requests M] \
//!     [--keys FILE | --domains N] [--warmup 2s] [--rate R] [--threads T] [--json] \
//!     [--expect found] [--server-pid PID]
//! cargo bench --bench loadgen -- compare --baseline inet:127.0.0.1:P1 --target inet:127.0.0.1:P2 \
//!     [--rounds 2] [--target-domains N] [--baseline-pid PID] [run options]
//! ```
//!
//! Without a subcommand (a plain `cargo bench`) it runs a few-second self-test against its own
//! null responder. Only loopback addresses are accepted. Every load loop is bounded in time (and
//! `--requests` in count).
//!
//! Pacing (`--rate R`): open loop on a fixed global schedule of R requests/s. Slot i is due at
//! `start + i/R` and belongs to connection `i mod N`, so each connection is paced at R/N with
//! staggered phases. A pacer thread (std sleep, waking every 100 µs at most, ~150 µs late at
//! worst; tokio's timer has 1 ms ticks, which would send in bursts) releases the slots; a
//! connection whose reply is still outstanding sends its due request as soon as the window has
//! room. Latency is reported from the actual send and, corrected for coordinated omission, from
//! the scheduled time (which includes the pacer's lateness).
//!
//! Latency is recorded in a log-linear histogram (64 sub-buckets per power of two: under 1.6 %
//! relative error; the max is exact), one per connection, merged at the end.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Decoder;

use mta_sts_policyd::cache::PolicyEntry;
use mta_sts_policyd::cache::journal::{Record, Store};
use mta_sts_policyd::policy::parse_policy;
use mta_sts_policyd::proto::{Reply, socketmap, tcp_table};

/// The null responder's answer (the shape of a real policy answer).
const NULL_ANSWER: &str = "secure match=mx.example servername=hostname";
/// A reply not complete within this is an error (the connection is then re-opened).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bounds of the knobs, so that no typo makes an unbounded loop.
const MAX_DURATION: Duration = Duration::from_secs(3600);
const MAX_REQUESTS: u64 = 1_000_000_000;
const MAX_CONNECTIONS: usize = 10_000;
const MAX_PIPELINE: usize = 1_000;
const MAX_SEED: u64 = 10_000_000;
/// The pacer's shortest sleep: slots due within it are released together.
const PACER_TICK: Duration = Duration::from_micros(100);

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load tool for mta-sts-policyd (socketmap / tcp_table), loopback only"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Null responder: same framing, a fixed answer, no cache (the loopback ceiling).
    Null(NullArgs),
    /// Write a policy journal with N cached enforce policies d{i}.example.
    Seed(SeedArgs),
    /// Drive load against one target and report throughput, latency, replies and errors.
    Run(RunArgs),
    /// Run the same load against a baseline and a target, alternating rounds; report the ratio.
    Compare(CompareArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Proto {
    #[value(name = "socketmap")]
    Socketmap,
    #[value(name = "tcp_table", alias = "tcp-table")]
    TcpTable,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Socketmap => "socketmap",
            Proto::TcpTable => "tcp_table",
        }
    }
}

#[derive(Args)]
struct NullArgs {
    /// `127.0.0.1:PORT`, `inet:127.0.0.1:PORT` (port 0: any free port) or `unix:/path`.
    #[arg(long)]
    listen: String,
    #[arg(long, value_enum, default_value = "socketmap")]
    protocol: Proto,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    threads: Option<usize>,
    /// Exit after this long (the responder is never left running for ever).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    max_time: Duration,
}

#[derive(Args)]
struct SeedArgs {
    /// The state directory (`[cache] dir`); must not hold a journal yet.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    domains: u64,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// `inet:127.0.0.1:PORT` (or `127.0.0.1:PORT`) or `unix:/path`.
    #[arg(long)]
    target: String,
    #[arg(long, value_enum, default_value = "socketmap")]
    protocol: Proto,
    /// The socketmap map name sent with each key.
    #[arg(long, default_value = "postfix")]
    map: String,
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection (1: like Postfix).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Measured time (after the warm-up). Default 10s unless --requests is given.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Measured requests in total (after the warm-up).
    #[arg(long)]
    requests: Option<u64>,
    /// Keys, one a line, chosen uniformly at random per request.
    #[arg(long, conflicts_with = "domains")]
    keys: Option<PathBuf>,
    /// Keys d{i}.example, i uniformly random in 0..N per request (default 10).
    #[arg(long)]
    domains: Option<u64>,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Total requests/s, open loop (see the file's documentation); unpaced when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
    /// Exit 1 unless every measured reply is of this kind and there was no error.
    #[arg(long, value_enum)]
    expect: Option<Kind>,
    /// Report this server process's CPU use over the measured window (/proc/PID/stat).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Hard limit on one run (warm-up, measurement and draining), whatever else is asked.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    time_limit: Duration,
    /// Seed of the key choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct CompareArgs {
    /// The reference, usually the null responder.
    #[arg(long)]
    baseline: String,
    #[arg(long)]
    baseline_pid: Option<u32>,
    /// --domains for the target side only (e.g. a bigger cache); the baseline uses --domains.
    #[arg(long)]
    target_domains: Option<u64>,
    /// Baseline and target alternate this many times; each side's rounds are merged.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The options of `run`; --target and --server-pid name the side that is compared.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Kind {
    Found,
    Notfound,
    Temp,
    Perm,
    Other,
}

const KINDS: [Kind; 5] = [
    Kind::Found,
    Kind::Notfound,
    Kind::Temp,
    Kind::Perm,
    Kind::Other,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Found => "found",
            Kind::Notfound => "notfound",
            Kind::Temp => "temp",
            Kind::Perm => "perm",
            Kind::Other => "other",
        }
    }
}

fn main() {
    // `cargo bench` appends `--bench`; it means nothing here.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let cli = Cli::parse_from(args);
    let code = match cli.cmd {
        None => self_test(),
        Some(Cmd::Null(a)) => cmd_null(a),
        Some(Cmd::Seed(a)) => cmd_seed(a),
        Some(Cmd::Run(a)) => cmd_run(a),
        Some(Cmd::Compare(a)) => cmd_compare(a),
    };
    std::process::exit(code);
}

fn runtime(threads: Option<usize>) -> tokio::runtime::Runtime {
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("loadgen: {msg}");
    2
}

// ---------------------------------------------------------------------------------------------
// Addresses

#[derive(Clone, Debug)]
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "inet:{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Loopback TCP or a unix socket; any other address is refused.
fn parse_target(s: &str) -> Result<Target, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        let p = PathBuf::from(p);
        if !p.is_absolute() {
            return Err(format!("{s}: the unix socket path must be absolute"));
        }
        return Ok(Target::Unix(p));
    }
    let a = s.strip_prefix("inet:").unwrap_or(s);
    let addr: SocketAddr = a
        .parse()
        .map_err(|_| format!("{s}: expected inet:IP:PORT or unix:/path"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("{s}: loopback addresses only"));
    }
    Ok(Target::Tcp(addr))
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

async fn connect(t: &Target) -> std::io::Result<Conn> {
    let c = async {
        match t {
            Target::Tcp(a) => {
                let s = TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            }
            Target::Unix(p) => Ok(Conn::Unix(UnixStream::connect(p).await?)),
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, c).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Null responder

fn cmd_null(a: NullArgs) -> i32 {
    let target = match parse_target(&a.listen) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let rt = runtime(a.threads);
    rt.block_on(async move {
        let (listener, shown) = match bind(&target).await {
            Ok(l) => l,
            Err(e) => return fail(format!("cannot listen on {target}: {e}")),
        };
        println!(
            "loadgen null: listening on {shown} protocol={} answer={NULL_ANSWER:?} pid={}",
            a.protocol.name(),
            std::process::id()
        );
        let _ = std::io::stdout().flush();
        let _ = tokio::time::timeout(a.max_time, serve_null(listener, a.protocol)).await;
        if let Target::Unix(p) = &target {
            let _ = std::fs::remove_file(p);
        }
        0
    })
}

enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

async fn bind(t: &Target) -> std::io::Result<(Bound, String)> {
    match t {
        Target::Tcp(a) => {
            let l = TcpListener::bind(a).await?;
            let shown = format!("inet:{}", l.local_addr()?);
            Ok((Bound::Tcp(l), shown))
        }
        Target::Unix(p) => {
            use std::os::unix::fs::FileTypeExt;
            // A stale socket of an earlier run; never anything else.
            if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                std::fs::remove_file(p)?;
            }
            let l = UnixListener::bind(p)?;
            Ok((Bound::Unix(l), format!("unix:{}", p.display())))
        }
    }
}

fn null_reply(proto: Proto) -> Bytes {
    let mut b = BytesMut::new();
    let r = Reply::Found(NULL_ANSWER.into());
    match proto {
        Proto::Socketmap => socketmap::encode_reply(&r, &mut b),
        Proto::TcpTable => tcp_table::encode_reply(&r, &mut b),
    }
    b.freeze()
}

async fn serve_null(listener: Bound, proto: Proto) {
    let reply = null_reply(proto);
    loop {
        let conn = match &listener {
            Bound::Tcp(l) => l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Conn::Tcp(s)
            }),
            Bound::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
        };
        match conn {
            Ok(Conn::Tcp(s)) => {
                tokio::spawn(null_conn(s, proto, reply.clone()));
            }
            Ok(Conn::Unix(s)) => {
                tokio::spawn(null_conn(s, proto, reply.clone()));
            }
            Err(e) => {
                eprintln!("loadgen null: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Decodes with the daemon's own codecs and answers every request with the fixed reply: the same
/// read / decode-all / write-all loop as the daemon, without cache, timeouts or metrics.
async fn null_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, proto: Proto, reply: Bytes) {
    let mut sm = socketmap::SocketmapCodec::default();
    let mut tt = tcp_table::TcpTableCodec::default();
    let mut buf = BytesMut::with_capacity(512);
    let mut out = BytesMut::with_capacity(512);
    loop {
        let mut fatal = false;
        loop {
            // Some(true): a lookup; Some(false): a well-framed bad request.
            let got = match proto {
                Proto::Socketmap => match sm.decode(&mut buf) {
                    Ok(Some(socketmap::Request::Lookup { .. })) => Some(true),
                    Ok(Some(socketmap::Request::Invalid(_))) => Some(false),
                    Ok(None) => None,
                    Err(_) => {
                        fatal = true;
                        None
                    }
                },
                Proto::TcpTable => match tt.decode(&mut buf) {
                    Ok(Some(tcp_table::Request::Get(_))) => Some(true),
                    Ok(Some(tcp_table::Request::Invalid(_))) => Some(false),
                    Ok(None) => None,
                    Err(_) => {
                        fatal = true;
                        None
                    }
                },
            };
            match got {
                Some(true) => out.extend_from_slice(&reply),
                Some(false) => {
                    let r = Reply::Perm("bad request".into());
                    match proto {
                        Proto::Socketmap => socketmap::encode_reply(&r, &mut out),
                        Proto::TcpTable => tcp_table::encode_reply(&r, &mut out),
                    }
                }
                None => break,
            }
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if fatal {
            return;
        }
        buf.reserve(4096);
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeding a journal

fn seed_record(i: u64, now: SystemTime) -> Record {
    let domain = format!("d{i}.example");
    let body = format!(
        "version: STSv1\nmode: enforce\nmx: mx1.{domain}\nmx: mx2.{domain}\nmax_age: 604800\n"
    );
    let policy = parse_policy(body.as_bytes()).expect("seed policy parses");
    Record::Policy {
        domain: domain.into(),
        entry: Arc::new(PolicyEntry::new("seed1".into(), policy, now)),
    }
}

fn cmd_seed(a: SeedArgs) -> i32 {
    if a.domains == 0 || a.domains > MAX_SEED {
        return fail(format!("--domains must be within 1..={MAX_SEED}"));
    }
    let journal = a.dir.join("policies.journal");
    if journal.exists() {
        return fail(format!(
            "{} exists; seed an empty directory",
            journal.display()
        ));
    }
    // Whole seconds, like the daemon's records.
    let now = UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_secs(),
        );
    let t = Instant::now();
    let (store, loaded) = match Store::open(&a.dir, now) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    drop(loaded);
    for i in 0..a.domains - 1 {
        let r = seed_record(i, now);
        // Every 8192 records wait for durability, so that the writer's queue (and this
        // process's memory) stays small; the writer still commits up to 4096 at a time.
        if (i + 1) % 8192 == 0 {
            if let Err(e) = store.write_blocking(r) {
                return fail(e);
            }
        } else {
            store.write_nowait(r);
        }
    }
    // The writer is FIFO: once the last record is durable, so is every one before it.
    if let Err(e) = store.write_blocking(seed_record(a.domains - 1, now)) {
        return fail(e);
    }
    let stats = store.stats();
    drop(store);
    let elapsed = t.elapsed();
    println!(
        "seeded {} domains (d0.example..d{}.example, enforce, 2 mx, max_age 604800) in {:.0} ms: \
         journal {} records, {} bytes, {}",
        a.domains,
        a.domains - 1,
        elapsed.as_secs_f64() * 1e3,
        stats.journal_records,
        stats.journal_bytes,
        journal.display()
    );
    if stats.write_errors > 0 || stats.journal_records as u64 != a.domains {
        return fail(format!(
            "journal incomplete: {} records, {} write errors",
            stats.journal_records, stats.write_errors
        ));
    }
    0
}

// ---------------------------------------------------------------------------------------------
// Histogram

/// Log-linear histogram of nanoseconds: exact below 128 ns, then 64 buckets per power of two.
#[derive(Clone)]
struct Hist {
    counts: Vec<u64>,
    n: u64,
    max: u64,
    sum: u128,
}

const HIST_BUCKETS: usize = 58 * 64 + 64;

impl Hist {
    fn new() -> Hist {
        Hist {
            counts: vec![0; HIST_BUCKETS],
            n: 0,
            max: 0,
            sum: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < 128 {
            v as usize
        } else {
            let shift = 63 - v.leading_zeros() - 6;
            ((shift as usize) << 6) + (v >> shift) as usize
        }
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        if i < 128 {
            i as u64
        } else {
            let shift = (i / 64 - 1) as u32;
            let m = (i % 64 + 64) as u64;
            (m << shift) + ((1u64 << shift) - 1) / 2
        }
    }

    fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Hist::index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.max = self.max.max(o.max);
        self.sum += o.sum;
    }

    /// Nanoseconds at quantile `q` (0..=1).
    fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Hist::value(i).min(self.max);
            }
        }
        self.max
    }

    fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum as f64 / self.n as f64
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Load

#[derive(Clone, Copy, Default)]
struct Errors {
    connect: u64,
    short_read: u64,
    bad_frame: u64,
    io: u64,
    timeout: u64,
    /// Requests in flight on a connection that broke (never answered).
    lost: u64,
}

impl Errors {
    fn total(&self) -> u64 {
        self.connect + self.short_read + self.bad_frame + self.io + self.timeout
    }

    fn merge(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.short_read += o.short_read;
        self.bad_frame += o.bad_frame;
        self.io += o.io;
        self.timeout += o.timeout;
        self.lost += o.lost;
    }
}

enum Keys {
    /// d{i}.example, i in 0..n.
    Domains(u64),
    /// Pre-encoded requests.
    List(Vec<Vec<u8>>),
}

struct Plan {
    target: Target,
    proto: Proto,
    map: String,
    keys: Keys,
    connections: usize,
    pipeline: usize,
    warmup: Duration,
    duration: Option<Duration>,
    requests: Option<u64>,
    rate: Option<f64>,
    time_limit: Duration,
    seed: u64,
    server_pid: Option<u32>,
    threads: usize,
    keys_desc: String,
}

/// What all connections of one run share.
struct Shared {
    plan: Arc<Plan>,
    /// When the schedule (and the warm-up) starts.
    t0: Instant,
    measure_start: Instant,
    /// Duration mode: nothing is sent at or after this.
    measure_end: Option<Instant>,
    /// Everything stops here, drained or not.
    hard_end: Instant,
    /// --requests: measured requests still to send.
    budget: Option<AtomicU64>,
    /// --rate: one semaphore per connection, fed by the pacer thread.
    permits: Vec<Arc<Semaphore>>,
    /// Seconds between two slots of the global schedule (1 / rate).
    slot_period: f64,
    /// The pacer's last slot number + 1, valid once `pacer_done` is set.
    pacer_slots: AtomicU64,
    /// Set when the pacer has released its last slot; it then adds one extra permit to every
    /// semaphore (a wake-up that is not a slot), so nobody waits for ever.
    pacer_done: AtomicBool,
}

impl Shared {
    /// May a request with this (scheduled or actual) send time go out?
    fn may_send(&self, at: Instant) -> bool {
        if let Some(end) = self.measure_end
            && at >= end
        {
            return false;
        }
        if let Some(b) = &self.budget
            && at >= self.measure_start
        {
            return b
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                .is_ok();
        }
        true
    }

    /// Whether connection `c` has a slot number `k` in the pacer's final schedule (slot i of the
    /// global schedule belongs to connection i mod N).
    fn has_slot(&self, c: usize, k: u64) -> bool {
        let n = self.permits.len() as u64;
        let total = self.pacer_slots.load(Ordering::Acquire);
        c as u64 + k * n < total
    }

    fn sending_over(&self, now: Instant) -> bool {
        if self.measure_end.is_some_and(|e| now >= e) {
            return true;
        }
        self.budget
            .as_ref()
            .is_some_and(|b| b.load(Ordering::Relaxed) == 0)
    }
}

struct ConnState {
    index: usize,
    rng: u64,
    hist: Hist,
    /// Paced runs: from the scheduled send time (coordinated omission corrected).
    sched: Hist,
    kinds: [u64; 5],
    errors: Errors,
    last_done: Option<Instant>,
    /// Slots this connection was given (paced runs).
    slots_taken: u64,
    done_sending: bool,
    incomplete: bool,
    scratch: Vec<u8>,
}

impl ConnState {
    fn next_rand(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_rand()) * u128::from(n)) >> 64) as u64
    }
}

fn encode_request(proto: Proto, map: &str, key: &[u8], out: &mut Vec<u8>) {
    match proto {
        Proto::Socketmap => {
            let len = map.len() + 1 + key.len();
            let mut head = String::with_capacity(8);
            let _ = write!(head, "{len}:");
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(map.as_bytes());
            out.push(b' ');
            out.extend_from_slice(key);
            out.push(b',');
        }
        Proto::TcpTable => {
            out.extend_from_slice(b"get ");
            out.extend_from_slice(tcp_table::encode_key(key).as_bytes());
            out.push(b'\n');
        }
    }
}

fn push_one(sh: &Shared, st: &mut ConnState, out: &mut Vec<u8>) {
    let plan = &sh.plan;
    match &plan.keys {
        Keys::Domains(n) => {
            let i = st.below(*n);
            let mut key = std::mem::take(&mut st.scratch);
            key.clear();
            let _ = std::io::Write::write_fmt(&mut key, format_args!("d{i}.example"));
            encode_request(plan.proto, &plan.map, &key, out);
            st.scratch = key;
        }
        Keys::List(list) => {
            let i = st.below(list.len() as u64) as usize;
            out.extend_from_slice(&list[i]);
        }
    }
}

/// Parses one reply off the front of `buf`: `Ok(None)` while incomplete.
fn parse_reply(proto: Proto, buf: &mut BytesMut) -> Result<Option<Kind>, &'static str> {
    match proto {
        Proto::Socketmap => {
            let mut len = 0usize;
            let mut i = 0;
            loop {
                let Some(&b) = buf.get(i) else {
                    return Ok(None);
                };
                match b {
                    b'0'..=b'9' if i < 6 => {
                        len = len * 10 + usize::from(b - b'0');
                        i += 1;
                    }
                    b':' if i > 0 => break,
                    _ => return Err("bad netstring length"),
                }
            }
            if len > socketmap::MAX_REPLY {
                return Err("reply longer than socketmap's maximum");
            }
            let total = i + 1 + len + 1;
            if buf.len() < total {
                return Ok(None);
            }
            if buf[total - 1] != b',' {
                return Err("netstring without its comma");
            }
            let p = &buf[i + 1..i + 1 + len];
            let kind = if p.starts_with(b"OK ") && p.len() > 3 {
                Kind::Found
            } else if p == b"NOTFOUND " || p == b"NOTFOUND" {
                Kind::Notfound
            } else if p.starts_with(b"TEMP") {
                Kind::Temp
            } else if p.starts_with(b"PERM") {
                Kind::Perm
            } else {
                Kind::Other
            };
            buf.advance(total);
            Ok(Some(kind))
        }
        Proto::TcpTable => {
            let limit = buf.len().min(tcp_table::MAX_LINE);
            let Some(pos) = buf[..limit].iter().position(|&b| b == b'\n') else {
                if buf.len() >= tcp_table::MAX_LINE {
                    return Err("reply line longer than tcp_table's maximum");
                }
                return Ok(None);
            };
            let line = &buf[..pos];
            if line.len() < 4 || line[3] != b' ' || !line[..3].iter().all(u8::is_ascii_digit) {
                return Err("not a tcp_table status line");
            }
            let kind = match &line[..3] {
                b"200" if line.len() > 4 => Kind::Found,
                b"500" => Kind::Notfound,
                // tcp_table has no permanent error: PERM is sent as 400 too.
                b"400" => Kind::Temp,
                _ => Kind::Other,
            };
            buf.advance(pos + 1);
            Ok(Some(kind))
        }
    }
}

enum End {
    Done,
    Broken,
}

/// One connection's life: open (again after an error), drive requests until the plan is done.
async fn drive(sh: Arc<Shared>, mut st: ConnState, first: Option<Conn>) -> ConnState {
    // Everyone starts together, at t0 (the warm-up, if any, begins there).
    tokio::time::sleep_until(tokio::time::Instant::from_std(sh.t0)).await;
    let mut conn = first;
    loop {
        if Instant::now() >= sh.hard_end {
            st.incomplete = !st.done_sending;
            return st;
        }
        let c = match conn.take() {
            Some(c) => c,
            None => match connect(&sh.plan.target).await {
                Ok(c) => c,
                Err(_) => {
                    st.errors.connect += 1;
                    if st.done_sending || sh.sending_over(Instant::now()) {
                        return st;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let end = match c {
            Conn::Tcp(s) => session(s, &sh, &mut st).await,
            Conn::Unix(s) => session(s, &sh, &mut st).await,
        };
        match end {
            End::Done => return st,
            End::Broken => {
                if st.done_sending || sh.sending_over(Instant::now()) {
                    return st;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    sh: &Shared,
    st: &mut ConnState,
) -> End {
    let plan = &sh.plan;
    let paced = plan.rate.is_some();
    let permits = sh.permits.get(st.index).cloned();
    // (scheduled time, actual send time, measured?)
    let mut inflight: VecDeque<(Instant, Instant, bool)> = VecDeque::with_capacity(plan.pipeline);
    let mut rbuf = BytesMut::with_capacity(4096);
    let mut wbuf: Vec<u8> = Vec::with_capacity(256);
    loop {
        let now = Instant::now();
        if now >= sh.hard_end {
            st.errors.lost += inflight.len() as u64;
            st.incomplete = true;
            return End::Done;
        }
        // Fill the window.
        while !st.done_sending && inflight.len() < plan.pipeline {
            let sched = if let Some(p) = &permits {
                match p.try_acquire() {
                    Ok(permit) => permit.forget(),
                    Err(_) => break,
                }
                if sh.pacer_done.load(Ordering::Acquire) && !sh.has_slot(st.index, st.slots_taken) {
                    // The pacer's final wake-up, not a slot.
                    st.done_sending = true;
                    break;
                }
                let k = st.slots_taken;
                st.slots_taken += 1;
                let slot = (st.index as u64 + k * plan.connections as u64) as f64;
                sh.t0 + Duration::from_secs_f64(slot * sh.slot_period)
            } else {
                now
            };
            if !sh.may_send(sched) {
                st.done_sending = true;
                break;
            }
            push_one(sh, st, &mut wbuf);
            inflight.push_back((sched, now, sched >= sh.measure_start));
        }
        if !wbuf.is_empty() {
            match tokio::time::timeout(REPLY_TIMEOUT, s.write_all(&wbuf)).await {
                Ok(Ok(())) => wbuf.clear(),
                Ok(Err(_)) => {
                    st.errors.io += 1;
                    st.errors.lost += inflight.len() as u64;
                    return End::Broken;
                }
                Err(_) => {
                    st.errors.timeout += 1;
                    st.errors.lost += inflight.len() as u64;
                    return End::Broken;
                }
            }
        }
        if inflight.is_empty() {
            if st.done_sending || sh.sending_over(Instant::now()) {
                st.done_sending = true;
                let _ = s.shutdown().await;
                return End::Done;
            }
            match &permits {
                // Wait for the next slot (or the end of the run).
                // Wait for the next slot (or the pacer's final wake-up). The permit goes back:
                // the fill loop above takes it with its slot number.
                Some(p) => {
                    drop(p.acquire().await);
                    continue;
                }
                None => {
                    st.done_sending = true;
                    return End::Done;
                }
            }
        }
        // Wait for replies; in a paced run with room in the window, also for the next slot.
        let read = if let Some(p) = permits
            .as_ref()
            .filter(|_| paced && !st.done_sending && inflight.len() < plan.pipeline)
        {
            tokio::select! {
                r = tokio::time::timeout(REPLY_TIMEOUT, s.read_buf(&mut rbuf)) => Some(r),
                r = p.acquire() => {
                    drop(r);
                    None
                }
            }
        } else {
            Some(tokio::time::timeout(REPLY_TIMEOUT, s.read_buf(&mut rbuf)).await)
        };
        match read {
            None => continue,
            Some(Ok(Ok(0))) => {
                st.errors.short_read += 1;
                st.errors.lost += inflight.len() as u64;
                return End::Broken;
            }
            Some(Ok(Ok(_))) => {}
            Some(Ok(Err(_))) => {
                st.errors.io += 1;
                st.errors.lost += inflight.len() as u64;
                return End::Broken;
            }
            Some(Err(_)) => {
                st.errors.timeout += 1;
                st.errors.lost += inflight.len() as u64;
                return End::Broken;
            }
        }
        let done = Instant::now();
        loop {
            match parse_reply(plan.proto, &mut rbuf) {
                Ok(Some(kind)) => {
                    let Some((sched, sent, measured)) = inflight.pop_front() else {
                        // A reply nobody asked for.
                        st.errors.bad_frame += 1;
                        return End::Broken;
                    };
                    if measured {
                        st.hist.record(done - sent);
                        if paced {
                            st.sched.record(done.saturating_duration_since(sched));
                        }
                        st.kinds[kind as usize] += 1;
                        st.last_done = Some(done);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    st.errors.bad_frame += 1;
                    st.errors.lost += inflight.len() as u64;
                    return End::Broken;
                }
            }
        }
    }
}

/// Releases the slots of the global schedule to their connections, waking every 100 µs at most
/// (a thread wake-up per slot would cost the load tool more than the requests do); then marks
/// the end and wakes every connection once.
fn pacer(sh: Arc<Shared>, stop: Arc<AtomicBool>) {
    let slots = pace(&sh, &stop);
    sh.pacer_slots.store(slots, Ordering::Release);
    sh.pacer_done.store(true, Ordering::Release);
    for p in &sh.permits {
        p.add_permits(1);
    }
}

/// Returns the number of slots released.
fn pace(sh: &Shared, stop: &AtomicBool) -> u64 {
    let n = sh.permits.len() as u64;
    let period = sh.slot_period;
    let mut k: u64 = 0;
    loop {
        if stop.load(Ordering::Relaxed) {
            return k;
        }
        let now = Instant::now();
        if now >= sh.hard_end || sh.sending_over(now) {
            return k;
        }
        let elapsed = now.saturating_duration_since(sh.t0).as_secs_f64();
        let due = if now < sh.t0 {
            0
        } else {
            (elapsed / period).floor() as u64 + 1
        };
        while k < due {
            sh.permits[(k % n) as usize].add_permits(1);
            k += 1;
        }
        let next = sh.t0 + Duration::from_secs_f64(k as f64 * period);
        let wait = next
            .saturating_duration_since(Instant::now())
            .clamp(PACER_TICK, Duration::from_millis(5));
        std::thread::sleep(wait);
    }
}

/// utime + stime of a process in clock ticks (USER_HZ, 100 on Linux).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ", field 3 (state) is f[0]: utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The result of one or more runs against one target.
#[derive(Clone)]
struct Outcome {
    hist: Hist,
    sched: Hist,
    kinds: [u64; 5],
    errors: Errors,
    measured: Duration,
    client_ticks: u64,
    server_ticks: Option<u64>,
    wall: Duration,
    incomplete: bool,
    loadavg_start: String,
    loadavg_end: String,
}

impl Outcome {
    fn requests(&self) -> u64 {
        self.kinds.iter().sum()
    }

    fn rps(&self) -> f64 {
        let s = self.measured.as_secs_f64();
        if s > 0.0 {
            self.requests() as f64 / s
        } else {
            0.0
        }
    }

    fn merge(&mut self, o: &Outcome) {
        self.hist.merge(&o.hist);
        self.sched.merge(&o.sched);
        for (a, b) in self.kinds.iter_mut().zip(o.kinds) {
            *a += b;
        }
        self.errors.merge(&o.errors);
        self.measured += o.measured;
        self.client_ticks += o.client_ticks;
        self.server_ticks = match (self.server_ticks, o.server_ticks) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.wall += o.wall;
        self.incomplete |= o.incomplete;
        self.loadavg_end = o.loadavg_end.clone();
    }
}

fn load_keys(path: &Path, proto: Proto, map: &str) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let keys: Vec<Vec<u8>> = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .map(|k| {
            let mut v = Vec::with_capacity(k.len() + 16);
            encode_request(proto, map, k, &mut v);
            v
        })
        .collect();
    if keys.is_empty() {
        return Err(format!("{}: no keys", path.display()));
    }
    Ok(keys)
}

fn make_plan(a: &RunArgs, target: &str, domains: Option<u64>) -> Result<Plan, String> {
    let target = parse_target(target)?;
    if a.connections == 0 || a.connections > MAX_CONNECTIONS {
        return Err(format!(
            "--connections must be within 1..={MAX_CONNECTIONS}"
        ));
    }
    if a.pipeline == 0 || a.pipeline > MAX_PIPELINE {
        return Err(format!("--pipeline must be within 1..={MAX_PIPELINE}"));
    }
    let duration = match (a.duration, a.requests) {
        (Some(d), _) => Some(d),
        (None, None) => Some(Duration::from_secs(10)),
        (None, Some(_)) => None,
    };
    if duration.is_some_and(|d| d.is_zero() || d > MAX_DURATION) || a.warmup > MAX_DURATION {
        return Err(format!(
            "--duration must be within (0, {MAX_DURATION:?}], --warmup at most that"
        ));
    }
    if a.requests.is_some_and(|m| m == 0 || m > MAX_REQUESTS) {
        return Err(format!("--requests must be within 1..={MAX_REQUESTS}"));
    }
    if a.time_limit.is_zero() || a.time_limit > 2 * MAX_DURATION {
        return Err("--time-limit must be within (0, 2h]".into());
    }
    if let Some(r) = a.rate
        && (!r.is_finite() || r <= 0.0 || r > 10_000_000.0)
    {
        return Err("--rate must be within (0, 10000000] requests/s".into());
    }
    if a.map.is_empty() || a.map.contains(' ') {
        return Err("--map must be one word".into());
    }
    let (keys, keys_desc) = match (&a.keys, domains.or(a.domains)) {
        (Some(p), _) => {
            let k = load_keys(p, a.protocol, &a.map)?;
            let d = format!("file:{} ({} keys)", p.display(), k.len());
            (Keys::List(k), d)
        }
        (None, n) => {
            let n = n.unwrap_or(10);
            if n == 0 {
                return Err("--domains must be at least 1".into());
            }
            (Keys::Domains(n), format!("domains:{n} (d{{i}}.example)"))
        }
    };
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    Ok(Plan {
        target,
        proto: a.protocol,
        map: a.map.clone(),
        keys,
        connections: a.connections,
        pipeline: a.pipeline,
        warmup: a.warmup,
        duration,
        requests: a.requests,
        rate: a.rate,
        time_limit: a.time_limit,
        seed: a.seed,
        server_pid: a.server_pid,
        threads,
        keys_desc,
    })
}

async fn run_once(plan: Arc<Plan>) -> Result<Outcome, String> {
    // Open every connection first, so that connecting is not measured.
    let mut firsts = Vec::with_capacity(plan.connections);
    let mut connect_errors = 0u64;
    for chunk in (0..plan.connections).collect::<Vec<_>>().chunks(64) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let t = plan.target.clone();
            set.spawn(async move { (i, connect(&t).await) });
        }
        while let Some(r) = set.join_next().await {
            let (i, c) = r.map_err(|e| e.to_string())?;
            firsts.push((i, c));
        }
    }
    firsts.sort_by_key(|(i, _)| *i);
    let mut conns = Vec::with_capacity(plan.connections);
    let mut first_error = None;
    for (_, c) in firsts {
        match c {
            Ok(c) => conns.push(Some(c)),
            Err(e) => {
                connect_errors += 1;
                first_error.get_or_insert(e);
                conns.push(None);
            }
        }
    }
    if connect_errors as usize == plan.connections {
        return Err(format!(
            "cannot connect to {}: {}",
            plan.target,
            first_error.map(|e| e.to_string()).unwrap_or_default()
        ));
    }

    let t0 = Instant::now() + Duration::from_millis(20);
    let measure_start = t0 + plan.warmup;
    let measure_end = plan.duration.map(|d| measure_start + d);
    let hard_end = t0 + plan.time_limit;
    let permits = if plan.rate.is_some() {
        (0..plan.connections)
            .map(|_| Arc::new(Semaphore::new(0)))
            .collect()
    } else {
        Vec::new()
    };
    let sh = Arc::new(Shared {
        pacer_slots: AtomicU64::new(0),
        pacer_done: AtomicBool::new(false),
        t0,
        measure_start,
        measure_end,
        hard_end,
        budget: plan.requests.map(AtomicU64::new),
        permits,
        slot_period: plan.rate.map_or(0.0, |r| 1.0 / r),
        plan: plan.clone(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let pacer_thread = if plan.rate.is_some() {
        let (sh, stop) = (sh.clone(), stop.clone());
        Some(
            std::thread::Builder::new()
                .name("pacer".into())
                .spawn(move || pacer(sh, stop))
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };

    let loadavg_start = loadavg();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in conns.into_iter().enumerate() {
        let st = ConnState {
            index: i,
            rng: plan
                .seed
                .wrapping_mul(0x2545_F491_4F6C_DD1D)
                .wrapping_add(i as u64),
            hist: Hist::new(),
            sched: Hist::new(),
            kinds: [0; 5],
            errors: Errors::default(),
            last_done: None,
            slots_taken: 0,
            done_sending: false,
            incomplete: false,
            scratch: Vec::with_capacity(32),
        };
        tasks.spawn(drive(sh.clone(), st, c));
    }

    // CPU use over the measured window.
    tokio::time::sleep_until(tokio::time::Instant::from_std(measure_start)).await;
    let me = std::process::id().to_string();
    let server = plan.server_pid.map(|p| p.to_string());
    let c0 = cpu_ticks(&me).unwrap_or(0);
    let s0 = server.as_deref().and_then(cpu_ticks);
    let w0 = Instant::now();

    let mut hist = Hist::new();
    let mut sched = Hist::new();
    let mut kinds = [0u64; 5];
    let mut errors = Errors {
        connect: connect_errors,
        ..Errors::default()
    };
    let mut last_done = measure_start;
    let mut incomplete = false;
    while let Some(r) = tasks.join_next().await {
        let st = r.map_err(|e| e.to_string())?;
        hist.merge(&st.hist);
        sched.merge(&st.sched);
        for (a, b) in kinds.iter_mut().zip(st.kinds) {
            *a += b;
        }
        errors.merge(&st.errors);
        if let Some(d) = st.last_done {
            last_done = last_done.max(d);
        }
        incomplete |= st.incomplete;
    }
    let wall = w0.elapsed();
    let c1 = cpu_ticks(&me).unwrap_or(0);
    let s1 = server.as_deref().and_then(cpu_ticks);
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = pacer_thread {
        let _ = t.join();
    }
    if plan.requests.is_some()
        && sh
            .budget
            .as_ref()
            .is_some_and(|b| b.load(Ordering::Relaxed) > 0)
    {
        incomplete = true;
    }
    Ok(Outcome {
        hist,
        sched,
        kinds,
        errors,
        measured: last_done.saturating_duration_since(measure_start),
        client_ticks: c1.saturating_sub(c0),
        server_ticks: match (s0, s1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        wall,
        incomplete,
        loadavg_start,
        loadavg_end: loadavg(),
    })
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

fn cpu_pct(ticks: u64, wall: Duration) -> f64 {
    let w = wall.as_secs_f64();
    if w > 0.0 {
        ticks as f64 / 100.0 / w * 100.0
    } else {
        0.0
    }
}

/// CPU microseconds per measured request (ticks are 10 ms: meaningful over seconds only).
fn per_req(ticks: u64, o: &Outcome) -> f64 {
    let n = o.requests();
    if n == 0 {
        0.0
    } else {
        ticks as f64 * 1e4 / n as f64
    }
}

fn lat_line(h: &Hist) -> String {
    format!(
        "p50={:.1} p90={:.1} p99={:.1} p99.9={:.1} max={:.1} mean={:.1}",
        us(h.quantile(0.50)),
        us(h.quantile(0.90)),
        us(h.quantile(0.99)),
        us(h.quantile(0.999)),
        us(h.max),
        h.mean() / 1e3
    )
}

fn lat_json(h: &Hist) -> serde_json::Value {
    serde_json::json!({
        "p50": us(h.quantile(0.50)),
        "p90": us(h.quantile(0.90)),
        "p99": us(h.quantile(0.99)),
        "p99_9": us(h.quantile(0.999)),
        "max": us(h.max),
        "mean": h.mean() / 1e3,
    })
}

fn rate_desc(plan: &Plan) -> String {
    match plan.rate {
        Some(r) => format!("{r:.0}/s open-loop per-connection slots"),
        None => "unpaced (closed loop)".into(),
    }
}

fn text_report(label: &str, plan: &Plan, o: &Outcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== {label}: target={} protocol={} connections={} pipeline={} threads={} keys={} rate={}",
        plan.target,
        plan.proto.name(),
        plan.connections,
        plan.pipeline,
        plan.threads,
        plan.keys_desc,
        rate_desc(plan)
    );
    let _ = writeln!(
        s,
        "   measured: {:.3} s (after {:?} warm-up){}",
        o.measured.as_secs_f64(),
        plan.warmup,
        if o.incomplete {
            "  INCOMPLETE (time limit)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "   throughput: {:.1} req/s ({} requests)",
        o.rps(),
        o.requests()
    );
    let _ = writeln!(s, "   latency_us: {}", lat_line(&o.hist));
    if plan.rate.is_some() {
        let _ = writeln!(s, "   latency_from_schedule_us: {}", lat_line(&o.sched));
    }
    let _ = writeln!(
        s,
        "   replies: found={} notfound={} temp={} perm={} other={}",
        o.kinds[0], o.kinds[1], o.kinds[2], o.kinds[3], o.kinds[4]
    );
    let e = &o.errors;
    let _ = writeln!(
        s,
        "   errors: connect={} short_read={} bad_frame={} io={} timeout={} lost={}",
        e.connect, e.short_read, e.bad_frame, e.io, e.timeout, e.lost
    );
    let server = match o.server_ticks {
        Some(t) => format!("{:.0}% ({:.1} us/req)", cpu_pct(t, o.wall), per_req(t, o)),
        None => "n/a".into(),
    };
    let _ = writeln!(
        s,
        "   cpu: client={:.0}% ({:.1} us/req) server={} (100% = one core, over the measured window)  loadavg: {} -> {}",
        cpu_pct(o.client_ticks, o.wall),
        per_req(o.client_ticks, o),
        server,
        o.loadavg_start,
        o.loadavg_end
    );
    s
}

fn json_report(label: &str, plan: &Plan, o: &Outcome) -> serde_json::Value {
    let e = &o.errors;
    serde_json::json!({
        "label": label,
        "target": plan.target.to_string(),
        "protocol": plan.proto.name(),
        "connections": plan.connections,
        "pipeline": plan.pipeline,
        "threads": plan.threads,
        "keys": plan.keys_desc,
        "rate": plan.rate,
        "warmup_s": plan.warmup.as_secs_f64(),
        "measured_s": o.measured.as_secs_f64(),
        "incomplete": o.incomplete,
        "requests": o.requests(),
        "rps": o.rps(),
        "latency_us": lat_json(&o.hist),
        "latency_from_schedule_us": plan.rate.map(|_| lat_json(&o.sched)),
        "replies": {
            "found": o.kinds[0], "notfound": o.kinds[1], "temp": o.kinds[2],
            "perm": o.kinds[3], "other": o.kinds[4],
        },
        "errors": {
            "connect": e.connect, "short_read": e.short_read, "bad_frame": e.bad_frame,
            "io": e.io, "timeout": e.timeout, "lost": e.lost,
        },
        "cpu_client_pct": cpu_pct(o.client_ticks, o.wall),
        "cpu_server_pct": o.server_ticks.map(|t| cpu_pct(t, o.wall)),
        "cpu_client_us_per_req": per_req(o.client_ticks, o),
        "cpu_server_us_per_req": o.server_ticks.map(|t| per_req(t, o)),
        "loadavg_start": o.loadavg_start,
        "loadavg_end": o.loadavg_end,
    })
}

/// Whether the outcome meets `--expect`; prints why not.
fn check_expect(label: &str, expect: Option<Kind>, o: &Outcome) -> bool {
    let Some(k) = expect else {
        return true;
    };
    let wrong: u64 = KINDS
        .iter()
        .filter(|&&x| x != k)
        .map(|&x| o.kinds[x as usize])
        .sum();
    if wrong > 0 || o.errors.total() > 0 || o.requests() == 0 || o.incomplete {
        eprintln!(
            "loadgen: {label}: expected only {} replies: {wrong} others, {} errors, {} requests{}",
            k.name(),
            o.errors.total(),
            o.requests(),
            if o.incomplete { ", incomplete" } else { "" }
        );
        return false;
    }
    true
}

fn cmd_run(a: RunArgs) -> i32 {
    let plan = match make_plan(&a, &a.target, None) {
        Ok(p) => Arc::new(p),
        Err(e) => return fail(e),
    };
    let rt = runtime(Some(plan.threads));
    let o = match rt.block_on(run_once(plan.clone())) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    if a.json {
        println!("{}", json_report("run", &plan, &o));
    } else {
        print!("{}", text_report("run", &plan, &o));
    }
    if check_expect("run", a.expect, &o) {
        0
    } else {
        1
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

fn cmd_compare(a: CompareArgs) -> i32 {
    if a.rounds == 0 || a.rounds > 20 {
        return fail("--rounds must be within 1..=20");
    }
    let mut base_args = a.run.clone();
    base_args.server_pid = a.baseline_pid;
    let base = match make_plan(&base_args, &a.baseline, None) {
        Ok(p) => Arc::new(p),
        Err(e) => return fail(format!("baseline: {e}")),
    };
    let target = match make_plan(&a.run, &a.run.target, a.target_domains) {
        Ok(p) => Arc::new(p),
        Err(e) => return fail(format!("target: {e}")),
    };
    let rt = runtime(Some(target.threads));
    let mut bo: Option<Outcome> = None;
    let mut to: Option<Outcome> = None;
    for _ in 0..a.rounds {
        for (plan, acc) in [(&base, &mut bo), (&target, &mut to)] {
            match rt.block_on(run_once(plan.clone())) {
                Ok(o) => match acc {
                    Some(x) => x.merge(&o),
                    None => *acc = Some(o),
                },
                Err(e) => return fail(format!("{}: {e}", plan.target)),
            }
        }
    }
    let (Some(bo), Some(to)) = (bo, to) else {
        return fail("no rounds ran");
    };
    let q = |o: &Outcome, p: f64| o.hist.quantile(p) as f64;
    let r_rps = ratio(to.rps(), bo.rps());
    let r_p50 = ratio(q(&to, 0.5), q(&bo, 0.5));
    let r_p99 = ratio(q(&to, 0.99), q(&bo, 0.99));
    if a.run.json {
        println!(
            "{}",
            serde_json::json!({
                "rounds": a.rounds,
                "baseline": json_report("baseline", &base, &bo),
                "target": json_report("target", &target, &to),
                "ratio_target_over_baseline": {"rps": r_rps, "p50": r_p50, "p99": r_p99},
            })
        );
    } else {
        print!("{}", text_report("baseline", &base, &bo));
        print!("{}", text_report("target", &target, &to));
        println!(
            "== ratio target/baseline ({} alternating rounds): throughput={r_rps:.3} p50={r_p50:.2} p99={r_p99:.2}",
            a.rounds
        );
    }
    let ok_b = check_expect("baseline", a.run.expect, &bo);
    let ok_t = check_expect("target", a.run.expect, &to);
    if ok_b && ok_t { 0 } else { 1 }
}

// ---------------------------------------------------------------------------------------------
// `cargo bench` without arguments: a short self-test against the built-in null responder.

fn self_test() -> i32 {
    println!(
        "loadgen: no subcommand; self-test against the built-in null responder \
         (see `cargo bench --bench loadgen -- --help`)"
    );
    let rt = runtime(Some(2));
    let mut code = 0;
    for proto in [Proto::Socketmap, Proto::TcpTable] {
        let addr = rt.block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = l.local_addr().expect("addr");
            tokio::spawn(serve_null(Bound::Tcp(l), proto));
            addr
        });
        for (rate, pipeline) in [(None, 1), (None, 4), (Some(2000.0), 1)] {
            let plan = Arc::new(Plan {
                target: Target::Tcp(addr),
                proto,
                map: "postfix".into(),
                keys: Keys::Domains(10),
                connections: 4,
                pipeline,
                warmup: Duration::from_millis(100),
                duration: None,
                requests: Some(1000),
                rate,
                time_limit: Duration::from_secs(20),
                seed: 1,
                server_pid: None,
                threads: 2,
                keys_desc: "domains:10 (d{i}.example)".into(),
            });
            match rt.block_on(run_once(plan.clone())) {
                Ok(o) => {
                    print!("{}", text_report("self-test", &plan, &o));
                    if !check_expect("self-test", Some(Kind::Found), &o) || o.requests() != 1000 {
                        code = 1;
                    }
                }
                Err(e) => code = fail(e),
            }
        }
    }
    code
}
