//! Hash maps and sets for the gateway's own lookups (stored versions, the
//! store's cache, patients' facts, profiles, value sets): std's `HashMap` and
//! `HashSet` hashed with foldhash instead of SipHash, which was about 2.5% of
//! the instructions of an HL7 v2 message. Like std's, each map's hasher is
//! seeded at random per process, so keys a sender chooses (identifiers) cannot
//! be made to collide from outside without knowing the seed.
//!
//! Build them with `default()` (or `with_capacity_and_hasher`), as `new()`
//! exists only for std's own hasher.

/// A `HashMap` hashed with foldhash.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` hashed with foldhash.
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
