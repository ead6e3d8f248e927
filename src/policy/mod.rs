//! RFC 8461 data types and their strict parsers: the `_mta-sts` TXT record (§3.1), the policy
//! file served at `/.well-known/mta-sts.txt` (§3.2) and MX pattern matching (§4.1).
//!
//! Everything here is a pure function over bytes and strings (no I/O, no async), so that every
//! rule can be unit-tested, property-tested and fuzzed on its own. DNS lookups, HTTPS fetching and
//! the cache live elsewhere and hand their raw data to this module.
//!
//! Parsing is strict on purpose (spec A2.3, A4.9): input that does not match the RFC grammar
//! yields no policy. Per RFC 8461 §3.1 and §3.3 "no policy" means delivering as without MTA-STS,
//! which is safer than guessing what a publisher meant and then refusing mail because of it.

use std::fmt;
use std::net::IpAddr;

/// Upper bound for `max_age` in seconds: one year (RFC 8461 §3.2).
pub const MAX_AGE_LIMIT: u32 = 31_557_600;

/// Largest policy body accepted, in bytes (RFC 8461 §3.3 suggests 64 kilobytes; spec A3.6).
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

const WSP: [char; 2] = [' ', '\t'];

/// Quotes untrusted text for an error message: escaped (no control characters reach the logs)
/// and cut short (a 64 KiB line must not become a 64 KiB log line).
fn shown(s: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(MAX_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}...")
    } else {
        format!("{head:?}")
    }
}

// RFC 8461 §3.1 sts-ext-name and §3.2 sts-policy-ext-name (same rule):
// (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
fn is_ext_name(name: &str) -> bool {
    let b = name.as_bytes();
    match b.split_first() {
        Some((first, rest)) => {
            first.is_ascii_alphanumeric()
                && rest.len() <= 31
                && rest
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
        }
        None => false,
    }
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

// Spec A2.6 decision: a candidate is "v=STSv1", optional SP/HTAB, then ";". Checked on bytes
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

/// Parses one `v=STSv1` TXT record against the exact ABNF of RFC 8461 §3.1 (spec A2.3).
///
/// Every field must match the grammar, including repeated and unknown ones; of repeated fields
/// the first counts (RFC 8461 §3.2, spec A2.8). A field named `id` must be a valid `sts-id` even
/// when it repeats, because `id=abc_1` is "syntactically invalid" (spec A2.5), not an extension.
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
            // RFC 8461 §3.2 / spec A2.8: the first occurrence of a repeated field counts.
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

/// One `mx` pattern of a policy (RFC 8461 §3.2): a host name, or `*.` followed by a domain.
/// Stored lowercase, because MX matching is case-insensitive (§4.1) and Postfix answers should be
/// stable whatever case the publisher used.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MxPattern {
    wildcard: bool,
    /// Lowercase, without the `*.` prefix.
    domain: Box<str>,
}

/// A borrowed `mx` pattern, as [`MxList`] hands them out: the same checks and forms as
/// [`MxPattern`], without an allocation of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mx<'a> {
    wildcard: bool,
    /// Without the `*.` prefix; lowercase in every `Mx` an [`MxList`] hands out (only the
    /// transient one of [`Mx::check`] keeps the case as written).
    domain: &'a str,
}

