//! Partial-precision FHIR date, dateTime, instant and time values: parsing, FHIRPath comparison
//! (UTC normalisation, undecidable precision => `None`), formatting and the clock for `now()`.

use std::cmp::Ordering;
use std::fmt;

/// A date, dateTime or time with only the components that were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temporal {
    /// year, month, day, hour, minute, second, millisecond
    v: [u16; 7],
    /// Number of components present, counted from year (so a time-only value starts at 3).
    prec: u8,
    time_only: bool,
    /// Offset from UTC in minutes when written.
    offset: Option<i16>,
}

fn digits(b: &[u8], i: &mut usize, n: usize) -> Option<u16> {
    let s = b.get(*i..*i + n)?;
    let mut v: u16 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u16::from(c - b'0');
    }
    *i += n;
    Some(v)
}

fn eat(b: &[u8], i: &mut usize, c: u8) -> bool {
    let hit = b.get(*i) == Some(&c);
    *i += usize::from(hit);
    hit
}

impl Temporal {
    /// Parses `YYYY[-MM[-DD[T[hh[:mm[:ss[.fff]]]][Z|±hh:mm]]]]`; the flag says a `T` was present,
    /// which makes a FHIRPath literal a DateTime even without a time.
    pub(super) fn parse_date(s: &str) -> Option<(Temporal, bool)> {
        let b = s.as_bytes();
        let mut i = 0;
        let mut t = Temporal {
            v: [0, 1, 1, 0, 0, 0, 0],
            prec: 1,
            time_only: false,
            offset: None,
        };
        t.v[0] = digits(b, &mut i, 4)?;
        let mut has_t = false;
        if eat(b, &mut i, b'-') {
            t.v[1] = digits(b, &mut i, 2)?;
            t.prec = 2;
            if eat(b, &mut i, b'-') {
                t.v[2] = digits(b, &mut i, 2)?;
                t.prec = 3;
                has_t = eat(b, &mut i, b'T');
                if has_t && i < b.len() {
                    t.time(b, &mut i)?;
                }
            }
        }
        (i == b.len() && t.valid()).then_some((t, has_t))
    }

    /// Parses `hh[:mm[:ss[.fff]]]`, the FHIR `time` type.
    pub(super) fn parse_time(s: &str) -> Option<Temporal> {
        let b = s.as_bytes();
        let mut i = 0;
        let mut t = Temporal {
            v: [0, 1, 1, 0, 0, 0, 0],
            prec: 3,
            time_only: true,
            offset: None,
        };
        t.time(b, &mut i)?;
        (i == b.len() && t.offset.is_none() && t.valid()).then_some(t)
    }

    /// A JSON string that is shaped like a date/dateTime/instant/time, for `<`/`>` on strings.
    pub(super) fn parse_any(s: &str) -> Option<Temporal> {
        if s.as_bytes().get(2) == Some(&b':') {
            Temporal::parse_time(s)
        } else {
            Temporal::parse_date(s).map(|(t, _)| t)
        }
    }

    fn time(&mut self, b: &[u8], i: &mut usize) -> Option<()> {
        self.v[3] = digits(b, i, 2)?;
        self.prec = 4;
        if eat(b, i, b':') {
            self.v[4] = digits(b, i, 2)?;
            self.prec = 5;
            if eat(b, i, b':') {
                self.v[5] = digits(b, i, 2)?;
                self.prec = 6;
                if eat(b, i, b'.') {
                    let start = *i;
                    let mut ms = 0u16;
                    while let Some(c) = b.get(*i).filter(|c| c.is_ascii_digit()) {
                        if *i - start < 3 {
                            ms = ms * 10 + u16::from(c - b'0');
                        }
                        *i += 1;
                    }
                    match *i - start {
                        0 => return None,
                        1 => ms *= 100,
                        2 => ms *= 10,
                        _ => {}
                    }
                    self.v[6] = ms;
                    self.prec = 7;
                }
            }
        }
        if eat(b, i, b'Z') {
            self.offset = Some(0);
        } else if let Some(&sign @ (b'+' | b'-')) = b.get(*i) {
            *i += 1;
            let h = digits(b, i, 2)?;
            if !eat(b, i, b':') {
                return None;
            }
            let m = digits(b, i, 2)?;
            if h > 14 || m > 59 {
                return None;
            }
            let off = (h * 60 + m) as i16;
            self.offset = Some(if sign == b'-' { -off } else { off });
        }
        Some(())
    }

