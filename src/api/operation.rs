//! `POST /fhir/{type}/$validate`: the validator over HTTP. The body is the
//! resource itself or a `Parameters` with `resource`, `profile` and `mode`;
//! `?profile=` works too. The answer is 200 with an OperationOutcome whether
//! or not the resource is valid (the operation worked; the outcome says what
//! it found), and the same issues `pathway-gateway validate` prints.

use super::AppState;
use super::error::ApiError;
use super::http::{FhirPath, fhir_json, read_body};
use super::rest::resource_type;
use crate::fhir::outcome::{Issue, operation_outcome};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

pub async fn validate(
    State(state): State<AppState>,
    FhirPath(type_name): FhirPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ty = resource_type(&type_name)?;
    let bytes = read_body(&headers, body, state.http.max_body_bytes).await?;
    let body: Value = serde_json::from_slice(&bytes).map_err(|err| {
        ApiError::bad_request(Issue::error(
            "structure",
            format!("the body is not valid JSON: {err}"),
        ))
    })?;

    let mut profiles: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "profile")
        .map(|(_, v)| v.into_owned())
        .collect();
    let mut mode = None;
    let resource = if body["resourceType"] == "Parameters" {
        let mut resource = None;
        for (i, parameter) in body["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("Parameters.parameter[{i}]");
            match parameter["name"].as_str() {
                Some("resource") => resource = parameter.get("resource").cloned(),
                Some("profile") => {
                    let url = ["valueUri", "valueCanonical", "valueString"]
                        .iter()
                        .find_map(|k| parameter[*k].as_str())
                        .ok_or_else(|| {
                            ApiError::bad_request(
                                Issue::error("required", "a profile parameter needs a valueUri")
                                    .at(at.clone()),
                            )
                        })?;
                    profiles.push(url.to_string());
                }
                Some("mode") => mode = parameter["valueCode"].as_str().map(str::to_string),
                _ => {
                    return Err(ApiError::bad_request(
                        Issue::error(
                            "not-supported",
                            "$validate takes the parameters resource, profile and mode",
                        )
                        .at(format!("{at}.name")),
                    ));
                }
            }
        }
        resource.ok_or_else(|| {
            ApiError::bad_request(Issue::error(
                "required",
                "the Parameters has no resource parameter to validate",
            ))
        })?
    } else {
        body
    };
    if resource["resourceType"] != ty.as_str() {
        return Err(ApiError::bad_request(
            Issue::error(
                "invalid",
                format!(
                    "the resource is {} but the URL is for {ty}",
                    resource["resourceType"]
                ),
            )
            .at("resourceType"),
        ));
    }
    // `mode=create|update`: would a write of it be accepted? Then the
    // profiles the write path enforces apply too.
    match mode.as_deref() {
        None | Some("profile") => {}
        Some("create" | "update") => {
            profiles.extend(state.validator.enforced(ty.as_str()).iter().cloned());
        }
        Some(other) => {
            return Err(ApiError::bad_request(Issue::error(
                "not-supported",
                format!("mode {other:?} is not supported (create, update or profile)"),
            )));
        }
    }

    let mut issues = state.validator.validate_with(&resource, &profiles);
    if issues.is_empty() {
        issues.push(Issue::information(
            "informational",
            "no issues: the resource is valid",
        ));
    }
    Ok(fhir_json(
        StatusCode::OK,
        operation_outcome(&issues).to_string(),
    ))
}
