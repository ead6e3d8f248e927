//! RFC 8461 data types and their strict parsers: the `_mta-sts` TXT record (§3.1, `txt`), the
//! policy file served at `/.well-known/mta-sts.txt` (§3.2, `file`) and MX host patterns (§3.2,
//! §4.1, `mx`); `grammar` holds the lexical rules the first two share.
//!
//! Everything here is a pure function over bytes and strings (no I/O, no async), so that every
//! rule can be unit-tested, property-tested and fuzzed on its own. DNS lookups, HTTPS fetching and
//! the cache live elsewhere and hand their raw data to this layer. It imports nothing from the
//! crate, only `std`; inside it, `file` uses `mx`, and `txt`, `mx` and `file` use `grammar`.
//!
//! Parsing is strict on purpose: input that does not match the RFC grammar yields no policy. Per
//! RFC 8461 §3.1 and §3.3 "no policy" means delivering as without MTA-STS, which is safer than
//! guessing what a publisher meant and then refusing mail because of it.

mod file;
mod grammar;
mod mx;
mod txt;

pub use file::{
    MAX_AGE_LIMIT, MAX_POLICY_BYTES, Mode, Policy, PolicyError, PolicyLines, parse_policy,
};
pub use mx::{Mx, MxList, MxPattern};
pub use txt::{StsRecord, TxtError, parse_sts_record, select_sts_record};

/// Fixtures that other modules' tests share, and properties that hold across all parsers.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) use super::file::tests::RFC_EXAMPLE;

    fn pat(s: &str) -> MxPattern {
        match MxPattern::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("{s:?} rejected: {e}"),
        }
    }

    fn config() -> ProptestConfig {
        // No regression files: this module must not write into the source tree.
        ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_bytes_never_panic_and_valid_results_round_trip(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            if let Ok(p) = parse_policy(&bytes) {
                prop_assert_eq!(parse_policy(p.to_text().as_bytes()), Ok(p));
            }
            let _ = select_sts_record(std::slice::from_ref(&bytes));
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_sts_record(&text);
            if let Ok(m) = MxPattern::parse(&text) {
                prop_assert!(m.matches(&m.policy_form().replace('*', "x")));
            }
            let _ = pat("*.example.com").matches(&text);
        }

        #[test]
        fn policy_like_text_never_panics_and_valid_results_round_trip(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("version: STSv1".to_owned()),
                    Just("mode: enforce".to_owned()),
                    Just("mode: none".to_owned()),
                    Just("max_age: 86400".to_owned()),
                    "(mx|mode|max_age|version|x)[: \t]{0,3}[ -~é\t\r*.]{0,20}",
                    "[ -~]{0,20}",
                ],
                0..10,
            ),
            sep in "(\n|\r\n|\r|\n\n)",
        ) {
            let body = lines.join(&sep);
            if let Ok(p) = parse_policy(body.as_bytes()) {
                prop_assert_eq!(parse_policy(p.to_text().as_bytes()), Ok(p));
            }
            let txt = format!("v=STSv1;{}", lines.join(";"));
            let _ = select_sts_record(&[txt.into_bytes()]);
        }
    }
}
