//! Durable storage of resources, their history, the search index and the
//! journal of raw inbound payloads.
//!
//! The API layer talks to [`Store`] only; [`sqlite::SqliteStore`] is the
//! embedded default. Every mutation goes through [`Store::write`] as one
//! [`WriteRequest`], which the store applies atomically (a transaction Bundle,
//! a single create) or entry by entry (a batch Bundle), and acknowledges only
//! once it is durable on disk.

pub mod parsed;
pub mod sqlite;

use crate::fhir::ResourceType;
use crate::fhir::resource::Prepared;
use crate::fhir::search::{CURSOR_PARAM, SearchQuery, parse_search};
use async_trait::async_trait;

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub resource_type: ResourceType,
    pub id: String,
    pub version: i64,
    pub last_updated_ms: i64,
    /// The resource's JSON, exactly as served.
    pub body: String,
}

/// A change to make.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Create with the server-assigned `id`, unless `if_none_exist` matches a
    /// resource already (FHIR conditional create).
    Create {
        resource: Prepared,
        id: String,
        if_none_exist: Option<SearchQuery>,
        full_url: Option<String>,
    },
    /// Update (or create) the resource `id`.
    Update {
        resource: Prepared,
        id: String,
        if_match: Option<i64>,
        full_url: Option<String>,
    },
    /// Update the one resource `query` matches; create it (with the body's
    /// id, or `new_id`) when none does.
    ConditionalUpdate {
        resource: Prepared,
        query: SearchQuery,
        new_id: String,
        if_match: Option<i64>,
        full_url: Option<String>,
    },
}

impl Mutation {
    /// The search condition of a conditional create or update.
    pub fn condition(&self) -> Option<&SearchQuery> {
        match self {
            Mutation::Create { if_none_exist, .. } => if_none_exist.as_ref(),
            Mutation::ConditionalUpdate { query, .. } => Some(query),
            Mutation::Update { .. } => None,
        }
    }

    /// The `fullUrl` its Bundle entry gave it.
    pub fn full_url(&self) -> Option<&str> {
        match self {
            Mutation::Create { full_url, .. }
            | Mutation::Update { full_url, .. }
            | Mutation::ConditionalUpdate { full_url, .. } => full_url.as_deref(),
        }
    }

    pub fn resource(&self) -> &Prepared {
        match self {
            Mutation::Create { resource, .. }
            | Mutation::Update { resource, .. }
            | Mutation::ConditionalUpdate { resource, .. } => resource,
        }
    }
}

/// Mutations applied together: all or nothing when `atomic`.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub mutations: Vec<Mutation>,
    pub atomic: bool,
}

/// What a mutation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    /// An update identical to the current version: no new version.
    Unchanged,
    /// A conditional create that matched an existing resource.
    Existing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub change: Change,
    pub resource: Stored,
}

/// Why one mutation could not be applied. Not a failure of the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MutationError {
    #[error("If-Match expected version {expected}, but the current version is {current}")]
    VersionConflict { expected: i64, current: String },
    #[error("the condition matches more than one resource; it must match at most one")]
    MultipleMatches,
    #[error(
        "the condition matches no resource, and the body's id names {0}, which exists and does not match it"
    )]
    IdInUse(String),
    #[error("{0}")]
    Conflict(String),
    #[error(
        "this entry and entry {first} both change {target}; a transaction may change a resource once"
    )]
    SameResource { first: usize, target: String },
    /// An [`IngestRequest`]'s conditional create found `{0}`, made since
    /// its sender looked and found nothing: plan again on top of it.
    #[error("{0}, which this create's condition names, was created meanwhile")]
    CreatedMeanwhile(String),
}

/// The answer to a [`WriteRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Every mutation's result, in order (always all `Ok` when atomic).
    Applied(Vec<Result<Written, MutationError>>),
    /// An atomic request in which the mutation at `index` failed: nothing was stored.
    RolledBack { index: usize, error: MutationError },
}

/// A page of search results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPage {
    pub total: usize,
    pub resources: Vec<Stored>,
    /// Where the next page starts, when there is one.
    pub next_after: Option<String>,
}

/// Journal `source` of HL7 v2 messages received over MLLP.
pub const SOURCE_HL7V2_MLLP: &str = "hl7v2-mllp";
/// … and over `POST /ingest/hl7v2`.
pub const SOURCE_HL7V2_HTTP: &str = "hl7v2-http";

