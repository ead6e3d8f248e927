//! `mta-sts-policyd check`: reads Postfix's configuration through `postconf` and reports what
//! would defer mail or leave the daemon unused, each problem with its fix.
//!
//! * `postconf`: running `postconf` and parsing its output and master.cf ([`Postfix`]). It is
//!   the only part that runs anything; the rest is pure, so every rule is tested on `postconf`
//!   output kept in `tests/fixtures/postconf/`.
//! * `tables`: the tables of `smtp_tls_policy_maps` that speak a protocol of this daemon, their
//!   endpoints, and whether an endpoint reaches a listener (addresses, chroot paths).
//! * `rules`: one function per check.
//! * `findings`: [`Finding`] and its terminal text, [`render`].
//!
//! May import `config` (the daemon's listeners and map profiles) and `proto` (the protocol
//! registry: a protocol added there is looked for in `smtp_tls_policy_maps` too). Inside the
//! folder, `findings` and `tables` import nothing of `check`, `postconf` imports `tables`, and
//! `rules` imports those three.

mod findings;
mod postconf;
mod rules;
mod tables;

#[cfg(test)]
mod tests;

pub use findings::{Finding, Severity, render};
pub use postconf::{MasterEntry, Postfix};

use crate::config::Config;

/// Pure analysis of Postfix's configuration against the daemon's.
///
/// Checks, in this order: `smtp_tls_policy_maps` reaches a listener of this daemon with the
/// right protocol, seen from smtp(8)'s chroot; the SMTP client has trust anchors; the Postfix
/// version accepts the answers of the maps in use (`servername` ≥ 3.4, `tlsrpt` ≥ 3.10, exact MX
/// matching ≥ 3.10.5); DANE is not silently overridden, and maps that answer from DANE have a
/// Postfix that can use it.
pub fn analyze(pf: &Postfix, cfg: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let used = rules::check_policy_maps(pf, cfg, &mut findings);
    rules::check_trust_anchors(pf, &mut findings);
    rules::check_versions(pf, cfg, &used, &mut findings);
    rules::check_dane(pf, cfg, &used, &mut findings);
    findings
}
