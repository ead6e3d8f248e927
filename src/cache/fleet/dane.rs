//! DANE states (RFC 7672) in the fleet cache, beside the policies: key
//! `<prefix>dane:<destination>`, value
//! `{"v":1,"d":<destination>,"checked":<unix s>,"state":<DaneState>}`, Redis TTL the state's
//! remaining validity. A host's DANE miss asks here before its own DNS lookups; every DANE
//! discovery is published.
//!
//! Untrusted like every shared value: a size limit before parsing, the key's own destination,
//! a check time that cannot lie in the future, and the state re-validated as one read back from
//! the journal (bounded sizes, a TTL in range, a verdict that follows from its hosts): a forged
//! `dane-only` without usable TLSA records is refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::client::Failure;
use super::codec::CLOCK_SKEW;
use super::{Fleet, glob_escape};
use crate::cache::dane::DaneEntry;
use crate::dane::DaneState;
use crate::metrics::{FleetError, FleetLookup};

const VERSION: u64 = 1;
/// 16 hosts × 32 records of at most 64 bytes each, hex, with JSON around them, fit well within.
pub const MAX_DANE_VALUE_BYTES: usize = 128 * 1024;

#[derive(Serialize, Deserialize)]
struct Value<S> {
    v: u64,
    d: String,
    checked: u64,
    state: S,
}

/// The value stored for `destination`.
pub fn encode(destination: &str, entry: &DaneEntry) -> String {
    let checked = entry
        .checked
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let v = Value {
        v: VERSION,
        d: destination.to_string(),
        checked,
        state: &entry.state,
    };
    serde_json::to_string(&v).unwrap_or_default()
}

/// The state a value holds for `destination`: Ok(None) when well formed but expired.
pub fn decode(
    destination: &str,
    value: &[u8],
    now: SystemTime,
) -> Result<Option<DaneEntry>, String> {
    if value.len() > MAX_DANE_VALUE_BYTES {
        return Err(format!(
            "{} bytes, more than the limit of {MAX_DANE_VALUE_BYTES}",
            value.len()
        ));
    }
    let v: Value<DaneState> =
        serde_json::from_slice(value).map_err(|e| format!("not a DANE state: {e}"))?;
    if v.v != VERSION {
        return Err(format!("unknown format version {}", v.v));
    }
    if v.d != destination {
        return Err(format!("stored for {:?}, read as {destination:?}", v.d));
    }
    v.state.validate()?;
    let checked = UNIX_EPOCH
        .checked_add(Duration::from_secs(v.checked))
        .filter(|t| t.checked_add(v.state.ttl).is_some())
        .ok_or("\"checked\" is out of range")?;
    if checked > now + CLOCK_SKEW {
        return Err("checked in the future".into());
    }
    let entry = DaneEntry::new(v.state, checked);
    Ok(entry.is_valid(now).then_some(entry))
}

impl Fleet {
    fn dane_key(&self, destination: &str) -> String {
        format!("{}dane:{destination}", self.settings.key_prefix)
    }

    /// The shared DANE state of `destination`, validated; at most `[fleet] timeout`. Counted
    /// with the policy lookups in `mta_sts_fleet_lookups_total`.
    pub async fn get_dane(&self, destination: &str, now: SystemTime) -> Option<DaneEntry> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.dane_key(destination));
        let (found, result) = match self.client.run::<Option<Vec<u8>>>(&cmd).await {
            Ok(None) => (None, FleetLookup::Miss),
            Ok(Some(value)) => match decode(destination, &value, now) {
                Ok(Some(e)) => (Some(e), FleetLookup::Hit),
                Ok(None) => (None, FleetLookup::Miss),
                Err(e) => {
                    self.client
                        .garbage(&format!("DANE value of {destination} refused: {e}"));
                    (None, FleetLookup::Miss)
                }
            },
            Err(Failure::Skipped) => (None, FleetLookup::Skipped),
            Err(Failure::Failed(FleetError::Garbage, _)) => (None, FleetLookup::Miss),
            Err(Failure::Failed(..)) => (None, FleetLookup::Error),
        };
        self.metrics.fleet().lookup(result);
        found
    }

    /// Publishes a DANE state with a Redis TTL equal to its remaining validity, in the
    /// background: the discovery that learnt it never waits on the server.
    pub fn publish_dane(self: &Arc<Self>, destination: &str, entry: &DaneEntry, now: SystemTime) {
        let Some(ttl) = entry
            .expires()
            .duration_since(now)
            .ok()
            .filter(|d| !d.is_zero())
        else {
            return;
        };
        self.set_in_background(self.dane_key(destination), encode(destination, entry), ttl);
    }

    /// Removes the shared DANE state of `destination` (fleet-wide evict).
    pub async fn forget_dane(&self, destination: &str) -> Result<(), Failure> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.dane_key(destination));
        self.client.run::<u64>(&cmd).await.map(|_| ())
    }

    /// The SCAN pattern of every shared DANE state of this fleet (fleet-wide purge).
    pub(super) fn dane_pattern(&self) -> String {
        format!("{}dane:*", glob_escape(&self.settings.key_prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dane::{HostState, Tlsa, Verdict};

    fn entry(checked: SystemTime) -> DaneEntry {
        DaneEntry::new(
            DaneState {
                verdict: Verdict::DaneOnly,
                mx_authenticated: true,
                hosts: vec![HostState {
                    name: "mx.example.com".into(),
                    secure: true,
                    addressable: true,
                    tlsa_authenticated: true,
                    tlsa: vec![Tlsa::new(3, 1, 1, &[9; 32])],
                }],
                ttl: Duration::from_secs(3600),
            },
            checked,
        )
    }

    #[test]
    fn a_shared_dane_state_round_trips_and_is_checked_like_a_journal_one() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let e = entry(t);
        let v = encode("example.com", &e);
        assert_eq!(
            decode("example.com", v.as_bytes(), t + Duration::from_secs(10)),
            Ok(Some(e.clone()))
        );
        // Expired: well formed, nothing to use.
        assert_eq!(
            decode("example.com", v.as_bytes(), t + Duration::from_secs(3600)),
            Ok(None)
        );
        // Under another destination's key, from the future, forged, oversized, garbage.
        assert!(decode("other.example", v.as_bytes(), t).is_err());
        assert!(decode("example.com", v.as_bytes(), t - Duration::from_secs(600)).is_err());
        let mut forged = e.clone();
        forged.state.hosts[0].tlsa[0].usage = 1;
        let f = encode("example.com", &forged);
        let err = decode("example.com", f.as_bytes(), t).unwrap_err();
        assert!(err.contains("does not follow"), "{err}");
        let huge = vec![b' '; MAX_DANE_VALUE_BYTES + 1];
        assert!(decode("example.com", &huge, t).is_err());
        assert!(decode("example.com", b"\x00\xff{", t).is_err());
    }
}
