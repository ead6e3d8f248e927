//! The fleet's server killed and restarted under load (`[fleet]` on a real `redis-server`):
//! cached lookups never touch it, so none fails and their p99 stays where it was; misses fall
//! back to local discovery with at most `[fleet] timeout` added; once the server is back, the
//! daemon shares again by itself.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::World;
use common::harness::{ConfigText, SocketmapClient, enforce_body};
use common::redis_server::{RedisServer, fleet_section, redis_available};

const CACHED: usize = 20;
const CLIENTS: usize = 8;

fn p(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]
}

#[derive(Default)]
struct Phase {
    hits: std::sync::Mutex<Vec<Duration>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_fails_no_lookup_and_sharing_resumes() {
    if !redis_available() {
        return;
    }
    let mut redis = RedisServer::start(&[]).await;
    let w = World::start().await;
    for i in 0..CACHED {
        w.good_domain(
            &format!("c{i}.test"),
            "1",
            &enforce_body(&[&format!("mx.c{i}.test")]),
        )
        .await;
    }
    for i in 0..400 {
        w.good_domain(
            &format!("m{i}.test"),
            "1",
            &enforce_body(&[&format!("mx.m{i}.test")]),
        )
        .await;
    }
    let d = ConfigText::of(&w)
        .append(&fleet_section(&redis.url(), ""))
        .start()
        .await;
    for i in 0..CACHED {
        assert!(d.ask(&format!("c{i}.test")).await.starts_with("OK secure"));
    }

    let phases: Arc<[Phase; 3]> = Arc::new(Default::default());
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (phases, phase, stop, failed) =
            (phases.clone(), phase.clone(), stop.clone(), failed.clone());
        let addr = d.socketmap;
        tasks.push(tokio::spawn(async move {
            let mut client = SocketmapClient::connect(addr).await;
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let domain = format!("c{}.test", i % CACHED);
                let start = Instant::now();
                let reply = client.query("postfix", domain.as_bytes()).await;
                let took = start.elapsed();
                if reply != format!("OK secure match=mx.{domain} servername=hostname") {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                phases[phase.load(Ordering::Relaxed)]
                    .hits
                    .lock()
                    .unwrap()
                    .push(took);
                i += 1;
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }));
    }
    // Misses during every phase: each is a discovery the fleet is asked before.
    let misses = {
        let (stop, failed) = (stop.clone(), failed.clone());
        let addr = d.socketmap;
        tokio::spawn(async move {
            let mut client = SocketmapClient::connect(addr).await;
            let mut worst = Duration::ZERO;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 400 {
                let domain = format!("m{n}.test");
                let start = Instant::now();
                let reply = client.query("postfix", domain.as_bytes()).await;
                worst = worst.max(start.elapsed());
                if reply != format!("OK secure match=mx.{domain} servername=hostname") {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (n, worst)
        })
    };

    tokio::time::sleep(Duration::from_millis(1500)).await;
    phase.store(1, Ordering::Relaxed);
    redis.kill();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    phase.store(2, Ordering::Relaxed);
    redis.restart().await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (missed, worst_miss) = misses.await.unwrap();

    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed lookups");
    let mut p99 = Vec::new();
    for (name, ph) in ["before", "redis down", "after restart"]
        .iter()
        .zip(phases.iter())
    {
        let mut hits = ph.hits.lock().unwrap().clone();
        assert!(hits.len() > 100, "{name}: only {} hits", hits.len());
        let (p50, q99) = (p(&mut hits, 0.50), p(&mut hits, 0.99));
        println!(
            "{name:<14} hits={:<6} p50={:>7.1}us p99={:>7.1}us",
            hits.len(),
            p50.as_secs_f64() * 1e6,
            q99.as_secs_f64() * 1e6
        );
        p99.push(q99);
    }
    println!(
        "misses={missed} worst miss={:.1}ms",
        worst_miss.as_secs_f64() * 1e3
    );
    // Hits never wait on Redis: the outage leaves their p99 where it was (a loaded CI machine
    // gets slack, not a 50 ms fleet timeout's worth).
    let bound = p99[0] * 3 + Duration::from_millis(2);
    assert!(
        p99[1] <= bound,
        "hit p99 during the outage {:?} > {bound:?}",
        p99[1]
    );
    assert!(
        p99[2] <= bound,
        "hit p99 after the restart {:?} > {bound:?}",
        p99[2]
    );

    // Sharing resumes: a domain discovered now is published to the restarted server.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = missed;
    loop {
        let domain = format!("m{n}.test");
        assert!(d.ask(&domain).await.starts_with("OK secure"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        if redis
            .get(&format!("mta-sts:policy:{domain}"))
            .await
            .is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon never shared again");
        n += 1;
    }
    let up = d.daemon.resolver().metrics().render(&d.daemon.gauges());
    assert!(up.contains("\nmta_sts_fleet_up 1\n"), "{up}");
}
