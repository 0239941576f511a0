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

/// The live feed ends where `map` says: each fixture sent over MLLP, in file
/// order, to a gateway of its own gets the ACK codes the dry run gives, and
/// leaves the Patients and Encounters of its Bundle (ids, `meta` and the
/// references between them aside). `map`'s matching is simpler than the
/// feed's (merges followed, records absorbed, clashes): this keeps the
/// fixtures where the two agree, and so keeps `map` honest about them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_ends_where_the_dry_run_does() {
    use pathway_gateway::hl7v2::client::MllpClient;
    use serde_json::Value;
    let validator = Validator::embedded().unwrap();
    let mut differences = Vec::new();
    for file in fixtures() {
        let text = std::fs::read_to_string(&file).unwrap();
        let run = map_messages(&text, &AdtContext::default(), &validator);
        let gw = common::start().await;
        let mut client = MllpClient::connect(gw.mllp, std::time::Duration::from_secs(10))
            .await
            .unwrap();
        let mut acks = Vec::new();
        for message in pathway_gateway::api::ingest::split_messages(text.as_bytes()) {
            let ack = client.send(message).await.unwrap();
            let ack = String::from_utf8_lossy(&ack).to_string();
            // MSA-1, and every error's code: each ERR's ERR-3, or (v2.3
            // and v2.4) the codes in the one ERR's repeated ERR-1.
            let field = |prefix: &str, n: usize| {
                ack.split('\r')
                    .filter(|s| s.starts_with(prefix))
                    .filter_map(|s| s.split('|').nth(n))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            };
            let first = |text: &str| {
                text.split(['^', '&'])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            };
            let codes: Vec<String> = match field("ERR|", 1).as_slice() {
                [eld] if !eld.is_empty() => eld
                    .split('~')
                    .map(|e| first(e.split('^').nth(3).unwrap_or_default()))
                    .collect(),
                _ => field("ERR|", 3).iter().map(|f| first(f)).collect(),
            };
            acks.push((field("MSA|", 1).concat(), codes));
        }
        let expected_acks: Vec<(String, Vec<String>)> = run
            .messages
            .iter()
            .filter(|m| m.message > 0)
            .map(|m| {
                let codes = m.errors.iter().map(|e| e.condition.code().to_string());
                (m.ack.to_string(), codes.collect())
            })
            .collect();
        let live: Vec<Value> = [
            gw.search_all("Patient").await,
            gw.search_all("Encounter").await,
        ]
        .concat();
        let live_ids: Vec<(String, String)> = live
            .iter()
            .map(|r| {
                let ty = r["resourceType"].as_str().unwrap_or_default();
                let id = r["id"].as_str().unwrap_or_default();
                (format!("{ty}/{id}"), label(r))
            })
            .collect();
        let dry: Vec<Value> = run.bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"].clone())
            .collect();
        let dry_ids: Vec<(String, String)> = run.bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["fullUrl"].as_str().unwrap().to_string(),
                    label(&e["resource"]),
                )
            })
            .collect();
        let live = normal(live, &live_ids);
        let dry = normal(dry, &dry_ids);
        if acks != expected_acks || live != dry {
            differences.push(format!(
                "{}: ACKs {acks:?} against {expected_acks:?}\nlive:\n{}\ndry run:\n{}",
                file.display(),
                serde_json::to_string_pretty(&live).unwrap(),
                serde_json::to_string_pretty(&dry).unwrap()
            ));
        }
        gw.stop().await;
    }
    assert!(differences.is_empty(), "{}", differences.join("\n\n"));

    /// A resource's name that does not depend on ids: its type and first
    /// identifier.
    fn label(resource: &Value) -> String {
        let id = &resource["identifier"][0];
        format!(
            "{}:{}|{}",
            resource["resourceType"].as_str().unwrap_or_default(),
            id["system"].as_str().unwrap_or_default(),
            id["value"].as_str().unwrap_or_default()
        )
    }

    /// Without ids and `meta`, references by label, sorted by label.
    fn normal(resources: Vec<Value>, ids: &[(String, String)]) -> Vec<Value> {
        fn relabel(value: &mut Value, ids: &[(String, String)]) {
            match value {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get_mut("reference")
                        && let Some((_, label)) = ids.iter().find(|(id, _)| id == r)
                    {
                        *r = label.clone();
                    }
                    for v in o.values_mut() {
                        relabel(v, ids);
                    }
                }
                Value::Array(a) => a.iter_mut().for_each(|v| relabel(v, ids)),
                _ => {}
            }
        }
        let mut out: Vec<Value> = resources
            .into_iter()
            .map(|mut r| {
                if let Some(o) = r.as_object_mut() {
                    o.remove("id");
                    o.remove("meta");
                }
                relabel(&mut r, ids);
                r
            })
            .collect();
        out.sort_by_key(label);
        out
    }
}
