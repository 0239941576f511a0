//! Opening hours of a destination, in Europe/London local time: deliveries
//! to a closed destination wait until it opens.

use crate::hl7v2::datatypes::london_zone;
use jiff::Timestamp;
use jiff::civil::Time;

/// `HH:MM-HH:MM`, start inclusive, end exclusive. An end at or before the
/// start wraps past midnight (`20:00-08:00` is open overnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    open: Time,
    close: Time,
}

impl Hours {
    pub fn parse(text: &str) -> Result<Hours, String> {
        let (open, close) = text
            .split_once('-')
            .ok_or_else(|| format!("`{text}` is not HH:MM-HH:MM"))?;
        let time = |part: &str| -> Result<Time, String> {
            let part = part.trim();
            let (h, m) = part
                .split_once(':')
                .ok_or_else(|| format!("`{part}` is not HH:MM"))?;
            let h: i8 = h.parse().map_err(|_| format!("`{part}` is not HH:MM"))?;
            let m: i8 = m.parse().map_err(|_| format!("`{part}` is not HH:MM"))?;
            if h == 24 && m == 0 {
                return Ok(Time::MAX);
            }
            Time::new(h, m, 0, 0).map_err(|_| format!("`{part}` is not a time of day"))
        };
        let hours = Hours {
            open: time(open)?,
            close: time(close)?,
        };
        if hours.open == Time::MAX {
            return Err(format!("`{text}` opens at 24:00; write 00:00"));
        }
        if hours.open == hours.close {
            return Err(format!(
                "`{text}` opens and closes at the same time; leave `hours` out for always open"
            ));
        }
        Ok(hours)
    }

    fn open_at(&self, t: Time) -> bool {
        if self.open < self.close {
            self.open <= t && t < self.close
        } else {
            t >= self.open || t < self.close
        }
    }

    /// `None` when open at `now_ms`; otherwise when it next opens (ms since
    /// the epoch). Across a clock change the opening is the first instant
    /// the local clock reads the opening time (or later, if that time is
    /// skipped that day).
    pub fn opens_at(&self, now_ms: i64) -> Option<i64> {
        let zone = london_zone()?;
        let now = Timestamp::from_millisecond(now_ms)
            .ok()?
            .to_zoned(zone.clone());
        if self.open_at(now.time()) {
            return None;
        }
        let today = now.date();
        let mut day = today;
        for _ in 0..3 {
            let opening = day
                .to_datetime(self.open)
                .to_zoned(zone.clone())
                .ok()?
                .timestamp()
                .as_millisecond();
            if opening > now_ms {
                return Some(opening);
            }
            day = day.tomorrow().ok()?;
        }
        None
    }
}

impl std::fmt::Display for Hours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hm = |t: Time| {
            if t == Time::MAX {
                "24:00".to_string()
            } else {
                format!("{:02}:{:02}", t.hour(), t.minute())
            }
        };
        write!(f, "{}-{}", hm(self.open), hm(self.close))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn day_hours_in_winter_and_summer() {
        let hours = Hours::parse("08:00-20:00").unwrap();
        // Winter: London is UTC.
        assert_eq!(hours.opens_at(ms("2026-01-15T12:00:00Z")), None);
        assert_eq!(
            hours.opens_at(ms("2026-01-15T21:00:00Z")),
            Some(ms("2026-01-16T08:00:00Z"))
        );
        assert_eq!(
            hours.opens_at(ms("2026-01-15T07:59:59Z")),
            Some(ms("2026-01-15T08:00:00Z"))
        );
        assert_eq!(
            hours.opens_at(ms("2026-01-15T20:00:00Z")),
            Some(ms("2026-01-16T08:00:00Z"))
        );
        // Summer: London is UTC+1, so 07:30Z is 08:30 local (open) and 19:30Z
        // is 20:30 local (closed).
        assert_eq!(hours.opens_at(ms("2026-07-01T07:30:00Z")), None);
        assert_eq!(
            hours.opens_at(ms("2026-07-01T19:30:00Z")),
            Some(ms("2026-07-02T07:00:00Z"))
        );
        // Overnight before the spring change (29 March 2026, 01:00 GMT):
        // it opens at 08:00 BST = 07:00Z.
        assert_eq!(
            hours.opens_at(ms("2026-03-28T22:00:00Z")),
            Some(ms("2026-03-29T07:00:00Z"))
        );
    }

    #[test]
    fn overnight_hours_wrap_past_midnight() {
        let hours = Hours::parse("20:00-08:00").unwrap();
        assert_eq!(hours.opens_at(ms("2026-01-15T23:00:00Z")), None);
        assert_eq!(hours.opens_at(ms("2026-01-15T03:00:00Z")), None);
        assert_eq!(
            hours.opens_at(ms("2026-01-15T12:00:00Z")),
            Some(ms("2026-01-15T20:00:00Z"))
        );
    }

    #[test]
    fn bad_hours_are_refused_with_the_reason() {
        assert!(Hours::parse("8-20").unwrap_err().contains("HH:MM"));
        assert!(
            Hours::parse("08:00-25:00")
                .unwrap_err()
                .contains("time of day")
        );
        assert!(
            Hours::parse("08:00-08:00")
                .unwrap_err()
                .contains("same time")
        );
        assert!(Hours::parse("24:00-08:00").unwrap_err().contains("00:00"));
        assert_eq!(
            Hours::parse("00:00-24:00").unwrap().to_string(),
            "00:00-24:00"
        );
        assert_eq!(
            Hours::parse("8:00-20:30").unwrap().to_string(),
            "08:00-20:30"
        );
    }
}
