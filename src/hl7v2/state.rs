//! How an ADT event changes the stored Patient and Encounter. Pure
//! functions of the stored JSON and the [`Adt`]: the store is read and
//! written by [`super::ingest`].
//!
//! Out-of-order delivery converges because every change is ordered by the
//! event's own time (EVN-2, else MSH-7), never by arrival:
//! - `Encounter.statusHistory` holds one entry per status-changing event at
//!   its event time; `status` is the latest entry's. A late A01 adds its
//!   `in-progress` entry *before* the A03's `finished` and changes nothing
//!   else; an A11 or A13 is simply a later entry.
//! - `Encounter.location` entries are ordered by their start the same way
//!   (A02 adds one, A12 removes the latest one before it unless the
//!   patient is already back where the A12 says). An A13 restores the
//!   status from before the discharge it cancels.
//! - Other members are replaced only by an event at least as recent as the
//!   last one applied to the record (its event clock, kept by the store
//!   beside the resource, not in it); an older event only fills members
//!   that are absent.
//!
//! Members an event does not change keep their stored bytes ([`rewrite`]).

use super::adt::{Adt, Event, LOCATION_REPORTED_URL, ODS_SYSTEM, PatientFacts, Visit, is_ods};
use crate::fhir::json::{Written, WrittenObject, same_value, written_members};
use serde_json::{Map, Value, json};

/// The Patient after `adt`, from the stored one (or a new one) whose last
/// applied event was at `clock` (ms since the epoch).
pub fn patient_after(current: Option<&Value>, clock: Option<i64>, adt: &Adt) -> Value {
    patient_from(
        current,
        clock,
        PatientFacts::clone(&adt.patient),
        adt.time_ms,
    )
}

/// [`patient_after`] with the message's facts moved into the record rather
/// than copied: an event at `time_ms` that `facts` describes.
pub fn patient_from(
    current: Option<&Value>,
    clock: Option<i64>,
    facts: PatientFacts,
    time_ms: i64,
) -> Value {
    let newer = is_newer(clock, time_ms);
    // What a newer event replaces below is not copied first.
    let replaced = |key: &str| {
        newer
            && match key {
                "name" => !facts.name.is_empty(),
                "telecom" => !facts.telecom.is_empty(),
                "gender" => facts.gender.is_some(),
                "birthDate" => facts.birth_date.is_some(),
                "address" => !facts.address.is_empty(),
                "generalPractitioner" => !facts.general_practitioner.is_empty(),
                _ => false,
            }
    };
    let mut p = match current {
        Some(Value::Object(o)) => copy_except(o, replaced),
        _ => {
            let mut o = Map::new();
            o.insert("resourceType".into(), json!("Patient"));
            o
        }
    };

    // Identifiers: every one the message brings is added; none removed.
    let mut ids = take_array(&mut p, "identifier");
    let traced = facts.nhs_number.is_some();
    for id in facts.identifiers {
        let same = |other: &Value| other["system"] == id["system"] && other["value"] == id["value"];
        match ids.iter_mut().find(|other| same(other)) {
            // The NHS number's verification status follows the latest event
            // that sends one (an empty PID-32 is "not sent", not "removed").
            // What the message does not carry stays, as HL7 v2 reads an
            // empty component: members and extensions another source added
            // (a `period` set through REST), or a hospital number's `type`
            // from an earlier message whose PID-3.5 was filled.
            Some(existing) if newer && *existing != id => overlay_identifier(existing, &id),
            Some(_) => {}
            None => {
                if traced && id["system"] == super::adt::NHS_NUMBER_SYSTEM {
                    ids.insert(0, id);
                } else {
                    ids.push(id);
                }
            }
        }
    }
    set(&mut p, "identifier", Some(Value::Array(ids)), true);
    set_list(&mut p, "name", facts.name, newer);
    set_list(&mut p, "telecom", facts.telecom, newer);
    set(&mut p, "gender", facts.gender.map(|g| json!(g)), newer);
    set(
        &mut p,
        "birthDate",
        facts.birth_date.map(Value::String),
        newer,
    );
    if let Some((key, value)) = facts.deceased {
        let has = p.contains_key("deceasedDateTime") || p.contains_key("deceasedBoolean");
        if newer || !has {
            p.remove("deceasedDateTime");
            p.remove("deceasedBoolean");
            p.insert(key.into(), value);
        }
    }
    set_list(&mut p, "address", facts.address, newer);
    set_list(
        &mut p,
        "generalPractitioner",
        facts.general_practitioner,
        newer,
    );
    // Deleted by the sender (`""`), unless a later event has set them since.
    if newer {
        for member in &facts.cleared {
            match *member {
                "deceased" => {
                    p.remove("deceasedDateTime");
                    p.remove("deceasedBoolean");
                }
                other => {
                    p.remove(other);
                }
            }
        }
    }
    Value::Object(order(p, PATIENT_ORDER))
}

/// Whether [`patient_from`] would leave `current` as it is, found without
/// building the record: `true` only when it certainly would. Most messages
/// about a patient repeat what is stored (an A08, A01 or A03 carries the
/// whole PID), and building the record only to find it unchanged copied
/// most of it. Unsure cases answer `false` and take the full path: members
/// out of FHIR order, an identifier not stored as a list.
pub fn patient_unchanged(
    current: &Value,
    clock: Option<i64>,
    facts: &PatientFacts,
    time_ms: i64,
) -> bool {
    let Some(p) = current.as_object() else {
        return false;
    };
    let newer = is_newer(clock, time_ms);
    // `patient_from` puts the members in FHIR order.
    if !in_order(p, PATIENT_ORDER) {
        return false;
    }
    let has_death = p.contains_key("deceasedDateTime") || p.contains_key("deceasedBoolean");
    if let Some((key, value)) = &facts.deceased {
        let other = if *key == "deceasedBoolean" {
            "deceasedDateTime"
        } else {
            "deceasedBoolean"
        };
        // Set again: removed and put back, which keeps the order only of
        // members FHIR orders (unknown ones keep theirs among themselves).
        let same = p.get(*key).is_some_and(|v| same_value(v, value))
            && !p.contains_key(other)
            && p.keys()
                .all(|k| rank(PATIENT_ORDER, k) < PATIENT_ORDER.len());
        if (newer || !has_death) && !same {
            return false;
        }
    }
    let Some(Value::Array(ids)) = p.get("identifier") else {
        return false;
    };
    for id in &facts.identifiers {
        let same =
            |other: &&Value| other["system"] == id["system"] && other["value"] == id["value"];
        match ids.iter().find(same) {
            None => return false,
            Some(existing) if newer && existing != id => {
                let mut overlaid = existing.clone();
                overlay_identifier(&mut overlaid, id);
                if !same_value(&overlaid, existing) {
                    return false;
                }
            }
            Some(_) => {}
        }
    }
    // A member the event sets: unchanged when stored and either equal or
    // kept (an older event only fills gaps).
    let kept = |key: &str, same: &dyn Fn(&Value) -> bool| match p.get(key) {
        None => false,
        Some(stored) => !newer || same(stored),
    };
    for (key, list) in [
        ("name", &facts.name),
        ("telecom", &facts.telecom),
        ("address", &facts.address),
        ("generalPractitioner", &facts.general_practitioner),
    ] {
        let same = |stored: &Value| {
            stored.as_array().is_some_and(|s| {
                s.len() == list.len() && s.iter().zip(list).all(|(a, b)| same_value(a, b))
            })
        };
        if !list.is_empty() && !kept(key, &same) {
            return false;
        }
    }
    if let Some(gender) = facts.gender
        && !kept("gender", &|stored| stored.as_str() == Some(gender))
    {
        return false;
    }
    if let Some(date) = &facts.birth_date
        && !kept("birthDate", &|stored| stored.as_str() == Some(date))
    {
        return false;
    }
    // Deleted by the sender: unchanged only if already absent.
    !newer
        || facts.cleared.iter().all(|member| match *member {
            "deceased" => !has_death,
            other => !p.contains_key(other),
        })
}

