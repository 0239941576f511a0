//! The SQLite store on its own: group commit under concurrency, the journal.

mod common;

use common::nhs_number;
use pathway_gateway::fhir::ResourceType;
use pathway_gateway::fhir::resource::prepare;
use pathway_gateway::store::sqlite::{SqliteOptions, SqliteStore};
use pathway_gateway::store::{Change, JournalEntry, Mutation, Store, WriteOutcome, WriteRequest};
use pathway_gateway::validate::Validator;
use std::sync::Arc;

fn open(dir: &std::path::Path, max_batch: usize) -> SqliteStore {
    SqliteStore::open(SqliteOptions {
        dir: dir.to_path_buf(),
        max_batch,
        queue: 1024,
        readers: 2,
        outbox_types: None,
    })
    .unwrap()
}

fn validator() -> &'static Validator {
    static VALIDATOR: std::sync::OnceLock<Validator> = std::sync::OnceLock::new();
    VALIDATOR.get_or_init(|| Validator::embedded().unwrap())
}

fn create(nhs: &str) -> WriteRequest {
    let body = format!(
        r#"{{"resourceType":"Patient","identifier":[{{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"{nhs}"}}]}}"#
    );
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
