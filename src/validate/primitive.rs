//! FHIR R4 primitive types: which JSON value each takes, and the lexical
//! rules of the spec's regular expressions, checked by hand (a regex engine per
//! value would cost more than the rest of the walk). The equivalence with the
//! spec's regexes is tested below, case by case.
//!
//! Dates are checked beyond the regexes: the spec says "Dates SHALL be valid
//! dates", so `2023-02-30` is refused where the regex alone would pass it.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primitive {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

/// The most characters a FHIR string may hold (R4 §2.1.28.0.1: 1 MB).
const MAX_STRING_BYTES: usize = 1024 * 1024;

impl Primitive {
    pub const ALL: [Primitive; 20] = [
        Primitive::Base64Binary,
        Primitive::Boolean,
        Primitive::Canonical,
        Primitive::Code,
        Primitive::Date,
        Primitive::DateTime,
        Primitive::Decimal,
        Primitive::Id,
        Primitive::Instant,
        Primitive::Integer,
        Primitive::Markdown,
        Primitive::Oid,
        Primitive::PositiveInt,
        Primitive::String,
        Primitive::Time,
        Primitive::UnsignedInt,
        Primitive::Uri,
        Primitive::Url,
        Primitive::Uuid,
        Primitive::Xhtml,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Primitive::Base64Binary => "base64Binary",
            Primitive::Boolean => "boolean",
            Primitive::Canonical => "canonical",
            Primitive::Code => "code",
            Primitive::Date => "date",
            Primitive::DateTime => "dateTime",
            Primitive::Decimal => "decimal",
            Primitive::Id => "id",
            Primitive::Instant => "instant",
            Primitive::Integer => "integer",
            Primitive::Markdown => "markdown",
            Primitive::Oid => "oid",
            Primitive::PositiveInt => "positiveInt",
            Primitive::String => "string",
            Primitive::Time => "time",
            Primitive::UnsignedInt => "unsignedInt",
            Primitive::Uri => "uri",
            Primitive::Url => "url",
            Primitive::Uuid => "uuid",
            Primitive::Xhtml => "xhtml",
        }
    }

    /// Checks a JSON value as this primitive. `Err` is the reason, in plain
    /// words, and whether it is the JSON type (`structure`) or the value
    /// (`value`) that is wrong.
    pub fn check(self, value: &Value) -> Result<(), PrimitiveError> {
        match self {
            Primitive::Boolean => match value {
                Value::Bool(_) => Ok(()),
                _ => Err(PrimitiveError::WrongJson("a JSON boolean (true or false)")),
            },
            Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt => {
                let Value::Number(n) = value else {
                    return Err(PrimitiveError::WrongJson("a JSON number"));
                };
                let Some(i) = n.as_i64() else {
                    return Err(PrimitiveError::Value(format!(
                        "{n} is not a whole number in the range of a FHIR {}",
                        self.name()
                    )));
                };
                let low = match self {
                    Primitive::PositiveInt => 1,
                    Primitive::UnsignedInt => 0,
                    _ => i64::from(i32::MIN),
                };
                if i < low || i > i64::from(i32::MAX) {
                    return Err(PrimitiveError::Value(format!(
                        "{i} is out of range for a FHIR {} ({low} to {})",
                        self.name(),
                        i32::MAX
                    )));
                }
                Ok(())
            }
            Primitive::Decimal => match value {
                Value::Number(_) => Ok(()),
                _ => Err(PrimitiveError::WrongJson("a JSON number")),
            },
            _ => {
                let Value::String(s) = value else {
                    return Err(PrimitiveError::WrongJson("a JSON string"));
                };
                self.check_str(s)
            }
        }
    }

    fn check_str(self, s: &str) -> Result<(), PrimitiveError> {
        if s.is_empty() {
            return Err(PrimitiveError::Value(
                "an empty string is not a value: leave the element out instead".to_string(),
            ));
        }
        if s.len() > MAX_STRING_BYTES {
            return Err(PrimitiveError::Value(format!(
                "the value is {} bytes long, over the 1 MB limit of FHIR strings",
                s.len()
            )));
        }
        let ok = match self {
            Primitive::String | Primitive::Markdown => s.chars().any(|c| !c.is_whitespace()),
            Primitive::Code => is_code(s),
            Primitive::Id => super::super::fhir::is_valid_id(s),
            Primitive::Uri | Primitive::Url | Primitive::Canonical => {
                !s.chars().any(char::is_whitespace)
            }
            Primitive::Oid => is_oid(s),
            Primitive::Uuid => is_uuid(s),
            Primitive::Base64Binary => is_base64(s),
            Primitive::Date => is_date(s.as_bytes()),
            Primitive::DateTime => is_date_time(s.as_bytes(), false),
            Primitive::Instant => is_date_time(s.as_bytes(), true),
            Primitive::Time => is_time(s.as_bytes()),
            Primitive::Xhtml => is_xhtml_div(s),
            Primitive::Boolean
            | Primitive::Integer
            | Primitive::PositiveInt
            | Primitive::UnsignedInt
            | Primitive::Decimal => true,
        };
        if ok {
            Ok(())
        } else {
            Err(PrimitiveError::Value(format!(
                "{} is not a valid FHIR {}{}",
                quoted(s),
                self.name(),
                self.expected_form()
            )))
        }
    }

    fn expected_form(self) -> &'static str {
        match self {
            Primitive::Date => " (YYYY, YYYY-MM or YYYY-MM-DD, a real date)",
            Primitive::DateTime => {
                " (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff] with Z or ±hh:mm, a real date)"
            }
            Primitive::Instant => " (YYYY-MM-DDThh:mm:ss[.fff] with Z or ±hh:mm)",
            Primitive::Time => " (hh:mm:ss[.fff])",
            Primitive::Code => " (no leading, trailing or double whitespace)",
            Primitive::Id => " (1 to 64 of A-Z a-z 0-9 - .)",
            Primitive::Uri | Primitive::Url | Primitive::Canonical => " (no whitespace)",
            Primitive::Oid => " (urn:oid: followed by a dotted number)",
            Primitive::Uuid => " (urn:uuid: followed by a lower-case UUID)",
            Primitive::Base64Binary => " (base64)",
            Primitive::Xhtml => {
                " (txt-1, txt-2: an XHTML <div> in the http://www.w3.org/1999/xhtml namespace, with some text or an image, and only basic formatting: no scripts, frames, forms, event handlers or javascript: links)"
            }
            Primitive::String | Primitive::Markdown => " (it holds only whitespace)",
            _ => "",
        }
    }
}