/// `sent`'s members written over `stored`'s, in `sent`'s order (as a new
/// identifier would have them), then the members only `stored` has. An
/// extension replaces every stored one with its `url`; the others stay
/// where they were. Left untouched when that changes nothing, so a stored
/// identifier keeps its own member order.
fn overlay_identifier(stored: &mut Value, sent: &Value) {
    let (Some(old), Some(members)) = (stored.as_object(), sent.as_object()) else {
        *stored = sent.clone();
        return;
    };
    let mut merged = Map::new();
    for (key, value) in members {
        let value = match (key.as_str(), old.get(key), value) {
            ("extension", Some(Value::Array(kept)), Value::Array(new)) => {
                let mut list = kept.clone();
                for extension in new {
                    let url = &extension["url"];
                    match list.iter().position(|k| k["url"] == *url) {
                        Some(first) => {
                            list[first] = extension.clone();
                            let rest = list.split_off(first + 1);
                            list.extend(rest.into_iter().filter(|k| k["url"] != *url));
                        }
                        None => list.push(extension.clone()),
                    }
                }
                Value::Array(list)
            }
            _ => value.clone(),
        };
        merged.insert(key.clone(), value);
    }
    for (key, value) in old {
        if !merged.contains_key(key) {
            merged.insert(key.clone(), value.clone());
        }
    }
    let merged = Value::Object(merged);
    if !same_value(&merged, stored) {
        *stored = merged;
    }
}

/// The record merged away (A40, or an untraced record once its NHS number
/// is known): inactive, and pointing at the one that replaces it.
pub fn retired(old: &Value, survivor: &str) -> Value {
    let mut p = old.as_object().cloned().unwrap_or_default();
    p.insert("active".into(), json!(false));
    add_link(&mut p, survivor, "replaced-by");
    Value::Object(order(p, PATIENT_ORDER))
}

/// The surviving record of a merge, pointing at the one it replaces.
pub fn survivor(current: &Value, old: &str) -> Value {
    let mut p = current.as_object().cloned().unwrap_or_default();
    add_link(&mut p, old, "replaces");
    Value::Object(order(p, PATIENT_ORDER))
}

/// The survivor of a merge whose merged-away record is not stored (yet):
/// it takes that record's local identifiers (not an NHS number: a patient
/// has one) as `old` ones, unless it has them already.
pub fn with_old_identifiers(current: &Value, prior: &[Value]) -> Value {
    let mut p = current.as_object().cloned().unwrap_or_default();
    let mut ids = take_array(&mut p, "identifier");
    for id in prior {
        let held = ids
            .iter()
            .any(|other| other["system"] == id["system"] && other["value"] == id["value"]);
        if held || id["system"] == super::adt::NHS_NUMBER_SYSTEM {
            continue;
        }
        let mut old = Map::new();
        old.insert("use".into(), json!("old"));
        for (key, value) in id.as_object().into_iter().flatten() {
            if key != "use" {
                old.insert(key.clone(), value.clone());
            }
        }
        ids.push(Value::Object(old));
    }
    p.insert("identifier".into(), Value::Array(ids));
    Value::Object(order(p, PATIENT_ORDER))
}

fn add_link(p: &mut Map<String, Value>, other: &str, kind: &str) {
    let mut links = p
        .get("link")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let link = json!({"other": {"reference": other}, "type": kind});
    if !links.contains(&link) {
        links.push(link);
    }
    p.insert("link".into(), Value::Array(links));
}

/// The `Patient/{id}` a retired record was replaced by, if it was.
pub fn replaced_by(patient: &Value) -> Option<String> {
    patient["link"].as_array()?.iter().find_map(|link| {
        (link["type"] == "replaced-by")
            .then(|| link["other"]["reference"].as_str().map(str::to_string))
            .flatten()
    })
}

/// A resource (an Encounter, CarePlan or ServiceRequest) moved to another
/// patient by a merge (A40): its `subject` names the survivor.
pub fn moved(resource: &Value, subject: &str) -> Value {
    let mut moved = resource.as_object().cloned().unwrap_or_default();
    moved.insert("subject".into(), json!({"reference": subject}));
    Value::Object(moved)
}

/// The Encounter after `adt` (which has a `visit`), from the stored one or
/// a new one, last changed by an event at `clock`; `subject` is the
/// patient's reference.
pub fn encounter_after(
    current: Option<&Value>,
    clock: Option<i64>,
    adt: &Adt,
    visit: &Visit,
    subject: &str,
) -> Value {
    encounter_from(current, clock, adt, visit.clone(), subject)
}

/// [`encounter_after`] with the visit's facts moved into the record rather
/// than copied (`adt.visit` is not read).
pub fn encounter_from(
    current: Option<&Value>,
    clock: Option<i64>,
    adt: &Adt,
    visit: Visit,
    subject: &str,
) -> Value {
    let newer = is_newer(clock, adt.time_ms);
    // What is replaced below is not copied first.
    let replaced = |key: &str| match key {
        "subject" => true,
        "class" => newer,
        "priority" => newer && visit.priority.is_some(),
        _ => false,
    };
    let mut e = match current {
        Some(Value::Object(o)) => copy_except(o, replaced),
        _ => {
            let mut o = Map::new();
            o.insert("resourceType".into(), json!("Encounter"));
            o
        }
    };

    let mut ids = take_array(&mut e, "identifier");
    if !ids.contains(&visit.identifier) {
        ids.push(visit.identifier);
    }
    e.insert("identifier".into(), Value::Array(ids));
    e.insert("subject".into(), json!({"reference": subject}));
    set(&mut e, "class", Some(visit.class), newer);
    set(&mut e, "priority", visit.priority, newer);

    // Status: the latest status event wins.
    let mut latest = false;
    if let Some(status) = adt.event.status() {
        let mut history = take_array(&mut e, "statusHistory");
        let entry = json!({"status": status, "period": {"start": adt.time}});
        // A resent A13 finds its entry whatever status the entry took from
        // before the discharge (see `resume_after_discharges`).
        let exists = history.iter().any(|h| {
            h["period"]["start"] == adt.time.as_str()
                && (h["status"] == status
                    || (adt.event == Event::A13 && is_open(h["status"].as_str())))
        });
        if !exists {
            history.push(entry);
        }
        // In time order; at one time (EVN-2 is often to the minute) a
        // cancellation after what it cancels, whichever arrived first.
        history.sort_by_key(|h| (start_ms(&h["period"]), h["status"] == "cancelled"));
        resume_after_discharges(&mut history);
        chain(&mut history);
        latest = history
            .last()
            .is_some_and(|h| h["status"] == status && h["period"]["start"] == adt.time.as_str());
        let current = history
            .last()
            .and_then(|h| h["status"].as_str())
            .unwrap_or("unknown")
            .to_string();
        e.insert("status".into(), json!(current));
        e.insert("statusHistory".into(), Value::Array(history));
    } else if !e.contains_key("status") {
        e.insert("status".into(), json!("unknown"));
    }
    let status = e["status"].as_str().unwrap_or("unknown").to_string();

    // Period: start from PV1-44; end only while finished.
    let mut period = take_object(&mut e, "period");
    if let Some(start) = &visit.start
        && (newer || !period.contains_key("start"))
    {
        period.insert("start".into(), json!(start));
    }
    let ends = (adt.event == Event::A03 && latest) || (newer && status == "finished");
    if status != "finished" {
        period.remove("end");
    } else if ends {
        let end = visit
            .end
            .or_else(|| (adt.event == Event::A03).then(|| adt.time.clone()));
        if let Some(end) = end {
            period.insert("end".into(), json!(end));
        }
    }
    let period = order(period, &["start", "end"]);
    if period.is_empty() {
        e.remove("period");
    } else {
        e.insert("period".into(), Value::Object(period));
    }

    // Hospitalization: admission method and source, discharge destination.
    let mut stay = take_object(&mut e, "hospitalization");
    if let Some(method) = visit.admission_method {
        let ext =
            json!([{"url": super::adt::ADMISSION_METHOD_URL, "valueCodeableConcept": method}]);
        set(&mut stay, "extension", Some(ext), newer);
    }
    set(&mut stay, "admitSource", visit.admit_source, newer);
    if status != "finished" {
        stay.remove("dischargeDisposition");
    } else if ends {
        set(
            &mut stay,
            "dischargeDisposition",
            visit.discharge_disposition,
            true,
        );
    }
    let stay = order(stay, &["extension", "admitSource", "dischargeDisposition"]);
    if stay.is_empty() {
        e.remove("hospitalization");
    } else {
        e.insert("hospitalization".into(), Value::Object(stay));
    }

    locations(&mut e, adt, visit.location, visit.start.as_deref(), &status);

    if !e.contains_key("serviceProvider") {
        let provider = if is_ods(&adt.sender) {
            json!({"identifier": {"system": ODS_SYSTEM, "value": adt.sender}})
        } else {
            json!({"display": adt.sender})
        };
        e.insert("serviceProvider".into(), provider);
    }
    Value::Object(order(e, ENCOUNTER_ORDER))
}

