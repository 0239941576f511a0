//! The current versions of recently written and read resources, in memory.
//!
//! A reader's page cache is emptied whenever any other connection commits,
//! so under steady writes every SQLite read starts cold; and each read
//! transaction takes the WAL read lock (an `fcntl` on `-shm`). This cache
//! skips both for the resources in it. It is filled by the writer with every
//! commit (a bulk job's writes are taken out instead: a GP list's chunk,
//! thousands of resources rarely read soon after), and by readers with what
//! they read while nothing was committed.
//!
//! It holds, for recent resources, the current version, and the event clock
//! (`current.event_ms` and `member_ms`) when known; and for recent
//! identifiers (`system`, `value`, of a type), every current resource that
//! has it, as `idx_token` does. Two uses, with different guarantees:
//! - **By version** ([`Cache::version`]): a version's body never changes, so
//!   an entry for `(type, id, version)` is right whatever happened since.
//!   Readers that learn a current version from SQLite take its body from here.
//! - **Current** ([`Cache::current`], [`Cache::lookup`]): a read by id or by
//!   identifier answered without SQLite. Only right if every commit to the
//!   store goes through this process's writer, which publishes each before
//!   answering it: a store opened with
//!   [`super::SqliteStore::open_serving`], which holds the data directory's
//!   lock so that no other gateway writes beside it.

use super::known::{Fingerprint, Fingerprints, Known, MAX_IDENTIFIERS};
use crate::fhir::ResourceType;
use crate::hashing::FastMap;
use crate::store::{Clock, Stored};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Identifiers kept, per resource kept.
const TOKENS_PER_RESOURCE: usize = 2;

/// Most resources an identifier kept may have: one that more have is not
/// kept (every write changing it would read all its holders again).
pub(super) const MAX_HOLDERS: usize = 64;

type Key = (ResourceType, Box<str>);

/// An identifier of a type: `(type, system, value)`.
pub(super) type TokenKey = (ResourceType, Box<str>, Box<str>);

/// What one commit changed, in the order the writer made the changes.
#[derive(Default)]
pub(super) struct Published {
    /// New versions.
    pub versions: Vec<Stored>,
    /// Identifiers some write added or removed, each with every current
    /// resource that has it after that write (as the writer's transaction
    /// saw it), or `None` when too many have it to keep.
    pub tokens: Vec<(TokenKey, Option<Vec<String>>)>,
    /// Event clocks set, as they stand after the update.
    pub clocks: Vec<(ResourceType, String, Option<Clock>)>,
    /// Resources with a new version that is not kept: taken out.
    pub forgotten: Vec<(ResourceType, String)>,
}

impl Published {
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
            && self.tokens.is_empty()
            && self.clocks.is_empty()
            && self.forgotten.is_empty()
    }

    /// How far each list has grown, to cut it back to with [`Published::truncate`].
    pub fn mark(&self) -> [usize; 4] {
        [
            self.versions.len(),
            self.tokens.len(),
            self.clocks.len(),
            self.forgotten.len(),
        ]
    }

    pub fn truncate(&mut self, [versions, tokens, clocks, forgotten]: [usize; 4]) {
        self.versions.truncate(versions);
        self.tokens.truncate(tokens);
        self.clocks.truncate(clocks);
        self.forgotten.truncate(forgotten);
    }

    pub fn clear(&mut self) {
        self.truncate([0; 4]);
    }
}

pub(super) struct Cache {
    inner: Mutex<Inner>,
    /// Whether [`Cache::current`] and [`Cache::lookup`] may answer.
    exact: AtomicBool,
    /// Whether anything is kept at all (a capacity above 0).
    keeps: bool,
    prints: Fingerprints,
}

struct Entry {
    stored: Arc<Stored>,
    /// `None`: not known here (read from SQLite when needed).
    clock: Option<Option<Clock>>,
}

struct Inner {
    /// Counts the writer's commits: a reader's fill is refused if one
    /// happened since its read began.
    epoch: u64,
    entries: FastMap<ResourceType, FastMap<Box<str>, Entry>>,
    len: usize,
    order: VecDeque<Key>,
    capacity: usize,
    tokens: FastMap<TokenKey, Vec<Box<str>>>,
    token_order: VecDeque<TokenKey>,
    /// Every identifier the store has had ([`super::known`]), once loaded.
    known: Known,
}

