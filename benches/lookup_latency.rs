//! Lookup latency over one persistent socketmap connection, as one Postfix smtp(8) process sees
//! it: the daemon answering from its cache, side by side with a null responder (same framing, a
//! fixed answer, no cache) in the same run; the same cached lookups while 100 policy fetches
//! hang on a slow policy host (hits must keep their p99 while fetches wait), interleaved with
//! quiet rounds; and the first (cold) lookup of a domain in the offline test world (TXT query +
//! HTTPS fetch on loopback).
//!
//! Run: `cargo bench --bench lookup_latency` (release build). Prints p50/p90/p99/p99.9/max.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Http;
use common::harness::{SocketmapClient, TestDaemon, enforce_body, good_world, netstring};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CACHED_QUERIES: usize = 20_000;
const COLD_DOMAINS: usize = 200;
/// Lookups hanging on a policy host that accepts TLS and never answers, per round.
const HANGING: usize = 100;
const ROUNDS: usize = 4;

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let q = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name:<34} n={:<6} p50={:>8.1}us p90={:>8.1}us p99={:>8.1}us p99.9={:>8.1}us max={:>8.1}us",
        samples.len(),
        us(q(0.50)),
        us(q(0.90)),
        us(q(0.99)),
        us(q(0.999)),
        us(*samples.last().unwrap())
    );
}

/// Reads one netstring request at a time and answers a fixed reply: the loopback floor.
async fn null_responder() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let reply = netstring(b"OK secure match=mx.good.test servername=hostname");
                let mut buf = Vec::with_capacity(256);
                let mut chunk = [0u8; 256];
                loop {
                    let n = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.iter().position(|&b| b == b',') {
                        buf.drain(..=end);
                        if s.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn loop_queries(addr: std::net::SocketAddr, key: &[u8], n: usize) -> Vec<Duration> {
    let mut c = SocketmapClient::connect(addr).await;
    c.stream.set_nodelay(true).unwrap();
    for _ in 0..1000 {
        c.query("postfix", key).await;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = c.query("postfix", key).await;
        v.push(t.elapsed());
        assert!(r.starts_with("OK secure"), "{r}");
    }
    v
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run either way.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let w = good_world().await;
        for i in 0..COLD_DOMAINS {
            let d = format!("d{i}.test");
            w.good_domain(&d, "1", &enforce_body(&["mx.good.test"]))
                .await;
        }
        // Fresh hanging domains every round: a failed fetch is remembered (back-off), so a
        // domain hangs only once.
        for r in 0..ROUNDS {
            for i in 0..HANGING {
                let d = format!("hang{r}-{i}.test");
                w.set_sts(&d, "1").await;
                w.set_http(&d, Http::Hang).await;
            }
        }
        let d = TestDaemon::start(&w).await;
        let null = null_responder().await;

        let mut c = d.socketmap().await;
        let mut cold = Vec::new();
        for i in 0..COLD_DOMAINS {
            let key = format!("d{i}.test");
            let t = Instant::now();
            let r = c.query("postfix", key.as_bytes()).await;
            cold.push(t.elapsed());
            assert!(r.starts_with("OK secure"), "{r}");
        }
        // Warm the cached domain, then interleave the two runs so both see the same machine.
        c.query("postfix", b"good.test").await;
        let mut daemon_hits = Vec::new();
        let mut null_hits = Vec::new();
        let mut hanging_hits = Vec::new();
        for r in 0..ROUNDS {
            null_hits.extend(loop_queries(null, b"good.test", CACHED_QUERIES / ROUNDS).await);
            daemon_hits
                .extend(loop_queries(d.socketmap, b"good.test", CACHED_QUERIES / ROUNDS).await);
            let hung: Vec<_> = (0..HANGING)
                .map(|i| {
                    let addr = d.socketmap;
                    tokio::spawn(async move {
                        let mut c = SocketmapClient::connect(addr).await;
                        c.query("postfix", format!("hang{r}-{i}.test").as_bytes())
                            .await
                    })
                })
                .collect();
            // Let every fetch reach the silent policy host before measuring.
            tokio::time::sleep(Duration::from_millis(200)).await;
            hanging_hits
                .extend(loop_queries(d.socketmap, b"good.test", CACHED_QUERIES / ROUNDS).await);
            assert!(
                hung.iter().all(|h| !h.is_finished()),
                "the hanging lookups ended before the measurement did"
            );
            for h in hung {
                let r = h.await.unwrap();
                assert!(r.starts_with("NOTFOUND"), "{r}");
            }
        }
        println!("one persistent socketmap connection, one request at a time, loopback:");
        report("null responder (baseline)", null_hits);
        report("daemon, cached policy", daemon_hits);
        report(&format!("  same, {HANGING} fetches hanging"), hanging_hits);
        report("daemon, first lookup (TXT+HTTPS)", cold);
    });
}
