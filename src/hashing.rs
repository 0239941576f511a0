//! Hash maps and sets for the gateway's own lookups (stored versions, the
//! store's cache, patients' facts, profiles, value sets): std's `HashMap` and
//! `HashSet` hashed with foldhash instead of SipHash, which was about 2.5% of
//! the instructions of an HL7 v2 message.
//!
//! Some are keyed by what senders choose (identifiers, fullUrls), so the seed
//! must not be guessable: foldhash's own, built without its `std` feature as
//! here, comes from a few addresses only (predictable without address-space
//! randomisation). [`Seeded`] seeds foldhash from std's `RandomState` instead,
//! whose keys come from the operating system's random source, once per
//! process. foldhash still claims no more than "minimal" resistance to an
//! attacker who can watch timings interactively.
//!
//! Build them with `default()` (or `with_capacity_and_hasher`), as `new()`
//! exists only for std's own hasher.

use foldhash::SharedSeed;
use foldhash::fast::{FoldHasher, SeedableRandomState};
use std::hash::BuildHasher;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A `HashMap` hashed with foldhash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, Seeded>;

/// A `HashSet` hashed with foldhash.
pub type FastSet<T> = std::collections::HashSet<T, Seeded>;

/// The process's foldhash seed, from the operating system's random source
/// (through std's `RandomState`).
static SHARED: LazyLock<SharedSeed> = LazyLock::new(|| {
    SharedSeed::from_u64(std::hash::RandomState::new().hash_one(0x9e37_79b9_7f4a_7c15_u64))
});

/// foldhash with the process's random seed; each map gets its own
/// per-map seed on top of it.
#[derive(Clone, Debug)]
pub struct Seeded(SeedableRandomState);

impl Default for Seeded {
    fn default() -> Seeded {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Seeded(SeedableRandomState::with_seed(
            NEXT.fetch_add(1, Ordering::Relaxed),
            &SHARED,
        ))
    }
}

impl BuildHasher for Seeded {
    type Hasher = FoldHasher<'static>;

    fn build_hasher(&self) -> FoldHasher<'static> {
        self.0.build_hasher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_hash_as_maps_do() {
        // Equal keys hash equally within a map; the seed is not the fixed one.
        let state = Seeded::default();
        assert_eq!(state.hash_one("9434765919"), state.hash_one("9434765919"));
        assert_ne!(state.hash_one("9434765919"), state.hash_one("9434765910"));
        let fixed = SeedableRandomState::fixed();
        assert_ne!(state.hash_one("x"), fixed.hash_one("x"));
        let mut map: FastMap<String, i32> = FastMap::default();
        map.insert("a".into(), 1);
        map.insert("b".into(), 2);
        assert_eq!(
            (map.get("a"), map.get("b"), map.get("c")),
            (Some(&1), Some(&2), None)
        );
    }
}
