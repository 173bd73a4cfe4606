//! Commands over AMQP (contract §3): [`AmqpClient`] publishes commands to the command queue and
//! hands each caller the reply that carries its correlation id; [`PrivateQueue`] is the one
//! exclusive, server-named queue primitive that replies and event subscriptions
//! ([`crate::events`]) are read from. It owns publishing, confirms, correlation and retries; it
//! knows nothing of a command's fields beyond [`Request`].
//!
//! # Replies nobody waits for
//!
//! One background task reads the client's reply queue and sorts each reply by its
//! `correlation_id`:
//! - a caller waits for it ([`AmqpClient::call`], [`AmqpClient::reply_for`]): it gets it;
//! - the id is one the client chose for a call that has given up or was answered already (a late
//!   or repeated reply): it is dropped, so nothing piles up;
//! - any other id (a command the caller published itself with `reply_to` set to
//!   [`AmqpClient::reply_queue`]): it is kept, in arrival order, until [`AmqpClient::reply_for`]
//!   or [`AmqpClient::next_reply`] takes it. Whoever publishes such commands must take their
//!   replies.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{Stream, StreamExt, TryStreamExt, stream};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{Notify, oneshot},
    task::JoinHandle,
    time::{Instant, timeout_at},
};

use crate::command::{ErrorReply, ListSessions, Reply, Request, SessionSummary};

/// How long [`AmqpClient::call`] waits for a reply before it publishes the command again.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times [`AmqpClient::call`] publishes a command again after a timeout.
pub const DEFAULT_RETRIES: u32 = 2;

/// A failure of the AMQP connection, or a message that is not what it should be.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RabbitMQ refused an operation, or the connection or channel is gone.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker did not take a published message (a negative publisher confirm).
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// The queue's consumer ended: the channel or the connection was closed.
    #[error("the queue's consumer was closed")]
    Closed,
    /// A message body is not the JSON it should be.
    #[error("unexpected message body: {0}")]
    Body(#[from] serde_json::Error),
}

/// Why a command got no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The service answered with an error (`not_found`, `invalid_argument`, `conflict`, …).
    #[error("the service answered {0}")]
    Rejected(ErrorReply),
    /// No reply came, after this many publishes of the command.
    #[error("no reply after {attempts} attempt(s)")]
    Timeout {
        /// How many times the command was published.
        attempts: u32,
    },
    /// The connection failed, or the reply was not what the command's result should be.
    #[error(transparent)]
    Amqp(#[from] Error),
}

/// A message as it arrived on a [`PrivateQueue`]: a reply or an event.
#[derive(Clone, Debug, PartialEq)]
pub struct RawMessage {
    /// The body, as published.
    pub body: Vec<u8>,
    /// Its properties (`correlation_id`, `content_type`, `message_id`, …).
    pub properties: BasicProperties,
    /// The routing key it was published with.
    pub routing_key: String,
}

impl RawMessage {
    /// Its `correlation_id`, if any.
    pub fn correlation_id(&self) -> Option<&str> {
        self.properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str())
    }

    /// The body as JSON of type `T` (`serde_json::Value` for any JSON).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// The body read as a reply envelope: the `result` as `T`, or the error it carries.
    pub fn outcome<T: DeserializeOwned>(&self) -> Result<T, CallError> {
        match self.json()? {
            Reply::Ok { result } => Ok(result),
            Reply::Error { error } => Err(CallError::Rejected(error)),
        }
    }
}

/// An exclusive, auto-delete queue with a server-chosen name, consumed without acks: gone when
/// its consumer or connection goes. Replies and event subscriptions are read from one.
pub struct PrivateQueue {
    name: String,
    consumer: Consumer,
}

impl PrivateQueue {
    /// Declares a queue on `channel` and consumes it; only messages sent to its name arrive.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// use lapin::{options::BasicPublishOptions as Options, BasicProperties, Connection};
    /// use session_manager_client::amqp::PrivateQueue;
    ///
    /// let connection = Connection::connect(amqp_url, Default::default()).await?;
    /// let channel = connection.create_channel().await?;
    /// let mut queue = PrivateQueue::declare(&channel).await?;
    /// let properties = BasicProperties::default().with_correlation_id("c-1".into());
    /// let to = queue.name().into();
    /// channel.basic_publish("".into(), to, Options::default(), b"{}", properties).await?.await?;
    ///
    /// let message = queue.next().await?;
    /// assert_eq!(message.correlation_id(), Some("c-1"));
    /// assert_eq!(message.body, b"{}");
    /// # Ok(()) }
    /// ```
    pub async fn declare(channel: &Channel) -> Result<Self, Error> {
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await?;
        let name = queue.name().to_string();
        // No acks: a private queue's messages are for this reader only, and a reader that is
        // gone cannot take them anyway (the queue goes with it).
        let options = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let tag = format!("private-{}", uuid::Uuid::new_v4().simple());
        let consumer = channel
            .basic_consume(
                name.as_str().into(),
                tag.into(),
                options,
                FieldTable::default(),
            )
            .await?;
        Ok(Self { name, consumer })
    }

