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
//!   patient is already back where the A12 says; the cancels are kept
//!   beside the record and applied again with every message, so one that
//!   arrives before its transfer undoes it when it comes: [`Kept`]). An
//!   A13 restores the status from before the discharge it cancels.
//! - A Patient's other members are each set by an event at least as recent
//!   as the last one that set or cleared that member ([`Times`], kept by
//!   the store beside the resource, not in it): a message that carries only
//!   what changed still sets it when a newer message about something else
//!   came first, and a member a newer message cleared (`""`) stays cleared.
//!   A member no event has set yet is set by any event that carries it;
//!   but a record whose clock was kept before member times were (schema 8)
//!   goes by that clock for them: an older event only fills what is absent.
//! - An Encounter's other members go by the record's latest event alone:
//!   replaced by an event at least as recent, only filled by an older one;
//!   except the discharge's end and destination and PV1-4 (priority and
//!   admission method), each kept with the latest event that sent it.
//!
//! Members an event does not change keep their stored bytes ([`rewrite`]).

use super::adt::{Adt, Event, LOCATION_REPORTED_URL, ODS_SYSTEM, PatientFacts, Visit, is_ods};
use crate::fhir::json::{Written, WrittenObject, same_in_order, same_value, written_members};
use crate::fhir::value::Members;
use crate::store::Clock;
use serde_json::{Map, Value, json};

/// When the events applied to a Patient set (or cleared) each member: the
/// store's [`Clock`] as the feed reads it. Kept in `Clock::members` as
/// `name=0;address=86400000;…`, each time as milliseconds before the
/// latest (most are 0: set by the latest event), with `*=…` for `base`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Times {
    /// The latest event applied.
    latest: Option<i64>,
    /// Members' own times: the latest event that set or cleared each.
    own: Vec<(Member, i64)>,
    /// The record's clock when member times began to be kept (schema 8):
    /// what its members without a time of their own go by.
    base: Option<i64>,
}

/// A member [`Times`] keeps a time for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    /// A Patient member by its FHIR name (`deceased` for either choice).
    Named(&'static str),
    /// What a message's copy of an identifier may overlay on the stored one
    /// (a hospital number's `type`, the NHS number's verification status),
    /// each identifier its own, by a stable hash of its system and value;
    /// kept as `id.` and the hash in hex.
    Identifier(u64),
}

/// The members [`Member::Named`] names.
const NAMED: [&str; 7] = [
    "name",
    "telecom",
    "gender",
    "birthDate",
    "deceased",
    "address",
    "generalPractitioner",
];

impl Member {
    fn parse(text: &str) -> Option<Member> {
        match text.strip_prefix("id.") {
            Some(hex) => u64::from_str_radix(hex, 16).ok().map(Member::Identifier),
            None => NAMED.iter().find(|n| **n == text).map(|n| Member::Named(n)),
        }
    }
}

