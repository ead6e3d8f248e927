//! Hostile DNS servers: truncated UDP answers followed by broken TCP ones, huge TXT sets, CNAME
//! loops and endless chains, answers with a wrong transaction id or for another question, and
//! 100 wrong-id lookups at once. DNS is `common::rawdns` (hand-made replies); the policy hosts are
//! the world's, so that a hostile TXT answer wrongly accepted would show as a fetched policy.
//!
//! What every case must show (answer, deadline, memory, well-behaved domains meanwhile) is in
//! `common::hostile`.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;

use common::World;
use common::harness::{ConfigText, TestDaemon, enforce_body};
use common::hostile::{
    GOOD_DOMAINS, Good, SERIAL, When, case, concurrent_case, control, good_body, init_log, secure,
};
use common::rawdns::{self, Action, Query, RawDns, Reply, Transport};

// ========================================================================== DNS test bed

struct DnsBed {
    world: World,
    dns: RawDns,
    daemon: TestDaemon,
    good: Good,
}

/// The answers of `good<N>.test` (TXT, policy host 127.0.0.1), for any N. For odd N the TXT
/// set also holds eight 200-byte SPF-like records, too large for UDP: those domains are resolved
/// over TCP (after TC), so that the checks cover both transports.
fn good_dns(q: &Query) -> Option<Reply> {
    let rest = q
        .name
        .strip_prefix("_mta-sts.")
        .or_else(|| q.name.strip_prefix("mta-sts."))?;
    let label = rest.strip_suffix(".test.")?;
    let n = label.strip_prefix("good")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let reply = rawdns::sts_domain_reply(q, &format!("{label}.test"), "1")?;
    let odd = n.bytes().last().is_some_and(|b| (b - b'0') % 2 == 1);
    if odd && q.name.starts_with("_mta-sts.") && q.qtype == rawdns::TYPE_TXT {
        let junk = format!("v=spf1 {}-all", "a ".repeat(96));
        return Some((0..8).fold(reply, |r, _| r.txt(&q.name, &[junk.as_bytes()])));
    }
    Some(reply)
}

/// The daemon asks the raw DNS server `dns`, which answers `good<N>.test` properly, A
/// `mta-sts.*` with 127.0.0.1 (the world's HTTPS server, which serves a policy for
/// `good<N>.test` and for each of `policies`, so that a wrongly accepted hostile TXT answer would
/// show as a policy), asks `hostile` for everything else, and answers NXDOMAIN when it declines.
async fn dns_bed<F>(policies: &[&str], hostile: F) -> DnsBed
where
    F: Fn(&Query, Transport) -> Option<Vec<Action>> + Send + Sync + 'static,
{
    let world = World::start().await;
    for n in 0..GOOD_DOMAINS {
        let domain = format!("good{n}.test");
        world.serve_policy(&domain, &good_body(&domain)).await;
    }
    for domain in policies {
        world
            .serve_policy(domain, &enforce_body(&[&format!("mx.{domain}")]))
            .await;
    }
    let script: rawdns::Script = Arc::new(move |q: &Query, t: Transport| {
        if let Some(r) = good_dns(q) {
            return r.fit(t);
        }
        if let Some(actions) = hostile(q, t) {
            return actions;
        }
        if q.name.starts_with("mta-sts.") {
            let r = Reply::to(q);
            return if q.qtype == rawdns::TYPE_A {
                r.a(&q.name, Ipv4Addr::LOCALHOST).send()
            } else {
                r.send()
            };
        }
        Reply::to(q).rcode(rawdns::RCODE_NXDOMAIN).send()
    });
    let dns = RawDns::start(script).await;
    let daemon = ConfigText::of(&world)
        .nameserver(&dns.addr().to_string())
        .start()
        .await;
    DnsBed {
        world,
        dns,
        daemon,
        good: Good::new(),
    }
}

impl DnsBed {
    /// Runs one case for `domain`; no policy fetch may follow a hostile answer.
    async fn run(&mut self, name: &str, domain: &str, when: When) {
        case(&self.daemon, &mut self.good, name, domain, when, None).await;
        assert_eq!(
            self.world.fetches(domain),
            0,
            "{name}: a policy was fetched on the strength of a hostile DNS answer"
        );
    }
}