/// Why a primitive value is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimitiveError {
    /// The JSON value is of the wrong kind; holds what was expected.
    WrongJson(&'static str),
    /// The JSON kind is right but the value is not.
    Value(String),
}

/// A value quoted for a diagnostic, cut short if long.
pub fn quoted(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.chars().count() <= SHOWN {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(SHOWN).collect();
        format!("{cut:?}…")
    }
}

/// `[^\s]+(\s[^\s]+)*`: no leading, trailing or doubled whitespace.
fn is_code(s: &str) -> bool {
    let mut previous_space = true;
    for c in s.chars() {
        let space = c.is_whitespace();
        if space && previous_space {
            return false;
        }
        previous_space = space;
    }
    !previous_space
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`
fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut arcs = rest.split('.');
    let first_ok = matches!(arcs.next(), Some("0" | "1" | "2"));
    let mut count = 0;
    let rest_ok = arcs.all(|arc| {
        count += 1;
        !arc.is_empty()
            && arc.bytes().all(|b| b.is_ascii_digit())
            && (arc == "0" || !arc.starts_with('0'))
    });
    first_ok && count > 0 && rest_ok
}

/// `urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`
fn is_uuid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:uuid:") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// `(\s*([0-9a-zA-Z\+/=]){4}\s*)+`
fn is_base64(s: &str) -> bool {
    let mut count = 0usize;
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=' {
            count += 1;
        } else if !b.is_ascii_whitespace() {
            return false;
        }
    }
    count > 0 && count.is_multiple_of(4)
}

/// A narrative `div` as R4 allows it: a `<div>` in the XHTML namespace,
/// with some text or an image (txt-2), holding only the basic formatting
/// elements and attributes of txt-1: no scripts, frames, forms or styles
/// sheets, no event-handler attributes, no `javascript:` links.
fn is_xhtml_div(s: &str) -> bool {
    let t = s.trim();
    let root_is_div = t
        .strip_prefix("<div")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_whitespace() || c == '>' || c == '/'));
    root_is_div
        && t.contains("http://www.w3.org/1999/xhtml")
        && (t.ends_with("</div>") || t.ends_with("/>"))
        && narrative_is_basic(t)
}

/// The elements txt-1 allows (HTML 4.0's basic formatting, tables, lists,
/// links and images).
const NARRATIVE_ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "b",
    "big",
    "blockquote",
    "br",
    "caption",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "li",
    "ol",
    "p",
    "pre",
    "q",
    "samp",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "ul",
    "var",
];

/// txt-1's elements and attributes, and txt-2's content, by a scan of the
/// tags (the markup is not otherwise parsed).
fn narrative_is_basic(t: &str) -> bool {
    let mut text = false;
    let mut rest = t;
    while let Some(open) = rest.find('<') {
        text |= !rest[..open].trim().is_empty();
        let after = &rest[open + 1..];
        if let Some(comment) = after.strip_prefix("!--") {
            let Some(end) = comment.find("-->") else {
                return false;
            };
            rest = &comment[end + 3..];
            continue;
        }
        let Some(close) = after.find('>') else {
            return false;
        };
        let tag = &after[..close];
        rest = &after[close + 1..];
        let tag = tag.strip_prefix('/').unwrap_or(tag).trim_end_matches('/');
        let name_end = tag.find(|c: char| c.is_whitespace()).unwrap_or(tag.len());
        let name = tag[..name_end].to_ascii_lowercase();
        if !NARRATIVE_ELEMENTS.contains(&name.as_str()) {
            return false;
        }
        text |= name == "img";
        let attributes = tag[name_end..].to_ascii_lowercase();
        // An attribute's name is what precedes `=`; event handlers start `on`.
        let handler = attributes
            .split(|c: char| c.is_whitespace())
            .any(|a| a.starts_with("on") && a.contains('='));
        let script_url = attributes
            .replace(char::is_whitespace, "")
            .contains("javascript:");
        if handler || script_url {
            return false;
        }
    }
    text |= !rest.trim().is_empty();
    text
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, a real date; returns the bytes used.
fn date_prefix(b: &[u8]) -> Option<usize> {
    let year = digits(b.get(0..4)?)?;
    if year == 0 {
        return None;
    }
    if b.len() == 4 || b[4] != b'-' {
        return Some(4);
    }
    let month = digits(b.get(5..7)?)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if b.len() == 7 || b[7] != b'-' {
        return Some(7);
    }
    let day = digits(b.get(8..10)?)?;
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(10)
}

fn is_date(b: &[u8]) -> bool {
    date_prefix(b) == Some(b.len())
}

/// `hh:mm:ss(.f+)?` with hh < 24, mm < 60, ss ≤ 60 (a leap second).
fn time_prefix(b: &[u8]) -> Option<usize> {
    let (h, m, s) = (
        digits(b.get(0..2)?)?,
        digits(b.get(3..5)?)?,
        digits(b.get(6..8)?)?,
    );
    if b[2] != b':' || b[5] != b':' || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let mut end = 8;
    if b.get(8) == Some(&b'.') {
        let fraction = b[9..].iter().take_while(|c| c.is_ascii_digit()).count();
        if fraction == 0 {
            return None;
        }
        end = 9 + fraction;
    }
    Some(end)
}

fn is_time(b: &[u8]) -> bool {
    time_prefix(b) == Some(b.len())
}

/// A dateTime (`instant`: seconds and zone required).
fn is_date_time(b: &[u8], instant: bool) -> bool {
    let Some(date_end) = date_prefix(b) else {
        return false;
    };
    if date_end == b.len() {
        return !instant;
    }
    if date_end != 10 || b[10] != b'T' {
        return false;
    }
    let Some(time_len) = time_prefix(&b[11..]) else {
        return false;
    };
    is_zone(&b[11 + time_len..])
}

/// `Z` or `±hh:mm` up to ±14:00.
fn is_zone(b: &[u8]) -> bool {
    match b {
        [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let (Some(h), Some(m)) = (digits(&[*h1, *h2]), digits(&[*m1, *m2])) else {
                return false;
            };
            (h <= 13 && m <= 59) || (h == 14 && m == 0)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(p: Primitive, v: Value) -> bool {
        p.check(&v).is_ok()
    }

    #[test]
    fn dates_follow_the_spec_regex_and_the_calendar() {
        for good in ["2024", "2024-02", "2024-02-29", "1900-12-31", "0001-01-01"] {
            assert!(is_date(good.as_bytes()), "{good}");
        }
        for bad in [
            "2023-02-29",
            "2024-13",
            "2024-00",
            "2024-04-31",
            "24-01-01",
            "2024-1-01",
            "0000",
            "2024-01-01T",
            "2024/01/01",
            "2024-01-1",
            "",
        ] {
            assert!(!is_date(bad.as_bytes()), "{bad}");
        }
        assert!(!is_date("1900-02-29".as_bytes()));
        assert!(is_date("2000-02-29".as_bytes()));
    }

    #[test]
    fn date_times_need_a_zone_once_a_time_is_given() {
        for good in [
            "2024",
            "2024-03-31",
            "2024-03-31T01:30:00Z",
            "2024-03-31T01:30:00.123+01:00",
            "2024-10-27T01:30:00-14:00",
            "2016-12-31T23:59:60Z",
        ] {
            assert!(is_date_time(good.as_bytes(), false), "{good}");
        }
        for bad in [
            "2024-03-31T01:30:00",
            "2024-03-31T01:30Z",
            "2024-03-31T24:00:00Z",
            "2024-03-31T01:30:00+14:30",
            "2024-03-31T01:30:00.Z",
            "2024-03-31 01:30:00Z",
            "2024-03T01:30:00Z",
        ] {
            assert!(!is_date_time(bad.as_bytes(), false), "{bad}");
        }
        assert!(!is_date_time(b"2024-03-31", true));
        assert!(is_date_time(b"2024-03-31T00:00:00.5Z", true));
    }

    #[test]
    fn json_kinds_are_checked() {
        assert!(ok(Primitive::Boolean, json!(true)));
        assert!(!ok(Primitive::Boolean, json!("true")));
        assert!(ok(Primitive::Integer, json!(-3)));
        assert!(!ok(Primitive::Integer, json!(1.5)));
        assert!(!ok(Primitive::Integer, json!("3")));
        assert!(!ok(Primitive::Integer, json!(3_000_000_000i64)));
        assert!(!ok(Primitive::PositiveInt, json!(0)));
        assert!(ok(Primitive::UnsignedInt, json!(0)));
        assert!(ok(Primitive::Decimal, json!(1.50)));
        assert!(!ok(Primitive::Decimal, json!("1.50")));
        assert!(!ok(Primitive::String, json!(3)));
        assert!(!ok(Primitive::String, json!("")));
        assert!(!ok(Primitive::String, json!("   ")));
        assert!(ok(Primitive::String, json!(" a ")));
    }

    #[test]
    fn string_formats_follow_the_spec_regexes() {
        assert!(is_code("in-progress") && is_code("a b"));
        assert!(!is_code(" a") && !is_code("a ") && !is_code("a  b") && is_code("a\tb"));
        assert!(ok(Primitive::Id, json!("a-Z.9")));
        assert!(!ok(Primitive::Id, json!("a_b")));
        assert!(!ok(Primitive::Id, json!("x".repeat(65))));
        assert!(
            is_oid("urn:oid:2.16.840.1.113883")
                && !is_oid("urn:oid:3.1")
                && !is_oid("urn:oid:1.01")
        );
        assert!(is_uuid("urn:uuid:c757873d-ec9a-4326-a141-556f43239520"));
        assert!(!is_uuid("urn:uuid:C757873D-EC9A-4326-A141-556F43239520"));
        assert!(
            is_base64("aGVsbG8=")
                && is_base64("aGVs bG8=")
                && !is_base64("aGVsbG8")
                && !is_base64("a*==")
        );
        assert!(ok(
            Primitive::Uri,
            json!("https://fhir.nhs.uk/Id/nhs-number")
        ));
        assert!(!ok(
            Primitive::Uri,
            json!("https://fhir.nhs.uk/Id/nhs number")
        ));
        assert!(is_time(b"23:59:59.5") && !is_time(b"23:59") && !is_time(b"24:00:00"));
        assert!(is_xhtml_div(
            r#"<div xmlns="http://www.w3.org/1999/xhtml">x</div>"#
        ));
        assert!(!is_xhtml_div("<p>x</p>"));
        let div =
            |inner: &str| format!(r#"<div xmlns="http://www.w3.org/1999/xhtml">{inner}</div>"#);
        for allowed in [
            "Ann <b>Page</b>, <a href=\"https://example.org\">record</a>",
            "<table><tr><td style=\"color: red\">1</td></tr></table><!-- a note -->",
            "<img src=\"#photo\" alt=\"\"/>",
        ] {
            assert!(is_xhtml_div(&div(allowed)), "{allowed}");
        }
        for refused in [
            "<script>alert(1)</script>",
            "<p onclick=\"alert(1)\">x</p>",
            "<a href=\"javascript:alert(1)\">x</a>",
            "<iframe src=\"https://x\"></iframe>x",
            " ",
            "<p> </p>",
        ] {
            assert!(!is_xhtml_div(&div(refused)), "{refused}");
        }
        assert!(!is_xhtml_div(
            r#"<divx xmlns="http://www.w3.org/1999/xhtml">x</divx>"#
        ));
    }
}
