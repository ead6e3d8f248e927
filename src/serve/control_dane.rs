//! The DANE side of the control verbs (RFC 7672): how `ctl show` and `ctl list --mode
//! dane-only|dane` present a destination's DANE state. JSON out, no I/O.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::cache::{DaneCache, DaneEntry};
use crate::dane::Verdict;

/// `list --mode` values that select DANE states, by the level they answer.
pub const MODES: [&str; 2] = ["dane-only", "dane"];

fn time(t: SystemTime) -> Value {
    json!(humantime::format_rfc3339_seconds(t).to_string())
}

/// A DANE state as `ctl show` prints it: verdict, every server with its TLSA records and
/// whether each answer was authenticated, when it was checked and until when it holds.
pub fn view(entry: &DaneEntry, now: SystemTime) -> Value {
    let s = &entry.state;
    let hosts: Vec<Value> = s
        .hosts
        .iter()
        .map(|h| {
            json!({
                "name": h.name,
                "addresses_authenticated": h.secure,
                "addressable": h.addressable,
                "tlsa_authenticated": h.tlsa_authenticated,
                "tlsa": h.tlsa.iter().map(|t| format!(
                    "{t}{}", if t.usable() { "" } else { " (unusable, RFC 7672 §3.1)" }
                )).collect::<Vec<_>>(),
                "usable": h.usable(),
            })
        })
        .collect();
    json!({
        "verdict": s.verdict.label(),
        "answer": s.verdict.level().unwrap_or(match s.verdict {
            Verdict::NullMx | Verdict::NxDomain => "not found (no mail)",
            _ => "the MTA-STS answer",
        }),
        "mx_authenticated": s.mx_authenticated,
        "hosts": hosts,
        "checked": time(entry.checked),
        "expires": time(entry.expires()),
        "valid": entry.is_valid(now),
        "ttl_s": s.ttl.as_secs(),
    })
}

/// The `ctl list` rows of unexpired DANE states whose level is `mode` (one of [`MODES`]).
pub fn rows(cache: &DaneCache, mode: &str, now: SystemTime) -> Vec<Value> {
    cache
        .views()
        .into_iter()
        .filter(|(_, e)| e.is_valid(now) && e.state.verdict.level() == Some(mode))
        .map(|(key, e)| {
            json!({"domain": key.as_str(), "kind": "dane", "mode": mode,
                   "hosts": e.state.hosts.len(), "expires": time(e.expires()),
                   "checked": time(e.checked)})
        })
        .collect()
}
