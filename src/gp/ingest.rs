//! A whole list, end to end: read each row, map it, validate what it maps
//! to, and store each row's resources in one transaction, several rows at a
//! time so that the store's group commit serves many. Bad rows are reported
//! with line and column and kept in quarantine; with `atomic`, one bad row
//! refuses the list.

use super::layout::{Field, Format, Layout, Overrides};
use super::map::{
    CARE_PLAN_ID_SYSTEM, MapContext, NHS_NUMBER_SYSTEM, PATHWAY_SYSTEM, REFERRAL_ID_SYSTEM,
    at_risk, map_patient, map_referral, merge_patient,
};
use super::read::{self, ListError, Record};
use super::row::{RiskRow, RowError, normalise_nhs_number, read_row};
use crate::fhir::json::Written;
use crate::fhir::outcome::Issue;
use crate::fhir::resource::{Rejection, prepare_json, prepare_written};
use crate::fhir::search::identifier_query;
use crate::fhir::{ResourceType, new_id};
use crate::store::{
    Change, IngestOutcome, IngestRequest, Mutation, MutationError, QuarantineEntry, Store,
    StoreError, Stored, WriteOutcome, WriteRequest,
};
use crate::validate::Validator;
use futures_util::future::join;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};

/// The journal and quarantine `source` of risk lists.
pub const SOURCE: &str = "gp-risk-list";
/// Rows mapped and written together, as one writer job (each row its own
/// transaction, all in one commit): enough for a commit to be shared by
/// ~2,000 resources, few enough to bound what is held at once and how long
/// other writers wait behind a chunk (~40 ms). Measured on a 50,000-row
/// list: 256 rows a chunk took 7.1 s end to end, 1,024 took 5.3 s, 2,048
/// 4.8–5.0 s with a third more memory.
const CHUNK_ROWS: usize = 1024;
/// Times a row is retried when its patient changed under it (If-Match).
const MAX_ATTEMPTS: usize = 3;

/// How to take a list.
#[derive(Debug, Clone)]
pub struct ListOptions {
    pub practice: String,
    pub format: Option<Format>,
    pub atomic: bool,
    pub overrides: Overrides,
    pub cx: MapContext,
}

/// The answer to an upload.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub practice: String,
    pub format: String,
    pub rows: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub patients_created: usize,
    pub patients_updated: usize,
    pub referrals_created: usize,
    pub errors: Vec<RowError>,
    /// Quarantine ids of the rejected rows.
    pub quarantined: Vec<i64>,
    /// The journal entry holding the upload as received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_id: Option<i64>,
    /// With `atomic`, whether the list was stored (false if any row was bad).
    pub stored: bool,
    /// NHS numbers of patients this practice referred to the proactive care
    /// pathway before who are not in this list. Reported, never acted on:
    /// the gateway takes no one off the pathway.
    pub not_in_list: Vec<String>,
}

/// What makes an upload fail as a whole.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    List(#[from] ListError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One row's planned writes.
struct Plan {
    row: RiskRow,
    raw: String,
    mutations: Vec<Mutation>,
    /// Index of the referral's ServiceRequest among the mutations.
    referral_at: Option<usize>,
}