/// A status entry right after a discharge can only be its cancellation
/// (A13: an admission or a transfer after a discharge would be a new visit
/// number), so it takes the status from before the discharge. Applied on
/// every status event, so that an A13 that arrived before its A03 (or
/// before the A04 it returns to) ends where the in-order stream ends.
fn resume_after_discharges(history: &mut [Value]) {
    for i in 1..history.len() {
        if history[i - 1]["status"] != "finished" || !is_open(history[i]["status"].as_str()) {
            continue;
        }
        let before = history[..i - 1]
            .iter()
            .rev()
            .filter_map(|h| h["status"].as_str())
            .find(|s| is_open(Some(s)))
            .map(str::to_string);
        if let (Some(before), Some(entry)) = (before, history[i].as_object_mut()) {
            entry.insert("status".into(), json!(before));
        }
    }
}

/// A status an ADT event sets on an Encounter that is not over.
fn is_open(status: Option<&str>) -> bool {
    matches!(status, Some("planned" | "arrived" | "in-progress"))
}

/// A02 adds a location at its event time; A01 and A04 add the admitting
/// one from the visit's `start` (PV1-44), also when a transfer arrived
/// first; A12 removes the latest one before it, unless that is already
/// where the cancel says the patient is (PV1-3): a resent A12 does not undo
/// a second transfer.
///
/// Any other event with a PV1-3 (an update, a discharge, a pre-admission's
/// planned place) says where the patient is without saying since when. It
/// is kept, without a period, only while no admission or transfer is known:
/// the place of the latest such event, whose time it keeps in an extension
/// ([`LOCATION_REPORTED_URL`]; at one time, the last place in text order);
/// the first admission or transfer replaces it. Dated from the visit's
/// start, it took the place an admission arriving later should have had;
/// dated at its own time, it was a move nobody made when the admission or
/// transfer it repeated arrived after it (an A08 naming the ward a late A02
/// moved the patient to). (Weighed by the record's event clock instead, an
/// event without a PV1-3 arriving first made a later report look older.)
fn locations(
    e: &mut Map<String, Value>,
    adt: &Adt,
    place: Option<Value>,
    start: Option<&str>,
    status: &str,
) {
    // Left as it was (`[]`, or not a list) when it stays empty.
    let mut list = take_array(e, "location");
    let dated = |l: &Value| l.get("period").is_some();
    match (adt.event, place) {
        (Event::A02, Some(place)) => {
            list.retain(dated);
            let exists = list
                .iter()
                .any(|l| l["location"] == place && l["period"]["start"] == adt.time.as_str());
            if !exists {
                list.push(json!({"location": place, "period": {"start": adt.time}}));
            }
        }
        (Event::A12, back_to) => {
            if list.len() > 1
                && let Some(i) = list
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| start_ms(&l["period"]) <= adt.time_ms)
                    .max_by_key(|(_, l)| start_ms(&l["period"]))
                    .map(|(i, _)| i)
                && back_to.as_ref() != Some(&list[i]["location"])
            {
                list.remove(i);
            }
        }
        (Event::A01 | Event::A04, Some(place)) => {
            list.retain(dated);
            let start = start.unwrap_or(&adt.time);
            let at = time_ms(Some(start));
            if !list.iter().any(|l| start_ms(&l["period"]) <= at) {
                list.push(json!({"location": place, "period": {"start": start}}));
            }
        }
        (_, Some(place)) if !list.iter().any(dated) => {
            let report = (adt.time_ms, place.to_string());
            let later = list
                .iter()
                .map(|l| (reported_ms(l), l["location"].to_string()))
                .all(|known| report > known);
            if later {
                list = vec![json!({
                    "extension": [{"url": LOCATION_REPORTED_URL, "valueDateTime": adt.time}],
                    "location": place,
                })];
            }
        }
        _ => {}
    }
    if list.is_empty() {
        return;
    }
    // At one time (two transfers in the same minute), in the order of
    // their places, whichever arrived first.
    list.sort_by(|a, b| {
        start_ms(&a["period"])
            .cmp(&start_ms(&b["period"]))
            .then_with(|| a["location"].to_string().cmp(&b["location"].to_string()))
    });
    for l in list.iter_mut() {
        if let Some(o) = l.as_object_mut() {
            o.remove("status");
            if let Some(p) = o.get_mut("period").and_then(Value::as_object_mut) {
                p.remove("end");
            }
        }
    }
    chain(&mut list);
    let n = list.len();
    for (i, l) in list.iter_mut().enumerate() {
        let last = i + 1 == n;
        let state = match status {
            _ if !last => "completed",
            "finished" | "cancelled" => "completed",
            "planned" => "planned",
            _ => "active",
        };
        if let Some(o) = l.as_object_mut() {
            let place = o.remove("location").unwrap_or(Value::Null);
            let period = o.remove("period");
            o.insert("location".into(), place);
            o.insert("status".into(), json!(state));
            if let Some(period) = period {
                o.insert("period".into(), period);
            }
        }
    }
    e.insert("location".into(), Value::Array(list));
}

/// When an undated location was reported ([`LOCATION_REPORTED_URL`]); the
/// earliest time when it does not say.
fn reported_ms(location: &Value) -> i64 {
    location["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["url"] == LOCATION_REPORTED_URL)
        .map_or(i64::MIN, |x| time_ms(x["valueDateTime"].as_str()))
}

/// Each entry's period ends where the next one starts.
fn chain(entries: &mut [Value]) {
    let starts: Vec<Value> = entries
        .iter()
        .map(|h| h["period"]["start"].clone())
        .collect();
    for (i, entry) in entries.iter_mut().enumerate() {
        let Some(period) = entry.get_mut("period").and_then(Value::as_object_mut) else {
            continue;
        };
        match starts.get(i + 1) {
            Some(next) if !next.is_null() => {
                period.insert("end".into(), next.clone());
            }
            _ => {
                period.remove("end");
            }
        }
    }
}

/// When a period starts, at any precision (an event time sent as a date
/// alone is the start of that day), for ordering.
fn start_ms(period: &Value) -> i64 {
    time_ms(period["start"].as_str())
}

/// When a FHIR date or dateTime starts, at any precision; the earliest time
/// when there is none.
fn time_ms(text: Option<&str>) -> i64 {
    text.and_then(crate::fhir::datetime::parse_range)
        .map_or(i64::MIN, |range| range.start)
}

/// The array at `key`, moved out rather than copied: `key` keeps its place
/// in `o` (holding `[]`) for the caller to put the new list back in. Empty
/// when there is none.
fn take_array(o: &mut Map<String, Value>, key: &str) -> Vec<Value> {
    match o.get_mut(key) {
        Some(Value::Array(list)) => std::mem::take(list),
        _ => Vec::new(),
    }
}

/// The object at `key`, moved out as [`take_array`] moves an array. Empty
/// when there is none (or `key` holds something else, left there).
fn take_object(o: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match o.get_mut(key) {
        Some(Value::Object(members)) => std::mem::take(members),
        _ => Map::new(),
    }
}

/// A copy of `o` in which the members `replaced` names hold `null`, in
/// their places: the caller sets each of them, so copying their values
/// (a record's names and addresses, a few hundred small allocations a
/// message) would be wasted.
fn copy_except(o: &Map<String, Value>, replaced: impl Fn(&str) -> bool) -> Map<String, Value> {
    o.iter()
        .map(|(key, value)| {
            let value = if replaced(key) {
                Value::Null
            } else {
                value.clone()
            };
            (key.clone(), value)
        })
        .collect()
}

/// Is an event at `time_ms` at least as recent as the last one applied?
fn is_newer(clock: Option<i64>, time_ms: i64) -> bool {
    clock.is_none_or(|last| time_ms >= last)
}

/// Sets `key` to `value` when the event is newer or the member is absent.
fn set(o: &mut Map<String, Value>, key: &str, value: Option<Value>, newer: bool) {
    if let Some(value) = value
        && (newer || !o.contains_key(key))
    {
        o.insert(key.into(), value);
    }
}

fn set_list(o: &mut Map<String, Value>, key: &str, values: Vec<Value>, newer: bool) {
    if !values.is_empty() {
        set(o, key, Some(Value::Array(values)), newer);
    }
}

const PATIENT_ORDER: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "implicitRules",
    "language",
    "text",
    "contained",
    "extension",
    "modifierExtension",
    "identifier",
    "active",
    "name",
    "telecom",
    "gender",
    "birthDate",
    "deceasedBoolean",
    "deceasedDateTime",
    "address",
    "maritalStatus",
    "multipleBirthBoolean",
    "multipleBirthInteger",
    "photo",
    "contact",
    "communication",
    "generalPractitioner",
    "managingOrganization",
    "link",
];

