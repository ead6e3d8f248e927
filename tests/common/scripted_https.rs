//! A scriptable HTTPS server for hostile-server tests: after the TLS handshake and the request
//! head, a per-host [`Script`] gets the raw TLS stream ([`Conn`]) and may stream endless bodies,
//! stall, flood headers, or reset the TCP connection mid-body. Unlike the [`World`](super::World)'s
//! server, nothing is buffered whole on the server side, so the test process's memory reflects
//! the daemon's buffering, not the server's.
//!
//! It has its own test CA (made in `certs`): point the daemon's `[https] ca_files` at [`HostileHttps::ca_file`]
//! and `[https] port` at [`HostileHttps::port`]. Every SNI name gets a leaf certificate signed
//! directly by that CA. Dropping the server stops every task it started.

use std::{
    collections::HashMap,
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rustls::ServerConfig;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
    time::Instant,
};
use tokio_rustls::{LazyConfigAcceptor, server::TlsStream};

use crate::common::certs::{self, Issuer, Validity};

pub type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the server does with one request for a host, once TLS is up and the request head read.
pub type Script = Arc<dyn Fn(Conn) -> BoxFut + Send + Sync>;

/// Wraps an async closure as a [`Script`].
pub fn script<F, Fut>(f: F) -> Script
where
    F: Fn(Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |c| Box::pin(f(c)) as BoxFut)
}

/// Per-host counters.
#[derive(Default)]
pub struct HostStats {
    /// Requests whose head was read.
    pub requests: AtomicUsize,
    /// Connections whose script is still running.
    pub open: AtomicUsize,
    /// Plaintext bytes the scripts handed to TLS (head and body).
    pub bytes_written: AtomicU64,
}

impl HostStats {
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::SeqCst)
    }
}

/// One accepted request: the server side of the TLS stream.
pub struct Conn {
    tls: TlsStream<TcpStream>,
    stats: Arc<HostStats>,
    /// When the request head had been read.
    pub started: Instant,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Conn {
    /// Writes and flushes `bytes`; false once the client is gone.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        let ok = self.tls.write_all(bytes).await.is_ok() && self.tls.flush().await.is_ok();
        if ok {
            self.stats
                .bytes_written
                .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        }
        ok
    }

    /// Sends `head`, then the pieces `body` yields, until it yields None or the client goes.
    /// Returns whether everything was sent.
    pub async fn stream(&mut self, head: &[u8], mut body: impl FnMut() -> Option<Vec<u8>>) -> bool {
        if !self.send(head).await {
            return false;
        }
        while let Some(piece) = body() {
            if !self.send(&piece).await {
                return false;
            }
        }
        true
    }

    /// Reads (and discards) until the client closes the connection or it fails.
    pub async fn wait_client_close(&mut self) {
        let mut buf = [0u8; 1024];
        while matches!(self.tls.read(&mut buf).await, Ok(n) if n > 0) {}
    }

    /// Sends TLS close_notify and closes the connection (a proper end of a close-delimited
    /// body).
    pub async fn finish(mut self) {
        let _ = self.tls.shutdown().await;
    }

    /// Closes TCP (FIN) without a TLS close_notify: a truncated stream.
    pub async fn close_without_notify(mut self) {
        let _ = self.tls.get_mut().0.shutdown().await;
    }

    /// SO_LINGER 0 and close: the client gets a TCP RST, no close_notify.
    pub fn reset(self) {
        self.tls
            .get_ref()
            .0
            .set_zero_linger()
            .expect("SO_LINGER 0 on the policy host socket");
        // Dropping closes the fd; with linger 0 the kernel sends RST and discards unsent data.
    }
}

/// The running server.
pub struct HostileHttps {
    addr: SocketAddr,
    ca_file: PathBuf,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

struct Shared {
    scripts: Mutex<HashMap<String, Script>>,
    stats: Mutex<HashMap<String, Arc<HostStats>>>,
    pki: Pki,
}

impl Drop for HostileHttps {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostileHttps {
    pub async fn start() -> HostileHttps {
        let dir = tempfile::Builder::new()
            .prefix("mta-sts-hostile-https-")
            .tempdir()
            .expect("HostileHttps: temporary directory");
        let pki = Pki::new();
        let ca_file = dir.path().join("hostile-root-ca.pem");
        std::fs::write(&ca_file, pki.root.pem()).expect("HostileHttps: write the CA file");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("HostileHttps: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("HostileHttps: local address");
        let shared = Arc::new(Shared {
            scripts: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
            pki,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        HostileHttps {
            addr,
            ca_file,
            shared,
            task,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// PEM of this server's root CA.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// What `host` (the SNI name, e.g. `mta-sts.example.test`) does with a request. Makes the
    /// host's certificate now, so that the test's timings do not include it.
    pub fn set(&self, host: &str, s: Script) {
        let host = host_key(host);
        self.shared.pki.server_config(&host);
        lock(&self.shared.scripts).insert(host, s);
    }

    /// Counters of `host`.
    pub fn stats(&self, host: &str) -> Arc<HostStats> {
        stats_for(&self.shared, &host_key(host))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn host_key(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn stats_for(shared: &Shared, host: &str) -> Arc<HostStats> {
    lock(&shared.stats)
        .entry(host.to_string())
        .or_default()
        .clone()
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((tcp, _)) => {
                conns.spawn(handle(tcp, shared.clone()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn handle(tcp: TcpStream, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let start = match LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await {
        Ok(s) => s,
        Err(_) => return,
    };
    let Some(host) = start.client_hello().server_name().map(host_key) else {
        return;
    };
    let config = shared.pki.server_config(&host);
    let Ok(mut tls) = start.into_stream(config).await else {
        return;
    };
    if !read_request_head(&mut tls).await {
        return;
    }
    let stats = stats_for(&shared, &host);
    stats.requests.fetch_add(1, Ordering::SeqCst);
    stats.open.fetch_add(1, Ordering::SeqCst);
    let conn = Conn {
        tls,
        stats,
        started: Instant::now(),
    };
    let s = lock(&shared.scripts).get(&host).cloned();
    match s {
        Some(s) => s(conn).await,
        None => {
            let mut conn = conn;
            conn.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            conn.finish().await;
        }
    }
}

/// Reads up to and including CRLFCRLF (at most 16 KiB).
async fn read_request_head(s: &mut TlsStream<TcpStream>) -> bool {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
        if buf.len() >= 16 * 1024 {
            return false;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

// ---------------------------------------------------------------------- PKI

/// Its own root CA, and a leaf signed directly by it for each SNI name (the server sends only the
/// leaf), made once per name.
struct Pki {
    root: Issuer,
    configs: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            root: certs::root_ca("mta-sts-policyd hostile servers", "Hostile Test Root CA"),
            configs: Mutex::new(HashMap::new()),
        }
    }

    fn server_config(&self, host: &str) -> Arc<ServerConfig> {
        if let Some(c) = lock(&self.configs).get(host) {
            return c.clone();
        }
        let leaf = certs::leaf(&self.root, &[host], Validity::Always);
        let cfg = Arc::new(certs::server_config(&leaf, &[]));
        lock(&self.configs)
            .entry(host.to_string())
            .or_insert(cfg)
            .clone()
    }
}
