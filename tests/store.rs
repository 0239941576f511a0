//! The SQLite store on its own: group commit under concurrency, the journal.

mod common;

use common::nhs_number;
use pathway_gateway::fhir::ResourceType;
use pathway_gateway::fhir::resource::prepare;
use pathway_gateway::store::sqlite::{SqliteOptions, SqliteStore};
use pathway_gateway::store::{Change, JournalEntry, Mutation, Store, WriteOutcome, WriteRequest};
use pathway_gateway::validate::Validator;
use std::sync::Arc;

/// Checkpoints every 4 MiB, whatever the gateway's default: the WAL tests
/// below check that it starts over at 16 MiB and stays under its 64 MiB limit.
const CHECKPOINT_BYTES: i64 = 4 * 1024 * 1024;

fn open(dir: &std::path::Path, max_batch: usize) -> SqliteStore {
    SqliteStore::open(SqliteOptions {
        dir: dir.to_path_buf(),
        max_batch,
        queue: 1024,
        readers: 2,
        outbox_types: None,
        cache_resources: 16_384,
        checkpoint_bytes: CHECKPOINT_BYTES,
    })
    .unwrap()
}

fn validator() -> &'static Validator {
    static VALIDATOR: std::sync::OnceLock<Validator> = std::sync::OnceLock::new();
    VALIDATOR.get_or_init(|| Validator::embedded().unwrap())
}

fn create(nhs: &str) -> WriteRequest {
    create_body(&format!(
        r#"{{"resourceType":"Patient","identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{nhs}"}}]}}"#
    ))
}

/// [`create`], the patient with a name `text` (bulk for the WAL tests).
fn create_named(nhs: &str, text: &str) -> WriteRequest {
    create_body(&format!(
        r#"{{"resourceType":"Patient","identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{nhs}"}}],"name":[{{"text":"{text}"}}]}}"#
    ))
}

fn create_body(body: &str) -> WriteRequest {
    WriteRequest {
        mutations: vec![Mutation::Create {
            resource: prepare(body.as_bytes(), Some(ResourceType::Patient), validator()).unwrap(),
            id: pathway_gateway::fhir::new_id(),
            if_none_exist: None,
            full_url: None,
        }],
        atomic: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_committed_in_groups_and_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), 64));
    let mut tasks = Vec::new();
    for i in 0..400 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.write(create(&nhs_number(i))).await
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        match task.await.unwrap().unwrap() {
            WriteOutcome::Applied(results) => {
                let written = results.into_iter().next().unwrap().unwrap();
                assert_eq!(written.change, Change::Created);
                ids.push(written.resource.id);
            }
            other => panic!("{other:?}"),
        }
    }
    store.close().await;
    let reopened = open(dir.path(), 64);
    for id in &ids {
        let stored = reopened.read(ResourceType::Patient, id).await.unwrap();
        assert!(stored.is_some(), "Patient/{id} lost");
    }
    reopened.close().await;
}

#[tokio::test]
async fn journal_keeps_payloads_and_recognises_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 16);
    let entry = JournalEntry {
        source: "hl7v2-mllp".into(),
        sender: "RJ224".into(),
        message_id: Some("MSG00001".into()),
        content_type: "x-application/hl7-v2+er7".into(),
        received_at_ms: 1_700_000_000_000,
        payload: bytes::Bytes::from_static(b"MSH|^~\\&|PAS|RJ224|...\r"),
    };
    let first = store.journal(entry.clone()).await.unwrap();
    assert!(!first.duplicate);
    let repeat = store.journal(entry.clone()).await.unwrap();
    assert!(repeat.duplicate);
    assert_eq!(repeat.id, first.id);
    let other_sender = store
        .journal(JournalEntry {
            sender: "RXH01".into(),
            ..entry.clone()
        })
        .await
        .unwrap();
    assert!(!other_sender.duplicate);
    let no_id = JournalEntry {
        message_id: None,
        ..entry.clone()
    };
    let a = store.journal(no_id.clone()).await.unwrap();
    let b = store.journal(no_id).await.unwrap();
    assert_ne!(a.id, b.id, "entries without a message id are never repeats");
    assert_eq!(store.journal_entry(first.id).await.unwrap(), Some(entry));
    assert_eq!(store.journal_entry(9999).await.unwrap(), None);
    store.close().await;
    // Closed means closed: no write is accepted and silently dropped.
    assert!(store.write(create(&nhs_number(0))).await.is_err());
}

/// An HL7 v2 message is a repeat whichever transport brought it first, and
/// a schema 8 store (its repeat index led by the source) keeps knowing its
/// journal's repeats after the upgrade to schema 9 (led by the sender).
#[tokio::test]
async fn journal_repeats_over_either_transport_survive_the_schema_9_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let entry = |source: &str, message_id: &str| JournalEntry {
        source: source.into(),
        sender: "PAS@RJZ".into(),
        message_id: Some(message_id.into()),
        content_type: "x-application/hl7-v2+er7".into(),
        received_at_ms: 1_700_000_000_000,
        payload: bytes::Bytes::from_static(b"MSH|^~\\&|PAS|RJZ|...\r"),
    };
    let store = open(dir.path(), 16);
    let first = store.journal(entry("hl7v2-mllp", "M1")).await.unwrap();
    let over_http = store.journal(entry("hl7v2-http", "M1")).await.unwrap();
    assert!(over_http.duplicate);
    assert_eq!(over_http.id, first.id);
    // Another source with the same sender and id is no repeat of it.
    let gp = store.journal(entry("gp-risk-list", "M1")).await.unwrap();
    assert!(!gp.duplicate);
    store.close().await;

    let path = dir.path().join("gateway.sqlite");
    let db = rusqlite::Connection::open(&path).unwrap();
    // A message journaled over both transports (as a store written before
    // repeats were matched across them holds it): a repeat over either is
    // the MLLP entry's, as when each source was looked up in turn.
    let mut both = Vec::new();
    for source in ["hl7v2-mllp", "hl7v2-http"] {
        db.execute(
            "INSERT INTO journal(received_at, source, sender, message_id, content_type, payload) \
             VALUES (1, ?1, 'PAS@RJZ', 'M0', 'x-application/hl7-v2+er7', x'00')",
            [source],
        )
        .unwrap();
        both.push((source, db.last_insert_rowid()));
    }
    common::make_schema_8(&db);
    drop(db);

    let store = open(dir.path(), 16);
    for (source, id) in [
        ("hl7v2-http", first.id),
        ("hl7v2-mllp", first.id),
        ("gp-risk-list", gp.id),
    ] {
        let again = store.journal(entry(source, "M1")).await.unwrap();
        assert!(again.duplicate, "{source}");
        assert_eq!(again.id, id, "{source}");
    }
    let mllp = both[0].1;
    for (source, _) in both {
        let again = store.journal(entry(source, "M0")).await.unwrap();
        assert_eq!((again.duplicate, again.id), (true, mllp), "{source}");
    }
    let new = store.journal(entry("hl7v2-http", "M2")).await.unwrap();
    assert!(!new.duplicate);
    let resent = store.journal(entry("hl7v2-mllp", "M2")).await.unwrap();
    assert_eq!((resent.duplicate, resent.id), (true, new.id));
    store.close().await;

    let db = rusqlite::Connection::open(&path).unwrap();
    let indexes: Vec<String> = db
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'journal'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(indexes, ["journal_sent"]);
}

