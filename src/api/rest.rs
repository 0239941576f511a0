//! Instance and type interactions: create, read, vread, history, update,
//! conditional update, search.

use super::AppState;
use super::error::ApiError;
use super::http::{
    FhirPath, Prefer, base_url, fhir_json, if_match, read_body, resource_response, write_status,
};
use crate::fhir::outcome::Issue;
use crate::fhir::resource::prepare;
use crate::fhir::search::{CURSOR_PARAM, SearchQuery, parse_search};
use crate::fhir::{ResourceType, is_valid_id, new_id};
use crate::store::{Mutation, SearchPage, Stored, WriteOutcome, WriteRequest, Written};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::fmt::Write;

/// The resource type named in the URL, or 404.
pub fn resource_type(name: &str) -> Result<ResourceType, ApiError> {
    ResourceType::parse(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "this gateway has no resource type \"{name}\" (it serves Patient, Encounter, CarePlan and ServiceRequest)"
        ))
    })
}

fn checked_id(ty: ResourceType, id: &str) -> Result<(), ApiError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            Issue::error("value", format!("\"{id}\" is not a valid FHIR id"))
                .at(format!("{ty}.id")),
        ))
    }
}

/// Decoded query parameters.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A search condition in a header or a URL (`If-None-Exist`, conditional
/// update): at least one criterion, every parameter known.
pub fn condition(ty: ResourceType, query: &str, expression: &str) -> Result<SearchQuery, ApiError> {
    // Some clients write the whole search URL (`Patient?identifier=…`).
    let query = query
        .strip_prefix(ty.as_str())
        .unwrap_or(query)
        .trim_start_matches('?');
    let (query, _) = parse_search(ty, &query_pairs(Some(query)), true).map_err(|issue| {
        ApiError::bad_request(Issue {
            expression: vec![expression.to_string()],
            ..issue
        })
    })?;
    if query.clauses.is_empty() {
        return Err(ApiError::bad_request(
            Issue::error(
                "required",
                "a condition needs at least one search criterion",
            )
            .at(expression),
        ));
    }
    Ok(query)
}

/// Sends one mutation and returns what it did.
async fn write_one(state: &AppState, mutation: Mutation) -> Result<Written, ApiError> {
    let outcome = state
        .store
        .write(WriteRequest {
            mutations: vec![mutation],
            atomic: true,
        })
        .await?;
    match outcome {
        WriteOutcome::Applied(mut results) if results.len() == 1 => match results.remove(0) {
            Ok(written) => Ok(written),
            Err(error) => Err(ApiError::from_mutation(&error, None)),
        },
        WriteOutcome::RolledBack { error, .. } => Err(ApiError::from_mutation(&error, None)),
        WriteOutcome::Applied(results) => Err(ApiError::from(crate::store::StoreError::Io(
            std::io::Error::other(format!("one write gave {} results", results.len())),
        ))),
    }
}

fn written_response(written: &Written, base: &str, prefer: Prefer) -> Response {
    let status = write_status(written.change);
    resource_response(status, &written.resource, Some(base), prefer.return_)
}

pub async fn create(
    State(state): State<AppState>,
    FhirPath(type_name): FhirPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ty = resource_type(&type_name)?;
    let bytes = read_body(&headers, body, state.http.max_body_bytes).await?;
    let resource = prepare(&bytes, Some(ty), &state.validator)?;
    let if_none_exist = match headers.get("if-none-exist") {
        None => None,
        Some(value) => Some(condition(
            ty,
            value.to_str().unwrap_or(""),
            "If-None-Exist",
        )?),
    };
    let written = write_one(
        &state,
        Mutation::Create {
            resource,
            id: new_id(),
            if_none_exist,
            full_url: None,
        },
    )
    .await?;
    let base = base_url(state.http.base_url.as_deref(), &headers);
    Ok(written_response(
        &written,
        &base,
        Prefer::from_headers(&headers),
    ))
}