/// Reads, maps, validates and stores a list. The caller has journaled it.
pub async fn ingest_list(
    store: &dyn Store,
    validator: &Validator,
    bytes: &[u8],
    options: &ListOptions,
    journal_id: Option<i64>,
) -> Result<Report, IngestError> {
    let list = read::open(bytes, options.format, &options.overrides)?;
    let layout = list.layout.clone();
    let header: Vec<String> = header_of(&layout);
    let mut report = Report {
        practice: options.practice.clone(),
        format: layout.format.as_str().to_string(),
        journal_id,
        stored: true,
        ..Report::default()
    };
    let mut rejected: Vec<(Record, Vec<RowError>)> = Vec::new();
    let mut held: Vec<Plan> = Vec::new(); // atomic: every plan, written at the end
    let mut seen: HashSet<String> = HashSet::new();
    // Pipelined: chunks are planned (parse, map, validate, look up: CPU on
    // this thread) while earlier ones are written (the store's writer
    // thread), so the two cores share the work. The planner may run up to
    // two chunks ahead of what is committed (one being written, one
    // queued); a patient in several chunks is still safe: creates are
    // conditional and updates carry If-Match.
    let (to_write, mut writes) = tokio::sync::mpsc::channel::<Vec<Plan>>(1);
    let mut written = Report::default();
    let mut refused: Vec<(Record, Vec<RowError>)> = Vec::new();
    let planner = async {
        let mut chunk: Vec<Record> = Vec::with_capacity(CHUNK_ROWS);
        let mut list = list;
        loop {
            let next = list.next();
            let end = next.is_none();
            match next {
                Some(Ok(record)) => {
                    if let Some((i, _)) = layout.column(Field::NhsNumber)
                        && let Some(Ok(nhs)) = record.fields.get(i).map(|v| normalise_nhs_number(v))
                    {
                        seen.insert(nhs);
                    }
                    chunk.push(record)
                }
                Some(Err(err)) => {
                    // A CSV fault (a quote never closed) ends the list here.
                    let line = match &err {
                        ListError::Csv { line, .. } => *line,
                        _ => 0,
                    };
                    report.rows += 1;
                    let error = RowError {
                        row: line,
                        column: String::new(),
                        reason: err.to_string(),
                    };
                    rejected.push((
                        Record {
                            line,
                            fields: Vec::new(),
                            raw: String::new(),
                        },
                        vec![error],
                    ));
                }
                None => {}
            }
            if chunk.len() == CHUNK_ROWS || (end && !chunk.is_empty()) {
                report.rows += chunk.len();
                let records: Vec<Record> = std::mem::take(&mut chunk);
                let (plans, mut bad) =
                    plan_chunk(store, validator, &layout, records, options).await?;
                rejected.append(&mut bad);
                if options.atomic {
                    held.extend(plans);
                } else if to_write.send(plans).await.is_err() {
                    // The writes stopped on a store error, reported below.
                    break;
                }
            }
            if end {
                break;
            }
        }
        drop(to_write);
        Ok::<(), StoreError>(())
    };
    let writer = async {
        while let Some(plans) = writes.recv().await {
            write_plans(
                store,
                validator,
                &layout,
                options,
                plans,
                &mut written,
                &mut refused,
            )
            .await?;
        }
        Ok::<(), StoreError>(())
    };
    let (wrote, planned) = join(writer, planner).await;
    wrote?;
    planned?;
    report.patients_created += written.patients_created;
    report.patients_updated += written.patients_updated;
    report.referrals_created += written.referrals_created;
    rejected.append(&mut refused);
    if options.atomic {
        // One transaction may change a patient once: a repeated NHS number
        // is a row error naming the row it repeats, not a store refusal
        // naming "entry 0".
        let mut first_row: HashMap<&str, u64> = HashMap::new();
        let column = layout
            .column(Field::NhsNumber)
            .map_or_else(String::new, |(_, h)| h.to_string());
        let mut repeats = Vec::new();
        for plan in &held {
            match first_row.get(plan.row.nhs_number.as_str()) {
                Some(first) => repeats.push((
                    Record {
                        line: plan.row.row,
                        fields: Vec::new(),
                        raw: plan.raw.clone(),
                    },
                    vec![RowError {
                        row: plan.row.row,
                        column: column.clone(),
                        reason: format!(
                            "NHS number {} is also on row {first}; an atomic list names each patient once",
                            plan.row.nhs_number
                        ),
                    }],
                )),
                None => {
                    first_row.insert(&plan.row.nhs_number, plan.row.row);
                }
            }
        }
        rejected.append(&mut repeats);
        if rejected.is_empty() {
            write_atomically(
                store,
                (validator, &layout, options),
                held,
                &mut report,
                &mut rejected,
            )
            .await?;
        } else {
            report.stored = false;
        }
    }
    if report.stored {
        report.not_in_list = referred_but_not_in(store, &options.practice, &seen).await?;
    }
    rejected.sort_by_key(|(record, _)| record.line);
    report.rejected = rejected.len();
    report.accepted = if report.stored {
        report.rows - report.rejected
    } else {
        0
    };
    let entries: Vec<QuarantineEntry> = rejected
        .iter()
        .map(|(record, errors)| {
            quarantine_entry(record, errors, &header, layout.format, options, journal_id)
        })
        .collect();
    report.quarantined = hold_once(store, &options.practice, entries).await?;
    report.errors = rejected
        .into_iter()
        .flat_map(|(_, errors)| errors)
        .collect();
    // Planned from lookups that may run a sync ahead of the disk: a dry
    // run, or rows left unchanged, wrote nothing after them.
    store.settled().await?;
    Ok(report)
}

