//! Postfix lookup-table wire protocols, without I/O.
//!
//! Owns the two codecs the daemon speaks with Postfix's smtp(8): [`socketmap`]
//! (`socketmap_table(5)`, spec C) and [`tcp_table`] (`tcp_table(5)`, spec D), plus the protocol-
//! neutral [`Reply`] both of them encode. Each codec is built once per connection: parser state
//! must never be shared between connections.

pub mod socketmap;
pub mod tcp_table;

/// The answer to one lookup, before it is put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A policy (E4/E6). Must be non-empty: Postfix treats an empty result as a configuration
    /// error and defers mail (C6, D4), so the encoders send NOTFOUND instead.
    Found(String),
    /// No policy; Postfix goes on to the next table (E11).
    NotFound,
    /// Internal fault (E12); Postfix defers the mail.
    Temp(String),
    /// Protocol misuse or unknown map name (C6, C12.3). tcp_table has no permanent code and sends
    /// it as `400` like [`Reply::Temp`].
    Perm(String),
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a char boundary, so that a
/// truncated reason stays valid UTF-8 in Postfix's logs.
pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_truncate_str_keeps_char_boundaries() {
        assert_eq!(truncate_str("abc", 3), "abc");
        assert_eq!(truncate_str("abc", 2), "ab");
        assert_eq!(truncate_str("aü", 2), "a");
        assert_eq!(truncate_str("aü", 3), "aü");
        assert_eq!(truncate_str("ü", 0), "");
    }
}
