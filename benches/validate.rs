//! Validation cost per resource, against the cost of parsing the same bytes.
//!
//! Generates an NDJSON corpus of realistic One Bromley resources of the four
//! types (about 1 KB each, one in ten broken in a known way), then measures in
//! one run, on one thread:
//! - `serde_json::from_slice::<Value>` alone (the baseline);
//! - parse + base R4 validation;
//! - parse + base + profile validation (what the write path does);
//! - start-up: compiling the base definitions and the profiles.
//!
//! It also checks the verdicts: every broken resource caught, no valid one
//! refused. `cargo bench --bench validate [-- --write corpus.ndjson]`.

use pathway_gateway::validate::{Validator, has_errors};
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Resources in the corpus.
const CORPUS: usize = 20_000;
/// Every how many resources one is broken.
const BROKEN_EVERY: usize = 10;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() as usize) % items.len()]
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn nhs_number(rng: &mut Rng) -> String {
    loop {
        let digits = format!("999{:06}", rng.below(1_000_000));
        let sum: u32 = digits
            .bytes()
            .enumerate()
            .map(|(i, b)| u32::from(b - b'0') * (10 - i as u32))
            .sum();
        let check = (11 - sum % 11) % 11;
        if check < 10 {
            return format!("{digits}{check}");
        }
    }
}

fn date(rng: &mut Rng, from_year: u64, years: u64) -> String {
    format!(
        "{}-{:02}-{:02}",
        from_year + rng.below(years),
        1 + rng.below(12),
        1 + rng.below(28)
    )
}

const PRACTICES: [&str; 6] = ["G84001", "G84002", "G84007", "G84012", "G84019", "G84031"];
const FAMILY: [&str; 8] = [
    "Smith", "Okafor", "Patel", "Nowak", "Jones", "Begum", "Williams", "Taylor",
];
const GIVEN: [&str; 8] = [
    "Ann", "Joseph", "Priya", "Marek", "Edith", "Rahima", "George", "Iris",
];

fn patient(rng: &mut Rng) -> Value {
    json!({
        "resourceType": "Patient",
        "meta": {"profile": ["https://fhir.onebromley.nhs.uk/StructureDefinition/OneBromley-Patient"]},
        "identifier": [
            {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number(rng),
             "extension": [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus",
                            "valueCodeableConcept": {"coding": [{"system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland", "code": "01", "display": "Number present and verified"}]}}]},
            {"system": "https://fhir.kingsch.nhs.uk/Id/hospital-number", "value": format!("K{:07}", rng.below(10_000_000))}
        ],
        "active": true,
        "name": [{"use": "official", "family": rng.pick(&FAMILY), "given": [rng.pick(&GIVEN)], "prefix": ["Mrs"]}],
        "telecom": [{"system": "phone", "value": format!("020 8{:03} {:04}", rng.below(1000), rng.below(10000)), "use": "home"}],
        "gender": rng.pick(&["female", "male", "other", "unknown"]),
        "birthDate": date(rng, 1925, 40),
        "address": [{"use": "home", "line": [format!("{} Bromley Road", 1 + rng.below(200))], "city": "Bromley", "district": "Kent", "postalCode": "BR1 3PT", "country": "GBR"}],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "W", "display": "Widowed"}]},
        "contact": [{"relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N", "display": "Next-of-Kin"}]}],
                     "name": {"family": rng.pick(&FAMILY), "given": [rng.pick(&GIVEN)]},
                     "telecom": [{"system": "phone", "value": "07700 900123", "use": "mobile"}]}],
        "generalPractitioner": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": rng.pick(&PRACTICES)}}]
    })
}

