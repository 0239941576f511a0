//! `GET /routing/deliveries` lists deliveries with their state (attempts,
//! last error, next attempt, why one waits); `POST
//! /routing/deliveries/{id}/retry` sends a dead one again.

use super::AppState;
use super::error::ApiError;
use crate::fhir::outcome::Issue;
use crate::routing::RetryAnswer;
use crate::store::{Delivery, DeliveryQuery, DeliveryStatus};
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Pages of stored rows looked through for one answer.
const MAX_PAGES_SCANNED: usize = 20;

/// What the list may ask for: a stored status, or `waiting` (pending, but
/// held back by hours or by an earlier delivery of the same patient).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Stored(DeliveryStatus),
    /// Pending and not held back.
    Pending,
    Waiting,
}

pub async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (mut after, mut limit) = (0i64, DEFAULT_PAGE);
    let mut wanted: Option<Wanted> = None;
    let mut destination = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let parsed = match key.as_ref() {
            "after" => value.parse().map(|v| after = v).is_ok(),
            "limit" | "_count" => value
                .parse()
                .map(|v: usize| limit = v.clamp(1, MAX_PAGE))
                .is_ok(),
            "destination" => {
                destination = Some(value.to_string());
                true
            }
            "status" => {
                wanted = match value.as_ref() {
                    "pending" => Some(Wanted::Pending),
                    "waiting" => Some(Wanted::Waiting),
                    "delivered" => Some(Wanted::Stored(DeliveryStatus::Delivered)),
                    "dead" => Some(Wanted::Stored(DeliveryStatus::Dead)),
                    _ => None,
                };
                wanted.is_some()
            }
            _ => false,
        };
        if !parsed {
            return Err(ApiError::bad_request(Issue::error(
                "invalid",
                format!(
                    "{key}={value:?} is not understood (status=pending|waiting|delivered|dead, destination=NAME, after=ID, limit=N)"
                ),
            )));
        }
    }
    let statuses = match wanted {
        Some(Wanted::Stored(status)) => vec![status],
        Some(Wanted::Pending | Wanted::Waiting) => vec![DeliveryStatus::Pending],
        None => Vec::new(),
    };
    // Pending and waiting are one stored status: page through it until the
    // page is full of the kind asked for.
    let mut found: Vec<(Delivery, Option<String>)> = Vec::new();
    // `cursor`: the last row looked at. Pending and waiting share a stored
    // status, so at most MAX_PAGES_SCANNED pages are looked through for one
    // answer; `next` goes on from where it stopped.
    let mut cursor = after;
    let mut more = false;
    for _ in 0..MAX_PAGES_SCANNED {
        let page = state
            .store
            .deliveries(DeliveryQuery {
                statuses: statuses.clone(),
                destination: destination.clone(),
                after: cursor,
                limit,
            })
            .await?;
        more = page.len() == limit;
        let pending: Vec<i64> = page
            .iter()
            .filter(|d| d.status == DeliveryStatus::Pending)
            .map(|d| d.id)
            .collect();
        let mut reasons = state.routing.held_because(pending).await.into_iter();
        for delivery in page {
            if found.len() == limit {
                more = true;
                break;
            }
            cursor = delivery.id;
            let reason = if delivery.status == DeliveryStatus::Pending {
                reasons.next().flatten()
            } else {
                None
            };
            let keep = match wanted {
                Some(Wanted::Pending) => reason.is_none(),
                Some(Wanted::Waiting) => reason.is_some(),
                _ => true,
            };
            if keep {
                found.push((delivery, reason));
            }
        }
        if found.len() == limit || !more {
            break;
        }
    }
    let next = more.then_some(cursor).map(|last| {
        let mut link = format!("/routing/deliveries?after={last}&limit={limit}");
        if let Some(w) = wanted {
            link.push_str("&status=");
            link.push_str(match w {
                Wanted::Stored(s) => s.as_str(),
                Wanted::Pending => "pending",
                Wanted::Waiting => "waiting",
            });
        }
        if let Some(d) = &destination {
            link.push_str("&destination=");
            link.extend(form_urlencoded::byte_serialize(d.as_bytes()));
        }
        link
    });
    let body = json!({
        "deliveries": found.iter().map(|(d, why)| describe(d, why.as_deref())).collect::<Vec<_>>(),
        "next": next,
    });
    Ok(json_response(StatusCode::OK, &body))
}

