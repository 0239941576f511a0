//! The validator's three doors: `POST /fhir/{type}/$validate`, the
//! `validate` command, and the write path. The same input gets the same
//! issues through each; `check-profiles` lints a profiles directory.

mod common;

use common::{nhs_number, patient, service_request};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pathway-gateway"))
}

fn fixture_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fhir");
    let mut files = Vec::new();
    for dir in ["valid", "invalid"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".json") && !name.ends_with(".expected.json") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn validate_operation_and_command_give_the_same_issues() {
    let gw = common::start().await;
    let mut compared = 0;
    for file in fixture_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let Ok(resource) = serde_json::from_str::<Value>(&text) else {
            continue; // not JSON: the command reports it, the operation answers 400
        };
        let Some(ty) = resource["resourceType"].as_str() else {
            continue;
        };
        let reply = gw.post(&format!("{ty}/$validate"), &resource).await;
        assert_eq!(reply.status, 200, "{}: {}", file.display(), reply.text);

        let output = binary()
            .arg("validate")
            .arg("--json")
            .arg(&file)
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let from_command: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(from_command, reply.json, "{}", file.display());

        let invalid = reply.json["issue"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["severity"] == "error");
        assert_eq!(
            output.status.code(),
            Some(if invalid { 1 } else { 0 }),
            "{}",
            file.display()
        );
        compared += 1;
    }
    assert!(compared >= 15, "only {compared} fixtures compared");
    gw.stop().await;
}

#[tokio::test]
async fn a_write_is_refused_with_the_issues_validate_mode_create_reports() {
    let gw = common::start().await;
    let mut bad = patient("9434765918", "Smith");
    bad["name"][0]["surname"] = json!("x");
    let write = gw.post("Patient", &bad).await;
    assert_eq!(write.status, 422, "{}", write.text);
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": bad},
        {"name": "mode", "valueCode": "create"}
    ]});
    let check = gw.post("Patient/$validate", &parameters).await;
    assert_eq!(check.status, 200);
    assert_eq!(check.json, write.json);
    let at: Vec<&str> = write.json["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        at,
        ["Patient.name[0].surname", "Patient.identifier[0].value"]
    );
    gw.stop().await;
}

#[tokio::test]
async fn validate_operation_takes_a_profile_parameter() {
    let gw = common::start().await;
    // Base R4 only: a ServiceRequest without a pathway code is fine…
    let mut request = service_request("Patient/p1");
    request["code"] = json!({"text": "physiotherapy"});
    let plain = gw.post("ServiceRequest/$validate", &request).await;
    assert_eq!(
        plain.json["issue"][0]["severity"], "information",
        "{}",
        plain.text
    );
    // …but not under the One Bromley profile, named by query or parameter.
    let url = "https://fhir.onebromley.nhs.uk/StructureDefinition/OneBromley-ServiceRequest";
    let by_query = gw
        .post(&format!("ServiceRequest/$validate?profile={url}"), &request)
        .await;
    assert_eq!(
        by_query.json["issue"][0]["expression"][0],
        "ServiceRequest.code.coding"
    );
    let by_parameter = gw
        .post(
            "ServiceRequest/$validate",
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "resource", "resource": request},
                {"name": "profile", "valueUri": url}
            ]}),
        )
        .await;
    assert_eq!(by_parameter.json, by_query.json);
    // An unknown profile asked for by name is an error, not a silent pass.
    let unknown = gw
        .post(
            "ServiceRequest/$validate?profile=https://example.org/StructureDefinition/Nope",
            &service_request("Patient/p1"),
        )
        .await;
    assert_eq!(
        unknown.json["issue"][0]["severity"], "error",
        "{}",
        unknown.text
    );
    // A resource of another type than the URL is refused.
    let wrong = gw
        .post("Patient/$validate", &service_request("Patient/p1"))
        .await;
    assert_eq!(wrong.status, 400);
    gw.stop().await;
}

#[test]
fn validate_command_reads_bundles_and_ndjson_and_sums_up() {
    let dir = tempfile::tempdir().unwrap();
    let good = patient(&nhs_number(3), "Jones");
    let mut bad = patient(&nhs_number(4), "Jones");
    bad["birthDate"] = json!("1950-02-30");
    let ndjson = dir.path().join("list.ndjson");
    std::fs::write(&ndjson, format!("{good}\n{bad}\n{good}\n")).unwrap();
    let bundle = dir.path().join("bundle.json");
    let entries = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": good}, {"resource": bad}
    ]});
    std::fs::write(&bundle, entries.to_string()).unwrap();

    let output = binary()
        .arg("validate")
        .arg(&ndjson)
        .arg(&bundle)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("list.ndjson:2 Patient: INVALID"),
        "{stdout}"
    );
    assert!(stdout.contains("Patient.birthDate"), "{stdout}");
    assert!(
        stdout.contains("Bundle.entry[1].resource.birthDate"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("5 resources checked: 3 valid, 2 invalid (2 errors, 0 warnings)\n"),
        "{stdout}"
    );

    let valid_only = dir.path().join("one.json");
    std::fs::write(&valid_only, good.to_string()).unwrap();
    let output = binary().arg("validate").arg(&valid_only).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    // A profile named on the command line applies to every resource.
    let output = binary()
        .args([
            "validate",
            "--profile",
            "https://fhir.onebromley.nhs.uk/StructureDefinition/OneBromley-Encounter",
        ])
        .arg(&valid_only)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("constrains Encounter, not Patient"));
}

#[test]
fn check_profiles_passes_the_shipped_profiles_and_names_broken_rules() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let output = binary()
        .arg("check-profiles")
        .arg(&shipped)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("7 StructureDefinitions compiled, 0 problems"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let profile = json!({
        "resourceType": "StructureDefinition",
        "id": "Broken-Patient",
        "url": "https://example.org/StructureDefinition/Broken-Patient",
        "name": "BrokenPatient",
        "status": "draft",
        "kind": "resource",
        "abstract": false,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {"element": [
            {"id": "Patient.nickname", "path": "Patient.nickname", "min": 1},
            {"id": "Patient.gender", "path": "Patient.gender",
             "binding": {"strength": "required", "valueSet": "https://example.org/ValueSet/missing"}}
        ]}
    });
    std::fs::write(
        dir.path().join("StructureDefinition-Broken-Patient.json"),
        profile.to_string(),
    )
    .unwrap();
    let output = binary()
        .arg("check-profiles")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("Patient.nickname is not an element of Patient"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ValueSet https://example.org/ValueSet/missing is not under profiles/"),
        "{stdout}"
    );

    // A constraint that is not FHIRPath the evaluator can run stops the load.
    let mut bad_expression = profile.clone();
    bad_expression["differential"]["element"] = json!([{"id": "Patient", "path": "Patient",
        "constraint": [{"key": "x-1", "severity": "error", "human": "x", "expression": "name.exists("}]}]);
    std::fs::write(
        dir.path().join("StructureDefinition-Broken-Patient.json"),
        bad_expression.to_string(),
    )
    .unwrap();
    let output = binary()
        .arg("check-profiles")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("constraint x-1"));
}
