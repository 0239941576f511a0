//! Feeds in: `POST /ingest/gp-risk-list` (GP risk lists as CSV; the upload
//! is journaled before anything else, then read, mapped, validated and
//! stored; the answer is the ingest report) and `POST /ingest/hl7v2` (one
//! or more ER7 messages; the answer is their ACKs, in order).

use super::AppState;
use super::error::ApiError;
use super::http::read_body_of;
use crate::fhir::outcome::Issue;
use crate::gp::ingest::{IngestError, SOURCE, ingest_list};
use crate::gp::layout::Format;
use crate::hl7v2::ingest::SOURCE_HTTP;
use crate::store::JournalEntry;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Media types a risk list may be sent as.
const CSV_MEDIA_TYPES: [&str; 2] = ["text/csv", "application/csv"];

pub async fn gp_risk_list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut practice = None;
    let mut format = None;
    let mut atomic = false;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "practice" => practice = Some(value.trim().to_ascii_uppercase()),
            "format" => {
                format = Some(Format::parse(&value).ok_or_else(|| {
                    bad(format!(
                        "format {value:?} is not one of emis, systmone, generic"
                    ))
                })?)
            }
            "atomic" => {
                atomic = match value.as_ref() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(bad(format!("atomic must be true or false, not {other:?}")));
                    }
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter {other:?} (practice, format, atomic)"
                )));
            }
        }
    }
    let practice = practice.ok_or_else(|| bad("practice=ODS code is required".to_string()))?;
    if !(3..=10).contains(&practice.len()) || !practice.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad(format!("practice {practice:?} is not an ODS code")));
    }
    let bytes = read_body_of(
        &headers,
        body,
        state.gp_lists.max_bytes,
        &CSV_MEDIA_TYPES,
        "text/csv",
    )
    .await?;

    // Durable before anything is decided about it.
    let received = jiff::Timestamp::now();
    let receipt = state
        .store
        .journal(JournalEntry {
            source: SOURCE.to_string(),
            sender: practice.clone(),
            message_id: None,
            content_type: "text/csv".to_string(),
            received_at_ms: received.as_millisecond(),
            payload: bytes.clone(),
        })
        .await?;

    let options = state.gp_lists.list_options(
        &practice,
        format,
        atomic,
        received.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    );
    match ingest_list(
        state.store.as_ref(),
        &state.validator,
        &bytes,
        &options,
        Some(receipt.id),
    )
    .await
    {
        Ok(report) => {
            let status = if report.stored {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            let body = serde_json::to_string(&report).unwrap_or_default();
            Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Err(IngestError::List(err)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Issue::error(
                "invalid",
                format!("not a risk list this gateway can read: {err}"),
            ),
        )),
        Err(IngestError::Store(err)) => Err(err.into()),
    }
}

/// Media types an HL7 v2 body may be sent as.
const HL7_MEDIA_TYPES: [&str; 4] = [
    "x-application/hl7-v2+er7",
    "application/hl7-v2",
    "application/edi-hl7",
    "text/plain",
];

/// `POST /ingest/hl7v2`: each message of the body goes through the same
/// feed as MLLP (journal, map, validate, store) and gets its ACK. The
/// answer is always 200 with the ACKs (one per message, in order, one per
/// line), preceded by an `AR` if the body starts with bytes that are not a
/// message; the ACK codes say what happened to each.
pub async fn hl7v2(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body_of(
        &headers,
        body,
        state.http.max_body_bytes,
        &HL7_MEDIA_TYPES,
        "x-application/hl7-v2+er7",
    )
    .await?;
    let messages = split_messages(&bytes);
    if messages.is_empty() {
        return Err(bad(
            "the body holds no HL7 message (each must start with an MSH segment)".to_string(),
        ));
    }
    let mut out = String::new();
    if let Some(junk) = before_first_message(&bytes) {
        out.push_str(&state.hl7v2.unreadable(
            &format!(
                "{} bytes before the first MSH segment are not an HL7 message",
                junk.len()
            ),
            SOURCE_HTTP,
        ));
    }
    for message in messages {
        let ack = if message.len() > state.hl7v2_max_bytes {
            state.hl7v2.too_large(
                message,
                &format!(
                    "the message is {} bytes, over the limit of {}",
                    message.len(),
                    state.hl7v2_max_bytes
                ),
                SOURCE_HTTP,
            )
        } else {
            state.hl7v2.receive(message, SOURCE_HTTP).await
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&ack);
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "x-application/hl7-v2+er7")],
        out,
    )
        .into_response())
}

