//! The HTTPS policy fetch (RFC 8461 §3.2, §3.3) with hyper + hyper-rustls: the only module that
//! imports hyper and rustls.
//!
//! Rules enforced here: web PKI roots plus `[https] ca_files`, SNI and certificate name
//! `mta-sts.<domain>`, TLS 1.2 or newer (RFC 8461 §7.2), status 200 only and no redirects (§3.3),
//! `text/plain` (§3.2), a 64 KiB body cap checked on Content-Length and while streaming (§3.3),
//! one deadline for the whole fetch, and the policy host resolved through our own resolver (never
//! getaddrinfo) with internal addresses refused unless `[https] allow_private_addresses`.
//!
//! With `[https] proxy`, a domain not covered by `no_proxy` (hyper-util's curl-style
//! [`Matcher`]) is fetched through an HTTP CONNECT tunnel (hyper-util's [`Tunnel`]): the proxy
//! resolves and connects to `mta-sts.<domain>:<port>`, and TLS (SNI, certificate verification for
//! `mta-sts.<domain>`, same roots) runs over the tunnel, so verification stays end to end with the
//! policy host and the proxy cannot vouch for a certificate. The proxy host itself is resolved
//! through our resolver unless it is an IP literal.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode, Uri, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::config::{HttpsConfig, Proxy, redact_userinfo};
pub use crate::discovery::address::is_internal;
use crate::discovery::dns::Dns;
use crate::discovery::{DnsError, FetchError};
use crate::policy::MAX_POLICY_BYTES;

const USER_AGENT: &str = concat!("mta-sts-policyd/", env!("CARGO_PKG_VERSION"));

/// How much of a proxy's first answer line is kept for the error message of a refused tunnel.
const MAX_STATUS_LINE: usize = 512;

type BoxError = Box<dyn StdError + Send + Sync>;
type Connecting<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'static>>;
type HttpsClient = Client<HttpsConnector<HttpConnector<HickoryResolve>>, Empty<Bytes>>;
type TunnelClient = Client<HttpsConnector<ProxyConnector>, Empty<Bytes>>;

/// Fetches policy files. Cheap to share; holds no connection between fetches.
#[derive(Clone)]
pub struct Fetcher {
    client: HttpsClient,
    /// Set with `[https] proxy`.
    proxy: Option<Arc<Proxied>>,
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

        let proxy = match &cfg.proxy {
            None => None,
            Some(proxy) => {
                let url = format!("http://{}", proxy_authority(proxy));
                tracing::info!(
                    proxy = %redact_userinfo(&url),
                    no_proxy = ?cfg.no_proxy,
                    "policy fetches go through an HTTP proxy (CONNECT tunnel, TLS end to end)"
                );
                // The proxy is the operator's own choice: it may well sit on an internal address.
                let http = http_connector(&dns, true, cfg.timeout);
                let connector = ProxyConnector::new(&url, http)?;
                Some(Arc::new(Proxied {
                    client: client(tls.clone(), connector),
                    no_proxy: no_proxy_matcher(&url, &cfg.no_proxy),
                }))
            }
        };
        let http = http_connector(&dns, cfg.allow_private_addresses, cfg.timeout);
        Ok(Fetcher {
            client: client(tls, http),
            proxy,
            timeout: cfg.timeout,
            port: cfg.port,
        })
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
        let resp = match self.proxy.as_deref().filter(|p| p.covers(domain)) {
            Some(proxy) => proxy.client.request(req).await,
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

/// A TCP connector that resolves through hickory, with or without the internal-address block.
fn http_connector(
    dns: &Dns,
    allow_private: bool,
    timeout: Duration,
) -> HttpConnector<HickoryResolve> {
    let mut http = HttpConnector::new_with_resolver(HickoryResolve {
        dns: dns.clone(),
        allow_private,
    });
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    http.set_nodelay(true);
    http
}

/// HTTPS only, HTTP/1.1, over `connector`.
fn client<C>(tls: rustls::ClientConfig, connector: C) -> Client<HttpsConnector<C>, Empty<Bytes>>
where
    C: Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: Connection + hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(connector);
    // No pooling: a policy host is contacted once per refresh, and a kept connection would
    // outlive the fetch's deadline.
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(https)
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
            return FetchError::Resolve(r.to_string());
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

/// Why a host (the policy host, or the proxy) yielded no address to connect to.
#[derive(Debug)]
enum ResolveError {
    Dns {
        host: String,
        error: DnsError,
    },
    /// Every address is internal and `[https] allow_private_addresses` is off.
    OnlyInternal {
        host: String,
        addrs: Vec<IpAddr>,
    },
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::Dns { host, error } => write!(f, "{host}: {error}"),
            ResolveError::OnlyInternal { host, addrs } => {
                let shown: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                write!(
                    f,
                    "{host} resolves only to internal addresses ({}); not fetched \
                     ([https] allow_private_addresses = true allows it)",
                    shown.join(", ")
                )
            }
        }
    }
}

