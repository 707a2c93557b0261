//! The clock, behind a trait so that time-dependent logic is testable.
//!
//! Must not: be called from the pure core (the core takes dates as arguments).

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

/// `FWCTL_TODAY=YYYY-MM-DD` pins the date (tests, reproducible builds); an
/// unparseable value is reported and the system date used.
pub fn today() -> Date {
    if let Ok(s) = std::env::var("FWCTL_TODAY") {
        let parts: Vec<&str> = s.split('-').collect();
        if let [y, m, d] = parts[..] {
            if let (Ok(year), Ok(month), Ok(day)) = (y.parse::<u16>(), m.parse::<u8>(), d.parse::<u8>()) {
                if (1..=12).contains(&month) && (1..=31).contains(&day) {
                    return Date { year, month, day };
                }
            }
        }
        eprintln!("warning: FWCTL_TODAY={s:?} is not a date (YYYY-MM-DD); using the system date");
    }
    SystemClock.today()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0).to_string(), "1970-01-01");
        assert_eq!(civil_date(20_414).to_string(), "2025-11-22");
        assert_eq!(civil_date(11_016).to_string(), "2000-02-29");
    }
}
