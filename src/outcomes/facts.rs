//! What the outcome figures are counted from, read out of stored FHIR JSON:
//! each resource becomes a small fact with London dates. Pure functions.

use crate::gp::map::{NHS_NUMBER_SYSTEM, PATHWAY_SYSTEM, REFERRAL_SYSTEM};
use crate::hl7v2::datatypes::london_zone;
use jiff::civil::Date;
use serde_json::Value;

pub const OPT_OUT_URL: &str =
    "https://fhir.onebromley.nhs.uk/StructureDefinition/Extension-OneBromley-NationalDataOptOut";

/// The London calendar date of a FHIR date or dateTime (`2026-03-05`,
/// `2026-03-05T23:30:00+00:00` → 5 March, `2026-06-04T23:30:00Z` → 5 June).
/// Partial dates (`2026`, `2026-03`) have no day: `None`.
pub fn london_date(text: &str) -> Option<Date> {
    if text.len() == 10 {
        return text.parse().ok();
    }
    let instant: jiff::Timestamp = text.parse().ok()?;
    Some(instant.to_zoned(london_zone()?).date())
}

/// What kind of urgent contact an Encounter is, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contact {
    /// Class EMER.
    EdAttendance,
    /// Class IMP with a priority that is not elective (`EL`, `R`).
    NonElectiveAdmission,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncounterFact {
    pub patient: String,
    pub id: String,
    pub contact: Option<Contact>,
    /// The day of the ED attendance an encounter of another class began as
    /// (`classHistory`: an attendance admitted under its visit number),
    /// counted as an ED contact besides the admission.
    pub ed_before: Option<Date>,
    /// Any inpatient stay (elective or not), for discharges.
    pub inpatient: bool,
    pub start: Option<Date>,
    /// `period.end` of a finished encounter.
    pub discharged: Option<Date>,
}

/// Statuses of encounters that did not happen (or not yet).
const NOT_HAPPENED: &[&str] = &["planned", "cancelled", "entered-in-error"];

pub fn encounter(id: &str, resource: &Value) -> Option<EncounterFact> {
    let patient = patient_id(resource)?;
    let status = resource["status"].as_str().unwrap_or("");
    let happened = !NOT_HAPPENED.contains(&status);
    let class = resource["class"]["code"].as_str().unwrap_or("");
    let elective = resource["priority"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| matches!(c["code"].as_str(), Some("EL" | "R")));
    let contact = match class {
        _ if !happened => None,
        "EMER" => Some(Contact::EdAttendance),
        "IMP" if !elective => Some(Contact::NonElectiveAdmission),
        _ => None,
    };
    let ed_before = resource["classHistory"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|_| happened && class != "EMER")
        .find(|h| h["class"]["code"] == "EMER")
        .and_then(|h| h["period"]["start"].as_str())
        .and_then(london_date);
    Some(EncounterFact {
        patient,
        id: id.to_string(),
        contact,
        ed_before,
        inpatient: happened && class == "IMP",
        start: resource["period"]["start"].as_str().and_then(london_date),
        discharged: (status == "finished")
            .then(|| resource["period"]["end"].as_str().and_then(london_date))
            .flatten(),
    })
}

/// A pathway referral or review (a ServiceRequest with a `pathway-referral` code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFact {
    pub patient: String,
    pub code: String,
    pub status: String,
    pub authored: Option<Date>,
    /// When it was done: `occurrenceDateTime`, or `occurrencePeriod.end`
    /// (or its start, when it has no end).
    pub done_on: Option<Date>,
    /// The encounter it was made for (`Encounter/{id}` → id).
    pub encounter: Option<String>,
}

