//! HL7 v2 datatypes (v2.3 to v2.5, NHS England conventions) mapped to FHIR R4
//! JSON: timestamps (TS/DTM/DT), names (XPN), addresses (XAD), telecoms
//! (XTN) and administrative sex (table 0001).
//!
//! Datatype layouts are those of HL7 v2.5 chapter 2A (§2A.22 DT, §2A.23 DTM,
//! §2A.29 FN, §2A.66 SAD, §2A.77 TS, §2A.88 XAD, §2A.89 XPN, §2A.90 XTN).
//! Code tables follow the HL7 v2-to-FHIR implementation guide's ConceptMaps
//! (repository HL7/v2-to-fhir, `input/fsh/`, read at commit 8c9b414be172):
//!
//! - `Table HL70001 to Administrative Gender.fsh`
//! - `Table HL70200 to Name Use.fsh`
//! - `Table HL70190 to Address Use.fsh`, `Table HL70190 to Address Type.fsh`
//! - `Table HL70201 to Contact Point Use.fsh`
//! - `Table HL70202 to Contact Point System.fsh`
//!
//! and its datatype maps (`mappings/datatypes/HL7 Data Type - FHIR R4_
//! XPN[HumanName]`, `XAD[Address]`, `XTN[ContactPoint]`), with the NHS
//! deviations noted where they occur (XAD.4 is the county → `district`).
//!
//! Every function is pure, total and linear in its input: no I/O, no panics,
//! `Ok(None)` for an absent, empty or `""` (explicit null) value. Text
//! functions take decoded text, in which the ER7 layer has already read a
//! null as empty: a `""` they see was sent escaped, and is a value. JSON
//! objects are built key by key in FHIR element order (serde_json's
//! `preserve_order` keeps it).

use std::fmt;

use jiff::SignedDuration;
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use serde_json::{Map, Value};

use super::condition::Condition;
use super::er7::{Component, Rep};

/// The zone of local times sent without an offset (NHS senders are in
/// England); resolved from jiff's bundled copy of the IANA tzdb.
const LOCAL_ZONE: &str = "Europe/London";

/// The longest well-formed DTM: `YYYYMMDDHHMMSS.SSSS+ZZZZ` (§2A.23).
const DTM_MAX_LEN: usize = 24;

/// The DTM format as HL7 v2.5 §2A.23 writes it, quoted in error messages.
const DTM_FORMAT: &str = "YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]";

/// Quoted values in messages are cut to this many characters.
const QUOTE_MAX: usize = 40;

/// A located mapping problem: `location` is HL7 location syntax such as
/// `PID-7` or `PID-11[2].5`; `reason` is a plain-English sentence that
/// quotes the offending value (the ACK puts the location before it).
///
/// In JSON (the quarantine's reasons, the dry run) it is `{"location",
/// "reason", "code"}`, the code being ERR-3's number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DataError {
    pub location: String,
    pub reason: String,
    /// What kind of error, as the ACK's ERR-3 gives it.
    #[serde(rename = "code")]
    pub condition: Condition,
}

impl DataError {
    /// The errors a quarantine entry's reasons (as [`DataError`]s are
    /// written there) hold; items without a reason are left out. A reason
    /// written without a code (before codes were kept) gets the code it
    /// was answered with then: 101 if it said "required and missing", 205
    /// for another message under a used MSH-10, else 102.
    pub fn from_reasons(reasons: &str) -> Vec<DataError> {
        let Ok(serde_json::Value::Array(items)) = serde_json::from_str(reasons) else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| {
                let reason = item.get("reason").and_then(Value::as_str)?;
                let location = item.get("location").and_then(Value::as_str);
                let condition = match item.get("code").and_then(Value::as_u64) {
                    Some(code) => Condition::from_code(code).unwrap_or(Condition::DataType),
                    None if reason.contains("required and missing") => {
                        Condition::RequiredFieldMissing
                    }
                    None if reason.starts_with(super::resend::REUSED) => Condition::DuplicateKey,
                    None => Condition::DataType,
                };
                Some(DataError::new(
                    condition,
                    location.unwrap_or_default(),
                    reason,
                ))
            })
            .collect()
    }

    pub fn new(
        condition: Condition,
        location: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        DataError {
            location: location.into(),
            reason: reason.into(),
            condition,
        }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for DataError {}

/// A converted timestamp: the FHIR value and, when the local time was
/// ambiguous or did not exist in Europe/London, a plain-English note saying
/// what was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instant {
    pub value: String,
    pub note: Option<String>,
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// `value` in single quotes, cut to [`QUOTE_MAX`] characters so a hostile
/// value cannot blow up an error message.
fn quote(value: &str) -> String {
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(QUOTE_MAX).collect();
    if chars.next().is_some() {
        format!("'{head}…'")
    } else {
        format!("'{head}'")
    }
}

/// A [`DataError`] whose reason reads "`'value' <why>`": a value of the
/// wrong form.
fn error(location: &str, value: &str, why: &str) -> DataError {
    DataError::new(
        Condition::DataType,
        location,
        format!("{} {why}", quote(value)),
    )
}

/// The trimmed decoded text, or `None` when it is empty. HL7's explicit
/// null `""` (§2.5.3) is already empty here (`Component::value` reads it
/// so); a `""` left after decoding was sent escaped (`\X2222\`, as
/// `escape::encode` writes it) and is a literal value.
fn non_empty(text: &str) -> Option<&str> {
    let text = text.trim();
    (!text.is_empty()).then_some(text)
}

/// The decoded (unescaped, §2.7) first subcomponent of component `n`,
/// trimmed; `None` when absent or empty.
fn component_text(rep: &Rep<'_>, n: usize) -> Option<String> {
    let component: Component<'_> = rep.component(n)?;
    non_empty(&component.value()).map(str::to_owned)
}

/// A JSON array of strings, or `None` when there are none.
fn string_array(items: Vec<String>) -> Option<Value> {
    (!items.is_empty()).then(|| Value::Array(items.into_iter().map(Value::String).collect()))
}

/// Inserts `key` only when there is a value (FHIR forbids empty elements).
fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), value);
    }
}

fn put_str(map: &mut Map<String, Value>, key: &str, value: Option<impl Into<String>>) {
    put(map, key, value.map(|v| Value::String(v.into())));
}

// ---------------------------------------------------------------------------
// DTM / TS / DT (§2A.23, §2A.77, §2A.22)
// ---------------------------------------------------------------------------

/// How much of a DTM was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
}

/// A syntactically and calendrically valid DTM, fields as numbers.
#[derive(Debug, Clone)]
struct Dtm<'a> {
    precision: Precision,
    year: i16,
    month: i8,
    day: i8,
    hour: i8,
    minute: i8,
    second: i8,
    /// Fractional-second digits without the `.` (empty when none were sent).
    fraction: &'a str,
    /// The offset as sent, already in FHIR form (`+01:00`, `-00:00`).
    offset: Option<String>,
}

/// Parses a DTM (HL7 v2.5 §2A.23): `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]]`
/// then an optional `+ZZZZ`/`-ZZZZ` offset. `value` must already be trimmed.
/// Rejects anything else with a reason quoting the value.
fn parse_dtm<'a>(value: &'a str, location: &str) -> Result<Dtm<'a>, DataError> {
    let fail = |why: &str| {
        error(
            location,
            value,
            &format!("is not an HL7 DTM ({DTM_FORMAT}): {why}"),
        )
    };
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
    {
        return Err(fail(&format!("{bad:?} is not a digit")));
    }
    // Only ASCII remains, so byte offsets below are character boundaries.
    let (body, zone) = match value.find(['+', '-']) {
        Some(i) => (&value[..i], Some(&value[i..])),
        None => (value, None),
    };
    let offset = zone
        .map(|z| parse_offset(z).map_err(|why| fail(&why)))
        .transpose()?;
    let (digits, fraction) = match body.split_once('.') {
        Some((digits, fraction)) => (digits, Some(fraction)),
        None => (body, None),
    };
    let precision = match digits.len() {
        4 => Precision::Year,
        6 => Precision::Month,
        8 => Precision::Day,
        10 => Precision::Hour,
        12 => Precision::Minute,
        14 => Precision::Second,
        n => {
            return Err(fail(&format!(
                "the date/time part has {n} digits; expected 4, 6, 8, 10, 12 or 14"
            )));
        }
    };
    let fraction = match fraction {
        None => "",
        Some(_) if precision != Precision::Second => {
            return Err(fail(
                "fractional seconds need all of YYYYMMDDHHMMSS before the '.'",
            ));
        }
        Some(f) if f.is_empty() || f.len() > 4 || !f.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(fail("fractional seconds must be 1 to 4 digits"));
        }
        Some(f) => f,
    };
    let dtm = Dtm {
        precision,
        year: number(digits, 0, 4) as i16,
        month: number(digits, 4, 2).max(1) as i8,
        day: number(digits, 6, 2).max(1) as i8,
        hour: number(digits, 8, 2) as i8,
        minute: number(digits, 10, 2) as i8,
        second: number(digits, 12, 2) as i8,
        fraction,
        offset,
    };
    check_ranges(digits, &dtm).map_err(|why| fail(&why))?;
    Ok(dtm)
}