    /// Declares a queue on `channel` bound to `exchange` with `routing_key`: messages published
    /// there from now on arrive. See [`crate::events::Subscriber`] for the events.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let events_exchange = instance.settings().events_exchange.clone();
    /// # let command_queue = instance.settings().command_queue.clone();
    /// use lapin::{Connection, ConnectionProperties};
    /// use session_manager_client::{amqp::{AmqpClient, PrivateQueue}, command::*};
    /// use session_manager_client::events::SESSION_CLOSED;
    ///
    /// let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    /// let channel = connection.create_channel().await?;
    /// let mut events = PrivateQueue::bound(&channel, &events_exchange, SESSION_CLOSED).await?;
    ///
    /// let client = AmqpClient::with_connection(&connection, &command_queue).await?;
    /// let created = client.call(&CreateSession::new("alice", "phone")).await?;
    /// client.call(&DeleteSession::new(&created.session_id)).await?;
    ///
    /// let event = events.next().await?;
    /// assert_eq!(event.routing_key, SESSION_CLOSED);
    /// let body: serde_json::Value = event.json()?;
    /// assert_eq!(body["subject"], created.session_id.as_str());
    /// # Ok(()) }
    /// ```
    pub async fn bound(
        channel: &Channel,
        exchange: &str,
        routing_key: &str,
    ) -> Result<Self, Error> {
        let queue = Self::declare(channel).await?;
        channel
            .queue_bind(
                queue.name.as_str().into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(queue)
    }

    /// The queue's name: the `reply_to` of commands whose replies should arrive here.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next message; [`Error::Closed`] once the consumer has ended.
    pub async fn next(&mut self) -> Result<RawMessage, Error> {
        let delivery = self.consumer.next().await.ok_or(Error::Closed)??;
        Ok(RawMessage {
            body: delivery.data,
            properties: delivery.properties,
            routing_key: delivery.routing_key.to_string(),
        })
    }
}

/// A client that sends commands to the service and waits for their replies, any number of calls
/// at once over one connection.
///
/// Commands go to the default exchange with the command queue as routing key, persistent,
/// `content_type: application/json`, with `reply_to` (the client's [`PrivateQueue`]), a fresh
/// `correlation_id` and a `message_id`, under publisher confirms.
pub struct AmqpClient {
    channel: Channel,
    command_queue: String,
    reply_queue: String,
    replies: Arc<Replies>,
    /// Starts every correlation id the client chooses, so that late replies are known as such.
    call_prefix: String,
    calls: AtomicU64,
    timeout: Duration,
    retries: u32,
    /// The `user_id` of every command: the AMQP user the client publishes as, by which the
    /// service knows the caller (the broker refuses a `user_id` that is not the connection's).
    amqp_user: Option<String>,
    dispatcher: JoinHandle<()>,
}

impl AmqpClient {
    /// Connects to RabbitMQ at `amqp_url` and sends commands to `command_queue`. The connection
    /// closes when the client is dropped.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let command_queue = instance.settings().command_queue.clone();
    /// use std::time::Duration;
    /// use session_manager_client::{amqp::AmqpClient, command::ListSessions};
    ///
    /// let client = AmqpClient::connect(amqp_url, &command_queue)
    ///     .await?
    ///     .with_timeout(Duration::from_secs(5))
    ///     .with_retries(1);
    /// let list = client.call(&ListSessions::new("nobody")).await?;
    /// assert!(list.sessions.is_empty());
    /// # Ok(()) }
    /// ```
    pub async fn connect(amqp_url: &str, command_queue: &str) -> Result<Self, Error> {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        // The client's channels keep the connection open; it closes when they are dropped.
        let client = Self::with_connection(&connection, command_queue).await?;
        // The URL's user is the one the connection publishes as, when the URL names one and
        // the connection logs in with it (EXTERNAL takes the user from the client certificate).
        let user = amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .ok()
            .filter(|uri| {
                let named = amqp_url.split_once("://").is_some_and(|(_, rest)| {
                    rest.split(['/', '?'])
                        .next()
                        .is_some_and(|authority| authority.contains('@'))
                });
                let external =
                    uri.query.auth_mechanism == Some(lapin::uri::SASLMechanism::External);
                named && !external
            })
            .map(|uri| uri.authority.userinfo.username);
        Ok(match user {
            Some(user) => client.with_amqp_user(user),
            None => client,
        })
    }

