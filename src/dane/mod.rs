//! DANE for SMTP (RFC 7672) as far as a policy table needs it: which TLSA records are usable,
//! and what the DNS answers about a destination (its MX RRset, each host's addresses and TLSA
//! RRset, each with the resolver's `AD` verdict) mean for the Postfix level to answer.
//!
//! Pure: no I/O, no clock. The network edge (`discovery`) asks the questions and hands the
//! answers to [`classify`]; the cache stores the resulting [`DaneState`]; `answer` turns its
//! [`Verdict`] into `dane-only`, `dane`, or "use the MTA-STS answer". Imports `key` only (the
//! normalised host name of a nexthop).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// At most this many MX hosts are looked at (lowest preference first). A destination with more
/// is judged on these only and never gets `dane-only`: not every host was seen.
pub const MAX_HOSTS: usize = 16;
/// TLSA records kept per host; more are counted for the verdict but not stored.
pub const MAX_TLSA: usize = 32;
/// Certificate association data kept per record, in bytes (SHA-512 is 64; a full certificate,
/// matching type 0, is cut for display only: the verdict never looks at the data).
pub const MAX_TLSA_DATA: usize = 64;
/// The DANE state is checked again at least this often and at most this rarely, whatever the
/// TTLs say (a TTL of 0 must not make every lookup a DNS lookup; a week-long TTL must not hide
/// a key rollover for a week).
pub const MIN_TTL: Duration = Duration::from_secs(60);
pub const MAX_TTL: Duration = Duration::from_secs(86_400);

/// Where a Postfix nexthop sends mail: the MX hosts of `host`, or `host` itself (`[host]`,
/// RFC 7672 §3.2.2 "non-MX destinations"), on `port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// Normalised A-label name without the root dot.
    pub host: String,
    pub port: u16,
    /// Look up MX records (a `domain` or `domain:port` nexthop), or use the host itself.
    pub mx: bool,
}

impl Destination {
    /// The destination of a Postfix nexthop key: `domain` and `domain:port` look up MX records,
    /// `[host]` and `[host]:port` do not (postconf(5) smtp nexthop syntax); port 25 when none is
    /// given. The host is normalised as [`crate::key::policy_domain`] does it.
    pub fn from_key(key: &[u8]) -> Result<Destination, crate::key::Skip> {
        let host = crate::key::policy_domain(key)?;
        let bracketed = key.first() == Some(&b'[');
        let after = if bracketed {
            key.iter()
                .position(|&b| b == b']')
                .map_or(&[][..], |i| &key[i + 1..])
        } else {
            key.iter()
                .position(|&b| b == b':')
                .map_or(&[][..], |i| &key[i..])
        };
        // policy_domain already checked the port's digits and range.
        let port = after
            .strip_prefix(b":")
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| p.parse().ok())
            .unwrap_or(25);
        Ok(Destination {
            host,
            port,
            mx: !bracketed,
        })
    }

    /// The cache key, in Postfix's nexthop spelling: `example.com`, `example.com:587`,
    /// `[mail.example.com]`, `[mail.example.com]:587`.
    pub fn key(&self) -> String {
        self.key_ref().into_owned()
    }

    /// [`Destination::key`] without a copy for the common case (a domain, port 25: the key is
    /// the host name itself), for the lookup path.
    pub fn key_ref(&self) -> std::borrow::Cow<'_, str> {
        match (self.mx, self.port) {
            (true, 25) => std::borrow::Cow::Borrowed(&self.host),
            (true, p) => format!("{}:{p}", self.host).into(),
            (false, 25) => format!("[{}]", self.host).into(),
            (false, p) => format!("[{}]:{p}", self.host).into(),
        }
    }

    /// The TLSA owner name of `server` for this destination's port (RFC 7672 §2.2, §3.2.2).
    pub fn tlsa_name(&self, server: &str) -> String {
        format!("_{}._tcp.{server}", self.port)
    }
}

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    /// Certificate association data, at most [`MAX_TLSA_DATA`] bytes of it, hex.
    pub data: String,
}

impl Tlsa {
    pub fn new(usage: u8, selector: u8, matching: u8, data: &[u8]) -> Tlsa {
        let data = data
            .iter()
            .take(MAX_TLSA_DATA)
            .map(|b| format!("{b:02x}"))
            .collect();
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    /// RFC 7672 §3.1: SMTP uses DANE-TA(2) and DANE-EE(3) only (PKIX-TA(0) and PKIX-EE(1) are
    /// unusable), with selector Cert(0) or SPKI(1) and matching type Full(0), SHA2-256(1) or
    /// SHA2-512(2).
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && matches!(self.selector, 0 | 1) && self.matching <= 2
    }
}

