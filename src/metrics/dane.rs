//! The DANE series (RFC 7672): answers by Postfix TLS level, DANE discoveries by outcome and
//! cached DANE states by verdict. Labels are plain strings here: the registry stays a leaf that
//! knows nothing of `crate::dane`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::exposition::{Family, Kind, Value};

/// `outcome` values of `mta_sts_dane_discoveries_total`: the verdicts, then `failed`.
pub const DANE_OUTCOMES: [&str; 7] = [
    "dane-only",
    "dane",
    "unsigned",
    "no-tlsa",
    "null-mx",
    "nxdomain",
    "failed",
];

/// `level` values of `mta_sts_answers_by_level_total`: the Postfix TLS level of a found answer.
pub const LEVELS: [&str; 3] = ["secure", "dane-only", "dane"];

#[derive(Debug)]
pub struct DaneMetrics {
    discoveries: [AtomicU64; DANE_OUTCOMES.len()],
    levels: [AtomicU64; LEVELS.len()],
}

impl Default for DaneMetrics {
    fn default() -> Self {
        DaneMetrics {
            discoveries: std::array::from_fn(|_| AtomicU64::new(0)),
            levels: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl DaneMetrics {
    /// Counts one DANE discovery by its outcome label (one of [`DANE_OUTCOMES`]; anything else
    /// counts as `failed`).
    pub fn discovery(&self, outcome: &str) {
        let i = DANE_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(DANE_OUTCOMES.len() - 1);
        self.discoveries[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one found `secure` (MTA-STS) answer: the hit path's call, one relaxed add.
    pub fn secure(&self) {
        self.levels[0].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one found answer by its Postfix level (one of [`LEVELS`]).
    pub fn level(&self, level: &str) {
        if let Some(i) = LEVELS.iter().position(|l| *l == level) {
            self.levels[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn families(&self, entries: Option<&[u64; 6]>, out: &mut Vec<Family>) {
        let load = |a: &AtomicU64| Value::Count(a.load(Ordering::Relaxed));
        let mut levels = Family::new(
            "mta_sts_answers_by_level_total",
            "Found answers by the Postfix TLS level they carry: secure (MTA-STS), dane-only or dane (DANE first, RFC 8461 §2).",
            Kind::Counter,
        );
        for (i, l) in LEVELS.iter().enumerate() {
            levels.push("", format!("{{level=\"{l}\"}}"), load(&self.levels[i]));
        }
        out.push(levels);
        let mut disc = Family::new(
            "mta_sts_dane_discoveries_total",
            "DANE discoveries (MX, addresses, TLSA with the resolver's AD bit), by outcome.",
            Kind::Counter,
        );
        for (i, o) in DANE_OUTCOMES.iter().enumerate() {
            disc.push(
                "",
                format!("{{outcome=\"{o}\"}}"),
                load(&self.discoveries[i]),
            );
        }
        out.push(disc);
        if let Some(entries) = entries {
            let mut fam = Family::new(
                "mta_sts_dane_entries",
                "Cached unexpired DANE states, by verdict.",
                Kind::Gauge,
            );
            for (i, v) in entries.iter().enumerate() {
                fam.push(
                    "",
                    format!("{{verdict=\"{}\"}}", DANE_OUTCOMES[i]),
                    Value::Count(*v),
                );
            }
            out.push(fam);
        }
    }
}
