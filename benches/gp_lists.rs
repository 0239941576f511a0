//! A 50,000-row GP risk list, end to end and in parts.
//!
//! Generates an EMIS-style export (preamble, CRLF, quoted fields, spaced NHS
//! numbers, `dd-MMM-yyyy` dates, an eFI score column; half of the patients at
//! risk: 0.36 counts, as 13/36 shows to two decimals), then measures in one run:
//! - reading alone (CSV + header + row checks) and read + map, rows/s;
//! - the dry run (`map --from gp-csv`: read, map, validate), rows/s;
//! - end to end: the real `pathway-gateway` binary on a fresh store, the list
//!   POSTed to `/ingest/gp-risk-list` (journal, read, map, validate, store,
//!   referrals), wall time to the report, and the gateway's peak RSS;
//! - the same list again (every row matched, nothing written).
//!
//! `cargo bench --bench gp_lists [-- --rows 50000] [--write FILE: only write the list]`

/// The gateway binary's allocator, so that in-process figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use pathway_gateway::gp::dry_run::map_list;
use pathway_gateway::gp::layout::Overrides;
use pathway_gateway::gp::map::{
    DEFAULT_SEVERE_FROM, MapContext, at_risk, map_patient, map_referral,
};
use pathway_gateway::gp::read;
use pathway_gateway::gp::row::read_row;
use pathway_gateway::validate::Validator;
use serde_json::Value;
use std::hint::black_box;
use std::time::Instant;
use support::{nhs_number, spawn_gateway};

fn list(rows: usize) -> String {
    const FAMILY: [&str; 6] = ["Smith", "O'Brien, Jr", "Patel", "Nowak", "Begum", "Adeyemi"];
    const GIVEN: [&str; 6] = [
        "Ann",
        "Joseph",
        "Priya",
        "Marek",
        "Edith",
        "Grace Oluwaseun",
    ];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut text = String::with_capacity(rows * 110);
    text.push_str("\u{feff}Frailty register (eFI)\r\nRun date: 22-Nov-2026 09:14,,,,,,,\r\n\r\n");
    text.push_str("\"NHS Number\",\"Surname\",\"Forename(s)\",\"Date of Birth\",\"Sex\",\"Postcode\",\"Usual GP\",\"eFI Score\"\r\n");
    for i in 0..rows {
        let nhs = nhs_number(i);
        let score = [0.19, 0.28, 0.36, 0.44, 0.31, 0.50][i % 6];
        text.push_str(&format!(
            "\"{} {} {}\",\"{}\",\"{}\",\"{:02}-{}-{}\",\"{}\",\"BR{} {}AB\",\"Dr P Shah\",\"{score:.2}\"\r\n",
            &nhs[..3],
            &nhs[3..6],
            &nhs[6..],
            FAMILY[i % 6],
            GIVEN[(i / 6) % 6],
            1 + i % 28,
            MONTHS[i % 12],
            1925 + i % 40,
            if i % 2 == 0 { "F" } else { "M" },
            1 + i % 8,
            i % 10,
        ));
    }
    text.push_str(",,,,,,,\r\n\r\n");
    text
}

fn main() {
    let rows: usize = std::env::args()
        .skip_while(|a| a != "--rows")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let text = list(rows);
    if let Some(path) = std::env::args().skip_while(|a| a != "--write").nth(1) {
        std::fs::write(&path, &text).expect("list written");
        println!("list written to {path}");
        return;
    }
    println!("list: {rows} rows, {:.1} MB", text.len() as f64 / 1e6);
    let cx = MapContext {
        practice: "G84001".to_string(),
        received: "2026-11-22T10:00:00Z".to_string(),
        severe_from: DEFAULT_SEVERE_FROM,
    };
    let validator = Validator::embedded().expect("profiles compile");

    let started = Instant::now();
    let list = read::open(text.as_bytes(), None, &Overrides::new()).expect("a list");
    let layout = list.layout.clone();
    let mut read_ok = 0;
    for record in list {
        let record = record.expect("a row");
        if read_row(record.line, &record.fields, &layout).is_ok() {
            read_ok += 1;
        }
    }
    let read_alone = started.elapsed();
    assert_eq!(read_ok, rows);
    report("read (CSV, header, row checks)", rows, read_alone);

    let started = Instant::now();
    let list = read::open(text.as_bytes(), None, &Overrides::new()).expect("a list");
    let mut at_risk_rows = 0;
    for record in list {
        let record = record.expect("a row");
        let row = read_row(record.line, &record.fields, &layout).expect("a good row");
        black_box(map_patient(&row, &cx));
        if let Some(reason) = at_risk(&row, &cx) {
            at_risk_rows += 1;
            black_box(map_referral(&row, &cx, &reason, "urn:uuid:p", "urn:uuid:r"));
        }
    }
    report("read + map", rows, started.elapsed());

    let started = Instant::now();
    let run = map_list(text.as_bytes(), None, &Overrides::new(), &cx, &validator).expect("a list");
    report(
        "read + map + validate (the dry run)",
        rows,
        started.elapsed(),
    );
    assert_eq!(
        (run.accepted, run.referrals),
        (rows, at_risk_rows),
        "{:?}",
        run.errors.first()
    );

    // End to end against the real binary.
    let data = tempfile::tempdir().expect("temp dir");
    let (mut child, base) = spawn_gateway(data.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("{base}/ingest/gp-risk-list?practice=G84001");
    let client = reqwest::Client::new();
    let post = |body: String| {
        let (client, url) = (client.clone(), url.clone());
        runtime.block_on(async move {
            let started = Instant::now();
            let response = client
                .post(url)
                .header("content-type", "text/csv")
                .body(body)
                .send()
                .await
                .expect("upload");
            let status = response.status();
            let report: Value = response.json().await.expect("a report");
            (status, report, started.elapsed())
        })
    };
    let (status, first, took) = post(text.clone());
    assert!(status.is_success(), "{status}: {first}");
    report(
        "end to end, first upload (HTTP, journal, store)",
        rows,
        took,
    );
    println!(
        "  report: accepted {}, patients created {}, referrals created {}",
        first["accepted"], first["patients_created"], first["referrals_created"]
    );
    assert_eq!(first["patients_created"].as_u64(), Some(rows as u64));
    assert_eq!(
        first["referrals_created"].as_u64(),
        Some(at_risk_rows as u64)
    );
    let (_, again, took) = post(text.clone());
    report("end to end, the same list again", rows, took);
    assert_eq!(again["patients_created"].as_u64(), Some(0));
    assert_eq!(again["referrals_created"].as_u64(), Some(0));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    println!("gateway peak RSS: {peak}");
    let _ = child.kill();
    let _ = child.wait();
}

fn report(label: &str, rows: usize, took: std::time::Duration) {
    println!(
        "{label:<52} {:>8.2} s {:>10.0} rows/s",
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64()
    );
}
