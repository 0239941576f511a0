//! The search parameters outcome tracking leans on, over HTTP:
//! `Patient?address-postalcode` (starts-with, any case and spacing),
//! `ServiceRequest?code`, `CarePlan?category`, `Encounter?class`; and a
//! store from before them gets their index rows when it is opened.

mod common;

use serde_json::{Value, json};

fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn postcode_code_category_and_class_searches() {
    let gw = common::start().await;
    let mut patient = common::patient(&common::nhs_number(1), "Postcode");
    patient["address"] = json!([{"use": "home", "postalCode": "BR1 3PT"}]);
    let p = gw.post("Patient", &patient).await.json;
    let pid = p["id"].as_str().unwrap().to_string();
    let mut other = common::patient(&common::nhs_number(2), "Elsewhere");
    other["address"] = json!([{"postalCode": "SE1 9AA"}]);
    gw.post("Patient", &other).await;
    for (query, found) in [
        ("address-postalcode=BR1%203PT", true),
        ("address-postalcode=br13pt", true),
        ("address-postalcode=BR1", true),
        ("address-postalcode=BR2", false),
        ("address-postalcode=SE1,BR1", true),
    ] {
        let reply = gw.get(&format!("Patient?{query}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(ids(&reply.json).contains(&pid), found, "{query}");
    }
    assert_eq!(
        ids(&gw.get("Patient?address-postalcode=SE1,BR1").await.json).len(),
        2
    );
    let blank = gw.get("Patient?address-postalcode=%20").await;
    assert_eq!(blank.status, 400, "{}", blank.text);

    let sr = gw
        .post(
            "ServiceRequest",
            &common::service_request(&format!("Patient/{pid}")),
        )
        .await;
    let system = "https://fhir.onebromley.nhs.uk/CodeSystem/pathway-referral";
    let hits = gw
        .get(&format!(
            "ServiceRequest?code={system}|proactive-care-assessment"
        ))
        .await;
    assert_eq!(ids(&hits.json), [sr.json["id"].as_str().unwrap()]);
    assert!(
        ids(&gw
            .get("ServiceRequest?code=at-home-admission-avoidance")
            .await
            .json)
        .is_empty()
    );

    let plan = gw
        .post("CarePlan", &common::care_plan(&format!("Patient/{pid}")))
        .await;
    let hits = gw.get("CarePlan?category=proactive-care").await;
    assert_eq!(ids(&hits.json), [plan.json["id"].as_str().unwrap()]);

    let ed = gw
        .post(
            "Encounter",
            &common::encounter(&format!("Patient/{pid}"), "EMER", "2026-01-05", None),
        )
        .await;
    gw.post(
        "Encounter",
        &common::encounter(&format!("Patient/{pid}"), "IMP", "2026-01-06", None),
    )
    .await;
    let hits = gw
        .get("Encounter?class=http://terminology.hl7.org/CodeSystem/v3-ActCode|EMER")
        .await;
    assert_eq!(ids(&hits.json), [ed.json["id"].as_str().unwrap()]);

    let metadata = gw.get("metadata").await.json;
    let params = |ty: &str| -> Vec<(String, String)> {
        metadata["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == ty)
            .unwrap()["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().into(),
                    p["type"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    assert!(params("Patient").contains(&("address-postalcode".into(), "string".into())));
    assert!(params("ServiceRequest").contains(&("code".into(), "token".into())));
    assert!(params("Encounter").contains(&("class".into(), "token".into())));
    gw.stop().await;
}

#[tokio::test]
async fn a_store_from_before_the_new_parameters_is_indexed_for_them_when_opened() {
    let gw = common::start().await;
    let mut patient = common::patient(&common::nhs_number(3), "Upgrade");
    patient["address"] = json!([{"postalCode": "BR6 7CC"}]);
    let pid = gw.post("Patient", &patient).await.json["id"]
        .as_str()
        .unwrap()
        .to_string();
    let data = gw.data.clone();
    // Keep the directory: stop the gateway, then make the store look like
    // schema 4, which had no index rows for these parameters.
    let keep = tempfile::tempdir().unwrap();
    let copy = keep.path().join("data");
    gw.stop_keeping(&data, &copy).await;
    let db = rusqlite::Connection::open(copy.join("gateway.sqlite")).unwrap();
    common::make_schema_5(&db);
    db.execute(
        "DELETE FROM idx_token WHERE param = 'address-postalcode'",
        [],
    )
    .unwrap();
    db.pragma_update(None, "user_version", 4).unwrap();
    drop(db);

    let again = common::start_with(|c| c.store.dir = copy.clone()).await;
    let hits = again.get("Patient?address-postalcode=BR6").await;
    assert_eq!(ids(&hits.json), [pid]);
    again.stop().await;
}
