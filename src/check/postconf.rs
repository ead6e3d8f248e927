//! Postfix's configuration as `postconf` prints it: running `postconf` ([`Postfix::read`], the
//! only part of `check` that runs anything), parsing `postconf -x` (main.cf parameters with
//! `$name` expanded), `postconf -M` (master.cf services) and `mail_version`, and the facts the
//! rules read from them (chroots, queue_directory, address families).
//!
//! The parsers are pure, so the rules are tested on `postconf` output kept in
//! `tests/fixtures/postconf/`.
//!
//! The master.cf chroot column `-` means `n` since Postfix 3.0 (`y` before; `master(5)`);
//! Debian's master.cf says `y`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::tables::normalize;

/// What `postconf` said, as plain data, so the analysis is pure and testable from fixtures.
#[derive(Debug, Clone, Default)]
pub struct Postfix {
    /// `mail_version` as (major, minor, patch); a snapshot such as `3.11-20250601` is (3, 11, 0).
    pub version: Option<(u32, u32, u32)>,
    /// `postconf -x`: every parameter with `$name` references expanded.
    pub params: BTreeMap<String, String>,
    /// `postconf -M`: the master.cf services.
    pub master: Vec<MasterEntry>,
}

/// One master.cf service line.
#[derive(Debug, Clone)]
pub struct MasterEntry {
    pub service: String,
    /// `inet`, `unix`, `unix-dgram`, `fifo` or `pass`.
    pub kind: String,
    /// Column 5: `y` → `Some(true)`, `n` → `Some(false)`, `-` (the default) → `None`.
    pub chroot: Option<bool>,
    /// The command and its arguments, continuation lines joined with one space.
    pub command: String,
}

impl Postfix {
    /// Parses the output of `postconf -h mail_version`, `postconf -x` and `postconf -M` (or
    /// `-Mf`). Lines that are not `name = value` are skipped; a line starting with whitespace
    /// continues the previous one. When the first output holds no version, the `mail_version`
    /// parameter is used.
    pub fn parse(version_out: &str, postconf_out: &str, master_out: &str) -> Postfix {
        let params = parse_params(postconf_out);
        let version = parse_version(version_out)
            .or_else(|| params.get("mail_version").and_then(|v| parse_version(v)));
        Postfix {
            version,
            params,
            master: parse_master(master_out),
        }
    }

    /// Runs `postconf -h mail_version`, `postconf -x` and `postconf -M` (with `-c <dir>` when
    /// given); Err when postconf is not installed.
    ///
    /// Also Err when postconf fails (a broken main.cf, a missing config directory: the message
    /// holds its stderr) or prints no parameter at all. Warnings postconf prints on stderr while
    /// succeeding are ignored.
    pub fn read(postconf_bin: &str, config_dir: Option<&Path>) -> Result<Postfix, String> {
        let version = run_postconf(postconf_bin, config_dir, &["-h", "mail_version"])?;
        let params = run_postconf(postconf_bin, config_dir, &["-x"])?;
        let master = run_postconf(postconf_bin, config_dir, &["-M"])?;
        let pf = Postfix::parse(&version, &params, &master);
        if pf.params.is_empty() {
            return Err(format!(
                "{}: printed no parameters",
                shown_command(postconf_bin, config_dir, &["-x"])
            ));
        }
        Ok(pf)
    }

    pub(super) fn param(&self, name: &str) -> &str {
        self.params.get(name).map(|v| v.trim()).unwrap_or("")
    }

    /// main.cf's path, for fix texts.
    pub(super) fn main_cf(&self) -> String {
        match self.param("config_directory") {
            "" => "main.cf".to_string(),
            dir => format!("{}/main.cf", dir.trim_end_matches('/')),
        }
    }

    /// The chroot (and working directory) of Postfix daemons, normalized.
    pub(super) fn queue_directory(&self) -> PathBuf {
        match self.param("queue_directory") {
            "" => PathBuf::from("/var/spool/postfix"),
            dir => normalize(Path::new(dir)),
        }
    }

