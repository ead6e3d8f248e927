//! Postfix lookup-table wire protocols, without I/O.
//!
//! Owns the codecs the daemon speaks with Postfix's smtp(8) — [`socketmap`]
//! (`socketmap_table(5)`) and [`tcp_table`] (`tcp_table(5)`) — behind one [`Codec`] trait and
//! one registry of [`Protocol`]s, plus the protocol-neutral [`Reply`] every codec encodes. A
//! codec is built once per connection: parser state must never be shared between connections.
//!
//! Adding a protocol: a new file here that implements [`Codec`] and exports a [`Spec`], and one
//! line in [`REGISTRY`]. The listener sections of the config, the servers, the metrics labels
//! and `check` all go through the registry.
//!
//! Imports nothing from the rest of the crate (a leaf layer).

use std::fmt;
use std::hash::{Hash, Hasher};

use bytes::{Bytes, BytesMut};

pub mod socketmap;
pub mod tcp_table;

/// Every protocol the daemon speaks, in the order listeners, metrics and `check` list them.
/// Registration happens here and nowhere else.
static REGISTRY: [&Spec; 2] = [&socketmap::SPEC, &tcp_table::SPEC];

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
    pub found_fits: fn(&str) -> bool,
    /// A fresh codec for one connection.
    pub new_codec: fn() -> Box<dyn Codec>,
}

/// A registered protocol: a cheap, copyable handle on its [`Spec`].
#[derive(Clone, Copy)]
pub struct Protocol {
    spec: &'static Spec,
    index: usize,
}

impl Protocol {
    /// Every registered protocol.
    pub fn all() -> impl ExactSizeIterator<Item = Protocol> + Clone {
        REGISTRY
            .iter()
            .enumerate()
            .map(|(index, spec)| Protocol { spec, index })
    }

    /// The protocol registered under `name`.
    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::all().find(|p| p.name() == name)
    }

    /// How many protocols are registered (sizes per-protocol tables such as metrics).
    pub const COUNT: usize = REGISTRY.len();

    pub fn name(self) -> &'static str {
        self.spec.name
    }

    /// The position in the registry, `0..COUNT`: an index for per-protocol arrays.
    pub fn index(self) -> usize {
        self.index
    }

    pub fn spec(self) -> &'static Spec {
        self.spec
    }

    pub fn names_map(self) -> bool {
        self.spec.names_map
    }

    pub fn found_fits(self, value: &str) -> bool {
        (self.spec.found_fits)(value)
    }

    pub fn codec(self) -> Box<dyn Codec> {
        (self.spec.new_codec)()
    }
}

impl PartialEq for Protocol {
    fn eq(&self, other: &Protocol) -> bool {
        self.index == other.index
    }
}

impl Eq for Protocol {}

impl Hash for Protocol {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.index.hash(state);
    }
}

impl PartialOrd for Protocol {
    fn partial_cmp(&self, other: &Protocol) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Protocol {
    fn cmp(&self, other: &Protocol) -> std::cmp::Ordering {
        self.index.cmp(&other.index)
    }
}

impl fmt::Debug for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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

/// The answer to one lookup, before it is put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A policy. Must be non-empty: Postfix treats an empty result as a configuration error and
    /// defers mail (`socketmap_table(5)`, `tcp_table(5)`), so the encoders send NOTFOUND instead.
    Found(String),
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
