//! The embedded store: one SQLite file in WAL mode.
//!
//! SQLite allows one writer at a time and an fsync costs milliseconds, so all
//! writes go to a single writer thread that takes every request waiting in its
//! queue, applies each on its own (checked whole before it writes, or inside a
//! SAVEPOINT), and commits them together:
//! one fsync for the whole group (group commit), made on another thread while
//! the writer goes on to the next group ([`durable`]). Nobody is answered
//! before the commit that holds their write is on disk, and no read returns
//! a write before it is on disk. Reads run on a small pool of
//! read-only connections, which WAL lets proceed beside the writer; the
//! current versions most recently written or read are also kept in memory
//! ([`cache`]), from which the serving gateway answers reads by id and
//! lookups by identifier.
//!
//! Conditional creates and updates are resolved inside the writer, so two
//! concurrent creates with the same identifier cannot both miss each other.

/// The join from a row `c` of `current` to its version's row `v`: straight
/// through `vrow`, checked against the row's key, as VACUUM may renumber the
/// rowids of a table without an INTEGER PRIMARY KEY and a renumbered row must
/// not serve another resource's body.
macro_rules! version_of_current {
    () => {
        "CROSS JOIN versions v ON v.rowid=c.vrow AND v.type=c.type AND v.id=c.id AND v.version=c.version"
    };
}

mod cache;
mod checkpoint;
mod durable;
mod keys;
mod known;
mod outbox;
mod paced;
mod search;
mod shim;
mod walbatch;
mod writer;

use super::{
    Clock, Delivery, DeliveryQuery, IngestOutcome, IngestRequest, JournalEntry, JournalReceipt,
    OutboxItem, QuarantineEntry, Quarantined, RouteOutcome, RouteRequest, SearchPage, Store,
    StoreError, Stored, WriteOutcome, WriteRequest, repeat_sources,
};
use crate::fhir::ResourceType;
use crate::fhir::search::SearchQuery;
use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, mpsc, oneshot};

pub use checkpoint::DEFAULT_CHECKPOINT_BYTES;

/// Page size of a new store, in bytes.
const PAGE_SIZE: i64 = 4_096;

/// The database file inside the data directory.
pub const DB_FILE: &str = "gateway.sqlite";
/// The schema this code writes; a newer file is refused rather than misread.
/// 2: the quarantine table; 3: event clocks; 4: the routing outbox and
/// deliveries; 5: search parameters `address-postalcode`, `class`,
/// `category`, `code` (index rows added for stored resources); 6: `versions`
/// as a rowid table, index rows kept in `current.keys` instead of owner
/// indexes, `idx_date` keyed (tables rebuilt on upgrade); 7: `current.vrow`
/// and `current.event_ms`; 8: `current.member_ms`; 9: the journal's repeat
/// index led by the sender (`journal_sent`); 10: versions chained by
/// `versions.prev` instead of keyed by `versions_key`. Each adds to the
/// idempotent schema, which is re-run.
const SCHEMA_VERSION: i64 = 11;

/// How the store is set up (checked configuration).
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub dir: PathBuf,
    /// Most requests committed together in one transaction.
    pub max_batch: usize,
    /// Requests waiting for the writer before senders wait (backpressure).
    pub queue: usize,
    /// Read connections (concurrent reads).
    pub readers: usize,
    /// The types whose new versions get an outbox row (those some routing
    /// rule or trigger looks at); `None`: every type.
    pub outbox_types: Option<Vec<ResourceType>>,
    /// Current resources kept in memory ([`cache`]); 0 keeps none.
    pub cache_resources: usize,
    /// WAL growth after which a checkpoint copies it into the database file
    /// ([`DEFAULT_CHECKPOINT_BYTES`]); the WAL starts over past twice this
    /// (at least 16 MiB), and at four times this (at least 64 MiB) at most.
    pub checkpoint_bytes: i64,
}

/// Current resources kept in memory unless configured otherwise.
pub const DEFAULT_CACHE_RESOURCES: usize = 12_288;

pub(super) enum Job {
    Write(
        WriteRequest,
        oneshot::Sender<Result<WriteOutcome, StoreError>>,
    ),
    /// Many requests, each applied on its own, in one group.
    WriteEach(
        Vec<WriteRequest>,
        oneshot::Sender<Result<Vec<Result<WriteOutcome, StoreError>>, StoreError>>,
    ),
    Journal(
        JournalEntry,
        oneshot::Sender<Result<JournalReceipt, StoreError>>,
    ),
    Ingest(
        IngestRequest,
        oneshot::Sender<Result<IngestOutcome, StoreError>>,
    ),
    Quarantine(
        Vec<QuarantineEntry>,
        oneshot::Sender<Result<Vec<i64>, StoreError>>,
    ),
    Discard(i64, oneshot::Sender<Result<bool, StoreError>>),
    Revise(i64, String, oneshot::Sender<Result<bool, StoreError>>),
    Route(
        RouteRequest,
        oneshot::Sender<Result<RouteOutcome, StoreError>>,
    ),
    Deliveries(Vec<Delivery>, oneshot::Sender<Result<(), StoreError>>),
    Close(oneshot::Sender<()>),
    /// Wakes a writer waiting for an earlier group's sync (sent by the
    /// answering thread); nothing to do.
    Synced,
}

pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    readers: Arc<ReaderPool>,
    outbox_signal: Arc<tokio::sync::Notify>,
    cache: Arc<cache::Cache>,
    /// How far the writer's groups are synced: reads wait on it.
    durability: Arc<durable::Durability>,
    parsed: crate::store::parsed::ParsedVersions,
    /// The data directory's lock, held by a serving store until it closes.
    lock: Mutex<Option<std::fs::File>>,
}

/// The lock file in the data directory: held by the gateway serving it.
pub const LOCK_FILE: &str = "gateway.lock";

struct ReaderPool {
    path: PathBuf,
    /// Most connections: permits, and idle connections kept.
    size: usize,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl SqliteStore {
    /// Opens (or creates) the store in `options.dir` and starts its writer.
    /// Reads by id go to SQLite (a running gateway may write beside it).
    pub fn open(options: SqliteOptions) -> Result<Self, StoreError> {
        Self::open_with(options, None)
    }

    /// As [`SqliteStore::open`], for the gateway that serves the store: it
    /// takes the data directory's lock (refused with
    /// [`StoreError::InUse`] while another holds it), so that every commit
    /// goes through this store's writer, and answers reads by id of the
    /// resources it has in memory without SQLite.
    pub fn open_serving(options: SqliteOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&options.dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(options.dir.join(LOCK_FILE))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::InUse(options.dir.clone()));
            }
            Err(std::fs::TryLockError::Error(err)) => return Err(err.into()),
        }
        Self::open_with(options, Some(file))
    }

    fn open_with(options: SqliteOptions, lock: Option<std::fs::File>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&options.dir)?;
        let path = options.dir.join(DB_FILE);
        let cache = Arc::new(cache::Cache::new(options.cache_resources, lock.is_some()));
        let writer_cache = cache.clone();
        let mut conn = open_writer(&path)?;
        if cache.keeps_lookups() {
            // On a connection of its own, closed after: the scan's pages
            // stay out of the writer's page cache.
            match open_reader(&path)
                .and_then(|conn| known_identifiers(&conn, &cache, known::MAX_IDENTIFIERS))
            {
                Ok(known) => cache.set_known(known),
                // As before the set: every identifier looked up in SQLite.
                Err(err) => tracing::warn!(error = %err, "could not read the store's identifiers"),
            }
        }
        let checkpointer = checkpoint::Checkpointer::start(
            &mut conn,
            open_checkpointer(&path)?,
            options.checkpoint_bytes,
        )?;
        // Commits no longer wait for the disk: the answering thread syncs
        // the WAL before anyone is answered (see `durable`).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let (jobs, rx) = mpsc::channel(options.queue.max(1));
        let max_batch = options.max_batch.max(1);
        let outbox_signal = Arc::new(tokio::sync::Notify::new());
        let signal = outbox_signal.clone();
        let outbox_types = options.outbox_types.clone();
        let durability = Arc::new(durable::Durability::default());
        let writer_durability = durability.clone();
        let wal = durable::WalSync::new(&path);
        let wake = jobs.downgrade();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                writer::Writer::new(
                    conn,
                    checkpointer,
                    max_batch,
                    outbox_types,
                    wal,
                    writer::Shared {
                        cache: writer_cache,
                        durability: writer_durability,
                        outbox_signal: signal,
                    },
                )
                .run(rx, wake)
            })?;
        Ok(SqliteStore {
            jobs,
            outbox_signal,
            cache,
            durability,
            parsed: Default::default(),
            lock: Mutex::new(lock),
            readers: Arc::new(ReaderPool {
                path,
                size: options.readers.max(1),
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(options.readers.max(1)),
            }),
        })
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a point read on the calling thread: a read of one row by primary
    /// key takes about 10 µs, less than handing it to another thread. It
    /// still holds one of the `readers` permits, so connections stay bounded.
    /// It returns once what it read is on disk ([`durable`]).
    async fn read_inline<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (found, seen) = self.read_unsettled(f).await?;
        self.durability.wait_settled(seen).await?;
        Ok(found)
    }

    /// As [`SqliteStore::read_inline`], without waiting for what it read to
    /// reach the disk: for the reads that plan a write, which is committed
    /// after whatever they saw (a power loss takes both). Also returns the
    /// groups it may have seen, for [`durable::Durability::is_settled`].
    async fn read_unsettled<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<(T, u64), StoreError> {
        self.durability.usable()?;
        let _permit = self
            .readers
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let found = self.readers.with_connection(f)?;
        Ok((found, self.durability.seen()))
    }

    /// Runs a read on a blocking thread; it returns once what it read is on
    /// disk ([`durable`]).
    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (found, seen) = self.with_reader_unsettled(f).await?;
        self.durability.wait_settled(seen).await?;
        Ok(found)
    }

    /// As [`SqliteStore::with_reader`], without waiting for what it read to
    /// reach the disk (see [`SqliteStore::read_unsettled`]).
    async fn with_reader_unsettled<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<(T, u64), StoreError> {
        // Refused at once after a failed sync (see `durable`).
        self.durability.usable()?;
        let pool = self.readers.clone();
        let _permit = pool
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let worker = pool.clone();
        let found = tokio::task::spawn_blocking(move || worker.with_connection(f))
            .await
            .map_err(|_| StoreError::Closed)??;
        Ok((found, self.durability.seen()))
    }
}