    /// Which address families `localhost` may resolve to (`inet_protocols`).
    pub(super) fn families(&self) -> (bool, bool) {
        let v = self.param("inet_protocols").to_ascii_lowercase();
        if v.is_empty() || v.contains("all") {
            return (true, true);
        }
        (v.contains("ipv4"), v.contains("ipv6"))
    }

    /// The master.cf default for a chroot column of `-`.
    pub(super) fn default_chroot(&self) -> bool {
        self.version.is_some_and(|v| v < (3, 0, 0))
    }

    /// The smtp(8) delivery services (master.cf lines running `smtp` as a `unix` service) and
    /// whether each is chrooted. With no such line, one unnamed service with the default.
    pub(super) fn smtp_clients(&self) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = self
            .master
            .iter()
            .filter(|e| e.kind == "unix" && e.program() == "smtp")
            .map(|e| {
                (
                    e.service.clone(),
                    e.chroot.unwrap_or_else(|| self.default_chroot()),
                )
            })
            .collect();
        if out.is_empty() {
            out.push(("smtp".to_string(), self.default_chroot()));
        }
        out
    }

    /// Whether proxymap(8), which opens `proxy:` tables, is chrooted.
    pub(super) fn proxymap_chroot(&self) -> bool {
        self.master
            .iter()
            .find(|e| e.service == "proxymap")
            .and_then(|e| e.chroot)
            .unwrap_or_else(|| self.default_chroot())
    }
}

impl MasterEntry {
    /// The program name: the command's first word without a directory.
    pub(super) fn program(&self) -> &str {
        let first = self.command.split_whitespace().next().unwrap_or("");
        first.rsplit('/').next().unwrap_or(first)
    }
}

// ---- parsing postconf output -------------------------------------------------------------------

/// `mail_version` as (major, minor, patch).
fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let word = s.split_whitespace().next()?;
    // "3.11-20250601" (snapshot) or "3.10.0-RC1": the release part is before '-'.
    let release = word.split('-').next()?;
    let mut parts = release.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

fn valid_param_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn parse_params(text: &str) -> BTreeMap<String, String> {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            last = None;
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if let Some(v) = last.as_ref().and_then(|k| params.get_mut(k)) {
                if !v.is_empty() {
                    v.push(' ');
                }
                v.push_str(line.trim());
            }
            continue;
        }
        last = None;
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if !valid_param_name(name) {
            continue;
        }
        params.insert(name.to_string(), value.trim().to_string());
        last = Some(name.to_string());
    }
    params
}

fn parse_master(text: &str) -> Vec<MasterEntry> {
    let mut entries: Vec<MasterEntry> = Vec::new();
    let mut continues = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if continues && let Some(e) = entries.last_mut() {
                e.command.push(' ');
                e.command.push_str(trimmed);
            }
            continue;
        }
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        continues = fields.len() >= 8;
        if !continues {
            continue;
        }
        entries.push(MasterEntry {
            service: fields[0].to_string(),
            kind: fields[1].to_string(),
            chroot: match fields[4] {
                "y" => Some(true),
                "n" => Some(false),
                _ => None,
            },
            command: fields[7..].join(" "),
        });
    }
    entries
}

// ---- running postconf ------------------------------------------------------------------------

