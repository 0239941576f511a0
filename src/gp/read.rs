//! Reading a list as the GP systems write it: UTF-8 (with or without a BOM)
//! or Windows-1252, CRLF or LF, RFC 4180 quoting, preamble lines before the
//! header row, blank and all-empty trailing rows.
//!
//! The bytes are parsed where they lie (the `csv` crate over the body);
//! each field is decoded on its own, so a list is never copied whole.

use super::layout::{Format, Layout, Overrides};

/// How the bytes are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    /// Not valid UTF-8 throughout: each field that is not is read as
    /// Windows-1252, what Excel on Windows writes.
    Windows1252,
}

/// Why a list cannot be read at all (as opposed to a bad row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("the list is empty")]
    Empty,
    #[error(
        "no header row found in the first {MAX_PREAMBLE_LINES} lines: expected a column named like \"NHS Number\" and at least one of surname, forename, date of birth, gender, postcode or eFI ({format})"
    )]
    NoHeader { format: String },
    #[error("line {line}: {message}")]
    Csv { line: u64, message: String },
}

/// Lines read looking for the header row before giving up.
pub const MAX_PREAMBLE_LINES: u64 = 50;

/// A list whose header row has been found.
pub struct List<'b> {
    pub layout: Layout,
    pub encoding: Encoding,
    /// The header row's line number.
    pub header_line: u64,
    records: std::iter::Peekable<csv::ByteRecordsIntoIter<&'b [u8]>>,
    lines: LineCounter<'b>,
    done: bool,
    /// Where a quoted field opens that never closes, if one does: the
    /// `csv` crate reads the rest of the file into it without a word.
    unclosed: Option<usize>,
}

/// Line numbers from byte offsets. The `csv` crate's own line count is off
/// after CRLF endings and blank lines, and a practice needs the line its
/// spreadsheet shows.
struct LineCounter<'b> {
    bytes: &'b [u8],
    offset: usize,
    line: u64,
}

impl LineCounter<'_> {
    /// The line on which the record found at `byte` starts (its position
    /// may point at the end of the previous line's terminator).
    fn line_at(&mut self, byte: u64) -> u64 {
        let mut start = usize::try_from(byte)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        while start < self.bytes.len() && matches!(self.bytes[start], b'\r' | b'\n') {
            start += 1;
        }
        if start < self.offset {
            self.offset = 0;
            self.line = 1;
        }
        self.line += line_breaks(&self.bytes[self.offset..start]);
        self.offset = start;
        self.line
    }
}

/// Line breaks in `bytes`: `\r\n`, `\n`, or `\r` alone (Excel's "CSV
/// (Macintosh)"). Counted between two records' starts, which never fall
/// inside a `\r\n`.
fn line_breaks(bytes: &[u8]) -> u64 {
    let mut count = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')) {
            count += 1;
        }
    }
    count
}

/// A data row: its line number and its fields, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub line: u64,
    pub fields: Vec<String>,
    /// The row as it stood in the file (decoded, fields re-joined with
    /// commas and quoted where needed): what quarantine keeps.
    pub raw: String,
}

/// Finds the header row of `bytes` (the BOM aside) and returns the list,
/// ready to give its rows.
pub fn open<'b>(
    bytes: &'b [u8],
    format: Option<Format>,
    overrides: &Overrides,
) -> Result<List<'b>, ListError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ListError::Empty);
    }
    let encoding = if std::str::from_utf8(bytes).is_ok() {
        Encoding::Utf8
    } else {
        Encoding::Windows1252
    };
    let mut records = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes)
        .into_byte_records();
    let mut lines = LineCounter {
        bytes,
        offset: 0,
        line: 1,
    };
    let mut seen = 0u64;
    while let Some(record) = records.next() {
        let record = record.map_err(|e| csv_error(e, &mut lines))?;
        seen += 1;
        let fields: Vec<String> = record.iter().map(decode).collect();
        if let Some(layout) = Layout::recognise(&fields, format, overrides) {
            let header_line = record.position().map_or(seen, |p| lines.line_at(p.byte()));
            return Ok(List {
                layout,
                encoding,
                header_line,
                records: records.peekable(),
                lines,
                done: false,
                unclosed: unclosed_quote(bytes),
            });
        }
        if seen >= MAX_PREAMBLE_LINES {
            break;
        }
    }
    Err(ListError::NoHeader {
        format: format
            .map_or("any of emis, systmone, generic", Format::as_str)
            .to_string(),
    })
}

impl Iterator for List<'_> {
    type Item = Result<Record, ListError>;

    /// The next row with any content; blank and all-empty rows are skipped.
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            let record = match self.records.next()? {
                Ok(record) => record,
                Err(err) => {
                    // A broken quote runs to the end of the file: nothing
                    // after it can be trusted to be a row.
                    self.done = true;
                    return Some(Err(csv_error(err, &mut self.lines)));
                }
            };
            // The last row holds a quote never closed, and with it every
            // line after it: refused, rather than read as one row.
            if let Some(quote) = self.unclosed
                && self.records.peek().is_none()
                && record.position().is_some_and(|p| p.byte() <= quote as u64)
            {
                self.done = true;
                let line = self.lines.line_at(quote as u64);
                let after = line_breaks(&self.lines.bytes[quote..]);
                return Some(Err(ListError::Csv {
                    line,
                    message: format!(
                        "a quoted field opened on line {line} is never closed, so the rest of the \
                         file ({after} more line breaks) cannot be read as rows"
                    ),
                }));
            }
            if record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
                continue;
            }
            let line = record
                .position()
                .map_or(0, |p| self.lines.line_at(p.byte()));
            let fields: Vec<String> = record.iter().map(decode).collect();
            let raw = join_csv(&fields);
            return Some(Ok(Record { line, fields, raw }));
        }
    }
}

