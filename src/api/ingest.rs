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
/// answer is always 200 with the ACKs (one per message, in order, separated
/// by a blank line); the ACK codes say what happened to each.
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
    for message in messages {
        let ack = if message.len() > state.hl7v2_max_bytes {
            state.hl7v2.unreadable(&format!(
                "the message is {} bytes, over the limit of {}",
                message.len(),
                state.hl7v2_max_bytes
            ))
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
/// (start of body, or after `\r` or `\n`). Batch envelopes (FHS, BHS, BTS,
/// FTS) and anything before the first MSH are left out.
pub fn split_messages(body: &[u8]) -> Vec<&[u8]> {
    let starts_segment = |i: usize| i == 0 || matches!(body[i - 1], b'\r' | b'\n');
    let mut starts: Vec<usize> = (0..body.len())
        .filter(|&i| body[i..].starts_with(b"MSH") && starts_segment(i))
        .collect();
    starts.push(body.len());
    starts
        .windows(2)
        .map(|w| trim_batch(&body[w[0]..w[1]]))
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
    let trimmed = message
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &message[..trimmed]
}

fn bad(text: String) -> ApiError {
    ApiError::bad_request(Issue::error("invalid", text))
}
