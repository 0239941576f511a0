//! `GET /fhir/metadata`: the CapabilityStatement, generated from the tables
//! the server itself runs on (resource types, search parameters), so it says
//! exactly what is supported.

use super::AppState;
use super::http::{base_url, fhir_json};
use crate::fhir::ResourceType;
use crate::fhir::search::{MAX_COUNT, params_for};
use crate::validate::Validator;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

pub async fn metadata(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base = base_url(state.http.base_url.as_deref(), &headers);
    fhir_json(
        StatusCode::OK,
        capability_statement(&base, &state.validator).to_string(),
    )
}

/// The interactions every resource type supports.
const INTERACTIONS: [&str; 6] = [
    "read",
    "vread",
    "update",
    "history-instance",
    "create",
    "search-type",
];

pub fn capability_statement(base: &str, validator: &Validator) -> Value {
    let resources: Vec<Value> = ResourceType::ALL
        .iter()
        .map(|&ty| {
            let mut search_params: Vec<Value> = params_for(ty)
                .iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "definition": p.definition,
                        "type": p.kind.as_str(),
                        "documentation": p.documentation,
                    })
                })
                .collect();
            search_params.push(json!({
                "name": "_id",
                "definition": "http://hl7.org/fhir/SearchParameter/Resource-id",
                "type": "token",
                "documentation": "The logical id; several separated by commas match any",
            }));
            let interactions: Vec<Value> = INTERACTIONS
                .iter()
                .map(|code| json!({"code": code}))
                .collect();
            json!({
                "type": ty.as_str(),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "not-supported",
                "searchParam": search_params,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{ty}"),
                "supportedProfile": validator.enforced(ty.as_str()),
                "operation": [{
                    "name": "validate",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                    "documentation": "Base R4, the profiles the resource claims and any named in `profile`; mode=create adds the profiles every write must meet",
                }],
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": jiff::Timestamp::now().strftime("%Y-%m-%d").to_string(),
        "publisher": "pathway-gateway",
        "kind": "instance",
        "software": {"name": "pathway-gateway", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "pathway-gateway FHIR R4 API", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": format!(
                "Search pages hold 20 entries unless _count says otherwise (at most {MAX_COUNT}); next links page by position and return every match once. Unknown search parameters are refused unless Prefer: handling=lenient."
            ),
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "searchParam": [{
                "name": "_count",
                "definition": "http://hl7.org/fhir/SearchParameter/Resource-count",
                "type": "number",
                "documentation": "Page size",
            }],
        }],
    })
}
