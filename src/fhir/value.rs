//! Member lookups on `serde_json::Value` that compare names instead of
//! hashing them.
//!
//! serde_json's objects (with `preserve_order`, an `IndexMap` keyed with
//! std's SipHash, whose hasher serde_json does not let a caller choose) hash
//! the key of every lookup: about 180 instructions, where a FHIR object's few
//! names (a Coding has two to five) are compared for a fraction of that. The
//! hot paths (index rows, HL7 v2 state, validator shortcuts) look members up
//! with [`Members::member`] and [`Members::at`] instead of `get` and `[]`.

use serde_json::{Map, Value};

/// Objects with at most this many members are searched in order (a
/// resource's top level included); larger ones by hash, as `get` does.
const SCANNED: usize = 16;

static NULL: Value = Value::Null;

/// Member lookups by name.
pub trait Members {
    /// The member `key`, as `get` finds it.
    fn member(&self, key: &str) -> Option<&Value>;

    /// The member `key`, or `null` when there is none (or this is not an
    /// object), as `value[key]` gives it.
    fn at(&self, key: &str) -> &Value {
        self.member(key).unwrap_or(&NULL)
    }
}

/// The member `key` of `object` with its stored name, as `get_key_value`
/// finds it.
pub fn entry<'a>(object: &'a Map<String, Value>, key: &str) -> Option<(&'a String, &'a Value)> {
    if object.len() <= SCANNED {
        object.iter().find(|(k, _)| k.as_str() == key)
    } else {
        object.get_key_value(key)
    }
}

impl Members for Map<String, Value> {
    fn member(&self, key: &str) -> Option<&Value> {
        entry(self, key).map(|(_, v)| v)
    }
}

impl Members for Value {
    fn member(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(object) => object.member(key),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_what_get_and_index_find() {
        // Objects on both sides of the scanned size, and values that are not
        // objects.
        let mut wide = Map::new();
        for n in 0..=SCANNED + 2 {
            wide.insert(format!("m{n}"), json!(n));
        }
        let values = [
            json!({}),
            json!({"system": "s", "value": "v"}),
            json!({"a": 1, "ab": 2, "b": null, "ba": [3]}),
            Value::Object(wide),
            json!([{"a": 1}]),
            json!("a"),
            json!(null),
        ];
        let keys = [
            "", "a", "ab", "b", "ba", "system", "value", "m0", "m9", "m10", "m11",
        ];
        for value in &values {
            for key in keys {
                assert_eq!(value.member(key), value.get(key), "{value} {key:?}");
                assert_eq!(value.at(key), &value[key], "{value} {key:?}");
                if let Value::Object(object) = value {
                    assert_eq!(object.member(key), object.get(key), "{value} {key:?}");
                    assert_eq!(entry(object, key), object.get_key_value(key));
                }
            }
        }
    }
}
