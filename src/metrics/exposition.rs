//! The Prometheus text exposition format 0.0.4: metric families with their samples, the HELP and
//! TYPE lines, label and HELP escaping, and the integer snapshot keyed like the rendered series.
//!
//! Knows nothing about which series exist; the registry (`metrics/mod.rs`) builds the families.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The `Content-Type` of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Value {
    Count(u64),
    /// Rendered as seconds with six decimals.
    Micros(u64),
}

struct Sample {
    suffix: &'static str,
    /// `{a="b",...}` with escaped values, or empty.
    labels: String,
    value: Value,
}

/// One metric family: one HELP and TYPE line, then its samples in push order.
pub(super) struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

impl Family {
    pub(super) fn new(name: &'static str, help: &'static str, kind: Kind) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// A family of one unlabelled sample.
    pub(super) fn single(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        value: Value,
    ) -> Family {
        let mut f = Family::new(name, help, kind);
        f.push("", String::new(), value);
        f
    }

    /// Adds a sample: `suffix` (`_bucket`, `_sum`, `_count` or empty) follows the family name,
    /// `labels` is `{...}` with values already escaped ([`escape_label`]) or empty.
    pub(super) fn push(&mut self, suffix: &'static str, labels: String, value: Value) {
        self.samples.push(Sample {
            suffix,
            labels,
            value,
        });
    }
}

/// The text exposition of `families`, in order.
pub(super) fn render(families: &[Family]) -> String {
    let mut s = String::with_capacity(8 * 1024);
    for f in families {
        // Writing to a String cannot fail.
        let _ = writeln!(s, "# HELP {} {}", f.name, escape_help(f.help));
        let _ = writeln!(s, "# TYPE {} {}", f.name, f.kind.name());
        for sample in &f.samples {
            let _ = write!(s, "{}{}{} ", f.name, sample.suffix, sample.labels);
            match sample.value {
                Value::Count(v) => {
                    let _ = writeln!(s, "{v}");
                }
                Value::Micros(us) => {
                    let _ = writeln!(s, "{}.{:06}", us / 1_000_000, us % 1_000_000);
                }
            }
        }
    }
    s
}

/// Every sample as `"name{labels}" → value`, keyed as [`render`] writes it. A value in
/// microseconds is keyed with `_seconds` in the family name replaced by `_microseconds`, so that
/// every value stays an exact integer.
pub(super) fn snapshot(families: Vec<Family>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for f in families {
        for s in f.samples {
            match s.value {
                Value::Count(v) => {
                    out.insert(format!("{}{}{}", f.name, s.suffix, s.labels), v);
                }
                Value::Micros(us) => {
                    let base = f.name.strip_suffix("_seconds").unwrap_or(f.name);
                    out.insert(format!("{base}_microseconds{}{}", s.suffix, s.labels), us);
                }
            }
        }
    }
    out
}

/// Escapes a label value per the text format: `\` → `\\`, `"` → `\"`, line feed → `\n`.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Escapes HELP text per the text format: `\` → `\\`, line feed → `\n`.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslash_quote_and_line_feed() {
        assert_eq!(escape_label(r#"x\"y"#), r#"x\\\"y"#);
        assert_eq!(escape_label("a\nb"), r"a\nb");
        assert_eq!(escape_label("plain"), "plain");
    }

    #[test]
    fn help_text_escapes_backslash_and_line_feed_but_not_quotes() {
        let mut f = Family::new("x_total", "a \\ b\nc \"d\"", Kind::Counter);
        f.push("", String::new(), Value::Count(3));
        let text = render(&[f]);
        assert_eq!(
            text,
            "# HELP x_total a \\\\ b\\nc \"d\"\n# TYPE x_total counter\nx_total 3\n"
        );
    }

    #[test]
    fn micros_render_as_seconds_and_snapshot_as_microseconds() {
        let mut f = Family::new("d_seconds", "h", Kind::Histogram);
        f.push("_sum", String::new(), Value::Micros(21_803_251));
        f.push("_count", String::new(), Value::Count(7));
        assert!(render(std::slice::from_ref(&f)).contains("d_seconds_sum 21.803251\n"));
        let snap = snapshot(vec![f]);
        assert_eq!(snap["d_microseconds_sum"], 21_803_251);
        assert_eq!(snap["d_seconds_count"], 7);
        assert_eq!(snap.len(), 2);
    }
}
