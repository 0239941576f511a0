//! The single writer: takes every job waiting, applies each on its own
//! (checked whole before it writes, or inside a SAVEPOINT), commits them
//! together (group commit), and hands the group to be synced and only then
//! answered ([`durable`](super::durable)).
//! Conditional creates and updates are resolved here, serialised with writes.

use super::cache::{Cache, MAX_HOLDERS, Published, TokenKey};
use super::checkpoint::Checkpointer;
use super::durable::{Durability, OnThreadEnd, WalSync};
use super::keys::{Keys, missing_from};
use super::search::matching_ids_sql;
use super::{Job, Keyed, clock_at, outbox, read_current, read_current_keyed};
use crate::fhir::ResourceType;
use crate::fhir::json::{rewrite_references, unresolved_placeholder};
use crate::fhir::resource::{Prepared, assemble};
use crate::fhir::search::{Clause, IndexEntries, SearchQuery, TokenMatch, reference_target};
use crate::hashing::{FastMap, FastSet};
use crate::store::{
    Change, Clock, IngestOutcome, IngestRequest, JournalEntry, JournalReceipt, Mutation,
    MutationError, QuarantineEntry, RouteOutcome, RouteRequest, StoreError, Stored, WriteOutcome,
    WriteRequest, Written, repeat_sources,
};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, oneshot};

pub(super) struct Writer {
    /// The thread that syncs each group's commit, then publishes the group
    /// and answers its jobs (no thread: done here, if it could not be
    /// started). First, so that it is dropped first: its groups are synced
    /// while the connection still holds the WAL.
    answering: Answering,
    conn: Connection,
    checkpointer: Checkpointer,
    max_batch: usize,
    /// lastUpdated of the latest commit: never goes backwards, even if the
    /// wall clock does.
    last_ms: i64,
    /// Why the current group can no longer be committed, if it cannot.
    broken: Option<String>,
    /// Did the current group add to the outbox?
    enqueued: bool,
    /// Told after a synced commit that added to the outbox (the router
    /// waits on it).
    outbox_signal: Arc<Notify>,
    /// Types routed (`None`: all).
    outbox_types: Option<Vec<ResourceType>>,
    /// Where committed versions are published.
    cache: Arc<Cache>,
    /// What the current group has changed, for the cache (a savepoint
    /// rolled back takes its own out again).
    fresh: Published,
    /// The identifiers the current request has changed so far: a request
    /// resolves all its conditions before it writes, so one it changes
    /// twice cannot take the shortcut of [`Writer::changed_identifiers`].
    request_tokens: Vec<TokenKey>,
    /// Identifiers last seen on more than [`MAX_HOLDERS`] resources (at
    /// most [`MAX_CROWDED`]): a change to one is published as forgotten
    /// without reading its holders again. A hint only: forgetting is always
    /// right, and an identifier that thins out again is simply never kept.
    crowded: FastSet<TokenKey>,
    /// Applying a bulk job ([`Job::WriteEach`], a GP list's chunk): what it
    /// writes is taken out of the cache rather than put in (thousands of
    /// resources a commit, most never read soon after; copying them cost
    /// the writer, the GP list's critical path, a tenth more time).
    bulk: bool,
    /// The WAL, synced here only if the answering thread could not be
    /// started (the thread syncs its own handle).
    wal: WalSync,
    /// How far the groups have got (shared with the store's readers).
    durability: Arc<Durability>,
}

/// How many crowded identifiers the writer remembers (a few hundred KB).
const MAX_CROWDED: usize = 4_096;

/// The answering thread, as the writer holds it. Dropped (when the writer
/// ends, or unwinds), it lets the thread settle every group handed to it,
/// then checks that none is left unsettled ([`Durability::thread_ended`]),
/// so that a group committed and on its way to the disk is answered as
/// done even if the writer dies meanwhile.
struct Answering {
    tx: Option<std::sync::mpsc::Sender<Done>>,
    thread: Option<std::thread::JoinHandle<()>>,
    durability: Arc<Durability>,
}

impl Answering {
    /// Lets the thread settle what it has, and waits for it to end.
    fn stop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.stop();
        self.durability.thread_ended();
    }
}

/// A group's end, handed to the answering thread.
enum Done {
    /// Committed, not yet synced; `true` when the group added to the outbox.
    Committed(Published, Vec<Answer>, bool),
    Failed(String, Vec<Answer>),
}

/// Makes a run of groups durable with one sync of the WAL, then publishes
/// each committed group to the cache and answers its jobs, in commit order:
/// nobody is told a write is done before it is on disk and a read would
/// find it. The router is told last.
fn settle(
    groups: Vec<Done>,
    wal: &mut WalSync,
    cache: &Cache,
    outbox_signal: &Notify,
    durability: &Durability,
) -> bool {
    let committed = groups.iter().any(|g| matches!(g, Done::Committed(..)));
    let failure = match durability.failure() {
        Some(reason) => Some(reason.to_string()),
        None if committed => wal.sync().err().map(|err| durability.fail(&err)),
        None => None,
    };
    let count = groups.len() as u64;
    let mut enqueued = false;
    for group in groups {
        match group {
            Done::Committed(published, answers, outbox) => match &failure {
                None => {
                    if !published.is_empty() {
                        cache.publish(published);
                    }
                    enqueued |= outbox;
                    answers.into_iter().for_each(Answer::send);
                }
                // Not published: what may not be on disk is never read
                // from the cache (and once a sync has failed nothing is).
                Some(reason) => answers.into_iter().for_each(|a| a.fail(reason)),
            },
            Done::Failed(reason, answers) => answers.into_iter().for_each(|a| a.fail(&reason)),
        }
    }
    let wake_writer = durability.settled(count);
    if enqueued {
        outbox_signal.notify_one();
    }
    wake_writer
}

/// A search condition of a given type, as written (its canonical parameters).
type ConditionKey<'a> = (ResourceType, &'a [(String, String)]);

/// What the writer decided a mutation does, once its conditions are resolved.
enum Plan {
    Existing(String),
    Put(String),
}

