//! Turns a Postfix `smtp_tls_policy_maps` lookup key into the MTA-STS policy domain.
//!
//! This module owns key normalisation: which of the keys `postconf(5)` describes for
//! `smtp_tls_policy_maps` are answered NOTFOUND at once without any DNS traffic, and how the rest
//! become a lowercase ASCII (A-label) hostname, the policy domain of RFC 8461 §1.1 and §3.4.
//! It is pure: no I/O, no configuration. Callers that turn off `smart_host_policies` filter
//! bracketed and `:port` keys themselves before calling [`policy_domain`].

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// Why a key is answered NOTFOUND without any DNS query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The key starts with `.`: Postfix's parent-domain probe (`postconf(5)`,
    /// `smtp_tls_policy_maps`). RFC 8461 §3.4 forbids using a parent zone's policy, so these never
    /// get one.
    ParentDomain,
    /// An address literal (`[192.0.2.1]`, `[ipv6:2001:db8::1]`, bare addresses): RFC 8461 §3.4 has
    /// no way to attach a policy to one.
    IpLiteral,
    /// Anything else that is not a usable hostname; the text says which rule it broke.
    NotHostname(&'static str),
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::ParentDomain => f.write_str("parent-domain probe"),
            Skip::IpLiteral => f.write_str("address literal"),
            Skip::NotHostname(why) => write!(f, "not a hostname: {why}"),
        }
    }
}

impl std::error::Error for Skip {}

/// Longest DNS name in presentation form without the root dot (RFC 1035 §2.3.4: 255 octets on
/// the wire, i.e. 253 characters).
const MAX_NAME: usize = 253;
/// RFC 1035 §2.3.4.
const MAX_LABEL: usize = 63;
/// Keys longer than this are rejected before IDNA processing, so that a 10 kB key (Postfix's
/// `socketmap_max_query_size`) cannot make us run UTS #46 over it. 4 bytes per code point covers
/// any U-label whose A-label fits in [`MAX_NAME`], plus brackets and a port.
const MAX_KEY: usize = 4 * MAX_NAME + 16;

/// Normalises a key as Postfix sends it (raw bytes, maybe UTF-8) into the policy domain:
/// lowercase A-label, no trailing dot, LDH labels 1..=63 bytes, total <= 253 bytes, at least two
/// labels, last label not all digits.
///
/// The steps, in order: parent-domain probe, `[host]`/`[host]:port`, `domain:port`,
/// pathname, address literal, then lowercase / trailing dot / IDNA / LDH validation.
pub fn policy_domain(key: &[u8]) -> Result<String, Skip> {
    if key.is_empty() {
        return Err(Skip::NotHostname("empty key"));
    }
    // RFC 8461 §3.4: every parent-domain probe is NOTFOUND, whatever follows the dot.
    if key[0] == b'.' {
        return Err(Skip::ParentDomain);
    }
    if key.len() > MAX_KEY {
        return Err(Skip::NotHostname("name longer than 253 bytes"));
    }

    let host = if let Some(rest) = key.strip_prefix(b"[") {
        bracketed_host(rest)?
    } else {
        // The pathname check comes before the port split so that `/run/lmtp:x` reads as a
        // pathname, not as a bad port.
        if key.contains(&b'/') {
            return Err(Skip::NotHostname("pathname"));
        }
        unbracketed_host(key)?
    };

    if host.contains(&b'/') {
        return Err(Skip::NotHostname("pathname"));
    }
    if is_ip_address(host) {
        return Err(Skip::IpLiteral);
    }

    let host = std::str::from_utf8(host).map_err(|_| Skip::NotHostname("not UTF-8"))?;
    // Postfix's socketmap client sends the key as written (`EXAMPLE.Com`), so we fold case.
    let lower = host.to_ascii_lowercase();
    let mut name = to_a_labels(lower)?;
    // Exactly one trailing dot (the DNS root) is allowed; `example.com..` keeps an empty label
    // and fails below. Stripping after IDNA also covers U+3002 and other dots UTS #46 maps to `.`.
    if name.ends_with('.') {
        name.pop();
    }
    validate_hostname(&name)?;
    // The lookup path: one allocation for the whole normalisation of an ASCII key.
    Ok(name)
}

