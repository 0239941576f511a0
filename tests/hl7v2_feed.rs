//! The HL7 v2 ADT feed as a trust's engine uses it: real MLLP connections
//! to a running gateway, the ACK read back, and the Patient and Encounter
//! state read over FHIR REST.

mod common;

use common::{Gateway, nhs_number, start, start_with};
use pathway_gateway::hl7v2::client::MllpClient;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(10);

/// An ADT message; `pid3` is PID-3 as sent, `pv1` the PV1 fields after PV1-1.
fn adt(event: &str, control_id: &str, when: &str, pid3: &str, pv1: Option<&str>) -> String {
    let mut m = format!(
        "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|{when}||ADT^{event}|{control_id}|P|2.4\rEVN|{event}|{when}\rPID|1||{pid3}||PAGE^Margaret^^^MRS||19380305|F\r"
    );
    if let Some(pv1) = pv1 {
        m.push_str(&format!("PV1|1|{pv1}\r"));
    }
    m
}

/// An A40 merging the record with hospital number `merged` (MRG-1) into
/// the one `pid3` names.
fn a40(control_id: &str, when: &str, pid3: &str, merged: &str) -> String {
    format!("{}MRG|{merged}\r", adt("A40", control_id, when, pid3, None))
}

/// PV1 from PV1-2 on: class, location, admission type, visit, admit and discharge times.
fn pv1(class: &str, visit: &str, admitted: &str, discharged: &str) -> String {
    format!(
        "{class}|WARD 5^^^RJZ30|21|||||||||||||||{visit}^^^RJZ^VN|||||||||||||||||||||||||{admitted}|{discharged}"
    )
}

/// MSA-1 and, if any, ERR-2 of an ACK.
fn ack_code(ack: &[u8]) -> (String, String, String) {
    let text = String::from_utf8_lossy(ack);
    let field = |segment: &str, n: usize| {
        text.split('\r')
            .find(|s| s.starts_with(segment))
            .and_then(|s| s.split('|').nth(n))
            .unwrap_or("")
            .to_string()
    };
    (field("MSA", 1), field("MSA", 2), field("ERR", 2))
}

/// `POST /ingest/hl7v2` with `body`, as ER7.
fn post_hl7v2(gw: &Gateway, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
    gw.client
        .post(format!("{}/ingest/hl7v2", gw.root))
        .header("content-type", "x-application/hl7-v2+er7")
        .body(body)
}

async fn send(client: &mut MllpClient, message: &str) -> (String, String, String) {
    ack_code(&client.send(message.as_bytes()).await.expect("ACK"))
}

async fn encounter(gw: &Gateway, visit: &str) -> Value {
    let found = gw
        .search_all(&format!("Encounter?identifier={visit}"))
        .await;
    assert_eq!(found.len(), 1, "encounters with visit {visit}: {found:#?}");
    found[0].clone()
}

async fn patients(gw: &Gateway, identifier: &str) -> Vec<Value> {
    gw.search_all(&format!("Patient?identifier={identifier}"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptance_scenarios_over_mllp() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let nhs = nhs_number(700);

    // NHS number in the second PID-3 repetition, BST admission time.
    let a01 = adt(
        "A01",
        "M1",
        "202607141018",
        &format!("K100^^^RJZ^MR~{nhs}^^^NHS^NH"),
        Some(&pv1("I", "V1", "202607141015", "")),
    );
    assert_eq!(send(&mut c, &a01).await.0, "AA");
    let found = patients(&gw, &nhs).await;
    assert_eq!(found.len(), 1);
    let ids: Vec<&str> = found[0]["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [nhs.as_str(), "K100"]);
    let e = encounter(&gw, "V1").await;
    assert_eq!(e["status"], "in-progress");
    assert_eq!(e["period"]["start"], "2026-07-14T10:15:00+01:00");
    assert_eq!(e["class"]["code"], "IMP");
    assert_eq!(e["priority"]["coding"][0]["code"], "EM");

    // The same message again: AA, and nothing changes.
    let before = e["meta"]["versionId"].clone();
    assert_eq!(send(&mut c, &a01).await.0, "AA");
    assert_eq!(encounter(&gw, "V1").await["meta"]["versionId"], before);
    assert_eq!(patients(&gw, &nhs).await[0]["meta"]["versionId"], "1");

    // GMT: a January admission has +00:00.
    let winter = adt(
        "A01",
        "M2",
        "202601101018",
        &format!("{nhs}^^^NHS^NH"),
        Some(&pv1("I", "V2", "202601101015", "")),
    );
    assert_eq!(send(&mut c, &winter).await.0, "AA");
    assert_eq!(
        encounter(&gw, "V2").await["period"]["start"],
        "2026-01-10T10:15:00+00:00"
    );

    // `\T\` in an address, segments ended by `\n`.
    let other = nhs_number(701);
    let a28 = format!(
        "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|202602020900||ADT^A28|M3|P|2.4\nEVN|A28|202602020900\nPID|1||{other}^^^NHS^NH||HALL^Dennis||19410722|M|||Flat 3\\T\\4 Elm Court^^Orpington^^BR6 0AB\n"
    );
    assert_eq!(send(&mut c, &a28).await.0, "AA");
    let hall = &patients(&gw, &other).await[0];
    assert_eq!(hall["address"][0]["line"][0], "Flat 3&4 Elm Court");

    // A03 before A01 (event times say A01 came first): stays finished.
    let a03 = adt(
        "A03",
        "M5",
        "202608050855",
        &format!("{nhs}^^^NHS^NH"),
        Some(&pv1("I", "V3", "202608010700", "202608050850")),
    );
    let late_a01 = adt(
        "A01",
        "M4",
        "202608010702",
        &format!("{nhs}^^^NHS^NH"),
        Some(&pv1("I", "V3", "202608010700", "")),
    );
    assert_eq!(send(&mut c, &a03).await.0, "AA");
    assert_eq!(send(&mut c, &late_a01).await.0, "AA");
    let e = encounter(&gw, "V3").await;
    assert_eq!(e["status"], "finished");
    assert_eq!(e["period"]["end"], "2026-08-05T08:50:00+01:00");
    assert_eq!(e["statusHistory"].as_array().unwrap().len(), 2);

    // A01 then A11: cancelled.
    let v4 = pv1("I", "V4", "202605020800", "");
    let nh = format!("{nhs}^^^NHS^NH");
    assert_eq!(
        send(&mut c, &adt("A01", "M6", "202605020805", &nh, Some(&v4)))
            .await
            .0,
        "AA"
    );
    assert_eq!(
        send(&mut c, &adt("A11", "M7", "202605020840", &nh, Some(&v4)))
            .await
            .0,
        "AA"
    );
    assert_eq!(encounter(&gw, "V4").await["status"], "cancelled");

    // An untraced ED attendance, then A40 merges it into the traced record.
    let ed = pv1("E", "E9", "202610251150", "");
    assert_eq!(
        send(
            &mut c,
            &adt("A04", "M8", "202610251158", "U77^^^RJZ^MR", Some(&ed))
        )
        .await
        .0,
        "AA"
    );
    let untraced = patients(&gw, "U77").await;
    assert_eq!(untraced.len(), 1);
    let a40 = a40(
        "M9",
        "202610251400",
        &format!("{nhs}^^^NHS^NH"),
        "U77^^^RJZ^MR",
    );
    assert_eq!(send(&mut c, &a40).await.0, "AA");
    let old = gw
        .get(&format!("Patient/{}", untraced[0]["id"].as_str().unwrap()))
        .await;
    assert_eq!(old.json["active"], false);
    assert_eq!(old.json["link"][0]["type"], "replaced-by");
    let survivor = &patients(&gw, &nhs).await[0];
    assert_eq!(
        old.json["link"][0]["other"]["reference"],
        format!("Patient/{}", survivor["id"].as_str().unwrap())
    );
    assert_eq!(
        encounter(&gw, "E9").await["subject"]["reference"],
        format!("Patient/{}", survivor["id"].as_str().unwrap())
    );

    // An ORU^R01: AR, nothing stored.
    let oru = "MSH|^~\\&|LAB|RJZ|PATHWAY|ONEBROMLEY|202607141020||ORU^R01|M10|P|2.4\rPID|1||9990000018^^^NHS^NH\rOBX|1|NM|HB||135|g/L\r";
    let (code, control, err) = send(&mut c, oru).await;
    assert_eq!((code.as_str(), control.as_str()), ("AR", "M10"));
    assert_eq!(err, "MSH^1^9^1^1");
    assert!(patients(&gw, "9990000018").await.is_empty());

    // A message whose MSH reads but whose body does not (a raw line break
    // in a note): AR, naming the message it answers and where it broke.
    let broken = "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|202607141020||ADT^A08|M13|T|2.4\rEVN|A08|202607141020\rNTE|1||see\nthe notes\r";
    let ack = c.send(broken.as_bytes()).await.unwrap();
    let text = String::from_utf8_lossy(&ack);
    let (code, control, _) = ack_code(&ack);
    assert_eq!((code.as_str(), control.as_str()), ("AR", "M13"), "{text}");
    assert!(text.contains("invalid segment id"), "{text}");
    assert!(
        text.starts_with("MSH|^~\\&|PATHWAY|ONEBROMLEY|PAS|RJZ|"),
        "{text}"
    );
    assert!(
        text.contains("|T|2.4"),
        "the sender's processing id: {text}"
    );

    // An invalid NHS number: AE located at PID-3[2].1, held in quarantine.
    let bad = adt(
        "A01",
        "M11",
        "202607141018",
        "K200^^^RJZ^MR~9990000019^^^NHS^NH",
        Some(&pv1("I", "V11", "202607141015", "")),
    );
    let (code, _, err) = send(&mut c, &bad).await;
    assert_eq!((code.as_str(), err.as_str()), ("AE", "PID^1^3^2^1"));
    let held = gw
        .send(gw.client.get(format!("{}/quarantine", gw.root)))
        .await;
    let entries = held.json["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["location"] == "MSH-10 M11" && e["reasons"][0]["location"] == "PID-3[2].1"),
        "{}",
        held.text
    );
    assert!(patients(&gw, "K200").await.is_empty());

    // Garbage bytes before a frame: AR for the garbage, AA for the message.
    let mut raw = tokio::net::TcpStream::connect(gw.mllp).await.unwrap();
    let ok = adt(
        "A08",
        "M12",
        "202607141100",
        &format!("{nhs}^^^NHS^NH"),
        Some(&pv1("I", "V1", "202607141015", "")),
    );
    let mut bytes = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    bytes.extend(pathway_gateway::hl7v2::frame(ok.as_bytes()));
    raw.write_all(&bytes).await.unwrap();
    let acks = read_acks(&mut raw, 2).await;
    assert_eq!(ack_code(&acks[0]).0, "AR");
    assert_eq!(ack_code(&acks[1]).0, "AA");
    assert_eq!(encounter(&gw, "V1").await["status"], "in-progress");

    // Padding between frames gets no answer of its own (which a sender
    // would take for its next message's), and a frame whose end block has
    // no CR after it is answered without waiting for one.
    let padded = ok.replace("M12", "M12P");
    let mut bytes = b"\r\n \0".to_vec();
    bytes.extend(pathway_gateway::hl7v2::frame(padded.as_bytes()));
    bytes.extend(b"\n\t\x0B");
    bytes.extend(ok.replace("M12", "M12Q").as_bytes());
    bytes.push(0x1C);
    raw.write_all(&bytes).await.unwrap();
    let acks = read_acks(&mut raw, 2).await;
    let (codes, controls): (Vec<String>, Vec<String>) = acks
        .iter()
        .map(|a| {
            let (code, control, _) = ack_code(a);
            (code, control)
        })
        .unzip();
    assert_eq!(
        (codes, controls),
        (
            vec!["AA".to_string(), "AA".to_string()],
            vec!["M12P".to_string(), "M12Q".to_string()]
        )
    );

    // A message that cannot be read, after a blank line: its AR still
    // names it (MSA-2) from its MSH, and where it failed.
    let unreadable = format!("\r\n{}\rP?D|1\r", ok.replace("M12", "M13"));
    let reply = c.send(unreadable.as_bytes()).await.expect("ACK");
    let (code, control, err) = ack_code(&reply);
    assert_eq!(
        (code.as_str(), control.as_str(), err.as_str()),
        ("AR", "M13", "")
    );
    let segments = ok.matches('\r').count() + 1;
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.contains(&format!("segment {segments}: invalid segment id \"P?D\"")),
        "{reply}"
    );

    gw.stop().await;
}

/// A message over `hl7v2.max_message_bytes` is refused unread (`AR`), over
/// MLLP and HTTP alike, and the AR names it from its MSH (MSA-2, sender
/// and receiver swapped) so an engine can match it; the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_gets_an_ar_that_names_it() {
    let gw = start_with(|c| c.hl7v2.max_message_bytes = 2048).await;
    let nhs = nhs_number(840);
    let message = |control: &str, note: usize| {
        let mut m = adt(
            "A04",
            control,
            "202607141105",
            &format!("{nhs}^^^NHS^NH"),
            Some(&pv1("E", "V840", "202607141015", "")),
        );
        if note > 0 {
            m.push_str(&format!("ZNT|1|{}\r", "x".repeat(note)));
        }
        m
    };
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let reply = c.send(message("BIG1", 3000).as_bytes()).await.unwrap();
    let text = String::from_utf8_lossy(&reply).into_owned();
    assert_eq!(ack_code(&reply).0, "AR", "{text}");
    assert_eq!(ack_code(&reply).1, "BIG1", "{text}");
    assert!(
        text.starts_with("MSH|^~\\&|PATHWAY|ONEBROMLEY|PAS|RJZ|"),
        "{text}"
    );
    assert!(text.contains("over the size limit"), "{text}");
    assert_eq!(send(&mut c, &message("SMALL1", 0)).await.0, "AA");

    let reply = post_hl7v2(&gw, message("BIG2", 3000)).send().await.unwrap();
    let text = reply.text().await.unwrap();
    assert_eq!(ack_code(text.as_bytes()).0, "AR", "{text}");
    assert_eq!(ack_code(text.as_bytes()).1, "BIG2", "{text}");
    gw.stop().await;
}

/// MSH-15/16 `AL|NE`, as NHS feeds commonly send them: `AA` by default, as
/// engines expect; with `hl7v2.accept_acknowledgements`, the accept
/// acknowledgement (`CA`), for a message held in quarantine too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_mode_is_answered_as_configured() {
    let nhs = nhs_number(830);
    let message = |control: &str, class: &str| {
        adt(
            "A01",
            control,
            "202607141105",
            &format!("{nhs}^^^NHS^NH"),
            Some(&pv1(class, "V830", "202607141015", "")),
        )
        .replacen("|P|2.4\r", "|P|2.4|||AL|NE\r", 1)
    };
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    assert_eq!(send(&mut c, &message("E1", "I")).await.0, "AA");
    gw.stop().await;

    let gw = start_with(|c| c.hl7v2.cx.accept_acknowledgements = true).await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let (code, control, _) = send(&mut c, &message("E1", "I")).await;
    assert_eq!((code.as_str(), control.as_str()), ("CA", "E1"));
    assert_eq!(encounter(&gw, "V830").await["status"], "in-progress");
    // Held in quarantine is committed: CA, its reason in ERR.
    let (code, _, err) = send(&mut c, &message("E2", "Q")).await;
    assert_eq!((code.as_str(), err.as_str()), ("CA", "PV1^1^2"));
    assert_eq!(
        send(
            &mut c,
            "MSH|^~\\&|PAS|RJZ|GW|OB|2026||ORU^R01|E3|P|2.4|||AL|NE\r"
        )
        .await
        .0,
        "CR"
    );
    gw.stop().await;
}

