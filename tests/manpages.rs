//! The man pages and shell completion scripts the packages install (`packaging/man/`,
//! `packaging/completions/`): committed files, so that cargo-deb and cargo-generate-rpm find them
//! on disk, checked here against their sources.
//!
//! - mta-sts-policyd(8) is generated from the clap definitions (`mta_sts_policyd::cli::command`,
//!   rendered by clap_mangen) and the hand-written parts in `packaging/man/mta-sts-policyd.8.in`;
//! - the completion scripts are what `mta-sts-policyd completions SHELL` prints (clap_complete);
//! - mta-sts-policyd.toml(5) is written by hand and must document every key of
//!   `config.example.toml`, with the same default, and no key that file lacks;
//! - the `.gz` copies (what the packages install under /usr/share/man) decompress to the pages;
//! - man(1) renders both pages without a warning.
//!
//! After changing the command line or a page source, regenerate with
//! `MTA_STS_POLICYD_REGENERATE=1 cargo test --test manpages` and commit the result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap_mangen::Man;
use mta_sts_policyd::cli::{self, CompletionShell};

const BIN: &str = env!("CARGO_BIN_EXE_mta-sts-policyd");
const NAME: &str = "mta-sts-policyd";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn regenerate() -> bool {
    std::env::var_os("MTA_STS_POLICYD_REGENERATE").is_some_and(|v| v == "1")
}

/// Compares `path` with `want`, or writes it when regenerating.
fn check_or_write(path: &str, want: &[u8]) {
    let file = repo(path);
    if regenerate() {
        std::fs::write(&file, want).unwrap();
        return;
    }
    let have = std::fs::read(&file).unwrap_or_default();
    assert!(
        have == want,
        "{path} is out of date with its source; run \
         `MTA_STS_POLICYD_REGENERATE=1 cargo test --test manpages` and commit the result"
    );
}

/// What the roff crate puts before every rendered piece (the page has it once, at the top).
const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// One piece of roff from clap_mangen, without the preamble.
fn render(f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    f(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    match text.strip_prefix(PREAMBLE) {
        Some(rest) => rest.to_owned(),
        None => text,
    }
}

fn roff_text(roff: &roff::Roff) -> String {
    let text = roff.render();
    match text.strip_prefix(PREAMBLE) {
        Some(rest) => rest.to_owned(),
        None => text,
    }
}

/// A clap_mangen section without its `.SH` heading line: the page nests it under a `.SS`.
fn body(section: String, heading: &str) -> String {
    let head = format!(".SH {heading}\n");
    match section.strip_prefix(&head) {
        Some(rest) => rest.to_owned(),
        None if section.is_empty() => section,
        None => panic!("clap_mangen section does not start with {head:?}: {section:?}"),
    }
}

/// One command of the COMMANDS section: its synopsis, what it does, its options and arguments.
/// Options inherited from a parent (`--config`, ctl's `--json` and `--socket`) and `--help`
/// are documented once, where they are defined.
fn command_section(cmd: &clap::Command, inherited: &[String], out: &mut String) {
    let mut shown = cmd.clone().subcommand_value_name("VERB");
    for id in inherited.iter().map(String::as_str).chain(["help"]) {
        if shown.get_arguments().any(|a| a.get_id() == id) {
            shown = shown.mut_arg(id, |a| a.hide(true));
        }
    }
    let bin = cmd.get_bin_name().unwrap_or(cmd.get_name()).to_owned();
    let man = Man::new(shown.clone());
    let mut roff = roff::Roff::new();
    roff.control("SS", [bin.as_str()]);
    out.push_str(&roff_text(&roff));
    out.push_str(&body(
        render(|w| man.render_synopsis_section(w)),
        "SYNOPSIS",
    ));
    out.push_str(".PP\n");
    out.push_str(&body(
        render(|w| man.render_description_section(w)),
        "DESCRIPTION",
    ));
    // Arguments and options; clap_mangen lists the positional arguments last.
    if shown.get_arguments().any(|a| !a.is_hide_set()) {
        out.push_str(&body(render(|w| man.render_options_section(w)), "OPTIONS"));
    }
    let mut inherited = inherited.to_vec();
    inherited.extend(
        cmd.get_arguments()
            .filter(|a| a.is_global_set())
            .map(|a| a.get_id().to_string()),
    );
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        command_section(sub, &inherited, out);
    }
}

