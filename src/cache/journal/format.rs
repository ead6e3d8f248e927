//! The journal's line format, without I/O: the header, one record per line with its own CRC-32
//! and record version, and [`Record`] to and from such a line.
//!
//! One record per line after the header line `mta-sts-policyd journal 1`:
//! `<CRC-32 (IEEE) of the JSON as 8 lowercase hex digits> <JSON>`, the JSON being one of
//! `{"v":1,"t":"policy","d":…,"id":…,"fetched":<unix seconds>,"policy":<Policy::to_text()>}`,
//! `{"v":1,"t":"negative","d":…,"reason":…,"until":<unix seconds>}` or
//! `{"v":1,"t":"remove","d":…}`, and for a DANE state (RFC 7672)
//! `{"v":1,"t":"dane","d":"dane:<destination>","fetched":<unix seconds>,"policy":<state JSON>}`
//! (the `dane:` prefix keeps destinations apart from policy domains, which never hold a ':';
//! its removal is a `remove` record with the same `d`). Times are whole seconds, so a reloaded
//! policy may expire up to a second earlier than in memory.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cache::Name;
use crate::cache::dane::DaneEntry;
use crate::cache::memory::PolicyEntry;
use crate::dane::DaneState;
use crate::policy::parse_policy;

/// How DANE destinations are told apart from policy domains in the journal's `d` field.
pub const DANE_PREFIX: &str = "dane:";
/// A stored DANE state larger than this is damage (16 hosts × 32 records fit well within it).
const MAX_DANE_JSON: usize = 64 * 1024;

/// The journal's name in the state directory.
pub(super) const JOURNAL: &str = "policies.journal";
/// Where compaction writes the new journal before renaming it over the old one.
pub(super) const JOURNAL_TMP: &str = "policies.journal.tmp";
pub(super) const HEADER_PREFIX: &str = "mta-sts-policyd journal ";
pub(super) const HEADER: &str = "mta-sts-policyd journal 1";
const RECORD_VERSION: u64 = 1;

/// One change to the persisted state of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A fetched policy; `entry.expires()` is recomputed from `fetched` and max_age at load.
    Policy {
        domain: Name,
        entry: Arc<PolicyEntry>,
    },
    /// A remembered "no policy" (or fetch back-off) that holds until `until`.
    Negative {
        domain: Name,
        reason: String,
        until: SystemTime,
    },
    /// A DANE state; `domain` is [`DANE_PREFIX`] + the destination (see [`Record::dane`]).
    Dane { domain: Name, entry: Arc<DaneEntry> },
    /// Forget the domain (or, with [`DANE_PREFIX`], the DANE destination).
    Remove { domain: Name },
}

// ---- CRC-32 ---------------------------------------------------------------------------------

/// CRC-32/IEEE (reflected polynomial 0xEDB88320), the zlib/PNG checksum.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

pub(super) fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8);
    }
    !c
}

/// Exactly eight lowercase hex digits, as written: any other spelling is damage.
fn parse_crc(field: &[u8]) -> Option<u32> {
    if field.len() != 8 {
        return None;
    }
    field.iter().try_fold(0u32, |acc, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u32::from(digit))
    })
}

// ---- records as lines -----------------------------------------------------------------------

#[derive(Serialize)]
struct RecordOut<'a> {
    v: u64,
    t: &'static str,
    d: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fetched: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<u64>,
}

/// Every field optional, so that the version is checked before anything else and unknown
/// fields of later v1 writers are ignored.
#[derive(Deserialize)]
struct RecordIn {
    v: Option<u64>,
    t: Option<Kind>,
    d: Option<String>,
    id: Option<String>,
    fetched: Option<u64>,
    policy: Option<String>,
    reason: Option<String>,
    until: Option<u64>,
}

/// The record type, `"t"`: an enum so that reading it allocates nothing.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Policy,
    Negative,
    Remove,
    Dane,
    #[serde(other)]
    Unknown,
}

