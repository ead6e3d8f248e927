//! `query`: one discovery now (no daemon, no cache), printed with the exact answer each
//! configured map would give, as text or JSON.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use crate::answer;
use crate::cache::{DaneEntry, PolicyEntry};
use crate::config::{Config, DEFAULT_MAP};
use crate::dane::{Destination, Verdict};
use crate::discovery::DnssecDns;
use crate::discovery::{self, Outcome};
use crate::key;
use crate::resolve::DaneLookup;
use crate::resolve::{Lookup, Resolution};
use crate::serve::postfix;

use super::exit::{EX_CONFIG, fail};
use super::source::net_source;

/// `query`: one discovery, printed with the exact answer each configured map would give.
/// Exit status 0 when the default map would answer with a policy, 1 otherwise.
pub(super) async fn query(config: Arc<Config>, key: String, json: bool) -> ExitCode {
    let mut report = serde_json::Map::new();
    report.insert("key".into(), key.clone().into());
    let domain = match key::policy_domain(key.as_bytes()) {
        Ok(d) => d,
        Err(skip) => {
            let reason = format!("key is not looked up: {skip}");
            report.insert("domain".into(), serde_json::Value::Null);
            report.insert("result".into(), "skipped".into());
            report.insert("reason".into(), reason.clone().into());
            report.insert(
                "answers".into(),
                answers(&config, String::new(), Resolution::NoPolicy),
            );
            return print_report(json, &report, &[reason], 1);
        }
    };
    report.insert("domain".into(), domain.clone().into());
    let source = match net_source(&config) {
        Ok(s) => s,
        Err(e) => return fail(EX_CONFIG, e),
    };
    // With a map that answers from DANE, its state is learnt too, at the same time.
    let dane_dns = if config.maps.values().any(|m| m.answer.dane) {
        match DnssecDns::new(&config.dns) {
            Ok(d) => Some(d),
            Err(e) => return fail(EX_CONFIG, e),
        }
    } else {
        None
    };
    let dest = Destination::from_key(key.as_bytes()).ok();
    let (d, dane) = tokio::join!(
        discovery::discover(&*source, &domain, discovery::Known::Nothing),
        async {
            match (&dane_dns, &dest) {
                (Some(dns), Some(dest)) => Some(discovery::discover_dane(dns, dest).await),
                _ => None,
            }
        }
    );
    let mut lines = vec![format!("domain: {domain}")];
    lines.push(format!(
        "TXT _mta-sts.{domain}: {}",
        d.txt.as_deref().unwrap_or("(none usable)")
    ));
    report.insert(
        "txt".into(),
        d.txt
            .clone()
            .map(Into::into)
            .unwrap_or(serde_json::Value::Null),
    );
    report.insert("elapsed_ms".into(), (d.elapsed.as_millis() as u64).into());
    let mut policy = None;
    // What the daemon would answer with when this discovery ran cold: a failure is TEMP in maps
    // with `on_lookup_error = "temp"`, with the same reason the daemon gives.
    let mut failed: Option<String> = None;
    let (result, reason): (&str, Option<String>) = match &d.outcome {
        Outcome::Fetched { id, policy: p } => {
            report.insert("id".into(), id.clone().into());
            report.insert("mode".into(), p.mode.as_str().into());
            report.insert("max_age".into(), p.max_age.into());
            report.insert(
                "mx".into(),
                p.mx.iter()
                    .map(|m| m.policy_form())
                    .collect::<Vec<_>>()
                    .into(),
            );
            report.insert("policy".into(), p.to_text().into());
            lines.push(format!("policy (id {id}):"));
            lines.extend(p.to_text().lines().map(|l| format!("  {l}")));
            if p.max_age_clamped {
                lines.push("note: max_age above 31557600 clamped to one year".into());
            }
            policy = Some(p.clone());
            ("policy", None)
        }
        Outcome::Unchanged { .. } => ("policy", None),
        Outcome::NoPolicy(n) => ("no-policy", Some(n.to_string())),
        Outcome::DnsTemp(e) => {
            report.insert("class".into(), e.label().into());
            failed = Some(e.to_string());
            (
                "dns-error",
                Some(format!("TXT lookup failed [{}]: {e}", e.label())),
            )
        }
        Outcome::FetchFailed { id, failure } => {
            report.insert("class".into(), failure.label().into());
            failed = Some(failure.to_string());
            (
                "fetch-failed",
                Some(format!(
                    "TXT id {id}; {failure} [{}]",
                    failure.report_class()
                )),
            )
        }
    };
    report.insert("result".into(), result.into());
    if let Some(r) = &reason {
        report.insert("reason".into(), r.clone().into());
        lines.push(format!("rejected: {r}"));
    }
    let entry = policy.clone().map(|p| {
        let id = match &d.outcome {
            Outcome::Fetched { id, .. } => id.clone(),
            _ => String::new(),
        };
        Arc::new(PolicyEntry::new(id, p, SystemTime::now()))
    });
    let resolution = match (entry, failed) {
        (Some(e), _) => Resolution::Policy(e),
        (None, Some(reason)) => Resolution::Failed(reason.into()),
        (None, None) => Resolution::NoPolicy,
    };
    let dane_lookup = dane.map(|dd| match dd.outcome {
        Ok(state) => DaneLookup::State(Arc::new(DaneEntry::new(state, SystemTime::now()))),
        Err(failure) => DaneLookup::Failed(failure.to_string().into()),
    });
    if let (Some(l), Some(dest)) = (&dane_lookup, &dest) {
        dane_report(l, dest, &mut report, &mut lines);
    }
    let lookup = Lookup::Resolved {
        domain: domain.clone(),
        resolution,
    };
    let answers = serde_json::to_value(postfix::wire_answers(
        &config,
        &lookup,
        dane_lookup.as_ref(),
    ))
    .unwrap_or_default();
    for (k, v) in answers.as_object().into_iter().flatten() {
        lines.push(format!("answer {k}: {}", v.as_str().unwrap_or("")));
    }
    report.insert("answers".into(), answers);
    let found = policy.as_ref().is_some_and(|p| {
        answer::render(&domain, p, &config.profile(DEFAULT_MAP).answer, false).is_some()
    });
    print_report(json, &report, &lines, if found { 0 } else { 1 })
}

