//! Criterion micro-benchmarks of the request path, piece by piece: wire decoding and encoding
//! (socketmap netstrings, tcp_table lines), key normalisation, TXT record selection and policy
//! parsing, answer rendering, cache hits and the full `Resolver::lookup` hit path.
//!
//! Nothing here touches the network: the resolver gets a `PolicySource` that panics if called,
//! and every lookup is a cache hit.
//!
//! Run: `cargo bench --bench micro` (release build). Filter with a substring, e.g.
//! `cargo bench --bench micro -- cache/`. The 1,000,000-entry cache and resolver are built once,
//! outside the timed loops (a few seconds each).

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tokio_util::codec::Decoder;

use mta_sts_policyd::answer::{self, Profile, Rendered};
use mta_sts_policyd::cache::{Cache, Hit, PolicyEntry};
use mta_sts_policyd::key::policy_domain;
use mta_sts_policyd::policy::{Policy, parse_policy, parse_sts_record, select_sts_record};
use mta_sts_policyd::proto::{Reply, SharedText, Value, socketmap, tcp_table};
use mta_sts_policyd::resolve::{Lookup, Resolution, Resolver};

#[path = "support/hit_only.rs"]
mod hit_only;

/// The example policy of RFC 8461 §3.2.
const RFC_EXAMPLE: &str = "version: STSv1\n\
                           mode: enforce\n\
                           mx: mail.example.com\n\
                           mx: *.example.net\n\
                           mx: backupmx.example.com\n\
                           max_age: 604800\n";

const BIG: usize = 1_000_000;
const SMALL: usize = 10;

/// A policy of about 3 KiB with 50 `mx` lines.
fn big_policy_body() -> String {
    let mut body = String::from("version: STSv1\nmode: enforce\n");
    for i in 0..50 {
        body.push_str(&format!(
            "mx: mx{i:02}.inbound.mail-cluster-europe-west-1.example-provider.com\n"
        ));
    }
    body.push_str("max_age: 604800\n");
    assert!((3_000..=3_400).contains(&body.len()), "{}", body.len());
    body
}

fn rfc_policy() -> Policy {
    parse_policy(RFC_EXAMPLE.as_bytes()).expect("RFC 8461 example parses")
}

fn tlsrpt_profile() -> Profile {
    Profile {
        tlsrpt: true,
        ..Profile::default()
    }
}

/// The TLSRPT answer for the RFC example policy, as the daemon would send it.
fn tlsrpt_answer() -> Value {
    match answer::render_fitting_owned(
        "example.com",
        &rfc_policy(),
        &tlsrpt_profile(),
        socketmap::value_fits,
    ) {
        Rendered::Found(v) => v,
        other => panic!("unexpected {other:?}"),
    }
}

/// Wraps `payload` in a netstring.
fn netstring(payload: &[u8]) -> Vec<u8> {
    let mut v = format!("{}:", payload.len()).into_bytes();
    v.extend_from_slice(payload);
    v.push(b',');
    v
}

fn bench_socketmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("socketmap");

    let one = b"19:postfix example.com,".to_vec();
    g.bench_function("decode_one_frame", |b| {
        b.iter_batched(
            || BytesMut::from(&one[..]),
            |mut src| {
                let mut codec = socketmap::SocketmapCodec::default();
                let r = codec.decode(black_box(&mut src)).expect("decode");
                (src, black_box(r))
            },
            BatchSize::SmallInput,
        )
    });

    let pipelined: Vec<u8> = (0..16)
        .flat_map(|i| netstring(format!("postfix mx{i:02}.example.com").as_bytes()))
        .collect();
    g.bench_function("decode_16_pipelined_frames", |b| {
        b.iter_batched(
            || BytesMut::from(&pipelined[..]),
            |mut src| {
                let mut codec = socketmap::SocketmapCodec::default();
                let mut n = 0;
                while let Some(r) = codec.decode(black_box(&mut src)).expect("decode") {
                    black_box(r);
                    n += 1;
                }
                assert_eq!(n, 16);
                src
            },
            BatchSize::SmallInput,
        )
    });

    let found = Reply::Found(
        "secure match=mail.example.com:.example.net:backupmx.example.com servername=hostname"
            .into(),
    );
    let mut dst = BytesMut::with_capacity(1024);
    g.bench_function("encode_found", |b| {
        b.iter(|| {
            dst.clear();
            socketmap::encode_reply(black_box(&found), &mut dst);
            black_box(dst.len())
        })
    });
    g.bench_function("encode_notfound", |b| {
        b.iter(|| {
            dst.clear();
            socketmap::encode_reply(black_box(&Reply::NotFound), &mut dst);
            black_box(dst.len())
        })
    });
    g.finish();
}

