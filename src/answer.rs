//! Turns a parsed policy and the operator's answer profile into the value of a Postfix
//! `smtp_tls_policy_maps` answer (postconf(5) policy table syntax; TLSRPT attributes from
//! Postfix's TLSRPT_README), and chooses the answer that fits the protocol's reply limit.
//!
//! This module knows Postfix's attribute syntax (`secure match=... servername=...` and the
//! Postfix >= 3.10 TLSRPT attributes) but nothing about sockets or framing: the socketmap and
//! `tcp_table` modules wrap its output, and tell it through `fits` how long an answer may be.

use std::sync::Arc;

use crate::dane::Verdict;
use crate::policy::{Mode, MxPattern, Policy};
use crate::proto::{SharedText, Value};

/// How policies are turned into answers; set by the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Answer `testing` policies like `enforce` ones; off by default because RFC 8461 §5 says
    /// testing must not affect delivery.
    pub strict_testing: bool,
    /// Add `servername=hostname`, which RFC 8461 §7.1 needs (SNI = MX host name) and Postfix
    /// does not send by default.
    pub servername: bool,
    /// Add the TLSRPT attributes. Only Postfix >= 3.10 accepts them; older versions defer all
    /// mail for the destination (an unknown attribute is a table error), hence opt-in.
    pub tlsrpt: bool,
    /// Decide from the destination's DANE state first (RFC 8461 §2: MTA-STS never overrides
    /// DANE): `dane-only` or `dane` where the destination publishes usable TLSA records in a
    /// signed zone, the MTA-STS answer elsewhere.
    pub dane: bool,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            strict_testing: false,
            servername: true,
            tlsrpt: false,
            dane: false,
        }
    }
}

/// How every plain answer starts; the policy's `mx` patterns follow, as Postfix's `match=`
/// list (postconf(5), smtp_tls_policy_maps: ":" is the only separator in a policy table).
pub const PLAIN_HEAD: &str = "secure match=";
/// Appended when the profile asks for SNI: RFC 8461 §7.1 needs it and Postfix does not send it
/// by default.
const SERVERNAME: &str = " servername=hostname";

/// Whether a policy applies at all: mode `none` never (RFC 8461 §5), `testing` only with
/// `profile.strict_testing`, `enforce` always, and never without an `mx` (a `match=` with an
/// empty list would not describe the policy).
fn applies(policy: &Policy, profile: &Profile) -> bool {
    let active = match policy.mode {
        Mode::Enforce => true,
        Mode::Testing => profile.strict_testing,
        Mode::None => false,
    };
    active && !policy.mx.is_empty()
}

fn tail(profile: &Profile) -> &'static str {
    if profile.servername { SERVERNAME } else { "" }
}

/// The value of a found answer (without "OK "), or `None` for NOTFOUND (see [`applies`]).
///
/// `with_tlsrpt` adds the Postfix >= 3.10 TLSRPT attributes (Postfix's TLSRPT_README). They are
/// left out when `domain` is not a plain ASCII host name, because Postfix rejects the whole
/// answer (and defers the mail) when `policy_domain` fails its `valid_hostname()` check.
#[must_use]
pub fn render(
    domain: &str,
    policy: &Policy,
    profile: &Profile,
    with_tlsrpt: bool,
) -> Option<String> {
    if !applies(policy, profile) {
        return None;
    }
    let mut out = String::from(PLAIN_HEAD);
    out.push_str(policy.mx.as_match_list());
    out.push_str(tail(profile));

    if with_tlsrpt && let Some(domain) = policy_domain(domain) {
        // TLSRPT_README: policy_type must come with the other STS attributes, or Postfix
        // defers.
        out.push_str(" policy_type=sts policy_domain=");
        out.push_str(&domain);
        for p in policy.mx.iter() {
            out.push_str(" mx_host_pattern=");
            out.push_str(&p.policy_form());
        }
        // RFC 8460 §4.5: one policy-string entry per policy line, in file order.
        for (key, value) in policy.lines.iter() {
            if representable(key) && representable(value) {
                out.push_str(" { policy_string = ");
                out.push_str(key);
                out.push_str(": ");
                out.push_str(value);
                out.push_str(" }");
            }
        }
    }
    Some(out)
}

/// What a destination's DANE state means for the answer (RFC 8461 §2, RFC 7672).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaneDecision {
    /// Answer this Postfix level (`dane-only` or `dane`); MTA-STS is not consulted.
    Level(&'static str),
    /// RFC 7505 null MX or NXDOMAIN: the destination takes no mail; not found.
    NotFound,
    /// No DANE here (unsigned zone, no TLSA records): the MTA-STS answer.
    Sts,
}

