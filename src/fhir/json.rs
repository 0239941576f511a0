//! Lossless JSON surgery on the bytes a sender gave us.
//!
//! A gateway must not alter what it carries: `80` stays `80`, `1.50` stays
//! `1.50`, `+01:00` stays `+01:00`. A parse into `serde_json::Value` (or into
//! the typed model) and back does not promise that, so the stored form of a
//! resource is built from the sender's own bytes: split into top-level members,
//! with insignificant whitespace dropped, and (inside transactions) string
//! values rewritten where a `urn:uuid:` reference is resolved.
//!
//! Every function here expects text that `serde_json` has already accepted as
//! JSON; on anything else it returns an error, never panics.

use crate::hashing::FastMap;
use memchr::{memchr2, memmem};
use serde_json::Value;
use std::borrow::Cow;
use std::sync::LazyLock;

/// The input was not the JSON object the caller promised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonShapeError {
    #[error("expected a JSON object")]
    NotAnObject,
    #[error("expected a JSON array")]
    NotAnArray,
    #[error("unexpected end of JSON")]
    Truncated,
    #[error("duplicate property \"{0}\"")]
    DuplicateKey(String),
}

/// One top-level member of an object: its key and its value, minified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: String,
    pub value: String,
}

/// Splits a JSON object into its top-level members, in the sender's order.
pub fn object_members(text: &str) -> Result<Vec<Member>, JsonShapeError> {
    let mut members: Vec<Member> = Vec::new();
    split_members(text, |key, raw| {
        if members.iter().any(|m| m.key == key) {
            return Err(JsonShapeError::DuplicateKey(key.into_owned()));
        }
        // Parsers disagree on which of two same-named members counts, and
        // the stored bytes would keep both: refused at any depth.
        if let Some(path) = nested_duplicate(raw) {
            return Err(JsonShapeError::DuplicateKey(format!("{key}.{path}")));
        }
        members.push(Member {
            key: key.into_owned(),
            value: minify(raw),
        });
        Ok(())
    })?;
    Ok(members)
}

impl Member {
    /// The member as [`written_members`] gives it.
    pub fn borrowed(&self) -> WrittenMember<'_> {
        WrittenMember {
            key: Cow::Borrowed(&self.key),
            value: &self.value,
        }
    }
}

/// A top-level member of JSON the gateway wrote itself, borrowed from the
/// text: its name (escapes resolved) and its value's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenMember<'a> {
    pub key: Cow<'a, str>,
    pub value: &'a str,
}

/// As [`object_members`], for JSON this gateway wrote itself (a stored body,
/// `serde_json` output, or members of those spliced together): minified and
/// with no name twice in any object already, so neither is checked again
/// (checking cost a feed about a tenth of its CPU per HL7 v2 message), and
/// nothing is copied (two allocations per member, a few dozen per message).
pub fn written_members(text: &str) -> Result<Vec<WrittenMember<'_>>, JsonShapeError> {
    let mut members = Vec::new();
    split_members(text, |key, value| {
        members.push(WrittenMember { key, value });
        Ok(())
    })?;
    Ok(members)
}

/// An object's JSON text as the gateway writes it, member by member, with
/// where each member's name and value lie in it: its [`written_members`]
/// without scanning the text again (the scan was ~2% of a feed's CPU per
/// HL7 v2 message). Built with [`WrittenObject`].
#[derive(Debug, Clone)]
pub struct Written {
    /// Private: the spans index into it.
    text: String,
    /// Each member's name (between its quotes) and value, as byte ranges.
    spans: Vec<[usize; 4]>,
    /// A name needed escaping (never in FHIR), or the value is not an
    /// object: [`Written::members`] scans the text instead.
    scan: bool,
}

impl Written {
    /// `value` written, as [`text_of`] writes it.
    pub fn of(value: &Value) -> Self {
        let Value::Object(members) = value else {
            return Self {
                text: text_of(value),
                spans: Vec::new(),
                scan: true,
            };
        };
        let mut object = WrittenObject::with_capacity(512);
        for (key, member) in members {
            object.push_value(key, member);
        }
        object.finish()
    }

