//! One RFC 8461 §3 policy discovery for one domain: TXT record → (id short-cut) → HTTPS fetch →
//! strict parse. Shared by the request path, background refresh and the `query` command, so the
//! three can never disagree about what a domain publishes.
//!
//! Knows nothing of caches or Postfix: the caller passes the id it already holds and decides what
//! to do with the [`Outcome`].

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::{self, Policy, PolicyError};
use crate::source::{FetchError, NoPolicy, PolicySource, TxtLookup};

/// Why a TXT record was found but no policy could be had from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchFailure {
    Fetch(FetchError),
    Invalid(PolicyError),
}

impl FetchFailure {
    /// The RFC 8460 §4.3.2.2 result type this failure would be reported as.
    pub fn report_class(&self) -> &'static str {
        match self {
            FetchFailure::Fetch(FetchError::Tls(_)) => "sts-webpki-invalid",
            FetchFailure::Fetch(_) => "sts-policy-fetch-error",
            FetchFailure::Invalid(_) => "sts-policy-invalid",
        }
    }

    pub fn class(&self) -> &'static str {
        match self {
            FetchFailure::Fetch(e) => e.class(),
            FetchFailure::Invalid(_) => "parse-error",
        }
    }
}

impl fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchFailure::Fetch(e) => e.fmt(f),
            FetchFailure::Invalid(e) => write!(f, "invalid policy: {e}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A policy was fetched and parsed under TXT id `id`.
    Fetched { id: String, policy: Policy },
    /// The TXT id equals the id the caller holds: no fetch needed (RFC 8461 §3.1, §5.1).
    Unchanged { id: String },
    /// The domain publishes no usable TXT record (§3.1).
    NoPolicy(NoPolicy),
    /// DNS failed temporarily; nothing is known.
    DnsTemp(String),
    /// A valid TXT record, but the policy could not be fetched or is invalid (§3.3).
    FetchFailed { id: String, failure: FetchFailure },
}

#[derive(Debug, Clone)]
pub struct Discovery {
    /// The TXT record text when one valid record was found.
    pub txt: Option<String>,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

/// Runs one discovery. `known_id`: the id of a still-valid cached policy, which makes an unchanged
/// TXT record end the discovery without a fetch.
pub async fn discover(
    source: &dyn PolicySource,
    domain: &str,
    known_id: Option<&str>,
) -> Discovery {
    let start = Instant::now();
    let (txt, outcome) = match source.txt(domain).await {
        TxtLookup::NoPolicy(n) => (None, Outcome::NoPolicy(n)),
        TxtLookup::Temp(e) => (None, Outcome::DnsTemp(e)),
        TxtLookup::Record { record, text } => {
            let id = record.id;
            let outcome = if known_id == Some(id.as_str()) {
                Outcome::Unchanged { id }
            } else {
                match source.fetch(domain).await {
                    Err(e) => Outcome::FetchFailed {
                        id,
                        failure: FetchFailure::Fetch(e),
                    },
                    Ok(body) => match policy::parse_policy(&body) {
                        Ok(policy) => Outcome::Fetched { id, policy },
                        Err(e) => Outcome::FetchFailed {
                            id,
                            failure: FetchFailure::Invalid(e),
                        },
                    },
                }
            };
            (Some(text), outcome)
        }
    };
    Discovery {
        txt,
        outcome,
        elapsed: start.elapsed(),
    }
}
