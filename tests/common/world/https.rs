//! The world's HTTPS server: per host name, a certificate chain of a chosen [`CertKind`] from the
//! world's test PKI and a scripted [`Http`] behaviour for the policy path; it counts requests and
//! keeps the last request head of each host.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::LazyConfigAcceptor;

use super::{CertKind, Http, POLICY_PATH, host_key, lock};
use crate::common::certs::{self, Issuer, Validity};

/// Largest HTTP request head the HTTPS server accepts.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Chunk size for chunked transfer encoding.
const CHUNK_SIZE: usize = 8 * 1024;

/// Certificate name used when a client sends no SNI.
const NO_SNI_HOST: &str = "no-sni.test";

/// Organisation in the subject of every world CA.
const ORG: &str = "mta-sts-policyd test world";

/// Binds 127.0.0.1:0 and serves HTTPS there until the returned task is aborted.
pub(super) async fn start() -> (u16, Arc<HttpShared>, JoinHandle<()>) {
    let https = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("World: cannot bind the HTTPS listener on 127.0.0.1:0");
    let port = https
        .local_addr()
        .expect("World: HTTPS listener has no local address")
        .port();
    let shared = Arc::new(HttpShared {
        state: Mutex::new(HttpState::default()),
        pki: Pki::new(),
    });
    let task = tokio::spawn(https_accept_loop(https, shared.clone()));
    (port, shared, task)
}

// ---------------------------------------------------------------------- PKI

pub(super) struct Pki {
    pub root: Issuer,
    intermediate: Issuer,
    other_root: Issuer,
    configs: Mutex<HashMap<(String, CertKind), Arc<ServerConfig>>>,
}

impl Pki {
    fn new() -> Pki {
        let root = certs::root_ca(ORG, "Test World Root CA");
        let intermediate = certs::intermediate_ca(ORG, "Test World Intermediate CA", &root);
        let other_root = certs::root_ca(ORG, "Untrusted Other Root CA");
        Pki {
            root,
            intermediate,
            other_root,
            configs: Mutex::new(HashMap::new()),
        }
    }

    /// The server config presenting `kind` for `host`, made once and cached.
    fn server_config(&self, host: &str, kind: CertKind) -> Arc<ServerConfig> {
        let key = (host.to_string(), kind);
        if let Some(cfg) = lock(&self.configs).get(&key) {
            return cfg.clone();
        }
        let cfg = Arc::new(self.make_config(host, kind));
        lock(&self.configs).entry(key).or_insert(cfg).clone()
    }

    fn make_config(&self, host: &str, kind: CertKind) -> ServerConfig {
        let (leaf, chain): (certs::Leaf, Vec<&Issuer>) = match kind {
            CertKind::Good => (
                certs::leaf(&self.intermediate, &[host], Validity::Always),
                vec![&self.intermediate],
            ),
            CertKind::MissingIntermediate => (
                certs::leaf(&self.intermediate, &[host], Validity::Always),
                vec![],
            ),
            CertKind::Expired => (
                certs::leaf(&self.intermediate, &[host], Validity::Years(2020, 2021)),
                vec![&self.intermediate],
            ),
            CertKind::WrongHost => (
                certs::leaf(&self.intermediate, &["other.test"], Validity::Always),
                vec![&self.intermediate],
            ),
            CertKind::SelfSigned => (certs::self_signed_leaf(&[host], Validity::Always), vec![]),
            CertKind::UntrustedCa => (
                certs::leaf(&self.other_root, &[host], Validity::Always),
                vec![&self.other_root],
            ),
        };
        certs::server_config(&leaf, &chain)
    }
}

// -------------------------------------------------------------------- HTTPS

#[derive(Default)]
pub(super) struct HttpState {
    pub behaviour: HashMap<String, Http>,
    pub certs: HashMap<String, CertKind>,
    pub fetches: HashMap<String, usize>,
    pub last_request: HashMap<String, String>,
}

pub(super) struct HttpShared {
    pub state: Mutex<HttpState>,
    pub pki: Pki,
}