/// An update writes only the index rows that changed: what it drops is no
/// longer found, what it adds is, and what it keeps still is.
#[tokio::test]
async fn updates_keep_the_search_index_exact() {
    use pathway_gateway::fhir::search::parse_search;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 64);
    let encounter = |ids: &[&str], status: &str, start: &str| {
        let ids: Vec<String> = ids
            .iter()
            .map(|v| format!(r#"{{"system":"urn:test","value":"{v}"}}"#))
            .collect();
        format!(
            r#"{{"resourceType":"Encounter","identifier":[{}],"status":"{status}","class":{{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"EMER"}},"subject":{{"reference":"Patient/p1"}},"period":{{"start":"{start}"}}}}"#,
            ids.join(",")
        )
    };
    let write = |body: String, update: Option<(String, i64)>| {
        let resource =
            prepare(body.as_bytes(), Some(ResourceType::Encounter), validator()).unwrap();
        let mutation = match update {
            None => Mutation::Create {
                resource,
                id: "e1".to_string(),
                if_none_exist: None,
                full_url: None,
            },
            Some((id, version)) => Mutation::Update {
                resource,
                id,
                if_match: Some(version),
                full_url: None,
            },
        };
        WriteRequest {
            mutations: vec![mutation],
            atomic: true,
        }
    };
    let ids = |pairs: &[(&str, &str)]| {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_search(ResourceType::Encounter, &pairs, true)
            .unwrap()
            .0
    };
    let found = async |store: &SqliteStore, pairs: &[(&str, &str)]| {
        store.search(&ids(pairs)).await.unwrap().total
    };
    store
        .write(write(
            encounter(&["A", "B"], "in-progress", "2026-07-14T10:15:00+01:00"),
            None,
        ))
        .await
        .unwrap();
    store
        .write(write(
            encounter(&["B", "C"], "finished", "2026-07-15T10:15:00+01:00"),
            Some(("e1".to_string(), 1)),
        ))
        .await
        .unwrap();
    assert_eq!(found(&store, &[("identifier", "A")]).await, 0);
    assert_eq!(found(&store, &[("identifier", "B")]).await, 1);
    assert_eq!(found(&store, &[("identifier", "C")]).await, 1);
    assert_eq!(found(&store, &[("status", "in-progress")]).await, 0);
    assert_eq!(found(&store, &[("status", "finished")]).await, 1);
    // The period is open (no end): the old start would match `lt`.
    assert_eq!(found(&store, &[("date", "lt2026-07-15")]).await, 0);
    assert_eq!(found(&store, &[("date", "ge2026-07-15")]).await, 1);
    assert_eq!(found(&store, &[("subject", "Patient/p1")]).await, 1);
    store.close().await;
}

/// Schema 7 keeps each resource's event clock and its version's row beside
/// it in `current`, and schema 8 the feed's member times with the clock: a
/// schema 6 or 7 store keeps its clocks (without member times) and reads
/// through the upgrade.
#[tokio::test]
async fn schema_6_and_7_stores_are_upgraded_with_their_event_clocks() {
    for make in [common::make_schema_6, common::make_schema_7] {
        upgraded_with_event_clocks(make).await;
    }
}

async fn upgraded_with_event_clocks(make: fn(&rusqlite::Connection)) {
    use pathway_gateway::store::{Clock, EventClock, IngestOutcome, IngestRequest};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 64);
    let clock = |event_ms, members: Option<&str>| Clock {
        event_ms,
        members: members.map(str::to_string),
    };
    let mut ids = Vec::new();
    for (i, event_ms) in [(1, Some(1_700_000_000_000)), (2, None)] {
        let request = create(&nhs_number(60 + i));
        let id = match &request.mutations[0] {
            Mutation::Create { id, .. } => id.clone(),
            _ => unreachable!(),
        };
        let outcome = store
            .ingest(IngestRequest {
                journal: None,
                write: Some(request),
                quarantine: Vec::new(),
                clocks: event_ms
                    .map(|event_ms| EventClock {
                        resource_type: ResourceType::Patient,
                        id: id.clone(),
                        clock: clock(event_ms, Some("name=1700000000000")),
                        planned: None,
                    })
                    .into_iter()
                    .collect(),
                replays: None,
            })
            .await
            .unwrap();
        assert!(matches!(outcome, IngestOutcome::Done { .. }));
        ids.push(id);
    }
    // A clock is set as the request has it, on the state it was planned on.
    let set = clock(
        1_700_000_500_000,
        Some("name=1700000000000;address=1700000500000"),
    );
    let outcome = store
        .ingest(IngestRequest {
            journal: None,
            write: None,
            quarantine: Vec::new(),
            clocks: vec![EventClock {
                resource_type: ResourceType::Patient,
                id: ids[0].clone(),
                clock: set.clone(),
                planned: Some((
                    1,
                    Some(clock(1_700_000_000_000, Some("name=1700000000000"))),
                )),
            }],
            replays: None,
        })
        .await
        .unwrap();
    assert!(matches!(outcome, IngestOutcome::Done { .. }), "{outcome:?}");
    let clocks = store
        .event_clocks(ResourceType::Patient, &ids)
        .await
        .unwrap();
    assert_eq!(clocks, [Some(set.clone()), None]);
    store.close().await;

    let path = dir.path().join("gateway.sqlite");
    let db = rusqlite::Connection::open(&path).unwrap();
    make(&db);
    drop(db);

    // The clock stands for every member now (no member times).
    let upgraded = clock(1_700_000_500_000, None);
    let store = open(dir.path(), 64);
    let unknown = "no-such-patient".to_string();
    let clocks = store
        .event_clocks(
            ResourceType::Patient,
            &[ids[0].clone(), ids[1].clone(), unknown],
        )
        .await
        .unwrap();
    assert_eq!(clocks, [Some(upgraded.clone()), None, None]);
    let key = [(
        "https://fhir.nhs.uk/Id/nhs-number".to_string(),
        nhs_number(61),
    )];
    let found = store
        .by_identifier_clocked(&[(ResourceType::Patient, &key)])
        .await
        .unwrap();
    assert_eq!(found[0].len(), 1);
    assert_eq!(found[0][0].0.id, ids[0]);
    assert_eq!(found[0][0].1, Some(upgraded));
    let read = store
        .read(ResourceType::Patient, &ids[1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.version, 1);
    assert!(read.body.contains(&nhs_number(62)));
    store.close().await;

    let db = rusqlite::Connection::open(&path).unwrap();
    let tables: i64 = db
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'event_clock'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
    let unpointed: i64 = db
        .query_row("SELECT count(*) FROM current WHERE vrow IS NULL", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(unpointed, 0);
}

#[tokio::test]
async fn a_schema_5_store_is_upgraded_with_its_history_and_exact_search_index() {
    use pathway_gateway::fhir::search::parse_search;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 64);
    let nhs = nhs_number(41);
    let WriteOutcome::Applied(results) = store.write(create(&nhs)).await.unwrap() else {
        panic!("created")
    };
    let id = results[0].as_ref().unwrap().resource.id.clone();
    let patient = format!(
        r#"{{"resourceType":"Patient","id":"{id}","identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{nhs}"}}],"gender":"female"}}"#
    );
    let encounter = |identifier: &str, start: &str| {
        format!(
            r#"{{"resourceType":"Encounter","identifier":[{{"system":"urn:test","value":"{identifier}"}}],"status":"in-progress","class":{{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"EMER"}},"subject":{{"reference":"Patient/{id}"}},"period":{{"start":"{start}"}}}}"#
        )
    };
    let update = |ty: ResourceType, id: &str, body: String, version: i64| WriteRequest {
        mutations: vec![Mutation::Update {
            resource: prepare(body.as_bytes(), Some(ty), validator()).unwrap(),
            id: id.to_string(),
            if_match: Some(version),
            full_url: None,
        }],
        atomic: true,
    };
    let applied =
        |outcome: WriteOutcome| matches!(outcome, WriteOutcome::Applied(r) if r[0].is_ok());
    assert!(applied(
        store
            .write(update(ResourceType::Patient, &id, patient, 1))
            .await
            .unwrap()
    ));
    let first = encounter("A", "2026-07-14T10:15:00+01:00");
    let made = WriteRequest {
        mutations: vec![Mutation::Create {
            resource: prepare(first.as_bytes(), Some(ResourceType::Encounter), validator())
                .unwrap(),
            id: "e1".to_string(),
            if_none_exist: None,
            full_url: None,
        }],
        atomic: true,
    };
    assert!(applied(store.write(made).await.unwrap()));
    store.close().await;

    // Make the file what schema 5 wrote.
    let path = dir.path().join("gateway.sqlite");
    let db = rusqlite::Connection::open(&path).unwrap();
    common::make_schema_5(&db);
    drop(db);

    let store = open(dir.path(), 64);
    let history = store.history(ResourceType::Patient, &id).await.unwrap();
    assert_eq!(
        history.iter().map(|s| s.version).collect::<Vec<_>>(),
        [2, 1]
    );
    assert!(history[0].body.contains(r#""gender":"female""#));
    let v1 = store
        .vread(ResourceType::Patient, &id, 1)
        .await
        .unwrap()
        .unwrap();
    assert!(!v1.body.contains("gender"));
    // An update after the upgrade removes exactly the index rows that no
    // longer hold: the upgrade recorded them.
    let moved = encounter("B", "2026-07-15T10:15:00+01:00");
    assert!(applied(
        store
            .write(update(ResourceType::Encounter, "e1", moved, 1))
            .await
            .unwrap()
    ));
    let found = async |pairs: &[(&str, String)]| {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let query = parse_search(ResourceType::Encounter, &pairs, true)
            .unwrap()
            .0;
        store.search(&query).await.unwrap().total
    };
    assert_eq!(found(&[("identifier", "urn:test|A".into())]).await, 0);
    assert_eq!(found(&[("identifier", "urn:test|B".into())]).await, 1);
    assert_eq!(found(&[("identifier", "urn:test|".into())]).await, 1);
    assert_eq!(found(&[("date", "lt2026-07-15".into())]).await, 0);
    assert_eq!(found(&[("date", "ge2026-07-15".into())]).await, 1);
    assert_eq!(found(&[("subject", format!("Patient/{id}"))]).await, 1);
    store.close().await;

    let db = rusqlite::Connection::open(&path).unwrap();
    let sql = |name: &str| -> Option<String> {
        db.query_row(
            "SELECT sql FROM sqlite_schema WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .ok()
    };
    assert!(!sql("versions").unwrap().contains("WITHOUT ROWID"));
    assert!(sql("idx_date").unwrap().contains("WITHOUT ROWID"));
    assert_eq!(sql("idx_token_owner"), None);
    assert_eq!(sql("idx_date_owner"), None);
    let version: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 11);
    assert!(
        sql("quarantine_unjournaled")
            .unwrap()
            .contains("(sender, location) WHERE journal_id IS NULL")
    );
    assert_eq!(sql("event_clock"), None);
    assert_eq!(sql("versions_key"), None);
    let count: i64 = db
        .query_row("SELECT count(*) FROM versions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 4);
    // The upgrade recorded the index rows of what it did not rewrite.
    let keys: String = db
        .query_row(
            "SELECT keys FROM current WHERE type = 'Patient' AND id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    let keys: serde_json::Value = serde_json::from_str(&keys).unwrap();
    assert_eq!(
        keys["t"],
        serde_json::json!([["identifier", nhs, "https://fhir.nhs.uk/Id/nhs-number"]])
    );
}

/// A schema 9 store (versions keyed by `versions_key`) is upgraded to
/// versions chained through `versions.prev`: every version of every
/// resource is read back as before, whatever order their rows were written
/// in, and versions written after the upgrade join the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_9_store_is_upgraded_to_chained_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 64);
    // Three patients, their versions' rows interleaved.
    let mut patients = Vec::new();
    for i in 0..3 {
        let nhs = nhs_number(70 + i);
        let made = written(store.write(create_named(&nhs, "v1")).await.unwrap());
        patients.push((made.id, nhs));
    }
    for version in 2..=4 {
        for (id, nhs) in &patients {
            let text = format!("v{version}");
            written(
                store
                    .write(update_named(id, nhs, version - 1, &text))
                    .await
                    .unwrap(),
            );
        }
    }
    store.close().await;

    let path = dir.path().join("gateway.sqlite");
    let db = rusqlite::Connection::open(&path).unwrap();
    common::make_schema_9(&db);
    // A history missing a version (edited by hand) still reads whole.
    let gap = &patients[2].0;
    db.execute(
        "DELETE FROM versions WHERE type = 'Patient' AND id = ?1 AND version = 2",
        [gap],
    )
    .unwrap();
    drop(db);

    let store = open(dir.path(), 64);
    let texts = |history: &[pathway_gateway::store::Stored]| -> Vec<(i64, String)> {
        history
            .iter()
            .map(|s| {
                let v: serde_json::Value = serde_json::from_str(&s.body).unwrap();
                (
                    s.version,
                    v["name"][0]["text"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    for (id, _) in &patients {
        let held: Vec<i64> = if id == gap {
            vec![4, 3, 1]
        } else {
            vec![4, 3, 2, 1]
        };
        let history = store.history(ResourceType::Patient, id).await.unwrap();
        assert_eq!(
            texts(&history),
            held.iter()
                .map(|v| (*v, format!("v{v}")))
                .collect::<Vec<_>>()
        );
        assert!(history.iter().all(|s| s.body.contains(id.as_str())));
        for version in 1..=4 {
            let read = store
                .vread(ResourceType::Patient, id, version)
                .await
                .unwrap();
            let expected = held.contains(&version).then_some(version);
            assert_eq!(read.map(|s| s.version), expected);
        }
        for missing in [0, 5, -1] {
            assert!(
                store
                    .vread(ResourceType::Patient, id, missing)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
    }
    assert!(
        store
            .vread(ResourceType::Patient, "no-such-id", 1)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .history(ResourceType::Patient, "no-such-id")
            .await
            .unwrap()
            .is_empty()
    );
    // A version written after the upgrade joins its resource's chain.
    let (id, nhs) = &patients[1];
    written(store.write(update_named(id, nhs, 4, "v5")).await.unwrap());
    let history = store.history(ResourceType::Patient, id).await.unwrap();
    assert_eq!(
        history.iter().map(|s| s.version).collect::<Vec<_>>(),
        [5, 4, 3, 2, 1]
    );
    let v3 = store
        .vread(ResourceType::Patient, id, 3)
        .await
        .unwrap()
        .unwrap();
    assert!(v3.body.contains(r#""text":"v3""#));
    store.close().await;

    let db = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 11);
    let key: Option<String> = db
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'versions_key'",
            [],
            |r| r.get(0),
        )
        .ok();
    assert_eq!(key, None);
    // Every version but the first links to the one before it held.
    let unlinked: i64 = db
        .query_row(
            "SELECT count(*) FROM versions v LEFT JOIN versions p ON p.rowid = v.prev \
             WHERE (v.version = 1) != (v.prev IS NULL) \
             OR (v.prev IS NOT NULL AND (p.id IS NOT v.id \
                 OR p.version != v.version - 1 - (v.id = ?1 AND v.version = 3)))",
            [gap],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unlinked, 0);
}

/// Under writes that never pause, with readers at work, the WAL still
/// starts over from its beginning: it stays near its bound (16 MiB) instead
/// of growing with everything written (it grew to 443 MB under 6,000 HL7 v2
/// messages before the writer finished checkpoints itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_writes_that_never_pause() {
    let dir = tempfile::tempdir().unwrap();
    let (largest, database) =
        wal_under_writes_that_never_pause(dir.path(), CHECKPOINT_BYTES, 600).await;
    assert!(
        largest < 40 * 1024 * 1024,
        "the WAL reached {largest} bytes (database {database} bytes)"
    );
}

/// The same at the gateway's default interval (64 MiB: a bound of twice
/// that, a limit of four times), whose passes, written back in steps, take
/// long enough that the writer has written more than it copies itself by
/// the time one ends: the WAL must still start over near its bound, not
/// run to its limit every time (with 16 MiB it reached 128 MiB, its limit
/// then, in the HL7 v2 bench before the checkpoint thread left the writer
/// room to copy). ~375 MB go through the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_near_its_bound_at_the_default_interval() {
    let dir = tempfile::tempdir().unwrap();
    let interval = pathway_gateway::store::sqlite::DEFAULT_CHECKPOINT_BYTES as u64;
    let (largest, database) =
        wal_under_writes_that_never_pause(dir.path(), interval as i64, 1_500).await;
    assert!(
        largest < 2 * interval + 24 * 1024 * 1024,
        "the WAL reached {largest} bytes (database {database} bytes)"
    );
}

/// Six writers creating `per_writer` patients each with 6 KB texts, one
/// request at a time, while two readers look patients up (600 each: about
/// 150 MB through the WAL). Answers the WAL's largest size seen and the
/// database file's size.
async fn wal_under_writes_that_never_pause(
    dir: &std::path::Path,
    checkpoint_bytes: i64,
    per_writer: u32,
) -> (u64, u64) {
    let store = Arc::new(
        SqliteStore::open(SqliteOptions {
            checkpoint_bytes,
            ..options(dir)
        })
        .unwrap(),
    );
    let wal = dir.join("gateway.sqlite-wal");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (store, done) = (store.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let key = [(
                "https://fhir.nhs.uk/Id/nhs-number".to_string(),
                nhs_number(7),
            )];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                store
                    .by_identifier(ResourceType::Patient, &key)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    let padding = "x".repeat(6_000);
    let mut writers = Vec::new();
    for w in 0..6 {
        let (store, padding, wal) = (store.clone(), padding.clone(), wal.clone());
        writers.push(tokio::spawn(async move {
            let mut largest = 0;
            for i in 0..per_writer {
                let request = create_named(&nhs_number(w * 10_000 + i), &padding);
                let outcome = store.write(request).await.unwrap();
                assert!(matches!(outcome, WriteOutcome::Applied(_)));
                largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            }
            largest
        }));
    }
    let mut largest = 0;
    for writer in writers {
        largest = largest.max(writer.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    let database = std::fs::metadata(dir.join("gateway.sqlite")).map_or(0, |m| m.len());
    assert!(
        database > 20_000_000,
        "the database file is {database} bytes: the writes did not get through"
    );
    store.close().await;
    (largest, database)
}

/// Commits larger than the checkpoint thread can catch up with between two
/// of them (a GP list's chunks) still let the WAL start over: the writer
/// copies what is left once the WAL reaches its limit (64 MiB), waiting
/// for a checkpoint pass under way if it must. Without that, the WAL
/// reached 224 MB during a 50,000-row list; without the wait, 73-97 MB
/// here, and once 111 MB (a commit more each time the checkpoint thread
/// was busy). With it, 71.0 MB in twelve runs: the limit and a commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_large_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), 1));
    let wal = dir.path().join("gateway.sqlite-wal");
    // Commits of 100 resources of ~30 KB (3 MB each), from 3 senders so
    // that the next is always queued: about 200 MB through the WAL.
    let padding = "x".repeat(30_000);
    let template: Vec<WriteRequest> = (0..100)
        .map(|i| create_named(&nhs_number(i), &padding))
        .collect();
    let template = Arc::new(template);
    let mut senders = Vec::new();
    for _ in 0..3 {
        let (store, template, wal) = (store.clone(), template.clone(), wal.clone());
        senders.push(tokio::spawn(async move {
            let mut largest = 0;
            for _ in 0..20 {
                let requests = template
                    .iter()
                    .cloned()
                    .map(|mut request| {
                        if let Mutation::Create { id, .. } = &mut request.mutations[0] {
                            *id = pathway_gateway::fhir::new_id();
                        }
                        request
                    })
                    .collect();
                let results = store.write_each(requests).await.unwrap();
                assert!(
                    results
                        .iter()
                        .all(|r| matches!(r, Ok(WriteOutcome::Applied(_))))
                );
                largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            }
            largest
        }));
    }
    let mut largest = 0;
    for sender in senders {
        largest = largest.max(sender.await.unwrap());
    }
    assert!(
        largest < 80 * 1024 * 1024,
        "the WAL reached {largest} bytes"
    );
    // Measured once closed (the WAL copied in): a checkpoint pass still
    // catching up when the last commit returned left 134 MB in the file
    // once, in a full test run.
    store.close().await;
    let database = std::fs::metadata(dir.path().join("gateway.sqlite")).map_or(0, |m| m.len());
    assert!(
        database > 150_000_000,
        "the database file is {database} bytes: the writes did not get through"
    );
}

#[tokio::test]
async fn the_wal_is_checkpointed_into_the_database_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 64);
    let db = dir.path().join("gateway.sqlite");
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let empty = size(&db);
    // Each group commit adds pages to the WAL; past 1,000 pages the
    // checkpoint thread copies them into the database file.
    for group in 0..40 {
        let requests = (0..100)
            .map(|i| create(&nhs_number(group * 100 + i)))
            .collect();
        let results = store.write_each(requests).await.unwrap();
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok(WriteOutcome::Applied(_))))
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size(&db) < empty + 1_000_000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        size(&db) >= empty + 1_000_000,
        "the database file is still {} bytes (WAL {} bytes): nothing was checkpointed",
        size(&db),
        size(&dir.path().join("gateway.sqlite-wal"))
    );
    store.close().await;
    let reopened = open(dir.path(), 64);
    let query = pathway_gateway::fhir::search::parse_search(
        ResourceType::Patient,
        &[(
            "identifier".to_string(),
            "https://fhir.nhs.uk/Id/nhs-number|".to_string(),
        )],
        true,
    )
    .unwrap()
    .0;
    assert_eq!(reopened.search(&query).await.unwrap().total, 4000);
    reopened.close().await;
    // A new store is made with 4 KiB pages (see open_writer).
    let page_size: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap();
    assert_eq!(page_size, 4_096);
}

#[tokio::test]
async fn write_each_applies_each_request_alone_and_a_refused_one_leaves_nothing() {
    use pathway_gateway::store::MutationError;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 64);
    let WriteOutcome::Applied(made) = store.write(create(&nhs_number(1))).await.unwrap() else {
        panic!("created")
    };
    let a = made[0].as_ref().unwrap().resource.id.clone();
    let stale_update = {
        let body = format!(
            r#"{{"resourceType":"Patient","id":"{a}","identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{}"}}],"gender":"male"}}"#,
            nhs_number(1)
        );
        Mutation::Update {
            resource: prepare(body.as_bytes(), Some(ResourceType::Patient), validator()).unwrap(),
            id: a.clone(),
            if_match: Some(2),
            full_url: None,
        }
    };
    // The middle request creates C, then updates A with a stale If-Match:
    // refused whole, so C must not be stored either.
    let mut refused = create(&nhs_number(3));
    refused.mutations.push(stale_update);
    let results = store
        .write_each(vec![
            create(&nhs_number(2)),
            refused,
            create(&nhs_number(4)),
        ])
        .await
        .unwrap();
    assert!(matches!(results[0], Ok(WriteOutcome::Applied(_))));
    assert!(matches!(
        &results[1],
        Ok(WriteOutcome::RolledBack {
            index: 1,
            error: MutationError::VersionConflict { expected: 2, .. }
        })
    ));
    assert!(matches!(results[2], Ok(WriteOutcome::Applied(_))));
    let stored = |n: u32| {
        let store = &store;
        async move {
            store
                .by_identifier(
                    ResourceType::Patient,
                    &[(
                        "https://fhir.nhs.uk/Id/nhs-number".to_string(),
                        nhs_number(n),
                    )],
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(stored(2).await.len(), 1);
    assert_eq!(
        stored(3).await.len(),
        0,
        "the refused request's create was written"
    );
    assert_eq!(stored(4).await.len(), 1);
    let a_now = stored(1).await;
    assert_eq!(a_now[0].version, 1);
    assert!(!a_now[0].body.contains("gender"));
    store.close().await;
}

fn options(dir: &std::path::Path) -> SqliteOptions {
    SqliteOptions {
        dir: dir.to_path_buf(),
        max_batch: 64,
        queue: 1024,
        readers: 2,
        outbox_types: None,
        cache_resources: 16_384,
        checkpoint_bytes: CHECKPOINT_BYTES,
    }
}

/// A request planned on a record whose event clock has moved since (an
/// event that repeated what was stored moves the clock, not the version) is
/// refused whole, its journal entry too, so that its sender plans again: two
/// messages about one record planned on the same state cannot each undo what
/// the other decided.
#[tokio::test]
async fn a_request_planned_on_a_clock_that_has_moved_is_refused_whole() {
    use pathway_gateway::store::{Clock, EventClock, IngestOutcome, IngestRequest, MutationError};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 16);
    let nhs = nhs_number(70);
    let created = store.write(create(&nhs)).await.unwrap();
    let id = written(created).id;
    let at = |event_ms| Clock {
        event_ms,
        members: None,
    };
    // The clock a request sets, and the version and clock it was planned on.
    let clock = |event_ms, planned: Option<(i64, Option<i64>)>| EventClock {
        resource_type: ResourceType::Patient,
        id: id.clone(),
        clock: at(event_ms),
        planned: planned.map(|(version, clock)| (version, clock.map(at))),
    };
    // The record's clock as the store has it.
    let clock_now = || async {
        store
            .event_clocks(ResourceType::Patient, std::slice::from_ref(&id))
            .await
            .unwrap()
    };
    let entry = |message_id: &str| JournalEntry {
        source: "hl7v2-mllp".into(),
        sender: "RJ224".into(),
        message_id: Some(message_id.into()),
        content_type: "x-application/hl7-v2+er7".into(),
        received_at_ms: 1_700_000_000_000,
        payload: bytes::Bytes::from_static(b"MSH|^~\\&|PAS|RJ224|...\r"),
    };
    let ingest = |journal, write, clock| {
        store.ingest(IngestRequest {
            journal: Some(journal),
            write,
            quarantine: Vec::new(),
            clocks: vec![clock],
            replays: None,
        })
    };
    // A newer event that repeats what is stored: the clock moves, the
    // version stays 1.
    let outcome = ingest(entry("M20"), None, clock(20, Some((1, None))))
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        IngestOutcome::Done {
            journal_id: Some(_),
            ..
        }
    ));
    // An older event planned on version 1 before that clock moved: refused,
    // nothing written.
    let stale = ingest(
        entry("M10"),
        Some(update_named(&id, &nhs, 1, "older")),
        clock(10, Some((1, None))),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            &stale,
            IngestOutcome::Done {
                journal_id: None,
                write: Some(WriteOutcome::RolledBack {
                    error: MutationError::VersionConflict { expected: 1, .. },
                    ..
                }),
                ..
            }
        ),
        "{stale:?}"
    );
    let read = store
        .read(ResourceType::Patient, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.version, 1);
    assert!(!read.body.contains("older"));
    assert_eq!(clock_now().await, [Some(at(20))]);
    // Nor was its journal entry kept: sent again, it is not a repeat.
    assert!(!store.journal(entry("M10")).await.unwrap().duplicate);
    // Planned again on what is there now, it is taken (the latest event
    // still the one at 20).
    let again = ingest(
        entry("M10b"),
        Some(update_named(&id, &nhs, 1, "older")),
        clock(20, Some((1, Some(20)))),
    )
    .await
    .unwrap();
    assert!(
        matches!(
            again,
            IngestOutcome::Done {
                write: Some(WriteOutcome::Applied(_)),
                ..
            }
        ),
        "{again:?}"
    );
    assert_eq!(clock_now().await, [Some(at(20))]);
    // One planned on no clock (as for a record the request creates) never
    // replaces a clock.
    let unplanned = ingest(entry("M30"), None, clock(5, None)).await.unwrap();
    assert!(matches!(unplanned, IngestOutcome::Done { .. }));
    assert_eq!(clock_now().await, [Some(at(20))]);
    store.close().await;
}

/// A replay is marked in the commit that applies it: a second replay of the
/// same entry does nothing, and one whose write is refused leaves it held.
#[tokio::test]
async fn a_replay_marks_its_quarantine_entry_in_the_same_commit() {
    use pathway_gateway::store::{IngestOutcome, IngestRequest, QuarantineEntry};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 16);
    let hold = |location: &str| QuarantineEntry {
        source: "hl7v2-mllp".into(),
        sender: "RJ224".into(),
        journal_id: None,
        received_at_ms: 1_700_000_000_000,
        location: location.into(),
        reasons: "[]".into(),
        content_type: "x-application/hl7-v2+er7".into(),
        payload: b"MSH|...".to_vec(),
    };
    let held = store
        .ingest(IngestRequest {
            journal: None,
            write: None,
            quarantine: vec![hold("MSH-10 Q1"), hold("MSH-10 Q2")],
            clocks: Vec::new(),
            replays: None,
        })
        .await
        .unwrap();
    let IngestOutcome::Done { quarantined, .. } = held else {
        panic!("{held:?}")
    };
    let store = &store;
    let replay = |id, write| {
        store.ingest(IngestRequest {
            journal: None,
            write: Some(write),
            quarantine: Vec::new(),
            clocks: Vec::new(),
            replays: Some(id),
        })
    };
    let status = |id| async move { store.quarantined_entry(id).await.unwrap().unwrap().status };
    let nhs = nhs_number(71);
    let done = replay(quarantined[0], create(&nhs)).await.unwrap();
    assert!(
        matches!(
            done,
            IngestOutcome::Done {
                write: Some(WriteOutcome::Applied(_)),
                ..
            }
        ),
        "{done:?}"
    );
    assert_eq!(status(quarantined[0]).await, "replayed");
    // Again (a second request racing the first): nothing done.
    let again = replay(quarantined[0], create(&nhs)).await.unwrap();
    assert!(matches!(again, IngestOutcome::NotHeld), "{again:?}");
    let key = [("https://fhir.nhs.uk/Id/nhs-number".to_string(), nhs.clone())];
    let found = store
        .by_identifier(ResourceType::Patient, &key)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "applied once");
    // A replay whose write is refused leaves its entry held.
    let refused = replay(quarantined[1], update_named("no-such-id", &nhs, 3, "x"))
        .await
        .unwrap();
    assert!(
        matches!(
            refused,
            IngestOutcome::Done {
                write: Some(WriteOutcome::RolledBack { .. }),
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(status(quarantined[1]).await, "held");
    store.close().await;
}

/// Patient `id` at `if_match` with the name `text`.
fn update_named(id: &str, nhs: &str, if_match: i64, text: &str) -> WriteRequest {
    let body = format!(
        r#"{{"resourceType":"Patient","id":"{id}","identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{nhs}"}}],"name":[{{"text":"{text}"}}]}}"#
    );
    WriteRequest {
        mutations: vec![Mutation::Update {
            resource: prepare(body.as_bytes(), Some(ResourceType::Patient), validator()).unwrap(),
            id: id.to_string(),
            if_match: Some(if_match),
            full_url: None,
        }],
        atomic: true,
    }
}

fn written(outcome: WriteOutcome) -> pathway_gateway::store::Stored {
    match outcome {
        WriteOutcome::Applied(mut results) => results.remove(0).unwrap().resource,
        other => panic!("not applied: {other:?}"),
    }
}

#[tokio::test]
async fn a_serving_store_holds_its_directory_alone() {
    use pathway_gateway::store::StoreError;
    let dir = tempfile::tempdir().unwrap();
    let serving = SqliteStore::open_serving(options(dir.path())).unwrap();
    let second = SqliteStore::open_serving(options(dir.path()));
    let Err(err @ StoreError::InUse(_)) = second else {
        panic!("a second serving store opened beside the first");
    };
    assert!(
        err.to_string()
            .contains("in use by another running gateway")
    );
    // A reader beside it (as `report` is) still opens, and sees its writes.
    let made = written(serving.write(create(&nhs_number(1))).await.unwrap());
    let beside = open(dir.path(), 8);
    let seen = beside.read(ResourceType::Patient, &made.id).await.unwrap();
    assert_eq!(seen.map(|s| s.version), Some(1));
    beside.close().await;
    serving.close().await;
    let again = SqliteStore::open_serving(options(dir.path())).unwrap();
    let seen = again.read(ResourceType::Patient, &made.id).await.unwrap();
    assert_eq!(seen.map(|s| s.body), Some(made.body));
    again.close().await;
}

/// A write whose commit cannot be synced is not acknowledged, and from then
/// on nothing is: neither later writes nor reads (by id, from memory, as
/// well as from SQLite) may present what a power loss could take back.
#[tokio::test]
async fn a_store_whose_wal_cannot_be_synced_refuses_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_serving(options(dir.path())).unwrap();
    // The first write opens the WAL to sync it: take the file away first
    // (SQLite writes on through the descriptor it holds).
    std::fs::remove_file(dir.path().join("gateway.sqlite-wal")).unwrap();
    let refused = store.write(create(&nhs_number(1))).await.unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("could not sync its write-ahead log"),
        "{message}"
    );
    let later = store.write(create(&nhs_number(2))).await.unwrap_err();
    assert!(
        later
            .to_string()
            .contains("refused until the gateway is restarted")
    );
    let refused = |err: pathway_gateway::store::StoreError| {
        let message = err.to_string();
        assert!(message.contains("could not sync"), "{message}");
    };
    refused(
        store
            .history(ResourceType::Patient, "any")
            .await
            .unwrap_err(),
    );
    let (query, _) =
        pathway_gateway::fhir::search::parse_search(ResourceType::Patient, &[], true).unwrap();
    refused(store.search(&query).await.unwrap_err());
    refused(store.outbox(10, Vec::new()).await.unwrap_err());
    refused(store.read(ResourceType::Patient, "any").await.unwrap_err());
    // The feeds' lookups, which do not wait for syncs, are refused too, and
    // so is the wait that answers from them.
    let key = [(NHS.to_string(), nhs_number(1))];
    refused(
        store
            .by_identifier(ResourceType::Patient, &key)
            .await
            .unwrap_err(),
    );
    refused(
        store
            .by_identifier_clocked(&[(ResourceType::Patient, &key[..])])
            .await
            .unwrap_err(),
    );
    refused(store.settled().await.unwrap_err());
    store.close().await;
}

/// Reads by id are answered from memory once a serving store holds the
/// resource: each must see every write acknowledged before it began, and
/// no reader may see a resource's versions go backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_memory_follow_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_serving(options(dir.path())).unwrap());
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(written(store.write(create(&nhs_number(n))).await.unwrap()).id);
    }
    let ids = Arc::new(ids);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (store, ids, done) = (store.clone(), ids.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = vec![0i64; ids.len()];
            let mut reads = 0u64;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                for (i, id) in ids.iter().enumerate() {
                    let stored = store
                        .read(ResourceType::Patient, id)
                        .await
                        .unwrap()
                        .unwrap();
                    assert!(
                        stored.version >= seen[i],
                        "{id} went back from version {} to {}",
                        seen[i],
                        stored.version
                    );
                    assert!(
                        stored
                            .body
                            .contains(&format!("\"versionId\":\"{}\"", stored.version))
                    );
                    seen[i] = stored.version;
                    reads += 1;
                }
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    let mut writers = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let (store, id) = (store.clone(), id.clone());
        writers.push(tokio::spawn(async move {
            let nhs = nhs_number(n as u32);
            for version in 1..=40 {
                let text = format!("edit {version}");
                let made = written(
                    store
                        .write(update_named(&id, &nhs, version, &text))
                        .await
                        .unwrap(),
                );
                assert_eq!(made.version, version + 1);
                let read = store
                    .read(ResourceType::Patient, &id)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    read.version, made.version,
                    "a read missed an acknowledged write"
                );
                assert_eq!(read.body, made.body);
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }
    // A refused write changes nothing that is served.
    let outcome = store
        .write(update_named(&ids[0], &nhs_number(0), 3, "stale"))
        .await
        .unwrap();
    assert!(matches!(outcome, WriteOutcome::RolledBack { .. }));
    let read = store
        .read(ResourceType::Patient, &ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.version, 41);
    assert!(read.body.contains("edit 40"));
    // What is served from memory is what SQLite holds.
    let beside = open(dir.path(), 8);
    for id in ids.iter() {
        let from_memory = store.read(ResourceType::Patient, id).await.unwrap();
        let from_sqlite = beside.read(ResourceType::Patient, id).await.unwrap();
        assert_eq!(from_memory, from_sqlite);
    }
    beside.close().await;
    store.close().await;
}

const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";
const MRN: &str = "https://example.org/mrn";

/// Patient `id` with these `(system, value)` identifiers, written with an
/// event clock, as the HL7 v2 feed writes.
async fn put_identified(
    store: &SqliteStore,
    id: &str,
    if_match: Option<i64>,
    identifiers: &[(&str, &str)],
    event_ms: i64,
) {
    use pathway_gateway::store::{Clock, EventClock, IngestOutcome, IngestRequest};
    let identifiers: Vec<String> = identifiers
        .iter()
        .map(|(system, value)| format!(r#"{{"system":"{system}","value":"{value}"}}"#))
        .collect();
    let body = format!(
        r#"{{"resourceType":"Patient","id":"{id}","identifier":[{}]}}"#,
        identifiers.join(",")
    );
    let resource = prepare(body.as_bytes(), Some(ResourceType::Patient), validator()).unwrap();
    // Planned, as the feed plans, on the version and clock it updates.
    let planned = match if_match {
        Some(version) => {
            let clocks = store
                .event_clocks(ResourceType::Patient, &[id.to_string()])
                .await
                .unwrap();
            Some((version, clocks.into_iter().next().flatten()))
        }
        None => None,
    };
    let mutation = match if_match {
        Some(version) => Mutation::Update {
            resource,
            id: id.into(),
            if_match: Some(version),
            full_url: None,
        },
        None => Mutation::Create {
            resource,
            id: id.into(),
            if_none_exist: None,
            full_url: None,
        },
    };
    let outcome = store
        .ingest(IngestRequest {
            journal: None,
            write: Some(WriteRequest {
                mutations: vec![mutation],
                atomic: true,
            }),
            quarantine: Vec::new(),
            clocks: vec![EventClock {
                resource_type: ResourceType::Patient,
                id: id.into(),
                clock: Clock {
                    event_ms,
                    members: None,
                },
                planned,
            }],
            replays: None,
        })
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        IngestOutcome::Done {
            write: Some(WriteOutcome::Applied(_)),
            ..
        }
    ));
}

/// Lookups by identifier, as `(id, version, clock)` per lookup.
async fn looked_up(store: &SqliteStore, keys: &[(&str, &str)]) -> Vec<(String, i64, Option<i64>)> {
    let keys: Vec<(String, String)> = keys
        .iter()
        .map(|(s, v)| (s.to_string(), v.to_string()))
        .collect();
    store
        .by_identifier_clocked(&[(ResourceType::Patient, &keys[..])])
        .await
        .unwrap()
        .remove(0)
        .into_iter()
        .map(|(s, clock)| (s.id, s.version, clock.map(|c| c.event_ms)))
        .collect()
}

/// The HL7 v2 feed's lookups by identifier are answered from memory by the
/// serving store once its writer has published the identifiers; what they
/// answer must be what SQLite holds, through identifiers shared, moved and
/// removed.
#[tokio::test]
async fn lookups_by_identifier_from_memory_match_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_serving(options(dir.path())).unwrap();
    let beside = open(dir.path(), 8);
    let (n1, n2) = (nhs_number(1), nhs_number(2));
    let agree = |keys: Vec<(&'static str, String)>| {
        let (store, beside) = (&store, &beside);
        async move {
            let keys: Vec<(&str, &str)> = keys.iter().map(|(s, v)| (*s, v.as_str())).collect();
            let from_memory = looked_up(store, &keys).await;
            assert_eq!(from_memory, looked_up(beside, &keys).await, "{keys:?}");
            from_memory
        }
    };
    put_identified(&store, "a", None, &[(NHS, &n1), (MRN, "M1")], 1_000).await;
    put_identified(&store, "b", None, &[(NHS, &n2), (MRN, "M1")], 2_000).await;
    let both = agree(vec![(NHS, n1.clone()), (MRN, "M1".into())]).await;
    assert_eq!(
        both,
        vec![("a".into(), 1, Some(1_000)), ("b".into(), 1, Some(2_000))]
    );
    // A's hospital number moves from M1 to M2, by an older event: its
    // clock stays where it was (the clock set is the planner's).
    put_identified(&store, "a", Some(1), &[(NHS, &n1), (MRN, "M2")], 1_000).await;
    assert_eq!(
        agree(vec![(MRN, "M1".into())]).await,
        vec![("b".into(), 1, Some(2_000))]
    );
    assert_eq!(
        agree(vec![(MRN, "M2".into()), (NHS, n1.clone())]).await,
        vec![("a".into(), 2, Some(1_000))]
    );
    assert_eq!(agree(vec![(MRN, "M9".into())]).await, vec![]);

    // Answered from memory: with the index rows removed behind the store's
    // back (what the serving lock exists to prevent), it still finds them.
    let conn = rusqlite::Connection::open(dir.path().join("gateway.sqlite")).unwrap();
    conn.execute("DELETE FROM idx_token WHERE value='M2'", [])
        .unwrap();
    let keys = [(MRN, "M2")];
    assert_eq!(looked_up(&beside, &keys).await, vec![]);
    assert_eq!(
        looked_up(&store, &keys).await,
        vec![("a".into(), 2, Some(1_000))]
    );
    beside.close().await;
    store.close().await;
}

/// Creates a Patient with the identifier `system|value` unless one has it:
/// what happened, and the id of the Patient that has it.
async fn create_unless(store: &SqliteStore, system: &str, value: &str) -> (Change, String) {
    use pathway_gateway::fhir::search::identifier_query;
    let body = format!(
        r#"{{"resourceType":"Patient","identifier":[{{"system":"{system}","value":"{value}"}}]}}"#
    );
    let request = WriteRequest {
        mutations: vec![Mutation::Create {
            resource: prepare(body.as_bytes(), Some(ResourceType::Patient), validator()).unwrap(),
            id: pathway_gateway::fhir::new_id(),
            if_none_exist: Some(identifier_query(
                ResourceType::Patient,
                &[(system.to_string(), value.to_string())],
            )),
            full_url: None,
        }],
        atomic: true,
    };
    let WriteOutcome::Applied(mut results) = store.write(request).await.unwrap() else {
        panic!("applied");
    };
    let written = results.remove(0).unwrap();
    (written.change, written.resource.id)
}

/// A serving store answers a lookup of an identifier it has never indexed
/// (an A04's new patient and visit) from memory, and one it has from
/// SQLite: those already in the store it opens included.
#[tokio::test]
async fn identifiers_never_indexed_are_answered_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_serving(options(dir.path())).unwrap();
    let (n1, n2, n3) = (nhs_number(1), nhs_number(2), nhs_number(3));
    let (n1, n2, n3) = (n1.as_str(), n2.as_str(), n3.as_str());
    put_identified(&store, "a", None, &[(NHS, n1), (MRN, "M1")], 1_000).await;
    store.close().await;

    // Reopened: nothing in memory but the identifiers the store has. (One
    // resource cached, so that identifiers written are soon let go.)
    let store = SqliteStore::open_serving(SqliteOptions {
        cache_resources: 1,
        ..options(dir.path())
    })
    .unwrap();
    let beside = open(dir.path(), 8);
    let a = vec![("a".to_string(), 1, Some(1_000))];
    assert_eq!(looked_up(&store, &[(NHS, n1)]).await, a);
    assert_eq!(looked_up(&store, &[(MRN, "M1"), (NHS, n2)]).await, a);
    assert_eq!(looked_up(&store, &[(NHS, n2)]).await, vec![]);
    // The writer's conditions use the same knowledge.
    assert_eq!(
        create_unless(&store, MRN, "M1").await,
        (Change::Existing, "a".into())
    );

    // From memory: an index row for an identifier the store never had,
    // added behind its back (what the serving lock exists to prevent), is
    // not seen by the serving store...
    let conn = rusqlite::Connection::open(dir.path().join("gateway.sqlite")).unwrap();
    conn.execute(
        "INSERT INTO idx_token(type, param, value, system, id) VALUES ('Patient', 'identifier', ?1, ?2, 'a')",
        [n3, NHS],
    )
    .unwrap();
    assert_eq!(looked_up(&beside, &[(NHS, n3)]).await, a);
    assert_eq!(looked_up(&store, &[(NHS, n3)]).await, vec![]);
    conn.execute("DELETE FROM idx_token WHERE value=?1", [n3])
        .unwrap();

    // ...and one its writer indexes is found from then on, after the cache
    // has let it go too: by a create, by an update adding it, by a bulk job.
    put_identified(&store, "b", None, &[(NHS, n2)], 2_000).await;
    put_identified(
        &store,
        "a",
        Some(1),
        &[(NHS, n1), (MRN, "M1"), (MRN, "M7")],
        1_500,
    )
    .await;
    let n4 = nhs_number(4);
    let results = store.write_each(vec![create(&n4)]).await.unwrap();
    assert!(matches!(results[0], Ok(WriteOutcome::Applied(_))));
    for n in 10..14 {
        put_identified(
            &store,
            &format!("c{n}"),
            None,
            &[(NHS, &nhs_number(n))],
            3_000,
        )
        .await;
    }
    assert_eq!(
        looked_up(&store, &[(NHS, n2)]).await,
        vec![("b".into(), 1, Some(2_000))]
    );
    assert_eq!(
        create_unless(&store, NHS, n2).await,
        (Change::Existing, "b".into())
    );
    assert_eq!(
        looked_up(&store, &[(MRN, "M7")]).await,
        vec![("a".into(), 2, Some(1_500))]
    );
    assert_eq!(looked_up(&store, &[(NHS, &n4)]).await.len(), 1);
    assert_eq!(create_unless(&store, NHS, &n4).await.0, Change::Existing);
    let (change, _) = create_unless(&store, NHS, &nhs_number(20)).await;
    assert_eq!(change, Change::Created);
    beside.close().await;
    store.close().await;
}

/// An identifier on more resources than the cache keeps for one is
/// answered from SQLite, whole.
#[tokio::test]
async fn an_identifier_on_many_resources_is_looked_up_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_serving(options(dir.path())).unwrap();
    for n in 0..70u32 {
        let nhs = nhs_number(n);
        put_identified(
            &store,
            &format!("p{n}"),
            None,
            &[(NHS, &nhs), (MRN, "SHARED")],
            1,
        )
        .await;
        let found = looked_up(&store, &[(MRN, "SHARED")]).await;
        assert_eq!(found.len(), n as usize + 1);
    }
    put_identified(&store, "p0", Some(1), &[(NHS, &nhs_number(0))], 2).await;
    let found = looked_up(&store, &[(MRN, "SHARED")]).await;
    assert_eq!(found.len(), 69);
    assert!(found.iter().all(|(id, _, _)| id != "p0"));

    // Thinned out below the limit, read (and so perhaps kept), then shared
    // again: each lookup still finds exactly the holders SQLite has.
    for n in 1..=10u32 {
        put_identified(
            &store,
            &format!("p{n}"),
            Some(1),
            &[(NHS, &nhs_number(n))],
            2,
        )
        .await;
    }
    let found = looked_up(&store, &[(MRN, "SHARED")]).await;
    assert_eq!(found.len(), 59);
    let removed: Vec<String> = (0..=10).map(|n| format!("p{n}")).collect();
    assert!(found.iter().all(|(id, _, _)| !removed.contains(id)));
    put_identified(
        &store,
        "p1",
        Some(2),
        &[(NHS, &nhs_number(1)), (MRN, "SHARED")],
        3,
    )
    .await;
    let found = looked_up(&store, &[(MRN, "SHARED")]).await;
    assert_eq!(found.len(), 60);
    assert!(found.contains(&("p1".into(), 3, Some(3))));
    store.close().await;
}

/// A transaction resolves its conditions before it writes: a create whose
/// If-None-Exist matched nothing may still share its identifier with an
/// earlier entry of the same transaction, and the lookup must find both.
#[tokio::test]
async fn a_conditional_create_beside_a_plain_one_in_a_transaction_is_looked_up_whole() {
    use pathway_gateway::fhir::search::identifier_query;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_serving(options(dir.path())).unwrap();
    let beside = open(dir.path(), 8);
    let nhs = nhs_number(5);
    let body = format!(
        r#"{{"resourceType":"Patient","identifier":[{{"system":"{NHS}","value":"{nhs}"}}]}}"#
    );
    let prepared = || prepare(body.as_bytes(), Some(ResourceType::Patient), validator()).unwrap();
    let request = WriteRequest {
        mutations: vec![
            Mutation::Create {
                resource: prepared(),
                id: "plain".into(),
                if_none_exist: None,
                full_url: None,
            },
            Mutation::Create {
                resource: prepared(),
                id: "conditional".into(),
                if_none_exist: Some(identifier_query(
                    ResourceType::Patient,
                    &[(NHS.to_string(), nhs.clone())],
                )),
                full_url: None,
            },
        ],
        atomic: true,
    };
    let WriteOutcome::Applied(results) = store.write(request).await.unwrap() else {
        panic!("applied");
    };
    let changes: Vec<Change> = results.into_iter().map(|r| r.unwrap().change).collect();
    assert_eq!(changes, [Change::Created, Change::Created]);
    let from_memory = looked_up(&store, &[(NHS, &nhs)]).await;
    assert_eq!(from_memory.len(), 2, "{from_memory:?}");
    assert_eq!(from_memory, looked_up(&beside, &[(NHS, &nhs)]).await);
    beside.close().await;
    store.close().await;
}

/// What a bulk job (a GP list's chunk) writes is taken out of memory, not
/// put in: reads and lookups after it find its versions in SQLite.
#[tokio::test]
async fn a_bulk_write_takes_what_it_changes_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_serving(options(dir.path())).unwrap();
    let beside = open(dir.path(), 8);
    let nhs = nhs_number(9);
    put_identified(&store, "k", None, &[(NHS, &nhs), (MRN, "B1")], 1).await;
    assert_eq!(looked_up(&store, &[(MRN, "B1")]).await.len(), 1);
    let read = store
        .read(ResourceType::Patient, "k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.version, 1);
    let results = store
        .write_each(vec![update_named("k", &nhs, 1, "bulk")])
        .await
        .unwrap();
    assert!(matches!(results[0], Ok(WriteOutcome::Applied(_))));
    let read = store
        .read(ResourceType::Patient, "k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.version, 2);
    assert!(read.body.contains("bulk"));
    // The update dropped the hospital number B1.
    assert_eq!(looked_up(&store, &[(MRN, "B1")]).await, vec![]);
    assert_eq!(
        looked_up(&store, &[(NHS, &nhs)]).await,
        looked_up(&beside, &[(NHS, &nhs)]).await
    );
    beside.close().await;
    store.close().await;
}

/// Large groups are answered from a thread of their own, small ones by the
/// writer: either way a reader finds what it was told is stored, newest
/// last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_small_groups_are_answered_in_commit_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_serving(options(dir.path())).unwrap());
    for round in 0..5u32 {
        // A large group (200 creates in one bulk job) and small writes
        // behind it on one resource of an earlier round.
        let bulk: Vec<WriteRequest> = (0..200)
            .map(|i| create_named(&nhs_number(round * 1000 + i), "bulk"))
            .collect();
        let large = {
            let store = store.clone();
            tokio::spawn(async move { store.write_each(bulk).await.unwrap() })
        };
        let id = format!("r{round}");
        let nhs = nhs_number(900_000 + round);
        put_identified(&store, &id, None, &[(NHS, &nhs)], 1).await;
        for version in 1..=5 {
            let made = written(
                store
                    .write(update_named(&id, &nhs, version, &format!("v{version}")))
                    .await
                    .unwrap(),
            );
            let read = store
                .read(ResourceType::Patient, &id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(read.version, made.version);
        }
        let results = large.await.unwrap();
        for result in results {
            let WriteOutcome::Applied(mut made) = result.unwrap() else {
                panic!("applied")
            };
            let made = made.remove(0).unwrap().resource;
            let read = store.read(ResourceType::Patient, &made.id).await.unwrap();
            assert_eq!(read.map(|r| r.version), Some(1));
        }
        assert_eq!(
            looked_up(&store, &[(NHS, &nhs)]).await,
            vec![(id.clone(), 6, Some(1))]
        );
    }
    store.close().await;
}

/// An ingest request planned on "no such patient" whose conditional create
/// finds one made meanwhile is refused whole: neither its other writes nor
/// its journal entry are kept, so the sender can plan again with the same
/// entry, which then goes in with the message's whole effect.
#[tokio::test]
async fn an_ingest_whose_create_was_raced_is_refused_whole() {
    use pathway_gateway::fhir::search::identifier_query;
    use pathway_gateway::store::{IngestOutcome, IngestRequest, MutationError};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 8);
    let nhs = nhs_number(42);
    let made_meanwhile = store.write(create(&nhs)).await.unwrap();
    let WriteOutcome::Applied(made) = made_meanwhile else {
        panic!("not applied: {made_meanwhile:?}");
    };
    let existing = made[0].as_ref().unwrap().resource.id.clone();

    let entry = JournalEntry {
        source: "hl7v2-mllp".into(),
        sender: "RJZ".into(),
        message_id: Some("RACED1".into()),
        content_type: "x-application/hl7-v2+er7".into(),
        received_at_ms: 1_700_000_000_000,
        payload: bytes::Bytes::from_static(b"MSH|^~\\&|PAS|RJZ|...\r"),
    };
    let patient = format!(
        r#"{{"resourceType":"Patient","identifier":[{{"system":"{NHS}","value":"{nhs}"}},{{"system":"{MRN}","value":"K1"}}]}}"#
    );
    let encounter = r#"{"resourceType":"Encounter","status":"arrived","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"EMER"},"identifier":[{"system":"https://example.org/visit","value":"V1"}],"subject":{"reference":"urn:uuid:4f8a3c1e-0000-4000-8000-000000000001"}}"#;
    let request = || IngestRequest {
        journal: Some(entry.clone()),
        write: Some(WriteRequest {
            mutations: vec![
                Mutation::Create {
                    resource: prepare(patient.as_bytes(), Some(ResourceType::Patient), validator())
                        .unwrap(),
                    id: pathway_gateway::fhir::new_id(),
                    if_none_exist: Some(identifier_query(
                        ResourceType::Patient,
                        &[(NHS.to_string(), nhs.clone())],
                    )),
                    full_url: Some("urn:uuid:4f8a3c1e-0000-4000-8000-000000000001".into()),
                },
                Mutation::Create {
                    resource: prepare(
                        encounter.as_bytes(),
                        Some(ResourceType::Encounter),
                        validator(),
                    )
                    .unwrap(),
                    id: pathway_gateway::fhir::new_id(),
                    if_none_exist: None,
                    full_url: None,
                },
            ],
            atomic: true,
        }),
        quarantine: Vec::new(),
        clocks: Vec::new(),
        replays: None,
    };
    match store.ingest(request()).await.unwrap() {
        IngestOutcome::Done {
            journal_id: None,
            write:
                Some(WriteOutcome::RolledBack {
                    index: 0,
                    error: MutationError::CreatedMeanwhile(found),
                }),
            ..
        } => assert_eq!(found, format!("Patient/{existing}")),
        other => panic!("not refused as raced: {other:?}"),
    }
    // Nothing of it was kept: no encounter, and the entry is not journaled.
    let visits = store
        .by_identifier(
            ResourceType::Encounter,
            &[("https://example.org/visit".into(), "V1".into())],
        )
        .await
        .unwrap();
    assert!(visits.is_empty(), "{visits:?}");
    let receipt = store.journal(entry.clone()).await.unwrap();
    assert!(
        !receipt.duplicate,
        "the refused request left its journal entry"
    );
    store.close().await;
}
