//! Building and running one instance: connects to Redis and RabbitMQ, binds the REST listener,
//! and runs the REST front end, the AMQP worker, the outbox relay and the RabbitMQ connection as
//! tasks until shutdown. Shutdown comes in as a future, so tests pass their own and bind port 0.
//! A task that ends before shutdown (a panic) stops the instance, which then reports it.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    metrics::Metrics,
    relay::{Relay, RelayWake},
    service::SessionService,
    store::{Keys, Policy, RedisConnection, Store},
    transport::{
        amqp::{run_worker, AmqpEvents, AmqpLink, Consuming, WorkerSettings},
        http::{routes, serve, HttpState},
    },
};

/// Why an instance could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The Redis URL or connection failed at start.
    #[error("cannot connect to Redis")]
    Redis(#[source] redis::RedisError),
    /// The TLS configuration of the RabbitMQ connection could not be made.
    #[error("cannot set up TLS for RabbitMQ")]
    AmqpTls(#[source] rustls::Error),
    /// The REST port could not be bound.
    #[error("cannot bind the REST port")]
    Bind(#[source] std::io::Error),
    /// A task of the instance ended before shutdown, or failed during it.
    #[error("{task} failed: {cause}")]
    Task {
        /// Which task, e.g. "the outbox relay".
        task: &'static str,
        /// Why: a panic's message.
        cause: String,
    },
}

/// The store that `settings` describe (also used by `session-manager rewrap`).
pub async fn open_store(settings: &Settings) -> Result<Store, StartupError> {
    let redis = RedisConnection::open(
        settings.redis_url.expose(),
        &settings.redis_tls,
        settings.redis_mode,
    )
    .await
    .map_err(StartupError::Redis)?;
    Ok(Store::new(
        redis,
        Keys::new(&settings.key_prefix),
        Policy {
            lifetime: settings.session_lifetime,
            idle: settings.idle_timeout,
            max_per_user: settings.max_per_user,
            record_retention: settings.idempotency_retention,
        },
        settings.keyring.clone(),
    )
    .waiting_for(settings.redis_wait))
}

/// One built instance, ready to run.
pub struct Application {
    listener: TcpListener,
    port: u16,
    amqp: Arc<AmqpLink>,
    service: SessionService,
    relay: Relay<AmqpEvents>,
    metrics: Arc<Metrics>,
    settings: Settings,
}

impl Application {
    /// Connects (Redis lazily, unless it is a cluster) and binds the REST port.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let store = open_store(&settings).await?;
        let metrics = Arc::new(Metrics::new());
        // Connected by `run_until_stopped`, and again whenever the connection is lost.
        let amqp = AmqpLink::new(settings.amqp_url.clone(), &settings.amqp_tls)
            .map_err(StartupError::AmqpTls)?;
        let wake = Arc::new(RelayWake::default());
        let events = AmqpEvents::new(amqp.clone(), settings.events_exchange.clone());
        let relay = Relay::new(store.clone(), events, wake.clone(), metrics.clone());
        let service = SessionService::new(store, wake, metrics.clone());
        let listener = TcpListener::bind((settings.listen_addr, settings.port))
            .await
            .map_err(StartupError::Bind)?;
        if !settings.callers.is_empty() && !settings.callers.has_amqp_users() {
            tracing::warn!(
                "callers are configured, none with an amqp_user: every AMQP command is answered \
                 unauthorized; give each publisher an entry with its RabbitMQ user in \
                 SESSION_CALLERS_FILE"
            );
        }
        if settings.callers.is_empty() {
            tracing::warn!(
                address = %settings.listen_addr,
                "no caller is configured (SESSION_CALLERS_FILE, SESSION_API_TOKEN): every \
                 caller may do everything, read every token included; protected mode: the REST \
                 front end listens on 127.0.0.1 unless SERVICE_LISTEN_ADDR says otherwise"
            );
        }
        let port = listener.local_addr().map_err(StartupError::Bind)?.port();
        Ok(Self {
            listener,
            port,
            amqp,
            service,
            relay,
            metrics,
            settings,
        })
    }

    /// The REST port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until `shutdown` completes, then stops taking requests and commands, finishes
    /// those in flight, publishes what their last commands wrote and closes the connections.
    /// `Err` when a task ended before shutdown or failed during it.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let consuming = Consuming::default();
        let store = self.service.store().clone();
        let link = self.amqp.clone();
        let ready = consuming.clone();
        let state = Arc::new(HttpState {
            service: self.service.clone(),
            metrics: self.metrics.clone(),
            callers: self.settings.callers.clone(),
            readiness: Arc::new(move || {
                let store = store.clone();
                let amqp_ready = link.is_connected() && ready.get();
                Box::pin(async move {
                    let redis_up = tokio::time::timeout(Duration::from_secs(1), store.ping())
                        .await
                        .is_ok_and(|ping| ping.is_ok());
                    redis_up && amqp_ready
                })
            }),
        });
        // Stopped in this order: the front ends, then the relay (so that it publishes what
        // their last commands wrote), then the RabbitMQ connection.
        let front_ends = CancellationToken::new();
        let relay = CancellationToken::new();
        let connection = CancellationToken::new();
        tracing::info!(address = %self.settings.listen_addr, port = self.port, "REST front end listening");
        let stages = vec![
            Stage::new(
                front_ends.clone(),
                vec![
                    Task::spawn(
                        "the REST front end",
                        serve(
                            self.listener,
                            routes(state),
                            front_ends.clone().cancelled_owned(),
                        ),
                    ),
                    Task::spawn(
                        "the AMQP worker",
                        run_worker(
                            self.amqp.clone(),
                            self.service.clone(),
                            self.metrics.clone(),
                            WorkerSettings {
                                queue: self.settings.command_queue.clone(),
                                events_exchange: self.settings.events_exchange.clone(),
                                prefetch: self.settings.prefetch,
                                dead_letter_ttl: self.settings.dead_letter_ttl,
                                callers: self.settings.callers.clone(),
                                reply_to_prefixes: self.settings.reply_to_prefixes.clone(),
                            },
                            consuming,
                            front_ends,
                        ),
                    ),
                ],
            ),
            Stage::new(
                relay.clone(),
                vec![Task::spawn("the outbox relay", self.relay.run(relay))],
            ),
            Stage::new(
                connection.clone(),
                vec![Task::spawn(
                    "the RabbitMQ connection",
                    self.amqp.clone().maintain(connection),
                )],
            ),
        ];
        let result = supervise(shutdown, stages).await;
        tracing::info!("stopped");
        result
    }
}

