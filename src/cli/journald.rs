//! Logging to the systemd journal through its native protocol, so that the fields of a log event
//! (`domain`, `id`, `mode`, `class`, ...) are journal fields: `journalctl -u mta-sts-policyd
//! DOMAIN=example.com` finds every line about one domain.
//!
//! Used only when the process runs under systemd with standard error connected to the journal:
//! `JOURNAL_STREAM` set and naming standard error's device and inode, as systemd.exec(5)
//! documents ("JOURNAL_STREAM"); a service whose stderr was redirected elsewhere keeps text.
//!
//! The protocol (systemd's "Native Journal Protocol"): one datagram per entry to
//! `/run/systemd/journal/socket`, each field `NAME=value\n`, or, for a value with a line feed,
//! `NAME\n`, its length as 64-bit little endian, the value, `\n`. Field names are upper-case
//! letters, digits and `_`, not starting with `_` (those are the journal's trusted fields).
//!
//! Why not the `tracing-journald` crate: it always sends to the fixed socket path, so a test
//! cannot receive its datagrams, and it puts only the message text in `MESSAGE`, where
//! `journalctl` shows no field. Here `MESSAGE` is the same line as the text log (message, then
//! `key=value` pairs), and each field is also its own journal field.

use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// Where journald listens for native-protocol datagrams.
pub(super) const SOCKET: &str = "/run/systemd/journal/socket";
/// Names another socket instead of [`SOCKET`] (a test's, or a container's journal elsewhere).
pub(super) const SOCKET_ENV: &str = "MTA_STS_POLICYD_JOURNAL_SOCKET";
/// `SYSLOG_IDENTIFIER=`: the unit's name for journalctl's `-t`.
const IDENTIFIER: &str = "mta-sts-policyd";

/// Whether standard error is the journal's stream: `JOURNAL_STREAM` is `DEVICE:INODE` of it.
pub(super) fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(io::stderr()) else {
        return false;
    };
    stream_matches(&value.to_string_lossy(), st.st_dev, st.st_ino)
}

fn stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// The socket to send to: [`SOCKET_ENV`] when set, else [`SOCKET`].
pub(super) fn socket_path() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(SOCKET), PathBuf::from)
}

/// A `tracing` layer writing each event as one journal entry. An entry the journal does not take
/// at once (journald restarting or behind, a datagram too large) is written to standard error
/// as text instead, so no line is lost and logging never waits.
pub(super) struct Journald {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Journald {
    /// Fails when nothing listens at `path`: the caller then logs text to standard error.
    pub(super) fn connect(path: &Path) -> io::Result<Journald> {
        let socket = UnixDatagram::unbound()?;
        // An empty datagram is ignored by journald; sending it checks that it listens.
        socket.send_to(&[], path)?;
        // A journal that falls behind must not stall lookups: an entry it has no room for now
        // goes to standard error instead (the journal's stream, read apart).
        socket.set_nonblocking(true)?;
        Ok(Journald {
            socket,
            path: path.to_owned(),
        })
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Journald {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let text = fields.text();
        let datagram = entry(*meta.level(), meta.target(), &text, &fields.pairs);
        if self.socket.send_to(&datagram, &self.path).is_err() {
            let _ = writeln!(io::stderr(), "{} {text}", meta.level());
        }
    }
}

/// syslog(3) priorities: error 3, warning 4, info 6, debug 7.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// One journal entry: `PRIORITY`, `SYSLOG_IDENTIFIER`, `TARGET`, `MESSAGE` and the event's
/// own fields under their journal names.
fn entry(level: Level, target: &str, message: &str, pairs: &[(&'static str, String)]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    put(&mut buf, "PRIORITY", &priority(level).to_string());
    put(&mut buf, "SYSLOG_IDENTIFIER", IDENTIFIER);
    put(&mut buf, "TARGET", target);
    put(&mut buf, "MESSAGE", message);
    for (name, value) in pairs {
        if let Some(name) = field_name(name) {
            put(&mut buf, &name, value);
        }
    }
    buf
}

/// A journal field name for an event field: upper case, `_` for anything else; `None` for a
/// name that would start with `_` (a trusted field) or has nothing left. Names the entry sets
/// itself get an `F_` prefix rather than a second value.
fn field_name(name: &str) -> Option<String> {
    let mut out: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' => c,
            _ => '_',
        })
        .collect();
    if out.is_empty() || out.starts_with('_') {
        return None;
    }
    if out.starts_with(|c: char| c.is_ascii_digit())
        || ["PRIORITY", "SYSLOG_IDENTIFIER", "TARGET", "MESSAGE"].contains(&out.as_str())
    {
        out.insert_str(0, "F_");
    }
    out.truncate(64);
    Some(out)
}

fn put(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

/// An event's message and its other fields, in the order given.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String)>,
}

impl Fields {
    /// The text-log line: the message, then `key=value` (quoted when it has spaces or quotes).
    fn text(&self) -> String {
        let mut s = self.message.clone();
        for (k, v) in &self.pairs {
            if !s.is_empty() {
                s.push(' ');
            }
            if v.is_empty() || v.contains(|c: char| c.is_whitespace() || c == '"' || c == '=') {
                let _ = write!(s, "{k}={v:?}");
            } else {
                let _ = write!(s, "{k}={v}");
            }
        }
        s
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.pairs.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let value = format!("{value:?}");
        if field.name() == "message" {
            self.message = value;
        } else {
            self.pairs.push((field.name(), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_names_device_and_inode() {
        assert!(stream_matches("8:1234", 8, 1234));
        assert!(!stream_matches("8:1235", 8, 1234));
        assert!(!stream_matches("8", 8, 1234));
        assert!(!stream_matches("", 8, 1234));
        assert!(!stream_matches("x:1234", 8, 1234));
    }

    #[test]
    fn field_names_follow_the_journal_rules() {
        assert_eq!(field_name("domain").as_deref(), Some("DOMAIN"));
        assert_eq!(field_name("elapsed_ms").as_deref(), Some("ELAPSED_MS"));
        assert_eq!(field_name("a.b-c").as_deref(), Some("A_B_C"));
        // Trusted fields begin with "_": an event can never forge one.
        assert_eq!(field_name("_pid"), None);
        assert_eq!(field_name(""), None);
        assert_eq!(field_name("priority").as_deref(), Some("F_PRIORITY"));
        assert_eq!(field_name("2nd").as_deref(), Some("F_2ND"));
        assert_eq!(field_name(&"x".repeat(80)).map(|n| n.len()), Some(64));
    }

    #[test]
    fn an_entry_uses_the_binary_form_for_values_with_line_feeds() {
        let e = entry(
            Level::WARN,
            "t",
            "m",
            &[("domain", "example.com".into()), ("policy", "a\nb".into())],
        );
        let mut want = b"PRIORITY=4\nSYSLOG_IDENTIFIER=mta-sts-policyd\nTARGET=t\nMESSAGE=m\n\
                         DOMAIN=example.com\nPOLICY\n"
            .to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert_eq!(e, want);
    }
}