impl ReaderPool {
    /// Lends an idle connection (opening one if none is idle) to `f`.
    fn with_connection<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = match self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            Some(conn) => conn,
            None => open_reader(&self.path)?,
        };
        let result = f(&conn);
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.size
        {
            idle.push(conn);
        }
        result
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn parsed(&self, stored: &Stored) -> Option<Arc<serde_json::Value>> {
        self.parsed.get(stored)
    }

    fn remember_parsed(&self, stored: &Stored, value: serde_json::Value) {
        self.parsed.remember(stored, value);
    }

    async fn read(&self, ty: ResourceType, id: &str) -> Result<Option<Stored>, StoreError> {
        // Refused after a failed sync, as every read is (see `durable`).
        self.durability.usable()?;
        if let Some(stored) = self.cache.current(ty, id) {
            return Ok(Some(Stored::clone(&stored)));
        }
        let epoch = self.cache.epoch();
        let found = self.read_inline(|conn| read_current(conn, ty, id)).await?;
        if let Some(stored) = &found {
            self.cache.fill(epoch, stored);
        }
        Ok(found)
    }

    async fn vread(
        &self,
        ty: ResourceType,
        id: &str,
        version: i64,
    ) -> Result<Option<Stored>, StoreError> {
        self.read_inline(|conn| Ok(walk_versions(conn, ty, id, version, |v| v == version)?.pop()))
            .await
    }

    async fn history(&self, ty: ResourceType, id: &str) -> Result<Vec<Stored>, StoreError> {
        let id = id.to_string();
        self.with_reader(move |conn| walk_versions(conn, ty, &id, 1, |_| true))
            .await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let query = query.clone();
        self.with_reader(move |conn| search::search(conn, &query))
            .await
    }

    async fn by_identifier(
        &self,
        ty: ResourceType,
        keys: &[(String, String)],
    ) -> Result<Vec<Stored>, StoreError> {
        // A lookup that plans a write (see `Store::settled`).
        let (found, _) = self
            .read_unsettled(|conn| by_token(conn, &self.cache, ty, "identifier", keys))
            .await?;
        Ok(found)
    }

    async fn by_identifier_clocked(
        &self,
        lookups: &[(ResourceType, &[(String, String)])],
    ) -> Result<Vec<Vec<(Stored, Option<Clock>)>>, StoreError> {
        // Refused after a failed sync, as every read is (see `durable`).
        self.durability.usable()?;
        if let Some(found) = self.cache.lookup(lookups) {
            return Ok(found);
        }
        let epoch = self.cache.epoch();
        // One transaction: a reader's page cache is emptied at the start of
        // each one after any commit, so separate reads re-read the same
        // interior pages (measured: a fifth of the HL7 v2 feed's CPU).
        let (found, seen) = self
            .read_unsettled(|conn| {
                conn.prepare_cached("BEGIN")?.execute([])?;
                let found = lookups
                    .iter()
                    .map(|(ty, keys)| by_token_held(conn, &self.cache, *ty, "identifier", keys))
                    .collect::<Result<Vec<_>, _>>();
                let commit = conn
                    .prepare_cached("COMMIT")
                    .and_then(|mut s| s.execute([]));
                if !conn.is_autocommit() {
                    // Never lend a connection on in a stale snapshot.
                    let _ = conn.execute_batch("ROLLBACK");
                }
                commit?;
                found
            })
            .await?;
        let (found, holders): (Vec<_>, Vec<_>) = found.into_iter().unzip();
        // What is not on disk yet stays out of the cache, which answers
        // reads without the barrier; nor does a group whose sync failed
        // get in (a failure is recorded before its group counts as
        // settled, so it is seen here if the group was).
        if self.durability.is_settled(seen) && self.durability.failure().is_none() {
            self.cache.fill_lookup(epoch, lookups, &found, &holders);
        }
        Ok(found)
    }

    async fn identifiers_in(
        &self,
        ty: ResourceType,
        system: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let system = system.to_string();
        self.with_reader(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT value, id FROM idx_token WHERE type=?1 AND param='identifier' AND system=?2 \
                 ORDER BY value, id",
            )?;
            let pairs = stmt
                .query_map(params![ty.as_str(), system], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(pairs)
        })
        .await
    }

    async fn read_many(
        &self,
        ty: ResourceType,
        ids: Vec<String>,
    ) -> Result<Vec<Stored>, StoreError> {
        self.with_reader(move |conn| {
            let mut found = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(stored) = read_current(conn, ty, id)? {
                    found.push(stored);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn by_token(
        &self,
        ty: ResourceType,
        param: &str,
        keys: &[(String, String)],
    ) -> Result<Vec<Stored>, StoreError> {
        let (param, keys) = (param.to_string(), keys.to_vec());
        let cache = self.cache.clone();
        self.with_reader(move |conn| by_token(conn, &cache, ty, &param, &keys))
            .await
    }

    async fn by_reference(
        &self,
        ty: ResourceType,
        param: &str,
        targets: Vec<(ResourceType, String)>,
    ) -> Result<Vec<Stored>, StoreError> {
        let param = param.to_string();
        // Lookups that plan writes, or a report that settles after them
        // (see `Store::settled`).
        let (found, _) = self
            .with_reader_unsettled(move |conn| {
                let mut stmt = conn.prepare_cached(concat!(
                    "SELECT v.version, v.last_updated, v.body, c.id FROM idx_ref r \
                 CROSS JOIN current c ON c.type=r.type AND c.id=r.id ",
                    version_of_current!(),
                    " WHERE r.type=?1 AND r.param=?2 AND r.target_id=?3 AND r.target_type=?4",
                ))?;
                let mut seen = std::collections::HashSet::new();
                let mut found = Vec::new();
                for (target_type, id) in &targets {
                    let rows = stmt.query_map(
                        params![ty.as_str(), param, id, target_type.as_str()],
                        |row| stored_from_row(ty, row.get(3)?, row),
                    )?;
                    for row in rows {
                        let row = row?;
                        if seen.insert(row.id.clone()) {
                            found.push(row);
                        }
                    }
                }
                Ok(found)
            })
            .await?;
        Ok(found)
    }

    async fn settled(&self) -> Result<(), StoreError> {
        self.durability.wait_settled(self.durability.seen()).await
    }

    async fn event_clocks(
        &self,
        ty: ResourceType,
        ids: &[String],
    ) -> Result<Vec<Option<Clock>>, StoreError> {
        let (clocks, _) = self
            .read_unsettled(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT event_ms, member_ms FROM current WHERE type=?1 AND id=?2",
                )?;
                ids.iter()
                    .map(|id| {
                        Ok(stmt
                            .query_row(params![ty.as_str(), id], |row| clock_at(row, 0))
                            .optional()?
                            .flatten())
                    })
                    .collect()
            })
            .await?;
        Ok(clocks)
    }

    async fn write(&self, request: WriteRequest) -> Result<WriteOutcome, StoreError> {
        self.submit(|tx| Job::Write(request, tx)).await
    }

    async fn write_each(
        &self,
        requests: Vec<WriteRequest>,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        self.submit(|tx| Job::WriteEach(requests, tx)).await
    }

    async fn journal(&self, entry: JournalEntry) -> Result<JournalReceipt, StoreError> {
        self.submit(|tx| Job::Journal(entry, tx)).await
    }

    async fn ingest(&self, request: IngestRequest) -> Result<IngestOutcome, StoreError> {
        self.submit(|reply| Job::Ingest(request, reply)).await
    }

    async fn journal_entry(&self, id: i64) -> Result<Option<JournalEntry>, StoreError> {
        self.with_reader(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT source, sender, message_id, content_type, received_at, payload FROM journal WHERE id=?1",
                )?
                .query_row([id], |row| {
                    Ok(JournalEntry {
                        source: row.get(0)?,
                        sender: row.get(1)?,
                        message_id: row.get(2)?,
                        content_type: row.get(3)?,
                        received_at_ms: row.get(4)?,
                        payload: bytes::Bytes::from(row.get::<_, Vec<u8>>(5)?),
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn quarantine(&self, entries: Vec<QuarantineEntry>) -> Result<Vec<i64>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.submit(|tx| Job::Quarantine(entries, tx)).await
    }

    async fn quarantined(
        &self,
        after: i64,
        limit: usize,
        all: bool,
    ) -> Result<Vec<Quarantined>, StoreError> {
        self.with_reader(move |conn| {
            let sql = format!(
                "SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE id > ?1 {} ORDER BY id LIMIT ?2",
                if all { "" } else { "AND status = 'held'" }
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let rows = statement.query_map(params![after, limit as i64], quarantined_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn quarantined_entry(&self, id: i64) -> Result<Option<Quarantined>, StoreError> {
        self.with_reader(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE id = ?1"
                ))?
                .query_row([id], quarantined_row)
                .optional()?)
        })
        .await
    }

    async fn unjournaled(&self, entry: &QuarantineEntry) -> Result<Vec<Quarantined>, StoreError> {
        let [source, twin] = repeat_sources(&entry.source);
        let (source, twin) = (source.to_string(), twin.to_string());
        let (sender, location) = (entry.sender.clone(), entry.location.clone());
        self.with_reader(move |conn| {
            // By `quarantine_unjournaled`, which holds such entries alone.
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE journal_id IS NULL \
                 AND sender = ?3 AND location = ?4 AND source IN (?1, ?2) ORDER BY id"
            ))?;
            let rows =
                statement.query_map(params![source, twin, sender, location], quarantined_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn held_from(&self, source: &str, sender: &str) -> Result<Vec<Quarantined>, StoreError> {
        let (source, sender) = (source.to_string(), sender.to_string());
        self.with_reader(move |conn| {
            // By `quarantine_held`: the held entries are few.
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE status = 'held' \
                 AND source = ?1 AND sender = ?2 ORDER BY id"
            ))?;
            let rows = statement.query_map(params![source, sender], quarantined_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn held_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.with_reader(|conn| {
            // By `quarantine_held`: the held entries alone are counted.
            let mut statement = conn.prepare_cached(
                "SELECT source, count(*) FROM quarantine WHERE status = 'held' GROUP BY source ORDER BY source",
            )?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn discard_quarantined(&self, id: i64) -> Result<bool, StoreError> {
        self.submit(|tx| Job::Discard(id, tx)).await
    }

    async fn revise_quarantined(&self, id: i64, reasons: String) -> Result<bool, StoreError> {
        self.submit(|tx| Job::Revise(id, reasons, tx)).await
    }

    async fn outbox(
        &self,
        limit: usize,
        bodies_for: Vec<ResourceType>,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let cache = self.cache.clone();
        self.with_reader(move |conn| outbox::outbox(conn, &cache, limit, &bodies_for))
            .await
    }

    async fn route(&self, request: RouteRequest) -> Result<RouteOutcome, StoreError> {
        self.submit(|tx| Job::Route(request, tx)).await
    }

    async fn update_deliveries(&self, deliveries: Vec<Delivery>) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        self.submit(|tx| Job::Deliveries(deliveries, tx)).await
    }

    async fn deliveries(&self, query: DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
        self.with_reader(move |conn| outbox::deliveries(conn, &query))
            .await
    }

    async fn delivery(&self, id: i64) -> Result<Option<Delivery>, StoreError> {
        self.read_inline(|conn| outbox::delivery(conn, id)).await
    }

    fn outbox_signal(&self) -> Arc<tokio::sync::Notify> {
        self.outbox_signal.clone()
    }

    async fn check(&self) -> Result<(), StoreError> {
        if self.jobs.is_closed() {
            return Err(StoreError::Closed);
        }
        self.with_reader(|conn| {
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn close(&self) {
        self.cache.stop_current();
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        if let Ok(mut idle) = self.readers.idle.lock() {
            idle.clear();
        }
        self.readers.permits.close();
        // Released once the writer has stopped: another gateway may serve.
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }
}

// ---------------------------------------------------------------------------
// Connections and schema.

/// Settings every connection gets.
fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Query-planner stability: without it SQLite re-prepares a statement at
    // every run when a bound value might change its plan (measured: a read
    // by id 47 µs instead of 11 µs, most of it spent re-parsing SQL).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // Statements are cached per connection; searches have one per query shape.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

const QUARANTINE_COLUMNS: &str = "id, source, sender, journal_id, received_at, location, reasons, content_type, payload, status, resolved_at";

fn quarantined_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Quarantined> {
    Ok(Quarantined {
        id: row.get(0)?,
        entry: QuarantineEntry {
            source: row.get(1)?,
            sender: row.get(2)?,
            journal_id: row.get(3)?,
            received_at_ms: row.get(4)?,
            location: row.get(5)?,
            reasons: row.get(6)?,
            content_type: row.get(7)?,
            payload: row.get(8)?,
        },
        status: row.get(9)?,
        resolved_at_ms: row.get(10)?,
    })
}

fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    // The writer alone writes the WAL; its commits go out in two writes
    // rather than two per page ([`walbatch`]).
    let conn = if walbatch::register() {
        Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), walbatch::NAME)?
    } else {
        tracing::warn!(
            "SQLite's VFS could not be wrapped; the store writes each WAL frame in two writes"
        );
        Connection::open(path)?
    };
    configure(&conn)?;
    // The page size of a new store (an existing one keeps its own). 16 KiB
    // pages made a 50,000-row GP list 10-15% faster (a quarter of the WAL
    // frames per commit) but HL7 v2 ingest, many small commits, 35% slower
    // (each dirty page a 16 KiB frame): 1,309-1,522 messages/s against
    // 2,207-2,326 with 4 KiB, in the same session. 2 KiB pages (measured
    // again once a commit's frames went out in one write, 2026-11-24) cut
    // the bytes an HL7 v2 message writes by 37% at the same instructions
    // and a GP list's upload ran no slower, but the outcome report, which
    // reads scattered encounters, took 973 ms at the median against 615 ms
    // (its target is 1 s). Must precede the first write (WAL mode fixes
    // the size).
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL while the schema is set up or upgraded (that commit is synced
    // before the store opens); the writer then commits with NORMAL, and its
    // answering thread syncs each group before it is answered (`durable`).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -16_000)?;
    // Each request runs in a savepoint; keep their statement journals in
    // memory rather than spilling them to temporary files.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    if found < SCHEMA_VERSION {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        // Tables schema 6 reshapes are set aside first, so that the schema
        // (all `IF NOT EXISTS`) creates them anew; their rows follow.
        if found > 0 && found < 6 {
            set_aside_for_schema_6(&conn)?;
        }
        conn.execute_batch(include_str!("schema.sql"))?;
        if found > 0 {
            // For the joins below, until the versions are chained (schema
            // 10); stores from schema 6 on have it already.
            conn.execute_batch(
                "CREATE UNIQUE INDEX IF NOT EXISTS versions_key ON versions (type, id, version);",
            )?;
        }
        if found > 0 && found < 6 {
            move_versions_into_schema_6(&conn)?;
        }
        if found > 0 && found < 5 {
            tracing::info!(
                "upgrading the store to schema 5: indexing stored resources for new search parameters (a minute per million resources)"
            );
            index_new_params(
                &conn,
                &[
                    (ResourceType::Patient, "address-postalcode"),
                    (ResourceType::Encounter, "class"),
                    (ResourceType::CarePlan, "category"),
                    (ResourceType::ServiceRequest, "code"),
                ],
            )?;
        }
        if found > 0 && found < 6 {
            // After the schema 5 rows, which the keys must include.
            keep_index_keys(&conn)?;
        }
        if found > 0 && found < 7 {
            // After the history's move into the rowid table (schema 6).
            point_current_at_versions(&conn)?;
        }
        if found > 0 && found < 8 {
            // Each record's clock stands for its members' until an event
            // sets them (`Clock::members` is `None`).
            conn.execute_batch("ALTER TABLE current ADD COLUMN member_ms TEXT;")?;
        }
        if found > 0 && found < 9 {
            // `journal_sent` (built by the schema above) replaces it.
            conn.execute_batch("DROP INDEX IF EXISTS journal_repeat;")?;
        }
        if found > 0 && found < 10 {
            // Last: the upgrades above join versions through the key.
            chain_versions(&conn, found)?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        conn.execute_batch("COMMIT")?;
    }
    Ok(conn)
}

/// Schema 6, before the schema: renames the tables it reshapes (`versions`
/// keyed WITHOUT ROWID, `idx_date` a rowid table with three indexes) out of
/// the way. `idx_date_owner` goes with its table, for [`keep_index_keys`].
fn set_aside_for_schema_6(conn: &Connection) -> Result<(), StoreError> {
    tracing::info!(
        "upgrading the store to schema 6: rewriting the version history and date index (a minute per million versions)"
    );
    conn.execute_batch(
        "ALTER TABLE versions RENAME TO versions_v5;
         DROP INDEX IF EXISTS idx_date_lo;
         DROP INDEX IF EXISTS idx_date_hi;
         ALTER TABLE idx_date RENAME TO idx_date_v5;",
    )?;
    Ok(())
}

/// Schema 6, after the schema: the history into the rowid `versions` table.
fn move_versions_into_schema_6(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "INSERT INTO versions(type, id, version, last_updated, body)
             SELECT type, id, version, last_updated, body FROM versions_v5;
         DROP TABLE versions_v5;",
    )?;
    Ok(())
}

/// Schema 6: records each current version's index rows beside it (from the
/// index tables, through their owner indexes, which it then drops), and
/// moves the date rows into the keyed `idx_date`.
fn keep_index_keys(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "ALTER TABLE current ADD COLUMN keys TEXT;
         UPDATE current SET keys = json_object(
             't', json(coalesce((SELECT json_group_array(json_array(t.param, t.value, t.system))
                  FROM idx_token t WHERE t.type = current.type AND t.id = current.id), '[]')),
             'r', json(coalesce((SELECT json_group_array(json_array(r.param, r.target_id, r.target_type))
                  FROM idx_ref r WHERE r.type = current.type AND r.id = current.id), '[]')),
             'd', json(coalesce((SELECT json_group_array(json_array(d.param, d.lo, d.hi))
                  FROM idx_date_v5 d WHERE d.type = current.type AND d.id = current.id), '[]')));
         INSERT OR IGNORE INTO idx_date(type, param, lo, hi, id)
             SELECT type, param, lo, hi, id FROM idx_date_v5;
         DROP TABLE idx_date_v5;
         DROP INDEX IF EXISTS idx_token_owner;
         DROP INDEX IF EXISTS idx_token_system;
         DROP INDEX IF EXISTS idx_ref_owner;",
    )?;
    Ok(())
}

/// Schema 7: each current version's row in `versions` and its event clock
/// (until now a table of its own) beside it.
fn point_current_at_versions(conn: &Connection) -> Result<(), StoreError> {
    tracing::info!("upgrading the store to schema 7 (seconds per million resources)");
    conn.execute_batch(
        "ALTER TABLE current ADD COLUMN vrow INTEGER;
         ALTER TABLE current ADD COLUMN event_ms INTEGER;
         UPDATE current SET vrow = (SELECT v.rowid FROM versions v
             WHERE v.type = current.type AND v.id = current.id AND v.version = current.version);",
    )?;
    let clocks: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'event_clock'",
        [],
        |row| row.get(0),
    )?;
    if clocks {
        conn.execute_batch(
            "UPDATE current SET event_ms = (SELECT e.event_ms FROM event_clock e
                 WHERE e.type = current.type AND e.id = current.id);
             DROP TABLE event_clock;",
        )?;
    }
    Ok(())
}

/// Schema 10: links each version to the one before it (`versions.prev`),
/// through `versions_key`, then drops the key. The one before is the next
/// lower version held, so that a history missing a version (edited by hand)
/// still reads whole. A `versions` table rebuilt by the schema 6 upgrade
/// already has the column.
fn chain_versions(conn: &Connection, found: i64) -> Result<(), StoreError> {
    tracing::info!("upgrading the store to schema 10 (seconds per million versions)");
    if found >= 6 {
        conn.execute_batch("ALTER TABLE versions ADD COLUMN prev INTEGER;")?;
    }
    conn.execute_batch(
        "UPDATE versions SET prev = (SELECT p.rowid FROM versions p
             WHERE p.type = versions.type AND p.id = versions.id AND p.version < versions.version
             ORDER BY p.version DESC LIMIT 1);
         DROP INDEX versions_key;",
    )?;
    Ok(())
}

/// Adds the index rows of search parameters new in this version for the
/// resources stored before it.
fn index_new_params(conn: &Connection, params: &[(ResourceType, &str)]) -> Result<(), StoreError> {
    let mut insert = conn.prepare(
        "INSERT OR IGNORE INTO idx_token(type, param, value, system, id) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (ty, param) in params {
        let mut select = conn.prepare(
            "SELECT c.id, v.body FROM current c \
             JOIN versions v ON v.type=c.type AND v.id=c.id AND v.version=c.version WHERE c.type=?1",
        )?;
        let rows = select.query_map([ty.as_str()], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (id, body) = row?;
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            for token in crate::fhir::search::extract_index(*ty, &value).tokens {
                if token.param == *param {
                    insert.execute(params![ty.as_str(), param, token.value, token.system, id])?;
                }
            }
        }
    }
    Ok(())
}

/// Every identifier in the store, for [`known`]: read before the writer
/// starts, so nothing is indexed meanwhile. More than `max` rows: a set
/// that answers nothing (rows not read would be missing from it).
fn known_identifiers(
    conn: &Connection,
    cache: &cache::Cache,
    max: usize,
) -> Result<known::Known, StoreError> {
    let mut stmt =
        conn.prepare("SELECT system, value FROM idx_token WHERE type=?1 AND param='identifier'")?;
    let mut prints = Vec::new();
    for ty in ResourceType::ALL {
        let mut rows = stmt.query([ty.as_str()])?;
        while let Some(row) = rows.next()? {
            if prints.len() >= max {
                return Ok(known::Known::default());
            }
            // A value stored as other than text is never equal to the text
            // a lookup binds: SQLite would not find it either.
            let (Ok(system), Ok(value)) = (row.get_ref(0)?.as_str(), row.get_ref(1)?.as_str())
            else {
                continue;
            };
            prints.push(cache.fingerprint(ty, system, value));
        }
    }
    Ok(known::Known::load(prints, max))
}

/// The checkpoint thread's connection: durable as the writer's, its pages
/// written back in steps ([`paced`]).
fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
    let conn = if paced::register() {
        Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), paced::NAME)?
    } else {
        Connection::open(path)?
    };
    configure(&conn)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "cache_size", -4_000)?;
    Ok(conn)
}

pub(super) fn stored_from_row(
    ty: ResourceType,
    id: String,
    row: &rusqlite::Row,
) -> rusqlite::Result<Stored> {
    Ok(Stored {
        resource_type: ty,
        id,
        version: row.get(0)?,
        last_updated_ms: row.get(1)?,
        body: row.get(2)?,
    })
}

/// Current resources of `ty` whose token `param` has any of these
/// `(system, value)`, each once, in the order found.
fn by_token(
    conn: &Connection,
    cache: &cache::Cache,
    ty: ResourceType,
    param: &str,
    keys: &[(String, String)],
) -> Result<Vec<Stored>, StoreError> {
    Ok(by_token_held(conn, cache, ty, param, keys)?
        .0
        .into_iter()
        .map(|(stored, _)| stored)
        .collect())
}

/// As [`by_token`], with each resource's event clock, and for each key the
/// ids that hold it. Bodies come from the cache when it holds the version
/// found, else from `versions`.
fn by_token_held(
    conn: &Connection,
    cache: &cache::Cache,
    ty: ResourceType,
    param: &str,
    keys: &[(String, String)],
) -> Result<(Vec<cache::Found>, Vec<Vec<String>>), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.id, c.version, c.event_ms, c.member_ms, c.vrow FROM idx_token t \
         CROSS JOIN current c ON c.type=t.type AND c.id=t.id \
         WHERE t.type=?1 AND t.param=?2 AND t.value=?3 AND t.system=?4",
    )?;
    let mut found: Vec<cache::Found> = Vec::new();
    let mut holders = Vec::with_capacity(keys.len());
    for (system, value) in keys {
        let rows = stmt.query_map(params![ty.as_str(), param, value, system], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                clock_at(row, 2)?,
                row.get::<_, Option<i64>>(4)?,
            ))
        })?;
        let mut held = Vec::new();
        for row in rows {
            let (id, version, clock, vrow) = row?;
            held.push(id.clone());
            if found.iter().any(|(s, _)| s.id == id) {
                continue;
            }
            let stored = match cache.version(ty, &id, version) {
                Some(stored) => Some(Stored::clone(&stored)),
                None => version_at(conn, ty, id, version, vrow)?,
            };
            if let Some(stored) = stored {
                found.push((stored, clock));
            }
        }
        holders.push(held);
    }
    Ok((found, holders))
}