/// Holds refused rows in quarantine, each once: a row the practice sent
/// before (the same text under the same header, read the same way, on any
/// line) that is still held keeps its entry, and a row repeated within the
/// list is held once. Returns the rows' entry ids in order.
async fn hold_once(
    store: &dyn Store,
    practice: &str,
    entries: Vec<QuarantineEntry>,
) -> Result<Vec<i64>, StoreError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    // A saved row as compared: its payload without the line it stood on,
    // as text (the payload's members are always written in one order).
    let row_of = |payload: &[u8]| {
        let mut saved = serde_json::from_slice::<Value>(payload).ok()?;
        saved.as_object_mut()?.remove("line");
        Some(saved.to_string())
    };
    // (The oldest entry of a row held more than once.)
    let mut held: HashMap<String, i64> = HashMap::new();
    for q in store.held_from(SOURCE, practice).await? {
        if let Some(row) = row_of(&q.entry.payload) {
            held.entry(row).or_insert(q.id);
        }
    }
    // Each row: its held entry, or the index of the new entry it takes.
    let mut slots: Vec<Result<i64, usize>> = Vec::with_capacity(entries.len());
    let mut fresh = Vec::new();
    let mut fresh_rows: HashMap<String, usize> = HashMap::new();
    for entry in entries {
        let row = row_of(&entry.payload);
        let slot = match row.as_ref().and_then(|r| held.get(r)) {
            Some(id) => Ok(*id),
            None => match row.as_ref().and_then(|r| fresh_rows.get(r)) {
                Some(index) => Err(*index),
                None => {
                    if let Some(row) = row {
                        fresh_rows.insert(row, fresh.len());
                    }
                    fresh.push(entry);
                    Err(fresh.len() - 1)
                }
            },
        };
        slots.push(slot);
    }
    let added = match fresh.is_empty() {
        true => Vec::new(),
        false => store.quarantine(fresh).await?,
    };
    Ok(slots
        .into_iter()
        .filter_map(|slot| {
            slot.or_else(|index| added.get(index).copied().ok_or(()))
                .ok()
        })
        .collect())
}

/// What replaying a quarantined row came to.
#[derive(Debug)]
pub enum Replayed {
    /// Stored, and its quarantine entry marked replayed in the same commit.
    Stored(Report),
    /// Still refused: the entry stays held.
    Refused(Vec<RowError>),
    /// The entry was replayed by another request meanwhile: nothing done.
    NotHeld,
}