/// mta-sts-policyd(8): the template with the generated parts in place of `@HEAD@` (title, NAME,
/// SYNOPSIS), `@OPTIONS@` (the global options) and `@COMMANDS@`.
fn manual_page() -> String {
    let mut cmd = cli::command()
        .subcommand_value_name("COMMAND")
        .disable_help_subcommand(true);
    cmd.build();
    let man = Man::new(cmd.clone()).section("8");
    // The title line is written here: clap_mangen (through roff) drops an empty date argument,
    // which shifts source and manual one place left. No date and no version: the page would
    // otherwise go out of date at every release.
    let head = format!(
        ".TH {} 8 \"\" {} \"System Manager's Manual\"\n",
        NAME.replace('-', "\\-"),
        NAME.replace('-', "\\-")
    ) + &render(|w| man.render_name_section(w))
        + &render(|w| man.render_synopsis_section(w));
    let options = render(|w| man.render_options_section(w));
    let globals: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.get_id().to_string())
        .collect();
    let mut commands = String::from(".SH COMMANDS\n");
    for sub in cmd.get_subcommands() {
        command_section(sub, &globals, &mut commands);
    }
    let template = std::fs::read_to_string(repo("packaging/man/mta-sts-policyd.8.in")).unwrap();
    let mut page = String::from(
        ".\\\" Generated by tests/manpages.rs from the clap definitions (src/cli/) and\n\
         .\\\" packaging/man/mta-sts-policyd.8.in: edit those, then regenerate.\n",
    );
    page.push_str(PREAMBLE);
    let mut seen = Vec::new();
    for line in template
        .lines()
        .filter(|l| !l.starts_with(".\\\" template:"))
    {
        match line {
            "@HEAD@" => page.push_str(&head),
            "@OPTIONS@" => page.push_str(&options),
            "@COMMANDS@" => page.push_str(&commands),
            _ => {
                page.push_str(line);
                page.push('\n');
                continue;
            }
        }
        seen.push(line);
    }
    assert_eq!(
        seen,
        ["@HEAD@", "@OPTIONS@", "@COMMANDS@"],
        "the template must hold each placeholder once, in this order"
    );
    page
}

fn gzip(data: &[u8]) -> Vec<u8> {
    pipe("gzip", &["-9", "-n", "-c"], data)
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    pipe("gzip", &["-d", "-c"], data)
}

fn pipe(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", out.status);
    out.stdout
}

/// Pages and their compressed copies. The `.gz` files are compared by content (gzip's bytes
/// differ between its versions).
fn check_page(path: &str, page: &[u8]) {
    check_or_write(path, page);
    let gz = format!("{path}.gz");
    if regenerate() {
        std::fs::write(repo(&gz), gzip(page)).unwrap();
        return;
    }
    let have = std::fs::read(repo(&gz)).unwrap_or_default();
    assert!(
        !have.is_empty() && gunzip(&have) == page,
        "{gz} does not decompress to {path}; run \
         `MTA_STS_POLICYD_REGENERATE=1 cargo test --test manpages` and commit the result"
    );
}

#[test]
fn manual_page_matches_the_clap_definitions() {
    let page = manual_page();
    // Every command and every option of the command line is in the page.
    fn walk(cmd: &clap::Command, page: &str) {
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = a.get_long() {
                assert!(
                    page.contains(&format!("\\-\\-{}", long.replace('-', "\\-"))),
                    "--{long}"
                );
            }
        }
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let bin = sub.get_bin_name().unwrap_or(sub.get_name());
            assert!(
                page.contains(&format!(".SS \"{bin}\"")),
                "section for {bin}"
            );
            walk(sub, page);
        }
    }
    let mut cmd = cli::command();
    cmd.build();
    walk(&cmd, &page);
    check_page("packaging/man/mta-sts-policyd.8", page.as_bytes());
}

#[test]
fn toml_page_is_compressed_for_the_packages() {
    let page = std::fs::read(repo("packaging/man/mta-sts-policyd.toml.5")).unwrap();
    check_page("packaging/man/mta-sts-policyd.toml.5", &page);
}

