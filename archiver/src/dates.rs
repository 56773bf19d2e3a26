//! UTC calendar arithmetic: the day of a timestamp (the archive's day partitions), day and time
//! formatting, and the next `HH:MM` of the daily schedule. No time-zone database: everything is UTC.
//!
//! Invariant: `day_number` and `civil_from_days` are exact inverses over the proleptic Gregorian
//! calendar, for negative days too.

use std::{fmt, str::FromStr};

use scylla::value::{CqlDate, CqlTimestamp};

/// Milliseconds in a UTC day (no leap seconds, as in Unix time).
pub const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of a Unix timestamp in milliseconds.
pub fn day_number(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(MS_PER_DAY)
}

/// The CQL `date` of a Unix timestamp in milliseconds (CQL counts days from 2^31 before 1970).
pub fn cql_date(ts_ms: i64) -> CqlDate {
    let days = day_number(ts_ms) + (1_i64 << 31);
    CqlDate(u32::try_from(days.clamp(0, i64::from(u32::MAX))).unwrap_or(0))
}

/// Days since 1970-01-01 of a CQL `date`.
pub fn days_of(date: CqlDate) -> i64 {
    i64::from(date.0) - (1_i64 << 31)
}

/// A CQL `timestamp` from Unix milliseconds.
pub fn cql_ts(ts_ms: i64) -> CqlTimestamp {
    CqlTimestamp(ts_ms)
}

/// (year, month 1..=12, day 1..=31) of a day number; Howard Hinnant's `civil_from_days`.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD` of a day number.
pub fn format_day(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a Unix timestamp in milliseconds.
pub fn format_ts(ts_ms: i64) -> String {
    let ms_of_day = ts_ms.rem_euclid(MS_PER_DAY);
    let (h, m, s, ms) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{}T{h:02}:{m:02}:{s:02}.{ms:03}Z", format_day(day_number(ts_ms)))
}

/// A wall-clock time of day in UTC, written `HH:MM` or `HH:MM:SS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeOfDay {
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59 (`HH:MM:SS`; 0 for `HH:MM`).
    pub second: u8,
}

impl FromStr for TimeOfDay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("'{s}' is not a UTC time of day HH:MM or HH:MM:SS (00:00 to 23:59:59)");
        let parts: Vec<&str> = s.trim().split(':').collect();
        if !(2..=3).contains(&parts.len()) || parts[1..].iter().any(|p| p.len() != 2) {
            return Err(bad());
        }
        let numbers: Vec<u8> = parts.iter().map(|p| p.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
        let (hour, minute, second) = (numbers[0], numbers[1], numbers.get(2).copied().unwrap_or(0));
        if hour > 23 || minute > 59 || second > 59 {
            return Err(bad());
        }
        Ok(Self { hour, minute, second })
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)?;
        if self.second > 0 {
            write!(f, ":{:02}", self.second)?;
        }
        Ok(())
    }
}

impl TimeOfDay {
    /// The first instant at this time of day strictly after `now_ms` (Unix milliseconds).
    pub fn next_after(&self, now_ms: i64) -> i64 {
        let offset = ((i64::from(self.hour) * 60 + i64::from(self.minute)) * 60 + i64::from(self.second)) * 1000;
        let today = day_number(now_ms) * MS_PER_DAY + offset;
        if today > now_ms {
            today
        } else {
            today + MS_PER_DAY
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_and_format() {
        assert_eq!(format_day(0), "1970-01-01");
        assert_eq!(format_day(-1), "1969-12-31");
        assert_eq!(format_day(19_723), "2024-01-01");
        assert_eq!(format_day(19_782), "2024-02-29", "leap day");
        assert_eq!(day_number(1_700_000_000_000), 19_675);
        assert_eq!(day_number(-1), -1, "a millisecond before the epoch is the day before");
        assert_eq!(days_of(cql_date(1_700_000_000_000)), 19_675);
        assert_eq!(format_ts(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn time_of_day_parses_strictly() {
        assert_eq!("02:05".parse::<TimeOfDay>(), Ok(TimeOfDay { hour: 2, minute: 5, second: 0 }));
        assert_eq!("23:59".parse::<TimeOfDay>().map(|t| t.to_string()), Ok("23:59".into()));
        assert_eq!("23:59:07".parse::<TimeOfDay>().map(|t| t.to_string()), Ok("23:59:07".into()));
        for bad in ["24:00", "12:60", "7", "07:5", "ab:cd", "", "12:00:60", "12:00:5", "12:00:00:00"] {
            assert!(bad.parse::<TimeOfDay>().is_err(), "{bad}");
        }
    }

    #[test]
    fn next_run_is_today_if_still_ahead_else_tomorrow() {
        let at = TimeOfDay { hour: 2, minute: 0, second: 0 };
        let day = 19_675 * MS_PER_DAY;
        assert_eq!(at.next_after(day), day + 2 * 3_600_000);
        assert_eq!(at.next_after(day + 2 * 3_600_000), day + MS_PER_DAY + 2 * 3_600_000, "strictly after");
        assert_eq!(at.next_after(day + 23 * 3_600_000), day + MS_PER_DAY + 2 * 3_600_000);
        let at = TimeOfDay { hour: 2, minute: 0, second: 30 };
        assert_eq!(at.next_after(day + 2 * 3_600_000), day + 2 * 3_600_000 + 30_000);
    }
}
