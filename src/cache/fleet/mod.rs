//! The fleet cache: one Redis/Valkey server that several daemons (one per mail host) share as a
//! second level behind their own cache. A local miss asks it before discovering; every
//! discovery result is published to it; background refreshes are coordinated through short
//! leases; operator verbs reach every daemon through a channel.
//!
//! Redis never sits on the hit path and never decides availability: the local cache and
//! journal stay the source of every answer, each operation is bounded by `[fleet] timeout`, a
//! circuit breaker stops asking a failing server for a while, and everything read from it is
//! validated like a fetched policy. Without the server, the daemon works exactly as without
//! `[fleet]`.
//!
//! Owns the connection and breaker (`client.rs`), the value format (`codec.rs`, pure), the
//! refresh lease (`lease.rs`) and the operator channel (`channel.rs`); this file is the handle
//! the resolver uses; `dane.rs` shares DANE states the same way. Keys: `<prefix>policy:<domain>`,
//! `<prefix>dane:<destination>`, `<prefix>lease:<domain>`; channel: `<prefix>ctl`.
//!
//! May import: `policy`, `dane`, `metrics`, and `cache::memory`'s and `cache::dane`'s types. Never the resolver, discovery
//! or the servers. Inside: `client` and `codec` are leaves, `lease` uses `client`, this file
//! uses the three, and `channel` uses this file.

pub mod channel;
pub mod client;
pub mod codec;
pub mod dane;
pub mod lease;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tracing::debug;

use crate::metrics::{FleetError, FleetLookup, Metrics};

pub use channel::Command;
pub use client::{Failure, Health};
pub use codec::Shared;
pub use lease::Lease;

/// Publishes in flight at once; beyond it a result is not shared (the next miss or refresh of
/// another host discovers it), so a slow server cannot pile up tasks.
const MAX_PUBLISHING: usize = 256;

/// What a daemon needs to join the fleet, from `[fleet]` and the password file.
#[derive(Clone)]
pub struct Settings {
    pub redis: String,
    pub password: Option<String>,
    pub key_prefix: String,
    pub timeout: Duration,
    /// How long a refresh lease holds: longer than one discovery can take.
    pub lease: Duration,
    /// This host's `[cache] negative_ttl`: a shared "no policy" is believed no longer.
    pub max_negative: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("redis", &self.redis)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .finish()
    }
}

/// The answer of [`Fleet::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Entry(Shared),
    /// Nothing usable shared (absent, expired or garbage).
    Nothing,
    /// The server was not asked or did not answer.
    Unavailable,
}

