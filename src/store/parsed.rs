//! Recently parsed resource versions, shared between the feeds and the
//! router.
//!
//! A version's body never changes, so its parse can be kept: an HL7 v2
//! visit's A04, A08 and A03 each read the same Patient version, and the
//! router reads every new version once more. Parsing stored JSON was a tenth
//! of the HL7 v2 feed's CPU; with this, each version is parsed at most once,
//! and not at all when the feed that wrote it hands over the value it
//! built ([`ParsedVersions::remember`]).
//!
//! A small first-in first-out table, one entry per resource (its latest
//! version parsed), bounded by count and by the text behind it, so a long
//! list of patients read once each does not grow it, nor do large bodies.

use super::Stored;
use crate::fhir::ResourceType;
use crate::fhir::datetime::format_instant;
use crate::hashing::FastMap;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Resources kept. A parsed Patient or Encounter takes a few KiB; 512
/// cover a feed's recent patients and visits for ~2 MiB.
pub const CAPACITY: usize = 512;
/// Most JSON text behind the values kept (a parsed value takes a few times
/// its text): a store of large resources keeps fewer.
pub const BUDGET_BYTES: usize = 2 * 1024 * 1024;
/// A body larger than this is parsed each time, not kept.
const LARGEST_KEPT: usize = 64 * 1024;

type Key = (ResourceType, Box<str>);

/// A version is named by its version number and commit time together:
/// only a committed version is ever read, and no two commits of one
/// resource share both.
struct Entry {
    version: i64,
    last_updated_ms: i64,
    bytes: usize,
    value: Arc<Value>,
}

#[derive(Default)]
pub struct ParsedVersions {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By type, then id: found by a borrowed id.
    entries: FastMap<ResourceType, FastMap<Box<str>, Entry>>,
    /// Keys in the order they came in, oldest first.
    order: VecDeque<Key>,
    /// The text length of the values kept.
    bytes: usize,
}

impl Inner {
    fn get(&self, ty: ResourceType, id: &str) -> Option<&Entry> {
        self.entries.get(&ty)?.get(id)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.values().map(FastMap::len).sum()
    }
}

impl ParsedVersions {
    /// `stored`'s body parsed; `None` when it is not JSON.
    pub fn get(&self, stored: &Stored) -> Option<Arc<Value>> {
        if let Some(entry) = self.lock().get(stored.resource_type, &stored.id)
            && entry.version == stored.version
            && entry.last_updated_ms == stored.last_updated_ms
        {
            return Some(entry.value.clone());
        }
        // Parsed outside the lock: another thread may parse the same
        // version meanwhile, and both keep an equal value.
        let value = Arc::new(serde_json::from_str::<Value>(&stored.body).ok()?);
        self.keep(stored, value.clone());
        Some(value)
    }

    /// Keeps `planned`, the value a writer stored as `stored` (its members
    /// in the stored order; `id` and `meta`'s `versionId` and `lastUpdated`
    /// set by the store), as `stored` parsed: the next read of that version
    /// needs no parse.
    pub fn remember(&self, stored: &Stored, planned: Value) {
        let Value::Object(mut parsed) = planned else {
            return;
        };
        // As `resource::assemble` writes it: `resourceType`, `id`, `meta`
        // (`versionId`, `lastUpdated`, then what the writer sent), then the
        // other members in their order. Set in place when the three lead
        // already (an update planned on a stored version), else moved in
        // place: building a new map hashed every member's name again, and
        // each move shifts every member after it.
        let mut lead = parsed.iter_mut();
        match (lead.next(), lead.next(), lead.next()) {
            (Some((k0, ty)), Some((k1, id)), Some((k2, meta)))
                if k0 == "resourceType" && k1 == "id" && k2 == "meta" =>
            {
                *ty = stored.resource_type.as_str().into();
                *id = stored.id.clone().into();
                *meta = stored_meta(stored, std::mem::take(meta));
            }
            _ => {
                let sent = parsed.shift_remove("meta").unwrap_or_default();
                parsed.shift_remove("resourceType");
                parsed.shift_remove("id");
                parsed.shift_insert(
                    0,
                    "resourceType".into(),
                    stored.resource_type.as_str().into(),
                );
                parsed.shift_insert(1, "id".into(), stored.id.clone().into());
                parsed.shift_insert(2, "meta".into(), stored_meta(stored, sent));
            }
        }
        let parsed = Value::Object(parsed);
        debug_assert_eq!(
            parsed.to_string(),
            serde_json::from_str::<Value>(&stored.body)
                .map(|v| v.to_string())
                .unwrap_or_default(),
            "a remembered value differs from its stored body"
        );
        self.keep(stored, Arc::new(parsed));
    }

