//! FHIR dates and times as ranges of instants, for indexing and date search.
//!
//! A FHIR `date`/`dateTime` has a precision (`2020`, `2020-03`, `2020-03-29`,
//! `2020-03-29T01:30`, …) and so stands for a range: the whole of that year,
//! month, day, minute or second. Search compares ranges (FHIR R4 §3.1.1.4.2),
//! so both the indexed values and the search values are turned into half-open
//! ranges `[start, end)` of milliseconds since the Unix epoch.
//!
//! Values without an offset are local time in Europe/London, the gateway's home
//! (FHIR lets a server assume its own zone). Across the spring gap a local time
//! that does not exist moves forward; in the autumn overlap the earlier
//! (summer time) instant is taken, as jiff's `compatible` disambiguation does.

use jiff::civil::DateTime;
use jiff::tz::{Offset, TimeZone};
use jiff::{Timestamp, ToSpan};
use std::sync::OnceLock;

/// The time zone of values that carry no offset.
pub fn home_zone() -> &'static TimeZone {
    static ZONE: OnceLock<TimeZone> = OnceLock::new();
    ZONE.get_or_init(|| TimeZone::get("Europe/London").unwrap_or(TimeZone::UTC))
}

/// A half-open range of instants, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: i64,
    pub end: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precision {
    Year,
    Month,
    Day,
    Minute,
    Second,
    Millisecond,
}

/// Parses a FHIR `date`, `dateTime` or `instant` into the range it stands for.
/// Returns `None` for anything that is not one (including impossible dates).
pub fn parse_range(text: &str) -> Option<Range> {
    let (civil, precision, offset) = parse_parts(text)?;
    let end = match precision {
        Precision::Year => civil.checked_add(1.year()),
        Precision::Month => civil.checked_add(1.month()),
        Precision::Day => civil.checked_add(1.day()),
        Precision::Minute => civil.checked_add(1.minute()),
        Precision::Second => civil.checked_add(1.second()),
        Precision::Millisecond => civil.checked_add(1.millisecond()),
    }
    .ok()?;
    Some(Range {
        start: to_millis(civil, offset)?,
        end: to_millis(end, offset)?,
    })
}

fn to_millis(civil: DateTime, offset: Option<Offset>) -> Option<i64> {
    let ts = match offset {
        Some(offset) => offset.to_timestamp(civil).ok()?,
        None => civil.to_zoned(home_zone().clone()).ok()?.timestamp(),
    };
    Some(ts.as_millisecond())
}

