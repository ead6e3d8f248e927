//! The real [`DaneSource`]: asks the configured resolver (`[dns] nameservers`, or resolv.conf's)
//! for MX, A/AAAA and TLSA RRsets with the `AD` bit set (RFC 6840 §5.7) and reports the
//! resolver's verdict as it came back. No validation of our own: like Postfix
//! (`smtp_dns_support_level = dnssec`), the daemon trusts a validating resolver it reaches over
//! a trusted path (RFC 7672 §2.1.1 leaves that choice to the SMTP client), so the `AD` bit of
//! the answer is the whole DNSSEC story here.
//!
//! hickory's low-level client is used, not its resolver: the resolver neither sends `AD` nor
//! reports it back, and would cache answers the DANE cache must see change. Each question goes
//! to the first server, then to the next one on a timeout or network error, all within
//! `[dns] timeout`; a truncated UDP answer is asked again over TCP (RFC 7766 §5).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::net::DnsHandle;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::tcp::TcpClientStream;
use hickory_resolver::net::udp::UdpClientStream;
use hickory_resolver::net::xfer::FirstAnswer;
use hickory_resolver::proto::op::{DnsRequest, DnsRequestOptions, Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::time::Instant;

use super::dane::DaneSource;
use super::dns::dns_error;
use super::error::DnsError;
use super::source::BoxFuture;
use crate::config::DnsConfig;
use crate::dane::{Mx, Rrset, Tlsa};

/// More records of one type than this in an answer fail the lookup: no MX, address or TLSA
/// RRset of a real mail domain comes near it, and the cap bounds what a hostile answer costs.
pub const MAX_RECORDS: usize = 64;

/// The EDNS(0) UDP payload size we advertise (RFC 6891 §6.2.5; the 2020 DNS flag day value,
/// which avoids IP fragmentation): larger answers come back truncated and are asked over TCP.
pub const EDNS_PAYLOAD: u16 = 1232;

/// DNS for DANE through a validating resolver. Cheap to share: it holds addresses only; every
/// question opens its own UDP socket (a fresh random source port) or TCP connection.
#[derive(Debug, Clone)]
pub struct DnssecDns {
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

impl DnssecDns {
    /// `[dns] nameservers`, or when empty the nameservers of the system's resolv.conf.
    pub fn new(cfg: &DnsConfig) -> Result<DnssecDns, String> {
        let servers = if cfg.nameservers.is_empty() {
            system_nameservers()?
        } else {
            cfg.nameservers.clone()
        };
        if servers.is_empty() {
            return Err("no nameserver: [dns] nameservers is empty and so is resolv.conf".into());
        }
        if cfg.timeout.is_zero() {
            return Err("[dns] timeout must be more than zero".into());
        }
        Ok(DnssecDns {
            servers,
            timeout: cfg.timeout,
        })
    }

    /// The servers asked, in order.
    pub fn nameservers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Whether the resolver validates: it sets `AD` on the root's SOA, which is signed and
    /// anchored at every validating resolver (RFC 4035 §3.2.3). An error RCODE counts as "no":
    /// a resolver that refuses or fails that question cannot be vouching for anything else.
    /// `Err` only when no answer came at all.
    pub async fn validates(&self) -> Result<bool, String> {
        let answer = self
            .exchange(&Name::root(), RecordType::SOA)
            .await
            .map_err(|e| e.to_string())?;
        Ok(
            answer.metadata.response_code == ResponseCode::NoError
                && answer.metadata.authentic_data,
        )
    }

    /// One RRset, reduced by [`reduce`].
    async fn rrset<T>(
        &self,
        name: &str,
        rtype: RecordType,
        pick: fn(&RData) -> Option<T>,
    ) -> Rrset<T> {
        let name = match fqdn(name) {
            Ok(n) => n,
            Err(e) => return Rrset::Failed(e),
        };
        match self.exchange(&name, rtype).await {
            Ok(answer) => reduce(&answer, rtype, pick),
            Err(e) => Rrset::Failed(e.to_string()),
        }
    }

    /// The answer to one question, from the first server that gives one within the timeout.
    /// Each server gets an equal share of what is left, so a dead first server leaves time for
    /// the next one; an answer (any RCODE) is final.
    async fn exchange(&self, name: &Name, rtype: RecordType) -> Result<Message, DnsError> {
        let deadline = Instant::now() + self.timeout;
        let mut last = DnsError::Timeout;
        for (i, &server) in self.servers.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let share = left / u32::try_from(self.servers.len() - i).unwrap_or(u32::MAX);
            match tokio::time::timeout(share, ask(server, name, rtype, share)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => last = e,
                Err(_) => last = DnsError::Timeout,
            }
        }
        Err(last)
    }
}

/// One question to one server: UDP, then TCP if the UDP answer was truncated.
async fn ask(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    within: Duration,
) -> Result<Message, DnsError> {
    let started = Instant::now();
    let provider = TokioRuntimeProvider::default();
    // The stream's own bookkeeping checks the answer's ID, source and question (RFC 5452 §9.1).
    let udp = UdpClientStream::builder(server, provider.clone())
        .with_timeout(Some(within))
        .exchange();
    let answer = udp
        .send(request(name, rtype))
        .first_answer()
        .await
        .map_err(|e| dns_error(&e))?;
    if !answer.metadata.truncation {
        return Ok(answer.into_message());
    }
    let left = within.saturating_sub(started.elapsed());
    let tcp = TcpClientStream::exchange(server, None, left, Some(1), provider)
        .await
        .map_err(|e| dns_error(&e))?;
    let answer = tcp
        .send(request(name, rtype))
        .first_answer()
        .await
        .map_err(|e| dns_error(&e))?;
    Ok(answer.into_message())
}

/// `RD` and `AD` set (RFC 6840 §5.7: `AD` in a query asks for the resolver's verdict), `DO`
/// clear (no RRSIGs wanted: we do not validate), EDNS(0) with [`EDNS_PAYLOAD`].
fn request(name: &Name, rtype: RecordType) -> DnsRequest {
    let mut options = DnsRequestOptions::default();
    options.use_edns = true;
    options.edns_payload_len = EDNS_PAYLOAD;
    options.edns_set_dnssec_ok = false;
    options.recursion_desired = true;
    let mut request = DnsRequest::from_query(Query::query(name.clone(), rtype), options);
    request.metadata.authentic_data = true;
    request
}

/// `name` as a fully qualified DNS name (no search list), or why it is none.
fn fqdn(name: &str) -> Result<Name, String> {
    let mut n = Name::from_ascii(name).map_err(|e| format!("invalid DNS name {name:?}: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

/// What one answer says about the RRset of `rtype` at the question's name:
///  - NOERROR with records of the type in the answer section (any owner: the resolver followed
///    the CNAME chain, RFC 1034 §4.3.2) → `Found`, its TTL the smallest of those records and
///    of the chain's CNAMEs;
///  - NOERROR without → NODATA, NXDOMAIN → `Empty`, with the negative TTL of RFC 2308 §5;
///  - any other RCODE (SERVFAIL is also a validating resolver's answer for bogus data, RFC 4035
///    §5.5) or more than [`MAX_RECORDS`] records → `Failed`.
///
/// `authenticated` is the answer's `AD` bit, whatever the RCODE.
fn reduce<T>(answer: &Message, rtype: RecordType, pick: fn(&RData) -> Option<T>) -> Rrset<T> {
    let authenticated = answer.metadata.authentic_data;
    match answer.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Rrset::Empty {
                nxdomain: true,
                authenticated,
                ttl: negative_ttl(answer),
            };
        }
        ResponseCode::ServFail => return Rrset::Failed(DnsError::ServFail.to_string()),
        ResponseCode::Refused => return Rrset::Failed(DnsError::Refused.to_string()),
        other => return Rrset::Failed(DnsError::Rcode(u16::from(other)).to_string()),
    }
    let mut records = Vec::new();
    let mut ttl: Option<u32> = None;
    for r in &answer.answers {
        let t = r.record_type();
        if t == RecordType::CNAME {
            ttl = Some(ttl.map_or(r.ttl, |m| m.min(r.ttl)));
            continue;
        }
        if t != rtype {
            continue;
        }
        let Some(v) = pick(&r.data) else { continue };
        if records.len() == MAX_RECORDS {
            return Rrset::Failed(format!(
                "too many records: more than {MAX_RECORDS} {rtype} records"
            ));
        }
        records.push(v);
        ttl = Some(ttl.map_or(r.ttl, |m| m.min(r.ttl)));
    }
    if records.is_empty() {
        return Rrset::Empty {
            nxdomain: false,
            authenticated,
            ttl: negative_ttl(answer),
        };
    }
    Rrset::Found {
        records,
        authenticated,
        ttl: ttl.unwrap_or(0),
    }
}

/// RFC 2308 §5: the SOA of the authority section, the smaller of its TTL and its MINIMUM; 0
/// when the answer carries no SOA (RFC 2308 §5: such an answer should not be cached).
fn negative_ttl(answer: &Message) -> u32 {
    answer
        .authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })
        .unwrap_or(0)
}

