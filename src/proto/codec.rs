//! What every wire protocol shares: the decoded [`Request`], the [`Reply`] and its found
//! [`Value`], the per-connection [`Codec`] trait and the [`Spec`] a protocol registers with.
//! Imports nothing from the crate.

use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// What a protocol module tells the rest of the daemon about itself.
pub struct Spec {
    /// The config section, the `protocol` metric label and the name in logs and `check`.
    pub name: &'static str,
    /// Listen addresses when the config section is absent (Postfix-style `inet:`/`unix:`).
    pub default_listen: &'static [&'static str],
    /// Whether requests name the map (socketmap); when they do not (tcp_table), the listener's
    /// configured `map` picks the profile.
    pub names_map: bool,
    /// Whether a found value fits the protocol's reply size limit once encoded.
    pub found_fits: fn(&Value) -> bool,
    /// A fresh codec for one connection.
    pub new_codec: fn() -> Box<dyn Codec>,
}

/// One decoded request, the same for every protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A lookup of `key` (raw bytes, as Postfix sent them after the protocol's own decoding).
    /// `map` is the map name where the protocol carries one.
    Lookup { map: Option<String>, key: Bytes },
    /// A well-framed request that is not a lookup; answered with [`Reply::Perm`].
    Invalid(&'static str),
}

/// A framing error after which the connection cannot continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatalFrame {
    /// For the log.
    pub message: String,
    /// Sent before closing, so that Postfix's log shows why; None where nothing can be framed.
    pub reply: Option<Reply>,
}

/// A protocol's per-connection state: request framing and reply encoding.
pub trait Codec: Send {
    /// The next complete request in `buf` (consumed from it), `None` until one is complete.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, FatalFrame>;
    /// Appends the encoded `reply` to `out`.
    fn encode(&self, reply: &Reply, out: &mut BytesMut);
}

/// Text that lives in something shared, such as a cached policy, so that a reply can carry it
/// to the encoder without a copy or an allocation of its own.
pub trait SharedText: Send + Sync + fmt::Debug {
    fn text(&self) -> &str;
}

impl SharedText for String {
    fn text(&self) -> &str {
        self
    }
}

/// The value of a found answer (after `OK ` / `200 `).
#[derive(Clone)]
pub enum Value {
    /// Rendered for this reply.
    Owned(String),
    /// `head` + the shared text + `tail`: what a cached policy answers, built from strings
    /// that already exist, so the lookup path renders nothing.
    Shared {
        head: &'static str,
        body: Arc<dyn SharedText>,
        tail: &'static str,
    },
}

impl Value {
    /// The pieces, in order; their concatenation is the value.
    pub fn parts(&self) -> [&str; 3] {
        match self {
            Value::Owned(s) => [s, "", ""],
            Value::Shared { head, body, tail } => [head, body.text(), tail],
        }
    }

    pub fn len(&self) -> usize {
        self.parts().iter().map(|p| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Owned(s)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Owned(s.to_owned())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.parts().iter().try_for_each(|p| f.write_str(p))
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        let (a, b) = (self.parts(), other.parts());
        self.len() == other.len()
            && a.iter()
                .flat_map(|p| p.bytes())
                .eq(b.iter().flat_map(|p| p.bytes()))
    }
}

impl Eq for Value {}

/// The answer to one lookup, before it is put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A policy. Must be non-empty: Postfix treats an empty result as a configuration error and
    /// defers mail (`socketmap_table(5)`, `tcp_table(5)`), so the encoders send NOTFOUND instead.
    Found(Value),
    /// No policy; Postfix goes on to the next table, or its own default level.
    NotFound,
    /// Internal fault; Postfix defers the mail.
    Temp(String),
    /// Protocol misuse (`socketmap_table(5)` PERM). tcp_table has no permanent code and sends
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