/// A message refused because its hospital number belongs to another
/// patient is held; once the records are put right, replaying it stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_message_replays_after_a_fix() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let (first, second) = (nhs_number(800), nhs_number(801));
    let v = pv1("E", "E1", "202607141015", "");
    let a04 = adt(
        "A04",
        "R1",
        "202607141018",
        &format!("H5^^^RJZ^MR~{first}^^^NHS^NH"),
        Some(&v),
    );
    assert_eq!(send(&mut c, &a04).await.0, "AA");
    let clash = adt(
        "A04",
        "R2",
        "202607141118",
        &format!("H5^^^RJZ^MR~{second}^^^NHS^NH"),
        Some(&pv1("E", "E2", "202607141115", "")),
    );
    // ERR-3 205: the hospital number is another patient's key.
    let refused = client_ack(&mut c, &clash).await;
    let err = |ack: &str| -> Vec<String> {
        ack.split('\r')
            .filter(|s| s.starts_with("MSA") || s.starts_with("ERR"))
            .map(|s| s.to_string())
            .collect()
    };
    let first_answer = err(&refused);
    assert_eq!(first_answer.len(), 2, "{refused}");
    assert!(
        first_answer[0].starts_with("MSA|AE|R2|PID-3: "),
        "{refused}"
    );
    assert!(
        first_answer[1].starts_with(
            "ERR|PID^1^3^205&Duplicate key identifier&HL70357|PID^1^3|205^Duplicate key identifier^HL70357|E||||PID-3: "
        ),
        "{refused}"
    );
    // Sent again while held: the original's answer, error for error.
    let resent = client_ack(&mut c, &clash).await;
    assert_eq!(err(&resent), first_answer, "{resent}");
    let held = gw
        .send(gw.client.get(format!("{}/quarantine", gw.root)))
        .await;
    let held_r2: Vec<&Value> = held.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["location"] == "MSH-10 R2")
        .collect();
    assert_eq!(held_r2.len(), 1, "held once: {}", held.text);
    let entry = held_r2[0].clone();
    assert!(
        entry["reasons"][0]["reason"]
            .as_str()
            .unwrap()
            .contains(&first)
    );
    assert_eq!(entry["reasons"][0]["code"], 205, "{entry}");
    let replay = format!("{}/quarantine/{}/replay", gw.root, entry["id"]);

    // Still wrong: stays held.
    let again = gw.send(gw.client.post(&replay)).await;
    assert_eq!(
        again.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        again.text
    );

    // The trust says H5 was typed against the wrong patient: remove it.
    let mut wrong = patients(&gw, &first).await.remove(0);
    wrong["identifier"]
        .as_array_mut()
        .unwrap()
        .retain(|i| i["value"] != "H5");
    let id = wrong["id"].as_str().unwrap().to_string();
    let put = gw.put(&format!("Patient/{id}"), &wrong).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);

    let done = gw.send(gw.client.post(&replay)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert!(done.json["ack"].as_str().unwrap().contains("MSA|AA|R2"));
    assert_eq!(patients(&gw, &second).await.len(), 1);
    assert_eq!(encounter(&gw, "E2").await["class"]["code"], "EMER");
    gw.stop().await;
}

/// The first reason of the first entry `GET /quarantine` lists.
async fn first_reason(gw: &Gateway) -> Value {
    let held = gw
        .send(gw.client.get(format!("{}/quarantine", gw.root)))
        .await;
    held.json["entries"][0]["reasons"][0].clone()
}

