//! `pathway-gateway map --from hl7v2 FILE`: what a file of ADT messages
//! would become, without a store. The messages are applied in file order to
//! an empty, in-memory record (the same [`super::state`] functions the feed
//! uses), and the result is one FHIR transaction Bundle of conditional
//! updates keyed on the identifiers, with, per message, the ACK code it
//! would get, its errors, the fields the mapping does not use, and notes.

use super::adt::{self, Adt, AdtContext, AdtError};
use super::condition::Condition;
use super::datatypes::DataError;
use super::er7::Message;
use super::state::{self, Kept, Times, encounter_after, patient_after};
use crate::fhir::outcome::Severity;
use crate::validate::Validator;
use serde::Serialize;
use serde_json::{Value, json};

/// One message's part of the dry run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageRun {
    /// 1-based position in the file.
    pub message: usize,
    pub control_id: String,
    pub event: String,
    /// `AA`, `AE` or `AR`: what the gateway would answer.
    pub ack: &'static str,
    /// As the ACK's ERR segments give them: location, reason, ERR-3 code.
    pub errors: Vec<DataError>,
    /// Fields with content that the mapping does not use (`PID-13`, `NK1
    /// (segment not mapped)`).
    pub unmapped: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryRun {
    pub messages: Vec<MessageRun>,
    pub bundle: Value,
}

/// A record being built: its conditional-update key and current JSON.
struct Record {
    key: (String, String),
    full_url: String,
    resource: Value,
    /// When the events applied set its members (an Encounter's: the
    /// latest alone).
    clock: Times,
    /// What an Encounter keeps beside it: its cancels and classes (nothing
    /// for a Patient).
    kept: Kept,
}

/// Maps every message of `text` (segments by `\r`, `\n` or `\r\n`;
/// messages start at each `MSH`).
pub fn map_messages(text: &str, cx: &AdtContext, validator: &Validator) -> DryRun {
    let mut patients: Vec<Record> = Vec::new();
    let mut encounters: Vec<Record> = Vec::new();
    let mut runs: Vec<MessageRun> = Vec::new();
    // (sender, MSH-10) of each message mapped, with its run: a repeat is
    // answered as the first was and changes nothing, as the feed does.
    // Its text is kept to tell a repeat from another message under a used
    // MSH-10, as the feed does (`super::resend`).
    let mut mapped: Vec<((String, String), usize, Message)> = Vec::new();
    // Bytes before the first message get an AR of their own, as
    // `POST /ingest/hl7v2` answers them (message 0: not one of the file's).
    if let Some(junk) = crate::api::ingest::before_first_message(text.as_bytes()) {
        let shown: String = String::from_utf8_lossy(junk).chars().take(60).collect();
        runs.push(MessageRun {
            message: 0,
            control_id: String::new(),
            event: String::new(),
            ack: "AR",
            errors: vec![DataError::new(
                Condition::SegmentSequence,
                "(before the first MSH)",
                format!("bytes that are not a message: {shown:?}"),
            )],
            unmapped: Vec::new(),
            notes: Vec::new(),
        });
    }
    for (i, raw) in crate::api::ingest::split_messages(text.as_bytes())
        .into_iter()
        .enumerate()
    {
        let raw = String::from_utf8_lossy(raw);
        let mut run = MessageRun {
            message: i + 1,
            control_id: String::new(),
            event: String::new(),
            ack: "AA",
            errors: Vec::new(),
            unmapped: Vec::new(),
            notes: Vec::new(),
        };
        let message = match Message::parse(&raw) {
            Ok(m) => m,
            Err(err) => {
                run.ack = "AR";
                run.errors.push(DataError::new(
                    Condition::SegmentSequence,
                    err.location,
                    err.message,
                ));
                runs.push(run);
                continue;
            }
        };
        run.control_id = message.control_id().unwrap_or_default();
        run.event = message.get("MSH-9.2").unwrap_or_default();
        // An event the gateway does not take is refused before anything
        // else, a repeat or not, as the feed refuses it: it is not recorded,
        // so its MSH-10 may yet be another message's.
        let read = match adt::read(&message, cx) {
            Ok(adt) => Ok(adt),
            Err(AdtError::Invalid(errors)) => Err(errors),
            Err(AdtError::Unsupported {
                location,
                condition,
                reason,
            }) => {
                run.ack = "AR";
                run.errors.push(DataError::new(condition, location, reason));
                runs.push(run);
                continue;
            }
        };
        let key = (super::ingest::sender_of(&message), run.control_id.clone());
        if let Some((_, first, earlier)) = mapped
            .iter()
            .find(|(k, _, _)| !key.1.is_empty() && *k == key)
        {
            let first = &runs[*first];
            if let Some(at) = super::resend::difference(earlier, &message) {
                run.ack = "AE";
                run.errors.push(DataError::new(
                    Condition::DuplicateKey,
                    "MSH-10",
                    super::resend::reused(&format!("message {}", first.message), &at),
                ));
                runs.push(run);
                continue;
            }
            run.ack = first.ack;
            run.errors = first.errors.clone();
            run.notes.push(format!(
                "a repeat of message {} (same MSH-3, MSH-4 and MSH-10, and the same message): answered as it was, and changes nothing",
                first.message
            ));
            runs.push(run);
            continue;
        }
        let unread = read
            .as_ref()
            .map(|adt| adt::unmapped(&message, adt.event))
            .unwrap_or_default();
        mapped.push((key, runs.len(), message));
        match read {
            Ok(adt) => {
                run.unmapped = unread;
                run.notes = adt.notes.clone();
                let errors = apply(
                    &adt,
                    &mut patients,
                    &mut encounters,
                    validator,
                    &mut run.notes,
                );
                if !errors.is_empty() {
                    run.ack = "AE";
                    run.errors = errors;
                }
            }
            Err(errors) => {
                run.ack = "AE";
                run.errors = errors;
            }
        }
        runs.push(run);
    }
    let entries: Vec<Value> = patients
        .iter()
        .map(|r| entry(r, "Patient"))
        .chain(encounters.iter().map(|r| entry(r, "Encounter")))
        .collect();
    DryRun {
        messages: runs,
        bundle: json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
    }
}