/// A resource found by [`Cache::lookup`], with its event clock.
pub(super) type Found = (Stored, Option<Clock>);

impl Cache {
    pub(super) fn new(capacity: usize, exact: bool) -> Cache {
        Cache {
            inner: Mutex::new(Inner {
                epoch: 0,
                entries: FastMap::default(),
                len: 0,
                order: VecDeque::new(),
                capacity,
                tokens: FastMap::default(),
                token_order: VecDeque::new(),
                known: Known::default(),
            }),
            exact: AtomicBool::new(exact),
            keeps: capacity > 0,
            prints: Fingerprints::new(),
        }
    }

    pub(super) fn fingerprint(&self, ty: ResourceType, system: &str, value: &str) -> Fingerprint {
        self.prints.of(ty, system, value)
    }

    /// Takes every identifier the store has (loaded before its writer
    /// starts): from now on one never had is looked up here.
    pub(super) fn set_known(&self, known: Known) {
        self.lock().known = known;
    }

    /// Whether no resource of `ty` has ever had the identifier `system|value`
    /// (exact for the writer, which adds each it indexes; see [`super::known`]).
    pub(super) fn never_had(&self, ty: ResourceType, system: &str, value: &str) -> bool {
        if !self.is_exact() {
            return false;
        }
        let fingerprint = self.fingerprint(ty, system, value);
        self.lock().known.never_had(fingerprint)
    }

    /// The writer is about to index `ty`'s identifier `system|value` (before
    /// the commit that writes it: a reader never finds absent here what it
    /// would have found in SQLite).
    pub(super) fn indexing(&self, ty: ResourceType, system: &str, value: &str) {
        let fingerprint = self.fingerprint(ty, system, value);
        self.lock().known.add(fingerprint, MAX_IDENTIFIERS);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves no half-made entry (each
        // change is one insert or remove), so a poisoned lock is still good.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_exact(&self) -> bool {
        self.exact.load(Ordering::Acquire)
    }

    /// Whether lookups by identifier are answered here (and the writer
    /// should publish the identifiers it changes).
    pub(super) fn keeps_lookups(&self) -> bool {
        self.keeps && self.is_exact()
    }

    /// The current version of `ty/id`, when this process writes the store
    /// alone and has it.
    pub(super) fn current(&self, ty: ResourceType, id: &str) -> Option<Arc<Stored>> {
        if !self.is_exact() {
            return None;
        }
        self.lock().get(ty, id).map(|e| e.stored.clone())
    }

    /// Version `version` of `ty/id`, if it is the one held.
    pub(super) fn version(&self, ty: ResourceType, id: &str, version: i64) -> Option<Arc<Stored>> {
        self.lock()
            .get(ty, id)
            .filter(|e| e.stored.version == version)
            .map(|e| e.stored.clone())
    }

    /// For each `(type, identifiers)`, the current resources with any of the
    /// identifiers (each once, in the order found) with their event clocks:
    /// all from one commit's state, or `None` unless this process writes
    /// the store alone and every identifier, resource and clock is held.
    pub(super) fn lookup(
        &self,
        lookups: &[(ResourceType, &[(String, String)])],
    ) -> Option<Vec<Vec<Found>>> {
        if !self.is_exact() {
            return None;
        }
        let inner = self.lock();
        let mut out = Vec::with_capacity(lookups.len());
        for (ty, keys) in lookups {
            let mut found: Vec<Found> = Vec::new();
            for (system, value) in keys.iter() {
                let key: TokenKey = (*ty, system.as_str().into(), value.as_str().into());
                let Some(ids) = inner.tokens.get(&key) else {
                    // Not held, but never had by any resource: none has it.
                    if inner.known.never_had(self.fingerprint(*ty, system, value)) {
                        continue;
                    }
                    return None;
                };
                for id in ids {
                    if found.iter().any(|(s, _)| s.id.as_str() == &**id) {
                        continue;
                    }
                    let entry = inner.get(*ty, id)?;
                    found.push((Stored::clone(&entry.stored), entry.clock.clone()?));
                }
            }
            out.push(found);
        }
        Some(out)
    }

    /// Stops answering from memory (the store is closing; a writer
    /// elsewhere may follow).
    pub(super) fn stop_current(&self) {
        self.exact.store(false, Ordering::Release);
    }

    /// To be read before a reader's transaction begins, and given to
    /// [`Cache::fill`] after it.
    pub(super) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Keeps what a reader read, unless the writer has committed since
    /// `epoch` (it may be older than what is current now) or the entry is
    /// held already.
    pub(super) fn fill(&self, epoch: u64, stored: &Stored) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        if inner.get(stored.resource_type, &stored.id).is_none() {
            inner.insert(Arc::new(stored.clone()), None);
        }
    }

