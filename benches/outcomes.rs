//! The outcome report on a borough-scale store: 300,000 patients (1,800 of
//! them in 40 care homes), 3,000 on the proactive-care pathway with an
//! active plan, 1,000,000 encounters, and the pathway's referrals and
//! reviews. The store is loaded in process through the `Store` API (each
//! resource prepared and validated as a write would be), then the report is
//! computed five times; the baseline is parsing, with serde_json, the bodies
//! of the resources the report reads.
//!
//! `cargo bench --bench outcomes [-- --patients 300000 --encounters 1000000 --pathway 3000]`
//! (`--store DIR` keeps the loaded store there, and reuses it when it exists).

use pathway_gateway::fhir::ResourceType;
use pathway_gateway::fhir::resource::prepare_json;
use pathway_gateway::outcomes::measure::Period;
use pathway_gateway::outcomes::{Settings, gather, report};
use pathway_gateway::routing::care_homes::Register;
use pathway_gateway::store::sqlite::{SqliteOptions, SqliteStore};
use pathway_gateway::store::{Mutation, Store, WriteOutcome, WriteRequest};
use pathway_gateway::validate::Validator;
use serde_json::json;
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

const HOMES: usize = 40;
const RESIDENTS: usize = 1_800;

fn home_postcode(h: usize) -> String {
    format!("BR{} {}CH", 1 + h % 8, h % 10)
}

