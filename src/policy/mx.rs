//! MX host patterns of a policy (RFC 8461 §3.2) and how an MX host name matches them (§4.1).

use std::net::IpAddr;

use super::grammar::shown;

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
    /// From an entry of an [`MxList`] (checked and lowercased when the list was built): the
    /// Postfix `match=` form, where a leading `.` stands for RFC 8461's `*.` (a host name never
    /// starts with a dot, so the two forms map one to one).
    fn from_match_form(form: &'a str) -> Mx<'a> {
        match form.strip_prefix('.') {
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
    /// `mx_host_pattern` (`TLSRPT_README`, "MTA-STS Support via smtp_tls_policy_maps").
    #[must_use]
    pub fn policy_form(self) -> String {
        if self.wildcard {
            format!("*.{}", self.domain)
        } else {
            self.domain.to_string()
        }
    }

    /// The Postfix `match=` form (`.example.net` / `mail.example.com`, the `secure` level in
    /// `TLS_README`). Postfix's `.example.net` is wider than RFC 8461 §4.1 (any number of labels);
    /// only Postfix >= 3.10.5 with `mx_host_pattern` restores exact semantics
    /// (`smtp_tls_enforce_sts_mx_patterns`, `postconf(5)`).
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

/// A policy's `mx` patterns in file order, each once (first occurrence kept: a repeated
/// pattern adds nothing to RFC 8461 §4.1 matching; the policy's `lines` keep the file as it was),
/// stored as exactly the Postfix `match=` list (`mail.example.com:.example.net`): the answer
/// for a cached policy is then this string with a fixed head and tail, so the lookup path
/// copies it instead of rendering it. One allocation per policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MxList(Box<str>);

impl MxList {
    /// One exact allocation: this runs for every policy loaded at start-up, and growing a string
    /// would leave freed fragments between the long-lived ones.
    pub(super) fn from_checked(patterns: &[Mx<'_>]) -> MxList {
        // Patterns compare case-insensitively; a policy has a handful, so quadratic is fine.
        let same = |a: &Mx<'_>, b: &Mx<'_>| {
            a.wildcard == b.wildcard && a.domain.eq_ignore_ascii_case(b.domain)
        };
        let unique: Vec<&Mx<'_>> = patterns
            .iter()
            .enumerate()
            .filter(|(i, p)| !patterns[..*i].iter().any(|q| same(p, q)))
            .map(|(_, p)| p)
            .collect();
        let len = unique
            .iter()
            .map(|p| p.domain.len() + usize::from(p.wildcard) + 1)
            .sum::<usize>()
            .saturating_sub(1);
        let mut s = String::with_capacity(len);
        for (i, p) in unique.iter().enumerate() {
            if i > 0 {
                // RFC 8461's patterns go into one Postfix `match=` attribute, whose only
                // separator in a policy table is ":" (postconf(5), smtp_tls_policy_maps).
                s.push(':');
            }
            if p.wildcard {
                s.push('.');
            }
            s.extend(p.domain.chars().map(|c| c.to_ascii_lowercase()));
        }
        MxList(s.into_boxed_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = Mx<'_>> + Clone {
        self.0
            .split(':')
            .filter(|f| !f.is_empty())
            .map(Mx::from_match_form)
    }

    /// The patterns as Postfix's `match=` value: `mail.example.com:.example.net`.
    pub fn as_match_list(&self) -> &str {
        &self.0
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
    pub(super) fn check(s: &'a str) -> Result<Mx<'a>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> MxPattern {
        match MxPattern::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("{s:?} rejected: {e}"),
        }
    }

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
}