/// Applies one message to the in-memory records; its validation errors
/// (then nothing is changed). Validation warnings and information go to
/// `notes`.
fn apply(
    adt: &Adt,
    patients: &mut Vec<Record>,
    encounters: &mut Vec<Record>,
    validator: &Validator,
    notes: &mut Vec<String>,
) -> Vec<DataError> {
    let keys = adt.patient.keys();
    // The records carrying one of the message's identifiers; the one with
    // its NHS number first, as the feed looks.
    let carrying: Vec<usize> = (0..patients.len())
        .filter(|&i| {
            let r = &patients[i];
            keys.contains(&r.key)
                || adt::identifier_keys(r.resource["identifier"].as_array().map_or(&[][..], |a| a))
                    .iter()
                    .any(|k| keys.contains(k))
        })
        .collect();
    let nhs = adt.patient.nhs_number.as_ref();
    let at = carrying
        .iter()
        .copied()
        .find(|&i| {
            nhs.is_some() && super::ingest::nhs_number_of(&patients[i].resource).as_ref() == nhs
        })
        .or(carrying.first().copied());
    // A hospital number on a record traced to someone else: a clash, as the
    // feed finds it (records merged away aside).
    if let Some(ours) = &adt.patient.nhs_number {
        let clashing = patients.iter().find_map(|r| {
            let ids = r.resource["identifier"].as_array().map_or(&[][..], |a| a);
            let theirs = super::ingest::nhs_number_of(&r.resource)?;
            (theirs != *ours
                && state::replaced_by(&r.resource).is_none()
                && adt::identifier_keys(ids).iter().any(|k| keys.contains(k)))
            .then_some(theirs)
        });
        if let Some(theirs) = clashing {
            return vec![super::ingest::clash(&theirs, ours)];
        }
    }
    // A record merged away stands for its survivor, as in the feed; what
    // the message says of it is not the survivor's (unless it traces an
    // untraced survivor).
    let at = at.map(|i| survivor_of(patients, i));
    let through_merge = at.is_some_and(|i| !carrying.contains(&i));
    let current = at.map(|i| &patients[i].resource);
    let leave = through_merge
        && (adt.patient.nhs_number.is_none()
            || current.is_some_and(|p| super::ingest::nhs_number_of(p).is_some()));
    let times = at.map(|i| patients[i].clock.clone()).unwrap_or_default();
    let (patient, times) = match (leave, current) {
        (true, Some(current)) => (current.clone(), times),
        _ => patient_after(current, &times, adt),
    };
    let key = keys.first().cloned().unwrap_or_default();
    let full_url = at.map_or_else(|| urn(&key), |i| patients[i].full_url.clone());
    let mut errors = issues(validator, &patient, notes);

    let mut encounter = None;
    if let Some(visit) = &adt.visit {
        let visit_key = adt::identifier_keys(std::slice::from_ref(&visit.identifier))
            .pop()
            .unwrap_or_default();
        let found = encounters.iter().position(|r| r.key == visit_key);
        // A visit stays with its patient (or the one it was merged into,
        // or an untraced one of the message's numbers, which the feed
        // merges into it).
        let ours = |i: usize| {
            Some(survivor_of(patients, i)) == at
                || (carrying.contains(&i)
                    && state::replaced_by(&patients[i].resource).is_none()
                    && super::ingest::nhs_number_of(&patients[i].resource).is_none())
        };
        if let Some(subject) =
            found.and_then(|i| encounters[i].resource["subject"]["reference"].as_str())
            && subject != full_url
            && patients
                .iter()
                .position(|r| r.full_url == subject)
                .is_none_or(|i| !ours(i))
        {
            return vec![DataError::new(
                Condition::DuplicateKey,
                "PV1-19",
                format!(
                    "visit number {} is an encounter of another patient; a visit moves to \
                     another patient by a merge (A40), not by a message naming it",
                    visit_key.1
                ),
            )];
        }
        let current = found.map(|i| &encounters[i].resource);
        let clock = found.and_then(|i| encounters[i].clock.latest());
        let mut kept = found.map_or_else(Kept::default, |i| encounters[i].kept.clone());
        let e = encounter_after(current, clock, &mut kept, adt, visit, &full_url);
        errors.extend(issues(validator, &e, notes));
        encounter = Some((found, visit_key, e, kept));
    }
    if !errors.is_empty() {
        return errors;
    }
    // A40: the record named in MRG-1 is retired into this one (into its
    // survivor, if merged on since); one not seen yet is stored retired.
    let prior = adt::identifier_keys(&adt.prior);
    let mut patient = patient;
    let has_prior = |r: &Record| {
        let theirs =
            adt::identifier_keys(r.resource["identifier"].as_array().map_or(&[][..], |a| a));
        theirs.iter().any(|k| prior.contains(k))
    };
    if through_merge && at.is_some_and(|i| has_prior(&patients[i])) {
        return vec![DataError::new(
            Condition::DuplicateKey,
            "MRG-1",
            "the patient in PID-3 was merged into the record MRG-1 names; an A40 does not \
             merge a record back into one merged into it",
        )];
    }
    let mut placeholder = None;
    if !prior.is_empty() && !patients.iter().any(has_prior) {
        let unseen = adt::identifiers_not_in(&adt.prior, &keys);
        if let Some(first) = adt::identifier_keys(&unseen).first().cloned() {
            let url = urn(&first);
            patient = state::survivor(&patient, &url);
            placeholder = Some(Record {
                resource: state::placeholder(unseen, &full_url),
                full_url: url,
                key: first,
                clock: Times::default(),
                kept: Kept::default(),
            });
        }
    }
    let named = (0..patients.len())
        .filter(|&j| has_prior(&patients[j]))
        .map(|j| survivor_of(patients, j))
        .find(|&j| Some(j) != at);
    if let Some(old) = named.map(|j| &mut patients[j]) {
        patient = state::survivor(&patient, &old.full_url);
        old.resource = state::retired(&old.resource, &full_url);
        for e in encounters.iter_mut() {
            if e.resource["subject"]["reference"] == old.full_url.as_str() {
                e.resource = state::moved(&e.resource, &full_url);
            }
        }
    }
    patients.extend(placeholder);
    match at {
        Some(i) => {
            patients[i].resource = patient;
            patients[i].clock = times;
        }
        None => patients.push(Record {
            key,
            full_url,
            resource: patient,
            clock: times,
            kept: Kept::default(),
        }),
    }
    if let Some((found, key, e, kept)) = encounter {
        match found {
            Some(i) => {
                encounters[i].resource = e;
                encounters[i].clock = encounters[i].clock.clone().after(adt.time_ms);
                encounters[i].kept = kept;
            }
            None => encounters.push(Record {
                full_url: urn(&key),
                key,
                resource: e,
                clock: Times::default().after(adt.time_ms),
                kept,
            }),
        }
    }
    Vec::new()
}

