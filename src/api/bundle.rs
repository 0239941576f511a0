//! `POST /fhir`: transaction Bundles (all or nothing, `urn:uuid:` references
//! resolved, conditional entries) and batch Bundles (each entry on its own).
//!
//! Writes are sent to the store as one request, so a transaction is a single
//! database transaction and a batch costs one group commit, not one per entry.
//! Reads and searches run after the writes, as FHIR orders them.

use super::AppState;
use super::error::ApiError;
use super::http::{
    Prefer, Return, base_url, etag, fhir_json, read_body, stored_outcome, version_of_etag,
    write_status,
};
use super::rest::{bundle_head, condition, json_str, query_pairs, resource_type, run_search};
use crate::fhir::datetime::format_instant;
use crate::fhir::json::{array_elements, object_members};
use crate::fhir::outcome::{Issue, operation_outcome};
use crate::fhir::resource::prepare_json;
use crate::fhir::search::parse_search;
use crate::fhir::{ResourceType, is_valid_id, new_id};
use crate::store::{Mutation, MutationError, Stored, WriteOutcome, WriteRequest, Written};
use crate::validate::Validator;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;
use std::collections::HashSet;
use std::fmt::Write;

/// What one entry asks for.
enum Plan {
    Write(Box<Mutation>),
    Query(Query),
}

/// A GET entry: run after the writes.
enum Query {
    Read {
        ty: ResourceType,
        id: String,
        version: Option<i64>,
    },
    Search {
        ty: ResourceType,
        query: String,
    },
}

/// What became of one entry.
enum Done {
    Written(Written),
    Read(Stored),
    Searched(String),
    Failed(ApiError),
}

