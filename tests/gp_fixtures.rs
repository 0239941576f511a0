//! Golden GP risk lists under fixtures/gp: each `X.csv` beside
//! `X.expected.json`, what `pathway-gateway map --from gp-csv` makes of it
//! (report, row errors and the transaction Bundle). The resources must
//! validate, and the live upload must report the same rows and errors.
//! `BLESS=1 cargo test --test gp_fixtures` rewrites the expectations.

mod common;

use pathway_gateway::gp::dry_run::map_list;
use pathway_gateway::gp::layout::Overrides;
use pathway_gateway::gp::map::{DEFAULT_SEVERE_FROM, MapContext};
use pathway_gateway::validate::{Validator, has_errors};
use std::path::{Path, PathBuf};

const PRACTICE: &str = "G84001";

fn lists() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gp");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "fixtures missing in {}", dir.display());
    files
}

fn cx() -> MapContext {
    MapContext {
        practice: PRACTICE.to_string(),
        received: "2026-11-22T10:00:00Z".to_string(),
        severe_from: DEFAULT_SEVERE_FROM,
    }
}

#[test]
fn each_list_maps_to_its_expected_bundle_and_errors() {
    let validator = Validator::embedded().unwrap();
    for list in lists() {
        let bytes = std::fs::read(&list).unwrap();
        let run = map_list(&bytes, None, &Overrides::new(), &cx(), &validator).unwrap();
        for entry in run.bundle["entry"].as_array().unwrap() {
            let issues = validator.validate(&entry["resource"]);
            assert!(!has_errors(&issues), "{}: {issues:#?}", list.display());
        }
        let actual = serde_json::to_value(&run).unwrap();
        let expected_file = list.with_extension("expected.json");
        let Some(expected) = common::expected_json(&expected_file, &actual) else {
            continue;
        };
        assert_eq!(actual, expected, "{}", list.display());
    }
}

#[tokio::test]
async fn the_live_upload_reports_what_the_dry_run_says() {
    let validator = Validator::embedded().unwrap();
    for list in lists() {
        let gw = common::start().await;
        let bytes = std::fs::read(&list).unwrap();
        let run = map_list(&bytes, None, &Overrides::new(), &cx(), &validator).unwrap();
        let reply = gw
            .send(
                gw.client
                    .post(format!(
                        "{}/ingest/gp-risk-list?practice={PRACTICE}",
                        gw.root
                    ))
                    .header("content-type", "text/csv")
                    .body(bytes),
            )
            .await;
        assert_eq!(reply.status, 200, "{}: {}", list.display(), reply.text);
        let report = &reply.json;
        assert_eq!(report["rows"], run.rows, "{}", list.display());
        assert_eq!(report["accepted"], run.accepted);
        assert_eq!(report["rejected"], run.rejected);
        assert_eq!(report["patients_created"], run.accepted);
        assert_eq!(report["referrals_created"], run.referrals);
        assert_eq!(report["errors"], serde_json::to_value(&run.errors).unwrap());
        assert_eq!(
            report["quarantined"].as_array().unwrap().len(),
            run.rejected
        );
        // The dry run's Bundle is a transaction the gateway takes as it is;
        // after the upload, every entry finds its resource already there.
        let replay = gw.post("", &run.bundle).await;
        assert_eq!(replay.status, 200, "{}", replay.text);
        for entry in replay.json["entry"].as_array().unwrap() {
            assert_eq!(entry["response"]["status"], "200 OK", "{}", list.display());
        }
        gw.stop().await;
    }
}
