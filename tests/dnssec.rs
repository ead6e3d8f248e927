//! The DANE network edge ([`DnssecDns`]) against DNS servers: the test world's server playing a
//! validating resolver (`World::sign`), and a real validating resolver (unbound over a fake
//! signed hierarchy, `common::unbound`; CI installs it, `CI=true` makes its absence a failure).
//!
//! What is checked: the `AD` bit of the answer becomes `authenticated` (RFC 6840 §5.7), the
//! RCODE and the records become Found / Empty (NODATA, NXDOMAIN with the RFC 2308 §5 TTL) /
//! Failed, null MX (RFC 7505), CNAMEs, TCP after a truncated UDP answer (RFC 7766 §5), the
//! record cap, the next nameserver after a dead one, and `validates()`.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::World;
use common::unbound::{self, Unbound};
use mta_sts_policyd::config::DnsConfig;
use mta_sts_policyd::dane::{Destination, Mx, Rrset, Tlsa, Verdict};
use mta_sts_policyd::discovery::dnssec::MAX_RECORDS;
use mta_sts_policyd::discovery::{DaneSource, DnssecDns, discover_dane};

fn dns(servers: &[SocketAddr], timeout: Duration) -> DnssecDns {
    DnssecDns::new(&DnsConfig {
        nameservers: servers.to_vec(),
        timeout,
    })
    .expect("DnssecDns::new")
}

fn dns_at(addr: SocketAddr) -> DnssecDns {
    dns(&[addr], Duration::from_secs(3))
}

fn mx(preference: u16, exchange: &str) -> Mx {
    Mx {
        preference,
        exchange: exchange.into(),
    }
}

fn failed<T: std::fmt::Debug>(r: &Rrset<T>) -> &str {
    match r {
        Rrset::Failed(reason) => reason,
        other => panic!("expected Failed, got {other:?}"),
    }
}

fn dest(host: &str) -> Destination {
    Destination {
        host: host.into(),
        port: 25,
        mx: true,
    }
}

// ------------------------------------------------------------------ the test world

#[tokio::test]
async fn world_ad_bit_follows_the_signed_suffix() {
    let w = World::start().await;
    w.set_mx("sec.test", &[(10, "MX.Sec.Test")]).await;
    w.set_mx("plain.test", &[(10, "mx.plain.test")]).await;
    w.sign("sec.test");
    let d = dns_at(w.dns_addr());

    let signed = Rrset::Found {
        records: vec![mx(10, "mx.sec.test")],
        authenticated: true,
        ttl: common::DNS_TTL,
    };
    assert_eq!(d.mx("sec.test").await, signed);
    assert_eq!(
        d.mx("plain.test").await,
        Rrset::Found {
            records: vec![mx(10, "mx.plain.test")],
            authenticated: false,
            ttl: common::DNS_TTL,
        }
    );
    // Names under the suffix too; the suffix's parent is not covered.
    w.set_a("mx.sec.test", Ipv4Addr::new(192, 0, 2, 25)).await;
    assert!(matches!(
        d.addresses("mx.sec.test").await,
        Rrset::Found {
            authenticated: true,
            ..
        }
    ));
    w.set_mx("test", &[(10, "mx.sec.test")]).await;
    assert!(matches!(
        d.mx("test").await,
        Rrset::Found {
            authenticated: false,
            ..
        }
    ));

    w.unsign("sec.test");
    assert!(matches!(
        d.mx("sec.test").await,
        Rrset::Found {
            authenticated: false,
            ..
        }
    ));
}

/// The world answers like a validating resolver: `AD` only to a query that asks for it, with
/// `AD=1` or `DO=1` (RFC 6840 §5.7).
#[tokio::test]
async fn world_sets_ad_only_when_the_query_asks_for_it() {
    use hickory_resolver::net::DnsHandle;
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::net::udp::UdpClientStream;
    use hickory_resolver::net::xfer::FirstAnswer;
    use hickory_resolver::proto::op::{DnsRequest, DnsRequestOptions, Query};
    use hickory_resolver::proto::rr::{Name, RecordType};

    let w = World::start().await;
    w.sign("sec.test");
    w.set_mx("sec.test", &[(10, "mx.sec.test")]).await;
    let ask = |ad: bool, dnssec_ok: bool| {
        let addr = w.dns_addr();
        async move {
            let mut options = DnsRequestOptions::default();
            options.edns_set_dnssec_ok = dnssec_ok;
            let query = Query::query(Name::from_ascii("sec.test.").unwrap(), RecordType::MX);
            let mut request = DnsRequest::from_query(query, options);
            request.metadata.authentic_data = ad;
            let client = UdpClientStream::builder(addr, TokioRuntimeProvider::default())
                .with_timeout(Some(Duration::from_secs(3)))
                .exchange();
            let answer = client.send(request).first_answer().await.unwrap();
            assert_eq!(answer.answers.len(), 1);
            answer.metadata.authentic_data
        }
    };
    assert!(!ask(false, false).await);
    assert!(ask(true, false).await);
    assert!(ask(false, true).await);
}

