//! The FHIR REST interface over a real socket: create, read, update, vread,
//! conditional interactions, search and paging, Prefer, and what bad input gets.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn create(gw: &Gateway, resource: &Value) -> Value {
    let ty = resource["resourceType"].as_str().unwrap();
    let reply = gw.post(ty, resource).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.json
}

#[tokio::test]
async fn create_read_update_vread_for_each_type() {
    let gw = start().await;
    let patient_id = create(&gw, &patient("9995260182", "Okafor")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let subject = format!("Patient/{patient_id}");
    for resource in [
        patient("9991590838", "Nowak"),
        encounter(&subject, "EMER", "2026-11-01T10:00:00+00:00", None),
        care_plan(&subject),
        service_request(&subject),
    ] {
        let ty = resource["resourceType"].as_str().unwrap();
        let created = gw.post(ty, &resource).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        assert_eq!(created.header("etag"), "W/\"1\"");
        let id = created.json["id"].as_str().unwrap().to_string();
        assert!(
            created
                .header("location")
                .ends_with(&format!("/fhir/{ty}/{id}/_history/1")),
            "{}",
            created.header("location")
        );
        assert!(!created.header("last-modified").is_empty());

        let read = gw.get(&format!("{ty}/{id}")).await;
        assert_eq!(read.status, StatusCode::OK);
        assert_eq!(read.json, created.json);
        assert_eq!(read.json["meta"]["versionId"], "1");

        let mut changed = read.json.clone();
        changed["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">v2</div>"});
        let updated = gw
            .put_with(&format!("{ty}/{id}"), &changed, ("if-match", "W/\"1\""))
            .await;
        assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
        assert_eq!(updated.header("etag"), "W/\"2\"");
        assert_eq!(updated.json["meta"]["versionId"], "2");

        let stale = gw
            .put_with(&format!("{ty}/{id}"), &changed, ("if-match", "W/\"1\""))
            .await;
        assert_eq!(
            stale.status,
            StatusCode::PRECONDITION_FAILED,
            "{}",
            stale.text
        );
        assert_eq!(stale.outcome_issue()["code"], "conflict");

        let v1 = gw.get(&format!("{ty}/{id}/_history/1")).await;
        assert_eq!(v1.status, StatusCode::OK);
        assert_eq!(v1.json, created.json);
        let v2 = gw.get(&format!("{ty}/{id}/_history/2")).await;
        assert_eq!(v2.json["text"]["div"], changed["text"]["div"]);
        assert_eq!(
            gw.get(&format!("{ty}/{id}/_history/3")).await.status,
            StatusCode::NOT_FOUND
        );

        let history = gw.get(&format!("{ty}/{id}/_history")).await;
        assert_eq!(history.json["type"], "history");
        assert_eq!(history.json["total"], 2);
        assert_eq!(
            history.json["entry"][0]["resource"]["meta"]["versionId"],
            "2"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn stored_resources_keep_the_values_they_were_sent_with() {
    let gw = start().await;
    // Bytes as a sender might write them: decimals of several forms, offsets,
    // an unusual member order, whitespace.
    let body = r#"{ "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/p1"},
        "extension": [{"url": "http://example.org/a", "valueDecimal": 80},
                      {"url": "http://example.org/b", "valueDecimal": 1.50},
                      {"url": "http://example.org/c", "valueDecimal": 0.000120}],
        "period": {"start": "2026-03-29T00:30:00+00:00", "end": "2026-03-29T02:30:00+01:00"},
        "length": {"value": 2.0, "unit": "h"},
        "meta": {"profile": ["http://example.org/p"], "versionId": "77"}
    }"#;
    let reply = gw
        .send(
            gw.client
                .post(gw.url("Encounter"))
                .header("content-type", "application/fhir+json")
                .body(body),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let id = reply.json["id"].as_str().unwrap();
    let read = gw.get(&format!("Encounter/{id}")).await;
    for fragment in [
        r#""valueDecimal":80}"#,
        r#""valueDecimal":1.50}"#,
        r#""valueDecimal":0.000120}"#,
        r#""start":"2026-03-29T00:30:00+00:00""#,
        r#""end":"2026-03-29T02:30:00+01:00""#,
        r#""value":2.0,"#,
        r#""profile":["http://example.org/p"]"#,
    ] {
        assert!(
            read.text.contains(fragment),
            "{fragment} not in {}",
            read.text
        );
    }
    assert_eq!(read.json["meta"]["versionId"], "1");
    gw.stop().await;
}

#[tokio::test]
async fn eight_concurrent_conditional_creates_make_one_resource() {
    let gw = start().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = gw.client.clone();
        let url = gw.url("Patient");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", format!("identifier={NHS}|9990166137"))
                .body(patient("9990166137", "Begum").to_string())
                .send()
                .await
                .unwrap()
        }));
    }
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let response = task.await.unwrap();
        let status = response.status();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status}"
        );
        if status == StatusCode::CREATED {
            created += 1;
        }
        let body: Value = response.json().await.unwrap();
        ids.insert(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    let found = gw
        .get(&format!("Patient?identifier={NHS}|9990166137"))
        .await;
    assert_eq!(found.json["total"], 1);
    gw.stop().await;
}

