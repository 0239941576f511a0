//! The validator's rules, one behaviour per test: each bad input is caught
//! at the right FHIRPath expression with the right issue code, and valid
//! resources pass clean.

use super::*;
use serde_json::json;
use std::sync::OnceLock;

fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| Validator::embedded().expect("the embedded profiles compile"))
}

fn errors(resource: Value) -> Vec<(String, &'static str, String)> {
    validator()
        .validate(&resource)
        .into_iter()
        .filter(|i| i.severity == Severity::Error)
        .map(|i| (i.expression.join(","), i.code, i.diagnostics))
        .collect()
}

/// The one error expected, at `expression` with `code`.
fn assert_single(resource: Value, expression: &str, code: &str) -> String {
    let found = errors(resource);
    assert_eq!(found.len(), 1, "expected one error, got {found:#?}");
    assert_eq!(found[0].0, expression, "{found:#?}");
    assert_eq!(found[0].1, code, "{found:#?}");
    found[0].2.clone()
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}],
        "name": [{"family": "Smith", "given": ["Ann"]}],
        "gender": "female",
        "birthDate": "1938-04-12",
        "generalPractitioner": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "G84001"}}]
    })
}

fn encounter() -> Value {
    json!({
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2024-03-31T00:30:00+00:00", "end": "2024-03-31T03:10:00+01:00"}
    })
}

fn service_request() -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "https://fhir.onebromley.nhs.uk/CodeSystem/pathway-referral", "code": "proactive-care-assessment"}]},
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2024-05-01"
    })
}

fn care_plan() -> Value {
    json!({
        "resourceType": "CarePlan",
        "status": "draft",
        "intent": "plan",
        "category": [{"coding": [{"system": "https://fhir.onebromley.nhs.uk/CodeSystem/care-pathway", "code": "proactive-care"}]}],
        "subject": {"reference": "Patient/p1"}
    })
}

#[test]
fn valid_resources_of_the_four_types_pass_clean() {
    for resource in [patient(), encounter(), service_request(), care_plan()] {
        let issues = validator().validate(&resource);
        assert!(issues.is_empty(), "{issues:#?}");
    }
}

#[test]
fn missing_required_element() {
    let mut e = encounter();
    e.as_object_mut().unwrap().remove("status");
    let text = assert_single(e, "Encounter.status", "required");
    assert!(text.contains("Encounter.status is required"), "{text}");
}

#[test]
fn unknown_element_at_any_depth() {
    let mut p = patient();
    p["name"][0]["surname"] = json!("Smith");
    let text = assert_single(p, "Patient.name[0].surname", "structure");
    assert!(text.contains("unknown element \"surname\""), "{text}");
}

#[test]
fn wrong_choice_type_names_the_allowed_ones() {
    let mut p = patient();
    p["deceasedString"] = json!("yes");
    let text = assert_single(p, "Patient.deceasedString", "structure");
    assert!(
        text.contains("deceased[x] may be one of boolean, dateTime"),
        "{text}"
    );
}

#[test]
fn wrong_json_type() {
    let mut p = patient();
    p["active"] = json!("yes");
    let text = assert_single(p, "Patient.active", "structure");
    assert!(text.contains("must be a JSON boolean"), "{text}");
}

#[test]
fn impossible_date() {
    let mut p = patient();
    p["birthDate"] = json!("1938-02-30");
    assert_single(p, "Patient.birthDate", "value");
}

#[test]
fn empty_string() {
    let mut p = patient();
    p["name"][0]["given"][0] = json!("");
    assert_single(p, "Patient.name[0].given[0]", "value");
}

#[test]
fn code_outside_a_required_binding() {
    let mut p = patient();
    p["gender"] = json!("F");
    let text = assert_single(p, "Patient.gender", "code-invalid");
    assert!(
        text.contains("\"F\"") && text.contains("male, female"),
        "{text}"
    );
}

