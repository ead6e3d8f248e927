//! The counters of the shared fleet cache (`[fleet]`, Redis/Valkey): lookups by result,
//! publishes by result, errors by kind, and whether the server is reachable. Relaxed atomics,
//! like every other counter; rendered by the registry in `metrics/mod.rs`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::exposition::{Family, Kind, Value};

/// What asking the shared cache for a domain the local cache misses gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetLookup {
    /// A valid shared entry, taken into the local cache.
    Hit,
    /// Nothing usable shared (absent, older than what is cached here, or refused as garbage).
    Miss,
    /// Redis did not answer in time or failed.
    Error,
    /// Not asked: the circuit breaker is open after repeated failures.
    Skipped,
}

impl FleetLookup {
    pub const ALL: [FleetLookup; 4] = [
        FleetLookup::Hit,
        FleetLookup::Miss,
        FleetLookup::Error,
        FleetLookup::Skipped,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FleetLookup::Hit => "hit",
            FleetLookup::Miss => "miss",
            FleetLookup::Error => "error",
            FleetLookup::Skipped => "skipped",
        }
    }
}

/// Why a Redis operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetError {
    /// No answer within `[fleet] timeout`.
    Timeout,
    /// Connection refused, reset or closed.
    Connection,
    /// Wrong or missing password (`NOAUTH`, `WRONGPASS`).
    Auth,
    /// Any other error reply or a broken exchange.
    Protocol,
    /// A value that is not a shared entry (wrong type, bad JSON, a policy that does not parse,
    /// over the size limit): refused like a hostile policy host's answer.
    Garbage,
    /// The server is out of memory (`maxmemory` without eviction): writes are refused.
    Oom,
}

impl FleetError {
    pub const ALL: [FleetError; 6] = [
        FleetError::Timeout,
        FleetError::Connection,
        FleetError::Auth,
        FleetError::Protocol,
        FleetError::Garbage,
        FleetError::Oom,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FleetError::Timeout => "timeout",
            FleetError::Connection => "connection",
            FleetError::Auth => "auth",
            FleetError::Protocol => "protocol",
            FleetError::Garbage => "garbage",
            FleetError::Oom => "oom",
        }
    }
}

/// The fleet's counters and its one gauge.
#[derive(Debug, Default)]
pub struct FleetCounters {
    lookups: [AtomicU64; FleetLookup::ALL.len()],
    publishes_ok: AtomicU64,
    publishes_failed: AtomicU64,
    errors: [AtomicU64; FleetError::ALL.len()],
    /// Background refreshes left to the host holding the domain's lease.
    refreshes_left: AtomicU64,
    up: AtomicU64,
}

impl FleetCounters {
    pub fn lookup(&self, r: FleetLookup) {
        self.lookups[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn publish(&self, ok: bool) {
        let c = if ok {
            &self.publishes_ok
        } else {
            &self.publishes_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, kind: FleetError) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refresh_left_to_another_host(&self) {
        self.refreshes_left.fetch_add(1, Ordering::Relaxed);
    }

    /// 1 while the server answers (and `[fleet]` is on), 0 otherwise.
    pub fn set_up(&self, up: bool) {
        self.up.store(u64::from(up), Ordering::Relaxed);
    }

    pub fn lookups(&self, r: FleetLookup) -> u64 {
        self.lookups[r as usize].load(Ordering::Relaxed)
    }

    pub fn errors(&self, kind: FleetError) -> u64 {
        self.errors[kind as usize].load(Ordering::Relaxed)
    }

    pub fn publishes(&self) -> (u64, u64) {
        (
            self.publishes_ok.load(Ordering::Relaxed),
            self.publishes_failed.load(Ordering::Relaxed),
        )
    }

    pub(super) fn counter_families(&self) -> Vec<Family> {
        let load = |a: &AtomicU64| Value::Count(a.load(Ordering::Relaxed));
        let mut lookups = Family::new(
            "mta_sts_fleet_lookups_total",
            "Local cache misses asked of the shared fleet cache, by result.",
            Kind::Counter,
        );
        for r in FleetLookup::ALL {
            lookups.push(
                "",
                format!("{{result=\"{}\"}}", r.label()),
                load(&self.lookups[r as usize]),
            );
        }
        let mut publishes = Family::new(
            "mta_sts_fleet_publishes_total",
            "Discovery results published to the shared fleet cache, by result.",
            Kind::Counter,
        );
        publishes.push("", "{result=\"ok\"}".into(), load(&self.publishes_ok));
        publishes.push(
            "",
            "{result=\"failed\"}".into(),
            load(&self.publishes_failed),
        );
        let mut errors = Family::new(
            "mta_sts_fleet_errors_total",
            "Failed operations on the shared fleet cache, by kind.",
            Kind::Counter,
        );
        for k in FleetError::ALL {
            errors.push(
                "",
                format!("{{kind=\"{}\"}}", k.label()),
                load(&self.errors[k as usize]),
            );
        }
        vec![
            lookups,
            publishes,
            errors,
            Family::single(
                "mta_sts_fleet_refreshes_left_total",
                "Background refreshes not run because another host of the fleet had just refreshed the domain.",
                Kind::Counter,
                load(&self.refreshes_left),
            ),
        ]
    }

    pub(super) fn up_family(&self) -> Family {
        Family::single(
            "mta_sts_fleet_up",
            "1 while the shared fleet cache answers; 0 when it does not or [fleet] is off.",
            Kind::Gauge,
            Value::Count(self.up.load(Ordering::Relaxed)),
        )
    }
}
