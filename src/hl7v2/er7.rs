//! ER7 ("pipe and hat") parsing of one HL7 v2 message.
//!
//! Owns [`Message`] and its borrowed views ([`Segment`], [`Field`], [`Rep`],
//! [`Component`]), the [`Delimiters`] read from MSH-1/MSH-2, [`ParseError`]
//! and the location syntax (`PID-3[2].1`) shared by [`Message::get`] and the
//! ACK builder. Clause numbers are HL7 v2.5 chapter 2 unless stated.
//!
//! Parsing is one linear pass: the text is copied once and only the byte
//! spans of segments and fields are recorded. Repetitions, components and
//! subcomponents are split on access, and escape sequences (§2.7, see
//! `escape.rs`) are resolved only when a value is asked for, so a message is
//! never decoded for fields nobody reads.
//!
//! Decoded values are `Cow<'a, str>`: values without escape sequences (the
//! vast majority) borrow from the message instead of allocating.

use memchr::{memchr_iter, memchr2};
use std::borrow::Cow;
use std::fmt;

use super::escape::unescape;

/// HL7 explicit null (§2.5.3): "delete the value held by the receiver".
const NULL: &str = "\"\"";

/// Delimiters declared by MSH-1 and MSH-2 (§2.5.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    /// `None` when MSH-2 leaves it out (see [`Message::parse`]).
    pub escape: Option<char>,
    /// `None` when MSH-2 leaves it out: a field then has no subcomponents.
    pub subcomponent: Option<char>,
    /// The v2.7 truncation character (fifth MSH-2 character), if declared.
    pub truncation: Option<char>,
}

impl Default for Delimiters {
    /// The recommended `|^~\&` (§2.5.4), used for messages we compose.
    fn default() -> Self {
        Delimiters {
            field: '|',
            component: '^',
            repetition: '~',
            escape: Some('\\'),
            subcomponent: Some('&'),
            truncation: None,
        }
    }
}

/// Why a message could not be parsed, and where (`MSH-1`, `MSH-2`,
/// `segment 3`; segment numbers here are 1-based, MSH being segment 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub location: String,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

impl std::error::Error for ParseError {}

fn error(location: impl Into<String>, message: impl Into<String>) -> ParseError {
    ParseError {
        location: location.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy)]
struct SegSpan {
    start: usize,
    end: usize,
    first_field: usize,
    end_field: usize,
}

/// One parsed message. Owns its text plus the spans of segments and fields.
#[derive(Debug, Clone)]
pub struct Message {
    raw: String,
    delimiters: Delimiters,
    segments: Vec<SegSpan>,
    /// Field spans of all segments, in HL7 numbering order per segment.
    fields: Vec<(usize, usize)>,
}

impl Message {
    /// Parses one message.
    ///
    /// Accepted: a UTF-8 BOM and whitespace before `MSH`; segments ended by
    /// `\r` (§2.5.2), `\n` or `\r\n`; blank lines (ignored). MSH-2 holds, in
    /// this order, the component, repetition, escape and subcomponent
    /// characters and the optional v2.7 truncation character (§2.5.4). The
    /// standard lets a sender leave out the subcomponent character when it
    /// sends no subcomponents, and the escape character too when it sends
    /// no escape sequences, so two (`^~`) and three (`^~\`) characters are
    /// read by position. One leniency: three ending in `&` (`^~&`, from
    /// senders that do not escape) are read as component, repetition and
    /// subcomponent, escape sequences then kept literally.
    pub fn parse(raw: &str) -> Result<Message, ParseError> {
        let body = raw.trim_start_matches(|c: char| c == '\u{feff}' || c.is_whitespace());
        if body.is_empty() {
            return Err(error("segment 1", "empty message"));
        }
        if !body.starts_with("MSH") {
            return Err(error("segment 1", "message must start with an MSH segment"));
        }
        let delimiters = read_delimiters(body)?;
        let (segments, fields) = index(body, delimiters.field)?;
        Ok(Message {
            raw: body.to_owned(),
            delimiters,
            segments,
            fields,
        })
    }

