//! A risk-list row → FHIR: the Patient (matched on NHS number, the sending
//! practice as `generalPractitioner`), and, for a patient at or above the
//! risk threshold, a `proactive-care-assessment` ServiceRequest and a draft
//! proactive-care CarePlan linked to it (pathway rule 1 of the contract).
//!
//! Pure functions of the row and a [`MapContext`]: the same row always gives
//! the same JSON.

use super::row::RiskRow;
use crate::fhir::json::{push_string, written_members};
use serde_json::{Value, json};

pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// One proactive-care referral per patient, ever: the key that makes a
/// re-sent list create nothing.
pub const REFERRAL_ID_SYSTEM: &str = "https://fhir.onebromley.nhs.uk/Id/proactive-care-referral";
pub const CARE_PLAN_ID_SYSTEM: &str = "https://fhir.onebromley.nhs.uk/Id/proactive-care-plan";
pub const PATHWAY_SYSTEM: &str = "https://fhir.onebromley.nhs.uk/CodeSystem/care-pathway";
pub const REFERRAL_SYSTEM: &str = "https://fhir.onebromley.nhs.uk/CodeSystem/pathway-referral";
pub const SERVICE_SYSTEM: &str = "https://fhir.onebromley.nhs.uk/Id/pathway-service";

/// eFI scores are multiples of 1/36: 12/36 = 0.333 is the highest moderate
/// score and 13/36 = 0.361 the lowest severe one, which reports rounded to
/// two places show as `0.36`. Anything from 0.355 up is therefore severe.
pub const DEFAULT_SEVERE_FROM: f64 = 0.355;

/// What a mapping needs besides the row.
#[derive(Debug, Clone)]
pub struct MapContext {
    /// ODS code of the sending practice.
    pub practice: String,
    /// When the list was received (`authoredOn`, `created`), FHIR dateTime.
    pub received: String,
    /// The eFI score from which a patient is at risk.
    pub severe_from: f64,
}

/// Why a row's patient is at risk, if they are.
pub fn at_risk(row: &RiskRow, cx: &MapContext) -> Option<String> {
    if row.efi_category == Some("severe") {
        return Some("eFI category severe".to_string());
    }
    match row.efi_score {
        Some(score) if score >= cx.severe_from => Some(format!("eFI score {score}")),
        _ => None,
    }
}

/// The Patient a row describes, as a new resource.
pub fn map_patient(row: &RiskRow, cx: &MapContext) -> Value {
    let mut patient = json!({
        "resourceType": "Patient",
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": row.nhs_number}],
    });
    if let Some(name) = name_of(row) {
        patient["name"] = json!([name]);
    }
    if let Some(gender) = row.gender {
        patient["gender"] = json!(gender);
    }
    if let Some(birth_date) = &row.birth_date {
        patient["birthDate"] = json!(birth_date);
    }
    if let Some(postcode) = &row.postcode {
        patient["address"] = json!([{"use": "home", "postalCode": postcode}]);
    }
    patient["generalPractitioner"] = json!([practice_reference(cx)]);
    patient
}

/// The referral and draft care plan for an at-risk patient. `patient` and
/// `referral` are the references they use for each other (`urn:uuid:` in a
/// transaction, or `Patient/{id}`).
pub fn map_referral(
    row: &RiskRow,
    cx: &MapContext,
    reason: &str,
    patient: &str,
    referral: &str,
) -> (Value, Value) {
    let service_request = json!({
        "resourceType": "ServiceRequest",
        "identifier": [{"system": REFERRAL_ID_SYSTEM, "value": row.nhs_number}],
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": PATHWAY_SYSTEM, "code": "proactive-care", "display": "Proactive care"}]}],
        "code": {"coding": [{
            "system": REFERRAL_SYSTEM,
            "code": "proactive-care-assessment",
            "display": "Proactive care initial assessment by the community matron"
        }]},
        "subject": {"reference": patient},
        "authoredOn": cx.received,
        "requester": practice_reference(cx),
        "performer": [{
            "identifier": {"system": SERVICE_SYSTEM, "value": "proactive-care-mdt"},
            "display": "Proactive care MDT"
        }],
        "reasonCode": [{"text": format!("GP risk list, line {}: {reason}", row.row)}]
    });
    let care_plan = json!({
        "resourceType": "CarePlan",
        "identifier": [{"system": CARE_PLAN_ID_SYSTEM, "value": row.nhs_number}],
        "status": "draft",
        "intent": "plan",
        "category": [{"coding": [{"system": PATHWAY_SYSTEM, "code": "proactive-care", "display": "Proactive care"}]}],
        "title": "Proactive care plan",
        "subject": {"reference": patient},
        "created": cx.received,
        "author": practice_reference(cx),
        "activity": [{"reference": {"reference": referral}}]
    });
    (service_request, care_plan)
}