#[tokio::test]
async fn conditional_create_with_two_matches_is_refused() {
    let gw = start().await;
    create(&gw, &patient("9991860916", "A")).await;
    create(&gw, &patient("9991860916", "B")).await;
    let reply = gw
        .post_with(
            "Patient",
            &patient("9991860916", "C"),
            ("if-none-exist", "identifier=9991860916"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(reply.outcome_issue()["code"], "multiple-matches");
    let bad = gw
        .post_with(
            "Patient",
            &patient("9991860916", "C"),
            ("if-none-exist", "name=Smith"),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.outcome_issue()["expression"][0], "If-None-Exist");
    gw.stop().await;
}

#[tokio::test]
async fn conditional_update_by_identifier_creates_then_updates() {
    let gw = start().await;
    let path = format!("Patient?identifier={NHS}|9993909963");
    let first = gw.put(&path, &patient("9993909963", "Ali")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let id = first.json["id"].as_str().unwrap().to_string();
    let second = gw.put(&path, &patient("9993909963", "Alì")).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(second.json["id"], id.as_str());
    assert_eq!(second.json["meta"]["versionId"], "2");
    assert_eq!(second.json["name"][0]["family"], "Alì");
    // The same content again makes no new version.
    let third = gw.put(&path, &patient("9993909963", "Alì")).await;
    assert_eq!(third.status, StatusCode::OK);
    assert_eq!(third.json["meta"]["versionId"], "2");
    // A body id that is not the matched resource's is refused.
    let mut wrong = patient("9993909963", "X");
    wrong["id"] = json!("someone-else");
    assert_eq!(gw.put(&path, &wrong).await.status, StatusCode::BAD_REQUEST);
    // No match and a body id that names another resource: refused, and that
    // resource is left as it was.
    let other = gw.post("Patient", &patient("9990308241", "Other")).await;
    let other_id = other.json["id"].as_str().unwrap().to_string();
    let mut hijack = patient("9992319488", "Hijack");
    hijack["id"] = json!(other_id);
    let refused = gw
        .put(&format!("Patient?identifier={NHS}|9992319488"), &hijack)
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    let untouched = gw.get(&format!("Patient/{other_id}")).await;
    assert_eq!(untouched.json["name"][0]["family"], "Other");
    assert_eq!(untouched.json["meta"]["versionId"], "1");
    // No match and a free body id: created with it.
    let mut named = patient("9992319488", "Named");
    named["id"] = json!("named-1");
    let created = gw
        .put(&format!("Patient?identifier={NHS}|9992319488"), &named)
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.json["id"], "named-1");
    gw.stop().await;
}

#[tokio::test]
async fn update_creates_with_a_client_id_and_checks_the_body_id() {
    let gw = start().await;
    let mut p = patient("9990308241", "Kowalski");
    p["id"] = json!("ward-7-bed-3");
    let created = gw.put("Patient/ward-7-bed-3", &p).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let mismatch = gw.put("Patient/other", &p).await;
    assert_eq!(mismatch.status, StatusCode::BAD_REQUEST);
    assert_eq!(mismatch.outcome_issue()["expression"][0], "Patient.id");
    let no_id = gw
        .put("Patient/ward-7-bed-3", &patient("9990308241", "K"))
        .await;
    assert_eq!(no_id.status, StatusCode::BAD_REQUEST);
    // If-Match on a resource that does not exist.
    p["id"] = json!("nobody");
    let reply = gw
        .put_with("Patient/nobody", &p, ("if-match", "W/\"4\""))
        .await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    let garbage = gw
        .put_with("Patient/nobody", &p, ("if-match", "yesterday"))
        .await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
    gw.stop().await;
}

#[tokio::test]
async fn prefer_return_minimal_and_operation_outcome() {
    let gw = start().await;
    let minimal = gw
        .post_with(
            "Patient",
            &patient("9996281949", "M"),
            ("prefer", "return=minimal"),
        )
        .await;
    assert_eq!(minimal.status, StatusCode::CREATED);
    assert!(minimal.text.is_empty());
    assert!(minimal.header("location").contains("/_history/1"));
    let outcome = gw
        .post_with(
            "Patient",
            &patient("9998219930", "O"),
            ("prefer", "return=OperationOutcome"),
        )
        .await;
    assert_eq!(outcome.status, StatusCode::CREATED);
    assert_eq!(outcome.outcome_issue()["severity"], "information");
    gw.stop().await;
}

#[tokio::test]
async fn search_returns_exactly_the_matching_set_and_pages_through_it() {
    let gw = start().await;
    let a = create(&gw, &patient("9995181908", "A")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = create(&gw, &patient("9992319488", "B")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (pa, pb) = (format!("Patient/{a}"), format!("Patient/{b}"));
    // 23 encounters for A across two months, 5 for B.
    let mut a_november = Vec::new();
    for day in 1..=23 {
        let month = if day <= 15 { "10" } else { "11" };
        let start = format!("2026-{month}-{:02}T09:00:00Z", day);
        let e = create(
            &gw,
            &encounter(&pa, "EMER", &start, Some(&start.replace("09:00", "13:00"))),
        )
        .await;
        if month == "11" {
            a_november.push(e["id"].as_str().unwrap().to_string());
        }
    }
    for day in 1..=5 {
        create(
            &gw,
            &encounter(&pb, "IMP", &format!("2026-11-{day:02}T09:00:00Z"), None),
        )
        .await;
    }

    let all_a = gw
        .search_all(&format!("Encounter?patient={a}&_count=5"))
        .await;
    assert_eq!(all_a.len(), 23);
    let ids: std::collections::HashSet<_> =
        all_a.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 23, "every match exactly once");
    assert!(
        all_a
            .iter()
            .all(|r| r["subject"]["reference"] == pa.as_str())
    );

    let page = gw
        .get(&format!("Encounter?subject=Patient/{a}&_count=5"))
        .await;
    assert_eq!(page.json["total"], 23);
    assert_eq!(page.json["entry"].as_array().unwrap().len(), 5);

    let november = gw
        .search_all(&format!(
            "Encounter?patient=Patient/{a}&date=ge2026-11-01&date=lt2026-12-01"
        ))
        .await;
    let mut got: Vec<_> = november
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    a_november.sort();
    assert_eq!(got, a_november);

    let one_day = gw.search_all("Encounter?date=eq2026-11-16").await;
    assert_eq!(one_day.len(), 1, "only the encounter within the day");
    let on_or_after = gw
        .search_all("Encounter?date=ge2026-11-05&status=in-progress")
        .await;
    assert_eq!(
        on_or_after.len(),
        5,
        "open-ended encounters run on past the 5th"
    );
    let before = gw.search_all("Encounter?date=lt2026-10-03").await;
    assert_eq!(before.len(), 2);

    let finished = gw.search_all("Encounter?status=finished").await;
    assert_eq!(finished.len(), 23);
    let either = gw
        .search_all("Encounter?status=finished,in-progress&_count=100")
        .await;
    assert_eq!(either.len(), 28);

    let by_system = gw.search_all(&format!("Patient?identifier={NHS}|")).await;
    assert_eq!(by_system.len(), 2);
    let by_value = gw.search_all("Patient?identifier=9992319488").await;
    assert_eq!(by_value.len(), 1);
    assert_eq!(by_value[0]["id"], b.as_str());
    let wrong_system = gw
        .search_all("Patient?identifier=urn:other|9992319488")
        .await;
    assert!(wrong_system.is_empty());
    let no_system = gw.search_all("Patient?identifier=|9992319488").await;
    assert!(no_system.is_empty());
    let by_id = gw.search_all(&format!("Patient?_id={a},{b}")).await;
    assert_eq!(by_id.len(), 2);

    // A new match created while paging does not make another one repeat.
    let first = gw.get("Encounter?status=finished&_count=10").await;
    create(
        &gw,
        &encounter(
            &pa,
            "EMER",
            "2026-12-01T09:00:00Z",
            Some("2026-12-01T10:00:00Z"),
        ),
    )
    .await;
    let next = first.json["link"][1]["url"].as_str().unwrap();
    let rest = gw.get_url(next).await;
    let first_ids: std::collections::HashSet<_> = first.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].clone())
        .collect();
    for e in rest.json["entry"].as_array().unwrap() {
        assert!(!first_ids.contains(&e["resource"]["id"]));
    }
    gw.stop().await;
}

#[tokio::test]
async fn search_refuses_unknown_parameters_unless_lenient() {
    let gw = start().await;
    let strict = gw.get("Patient?family=Smith").await;
    assert_eq!(strict.status, StatusCode::BAD_REQUEST);
    assert_eq!(strict.outcome_issue()["expression"][0], "Patient?family");
    let lenient = gw
        .send(
            gw.client
                .get(gw.url("Patient?family=Smith"))
                .header("prefer", "handling=lenient"),
        )
        .await;
    assert_eq!(lenient.status, StatusCode::OK);
    let outcome = &lenient.json["entry"][0];
    assert_eq!(outcome["search"]["mode"], "outcome");
    let bad_date = gw.get("Encounter?date=ge2026-02-30").await;
    assert_eq!(bad_date.status, StatusCode::BAD_REQUEST);
    assert!(
        bad_date.outcome_issue()["diagnostics"]
            .as_str()
            .unwrap()
            .contains("2026-02-30")
    );
    let bad_count = gw.get("Patient?_count=lots").await;
    assert_eq!(bad_count.status, StatusCode::BAD_REQUEST);
    gw.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_located_operation_outcome() {
    let gw = start_with(|c| c.http.max_body_bytes = 64 * 1024).await;
    let send_raw = |body: Vec<u8>, content_type: &'static str, path: &'static str| {
        gw.client
            .post(gw.url(path))
            .header("content-type", content_type)
            .body(body)
    };

    let malformed = gw
        .send(send_raw(
            b"{\"resourceType\": \"Patient\",".to_vec(),
            "application/fhir+json",
            "Patient",
        ))
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert!(
        malformed.outcome_issue()["diagnostics"]
            .as_str()
            .unwrap()
            .contains("line 1")
    );

    let mismatch = gw
        .post(
            "Patient",
            &encounter("Patient/x", "EMER", "2026-01-01", None),
        )
        .await;
    assert_eq!(mismatch.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        mismatch.outcome_issue()["expression"][0],
        "Encounter.resourceType"
    );

    let unknown = gw
        .post("Observation", &json!({"resourceType": "Observation"}))
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    unknown.outcome_issue();

    let xml = gw
        .send(send_raw(
            b"<Patient xmlns=\"http://hl7.org/fhir\"/>".to_vec(),
            "application/fhir+xml",
            "Patient",
        ))
        .await;
    assert_eq!(xml.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    xml.outcome_issue();

    // Over the limit with a declared length: refused before it is read.
    let big = format!(
        "{{\"resourceType\":\"Patient\",\"text\":\"{}\"}}",
        "x".repeat(100 * 1024)
    );
    let too_large = gw
        .send(send_raw(
            big.clone().into_bytes(),
            "application/fhir+json",
            "Patient",
        ))
        .await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.outcome_issue()["code"], "too-long");
    // Over the limit, streamed without a length (chunked): cut off at the limit.
    let streamed = raw_chunked_post(&gw, "/fhir/Patient", big.as_bytes()).await;
    assert!(streamed.starts_with("HTTP/1.1 413"), "{streamed}");
    assert!(streamed.contains("OperationOutcome"), "{streamed}");

    let invalid = gw
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "birthDate": "1948-02-30"}),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        invalid.outcome_issue()["expression"][0],
        "Patient.birthDate"
    );

    let wrong_type = gw
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": {"family": "x"}}),
        )
        .await;
    assert_eq!(wrong_type.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong_type.outcome_issue()["expression"][0], "Patient.name");

    let not_object = gw.post("Patient", &json!([1, 2])).await;
    assert_eq!(not_object.status, StatusCode::BAD_REQUEST);

    let not_utf8 = gw
        .send(send_raw(vec![0xff, 0xfe], "application/json", "Patient"))
        .await;
    assert_eq!(not_utf8.status, StatusCode::BAD_REQUEST);

    let undecodable = gw.get("Patient/%FF").await;
    assert_eq!(undecodable.status, StatusCode::BAD_REQUEST);
    undecodable.outcome_issue();
    let many = (0..600)
        .map(|i| format!("identifier=x{i}"))
        .collect::<Vec<_>>()
        .join("&");
    let too_many = gw.get(&format!("Patient?{many}")).await;
    assert_eq!(
        too_many.status,
        StatusCode::BAD_REQUEST,
        "{}",
        too_many.text
    );
    assert_eq!(too_many.outcome_issue()["code"], "too-costly");
    let bad_id = gw.get("Patient/not%20an%20id").await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    let missing = gw.get("Patient/does-not-exist").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    missing.outcome_issue();
    let nowhere = gw.get_url(&format!("{}/nowhere", gw.root)).await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    nowhere.outcome_issue();
    let delete = gw.send(gw.client.delete(gw.url("Patient/x"))).await;
    assert_eq!(delete.status, StatusCode::METHOD_NOT_ALLOWED);
    delete.outcome_issue();
    gw.stop().await;
}