/// `completions SHELL` prints the committed script (what the packages install) for each shell.
#[test]
fn completions_command_prints_the_packaged_scripts() {
    for (shell, arg, path) in [
        (
            CompletionShell::Bash,
            "bash",
            "packaging/completions/mta-sts-policyd.bash",
        ),
        (
            CompletionShell::Zsh,
            "zsh",
            "packaging/completions/_mta-sts-policyd",
        ),
        (
            CompletionShell::Fish,
            "fish",
            "packaging/completions/mta-sts-policyd.fish",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["completions", arg])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "completions {arg}");
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.stdout,
            cli::completion_script(shell),
            "completions {arg}"
        );
        let text = String::from_utf8_lossy(&out.stdout);
        // fish spells a long option without its dashes (`-l config`).
        for word in ["check-config", "refresh", "expiring-within", "config"] {
            assert!(text.contains(word), "{arg} completion lacks {word}");
        }
        check_or_write(path, &out.stdout);
    }
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "an unknown shell is a usage error"
    );
}

/// bash parses the script it is given, and it completes the commands and verbs.
#[test]
fn bash_completion_completes_commands_and_verbs() {
    if Command::new("bash").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI=true but bash is missing"
        );
        return;
    }
    let script = repo("packaging/completions/mta-sts-policyd.bash");
    let probe = |words: &str| -> String {
        // The function the script registers for the command (`complete -p`), called as bash
        // calls it when TAB is pressed after `words`.
        let cmdline = format!(
            "source {}; spec=$(complete -p mta-sts-policyd) || exit 3; \
             f=${{spec##*-F }}; f=${{f%% *}}; \
             COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             \"$f\" mta-sts-policyd \"${{COMP_WORDS[COMP_CWORD]}}\" \
             \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &cmdline])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let top = probe("mta-sts-policyd ''");
    for c in [
        "serve",
        "query",
        "check-config",
        "check",
        "ctl",
        "completions",
    ] {
        assert!(top.lines().any(|l| l == c), "{c} not offered: {top}");
    }
    let verbs = probe("mta-sts-policyd ctl ''");
    for v in [
        "status", "list", "show", "refresh", "evict", "purge", "export", "import",
    ] {
        assert!(
            verbs.lines().any(|l| l == v),
            "ctl {v} not offered: {verbs}"
        );
    }
    let list = probe("mta-sts-policyd ctl list --");
    for o in ["--mode", "--expiring-within", "--json", "--socket"] {
        assert!(
            list.lines().any(|l| l == o),
            "ctl list {o} not offered: {list}"
        );
    }
    let shells = probe("mta-sts-policyd completions ''");
    let shells: Vec<_> = shells.lines().filter(|l| !l.starts_with('-')).collect();
    assert_eq!(shells, ["bash", "zsh", "fish"]);
}

/// A config key as `config.example.toml` shows it: its section (`maps.NAME` for every map
/// profile), and its value text, or None when the key is commented out (unset by default).
fn example_keys() -> BTreeMap<(String, String), Option<String>> {
    let text = std::fs::read_to_string(repo("config.example.toml")).unwrap();
    let mut section = String::new();
    let mut keys = BTreeMap::new();
    for line in text.lines() {
        // A section shown commented out (`#[fleet]`) is still a section of the page.
        let header = line.strip_prefix('#').unwrap_or(line);
        if let Some(name) = header.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = match name.split_once('.') {
                Some(("maps", _)) => "maps.NAME".to_owned(),
                _ => name.to_owned(),
            };
            continue;
        }
        // "#key = value" (no blank after '#') is a key shown unset; "# text" is a comment.
        let (line, set) = match line.strip_prefix('#') {
            Some(rest) => (rest, false),
            None => (line, true),
        };
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            continue;
        }
        let value = set.then(|| value.trim().to_owned());
        let old = keys.insert((section.clone(), key.to_owned()), value);
        assert!(
            old.is_none(),
            "[{section}] {key} twice in config.example.toml"
        );
    }
    keys
}

