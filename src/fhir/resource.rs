//! An inbound resource, checked and split into the parts the store needs.
//!
//! The stored JSON is the sender's own members, minified, behind a server-set
//! `resourceType`, `id` and `meta` ([`assemble`]). Nothing else is changed.

use super::json;
use super::outcome::Issue;
use super::search::{IndexEntries, extract_index};
use super::{ResourceType, is_valid_id};
use crate::validate::{Validator, has_errors};
use serde_json::Value;

/// A resource ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub resource_type: ResourceType,
    /// The `id` the body carries, if any.
    pub id: Option<String>,
    /// Members of the sender's `meta` other than `versionId` and
    /// `lastUpdated`, each as `,"key":value`.
    pub meta_extra: String,
    /// Every other member, each as `,"key":value`, in the sender's order.
    pub rest: String,
    pub index: IndexEntries,
}

/// Why an inbound resource was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// Not JSON, not a resource, or not the type the URL names: 400.
    Malformed(Issue),
    /// A resource of a type the gateway does not store: 404 at the URL, 400
    /// inside a Bundle.
    UnsupportedType(Issue),
    /// JSON, but not a valid resource of its type: 422, with every issue
    /// the validator found (warnings included, for context).
    Invalid(Vec<Issue>),
}

impl Rejection {
    pub fn issues(&self) -> Vec<Issue> {
        match self {
            Rejection::Malformed(i) | Rejection::UnsupportedType(i) => vec![i.clone()],
            Rejection::Invalid(issues) => issues.clone(),
        }
    }

    /// The same rejection with its location moved under `prefix` (a Bundle entry).
    pub fn within(self, prefix: &str, resource_type: &str) -> Self {
        match self {
            Rejection::Malformed(i) => Rejection::Malformed(i.within(prefix, resource_type)),
            Rejection::UnsupportedType(i) => {
                Rejection::UnsupportedType(i.within(prefix, resource_type))
            }
            Rejection::Invalid(issues) => Rejection::Invalid(
                issues
                    .into_iter()
                    .map(|i| i.within(prefix, resource_type))
                    .collect(),
            ),
        }
    }
}

/// Reads `body` as a resource; `expected` is the type the URL names, if any.
/// The resource must pass `validator` (base R4 and the enforced profiles).
pub fn prepare(
    body: &[u8],
    expected: Option<ResourceType>,
    validator: &Validator,
) -> Result<Prepared, Rejection> {
    let text = std::str::from_utf8(body).map_err(|err| {
        Rejection::Malformed(Issue::error(
            "structure",
            format!(
                "the body is not UTF-8 (invalid byte at offset {})",
                err.valid_up_to()
            ),
        ))
    })?;
    prepare_json(text, expected, validator)
}

/// As [`prepare`], for text already known to be JSON (a Bundle entry).
pub fn prepare_json(
    text: &str,
    expected: Option<ResourceType>,
    validator: &Validator,
) -> Result<Prepared, Rejection> {
    // The whole resource as a value, for the validator and the index; the
    // stored members are taken from the sender's own bytes.
    let value: Value = serde_json::from_str(text).map_err(|err| {
        Rejection::Malformed(Issue::error(
            "structure",
            format!("the body is not valid JSON: {err}"),
        ))
    })?;
    match json::object_members(text) {
        Ok(owned) => prepare_members(
            Ok(owned.iter().map(json::Member::borrowed).collect()),
            &value,
            expected,
            validator,
        ),
        Err(err) => prepare_members(Err(err), &value, expected, validator),
    }
}

/// As [`prepare_json`], for a resource the gateway built (a feed's mapping,
/// a routed referral) and wrote member by member ([`json::Written`]): the
/// text is neither parsed nor checked for repeated names again, and its
/// members are known without a scan.
pub fn prepare_written(
    written: &json::Written,
    value: &Value,
    expected: Option<ResourceType>,
    validator: &Validator,
) -> Result<Prepared, Rejection> {
    let members = written.members();
    debug_assert_eq!(
        members,
        json::written_members(written.text()),
        "the members recorded are those a scan of the text finds"
    );
    prepare_members(members, value, expected, validator)
}

