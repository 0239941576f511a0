//! Outcome tracking: the figures One Bromley reports its pathways by,
//! computed from the store for any date.
//!
//! `facts` reads stored resources into small dated facts; `measure` counts
//! them as the contract defines; this module gathers the facts from the
//! store with indexed lookups (no scan of every encounter) and holds the
//! settings (`[outcomes]`).

pub mod dashboard;
pub mod facts;
pub mod measure;
pub mod simulate;

use crate::fhir::ResourceType;
use crate::fhir::search::normalise_string;
use crate::gp::map::{PATHWAY_SYSTEM, REFERRAL_SYSTEM};
use crate::routing::care_homes::Register;
use crate::routing::rules::REFERRALS;
use crate::store::{Store, StoreError, Stored};
use jiff::civil::Date;
use measure::{Facts, Period, Report};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A unit cost and where it comes from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitCost {
    pub gbp: f64,
    pub basis: String,
}

/// `[outcomes]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomesConfig {
    /// N: the weeks before and after the MDT assessment compared.
    pub window_weeks: i64,
    /// Bromley @Home: an admission within this many days of the referral
    /// counts as admitted.
    pub at_home_admitted_within_days: i64,
    pub ed_contact: UnitCost,
    pub non_elective_admission: UnitCost,
    /// A file of NHS numbers (one per line; spaces allowed, `#` comments)
    /// with a national data opt-out, besides the flag on the Patient.
    pub opt_out_file: Option<PathBuf>,
}

impl Default for OutcomesConfig {
    fn default() -> Self {
        let settings = Settings::default();
        OutcomesConfig {
            window_weeks: settings.window_weeks,
            at_home_admitted_within_days: settings.at_home_admitted_within_days,
            ed_contact: settings.ed_contact,
            non_elective_admission: settings.non_elective_admission,
            opt_out_file: None,
        }
    }
}

/// Checked outcome settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub window_weeks: i64,
    pub at_home_admitted_within_days: i64,
    pub ed_contact: UnitCost,
    pub non_elective_admission: UnitCost,
    /// NHS numbers with a national data opt-out (from `opt_out_file`).
    pub opted_out: Arc<HashSet<String>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window_weeks: 13,
            at_home_admitted_within_days: 30,
            ed_contact: UnitCost {
                gbp: 182.84,
                basis: "One Bromley implied: £81,000 saved / 443 fewer ED contacts".into(),
            },
            non_elective_admission: UnitCost {
                gbp: 1030.89,
                basis: "One Bromley implied: £267,000 saved / 259 fewer non-elective admissions"
                    .into(),
            },
            opted_out: Arc::default(),
        }
    }
}

impl OutcomesConfig {
    pub fn check(self) -> Result<Settings, String> {
        if !(1..=104).contains(&self.window_weeks) {
            return Err(format!(
                "outcomes.window_weeks: {} is outside 1 to 104",
                self.window_weeks
            ));
        }
        if !(0..=365).contains(&self.at_home_admitted_within_days) {
            return Err(format!(
                "outcomes.at_home_admitted_within_days: {} is outside 0 to 365",
                self.at_home_admitted_within_days
            ));
        }
        for (key, cost) in [
            ("ed_contact", &self.ed_contact),
            ("non_elective_admission", &self.non_elective_admission),
        ] {
            if !(cost.gbp.is_finite() && cost.gbp >= 0.0) {
                return Err(format!("outcomes.{key}.gbp: {} is not a cost", cost.gbp));
            }
        }
        let opted_out = match &self.opt_out_file {
            Some(path) => read_opt_outs(path)?,
            None => HashSet::new(),
        };
        Ok(Settings {
            window_weeks: self.window_weeks,
            at_home_admitted_within_days: self.at_home_admitted_within_days,
            ed_contact: self.ed_contact,
            non_elective_admission: self.non_elective_admission,
            opted_out: Arc::new(opted_out),
        })
    }
}

fn read_opt_outs(path: &Path) -> Result<HashSet<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        format!(
            "outcomes.opt_out_file: cannot read {}: {err}",
            path.display()
        )
    })?;
    let mut numbers = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        let digits: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        if digits.is_empty() {
            continue;
        }
        if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "outcomes.opt_out_file: {} line {}: `{}` is not a 10-digit NHS number",
                path.display(),
                i + 1,
                line.trim()
            ));
        }
        numbers.insert(digits);
    }
    Ok(numbers)
}

/// The report for `period`, from the store.
pub async fn report(
    store: &dyn Store,
    register: &Register,
    settings: &Settings,
    period: Period,
) -> Result<Report, StoreError> {
    let facts = gather(store, register, settings).await?;
    Ok(measure::measure(&facts, period, settings))
}

/// The dashboard page for `period`, from the store.
pub async fn dashboard(
    store: &dyn Store,
    register: &Register,
    settings: &Settings,
    period: Period,
) -> Result<String, StoreError> {
    let facts = gather(store, register, settings).await?;
    let report = measure::measure(&facts, period, settings);
    let months = measure::referrals_by_month(&facts, period);
    let overdue = measure::worklist(&facts, period);
    Ok(dashboard::render(&report, &months, &overdue))
}

