//! The value a shared entry is stored as under its Redis key, without I/O: one JSON object with
//! a format version,
//! `{"v":1,"t":"policy","d":…,"id":…,"fetched":<unix s>,"checked":<unix s>,"policy":<text>}` or
//! `{"v":1,"t":"negative","d":…,"reason":…,"until":<unix s>}`.
//!
//! Whatever Redis returns is untrusted: another host, an old version, an operator's `SET` or an
//! attacker with access to the server may have written it. Decoding treats it like a hostile
//! policy host's answer: a size limit before parsing, the same RFC 8461 parser as a fetched
//! policy (and as the journal, `cache/journal/format.rs`), the TXT id's syntax (RFC 8461 §3.1:
//! 1 to 32 letters and digits), the key's own domain, and times that cannot lie in the future
//! (a policy "fetched" tomorrow would win every newer-wins comparison and outlive its max_age).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cache::memory::PolicyEntry;
use crate::policy::{MAX_POLICY_BYTES, parse_policy};

const VERSION: u64 = 1;
/// The largest value decoded: a policy at RFC 8461 §3.3's 64 KiB limit, doubled for JSON
/// escaping, plus the other fields. Longer values are refused before parsing.
pub const MAX_VALUE_BYTES: usize = 2 * MAX_POLICY_BYTES + 1024;
/// A negative's reason is a short text for operators.
const MAX_REASON: usize = 256;
/// How far ahead of this host's clock a shared time may lie (clocks of two hosts differ a
/// little); beyond it the value is refused.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// One shared entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shared {
    /// A fetched policy, and when some host of the fleet last confirmed it (a TXT check that
    /// found the same id, or the fetch itself).
    Policy {
        entry: Arc<PolicyEntry>,
        checked: SystemTime,
    },
    /// The domain publishes no policy (RFC 8461 §3.1: no TXT record), until `until`.
    Negative { reason: String, until: SystemTime },
}

impl Shared {
    /// How long Redis keeps it: its remaining validity; None once it is over.
    pub fn ttl(&self, now: SystemTime) -> Option<Duration> {
        let end = match self {
            Shared::Policy { entry, .. } => entry.expires(),
            Shared::Negative { until, .. } => *until,
        };
        end.duration_since(now).ok().filter(|d| !d.is_zero())
    }
}

/// What decoding concluded about a value that is not garbage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Entry(Shared),
    /// Well formed but no longer valid (Redis may keep a key a little past its TTL's second).
    Expired,
}

#[derive(Serialize)]
struct Out<'a> {
    v: u64,
    t: &'a str,
    d: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fetched: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checked: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<u64>,
}

