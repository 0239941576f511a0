//! The delivery scheduler: one task that owns the state of every open
//! delivery, decides what to attempt when, and records what happened.
//!
//! Deliveries are grouped in **lanes**: one patient at one destination. Only
//! the head of a lane is ever attempted, so a patient's deliveries arrive in
//! the order they were routed, and a head that keeps failing (or is dead)
//! holds back that patient only. A head is attempted when its backoff is
//! over, the destination is open, and the destination has a free slot
//! (`concurrency`).
//!
//! The store is the record: every change of a delivery is saved (in order,
//! batched into group commits by the persister task) and the scheduler is
//! rebuilt from the store at start. An attempt cut short by a crash was not
//! saved as done, so it is made again (at least once; the receiver drops the
//! repeat by its `Idempotency-Key`).

use super::deliver::{self, Destination, Outcome};
use super::metrics::{DestinationCounters, QueueDepth};
use super::{Clock, Policy};
use crate::store::{Delivery, DeliveryStatus, Store, StoreError};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Longest sleep while a timer is pending: a test clock may jump.
const MAX_NAP_MS: i64 = 200;
/// How long shutdown waits for attempts in flight.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

type LaneKey = (usize, Arc<str>);

#[derive(Debug)]
pub(super) enum Command {
    Add(Vec<Delivery>),
    Done {
        id: i64,
        outcome: Outcome,
    },
    Retry {
        id: i64,
        reply: oneshot::Sender<RetryAnswer>,
    },
    /// Retry every dead delivery to a destination; the answers say when
    /// each is saved.
    RetryDead {
        destination: String,
        reply: oneshot::Sender<Vec<oneshot::Receiver<Result<(), StoreError>>>>,
    },
    /// Why each of these pending deliveries is held back, if it is.
    Inspect {
        ids: Vec<i64>,
        reply: oneshot::Sender<Vec<Option<String>>>,
    },
    Snapshot {
        reply: oneshot::Sender<Vec<(String, QueueDepth, DestinationCounters)>>,
    },
}

#[derive(Debug)]
pub enum RetryAnswer {
    /// Scheduled now; `saved` says when its new state is on disk.
    Scheduled {
        delivery: Box<Delivery>,
        saved: oneshot::Receiver<Result<(), StoreError>>,
    },
    /// Not open here: delivered a moment ago, or not yet handed over by
    /// the router.
    NotOpen,
    /// Its destination is not configured.
    NotConfigured,
    /// Routing is shutting down.
    Stopping,
    /// Being attempted right now.
    InFlight,
    /// Waits behind this earlier delivery of the same patient: retry that.
    Behind(i64),
}

struct Lane {
    queue: VecDeque<Delivery>,
    in_flight: bool,
    /// In its destination's `ready` queue.
    in_ready: bool,
    /// The destination was closed when the head was due: it waits until then.
    closed_until: Option<i64>,
}

struct Dest {
    destination: Arc<Destination>,
    in_flight: usize,
    /// Lanes whose head is due but found no free slot, oldest first.
    ready: VecDeque<Arc<str>>,
    counters: DestinationCounters,
}

pub(super) struct Persist {
    delivery: Delivery,
    ack: Option<oneshot::Sender<Result<(), StoreError>>>,
}

pub(super) struct Scheduler {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    dests: Vec<Dest>,
    by_name: HashMap<String, usize>,
    lanes: HashMap<LaneKey, Lane>,
    /// Where each open delivery is.
    lane_of: HashMap<i64, LaneKey>,
    /// (when, lane) to look at again; stale entries are skipped.
    timers: BinaryHeap<Reverse<(i64, LaneKey)>>,
    /// Open deliveries to destinations that are not configured.
    unconfigured: HashMap<i64, String>,
    commands: mpsc::UnboundedSender<Command>,
    persist: mpsc::UnboundedSender<Persist>,
    random: u64,
    /// Shutting down: no new attempts; those in flight are waited for.
    stopping: bool,
}

