//! The file as written: serde structs with the documented defaults, and the split of the document
//! into the protocol sections and the rest.
//!
//! Unknown keys are rejected at every level (`deny_unknown_fields`), so that a typo is an error,
//! not a silently ignored setting. A leaf of `config/`: it imports only the protocol registry.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde::de::Visitor;
use serde::{Deserialize, Deserializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::proto::Protocol;

/// The document: one section per registered protocol, and every other section.
pub(super) struct RawDocument {
    pub protocols: Vec<(Protocol, RawProtocol)>,
    pub rest: RawConfig,
}

/// Every section that is not a protocol's. The order of the fields is the order error messages
/// list them in, after the protocols.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub dns: RawDns,
    pub https: RawHttps,
    pub maps: BTreeMap<String, RawMap>,
    pub cache: RawCache,
    pub refresh: RawRefresh,
    pub metrics: RawMetrics,
    pub log: RawLog,
    pub control: RawControl,
    pub daemon: RawDaemon,
    pub limits: RawLimits,
    pub fleet: RawFleet,
}

/// The keys of [`RawConfig`], in field order (serde does not expose them).
const SECTIONS: [&str; 11] = [
    "dns", "https", "maps", "cache", "refresh", "metrics", "log", "control", "daemon", "limits",
    "fleet",
];

/// One protocol's section (`[socketmap]`, `[tcp_table]` ...); None where the key is absent.
#[derive(Default)]
pub(super) struct RawProtocol {
    pub listen: Option<Vec<String>>,
    pub unix_mode: Option<String>,
    /// Only for protocols whose requests name no map.
    pub map: Option<String>,
}

/// The section of a protocol whose requests name the map (socketmap).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamingSection {
    listen: Option<Vec<String>>,
    unix_mode: Option<String>,
}