#[derive(Deserialize)]
struct In {
    v: Option<u64>,
    t: Option<String>,
    d: Option<String>,
    id: Option<String>,
    fetched: Option<u64>,
    checked: Option<u64>,
    policy: Option<String>,
    reason: Option<String>,
    until: Option<u64>,
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The value for `domain`'s key.
pub fn encode(domain: &str, shared: &Shared) -> String {
    let text;
    let out = match shared {
        Shared::Policy { entry, checked } => {
            text = entry.policy.to_text();
            Out {
                v: VERSION,
                t: "policy",
                d: domain,
                id: Some(&entry.id),
                fetched: Some(unix_seconds(entry.fetched)),
                checked: Some(unix_seconds(*checked)),
                policy: Some(&text),
                reason: None,
                until: None,
            }
        }
        Shared::Negative { reason, until } => Out {
            v: VERSION,
            t: "negative",
            d: domain,
            id: None,
            fetched: None,
            checked: None,
            policy: None,
            reason: Some(truncate(reason, MAX_REASON)),
            until: Some(unix_seconds(*until)),
        },
    };
    // Plain strings and integers: serialising cannot fail.
    serde_json::to_string(&out).unwrap_or_default()
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn time(secs: u64, what: &str, now: SystemTime) -> Result<SystemTime, String> {
    let t = UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or_else(|| format!("\"{what}\" is out of range"))?;
    if t > now + CLOCK_SKEW {
        return Err(format!("\"{what}\" lies in the future"));
    }
    Ok(t)
}

/// Decodes the value found under `domain`'s key. `max_negative` caps how long a shared "no
/// policy" is believed (this host's `[cache] negative_ttl`). Err says why it is garbage.
pub fn decode(
    domain: &str,
    value: &[u8],
    now: SystemTime,
    max_negative: Duration,
) -> Result<Decoded, String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "{} bytes, more than the limit of {MAX_VALUE_BYTES}",
            value.len()
        ));
    }
    let raw: In = serde_json::from_slice(value).map_err(|e| format!("bad JSON: {e}"))?;
    match raw.v {
        Some(VERSION) => {}
        Some(v) => return Err(format!("unknown format version {v}")),
        None => return Err("no format version \"v\"".into()),
    }
    if raw.d.as_deref() != Some(domain) {
        return Err("the entry names another domain".into());
    }
    match raw.t.as_deref() {
        Some("policy") => {
            let (Some(id), Some(fetched), Some(checked), Some(text)) =
                (raw.id, raw.fetched, raw.checked, raw.policy)
            else {
                return Err("policy without \"id\", \"fetched\", \"checked\" or \"policy\"".into());
            };
            // RFC 8461 §3.1: id = 1*32(ALPHA / DIGIT).
            if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err("\"id\" is not 1 to 32 letters and digits (RFC 8461 §3.1)".into());
            }
            let policy = parse_policy(text.as_bytes())
                .map_err(|e| format!("the policy does not parse: {e}"))?;
            let fetched = time(fetched, "fetched", now)?;
            let checked = time(checked, "checked", now)?.max(fetched);
            let max_age = Duration::from_secs(u64::from(policy.max_age));
            if fetched.checked_add(max_age).is_none() {
                return Err("\"fetched\" is out of range".into());
            }
            let entry = Arc::new(PolicyEntry::new(id, policy, fetched));
            if !entry.is_valid(now) {
                return Ok(Decoded::Expired);
            }
            Ok(Decoded::Entry(Shared::Policy { entry, checked }))
        }
        Some("negative") => {
            let (Some(reason), Some(until)) = (raw.reason, raw.until) else {
                return Err("negative without \"reason\" or \"until\"".into());
            };
            if reason.len() > MAX_REASON || reason.chars().any(char::is_control) {
                return Err("\"reason\" is too long or holds control characters".into());
            }
            let until = UNIX_EPOCH
                .checked_add(Duration::from_secs(until))
                .ok_or("\"until\" is out of range")?
                .min(now + max_negative);
            if until <= now {
                return Ok(Decoded::Expired);
            }
            Ok(Decoded::Entry(Shared::Negative { reason, until }))
        }
        Some(other) => Err(format!("unknown entry type {:?}", truncate(other, 32))),
        None => Err("no entry type \"t\"".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn policy_entry(fetched: SystemTime) -> Arc<PolicyEntry> {
        let p =
            parse_policy(b"version: STSv1\nmode: enforce\nmx: mx.example.test\nmax_age: 86400\n")
                .unwrap();
        Arc::new(PolicyEntry::new("20260101".into(), p, fetched))
    }

    #[test]
    fn policy_and_negative_round_trip() {
        let p = Shared::Policy {
            entry: policy_entry(now() - HOUR),
            checked: now(),
        };
        let text = encode("example.test", &p);
        assert_eq!(
            decode("example.test", text.as_bytes(), now(), HOUR),
            Ok(Decoded::Entry(p.clone()))
        );
        assert_eq!(p.ttl(now()), Some(Duration::from_secs(86_400) - HOUR));
        let n = Shared::Negative {
            reason: "no _mta-sts TXT record (NXDOMAIN)".into(),
            until: now() + Duration::from_secs(600),
        };
        let text = encode("example.test", &n);
        assert_eq!(
            decode("example.test", text.as_bytes(), now(), HOUR),
            Ok(Decoded::Entry(n))
        );
    }

    #[test]
    fn an_expired_entry_is_not_garbage_but_not_used() {
        let p = Shared::Policy {
            entry: policy_entry(now() - Duration::from_secs(90_000)),
            checked: now() - Duration::from_secs(90_000),
        };
        assert_eq!(p.ttl(now()), None);
        let text = encode("example.test", &p);
        assert_eq!(
            decode("example.test", text.as_bytes(), now(), HOUR),
            Ok(Decoded::Expired)
        );
    }

    #[test]
    fn a_shared_negative_is_believed_no_longer_than_negative_ttl() {
        let n = Shared::Negative {
            reason: "none".into(),
            until: now() + Duration::from_secs(86_400),
        };
        let text = encode("example.test", &n);
        let Ok(Decoded::Entry(Shared::Negative { until, .. })) =
            decode("example.test", text.as_bytes(), now(), HOUR)
        else {
            panic!()
        };
        assert_eq!(until, now() + HOUR);
    }

    #[test]
    fn hostile_values_are_refused_with_a_reason() {
        let good = encode(
            "example.test",
            &Shared::Policy {
                entry: policy_entry(now()),
                checked: now(),
            },
        );
        let future = good.replace("\"fetched\":1800000000", "\"fetched\":1900000000");
        let bad_policy = good.replace("mode: enforce", "mode: strict");
        let bad_id = good.replace("20260101", "2026-01-01");
        let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_VALUE_BYTES));
        for (value, why) in [
            ("", "bad JSON"),
            ("\u{0}\u{1}garbage", "bad JSON"),
            ("[1,2,3]", "bad JSON"),
            ("{\"t\":\"policy\"}", "no format version"),
            ("{\"v\":2,\"t\":\"policy\"}", "unknown format version"),
            (huge.as_str(), "more than the limit"),
            (future.as_str(), "lies in the future"),
            (bad_policy.as_str(), "does not parse"),
            (bad_id.as_str(), "RFC 8461 §3.1"),
        ] {
            let e = decode("example.test", value.as_bytes(), now(), HOUR).unwrap_err();
            assert!(e.contains(why), "{value:.80}: {e}");
        }
        let e = decode("other.test", good.as_bytes(), now(), HOUR).unwrap_err();
        assert!(e.contains("another domain"), "{e}");
    }
}