impl fmt::Display for Tlsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.usage, self.selector, self.matching, self.data
        )
    }
}

/// One MX record: preference and exchange (RFC 1035 §3.3.9), exchange normalised (lowercase,
/// no root dot; `""` for RFC 7505's null MX `.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    pub preference: u16,
    pub exchange: String,
}

/// What the resolver said about one RRset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rrset<T> {
    /// Records of the asked type (CNAMEs followed by the resolver).
    Found {
        records: Vec<T>,
        /// The resolver's `AD` bit (RFC 4035 §3.2.3, RFC 6840 §5.7).
        authenticated: bool,
        ttl: u32,
    },
    /// NXDOMAIN or NODATA.
    Empty {
        nxdomain: bool,
        authenticated: bool,
        /// The negative-caching TTL (RFC 2308 §5), 0 when unknown.
        ttl: u32,
    },
    /// SERVFAIL (also a DNSSEC-bogus answer at a validating resolver), timeout, network error,
    /// another error RCODE: nothing can be concluded.
    Failed(String),
}

impl<T> Rrset<T> {
    fn ttl(&self) -> Option<u32> {
        match self {
            Rrset::Found { ttl, .. } | Rrset::Empty { ttl, .. } => Some(*ttl),
            Rrset::Failed(_) => None,
        }
    }
}

/// What DNS said about one server of the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAnswers {
    pub name: String,
    /// A and AAAA together: `Found` when either has records (authenticated only if every
    /// non-empty one was), `Failed` when either failed.
    pub addresses: Rrset<std::net::IpAddr>,
    pub tlsa: Rrset<Tlsa>,
}

/// One server as the cache keeps it, for `ctl show` and the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    pub name: String,
    /// Its address records were authenticated (RFC 7672 §2.2: otherwise DANE does not apply).
    pub secure: bool,
    /// Has any address at all (a host without one cannot receive mail and is left out).
    pub addressable: bool,
    /// The TLSA RRset was authenticated.
    pub tlsa_authenticated: bool,
    /// The authenticated TLSA records (at most [`MAX_TLSA`]).
    pub tlsa: Vec<Tlsa>,
}

impl HostState {
    /// DANE applies to this host with at least one usable record (RFC 7672 §3.1).
    pub fn usable(&self) -> bool {
        self.has_tlsa() && self.tlsa.iter().any(Tlsa::usable)
    }

    /// DANE applies to this host: secure addresses and a non-empty authenticated TLSA RRset
    /// (usable or not: RFC 7672 §3.1 still makes TLS mandatory when none is usable).
    pub fn has_tlsa(&self) -> bool {
        self.secure && self.tlsa_authenticated && !self.tlsa.is_empty()
    }
}