/// The DANE state as `query` prints it: the verdict and what it means for a `dane = true` map,
/// then each server with its TLSA records and which answers were authenticated.
fn dane_report(
    l: &DaneLookup,
    dest: &Destination,
    report: &mut serde_json::Map<String, serde_json::Value>,
    lines: &mut Vec<String>,
) {
    let key = dest.key();
    match l {
        DaneLookup::State(e) => {
            let s = &e.state;
            let meaning = match s.verdict.level() {
                Some(level) => format!("maps with dane = true answer {level}"),
                None if matches!(s.verdict, Verdict::NullMx | Verdict::NxDomain) => {
                    "maps with dane = true answer not found (no mail)".into()
                }
                None => "maps with dane = true give the MTA-STS answer".into(),
            };
            lines.push(format!(
                "DANE {key}: {} (MX {}authenticated, TTL {}s): {meaning}",
                s.verdict,
                if s.mx_authenticated { "" } else { "not " },
                s.ttl.as_secs()
            ));
            for h in &s.hosts {
                lines.push(format!(
                    "  {}: addresses {}, TLSA {}",
                    h.name,
                    if h.secure {
                        "authenticated"
                    } else if h.addressable {
                        "not authenticated"
                    } else {
                        "none"
                    },
                    if h.tlsa.is_empty() {
                        "none".to_string()
                    } else {
                        h.tlsa
                            .iter()
                            .map(|t| format!("[{t}{}]", if t.usable() { "" } else { " unusable" }))
                            .collect::<Vec<_>>()
                            .join(" ")
                    }
                ));
            }
            report.insert(
                "dane".into(),
                serde_json::json!({"destination": key, "state": s, "meaning": meaning}),
            );
        }
        DaneLookup::Failed(why) => {
            lines.push(format!(
                "DANE {key}: unknown ({why}): maps with dane = true answer TEMP (Postfix defers)"
            ));
            report.insert(
                "dane".into(),
                serde_json::json!({"destination": key, "failed": why.as_ref()}),
            );
        }
        DaneLookup::Skipped(_) => {}
    }
}

/// The exact reply bytes per protocol and map (see `postfix::wire_answers`).
fn answers(config: &Config, domain: String, resolution: Resolution) -> serde_json::Value {
    let lookup = Lookup::Resolved { domain, resolution };
    serde_json::to_value(postfix::wire_answers(config, &lookup, None)).unwrap_or_default()
}

fn print_report(
    json: bool,
    report: &serde_json::Map<String, serde_json::Value>,
    lines: &[String],
    code: u8,
) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("mta-sts-policyd: {e}"),
        }
    } else {
        for l in lines {
            println!("{l}");
        }
    }
    ExitCode::from(code)
}