fn encounter(rng: &mut Rng) -> Value {
    let day = date(rng, 2023, 3);
    json!({
        "resourceType": "Encounter",
        "identifier": [{"system": "https://fhir.kingsch.nhs.uk/Id/visit-number", "value": format!("V{:08}", rng.below(100_000_000))}],
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": rng.pick(&["EMER", "IMP", "AMB"])},
        "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActPriority", "code": rng.pick(&["EM", "EL", "UR"])}]},
        "subject": {"reference": format!("Patient/{:x}", rng.next())},
        "period": {"start": format!("{day}T0{}:15:00+00:00", rng.below(5)), "end": format!("{day}T1{}:40:00+00:00", rng.below(10))},
        "participant": [{"type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND"}]}],
                         "individual": {"display": "Dr A Consultant"}}],
        "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "1912002", "display": "Fall"}]}],
        "location": [{"location": {"display": "Princess Royal University Hospital ED"}, "status": "completed"}],
        "hospitalization": {"dischargeDisposition": {"coding": [{"system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-DischargeDestination", "code": "19", "display": "Usual place of residence"}]}},
        "serviceProvider": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RJZ"}}
    })
}

fn care_plan(rng: &mut Rng) -> Value {
    let active = rng.below(2) == 0;
    let mut plan = json!({
        "resourceType": "CarePlan",
        "status": if active { "active" } else { "draft" },
        "intent": "plan",
        "category": [{"coding": [{"system": "https://fhir.onebromley.nhs.uk/CodeSystem/care-pathway", "code": rng.pick(&["proactive-care", "care-home"])}]}],
        "title": "Proactive care plan",
        "subject": {"reference": format!("Patient/{:x}", rng.next())},
        "created": date(rng, 2023, 2),
        "author": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": rng.pick(&PRACTICES)}},
        "activity": [{"detail": {"kind": "ServiceRequest", "status": "scheduled", "description": "Community matron review of medicines and falls risk",
                                 "scheduledTiming": {"repeat": {"frequency": 1, "period": 4, "periodUnit": "wk"}}}},
                     {"detail": {"status": "not-started", "description": "Social prescriber: befriending service",
                                 "performer": [{"display": "Bromley Well"}]}}],
        "goal": [{"display": "Stay at home safely"}],
        "note": [{"text": "Agreed at MDT; family informed."}]
    });
    if active {
        plan["period"] = json!({"start": date(rng, 2023, 2)});
    }
    plan
}

fn service_request(rng: &mut Rng) -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://fhir.onebromley.nhs.uk/Id/referral", "value": format!("R{:08}", rng.below(100_000_000))}],
        "status": "active",
        "intent": "order",
        "priority": "routine",
        "code": {"coding": [{"system": "https://fhir.onebromley.nhs.uk/CodeSystem/pathway-referral", "code": rng.pick(&["proactive-care-assessment", "at-home-admission-avoidance", "care-home-post-discharge-review"])}], "text": "Pathway referral"},
        "subject": {"reference": format!("Patient/{:x}", rng.next())},
        "occurrenceDateTime": format!("{}T10:00:00Z", date(rng, 2024, 1)),
        "authoredOn": format!("{}T09:30:00+01:00", date(rng, 2024, 1)),
        "requester": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": rng.pick(&PRACTICES)}},
        "performer": [{"display": "Proactive care MDT"}],
        "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "925831000000107", "display": "Severe frailty"}], "text": "eFI severe frailty"}],
        "supportingInfo": [{"display": "eFI 0.42 (severe)"}],
        "note": [{"text": "Lives alone; two falls this year."}]
    })
}

/// Breaks a valid resource in one of the ways the acceptance list names.
fn break_it(resource: &mut Value, rng: &mut Rng) -> &'static str {
    let ty = resource["resourceType"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match (ty.as_str(), rng.below(6)) {
        (_, 0) => {
            resource["colour"] = json!("blue");
            "unknown element"
        }
        (_, 1) => {
            resource["status"] = json!(7);
            "wrong JSON type"
        }
        ("Patient", 2) => {
            resource["identifier"][0]["value"] = json!("9434765918");
            "NHS number check digit"
        }
        ("Patient", _) => {
            resource["birthDate"] = json!("1950-02-30");
            "impossible date"
        }
        ("Encounter", 2) => {
            resource["period"]["end"] = json!("2020-01-01T00:00:00Z");
            "failed invariant per-1"
        }
        ("Encounter", _) => {
            resource["class"]["code"] = json!("");
            "empty string"
        }
        ("CarePlan", _) => {
            resource["category"][0]["coding"][0]["system"] = json!("http://snomed.info/sct");
            "failed slice"
        }
        (_, _) => {
            resource["status"] = json!("open");
            "code outside a required binding"
        }
    }
}