/// The number in `digits[start..start + len]`, 0 when absent. Callers have
/// checked the text is ASCII digits, so this cannot fail or overflow.
fn number(digits: &str, start: usize, len: usize) -> i32 {
    digits
        .get(start..start + len)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A `+ZZZZ`/`-ZZZZ` offset (§2A.23) in FHIR form, sign kept as sent (so
/// `-0000`, "offset unknown" in RFC 3339, stays `-00:00`). Accepts what
/// FHIR's dateTime can carry: hours 00-14, minutes 00-59, at most 14:00.
fn parse_offset(zone: &str) -> Result<String, String> {
    let sign = if zone.starts_with('-') { '-' } else { '+' };
    let digits = zone.get(1..).unwrap_or("");
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "offset '{zone}' must be a sign and four digits (+ZZZZ or -ZZZZ)"
        ));
    }
    let (hours, minutes) = (number(digits, 0, 2), number(digits, 2, 2));
    if minutes > 59 || hours > 14 || (hours == 14 && minutes > 0) {
        return Err(format!(
            "offset '{zone}' is not a UTC offset between -14:00 and +14:00"
        ));
    }
    Ok(format!("{sign}{hours:02}:{minutes:02}"))
}

/// Calendar and clock ranges: year 0001-9999, month 01-12, a day that exists
/// in that month, hour 00-23, minute and second 00-59 (no leap seconds).
fn check_ranges(digits: &str, d: &Dtm<'_>) -> Result<(), String> {
    let p = d.precision;
    if d.year == 0 {
        return Err("year 0000 does not exist".to_owned());
    }
    let month = number(digits, 4, 2);
    if p >= Precision::Month && !(1..=12).contains(&month) {
        return Err(format!("month {month:02} is not 01 to 12"));
    }
    let day = number(digits, 6, 2);
    if p >= Precision::Day && (day < 1 || day > days_in_month(d.year, d.month)) {
        return Err(format!(
            "day {day:02} is not in the calendar for {:04}-{month:02}",
            d.year
        ));
    }
    if d.hour > 23 {
        return Err(format!("hour {:02} is not 00 to 23", d.hour));
    }
    if d.minute > 59 {
        return Err(format!("minute {:02} is not 00 to 59", d.minute));
    }
    if d.second > 59 {
        return Err(format!("second {:02} is not 00 to 59", d.second));
    }
    Ok(())
}

/// Days in a month of the proleptic Gregorian calendar (what HL7 uses).
fn days_in_month(year: i16, month: i8) -> i32 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The FHIR date (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) at the sent precision,
/// capped at a day.
fn fhir_date(d: &Dtm<'_>) -> String {
    match d.precision {
        Precision::Year => format!("{:04}", d.year),
        Precision::Month => format!("{:04}-{:02}", d.year, d.month),
        _ => format!("{:04}-{:02}-{:02}", d.year, d.month, d.day),
    }
}

/// `+hh:mm` / `-hh:mm` as FHIR writes offsets (never `Z`: the sender's
/// offset is kept as information).
fn fhir_offset(seconds: i32) -> String {
    let mut s = String::with_capacity(6);
    push_offset(&mut s, seconds);
    s
}

fn push_offset(s: &mut String, seconds: i32) {
    let minutes = seconds.unsigned_abs() / 60;
    s.push(if seconds < 0 { '-' } else { '+' });
    push_padded(s, minutes / 60, 2);
    s.push(':');
    push_padded(s, minutes % 60, 2);
}

/// `n` in decimal, zero-padded to `width` digits (more when it needs them).
/// Every HL7 v2 time passes here a few times; `format!` cost a tenth of
/// mapping a message.
fn push_padded(s: &mut String, n: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let mut rest = n;
    let mut len = 0;
    while rest > 0 || len < width {
        digits[digits.len() - 1 - len] = b'0' + (rest % 10) as u8;
        rest /= 10;
        len += 1;
        if len == digits.len() {
            break;
        }
    }
    let start = digits.len() - len;
    s.extend(digits[start..].iter().map(|&b| char::from(b)));
}

/// `YYYY-MM-DDThh:mm:ss[.f]` for a civil datetime plus the sent fraction.
fn fhir_local(dt: DateTime, fraction: &str) -> String {
    let mut s = String::with_capacity(32);
    match u32::try_from(dt.year()) {
        Ok(year) => push_padded(&mut s, year, 4),
        Err(_) => s.push_str(&format!("{:04}", dt.year())),
    }
    for (sep, n) in [
        ('-', dt.month()),
        ('-', dt.day()),
        ('T', dt.hour()),
        (':', dt.minute()),
        (':', dt.second()),
    ] {
        s.push(sep);
        push_padded(&mut s, u32::try_from(n).unwrap_or(0), 2);
    }
    if !fraction.is_empty() {
        s.push('.');
        s.push_str(fraction);
    }
    s
}

/// HL7 DTM (§2A.23) → FHIR `dateTime` (or a FHIR date when the precision is
/// a day or coarser, since FHIR forbids an offset on those).
///
/// With hours, minutes and seconds are padded with `00` and fractional
/// seconds kept as sent. A sent offset is kept as given (`+0000` →
/// `+00:00`). A value without an offset is UK local time and is given the
/// Europe/London offset in force (`+00:00` GMT, `+01:00` BST); see
/// `london` for the repeated and skipped hours.
pub fn dtm(raw: &str, location: &str) -> Result<Option<Instant>, DataError> {
    let Some(value) = non_empty(raw) else {
        return Ok(None);
    };
    if value.chars().count() > DTM_MAX_LEN {
        return Err(error(
            location,
            value,
            &format!("is longer than the {DTM_MAX_LEN} characters of the longest HL7 DTM"),
        ));
    }
    let d = parse_dtm(value, location)?;
    if d.precision <= Precision::Day {
        return Ok(Some(Instant {
            value: fhir_date(&d),
            note: None,
        }));
    }
    let civil =
        DateTime::new(d.year, d.month, d.day, d.hour, d.minute, d.second, 0).map_err(|e| {
            error(
                location,
                value,
                &format!("is not a valid date and time ({e})"),
            )
        })?;
    match &d.offset {
        Some(offset) => Ok(Some(Instant {
            value: format!("{}{offset}", fhir_local(civil, d.fraction)),
            note: None,
        })),
        None => london(civil, d.fraction)
            .map(Some)
            .map_err(|why| error(location, value, &why)),
    }
}

/// Europe/London from the bundled tzdb, looked up once (a lookup costs
/// more than the conversion itself).
pub fn london_zone() -> Option<TimeZone> {
    static ZONE: std::sync::OnceLock<Option<TimeZone>> = std::sync::OnceLock::new();
    ZONE.get_or_init(|| TimeZone::get(LOCAL_ZONE).ok()).clone()
}

/// Resolves a UK local time in Europe/London (jiff's bundled IANA tzdb).
///
/// - Ordinary times get the offset then in force.
/// - A repeated local time (01:00-01:59 on the last Sunday of October, clocks
///   going back) is read as the first, earlier instant (BST): HL7 feeds are
///   written as events happen, so the first reading is the likelier one.
/// - A skipped local time (01:00-01:59 on the last Sunday of March, clocks
///   going forward) cannot be a real wall-clock reading; it is read as a
///   clock that had not yet been changed (jiff's "compatible" rule, as RFC
///   5545 and `java.time` do): 01:30 GMT, which is 02:30 BST.
///
/// Both of the latter carry a note. The offset is taken from the zone's
/// rules for the civil time, without converting to a timestamp, so the
/// whole HL7 year range (0001-9999) works. Transitions fall on whole
/// seconds, so the sent fraction is appended unchanged.
fn london(civil: DateTime, fraction: &str) -> Result<Instant, String> {
    let tz = london_zone()
        .ok_or_else(|| format!("cannot be converted: time zone {LOCAL_ZONE} is unavailable"))?;
    let (local, offset, note) = match tz.to_ambiguous_timestamp(civil).offset() {
        AmbiguousOffset::Unambiguous { offset } => (civil, offset, None),
        AmbiguousOffset::Fold { before, .. } => {
            (civil, before, Some(fold_note(&tz, civil, before)))
        }
        AmbiguousOffset::Gap { before, after } => {
            let shift = i64::from(after.seconds()) - i64::from(before.seconds());
            let local = civil
                .checked_add(SignedDuration::from_secs(shift))
                .map_err(|e| format!("cannot be placed in {LOCAL_ZONE} ({e})"))?;
            let value = format!(
                "{}{}",
                fhir_local(local, fraction),
                fhir_offset(after.seconds())
            );
            (
                local,
                after,
                Some(gap_note(&tz, civil, before, after, &value, local)),
            )
        }
    };
    if offset.seconds() % 60 != 0 {
        return local_mean_time(local, offset, fraction);
    }
    Ok(Instant {
        value: {
            let mut value = fhir_local(local, fraction);
            push_offset(&mut value, offset.seconds());
            value
        },
        note,
    })
}