pub async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let delivery = find(&state, &id).await?;
    let reason = if delivery.status == DeliveryStatus::Pending {
        state
            .routing
            .held_because(vec![delivery.id])
            .await
            .pop()
            .flatten()
    } else {
        None
    };
    Ok(json_response(
        StatusCode::OK,
        &describe(&delivery, reason.as_deref()),
    ))
}

pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let delivery = find(&state, &id).await?;
    let conflict = |why: String| ApiError::new(StatusCode::CONFLICT, Issue::error("conflict", why));
    if delivery.status == DeliveryStatus::Delivered {
        return Err(conflict(format!(
            "delivery {} was delivered already",
            delivery.id
        )));
    }
    match state.routing.retry(delivery.id).await {
        RetryAnswer::Scheduled { delivery, saved } => {
            match saved.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(err.into()),
                Err(_) => return Err(crate::store::StoreError::Closed.into()),
            }
            Ok(json_response(
                StatusCode::ACCEPTED,
                &describe(&delivery, None),
            ))
        }
        RetryAnswer::Behind(head) => Err(conflict(format!(
            "delivery {} waits behind delivery {head} for the same patient and destination; retry that one",
            delivery.id
        ))),
        RetryAnswer::InFlight => Err(conflict(format!(
            "delivery {} is being attempted now",
            delivery.id
        ))),
        RetryAnswer::NotConfigured => Err(conflict(format!(
            "delivery {} cannot be retried: its destination `{}` is not configured",
            delivery.id, delivery.destination
        ))),
        RetryAnswer::NotOpen => Err(conflict(format!(
            "delivery {} is not waiting to be sent (it may have been delivered a moment ago); look it up again",
            delivery.id
        ))),
        RetryAnswer::Stopping => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Issue::error(
                "transient",
                "routing is shutting down; retry after the restart",
            ),
        )),
    }
}

/// `POST /routing/deliveries/retry?destination=NAME`: every dead delivery
/// to a destination (after its token or URL was fixed, say).
pub async fn retry_dead(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let destination = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "destination")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| {
            ApiError::bad_request(Issue::error(
                "required",
                "name the destination: POST /routing/deliveries/retry?destination=NAME",
            ))
        })?;
    let retried = state.routing.retry_dead(&destination).await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"destination": destination, "retried": retried}),
    ))
}

async fn find(state: &AppState, id: &str) -> Result<Delivery, ApiError> {
    let missing = || ApiError::not_found(format!("no delivery {id:?}"));
    let id: i64 = id.parse().map_err(|_| missing())?;
    state.store.delivery(id).await?.ok_or_else(missing)
}

fn describe(d: &Delivery, held_because: Option<&str>) -> Value {
    let time = |ms: Option<i64>| ms.map(crate::routing::format_time);
    let status = match (d.status, held_because) {
        (DeliveryStatus::Pending, Some(_)) => "waiting",
        (status, _) => status.as_str(),
    };
    json!({
        "id": d.id,
        "status": status,
        "waiting_because": held_because,
        "destination": d.destination,
        "rule": d.rule,
        "resource": format!("{}/{}/_history/{}", d.resource_type, d.resource_id, d.version),
        "patient": d.lane,
        "idempotency_key": d.key,
        "committed": time(Some(d.created_ms)),
        "attempts": d.attempts,
        "next_attempt": if d.status == DeliveryStatus::Pending { time(d.next_attempt_ms) } else { None },
        "last_status": d.last_status,
        "last_error": d.last_error,
        "response": d.response,
        "delivered": time(d.delivered_ms),
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