impl Scheduler {
    pub(super) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        policy: Policy,
        destinations: Vec<Arc<Destination>>,
        commands: mpsc::UnboundedSender<Command>,
    ) -> (Scheduler, mpsc::UnboundedReceiver<Persist>) {
        let (persist, persisted) = mpsc::unbounded_channel();
        let by_name = destinations
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        let dests = destinations
            .into_iter()
            .map(|destination| Dest {
                destination,
                in_flight: 0,
                ready: VecDeque::new(),
                counters: DestinationCounters::default(),
            })
            .collect();
        let seed = jiff::Timestamp::now().as_nanosecond() as u64 | 1;
        let scheduler = Scheduler {
            store,
            clock,
            policy,
            dests,
            by_name,
            lanes: HashMap::new(),
            lane_of: HashMap::new(),
            timers: BinaryHeap::new(),
            unconfigured: HashMap::new(),
            commands,
            persist,
            random: seed,
            stopping: false,
        };
        (scheduler, persisted)
    }

    pub(super) async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let now = self.clock.now_ms();
            let nap = self
                .timers
                .peek()
                .map(|Reverse((due, _))| (due - now).clamp(0, MAX_NAP_MS));
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                _ = sleep_ms(nap) => {}
                _ = stop.wait_for(|stop| *stop) => break,
            }
            self.fire_timers();
        }
        // Let attempts in flight finish (and their results be saved), for
        // a while: what does not finish is made again after the restart.
        self.stopping = true;
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while self.dests.iter().any(|d| d.in_flight > 0) {
            match tokio::time::timeout_at(deadline, commands.recv()).await {
                Ok(Some(command)) => self.handle(command),
                _ => break,
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Add(deliveries) => {
                for delivery in deliveries {
                    self.add(delivery);
                }
            }
            Command::Done { id, outcome } => self.done(id, outcome),
            Command::Retry { id, reply } => {
                let _ = reply.send(self.retry(id));
            }
            Command::RetryDead { destination, reply } => {
                let dead: Vec<i64> = match self.by_name.get(&destination) {
                    Some(&dest) => self
                        .lanes
                        .iter()
                        .filter(|(key, _)| key.0 == dest)
                        .filter_map(|(_, lane)| lane.queue.front())
                        .filter(|head| head.status == DeliveryStatus::Dead)
                        .map(|head| head.id)
                        .collect(),
                    None => Vec::new(),
                };
                let saves = dead
                    .into_iter()
                    .filter_map(|id| match self.retry(id) {
                        RetryAnswer::Scheduled { saved, .. } => Some(saved),
                        _ => None,
                    })
                    .collect();
                let _ = reply.send(saves);
            }
            Command::Inspect { ids, reply } => {
                let reasons = ids.iter().map(|id| self.held_because(*id)).collect();
                let _ = reply.send(reasons);
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
        }
    }

    fn add(&mut self, delivery: Delivery) {
        let Some(&dest) = self.by_name.get(&delivery.destination) else {
            self.unconfigured
                .insert(delivery.id, delivery.destination.clone());
            return;
        };
        let key: LaneKey = (dest, Arc::from(delivery.lane.as_str()));
        self.lane_of.insert(delivery.id, key.clone());
        let lane = self.lanes.entry(key.clone()).or_insert_with(|| Lane {
            queue: VecDeque::new(),
            in_flight: false,
            in_ready: false,
            closed_until: None,
        });
        lane.queue.push_back(delivery);
        if lane.queue.len() == 1 {
            self.consider(&key);
        }
    }

    /// Looks at a lane's head: attempt it now, or set a timer for when.
    fn consider(&mut self, key: &LaneKey) {
        self.consider_lane(key, false);
    }

    /// As `consider`; `its_turn` when the lane comes off the `ready` queue
    /// (otherwise it queues behind lanes already there).
    fn consider_lane(&mut self, key: &LaneKey, its_turn: bool) {
        let now = self.clock.now_ms();
        let Some(lane) = self.lanes.get_mut(key) else {
            return;
        };
        let Some(head) = lane.queue.front() else {
            self.lanes.remove(key);
            return;
        };
        if lane.in_flight || head.status != DeliveryStatus::Pending {
            return;
        }
        let due = head.next_attempt_ms.unwrap_or(now);
        if due > now {
            self.timers.push(Reverse((due, key.clone())));
            return;
        }
        let dest = &mut self.dests[key.0];
        if let Some(opens) = dest
            .destination
            .hours
            .as_ref()
            .and_then(|h| h.opens_at(now))
        {
            lane.closed_until = Some(opens);
            self.timers.push(Reverse((opens, key.clone())));
            return;
        }
        lane.closed_until = None;
        if self.stopping {
            return;
        }
        let queue_first = !its_turn && !dest.ready.is_empty();
        if dest.in_flight >= dest.destination.concurrency || queue_first {
            // Lanes that were waiting for a slot go first.
            if !lane.in_ready {
                lane.in_ready = true;
                dest.ready.push_back(key.1.clone());
            }
            return;
        }
        self.start(key);
    }

    fn start(&mut self, key: &LaneKey) {
        let Some(lane) = self.lanes.get_mut(key) else {
            return;
        };
        let Some(head) = lane.queue.front() else {
            return;
        };
        lane.in_flight = true;
        lane.in_ready = false;
        let dest = &mut self.dests[key.0];
        dest.in_flight += 1;
        let now = self.clock.now_ms();
        if head.attempts == 0 {
            dest.counters
                .first_attempt_delay
                .observe_ms(now - head.created_ms);
        }
        let destination = dest.destination.clone();
        let store = self.store.clone();
        let commands = self.commands.clone();
        let clock = self.clock.clone();
        let head = head.clone();
        tokio::spawn(async move {
            // Reports even if the attempt panics, so its slot is not lost.
            let mut guard = DoneGuard {
                commands,
                id: head.id,
                outcome: None,
            };
            guard.outcome = Some(send(&*store, &destination, &head, &*clock).await);
        });
    }

    fn done(&mut self, id: i64, outcome: Outcome) {
        let Some(key) = self.lane_of.get(&id).cloned() else {
            return;
        };
        let now = self.clock.now_ms();
        let policy = self.policy;
        let jitter = self.next_random();
        let dest = &mut self.dests[key.0];
        dest.in_flight = dest.in_flight.saturating_sub(1);
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        lane.in_flight = false;
        let Some(head) = lane.queue.front_mut().filter(|h| h.id == id) else {
            return;
        };
        head.attempts += 1;
        match outcome {
            Outcome::Delivered { status } => {
                head.status = DeliveryStatus::Delivered;
                head.last_status = Some(i64::from(status));
                head.last_error = None;
                head.next_attempt_ms = None;
                head.delivered_ms = Some(now);
                dest.counters.attempts_delivered += 1;
                dest.counters
                    .delivered_latency
                    .observe_ms(now - head.created_ms);
            }
            Outcome::Retry {
                status,
                error,
                retry_after_ms,
                response,
            } => {
                dest.counters.attempts_failed += 1;
                head.last_status = status.map(i64::from);
                head.response = response;
                if head.attempts - head.budget_from >= i64::from(policy.max_attempts) {
                    head.status = DeliveryStatus::Dead;
                    head.next_attempt_ms = None;
                    head.last_error = Some(format!(
                        "{error}; gave up after {} attempts",
                        head.attempts - head.budget_from
                    ));
                    dest.counters.dead_letters += 1;
                } else {
                    // Retry-After is honoured, but never below the initial
                    // backoff: `0` or a date in the past must not spin.
                    let delay = match retry_after_ms {
                        Some(ms) => ms.clamp(policy.initial_backoff_ms, policy.max_backoff_ms),
                        None => policy.backoff_ms(head.attempts - head.budget_from, jitter),
                    };
                    head.next_attempt_ms = Some(now.saturating_add(delay));
                    head.last_error = Some(error);
                }
            }
            Outcome::Refused {
                status,
                error,
                response,
            } => {
                dest.counters.attempts_refused += 1;
                dest.counters.dead_letters += 1;
                head.status = DeliveryStatus::Dead;
                head.next_attempt_ms = None;
                head.last_status = Some(i64::from(status));
                head.last_error = Some(error);
                head.response = Some(response);
            }
        }
        let saved = head.clone();
        if saved.status == DeliveryStatus::Delivered {
            lane.queue.pop_front();
            self.lane_of.remove(&id);
        }
        if saved.status == DeliveryStatus::Dead {
            tracing::warn!(delivery = id, destination = %saved.destination, error = ?saved.last_error, "delivery dead: held for a manual retry");
        }
        let _ = self.persist.send(Persist {
            delivery: saved,
            ack: None,
        });
        // The slot goes to lanes already waiting for one before this lane's
        // next delivery (`consider` queues it behind them).
        self.fill_slots(key.0);
        self.consider(&key);
    }

    /// Starts lanes that were waiting for a slot at `dest`.
    fn fill_slots(&mut self, dest: usize) {
        while self.dests[dest].in_flight < self.dests[dest].destination.concurrency {
            let Some(name) = self.dests[dest].ready.pop_front() else {
                break;
            };
            let key = (dest, name);
            if let Some(lane) = self.lanes.get_mut(&key) {
                lane.in_ready = false;
            }
            self.consider_lane(&key, true);
        }
    }

    fn fire_timers(&mut self) {
        let now = self.clock.now_ms();
        while let Some(Reverse((due, _))) = self.timers.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, key))) = self.timers.pop() else {
                break;
            };
            self.consider(&key);
        }
    }

    fn retry(&mut self, id: i64) -> RetryAnswer {
        if self.stopping {
            return RetryAnswer::Stopping;
        }
        if self.unconfigured.contains_key(&id) {
            return RetryAnswer::NotConfigured;
        }
        let Some(key) = self.lane_of.get(&id).cloned() else {
            return RetryAnswer::NotOpen;
        };
        let now = self.clock.now_ms();
        let Some(lane) = self.lanes.get_mut(&key) else {
            return RetryAnswer::NotOpen;
        };
        let Some(head) = lane.queue.front() else {
            return RetryAnswer::NotOpen;
        };
        if head.id != id {
            return RetryAnswer::Behind(head.id);
        }
        if lane.in_flight {
            return RetryAnswer::InFlight;
        }
        let Some(delivery) = lane.queue.front_mut() else {
            return RetryAnswer::NotOpen;
        };
        if delivery.status == DeliveryStatus::Dead {
            delivery.status = DeliveryStatus::Pending;
            delivery.budget_from = delivery.attempts;
        }
        delivery.next_attempt_ms = Some(now);
        let saved = delivery.clone();
        let (ack, acked) = oneshot::channel();
        let _ = self.persist.send(Persist {
            delivery: saved.clone(),
            ack: Some(ack),
        });
        self.consider(&key);
        RetryAnswer::Scheduled {
            delivery: Box::new(saved),
            saved: acked,
        }
    }

    fn held_because(&self, id: i64) -> Option<String> {
        if let Some(destination) = self.unconfigured.get(&id) {
            return Some(format!(
                "destination `{destination}` is not configured ([destinations.{destination}])"
            ));
        }
        let key = self.lane_of.get(&id)?;
        let lane = self.lanes.get(key)?;
        let head = lane.queue.front()?;
        if head.id != id {
            return Some(format!(
                "waits behind delivery {} for the same patient ({})",
                head.id,
                head.status.as_str()
            ));
        }
        let opens = lane.closed_until?;
        Some(format!(
            "`{}` is closed (hours {}); opens {}",
            head.destination,
            self.dests[key.0]
                .destination
                .hours
                .map_or(String::new(), |h| h.to_string()),
            super::format_time(opens)
        ))
    }

    fn snapshot(&self) -> Vec<(String, QueueDepth, DestinationCounters)> {
        let mut depths = vec![QueueDepth::default(); self.dests.len()];
        for (key, lane) in &self.lanes {
            let depth = &mut depths[key.0];
            for (i, delivery) in lane.queue.iter().enumerate() {
                match delivery.status {
                    DeliveryStatus::Dead => depth.dead += 1,
                    _ if i > 0 || lane.closed_until.is_some() => depth.waiting += 1,
                    _ if lane.in_flight => {}
                    _ => depth.pending += 1,
                }
            }
            depth.in_flight += usize::from(lane.in_flight);
        }
        self.dests
            .iter()
            .zip(depths)
            .map(|(d, depth)| (d.destination.name.clone(), depth, d.counters.clone()))
            .collect()
    }

    /// xorshift64: jitter needs spread, not secrecy.
    fn next_random(&mut self) -> u64 {
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        x
    }
}