/// "BST +01:00": the zone's abbreviation for `offset` applied to `civil`
/// (from the tzdb, so historic names such as BDST come out right), and the
/// offset; just the offset when the instant is out of jiff's range.
fn label(tz: &TimeZone, civil: DateTime, offset: Offset) -> String {
    let shown = fhir_offset(offset.seconds());
    match offset.to_timestamp(civil) {
        Ok(at) => format!("{} {shown}", tz.to_offset_info(at).abbreviation()),
        Err(_) => shown,
    }
}

/// The note for a repeated local time, read with the earlier offset.
fn fold_note(tz: &TimeZone, civil: DateTime, earlier: Offset) -> String {
    format!(
        "local time {} occurs twice in {LOCAL_ZONE} (clocks go back); read as the first, {}",
        fhir_local(civil, ""),
        label(tz, civil, earlier)
    )
}

/// The note for a skipped local time. Read with the later offset, `civil`
/// falls just before the change, where the earlier offset's name applies.
fn gap_note(
    tz: &TimeZone,
    civil: DateTime,
    before: Offset,
    after: Offset,
    value: &str,
    local: DateTime,
) -> String {
    let before_name = after
        .to_timestamp(civil)
        .map(|at| format!("{} ", tz.to_offset_info(at).abbreviation()))
        .unwrap_or_default();
    let after_label = label(tz, local, after);
    let after_name = after_label
        .split(' ')
        .next()
        .filter(|n| !n.starts_with(['+', '-']));
    format!(
        "local time {} does not exist in {LOCAL_ZONE} (clocks go forward); read as the \
         sender's clock before the change, {before_name}{}, which is {value}{}",
        fhir_local(civil, ""),
        fhir_offset(before.seconds()),
        after_name.map(|n| format!(" {n}")).unwrap_or_default()
    )
}

/// Before 1 December 1847 London kept local mean time, -00:01:15. FHIR
/// offsets are whole minutes, so the same instant is given in UTC.
fn local_mean_time(local: DateTime, offset: Offset, fraction: &str) -> Result<Instant, String> {
    let utc = offset
        .to_timestamp(local)
        .map(|at| Offset::UTC.to_datetime(at))
        .map_err(|e| format!("cannot be placed in {LOCAL_ZONE} ({e})"))?;
    Ok(Instant {
        value: format!("{}+00:00", fhir_local(utc, fraction)),
        note: Some(format!(
            "local time {} was local mean time in {LOCAL_ZONE} ({offset}), which FHIR \
             cannot express; given in UTC",
            fhir_local(local, "")
        )),
    })
}

/// HL7 TS (§2A.77; DTM from v2.5) → FHIR dateTime, reading TS.1 (the first
/// component; TS.2, degree of precision, is deprecated and ignored).
pub fn ts(rep: Option<Rep<'_>>, location: &str) -> Result<Option<Instant>, DataError> {
    match rep.and_then(|r| r.component(1)) {
        Some(component) => dtm(&component.value(), location),
        None => Ok(None),
    }
}

/// HL7 TS/DT (§2A.22, §2A.77) → FHIR `date`, for birth dates.
///
/// Accepts `YYYY`, `YYYYMM`, `YYYYMMDD` or a full DTM; the whole value is
/// validated but only the date part is kept, as sent: a date of birth is a
/// calendar date, so no time zone is ever applied (a baby born at 00:30 BST
/// was not born the previous day).
pub fn date(rep: Option<Rep<'_>>, location: &str) -> Result<Option<String>, DataError> {
    let Some(component) = rep.and_then(|r| r.component(1)) else {
        return Ok(None);
    };
    let raw = component.value();
    let Some(value) = non_empty(&raw) else {
        return Ok(None);
    };
    if value.chars().count() > DTM_MAX_LEN {
        return Err(error(
            location,
            value,
            &format!("is longer than the {DTM_MAX_LEN} characters of the longest HL7 DTM"),
        ));
    }
    parse_dtm(value, location).map(|d| Some(fhir_date(&d)))
}

// ---------------------------------------------------------------------------
// XPN (§2A.89) → HumanName
// ---------------------------------------------------------------------------

/// HL7 table 0200 (name type) → FHIR `name-use`, per the v2-to-FHIR
/// ConceptMap `table-hl70200-to-name-use` (`input/fsh/Table HL70200 to Name
/// Use.fsh`). Codes the map leaves unmatched (A alias, B, C adopted, F, I,
/// K, NB, NOUSE, P, REL, S, T, U) and unknown codes give no `use`.
fn name_use(code: &str) -> Option<&'static str> {
    Some(match code {
        "BAD" => "old",
        "D" => "usual",
        "L" | "R" => "official",
        "M" => "maiden",
        "MSK" => "anonymous",
        "N" => "nickname",
        "NAV" | "TEMP" => "temp",
        _ => return None,
    })
}

/// HL7 XPN (v2.4/2.5, §2A.89) → FHIR HumanName, per the v2-to-FHIR map
/// `XPN[HumanName]`:
///
/// - XPN.1 family name (FN, §2A.29): FN.1, the surname, only;
/// - XPN.2 given → `given[0]`, XPN.3 further given names or initials →
///   one more `given` entry, as sent (not split on spaces);
/// - XPN.4 suffix and XPN.6 degree → `suffix`; XPN.5 prefix → `prefix`;
/// - XPN.7 name type → `use` (`name_use`).
///
/// Values keep their case (NHS senders send surnames upper-case). `None`
/// when no name part is left; a `use` alone is not a name. No XPN content
/// is rejected, so this never returns `Err` today; the location parameter
/// keeps the signature uniform with the other mappers.
pub fn human_name(rep: Rep<'_>, _location: &str) -> Result<Option<Value>, DataError> {
    let family = component_text(&rep, 1);
    let given: Vec<String> = [2, 3]
        .iter()
        .filter_map(|&n| component_text(&rep, n))
        .collect();
    let prefix: Vec<String> = component_text(&rep, 5).into_iter().collect();
    let suffix: Vec<String> = [4, 6]
        .iter()
        .filter_map(|&n| component_text(&rep, n))
        .collect();
    if family.is_none() && given.is_empty() && prefix.is_empty() && suffix.is_empty() {
        return Ok(None);
    }
    let mut name = Map::new();
    put_str(
        &mut name,
        "use",
        component_text(&rep, 7).as_deref().and_then(name_use),
    );
    put_str(&mut name, "family", family);
    put(&mut name, "given", string_array(given));
    put(&mut name, "prefix", string_array(prefix));
    put(&mut name, "suffix", string_array(suffix));
    Ok(Some(Value::Object(name)))
}

// ---------------------------------------------------------------------------
// XAD (§2A.88) → Address
// ---------------------------------------------------------------------------

/// HL7 table 0190 (address type) → FHIR (`use`, `type`), per the v2-to-FHIR
/// ConceptMaps `table-hl70190-to-address-use` and
/// `table-hl70190-to-address-type` (`input/fsh/Table HL70190 to Address
/// Use.fsh`, `... to Address Type.fsh`). Codes both maps leave unmatched
/// (N, BDL, F, L, P, RH, BR, S, TM, V) and unknown codes give neither.
fn address_use_type(code: &str) -> (Option<&'static str>, Option<&'static str>) {
    match code {
        "H" => (Some("home"), None),
        "B" | "O" => (Some("work"), None),
        "C" => (Some("temp"), None),
        "BA" => (Some("old"), None),
        "BI" => (Some("billing"), None),
        "M" | "SH" => (None, Some("postal")),
        _ => (None, None),
    }
}