fn bench_tcp_table(c: &mut Criterion) {
    let mut g = c.benchmark_group("tcp_table");

    let plain = b"get example.com\n".to_vec();
    g.bench_function("decode_plain", |b| {
        b.iter_batched(
            || BytesMut::from(&plain[..]),
            |mut src| {
                let mut codec = tcp_table::TcpTableCodec::default();
                let r = codec.decode(black_box(&mut src)).expect("decode");
                (src, black_box(r))
            },
            BatchSize::SmallInput,
        )
    });

    // Every non-ASCII byte and every space is a %XX escape: 26 escapes, 78 of the key's 110
    // encoded bytes.
    let key = tcp_table::encode_key("[bücher straße ñandú ölçü žluťoučký.example]:25".as_bytes());
    let heavy = format!("get {key}\n").into_bytes();
    g.bench_function("decode_percent_heavy", |b| {
        b.iter_batched(
            || BytesMut::from(&heavy[..]),
            |mut src| {
                let mut codec = tcp_table::TcpTableCodec::default();
                let r = codec.decode(black_box(&mut src)).expect("decode");
                assert!(matches!(r, Some(tcp_table::Request::Get(_))));
                (src, black_box(r))
            },
            BatchSize::SmallInput,
        )
    });

    let found = Reply::Found(tlsrpt_answer());
    let mut dst = BytesMut::with_capacity(4096);
    g.bench_function("encode_tlsrpt_answer", |b| {
        b.iter(|| {
            dst.clear();
            tcp_table::encode_reply(black_box(&found), &mut dst);
            black_box(dst.len())
        })
    });
    g.finish();
}

fn bench_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("key");
    let cases: [(&str, &[u8]); 6] = [
        ("plain_ascii", b"example.com"),
        ("upper_trailing_dot", b"MAIL.EXAMPLE.COM."),
        ("bracket_port", b"[mail.example.com]:25"),
        ("u_label", "bücher.example".as_bytes()),
        ("ip_literal_rejected", b"[192.0.2.1]:25"),
        ("parent_probe", b".example.com"),
    ];
    for (name, key) in cases {
        g.bench_function(name, |b| b.iter(|| policy_domain(black_box(key))));
    }
    g.finish();
}

fn bench_policy(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");

    let records: Vec<Vec<u8>> = vec![
        b"v=spf1 include:_spf.example.com ip4:192.0.2.0/24 -all".to_vec(),
        b"v=STSv1; id=20160831085700Z;".to_vec(),
    ];
    g.bench_function("select_txt_spf_and_sts", |b| {
        b.iter(|| select_sts_record(black_box(&records)).expect("one STS record"))
    });
    g.bench_function("parse_sts_record", |b| {
        b.iter(|| parse_sts_record(black_box("v=STSv1; id=20160831085700Z;")).expect("valid"))
    });

    g.bench_function("parse_rfc_example", |b| {
        b.iter(|| parse_policy(black_box(RFC_EXAMPLE.as_bytes())).expect("valid"))
    });
    let big = big_policy_body();
    g.bench_function("parse_3k_50mx", |b| {
        b.iter(|| parse_policy(black_box(big.as_bytes())).expect("valid"))
    });
    g.finish();
}

