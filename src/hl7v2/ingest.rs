//! The ADT feed: one message in, one acknowledgement out, whether it came
//! over MLLP or HTTP.
//!
//! ```text
//! bytes ─ parse ─┬─ AR  cannot be read, or not an ADT event we take (not journaled)
//!                └ map (adt) ─┬─ AE  content error: journal + quarantine, one commit
//!                             └ plan (state) ─ validate ─┬─ AE  as above
//!                                                        └─ AA  journal + writes, one commit
//! ```
//!
//! Nothing is acknowledged before it is durable, and the journal entry is
//! committed together with the message's effect: a resend after a crash
//! finds no journal entry and is applied, and a resend after an `AA` finds
//! one and changes nothing (same sender and MSH-10, and the same message:
//! another message under a used MSH-10 is held, see [`resend`]). A failure
//! of the store itself is answered `AR` (HL7 v2.5 §2.9.2: rejected for a
//! reason unrelated to content), which tells the sender to send it again.
//!
//! Messages naming the same patient are applied one at a time (a striped
//! lock on their identifiers); the store's version checks catch any other
//! writer, and the message is planned again from what is stored.

use super::adt::{self, Adt, AdtContext, AdtError, NHS_NUMBER_SYSTEM, PatientFacts, Visit};
use super::condition::Condition;
use super::datatypes::DataError;
use super::er7::Message;
use super::metrics::{self, FeedMetrics};
use super::mllp::{AckCode, AckError, ack_in_mode};
use super::resend;
use super::state::{self, Times, encounter_from, patient_from, replaced_by, rewrite};
use crate::fhir::json::{Written, same_in_order};
use crate::fhir::outcome::Severity;
use crate::fhir::resource::{Prepared, Rejection, prepare_written};
use crate::fhir::search::identifier_query;
use crate::fhir::value::Members;
use crate::fhir::{ResourceType, new_id};
use crate::gp::read::utf8_or_windows_1252;
use crate::hashing::FastMap;
use crate::store::{
    Change, Clock, EventClock, IngestOutcome, IngestRequest, JournalEntry, Mutation, MutationError,
    QuarantineEntry, Store, StoreError, Stored, WriteOutcome, WriteRequest, search_all,
};
use crate::validate::Validator;
use serde_json::Value;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Mutex, MutexGuard};

/// Journal and quarantine `source` of messages received over MLLP, and over
/// `POST /ingest/hl7v2`: a message resent over the other is a repeat.
pub use crate::store::{SOURCE_HL7V2_HTTP as SOURCE_HTTP, SOURCE_HL7V2_MLLP as SOURCE_MLLP};
/// How a raw message is labelled in the journal and quarantine.
pub const CONTENT_TYPE: &str = "x-application/hl7-v2+er7";
/// Attempts to plan and write a message when other writers keep changing
/// its records.
const MAX_ATTEMPTS: usize = 8;
/// Locks that serialise messages naming the same identifier (one per hash
/// of an identifier). With 256, 16 connections' messages (two or three
/// identifiers each) shared a stripe often enough that a message waited
/// 0.47 ms for the lock on average; with 4,096, 0.03 ms (HL7 v2 bench,
/// 2026-11-23). A stripe is a few dozen bytes.
const LOCK_STRIPES: usize = 4096;

/// The types whose `subject` a merge (A40) moves to the surviving record.
const MOVED_ON_MERGE: [ResourceType; 3] = [
    ResourceType::Encounter,
    ResourceType::CarePlan,
    ResourceType::ServiceRequest,
];

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stored: `AA`.
    Accepted { journal_id: Option<i64> },
    /// A repeat of journal entry `journal_id`: nothing changed. `held` when
    /// the original is in quarantine (then the answer is `AE` again).
    Repeat {
        journal_id: i64,
        held: Option<String>,
    },
    /// Content error, quarantined: `AE`.
    Quarantined {
        quarantine_id: Option<i64>,
        errors: Vec<DataError>,
    },
    /// Not something this interface takes, or not readable: `AR`.
    Rejected(AckError),
    /// A replay of a quarantine entry that is no longer held (replayed
    /// meanwhile): nothing done.
    NotHeld,
}

/// The feed's shared state: the store, the validator, the mapping options.
pub struct Feed {
    store: Arc<dyn Store>,
    validator: Arc<Validator>,
    cx: AdtContext,
    stripes: Vec<Mutex<()>>,
    sequence: AtomicU64,
    known: std::sync::Mutex<KnownPatients>,
    /// What it answered, and how fast: `/metrics`.
    metrics: FeedMetrics,
    /// Held while a message under a used MSH-10 is looked for in quarantine
    /// and held there, so that two copies at once are held once (rare: no
    /// need of finer locks).
    holding: Mutex<()>,
}

/// Patient facts read before, by [`adt::patient_key`]: a feed sends the
/// same PID with every message about a patient (an A01, then A02s, A08s,
/// an A03), and reading it again was ~75,000 instructions, a ninth of a
/// message's. Kept once planned (a copy when they move into a new version
/// of the record), the oldest forgotten first.
#[derive(Default)]
struct KnownPatients {
    facts: FastMap<Box<str>, Arc<PatientFacts>>,
    order: std::collections::VecDeque<Box<str>>,
}

/// Patient facts kept by a feed: ~12 KiB each as JSON values, so ~6 MiB
/// (2,048 put the HL7 v2 bench's RSS at 96 MiB instead of 78). A visit's
/// messages mostly come within hours of each other.
const KNOWN_PATIENTS: usize = 512;

impl KnownPatients {
    fn get(&self, key: &str) -> Option<Arc<PatientFacts>> {
        self.facts.get(key).cloned()
    }

    /// Keeps `facts`; returns the facts forgotten to make room, to be
    /// dropped once the lock is released (freeing them, long cold, was most
    /// of the time spent holding it).
    #[must_use]
    fn keep(&mut self, key: &str, facts: Arc<PatientFacts>) -> Option<Arc<PatientFacts>> {
        if self.facts.contains_key(key) {
            return None;
        }
        let mut forgotten = None;
        if self.order.len() >= KNOWN_PATIENTS
            && let Some(oldest) = self.order.pop_front()
        {
            forgotten = self.facts.remove(&oldest);
        }
        let key: Box<str> = key.into();
        self.order.push_back(key.clone());
        self.facts.insert(key, facts);
        forgotten
    }
}