#[tokio::test]
async fn world_addresses_join_a_and_aaaa() {
    let w = World::start().await;
    w.sign("sec.test");
    w.set_a("both.sec.test", Ipv4Addr::new(192, 0, 2, 1)).await;
    w.set_aaaa("both.sec.test", "2001:db8::1".parse::<Ipv6Addr>().unwrap())
        .await;
    w.set_aaaa("v6.sec.test", "2001:db8::2".parse::<Ipv6Addr>().unwrap())
        .await;
    let d = dns_at(w.dns_addr());

    match d.addresses("both.sec.test").await {
        Rrset::Found {
            mut records,
            authenticated,
            ..
        } => {
            records.sort();
            assert_eq!(
                records,
                vec![
                    "192.0.2.1".parse::<std::net::IpAddr>().unwrap(),
                    "2001:db8::1".parse().unwrap()
                ]
            );
            assert!(authenticated);
        }
        other => panic!("{other:?}"),
    }
    // AAAA only: found (the empty A half does not matter).
    assert_eq!(
        d.addresses("v6.sec.test").await,
        Rrset::Found {
            records: vec!["2001:db8::2".parse().unwrap()],
            authenticated: true,
            ttl: common::DNS_TTL,
        }
    );
    assert!(matches!(
        d.addresses("nowhere.sec.test").await,
        Rrset::Empty {
            nxdomain: true,
            authenticated: true,
            ..
        }
    ));
    // Either half failing fails the whole (RFC 7672 §2.1.1: nothing can be concluded).
    w.servfail("both.sec.test");
    assert!(failed(&d.addresses("both.sec.test").await).contains("SERVFAIL"));
}

#[tokio::test]
async fn world_negative_answers_carry_the_soa_ttl() {
    let w = World::start().await;
    w.set_negative_ttl(120).await;
    w.set_a("mx.sec.test", Ipv4Addr::new(192, 0, 2, 25)).await;
    let d = dns_at(w.dns_addr());

    // NODATA: the name exists, the type does not (RFC 2308 §2.2).
    assert_eq!(
        d.tlsa("mx.sec.test").await,
        Rrset::Empty {
            nxdomain: false,
            authenticated: false,
            ttl: 120
        }
    );
    // NXDOMAIN (RFC 2308 §2.1), authenticated under a signed suffix (a proven denial).
    w.sign("sec.test");
    assert_eq!(
        d.tlsa("_25._tcp.mx.sec.test").await,
        Rrset::Empty {
            nxdomain: true,
            authenticated: true,
            ttl: 120
        }
    );
}

#[tokio::test]
async fn world_null_mx_is_an_empty_exchange() {
    let w = World::start().await;
    w.sign("nomail.test");
    w.set_mx("nomail.test", &[(0, ".")]).await;
    let d = dns_at(w.dns_addr());
    // RFC 7505 §3.
    assert_eq!(
        d.mx("nomail.test").await,
        Rrset::Found {
            records: vec![mx(0, "")],
            authenticated: true,
            ttl: common::DNS_TTL,
        }
    );
    let v = discover_dane(&d, &dest("nomail.test")).await;
    assert_eq!(v.outcome.unwrap().verdict, Verdict::NullMx);
}

#[tokio::test]
async fn world_tlsa_behind_a_cname_is_found() {
    let w = World::start().await;
    w.sign("sec.test");
    w.set_cname("_25._tcp.mx.sec.test", "tlsa.sec.test").await;
    w.set_tlsa(
        "tlsa.sec.test",
        &[(3, 1, 1, &[0xaa; 32]), (2, 0, 1, &[0xbb; 32])],
    )
    .await;
    let d = dns_at(w.dns_addr());
    assert_eq!(
        d.tlsa("_25._tcp.mx.sec.test").await,
        Rrset::Found {
            records: vec![
                Tlsa::new(3, 1, 1, &[0xaa; 32]),
                Tlsa::new(2, 0, 1, &[0xbb; 32])
            ],
            authenticated: true,
            ttl: common::DNS_TTL,
        }
    );
}