    /// Keeps what a reader's lookup by identifier read (`found[i]` for
    /// `lookups[i]`, complete), unless the writer has committed since
    /// `epoch`.
    pub(super) fn fill_lookup(
        &self,
        epoch: u64,
        lookups: &[(ResourceType, &[(String, String)])],
        found: &[Vec<Found>],
        // For each lookup, for each identifier, the ids that have it.
        holders: &[Vec<Vec<String>>],
    ) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        for (((ty, keys), found), holders) in lookups.iter().zip(found).zip(holders) {
            for (stored, clock) in found {
                inner.insert(Arc::new(stored.clone()), Some(clock.clone()));
            }
            for ((system, value), ids) in keys.iter().zip(holders) {
                if ids.len() <= MAX_HOLDERS {
                    inner.set_token((*ty, system.as_str().into(), value.as_str().into()), ids);
                }
            }
        }
    }

    /// The writer's commit, published before it answers anyone.
    pub(super) fn publish(&self, published: Published) {
        let mut inner = self.lock();
        inner.epoch += 1;
        for stored in published.versions {
            // A new resource has no event clock yet; a new version leaves it
            // as it was. (Resources are never deleted, so version 1 is new.)
            let clock = if stored.version == 1 {
                Some(None)
            } else {
                inner
                    .get(stored.resource_type, &stored.id)
                    .and_then(|e| e.clock.clone())
            };
            inner.insert(Arc::new(stored), clock);
        }
        for (key, ids) in published.tokens {
            match ids {
                Some(ids) => inner.set_token(key, &ids),
                None => {
                    inner.tokens.remove(&key);
                }
            }
        }
        for (ty, id) in published.forgotten {
            if let Some(of_type) = inner.entries.get_mut(&ty)
                && of_type.remove(id.as_str()).is_some()
            {
                inner.len -= 1;
            }
        }
        for (ty, id, clock) in published.clocks {
            if let Some(entry) = inner
                .entries
                .get_mut(&ty)
                .and_then(|m| m.get_mut(id.as_str()))
            {
                entry.clock = Some(clock);
            }
        }
    }
}

impl Inner {
    fn get(&self, ty: ResourceType, id: &str) -> Option<&Entry> {
        self.entries.get(&ty)?.get(id)
    }

    /// Holds `stored` as current, replacing what was; `clock` as given.
    /// The oldest inserted goes first once `capacity` are held.
    fn insert(&mut self, stored: Arc<Stored>, clock: Option<Option<Clock>>) {
        if self.capacity == 0 {
            return;
        }
        let key: Key = (stored.resource_type, stored.id.as_str().into());
        let of_type = self.entries.entry(key.0).or_default();
        if of_type
            .insert(key.1.clone(), Entry { stored, clock })
            .is_some()
        {
            return;
        }
        self.len += 1;
        self.order.push_back(key);
        while self.len > self.capacity {
            let Some((ty, id)) = self.order.pop_front() else {
                break;
            };
            if let Some(of_type) = self.entries.get_mut(&ty)
                && of_type.remove(&id).is_some()
            {
                self.len -= 1;
            }
        }
    }