#[test]
fn cardinality_breaches_in_base_and_profile() {
    let mut p = patient();
    p["gender"] = json!(["female"]);
    assert_single(p, "Patient.gender", "structure");

    let mut p = patient();
    p["identifier"] = json!([
        {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"},
        {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "4000000020"}
    ]);
    let text = assert_single(p, "Patient.identifier", "structure");
    assert!(
        text.contains("slice Patient.identifier:nhsNumber") && text.contains("at most 1"),
        "{text}"
    );
}

#[test]
fn failed_core_invariant() {
    let mut e = encounter();
    e["period"] = json!({"start": "2024-04-02", "end": "2024-04-01"});
    let text = assert_single(e, "Encounter.period", "invariant");
    assert!(text.starts_with("per-1"), "{text}");
}

#[test]
fn failed_slice() {
    let mut s = service_request();
    s["code"] = json!({"coding": [{"system": "http://snomed.info/sct", "code": "3457005"}]});
    let text = assert_single(s, "ServiceRequest.code.coding", "required");
    assert!(
        text.contains("pathwayReferral") && text.contains("OneBromley-ServiceRequest"),
        "{text}"
    );
}

#[test]
fn nhs_number_with_a_bad_check_digit() {
    let mut p = patient();
    p["identifier"][0]["value"] = json!("9434765918");
    let text = assert_single(p, "Patient.identifier[0].value", "invariant");
    assert!(
        text.contains("ob-nhs-1") && text.contains("9434765918"),
        "{text}"
    );
}

#[test]
fn a_patient_without_an_nhs_number_is_valid() {
    let mut p = patient();
    p["identifier"] =
        json!([{"system": "https://fhir.kingsch.nhs.uk/Id/hospital-number", "value": "K123456"}]);
    assert!(errors(p).is_empty());
}

#[test]
fn code_outside_a_profile_binding() {
    let mut s = service_request();
    s["code"]["coding"][0]["code"] = json!("proactive-care");
    let text = assert_single(s, "ServiceRequest.code.coding[0]", "code-invalid");
    assert!(text.contains("pathway-referral"), "{text}");
}

#[test]
fn every_issue_is_reported_not_just_the_first() {
    let resource = json!({
        "resourceType": "Encounter",
        "class": [{"code": "EMER"}],
        "subject": {"reference": "Organization/x"},
        "period": {"start": "yesterday"},
        "colour": "blue"
    });
    let found = errors(resource);
    let at: Vec<&str> = found.iter().map(|f| f.0.as_str()).collect();
    for expected in [
        "Encounter.class",
        "Encounter.subject.reference",
        "Encounter.period.start",
        "Encounter.colour",
        "Encounter.status",
    ] {
        assert!(at.contains(&expected), "{expected} missing from {found:#?}");
    }
}

#[test]
fn reference_targets_are_checked() {
    let mut s = service_request();
    s["subject"] = json!({"reference": "Encounter/e1"});
    let found = errors(s);
    assert!(
        found
            .iter()
            .all(|f| f.0 == "ServiceRequest.subject.reference"),
        "{found:#?}"
    );
    assert!(!found.is_empty());
    let mut s = service_request();
    s["subject"] = json!({"reference": "Patients/p1"});
    let text = assert_single(s, "ServiceRequest.subject.reference", "value");
    assert!(text.contains("not a FHIR R4 resource type"), "{text}");
}

#[test]
fn primitive_extensions_and_nulls_pair_up() {
    let mut p = patient();
    p["name"][0]["given"] = json!(["Ann", null]);
    p["name"][0]["_given"] =
        json!([null, {"extension": [{"url": "http://x/e", "valueString": "initial"}]}]);
    assert!(errors(p).is_empty());
    let mut p = patient();
    p["name"][0]["given"] = json!(["Ann", null]);
    assert_single(p, "Patient.name[0].given[1]", "structure");
}

#[test]
fn contained_resources_are_checked_and_referenced() {
    let mut c = care_plan();
    c["contained"] = json!([{"resourceType": "Patient", "id": "p", "gender": "F"}]);
    c["subject"] = json!({"reference": "#p"});
    let found = errors(c.clone());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].0, "CarePlan.contained[0].gender");
    c["subject"] = json!({"reference": "#q"});
    let at: Vec<String> = errors(c).into_iter().map(|f| f.0).collect();
    assert!(at.contains(&"CarePlan.contained[0]".to_string()), "{at:?}"); // dom-3
    assert!(at.contains(&"CarePlan.subject".to_string()), "{at:?}"); // ref-1

    // dom-3 counts a canonical naming the contained resource, not only a
    // reference.
    let mut c = care_plan();
    c["contained"] = json!([{"resourceType": "PlanDefinition", "id": "pd1", "status": "active"}]);
    c["instantiatesCanonical"] = json!(["#pd1"]);
    let found = errors(c);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn other_resource_types_get_a_warning_not_an_error() {
    let issues = validator().validate(&json!({"resourceType": "Observation", "status": "final"}));
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].severity, Severity::Warning);
    let issues = validator().validate(&json!({"resourceType": "Patinet"}));
    assert!(has_errors(&issues));
}