const ENCOUNTER_ORDER: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "implicitRules",
    "language",
    "text",
    "contained",
    "extension",
    "modifierExtension",
    "identifier",
    "status",
    "statusHistory",
    "class",
    "classHistory",
    "type",
    "serviceType",
    "priority",
    "subject",
    "episodeOfCare",
    "basedOn",
    "participant",
    "appointment",
    "period",
    "length",
    "reasonCode",
    "reasonReference",
    "diagnosis",
    "account",
    "hospitalization",
    "location",
    "serviceProvider",
    "partOf",
];

/// A member's place in FHIR element order (unknown members after all).
fn rank(keys: &[&str], key: &str) -> usize {
    keys.iter().position(|k| *k == key).unwrap_or(keys.len())
}

/// Are `o`'s members in FHIR element order already?
fn in_order(o: &Map<String, Value>, keys: &[&str]) -> bool {
    o.keys().map(|key| rank(keys, key)).is_sorted()
}

/// The members in FHIR element order (unknown members last, as they were).
fn order(o: Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    // Mostly in order already (a stored record, changed in place): kept
    // as it is, without hashing every key into a new map.
    if in_order(&o, keys) {
        return o;
    }
    let ranks: Vec<usize> = o.keys().map(|key| rank(keys, key)).collect();
    let mut entries: Vec<(usize, (String, Value))> = ranks.into_iter().zip(o).collect();
    // Stable: members not named keep their own order, after the others.
    entries.sort_by_key(|(rank, _)| *rank);
    entries.into_iter().map(|(_, member)| member).collect()
}

