//! A restart loses no lookup when the listening socket outlives the daemon, as with the packaged
//! mta-sts-policyd-socketmap.socket: the test holds the socket (systemd's part), passes it as
//! fd 3 (`sd_listen_fds(3)`: `LISTEN_PID`, `LISTEN_FDS=1`, `LISTEN_FDNAMES=socketmap`) to each
//! daemon it starts, and SIGKILLs the daemon at random moments while 16 clients look up as
//! Postfix's socketmap client does (socketmap_table(5): one connection per client, reused; on a
//! connection-level error it reconnects and retries the lookup once). Connections that arrive
//! while no daemon runs wait in the kernel's accept queue; only connections the killed daemon
//! had accepted are lost, and those are the ones the client's single retry covers.

mod common;

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::harness::{ConfigText, good_world, netstring};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_mta-sts-policyd");
const SECURE: &str = "OK secure match=mx.good.test servername=hostname";
const CLIENTS: usize = 16;
const KILLS: usize = 5;
/// Postfix waits up to socketmap's timeout (100 s) for a reply; far less is a failure here.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A small deterministic generator, seeded from the clock (the seed is printed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Starts the daemon on the inherited listener `fd` (made inheritable by the caller) and waits
/// for its `ready` log line. A shell puts the socket at fd 3 and sets `LISTEN_PID` to its own
/// pid, which `exec` hands on to the daemon.
fn start(cfg: &std::path::Path, fd: i32) -> (Child, Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let redirect = if fd == 3 {
        String::new()
    } else {
        format!("3<&{fd} {fd}<&-")
    };
    // bash, not sh: dash takes single-digit descriptors only.
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" --config \"$1\" serve {redirect}"
        ))
        .arg(BIN)
        .arg(cfg)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "socketmap")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the daemon");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("{e}: no ready line; log: {log:#?}"));
        log.push(line.clone());
        if line.contains("listening") && line.contains("socketmap") {
            assert!(line.contains("inherited=true"), "{line}");
        }
        if line.contains("ready") {
            break;
        }
    }
    (child, rx)
}

/// One socketmap lookup on `conn`: the reply payload, or an error at connection level.
async fn lookup(conn: &mut TcpStream, request: &[u8]) -> std::io::Result<String> {
    conn.write_all(request).await?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        conn.read_exact(&mut byte).await?;
        if byte[0] == b':' {
            break;
        }
        reply.push(byte[0]);
    }
    let len: usize = String::from_utf8_lossy(&reply)
        .parse()
        .map_err(|_| std::io::Error::other("bad netstring length"))?;
    let mut payload = vec![0u8; len + 1];
    conn.read_exact(&mut payload).await?;
    payload.pop();
    Ok(String::from_utf8_lossy(&payload).into_owned())
}

#[derive(Default)]
struct Tally {
    lookups: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    slowest_us: AtomicU64,
}

/// Postfix's client: one connection, reused; a connection-level error closes it, reconnects and
/// retries the lookup once. A refused connect, a second error or a wrong answer is a failure.
async fn client(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let request = netstring(b"postfix good.test");
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let mut answer = None;
        for attempt in 0..2 {
            if conn.is_none() {
                match TcpStream::connect(addr).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        eprintln!("connect: {e}");
                        break;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { break };
            match tokio::time::timeout(LOOKUP_TIMEOUT, lookup(c, &request)).await {
                Ok(Ok(reply)) => {
                    answer = Some(reply);
                    break;
                }
                Ok(Err(_)) | Err(_) => {
                    conn = None;
                    if attempt == 0 {
                        tally.retries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        tally.slowest_us.fetch_max(us, Ordering::Relaxed);
        tally.lookups.fetch_add(1, Ordering::Relaxed);
        if answer.as_deref() != Some(SECURE) {
            eprintln!("failed lookup: {answer:?}");
            tally.failures.fetch_add(1, Ordering::Relaxed);
            conn = None;
        }
        // Postfix's smtp(8) processes look up now and then, not in a tight loop.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_on_a_held_socket_fails_no_lookup() {
    let w = good_world().await;
    let cfg = w.dir().join("restart.toml");
    std::fs::write(&cfg, ConfigText::of(&w).as_str()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Inheritable, as systemd passes it. Only this test runs in this binary, so no other child
    // picks it up by accident.
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let fd = listener.as_raw_fd();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);

    let (mut daemon, mut _logs) = start(&cfg, fd);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(addr, stop.clone(), tally.clone())))
        .collect();

    let mut gaps = Vec::new();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
        daemon.kill().unwrap(); // SIGKILL
        let killed = Instant::now();
        let mut killed_child = daemon;
        tokio::task::spawn_blocking(move || killed_child.wait().unwrap())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
        (daemon, _logs) = start(&cfg, fd);
        gaps.push(killed.elapsed());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    let lookups = tally.lookups.load(Ordering::Relaxed);
    let failures = tally.failures.load(Ordering::Relaxed);
    let retries = tally.retries.load(Ordering::Relaxed);
    let slowest = Duration::from_micros(tally.slowest_us.load(Ordering::Relaxed));
    let longest_gap = gaps.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{KILLS} SIGKILLs, {CLIENTS} clients: {lookups} lookups, {failures} failed, {retries} \
         retried after a lost connection, slowest {slowest:?}; kill to ready at most \
         {longest_gap:?}"
    );
    assert_eq!(failures, 0, "failed lookups out of {lookups}");
    assert!(lookups > 100, "the clients kept looking up: {lookups}");
    assert!(retries > 0, "some connections were lost to a kill");
}
