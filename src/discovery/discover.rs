//! One RFC 8461 §3 policy discovery for one domain: TXT record → (id short-cut) → HTTPS fetch →
//! strict parse. Shared by the request path, background refresh and the `query` command, so the
//! three can never disagree about what a domain publishes.
//!
//! Knows nothing of caches or Postfix: the caller passes the id it already holds and decides what
//! to do with the [`Outcome`].

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::discovery::{DnsError, FetchError, NoPolicy, PolicySource, TxtLookup};
use crate::metrics;
use crate::policy::{self, Policy, PolicyError, TxtError};

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

    /// Short stable name of the failure class, for logs; the same word as its metrics outcome.
    pub fn label(&self) -> &'static str {
        metrics::Outcome::from(self).label()
    }
}

impl From<&FetchFailure> for metrics::Outcome {
    fn from(f: &FetchFailure) -> metrics::Outcome {
        match f {
            FetchFailure::Fetch(e) => e.into(),
            FetchFailure::Invalid(_) => metrics::Outcome::ParseError,
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
    DnsTemp(DnsError),
    /// A valid TXT record, but the policy could not be fetched or is invalid (§3.3).
    FetchFailed { id: String, failure: FetchFailure },
}

/// The counter a discovery's outcome is counted under.
impl From<&Outcome> for metrics::Outcome {
    fn from(o: &Outcome) -> metrics::Outcome {
        match o {
            Outcome::Fetched { .. } => metrics::Outcome::Policy,
            Outcome::Unchanged { .. } => metrics::Outcome::Unchanged,
            Outcome::NoPolicy(NoPolicy::NxDomain) => metrics::Outcome::NxDomain,
            Outcome::NoPolicy(NoPolicy::NoData) => metrics::Outcome::NoData,
            Outcome::NoPolicy(NoPolicy::Txt(TxtError::MultipleStsRecords(_))) => {
                metrics::Outcome::MultipleRecords
            }
            Outcome::NoPolicy(NoPolicy::Txt(_)) => metrics::Outcome::BadRecord,
            Outcome::DnsTemp(e) => e.into(),
            Outcome::FetchFailed { failure, .. } => failure.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Discovery {
    /// The TXT record text when one valid record was found.
    pub txt: Option<String>,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

/// What the caller already holds for the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known<'a> {
    /// Nothing valid: a full discovery.
    Nothing,
    /// A valid policy under this id: an unchanged TXT id ends the discovery without a fetch
    /// (RFC 8461 §3.1, §5.1).
    Valid(&'a str),
    /// A valid policy under this id that must be fetched again before it expires, "regardless of
    /// the state of the TXT record" (RFC 8461 §10.2): when the TXT lookup yields nothing usable,
    /// the policy is fetched anyway and kept under the old id.
    Refetch(&'a str),
}

/// Runs one discovery for `domain`.
pub async fn discover(source: &dyn PolicySource, domain: &str, known: Known<'_>) -> Discovery {
    let start = Instant::now();
    let lookup = source.txt(domain).await;
    let (txt, id) = match (&lookup, known) {
        (TxtLookup::Record { record, text }, _) => (Some(text.clone()), record.id.clone()),
        (_, Known::Refetch(id)) => (None, id.to_string()),
        (TxtLookup::NoPolicy(n), _) => {
            return done(start, None, Outcome::NoPolicy(n.clone()));
        }
        (TxtLookup::Temp(e), _) => return done(start, None, Outcome::DnsTemp(e.clone())),
    };
    if known == Known::Valid(&id) {
        return done(start, txt, Outcome::Unchanged { id });
    }
    let outcome = match source.fetch(domain).await {
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
    };
    done(start, txt, outcome)
}

fn done(start: Instant, txt: Option<String>, outcome: Outcome) -> Discovery {
    Discovery {
        txt,
        outcome,
        elapsed: start.elapsed(),
    }
}