/// `[host]` or `[host]:port`, a nexthop without MX lookup: the host inside the brackets is a smart
/// host, and RFC 8461 §3.4 makes it the policy domain, unless it is an address literal.
fn bracketed_host(rest: &[u8]) -> Result<&[u8], Skip> {
    let close = rest
        .iter()
        .position(|&b| b == b']')
        .ok_or(Skip::NotHostname("unbalanced bracket"))?;
    let (inner, after) = (&rest[..close], &rest[close + 1..]);
    if !after.is_empty() {
        match after.strip_prefix(b":") {
            Some(port) => check_port(port)?,
            None => return Err(Skip::NotHostname("text after closing bracket")),
        }
    }
    // RFC 5321 §4.1.3 address literals: `IPv6:` tag (in any case) or a plain IPv4 address.
    // Postfix also passes untagged IPv6 through, which `is_ip_address` catches later.
    if inner.len() >= 5 && inner[..5].eq_ignore_ascii_case(b"ipv6:") {
        return Err(Skip::IpLiteral);
    }
    if inner.is_empty() {
        return Err(Skip::NotHostname("empty key"));
    }
    Ok(inner)
}

/// `domain` or `domain:port` (Postfix still looks up its MX records). A key with two or more
/// colons is never `domain:port`: it can only be a bare IPv6 address (maybe `ipv6:`-tagged), or
/// junk.
fn unbracketed_host(key: &[u8]) -> Result<&[u8], Skip> {
    let Some(colon) = key.iter().position(|&b| b == b':') else {
        return Ok(key);
    };
    let (host, port) = (&key[..colon], &key[colon + 1..]);
    if !port.contains(&b':') {
        check_port(port)?;
        if host.is_empty() {
            return Err(Skip::NotHostname("empty key"));
        }
        return Ok(host);
    }
    let addr = if host.eq_ignore_ascii_case(b"ipv6") {
        port
    } else {
        key
    };
    if is_ip_address(addr) {
        Err(Skip::IpLiteral)
    } else {
        Err(Skip::NotHostname("invalid character"))
    }
}

/// Only numeric ports count (1–5 digits, at most 65535). Postfix also allows service
/// names such as `:submission`; such keys get NOTFOUND, which only means "no MTA-STS".
fn check_port(port: &[u8]) -> Result<(), Skip> {
    if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
        return Err(Skip::NotHostname("bad port"));
    }
    let value = port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    if value > u32::from(u16::MAX) {
        return Err(Skip::NotHostname("bad port"));
    }
    Ok(())
}

fn is_ip_address(s: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(s) else {
        return false;
    };
    s.parse::<Ipv4Addr>().is_ok() || s.parse::<Ipv6Addr>().is_ok()
}

/// Postfix sends U-labels as raw UTF-8; they become A-labels (UTS #46 non-transitional
/// processing, IDNA 2008), because DNS, HTTPS and RFC 8460 §4.4 need them, and existing
/// `xn--` labels are checked to decode to a valid U-label. Plain LDH names skip this step: UTS #46
/// would only lowercase them, which is already done.
fn to_a_labels(lower: String) -> Result<String, Skip> {
    let needs_idna = !lower.is_ascii() || lower.split('.').any(|label| label.starts_with("xn--"));
    if !needs_idna {
        return Ok(lower);
    }
    // Deny list and hyphen and length checks are left to `validate_hostname`, which runs on the
    // output and gives a precise reason; here only IDNA validity is judged.
    Uts46::new()
        .to_ascii(
            lower.as_bytes(),
            AsciiDenyList::EMPTY,
            Hyphens::Allow,
            DnsLength::Ignore,
        )
        .map(|name| name.into_owned())
        .map_err(|_| Skip::NotHostname("not a valid IDN"))
}