impl StdError for ResolveError {}

/// Resolves a host through hickory for hyper's connector.
#[derive(Clone)]
struct HickoryResolve {
    dns: Dns,
    /// `[https] allow_private_addresses` for the policy host: off by default, so that a hostile
    /// domain cannot aim the fetch at services on loopback or the internal network.
    allow_private: bool,
}

impl Service<Name> for HickoryResolve {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let dns = self.dns.clone();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str();
            let mut ips = dns
                .lookup_ip(host)
                .await
                .map_err(|error| ResolveError::Dns {
                    host: host.to_string(),
                    error,
                })?;
            if !allow_private {
                let all = ips.clone();
                ips.retain(|ip| !is_internal(*ip));
                if ips.is_empty() {
                    return Err(ResolveError::OnlyInternal {
                        host: host.to_string(),
                        addrs: all,
                    }
                    .into());
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

/// `[https] proxy`: the domains it covers and the client whose connections are its tunnels.
struct Proxied {
    client: TunnelClient,
    no_proxy: Matcher,
}

impl Proxied {
    /// Whether `domain`'s policy is fetched through the proxy.
    fn covers(&self, domain: &str) -> bool {
        goes_through_proxy(&self.no_proxy, domain)
    }
}

/// `[https] no_proxy` as hyper-util's curl-compatible matcher for `proxy_url`: an entry matches
/// the name itself and every name below it (a leading dot changes nothing), `*` matches all, IP
/// and CIDR entries match only IP literals, case is ignored.
fn no_proxy_matcher(proxy_url: &str, no_proxy: &[String]) -> Matcher {
    Matcher::builder()
        .https(proxy_url)
        .no(no_proxy.join(","))
        .build()
}

/// Whether the policy of `domain` goes through the proxy. The policy domain is matched (as
/// `[https] no_proxy` is documented), not the policy host `mta-sts.<domain>`.
fn goes_through_proxy(no_proxy: &Matcher, domain: &str) -> bool {
    match Uri::try_from(format!("https://{}/", domain.trim_end_matches('.'))) {
        Ok(uri) => no_proxy.intercept(&uri).is_some(),
        // Not a host name hyper accepts: the fetch fails either way; the proxy is the default.
        Err(_) => true,
    }
}

/// `host:port`, with brackets around an IPv6 literal.
fn proxy_authority(proxy: &Proxy) -> String {
    if proxy.host.contains(':') {
        format!("[{}]:{}", proxy.host, proxy.port)
    } else {
        format!("{}:{}", proxy.host, proxy.port)
    }
}

/// A failure reaching the proxy or setting up the tunnel, worded to name the proxy; classified as
/// [`FetchError::Connect`].
#[derive(Debug)]
struct ProxyError(String);

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for ProxyError {}

/// hyper-util's [`Tunnel`] to the proxy, with failures reported by [`ProxyError`]: hyper-util
/// says only "unsuccessful" when the proxy refuses, so the proxy's status line is kept by
/// [`HeadTap`] and quoted. The policy host is never resolved here: the proxy resolves it.
#[derive(Clone)]
struct ProxyConnector {
    /// `http://host:port/` as hyper-util parsed it from the proxy URL.
    uri: Uri,
    /// `Proxy-Authorization` when the proxy URL carries `user:pass@`.
    auth: Option<HeaderValue>,
    /// `host:port` for messages.
    name: Arc<str>,
    http: HttpConnector<HickoryResolve>,
}

impl ProxyConnector {
    fn new(url: &str, http: HttpConnector<HickoryResolve>) -> Result<ProxyConnector, String> {
        // Any https URI asks the matcher (which has no `no` list) for the proxy's address and
        // credentials, parsed the way hyper-util parses HTTPS_PROXY.
        let intercept = Matcher::builder()
            .https(url)
            .build()
            .intercept(&Uri::from_static("https://mta-sts.invalid/"))
            .ok_or_else(|| redact_userinfo(&format!("unusable proxy URL {url:?}")))?;
        let uri = intercept.uri().clone();
        // Every tunnel error names the proxy: never with the credentials of `url`.
        let name = redact_userinfo(uri.authority().map_or(url, |a| a.as_str())).into();
        Ok(ProxyConnector {
            auth: intercept.basic_auth().cloned(),
            uri,
            name,
            http,
        })
    }
}

impl Service<Uri> for ProxyConnector {
    type Response = TokioIo<HeadTap>;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        // One status line per connection: the tunnel is built for this call only.
        let status = Arc::new(Mutex::new(Vec::new()));
        let tap = TapConnector {
            http: self.http.clone(),
            status: status.clone(),
            name: self.name.clone(),
        };
        let mut tunnel = Tunnel::new(self.uri.clone(), tap);
        if let Some(auth) = &self.auth {
            tunnel = tunnel.with_auth(auth.clone());
        }
        let name = self.name.clone();
        Box::pin(async move {
            let fail = |e: &(dyn StdError + 'static)| tunnel_failure(&name, &dst, e, &status);
            std::future::poll_fn(|cx| tunnel.poll_ready(cx))
                .await
                .map_err(|e| fail(&e))?;
            tunnel.call(dst.clone()).await.map_err(|e| fail(&e))
        })
    }
}

/// The error for a tunnel that did not open: the proxy unreachable (worded by [`TapConnector`]),
/// refused (with its status line), or broke off.
fn tunnel_failure(
    name: &str,
    dst: &Uri,
    e: &(dyn StdError + 'static),
    status: &Mutex<Vec<u8>>,
) -> BoxError {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(p) = err.downcast_ref::<ProxyError>() {
            return Box::new(ProxyError(p.0.clone()));
        }
        cur = err.source();
    }
    let target = format!(
        "{}:{}",
        dst.host().unwrap_or_default(),
        dst.port_u16().unwrap_or(443)
    );
    let line = status
        .lock()
        .map(|l| String::from_utf8_lossy(&l).trim_end().to_string())
        .unwrap_or_default();
    let message = if !line.is_empty() && status_code(&line) != Some(200) {
        let shown: String = line.chars().take(200).collect();
        format!("proxy {name} refused CONNECT {target}: {shown:?}")
    } else {
        format!("proxy {name}: CONNECT {target}: {}", chain(e))
    };
    Box::new(ProxyError(message))
}

/// The status code of an `HTTP/1.x NNN ...` status line; hyper-util opens the tunnel on 200
/// only.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// The TCP connection to the proxy for [`Tunnel`], wrapped in [`HeadTap`]; a failure to reach the
/// proxy becomes a [`ProxyError`] naming it.
#[derive(Clone)]
struct TapConnector {
    http: HttpConnector<HickoryResolve>,
    status: Arc<Mutex<Vec<u8>>>,
    name: Arc<str>,
}

impl Service<Uri> for TapConnector {
    type Response = TokioIo<HeadTap>;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let name = self.name.clone();
        self.http
            .poll_ready(cx)
            .map_err(|e| unreachable_proxy(&name, &e).into())
    }

    fn call(&mut self, proxy: Uri) -> Self::Future {
        let connecting = self.http.call(proxy);
        let status = self.status.clone();
        let name = self.name.clone();
        Box::pin(async move {
            let io = connecting.await.map_err(|e| unreachable_proxy(&name, &e))?;
            Ok(TokioIo::new(HeadTap {
                io: io.into_inner(),
                status,
                done: false,
            }))
        })
    }
}

fn unreachable_proxy(name: &str, e: &(dyn StdError + 'static)) -> ProxyError {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<ResolveError>() {
            return ProxyError(format!("cannot resolve proxy {name}: {r}"));
        }
        cur = err.source();
    }
    ProxyError(format!("cannot connect to proxy {name}: {}", chain(e)))
}

/// The TCP stream to the proxy; keeps the first line the proxy sends (its status line) for the
/// message of a refused tunnel, then passes bytes through untouched.
struct HeadTap {
    io: TcpStream,
    status: Arc<Mutex<Vec<u8>>>,
    done: bool,
}

/// Appends the part of `read` up to the first line end to `status`; true once the line is
/// complete or [`MAX_STATUS_LINE`] long.
fn remember(status: &Mutex<Vec<u8>>, read: &[u8]) -> bool {
    let Ok(mut line) = status.lock() else {
        return true;
    };
    let room = MAX_STATUS_LINE.saturating_sub(line.len());
    let end = read.iter().position(|&b| b == b'\n');
    let take = end.map_or(read.len(), |i| i + 1).min(room);
    line.extend_from_slice(&read[..take]);
    end.is_some_and(|i| i < room) || line.len() >= MAX_STATUS_LINE
}

impl AsyncRead for HeadTap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if !self.done && matches!(polled, Poll::Ready(Ok(()))) {
            self.done = remember(&self.status, &buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for HeadTap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connection for HeadTap {
    /// A plain connection as far as hyper is concerned: requests inside the tunnel keep the
    /// origin form.
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::config::DnsConfig;

    #[test]
    fn internal_addresses_are_recognised() {
        // The whole table is in `address`; this keeps the addresses this module always refused.
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
            // Documentation ranges (RFC 5737, RFC 3849): no policy host lives there.
            "192.0.2.1",
            "2001:db8::1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "100.128.0.1", "172.32.0.1", "2a00::1"] {
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

    fn proxied(no_proxy: &[&str], domain: &str) -> bool {
        let list: Vec<String> = no_proxy.iter().map(|e| e.to_string()).collect();
        goes_through_proxy(&no_proxy_matcher("http://127.0.0.1:3128", &list), domain)
    }

    #[test]
    fn no_proxy_matches_domain_and_subdomains() {
        let np = ["example.com", "corp"];
        assert!(!proxied(&np, "example.com"));
        assert!(!proxied(&np, "Mail.Example.com."));
        assert!(!proxied(&np, "a.b.corp"));
        assert!(proxied(&np, "badexample.com"));
        assert!(proxied(&np, "example.org"));
        assert!(proxied(&np, "com"));
        assert!(proxied(&[], "example.com"));
        assert!(!proxied(&["*"], "anything.test"));
    }

    #[test]
    fn no_proxy_entries_follow_curl() {
        // A leading dot changes nothing: the name itself and every name below it.
        assert!(!proxied(&[".example.com"], "example.com"));
        assert!(!proxied(&[".example.com"], "mx.example.com"));
        assert!(proxied(&[".example.com"], "badexample.com"));
        // Case is ignored on both sides; blanks around an entry are dropped.
        assert!(!proxied(&["EXAMPLE.com"], "example.COM"));
        assert!(!proxied(&[" example.com "], "example.com"));
        // `*` covers everything, but only alone: no other wildcard exists.
        assert!(proxied(&["*.example.com"], "mx.example.com"));
        // IP and CIDR entries match IP literals only, never a policy domain.
        assert!(proxied(&["192.0.2.1", "10.0.0.0/8", "::1"], "example.com"));
        // The policy domain is matched, not the policy host `mta-sts.<domain>`.
        assert!(proxied(&["mta-sts.example.com"], "example.com"));
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
    fn tunnel_opens_on_status_200_only() {
        assert_eq!(
            status_code("HTTP/1.1 200 Connection established"),
            Some(200)
        );
        assert_eq!(status_code("HTTP/1.0 200"), Some(200));
        assert_eq!(status_code("HTTP/1.1 204 No Content"), Some(204));
        assert_eq!(status_code("HTTP/1.1 403 Forbidden"), Some(403));
        assert_eq!(status_code("HTTP/1.1 2000 OK"), None);
        assert_eq!(status_code("HTTP/2 200"), None);
        assert_eq!(status_code("SSH-2.0-OpenSSH"), None);
        assert_eq!(status_code(""), None);
    }

    #[test]
    fn status_line_is_kept_across_reads_and_bounded() {
        let status = Arc::new(Mutex::new(Vec::new()));
        assert!(!remember(&status, b"HTTP/1.1 403"));
        assert!(remember(&status, b" Forbidden\r\nVia: x\r\n\r\n"));
        assert_eq!(&*status.lock().unwrap(), b"HTTP/1.1 403 Forbidden\r\n");
        let long = Arc::new(Mutex::new(Vec::new()));
        assert!(remember(&long, &[b'x'; 2 * MAX_STATUS_LINE]));
        assert_eq!(long.lock().unwrap().len(), MAX_STATUS_LINE);
    }

    /// A proxy that reads one request head, answers `answer` and closes; yields the head.
    async fn one_shot_proxy(answer: &'static [u8]) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await.unwrap() {
                    0 => break,
                    n => head.extend_from_slice(&buf[..n]),
                }
            }
            s.write_all(answer).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (addr, task)
    }

    async fn tunnel_error(proxy_url: &str) -> String {
        let dns = Dns::new(&DnsConfig {
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        let http = http_connector(&dns, true, Duration::from_secs(2));
        let mut proxy = ProxyConnector::new(proxy_url, http).unwrap();
        match proxy
            .call(Uri::from_static("https://mta-sts.example.test:443/"))
            .await
        {
            Err(e) => e.to_string(),
            Ok(_) => panic!("the tunnel opened"),
        }
    }

    #[tokio::test]
    async fn proxy_credentials_are_sent_and_a_refusal_quotes_the_status_line() {
        let (addr, head) =
            one_shot_proxy(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").await;
        let err = tunnel_error(&format!("http://user:pa%20ss@{addr}")).await;
        let head = head.await.unwrap();
        assert!(
            head.starts_with("CONNECT mta-sts.example.test:443 HTTP/1.1\r\n"),
            "{head}"
        );
        // base64("user:pa ss"): the password percent-decoded, as in the URL userinfo.
        assert!(
            head.contains("\r\nProxy-Authorization: Basic dXNlcjpwYSBzcw==\r\n"),
            "{head}"
        );
        assert_eq!(
            err,
            format!(
                "proxy {addr} refused CONNECT mta-sts.example.test:443: \
                 \"HTTP/1.1 407 Proxy Authentication Required\""
            )
        );
    }

    #[tokio::test]
    async fn proxy_closing_without_an_answer_names_proxy_and_target() {
        let (addr, head) = one_shot_proxy(b"").await;
        let err = tunnel_error(&format!("http://{addr}")).await;
        let head = head.await.unwrap();
        assert!(
            !head.to_ascii_lowercase().contains("proxy-authorization"),
            "{head}"
        );
        assert!(
            err.starts_with(&format!("proxy {addr}: CONNECT mta-sts.example.test:443: ")),
            "{err}"
        );
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