    /// The message text as parsed (without any leading BOM/whitespace).
    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> {
        self.segments
            .iter()
            .enumerate()
            .map(move |(index, &span)| Segment {
                msg: self,
                index,
                span,
            })
    }

    /// The first segment with this id.
    pub fn segment(&self, id: &str) -> Option<Segment<'_>> {
        self.segments().find(|s| s.id() == id)
    }

    pub fn segments_named<'a>(&'a self, id: &'a str) -> impl Iterator<Item = Segment<'a>> {
        self.segments().filter(move |s| s.id() == id)
    }

    /// The decoded value at `SEG-n[r].c.s` (syntax: `Location`) in the first
    /// segment with that id; `None` if absent, empty, explicitly null (`""`)
    /// or the location is malformed. Without `.c` the first component is
    /// returned (as HAPI's Terser does), so `get("PID-5")` is the family name.
    pub fn get(&self, location: &str) -> Option<String> {
        let loc = Location::parse(location)?;
        let comp = self
            .segment(loc.segment)?
            .field(loc.field)?
            .repetition(loc.repetition.unwrap_or(1))?
            .component(loc.component.unwrap_or(1))?;
        let value = match loc.subcomponent {
            None => comp.value(),
            Some(s) => decode(comp.subcomponent(s)?, comp.d),
        };
        (!value.is_empty()).then(|| value.into_owned())
    }

    /// MSH-9.1 and MSH-9.2, e.g. `("ADT", "A01")`. The trigger is empty when
    /// MSH-9.2 is absent (as in a bare `ACK`).
    pub fn message_type(&self) -> Option<(String, String)> {
        let kind = self.get("MSH-9.1")?;
        Some((kind, self.get("MSH-9.2").unwrap_or_default()))
    }

    /// MSH-10, the message control id echoed in MSA-2 of the ACK.
    pub fn control_id(&self) -> Option<String> {
        self.get("MSH-10")
    }

    /// MSH-12.1, the version id (e.g. `2.4`).
    pub fn version(&self) -> Option<String> {
        self.get("MSH-12")
    }
}

/// MSH-1 is the character after `MSH`; MSH-2 runs to the next field
/// separator (§2.5.4, MSH segment definition).
fn read_delimiters(body: &str) -> Result<Delimiters, ParseError> {
    let mut chars = body.chars().skip(3);
    let field = match chars.next() {
        Some(c) if is_delimiter(c) => c,
        Some('\r' | '\n') | None => return Err(error("MSH-1", "missing field separator")),
        Some(_) => {
            return Err(error(
                "MSH-1",
                "field separator must be a printable, non-alphanumeric character",
            ));
        }
    };
    // At most six are read: enough to tell "too long" without scanning on.
    let enc: Vec<char> = chars
        .take_while(|&c| c != field && c != '\r' && c != '\n')
        .take(6)
        .collect();
    let distinct = enc
        .iter()
        .enumerate()
        .all(|(i, c)| !enc.iter().skip(i + 1).any(|o| o == c));
    if !distinct {
        return Err(error("MSH-2", "encoding characters must be distinct"));
    }
    if enc.iter().any(|&c| c == field || !is_delimiter(c)) {
        return Err(error(
            "MSH-2",
            "encoding characters must be printable, non-alphanumeric and differ from MSH-1",
        ));
    }
    let (component, repetition, escape, subcomponent, truncation) = match *enc.as_slice() {
        [c, r] => (c, r, None, None, None),
        [c, r, '&'] => (c, r, None, Some('&'), None),
        [c, r, e] => (c, r, Some(e), None, None),
        [c, r, e, s] => (c, r, Some(e), Some(s), None),
        [c, r, e, s, t] => (c, r, Some(e), Some(s), Some(t)),
        _ => {
            let found = if enc.len() > 5 {
                "more than 5".to_owned()
            } else {
                enc.len().to_string()
            };
            return Err(error(
                "MSH-2",
                format!("expected 2 to 5 encoding characters, found {found}"),
            ));
        }
    };
    Ok(Delimiters {
        field,
        component,
        repetition,
        escape,
        subcomponent,
        truncation,
    })
}