/// A replay that fails leaves its entry held with the reasons it failed
/// for now, not those of the first refusal: here a hospital number on
/// another patient, then, once that is put right, an NHS number found on
/// two records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_replay_shows_why_it_failed_now() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let (first, second) = (nhs_number(3801), nhs_number(3802));
    let a04 = adt(
        "A28",
        "F1",
        "202610251000",
        &format!("H38^^^RJZ^MR~{first}^^^NHS^NH"),
        None,
    );
    assert_eq!(send(&mut c, &a04).await.0, "AA");
    let clash = adt(
        "A28",
        "F2",
        "202610251100",
        &format!("H38^^^RJZ^MR~{second}^^^NHS^NH"),
        None,
    );
    assert_eq!(send(&mut c, &clash).await.0, "AE");
    let reason = |r: &Value| r["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason(&first_reason(&gw).await).contains(&first));
    // H38 is taken off the first patient, but two records now carry the
    // second patient's NHS number.
    let mut wrong = patients(&gw, &first).await.remove(0);
    wrong["identifier"]
        .as_array_mut()
        .unwrap()
        .retain(|i| i["value"] != "H38");
    let id = wrong["id"].as_str().unwrap().to_string();
    assert_eq!(
        gw.put(&format!("Patient/{id}"), &wrong).await.status,
        StatusCode::OK
    );
    let twin = serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": second}]
    });
    for _ in 0..2 {
        let created = gw
            .send(gw.client.post(format!("{}/Patient", gw.fhir)).json(&twin))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    }
    let replay = format!("{}/quarantine/1/replay", gw.root);
    let failed = gw.send(gw.client.post(&replay)).await;
    assert_eq!(
        failed.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        failed.text
    );
    let now = reason(&first_reason(&gw).await);
    assert!(now.contains("2 patient records"), "{now}");
    gw.stop().await;
}

/// A PAS whose counter started again: another message under an MSH-10
/// already accepted is not dropped as a repeat but answered `AE` (205) and
/// held; sent again it is not held twice; the first message sent again,
/// stamped anew and over HTTP, is still a repeat; the held one replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_message_under_a_used_control_id_is_held_not_dropped() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let (first, second) = (nhs_number(810), nhs_number(811));
    let a01 = adt(
        "A01",
        "C1",
        "202607141018",
        &format!("{first}^^^NHS^NH"),
        Some(&pv1("I", "CV1", "202607141015", "")),
    );
    assert_eq!(send(&mut c, &a01).await.0, "AA");
    let other = adt(
        "A01",
        "C1",
        "202607151018",
        &format!("{second}^^^NHS^NH"),
        Some(&pv1("I", "CV2", "202607151015", "")),
    );
    let ack = client_ack(&mut c, &other).await;
    let (code, control, location) = ack_code(ack.as_bytes());
    assert_eq!(
        (code.as_str(), control.as_str(), location.as_str()),
        ("AE", "C1", "MSH^1^10"),
        "{ack}"
    );
    // ERR-3: 205, duplicate key identifier; the text says where it differs.
    assert!(ack.contains("|205^"), "{ack}");
    assert!(ack.contains("differs from this message at EVN-2"), "{ack}");
    assert!(patients(&gw, &second).await.is_empty());

    let entries = held_as(&gw, "MSH-10 C1").await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0]["journal_id"], Value::Null);
    let reason = entries[0]["reasons"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("MSH-10 already used by journal entry"),
        "{reason}"
    );

    // Sent again: answered as before, held once; also over HTTP with `\n`
    // between its segments, the same message.
    assert_eq!(send(&mut c, &other).await.0, "AE");
    let reply = gw.send(post_hl7v2(&gw, other.replace('\r', "\n"))).await;
    assert_eq!(ack_code(reply.text.as_bytes()).0, "AE", "{}", reply.text);
    // … and stamped anew (MSH-7).
    let restamped_other = other.replacen("202607151018", "202607151300", 1);
    assert_eq!(send(&mut c, &restamped_other).await.0, "AE");
    assert_eq!(held_as(&gw, "MSH-10 C1").await.len(), 1);

    // The first message again, stamped anew (MSH-7), `\n` between its
    // segments, over HTTP: a repeat, answered AA, changing nothing.
    let restamped = a01
        .replacen("202607141018", "202607141230", 1)
        .replace('\r', "\n");
    let reply = gw.send(post_hl7v2(&gw, restamped)).await;
    assert_eq!(ack_code(reply.text.as_bytes()).0, "AA", "{}", reply.text);
    assert_eq!(held_as(&gw, "MSH-10 C1").await.len(), 1);
    let before = encounter(&gw, "CV1").await;
    assert_eq!(before["meta"]["versionId"], "1");

    // Someone checks it is a real admission and replays it: applied.
    let replay = format!("{}/quarantine/{}/replay", gw.root, entries[0]["id"]);
    let done = gw.send(gw.client.post(&replay)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert!(done.json["ack"].as_str().unwrap().contains("MSA|AA|C1"));
    assert_eq!(patients(&gw, &second).await.len(), 1);
    let applied = encounter(&gw, "CV2").await;
    assert_eq!(applied["status"], "in-progress");
    assert!(held_as(&gw, "MSH-10 C1").await.is_empty());
    // Sent again once applied: a repeat of it, answered AA, not held again.
    assert_eq!(send(&mut c, &other).await.0, "AA");
    assert!(held_as(&gw, "MSH-10 C1").await.is_empty());
    assert_eq!(encounter(&gw, "CV2").await, applied);

    // A third message under it, sent on four connections at once: held
    // once. (Its NHS number fails the check, so no patient's lock orders
    // the copies.) Looked at and discarded: sent again, it is dealt with
    // (AA), not held again, and changes nothing.
    let third = adt(
        "A01",
        "C1",
        "202607161018",
        "K812^^^RJZ^MR~9990000019^^^NHS^NH",
        Some(&pv1("I", "CV3", "202607161015", "")),
    );
    let mut at_once = Vec::new();
    for _ in 0..4 {
        let message = third.clone();
        let addr = gw.mllp;
        at_once.push(tokio::spawn(async move {
            let mut client = MllpClient::connect(addr, TIMEOUT).await.unwrap();
            ack_code(&client.send(message.as_bytes()).await.unwrap()).0
        }));
    }
    for answer in at_once {
        assert_eq!(answer.await.unwrap(), "AE");
    }
    let held = held_as(&gw, "MSH-10 C1").await;
    assert_eq!(held.len(), 1, "{held:#?}");
    let discard = format!("{}/quarantine/{}/discard", gw.root, held[0]["id"]);
    assert_eq!(
        gw.send(gw.client.post(&discard)).await.status,
        StatusCode::OK
    );
    assert_eq!(send(&mut c, &third).await.0, "AA");
    assert!(held_as(&gw, "MSH-10 C1").await.is_empty());
    assert!(patients(&gw, "K812").await.is_empty());
    gw.stop().await;
}

/// Held quarantine entries at `location`.
async fn held_as(gw: &Gateway, location: &str) -> Vec<Value> {
    let list = gw
        .send(gw.client.get(format!("{}/quarantine", gw.root)))
        .await;
    list.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["location"] == location)
        .cloned()
        .collect()
}

async fn client_ack(client: &mut MllpClient, message: &str) -> String {
    String::from_utf8_lossy(&client.send(message.as_bytes()).await.expect("ACK")).into_owned()
}

/// `POST /quarantine/{id}/discard`: an entry looked at and not to be
/// applied leaves the held list (kept, with `status=all`); it can be neither
/// discarded again nor replayed; a resend of its message is answered `AA`
/// (dealt with) and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_entry_leaves_the_held_list_and_its_resend_changes_nothing() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let bad = adt(
        "A01",
        "D1",
        "202607141018",
        "K300^^^RJZ^MR~9990000019^^^NHS^NH",
        Some(&pv1("I", "DV1", "202607141015", "")),
    );
    assert_eq!(send(&mut c, &bad).await.0, "AE");
    let held = held_as(&gw, "MSH-10 D1").await;
    assert_eq!(held.len(), 1, "{held:#?}");
    let id = held[0]["id"].as_i64().unwrap();
    let discard = |id: &str| {
        gw.client
            .post(format!("{}/quarantine/{id}/discard", gw.root))
    };

    let done = gw.send(discard(&id.to_string())).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert_eq!(done.json["status"], "discarded");
    assert!(held_as(&gw, "MSH-10 D1").await.is_empty());
    let all = gw
        .send(gw.client.get(format!("{}/quarantine?status=all", gw.root)))
        .await;
    let kept = all.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .cloned()
        .expect("kept");
    assert_eq!(kept["status"], "discarded");
    assert!(kept["resolved_at"].is_string(), "{kept}");

    for again in [
        gw.send(discard(&id.to_string())).await,
        gw.send(
            gw.client
                .post(format!("{}/quarantine/{id}/replay", gw.root)),
        )
        .await,
    ] {
        assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
        assert!(again.text.contains("no longer held"), "{}", again.text);
    }
    for missing in ["999999", "abc"] {
        assert_eq!(
            gw.send(discard(missing)).await.status,
            StatusCode::NOT_FOUND
        );
    }

    assert_eq!(send(&mut c, &bad).await.0, "AA");
    assert!(held_as(&gw, "MSH-10 D1").await.is_empty());
    assert!(patients(&gw, "K300").await.is_empty());
    gw.stop().await;
}