impl<'a> Mx<'a> {
    /// From a line of an [`MxList`] (checked and lowercased when the list was built).
    fn from_policy_form(form: &'a str) -> Mx<'a> {
        match form.strip_prefix("*.") {
            Some(domain) => Mx {
                wildcard: true,
                domain,
            },
            None => Mx {
                wildcard: false,
                domain: form,
            },
        }
    }

    #[must_use]
    pub fn is_wildcard(self) -> bool {
        self.wildcard
    }

    /// The RFC form (`*.example.net` / `mail.example.com`), as Postfix wants it in
    /// `mx_host_pattern` (spec B1).
    #[must_use]
    pub fn policy_form(self) -> String {
        if self.wildcard {
            format!("*.{}", self.domain)
        } else {
            self.domain.to_string()
        }
    }

    /// The Postfix `match=` form (`.example.net` / `mail.example.com`, spec E3). Postfix's
    /// `.example.net` is wider than RFC 8461 (any number of labels); only Postfix >= 3.10.5 with
    /// `mx_host_pattern` restores exact semantics (spec E7).
    #[must_use]
    pub fn match_form(self) -> String {
        if self.wildcard {
            format!(".{}", self.domain)
        } else {
            self.domain.to_string()
        }
    }

    /// Whether an MX host name satisfies this pattern (RFC 8461 §4.1 and the Appendix B
    /// reference code): literal equality, or exactly one extra left-most label for a wildcard.
    /// Case-insensitive; one trailing dot on `host` (DNS absolute form) is ignored.
    #[must_use]
    pub fn matches(self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        if !self.wildcard {
            return host.eq_ignore_ascii_case(self.domain);
        }
        // RFC 8461 §4.1: "*" matches the entire left-most label only, so "example.net" and
        // "a.b.example.net" do not match "*.example.net".
        match host.split_once('.') {
            Some((label, parent)) => {
                !label.is_empty()
                    && !label.contains('*')
                    && parent.eq_ignore_ascii_case(self.domain)
            }
            None => false,
        }
    }
}

/// A policy's `mx` patterns in file order (duplicates kept), in one allocation: each policy
/// form followed by a line feed. A cache of 100,000 policies would otherwise spend three
/// allocations per policy on them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MxList(Box<str>);

impl MxList {
    /// One exact allocation: this runs for every policy loaded at start-up, and growing a string
    /// would leave freed fragments between the long-lived ones.
    fn from_checked(patterns: &[Mx<'_>]) -> MxList {
        let len = patterns
            .iter()
            .map(|p| p.domain.len() + if p.wildcard { 3 } else { 1 })
            .sum();
        let mut s = String::with_capacity(len);
        for p in patterns {
            if p.wildcard {
                s.push_str("*.");
            }
            s.extend(p.domain.chars().map(|c| c.to_ascii_lowercase()));
            s.push('\n');
        }
        MxList(s.into_boxed_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = Mx<'_>> + Clone {
        self.0.lines().map(Mx::from_policy_form)
    }

    /// The `i`-th pattern in file order.
    pub fn get(&self, i: usize) -> Option<Mx<'_>> {
        self.iter().nth(i)
    }

    pub fn contains(&self, m: Mx<'_>) -> bool {
        self.iter().any(|x| x == m)
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl MxPattern {
    /// Parses `mail.example.com` or `*.example.net`.
    ///
    /// The name must be an RFC 5321 §4.1.2 `Domain` (letters, digits and inner hyphens in
    /// labels of 1-63 characters, no trailing dot), at most 253 characters including any `*.`,
    /// ASCII only (IDNs as A-labels, RFC 8461 §3.2), and not an address literal. Single-label
    /// names and `*.com` pass, because the grammar allows them.
    ///
    /// # Errors
    /// A sentence saying what is wrong with the pattern.
    pub fn parse(s: &str) -> Result<MxPattern, String> {
        let mx = Mx::check(s)?;
        Ok(MxPattern {
            wildcard: mx.wildcard,
            domain: mx.domain.to_ascii_lowercase().into_boxed_str(),
        })
    }

    /// The borrowed form, whose methods these are.
    #[must_use]
    pub fn as_mx(&self) -> Mx<'_> {
        Mx {
            wildcard: self.wildcard,
            domain: &self.domain,
        }
    }

    #[must_use]
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// See [`Mx::policy_form`].
    #[must_use]
    pub fn policy_form(&self) -> String {
        self.as_mx().policy_form()
    }

    /// See [`Mx::match_form`].
    #[must_use]
    pub fn match_form(&self) -> String {
        self.as_mx().match_form()
    }

    /// See [`Mx::matches`].
    #[must_use]
    pub fn matches(&self, host: &str) -> bool {
        self.as_mx().matches(host)
    }
}

impl<'a> Mx<'a> {
    /// The checks of [`MxPattern::parse`], without an allocation: the pattern as written (not
    /// yet lowercased).
    fn check(s: &'a str) -> Result<Mx<'a>, String> {
        if s.is_empty() {
            return Err("empty pattern".to_owned());
        }
        // RFC 8461 §3.2: "MX patterns ... MUST be A-labels" for IDNs.
        if !s.is_ascii() {
            return Err(
                "contains non-ASCII characters (internationalized names must be written as A-labels, RFC 8461 §3.2)"
                    .to_owned(),
            );
        }
        let (wildcard, domain) = match s.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, s),
        };
        // RFC 8461 §3.2 grammar ["*."] Domain: the "*" can only be the whole left-most label.
        if domain.contains('*') {
            return Err(
                "\"*\" is only allowed as the complete left-most label (RFC 8461 §3.2)".to_owned(),
            );
        }
        if domain.is_empty() {
            return Err("\"*.\" must be followed by a domain".to_owned());
        }
        if s.len() > 253 {
            return Err(format!("{} characters, more than 253", s.len()));
        }
        // RFC 8461 §3.4: MTA-STS has no way to name address literals; a policy listing one is
        // invalid rather than silently narrowed.
        if domain.starts_with('[') || domain.parse::<IpAddr>().is_ok() {
            return Err("is an IP address literal, not a host name (RFC 8461 §3.2)".to_owned());
        }
        if domain.ends_with('.') {
            return Err("trailing dot is not allowed (RFC 8461 §3.2, RFC 5321 §4.1.2)".to_owned());
        }
        for label in domain.split('.') {
            check_ldh_label(label)?;
        }
        // A numeric top-level label never names a host (RFC 3696 §2); this also catches IPv4
        // shorthand such as "127.1" that IpAddr does not parse.
        if domain
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(
                "top-level label is all digits (an IP address literal?), not a host name"
                    .to_owned(),
            );
        }
        Ok(Mx { wildcard, domain })
    }
}

// RFC 5321 §4.1.2: sub-domain = Let-dig [Ldh-str]; labels limited to 63 octets (RFC 1035 §2.3.4).
fn check_ldh_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label".to_owned());
    }
    if label.len() > 63 {
        return Err(format!(
            "label {} has {} characters, more than 63",
            shown(label),
            label.len()
        ));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!(
            "label {} has a character other than letters, digits and \"-\"",
            shown(label)
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {} starts or ends with \"-\"", shown(label)));
    }
    Ok(())
}