/// The validation errors of `resource`; its warnings and information,
/// which do not refuse a message, are put in `notes` (`validation warning
/// at Encounter.class: …`) so the dry run shows everything the validator
/// says.
fn issues(validator: &Validator, resource: &Value, notes: &mut Vec<String>) -> Vec<DataError> {
    let mut errors = Vec::new();
    for i in validator.validate(resource) {
        if matches!(i.severity, Severity::Error | Severity::Fatal) {
            errors.push(DataError::new(
                Condition::of_issue(i.code),
                i.expression.join(", "),
                i.diagnostics,
            ));
        } else {
            notes.push(format!(
                "validation {} at {}: {}",
                i.severity.as_str(),
                i.expression.join(", "),
                i.diagnostics
            ));
        }
    }
    errors
}

/// A stable `urn:uuid:` for a record key, so the output is deterministic.
/// The record `i` was merged into, following `replaced-by` links (at
/// most a few), or `i`.
fn survivor_of(patients: &[Record], mut i: usize) -> usize {
    for _ in 0..8 {
        let Some(next) = state::replaced_by(&patients[i].resource)
            .and_then(|url| patients.iter().position(|r| r.full_url == url))
        else {
            break;
        };
        i = next;
    }
    i
}

fn urn(key: &(String, String)) -> String {
    let h = state::stable_hash(key.0.bytes().chain([b'|']).chain(key.1.bytes()));
    format!(
        "urn:uuid:00000000-0000-4000-8000-{:012x}",
        h & 0xffff_ffff_ffff
    )
}

