//! The index rows of a resource's current version, kept beside it in
//! `current.keys` (schema 6). An update diffs the new rows against these and
//! deletes and inserts exactly the difference, so the index tables need no
//! second B-tree ordered by owner: each row written to `idx_token` or
//! `idx_ref` is one B-tree insert, not two or three.
//!
//! Stored as JSON, `{"t":[[param,value,system]…],"r":[[param,target_id,
//! target_type]…],"d":[[param,lo,hi]…]}` (empty lists left out), which
//! SQLite's JSON functions can also build (the schema 6 upgrade does, from
//! the index tables).

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Keys {
    #[serde(rename = "t", default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<(String, String, String)>,
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<(String, String, String)>,
    #[serde(rename = "d", default, skip_serializing_if = "Vec::is_empty")]
    pub dates: Vec<(String, i64, i64)>,
}

impl Keys {
    /// Sorted and without repeats: the rows as the index tables hold them.
    pub fn normalised(mut self) -> Self {
        self.tokens.sort();
        self.tokens.dedup();
        self.refs.sort();
        self.refs.dedup();
        self.dates.sort();
        self.dates.dedup();
        self
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("strings and integers serialise")
    }

    /// `None` for a store row written before schema 6 that the upgrade did
    /// not reach, or a damaged value: the caller then treats every row as new.
    pub fn decode(text: &str) -> Option<Self> {
        serde_json::from_str::<Keys>(text)
            .ok()
            .map(Keys::normalised)
    }
}

/// The items of `a` not in `b`; both sorted.
pub(super) fn missing_from<'a, T: Ord>(a: &'a [T], b: &[T]) -> impl Iterator<Item = &'a T> {
    a.iter().filter(move |x| b.binary_search(x).is_err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_what_sqlite_json_functions_build() {
        let keys = Keys {
            tokens: vec![(
                "identifier".into(),
                "9434765919".into(),
                "https://fhir.nhs.uk/Id/nhs-number".into(),
            )],
            refs: vec![("subject".into(), "p1".into(), "Patient".into())],
            dates: vec![("date".into(), -5, 1_700_000_000_000)],
        };
        assert_eq!(Keys::decode(&keys.encode()), Some(keys.clone()));
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let built: String = conn
            .query_row(
                "SELECT json_object('t', json_array(json_array('identifier', '9434765919', 'https://fhir.nhs.uk/Id/nhs-number')), \
                 'r', json_array(json_array('subject', 'p1', 'Patient')), \
                 'd', json_array(json_array('date', -5, 1700000000000)))",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(Keys::decode(&built), Some(keys));
        assert_eq!(Keys::decode("not json"), None);
    }

    #[test]
    fn repeats_collapse_and_differences_are_exact() {
        let a = Keys {
            dates: vec![
                ("date".into(), 2, 3),
                ("date".into(), 2, 3),
                ("date".into(), 1, 2),
            ],
            ..Keys::default()
        }
        .normalised();
        assert_eq!(a.dates, [("date".into(), 1, 2), ("date".into(), 2, 3)]);
        let b = Keys {
            dates: vec![("date".into(), 2, 3)],
            ..Keys::default()
        }
        .normalised();
        assert_eq!(
            missing_from(&a.dates, &b.dates).collect::<Vec<_>>(),
            [&("date".to_string(), 1, 2)]
        );
        assert_eq!(missing_from(&b.dates, &a.dates).count(), 0);
    }
}
