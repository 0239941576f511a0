//! Feeds in: `POST /ingest/gp-risk-list` (GP risk lists as CSV). The upload
//! is journaled before anything else, then read, mapped, validated and
//! stored; the answer is the ingest report.

use super::AppState;
use super::error::ApiError;
use super::http::read_body_of;
use crate::fhir::outcome::Issue;
use crate::gp::ingest::{IngestError, SOURCE, ingest_list};
use crate::gp::layout::Format;
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

fn bad(text: String) -> ApiError {
    ApiError::bad_request(Issue::error("invalid", text))
}