/// Facts taken out of an [`Adt`] (its own are moved into the records).
static NO_FACTS: std::sync::LazyLock<Arc<PatientFacts>> = std::sync::LazyLock::new(Arc::default);

impl Feed {
    pub fn new(store: Arc<dyn Store>, validator: Arc<Validator>, cx: AdtContext) -> Feed {
        Feed {
            store,
            validator,
            cx,
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            sequence: AtomicU64::new(
                u64::try_from(jiff::Timestamp::now().as_millisecond()).unwrap_or(0) * 1000,
            ),
            known: std::sync::Mutex::default(),
            metrics: FeedMetrics::default(),
            holding: Mutex::new(()),
        }
    }

    /// The feed's metrics, in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        self.metrics.render(out);
    }

    /// MLLP connections opened (`1`) or closed (`-1`).
    pub fn connections(&self, change: i64) {
        self.metrics.connections(change);
    }

    /// Counts an answer to a sender over `source`'s transport, begun at
    /// `since`, and the errors it reports.
    fn count(&self, source: &str, code: AckCode, errors: &[AckError], since: std::time::Instant) {
        let transport = metrics::transport(source == SOURCE_MLLP);
        self.metrics.answered(transport, code, since.elapsed());
        for e in errors {
            self.metrics.error(e.condition);
        }
    }

    /// Takes one message and answers its ACK (ER7 text, `\r` segments).
    pub async fn receive(&self, raw: &[u8], source: &str) -> String {
        let since = std::time::Instant::now();
        let text = utf8_or_windows_1252(raw);
        let message = match Message::parse(&text) {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(source, location = %err.location, error = %err.message, "HL7 message rejected: unreadable");
                let error = AckError {
                    text: format!("the message cannot be read: {err}"),
                    location: Some(err.location),
                    condition: Condition::SegmentSequence,
                };
                let header = header_of(&text);
                let errors = [error];
                self.count(source, AckCode::AR, &errors, since);
                return self.ack(header.as_ref(), AckCode::AR, &errors);
            }
        };
        let verdict = match self.process(&message, raw, source).await {
            Ok(verdict) => verdict,
            Err(err) => {
                tracing::error!(source, error = %err, "HL7 message not stored");
                Verdict::Rejected(AckError {
                    location: None,
                    condition: Condition::InternalError,
                    text: format!("not stored, please send again: {err}"),
                })
            }
        };
        let (code, errors) = answer(&verdict);
        self.count(source, code, &errors, since);
        self.ack(Some(&message), code, &errors)
    }

    /// The `AR` for a message over the size limit, refused unread for
    /// `reason`: named from its first line (`head`), its MSH, when that
    /// reads, as any ACK names the message it answers (MSA-2, sender).
    pub fn too_large(&self, head: &[u8], reason: &str, source: &str) -> String {
        let errors = [AckError {
            location: None,
            condition: Condition::SegmentSequence,
            text: reason.to_string(),
        }];
        self.count(source, AckCode::AR, &errors, std::time::Instant::now());
        let header = header_of(&utf8_or_windows_1252(head));
        self.ack(header.as_ref(), AckCode::AR, &errors)
    }

    /// The `AR` for input received over `source` that is not a message at
    /// all.
    pub fn unreadable(&self, reason: &str, source: &str) -> String {
        let errors = [AckError {
            location: None,
            condition: Condition::SegmentSequence,
            text: reason.to_string(),
        }];
        self.count(source, AckCode::AR, &errors, std::time::Instant::now());
        self.ack(None, AckCode::AR, &errors)
    }

    /// The ACK for a verdict. (For a replay, not a sender: `Accepted` then
    /// means the entry was applied.)
    pub fn acknowledge(&self, message: &Message, verdict: &Verdict) -> String {
        let (code, errors) = answer(verdict);
        self.ack(Some(message), code, &errors)
    }

    fn ack(&self, message: Option<&Message>, code: AckCode, errors: &[AckError]) -> String {
        let control_id = format!("A{}", self.sequence.fetch_add(1, Ordering::Relaxed));
        ack_in_mode(
            message,
            code,
            &control_id,
            &ack_time(),
            errors,
            self.cx.accept_acknowledgements,
        )
    }

    /// Journals, maps, validates and stores one parsed message.
    pub async fn process(
        &self,
        message: &Message,
        raw: &[u8],
        source: &str,
    ) -> Result<Verdict, StoreError> {
        let journal = JournalEntry {
            source: source.to_string(),
            sender: sender_of(message),
            message_id: message.control_id(),
            content_type: CONTENT_TYPE.to_string(),
            received_at_ms: jiff::Timestamp::now().as_millisecond(),
            payload: bytes::Bytes::copy_from_slice(raw),
        };
        self.apply(message, Some(journal), source, None).await
    }

    /// Runs quarantine entry `held` again (its message is journaled
    /// already): applied, it is marked replayed in the same commit.
    pub async fn replay(&self, held: i64, raw: &[u8], source: &str) -> Result<Verdict, StoreError> {
        let text = utf8_or_windows_1252(raw);
        match Message::parse(&text) {
            Ok(message) => self.apply(&message, None, source, Some(held)).await,
            Err(err) => Ok(Verdict::Rejected(AckError {
                location: Some(err.location),
                condition: Condition::SegmentSequence,
                text: err.message,
            })),
        }
    }

    async fn apply(
        &self,
        message: &Message,
        journal: Option<JournalEntry>,
        source: &str,
        replays: Option<i64>,
    ) -> Result<Verdict, StoreError> {
        let key = adt::patient_key(message);
        let mut adt = match adt::read_with(message, &self.cx, self.known_facts(key.as_deref())) {
            Ok(adt) => adt,
            Err(AdtError::Unsupported {
                location,
                condition,
                reason,
            }) => {
                let error = DataError::new(condition, location, reason);
                if let Some(held) = replays {
                    let reasons = reasons_json(std::slice::from_ref(&error));
                    self.store.revise_quarantined(held, reasons).await?;
                }
                return Ok(Verdict::Rejected(AckError {
                    location: Some(error.location),
                    condition,
                    text: error.reason,
                }));
            }
            Err(AdtError::Invalid(errors)) => {
                return self
                    .quarantine(message, journal, source, errors, replays)
                    .await;
            }
        };
        let _guards = self.lock(&adt).await;
        // The message's facts move into the records planned from them; an
        // attempt after the first reads them from the message again.
        let patient = std::mem::replace(&mut adt.patient, NO_FACTS.clone());
        let mut facts = Some((patient, adt.visit.take()));
        for _ in 0..MAX_ATTEMPTS {
            let (patient, visit) = match facts.take() {
                Some(facts) => facts,
                None => match adt::read_with(message, &self.cx, self.known_facts(key.as_deref())) {
                    Ok(again) => (again.patient, again.visit),
                    // (Not met: reading is a pure function of the message.)
                    Err(_) => break,
                },
            };
            let planned = match self.plan(&adt, patient, visit, key.as_deref()).await? {
                Ok(planned) => planned,
                Err(errors) => {
                    return self
                        .quarantine(message, journal, source, errors, replays)
                        .await;
                }
            };
            let Writes { mutations, values } = planned.writes;
            let full_urls: Vec<Option<String>> = mutations
                .iter()
                .map(|m| m.full_url().map(str::to_string))
                .collect();
            let outcome = self
                .store
                .ingest(IngestRequest {
                    journal: journal.clone(),
                    write: Some(WriteRequest {
                        mutations,
                        atomic: true,
                    }),
                    quarantine: Vec::new(),
                    clocks: planned.clocks,
                    replays,
                })
                .await?;
            match outcome {
                IngestOutcome::Repeat { journal_id, held } => {
                    return self.repeat(message, source, journal_id, held).await;
                }
                IngestOutcome::NotHeld => return Ok(Verdict::NotHeld),
                // A record changed, or a create's record made, by someone
                // else since the plan: nothing was written (the journal
                // entry neither); plan again on top of what is there now.
                IngestOutcome::Done {
                    write:
                        Some(WriteOutcome::RolledBack {
                            error:
                                MutationError::VersionConflict { .. }
                                | MutationError::CreatedMeanwhile(_),
                            ..
                        }),
                    ..
                } => {}
                IngestOutcome::Done {
                    write: Some(WriteOutcome::RolledBack { error, .. }),
                    ..
                } => {
                    let errors = vec![DataError::new(
                        Condition::InternalError,
                        "MSH-10",
                        format!("the message's records cannot be stored: {error}"),
                    )];
                    return self
                        .quarantine(message, journal, source, errors, replays)
                        .await;
                }
                IngestOutcome::Done {
                    journal_id, write, ..
                } => {
                    if let Some(WriteOutcome::Applied(results)) = &write {
                        self.remember(results, &full_urls, values);
                    }
                    return Ok(Verdict::Accepted { journal_id });
                }
            }
        }
        let errors = vec![DataError::new(
            Condition::RecordLocked,
            "MSH-10",
            format!(
                "the records this message changes kept changing under it ({MAX_ATTEMPTS} attempts)"
            ),
        )];
        self.quarantine(message, journal, source, errors, replays)
            .await
    }

    async fn quarantine(
        &self,
        message: &Message,
        journal: Option<JournalEntry>,
        source: &str,
        errors: Vec<DataError>,
        replays: Option<i64>,
    ) -> Result<Verdict, StoreError> {
        if journal.is_none() {
            // Already held: a failed replay stays where it is, with the
            // reasons it failed for now (an answer after the commit that
            // records them, so after the sync its lookups may have run
            // ahead of).
            if let Some(held) = replays {
                self.store
                    .revise_quarantined(held, reasons_json(&errors))
                    .await?;
            } else {
                self.store.settled().await?;
            }
            return Ok(Verdict::Quarantined {
                quarantine_id: None,
                errors,
            });
        }
        let entry = quarantine_entry(message, source, &errors);
        let outcome = self
            .store
            .ingest(IngestRequest {
                journal,
                write: None,
                quarantine: vec![entry],
                clocks: Vec::new(),
                replays: None,
            })
            .await?;
        Ok(match outcome {
            IngestOutcome::Repeat { journal_id, held } => {
                self.repeat(message, source, journal_id, held).await?
            }
            IngestOutcome::NotHeld => Verdict::NotHeld,
            IngestOutcome::Done { quarantined, .. } => Verdict::Quarantined {
                quarantine_id: quarantined.first().copied(),
                errors,
            },
        })
    }

    /// The verdict on a message whose sender and MSH-10 are journal entry
    /// `journal_id`'s: a repeat if it is that message (see [`resend`]),
    /// else another message, held in quarantine without a journal entry
    /// (its MSH-10 is taken) for someone to look at. Sent again, it is
    /// found held and answered as it was, not held twice; once replayed
    /// (applied) or discarded, it is answered `AA` and changes nothing. One
    /// at a time: two copies at once on two connections are held once.
    async fn repeat(
        &self,
        message: &Message,
        source: &str,
        journal_id: i64,
        held: Option<String>,
    ) -> Result<Verdict, StoreError> {
        let repeat = Verdict::Repeat { journal_id, held };
        // (Gone or unreadable: not met, as only a message read is journaled.)
        let Some(earlier) = self.store.journal_entry(journal_id).await? else {
            return Ok(repeat);
        };
        let Ok(first) = Message::parse(&utf8_or_windows_1252(&earlier.payload)) else {
            return Ok(repeat);
        };
        let Some(at) = resend::difference(&first, message) else {
            return Ok(repeat);
        };
        let received = crate::fhir::datetime::format_instant(earlier.received_at_ms);
        let errors = vec![DataError::new(
            Condition::DuplicateKey,
            "MSH-10",
            resend::reused(
                &format!("journal entry {journal_id}, received {received}"),
                &at,
            ),
        )];
        let entry = quarantine_entry(message, source, &errors);
        // (Taken with a patient's stripes held, never the other way round.)
        let _holding = self.holding.lock().await;
        // This message held before (the same as [`resend`] has it), still
        // held first.
        let mut copies: Vec<_> = self
            .store
            .unjournaled(&entry)
            .await?
            .into_iter()
            .filter(|q| {
                Message::parse(&utf8_or_windows_1252(&q.entry.payload))
                    .is_ok_and(|held| resend::difference(&held, message).is_none())
            })
            .collect();
        copies.sort_by_key(|q| q.status != "held");
        match copies.first() {
            Some(copy) if copy.status == "held" => {
                return Ok(Verdict::Quarantined {
                    quarantine_id: Some(copy.id),
                    errors,
                });
            }
            // Replayed (applied) or discarded (not to be): dealt with, so
            // this is a repeat of it.
            Some(_) => return Ok(Verdict::Accepted { journal_id: None }),
            None => {}
        }
        let outcome = self
            .store
            .ingest(IngestRequest {
                journal: None,
                write: None,
                quarantine: vec![entry],
                clocks: Vec::new(),
                replays: None,
            })
            .await?;
        let quarantine_id = match outcome {
            IngestOutcome::Done { quarantined, .. } => quarantined.first().copied(),
            IngestOutcome::Repeat { .. } | IngestOutcome::NotHeld => None,
        };
        Ok(Verdict::Quarantined {
            quarantine_id,
            errors,
        })
    }

    /// The patient facts of an earlier message with the same key, if kept.
    fn known_facts(&self, key: Option<&str>) -> Option<Arc<PatientFacts>> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.get(key?)
    }

    fn keep_facts(&self, key: &str, facts: Arc<PatientFacts>) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let forgotten = known.keep(key, facts);
        drop(known);
        drop(forgotten);
    }

    /// Locks the stripes of every identifier the message names.
    async fn lock(&self, adt: &Adt) -> Vec<MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = adt
            .patient
            .identifiers
            .iter()
            .chain(&adt.prior)
            .filter_map(|id| Some((id.at("system").as_str()?, id.at("value").as_str()?)))
            .map(|key| {
                let mut h = DefaultHasher::new();
                key.hash(&mut h);
                (h.finish() % LOCK_STRIPES as u64) as usize
            })
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for i in stripes {
            guards.push(self.stripes[i].lock().await);
        }
        guards
    }

    /// The writes that apply `adt` to what is stored now. Its patient facts
    /// and visit are given apart (`adt.patient` and `adt.visit` are not
    /// read), to be moved into the records rather than copied.
    async fn plan(
        &self,
        adt: &Adt,
        facts: Arc<PatientFacts>,
        visit: Option<Visit>,
        key: Option<&str>,
    ) -> Result<Result<Planned, Vec<DataError>>, StoreError> {
        let store = self.store.as_ref();
        let mut writes = Writes::default();

        // Who: the record with the NHS number, else one with a hospital number.
        let keys = facts.keys();
        let nhs_key = facts
            .nhs_number
            .as_ref()
            .map(|n| (NHS_NUMBER_SYSTEM.to_string(), n.clone()));
        let locals: Vec<(String, String)> = keys
            .iter()
            .filter(|(system, _)| system != NHS_NUMBER_SYSTEM)
            .cloned()
            .collect();
        // The patient's and the visit's records, with their event clocks,
        // in one read.
        let visit_key = visit
            .as_ref()
            .map(|v| adt::identifier_keys(std::slice::from_ref(&v.identifier)));
        let mut lookups = vec![(ResourceType::Patient, keys.as_slice())];
        if let Some(key) = &visit_key {
            lookups.push((ResourceType::Encounter, key.as_slice()));
        }
        let mut lookups = store.by_identifier_clocked(&lookups).await?.into_iter();
        let (patients, encounters) = (
            lookups.next().unwrap_or_default(),
            lookups.next().unwrap_or_default(),
        );
        let known_clocks: Vec<(String, i64, Option<Clock>)> = patients
            .iter()
            .map(|(s, c)| (s.id.clone(), s.version, c.clone()))
            .collect();
        let found = parsed(store, patients.into_iter().map(|(s, _)| s).collect());
        // The records the message's identifiers are on (a survivor reached
        // only through one of them was reached through a merge).
        let found_ids: Vec<String> = found.iter().map(|(s, _)| s.id.clone()).collect();
        let carries_ours = |v: &Value| {
            nhs_key.as_ref().is_some_and(|(system, value)| {
                v.at("identifier").as_array().is_some_and(|ids| {
                    ids.iter().any(|id| {
                        id.at("system") == system.as_str() && id.at("value") == value.as_str()
                    })
                })
            })
        };
        let (with_nhs, without): (Vec<_>, Vec<_>) =
            found.into_iter().partition(|(_, v)| carries_ours(v));
        let by_nhs = survivors(store, with_nhs).await?;
        // The record with the message's NHS number was merged into one
        // traced to another (an NHS number superseded): the message is about
        // the record merged away (sent before the merge, delivered after).
        // (A survivor without the number was reached through a merge: the
        // lookup found every record that has it.)
        let merged_away = by_nhs.len() == 1
            && !carries_ours(&by_nhs[0].1)
            && nhs_number_of(&by_nhs[0].1).is_some_and(|n| Some(&n) != facts.nhs_number.as_ref());
        let mut by_local = survivors(store, without).await?;
        by_local.retain(|(s, _)| !by_nhs.iter().any(|(n, _)| n.id == s.id));
        // Without an NHS number to go by, a traced record found by hospital
        // number is the target and the untraced ones merge into it, in
        // whatever order the lookup found them.
        by_local.sort_by_cached_key(|(s, v)| (nhs_number_of(v).is_none(), s.id.clone()));
        if by_nhs.len() > 1 {
            return Ok(Err(vec![DataError::new(
                Condition::InternalError,
                "PID-3",
                format!(
                    "NHS number {} is on {} patient records; merge them first",
                    facts.nhs_number.as_deref().unwrap_or_default(),
                    by_nhs.len()
                ),
            )]));
        }
        let (target, others) = match by_nhs.into_iter().next() {
            Some(found) => {
                let others: Vec<_> = by_local
                    .into_iter()
                    .filter(|(s, _)| s.id != found.0.id)
                    .collect();
                (Some(found), others)
            }
            None => {
                let mut found = by_local.into_iter();
                (found.next(), found.collect())
            }
        };
        // Found by hospital number but traced to someone else: a clash
        // (reached through a merge, only if the message would change the
        // survivor: below).
        let target_clash = match (&target, &facts.nhs_number) {
            (Some((_, value)), Some(ours)) => nhs_number_of(value)
                .filter(|theirs| theirs != ours)
                .map(|theirs| clash(&theirs, ours)),
            _ => None,
        };
        // Found only through a record merged into it: the message is about
        // that record (sent before the merge, or still naming it after).
        let through_merge = target
            .as_ref()
            .is_some_and(|(t, _)| !found_ids.contains(&t.id));
        if !merged_away
            && !through_merge
            && let Some(clash) = target_clash
        {
            return Ok(Err(vec![clash]));
        }
        // Records found by hospital number that are not the target: the
        // same person, untraced until now (merged in), or a clash.
        let expected = facts
            .nhs_number
            .clone()
            .or_else(|| target.as_ref().and_then(|(_, v)| nhs_number_of(v)));
        let mut absorbed: Vec<(Stored, Arc<Value>)> = Vec::new();
        for (other, value) in others {
            if let Some(theirs) = nhs_number_of(&value)
                && Some(&theirs) != expected.as_ref()
            {
                return Ok(Err(vec![clash(
                    &theirs,
                    expected.as_deref().unwrap_or("(none)"),
                )]));
            }
            absorbed.push((other, value));
        }
        let absorbs_found = !absorbed.is_empty();
        // A40: the records named in MRG-1 are merged into this one. One not
        // stored yet (the A40 arrives ahead of its messages) is stored now,
        // retired, with MRG-1's identifiers that are not the message's own:
        // its late messages then find the survivor as they would had they
        // come first.
        let mut unseen: Vec<Value> = Vec::new();
        if !adt.prior.is_empty() {
            let prior = store
                .by_identifier(ResourceType::Patient, &adt::identifier_keys(&adt.prior))
                .await?;
            if prior.is_empty() {
                unseen = adt::identifiers_not_in(&adt.prior, &keys);
            }
            // MRG-1's record itself the target, reached through a merge
            // from PID-3's: a merge the other way round, which an A40 does
            // not undo. (Both merged into a third record since: nothing to
            // do.)
            let names_target = target
                .as_ref()
                .is_some_and(|(t, _)| prior.iter().any(|s| s.id == t.id));
            let prior = survivors(store, parsed(store, prior)).await?;
            for found in prior {
                let same = target.as_ref().is_some_and(|(t, _)| t.id == found.0.id);
                if same && names_target && (through_merge || merged_away) {
                    return Ok(Err(vec![DataError::new(
                        Condition::DuplicateKey,
                        "MRG-1",
                        format!(
                            "the patient in PID-3 was merged into the record MRG-1 names \
                             (Patient/{}); an A40 does not merge a record back into one \
                             merged into it",
                            found.0.id
                        ),
                    )]));
                }
                if !same && !absorbed.iter().any(|(a, _)| a.id == found.0.id) {
                    absorbed.push(found);
                }
            }
        }

        let patient_id = target
            .as_ref()
            .map_or_else(new_id, |(stored, _)| stored.id.clone());
        let clock = match &target {
            Some((stored, _)) => match known_clocks
                .iter()
                .find(|(id, version, _)| *id == patient_id && *version == stored.version)
            {
                Some((_, _, clock)) => clock.clone(),
                // Reached through a merge, read after the lookup: its clock
                // is read after its body, as the writer's version check
                // expects.
                None => clock_of(store, ResourceType::Patient, &patient_id).await?,
            },
            None => None,
        };
        let times = Times::of(clock.as_ref());
        // What the message says of a record merged away is not the
        // survivor's: it sets no member of it, and its encounter goes to
        // the survivor (an A40's MRG-1 records are still merged into it).
        // Reached through a merge, a message that brings an NHS number
        // traces an untraced survivor; a traced one keeps its own (the
        // merged-away record's is superseded, as when it was stored).
        let traced = target
            .as_ref()
            .is_some_and(|(_, v)| nhs_number_of(v).is_some());
        let leave_survivor = !absorbs_found
            && (merged_away || (through_merge && (facts.nhs_number.is_none() || traced)));
        if !leave_survivor && let Some(clash) = target_clash {
            return Ok(Err(vec![clash]));
        }
        let after = match leave_survivor {
            true => times.clone().after(adt.time_ms),
            false => state::patient_times(
                &times,
                target.as_ref().map(|(_, v)| v.as_ref()),
                &facts,
                adt.time_ms,
            ),
        };
        let mut clocks = vec![EventClock {
            resource_type: ResourceType::Patient,
            id: patient_id.clone(),
            clock: after.clock().expect("set by the event just applied"),
            planned: target.as_ref().map(|(stored, _)| (stored.version, clock)),
        }];
        let nhs_number = facts.nhs_number.clone();
        let patient_ref = match &target {
            Some(_) => format!("Patient/{patient_id}"),
            None => format!("urn:uuid:{}", new_id()),
        };
        // Kept for the next message with this PID (shared: copied below only
        // if they move into a new version).
        if let Some(key) = key {
            self.keep_facts(key, facts.clone());
        }
        // The stored patient as the message finds it: nothing to build.
        let absorbs = !absorbed.is_empty() || !unseen.is_empty();
        let unchanged = match &target {
            Some(_) if leave_survivor => !absorbs,
            Some((stored, old)) if !absorbs => {
                let unchanged = state::patient_unchanged(old, &times, &facts, adt.time_ms);
                // (Every test checks the shortcut against the full path.)
                debug_assert!(
                    !unchanged || {
                        let facts = PatientFacts::clone(&facts);
                        let built = patient_from(Some(old), &times, facts, adt.time_ms);
                        rewrite(&stored.body, old, &built).is_none()
                    },
                    "patient_unchanged, yet the message changes {}",
                    stored.body
                );
                unchanged
            }
            _ => false,
        };
        // (Not read when unchanged.)
        let mut patient = if unchanged {
            Value::Null
        } else if leave_survivor && let Some((_, old)) = &target {
            Value::clone(old)
        } else {
            patient_from(
                target.as_ref().map(|(_, v)| v.as_ref()),
                &times,
                Arc::unwrap_or_clone(facts),
                adt.time_ms,
            )
        };
        for (old, _) in &absorbed {
            patient = state::survivor(&patient, &format!("Patient/{}", old.id));
        }
        let placeholder = (!unseen.is_empty()).then(|| {
            let full_url = format!("urn:uuid:{}", new_id());
            patient = state::survivor(&patient, &full_url);
            (full_url, state::placeholder(unseen, &patient_ref))
        });
        match &target {
            Some(_) if unchanged => {}
            Some((stored, old)) => {
                if let Err(errors) =
                    self.update(stored, old, patient, ResourceType::Patient, &mut writes)
                {
                    return Ok(Err(errors));
                }
            }
            None => {
                let resource =
                    match self.prepared(&Written::of(&patient), &patient, ResourceType::Patient) {
                        Ok(r) => r,
                        Err(errors) => return Ok(Err(errors)),
                    };
                let (system, value) = match nhs_number {
                    Some(n) => (NHS_NUMBER_SYSTEM.to_string(), n),
                    None => locals.first().cloned().unwrap_or_default(),
                };
                writes.push(
                    Mutation::Create {
                        resource,
                        // The id the event clock above is recorded under.
                        id: patient_id.clone(),
                        if_none_exist: Some(identifier_query(
                            ResourceType::Patient,
                            &[(system, value)],
                        )),
                        full_url: Some(patient_ref.clone()),
                    },
                    patient,
                );
            }
        }
        if let Some((full_url, value)) = placeholder {
            let resource = match self.prepared(&Written::of(&value), &value, ResourceType::Patient)
            {
                Ok(r) => r,
                Err(errors) => return Ok(Err(errors)),
            };
            let key = adt::identifier_keys(value.at("identifier").as_array().map_or(&[], |v| v));
            writes.push(
                Mutation::Create {
                    resource,
                    id: new_id(),
                    if_none_exist: Some(identifier_query(ResourceType::Patient, &key[..1])),
                    full_url: Some(full_url),
                },
                value,
            );
        }
        for (old, value) in &absorbed {
            let retired = state::retired(value, &patient_ref);
            if let Err(errors) =
                self.update(old, value, retired, ResourceType::Patient, &mut writes)
            {
                return Ok(Err(errors));
            }
        }

        // The visit.
        let mut moved_ids = Vec::new();
        if let (Some(visit), Some(key)) = (visit, &visit_key) {
            if encounters.len() > 1 {
                return Ok(Err(vec![DataError::new(
                    Condition::InternalError,
                    "PV1-19",
                    format!(
                        "visit number {} is on {} encounters",
                        key[0].1,
                        encounters.len()
                    ),
                )]));
            }
            let (current, clock) = match encounters.into_iter().next() {
                Some((stored, clock)) => (Some(stored), clock),
                None => (None, None),
            };
            let current_value = current.as_ref().and_then(|s| store.parsed(s));
            // A visit stays with its patient: one the message names for
            // another patient is an error, not a move (that is an A40's, or
            // a record merged in by this message).
            let subject = current_value
                .as_deref()
                .and_then(|v| v.at("subject").at("reference").as_str())
                .filter(|subject| *subject != patient_ref);
            let another = match subject.map(patient_id_in) {
                None => false,
                // Not a Patient's (a Group, a contained resource): not ours.
                Some(None) => true,
                Some(Some(subject_id)) => {
                    target.as_ref().is_none_or(|(t, _)| t.id != subject_id)
                        && !absorbed.iter().any(|(a, _)| a.id == subject_id)
                        && !self
                            .leads_to(subject_id, target.as_ref().map(|(t, _)| t.id.as_str()))
                            .await?
                }
            };
            if let Some(subject) = subject
                && another
            {
                return Ok(Err(vec![DataError::new(
                    Condition::DuplicateKey,
                    "PV1-19",
                    format!(
                        "visit number {} is an encounter of another patient ({subject}); a visit \
                         moves to another patient by a merge (A40), not by a message naming it",
                        key[0].1
                    ),
                )]));
            }
            let encounter_id = current.as_ref().map_or_else(new_id, |s| s.id.clone());
            // An Encounter's members go by its latest event alone; its
            // clock keeps the cancels and the classes it has had.
            let latest = clock.as_ref().map(|c| c.event_ms);
            let mut kept = state::Kept::of(clock.as_ref());
            let encounter = encounter_from(
                current_value.as_deref(),
                latest,
                &mut kept,
                adt,
                visit,
                &patient_ref,
            );
            let event_ms = latest.map_or(adt.time_ms, |at| at.max(adt.time_ms));
            clocks.push(EventClock {
                resource_type: ResourceType::Encounter,
                id: encounter_id.clone(),
                clock: Clock {
                    event_ms,
                    members: kept.members(event_ms),
                },
                planned: current.as_ref().map(|stored| (stored.version, clock)),
            });
            match &current {
                Some(stored) => {
                    moved_ids.push(stored.id.clone());
                    // (A stored body that does not parse is left as it is.)
                    if let Some(old) = &current_value
                        && let Err(errors) = self.update(
                            stored,
                            old,
                            encounter,
                            ResourceType::Encounter,
                            &mut writes,
                        )
                    {
                        return Ok(Err(errors));
                    }
                }
                None => {
                    match self.prepared(
                        &Written::of(&encounter),
                        &encounter,
                        ResourceType::Encounter,
                    ) {
                        Ok(resource) => writes.push(
                            Mutation::Create {
                                resource,
                                id: encounter_id.clone(),
                                if_none_exist: Some(identifier_query(ResourceType::Encounter, key)),
                                full_url: None,
                            },
                            encounter,
                        ),
                        Err(errors) => return Ok(Err(errors)),
                    }
                }
            }
        }
        // What is about merged-away records moves to the survivor: their
        // encounters, and the care plans and referrals that put them on a
        // pathway (the router's `%carePlans` and the outcome measures look
        // for those by subject).
        for (old, _) in &absorbed {
            let subject = [format!("Patient/{}", old.id)];
            for ty in MOVED_ON_MERGE {
                for stored in search_all(store, ty, "subject", &subject).await? {
                    if ty == ResourceType::Encounter && moved_ids.contains(&stored.id) {
                        continue;
                    }
                    let Some(value) = store.parsed(&stored) else {
                        continue;
                    };
                    let moved = state::moved(&value, &patient_ref);
                    if let Err(errors) = self.update(&stored, &value, moved, ty, &mut writes) {
                        return Ok(Err(errors));
                    }
                }
            }
        }
        Ok(Ok(Planned { writes, clocks }))
    }

    /// Whether Patient `id` was merged into Patient `target`.
    async fn leads_to(&self, id: &str, target: Option<&str>) -> Result<bool, StoreError> {
        let Some(target) = target else {
            return Ok(false);
        };
        let store = self.store.as_ref();
        let Some(stored) = store.read(ResourceType::Patient, id).await? else {
            return Ok(false);
        };
        let found = survivors(store, parsed(store, vec![stored])).await?;
        Ok(found.first().is_some_and(|(s, _)| s.id == target))
    }

    /// Hands the store the values just written, as their stored bodies
    /// read: `urn:uuid:` references resolved as the store resolved them.
    fn remember(
        &self,
        results: &[Result<crate::store::Written, MutationError>],
        full_urls: &[Option<String>],
        values: Vec<Value>,
    ) {
        let resolved: FastMap<&str, String> = full_urls
            .iter()
            .zip(results)
            .filter_map(|(url, result)| {
                let stored = &result.as_ref().ok()?.resource;
                Some((
                    url.as_deref()?,
                    format!("{}/{}", stored.resource_type, stored.id),
                ))
            })
            .collect();
        for (result, mut value) in results.iter().zip(values) {
            let Ok(written) = result else { continue };
            if !matches!(written.change, Change::Created | Change::Updated) {
                continue;
            }
            if !resolved.is_empty()
                && let Value::Object(members) = &mut value
            {
                for (key, member) in members.iter_mut() {
                    if key != "meta" {
                        resolve_references(member, &resolved);
                    }
                }
            }
            self.store.remember_parsed(&written.resource, value);
        }
    }

    /// Adds the update that turns `stored` into `new`, unless nothing
    /// changes.
    fn update(
        &self,
        stored: &Stored,
        old: &Value,
        new: Value,
        ty: ResourceType,
        writes: &mut Writes,
    ) -> Result<(), Vec<DataError>> {
        let Some(written) = rewrite(&stored.body, old, &new) else {
            return Ok(());
        };
        let resource = self.prepared(&written, &new, ty)?;
        // `rewrite` kept the stored bytes of each member equal by value to
        // the stored one. Where the planned member has its keys in another
        // order (a record written through REST in its sender's order), the
        // stored one is what the body reads as, and what the store is given.
        let mut new = new;
        if let (Value::Object(members), Value::Object(stored_members)) = (&mut new, old) {
            for (key, member) in members.iter_mut() {
                if let Some(kept) = stored_members.member(key)
                    && !same_in_order(kept, member)
                    && kept == member
                {
                    *member = kept.clone();
                }
            }
        }
        writes.push(
            Mutation::Update {
                resource,
                id: stored.id.clone(),
                if_match: Some(stored.version),
                full_url: None,
            },
            new,
        );
        Ok(())
    }

    /// `written` is `value` as JSON (with stored bytes kept where unchanged).
    fn prepared(
        &self,
        written: &Written,
        value: &Value,
        ty: ResourceType,
    ) -> Result<Prepared, Vec<DataError>> {
        prepare_written(written, value, Some(ty), &self.validator).map_err(|rejection| {
            let issues = match rejection {
                Rejection::Invalid(issues) => issues,
                other => other.issues(),
            };
            issues
                .into_iter()
                .filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
                .map(|i| {
                    let expression = i.expression.first().cloned().unwrap_or_default();
                    DataError::new(
                        Condition::of_issue(i.code),
                        hl7_location(&expression),
                        if expression.is_empty() {
                            i.diagnostics
                        } else {
                            format!("{} (at {expression})", i.diagnostics)
                        },
                    )
                })
                .collect()
        })
    }
}

