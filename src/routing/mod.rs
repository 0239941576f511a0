//! Routing to pathway services with durable, at-least-once delivery.
//!
//! ```text
//! store write ──(same transaction)──> outbox row
//!     router: outbox rows ─ rules, triggers (FHIRPath) ─> deliveries + referrals, outbox rows removed (one transaction)
//!     scheduler: deliveries ─ lanes per patient and destination, backoff, hours ─> attempts
//!     attempt: POST {url}/{type} with Idempotency-Key ─> delivered | retry later | dead
//!     persister: every change of a delivery ─> store (group commits, in order)
//! ```
//!
//! Submodules: `rules` (configuration and the One Bromley defaults),
//! `care_homes` (the register), `router`, `scheduler`, `deliver` (HTTP over
//! rustls), `hours`, `metrics`.

pub mod care_homes;
pub mod deliver;
pub mod hours;
pub mod metrics;
mod router;
pub mod rules;
mod scheduler;

use crate::store::{Delivery, Store, StoreError};
use crate::validate::Validator;
use care_homes::Register;
use deliver::Destination;
use metrics::RouterCounters;
use rules::Rules;
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::{mpsc, oneshot, watch};

pub use router::{TRIGGER_ID_SYSTEM, age_on};
pub use scheduler::RetryAnswer;

/// Outbox rows routed per transaction.
const ROUTE_BATCH: usize = 256;
/// Longest `delivery.max_backoff_ms`: a week.
const MAX_BACKOFF_LIMIT_MS: i64 = 7 * 24 * 3600 * 1000;

/// Where routing gets the time: the system clock, or a test's.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        jiff::Timestamp::now().as_millisecond()
    }
}

/// A clock that moves only when told to (tests of opening hours).
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(now_ms))
    }

    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// `[delivery]`: retry policy for every destination.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Wait after the first failed attempt; doubled after each further one.
    pub initial_backoff_ms: i64,
    /// Longest wait between attempts (also caps a `Retry-After`).
    pub max_backoff_ms: i64,
    /// Failed attempts before a delivery goes dead (counted again from a
    /// manual retry).
    pub max_attempts: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            initial_backoff_ms: 1000,
            max_backoff_ms: 600_000,
            max_attempts: 20,
        }
    }
}

impl Policy {
    pub fn check(&self) -> Result<(), String> {
        if self.initial_backoff_ms <= 0 {
            return Err("delivery.initial_backoff_ms: must be above 0".into());
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            return Err("delivery.max_backoff_ms: must be at least initial_backoff_ms".into());
        }
        if self.max_backoff_ms > MAX_BACKOFF_LIMIT_MS {
            return Err(format!(
                "delivery.max_backoff_ms: {} is over a week ({MAX_BACKOFF_LIMIT_MS})",
                self.max_backoff_ms
            ));
        }
        if self.max_attempts == 0 {
            return Err("delivery.max_attempts: must be above 0".into());
        }
        Ok(())
    }

    /// The wait after `failures` failed attempts: exponential, capped, with
    /// "equal jitter" (between half and all of it) so that a destination
    /// coming back is not hit by every delivery at once.
    pub fn backoff_ms(&self, failures: i64, random: u64) -> i64 {
        let exponent = (failures - 1).clamp(0, 40) as u32;
        let full = self
            .initial_backoff_ms
            .saturating_mul(1_i64 << exponent.min(40))
            .min(self.max_backoff_ms);
        let half = full / 2;
        half + (random % (half as u64 + 1)) as i64
    }
}

/// Routing as configured: checked at start, before any port is bound.
#[derive(Debug, Clone)]
pub struct RoutingSetup {
    pub rules: Arc<Rules>,
    pub destinations: Vec<Arc<Destination>>,
    pub register: Arc<Register>,
    pub policy: Policy,
    pub clock: Arc<dyn Clock>,
}

