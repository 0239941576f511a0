//! `POST /ingest/gp-risk-list` over a real socket: idempotent re-sends, one
//! Patient across practices, bad rows reported and quarantined while good
//! rows are stored, atomic lists, replay after a fix, and clear 4xx for
//! garbage.

mod common;

use common::{Gateway, nhs_number};
use pathway_gateway::validate::profile::EMBEDDED;
use serde_json::Value;

fn list(rows: &[(&str, &str, &str, &str)]) -> String {
    let mut text = String::from("NHS Number,Surname,Forename(s),Date of Birth,Sex,eFI Score\r\n");
    for (nhs, family, dob, score) in rows {
        text.push_str(&format!("{nhs},{family},Ann,{dob},F,{score}\r\n"));
    }
    text
}

async fn upload(gw: &Gateway, practice: &str, body: &str, extra: &str) -> common::Reply {
    gw.send(
        gw.client
            .post(format!(
                "{}/ingest/gp-risk-list?practice={practice}{extra}",
                gw.root
            ))
            .header("content-type", "text/csv")
            .body(body.to_string()),
    )
    .await
}

async fn total(gw: &Gateway, query: &str) -> u64 {
    gw.get(query).await.json["total"].as_u64().unwrap()
}

#[tokio::test]
async fn resending_a_list_changes_nothing_and_two_practices_share_one_patient() {
    let gw = common::start().await;
    let (a, b) = (nhs_number(11), nhs_number(12));
    let body = list(&[
        (&a, "Smith", "05-Mar-1938", "0.36"),
        (&b, "Jones", "12-Jan-1941", "0.22"),
    ]);
    let first = upload(&gw, "G84001", &body, "").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json["patients_created"], 2);
    assert_eq!(first.json["referrals_created"], 1);

    let again = upload(&gw, "G84001", &body, "").await;
    assert_eq!(again.json["accepted"], 2, "{}", again.text);
    for counter in ["patients_created", "patients_updated", "referrals_created"] {
        assert_eq!(again.json[counter], 0, "{counter}: {}", again.text);
    }
    assert_eq!(total(&gw, "Patient?_count=0").await, 2);
    assert_eq!(total(&gw, "ServiceRequest?_count=0").await, 1);
    assert_eq!(total(&gw, "CarePlan?_count=0").await, 1);

    // A later list without the at-risk patient: reported, nothing changed.
    let later = upload(
        &gw,
        "G84001",
        &list(&[(&b, "Jones", "12-Jan-1941", "0.22")]),
        "",
    )
    .await;
    assert_eq!(
        later.json["not_in_list"],
        serde_json::json!([a]),
        "{}",
        later.text
    );
    assert_eq!(total(&gw, "ServiceRequest?status=active&_count=0").await, 1);

    // The patient moves practice: the same Patient, now registered there.
    let moved = upload(
        &gw,
        "G84002",
        &list(&[(&a, "Smith", "05-Mar-1938", "0.36")]),
        "",
    )
    .await;
    assert_eq!(moved.json["patients_created"], 0, "{}", moved.text);
    assert_eq!(moved.json["patients_updated"], 1);
    assert_eq!(moved.json["referrals_created"], 0, "already on the pathway");
    let found = gw
        .get(&format!(
            "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{a}"
        ))
        .await;
    assert_eq!(found.json["total"], 1);
    assert_eq!(
        found.json["entry"][0]["resource"]["generalPractitioner"][0]["identifier"]["value"],
        "G84002"
    );
    // The referral points at that patient; the care plan at the referral.
    let referral = &gw.get("ServiceRequest").await.json["entry"][0]["resource"];
    let patient_id = found.json["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(
        referral["subject"]["reference"],
        format!("Patient/{patient_id}")
    );
    let plan = &gw.get("CarePlan").await.json["entry"][0]["resource"];
    assert_eq!(
        plan["activity"][0]["reference"]["reference"],
        format!("ServiceRequest/{}", referral["id"].as_str().unwrap())
    );
    gw.stop().await;
}