/// An existing Patient (its stored JSON) with what the list says merged in:
/// the sending practice becomes `generalPractitioner`; name, gender, birth
/// date and postcode fill in only where the record has none. Members the list
/// does not touch keep their exact bytes. `None` when nothing changes.
pub fn merge_patient(existing: &str, row: &RiskRow, cx: &MapContext) -> Option<String> {
    let members = written_members(existing).ok()?;
    let has = |key: &str| members.iter().any(|m| m.key == key);
    let mut changes: Vec<(&str, Value)> = Vec::new();
    let gp = json!([practice_reference(cx)]);
    let current_gp = members
        .iter()
        .find(|m| m.key == "generalPractitioner")
        .and_then(|m| serde_json::from_str::<Value>(m.value).ok());
    if current_gp.as_ref() != Some(&gp) {
        changes.push(("generalPractitioner", gp));
    }
    if !has("name")
        && let Some(name) = name_of(row)
    {
        changes.push(("name", json!([name])));
    }
    if !has("gender")
        && let Some(gender) = row.gender
    {
        changes.push(("gender", json!(gender)));
    }
    if !has("birthDate")
        && let Some(birth_date) = &row.birth_date
    {
        changes.push(("birthDate", json!(birth_date)));
    }
    if !has("address")
        && let Some(postcode) = &row.postcode
    {
        changes.push(("address", json!([{"use": "home", "postalCode": postcode}])));
    }
    if changes.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(existing.len() + 128);
    out.push('{');
    let mut first = true;
    let mut push = |out: &mut String, key: &str, value: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        push_string(out, key);
        out.push(':');
        out.push_str(value);
    };
    for member in &members {
        match changes.iter().position(|(k, _)| *k == member.key) {
            Some(i) => {
                let (key, value) = changes.remove(i);
                push(&mut out, key, &value.to_string());
            }
            None => push(&mut out, &member.key, member.value),
        }
    }
    for (key, value) in changes {
        push(&mut out, key, &value.to_string());
    }
    out.push('}');
    Some(out)
}

fn name_of(row: &RiskRow) -> Option<Value> {
    if row.family_name.is_none() && row.given_names.is_empty() {
        return None;
    }
    let mut name = json!({"use": "official"});
    if let Some(family) = &row.family_name {
        name["family"] = json!(family);
    }
    if !row.given_names.is_empty() {
        name["given"] = json!(row.given_names);
    }
    Some(name)
}

fn practice_reference(cx: &MapContext) -> Value {
    json!({"identifier": {"system": ODS_SYSTEM, "value": cx.practice}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> RiskRow {
        RiskRow {
            row: 7,
            nhs_number: "9434765919".to_string(),
            family_name: Some("Smith".to_string()),
            given_names: vec!["Ann".to_string()],
            birth_date: Some("1938-03-05".to_string()),
            gender: Some("female"),
            postcode: Some("BR1 3PT".to_string()),
            usual_gp: None,
            efi_score: Some(0.36),
            efi_category: None,
        }
    }

    fn cx() -> MapContext {
        MapContext {
            practice: "G84001".to_string(),
            received: "2026-11-22T10:00:00Z".to_string(),
            severe_from: DEFAULT_SEVERE_FROM,
        }
    }

    #[test]
    fn thirteen_of_thirty_six_rounded_is_severe_twelve_is_not() {
        let mut r = row();
        assert!(at_risk(&r, &cx()).is_some());
        r.efi_score = Some(0.33);
        assert!(at_risk(&r, &cx()).is_none());
        r.efi_score = Some(12.0 / 36.0);
        assert!(at_risk(&r, &cx()).is_none());
        r.efi_category = Some("severe");
        assert!(at_risk(&r, &cx()).is_some());
    }

    #[test]
    fn merging_keeps_what_the_list_does_not_own() {
        let existing = r#"{"resourceType":"Patient","id":"p1","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765919"}],"name":[{"family":"Smyth"}],"extension":[{"url":"http://x","valueDecimal":1.50}]}"#;
        let merged = merge_patient(existing, &row(), &cx()).unwrap();
        assert!(
            merged.contains(r#""name":[{"family":"Smyth"}]"#),
            "{merged}"
        );
        assert!(merged.contains(r#""valueDecimal":1.50"#), "{merged}");
        assert!(merged.contains(r#""generalPractitioner":[{"identifier":{"system":"https://fhir.nhs.uk/Id/ods-organization-code","value":"G84001"}}]"#));
        assert!(merged.contains(r#""birthDate":"1938-03-05""#));
        // Merging again changes nothing.
        assert_eq!(merge_patient(&merged, &row(), &cx()), None);
    }
}
