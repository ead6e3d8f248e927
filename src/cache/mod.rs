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
mod table;

pub use dane::{DaneCache, DaneEntry};
pub use memory::{Applied, Cache, Change, Counts, EntryView, Hit, PolicyEntry, PolicyState, Swept};