#[tokio::test]
async fn bad_rows_are_reported_and_quarantined_while_good_rows_are_stored() {
    let gw = common::start().await;
    let good = nhs_number(21);
    let body = list(&[
        (&good, "Smith", "05-Mar-1938", "0.40"),
        ("9434765918", "Bad", "05-Mar-1938", "0.40"),
        (&nhs_number(22), "Later", "30-Feb-1940", "0.40"),
        ("", "Nobody", "01-Jan-1940", "0.10"),
    ]);
    let reply = upload(&gw, "G84001", &body, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["rows"], 4);
    assert_eq!(reply.json["accepted"], 1);
    assert_eq!(reply.json["rejected"], 3);
    let errors: Vec<(u64, String)> = reply.json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap(),
                e["column"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            (3, "NHS Number".to_string()),
            (4, "Date of Birth".to_string()),
            (5, "NHS Number".to_string())
        ]
    );
    assert_eq!(total(&gw, "Patient?_count=0").await, 1);

    let held = gw.get_url(&format!("{}/quarantine", gw.root)).await;
    let entries = held.json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{}", held.text);
    assert_eq!(entries[0]["location"], "line 3");
    assert_eq!(
        entries[0]["payload"]["row"],
        "9434765918,Bad,Ann,05-Mar-1938,F,0.40"
    );
    assert!(
        entries[0]["reasons"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("Modulus 11")
    );
    // Replaying a row that is still wrong keeps it held, with its reasons.
    let id = entries[0]["id"].as_i64().unwrap();
    let replay = gw
        .send(
            gw.client
                .post(format!("{}/quarantine/{id}/replay", gw.root)),
        )
        .await;
    assert_eq!(replay.status, 422, "{}", replay.text);
    assert_eq!(replay.json["status"], "held");
    // The practice sends the list again, a new row first (the bad ones a
    // line further down): the rows still held keep their entries.
    let first_ids = reply.json["quarantined"].clone();
    let again = list(&[
        (&nhs_number(23), "New", "05-Mar-1938", "0.40"),
        (&good, "Smith", "05-Mar-1938", "0.40"),
        ("9434765918", "Bad", "05-Mar-1938", "0.40"),
        (&nhs_number(22), "Later", "30-Feb-1940", "0.40"),
        ("", "Nobody", "01-Jan-1940", "0.10"),
    ]);
    let resent = upload(&gw, "G84001", &again, "").await;
    assert_eq!(resent.status, 200, "{}", resent.text);
    assert_eq!(resent.json["rejected"], 3);
    assert_eq!(resent.json["quarantined"], first_ids, "{}", resent.text);
    let held = gw.get_url(&format!("{}/quarantine", gw.root)).await;
    assert_eq!(
        held.json["entries"].as_array().unwrap().len(),
        3,
        "{}",
        held.text
    );
    // A new bad row twice in one list: held once.
    let twice = list(&[
        ("9434765911", "Twice", "05-Mar-1938", "0.40"),
        ("9434765911", "Twice", "05-Mar-1938", "0.40"),
    ]);
    let doubled = upload(&gw, "G84001", &twice, "").await;
    let ids = doubled.json["quarantined"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 2, "{}", doubled.text);
    assert_eq!(ids[0], ids[1], "{}", doubled.text);
    let held = gw.get_url(&format!("{}/quarantine", gw.root)).await;
    assert_eq!(
        held.json["entries"].as_array().unwrap().len(),
        4,
        "{}",
        held.text
    );
    // Another practice's same row is its own.
    let other = upload(&gw, "G84002", &body, "").await;
    assert_eq!(other.json["quarantined"].as_array().unwrap().len(), 3);
    assert_ne!(other.json["quarantined"], first_ids);
    gw.stop().await;
}

