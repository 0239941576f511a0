//! The single writer: takes every job waiting, applies each in its own
//! SAVEPOINT, commits them together (group commit) and only then answers.
//! Conditional creates and updates are resolved here, serialised with writes.

use super::search::matching_ids_sql;
use super::{Job, outbox, read_current};
use crate::fhir::ResourceType;
use crate::fhir::json::rewrite_references;
use crate::fhir::resource::{Prepared, assemble};
use crate::fhir::search::{SearchQuery, reference_target};
use crate::store::{
    Change, IngestOutcome, IngestRequest, JournalEntry, JournalReceipt, Mutation, MutationError,
    QuarantineEntry, RouteOutcome, RouteRequest, StoreError, Stored, WriteOutcome, WriteRequest,
    Written,
};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, oneshot};

pub(super) struct Writer {
    conn: Connection,
    max_batch: usize,
    /// lastUpdated of the latest commit: never goes backwards, even if the
    /// wall clock does.
    last_ms: i64,
    /// Why the current group can no longer be committed, if it cannot.
    broken: Option<String>,
    /// Did the current group add to the outbox?
    enqueued: bool,
    /// Told after a commit that added to the outbox (the router waits on it).
    outbox_signal: Arc<Notify>,
    /// Types routed (`None`: all).
    outbox_types: Option<Vec<ResourceType>>,
}

/// A search condition of a given type, as written (its canonical parameters).
type ConditionKey<'a> = (ResourceType, &'a [(String, String)]);