/// Sends `body` in 4 KiB chunks with no Content-Length, and returns the raw
/// response text.
async fn raw_chunked_post(gw: &Gateway, path: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = gw.root.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(4096) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and close before the whole body is sent.
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn metadata_describes_what_is_supported() {
    let gw = start().await;
    let reply = gw.get("metadata").await;
    assert_eq!(reply.status, StatusCode::OK);
    let cs = &reply.json;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    let types: Vec<_> = resources
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["Patient", "Encounter", "CarePlan", "ServiceRequest"]
    );
    let encounter = &resources[1];
    let params: Vec<_> = encounter["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["identifier", "status", "subject", "patient", "date", "_id"] {
        assert!(params.contains(&name), "{name}");
    }
    assert_eq!(encounter["conditionalCreate"], true);
    gw.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let gw = start().await;
    let health = gw.get_url(&format!("{}/healthz", gw.root)).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = gw.get_url(&format!("{}/readyz", gw.root)).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json["status"], "ready");
    gw.stop().await;
}

#[tokio::test]
async fn a_search_for_many_identifiers_pages_through_every_match_once() {
    // Alternatives are answered as a union of key lookups, and pages take
    // their ids before their bodies: regression cover for both.
    let gw = start().await;
    let numbers: Vec<String> = (0..30).map(|i| common::nhs_number(500 + i)).collect();
    for (i, n) in numbers.iter().enumerate() {
        create(&gw, &patient(n, &format!("P{i}"))).await;
    }
    create(&gw, &patient(&common::nhs_number(900), "Other")).await;
    let wanted: Vec<String> = numbers.iter().map(|n| format!("{NHS}|{n}")).collect();
    let query = format!("Patient?identifier={}&_count=7", wanted.join(","));
    let first = gw.get(&query).await;
    assert_eq!(first.json["total"], 30, "{}", first.text);
    let found = gw.search_all(&query).await;
    let ids: Vec<&str> = found.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ids.len(), 30);
    assert_eq!(ids, sorted, "pages come in id order, each match once");
    let family_names: std::collections::HashSet<&str> = found
        .iter()
        .map(|r| r["name"][0]["family"].as_str().unwrap())
        .collect();
    assert!(!family_names.contains("Other"));
    gw.stop().await;
}