#[test]
fn profile_invariants_and_claimed_profiles() {
    let mut c = care_plan();
    c["status"] = json!("active");
    let text = assert_single(c.clone(), "CarePlan", "invariant");
    assert!(text.contains("ob-cp-1"), "{text}");
    c["period"] = json!({"start": "2024-06-01"});
    assert!(errors(c.clone()).is_empty());
    c["meta"] = json!({"profile": ["https://example.org/StructureDefinition/Other"]});
    let issues = validator().validate(&c);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_eq!(issues[0].severity, Severity::Warning);
}

#[test]
fn nhs_number_verification_status_extension_is_checked() {
    let mut p = patient();
    p["identifier"][0]["extension"] = json!([{
        "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus",
        "valueCodeableConcept": {"coding": [{
            "system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland",
            "code": "01"}]}
    }]);
    assert!(errors(p.clone()).is_empty(), "{:#?}", errors(p.clone()));
    p["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = json!("99");
    let text = assert_single(
        p,
        "Patient.identifier[0].extension[0].valueCodeableConcept",
        "code-invalid",
    );
    assert!(
        text.contains("UKCore-NHSNumberVerificationStatus"),
        "{text}"
    );
}

#[test]
fn known_extensions_are_checked_wherever_they_stand() {
    // The opt-out extension carries a boolean; a string is refused even
    // where no profile slices it (here, on an Encounter).
    let mut e = encounter();
    e["extension"] = json!([{
        "url": "https://fhir.onebromley.nhs.uk/StructureDefinition/Extension-OneBromley-NationalDataOptOut",
        "valueString": "yes"
    }]);
    let found = errors(e);
    assert!(
        found
            .iter()
            .any(|f| f.0 == "Encounter.extension[0].valueString" && f.1 == "structure"),
        "{found:#?}"
    );
    // When an undated location was reported: a dateTime, at most once.
    let reported = "https://fhir.onebromley.nhs.uk/StructureDefinition/Extension-OneBromley-EncounterLocationReported";
    let mut e = encounter();
    e["location"] = json!([{
        "extension": [{"url": reported, "valueDateTime": "2026-07-15T13:00:00+01:00"}],
        "location": {"display": "AMU"}
    }]);
    assert!(errors(e.clone()).is_empty(), "{:#?}", errors(e));
    let mut e = encounter();
    e["location"] = json!([{
        "extension": [
            {"url": reported, "valueDateTime": "2026-07-15T13:00:00+01:00"},
            {"url": reported, "valueString": "13:00"}
        ],
        "location": {"display": "AMU"}
    }]);
    let found = errors(e);
    assert!(
        found
            .iter()
            .any(|f| f.0 == "Encounter.location[0].extension[1].valueString"),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.2.contains("extension:reported") && f.2.contains("at most 1 allowed")),
        "the second is one too many: {found:#?}"
    );
    // Unknown extension URLs are carried unchecked.
    let mut p = patient();
    p["extension"] =
        json!([{"url": "https://example.org/StructureDefinition/whatever", "valueString": "x"}]);
    assert!(errors(p).is_empty());
    // Base-only validation still checks a known extension.
    let mut p = patient();
    p["identifier"][0]["extension"] = json!([{
        "url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus",
        "valueCodeableConcept": {"coding": [{"system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland", "code": "99"}]}
    }]);
    let issues = validator().validate_base(&p);
    assert!(has_errors(&issues), "{issues:#?}");
    assert_eq!(issues.len(), 1, "{issues:#?}");
}