#[tokio::test]
async fn an_atomic_list_with_a_bad_row_stores_nothing() {
    let gw = common::start().await;
    let body = list(&[
        (&nhs_number(31), "Smith", "05-Mar-1938", "0.40"),
        ("123", "Bad", "05-Mar-1938", "0.40"),
    ]);
    let reply = upload(&gw, "G84001", &body, "&atomic=true").await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.json["stored"], false);
    assert_eq!(reply.json["accepted"], 0);
    assert_eq!(reply.json["errors"][0]["row"], 3);
    assert_eq!(total(&gw, "Patient?_count=0").await, 0);
    let fixed = list(&[(&nhs_number(31), "Smith", "05-Mar-1938", "0.40")]);
    let reply = upload(&gw, "G84001", &fixed, "&atomic=true").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["patients_created"], 1);
    assert_eq!(reply.json["referrals_created"], 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_row_refused_by_a_stricter_profile_is_replayed_after_the_fix() {
    // A deployment whose Patient profile (wrongly) demands a telephone number.
    let profiles = tempfile::tempdir().unwrap();
    for (name, text) in EMBEDDED {
        let mut value: Value = serde_json::from_str(text).unwrap();
        if *name == "StructureDefinition-OneBromley-Patient.json" {
            value["differential"]["element"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"id": "Patient.telecom", "path": "Patient.telecom", "min": 1}));
        }
        std::fs::write(profiles.path().join(name), value.to_string()).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_path_buf();
    let strict_dir = profiles.path().to_path_buf();
    let strict = common::start_with(|config| {
        config.store.dir = data_dir.clone();
        config.validator = std::sync::Arc::new(
            pathway_gateway::validate::Validator::load(
                Some(&strict_dir),
                &pathway_gateway::validate::profile::ONE_BROMLEY_PROFILES.map(str::to_string),
            )
            .unwrap(),
        );
    })
    .await;
    let nhs = nhs_number(41);
    let reply = upload(
        &strict,
        "G84001",
        &list(&[(&nhs, "Smith", "05-Mar-1938", "0.40")]),
        "",
    )
    .await;
    assert_eq!(reply.json["rejected"], 1, "{}", reply.text);
    assert_eq!(reply.json["errors"][0]["row"], 2);
    assert!(
        reply.json["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("Patient.telecom")
    );
    let id = reply.json["quarantined"][0].as_i64().unwrap();
    strict.stop().await;

    // The profile is fixed (the default again): the held row goes in.
    let data_dir = data.path().to_path_buf();
    let fixed = common::start_with(|config| config.store.dir = data_dir.clone()).await;
    // Two replays at once: one goes in, the other finds it replayed (the
    // mark is in the commit that stores the row).
    let post = || {
        fixed.send(
            fixed
                .client
                .post(format!("{}/quarantine/{id}/replay", fixed.root)),
        )
    };
    let (first, second) = tokio::join!(post(), post());
    let (replay, other) = if first.status == 200 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(replay.status, 200, "{}", replay.text);
    assert_eq!(other.status, 409, "{}", other.text);
    assert_eq!(replay.json["report"]["patients_created"], 1);
    assert_eq!(replay.json["report"]["referrals_created"], 1);
    assert_eq!(total(&fixed, "Patient?_count=0").await, 1);
    let held = fixed.get_url(&format!("{}/quarantine", fixed.root)).await;
    assert_eq!(held.json["entries"].as_array().unwrap().len(), 0);
    let again = fixed
        .send(
            fixed
                .client
                .post(format!("{}/quarantine/{id}/replay", fixed.root)),
        )
        .await;
    assert_eq!(again.status, 409);
    fixed.stop().await;
}

#[tokio::test]
async fn garbage_and_wrong_media_types_get_a_clear_4xx() {
    let gw = common::start_with(|config| config.gp_lists.max_bytes = 2048).await;
    let garbage = gw
        .send(
            gw.client
                .post(format!("{}/ingest/gp-risk-list?practice=G84001", gw.root))
                .header("content-type", "text/csv")
                .body(vec![0u8, 0xff, 0xfe, 0x13, 0x37, b'\n', b'"', 0x80]),
        )
        .await;
    assert_eq!(garbage.status, 422, "{}", garbage.text);
    assert_eq!(garbage.json["resourceType"], "OperationOutcome");
    let json = gw
        .send(
            gw.client
                .post(format!("{}/ingest/gp-risk-list?practice=G84001", gw.root))
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    assert_eq!(json.status, 415);
    let big = upload(&gw, "G84001", &"x".repeat(4096), "").await;
    assert_eq!(big.status, 413);
    let no_practice = gw
        .send(
            gw.client
                .post(format!("{}/ingest/gp-risk-list", gw.root))
                .header("content-type", "text/csv")
                .body(list(&[])),
        )
        .await;
    assert_eq!(no_practice.status, 400);
    let bad_format = upload(&gw, "G84001", &list(&[]), "&format=vision").await;
    assert_eq!(bad_format.status, 400);
    gw.stop().await;
}

/// Patients created over FHIR REST while a list naming them is planned and
/// written: a row whose patient appeared meanwhile is planned again on top
/// of it, so every patient ends up registered with the sending practice
/// (the row's facts merged), never left as the REST client made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_whose_patients_are_created_meanwhile_are_merged_into_them() {
    race_a_list("", 30_000).await;
}

/// The same in an atomic list: stored whole, then the raced rows merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_lists_rows_whose_patients_are_created_meanwhile_are_merged_too() {
    race_a_list("&atomic=true", 31_000).await;
}

