//! Routing and delivery: the real `pathway-gateway` binary on a fresh store,
//! delivering `proactive-care-assessment` referrals to a fast local receiver
//! (an axum server in this process that answers 201 at once).
//!
//! - **Added delay, empty queue**: referrals are created one at a time (a
//!   few ms apart); for each, the time from the gateway's 201 (the commit
//!   is before it) to the receiver seeing the delivery (the attempt is
//!   before it). Both instants are taken in this process, on one clock.
//!   Also the gateway's own commit → first attempt histogram (`/metrics`).
//! - **Sustained delivery**: referrals for distinct patients are created as
//!   fast as 8 clients can (transaction Bundles of 50); deliveries/s is the
//!   receiver's count over the time from the first to the last arrival,
//!   with the creation rate beside it.
//!
//! `cargo bench --bench routing [-- --referrals 20000 --probes 500]`

mod support;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{cpu_seconds, rss_kib, spawn_gateway_with};

#[derive(Default)]
struct Arrivals {
    at: Mutex<HashMap<String, Instant>>,
}

async fn receive(State(arrivals): State<Arc<Arrivals>>, headers: HeaderMap) -> StatusCode {
    let correlation = headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    arrivals
        .at
        .lock()
        .unwrap()
        .insert(correlation, Instant::now());
    StatusCode::CREATED
}

fn referral(patient: usize) -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "https://fhir.onebromley.nhs.uk/CodeSystem/pathway-referral", "code": "proactive-care-assessment"}]},
        "subject": {"reference": format!("Patient/bench-{patient}")},
        "authoredOn": "2026-11-22"
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let referrals = arg("--referrals", 20_000);
    let probes = arg("--probes", 500);
    let arrivals = Arc::new(Arrivals::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/fhir/ServiceRequest", axum::routing::post(receive))
        .with_state(arrivals.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!("[destinations.proactive-care-mdt]\nurl = \"http://{receiver}/fhir\"\n"),
    )
    .unwrap();
    let (mut gateway, base, _) = spawn_gateway_with(&dir.path().join("data"), Some(&config));
    let client = reqwest::Client::new();

    // 1. Added delay with an empty queue.
    let mut delays = Vec::with_capacity(probes);
    for i in 0..probes {
        let response = client
            .post(format!("{base}/fhir/ServiceRequest"))
            .header("content-type", "application/fhir+json")
            .body(referral(i).to_string())
            .send()
            .await
            .unwrap();
        let committed = Instant::now();
        assert_eq!(response.status(), 201);
        let created: Value = response.json().await.unwrap();
        let key = format!(
            "ServiceRequest/{}/_history/1",
            created["id"].as_str().unwrap()
        );
        let arrived = loop {
            if let Some(at) = arrivals.at.lock().unwrap().get(&key) {
                break *at;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        delays.push(arrived.saturating_duration_since(committed).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    delays.sort_by(f64::total_cmp);
    println!(
        "empty queue, {probes} referrals one at a time: 201 -> receiver p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&delays, 50.0),
        percentile(&delays, 99.0),
        delays.last().copied().unwrap_or(f64::NAN)
    );
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in metrics.lines().filter(|l| {
        l.starts_with("pathway_delivery_first_attempt_delay_seconds_bucket")
            && (l.contains("le=\"0.005\"")
                || l.contains("le=\"0.01\"")
                || l.contains("le=\"0.05\"")
                || l.contains("le=\"+Inf\""))
    }) {
        println!("  gateway {line}");
    }

    // 2. Sustained delivery.
    arrivals.at.lock().unwrap().clear();
    let cpu_before = cpu_seconds(gateway.id());
    let started = Instant::now();
    let per_bundle = 50;
    let bundles = referrals.div_ceil(per_bundle);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        let base = base.clone();
        let next = next.clone();
        writers.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if b >= bundles {
                    break;
                }
                let entries: Vec<Value> = (0..per_bundle)
                    .map(|k| {
                        json!({"resource": referral(probes + b * per_bundle + k),
                               "request": {"method": "POST", "url": "ServiceRequest"}})
                    })
                    .collect();
                let bundle =
                    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
                let response = client
                    .post(format!("{base}/fhir"))
                    .header("content-type", "application/fhir+json")
                    .body(bundle.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let created_in = started.elapsed();
    let total = bundles * per_bundle;
    loop {
        if arrivals.at.lock().unwrap().len() >= total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "deliveries stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_in = started.elapsed();
    let cpu = cpu_seconds(gateway.id()) - cpu_before;
    let times: Vec<Instant> = arrivals.at.lock().unwrap().values().copied().collect();
    let first = times.iter().min().unwrap();
    let last = times.iter().max().unwrap();
    let span = last.duration_since(*first).as_secs_f64();
    let (peak, _) = rss_kib(gateway.id());
    println!(
        "sustained: {total} referrals created in {:.2} s ({:.0}/s); all delivered {:.2} s after the start; \
         deliveries {:.0}/s (first to last arrival, {span:.2} s); gateway CPU {:.0} µs per referral; peak RSS {} MiB",
        created_in.as_secs_f64(),
        total as f64 / created_in.as_secs_f64(),
        all_in.as_secs_f64(),
        total as f64 / span,
        cpu / total as f64 * 1e6,
        peak / 1024
    );
    let _ = gateway.kill();
    let _ = gateway.wait();
}