/// A task of the instance, which runs until its stage is stopped.
struct Task {
    name: &'static str,
    handle: JoinHandle<()>,
    ended: bool,
}

impl Task {
    fn spawn(name: &'static str, work: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            name,
            handle: tokio::spawn(work),
            ended: false,
        }
    }
}

/// Tasks stopped together by one token.
struct Stage {
    stop: CancellationToken,
    tasks: Vec<Task>,
}

impl Stage {
    fn new(stop: CancellationToken, tasks: Vec<Task>) -> Self {
        Self { stop, tasks }
    }
}

/// Why a task ended: its panic's message, or that it returned although nothing stopped it. A
/// message formatted at run time is not shown (it could carry what the task held); the panic
/// hook has logged where it happened.
fn cause(ended: Result<(), tokio::task::JoinError>) -> Option<String> {
    match ended {
        Ok(()) => None,
        Err(error) if error.is_panic() => {
            let panic = error.into_panic();
            let message = panic
                .downcast_ref::<&'static str>()
                .copied()
                .unwrap_or("a message formatted at run time (not shown)");
            Some(format!("panicked: {message}"))
        }
        Err(error) => Some(error.to_string()),
    }
}

/// Waits for `shutdown` or for any task to end first (which only a failure does), then stops the
/// stages in order, each after the one before has ended. `Err` names the first task that ended
/// early or failed while stopping; it is logged with its cause when it happens.
async fn supervise(
    shutdown: impl Future<Output = ()>,
    mut stages: Vec<Stage>,
) -> Result<(), StartupError> {
    let mut failure = None;
    let early = {
        let handles = stages
            .iter_mut()
            .flat_map(|stage| stage.tasks.iter_mut())
            .map(|task| &mut task.handle);
        tokio::select! {
            () = shutdown => None,
            (ended, index, _) = futures_util::future::select_all(handles) => Some((index, ended)),
        }
    };
    if let Some((index, ended)) = early {
        let task = stages
            .iter_mut()
            .flat_map(|stage| stage.tasks.iter_mut())
            .nth(index)
            .expect("select_all answers the index of one of the tasks");
        task.ended = true;
        let cause = cause(ended).unwrap_or_else(|| "ended before shutdown".into());
        tracing::error!(task = task.name, cause = %cause, "a task ended early; stopping the instance");
        failure = Some(StartupError::Task {
            task: task.name,
            cause,
        });
    }
    for stage in stages {
        stage.stop.cancel();
        for task in stage.tasks.into_iter().filter(|task| !task.ended) {
            if let Some(cause) = cause(task.handle.await) {
                tracing::error!(task = task.name, cause = %cause, "a task failed while stopping");
                failure.get_or_insert(StartupError::Task {
                    task: task.name,
                    cause,
                });
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that runs until its stage is stopped, then runs `then`.
    fn until_stopped(stop: &CancellationToken, then: fn()) -> impl Future<Output = ()> {
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            then();
        }
    }

    fn stages_calling(first: fn(), second: fn()) -> Vec<Stage> {
        let (one, two) = (CancellationToken::new(), CancellationToken::new());
        vec![
            Stage::new(
                one.clone(),
                vec![Task::spawn("one", until_stopped(&one, first))],
            ),
            Stage::new(
                two.clone(),
                vec![Task::spawn("two", until_stopped(&two, second))],
            ),
        ]
    }

    #[tokio::test]
    async fn a_shutdown_stops_the_stages_in_order_each_after_the_one_before_has_ended() {
        let ended = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (one, two) = (CancellationToken::new(), CancellationToken::new());
        let task = |name: &'static str, stop: &CancellationToken, linger: u64| {
            let (stop, ended) = (stop.clone(), ended.clone());
            Task::spawn(name, async move {
                stop.cancelled().await;
                // The first stage takes a while to finish: the second must wait for it.
                tokio::time::sleep(Duration::from_millis(linger)).await;
                ended.lock().unwrap().push(name);
            })
        };
        let stages = vec![
            Stage::new(one.clone(), vec![task("front end", &one, 100)]),
            Stage::new(two.clone(), vec![task("relay", &two, 0)]),
        ];
        assert!(supervise(async {}, stages).await.is_ok());
        assert_eq!(*ended.lock().unwrap(), ["front end", "relay"]);
        assert!(supervise(async {}, stages_calling(|| {}, || {}))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_task_that_panics_before_shutdown_stops_the_rest_and_is_reported() {
        let (one, two) = (CancellationToken::new(), CancellationToken::new());
        let stages = vec![
            Stage::new(
                one.clone(),
                vec![Task::spawn("the relay", async { panic!("boom") })],
            ),
            Stage::new(
                two.clone(),
                vec![Task::spawn("two", until_stopped(&two, || {}))],
            ),
        ];
        let result = supervise(std::future::pending(), stages).await;
        match result {
            Err(StartupError::Task { task, cause }) => {
                assert_eq!(task, "the relay");
                assert_eq!(cause, "panicked: boom");
            }
            other => panic!("{other:?}"),
        }
        assert!(two.is_cancelled(), "the other stages were stopped");
    }

    #[tokio::test]
    async fn a_task_that_returns_before_shutdown_is_a_failure() {
        let stop = CancellationToken::new();
        let stages = vec![Stage::new(stop, vec![Task::spawn("worker", async {})])];
        let result = supervise(std::future::pending(), stages).await;
        assert!(
            matches!(result, Err(StartupError::Task { task: "worker", ref cause }) if cause == "ended before shutdown"),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_task_that_panics_while_stopping_is_reported() {
        let result = supervise(async {}, stages_calling(|| {}, || panic!("late"))).await;
        assert!(
            matches!(result, Err(StartupError::Task { task: "two", ref cause }) if cause == "panicked: late"),
            "{result:?}"
        );
    }
}
