//! The cost of a shared hit beside a full discovery (`[fleet]` on a real `redis-server`): daemon
//! A discovers every domain of the offline test world (TXT query + HTTPS fetch on loopback) and
//! publishes it; daemon B, with its own state directory and its DNS and HTTPS unreachable, then
//! misses each domain locally and answers it from Redis (GET, the same validation as a fetched
//! policy, the journal write before the answer); B's next lookup of each is a local hit.
//!
//! Run: `cargo bench --bench fleet` (release build; needs `redis-server`). Prints p50/p90/p99/max.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::World;
use common::harness::{ConfigText, SocketmapClient, enforce_body};
use common::redis_server::{RedisServer, fleet_section, redis_available};

const DOMAINS: usize = 500;

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let q = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name:<44} n={:<5} p50={:>8.1}us p90={:>8.1}us p99={:>8.1}us max={:>8.1}us",
        samples.len(),
        us(q(0.50)),
        us(q(0.90)),
        us(q(0.99)),
        us(*samples.last().unwrap())
    );
}

async fn timed(c: &mut SocketmapClient, domain: &str) -> Duration {
    let t = Instant::now();
    let r = c.query("postfix", domain.as_bytes()).await;
    let took = t.elapsed();
    assert!(r.starts_with("OK secure"), "{domain}: {r}");
    took
}

fn main() {
    if !redis_available() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let redis = RedisServer::start(&[]).await;
        let fleet = fleet_section(&redis.url(), "");
        let w = World::start().await;
        for i in 0..DOMAINS {
            w.good_domain(&format!("d{i}.test"), "1", &enforce_body(&["mx.good.test"]))
                .await;
        }
        let a = ConfigText::of(&w)
            .state_dir(&w.dir().join("a"))
            .control_socket(&w.dir().join("a.sock"), "")
            .append(&fleet)
            .start()
            .await;
        let b = ConfigText::of(&w)
            .state_dir(&w.dir().join("b"))
            .control_socket(&w.dir().join("b.sock"), "")
            .nameserver("127.0.0.1:9")
            .https_port(9)
            .append(&fleet)
            .start()
            .await;

        let mut ca = a.socketmap().await;
        ca.stream.set_nodelay(true).unwrap();
        let mut discovery = Vec::new();
        for i in 0..DOMAINS {
            discovery.push(timed(&mut ca, &format!("d{i}.test")).await);
        }
        redis
            .wait_for(&format!("mta-sts:policy:d{}.test", DOMAINS - 1), |v| {
                v.is_some()
            })
            .await;
        let mut cb = b.socketmap().await;
        cb.stream.set_nodelay(true).unwrap();
        let mut shared = Vec::new();
        for i in 0..DOMAINS {
            shared.push(timed(&mut cb, &format!("d{i}.test")).await);
        }
        let mut local = Vec::new();
        for i in 0..DOMAINS {
            local.push(timed(&mut cb, &format!("d{i}.test")).await);
        }
        report("full discovery (TXT + HTTPS, loopback)", discovery);
        report("shared hit (local miss answered from Redis)", shared);
        report("local hit (the same domains again)", local);
        let hits = b
            .daemon
            .resolver()
            .metrics()
            .fleet()
            .lookups(mta_sts_policyd::metrics::FleetLookup::Hit);
        assert_eq!(hits as usize, DOMAINS, "every miss of B was a shared hit");
        a.daemon.shutdown().await;
        b.daemon.shutdown().await;
    });
}
