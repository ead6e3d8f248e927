//! `[fleet]`: the Redis/Valkey server a fleet of daemons shares its policy cache on.
//!
//! Off while `redis` is empty. The password is never part of the configuration: a URL with a
//! password in it is refused, and `password_file` is only a path (the daemon reads the file at
//! start and on reload), so that neither `Debug` output, `check-config` nor `ctl status` can show
//! it. Imports `raw` and `error` from `config/`.

use std::path::PathBuf;
use std::time::Duration;

use super::error::{ConfigError, Ctx};
use super::raw::RawFleet;

/// The longest `key_prefix`: keys stay short whatever the domain.
const MAX_PREFIX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// `redis://HOST:PORT/DB`, `rediss://` (TLS) or `redis+unix:///path`; never a password.
    pub redis: String,
    /// A file holding the password (its first line), read at start and on reload.
    pub password_file: Option<PathBuf>,
    /// Put in front of every key and of the channel name, so several fleets can share a server.
    pub key_prefix: String,
    /// Longest wait for one Redis operation; a lookup that misses the local cache waits at most
    /// this long for the shared entry.
    pub timeout: Duration,
}

impl FleetConfig {
    /// The password: the first line of `password_file`, read now (at start and on every
    /// reload). The error names the file, never its content.
    pub fn password(&self) -> Result<Option<String>, String> {
        let Some(p) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(p)
            .map_err(|e| format!("fleet.password_file: {}: {e}", p.display()))?;
        Ok(Some(text.lines().next().unwrap_or("").to_string()))
    }
}

pub(super) fn validate_fleet(
    ctx: &Ctx<'_>,
    raw: RawFleet,
) -> Result<Option<FleetConfig>, ConfigError> {
    let timeout = ctx.duration(
        "fleet.timeout",
        &raw.timeout,
        Duration::from_millis(1),
        Duration::from_secs(5),
    )?;
    if raw.key_prefix.is_empty()
        || raw.key_prefix.len() > MAX_PREFIX
        || raw
            .key_prefix
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ctx.err(
            "fleet.key_prefix",
            format!("1 to {MAX_PREFIX} characters without spaces or control characters"),
        ));
    }
    if let Some(p) = &raw.password_file
        && p.is_relative()
    {
        return Err(ctx.err(
            "fleet.password_file",
            format!("{}: must be an absolute path", p.display()),
        ));
    }
    let url = raw.redis.trim();
    if url.is_empty() {
        return Ok(None);
    }
    check_url(url).map_err(|m| ctx.err("fleet.redis", m))?;
    Ok(Some(FleetConfig {
        redis: url.to_string(),
        password_file: raw.password_file,
        key_prefix: raw.key_prefix,
        timeout,
    }))
}

/// The schemes the client speaks, and no password in the URL. The message never quotes the
/// part before `@`.
fn check_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(
            "expected redis://HOST:PORT/DB, rediss://HOST:PORT/DB or redis+unix:///PATH".into(),
        );
    };
    match scheme {
        "redis" | "rediss" => {
            let authority = rest.split('/').next().unwrap_or("");
            if let Some((userinfo, host)) = authority.rsplit_once('@') {
                if userinfo.contains(':') {
                    return Err(
                        "the URL must not hold a password: put it in fleet.password_file".into(),
                    );
                }
                if host.is_empty() {
                    return Err("no host in the URL".into());
                }
            } else if authority.is_empty() {
                return Err("no host in the URL".into());
            }
            Ok(())
        }
        "redis+unix" | "unix" => {
            if !rest.starts_with('/') {
                return Err("redis+unix:// needs an absolute socket path".into());
            }
            if rest.contains("pass=") {
                return Err(
                    "the URL must not hold a password: put it in fleet.password_file".into(),
                );
            }
            Ok(())
        }
        other => Err(format!(
            "scheme {other:?}: expected redis, rediss or redis+unix"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(text: &str) -> Result<Option<FleetConfig>, String> {
        let raw: RawFleet = toml::from_str(text).map_err(|e| e.to_string())?;
        validate_fleet(&Ctx { file: "t.toml" }, raw).map_err(|e| e.to_string())
    }

    #[test]
    fn off_by_default_with_the_documented_defaults() {
        assert_eq!(validate(""), Ok(None));
        let c = validate("redis = \"redis://127.0.0.1:6379/0\"")
            .unwrap()
            .unwrap();
        assert_eq!(c.key_prefix, "mta-sts:");
        assert_eq!(c.timeout, Duration::from_millis(50));
        assert_eq!(c.password_file, None);
    }

    #[test]
    fn every_scheme_is_accepted() {
        for url in [
            "redis://cache.example:6379/2",
            "rediss://default@cache.example:6380/0",
            "redis+unix:///run/redis/redis.sock",
        ] {
            assert!(validate(&format!("redis = \"{url}\"")).is_ok(), "{url}");
        }
    }

    #[test]
    fn a_password_in_the_url_is_refused_and_never_quoted() {
        for url in [
            "redis://user:hunter2@cache.example:6379/0",
            "redis://:hunter2@cache.example:6379/0",
            "redis+unix:///run/redis.sock?pass=hunter2",
        ] {
            let e = validate(&format!("redis = \"{url}\"")).unwrap_err();
            assert!(
                e.contains("fleet.redis") && e.contains("password_file"),
                "{e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("redis = \"http://cache.example\"", "fleet.redis"),
            ("redis = \"redis://\"", "fleet.redis"),
            ("timeout = \"10s\"", "fleet.timeout"),
            ("key_prefix = \"\"", "fleet.key_prefix"),
            ("key_prefix = \"a b\"", "fleet.key_prefix"),
            ("password_file = \"pw\"", "fleet.password_file"),
        ] {
            let e = validate(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