fn prepare_members(
    members: Result<Vec<json::WrittenMember<'_>>, json::JsonShapeError>,
    value: &Value,
    expected: Option<ResourceType>,
    validator: &Validator,
) -> Result<Prepared, Rejection> {
    let members = members.map_err(|err| {
        Rejection::Malformed(Issue::error(
            "structure",
            match err {
                json::JsonShapeError::NotAnObject => {
                    "the body is JSON but not a JSON object, so not a FHIR resource".to_string()
                }
                other => other.to_string(),
            },
        ))
    })?;
    let member = |name: &str| members.iter().find(|m| m.key == name).map(|m| m.value);
    let type_name = member("resourceType")
        .and_then(|raw| serde_json::from_str::<String>(raw).ok())
        .ok_or_else(|| {
            Rejection::Malformed(
                Issue::error("required", "the resource has no resourceType").at("resourceType"),
            )
        })?;
    let resource_type = match (ResourceType::parse(&type_name), expected) {
        (Some(found), Some(wanted)) if found != wanted => {
            return Err(Rejection::Malformed(
                Issue::error(
                    "invalid",
                    format!("the body is a {found} but the URL is for {wanted}"),
                )
                .at(format!("{type_name}.resourceType")),
            ));
        }
        (Some(found), _) => found,
        (None, Some(wanted)) => {
            return Err(Rejection::Malformed(
                Issue::error(
                    "invalid",
                    format!("the body is a \"{type_name}\" but the URL is for {wanted}"),
                )
                .at("resourceType"),
            ));
        }
        (None, None) => {
            return Err(Rejection::UnsupportedType(Issue::error(
                "not-supported",
                format!(
                    "this gateway does not store {type_name} resources (it stores Patient, Encounter, CarePlan and ServiceRequest)"
                ),
            )));
        }
    };
    let ty = resource_type.as_str();

    let id = match member("id").map(serde_json::from_str::<Value>) {
        None => None,
        Some(Ok(Value::String(id))) if is_valid_id(&id) => Some(id),
        Some(other) => {
            let shown = other.map_or_else(|_| "the value".to_string(), |v| v.to_string());
            return Err(Rejection::Invalid(vec![
                Issue::error(
                    "value",
                    format!("{shown} is not a valid id (1 to 64 of A-Z a-z 0-9 - .)"),
                )
                .at(format!("{ty}.id")),
            ]));
        }
    };

    let issues = validator.validate(value);
    if has_errors(&issues) {
        return Err(Rejection::Invalid(issues));
    }

    let index = extract_index(resource_type, value);

    let mut meta_extra = String::new();
    let mut rest = String::new();
    for member in &members {
        match member.key.as_ref() {
            "resourceType" | "id" => {}
            "meta" => {
                // Minified and checked with the whole body already.
                let meta = json::written_members(member.value).map_err(|_| {
                    Rejection::Invalid(vec![
                        Issue::error("structure", "meta must be an object")
                            .at(format!("{ty}.meta")),
                    ])
                })?;
                for m in meta {
                    if m.key != "versionId" && m.key != "lastUpdated" {
                        push_member(&mut meta_extra, &m.key, m.value);
                    }
                }
            }
            key => push_member(&mut rest, key, member.value),
        }
    }

    Ok(Prepared {
        resource_type,
        id,
        meta_extra,
        rest,
        index,
    })
}

fn push_member(out: &mut String, key: &str, value: &str) {
    out.push(',');
    json::push_string(out, key);
    out.push(':');
    out.push_str(value);
}

/// The stored JSON of a resource version.
pub fn assemble(
    resource_type: ResourceType,
    id: &str,
    version: i64,
    last_updated_ms: i64,
    meta_extra: &str,
    rest: &str,
) -> String {
    let last_updated = super::datetime::format_instant(last_updated_ms);
    format!(
        r#"{{"resourceType":"{resource_type}","id":"{id}","meta":{{"versionId":"{version}","lastUpdated":"{last_updated}"{meta_extra}}}{rest}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator() -> &'static Validator {
        static VALIDATOR: std::sync::OnceLock<Validator> = std::sync::OnceLock::new();
        VALIDATOR.get_or_init(|| Validator::embedded().unwrap())
    }

    #[test]
    fn stored_json_keeps_the_senders_values_and_replaces_id_and_meta() {
        let body = br#"{
            "resourceType": "Patient",
            "id": "client-id",
            "meta": {"versionId": "9", "profile": ["http://x/p"], "lastUpdated": "2000-01-01T00:00:00Z"},
            "extension": [{"url": "http://x/e", "valueDecimal": 1.50}],
            "birthDate": "1948-03-02",
            "multipleBirthInteger": 80
        }"#;
        let prepared = prepare(body, Some(ResourceType::Patient), validator()).unwrap();
        assert_eq!(prepared.id.as_deref(), Some("client-id"));
        let stored = assemble(
            prepared.resource_type,
            "s1",
            2,
            0,
            &prepared.meta_extra,
            &prepared.rest,
        );
        assert_eq!(
            stored,
            r#"{"resourceType":"Patient","id":"s1","meta":{"versionId":"2","lastUpdated":"1970-01-01T00:00:00.000Z","profile":["http://x/p"]},"extension":[{"url":"http://x/e","valueDecimal":1.50}],"birthDate":"1948-03-02","multipleBirthInteger":80}"#
        );
        let _: Value = serde_json::from_str(&stored).unwrap();
    }

    #[test]
    fn refuses_a_body_of_another_type_than_the_url() {
        let err = prepare(
            br#"{"resourceType":"Encounter"}"#,
            Some(ResourceType::Patient),
            validator(),
        );
        assert!(matches!(err, Err(Rejection::Malformed(_))));
    }

    #[test]
    fn refuses_invalid_resources_with_every_issue_located() {
        let err = prepare(
            br#"{"resourceType":"Patient","gender":"unknown-ish","birthDate":"1948-02-30"}"#,
            Some(ResourceType::Patient),
            validator(),
        )
        .unwrap_err();
        let Rejection::Invalid(issues) = err else {
            panic!("{err:?}")
        };
        let at: Vec<&str> = issues.iter().map(|i| i.expression[0].as_str()).collect();
        assert_eq!(at, ["Patient.gender", "Patient.birthDate"]);
    }

    #[test]
    fn refuses_invalid_ids_and_malformed_json() {
        assert!(matches!(
            prepare(
                br#"{"resourceType":"Patient","id":"a b"}"#,
                None,
                validator()
            ),
            Err(Rejection::Invalid(_))
        ));
        assert!(matches!(
            prepare(b"{", None, validator()),
            Err(Rejection::Malformed(_))
        ));
        assert!(matches!(
            prepare(b"\xff", None, validator()),
            Err(Rejection::Malformed(_))
        ));
        assert!(matches!(
            prepare(br#"{"resourceType":"Observation"}"#, None, validator()),
            Err(Rejection::UnsupportedType(_))
        ));
    }
}