/// Who sent `message`, as the journal keys its repeats: the sending
/// application at the sending facility (`PAS@RJZ`), or the facility alone
/// when MSH-3 is empty. MSH-10 is unique within one sending application
/// (HL7 v2.5 §2.14.9.10), and a trust's systems (PAS, ED, theatres) share
/// its facility code and often count their control ids alike.
pub(super) fn sender_of(message: &Message) -> String {
    let facility = message.get("MSH-4").unwrap_or_default();
    match message.get("MSH-3") {
        Some(application) if !application.is_empty() => format!("{application}@{facility}"),
        _ => facility,
    }
}

/// Now, as MSH-7 of an ACK: London time to the second, with its offset.
/// Formatted once a second per thread (`strftime` was a third of an ACK's
/// cost).
fn ack_time() -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = jiff::Timestamp::now();
    LAST.with_borrow_mut(|(second, text)| {
        if *second != now.as_second() {
            *second = now.as_second();
            *text = now
                .to_zoned(london())
                .strftime("%Y%m%d%H%M%S%z")
                .to_string();
        }
        text.clone()
    })
}

/// What applying a message takes: its writes, and the event clocks of the
/// records it concerns.
struct Planned {
    writes: Writes,
    clocks: Vec<EventClock>,
}

/// A message's writes, each with the resource it writes as a value: once
/// stored, that value is what parsing the stored body would give, and the
/// store keeps it for the next message about the record
/// ([`Store::remember_parsed`]).
#[derive(Default)]
struct Writes {
    mutations: Vec<Mutation>,
    values: Vec<Value>,
}