/// The hostname rules Postfix's `valid_hostname()` and DNS apply, on the final
/// ASCII name without its root dot.
fn validate_hostname(name: &str) -> Result<(), Skip> {
    if name.is_empty() {
        return Err(Skip::NotHostname("empty label"));
    }
    if name.len() > MAX_NAME {
        return Err(Skip::NotHostname("name longer than 253 bytes"));
    }
    let mut labels = 0usize;
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(Skip::NotHostname("empty label"));
        }
        if label.len() > MAX_LABEL {
            return Err(Skip::NotHostname("label longer than 63 bytes"));
        }
        // RFC 952 / RFC 1123 §2.1 LDH: letters, digits, hyphen; no underscore (so `_mta-sts`
        // style names are not policy domains).
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Skip::NotHostname("invalid character"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(Skip::NotHostname("hyphen at start or end of label"));
        }
        labels += 1;
        last = label;
    }
    // A single label (`localhost`, a transport nexthop alias) cannot carry a public policy.
    if labels < 2 {
        return Err(Skip::NotHostname("single label"));
    }
    // RFC 3696 §2: a top-level label is never all-numeric; this also stops `192.0.2.1.` forms.
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Skip::NotHostname("numeric top-level label"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(key: &[u8]) -> String {
        match policy_domain(key) {
            Ok(d) => d,
            Err(e) => panic!("{:?} rejected: {e}", String::from_utf8_lossy(key)),
        }
    }

    fn not_hostname(key: &[u8], why: &'static str) {
        assert_eq!(policy_domain(key), Err(Skip::NotHostname(why)), "{key:?}");
    }

    #[test]
    fn key_lowercases_and_strips_one_trailing_dot() {
        assert_eq!(ok(b"EXAMPLE.Com."), "example.com");
        assert_eq!(ok(b"example.com"), "example.com");
    }

    #[test]
    fn key_two_trailing_dots_rejected() {
        not_hostname(b"example.com..", "empty label");
    }

    #[test]
    fn key_rfc8461_3_4_parent_domain_probe() {
        assert_eq!(policy_domain(b".example.com"), Err(Skip::ParentDomain));
        assert_eq!(policy_domain(b".com"), Err(Skip::ParentDomain));
        assert_eq!(policy_domain(b"."), Err(Skip::ParentDomain));
        assert_eq!(policy_domain(b".[x]"), Err(Skip::ParentDomain));
    }

    #[test]
    fn key_rfc8461_3_4_smart_host_brackets() {
        assert_eq!(ok(b"[mail.example.com]"), "mail.example.com");
        assert_eq!(ok(b"[mail.example.com]:25"), "mail.example.com");
        assert_eq!(ok(b"[Mail.Example.COM]:587"), "mail.example.com");
        assert_eq!(ok(b"[mail.example.com.]"), "mail.example.com");
    }

    #[test]
    fn key_bracket_errors() {
        not_hostname(b"[mail.example.com", "unbalanced bracket");
        not_hostname(b"[mail.example.com]x", "text after closing bracket");
        not_hostname(b"[mail.example.com]:", "bad port");
        not_hostname(b"[mail.example.com]:smtp", "bad port");
        not_hostname(b"[mail.example.com]:65536", "bad port");
        not_hostname(b"[]", "empty key");
        not_hostname(b"[]:25", "empty key");
    }

    #[test]
    fn key_domain_port() {
        assert_eq!(ok(b"example.com:2525"), "example.com");
        assert_eq!(ok(b"example.com:65535"), "example.com");
        not_hostname(b"example.com:123456", "bad port");
        not_hostname(b"example.com:", "bad port");
        not_hostname(b":25", "empty key");
    }

    #[test]
    fn key_rfc8461_3_4_ip_literals() {
        for key in [
            &b"[192.0.2.1]"[..],
            b"[192.0.2.1]:25",
            b"[ipv6:2001:db8::1]",
            b"[IPv6:2001:DB8::1]:25",
            b"[IPV6:::1]",
            b"[2001:db8::1]",
            b"192.0.2.1",
            b"192.0.2.1:25",
            b"2001:db8::1",
            b"ipv6:2001:db8::1",
            b"::1",
        ] {
            assert_eq!(policy_domain(key), Err(Skip::IpLiteral), "{key:?}");
        }
    }

    #[test]
    fn key_numeric_tld_rejected() {
        not_hostname(b"192.0.2.1.", "numeric top-level label");
        not_hostname(b"example.123", "numeric top-level label");
        assert_eq!(ok(b"123.example"), "123.example");
    }

    #[test]
    fn key_raw_utf8_becomes_a_label() {
        assert_eq!(ok("bücher.example".as_bytes()), "xn--bcher-kva.example");
        assert_eq!(ok("BÜCHER.example.".as_bytes()), "xn--bcher-kva.example");
        assert_eq!(ok(b"b\xc3\xbccher.example"), "xn--bcher-kva.example");
        // UTS #46 maps the ideographic full stop to '.'.
        assert_eq!(
            ok("bücher\u{3002}example".as_bytes()),
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn key_existing_a_label_checked() {
        assert_eq!(ok(b"XN--BCHER-KVA.example"), "xn--bcher-kva.example");
        not_hostname(b"xn--a.example", "not a valid IDN");
    }

    #[test]
    fn key_invalid_idn_rejected() {
        // U+0378 is unassigned, so UTS #46 disallows it.
        not_hostname("a\u{378}b.example".as_bytes(), "not a valid IDN");
    }

    #[test]
    fn key_rfc1035_label_length_limit() {
        let l63 = "a".repeat(63);
        let l64 = "a".repeat(64);
        assert_eq!(
            ok(format!("{l63}.example").as_bytes()),
            format!("{l63}.example")
        );
        not_hostname(
            format!("{l64}.example").as_bytes(),
            "label longer than 63 bytes",
        );
    }

    #[test]
    fn key_rfc1035_name_length_limit() {
        // 63+1+63+1+63+1+61 = 253 bytes: the longest valid name.
        let l63 = "a".repeat(63);
        let name253 = format!("{l63}.{l63}.{l63}.{}", "b".repeat(61));
        assert_eq!(name253.len(), 253);
        assert_eq!(ok(name253.as_bytes()), name253);
        assert_eq!(ok(format!("{name253}.").as_bytes()), name253);
        let name254 = format!("{l63}.{l63}.{l63}.{}", "b".repeat(62));
        not_hostname(name254.as_bytes(), "name longer than 253 bytes");
    }

    #[test]
    fn key_300_byte_key_rejected() {
        let key = format!("{}examples", "a.".repeat(146));
        assert_eq!(key.len(), 300);
        not_hostname(key.as_bytes(), "name longer than 253 bytes");
        not_hostname(&[b'a'; 20_000], "name longer than 253 bytes");
    }

    #[test]
    fn key_empty_label() {
        not_hostname(b"a..b", "empty label");
        not_hostname(b"example..com", "empty label");
    }

    #[test]
    fn key_binary_garbage() {
        not_hostname(b"\xff\xfe\x00\x01.example", "not UTF-8");
        not_hostname(b"exa\x00mple.com", "invalid character");
        not_hostname(b"exa mple.com", "invalid character");
        not_hostname(b"", "empty key");
    }

    #[test]
    fn key_single_label() {
        not_hostname(b"localhost", "single label");
        not_hostname(b"LOCALHOST.", "single label");
        not_hostname(b"[relay]:25", "single label");
    }

    #[test]
    fn key_lmtp_pathname() {
        not_hostname(b"/var/spool/lmtp", "pathname");
        not_hostname(b"private/lmtp", "pathname");
        not_hostname(b"/run/lmtp:x", "pathname");
        not_hostname(b"[mail/x]", "pathname");
    }

    #[test]
    fn key_underscore_not_ldh() {
        not_hostname(b"_x.example.com", "invalid character");
        not_hostname(b"_mta-sts.example.com", "invalid character");
    }

    #[test]
    fn key_hyphen_rules() {
        not_hostname(b"-a.example.com", "hyphen at start or end of label");
        not_hostname(b"a-.example.com", "hyphen at start or end of label");
        assert_eq!(ok(b"a-b.example.com"), "a-b.example.com");
    }

    #[test]
    fn key_skip_display_is_operator_readable() {
        assert_eq!(Skip::ParentDomain.to_string(), "parent-domain probe");
        assert_eq!(Skip::IpLiteral.to_string(), "address literal");
        assert_eq!(
            Skip::NotHostname("single label").to_string(),
            "not a hostname: single label"
        );
    }

    proptest::proptest! {
        #[test]
        fn key_never_panics_and_output_is_valid(key in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            if let Ok(d) = policy_domain(&key) {
                proptest::prop_assert!(d.len() <= MAX_NAME);
                proptest::prop_assert!(d.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
                proptest::prop_assert_eq!(policy_domain(d.as_bytes()), Ok(d.clone()));
            }
        }
    }
}