fn entry(record: &Record, ty: &str) -> Value {
    let (system, value) = &record.key;
    let url = format!(
        "{ty}?identifier={}|{}",
        query_part(system),
        query_part(value)
    );
    json!({
        "fullUrl": record.full_url,
        "resource": record.resource,
        "request": {"method": "PUT", "url": url}
    })
}

/// A token's system or value as it stands in a search URL: FHIR's search
/// escapes first (`\`, `|`, `,`, `$` after a backslash), then every byte
/// other than letters, digits, `-._~` and the `:/@` of a system's URI
/// percent-encoded, so a visit number `E50&01` stays one value.
fn query_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '|' | ',' | '$') {
            out.push_str("%5C");
        }
        let mut bytes = [0; 4];
        for &b in c.encode_utf8(&mut bytes).as_bytes() {
            if b.is_ascii_alphanumeric() || b"-._~:/@".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the validator says short of an error is shown too, as a note;
    /// errors refuse the message.
    #[test]
    fn validation_warnings_are_shown_as_notes() {
        let validator = Validator::load(None, &[]).unwrap();
        let mut notes = Vec::new();
        let other = json!({"resourceType": "Observation", "status": "final"});
        assert_eq!(issues(&validator, &other, &mut notes), Vec::new());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("validation warning at "), "{notes:?}");
        let mut notes = Vec::new();
        let wrong = json!({"resourceType": "Patient", "gender": "unknownish"});
        assert!(!issues(&validator, &wrong, &mut notes).is_empty());
    }

    #[test]
    fn a_conditional_url_keeps_each_value_whole() {
        assert_eq!(
            query_part("https://fhir.onebromley.nhs.uk/Id/hospital-provider-spell/RJZ"),
            "https://fhir.onebromley.nhs.uk/Id/hospital-provider-spell/RJZ"
        );
        assert_eq!(query_part("E50&01"), "E50%2601");
        assert_eq!(query_part("A|B,C"), "A%5C%7CB%5C%2CC");
        assert_eq!(query_part("50% #1+é"), "50%25%20%231%2B%C3%A9");
    }

    /// Bytes before the first message are answered with an AR of their
    /// own (message 0), as the HTTP endpoint answers them, not skipped.
    #[test]
    fn bytes_before_the_first_message_are_reported() {
        let validator = Validator::load(None, &[]).unwrap();
        let text = "a note the sender left\r\nMSH|^~\\&|PAS|RJZ|GW|OB|202607141018||ADT^A28|D1|P|2.4\rEVN|A28|202607141018\rPID|1||9990000018^^^NHS^NH||PAGE^Ann\r";
        let run = map_messages(text, &AdtContext::default(), &validator);
        let acks: Vec<(usize, &str)> = run.messages.iter().map(|m| (m.message, m.ack)).collect();
        assert_eq!(acks, [(0, "AR"), (1, "AA")], "{:?}", run.messages);
        assert!(
            run.messages[0].errors[0]
                .reason
                .contains("a note the sender left"),
            "{:?}",
            run.messages[0]
        );
    }

    /// Identity as the feed has it: chained merges in reverse order end on
    /// the last survivor, a merge back the other way and a visit named for
    /// another patient are refused.
    #[test]
    fn merges_and_visits_end_as_in_the_feed() {
        let validator = Validator::load(None, &[]).unwrap();
        let msg = |event: &str, id: &str, when: &str, pid3: &str, tail: &str| {
            format!(
                "MSH|^~\\&|PAS|RJZ|GW|OB|{when}||ADT^{event}|{id}|P|2.4\rEVN|{event}|{when}\rPID|1||{pid3}||PAGE^Ann\r{tail}"
            )
        };
        let visit = |v: &str| format!("PV1|1|E|ED^^^RJZ30||||||||||||||||{v}^^^RJZ^VN\r");
        let (a, b, c) = (
            "HA^^^RJZ^MR~9990000603^^^NHS^NH",
            "HB^^^RJZ^MR~9990000611^^^NHS^NH",
            "HC^^^RJZ^MR~9990000638^^^NHS^NH",
        );
        let text = [
            msg("A04", "M1", "202610250900", a, &visit("VA")),
            msg("A04", "M2", "202610250900", b, &visit("VB")),
            msg("A04", "M3", "202610250900", c, &visit("VC")),
            msg("A40", "M4", "202610251500", c, "MRG|HB^^^RJZ^MR\r"),
            msg("A40", "M5", "202610251400", b, "MRG|HA^^^RJZ^MR\r"),
            // Back the other way: refused.
            msg("A40", "M6", "202610251600", a, "MRG|HC^^^RJZ^MR\r"),
            // Visit VC named for another patient: refused.
            msg(
                "A08",
                "M7",
                "202610251700",
                "9990000018^^^NHS^NH",
                &visit("VC"),
            ),
        ]
        .concat();
        let run = map_messages(&text, &AdtContext::default(), &validator);
        let acks: Vec<(&str, Option<&str>)> = run
            .messages
            .iter()
            .map(|m| (m.ack, m.errors.first().map(|e| e.location.as_str())))
            .collect();
        let ok = ("AA", None);
        assert_eq!(
            acks,
            [
                ok,
                ok,
                ok,
                ok,
                ok,
                ("AE", Some("MRG-1")),
                ("AE", Some("PV1-19"))
            ],
            "{:?}",
            run.messages
        );
        let entries = run.bundle["entry"].as_array().unwrap();
        let last = entries
            .iter()
            .find(|e| e["resource"].to_string().contains("9990000638"))
            .unwrap();
        for e in entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Encounter")
        {
            assert_eq!(
                e["resource"]["subject"]["reference"], last["fullUrl"],
                "{e}"
            );
        }
        let retired = entries
            .iter()
            .filter(|e| e["resource"]["active"] == false)
            .count();
        assert_eq!(retired, 2, "{entries:#?}");
    }

    /// Found directly by its NHS number, a survivor takes what the message
    /// says even when the message also names a record merged into it; an
    /// untraced record's visit named with the traced record's numbers is
    /// merged in, not refused (as the feed does both).
    #[test]
    fn a_record_found_directly_is_no_merge_and_an_untraced_visit_follows_its_patient() {
        let validator = Validator::load(None, &[]).unwrap();
        let msg = |event: &str, id: &str, when: &str, pid3: &str, tail: &str| {
            format!(
                "MSH|^~\\&|PAS|RJZ|GW|OB|{when}||ADT^{event}|{id}|P|2.4\rEVN|{event}|{when}\rPID|1||{pid3}||PAGE^Ann|||F|||{tail}"
            )
        };
        let visit = "\rPV1|1|E|ED^^^RJZ30||||||||||||||||V1^^^RJZ^VN\r";
        let text = [
            msg(
                "A28",
                "M1",
                "202610250900",
                "HB^^^RJZ^MR~9990000603^^^NHS^NH",
                "\r",
            ),
            msg("A04", "M2", "202610251000", "HA^^^RJZ^MR", visit),
            msg(
                "A01",
                "M3",
                "202610251100",
                "HB^^^RJZ^MR~HA^^^RJZ^MR~9990000603^^^NHS^NH",
                visit,
            ),
            msg("A28", "M4", "202610250800", "HU^^^RJZ^MR", "\r"),
            msg(
                "A40",
                "M5",
                "202610251200",
                "HB^^^RJZ^MR~9990000603^^^NHS^NH",
                "\rMRG|HU^^^RJZ^MR\r",
            ),
            msg(
                "A31",
                "M6",
                "202610251300",
                "HU^^^RJZ^MR~9990000603^^^NHS^NH",
                "1 New Road^^Beckenham^^BR3 1AB\r",
            ),
        ]
        .concat();
        let run = map_messages(&text, &AdtContext::default(), &validator);
        let acks: Vec<&str> = run.messages.iter().map(|m| m.ack).collect();
        assert_eq!(acks, ["AA"; 6], "{:?}", run.messages);
        let entries = run.bundle["entry"].as_array().unwrap();
        let traced = entries
            .iter()
            .find(|e| {
                e["resource"]["active"] != false && e["resource"].to_string().contains("9990000603")
            })
            .unwrap();
        assert_eq!(
            traced["resource"]["address"][0]["line"][0], "1 New Road",
            "{traced:#}"
        );
        let visit = entries
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Encounter")
            .unwrap();
        assert_eq!(visit["resource"]["subject"]["reference"], traced["fullUrl"]);
    }

    /// A message sent again (same sender and MSH-10) changes nothing and is
    /// answered as the first was, as the feed does: a transfer resent after
    /// its cancel does not come back.
    #[test]
    fn a_repeat_changes_nothing() {
        let validator = Validator::load(None, &[]).unwrap();
        let message = |event: &str, id: &str, when: &str, place: &str| {
            format!(
                "MSH|^~\\&|PAS|RJZ|GW|OB|{when}||ADT^{event}|{id}|P|2.4\rEVN|{event}|{when}\rPID|1||9990000018^^^NHS^NH||PAGE^Ann\rPV1|1|I|{place}||||||||||||||||V1^^^RJZ^VN|||||||||||||||||||||||||202607141015\r"
            )
        };
        let text = [
            message("A01", "M1", "202607141018", "AMU^^^RJZ30"),
            message("A02", "M2", "202607141400", "WARD 9^^^RJZ30"),
            message("A12", "M3", "202607141500", "AMU^^^RJZ30"),
            message("A02", "M2", "202607141400", "WARD 9^^^RJZ30"),
            // Another application's M2 is no repeat.
            message("A08", "M2", "202607141600", "AMU^^^RJZ30").replace("|PAS|", "|ED|"),
        ]
        .concat();
        let run = map_messages(&text, &AdtContext::default(), &validator);
        let acks: Vec<&str> = run.messages.iter().map(|m| m.ack).collect();
        assert_eq!(acks, ["AA"; 5], "{:?}", run.messages);
        assert!(
            run.messages[3].notes[0].starts_with("a repeat of message 2"),
            "{:?}",
            run.messages[3]
        );
        assert!(run.messages[4].notes.is_empty(), "{:?}", run.messages[4]);
        let encounter = &run.bundle["entry"][1]["resource"];
        let places = encounter["location"].as_array().unwrap();
        assert_eq!(places.len(), 1, "{encounter}");
        assert!(
            places[0]["location"].to_string().contains("AMU"),
            "{encounter}"
        );
    }
}
