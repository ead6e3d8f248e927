//! Shared helpers for the integration tests.
//!
//! This module is compiled into several test crates; not every crate uses
//! every helper.
#![allow(dead_code, unused_imports)]

pub mod world;
pub use world::*;
pub mod harness;
pub mod hostile_https;
pub mod rawdns;