/// `GET /metrics`: messages answered by transport and code (unreadable
/// input too) and how fast, MLLP connections open and accepted, and what
/// quarantine holds per interface, 0 for none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_answers_by_transport_and_code_and_what_is_held() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let nhs = format!("{}^^^NHS^NH", nhs_number(820));
    let admit = adt(
        "A01",
        "G1",
        "202607141018",
        &nhs,
        Some(&pv1("I", "GV1", "202607141015", "")),
    );
    assert_eq!(send(&mut c, &admit).await.0, "AA");
    assert_eq!(send(&mut c, &admit).await.0, "AA");
    let bad = adt("A01", "G2", "202607141018", "9990000019^^^NHS^NH", None);
    assert_eq!(send(&mut c, &bad).await.0, "AE");
    let oru = "MSH|^~\\&|LAB|RJZ|PATHWAY|ONEBROMLEY|202607141020||ORU^R01|G3|P|2.4\r";
    assert_eq!(send(&mut c, oru).await.0, "AR");
    let body = format!("junk\r{}", admit.replace("|G1|", "|G4|"));
    let reply = gw.send(post_hl7v2(&gw, body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);

    let metrics = gw.get_url(&format!("{}/metrics", gw.root)).await.text;
    for line in [
        "# TYPE pathway_hl7v2_messages_total counter",
        "pathway_hl7v2_messages_total{transport=\"mllp\",ack=\"AA\"} 2",
        "pathway_hl7v2_messages_total{transport=\"mllp\",ack=\"AE\"} 1",
        "pathway_hl7v2_messages_total{transport=\"mllp\",ack=\"AR\"} 1",
        "pathway_hl7v2_messages_total{transport=\"http\",ack=\"AA\"} 1",
        "pathway_hl7v2_messages_total{transport=\"http\",ack=\"AE\"} 0",
        "pathway_hl7v2_messages_total{transport=\"http\",ack=\"AR\"} 1",
        "# TYPE pathway_hl7v2_ack_seconds histogram",
        "pathway_hl7v2_ack_seconds_count{transport=\"mllp\"} 4",
        "pathway_hl7v2_ack_seconds_bucket{transport=\"mllp\",le=\"+Inf\"} 4",
        "pathway_hl7v2_ack_seconds_count{transport=\"http\"} 2",
        // The AE's errors (an NHS number failing Modulus 11, so no
        // identifier left, and no PV1), the ORU's AR, the junk's AR.
        "# TYPE pathway_hl7v2_errors_total counter",
        "pathway_hl7v2_errors_total{code=\"100\"} 2",
        "pathway_hl7v2_errors_total{code=\"101\"} 1",
        "pathway_hl7v2_errors_total{code=\"102\"} 1",
        "pathway_hl7v2_errors_total{code=\"200\"} 1",
        "pathway_hl7v2_errors_total{code=\"207\"} 0",
        "pathway_mllp_connections 1",
        "pathway_mllp_connections_total 1",
        "# TYPE pathway_quarantine_held gauge",
        "pathway_quarantine_held{source=\"gp-risk-list\"} 0",
        "pathway_quarantine_held{source=\"hl7v2-http\"} 0",
        "pathway_quarantine_held{source=\"hl7v2-mllp\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    // The engine disconnects: no connection open.
    drop(c);
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let metrics = gw.get_url(&format!("{}/metrics", gw.root)).await.text;
        if metrics.lines().any(|l| l == "pathway_mllp_connections 0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = held_as(&gw, "MSH-10 G2").await[0]["id"].clone();
    let discarded = gw
        .send(
            gw.client
                .post(format!("{}/quarantine/{id}/discard", gw.root)),
        )
        .await;
    assert_eq!(discarded.status, StatusCode::OK, "{}", discarded.text);
    let metrics = gw.get_url(&format!("{}/metrics", gw.root)).await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l == "pathway_quarantine_held{source=\"hl7v2-mllp\"} 0"),
        "{metrics}"
    );
    gw.stop().await;
}

