//! The clock, behind a trait so that time-dependent logic is testable.
//!
//! Must not: be called from the pure core (the core takes dates as arguments);
//! the calendar arithmetic here ([`civil_date`], [`parse_date`], [`days_between`])
//! is pure and may be.

use crate::model::Date;
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock {
    fn now_unix(&self) -> i64;
    fn today(&self) -> Date {
        civil_date(self.now_unix().div_euclid(86_400))
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (UTC).
pub fn civil_date(days: i64) -> Date {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    Date { year, month, day }
}

/// A calendar date `YYYY-MM-DD` (pure): four-digit year, a month 1–12 and a
/// day that exists in that month (2027-02-30 does not).
pub fn parse_date(s: &str) -> Option<Date> {
    Date::parse(s)
}

/// `FWCTL_TODAY`, when set, must be a date (`fwctl` checks it before running any
/// command and stops with a usage error otherwise).
pub fn check_today_env() -> Result<(), String> {
    match std::env::var("FWCTL_TODAY") {
        Err(std::env::VarError::NotPresent) => Ok(()),
        Ok(s) if parse_date(&s).is_some() => Ok(()),
        Ok(s) => Err(format!("FWCTL_TODAY={s:?} is not a date (YYYY-MM-DD, a day that exists)")),
        Err(std::env::VarError::NotUnicode(s)) => Err(format!("FWCTL_TODAY={s:?} is not a date (YYYY-MM-DD)")),
    }
}

/// `FWCTL_TODAY=YYYY-MM-DD` pins the date (tests, reproducible builds). The
/// command line refuses a bad value up front ([`check_today_env`]); here it
/// falls back to the system date.
pub fn today() -> Date {
    std::env::var("FWCTL_TODAY").ok().and_then(|s| parse_date(&s)).unwrap_or_else(|| SystemClock.today())
}

/// Days from `from` to `to` (negative when `to` is earlier). Pure calendar arithmetic.
pub fn days_between(from: Date, to: Date) -> i64 {
    days_from_civil(to) - days_from_civil(from)
}

/// (year, month, day) → days since 1970-01-01, the inverse of [`civil_date`].
pub fn days_from_civil(d: Date) -> i64 {
    let y = i64::from(d.year) - i64::from(d.month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(d.month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d.day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0).to_string(), "1970-01-01");
        assert_eq!(civil_date(20_414).to_string(), "2025-11-22");
        assert_eq!(civil_date(11_016).to_string(), "2000-02-29");
        for n in [-1, 0, 59, 11_016, 20_414, 36_524, 146_097] {
            assert_eq!(days_from_civil(civil_date(n)), n);
        }
        assert_eq!(days_between(parse_date("2027-06-16").unwrap(), parse_date("2027-06-30").unwrap()), 14);
    }

    #[test]
    fn a_date_that_does_not_exist_is_refused() {
        for bad in ["2027-02-30", "2027-02-29", "2027-13-01", "2027-00-10", "2027-04-31", "2027-4-1", "yesterday", "", "2027-06-30x", "+027-06-30", "2027-06-3\u{661}"] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert_eq!(parse_date("2028-02-29").map(|d| d.to_string()).as_deref(), Some("2028-02-29"));
        assert_eq!(parse_date("2000-02-29").map(|d| d.to_string()).as_deref(), Some("2000-02-29"));
        assert_eq!(parse_date("1900-02-29"), None);
    }
}