fn is_delimiter(c: char) -> bool {
    !(c.is_alphanumeric() || c.is_whitespace() || c.is_control())
}

/// Segments whose field 1 is the field separator itself and field 2 the
/// encoding characters (MSH, and the batch/file headers BHS and FHS).
fn is_header(id: &str) -> bool {
    matches!(id, "MSH" | "BHS" | "FHS")
}

type Spans = (Vec<SegSpan>, Vec<(usize, usize)>);

/// Records segment and field spans in one pass over `body`.
fn index(body: &str, fs: char) -> Result<Spans, ParseError> {
    // Sized for an ADT message at once (about a field per 4–5 bytes), not
    // grown eight times over; a large message (a base64 OBX-5) grows.
    let mut segments = Vec::with_capacity(8);
    let mut fields = Vec::with_capacity((body.len() / 4 + 8).min(1024));
    let fs_len = fs.len_utf8();
    for (start, line) in lines(body) {
        if line.trim().is_empty() {
            continue;
        }
        let id = segment_id(line, fs).ok_or_else(|| {
            let shown: String = line.chars().take_while(|&c| c != fs).take(8).collect();
            error(
                format!("segment {}", segments.len() + 1),
                format!("invalid segment id {shown:?}"),
            )
        })?;
        let first_field = fields.len();
        if let Some(rest) = line.get(3..).and_then(|r| r.strip_prefix(fs)) {
            let mut pos = start + 3 + fs_len;
            if is_header(id) {
                fields.push((start + 3, pos));
            }
            if fs.is_ascii() {
                // One pass over the segment (memchr's iterator), not a
                // search started again for every field a few bytes long.
                for at in memchr_iter(fs as u8, rest.as_bytes()) {
                    let end = start + 3 + fs_len + at;
                    fields.push((pos, end));
                    pos = end + 1;
                }
                fields.push((pos, start + line.len()));
            } else {
                for f in rest.split(fs) {
                    fields.push((pos, pos + f.len()));
                    pos += f.len() + fs_len;
                }
            }
        }
        segments.push(SegSpan {
            start,
            end: start + line.len(),
            first_field,
            end_field: fields.len(),
        });
    }
    Ok((segments, fields))
}

/// `body` split at each `\r` and each `\n` (so `\r\n` leaves an empty line
/// between), with where each line starts: found with memchr, not by
/// decoding every character.
fn lines(body: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut next = Some(0);
    std::iter::from_fn(move || {
        let start = next?;
        let end = match memchr2(b'\r', b'\n', &body.as_bytes()[start..]) {
            Some(at) => {
                next = Some(start + at + 1);
                start + at
            }
            None => {
                next = None;
                body.len()
            }
        };
        Some((start, &body[start..end]))
    })
}

/// A segment id is two upper-case letters then a letter or digit, as every
/// id in the standard is (PID, PV1, NK1); local Z-segments (§2.5.2) may use
/// digits after the `Z` (Z01). The id ends the segment or is followed by the
/// field separator.
fn segment_id(line: &str, fs: char) -> Option<&str> {
    let ok = match line.as_bytes() {
        [a, b, c, ..] => {
            a.is_ascii_uppercase()
                && (b.is_ascii_uppercase() || (*a == b'Z' && b.is_ascii_digit()))
                && (c.is_ascii_uppercase() || c.is_ascii_digit())
        }
        _ => false,
    };
    let rest = line.get(3..)?;
    if ok && (rest.is_empty() || rest.starts_with(fs)) {
        line.get(..3)
    } else {
        None
    }
}

