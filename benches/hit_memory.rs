//! What a cache hit costs in memory traffic: the hit path of the daemon (`Resolver::lookup` on a
//! hit, then the socketmap reply written into a buffer), timed over a journal seeded with
//! 1,000,000 policies and over one with 10, side by side in alternating rounds, in one thread.
//!
//! perf.sh measures the same question end to end (scenario 3) through TCP, where the kernel's
//! share of the CPU and other work on the machine make a tenth of a microsecond hard to see; this
//! loop has nothing but the lookup, so the difference per lookup is the cost of the cache misses
//! the hit path takes (the hash table's control bytes and bucket, the cached entry, its text).
//!
//! The caches are filled the way the daemon fills them at start-up: `loadgen seed` writes each
//! journal through the daemon's own writer, `Store::open` reads it back and every policy is
//! preloaded in journal order, so the allocations lie in memory as they do in the daemon.
//!
//!     cargo build --release -p loadgen          # the seeding tool (or set LOADGEN=path)
//!     cargo bench --bench hit_memory            # 1,000,000 vs 10 policies, 3 mx lines each
//!     HIT_MEMORY_BIG=100000 cargo bench --bench hit_memory
//!     CARGO_PROFILE_BENCH_LTO=fat CARGO_PROFILE_BENCH_CODEGEN_UNITS=1 cargo bench --bench hit_memory
//!
//! The last one builds the hit path the way the release profile (what ships) does.
//!
//! The keys are drawn at random over all cached domains (splitmix64), as loadgen does, and
//! formatted as `d{i}.example` the way Postfix would send them.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use mta_sts_policyd::answer::{self, Profile, Rendered};
use mta_sts_policyd::cache::journal::Store;
use mta_sts_policyd::proto::SharedText;
use mta_sts_policyd::resolve::{Lookup, Resolution, Resolver};

#[path = "support/hit_only.rs"]
mod hit_only;

const LOOKUPS_PER_ROUND: u64 = 2_000_000;
const ROUNDS: usize = 5;

fn seeded(dir: &Path, n: u64) -> Arc<Resolver> {
    let loadgen = std::env::var_os("LOADGEN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/loadgen"),
        Into::into,
    );
    let status = Command::new(&loadgen)
        .args(["seed", "--mx", "3", "--domains", &n.to_string(), "--dir"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `cargo build --release -p loadgen`)",
                loadgen.display()
            )
        });
    assert!(status.success(), "loadgen seed failed");
    let (store, loaded) = Store::open(dir, SystemTime::now()).expect("seeded journal opens");
    drop(store);
    let resolver = hit_only::resolver(2 * n as usize);
    for (domain, entry) in loaded.policies {
        resolver.preload(domain, entry);
    }
    assert_eq!(resolver.cache().len() as u64, n);
    Arc::new(resolver)
}

/// Nanoseconds per lookup over one round of random keys below `n`.
fn round(rt: &tokio::runtime::Runtime, resolver: &Arc<Resolver>, n: u64, seed: &mut u64) -> f64 {
    let profile = Profile::default();
    let mut key = Vec::with_capacity(32);
    let mut out = Vec::with_capacity(256);
    let start = Instant::now();
    rt.block_on(async {
        for _ in 0..LOOKUPS_PER_ROUND {
            *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let i = ((u128::from(z) * u128::from(n)) >> 64) as u64;
            key.clear();
            let _ = write!(key, "d{i}.example");
            let Lookup::Resolved {
                resolution: Resolution::Policy(entry),
                domain,
            } = resolver.lookup(&key).await
            else {
                panic!("d{i}.example is not a cached policy");
            };
            let shared = entry.clone();
            let rendered = answer::render_fitting(
                &domain,
                &entry.policy,
                &profile,
                move || shared as Arc<dyn SharedText>,
                |_| true,
            );
            let Rendered::Found(value) = rendered else {
                panic!("no answer for {domain}");
            };
            out.clear();
            out.extend_from_slice(b"OK ");
            for part in value.parts() {
                out.extend_from_slice(part.as_bytes());
            }
            std::hint::black_box(&out);
        }
    });
    start.elapsed().as_nanos() as f64 / LOOKUPS_PER_ROUND as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let big: u64 = std::env::var("HIT_MEMORY_BIG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("hit-memory-{}", std::process::id()));
    let (small_dir, big_dir) = (dir.join("small"), dir.join("big"));
    std::fs::create_dir_all(&small_dir).expect("work directory");
    std::fs::create_dir_all(&big_dir).expect("work directory");
    let small = seeded(&small_dir, 10);
    let large = seeded(&big_dir, big);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut seed = 0x5eed_u64;
    let (mut s, mut l) = (Vec::new(), Vec::new());
    // Warm-up, then alternating rounds so that drift on the machine hits both sides alike.
    round(&rt, &small, 10, &mut seed);
    round(&rt, &large, big, &mut seed);
    for _ in 0..ROUNDS {
        s.push(round(&rt, &small, 10, &mut seed));
        l.push(round(&rt, &large, big, &mut seed));
    }
    let (ms, ml) = (median(s.clone()), median(l.clone()));
    println!("hit path, ns per lookup (median of {ROUNDS} rounds of {LOOKUPS_PER_ROUND}):");
    println!("  10 policies:        {ms:7.1}   rounds {s:.1?}");
    println!("  {big} policies: {ml:7.1}   rounds {l:.1?}");
    println!("  difference:         {:7.1} ns per lookup", ml - ms);
    let _ = std::fs::remove_dir_all(&dir);
}