/// Where a quoted field opens that is still open at the end of `bytes`,
/// read as the `csv` crate reads (a quote opens one only at a field's
/// start; `""` inside is a quote).
fn unclosed_quote(bytes: &[u8]) -> Option<usize> {
    let mut open = None;
    let mut at_field_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match open {
            Some(_) if b == b'"' => {
                if bytes.get(i + 1) == Some(&b'"') {
                    i += 1;
                } else {
                    open = None;
                    at_field_start = false;
                }
            }
            Some(_) => {}
            None => {
                if b == b'"' && at_field_start {
                    open = Some(i);
                }
                at_field_start = matches!(b, b',' | b'\n' | b'\r');
            }
        }
        i += 1;
    }
    open
}

fn csv_error(err: csv::Error, lines: &mut LineCounter<'_>) -> ListError {
    let line = err.position().map_or(0, |p| lines.line_at(p.byte()));
    let message = match err.kind() {
        csv::ErrorKind::Utf8 { .. } => "the text is not valid UTF-8".to_string(),
        _ => err.to_string(),
    };
    ListError::Csv { line, message }
}

/// Windows-1252's 0x80–0x9F; the other high bytes are Latin-1.
const CP1252_HIGH: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}',
    '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
];

/// One field: UTF-8 when it is, else Windows-1252. Decided field by field,
/// not for the whole list: one row pasted in from a Windows-1252 file must
/// not turn every `ë` of a UTF-8 export into `Ã«`. (Windows-1252 text that
/// is also valid UTF-8 needs pairs such as `Ã«` in a name: not seen.)
fn decode(field: &[u8]) -> String {
    match std::str::from_utf8(field) {
        Ok(text) => text.to_string(),
        Err(_) => windows_1252(field),
    }
}

fn windows_1252(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9F => CP1252_HIGH[usize::from(b - 0x80)],
            _ => char::from(b),
        })
        .collect()
}

/// Bytes as text: UTF-8 when they are, else line by line (an HL7 v2
/// segment is a line) UTF-8 or Windows-1252 (what Windows systems write
/// when they do not write UTF-8). Never fails. A UTF-8 sequence never
/// holds a CR or LF byte, so a line break never splits a character.
pub fn utf8_or_windows_1252(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 8);
    for line in bytes.split_inclusive(|b| matches!(b, b'\r' | b'\n')) {
        match std::str::from_utf8(line) {
            Ok(text) => out.push_str(text),
            Err(_) => out.push_str(&windows_1252(line)),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Fields joined as a CSV row (RFC 4180 quoting where needed).
pub fn join_csv(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::super::layout::Field;
    use super::*;

    #[test]
    fn finds_the_header_after_a_preamble_and_skips_empty_rows() {
        let text = "\u{feff}Frailty register\r\nRun date: 05-Mar-2024,,\r\n\r\n\"NHS Number\",\"Surname\",\"Forename(s)\"\r\n\"943 476 5919\",\"O'Brien, Jr\",\"Ann \"\"Nan\"\"\"\r\n,,\r\n\r\n";
        let mut list = open(text.as_bytes(), None, &Overrides::new()).unwrap();
        assert_eq!(list.header_line, 4);
        assert_eq!(list.layout.column(Field::FamilyName), Some((1, "Surname")));
        let row = list.next().unwrap().unwrap();
        assert_eq!(row.line, 5);
        assert_eq!(row.fields, ["943 476 5919", "O'Brien, Jr", "Ann \"Nan\""]);
        assert_eq!(row.raw, "943 476 5919,\"O'Brien, Jr\",\"Ann \"\"Nan\"\"\"");
        assert!(list.next().is_none());
    }

    #[test]
    fn reads_windows_1252() {
        let bytes = b"NHS Number,Surname\n9434765919,Ren\xe9e \x96 O\x92Neil\n";
        let mut list = open(bytes, None, &Overrides::new()).unwrap();
        assert_eq!(list.encoding, Encoding::Windows1252);
        assert_eq!(list.next().unwrap().unwrap().fields[1], "Renée – O’Neil");
    }

    #[test]
    fn one_stray_byte_does_not_turn_the_whole_list_into_windows_1252() {
        // A UTF-8 export with one row pasted in from a Windows-1252 file.
        let mut bytes = "NHS Number,Surname\n9434765919,Zoë Løvland\n4000000020,Ren"
            .as_bytes()
            .to_vec();
        bytes.extend_from_slice(b"\xe9e\n");
        let mut list = open(&bytes, None, &Overrides::new()).unwrap();
        assert_eq!(list.encoding, Encoding::Windows1252);
        assert_eq!(list.next().unwrap().unwrap().fields[1], "Zoë Løvland");
        assert_eq!(list.next().unwrap().unwrap().fields[1], "Renée");
        // The same for a message's text, line by line.
        let text = utf8_or_windows_1252(b"PID|1||Zo\xc3\xab\rPV1|1|Ren\xe9e\r");
        assert_eq!(text, "PID|1||Zoë\rPV1|1|Renée\r");
    }

    #[test]
    fn refuses_lists_without_a_header_or_content() {
        assert_eq!(
            open(b"  \r\n", None, &Overrides::new()).err(),
            Some(ListError::Empty)
        );
        assert!(matches!(
            open(b"a,b\n1,2\n", None, &Overrides::new()),
            Err(ListError::NoHeader { .. })
        ));
        assert!(open(b"\x00\xff\xfe garbage", None, &Overrides::new()).is_err());
    }
}