/// 16 connections × 100 messages: every one AA, stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_connections_of_a_hundred_messages_are_all_stored_once() {
    let gw = start().await;
    let mut tasks = Vec::new();
    for conn in 0..16u32 {
        let addr = gw.mllp;
        tasks.push(tokio::spawn(async move {
            let mut c = MllpClient::connect(addr, TIMEOUT).await.unwrap();
            let messages: Vec<String> = (0..100u32)
                .map(|i| {
                    let n = conn * 100 + i;
                    adt(
                        "A04",
                        &format!("C{conn}-{i}"),
                        "202611031940",
                        &format!("{}^^^NHS^NH", nhs_number(10_000 + n * 3)),
                        Some(&pv1("E", &format!("ED{n}"), "202611031935", "")),
                    )
                })
                .collect();
            // Half pipelined, half one at a time.
            let mut codes = Vec::new();
            if conn % 2 == 0 {
                let refs: Vec<&[u8]> = messages.iter().map(|m| m.as_bytes()).collect();
                for ack in c.send_all(&refs).await.unwrap() {
                    codes.push(ack_code(&ack));
                }
            } else {
                for m in &messages {
                    codes.push(send(&mut c, m).await);
                }
            }
            for (i, (code, control, _)) in codes.iter().enumerate() {
                assert_eq!(code, "AA", "connection {conn} message {i}");
                assert_eq!(control, &format!("C{conn}-{i}"));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let encounters = gw.search_all("Encounter?_count=1000").await;
    assert_eq!(encounters.len(), 1600);
    let mut visits: Vec<String> = encounters
        .iter()
        .map(|e| e["identifier"][0]["value"].as_str().unwrap().to_string())
        .collect();
    visits.sort();
    visits.dedup();
    assert_eq!(visits.len(), 1600);
    assert_eq!(gw.search_all("Patient?_count=1000").await.len(), 1600);
    gw.stop().await;
}

/// `POST /ingest/hl7v2`: two messages in one body, two ACKs in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_answers_one_ack_per_message() {
    let gw = start().await;
    let nhs = nhs_number(900);
    let body = format!(
        "{}\n{}",
        adt(
            "A01",
            "H1",
            "202607141018",
            &format!("{nhs}^^^NHS^NH"),
            Some(&pv1("I", "HV1", "202607141015", ""))
        ),
        adt(
            "A01",
            "H2",
            "202607141018",
            "",
            Some(&pv1("I", "HV2", "202607141015", ""))
        )
    );
    let reply = gw.send(post_hl7v2(&gw, body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let acks: Vec<&str> = reply.text.split('\n').filter(|s| !s.is_empty()).collect();
    assert_eq!(acks.len(), 2, "{}", reply.text);
    assert_eq!(ack_code(acks[0].as_bytes()).0, "AA");
    let (code, control, err) = ack_code(acks[1].as_bytes());
    assert_eq!(
        (code.as_str(), control.as_str(), err.as_str()),
        ("AE", "H2", "PID^1^3")
    );
    assert_eq!(encounter(&gw, "HV1").await["status"], "in-progress");

    // A file saved with a byte-order mark: its first message is still one.
    let post = |body: String| post_hl7v2(&gw, body);
    let with_bom = format!(
        "\u{feff}{}",
        adt(
            "A01",
            "H3",
            "202607141018",
            &format!("{}^^^NHS^NH", nhs_number(901)),
            Some(&pv1("I", "HV3", "202607141015", ""))
        )
    );
    let reply = gw.send(post(with_bom)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(ack_code(reply.text.as_bytes()).0, "AA", "{}", reply.text);
    assert_eq!(encounter(&gw, "HV3").await["status"], "in-progress");

    // Bytes before the first message are answered, not dropped unseen.
    let after_junk = format!(
        "not a message\r{}",
        adt(
            "A01",
            "H4",
            "202607141018",
            &format!("{}^^^NHS^NH", nhs_number(902)),
            Some(&pv1("I", "HV4", "202607141015", ""))
        )
    );
    let reply = gw.send(post(after_junk)).await;
    let acks: Vec<&str> = reply.text.split('\n').filter(|s| !s.is_empty()).collect();
    assert_eq!(acks.len(), 2, "{}", reply.text);
    assert_eq!(ack_code(acks[0].as_bytes()).0, "AR", "{}", reply.text);
    assert_eq!(ack_code(acks[1].as_bytes()).0, "AA", "{}", reply.text);
    assert_eq!(encounter(&gw, "HV4").await["status"], "in-progress");

    // A message sent over one transport and again over the other is a
    // repeat (same sender and MSH-10): answered, and it changes nothing;
    // other content under the same control id is another message, held.
    let nhs = format!("{}^^^NHS^NH", nhs_number(903));
    let admit = adt(
        "A01",
        "X1",
        "202607141018",
        &nhs,
        Some(&pv1("I", "HV5", "202607141015", "")),
    );
    let discharge = adt(
        "A03",
        "X1",
        "202607151018",
        &nhs,
        Some(&pv1("I", "HV5", "202607141015", "202607151000")),
    );
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    assert_eq!(send(&mut c, &admit).await.0, "AA");
    let reply = gw.send(post(admit.clone())).await;
    assert_eq!(ack_code(reply.text.as_bytes()).0, "AA", "{}", reply.text);
    let reply = gw.send(post(discharge.clone())).await;
    assert_eq!(ack_code(reply.text.as_bytes()).0, "AE", "{}", reply.text);
    assert_eq!(encounter(&gw, "HV5").await["status"], "in-progress");
    let admit = adt(
        "A01",
        "X2",
        "202607141018",
        &nhs,
        Some(&pv1("I", "HV6", "202607141015", "")),
    );
    let discharge = adt(
        "A03",
        "X2",
        "202607151018",
        &nhs,
        Some(&pv1("I", "HV6", "202607141015", "202607151000")),
    );
    let reply = gw.send(post(admit.clone())).await;
    assert_eq!(ack_code(reply.text.as_bytes()).0, "AA", "{}", reply.text);
    assert_eq!(send(&mut c, &admit).await.0, "AA");
    assert_eq!(send(&mut c, &discharge).await.0, "AE");
    assert_eq!(encounter(&gw, "HV6").await["status"], "in-progress");
    // Two systems of one trust (one facility code) count their control ids
    // alike: the same MSH-10 from another sending application is another
    // message.
    let pas = adt(
        "A01",
        "X3",
        "202607141018",
        &nhs,
        Some(&pv1("I", "HV7", "202607141015", "")),
    );
    let ed = pas
        .replacen("|PAS|RJZ|", "|EDS|RJZ|", 1)
        .replace("HV7", "HV8");
    assert_eq!(send(&mut c, &pas).await.0, "AA");
    assert_eq!(send(&mut c, &ed).await.0, "AA");
    assert_eq!(encounter(&gw, "HV8").await["status"], "in-progress");

    let wrong = gw
        .send(
            gw.client
                .post(format!("{}/ingest/hl7v2", gw.root))
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    gw.stop().await;
}

async fn read_acks(stream: &mut tokio::net::TcpStream, n: usize) -> Vec<Vec<u8>> {
    let mut framer = pathway_gateway::hl7v2::Framer::new(1 << 20);
    let mut acks = Vec::new();
    let mut buf = [0u8; 4096];
    while acks.len() < n {
        let read = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
            .await
            .expect("ACK in time")
            .unwrap();
        assert!(read > 0, "connection closed before {n} ACKs");
        for frame in framer.push(&buf[..read]) {
            if let pathway_gateway::hl7v2::Frame::Message(m) = frame {
                acks.push(m);
            }
        }
    }
    acks
}

/// `replay DIR --to URL` (the library function behind it): the golden
/// folder over MLLP, then again over HTTP, where every message is a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_the_fixture_folder_over_mllp_then_http() {
    use pathway_gateway::replay::{Target, replay};
    let gw = start().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hl7v2");
    let codes = |sent: &[pathway_gateway::replay::Sent]| {
        let mut by_file: Vec<(String, String)> = sent
            .iter()
            .map(|s| {
                let name = s.file.file_name().unwrap().to_string_lossy().to_string();
                (name, s.outcome.clone())
            })
            .collect();
        by_file.sort();
        by_file
    };
    let over_mllp = replay(&dir, &Target::Mllp(gw.mllp.to_string()), None)
        .await
        .unwrap()
        .sent;
    let refused: Vec<(String, String)> = codes(&over_mllp)
        .into_iter()
        .filter(|(_, code)| code != "AA")
        .collect();
    assert_eq!(
        refused,
        [
            // Its A17, sent twice (its A01 is `AA`).
            (
                "control-id-reused-after-refusal.hl7".to_string(),
                "AR".to_string()
            ),
            (
                "control-id-reused-after-refusal.hl7".to_string(),
                "AR".to_string()
            ),
            // Another message under its first one's MSH-10, sent twice.
            (
                "control-id-reused-for-another-message.hl7".to_string(),
                "AE".to_string()
            ),
            (
                "control-id-reused-for-another-message.hl7".to_string(),
                "AE".to_string()
            ),
            ("hospital-number-clash.hl7".to_string(), "AE".to_string()),
            ("impossible-date.hl7".to_string(), "AE".to_string()),
            // Refused, then sent again: refused again (a repeat).
            ("invalid-nhs-number.hl7".to_string(), "AE".to_string()),
            ("invalid-nhs-number.hl7".to_string(), "AE".to_string()),
            ("training-processing-id.hl7".to_string(), "AR".to_string()),
            ("unsupported-oru.hl7".to_string(), "AR".to_string()),
            // Labelled 2.6 (its resend as 2.5.1 is `AA`).
            ("unsupported-version.hl7".to_string(), "AR".to_string()),
        ]
    );
    assert!(over_mllp.len() >= 25, "{over_mllp:?}");
    let over_http = replay(&dir, &Target::Http(gw.root.clone()), None)
        .await
        .unwrap()
        .sent;
    assert_eq!(codes(&over_http), codes(&over_mllp));
    gw.stop().await;
}

/// `replay` with what integration engineers' folders hold: a Windows-1252
/// file with `\n` line ends (sent as its bytes: the name survives), an
/// upper-case extension, and an empty file, which is a failure over either
/// transport (over HTTP the gateway answers 400 and no ACK), not nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_takes_windows_1252_upper_case_names_and_reports_an_empty_file() {
    use pathway_gateway::replay::{Target, replay};
    let gw = start().await;
    let dir = tempfile::tempdir().unwrap();
    let nhs = nhs_number(891);
    let admit = adt(
        "A04",
        "W1",
        "202607141018",
        &format!("{nhs}^^^NHS^NH"),
        Some(&pv1("E", "E92", "202607141015", "")),
    )
    .replace("PAGE^Margaret", "ZO\u{cb}^Margaret")
    .replace('\r', "\n");
    let bytes: Vec<u8> = admit
        .chars()
        .map(|c| if c == '\u{cb}' { 0xCB } else { c as u8 })
        .collect();
    std::fs::write(dir.path().join("a.hl7"), bytes).unwrap();
    // Older than the arrival: it fills gaps, and leaves the arrival's name.
    let update = adt(
        "A08",
        "W2",
        "202607141016",
        &format!("{nhs}^^^NHS^NH"),
        Some(&pv1("E", "E92", "202607141015", "")),
    );
    std::fs::write(dir.path().join("b.HL7"), update).unwrap();
    std::fs::write(dir.path().join("c.hl7"), "").unwrap();
    let rows = |sent: &[pathway_gateway::replay::Sent]| -> Vec<(String, bool)> {
        sent.iter()
            .map(|s| {
                (
                    s.file.file_name().unwrap().to_string_lossy().to_string(),
                    s.ok,
                )
            })
            .collect()
    };
    let expected = [
        ("a.hl7".to_string(), true),
        ("b.HL7".to_string(), true),
        ("c.hl7".to_string(), false),
    ];
    let over_mllp = replay(dir.path(), &Target::Mllp(gw.mllp.to_string()), None)
        .await
        .unwrap()
        .sent;
    assert_eq!(rows(&over_mllp), expected, "{over_mllp:?}");
    let found = patients(&gw, &nhs).await;
    assert_eq!(found[0]["name"][0]["family"], "ZO\u{cb}", "{found:#?}");
    let over_http = replay(dir.path(), &Target::Http(gw.root.clone()), None)
        .await
        .unwrap()
        .sent;
    assert_eq!(rows(&over_http), expected, "{over_http:?}");
    assert!(
        over_http[2].outcome.starts_with("HTTP 400"),
        "{over_http:?}"
    );
    // One file, named as given: its message alone is sent (a repeat now).
    let one = replay(
        &dir.path().join("b.HL7"),
        &Target::Mllp(gw.mllp.to_string()),
        None,
    )
    .await
    .unwrap()
    .sent;
    assert_eq!(rows(&one), [("b.HL7".to_string(), true)], "{one:?}");
    assert_eq!(one[0].item, "W2");
    // Named alone, a capture with another extension is sent as HL7 v2 (in
    // a folder it would be passed over).
    let capture = tempfile::tempdir().unwrap();
    let path = capture.path().join("capture.txt");
    std::fs::write(&path, std::fs::read(dir.path().join("b.HL7")).unwrap()).unwrap();
    let sent = replay(&path, &Target::Mllp(gw.mllp.to_string()), None)
        .await
        .unwrap()
        .sent;
    assert_eq!(rows(&sent), [("capture.txt".to_string(), true)], "{sent:?}");
    let skipped = replay(capture.path(), &Target::Mllp(gw.mllp.to_string()), None)
        .await
        .unwrap();
    assert!(skipped.sent.is_empty(), "{skipped:?}");
    assert_eq!(skipped.skipped, [path], "{skipped:?}");
    gw.stop().await;
}

/// A capture of more messages than one request should carry goes over HTTP
/// in parts, every message answered; a folder holding a file the target
/// cannot take is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_a_long_capture_in_parts_and_checks_a_folder_first() {
    use pathway_gateway::replay::{Target, replay};
    let gw = start().await;
    let dir = tempfile::tempdir().unwrap();
    // 501 messages: two requests (500 and 1), after a line before the
    // first MSH that is no message.
    let mut capture = String::from("not a message\r");
    for n in 0..501 {
        let nhs = nhs_number(2000 + n);
        capture.push_str(&adt(
            "A28",
            &format!("L{n}"),
            "202607141018",
            &format!("{nhs}^^^NHS^NH"),
            None,
        ));
    }
    std::fs::write(dir.path().join("capture.hl7"), &capture).unwrap();
    let done = replay(dir.path(), &Target::Http(gw.root.clone()), None)
        .await
        .unwrap();
    assert!(done.skipped.is_empty(), "{done:?}");
    assert_eq!(done.sent.len(), 502, "{:?}", &done.sent[..3]);
    assert_eq!(done.sent[0].outcome, "AR", "{:?}", done.sent[0]);
    let items: Vec<&str> = done.sent[1..].iter().map(|s| s.item.as_str()).collect();
    let want: Vec<String> = (0..501).map(|n| format!("L{n}")).collect();
    assert_eq!(items, want);
    assert!(done.sent[1..].iter().all(|s| s.ok && s.outcome == "AA"));
    assert_eq!(patients(&gw, &nhs_number(2500)).await.len(), 1);
    // A CSV beside an HL7 file, over MLLP: refused, the HL7 file unsent.
    let mixed = tempfile::tempdir().unwrap();
    let nhs = nhs_number(2600);
    let admit = adt(
        "A28",
        "M1",
        "202607141018",
        &format!("{nhs}^^^NHS^NH"),
        None,
    );
    std::fs::write(mixed.path().join("a.hl7"), admit).unwrap();
    std::fs::write(mixed.path().join("b.csv"), "NHS Number\n").unwrap();
    let refused = replay(mixed.path(), &Target::Mllp(gw.mllp.to_string()), None).await;
    let err = refused.expect_err("a CSV cannot go over MLLP");
    assert!(err.contains("b.csv") && err.contains("MLLP"), "{err}");
    // ... and over HTTP without --practice.
    let err = replay(mixed.path(), &Target::Http(gw.root.clone()), None)
        .await
        .expect_err("a CSV needs a practice");
    assert!(err.contains("--practice"), "{err}");
    assert!(patients(&gw, &nhs).await.is_empty());
    gw.stop().await;
}

/// A patient first created by a message keeps that message's event time:
/// an older message arriving afterwards only fills gaps. (The clock was
/// recorded under an id other than the new patient's, so the older message
/// overwrote the name.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_patients_first_event_orders_later_arrivals() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let nhs = nhs_number(720);
    let newer = format!(
        "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|202607150900||ADT^A28|N1|P|2.4\rEVN|A28|202607150900\rPID|1||{nhs}^^^NHS^NH||SMITH^Ann||19380305|F\r"
    );
    let older = format!(
        "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|202607140900||ADT^A31|N2|P|2.4\rEVN|A31|202607140900\rPID|1||{nhs}^^^NHS^NH||PAGE^Ann||19380305|F|||||01689 123456\r"
    );
    assert_eq!(send(&mut c, &newer).await.0, "AA");
    assert_eq!(send(&mut c, &older).await.0, "AA");
    let found = patients(&gw, &nhs).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["name"][0]["family"], "SMITH", "{:#}", found[0]);
    assert_eq!(
        found[0]["telecom"][0]["value"], "01689 123456",
        "{:#}",
        found[0]
    );
}

/// A sender that sends only what changed, and a deletion (`""`): each member
/// goes by the latest message that set it, kept beside the record through a
/// restart. A newer message about the phone does not make an older one
/// about the address stale, and a retracted death is not brought back by
/// the late message that recorded it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_go_by_the_latest_message_that_set_them_across_a_restart() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let nhs = nhs_number(721);
    let a31 = |id: &str, when: &str, pid_after_3: &str| {
        format!(
            "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|{when}||ADT^A31|{id}|P|2.4\rEVN|A31|{when}\rPID|1||{nhs}^^^NHS^NH{pid_after_3}\r"
        )
    };
    let registered = a31(
        "S1",
        "202607010900",
        "||PAGE^Ann||19380305|F|||12 Station Road^^Bromley^^BR1 3PT||01689 100001",
    );
    let phone = a31("S2", "202607200900", "||||||||||01689 100002");
    let retracted = a31("S3", "202607250900", "||||||||||||||||||||||||||\"\"");
    for message in [&registered, &phone, &retracted] {
        assert_eq!(send(&mut c, message).await.0, "AA");
    }
    drop(c);
    let gw = gw.restart().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let address = a31(
        "S4",
        "202607100900",
        "||||||||4 Hill View^^Orpington^^BR6 0AA",
    );
    let died = a31(
        "S5",
        "202607150900",
        "||||||||||||||||||||||||||202607150830",
    );
    for message in [&address, &died] {
        assert_eq!(send(&mut c, message).await.0, "AA");
    }
    let found = patients(&gw, &nhs).await;
    assert_eq!(found.len(), 1);
    let p = &found[0];
    assert_eq!(p["name"][0]["family"], "PAGE", "{p:#}");
    assert_eq!(p["telecom"][0]["value"], "01689 100002", "{p:#}");
    assert_eq!(p["address"][0]["postalCode"], "BR6 0AA", "{p:#}");
    assert!(p.get("deceasedDateTime").is_none(), "{p:#}");
}

/// A transfer cancel (A12) that arrives before the transfer it cancels
/// waits for it, beside the Encounter, through a restart: the transfer is
/// then undone when it comes, as it would have been in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_arriving_before_its_transfer_undoes_it_when_it_comes() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let nhs = nhs_number(722);
    let message = |event: &str, id: &str, when: &str, place: &str| {
        format!(
            "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|{when}||ADT^{event}|{id}|P|2.4\rEVN|{event}|{when}\rPID|1||{nhs}^^^NHS^NH||PAGE^Ann||19380305|F\rPV1|1|I|{place}|21|||||||||||||||V722^^^RJZ^VN|||||||||||||||||||||||||202607141015\r"
        )
    };
    let admitted = message("A01", "C1", "202607141018", "AMU^^^RJZ30");
    let cancelled = message("A12", "C3", "202607151000", "AMU^^^RJZ30");
    let moved = message("A02", "C2", "202607150900", "WARD 9^^^RJZ30");
    for m in [&admitted, &cancelled] {
        assert_eq!(send(&mut c, m).await.0, "AA");
    }
    drop(c);
    let gw = gw.restart().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    assert_eq!(send(&mut c, &moved).await.0, "AA");
    let e = encounter(&gw, "V722").await;
    let places = e["location"].as_array().unwrap();
    assert_eq!(places.len(), 1, "{e:#}");
    assert!(places[0]["location"].to_string().contains("AMU"), "{e:#}");
    assert_eq!(places[0]["status"], "active", "{e:#}");
}