fn is_txt_of(q: &Query, domain: &str) -> bool {
    q.name == rawdns::fqdn(&format!("_mta-sts.{domain}"))
}

fn sts_txt(q: &Query, id: &str) -> Reply {
    let record = format!("v=STSv1; id={id}");
    Reply::to(q).txt(&q.name, &[record.as_bytes()])
}

// ================================================================================== DNS cases

/// Truncated UDP answers (TC) and a broken TCP answer: closed at once, a length prefix
/// that is never met, a framed message of garbage, the answer cut in the middle, TC again over
/// TCP, or silence. A truncated UDP answer that carries a valid-looking STS record must not be
/// used. NOTFOUND within the DNS timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_sends_truncated_answers() {
    let _serial = SERIAL.lock().await;
    init_log();
    let domains = [
        "tc-close.test",
        "tc-badlen.test",
        "tc-garbage.test",
        "tc-cut.test",
        "tc-tc.test",
        "tc-hang.test",
        "tc-ok.test",
    ];
    let mut bed = dns_bed(&domains, move |q, t| {
        let d = domains.iter().find(|d| is_txt_of(q, d))?;
        if *d == "tc-ok.test" && t == Transport::Tcp {
            return Some(sts_txt(q, "1").send());
        }
        // UDP: TC set, and the answer the client must not use (RFC 2181 §9) already in it.
        if t == Transport::Udp {
            return Some(sts_txt(q, "1").truncated().send());
        }
        let full = sts_txt(q, "1").build();
        Some(match *d {
            "tc-close.test" => vec![Action::Close],
            "tc-badlen.test" => vec![Action::Raw(vec![0xff, 0xff, 1, 2, 3]), Action::Close],
            "tc-garbage.test" => vec![Action::Send(vec![0xab; 300]), Action::Close],
            "tc-cut.test" => {
                let mut framed = (full.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&full[..full.len() / 2]);
                vec![Action::Raw(framed), Action::Close]
            }
            "tc-tc.test" => sts_txt(q, "1").truncated().send(),
            _ => vec![Action::Hang],
        })
    })
    .await;
    // Control: TC on UDP and a proper answer over TCP is a policy.
    control(&bed.daemon, "tc-ok.test", &secure("mx.tc-ok.test")).await;
    for (name, domain, when) in [
        (
            "TC on UDP, TCP closed at once",
            "tc-close.test",
            When::WithinDnsTimeout,
        ),
        (
            "TC on UDP, TCP length 65535 then 3 bytes and close",
            "tc-badlen.test",
            When::WithinDnsTimeout,
        ),
        (
            "TC on UDP, TCP 300 bytes of garbage",
            "tc-garbage.test",
            When::WithinDnsTimeout,
        ),
        (
            "TC on UDP, TCP answer cut in half and closed",
            "tc-cut.test",
            When::WithinDnsTimeout,
        ),
        (
            "TC on UDP, TC again on TCP",
            "tc-tc.test",
            When::WithinDnsTimeout,
        ),
        (
            "TC on UDP, TCP never answers",
            "tc-hang.test",
            When::AtDnsTimeout,
        ),
    ] {
        bed.run(name, domain, when).await;
        assert!(
            bed.dns
                .queries(&format!("_mta-sts.{domain}"), Transport::Tcp)
                > 0,
            "{name}: the truncated answer was not retried over TCP"
        );
    }
    // The odd well-behaved domains (too large for UDP) were resolved over TCP meanwhile.
    assert!(bed.dns.queries("_mta-sts.good1.test", Transport::Tcp) > 0);
}

/// TXT records of about 200 bytes: how many fit in one 64 KiB message after the header and the
/// question (each record is 13 + 201 bytes with a compressed owner name).
const HUGE_SET: usize = 300;

fn huge_txt_set(q: &Query, records: usize, len: usize) -> Reply {
    let mut r = sts_txt(q, "huge1");
    let junk = vec![b'x'; len];
    for _ in 1..records {
        r = r.txt(&q.name, &[&junk]);
    }
    r
}

