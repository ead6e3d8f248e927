//! Target `fleet_value`: a value read from the fleet's shared cache (`[fleet]`, Redis), which is
//! untrusted input like a policy host's answer (`src/cache/fleet/codec.rs`).

use std::time::{Duration, UNIX_EPOCH};

use mta_sts_policyd::cache::fleet::codec::{self, CLOCK_SKEW, Decoded, MAX_VALUE_BYTES, Shared};

/// The decoding host's clock: 2027-01-15.
const NOW: u64 = 1_800_000_000;
/// The decoding host's `[cache] negative_ttl`.
const MAX_NEGATIVE: Duration = Duration::from_secs(3600);
const DOMAIN: &str = "example.test";

/// Target 8: `codec::decode` on arbitrary bytes must not panic. An entry it accepts came from a
/// value within the size limit; a policy is valid now, with an RFC 8461 §3.1 id, fetched and
/// confirmed no later than the allowed clock skew, confirmed no earlier than fetched; a "no
/// policy" holds past now and no longer than the host's negative TTL, with a short reason free of
/// control characters; and encoding the entry is stable (encode ∘ decode ∘ encode = encode).
pub fn fleet_value(input: &[u8]) {
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let Ok(Decoded::Entry(shared)) = codec::decode(DOMAIN, input, now, MAX_NEGATIVE) else {
        return;
    };
    assert!(input.len() <= MAX_VALUE_BYTES);
    match &shared {
        Shared::Policy { entry, checked } => {
            assert!(entry.is_valid(now), "an expired policy accepted");
            assert!(entry.fetched <= now + CLOCK_SKEW, "fetched in the future");
            assert!(*checked >= entry.fetched && *checked <= now + CLOCK_SKEW);
            let id = &entry.id;
            assert!(!id.is_empty() && id.len() <= 32);
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id:?}");
        }
        Shared::Negative { reason, until } => {
            assert!(*until > now && *until <= now + MAX_NEGATIVE);
            assert!(reason.len() <= 256 && !reason.chars().any(char::is_control));
        }
    }
    let text = codec::encode(DOMAIN, &shared);
    let Ok(Decoded::Entry(again)) = codec::decode(DOMAIN, text.as_bytes(), now, MAX_NEGATIVE)
    else {
        panic!("its own encoding refused: {text}");
    };
    assert_eq!(codec::encode(DOMAIN, &again), text);
}