/// Splits on `sep`, or yields the whole text once when `sep` is `None`
/// (MSH-1 and MSH-2 hold delimiters and must not be split).
struct Pieces<'a> {
    rest: Option<&'a str>,
    sep: Option<char>,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        let split = match self.sep {
            // Delimiters are ASCII in practice, and an ASCII byte is never
            // part of another character in UTF-8: a byte scan, cheaper than
            // `split_once(char)` on pieces a few bytes long.
            Some(c) if c.is_ascii() => {
                let b = c as u8;
                rest.bytes()
                    .position(|x| x == b)
                    .map(|i| (&rest[..i], &rest[i + 1..]))
            }
            Some(c) => rest.split_once(c),
            None => None,
        };
        match split {
            Some((head, tail)) => {
                self.rest = Some(tail);
                Some(head)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

fn pieces<'a>(
    raw: &'a str,
    d: Option<&Delimiters>,
    sep: fn(&Delimiters) -> Option<char>,
) -> Pieces<'a> {
    Pieces {
        rest: Some(raw),
        sep: d.and_then(sep),
    }
}

/// Decodes one raw subcomponent: `""` (null, blanks around it allowed)
/// reads as empty, and escape sequences are resolved unless the value is
/// MSH-1/MSH-2 (`d` is `None`).
fn decode<'a>(raw: &'a str, d: Option<&Delimiters>) -> Cow<'a, str> {
    match d {
        None => Cow::Borrowed(raw),
        Some(_) if raw.trim() == NULL => Cow::Borrowed(""),
        Some(d) => unescape(raw, d),
    }
}

/// One segment of a [`Message`].
#[derive(Clone, Copy)]
pub struct Segment<'a> {
    msg: &'a Message,
    index: usize,
    span: SegSpan,
}

impl fmt::Debug for Segment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Segment({} #{})", self.id(), self.index)
    }
}

impl<'a> Segment<'a> {
    pub fn id(&self) -> &'a str {
        self.msg
            .raw
            .get(self.span.start..self.span.start + 3)
            .unwrap_or("")
    }

    /// Position in the message, 0 being MSH.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The segment text without its terminator.
    pub fn raw(&self) -> &'a str {
        self.msg
            .raw
            .get(self.span.start..self.span.end)
            .unwrap_or("")
    }

    /// Fields in HL7 numbering (MSH counts MSH-1 and MSH-2).
    pub fn field_count(&self) -> usize {
        self.span.end_field.saturating_sub(self.span.first_field)
    }

    /// Field `n` in HL7 numbering: `PID-1` is the first field after the id,
    /// while `MSH-1` is the field separator and `MSH-2` the encoding
    /// characters (MSH definition, §2.5.4), so `MSH-3` is the first field
    /// after MSH-2. `None` when out of range or empty (empty means absent,
    /// §2.5.3). MSH-1/MSH-2 are returned whole and never unescaped.
    pub fn field(&self, n: usize) -> Option<Field<'a>> {
        let fields = self
            .msg
            .fields
            .get(self.span.first_field..self.span.end_field)?;
        let &(start, end) = fields.get(n.checked_sub(1)?)?;
        let raw = self.msg.raw.get(start..end)?;
        if raw.is_empty() {
            return None;
        }
        let literal = is_header(self.id()) && n <= 2;
        Some(Field {
            raw,
            d: (!literal).then_some(&self.msg.delimiters),
        })
    }
}

/// One present field, possibly repeated. `d` is `None` for MSH-1/MSH-2.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    raw: &'a str,
    d: Option<&'a Delimiters>,
}

impl<'a> Field<'a> {
    /// The repetitions (at least one), split on the repetition character.
    pub fn repetitions(&self) -> impl Iterator<Item = Rep<'a>> + use<'a> {
        let d = self.d;
        pieces(self.raw, d, |d| Some(d.repetition)).map(move |raw| Rep { raw, d })
    }

    /// Repetition `n`, 1-based; it may be empty (`A~~B`).
    pub fn repetition(&self, n: usize) -> Option<Rep<'a>> {
        self.repetitions().nth(n.checked_sub(1)?)
    }

    /// The field is `""`, HL7's explicit null (§2.5.3), blanks around it
    /// allowed.
    pub fn is_null(&self) -> bool {
        self.d.is_some() && self.raw.trim() == NULL
    }

    pub fn raw(&self) -> &'a str {
        self.raw
    }
}

/// One repetition of a field.
#[derive(Debug, Clone, Copy)]
pub struct Rep<'a> {
    raw: &'a str,
    d: Option<&'a Delimiters>,
}

