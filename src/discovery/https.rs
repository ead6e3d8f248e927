//! The HTTPS policy fetch (RFC 8461 §3.2, §3.3) with hyper + hyper-rustls: the only module that
//! imports hyper and rustls.
//!
//! Rules enforced here: web PKI roots plus `[https] ca_files`, SNI and certificate name
//! `mta-sts.<domain>`, TLS 1.2 or newer (§7.2), status 200 only and no redirects (§3.3),
//! `text/plain` (§3.2), a 64 KiB body cap checked on Content-Length and while streaming (§3.3),
//! one deadline for the whole fetch, and the policy host resolved through our own resolver (never
//! getaddrinfo).
//!
//! With `[https] proxy`, a domain not covered by `no_proxy` is fetched through an HTTP CONNECT
//! tunnel (`TunnelConnector`): the proxy resolves and connects to `mta-sts.<domain>:<port>`,
//! and TLS (SNI, certificate verification for `mta-sts.<domain>`, same roots) runs over the
//! tunnel, so verification stays end to end with the policy host and the proxy cannot vouch for
//! a certificate. The proxy host itself is resolved through our resolver unless it is an IP
//! literal.

use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HttpsConfig, Proxy};
use crate::discovery::FetchError;
use crate::discovery::dns::Dns;
use crate::policy::MAX_POLICY_BYTES;

const USER_AGENT: &str = concat!("mta-sts-policyd/", env!("CARGO_PKG_VERSION"));

/// Largest CONNECT response head accepted from a proxy.
const MAX_PROXY_HEAD: usize = 8 * 1024;

type HttpsClient = Client<HttpsConnector<HttpConnector<HickoryResolve>>, Empty<Bytes>>;
type TunnelClient = Client<HttpsConnector<TunnelConnector>, Empty<Bytes>>;

/// Fetches policy files. Cheap to share; holds no connection between fetches.
#[derive(Clone)]
pub struct Fetcher {
    client: HttpsClient,
    /// Set with `[https] proxy`: the client whose connections are CONNECT tunnels.
    proxied: Option<TunnelClient>,
    /// Lower-case domains without a leading dot; `*` matches every domain.
    no_proxy: Arc<[String]>,
    timeout: Duration,
    port: u16,
}

impl Fetcher {
    pub fn new(cfg: &HttpsConfig, dns: Dns) -> Result<Fetcher, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for path in &cfg.ca_files {
            add_pem_file(&mut roots, path)?;
        }
        // An explicit provider: the process-default one panics when two providers are compiled
        // in and none was installed (rustls ClientConfig::builder docs).
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let proxied = match &cfg.proxy {
            None => None,
            Some(proxy) => {
                tracing::info!(
                    proxy = %format!("http://{}", proxy_authority(proxy)),
                    no_proxy = ?cfg.no_proxy,
                    "policy fetches go through an HTTP proxy (CONNECT tunnel, TLS end to end)"
                );
                let tunnel = TunnelConnector {
                    proxy: Arc::new(proxy.clone()),
                    dns: dns.clone(),
                };
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.clone())
                    .https_only()
                    .enable_http1()
                    .wrap_connector(tunnel);
                Some(
                    Client::builder(TokioExecutor::new())
                        .pool_max_idle_per_host(0)
                        .build(https),
                )
            }
        };

        let mut http = HttpConnector::new_with_resolver(HickoryResolve {
            dns,
            allow_private: cfg.allow_private_addresses,
        });
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        // No pooling: a policy host is contacted once per refresh, and a kept connection would
        // outlive the fetch's deadline.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https);
        Ok(Fetcher {
            client,
            proxied,
            no_proxy: cfg.no_proxy.clone().into(),
            timeout: cfg.timeout,
            port: cfg.port,
        })
    }

    /// The tunnelling client for `domain`, or None when it is fetched directly (no proxy set,
    /// or `domain` covered by `no_proxy`).
    fn proxied_for(&self, domain: &str) -> Option<&TunnelClient> {
        let client = self.proxied.as_ref()?;
        if bypasses_proxy(&self.no_proxy, domain) {
            None
        } else {
            Some(client)
        }
    }

    /// GET `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461 §3.2).
    pub async fn fetch(&self, domain: &str) -> Result<Vec<u8>, FetchError> {
        match tokio::time::timeout(self.timeout, self.fetch_inner(domain)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout),
        }
    }

    async fn fetch_inner(&self, domain: &str) -> Result<Vec<u8>, FetchError> {
        let authority = if self.port == 443 {
            format!("mta-sts.{domain}")
        } else {
            format!("mta-sts.{domain}:{}", self.port)
        };
        let uri = format!("https://{authority}/.well-known/mta-sts.txt");
        let req = Request::get(uri)
            .header(header::USER_AGENT, USER_AGENT)
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(format!("cannot build request: {e}")))?;
        let resp = match self.proxied_for(domain) {
            Some(tunnel) => tunnel.request(req).await,
            None => self.client.request(req).await,
        }
        .map_err(classify)?;

        // RFC 8461 §3.3: only 200 is valid; redirects MUST NOT be followed.
        if resp.status() != StatusCode::OK {
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .filter(|_| resp.status().is_redirection());
            return Err(FetchError::Status {
                code: resp.status().as_u16(),
                location,
            });
        }
        // RFC 8461 §3.2: media type text/plain; parameters (charset ...) are ignored.
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if !ctype.as_deref().is_some_and(is_text_plain) {
            return Err(FetchError::ContentType(ctype));
        }
        // RFC 8461 §3.3: refuse an announced oversize body before reading any of it.
        if let Some(len) = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            && len > MAX_POLICY_BYTES as u64
        {
            return Err(FetchError::TooLarge);
        }
        // And cap what is actually streamed, for chunked bodies or a lying Content-Length.
        let body = Limited::new(resp.into_body(), MAX_POLICY_BYTES);
        match body.collect().await {
            Ok(collected) => Ok(collected.to_bytes().to_vec()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(FetchError::TooLarge),
            Err(e) => Err(FetchError::Http(chain(e.as_ref()))),
        }
    }
}

fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<(), String> {
    let mut n = 0;
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    for cert in iter {
        let cert = cert.map_err(|e| format!("bad PEM in CA file {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("unusable CA certificate in {}: {e}", path.display()))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!("no certificate in CA file {}", path.display()));
    }
    Ok(())
}

/// `text/plain`, any case, with or without parameters (RFC 8461 §3.2).
fn is_text_plain(value: &str) -> bool {
    let media = value.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("text/plain")
}

/// hyper-util prints only "client error (Connect)"; the cause is further down the chain.
fn classify(e: hyper_util::client::legacy::Error) -> FetchError {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(&e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<ResolveError>() {
            return FetchError::Resolve(r.0.clone());
        }
        if let Some(p) = err.downcast_ref::<ProxyError>() {
            return FetchError::Connect(p.0.clone());
        }
        if let Some(t) = find_rustls(err) {
            return FetchError::Tls(t.to_string());
        }
        cur = err.source();
    }
    if e.is_connect() {
        FetchError::Connect(chain(&e))
    } else {
        FetchError::Http(chain(&e))
    }
}

/// `err` itself if it is a rustls error, or the rustls error inside (nested) `io::Error`s:
/// tokio-rustls wraps it in an io::Error and hyper-rustls wraps that in another
/// (`io::Error::other`); io::Error's `source()` skips the wrapped error, so the chain walk in
/// [`classify`] alone never reaches it.
fn find_rustls<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        cur = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn StdError + 'static));
    }
    None
}

fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[derive(Debug)]
struct ResolveError(String);

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for ResolveError {}

/// Whether `domain` is fetched directly: it equals a `no_proxy` entry or ends with
/// `.<entry>`, or an entry is `*`. Entries are lower-case without a leading dot (config.rs).
fn bypasses_proxy(no_proxy: &[String], domain: &str) -> bool {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    no_proxy.iter().any(|entry| {
        entry == "*"
            || domain == *entry
            || (domain.len() > entry.len()
                && domain.ends_with(entry.as_str())
                && domain.as_bytes()[domain.len() - entry.len() - 1] == b'.')
    })
}

/// `host:port`, with brackets around an IPv6 literal.
fn proxy_authority(proxy: &Proxy) -> String {
    if proxy.host.contains(':') {
        format!("[{}]:{}", proxy.host, proxy.port)
    } else {
        format!("{}:{}", proxy.host, proxy.port)
    }
}