#[test]
fn ele_1_is_about_elements_not_resources() {
    for bare in [
        json!({"resourceType": "Patient"}),
        json!({"resourceType": "Patient", "id": "x"}),
    ] {
        let found = errors(bare.clone());
        assert!(
            found.iter().all(|(_, _, why)| !why.contains("ele-1")),
            "{bare}: {found:?}"
        );
    }
    let mut p = json!({"resourceType": "Patient", "name": [{}]});
    p["id"] = json!("x");
    assert!(
        errors(p)
            .iter()
            .any(|(at, _, why)| at == "Patient.name[0]" && why.contains("ele-1"))
    );
}

/// The repository's profiles, each JSON file changed by `edit` (given its
/// file name), in a directory of their own.
fn profiles_with(edit: impl Fn(&str, &mut Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let profiles = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    for entry in std::fs::read_dir(&profiles).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".json") {
            continue;
        }
        let mut json: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(name, &mut json);
        std::fs::write(dir.path().join(name), json.to_string()).unwrap();
    }
    dir
}

#[test]
fn a_required_slice_is_missing_when_its_element_is_absent() {
    // A local profile that makes the NHS number slice 1..1 while
    // `identifier` itself stays 0..* (as many profiles do).
    let dir = profiles_with(|name, sd| {
        if name == "StructureDefinition-OneBromley-Patient.json" {
            for e in sd["differential"]["element"].as_array_mut().unwrap() {
                if e["id"] == "Patient.identifier:nhsNumber" {
                    e["min"] = json!(1);
                }
            }
        }
    });
    let url = "https://fhir.onebromley.nhs.uk/StructureDefinition/OneBromley-Patient";
    let strict = Validator::load(Some(dir.path()), &[url.to_string()]).unwrap();
    let text_of = |p: &Value| {
        strict
            .validate(p)
            .into_iter()
            .filter(|i| i.severity == Severity::Error)
            .map(|i| format!("{} @ {}", i.diagnostics, i.expression.join(",")))
            .collect::<Vec<_>>()
    };
    let mut without = patient();
    without.as_object_mut().unwrap().remove("identifier");
    let found = text_of(&without);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("nhsNumber") && found[0].contains("Patient.identifier"),
        "{found:?}"
    );
    // With a hospital number only: the same finding.
    let mut local = patient();
    local["identifier"] = json!([{"system": "https://fhir.example/Id/mrn", "value": "K1"}]);
    assert_eq!(text_of(&local).len(), 1, "{:?}", text_of(&local));
    // With the NHS number: clean.
    assert!(text_of(&patient()).is_empty(), "{:?}", text_of(&patient()));
}

#[test]
fn a_coded_value_without_a_system_is_not_in_a_required_value_set() {
    // `EMER` alone could be any code system's; a plain `code` has its
    // system implied, a Coding does not.
    let mut e = encounter();
    e["class"] = json!({"code": "EMER"});
    let text = assert_single(e, "Encounter.class", "code-invalid");
    assert!(text.contains("no system"), "{text}");
    // The same Coding with its system passes.
    let mut e = encounter();
    e["class"] =
        json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"});
    assert!(errors(e).is_empty());
}

#[test]
fn a_coding_that_cannot_be_decided_is_enough_for_a_required_binding() {
    // The encounter class value set also takes a system whose codes this
    // validator cannot list: a coding in it might be in the value set.
    let dir = profiles_with(|name, vs| {
        if name == "ValueSet-encounter-class.json" {
            let include = vs["compose"]["include"].as_array_mut().unwrap();
            include.push(json!({"system": "http://snomed.info/sct"}));
        }
    });
    let url = "https://fhir.onebromley.nhs.uk/StructureDefinition/OneBromley-Encounter";
    let local = Validator::load(Some(dir.path()), &[url.to_string()]).unwrap();
    let errors_of = |class: Value| {
        let mut e = encounter();
        e["class"] = class;
        local
            .validate(&e)
            .into_iter()
            .filter(|i| i.severity == Severity::Error)
            .map(|i| i.diagnostics)
            .collect::<Vec<_>>()
    };
    assert!(errors_of(json!({"system": "http://snomed.info/sct", "code": "4525004"})).is_empty());
    // Encounter.class is a single Coding: without a system it is refused.
    let found = errors_of(json!({"code": "EMER"}));
    assert_eq!(found.len(), 1, "{found:?}");
}
