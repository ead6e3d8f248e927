//! The single seam between the daemon's logic and the network: [`PolicySource`] asks DNS for the
//! `_mta-sts` TXT record and fetches the policy file over HTTPS.
//!
//! The request path, background refresh and `query` depend on this trait only; the real
//! implementation ([`super::NetSource`]) joins `dns.rs` and `https.rs`, and tests substitute
//! fakes. The outcome enums here, with the errors of `error.rs`, are the one classification that
//! answers, logs and counters all use.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use super::error::{DnsError, FetchError};
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
    Temp(DnsError),
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