pub async fn transaction_or_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.http.max_body_bytes).await?;
    let malformed =
        |msg: String, at: &str| ApiError::bad_request(Issue::error("structure", msg).at(at));
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| malformed("the body is not UTF-8".into(), "Bundle"))?;
    let bundle: Value = serde_json::from_str(text)
        .map_err(|err| malformed(format!("the body is not valid JSON: {err}"), "Bundle"))?;
    if bundle["resourceType"] != "Bundle" {
        return Err(malformed(
            "POST /fhir takes a Bundle of type transaction or batch".into(),
            "Bundle.resourceType",
        ));
    }
    let atomic = match bundle["type"].as_str() {
        Some("transaction") => true,
        Some("batch") => false,
        other => {
            return Err(ApiError::bad_request(
                Issue::error(
                    "value",
                    format!(
                        "Bundle.type must be transaction or batch, not {}",
                        other.map_or("missing".to_string(), |t| format!("\"{t}\""))
                    ),
                )
                .at("Bundle.type"),
            ));
        }
    };
    let raw_entries = match object_members(text)
        .map_err(|err| malformed(err.to_string(), "Bundle"))?
        .into_iter()
        .find(|m| m.key == "entry")
    {
        Some(member) => array_elements(&member.value)
            .map_err(|_| malformed("Bundle.entry must be an array".into(), "Bundle.entry"))?,
        None => Vec::new(),
    };
    let base = base_url(state.http.base_url.as_deref(), &headers);
    let prefer = Prefer::from_headers(&headers);

    let mut plans: Vec<Result<Plan, ApiError>> = Vec::with_capacity(raw_entries.len());
    let mut full_urls = HashSet::new();
    for (index, raw) in raw_entries.iter().enumerate() {
        let entry = &bundle["entry"][index];
        let mut plan = plan_entry(index, raw, entry, &base, &state.validator);
        if let (Ok(Plan::Write(_)), Some(full_url)) = (&plan, entry["fullUrl"].as_str())
            && !full_urls.insert(full_url.to_string())
        {
            plan = Err(ApiError::bad_request(
                Issue::error("duplicate", format!("fullUrl \"{full_url}\" appears twice"))
                    .at(format!("Bundle.entry[{index}].fullUrl")),
            ));
        }
        // A search that cannot run is refused now, with the writes, rather
        // than after they are committed.
        if let Ok(Plan::Query(Query::Search { ty, query })) = &plan
            && let Err(error) = parse_search(*ty, &query_pairs(Some(query)), prefer.strict)
        {
            plan = Err(ApiError::bad_request(
                error.at(format!("Bundle.entry[{index}].request.url")),
            ));
        }
        plans.push(plan);
    }

    if atomic {
        let failures: Vec<&ApiError> = plans.iter().filter_map(|p| p.as_ref().err()).collect();
        if !failures.is_empty() {
            let status = failures
                .iter()
                .map(|f| f.status)
                .max_by_key(|s| if *s == StatusCode::BAD_REQUEST { 2 } else { 1 })
                .unwrap_or(StatusCode::BAD_REQUEST);
            let issues = failures
                .iter()
                .flat_map(|f| f.issues.iter().cloned())
                .collect();
            return Err(ApiError { status, issues });
        }
    }

    // Writes, in one store request.
    let mut write_indexes = Vec::new();
    let mut mutations = Vec::new();
    let mut done: Vec<Option<Done>> = Vec::with_capacity(plans.len());
    let mut reads = Vec::new();
    for (index, plan) in plans.into_iter().enumerate() {
        match plan {
            Ok(Plan::Write(mutation)) => {
                write_indexes.push(index);
                mutations.push(*mutation);
                done.push(None);
            }
            Ok(Plan::Query(query)) => {
                reads.push((index, query));
                done.push(None);
            }
            Err(error) => done.push(Some(Done::Failed(error))),
        }
    }
    if !mutations.is_empty() {
        match state
            .store
            .write(WriteRequest { mutations, atomic })
            .await?
        {
            WriteOutcome::Applied(results) => {
                for (index, result) in write_indexes.iter().zip(results) {
                    done[*index] = Some(match result {
                        Ok(written) => Done::Written(written),
                        Err(error) => Done::Failed(mutation_error(&error, *index)),
                    });
                }
            }
            WriteOutcome::RolledBack { index, error } => {
                let entry = write_indexes.get(index).copied().unwrap_or(index);
                return Err(mutation_error(&error, entry));
            }
        }
    }
    for (index, query) in reads {
        done[index] = Some(match query {
            Query::Read { ty, id, version } => {
                // The writes are committed by now: a failed read fails its
                // own entry, never the answer about the writes.
                let found = match version {
                    Some(v) => state.store.vread(ty, &id, v).await,
                    None => state.store.read(ty, &id).await,
                };
                match found {
                    Ok(Some(stored)) => Done::Read(stored),
                    Ok(None) => {
                        Done::Failed(ApiError::not_found(format!("{ty}/{id} does not exist")))
                    }
                    Err(err) => Done::Failed(ApiError::from(err)),
                }
            }
            Query::Search { ty, query } => {
                match run_search(&state, ty, Some(&query), prefer.strict, &base).await {
                    Ok(bundle) => Done::Searched(bundle),
                    Err(error) => Done::Failed(error),
                }
            }
        });
    }

    let kind = if atomic {
        "transaction-response"
    } else {
        "batch-response"
    };
    let mut out = bundle_head(kind, None);
    out.push_str(r#","entry":["#);
    for (i, entry) in done.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match entry {
            Some(Done::Written(written)) => {
                let status = write_status(written.change);
                push_resource_entry(
                    &mut out,
                    &written.resource,
                    &base,
                    status,
                    true,
                    prefer.return_,
                );
            }
            Some(Done::Read(stored)) => {
                push_resource_entry(
                    &mut out,
                    &stored,
                    &base,
                    StatusCode::OK,
                    false,
                    Return::Representation,
                );
            }
            Some(Done::Searched(bundle)) => {
                let _ = write!(
                    out,
                    r#"{{"resource":{bundle},"response":{{"status":"200 OK"}}}}"#
                );
            }
            Some(Done::Failed(error)) => {
                let _ = write!(
                    out,
                    r#"{{"response":{{"status":{},"outcome":{}}}}}"#,
                    json_str(&status_line(error.status)),
                    operation_outcome(&error.issues)
                );
            }
            None => out.push_str(r#"{"response":{"status":"500 Internal Server Error"}}"#),
        }
    }
    out.push_str("]}");
    Ok(fhir_json(StatusCode::OK, out))
}