impl Writes {
    fn push(&mut self, mutation: Mutation, value: Value) {
        self.mutations.push(mutation);
        self.values.push(value);
    }
}

async fn clock_of(
    store: &dyn Store,
    ty: ResourceType,
    id: &str,
) -> Result<Option<Clock>, StoreError> {
    Ok(store
        .event_clocks(ty, &[id.to_string()])
        .await?
        .into_iter()
        .next()
        .flatten())
}

/// Where in the message a validation issue on `expression` came from.
fn hl7_location(expression: &str) -> &'static str {
    const MAP: &[(&str, &str)] = &[
        ("Patient.identifier", "PID-3"),
        ("Patient.name", "PID-5"),
        ("Patient.birthDate", "PID-7"),
        ("Patient.gender", "PID-8"),
        ("Patient.address", "PID-11"),
        ("Patient.telecom", "PID-13"),
        ("Patient.deceased", "PID-29"),
        ("Patient.generalPractitioner", "PD1-3"),
        ("Encounter.identifier", "PV1-19"),
        ("Encounter.class", "PV1-2"),
        ("Encounter.priority", "PV1-4"),
        ("Encounter.period", "PV1-44"),
        ("Encounter.hospitalization.admitSource", "PV1-14"),
        ("Encounter.hospitalization.dischargeDisposition", "PV1-36"),
        ("Encounter.hospitalization", "PV1-4"),
        ("Encounter.location", "PV1-3"),
        ("Encounter.serviceProvider", "MSH-4"),
        ("Encounter", "PV1"),
        ("Patient", "PID"),
    ];
    MAP.iter()
        .find(|(prefix, _)| expression.starts_with(prefix))
        .map_or("MSH", |(_, location)| location)
}

