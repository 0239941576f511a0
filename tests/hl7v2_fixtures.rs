//! Golden HL7 v2 messages under fixtures/hl7v2: each `X.hl7` beside
//! `X.expected.json`, what `pathway-gateway map --from hl7v2` makes of it
//! (per message: ACK code, errors, unmapped fields, notes; and the FHIR
//! transaction Bundle). The expected resources must validate themselves.
//! `BLESS=1 cargo test --test hl7v2_fixtures` rewrites the expectations
//! (read the diff before committing it).

mod common;

use pathway_gateway::hl7v2::adt::AdtContext;
use pathway_gateway::hl7v2::dry_run::map_messages;
use pathway_gateway::validate::{Validator, has_errors};
use std::path::{Path, PathBuf};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hl7v2");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    files.sort();
    assert!(files.len() >= 12, "fixtures missing in {}", dir.display());
    files
}

#[test]
fn each_message_file_maps_to_its_expected_json() {
    let validator = Validator::embedded().unwrap();
    let mut mismatches = Vec::new();
    for file in fixtures() {
        let text = std::fs::read_to_string(&file).unwrap();
        let run = map_messages(&text, &AdtContext::default(), &validator);
        let actual = serde_json::to_value(&run).unwrap();
        let expected_file = file.with_extension("expected.json");
        let Some(expected) = common::expected_json(&expected_file, &actual) else {
            continue;
        };
        // The expectation itself must be valid FHIR under the profiles.
        for entry in expected["bundle"]["entry"].as_array().unwrap() {
            let issues = validator.validate(&entry["resource"]);
            assert!(
                !has_errors(&issues),
                "{}: expected resource is invalid: {issues:#?}",
                expected_file.display()
            );
        }
        if actual != expected {
            mismatches.push(format!(
                "{}:\n{}",
                file.display(),
                serde_json::to_string_pretty(&actual).unwrap()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n\n"));
}

/// Every event the issue lists has a fixture that maps to `AA`.
#[test]
fn every_supported_event_has_an_accepted_fixture() {
    let validator = Validator::embedded().unwrap();
    let mut accepted = std::collections::BTreeSet::new();
    for file in fixtures() {
        let text = std::fs::read_to_string(&file).unwrap();
        for m in map_messages(&text, &AdtContext::default(), &validator).messages {
            if m.ack == "AA" {
                accepted.insert(m.event);
            }
        }
    }
    for event in [
        "A01", "A02", "A03", "A04", "A05", "A08", "A11", "A12", "A13", "A28", "A31", "A40",
    ] {
        assert!(accepted.contains(event), "no accepted fixture for {event}");
    }
}