/// Maps quarantine entry `held`'s row again (after a fix in configuration
/// or profiles) and stores it, marking the entry replayed in the same
/// commit.
pub async fn replay_row(
    store: &dyn Store,
    validator: &Validator,
    held: i64,
    payload: &[u8],
    options_for: impl Fn(&str, Option<Format>) -> ListOptions,
) -> Result<Replayed, IngestError> {
    let bad = |reason: &str| {
        Ok(Replayed::Refused(vec![RowError {
            row: 0,
            column: String::new(),
            reason: reason.to_string(),
        }]))
    };
    let Ok(saved) = serde_json::from_slice::<Value>(payload) else {
        return bad("the quarantined payload is not a saved risk-list row");
    };
    let (Some(practice), Some(header), Some(line), Some(raw)) = (
        saved["practice"].as_str(),
        saved["header"].as_array(),
        saved["line"].as_u64(),
        saved["row"].as_str(),
    ) else {
        return bad("the quarantined payload is not a saved risk-list row");
    };
    if raw.is_empty() {
        return bad(
            "the list was cut short at this line (a quote never closed); send the list again",
        );
    }
    let format = saved["format"].as_str().and_then(Format::parse);
    let mut options = options_for(practice, format);
    options.atomic = false;
    // The saved header and row, as a list of their own.
    let header: Vec<String> = header
        .iter()
        .filter_map(|h| h.as_str().map(str::to_string))
        .collect();
    let text = format!("{}\n{raw}\n", read::join_csv(&header));
    let list = read::open(text.as_bytes(), format, &options.overrides)?;
    let layout = list.layout.clone();
    let Some(Ok(mut record)) = list.into_iter().next() else {
        return bad("the saved row could not be read again");
    };
    record.line = line;
    for attempt in 0..MAX_ATTEMPTS {
        let mut plan = match plan_row(store, validator, &layout, &record, &options).await? {
            Ok(plan) => plan,
            Err(errors) => {
                // Planned on lookups that may run a sync ahead of the disk,
                // and nothing written after them.
                store.settled().await?;
                return Ok(Replayed::Refused(errors));
            }
        };
        // One transaction with the entry's mark: a raced create of the
        // row's patient is refused whole (and planned again), not kept.
        let outcome = store
            .ingest(IngestRequest {
                journal: None,
                write: Some(WriteRequest {
                    mutations: std::mem::take(&mut plan.mutations),
                    atomic: true,
                }),
                quarantine: Vec::new(),
                clocks: Vec::new(),
                replays: Some(held),
            })
            .await?;
        let error = match outcome {
            IngestOutcome::NotHeld => return Ok(Replayed::NotHeld),
            IngestOutcome::Done {
                write: Some(WriteOutcome::Applied(results)),
                ..
            } => {
                let mut report = Report {
                    practice: options.practice.clone(),
                    format: layout.format.as_str().to_string(),
                    rows: 1,
                    stored: true,
                    accepted: 1,
                    ..Report::default()
                };
                count(&plan, &results, &mut report);
                return Ok(Replayed::Stored(report));
            }
            IngestOutcome::Done {
                write:
                    Some(WriteOutcome::RolledBack {
                        error:
                            MutationError::VersionConflict { .. } | MutationError::CreatedMeanwhile(_),
                        ..
                    }),
                ..
            } if attempt + 1 < MAX_ATTEMPTS => continue,
            IngestOutcome::Done {
                write: Some(WriteOutcome::RolledBack { error, .. }),
                ..
            } => error.to_string(),
            other => format!("unexpected store answer {other:?}"),
        };
        return Ok(Replayed::Refused(vec![RowError {
            row: plan.row.row,
            column: String::new(),
            reason: format!("could not be stored: {error}"),
        }]));
    }
    Ok(Replayed::Refused(vec![RowError {
        row: record.line,
        column: String::new(),
        reason: format!("the row's records kept changing under it ({MAX_ATTEMPTS} attempts)"),
    }]))
}

/// The row read, mapped and validated into the writes that store it,
/// looking up its patient first (retries and replays; whole chunks look up
/// their patients together, see [`plan_chunk`]).
async fn plan_row(
    store: &dyn Store,
    validator: &Validator,
    layout: &Layout,
    record: &Record,
    options: &ListOptions,
) -> Result<Result<Plan, Vec<RowError>>, StoreError> {
    let row = match read_row(record.line, &record.fields, layout) {
        Ok(row) => row,
        Err(errors) => return Ok(Err(errors)),
    };
    let existing = store
        .search(&identifier_query(
            ResourceType::Patient,
            &[(NHS_NUMBER_SYSTEM.to_string(), row.nhs_number.clone())],
        ))
        .await?;
    let current = existing.resources.into_iter().next();
    let on_pathway = match &current {
        Some(p) => !patients_on_pathway(store, vec![(ResourceType::Patient, p.id.clone())])
            .await?
            .is_empty(),
        None => false,
    };
    Ok(plan_with(
        validator,
        layout,
        row,
        &record.raw,
        current.as_ref(),
        on_pathway,
        options,
    ))
}