/// A message's MSH alone, from its first line, when that reads: an `AR`
/// for a message that cannot be read (or is too large to) then names the
/// message it answers (MSA-2) and its sender, as any ACK does. (What
/// `Message::parse` skips before MSH is skipped here too.)
fn header_of(text: &str) -> Option<Message> {
    text.trim_start_matches(|c: char| c == '\u{feff}' || c.is_whitespace())
        .split(['\r', '\n'])
        .next()
        .and_then(|msh| Message::parse(msh).ok())
}

/// What [`Feed::acknowledge`] answers `verdict` with: its code and the
/// errors it reports (none for `AA`; a repeat of a held message gets the
/// original's).
fn answer(verdict: &Verdict) -> (AckCode, Vec<AckError>) {
    match verdict {
        Verdict::Accepted { .. } | Verdict::NotHeld | Verdict::Repeat { held: None, .. } => {
            (AckCode::AA, Vec::new())
        }
        Verdict::Repeat {
            held: Some(reasons),
            ..
        } => {
            let mut errors = ack_errors(&DataError::from_reasons(reasons));
            if errors.is_empty() {
                // (Reasons that do not read: an AE still says why.)
                errors.push(AckError {
                    location: None,
                    condition: Condition::InternalError,
                    text: format!("a repeat of a message held in quarantine: {reasons}"),
                });
            }
            (AckCode::AE, errors)
        }
        Verdict::Quarantined { errors, .. } => (AckCode::AE, ack_errors(errors)),
        Verdict::Rejected(error) => (AckCode::AR, vec![error.clone()]),
    }
}

