//! [`StoreError`]: a failure of the state directory or the journal in it, worded for operators.
//! A leaf of the journal folder: every other file of it reports failures with this type.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A failure of the state directory or the journal in it, naming the directory.
#[derive(Debug, Clone)]
pub struct StoreError {
    dir: PathBuf,
    what: String,
    cause: Option<String>,
    kind: Option<io::ErrorKind>,
}

impl StoreError {
    pub(super) fn io(dir: &Path, what: impl Into<String>, e: &io::Error) -> StoreError {
        StoreError {
            dir: dir.to_owned(),
            what: what.into(),
            cause: Some(io_message(e)),
            kind: Some(e.kind()),
        }
    }

    pub(super) fn other(dir: &Path, what: impl Into<String>) -> StoreError {
        StoreError {
            dir: dir.to_owned(),
            what: what.into(),
            cause: None,
            kind: None,
        }
    }

    /// The state directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The kind of the underlying I/O error, if there was one.
    pub fn kind(&self) -> Option<io::ErrorKind> {
        self.kind
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state directory {}: {}", self.dir.display(), self.what)?;
        match &self.cause {
            Some(cause) => write!(f, ": {cause}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for StoreError {}

/// strerror text without std's " (os error N)" suffix: operators read these lines.
fn io_message(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}
