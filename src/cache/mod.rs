//! The policy cache: what the daemon knows, in memory and on disk.
//!
//! Owns the in-memory map the hit path reads (`memory.rs`) and the append-only journal that makes
//! it survive restarts and crashes (`journal/`). Neither decides anything about RFC 8461: they
//! store what the resolver tells them.
//!
//! May import: `policy`, `metrics`, `clock`. Never discovery, the resolver or the servers.

pub mod journal;
pub mod memory;

pub use memory::{Cache, Counts, EntryView, Hit, PolicyEntry, PolicyState};