/// The quarantine entry of `message`, refused for `errors`.
fn quarantine_entry(message: &Message, source: &str, errors: &[DataError]) -> QuarantineEntry {
    QuarantineEntry {
        source: source.to_string(),
        sender: sender_of(message),
        journal_id: None,
        received_at_ms: jiff::Timestamp::now().as_millisecond(),
        location: format!("MSH-10 {}", message.control_id().unwrap_or_default()),
        reasons: reasons_json(errors),
        content_type: CONTENT_TYPE.to_string(),
        payload: message.raw().as_bytes().to_vec(),
    }
}

/// A quarantine entry's reasons: the errors as JSON.
fn reasons_json(errors: &[DataError]) -> String {
    serde_json::to_string(errors).unwrap_or_else(|_| "[]".into())
}

/// One ERR for each error, located at it, its text the location and the
/// reason (as MSA-3 gives the first few).
pub(crate) fn ack_errors(errors: &[DataError]) -> Vec<AckError> {
    errors
        .iter()
        .map(|e| AckError {
            location: Some(e.location.clone()),
            condition: e.condition,
            text: format!("{}: {}", e.location, e.reason),
        })
        .collect()
}

fn london() -> jiff::tz::TimeZone {
    super::datatypes::london_zone().unwrap_or(jiff::tz::TimeZone::UTC)
}

