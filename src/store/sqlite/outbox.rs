//! The outbox and the deliveries in SQLite: reads run on reader connections,
//! writes inside the writer's group transaction.

use super::walk_versions;
use crate::fhir::ResourceType;
use crate::store::{
    Delivery, DeliveryQuery, DeliveryStatus, NewDelivery, OutboxItem, StoreError, Stored,
};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

/// Oldest first. (Sequence numbers may be reused once the table is empty, so
/// readers take from the start rather than after a remembered number.)
/// Bodies are read only for the types in `bodies_for`.
pub(super) fn outbox(
    conn: &Connection,
    cache: &super::cache::Cache,
    limit: usize,
    bodies_for: &[ResourceType],
) -> Result<Vec<OutboxItem>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT seq, type, id, version FROM outbox ORDER BY seq LIMIT ?1")?;
    let rows = stmt.query_map([limit as i64], |row| {
        Ok(OutboxItem {
            seq: row.get(0)?,
            resource: Stored {
                resource_type: parse_type(&row.get::<_, String>(1)?, 1)?,
                id: row.get(2)?,
                version: row.get(3)?,
                last_updated_ms: 0,
                body: String::new(),
            },
        })
    })?;
    let mut items = rows.collect::<Result<Vec<_>, _>>()?;
    for item in &mut items {
        let r = &mut item.resource;
        if !bodies_for.contains(&r.resource_type) {
            continue;
        }
        if let Some(stored) = cache.version(r.resource_type, &r.id, r.version) {
            r.last_updated_ms = stored.last_updated_ms;
            r.body = stored.body.clone();
            continue;
        }
        // Usually the current version, or one of the last few.
        let version = r.version;
        if let Some(stored) =
            walk_versions(conn, r.resource_type, &r.id, version, |v| v == version)?.pop()
        {
            r.last_updated_ms = stored.last_updated_ms;
            r.body = stored.body;
        }
    }
    Ok(items)
}

const COLUMNS: &str = "id, key, destination, rule, lane, type, res_id, version, created_at, status, \
     attempts, budget_from, next_attempt, last_error, last_status, response, delivered_at";

fn parse_type(text: &str, column: usize) -> rusqlite::Result<ResourceType> {
    ResourceType::parse(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            format!("unknown resource type {text}").into(),
        )
    })
}

fn delivery_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    let status: String = row.get(9)?;
    Ok(Delivery {
        id: row.get(0)?,
        key: row.get(1)?,
        destination: row.get(2)?,
        rule: row.get(3)?,
        lane: row.get(4)?,
        resource_type: parse_type(&row.get::<_, String>(5)?, 5)?,
        resource_id: row.get(6)?,
        version: row.get(7)?,
        created_ms: row.get(8)?,
        status: DeliveryStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                9,
                rusqlite::types::Type::Text,
                format!("unknown delivery status {status}").into(),
            )
        })?,
        attempts: row.get(10)?,
        budget_from: row.get(11)?,
        next_attempt_ms: row.get(12)?,
        last_error: row.get(13)?,
        last_status: row.get(14)?,
        response: row.get(15)?,
        delivered_ms: row.get(16)?,
    })
}

pub(super) fn deliveries(
    conn: &Connection,
    query: &DeliveryQuery,
) -> Result<Vec<Delivery>, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM delivery WHERE id > ?");
    let mut values: Vec<rusqlite::types::Value> = vec![query.after.into()];
    if !query.statuses.is_empty() {
        sql.push_str(" AND status IN (");
        for (i, status) in query.statuses.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ",?" });
            values.push(status.as_str().to_string().into());
        }
        sql.push(')');
    }
    if let Some(destination) = &query.destination {
        sql.push_str(" AND destination = ?");
        values.push(destination.clone().into());
    }
    sql.push_str(" ORDER BY id LIMIT ?");
    values.push((query.limit as i64).into());
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(values), delivery_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn delivery(conn: &Connection, id: i64) -> Result<Option<Delivery>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM delivery WHERE id = ?1"))?
        .query_row([id], delivery_row)
        .optional()?)
}

/// Inside the writer's transaction: stores new deliveries, returning them
/// with their ids.
pub(super) fn insert(
    conn: &Connection,
    deliveries: &[NewDelivery],
    now: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO delivery(key, destination, rule, lane, type, res_id, version, created_at, status, next_attempt) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9)",
    )?;
    let mut stored = Vec::with_capacity(deliveries.len());
    for new in deliveries {
        stmt.execute(params![
            new.key,
            new.destination,
            new.rule,
            new.lane,
            new.resource_type.as_str(),
            new.resource_id,
            new.version,
            new.committed_ms,
            now
        ])?;
        stored.push(Delivery {
            id: conn.last_insert_rowid(),
            key: new.key.clone(),
            destination: new.destination.clone(),
            rule: new.rule.clone(),
            lane: new.lane.clone(),
            resource_type: new.resource_type,
            resource_id: new.resource_id.clone(),
            version: new.version,
            created_ms: new.committed_ms,
            status: DeliveryStatus::Pending,
            attempts: 0,
            budget_from: 0,
            next_attempt_ms: Some(now),
            last_error: None,
            last_status: None,
            response: None,
            delivered_ms: None,
        });
    }
    Ok(stored)
}

/// Inside the writer's transaction: removes routed outbox rows.
pub(super) fn remove_routed(conn: &Connection, through: i64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM outbox WHERE seq <= ?1")?
        .execute([through])?;
    Ok(())
}

/// Inside the writer's transaction: records a new resource version for
/// routing.
pub(super) fn enqueue(
    conn: &Connection,
    ty: ResourceType,
    id: &str,
    version: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO outbox(type, id, version) VALUES (?1, ?2, ?3)")?
        .execute(params![ty.as_str(), id, version])?;
    Ok(())
}

/// Inside the writer's transaction: saves deliveries' state.
pub(super) fn update(conn: &Connection, deliveries: &[Delivery]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE delivery SET status=?2, attempts=?3, budget_from=?4, next_attempt=?5, last_error=?6, \
         last_status=?7, response=?8, delivered_at=?9 WHERE id=?1",
    )?;
    for d in deliveries {
        stmt.execute(params![
            d.id,
            d.status.as_str(),
            d.attempts,
            d.budget_from,
            d.next_attempt_ms,
            d.last_error,
            d.last_status,
            d.response,
            d.delivered_ms
        ])?;
    }
    Ok(())
}
