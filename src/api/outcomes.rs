//! `GET /outcomes/report?as_of=YYYY-MM-DD[&from=…&to=…]`: the pathway
//! outcome figures as JSON (the contract's shape, with a few more fields).

use super::AppState;
use super::error::ApiError;
use crate::fhir::outcome::Issue;
use crate::outcomes::measure::Period;
use crate::outcomes::{parse_date, report};
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

pub async fn report_json(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let period = read_period(query.as_deref().unwrap_or(""))?;
    let report = report(
        state.store.as_ref(),
        &state.register,
        &state.outcomes,
        period,
    )
    .await?;
    let body = serde_json::to_string(&report).unwrap_or_default();
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// `GET /outcomes[?as_of=…&from=…&to=…]`: the dashboard.
pub async fn dashboard_html(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let period = read_period(query.as_deref().unwrap_or(""))?;
    let page = crate::outcomes::dashboard(
        state.store.as_ref(),
        &state.register,
        &state.outcomes,
        period,
    )
    .await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response())
}

/// `as_of` (default today in London), `from` (default open), `to`
/// (default `as_of`).
pub fn read_period(query: &str) -> Result<Period, ApiError> {
    let bad = |message: String, at: &str| {
        ApiError::bad_request(Issue::error("invalid", message).at(at.to_string()))
    };
    let (mut as_of, mut from, mut to) = (None, None, None);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match key.as_ref() {
            "as_of" => &mut as_of,
            "from" => &mut from,
            "to" => &mut to,
            other => {
                return Err(bad(
                    format!("{other} is not a parameter of the report (as_of, from, to)"),
                    other,
                ));
            }
        };
        *slot = Some(parse_date(&key, &value).map_err(|m| bad(m, &key))?);
    }
    Period::new(as_of, from, to).map_err(|m| bad(m, "from"))
}