/// The messages of a body: each starts at an `MSH` that begins a segment
/// (start of body, or after `\r` or `\n`; spaces, tabs, byte-order marks
/// (files joined together) and MLLP's block characters (a capture of an
/// MLLP stream) before it are not content). Batch envelopes (FHS, BHS, BTS,
/// FTS), MLLP's block characters after a message, and anything before the
/// first MSH (see [`before_first_message`]) are left out.
pub fn split_messages(body: &[u8]) -> Vec<&[u8]> {
    let mut starts = message_starts(body);
    starts.push(body.len());
    starts
        .windows(2)
        .map(|w| trim_batch(&body[w[0]..w[1]]))
        .collect()
}

/// What a body holds before its first message other than blanks, a
/// byte-order mark and batch headers (FHS, BHS): bytes that are not a
/// message, to be answered as such rather than dropped unseen.
pub fn before_first_message(body: &[u8]) -> Option<&[u8]> {
    let first = message_starts(body).first().copied().unwrap_or(body.len());
    let head = &body[..first];
    let head = head.strip_prefix(UTF8_BOM).unwrap_or(head);
    let content = head
        .split(|b| matches!(b, b'\r' | b'\n'))
        .map(|line| trim_framing(line.trim_ascii()))
        .any(|line| !line.is_empty() && !line.starts_with(b"FHS") && !line.starts_with(b"BHS"));
    content.then(|| head.trim_ascii())
}