fn parse_parts(text: &str) -> Option<(DateTime, Precision, Option<Offset>)> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    let year = i16::try_from(num(0..4)?).ok()?;
    if b.len() == 4 {
        return Some((
            jiff::civil::date(year, 1, 1).at(0, 0, 0, 0),
            Precision::Year,
            None,
        ));
    }
    if b.get(4) != Some(&b'-') {
        return None;
    }
    let month = i8::try_from(num(5..7)?).ok()?;
    if b.len() == 7 {
        let date = jiff::civil::Date::new(year, month, 1).ok()?;
        return Some((date.at(0, 0, 0, 0), Precision::Month, None));
    }
    if b.get(7) != Some(&b'-') {
        return None;
    }
    let day = i8::try_from(num(8..10)?).ok()?;
    let date = jiff::civil::Date::new(year, month, day).ok()?;
    if b.len() == 10 {
        return Some((date.at(0, 0, 0, 0), Precision::Day, None));
    }
    if b.get(10) != Some(&b'T') || b.get(13) != Some(&b':') {
        return None;
    }
    let hour = i8::try_from(num(11..13)?).ok()?;
    let minute = i8::try_from(num(14..16)?).ok()?;
    let mut pos = 16;
    let mut second = 0i8;
    let mut nanos = 0i32;
    let mut precision = Precision::Minute;
    if b.get(pos) == Some(&b':') {
        second = i8::try_from(num(17..19)?).ok()?;
        precision = Precision::Second;
        pos = 19;
        if b.get(pos) == Some(&b'.') {
            let digits = b[pos + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            if digits == 0 {
                return None;
            }
            let frac = &text[pos + 1..pos + 1 + digits.min(9)];
            nanos = format!("{frac:0<9}").parse().ok()?;
            precision = Precision::Millisecond;
            pos += 1 + digits;
        }
    }
    let time = jiff::civil::Time::new(hour, minute, second, nanos).ok()?;
    let civil = date.to_datetime(time);
    let offset = match &text[pos..] {
        "" => None,
        "Z" => Some(Offset::UTC),
        zone => {
            let zb = zone.as_bytes();
            if zb.len() != 6 || zb[3] != b':' {
                return None;
            }
            let sign = match zb[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let h: i32 = zone.get(1..3)?.parse().ok()?;
            let m: i32 = zone.get(4..6)?.parse().ok()?;
            if h > 14 || m > 59 {
                return None;
            }
            Some(Offset::from_seconds(sign * (h * 3600 + m * 60)).ok()?)
        }
    };
    Some((civil, precision, offset))
}

/// An instant as FHIR writes it (`2026-11-22T10:29:36.123Z`).
pub fn format_instant(millis: i64) -> String {
    // A group commit stamps every version with one instant: format it once.
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != millis {
            let text = match Timestamp::from_millisecond(millis) {
                Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                Err(_) => "1970-01-01T00:00:00.000Z".to_string(),
            };
            *last = (millis, text);
        }
        last.1.clone()
    })
}

/// An instant as HTTP writes it (`Sun, 22 Nov 2026 10:29:36 GMT`, RFC 9110).
pub fn format_http_date(millis: i64) -> String {
    let ts = Timestamp::from_millisecond(millis).unwrap_or(Timestamp::UNIX_EPOCH);
    jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&ts)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn a_day_is_a_london_day() {
        let r = parse_range("2020-07-01").unwrap();
        assert_eq!(r.start, ms("2020-06-30T23:00:00Z"));
        assert_eq!(r.end, ms("2020-07-01T23:00:00Z"));
    }

    #[test]
    fn the_spring_forward_day_is_23_hours_long() {
        let r = parse_range("2020-03-29").unwrap();
        assert_eq!(r.end - r.start, 23 * 3600 * 1000);
    }

    #[test]
    fn explicit_offsets_are_kept() {
        let r = parse_range("2020-01-01T10:00:00+01:00").unwrap();
        assert_eq!(r.start, ms("2020-01-01T09:00:00Z"));
        assert_eq!(r.end - r.start, 1000);
        let r = parse_range("2020-01-01T10:00:00.5Z").unwrap();
        assert_eq!(r.start, ms("2020-01-01T10:00:00.5Z"));
    }

    #[test]
    fn years_and_months_cover_their_whole_span() {
        let r = parse_range("2019").unwrap();
        assert_eq!(r.start, ms("2019-01-01T00:00:00Z"));
        assert_eq!(r.end, ms("2020-01-01T00:00:00Z"));
        let r = parse_range("2019-02").unwrap();
        assert_eq!(r.end - r.start, 28 * 24 * 3600 * 1000);
    }

    #[test]
    fn refuses_impossible_or_malformed_values() {
        for bad in [
            "2019-02-29",
            "2019-13",
            "20190101",
            "2019-01-01T25:00",
            "2019-01-01T10:00:00+1:00",
            "2019-01-01T10:00:00.Z",
            "abcd",
            "",
            "2019-01-01T10",
        ] {
            assert_eq!(parse_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_instants_for_fhir_and_http() {
        let t = ms("2026-11-22T10:29:36.123Z");
        assert_eq!(format_instant(t), "2026-11-22T10:29:36.123Z");
        assert_eq!(format_http_date(t), "Sun, 22 Nov 2026 10:29:36 GMT");
    }
}
