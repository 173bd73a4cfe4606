//! Building and running one instance: connects to Redis and RabbitMQ, binds the REST listener,
//! and runs the REST front end and the AMQP worker side by side until shutdown. Shutdown comes
//! in as a future, so tests pass their own and bind port 0.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    metrics::Metrics,
    relay::{Relay, RelayWake},
    service::SessionService,
    store::{Keys, Policy, RedisConnection, Store},
    transport::{
        amqp::{run_worker, AmqpLink, WorkerSettings},
        http::{routes, HttpState},
    },
};

/// Why an instance could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to Redis")]
    Redis(#[source] redis::RedisError),
    #[error("cannot bind the REST port")]
    Bind(#[source] std::io::Error),
}

/// One built instance, ready to run.
pub struct Application {
    listener: TcpListener,
    port: u16,
    amqp: Arc<AmqpLink>,
    service: SessionService,
    relay: Relay,
    metrics: Arc<Metrics>,
    settings: Settings,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let redis = RedisConnection::open(settings.redis_url.expose(), settings.redis_mode)
            .await
            .map_err(StartupError::Redis)?;
        let metrics = Arc::new(Metrics::new());
        // Connected by `run_until_stopped`, and again whenever the connection is lost.
        let amqp = AmqpLink::new(
            settings.amqp_url.clone(),
            settings.events_exchange.clone(),
            metrics.clone(),
        );
        let store = Store::new(
            redis,
            Keys::new(&settings.key_prefix),
            Policy {
                lifetime: settings.session_lifetime,
                idle: settings.idle_timeout,
                max_per_user: settings.max_per_user,
                record_retention: settings.idempotency_retention,
            },
        );
        let wake = Arc::new(RelayWake::default());
        let relay = Relay::new(store.clone(), amqp.clone(), wake.clone());
        let service = SessionService::new(store, wake);
        let listener = TcpListener::bind(("0.0.0.0", settings.port))
            .await
            .map_err(StartupError::Bind)?;
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
    /// those in flight and closes the connections.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let stop = CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                tokio::select! {
                    () = shutdown => stop.cancel(),
                    () = stop.cancelled() => {}
                }
            }
        });

        let amqp_stop = CancellationToken::new();
        let amqp = tokio::spawn(self.amqp.clone().maintain(amqp_stop.clone()));
        let store = self.service.store().clone();
        let link = self.amqp.clone();
        let state = Arc::new(HttpState {
            service: self.service.clone(),
            metrics: self.metrics.clone(),
            api_token: self.settings.api_token.clone(),
            readiness: Arc::new(move || {
                let store = store.clone();
                let amqp_ready = link.is_ready();
                Box::pin(async move {
                    let redis_up = tokio::time::timeout(Duration::from_secs(1), store.ping())
                        .await
                        .is_ok_and(|ping| ping.is_ok());
                    redis_up && amqp_ready
                })
            }),
        });
        let http = warp::serve(routes(state))
            .incoming(self.listener)
            .graceful(stop.clone().cancelled_owned())
            .run();
        tracing::info!(port = self.port, "REST front end listening");

        let worker = run_worker(
            self.amqp.clone(),
            self.service.clone(),
            self.metrics.clone(),
            WorkerSettings {
                queue: self.settings.command_queue.clone(),
                prefetch: self.settings.prefetch,
            },
            stop.clone(),
        );
        // The relay stops after the front ends, so it publishes what their last commands wrote;
        // the RabbitMQ connection is closed last.
        let relay_stop = CancellationToken::new();
        let relay = tokio::spawn(self.relay.run(relay_stop.clone()));
        tokio::join!(http, worker);
        relay_stop.cancel();
        if relay.await.is_err() {
            tracing::error!("the outbox relay panicked");
        }
        amqp_stop.cancel();
        if amqp.await.is_err() {
            tracing::error!("the RabbitMQ connection task panicked");
        }
        tracing::info!("stopped");
        Ok(())
    }
}
