//! Every identifier the store has ever indexed, as fingerprints: a lookup of
//! an identifier it has never had is answered without SQLite.
//!
//! An HL7 v2 A04 usually names a new patient and always a new visit. Both
//! lookups missed the cache and went to SQLite: a read transaction (a lock
//! on `-shm`), a B-tree descent through pages emptied from the reader's
//! cache by every commit (`pread`s), and nothing found. That was ~5% of the
//! gateway's time on the HL7 v2 bench (perf, 2026-11-24).
//!
//! The set holds a 32-bit fingerprint of each `(type, system, value)` of an
//! `identifier` row the store has had. An identifier whose fingerprint is
//! absent was never indexed, so no resource has it: that answer is exact. A
//! fingerprint present says only "maybe" (another identifier may share it,
//! or it was removed since), and the lookup goes to SQLite as before.
//!
//! Right only while every commit goes through this process's writer (a
//! store opened with [`super::SqliteStore::open_serving`], as the cache's
//! current entries are): the set is loaded from `idx_token` when the store
//! opens, before the writer starts, and the writer adds each identifier it
//! indexes before the commit that writes it. A reader that finds one absent
//! would not have found it in SQLite at that moment either.
//!
//! Cost, measured on a store of 1,000,000 identifiers (2026-11-24): the
//! gateway answered its first message 0.18 s later (0.30 s against 0.12 s),
//! and its RSS was 19 MB larger (33 against 14 MB), of which the set itself
//! is ~10 MB (a bucket of 5 bytes for every 0.5–0.9 identifiers). Past
//! [`MAX_IDENTIFIERS`] identifier rows the set is dropped and every lookup
//! goes to SQLite again.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use crate::fhir::ResourceType;

/// Most identifiers held (a set of 20–40 MB); a store with more looks
/// every identifier up in SQLite, as it did before the set.
pub const MAX_IDENTIFIERS: usize = 2_000_000;

/// A fingerprint of `(type, system, value)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(super) struct Fingerprint(u32);

/// Fingerprints of one process: keyed at random, so that which identifiers
/// share one cannot be chosen from outside.
pub(super) struct Fingerprints(RandomState);

impl Fingerprints {
    pub(super) fn new() -> Fingerprints {
        Fingerprints(RandomState::new())
    }

    pub(super) fn of(&self, ty: ResourceType, system: &str, value: &str) -> Fingerprint {
        let mut h = self.0.build_hasher();
        h.write(ty.as_str().as_bytes());
        h.write_u8(0xff);
        h.write(system.as_bytes());
        h.write_u8(0xff);
        h.write(value.as_bytes());
        Fingerprint(h.finish() as u32)
    }
}

/// The set's own hashing: a fingerprint is random already, and only needs
/// spreading over the high bits that hashbrown groups by.
#[derive(Default)]
struct Spread(u64);

impl Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// What the store has indexed, once loaded.
#[derive(Default)]
pub(super) struct Known {
    set: HashSet<Fingerprint, BuildHasherDefault<Spread>>,
    /// Loaded whole, and not past [`MAX_IDENTIFIERS`]: absent means never.
    complete: bool,
}

impl Known {
    /// The identifiers `rows` yields (one per index row the store has), or
    /// an incomplete set (answering nothing) if the rows are more than
    /// `max`, repeated fingerprints counted.
    pub(super) fn load(rows: impl IntoIterator<Item = Fingerprint>, max: usize) -> Known {
        let rows = rows.into_iter();
        let mut known = Known::default();
        known.set.reserve(rows.size_hint().0.min(max));
        for (n, fingerprint) in rows.enumerate() {
            if n >= max {
                return Known::default();
            }
            known.set.insert(fingerprint);
        }
        known.complete = true;
        known
    }

    /// Adds an identifier about to be indexed; past `max`, gives up.
    pub(super) fn add(&mut self, fingerprint: Fingerprint, max: usize) {
        if !self.complete {
            return;
        }
        if self.set.len() >= max && !self.set.contains(&fingerprint) {
            self.set = HashSet::default();
            self.complete = false;
            return;
        }
        self.set.insert(fingerprint);
    }