    /// A client on channels of its own over an open `connection`.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let command_queue = instance.settings().command_queue.clone();
    /// use lapin::{Connection, ConnectionProperties};
    /// use session_manager_client::{amqp::AmqpClient, command::CreateSession};
    ///
    /// let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    /// let client = AmqpClient::with_connection(&connection, &command_queue).await?;
    /// let created = client.call(&CreateSession::new("alice", "phone")).await?;
    /// assert!(created.session_id.len() >= 43);
    /// # Ok(()) }
    /// ```
    pub async fn with_connection(
        connection: &Connection,
        command_queue: &str,
    ) -> Result<Self, Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Replies arrive on a channel of their own, so that reading them never waits behind
        // publishes.
        let reply_queue = PrivateQueue::declare(&connection.create_channel().await?).await?;
        let replies = Arc::new(Replies::default());
        let call_prefix = format!("call-{}-", uuid::Uuid::new_v4().simple());
        Ok(Self {
            channel,
            command_queue: command_queue.to_owned(),
            reply_queue: reply_queue.name().to_owned(),
            dispatcher: tokio::spawn(dispatch(reply_queue, replies.clone(), call_prefix.clone())),
            replies,
            call_prefix,
            calls: AtomicU64::new(0),
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            amqp_user: None,
        })
    }

    /// Sets `user_id` to `user` on every command: the RabbitMQ user of the connection, which
    /// the service maps to a caller (`amqp_user` in its callers file). [`AmqpClient::connect`]
    /// sets it from the URL; a client made [`AmqpClient::with_connection`] needs it when the
    /// service has callers configured.
    pub fn with_amqp_user(mut self, user: impl Into<String>) -> Self {
        self.amqp_user = Some(user.into());
        self
    }

    /// How long a call waits for its reply before it publishes the command again
    /// ([`DEFAULT_TIMEOUT`] unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times a call publishes its command again, same `message_id`, after a timeout
    /// ([`DEFAULT_RETRIES`] unless set).
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The name of the queue that replies come to: the `reply_to` of every call.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Sends `command` with a fresh `message_id` (a UUIDv4, the same on the client's own
    /// retries) and returns its result. An error reply is [`CallError::Rejected`].
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let command_queue = instance.settings().command_queue.clone();
    /// use session_manager_client::{amqp::AmqpClient, command::*};
    ///
    /// let client = AmqpClient::connect(amqp_url, &command_queue).await?;
    /// let create = CreateSession::new("alice", "phone")
    ///     .access_token("access-1")
    ///     .refresh_token("refresh-1")
    ///     .expiration_time(3600);
    /// let SessionCreated { session_id } = client.call(&create).await?;
    ///
    /// let session = client.call(&GetSession::new(&session_id)).await?;
    /// assert_eq!(session.access_token.as_deref(), Some("access-1"));
    ///
    /// let list = client.call(&ListSessions::new("alice")).await?;
    /// assert_eq!(list.sessions[0].session_id, session_id);
    ///
    /// let update = UpdateSession::new(&session_id)
    ///     .access_token("access-2")
    ///     .refresh_token(Change::Clear);
    /// let session = client.call(&update).await?;
    /// assert_eq!(session.access_token.as_deref(), Some("access-2"));
    /// assert_eq!(session.refresh_token, None);
    ///
    /// let deleted = client.call(&DeleteSession::new(&session_id)).await?;
    /// assert_eq!(deleted.session_id, session_id);
    ///
    /// client.call(&CreateSession::new("alice", "laptop")).await?;
    /// let deleted = client.call(&DeleteUserSessions::new("alice")).await?;
    /// assert_eq!(deleted.session_ids.len(), 1);
    /// # Ok(()) }
    /// ```
    ///
    /// An error reply:
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let command_queue = instance.settings().command_queue.clone();
    /// use session_manager_client::{amqp::{AmqpClient, CallError}, command::GetSession};
    ///
    /// let client = AmqpClient::connect(amqp_url, &command_queue).await?;
    /// let unknown = GetSession::new("Q".repeat(43));
    /// match client.call(&unknown).await {
    ///     Err(CallError::Rejected(error)) => assert_eq!(error.code, "not_found"),
    ///     other => panic!("expected not_found, got {other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn call<R: Request>(&self, command: &R) -> Result<R::Output, CallError> {
        let message_id = uuid::Uuid::new_v4().to_string();
        self.call_with_message_id(command, &message_id).await
    }