/// Sends an attempt's outcome when dropped: at the end of the attempt, or
/// while unwinding from a panic in it (then as a failure to retry).
struct DoneGuard {
    commands: mpsc::UnboundedSender<Command>,
    id: i64,
    outcome: Option<Outcome>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or_else(|| Outcome::Retry {
            status: None,
            error: "the attempt failed inside the gateway (see its log)".to_string(),
            retry_after_ms: None,
            response: None,
        });
        let _ = self.commands.send(Command::Done {
            id: self.id,
            outcome,
        });
    }
}

async fn sleep_ms(ms: Option<i64>) {
    match ms {
        Some(ms) => tokio::time::sleep(std::time::Duration::from_millis(ms.max(0) as u64)).await,
        None => std::future::pending().await,
    }
}

/// One attempt: reads the version and posts it.
async fn send(
    store: &dyn Store,
    destination: &Destination,
    delivery: &Delivery,
    clock: &dyn Clock,
) -> Outcome {
    let version = store
        .vread(
            delivery.resource_type,
            &delivery.resource_id,
            delivery.version,
        )
        .await;
    let body = match version {
        Ok(Some(stored)) => stored.body,
        Ok(None) => {
            return Outcome::Refused {
                status: 0,
                error: format!(
                    "{}/{}/_history/{} is not in the store",
                    delivery.resource_type, delivery.resource_id, delivery.version
                ),
                response: String::new(),
            };
        }
        Err(err) => {
            return Outcome::Retry {
                status: None,
                error: format!("cannot read the resource to send: {err}"),
                retry_after_ms: None,
                response: None,
            };
        }
    };
    let correlation = format!(
        "{}/{}/_history/{}",
        delivery.resource_type, delivery.resource_id, delivery.version
    );
    deliver::attempt(
        destination,
        deliver::Request {
            resource_type: delivery.resource_type.as_str(),
            body,
            idempotency_key: &delivery.key,
            correlation_id: &correlation,
        },
        clock.now_ms(),
    )
    .await
}