/// An MX record, its exchange normalised: lowercase, no root dot, `""` for RFC 7505's null MX.
fn pick_mx(data: &RData) -> Option<Mx> {
    match data {
        RData::MX(mx) => Some(Mx {
            preference: mx.preference,
            exchange: mx
                .exchange
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase(),
        }),
        _ => None,
    }
}

fn pick_tlsa(data: &RData) -> Option<Tlsa> {
    match data {
        RData::TLSA(t) => Some(Tlsa::new(
            u8::from(t.cert_usage),
            u8::from(t.selector),
            u8::from(t.matching),
            &t.cert_data,
        )),
        _ => None,
    }
}

fn pick_a(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        _ => None,
    }
}

fn pick_aaaa(data: &RData) -> Option<IpAddr> {
    match data {
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

/// A and AAAA as one answer (what [`crate::dane::HostAnswers::addresses`] describes): failed if
/// either failed; found if either has records, authenticated only if every found part is; else
/// empty, NXDOMAIN if the A lookup said so, authenticated only if both were.
fn join_addresses(a: Rrset<IpAddr>, aaaa: Rrset<IpAddr>) -> Rrset<IpAddr> {
    match (a, aaaa) {
        (Rrset::Failed(e), _) => Rrset::Failed(e),
        (_, Rrset::Failed(e)) => Rrset::Failed(e),
        (
            Rrset::Found {
                records: mut r1,
                authenticated: a1,
                ttl: t1,
            },
            Rrset::Found {
                records: r2,
                authenticated: a2,
                ttl: t2,
            },
        ) => {
            r1.extend(r2);
            Rrset::Found {
                records: r1,
                authenticated: a1 && a2,
                ttl: t1.min(t2),
            }
        }
        (found @ Rrset::Found { .. }, Rrset::Empty { .. })
        | (Rrset::Empty { .. }, found @ Rrset::Found { .. }) => found,
        (
            Rrset::Empty {
                nxdomain,
                authenticated: a1,
                ttl: t1,
            },
            Rrset::Empty {
                authenticated: a2,
                ttl: t2,
                ..
            },
        ) => Rrset::Empty {
            nxdomain,
            authenticated: a1 && a2,
            ttl: t1.min(t2),
        },
    }
}

/// The nameservers of the system's resolver configuration (resolv.conf), in its order.
fn system_nameservers() -> Result<Vec<SocketAddr>, String> {
    let (config, _) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?;
    let mut servers: Vec<SocketAddr> = Vec::new();
    for ns in config.name_servers() {
        let port = ns.connections.first().map_or(53, |c| c.port);
        let addr = SocketAddr::new(ns.ip, port);
        if !servers.contains(&addr) {
            servers.push(addr);
        }
    }
    Ok(servers)
}

impl DaneSource for DnssecDns {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Rrset<Mx>> {
        Box::pin(self.rrset(domain, RecordType::MX, pick_mx))
    }

    fn addresses<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Rrset<IpAddr>> {
        Box::pin(async move {
            let (a, aaaa) = tokio::join!(
                self.rrset(host, RecordType::A, pick_a),
                self.rrset(host, RecordType::AAAA, pick_aaaa)
            );
            join_addresses(a, aaaa)
        })
    }

    fn tlsa<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Rrset<Tlsa>> {
        Box::pin(self.rrset(name, RecordType::TLSA, pick_tlsa))
    }
}

#[cfg(test)]
mod tests {
    use hickory_resolver::proto::op::OpCode;
    use hickory_resolver::proto::rr::Record;
    use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
    use hickory_resolver::proto::rr::rdata::{A, CNAME, MX, SOA, TLSA};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn answer(
        rcode: ResponseCode,
        ad: bool,
        answers: Vec<Record>,
        soa: Option<(u32, u32)>,
    ) -> Message {
        let mut m = Message::response(7, OpCode::Query);
        m.metadata.response_code = rcode;
        m.metadata.authentic_data = ad;
        m.answers = answers;
        if let Some((ttl, minimum)) = soa {
            let soa = SOA::new(name("ns.example."), name("h.example."), 1, 2, 3, 4, minimum);
            m.authorities
                .push(Record::from_rdata(name("example."), ttl, RData::SOA(soa)));
        }
        m
    }

    fn mx(owner: &str, ttl: u32, pref: u16, exchange: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::MX(MX::new(pref, name(exchange))))
    }

    #[test]
    fn mx_exchanges_are_lowercase_without_the_root_dot_and_null_mx_is_empty() {
        let m = answer(
            ResponseCode::NoError,
            true,
            vec![
                mx("example.", 300, 10, "MX1.Example."),
                mx("example.", 200, 0, "."),
            ],
            None,
        );
        assert_eq!(
            reduce(&m, RecordType::MX, pick_mx),
            Rrset::Found {
                records: vec![
                    Mx {
                        preference: 10,
                        exchange: "mx1.example".into()
                    },
                    // RFC 7505 §3: the null MX's exchange is the root.
                    Mx {
                        preference: 0,
                        exchange: String::new()
                    },
                ],
                authenticated: true,
                ttl: 200,
            }
        );
    }

    #[test]
    fn records_at_the_end_of_a_cname_chain_count_and_the_chain_ttl_too() {
        let cname = Record::from_rdata(
            name("_25._tcp.mx.example."),
            30,
            RData::CNAME(CNAME(name("tlsa.example."))),
        );
        let tlsa = Record::from_rdata(
            name("tlsa.example."),
            600,
            RData::TLSA(TLSA::new(
                CertUsage::DaneEe,
                Selector::Spki,
                Matching::Sha256,
                vec![0xab; 32],
            )),
        );
        let m = answer(ResponseCode::NoError, false, vec![cname, tlsa], None);
        assert_eq!(
            reduce(&m, RecordType::TLSA, pick_tlsa),
            Rrset::Found {
                records: vec![Tlsa::new(3, 1, 1, &[0xab; 32])],
                authenticated: false,
                ttl: 30,
            }
        );
    }

    #[test]
    fn negative_answers_carry_the_rfc2308_ttl_from_the_soa() {
        // RFC 2308 §5: min(SOA TTL, SOA MINIMUM).
        let nodata = answer(ResponseCode::NoError, true, vec![], Some((900, 120)));
        assert_eq!(
            reduce(&nodata, RecordType::TLSA, pick_tlsa),
            Rrset::Empty {
                nxdomain: false,
                authenticated: true,
                ttl: 120
            }
        );
        let nx = answer(ResponseCode::NXDomain, false, vec![], Some((60, 3600)));
        assert_eq!(
            reduce(&nx, RecordType::MX, pick_mx),
            Rrset::Empty {
                nxdomain: true,
                authenticated: false,
                ttl: 60
            }
        );
        // No SOA: nothing to cache by (RFC 2308 §5).
        let bare = answer(ResponseCode::NXDomain, true, vec![], None);
        assert_eq!(
            reduce(&bare, RecordType::MX, pick_mx),
            Rrset::Empty {
                nxdomain: true,
                authenticated: true,
                ttl: 0
            }
        );
        // Records of another type only (a CNAME whose target has no MX): NODATA.
        let other = answer(
            ResponseCode::NoError,
            true,
            vec![Record::from_rdata(
                name("example."),
                5,
                RData::A(A::new(192, 0, 2, 1)),
            )],
            Some((10, 10)),
        );
        assert_eq!(
            reduce(&other, RecordType::MX, pick_mx),
            Rrset::Empty {
                nxdomain: false,
                authenticated: true,
                ttl: 10
            }
        );
    }

    #[test]
    fn error_rcodes_fail_whatever_the_ad_bit() {
        for (rcode, text) in [
            (ResponseCode::ServFail, "SERVFAIL"),
            (ResponseCode::Refused, "REFUSED"),
            (ResponseCode::FormErr, "FORMERR"),
            (ResponseCode::NotImp, "NOTIMP"),
        ] {
            match reduce(&answer(rcode, true, vec![], None), RecordType::MX, pick_mx) {
                Rrset::Failed(reason) => assert!(reason.contains(text), "{reason}"),
                other => panic!("{rcode:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn more_than_64_records_of_a_type_fail_the_lookup() {
        let a = |i: u8| Record::from_rdata(name("mx.example."), 60, RData::A(A::new(10, 0, 0, i)));
        let at_cap = answer(ResponseCode::NoError, true, (0..64).map(a).collect(), None);
        match reduce(&at_cap, RecordType::A, pick_a) {
            Rrset::Found { records, .. } => assert_eq!(records.len(), MAX_RECORDS),
            other => panic!("{other:?}"),
        }
        let over = answer(ResponseCode::NoError, true, (0..65).map(a).collect(), None);
        match reduce(&over, RecordType::A, pick_a) {
            Rrset::Failed(reason) => assert!(reason.contains("too many records"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    fn found(ip: &str, authenticated: bool, ttl: u32) -> Rrset<IpAddr> {
        Rrset::Found {
            records: vec![ip.parse().unwrap()],
            authenticated,
            ttl,
        }
    }

    fn empty(nxdomain: bool, authenticated: bool, ttl: u32) -> Rrset<IpAddr> {
        Rrset::Empty {
            nxdomain,
            authenticated,
            ttl,
        }
    }

    #[test]
    fn a_and_aaaa_join_into_one_address_answer() {
        let v4 = "192.0.2.1";
        let v6 = "2001:db8::1";
        // Both found: authenticated only if both are, the smaller TTL.
        assert_eq!(
            join_addresses(found(v4, true, 300), found(v6, false, 100)),
            Rrset::Found {
                records: vec![v4.parse().unwrap(), v6.parse().unwrap()],
                authenticated: false,
                ttl: 100
            }
        );
        // An empty half does not weaken the found one (RFC 7672 §2.2 looks at the records).
        assert_eq!(
            join_addresses(empty(false, false, 5), found(v6, true, 100)),
            found(v6, true, 100)
        );
        assert_eq!(
            join_addresses(found(v4, true, 300), empty(false, false, 5)),
            found(v4, true, 300)
        );
        // Either failing fails the whole.
        assert_eq!(
            join_addresses(found(v4, true, 300), Rrset::Failed("x".into())),
            Rrset::Failed("x".into())
        );
        assert_eq!(
            join_addresses(Rrset::Failed("y".into()), found(v6, true, 1)),
            Rrset::Failed("y".into())
        );
        // Both empty: NXDOMAIN as the A answer said, authenticated only if both were.
        assert_eq!(
            join_addresses(empty(true, true, 60), empty(true, false, 30)),
            empty(true, false, 30)
        );
        assert_eq!(
            join_addresses(empty(false, true, 60), empty(false, true, 90)),
            empty(false, true, 60)
        );
    }

    #[test]
    fn queries_ask_for_the_ad_bit_with_edns_and_no_do() {
        let r = request(&name("example."), RecordType::MX);
        // RFC 6840 §5.7: AD in the query asks the resolver for its verdict.
        assert!(r.metadata.authentic_data);
        assert!(r.metadata.recursion_desired);
        assert!(!r.metadata.checking_disabled);
        let edns = r.edns.as_ref().expect("EDNS(0)");
        assert_eq!(edns.max_payload(), EDNS_PAYLOAD);
        assert!(!edns.flags().dnssec_ok);
        assert_eq!(r.queries.len(), 1);
        assert_eq!(r.queries[0].query_type(), RecordType::MX);
    }

    #[test]
    fn names_are_asked_fully_qualified() {
        assert!(fqdn("_25._tcp.mx.example").unwrap().is_fqdn());
        assert_eq!(fqdn("example.").unwrap().to_ascii(), "example.");
        assert!(fqdn("a..b").is_err());
    }

    #[test]
    fn configured_nameservers_are_used_in_order() {
        let cfg = DnsConfig {
            nameservers: vec![
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
            ],
            timeout: Duration::from_secs(2),
        };
        let d = DnssecDns::new(&cfg).unwrap();
        assert_eq!(d.nameservers(), &cfg.nameservers[..]);
        let zero = DnsConfig {
            timeout: Duration::ZERO,
            ..cfg
        };
        assert!(DnssecDns::new(&zero).is_err());
    }
}