pub fn dane_decision(verdict: Verdict) -> DaneDecision {
    match verdict {
        Verdict::DaneOnly | Verdict::Dane => DaneDecision::Level(verdict.level().unwrap_or("dane")),
        Verdict::NullMx | Verdict::NxDomain => DaneDecision::NotFound,
        Verdict::Unsigned | Verdict::NoTlsa => DaneDecision::Sts,
    }
}

/// What to send for a lookup, given the transport's size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// The answer value (without "OK ").
    Found(Value),
    NotFound,
    /// Even the plain answer does not fit: the caller answers TEMP and logs an error.
    TooLarge,
}

/// Chooses what to send: with `profile.tlsrpt`, first the full TLSRPT answer; if `fits` rejects
/// it, the plain answer; if that does not fit either, [`Rendered::TooLarge`].
///
/// The plain answer is not rendered: it is [`PLAIN_HEAD`], the text `mx_list` shares (which
/// must be `policy.mx.as_match_list()`, owned by something the reply may keep alive, such as
/// the cached policy) and a constant tail, so a cached policy is answered by copying.
pub fn render_fitting(
    domain: &str,
    policy: &Policy,
    profile: &Profile,
    mx_list: impl FnOnce() -> Arc<dyn SharedText>,
    fits: impl Fn(&Value) -> bool,
) -> Rendered {
    if !applies(policy, profile) {
        return Rendered::NotFound;
    }
    if profile.tlsrpt
        && let Some(full) = render(domain, policy, profile, true).map(Value::Owned)
        && fits(&full)
    {
        return Rendered::Found(full);
    }
    let plain = Value::Shared {
        head: PLAIN_HEAD,
        body: mx_list(),
        tail: tail(profile),
    };
    debug_assert_eq!(plain.parts()[1], policy.mx.as_match_list());
    if fits(&plain) {
        Rendered::Found(plain)
    } else {
        Rendered::TooLarge
    }
}

/// [`render_fitting`] with the mx list copied into the reply: for one-off answers (`query`,
/// tests) that hold no cached policy to share.
pub fn render_fitting_owned(
    domain: &str,
    policy: &Policy,
    profile: &Profile,
    fits: impl Fn(&Value) -> bool,
) -> Rendered {
    render_fitting(
        domain,
        policy,
        profile,
        || Arc::new(policy.mx.as_match_list().to_owned()),
        fits,
    )
}

// TLSRPT_README: policy_domain must be an ASCII host name. MxPattern::parse already implements the
// LDH rules (A-labels only, no address literals), so reuse it and refuse wildcards.
fn policy_domain(domain: &str) -> Option<String> {
    MxPattern::parse(domain)
        .ok()
        .filter(|p| !p.is_wildcard())
        .map(|p| p.policy_form())
}