fn date(day: u64) -> String {
    let d = jiff::civil::date(2025, 1, 1)
        .checked_add(jiff::Span::new().days(day as i64))
        .unwrap();
    d.to_string()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let patients = arg("--patients", 300_000);
    let encounters = arg("--encounters", 1_000_000);
    let pathway = arg("--pathway", 3_000).min(patients);
    let dir = tempfile::tempdir().unwrap();
    let kept = std::env::args()
        .skip_while(|a| a != "--store")
        .nth(1)
        .map(std::path::PathBuf::from);
    let data = kept.clone().unwrap_or_else(|| dir.path().join("data"));
    let reuse = data.join("gateway.sqlite").exists();
    let store = SqliteStore::open(SqliteOptions {
        dir: data,
        max_batch: 512,
        queue: 4096,
        readers: 4,
        outbox_types: None,
        cache_resources: 16_384,
        checkpoint_bytes: pathway_gateway::store::sqlite::DEFAULT_CHECKPOINT_BYTES,
    })
    .unwrap();
    let validator = Validator::load(None, &[]).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let mut batch: Vec<Mutation> = Vec::new();
    let mut written = 0usize;
    let (patients, encounters, pathway) = if reuse {
        println!("reusing the store in {}", kept.as_ref().unwrap().display());
        (0, 0, 0)
    } else {
        (patients, encounters, pathway)
    };
    async fn flush(store: &SqliteStore, batch: &mut Vec<Mutation>, written: &mut usize) {
        if batch.is_empty() {
            return;
        }
        let mutations = std::mem::take(batch);
        *written += mutations.len();
        match store
            .write(WriteRequest {
                mutations,
                atomic: true,
            })
            .await
            .unwrap()
        {
            WriteOutcome::Applied(_) => {}
            other => panic!("load failed: {other:?}"),
        }
    }
    let add = |ty: ResourceType, id: String, body: serde_json::Value| {
        let prepared = prepare_json(&body.to_string(), Some(ty), &validator)
            .unwrap_or_else(|r| panic!("{ty} invalid: {:?}", r.issues()));
        Mutation::Create {
            resource: prepared,
            id,
            if_none_exist: None,
            full_url: None,
        }
    };
    let nhs = pathway_gateway::outcomes::simulate::nhs_number;
    // Patients: the first `pathway` are on the pathway; the last RESIDENTS
    // live in care homes.
    for i in 0..patients {
        let postcode = if i >= patients - RESIDENTS.min(patients) {
            home_postcode(i % HOMES)
        } else {
            format!(
                "BR{} {}{}",
                1 + i % 8,
                i % 10,
                ["AA", "AB", "BD", "XY"][i % 4]
            )
        };
        let body = json!({"resourceType": "Patient",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs(i)}],
            "name": [{"family": format!("Family{i}"), "given": ["Ann"]}],
            "gender": "female", "birthDate": "1940-01-01",
            "address": [{"use": "home", "postalCode": postcode}]});
        batch.push(add(ResourceType::Patient, format!("p{i}"), body));
        if batch.len() == 500 {
            flush(&store, &mut batch, &mut written).await;
        }
    }
    // The pathway: a referral and an active plan each.
    for i in 0..pathway {
        let assessed = date(100 + rng.below(300));
        batch.push(add(ResourceType::ServiceRequest, format!("r{i}"), json!({
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "code": {"coding": [{"system": "https://fhir.onebromley.nhs.uk/CodeSystem/pathway-referral", "code": "proactive-care-assessment"}]},
            "subject": {"reference": format!("Patient/p{i}")}, "authoredOn": date(50 + rng.below(50))})));
        batch.push(add(ResourceType::CarePlan, format!("c{i}"), json!({
            "resourceType": "CarePlan", "status": "active", "intent": "plan",
            "category": [{"coding": [{"system": "https://fhir.onebromley.nhs.uk/CodeSystem/care-pathway", "code": "proactive-care"}]}],
            "subject": {"reference": format!("Patient/p{i}")}, "period": {"start": assessed}})));
        if i % 10 == 0 {
            batch.push(add(ResourceType::ServiceRequest, format!("h{i}"), json!({
                "resourceType": "ServiceRequest", "status": "active", "intent": "order",
                "code": {"coding": [{"system": "https://fhir.onebromley.nhs.uk/CodeSystem/pathway-referral", "code": "at-home-admission-avoidance"}]},
                "subject": {"reference": format!("Patient/p{i}")}, "authoredOn": date(rng.below(400))})));
        }
        if batch.len() >= 500 {
            flush(&store, &mut batch, &mut written).await;
        }
    }
    // Care-home reviews.
    for r in 0..RESIDENTS.min(patients) {
        let i = patients - 1 - r;
        let on = date(rng.below(700));
        let code = [
            "care-home-admission-assessment",
            "care-home-periodic-assessment",
            "care-home-medicines-review",
        ][r % 3];
        batch.push(add(ResourceType::ServiceRequest, format!("ch{r}"), json!({
            "resourceType": "ServiceRequest", "status": "completed", "intent": "order",
            "code": {"coding": [{"system": "https://fhir.onebromley.nhs.uk/CodeSystem/pathway-referral", "code": code}]},
            "subject": {"reference": format!("Patient/p{i}")}, "authoredOn": on, "occurrenceDateTime": on})));
        if batch.len() >= 500 {
            flush(&store, &mut batch, &mut written).await;
        }
    }
    // Encounters: one in fifty to pathway patients (about 7 each over two
    // years), the rest to anyone.
    for e in 0..encounters {
        let patient = if e % 50 == 0 {
            rng.below(pathway as u64) as usize
        } else {
            rng.below(patients as u64) as usize
        };
        let day = rng.below(730);
        let (class, priority) = match rng.below(10) {
            0..=3 => ("EMER", None),
            4..=5 => ("IMP", Some("EM")),
            6 => ("IMP", Some("EL")),
            _ => ("AMB", None),
        };
        let mut body = json!({"resourceType": "Encounter", "status": "finished",
            "identifier": [{"system": "https://fhir.onebromley.nhs.uk/Id/hospital-provider-spell/RJZ", "value": format!("V{e}")}],
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class},
            "subject": {"reference": format!("Patient/p{patient}")},
            "period": {"start": format!("{}T10:00:00+00:00", date(day)), "end": format!("{}T15:00:00+00:00", date(day + 1))}});
        if let Some(p) = priority {
            body["priority"] = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActPriority", "code": p}]});
        }
        batch.push(add(ResourceType::Encounter, format!("e{e}"), body));
        if batch.len() == 500 {
            flush(&store, &mut batch, &mut written).await;
        }
    }
    flush(&store, &mut batch, &mut written).await;
    let loaded = started.elapsed();
    println!(
        "loaded {written} resources ({patients} patients, {pathway} on the pathway, {encounters} encounters) in {:.1} s ({:.0}/s)",
        loaded.as_secs_f64(),
        written as f64 / loaded.as_secs_f64()
    );

    let mut register_csv = String::from("ods_code,name,postcode\n");
    for h in 0..HOMES {
        register_csv.push_str(&format!("VM{h:03},Home {h},{}\n", home_postcode(h)));
    }
    let register = Register::parse(register_csv.as_bytes()).unwrap();
    let settings = Settings::default();
    let period = Period {
        as_of: jiff::civil::date(2026, 12, 31),
        from: None,
        to: jiff::civil::date(2026, 12, 31),
    };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let t = Instant::now();
        let r = report(&store, &register, &settings, period).await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        last = Some(r);
    }
    times.sort_by(f64::total_cmp);
    let r = last.unwrap();
    println!(
        "report: min {:.0} ms, median {:.0} ms, max {:.0} ms (cohort {}, ED before/after {}/{}, NEL {}/{}, residents {}, @Home referrals {})",
        times[0],
        times[2],
        times[4],
        r.proactive_care.cohort,
        r.proactive_care.ed_contacts.before,
        r.proactive_care.ed_contacts.after,
        r.proactive_care.non_elective_admissions.before,
        r.proactive_care.non_elective_admissions.after,
        r.care_homes.residents,
        r.bromley_at_home.referrals
    );
    // Split: gathering from the store vs counting; and the baseline of
    // parsing the bodies the report reads.
    let t = Instant::now();
    let facts = gather(&store, &register, &settings).await.unwrap();
    let gather_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let _ = pathway_gateway::outcomes::measure::measure(&facts, period, &settings);
    let measure_ms = t.elapsed().as_secs_f64() * 1000.0;
    let ids: Vec<String> = facts.assessments.keys().cloned().collect();
    let bodies =
        pathway_gateway::store::search_all(&store, ResourceType::Encounter, "patient", &ids)
            .await
            .unwrap();
    let t = Instant::now();
    for b in &bodies {
        std::hint::black_box(serde_json::from_str::<serde_json::Value>(&b.body).unwrap());
    }
    let parse_ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "of which gather {gather_ms:.0} ms ({} encounters, {} requests read), measure {measure_ms:.1} ms; \
         baseline: serde_json parse of the cohort's {} encounter bodies {parse_ms:.0} ms",
        facts.encounters.len(),
        facts.requests.len(),
        bodies.len()
    );
    store.close().await;
}
