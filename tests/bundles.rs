//! Transaction and batch Bundles over a real socket.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn entry_post(full_url: &str, resource: Value) -> Value {
    let ty = resource["resourceType"].as_str().unwrap().to_string();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": ty}})
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

#[tokio::test]
async fn transaction_of_patient_and_encounter_resolves_urn_uuid_references() {
    let gw = start().await;
    let patient_urn = "urn:uuid:6c1b6a4e-2c1e-4f1a-9d3a-0b5f0c1d2e3f";
    let tx = bundle(
        "transaction",
        vec![
            entry_post(patient_urn, patient("9997574915", "Mensah")),
            entry_post(
                "urn:uuid:0a3c7c36-6d1a-4a8e-9e1b-1f4b7a9c0d11",
                encounter(patient_urn, "EMER", "2026-11-20T22:10:00+00:00", None),
            ),
        ],
    );
    let reply = gw.post("", &tx).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["type"], "transaction-response");
    let entries = reply.json["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    let patient_id = entries[0]["resource"]["id"].as_str().unwrap();
    let location = entries[0]["response"]["location"].as_str().unwrap();
    assert_eq!(location, format!("Patient/{patient_id}/_history/1"));
    let encounter_id = entries[1]["resource"]["id"].as_str().unwrap();

    let stored = gw.get(&format!("Encounter/{encounter_id}")).await;
    assert_eq!(
        stored.json["subject"]["reference"],
        format!("Patient/{patient_id}")
    );
    // The rewritten reference is searchable.
    let found = gw
        .search_all(&format!("Encounter?patient={patient_id}"))
        .await;
    assert_eq!(found.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn transaction_with_one_bad_entry_stores_nothing_and_names_the_entry() {
    let gw = start().await;
    let patient_urn = "urn:uuid:1b0d8a1e-9f2d-4a47-8f55-7b2f6a0c3d21";
    let mut bad_encounter = encounter(patient_urn, "EMER", "2026-11-20T22:10:00Z", None);
    bad_encounter["status"] = json!("sort-of-finished");
    let tx = bundle(
        "transaction",
        vec![
            entry_post(patient_urn, patient("9991862528", "Ahmed")),
            entry_post("urn:uuid:2", service_request(patient_urn)),
            entry_post("urn:uuid:3", bad_encounter),
        ],
    );
    let reply = gw.post("", &tx).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.text
    );
    let issue = reply.outcome_issue();
    assert_eq!(issue["expression"][0], "Bundle.entry[2].resource.status");
    let nothing = gw.search_all("Patient?identifier=9991862528").await;
    assert!(nothing.is_empty());
    assert!(gw.search_all("ServiceRequest").await.is_empty());

    // A failure found only inside the store (a stale If-Match) rolls back too.
    let created = gw.post("Patient", &patient("9995260182", "Stale")).await;
    let id = created.json["id"].as_str().unwrap();
    let mut update = created.json.clone();
    update["gender"] = json!("male");
    let tx = bundle(
        "transaction",
        vec![
            entry_post("urn:uuid:4", patient("9991590838", "New")),
            json!({"resource": update, "request": {"method": "PUT", "url": format!("Patient/{id}"), "ifMatch": "W/\"9\""}}),
        ],
    );
    let reply = gw.post("", &tx).await;
    assert_eq!(
        reply.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        reply.text
    );
    assert_eq!(reply.outcome_issue()["expression"][0], "Bundle.entry[1]");
    assert!(
        gw.search_all("Patient?identifier=9991590838")
            .await
            .is_empty()
    );
    gw.stop().await;
}

#[tokio::test]
async fn transaction_conditional_entries_reuse_existing_resources() {
    let gw = start().await;
    let existing = gw.post("Patient", &patient("9990166137", "Existing")).await;
    let existing_id = existing.json["id"].as_str().unwrap().to_string();
    let urn = "urn:uuid:7";
    let tx = bundle(
        "transaction",
        vec![
            json!({
                "fullUrl": urn,
                "resource": patient("9990166137", "Existing"),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={NHS}|9990166137")}
            }),
            json!({
                "fullUrl": "urn:uuid:8",
                "resource": service_request(urn),
                "request": {"method": "PUT", "url": "ServiceRequest?identifier=https://fhir.onebromley.nhs.uk/Id/referral|R1"}
            }),
        ],
    );
    let reply = gw.post("", &tx).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(
        reply.json["entry"][0]["resource"]["id"],
        existing_id.as_str()
    );
    assert_eq!(reply.json["entry"][1]["response"]["status"], "201 Created");
    assert_eq!(
        reply.json["entry"][1]["resource"]["subject"]["reference"],
        format!("Patient/{existing_id}")
    );
    assert_eq!(gw.search_all("Patient").await.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn transaction_changing_one_resource_twice_is_a_conflict() {
    let gw = start().await;
    let mut one = patient("9992319488", "One");
    one["id"] = json!("same");
    let mut two = one.clone();
    two["name"][0]["family"] = json!("Two");
    let tx = bundle(
        "transaction",
        vec![
            json!({"resource": one, "request": {"method": "PUT", "url": "Patient/same"}}),
            json!({"resource": two, "request": {"method": "PUT", "url": "Patient/same"}}),
        ],
    );
    let reply = gw.post("", &tx).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    let issue = reply.outcome_issue();
    assert_eq!(issue["code"], "conflict");
    assert_eq!(issue["expression"][0], "Bundle.entry[1]");
    assert!(gw.search_all("Patient").await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn two_entries_with_one_condition_conflict_but_two_matches_of_an_existing_one_do_not() {
    let gw = start().await;
    let condition = format!("identifier={NHS}|9996281949");
    let conditional = |family: &str| {
        json!({
            "resource": patient("9996281949", family),
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": condition.clone()}
        })
    };
    let reply = gw
        .post(
            "",
            &bundle("transaction", vec![conditional("A"), conditional("B")]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    assert_eq!(reply.outcome_issue()["expression"][0], "Bundle.entry[1]");
    assert!(gw.search_all("Patient").await.is_empty(), "nothing created");

    gw.post("Patient", &patient("9996281949", "Existing")).await;
    let other = json!({
        "resource": patient("9996281949", "A"),
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier=9996281949")}
    });
    let reply = gw
        .post("", &bundle("transaction", vec![conditional("A"), other]))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reply.json["entry"][0]["resource"]["id"],
        reply.json["entry"][1]["resource"]["id"]
    );
    assert_eq!(gw.search_all("Patient").await.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn only_references_are_rewritten_not_identifiers_with_the_same_urn() {
    let gw = start().await;
    let urn = "urn:uuid:3f1c2a6e-8a1b-4a4e-9a0e-5c2d7b1e9f00";
    let mut referral = service_request(urn);
    referral["identifier"] = json!([{"system": "urn:ietf:rfc:3986", "value": urn}]);
    let tx = bundle(
        "transaction",
        vec![
            entry_post(urn, patient("9998219930", "Urn")),
            entry_post("urn:uuid:x", referral),
        ],
    );
    let reply = gw.post("", &tx).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let stored = &reply.json["entry"][1]["resource"];
    assert_eq!(stored["identifier"][0]["value"], urn);
    let patient_id = reply.json["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(
        stored["subject"]["reference"],
        format!("Patient/{patient_id}")
    );
    let found = gw
        .search_all(&format!(
            "ServiceRequest?identifier=urn:ietf:rfc:3986|{urn}"
        ))
        .await;
    assert_eq!(found.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn batch_entries_succeed_or_fail_on_their_own() {
    let gw = start().await;
    let good = gw.post("Patient", &patient("9991860916", "Batch")).await;
    let id = good.json["id"].as_str().unwrap().to_string();
    let mut bad = patient("9993909963", "Bad");
    bad["gender"] = json!("f");
    let b = bundle(
        "batch",
        vec![
            entry_post("urn:uuid:a", patient("9990308241", "Fine")),
            entry_post("urn:uuid:b", bad),
            json!({"request": {"method": "GET", "url": format!("Patient/{id}")}}),
            json!({"request": {"method": "GET", "url": "Patient/missing"}}),
            json!({"request": {"method": "GET", "url": "Patient?identifier=9990308241"}}),
            json!({"request": {"method": "DELETE", "url": format!("Patient/{id}")}}),
        ],
    );
    let reply = gw.post("", &b).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["type"], "batch-response");
    let statuses: Vec<&str> = reply.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "422 Unprocessable Entity",
            "200 OK",
            "404 Not Found",
            "200 OK",
            "400 Bad Request"
        ]
    );
    let outcome = &reply.json["entry"][1]["response"]["outcome"];
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "Bundle.entry[1].resource.gender"
    );
    assert_eq!(reply.json["entry"][4]["resource"]["total"], 1);
    assert_eq!(
        gw.search_all("Patient?identifier=9990308241").await.len(),
        1
    );
    gw.stop().await;
}

#[tokio::test]
async fn bundles_that_are_not_transactions_or_batches_are_refused() {
    let gw = start().await;
    let collection = gw.post("", &bundle("collection", vec![])).await;
    assert_eq!(collection.status, StatusCode::BAD_REQUEST);
    assert_eq!(collection.outcome_issue()["expression"][0], "Bundle.type");
    let not_bundle = gw.post("", &patient("9995181908", "X")).await;
    assert_eq!(not_bundle.status, StatusCode::BAD_REQUEST);
    let no_method = gw
        .post(
            "",
            &bundle(
                "transaction",
                vec![json!({"resource": patient("9995181908", "X")})],
            ),
        )
        .await;
    assert_eq!(no_method.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        no_method.outcome_issue()["expression"][0],
        "Bundle.entry[0].request.method"
    );
    let duplicate = gw
        .post(
            "",
            &bundle(
                "transaction",
                vec![
                    entry_post("urn:uuid:same", patient("9995181908", "X")),
                    entry_post("urn:uuid:same", patient("9992319488", "Y")),
                ],
            ),
        )
        .await;
    assert_eq!(duplicate.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        duplicate.outcome_issue()["expression"][0],
        "Bundle.entry[1].fullUrl"
    );
    let empty = gw.post("", &bundle("transaction", vec![])).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.json["type"], "transaction-response");
    gw.stop().await;
}

/// A `urn:uuid:` reference that no entry resolves would be stored pointing
/// nowhere: a transaction holding one is refused whole, naming the entry,
/// and so is a plain create carrying one.
#[tokio::test]
async fn a_placeholder_reference_no_entry_resolves_is_refused() {
    let gw = start().await;
    let tx = bundle(
        "transaction",
        vec![
            entry_post(
                "urn:uuid:6c1b6a4e-2c1e-4f1a-9d3a-0b5f0c1d2e3f",
                patient("9997574915", "Mensah"),
            ),
            entry_post(
                "urn:uuid:0a3c7c36-6d1a-4a8e-9e1b-1f4b7a9c0d11",
                encounter(
                    "urn:uuid:99999999-2c1e-4f1a-9d3a-0b5f0c1d2e3f",
                    "EMER",
                    "2026-11-20T22:10:00+00:00",
                    None,
                ),
            ),
        ],
    );
    let reply = gw.post("", &tx).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    let issue = reply.outcome_issue();
    assert_eq!(issue["expression"][0], "Bundle.entry[1]", "{}", reply.text);
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains("urn:uuid:99999999-2c1e-4f1a-9d3a-0b5f0c1d2e3f"),
        "{}",
        reply.text
    );
    assert!(gw.search_all("Patient").await.is_empty());

    let alone = gw
        .post(
            "Encounter",
            &encounter(
                "urn:uuid:6c1b6a4e-2c1e-4f1a-9d3a-0b5f0c1d2e3f",
                "EMER",
                "2026-11-20T22:10:00+00:00",
                None,
            ),
        )
        .await;
    assert_eq!(alone.status, StatusCode::BAD_REQUEST, "{}", alone.text);
    assert!(gw.search_all("Encounter").await.is_empty());
    // An identifier whose value is a urn:uuid is no reference: stored.
    let mut identified = patient("9992319488", "Okafor");
    identified["identifier"]
        .as_array_mut()
        .unwrap()
        .push(json!({"system": "urn:ietf:rfc:3986", "value": "urn:uuid:0a3c7c36-6d1a-4a8e-9e1b-1f4b7a9c0d11"}));
    let kept = gw.post("Patient", &identified).await;
    assert_eq!(kept.status, StatusCode::CREATED, "{}", kept.text);
    gw.stop().await;
}

/// A search entry that cannot run fails the transaction before anything is
/// written, not after the writes are committed.
#[tokio::test]
async fn a_transaction_with_a_search_that_cannot_run_stores_nothing() {
    let gw = start().await;
    let tx = bundle(
        "transaction",
        vec![
            entry_post(
                "urn:uuid:6c1b6a4e-2c1e-4f1a-9d3a-0b5f0c1d2e3f",
                patient("9997574915", "Mensah"),
            ),
            json!({"request": {"method": "GET", "url": "Patient?_count=many"}}),
        ],
    );
    let reply = gw.post("", &tx).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    let expressions = reply.outcome_issue()["expression"].to_string();
    assert!(
        expressions.contains("Bundle.entry[1].request.url"),
        "{}",
        reply.text
    );
    assert!(gw.search_all("Patient").await.is_empty());
    gw.stop().await;
}

/// `Prefer: return=OperationOutcome` on a transaction: each written entry's
/// response carries an OperationOutcome instead of the resource.
#[tokio::test]
async fn a_transaction_can_answer_with_outcomes() {
    let gw = start().await;
    let tx = bundle(
        "transaction",
        vec![entry_post(
            "urn:uuid:6c1b6a4e-2c1e-4f1a-9d3a-0b5f0c1d2e3f",
            patient("9997574915", "Mensah"),
        )],
    );
    let reply = gw
        .post_with("", &tx, ("prefer", "return=OperationOutcome"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let entry = &reply.json["entry"][0];
    assert!(entry.get("resource").is_none(), "{entry}");
    assert_eq!(entry["response"]["status"], "201 Created");
    let outcome = &entry["response"]["outcome"];
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{entry}");
    assert_eq!(outcome["issue"][0]["severity"], "information");
    gw.stop().await;
}
