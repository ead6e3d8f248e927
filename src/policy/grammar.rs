//! Lexical rules that the `_mta-sts` TXT record (RFC 8461 §3.1) and the policy file (§3.2) share,
//! and the quoting of untrusted text in their error messages.

/// SP and HTAB: the ABNF core rule `WSP` (RFC 5234 Appendix B.1).
pub(super) const WSP: [char; 2] = [' ', '\t'];

/// Quotes untrusted text for an error message: escaped (no control characters reach the logs)
/// and cut short (a 64 KiB line must not become a 64 KiB log line).
pub(super) fn shown(s: &str) -> String {
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
pub(super) fn is_ext_name(name: &str) -> bool {
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
