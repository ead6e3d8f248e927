//! The single seam between the daemon's logic and the network: [`PolicySource`] asks DNS for the
//! `_mta-sts` TXT record and fetches the policy file over HTTPS.
//!
//! The request path, background refresh and `query` depend on this trait only; the real
//! implementation ([`NetSource`]) joins `dns.rs` and `fetch.rs`, and tests substitute fakes. The
//! outcome enums here are the one classification that answers, logs and counters all use.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::policy::{StsRecord, TxtError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the `_mta-sts.<domain>` TXT lookup says (RFC 8461 §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtLookup {
    /// Exactly one valid STS record. `text` is the record as published, for operators.
    Record { record: StsRecord, text: String },
    /// NXDOMAIN, NODATA, no `v=STSv1` record, several, or an invalid one: the domain publishes no
    /// usable policy (§3.1). A cached policy still stays in force (§3.1, §5.1).
    NoPolicy(NoPolicy),
    /// SERVFAIL, timeout, network error: nothing can be concluded.
    Temp(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPolicy {
    NxDomain,
    NoData,
    Txt(TxtError),
}

impl fmt::Display for NoPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoPolicy::NxDomain => f.write_str("no _mta-sts TXT record (NXDOMAIN)"),
            NoPolicy::NoData => f.write_str("no _mta-sts TXT record (NODATA)"),
            NoPolicy::Txt(e) => write!(f, "unusable _mta-sts TXT record: {e}"),
        }
    }
}

/// Why an HTTPS policy fetch failed (RFC 8461 §3.3). Each variant is one failure class for logs
/// and counters; [`FetchError::class`] names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The whole fetch did not finish within `[https] timeout`.
    Timeout,
    /// The policy host `mta-sts.<domain>` has no address, or resolving it failed.
    Resolve(String),
    /// TCP connect failed.
    Connect(String),
    /// TLS failed: certificate not trusted, expired, not valid for the name, handshake error
    /// (RFC 8461 §3.3; RFC 8460 `sts-webpki-invalid`).
    Tls(String),
    /// Anything but 200; 3xx redirects are never followed (§3.3).
    Status { code: u16, location: Option<String> },
    /// Media type other than text/plain, or none (§3.2).
    ContentType(Option<String>),
    /// Body over 64 KiB (§3.3), by Content-Length or while streaming.
    TooLarge,
    /// The connection broke or the HTTP exchange was malformed.
    Http(String),
}

impl FetchError {
    /// Short stable name of the failure class.
    pub fn class(&self) -> &'static str {
        match self {
            FetchError::Timeout => "timeout",
            FetchError::Resolve(_) => "resolve",
            FetchError::Connect(_) => "connect",
            FetchError::Tls(_) => "tls-verify",
            FetchError::Status { .. } => "http-status",
            FetchError::ContentType(_) => "content-type",
            FetchError::TooLarge => "too-large",
            FetchError::Http(_) => "http",
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Timeout => f.write_str("policy fetch timed out"),
            FetchError::Resolve(e) => write!(f, "cannot resolve the policy host: {e}"),
            FetchError::Connect(e) => write!(f, "cannot connect to the policy host: {e}"),
            FetchError::Tls(e) => write!(f, "TLS failure: {e}"),
            FetchError::Status {
                code,
                location: Some(l),
            } => write!(
                f,
                "HTTP status {code} (redirect to {l} not followed, RFC 8461 §3.3)"
            ),
            FetchError::Status { code, .. } => {
                write!(f, "HTTP status {code} (only 200 is valid, RFC 8461 §3.3)")
            }
            FetchError::ContentType(Some(t)) => {
                write!(f, "media type {t:?} is not text/plain (RFC 8461 §3.2)")
            }
            FetchError::ContentType(None) => {
                f.write_str("no Content-Type; text/plain is required (RFC 8461 §3.2)")
            }
            FetchError::TooLarge => f.write_str("policy body larger than 64 KiB (RFC 8461 §3.3)"),
            FetchError::Http(e) => write!(f, "HTTP error: {e}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// Ask DNS, fetch HTTPS. Implementations bound every call by their own timeouts.
pub trait PolicySource: Send + Sync + 'static {
    /// Looks up `_mta-sts.<domain>.` TXT. `domain` is a normalised A-label name.
    fn txt<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, TxtLookup>;
    /// GETs `https://mta-sts.<domain>/.well-known/mta-sts.txt`; the body on success.
    fn fetch<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<u8>, FetchError>>;
}

/// A scripted [`PolicySource`] for unit tests: what DNS and HTTPS say now, how often they were
/// asked, how many calls ran at once at most, and an optional delay that makes both slow.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::policy::parse_sts_record;

    #[derive(Default)]
    pub(crate) struct FakeSource {
        pub txt: Mutex<Option<TxtLookup>>,
        pub body: Mutex<Option<Result<Vec<u8>, FetchError>>>,
        pub delay: Mutex<Duration>,
        pub txt_calls: AtomicUsize,
        pub fetch_calls: AtomicUsize,
        running: AtomicUsize,
        pub max_running: AtomicUsize,
    }

    impl FakeSource {
        pub fn publish(&self, id: &str, body: &str) {
            self.set_id(id);
            self.set_fetch(Ok(body.as_bytes().to_vec()));
        }
        pub fn set_id(&self, id: &str) {
            let text = format!("v=STSv1; id={id}");
            let record = parse_sts_record(&text).expect("test id");
            self.set_txt(TxtLookup::Record { record, text });
        }
        pub fn set_txt(&self, t: TxtLookup) {
            *self.txt.lock().unwrap() = Some(t);
        }
        pub fn set_fetch(&self, r: Result<Vec<u8>, FetchError>) {
            *self.body.lock().unwrap() = Some(r);
        }
        pub fn set_delay(&self, d: Duration) {
            *self.delay.lock().unwrap() = d;
        }
        /// (TXT lookups, fetches) so far.
        pub fn calls(&self) -> (usize, usize) {
            (
                self.txt_calls.load(Ordering::SeqCst),
                self.fetch_calls.load(Ordering::SeqCst),
            )
        }
        async fn slow(&self) {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            let delay = *self.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl PolicySource for FakeSource {
        fn txt<'a>(&'a self, _domain: &'a str) -> BoxFuture<'a, TxtLookup> {
            Box::pin(async move {
                self.txt_calls.fetch_add(1, Ordering::SeqCst);
                self.slow().await;
                self.txt
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or(TxtLookup::NoPolicy(NoPolicy::NxDomain))
            })
        }
        fn fetch<'a>(&'a self, _domain: &'a str) -> BoxFuture<'a, Result<Vec<u8>, FetchError>> {
            Box::pin(async move {
                self.fetch_calls.fetch_add(1, Ordering::SeqCst);
                self.slow().await;
                self.body
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or(Err(FetchError::Timeout))
            })
        }
    }
}
