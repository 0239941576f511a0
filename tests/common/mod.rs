//! Starts a real gateway on a loopback port with its own store, for tests.
#![allow(dead_code)]

pub mod receiver;

use pathway_gateway::config::Config;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::path::PathBuf;
use tokio::sync::oneshot;

pub struct Gateway {
    /// The MLLP listener's address.
    pub mllp: std::net::SocketAddr,
    /// `http://127.0.0.1:PORT/fhir`
    pub fhir: String,
    pub root: String,
    pub client: reqwest::Client,
    pub data: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// One HTTP answer, with its body read as JSON when it is JSON.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts an OperationOutcome, returning its first issue.
    pub fn outcome_issue(&self) -> &Value {
        assert_eq!(
            self.json["resourceType"], "OperationOutcome",
            "expected an OperationOutcome, got {}",
            self.text
        );
        assert!(
            self.header("content-type")
                .starts_with("application/fhir+json"),
            "{:?}",
            self.headers
        );
        &self.json["issue"][0]
    }
}

pub async fn start() -> Gateway {
    start_with(|_| {}).await
}

pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Gateway {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::defaults();
    config.store.dir = dir.path().join("data");
    config.http.shutdown_grace = std::time::Duration::from_secs(5);
    adjust(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // MLLP on a free port too, so that tests can run side by side.
    let mllp_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind MLLP");
    let mllp = mllp_listener.local_addr().expect("MLLP addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let data = config.store.dir.clone();
    let task = tokio::spawn(async move {
        pathway_gateway::server::run_with(config, listener, Some(mllp_listener), async {
            let _ = stopped.await;
        })
        .await
        .expect("gateway runs");
    });
    Gateway {
        mllp,
        fhir: format!("http://{addr}/fhir"),
        root: format!("http://{addr}"),
        client: reqwest::Client::new(),
        data,
        stop: Some(stop),
        task: Some(task),
        _dir: dir,
    }
}

impl Gateway {
    /// Stops the gateway the way SIGTERM does, and waits until it has closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("gateway task");
        }
    }

    /// Stops the gateway the way SIGTERM does and starts another on a copy
    /// of its data directory, as an operator restarts it.
    pub async fn restart(self) -> Gateway {
        let kept = tempfile::tempdir().expect("temp dir");
        let data = kept.path().join("data");
        let from = self.data.clone();
        self.stop_keeping(&from, &data).await;
        let mut restarted = start_with(|config| config.store.dir = data).await;
        // The copy lives as long as the gateway that serves it.
        restarted._dir = kept;
        restarted
    }

    /// Stops the gateway and copies its data directory `from` to `to`
    /// before the temporary directory goes.
    pub async fn stop_keeping(mut self, from: &std::path::Path, to: &std::path::Path) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("gateway task");
        }
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body read");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            text,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.fhir, path.trim_start_matches('/'))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn get_url(&self, url: &str) -> Reply {
        self.send(self.client.get(url)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.fhir_body(self.client.post(self.url(path)), body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(self.fhir_body(self.client.put(self.url(path)), body))
            .await
    }

    /// POST with one extra header (`If-None-Exist`, `Prefer`, …).
    pub async fn post_with(&self, path: &str, body: &Value, header: (&str, &str)) -> Reply {
        let request = self.fhir_body(self.client.post(self.url(path)), body);
        self.send(request.header(header.0, header.1)).await
    }

    /// PUT with one extra header (`If-Match`, …).
    pub async fn put_with(&self, path: &str, body: &Value, header: (&str, &str)) -> Reply {
        let request = self.fhir_body(self.client.put(self.url(path)), body);
        self.send(request.header(header.0, header.1)).await
    }

    pub fn fhir_body(
        &self,
        request: reqwest::RequestBuilder,
        body: &Value,
    ) -> reqwest::RequestBuilder {
        request
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
    }

    /// Follows `next` links from a search, returning every entry's resource.
    pub async fn search_all(&self, path: &str) -> Vec<Value> {
        let mut resources = Vec::new();
        let mut reply = self.get(path).await;
        loop {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
            for entry in reply.json["entry"].as_array().into_iter().flatten() {
                resources.push(entry["resource"].clone());
            }
            let next = reply.json["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(str::to_string);
            match next {
                Some(url) => reply = self.get_url(&url).await,
                None => return resources,
            }
        }
    }
}

pub const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";

pub fn patient(nhs_number: &str, family: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": NHS, "value": nhs_number}],
        "name": [{"family": family, "given": ["Ada"]}],
        "gender": "female",
        "birthDate": "1938-04-12"
    })
}

pub fn encounter(patient_ref: &str, class: &str, start: &str, end: Option<&str>) -> Value {
    let mut period = json!({"start": start});
    if let Some(end) = end {
        period["end"] = json!(end);
    }
    json!({
        "resourceType": "Encounter",
        "identifier": [{"system": "https://fhir.example-trust.nhs.uk/Id/visit", "value": format!("V-{start}")}],
        "status": if end.is_some() { "finished" } else { "in-progress" },
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class},
        "subject": {"reference": patient_ref},
        "period": period
    })
}

pub fn care_plan(patient_ref: &str) -> Value {
    json!({
        "resourceType": "CarePlan",
        "status": "draft",
        "intent": "plan",
        "category": [{"coding": [{"system": "https://fhir.onebromley.nhs.uk/CodeSystem/care-pathway", "code": "proactive-care"}]}],
        "subject": {"reference": patient_ref}
    })
}

