//! Progress of the long `ctl` verbs (`refresh --all`, `import`, `export`) on standard error: a
//! bar with counts, rate and time left when standard error is a terminal; otherwise (a log file,
//! a pipe, a cron job) a plain line every [`PLAIN_EVERY`], so that short runs print nothing and
//! long ones show they are alive without filling the log.

use std::fmt;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// The time between two plain progress lines.
pub(super) const PLAIN_EVERY: Duration = Duration::from_secs(2);

pub(super) struct Progress {
    label: &'static str,
    done: u64,
    total: Option<u64>,
    started: Instant,
    out: Output,
}

enum Output {
    Bar(ProgressBar),
    Plain { last: Instant, printed: bool },
}

impl Progress {
    /// A bar when standard error is a terminal, plain lines otherwise.
    pub(super) fn stderr(label: &'static str) -> Progress {
        Progress::new(label, std::io::stderr().is_terminal())
    }

    fn new(label: &'static str, terminal: bool) -> Progress {
        let now = Instant::now();
        let out = if terminal {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix}: [{bar:30}] {pos}/{len} ({rate}, {eta} left)",
            )
            .map(|s| {
                // Whole items per second, as the plain lines say it.
                s.progress_chars("=> ").with_key(
                    "rate",
                    |st: &ProgressState, w: &mut dyn fmt::Write| {
                        let _ = write!(w, "{:.0}/s", st.per_sec());
                    },
                )
            })
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(label);
            Output::Bar(bar)
        } else {
            Output::Plain {
                last: now,
                printed: false,
            }
        };
        Progress {
            label,
            done: 0,
            total: None,
            started: now,
            out,
        }
    }

    pub(super) fn done(&self) -> u64 {
        self.done
    }

    pub(super) fn total(&self) -> Option<u64> {
        self.total
    }

    pub(super) fn set_total(&mut self, total: u64) {
        self.total = Some(total);
        if let Output::Bar(bar) = &self.out {
            bar.set_length(total);
        }
        self.show(Instant::now());
    }

    pub(super) fn set_done(&mut self, done: u64) {
        self.done = done;
        self.show(Instant::now());
    }

    pub(super) fn inc(&mut self) {
        self.done += 1;
        // Once per thousand: an export calls this per line.
        if self.done.is_multiple_of(1000) {
            self.show(Instant::now());
        }
    }

    fn show(&mut self, now: Instant) {
        match &mut self.out {
            Output::Bar(bar) => bar.set_position(self.done),
            Output::Plain { last, printed } => {
                if now.duration_since(*last) >= PLAIN_EVERY {
                    *last = now;
                    *printed = true;
                    let line = plain_line(self.label, self.done, self.total, now - self.started);
                    let _ = writeln!(std::io::stderr(), "{line}");
                }
            }
        }
    }

    /// The work ended: the bar is cleared (the reply follows); plain output that said anything
    /// ends with the final count.
    pub(super) fn finish(&mut self) {
        match &self.out {
            Output::Bar(bar) => bar.finish_and_clear(),
            Output::Plain { printed: true, .. } => {
                let line = plain_line(self.label, self.done, self.total, self.started.elapsed());
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            Output::Plain { .. } => {}
        }
    }

    /// Interrupted: the bar stays as it was, above the message that follows.
    pub(super) fn abandon(&mut self) {
        if let Output::Bar(bar) = &self.out {
            bar.abandon();
        }
    }
}

/// `import: 40000/100000 (12000/s)`; without a total, `export: 40000 (12000/s)`.
pub(super) fn plain_line(label: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        (done as f64 / secs).round() as u64
    } else {
        0
    };
    match total {
        Some(t) => format!("{label}: {done}/{t} ({rate}/s)"),
        None => format!("{label}: {done} ({rate}/s)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_give_counts_and_rate() {
        assert_eq!(
            plain_line(
                "import",
                40_000,
                Some(100_000),
                Duration::from_millis(3_333)
            ),
            "import: 40000/100000 (12001/s)"
        );
        assert_eq!(
            plain_line("export", 7, None, Duration::from_secs(2)),
            "export: 7 (4/s)"
        );
        assert_eq!(
            plain_line("refresh", 0, Some(5), Duration::ZERO),
            "refresh: 0/5 (0/s)"
        );
    }

    /// Off a terminal, nothing is printed before [`PLAIN_EVERY`] has passed: a short run stays
    /// quiet, and a line is due once per interval after that.
    #[test]
    fn plain_output_waits_for_its_interval() {
        let mut p = Progress::new("import", false);
        let Output::Plain { last, .. } = &p.out else {
            panic!("off a terminal the output is plain");
        };
        let start = *last;
        p.done = 10;
        p.show(start + Duration::from_millis(1_999));
        assert!(matches!(p.out, Output::Plain { printed: false, .. }));
        p.show(start + PLAIN_EVERY);
        let Output::Plain { last, printed } = &p.out else {
            unreachable!()
        };
        assert!(*printed);
        assert_eq!(*last, start + PLAIN_EVERY);
        // The next line waits for a whole interval again.
        p.show(start + PLAIN_EVERY + Duration::from_secs(1));
        let Output::Plain { last, .. } = &p.out else {
            unreachable!()
        };
        assert_eq!(*last, start + PLAIN_EVERY);
    }
}
