//! An ADT message → what it says about a patient and a visit, as FHIR
//! values ([`Adt`]). Pure: the same message and [`AdtContext`] always give
//! the same result; nothing here reads the store.
//!
//! Layers: message (this file: MSH, EVN, PID, PD1, PV1, MRG) → segment →
//! datatype ([`super::datatypes`]: TS, XPN, XAD, XTN). NHS conventions from
//! the ITK HL7 v2 ADT specification (HL7 UK "A3" profile, v2.4 with v2.5
//! pre-adoption): the NHS number is the PID-3 repetition typed `NH`, MSH-4
//! the trust's ODS code, PV1-19 the hospital provider spell.

use super::condition::Condition;
use super::datatypes::{self, DataError};
use super::er7::{Field, Message, Rep, Segment};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::gp::map::{NHS_NUMBER_SYSTEM, ODS_SYSTEM};
pub const GMP_SYSTEM: &str = "https://fhir.hl7.org.uk/Id/gmp-number";
pub const GMC_SYSTEM: &str = "https://fhir.hl7.org.uk/Id/gmc-number";
/// ODS site codes (a trust's sites, `RJZ30`).
pub const ODS_SITE_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-site-code";
/// Local (hospital) patient identifiers: `{LOCAL_ID_SYSTEM}/{assigning authority}`.
pub const LOCAL_ID_SYSTEM: &str = "https://fhir.onebromley.nhs.uk/Id/local-patient-identifier";
/// Hospital provider spells (PV1-19): `{VISIT_SYSTEM}/{trust ODS code}`.
pub const VISIT_SYSTEM: &str = "https://fhir.onebromley.nhs.uk/Id/hospital-provider-spell";
pub const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const ACT_PRIORITY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActPriority";
const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const V2_0007: &str = "http://terminology.hl7.org/CodeSystem/v2-0007";
const ADMISSION_METHOD_SYSTEM: &str =
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-AdmissionMethodEngland";
/// When a location known without a period was reported (local extension
/// on `Encounter.location`, `profiles/`).
pub const LOCATION_REPORTED_URL: &str = "https://fhir.onebromley.nhs.uk/StructureDefinition/Extension-OneBromley-EncounterLocationReported";
pub const ADMISSION_METHOD_URL: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-AdmissionMethod";
const ADMIT_SOURCE_SYSTEM: &str =
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-SourceOfAdmissionEngland";
pub const SNOMED_SYSTEM: &str = "http://snomed.info/sct";
pub const DISCHARGE_DESTINATION_SYSTEM: &str =
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-DischargeDestinationEngland";
/// UK Core `DischargeDestinationEngland` (complete, NHS Data Dictionary).
const DISCHARGE_DESTINATIONS: [&str; 21] = [
    "19", "29", "30", "37", "38", "48", "49", "50", "51", "52", "53", "54", "65", "66", "79", "84",
    "85", "87", "88", "98", "99",
];
/// UK Core `DischargeMethodEngland` (complete).
const DISCHARGE_METHODS: [&str; 8] = ["1", "3", "4", "5", "6", "7", "8", "9"];
/// UK Core `SourceOfAdmissionEngland` (complete).
const SOURCES_OF_ADMISSION: [&str; 16] = [
    "19", "29", "39", "49", "51", "52", "53", "54", "65", "66", "79", "85", "87", "88", "98", "99",
];
const VERIFICATION_URL: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus";
const VERIFICATION_SYSTEM: &str =
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland";

/// The ADT trigger events the gateway acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    A01,
    A02,
    A03,
    A04,
    A05,
    A08,
    A11,
    A12,
    A13,
    A28,
    A31,
    A40,
}

impl Event {
    pub fn parse(code: &str) -> Option<Event> {
        Some(match code {
            "A01" => Event::A01,
            "A02" => Event::A02,
            "A03" => Event::A03,
            "A04" => Event::A04,
            "A05" => Event::A05,
            "A08" => Event::A08,
            "A11" => Event::A11,
            "A12" => Event::A12,
            "A13" => Event::A13,
            "A28" => Event::A28,
            "A31" => Event::A31,
            "A40" => Event::A40,
            _ => return None,
        })
    }

    pub fn code(self) -> &'static str {
        match self {
            Event::A01 => "A01",
            Event::A02 => "A02",
            Event::A03 => "A03",
            Event::A04 => "A04",
            Event::A05 => "A05",
            Event::A08 => "A08",
            Event::A11 => "A11",
            Event::A12 => "A12",
            Event::A13 => "A13",
            Event::A28 => "A28",
            Event::A31 => "A31",
            Event::A40 => "A40",
        }
    }

    /// A28, A31 (person administration) and A40 (merge) touch patients only.
    pub fn has_visit(self) -> bool {
        !matches!(self, Event::A28 | Event::A31 | Event::A40)
    }

    /// The Encounter status this event sets (HL7 v2-to-FHIR ConceptMap
    /// table-hl70003-to-encounter-status, with the choices documented in
    /// `fixtures/hl7v2/README.md`); `None` leaves the status alone.
    pub fn status(self) -> Option<&'static str> {
        match self {
            Event::A01 | Event::A02 => Some("in-progress"),
            // Until the discharge it cancels is known: the state then
            // restores the status from before it (`arrived` after an A04).
            Event::A13 => Some("in-progress"),
            Event::A03 => Some("finished"),
            // Registration: the patient has arrived (ED or clinic) and is
            // waiting to be seen. v2-to-FHIR says `planned`, which would
            // hide every ED attendance from an "in hospital now" view.
            Event::A04 => Some("arrived"),
            Event::A05 => Some("planned"),
            Event::A11 => Some("cancelled"),
            Event::A08 | Event::A12 | Event::A28 | Event::A31 | Event::A40 => None,
        }
    }
}

