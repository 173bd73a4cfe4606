//! The outbox relay: publishes the `SessionClosed` events that the store's scripts wrote into
//! each bucket's outbox stream, and removes an entry only after the broker confirmed it. Every
//! instance runs one; they share the buckets through leases (`store::lease`): each relay visits
//! the buckets it holds four times a second, and any bucket its own commands just wrote events
//! to at once, so Redis's idle work does not grow with the number of instances. An entry that a
//! relay took but never acknowledged (it crashed, or RabbitMQ was down) is taken over after
//! [`STALE_AFTER`], and the buckets of a relay that died once its leases lapse
//! ([`LEASE_TTL`]). A relay that cannot reach the lease hash visits every bucket once its
//! leases have lapsed. The same periodic tick ends the sessions whose moment has passed.
//! It publishes through an [`EventSink`], which the AMQP transport implements; it knows nothing
//! of RabbitMQ.

use std::{
    collections::HashSet,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{Backoff, LogThrottle},
    domain::{Command, SessionClosed},
    metrics::Metrics,
    store::{Bucket, OutboxEntry, Store, StoreError},
    telemetry::Chain,
};

/// Where the relay publishes events.
pub trait EventSink: Send + Sync + 'static {
    /// Why events could not be published.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Publishes `events`; `Ok` only once the broker has confirmed every one of them.
    fn publish(
        &self,
        events: &[SessionClosed],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Lets go of the sink's resources, after the last publish.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// How often every held bucket is visited (expiry and outbox) when nothing wakes the relay
/// sooner.
pub const TICK: Duration = Duration::from_millis(250);
/// How long a bucket's lease lasts unless renewed: the buckets of a relay that died are taken
/// over within this and one [`LEASE_EVERY`].
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often a relay renews its leases and takes its share of free ones.
const LEASE_EVERY: Duration = Duration::from_secs(1);
/// An entry taken but not acknowledged for this long is taken over by the next tick.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// Most entries (and expired sessions) handled per bucket and tick.
const BATCH: usize = 200;
/// A consumer (of an instance that is gone) idle this long, holding nothing, is forgotten.
pub const FORGET_CONSUMERS_AFTER: Duration = Duration::from_secs(60 * 60);
/// How often the relay looks for such consumers.
const FORGET_EVERY: Duration = Duration::from_secs(60);
/// At shutdown, how long the relay keeps publishing what is left.
pub const FLUSH_FOR: Duration = Duration::from_secs(5);
/// While every tick fails to reach Redis, the time between two log lines saying why.
const REDIS_FAILURE_LINES: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// Whether `error` says that Redis (or the node holding the leases) cannot be reached at all.
fn unreachable(error: &StoreError) -> bool {
    matches!(error, StoreError::Unavailable(error)
        if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal())
}

/// Buckets whose outbox just received events; the relay visits them at once.
#[derive(Default)]
pub struct RelayWake {
    dirty: Mutex<HashSet<Bucket>>,
    notify: Notify,
}

impl RelayWake {
    /// Has the relay visit the bucket of `command` now (it may have written events).
    pub fn mark(&self, command: &Command) {
        self.dirty().insert(Bucket::of_command(command));
        self.notify.notify_one();
    }

    fn take(&self) -> Vec<Bucket> {
        self.dirty().drain().collect()
    }

    fn dirty(&self) -> std::sync::MutexGuard<'_, HashSet<Bucket>> {
        // Nothing panics while holding the lock; should something, the set is still whole.
        self.dirty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One instance's relay.
pub struct Relay<S> {
    store: Store,
    sink: S,
    wake: Arc<RelayWake>,
    metrics: Arc<Metrics>,
    /// This instance's consumer name in the outbox consumer groups.
    consumer: String,
    /// Spaces out the lines about ticks that fail.
    failures: LogThrottle,
    /// The buckets this relay holds a lease on (or all, see [`Relay::renewed`]), when it last
    /// renewed them, and when it last tried.
    held: Vec<Bucket>,
    leased_at: Option<tokio::time::Instant>,
    lease_tried_at: Option<tokio::time::Instant>,
}

impl<S: EventSink> Relay<S> {
    /// A relay publishing the outboxes of `store` to `sink`, woken early by `wake`.
    pub fn new(store: Store, sink: S, wake: Arc<RelayWake>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            sink,
            wake,
            metrics,
            consumer: format!("relay-{}", uuid::Uuid::new_v4().simple()),
            failures: LogThrottle::new(REDIS_FAILURE_LINES),
            held: Vec::new(),
            leased_at: None,
            lease_tried_at: None,
        }
    }

    /// Ticks until `shutdown`, then publishes what is left for at most [`FLUSH_FOR`] and frees
    /// its leases.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // Ticks on the wall clock's quarter seconds, so that the visits of all instances reach
        // Redis together rather than in as many batches as there are instances.
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let into_tick = Duration::from_nanos((since_epoch.as_nanos() % TICK.as_nanos()) as u64);
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + (TICK - into_tick), TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_forget = tokio::time::Instant::now();
        loop {
            let woken = tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => None,
                () = self.wake.notify.notified() => Some(self.wake.take()),
            };
            let forget = (last_forget.elapsed() >= FORGET_EVERY).then_some(FORGET_CONSUMERS_AFTER);
            if forget.is_some() {
                last_forget = tokio::time::Instant::now();
            }
            match woken {
                Some(dirty) => {
                    self.tick(&dirty, forget).await;
                }
                None => {
                    // The leases are renewed beside the visits, so that a lease hash that is
                    // slow to answer delays no visit.
                    let renewal = self.renewal_due().then(|| {
                        let (store, consumer) = (self.store.clone(), self.consumer.clone());
                        async move { store.lease_buckets(&consumer, LEASE_TTL).await }
                    });
                    let held = self.held.clone();
                    let (renewed, _) = tokio::join!(
                        futures_util::future::OptionFuture::from(renewal),
                        self.tick(&held, forget)
                    );
                    if let Some(renewed) = renewed {
                        self.renewed(renewed);
                    }
                }
            }
        }
        let held = self.held.clone();
        let flush = async { while self.tick(&held, None).await > 0 {} };
        if tokio::time::timeout(FLUSH_FOR, flush).await.is_err() {
            tracing::warn!("outbox not empty at shutdown; another instance will publish the rest");
        }
        if let Err(error) = self.store.release_buckets(&self.consumer).await {
            tracing::debug!(error = %Chain(&error), "cannot free the relay's leases; they lapse");
        }
        self.sink.close().await;
    }

    /// Whether it is time to renew the leases (and take this relay's share of free ones): once
    /// a [`LEASE_EVERY`], whether the last try succeeded or not.
    fn renewal_due(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if self
            .lease_tried_at
            .is_some_and(|at| now.duration_since(at) < LEASE_EVERY)
        {
            return false;
        }
        self.lease_tried_at = Some(now);
        true
    }

    /// Takes the outcome of a renewal. While the lease hash cannot be reached, the leases held
    /// are kept for [`LEASE_TTL`]; after that (or when none was ever had) the relay visits every
    /// bucket, as each did before leases: on a cluster the hash lives on one master, and losing
    /// that master must not stop the events of the other shards. Visits of a bucket by several
    /// relays are safe, only dearer. Other failures (a timeout, a script error) keep what is
    /// held: a slow Redis must not get four times the visits.
    fn renewed(&mut self, renewed: Result<Vec<Bucket>, StoreError>) {
        match renewed {
            Ok(held) => {
                if held.len() != self.held.len() {
                    tracing::debug!(buckets = held.len(), "relay leases changed");
                }
                self.held = held;
                self.leased_at = Some(tokio::time::Instant::now());
                if self.failures.succeeded() {
                    tracing::info!("outbox relay reaches Redis again");
                }
            }
            Err(error) => {
                let lapsed = self.leased_at.is_none_or(|at| at.elapsed() >= LEASE_TTL);
                if lapsed && unreachable(&error) {
                    self.held = Bucket::all().collect();
                }
                // Said as a failed tick is: Redis cannot be reached.
                if let Some(unlogged) = self.failures.failed() {
                    tracing::warn!(error = %Chain(&error), unlogged_failures = unlogged, "outbox relay cannot reach Redis to renew its leases; once they lapse it visits every bucket");
                }
            }
        }
    }

    /// Visits `buckets`, each on its own: a bucket whose Redis node cannot be reached holds up no
    /// other. Returns how many events it published.
    async fn tick(&mut self, buckets: &[Bucket], forget: Option<Duration>) -> usize {
        if buckets.is_empty() {
            // Nothing visited is no news about Redis either way.
            return 0;
        }
        let this = &*self;
        let visits = buckets.iter().map(|&bucket| async move {
            let entries = this
                .store
                .tick(bucket, &this.consumer, BATCH, STALE_AFTER, forget)
                .await
                .map_err(|error| (bucket, error))?;
            let count = entries.len();
            let published = count > 0 && this.publish(bucket, entries).await;
            Ok(if published { count } else { 0 })
        });
        let mut published = 0;
        let mut failed = Vec::new();
        for visit in futures_util::future::join_all(visits).await {
            match visit {
                Ok(count) => published += count,
                Err(failure) => failed.push(failure),
            }
        }
        match failed.first() {
            None => {
                if self.failures.succeeded() {
                    tracing::info!("outbox relay reaches Redis again");
                }
            }
            Some((bucket, error)) => {
                if let Some(unlogged) = self.failures.failed() {
                    tracing::warn!(error = %Chain(error), failed_buckets = failed.len(), first_failed_bucket = %bucket,
                        unlogged_failures = unlogged, "outbox relay cannot reach Redis for some buckets; the others go on");
                }
            }
        }
        published
    }

    /// Publishes a bucket's entries and removes them; `false` when they could not be published.
    async fn publish(&self, bucket: Bucket, entries: Vec<OutboxEntry>) -> bool {
        let (ids, events): (Vec<String>, Vec<Option<SessionClosed>>) = entries
            .into_iter()
            .map(|entry| (entry.id, entry.event))
            .unzip();
        let events: Vec<SessionClosed> = events
            .into_iter()
            .filter_map(|event| {
                if event.is_none() {
                    tracing::error!("dropping an outbox entry that cannot be read");
                }
                event
            })
            .collect();
        // A blocked connection (a broker alarm) never confirms: give up for this tick.
        let published = match tokio::time::timeout(STALE_AFTER, self.sink.publish(&events)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Chain(&error).to_string()),
            Err(_) => Err("no confirm from the broker in time".to_owned()),
        };
        if let Err(error) = published {
            // Left pending: this instance tries them again at its next tick; another instance
            // takes them over after STALE_AFTER.
            tracing::warn!(error = %error, count = events.len(), "cannot publish events now");
            return false;
        }
        self.metrics.record_events_published(events.len());
        if let Err(error) = self.store.acknowledge(bucket, &ids).await {
            // Published but still pending: published again later, with the same event ids.
            tracing::warn!(error = %Chain(&error), "cannot remove published events from the outbox");
        }
        true
    }
}