/// A new patient's first message racing a conditional create of the same
/// NHS number over FHIR REST: whichever commits first, the message's facts
/// (its hospital number, its visit) end up on the one Patient record. The
/// message's create then finds the record made meanwhile, and the feed
/// plans again on top of it; the retry must apply the message, not take it
/// for a repeat of itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_racing_a_rest_create_of_its_patient_is_applied_whole() {
    let gw = start().await;
    const CONNECTIONS: u32 = 4;
    const EACH: u32 = 40;
    let mut tasks = Vec::new();
    for conn in 0..CONNECTIONS {
        let (addr, client, fhir) = (gw.mllp, gw.client.clone(), gw.fhir.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = MllpClient::connect(addr, TIMEOUT).await.unwrap();
            for i in 0..EACH {
                let n = conn * EACH + i;
                let nhs = nhs_number(20_000 + n * 7);
                let message = adt(
                    "A04",
                    &format!("R{n}"),
                    "202611031940",
                    &format!("RACE{n}^^^RJZ^MR~{nhs}^^^NHS^NH"),
                    Some(&pv1("E", &format!("RV{n}"), "202611031935", "")),
                );
                let create = client
                    .post(format!("{fhir}/Patient"))
                    .header("content-type", "application/fhir+json")
                    .header(
                        "if-none-exist",
                        format!("identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"),
                    )
                    .body(common::patient(&nhs, "PAGE").to_string())
                    .send();
                let (ack, created) = tokio::join!(send(&mut c, &message), create);
                assert_eq!(ack.0, "AA", "message R{n}: {ack:?}");
                assert!(created.unwrap().status().is_success());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for n in 0..CONNECTIONS * EACH {
        let nhs = nhs_number(20_000 + n * 7);
        let found = patients(&gw, &nhs).await;
        assert_eq!(found.len(), 1, "patients with NHS number {nhs}");
        let identifiers = found[0]["identifier"].to_string();
        assert!(
            identifiers.contains(&format!("RACE{n}")),
            "message R{n}'s hospital number is not on its patient: {identifiers}"
        );
        let visit = encounter(&gw, &format!("RV{n}")).await;
        assert_eq!(
            visit["subject"]["reference"],
            format!("Patient/{}", found[0]["id"].as_str().unwrap())
        );
    }
    gw.stop().await;
}

/// A40 moves what put the merged-away record on a pathway, not only its
/// encounters: the care plan and the referral then name the survivor, so
/// the router's `%carePlans` (and the outcome measures) find them there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_moves_care_plans_and_referrals_to_the_survivor() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let ed = pv1("E", "E88", "202610251150", "");
    let a04 = adt("A04", "P1", "202610251158", "U88^^^RJZ^MR", Some(&ed));
    assert_eq!(send(&mut c, &a04).await.0, "AA");
    let merged = patients(&gw, "U88").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let plan = gw
        .post("CarePlan", &common::care_plan(&format!("Patient/{merged}")))
        .await;
    assert_eq!(plan.status, StatusCode::CREATED, "{}", plan.text);
    let referral = gw
        .post(
            "ServiceRequest",
            &common::service_request(&format!("Patient/{merged}")),
        )
        .await;
    assert_eq!(referral.status, StatusCode::CREATED, "{}", referral.text);

    let nhs = nhs_number(888);
    let a40 = a40(
        "P2",
        "202610251400",
        &format!("{nhs}^^^NHS^NH"),
        "U88^^^RJZ^MR",
    );
    assert_eq!(send(&mut c, &a40).await.0, "AA");
    let survivor = format!(
        "Patient/{}",
        patients(&gw, &nhs).await[0]["id"].as_str().unwrap()
    );
    assert_ne!(survivor, format!("Patient/{merged}"));
    for (ty, created) in [("CarePlan", &plan), ("ServiceRequest", &referral)] {
        let now = gw
            .get(&format!("{ty}/{}", created.json["id"].as_str().unwrap()))
            .await;
        assert_eq!(
            now.json["subject"]["reference"], survivor,
            "{ty}: {}",
            now.text
        );
    }
    assert_eq!(
        encounter(&gw, "E88").await["subject"]["reference"],
        survivor
    );
    gw.stop().await;
}

/// An A40 that arrives before any message of the record it merges away
/// (MRG-1 a hospital number nobody has yet) gives the survivor that number
/// as an old identifier, so the late messages of the merged record land on
/// the survivor: the same patient and visit as in the order sent.
/// A message without an NHS number whose hospital numbers find a traced
/// record and an untraced one merges the untraced into the traced, whichever
/// the lookup finds first (here the untraced: created first, its id sorts
/// first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hospital_numbers_finding_a_traced_and_an_untraced_record_merge_them() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let nhs = nhs_number(890);
    let untraced = adt(
        "A04",
        "T1",
        "202610251158",
        "K2^^^RJZ^MR",
        Some(&pv1("E", "E90", "202610251150", "")),
    );
    assert_eq!(send(&mut c, &untraced).await.0, "AA");
    let traced = adt(
        "A04",
        "T2",
        "202610251258",
        &format!("K1^^^RJZ^MR~{nhs}^^^NHS^NH"),
        Some(&pv1("E", "E91", "202610251250", "")),
    );
    assert_eq!(send(&mut c, &traced).await.0, "AA");
    let both = adt("A31", "T3", "202610251400", "K2^^^RJZ^MR~K1^^^RJZ^MR", None);
    let (code, _, err) = send(&mut c, &both).await;
    assert_eq!((code.as_str(), err.as_str()), ("AA", ""));
    let survivor = &patients(&gw, &nhs).await[0];
    let found = patients(&gw, "K2").await;
    assert!(
        found.iter().any(|p| p["id"] == survivor["id"]),
        "the traced record took the untraced one's hospital number: {found:#?}"
    );
    assert_eq!(
        encounter(&gw, "E90").await["subject"]["reference"],
        format!("Patient/{}", survivor["id"].as_str().unwrap())
    );
    gw.stop().await;
}