/// What the DANE state means for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every addressable server has usable TLSA: Postfix level `dane-only`.
    DaneOnly,
    /// Some servers have TLSA records, not all of them usable ones: Postfix level `dane`.
    Dane,
    /// MX RRset (or the host's addresses) not authenticated: an unsigned zone, the MTA-STS
    /// answer applies.
    Unsigned,
    /// Authenticated, but no server publishes TLSA records: the MTA-STS answer applies.
    NoTlsa,
    /// RFC 7505 null MX: the domain accepts no mail; not found.
    NullMx,
    /// The domain does not exist; not found.
    NxDomain,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::DaneOnly => "dane-only",
            Verdict::Dane => "dane",
            Verdict::Unsigned => "unsigned",
            Verdict::NoTlsa => "no-tlsa",
            Verdict::NullMx => "null-mx",
            Verdict::NxDomain => "nxdomain",
        }
    }

    pub const ALL: [Verdict; 6] = [
        Verdict::DaneOnly,
        Verdict::Dane,
        Verdict::Unsigned,
        Verdict::NoTlsa,
        Verdict::NullMx,
        Verdict::NxDomain,
    ];

    /// The Postfix level this verdict answers with, if it decides the answer by itself.
    pub fn level(self) -> Option<&'static str> {
        match self {
            Verdict::DaneOnly => Some("dane-only"),
            Verdict::Dane => Some("dane"),
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The DANE state of one destination: the verdict and what it was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaneState {
    pub verdict: Verdict,
    /// The MX RRset was authenticated (for `[host]` destinations: the host's addresses were).
    pub mx_authenticated: bool,
    /// The servers looked at, lowest MX preference first.
    pub hosts: Vec<HostState>,
    /// How long this state holds: the smallest TTL of the RRsets it was built from, within
    /// [`MIN_TTL`]..=[`MAX_TTL`].
    #[serde(with = "secs")]
    pub ttl: Duration,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

impl DaneState {
    /// A state read back from disk (or another host) is untrusted input: bounded sizes, a
    /// TTL in range, and a verdict that follows from its hosts as [`classify`] would decide it.
    pub fn validate(&self) -> Result<(), String> {
        if self.hosts.len() > MAX_HOSTS {
            return Err(format!("more than {MAX_HOSTS} hosts"));
        }
        if self.ttl < MIN_TTL || self.ttl > MAX_TTL {
            return Err("TTL out of range".into());
        }
        for h in &self.hosts {
            if h.tlsa.len() > MAX_TLSA || h.name.len() > 253 {
                return Err("host entry too large".into());
            }
            if h.tlsa.iter().any(|t| t.data.len() > 2 * MAX_TLSA_DATA) {
                return Err("TLSA data too long".into());
            }
        }
        let derived = match self.verdict {
            Verdict::NullMx | Verdict::NxDomain | Verdict::Unsigned => self.verdict,
            _ => verdict_of(&self.hosts, false),
        };
        if derived != self.verdict {
            return Err(format!(
                "verdict {} does not follow from its hosts ({derived})",
                self.verdict
            ));
        }
        Ok(())
    }
}

/// Why no DANE state could be learnt: a lookup failed, so Postfix would defer too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Which lookup, e.g. `MX example.com`, `TLSA _25._tcp.mx.example.com`.
    pub lookup: String,
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.lookup, self.reason)
    }
}

/// The first step: what the MX answer (None for a `[host]` destination) says. Either a verdict
/// that needs no host lookups, or the servers to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Servers {
    Decided(DaneState),
    Look {
        hosts: Vec<String>,
        mx_authenticated: bool,
        /// The MX RRset's TTL (None for `[host]`).
        ttl: Option<u32>,
        /// More MX hosts than [`MAX_HOSTS`]: at most `dane`.
        truncated: bool,
    },
}

/// RFC 7672 §2.2: DANE needs an authenticated MX RRset; RFC 7505 null MX and NXDOMAIN mean
/// no mail; no MX records means the domain itself (RFC 5321 §5.1).
pub fn servers(dest: &Destination, mx: Option<&Rrset<Mx>>) -> Result<Servers, Failure> {
    let Some(mx) = mx.filter(|_| dest.mx) else {
        return Ok(Servers::Look {
            hosts: vec![dest.host.clone()],
            mx_authenticated: true,
            ttl: None,
            truncated: false,
        });
    };
    let decided = |verdict, authenticated, ttl: u32| {
        Ok(Servers::Decided(DaneState {
            verdict,
            mx_authenticated: authenticated,
            hosts: Vec::new(),
            ttl: clamp_ttl(Some(ttl)),
        }))
    };
    match mx {
        Rrset::Failed(reason) => Err(Failure {
            lookup: format!("MX {}", dest.host),
            reason: reason.clone(),
        }),
        Rrset::Empty {
            nxdomain: true,
            authenticated,
            ttl,
        } => decided(Verdict::NxDomain, *authenticated, *ttl),
        Rrset::Found {
            records,
            authenticated,
            ttl,
        } if records.len() == 1 && records[0].exchange.is_empty() => {
            decided(Verdict::NullMx, *authenticated, *ttl)
        }
        Rrset::Found {
            authenticated: false,
            ttl,
            ..
        }
        | Rrset::Empty {
            authenticated: false,
            ttl,
            ..
        } => decided(Verdict::Unsigned, false, *ttl),
        Rrset::Empty { ttl, .. } => Ok(Servers::Look {
            hosts: vec![dest.host.clone()],
            mx_authenticated: true,
            ttl: Some(*ttl),
            truncated: false,
        }),
        Rrset::Found { records, ttl, .. } => {
            let mut sorted: Vec<&Mx> = records.iter().filter(|m| !m.exchange.is_empty()).collect();
            sorted.sort_by_key(|m| m.preference);
            let mut hosts: Vec<String> = Vec::new();
            for m in sorted {
                if !hosts.contains(&m.exchange) {
                    hosts.push(m.exchange.clone());
                }
            }
            let truncated = hosts.len() > MAX_HOSTS;
            hosts.truncate(MAX_HOSTS);
            Ok(Servers::Look {
                hosts,
                mx_authenticated: true,
                ttl: Some(*ttl),
                truncated,
            })
        }
    }
}