/// The sources whose entries repeat one another (same sender and message
/// id): an HL7 v2 message resent over HTTP after MLLP, or the other way
/// round, is the same message. Every other source stands alone.
pub fn repeat_sources(source: &str) -> [&str; 2] {
    match source {
        SOURCE_HL7V2_MLLP | SOURCE_HL7V2_HTTP => [SOURCE_HL7V2_MLLP, SOURCE_HL7V2_HTTP],
        other => [other, other],
    }
}

/// A raw inbound payload, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Which interface received it: `hl7v2-mllp`, `gp-risk-list`, …
    pub source: String,
    /// Who sent it (sending facility, practice ODS code); empty if unknown.
    pub sender: String,
    /// The sender's own message id (MSH-10), for dropping repeats.
    pub message_id: Option<String>,
    pub content_type: String,
    pub received_at_ms: i64,
    /// Shared, not copied: a 200 MB upload is held once while it is
    /// journaled and read.
    pub payload: bytes::Bytes,
}

/// The journal's answer: the entry's id, and whether it was a repeat of an
/// earlier one (same source, or one of [`repeat_sources`], sender and message
/// id), which was kept instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalReceipt {
    pub id: i64,
    pub duplicate: bool,
}

/// An input refused for its content, kept for a person to look at and
/// replay after a fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineEntry {
    /// The interface it came in on: `gp-risk-list`, `hl7v2-mllp`, …
    pub source: String,
    pub sender: String,
    /// The journal entry of the upload or message it was part of.
    pub journal_id: Option<i64>,
    pub received_at_ms: i64,
    /// Where in that input: `line 12`, `MSH-10 ABC123`.
    pub location: String,
    /// Why, as JSON (an array of located reasons).
    pub reasons: String,
    pub content_type: String,
    /// What is needed to replay it (the raw row and its context, the raw
    /// message).
    pub payload: Vec<u8>,
}

/// A quarantined input and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub id: i64,
    pub entry: QuarantineEntry,
    /// `held`, or `replayed` once a replay went through.
    pub status: String,
    pub resolved_at_ms: Option<i64>,
}

/// An inbound message and what it does, applied as one: the journal entry,
/// then (unless the journal says it is a repeat) the writes and the
/// quarantine entries. Either all of it is durable or none: a message is
/// never journaled without its effect, so a resend after a crash is applied
/// rather than mistaken for a repeat.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    /// `None` when replaying a message journaled already.
    pub journal: Option<JournalEntry>,
    /// Applied atomically; if it rolls back, so does the journal entry.
    /// An atomic write whose conditional create finds its resource rolls
    /// back ([`MutationError::CreatedMeanwhile`]) instead of answering it
    /// as existing: the sender planned the create because it found nothing,
    /// so the rest of its plan assumed no such resource, and a journal
    /// entry committed with half a plan would make a resend a repeat.
    pub write: Option<WriteRequest>,
    /// Their `journal_id` is set to the new journal entry's.
    pub quarantine: Vec<QuarantineEntry>,
    /// Event clocks to set once `write` is applied.
    pub clocks: Vec<EventClock>,
    /// The held quarantine entry this request replays: marked replayed in
    /// the same commit as what the replay writes, and nothing is done
    /// ([`IngestOutcome::NotHeld`]) if it is no longer held, so that two
    /// replays of one entry, or a crash between a replay and marking it,
    /// cannot apply it twice or leave it held once applied.
    pub replays: Option<i64>,
}

/// When the source events applied to a record happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    /// The latest, in milliseconds since the epoch.
    pub event_ms: i64,
    /// The rest of the feed's clock, opaque to the store: when each
    /// member of a Patient was last set (`hl7v2::state::Times`), what an
    /// Encounter keeps beside it (`hl7v2::state::Kept`: its cancels,
    /// classes and discharge facts). `None` on a record whose clock was set
    /// before schema 8, or that has none of these.
    pub members: Option<String>,
}

