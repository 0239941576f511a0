-- pathway-gateway store, schema version 10 (each version adds to this file;
-- it is re-run, idempotently, on upgrade).

-- Every version of every resource: the full history. A rowid table (schema
-- version 6; before, WITHOUT ROWID keyed by type, id, version): bodies are
-- appended in write order to densely packed pages, and the key is a small
-- separate index. Keyed WITHOUT ROWID, a body over ~1,000 bytes spilled into
-- an overflow page of its own and pages were left less than half full, so a
-- write dirtied (and the WAL carried) several times the pages it needed.
CREATE TABLE IF NOT EXISTS versions (
    type         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,  -- ms since the Unix epoch
    body         TEXT    NOT NULL,  -- the resource JSON, exactly as served
    prev         INTEGER            -- the rowid of the version before; NULL for the first
);
-- Schema 10: no index on (type, id, version). A resource's versions are a
-- chain from `current.vrow` through `prev` (read and history walk it), so a
-- new version is an append and the update of `current` that the write makes
-- anyway. The index cost every version an insert at its resource's place in
-- the key order: in a store of any size a leaf page read and dirtied (and
-- carried by the WAL) per write, 8% of an HL7 v2 message's pages. An
-- upgrade from an older schema builds it for its joins (if the store lacks
-- it), links the versions through it, then drops it (`versions_key`).

-- The current version of each resource, with its index rows as JSON
-- (`keys`, schema version 6): an update deletes exactly the rows that no
-- longer hold, so the index tables need no second B-tree ordered by owner.
-- `vrow` is the version's rowid in `versions`: a read goes from here to the
-- body, and on through `versions.prev` to older ones. (`versions` has no
-- INTEGER PRIMARY KEY, and SQLite allows VACUUM to renumber such rowids:
-- every read also checks the row's type, id and version, so a renumbered
-- store serves nothing wrong. The gateway never runs VACUUM.) `event_ms` is
-- the time of the latest source event applied (an HL7 v2 EVN-2), so that
-- an older event arriving late cannot overwrite what a newer one set; NULL
-- when none. (Both schema version 7; `event_ms` was a table of its own from
-- version 3.) `member_ms` (schema version 8) is the rest of the feed's
-- clock: for a Patient, when each member was last set
-- (`name=…;address=…`), so that an older message still sets a member no
-- newer one has; for an Encounter, the transfer cancels it has had. NULL
-- when the clock stands for every member.
CREATE TABLE IF NOT EXISTS current (
    type         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    keys         TEXT,
    vrow         INTEGER,
    event_ms     INTEGER,
    member_ms    TEXT,
    PRIMARY KEY (type, id)
) WITHOUT ROWID;

-- Search index of current versions: tokens (identifier, status, codes). A
-- search by system alone (`system|`) scans its parameter's rows.
CREATE TABLE IF NOT EXISTS idx_token (
    type   TEXT NOT NULL,
    param  TEXT NOT NULL,
    value  TEXT NOT NULL,
    system TEXT NOT NULL,  -- '' when the value has no system
    id     TEXT NOT NULL,
    PRIMARY KEY (type, param, value, system, id)
) WITHOUT ROWID;

-- References (subject, patient), resolved to type and id.
CREATE TABLE IF NOT EXISTS idx_ref (
    type        TEXT NOT NULL,
    param       TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    target_type TEXT NOT NULL,
    id          TEXT NOT NULL,
    PRIMARY KEY (type, param, target_id, target_type, id)
) WITHOUT ROWID;

-- Dates as half-open ranges [lo, hi) of ms since the epoch (keyed WITHOUT
-- ROWID since schema version 6).
CREATE TABLE IF NOT EXISTS idx_date (
    type  TEXT    NOT NULL,
    param TEXT    NOT NULL,
    lo    INTEGER NOT NULL,
    hi    INTEGER NOT NULL,
    id    TEXT    NOT NULL,
    PRIMARY KEY (type, param, lo, hi, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_date_hi ON idx_date (type, param, hi);

-- Raw inbound payloads, journaled before they are acknowledged.
CREATE TABLE IF NOT EXISTS journal (
    id           INTEGER PRIMARY KEY,
    received_at  INTEGER NOT NULL,
    source       TEXT    NOT NULL,
    sender       TEXT    NOT NULL,
    message_id   TEXT,
    content_type TEXT    NOT NULL,
    payload      BLOB    NOT NULL
);
-- Repeats: one entry per source, sender and message id. Sender first
-- (schema version 9; before, `journal_repeat` led with the source): one
-- lookup finds an HL7 v2 message id over either transport.
CREATE UNIQUE INDEX IF NOT EXISTS journal_sent
    ON journal (sender, message_id, source) WHERE message_id IS NOT NULL;

-- Inputs refused for their content (a bad CSV row, an HL7 message that
-- fails mapping), kept with their reasons until replayed after a fix.
CREATE TABLE IF NOT EXISTS quarantine (
    id           INTEGER PRIMARY KEY,
    received_at  INTEGER NOT NULL,
    source       TEXT    NOT NULL,
    sender       TEXT    NOT NULL,
    journal_id   INTEGER,
    location     TEXT    NOT NULL,
    reasons      TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    status       TEXT    NOT NULL DEFAULT 'held',
    resolved_at  INTEGER
);
CREATE INDEX IF NOT EXISTS quarantine_held ON quarantine (status, id);
-- Inputs held without a journal entry (an HL7 v2 message under an MSH-10
-- another message used), found again by sender and place when they are
-- sent again (schema 11). Few: the index holds those alone.
CREATE INDEX IF NOT EXISTS quarantine_unjournaled
    ON quarantine (sender, location) WHERE journal_id IS NULL;

-- Routing (schema version 4). Every new resource version gets an outbox row
-- in the transaction that writes it; the router turns rows into deliveries
-- and removes them in one transaction, so a version is routed exactly once
-- whatever crashes when.
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY,
    type    TEXT    NOT NULL,
    id      TEXT    NOT NULL,
    version INTEGER NOT NULL
);

-- One resource version to send to one destination. `lane` orders
-- deliveries: one patient's deliveries to one destination go in id order.
CREATE TABLE IF NOT EXISTS delivery (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- public; never reused
    key          TEXT    NOT NULL,                   -- Idempotency-Key
    destination  TEXT    NOT NULL,
    rule         TEXT    NOT NULL,
    lane         TEXT    NOT NULL,
    type         TEXT    NOT NULL,
    res_id       TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,                   -- when the version was committed
    status       TEXT    NOT NULL,                   -- pending | delivered | dead
    attempts     INTEGER NOT NULL DEFAULT 0,
    budget_from  INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER,
    last_error   TEXT,
    last_status  INTEGER,
    response     TEXT,
    delivered_at INTEGER
);
CREATE INDEX IF NOT EXISTS delivery_status ON delivery (status, id);