/// The event clock in a row's columns `at` (`event_ms`) and `at + 1`
/// (`member_ms`).
pub(super) fn clock_at(row: &rusqlite::Row, at: usize) -> rusqlite::Result<Option<Clock>> {
    let members: Option<String> = row.get(at + 1)?;
    Ok(row
        .get::<_, Option<i64>>(at)?
        .map(|event_ms| Clock { event_ms, members }))
}

/// Version `version` of `ty/id`, at `vrow` in `versions` (checked against
/// its key, as in [`version_of_current!`]).
fn version_at(
    conn: &Connection,
    ty: ResourceType,
    id: String,
    version: i64,
    vrow: Option<i64>,
) -> Result<Option<Stored>, StoreError> {
    let Some(vrow) = vrow else {
        return Ok(None);
    };
    Ok(conn
        .prepare_cached(
            "SELECT version, last_updated, body FROM versions \
             WHERE rowid=?1 AND type=?2 AND id=?3 AND version=?4",
        )?
        .query_row(params![vrow, ty.as_str(), &id, version], |row| {
            stored_from_row(ty, id.clone(), row)
        })
        .optional()?)
}

/// `ty/id`'s versions from the current one back through `versions.prev`,
/// newest first, down to version `down_to`, with the body of each version
/// `wanted` takes (the others are passed over unread). The walk ends at a row
/// that is not one of the resource's, or not older than the one before it
/// (a store whose rowids were renumbered serves nothing wrong, and a broken
/// link cannot loop).
pub(super) fn walk_versions(
    conn: &Connection,
    ty: ResourceType,
    id: &str,
    down_to: i64,
    wanted: impl Fn(i64) -> bool,
) -> Result<Vec<Stored>, StoreError> {
    let mut next: Option<i64> = conn
        .prepare_cached("SELECT vrow FROM current WHERE type=?1 AND id=?2")?
        .query_row(params![ty.as_str(), id], |row| row.get(0))
        .optional()?
        .flatten();
    let mut step = conn.prepare_cached(
        "SELECT version, prev, last_updated, body FROM versions WHERE rowid=?1 AND type=?2 AND id=?3",
    )?;
    let mut found = Vec::new();
    let mut newer = i64::MAX;
    while let Some(row) = next {
        let Some((version, prev, stored)) = step
            .query_row(params![row, ty.as_str(), id], |row| {
                let version: i64 = row.get(0)?;
                let body = if wanted(version) {
                    Some((row.get::<_, i64>(2)?, row.get::<_, String>(3)?))
                } else {
                    None
                };
                Ok((version, row.get::<_, Option<i64>>(1)?, body))
            })
            .optional()?
        else {
            break;
        };
        if version >= newer || version < down_to {
            break;
        }
        if let Some((last_updated_ms, body)) = stored {
            found.push(Stored {
                resource_type: ty,
                id: id.to_string(),
                version,
                last_updated_ms,
                body,
            });
        }
        newer = version;
        next = prev;
    }
    Ok(found)
}