fn mutation_error(error: &MutationError, index: usize) -> ApiError {
    ApiError::from_mutation(error, Some(format!("Bundle.entry[{index}]")))
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

fn push_resource_entry(
    out: &mut String,
    stored: &Stored,
    base: &str,
    status: StatusCode,
    with_location: bool,
    prefer: Return,
) {
    let ty = stored.resource_type;
    let _ = write!(
        out,
        r#"{{"fullUrl":{}"#,
        json_str(&format!("{base}/{ty}/{}", stored.id))
    );
    if prefer == Return::Representation {
        let _ = write!(out, r#","resource":{}"#, stored.body);
    }
    let _ = write!(
        out,
        r#","response":{{"status":{}"#,
        json_str(&status_line(status))
    );
    if with_location {
        let _ = write!(
            out,
            r#","location":{}"#,
            json_str(&format!("{ty}/{}/_history/{}", stored.id, stored.version))
        );
    }
    let _ = write!(
        out,
        r#","etag":{},"lastModified":"{}""#,
        json_str(&etag(stored.version)),
        format_instant(stored.last_updated_ms)
    );
    if prefer == Return::OperationOutcome {
        let _ = write!(out, r#","outcome":{}"#, stored_outcome(stored));
    }
    out.push_str("}}");
}

/// Reads entry `index` into what it asks for. Errors name the entry.
fn plan_entry(
    index: usize,
    raw: &str,
    entry: &Value,
    base: &str,
    validator: &Validator,
) -> Result<Plan, ApiError> {
    let at = |path: &str| format!("Bundle.entry[{index}]{path}");
    let bad = |code: &'static str, msg: String, path: &str| {
        ApiError::bad_request(Issue::error(code, msg).at(at(path)))
    };
    let method = entry["request"]["method"].as_str().ok_or_else(|| {
        bad(
            "required",
            "the entry has no request.method".into(),
            ".request.method",
        )
    })?;
    let url = entry["request"]["url"].as_str().ok_or_else(|| {
        bad(
            "required",
            "the entry has no request.url".into(),
            ".request.url",
        )
    })?;
    let url = url
        .strip_prefix(base)
        .unwrap_or(url)
        .trim_start_matches('/');
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url, None),
    };
    let segments: Vec<&str> = path.split('/').collect();
    let ty = resource_type(segments[0]).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        issues: e
            .issues
            .into_iter()
            .map(|i| i.at(at(".request.url")))
            .collect(),
    })?;
    let full_url = entry["fullUrl"].as_str().map(str::to_string);
    let resource = || {
        let raw_resource = object_members(raw)
            .ok()
            .and_then(|members| members.into_iter().find(|m| m.key == "resource"))
            .ok_or_else(|| {
                bad(
                    "required",
                    format!("a {method} entry needs a resource"),
                    ".resource",
                )
            })?;
        prepare_json(&raw_resource.value, Some(ty), validator).map_err(|rejection| {
            let mut error = ApiError::from(rejection.within(&at(".resource"), ty.as_str()));
            // An unknown type is a 404 at a URL, but a bad entry in a Bundle.
            if error.status == StatusCode::NOT_FOUND {
                error.status = StatusCode::BAD_REQUEST;
            }
            error
        })
    };
    let if_match = || -> Result<Option<i64>, ApiError> {
        match entry["request"]["ifMatch"].as_str() {
            None => Ok(None),
            Some(text) => version_of_etag(text).map(Some).ok_or_else(|| {
                bad(
                    "value",
                    format!("ifMatch \"{text}\" names no version"),
                    ".request.ifMatch",
                )
            }),
        }
    };
    match (method, segments.as_slice(), query) {
        ("POST", [_], None) => {
            let if_none_exist = match entry["request"]["ifNoneExist"].as_str() {
                Some(q) => Some(condition(ty, q, &at(".request.ifNoneExist"))?),
                None => None,
            };
            Ok(Plan::Write(Box::new(Mutation::Create {
                resource: resource()?,
                id: new_id(),
                if_none_exist,
                full_url,
            })))
        }
        ("PUT", [_, id], None) => {
            if !is_valid_id(id) {
                return Err(bad(
                    "value",
                    format!("\"{id}\" is not a valid id"),
                    ".request.url",
                ));
            }
            let resource = resource()?;
            match &resource.id {
                Some(body_id) if body_id == id => {}
                Some(body_id) => {
                    return Err(bad(
                        "invalid",
                        format!(
                            "the resource's id \"{body_id}\" is not the id in request.url, \"{id}\""
                        ),
                        ".resource.id",
                    ));
                }
                None => {
                    return Err(bad(
                        "required",
                        format!("an update must carry the id \"{id}\" in the resource"),
                        ".resource.id",
                    ));
                }
            }
            Ok(Plan::Write(Box::new(Mutation::Update {
                resource,
                id: id.to_string(),
                if_match: if_match()?,
                full_url,
            })))
        }
        ("PUT", [_], Some(q)) => Ok(Plan::Write(Box::new(Mutation::ConditionalUpdate {
            query: condition(ty, q, &at(".request.url"))?,
            resource: resource()?,
            new_id: new_id(),
            if_match: if_match()?,
            full_url,
        }))),
        ("GET", [_, id], None) => Ok(Plan::Query(Query::Read {
            ty,
            id: id.to_string(),
            version: None,
        })),
        ("GET", [_, id, "_history", version], None) => Ok(Plan::Query(Query::Read {
            ty,
            id: id.to_string(),
            version: Some(version.parse().map_err(|_| {
                bad(
                    "value",
                    format!("\"{version}\" is not a version"),
                    ".request.url",
                )
            })?),
        })),
        ("GET", [_], query) => Ok(Plan::Query(Query::Search {
            ty,
            query: query.unwrap_or("").to_string(),
        })),
        _ => Err(bad(
            "not-supported",
            format!("{method} {url} is not supported in a Bundle here (POST, PUT and GET are)"),
            ".request",
        )),
    }
}