/// The section of a protocol whose requests name no map (tcp_table): `map` picks the profile.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFixedMapSection {
    listen: Option<Vec<String>>,
    unix_mode: Option<String>,
    map: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDaemon {
    pub user: String,
    pub group: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub level: String,
    pub format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".to_string(),
            format: "text".to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawControl {
    pub socket: Option<String>,
    pub group: String,
    pub mode: String,
}

impl Default for RawControl {
    fn default() -> Self {
        RawControl {
            socket: None,
            group: String::new(),
            mode: "0660".to_string(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCache {
    pub dir: Option<PathBuf>,
    pub negative_ttl: String,
    /// None: one minute, or `negative_ttl` when that is shorter.
    pub dns_failure_ttl: Option<String>,
    pub max_entries: usize,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            dir: None,
            negative_ttl: "1h".to_string(),
            dns_failure_ttl: None,
            max_entries: 1_000_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRefresh {
    pub interval: String,
    pub concurrency: usize,
}

impl Default for RawRefresh {
    fn default() -> Self {
        RawRefresh {
            interval: "24h".to_string(),
            concurrency: 16,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDns {
    pub nameservers: Vec<String>,
    pub timeout: String,
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            nameservers: Vec::new(),
            timeout: "5s".to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHttps {
    pub timeout: String,
    pub ca_files: Vec<PathBuf>,
    pub port: u16,
    pub proxy: String,
    pub no_proxy: Vec<String>,
    pub allow_private_addresses: bool,
}

impl Default for RawHttps {
    fn default() -> Self {
        RawHttps {
            timeout: "10s".to_string(),
            ca_files: Vec::new(),
            port: 443,
            proxy: String::new(),
            no_proxy: Vec::new(),
            allow_private_addresses: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMap {
    pub strict_testing: bool,
    pub servername: bool,
    pub tlsrpt: bool,
    pub on_lookup_error: String,
    pub dane: bool,
}

impl Default for RawMap {
    /// The same values as `maps::DEFAULT_PROFILE` (a test checks that they agree).
    fn default() -> Self {
        RawMap {
            strict_testing: false,
            servername: true,
            tlsrpt: false,
            on_lookup_error: "notfound".to_string(),
            dane: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    pub max_connections: usize,
    pub idle_timeout: String,
    pub request_timeout: String,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            // Postfix runs up to default_process_limit (100) smtp(8) processes per transport, each
            // with its own connection; a busy relay with several transports stays well below this.
            max_connections: 4096,
            idle_timeout: "1h".to_string(),
            request_timeout: "10s".to_string(),
        }
    }
}

/// Every top-level key a file may use: the protocols in registry order, then [`SECTIONS`].
/// `[fleet]`: the shared second-level cache on Redis/Valkey, off while `redis` is empty.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFleet {
    pub redis: String,
    pub password_file: Option<PathBuf>,
    pub key_prefix: String,
    pub timeout: String,
}

impl Default for RawFleet {
    fn default() -> Self {
        RawFleet {
            redis: String::new(),
            password_file: None,
            key_prefix: "mta-sts:".to_string(),
            timeout: "50ms".to_string(),
        }
    }
}

fn all_sections() -> &'static [&'static str] {
    static ALL: OnceLock<&'static [&'static str]> = OnceLock::new();
    ALL.get_or_init(|| {
        let names: Vec<&'static str> = Protocol::all()
            .map(Protocol::name)
            .chain(SECTIONS)
            .collect();
        // Once per process: serde's unknown-field error wants a `'static` list.
        Box::leak(names.into_boxed_slice())
    })
}

/// Parses `text`, takes out one section per registered protocol and deserializes the rest.
///
/// Sections are read in the document's key order, as one derived struct would read them, so that
/// the first problem reported is the same whatever the layout of the structs; every error points
/// at its place in the text.
pub(super) fn read(text: &str) -> Result<RawDocument, toml::de::Error> {
    let root = DeTable::parse(text)?;
    let span = root.span();
    let mut rest = DeTable::new();
    let mut protocols: Vec<(Protocol, RawProtocol)> = Vec::new();
    for (key, value) in root.into_inner() {
        let found = match Protocol::from_name(key.get_ref()) {
            Some(p) => protocol_section(p, value).map(|s| protocols.push((p, s))),
            None if SECTIONS.contains(&key.get_ref().as_ref()) => {
                rest.insert(key, value);
                Ok(())
            }
            None => Err(unknown_section(&key)),
        };
        if let Err(e) = found {
            // A problem in an earlier section comes first.
            deserialize_rest(text, span.clone(), rest)?;
            return Err(with_input(e, text));
        }
    }
    let rest = deserialize_rest(text, span, rest)?;
    // Absent sections take every default.
    let protocols = Protocol::all()
        .map(|p| {
            let i = protocols.iter().position(|(q, _)| *q == p);
            (p, i.map(|i| protocols.swap_remove(i).1).unwrap_or_default())
        })
        .collect::<Vec<_>>();
    Ok(RawDocument { protocols, rest })
}

fn deserialize_rest(
    text: &str,
    span: std::ops::Range<usize>,
    rest: DeTable<'_>,
) -> Result<RawConfig, toml::de::Error> {
    RawConfig::deserialize(toml::de::Deserializer::from(Spanned::new(span, rest)))
        .map_err(|e| with_input(e, text))
}

fn protocol_section(
    p: Protocol,
    value: Spanned<DeValue<'_>>,
) -> Result<RawProtocol, toml::de::Error> {
    if !value.get_ref().is_table() {
        return Err(not_a_table(p, value));
    }
    let de = ValueDeserializer::from(value);
    if p.names_map() {
        let s = RawNamingSection::deserialize(de)?;
        Ok(RawProtocol {
            listen: s.listen,
            unix_mode: s.unix_mode,
            map: None,
        })
    } else {
        let s = RawFixedMapSection::deserialize(de)?;
        Ok(RawProtocol {
            listen: s.listen,
            unix_mode: s.unix_mode,
            map: s.map,
        })
    }
}

/// serde's "unknown field" error for a top-level key, pointing at the key.
fn unknown_section(key: &Spanned<Cow<'_, str>>) -> toml::de::Error {
    struct Unknown;
    impl<'de> Visitor<'de> for Unknown {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a section name")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
            Err(E::unknown_field(v, all_sections()))
        }
    }
    let value = Spanned::new(key.span(), DeValue::String(key.get_ref().clone()));
    // Failing inside the visitor lets the deserializer attach the key's place in the text.
    match ValueDeserializer::from(value).deserialize_str(Unknown) {
        Err(e) => e,
        Ok(()) => serde::de::Error::unknown_field(key.get_ref(), all_sections()),
    }
}

/// serde's "invalid type" error for a protocol section that is not a table, naming the struct
/// the section was read into before the sections became one per registered protocol
/// (`RawSocketmap`, `RawTcpTable`), so that the message stays the same.
fn not_a_table(p: Protocol, value: Spanned<DeValue<'_>>) -> toml::de::Error {
    struct NotATable(String);
    impl<'de> Visitor<'de> for NotATable {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "struct {}", self.0)
        }
    }
    let camel: String = p
        .name()
        .split('_')
        .flat_map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase())
                .into_iter()
                .chain(c)
        })
        .collect();
    match ValueDeserializer::from(value).deserialize_any(NotATable(format!("Raw{camel}"))) {
        Err(e) => e,
        Ok(()) => serde::de::Error::custom(format!("[{}] must be a table", p.name())),
    }
}

fn with_input(mut e: toml::de::Error, text: &str) -> toml::de::Error {
    e.set_input(Some(text));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_list_every_field_of_raw_config() {
        for name in SECTIONS {
            let text = format!("[{name}]\n");
            assert!(read(&text).is_ok(), "{name}");
        }
    }
}
