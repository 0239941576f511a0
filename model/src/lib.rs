//! The FHIR typed model, behind non-generic functions.
//!
//! `fhir-sdk` generates serde code for every FHIR resource type; any crate that
//! monomorphises serde over those types pays minutes of compile time on every
//! rebuild. This crate owns that cost: the gateway calls the plain functions
//! below and never names an `fhir-sdk` type, so it rebuilds in seconds.
//!
//! What this crate does *not* do: it never produces the JSON the gateway stores
//! or serves. A typed round-trip is not faithful (decimals change form, time
//! offsets are rewritten, unknown elements are dropped), so the model is used
//! only to check that a resource reads as its declared type.
//!
//! The model is FHIR R4B (4.3.0), the nearest `fhir-sdk` has to R4 (4.0.1); for
//! the resource types the gateway carries the two agree on structure.

use fhir_sdk::r4b::resources::{CarePlan, Encounter, Patient, ServiceRequest};
use serde::de::DeserializeOwned;

/// Why a resource does not read as its declared type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError {
    /// Where the problem is, as a FHIRPath-style path below the resource
    /// (`name[0].use`); empty when it concerns the resource as a whole.
    pub path: String,
    /// What is wrong, in plain words.
    pub message: String,
    pub kind: ModelErrorKind,
}

/// The kind of problem, for the OperationOutcome issue code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelErrorKind {
    /// A required element is missing (`required`).
    Missing,
    /// A code outside a required binding (`code-invalid`).
    UnknownCode,
    /// A value of the wrong JSON type, or an unknown choice (`structure`).
    WrongType,
    /// A value of the right type but not a valid one: a bad date (`value`).
    BadValue,
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ModelError {}

/// The resource types this model checks. Other types are carried, not checked.
pub const CHECKED_TYPES: &[&str] = &["Patient", "Encounter", "CarePlan", "ServiceRequest"];

/// Checks that `json` reads as a FHIR resource of type `resource_type`.
///
/// The caller has already checked that `resourceType` says so: deserializing
/// straight into the concrete type (not through the `Resource` enum, which
/// buffers and loses paths) is what gives located errors. Returns `Ok(false)`
/// for a type this model does not check.
pub fn check_resource(resource_type: &str, json: &[u8]) -> Result<bool, ModelError> {
    match resource_type {
        "Patient" => decode::<Patient>(json).map(|_| true),
        "Encounter" => decode::<Encounter>(json).map(|_| true),
        "CarePlan" => decode::<CarePlan>(json).map(|_| true),
        "ServiceRequest" => decode::<ServiceRequest>(json).map(|_| true),
        _ => Ok(false),
    }
}

fn decode<T: DeserializeOwned>(json: &[u8]) -> Result<T, ModelError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let mut path = fhirpath_of(err.path());
        let raw = strip_position(&err.inner().to_string());
        let (kind, message) = explain(&raw, &mut path);
        ModelError {
            path,
            message,
            kind,
        }
    })
}

/// Rewrites serde's wording for a person reading an OperationOutcome, and
/// moves the name of a missing field into the path.
fn explain(raw: &str, path: &mut String) -> (ModelErrorKind, String) {
    if let Some(field) = raw
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(field);
        return (
            ModelErrorKind::Missing,
            "this element is required (min 1) but missing".to_string(),
        );
    }
    if let Some(value) = raw.strip_prefix("Unknown value: ") {
        return (
            ModelErrorKind::UnknownCode,
            format!("\"{value}\" is not a code of the required value set of this element"),
        );
    }
    if raw.starts_with("invalid type: ") || raw.starts_with("unknown variant") {
        let message = match raw.split_once(", expected struct ") {
            Some((found, expected)) => {
                let name = expected.trim_end_matches("Inner");
                format!("{found}, expected a {name} (a JSON object)")
            }
            None => raw.to_string(),
        };
        return (ModelErrorKind::WrongType, message);
    }
    if raw.contains("parse") || raw.contains("invalid value") {
        return (ModelErrorKind::BadValue, raw.to_string());
    }
    (ModelErrorKind::WrongType, raw.to_string())
}

/// Turns serde's path (`name[0].use`, with `?` for untracked segments) into
/// FHIRPath form. The root segment `.` becomes the empty path.
fn fhirpath_of(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
            }
            serde_path_to_error::Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

/// serde_json appends ` at line L column C`; the path says more, so drop it.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_minimal_patient() {
        assert_eq!(
            check_resource("Patient", br#"{"resourceType":"Patient"}"#),
            Ok(true)
        );
    }

    #[test]
    fn locates_a_code_outside_its_required_binding() {
        let err = check_resource(
            "Patient",
            br#"{"resourceType":"Patient","name":[{"use":"nickname"},{"use":"sometimes"}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.path, "name[1].use");
        assert_eq!(err.kind, ModelErrorKind::UnknownCode);
        assert!(err.message.contains("\"sometimes\""), "{}", err.message);
    }

    #[test]
    fn rejects_a_missing_required_element() {
        let err = check_resource(
            "Encounter",
            br#"{"resourceType":"Encounter","status":"planned"}"#,
        )
        .unwrap_err();
        assert_eq!(err.path, "class");
        assert_eq!(err.kind, ModelErrorKind::Missing);
    }

    #[test]
    fn names_the_expected_datatype() {
        let err = check_resource("ServiceRequest", br#"{"resourceType":"ServiceRequest","status":"active","intent":"order","subject":"Patient/1"}"#)
            .unwrap_err();
        assert_eq!(err.path, "subject");
        assert_eq!(err.kind, ModelErrorKind::WrongType);
        assert!(
            err.message
                .ends_with("expected a Reference (a JSON object)"),
            "{}",
            err.message
        );
    }

    #[test]
    fn does_not_check_other_types() {
        assert_eq!(check_resource("Observation", b"{}"), Ok(false));
    }
}