    /// The JSON text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// As [`written_members`] of the text.
    pub fn members(&self) -> Result<Vec<WrittenMember<'_>>, JsonShapeError> {
        if self.scan {
            return written_members(&self.text);
        }
        Ok(self
            .spans
            .iter()
            .map(|&[k0, k1, v0, v1]| WrittenMember {
                key: Cow::Borrowed(&self.text[k0..k1]),
                value: &self.text[v0..v1],
            })
            .collect())
    }
}

/// A [`Written`] object being written, one member after another.
pub struct WrittenObject {
    bytes: Vec<u8>,
    spans: Vec<[usize; 4]>,
    scan: bool,
}

impl WrittenObject {
    pub fn with_capacity(capacity: usize) -> Self {
        let mut bytes = Vec::with_capacity(capacity);
        bytes.push(b'{');
        Self {
            bytes,
            spans: Vec::new(),
            scan: false,
        }
    }

    /// The next member: `key`, with `raw` (JSON text the gateway wrote).
    pub fn push_raw(&mut self, key: &str, raw: &str) {
        let key = self.push_key(key);
        let start = self.bytes.len();
        self.bytes.extend_from_slice(raw.as_bytes());
        self.spans.push([key.0, key.1, start, self.bytes.len()]);
    }

    /// The next member: `key`, with `value` written.
    pub fn push_value(&mut self, key: &str, value: &Value) {
        let key = self.push_key(key);
        let start = self.bytes.len();
        write_value(&mut self.bytes, value);
        self.spans.push([key.0, key.1, start, self.bytes.len()]);
    }

    fn push_key(&mut self, key: &str) -> (usize, usize) {
        if !self.spans.is_empty() {
            self.bytes.push(b',');
        }
        let start = self.bytes.len() + 1;
        if !write_str(&mut self.bytes, key) {
            // The span returned does not fit an escaped name: with `scan`
            // set, [`Written::members`] never reads the spans.
            self.scan = true;
        }
        self.bytes.push(b':');
        (start, start + key.len())
    }

    pub fn finish(mut self) -> Written {
        self.bytes.push(b'}');
        // Names and raw members are `str`s, and serde_json writes UTF-8.
        match String::from_utf8(self.bytes) {
            Ok(text) => Written {
                text,
                spans: self.spans,
                scan: self.scan,
            },
            Err(err) => Written {
                text: String::from_utf8_lossy(err.as_bytes()).into_owned(),
                spans: Vec::new(),
                scan: true,
            },
        }
    }
}

/// Calls `each` with every top-level member of the object `text`: its name
/// and the bytes of its value, in order.
fn split_members<'a>(
    text: &'a str,
    mut each: impl FnMut(Cow<'a, str>, &'a str) -> Result<(), JsonShapeError>,
) -> Result<(), JsonShapeError> {
    let bytes = text.as_bytes();
    let mut pos = skip_ws(bytes, 0);
    if bytes.get(pos) != Some(&b'{') {
        return Err(JsonShapeError::NotAnObject);
    }
    pos += 1;
    loop {
        pos = skip_ws(bytes, pos);
        match bytes.get(pos) {
            Some(b'}') => return Ok(()),
            Some(b',') => {
                pos += 1;
                continue;
            }
            Some(b'"') => {}
            Some(_) => return Err(JsonShapeError::NotAnObject),
            None => return Err(JsonShapeError::Truncated),
        }
        let key_end = string_end(bytes, pos)?;
        let key = decode_str(&text[pos..key_end]).ok_or(JsonShapeError::NotAnObject)?;
        pos = skip_ws(bytes, key_end);
        if bytes.get(pos) != Some(&b':') {
            return Err(JsonShapeError::NotAnObject);
        }
        pos = skip_ws(bytes, pos + 1);
        let value_end = value_end(bytes, pos)?;
        each(key, &text[pos..value_end])?;
        pos = value_end;
    }
}

