//! `query`: one discovery now (no daemon, no cache), printed with the exact answer each
//! configured map would give, as text or JSON.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use crate::answer;
use crate::cache::PolicyEntry;
use crate::config::{Config, DEFAULT_MAP};
use crate::discovery::{self, Outcome};
use crate::key;
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
    let d = discovery::discover(&*source, &domain, discovery::Known::Nothing).await;
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
    let answers = answers(&config, domain.clone(), resolution);
    for (k, v) in answers.as_object().into_iter().flatten() {
        lines.push(format!("answer {k}: {}", v.as_str().unwrap_or("")));
    }
    report.insert("answers".into(), answers);
    let found = policy.as_ref().is_some_and(|p| {
        answer::render(&domain, p, &config.profile(DEFAULT_MAP).answer, false).is_some()
    });
    print_report(json, &report, &lines, if found { 0 } else { 1 })
}

/// The exact reply bytes per protocol and map (see `postfix::wire_answers`).
fn answers(config: &Config, domain: String, resolution: Resolution) -> serde_json::Value {
    let lookup = Lookup::Resolved { domain, resolution };
    serde_json::to_value(postfix::wire_answers(config, &lookup)).unwrap_or_default()
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