    fn set_token(&mut self, key: TokenKey, ids: &[String]) {
        if self.capacity == 0 {
            return;
        }
        let ids = ids.iter().map(|id| id.as_str().into()).collect();
        if self.tokens.insert(key.clone(), ids).is_some() {
            return;
        }
        self.token_order.push_back(key);
        while self.tokens.len() > self.capacity * TOKENS_PER_RESOURCE {
            let Some(old) = self.token_order.pop_front() else {
                break;
            };
            self.tokens.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(event_ms: i64) -> Clock {
        Clock {
            event_ms,
            members: None,
        }
    }

    fn stored(id: &str, version: i64) -> Stored {
        Stored {
            resource_type: ResourceType::Patient,
            id: id.into(),
            version,
            last_updated_ms: version,
            body: format!("{{\"v\":{version}}}"),
        }
    }

    fn versions(list: Vec<Stored>) -> Published {
        Published {
            versions: list,
            ..Published::default()
        }
    }

    fn token(value: &str) -> TokenKey {
        (ResourceType::Patient, "sys".into(), value.into())
    }

    #[test]
    fn a_fill_after_a_commit_is_refused() {
        let cache = Cache::new(8, true);
        let epoch = cache.epoch();
        cache.publish(versions(vec![stored("a", 2)]));
        cache.fill(epoch, &stored("a", 1));
        cache.fill(epoch, &stored("b", 1));
        assert_eq!(
            cache.current(ResourceType::Patient, "a").unwrap().version,
            2
        );
        assert!(cache.current(ResourceType::Patient, "b").is_none());
        let epoch = cache.epoch();
        cache.fill(epoch, &stored("b", 1));
        assert_eq!(
            cache.current(ResourceType::Patient, "b").unwrap().version,
            1
        );
        // A fill never replaces what the writer published.
        cache.fill(epoch, &stored("a", 1));
        assert_eq!(
            cache.current(ResourceType::Patient, "a").unwrap().version,
            2
        );
    }

    #[test]
    fn versions_are_matched_and_the_oldest_entries_go_first() {
        let cache = Cache::new(2, false);
        cache.publish(versions(vec![stored("a", 1), stored("b", 1)]));
        assert!(
            cache.current(ResourceType::Patient, "a").is_none(),
            "not exact"
        );
        assert!(cache.version(ResourceType::Patient, "a", 1).is_some());
        assert!(cache.version(ResourceType::Patient, "a", 2).is_none());
        cache.publish(versions(vec![stored("a", 2)]));
        assert!(cache.version(ResourceType::Patient, "a", 2).is_some());
        cache.publish(versions(vec![stored("c", 1)]));
        assert!(cache.version(ResourceType::Patient, "a", 2).is_none());
        assert!(cache.version(ResourceType::Patient, "b", 1).is_some());
        assert!(cache.version(ResourceType::Patient, "c", 1).is_some());
    }

    #[test]
    fn an_identifier_the_store_never_had_is_answered_here() {
        let cache = Cache::new(8, true);
        let keys = [("sys".to_string(), "new".to_string())];
        let lookups = [(ResourceType::Patient, &keys[..])];
        assert!(
            cache.lookup(&lookups).is_none(),
            "the store's set not loaded"
        );
        let had = cache.fingerprint(ResourceType::Patient, "sys", "old");
        cache.set_known(Known::load([had], MAX_IDENTIFIERS));
        let found = cache.lookup(&lookups).expect("never had: answered here");
        assert_eq!(found, vec![Vec::<Found>::new()]);
        let old = [("sys".to_string(), "old".to_string())];
        assert!(
            cache.lookup(&[(ResourceType::Patient, &old[..])]).is_none(),
            "had once: SQLite knows who has it"
        );
        // Indexed by the writer (before its commit): SQLite is asked again.
        cache.indexing(ResourceType::Patient, "sys", "new");
        assert!(cache.lookup(&lookups).is_none());
        // Beside an identifier held, in one lookup.
        cache.publish(Published {
            versions: vec![stored("a", 1)],
            tokens: vec![(token("1"), Some(vec!["a".into()]))],
            clocks: vec![(ResourceType::Patient, "a".into(), Some(at(5)))],
            forgotten: vec![],
        });
        let keys = [
            ("sys".to_string(), "1".to_string()),
            ("sys".to_string(), "other".to_string()),
        ];
        let found = cache.lookup(&[(ResourceType::Patient, &keys[..])]).unwrap();
        assert_eq!(found[0].len(), 1);
        assert_eq!(found[0][0].0.id, "a");
        // Not for a store another process may write.
        let shared = Cache::new(8, false);
        shared.set_known(Known::load([], MAX_IDENTIFIERS));
        assert!(shared.lookup(&lookups).is_none());
    }

    #[test]
    fn a_lookup_answers_only_when_every_identifier_resource_and_clock_is_held() {
        let cache = Cache::new(8, true);
        let keys = [
            ("sys".to_string(), "1".to_string()),
            ("sys".to_string(), "2".to_string()),
        ];
        let lookups = [(ResourceType::Patient, &keys[..])];
        cache.publish(Published {
            versions: vec![stored("a", 1)],
            tokens: vec![(token("1"), Some(vec!["a".into()]))],
            clocks: vec![(ResourceType::Patient, "a".into(), Some(at(5)))],
            forgotten: vec![],
        });
        assert!(cache.lookup(&lookups).is_none(), "identifier 2 is not held");
        cache.publish(Published {
            tokens: vec![(token("2"), Some(vec![]))],
            ..Published::default()
        });
        let found = cache.lookup(&lookups).unwrap();
        assert_eq!(found[0].len(), 1);
        assert_eq!(
            (found[0][0].0.id.as_str(), &found[0][0].1),
            ("a", &Some(at(5)))
        );
        // A new version keeps the clock; another holder of identifier 2
        // without a known clock (a new version of a resource not held)
        // makes the lookup go to SQLite.
        cache.publish(Published {
            versions: vec![stored("a", 2), stored("b", 4)],
            tokens: vec![(token("2"), Some(vec!["a".into(), "b".into()]))],
            clocks: vec![],
            forgotten: vec![],
        });
        assert!(cache.lookup(&lookups).is_none(), "b's clock is not known");
        cache.publish(Published {
            clocks: vec![(ResourceType::Patient, "b".into(), None)],
            ..Published::default()
        });
        let found = cache.lookup(&lookups).unwrap();
        let ids: Vec<_> = found[0]
            .iter()
            .map(|(s, c)| (s.id.as_str(), s.version, c.clone()))
            .collect();
        assert_eq!(ids, vec![("a", 2, Some(at(5))), ("b", 4, None)]);
        // A new resource has no clock yet, and that is known.
        cache.publish(Published {
            versions: vec![stored("c", 1)],
            tokens: vec![(token("1"), Some(vec!["a".into(), "c".into()]))],
            clocks: vec![],
            forgotten: vec![],
        });
        let found = cache.lookup(&lookups).unwrap();
        assert_eq!(found[0].len(), 3);
        assert_eq!(found[0][1].0.id, "c");
        assert_eq!(found[0][1].1, None);
        // An identifier with too many holders to keep is forgotten.
        cache.publish(Published {
            tokens: vec![(token("2"), None)],
            ..Published::default()
        });
        assert!(cache.lookup(&lookups).is_none());
        // Not answered once the store stops being the only writer.
        cache.stop_current();
        assert!(cache.lookup(&lookups).is_none());
    }

    #[test]
    fn a_resource_forgotten_is_read_from_sqlite_again() {
        let cache = Cache::new(4, true);
        cache.publish(versions(vec![stored("a", 1), stored("b", 1)]));
        cache.publish(Published {
            forgotten: vec![(ResourceType::Patient, "a".into())],
            ..Published::default()
        });
        assert!(cache.current(ResourceType::Patient, "a").is_none());
        assert!(cache.current(ResourceType::Patient, "b").is_some());
        // Its place is free again.
        cache.publish(versions(vec![
            stored("c", 1),
            stored("d", 1),
            stored("e", 1),
        ]));
        assert!(cache.current(ResourceType::Patient, "e").is_some());
    }

    #[test]
    fn a_cache_of_no_entries_answers_nothing() {
        let cache = Cache::new(0, true);
        assert!(!cache.keeps_lookups());
        cache.publish(Published {
            versions: vec![stored("a", 1)],
            tokens: vec![(token("1"), Some(vec!["a".into()]))],
            clocks: vec![],
            forgotten: vec![],
        });
        assert!(cache.current(ResourceType::Patient, "a").is_none());
        let keys = [("sys".to_string(), "1".to_string())];
        assert!(
            cache
                .lookup(&[(ResourceType::Patient, &keys[..])])
                .is_none()
        );
    }

    #[test]
    fn a_lookup_fill_after_a_commit_is_refused() {
        let cache = Cache::new(8, true);
        let keys = [("sys".to_string(), "1".to_string())];
        let lookups = [(ResourceType::Patient, &keys[..])];
        let found = vec![vec![(stored("a", 1), Some(at(3)))]];
        let holders = vec![vec![vec!["a".to_string()]]];
        let epoch = cache.epoch();
        cache.publish(versions(vec![stored("z", 1)]));
        cache.fill_lookup(epoch, &lookups, &found, &holders);
        assert!(cache.lookup(&lookups).is_none());
        cache.fill_lookup(cache.epoch(), &lookups, &found, &holders);
        assert_eq!(cache.lookup(&lookups).unwrap()[0][0].1, Some(at(3)));
    }
}