/// Two traced records merged (an NHS number superseded), then a message
/// sent before the merge about the merged-away record, with its NHS
/// number, arriving after it: applied to the survivor, as it would have
/// been in order (its encounter moved), and the survivor keeps its own NHS
/// number alone; before, it was refused (AE: the number on another record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_about_a_record_merged_away_arriving_after_the_merge_reaches_the_survivor() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let (old, new) = (nhs_number(887), nhs_number(888));
    let attended = adt(
        "A04",
        "W1",
        "202610251158",
        &format!("K87^^^RJZ^MR~{old}^^^NHS^NH"),
        Some(&pv1("E", "E87", "202610251150", "")),
    );
    assert_eq!(send(&mut c, &attended).await.0, "AA");
    let registered = adt(
        "A28",
        "W2",
        "202610251200",
        &format!("K88^^^RJZ^MR~{new}^^^NHS^NH"),
        None,
    );
    assert_eq!(send(&mut c, &registered).await.0, "AA");
    let merge = a40(
        "W3",
        "202610251400",
        &format!("K88^^^RJZ^MR~{new}^^^NHS^NH"),
        "K87^^^RJZ^MR",
    );
    assert_eq!(send(&mut c, &merge).await.0, "AA");
    let survivor = patients(&gw, &new).await;
    assert_eq!(survivor.len(), 1, "{survivor:#?}");
    let survivor_ref = format!("Patient/{}", survivor[0]["id"].as_str().unwrap());
    assert_eq!(
        encounter(&gw, "E87").await["subject"]["reference"],
        survivor_ref
    );

    // Sent at 13:30, before the merge; delivered after it.
    let discharged = adt(
        "A03",
        "W4",
        "202610251330",
        &format!("K87^^^RJZ^MR~{old}^^^NHS^NH"),
        Some(&pv1("E", "E87", "202610251150", "202610251325")),
    );
    let (code, _, err) = send(&mut c, &discharged).await;
    assert_eq!((code.as_str(), err.as_str()), ("AA", ""));
    let e = encounter(&gw, "E87").await;
    assert_eq!(e["status"], "finished", "{e}");
    assert_eq!(e["subject"]["reference"], survivor_ref);
    let survivor = &patients(&gw, &new).await[0];
    let nhs_numbers: Vec<&Value> = survivor["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|id| id["system"] == "https://fhir.nhs.uk/Id/nhs-number")
        .map(|id| &id["value"])
        .collect();
    assert_eq!(nhs_numbers, [&Value::from(new.clone())], "{survivor}");

    // With an untraced record of the same hospital numbers to absorb, the
    // message would change the survivor: refused as a clash, as before.
    let untraced = adt(
        "A04",
        "W5",
        "202610251500",
        "K99^^^RJZ^MR",
        Some(&pv1("E", "E99", "202610251450", "")),
    );
    assert_eq!(send(&mut c, &untraced).await.0, "AA");
    let both = adt(
        "A31",
        "W6",
        "202610251510",
        &format!("K99^^^RJZ^MR~{old}^^^NHS^NH"),
        None,
    );
    let (code, _, err) = send(&mut c, &both).await;
    assert_eq!((code.as_str(), err.as_str()), ("AE", "PID^1^3"));
    assert_eq!(
        patients(&gw, &new).await[0]["identifier"],
        survivor["identifier"]
    );

    // A survivor with no NHS number is traced by a message carrying the
    // merged-away record's, as any untraced record is.
    let (gone, kept) = (nhs_number(886), "K86");
    let traced = adt(
        "A28",
        "W7",
        "202610251600",
        &format!("K85^^^RJZ^MR~{gone}^^^NHS^NH"),
        None,
    );
    assert_eq!(send(&mut c, &traced).await.0, "AA");
    let bare = adt(
        "A28",
        "W8",
        "202610251601",
        &format!("{kept}^^^RJZ^MR"),
        None,
    );
    assert_eq!(send(&mut c, &bare).await.0, "AA");
    let merge = a40(
        "W9",
        "202610251700",
        &format!("{kept}^^^RJZ^MR"),
        "K85^^^RJZ^MR",
    );
    assert_eq!(send(&mut c, &merge).await.0, "AA");
    let update = adt(
        "A31",
        "W10",
        "202610251800",
        &format!("{kept}^^^RJZ^MR~{gone}^^^NHS^NH"),
        None,
    );
    assert_eq!(send(&mut c, &update).await.0, "AA");
    let found = patients(&gw, kept).await;
    let active: Vec<&Value> = found.iter().filter(|p| p["active"] != false).collect();
    assert_eq!(active.len(), 1, "{found:#?}");
    assert!(
        active[0]["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .any(|id| id["value"] == gone.as_str()),
        "the survivor was not traced: {:#}",
        active[0]
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_that_arrives_before_the_merged_record_still_converges() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let nhs = nhs_number(889);
    let a40 = a40(
        "Q2",
        "202610251400",
        &format!("{nhs}^^^NHS^NH"),
        "U99^^^RJZ^MR",
    );
    assert_eq!(send(&mut c, &a40).await.0, "AA");
    let ed = pv1("E", "E99", "202610251150", "");
    let unknown = |m: String| m.replace("PAGE^Margaret^^^MRS", "UNKNOWN^Male");
    let a04 = adt("A04", "Q1", "202610251158", "U99^^^RJZ^MR", Some(&ed));
    assert_eq!(send(&mut c, &unknown(a04)).await.0, "AA");

    // As if the A04 had come first: U99's record retired into the survivor.
    let found = patients(&gw, "U99").await;
    assert_eq!(found.len(), 1, "{found:#?}");
    let survivor = &patients(&gw, &nhs).await[0];
    let survivor_ref = format!("Patient/{}", survivor["id"].as_str().unwrap());
    assert_eq!(found[0]["active"], false, "{found:#?}");
    assert_eq!(found[0]["link"][0]["type"], "replaced-by");
    assert_eq!(found[0]["link"][0]["other"]["reference"], survivor_ref);
    assert_eq!(survivor["link"][0]["type"], "replaces", "{survivor:#}");
    assert_eq!(
        survivor["link"][0]["other"]["reference"],
        format!("Patient/{}", found[0]["id"].as_str().unwrap())
    );
    assert_eq!(
        encounter(&gw, "E99").await["subject"]["reference"],
        survivor_ref
    );
    // What a message of the merged-away record says of it is not the
    // survivor's: its placeholder name, sent after the merge, is not taken.
    let a08 = adt("A08", "Q3", "202610251430", "U99^^^RJZ^MR", Some(&ed));
    assert_eq!(send(&mut c, &unknown(a08)).await.0, "AA");
    let survivor = &patients(&gw, &nhs).await[0];
    assert_eq!(survivor["name"][0]["family"], "PAGE", "{survivor:#}");
    assert_eq!(survivor["active"], Value::Null, "{survivor:#}");
    gw.stop().await;
}

/// An A40 merging a traced record, ahead of that record's own messages:
/// they land on the survivor, as they do when they come first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_of_a_traced_record_that_arrives_first_still_converges() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let (kept, gone) = (nhs_number(3101), nhs_number(3201));
    let b = adt(
        "A28",
        "T1",
        "202610250900",
        &format!("K2^^^RJZ^MR~{kept}^^^NHS^NH"),
        None,
    );
    assert_eq!(send(&mut c, &b).await.0, "AA");
    let merge = a40(
        "T2",
        "202610251400",
        &format!("K2^^^RJZ^MR~{kept}^^^NHS^NH"),
        "K1^^^RJZ^MR",
    );
    assert_eq!(send(&mut c, &merge).await.0, "AA");
    let late = adt(
        "A01",
        "T3",
        "202610251000",
        &format!("K1^^^RJZ^MR~{gone}^^^NHS^NH"),
        Some(&pv1("I", "V31", "202610251000", "")),
    )
    .replace("PAGE^Margaret^^^MRS", "OTHER^Name");
    assert_eq!(
        send(&mut c, &late).await,
        ("AA".into(), "T3".into(), String::new())
    );
    let survivor = &patients(&gw, &kept).await[0];
    assert_eq!(
        encounter(&gw, "V31").await["subject"]["reference"],
        format!("Patient/{}", survivor["id"].as_str().unwrap())
    );
    // The survivor keeps its own NHS number and details.
    assert_eq!(survivor["name"][0]["family"], "PAGE", "{survivor:#}");
    assert!(!survivor.to_string().contains(&gone), "{survivor:#}");
    gw.stop().await;
}

/// Two merges in a chain, A into B then B into C, arriving in the reverse
/// order: all three end on C, as in the order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_merges_arriving_in_reverse_order_end_on_the_last_survivor() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let (na, nb, nc) = (nhs_number(3301), nhs_number(3401), nhs_number(3501));
    for (id, pid3, visit) in [
        ("C1", format!("HA^^^RJZ^MR~{na}^^^NHS^NH"), "VA"),
        ("C2", format!("HB^^^RJZ^MR~{nb}^^^NHS^NH"), "VB"),
        ("C3", format!("HC^^^RJZ^MR~{nc}^^^NHS^NH"), "VC"),
    ] {
        let admit = adt(
            "A01",
            id,
            "202610250900",
            &pid3,
            Some(&pv1("I", visit, "202610250900", "")),
        );
        assert_eq!(send(&mut c, &admit).await.0, "AA");
    }
    let b_into_c = a40(
        "C5",
        "202610251500",
        &format!("HC^^^RJZ^MR~{nc}^^^NHS^NH"),
        "HB^^^RJZ^MR",
    );
    let a_into_b = a40(
        "C4",
        "202610251400",
        &format!("HB^^^RJZ^MR~{nb}^^^NHS^NH"),
        "HA^^^RJZ^MR",
    );
    assert_eq!(send(&mut c, &b_into_c).await.0, "AA");
    assert_eq!(
        send(&mut c, &a_into_b).await,
        ("AA".into(), "C4".into(), String::new())
    );
    let last = &patients(&gw, &nc).await[0];
    let last_ref = format!("Patient/{}", last["id"].as_str().unwrap());
    for visit in ["VA", "VB", "VC"] {
        assert_eq!(
            encounter(&gw, visit).await["subject"]["reference"],
            last_ref,
            "{visit}"
        );
    }
    for gone in [&na, &nb] {
        let found = patients(&gw, gone).await;
        assert_eq!(found[0]["active"], false, "{found:#?}");
        assert_eq!(found[0]["link"][0]["other"]["reference"], last_ref);
    }
    assert!(!last["identifier"].to_string().contains(&nb), "{last:#}");
    // The first merge sent again under a new MSH-10: both records are in C
    // already, so nothing to do (not a merge back the other way).
    let again = a_into_b.replace("|C4|", "|C6|");
    assert_eq!(
        send(&mut c, &again).await,
        ("AA".into(), "C6".into(), String::new())
    );
    gw.stop().await;
}