/// A record's event clock as a request sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventClock {
    pub resource_type: ResourceType,
    pub id: String,
    /// The clock the record has once the request is applied.
    pub clock: Clock,
    /// The version and event clock the request was planned on, for a record
    /// that exists: the request is refused whole (a version conflict, to be
    /// planned again) unless the record still has both. A clock moves
    /// without a new version when an event repeats what is stored, so the
    /// version alone would let two messages about one record, planned on
    /// the same state, each undo what the other decided. (So the clock set
    /// is the planner's to work out: nothing can have moved it since.)
    pub planned: Option<(i64, Option<Clock>)>,
}

/// What an [`IngestRequest`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Same source, sender and message id as journal entry `journal_id`:
    /// nothing was done. `held` has the reasons of that message's
    /// quarantine entry while it is still held.
    Repeat {
        journal_id: i64,
        held: Option<String>,
    },
    /// The quarantine entry the request replays was no longer held
    /// (replayed meanwhile): nothing was done.
    NotHeld,
    /// Stored (or, if `write` rolled back, nothing was stored at all).
    Done {
        journal_id: Option<i64>,
        write: Option<WriteOutcome>,
        quarantined: Vec<i64>,
    },
}

/// A failure of the store itself (disk, database, shutdown): a 503 or 500,
/// never the sender's fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("the store is closed")]
    Closed,
    #[error("store I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the store's schema version {found} is newer than this gateway knows ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("the store in {} is in use by another running gateway", .0.display())]
    InUse(std::path::PathBuf),
}