pub(super) fn unix_seconds(t: SystemTime) -> u64 {
    // A time before 1970 cannot come from a fetch; 0 is expired, the safe reading.
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Record {
    /// The record of a DANE state for `destination` (e.g. `[relay.example.com]:587`).
    pub fn dane(destination: &str, entry: Arc<DaneEntry>) -> Record {
        Record::Dane {
            domain: format!("{DANE_PREFIX}{destination}").into(),
            entry,
        }
    }

    /// The record that forgets the DANE state of `destination`.
    pub fn dane_remove(destination: &str) -> Record {
        Record::Remove {
            domain: format!("{DANE_PREFIX}{destination}").into(),
        }
    }

    pub(super) fn domain(&self) -> &str {
        self.domain_arc()
    }

    pub(super) fn domain_arc(&self) -> &Name {
        match self {
            Record::Policy { domain, .. }
            | Record::Negative { domain, .. }
            | Record::Dane { domain, .. }
            | Record::Remove { domain } => domain,
        }
    }

    /// The journal line, without its newline.
    pub(super) fn encode(&self) -> Result<String, serde_json::Error> {
        let text;
        let out = match self {
            Record::Dane { domain, entry } => {
                text = serde_json::to_string(&entry.state)?;
                RecordOut {
                    v: RECORD_VERSION,
                    t: "dane",
                    d: domain,
                    id: None,
                    fetched: Some(unix_seconds(entry.checked)),
                    policy: Some(&text),
                    reason: None,
                    until: None,
                }
            }
            Record::Policy { domain, entry } => {
                text = entry.policy.to_text();
                RecordOut {
                    v: RECORD_VERSION,
                    t: "policy",
                    d: domain,
                    id: Some(&entry.id),
                    fetched: Some(unix_seconds(entry.fetched)),
                    policy: Some(&text),
                    reason: None,
                    until: None,
                }
            }
            Record::Negative {
                domain,
                reason,
                until,
            } => RecordOut {
                v: RECORD_VERSION,
                t: "negative",
                d: domain,
                id: None,
                fetched: None,
                policy: None,
                reason: Some(reason),
                until: Some(unix_seconds(*until)),
            },
            Record::Remove { domain } => RecordOut {
                v: RECORD_VERSION,
                t: "remove",
                d: domain,
                id: None,
                fetched: None,
                policy: None,
                reason: None,
                until: None,
            },
        };
        let json = serde_json::to_string(&out)?;
        Ok(format!("{:08x} {json}", crc32(json.as_bytes())))
    }

    /// Parses one journal line (without its newline). The error says why it is unusable.
    pub(super) fn decode(line: &[u8]) -> Result<Record, String> {
        let (Some(crc_field), Some(b' ')) = (line.get(..8), line.get(8)) else {
            return Err("not a \"<crc32> <json>\" line".to_owned());
        };
        let Some(stored) = parse_crc(crc_field) else {
            return Err("checksum field is not 8 lowercase hex digits".to_owned());
        };
        let json = &line[9..];
        let computed = crc32(json);
        if computed != stored {
            return Err(format!(
                "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ));
        }
        let raw: RecordIn = serde_json::from_slice(json).map_err(|e| format!("bad JSON: {e}"))?;
        match raw.v {
            Some(RECORD_VERSION) => {}
            Some(v) => return Err(format!("unknown record version {v}")),
            None => return Err("no record version \"v\"".to_owned()),
        }
        let domain: Name = raw.d.ok_or("no domain \"d\"")?.into();
        match raw.t {
            Some(Kind::Policy) => {
                let (Some(id), Some(fetched), Some(text)) = (raw.id, raw.fetched, raw.policy)
                else {
                    return Err("policy record without \"id\", \"fetched\" or \"policy\"".into());
                };
                let policy = parse_policy(text.as_bytes())
                    .map_err(|e| format!("stored policy no longer parses: {e}"))?;
                // PolicyEntry::new adds max_age to `fetched`: both must stay representable.
                let max_age = Duration::from_secs(u64::from(policy.max_age));
                let fetched = UNIX_EPOCH
                    .checked_add(Duration::from_secs(fetched))
                    .filter(|t| t.checked_add(max_age).is_some())
                    .ok_or("\"fetched\" is out of range")?;
                Ok(Record::Policy {
                    domain,
                    entry: Arc::new(PolicyEntry::new(id, policy, fetched)),
                })
            }
            Some(Kind::Negative) => {
                let (Some(reason), Some(until)) = (raw.reason, raw.until) else {
                    return Err("negative record without \"reason\" or \"until\"".into());
                };
                let until = UNIX_EPOCH
                    .checked_add(Duration::from_secs(until))
                    .ok_or("\"until\" is out of range")?;
                Ok(Record::Negative {
                    domain,
                    reason,
                    until,
                })
            }
            Some(Kind::Remove) => Ok(Record::Remove { domain }),
            Some(Kind::Dane) => {
                let (Some(checked), Some(text)) = (raw.fetched, raw.policy) else {
                    return Err("dane record without \"fetched\" or \"policy\"".into());
                };
                if !domain.starts_with(DANE_PREFIX) || text.len() > MAX_DANE_JSON {
                    return Err("dane record with a bad destination or an oversized state".into());
                }
                let state: DaneState = serde_json::from_str(&text)
                    .map_err(|e| format!("stored DANE state no longer parses: {e}"))?;
                // Read back like an answer from the network: the verdict must follow from it.
                state
                    .validate()
                    .map_err(|e| format!("stored DANE state is not valid: {e}"))?;
                let checked = UNIX_EPOCH
                    .checked_add(Duration::from_secs(checked))
                    .filter(|t| t.checked_add(state.ttl).is_some())
                    .ok_or("\"fetched\" is out of range")?;
                Ok(Record::Dane {
                    domain,
                    entry: Arc::new(DaneEntry::new(state, checked)),
                })
            }
            Some(Kind::Unknown) => Err("unknown record type \"t\"".to_owned()),
            None => Err("no record type \"t\"".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::journal::test_support::{negative, policy, remove, secs};

    #[test]
    fn crc32_known_answer() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(parse_crc(b"cbf43926"), Some(0xCBF4_3926));
        assert_eq!(parse_crc(b"CBF43926"), None);
        assert_eq!(parse_crc(b"cbf4392"), None);
    }

    #[test]
    fn record_lines_have_the_documented_shape() {
        let t = UNIX_EPOCH + secs(1_700_000_000);
        let l = policy("example.com", "abc", t).encode().unwrap();
        let (crc, json) = l.split_once(' ').unwrap();
        assert_eq!(crc, format!("{:08x}", crc32(json.as_bytes())));
        assert_eq!(
            json,
            r#"{"v":1,"t":"policy","d":"example.com","id":"abc","fetched":1700000000,"policy":"version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: *.example.net\nmax_age: 86400\n"}"#
        );
        let n = negative("x.test", "no TXT", t + secs(3600))
            .encode()
            .unwrap();
        assert!(n.ends_with(
            r#" {"v":1,"t":"negative","d":"x.test","reason":"no TXT","until":1700003600}"#
        ));
        let r = remove("x.test").encode().unwrap();
        assert!(r.ends_with(r#" {"v":1,"t":"remove","d":"x.test"}"#));
        for rec in [policy("example.com", "abc", t), remove("x.test")] {
            assert_eq!(Record::decode(rec.encode().unwrap().as_bytes()), Ok(rec));
        }
    }
}