pub struct Fleet {
    client: client::Client,
    settings: Settings,
    /// This daemon's name in leases and channel messages: random per start, so two daemons of
    /// one host (or of one test process) differ.
    host: String,
    publishing: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Fleet {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Result<Arc<Fleet>, String> {
        let client = client::Client::new(
            &settings.redis,
            settings.password.as_deref(),
            settings.timeout,
            metrics.clone(),
        )?;
        let host = format!(
            "{}-{:016x}",
            std::process::id(),
            RandomState::new().hash_one(SystemTime::now())
        );
        Ok(Arc::new(Fleet {
            client,
            settings,
            host,
            publishing: Arc::new(Semaphore::new(MAX_PUBLISHING)),
            metrics,
        }))
    }

    /// The fleet to use with `settings` (None: off), given the one in use: kept when nothing
    /// changed, so that a reload does not drop the connection. Also whether it changed.
    pub fn replace(
        current: Option<Arc<Fleet>>,
        settings: Option<Settings>,
        metrics: &Arc<Metrics>,
    ) -> Result<(Option<Arc<Fleet>>, bool), String> {
        match (settings, current) {
            (None, current) => Ok((None, current.is_some())),
            (Some(s), Some(f)) if f.same_settings(&s) => Ok((Some(f), false)),
            (Some(s), _) => Ok((Some(Fleet::new(s, metrics.clone())?), true)),
        }
    }

    /// Whether `other` would connect to the same server the same way (a reload keeps the
    /// connection when nothing changed).
    pub fn same_settings(&self, other: &Settings) -> bool {
        let s = &self.settings;
        s.redis == other.redis
            && s.password == other.password
            && s.key_prefix == other.key_prefix
            && s.timeout == other.timeout
            && s.lease == other.lease
            && s.max_negative == other.max_negative
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The server as configured (never holds a password: the config refuses one in the URL).
    pub fn redis(&self) -> &str {
        &self.settings.redis
    }

    pub fn lease_duration(&self) -> Duration {
        self.settings.lease
    }

    pub fn health(&self) -> Health {
        self.client.health()
    }

    /// What `ctl status` shows (never the password).
    pub fn status(&self) -> serde_json::Value {
        let h = self.client.health();
        let c = self.metrics.fleet();
        let (published, failed) = c.publishes();
        let state = match h.up {
            Some(true) => "up",
            Some(false) => "down",
            None => "not used yet",
        };
        serde_json::json!({
            "redis": self.settings.redis,
            "state": state,
            "breaker": if h.breaker_open { "open" } else { "closed" },
            "failures_in_a_row": h.failures,
            "last_error": h.last_error,
            "lookups": {
                "hit": c.lookups(FleetLookup::Hit),
                "miss": c.lookups(FleetLookup::Miss),
                "error": c.lookups(FleetLookup::Error),
                "skipped": c.lookups(FleetLookup::Skipped),
            },
            "publishes": {"ok": published, "failed": failed},
        })
    }

    fn key(&self, domain: &str) -> String {
        format!("{}policy:{domain}", self.settings.key_prefix)
    }

    fn lease_key(&self, domain: &str) -> String {
        format!("{}lease:{domain}", self.settings.key_prefix)
    }

    pub fn channel(&self) -> String {
        format!("{}ctl", self.settings.key_prefix)
    }

    /// The shared entry for `domain`, validated; at most `[fleet] timeout`. Counted in
    /// `mta_sts_fleet_lookups_total` when `count` (a lookup's miss; not a refresh's look).
    pub async fn get(&self, domain: &str, now: SystemTime, count: bool) -> Found {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(domain));
        let (found, result) = match self.client.run::<Option<Vec<u8>>>(&cmd).await {
            Ok(None) => (Found::Nothing, FleetLookup::Miss),
            Ok(Some(value)) => {
                match codec::decode(domain, &value, now, self.settings.max_negative) {
                    Ok(codec::Decoded::Entry(e)) => (Found::Entry(e), FleetLookup::Hit),
                    Ok(codec::Decoded::Expired) => (Found::Nothing, FleetLookup::Miss),
                    Err(e) => {
                        self.client
                            .garbage(&format!("value of {domain} refused: {e}"));
                        (Found::Nothing, FleetLookup::Miss)
                    }
                }
            }
            Err(Failure::Skipped) => (Found::Unavailable, FleetLookup::Skipped),
            Err(Failure::Failed(FleetError::Garbage, _)) => (Found::Nothing, FleetLookup::Miss),
            Err(Failure::Failed(..)) => (Found::Unavailable, FleetLookup::Error),
        };
        if count {
            self.metrics.fleet().lookup(result);
        }
        found
    }

    /// Publishes `shared` for `domain` with a Redis TTL equal to its remaining validity, in the
    /// background: the caller (a lookup's discovery) never waits on the server.
    pub fn publish(self: &Arc<Self>, domain: &str, shared: Shared, now: SystemTime) {
        let Some(ttl) = shared.ttl(now) else {
            return;
        };
        self.set_in_background(self.key(domain), codec::encode(domain, &shared), ttl);
    }

    /// `SET key value PX ttl` in a task of its own, counted as a publish; at most
    /// [`MAX_PUBLISHING`] at once (beyond it the value is not shared, and counted as failed).
    fn set_in_background(self: &Arc<Self>, key: String, value: String, ttl: Duration) {
        let Ok(permit) = self.publishing.clone().try_acquire_owned() else {
            self.metrics.fleet().publish(false);
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(value).arg("PX").arg(ms);
            let ok = this.client.run::<()>(&cmd).await.is_ok();
            this.metrics.fleet().publish(ok);
            debug!(key, ok, "shared entry published");
        });
    }

    /// Removes `domain`'s shared entry (fleet-wide evict, or a policy with max_age 0).
    pub async fn forget(&self, domain: &str) -> Result<(), Failure> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(domain));
        self.client.run::<u64>(&cmd).await.map(|_| ())
    }

    /// Removes every shared entry of this fleet's prefix (fleet-wide purge); the count removed.
    pub async fn forget_all(&self) -> Result<u64, Failure> {
        let mut removed = 0u64;
        for pattern in [
            format!("{}policy:*", glob_escape(&self.settings.key_prefix)),
            self.dane_pattern(),
        ] {
            removed += self.forget_matching(&pattern).await?;
        }
        Ok(removed)
    }

    async fn forget_matching(&self, pattern: &str) -> Result<u64, Failure> {
        let mut cursor = 0u64;
        let mut removed = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<Vec<u8>>) = self.client.run(&scan).await?;
            if !keys.is_empty() {
                let mut del = redis::cmd("UNLINK");
                del.arg(keys);
                removed += self.client.run::<u64>(&del).await?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Asks for the refresh lease on `domain` (see `lease.rs`).
    pub async fn lease(&self, domain: &str) -> Lease {
        lease::acquire(
            &self.client,
            &self.lease_key(domain),
            &self.host,
            self.settings.lease,
        )
        .await
    }
}

/// `s` with the characters `SCAN MATCH` treats specially escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
