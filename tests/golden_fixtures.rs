//! Golden fixtures under fixtures/fhir: each input beside what the gateway
//! must make of it. `valid/X.json` is POSTed and must be stored as
//! `valid/X.expected.json` (with `{{id}}` and `{{lastUpdated}}` for what the
//! server assigns); `invalid/X.json` must be refused as
//! `invalid/X.expected.json` says (status and OperationOutcome).
//! `BLESS=1 cargo test --test golden_fixtures` rewrites the expectations,
//! which are then reviewed like code.

mod common;

use pathway_gateway::validate::{Validator, has_errors};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn validator() -> &'static Validator {
    static VALIDATOR: std::sync::OnceLock<Validator> = std::sync::OnceLock::new();
    VALIDATOR.get_or_init(|| Validator::embedded().unwrap())
}

fn inputs(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/fhir")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".json") && !name.ends_with(".expected.json")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn expected_path(input: &Path) -> PathBuf {
    input.with_extension("expected.json")
}

fn bless() -> bool {
    std::env::var_os("BLESS").is_some()
}

/// The resource type a fixture is for, from its file name (`patient-…`).
fn type_of(input: &Path) -> &'static str {
    let name = input.file_name().unwrap().to_string_lossy().to_string();
    for (prefix, ty) in [
        ("patient-", "Patient"),
        ("encounter-", "Encounter"),
        ("careplan-", "CarePlan"),
        ("servicerequest-", "ServiceRequest"),
    ] {
        if name.starts_with(prefix) {
            return ty;
        }
    }
    panic!("{name}: fixture names start with the resource type")
}

/// POSTs a fixture's bytes, as they are on disk, to its type's endpoint.
async fn post_fixture(gw: &common::Gateway, input: &Path) -> common::Reply {
    let body = std::fs::read(input).unwrap();
    gw.send(
        gw.client
            .post(gw.url(type_of(input)))
            .header("content-type", "application/fhir+json")
            .body(body),
    )
    .await
}

#[tokio::test]
async fn valid_fixtures_are_stored_exactly_as_expected() {
    let gw = common::start().await;
    for input in inputs("valid") {
        let reply = post_fixture(&gw, &input).await;
        assert_eq!(reply.status, 201, "{}: {}", input.display(), reply.text);
        let id = reply.json["id"].as_str().unwrap();
        let last_updated = reply.json["meta"]["lastUpdated"].as_str().unwrap();
        let stored = gw.get(&format!("{}/{id}", type_of(&input))).await.text;
        let normalised = stored
            .replace(id, "{{id}}")
            .replace(last_updated, "{{lastUpdated}}");
        // What the gateway stores must itself be valid under the profiles
        // the write path enforces.
        let stored_value: Value = serde_json::from_str(&stored).unwrap();
        let issues = validator().validate(&stored_value);
        assert!(
            !has_errors(&issues),
            "{}: stored form invalid: {issues:#?}",
            input.display()
        );
        let expected_file = expected_path(&input);
        if bless() {
            std::fs::write(&expected_file, format!("{normalised}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file)
            .unwrap_or_else(|_| panic!("{} missing; run with BLESS=1", expected_file.display()));
        assert_eq!(normalised, expected.trim_end(), "{}", input.display());
    }
    gw.stop().await;
}

#[tokio::test]
async fn invalid_fixtures_get_the_expected_operation_outcome() {
    let gw = common::start().await;
    for input in inputs("invalid") {
        let reply = post_fixture(&gw, &input).await;
        let actual = json!({"status": reply.status.as_u16(), "outcome": reply.json});
        let expected_file = expected_path(&input);
        let Some(expected) = common::expected_json(&expected_file, &actual) else {
            continue;
        };
        assert_eq!(actual, expected, "{}", input.display());
    }
    gw.stop().await;
}