/// The current version of a resource as the writer reads it before
/// writing the next one.
struct Keyed {
    stored: Stored,
    /// Its index rows (`None`: not recorded beside it).
    keys: Option<keys::Keys>,
    /// Its row in `versions`: the next version's `prev`.
    vrow: i64,
}

/// The current version with its index rows and row, for the writer.
fn read_current_keyed(
    conn: &Connection,
    ty: ResourceType,
    id: &str,
) -> Result<Option<Keyed>, StoreError> {
    Ok(conn
        .prepare_cached(concat!(
            "SELECT v.version, v.last_updated, v.body, c.keys, c.vrow FROM current c ",
            version_of_current!(),
            " WHERE c.type=?1 AND c.id=?2",
        ))?
        .query_row(params![ty.as_str(), id], |row| {
            let keys: Option<String> = row.get(3)?;
            Ok(Keyed {
                stored: stored_from_row(ty, id.to_string(), row)?,
                keys: keys.as_deref().and_then(keys::Keys::decode),
                vrow: row.get(4)?,
            })
        })
        .optional()?)
}

pub(super) fn read_current(
    conn: &Connection,
    ty: ResourceType,
    id: &str,
) -> Result<Option<Stored>, StoreError> {
    Ok(conn
        .prepare_cached(concat!(
            "SELECT v.version, v.last_updated, v.body FROM current c ",
            version_of_current!(),
            " WHERE c.type=?1 AND c.id=?2",
        ))?
        .query_row(params![ty.as_str(), id], |row| {
            stored_from_row(ty, id.to_string(), row)
        })
        .optional()?)
}