/// A parsed, valid MTA-STS policy (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// Seconds, clamped to [`MAX_AGE_LIMIT`].
    pub max_age: u32,
    /// The file said more than [`MAX_AGE_LIMIT`]; the caller logs it (spec A4.5).
    pub max_age_clamped: bool,
    /// All `mx` patterns in file order, duplicates kept as in the file.
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

/// Why a policy body was rejected. Every variant makes the whole policy invalid (spec A4.9),
/// which RFC 8460 reports as `sts-policy-invalid`.
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
    // Spec A4.5 decision: more than one year is clamped (and reported) rather than rejected.
    match u32::try_from(seconds) {
        Ok(s) if s <= MAX_AGE_LIMIT => Some((s, false)),
        _ => Some((MAX_AGE_LIMIT, true)),
    }
}

/// Parses a policy body strictly (RFC 8461 §3.2, spec A4).
///
/// Lines end in LF or CRLF; the last terminator is optional. Fully empty lines are skipped (spec
/// A4.9: real files end in blank lines); any other line must match `name ":" *WSP value *WSP`,
/// otherwise the whole policy is invalid. Of `version`, `mode` and `max_age` only the first
/// occurrence is interpreted; later ones are ignored (RFC 8461 §3.2) but, like unknown fields,
/// must still be grammatical lines. Every `mx` line is validated, also in mode `none`.
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
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The example policy of RFC 8461 §3.2, shared with other modules' tests.
    pub(crate) const RFC_EXAMPLE: &str = "version: STSv1\n\
                               mode: enforce\n\
                               mx: mail.example.com\n\
                               mx: *.example.net\n\
                               mx: backupmx.example.com\n\
                               max_age: 604800\n";

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

    fn pat(s: &str) -> MxPattern {
        match MxPattern::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("{s:?} rejected: {e}"),
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

    // ---- Mode ----

    #[test]
    fn rfc8461_5_modes_order_weakest_to_strongest_and_display() {
        assert!(Mode::None < Mode::Testing && Mode::Testing < Mode::Enforce);
        assert_eq!(Mode::None.to_string(), "none");
        assert_eq!(Mode::Testing.to_string(), "testing");
        assert_eq!(Mode::Enforce.to_string(), "enforce");
        assert_eq!(Mode::Enforce.as_str(), "enforce");
    }

    // ---- TXT record, RFC 8461 §3.1 ----

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
        // A later id must still be a valid sts-id (spec A2.5 makes "id=abc_1" invalid).
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
        // Spec A2.6 decision: "v=STSv1" must be followed by optional WSP and ";".
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
        // Whitespace before ";" still makes a candidate (spec A2.6 decision).
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

    // ---- MX patterns, RFC 8461 §3.2 / §4.1 ----

    #[test]
    fn rfc8461_3_2_mx_pattern_forms() {
        let lit = pat("Mail.Example.COM");
        assert!(!lit.is_wildcard());
        assert_eq!(lit.policy_form(), "mail.example.com");
        assert_eq!(lit.match_form(), "mail.example.com");
        let wild = pat("*.Example.NET");
        assert!(wild.is_wildcard());
        assert_eq!(wild.policy_form(), "*.example.net");
        assert_eq!(wild.match_form(), ".example.net");
        // Allowed by the grammar: single labels and a wildcard over a TLD.
        assert_eq!(pat("localhost").policy_form(), "localhost");
        assert_eq!(pat("*.com").match_form(), ".com");
        assert_eq!(
            pat("1mail.ex-ample.com").policy_form(),
            "1mail.ex-ample.com"
        );
        assert_eq!(pat("*.x").policy_form(), "*.x");
    }

    #[test]
    fn rfc8461_3_2_mx_rejects_ip_literals() {
        for bad in [
            "192.0.2.1",
            "[192.0.2.1]",
            "2001:db8::1",
            "[2001:db8::1]",
            "[IPv6:2001:db8::1]",
            "::1",
            "127.1",
            "10.0.0.300",
            "*.0.2.1",
            "example.123",
        ] {
            assert!(MxPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(MxPattern::parse("192.0.2.1").is_err_and(|e| e.contains("IP address literal")));
        // Digits are fine in labels other than the last.
        assert!(MxPattern::parse("10.0.0.example").is_ok());
    }

    #[test]
    fn rfc8461_3_2_mx_wildcard_only_as_complete_leftmost_label() {
        for bad in [
            "*",
            "*.",
            "**.example.com",
            "*mail.example.com",
            "mail*.example.com",
            "mail.*.example.com",
            "mail.example.*",
            "*.*.example.com",
            "*example.com",
            ".example.com",
            "*..example.com",
        ] {
            assert!(MxPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rfc5321_4_1_2_mx_domain_syntax() {
        let label63 = "a".repeat(63);
        assert!(MxPattern::parse(&format!("{label63}.example.com")).is_ok());
        let long253 = format!("{0}.{0}.{0}.{1}", label63, "b".repeat(61));
        assert_eq!(long253.len(), 253);
        assert!(MxPattern::parse(&long253).is_ok());
        let long254 = format!("{long253}c");
        assert!(MxPattern::parse(&long254).is_err());
        // "*." counts towards the 253.
        let wild254 = format!("*.{0}.{0}.{0}.{1}", label63, "b".repeat(60));
        assert_eq!(wild254.len(), 254);
        assert!(MxPattern::parse(&wild254).is_err());
        for bad in [
            "",
            "example.com.",
            "*.example.com.",
            "a..example.com",
            "-a.example.com",
            "a-.example.com",
            "a_b.example.com",
            "a b.example.com",
            " mail.example.com",
            "mail.example.com ",
            "mail.example.com\t",
            "mail/example.com",
            "mail@example.com",
            "mail.example.com:25",
            &format!("{}a.example.com", label63),
        ] {
            assert!(MxPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            MxPattern::parse("mail.example.com:25")
                .is_err_and(|e| e.contains("character other than"))
        );
        assert!(MxPattern::parse("a-b.example.com").is_ok());
        assert!(MxPattern::parse("xn--a.example.com").is_ok());
    }

    #[test]
    fn rfc8461_3_2_mx_idn_must_be_a_label() {
        assert!(MxPattern::parse("bücher.example").is_err_and(|e| e.contains("A-labels")));
        assert!(MxPattern::parse("*.bücher.example").is_err());
        assert_eq!(
            pat("mx.xn--bcher-kva.example").policy_form(),
            "mx.xn--bcher-kva.example"
        );
    }

    #[test]
    fn rfc8461_4_1_literal_pattern_matches_only_itself() {
        let p = pat("mail.example.com");
        assert!(p.matches("mail.example.com"));
        assert!(p.matches("MAIL.Example.Com"));
        assert!(p.matches("mail.example.com."));
        for no in [
            "a.mail.example.com",
            "example.com",
            "mail.example.com..",
            "mail.example.co",
            "mail.example.com.evil",
            "",
            ".",
        ] {
            assert!(!p.matches(no), "{no:?} matched");
        }
    }

    #[test]
    fn rfc8461_4_1_wildcard_matches_exactly_one_leftmost_label() {
        let p = pat("*.example.com");
        assert!(p.matches("mail.example.com"));
        assert!(p.matches("MX1.EXAMPLE.com."));
        for no in [
            "example.com",
            "foo.bar.example.com",
            ".example.com",
            "*.example.com",
            "mail.example.com.evil",
            "mailexample.com",
            "mail.example.org",
            "",
        ] {
            assert!(!p.matches(no), "{no:?} matched");
        }
    }

    #[test]
    fn rfc8461_appendix_b_reference_cases() {
        // Cases that follow the reference code's two branches literally.
        let wild = pat("*.mail.example.com");
        assert!(wild.matches("mx1.mail.example.com"));
        assert!(!wild.matches("mail.example.com"));
        let lit = pat("mx1.mail.example.com");
        assert!(lit.matches("mx1.mail.example.com"));
        assert!(!lit.matches("mx2.mail.example.com"));
    }

    // ---- Policy body, RFC 8461 §3.2 ----

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
    fn spec_a4_9_empty_lines_are_skipped_but_counted() {
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
        // Only fully empty lines are skipped (spec A4.9): whitespace-only lines are not.
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
    fn rfc8461_3_2_mx_duplicates_and_order_kept() {
        let p = ok(
            "version: STSv1\nmode: enforce\nmx: b.example\nmx: A.example\n\
                    max_age: 1\nmx: b.example\nmx: *.c.example\n",
        );
        assert_eq!(
            forms(&p),
            ["b.example", "a.example", "b.example", "*.c.example"]
        );
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
            let lower: Vec<String> = entries
                .iter()
                .filter(|(k, _)| k == "mx")
                .map(|(_, m)| m.to_ascii_lowercase())
                .collect();
            prop_assert_eq!(forms(&p), lower);
            prop_assert_eq!(&p.lines.to_vec(), &entries);
            prop_assert_eq!(parse_policy(p.to_text().as_bytes()), Ok(p));
        }

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