/// HL7 XAD (§2A.88) → FHIR Address, per the v2-to-FHIR map `XAD[Address]`
/// except where NHS England usage differs:
///
/// - XAD.1 street address (SAD, §2A.66): SAD.1, street or mailing address →
///   `line[0]`; XAD.2 other designation → the next `line`;
/// - XAD.3 city → `city`; XAD.4 state or province, which NHS senders fill
///   with the county → `district` (the IG maps it to `state`);
/// - XAD.5 postal code, XAD.6 country → `postalCode`, `country`;
/// - XAD.7 address type → `use`/`type` (`address_use_type`).
///
/// Values are unescaped (§2.7), so `\T\` reads as `&`. `None` when no
/// address part is left; a `use`/`type` alone is not an address. Never
/// `Err` today (nothing in an XAD is rejected).
pub fn address(rep: Rep<'_>, _location: &str) -> Result<Option<Value>, DataError> {
    let line: Vec<String> = [1, 2]
        .iter()
        .filter_map(|&n| component_text(&rep, n))
        .collect();
    let city = component_text(&rep, 3);
    let district = component_text(&rep, 4);
    let postal_code = component_text(&rep, 5);
    let country = component_text(&rep, 6);
    if line.is_empty()
        && city.is_none()
        && district.is_none()
        && postal_code.is_none()
        && country.is_none()
    {
        return Ok(None);
    }
    let (address_use, address_type) = component_text(&rep, 7)
        .as_deref()
        .map_or((None, None), address_use_type);
    let mut out = Map::new();
    put_str(&mut out, "use", address_use);
    put_str(&mut out, "type", address_type);
    put(&mut out, "line", string_array(line));
    put_str(&mut out, "city", city);
    put_str(&mut out, "district", district);
    put_str(&mut out, "postalCode", postal_code);
    put_str(&mut out, "country", country);
    Ok(Some(Value::Object(out)))
}

// ---------------------------------------------------------------------------
// XTN (§2A.90) → ContactPoint
// ---------------------------------------------------------------------------

/// HL7 table 0201 (telecommunication use) → FHIR `contact-point-use`, per
/// the v2-to-FHIR ConceptMap `table-hl70201-to-contact-point-use`
/// (`input/fsh/Table HL70201 to Contact Point Use.fsh`): PRN → home,
/// WPN → work, PRS (personal) → mobile. The map leaves ORN, VHN, ASN, EMR,
/// NET and BPN unmatched, so they give no `use`.
fn contact_use(code: &str) -> Option<&'static str> {
    Some(match code {
        "PRN" => "home",
        "WPN" => "work",
        "PRS" => "mobile",
        _ => return None,
    })
}

/// HL7 table 0202 (telecommunication equipment type) → FHIR
/// `contact-point-system`, per the v2-to-FHIR ConceptMap
/// `table-hl70202-to-contact-point-system` (`input/fsh/Table HL70202 to
/// Contact Point System.fsh`). CP (cellular) is mapped by that file's
/// second group to use `mobile` (`equipment_use`); its system is `phone`.
fn equipment_system(code: &str) -> Option<&'static str> {
    Some(match code {
        "PH" | "CP" => "phone",
        "FX" => "fax",
        "MD" | "SAT" | "TDD" | "TTY" => "other",
        "BP" => "pager",
        "Internet" | "X.400" => "email",
        _ => return None,
    })
}

/// The `use` implied by the equipment type: CP → mobile (second group of
/// `Table HL70202 to Contact Point System.fsh`).
fn equipment_use(code: &str) -> Option<&'static str> {
    (code == "CP").then_some("mobile")
}

/// The system when XTN.3 is empty or unknown (it was optional before v2.7).
///
/// - XTN.2 NET (network/email) → `email`, BPN (beeper) → `pager`: the
///   use code names the medium, and v2.3 senders often send only it;
/// - XTN.4 valued → `email` (v2-to-FHIR map `XTN[ContactPoint]`, XTN.3
///   rule "IF XTN.3 NOT VALUED AND XTN.4 VALUED");
/// - a number under any other table 0201 code, or with no code → `phone`
///   when it looks like one (digits, `+ ()-.` and an `X` extension as in
///   the v2.3 `[NNN] [(999)]999-9999 [X99999]` form), `email` when it
///   contains `@`, otherwise `other`. FHIR requires a system whenever a
///   value is present (invariant cpt-2); the IG would send a
///   data-absent-reason instead, which this gateway does not emit.
fn inferred_system(use_code: Option<&str>, email: bool, number: &str) -> &'static str {
    match use_code {
        Some("NET") => return "email",
        Some("BPN") => return "pager",
        _ => {}
    }
    if email || number.contains('@') {
        "email"
    } else if number.chars().any(|c| c.is_ascii_digit())
        && number.chars().all(|c| {
            c.is_ascii_digit() || matches!(c, '+' | ' ' | '(' | ')' | '-' | '.' | 'X' | 'x')
        })
    {
        "phone"
    } else {
        "other"
    }
}

/// A number composed from the v2.5 parts XTN.5 country, XTN.6 area/city,
/// XTN.7 local number and XTN.8 extension, as the v2-to-FHIR map
/// `XTN[ContactPoint]` assembles them (`+44 20 7946000 X123`); `None`
/// without a local number.
fn composed_number(rep: &Rep<'_>) -> Option<String> {
    let local = component_text(rep, 7)?;
    let mut parts = Vec::new();
    if let Some(country) = component_text(rep, 5) {
        parts.push(format!("+{}", country.trim_start_matches('+')));
    }
    parts.extend(component_text(rep, 6));
    parts.push(local);
    if let Some(extension) = component_text(rep, 8) {
        parts.push(format!("X{extension}"));
    }
    Some(parts.join(" "))
}

/// HL7 XTN (§2A.90, v2.3 and v2.5 layouts) → FHIR ContactPoint
/// `{system, value, use}`.
///
/// - value: for email (XTN.3 Internet/X.400, or XTN.2 NET) XTN.4, falling
///   back to XTN.1 where v2.3 senders put the address; otherwise XTN.1 (the
///   v2.3 formatted number, kept as a string), else v2.5's XTN.12
///   unformatted number, else XTN.5-8 composed (`composed_number`), else
///   XTN.4 when XTN.3 is empty or unknown;
/// - system: XTN.3 (`equipment_system`) or inferred (`inferred_system`);
/// - use: CP → mobile, else XTN.2 (`contact_use`).
///
/// `None` when there is no value. Never `Err` today (nothing in an XTN is
/// rejected).
pub fn contact_point(rep: Rep<'_>, _location: &str) -> Result<Option<Value>, DataError> {
    let number = component_text(&rep, 1);
    let use_code = component_text(&rep, 2);
    let equipment = component_text(&rep, 3);
    let email = component_text(&rep, 4);
    let explicit = equipment.as_deref().and_then(equipment_system);
    let is_email =
        explicit == Some("email") || (explicit.is_none() && use_code.as_deref() == Some("NET"));
    let value = if is_email {
        email.clone().or(number)
    } else {
        number
            .or_else(|| component_text(&rep, 12))
            .or_else(|| composed_number(&rep))
            .or_else(|| explicit.is_none().then(|| email.clone()).flatten())
    };
    let Some(value) = value else {
        return Ok(None);
    };
    let system = explicit.unwrap_or_else(|| {
        let from_email = email.as_deref() == Some(value.as_str());
        inferred_system(use_code.as_deref(), from_email, &value)
    });
    let contact_use = equipment
        .as_deref()
        .and_then(equipment_use)
        .or_else(|| use_code.as_deref().and_then(contact_use));
    let mut out = Map::new();
    put_str(&mut out, "system", Some(system));
    put_str(&mut out, "value", Some(value));
    put_str(&mut out, "use", contact_use);
    Ok(Some(Value::Object(out)))
}

// ---------------------------------------------------------------------------
// Table 0001 → administrative-gender
// ---------------------------------------------------------------------------