/// The second step: the servers' address and TLSA answers → the DANE state. A failed address
/// or TLSA lookup of a server in an authenticated MX set fails the whole state (RFC 7672
/// §2.1.1: Postfix defers such a host rather than deliver without DANE). For a `[host]`
/// destination an unauthenticated address RRset means an unsigned zone.
pub fn classify(
    dest: &Destination,
    servers: Servers,
    answers: &[HostAnswers],
) -> Result<DaneState, Failure> {
    let (mx_authenticated, mx_ttl, truncated) = match servers {
        Servers::Decided(state) => return Ok(state),
        Servers::Look {
            mx_authenticated,
            ttl,
            truncated,
            ..
        } => (mx_authenticated, ttl, truncated),
    };
    let mut ttl = mx_ttl;
    let mut hosts = Vec::with_capacity(answers.len());
    for a in answers {
        let addresses_secure = match &a.addresses {
            Rrset::Failed(reason) => {
                return Err(Failure {
                    lookup: format!("A/AAAA {}", a.name),
                    reason: reason.clone(),
                });
            }
            Rrset::Found { authenticated, .. } => Some(*authenticated),
            Rrset::Empty { .. } => None,
        };
        ttl = min_ttl(ttl, a.addresses.ttl());
        if !dest.mx && addresses_secure != Some(true) {
            // RFC 7672 §3.2.2: a non-MX destination's own address records must be secure.
            return Ok(DaneState {
                verdict: Verdict::Unsigned,
                mx_authenticated: false,
                hosts: Vec::new(),
                ttl: clamp_ttl(ttl),
            });
        }
        let mut host = HostState {
            name: a.name.clone(),
            secure: addresses_secure == Some(true),
            addressable: addresses_secure.is_some(),
            tlsa_authenticated: false,
            tlsa: Vec::new(),
        };
        if host.secure {
            match &a.tlsa {
                Rrset::Failed(reason) => {
                    return Err(Failure {
                        lookup: format!("TLSA {}", dest.tlsa_name(&a.name)),
                        reason: reason.clone(),
                    });
                }
                Rrset::Found {
                    records,
                    authenticated,
                    ttl: t,
                } => {
                    ttl = min_ttl(ttl, Some(*t));
                    host.tlsa_authenticated = *authenticated;
                    if *authenticated {
                        // Usable records first, so that the kept ones decide like all of them.
                        let mut rs: Vec<Tlsa> = records.clone();
                        rs.sort_by_key(|t| !t.usable());
                        rs.truncate(MAX_TLSA);
                        host.tlsa = rs;
                    }
                }
                Rrset::Empty {
                    authenticated,
                    ttl: t,
                    ..
                } => {
                    ttl = min_ttl(ttl, Some(*t));
                    host.tlsa_authenticated = *authenticated;
                }
            }
        }
        hosts.push(host);
    }
    Ok(DaneState {
        verdict: verdict_of(&hosts, truncated),
        mx_authenticated,
        hosts,
        ttl: clamp_ttl(ttl),
    })
}

/// Every addressable server usable → `dane-only`; any with TLSA → `dane`; none → MTA-STS.
fn verdict_of(hosts: &[HostState], truncated: bool) -> Verdict {
    let addressable: Vec<&HostState> = hosts.iter().filter(|h| h.addressable).collect();
    if !truncated && !addressable.is_empty() && addressable.iter().all(|h| h.usable()) {
        Verdict::DaneOnly
    } else if addressable.iter().any(|h| h.has_tlsa()) {
        Verdict::Dane
    } else {
        Verdict::NoTlsa
    }
}

fn min_ttl(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// RFC 7672 asks for no particular refresh: the TTLs say how long an answer holds, bounded so a
/// zero TTL does not turn every lookup into DNS traffic and a long one does not hide a rollover.
pub fn clamp_ttl(ttl: Option<u32>) -> Duration {
    Duration::from_secs(u64::from(ttl.unwrap_or(0))).clamp(MIN_TTL, MAX_TTL)
}

#[cfg(test)]
mod tests;
