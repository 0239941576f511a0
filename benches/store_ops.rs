//! Micro-benchmark of the gateway's own per-resource work, beside the
//! simplest baseline (a serde_json parse of the same bytes):
//!
//! ```sh
//! cargo bench --bench store_ops
//! ```

use pathway_gateway::fhir::ResourceType;
use pathway_gateway::fhir::resource::{assemble, prepare};
use pathway_gateway::store::sqlite::{SqliteOptions, SqliteStore};
use pathway_gateway::store::{Mutation, Store, WriteRequest};
use std::hint::black_box;
use std::time::{Duration, Instant};

const PATIENT: &str = r#"{"resourceType":"Patient","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9995260182"}],"name":[{"use":"official","family":"Adeyemi","given":["Grace","Oluwaseun"],"prefix":["Mrs"]}],"telecom":[{"system":"phone","value":"020 8123 4567","use":"home"}],"gender":"female","birthDate":"1937-11-04","address":[{"use":"home","line":["14 Hayes Lane"],"city":"Bromley","postalCode":"BR2 9EA"}],"generalPractitioner":[{"identifier":{"system":"https://fhir.nhs.uk/Id/ods-organization-code","value":"G84001"}}]}"#;

/// Runs `f` repeatedly for about a second; returns the mean time per call.
fn measure(name: &str, mut f: impl FnMut()) -> Duration {
    for _ in 0..100 {
        f();
    }
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < Duration::from_secs(1) {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    let per = started.elapsed() / n;
    println!("{name:<48} {:>9.2} µs", per.as_secs_f64() * 1e6);
    per
}

fn main() {
    println!("per-call cost, one thread");
    let bytes = PATIENT.as_bytes();
    measure("baseline: serde_json::from_slice::<Value>", || {
        black_box(serde_json::from_slice::<serde_json::Value>(black_box(bytes)).ok());
    });
    measure("typed model check (fhir-sdk decode)", || {
        black_box(pathway_model::check_resource("Patient", black_box(bytes)).ok());
    });
    let validator = pathway_gateway::validate::Validator::embedded().expect("profiles compile");
    measure("prepare (parse, validate, split, index)", || {
        black_box(prepare(black_box(bytes), Some(ResourceType::Patient), &validator).ok());
    });
    let prepared = prepare(bytes, Some(ResourceType::Patient), &validator).expect("valid");
    measure("assemble stored JSON", || {
        black_box(assemble(
            ResourceType::Patient,
            "0194b2f0-6c3e-7a3b-9f3e-2f0c1d2e3f40",
            1,
            1_700_000_000_000,
            &prepared.meta_extra,
            &prepared.rest,
        ));
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(SqliteOptions {
        dir: dir.path().to_path_buf(),
        max_batch: 512,
        queue: 4096,
        readers: 4,
        outbox_types: None,
        cache_resources: 16_384,
        checkpoint_bytes: pathway_gateway::store::sqlite::DEFAULT_CHECKPOINT_BYTES,
    })
    .expect("store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut ids = Vec::new();
    runtime.block_on(async {
        for chunk in 0..20 {
            let mutations = (0..500)
                .map(|_| {
                    let id = pathway_gateway::fhir::new_id();
                    ids.push(id.clone());
                    Mutation::Create {
                        resource: prepared.clone(),
                        id,
                        if_none_exist: None,
                        full_url: None,
                    }
                })
                .collect();
            let started = Instant::now();
            store
                .write(WriteRequest {
                    mutations,
                    atomic: true,
                })
                .await
                .expect("write");
            if chunk == 19 {
                println!(
                    "{:<48} {:>9.2} µs",
                    "create, 500 per commit (per resource)",
                    started.elapsed().as_secs_f64() * 1e6 / 500.0
                );
            }
        }
        let started = Instant::now();
        store
            .write(WriteRequest {
                mutations: vec![Mutation::Create {
                    resource: prepared.clone(),
                    id: pathway_gateway::fhir::new_id(),
                    if_none_exist: None,
                    full_url: None,
                }],
                atomic: true,
            })
            .await
            .expect("write");
        println!(
            "{:<48} {:>9.2} µs",
            "one create alone (a commit and its fsync)",
            started.elapsed().as_secs_f64() * 1e6
        );
    });
    let mut i = 0;
    measure("store read by id (10,000 stored)", || {
        i = (i + 7919) % ids.len();
        let found = runtime.block_on(store.read(ResourceType::Patient, &ids[i]));
        black_box(found.ok());
    });
    runtime.block_on(store.close());
}
