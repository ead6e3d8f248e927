//! `ctl`: the client of the running daemon's control socket, and the printing of its replies.
//! The long verbs (`refresh --all`, `import`, `export`) ask the daemon for progress lines and
//! show them on standard error (`progress.rs`); Ctrl-C stops the client and says what the daemon
//! kept.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use crate::config::Config;
use crate::serve::control;

use super::exit::{EX_CONFIG, EX_UNAVAILABLE, EX_USAGE, fail};
use super::progress::Progress;

/// The exit status after Ctrl-C, as a shell reports a process ended by SIGINT (128 + 2).
const EX_INTERRUPTED: u8 = 130;

/// The verbs of `ctl`, one request each.
#[derive(Subcommand)]
pub enum CtlVerb {
    /// Version, uptime, configuration, listeners, entries by mode.
    Status,
    /// Counters and gauges (the same as /metrics).
    Stats,
    /// Cached domains.
    List {
        /// Only entries of this kind: enforce, testing, none or negative.
        #[arg(long, value_name = "MODE")]
        mode: Option<String>,
        /// Only policies expiring within this time ("1d", "12h").
        #[arg(long, value_name = "DURATION")]
        expiring_within: Option<String>,
    },
    /// One domain: TXT id, policy, times, last error, hits, and the exact answer per map.
    Show {
        /// The policy domain (the part after "@" of an address).
        domain: String,
    },
    /// Run a discovery now and print the result.
    Refresh {
        /// The policy domain to discover again.
        domain: Option<String>,
        /// Every cached policy (bounded by [refresh] concurrency).
        #[arg(long)]
        all: bool,
        /// With [fleet]: this daemon only, not every daemon of the fleet.
        #[arg(long)]
        local: bool,
    },
    /// Remove one domain from the cache and the journal.
    Evict {
        /// The policy domain to forget; the next lookup discovers it again.
        domain: String,
        /// With [fleet]: this daemon only (its next lookup may take the shared entry), not
        /// every daemon of the fleet and the shared entry.
        #[arg(long)]
        local: bool,
    },
    /// Remove every entry.
    Purge {
        /// Confirm: every cached policy is dropped, and mail goes without MTA-STS until they
        /// are fetched again.
        #[arg(long)]
        yes: bool,
        /// With [fleet]: this daemon only, not every daemon of the fleet and the shared cache.
        #[arg(long)]
        local: bool,
    },
    /// Every cached policy as JSON lines (for `import` on another host).
    Export,
    /// Merge policies from JSON lines (a file, or standard input), keeping the freshest fetch.
    Import {
        /// JSON lines as `ctl export` writes them [default: standard input].
        file: Option<PathBuf>,
    },
    /// Re-read the configuration file.
    Reload,
}

/// The control socket `[control] socket` names, when `--socket` is not given.
pub(super) fn socket_of(config: &Config) -> Result<PathBuf, ExitCode> {
    config.control.socket.clone().ok_or_else(|| {
        fail(
            EX_CONFIG,
            "the control socket is disabled ([control] socket = \"\")",
        )
    })
}