/// The first member named twice in one object anywhere inside `value` (a
/// well-formed JSON value), as the path of member names to it.
fn nested_duplicate(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    if !bytes.contains(&b'{') {
        return None;
    }
    // Per open object: its member names so far, and the name whose value is
    // being read (None for an array).
    type Names<'v> = (Vec<Cow<'v, str>>, Cow<'v, str>);
    let mut frames: Vec<Option<Names>> = Vec::new();
    let mut expecting_key = false;
    let mut pos = 0;
    while pos < bytes.len() {
        match bytes[pos] {
            b'{' => {
                frames.push(Some((Vec::new(), Cow::Borrowed(""))));
                expecting_key = true;
            }
            b'[' => {
                frames.push(None);
                expecting_key = false;
            }
            b'}' | b']' => {
                frames.pop();
                expecting_key = false;
            }
            b',' => expecting_key = matches!(frames.last(), Some(Some(_))),
            b'"' => {
                let end = string_end(bytes, pos).ok()?;
                if expecting_key && let Some(Some((names, current))) = frames.last_mut() {
                    // Escapes resolved: `"co\u0064e"` is `code` too.
                    let raw = &value[pos..end];
                    let name = if raw.contains('\\') {
                        Cow::Owned(decode_string(raw)?)
                    } else {
                        Cow::Borrowed(&raw[1..raw.len() - 1])
                    };
                    if names.contains(&name) {
                        let mut path: Vec<&str> = frames
                            .iter()
                            .flatten()
                            .map(|(_, current)| current.as_ref())
                            .collect();
                        path.pop();
                        path.push(&name);
                        return Some(path.join("."));
                    }
                    names.push(name.clone());
                    *current = name;
                    expecting_key = false;
                }
                pos = end;
                continue;
            }
            _ => {}
        }
        pos += 1;
    }
    None
}

/// Splits a JSON array into its elements, each minified.
pub fn array_elements(text: &str) -> Result<Vec<String>, JsonShapeError> {
    let bytes = text.as_bytes();
    let mut pos = skip_ws(bytes, 0);
    if bytes.get(pos) != Some(&b'[') {
        return Err(JsonShapeError::NotAnArray);
    }
    pos += 1;
    let mut elements = Vec::new();
    loop {
        pos = skip_ws(bytes, pos);
        match bytes.get(pos) {
            Some(b']') => return Ok(elements),
            Some(b',') => pos += 1,
            Some(_) => {
                let end = value_end(bytes, pos)?;
                elements.push(minify(&text[pos..end]));
                pos = end;
            }
            None => return Err(JsonShapeError::Truncated),
        }
    }
}

/// Drops whitespace outside strings; everything else is copied byte for byte.
pub fn minify(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let mut copied = 0;
    while pos < bytes.len() {
        match bytes[pos] {
            b'"' => pos = string_end(bytes, pos).unwrap_or(bytes.len()),
            b' ' | b'\t' | b'\n' | b'\r' => {
                out.push_str(&text[copied..pos]);
                pos += 1;
                copied = pos;
            }
            _ => pos += 1,
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Replaces the values of `reference` members (`Reference.reference`) found
/// in `map` with their mapping, in minified JSON. Used to resolve `urn:uuid:`
/// references inside a transaction; other strings, such as an identifier
/// whose value is the same `urn:uuid:`, are left as they are.
pub fn rewrite_references<'a>(compact: &'a str, map: &FastMap<String, String>) -> Cow<'a, str> {
    if map.is_empty() {
        return Cow::Borrowed(compact);
    }
    let mut out = String::with_capacity(compact.len());
    let mut copied = 0;
    for (start, end) in reference_values(compact) {
        if let Some(replacement) =
            decode_string(&compact[start..end]).and_then(|value| map.get(&value))
        {
            out.push_str(&compact[copied..start]);
            out.push_str(&encode_string(replacement));
            copied = end;
        }
    }
    out.push_str(&compact[copied..]);
    Cow::Owned(out)
}

/// The spans (quotes included) of the string values of `reference`
/// members in minified JSON, found by searching for `"reference":"` rather
/// than walking every string: inside a JSON string each quote is escaped, so
/// a match whose quote follows `{` or `,` opens a member name, and the name
/// is `reference` because the quote after it, unescaped, closes it.
pub(super) fn reference_values(compact: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    static KEY: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"reference\":\""));
    let bytes = compact.as_bytes();
    let mut pos = 0;
    std::iter::from_fn(move || {
        while let Some(found) = bytes.get(pos..).and_then(|rest| KEY.find(rest)) {
            let at = pos + found;
            // The value's opening quote.
            let start = at + KEY.needle().len() - 1;
            pos = start;
            if at > 0 && matches!(bytes[at - 1], b'{' | b',') {
                let end = string_end(bytes, start).unwrap_or(bytes.len());
                pos = end;
                return Some((start, end));
            }
        }
        None
    })
}