/// A key as mta-sts-policyd.toml(5) documents it, under `.SS "[section]"`:
///
/// ```text
/// .TP
/// \fBkey\fR (\fItype\fR; default \fBvalue\fR)      or   ...; default \fIunset\fR)
/// what it means (one or more lines)
/// ```
struct Documented {
    kind: String,
    default: String,
    meaning_lines: usize,
}

fn page_keys(page: &str) -> BTreeMap<(String, String), Documented> {
    let mut keys = BTreeMap::new();
    let mut section = None::<String>;
    let mut lines = page.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix(".SS ") {
            section = rest
                .trim_matches('"')
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_owned);
            continue;
        }
        if line.starts_with(".SH ") {
            section = None;
            continue;
        }
        if line != ".TP" {
            continue;
        }
        let Some(section) = &section else { continue };
        let head = lines.next().unwrap_or_default();
        let parsed = (|| {
            let rest = head.strip_prefix("\\fB")?;
            let (key, rest) = rest.split_once("\\fR (\\fI")?;
            let (kind, rest) = rest.split_once("\\fR; default ")?;
            let default = rest.strip_suffix(')')?;
            Some((key.to_owned(), kind.to_owned(), default.to_owned()))
        })();
        let (key, kind, default) =
            parsed.unwrap_or_else(|| panic!("[{section}]: key line not in the form: {head:?}"));
        let mut meaning_lines = 0;
        while lines
            .peek()
            .is_some_and(|l| !l.starts_with(".TP") && !l.starts_with(".S"))
        {
            if !lines.next().unwrap_or_default().trim().is_empty() {
                meaning_lines += 1;
            }
        }
        let old = keys.insert(
            (section.clone(), key),
            Documented {
                kind,
                default,
                meaning_lines,
            },
        );
        assert!(old.is_none(), "a key documented twice in [{section}]");
    }
    keys
}

/// mta-sts-policyd.toml(5) and config.example.toml list the same keys in the same sections, and
/// the page gives each key a type, the example's default and a meaning.
#[test]
fn toml_page_documents_every_key_of_the_example_config() {
    let page = std::fs::read_to_string(repo("packaging/man/mta-sts-policyd.toml.5")).unwrap();
    let example = example_keys();
    let documented = page_keys(&page);
    assert!(example.len() >= 30, "parsed only {} keys", example.len());
    let missing: Vec<_> = example
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    let extra: Vec<_> = documented
        .keys()
        .filter(|k| !example.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys of config.example.toml not in mta-sts-policyd.toml(5): {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "keys in mta-sts-policyd.toml(5) that config.example.toml lacks: {extra:?}"
    );
    for ((section, key), value) in &example {
        let doc = &documented[&(section.clone(), key.clone())];
        let want = match value {
            Some(v) => format!("\\fB{v}\\fR"),
            None => "\\fIunset\\fR".to_owned(),
        };
        assert_eq!(doc.default, want, "[{section}] {key}: default");
        assert!(!doc.kind.trim().is_empty(), "[{section}] {key}: type");
        assert!(doc.meaning_lines > 0, "[{section}] {key}: meaning");
    }
}

/// man(1) formats each page (and each compressed copy the packages install) without a warning.
#[test]
fn man_renders_the_pages_without_warnings() {
    if Command::new("man").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI=true but man is missing (Debian: man-db, groff-base)"
        );
        return;
    }
    for page in [
        "packaging/man/mta-sts-policyd.8",
        "packaging/man/mta-sts-policyd.8.gz",
        "packaging/man/mta-sts-policyd.toml.5",
        "packaging/man/mta-sts-policyd.toml.5.gz",
    ] {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(repo(page))
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .env_remove("MANPAGER")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "man -l {page}: {}: {stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "man --warnings -l {page}:\n{stderr}");
        // Without a terminal man still emboldens by overstriking ("N\bNA\bA..."); drop that.
        let text = String::from_utf8_lossy(&out.stdout).replace("_\u{8}", "");
        let mut plain = String::new();
        for c in text.chars() {
            if c == '\u{8}' {
                plain.pop();
            } else {
                plain.push(c);
            }
        }
        assert!(
            plain.contains("\nNAME\n") && plain.contains("SEE ALSO") && plain.lines().count() > 50,
            "{page}: {plain}"
        );
    }
}