/// A failure reaching the proxy or setting up the tunnel; classified as
/// [`FetchError::Connect`], with a message naming the proxy.
#[derive(Debug)]
struct ProxyError(String);

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for ProxyError {}

/// A hyper connector that yields a TCP stream to the proxy on which `CONNECT host:port` has
/// succeeded; hyper-rustls then runs TLS for the URI's host over it. The policy host is never
/// resolved here: the proxy resolves it.
#[derive(Clone)]
struct TunnelConnector {
    proxy: Arc<Proxy>,
    dns: Dns,
}

impl tower_service::Service<Uri> for TunnelConnector {
    type Response = TokioIo<TcpStream>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let proxy = self.proxy.clone();
        let dns = self.dns.clone();
        Box::pin(async move {
            let stream = open_tunnel(&proxy, &dns, &dst)
                .await
                .map_err(|e| Box::new(e) as Self::Error)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// TCP to the proxy, `CONNECT <host>:<port>`, a 2xx answer: the stream is then the tunnel.
async fn open_tunnel(proxy: &Proxy, dns: &Dns, dst: &Uri) -> Result<TcpStream, ProxyError> {
    let name = proxy_authority(proxy);
    let host = dst
        .host()
        .ok_or_else(|| ProxyError(format!("proxy {name}: no host in {dst}")))?;
    let port = dst.port_u16().unwrap_or(443);
    let target = format!("{host}:{port}");

    let ips: Vec<IpAddr> = match proxy.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => dns
            .lookup_ip(&proxy.host)
            .await
            .map_err(|e| ProxyError(format!("cannot resolve proxy {name}: {e}")))?,
    };
    let mut last_err = None;
    let mut stream = None;
    for ip in ips {
        match TcpStream::connect(SocketAddr::new(ip, proxy.port)).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(format!("{ip}: {e}")),
        }
    }
    let mut stream = stream.ok_or_else(|| {
        ProxyError(format!(
            "cannot connect to proxy {name}: {}",
            last_err.unwrap_or_else(|| "no address".to_string())
        ))
    })?;
    // Best effort: the tunnel works without it.
    let _ = stream.set_nodelay(true);

    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ProxyError(format!("proxy {name}: cannot send CONNECT {target}: {e}")))?;

    let head = read_proxy_head(&mut stream)
        .await
        .map_err(|e| ProxyError(format!("proxy {name}: CONNECT {target}: {e}")))?;
    let status_line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let status_line = String::from_utf8_lossy(status_line).trim_end().to_string();
    if !connect_succeeded(&status_line) {
        let shown: String = status_line.chars().take(200).collect();
        return Err(ProxyError(format!(
            "proxy {name} refused CONNECT {target}: {shown:?}"
        )));
    }
    Ok(stream)
}

/// Reads the proxy's response head, up to and including the empty line, and nothing beyond it
/// (what follows belongs to TLS). At most [`MAX_PROXY_HEAD`] bytes.
async fn read_proxy_head(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        // Peek, then consume only through the end of the head, so that no byte after it (which
        // belongs to the TLS stream) is lost.
        let n = stream
            .peek(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err("connection closed before an answer".to_string());
        }
        let before = head.len();
        head.extend_from_slice(&chunk[..n]);
        let end = find_head_end(&head, before);
        let take = match end {
            Some(end) => end.saturating_sub(before),
            None => n,
        };
        head.truncate(before + take);
        // Consume exactly what was peeked and kept.
        stream
            .read_exact(&mut chunk[..take])
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if end.is_some() {
            return Ok(head);
        }
        if head.len() >= MAX_PROXY_HEAD {
            return Err(format!("answer head longer than {MAX_PROXY_HEAD} bytes"));
        }
    }
}

/// The index just past the first `\r\n\r\n` (or bare `\n\n`) in `buf`, searching from a little
/// before `from` so a terminator split across reads is found.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    (start..buf.len()).find_map(|i| {
        let rest = &buf[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

/// `HTTP/1.x 2xx ...`: the tunnel is open (RFC 9110 §9.3.6).
fn connect_succeeded(status_line: &str) -> bool {
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    version.starts_with("HTTP/1.")
        && code.len() == 3
        && code.starts_with('2')
        && code.bytes().all(|b| b.is_ascii_digit())
}

/// Resolves the policy host through hickory for hyper's connector.
#[derive(Clone)]
struct HickoryResolve {
    dns: Dns,
    /// `[https] allow_private_addresses`: off by default, so that a hostile domain cannot aim
    /// the fetch at services on loopback or the internal network.
    allow_private: bool,
}

/// Addresses a policy host on the public internet never has: loopback, private (RFC 1918, ULA),
/// link-local, unspecified, shared (RFC 6598), multicast and broadcast, also as IPv4-mapped IPv6.
pub fn is_internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
        }
    }
}