impl<'a> Rep<'a> {
    /// Component `n`, 1-based; it may be empty.
    pub fn component(&self, n: usize) -> Option<Component<'a>> {
        self.components().nth(n.checked_sub(1)?)
    }

    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + use<'a> {
        let d = self.d;
        pieces(self.raw, d, |d| Some(d.component)).map(move |raw| Component { raw, d })
    }

    /// The decoded first subcomponent of the first component.
    pub fn value(&self) -> Cow<'a, str> {
        self.component(1).map_or(Cow::Borrowed(""), |c| c.value())
    }

    pub fn raw(&self) -> &'a str {
        self.raw
    }
}

/// One component of a repetition.
#[derive(Debug, Clone, Copy)]
pub struct Component<'a> {
    raw: &'a str,
    d: Option<&'a Delimiters>,
}

impl<'a> Component<'a> {
    /// Raw (still escaped) subcomponent `n`, 1-based.
    pub fn subcomponent(&self, n: usize) -> Option<&'a str> {
        self.subcomponents().nth(n.checked_sub(1)?)
    }

    /// Raw (still escaped) subcomponents.
    pub fn subcomponents(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        pieces(self.raw, self.d, |d| d.subcomponent)
    }

    /// The first subcomponent with escape sequences resolved (§2.7); `""`
    /// reads as empty (use [`Field::is_null`] to tell null from absent).
    pub fn value(&self) -> Cow<'a, str> {
        decode(self.subcomponent(1).unwrap_or(""), self.d)
    }

    pub fn raw(&self) -> &'a str {
        self.raw
    }
}

/// A parsed location: `SEG-n`, `SEG-n[r]`, each optionally followed by `.c`
/// and `.c.s`; all numbers 1-based, a missing `[r]` meaning the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location<'a> {
    pub segment: &'a str,
    pub field: usize,
    pub repetition: Option<usize>,
    pub component: Option<usize>,
    pub subcomponent: Option<usize>,
}

/// Whether `segment` reads as the segment id of a location: three
/// upper-case letters or digits.
pub(super) fn is_location_segment(segment: &str) -> bool {
    segment.len() == 3
        && segment
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

impl<'a> Location<'a> {
    pub(super) fn parse(s: &'a str) -> Option<Location<'a>> {
        let (segment, rest) = s.split_once('-')?;
        if !is_location_segment(segment) {
            return None;
        }
        let (field, mut rest) = number(rest)?;
        let mut repetition = None;
        if let Some(r) = rest.strip_prefix('[') {
            let (n, r) = number(r)?;
            rest = r.strip_prefix(']')?;
            repetition = Some(n);
        }
        let (mut component, mut subcomponent) = (None, None);
        if let Some(r) = rest.strip_prefix('.') {
            let (n, r) = number(r)?;
            component = Some(n);
            rest = r;
            if let Some(r) = rest.strip_prefix('.') {
                let (n, r) = number(r)?;
                subcomponent = Some(n);
                rest = r;
            }
        }
        rest.is_empty().then_some(Location {
            segment,
            field,
            repetition,
            component,
            subcomponent,
        })
    }
}

/// A leading run of ASCII digits as a number >= 1, and what follows it.
fn number(s: &str) -> Option<(usize, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: usize = s.get(..end)?.parse().ok()?;
    (n >= 1).then_some((n, s.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::lines;

    #[test]
    fn lines_split_as_str_split_on_either_terminator() {
        for body in [
            "",
            "\r",
            "\n\n",
            "MSH|^~\\&|A\rPID|1",
            "MSH|^~\\&|A\r\nPID|1\r\n",
            "MSH|é\nEVN|€\r\r",
        ] {
            let found: Vec<_> = lines(body).collect();
            let mut offset = 0;
            let expected: Vec<_> = body
                .split(['\r', '\n'])
                .map(|line| {
                    let at = offset;
                    offset += line.len() + 1;
                    (at, line)
                })
                .collect();
            assert_eq!(found, expected, "{body:?}");
        }
    }
}
