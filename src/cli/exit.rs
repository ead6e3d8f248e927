//! Exit statuses (sysexits.h) of the commands, and the one way a command reports a failure.
//!
//! A leaf of `cli/`.

use std::process::ExitCode;

use crate::daemon::StartError;

pub use crate::daemon::{EX_CONFIG, EX_SOFTWARE, EX_UNAVAILABLE};

/// sysexits.h: the command was used incorrectly.
pub const EX_USAGE: u8 = 64;

/// sysexits.h: an error occurred while doing I/O (here: writing standard output).
pub const EX_IOERR: u8 = 74;

/// Prints `message` after the program name on stderr and ends with `code`.
pub fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("mta-sts-policyd: {message}");
    ExitCode::from(code)
}

/// Prints a start-up error on stderr and ends with its status.
pub fn fail_start(e: &StartError) -> ExitCode {
    fail(e.exit_code(), e)
}
