//! The current versions of recently written and read resources, in memory.
//!
//! A reader's page cache is emptied whenever any other connection commits,
//! so under steady writes every SQLite read starts cold; and each read
//! transaction takes the WAL read lock (an `fcntl` on `-shm`). This cache
//! skips both for the resources in it. It is filled by the writer with every
//! version it commits, and by readers with what they read while nothing was
//! committed.
//!
//! Two uses, with different guarantees:
//! - **By version** ([`Cache::version`]): a version's body never changes, so
//!   an entry for `(type, id, version)` is right whatever happened since.
//!   Readers that learn a current version from SQLite take its body from here.
//! - **Current** ([`Cache::current`]): a read by id answered without SQLite.
//!   Only right if every commit to the store goes through this process's
//!   writer, which publishes each before answering it: a store opened with
//!   [`super::SqliteStore::open_serving`], which holds the data directory's
//!   lock so that no other gateway writes beside it.

use crate::fhir::ResourceType;
use crate::store::Stored;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Entries kept; the oldest inserted goes first. About 1–2 KB each.
pub(super) const CAPACITY: usize = 16_384;

type Key = (ResourceType, Box<str>);

pub(super) struct Cache {
    inner: Mutex<Inner>,
    /// Whether [`Cache::current`] may answer.
    exact: AtomicBool,
}

struct Inner {
    /// Counts the writer's commits: a reader's fill is refused if one
    /// happened since its read began.
    epoch: u64,
    entries: HashMap<ResourceType, HashMap<Box<str>, Arc<Stored>>>,
    len: usize,
    order: VecDeque<Key>,
    capacity: usize,
}

impl Cache {
    pub(super) fn new(capacity: usize, exact: bool) -> Cache {
        Cache {
            inner: Mutex::new(Inner {
                epoch: 0,
                entries: HashMap::new(),
                len: 0,
                order: VecDeque::new(),
                capacity: capacity.max(1),
            }),
            exact: AtomicBool::new(exact),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves no half-made entry (each
        // change is one insert or remove), so a poisoned lock is still good.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current version of `ty/id`, when this process writes the store
    /// alone and has it.
    pub(super) fn current(&self, ty: ResourceType, id: &str) -> Option<Arc<Stored>> {
        if !self.exact.load(Ordering::Acquire) {
            return None;
        }
        self.lock().get(ty, id).cloned()
    }

    /// Version `version` of `ty/id`, if it is the one held.
    pub(super) fn version(&self, ty: ResourceType, id: &str, version: i64) -> Option<Arc<Stored>> {
        self.lock()
            .get(ty, id)
            .filter(|s| s.version == version)
            .cloned()
    }

    /// Stops answering [`Cache::current`] (the store is closing; a writer
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
            inner.insert(Arc::new(stored.clone()));
        }
    }

    /// The writer's committed versions, published before it answers anyone.
    pub(super) fn publish(&self, written: Vec<Stored>) {
        let mut inner = self.lock();
        inner.epoch += 1;
        for stored in written {
            inner.insert(Arc::new(stored));
        }
    }
}

impl Inner {
    fn get(&self, ty: ResourceType, id: &str) -> Option<&Arc<Stored>> {
        self.entries.get(&ty)?.get(id)
    }

    fn insert(&mut self, stored: Arc<Stored>) {
        let key: Key = (stored.resource_type, stored.id.as_str().into());
        let of_type = self.entries.entry(key.0).or_default();
        if of_type.insert(key.1.clone(), stored).is_some() {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, version: i64) -> Stored {
        Stored {
            resource_type: ResourceType::Patient,
            id: id.into(),
            version,
            last_updated_ms: version,
            body: format!("{{\"v\":{version}}}"),
        }
    }

    #[test]
    fn a_fill_after_a_commit_is_refused() {
        let cache = Cache::new(8, true);
        let epoch = cache.epoch();
        cache.publish(vec![stored("a", 2)]);
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
        cache.publish(vec![stored("a", 1), stored("b", 1)]);
        assert!(
            cache.current(ResourceType::Patient, "a").is_none(),
            "not exact"
        );
        assert!(cache.version(ResourceType::Patient, "a", 1).is_some());
        assert!(cache.version(ResourceType::Patient, "a", 2).is_none());
        cache.publish(vec![stored("a", 2)]);
        assert!(cache.version(ResourceType::Patient, "a", 2).is_some());
        cache.publish(vec![stored("c", 1)]);
        assert!(cache.version(ResourceType::Patient, "a", 2).is_none());
        assert!(cache.version(ResourceType::Patient, "b", 1).is_some());
        assert!(cache.version(ResourceType::Patient, "c", 1).is_some());
    }
}