/// The first `reference` member of minified JSON whose value is a
/// placeholder (`urn:uuid:`, `urn:oid:`), which only an entry of the same
/// Bundle can give meaning to, that `map` does not resolve.
pub fn unresolved_placeholder(compact: &str, map: &FastMap<String, String>) -> Option<String> {
    if !compact.contains("\"urn:") {
        return None;
    }
    reference_values(compact)
        .filter_map(|(start, end)| decode_string(&compact[start..end]))
        .find(|value| {
            (value.starts_with("urn:uuid:") || value.starts_with("urn:oid:"))
                && !map.contains_key(value)
        })
}

/// `value` as compact JSON text: the same text as its `Display`, written
/// through serde_json's byte writer rather than `fmt`, about twice as fast
/// (a feed writes every changed member and every new resource this way).
pub fn text_of(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

/// Are `a` and `b` equal with every object's members in the same order?
/// Strings compared, nothing hashed.
pub fn same_in_order(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| ka == kb && same_in_order(va, vb))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_in_order(p, q))
        }
        _ => a == b,
    }
}

/// `a == b` (members in any order), deciding by [`same_in_order`] first:
/// a member a feed left alone is in its stored order, and comparing in
/// order skips hashing every key of one side to find it in the other.
pub fn same_value(a: &Value, b: &Value) -> bool {
    same_in_order(a, b) || a == b
}

/// `value` as a JSON string, as [`encode_string`] writes it, onto `out`: most
/// strings (FHIR member names always) need no escape and are copied in.
pub fn push_string(out: &mut String, value: &str) {
    if writes_as_is(value) {
        out.push('"');
        out.push_str(value);
        out.push('"');
    } else {
        out.push_str(&encode_string(value));
    }
}

/// Whether `value` goes into a JSON string as it is: no control character,
/// quote or backslash (which serde_json escapes). Checked 16 bytes at a time
/// without stopping early, which the compiler turns into vector compares.
fn writes_as_is(value: &str) -> bool {
    let escaped = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    let mut chunks = value.as_bytes().chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |any, &b| any | escaped(b)) {
            return false;
        }
    }
    !chunks.remainder().iter().any(|&b| escaped(b))
}

/// `value` as compact JSON onto `out`, byte for byte as `serde_json::to_writer`
/// writes it (a test holds it to that), without serde's machinery: strings
/// that need no escape, most of them, are copied in; the rest, and numbers,
/// are written by serde_json itself.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::String(s) => {
            write_str(out, s);
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(members) => {
            out.push(b'{');
            for (i, (key, member)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, key);
                out.push(b':');
                write_value(out, member);
            }
            out.push(b'}');
        }
        Value::Number(_) => {
            // (Writing to a Vec cannot fail.)
            let _ = serde_json::to_writer(&mut *out, value);
        }
    }
}

/// `s` as a JSON string onto `out`; `false` when it needed escapes.
fn write_str(out: &mut Vec<u8>, s: &str) -> bool {
    if writes_as_is(s) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        true
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
        false
    }
}

/// A JSON string literal for `value`.
pub fn encode_string(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "\"\"".to_string())
}

/// As [`decode_string`], borrowed from `token` when it has no escapes.
fn decode_str(token: &str) -> Option<Cow<'_, str>> {
    if !token.contains('\\') {
        return token
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .map(Cow::Borrowed);
    }
    serde_json::from_str(token).ok().map(Cow::Owned)
}

