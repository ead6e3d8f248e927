//! Why discovery failed, in one vocabulary: [`DnsError`] for the `_mta-sts` TXT lookup and the
//! address lookups behind a fetch, [`FetchError`] for the HTTPS policy fetch (RFC 8461 §3.3).
//!
//! Each error has a message for operators (`Display`) and a short stable `label()` for logs; the
//! metrics outcome is derived from the error itself (`From<&DnsError>`, `From<&FetchError>` for
//! [`metrics::Outcome`]), so no caller passes label strings around. A leaf of this folder: imports
//! only `metrics`, and no resolver or HTTP types leak into it.

use std::fmt;

use crate::metrics;

/// Why a DNS lookup gave no answer a sender can conclude anything from. Everything here is a
/// temporary failure: a policy may exist, so a cached one stays in force (RFC 8461 §3.1, §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// No answer within `[dns] timeout`.
    Timeout,
    /// The server answered REFUSED (RCODE 5, RFC 1035 §4.1.1) or refused the connection.
    Refused,
    /// SERVFAIL (RCODE 2, RFC 1035 §4.1.1); also what a validating resolver answers for a
    /// DNSSEC-bogus name (RFC 4035 §5.5).
    ServFail,
    /// Another error RCODE (FORMERR, NOTIMP, NOTAUTH, ...), by number.
    Rcode(u16),
    /// The resolver's own DNSSEC validation failed.
    Bogus,
    /// The host has no A or AAAA record (address lookups only; a TXT lookup without records is
    /// NXDOMAIN or NODATA, which is an answer, not an error).
    NoAddress,
    /// More TXT records than any MTA-STS deployment publishes: refused to bound the work a
    /// hostile answer can cause.
    TooManyRecords { limit: usize },
    /// An answer that could not be decoded or does not belong to the question.
    Malformed(String),
    /// The network failed: unreachable, reset, truncated over TCP too, no usable server.
    Network(String),
}

impl DnsError {
    /// Short stable name of the failure class, for logs.
    pub fn label(&self) -> &'static str {
        match self {
            DnsError::Timeout => "timeout",
            DnsError::Refused => "refused",
            DnsError::ServFail => "servfail",
            DnsError::Rcode(_) => "rcode",
            DnsError::Bogus => "bogus",
            DnsError::NoAddress => "no-address",
            DnsError::TooManyRecords { .. } => "too-many-records",
            DnsError::Malformed(_) => "malformed",
            DnsError::Network(_) => "network",
        }
    }
}

/// The mnemonic of an error RCODE (RFC 1035 §4.1.1, RFC 2136 §2.2, RFC 6891 §9).
fn rcode_name(code: u16) -> Option<&'static str> {
    Some(match code {
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        _ => return None,
    })
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::Timeout => f.write_str("DNS timeout"),
            DnsError::Refused => f.write_str("DNS server refused the query (REFUSED)"),
            DnsError::ServFail => f.write_str("DNS server failure (SERVFAIL)"),
            DnsError::Rcode(code) => match rcode_name(*code) {
                Some(name) => write!(f, "DNS error response {name} (RCODE {code})"),
                None => write!(f, "DNS error response RCODE {code}"),
            },
            DnsError::Bogus => f.write_str("DNSSEC validation failed"),
            DnsError::NoAddress => f.write_str("no address (A/AAAA)"),
            DnsError::TooManyRecords { limit } => write!(f, "more than {limit} TXT records"),
            DnsError::Malformed(e) => write!(f, "malformed DNS answer: {e}"),
            DnsError::Network(e) => write!(f, "DNS network error: {e}"),
        }
    }
}

impl std::error::Error for DnsError {}

impl From<&DnsError> for metrics::Outcome {
    fn from(e: &DnsError) -> metrics::Outcome {
        match e {
            DnsError::Timeout => metrics::Outcome::DnsTimeout,
            _ => metrics::Outcome::DnsError,
        }
    }
}

/// Why an HTTPS policy fetch failed (RFC 8461 §3.3). Each variant is one failure class for logs
/// and counters; [`FetchError::label`] names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The whole fetch did not finish within `[https] timeout`.
    Timeout,
    /// The policy host `mta-sts.<domain>` has no address, or resolving it failed.
    Resolve(String),
    /// TCP connect failed, or the proxy did not open a tunnel.
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
    /// Short stable name of the failure class, for logs; the same word as its metrics outcome.
    pub fn label(&self) -> &'static str {
        metrics::Outcome::from(self).label()
    }
}

impl From<&FetchError> for metrics::Outcome {
    fn from(e: &FetchError) -> metrics::Outcome {
        match e {
            FetchError::Timeout => metrics::Outcome::FetchTimeout,
            FetchError::Resolve(_) => metrics::Outcome::Resolve,
            FetchError::Connect(_) => metrics::Outcome::Connect,
            FetchError::Tls(_) => metrics::Outcome::TlsVerify,
            FetchError::Status { .. } => metrics::Outcome::HttpStatus,
            FetchError::ContentType(_) => metrics::Outcome::ContentType,
            FetchError::TooLarge => metrics::Outcome::TooLarge,
            FetchError::Http(_) => metrics::Outcome::Http,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_error_labels_are_the_historical_class_names() {
        // Logs and dashboards match on these words; they must not drift.
        let cases = [
            (FetchError::Timeout, "timeout"),
            (FetchError::Resolve(String::new()), "resolve"),
            (FetchError::Connect(String::new()), "connect"),
            (FetchError::Tls(String::new()), "tls-verify"),
            (
                FetchError::Status {
                    code: 404,
                    location: None,
                },
                "http-status",
            ),
            (FetchError::ContentType(None), "content-type"),
            (FetchError::TooLarge, "too-large"),
            (FetchError::Http(String::new()), "http"),
        ];
        for (e, label) in cases {
            assert_eq!(e.label(), label, "{e:?}");
        }
    }

    #[test]
    fn only_a_dns_timeout_counts_as_dns_timeout() {
        assert_eq!(
            metrics::Outcome::from(&DnsError::Timeout),
            metrics::Outcome::DnsTimeout
        );
        for e in [
            DnsError::Refused,
            DnsError::ServFail,
            DnsError::Rcode(1),
            DnsError::Bogus,
            DnsError::NoAddress,
            DnsError::TooManyRecords { limit: 64 },
            DnsError::Malformed("x".into()),
            DnsError::Network("x".into()),
        ] {
            assert_eq!(
                metrics::Outcome::from(&e),
                metrics::Outcome::DnsError,
                "{e}"
            );
        }
    }

    #[test]
    fn rcode_messages_name_the_code() {
        assert_eq!(
            DnsError::Rcode(4).to_string(),
            "DNS error response NOTIMP (RCODE 4)"
        );
        assert_eq!(
            DnsError::Rcode(23).to_string(),
            "DNS error response RCODE 23"
        );
        assert_eq!(
            DnsError::TooManyRecords { limit: 64 }.to_string(),
            "more than 64 TXT records"
        );
    }
}