/// Uploads a list of 600 new patients (NHS numbers from `first`) while
/// creating the same patients over FHIR REST, then checks every patient.
async fn race_a_list(extra: &str, first: u32) {
    let gw = common::start().await;
    const ROWS: u32 = 600;
    let numbers: Vec<String> = (0..ROWS).map(|i| nhs_number(first + i)).collect();
    let rows: Vec<(&str, &str, &str, &str)> = numbers
        .iter()
        .map(|n| (n.as_str(), "Race", "05-Mar-1938", "0.12"))
        .collect();
    let body = list(&rows);
    let creates = {
        let (client, fhir, numbers) = (gw.client.clone(), gw.fhir.clone(), numbers.clone());
        tokio::spawn(async move {
            for chunk in numbers.chunks(8) {
                let mut sent = Vec::new();
                for n in chunk {
                    sent.push(
                        client
                            .post(format!("{fhir}/Patient"))
                            .header("content-type", "application/fhir+json")
                            .header(
                                "if-none-exist",
                                format!("identifier=https://fhir.nhs.uk/Id/nhs-number|{n}"),
                            )
                            .body(common::patient(n, "Race").to_string())
                            .send(),
                    );
                }
                for reply in futures_util::future::join_all(sent).await {
                    assert!(reply.unwrap().status().is_success());
                }
            }
        })
    };
    let uploaded = upload(&gw, "G84001", &body, extra).await;
    creates.await.unwrap();
    assert_eq!(uploaded.status, 200, "{}", uploaded.text);
    assert_eq!(uploaded.json["accepted"], ROWS, "{}", uploaded.text);
    for n in &numbers {
        let found = gw
            .get(&format!(
                "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{n}"
            ))
            .await;
        assert_eq!(found.json["total"], 1, "{n}");
        assert_eq!(
            found.json["entry"][0]["resource"]["generalPractitioner"][0]["identifier"]["value"],
            "G84001",
            "patient {n} was not merged with its row: {}",
            found.json["entry"][0]["resource"]
        );
    }
    gw.stop().await;
}

/// Cells a list can hold that used to be misread: an eFI score as a
/// percentage, a birth date in the future, a postcode with a character no
/// postcode has (which used to panic the reader: a 500).
#[tokio::test]
async fn percentages_future_dates_and_odd_postcodes_are_read_or_refused_by_row() {
    let gw = common::start().await;
    let (a, b, c) = (nhs_number(41), nhs_number(42), nhs_number(43));
    let body = format!(
        "NHS Number,Surname,Date of Birth,Postcode,eFI Score\r\n\
         {a},Smith,05-Mar-1938,br1 3pt,36%\r\n\
         {b},Jones,05-Mar-2938,BR1 3PT,0.12\r\n\
         {c},Brown,05-Mar-1938,BR1 £PT,0.12\r\n"
    );
    let reply = upload(&gw, "G84001", &body, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["accepted"], 1, "{}", reply.text);
    assert_eq!(
        reply.json["referrals_created"], 1,
        "36% is severe: {}",
        reply.text
    );
    let errors = reply.json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{}", reply.text);
    assert_eq!(
        (errors[0]["row"].as_u64(), errors[0]["column"].as_str()),
        (Some(3), Some("Date of Birth"))
    );
    assert!(errors[0]["reason"].as_str().unwrap().contains("future"));
    assert_eq!(
        (errors[1]["row"].as_u64(), errors[1]["column"].as_str()),
        (Some(4), Some("Postcode"))
    );
    let stored = gw
        .get(&format!(
            "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{a}"
        ))
        .await;
    assert_eq!(
        stored.json["entry"][0]["resource"]["address"][0]["postalCode"],
        "BR1 3PT"
    );
    gw.stop().await;
}