    /// Every session of `user_id`, oldest first, as a stream that asks for the next page of
    /// `page` sessions (1–1000) when it has handed out the last one, following the `next`
    /// cursors; it ends after the last page, or at the first error.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let command_queue = instance.settings().command_queue.clone();
    /// use futures_util::TryStreamExt;
    /// use session_manager_client::{amqp::AmqpClient, command::*};
    ///
    /// let client = AmqpClient::connect(amqp_url, &command_queue).await?;
    /// let mut created = Vec::new();
    /// for device in ["phone", "laptop", "tablet", "watch", "tv"] {
    ///     created.push(client.call(&CreateSession::new("alice", device)).await?.session_id);
    /// }
    /// // Three calls of two sessions each.
    /// let all: Vec<SessionSummary> = client.sessions_of("alice", 2).try_collect().await?;
    /// let ids: Vec<_> = all.into_iter().map(|s| s.session_id).collect();
    /// assert_eq!(ids, created);
    /// # Ok(()) }
    /// ```
    pub fn sessions_of<'a>(
        &'a self,
        user_id: &str,
        page: u32,
    ) -> impl Stream<Item = Result<SessionSummary, CallError>> + 'a {
        let first = ListSessions::new(user_id).limit(page);
        stream::try_unfold(Some(first), move |command| async move {
            let Some(command) = command else {
                return Ok::<_, CallError>(None);
            };
            let list = self.call(&command).await?;
            let next = list.next.map(|cursor| command.clone().after(cursor));
            Ok(Some((
                stream::iter(list.sessions.into_iter().map(Ok)),
                next,
            )))
        })
        .try_flatten()
    }

    /// As [`AmqpClient::call`] with a `message_id` chosen by the caller: a repeat of the same
    /// operation under the same id (within 24 hours) is applied once and answered with the
    /// first outcome.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let command_queue = instance.settings().command_queue.clone();
    /// use session_manager_client::{amqp::AmqpClient, command::*};
    ///
    /// let client = AmqpClient::connect(amqp_url, &command_queue).await?;
    /// let create = CreateSession::new("alice", "phone");
    /// let first = client.call_with_message_id(&create, "signup-42").await?;
    /// let again = client.call_with_message_id(&create, "signup-42").await?;
    /// assert_eq!(first, again);
    /// assert_eq!(client.call(&ListSessions::new("alice")).await?.sessions.len(), 1);
    /// # Ok(()) }
    /// ```
    pub async fn call_with_message_id<R: Request>(
        &self,
        command: &R,
        message_id: &str,
    ) -> Result<R::Output, CallError> {
        let body = serde_json::to_vec(command).map_err(Error::Body)?;
        self.call_raw(&body, Some(message_id)).await?.outcome()
    }

    /// Sends `body` as it is (any bytes, JSON or not) with `reply_to`, a fresh `correlation_id`
    /// and `message_id` when given, and returns the reply as it arrived. Only a command with a
    /// `message_id` is published again after a timeout: without one the service could apply it
    /// twice.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let command_queue = instance.settings().command_queue.clone();
    /// use serde_json::Value;
    /// use session_manager_client::amqp::AmqpClient;
    ///
    /// let client = AmqpClient::connect(amqp_url, &command_queue).await?;
    /// let reply = client.call_raw(b"not JSON", None).await?;
    /// let body: Value = reply.json()?;
    /// assert_eq!(body["status"], "error");
    /// assert_eq!(body["error"]["code"], "invalid_argument");
    /// let content_type = reply.properties.content_type().as_ref().map(|t| t.as_str());
    /// assert_eq!(content_type, Some("application/json"));
    /// # Ok(()) }
    /// ```
    pub async fn call_raw(
        &self,
        body: &[u8],
        message_id: Option<&str>,
    ) -> Result<RawMessage, CallError> {
        let number = self.calls.fetch_add(1, Ordering::Relaxed);
        let correlation_id = format!("{}{number}", self.call_prefix);
        let mut properties = BasicProperties::default()
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(correlation_id.as_str().into());
        if let Some(message_id) = message_id {
            properties = properties.with_message_id(message_id.into());
        }
        // Waiting starts before the publish, so that no reply can come too early.
        let mut waiter = self.replies.wait_for(correlation_id)?;
        let attempts = if message_id.is_some() {
            self.retries + 1
        } else {
            1
        };
        for _ in 0..attempts {
            let deadline = Instant::now() + self.timeout;
            let published_and_answered = async {
                self.publish(body, properties.clone()).await?;
                (&mut waiter.reply).await.map_err(|_| Error::Closed)
            };
            // The reply of an earlier attempt counts as well: the same id answers the same.
            if let Ok(reply) = timeout_at(deadline, published_and_answered).await {
                return Ok(reply?);
            }
        }
        Err(CallError::Timeout { attempts })
    }

    /// Publishes `body` to the command queue with the caller's `properties` (adding
    /// `content_type: application/json`, `delivery_mode: 2` and the client's AMQP user as
    /// `user_id` when they are not set) and
    /// waits for the broker's confirm. Nothing else is added: without `reply_to` the service
    /// does not answer.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let command_queue = instance.settings().command_queue.clone();
    /// use std::time::Duration;
    /// use lapin::BasicProperties;
    /// use session_manager_client::{amqp::AmqpClient, command::*};
    ///
    /// let client = AmqpClient::connect(amqp_url, &command_queue).await?;
    /// for n in 0..3 {
    ///     let body = serde_json::to_vec(&CreateSession::new("alice", format!("device-{n}")))?;
    ///     let properties = BasicProperties::default()
    ///         .with_reply_to(client.reply_queue().into())
    ///         .with_correlation_id(format!("create-{n}").into())
    ///         .with_message_id(format!("create-{n}").into());
    ///     client.publish(&body, properties).await?;
    /// }
    /// let mut answered = Vec::new();
    /// while let Some(reply) = client.next_reply(Duration::from_secs(10)).await? {
    ///     let created: SessionCreated = reply.outcome()?;
    ///     answered.push((reply.correlation_id().map(str::to_owned), created.session_id));
    ///     if answered.len() == 3 {
    ///         break;
    ///     }
    /// }
    /// assert_eq!(client.call(&ListSessions::new("alice")).await?.sessions.len(), 3);
    /// # Ok(()) }
    /// ```
    pub async fn publish(&self, body: &[u8], properties: BasicProperties) -> Result<(), Error> {
        let mut properties = properties;
        if properties.content_type().is_none() {
            properties = properties.with_content_type("application/json".into());
        }
        if properties.delivery_mode().is_none() {
            properties = properties.with_delivery_mode(2);
        }
        if let (None, Some(user)) = (properties.user_id(), &self.amqp_user) {
            properties = properties.with_user_id(user.as_str().into());
        }
        let confirmation = self
            .channel
            .basic_publish(
                "".into(),
                self.command_queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        match confirmation {
            Confirmation::Nack(_) => Err(Error::Nacked),
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        }
    }

    /// Waits up to `within` for the reply carrying `correlation_id`, for a command the caller
    /// published itself (see [`AmqpClient::publish`]); a reply that came already is taken from
    /// those kept. One waiter per correlation id.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let command_queue = instance.settings().command_queue.clone();
    /// use std::time::Duration;
    /// use lapin::BasicProperties;
    /// use session_manager_client::{amqp::AmqpClient, command::*};
    ///
    /// let client = AmqpClient::connect(amqp_url, &command_queue).await?;
    /// let body = serde_json::to_vec(&ListSessions::new("alice"))?;
    /// let properties = BasicProperties::default()
    ///     .with_reply_to(client.reply_queue().into())
    ///     .with_correlation_id("my-list".into());
    /// client.publish(&body, properties).await?;
    /// let reply = client.reply_for("my-list", Duration::from_secs(10)).await?;
    /// let list: SessionList = reply.outcome()?;
    /// assert_eq!(list.user_id, "alice");
    /// # Ok(()) }
    /// ```
    pub async fn reply_for(
        &self,
        correlation_id: &str,
        within: Duration,
    ) -> Result<RawMessage, CallError> {
        let mut waiter = {
            let mut state = self.replies.state();
            let kept = state
                .unclaimed
                .iter()
                .position(|r| r.correlation_id() == Some(correlation_id));
            if let Some(reply) = kept.and_then(|at| state.unclaimed.remove(at)) {
                return Ok(reply);
            }
            self.replies
                .register(&mut state, correlation_id.to_owned())?
        };
        match tokio::time::timeout(within, &mut waiter.reply).await {
            Ok(reply) => reply.map_err(|_| CallError::Amqp(Error::Closed)),
            Err(_) => Err(CallError::Timeout { attempts: 1 }),
        }
    }

    /// The oldest reply that no caller waits for (see the module's documentation), waiting up
    /// to `within` for one; `None` when none came.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let command_queue = instance.settings().command_queue.clone();
    /// use std::time::Duration;
    /// use lapin::BasicProperties;
    /// use session_manager_client::{amqp::AmqpClient, command::*};
    ///
    /// let client = AmqpClient::connect(amqp_url, &command_queue).await?;
    /// let body = serde_json::to_vec(&GetSession::new("Q".repeat(43)))?;
    /// let properties = BasicProperties::default()
    ///     .with_reply_to(client.reply_queue().into())
    ///     .with_correlation_id("my-get".into());
    /// client.publish(&body, properties).await?;
    ///
    /// let reply = client.next_reply(Duration::from_secs(10)).await?.expect("a reply");
    /// assert_eq!(reply.correlation_id(), Some("my-get"));
    /// let body: serde_json::Value = reply.json()?;
    /// assert_eq!(body["error"]["code"], "not_found");
    /// assert!(client.next_reply(Duration::from_millis(100)).await?.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn next_reply(&self, within: Duration) -> Result<Option<RawMessage>, Error> {
        let deadline = Instant::now() + within;
        loop {
            let arrived = self.replies.arrived.notified();
            tokio::pin!(arrived);
            // Enabled before the check, so that a reply pushed after it still wakes us.
            arrived.as_mut().enable();
            {
                let mut state = self.replies.state();
                if let Some(reply) = state.unclaimed.pop_front() {
                    return Ok(Some(reply));
                }
                if state.closed {
                    return Err(Error::Closed);
                }
            }
            if timeout_at(deadline, arrived).await.is_err() {
                return Ok(None);
            }
        }
    }
}