/// A huge TXT set (300 records of 200 bytes, one of them a valid STS record: 63.9 KB over
/// TCP after TC on UDP, or as one oversized UDP datagram), one record over the daemon's cap of
/// 64, and one TXT record of 250 character-strings (64 KB). NOTFOUND, no fetch, no hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_sends_huge_txt_sets() {
    let _serial = SERIAL.lock().await;
    init_log();
    let domains = [
        "huge-tcp.test",
        "huge-udp.test",
        "cap65.test",
        "huge-one.test",
        "cap64.test",
    ];
    let mut bed = dns_bed(&domains, move |q, t| {
        let d = domains.iter().find(|d| is_txt_of(q, d))?;
        Some(match (*d, t) {
            ("huge-tcp.test", Transport::Udp) => Reply::to(q).truncated().send(),
            ("huge-tcp.test" | "huge-udp.test", _) => {
                let m = huge_txt_set(q, HUGE_SET, 200).build();
                assert!(m.len() <= 65535, "the huge set must fit one message");
                vec![Action::Send(m)]
            }
            ("cap65.test", _) => huge_txt_set(q, 65, 20).fit(t),
            ("cap64.test", _) => huge_txt_set(q, 64, 20).fit(t),
            (_, _) => {
                // One RR: "v=STSv1; id=big1; " and then 249 strings of 255 bytes of junk.
                let junk = vec![b'y'; 255];
                let mut strings: Vec<&[u8]> = vec![b"v=STSv1; id=big1; "];
                strings.extend(std::iter::repeat_n(junk.as_slice(), 249));
                let r = Reply::to(q).txt(&q.name, &strings);
                if t == Transport::Udp {
                    Reply::to(q).truncated().send()
                } else {
                    r.send()
                }
            }
        })
    })
    .await;
    // Control: 64 records, one of them valid, are within the daemon's cap (src/discovery/dns.rs).
    control(&bed.daemon, "cap64.test", &secure("mx.cap64.test")).await;
    for (name, domain) in [
        (
            "300 TXT records (63.9 KB) over TCP after TC",
            "huge-tcp.test",
        ),
        (
            "300 TXT records (63.9 KB) in one UDP datagram",
            "huge-udp.test",
        ),
        (
            "65 TXT records, one valid (cap is 64), TCP after TC",
            "cap65.test",
        ),
        (
            "one TXT record of 250 strings (64 KB) over TCP",
            "huge-one.test",
        ),
    ] {
        bed.run(name, domain, When::WithinDnsTimeout).await;
    }
}

/// CNAME loops: `_mta-sts.a.test` → `_mta-sts.b.test` → `_mta-sts.a.test` with both
/// records in every answer; the same loop answered one hop per query (so the client must chase
/// it); a name that is its own CNAME; and an endless chain of fresh names. NOTFOUND within the
/// DNS timeout, with a bounded number of queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_sends_cname_loops() {
    let _serial = SERIAL.lock().await;
    init_log();
    let mut bed = dns_bed(&["a.test", "c.test", "self.test", "chain.test"], |q, _| {
        let name = q.name.as_str();
        let r = Reply::to(q);
        Some(
            match name {
                "_mta-sts.a.test." => r
                    .cname("_mta-sts.a.test", "_mta-sts.b.test")
                    .cname("_mta-sts.b.test", "_mta-sts.a.test"),
                "_mta-sts.b.test." => r
                    .cname("_mta-sts.b.test", "_mta-sts.a.test")
                    .cname("_mta-sts.a.test", "_mta-sts.b.test"),
                "_mta-sts.c.test." => r.cname(name, "_mta-sts.d.test"),
                "_mta-sts.d.test." => r.cname(name, "_mta-sts.c.test"),
                "_mta-sts.self.test." => r.cname(name, name),
                "_mta-sts.chain.test." => r.cname(name, "hop1.chain.test"),
                _ => {
                    let n: u64 = name
                        .strip_prefix("hop")?
                        .strip_suffix(".chain.test.")?
                        .parse()
                        .ok()?;
                    r.cname(name, &format!("hop{}.chain.test", n + 1))
                }
            }
            .send(),
        )
    })
    .await;
    for (name, domain, zone) in [
        (
            "CNAME loop a -> b -> a, both in every answer",
            "a.test",
            "test",
        ),
        (
            "CNAME loop c -> d -> c, one hop per answer",
            "c.test",
            "test",
        ),
        ("CNAME to itself", "self.test", "self.test"),
        (
            "endless CNAME chain of fresh names",
            "chain.test",
            "chain.test",
        ),
    ] {
        let before = bed.dns.queries_under(zone);
        bed.run(name, domain, When::WithinDnsTimeout).await;
        let queries = bed.dns.queries_under(zone) - before;
        println!("HOSTILE info: {name}: {queries} queries under {zone}");
        // `zone` "test" also counts the well-behaved domains (3 queries each, a handful of them).
        assert!(
            queries < 200,
            "{name}: {queries} queries: the loop is not bounded"
        );
    }
}