fn bench_answer(c: &mut Criterion) {
    let mut g = c.benchmark_group("answer");
    let policy = rfc_policy();
    let plain = Profile::default();
    g.bench_function("render_plain", |b| {
        b.iter(|| answer::render(black_box("example.com"), &policy, &plain, false).expect("some"))
    });
    let tlsrpt = tlsrpt_profile();
    g.bench_function("render_fitting_tlsrpt", |b| {
        b.iter(|| {
            answer::render_fitting_owned(
                black_box("example.com"),
                &policy,
                &tlsrpt,
                socketmap::value_fits,
            )
        })
    });
    // What the lookup path does for a cached policy: the mx list is shared, not rendered.
    let entry: Arc<dyn SharedText> = Arc::new(policy.mx.as_match_list().to_owned());
    g.bench_function("render_fitting_plain_shared", |b| {
        b.iter(|| {
            answer::render_fitting(
                black_box("example.com"),
                &policy,
                &plain,
                || entry.clone(),
                socketmap::value_fits,
            )
        })
    });
    g.finish();
}

fn domain(i: usize) -> String {
    format!("d{i}.example.com")
}

fn entry() -> Arc<PolicyEntry> {
    Arc::new(PolicyEntry::new(
        "20160831085700Z".into(),
        rfc_policy(),
        SystemTime::now(),
    ))
}

/// A cache of `n` valid policies for `d0.example.com` .. `d{n-1}.example.com`, all sharing one
/// entry.
fn filled_cache(n: usize) -> Cache {
    let cache = Cache::new(NonZeroUsize::new(2 * n).expect("non-zero"));
    let e = entry();
    let now = SystemTime::now();
    let next = now + Duration::from_secs(86_400);
    for i in 0..n {
        cache.insert_policy(&domain(i), e.clone(), next, now);
    }
    assert_eq!(cache.len(), n);
    cache
}

fn bench_cache(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache_get_hit");
    for n in [SMALL, BIG] {
        let cache = filled_cache(n);
        let key = domain(n / 2);
        let now = SystemTime::now();
        g.bench_function(format!("{n}_entries"), |b| {
            b.iter(|| match cache.get(black_box(&key), now) {
                Hit::Policy(e) => e,
                _ => panic!("miss"),
            })
        });
        if n == BIG {
            // The same hit, but cycling through 65,536 domains spread over the whole map, so that
            // the buckets and entries looked at are mostly not in the CPU caches.
            let keys: Vec<String> = (0..65_536).map(|i| domain(i * 15 % n)).collect();
            let mut next = 0usize;
            g.bench_function(format!("{n}_entries_64k_keys"), |b| {
                b.iter(|| {
                    let key = &keys[next & 0xffff];
                    next = next.wrapping_add(1);
                    match cache.get(black_box(key), now) {
                        Hit::Policy(e) => e,
                        _ => panic!("miss"),
                    }
                })
            });
        }
    }
    g.finish();
}

fn resolver(n: usize) -> Arc<Resolver> {
    let resolver = hit_only::resolver(2 * n);
    let e = entry();
    for i in 0..n {
        resolver.preload(domain(i).into(), e.clone());
    }
    assert_eq!(resolver.cache().len(), n);
    Arc::new(resolver)
}

fn bench_resolve(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let mut g = c.benchmark_group("resolver_lookup_hit");
    // What `block_on` alone costs, to subtract from the lookups below.
    g.bench_function("block_on_overhead", |b| {
        b.iter(|| rt.block_on(async { black_box(1) }))
    });
    for n in [SMALL, BIG] {
        let resolver = resolver(n);
        // Upper case and a trailing dot: the lookup normalises the key as Postfix sends it.
        let key = domain(n / 2).to_ascii_uppercase() + ".";
        g.bench_function(format!("{n}_entries"), |b| {
            b.iter(
                || match rt.block_on(resolver.lookup(black_box(key.as_bytes()))) {
                    Lookup::Resolved {
                        resolution: Resolution::Policy(e),
                        domain,
                    } => (e, domain),
                    other => panic!("not a policy hit: {other:?}"),
                },
            )
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_socketmap, bench_tcp_table, bench_key, bench_policy, bench_answer,
        bench_cache, bench_resolve
}
criterion_main!(benches);