#[tokio::test]
async fn world_servfail_and_silence_fail_the_rrset() {
    let w = World::start().await;
    w.sign("sec.test");
    w.set_mx("sec.test", &[(10, "mx.sec.test")]).await;
    let d = dns(&[w.dns_addr()], Duration::from_millis(600));

    w.servfail("sec.test");
    assert!(failed(&d.mx("sec.test").await).contains("SERVFAIL"));

    w.drop_queries("sec.test");
    let t = Instant::now();
    let r = d.mx("sec.test").await;
    let took = t.elapsed();
    assert!(failed(&r).contains("timeout"), "{r:?}");
    assert!(
        took >= Duration::from_millis(590) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    // A failed MX lookup fails the discovery (Postfix defers: RFC 7672 §2.1.1).
    assert!(discover_dane(&d, &dest("sec.test")).await.outcome.is_err());
}

/// 40 TLSA records of 64 bytes do not fit in 1232 bytes: the UDP answer comes back truncated and
/// the question is asked again over TCP (RFC 7766 §5).
#[tokio::test]
async fn world_truncated_answers_are_asked_again_over_tcp() {
    let w = World::start().await;
    w.sign("sec.test");
    let data: Vec<[u8; 64]> = (0..40u8).map(|i| [i; 64]).collect();
    let records: Vec<(u8, u8, u8, &[u8])> = data.iter().map(|d| (3, 1, 2, &d[..])).collect();
    w.set_tlsa("_25._tcp.big.sec.test", &records).await;
    let d = dns_at(w.dns_addr());
    match d.tlsa("_25._tcp.big.sec.test").await {
        Rrset::Found {
            records,
            authenticated,
            ..
        } => {
            assert_eq!(records.len(), 40);
            assert!(authenticated);
        }
        other => panic!("{other:?}"),
    }
    // 40 records cannot have come in 1232 bytes of UDP: at least one UDP question (more if a
    // slow answer made the client repeat it) and one over TCP.
    assert!(w.dns_queries("_25._tcp.big.sec.test") >= 2);
}

#[tokio::test]
async fn world_more_than_64_records_fail_the_lookup() {
    let w = World::start().await;
    let data: Vec<[u8; 32]> = (0..=MAX_RECORDS as u8).map(|i| [i; 32]).collect();
    let records: Vec<(u8, u8, u8, &[u8])> = data.iter().map(|d| (3, 1, 1, &d[..])).collect();
    w.set_tlsa("_25._tcp.many.test", &records[..MAX_RECORDS])
        .await;
    let d = dns_at(w.dns_addr());
    assert!(matches!(
        d.tlsa("_25._tcp.many.test").await,
        Rrset::Found { ref records, .. } if records.len() == MAX_RECORDS
    ));
    w.set_tlsa("_25._tcp.many.test", &records).await;
    assert!(failed(&d.tlsa("_25._tcp.many.test").await).contains("too many records"));
}

#[tokio::test]
async fn world_next_nameserver_answers_when_the_first_is_silent() {
    let w = World::start().await;
    w.sign("sec.test");
    w.set_mx("sec.test", &[(10, "mx.sec.test")]).await;
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let d = dns(
        &[silent.local_addr().unwrap(), w.dns_addr()],
        Duration::from_secs(2),
    );
    let t = Instant::now();
    assert!(matches!(
        d.mx("sec.test").await,
        Rrset::Found {
            authenticated: true,
            ..
        }
    ));
    // The first server had half of the timeout, the second the rest.
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(990), "{took:?}");
}

#[tokio::test]
async fn world_resolver_that_does_not_validate_is_reported() {
    let w = World::start().await;
    // The world serves `test.` only: no AD for the root, signed suffix or not.
    w.sign("test");
    assert_eq!(dns_at(w.dns_addr()).validates().await, Ok(false));
    // No answer at all is an error, not a "no".
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let d = dns(&[silent.local_addr().unwrap()], Duration::from_millis(300));
    assert!(d.validates().await.is_err());
}

#[tokio::test]
async fn world_signed_domain_with_usable_tlsa_is_dane_only() {
    let w = World::start().await;
    w.sign("sec.test");
    w.set_mx("sec.test", &[(10, "mx.sec.test")]).await;
    w.set_a("mx.sec.test", Ipv4Addr::new(192, 0, 2, 25)).await;
    w.set_tlsa("_25._tcp.mx.sec.test", &[(3, 1, 1, &[7; 32])])
        .await;
    let d = dns_at(w.dns_addr());
    let state = discover_dane(&d, &dest("sec.test")).await.outcome.unwrap();
    assert_eq!(state.verdict, Verdict::DaneOnly);
    w.unsign("sec.test");
    let state = discover_dane(&d, &dest("sec.test")).await.outcome.unwrap();
    assert_eq!(state.verdict, Verdict::Unsigned);
}

