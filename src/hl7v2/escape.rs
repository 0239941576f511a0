//! HL7 v2 escape sequences (HL7 v2.5 chapter 2, §2.7): [`unescape`] for
//! values read from a message and [`escape`] for values we write.
//!
//! An escape sequence is the escape character (MSH-2's third character,
//! usually `\`), an id, optional data and the escape character again
//! (§2.7). Delimiters are found before escapes are resolved, which is why a
//! decoded value may contain `|` or `^` without ambiguity.

use std::borrow::Cow;

use super::er7::Delimiters;

/// Resolves escape sequences in one raw (sub)component value.
///
/// - `\F\ \S\ \T\ \R\ \E\` → the delimiter they name (§2.7.4), `\P\` → the
///   v2.7 truncation character when MSH-2 declares one;
/// - `\Xhh..\` → the bytes, read as UTF-8 if valid, else as Latin-1 per byte
///   (§2.7.5; Latin-1 because that is what pre-Unicode senders mean);
/// - `\.br\` → `\n` (formatted text, §2.7.6); `\H\` and `\N\` (highlighting
///   on/off, §2.7.3) are dropped, having no meaning in plain text;
/// - character-set switches `\Cxxyy\` and `\Mxxyyzz\` (§2.7.2), local `\Z..\`
///   (§2.7.7), other formatting commands, unknown ids, malformed hex and an
///   unterminated sequence are kept literally: mis-escaped senders are
///   common and losing their text would be worse than showing it.
///
/// Linear time: each escape character is examined once, and an unterminated
/// sequence ends the scan (no later escape character exists to close it).
/// Borrows when there is nothing to resolve.
pub fn unescape<'a>(raw: &'a str, d: &Delimiters) -> Cow<'a, str> {
    let Some(esc) = d.escape else {
        return Cow::Borrowed(raw);
    };
    if !raw.contains(esc) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some((before, opened)) = rest.split_once(esc) {
        out.push_str(before);
        let Some((seq, after)) = opened.split_once(esc) else {
            out.push(esc);
            out.push_str(opened);
            return Cow::Owned(out);
        };
        if !resolve(seq, esc, d, &mut out) {
            out.push(esc);
            out.push_str(seq);
            out.push(esc);
        }
        rest = after;
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Appends the meaning of one sequence; `false` means "keep it literally".
fn resolve(seq: &str, esc: char, d: &Delimiters, out: &mut String) -> bool {
    let c = match seq {
        "F" => d.field,
        "S" => d.component,
        "T" => match d.subcomponent {
            Some(s) => s,
            None => return false,
        },
        "R" => d.repetition,
        "E" => esc,
        "P" => match d.truncation {
            Some(t) => t,
            None => return false,
        },
        "H" | "N" => return true,
        ".br" => '\n',
        _ => return seq.strip_prefix('X').is_some_and(|hex| hex_bytes(hex, out)),
    };
    out.push(c);
    true
}

fn hex_bytes(hex: &str, out: &mut String) -> bool {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return false;
    }
    let nibble = |b: u8| char::from(b).to_digit(16);
    let bytes: Option<Vec<u8>> = hex
        .as_bytes()
        .chunks(2)
        .map(|pair| match *pair {
            [hi, lo] => Some(u8::try_from(nibble(hi)? << 4 | nibble(lo)?).ok()?),
            _ => None,
        })
        .collect();
    let Some(bytes) = bytes else {
        return false;
    };
    match String::from_utf8(bytes) {
        Ok(s) => out.push_str(&s),
        Err(e) => out.extend(e.into_bytes().into_iter().map(char::from)),
    }
    true
}

/// Escapes `value` so it reads back unchanged as one subcomponent under `d`
/// (§2.7.4): delimiters become `\F\ \S\ \T\ \R\ \E\` (`\P\` for a declared
/// truncation character), control characters become `\Xhh\` (a raw CR or LF
/// would end the segment, and MLLP's `0x0B` and `0x1C`, which `\X0B\` in a
/// sender's field reads back as, the frame), and a value that is literally
/// `""` becomes `\X2222\` so it is not read as an explicit null.
///
/// Without an escape character (MSH-2 `^~` or `^~&`) delimiters cannot be
/// represented; they and control characters are replaced by spaces so the
/// structure of the message survives.
pub fn escape(value: &str, d: &Delimiters) -> String {
    let is_special = |c: char| {
        c == d.field
            || c == d.component
            || Some(c) == d.subcomponent
            || c == d.repetition
            || Some(c) == d.truncation
            || Some(c) == d.escape
    };
    let Some(esc) = d.escape else {
        return value
            .chars()
            .map(|c| {
                if is_special(c) || c.is_ascii_control() {
                    ' '
                } else {
                    c
                }
            })
            .collect();
    };
    if value == "\"\"" {
        return format!("{esc}X2222{esc}");
    }
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let hex;
        let code = match c {
            c if c.is_ascii_control() => {
                hex = format!("X{:02X}", c as u32);
                hex.as_str()
            }
            c if c == esc => "E",
            c if c == d.field => "F",
            c if c == d.component => "S",
            c if Some(c) == d.subcomponent => "T",
            c if c == d.repetition => "R",
            c if Some(c) == d.truncation => "P",
            c => {
                out.push(c);
                continue;
            }
        };
        out.push(esc);
        out.push_str(code);
        out.push(esc);
    }
    out
}