// TLSRPT_README: `{ name = value }` cannot carry braces, and anything outside printable ASCII could
// break Postfix's attribute parsing (line breaks become spaces, the reply framing, logs).
fn representable(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'{' && b != b'}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{MxList, parse_policy};
    use std::cell::RefCell;

    use crate::policy::tests::RFC_EXAMPLE;

    /// The plain answer for RFC 8461 §3.2's example policy.
    const PLAIN: &str =
        "secure match=mail.example.com:.example.net:backupmx.example.com servername=hostname";

    /// The TLSRPT answer (Postfix >= 3.10) for the same policy.
    const TLSRPT: &str = "secure match=mail.example.com:.example.net:backupmx.example.com servername=hostname policy_type=sts policy_domain=example.com mx_host_pattern=mail.example.com mx_host_pattern=*.example.net mx_host_pattern=backupmx.example.com { policy_string = version: STSv1 } { policy_string = mode: enforce } { policy_string = mx: mail.example.com } { policy_string = mx: *.example.net } { policy_string = mx: backupmx.example.com } { policy_string = max_age: 604800 }";

    fn policy(body: &str) -> Policy {
        match parse_policy(body.as_bytes()) {
            Ok(p) => p,
            Err(e) => panic!("{body:?} rejected: {e}"),
        }
    }

    fn with_mode(mode: &str) -> Policy {
        policy(&RFC_EXAMPLE.replace("mode: enforce", &format!("mode: {mode}")))
    }

    fn profile(strict_testing: bool, servername: bool, tlsrpt: bool) -> Profile {
        Profile {
            strict_testing,
            servername,
            tlsrpt,
            dane: false,
        }
    }

    #[test]
    fn default_profile_adds_servername_only() {
        assert_eq!(Profile::default(), profile(false, true, false));
    }

    #[test]
    fn rfc8461_3_2_example_plain_answer_byte_for_byte() {
        let p = policy(RFC_EXAMPLE);
        assert_eq!(
            render("example.com", &p, &Profile::default(), false).as_deref(),
            Some(PLAIN)
        );
    }

    #[test]
    fn rfc8461_3_2_example_tlsrpt_answer_byte_for_byte() {
        let p = policy(RFC_EXAMPLE);
        assert_eq!(
            render("example.com", &p, &Profile::default(), true).as_deref(),
            Some(TLSRPT)
        );
        // CRLF and extra whitespace in the file do not change the answer.
        let messy = policy(&RFC_EXAMPLE.replace(": ", ":\t ").replace('\n', " \r\n\r\n"));
        assert_eq!(
            render("example.com", &messy, &Profile::default(), true).as_deref(),
            Some(TLSRPT)
        );
    }

    #[test]
    fn rfc8461_5_mode_none_is_notfound() {
        let p = with_mode("none");
        for prof in [
            profile(false, true, false),
            profile(true, true, true),
            profile(true, false, false),
        ] {
            assert_eq!(render("example.com", &p, &prof, false), None);
            assert_eq!(render("example.com", &p, &prof, true), None);
            assert_eq!(
                render_fitting_owned("example.com", &p, &prof, |_: &Value| true),
                Rendered::NotFound
            );
        }
    }

    #[test]
    fn rfc8461_5_mode_testing_is_notfound_unless_strict_testing() {
        let p = with_mode("testing");
        assert_eq!(render("example.com", &p, &Profile::default(), false), None);
        assert_eq!(render("example.com", &p, &Profile::default(), true), None);
        let strict = profile(true, true, false);
        assert_eq!(
            render("example.com", &p, &strict, false).as_deref(),
            Some(PLAIN)
        );
        // The policy_string then says "mode: testing", as in the file.
        assert_eq!(
            render("example.com", &p, &strict, true),
            Some(TLSRPT.replace("mode: enforce", "mode: testing"))
        );
    }

    #[test]
    fn rfc8461_7_1_servername_can_be_turned_off() {
        let p = policy(RFC_EXAMPLE);
        let prof = profile(false, false, false);
        assert_eq!(
            render("example.com", &p, &prof, false).as_deref(),
            Some("secure match=mail.example.com:.example.net:backupmx.example.com")
        );
        assert_eq!(
            render("example.com", &p, &prof, true),
            Some(TLSRPT.replace(" servername=hostname", ""))
        );
    }

    #[test]
    fn rfc8461_4_1_wildcards_become_dot_prefixed_match_patterns() {
        let p = policy(
            "version: STSv1\nmode: enforce\nmx: *.MX.Example.org\nmx: Mail.Example.org\nmax_age: 1\n",
        );
        assert_eq!(
            render("example.org", &p, &profile(false, false, true), true).as_deref(),
            Some(
                "secure match=.mx.example.org:mail.example.org policy_type=sts \
                 policy_domain=example.org mx_host_pattern=*.mx.example.org \
                 mx_host_pattern=mail.example.org { policy_string = version: STSv1 } \
                 { policy_string = mode: enforce } { policy_string = mx: *.MX.Example.org } \
                 { policy_string = mx: Mail.Example.org } { policy_string = max_age: 1 }"
            )
        );
    }

    #[test]
    fn patterns_deduplicated_first_occurrence_kept() {
        let p = policy(
            "version: STSv1\nmode: enforce\nmx: b.example\nmx: *.a.example\nmx: B.EXAMPLE\n\
             mx: c.example\nmx: *.A.example\nmx: b.example\nmax_age: 1\n",
        );
        assert_eq!(
            render("example", &p, &Profile::default(), false).as_deref(),
            Some("secure match=b.example:.a.example:c.example servername=hostname")
        );
        let full = render("example", &p, &Profile::default(), true).unwrap_or_default();
        assert!(full.contains(
            " mx_host_pattern=b.example mx_host_pattern=*.a.example mx_host_pattern=c.example {"
        ));
        // policy_string keeps every line, duplicates included (RFC 8460 §4.5).
        assert_eq!(full.matches("{ policy_string = mx: ").count(), 6);
        assert!(full.contains("{ policy_string = mx: B.EXAMPLE }"));
    }

    #[test]
    fn tlsrpt_lines_postfix_cannot_carry_are_left_out() {
        let p = policy(
            "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 86400\n\
             open: a{b\nclose: a}b\nname: {x}\nutf8: café\nc1: a\u{85}b\nok: plain text = 1, 2\n\
             last: ~!@#$%^&*()_+`-=[]|;'\\\",./<>?\n",
        );
        let full = render("example.com", &p, &Profile::default(), true).unwrap_or_default();
        for gone in ["open", "close", "name", "utf8", "c1"] {
            assert!(
                !full.contains(&format!("policy_string = {gone}:")),
                "{gone} kept: {full}"
            );
        }
        assert!(full.ends_with(
            "{ policy_string = max_age: 86400 } { policy_string = ok: plain text = 1, 2 } \
             { policy_string = last: ~!@#$%^&*()_+`-=[]|;'\\\",./<>? }"
        ));
        assert!(full.is_ascii());
        assert_eq!(full.matches('{').count(), full.matches('}').count());
    }

    #[test]
    fn rfc8460_4_4_policy_domain_must_be_an_a_label_host_name() {
        let p = policy(RFC_EXAMPLE);
        // Upper case is normalized; the domain keeps its A-label spelling.
        assert_eq!(
            render("Example.COM", &p, &Profile::default(), true).as_deref(),
            Some(TLSRPT)
        );
        let idn =
            render("xn--bcher-kva.example", &p, &Profile::default(), true).unwrap_or_default();
        assert!(idn.contains(" policy_domain=xn--bcher-kva.example "));
        // Anything Postfix's valid_hostname() would reject: plain answer, never a broken one.
        for bad in [
            "bücher.example",
            "",
            "example.com.",
            "*.example.com",
            "192.0.2.1",
            "exa mple.com",
            "example.com}",
        ] {
            assert_eq!(
                render(bad, &p, &Profile::default(), true).as_deref(),
                Some(PLAIN),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn never_an_empty_match_list() {
        // A parsed enforce policy always has mx; guard against hand-built ones anyway.
        let mut p = policy(RFC_EXAMPLE);
        p.mx = MxList::default();
        assert_eq!(render("example.com", &p, &Profile::default(), false), None);
        assert_eq!(render("example.com", &p, &Profile::default(), true), None);
        assert_eq!(
            render_fitting_owned(
                "example.com",
                &p,
                &profile(false, true, true),
                |_: &Value| true
            ),
            Rendered::NotFound
        );
    }

    #[test]
    fn render_fitting_prefers_tlsrpt_then_plain_then_too_large() {
        let p = policy(RFC_EXAMPLE);
        let tlsrpt = profile(false, true, true);
        let limit = |n: usize| move |v: &Value| v.len() <= n;
        assert_eq!(
            render_fitting_owned("example.com", &p, &tlsrpt, limit(TLSRPT.len())),
            Rendered::Found(TLSRPT.into())
        );
        assert_eq!(
            render_fitting_owned("example.com", &p, &tlsrpt, limit(TLSRPT.len() - 1)),
            Rendered::Found(PLAIN.into())
        );
        assert_eq!(
            render_fitting_owned("example.com", &p, &tlsrpt, limit(PLAIN.len())),
            Rendered::Found(PLAIN.into())
        );
        assert_eq!(
            render_fitting_owned("example.com", &p, &tlsrpt, limit(PLAIN.len() - 1)),
            Rendered::TooLarge
        );
        // Without the tlsrpt profile the TLSRPT form is never offered.
        let asked = RefCell::new(Vec::new());
        let r = render_fitting_owned("example.com", &p, &Profile::default(), |v: &Value| {
            asked.borrow_mut().push(v.to_string());
            true
        });
        assert_eq!(r, Rendered::Found(PLAIN.into()));
        assert_eq!(asked.into_inner(), [PLAIN]);
        // NotFound wins over size: nothing to send, nothing to measure.
        let testing = with_mode("testing");
        assert_eq!(
            render_fitting_owned("example.com", &testing, &tlsrpt, |_: &Value| false),
            Rendered::NotFound
        );
    }

    #[test]
    fn large_policy_falls_back_to_plain_answer() {
        let mut body = String::from(RFC_EXAMPLE);
        for i in 0..2000 {
            body.push_str(&format!("x-note{i}: padding line\n"));
        }
        let p = policy(&body);
        let socketmap_like = |v: &Value| v.len() + 3 <= 100_000;
        let full = render("example.com", &p, &Profile::default(), true).unwrap_or_default();
        assert!(full.len() > 60_000);
        assert_eq!(
            render_fitting_owned(
                "example.com",
                &p,
                &profile(false, true, true),
                |v: &Value| v.len() <= 4096
            ),
            Rendered::Found(PLAIN.into())
        );
        assert_eq!(
            render_fitting_owned(
                "example.com",
                &p,
                &profile(false, true, true),
                socketmap_like
            ),
            Rendered::Found(full.into())
        );
    }
}