/// Where resources live. Implementations must make a write durable before
/// [`Store::write`] returns, and return no write from a read before it is
/// durable, except from the feeds' lookups that plan writes
/// ([`Store::by_identifier`], [`Store::by_identifier_clocked`],
/// [`Store::event_clocks`], [`Store::by_reference`]): what is planned on
/// them is committed later, so it cannot outlive what they saw. Whoever
/// answers from those lookups without writing after them (a replay that
/// fails again, a dry run, a report) calls [`Store::settled`] first.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `stored`'s body parsed (`None` when it is not JSON), shared: a store
    /// may keep recent versions parsed ([`parsed::ParsedVersions`]).
    fn parsed(&self, stored: &Stored) -> Option<std::sync::Arc<serde_json::Value>> {
        serde_json::from_str(&stored.body)
            .ok()
            .map(std::sync::Arc::new)
    }

    /// Offers the value a writer built `stored` from (the resource as it
    /// planned it: members in the stored order, any `id` and `meta`), for
    /// [`Store::parsed`] to answer without parsing the body.
    fn remember_parsed(&self, _stored: &Stored, _value: serde_json::Value) {}

    /// The current version, if the resource exists.
    async fn read(&self, ty: ResourceType, id: &str) -> Result<Option<Stored>, StoreError>;
    /// A given version.
    async fn vread(
        &self,
        ty: ResourceType,
        id: &str,
        version: i64,
    ) -> Result<Option<Stored>, StoreError>;
    /// Every version, newest first; empty if the resource does not exist.
    async fn history(&self, ty: ResourceType, id: &str) -> Result<Vec<Stored>, StoreError>;
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError>;
    /// Current resources of `ty` with any of these identifiers `(system,
    /// value)`, each once: point lookups for the feeds, without the paging
    /// and counting of a search. They may see writes not yet durable (to
    /// plan a write on; see [`Store::settled`]).
    async fn by_identifier(
        &self,
        ty: ResourceType,
        keys: &[(String, String)],
    ) -> Result<Vec<Stored>, StoreError>;
    /// [`Store::by_identifier`] for several types at once, each resource
    /// with its event clock ([`Store::event_clocks`]), all from one
    /// snapshot: the lookups an HL7 v2 message is planned from, in one read.
    /// It may see writes not yet durable (to plan a write on, only).
    async fn by_identifier_clocked(
        &self,
        lookups: &[(ResourceType, &[(String, String)])],
    ) -> Result<Vec<Vec<(Stored, Option<Clock>)>>, StoreError>;
    /// The `(value, id)` of every identifier in `system` on current
    /// resources of `ty`, from the index alone (no bodies read), in value
    /// order.
    async fn identifiers_in(
        &self,
        ty: ResourceType,
        system: &str,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// The current versions of these resources (those that exist), in one
    /// go on one connection.
    async fn read_many(
        &self,
        ty: ResourceType,
        ids: Vec<String>,
    ) -> Result<Vec<Stored>, StoreError>;
    /// Current resources of `ty` whose token parameter `param` has any of
    /// these `(system, value)` (string parameters: system `""`, value
    /// normalised), each once.
    async fn by_token(
        &self,
        ty: ResourceType,
        param: &str,
        keys: &[(String, String)],
    ) -> Result<Vec<Stored>, StoreError>;
    /// Current resources of `ty` whose reference parameter `param` points at
    /// any of these `(type, id)`, each once: many point lookups in one go
    /// (outcome reports read every encounter of thousands of patients). They
    /// may see writes not yet durable (see [`Store::settled`]).
    async fn by_reference(
        &self,
        ty: ResourceType,
        param: &str,
        targets: Vec<(ResourceType, String)>,
    ) -> Result<Vec<Stored>, StoreError>;
    /// Returns once every write committed before the call is durable: for
    /// an answer given from lookups that may see writes not yet durable
    /// ([`Store::by_identifier`], [`Store::by_reference`]) with no write of
    /// its own after them.
    async fn settled(&self) -> Result<(), StoreError>;
    async fn write(&self, request: WriteRequest) -> Result<WriteOutcome, StoreError>;
    /// Applies each request on its own, as [`Store::write`] would, in one
    /// go: one result per request, in order (bulk feeds: a GP list's rows).
    async fn write_each(
        &self,
        requests: Vec<WriteRequest>,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError>;
    /// The event clocks of these resources (`None`: no event applied yet).
    /// They may come from writes not yet durable (to plan a write on, only).
    async fn event_clocks(
        &self,
        ty: ResourceType,
        ids: &[String],
    ) -> Result<Vec<Option<Clock>>, StoreError>;
    /// Records a raw inbound payload durably.
    async fn journal(&self, entry: JournalEntry) -> Result<JournalReceipt, StoreError>;
    /// Journals a message and applies its effect in one transaction.
    async fn ingest(&self, request: IngestRequest) -> Result<IngestOutcome, StoreError>;
    /// A journal entry by id.
    async fn journal_entry(&self, id: i64) -> Result<Option<JournalEntry>, StoreError>;
    /// Keeps refused inputs, durably, returning their ids in order.
    async fn quarantine(&self, entries: Vec<QuarantineEntry>) -> Result<Vec<i64>, StoreError>;
    /// Quarantined inputs after id `after`, oldest first; only those still
    /// held unless `all`.
    async fn quarantined(
        &self,
        after: i64,
        limit: usize,
        all: bool,
    ) -> Result<Vec<Quarantined>, StoreError>;
    async fn quarantined_entry(&self, id: i64) -> Result<Option<Quarantined>, StoreError>;
    /// The entries with `entry`'s source (or its [`repeat_sources`] twin),
    /// sender and location that are part of no journaled input, oldest
    /// first, whatever their status: for an input that cannot be journaled
    /// (an HL7 v2 message under an MSH-10 another message used), which sent
    /// again must not be held again, nor held once it was dealt with.
    async fn unjournaled(&self, entry: &QuarantineEntry) -> Result<Vec<Quarantined>, StoreError>;
    /// The entries `sender` sent over `source` that are still held, oldest
    /// first.
    async fn held_from(&self, source: &str, sender: &str) -> Result<Vec<Quarantined>, StoreError>;
    /// How many entries each source has held (sources with none left out).
    async fn held_counts(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Marks a held entry discarded (looked at, and not to be applied);
    /// false if it was not held. (A replay marks its entry replayed in the
    /// commit that applies it: [`IngestRequest::replays`].)
    async fn discard_quarantined(&self, id: i64) -> Result<bool, StoreError>;
    /// Gives a held entry the `reasons` (JSON, as [`QuarantineEntry`]'s)
    /// its replay failed for now; false if it was not held.
    async fn revise_quarantined(&self, id: i64, reasons: String) -> Result<bool, StoreError>;
    /// The oldest `limit` outbox rows, with their resource versions: the
    /// JSON only for the types in `bodies_for` (empty for the others, which
    /// no rule looks at).
    async fn outbox(
        &self,
        limit: usize,
        bodies_for: Vec<ResourceType>,
    ) -> Result<Vec<OutboxItem>, StoreError>;
    /// Stores what a routing pass decided (see [`RouteRequest`]).
    async fn route(&self, request: RouteRequest) -> Result<RouteOutcome, StoreError>;
    /// Saves the new state of deliveries (status, attempts, last answer).
    async fn update_deliveries(&self, deliveries: Vec<Delivery>) -> Result<(), StoreError>;
    async fn deliveries(&self, query: DeliveryQuery) -> Result<Vec<Delivery>, StoreError>;
    async fn delivery(&self, id: i64) -> Result<Option<Delivery>, StoreError>;
    /// Signalled after every commit that added to the outbox.
    fn outbox_signal(&self) -> std::sync::Arc<tokio::sync::Notify>;
    /// Is the store able to serve? (`/readyz`)
    async fn check(&self) -> Result<(), StoreError>;
    /// Finishes queued writes and closes the store cleanly.
    async fn close(&self);
}

/// Values per search: the search API's own limit on alternatives.
const MAX_ALTERNATIVES: usize = 100;

/// Every resource of `ty` whose `param` matches any of `values`, following
/// every page (a search per 100 values).
pub async fn search_all(
    store: &dyn Store,
    ty: ResourceType,
    param: &str,
    values: &[String],
) -> Result<Vec<Stored>, StoreError> {
    let mut found = Vec::new();
    for batch in values.chunks(MAX_ALTERNATIVES) {
        let mut pairs = vec![
            (param.to_string(), batch.join(",")),
            ("_count".to_string(), "1000".to_string()),
        ];
        while let Ok((query, _)) = parse_search(ty, &pairs, true) {
            let page = store.search(&query).await?;
            found.extend(page.resources);
            match page.next_after {
                Some(after) => {
                    pairs.retain(|(k, _)| k != CURSOR_PARAM);
                    pairs.push((CURSOR_PARAM.to_string(), after));
                }
                None => break,
            }
        }
    }
    Ok(found)
}

// ---------------------------------------------------------------------------
// Routing: the outbox and the deliveries derived from it.

/// A resource version waiting to be routed: every version the store writes
/// gets a row in the outbox in the same transaction, so nothing committed can
/// be missed by routing, whatever crashes when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Order of writing.
    pub seq: i64,
    pub resource: Stored,
}

/// A delivery decided by routing, not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The destination's configured name.
    pub destination: String,
    /// The rule that chose it.
    pub rule: String,
    /// Deliveries of one lane (a patient, at one destination) go in order.
    pub lane: String,
    pub resource_type: ResourceType,
    pub resource_id: String,
    pub version: i64,
    /// When the version was committed: latency is counted from here.
    pub committed_ms: i64,
    /// The `Idempotency-Key` every attempt carries.
    pub key: String,
}

