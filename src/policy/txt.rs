//! The `_mta-sts` TXT record (RFC 8461 §3.1): picking the one `v=STSv1` record out of all TXT
//! records at the name, and parsing it against the exact ABNF.

use std::fmt;

use super::grammar::{WSP, is_ext_name, shown};

/// The parsed `_mta-sts` TXT record (RFC 8461 §3.1). Only `id` matters to a sender; unknown
/// fields are dropped after they have been checked against the grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// Opaque policy version: compare for equality only, never order (RFC 8461 §3.1).
    pub id: String,
}

/// Why the TXT records at `_mta-sts.<domain>` yield no policy (RFC 8461 §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtError {
    /// No record starts with `v=STSv1;` (other records, e.g. SPF, are discarded).
    NoStsRecord,
    /// More than one record starts with `v=STSv1;`; holds how many.
    MultipleStsRecords(usize),
    /// The single candidate violates the ABNF; the text says what is wrong.
    Invalid(String),
}

impl fmt::Display for TxtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxtError::NoStsRecord => {
                f.write_str("no TXT record starting with \"v=STSv1;\" (RFC 8461 §3.1)")
            }
            TxtError::MultipleStsRecords(n) => write!(
                f,
                "{n} v=STSv1 records (exactly one required, RFC 8461 §3.1)"
            ),
            TxtError::Invalid(reason) => {
                write!(f, "invalid v=STSv1 record: {reason} (RFC 8461 §3.1)")
            }
        }
    }
}

impl std::error::Error for TxtError {}

const STS_VERSION: &str = "v=STSv1";

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

// RFC 8461 §3.1 sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E): no "=", ";", SP or CTLs.
fn is_txt_ext_value(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|c| matches!(c, 0x21..=0x3A | 0x3C | 0x3E..=0x7E))
}

// RFC 8461 §3.1 sts-id = %s"id=" 1*32(ALPHA / DIGIT)
fn is_sts_id(value: &str) -> bool {
    (1..=32).contains(&value.len()) && value.bytes().all(|c| c.is_ascii_alphanumeric())
}

// RFC 8461 §3.1 discards records that do not begin with "v=STSv1;". A candidate here is
// "v=STSv1", optional SP/HTAB, then ";", like the ABNF's sts-field-delim. Checked on bytes
// because records that are not even UTF-8 must still be classified (and, if not candidates,
// discarded like SPF records).
fn is_sts_candidate(record: &[u8]) -> bool {
    record
        .strip_prefix(STS_VERSION.as_bytes())
        .and_then(|rest| rest.iter().find(|b| !is_wsp(**b)))
        == Some(&b';')
}

/// Picks the single `v=STSv1` record out of all TXT records at `_mta-sts.<domain>` and parses it
/// (RFC 8461 §3.1).
///
/// `records`: one entry per TXT RR, its character-strings already concatenated without
/// separators.
///
/// # Errors
/// [`TxtError`] when no record, several records or one invalid record start with `v=STSv1;`;
/// the caller then treats the domain as having no live policy (RFC 8461 §3.1).
pub fn select_sts_record(records: &[Vec<u8>]) -> Result<StsRecord, TxtError> {
    let candidates: Vec<&[u8]> = records
        .iter()
        .map(Vec::as_slice)
        .filter(|r| is_sts_candidate(r))
        .collect();
    match candidates.as_slice() {
        [] => Err(TxtError::NoStsRecord),
        [one] => {
            // RFC 8461 §3.1: "Records MUST be US-ASCII".
            let text = std::str::from_utf8(one)
                .ok()
                .filter(|t| t.is_ascii())
                .ok_or_else(|| TxtError::Invalid("record is not US-ASCII".to_owned()))?;
            parse_sts_record(text).map_err(TxtError::Invalid)
        }
        many => Err(TxtError::MultipleStsRecords(many.len())),
    }
}