impl Default for RoutingSetup {
    fn default() -> Self {
        RoutingSetup {
            rules: Arc::new(Rules::compile(&rules::RoutingConfig::default()).unwrap_or_default()),
            destinations: Vec::new(),
            register: Arc::new(Register::default()),
            policy: Policy::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl RoutingSetup {
    /// The types some rule (with a configured destination) or trigger looks
    /// at: only their versions need routing.
    pub fn routed_types(&self) -> Vec<crate::fhir::ResourceType> {
        let configured: HashSet<&str> = self.destinations.iter().map(|d| d.name.as_str()).collect();
        let mut types: Vec<crate::fhir::ResourceType> = self
            .rules
            .rules
            .iter()
            .filter(|r| r.to.iter().any(|d| configured.contains(d.as_str())))
            .map(|r| r.resource)
            .chain(self.rules.triggers.iter().map(|t| t.resource))
            .collect();
        types.sort_by_key(|t| t.as_str());
        types.dedup();
        types
    }
}

/// The running router and scheduler.
pub struct Routing {
    commands: mpsc::UnboundedSender<scheduler::Command>,
    counters: Arc<RouterCounters>,
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Routing {
    /// Loads the open deliveries and starts the router, the scheduler and
    /// the persister.
    pub async fn start(
        setup: &RoutingSetup,
        store: Arc<dyn Store>,
        validator: Arc<Validator>,
    ) -> Result<Routing, StoreError> {
        let configured: HashSet<String> =
            setup.destinations.iter().map(|d| d.name.clone()).collect();
        for name in setup.rules.destinations() {
            if !configured.contains(name) {
                tracing::info!(
                    destination = name,
                    "a routing rule names this destination, which has no [destinations.{name}] url: nothing is routed to it"
                );
            }
        }
        let (commands, received) = mpsc::unbounded_channel();
        let (scheduler, persisted) = scheduler::Scheduler::new(
            store.clone(),
            setup.clock.clone(),
            setup.policy,
            setup.destinations.clone(),
            commands.clone(),
        );
        // Every open delivery, oldest first, before anything new.
        let open = open_deliveries(&*store).await?;
        tracing::info!(
            open = open.len(),
            destinations = setup.destinations.len(),
            "routing started"
        );
        let _ = commands.send(scheduler::Command::Add(open));
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(RouterCounters::default());
        let router = router::Router {
            store: store.clone(),
            rules: setup.rules.clone(),
            configured,
            routed: setup.routed_types(),
            register: setup.register.clone(),
            validator,
            clock: setup.clock.clone(),
            scheduler: commands.clone(),
            counters: counters.clone(),
        };
        // The persister comes last: it ends once the scheduler has (when
        // every change has been handed to it) and it has saved them all.
        let tasks = vec![
            tokio::spawn(router.run(stopped.clone())),
            tokio::spawn(scheduler.run(received, stopped.clone())),
            tokio::spawn(scheduler::persist(store, persisted, stopped)),
        ];
        Ok(Routing {
            commands,
            counters,
            stop,
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    /// Manual retry of a dead (or backing-off) delivery.
    pub async fn retry(&self, id: i64) -> RetryAnswer {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(scheduler::Command::Retry { id, reply })
            .is_err()
        {
            return RetryAnswer::NotOpen;
        }
        answer.await.unwrap_or(RetryAnswer::NotOpen)
    }

    /// Manual retry of every dead delivery to `destination`: how many.
    pub async fn retry_dead(&self, destination: &str) -> Result<usize, StoreError> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(scheduler::Command::RetryDead {
                destination: destination.to_string(),
                reply,
            })
            .is_err()
        {
            return Err(StoreError::Closed);
        }
        let saves = answer.await.map_err(|_| StoreError::Closed)?;
        let count = saves.len();
        for saved in saves {
            saved.await.map_err(|_| StoreError::Closed)??;
        }
        Ok(count)
    }

    /// Why each pending delivery is held back (`None`: it is not).
    pub async fn held_because(&self, ids: Vec<i64>) -> Vec<Option<String>> {
        let count = ids.len();
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(scheduler::Command::Inspect { ids, reply })
            .is_err()
        {
            return vec![None; count];
        }
        answer.await.unwrap_or_else(|_| vec![None; count])
    }

    /// The Prometheus text of routing's metrics.
    pub async fn render_metrics(&self, out: &mut String) {
        let (reply, answer) = oneshot::channel();
        let destinations = if self
            .commands
            .send(scheduler::Command::Snapshot { reply })
            .is_ok()
        {
            answer.await.unwrap_or_default()
        } else {
            Vec::new()
        };
        metrics::render(out, &self.counters, &destinations);
    }

    /// Stops routing and waits until every delivery change is saved.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// A time for people and APIs: RFC 3339 in UTC.
pub fn format_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

async fn open_deliveries(store: &dyn Store) -> Result<Vec<Delivery>, StoreError> {
    use crate::store::{DeliveryQuery, DeliveryStatus};
    let mut open = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .deliveries(DeliveryQuery {
                statuses: vec![DeliveryStatus::Pending, DeliveryStatus::Dead],
                destination: None,
                after,
                limit: 10_000,
            })
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.id;
        open.extend(page);
    }
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered_between_half_and_all() {
        let policy = Policy {
            initial_backoff_ms: 1000,
            max_backoff_ms: 600_000,
            max_attempts: 20,
        };
        for (failures, full) in [
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (10, 512_000),
            (11, 600_000),
            (60, 600_000),
        ] {
            assert_eq!(
                policy.backoff_ms(failures, 0),
                full / 2,
                "failures {failures}"
            );
            assert_eq!(
                policy.backoff_ms(failures, full as u64 / 2),
                full,
                "failures {failures}"
            );
            let mut seen = std::collections::HashSet::new();
            for r in 0..50u64 {
                let wait = policy.backoff_ms(failures, r.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                assert!((full / 2..=full).contains(&wait));
                seen.insert(wait);
            }
            assert!(seen.len() > 10, "jitter spreads the waits");
        }
    }
}