/// What one pass of the router did, applied as one transaction: the outbox
/// rows up to `routed_through` are removed, and the deliveries and the
/// resources that triggers create are stored.
#[derive(Debug, Clone)]
pub struct RouteRequest {
    pub routed_through: i64,
    pub deliveries: Vec<NewDelivery>,
    /// Conditional creates (each applied on its own; a refused one does not
    /// stop the others).
    pub triggered: Vec<Mutation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOutcome {
    pub deliveries: Vec<Delivery>,
    pub triggered: Vec<Result<Written, MutationError>>,
}

/// Where a delivery stands, as stored. (`waiting` is not stored: it is a
/// pending delivery that the scheduler holds back.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryStatus> {
        match text {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}

/// One resource version to send to one destination, and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub key: String,
    pub destination: String,
    pub rule: String,
    pub lane: String,
    pub resource_type: ResourceType,
    pub resource_id: String,
    pub version: i64,
    /// When the version it sends was committed.
    pub created_ms: i64,
    pub status: DeliveryStatus,
    /// Attempts made, in all.
    pub attempts: i64,
    /// `attempts` when the delivery was last retried by hand: the retry
    /// budget counts from there.
    pub budget_from: i64,
    pub next_attempt_ms: Option<i64>,
    pub last_error: Option<String>,
    /// HTTP status of the last answer, if there was one.
    pub last_status: Option<i64>,
    /// The body of the last answer (kept for dead letters), shortened.
    pub response: Option<String>,
    pub delivered_ms: Option<i64>,
}

/// Which deliveries to list, oldest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    /// Any of these; all statuses when empty.
    pub statuses: Vec<DeliveryStatus>,
    pub destination: Option<String>,
    /// Only ids greater than this (paging).
    pub after: i64,
    pub limit: usize,
}