/// Every `reference` member inside `value` whose text `resolved` maps,
/// replaced by its mapping (as `json::rewrite_references` does to the
/// stored text).
fn resolve_references(value: &mut Value, resolved: &FastMap<&str, String>) {
    match value {
        Value::Object(members) => {
            for (key, member) in members.iter_mut() {
                match member {
                    Value::String(text) if key == "reference" => {
                        if let Some(to) = resolved.get(text.as_str()) {
                            *text = to.clone();
                        }
                    }
                    other => resolve_references(other, resolved),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                resolve_references(item, resolved);
            }
        }
        _ => {}
    }
}

/// A message whose hospital number is on the record of the patient with
/// NHS number `theirs`, though it names `ours`.
pub(super) fn clash(theirs: &str, ours: &str) -> DataError {
    DataError::new(
        Condition::DuplicateKey,
        "PID-3",
        format!(
            "a hospital number in this message belongs to the patient with NHS number {theirs}, not {ours}"
        ),
    )
}

/// The id of the Patient `reference` names, in any form a client may have
/// written it: relative (`Patient/x`), absolute (`https://…/Patient/x`, read
/// by its path, as this gateway's own base) or versioned
/// (`Patient/x/_history/2`); `None` for any other. (`reference_target`
/// reads the forms; it leaves absolute URLs out, as search must.)
pub(super) fn patient_id_in(reference: &str) -> Option<&str> {
    let path = match reference.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
        None => reference,
    };
    match crate::fhir::search::reference_target(path) {
        Some(("Patient", id)) => Some(id),
        _ => None,
    }
}