/// `ctl VERB`: one request to the running daemon's control socket.
pub(super) async fn ctl(socket: PathBuf, verb: CtlVerb, json: bool) -> ExitCode {
    let mut input = None;
    let (name, req) = match verb {
        CtlVerb::Status => ("status", json!({"verb": "status"})),
        CtlVerb::Stats => ("stats", json!({"verb": "stats"})),
        CtlVerb::List {
            mode,
            expiring_within,
        } => {
            // Checked before connecting, so the answer does not depend on a running daemon; an
            // unusable value of a verb is an error reply (status 1), as the daemon would give.
            if let Some(m) = &mode
                && !control::mode_names().contains(&m.as_str())
            {
                return fail(
                    1,
                    format!("mode {m:?}: expected {}", control::mode_names().join(", ")),
                );
            }
            (
                "list",
                json!({"verb": "list", "mode": mode, "expiring_within": expiring_within}),
            )
        }
        CtlVerb::Show { domain } => ("show", json!({"verb": "show", "domain": domain})),
        CtlVerb::Refresh { domain, all, local } => match (domain, all) {
            (_, true) => (
                "refresh",
                json!({"verb": "refresh", "all": true, "progress": true}),
            ),
            (Some(d), false) => (
                "refresh",
                json!({"verb": "refresh", "domain": d, "local": local}),
            ),
            (None, false) => {
                return fail(EX_USAGE, "ctl refresh DOMAIN, or ctl refresh --all");
            }
        },
        CtlVerb::Evict { domain, local } => (
            "evict",
            json!({"verb": "evict", "domain": domain, "local": local}),
        ),
        CtlVerb::Purge { yes, local } => (
            "purge",
            json!({"verb": "purge", "yes": yes, "local": local}),
        ),
        CtlVerb::Export => ("export", json!({"verb": "export", "progress": true})),
        CtlVerb::Import { file } => {
            let text = match &file {
                Some(f) => std::fs::read_to_string(f),
                None => std::io::read_to_string(std::io::stdin()),
            };
            match text {
                Ok(t) => {
                    input = Some(
                        t.lines()
                            .filter(|l| !l.trim().is_empty())
                            .map(str::to_string)
                            .collect::<Vec<_>>(),
                    );
                }
                Err(e) => {
                    let from = file
                        .as_ref()
                        .map_or_else(|| "standard input".to_string(), |f| f.display().to_string());
                    return fail(EX_USAGE, format!("cannot read the import {from}: {e}"));
                }
            }
            ("import", json!({"verb": "import", "progress": true}))
        }
        CtlVerb::Reload => ("reload", json!({"verb": "reload"})),
    };
    let long = req["progress"].as_bool() == Some(true);
    let mut progress = long.then(|| Progress::stderr(name));
    if let (Some(p), Some(lines)) = (progress.as_mut(), input.as_ref()) {
        p.set_total(lines.len() as u64);
    }
    let seen = |s: control::Seen<'_>| {
        let Some(p) = progress.as_mut() else { return };
        match s {
            control::Seen::Progress(v) => {
                if let Some(t) = v["total"].as_u64() {
                    p.set_total(t);
                }
                if let Some(d) = v["done"].as_u64() {
                    p.set_done(d);
                }
            }
            control::Seen::Line => p.inc(),
        }
    };
    let result = tokio::select! {
        r = control::request_with(&socket, &req, input, seen) => r,
        _ = tokio::signal::ctrl_c() => {
            if let Some(p) = progress.as_mut() {
                p.abandon();
            }
            return fail(EX_INTERRUPTED, interrupted(name, progress.as_ref()));
        }
    };
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    let lines = match result {
        Ok(l) => l,
        // `request` names the path it tried; a user who guessed the wrong one needs the way out.
        Err(e) if e.starts_with("cannot connect") => {
            return fail(
                EX_UNAVAILABLE,
                format!(
                    "{e}\n(is the daemon running? Name its configuration with -c FILE, or its \
                     control socket with --socket PATH)"
                ),
            );
        }
        Err(e) => return fail(EX_UNAVAILABLE, e),
    };
    if json {
        for l in &lines {
            println!("{l}");
        }
    } else {
        print!("{}", control::render(name, &lines));
    }
    let ok = lines
        .last()
        .is_some_and(|l| l["ok"].as_bool() == Some(true));
    if ok
        && name == "import"
        && let Some(n) = lines.last().and_then(all_invalid)
    {
        return fail(1, format!("nothing imported: {n} invalid line(s)"));
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// What the daemon kept of a long verb stopped with Ctrl-C (see the README, Operations).
fn interrupted(verb: &str, progress: Option<&Progress>) -> String {
    let done = progress.map_or(0, Progress::done);
    let of = progress
        .and_then(Progress::total)
        .map_or_else(String::new, |t| format!(" of {t}"));
    match verb {
        "import" => format!(
            "interrupted: the daemon had applied at least {done}{of} lines, in whole batches \
             each journalled before use; the lines after the last applied batch are not \
             applied. Importing the file again is safe: the freshest fetch per domain is kept."
        ),
        "refresh" => format!(
            "interrupted after {done}{of} refreshes: those under way finish, no further one \
             starts; every policy stays cached."
        ),
        "export" => format!("interrupted: the export is incomplete ({done}{of} policies)"),
        _ => "interrupted".to_string(),
    }
}

/// The number of invalid lines of an import reply that imported and kept nothing, to be shown
/// (the daemon lists at most 20 of them). `None` when some line was usable or none was sent.
fn all_invalid(reply: &serde_json::Value) -> Option<String> {
    let invalid = reply["invalid"].as_array().map_or(0, Vec::len);
    let used = reply["imported"].as_u64().unwrap_or(0) + reply["kept"].as_u64().unwrap_or(0);
    match invalid {
        0 => None,
        _ if used > 0 => None,
        // The daemon truncates its list at 20 lines.
        n if n >= 20 => Some(format!("{n} or more")),
        n => Some(n.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_import_with_only_invalid_lines_is_a_failure() {
        let r = json!({"ok": true, "imported": 0, "kept": 0, "invalid": ["a", "b"]});
        assert_eq!(all_invalid(&r).as_deref(), Some("2"));
        let many = json!({"ok": true, "imported": 0, "kept": 0, "invalid": vec!["x"; 20]});
        assert_eq!(all_invalid(&many).as_deref(), Some("20 or more"));
        let some = json!({"ok": true, "imported": 1, "kept": 0, "invalid": ["a"]});
        assert_eq!(all_invalid(&some), None);
        let kept = json!({"ok": true, "imported": 0, "kept": 3, "invalid": ["a"]});
        assert_eq!(all_invalid(&kept), None);
        let empty = json!({"ok": true, "imported": 0, "kept": 0, "invalid": []});
        assert_eq!(all_invalid(&empty), None);
    }
}