/// What the writer shares with the store's readers.
pub(super) struct Shared {
    pub cache: Arc<Cache>,
    pub durability: Arc<Durability>,
    pub outbox_signal: Arc<Notify>,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        checkpointer: Checkpointer,
        max_batch: usize,
        outbox_types: Option<Vec<ResourceType>>,
        wal: WalSync,
        shared: Shared,
    ) -> Self {
        let Shared {
            cache,
            durability,
            outbox_signal,
        } = shared;
        Writer {
            answering: Answering {
                tx: None,
                thread: None,
                durability: durability.clone(),
            },
            cache,
            wal,
            durability,
            fresh: Published::default(),
            request_tokens: Vec::new(),
            crowded: FastSet::default(),
            bulk: false,
            outbox_types,
            conn,
            checkpointer,
            max_batch,
            last_ms: 0,
            broken: None,
            enqueued: false,
            outbox_signal,
        }
    }

    /// Runs the writer until the store closes. `wake` reaches its own queue
    /// (without holding it open).
    pub(super) fn run(mut self, mut jobs: mpsc::Receiver<Job>, wake: mpsc::WeakSender<Job>) {
        // Each group is synced, published and answered on a thread of its
        // own, in commit order, while this one goes on to the next group:
        // the writer is the store's critical path (see `durable`).
        let (tx, rx) = std::sync::mpsc::channel::<Done>();
        let cache = self.cache.clone();
        let signal = self.outbox_signal.clone();
        let durability = self.durability.clone();
        let mut wal = self.wal.unopened();
        let ended = OnThreadEnd {
            durability: durability.clone(),
            wake: wake.clone(),
        };
        let answering = std::thread::Builder::new()
            .name("store-answers".into())
            .spawn(move || {
                let _ended = ended;
                // Dropped before `_ended` checks that every group counted
                // was settled: a group handed after the loop is not lost.
                let rx = rx;
                // Every group waiting when a sync starts shares it.
                while let Ok(first) = rx.recv() {
                    let mut groups = vec![first];
                    groups.extend(rx.try_iter());
                    if settle(groups, &mut wal, &cache, &signal, &durability)
                        && let Some(queue) = wake.upgrade()
                    {
                        // A full queue wakes the writer anyway.
                        let _ = queue.try_send(Job::Synced);
                    }
                }
            });
        match answering {
            Ok(thread) => {
                self.answering.tx = Some(tx);
                self.answering.thread = Some(thread);
            }
            Err(err) => {
                tracing::warn!(error = %err, "no answering thread; the writer syncs and answers");
            }
        }
        let mut closing = None;
        while closing.is_none() {
            let Some(first) = jobs.blocking_recv() else {
                break;
            };
            // The group takes whatever else is queued, and what arrives
            // while it is applied; a Close ends it. Jobs queued behind a
            // Close are refused below: the store is closed.
            closing = match first {
                Job::Close(done) => Some(done),
                Job::Synced => None,
                job => self.commit_group(job, &mut jobs),
            };
        }
        // Whatever is still queued is refused: dropping a job tells its sender
        // the store is closed.
        jobs.close();
        while jobs.try_recv().is_ok() {}
        // Every group synced and answered before the WAL is checkpointed
        // and, with the last connection, removed, and before the store says
        // it is closed.
        self.answering.stop();
        self.checkpointer.stop();
        if let Err(err) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
            tracing::warn!(error = %err, "WAL checkpoint at close failed");
        }
        drop(self.conn);
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    /// Hands a group to the answering thread, or settles it here.
    fn finish(&mut self, done: Done) {
        let done = match &self.answering.tx {
            Some(tx) => match tx.send(done) {
                Ok(()) => return,
                Err(std::sync::mpsc::SendError(done)) => done,
            },
            None => done,
        };
        settle(
            vec![done],
            &mut self.wal,
            &self.cache,
            &self.outbox_signal,
            &self.durability,
        );
    }

    /// With the queue empty and an earlier group still being synced: the
    /// next job to arrive before that sync ends, if one does. Committing
    /// now would only queue this group's sync behind the running one, so
    /// the group stays open and takes what arrives meanwhile, as a writer
    /// syncing its own commits would have gathered it, but applied while
    /// the disk works. `None`: commit now.
    fn await_sync(&mut self, queue: &mut mpsc::Receiver<Job>) -> Option<Job> {
        while self.answering.tx.is_some() && self.durability.writer_waits() {
            match queue.blocking_recv() {
                Some(Job::Synced) => {}
                Some(job) => {
                    self.durability.writer_woken();
                    return Some(job);
                }
                None => return None,
            }
        }
        None
    }

    /// Applies every job in one transaction and, after COMMIT, hands the
    /// group to be synced and answered ([`Writer::finish`]).
    ///
    /// If SQLite abandons the transaction part-way (disk full, I/O error), or
    /// a savepoint cannot be undone, nothing of the group is committed and
    /// every job in it is refused: no client is told a write failed that is
    /// on disk, nor that one succeeded that is not.
    ///
    /// The group is `first` and every job queued or arriving while it is
    /// applied, up to `max_batch`: senders that wait for their answer before
    /// sending again (an MLLP connection) then share commits. A `Close`
    /// among them ends the group and is returned.
    fn commit_group(
        &mut self,
        first: Job,
        queue: &mut mpsc::Receiver<Job>,
    ) -> Option<oneshot::Sender<()>> {
        let now = jiff::Timestamp::now().as_millisecond().max(self.last_ms);
        self.last_ms = now;
        self.broken = None;
        self.enqueued = false;
        self.fresh.clear();
        self.request_tokens.clear();
        if !self.conn.is_autocommit() {
            // Left inside a transaction by an earlier failure: start clean.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        if let Some(reason) = self.durability.failure() {
            answer_failure(first, reason);
            return None;
        }
        // Cached statements: `execute_batch` parsed and prepared each anew
        // (~6,000 instructions a commit).
        if let Err(err) = self
            .conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut begin| begin.execute([]))
        {
            let message = err.to_string();
            answer_failure(first, &message);
            return None;
        }
        let mut answers = Vec::new();
        let mut closing = None;
        let mut next = Some(first);
        loop {
            let job = match next.take() {
                Some(job) => job,
                None if closing.is_some() || answers.len() >= self.max_batch => break,
                None => match queue.try_recv() {
                    Ok(job) => job,
                    Err(_) => match self.await_sync(queue) {
                        Some(job) => job,
                        None => break,
                    },
                },
            };
            match job {
                Job::Write(request, reply) => {
                    let result = self.unguarded(|w| w.apply(&request, now));
                    answers.push(Answer::Write(reply, result));
                }
                Job::WriteEach(requests, reply) => {
                    let mut results = Vec::with_capacity(requests.len());
                    self.bulk = true;
                    for request in &requests {
                        results.push(self.unguarded(|w| w.apply(request, now)));
                        if self.broken.is_some() {
                            break;
                        }
                    }
                    self.bulk = false;
                    answers.push(Answer::WriteEach(reply, Ok(results)));
                }
                Job::Journal(entry, reply) => {
                    let result = self.in_savepoint(|w| {
                        let [source, twin] = repeat_sources(&entry.source);
                        if source != twin
                            && let Some(id) = w.journaled(&entry)?
                        {
                            return Ok(Ok(JournalReceipt {
                                id,
                                duplicate: true,
                            }));
                        }
                        w.journal(&entry).map(Ok)
                    });
                    answers.push(Answer::Journal(reply, result));
                }
                Job::Ingest(request, reply) => {
                    let result = self.unguarded(|w| w.ingest(&request, now));
                    answers.push(Answer::Ingest(reply, result));
                }
                Job::Quarantine(entries, reply) => {
                    let result = self.in_savepoint(|w| w.quarantine(&entries, now).map(Ok));
                    answers.push(Answer::Quarantine(reply, result));
                }
                Job::Discard(id, reply) => {
                    let result =
                        self.in_savepoint(|w| w.resolve_quarantined(id, "discarded", now).map(Ok));
                    answers.push(Answer::Resolve(reply, result));
                }
                Job::Revise(id, reasons, reply) => {
                    let result = self.in_savepoint(|w| w.revise_quarantined(id, &reasons).map(Ok));
                    answers.push(Answer::Resolve(reply, result));
                }
                Job::Route(request, reply) => {
                    let result = self.in_savepoint(|w| w.route(&request, now).map(Ok));
                    answers.push(Answer::Route(reply, result));
                }
                Job::Deliveries(deliveries, reply) => {
                    let result =
                        self.in_savepoint(|w| outbox::update(&w.conn, &deliveries).map(Ok));
                    answers.push(Answer::Deliveries(reply, result));
                }
                Job::Close(done) => closing = Some(done),
                Job::Synced => {}
            }
            if self.broken.is_none() && self.conn.is_autocommit() {
                self.broken = Some("SQLite abandoned the transaction".to_string());
            }
            if self.broken.is_some() {
                break;
            }
        }
        // Counted before COMMIT makes the group visible (see `Durability`).
        self.durability.ending();
        let result = match self.broken.take() {
            Some(reason) => Err(reason),
            None => self
                .conn
                .prepare_cached("COMMIT")
                .and_then(|mut commit| commit.execute([]))
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => {
                let published = std::mem::take(&mut self.fresh);
                self.finish(Done::Committed(published, answers, self.enqueued));
                self.checkpointer.settle(&self.conn);
            }
            Err(reason) => {
                tracing::error!(error = %reason, "group commit failed; every write in it is refused");
                self.fresh.clear();
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.finish(Done::Failed(reason, answers));
            }
        }
        closing
    }

    /// Refuses, and breaks the group, outside the group's transaction
    /// (SQLite abandoned it): every statement would commit on its own.
    fn within_group(&mut self) -> Result<(), StoreError> {
        if !self.conn.is_autocommit() {
            return Ok(());
        }
        let reason = "the group's transaction is gone".to_string();
        self.broken.get_or_insert(reason.clone());
        Err(StoreError::Io(std::io::Error::other(reason)))
    }

    /// Runs `f` in a SAVEPOINT, rolled back if it fails or asks to. A
    /// savepoint that cannot be opened inside the group's transaction, or
    /// cannot be undone, breaks the group (see [`Writer::commit_group`]).
    fn in_savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Result<T, Rollback<T>>, StoreError>,
    ) -> Result<T, StoreError> {
        self.within_group()?;
        // Cached statements: every request of every group runs these three,
        // and execute_batch would parse them each time.
        self.conn.prepare_cached("SAVEPOINT job")?.execute([])?;
        let written_before = self.fresh.mark();
        let result = f(self);
        let keep = matches!(result, Ok(Ok(_)));
        let undo = if keep {
            Ok(())
        } else {
            self.fresh.truncate(written_before);
            self.conn
                .prepare_cached("ROLLBACK TO job")
                .and_then(|mut s| s.execute([]))
                .map(|_| ())
        };
        let release = undo.and_then(|()| {
            self.conn
                .prepare_cached("RELEASE job")
                .and_then(|mut s| s.execute([]))
                .map(|_| ())
        });
        if let Err(err) = release {
            self.broken.get_or_insert(err.to_string());
            return Err(err.into());
        }
        match result? {
            Ok(value) => Ok(value),
            Err(Rollback(value)) => Ok(value),
        }
    }

    /// Runs `f` without a savepoint, for jobs that check everything before
    /// they write ([`Writer::apply`], [`Writer::ingest`]): a savepoint costs
    /// three statements and a copy of every page the job touches. Should such
    /// a job fail or refuse after writing after all, the group cannot be
    /// committed and is refused whole (see [`Writer::commit_group`]).
    fn unguarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Result<T, Rollback<T>>, StoreError>,
    ) -> Result<T, StoreError> {
        self.within_group()?;
        let before = self.conn.total_changes();
        let result = f(self);
        if !matches!(result, Ok(Ok(_))) && self.conn.total_changes() != before {
            self.broken
                .get_or_insert_with(|| "a job failed after writing".to_string());
        }
        match result? {
            Ok(value) | Err(Rollback(value)) => Ok(value),
        }
    }

    /// Applies a request. An atomic one is checked whole before anything is
    /// written (conditions, If-Match, ids), so that when it is refused
    /// nothing needs undoing; a batch applies each entry in its own
    /// savepoint. Either way the result never asks the caller to roll back
    /// writes: see [`Writer::unguarded`].
    fn apply(
        &mut self,
        request: &WriteRequest,
        now: i64,
    ) -> Result<Result<WriteOutcome, Rollback<WriteOutcome>>, StoreError> {
        if request.atomic {
            Ok(match self.check(request)? {
                Ok(checked) => Ok(self.write_checked(request, checked, now)?),
                Err(refused) => Err(Rollback(refused)),
            })
        } else {
            let mut results = Vec::with_capacity(request.mutations.len());
            for mutation in &request.mutations {
                let result = self.in_savepoint(|w| {
                    let mut map = FastMap::default();
                    let step = match w.resolve(mutation, &mut map)? {
                        Ok(plan) => match placeholders_resolved(mutation, &map) {
                            Ok(()) => w.prepare_step(mutation, plan)?,
                            Err(error) => Err(error),
                        },
                        Err(error) => Err(error),
                    };
                    Ok(match step {
                        Ok(step) => Ok(Ok(w.execute(mutation, step, &map, now)?)),
                        Err(error) => Err(Rollback(Err(error))),
                    })
                })?;
                results.push(result);
            }
            Ok(Ok(WriteOutcome::Applied(results)))
        }
    }

    /// Everything an atomic request must pass, checked before any of it is
    /// written: `Err` is the refusal, with nothing written.
    fn check(
        &mut self,
        request: &WriteRequest,
    ) -> Result<Result<Checked, WriteOutcome>, StoreError> {
        let refuse = |index, error| Ok(Err(WriteOutcome::RolledBack { index, error }));
        self.request_tokens.clear();
        let mut map = FastMap::default();
        let mut plans = Vec::with_capacity(request.mutations.len());
        // Conditions are resolved before anything is written, so two
        // entries with one condition would both miss and both create.
        let mut conditions: FastMap<ConditionKey, usize> = FastMap::default();
        for (index, mutation) in request.mutations.iter().enumerate() {
            if let Some(query) = mutation.condition() {
                let key = (
                    mutation.resource().resource_type,
                    query.canonical.as_slice(),
                );
                if let Some(first) = conditions.insert(key, index) {
                    let error = MutationError::SameResource {
                        first,
                        target: "the resource its condition names".to_string(),
                    };
                    return refuse(index, error);
                }
            }
        }
        for (index, mutation) in request.mutations.iter().enumerate() {
            match self.resolve(mutation, &mut map)? {
                Ok(plan) => plans.push(plan),
                Err(error) => return refuse(index, error),
            }
        }
        for (index, mutation) in request.mutations.iter().enumerate() {
            if let Err(error) = placeholders_resolved(mutation, &map) {
                return refuse(index, error);
            }
        }
        // FHIR R4 §3.1.0.11.2: entries of one transaction must not
        // touch the same resource.
        let mut touched: FastMap<(ResourceType, &str), usize> = FastMap::default();
        for (index, (mutation, plan)) in request.mutations.iter().zip(&plans).enumerate() {
            // Conditional creates that found what they look for change nothing.
            let Plan::Put(id) = plan else { continue };
            let ty = mutation.resource().resource_type;
            if let Some(first) = touched.insert((ty, id.as_str()), index) {
                let error = MutationError::SameResource {
                    first,
                    target: format!("{ty}/{id}"),
                };
                return refuse(index, error);
            }
        }
        // No two entries touch one resource, so what each finds stored now
        // is what it finds when it is written.
        let mut steps = Vec::with_capacity(plans.len());
        for (index, (mutation, plan)) in request.mutations.iter().zip(plans).enumerate() {
            match self.prepare_step(mutation, plan)? {
                Ok(step) => steps.push(step),
                Err(error) => return refuse(index, error),
            }
        }
        Ok(Ok(Checked { map, steps }))
    }

    fn write_checked(
        &mut self,
        request: &WriteRequest,
        checked: Checked,
        now: i64,
    ) -> Result<WriteOutcome, StoreError> {
        let mut results = Vec::with_capacity(checked.steps.len());
        for (mutation, step) in request.mutations.iter().zip(checked.steps) {
            results.push(Ok(self.execute(mutation, step, &checked.map, now)?));
        }
        Ok(WriteOutcome::Applied(results))
    }

    /// Decides which resource a mutation touches, and records what its
    /// `fullUrl` resolves to for the references of the other entries.
    fn resolve(
        &mut self,
        mutation: &Mutation,
        map: &mut FastMap<String, String>,
    ) -> Result<Result<Plan, MutationError>, StoreError> {
        let ty = mutation.resource().resource_type;
        let plan = match mutation {
            Mutation::Create {
                id, if_none_exist, ..
            } => match if_none_exist {
                None => Plan::Put(id.clone()),
                Some(query) => match self.matching_ids(query)?.as_slice() {
                    [] => Plan::Put(id.clone()),
                    [existing] => Plan::Existing(existing.clone()),
                    _ => return Ok(Err(MutationError::MultipleMatches)),
                },
            },
            Mutation::Update { id, .. } => Plan::Put(id.clone()),
            Mutation::ConditionalUpdate {
                resource,
                query,
                new_id,
                ..
            } => match self.matching_ids(query)?.as_slice() {
                // No match: a create. A body id is kept only if it is free;
                // taking it otherwise would overwrite a resource the
                // condition did not match.
                [] => match &resource.id {
                    None => Plan::Put(new_id.clone()),
                    Some(body_id) => {
                        if read_current(&self.conn, ty, body_id)?.is_some() {
                            return Ok(Err(MutationError::IdInUse(format!("{ty}/{body_id}"))));
                        }
                        Plan::Put(body_id.clone())
                    }
                },
                [existing] => {
                    if let Some(body_id) = &resource.id
                        && body_id != existing
                    {
                        return Ok(Err(MutationError::Conflict(format!(
                            "the body's id \"{body_id}\" is not the id of the resource the condition matches"
                        ))));
                    }
                    Plan::Put(existing.clone())
                }
                _ => return Ok(Err(MutationError::MultipleMatches)),
            },
        };
        if let Some(full_url) = mutation.full_url() {
            let (Plan::Existing(id) | Plan::Put(id)) = &plan;
            map.insert(full_url.to_string(), format!("{ty}/{id}"));
        }
        Ok(Ok(plan))
    }

    fn matching_ids(&mut self, query: &SearchQuery) -> Result<Vec<String>, StoreError> {
        // The usual condition, one identifier: a point lookup, without
        // building its SQL again for every request.
        if let [Clause::Token { param, any_of }] = query.clauses.as_slice()
            && let [TokenMatch::SystemValue(system, value)] = any_of.as_slice()
        {
            // A new patient's or visit's identifier: no resource has had it.
            if *param == "identifier" && self.cache.never_had(query.resource_type, system, value) {
                return Ok(Vec::new());
            }
            let mut stmt = self.conn.prepare_cached(
                "SELECT id FROM idx_token WHERE type=?1 AND param=?2 AND value=?3 AND system=?4 LIMIT 2",
            )?;
            let ty = query.resource_type.as_str();
            let ids = stmt
                .query_map(params![ty, param, value, system], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            return Ok(ids);
        }
        let (sql, args) = matching_ids_sql(query);
        let mut stmt = self.conn.prepare_cached(&format!("{sql} LIMIT 2"))?;
        let ids = stmt
            .query_map(params_from_iter(args.iter()), |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    /// Reads what a planned mutation finds stored and checks its If-Match.
    fn prepare_step(
        &mut self,
        mutation: &Mutation,
        plan: Plan,
    ) -> Result<Result<Step, MutationError>, StoreError> {
        let ty = mutation.resource().resource_type;
        let id = match plan {
            Plan::Existing(id) => {
                return Ok(match read_current(&self.conn, ty, &id)? {
                    Some(resource) => Ok(Step::Existing(resource)),
                    None => Err(MutationError::Conflict(format!("{ty}/{id} vanished"))),
                });
            }
            Plan::Put(id) => id,
        };
        // A server-assigned id (UUID v7) is new by construction.
        let fresh = matches!(mutation, Mutation::Create { id: new, .. } if *new == id);
        let current = if fresh {
            None
        } else {
            read_current_keyed(&self.conn, ty, &id)?
        };
        let if_match = match mutation {
            Mutation::Update { if_match, .. } | Mutation::ConditionalUpdate { if_match, .. } => {
                *if_match
            }
            Mutation::Create { .. } => None,
        };
        if let Some(expected) = if_match
            && current.as_ref().map(|c| c.stored.version) != Some(expected)
        {
            return Ok(Err(MutationError::VersionConflict {
                expected,
                current: current.map_or("none (it does not exist)".into(), |c| {
                    c.stored.version.to_string()
                }),
            }));
        }
        Ok(Ok(Step::Put { id, current }))
    }

    /// Writes a checked step: the new version, its index rows, its outbox row.
    fn execute(
        &mut self,
        mutation: &Mutation,
        step: Step,
        map: &FastMap<String, String>,
        now: i64,
    ) -> Result<Written, StoreError> {
        let resource = mutation.resource();
        let ty = resource.resource_type;
        let (id, current, old_keys, prev) = match step {
            Step::Existing(resource) => {
                return Ok(Written {
                    change: Change::Existing,
                    resource,
                });
            }
            Step::Put { id, current: None } => (id, None, None, None),
            Step::Put {
                id,
                current: Some(Keyed { stored, keys, vrow }),
            } => {
                // Index rows not recorded beside it (never, once upgraded):
                // the stored body says what they are.
                let keys = keys.or_else(|| keys_of(&stored));
                (id, Some(stored), keys, Some(vrow))
            }
        };
        let rest = rewrite_references(&resource.rest, map);
        if let Some(current) = &current {
            let same = assemble(
                ty,
                &id,
                current.version,
                current.last_updated_ms,
                &resource.meta_extra,
                &rest,
            );
            if same == current.body {
                return Ok(Written {
                    change: Change::Unchanged,
                    resource: current.clone(),
                });
            }
        }
        let version = current.as_ref().map_or(1, |c| c.version + 1);
        let body = assemble(ty, &id, version, now, &resource.meta_extra, &rest);
        self.conn
            .prepare_cached(
                "INSERT INTO versions(type, id, version, last_updated, body, prev) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![ty.as_str(), id, version, now, body, prev])?;
        let row = self.conn.last_insert_rowid();
        // A create whose If-None-Exist matched nothing: no other resource
        // of its type has the identifiers it names.
        let matched_nothing = match (mutation, &current) {
            (
                Mutation::Create {
                    if_none_exist: Some(condition),
                    ..
                },
                None,
            ) => Some(condition),
            _ => None,
        };
        let keys = self.index(resource, &id, map, old_keys, matched_nothing)?;
        self.conn
            .prepare_cached(
                "INSERT INTO current(type, id, version, last_updated, keys, vrow) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT(type, id) DO UPDATE SET version=excluded.version, \
                 last_updated=excluded.last_updated, keys=excluded.keys, vrow=excluded.vrow",
            )?
            .execute(params![ty.as_str(), id, version, now, keys.encode(), row])?;
        if self
            .outbox_types
            .as_ref()
            .is_none_or(|types| types.contains(&ty))
        {
            outbox::enqueue(&self.conn, ty, &id, version)?;
            self.enqueued = true;
        }
        let resource = Stored {
            resource_type: ty,
            id,
            version,
            last_updated_ms: now,
            body,
        };
        if self.bulk {
            self.fresh.forgotten.push((ty, resource.id.clone()));
        } else {
            self.fresh.versions.push(resource.clone());
        }
        Ok(Written {
            change: if current.is_some() {
                Change::Updated
            } else {
                Change::Created
            },
            resource,
        })
    }

    /// Writes the resource's index rows and returns them as [`Keys`], to be
    /// kept in `current`. On an update only the rows that differ from the
    /// stored ones (`old`) are deleted and inserted: most updates (an A08, a
    /// status change) keep most rows, and every row written dirties pages
    /// the commit must write.
    fn index(
        &mut self,
        resource: &Prepared,
        id: &str,
        map: &FastMap<String, String>,
        old: Option<Keys>,
        matched_nothing: Option<&SearchQuery>,
    ) -> Result<Keys, StoreError> {
        let ty = resource.resource_type.as_str();
        let keys = keys_from(&resource.index, map);
        let old = old.unwrap_or_default();

        sync_rows(
            &self.conn,
            "DELETE FROM idx_token WHERE type=?1 AND param=?2 AND value=?3 AND system=?4 AND id=?5",
            "INSERT OR IGNORE INTO idx_token(type, param, value, system, id) VALUES (?1, ?2, ?3, ?4, ?5)",
            (ty, id),
            (&old.tokens, &keys.tokens),
            |(param, value, system)| [param, value, system],
        )?;
        sync_rows(
            &self.conn,
            "DELETE FROM idx_ref WHERE type=?1 AND param=?2 AND target_id=?3 AND target_type=?4 AND id=?5",
            "INSERT OR IGNORE INTO idx_ref(type, param, target_id, target_type, id) VALUES (?1, ?2, ?3, ?4, ?5)",
            (ty, id),
            (&old.refs, &keys.refs),
            |(param, target_id, target_type)| [param, target_id, target_type],
        )?;
        sync_rows(
            &self.conn,
            "DELETE FROM idx_date WHERE type=?1 AND param=?2 AND lo=?3 AND hi=?4 AND id=?5",
            "INSERT OR IGNORE INTO idx_date(type, param, lo, hi, id) VALUES (?1, ?2, ?3, ?4, ?5)",
            (ty, id),
            (&old.dates, &keys.dates),
            |(param, lo, hi)| [param, lo, hi],
        )?;
        // Whatever the cache answers now: a reader may still be answering
        // from the set of known identifiers while the store closes.
        let (before, after) = (identifier_rows(&old), identifier_rows(&keys));
        for &(value, system) in after.iter().filter(|k| !before.contains(k)) {
            self.cache.indexing(resource.resource_type, system, value);
        }
        if self.cache.keeps_lookups() {
            self.changed_identifiers(resource.resource_type, id, &before, &after, matched_nothing)?;
        }
        Ok(keys)
    }

    /// For the cache: each identifier (as `(value, system)`) that `before`
    /// (the stored rows) or `after` (the new ones) has and the other has
    /// not, with every resource that has it now. Those named by
    /// `matched_nothing` (a create's If-None-Exist that matched nothing: no
    /// other resource has them) are not read. A bulk job publishes each as
    /// forgotten instead.
    fn changed_identifiers(
        &mut self,
        ty: ResourceType,
        id: &str,
        before: &[(&str, &str)],
        after: &[(&str, &str)],
        matched_nothing: Option<&SearchQuery>,
    ) -> Result<(), StoreError> {
        let unheld = match matched_nothing {
            Some(condition) if !self.bulk => identifiers_of(condition),
            _ => Vec::new(),
        };
        let changed = after
            .iter()
            .filter(|k| !before.contains(k))
            .chain(before.iter().filter(|k| !after.contains(k)));
        for &(value, system) in changed {
            let first_in_request = !self
                .request_tokens
                .iter()
                .any(|(t, s, v)| *t == ty && &**s == system && &**v == value);
            let key: TokenKey = (ty, system.into(), value.into());
            if first_in_request {
                self.request_tokens.push(key.clone());
            }
            if self.bulk {
                self.fresh.tokens.push((key, None));
                continue;
            }
            // Named by a create's If-None-Exist that matched nothing, and not
            // changed before in this request: this resource alone has it.
            let alone = first_in_request
                && after.contains(&(value, system))
                && unheld.iter().any(|(s, v)| s == system && v == value);
            if alone {
                if !self.crowded.is_empty() {
                    self.crowded.remove(&key);
                }
                self.fresh.tokens.push((key, Some(vec![id.to_string()])));
                continue;
            }
            if self.crowded.contains(&key) {
                self.fresh.tokens.push((key, None));
                continue;
            }
            // An identifier on more than MAX_HOLDERS resources is forgotten.
            let ids = self
                .conn
                .prepare_cached(
                    "SELECT id FROM idx_token WHERE type=?1 AND param='identifier' AND value=?2 AND system=?3 \
                     LIMIT ?4",
                )?
                .query_map(
                    params![ty.as_str(), value, system, MAX_HOLDERS as i64 + 1],
                    |row| row.get(0),
                )?
                .collect::<Result<Vec<String>, _>>()?;
            let ids = (ids.len() <= MAX_HOLDERS).then_some(ids);
            if ids.is_none() {
                if self.crowded.len() >= MAX_CROWDED {
                    self.crowded.clear();
                }
                self.crowded.insert(key.clone());
            }
            self.fresh.tokens.push((key, ids));
        }
        Ok(())
    }

    /// A routing pass: its deliveries, the removal of the outbox rows it
    /// routed, and what its triggers create (each conditional create on its
    /// own, so that one refused does not hold back the rest).
    fn route(&mut self, request: &RouteRequest, now: i64) -> Result<RouteOutcome, StoreError> {
        let deliveries = outbox::insert(&self.conn, &request.deliveries, now)?;
        outbox::remove_routed(&self.conn, request.routed_through)?;
        let triggered = if request.triggered.is_empty() {
            Vec::new()
        } else {
            let write = WriteRequest {
                mutations: request.triggered.clone(),
                atomic: false,
            };
            match self.apply(&write, now)? {
                Ok(WriteOutcome::Applied(results)) => results,
                // Not atomic: applied entry by entry, never rolled back whole.
                _ => return Err(failure("a routing batch was rolled back whole")),
            }
        };
        Ok(RouteOutcome {
            deliveries,
            triggered,
        })
    }

    fn quarantine(
        &mut self,
        entries: &[QuarantineEntry],
        now: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO quarantine(received_at, source, sender, journal_id, location, reasons, content_type, payload) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut ids = Vec::with_capacity(entries.len());
        for e in entries {
            let received = if e.received_at_ms > 0 {
                e.received_at_ms
            } else {
                now
            };
            insert.execute(params![
                received,
                e.source,
                e.sender,
                e.journal_id,
                e.location,
                e.reasons,
                e.content_type,
                e.payload
            ])?;
            ids.push(self.conn.last_insert_rowid());
        }
        Ok(ids)
    }

    /// Marks held entry `id` `status` (`replayed`, `discarded`); false if
    /// it was not held.
    fn resolve_quarantined(&mut self, id: i64, status: &str, now: i64) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .prepare_cached("UPDATE quarantine SET status = ?3, resolved_at = ?2 WHERE id = ?1 AND status = 'held'")?
            .execute(params![id, now, status])?;
        Ok(changed == 1)
    }

    /// Gives held entry `id` the `reasons` its replay failed for; false if
    /// it was not held.
    fn revise_quarantined(&mut self, id: i64, reasons: &str) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .prepare_cached("UPDATE quarantine SET reasons = ?2 WHERE id = ?1 AND status = 'held'")?
            .execute(params![id, reasons])?;
        Ok(changed == 1)
    }

    /// The journal entry, then its writes, quarantine entries and event
    /// clocks. A repeat and a refused write (or a raced create, see
    /// [`IngestRequest::write`]) are found before anything is written: a
    /// write refused leaves no journal entry either.
    fn ingest(
        &mut self,
        request: &IngestRequest,
        now: i64,
    ) -> Result<Result<IngestOutcome, Rollback<IngestOutcome>>, StoreError> {
        // Checked before anything is written; marked at the end.
        if let Some(replayed) = request.replays {
            let status: Option<String> = self
                .conn
                .prepare_cached("SELECT status FROM quarantine WHERE id=?1")?
                .query_row(params![replayed], |row| row.get(0))
                .optional()?;
            if status.as_deref() != Some("held") {
                return Ok(Ok(IngestOutcome::NotHeld));
            }
        }
        if let Some(entry) = &request.journal
            && let Some(id) = self.journaled(entry)?
        {
            let held: Option<String> = self
                .conn
                .prepare_cached(
                    "SELECT reasons FROM quarantine WHERE journal_id=?1 AND status='held' ORDER BY id LIMIT 1",
                )?
                .query_row(params![id], |row| row.get(0))
                .optional()?;
            return Ok(Ok(IngestOutcome::Repeat {
                journal_id: id,
                held,
            }));
        }
        let checked = match &request.write {
            Some(write) if write.atomic => match self.check(write)? {
                Ok(checked) => {
                    // See `IngestRequest::write`: a create raced is refused.
                    let raced =
                        checked
                            .steps
                            .iter()
                            .enumerate()
                            .find_map(|(index, step)| match step {
                                Step::Existing(found) => Some((index, found)),
                                Step::Put { .. } => None,
                            });
                    if let Some((index, found)) = raced {
                        let error = MutationError::CreatedMeanwhile(format!(
                            "{}/{}",
                            found.resource_type, found.id
                        ));
                        return Ok(Err(Rollback(IngestOutcome::Done {
                            journal_id: None,
                            write: Some(WriteOutcome::RolledBack { index, error }),
                            quarantined: Vec::new(),
                        })));
                    }
                    Some(checked)
                }
                Err(refused) => {
                    return Ok(Err(Rollback(IngestOutcome::Done {
                        journal_id: None,
                        write: Some(refused),
                        quarantined: Vec::new(),
                    })));
                }
            },
            _ => None,
        };
        // Every record the request was planned on is as it was then
        // (version and event clock), or nothing is written.
        for c in &request.clocks {
            let Some((version, clock)) = &c.planned else {
                continue;
            };
            let now: Option<(i64, Option<Clock>)> = self
                .conn
                .prepare_cached(
                    "SELECT version, event_ms, member_ms FROM current WHERE type=?1 AND id=?2",
                )?
                .query_row(params![c.resource_type.as_str(), c.id], |row| {
                    Ok((row.get(0)?, clock_at(row, 1)?))
                })
                .optional()?;
            if now.as_ref().is_none_or(|(v, c)| v != version || c != clock) {
                let current = match now {
                    Some((v, c)) if v == *version && c != *clock => {
                        format!("{v}, its event clock moved since")
                    }
                    Some((v, _)) => v.to_string(),
                    None => "none (it does not exist)".to_string(),
                };
                return Ok(Err(Rollback(IngestOutcome::Done {
                    journal_id: None,
                    write: Some(WriteOutcome::RolledBack {
                        index: 0,
                        error: MutationError::VersionConflict {
                            expected: *version,
                            current,
                        },
                    }),
                    quarantined: Vec::new(),
                })));
            }
        }
        let mut journal_id = None;
        if let Some(entry) = &request.journal {
            journal_id = Some(self.journal(entry)?.id);
        }
        let write = match (&request.write, checked) {
            (Some(write), Some(checked)) => Some(self.write_checked(write, checked, now)?),
            // A batch: applied entry by entry, never refused whole.
            (Some(write), None) => match self.apply(write, now)? {
                Ok(outcome) | Err(Rollback(outcome)) => Some(outcome),
            },
            (None, _) => None,
        };
        let entries: Vec<QuarantineEntry> = request
            .quarantine
            .iter()
            .cloned()
            .map(|mut e| {
                e.journal_id = e.journal_id.or(journal_id);
                e
            })
            .collect();
        let quarantined = self.quarantine(&entries, now)?;
        // Of resources written above or before (a clock of a create that
        // found its resource made meanwhile names no resource: no row). The
        // planner worked each clock out from the one checked above, or for
        // a record this request creates, from none: one planned on no
        // clock never replaces one (a clock never moves back). A clock set
        // again as it is writes nothing.
        for c in &request.clocks {
            let set = self
                .conn
                .prepare_cached(
                    "UPDATE current SET event_ms = ?3, member_ms = ?4 WHERE type=?1 AND id=?2 \
                     AND (?5 OR event_ms IS NULL) \
                     AND (event_ms IS NOT ?3 OR member_ms IS NOT ?4)",
                )?
                .execute(params![
                    c.resource_type.as_str(),
                    c.id,
                    c.clock.event_ms,
                    c.clock.members,
                    c.planned.is_some(),
                ])?;
            if set > 0 {
                self.fresh
                    .clocks
                    .push((c.resource_type, c.id.clone(), Some(c.clock.clone())));
            }
        }
        if let Some(replayed) = request.replays {
            self.resolve_quarantined(replayed, "replayed", now)?;
        }
        Ok(Ok(IngestOutcome::Done {
            journal_id,
            write,
            quarantined,
        }))
    }

    /// The id of the journal entry `entry` repeats (same source, sender and
    /// message id), if any.
    fn journaled(&mut self, entry: &JournalEntry) -> Result<Option<i64>, StoreError> {
        let Some(message_id) = &entry.message_id else {
            return Ok(None);
        };
        // One lookup by sender and message id (`journal_sent`), whichever
        // of its repeat sources each entry came by: a list of sources in
        // SQL (`source IN (?, ?)`) built an ephemeral table on every call
        // (~40,000 instructions), and a lookup per source cost two.
        let sources = repeat_sources(&entry.source);
        let mut found: Option<(usize, i64)> = None;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT source, id FROM journal WHERE sender=?1 AND message_id=?2")?;
        let mut rows = stmt.query(params![entry.sender, message_id])?;
        while let Some(row) = rows.next()? {
            let source = row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
            // Held under both (journaled before repeats were matched across
            // transports): the first `repeat_sources` lists, as the lookup
            // per source found it.
            if let Some(rank) = sources.iter().position(|s| *s == source)
                && found.is_none_or(|(best, _)| rank < best)
            {
                found = Some((rank, row.get(1)?));
            }
        }
        Ok(found.map(|(_, id)| id))
    }

    /// Journals `entry` unless it repeats one: [`Writer::journaled`] must
    /// have found no repeat from another of its [`repeat_sources`] first.
    fn journal(&mut self, entry: &JournalEntry) -> Result<JournalReceipt, StoreError> {
        // One statement for a new entry; a repeat (same source, sender and
        // message id) inserts nothing and is then looked up.
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO journal(received_at, source, sender, message_id, content_type, payload) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT(source, sender, message_id) WHERE message_id IS NOT NULL DO NOTHING",
            )?
            .execute(params![
                entry.received_at_ms,
                entry.source,
                entry.sender,
                entry.message_id,
                entry.content_type,
                entry.payload.as_ref()
            ])?;
        if inserted == 1 {
            return Ok(JournalReceipt {
                id: self.conn.last_insert_rowid(),
                duplicate: false,
            });
        }
        let id = self
            .journaled(entry)?
            .ok_or_else(|| failure("a journal entry was neither inserted nor found"))?;
        Ok(JournalReceipt {
            id,
            duplicate: true,
        })
    }
}