/// Reads what the figures need: the pathway ServiceRequests (by code), the
/// proactive-care CarePlans (by category), the residents (by postcode),
/// then the encounters and Patients of just the patients those name.
pub async fn gather(
    store: &dyn Store,
    register: &Register,
    settings: &Settings,
) -> Result<Facts, StoreError> {
    let mut facts = Facts::default();
    let codes: Vec<(String, String)> = REFERRALS
        .iter()
        .map(|r| (REFERRAL_SYSTEM.to_string(), r.code.to_string()))
        .collect();
    let requests = store
        .by_token(ResourceType::ServiceRequest, "code", &codes)
        .await?;
    for stored in requests {
        if let Some(fact) = parse(&stored).as_ref().and_then(facts::request) {
            facts.requests.push(fact);
        }
    }
    let proactive = [(PATHWAY_SYSTEM.to_string(), "proactive-care".to_string())];
    let plans = store
        .by_token(ResourceType::CarePlan, "category", &proactive)
        .await?;
    for stored in plans {
        if let Some((patient, date)) = parse(&stored).as_ref().and_then(facts::assessment) {
            let earliest = facts.assessments.entry(patient).or_insert(date);
            *earliest = (*earliest).min(date);
        }
    }
    let mut patients: HashMap<String, Value> = HashMap::new();
    let postcodes: Vec<(String, String)> = register
        .postcodes()
        .iter()
        .map(|p| (String::new(), normalise_string(p)))
        .collect();
    if !postcodes.is_empty() {
        let residents = store
            .by_token(ResourceType::Patient, "address-postalcode", &postcodes)
            .await?;
        for stored in residents {
            if let Some(patient) = parse(&stored) {
                if let Some(home) = register.home_of(&patient) {
                    facts.residents.insert(stored.id.clone());
                    facts
                        .people
                        .insert(stored.id.clone(), person(&patient, &home.name));
                }
                patients.insert(stored.id, patient);
            }
        }
    }
    let mut named: HashSet<String> = facts.requests.iter().map(|r| r.patient.clone()).collect();
    named.extend(facts.assessments.keys().cloned());
    named.extend(facts.residents.iter().cloned());
    let unread: Vec<String> = named
        .iter()
        .filter(|id| !patients.contains_key(*id))
        .cloned()
        .collect();
    for stored in store.read_many(ResourceType::Patient, unread).await? {
        if let Some(patient) = parse(&stored) {
            patients.insert(stored.id.clone(), patient);
        }
    }
    for (id, patient) in &patients {
        let (numbers, flagged) = facts::patient(patient);
        if flagged || numbers.iter().any(|n| settings.opted_out.contains(n)) {
            facts.opted_out.insert(id.clone());
        }
    }
    // Encounters count only for the cohort's candidates, @Home referrals and
    // residents: not for every patient a referral names.
    let mut counted: HashSet<String> = facts.assessments.keys().cloned().collect();
    counted.extend(
        facts
            .requests
            .iter()
            .filter(|r| r.code.starts_with("at-home-"))
            .map(|r| r.patient.clone()),
    );
    counted.extend(facts.residents.iter().cloned());
    let mut targets: Vec<(ResourceType, String)> = counted
        .into_iter()
        .map(|id| (ResourceType::Patient, id))
        .collect();
    targets.sort();
    // In parallel on several read connections: this is most of the
    // report's time on a large store.
    let chunk = targets.len().div_ceil(READ_PARALLELISM).max(1);
    let reads = targets
        .chunks(chunk)
        .map(|part| store.by_reference(ResourceType::Encounter, "patient", part.to_vec()));
    let mut encounters = Vec::new();
    for part in futures_util::future::join_all(reads).await {
        encounters.extend(part?);
    }
    for stored in encounters {
        if let Some(fact) = parse(&stored)
            .as_ref()
            .and_then(|e| facts::encounter(&stored.id, e))
        {
            facts.encounters.push(fact);
        }
    }
    // Counted from lookups that may run a sync ahead of the disk.
    store.settled().await?;
    Ok(facts)
}

fn person(patient: &Value, care_home: &str) -> measure::Person {
    let name = &patient["name"][0];
    let given: Vec<&str> = name["given"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    measure::Person {
        nhs_number: facts::patient(patient)
            .0
            .into_iter()
            .next()
            .unwrap_or_default(),
        name: format!(
            "{} {}",
            given.join(" "),
            name["family"].as_str().unwrap_or("")
        )
        .trim()
        .to_string(),
        care_home: care_home.to_string(),
    }
}

/// Read connections the report uses at once (of `store.read_connections`,
/// 4 by default: FHIR reads keep the rest).
const READ_PARALLELISM: usize = 2;

fn parse(stored: &Stored) -> Option<Value> {
    serde_json::from_str(&stored.body).ok()
}

/// A CSV field, quoted when it must be (RFC 4180).
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// A report as rows of (section, measure, value) for tables and CSV:
/// `proactive_care`, `ed_contacts.before`, `12`.
pub fn rows(report: &Value) -> Vec<(String, String, String)> {
    fn walk(value: &Value, section: &str, prefix: &str, out: &mut Vec<(String, String, String)>) {
        match value {
            Value::Object(members) => {
                for (key, value) in members {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(value, section, &name, out);
                }
            }
            Value::String(text) => {
                out.push((section.to_string(), prefix.to_string(), text.clone()))
            }
            Value::Null => out.push((section.to_string(), prefix.to_string(), String::new())),
            other => out.push((section.to_string(), prefix.to_string(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    if let Value::Object(members) = report {
        for (key, value) in members {
            if value.is_object() {
                walk(value, key, "", &mut out);
            } else {
                walk(value, "", key, &mut out);
            }
        }
    }
    out
}

/// Today's date in London.
pub fn today() -> Date {
    let now = jiff::Timestamp::now();
    match crate::hl7v2::datatypes::london_zone() {
        Some(zone) => now.to_zoned(zone).date(),
        None => now.to_zoned(jiff::tz::TimeZone::UTC).date(),
    }
}

/// Reads `YYYY-MM-DD`, naming the parameter when it is not one.
pub fn parse_date(name: &str, text: &str) -> Result<Date, String> {
    text.parse::<Date>()
        .map_err(|_| format!("{name}: `{text}` is not a date (YYYY-MM-DD)"))
}