/// Plans a chunk of rows: their patients and care plans are looked up in a
/// few searches rather than one or two per row.
async fn plan_chunk(
    store: &dyn Store,
    validator: &Validator,
    layout: &Layout,
    records: Vec<Record>,
    options: &ListOptions,
) -> Result<(Vec<Plan>, Vec<(Record, Vec<RowError>)>), StoreError> {
    let mut rejected = Vec::new();
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        match read_row(record.line, &record.fields, layout) {
            Ok(row) => rows.push((record, row)),
            Err(errors) => rejected.push((record, errors)),
        }
    }
    let numbers: Vec<(String, String)> = rows
        .iter()
        .map(|(_, r)| (NHS_NUMBER_SYSTEM.to_string(), r.nhs_number.clone()))
        .collect();
    let mut patients: HashMap<String, Stored> = HashMap::new();
    for patient in store.by_identifier(ResourceType::Patient, &numbers).await? {
        if let Ok(value) = serde_json::from_str::<Value>(&patient.body) {
            for identifier in value["identifier"].as_array().into_iter().flatten() {
                if identifier["system"] == NHS_NUMBER_SYSTEM
                    && let Some(nhs) = identifier["value"].as_str()
                {
                    patients.insert(nhs.to_string(), patient.clone());
                }
            }
        }
    }
    let subjects: Vec<(ResourceType, String)> = patients
        .values()
        .map(|p| (ResourceType::Patient, p.id.clone()))
        .collect();
    let on_pathway = patients_on_pathway(store, subjects).await?;
    let mut plans = Vec::with_capacity(rows.len());
    for (i, (record, row)) in rows.into_iter().enumerate() {
        // Lets the writes' side of the pipeline send the next chunk as soon
        // as the writer is free, rather than when this chunk is planned.
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
        let current = patients.get(&row.nhs_number);
        let on = current.is_some_and(|p| on_pathway.contains(&format!("Patient/{}", p.id)));
        match plan_with(validator, layout, row, &record.raw, current, on, options) {
            Ok(plan) => plans.push(plan),
            Err(errors) => rejected.push((record, errors)),
        }
    }
    Ok((plans, rejected))
}

