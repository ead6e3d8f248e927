//! Recency tracking of the in-memory cache: the current design against an LRU list.
//!
//! The current `Cache` keeps an `RwLock<HashMap<Name, Slot>>` with an atomic last-used time
//! per slot, so a hit takes only the shared read lock, and eviction samples slots for the least
//! recently used. The alternative is `Mutex<lru::LruCache<Arc<str>, Arc<PolicyEntry>>>`: exact
//! LRU order, but `get` moves the entry to the front and needs `&mut`, so every hit takes the
//! exclusive lock.
//!
//! Both hold 100,000 valid policies (one `PolicyEntry` each) and both lookups check validity
//! and clone the `Arc`, as the lookup path does. The LRU uses std's `RandomState`, the hasher of
//! the current map, so that the comparison is of the locking and recency scheme, not the hash
//! function; `lru_mutex_foldhash` shows the LRU with its own default hasher.
//!
//! - `recency_hit_1thread`: one lookup on one thread, cycling through 65,536 random keys (mostly
//!   not in the CPU caches), and the same key again and again (the bare overhead).
//! - `recency_hit_2threads`: two std threads each doing `OPS_PER_THREAD` lookups of random keys
//!   at once; the time is for both to finish, the throughput counts the lookups of both.
//!
//! Run: `cargo bench --bench cache_recency` (results in `benches/cache_recency.md`).

use std::collections::hash_map::RandomState;
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lru::LruCache;

use mta_sts_policyd::cache::{Cache, Hit, PolicyEntry};
use mta_sts_policyd::policy::parse_policy;

const ENTRIES: usize = 100_000;
/// Random keys cycled through; a power of two, so that the index is a mask.
const KEYS: usize = 1 << 16;
const OPS_PER_THREAD: u64 = 1_000;

fn domain(i: usize) -> String {
    format!("d{i:06}.example.com")
}

fn entry(i: usize, now: SystemTime) -> Arc<PolicyEntry> {
    let d = domain(i);
    let body = format!(
        "version: STSv1\nmode: enforce\nmx: mx1.{d}\nmx: *.mail.example.net\nmax_age: 604800\n"
    );
    let policy = parse_policy(body.as_bytes()).expect("bench policy parses");
    Arc::new(PolicyEntry::new(format!("2024{i:06}"), policy, now))
}

/// `KEYS` domains drawn uniformly from the entries (xorshift64: no extra dependency).
fn random_keys() -> Vec<String> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..KEYS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            domain((x % ENTRIES as u64) as usize)
        })
        .collect()
}

type Lru<S> = Mutex<LruCache<Arc<str>, Arc<PolicyEntry>, S>>;

fn filled(now: SystemTime) -> (Cache, Lru<RandomState>, Lru<lru::DefaultHasher>) {
    let capacity = NonZeroUsize::new(ENTRIES).expect("non-zero");
    let cache = Cache::new(capacity);
    let mut lru_std = LruCache::with_hasher(capacity, RandomState::new());
    let mut lru_fold = LruCache::new(capacity);
    let next_check = now + Duration::from_secs(86_400);
    for i in 0..ENTRIES {
        let d: Arc<str> = domain(i).into();
        let e = entry(i, now);
        cache.insert_policy_shared(
            mta_sts_policyd::cache::Name::from(&*d),
            e.clone(),
            next_check,
            now,
        );
        lru_std.put(d.clone(), e.clone());
        lru_fold.put(d, e);
    }
    assert_eq!(cache.len(), ENTRIES);
    assert_eq!(lru_std.len(), ENTRIES);
    assert_eq!(lru_fold.len(), ENTRIES);
    (cache, Mutex::new(lru_std), Mutex::new(lru_fold))
}

/// The current design: the daemon's own hit path.
fn get_current(cache: &Cache, key: &str, now: SystemTime) -> Arc<PolicyEntry> {
    match cache.get(key, now) {
        Hit::Policy(e) => e,
        _ => panic!("miss for {key}"),
    }
}

/// The LRU: exclusive lock, move to front, validity check, `Arc` clone.
fn get_lru<S: std::hash::BuildHasher>(
    lru: &Lru<S>,
    key: &str,
    now: SystemTime,
) -> Arc<PolicyEntry> {
    let mut lru = lru.lock().unwrap_or_else(|p| p.into_inner());
    match lru.get(key) {
        Some(e) if e.is_valid(now) => e.clone(),
        _ => panic!("miss for {key}"),
    }
}

fn bench(c: &mut Criterion) {
    let now = SystemTime::now();
    let (cache, lru_std, lru_fold) = filled(now);
    let keys = random_keys();
    let hot = domain(ENTRIES / 2);

    let mut g = c.benchmark_group("recency_hit_1thread");
    g.throughput(Throughput::Elements(1));
    let mut next = 0usize;
    g.bench_function("current_rwlock_atomic/random_keys", |b| {
        b.iter(|| {
            let key = &keys[next & (KEYS - 1)];
            next = next.wrapping_add(1);
            get_current(&cache, black_box(key), now)
        })
    });
    g.bench_function("lru_mutex/random_keys", |b| {
        b.iter(|| {
            let key = &keys[next & (KEYS - 1)];
            next = next.wrapping_add(1);
            get_lru(&lru_std, black_box(key), now)
        })
    });
    g.bench_function("lru_mutex_foldhash/random_keys", |b| {
        b.iter(|| {
            let key = &keys[next & (KEYS - 1)];
            next = next.wrapping_add(1);
            get_lru(&lru_fold, black_box(key), now)
        })
    });
    g.bench_function("current_rwlock_atomic/same_key", |b| {
        b.iter(|| get_current(&cache, black_box(&hot), now))
    });
    g.bench_function("lru_mutex/same_key", |b| {
        b.iter(|| get_lru(&lru_std, black_box(&hot), now))
    });
    g.finish();

    let mut g = c.benchmark_group("recency_hit_2threads");
    g.throughput(Throughput::Elements(2 * OPS_PER_THREAD));
    // Each sample starts two threads that run `iters` rounds of OPS_PER_THREAD lookups, so the
    // cost of starting them is spread over the whole sample.
    let run = |iters: u64, lookup: &(dyn Fn(&str) + Sync)| -> Duration {
        let start = Instant::now();
        thread::scope(|s| {
            for t in 0..2usize {
                let keys = &keys;
                s.spawn(move || {
                    let mut i = t * KEYS / 2;
                    for _ in 0..iters * OPS_PER_THREAD {
                        lookup(black_box(&keys[i & (KEYS - 1)]));
                        i = i.wrapping_add(1);
                    }
                });
            }
        });
        start.elapsed()
    };
    g.bench_function("current_rwlock_atomic", |b| {
        b.iter_custom(|iters| {
            run(iters, &|k| {
                black_box(get_current(&cache, k, now));
            })
        })
    });
    g.bench_function("lru_mutex", |b| {
        b.iter_custom(|iters| {
            run(iters, &|k| {
                black_box(get_lru(&lru_std, k, now));
            })
        })
    });
    g.bench_function("lru_mutex_foldhash", |b| {
        b.iter_custom(|iters| {
            run(iters, &|k| {
                black_box(get_lru(&lru_fold, k, now));
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