/// `n` in base `radix` (lower-case), at least `width` digits: without the
/// formatting machinery, for the clock written with every HL7 v2 message.
fn push_digits(out: &mut String, mut n: u64, radix: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    while n > 0 || digits.len() - at < width {
        at -= 1;
        digits[at] = b"0123456789abcdef"[(n % radix) as usize];
        n /= radix;
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

impl Times {
    pub fn of(clock: Option<&Clock>) -> Times {
        let Some(clock) = clock else {
            return Times::default();
        };
        let mut times = Times {
            latest: Some(clock.event_ms),
            own: Vec::new(),
            base: None,
        };
        match &clock.members {
            // Set before member times were kept: it stands for every member.
            None => times.base = Some(clock.event_ms),
            Some(text) => {
                for (member, before) in text.split(';').filter_map(|e| e.split_once('=')) {
                    let Ok(before) = before.parse::<i64>() else {
                        continue;
                    };
                    let at = clock.event_ms.saturating_sub(before);
                    if member == "*" {
                        times.base = Some(at);
                    } else if let Some(member) = Member::parse(member) {
                        times.own.push((member, at));
                    }
                }
            }
        }
        times
    }

    /// As the store keeps it (`None` before any event).
    pub fn clock(&self) -> Option<Clock> {
        let event_ms = self.latest?;
        let mut members = String::with_capacity(16 * (self.own.len() + 1));
        let base = self.base.map(|at| (None, at));
        for (member, at) in self.own.iter().map(|(m, at)| (Some(*m), *at)).chain(base) {
            if !members.is_empty() {
                members.push(';');
            }
            match member {
                Some(Member::Named(name)) => members.push_str(name),
                Some(Member::Identifier(hash)) => {
                    members.push_str("id.");
                    push_digits(&mut members, hash, 16, 16);
                }
                None => members.push('*'),
            }
            members.push('=');
            push_digits(
                &mut members,
                event_ms.saturating_sub(at).max(0) as u64,
                10,
                1,
            );
        }
        Some(Clock {
            event_ms,
            members: Some(members),
        })
    }

    /// The latest event applied.
    pub fn latest(&self) -> Option<i64> {
        self.latest
    }

    /// With an event at `time_ms` applied (members' times as they were).
    pub fn after(mut self, time_ms: i64) -> Times {
        self.latest = Some(self.latest.map_or(time_ms, |at| at.max(time_ms)));
        self
    }

    /// Whether an event at `time_ms` that carries `member` sets it (or
    /// clears it), the record having it or not (`present`).
    fn takes(&self, member: Member, time_ms: i64, present: bool) -> bool {
        match self.own.iter().find(|(m, _)| *m == member) {
            Some((_, at)) => time_ms >= *at,
            // Set by no event yet: any event sets it, but on a record kept
            // before member times were, whose clock stands for them all, an
            // older event only fills it if absent.
            None => self.base.is_none_or(|at| time_ms >= at) || !present,
        }
    }

    fn set(&mut self, member: Member, time_ms: i64) {
        match self.own.iter_mut().find(|(m, _)| *m == member) {
            Some((_, at)) => *at = time_ms,
            None => self.own.push((member, time_ms)),
        }
    }
}

/// [`Times::takes`] on a record as it stands.
struct Takes<'a> {
    times: &'a Times,
    time_ms: i64,
    /// Which of the members [`NAMED`] names the record has (bit `i` for
    /// `NAMED[i]`), found in one pass over its members.
    present: u8,
}

impl<'a> Takes<'a> {
    fn new(times: &'a Times, time_ms: i64, record: Option<&Map<String, Value>>) -> Takes<'a> {
        let mut present = 0;
        for key in record.into_iter().flat_map(|r| r.keys()) {
            let key = match key.as_str() {
                "deceasedDateTime" | "deceasedBoolean" => "deceased",
                other => other,
            };
            if let Some(i) = NAMED.iter().position(|n| *n == key) {
                present |= 1 << i;
            }
        }
        Takes {
            times,
            time_ms,
            present,
        }
    }

    /// Whether the event overlays `sent` on the stored identifier with the
    /// same system and value.
    fn identifier(&self, sent: &Value) -> bool {
        identifier_member(sent).is_some_and(|m| self.times.takes(m, self.time_ms, true))
    }

    /// For one of the members [`NAMED`] names.
    fn member(&self, member: &str) -> bool {
        let i = NAMED.iter().position(|n| *n == member);
        debug_assert!(i.is_some(), "{member} has no time of its own");
        i.is_some_and(|i| {
            let present = self.present & (1 << i) != 0;
            self.times
                .takes(Member::Named(NAMED[i]), self.time_ms, present)
        })
    }
}

/// `key` of a JSON object, found by looking through its few members
/// (cheaper than hashing the key for an identifier's three or four).
fn field<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value
        .as_object()?
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn same_identifier(a: &Value, b: &Value) -> bool {
    field(a, "system") == field(b, "system") && field(a, "value") == field(b, "value")
}

/// The [`Member::Identifier`] of what a message's copy of identifier `id`
/// may overlay on the stored one: `None` when it carries nothing more than
/// its system, value and `assigner` (which follows from the system): an
/// NHS number sent with PID-32 empty, a hospital number without PID-3.5.
/// Those set nothing, so a newer message without a type does not make an
/// older one that changed it stale.
fn identifier_member(id: &Value) -> Option<Member> {
    let o = id.as_object()?;
    if o.keys()
        .all(|k| matches!(k.as_str(), "system" | "value" | "assigner"))
    {
        return None;
    }
    let text = |key: &str| field(id, key).and_then(Value::as_str).unwrap_or_default();
    Some(Member::Identifier(stable_hash(
        text("system")
            .bytes()
            .chain([b'|'])
            .chain(text("value").bytes()),
    )))
}

/// FNV-1a of `bytes`: the same on every run and build (unlike the standard
/// library's hasher), for what is kept in the store or a fixture.
pub(super) fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The Patient members `facts` carries (set or cleared), as
/// [`Member::Named`] names them (identifiers apart: see
/// [`identifier_member`]).
fn carried(facts: &PatientFacts) -> impl Iterator<Item = &'static str> + '_ {
    [
        ("name", !facts.name.is_empty()),
        ("telecom", !facts.telecom.is_empty()),
        ("gender", facts.gender.is_some()),
        ("birthDate", facts.birth_date.is_some()),
        ("deceased", facts.deceased.is_some()),
        ("address", !facts.address.is_empty()),
        (
            "generalPractitioner",
            !facts.general_practitioner.is_empty(),
        ),
    ]
    .into_iter()
    .filter_map(|(member, carried)| carried.then_some(member))
    .chain(facts.cleared.iter().copied())
}

/// The Patient's [`Times`] once an event at `time_ms` that `facts`
/// describes is applied to `current` (as [`patient_from`] applies it).
pub fn patient_times(
    times: &Times,
    current: Option<&Value>,
    facts: &PatientFacts,
    time_ms: i64,
) -> Times {
    let record = current.and_then(Value::as_object);
    let takes = Takes::new(times, time_ms, record);
    let mut after = times.clone();
    for member in carried(facts) {
        if takes.member(member) {
            after.set(Member::Named(member), time_ms);
        }
    }
    let stored = record.and_then(|r| r.member("identifier"));
    for id in &facts.identifiers {
        if let Some(member) = identifier_member(id) {
            let present = stored
                .and_then(Value::as_array)
                .is_some_and(|ids| ids.iter().any(|other| same_identifier(other, id)));
            if times.takes(member, time_ms, present) {
                after.set(member, time_ms);
            }
        }
    }
    after.after(time_ms)
}

/// The Patient after `adt`, from the stored one (or a new one) with
/// `times`, and its times after.
pub fn patient_after(current: Option<&Value>, times: &Times, adt: &Adt) -> (Value, Times) {
    let after = patient_times(times, current, &adt.patient, adt.time_ms);
    let patient = patient_from(
        current,
        times,
        PatientFacts::clone(&adt.patient),
        adt.time_ms,
    );
    (patient, after)
}

/// [`patient_after`]'s Patient with the message's facts moved into the
/// record rather than copied: an event at `time_ms` that `facts` describes.
pub fn patient_from(
    current: Option<&Value>,
    times: &Times,
    facts: PatientFacts,
    time_ms: i64,
) -> Value {
    let takes = Takes::new(times, time_ms, current.and_then(Value::as_object));
    // What the event replaces below is not copied first.
    let replaced = |key: &str| {
        let carried = match key {
            "name" => !facts.name.is_empty(),
            "telecom" => !facts.telecom.is_empty(),
            "gender" => facts.gender.is_some(),
            "birthDate" => facts.birth_date.is_some(),
            "address" => !facts.address.is_empty(),
            "generalPractitioner" => !facts.general_practitioner.is_empty(),
            _ => false,
        };
        carried && takes.member(key)
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
        match ids.iter_mut().find(|other| same_identifier(other, &id)) {
            // The NHS number's verification status follows the latest event
            // that sends one (an empty PID-32 is "not sent", not "removed").
            // What the message does not carry stays, as HL7 v2 reads an
            // empty component: members and extensions another source added
            // (a `period` set through REST), or a hospital number's `type`
            // from an earlier message whose PID-3.5 was filled.
            Some(existing) if !same_value(existing, &id) && takes.identifier(&id) => {
                overlay_identifier(existing, &id)
            }
            Some(_) => {}
            None => {
                if traced && id.at("system") == super::adt::NHS_NUMBER_SYSTEM {
                    ids.insert(0, id);
                } else {
                    ids.push(id);
                }
            }
        }
    }
    set(&mut p, "identifier", Some(Value::Array(ids)), true);
    let name = takes.member("name");
    put_list(&mut p, "name", facts.name, name);
    let telecom = takes.member("telecom");
    put_list(&mut p, "telecom", facts.telecom, telecom);
    let gender = takes.member("gender");
    put(&mut p, "gender", facts.gender.map(|g| json!(g)), gender);
    let birth_date = takes.member("birthDate");
    put(
        &mut p,
        "birthDate",
        facts.birth_date.map(Value::String),
        birth_date,
    );
    if let Some((key, value)) = facts.deceased
        && takes.member("deceased")
    {
        p.remove("deceasedDateTime");
        p.remove("deceasedBoolean");
        p.insert(key.into(), value);
    }
    let address = takes.member("address");
    put_list(&mut p, "address", facts.address, address);
    let practitioner = takes.member("generalPractitioner");
    put_list(
        &mut p,
        "generalPractitioner",
        facts.general_practitioner,
        practitioner,
    );
    // Deleted by the sender (`""`), unless a later event has set them since.
    for member in &facts.cleared {
        if !takes.member(member) {
            continue;
        }
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
    times: &Times,
    facts: &PatientFacts,
    time_ms: i64,
) -> bool {
    let Some(p) = current.as_object() else {
        return false;
    };
    let takes = Takes::new(times, time_ms, Some(p));
    // `patient_from` puts the members in FHIR order.
    if !in_order(p, PATIENT_ORDER) {
        return false;
    }
    let has_death = p.member("deceasedDateTime").is_some() || p.member("deceasedBoolean").is_some();
    if let Some((key, value)) = &facts.deceased {
        let other = if *key == "deceasedBoolean" {
            "deceasedDateTime"
        } else {
            "deceasedBoolean"
        };
        // Set again: removed and put back, which keeps the order only of
        // members FHIR orders (unknown ones keep theirs among themselves).
        let same = p.member(key).is_some_and(|v| same_value(v, value))
            && p.member(other).is_none()
            && p.keys()
                .all(|k| rank(PATIENT_ORDER, k) < PATIENT_ORDER.len());
        if takes.member("deceased") && !same {
            return false;
        }
    }
    let Some(Value::Array(ids)) = p.member("identifier") else {
        return false;
    };
    for id in &facts.identifiers {
        let same = |other: &&Value| {
            other.at("system") == id.at("system") && other.at("value") == id.at("value")
        };
        match ids.iter().find(same) {
            None => return false,
            Some(existing) if !same_value(existing, id) && takes.identifier(id) => {
                let mut overlaid = existing.clone();
                overlay_identifier(&mut overlaid, id);
                if !same_value(&overlaid, existing) {
                    return false;
                }
            }
            Some(_) => {}
        }
    }
    // A member the event carries: unchanged when it does not set it, or
    // sets it to what is stored.
    let kept = |key: &str, same: &dyn Fn(&Value) -> bool| {
        !takes.member(key) || p.member(key).is_some_and(same)
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
    facts.cleared.iter().all(|member| {
        !takes.member(member)
            || match *member {
                "deceased" => !has_death,
                other => p.member(other).is_none(),
            }
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
        let value = match (key.as_str(), old.member(key), value) {
            ("extension", Some(Value::Array(kept)), Value::Array(new)) => {
                let mut list = kept.clone();
                for extension in new {
                    let url = extension.at("url");
                    match list.iter().position(|k| k.at("url") == url) {
                        Some(first) => {
                            list[first] = extension.clone();
                            let rest = list.split_off(first + 1);
                            list.extend(rest.into_iter().filter(|k| k.at("url") != url));
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
        if merged.member(key).is_none() {
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

/// The record an A40 merges away before any message of its own was stored
/// (the A40 arrived ahead of them): its MRG-1 `identifiers`, retired into
/// `survivor`, so that its late messages find the survivor through it.
pub fn placeholder(identifiers: Vec<Value>, survivor: &str) -> Value {
    let mut p = Map::new();
    p.insert("resourceType".into(), json!("Patient"));
    p.insert("identifier".into(), Value::Array(identifiers));
    retired(&Value::Object(p), survivor)
}

fn add_link(p: &mut Map<String, Value>, other: &str, kind: &str) {
    let mut links = p
        .member("link")
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
    patient.at("link").as_array()?.iter().find_map(|link| {
        (link.at("type") == "replaced-by")
            .then(|| {
                link.at("other")
                    .at("reference")
                    .as_str()
                    .map(str::to_string)
            })
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
/// a new one, last changed by an event at `clock`, with what it keeps
/// beside it (`kept`: its cancels and classes, updated); `subject` is the
/// patient's reference.
pub fn encounter_after(
    current: Option<&Value>,
    clock: Option<i64>,
    kept: &mut Kept,
    adt: &Adt,
    visit: &Visit,
    subject: &str,
) -> Value {
    encounter_from(current, clock, kept, adt, visit.clone(), subject)
}

/// [`encounter_after`] with the visit's facts moved into the record rather
/// than copied (`adt.visit` is not read).
pub fn encounter_from(
    current: Option<&Value>,
    clock: Option<i64>,
    kept: &mut Kept,
    adt: &Adt,
    visit: Visit,
    subject: &str,
) -> Value {
    let newer = is_newer(clock, adt.time_ms);
    // PV1-4 gives the priority and the NHS admission method as one: the
    // latest event that sent it (by EVN-2, kept beside the Encounter; at
    // one time, the greater code) sets both, and what it does not give
    // goes, the same in any arrival order. On a record stored before PV1-4
    // was kept, an older event fills them only when neither is there.
    let stored_admission = || {
        current.is_some_and(|c| {
            c.member("priority").is_some()
                || c.at("hospitalization")
                    .at("extension")
                    .as_array()
                    .is_some_and(|x| {
                        x.iter()
                            .any(|x| x.at("url") == super::adt::ADMISSION_METHOD_URL)
                    })
        })
    };
    let takes_admission = match visit.admission_type.as_deref() {
        None => false,
        Some(_) if !newer && kept.said(Ending::Admission).is_none() && stored_admission() => false,
        Some(code) => {
            kept.saw_ending(Ending::Admission, &adt.time, code);
            kept.said(Ending::Admission) == Some((adt.time.as_str(), code))
        }
    };
    // What is replaced below is not copied first.
    let replaced = |key: &str| match key {
        "subject" => true,
        "class" => newer,
        "priority" => takes_admission,
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
    let moved_into = class_history(&mut e, current, kept, adt, &visit.class);
    set(&mut e, "class", Some(visit.class), newer);
    if let Some(class) = moved_into {
        e.insert("class".into(), class);
    }
    if takes_admission {
        match visit.priority {
            Some(priority) => e.insert("priority".into(), priority),
            None => e.remove("priority"),
        };
    }

    // Status: the latest status event wins.
    let mut latest = false;
    if let Some(status) = adt.event.status() {
        let mut history = take_array(&mut e, "statusHistory");
        let entry = json!({"status": status, "period": {"start": adt.time}});
        // A resent A13 finds its entry whatever status the entry took from
        // before the discharge (see `resume_after_discharges`).
        let exists = history.iter().any(|h| {
            h.at("period").at("start") == adt.time.as_str()
                && (h.at("status") == status
                    || (adt.event == Event::A13 && is_open(h.at("status").as_str())))
        });
        if !exists {
            history.push(entry);
        }
        // In time order; at one time (EVN-2 is often to the minute) in the
        // order a visit goes through, whichever arrived first: a status
        // before the discharge, the discharge, the status a discharge
        // cancel restores, a cancellation. (A discharge cancel at the time
        // of a discharge that is left to cancel an earlier one comes before
        // it: a discharge cancelled and entered again in one minute.)
        if adt.event == Event::A13 {
            // (As the entry's start reads: a date alone is its day's start.)
            kept.add_discharge(time_ms(Some(&adt.time)));
        }
        let finished = finished_times(&history);
        history.sort_by_key(|h| {
            let at = start_ms(h.at("period"));
            let rank = match h.at("status").as_str() {
                Some("cancelled") => 6,
                open if is_open(open) && kept.cancels_discharge_at(at) => {
                    if kept.cancels_earlier(at, &finished) {
                        3
                    } else {
                        5
                    }
                }
                Some("finished") => 4,
                Some("in-progress") => 2,
                Some("arrived") => 1,
                _ => 0,
            };
            (at, rank)
        });
        resume_after_discharges(&mut history);
        chain(&mut history);
        latest = history.last().is_some_and(|h| {
            h.at("status") == status && h.at("period").at("start") == adt.time.as_str()
        });
        let current = history
            .last()
            .and_then(|h| h.at("status").as_str())
            .unwrap_or("unknown")
            .to_string();
        e.insert("status".into(), json!(current));
        e.insert("statusHistory".into(), Value::Array(history));
    } else if e.member("status").is_none() {
        e.insert("status".into(), json!("unknown"));
    }
    let status = e.at("status").as_str().unwrap_or("unknown").to_string();

    // Period: start from PV1-44; end only while finished.
    let mut period = take_object(&mut e, "period");
    if let Some(start) = &visit.start
        && (newer || period.member("start").is_none())
    {
        period.insert("start".into(), json!(start));
    }
    // The end and the destination: each from the latest event that sent
    // it (a discharge without PV1-45 ends at its own time), kept beside the
    // Encounter so that an update correcting them stands whichever arrives
    // first; shown while finished.
    let end = visit
        .end
        .or_else(|| (adt.event == Event::A03).then(|| adt.time.clone()));
    if let Some(end) = &end {
        kept.saw_ending(Ending::End, &adt.time, end);
    }
    let destination = visit
        .discharge_disposition
        .as_ref()
        .and_then(|d| d["coding"][0]["code"].as_str());
    if let Some(code) = destination {
        kept.saw_ending(Ending::Destination, &adt.time, code);
    }
    // (A record without kept ones, stored before they were: as before.)
    let ends = (adt.event == Event::A03 && latest) || (newer && status == "finished");
    let finished = match kept.discharges.is_empty() {
        true => Vec::new(),
        false => finished_times(e.at("statusHistory").as_array().map_or(&[], Vec::as_slice)),
    };
    let end = match kept.ending(Ending::End, &finished) {
        Some(kept) => kept.map(str::to_string),
        None => end
            .filter(|_| ends)
            .or_else(|| period.at("end").as_str().map(str::to_string)),
    };
    match end {
        Some(end) if status == "finished" => {
            period.insert("end".into(), json!(end));
        }
        _ => {
            period.remove("end");
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
    if takes_admission {
        let mut extensions = match stay.remove("extension") {
            Some(Value::Array(extensions)) => extensions,
            _ => Vec::new(),
        };
        extensions.retain(|x| x.at("url") != super::adt::ADMISSION_METHOD_URL);
        if let Some(method) = visit.admission_method {
            extensions.insert(
                0,
                json!({"url": super::adt::ADMISSION_METHOD_URL, "valueCodeableConcept": method}),
            );
        }
        if !extensions.is_empty() {
            stay.insert("extension".into(), Value::Array(extensions));
        }
    }
    set(&mut stay, "admitSource", visit.admit_source, newer);
    let destination = match kept.ending(Ending::Destination, &finished) {
        Some(kept) => kept.and_then(super::adt::discharge_destination),
        None => visit
            .discharge_disposition
            .filter(|_| ends)
            .or_else(|| stay.remove("dischargeDisposition")),
    };
    match destination {
        Some(destination) if status == "finished" => {
            stay.insert("dischargeDisposition".into(), destination);
        }
        _ => {
            stay.remove("dischargeDisposition");
        }
    }
    let stay = order(stay, &["extension", "admitSource", "dischargeDisposition"]);
    if stay.is_empty() {
        e.remove("hospitalization");
    } else {
        e.insert("hospitalization".into(), Value::Object(stay));
    }

    locations(
        &mut e,
        adt,
        visit.location,
        visit.start.as_deref(),
        &status,
        kept,
    );

    if e.member("serviceProvider").is_none() {
        let provider = if is_ods(&adt.sender) {
            json!({"identifier": {"system": ODS_SYSTEM, "value": adt.sender}})
        } else {
            json!({"display": adt.sender})
        };
        e.insert("serviceProvider".into(), provider);
    }
    Value::Object(order(e, ENCOUNTER_ORDER))
}

/// `classHistory`, once a visit has had two classes (an ED attendance
/// admitted under its visit number: `EMER`, then `IMP`), so that what it
/// was before its latest class is not lost (outcomes count the attendance
/// as an ED contact). One entry per class, from the earliest event that
/// sent it, in time order, each ending where the next starts: the same
/// whatever order the events arrive in. The classes and their times are
/// kept beside the Encounter ([`Kept`]); for one stored before they were
/// (or written through REST), its class is taken from the earliest time
/// the record shows. At one time, classes go as a visit goes through them
/// (a pre-admission, an attendance, an admission). A stored `classHistory`
/// is left alone until a second class is seen.
///
/// Returns the class the visit last moved into, once it has had two: the
/// Encounter's `class` then, whatever order its events arrived in (an
/// update sending an earlier class again does not take it back).
fn class_history(
    e: &mut Map<String, Value>,
    current: Option<&Value>,
    kept: &mut Kept,
    adt: &Adt,
    class: &Value,
) -> Option<Value> {
    let code = class.at("code").as_str()?;
    if kept.classes.is_empty()
        && let Some(stored) = current
        && let Some(old) = stored.at("class").at("code").as_str()
    {
        let earliest = stored
            .at("statusHistory")
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| h.at("period").at("start"))
            .chain([stored.at("period").at("start")])
            .filter_map(Value::as_str)
            .min_by_key(|at| time_ms(Some(at)));
        kept.saw_class(old, earliest.unwrap_or(&adt.time));
    }
    kept.saw_class(code, &adt.time);
    if kept.classes.len() < 2 {
        return None;
    }
    let stage = |code: &str| match code {
        "PRENC" => 0,
        "IMP" | "ACUTE" | "NONAC" => 2,
        _ => 1,
    };
    let mut classes: Vec<&(String, String)> = kept.classes.iter().collect();
    classes.sort_by_key(|(code, at)| (time_ms(Some(at)), stage(code), code.as_str()));
    let last = classes.last().map(|(code, _)| super::adt::act_coding(code));
    let mut history: Vec<Value> = classes
        .into_iter()
        .map(|(code, at)| json!({"class": super::adt::act_coding(code), "period": {"start": at}}))
        .collect();
    chain(&mut history);
    e.insert("classHistory".into(), Value::Array(history));
    last
}

/// A status entry right after a discharge can only be its cancellation
/// (A13: an admission or a transfer after a discharge would be a new visit
/// number), so it takes the status from before the discharge. Applied on
/// every status event, so that an A13 that arrived before its A03 (or
/// before the A04 it returns to) ends where the in-order stream ends.
fn resume_after_discharges(history: &mut [Value]) {
    for i in 1..history.len() {
        if history[i - 1].at("status") != "finished" || !is_open(history[i].at("status").as_str()) {
            continue;
        }
        let before = history[..i - 1]
            .iter()
            .rev()
            .filter_map(|h| h.at("status").as_str())
            .find(|s| is_open(Some(s)))
            .map(str::to_string);
        if let (Some(before), Some(entry)) = (before, history[i].as_object_mut()) {
            entry.insert("status".into(), json!(before));
        }
    }
}

/// When each discharge in `history` was (its `finished` entries).
fn finished_times(history: &[Value]) -> Vec<i64> {
    history
        .iter()
        .filter(|h| h.at("status") == "finished")
        .map(|h| start_ms(h.at("period")))
        .collect()
}

/// A status an ADT event sets on an Encounter that is not over.
fn is_open(status: Option<&str>) -> bool {
    matches!(status, Some("planned" | "arrived" | "in-progress"))
}

/// A02 adds a location at its event time; A01 and A04 add the admitting
/// one at the visit's `start` (PV1-44) unless one is known from that very
/// time, also when a transfer arrived first; A12 is kept with the
/// Encounter's cancels ([`Kept`]), which remove the latest one before each cancel,
/// unless that is already where it says the patient is (PV1-3): a resent
/// A12 does not undo a second transfer.
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
    cancels: &mut Kept,
) {
    // Left as it was (`[]`, or not a list) when it stays empty.
    let mut list = take_array(e, "location");
    cancels.restore(&mut list);
    let dated = |l: &Value| l.member("period").is_some();
    match (adt.event, place) {
        (Event::A02, Some(place)) => {
            list.retain(dated);
            let exists = list.iter().any(|l| {
                *l.at("location") == place && l.at("period").at("start") == adt.time.as_str()
            });
            if !exists {
                list.push(json!({"location": place, "period": {"start": adt.time}}));
            }
        }
        // Kept with the others; it removes its transfer below, now or when
        // the transfer (or the admission) arrives.
        (Event::A12, back_to) => cancels.add(adt.time_ms, back_to.as_ref()),
        // Where the patient is from the admission (PV1-44): unless a place
        // is known from that time already (an admission resent once the
        // patient has moved names where they are now, not where they were
        // admitted). So an ED attendance (A04) and the admission it turns
        // into (A01, a later PV1-44) under one visit number give both
        // places, in either order. Without PV1-44 the message's own time
        // is no admission time: its place is taken only if nothing is
        // known before it.
        (Event::A01 | Event::A04, Some(place)) => {
            list.retain(dated);
            let known = match start {
                Some(start) => {
                    let at = time_ms(Some(start));
                    list.iter().any(|l| start_ms(l.at("period")) == at)
                }
                None => list.iter().any(|l| start_ms(l.at("period")) <= adt.time_ms),
            };
            if !known {
                let start = start.unwrap_or(&adt.time);
                list.push(json!({"location": place, "period": {"start": start}}));
            }
        }
        (_, Some(place)) if !list.iter().any(dated) => {
            let report = (adt.time_ms, place.to_string());
            let later = list
                .iter()
                .map(|l| (reported_ms(l), l.at("location").to_string()))
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
    cancels.apply(&mut list);
    if list.is_empty() {
        return;
    }
    sort_locations(&mut list);
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

/// What an Encounter keeps beside it in the store (its clock's `members`):
/// the classes it has had, `k.<code>=<dateTime>` each, from the earliest
/// event that sent it (see [`class_history`]); the discharge's end and
/// destination code, `e.end=<dateTime>/<end>` and `e.to=<dateTime>/<code>`,
/// from the latest event that sent each; and the cancels it has had,
/// `<ms>` being a cancel's time in ms before the latest event: for a
/// transfer cancel (A12), `x.<hash>=<ms>` for one that has
/// removed nothing, `a.<hash>=<ms>/<hex>` for one that removed the location
/// whose JSON `<hex>` spells, `<hash>` that of the place it returns to
/// (PV1-3); for a discharge cancel (A13), `d.0=<ms>`, so that the status
/// it restores comes after a discharge sent at the same time (EVN-2 is
/// often to the minute), whichever arrived first.
///
/// A cancel removes the latest location at or before its time whose
/// previous place is where it says the patient returns (PV1-3), else the
/// latest unless that is already there; never the first (the admission).
/// Every message puts back what the cancels removed and applies them all
/// again in time order: so one that arrives before the transfer it cancels
/// (or before the admission) removes it when it comes, and two cancels end
/// the same in either order. A cancel resent (same time and place) is one
/// cancel; resent with a later time, it is another, which also undoes a
/// transfer made again before that time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kept {
    transfers: Vec<Cancel>,
    /// When each discharge cancel was, in time order.
    discharges: Vec<i64>,
    /// Each class (its code) with the earliest event time that sent it.
    classes: Vec<(String, String)>,
    /// The discharge's end and destination code, and PV1-4, each with the
    /// time of the latest event that sent it: `[end, destination,
    /// admission]`.
    endings: [Option<(String, String)>; 3],
}

/// What a discharge says (and PV1-4, kept the same way), each kept with
/// the latest event that said it.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// `period.end`: PV1-45, else a discharge's own time (`e.end=`).
    End,
    /// `hospitalization.dischargeDisposition`: PV1-36's code (`e.to=`).
    Destination,
    /// `priority` and the admission method: PV1-4 as sent (`e.adm=`). Not
    /// an ending: a discharge cancel leaves it.
    Admission,
}

impl Ending {
    const ALL: [Ending; 3] = [Ending::End, Ending::Destination, Ending::Admission];

    fn key(self) -> &'static str {
        match self {
            Ending::End => "e.end=",
            Ending::Destination => "e.to=",
            Ending::Admission => "e.adm=",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Cancel {
    at: i64,
    back_to: u64,
    /// The location it removed.
    removed: Option<Value>,
}

impl Kept {
    /// Those kept with `clock` (none: an Encounter's clock kept nothing
    /// more before schema 8, and its classes only since 2026-11-25).
    pub fn of(clock: Option<&Clock>) -> Kept {
        let Some((latest, text)) = clock.and_then(|c| Some((c.event_ms, c.members.as_ref()?)))
        else {
            return Kept::default();
        };
        let at = |before: &str| Some(latest.saturating_sub(before.parse().ok()?));
        // A transfer cancel: `x.<hash>=<ms>` or `a.<hash>=<ms>/<hex>`.
        let transfer = |entry: &str| {
            let (name, rest) = entry.split_once('=')?;
            let (kind, hash) = name.split_once('.')?;
            let (before, removed) = match (kind, rest.split_once('/')) {
                ("x", None) => (rest, None),
                // Unreadable, what it removed is lost, not the cancel.
                ("a", Some((before, hex))) => (before, from_hex(hex)),
                _ => return None,
            };
            Some(Cancel {
                at: at(before)?,
                back_to: u64::from_str_radix(hash, 16).ok()?,
                removed,
            })
        };
        let mut kept = Kept::default();
        for entry in text.split(';') {
            if let Some(before) = entry.strip_prefix("d.0=") {
                kept.discharges.extend(at(before));
            } else if let Some(rest) = entry.strip_prefix("k.") {
                if let Some((code, at)) = rest.split_once('=') {
                    kept.classes.push((code.to_string(), at.to_string()));
                }
            } else if let Some(ending) =
                Ending::ALL.into_iter().find(|e| entry.starts_with(e.key()))
            {
                let slot = &mut kept.endings[ending as usize];
                if slot.is_none()
                    && let Some((at, value)) = entry[ending.key().len()..].split_once('/')
                {
                    *slot = Some((at.to_string(), value.to_string()));
                }
            } else {
                kept.transfers.extend(transfer(entry));
            }
        }
        kept
    }

    /// As kept beside a clock whose latest event is `latest` (`None`:
    /// nothing to keep).
    pub fn members(&self, latest: i64) -> Option<String> {
        if self.transfers.is_empty()
            && self.discharges.is_empty()
            && self.classes.is_empty()
            && self.endings.iter().all(Option::is_none)
        {
            return None;
        }
        let mut text = String::new();
        // Entries are separated by `;`.
        let next = |text: &mut String| {
            if !text.is_empty() {
                text.push(';');
            }
        };
        for (ending, kept) in Ending::ALL.iter().zip(&self.endings) {
            if let Some((at, value)) = kept {
                next(&mut text);
                text.push_str(ending.key());
                text.push_str(at);
                text.push('/');
                text.push_str(value);
            }
        }
        for (code, at) in &self.classes {
            next(&mut text);
            text.push_str("k.");
            text.push_str(code);
            text.push('=');
            text.push_str(at);
        }
        for c in &self.transfers {
            next(&mut text);
            text.push_str(if c.removed.is_some() { "a." } else { "x." });
            push_digits(&mut text, c.back_to, 16, 16);
            text.push('=');
            push_digits(&mut text, latest.saturating_sub(c.at).max(0) as u64, 10, 1);
            if let Some(removed) = &c.removed {
                text.push('/');
                for byte in removed.to_string().bytes() {
                    push_digits(&mut text, u64::from(byte), 16, 2);
                }
            }
        }
        for &at in &self.discharges {
            next(&mut text);
            text.push_str("d.0=");
            push_digits(&mut text, latest.saturating_sub(at).max(0) as u64, 10, 1);
        }
        Some(text)
    }

    /// A class sent by an event at `at` (a FHIR dateTime): kept with the
    /// earliest time it was sent. A code that cannot be kept in the
    /// `members` text (with `;` or `=`, or empty) is not.
    fn saw_class(&mut self, code: &str, at: &str) {
        if code.is_empty() || code.contains([';', '=']) || at.contains([';', '=']) {
            return;
        }
        match self.classes.iter_mut().find(|(c, _)| c == code) {
            Some((_, earliest)) => {
                if compare_times(at, earliest).is_lt() {
                    *earliest = at.to_string();
                }
            }
            None => self.classes.push((code.to_string(), at.to_string())),
        }
    }

    /// `value` said by an event at `at` (a FHIR dateTime): kept unless a
    /// later event said otherwise (at one time, the greater value: the same
    /// in any order). One that cannot be kept in the `members` text is not.
    fn saw_ending(&mut self, ending: Ending, at: &str, value: &str) {
        if [at, value]
            .iter()
            .any(|s| s.is_empty() || s.contains([';', '=', '/']))
        {
            return;
        }
        let kept = &mut self.endings[ending as usize];
        let later = kept.as_ref().is_none_or(|(was_at, was)| {
            compare_times(at, was_at)
                .then_with(|| value.cmp(was))
                .is_gt()
        });
        if later {
            *kept = Some((at.to_string(), value.to_string()));
        }
    }

    /// The time and value of `ending` kept, as the latest event said it.
    fn said(&self, ending: Ending) -> Option<(&str, &str)> {
        self.endings[ending as usize]
            .as_ref()
            .map(|(at, value)| (at.as_str(), value.as_str()))
    }

    /// The value of `ending` kept: `None` when none is (a record stored
    /// before they were), `Some(None)` when a discharge cancel has undone
    /// it (`finished`: the Encounter's discharges).
    fn ending(&self, ending: Ending, finished: &[i64]) -> Option<Option<&str>> {
        let (at, value) = self.endings[ending as usize].as_ref()?;
        let undone =
            !self.discharges.is_empty() && self.cancelled_since(time_ms(Some(at)), finished);
        Some((!undone).then_some(value.as_str()))
    }

    /// A discharge cancel at `at`, unless it is one already had.
    fn add_discharge(&mut self, at: i64) {
        if let Err(i) = self.discharges.binary_search(&at) {
            self.discharges.insert(i, at);
        }
    }

    /// Whether a discharge cancel is at `at`.
    fn cancels_discharge_at(&self, at: i64) -> bool {
        self.discharges.binary_search(&at).is_ok()
    }

    /// Whether the discharge cancel at `at` cancels an earlier discharge
    /// (of those at `finished`): one is left that no earlier cancel took.
    /// Else it cancels the discharge at its own time.
    fn cancels_earlier(&self, at: i64, finished: &[i64]) -> bool {
        let before = |times: &[i64]| times.iter().filter(|&&t| t < at).count();
        before(finished) > before(&self.discharges)
    }

    /// Whether what an event at `at` said of its discharge was undone by a
    /// discharge cancel: a later one, or one at that time that cancels the
    /// discharge at its own time.
    fn cancelled_since(&self, at: i64, finished: &[i64]) -> bool {
        self.discharges
            .iter()
            .any(|&c| c > at || (c == at && !self.cancels_earlier(c, finished)))
    }

    /// A cancel at `at` back to `back_to`, unless it is one already had.
    fn add(&mut self, at: i64, back_to: Option<&Value>) {
        let back_to = place_hash(back_to);
        if !self
            .transfers
            .iter()
            .any(|c| c.at == at && c.back_to == back_to)
        {
            self.transfers.push(Cancel {
                at,
                back_to,
                removed: None,
            });
            self.transfers.sort_by_key(|c| (c.at, c.back_to));
        }
    }

    /// Puts back in `list` what the cancels removed (before the message's
    /// own change looks at it).
    fn restore(&mut self, list: &mut Vec<Value>) {
        for cancel in &mut self.transfers {
            if let Some(entry) = cancel.removed.take()
                && !list.iter().any(|l| {
                    l.at("location") == entry.at("location")
                        && l.at("period").at("start") == entry.at("period").at("start")
                })
            {
                list.push(entry);
            }
        }
    }

    /// Applies the cancels to `list` (all put back), in time order. Each
    /// removes the latest location at or before its time that it can:
    /// preferably one whose previous place is where the cancel says the
    /// patient returns (what an A12's PV1-3 means), looking back no further
    /// than the patient's last stay there; else the latest, unless that is
    /// already there; never the first (the admission).
    fn apply(&mut self, list: &mut Vec<Value>) {
        if self.transfers.is_empty() {
            return;
        }
        sort_locations(list);
        for cancel in &mut self.transfers {
            let place = |l: &Value| place_hash(Some(l.at("location")));
            let before = list
                .iter()
                .rposition(|l| start_ms(l.at("period")) <= cancel.at)
                .unwrap_or(0);
            // Back from the latest, no further than where the patient was
            // last at PV1-3's place: an older move away from it (a ward
            // left and returned to) is not this cancel's.
            let from_back_to = (1..=before)
                .rev()
                .take_while(|&i| place(&list[i]) != cancel.back_to)
                .find(|&i| place(&list[i - 1]) == cancel.back_to);
            let latest = (before > 0 && place(&list[before]) != cancel.back_to).then_some(before);
            if let Some(i) = from_back_to.or(latest) {
                let mut removed = list.remove(i);
                if let Some(o) = removed.as_object_mut() {
                    o.remove("status");
                    if let Some(p) = o.get_mut("period").and_then(Value::as_object_mut) {
                        p.remove("end");
                    }
                }
                cancel.removed = Some(removed);
            }
        }
    }
}

/// JSON spelt in hex (as [`Kept::members`] writes it).
fn from_hex(hex: &str) -> Option<Value> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    serde_json::from_slice(&bytes?).ok()
}

/// In time order; at one time (two transfers in the same minute), in the
/// order of their places, whichever arrived first.
fn sort_locations(list: &mut [Value]) {
    list.sort_by(|a, b| {
        start_ms(a.at("period"))
            .cmp(&start_ms(b.at("period")))
            .then_with(|| {
                a.at("location")
                    .to_string()
                    .cmp(&b.at("location").to_string())
            })
    });
}

/// A stable hash of a location (of its JSON).
fn place_hash(place: Option<&Value>) -> u64 {
    stable_hash(place.map(Value::to_string).unwrap_or_default().bytes())
}

/// When an undated location was reported ([`LOCATION_REPORTED_URL`]); the
/// earliest time when it does not say.
fn reported_ms(location: &Value) -> i64 {
    location
        .at("extension")
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x.at("url") == LOCATION_REPORTED_URL)
        .map_or(i64::MIN, |x| time_ms(x.at("valueDateTime").as_str()))
}

/// Each entry's period ends where the next one starts.
fn chain(entries: &mut [Value]) {
    let starts: Vec<Value> = entries
        .iter()
        .map(|h| h.at("period").at("start").clone())
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

/// How two FHIR dateTimes are ordered in time. Two of one form with the
/// same offset (a feed's own, nearly always) compare as text, which every
/// message would otherwise pay two parses for.
fn compare_times(a: &str, b: &str) -> std::cmp::Ordering {
    // `2026-07-14T10:18:00+01:00`: to the second, with an offset.
    fn offset(t: &str) -> Option<&str> {
        let offset = t.get(19..).filter(|_| t.len() == 25)?;
        offset.starts_with(['+', '-']).then_some(offset)
    }
    match (offset(a), offset(b)) {
        (Some(x), Some(y)) if x == y => a.cmp(b),
        _ => time_ms(Some(a)).cmp(&time_ms(Some(b))),
    }
}

/// When a period starts, at any precision (an event time sent as a date
/// alone is the start of that day), for ordering.
fn start_ms(period: &Value) -> i64 {
    time_ms(period.at("start").as_str())
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
        && (newer || o.member(key).is_none())
    {
        o.insert(key.into(), value);
    }
}

/// Sets `key` to `value` when the event sets it ([`Takes::member`]).
fn put(o: &mut Map<String, Value>, key: &str, value: Option<Value>, takes: bool) {
    if let Some(value) = value
        && takes
    {
        o.insert(key.into(), value);
    }
}

fn put_list(o: &mut Map<String, Value>, key: &str, values: Vec<Value>, takes: bool) {
    if !values.is_empty() {
        put(o, key, Some(Value::Array(values)), takes);
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
    // Same members, values and order as stored (an A08 repeating what is
    // stored, often): decided without scanning the stored text, whose
    // members are `old`'s (the gateway writes no name twice).
    if same_in_order(old, new) {
        return None;
    }
    let members = written_members(stored).ok()?;
    let (old, new) = (old.as_object()?, new.as_object()?);
    // For each new member, its stored bytes when equal to the stored value.
    let kept: Vec<Option<&str>> = new
        .iter()
        .map(|(key, value)| {
            let m = members.iter().find(|m| m.key == key.as_str())?;
            old.member(key)
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

    /// A record's times as kept before member times were: its clock
    /// (`None`: no event yet) stands for every member.
    fn legacy_times(clock: Option<i64>) -> Times {
        Times::of(
            clock
                .map(|event_ms| Clock {
                    event_ms,
                    members: None,
                })
                .as_ref(),
        )
    }

    /// The Patient after `adt` on `current`, whose clock is as kept before
    /// member times were.
    fn patient_at(current: Option<&Value>, clock: Option<i64>, adt: &Adt) -> Value {
        patient_after(current, &legacy_times(clock), adt).0
    }

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
        let p = patient_at(None, None, &newer);
        let p = patient_at(Some(&p), Some(newer.time_ms), &older);
        assert_eq!(p["name"][0]["family"], "SMITH");
        assert_eq!(p["telecom"][0]["value"], "01689 123456");
        // In order: the same result.
        let q = patient_at(None, None, &older);
        let q = patient_at(Some(&q), Some(older.time_ms), &newer);
        assert_eq!(q["name"], p["name"]);
        assert_eq!(q["telecom"], p["telecom"]);
    }

    #[test]
    fn members_an_event_replaces_keep_their_places_and_are_never_left_null() {
        let first = a08("202607140900", "PAGE", "01689 123456");
        let later = a08("202607150900", "SMITH", "01689 654321");
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        let no_nulls = |v: &Value| v.as_object().unwrap().values().all(|m| !m.is_null());

        let p = patient_at(None, None, &first);
        let newer = patient_at(Some(&p), Some(first.time_ms), &later);
        assert_eq!(keys(&newer), keys(&p));
        assert!(no_nulls(&newer), "{newer}");
        assert_eq!(newer["name"][0]["family"], "SMITH");
        assert_eq!(newer["telecom"][0]["value"], "01689 654321");
        let older = patient_at(Some(&newer), Some(later.time_ms), &first);
        assert_eq!(older, newer);

        let visit = first.visit.as_ref().unwrap();
        let none = &mut Kept::default();
        let e = encounter_after(None, None, none, &first, visit, "Patient/a");
        let newer = encounter_after(
            Some(&e),
            Some(first.time_ms),
            none,
            &later,
            visit,
            "Patient/b",
        );
        assert_eq!(keys(&newer), keys(&e));
        assert!(no_nulls(&newer), "{newer}");
        assert_eq!(newer["subject"]["reference"], "Patient/b");
        assert_eq!(newer["class"], e["class"]);
        let older = encounter_after(
            Some(&newer),
            Some(later.time_ms),
            none,
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

    /// An Encounter's locations, each as its place's JSON text.
    fn place_names(encounter: &Value) -> Vec<String> {
        encounter["location"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| l["location"].to_string())
            .collect()
    }

    /// The Encounter after `events`, applied in the order given (its
    /// cancels kept in the store's form between messages).
    fn encounter_of(events: &[&Adt]) -> Value {
        let mut e: Option<Value> = None;
        let mut clock: Option<Clock> = None;
        for adt in events {
            let visit = adt.visit.as_ref().unwrap();
            let latest = clock.as_ref().map(|c| c.event_ms);
            let mut cancels = Kept::of(clock.as_ref());
            e = Some(encounter_after(
                e.as_ref(),
                latest,
                &mut cancels,
                adt,
                visit,
                "Patient/p",
            ));
            let event_ms = latest.map_or(adt.time_ms, |c| c.max(adt.time_ms));
            clock = Some(Clock {
                event_ms,
                members: cancels.members(event_ms),
            });
        }
        e.unwrap()
    }

    const VISIT: &str = "I|WARD 5^^^RJZ30|21|||||||||||||||V9^^^RJZ^VN";

    /// PV1-4 is one field: the latest event that sent it gives both the
    /// priority and the NHS admission method, and what it leaves out goes
    /// (a method from an earlier PV1-4 no longer holds), in any order.
    #[test]
    fn the_latest_admission_type_gives_priority_and_method_together() {
        let method = |e: &Value| {
            e["hospitalization"]["extension"]
                .as_array()
                .and_then(|x| x.first())
                .map(|x| x["valueCodeableConcept"]["coding"][0]["code"].clone())
        };
        let emergency = event("A01", "202607141018", "", VISIT);
        let elective = event("A08", "202607141100", "", &VISIT.replace("|21|", "|C|"));
        let e = same_in_every_order(&[("A01", &emergency), ("A08 C", &elective)], encounter_of);
        assert_eq!(e["priority"]["coding"][0]["code"], "EL", "{e}");
        assert_eq!(method(&e), None, "{e}");
        let unknown = event("A08", "202607141100", "", &VISIT.replace("|21|", "|99|"));
        let e = same_in_every_order(&[("A01", &emergency), ("A08 99", &unknown)], encounter_of);
        assert_eq!(e.get("priority"), None, "{e}");
        assert_eq!(method(&e), Some(json!("99")), "{e}");
        // An update without PV1-4 leaves both as they are, also when it is
        // the latest event of three.
        let silent = event("A08", "202607141200", "", &VISIT.replace("|21|", "||"));
        let e = same_in_every_order(&[("A01", &emergency), ("A08", &silent)], encounter_of);
        assert_eq!(e["priority"]["coding"][0]["code"], "EM", "{e}");
        assert_eq!(method(&e), Some(json!("21")), "{e}");
        let e = same_in_every_order(
            &[("A01", &emergency), ("A08 C", &elective), ("A08", &silent)],
            encounter_of,
        );
        assert_eq!(e["priority"]["coding"][0]["code"], "EL", "{e}");
        assert_eq!(method(&e), None, "{e}");
        // Two in one minute: the same one wins whichever arrives first.
        let same_minute = event("A08", "202607141018", "", &VISIT.replace("|21|", "|C|"));
        same_in_every_order(
            &[("A01", &emergency), ("A08 C", &same_minute)],
            encounter_of,
        );
    }

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

    /// Events sent at one time (EVN-2 is often to the minute: a day case
    /// entered afterwards, a move to the discharge lounge and the discharge
    /// together, a discharge cancelled at once) end in the order a visit
    /// goes through, whatever order they arrive in. (Not told apart: an
    /// admission or a transfer at the time of a discharge that is then
    /// cancelled at that time too, whose statuses are the one a discharge
    /// cancel restores: a resent message's status is not entered twice.)
    #[test]
    fn events_at_one_time_end_the_same_in_any_arrival_order() {
        let at = "202607141400";
        let arrival = event("A04", "202607141018", "", VISIT);
        let admit = event("A01", at, "", VISIT);
        let early_admit = event("A01", "202607141018", "", VISIT);
        let transfer = event("A02", at, "", VISIT);
        let discharge = event("A03", at, "", VISIT);
        let cancel = event("A13", at, "", VISIT);
        let ed_arrival = event("A04", at, "", VISIT);
        let redo = event("A03", "202607141405", "", VISIT);
        let cancel_then = event("A13", "202607141405", "", VISIT);
        let cases: [(&[(&str, &Adt)], &str); 5] = [
            // Admitted from ED and discharged in the same minute.
            (
                &[("A04", &arrival), ("A01", &admit), ("A03", &discharge)],
                "finished",
            ),
            // Moved and discharged in the same minute.
            (
                &[
                    ("A01", &early_admit),
                    ("A02", &transfer),
                    ("A03", &discharge),
                ],
                "finished",
            ),
            // Discharged, and the discharge cancelled, in the same minute.
            (
                &[("A01", &early_admit), ("A03", &discharge), ("A13", &cancel)],
                "in-progress",
            ),
            // Registered in ED and admitted in the same minute.
            (&[("A04", &ed_arrival), ("A01", &admit)], "in-progress"),
            // A discharge cancelled and entered again in one minute.
            (
                &[
                    ("A01", &early_admit),
                    ("A03", &discharge),
                    ("A13", &cancel_then),
                    ("A03 again", &redo),
                ],
                "finished",
            ),
        ];
        for (events, status) in cases {
            let all = orders(events);
            let sent: Vec<&Adt> = events.iter().map(|(_, adt)| *adt).collect();
            let expected = encounter_of(&sent);
            assert_eq!(expected["status"], status, "{expected}");
            assert_eq!(
                expected["period"].get("end").is_some(),
                status == "finished",
                "{expected}"
            );
            for order in all {
                let labels: Vec<&str> = order.iter().map(|(label, _)| *label).collect();
                let adts: Vec<&Adt> = order.iter().map(|(_, adt)| *adt).collect();
                let e = encounter_of(&adts);
                assert_eq!(e["status"], expected["status"], "{labels:?}: {e}");
                assert_eq!(
                    e["statusHistory"], expected["statusHistory"],
                    "{labels:?}: {e}"
                );
                assert_eq!(e["period"], expected["period"], "{labels:?}: {e}");
            }
        }
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
    /// applies them (its member times kept in the store's form between
    /// messages).
    fn patient_of(events: &[&Adt]) -> Value {
        let mut p: Option<Value> = None;
        let mut times = Times::default();
        for adt in events {
            let (after, next) = patient_after(p.as_ref(), &times, adt);
            // Through the store's form, as the feed keeps it.
            times = Times::of(next.clock().as_ref());
            p = Some(after);
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
    fn times_compare_as_instants_whatever_their_offsets() {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let cases = [
            (
                "2026-07-14T10:18:00+01:00",
                "2026-07-14T10:19:00+01:00",
                Less,
            ),
            (
                "2026-07-14T10:18:00+01:00",
                "2026-07-14T10:18:00+01:00",
                Equal,
            ),
            // 09:18 UTC against 09:30 UTC.
            (
                "2026-07-14T10:18:00+01:00",
                "2026-07-14T09:30:00+00:00",
                Less,
            ),
            (
                "2026-10-25T01:30:00+00:00",
                "2026-10-25T01:30:00+01:00",
                Greater,
            ),
            // A date alone starts at London midnight.
            ("2026-07-14", "2026-07-14T00:30:00+01:00", Less),
            (
                "2026-07-14T10:18:00.5+01:00",
                "2026-07-14T10:18:00+01:00",
                Greater,
            ),
        ];
        for (a, b, order) in cases {
            assert_eq!(compare_times(a, b), order, "{a} {b}");
            assert_eq!(compare_times(b, a), order.reverse(), "{b} {a}");
        }
    }

    /// An update after the discharge correcting its time and destination
    /// stands whichever arrives first; a discharge without PV1-45 ends at
    /// its own time; a cancelled discharge shows neither.
    #[test]
    fn a_correction_of_the_discharge_stands_whichever_arrives_first() {
        let pv1 = |end: &str, destination: &str| {
            segment(
                "PV1",
                &[
                    (1, "1"),
                    (2, "I"),
                    (3, "WARD 5^^^RJZ30"),
                    (4, "21"),
                    (19, "V12^^^RJZ^VN"),
                    (36, destination),
                    (44, "202607141015"),
                    (45, end),
                ],
            )
        };
        let admitted = adt("A01", "202607141018", &[], &[pv1("", "")]);
        let discharged = adt("A03", "202607181405", &[], &[pv1("202607181400", "19")]);
        let corrected = adt("A08", "202607181610", &[], &[pv1("202607181430", "54")]);
        let (e, _) = converged(&[
            ("A01", &admitted),
            ("A03", &discharged),
            ("A08", &corrected),
        ]);
        assert_eq!(e["status"], "finished", "{e}");
        assert_eq!(e["period"]["end"], "2026-07-18T14:30:00+01:00", "{e}");
        assert_eq!(
            e["hospitalization"]["dischargeDisposition"]["coding"][0]["code"], "54",
            "{e}"
        );
        // Without PV1-45 or PV1-36: its own time, no destination.
        let bare = adt("A03", "202607181405", &[], &[pv1("", "")]);
        let (e, _) = converged(&[("A01", &admitted), ("A03", &bare)]);
        assert_eq!(e["period"]["end"], "2026-07-18T14:05:00+01:00", "{e}");
        assert!(
            e["hospitalization"].get("dischargeDisposition").is_none(),
            "{e}"
        );
        // Cancelled: neither, in any order; discharged again later: the
        // newer discharge's.
        let cancelled = adt("A13", "202607181700", &[], &[pv1("", "")]);
        let (e, _) = converged(&[
            ("A01", &admitted),
            ("A03", &discharged),
            ("A08", &corrected),
            ("A13", &cancelled),
        ]);
        assert_eq!(e["status"], "in-progress", "{e}");
        assert!(e["period"].get("end").is_none(), "{e}");
        assert!(
            e["hospitalization"].get("dischargeDisposition").is_none(),
            "{e}"
        );
        let again = adt("A03", "202607191000", &[], &[pv1("202607190945", "19")]);
        let (e, _) = converged(&[
            ("A01", &admitted),
            ("A03", &discharged),
            ("A08", &corrected),
            ("A13", &cancelled),
            ("A03 again", &again),
        ]);
        assert_eq!(e["period"]["end"], "2026-07-19T09:45:00+01:00", "{e}");
        assert_eq!(
            e["hospitalization"]["dischargeDisposition"]["coding"][0]["code"], "19",
            "{e}"
        );
        // Discharged again without a destination: none, not the cancelled
        // discharge's.
        let bare_again = adt("A03", "202607191000", &[], &[pv1("202607190945", "")]);
        let (e, _) = converged(&[
            ("A01", &admitted),
            ("A03", &discharged),
            ("A13", &cancelled),
            ("A03 again", &bare_again),
        ]);
        assert_eq!(e["status"], "finished", "{e}");
        assert_eq!(e["period"]["end"], "2026-07-19T09:45:00+01:00", "{e}");
        assert!(
            e["hospitalization"].get("dischargeDisposition").is_none(),
            "{e}"
        );
    }

    /// Classes sent at one time go as a visit goes through them, and once
    /// a visit has had two, `class` is the one it last moved into: the same
    /// in any arrival order, and matching `classHistory`.
    #[test]
    fn a_visits_class_is_the_one_it_last_moved_into_in_any_order() {
        let ed = "E|ED^^^RJZ30||||||||||||||||V8^^^RJZ^VN";
        // (At one place: an A04 and an A01 at one time keep the place of
        // whichever came first, a documented limit.)
        let ward = ed.replacen("E|", "I|", 1);
        let attended = event("A04", "202607141400", "", ed);
        let admitted = event("A01", "202607141400", "", &ward);
        let (e, _) = converged(&[("A04", &attended), ("A01", &admitted)]);
        assert_eq!(e["class"]["code"], "IMP", "{e}");
        assert_eq!(e["classHistory"][0]["class"]["code"], "EMER", "{e}");
        assert_eq!(
            e["classHistory"][1]["class"]["code"], e["class"]["code"],
            "{e}"
        );
        // An update sending the attendance's class again later.
        let update = event("A08", "202607141600", "", ed);
        let (e, _) = converged(&[("A04", &attended), ("A01", &admitted), ("A08", &update)]);
        assert_eq!(e["class"]["code"], "IMP", "{e}");
        assert_eq!(e["classHistory"].as_array().map(Vec::len), Some(2), "{e}");
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

        // A transfer cancelled, then made again, in every order: a cancel
        // that arrives before the admission or the transfer it cancels
        // waits for them.
        let cancel = at("A12", "202607151000", "AMU^^^RJZ30", "");
        let redo = at("A02", "202607151100", "WARD 9^^^RJZ30", "");
        let events = [
            ("A01", &admission),
            ("A02", &first),
            ("A12", &cancel),
            ("A02 again", &redo),
        ];
        let expected = same_in_every_order(&events, encounter_of);
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

        // Two transfers, each cancelled, in every order (120): the patient
        // never left the admitting ward.
        let other = at("A02", "202607151200", "WARD 4^^^RJZ30", "");
        let undone = at("A12", "202607151300", "AMU^^^RJZ30", "");
        let events = [
            ("A01", &admission),
            ("A02", &first),
            ("A12", &cancel),
            ("A02 other", &other),
            ("A12 other", &undone),
        ];
        let stayed = same_in_every_order(&events, encounter_of);
        let names = place_names(&stayed);
        assert_eq!(names.len(), 1, "{stayed}");
        assert!(names[0].contains("AMU"), "{stayed}");

        // A cancel naming a bed rather than the ward, resent five minutes
        // later, then the real next transfer: the admission is never what
        // a cancel removes.
        let bed = at("A12", "202607151000", "AMU^^BED 3^RJZ30", "");
        let resent = at("A12", "202607151005", "AMU^^BED 3^RJZ30", "");
        let onward = at("A02", "202607151100", "WARD 4^^^RJZ30", "");
        let events = [
            ("A01", &admission),
            ("A02", &first),
            ("A12 bed", &bed),
            ("A12 resent", &resent),
            ("A02 onward", &onward),
        ];
        let ended = same_in_every_order(&events, encounter_of);
        let names = place_names(&ended);
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names[0].contains("AMU") && names[1].contains("WARD 4"),
            "{names:?}"
        );

        // A return to the admitting ward, a transfer on, its cancel and the
        // cancel resent later: the earlier move away is not undone.
        let returned = at("A02", "202607151200", "AMU^^^RJZ30", "");
        let on = at("A02", "202607160900", "WARD 4^^^RJZ30", "");
        let cancel_on = at("A12", "202607161000", "AMU^^^RJZ30", "");
        let cancel_again = at("A12", "202607161005", "AMU^^^RJZ30", "");
        let events = [
            ("A01", &admission),
            ("A02", &first),
            ("A02 back", &returned),
            ("A02 on", &on),
            ("A12", &cancel_on),
            ("A12 again", &cancel_again),
        ];
        let ended = same_in_every_order(&events, encounter_of);
        let names = place_names(&ended);
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names[1].contains("WARD 9") && names[2].contains("AMU"),
            "{names:?}"
        );

        // A transfer cancelled and the right one entered in the same minute:
        // the cancel removes the transfer that left the place it returns to.
        let right = at("A02", "202607151000", "WARD 5^^^RJZ30", "");
        let events = [
            ("A01", &admission),
            ("A02", &first),
            ("A12", &cancel),
            ("A02 right", &right),
        ];
        let ended = same_in_every_order(&events, encounter_of);
        let names = place_names(&ended);
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names[0].contains("AMU") && names[1].contains("WARD 5"),
            "{names:?}"
        );

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
        // them at its time, as a PAS sends them. (Messages carrying only
        // what changed: the next test.)
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

    /// An ED attendance that turns into an admission under the same visit
    /// number (A04 at the ED, then A01 with a later PV1-44 on a ward): both
    /// places, whichever came first; before, the admission's place was lost
    /// in order and kept out of order.
    #[test]
    fn an_attendance_admitted_under_its_visit_number_keeps_both_places_in_any_order() {
        let pv1 = |class: &str, place: &str, admitted: &str, end: &str| {
            segment(
                "PV1",
                &[
                    (1, "1"),
                    (2, class),
                    (3, place),
                    (19, "V11^^^RJZ^VN"),
                    (44, admitted),
                    (45, end),
                ],
            )
        };
        let pid = [(5, "PAGE^Ann"), (7, "19380305")];
        let attended = adt(
            "A04",
            "202607141940",
            &pid,
            &[pv1("E", "ED^^MAJORS 4^RJZ30", "202607141935", "")],
        );
        let admitted = adt(
            "A01",
            "202607142205",
            &pid,
            &[pv1("I", "AMU^^^RJZ30", "202607142200", "")],
        );
        let moved = adt(
            "A02",
            "202607151000",
            &pid,
            &[pv1("I", "WARD 9^^^RJZ30", "202607142200", "")],
        );
        let discharged = adt(
            "A03",
            "202607181100",
            &pid,
            &[pv1("I", "WARD 9^^^RJZ30", "202607142200", "202607181045")],
        );
        let (encounter, _) = converged(&[
            ("A04", &attended),
            ("A01", &admitted),
            ("A02", &moved),
            ("A03", &discharged),
        ]);
        let names = place_names(&encounter);
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[0].contains("ED"), "{names:?}");
        assert!(names[1].contains("AMU"), "{names:?}");
        assert!(names[2].contains("WARD 9"), "{names:?}");
        assert_eq!(encounter["status"], "finished", "{encounter}");
        assert_eq!(encounter["class"]["code"], "IMP", "{encounter}");
        // What it was before is kept: an ED attendance, then an admission.
        assert_eq!(
            encounter["classHistory"],
            json!([
                {"class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER", "display": "emergency"},
                 "period": {"start": "2026-07-14T19:40:00+01:00", "end": "2026-07-14T22:05:00+01:00"}},
                {"class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP", "display": "inpatient encounter"},
                 "period": {"start": "2026-07-14T22:05:00+01:00"}},
            ]),
            "{encounter}"
        );
    }

    /// An Encounter stored before classes were kept beside it (or written
    /// through REST) takes its class's time from the earliest the record
    /// shows when a second class comes; one class alone gives no
    /// `classHistory`.
    #[test]
    fn a_stored_encounter_without_kept_classes_gets_its_class_history_from_the_record() {
        let ed = "E|ED^^^RJZ30||||||||||||||||V8^^^RJZ^VN";
        let attended = event("A04", "202607141018", "", ed);
        let once = encounter_of(&[&attended, &attended]);
        assert!(once.get("classHistory").is_none(), "{once}");
        let admitted = event(
            "A01",
            "202607141400",
            "",
            VISIT.replace("V9", "V8").as_str(),
        );
        let none = &mut Kept::default();
        let e = encounter_after(
            Some(&once),
            Some(attended.time_ms),
            none,
            &admitted,
            admitted.visit.as_ref().unwrap(),
            "Patient/p",
        );
        assert_eq!(e["classHistory"][0]["class"]["code"], "EMER", "{e}");
        assert_eq!(
            e["classHistory"][0]["period"]["start"], "2026-07-14T10:18:00+01:00",
            "{e}"
        );
        assert_eq!(e["classHistory"][1]["class"]["code"], "IMP", "{e}");
        assert_eq!(
            e["classHistory"][1]["period"]["start"], "2026-07-14T14:00:00+01:00",
            "{e}"
        );
    }

    /// A sender that sends only what changed (HL7 v2: an empty field is "no
    /// change"): each message still counts, whichever came first, as each
    /// member goes by the latest message that set it, not the record's.
    #[test]
    fn messages_carrying_only_what_changed_end_the_same_whatever_order_they_arrive_in() {
        let gp = |practice: &str| vec![segment("PD1", &[(3, practice)])];
        let registered = adt(
            "A28",
            "202607010900",
            &[
                (5, "PAGE^Ann^^^MRS"),
                (7, "19380305"),
                (8, "F"),
                (11, "12 Station Road^^Bromley^^BR1 3PT^GBR^H"),
                (13, "01689 100001^PRN^PH"),
            ],
            &gp("BROMLEY COMMON PRACTICE^^G84001"),
        );
        let moved = adt(
            "A31",
            "202607050900",
            &[(11, "4 Hill View^^Orpington^^BR6 0AA^GBR^H")],
            &[],
        );
        let phone = adt("A31", "202607100900", &[(13, "01689 100002^PRN^PH")], &[]);
        let renamed = adt("A31", "202607200900", &[(5, "SMITH^Ann^^^MRS")], &[]);
        let practice = adt(
            "A31",
            "202607250900",
            &[],
            &gp("KNOLL MEDICAL PRACTICE^^G84002"),
        );
        let events = [
            ("A28", &registered),
            ("address", &moved),
            ("phone", &phone),
            ("name", &renamed),
            ("practice", &practice),
        ];
        let patient = same_in_every_order(&events, patient_of);
        assert_eq!(patient["name"][0]["family"], "SMITH", "{patient}");
        assert_eq!(patient["address"][0]["postalCode"], "BR6 0AA", "{patient}");
        assert_eq!(patient["telecom"][0]["value"], "01689 100002", "{patient}");
        assert_eq!(
            patient["generalPractitioner"][0]["identifier"]["value"], "G84002",
            "{patient}"
        );
        assert_eq!(patient["birthDate"], "1938-03-05", "{patient}");
    }

    /// An identifier's verification status (PID-32) and a hospital
    /// number's type (PID-3.5) go by the latest message that sent them, not
    /// by the latest message: every message carries PID-3, so a newer one
    /// without PID-32 or PID-3.5 would otherwise make an older change
    /// stale.
    #[test]
    fn a_verification_status_goes_by_the_latest_message_that_sent_one() {
        let pid3 = |kind: &str| format!("K1^^^RJZ^{kind}~9990000018^^^NHS^NH");
        let (mr, pi, untyped) = (pid3("MR"), pid3("PI"), pid3(""));
        let registered = adt("A28", "202607010900", &[(3, &mr), (32, "NSTS02")], &[]);
        let verified = adt("A31", "202607100900", &[(3, &mr), (32, "NSTS01")], &[]);
        let retyped = adt("A31", "202607150900", &[(3, &pi)], &[]);
        // The hospital number again, without a type (PID-3.5 empty).
        let phone = adt(
            "A31",
            "202607200900",
            &[(3, &untyped), (13, "01689 100002")],
            &[],
        );
        let events = [
            ("A28", &registered),
            ("verified", &verified),
            ("retyped", &retyped),
            ("phone", &phone),
        ];
        let patient = same_in_every_order(&events, patient_of);
        let ids = patient["identifier"].as_array().unwrap();
        let status = &ids[0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"];
        assert_eq!(status, "01", "{patient}");
        assert_eq!(ids[1]["type"]["coding"][0]["code"], "PI", "{patient}");
    }

    /// A member a message deletes (`""`) stays deleted when an older message
    /// that still has it arrives after: a death recorded in error and
    /// retracted is not brought back by a late message from before the
    /// retraction.
    #[test]
    fn a_deletion_arriving_before_an_older_message_that_has_the_member_stands() {
        let person = |death: &str, address: &str| {
            [
                (5, "PAGE^Ann^^^MRS".to_string()),
                (7, "19380305".to_string()),
                (11, address.to_string()),
                (29, death.to_string()),
            ]
        };
        let message = |event: &str, when: &str, pid: [(usize, String); 4], gp: &str| {
            let pid: Vec<(usize, &str)> = pid.iter().map(|(n, v)| (*n, v.as_str())).collect();
            adt(event, when, &pid, &[segment("PD1", &[(3, gp)])])
        };
        let station = "12 Station Road^^Bromley^^BR1 3PT^GBR^H";
        let common = "BROMLEY COMMON PRACTICE^^G84001";
        let registered = message("A28", "202607010900", person("", station), common);
        let died = message(
            "A31",
            "202607140930",
            person("202607140900", station),
            common,
        );
        let retracted = message("A31", "202607151000", person("\"\"", "\"\""), "\"\"");
        let events = [
            ("A28", &registered),
            ("death", &died),
            ("retracted", &retracted),
        ];
        let patient = same_in_every_order(&events, patient_of);
        for member in ["deceasedDateTime", "address", "generalPractitioner"] {
            assert!(patient.get(member).is_none(), "{member}: {patient}");
        }
        assert_eq!(patient["name"][0]["family"], "PAGE", "{patient}");
    }

    /// A record whose clock was set before member times were kept goes by
    /// that clock for every member until a message sets it: an older
    /// message only fills what is absent, a newer one replaces; the times
    /// survive the store's form.
    #[test]
    fn a_record_without_member_times_goes_by_its_clock_until_a_member_is_set() {
        let registered = adt(
            "A28",
            "202607010900",
            &[(5, "PAGE^Ann"), (13, "01689 100001")],
            &[],
        );
        let stored = patient_at(None, None, &registered);
        let legacy = legacy_times(Some(time_ms(Some("2026-07-10T09:00:00+01:00"))));
        // Older than the record's clock: the phone it has stays, the
        // address it lacks is filled.
        let older = adt(
            "A31",
            "202607050900",
            &[
                (11, "4 Hill View^^Orpington^^BR6 0AA"),
                (13, "01689 100002"),
            ],
            &[],
        );
        let (p, times) = patient_after(Some(&stored), &legacy, &older);
        assert_eq!(p["telecom"][0]["value"], "01689 100001", "{p}");
        assert_eq!(p["address"][0]["postalCode"], "BR6 0AA", "{p}");
        let kept = times.clock().unwrap();
        assert_eq!(Times::of(Some(&kept)), times);
        // The address now has a time of its own (07-05); the phone still
        // goes by the record's clock (07-10).
        let between = adt(
            "A31",
            "202607070900",
            &[
                (11, "1 High Street^^Bromley^^BR1 1AA"),
                (13, "01689 100003"),
            ],
            &[],
        );
        let (q, _) = patient_after(Some(&p), &times, &between);
        assert_eq!(q["address"][0]["postalCode"], "BR1 1AA", "{q}");
        assert_eq!(q["telecom"][0]["value"], "01689 100001", "{q}");
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
        let p = patient_at(None, None, &recorded);
        assert!(p.get("deceasedDateTime").is_some(), "{p}");
        assert!(p.get("address").is_some() && p.get("generalPractitioner").is_some());
        // Absent fields change nothing; `""` deletes.
        let silent = with("", "", "", "202607141100");
        let kept = patient_at(Some(&p), Some(recorded.time_ms), &silent);
        assert_eq!(kept, p);
        let retracted = with("\"\"", "\"\"", "\"\"", "202607141200");
        let q = patient_at(Some(&p), Some(silent.time_ms), &retracted);
        assert!(q.get("deceasedDateTime").is_none(), "{q}");
        assert!(
            q.get("address").is_none() && q.get("generalPractitioner").is_none(),
            "{q}"
        );
        // An older message's null does not undo what a newer one set.
        let stale = with("\"\"", "", "", "202607130900");
        let r = patient_at(Some(&p), Some(recorded.time_ms), &stale);
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
        let p = patient_at(None, None, &adt);
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
        let mut p = patient_at(None, None, &traced);
        // Added through REST: a period, and an extension of another kind.
        let nhs = &mut p["identifier"][0];
        nhs["period"] = json!({"start": "2001-01-01"});
        nhs["extension"]
            .as_array_mut()
            .unwrap()
            .push(json!({"url": "https://example.org/note", "valueString": "kept"}));
        let retraced = event("A08", "202607141200", "NSTS02", VISIT);
        let p = patient_at(Some(&p), Some(traced.time_ms), &retraced);
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
        assert_eq!(patient_at(Some(&p), Some(retraced.time_ms), &retraced), p);

        // A status arriving for a number recorded without one: the members
        // in the order of a number first recorded with it.
        let untraced = event("A01", "202607141018", "", VISIT);
        let p = patient_at(None, None, &untraced);
        let p = patient_at(Some(&p), Some(untraced.time_ms), &retraced);
        let fresh = patient_at(None, None, &retraced);
        assert_eq!(
            text_of(&p["identifier"][0]),
            text_of(&fresh["identifier"][0])
        );

        // Two stored statuses (written through REST) give way to the one sent.
        let mut p = patient_at(None, None, &traced);
        let status = p["identifier"][0]["extension"][0].clone();
        p["identifier"][0]["extension"]
            .as_array_mut()
            .unwrap()
            .push(status);
        let p = patient_at(Some(&p), Some(traced.time_ms), &retraced);
        assert_eq!(p["identifier"][0], fresh["identifier"][0]);
    }

    #[test]
    fn a_message_without_a_verification_status_keeps_the_one_recorded() {
        let traced = event("A01", "202607141018", "NSTS01", VISIT);
        let later = event("A08", "202607141100", "", VISIT);
        let p = patient_at(None, None, &traced);
        let p = patient_at(Some(&p), Some(traced.time_ms), &later);
        let nhs = &p["identifier"][0];
        assert_eq!(nhs["value"], "9990000018");
        assert_eq!(
            nhs["extension"][0]["valueCodeableConcept"]["coding"][0]["code"], "01",
            "{nhs}"
        );
        // A later status replaces it.
        let retraced = event("A08", "202607141200", "NSTS02", VISIT);
        let p = patient_at(Some(&p), Some(later.time_ms), &retraced);
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
            let stored = patient_at(None, None, &first);
            let text = text_of(&stored);
            for (fields, pd1) in &variants {
                for when in ["202607140900", "202607141000", "202607141100"] {
                    let next = message(when, fields, pd1);
                    // Set before member times were kept, and since.
                    let legacy = legacy_times(Some(first.time_ms));
                    let kept = patient_after(None, &Times::default(), &first).1;
                    for times in [&legacy, &kept] {
                        let unchanged =
                            patient_unchanged(&stored, times, &next.patient, next.time_ms);
                        let built = patient_after(Some(&stored), times, &next).0;
                        let changes = rewrite(&text, &stored, &built).is_some();
                        assert!(
                            !(unchanged && changes),
                            "{first_fields:?} {first_pd1} then {fields:?} {pd1} at {when} ({times:?}): {built}"
                        );
                        if fields == first_fields && pd1 == first_pd1 {
                            assert!(unchanged, "a repeat of {fields:?} {pd1} at {when}");
                        }
                        shortcuts += usize::from(unchanged);
                    }
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