pub(super) fn nhs_number_of(patient: &Value) -> Option<String> {
    patient.at("identifier").as_array()?.iter().find_map(|id| {
        (id.at("system") == NHS_NUMBER_SYSTEM)
            .then(|| id.at("value").as_str().map(str::to_string))
            .flatten()
    })
}

/// The records found, each replaced by the one it was merged into (if
/// any), without repeats.
async fn survivors(
    store: &dyn Store,
    found: Vec<(Stored, Arc<Value>)>,
) -> Result<Vec<(Stored, Arc<Value>)>, StoreError> {
    let mut out: Vec<(Stored, Arc<Value>)> = Vec::new();
    for (stored, value) in found {
        let mut current = (stored, value);
        // Follow replaced-by links, at most a few hops (never a loop).
        for _ in 0..8 {
            let next = replaced_by(&current.1)
                .and_then(|r| r.strip_prefix("Patient/").map(str::to_string));
            match next {
                Some(id) if id != current.0.id => {
                    match store.read(ResourceType::Patient, &id).await? {
                        Some(next) => match store.parsed(&next) {
                            Some(value) => current = (next, value),
                            None => break,
                        },
                        None => break,
                    }
                }
                _ => break,
            }
        }
        if !out.iter().any(|(s, _)| s.id == current.0.id) {
            out.push(current);
        }
    }
    Ok(out)
}

/// Stored resources with their JSON parsed (any that does not parse left out).
/// The records found with their bodies parsed (those that parse).
fn parsed(store: &dyn Store, found: Vec<Stored>) -> Vec<(Stored, Arc<Value>)> {
    found
        .into_iter()
        .filter_map(|s| {
            let value = store.parsed(&s)?;
            Some((s, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_time_is_now_in_london_to_the_second() {
        let before = jiff::Timestamp::now().as_second();
        let text = ack_time();
        let again = ack_time();
        let after = jiff::Timestamp::now().as_second();
        let read = jiff::Zoned::strptime("%Y%m%d%H%M%S%z", &text).unwrap();
        let second = read.timestamp().as_second();
        assert!((before..=after).contains(&second), "{text}");
        assert_eq!(
            read.offset(),
            london().to_offset(read.timestamp()),
            "{text}"
        );
        // A second call, from the cache or the next second, reads as now too.
        let next = jiff::Zoned::strptime("%Y%m%d%H%M%S%z", &again).unwrap();
        assert!((second..=after).contains(&next.timestamp().as_second()));
    }
}
