//! The policy cache: what the daemon knows, in memory and on disk.
//!
//! Owns the in-memory map the hit path reads (`memory.rs`, on the hash table of `table.rs`), when
//! each domain is checked next (`schedule.rs`: refresh timing and the earliest-first schedule)
//! and the append-only journal that makes it survive restarts and crashes (`journal/`), and the
//! second level a fleet of daemons shares on Redis/Valkey (`fleet/`). Neither decides anything
//! about RFC 8461: they store what the resolver tells them. `dane.rs` keeps the DANE states
//! (RFC 7672) the same way, in a map of their own keyed by Postfix destination.
//!
//! May import: `policy`, `dane`, `metrics`, `clock`. Never discovery, the resolver or the servers.

pub mod dane;
pub mod fleet;
pub mod journal;
pub mod memory;
pub mod schedule;
mod stamp;
mod table;

pub use dane::{DaneCache, DaneEntry};

/// A cached domain's name, as every structure that indexes the cache holds it (the map the hit
/// path reads, the refresh schedule, the journal's live index). A name of up to 23 bytes (most
/// domains) is stored inline, so comparing the key of a hash bucket reads no other memory: with a
/// million cached domains a separate string would cost the hit path one more cache miss. A
/// longer name is one shared allocation that clones by reference count.
pub type Name = smol_str::SmolStr;

pub use memory::{Applied, Cache, Change, Counts, EntryView, Hit, PolicyEntry, PolicyState, Swept};
pub(crate) use stamp::Stamp;