/// What a mapping needs besides the message.
#[derive(Debug, Clone)]
pub struct AdtContext {
    /// Local PV1-2 codes → v3 ActCode (`[hl7v2.patient_class]`), checked
    /// before the standard table so a trust can override it.
    pub patient_class: BTreeMap<String, String>,
    /// The MSH-11.1 processing ids taken (`hl7v2.processing_ids`, HL7 table
    /// 0103: `P` production, `T` training, `D` debugging): a live gateway
    /// takes `P` alone, so that a training or test system pointed at it by
    /// mistake is refused (`AR`, 202) rather than written into live
    /// records. A message without MSH-11 is taken.
    pub processing_ids: Vec<String>,
    /// The MSH-12.1 version ids taken (`hl7v2.versions`, HL7 table 0104):
    /// [`VERSIONS`] unless configured, the versions this mapping is written
    /// to. Another version is refused (`AR`, 203) rather than read as if
    /// it were one of them. A message without MSH-12 is taken.
    pub versions: Vec<String>,
    /// `hl7v2.accept_acknowledgements`: a message in enhanced mode (MSH-15
    /// or MSH-16 valued, HL7 v2.5 §2.9.3) is answered with the accept
    /// acknowledgement. Off by default, as integration engines ship it:
    /// NHS feeds commonly send `AL|NE` and expect `AA`.
    pub accept_acknowledgements: bool,
}

/// The HL7 versions the ADT mapping is written to and takes by default:
/// 2.3 to 2.5 with their point releases.
pub const VERSIONS: [&str; 5] = ["2.3", "2.3.1", "2.4", "2.5", "2.5.1"];

/// HL7 table 0104's version ids (v2.9; 2.3.2 was withdrawn): what
/// `hl7v2.versions` may name, so that a trust whose engine labels ADT
/// messages that read as 2.5 with a later version can let them in.
pub const VERSION_IDS: [&str; 16] = [
    "2.0", "2.0D", "2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1",
    "2.8", "2.8.1", "2.8.2", "2.9",
];

impl Default for AdtContext {
    fn default() -> AdtContext {
        AdtContext {
            patient_class: BTreeMap::new(),
            processing_ids: vec!["P".to_string()],
            versions: VERSIONS.map(String::from).to_vec(),
            accept_acknowledgements: false,
        }
    }
}

/// Why a message cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdtError {
    /// Not a message type or event the gateway takes: `AR`.
    Unsupported {
        location: String,
        condition: Condition,
        reason: String,
    },
    /// Content that cannot be mapped: `AE`, quarantined.
    Invalid(Vec<DataError>),
}

/// A patient as one message describes them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatientFacts {
    pub nhs_number: Option<String>,
    /// Every identifier, as FHIR Identifiers (the NHS number first).
    pub identifiers: Vec<Value>,
    pub name: Vec<Value>,
    pub telecom: Vec<Value>,
    pub gender: Option<&'static str>,
    pub birth_date: Option<String>,
    /// `deceasedDateTime` or `deceasedBoolean`, with its member name.
    pub deceased: Option<(&'static str, Value)>,
    pub address: Vec<Value>,
    pub general_practitioner: Vec<Value>,
    /// Patient members the message deletes with HL7's explicit null `""`
    /// (§2.5.3): `deceased` (PID-29, with PID-30 not `Y`), `address`
    /// (PID-11), `telecom` (PID-13 or PID-14, the other `""` or empty),
    /// `generalPractitioner` (PD1-3).
    pub cleared: Vec<&'static str>,
}

impl PatientFacts {
    /// `(system, value)` of every identifier, for finding the record.
    pub fn keys(&self) -> Vec<(String, String)> {
        identifier_keys(&self.identifiers)
    }
}

/// The visit (hospital provider spell) a message is about.
#[derive(Debug, Clone, PartialEq)]
pub struct Visit {
    /// The Encounter identifier: PV1-19 with the trust's ODS code.
    pub identifier: Value,
    pub class: Value,
    pub priority: Option<Value>,
    pub admission_method: Option<Value>,
    /// PV1-4 as sent, when taken: the priority and the admission method
    /// above come from it together.
    pub admission_type: Option<String>,
    pub admit_source: Option<Value>,
    pub discharge_disposition: Option<Value>,
    pub start: Option<String>,
    pub end: Option<String>,
    /// PV1-3 as a `Encounter.location.location` Reference.
    pub location: Option<Value>,
}

/// Everything the gateway takes from one ADT message.
#[derive(Debug, Clone, PartialEq)]
pub struct Adt {
    pub event: Event,
    pub control_id: String,
    /// MSH-4: the sending trust's (or site's) ODS code.
    pub sender: String,
    /// When the event happened (EVN-2, else MSH-7), FHIR dateTime.
    pub time: String,
    /// The same instant in milliseconds since the epoch: the order events
    /// are applied in, whatever order they arrive in.
    pub time_ms: i64,
    /// Shared: a feed reuses what it read from an identical PID before
    /// ([`read_with`]).
    pub patient: Arc<PatientFacts>,
    pub visit: Option<Visit>,
    /// A40: the identifiers of the record merged away (MRG-1).
    pub prior: Vec<Value>,
    /// Things worth knowing about the mapping (ambiguous local times).
    pub notes: Vec<String>,
}

/// Fields each segment's mapping reads (HL7 field numbers); others with
/// content are reported as unmapped. MSH is the envelope: all of it is used.
const MAPPED: &[(&str, &[usize])] = &[
    ("EVN", &[1, 2]),
    ("PID", &[1, 2, 3, 5, 7, 8, 11, 13, 14, 29, 30, 32]),
    ("PD1", &[3, 4]),
    ("PV1", &[1, 2, 3, 4, 14, 19, 36, 44, 45]),
    ("MRG", &[1]),
];

/// Reads an ADT message.
pub fn read(msg: &Message, cx: &AdtContext) -> Result<Adt, AdtError> {
    read_with(msg, cx, None)
}

/// What the patient facts of a message depend on: its delimiters, its
/// sender (MSH-4) and its first PID and PD1 segments, as sent. Two messages
/// with the same key have the same facts; `None` without a PID.
pub fn patient_key(msg: &Message) -> Option<String> {
    let pid = msg.segment("PID")?.raw();
    let pd1 = msg.segment("PD1").map_or("", |s| s.raw());
    let sender = msg
        .segment("MSH")
        .and_then(|msh| msh.field(4))
        .map_or("", |f| f.raw());
    let d = msg.delimiters();
    let mut key = String::with_capacity(pid.len() + pd1.len() + sender.len() + 16);
    key.extend([d.field, d.component, d.repetition]);
    key.extend([d.escape, d.subcomponent, d.truncation].map(|c| c.unwrap_or('\0')));
    for part in [sender, pid, pd1] {
        key.push('\r');
        key.push_str(part);
    }
    Some(key)
}