    fn keep(&self, stored: &Stored, value: Arc<Value>) {
        let bytes = stored.body.len();
        if bytes > LARGEST_KEPT {
            return;
        }
        let key: Key = (stored.resource_type, stored.id.as_str().into());
        let entry = Entry {
            version: stored.version,
            last_updated_ms: stored.last_updated_ms,
            bytes,
            value,
        };
        // The values let go are dropped after the lock is released: freeing
        // a parsed resource's many allocations, long cold, was most of the
        // time spent holding it (perf, HL7 v2 bench).
        let mut gone = Vec::new();
        let mut inner = self.lock();
        let of_type = inner.entries.entry(stored.resource_type).or_default();
        match of_type.get_mut(stored.id.as_str()) {
            // Never replace a later version with an earlier one.
            Some(kept) if kept.version > stored.version => gone.push(entry),
            Some(kept) => {
                let was = std::mem::replace(kept, entry);
                inner.bytes = inner.bytes - was.bytes + bytes;
                gone.push(was);
            }
            None => {
                of_type.insert(key.1.clone(), entry);
                inner.order.push_back(key);
                inner.bytes += bytes;
            }
        }
        while inner.order.len() > CAPACITY || inner.bytes > BUDGET_BYTES {
            let Some((ty, id)) = inner.order.pop_front() else {
                break;
            };
            if let Some(evicted) = inner.entries.get_mut(&ty).and_then(|m| m.remove(&id)) {
                inner.bytes -= evicted.bytes;
                gone.push(evicted);
            }
        }
        drop(inner);
        drop(gone);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding it leaves nothing half-done.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `meta` as the store writes it: `versionId` and `lastUpdated` first, then
/// what the writer `sent` (an object, or nothing) but those two.
fn stored_meta(stored: &Stored, sent: Value) -> Value {
    let mut meta = Map::new();
    meta.insert("versionId".into(), stored.version.to_string().into());
    meta.insert(
        "lastUpdated".into(),
        format_instant(stored.last_updated_ms).into(),
    );
    if let Value::Object(sent) = sent {
        meta.extend(
            sent.into_iter()
                .filter(|(k, _)| k != "versionId" && k != "lastUpdated"),
        );
    }
    Value::Object(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, version: i64, body: &str) -> Stored {
        Stored {
            resource_type: ResourceType::Patient,
            id: id.to_string(),
            version,
            last_updated_ms: 1_000 + version,
            body: body.to_string(),
        }
    }

    #[test]
    fn a_version_is_parsed_once_and_a_new_version_again() {
        let memo = ParsedVersions::default();
        let v1 = stored("p", 1, r#"{"resourceType":"Patient","gender":"female"}"#);
        let first = memo.get(&v1).unwrap();
        let again = memo.get(&v1).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second read shares the parse"
        );
        let v2 = stored("p", 2, r#"{"resourceType":"Patient","gender":"male"}"#);
        assert_eq!(memo.get(&v2).unwrap()["gender"], "male");
        // An older version read late is parsed, not taken for the newer.
        assert_eq!(memo.get(&v1).unwrap()["gender"], "female");
        assert_eq!(memo.get(&v2).unwrap()["gender"], "male");
        assert!(memo.get(&stored("q", 1, "not json")).is_none());
    }

    #[test]
    fn it_keeps_at_most_its_capacity() {
        let memo = ParsedVersions::default();
        for i in 0..CAPACITY + 10 {
            memo.get(&stored(&format!("p{i}"), 1, "{}")).unwrap();
        }
        let inner = memo.lock();
        assert_eq!(inner.len(), CAPACITY);
        assert_eq!(inner.order.len(), CAPACITY);
        assert!(inner.get(ResourceType::Patient, "p0").is_none());
        assert!(inner.get(ResourceType::Patient, "p10").is_some());
    }

    #[test]
    fn it_keeps_at_most_its_budget_of_text_and_no_large_body() {
        let memo = ParsedVersions::default();
        let body = format!(r#"{{"text":"{}"}}"#, "x".repeat(60 * 1024));
        for i in 0..100 {
            memo.get(&stored(&format!("p{i}"), 1, &body)).unwrap();
        }
        {
            let inner = memo.lock();
            assert!(inner.bytes <= BUDGET_BYTES, "{}", inner.bytes);
            assert_eq!(inner.bytes, inner.len() * body.len());
            assert_eq!(inner.len(), BUDGET_BYTES / body.len());
        }
        let large = format!(r#"{{"text":"{}"}}"#, "x".repeat(LARGEST_KEPT));
        let value = memo.get(&stored("big", 1, &large)).unwrap();
        assert_eq!(value["text"].as_str().unwrap().len(), LARGEST_KEPT);
        assert!(memo.lock().get(ResourceType::Patient, "big").is_none());
    }

    #[test]
    fn a_remembered_value_reads_as_its_stored_body() {
        let memo = ParsedVersions::default();
        let mut version = stored(
            "p",
            3,
            r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"3","lastUpdated":"1970-01-01T00:00:01.003Z","profile":["http://x/p"]},"gender":"female","birthDate":"1938-03-05"}"#,
        );
        version.last_updated_ms = 1_003;
        let planned = serde_json::json!({
            "resourceType": "Patient",
            "meta": {"versionId": "2", "profile": ["http://x/p"]},
            "gender": "female",
            "birthDate": "1938-03-05"
        });
        memo.remember(&version, planned);
        let value = memo.get(&version).unwrap();
        let parsed: Value = serde_json::from_str(&version.body).unwrap();
        assert_eq!(value.to_string(), parsed.to_string());
        assert!(Arc::ptr_eq(&value, &memo.get(&version).unwrap()));
    }

    #[test]
    fn a_remembered_value_is_put_in_stored_order_whatever_the_planned_order() {
        let memo = ParsedVersions::default();
        // No `meta` at all, and `resourceType` and `id` after other members.
        let mut version = stored(
            "q",
            1,
            r#"{"resourceType":"Patient","id":"q","meta":{"versionId":"1","lastUpdated":"1970-01-01T00:00:02.000Z"},"gender":"male","birthDate":"1940-01-01"}"#,
        );
        version.last_updated_ms = 2_000;
        let planned = serde_json::json!({
            "gender": "male",
            "id": "old",
            "birthDate": "1940-01-01",
            "resourceType": "Patient"
        });
        memo.remember(&version, planned);
        let value = memo.get(&version).unwrap();
        let parsed: Value = serde_json::from_str(&version.body).unwrap();
        assert_eq!(value.to_string(), parsed.to_string());
    }
}