fn shown_command(bin: &str, config_dir: Option<&Path>, args: &[&str]) -> String {
    let mut s = bin.to_string();
    if let Some(d) = config_dir {
        s.push_str(&format!(" -c {}", d.display()));
    }
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

fn run_postconf(bin: &str, config_dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let shown = shown_command(bin, config_dir, args);
    let mut cmd = Command::new(bin);
    if let Some(d) = config_dir {
        cmd.arg("-c").arg(d);
    }
    let out = cmd.args(args).stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("{bin}: not found; is Postfix installed?")
        } else {
            format!("cannot run `{shown}`: {e}")
        }
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        return Err(if stderr.is_empty() {
            format!("`{shown}` failed ({})", out.status)
        } else {
            format!("`{shown}` failed ({}): {stderr}", out.status)
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_params_continuations_and_empty_values() {
        let out = "smtp_tls_CAfile =\n\
                   smtp_tls_policy_maps = hash:/etc/postfix/tls_policy,\n\
                   \x20   socketmap:inet:127.0.0.1:8461:postfix\n\
                   \tproxy:tcp:127.0.0.1:8462\n\
                   postconf: warning: /etc/postfix/main.cf: undefined parameter: x = y\n\
                   \x20   stray continuation\n\
                   empty_with_space = \n\
                   queue_directory=/var/spool/postfix\r\n\
                   # a comment = no\n\
                   mail_version = 3.10.5\n";
        let pf = Postfix::parse("", out, "");
        assert_eq!(pf.param("smtp_tls_CAfile"), "");
        assert!(pf.params.contains_key("smtp_tls_CAfile"));
        assert_eq!(
            pf.param("smtp_tls_policy_maps"),
            "hash:/etc/postfix/tls_policy, socketmap:inet:127.0.0.1:8461:postfix proxy:tcp:127.0.0.1:8462"
        );
        assert_eq!(pf.param("empty_with_space"), "");
        assert_eq!(pf.param("queue_directory"), "/var/spool/postfix");
        assert_eq!(pf.params.len(), 5, "{:?}", pf.params);
        // The version falls back to the mail_version parameter.
        assert_eq!(pf.version, Some((3, 10, 5)));
    }

    #[test]
    fn parse_master_folded_lines() {
        let out = "smtp       unix  -       -       y       -       -       smtp\n\
                   relay      unix  -       -       n       -       -       smtp\n\
                   \x20   -o syslog_name=postfix/$service_name\n\
                   \x20   -o smtp_helo_timeout=5\n\
                   broken line\n\
                   \x20   -o not_attached=1\n\
                   tlsmgr     unix  -       -       -       1000?   1       tlsmgr\n\
                   postlog    unix-dgram n  -       n       -       1       postlogd\n";
        let m = parse_master(out);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].chroot, Some(true));
        assert_eq!(m[1].chroot, Some(false));
        assert_eq!(
            m[1].command,
            "smtp -o syslog_name=postfix/$service_name -o smtp_helo_timeout=5"
        );
        assert_eq!(m[2].chroot, None);
        assert_eq!(m[3].kind, "unix-dgram");
        assert_eq!(m[3].program(), "postlogd");
    }

    #[test]
    fn parse_versions() {
        assert_eq!(parse_version("3.7.11\n"), Some((3, 7, 11)));
        assert_eq!(parse_version("3.11-20250601"), Some((3, 11, 0)));
        assert_eq!(parse_version("3.10.0-RC2"), Some((3, 10, 0)));
        assert_eq!(parse_version("2.11"), Some((2, 11, 0)));
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("postconf: fatal"), None);
    }

    #[test]
    fn read_reports_a_missing_postconf() {
        let e = Postfix::read("/nonexistent/postconf", None).unwrap_err();
        assert!(e.contains("not found"), "{e}");
    }

    #[test]
    fn read_reports_a_broken_postfix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("postconf");
        std::fs::write(
            &bin,
            "#!/bin/sh\necho 'postconf: fatal: open /etc/postfix/main.cf: No such file or directory' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = Postfix::read(bin.to_str().unwrap(), Some(Path::new("/etc/x"))).unwrap_err();
        assert!(e.contains("-c /etc/x -h mail_version"), "{e}");
        assert!(e.contains("No such file or directory"), "{e}");
    }

    #[test]
    fn read_runs_the_real_postconf_when_installed() {
        let bin = "/usr/sbin/postconf";
        if !Path::new(bin).exists() {
            return;
        }
        // A config directory of our own: Debian's "No configuration" install (what CI does)
        // has no /etc/postfix/main.cf, and the machine's own settings are not the test's.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.cf"), "").unwrap();
        std::fs::write(
            dir.path().join("master.cf"),
            "smtp      inet  n       -       y       -       -       smtpd\n\
             smtp      unix  -       -       y       -       -       smtp\n",
        )
        .unwrap();
        let pf = Postfix::read(bin, Some(dir.path())).unwrap();
        assert!(pf.version.is_some());
        assert!(pf.params.contains_key("smtp_tls_policy_maps"));
        assert!(pf.master.iter().any(|e| e.program() == "smtp"));
        let e = Postfix::read(bin, Some(Path::new("/nonexistent/postfix"))).unwrap_err();
        assert!(e.contains("failed"), "{e}");
    }
}