/// Refuses (`AR`) a message whose `value` at `location` (MSH-11.1,
/// MSH-12.1) is not one the gateway `takes`; one without it is taken.
fn not_taken(
    value: Option<String>,
    takes: &[String],
    location: &str,
    what: &str,
    condition: Condition,
) -> Result<(), AdtError> {
    match value {
        Some(value) if !takes.contains(&value) => Err(AdtError::Unsupported {
            location: location.into(),
            condition,
            reason: format!(
                "{what} {value} is not taken here; this gateway takes {}",
                takes.join(", ")
            ),
        }),
        _ => Ok(()),
    }
}

/// [`read`], with the patient facts `known` from an earlier message with
/// the same [`patient_key`] (read without errors) instead of read again.
/// The notes reading the PID would add (an ambiguous local time in PID-29,
/// a table 0445 code in PID-32) are then not repeated.
pub fn read_with(
    msg: &Message,
    cx: &AdtContext,
    known: Option<Arc<PatientFacts>>,
) -> Result<Adt, AdtError> {
    let (kind, trigger) = msg.message_type().unwrap_or_default();
    if kind != "ADT" {
        return Err(AdtError::Unsupported {
            location: "MSH-9.1".into(),
            condition: Condition::UnsupportedMessageType,
            reason: format!(
                "message type {} is not supported here; this interface takes ADT messages",
                if kind.is_empty() { "(empty)" } else { &kind }
            ),
        });
    }
    not_taken(
        msg.get("MSH-11.1"),
        &cx.processing_ids,
        "MSH-11.1",
        "processing id",
        Condition::UnsupportedProcessingId,
    )?;
    not_taken(
        msg.version(),
        &cx.versions,
        "MSH-12.1",
        "HL7 version",
        Condition::UnsupportedVersionId,
    )?;
    let Some(event) = Event::parse(&trigger) else {
        return Err(AdtError::Unsupported {
            location: "MSH-9.2".into(),
            condition: Condition::UnsupportedEvent,
            reason: format!(
                "ADT event {} is not supported; supported: A01 A02 A03 A04 A05 A08 A11 A12 A13 A28 A31 A40",
                if trigger.is_empty() {
                    "(empty)"
                } else {
                    &trigger
                }
            ),
        });
    };
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    // EVN-1 repeats the trigger (v2.3-2.5, kept for compatibility): the
    // event is MSH-9.2's, and a different EVN-1 is worth knowing.
    if let Some(evn1) = msg.get("EVN-1")
        && !evn1.is_empty()
        && evn1 != trigger
    {
        notes.push(format!(
            "EVN-1: {evn1} differs from MSH-9.2 {trigger}, the event taken"
        ));
    }
    let control_id = msg.control_id().unwrap_or_default();
    if control_id.is_empty() {
        errors.push(missing("MSH-10", "message control id"));
    }
    let facility = msg.get("MSH-4").unwrap_or_default();
    if facility.is_empty() {
        errors.push(missing("MSH-4", "sending facility (the trust's ODS code)"));
    }
    let sender = trust_of(&facility).to_string();
    if sender != facility {
        notes.push(format!(
            "MSH-4: {facility} is a site of trust {sender}: hospital and visit numbers without an assigning authority, and the service provider, are the trust's"
        ));
    }

    // When: EVN-2 (recorded date/time), else MSH-7.
    let (location, raw_time) = match msg.get("EVN-2") {
        Some(t) => ("EVN-2", Some(t)),
        None => ("MSH-7", msg.get("MSH-7")),
    };
    let mut time = None;
    match raw_time.map(|t| datatypes::dtm(&t, location)) {
        None => errors.push(missing("MSH-7", "date/time of message")),
        Some(Err(e)) => errors.push(e),
        Some(Ok(None)) => errors.push(missing(location, "event date/time")),
        Some(Ok(Some(instant))) => {
            notes.extend(instant.note.as_ref().map(|n| format!("{location}: {n}")));
            match instant_ms(&instant.value) {
                Some(ms) => time = Some((instant.value, ms)),
                None => errors.push(DataError::new(
                    Condition::DataType,
                    location,
                    format!(
                        "{} is not precise to the day: an event time needs at least a date",
                        instant.value
                    ),
                )),
            }
        }
    }

    let pid = msg.segment("PID");
    let patient = match (pid, known) {
        (Some(_), Some(known)) => known,
        (Some(pid), None) => Arc::new(read_patient(msg, pid, &sender, &mut errors, &mut notes)),
        (None, _) => {
            errors.push(missing_segment("PID", "PID segment"));
            Arc::default()
        }
    };
    if pid.is_some() && patient.identifiers.is_empty() {
        errors.push(missing(
            "PID-3",
            "patient identifier (an NHS number or a hospital number)",
        ));
    }

    let visit = if event.has_visit() {
        match msg.segment("PV1") {
            Some(pv1) => read_visit(pv1, &sender, cx, &mut errors, &mut notes),
            None => {
                errors.push(missing_segment("PV1", "PV1 segment (the visit)"));
                None
            }
        }
    } else {
        None
    };

    let mut prior = Vec::new();
    if event == Event::A40 && msg.segments_named("MRG").nth(1).is_some() {
        // ADT_A39's merge group repeats; this feed takes one merge a
        // message, and refuses the rest rather than drop them unseen.
        errors.push(DataError::new(
            Condition::SegmentSequence,
            "MRG[2]",
            "a second merge (PID and MRG group) in one A40: send each merge as its own message",
        ));
    }
    if event == Event::A40 {
        if let Some(field) = msg.segment("MRG").and_then(|s| s.field(1)) {
            for (i, rep) in field.repetitions().enumerate() {
                let location = format!("MRG-1[{}]", i + 1);
                match patient_identifier(rep, &sender, &location) {
                    Ok(Some(id)) => prior.push(id.1),
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                }
            }
        }
        if prior.is_empty() {
            errors.push(missing(
                "MRG-1",
                "prior patient identifier (the record merged away)",
            ));
        }
    }

    if !errors.is_empty() {
        return Err(AdtError::Invalid(errors));
    }
    let (time, time_ms) = time.unwrap_or_default();
    Ok(Adt {
        event,
        control_id,
        sender,
        time,
        time_ms,
        patient,
        visit,
        prior,
        notes,
    })
}

/// A segment the message needs is not there (table 0357's 100: "required
/// segments are missing").
fn missing_segment(segment: &str, what: &str) -> DataError {
    DataError::new(
        Condition::SegmentSequence,
        segment,
        format!("{what} is required and missing"),
    )
}