// --------------------------------------------------------- a real validating resolver

const TLSA_DATA: &str = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";

fn tlsa_bytes() -> Vec<u8> {
    (0..TLSA_DATA.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&TLSA_DATA[i..i + 2], 16).unwrap())
        .collect()
}

fn start_unbound() -> Option<Unbound> {
    if !Unbound::available() {
        return None;
    }
    Some(Unbound::start(
        &format!(
            "@ IN MX 10 mx\n\
             mx IN A 192.0.2.25\n\
             mx IN AAAA 2001:db8::25\n\
             _25._tcp.mx IN TLSA 3 1 1 {TLSA_DATA}\n\
             nomx IN A 192.0.2.26\n"
        ),
        &format!(
            "@ IN MX 10 mx\n\
             mx IN A 192.0.2.27\n\
             _25._tcp.mx IN TLSA 3 1 1 {TLSA_DATA}\n"
        ),
    ))
}

#[tokio::test]
async fn unbound_authenticates_the_signed_zone_and_not_the_unsigned_one() {
    let Some(ub) = start_unbound() else { return };
    let d = dns_at(ub.addr);

    match d.mx("signed.test").await {
        Rrset::Found {
            records,
            authenticated,
            ttl,
        } => {
            assert_eq!(records, vec![mx(10, "mx.signed.test")]);
            assert!(authenticated, "log:\n{}", ub.log());
            assert!(ttl > 0 && ttl <= 300, "{ttl}");
        }
        other => panic!("{other:?}; log:\n{}", ub.log()),
    }
    match d.addresses("mx.signed.test").await {
        Rrset::Found {
            records,
            authenticated,
            ..
        } => {
            assert_eq!(records.len(), 2);
            assert!(authenticated);
        }
        other => panic!("{other:?}"),
    }
    // An insecure delegation (no DS in test.): answers, but never authenticated.
    assert!(matches!(
        d.mx("plain.test").await,
        Rrset::Found {
            authenticated: false,
            ..
        }
    ));
    assert!(matches!(
        d.tlsa("_25._tcp.mx.plain.test").await,
        Rrset::Found {
            authenticated: false,
            ..
        }
    ));
    assert_eq!(d.validates().await, Ok(true));
}

#[tokio::test]
async fn unbound_tlsa_records_and_proven_denials_are_authenticated() {
    let Some(ub) = start_unbound() else { return };
    let d = dns_at(ub.addr);

    match d.tlsa("_25._tcp.mx.signed.test").await {
        Rrset::Found {
            records,
            authenticated,
            ..
        } => {
            assert_eq!(records, vec![Tlsa::new(3, 1, 1, &tlsa_bytes())]);
            assert!(authenticated);
        }
        other => panic!("{other:?}; log:\n{}", ub.log()),
    }
    // NSEC-proven NXDOMAIN and NODATA (RFC 4035 §3.1.3), with the SOA's negative TTL.
    match d.tlsa("_25._tcp.nomx.signed.test").await {
        Rrset::Empty {
            nxdomain,
            authenticated,
            ttl,
        } => {
            assert!(nxdomain);
            assert!(authenticated);
            assert!(ttl > 0 && ttl <= 300, "{ttl}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        d.mx("nomx.signed.test").await,
        Rrset::Empty {
            nxdomain: false,
            authenticated: true,
            ..
        }
    ));

    let state = discover_dane(&d, &dest("signed.test"))
        .await
        .outcome
        .unwrap();
    assert_eq!(state.verdict, Verdict::DaneOnly);
    let state = discover_dane(&d, &dest("plain.test"))
        .await
        .outcome
        .unwrap();
    assert_eq!(state.verdict, Verdict::Unsigned);
}

#[tokio::test]
async fn unbound_bogus_data_and_a_dead_delegation_fail() {
    let Some(ub) = start_unbound() else { return };
    let d = dns(&[ub.addr], Duration::from_millis(800));

    // RFC 4035 §5.5: a validating resolver answers SERVFAIL for bogus data.
    assert!(failed(&d.mx(unbound::BOGUS).await).contains("SERVFAIL"));
    assert!(failed(&d.addresses(unbound::BOGUS).await).contains("SERVFAIL"));
    assert!(
        ub.log().contains("validation failure"),
        "log:\n{}",
        ub.log()
    );

    let t = Instant::now();
    let r = d.mx(&format!("mx.{}", unbound::TIMEOUT)).await;
    assert!(failed(&r).contains("timeout"), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
}