    fn valid(&self) -> bool {
        let v = self.v;
        (1..=12).contains(&v[1]) && (1..=31).contains(&v[2]) && v[3] < 24 && v[4] < 60 && v[5] < 60
    }

    pub(super) fn is_time(&self) -> bool {
        self.time_only
    }

    /// The date part only (for `toDate()`).
    pub(super) fn date_part(mut self) -> Temporal {
        self.prec = self.prec.min(3);
        self.offset = None;
        self
    }

    /// Moves a value with an offset and at least minute precision to UTC so that instants written
    /// in different zones compare correctly.
    fn to_utc(self) -> Temporal {
        let Some(off) = self.offset else { return self };
        if self.prec < 5 || self.time_only {
            return self;
        }
        let v = self.v.map(i64::from);
        let mins = days_from_civil(v[0], v[1], v[2]) * 1440 + v[3] * 60 + v[4] - i64::from(off);
        let (y, m, d) = civil_from_days(mins.div_euclid(1440));
        let mut t = self;
        let mod_day = mins.rem_euclid(1440);
        for (slot, x) in t.v.iter_mut().zip([y, m, d, mod_day / 60, mod_day % 60]) {
            *slot = u16::try_from(x).unwrap_or(0);
        }
        t.offset = Some(0);
        t
    }

    /// FHIRPath ordering: `None` when one side is more precise and the common components tie
    /// (or when a time is compared with a date).
    pub(super) fn compare(&self, other: &Temporal) -> Option<Ordering> {
        if self.time_only != other.time_only {
            return None;
        }
        let (a, b) = if self.offset.is_some() && other.offset.is_some() {
            (self.to_utc(), other.to_utc())
        } else {
            (*self, *other)
        };
        // Seconds and milliseconds are one precision: 10:00:00 equals 10:00:00.000.
        let norm = |p: u8| if p == 6 { 7 } else { p };
        let (pa, pb) = (norm(a.prec), norm(b.prec));
        let start = if a.time_only { 3 } else { 0 };
        for i in start..usize::from(pa.min(pb)) {
            match a.v[i].cmp(&b.v[i]) {
                Ordering::Equal => {}
                o => return Some(o),
            }
        }
        (pa == pb).then_some(Ordering::Equal)
    }

    /// Today's date (UTC) or the current instant at millisecond precision.
    pub(super) fn now(date_only: bool) -> Temporal {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = i64::try_from(d.as_secs()).unwrap_or(0);
        let (y, m, day) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        let parts = [
            y,
            m,
            day,
            sod / 3600,
            sod / 60 % 60,
            sod % 60,
            i64::from(d.subsec_millis()),
        ];
        Temporal {
            v: parts.map(|x| u16::try_from(x).unwrap_or(0)),
            prec: if date_only { 3 } else { 7 },
            time_only: false,
            offset: (!date_only).then_some(0),
        }
    }
}

impl fmt::Display for Temporal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [y, mo, d, h, mi, s, ms] = self.v;
        if !self.time_only {
            write!(f, "{y:04}")?;
            for (p, x) in [(2, mo), (3, d)] {
                if self.prec >= p {
                    write!(f, "-{x:02}")?;
                }
            }
            if self.prec > 3 {
                f.write_str("T")?;
            }
        }
        if self.prec > 3 {
            write!(f, "{h:02}")?;
        }
        for (p, x) in [(5, mi), (6, s)] {
            if self.prec >= p {
                write!(f, ":{x:02}")?;
            }
        }
        if self.prec >= 7 {
            write!(f, ".{ms:03}")?;
        }
        match self.offset {
            Some(0) => f.write_str("Z"),
            Some(o) => write!(
                f,
                "{}{:02}:{:02}",
                if o < 0 { '-' } else { '+' },
                o.abs() / 60,
                o.abs() % 60
            ),
            None => Ok(()),
        }
    }
}

// Howard Hinnant's proleptic Gregorian day-count algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