pub fn request(resource: &Value) -> Option<RequestFact> {
    let code = resource["code"]["coding"]
        .as_array()?
        .iter()
        .find(|c| c["system"] == REFERRAL_SYSTEM)?["code"]
        .as_str()?
        .to_string();
    let occurrence = resource["occurrenceDateTime"]
        .as_str()
        .or_else(|| resource["occurrencePeriod"]["end"].as_str())
        .or_else(|| resource["occurrencePeriod"]["start"].as_str());
    Some(RequestFact {
        patient: patient_id(resource)?,
        code,
        status: resource["status"].as_str().unwrap_or("").to_string(),
        authored: resource["authoredOn"].as_str().and_then(london_date),
        done_on: occurrence.and_then(london_date),
        encounter: resource["encounter"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Encounter/"))
            .map(str::to_string),
    })
}

impl RequestFact {
    pub fn completed(&self) -> bool {
        self.status == "completed" && self.done_on.is_some()
    }
}

/// The MDT assessment of a patient: an active proactive-care CarePlan's
/// `period.start`.
pub fn assessment(resource: &Value) -> Option<(String, Date)> {
    if resource["status"] != "active" {
        return None;
    }
    let proactive = resource["category"]
        .as_array()?
        .iter()
        .flat_map(|c| c["coding"].as_array().into_iter().flatten())
        .any(|c| c["system"] == PATHWAY_SYSTEM && c["code"] == "proactive-care");
    if !proactive {
        return None;
    }
    let start = resource["period"]["start"].as_str().and_then(london_date)?;
    Some((patient_id(resource)?, start))
}

/// A Patient's NHS numbers (digits only: `943 476 5919` is `9434765919`)
/// and whether it carries the national data opt-out flag.
pub fn patient(resource: &Value) -> (Vec<String>, bool) {
    let nhs = resource["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["system"] == NHS_NUMBER_SYSTEM)
        .filter_map(|i| i["value"].as_str())
        .map(|v| v.chars().filter(char::is_ascii_digit).collect())
        .collect();
    let opted_out = resource["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["url"] == OPT_OUT_URL && e["valueBoolean"] == true);
    (nhs, opted_out)
}

/// `subject` → `Patient/{id}` (or `Patient/{id}/_history/{v}`) → id, as
/// the search index reads it.
fn patient_id(resource: &Value) -> Option<String> {
    let reference = resource["subject"]["reference"].as_str()?;
    match crate::fhir::search::reference_target(reference) {
        Some(("Patient", id)) => Some(id.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(text: &str) -> Date {
        text.parse().unwrap()
    }

    #[test]
    fn dates_are_london_calendar_days() {
        assert_eq!(london_date("2026-03-05"), Some(d("2026-03-05")));
        assert_eq!(
            london_date("2026-01-10T23:30:00+00:00"),
            Some(d("2026-01-10"))
        );
        // 23:30 UTC in summer is 00:30 the next day in London.
        assert_eq!(london_date("2026-06-04T23:30:00Z"), Some(d("2026-06-05")));
        assert_eq!(london_date("2026-03"), None);
        assert_eq!(london_date("garbage"), None);
    }

    #[test]
    fn patients_nhs_numbers_are_digits_and_the_flag_is_read() {
        let p = json!({"identifier": [
            {"system": NHS_NUMBER_SYSTEM, "value": "943 476 5919"},
            {"system": "https://fhir.onebromley.nhs.uk/Id/local-patient-identifier/RJZ", "value": "K1"},
            {"system": NHS_NUMBER_SYSTEM, "value": "9990000018"}],
            "extension": [{"url": OPT_OUT_URL, "valueBoolean": true}]});
        assert_eq!(
            patient(&p),
            (
                vec!["9434765919".to_string(), "9990000018".to_string()],
                true
            )
        );
        assert_eq!(patient(&json!({})), (vec![], false));
    }

    #[test]
    fn encounters_are_ed_contacts_or_non_elective_admissions_if_they_happened() {
        let e = |class: &str, priority: Option<&str>, status: &str| {
            let mut r = json!({"status": status, "class": {"code": class},
                "subject": {"reference": "Patient/p1"}, "period": {"start": "2026-02-01T10:00:00+00:00"}});
            if let Some(p) = priority {
                r["priority"] = json!({"coding": [{"code": p}]});
            }
            encounter("e1", &r).unwrap().contact
        };
        assert_eq!(e("EMER", None, "finished"), Some(Contact::EdAttendance));
        assert_eq!(
            e("IMP", Some("EM"), "in-progress"),
            Some(Contact::NonElectiveAdmission)
        );
        assert_eq!(
            e("IMP", None, "finished"),
            Some(Contact::NonElectiveAdmission)
        );
        assert_eq!(e("IMP", Some("EL"), "finished"), None);
        assert_eq!(e("IMP", Some("R"), "finished"), None);
        assert_eq!(e("AMB", None, "finished"), None);
        assert_eq!(e("EMER", None, "entered-in-error"), None);
        assert_eq!(e("IMP", Some("EM"), "cancelled"), None);
        assert_eq!(e("IMP", Some("EM"), "planned"), None);
    }

    /// An ED attendance admitted under its visit number (`classHistory`
    /// `EMER`, then `IMP`) is an ED contact, on its own day, besides the
    /// admission; not if the encounter did not happen, and not twice for an
    /// encounter that is still an attendance.
    #[test]
    fn an_attendance_admitted_under_its_visit_number_is_an_ed_contact_too() {
        let e = |class: &str, status: &str| {
            let r = json!({"status": status, "class": {"code": class},
                "classHistory": [
                    {"class": {"code": "EMER"}, "period": {"start": "2026-02-01T23:40:00+00:00", "end": "2026-02-02T01:05:00+00:00"}},
                    {"class": {"code": class}, "period": {"start": "2026-02-02T01:05:00+00:00"}}],
                "subject": {"reference": "Patient/p1"}, "period": {"start": "2026-02-02T01:00:00+00:00"}});
            encounter("e1", &r).unwrap()
        };
        let admitted = e("IMP", "finished");
        assert_eq!(admitted.contact, Some(Contact::NonElectiveAdmission));
        assert_eq!(admitted.ed_before, Some("2026-02-01".parse().unwrap()));
        assert_eq!(admitted.start, Some("2026-02-02".parse().unwrap()));
        assert_eq!(e("IMP", "cancelled").ed_before, None);
        let still = e("EMER", "finished");
        assert_eq!(
            (still.contact, still.ed_before),
            (Some(Contact::EdAttendance), None)
        );
    }
}