/// `new` as JSON text in which every member equal (as a value) to the
/// stored one keeps the stored bytes, so a decimal's `1.50` or a time's
/// offset survive an update that does not touch them. `None` when nothing
/// changed. `old` is `stored` parsed (the caller has it already).
pub fn rewrite(stored: &str, old: &Value, new: &Value) -> Option<Written> {
    let members = written_members(stored).ok()?;
    let (old, new) = (old.as_object()?, new.as_object()?);
    // For each new member, its stored bytes when equal to the stored value.
    let kept: Vec<Option<&str>> = new
        .iter()
        .map(|(key, value)| {
            let m = members.iter().find(|m| m.key == key.as_str())?;
            old.get(key)
                .is_some_and(|o| same_value(o, value))
                .then_some(m.value)
        })
        .collect();
    let changed = members.len() != new.len() || kept.iter().any(Option::is_none);
    // Same members, same values, same order: nothing to write (decided
    // before writing, as an A08 repeating what is stored often is).
    if !changed && members.iter().map(|m| &m.key).eq(new.keys()) {
        return None;
    }
    let mut out = WrittenObject::with_capacity(stored.len() + 256);
    for ((key, value), kept) in new.iter().zip(kept) {
        match kept {
            Some(raw) => out.push_raw(key, raw),
            None => out.push_value(key, value),
        }
    }
    Some(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::json::text_of;
    use crate::hl7v2::Message;
    use crate::hl7v2::adt::{AdtContext, read};

    fn a08(when: &str, family: &str, phone: &str) -> Adt {
        let text = format!(
            "MSH|^~\\&|PAS|RJZ|GW|OB|{when}||ADT^A08|{when}|P|2.4\rEVN|A08|{when}\rPID|1||9990000018^^^NHS^NH||{family}^Ann||19380305|F|||||{phone}\rPV1|1|I|||||||||||||||||V1^^^RJZ\r"
        );
        read(&Message::parse(&text).unwrap(), &AdtContext::default()).unwrap()
    }

    #[test]
    fn an_older_event_only_fills_gaps_whatever_the_arrival_order() {
        let newer = a08("202607150900", "SMITH", "");
        let older = a08("202607140900", "PAGE", "01689 123456");
        // Newer first, then the older one arrives late.
        let p = patient_after(None, None, &newer);
        let p = patient_after(Some(&p), Some(newer.time_ms), &older);
        assert_eq!(p["name"][0]["family"], "SMITH");
        assert_eq!(p["telecom"][0]["value"], "01689 123456");
        // In order: the same result.
        let q = patient_after(None, None, &older);
        let q = patient_after(Some(&q), Some(older.time_ms), &newer);
        assert_eq!(q["name"], p["name"]);
        assert_eq!(q["telecom"], p["telecom"]);
    }

    #[test]
    fn members_an_event_replaces_keep_their_places_and_are_never_left_null() {
        let first = a08("202607140900", "PAGE", "01689 123456");
        let later = a08("202607150900", "SMITH", "01689 654321");
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        let no_nulls = |v: &Value| v.as_object().unwrap().values().all(|m| !m.is_null());

        let p = patient_after(None, None, &first);
        let newer = patient_after(Some(&p), Some(first.time_ms), &later);
        assert_eq!(keys(&newer), keys(&p));
        assert!(no_nulls(&newer), "{newer}");
        assert_eq!(newer["name"][0]["family"], "SMITH");
        assert_eq!(newer["telecom"][0]["value"], "01689 654321");
        let older = patient_after(Some(&newer), Some(later.time_ms), &first);
        assert_eq!(older, newer);

        let visit = first.visit.as_ref().unwrap();
        let e = encounter_after(None, None, &first, visit, "Patient/a");
        let newer = encounter_after(Some(&e), Some(first.time_ms), &later, visit, "Patient/b");
        assert_eq!(keys(&newer), keys(&e));
        assert!(no_nulls(&newer), "{newer}");
        assert_eq!(newer["subject"]["reference"], "Patient/b");
        assert_eq!(newer["class"], e["class"]);
        let older = encounter_after(
            Some(&newer),
            Some(later.time_ms),
            &first,
            visit,
            "Patient/b",
        );
        assert_eq!(older, newer);
    }

    /// A segment with its fields at their HL7 numbers (no trailing `\r`).
    fn segment(id: &str, fields: &[(usize, &str)]) -> String {
        let last = fields.iter().map(|(n, _)| *n).max().unwrap_or(0);
        let mut out = vec![""; last + 1];
        out[0] = id;
        for (n, value) in fields {
            out[*n] = value;
        }
        out.join("|")
    }

    fn event(event: &str, when: &str, pid32: &str, pv1: &str) -> Adt {
        let pid = segment(
            "PID",
            &[
                (1, "1"),
                (3, "9990000018^^^NHS^NH"),
                (5, "PAGE^Ann"),
                (7, "19380305"),
                (8, "F"),
                (32, pid32),
            ],
        );
        let text = format!(
            "MSH|^~\\&|PAS|RJZ|GW|OB|202608010700||ADT^{event}|{event}{when}|P|2.4\rEVN|{event}|{when}\r{pid}\rPV1|1|{pv1}\r"
        );
        read(&Message::parse(&text).unwrap(), &AdtContext::default()).unwrap()
    }

    /// The Encounter after `events`, applied in the order given.
    fn encounter_of(events: &[&Adt]) -> Value {
        let mut e: Option<Value> = None;
        let mut clock = None;
        for adt in events {
            let visit = adt.visit.as_ref().unwrap();
            e = Some(encounter_after(e.as_ref(), clock, adt, visit, "Patient/p"));
            clock = Some(clock.map_or(adt.time_ms, |c: i64| c.max(adt.time_ms)));
        }
        e.unwrap()
    }

    const VISIT: &str = "I|WARD 5^^^RJZ30|21|||||||||||||||V9^^^RJZ^VN";

    #[test]
    fn a_cancel_sent_in_the_same_minute_as_what_it_cancels_wins_in_either_order() {
        let admit = event("A01", "202607141018", "", VISIT);
        let cancel = event("A11", "202607141018", "", VISIT);
        for order in [[&admit, &cancel], [&cancel, &admit]] {
            assert_eq!(encounter_of(&order)["status"], "cancelled");
        }
    }

    #[test]
    fn an_event_sent_with_a_date_alone_is_ordered_by_that_day() {
        let admit = event("A01", "202608010702", "", VISIT);
        let discharge = event("A03", "20260805", "", VISIT);
        for order in [[&admit, &discharge], [&discharge, &admit]] {
            let e = encounter_of(&order);
            assert_eq!(e["status"], "finished", "{e}");
        }
    }

    #[test]
    fn a_transfer_arriving_before_its_admission_keeps_the_admitting_location() {
        let pv1 = |place: &str| {
            let pv1 = segment(
                "PV1",
                &[
                    (2, "I"),
                    (3, place),
                    (19, "V7^^^RJZ^VN"),
                    (44, "202607141015"),
                ],
            );
            // `event` puts PV1-1 itself: from PV1-2 on.
            pv1["PV1||".len()..].to_string()
        };
        let admit = event("A01", "202607141018", "", &pv1("AMU^^^RJZ30"));
        let transfer = event("A02", "202607141400", "", &pv1("WARD 9^^^RJZ30"));
        let in_order = encounter_of(&[&admit, &transfer]);
        let late_admission = encounter_of(&[&transfer, &admit]);
        assert_eq!(in_order["location"], late_admission["location"]);
        let places: Vec<&Value> = late_admission["location"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["status"])
            .collect();
        assert_eq!(places, [&json!("completed"), &json!("active")]);
    }

    #[test]
    fn a_cancelled_discharge_restores_the_status_before_it() {
        let ed = "E|ED^^^RJZ30||||||||||||||||V8^^^RJZ^VN";
        let arrival = event("A04", "202607141018", "", ed);
        let discharge = event("A03", "202607141400", "", ed);
        let cancel = event("A13", "202607141410", "", ed);
        let e = encounter_of(&[&arrival, &discharge, &cancel]);
        assert_eq!(e["status"], "arrived", "{e}");
        assert!(e["period"].get("end").is_none(), "{e}");
        // In any arrival order, and resent, the same.
        for order in [
            [&arrival, &cancel, &discharge, &cancel],
            [&discharge, &cancel, &arrival, &cancel],
            [&cancel, &discharge, &arrival, &arrival],
        ] {
            let other = encounter_of(&order);
            assert_eq!(other["status"], "arrived", "{other}");
            assert_eq!(other["statusHistory"], e["statusHistory"], "{other}");
        }
        // An admitted patient goes back to in-progress.
        let admit = event("A01", "202607141018", "", VISIT);
        let discharge = event("A03", "202607141400", "", VISIT);
        let cancel = event("A13", "202607141410", "", VISIT);
        assert_eq!(
            encounter_of(&[&admit, &discharge, &cancel])["status"],
            "in-progress"
        );
    }

    #[test]
    fn a_repeated_transfer_cancel_removes_one_transfer_only() {
        let pv1 = |place: &str| {
            let pv1 = segment("PV1", &[(2, "I"), (3, place), (19, "V6^^^RJZ^VN")]);
            pv1["PV1||".len()..].to_string()
        };
        let admit = event("A01", "202607141018", "", &pv1("AMU^^^RJZ30"));
        let first = event("A02", "202607141400", "", &pv1("WARD 9^^^RJZ30"));
        let second = event("A02", "202607141500", "", &pv1("WARD 4^^^RJZ30"));
        // The cancel names the location the patient goes back to (PV1-3);
        // sent twice (a resend under a new MSH-10), once more a minute on.
        let cancel = event("A12", "202607141510", "", &pv1("WARD 9^^^RJZ30"));
        let again = event("A12", "202607141511", "", &pv1("WARD 9^^^RJZ30"));
        let e = encounter_of(&[&admit, &first, &second, &cancel, &again]);
        let places: Vec<&Value> = e["location"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["location"]["display"])
            .collect();
        assert_eq!(places.len(), 2, "{e}");
        assert_eq!(
            e["location"][1]["location"],
            first.visit.as_ref().unwrap().location.clone().unwrap(),
            "{e}"
        );
        assert_eq!(e["location"][1]["status"], "active");
    }

    /// Every order of `events` (each as `(label, message)`).
    fn orders<'a>(events: &[(&'a str, &'a Adt)]) -> Vec<Vec<(&'a str, &'a Adt)>> {
        if events.len() <= 1 {
            return vec![events.to_vec()];
        }
        let mut all = Vec::new();
        for i in 0..events.len() {
            let mut rest = events.to_vec();
            let first = rest.remove(i);
            for mut tail in orders(&rest) {
                tail.insert(0, first);
                all.push(tail);
            }
        }
        all
    }

    /// The Patient after `events`, applied in the order given, as the feed
    /// applies them (the stored event clock moves forward only).
    fn patient_of(events: &[&Adt]) -> Value {
        let mut p: Option<Value> = None;
        let mut clock: Option<i64> = None;
        for adt in events {
            p = Some(patient_after(p.as_ref(), clock, adt));
            clock = Some(clock.map_or(adt.time_ms, |c| c.max(adt.time_ms)));
        }
        p.unwrap()
    }

    #[test]
    fn a_stay_ends_the_same_whatever_order_its_events_arrive_in() {
        let pv1 = |class: &str, place: &str, source: &str, end: &str, disposition: &str| {
            let pv1 = segment(
                "PV1",
                &[
                    (2, class),
                    (3, place),
                    (4, "21"),
                    (14, source),
                    (19, "V5^^^RJZ^VN"),
                    (36, disposition),
                    (44, "202607141015"),
                    (45, end),
                ],
            );
            pv1["PV1||".len()..].to_string()
        };
        let with_pid = |event: &str, when: &str, phone: &str, pv1: &str| {
            let pid = segment(
                "PID",
                &[
                    (1, "1"),
                    (3, "9990000018^^^NHS^NH"),
                    (5, "PAGE^Ann"),
                    (7, "19380305"),
                    (8, "F"),
                    (13, phone),
                ],
            );
            let text = format!(
                "MSH|^~\\&|PAS|RJZ|GW|OB|{when}||ADT^{event}|{event}{when}|P|2.4\rEVN|{event}|{when}\r{pid}\rPV1|1|{pv1}\r"
            );
            read(&Message::parse(&text).unwrap(), &AdtContext::default()).unwrap()
        };
        let admission = with_pid(
            "A01",
            "202607141018",
            "01689 100001^PRN^PH",
            &pv1("I", "AMU^^^RJZ30", "19", "", ""),
        );
        let update = with_pid(
            "A08",
            "202607141300",
            "01689 100002^PRN^PH",
            &pv1("I", "AMU^^^RJZ30", "51", "", ""),
        );
        let transfer = with_pid(
            "A02",
            "202607150900",
            "01689 100003^PRN^PH",
            &pv1("I", "WARD 9^^^RJZ30", "51", "", ""),
        );
        let later = with_pid(
            "A08",
            "202607161200",
            "01689 100003^PRN^PH",
            &pv1("I", "WARD 9^^^RJZ30", "19", "", ""),
        );
        let discharge = with_pid(
            "A03",
            "202607181100",
            "01689 100004^PRN^PH",
            &pv1("I", "WARD 9^^^RJZ30", "19", "202607181045", "54"),
        );
        let events = [
            ("A01", &admission),
            ("A08", &update),
            ("A02", &transfer),
            ("A08 later", &later),
            ("A03", &discharge),
        ];
        let (encounter, patient) = converged(&events);
        assert_eq!(encounter["status"], "finished", "{encounter}");
        assert_eq!(encounter["period"]["end"], "2026-07-18T10:45:00+01:00");
        assert_eq!(encounter["location"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            encounter["location"][0]["location"]["display"],
            "AMU, RJZ30"
        );
        assert_eq!(
            encounter["hospitalization"]["admitSource"]["coding"][0]["code"],
            "19"
        );
        assert_eq!(patient["telecom"][0]["value"], "01689 100004");

        // An ED attendance that ends in a discharge, its discharge cancelled
        // and sent again, with an update between.
        let ed = |end: &str, disposition: &str| pv1("E", "ED^^^RJZ30", "19", end, disposition);
        let arrival = with_pid("A04", "202607141018", "01689 100001^PRN^PH", &ed("", ""));
        let update = with_pid("A08", "202607141100", "01689 100002^PRN^PH", &ed("", ""));
        let discharge = with_pid(
            "A03",
            "202607141400",
            "01689 100002^PRN^PH",
            &ed("202607141355", "19"),
        );
        let cancel = with_pid("A13", "202607141410", "01689 100002^PRN^PH", &ed("", ""));
        let again = with_pid(
            "A03",
            "202607141500",
            "01689 100003^PRN^PH",
            &ed("202607141455", "54"),
        );
        let (encounter, patient) = converged(&[
            ("A04", &arrival),
            ("A08", &update),
            ("A03", &discharge),
            ("A13", &cancel),
            ("A03 again", &again),
        ]);
        assert_eq!(encounter["status"], "finished", "{encounter}");
        assert_eq!(encounter["period"]["end"], "2026-07-14T14:55:00+01:00");
        assert_eq!(
            encounter["hospitalization"]["dischargeDisposition"]["coding"][0]["code"],
            "54"
        );
        assert_eq!(patient["telecom"][0]["value"], "01689 100003");
    }

    /// An ADT message of `event` at `when` with the segments given (PID-1,
    /// PV1-1 and the NHS number filled in), as read.
    fn adt(event: &str, when: &str, pid: &[(usize, &str)], rest: &[String]) -> Adt {
        let mut fields = vec![(1, "1"), (3, "9990000018^^^NHS^NH")];
        fields.extend_from_slice(pid);
        let mut text = format!(
            "MSH|^~\\&|PAS|RJZ|GW|OB|{when}||ADT^{event}|{event}{when}|P|2.4\rEVN|{event}|{when}\r{}\r",
            segment("PID", &fields)
        );
        for segment in rest {
            text.push_str(segment);
            text.push('\r');
        }
        read(&Message::parse(&text).unwrap(), &AdtContext::default()).unwrap()
    }

    #[test]
    fn transfers_and_cancels_end_the_same_whatever_order_they_arrive_in() {
        let pv1 = |place: &str, end: &str| {
            segment(
                "PV1",
                &[
                    (1, "1"),
                    (2, "I"),
                    (3, place),
                    (4, "21"),
                    (19, "V4^^^RJZ^VN"),
                    (44, "202607141015"),
                    (45, end),
                ],
            )
        };
        let at = |event: &str, when: &str, place: &str, end: &str| {
            adt(event, when, &[(5, "PAGE^Ann")], &[pv1(place, end)])
        };
        let admission = at("A01", "202607141018", "AMU^^^RJZ30", "");
        let first = at("A02", "202607150900", "WARD 9^^^RJZ30", "");
        let update = at("A08", "202607151200", "WARD 9^^^RJZ30", "");
        let second = at("A02", "202607160900", "WARD 4^^^RJZ30", "");
        let discharge = at("A03", "202607181100", "WARD 4^^^RJZ30", "202607181045");
        let (encounter, _) = converged(&[
            ("A01", &admission),
            ("A02 WARD 9", &first),
            ("A08", &update),
            ("A02 WARD 4", &second),
            ("A03", &discharge),
        ]);
        let places: Vec<&Value> = encounter["location"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["location"]["display"])
            .collect();
        assert_eq!(places, ["AMU, RJZ30", "WARD 9, RJZ30", "WARD 4, RJZ30"]);
        assert_eq!(encounter["status"], "finished");

        // Back to a ward left before; an update naming a bed the stay's
        // transfers never name; a stale update naming the admitting ward
        // after the patient left it.
        let back = at("A02", "202607170900", "WARD 9^^^RJZ30", "");
        let bed = at("A08", "202607141100", "AMU^^BED 3^RJZ30", "");
        let stale = at("A08", "202607151300", "AMU^^^RJZ30", "");
        let (encounter, _) = converged(&[
            ("A01", &admission),
            ("A08 bed", &bed),
            ("A02 WARD 9", &first),
            ("A08 stale", &stale),
            ("A02 WARD 4", &second),
            ("A02 WARD 9 again", &back),
        ]);
        let places: Vec<&Value> = encounter["location"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["location"]["display"])
            .collect();
        assert_eq!(
            places,
            [
                "AMU, RJZ30",
                "WARD 9, RJZ30",
                "WARD 4, RJZ30",
                "WARD 9, RJZ30"
            ]
        );
        assert_eq!(encounter["location"][3]["status"], "active");

        // A transfer cancelled, then made again: orders in which the cancel
        // arrives before the admission or the transfer it cancels are the
        // documented limit, and left out.
        let cancel = at("A12", "202607151000", "AMU^^^RJZ30", "");
        let redo = at("A02", "202607151100", "WARD 9^^^RJZ30", "");
        let events = [
            ("A01", &admission),
            ("A02", &first),
            ("A12", &cancel),
            ("A02 again", &redo),
        ];
        let (expected, checked) = same_in_kept_orders(
            &events,
            |labels| {
                let position = |label| labels.iter().position(|l| *l == label);
                position("A12") > position("A01") && position("A12") > position("A02")
            },
            encounter_of,
        );
        let places: Vec<&Value> = expected["location"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["period"]["start"])
            .collect();
        assert_eq!(
            places,
            ["2026-07-14T10:15:00+01:00", "2026-07-15T11:00:00+01:00"],
            "{expected}"
        );
        assert_eq!(checked, 8);

        // A pre-admission's planned ward, then the admission elsewhere.
        let planned = at("A05", "202607100900", "DSU^^^RJZ30", "");
        let (encounter, _) = converged(&[("A05", &planned), ("A01", &admission), ("A02", &first)]);
        assert_eq!(
            encounter["location"][0]["location"]["display"],
            "AMU, RJZ30"
        );
        assert_eq!(encounter["location"].as_array().map(Vec::len), Some(2));

        // Updates alone: the latest one's place, without a period, with
        // when it was reported.
        let (encounter, _) = converged(&[("A08 stale", &stale), ("A08 bed", &bed)]);
        assert_eq!(
            encounter["location"],
            json!([{
                "extension": [{
                    "url": LOCATION_REPORTED_URL,
                    "valueDateTime": "2026-07-15T13:00:00+01:00"
                }],
                "location": {"display": "AMU, RJZ30"},
                "status": "active"
            }])
        );

        // An ED attendance whose places come by updates (the arrival names
        // none), ended by a discharge naming none: the latest update's place,
        // also when the discharge, newer than every update, arrives first.
        // And two updates at one time naming different places.
        let ed = |event: &str, when: &str, place: &str| {
            let pv1 = segment(
                "PV1",
                &[(1, "1"), (2, "E"), (3, place), (19, "V2^^^RJZ^VN")],
            );
            adt(event, when, &[(5, "PAGE^Ann")], &[pv1])
        };
        let arrival = ed("A04", "202607141018", "");
        let majors = ed("A08", "202607141100", "ED^^MAJORS 4^RJZ30");
        let resus = ed("A08", "202607141230", "ED^^RESUS 1^RJZ30");
        let also = ed("A08", "202607141230", "ED^^RESUS 2^RJZ30");
        let discharge = ed("A03", "202607141400", "");
        let (encounter, _) = converged(&[
            ("A04", &arrival),
            ("A08 majors", &majors),
            ("A08 resus", &resus),
            ("A08 resus 2, same time", &also),
            ("A03", &discharge),
        ]);
        assert_eq!(
            encounter["location"][0]["location"]["display"], "ED RESUS 2, RJZ30",
            "{encounter}"
        );
        assert_eq!(encounter["location"][0]["status"], "completed");

        // An admission cancelled, with an update before the cancel.
        let cancel = at("A11", "202607141300", "AMU^^^RJZ30", "");
        let update = at("A08", "202607141200", "AMU^^^RJZ30", "");
        let (encounter, _) = converged(&[("A01", &admission), ("A08", &update), ("A11", &cancel)]);
        assert_eq!(encounter["status"], "cancelled", "{encounter}");
    }

    #[test]
    fn a_patient_ends_the_same_whatever_order_their_messages_arrive_in() {
        // Each message carries the whole PID and PD1 as the sender holds
        // them at its time, as a PAS sends them. (One that sends only what
        // changed, arriving before an older one that changed something
        // else, is a documented limit: a record keeps one event clock.)
        let person = |name: &str, address: &str, phone: &str, death: &str| {
            [
                (5, name.to_string()),
                (7, "19380305".to_string()),
                (8, "F".to_string()),
                (11, address.to_string()),
                (13, phone.to_string()),
                (29, death.to_string()),
            ]
        };
        let message = |event: &str, when: &str, pid: [(usize, String); 6], gp: &str, pv1: bool| {
            let pid: Vec<(usize, &str)> = pid.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let mut rest = vec![segment("PD1", &[(3, gp)])];
            if pv1 {
                rest.push(segment(
                    "PV1",
                    &[(1, "1"), (2, "E"), (3, "ED^^^RJZ30"), (19, "V3^^^RJZ^VN")],
                ));
            }
            adt(event, when, &pid, &rest)
        };
        let (page, smith) = ("PAGE^Ann^^^MRS", "SMITH^Ann^^^MRS");
        let (station, hill) = (
            "12 Station Road^^Bromley^^BR1 3PT^GBR^H",
            "4 Hill View^^Orpington^^BR6 0AA^GBR^H",
        );
        let (first_phone, second_phone) = ("01689 100001^PRN^PH", "01689 100002^PRN^PH");
        let (common, knoll) = (
            "BROMLEY COMMON PRACTICE^^G84001",
            "KNOLL MEDICAL PRACTICE^^G84002",
        );
        let registered = message(
            "A28",
            "202607010900",
            person(page, station, first_phone, ""),
            common,
            false,
        );
        let moved = message(
            "A31",
            "202607050900",
            person(page, hill, first_phone, ""),
            common,
            false,
        );
        let attended = message(
            "A04",
            "202607141018",
            person(page, hill, second_phone, ""),
            common,
            true,
        );
        let renamed = message(
            "A31",
            "202607200900",
            person(smith, hill, second_phone, ""),
            knoll,
            false,
        );
        let died = message(
            "A31",
            "202608010900",
            person(smith, hill, second_phone, "202607311500"),
            knoll,
            false,
        );
        let events = [
            ("A28", &registered),
            ("A31 address", &moved),
            ("A04", &attended),
            ("A31 name", &renamed),
            ("A31 death", &died),
        ];
        let patient = same_in_every_order(&events, patient_of);
        assert_eq!(patient["name"][0]["family"], "SMITH", "{patient}");
        assert_eq!(patient["address"][0]["postalCode"], "BR6 0AA", "{patient}");
        assert_eq!(patient["telecom"][0]["value"], "01689 100002", "{patient}");
        assert_eq!(
            patient["generalPractitioner"][0]["identifier"]["value"], "G84002",
            "{patient}"
        );
        assert!(patient.get("deceasedDateTime").is_some(), "{patient}");
        assert_eq!(patient["birthDate"], "1938-03-05", "{patient}");
    }

    /// `of(events)` in the order given, checked to be the same in every
    /// other order whose labels `kept` admits; with how many were checked.
    fn same_in_kept_orders(
        events: &[(&str, &Adt)],
        kept: impl Fn(&[&str]) -> bool,
        of: impl Fn(&[&Adt]) -> Value,
    ) -> (Value, usize) {
        let in_order: Vec<&Adt> = events.iter().map(|(_, adt)| *adt).collect();
        let expected = of(&in_order);
        let mut checked = 0;
        for order in orders(events) {
            let labels: Vec<&str> = order.iter().map(|(label, _)| *label).collect();
            if !kept(&labels) {
                continue;
            }
            let adts: Vec<&Adt> = order.iter().map(|(_, adt)| *adt).collect();
            let other = of(&adts);
            assert!(
                same_value(&other, &expected),
                "in the order {labels:?}:\n{other}\nagainst, in order:\n{expected}"
            );
            checked += 1;
        }
        (expected, checked)
    }

    /// `of(events)` in the order given, checked to be the same in every
    /// other order.
    fn same_in_every_order(events: &[(&str, &Adt)], of: impl Fn(&[&Adt]) -> Value) -> Value {
        let (value, checked) = same_in_kept_orders(events, |_| true, of);
        assert_eq!(checked, (1..=events.len()).product::<usize>());
        value
    }

    /// The Encounter and Patient after `events` in the order given, checked
    /// to be the same after every other order.
    fn converged(events: &[(&str, &Adt)]) -> (Value, Value) {
        (
            same_in_every_order(events, encounter_of),
            same_in_every_order(events, patient_of),
        )
    }

    #[test]
    fn an_explicit_null_deletes_a_recorded_death_address_and_practice() {
        let with = |pid29: &str, pid11: &str, pd1_3: &str, when: &str| {
            let pid = segment(
                "PID",
                &[
                    (1, "1"),
                    (3, "9990000018^^^NHS^NH"),
                    (5, "PAGE^Ann"),
                    (11, pid11),
                    (29, pid29),
                ],
            );
            let text = format!(
                "MSH|^~\\&|PAS|RJZ|GW|OB|{when}||ADT^A31|{when}|P|2.4\rEVN|A31|{when}\r{pid}\rPD1|||{pd1_3}\r",
            );
            read(&Message::parse(&text).unwrap(), &AdtContext::default()).unwrap()
        };
        let recorded = with(
            "202607140930",
            "12 Station Road^^Bromley^^BR1 3PT",
            "BROMLEY COMMON PRACTICE^^G84001",
            "202607141000",
        );
        let p = patient_after(None, None, &recorded);
        assert!(p.get("deceasedDateTime").is_some(), "{p}");
        assert!(p.get("address").is_some() && p.get("generalPractitioner").is_some());
        // Absent fields change nothing; `""` deletes.
        let silent = with("", "", "", "202607141100");
        let kept = patient_after(Some(&p), Some(recorded.time_ms), &silent);
        assert_eq!(kept, p);
        let retracted = with("\"\"", "\"\"", "\"\"", "202607141200");
        let q = patient_after(Some(&p), Some(silent.time_ms), &retracted);
        assert!(q.get("deceasedDateTime").is_none(), "{q}");
        assert!(
            q.get("address").is_none() && q.get("generalPractitioner").is_none(),
            "{q}"
        );
        // An older message's null does not undo what a newer one set.
        let stale = with("\"\"", "", "", "202607130900");
        let r = patient_after(Some(&p), Some(recorded.time_ms), &stale);
        assert!(r.get("deceasedDateTime").is_some(), "{r}");
    }

    #[test]
    fn two_different_nhs_numbers_are_refused_and_one_repeated_is_not() {
        let message = |pid3: &str| {
            let text = format!(
                "MSH|^~\\&|PAS|RJZ|GW|OB|202607141018||ADT^A31|X1|P|2.4\rEVN|A31|202607141018\rPID|1||{pid3}||PAGE^Ann\r"
            );
            read(&Message::parse(&text).unwrap(), &AdtContext::default())
        };
        match message("9990000018^^^NHS^NH~K1^^^RJZ^MR~9990000026^^^NHS^NH") {
            Err(crate::hl7v2::adt::AdtError::Invalid(errors)) => {
                assert!(
                    errors.iter().any(|e| e.location == "PID-3[3].1"),
                    "{errors:?}"
                );
            }
            other => panic!("two NHS numbers accepted: {other:?}"),
        }
        let same = message("9990000018^^^NHS^NH~9990000018^^^NHS^NH").unwrap();
        assert_eq!(same.patient.nhs_number.as_deref(), Some("9990000018"));
    }

    #[test]
    fn a_table_0445_code_in_pid_32_is_noted_not_refused() {
        let adt = event("A01", "202607141018", "US", VISIT);
        assert!(
            adt.notes.iter().any(|n| n.contains("PID-32")),
            "{:?}",
            adt.notes
        );
        let p = patient_after(None, None, &adt);
        assert!(p["identifier"][0].get("extension").is_none(), "{p}");
        let pid = segment(
            "PID",
            &[(3, "9990000018^^^NHS^NH"), (5, "PAGE^Ann"), (32, "NSTS99")],
        );
        let text = format!(
            "MSH|^~\\&|PAS|RJZ|GW|OB|202607141018||ADT^A31|X2|P|2.4\rEVN|A31|202607141018\r{pid}\r"
        );
        match read(&Message::parse(&text).unwrap(), &AdtContext::default()) {
            Err(crate::hl7v2::adt::AdtError::Invalid(errors)) => {
                assert!(errors.iter().any(|e| e.location == "PID-32"), "{errors:?}");
            }
            other => panic!("NSTS99 accepted: {other:?}"),
        }
    }

    #[test]
    fn a_new_verification_status_keeps_what_other_sources_added_to_the_identifier() {
        let traced = event("A01", "202607141018", "NSTS01", VISIT);
        let mut p = patient_after(None, None, &traced);
        // Added through REST: a period, and an extension of another kind.
        let nhs = &mut p["identifier"][0];
        nhs["period"] = json!({"start": "2001-01-01"});
        nhs["extension"]
            .as_array_mut()
            .unwrap()
            .push(json!({"url": "https://example.org/note", "valueString": "kept"}));
        let retraced = event("A08", "202607141200", "NSTS02", VISIT);
        let p = patient_after(Some(&p), Some(traced.time_ms), &retraced);
        let nhs = &p["identifier"][0];
        assert_eq!(nhs["value"], "9990000018");
        assert_eq!(nhs["period"]["start"], "2001-01-01", "{nhs}");
        let extensions = nhs["extension"].as_array().unwrap();
        assert_eq!(extensions.len(), 2, "{nhs}");
        assert_eq!(
            extensions[0]["valueCodeableConcept"]["coding"][0]["code"], "02",
            "{nhs}"
        );
        assert_eq!(extensions[1]["valueString"], "kept", "{nhs}");
        // The same message again changes nothing.
        assert_eq!(
            patient_after(Some(&p), Some(retraced.time_ms), &retraced),
            p
        );

        // A status arriving for a number recorded without one: the members
        // in the order of a number first recorded with it.
        let untraced = event("A01", "202607141018", "", VISIT);
        let p = patient_after(None, None, &untraced);
        let p = patient_after(Some(&p), Some(untraced.time_ms), &retraced);
        let fresh = patient_after(None, None, &retraced);
        assert_eq!(
            text_of(&p["identifier"][0]),
            text_of(&fresh["identifier"][0])
        );

        // Two stored statuses (written through REST) give way to the one sent.
        let mut p = patient_after(None, None, &traced);
        let status = p["identifier"][0]["extension"][0].clone();
        p["identifier"][0]["extension"]
            .as_array_mut()
            .unwrap()
            .push(status);
        let p = patient_after(Some(&p), Some(traced.time_ms), &retraced);
        assert_eq!(p["identifier"][0], fresh["identifier"][0]);
    }

    #[test]
    fn a_message_without_a_verification_status_keeps_the_one_recorded() {
        let traced = event("A01", "202607141018", "NSTS01", VISIT);
        let later = event("A08", "202607141100", "", VISIT);
        let p = patient_after(None, None, &traced);
        let p = patient_after(Some(&p), Some(traced.time_ms), &later);
        let nhs = &p["identifier"][0];
        assert_eq!(nhs["value"], "9990000018");
        assert_eq!(
            nhs["extension"][0]["valueCodeableConcept"]["coding"][0]["code"], "01",
            "{nhs}"
        );
        // A later status replaces it.
        let retraced = event("A08", "202607141200", "NSTS02", VISIT);
        let p = patient_after(Some(&p), Some(later.time_ms), &retraced);
        assert_eq!(
            p["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
            "02"
        );
    }

    /// `patient_unchanged` against the full path, over every pair of
    /// messages that differ in one PID or PD1 field (or not at all), in
    /// either order and from either side of the record's event clock: it
    /// never says "unchanged" of a message that changes the record, and
    /// says it of every repeat.
    #[test]
    fn the_unchanged_patient_shortcut_agrees_with_building_the_record() {
        let message = |when: &str, fields: &[(usize, &str)], pd1: &str| {
            let mut pid = vec![
                (1, "1"),
                (3, "K1^^^RJZ^MR~9990000018^^^NHS^NH"),
                (5, "PAGE^Ann"),
                (7, "19380305"),
                (8, "F"),
                (11, "12 Station Road^^Bromley^^BR1 3PT"),
                (13, "01689 123456"),
                (32, "NSTS01"),
            ];
            for (n, value) in fields {
                pid.retain(|(k, _)| k != n);
                pid.push((*n, value));
            }
            let pid = segment("PID", &pid);
            let text = format!(
                "MSH|^~\\&|PAS|RJZ|GW|OB|{when}||ADT^A31|{when}|P|2.4\rEVN|A31|{when}\r{pid}\rPD1|||{pd1}\r"
            );
            read(&Message::parse(&text).unwrap(), &AdtContext::default()).unwrap()
        };
        let practice = "BROMLEY COMMON PRACTICE^^G84001";
        let variants: Vec<(Vec<(usize, &str)>, &str)> = vec![
            (vec![], practice),
            (vec![(5, "SMITH^Ann")], practice),
            (vec![(5, "PAGE^Ann~PAGE^Annie^^^^^N")], practice),
            (vec![(13, "01689 654321")], practice),
            (vec![(13, "")], practice),
            (vec![(11, "1 High Street^^Bromley^^BR1 1AA")], practice),
            (vec![(11, "\"\"")], practice),
            (vec![(8, "M")], practice),
            (vec![(7, "19380306")], practice),
            (vec![(32, "NSTS02")], practice),
            (vec![(32, "")], practice),
            (vec![(3, "K2^^^RJZ^MR~9990000018^^^NHS^NH")], practice),
            (vec![(3, "9990000018^^^NHS^NH")], practice),
            (
                vec![(3, "K1^^^RJZ^MR~9990000018^^^NHS^NH~X9^^^RJZ^PI")],
                practice,
            ),
            (vec![(29, "202607140930")], practice),
            (vec![(29, "\"\"")], practice),
            (vec![], "OTHER PRACTICE^^G84002"),
            (vec![], "\"\""),
            (vec![], ""),
        ];
        let mut shortcuts = 0;
        for (first_fields, first_pd1) in &variants {
            let first = message("202607141000", first_fields, first_pd1);
            let stored = patient_after(None, None, &first);
            let text = text_of(&stored);
            for (fields, pd1) in &variants {
                for when in ["202607140900", "202607141000", "202607141100"] {
                    let next = message(when, fields, pd1);
                    let clock = Some(first.time_ms);
                    let unchanged = patient_unchanged(&stored, clock, &next.patient, next.time_ms);
                    let built = patient_after(Some(&stored), clock, &next);
                    let changes = rewrite(&text, &stored, &built).is_some();
                    assert!(
                        !(unchanged && changes),
                        "{first_fields:?} {first_pd1} then {fields:?} {pd1} at {when}: {built}"
                    );
                    if fields == first_fields && pd1 == first_pd1 {
                        assert!(unchanged, "a repeat of {fields:?} {pd1} at {when}");
                    }
                    shortcuts += usize::from(unchanged);
                }
            }
        }
        // Besides repeats: older events finding every member set, and
        // messages leaving out what is stored.
        assert!(shortcuts > variants.len() * 3, "{shortcuts}");
    }

    #[test]
    fn rewrite_keeps_untouched_bytes_and_reports_no_change() {
        let stored = r#"{"resourceType":"Patient","id":"a","extension":[{"url":"x","valueDecimal":1.50}],"gender":"male"}"#;
        let mut v: Value = serde_json::from_str(stored).unwrap();
        let old = v.clone();
        assert!(rewrite(stored, &old, &v).is_none());
        v["gender"] = json!("female");
        let out = rewrite(stored, &old, &v).unwrap();
        let text = out.text();
        assert!(text.contains(r#""valueDecimal":1.50"#), "{text}");
        assert!(text.contains(r#""gender":"female""#), "{text}");
        // The members it records are those a scan of its text finds.
        assert_eq!(out.members().unwrap(), written_members(text).unwrap());
        let keys: Vec<_> = out.members().unwrap().into_iter().map(|m| m.key).collect();
        assert_eq!(keys, ["resourceType", "id", "extension", "gender"]);
        // Same members and values in another order: a change, the stored
        // bytes kept in the new order.
        let mut reordered = serde_json::Map::new();
        for key in ["resourceType", "id", "gender", "extension"] {
            reordered.insert(key.into(), old[key].clone());
        }
        let out = rewrite(stored, &old, &Value::Object(reordered)).unwrap();
        assert_eq!(
            out.text(),
            r#"{"resourceType":"Patient","id":"a","gender":"male","extension":[{"url":"x","valueDecimal":1.50}]}"#
        );
    }
}
