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

mod codec;
pub mod socketmap;
pub mod tcp_table;

pub(crate) use codec::truncate_str;
pub use codec::{Codec, FatalFrame, Reply, Request, SharedText, Spec, Value};

/// Every protocol the daemon speaks, in the order listeners, metrics and `check` list them.
/// Registration happens here and nowhere else.
static REGISTRY: [&Spec; 2] = [&socketmap::SPEC, &tcp_table::SPEC];

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

    pub fn found_fits(self, value: &Value) -> bool {
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