impl tower_service::Service<Name> for HickoryResolve {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let dns = self.dns.clone();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let mut ips = dns
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| Box::new(ResolveError(e)) as Self::Error)?;
            if !allow_private {
                let all = ips.clone();
                ips.retain(|ip| !is_internal(*ip));
                if ips.is_empty() {
                    let shown: Vec<String> = all.iter().map(|i| i.to_string()).collect();
                    return Err(Box::new(ResolveError(format!(
                        "{} resolves only to internal addresses ({}); not fetched \
                         ([https] allow_private_addresses = true allows it)",
                        name.as_str(),
                        shown.join(", ")
                    ))) as Self::Error);
                }
            }
            // Port 0: the connector fills in the port of the URI.
            Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "192.0.2.1",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2001:db8::1",
            "2a00::1",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn rfc8461_3_2_media_type_is_text_plain_with_any_parameters() {
        assert!(is_text_plain("text/plain"));
        assert!(is_text_plain("Text/Plain; charset=utf-8"));
        assert!(is_text_plain("text/plain;charset=us-ascii"));
        assert!(is_text_plain(" text/plain ; format=flowed"));
        assert!(!is_text_plain("text/html"));
        assert!(!is_text_plain("text/plainx"));
        assert!(!is_text_plain("application/octet-stream"));
        assert!(!is_text_plain(""));
    }

    #[test]
    fn no_proxy_matches_domain_and_subdomains() {
        let np: Vec<String> = vec!["example.com".into(), "corp".into()];
        assert!(bypasses_proxy(&np, "example.com"));
        assert!(bypasses_proxy(&np, "Mail.Example.com."));
        assert!(bypasses_proxy(&np, "a.b.corp"));
        assert!(!bypasses_proxy(&np, "badexample.com"));
        assert!(!bypasses_proxy(&np, "example.org"));
        assert!(!bypasses_proxy(&np, "com"));
        assert!(!bypasses_proxy(&[], "example.com"));
        assert!(bypasses_proxy(&["*".to_string()], "anything.test"));
    }

    #[test]
    fn rustls_error_is_found_inside_nested_io_errors() {
        let tls = || rustls::Error::General("bad certificate".into());
        let once = std::io::Error::new(std::io::ErrorKind::InvalidData, tls());
        let twice = std::io::Error::other(once);
        assert!(find_rustls(&twice).is_some());
        assert!(find_rustls(&tls()).is_some());
        assert!(find_rustls(&std::io::Error::other("refused")).is_none());
    }

    #[test]
    fn connect_status_must_be_2xx() {
        assert!(connect_succeeded("HTTP/1.1 200 Connection established"));
        assert!(connect_succeeded("HTTP/1.0 200"));
        assert!(connect_succeeded("HTTP/1.1 204 No Content"));
        assert!(!connect_succeeded("HTTP/1.1 403 Forbidden"));
        assert!(!connect_succeeded(
            "HTTP/1.1 407 Proxy Authentication Required"
        ));
        assert!(!connect_succeeded("HTTP/1.1 2000 OK"));
        assert!(!connect_succeeded("HTTP/2 200"));
        assert!(!connect_succeeded("SSH-2.0-OpenSSH"));
        assert!(!connect_succeeded(""));
    }

    #[test]
    fn proxy_head_end_is_found_across_reads() {
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\nXX", 0), Some(19));
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\n", 17), Some(19));
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\n\nX", 0), Some(17));
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n", 0), None);
    }

    #[test]
    fn proxy_authority_brackets_ipv6() {
        let p = |h: &str| Proxy {
            host: h.into(),
            port: 3128,
        };
        assert_eq!(proxy_authority(&p("::1")), "[::1]:3128");
        assert_eq!(proxy_authority(&p("proxy.example")), "proxy.example:3128");
    }
}