    /// Whether no resource has ever had the identifier.
    pub(super) fn never_had(&self, fingerprint: Fingerprint) -> bool {
        self.complete && !self.set.contains(&fingerprint)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identifier_never_added_is_never_had_and_one_added_is() {
        let prints = Fingerprints::new();
        let nhs = "https://fhir.nhs.uk/Id/nhs-number";
        let mut known = Known::load([prints.of(ResourceType::Patient, nhs, "9990000026")], 10);
        assert!(!known.never_had(prints.of(ResourceType::Patient, nhs, "9990000026")));
        assert!(known.never_had(prints.of(ResourceType::Patient, nhs, "9990000034")));
        // The type and the system are part of the identifier.
        assert!(known.never_had(prints.of(ResourceType::Encounter, nhs, "9990000026")));
        assert!(known.never_had(prints.of(ResourceType::Patient, "", "9990000026")));
        // Where one part ends and the next begins counts too.
        assert_ne!(
            prints.of(ResourceType::Patient, "ab", "c"),
            prints.of(ResourceType::Patient, "a", "bc")
        );
        known.add(prints.of(ResourceType::Patient, nhs, "9990000034"), 10);
        assert!(!known.never_had(prints.of(ResourceType::Patient, nhs, "9990000034")));
    }

    #[test]
    fn past_its_bound_the_set_answers_nothing() {
        let prints = Fingerprints::new();
        let of = |n: usize| prints.of(ResourceType::Patient, "s", &n.to_string());
        // Loaded past the bound: incomplete from the start, the rows
        // counted and not the distinct fingerprints (an identifier held by
        // two resources is two rows).
        let known = Known::load((0..5).map(of), 4);
        assert!(!known.never_had(of(99)));
        let known = Known::load([0, 0, 1, 2, 3].map(of), 4);
        assert!(!known.never_had(of(99)));
        let known = Known::load([0, 0, 1, 2].map(of), 4);
        assert!(known.never_had(of(99)));
        // Grown past it: given up, memory released.
        let mut known = Known::load((0..4).map(of), 4);
        assert!(known.never_had(of(99)));
        known.add(of(2), 4);
        assert!(known.never_had(of(99)), "one held already does not grow it");
        known.add(of(4), 4);
        assert!(!known.never_had(of(99)));
        assert_eq!(known.len(), 0);
        known.add(of(5), 4);
        assert_eq!(known.len(), 0, "an incomplete set stays empty");
    }

    #[test]
    fn a_store_s_identifiers_of_every_type_are_loaded_and_counted_by_row() {
        use super::super::{cache::Cache, known_identifiers, open_writer};
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&dir.path().join("gateway.sqlite")).unwrap();
        conn.execute_batch(
            "INSERT INTO idx_token(type, param, value, system, id) VALUES
             ('Patient', 'identifier', '9990000026', 'nhs', 'a'),
             ('Patient', 'identifier', '9990000026', 'nhs', 'b'),
             ('Encounter', 'identifier', 'V1', '', 'e'),
             ('Encounter', 'status', 'finished', 'status', 'e')",
        )
        .unwrap();
        let cache = Cache::new(8, true);
        let known = known_identifiers(&conn, &cache, 3).unwrap();
        let had = |ty, system, value| !known.never_had(cache.fingerprint(ty, system, value));
        assert!(had(ResourceType::Patient, "nhs", "9990000026"));
        assert!(had(ResourceType::Encounter, "", "V1"));
        assert!(!had(ResourceType::Patient, "nhs", "9990000034"));
        assert!(
            !had(ResourceType::Encounter, "status", "finished"),
            "identifiers only"
        );
        // Three identifier rows (one identifier on two patients): past a
        // bound of two, the set answers nothing.
        let known = known_identifiers(&conn, &cache, 2).unwrap();
        assert!(!known.never_had(cache.fingerprint(ResourceType::Patient, "nhs", "9990000034")));
    }

    #[test]
    fn an_empty_store_has_had_nothing() {
        let prints = Fingerprints::new();
        let known = Known::load(std::iter::empty(), 4);
        assert!(known.never_had(prints.of(ResourceType::Encounter, "s", "v")));
        assert!(!Known::default().never_had(prints.of(ResourceType::Encounter, "s", "v")));
    }
}