/// The value of a JSON string token (quotes included), escapes resolved.
fn decode_string(token: &str) -> Option<String> {
    decode_str(token).map(Cow::into_owned)
}

fn skip_ws(bytes: &[u8], mut pos: usize) -> usize {
    while matches!(bytes.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

/// Given `bytes[start] == b'"'`, the index just past the closing quote.
fn string_end(bytes: &[u8], start: usize) -> Result<usize, JsonShapeError> {
    let mut pos = start + 1;
    // Most of a resource's text is inside strings: skipped to the next
    // quote or escape at memchr's speed, not a byte at a time.
    while let Some(found) = bytes.get(pos..).and_then(|rest| memchr2(b'"', b'\\', rest)) {
        pos += found;
        if bytes[pos] == b'"' {
            return Ok(pos + 1);
        }
        pos += 2;
    }
    Err(JsonShapeError::Truncated)
}

/// The index just past the JSON value that starts at `start`.
fn value_end(bytes: &[u8], start: usize) -> Result<usize, JsonShapeError> {
    match bytes.get(start) {
        None => Err(JsonShapeError::Truncated),
        Some(b'"') => string_end(bytes, start),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut pos = start;
            while pos < bytes.len() {
                match bytes[pos] {
                    b'"' => {
                        pos = string_end(bytes, pos)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(pos + 1);
                        }
                    }
                    _ => {}
                }
                pos += 1;
            }
            Err(JsonShapeError::Truncated)
        }
        Some(_) => {
            let mut pos = start;
            while pos < bytes.len()
                && !matches!(
                    bytes[pos],
                    b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'
                )
            {
                pos += 1;
            }
            Ok(pos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_value_ignores_member_order_and_same_in_order_does_not() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"c":[1,{"d":2,"e":3}]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":{"c":[1,{"e":3,"d":2}]},"a":1}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"a":1,"b":{"c":[1,{"d":2,"e":4}]}}"#).unwrap();
        assert!(same_in_order(&a, &a.clone()));
        assert!(!same_in_order(&a, &b));
        assert!(same_value(&a, &b));
        assert!(!same_value(&a, &c));
        assert_eq!(text_of(&b), b.to_string());
    }

    #[test]
    fn written_objects_know_their_members_as_a_scan_finds_them() {
        let cases = [
            r#"{"resourceType":"Patient","id":"a","name":[{"family":"O'Brien","given":["A \"B\""]}],"x":{"y":[1,{"z":null}]},"n":1.5,"t":true}"#,
            r#"{}"#,
            r#"{"a\"b":1,"c":"d"}"#,
            r#"["not", "an", "object"]"#,
        ];
        for case in cases {
            let value: Value = serde_json::from_str(case).unwrap();
            let written = Written::of(&value);
            assert_eq!(written.text(), text_of(&value), "{case}");
            assert_eq!(written.members(), written_members(written.text()), "{case}");
        }
        // Raw members kept as given, beside written ones.
        let mut object = WrittenObject::with_capacity(0);
        object.push_raw("a", "1.50");
        object.push_value("b", &serde_json::json!({"c": [1, 2]}));
        let written = object.finish();
        assert_eq!(written.text(), r#"{"a":1.50,"b":{"c":[1,2]}}"#);
        assert_eq!(written.members(), written_members(written.text()));
    }

    #[test]
    fn keeps_decimal_precision_and_offsets_while_minifying() {
        let text = "{ \"resourceType\" : \"Observation\",\n \"valueQuantity\": {\"value\": 1.50},\n \"a\": [80, 1e3, -0.0], \"t\": \"2020-01-01T10:00:00+01:00\" }";
        let members = object_members(text).unwrap();
        let values: Vec<&str> = members.iter().map(|m| m.value.as_str()).collect();
        assert_eq!(
            values,
            [
                "\"Observation\"",
                "{\"value\":1.50}",
                "[80,1e3,-0.0]",
                "\"2020-01-01T10:00:00+01:00\""
            ]
        );
    }

    #[test]
    fn push_string_writes_what_serde_json_writes() {
        for value in [
            "resourceType",
            "",
            "say \"hi\"",
            "back\\slash",
            "tab\there",
            "bell\u{7}",
            "del\u{7f}",
            "a/b",
            "Zoë – 東京",
        ] {
            let mut out = String::from("x");
            push_string(&mut out, value);
            assert_eq!(out, format!("x{}", encode_string(value)), "{value:?}");
        }
    }

    #[test]
    fn written_members_split_the_gateways_own_json_as_the_checked_split_does() {
        let value = serde_json::json!({
            "resourceType": "Patient",
            "name": [{"family": "O'Brien \"Jr\"", "given": ["A", "B"]}],
            "extension": [{"url": "http://x/e", "valueDecimal": 1.5}],
            "active": true
        });
        let text = value.to_string();
        let written: Vec<(String, String)> = written_members(&text)
            .unwrap()
            .into_iter()
            .map(|m| (m.key.into_owned(), m.value.to_string()))
            .collect();
        let checked: Vec<(String, String)> = object_members(&text)
            .unwrap()
            .into_iter()
            .map(|m| (m.key, m.value))
            .collect();
        assert_eq!(written, checked);
        assert_eq!(written.len(), 4);
        assert_eq!(written_members("[1]"), Err(JsonShapeError::NotAnObject));
    }

    #[test]
    fn keeps_whitespace_and_escapes_inside_strings() {
        let members = object_members(r#"{"text": "a  \" b\\", "k\u0065y": 1}"#).unwrap();
        assert_eq!(members[0].value, r#""a  \" b\\""#);
        assert_eq!(members[1].key, "key");
    }

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        let err = object_members(
            r#"{"resourceType":"Encounter","class":{"system":"s","code":"bogus","code":"EMER"}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, JsonShapeError::DuplicateKey(ref k) if k == "class.code"),
            "{err:?}"
        );
        let err = object_members(
            r#"{"resourceType":"Patient","name":[{"given":["A"]},{"family":"B","use":"x","family":"C"}]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, JsonShapeError::DuplicateKey(ref k) if k == "name.family"),
            "{err:?}"
        );
        // The same name in sibling objects, or as a string value, is fine.
        assert!(
            object_members(
                r#"{"resourceType":"Patient","name":[{"family":"A"},{"family":"B"}],"x":{"a":"a","b":{"a":"a"}}}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn refuses_duplicate_top_level_keys() {
        assert_eq!(
            object_members(r#"{"id":"a","id":"b"}"#),
            Err(JsonShapeError::DuplicateKey("id".into()))
        );
    }

    #[test]
    fn refuses_non_objects_without_panicking() {
        for text in [
            "[]",
            "1",
            "",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":[1,",
            "{\"a\":\"x",
        ] {
            assert!(object_members(text).is_err(), "{text}");
        }
    }

    #[test]
    fn splits_arrays_into_minified_elements() {
        let elements = array_elements(" [ {\"a\": [1, 2]} , \"x,]\", 3 ] ").unwrap();
        assert_eq!(elements, ["{\"a\":[1,2]}", "\"x,]\"", "3"]);
        assert_eq!(array_elements("[]").unwrap(), Vec::<String>::new());
        assert!(array_elements("{}").is_err());
        assert!(array_elements("[1,").is_err());
    }

    #[test]
    fn rewrites_references_only() {
        let map = FastMap::from_iter([("urn:uuid:1".to_string(), "Patient/abc".to_string())]);
        let out = rewrite_references(
            r#"{"urn:uuid:1":"urn:uuid:1","subject":{"reference":"urn:uuid:1"},"identifier":[{"system":"urn:ietf:rfc:3986","value":"urn:uuid:1"}],"basedOn":[{"reference":"urn:uuid:12"},{"reference":"urn:uuid:1"}]}"#,
            &map,
        );
        assert_eq!(
            out,
            r#"{"urn:uuid:1":"urn:uuid:1","subject":{"reference":"Patient/abc"},"identifier":[{"system":"urn:ietf:rfc:3986","value":"urn:uuid:1"}],"basedOn":[{"reference":"urn:uuid:12"},{"reference":"Patient/abc"}]}"#
        );
    }
}