/// Patients with a live proactive-care referral from `practice` whose NHS
/// number is not in `seen`, sorted. The referrals' identifiers (their NHS
/// numbers) come from the index; only referrals of patients missing from the
/// list are read.
async fn referred_but_not_in(
    store: &dyn Store,
    practice: &str,
    seen: &HashSet<String>,
) -> Result<Vec<String>, StoreError> {
    let unseen: Vec<String> = store
        .identifiers_in(ResourceType::ServiceRequest, REFERRAL_ID_SYSTEM)
        .await?
        .into_iter()
        .filter(|(nhs, _)| !seen.contains(nhs))
        .map(|(_, id)| id)
        .collect();
    let mut missing = Vec::new();
    // A page at a time, so that only a page of referrals is held.
    for ids in unseen.chunks(1000) {
        for referral in store
            .read_many(ResourceType::ServiceRequest, ids.to_vec())
            .await?
        {
            let Ok(referral) = serde_json::from_str::<Value>(&referral.body) else {
                continue;
            };
            let from_practice = referral["requester"]["identifier"]["value"] == practice;
            let live = matches!(
                referral["status"].as_str(),
                Some("draft" | "active" | "on-hold")
            );
            let nhs = referral["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["system"] == REFERRAL_ID_SYSTEM)
                .and_then(|i| i["value"].as_str());
            if let Some(nhs) = nhs
                && from_practice
                && live
            {
                missing.push(nhs.to_string());
            }
        }
    }
    missing.sort();
    missing.dedup();
    Ok(missing)
}

/// Which of `patients` (`Patient/{id}`) are on the proactive care pathway
/// already: a proactive-care CarePlan that is draft, active or on hold.
async fn patients_on_pathway(
    store: &dyn Store,
    patients: Vec<(ResourceType, String)>,
) -> Result<HashSet<String>, StoreError> {
    let mut on = HashSet::new();
    if patients.is_empty() {
        return Ok(on);
    }
    for plan in store
        .by_reference(ResourceType::CarePlan, "subject", patients)
        .await?
    {
        let Ok(plan) = serde_json::from_str::<Value>(&plan.body) else {
            continue;
        };
        let live = matches!(
            plan["status"].as_str(),
            Some("draft" | "active" | "on-hold")
        );
        let proactive = plan["category"].as_array().into_iter().flatten().any(|c| {
            c["coding"].as_array().into_iter().flatten().any(|coding| {
                coding["system"] == PATHWAY_SYSTEM && coding["code"] == "proactive-care"
            })
        });
        if live
            && proactive
            && let Some(subject) = plan["subject"]["reference"].as_str()
        {
            on.insert(subject.to_string());
        }
    }
    Ok(on)
}

/// The writes for a row, given its patient as stored (if any).
fn plan_with(
    validator: &Validator,
    layout: &Layout,
    row: RiskRow,
    raw: &str,
    current: Option<&Stored>,
    on_pathway: bool,
    options: &ListOptions,
) -> Result<Plan, Vec<RowError>> {
    let cx = &options.cx;
    let mut mutations = Vec::with_capacity(3);
    let invalid = |rejection: Rejection| rejection_errors(&row, layout, rejection);
    let patient_ref = match current {
        Some(current) => {
            if let Some(merged) = merge_patient(&current.body, &row, cx) {
                match prepare_json(&merged, Some(ResourceType::Patient), validator) {
                    Ok(resource) => mutations.push(Mutation::Update {
                        resource,
                        id: current.id.clone(),
                        if_match: Some(current.version),
                        full_url: None,
                    }),
                    Err(rejection) => return Err(invalid(rejection)),
                }
            }
            format!("Patient/{}", current.id)
        }
        None => {
            let patient = map_patient(&row, cx);
            let reference = format!("urn:uuid:{}", new_id());
            match prepare_value(&patient, ResourceType::Patient, validator) {
                Ok(resource) => mutations.push(Mutation::Create {
                    resource,
                    id: new_id(),
                    if_none_exist: Some(identifier_query(
                        ResourceType::Patient,
                        &[(NHS_NUMBER_SYSTEM.to_string(), row.nhs_number.clone())],
                    )),
                    full_url: Some(reference.clone()),
                }),
                Err(rejection) => return Err(invalid(rejection)),
            }
            reference
        }
    };

    let mut referral_at = None;
    if let Some(reason) = at_risk(&row, cx)
        && !on_pathway
    {
        let referral_ref = format!("urn:uuid:{}", new_id());
        let (service_request, care_plan) =
            map_referral(&row, cx, &reason, &patient_ref, &referral_ref);
        let service_request =
            prepare_value(&service_request, ResourceType::ServiceRequest, validator);
        let care_plan = prepare_value(&care_plan, ResourceType::CarePlan, validator);
        match (service_request, care_plan) {
            (Ok(sr), Ok(cp)) => {
                referral_at = Some(mutations.len());
                mutations.push(Mutation::Create {
                    resource: sr,
                    id: new_id(),
                    if_none_exist: Some(identifier_query(
                        ResourceType::ServiceRequest,
                        &[(REFERRAL_ID_SYSTEM.to_string(), row.nhs_number.clone())],
                    )),
                    full_url: Some(referral_ref),
                });
                mutations.push(Mutation::Create {
                    resource: cp,
                    id: new_id(),
                    if_none_exist: Some(identifier_query(
                        ResourceType::CarePlan,
                        &[(CARE_PLAN_ID_SYSTEM.to_string(), row.nhs_number.clone())],
                    )),
                    full_url: None,
                });
            }
            (Err(rejection), _) | (_, Err(rejection)) => return Err(invalid(rejection)),
        }
    }
    Ok(Plan {
        row,
        raw: raw.to_string(),
        mutations,
        referral_at,
    })
}

/// Writes each row's plan as its own transaction, all rows concurrently so
/// that they share commits. A row whose patient changed meanwhile is planned
/// again.
async fn write_plans(
    store: &dyn Store,
    validator: &Validator,
    layout: &Layout,
    options: &ListOptions,
    plans: Vec<Plan>,
    report: &mut Report,
    rejected: &mut Vec<(Record, Vec<RowError>)>,
) -> Result<(), StoreError> {
    let mut pending = plans;
    for attempt in 0..MAX_ATTEMPTS {
        if pending.is_empty() {
            break;
        }
        // One job for the chunk: each row its own transaction, all in one
        // commit, without a channel message and a wake-up per row.
        // A plan refused is planned again from its row: its mutations are
        // not needed after this.
        let requests = pending
            .iter_mut()
            .map(|plan| WriteRequest {
                mutations: std::mem::take(&mut plan.mutations),
                atomic: true,
            })
            .collect();
        let outcomes = store.write_each(requests).await?;
        let mut retry = Vec::new();
        for (plan, outcome) in pending.into_iter().zip(outcomes) {
            match outcome? {
                // The row's patient was created by someone else since the
                // row was planned: what was written stands (its referral
                // points at that patient), and the row is planned again so
                // that its facts are merged into the patient.
                WriteOutcome::Applied(results)
                    if raced_patient(&results) && attempt + 1 < MAX_ATTEMPTS =>
                {
                    count(&plan, &results, report);
                    retry.push(plan);
                }
                WriteOutcome::Applied(results) => count(&plan, &results, report),
                WriteOutcome::RolledBack {
                    error: MutationError::VersionConflict { .. },
                    ..
                } if attempt + 1 < MAX_ATTEMPTS => retry.push(plan),
                WriteOutcome::RolledBack { error, .. } => {
                    let record = Record {
                        line: plan.row.row,
                        fields: Vec::new(),
                        raw: plan.raw.clone(),
                    };
                    let error = RowError {
                        row: plan.row.row,
                        column: String::new(),
                        reason: format!("could not be stored: {error}"),
                    };
                    rejected.push((record, vec![error]));
                }
            }
        }
        pending = replan(store, validator, layout, options, retry, rejected).await?;
    }
    Ok(())
}

/// Plans rows again from what is stored now; a row that no longer plans
/// goes to `rejected`.
async fn replan(
    store: &dyn Store,
    validator: &Validator,
    layout: &Layout,
    options: &ListOptions,
    plans: Vec<Plan>,
    rejected: &mut Vec<(Record, Vec<RowError>)>,
) -> Result<Vec<Plan>, StoreError> {
    let mut replanned = Vec::with_capacity(plans.len());
    for plan in plans {
        let record = Record {
            line: plan.row.row,
            fields: plan_fields(&plan, layout),
            raw: plan.raw.clone(),
        };
        match plan_row(store, validator, layout, &record, options).await? {
            Ok(plan) => replanned.push(plan),
            Err(errors) => rejected.push((record, errors)),
        }
    }
    Ok(replanned)
}

/// An atomic list: every row's writes in one transaction. `again` plans
/// rows again whose patient someone else created meanwhile.
async fn write_atomically(
    store: &dyn Store,
    again: (&Validator, &Layout, &ListOptions),
    mut plans: Vec<Plan>,
    report: &mut Report,
    rejected: &mut Vec<(Record, Vec<RowError>)>,
) -> Result<(), StoreError> {
    let mut bounds = Vec::with_capacity(plans.len());
    let mut mutations = Vec::new();
    for plan in &mut plans {
        let start = mutations.len();
        mutations.append(&mut plan.mutations);
        bounds.push(start..mutations.len());
    }
    match store
        .write(WriteRequest {
            mutations,
            atomic: true,
        })
        .await?
    {
        WriteOutcome::Applied(results) => {
            let mut raced = Vec::new();
            for (plan, range) in plans.into_iter().zip(bounds) {
                count(&plan, &results[range.clone()], report);
                if raced_patient(&results[range]) {
                    raced.push(plan);
                }
            }
            // Rows whose patient was created by someone else meanwhile:
            // the list is stored; their facts are merged in after it.
            if !raced.is_empty() {
                let (validator, layout, options) = again;
                let replanned = replan(store, validator, layout, options, raced, rejected).await?;
                write_plans(
                    store, validator, layout, options, replanned, report, rejected,
                )
                .await?;
            }
        }
        WriteOutcome::RolledBack { index, error } => {
            report.stored = false;
            if let Some((plan, _)) = plans.iter().zip(&bounds).find(|(_, r)| r.contains(&index)) {
                let record = Record {
                    line: plan.row.row,
                    fields: Vec::new(),
                    raw: plan.raw.clone(),
                };
                rejected.push((
                    record,
                    vec![RowError {
                        row: plan.row.row,
                        column: String::new(),
                        reason: format!("could not be stored: {error}"),
                    }],
                ));
            }
        }
    }
    Ok(())
}

/// Did a row's conditional Patient create find its patient? A row plans
/// one only when it found no patient, so someone else made it meanwhile.
fn raced_patient(results: &[Result<crate::store::Written, MutationError>]) -> bool {
    results.iter().any(|result| {
        matches!(result, Ok(w) if w.change == Change::Existing
            && w.resource.resource_type == ResourceType::Patient)
    })
}

fn count(
    plan: &Plan,
    results: &[Result<crate::store::Written, MutationError>],
    report: &mut Report,
) {
    for (i, result) in results.iter().enumerate() {
        let Ok(written) = result else { continue };
        match (written.resource.resource_type, written.change) {
            (ResourceType::Patient, Change::Created) => report.patients_created += 1,
            (ResourceType::Patient, Change::Updated) => report.patients_updated += 1,
            (ResourceType::ServiceRequest, Change::Created) if plan.referral_at == Some(i) => {
                report.referrals_created += 1
            }
            _ => {}
        }
    }
}

/// Validation issues of a mapped resource, as row errors: the column is the
/// one the failing element came from, where there is one.
fn rejection_errors(row: &RiskRow, layout: &Layout, rejection: Rejection) -> Vec<RowError> {
    rejection
        .issues()
        .into_iter()
        .filter(|i| {
            matches!(
                i.severity,
                crate::fhir::outcome::Severity::Error | crate::fhir::outcome::Severity::Fatal
            )
        })
        .map(|issue: Issue| {
            let expression = issue.expression.first().cloned().unwrap_or_default();
            let field = [
                ("birthDate", Field::BirthDate),
                ("gender", Field::Gender),
                ("name", Field::FamilyName),
                ("address", Field::Postcode),
                ("identifier", Field::NhsNumber),
            ]
            .into_iter()
            .find(|(element, _)| expression.contains(element))
            .map(|(_, f)| f);
            let column = field
                .and_then(|f| layout.column(f).map(|(_, h)| h.to_string()))
                .unwrap_or_default();
            RowError {
                row: row.row,
                column,
                reason: format!("{} ({expression})", issue.diagnostics),
            }
        })
        .collect()
}

fn header_of(layout: &Layout) -> Vec<String> {
    let mut columns: Vec<(usize, String)> = Field::ALL
        .iter()
        .filter_map(|f| layout.column(*f).map(|(i, h)| (i, h.to_string())))
        .collect();
    columns.sort();
    let width = columns.last().map_or(0, |(i, _)| i + 1);
    let mut header = vec![String::new(); width];
    for (i, h) in columns {
        header[i] = h;
    }
    header
}

/// The fields of a planned row, for planning it again.
fn plan_fields(plan: &Plan, layout: &Layout) -> Vec<String> {
    let row = &plan.row;
    let mut fields = vec![String::new(); header_of(layout).len()];
    let mut set = |field: Field, value: Option<String>| {
        if let (Some((i, _)), Some(v)) = (layout.column(field), value)
            && i < fields.len()
        {
            fields[i] = v;
        }
    };
    set(Field::NhsNumber, Some(row.nhs_number.clone()));
    set(Field::FamilyName, row.family_name.clone());
    set(
        Field::GivenNames,
        (!row.given_names.is_empty()).then(|| row.given_names.join(" ")),
    );
    set(Field::BirthDate, row.birth_date.clone());
    set(Field::Gender, row.gender.map(str::to_string));
    set(Field::Postcode, row.postcode.clone());
    set(Field::UsualGp, row.usual_gp.clone());
    set(Field::EfiScore, row.efi_score.map(|s| s.to_string()));
    set(Field::EfiCategory, row.efi_category.map(str::to_string));
    fields
}

fn quarantine_entry(
    record: &Record,
    errors: &[RowError],
    header: &[String],
    format: Format,
    options: &ListOptions,
    journal_id: Option<i64>,
) -> QuarantineEntry {
    // The format the list was read as (found from its header when none was
    // given): the saved header keeps only the columns read, which may not
    // be enough to find it again.
    let payload = json!({
        "practice": options.practice,
        "format": format.as_str(),
        "header": header,
        "line": record.line,
        "row": record.raw,
    });
    QuarantineEntry {
        source: SOURCE.to_string(),
        sender: options.practice.clone(),
        journal_id,
        received_at_ms: 0,
        location: format!("line {}", record.line),
        reasons: serde_json::to_string(errors).unwrap_or_else(|_| "[]".to_string()),
        content_type: "application/json".to_string(),
        payload: payload.to_string().into_bytes(),
    }
}

/// Prepares a resource the mapping built, without parsing it back.
fn prepare_value(
    value: &Value,
    ty: ResourceType,
    validator: &Validator,
) -> Result<crate::fhir::resource::Prepared, Rejection> {
    prepare_written(&Written::of(value), value, Some(ty), validator)
}