/// What the writer decided a mutation does, once its conditions are resolved.
enum Plan {
    Existing(String),
    Put(String),
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        max_batch: usize,
        outbox_signal: Arc<Notify>,
        outbox_types: Option<Vec<ResourceType>>,
    ) -> Self {
        Writer {
            outbox_types,
            conn,
            max_batch,
            last_ms: 0,
            broken: None,
            enqueued: false,
            outbox_signal,
        }
    }

    pub(super) fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
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
                job => self.commit_group(job, &mut jobs),
            };
        }
        // Whatever is still queued is refused: dropping a job tells its sender
        // the store is closed.
        jobs.close();
        while jobs.try_recv().is_ok() {}
        if let Err(err) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
            tracing::warn!(error = %err, "WAL checkpoint at close failed");
        }
        drop(self.conn);
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    /// Applies every job in one transaction and answers each after COMMIT.
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
        if !self.conn.is_autocommit() {
            // Left inside a transaction by an earlier failure: start clean.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        if let Err(err) = self.conn.execute_batch("BEGIN IMMEDIATE") {
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
                    Err(_) => break,
                },
            };
            match job {
                Job::Write(request, reply) => {
                    let result = self.in_savepoint(|w| w.apply(&request, now));
                    answers.push(Answer::Write(reply, result));
                }
                Job::Journal(entry, reply) => {
                    let result = self.in_savepoint(|w| w.journal(&entry).map(Ok));
                    answers.push(Answer::Journal(reply, result));
                }
                Job::Ingest(request, reply) => {
                    let result = self.in_savepoint(|w| w.ingest(&request, now));
                    answers.push(Answer::Ingest(reply, result));
                }
                Job::Quarantine(entries, reply) => {
                    let result = self.in_savepoint(|w| w.quarantine(&entries, now).map(Ok));
                    answers.push(Answer::Quarantine(reply, result));
                }
                Job::Resolve(id, reply) => {
                    let result = self.in_savepoint(|w| w.resolve_quarantined(id, now).map(Ok));
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
            }
            if self.broken.is_none() && self.conn.is_autocommit() {
                self.broken = Some("SQLite abandoned the transaction".to_string());
            }
            if self.broken.is_some() {
                break;
            }
        }
        let result = match self.broken.take() {
            Some(reason) => Err(reason),
            None => self.conn.execute_batch("COMMIT").map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => {
                if self.enqueued {
                    self.outbox_signal.notify_one();
                }
                for answer in answers {
                    answer.send();
                }
            }
            Err(reason) => {
                tracing::error!(error = %reason, "group commit failed; every write in it is refused");
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                for answer in answers {
                    answer.fail(&reason);
                }
            }
        }
        closing
    }

    /// Runs `f` in a SAVEPOINT, rolled back if it fails or asks to. A
    /// savepoint that cannot be opened inside the group's transaction, or
    /// cannot be undone, breaks the group (see [`Writer::commit_group`]).
    fn in_savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<Result<T, Rollback<T>>, StoreError>,
    ) -> Result<T, StoreError> {
        if self.conn.is_autocommit() {
            let reason = "the group's transaction is gone".to_string();
            self.broken.get_or_insert(reason.clone());
            return Err(StoreError::Io(std::io::Error::other(reason)));
        }
        // Cached statements: every request of every group runs these three,
        // and execute_batch would parse them each time.
        self.conn.prepare_cached("SAVEPOINT job")?.execute([])?;
        let result = f(self);
        let keep = matches!(result, Ok(Ok(_)));
        let undo = if keep {
            Ok(())
        } else {
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

    fn apply(
        &mut self,
        request: &WriteRequest,
        now: i64,
    ) -> Result<Result<WriteOutcome, Rollback<WriteOutcome>>, StoreError> {
        if request.atomic {
            let mut map = HashMap::new();
            let mut plans = Vec::with_capacity(request.mutations.len());
            // Conditions are resolved before anything is written, so two
            // entries with one condition would both miss and both create.
            let mut conditions: HashMap<ConditionKey, usize> = HashMap::new();
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
                        return Ok(Err(Rollback(WriteOutcome::RolledBack { index, error })));
                    }
                }
            }
            for (index, mutation) in request.mutations.iter().enumerate() {
                match self.resolve(mutation, &mut map)? {
                    Ok(plan) => plans.push(plan),
                    Err(error) => {
                        return Ok(Err(Rollback(WriteOutcome::RolledBack { index, error })));
                    }
                }
            }
            // FHIR R4 §3.1.0.11.2: entries of one transaction must not
            // touch the same resource.
            let mut touched: HashMap<(ResourceType, &str), usize> = HashMap::new();
            for (index, (mutation, plan)) in request.mutations.iter().zip(&plans).enumerate() {
                // Conditional creates that found what they look for change nothing.
                let Plan::Put(id) = plan else { continue };
                let ty = mutation.resource().resource_type;
                if let Some(first) = touched.insert((ty, id.as_str()), index) {
                    let error = MutationError::SameResource {
                        first,
                        target: format!("{ty}/{id}"),
                    };
                    return Ok(Err(Rollback(WriteOutcome::RolledBack { index, error })));
                }
            }
            let mut results = Vec::with_capacity(plans.len());
            for (index, (mutation, plan)) in request.mutations.iter().zip(plans).enumerate() {
                match self.execute(mutation, plan, &map, now)? {
                    Ok(written) => results.push(Ok(written)),
                    Err(error) => {
                        return Ok(Err(Rollback(WriteOutcome::RolledBack { index, error })));
                    }
                }
            }
            Ok(Ok(WriteOutcome::Applied(results)))
        } else {
            let mut results = Vec::with_capacity(request.mutations.len());
            for mutation in &request.mutations {
                let result = self.in_savepoint(|w| {
                    let mut map = HashMap::new();
                    let outcome = match w.resolve(mutation, &mut map)? {
                        Ok(plan) => w.execute(mutation, plan, &map, now)?,
                        Err(error) => Err(error),
                    };
                    Ok(match outcome {
                        Ok(written) => Ok(Ok(written)),
                        Err(error) => Err(Rollback(Err(error))),
                    })
                })?;
                results.push(result);
            }
            Ok(Ok(WriteOutcome::Applied(results)))
        }
    }

    /// Decides which resource a mutation touches, and records what its
    /// `fullUrl` resolves to for the references of the other entries.
    fn resolve(
        &mut self,
        mutation: &Mutation,
        map: &mut HashMap<String, String>,
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
        let (sql, args) = matching_ids_sql(query);
        let mut stmt = self.conn.prepare_cached(&format!("{sql} LIMIT 2"))?;
        let ids = stmt
            .query_map(params_from_iter(args.iter()), |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    fn execute(
        &mut self,
        mutation: &Mutation,
        plan: Plan,
        map: &HashMap<String, String>,
        now: i64,
    ) -> Result<Result<Written, MutationError>, StoreError> {
        let resource = mutation.resource();
        let ty = resource.resource_type;
        let id = match plan {
            Plan::Existing(id) => {
                let current = read_current(&self.conn, ty, &id)?;
                return Ok(current
                    .map(|resource| Written {
                        change: Change::Existing,
                        resource,
                    })
                    .ok_or_else(|| MutationError::Conflict(format!("{ty}/{id} vanished"))));
            }
            Plan::Put(id) => id,
        };
        // A server-assigned id (UUID v7) is new by construction.
        let fresh = matches!(mutation, Mutation::Create { id: new, .. } if *new == id);
        let current = if fresh {
            None
        } else {
            read_current(&self.conn, ty, &id)?
        };
        let if_match = match mutation {
            Mutation::Update { if_match, .. } | Mutation::ConditionalUpdate { if_match, .. } => {
                *if_match
            }
            Mutation::Create { .. } => None,
        };
        if let Some(expected) = if_match
            && current.as_ref().map(|c| c.version) != Some(expected)
        {
            return Ok(Err(MutationError::VersionConflict {
                expected,
                current: current
                    .map_or("none (it does not exist)".into(), |c| c.version.to_string()),
            }));
        }
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
                return Ok(Ok(Written {
                    change: Change::Unchanged,
                    resource: current.clone(),
                }));
            }
        }
        let version = current.as_ref().map_or(1, |c| c.version + 1);
        let body = assemble(ty, &id, version, now, &resource.meta_extra, &rest);
        self.conn
            .prepare_cached(
                "INSERT INTO versions(type, id, version, last_updated, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![ty.as_str(), id, version, now, body])?;
        self.conn
            .prepare_cached(
                "INSERT INTO current(type, id, version, last_updated) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT(type, id) DO UPDATE SET version=excluded.version, last_updated=excluded.last_updated",
            )?
            .execute(params![ty.as_str(), id, version, now])?;
        if self
            .outbox_types
            .as_ref()
            .is_none_or(|types| types.contains(&ty))
        {
            outbox::enqueue(&self.conn, ty, &id, version)?;
            self.enqueued = true;
        }
        self.index(resource, &id, map, current.is_some())?;
        Ok(Ok(Written {
            change: if current.is_some() {
                Change::Updated
            } else {
                Change::Created
            },
            resource: Stored {
                resource_type: ty,
                id,
                version,
                last_updated_ms: now,
                body,
            },
        }))
    }

    /// Writes the resource's index rows. On an update only the rows that
    /// differ from the stored ones are deleted and inserted: most updates
    /// (an A08, a status change) keep most rows, and every row written
    /// dirties pages of its table and two indexes that the commit must write.
    fn index(
        &mut self,
        resource: &Prepared,
        id: &str,
        map: &HashMap<String, String>,
        update: bool,
    ) -> Result<(), StoreError> {
        let ty = resource.resource_type.as_str();
        let tokens: Vec<(&str, &str, &str)> = resource
            .index
            .tokens
            .iter()
            .map(|t| (t.param, t.value.as_str(), t.system.as_str()))
            .collect();
        let mut references: Vec<(&str, &str, &str)> = Vec::new();
        for r in &resource.index.references {
            let resolved = map.get(&r.reference).unwrap_or(&r.reference);
            let Some((target_type, target_id)) = reference_target(resolved) else {
                continue;
            };
            if r.target.is_some_and(|only| only.as_str() != target_type) {
                continue;
            }
            references.push((r.param, target_id, target_type));
        }
        let dates: Vec<(&str, i64, i64)> = resource
            .index
            .dates
            .iter()
            .map(|d| (d.param, d.range.start, d.range.end))
            .collect();

        let (mut old_tokens, mut old_refs, mut old_dates) = (Vec::new(), Vec::new(), Vec::new());
        if update {
            let mut stmt = self.conn.prepare_cached(
                "SELECT param, value, system FROM idx_token WHERE type=?1 AND id=?2",
            )?;
            for row in stmt.query_map(params![ty, id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? {
                old_tokens.push(row?);
            }
            let mut stmt = self.conn.prepare_cached(
                "SELECT param, target_id, target_type FROM idx_ref WHERE type=?1 AND id=?2",
            )?;
            for row in stmt.query_map(params![ty, id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? {
                old_refs.push(row?);
            }
            let mut stmt = self.conn.prepare_cached(
                "SELECT rowid, param, lo, hi FROM idx_date WHERE type=?1 AND id=?2",
            )?;
            for row in stmt.query_map(params![ty, id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })? {
                old_dates.push(row?);
            }
        }
        let old_tokens: Vec<(String, String, String)> = old_tokens;
        let old_refs: Vec<(String, String, String)> = old_refs;

        let mut delete = self.conn.prepare_cached(
            "DELETE FROM idx_token WHERE type=?1 AND param=?2 AND value=?3 AND system=?4 AND id=?5",
        )?;
        for (param, value, system) in &old_tokens {
            if !tokens.contains(&(param.as_str(), value.as_str(), system.as_str())) {
                delete.execute(params![ty, param, value, system, id])?;
            }
        }
        let mut insert = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO idx_token(type, param, value, system, id) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for t in &tokens {
            if !old_tokens
                .iter()
                .any(|(p, v, s)| (p.as_str(), v.as_str(), s.as_str()) == *t)
            {
                insert.execute(params![ty, t.0, t.1, t.2, id])?;
            }
        }

        let mut delete = self.conn.prepare_cached(
            "DELETE FROM idx_ref WHERE type=?1 AND param=?2 AND target_id=?3 AND target_type=?4 AND id=?5",
        )?;
        for (param, target_id, target_type) in &old_refs {
            if !references.contains(&(param.as_str(), target_id.as_str(), target_type.as_str())) {
                delete.execute(params![ty, param, target_id, target_type, id])?;
            }
        }
        let mut insert = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO idx_ref(type, param, target_id, target_type, id) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for r in &references {
            if !old_refs
                .iter()
                .any(|(p, i, t)| (p.as_str(), i.as_str(), t.as_str()) == *r)
            {
                insert.execute(params![ty, r.0, r.1, r.2, id])?;
            }
        }

        // Dates may repeat (no key): keep one stored row per wanted range.
        let mut kept = vec![false; old_dates.len()];
        let mut wanted = Vec::new();
        for d in &dates {
            match old_dates
                .iter()
                .enumerate()
                .find(|(i, (_, p, lo, hi))| !kept[*i] && (p.as_str(), *lo, *hi) == *d)
            {
                Some((i, _)) => kept[i] = true,
                None => wanted.push(*d),
            }
        }
        let mut delete = self
            .conn
            .prepare_cached("DELETE FROM idx_date WHERE rowid=?1")?;
        for (i, (rowid, ..)) in old_dates.iter().enumerate() {
            if !kept[i] {
                delete.execute(params![rowid])?;
            }
        }
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO idx_date(type, param, lo, hi, id) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (param, lo, hi) in wanted {
            insert.execute(params![ty, param, lo, hi, id])?;
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

    fn resolve_quarantined(&mut self, id: i64, now: i64) -> Result<bool, StoreError> {
        let changed = self
            .conn
            .prepare_cached("UPDATE quarantine SET status = 'replayed', resolved_at = ?2 WHERE id = ?1 AND status = 'held'")?
            .execute(params![id, now])?;
        Ok(changed == 1)
    }

    /// The journal entry, then its writes and quarantine entries, all in
    /// the caller's savepoint: a write that rolls back takes the journal
    /// entry with it.
    fn ingest(
        &mut self,
        request: &IngestRequest,
        now: i64,
    ) -> Result<Result<IngestOutcome, Rollback<IngestOutcome>>, StoreError> {
        let mut journal_id = None;
        if let Some(entry) = &request.journal {
            let receipt = self.journal(entry)?;
            if receipt.duplicate {
                let held: Option<String> = self
                    .conn
                    .prepare_cached(
                        "SELECT reasons FROM quarantine WHERE journal_id=?1 AND status='held' ORDER BY id LIMIT 1",
                    )?
                    .query_row(params![receipt.id], |row| row.get(0))
                    .optional()?;
                return Ok(Ok(IngestOutcome::Repeat {
                    journal_id: receipt.id,
                    held,
                }));
            }
            journal_id = Some(receipt.id);
        }
        let mut write = None;
        if let Some(request) = &request.write {
            match self.apply(request, now)? {
                Ok(outcome) => write = Some(outcome),
                Err(Rollback(outcome)) => {
                    return Ok(Err(Rollback(IngestOutcome::Done {
                        journal_id: None,
                        write: Some(outcome),
                        quarantined: Vec::new(),
                    })));
                }
            }
        }
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
        let mut clock = self.conn.prepare_cached(
            "INSERT INTO event_clock(type, id, event_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT(type, id) DO UPDATE SET event_ms=max(event_ms, excluded.event_ms)",
        )?;
        for c in &request.clocks {
            clock.execute(params![c.resource_type.as_str(), c.id, c.event_ms])?;
        }
        Ok(Ok(IngestOutcome::Done {
            journal_id,
            write,
            quarantined,
        }))
    }

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
        let id: i64 = self
            .conn
            .prepare_cached(
                "SELECT id FROM journal WHERE source=?1 AND sender=?2 AND message_id=?3",
            )?
            .query_row(
                params![entry.source, entry.sender, entry.message_id],
                |row| row.get(0),
            )?;
        Ok(JournalReceipt {
            id,
            duplicate: true,
        })
    }
}

/// A result to keep while undoing what produced it (a failed atomic request).
struct Rollback<T>(T);

enum Answer {
    Write(
        oneshot::Sender<Result<WriteOutcome, StoreError>>,
        Result<WriteOutcome, StoreError>,
    ),
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
        Job::Journal(_, reply) => {
            let _ = reply.send(Err(failure(message)));
        }
        Job::Ingest(_, reply) => {
            let _ = reply.send(Err(failure(message)));
        }
        Job::Quarantine(_, reply) => {
            let _ = reply.send(Err(failure(message)));
        }
        Job::Resolve(_, reply) => {
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
    }
}