/// `line` without MLLP's block characters around it (`0x0B` before, `0x1C`
/// after), nor blanks inside them.
fn trim_framing(line: &[u8]) -> &[u8] {
    let line = line.strip_prefix(&[0x0B]).unwrap_or(line).trim_ascii();
    line.strip_suffix(&[0x1C]).unwrap_or(line).trim_ascii()
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Where the body's messages start: each `MSH` with only blanks, byte-order
/// marks and MLLP start blocks (`0x0B`) between it and the start of the body
/// or a line break.
pub(crate) fn message_starts(body: &[u8]) -> Vec<usize> {
    let starts_segment = |i: usize| {
        let mut j = i;
        loop {
            if j > 0 && matches!(body[j - 1], b' ' | b'\t' | 0x0B) {
                j -= 1;
            } else if body[..j].ends_with(UTF8_BOM) {
                j -= UTF8_BOM.len();
            } else {
                break;
            }
        }
        // An MLLP capture may have no CR between one frame's end block and
        // the next start block.
        j == 0 || matches!(body[j - 1], b'\r' | b'\n' | 0x1C)
    };
    (0..body.len())
        .filter(|&i| body[i..].starts_with(b"MSH") && starts_segment(i))
        .collect()
}

/// A message without trailing batch segments or blank lines.
fn trim_batch(message: &[u8]) -> &[u8] {
    let mut end = message.len();
    for (i, _) in message.iter().enumerate().rev() {
        if i > 0 && !matches!(message[i - 1], b'\r' | b'\n') {
            continue;
        }
        let rest = &message[i..];
        if ["BTS", "FTS", "BHS", "FHS"]
            .iter()
            .any(|s| rest.starts_with(s.as_bytes()))
        {
            end = end.min(i);
        }
    }
    let message = &message[..end];
    // Line breaks, lines of blanks, and what frames the next message or ends
    // this one: MLLP's block characters, a byte-order mark (files joined
    // together). Blanks that end a segment's text are the sender's (the
    // same message sent over MLLP keeps them) and stay.
    let mut message = message;
    loop {
        let text = message.trim_ascii_end();
        let line_start = text
            .iter()
            .rposition(|&b| matches!(b, b'\r' | b'\n'))
            .map_or(0, |i| i + 1);
        if strip_framing(&text[line_start..]).is_empty() {
            if line_start == 0 {
                return &message[..0];
            }
            message = &text[..line_start];
            continue;
        }
        // The last line with text, to its line break.
        let kept = message[line_start..]
            .iter()
            .position(|&b| matches!(b, b'\r' | b'\n'))
            .map_or(message.len(), |n| line_start + n);
        let line = &message[line_start..kept];
        let stripped = strip_framing(line);
        if stripped.len() == line.len() {
            return &message[..kept];
        }
        message = &message[..line_start + stripped.len()];
    }
}

/// `line` without blanks, MLLP block characters and byte-order marks at its
/// end, if it ends in a block character or a mark; as it is otherwise.
fn strip_framing(line: &[u8]) -> &[u8] {
    let mut line = line;
    loop {
        let trimmed = line.trim_ascii_end();
        let stripped = trimmed
            .strip_suffix(UTF8_BOM)
            .or_else(|| trimmed.strip_suffix(&[0x0B]))
            .or_else(|| trimmed.strip_suffix(&[0x1C]));
        match stripped {
            Some(shorter) => line = shorter,
            None if trimmed.is_empty() => return trimmed,
            None => return line,
        }
    }
}

fn bad(text: String) -> ApiError {
    ApiError::bad_request(Issue::error("invalid", text))
}

#[cfg(test)]
mod tests {
    use super::{before_first_message, split_messages};

    const A: &str = "MSH|^~\\&|PAS|RJZ|||202607141018||ADT^A01|M1|P|2.4\rPID|1||K1^^^RJZ^MR";
    const B: &str = "MSH|^~\\&|PAS|RJZ|||202607141018||ADT^A01|M2|P|2.4\rPID|1||K2^^^RJZ^MR";

    #[test]
    fn a_byte_order_mark_or_blanks_before_the_first_message_hide_nothing() {
        for lead in ["\u{feff}", " ", "\t ", "\u{feff} \r\n", "\r\n\r\n"] {
            let body = format!("{lead}{A}\r\n{B}\r\n");
            let messages = split_messages(body.as_bytes());
            assert_eq!(messages, vec![A.as_bytes(), B.as_bytes()], "lead {lead:?}");
            assert_eq!(before_first_message(body.as_bytes()), None, "lead {lead:?}");
        }
    }

    /// Blanks ending the last segment are the message's own text (the same
    /// message over MLLP keeps them, and a resend is compared with it);
    /// line breaks, lines of blanks and framing after it are not.
    #[test]
    fn blanks_ending_a_segment_stay_and_what_follows_it_goes() {
        let a = format!("{A} ");
        for tail in [
            "",
            "\r",
            "\r\n",
            "\r \r\n\t\r",
            "\x1c\r",
            "\r\x1c\r\u{feff}",
        ] {
            let body = format!("{a}{tail}");
            assert_eq!(
                split_messages(body.as_bytes()),
                vec![a.as_bytes()],
                "tail {tail:?}"
            );
        }
        let body = format!("{a}\r{B}\t\r\n \r\n");
        assert_eq!(
            split_messages(body.as_bytes()),
            vec![a.as_bytes(), format!("{B}\t").as_bytes()]
        );
        assert_eq!(split_messages(b" \r\n\x1c\r"), Vec::<&[u8]>::new());
    }

    #[test]
    fn content_before_the_first_message_is_reported_and_batch_headers_are_not() {
        let body = format!("hello\r{A}\r{B}");
        assert_eq!(split_messages(body.as_bytes()).len(), 2);
        assert_eq!(before_first_message(body.as_bytes()), Some(&b"hello"[..]));
        let batch = format!("FHS|^~\\&|PAS\rBHS|^~\\&|PAS\r{A}\rBTS|1\rFTS|1\r");
        assert_eq!(split_messages(batch.as_bytes()), vec![A.as_bytes()]);
        assert_eq!(before_first_message(batch.as_bytes()), None);
        assert_eq!(
            before_first_message(b"not hl7 at all"),
            Some(&b"not hl7 at all"[..])
        );
        // An MSH inside a field is not a message start.
        assert_eq!(split_messages(b"PID|1||MSH").len(), 0);
    }

    #[test]
    fn an_mllp_capture_and_files_joined_with_their_byte_order_marks_split_into_their_messages() {
        let framed = format!("\x0b{A}\r\x1c\r\x0b{B}\r\x1c\r");
        let messages = split_messages(framed.as_bytes());
        assert_eq!(messages, vec![A.as_bytes(), B.as_bytes()]);
        assert_eq!(before_first_message(framed.as_bytes()), None);
        // Back to back, without the CR after the end block.
        let tight = format!("\x0b{A}\r\x1c\x0b{B}\r\x1c");
        assert_eq!(
            split_messages(tight.as_bytes()),
            vec![A.as_bytes(), B.as_bytes()]
        );
        let tight = format!("\x0b{A}\x1c\x0b{B}\x1c\r");
        assert_eq!(
            split_messages(tight.as_bytes()),
            vec![A.as_bytes(), B.as_bytes()]
        );
        let joined = format!("\u{feff}{A}\r\n\u{feff}{B}\r\n");
        assert_eq!(
            split_messages(joined.as_bytes()),
            vec![A.as_bytes(), B.as_bytes()]
        );
    }
}
