//! Latency histograms: HdrHistogram of nanoseconds with 3 significant digits (every recorded
//! value, the max included, is kept within 0.1 %), one per connection, merged at the end.
//!
//! The range grows with the largest value recorded, and so does the memory: about 120 KiB per
//! histogram once it holds 10 ms, 16 KiB while empty (a connection's schedule histogram in an
//! unpaced run).

use std::time::Duration;

use hdrhistogram::Histogram;

const SIGNIFICANT_DIGITS: u8 = 3;

#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Latency {
    pub fn new() -> Latency {
        // `new` auto-resizes: the range grows with the largest value recorded.
        match Histogram::new(SIGNIFICANT_DIGITS) {
            Ok(h) => Latency(h),
            // 3 digits are within hdrhistogram's 0..=5.
            Err(e) => unreachable!("hdrhistogram with {SIGNIFICANT_DIGITS} digits: {e}"),
        }
    }

    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // `record` grows the range; beyond what it can grow to (centuries), clamp.
        if self.0.record(ns).is_err() {
            self.0.saturating_record(ns);
        }
    }

    pub fn merge(&mut self, other: &Latency) {
        // An auto-resizing histogram takes any other; should that ever fail, the counts would
        // be off, so say it.
        if let Err(e) = self.0.add(&other.0) {
            eprintln!("loadgen: merging latency histograms: {e}");
        }
    }

    /// Nanoseconds at quantile `q` (0..=1); 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    pub fn max_ns(&self) -> u64 {
        self.0.max()
    }

    pub fn mean_ns(&self) -> f64 {
        self.0.mean()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_three_digits() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for us in 1..=1000u64 {
            let h = if us % 2 == 0 { &mut a } else { &mut b };
            h.record(Duration::from_micros(us));
        }
        a.merge(&b);
        assert_eq!(a.0.len(), 1000);
        for (q, want) in [(0.5, 500_000.0), (0.99, 990_000.0), (0.999, 999_000.0)] {
            let got = a.quantile_ns(q) as f64;
            assert!((got - want).abs() / want <= 1e-3, "q={q}: {got}");
        }
        let max = a.max_ns() as f64;
        assert!((max - 1e6).abs() / 1e6 <= 1e-3, "{max}");
        assert!((a.mean_ns() - 500_500.0).abs() / 500_500.0 <= 1e-3);
    }

    #[test]
    fn an_empty_histogram_reports_zeros() {
        let h = Latency::new();
        assert_eq!((h.quantile_ns(0.99), h.max_ns(), h.0.len()), (0, 0, 0));
        assert_eq!(h.mean_ns(), 0.0);
    }

    #[test]
    fn hours_and_nanoseconds_fit() {
        let mut h = Latency::new();
        h.record(Duration::from_nanos(1));
        h.record(Duration::from_secs(7200));
        assert_eq!(h.0.len(), 2);
        assert!(h.max_ns() >= 7_200_000_000_000);
    }
}
