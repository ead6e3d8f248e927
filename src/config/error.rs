//! Configuration errors, and the value checks every section shares (durations, file modes).
//!
//! A leaf of `config/`: every section's validation builds its errors here, so that each one names
//! the file and the key the same way.

use std::fmt;
use std::time::Duration;

/// A configuration problem, naming the file and (when known) the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}: {}: {}", self.file, k, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The shortest timeout any section accepts: below it, no DNS answer or TLS handshake completes.
pub(super) const MIN_TIMEOUT: Duration = Duration::from_millis(100);

/// The file being validated: what each section's validation needs to name a problem.
pub(super) struct Ctx<'a> {
    pub file: &'a str,
}

impl Ctx<'_> {
    pub fn err(&self, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            key: Some(key.to_string()),
            message,
        }
    }

    /// An octal file mode such as "0660" (or "0o660").
    pub fn mode(&self, key: &str, s: &str) -> Result<u32, ConfigError> {
        u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                self.err(
                    key,
                    format!("{s:?} is not an octal file mode such as \"0660\""),
                )
            })
    }

    /// A humantime duration ("5s", "1h") within `min..=max`.
    pub fn duration(
        &self,
        key: &str,
        s: &str,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = humantime::parse_duration(s)
            .map_err(|e| self.err(key, format!("{s:?} is not a duration such as \"5s\": {e}")))?;
        if d < min || d > max {
            return Err(self.err(
                key,
                format!(
                    "{s:?} is out of range ({} to {})",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            ));
        }
        Ok(d)
    }
}