/// An A40 the other way round (B into A, after A into B) does not undo the
/// first merge silently: it is an `AE` at MRG-1, for an untraced and for a
/// traced merged-away record, and the first merge stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_back_the_other_way_is_refused() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    for (n, gone) in [
        (0, "HA0^^^RJZ^MR".to_string()),
        (1, format!("HA1^^^RJZ^MR~{}^^^NHS^NH", nhs_number(3901))),
    ] {
        let kept = format!("HB{n}^^^RJZ^MR~{}^^^NHS^NH", nhs_number(3951 + n));
        for (id, pid3) in [("A", &gone), ("B", &kept)] {
            let a28 = adt("A28", &format!("M{n}{id}"), "202610250900", pid3, None);
            assert_eq!(send(&mut c, &a28).await.0, "AA");
        }
        let first = a40(
            &format!("M{n}1"),
            "202610251400",
            &kept,
            &format!("HA{n}^^^RJZ^MR"),
        );
        assert_eq!(send(&mut c, &first).await.0, "AA");
        let back = a40(
            &format!("M{n}2"),
            "202610251500",
            &gone,
            &format!("HB{n}^^^RJZ^MR"),
        );
        let (code, _, err) = send(&mut c, &back).await;
        assert_eq!((code.as_str(), err.as_str()), ("AE", "MRG^1^1"), "{n}");
        let survivor = &patients(&gw, &format!("HB{n}")).await[0];
        assert_eq!(survivor["active"], Value::Null, "{survivor:#}");
        let merged = &patients(&gw, &format!("HA{n}")).await[0];
        assert_eq!(merged["active"], false, "{merged:#}");
    }
    gw.stop().await;
}

/// A visit number is one patient's: a message naming it for another is an
/// `AE` at PV1-19, and the visit stays where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visit_named_for_another_patient_is_refused() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let (x, y) = (nhs_number(3601), nhs_number(3701));
    let ed = pv1("E", "V36", "202610251000", "");
    let first = adt(
        "A04",
        "S1",
        "202610251000",
        &format!("{x}^^^NHS^NH"),
        Some(&ed),
    );
    assert_eq!(send(&mut c, &first).await.0, "AA");
    let other = adt(
        "A08",
        "S2",
        "202610251100",
        &format!("{y}^^^NHS^NH"),
        Some(&ed),
    );
    let (code, _, err) = send(&mut c, &other).await;
    assert_eq!(code, "AE");
    assert!(err.starts_with("PV1^1^19"), "{err}");
    let owner = &patients(&gw, &x).await[0];
    assert_eq!(
        encounter(&gw, "V36").await["subject"]["reference"],
        format!("Patient/{}", owner["id"].as_str().unwrap())
    );
    assert!(patients(&gw, &y).await.is_empty());
    // Its subject rewritten through REST as a versioned reference: still
    // X's visit.
    let mut visit = encounter(&gw, "V36").await;
    let subject = format!("Patient/{}/_history/1", owner["id"].as_str().unwrap());
    visit["subject"]["reference"] = Value::String(subject);
    let id = visit["id"].as_str().unwrap().to_string();
    let put = gw.put(&format!("Encounter/{id}"), &visit).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    let update = adt(
        "A08",
        "S5",
        "202610251200",
        &format!("{x}^^^NHS^NH"),
        Some(&ed),
    );
    assert_eq!(send(&mut c, &update).await.0, "AA");
    // An untraced patient's visit, then a message with another hospital
    // number and no NHS number for it: refused too.
    let ed = pv1("E", "V37", "202610251000", "");
    let first = adt("A04", "S3", "202610251000", "U37^^^RJZ^MR", Some(&ed));
    assert_eq!(send(&mut c, &first).await.0, "AA");
    let other = adt("A08", "S4", "202610251100", "U38^^^RJZ^MR", Some(&ed));
    assert_eq!(send(&mut c, &other).await.0, "AE");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_updating_a_record_written_through_rest_keeps_its_bytes() {
    // A patient the feed created, then rewritten through REST with its name's
    // members in another order and a decimal the default float parser
    // cannot read back exactly; then an A08 that adds a hospital number.
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let nhs = nhs_number(77);
    let a04 = adt(
        "A04",
        "R1",
        "202610251158",
        &format!("{nhs}^^^NHS^NH"),
        Some(&pv1("E", "E77", "202610251150", "")),
    );
    assert_eq!(send(&mut c, &a04).await.0, "AA");
    let mut patient = patients(&gw, &nhs).await[0].clone();
    let id = patient["id"].as_str().unwrap().to_string();
    let name = patient["name"][0].as_object().unwrap().clone();
    let reversed: serde_json::Map<String, Value> = name.into_iter().rev().collect();
    patient["name"][0] = Value::Object(reversed.clone());
    patient["identifier"][0]["period"] = serde_json::json!({"start": "2020-01-01"});
    patient["identifier"][0]["extension"] = serde_json::json!([{
        "url": "https://fhir.onebromley.nhs.uk/StructureDefinition/test-score",
        "valueDecimal": 1e-25
    }]);
    let put = gw.put(&format!("Patient/{id}"), &patient).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);

    let a08 = adt(
        "A08",
        "R2",
        "202610251300",
        &format!("{nhs}^^^NHS^NH~H77^^^RJZ^MR"),
        Some(&pv1("E", "E77", "202610251150", "")),
    );
    let ack = c.send(a08.as_bytes()).await.expect("ACK");
    assert!(
        ack.windows(7).any(|w| w == b"MSA|AA|"),
        "{}",
        String::from_utf8_lossy(&ack)
    );
    // And once more, from what the store now holds.
    let a08 = adt(
        "A08",
        "R3",
        "202610251310",
        &format!("{nhs}^^^NHS^NH~H78^^^RJZ^MR"),
        Some(&pv1("E", "E77", "202610251150", "")),
    );
    assert_eq!(send(&mut c, &a08).await.0, "AA");
    let stored = gw.get(&format!("Patient/{id}")).await;
    assert!(
        stored.text.contains("H77") && stored.text.contains("H78"),
        "{}",
        stored.text
    );
    let name_text = serde_json::to_string(&Value::Object(reversed)).unwrap();
    assert!(stored.text.contains(&name_text), "{}", stored.text);
    assert_eq!(
        stored.json["identifier"][0]["extension"][0]["valueDecimal"],
        1e-25
    );
    // The NHS number identifier keeps what REST added to it.
    assert_eq!(
        stored.json["identifier"][0]["period"]["start"], "2020-01-01",
        "{}",
        stored.text
    );
    gw.stop().await;
}

/// Every message about a patient repeats the same PID, and the feed reuses
/// what it read from it the first time. A message whose PID is the same as
/// before must still bring the record back to what it says when something
/// else changed the record meanwhile (here a REST update of the name), and
/// an older one must not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_pid_still_applies_after_the_record_changed_elsewhere() {
    let gw = start().await;
    let mut c = MllpClient::connect(gw.mllp, TIMEOUT).await.unwrap();
    let nhs = nhs_number(9_100);
    let pid3 = format!("K910^^^RJZ^MR~{nhs}^^^NHS^NH");
    let visit = pv1("E", "V910", "202611031935", "");
    let message = |event: &str, id: &str, when: &str| adt(event, id, when, &pid3, Some(&visit));
    assert_eq!(
        send(&mut c, &message("A04", "Q1", "202611031940")).await.0,
        "AA"
    );
    assert_eq!(
        send(&mut c, &message("A08", "Q2", "202611031950")).await.0,
        "AA"
    );
    let found = patients(&gw, &nhs).await;
    assert_eq!(found.len(), 1);
    let id = found[0]["id"].as_str().unwrap().to_string();
    let version = |p: &Value| p["meta"]["versionId"].as_str().unwrap().to_string();
    assert_eq!(version(&found[0]), "1", "the A08 repeats the record");

    // Renamed over REST, with no event clock of its own.
    let mut renamed = found[0].clone();
    renamed["name"][0]["family"] = Value::from("RENAMED");
    let put = gw.put(&format!("Patient/{id}"), &renamed).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);

    // An older message with the same PID fills gaps only: the name stays.
    assert_eq!(
        send(&mut c, &message("A08", "Q3", "202611031945")).await.0,
        "AA"
    );
    let p = &patients(&gw, &nhs).await[0];
    assert_eq!(p["name"][0]["family"], "RENAMED", "{p}");
    assert_eq!(version(p), "2");
    // A later one with the same PID says PAGE again.
    assert_eq!(
        send(&mut c, &message("A08", "Q4", "202611032000")).await.0,
        "AA"
    );
    let p = &patients(&gw, &nhs).await[0];
    assert_eq!(p["name"][0]["family"], "PAGE", "{p}");
    assert_eq!(version(p), "3");
    gw.stop().await;
}
