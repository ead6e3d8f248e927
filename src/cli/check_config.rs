//! `check-config` (the effective settings) and `check` (Postfix's configuration against ours):
//! printing and exit statuses; the analysis itself is in `check`.

use std::path::Path;
use std::process::ExitCode;

use crate::check::{self, Postfix};
use crate::config::Config;

use super::exit::{EX_CONFIG, EX_UNAVAILABLE, fail};
use super::source::net_source;

pub(super) fn check_config(config: &Config) -> ExitCode {
    match &config.path {
        Some(p) => println!("{}: OK", p.display()),
        None => println!("no configuration file; using the defaults"),
    }
    for s in &config.protocols {
        for a in &s.listeners.listen {
            match &s.map {
                None => println!("{} listener: {a}", s.protocol.name()),
                Some(map) => println!("{} listener: {a} (map {map:?})", s.protocol.name()),
            }
        }
    }
    if config.dns.nameservers.is_empty() {
        println!("dns: system resolv.conf, timeout {:?}", config.dns.timeout);
    } else {
        let ns: Vec<String> = config
            .dns
            .nameservers
            .iter()
            .map(|a| a.to_string())
            .collect();
        println!("dns: {}, timeout {:?}", ns.join(", "), config.dns.timeout);
    }
    println!(
        "https: timeout {:?}, {} extra CA file(s), port {}, proxy {}",
        config.https.timeout,
        config.https.ca_files.len(),
        config.https.port,
        config
            .https
            .proxy
            .as_ref()
            .map(|p| format!("{}:{}", p.host, p.port))
            .unwrap_or_else(|| "none".into())
    );
    for (name, p) in &config.maps {
        println!(
            "map {name:?}: strict_testing={} servername={} tlsrpt={} on_lookup_error={:?}",
            p.answer.strict_testing, p.answer.servername, p.answer.tlsrpt, p.on_lookup_error
        );
    }
    println!(
        "cache: {}, negative_ttl {:?}, dns_failure_ttl {:?}, max_entries {}",
        config.cache.dir.display(),
        config.cache.negative_ttl,
        config.cache.dns_failure_ttl,
        config.cache.max_entries
    );
    println!(
        "refresh: every {:?}, {} at once",
        config.refresh.interval, config.refresh.concurrency
    );
    match &config.control.socket {
        Some(p) => println!("control socket: {}", p.display()),
        None => println!("control socket: disabled"),
    }
    if let Some(m) = config.metrics_listen {
        println!("metrics: inet:{m}");
    }
    if let Err(e) = net_source(config) {
        return fail(EX_CONFIG, e);
    }
    ExitCode::SUCCESS
}

/// `check`: Postfix's configuration against ours. 0 clean, 1 with findings.
pub(super) fn check_postfix(config: &Config, postconf: &str, dir: Option<&Path>) -> ExitCode {
    let pf = match Postfix::read(postconf, dir) {
        Ok(pf) => pf,
        Err(e) => return fail(EX_UNAVAILABLE, e),
    };
    let findings = check::analyze(&pf, config);
    print!("{}", check::render(&findings));
    if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