/// Parses one `v=STSv1` TXT record against the exact ABNF of RFC 8461 §3.1.
///
/// Every field must match the grammar, including repeated and unknown ones; of repeated fields
/// the first counts (RFC 8461 §3.2). A field named `id` must be a valid `sts-id` even when it
/// repeats: `id=abc_1` makes the record syntactically invalid (RFC 8461 §3.1), it is not an
/// extension.
///
/// # Errors
/// A sentence saying what is wrong, for the operator's log.
pub fn parse_sts_record(text: &str) -> Result<StsRecord, String> {
    if !text.is_ascii() {
        return Err("record is not US-ASCII".to_owned());
    }
    // RFC 8461 §3.1: the record MUST begin with sts-version, case-sensitive.
    let Some(mut rest) = text.strip_prefix(STS_VERSION) else {
        return Err(format!("{} does not begin with \"v=STSv1\"", shown(text)));
    };
    let mut id: Option<&str> = None;
    let mut fields = 0usize;
    loop {
        if rest.is_empty() {
            break;
        }
        // Every field, the first one included, follows an sts-field-delim (*WSP ";" *WSP).
        let Some(after_semicolon) = rest.trim_start_matches(WSP).strip_prefix(';') else {
            return Err(format!(
                "expected \";\" between fields, found {}",
                shown(rest)
            ));
        };
        rest = after_semicolon.trim_start_matches(WSP);
        if rest.is_empty() {
            // A single trailing delimiter is allowed: [sts-field-delim].
            break;
        }
        let end = rest.find([' ', '\t', ';']).unwrap_or(rest.len());
        let (field, tail) = rest.split_at(end);
        rest = tail;
        fields += 1;
        let Some((name, value)) = field.split_once('=') else {
            return Err(format!("field {} has no \"=\"", shown(field)));
        };
        if !is_ext_name(name) {
            return Err(format!(
                "field name {} is not 1-32 letters, digits, \"_\", \"-\", \".\" starting with a letter or digit",
                shown(name)
            ));
        }
        if name == "id" {
            if !is_sts_id(value) {
                return Err(format!(
                    "id {} is not 1-32 ASCII letters or digits",
                    shown(value)
                ));
            }
            // RFC 8461 §3.2: the first occurrence of a repeated field counts.
            id.get_or_insert(value);
        } else if !is_txt_ext_value(value) {
            return Err(format!(
                "value of field {} is empty or contains \"=\", \";\", a space or a control character",
                shown(name)
            ));
        }
    }
    if fields == 0 {
        return Err("no field after \"v=STSv1\"".to_owned());
    }
    match id {
        Some(id) => Ok(StsRecord { id: id.to_owned() }),
        None => Err("required field \"id\" is missing".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(text: &str) -> Result<StsRecord, String> {
        parse_sts_record(text)
    }

    fn id(text: &str) -> String {
        match parse_sts_record(text) {
            Ok(r) => r.id,
            Err(e) => panic!("{text:?} rejected: {e}"),
        }
    }

    fn select(records: &[&[u8]]) -> Result<StsRecord, TxtError> {
        let owned: Vec<Vec<u8>> = records.iter().map(|r| r.to_vec()).collect();
        select_sts_record(&owned)
    }

    #[test]
    fn rfc8461_3_1_rfc_example_record_parses() {
        assert_eq!(id("v=STSv1; id=20160831085700Z;"), "20160831085700Z");
        assert_eq!(
            rec("v=STSv1; id=20160831085700Z;"),
            Ok(StsRecord {
                id: "20160831085700Z".to_owned()
            })
        );
    }

    #[test]
    fn rfc8461_3_1_delimiter_whitespace_and_trailing_delimiter() {
        assert_eq!(id("v=STSv1;id=abc"), "abc");
        assert_eq!(id("v=STSv1 ; id=abc"), "abc");
        assert_eq!(id("v=STSv1\t;\tid=abc\t;\t"), "abc");
        assert_eq!(id("v=STSv1;id=abc;"), "abc");
        assert_eq!(id("v=STSv1; id=abc ;  "), "abc");
    }

    #[test]
    fn rfc8461_3_1_id_must_be_1_to_32_alnum() {
        let max = "a".repeat(31) + "Z";
        assert_eq!(id(&format!("v=STSv1; id={max}")), max);
        assert_eq!(id("v=STSv1; id=0"), "0");
        for bad in [
            "v=STSv1; id=",
            "v=STSv1; id=2024-01-01",
            "v=STSv1; id=abc_1",
            "v=STSv1; id=abc.1",
            "v=STSv1; id=a=b",
            &format!("v=STSv1; id={}", "a".repeat(33)),
        ] {
            let e = rec(bad).expect_err(bad);
            assert!(e.contains("id"), "{bad}: {e}");
        }
        assert!(rec("v=STSv1; id=abcé").is_err());
    }

    #[test]
    fn rfc8461_3_1_id_is_required_and_case_sensitive() {
        assert_eq!(
            rec("v=STSv1; foo=bar"),
            Err("required field \"id\" is missing".to_owned())
        );
        assert!(rec("v=STSv1; ID=abc").is_err());
        assert!(rec("v=STSv1; Id=abc").is_err());
    }

    #[test]
    fn rfc8461_3_1_version_must_be_first_and_exact() {
        for bad in [
            "id=abc; v=STSv1",
            " v=STSv1; id=abc",
            "V=STSv1; id=abc",
            "v=stsv1; id=abc",
            "v=STSv2; id=abc",
            "v = STSv1; id=abc",
            "",
        ] {
            assert!(rec(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rfc8461_3_1_version_needs_at_least_one_field() {
        for bad in ["v=STSv1", "v=STSv1;", "v=STSv1 ; ", "v=STSv1 "] {
            assert!(rec(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rfc8461_3_1_fields_must_be_separated_by_semicolon() {
        for bad in [
            "v=STSv1; id=abc foo=bar",
            "v=STSv1; id=abc ",
            "v=STSv1; id=abc\t",
            "v=STSv1;;id=abc",
            "v=STSv1; id=abc;;",
            "v=STSv1; id=abc; ;",
            "v=STSv10; id=abc",
            "v=STSv1, id=abc",
        ] {
            assert!(rec(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rfc8461_3_1_extension_fields_follow_the_abnf() {
        let name32 = format!("a{}", "b".repeat(31));
        assert_eq!(id("v=STSv1; id=abc; foo=bar"), "abc");
        assert_eq!(id("v=STSv1; x.y_z-1=~!:<>?@[]^`{|}; id=abc"), "abc");
        assert_eq!(id(&format!("v=STSv1; id=abc; {name32}=1")), "abc");
        for bad in [
            "v=STSv1; id=abc; foo=",
            "v=STSv1; id=abc; foo",
            "v=STSv1; id=abc; =bar",
            "v=STSv1; id=abc; _foo=bar",
            "v=STSv1; id=abc; -foo=bar",
            "v=STSv1; id=abc; foo=a=b",
            "v=STSv1; id=abc; foo=a\x01b",
            "v=STSv1; id=abc; foo=a\x7fb",
            "v=STSv1; id=abc; fo+o=bar",
            &format!("v=STSv1; id=abc; {name32}c=1"),
        ] {
            assert!(rec(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rfc8461_3_2_first_of_repeated_txt_fields_counts() {
        assert_eq!(id("v=STSv1; id=first; id=second"), "first");
        // A later id must still be a valid sts-id ("id=abc_1" is not one, RFC 8461 §3.1).
        assert!(rec("v=STSv1; id=first; id=bad_id").is_err());
        // "v=..." after the start is just an extension field.
        assert_eq!(id("v=STSv1; id=abc; v=STSv2"), "abc");
    }

    #[test]
    fn rfc8461_3_1_record_must_be_us_ascii() {
        assert_eq!(
            rec("v=STSv1; id=abc; x=é"),
            Err("record is not US-ASCII".to_owned())
        );
        assert_eq!(
            select(&[b"v=STSv1; id=abc; x=\xff"]),
            Err(TxtError::Invalid("record is not US-ASCII".to_owned()))
        );
    }

    #[test]
    fn rfc8461_3_1_select_discards_records_not_starting_with_version() {
        let r = select(&[
            b"v=spf1 -all",
            b"\xff\xfe garbage",
            b"v=STSv1; id=abc123",
            b"",
            b"id=zzz; v=STSv1;",
        ]);
        assert_eq!(
            r,
            Ok(StsRecord {
                id: "abc123".to_owned()
            })
        );
    }

    #[test]
    fn rfc8461_3_1_select_without_candidate_is_no_sts_record() {
        assert_eq!(select(&[]), Err(TxtError::NoStsRecord));
        assert_eq!(select(&[b"v=spf1 -all"]), Err(TxtError::NoStsRecord));
        // A candidate is "v=STSv1", optional WSP, then ";" (RFC 8461 §3.1).
        assert_eq!(select(&[b"v=STSv10; id=abc"]), Err(TxtError::NoStsRecord));
        assert_eq!(select(&[b"v=STSv1 id=abc"]), Err(TxtError::NoStsRecord));
        assert_eq!(select(&[b"v=STSv1"]), Err(TxtError::NoStsRecord));
        assert_eq!(select(&[b"V=STSv1; id=abc"]), Err(TxtError::NoStsRecord));
        assert_eq!(select(&[b" v=STSv1; id=abc"]), Err(TxtError::NoStsRecord));
    }

    #[test]
    fn rfc8461_3_1_select_requires_exactly_one_candidate() {
        assert_eq!(
            select(&[b"v=STSv1; id=a", b"v=STSv1; id=b"]),
            Err(TxtError::MultipleStsRecords(2))
        );
        assert_eq!(
            select(&[b"v=STSv1; id=a", b"v=STSv1; id=a"]),
            Err(TxtError::MultipleStsRecords(2))
        );
        // Invalid candidates still count.
        assert_eq!(
            select(&[
                b"v=STSv1; id=a",
                b"v=STSv1;bogus",
                b"v=STSv1 ;\xff",
                b"v=spf1"
            ]),
            Err(TxtError::MultipleStsRecords(3))
        );
    }

    #[test]
    fn rfc8461_3_1_select_single_invalid_candidate_is_invalid() {
        assert!(matches!(
            select(&[b"v=STSv1; id=2024-01-01"]),
            Err(TxtError::Invalid(_))
        ));
        assert!(matches!(select(&[b"v=STSv1;"]), Err(TxtError::Invalid(_))));
        // Whitespace before ";" still makes a candidate, as sts-field-delim allows it.
        assert_eq!(
            select(&[b"v=STSv1 \t; id=x"]),
            Ok(StsRecord { id: "x".to_owned() })
        );
    }

    #[test]
    fn rfc8461_3_1_txt_error_display_is_operator_readable() {
        assert_eq!(
            TxtError::MultipleStsRecords(2).to_string(),
            "2 v=STSv1 records (exactly one required, RFC 8461 §3.1)"
        );
        assert_eq!(
            TxtError::NoStsRecord.to_string(),
            "no TXT record starting with \"v=STSv1;\" (RFC 8461 §3.1)"
        );
        let e = match select(&[b"v=STSv1; id=abc_1"]) {
            Err(e) => e.to_string(),
            Ok(r) => panic!("accepted {r:?}"),
        };
        assert_eq!(
            e,
            "invalid v=STSv1 record: id \"abc_1\" is not 1-32 ASCII letters or digits (RFC 8461 §3.1)"
        );
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
        fn rfc8461_3_1_generated_valid_records_parse(
            rec_id in "[a-zA-Z0-9]{1,32}",
            exts in proptest::collection::vec(("[a-zA-Z0-9][a-zA-Z0-9_.-]{0,31}", "[!-:<>-~]{1,10}"), 0..4),
            delims in proptest::collection::vec(("[ \t]{0,2}", "[ \t]{0,2}"), 6),
            position in any::<prop::sample::Index>(),
            trailing in any::<bool>(),
        ) {
            let mut fields: Vec<String> = exts
                .into_iter()
                .filter(|(k, _)| k != "id")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let at = position.index(fields.len() + 1);
            fields.insert(at, format!("id={rec_id}"));
            let mut text = String::from("v=STSv1");
            for (i, f) in fields.iter().enumerate() {
                let (a, b) = &delims[i % delims.len()];
                text.push_str(&format!("{a};{b}{f}"));
            }
            if trailing { text.push_str(" ; "); }
            let want = StsRecord { id: rec_id };
            prop_assert_eq!(parse_sts_record(&text), Ok(want.clone()));
            prop_assert_eq!(
                select_sts_record(&[b"v=spf1 -all".to_vec(), text.into_bytes()]),
                Ok(want)
            );
        }

    }
}
