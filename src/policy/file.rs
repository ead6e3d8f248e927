//! The policy file served at `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461
//! §3.2): its mode, `max_age` and `mx` lines, the size limit (§3.3) and a canonical text form for
//! persisting it.

use std::fmt;

use super::grammar::{WSP, is_ext_name, shown};
use super::mx::{Mx, MxList};

/// Upper bound for `max_age` in seconds: one year (RFC 8461 §3.2).
pub const MAX_AGE_LIMIT: u32 = 31_557_600;

/// Largest policy body accepted, in bytes: the 64 kilobytes RFC 8461 §3.3 suggests as a limit.
pub const MAX_POLICY_BYTES: usize = 65_536;

/// The policy mode (RFC 8461 §5). The derived order runs from weakest to strongest, so that
/// callers can compare modes when a policy gets weaker or stronger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    None,
    Testing,
    Enforce,
}

impl Mode {
    /// The exact spelling used in policy files.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Testing => "testing",
            Mode::Enforce => "enforce",
        }
    }

    // RFC 8461 §3.2: mode values are case-sensitive (%s"enforce" etc.).
    fn from_policy_value(value: &str) -> Option<Mode> {
        match value {
            "none" => Some(Mode::None),
            "testing" => Some(Mode::Testing),
            "enforce" => Some(Mode::Enforce),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed, valid MTA-STS policy (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// Seconds, clamped to [`MAX_AGE_LIMIT`].
    pub max_age: u32,
    /// The file said more than [`MAX_AGE_LIMIT`]; the caller logs it.
    pub max_age_clamped: bool,
    /// The `mx` patterns in file order, each once (the first occurrence).
    pub mx: MxList,
    /// Every non-empty line as (key, trimmed value), in file order, duplicates and unknown fields
    /// included: the TLSRPT `policy-string` (RFC 8460 §4.5) and the persisted form need them.
    pub lines: PolicyLines,
}

/// The policy's lines in canonical form, one allocation for all of them: `key: value\n` per
/// line. Keys cannot contain ':' (RFC 8461 §3.2 `sts-policy-ext-name`) and values are trimmed
/// and non-empty, so each line splits back into its key and value exactly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyLines(Box<str>);

impl PolicyLines {
    /// One exact allocation (see [`MxList::from_checked`]).
    fn from_pairs(pairs: &[(&str, &str)]) -> PolicyLines {
        let len = pairs.iter().map(|(k, v)| k.len() + v.len() + 3).sum();
        let mut s = String::with_capacity(len);
        for (k, v) in pairs {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push('\n');
        }
        PolicyLines(s.into_boxed_str())
    }

    /// (key, value) per line, in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.lines().filter_map(|l| l.split_once(": "))
    }

    pub fn len(&self) -> usize {
        self.0.lines().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Owned pairs, for tests and callers that keep them.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The canonical text itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a policy body was rejected. Every variant makes the whole policy invalid (guessing what a
/// broken line meant could refuse mail), which RFC 8460 reports as `sts-policy-invalid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The body is not UTF-8; `line` is where the first bad byte sits (1-based).
    NotUtf8 {
        line: usize,
    },
    /// The body has this many bytes, more than [`MAX_POLICY_BYTES`].
    TooLarge(usize),
    /// A line does not match `name ":" *WSP value *WSP`.
    BadLine {
        line: usize,
        reason: String,
    },
    MissingVersion,
    MissingMode,
    MissingMaxAge,
    BadVersion {
        line: usize,
        value: String,
    },
    BadMode {
        line: usize,
        value: String,
    },
    BadMaxAge {
        line: usize,
        value: String,
    },
    BadMx {
        line: usize,
        value: String,
        reason: String,
    },
    /// The mode needs `mx` lines and there are none.
    NoMx(Mode),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::NotUtf8 { line } => {
                write!(f, "line {line}: policy is not valid UTF-8 (RFC 8461 §3.2)")
            }
            PolicyError::TooLarge(size) => write!(
                f,
                "policy has {size} bytes, more than the limit of {MAX_POLICY_BYTES} (RFC 8461 §3.3)"
            ),
            PolicyError::BadLine { line, reason } => write!(f, "line {line}: {reason}"),
            PolicyError::MissingVersion => {
                f.write_str("no \"version: STSv1\" line (required, RFC 8461 §3.2)")
            }
            PolicyError::MissingMode => f.write_str("no \"mode\" line (required, RFC 8461 §3.2)"),
            PolicyError::MissingMaxAge => {
                f.write_str("no \"max_age\" line (required, RFC 8461 §3.2)")
            }
            PolicyError::BadVersion { line, value } => write!(
                f,
                "line {line}: version {} is not \"STSv1\" (case-sensitive, RFC 8461 §3.2)",
                shown(value)
            ),
            PolicyError::BadMode { line, value } => write!(
                f,
                "line {line}: mode {} is not \"enforce\", \"testing\" or \"none\" (case-sensitive, RFC 8461 §3.2)",
                shown(value)
            ),
            PolicyError::BadMaxAge { line, value } => write!(
                f,
                "line {line}: max_age {} is not 1 to 10 decimal digits (RFC 8461 §3.2)",
                shown(value)
            ),
            PolicyError::BadMx {
                line,
                value,
                reason,
            } => write!(f, "line {line}: mx {}: {reason}", shown(value)),
            PolicyError::NoMx(mode) => write!(
                f,
                "mode {mode} requires at least one \"mx\" line (RFC 8461 §3.2)"
            ),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Splits a policy line into name and trimmed value, checking the generic field grammar of
/// RFC 8461 §3.2 (sts-policy-ext-name ":" *WSP sts-policy-ext-value, plus trailing *WSP).
/// Known fields are this grammar with narrower values, so one check covers every line.
fn split_field(line: &str) -> Result<(&str, &str), String> {
    let Some((name, rest)) = line.split_once(':') else {
        return Err(format!(
            "{} is not a \"key: value\" line (no \":\")",
            shown(line)
        ));
    };
    // RFC 8461 §3.2: sts-policy-field-delim = ":" *WSP, so nothing may precede the ":".
    if name.ends_with(WSP) {
        return Err(format!(
            "whitespace before \":\" after {} (RFC 8461 §3.2)",
            shown(name.trim_end_matches(WSP))
        ));
    }
    if !is_ext_name(name) {
        return Err(format!(
            "field name {} is not 1-32 letters, digits, \"_\", \"-\", \".\" starting with a letter or digit (RFC 8461 §3.2)",
            shown(name)
        ));
    }
    let value = rest.trim_matches(WSP);
    if value.is_empty() {
        return Err(format!("field {name} has an empty value (RFC 8461 §3.2)"));
    }
    // sts-policy-ext-value = sts-policy-vchar [*(%x20 / sts-policy-vchar) sts-policy-vchar],
    // vchar = %x21-7E / UTF8-2 / UTF8-3 / UTF8-4. The ends are already free of WSP.
    if let Some(bad) = value
        .chars()
        .find(|&c| !(c == ' ' || ('\x21'..='\x7e').contains(&c) || !c.is_ascii()))
    {
        return Err(format!(
            "value of {name} contains {bad:?}; tabs inside a value and control characters are not allowed (RFC 8461 §3.2)"
        ));
    }
    Ok((name, value))
}

// RFC 8461 §3.2: sts-policy-max-age = 1*10(DIGIT). Ten digits fit in u64, so no overflow.
fn parse_max_age(value: &str) -> Option<(u32, bool)> {
    if !(1..=10).contains(&value.len()) || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds: u64 = value.parse().ok()?;
    // More than one year is clamped (and reported) rather than rejected: RFC 8461 §3.2 only sets
    // the upper bound, and the rest of such a policy is still what the publisher meant.
    match u32::try_from(seconds) {
        Ok(s) if s <= MAX_AGE_LIMIT => Some((s, false)),
        _ => Some((MAX_AGE_LIMIT, true)),
    }
}

/// Parses a policy body strictly (RFC 8461 §3.2).
///
/// Lines end in LF or CRLF; the last terminator is optional. Fully empty lines are skipped,
/// although the ABNF has no place for them, because real files often end in blank lines; any
/// other line must match `name ":" *WSP value *WSP`, otherwise the whole policy is invalid. Of
/// `version`, `mode` and `max_age` only the first occurrence is interpreted; later ones are
/// ignored (RFC 8461 §3.2) but, like unknown fields, must still be grammatical lines. Every `mx`
/// line is validated, also in mode `none`.
///
/// # Errors
/// The first problem found, as a [`PolicyError`]; any error makes the whole policy invalid.
pub fn parse_policy(body: &[u8]) -> Result<Policy, PolicyError> {
    if body.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge(body.len()));
    }
    let text = std::str::from_utf8(body).map_err(|e| PolicyError::NotUtf8 {
        line: 1 + body[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
    })?;

    let mut version_seen = false;
    let mut mode: Option<Mode> = None;
    let mut max_age: Option<(u32, bool)> = None;
    let mut mx = Vec::new();
    let mut lines: Vec<(&str, &str)> = Vec::new();

    for (index, raw) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        // RFC 8461 §3.2: sts-policy-term = LF / CRLF. A CR is a terminator only before LF; a
        // lone CR stays in the line and fails the value grammar.
        let line = match raw.strip_suffix('\n') {
            Some(l) => l.strip_suffix('\r').unwrap_or(l),
            None => raw,
        };
        if line.is_empty() {
            continue;
        }
        let (key, value) = split_field(line).map_err(|reason| PolicyError::BadLine {
            line: line_no,
            reason,
        })?;
        match key {
            "version" if !version_seen => {
                if value != "STSv1" {
                    return Err(PolicyError::BadVersion {
                        line: line_no,
                        value: value.to_owned(),
                    });
                }
                version_seen = true;
            }
            "mode" if mode.is_none() => {
                mode =
                    Some(
                        Mode::from_policy_value(value).ok_or_else(|| PolicyError::BadMode {
                            line: line_no,
                            value: value.to_owned(),
                        })?,
                    );
            }
            "max_age" if max_age.is_none() => {
                max_age = Some(parse_max_age(value).ok_or_else(|| PolicyError::BadMaxAge {
                    line: line_no,
                    value: value.to_owned(),
                })?);
            }
            // RFC 8461 §3.2: mx repeats; each one must be a valid pattern, whatever the mode.
            "mx" => mx.push(Mx::check(value).map_err(|reason| PolicyError::BadMx {
                line: line_no,
                value: value.to_owned(),
                reason,
            })?),
            // Unknown fields and later duplicates (RFC 8461 §3.2: "SHALL be ignored").
            _ => {}
        }
        lines.push((key, value));
    }

    if !version_seen {
        return Err(PolicyError::MissingVersion);
    }
    let mode = mode.ok_or(PolicyError::MissingMode)?;
    let (max_age, max_age_clamped) = max_age.ok_or(PolicyError::MissingMaxAge)?;
    // RFC 8461 §3.2: mx is "required at least once, except when mode is none".
    if mode != Mode::None && mx.is_empty() {
        return Err(PolicyError::NoMx(mode));
    }
    Ok(Policy {
        mode,
        max_age,
        max_age_clamped,
        mx: MxList::from_checked(&mx),
        lines: PolicyLines::from_pairs(&lines),
    })
}

impl Policy {
    /// Canonical text ("key: value\n" per entry of `lines`), such that
    /// `parse_policy(p.to_text().as_bytes()) == Ok(p)` for every `p` that `parse_policy` returned.
    /// Used to persist policies.
    ///
    /// The added space and final LF can push a policy that was close to [`MAX_POLICY_BYTES`]
    /// over the limit; then the compact form ("key:value" lines joined by LF) is returned
    /// instead. It is never longer than the body the policy was parsed from, so the round trip
    /// always holds.
    #[must_use]
    pub fn to_text(&self) -> String {
        if self.lines.as_str().len() <= MAX_POLICY_BYTES {
            self.lines.as_str().to_owned()
        } else {
            self.lines
                .iter()
                .map(|(key, value)| format!("{key}:{value}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The example policy of RFC 8461 §3.2, shared with other modules' tests.
    pub(crate) const RFC_EXAMPLE: &str = "version: STSv1\n\
                               mode: enforce\n\
                               mx: mail.example.com\n\
                               mx: *.example.net\n\
                               mx: backupmx.example.com\n\
                               max_age: 604800\n";

    fn ok(body: &str) -> Policy {
        match parse_policy(body.as_bytes()) {
            Ok(p) => p,
            Err(e) => panic!("{body:?} rejected: {e}"),
        }
    }

    fn err(body: &str) -> PolicyError {
        match parse_policy(body.as_bytes()) {
            Ok(p) => panic!("{body:?} accepted: {p:?}"),
            Err(e) => e,
        }
    }

    fn forms(p: &Policy) -> Vec<String> {
        p.mx.iter().map(Mx::policy_form).collect()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A valid enforce policy with one extra line (for grammar tests of that line).
    fn with_line(extra: &str) -> String {
        format!("version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n{extra}\n")
    }

    #[test]
    fn rfc8461_5_modes_order_weakest_to_strongest_and_display() {
        assert!(Mode::None < Mode::Testing && Mode::Testing < Mode::Enforce);
        assert_eq!(Mode::None.to_string(), "none");
        assert_eq!(Mode::Testing.to_string(), "testing");
        assert_eq!(Mode::Enforce.to_string(), "enforce");
        assert_eq!(Mode::Enforce.as_str(), "enforce");
    }

    #[test]
    fn rfc8461_3_2_rfc_example_policy() {
        let p = ok(RFC_EXAMPLE);
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604_800);
        assert!(!p.max_age_clamped);
        assert_eq!(
            forms(&p),
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        assert_eq!(
            p.lines.to_vec(),
            kv(&[
                ("version", "STSv1"),
                ("mode", "enforce"),
                ("mx", "mail.example.com"),
                ("mx", "*.example.net"),
                ("mx", "backupmx.example.com"),
                ("max_age", "604800"),
            ])
        );
    }

    #[test]
    fn rfc8461_3_2_google_style_policy() {
        let body = "version: STSv1\nmode: enforce\nmx: gmail-smtp-in.l.google.com\n\
                    mx: *.gmail-smtp-in.l.google.com\nmax_age: 86400\n";
        let p = ok(body);
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 86_400);
        assert_eq!(
            forms(&p),
            ["gmail-smtp-in.l.google.com", "*.gmail-smtp-in.l.google.com"]
        );
        assert!(
            p.mx.get(1)
                .unwrap()
                .matches("alt1.gmail-smtp-in.l.google.com")
        );
        assert!(!p.mx.get(1).unwrap().matches("gmail-smtp-in.l.google.com"));
    }

    #[test]
    fn rfc8461_3_2_crlf_and_lf_line_endings() {
        let crlf = RFC_EXAMPLE.replace('\n', "\r\n");
        assert_eq!(ok(&crlf), ok(RFC_EXAMPLE));
        let mixed = "version: STSv1\r\nmode: enforce\nmx: mail.example.com\r\nmax_age: 60";
        let p = ok(mixed);
        assert_eq!(p.max_age, 60);
        assert_eq!(p.lines.len(), 4);
        // No final terminator.
        assert_eq!(ok(RFC_EXAMPLE.trim_end()), ok(RFC_EXAMPLE));
    }

    #[test]
    fn rfc8461_3_2_lone_cr_is_not_a_line_terminator() {
        let e = err("version: STSv1\rmode: enforce\nmx: a.example\nmax_age: 1\n");
        assert!(matches!(e, PolicyError::BadLine { line: 1, .. }), "{e:?}");
        assert!(e.to_string().contains("'\\r'"), "{e}");
        let e = err("version: STSv1\nmode: none\nmax_age: 1\r");
        assert!(matches!(e, PolicyError::BadLine { line: 3, .. }), "{e:?}");
        let e = err("version: STSv1\nmode: none\nmax_age: 1\r\r\n");
        assert!(matches!(e, PolicyError::BadLine { line: 3, .. }), "{e:?}");
    }

    #[test]
    fn empty_lines_are_skipped_but_counted_in_line_numbers() {
        let body = "\n\r\nversion: STSv1\n\nmode: enforce\r\n\r\nmx: mail.example.com\nmax_age: 86400\n\n\n\r\n";
        let p = ok(body);
        assert_eq!(p.lines.len(), 4);
        // Line numbers in errors are physical, 1-based, and count the skipped lines.
        let e = err("\n\nversion: STSv1\n\nbogus line\n");
        assert_eq!(
            e,
            PolicyError::BadLine {
                line: 5,
                reason: "\"bogus line\" is not a \"key: value\" line (no \":\")".to_owned()
            }
        );
        // Only fully empty lines are skipped: whitespace-only lines are not.
        assert!(matches!(
            err(&with_line(" ")),
            PolicyError::BadLine { line: 5, .. }
        ));
        assert!(matches!(
            err(&with_line("\t")),
            PolicyError::BadLine { line: 5, .. }
        ));
    }

    #[test]
    fn rfc8461_3_2_keys_and_fixed_values_are_case_sensitive() {
        let e = err("version: STSv1\nMode: enforce\nmx: a.example\nmax_age: 1\n");
        assert_eq!(e, PolicyError::MissingMode);
        assert!(matches!(
            err("version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n"),
            PolicyError::BadMode { line: 2, .. }
        ));
        assert!(matches!(
            err("version: stsv1\nmode: enforce\nmx: a.example\nmax_age: 1\n"),
            PolicyError::BadVersion { line: 1, .. }
        ));
        assert_eq!(
            err("Version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n"),
            PolicyError::MissingVersion
        );
        assert_eq!(
            err("version: STSv1\nmode: enforce\nMX: a.example\nmax_age: 1\n"),
            PolicyError::NoMx(Mode::Enforce)
        );
        assert_eq!(
            err("version: STSv1\nmode: enforce\nmx: a.example\nMax_age: 1\n"),
            PolicyError::MissingMaxAge
        );
    }

    #[test]
    fn rfc8461_3_2_no_whitespace_before_colon() {
        for line in [
            "mode : enforce",
            "mode\t: enforce",
            " mode: enforce",
            "\tmx: a.example",
        ] {
            let body = format!("version: STSv1\n{line}\nmx: a.example\nmax_age: 1\n");
            assert!(
                matches!(err(&body), PolicyError::BadLine { line: 2, .. }),
                "{line:?}"
            );
        }
        assert_eq!(
            err("version: STSv1\nmode : enforce\n").to_string(),
            "line 2: whitespace before \":\" after \"mode\" (RFC 8461 §3.2)"
        );
    }

    #[test]
    fn rfc8461_3_2_whitespace_after_colon_and_trailing_is_allowed() {
        let p = ok("version:STSv1\nmode:\t enforce \t\nmx:  mail.example.com \nmax_age:86400\t\n");
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(forms(&p), ["mail.example.com"]);
        assert_eq!(
            p.lines.to_vec(),
            kv(&[
                ("version", "STSv1"),
                ("mode", "enforce"),
                ("mx", "mail.example.com"),
                ("max_age", "86400"),
            ])
        );
    }

    #[test]
    fn rfc8461_3_2_version_mode_max_age_are_required() {
        assert_eq!(
            err("mode: enforce\nmx: a.example\nmax_age: 1\n"),
            PolicyError::MissingVersion
        );
        assert_eq!(
            err("version: STSv1\nmx: a.example\nmax_age: 1\n"),
            PolicyError::MissingMode
        );
        assert_eq!(
            err("version: STSv1\nmode: enforce\nmx: a.example\n"),
            PolicyError::MissingMaxAge
        );
        assert_eq!(err(""), PolicyError::MissingVersion);
        assert_eq!(err("\n\r\n\n"), PolicyError::MissingVersion);
    }

    #[test]
    fn rfc8461_3_2_first_occurrence_of_non_repeated_field_counts() {
        let p = ok(
            "version: STSv1\nmode: testing\nmode: enforce\nmax_age: 100\nmax_age: 200\n\
             version: STSv2\nmx: a.example\nmode: bogus\nmax_age: -1\n",
        );
        assert_eq!(p.mode, Mode::Testing);
        assert_eq!(p.max_age, 100);
        // Ignored duplicates are still kept for the TLSRPT policy-string.
        assert_eq!(p.lines.len(), 9);
        assert_eq!(
            p.lines.to_vec()[5],
            ("version".to_owned(), "STSv2".to_owned())
        );
        // ... but they must still be grammatical lines.
        assert!(matches!(
            err(&with_line("mode:")),
            PolicyError::BadLine { line: 5, .. }
        ));
        assert!(matches!(
            err(&with_line("mode enforce")),
            PolicyError::BadLine { line: 5, .. }
        ));
        // A bad first occurrence is not rescued by a good later one.
        assert!(matches!(
            err("version: STSv1\nmode: strict\nmode: enforce\nmx: a.example\nmax_age: 1\n"),
            PolicyError::BadMode { line: 2, .. }
        ));
    }

    #[test]
    fn rfc8461_3_2_mx_required_unless_mode_none() {
        assert_eq!(
            err("version: STSv1\nmode: enforce\nmax_age: 1\n"),
            PolicyError::NoMx(Mode::Enforce)
        );
        assert_eq!(
            err("version: STSv1\nmode: testing\nmax_age: 1\n"),
            PolicyError::NoMx(Mode::Testing)
        );
        let p = ok("version: STSv1\nmode: none\nmax_age: 1\n");
        assert_eq!(p.mode, Mode::None);
        assert!(p.mx.is_empty());
        let p = ok("version: STSv1\nmode: none\nmx: a.example\nmax_age: 1\n");
        assert_eq!(forms(&p), ["a.example"]);
        // An mx line in mode none is still validated.
        assert!(matches!(
            err("version: STSv1\nmode: none\nmx: 192.0.2.1\nmax_age: 1\n"),
            PolicyError::BadMx { line: 3, .. }
        ));
    }

    #[test]
    fn rfc8461_3_2_bad_mx_invalidates_the_whole_policy() {
        for (mx, reason_part) in [
            ("192.0.2.25", "IP address literal"),
            ("[192.0.2.25]", "IP address literal"),
            ("2001:db8::25", "IP address literal"),
            ("mail.example.com.", "trailing dot"),
            ("mail.*.example.com", "left-most label"),
            ("bücher.example", "A-labels"),
            ("mail_1.example.com", "character other than"),
        ] {
            let body =
                format!("version: STSv1\nmode: enforce\nmx: good.example\nmx: {mx}\nmax_age: 1\n");
            match err(&body) {
                PolicyError::BadMx {
                    line,
                    value,
                    reason,
                } => {
                    assert_eq!(line, 4);
                    assert_eq!(value, mx);
                    assert!(reason.contains(reason_part), "{mx}: {reason}");
                }
                other => panic!("{mx}: {other:?}"),
            }
        }
        assert!(matches!(
            err("version: STSv1\nmode: enforce\nmx: mail example.com\nmax_age: 1\n"),
            PolicyError::BadMx { line: 3, .. }
        ));
    }

    #[test]
    fn rfc8461_3_2_mx_order_kept_repeats_collapsed_lines_kept_verbatim() {
        let p = ok(
            "version: STSv1\nmode: enforce\nmx: b.example\nmx: A.example\n\
                    max_age: 1\nmx: b.example\nmx: *.c.example\n",
        );
        // A repeated pattern matches nothing more (RFC 8461 §4.1): kept once, where it first
        // appears.
        assert_eq!(forms(&p), ["b.example", "a.example", "*.c.example"]);
        assert_eq!(p.mx.as_match_list(), "b.example:a.example:.c.example");
        // The policy file's lines keep the repeat, for the TLSRPT policy-string.
        assert_eq!(p.lines.iter().filter(|(k, _)| *k == "mx").count(), 4);
        // `lines` keeps the file's spelling; only `mx` is normalized.
        assert_eq!(
            p.lines.to_vec()[3],
            ("mx".to_owned(), "A.example".to_owned())
        );
    }

    #[test]
    fn rfc8461_3_2_max_age_digits_and_clamp() {
        let age = |v: &str| {
            let p = ok(&format!(
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: {v}\n"
            ));
            (p.max_age, p.max_age_clamped)
        };
        assert_eq!(age("0"), (0, false));
        assert_eq!(age("0000604800"), (604_800, false));
        assert_eq!(age("31557600"), (31_557_600, false));
        assert_eq!(age("31557601"), (31_557_600, true));
        assert_eq!(age("4294967295"), (31_557_600, true));
        assert_eq!(age("4294967296"), (31_557_600, true));
        assert_eq!(age("9999999999"), (31_557_600, true));
        for bad in [
            "99999999999",
            "00000000001",
            "-1",
            "+1",
            "1e5",
            "0x10",
            "1 000",
            "86400s",
            "１２",
        ] {
            let body = format!("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: {bad}\n");
            assert_eq!(
                err(&body),
                PolicyError::BadMaxAge {
                    line: 4,
                    value: bad.to_owned()
                },
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rfc8461_3_2_unknown_fields_ignored_but_kept() {
        let name32 = format!("x{}", "y".repeat(31));
        let body = format!(
            "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n\
             foo.bar_baz-1: some value with  spaces\n\
             note: café ☕ 𝄞\n\
             {name32}: v\n\
             9x: {{braces}}\n"
        );
        let p = ok(&body);
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(
            &p.lines.to_vec()[4..],
            kv(&[
                ("foo.bar_baz-1", "some value with  spaces"),
                ("note", "café ☕ 𝄞"),
                (&name32, "v"),
                ("9x", "{braces}"),
            ])
            .as_slice()
        );
    }

    #[test]
    fn rfc8461_3_2_bad_extension_line_invalidates_policy() {
        let name33 = format!("x{}", "y".repeat(32));
        for bad in [
            "_foo: bar",
            "-foo: bar",
            ".foo: bar",
            ": bar",
            "fo o: bar",
            "föo: bar",
            "foo: ",
            "foo:",
            "foo:\t\t",
            "foo: a\tb",
            "foo: a\x00b",
            "foo: a\x1bb",
            "foo: a\x7fb",
            "no colon here",
            &format!("{name33}: v"),
        ] {
            assert!(
                matches!(err(&with_line(bad)), PolicyError::BadLine { line: 5, .. }),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn rfc8461_3_3_size_limit() {
        let base = with_line("pad: ");
        let pad = MAX_POLICY_BYTES - base.len();
        let exact = with_line(&format!("pad: {}", "x".repeat(pad)));
        assert_eq!(exact.len(), MAX_POLICY_BYTES);
        assert!(parse_policy(exact.as_bytes()).is_ok());
        let over = with_line(&format!("pad: {}", "x".repeat(pad + 1)));
        assert_eq!(
            parse_policy(over.as_bytes()),
            Err(PolicyError::TooLarge(MAX_POLICY_BYTES + 1))
        );
        // The size check comes before anything else.
        assert_eq!(
            parse_policy(&vec![0xff; MAX_POLICY_BYTES + 10]),
            Err(PolicyError::TooLarge(MAX_POLICY_BYTES + 10))
        );
    }

    #[test]
    fn rfc8461_3_2_body_must_be_utf8() {
        assert_eq!(
            parse_policy(b"version: STSv1\nmode: enforce\xff\n"),
            Err(PolicyError::NotUtf8 { line: 2 })
        );
        assert_eq!(parse_policy(b"\xc3"), Err(PolicyError::NotUtf8 { line: 1 }));
        // A UTF-8 BOM is U+FEFF, which makes the first key invalid.
        assert!(matches!(
            parse_policy(format!("\u{feff}{RFC_EXAMPLE}").as_bytes()),
            Err(PolicyError::BadLine { line: 1, .. })
        ));
    }

    #[test]
    fn rfc8461_3_2_policy_error_display_is_operator_readable() {
        let e = err("version: STSv1\nmode: enforce\nmx: 192.0.2.1\nmax_age: 1\n");
        assert_eq!(
            e.to_string(),
            "line 3: mx \"192.0.2.1\": is an IP address literal, not a host name (RFC 8461 §3.2)"
        );
        assert_eq!(
            PolicyError::NoMx(Mode::Enforce).to_string(),
            "mode enforce requires at least one \"mx\" line (RFC 8461 §3.2)"
        );
        assert_eq!(
            PolicyError::TooLarge(70000).to_string(),
            "policy has 70000 bytes, more than the limit of 65536 (RFC 8461 §3.3)"
        );
        assert_eq!(
            PolicyError::BadMaxAge {
                line: 4,
                value: "1e5".to_owned()
            }
            .to_string(),
            "line 4: max_age \"1e5\" is not 1 to 10 decimal digits (RFC 8461 §3.2)"
        );
        // Untrusted values are escaped and cut short.
        let long = PolicyError::BadMode {
            line: 2,
            value: format!("\u{85}{}", "z".repeat(500)),
        }
        .to_string();
        assert!(long.starts_with("line 2: mode \"\\u{85}zzz"), "{long}");
        assert!(long.len() < 200, "{long}");
        let _: &dyn std::error::Error = &e;
    }

    #[test]
    fn rfc8461_3_2_to_text_is_canonical() {
        let p = ok(RFC_EXAMPLE);
        assert_eq!(p.to_text(), RFC_EXAMPLE);
        let quirky = "\r\nversion:STSv1\r\nmode:\tnone \r\nx-note:  a  b \n\nmode: enforce\nmax_age:  0099\n";
        let p = ok(quirky);
        assert_eq!(
            p.to_text(),
            "version: STSv1\nmode: none\nx-note: a  b\nmode: enforce\nmax_age: 0099\n"
        );
        assert_eq!(parse_policy(p.to_text().as_bytes()), Ok(p));
    }

    #[test]
    fn rfc8461_3_3_to_text_round_trips_at_the_size_limit() {
        // Many short lines without spaces or final LF: the readable form would be too large.
        let mut body = String::from("version:STSv1\nmode:enforce\nmx:a.example\nmax_age:1");
        while body.len() + 4 <= MAX_POLICY_BYTES {
            body.push_str("\nx:y");
        }
        let p = ok(&body);
        let text = p.to_text();
        assert!(text.len() <= MAX_POLICY_BYTES);
        assert_eq!(parse_policy(text.as_bytes()), Ok(p));
    }

    // ---- property tests ----

    fn config() -> ProptestConfig {
        // No regression files: this module must not write into the source tree.
        ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?"
    }

    fn mx_spec() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            proptest::collection::vec(label(), 0..3),
            "[a-zA-Z]{1,6}",
        )
            .prop_map(|(wild, labels, tld)| {
                let mut s = if wild { "*.".to_owned() } else { String::new() };
                for l in labels {
                    s.push_str(&l);
                    s.push('.');
                }
                s.push_str(&tld);
                s
            })
    }

    fn wsp() -> impl Strategy<Value = String> {
        "[ \t]{0,2}"
    }

    fn body_lines() -> impl Strategy<Value = (Mode, String, Vec<String>, Vec<(String, String)>)> {
        (
            prop_oneof![Just(Mode::None), Just(Mode::Testing), Just(Mode::Enforce)],
            "[0-9]{1,10}",
            proptest::collection::vec(mx_spec(), 1..5),
            proptest::collection::vec(
                (
                    "[a-z0-9][a-z0-9_.-]{0,8}",
                    "[!-~\u{a0}-\u{2fff}]([ !-~é]{0,12}[!-~])?",
                ),
                0..4,
            ),
        )
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn rfc8461_3_2_generated_valid_policies_parse_and_round_trip(
            (mode, age, mx, extra) in body_lines(),
            seps in proptest::collection::vec((wsp(), wsp(), any::<bool>(), any::<bool>()), 64),
            rotation in any::<prop::sample::Index>(),
            final_term in any::<bool>(),
        ) {
            let mut entries: Vec<(String, String)> = vec![
                ("version".into(), "STSv1".into()),
                ("mode".into(), mode.as_str().into()),
                ("max_age".into(), age.clone()),
            ];
            entries.extend(mx.iter().map(|m| ("mx".to_owned(), m.clone())));
            // Known names among the generated extensions would be interpreted; keep them unknown.
            entries.extend(extra.into_iter().filter(|(k, _)| {
                !matches!(k.as_str(), "version" | "mode" | "max_age" | "mx")
            }));
            // RFC 8461 §3.2 sets no line order.
            let shift = rotation.index(entries.len());
            entries.rotate_left(shift);
            let mut body = String::new();
            for (i, (k, v)) in entries.iter().enumerate() {
                let (pre, post, crlf, blank) = &seps[i % seps.len()];
                if i > 0 {
                    body.push_str(if *crlf { "\r\n" } else { "\n" });
                    if *blank { body.push('\n'); }
                }
                body.push_str(&format!("{k}:{pre}{v}{post}"));
            }
            if final_term { body.push_str("\r\n\n"); }

            let p = parse_policy(body.as_bytes()).map_err(|e| TestCaseError::fail(format!("{body:?}: {e}")))?;
            prop_assert_eq!(p.mode, mode);
            let expected_age: u64 = age.parse().map_err(|_| TestCaseError::fail("age"))?;
            prop_assert_eq!(u64::from(p.max_age), expected_age.min(u64::from(MAX_AGE_LIMIT)));
            prop_assert_eq!(p.max_age_clamped, expected_age > u64::from(MAX_AGE_LIMIT));
            // Lowercase, file order, a repeated pattern kept once (its first occurrence).
            let mut lower: Vec<String> = Vec::new();
            for (_, m) in entries.iter().filter(|(k, _)| k == "mx") {
                let m = m.to_ascii_lowercase();
                if !lower.contains(&m) {
                    lower.push(m);
                }
            }
            prop_assert_eq!(forms(&p), lower);
            prop_assert_eq!(&p.lines.to_vec(), &entries);
            prop_assert_eq!(parse_policy(p.to_text().as_bytes()), Ok(p));
        }

    }
}