pub fn service_request(patient_ref: &str) -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "https://fhir.onebromley.nhs.uk/CodeSystem/pathway-referral", "code": "proactive-care-assessment"}]},
        "subject": {"reference": patient_ref},
        "authoredOn": "2026-11-01"
    })
}

/// The `n`th valid NHS number in the test range 999 000 0000 – 999 999 9999
/// (Modulus 11 check digit right; the numbers whose check value is 10 skipped).
pub fn nhs_number(n: u32) -> String {
    let mut candidate = n;
    loop {
        let digits = format!("999{:06}", candidate % 1_000_000);
        let sum: u32 = digits
            .bytes()
            .enumerate()
            .map(|(i, b)| u32::from(b - b'0') * (10 - i as u32))
            .sum();
        let check = (11 - sum % 11) % 11;
        if check != 10 {
            return format!("{digits}{check}");
        }
        candidate += 1_000_000 / 2 + 1;
    }
}

/// A golden expectation: with `BLESS` set, writes `actual` to `file` (for
/// review in the diff) and returns `None`; otherwise returns the JSON the
/// file holds.
pub fn expected_json(file: &std::path::Path, actual: &Value) -> Option<Value> {
    if std::env::var_os("BLESS").is_some() {
        let text = serde_json::to_string_pretty(actual).expect("JSON");
        std::fs::write(file, format!("{text}\n")).expect("expectation written");
        return None;
    }
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|_| panic!("{} missing; run with BLESS=1", file.display()));
    Some(serde_json::from_str(&text).expect("expectation is JSON"))
}

/// Reshapes a store file (schema 10) as schema 9 wrote it: versions keyed
/// by `versions_key`, not chained. For tests of the upgrade.
pub fn make_schema_9(db: &rusqlite::Connection) {
    db.execute_batch(
        "CREATE UNIQUE INDEX versions_key ON versions (type, id, version);
         ALTER TABLE versions DROP COLUMN prev;
         PRAGMA user_version = 9;",
    )
    .expect("a schema 10 store reshaped as schema 9");
}

/// Reshapes a store file (schema 10) as schema 8 wrote it: the journal's
/// repeat index led by the source. For tests of the upgrade.
pub fn make_schema_8(db: &rusqlite::Connection) {
    make_schema_9(db);
    db.execute_batch(
        "DROP INDEX journal_sent;
         CREATE UNIQUE INDEX journal_repeat
             ON journal (source, sender, message_id) WHERE message_id IS NOT NULL;
         PRAGMA user_version = 8;",
    )
    .expect("a schema 10 store reshaped as schema 8");
}

/// Reshapes a store file (schema 10) as schema 7 wrote it: no member times
/// beside the event clocks. For tests of the upgrade.
pub fn make_schema_7(db: &rusqlite::Connection) {
    make_schema_8(db);
    db.execute_batch(
        "ALTER TABLE current DROP COLUMN member_ms;
         PRAGMA user_version = 7;",
    )
    .expect("a schema 10 store reshaped as schema 7");
}

/// Reshapes a store file (schema 10) as schema 6 wrote it: event clocks in a
/// table of their own, no `current.vrow`. For tests of the upgrade.
pub fn make_schema_6(db: &rusqlite::Connection) {
    make_schema_7(db);
    db.execute_batch(
        "CREATE TABLE event_clock (type TEXT NOT NULL, id TEXT NOT NULL,
             event_ms INTEGER NOT NULL, PRIMARY KEY (type, id)) WITHOUT ROWID;
         INSERT INTO event_clock SELECT type, id, event_ms FROM current WHERE event_ms IS NOT NULL;
         ALTER TABLE current DROP COLUMN vrow;
         ALTER TABLE current DROP COLUMN event_ms;
         PRAGMA user_version = 6;",
    )
    .expect("a schema 10 store reshaped as schema 6");
}

/// Reshapes a store file (schema 10) as schema 5 wrote it: `versions` keyed
/// WITHOUT ROWID, no `current.keys`, owner indexes on the index tables,
/// `idx_date` a rowid table. For tests of the upgrade.
pub fn make_schema_5(db: &rusqlite::Connection) {
    make_schema_6(db);
    db.execute_batch(
        "DROP INDEX versions_key;
         ALTER TABLE versions RENAME TO v6;
         CREATE TABLE versions (type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
             last_updated INTEGER NOT NULL, body TEXT NOT NULL,
             PRIMARY KEY (type, id, version)) WITHOUT ROWID;
         INSERT INTO versions SELECT type, id, version, last_updated, body FROM v6;
         DROP TABLE v6;
         ALTER TABLE current DROP COLUMN keys;
         CREATE INDEX idx_token_owner ON idx_token (type, id);
         CREATE INDEX idx_token_system ON idx_token (type, param, system);
         CREATE INDEX idx_ref_owner ON idx_ref (type, id);
         DROP INDEX idx_date_hi;
         ALTER TABLE idx_date RENAME TO d6;
         CREATE TABLE idx_date (type TEXT NOT NULL, param TEXT NOT NULL, lo INTEGER NOT NULL,
             hi INTEGER NOT NULL, id TEXT NOT NULL);
         CREATE INDEX idx_date_lo ON idx_date (type, param, lo);
         CREATE INDEX idx_date_hi ON idx_date (type, param, hi);
         CREATE INDEX idx_date_owner ON idx_date (type, id);
         INSERT INTO idx_date SELECT type, param, lo, hi, id FROM d6;
         DROP TABLE d6;
         PRAGMA user_version = 5;",
    )
    .expect("a schema 6 store reshaped as schema 5");
}
