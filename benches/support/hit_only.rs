//! A resolver for benchmarks whose every lookup must be a cache hit: its policy source panics
//! when asked, so a benchmark that missed the cache fails instead of timing the network.
//! Included by the benches that need it (`#[path]`), not a bench target of its own.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use mta_sts_policyd::cache::Cache;
use mta_sts_policyd::clock::SystemClock;
use mta_sts_policyd::discovery::{BoxFuture, FetchError, PolicySource, TxtLookup};
use mta_sts_policyd::resolve::{Resolver, Settings};

/// A source that must never be asked: every benchmarked lookup is a cache hit.
struct NoNetwork;

impl PolicySource for NoNetwork {
    fn txt<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, TxtLookup> {
        panic!("benchmark lookup of {domain} missed the cache and asked DNS")
    }

    fn fetch<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<u8>, FetchError>> {
        panic!("benchmark lookup of {domain} missed the cache and fetched HTTPS")
    }
}

/// An empty resolver with room for `capacity` entries and no network.
pub fn resolver(capacity: usize) -> Resolver {
    Resolver::new(
        Cache::new(NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN)),
        Arc::new(NoNetwork),
        Arc::new(SystemClock),
        Settings {
            deadline: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(3600),
            dns_failure_ttl: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(86_400),
        },
    )
}
