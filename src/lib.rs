//! mta-sts-policyd: MTA-STS (RFC 8461) policy daemon for Postfix `smtp_tls_policy_maps`.
//!
//! The library holds every module so that integration tests, benches and fuzz targets can reach
//! them; `main.rs` only calls [`cli::main`]. The modules are folders (or single files) by layer,
//! lowest first. A lower layer never imports a higher one, and nothing imports in a circle:
//!
//! 1. [`clock`], [`metrics`], [`proto`] (the Postfix wire protocols), [`key`] (lookup key →
//!    policy domain), [`policy`] (RFC 8461 parsers), [`dane`] (RFC 7672 rules), [`service`]
//!    (systemd signals, `sd_notify`, socket activation): the bottom layer;
//! 2. [`answer`]: a policy → the Postfix `smtp_tls_policy_maps` answer;
//! 3. [`config`]: the TOML file → a validated configuration;
//! 4. [`discovery`]: DNS and HTTPS → one policy discovery;
//! 5. [`cache`]: the in-memory policies, the refresh schedule and the journal on disk;
//! 6. [`resolve`]: what a discovery does to the cache, and the refresh loop;
//! 7. [`serve`]: the Postfix, control and metrics listeners;
//! 8. [`daemon`] (start, reload, stop) and [`check`] (Postfix configuration checks);
//! 9. [`cli`]: the command line, which `main.rs` calls.
//!
//! ARCHITECTURE.md at the top of the repository has the map.
// `deny`, not `forbid`: adopting the listening sockets systemd passes (socket activation) needs
// one reviewed `unsafe` block in `src/service.rs`; nowhere else may use `unsafe`.
#![deny(unsafe_code)]

pub mod answer;
pub mod cache;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dane;
pub mod discovery;
pub mod key;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod resolve;
pub mod serve;
pub mod service;
#[cfg(test)]
pub(crate) mod test_log;
