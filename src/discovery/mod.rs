//! Discovery: everything that asks the network about a domain's MTA-STS policy and its DANE
//! state.
//!
//! Owns the failure vocabulary (`error.rs`, a leaf: [`DnsError`] and [`FetchError`], their
//! messages, labels and metrics outcomes), the [`PolicySource`] seam (`source.rs`: the trait and
//! the outcome types that answers, logs and counters share), the real DNS edge (`dns.rs`, with
//! `dnssec.rs` the only users of hickory), the real HTTPS edge (`https.rs`, the only user of
//! hyper's client and rustls) with the internal-address block of direct fetches (`address.rs`, a
//! leaf), the real source that joins them (`net.rs`) and one discovery run over any source
//! (`discover.rs`: TXT record, fetch, RFC 8461 parse). For DANE (RFC 7672): the [`DaneSource`]
//! seam with one DANE discovery over it (`dane.rs`, judged by the pure rules of `crate::dane`)
//! and the real source that asks the validating resolver and reads its `AD` bit (`dnssec.rs`).
//!
//! May import: `policy`, `dane`, `config`, `metrics`, `clock`. Never the cache, the resolver or
//! anything that serves. Inside: `error` ← `source` ← `dns` ← `https` ← `net`, and `address` ←
//! `https`; `discover` uses `error` and `source` only; `source` ← `dane` ← `dnssec`, and `dns`
//! ← `dnssec` (hickory's errors in our vocabulary).

mod address;
pub mod dane;
mod discover;
pub mod dns;
pub mod dnssec;
mod error;
pub mod https;
pub mod net;
pub mod source;

pub use dane::{DaneDiscovery, DaneSource, discover_dane};
pub use discover::{Discovery, FetchFailure, Known, Outcome, discover};
pub use dnssec::DnssecDns;
pub use error::{DnsError, FetchError};
pub use net::NetSource;
#[cfg(test)]
pub(crate) use source::fake;
pub use source::{BoxFuture, NoPolicy, PolicySource, TxtLookup};
