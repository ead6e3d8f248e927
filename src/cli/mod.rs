//! The command line: arguments, dispatch to the subcommands, printing and exit statuses. The top
//! layer: it may import every other module, and nothing imports it; it holds no protocol or
//! policy logic of its own.
//!
//! One file per command: `serve` (logging, daemon start, signal loop), `query`, `ctl`
//! (the control-socket client), `check_config` (`check-config` and `check`) and `completions`,
//! over the leaves `exit` (sysexits.h statuses), `source` (the network policy source),
//! `journald` (the journal's native protocol for `serve`'s logs) and `progress` (the long `ctl`
//! verbs' bar or plain lines). Exit
//! statuses: 0 success, 1 a finding or a negative answer, 64 usage, 69 unavailable, 70 software,
//! 73 state directory, 74 output error, 77 permission, 78 configuration.
//!
//! [`command`] is the whole clap definition: `completions` and the generated man page
//! (`tests/manpages.rs` writes `packaging/man/mta-sts-policyd.8`) are made from it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{self, Config};
use crate::daemon::StartError;
use crate::service;

mod check_config;
mod completions;
mod ctl;
mod exit;
mod journald;
mod progress;
mod query;
mod serve;
mod source;

pub use completions::CompletionShell;
use ctl::CtlVerb;
use exit::{EX_CONFIG, EX_SOFTWARE, EX_USAGE, fail, fail_start};
use serve::Logging;

#[derive(Parser)]
#[command(
    name = "mta-sts-policyd",
    version,
    about = "MTA-STS (RFC 8461) policy daemon for Postfix smtp_tls_policy_maps"
)]
struct Cli {
    /// Configuration file [default: /etc/mta-sts-policyd/config.toml, and only when that
    /// default is absent do the built-in defaults apply; a named file must exist].
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: answer Postfix on the configured (or socket-activated) listeners.
    Serve,
    /// Run one discovery for DOMAIN now (no daemon, no cache) and show what Postfix would get.
    Query {
        /// A domain, or any key as Postfix would send it ("[mx.example.com]:25", ...).
        domain: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration file and print the effective settings.
    CheckConfig,
    /// Check Postfix's configuration (via postconf) against this daemon's; exit 1 on findings.
    Check {
        /// The postconf command.
        #[arg(long, default_value = "postconf", value_name = "COMMAND")]
        postconf: String,
        /// Postfix's configuration directory (postconf -c).
        #[arg(long, value_name = "DIR")]
        postfix_config: Option<PathBuf>,
    },
    /// Inspect and steer the running daemon's cache through its control socket.
    Ctl {
        #[command(subcommand)]
        verb: CtlVerb,
        /// Print the daemon's JSON replies instead of a table.
        #[arg(long, global = true)]
        json: bool,
        /// The control socket (default: [control] socket from the configuration).
        #[arg(long, global = true, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Print the shell completion script for SHELL (the packages install all three).
    Completions {
        /// The shell: bash, zsh or fish.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

/// The command line as clap defines it: the source of `--help`, the completion scripts and the
/// man page mta-sts-policyd(8).
pub fn command() -> clap::Command {
    Cli::command()
}

/// The completion script for `shell`, as `completions SHELL` prints it.
pub fn completion_script(shell: CompletionShell) -> Vec<u8> {
    completions::script(shell, command())
}

/// The program: parses the arguments, loads the configuration and runs one command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let named = cli.config.is_some();
    let path = cli
        .config
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let load = || {
        let loaded = if named {
            Config::load(&path)
        } else {
            Config::load_or_defaults(&path)
        };
        loaded.map_err(|e| fail(EX_CONFIG, format!("configuration error: {e}")))
    };
    let command = match cli.command {
        // Reads no configuration: completions are generated on a build machine too.
        Command::Completions { shell } => return completions::print(shell, self::command()),
        // `ctl --socket` reads no configuration: it only needs the socket, and may run as a user
        // who cannot read the file.
        Command::Ctl {
            verb,
            json,
            socket: Some(socket),
        } => return run(ctl::ctl(socket, verb, json)),
        other => other,
    };
    let config = match load() {
        Ok(c) => Arc::new(c),
        Err(code) => return code,
    };
    match command {
        Command::Serve => {
            // Before the runtime starts threads: adopting inherited sockets may unset LISTEN_*.
            let activated = match service::take_activated() {
                Ok(a) => a,
                Err(e) => return fail_start(&StartError::Activation(e.to_string())),
            };
            let logging = Logging::init(&config.log);
            run(serve::serve(config, path, activated, logging))
        }
        Command::CheckConfig => check_config::check_config(&config),
        Command::Query { domain, json } => {
            Logging::init(&config.log);
            run(query::query(config, domain, json))
        }
        Command::Check {
            postconf,
            postfix_config,
        } => check_config::check_postfix(&config, &postconf, postfix_config.as_deref()),
        Command::Ctl { verb, json, .. } => match ctl::socket_of(&config) {
            Ok(socket) => run(ctl::ctl(socket, verb, json)),
            Err(code) => code,
        },
        // Returned before the configuration is loaded, above.
        Command::Completions { shell } => completions::print(shell, self::command()),
    }
}

fn run(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => fail(EX_SOFTWARE, format!("cannot start the runtime: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every argument and flag of every command says what it is in `--help`.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id != "help" && id != "version" && a.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {}", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "mta-sts-policyd", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }
}