/// HL7 table 0001 (administrative sex) → FHIR `administrative-gender`, per
/// the v2-to-FHIR ConceptMap `table-hl70001-to-administrative-gender`
/// (`input/fsh/Table HL70001 to Administrative Gender.fsh`): M male,
/// F female, O other, U unknown, A (ambiguous) other, N (not applicable)
/// other. Codes are case-sensitive (the table is upper-case); surrounding
/// whitespace is trimmed. Anything else is an error.
pub fn gender(value: &str, location: &str) -> Result<Option<&'static str>, DataError> {
    let Some(code) = non_empty(value) else {
        return Ok(None);
    };
    match code {
        "M" => Ok(Some("male")),
        "F" => Ok(Some("female")),
        "O" | "A" | "N" => Ok(Some("other")),
        "U" => Ok(Some("unknown")),
        _ => Err(DataError::new(
            Condition::TableValueNotFound,
            location,
            format!(
                "{} is not an HL7 table 0001 administrative sex (M, F, O, U, A, N)",
                quote(code)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::er7::{Delimiters, Message};
    use super::super::escape::escape;
    use super::*;
    use jiff::Timestamp;

    #[test]
    fn times_are_written_as_format_would() {
        for (n, width) in [
            (0, 2),
            (7, 2),
            (59, 2),
            (2026, 4),
            (1, 4),
            (12345, 4),
            (u32::MAX, 2),
        ] {
            let mut s = String::new();
            push_padded(&mut s, n, width);
            assert_eq!(s, format!("{n:0width$}"));
        }
        for seconds in [0i32, 3600, -3600, 5400, -34200, 50400] {
            let minutes = seconds.unsigned_abs() / 60;
            let sign = if seconds < 0 { '-' } else { '+' };
            let expected = format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60);
            assert_eq!(fhir_offset(seconds), expected);
        }
        let dt = jiff::civil::date(987, 3, 5).at(7, 4, 9, 0);
        assert_eq!(fhir_local(dt, ""), "0987-03-05T07:04:09");
        assert_eq!(fhir_local(dt, "25"), "0987-03-05T07:04:09.25");
    }

    // -- fixtures ----------------------------------------------------------

    /// Runs `f` on PID-5 repetition 1 of a message whose PID-5 is `field`
    /// (`None` when the field is empty, i.e. absent).
    fn with_field<T>(field: &str, f: impl FnOnce(Option<Rep<'_>>) -> T) -> T {
        let raw = format!(
            "MSH|^~\\&|SND|FAC|RCV|FAC|20260101000000||ADT^A01|1|P|2.4\rPID|1||123||{field}"
        );
        let msg = Message::parse(&raw).expect("fixture parses");
        let rep = msg
            .segment("PID")
            .and_then(|s| s.field(5))
            .and_then(|f| f.repetition(1));
        f(rep)
    }

    fn with_rep<T>(field: &str, f: impl FnOnce(Rep<'_>) -> T) -> T {
        with_field(field, |rep| f(rep.expect("field present")))
    }

    fn json(value: Option<Value>) -> String {
        value.map_or_else(|| "None".to_owned(), |v| v.to_string())
    }

    fn name(field: &str) -> String {
        with_rep(field, |r| json(human_name(r, "PID-5").unwrap()))
    }

    fn addr(field: &str) -> String {
        with_rep(field, |r| json(address(r, "PID-11").unwrap()))
    }

    fn telecom(field: &str) -> String {
        with_rep(field, |r| json(contact_point(r, "PID-13").unwrap()))
    }

    /// The FHIR value of a DTM that must convert without a note.
    fn plain(raw: &str) -> String {
        let got = dtm(raw, "EVN-2").unwrap().unwrap();
        assert_eq!(got.note, None, "{raw}");
        got.value
    }

    fn noted(raw: &str) -> Instant {
        let got = dtm(raw, "EVN-2").unwrap().unwrap();
        assert!(got.note.is_some(), "{raw} should carry a note");
        got
    }

    fn reason(raw: &str) -> String {
        let err = dtm(raw, "PID-7").unwrap_err();
        assert_eq!(err.location, "PID-7");
        assert!(err.reason.starts_with("'"), "{}", err.reason);
        err.reason
    }

    // -- DTM: Europe/London, 2026 -------------------------------------------

    #[test]
    fn gmt_before_march_2026_change() {
        assert_eq!(plain("20260329005959"), "2026-03-29T00:59:59+00:00");
        assert_eq!(plain("20260115093000"), "2026-01-15T09:30:00+00:00");
    }

    #[test]
    fn bst_after_march_2026_change() {
        assert_eq!(plain("20260329020000"), "2026-03-29T02:00:00+01:00");
        assert_eq!(plain("20260329120000"), "2026-03-29T12:00:00+01:00");
    }

    #[test]
    fn bst_before_october_2026_change() {
        assert_eq!(plain("20261025005959"), "2026-10-25T00:59:59+01:00");
        assert_eq!(plain("20260715160000"), "2026-07-15T16:00:00+01:00");
    }

    #[test]
    fn gmt_after_october_2026_change() {
        assert_eq!(plain("20261025020000"), "2026-10-25T02:00:00+00:00");
        assert_eq!(plain("20261225083000"), "2026-12-25T08:30:00+00:00");
    }

    #[test]
    fn repeated_hour_reads_as_first_bst() {
        let got = noted("20261025013000");
        assert_eq!(got.value, "2026-10-25T01:30:00+01:00");
        assert_eq!(
            got.note.as_deref(),
            Some(
                "local time 2026-10-25T01:30:00 occurs twice in Europe/London \
                 (clocks go back); read as the first, BST +01:00"
            )
        );
        assert_eq!(noted("20261025010000").value, "2026-10-25T01:00:00+01:00");
        assert_eq!(noted("20261025015959").value, "2026-10-25T01:59:59+01:00");
    }

    #[test]
    fn skipped_hour_reads_as_clock_before_change() {
        let got = noted("20260329013000");
        assert_eq!(got.value, "2026-03-29T02:30:00+01:00");
        assert_eq!(
            got.note.as_deref(),
            Some(
                "local time 2026-03-29T01:30:00 does not exist in Europe/London \
                 (clocks go forward); read as the sender's clock before the change, \
                 GMT +00:00, which is 2026-03-29T02:30:00+01:00 BST"
            )
        );
        assert_eq!(noted("20260329010000").value, "2026-03-29T02:00:00+01:00");
        assert_eq!(noted("2026032901").value, "2026-03-29T02:00:00+01:00");
        assert_eq!(
            noted("20260329015959.25").value,
            "2026-03-29T02:59:59.25+01:00"
        );
    }

    // -- DTM: Europe/London, 2025 -------------------------------------------

    #[test]
    fn clock_changes_2025() {
        assert_eq!(plain("20250330005959"), "2025-03-30T00:59:59+00:00");
        assert_eq!(noted("20250330013000").value, "2025-03-30T02:30:00+01:00");
        assert_eq!(plain("20250330020000"), "2025-03-30T02:00:00+01:00");
        assert_eq!(plain("20251026005959"), "2025-10-26T00:59:59+01:00");
        assert_eq!(noted("20251026013000").value, "2025-10-26T01:30:00+01:00");
        assert_eq!(plain("20251026020000"), "2025-10-26T02:00:00+00:00");
        // The 2026 change dates are ordinary days in 2025.
        assert_eq!(plain("20250329013000"), "2025-03-29T01:30:00+00:00");
        assert_eq!(plain("20251025013000"), "2025-10-25T01:30:00+01:00");
    }

    /// Every hour of 2026: the offset chosen is BST exactly when the instant
    /// lies between the two 2026 changes (29 March and 25 October, 01:00
    /// UTC), and notes appear only on the two transition hours.
    #[test]
    fn every_hour_of_2026_gets_the_right_offset() {
        let bst_start: Timestamp = "2026-03-29T01:00:00Z".parse().unwrap();
        let bst_end: Timestamp = "2026-10-25T01:00:00Z".parse().unwrap();
        let mut notes = 0;
        let mut day = jiff::civil::date(2026, 1, 1);
        while day.year() == 2026 {
            for hour in 0..24 {
                let raw = format!(
                    "{:04}{:02}{:02}{hour:02}30",
                    day.year(),
                    day.month(),
                    day.day()
                );
                let got = dtm(&raw, "EVN-2").unwrap().unwrap();
                notes += usize::from(got.note.is_some());
                let at: Timestamp = got.value.parse().unwrap();
                let bst = at >= bst_start && at < bst_end;
                let want = if bst { "+01:00" } else { "+00:00" };
                assert!(got.value.ends_with(want), "{raw} -> {}", got.value);
            }
            day = day.tomorrow().unwrap();
        }
        assert_eq!(notes, 2);
    }

    // -- DTM: precision, offsets, fractions ----------------------------------

    #[test]
    fn precision_year_month_day_gives_dates() {
        assert_eq!(plain("2026"), "2026");
        assert_eq!(plain("202603"), "2026-03");
        assert_eq!(plain("20260329"), "2026-03-29");
        // An offset on a date is validated but FHIR dates carry none.
        assert_eq!(plain("20260329+0100"), "2026-03-29");
        assert_eq!(plain("2026-0500"), "2026");
    }

    #[test]
    fn hours_and_minutes_are_padded() {
        assert_eq!(plain("2026011514"), "2026-01-15T14:00:00+00:00");
        assert_eq!(plain("202601151405"), "2026-01-15T14:05:00+00:00");
        assert_eq!(plain("2026071514"), "2026-07-15T14:00:00+01:00");
    }

    #[test]
    fn offsets_are_kept_as_given() {
        assert_eq!(plain("20260115120000+0100"), "2026-01-15T12:00:00+01:00");
        assert_eq!(plain("20260715120000-0500"), "2026-07-15T12:00:00-05:00");
        assert_eq!(plain("20260715120000+0000"), "2026-07-15T12:00:00+00:00");
        assert_eq!(plain("20260715120000-0000"), "2026-07-15T12:00:00-00:00");
        assert_eq!(plain("20260715120000+0530"), "2026-07-15T12:00:00+05:30");
        assert_eq!(plain("20260715120000-1400"), "2026-07-15T12:00:00-14:00");
        // A sent offset overrides the zone even inside the skipped hour.
        assert_eq!(plain("20260329013000+0000"), "2026-03-29T01:30:00+00:00");
        assert_eq!(plain("2026032914+0100"), "2026-03-29T14:00:00+01:00");
    }

    #[test]
    fn fractional_seconds_are_kept() {
        assert_eq!(plain("20260115120000.1"), "2026-01-15T12:00:00.1+00:00");
        assert_eq!(plain("20260115120000.12"), "2026-01-15T12:00:00.12+00:00");
        assert_eq!(plain("20260715120000.123"), "2026-07-15T12:00:00.123+01:00");
        assert_eq!(
            plain("20260715120000.1234-0500"),
            "2026-07-15T12:00:00.1234-05:00"
        );
        assert_eq!(
            plain("20260115120000.0000"),
            "2026-01-15T12:00:00.0000+00:00"
        );
    }

    #[test]
    fn whitespace_is_trimmed() {
        assert_eq!(plain("  20260115120000 \t"), "2026-01-15T12:00:00+00:00");
        assert_eq!(plain(" 2026 "), "2026");
    }

    #[test]
    fn empty_and_null_dtm_are_none() {
        assert_eq!(dtm("", "EVN-2"), Ok(None));
        assert_eq!(dtm("   ", "EVN-2"), Ok(None));
        with_field("\"\"", |rep| assert_eq!(ts(rep, "EVN-2"), Ok(None)));
        with_field(" \"\" ", |rep| assert_eq!(ts(rep, "EVN-2"), Ok(None)));
        // Decoded text: a `""` here was escaped, and is no date.
        assert!(dtm("\"\"", "EVN-2").is_err());
    }

    #[test]
    fn calendar_edges() {
        assert_eq!(plain("20240229"), "2024-02-29");
        assert_eq!(plain("20000229"), "2000-02-29");
        assert_eq!(plain("00010101"), "0001-01-01");
        assert_eq!(plain("99991231"), "9999-12-31");
        assert_eq!(
            plain("99991231235959.9999"),
            "9999-12-31T23:59:59.9999+00:00"
        );
        assert_eq!(plain("99991231235959"), "9999-12-31T23:59:59+00:00");
        let lmt = noted("18000101120000");
        assert_eq!(lmt.value, "1800-01-01T12:01:15+00:00");
        assert!(
            lmt.note.unwrap().contains("local mean time"),
            "pre-1847 London"
        );
    }

    // -- DTM: errors -------------------------------------------------------

    #[test]
    fn non_digits_are_rejected() {
        assert_eq!(
            reason("2026O1"),
            "'2026O1' is not an HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]): \
             'O' is not a digit"
        );
        assert!(reason("2026-01-01").contains("offset '-01-01'"));
        assert!(reason("2026/01/01").contains("'/' is not a digit"));
        assert!(reason("20260101T1200").contains("'T' is not a digit"));
        assert!(reason("2026.5").contains("fractional seconds need"));
    }

    #[test]
    fn wrong_lengths_are_rejected() {
        for (raw, n) in [
            ("20260", 5),
            ("2026011", 7),
            ("202601151", 9),
            ("20260115123", 11),
            ("2026011512345", 13),
            ("202", 3),
            ("", 0),
        ] {
            if raw.is_empty() {
                continue;
            }
            let why = reason(raw);
            assert!(
                why.ends_with(&format!(
                    "the date/time part has {n} digits; expected 4, 6, 8, 10, 12 or 14"
                )),
                "{why}"
            );
        }
        assert!(reason("+0100").contains("has 0 digits"));
    }

    #[test]
    fn out_of_range_fields_are_rejected() {
        assert!(reason("202613").ends_with("month 13 is not 01 to 12"));
        assert!(reason("202600").ends_with("month 00 is not 01 to 12"));
        assert!(reason("20230230").ends_with("day 30 is not in the calendar for 2023-02"));
        assert!(reason("20250229").ends_with("day 29 is not in the calendar for 2025-02"));
        assert!(reason("19000229").contains("day 29"));
        assert!(reason("20260431").contains("day 31"));
        assert!(reason("20260100").contains("day 00"));
        assert!(reason("2026010124").ends_with("hour 24 is not 00 to 23"));
        assert!(reason("202601011260").ends_with("minute 60 is not 00 to 59"));
        assert!(reason("20260101120060").ends_with("second 60 is not 00 to 59"));
        assert!(reason("0000").ends_with("year 0000 does not exist"));
        assert!(reason("00000101").contains("year 0000"));
    }

    #[test]
    fn bad_offsets_are_rejected() {
        assert_eq!(
            reason("20260101120000+2400"),
            "'20260101120000+2400' is not an HL7 DTM \
             (YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]): \
             offset '+2400' is not a UTC offset between -14:00 and +14:00"
        );
        assert!(
            reason("20260101120000+01")
                .ends_with("offset '+01' must be a sign and four digits (+ZZZZ or -ZZZZ)")
        );
        assert!(reason("20260101120000+01000").contains("four digits"));
        assert!(reason("20260101120000+").contains("four digits"));
        assert!(reason("20260101120000+0160").contains("between -14:00 and +14:00"));
        assert!(reason("20260101120000+1401").contains("between -14:00 and +14:00"));
        assert!(reason("20260101120000+01:00").contains("':' is not a digit"));
        assert!(reason("20260101120000+0100-0100").contains("four digits"));
    }

    #[test]
    fn bad_fractions_are_rejected() {
        assert!(reason("202601011200.5").contains("fractional seconds need"));
        assert!(reason("20260101120000.12345").contains("1 to 4 digits"));
        assert!(reason("20260101120000.").contains("1 to 4 digits"));
        assert!(reason("20260101120000.1.2").contains("1 to 4 digits"));
    }

    #[test]
    fn overlong_values_are_rejected_before_parsing() {
        let long = "2026010112000000000000000"; // 25 characters
        assert_eq!(
            reason(long),
            "'2026010112000000000000000' is longer than the 24 characters \
             of the longest HL7 DTM"
        );
        let huge = "9".repeat(10_000);
        let why = reason(&huge);
        assert!(why.len() < 200, "quoted value is cut: {why}");
        assert!(why.contains("…'"));
        // Exactly 24 characters is the longest valid form.
        assert_eq!(
            plain("20260101120000.1234+0100"),
            "2026-01-01T12:00:00.1234+01:00"
        );
    }

    // -- TS (Rep) ------------------------------------------------------------

    #[test]
    fn ts_reads_the_first_component() {
        with_field("20260715120000^S", |rep| {
            let got = ts(rep, "PID-5").unwrap().unwrap();
            assert_eq!(got.value, "2026-07-15T12:00:00+01:00");
        });
        with_field("20261025013000", |rep| {
            let got = ts(rep, "EVN-2").unwrap().unwrap();
            assert!(got.note.unwrap().contains("occurs twice"));
        });
    }

    #[test]
    fn ts_empty_null_and_absent_are_none() {
        assert_eq!(ts(None, "PID-7"), Ok(None));
        with_field("", |rep| assert_eq!(ts(rep, "PID-7"), Ok(None)));
        with_field("\"\"", |rep| assert_eq!(ts(rep, "PID-7"), Ok(None)));
        with_field("^S", |rep| assert_eq!(ts(rep, "PID-7"), Ok(None)));
    }

    #[test]
    fn ts_errors_carry_the_location() {
        with_field("20231301", |rep| {
            let err = ts(rep, "PV1-44").unwrap_err();
            assert_eq!(err.location, "PV1-44");
            assert!(err.reason.starts_with("'20231301'"));
            assert_eq!(err.to_string(), err.reason);
        });
    }

    // -- DT / birth dates ----------------------------------------------------

    fn birth(field: &str) -> Result<Option<String>, DataError> {
        with_field(field, |rep| date(rep, "PID-7"))
    }

    #[test]
    fn birth_dates_at_each_precision() {
        assert_eq!(birth("1980"), Ok(Some("1980".to_owned())));
        assert_eq!(birth("198006"), Ok(Some("1980-06".to_owned())));
        assert_eq!(birth("19800615"), Ok(Some("1980-06-15".to_owned())));
        assert_eq!(birth(" 19800615 "), Ok(Some("1980-06-15".to_owned())));
    }

    #[test]
    fn birth_dates_are_never_shifted() {
        // 00:30 BST is 23:30 UTC the day before; the date stays as sent.
        assert_eq!(birth("20260715003000"), Ok(Some("2026-07-15".to_owned())));
        assert_eq!(
            birth("20260715003000+1400"),
            Ok(Some("2026-07-15".to_owned()))
        );
        assert_eq!(
            birth("19800101235959-1200"),
            Ok(Some("1980-01-01".to_owned()))
        );
        // Inside the skipped hour, still the sent date.
        assert_eq!(birth("20260329013000"), Ok(Some("2026-03-29".to_owned())));
        assert_eq!(birth("19800101^D"), Ok(Some("1980-01-01".to_owned())));
    }

    #[test]
    fn birth_date_empty_null_absent() {
        assert_eq!(date(None, "PID-7"), Ok(None));
        assert_eq!(birth(""), Ok(None));
        assert_eq!(birth("\"\""), Ok(None));
    }

    #[test]
    fn birth_date_errors() {
        let err = birth("20250229").unwrap_err();
        assert_eq!(err.location, "PID-7");
        assert!(
            err.reason
                .ends_with("day 29 is not in the calendar for 2025-02")
        );
        assert!(
            birth("19800101250000")
                .unwrap_err()
                .reason
                .contains("hour 25")
        );
        assert!(birth("1980010").unwrap_err().reason.contains("7 digits"));
        assert!(birth("0000").unwrap_err().reason.contains("year 0000"));
        let long = "1".repeat(25);
        assert!(birth(&long).unwrap_err().reason.contains("longer than"));
    }

    // -- XPN -----------------------------------------------------------------

    #[test]
    fn full_name_in_fhir_order() {
        assert_eq!(
            name("SMITH^JOHN^PAUL^JR^MR^^L"),
            r#"{"use":"official","family":"SMITH","given":["JOHN","PAUL"],"prefix":["MR"],"suffix":["JR"]}"#
        );
    }

    #[test]
    fn family_is_the_first_fn_subcomponent() {
        assert_eq!(
            name("SMITH&VAN^JAN"),
            r#"{"family":"SMITH","given":["JAN"]}"#
        );
        assert_eq!(name("&VAN^JAN"), r#"{"given":["JAN"]}"#);
    }

    #[test]
    fn name_with_only_a_prefix() {
        assert_eq!(name("^^^^DR"), r#"{"prefix":["DR"]}"#);
    }

    #[test]
    fn further_given_names_are_one_entry_as_sent() {
        assert_eq!(
            name("SMITH^MARY^ANNE LOUISE"),
            r#"{"family":"SMITH","given":["MARY","ANNE LOUISE"]}"#
        );
        assert_eq!(name("SMITH^^J"), r#"{"family":"SMITH","given":["J"]}"#);
    }

    #[test]
    fn case_and_escapes_are_kept() {
        assert_eq!(
            name("McDONALD^mary"),
            r#"{"family":"McDONALD","given":["mary"]}"#
        );
        assert_eq!(
            name("SMITH\\S\\JONES^ANN"),
            r#"{"family":"SMITH^JONES","given":["ANN"]}"#
        );
        assert_eq!(name("O'BRIEN"), r#"{"family":"O'BRIEN"}"#);
    }

    #[test]
    fn degree_is_a_second_suffix() {
        assert_eq!(
            name("SMITH^JOHN^^JR^DR^PHD"),
            r#"{"family":"SMITH","given":["JOHN"],"prefix":["DR"],"suffix":["JR","PHD"]}"#
        );
    }

    #[test]
    fn name_type_codes_follow_the_concept_map() {
        for (code, want) in [
            ("L", Some("official")),
            ("R", Some("official")),
            ("D", Some("usual")),
            ("M", Some("maiden")),
            ("N", Some("nickname")),
            ("MSK", Some("anonymous")),
            ("BAD", Some("old")),
            ("NAV", Some("temp")),
            ("TEMP", Some("temp")),
            ("A", None),
            ("C", None),
            ("U", None),
            ("l", None),
            ("ZZZ", None),
        ] {
            let got = name(&format!("SMITH^^^^^^{code}"));
            let expected = match want {
                Some(u) => format!(r#"{{"use":"{u}","family":"SMITH"}}"#),
                None => r#"{"family":"SMITH"}"#.to_owned(),
            };
            assert_eq!(got, expected, "XPN.7 {code}");
        }
    }

    #[test]
    fn empty_names_are_none() {
        assert_eq!(name("^^^"), "None");
        assert_eq!(name("\"\""), "None");
        assert_eq!(name("^^^^^^L"), "None");
        assert_eq!(name(" ^ ^\"\""), "None");
    }

    #[test]
    fn an_escaped_pair_of_quotes_is_text_not_null() {
        // `\X2222\` is how `escape::encode` writes a literal `""`.
        assert_eq!(
            name("\\X2222\\^JOHN"),
            r#"{"family":"\"\"","given":["JOHN"]}"#
        );
        assert_eq!(name("\"\"^JOHN"), r#"{"given":["JOHN"]}"#);
        with_field("\\X2222\\", |rep| {
            assert!(ts(rep, "PID-7").is_err(), "a literal \"\" is no date")
        });
    }

    // -- XAD -----------------------------------------------------------------

    #[test]
    fn nhs_address_in_fhir_order() {
        assert_eq!(
            addr("1 HIGH STREET^FLAT 2^LEEDS^WEST YORKSHIRE^LS1 1AA^GBR^H"),
            r#"{"use":"home","line":["1 HIGH STREET","FLAT 2"],"city":"LEEDS","district":"WEST YORKSHIRE","postalCode":"LS1 1AA","country":"GBR"}"#
        );
    }

    #[test]
    fn subcomponent_escape_reads_as_ampersand() {
        assert_eq!(
            addr("SMITH \\T\\ SONS YARD^^YORK"),
            r#"{"line":["SMITH & SONS YARD"],"city":"YORK"}"#
        );
        assert_eq!(
            addr("1 HIGH ST^FLAT A\\T\\B^YORK"),
            r#"{"line":["1 HIGH ST","FLAT A&B"],"city":"YORK"}"#
        );
    }

    /// Delimiters in data, escaped by our own writer (§2.7.4), read back
    /// unchanged in every address part.
    #[test]
    fn escaped_delimiters_round_trip() {
        let text = r"A & B ^ C ~ D \ E | F";
        let e = escape(text, &Delimiters::default());
        assert_eq!(
            addr(&format!("{e}^{e}^{e}^{e}^{e}^{e}")),
            serde_json::json!({
                "line": [text, text],
                "city": text,
                "district": text,
                "postalCode": text,
                "country": text,
            })
            .to_string()
        );
    }

    #[test]
    fn street_is_the_first_sad_subcomponent() {
        assert_eq!(
            addr("1 HIGH ST&HIGH ST&1^^LEEDS"),
            r#"{"line":["1 HIGH ST"],"city":"LEEDS"}"#
        );
    }

    #[test]
    fn address_types_follow_the_concept_maps() {
        for (code, want) in [
            ("H", r#""use":"home","#),
            ("B", r#""use":"work","#),
            ("O", r#""use":"work","#),
            ("C", r#""use":"temp","#),
            ("BA", r#""use":"old","#),
            ("BI", r#""use":"billing","#),
            ("M", r#""type":"postal","#),
            ("SH", r#""type":"postal","#),
            ("N", ""),
            ("L", ""),
            ("XX", ""),
        ] {
            assert_eq!(
                addr(&format!("^^LEEDS^^^^{code}")),
                format!(r#"{{{want}"city":"LEEDS"}}"#),
                "XAD.7 {code}"
            );
        }
    }

    #[test]
    fn empty_addresses_are_none() {
        assert_eq!(addr("^^^^^^H"), "None");
        assert_eq!(addr("\"\""), "None");
        assert_eq!(addr("^"), "None");
    }

    #[test]
    fn postcode_only_address() {
        assert_eq!(addr("^^^^LS1 1AA"), r#"{"postalCode":"LS1 1AA"}"#);
    }

    // -- XTN -----------------------------------------------------------------

    #[test]
    fn v23_phone_numbers() {
        assert_eq!(
            telecom("0113 2123456^PRN^PH"),
            r#"{"system":"phone","value":"0113 2123456","use":"home"}"#
        );
        assert_eq!(
            telecom("0113 2123456^WPN^FX"),
            r#"{"system":"fax","value":"0113 2123456","use":"work"}"#
        );
        assert_eq!(
            telecom("07700 900123^PRN^CP"),
            r#"{"system":"phone","value":"07700 900123","use":"mobile"}"#
        );
        assert_eq!(
            telecom("(0113)212-3456X99^PRS^PH"),
            r#"{"system":"phone","value":"(0113)212-3456X99","use":"mobile"}"#
        );
        assert_eq!(
            telecom("01234 567890^BPN^BP"),
            r#"{"system":"pager","value":"01234 567890"}"#
        );
    }

    #[test]
    fn unmatched_use_codes_give_no_use() {
        for code in ["ORN", "VHN", "ASN", "EMR", "XYZ"] {
            assert_eq!(
                telecom(&format!("01234 567890^{code}^PH")),
                r#"{"system":"phone","value":"01234 567890"}"#,
                "XTN.2 {code}"
            );
        }
    }

    #[test]
    fn equipment_types_follow_the_concept_map() {
        for (code, system) in [
            ("PH", "phone"),
            ("FX", "fax"),
            ("MD", "other"),
            ("SAT", "other"),
            ("BP", "pager"),
            ("TDD", "other"),
            ("TTY", "other"),
        ] {
            assert_eq!(
                telecom(&format!("01234^^{code}")),
                format!(r#"{{"system":"{system}","value":"01234"}}"#),
                "XTN.3 {code}"
            );
        }
    }

    #[test]
    fn email_addresses() {
        assert_eq!(
            telecom("^NET^Internet^jo.bloggs@nhs.net"),
            r#"{"system":"email","value":"jo.bloggs@nhs.net"}"#
        );
        assert_eq!(
            telecom("^^X.400^C=GB;O=NHS"),
            r#"{"system":"email","value":"C=GB;O=NHS"}"#
        );
        // v2.3 senders: the address in XTN.1, only the use code to say so.
        assert_eq!(
            telecom("jo.bloggs@nhs.net^NET"),
            r#"{"system":"email","value":"jo.bloggs@nhs.net"}"#
        );
        assert_eq!(
            telecom("^^^jo.bloggs@nhs.net"),
            r#"{"system":"email","value":"jo.bloggs@nhs.net"}"#
        );
        // A phone-type XTN does not take its value from XTN.4.
        assert_eq!(telecom("^PRN^PH^jo.bloggs@nhs.net"), "None");
    }

    #[test]
    fn system_inferred_without_equipment_type() {
        assert_eq!(
            telecom("0113 2123456^PRN"),
            r#"{"system":"phone","value":"0113 2123456","use":"home"}"#
        );
        assert_eq!(
            telecom("(0113)212-3456X99^WPN"),
            r#"{"system":"phone","value":"(0113)212-3456X99","use":"work"}"#
        );
        assert_eq!(
            telecom("X^WPN"),
            r#"{"system":"other","value":"X","use":"work"}"#
        );
        assert_eq!(
            telecom("+44 (113) 212-3456"),
            r#"{"system":"phone","value":"+44 (113) 212-3456"}"#
        );
        assert_eq!(
            telecom("07700900123^BPN"),
            r#"{"system":"pager","value":"07700900123"}"#
        );
        assert_eq!(
            telecom("ask at desk^WPN"),
            r#"{"system":"other","value":"ask at desk","use":"work"}"#
        );
        assert_eq!(
            telecom("0113 2123456^PRN^ZZ"),
            r#"{"system":"phone","value":"0113 2123456","use":"home"}"#
        );
    }

    #[test]
    fn v25_unformatted_number_when_xtn1_is_empty() {
        assert_eq!(
            telecom("^PRN^PH^^44^113^2123456^^^^^01132123456"),
            r#"{"system":"phone","value":"01132123456","use":"home"}"#
        );
        // XTN.1 wins when both are sent.
        assert_eq!(
            telecom("0113 2123456^PRN^PH^^^^^^^^^01132123456"),
            r#"{"system":"phone","value":"0113 2123456","use":"home"}"#
        );
    }

    #[test]
    fn v25_number_composed_from_parts() {
        assert_eq!(
            telecom("^WPN^PH^^44^113^2123456^99"),
            r#"{"system":"phone","value":"+44 113 2123456 X99","use":"work"}"#
        );
        assert_eq!(
            telecom("^WPN^PH^^^0113^2123456"),
            r#"{"system":"phone","value":"0113 2123456","use":"work"}"#
        );
        assert_eq!(telecom("^WPN^PH^^44^113"), "None");
    }

    #[test]
    fn empty_contact_points_are_none() {
        assert_eq!(telecom("^PRN^PH"), "None");
        assert_eq!(telecom("\"\""), "None");
        assert_eq!(telecom("^^CP"), "None");
    }

    // -- gender --------------------------------------------------------------

    #[test]
    fn table_0001_codes() {
        for (code, want) in [
            ("M", "male"),
            ("F", "female"),
            ("O", "other"),
            ("U", "unknown"),
            ("A", "other"),
            ("N", "other"),
            (" F ", "female"),
        ] {
            assert_eq!(gender(code, "PID-8"), Ok(Some(want)), "{code:?}");
        }
    }

    #[test]
    fn gender_empty_and_null_are_none() {
        assert_eq!(gender("", "PID-8"), Ok(None));
        assert_eq!(gender("  ", "PID-8"), Ok(None));
        // `gender` takes decoded text: a null `""` arrives empty, and a
        // `""` left after decoding was escaped (`\X2222\`), not a code.
        assert!(gender("\"\"", "PID-8").is_err());
    }

    #[test]
    fn errors_read_back_from_a_quarantine_entrys_reasons() {
        let errors = vec![
            DataError::new(
                Condition::TableValueNotFound,
                "PID-8",
                "'X' is not in table 0001",
            ),
            DataError::new(Condition::DuplicateKey, "MSH-10", "MSH-10 already used"),
        ];
        let written = serde_json::to_string(&errors).unwrap();
        assert_eq!(
            written,
            r#"[{"location":"PID-8","reason":"'X' is not in table 0001","code":103},{"location":"MSH-10","reason":"MSH-10 already used","code":205}]"#
        );
        assert_eq!(DataError::from_reasons(&written), errors);
        // Written before codes were kept: the codes they were answered with.
        let old = format!(
            r#"[{{"location":"PID-7","reason":"bad"}},{{"location":"PV1-19","reason":"visit number is required and missing"}},{{"location":"MSH-10","reason":"{} by journal entry 3"}}]"#,
            super::super::resend::REUSED
        );
        let codes: Vec<u16> = DataError::from_reasons(&old)
            .iter()
            .map(|e| e.condition.code())
            .collect();
        assert_eq!(codes, [102, 101, 205]);
        assert!(DataError::from_reasons("not json").is_empty());
        assert!(DataError::from_reasons(r#"[1, {"location": "PID-3"}]"#).is_empty());
    }

    #[test]
    fn unknown_sex_codes_are_errors() {
        assert_eq!(
            gender("X", "PID-8"),
            Err(DataError {
                location: "PID-8".to_owned(),
                reason: "'X' is not an HL7 table 0001 administrative sex \
                         (M, F, O, U, A, N)"
                    .to_owned(),
                condition: Condition::TableValueNotFound,
            })
        );
        let err = gender("m", "NK1[2]-15").unwrap_err();
        assert_eq!(err.location, "NK1[2]-15");
        assert!(err.reason.starts_with("'m' is not"));
        assert!(gender("MALE", "PID-8").is_err());
    }

    // -- no panics ---------------------------------------------------------

    /// Deterministic xorshift64 generator (no dev-dependencies).
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const WILD: &[char] = &[
        '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '+', '-', '.', '^', '&', '\\', '~', ' ',
        '"', 'a', 'M', 'F', 'T', 'S', 'X', 'E', 'é', '£', '@',
    ];
    const DIGITISH: &[char] = &['0', '1', '2', '3', '4', '5', '6', '9', '+', '-', '.'];

    fn generate(rng: &mut XorShift, alphabet: &[char], max_len: usize) -> String {
        let len = rng.below(max_len + 1);
        (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect()
    }

    /// Runs every mapper on `s`, as text and as every repetition of a field.
    fn exercise(s: &str) {
        let loc = "PID-5";
        if let Err(e) = dtm(s, loc) {
            assert_eq!(e.location, loc);
            assert!(!e.reason.is_empty());
        }
        let _ = gender(s, loc);
        let raw = format!("MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.4\rPID|1||1||{s}");
        let Ok(msg) = Message::parse(&raw) else {
            return;
        };
        let Some(field) = msg.segment("PID").and_then(|seg| seg.field(5)) else {
            return;
        };
        for rep in field.repetitions() {
            let _ = ts(Some(rep), loc);
            let _ = date(Some(rep), loc);
            let _ = human_name(rep, loc);
            let _ = address(rep, loc);
            let _ = contact_point(rep, loc);
        }
    }

    #[test]
    fn generated_input_never_panics() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            exercise(&generate(&mut rng, WILD, 40));
        }
        // Near-valid timestamps reach the calendar and zone code paths.
        for _ in 0..3000 {
            exercise(&generate(&mut rng, DIGITISH, 26));
        }
        let mut ok = 0;
        for _ in 0..2000 {
            let digits = [4, 6, 8, 10, 12, 14][rng.below(6)];
            let mut s: String = (0..digits)
                .map(|_| char::from(b'0' + rng.below(10) as u8))
                .collect();
            if rng.below(2) == 0 {
                s.push_str(&format!(".{}", rng.below(10_000)));
            }
            if rng.below(2) == 0 {
                s.push_str(&format!(
                    "{}{:04}",
                    ["+", "-"][rng.below(2)],
                    rng.below(3000)
                ));
            }
            ok += usize::from(dtm(&s, "EVN-2").is_ok());
            exercise(&s);
        }
        assert!(ok > 0, "some generated timestamps are valid");
    }
}
