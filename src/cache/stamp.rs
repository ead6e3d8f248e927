//! A wall-clock time in 8 bytes, for the per-domain times the cache's indexes hold (a domain's
//! next check, the end of a remembered "no policy"): `SystemTime` takes 16, and these times sit
//! in every bucket of the map the hit path reads and in every entry of the refresh schedule, so
//! with 100,000 cached policies the difference is about 2 MB of resident memory.
//!
//! Nanoseconds since the Unix epoch: exact for every time from 1970 to 2554, so a time stored and
//! read back compares equal to the original (the schedule relies on that). Earlier times read as
//! the epoch and later ones as the end of the range: both sides of a comparison saturate alike.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(u64);

impl Stamp {
    pub fn of(t: SystemTime) -> Stamp {
        Stamp(match t.duration_since(UNIX_EPOCH) {
            Ok(d) => u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Err(_) => 0,
        })
    }

    pub fn time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.0)
    }
}

impl From<SystemTime> for Stamp {
    fn from(t: SystemTime) -> Stamp {
        Stamp::of(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exactly_and_keeps_order() {
        let now = SystemTime::now();
        for t in [
            UNIX_EPOCH,
            now,
            now + Duration::from_nanos(1),
            now + Duration::from_secs(400 * 365 * 86_400),
        ] {
            assert_eq!(Stamp::of(t).time(), t);
        }
        assert!(Stamp::of(now) < Stamp::of(now + Duration::from_nanos(1)));
    }

    #[test]
    fn out_of_range_times_saturate_without_panicking() {
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(Stamp::of(before), Stamp::of(UNIX_EPOCH));
        let far = UNIX_EPOCH + Duration::from_secs(1 << 40);
        assert_eq!(Stamp::of(far), Stamp(u64::MAX));
        assert!(Stamp::of(far) > Stamp::of(SystemTime::now()));
        let _ = Stamp::of(far).time();
    }
}