/// Only answers with a wrong transaction id (each carrying a valid STS record, so that
/// accepting one would show as a policy), once per query or 500 per query, on UDP and on TCP;
/// and two more spoof-like answers: the right id for another question, and the right question
/// answered with a TXT record of an unrelated name. NOTFOUND (at the DNS timeout when nothing
/// acceptable ever arrives), no fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_sends_wrong_id_answers() {
    let _serial = SERIAL.lock().await;
    init_log();
    let domains = [
        "wrongid.test",
        "wrongid-flood.test",
        "wrong-question.test",
        "other-owner.test",
    ];
    let mut bed = dns_bed(&domains, move |q, _| {
        let d = domains.iter().find(|d| is_txt_of(q, d))?;
        Some(match *d {
            "wrongid.test" | "wrongid-flood.test" => {
                let copies: u16 = if *d == "wrongid.test" { 1 } else { 500 };
                (1..=copies)
                    .map(|k| Action::Send(sts_txt(q, "1").id(q.id.wrapping_add(k)).build()))
                    .collect()
            }
            "wrong-question.test" => {
                // The question echoed as `_mta-stt.wrong-question.test` (same length).
                let mut m = sts_txt(q, "1").build();
                assert_eq!(&m[13..21], b"_mta-sts");
                m[20] = b't';
                vec![Action::Send(m)]
            }
            _ => Reply::to(q)
                .txt("_mta-sts.unrelated.test", &[b"v=STSv1; id=1"])
                .send(),
        })
    })
    .await;
    bed.run(
        "wrong-id answers only, one per query",
        "wrongid.test",
        When::AtDnsTimeout,
    )
    .await;
    bed.run(
        "wrong-id answers only, 500 per query",
        "wrongid-flood.test",
        When::AtDnsTimeout,
    )
    .await;
    // Over UDP hickory drops the forged answer and waits (NOTFOUND at the DNS timeout); when it
    // reuses a TCP connection (open after a well-behaved domain's TC answer), it takes the answer
    // but none of its records is for the name asked (NODATA, NOTFOUND at once).
    bed.run(
        "right id, another question",
        "wrong-question.test",
        When::WithinDnsTimeout,
    )
    .await;
    bed.run(
        "right question, TXT of an unrelated name",
        "other-owner.test",
        When::WithinDnsTimeout,
    )
    .await;
}

/// Under load: 100 domains at once whose TXT queries get only wrong-id answers (as in
/// `dns_sends_wrong_id_answers`). Each gets NOTFOUND at the DNS timeout, and well-behaved domains (over UDP
/// and over TCP) are answered promptly throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_wrong_id_lookups_at_once_do_not_starve_others() {
    let _serial = SERIAL.lock().await;
    init_log();
    let names: Vec<String> = (0..100).map(|i| format!("wid{i}.test")).collect();
    let mut bed = dns_bed(&[], |q, _| {
        let rest = q.name.strip_prefix("_mta-sts.wid")?;
        rest.ends_with(".test.").then(|| {
            vec![Action::Send(
                sts_txt(q, "1").id(q.id.wrapping_add(1)).build(),
            )]
        })
    })
    .await;
    concurrent_case(
        &bed.daemon,
        &mut bed.good,
        "100 wrong-id-only TXT lookups at once",
        &names,
        When::AtDnsTimeout,
    )
    .await;
    for name in &names {
        assert_eq!(bed.world.fetches(name), 0, "{name} was fetched");
    }
}