async fn https_accept_loop(listener: TcpListener, shared: Arc<HttpShared>) {
    // Dropping this future (abort on World drop) drops the JoinSet, which
    // aborts every connection task.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((tcp, _peer)) => {
                conns.spawn(handle_https_conn(tcp, shared.clone()));
            }
            Err(e) => {
                tracing::warn!("world HTTPS: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn handle_https_conn(tcp: TcpStream, shared: Arc<HttpShared>) {
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let start = match acceptor.await {
        Ok(start) => start,
        Err(e) => {
            tracing::debug!("world HTTPS: bad ClientHello: {e}");
            return;
        }
    };
    let sni = start.client_hello().server_name().map(host_key);
    let cert_host = sni.clone().unwrap_or_else(|| NO_SNI_HOST.to_string());
    let (hang_tls, kind) = {
        let st = lock_http(&shared);
        (
            matches!(st.behaviour.get(&cert_host), Some(Http::HangTls)),
            st.certs.get(&cert_host).copied().unwrap_or_default(),
        )
    };
    if hang_tls {
        let _keep_open = start;
        std::future::pending::<()>().await;
        return;
    }
    let config = shared.pki.server_config(&cert_host, kind);
    let mut tls = match start.into_stream(config).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::debug!("world HTTPS: handshake for {cert_host} failed: {e}");
            return;
        }
    };
    let Some(head) = read_request_head(&mut tls).await else {
        return;
    };
    let host = header_value(&head, "host")
        .map(|h| host_key(strip_port(h)))
        .filter(|h| !h.is_empty())
        .or(sni);
    let policy_path = is_policy_path(&head);
    let behaviour = {
        let mut st = lock_http(&shared);
        match &host {
            Some(h) => {
                *st.fetches.entry(h.clone()).or_insert(0) += 1;
                st.last_request.insert(h.clone(), head.clone());
                st.behaviour.get(h).cloned().filter(|_| policy_path)
            }
            None => None,
        }
    };
    let behaviour = behaviour.unwrap_or_else(|| Http::Response {
        status: 404,
        headers: vec![("Content-Type".to_string(), "text/plain".to_string())],
        body: b"not found\n".to_vec(),
    });
    match behaviour {
        Http::Hang | Http::HangTls => {
            let _keep_open = tls;
            std::future::pending::<()>().await;
        }
        Http::Raw(bytes) => {
            let _ = tls.write_all(&bytes).await;
            let _ = tls.shutdown().await;
        }
        Http::Chunked { content_type, body } => {
            let mut headers = vec![("Transfer-Encoding".to_string(), "chunked".to_string())];
            if let Some(ct) = content_type {
                headers.push(("Content-Type".to_string(), ct));
            }
            let _ = write_response(&mut tls, 200, &headers, &body).await;
            let _ = tls.shutdown().await;
        }
        Http::Response {
            status,
            headers,
            body,
        } => {
            let _ = write_response(&mut tls, status, &headers, &body).await;
            let _ = tls.shutdown().await;
        }
    }
}

/// Whether the request target is `/.well-known/mta-sts.txt` (origin form,
/// or absolute form `https://host[:port]/.well-known/mta-sts.txt`).
fn is_policy_path(head: &str) -> bool {
    let target = head
        .split("\r\n")
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("");
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    path == POLICY_PATH
}

fn strip_port(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Reads up to and including CRLFCRLF (at most 16 KiB). None on EOF, error
/// or an oversized head.
async fn read_request_head<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end + 4);
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            tracing::debug!("world HTTPS: request head over {MAX_REQUEST_HEAD} bytes");
            return None;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

async fn write_response<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !chunked && !has("content-length") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !has("connection") {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    if chunked {
        s.flush().await?;
        for chunk in body.chunks(CHUNK_SIZE) {
            let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
            piece.extend_from_slice(chunk);
            piece.extend_from_slice(b"\r\n");
            s.write_all(&piece).await?;
            s.flush().await?;
        }
        s.write_all(b"0\r\n\r\n").await?;
    } else {
        s.write_all(body).await?;
    }
    s.flush().await
}
pub(super) fn lock_http(h: &HttpShared) -> MutexGuard<'_, HttpState> {
    lock(&h.state)
}
