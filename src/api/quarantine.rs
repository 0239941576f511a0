//! `GET /quarantine` lists inputs refused for their content, with their
//! reasons; `POST /quarantine/{id}/replay` runs one through again (after a
//! fix in configuration or profiles) and marks it replayed when it goes in;
//! `POST /quarantine/{id}/discard` marks one looked at and not to be applied,
//! so that the held list shows what is still to do.

use super::AppState;
use super::error::ApiError;
use crate::fhir::outcome::Issue;
use crate::gp;
use crate::hl7v2::ingest::Verdict;
use crate::store::Quarantined;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Default and largest page of `GET /quarantine`.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (mut after, mut limit, mut all) = (0i64, DEFAULT_PAGE, false);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let parsed = match key.as_ref() {
            "after" => value.parse().map(|v| after = v).is_ok(),
            "limit" => value
                .parse()
                .map(|v: usize| limit = v.clamp(1, MAX_PAGE))
                .is_ok(),
            "status" => match value.as_ref() {
                "held" => true,
                "all" => {
                    all = true;
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !parsed {
            return Err(ApiError::bad_request(Issue::error(
                "invalid",
                format!("{key}={value:?} is not understood (after=ID, limit=N, status=held|all)"),
            )));
        }
    }
    let entries = state.store.quarantined(after, limit, all).await?;
    let next = (entries.len() == limit)
        .then(|| {
            entries.last().map(|e| {
                format!(
                    "/quarantine?after={}&limit={limit}{}",
                    e.id,
                    if all { "&status=all" } else { "" }
                )
            })
        })
        .flatten();
    let body = json!({
        "entries": entries.iter().map(describe).collect::<Vec<_>>(),
        "next": next,
    });
    Ok(json_response(StatusCode::OK, &body))
}

pub async fn replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let entry = find(&state, &id).await?;
    let id = entry.id;
    if entry.status != "held" {
        return Err(no_longer_held(id));
    }
    if entry.entry.source.starts_with("hl7v2-") {
        return replay_hl7v2(&state, id, &entry).await;
    }
    if entry.entry.source != gp::ingest::SOURCE {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            Issue::error(
                "not-supported",
                format!("inputs from {} cannot be replayed yet", entry.entry.source),
            ),
        ));
    }
    let received = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let options_for = |practice: &str, format| {
        state
            .gp_lists
            .list_options(practice, format, false, received.clone())
    };
    let outcome = gp::ingest::replay_row(
        state.store.as_ref(),
        &state.validator,
        id,
        &entry.entry.payload,
        options_for,
    )
    .await
    .map_err(|err| match err {
        gp::ingest::IngestError::Store(err) => ApiError::from(err),
        gp::ingest::IngestError::List(err) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Issue::error("invalid", format!("the saved row cannot be read: {err}")),
        ),
    })?;
    match outcome {
        // Marked replayed in the commit that stored it.
        gp::ingest::Replayed::Stored(report) => Ok(json_response(
            StatusCode::OK,
            &json!({"id": id, "status": "replayed", "report": report}),
        )),
        gp::ingest::Replayed::NotHeld => Err(no_longer_held(id)),
        gp::ingest::Replayed::Refused(errors) => Ok(json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"id": id, "status": "held", "errors": errors}),
        )),
    }
}

/// An HL7 message runs through the feed again (it is journaled already);
/// the answer carries the ACK it would now get.
async fn replay_hl7v2(
    state: &AppState,
    id: i64,
    entry: &Quarantined,
) -> Result<Response, ApiError> {
    let feed = &state.hl7v2;
    let verdict = feed
        .replay(id, &entry.entry.payload, &entry.entry.source)
        .await?;
    let ack = match crate::hl7v2::Message::parse(&String::from_utf8_lossy(&entry.entry.payload)) {
        Ok(message) => feed.acknowledge(&message, &verdict),
        Err(_) => String::new(),
    };
    let ack = ack.replace('\r', "\n");
    match verdict {
        // Marked replayed in the commit that applied it.
        Verdict::Accepted { .. } => Ok(json_response(
            StatusCode::OK,
            &json!({"id": id, "status": "replayed", "ack": ack}),
        )),
        // Replayed by another request meanwhile.
        Verdict::NotHeld => Err(no_longer_held(id)),
        // Refused again, unless another request replayed it meanwhile.
        _ if state
            .store
            .quarantined_entry(id)
            .await?
            .is_some_and(|q| q.status != "held") =>
        {
            Err(no_longer_held(id))
        }
        Verdict::Quarantined { errors, .. } => Ok(json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "id": id,
                "status": "held",
                "errors": errors,
                "ack": ack,
            }),
        )),
        // (A replay is not journaled again, so is never a repeat.)
        Verdict::Rejected(_) | Verdict::Repeat { .. } => Ok(json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"id": id, "status": "held", "ack": ack}),
        )),
    }
}

/// Marks a held entry discarded. A repeat of its input is then answered
/// as one dealt with (HL7 v2: `AA`), and changes nothing.
pub async fn discard(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = find(&state, &id).await?.id;
    if !state.store.discard_quarantined(id).await? {
        return Err(no_longer_held(id));
    }
    tracing::info!(id, "quarantined input discarded");
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": id, "status": "discarded"}),
    ))
}

/// The quarantine entry `id` names, or 404.
async fn find(state: &AppState, id: &str) -> Result<Quarantined, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("no quarantined input {id:?}")))?;
    let missing = || ApiError::not_found(format!("no quarantined input {id}"));
    state.store.quarantined_entry(id).await?.ok_or_else(missing)
}

fn no_longer_held(id: i64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        Issue::error(
            "conflict",
            format!("quarantined input {id} is no longer held (replayed or discarded)"),
        ),
    )
}

fn describe(q: &Quarantined) -> Value {
    let payload = match serde_json::from_slice::<Value>(&q.entry.payload) {
        Ok(value) => value,
        Err(_) => json!(String::from_utf8_lossy(&q.entry.payload)),
    };
    json!({
        "id": q.id,
        "source": q.entry.source,
        "sender": q.entry.sender,
        "received_at": crate::fhir::datetime::format_instant(q.entry.received_at_ms),
        "journal_id": q.entry.journal_id,
        "location": q.entry.location,
        "reasons": serde_json::from_str::<Value>(&q.entry.reasons).unwrap_or(Value::Null),
        "status": q.status,
        "resolved_at": q.resolved_at_ms.map(crate::fhir::datetime::format_instant),
        "payload": payload,
        "replay": format!("/quarantine/{}/replay", q.id),
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