fn missing(location: &str, what: &str) -> DataError {
    DataError::new(
        Condition::RequiredFieldMissing,
        location,
        format!("{what} is required and missing"),
    )
}

fn instant_ms(value: &str) -> Option<i64> {
    if value.len() <= 10 {
        // A date: midnight UTC orders it before anything later that day.
        let date: jiff::civil::Date = value.parse().ok()?;
        return Some(
            date.to_zoned(jiff::tz::TimeZone::UTC)
                .ok()?
                .timestamp()
                .as_millisecond(),
        );
    }
    let ts: jiff::Timestamp = value.parse().ok()?;
    Some(ts.as_millisecond())
}

/// The patient facts of `pid`. Reads only the first PID and PD1, MSH-4
/// (`sender`) and the delimiters: [`patient_key`] is made of exactly
/// those, and a feed reuses the facts of any message with the same key.
fn read_patient(
    msg: &Message,
    pid: Segment<'_>,
    sender: &str,
    errors: &mut Vec<DataError>,
    notes: &mut Vec<String>,
) -> PatientFacts {
    let mut facts = PatientFacts::default();
    let mut nhs: Option<(String, Value)> = None;
    let mut locals = Vec::new();
    // PID-3, then the v2.2/2.3 legacy PID-2 (external id), for an NHS number
    // only (a second one that differs is an error wherever it stands).
    for field_no in [3, 2] {
        let Some(field) = pid.field(field_no) else {
            continue;
        };
        for (i, rep) in field.repetitions().enumerate() {
            let location = format!("PID-{field_no}[{}]", i + 1);
            match patient_identifier(rep, sender, &location) {
                Ok(Some((true, id))) => {
                    let value = id["value"].as_str().unwrap_or_default().to_string();
                    match &nhs {
                        None => nhs = Some((value, id)),
                        // A patient has one NHS number: two that differ
                        // cannot both be theirs.
                        Some((first, _)) if *first != value => errors.push(DataError::new(
                            Condition::DataType,
                            format!("{location}.1"),
                            format!(
                                "a second NHS number, {value}, differs from the first, {first}"
                            ),
                        )),
                        Some(_) => {}
                    }
                }
                Ok(Some((false, id))) if field_no == 3 => locals.push(id),
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    if let Some((number, mut id)) = nhs {
        if let Some(status) = msg.get("PID-32") {
            match verification(&status) {
                Some(code) => {
                    if let Some(o) = id.as_object_mut() {
                        let mut with = serde_json::Map::new();
                        with.insert(
                            "extension".into(),
                            json!([{
                                "url": VERIFICATION_URL,
                                "valueCodeableConcept": {"coding": [{"system": VERIFICATION_SYSTEM, "code": code}]}
                            }]),
                        );
                        with.extend(std::mem::take(o));
                        *o = with;
                    }
                }
                // HL7 table 0445's own codes (identity reliability: AL
                // alias, UA unknown age, UD unknown date of birth, US unknown
                // SSN) say nothing about the NHS number: kept out, noted.
                None if matches!(status.as_str(), "AL" | "UA" | "UD" | "US") => notes.push(format!(
                    "PID-32: {status} is HL7 table 0445's identity reliability code, not an NHS number verification status: not mapped"
                )),
                None => errors.push(DataError::new(
                    Condition::TableValueNotFound,
                    "PID-32",
                    format!(
                        "{status:?} is not an NHS number verification status (NSTS01 to NSTS08) nor an HL7 table 0445 code"
                    ),
                )),
            }
        }
        facts.nhs_number = Some(number);
        facts.identifiers.push(id);
    } else if let Some(status) = msg.get("PID-32") {
        notes.push(format!(
            "PID-32: {status} verifies an NHS number, and the message has none: not mapped"
        ));
    }
    facts.identifiers.extend(locals);

    if let Some(field) = pid.field(5) {
        for (i, rep) in field.repetitions().enumerate() {
            match datatypes::human_name(rep, &format!("PID-5[{}]", i + 1)) {
                Ok(Some(name)) => facts.name.push(name),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    match datatypes::date(pid.field(7).and_then(|f| f.repetition(1)), "PID-7") {
        Ok(date) => facts.birth_date = date,
        Err(e) => errors.push(e),
    }
    if let Some(sex) = msg.get("PID-8") {
        match datatypes::gender(&sex, "PID-8") {
            Ok(g) => facts.gender = g,
            Err(e) => errors.push(e),
        }
    }
    if let Some(field) = pid.field(11) {
        for (i, rep) in field.repetitions().enumerate() {
            match datatypes::address(rep, &format!("PID-11[{}]", i + 1)) {
                Ok(Some(a)) => facts.address.push(a),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    for (field_no, work) in [(13, false), (14, true)] {
        let Some(field) = pid.field(field_no) else {
            continue;
        };
        for (i, rep) in field.repetitions().enumerate() {
            match datatypes::contact_point(rep, &format!("PID-{field_no}[{}]", i + 1)) {
                Ok(Some(mut c)) => {
                    if work && c.get("use").is_none() {
                        c["use"] = json!("work");
                    }
                    facts.telecom.push(c);
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    let nulled = |n: usize| pid.field(n).is_some_and(|f| f.is_null());
    if nulled(29) && msg.get("PID-30").as_deref() != Some("Y") {
        facts.cleared.push("deceased");
    }
    // PID-13 and PID-14 make one member: deleted when one is `""` and the
    // other is `""` or empty.
    if (nulled(13) || nulled(14)) && facts.telecom.is_empty() {
        facts.cleared.push("telecom");
    }
    if nulled(11) {
        facts.cleared.push("address");
    }
    if msg
        .segment("PD1")
        .and_then(|pd1| pd1.field(3))
        .is_some_and(|f| f.is_null())
    {
        facts.cleared.push("generalPractitioner");
    }
    // PID-30 (table 0136) is read whether or not PID-29 has a date, and a
    // date of death beside `N` is a contradiction to send back, not a death
    // to record.
    let indicator = msg.get("PID-30");
    let indicator = match indicator.as_deref().map(str::trim) {
        Some(flag @ ("Y" | "N")) => Some(flag == "Y"),
        Some("") | None => None,
        Some(other) => {
            errors.push(DataError::new(
                Condition::TableValueNotFound,
                "PID-30",
                format!("{other:?} is not Y or N (HL7 table 0136)"),
            ));
            None
        }
    };
    match datatypes::ts(pid.field(29).and_then(|f| f.repetition(1)), "PID-29") {
        Ok(Some(death)) if indicator == Some(false) => errors.push(DataError::new(
            Condition::DataType,
            "PID-30",
            format!(
                "'N' (not deceased) contradicts the date of death {} in PID-29",
                death.value
            ),
        )),
        Ok(Some(death)) => {
            notes.extend(death.note.map(|n| format!("PID-29: {n}")));
            facts.deceased = Some(("deceasedDateTime", json!(death.value)));
        }
        Ok(None) => {
            facts.deceased = indicator.map(|dead| ("deceasedBoolean", json!(dead)));
        }
        Err(e) => errors.push(e),
    }

    // PD1-3 registered practice (XON: ODS code in XON.10, or XON.3 before
    // v2.5); PD1-4 the registered GP (XCN.1, a GMP code).
    if let Some(pd1) = msg.segment("PD1") {
        if let Some(rep) = pd1.field(3).and_then(|f| f.repetition(1)) {
            let name = component(rep, 1);
            let code = component(rep, 10).or_else(|| component(rep, 3));
            match code {
                Some(code) => {
                    let mut reference = json!({
                        "type": "Organization",
                        "identifier": {"system": ODS_SYSTEM, "value": code}
                    });
                    if let Some(name) = name {
                        reference["display"] = json!(name);
                    }
                    facts.general_practitioner.push(reference);
                }
                None if name.is_some() => errors.push(DataError::new(
                    Condition::RequiredFieldMissing,
                    "PD1-3.3",
                    "the registered practice has a name but no ODS code (PD1-3.10 or PD1-3.3)",
                )),
                None => {}
            }
        }
        if let Some(rep) = pd1.field(4).and_then(|f| f.repetition(1))
            && let Some(code) = component(rep, 1)
        {
            let authorities: Vec<String> =
                [9, 13].iter().filter_map(|&n| component(rep, n)).collect();
            let identifier = match doctor_system(&code, &authorities) {
                Some(system) => json!({"system": system, "value": code}),
                None => {
                    let named = if authorities.is_empty() {
                        "empty".to_string()
                    } else {
                        authorities.join(", ")
                    };
                    notes.push(format!(
                        "PD1-4: {code:?} is neither a GMP nor a GMC code (XCN.9/XCN.13: {named}): kept without an identifier system"
                    ));
                    json!({"value": code})
                }
            };
            let mut reference = json!({"type": "Practitioner", "identifier": identifier});
            let family = component(rep, 2);
            let given = component(rep, 3);
            let prefix = component(rep, 6);
            let display: Vec<String> = [prefix, given, family].into_iter().flatten().collect();
            if !display.is_empty() {
                reference["display"] = json!(display.join(" "));
            }
            facts.general_practitioner.push(reference);
        }
    }
    facts
}

fn component(rep: Rep<'_>, n: usize) -> Option<String> {
    let value = rep.component(n)?.value();
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// Whether a CX repetition is typed as the NHS number: CX.5 `NH` (HL7
/// table 0203) and receivers' variants such as `NH01`, or CX.4 `NHS`
/// without a type.
fn is_nhs_cx(rep: Rep<'_>) -> bool {
    let kind = component(rep, 5).unwrap_or_default();
    kind.starts_with("NH") || (kind.is_empty() && component(rep, 4).as_deref() == Some("NHS"))
}

/// A CX repetition → `(is the NHS number, Identifier)`.
fn patient_identifier(
    rep: Rep<'_>,
    sender: &str,
    location: &str,
) -> Result<Option<(bool, Value)>, DataError> {
    let Some(value) = component(rep, 1) else {
        return Ok(None);
    };
    let authority = component(rep, 4).unwrap_or_default();
    let kind = component(rep, 5).unwrap_or_default();
    if is_nhs_cx(rep) {
        // Shown 3-3-4 with spaces or hyphens; kept as the ten digits.
        let digits: String = value
            .chars()
            .filter(|&c| !c.is_whitespace() && c != '-')
            .collect();
        if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DataError::new(
                Condition::DataType,
                format!("{location}.1"),
                format!("NHS number {value:?} is not 10 digits"),
            ));
        }
        if !crate::fhir::is_nhs_number(&digits) {
            return Err(DataError::new(
                Condition::DataType,
                format!("{location}.1"),
                format!("NHS number {digits} fails the Modulus 11 check"),
            ));
        }
        return Ok(Some((
            true,
            json!({"system": NHS_NUMBER_SYSTEM, "value": digits}),
        )));
    }
    // A trust's site as the authority is the trust (`trust_of`), as MSH-4.
    let authority = if authority.is_empty() {
        sender.to_string()
    } else {
        trust_of(&authority).to_string()
    };
    let mut id = serde_json::Map::new();
    if !kind.is_empty() {
        id.insert(
            "type".into(),
            json!({"coding": [{"system": V2_0203, "code": kind}]}),
        );
    }
    id.insert(
        "system".into(),
        json!(format!("{LOCAL_ID_SYSTEM}/{}", url_segment(&authority))),
    );
    id.insert("value".into(), json!(value));
    if is_ods(&authority) {
        id.insert(
            "assigner".into(),
            json!({"identifier": {"system": ODS_SYSTEM, "value": authority}}),
        );
    }
    Ok(Some((false, Value::Object(id))))
}

/// The identifier system of a doctor's code (XCN.1): the one its assigning
/// authority (XCN.9) or its type (XCN.13) names, `GMP` or `GMC`, else the
/// one its form shows: `G` and seven digits a GP's GMP code; a GMC number
/// is seven digits, or eight after a `C` as consultant codes are sent
/// (NHS England ADT specification: `C3456789^…^GMC`).
fn doctor_system(code: &str, authorities: &[String]) -> Option<&'static str> {
    for named in authorities {
        match named.to_ascii_uppercase().as_str() {
            "GMP" => return Some(GMP_SYSTEM),
            "GMC" => return Some(GMC_SYSTEM),
            _ => {}
        }
    }
    let digits =
        |s: &str, n: &[usize]| n.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    match code.split_at_checked(1) {
        Some(("G", rest)) if digits(rest, &[7]) => Some(GMP_SYSTEM),
        Some(("C", rest)) if digits(rest, &[7, 8]) => Some(GMC_SYSTEM),
        _ if digits(code, &[7]) => Some(GMC_SYSTEM),
        _ => None,
    }
}

/// A discharge destination's `CodeableConcept`: an NHS Data Dictionary
/// code (two digits, UK Core's preferred binding) or a SNOMED CT concept
/// id (ECDS sends those); `None` for any other code. The system is told by
/// the code's form, so a code kept alone beside an Encounter gives the same
/// coding back.
pub fn discharge_destination(code: &str) -> Option<Value> {
    let system = if DISCHARGE_DESTINATIONS.contains(&code) {
        DISCHARGE_DESTINATION_SYSTEM
    } else if is_snomed_concept(code) {
        SNOMED_SYSTEM
    } else {
        return None;
    };
    Some(json!({"coding": [{"system": system, "code": code}]}))
}

/// A SNOMED CT concept id by its form (SNOMED CT Technical Implementation
/// Guide, "SCTID"): 6 to 18 digits without a leading zero, the partition
/// identifier (the two digits before the last) `00` (a core concept) or
/// `10` (an extension's, as the UK's), and a Verhoeff check digit last. A
/// local numeric code passes by chance one time in five hundred.
fn is_snomed_concept(code: &str) -> bool {
    const D: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    // The permutation's powers 0 to 7, derived rather than written out
    // (a copied table had a wrong row).
    const P: [[u8; 10]; 8] = {
        const STEP: [u8; 10] = [1, 5, 7, 6, 2, 8, 3, 0, 9, 4];
        let mut p = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]; 8];
        let mut power = 1;
        while power < 8 {
            let mut i = 0;
            while i < 10 {
                p[power][i] = STEP[p[power - 1][i] as usize];
                i += 1;
            }
            power += 1;
        }
        p
    };
    let digits = code.as_bytes();
    if !(6..=18).contains(&digits.len())
        || digits[0] == b'0'
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return false;
    }
    let partition = &digits[digits.len() - 3..digits.len() - 1];
    if partition != b"00" && partition != b"10" {
        return false;
    }
    let check = digits.iter().rev().enumerate().fold(0u8, |c, (i, d)| {
        D[usize::from(c)][usize::from(P[i % 8][usize::from(d - b'0')])]
    });
    check == 0
}

/// The trust an MSH-4 speaks for. NHS trusts' ODS codes are three
/// characters starting with `R`, and their sites' five, the trust's and two
/// more (`RJZ30`); a feed may name either (NHS England ADT specification).
/// A trust's hospital and visit numbers are the same whichever of its sites
/// sends them, so a site code is read as its trust's; any other code is its
/// own.
pub fn trust_of(facility: &str) -> &str {
    match facility.get(..3) {
        Some(trust) if facility.len() == 5 && facility.starts_with('R') && is_ods(facility) => {
            trust
        }
        _ => facility,
    }
}

/// ODS codes: 3 to 10 upper-case letters or digits.
pub fn is_ods(code: &str) -> bool {
    (3..=10).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// An assigning authority as the last segment of a system URI.
fn url_segment(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// ITK table 0445 `NSTS01`…`NSTS08` → UK Core `01`…`08`.
fn verification(value: &str) -> Option<String> {
    let code = value.strip_prefix("NSTS").unwrap_or(value);
    matches!(code, "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08").then(|| code.to_string())
}

fn read_visit(
    pv1: Segment<'_>,
    sender: &str,
    cx: &AdtContext,
    errors: &mut Vec<DataError>,
    notes: &mut Vec<String>,
) -> Option<Visit> {
    let rep = |n: usize| pv1.field(n).and_then(|f| f.repetition(1));
    let value = |n: usize| rep(n).and_then(|r| component(r, 1));
    let before = errors.len();

    let identifier = match rep(19).and_then(|r| component(r, 1).map(|v| (v, r))) {
        Some((number, r)) => {
            let trust =
                component(r, 4).map_or_else(|| sender.to_string(), |t| trust_of(&t).to_string());
            Some(
                json!({"system": format!("{VISIT_SYSTEM}/{}", url_segment(&trust)), "value": number}),
            )
        }
        None => {
            errors.push(missing(
                "PV1-19",
                "visit number (the hospital provider spell)",
            ));
            None
        }
    };
    let class = match value(2) {
        Some(code) => match patient_class(&code, cx) {
            Some(class) => Some(class),
            None => {
                errors.push(DataError::new(
                    Condition::TableValueNotFound,
                    "PV1-2",
                    format!(
                        "patient class {code:?} has no Encounter.class mapping (E, I, O, P, or a local code in [hl7v2.patient_class])"
                    ),
                ));
                None
            }
        },
        None => {
            errors.push(missing("PV1-2", "patient class"));
            None
        }
    };
    let admission_type = value(4);
    let (priority, admission_method) = match admission_type.as_deref() {
        Some(code) => match admission_priority(code) {
            Some(found) => found,
            None => {
                errors.push(DataError::new(
                    Condition::TableValueNotFound,
                    "PV1-4",
                    format!(
                        "admission type {code:?} is neither HL7 table 0007 (E U A C R L N) nor an NHS admission method (11-13, 21-28, 2A-2D, 31-32, 81-83, 98, 99)"
                    ),
                ));
                (None, None)
            }
        },
        None => (None, None),
    };
    // UK Core's England code systems are complete: a code outside them
    // written under their system would be a false statement, so it is
    // noted and left out (the message still goes in: a discharge held for
    // its destination would leave the visit open).
    let admit_source = value(14).and_then(|code| {
        if SOURCES_OF_ADMISSION.contains(&code.as_str()) {
            return Some(json!({"coding": [{"system": ADMIT_SOURCE_SYSTEM, "code": code}]}));
        }
        notes.push(format!(
            "PV1-14: {code:?} is not an NHS source of admission (UK Core SourceOfAdmissionEngland): not kept"
        ));
        None
    });
    let mut destination = |at: &str, code: String| {
        if discharge_destination(&code).is_some() {
            return Some(code);
        }
        notes.push(format!(
            "{at}: {code:?} is neither an NHS discharge destination (UK Core DischargeDestinationEngland: {}) nor a SNOMED CT code: not kept",
            DISCHARGE_DESTINATIONS.join(", ")
        ));
        None
    };
    let discharge_disposition = match value(36) {
        // The NHS England ADT specification puts the discharge method in
        // PV1-36 and the destination in PV1-37 (Discharged to Location).
        Some(method) if DISCHARGE_METHODS.contains(&method.as_str()) => {
            let note = format!(
                "PV1-36: {method:?} is an NHS discharge method (UK Core DischargeMethodEngland), not kept; the destination is read from PV1-37"
            );
            let code = value(37).and_then(|code| destination("PV1-37", code));
            notes.push(note);
            code
        }
        Some(code) => destination("PV1-36", code),
        None => None,
    }
    .and_then(|code| discharge_destination(&code));
    let mut time = |n: usize| match datatypes::ts(rep(n), &format!("PV1-{n}")) {
        Ok(Some(t)) => {
            notes.extend(t.note.map(|note| format!("PV1-{n}: {note}")));
            Some(t.value)
        }
        Ok(None) => None,
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let start = time(44);
    let end = time(45);
    let location = rep(3).and_then(|r| {
        let parts: Vec<String> = [1, 2, 3].iter().filter_map(|&n| component(r, n)).collect();
        let facility = component(r, 4);
        if parts.is_empty() && facility.is_none() {
            return None;
        }
        let mut display = parts.join(" ");
        if let Some(site) = &facility {
            if !display.is_empty() {
                display.push_str(", ");
            }
            display.push_str(site);
        }
        let mut reference = json!({"display": display});
        if let Some(site) = facility.filter(|s| is_ods(s))
            && parts.is_empty()
        {
            // A trust's site (`RJZ30`) is a site code; a trust or another
            // organisation (`RJZ`, `NT3`) an organisation code.
            let system = if trust_of(&site) == site {
                ODS_SYSTEM
            } else {
                ODS_SITE_SYSTEM
            };
            reference =
                json!({"identifier": {"system": system, "value": site}, "display": display});
        }
        Some(reference)
    });
    if errors.len() > before {
        return None;
    }
    Some(Visit {
        identifier: identifier?,
        class: class?,
        priority,
        admission_method,
        admission_type,
        admit_source,
        discharge_disposition,
        start,
        end,
        location,
    })
}

/// PV1-2 → `Encounter.class` (v2-to-FHIR ConceptMap v2-0004 to
/// encounter-class), a trust's local table first.
fn patient_class(code: &str, cx: &AdtContext) -> Option<Value> {
    let act = match cx.patient_class.get(code) {
        Some(act) => act.as_str(),
        None => match code {
            "E" => "EMER",
            "I" => "IMP",
            "O" => "AMB",
            "P" => "PRENC",
            _ => return None,
        },
    };
    Some(act_coding(act))
}

/// The v3 ActCode `Coding` of an `Encounter.class` code, with its display
/// for the codes of the encounter-class value set.
pub(super) fn act_coding(act: &str) -> Value {
    let display = match act {
        "EMER" => "emergency",
        "IMP" => "inpatient encounter",
        "AMB" => "ambulatory",
        "PRENC" => "pre-admission",
        "ACUTE" => "inpatient acute",
        "NONAC" => "inpatient non-acute",
        "OBSENC" => "observation encounter",
        "SS" => "short stay",
        "HH" => "home health",
        "FLD" => "field",
        "VR" => "virtual",
        _ => "",
    };
    let mut coding = json!({"system": ACT_CODE_SYSTEM, "code": act});
    if !display.is_empty() {
        coding["display"] = json!(display);
    }
    coding
}

/// PV1-4 → (`Encounter.priority`, the UK Core AdmissionMethod extension
/// value). Trusts send either HL7 table 0007 or the NHS Data Dictionary
/// admission method; both are accepted (contract, "Admission priority").
/// v3 ActPriority: `EL` elective (and `R` routine) are the elective codes;
/// everything else is non-elective. Maternity and "other" admissions are
/// non-elective without being emergencies: they map to `UR` (urgent).
fn admission_priority(code: &str) -> Option<(Option<Value>, Option<Value>)> {
    let v3 = |act: &str, display: &str| json!({"system": ACT_PRIORITY_SYSTEM, "code": act, "display": display});
    let elective = || v3("EL", "elective");
    let emergency = || v3("EM", "emergency");
    let urgent = || v3("UR", "urgent");
    // HL7 table 0007 admission type.
    let table = match code {
        "E" => Some((emergency(), "Emergency")),
        "A" => Some((emergency(), "Accident")),
        "U" => Some((urgent(), "Urgent")),
        "C" => Some((elective(), "Elective")),
        "R" => Some((v3("R", "routine"), "Routine")),
        "L" => Some((urgent(), "Labor and Delivery")),
        "N" => Some((urgent(), "Newborn (Birth in healthcare facility)")),
        _ => None,
    };
    if let Some((act, display)) = table {
        let priority =
            json!({"coding": [act, {"system": V2_0007, "code": code, "display": display}]});
        return Some((Some(priority), None));
    }
    // NHS Data Dictionary ADMISSION METHOD.
    let act = match code {
        "11" | "12" | "13" => elective(),
        "21" | "22" | "23" | "24" | "25" | "28" | "2A" | "2B" | "2C" | "2D" => emergency(),
        "31" | "32" | "81" | "82" | "83" => urgent(),
        "98" | "99" => {
            let method = json!({"coding": [{"system": ADMISSION_METHOD_SYSTEM, "code": code}]});
            return Some((None, Some(method)));
        }
        _ => return None,
    };
    let method = json!({"coding": [{"system": ADMISSION_METHOD_SYSTEM, "code": code}]});
    Some((Some(json!({"coding": [act]})), Some(method)))
}

/// `SEG-n` of every field with content that the mapping of `event` does not
/// read, every segment it does not read at all, a second occurrence of a
/// segment it reads once (`PV1[2]`), the repetitions after the first of
/// the fields it reads one repetition of (`PD1-3[2]`), and the identifiers
/// in PID-2 other than an NHS number.
///
/// For the dry run alone: the feed does not build it.
pub fn unmapped(msg: &Message, event: Event) -> Vec<String> {
    /// Fields of which every repetition is read; of the others, the first
    /// alone.
    const EVERY_REPETITION: &[(&str, usize)] = &[
        ("PID", 2),
        ("PID", 3),
        ("PID", 5),
        ("PID", 11),
        ("PID", 13),
        ("PID", 14),
        ("MRG", 1),
    ];
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for segment in msg.segments() {
        let id = segment.id();
        if id == "MSH" {
            continue;
        }
        let again = seen.contains(&id);
        seen.push(id);
        if again && MAPPED.iter().any(|(s, _)| *s == id) {
            let n = seen.iter().filter(|s| **s == id).count();
            out.push(format!("{id}[{n}] (repeated segment not mapped)"));
            continue;
        }
        let mapped = MAPPED.iter().find(|(s, _)| *s == id).map(|(_, f)| *f);
        let used = match (id, mapped) {
            ("PV1", Some(_)) if !event.has_visit() => None,
            ("MRG", Some(_)) if event != Event::A40 => None,
            (_, m) => m,
        };
        match used {
            None => {
                if segment.field_count() > 0 {
                    out.push(format!("{id} (segment not mapped)"));
                }
            }
            Some(fields) => {
                for n in 1..=segment.field_count() {
                    let Some(field) = segment.field(n) else {
                        continue;
                    };
                    // PV1-37 is the destination when PV1-36 is a method.
                    let read = fields.contains(&n)
                        || ((id, n) == ("PV1", 37)
                            && segment
                                .field(36)
                                .and_then(|f| f.repetition(1))
                                .and_then(|r| component(r, 1))
                                .is_some_and(|m| DISCHARGE_METHODS.contains(&m.as_str())));
                    if !field.raw().trim().is_empty() && !read {
                        out.push(format!("{id}-{n}"));
                    } else if (id, n) == ("PID", 2) {
                        // Read for an NHS number only (the legacy external
                        // id); any other identifier there is not kept,
                        // unless PID-3 has it too.
                        let in_pid_3 = |rep: Rep<'_>| {
                            segment.field(3).is_some_and(|f| {
                                f.repetitions().any(|other| {
                                    component(other, 1) == component(rep, 1)
                                        && component(other, 4) == component(rep, 4)
                                })
                            })
                        };
                        for (i, rep) in field.repetitions().enumerate() {
                            if component(rep, 1).is_some() && !is_nhs_cx(rep) && !in_pid_3(rep) {
                                out.push(format!("PID-2[{}] (not an NHS number)", i + 1));
                            }
                        }
                    } else if !EVERY_REPETITION.contains(&(id, n)) {
                        for (i, rep) in field.repetitions().enumerate().skip(1) {
                            if has_content(rep.raw()) {
                                out.push(format!("{id}-{n}[{}]", i + 1));
                            }
                        }
                    }
                    if read {
                        let reps = if EVERY_REPETITION.contains(&(id, n)) {
                            usize::MAX
                        } else {
                            1
                        };
                        unread_components(id, n, field, reps, &mut out);
                    }
                }
            }
        }
    }
    out
}

/// The components the mapping reads of each field it reads (HL7 numbers);
/// a field not listed is read for its first component alone.
const COMPONENTS: &[(&str, usize, &[usize])] = &[
    // CX: id, assigning authority, identifier type.
    ("PID", 2, &[1, 4, 5]),
    ("PID", 3, &[1, 4, 5]),
    ("MRG", 1, &[1, 4, 5]),
    // XPN: family, given, further given, suffix, prefix, degree, type.
    ("PID", 5, &[1, 2, 3, 4, 5, 6, 7]),
    // XAD: street, other designation, city, county, postcode, country, type.
    ("PID", 11, &[1, 2, 3, 4, 5, 6, 7]),
    // XTN: number, use, equipment, email, country, area, local, extension,
    // unformatted number.
    ("PID", 13, &[1, 2, 3, 4, 5, 6, 7, 8, 12]),
    ("PID", 14, &[1, 2, 3, 4, 5, 6, 7, 8, 12]),
    // XON: name, id (before v2.5), organisation identifier.
    ("PD1", 3, &[1, 3, 10]),
    // XCN: id, family, given, prefix, assigning authority, identifier type.
    ("PD1", 4, &[1, 2, 3, 6, 9, 13]),
    // PL: point of care, room, bed, facility.
    ("PV1", 3, &[1, 2, 3, 4]),
    // CX: visit number, assigning authority, and its type (`VN`), which the
    // identifier's system already says.
    ("PV1", 19, &[1, 4, 5]),
];

/// Reports the components with content of the first `reps` repetitions of
/// `field` (`SEG-n`) that the mapping does not read, and the subcomponents
/// after the first of those it does (`PID-3[2].4.2`, an assigning
/// authority's OID): `PV1-3.5`, `PID-3[2].8`.
fn unread_components(id: &str, n: usize, field: Field<'_>, reps: usize, out: &mut Vec<String>) {
    let read = COMPONENTS
        .iter()
        .find(|(s, f, _)| *s == id && *f == n)
        .map_or(&[1][..], |(_, _, c)| *c);
    let many = field.repetitions().nth(1).is_some();
    for (r, rep) in field.repetitions().enumerate().take(reps) {
        let cx = matches!((id, n), ("PID", 2 | 3) | ("MRG", 1));
        if (id, n) == ("PID", 2) && !is_nhs_cx(rep) {
            // Reported whole, unless PID-3 has it.
            continue;
        }
        let at = if many {
            format!("{id}-{n}[{}]", r + 1)
        } else {
            format!("{id}-{n}")
        };
        for (c, component) in rep.components().enumerate() {
            let c = c + 1;
            if !read.contains(&c) {
                if has_content(component.raw()) {
                    out.push(format!("{at}.{c}"));
                }
                continue;
            }
            // The NHS number's system already says what an authority's
            // OID (`NHS&2.16.840.1.113883.2.1.4.1&ISO`) would.
            if cx && c == 4 && is_nhs_cx(rep) {
                continue;
            }
            for (k, sub) in component.subcomponents().enumerate().skip(1) {
                if has_content(sub) {
                    out.push(format!("{at}.{c}.{}", k + 1));
                }
            }
        }
    }
}

/// Raw text that says something: not blank, not HL7's null `""`.
fn has_content(raw: &str) -> bool {
    let raw = raw.trim();
    !raw.is_empty() && raw != "\"\""
}

/// The identifiers of `ids` whose `(system, value)` is none of `keys`
/// (those without both left out).
pub fn identifiers_not_in(ids: &[Value], keys: &[(String, String)]) -> Vec<Value> {
    ids.iter()
        .filter(|id| {
            identifier_keys(std::slice::from_ref(id))
                .first()
                .is_some_and(|key| !keys.contains(key))
        })
        .cloned()
        .collect()
}

/// `(system, value)` pairs of identifiers.
pub fn identifier_keys(ids: &[Value]) -> Vec<(String, String)> {
    ids.iter()
        .filter_map(|id| {
            Some((
                id["system"].as_str()?.to_string(),
                id["value"].as_str()?.to_string(),
            ))
        })
        .collect()
}
