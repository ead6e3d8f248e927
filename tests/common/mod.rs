//! Shared helpers for the integration tests.
//!
//! This module is compiled into several test crates; not every crate uses
//! every helper.
#![allow(dead_code, unused_imports)]

pub mod world;
pub use world::*;
pub mod certs;
pub mod harness;
pub mod hostile;
pub mod rawdns;
pub mod redis_server;
pub mod scripted_https;
pub mod unbound;

/// Raises this process's soft open-files limit towards `want` (to the hard limit; as root, the
/// hard limit too) and returns the soft limit now in force. Tests that hold thousands of
/// sockets call it instead of quietly testing fewer.
pub fn raise_fd_limit(want: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft >= want {
        return soft;
    }
    if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    let target = want.min(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        target
    } else {
        soft
    }
}
