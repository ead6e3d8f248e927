//! `completions SHELL`: the completion script for bash, zsh or fish, generated from the same clap
//! definitions that parse the arguments, so that it offers exactly the commands and flags that
//! exist. The packages ship the same scripts (`packaging/completions/`, kept equal by
//! `tests/manpages.rs`).
//!
//! A leaf of `cli/`: it imports only `exit`; the clap definitions come in as an argument.

use std::io::Write;
use std::process::ExitCode;

use clap::ValueEnum;
use clap_complete::Shell;

use super::exit::{EX_IOERR, fail};

/// The shells an operator of this daemon has; the packages install a script for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for Shell {
    fn from(s: CompletionShell) -> Shell {
        match s {
            CompletionShell::Bash => Shell::Bash,
            CompletionShell::Zsh => Shell::Zsh,
            CompletionShell::Fish => Shell::Fish,
        }
    }
}

const BIN: &str = "mta-sts-policyd";

/// The completion script of `cmd` (the whole command line) for `shell`.
pub fn script(shell: CompletionShell, mut cmd: clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(Shell::from(shell), &mut cmd, BIN, &mut out);
    if shell == CompletionShell::Bash {
        out = fix_bash_case_labels(&out);
    }
    out
}

/// clap_complete's bash script tracks the command line in a state named after the binary with
/// each '-' made "__" ("mta__sts__policyd__subcmd__ctl"), but spells the case labels that act on
/// that state with each '-' made "__subcmd__", so for a binary name with a hyphen nothing past
/// the first word completes (clap-rs/clap issue 6421). The labels are given the state's spelling;
/// once clap_complete spells them alike this changes nothing. tests/manpages.rs completes
/// `ctl` verbs through the script to check.
fn fix_bash_case_labels(script: &[u8]) -> Vec<u8> {
    let state = format!("{}__subcmd__", BIN.replace('-', "__"));
    let label = format!("{}__subcmd__", BIN.replace('-', "__subcmd__"));
    String::from_utf8_lossy(script)
        .replace(&label, &state)
        .into_bytes()
}

/// `completions SHELL`: the script on standard output.
pub(super) fn print(shell: CompletionShell, cmd: clap::Command) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(&script(shell, cmd))
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EX_IOERR, format!("cannot write the completion script: {e}")),
    }
}