/// A quote opened and never closed used to swallow the rest of the list
/// into one field of an accepted row: now that row is refused, saying
/// where the quote opened, and nothing of it is stored.
#[tokio::test]
async fn a_quote_never_closed_is_reported_not_read_to_the_end() {
    let gw = common::start().await;
    let (a, b, c) = (nhs_number(51), nhs_number(52), nhs_number(53));
    let body = format!(
        "NHS Number,Surname,Forename(s),Date of Birth\r\n\
         {c},Green,\"Ann \"\"Nan\"\" Marie\",02-Feb-1940\r\n\
         {a},Smith,\"Ann,05-Mar-1938\r\n\
         {b},Jones,Bob,01-Jan-1940\r\n"
    );
    let reply = upload(&gw, "G84001", &body, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["accepted"], 1, "{}", reply.text);
    let errors = reply.json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{}", reply.text);
    assert_eq!(errors[0]["row"], 3, "{}", reply.text);
    assert!(
        errors[0]["reason"]
            .as_str()
            .unwrap()
            .contains("never closed"),
        "{}",
        reply.text
    );
    assert_eq!(total(&gw, "Patient?_count=0").await, 1);
    gw.stop().await;
}

/// An atomic list naming one patient twice is refused with the rows named,
/// not with the store's "entry 0".
#[tokio::test]
async fn an_atomic_list_naming_a_patient_twice_names_both_rows() {
    let gw = common::start().await;
    let a = nhs_number(61);
    let body = list(&[
        (&a, "Smith", "05-Mar-1938", "0.40"),
        (&nhs_number(62), "Jones", "12-Jan-1941", "0.10"),
        (&a, "Smith", "05-Mar-1938", "0.41"),
    ]);
    let reply = upload(&gw, "G84001", &body, "&atomic=true").await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert_eq!(reply.json["stored"], false);
    let errors = reply.json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{}", reply.text);
    assert_eq!(errors[0]["row"], 4);
    assert_eq!(errors[0]["column"], "NHS Number");
    assert!(
        errors[0]["reason"]
            .as_str()
            .unwrap()
            .contains("also on row 2"),
        "{}",
        reply.text
    );
    assert_eq!(total(&gw, "Patient?_count=0").await, 0);
    gw.stop().await;
}

/// Excel's "CSV (Macintosh)" ends lines with a lone CR: rows are still
/// numbered by their line.
#[tokio::test]
async fn rows_of_a_file_with_carriage_returns_alone_are_numbered_by_line() {
    let gw = common::start().await;
    let body = format!(
        "NHS Number,Surname,Date of Birth\r{},Smith,05-Mar-1938\r{},Jones,31-Sep-1944\r",
        nhs_number(71),
        nhs_number(72)
    );
    let reply = upload(&gw, "G84001", &body, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["accepted"], 1, "{}", reply.text);
    assert_eq!(reply.json["errors"][0]["row"], 3, "{}", reply.text);
    gw.stop().await;
}

#[tokio::test]
async fn a_quarantined_row_is_replayed_with_the_format_its_list_was_read_as() {
    // A SystmOne export, its format found from the header (none given).
    let gw = common::start().await;
    let body = format!(
        "Patient reference no.,NHS number,Given name,Surname,Date of birth,Gender,Postcode,eFI category\r\n\
         100231,{},Ann,Dupont,05/03/1938,Female,BR1 4DD,Severe\r\n\
         100233,{},Ann,Smith,30/02/1939,Female,BR3 1AB,Severe\r\n",
        nhs_number(41),
        nhs_number(42)
    );
    let reply = upload(&gw, "G84001", &body, "").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["format"], "systmone", "{}", reply.text);
    assert_eq!(reply.json["rejected"], 1, "{}", reply.text);
    let held = gw.get_url(&format!("{}/quarantine", gw.root)).await;
    let entry = &held.json["entries"][0];
    assert_eq!(entry["payload"]["format"], "systmone", "{entry}");
    // Replayed, it is read as SystmOne again and fails for the same reason.
    let id = entry["id"].as_i64().unwrap();
    let replay = gw
        .send(
            gw.client
                .post(format!("{}/quarantine/{id}/replay", gw.root)),
        )
        .await;
    assert_eq!(replay.status, 422, "{}", replay.text);
    assert_eq!(
        replay.json["errors"][0]["column"], "Date of birth",
        "{}",
        replay.text
    );
    gw.stop().await;
}