impl Drop for AmqpClient {
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

/// The replies of one client: who waits for which correlation id, and what nobody waited for.
#[derive(Default)]
struct Replies {
    state: Mutex<ReplyState>,
    /// Signalled when a reply is kept for [`AmqpClient::next_reply`], and at the end.
    arrived: Notify,
}

#[derive(Default)]
struct ReplyState {
    waiting: HashMap<String, oneshot::Sender<RawMessage>>,
    unclaimed: VecDeque<RawMessage>,
    /// The reply queue's consumer has ended: no reply will come any more.
    closed: bool,
}

/// A caller's claim on the reply with one correlation id; withdrawn when dropped, so that a
/// caller that gives up leaves nothing behind.
struct Waiter<'a> {
    replies: &'a Replies,
    correlation_id: String,
    reply: oneshot::Receiver<RawMessage>,
}

impl Replies {
    fn state(&self) -> MutexGuard<'_, ReplyState> {
        // No code panics while holding the lock; should one, the maps are still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_for(&self, correlation_id: String) -> Result<Waiter<'_>, Error> {
        self.register(&mut self.state(), correlation_id)
    }

    fn register(
        &self,
        state: &mut ReplyState,
        correlation_id: String,
    ) -> Result<Waiter<'_>, Error> {
        if state.closed {
            return Err(Error::Closed);
        }
        let (sender, reply) = oneshot::channel();
        state.waiting.insert(correlation_id.clone(), sender);
        Ok(Waiter {
            replies: self,
            correlation_id,
            reply,
        })
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.replies.state().waiting.remove(&self.correlation_id);
    }
}

/// Reads the reply queue until it closes and hands each reply to its waiter (see the module's
/// documentation for the others).
async fn dispatch(mut queue: PrivateQueue, replies: Arc<Replies>, call_prefix: String) {
    while let Ok(reply) = queue.next().await {
        let correlation_id = reply.correlation_id().unwrap_or_default();
        let mut state = replies.state();
        if let Some(waiter) = state.waiting.remove(correlation_id) {
            // The caller may have gone in the meantime: then the reply is dropped here.
            let _ = waiter.send(reply);
        } else if !correlation_id.starts_with(&call_prefix) {
            state.unclaimed.push_back(reply);
            replies.arrived.notify_waiters();
        }
    }
    let mut state = replies.state();
    state.closed = true;
    // Dropping the senders tells every waiter that no reply will come.
    state.waiting.clear();
    replies.arrived.notify_waiters();
}
