//! `check-config` (the effective settings) and `check` (Postfix's configuration against ours):
//! printing and exit statuses; the analysis itself is in `check`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::check::{self, Postfix};
use crate::config::{Config, OnLookupError};

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
        println!(
            "dns: system resolv.conf, timeout {}",
            dur(config.dns.timeout)
        );
    } else {
        let ns: Vec<String> = config
            .dns
            .nameservers
            .iter()
            .map(|a| a.to_string())
            .collect();
        println!(
            "dns: {}, timeout {}",
            ns.join(", "),
            dur(config.dns.timeout)
        );
    }
    println!(
        "https: timeout {}, {} extra CA file(s), port {}, proxy {}",
        dur(config.https.timeout),
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
            p.answer.strict_testing,
            p.answer.servername,
            p.answer.tlsrpt,
            on_lookup_error_name(p.on_lookup_error)
        );
    }
    println!(
        "cache: {}, negative_ttl {}, dns_failure_ttl {}, max_entries {}",
        config.cache.dir.display(),
        dur(config.cache.negative_ttl),
        dur(config.cache.dns_failure_ttl),
        config.cache.max_entries
    );
    println!(
        "refresh: every {}, {} at once",
        dur(config.refresh.interval),
        config.refresh.concurrency
    );
    match &config.control.socket {
        Some(p) => println!("control socket: {}", p.display()),
        None => println!("control socket: disabled"),
    }
    if let Some(m) = config.metrics_listen {
        println!("metrics: inet:{m}");
    }
    if let Some(f) = &config.fleet {
        // The password file's name only, never its content.
        println!(
            "fleet: {}, key_prefix {:?}, timeout {}, password {}",
            f.redis,
            f.key_prefix,
            dur(f.timeout),
            f.password_file
                .as_ref()
                .map_or("none".to_string(), |p| format!("from {}", p.display()))
        );
    }
    if let Err(e) = net_source(config) {
        return fail(EX_CONFIG, e);
    }
    ExitCode::SUCCESS
}

/// A duration as the configuration file spells it: `"1h"`, `"1m 30s"`.
fn dur(d: Duration) -> String {
    format!("\"{}\"", humantime::format_duration(d))
}

/// `on_lookup_error` as the configuration file spells it.
fn on_lookup_error_name(e: OnLookupError) -> &'static str {
    match e {
        OnLookupError::NotFound => "notfound",
        OnLookupError::Temp => "temp",
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_printed_as_the_configuration_file_spells_them() {
        assert_eq!(dur(Duration::from_secs(3600)), "\"1h\"");
        assert_eq!(dur(Duration::from_secs(90)), "\"1m 30s\"");
        assert_eq!(dur(Duration::ZERO), "\"0s\"");
        assert_eq!(on_lookup_error_name(OnLookupError::NotFound), "notfound");
        assert_eq!(on_lookup_error_name(OnLookupError::Temp), "temp");
    }
}