/// The answer to a [`Job::WriteEach`]: one result per request.
type EachResult = Result<Vec<Result<WriteOutcome, StoreError>>, StoreError>;

/// A result to keep while undoing what produced it (a failed atomic request).
struct Rollback<T>(T);

/// Refuses a mutation that would store a placeholder reference (`urn:uuid:`
/// or `urn:oid:`) no entry of its request resolves: it would point nowhere,
/// and no search could find it.
fn placeholders_resolved(
    mutation: &Mutation,
    map: &FastMap<String, String>,
) -> Result<(), MutationError> {
    match unresolved_placeholder(&mutation.resource().rest, map) {
        None => Ok(()),
        Some(reference) => Err(MutationError::Conflict(format!(
            "the reference {reference:?} points nowhere: a urn:uuid or urn:oid reference must be \
             the fullUrl of another entry of the same transaction Bundle"
        ))),
    }
}

/// `(value, system)` of each of `keys`' identifier rows.
fn identifier_rows(keys: &Keys) -> Vec<(&str, &str)> {
    keys.tokens
        .iter()
        .filter(|(param, _, _)| param == "identifier")
        .map(|(_, value, system)| (value.as_str(), system.as_str()))
        .collect()
}

/// The `(system, value)` identifiers a condition asks for, when it is one
/// `identifier` clause of exact tokens (as [`crate::fhir::search::identifier_query`]
/// builds): a condition that matches nothing then means no resource of its
/// type has any of them. Empty for any other condition.
fn identifiers_of(condition: &SearchQuery) -> Vec<(String, String)> {
    let [Clause::Token { param, any_of }] = condition.clauses.as_slice() else {
        return Vec::new();
    };
    if *param != "identifier" {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(any_of.len());
    for token in any_of {
        match token {
            TokenMatch::SystemValue(system, value) => out.push((system.clone(), value.clone())),
            TokenMatch::NoSystem(value) => out.push((String::new(), value.clone())),
            _ => return Vec::new(),
        }
    }
    out
}

/// Makes one index table hold `new` instead of `old` for resource
/// `(type, id)`: deletes the rows only in `old`, inserts those only in `new`
/// (both sorted). `delete` and `insert` bind type, the row's three columns
/// and id. Statements are taken from the cache only when there are rows for
/// them: a cache lookup hashes the SQL, and most writes (creates) delete
/// nothing.
fn sync_rows<T: Ord>(
    conn: &Connection,
    delete: &str,
    insert: &str,
    (ty, id): (&str, &str),
    (old, new): (&[T], &[T]),
    columns: impl Fn(&T) -> [&dyn rusqlite::ToSql; 3],
) -> Result<(), StoreError> {
    for (sql, rows, without) in [(delete, old, new), (insert, new, old)] {
        let mut rows = missing_from(rows, without).peekable();
        if rows.peek().is_none() {
            continue;
        }
        let mut stmt = conn.prepare_cached(sql)?;
        for row in rows {
            let [a, b, c] = columns(row);
            stmt.execute(params![ty, a, b, c, id])?;
        }
    }
    Ok(())
}

/// The index rows of a stored version, from its body.
fn keys_of(stored: &Stored) -> Option<Keys> {
    let value: serde_json::Value = serde_json::from_str(&stored.body).ok()?;
    let index = crate::fhir::search::extract_index(stored.resource_type, &value);
    Some(keys_from(&index, &FastMap::default()))
}

/// The index rows of extracted entries, references resolved through `map`
/// (a transaction's `fullUrl`s).
fn keys_from(index: &IndexEntries, map: &FastMap<String, String>) -> Keys {
    let mut keys = Keys::default();
    for t in &index.tokens {
        keys.tokens
            .push((t.param.to_string(), t.value.clone(), t.system.clone()));
    }
    for r in &index.references {
        let resolved = map.get(&r.reference).unwrap_or(&r.reference);
        if let Some((target_type, target_id)) = reference_target(resolved)
            && r.target.is_none_or(|only| only.as_str() == target_type)
        {
            keys.refs.push((
                r.param.to_string(),
                target_id.to_string(),
                target_type.to_string(),
            ));
        }
    }
    for d in &index.dates {
        keys.dates
            .push((d.param.to_string(), d.range.start, d.range.end));
    }
    keys.normalised()
}

/// An atomic request that passed its checks: what its `fullUrl`s resolve to
/// and, for each entry, what it found stored.
struct Checked {
    map: FastMap<String, String>,
    steps: Vec<Step>,
}

/// A mutation ready to write.
enum Step {
    /// A conditional create that found its resource: nothing to write.
    Existing(Stored),
    /// A new version of `id`; `current` is what is stored now.
    Put { id: String, current: Option<Keyed> },
}

enum Answer {
    Write(
        oneshot::Sender<Result<WriteOutcome, StoreError>>,
        Result<WriteOutcome, StoreError>,
    ),
    WriteEach(oneshot::Sender<EachResult>, EachResult),
    Journal(
        oneshot::Sender<Result<JournalReceipt, StoreError>>,
        Result<JournalReceipt, StoreError>,
    ),
    Ingest(
        oneshot::Sender<Result<IngestOutcome, StoreError>>,
        Result<IngestOutcome, StoreError>,
    ),
    Quarantine(
        oneshot::Sender<Result<Vec<i64>, StoreError>>,
        Result<Vec<i64>, StoreError>,
    ),
    Resolve(
        oneshot::Sender<Result<bool, StoreError>>,
        Result<bool, StoreError>,
    ),
    Route(
        oneshot::Sender<Result<RouteOutcome, StoreError>>,
        Result<RouteOutcome, StoreError>,
    ),
    Deliveries(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Write(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::WriteEach(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::Journal(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::Ingest(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::Quarantine(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::Resolve(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::Route(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::Deliveries(reply, result) => {
                let _ = reply.send(result);
            }
        }
    }

    fn fail(self, message: &str) {
        match self {
            Answer::Write(reply, _) => {
                let _ = reply.send(Err(failure(message)));
            }
            Answer::WriteEach(reply, _) => {
                let _ = reply.send(Err(failure(message)));
            }
            Answer::Journal(reply, _) => {
                let _ = reply.send(Err(failure(message)));
            }
            Answer::Ingest(reply, _) => {
                let _ = reply.send(Err(failure(message)));
            }
            Answer::Quarantine(reply, _) => {
                let _ = reply.send(Err(failure(message)));
            }
            Answer::Resolve(reply, _) => {
                let _ = reply.send(Err(failure(message)));
            }
            Answer::Route(reply, _) => {
                let _ = reply.send(Err(failure(message)));
            }
            Answer::Deliveries(reply, _) => {
                let _ = reply.send(Err(failure(message)));
            }
        }
    }
}

/// The error every job of a failed group gets.
fn failure(message: &str) -> StoreError {
    StoreError::Io(std::io::Error::other(message.to_string()))
}

fn answer_failure(job: Job, message: &str) {
    match job {
        Job::Write(_, reply) => {
            let _ = reply.send(Err(failure(message)));
        }
        Job::WriteEach(_, reply) => {
            let _ = reply.send(Err(failure(message)));
        }
        Job::Journal(_, reply) => {
            let _ = reply.send(Err(failure(message)));
        }
        Job::Ingest(_, reply) => {
            let _ = reply.send(Err(failure(message)));
        }
        Job::Quarantine(_, reply) => {
            let _ = reply.send(Err(failure(message)));
        }
        Job::Discard(_, reply) | Job::Revise(_, _, reply) => {
            let _ = reply.send(Err(failure(message)));
        }
        Job::Route(_, reply) => {
            let _ = reply.send(Err(failure(message)));
        }
        Job::Deliveries(_, reply) => {
            let _ = reply.send(Err(failure(message)));
        }
        Job::Close(done) => {
            let _ = done.send(());
        }
        Job::Synced => {}
    }
}
