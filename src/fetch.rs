//! The HTTPS policy fetch (RFC 8461 §3.2, §3.3) with hyper + hyper-rustls: the only module that
//! imports hyper and rustls.
//!
//! Rules enforced here: web PKI roots plus `[https] ca_files`, SNI and certificate name
//! `mta-sts.<domain>`, TLS 1.2 or newer (§7.2), status 200 only and no redirects (§3.3),
//! `text/plain` (§3.2), a 64 KiB body cap checked on Content-Length and while streaming (§3.3),
//! one deadline for the whole fetch, and the policy host resolved through our own resolver (never
//! getaddrinfo).

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::HttpsConfig;
use crate::dns::Dns;
use crate::policy::MAX_POLICY_BYTES;
use crate::source::FetchError;

const USER_AGENT: &str = concat!("mta-sts-policyd/", env!("CARGO_PKG_VERSION"));

type HttpsClient = Client<HttpsConnector<HttpConnector<HickoryResolve>>, Empty<Bytes>>;

/// Fetches policy files. Cheap to share; holds no connection between fetches.
#[derive(Clone)]
pub struct Fetcher {
    client: HttpsClient,
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

        let mut http = HttpConnector::new_with_resolver(HickoryResolve { dns });
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
        let resp = self.client.request(req).await.map_err(classify)?;

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
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return FetchError::Tls(t.to_string());
        }
        // tokio-rustls wraps rustls errors in io::Error, whose source() skips the wrapped error.
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
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

/// Resolves the policy host through hickory for hyper's connector.
#[derive(Clone)]
struct HickoryResolve {
    dns: Dns,
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
        Box::pin(async move {
            let ips = dns
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| Box::new(ResolveError(e)) as Self::Error)?;
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
}
