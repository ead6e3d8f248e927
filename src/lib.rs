//! mta-sts-policyd: MTA-STS (RFC 8461) policy daemon for Postfix `smtp_tls_policy_maps`.
//!
//! The library holds every module so that integration tests, benches and fuzz targets can reach
//! them; `main.rs` only calls [`cli::main`]. Call directions: `server → proto, resolve`;
//! `resolve → cache, discovery, key`; `discovery → source, policy`; `source → dns, fetch`.
// `deny`, not `forbid`: adopting the listening sockets systemd passes (socket activation) needs
// one reviewed `unsafe` block in service.rs; nowhere else may use `unsafe`.
#![deny(unsafe_code)]

pub mod answer;
pub mod cache;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod key;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod resolve;
pub mod serve;
pub mod service;