/// Saves delivery changes in the order they were made, many per commit.
/// A failed save is tried again: a change is never dropped.
///
/// At shutdown (`stop`), a save that keeps failing is given up after a
/// while: those deliveries are attempted again from their last saved state.
pub(super) async fn persist(
    store: Arc<dyn Store>,
    mut changes: mpsc::UnboundedReceiver<Persist>,
    stop: watch::Receiver<bool>,
) {
    let mut batch: Vec<Persist> = Vec::new();
    while let Some(first) = changes.recv().await {
        batch.push(first);
        while let Ok(more) = changes.try_recv() {
            batch.push(more);
        }
        loop {
            let deliveries = batch.iter().map(|p| p.delivery.clone()).collect();
            match store.update_deliveries(deliveries).await {
                Ok(()) => {
                    for change in batch.drain(..) {
                        if let Some(ack) = change.ack {
                            let _ = ack.send(Ok(()));
                        }
                    }
                    break;
                }
                Err(StoreError::Closed) => {
                    for change in batch.drain(..) {
                        if let Some(ack) = change.ack {
                            let _ = ack.send(Err(StoreError::Closed));
                        }
                    }
                    return;
                }
                Err(err) if *stop.borrow() => {
                    tracing::error!(error = %err, changes = batch.len(), "saving delivery state failed at shutdown; those deliveries will be attempted again");
                    return;
                }
                Err(err) => {
                    tracing::error!(error = %err, "saving delivery state failed; trying again");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}
