//! What `check` reports: a [`Finding`] (what is wrong, and the setting that fixes it), its
//! [`Severity`], and the terminal text of a list of them ([`render`]).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem: what is wrong and the setting that fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub what: String,
    pub fix: String,
}

impl Finding {
    pub(super) fn error(what: String, fix: String) -> Finding {
        Finding {
            severity: Severity::Error,
            what,
            fix,
        }
    }

    pub(super) fn warning(what: String, fix: String) -> Finding {
        Finding {
            severity: Severity::Warning,
            what,
            fix,
        }
    }
}

/// Renders findings for the terminal; "no problems found" when empty.
///
/// Each finding is `error: …` / `warning: …` followed by an indented `fix: …` line, then a
/// count. The text ends with a newline (print it with `print!`).
pub fn render(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "no problems found\n".to_string();
    }
    let mut out = String::new();
    for f in findings {
        out.push_str(&format!("{}: {}\n  fix: {}\n\n", f.severity, f.what, f.fix));
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    out.push_str(&format!(
        "{errors} error{}, {warnings} warning{}\n",
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_findings_and_counts() {
        let found = vec![
            Finding::error("a".into(), "b".into()),
            Finding::warning("c".into(), "d".into()),
        ];
        assert_eq!(
            render(&found),
            "error: a\n  fix: b\n\nwarning: c\n  fix: d\n\n1 error, 1 warning\n"
        );
    }
}