fn corpus() -> Vec<(Vec<u8>, Option<&'static str>)> {
    let mut rng = Rng(2026);
    (0..CORPUS)
        .map(|i| {
            let mut resource = match i % 4 {
                0 => patient(&mut rng),
                1 => encounter(&mut rng),
                2 => care_plan(&mut rng),
                _ => service_request(&mut rng),
            };
            let broken =
                (i % BROKEN_EVERY == BROKEN_EVERY - 1).then(|| break_it(&mut resource, &mut rng));
            (serde_json::to_vec(&resource).expect("serialises"), broken)
        })
        .collect()
}

fn per_resource(
    label: &str,
    corpus: &[(Vec<u8>, Option<&str>)],
    mut f: impl FnMut(&[u8]),
) -> Duration {
    // Warm up, then the best of three passes.
    for (bytes, _) in corpus.iter().take(1000) {
        f(bytes);
    }
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        for (bytes, _) in corpus {
            f(black_box(bytes));
        }
        best = best.min(started.elapsed() / corpus.len() as u32);
    }
    println!("{label:<44} {:>8.2} µs/resource", best.as_secs_f64() * 1e6);
    best
}

fn main() {
    let started = Instant::now();
    let validator = Validator::embedded().expect("profiles compile");
    let startup = started.elapsed();

    let corpus = corpus();
    let bytes: usize = corpus.iter().map(|(b, _)| b.len()).sum();
    if let Some(path) = std::env::args().skip_while(|a| a != "--write").nth(1) {
        let mut text = Vec::with_capacity(bytes + corpus.len());
        for (b, _) in &corpus {
            text.extend_from_slice(b);
            text.push(b'\n');
        }
        std::fs::write(&path, text).expect("writes the corpus");
        println!("corpus written to {path}");
    }
    println!(
        "corpus: {} resources, {:.0} bytes on average, {} broken",
        corpus.len(),
        bytes as f64 / corpus.len() as f64,
        corpus.iter().filter(|(_, b)| b.is_some()).count()
    );
    println!(
        "start-up (compile base definitions + profiles) {:>8.2} ms",
        startup.as_secs_f64() * 1e3
    );

    let parse = per_resource("serde_json parse into Value (baseline)", &corpus, |b| {
        black_box(serde_json::from_slice::<Value>(b).ok());
    });
    let base = per_resource("parse + base R4 validation", &corpus, |b| {
        if let Ok(v) = serde_json::from_slice::<Value>(b) {
            black_box(validator.validate_base(&v));
        }
    });
    let full = per_resource("parse + base + profile validation", &corpus, |b| {
        if let Ok(v) = serde_json::from_slice::<Value>(b) {
            black_box(validator.validate(&v));
        }
    });
    println!(
        "base + profile = {:.2}× the parse alone (base alone {:.2}×)",
        full.as_secs_f64() / parse.as_secs_f64(),
        base.as_secs_f64() / parse.as_secs_f64()
    );

    let (mut caught, mut missed, mut false_positives) = (0, Vec::new(), Vec::new());
    for (bytes, broken) in &corpus {
        let value: Value = serde_json::from_slice(bytes).expect("corpus is JSON");
        let issues = validator.validate(&value);
        match (broken, has_errors(&issues)) {
            (Some(_), true) => caught += 1,
            (Some(how), false) => missed.push(*how),
            (None, true) => false_positives.push(issues),
            (None, false) => {}
        }
    }
    println!(
        "verdicts: {caught} broken caught, {} missed, {} valid refused",
        missed.len(),
        false_positives.len()
    );
    if let Some(first) = false_positives.first() {
        println!("first false positive: {first:#?}");
    }
    if !missed.is_empty() || !false_positives.is_empty() {
        std::process::exit(1);
    }
}
