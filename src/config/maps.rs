//! The `[maps.NAME]` sections: per map name, how answers are rendered and what a failed lookup
//! answers. A socketmap request names its map (`socketmap_table(5)`: the text after the last ':'
//! in main.cf); other protocols use the map their section names.
//!
//! Imports `raw`, `error` from `config/`, and `answer` for the rendering profile.

use std::collections::BTreeMap;

use crate::answer::Profile;

use super::error::{ConfigError, Ctx};
use super::raw::RawMap;

/// The map profile used for map names without a table of their own.
pub const DEFAULT_MAP: &str = "default";

/// A map's profile: how answers are rendered, and what a failed lookup answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapProfile {
    pub answer: Profile,
    pub on_lookup_error: OnLookupError,
}

/// What to answer when DNS or HTTPS failed and nothing valid is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLookupError {
    /// RFC 8461 §3.3: deliver as if the domain had no policy (Postfix's own TLS level applies).
    NotFound,
    /// Defer the mail instead (fail closed); Postfix retries later.
    Temp,
}

/// `[maps.default]` when the file has none; the same values as `RawMap::default()`.
pub(super) static DEFAULT_PROFILE: MapProfile = MapProfile {
    answer: Profile {
        strict_testing: false,
        servername: true,
        tlsrpt: false,
        dane: false,
    },
    on_lookup_error: OnLookupError::NotFound,
};

/// Validates every `[maps.NAME]` table; the result always contains [`DEFAULT_MAP`].
pub(super) fn validate(
    ctx: &Ctx<'_>,
    raw: BTreeMap<String, RawMap>,
) -> Result<BTreeMap<String, MapProfile>, ConfigError> {
    let mut maps: BTreeMap<String, MapProfile> = BTreeMap::new();
    for (name, m) in raw {
        let on_lookup_error = match m.on_lookup_error.as_str() {
            "notfound" => OnLookupError::NotFound,
            "temp" => OnLookupError::Temp,
            other => {
                return Err(ctx.err(
                    &format!("maps.{name}.on_lookup_error"),
                    format!("{other:?}: expected \"notfound\" or \"temp\""),
                ));
            }
        };
        let profile = MapProfile {
            answer: Profile {
                strict_testing: m.strict_testing,
                servername: m.servername,
                tlsrpt: m.tlsrpt,
                dane: m.dane,
            },
            on_lookup_error,
        };
        maps.insert(name, profile);
    }
    for name in maps.keys() {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b == b':') {
            return Err(ctx.err(
                &format!("maps.{name}"),
                "a map name cannot be empty or contain spaces or ':' (Postfix takes the text after the last ':' as the name)".to_string(),
            ));
        }
    }
    maps.entry(DEFAULT_MAP.to_string())
        .or_insert_with(|| DEFAULT_PROFILE.clone());
    Ok(maps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_map_defaults_are_the_default_profile() {
        let ctx = Ctx { file: "<test>" };
        let maps = validate(&ctx, BTreeMap::from([("x".to_string(), RawMap::default())])).unwrap();
        assert_eq!(maps["x"], DEFAULT_PROFILE);
    }
}