pub async fn update(
    State(state): State<AppState>,
    FhirPath((type_name, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ty = resource_type(&type_name)?;
    checked_id(ty, &id)?;
    let expected = if_match(&headers)?;
    let bytes = read_body(&headers, body, state.http.max_body_bytes).await?;
    let resource = prepare(&bytes, Some(ty), &state.validator)?;
    match &resource.id {
        Some(body_id) if *body_id == id => {}
        Some(body_id) => {
            return Err(ApiError::bad_request(
                Issue::error(
                    "invalid",
                    format!("the body's id \"{body_id}\" is not the id in the URL, \"{id}\""),
                )
                .at(format!("{ty}.id")),
            ));
        }
        None => {
            return Err(ApiError::bad_request(
                Issue::error(
                    "required",
                    format!("an update must carry the id \"{id}\" in the body"),
                )
                .at(format!("{ty}.id")),
            ));
        }
    }
    let written = write_one(
        &state,
        Mutation::Update {
            resource,
            id,
            if_match: expected,
            full_url: None,
        },
    )
    .await?;
    let base = base_url(state.http.base_url.as_deref(), &headers);
    Ok(written_response(
        &written,
        &base,
        Prefer::from_headers(&headers),
    ))
}

pub async fn conditional_update(
    State(state): State<AppState>,
    FhirPath(type_name): FhirPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ty = resource_type(&type_name)?;
    let condition = condition(ty, query.as_deref().unwrap_or(""), &format!("{ty}?"))?;
    let expected = if_match(&headers)?;
    let bytes = read_body(&headers, body, state.http.max_body_bytes).await?;
    let resource = prepare(&bytes, Some(ty), &state.validator)?;
    let written = write_one(
        &state,
        Mutation::ConditionalUpdate {
            resource,
            query: condition,
            new_id: new_id(),
            if_match: expected,
            full_url: None,
        },
    )
    .await?;
    let base = base_url(state.http.base_url.as_deref(), &headers);
    Ok(written_response(
        &written,
        &base,
        Prefer::from_headers(&headers),
    ))
}

pub async fn read(
    State(state): State<AppState>,
    FhirPath((type_name, id)): FhirPath<(String, String)>,
) -> Result<Response, ApiError> {
    let ty = resource_type(&type_name)?;
    checked_id(ty, &id)?;
    match state.store.read(ty, &id).await? {
        Some(stored) => Ok(resource_response(
            StatusCode::OK,
            &stored,
            None,
            super::http::Return::Representation,
        )),
        None => Err(ApiError::not_found(format!("{ty}/{id} does not exist"))),
    }
}

pub async fn vread(
    State(state): State<AppState>,
    FhirPath((type_name, id, version)): FhirPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    let ty = resource_type(&type_name)?;
    checked_id(ty, &id)?;
    let Some(version) = version.parse::<i64>().ok().filter(|v| *v > 0) else {
        return Err(ApiError::not_found(format!(
            "\"{version}\" is not a version of {ty}/{id}"
        )));
    };
    match state.store.vread(ty, &id, version).await? {
        Some(stored) => Ok(resource_response(
            StatusCode::OK,
            &stored,
            None,
            super::http::Return::Representation,
        )),
        None => Err(ApiError::not_found(format!(
            "{ty}/{id} has no version {version}"
        ))),
    }
}

pub async fn history(
    State(state): State<AppState>,
    FhirPath((type_name, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ty = resource_type(&type_name)?;
    checked_id(ty, &id)?;
    let versions = state.store.history(ty, &id).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("{ty}/{id} does not exist")));
    }
    let base = base_url(state.http.base_url.as_deref(), &headers);
    let mut out = bundle_head("history", Some(versions.len()));
    let _ = write!(
        out,
        r#","link":[{{"relation":"self","url":{}}}],"entry":["#,
        json_str(&format!("{base}/{ty}/{id}/_history"))
    );
    for (i, v) in versions.iter().enumerate() {
        let (method, status) = if v.version == 1 {
            ("POST", "201 Created")
        } else {
            ("PUT", "200 OK")
        };
        let _ = write!(
            out,
            r#"{}{{"fullUrl":{},"resource":{},"request":{{"method":"{method}","url":"{ty}/{id}"}},"response":{{"status":"{status}","etag":{},"lastModified":"{}"}}}}"#,
            if i > 0 { "," } else { "" },
            json_str(&format!("{base}/{ty}/{id}")),
            v.body,
            json_str(&super::http::etag(v.version)),
            crate::fhir::datetime::format_instant(v.last_updated_ms),
        );
    }
    out.push_str("]}");
    Ok(fhir_json(StatusCode::OK, out))
}

pub async fn search(
    State(state): State<AppState>,
    FhirPath(type_name): FhirPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ty = resource_type(&type_name)?;
    let prefer = Prefer::from_headers(&headers);
    let base = base_url(state.http.base_url.as_deref(), &headers);
    let body = run_search(&state, ty, query.as_deref(), prefer.strict, &base).await?;
    Ok(fhir_json(StatusCode::OK, body))
}

/// Runs a search and renders its `searchset` Bundle (also used by GET entries
/// of batch and transaction Bundles).
pub async fn run_search(
    state: &AppState,
    ty: ResourceType,
    query: Option<&str>,
    strict: bool,
    base: &str,
) -> Result<String, ApiError> {
    let (query, warnings) =
        parse_search(ty, &query_pairs(query), strict).map_err(ApiError::bad_request)?;
    let page = state.store.search(&query).await?;
    Ok(searchset(&query, &page, &warnings, base))
}

fn searchset(query: &SearchQuery, page: &SearchPage, warnings: &[Issue], base: &str) -> String {
    let ty = query.resource_type;
    let link = |after: Option<&str>| {
        let mut params = query.canonical.clone();
        params.push(("_count".to_string(), query.count.to_string()));
        if let Some(after) = after {
            params.push((CURSOR_PARAM.to_string(), after.to_string()));
        }
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        format!("{base}/{ty}?{encoded}")
    };
    let mut out = bundle_head("searchset", Some(page.total));
    let _ = write!(
        out,
        r#","link":[{{"relation":"self","url":{}}}"#,
        json_str(&link(query.after.as_deref()))
    );
    if let Some(next) = &page.next_after {
        let _ = write!(
            out,
            r#",{{"relation":"next","url":{}}}"#,
            json_str(&link(Some(next)))
        );
    }
    out.push_str(r#"],"entry":["#);
    let mut first = true;
    for stored in &page.resources {
        if !first {
            out.push(',');
        }
        first = false;
        push_match(&mut out, stored, base);
    }
    if !warnings.is_empty() {
        if !first {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"resource":{},"search":{{"mode":"outcome"}}}}"#,
            crate::fhir::outcome::operation_outcome(warnings)
        );
    }
    out.push_str("]}");
    out
}

fn push_match(out: &mut String, stored: &Stored, base: &str) {
    let _ = write!(
        out,
        r#"{{"fullUrl":{},"resource":{},"search":{{"mode":"match"}}}}"#,
        json_str(&format!("{base}/{}/{}", stored.resource_type, stored.id)),
        stored.body
    );
}

/// `{"resourceType":"Bundle","id":…,"meta":…,"type":…[,"total":…]` (unclosed).
pub fn bundle_head(kind: &str, total: Option<usize>) -> String {
    let now = jiff::Timestamp::now().as_millisecond();
    let mut out = format!(
        r#"{{"resourceType":"Bundle","id":"{}","meta":{{"lastUpdated":"{}"}},"type":"{kind}""#,
        new_id(),
        crate::fhir::datetime::format_instant(now)
    );
    if let Some(total) = total {
        let _ = write!(out, r#","total":{total}"#);
    }
    out
}

pub fn json_str(value: &str) -> String {
    crate::fhir::json::encode_string(value)
}
