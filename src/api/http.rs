//! HTTP details of the FHIR API: media types, bounded bodies, `Prefer`,
//! `If-Match`, base URLs and FHIR responses.

use super::error::ApiError;
use crate::fhir::datetime::{format_http_date, format_instant};
use crate::fhir::outcome::Issue;
use crate::store::{Change, Stored};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// `axum::extract::Path`, refusing an undecodable path (`/fhir/Patient/%FF`)
/// with an OperationOutcome instead of axum's plain-text answer.
pub struct FhirPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for FhirPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(FhirPath(value)),
            Err(rejection) => Err(ApiError::bad_request(Issue::error(
                "structure",
                format!("the URL path cannot be read: {}", rejection.body_text()),
            ))),
        }
    }
}

/// Media types a FHIR request body may have.
const ACCEPTED_MEDIA_TYPES: [&str; 3] = [
    "application/fhir+json",
    "application/json",
    // The DSTU2 name, still sent by some older clients.
    "application/json+fhir",
];

/// Reads a FHIR request body: JSON media types only (415), at most `limit`
/// bytes (413), refused by its declared length before any of it is read.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    read_body_of(
        headers,
        body,
        limit,
        &ACCEPTED_MEDIA_TYPES,
        "application/fhir+json (or application/json)",
    )
    .await
}

/// Reads a request body of one of `accepted` media types (415 otherwise),
/// at most `limit` bytes (413).
pub async fn read_body_of(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    accepted: &[&str],
    described: &str,
) -> Result<Bytes, ApiError> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match media_type.as_deref() {
        Some(m) if accepted.contains(&m) => {}
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Issue::error(
                    "not-supported",
                    format!(
                        "the body must be {described}, not {}",
                        other.map_or("unstated".to_string(), |m| format!("\"{m}\""))
                    ),
                ),
            ));
        }
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Issue::error(
                "too-long",
                format!("the body is larger than this gateway's limit of {limit} bytes"),
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(too_large()),
        Err(err) => Err(ApiError::bad_request(Issue::error(
            "structure",
            format!("the body could not be read: {err}"),
        ))),
    }
}

/// What the client asked for in `Prefer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefer {
    pub return_: Return,
    /// `handling=strict` (the default here) refuses unknown search parameters.
    pub strict: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

impl Prefer {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut prefer = Prefer {
            return_: Return::Representation,
            strict: true,
        };
        for value in headers.get_all("prefer") {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split([',', ';']).map(str::trim) {
                match token.replace(' ', "").as_str() {
                    "return=minimal" => prefer.return_ = Return::Minimal,
                    "return=representation" => prefer.return_ = Return::Representation,
                    "return=OperationOutcome" => prefer.return_ = Return::OperationOutcome,
                    "handling=lenient" => prefer.strict = false,
                    "handling=strict" => prefer.strict = true,
                    _ => {}
                }
            }
        }
        prefer
    }
}

/// The version an `If-Match` header names: `W/"3"`, `"3"` or `3`.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    match version_of_etag(text) {
        Some(v) => Ok(Some(v)),
        None => Err(ApiError::bad_request(Issue::error(
            "value",
            format!("If-Match must name a version such as W/\"3\", not \"{text}\""),
        ))),
    }
}

/// The version an ETag names (`W/"3"`, `"3"`, `3`), if it names one.
pub fn version_of_etag(text: &str) -> Option<i64> {
    text.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
}

/// The base of the FHIR API as clients see it (`http://host:port/fhir`).
pub fn base_url(configured: Option<&str>, headers: &HeaderMap) -> String {
    if let Some(base) = configured {
        return base.to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("http://{host}/fhir")
}

/// A response with a FHIR JSON body.
pub fn fhir_json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, FHIR_JSON)], body).into_response()
}

/// `W/"3"`.
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// The status of a write: 201 when it created the resource, 200 otherwise.
pub fn write_status(change: Change) -> StatusCode {
    match change {
        Change::Created => StatusCode::CREATED,
        Change::Updated | Change::Unchanged | Change::Existing => StatusCode::OK,
    }
}

/// What `Prefer: return=OperationOutcome` answers for a version written or
/// found: an informational OperationOutcome naming it.
pub fn stored_outcome(stored: &Stored) -> serde_json::Value {
    crate::fhir::outcome::operation_outcome(&[Issue::information(
        "informational",
        format!(
            "{}/{} version {} stored at {}",
            stored.resource_type,
            stored.id,
            stored.version,
            format_instant(stored.last_updated_ms)
        ),
    )])
}

/// A response carrying one resource version, with its ETag and Last-Modified,
/// and a Location when it was just written.
pub fn resource_response(
    status: StatusCode,
    stored: &Stored,
    location_base: Option<&str>,
    prefer: Return,
) -> Response {
    let body = match prefer {
        Return::Representation => stored.body.clone(),
        Return::Minimal => String::new(),
        Return::OperationOutcome => stored_outcome(stored).to_string(),
    };
    let mut response = if body.is_empty() {
        Response::builder()
            .status(status)
            .body(Body::empty())
            .unwrap_or_default()
    } else {
        fhir_json(status, body)
    };
    let headers = response.headers_mut();
    insert(headers, header::ETAG, &etag(stored.version));
    insert(
        headers,
        header::LAST_MODIFIED,
        &format_http_date(stored.last_updated_ms),
    );
    if let Some(base) = location_base {
        insert(
            headers,
            header::LOCATION,
            &format!(
                "{base}/{}/{}/_history/{}",
                stored.resource_type, stored.id, stored.version
            ),
        );
    }
    response
}

fn insert(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}
