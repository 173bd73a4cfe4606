//! Test harness: `spawn_app()` runs one instance in-process (the test kit's [`Instance`])
//! against the real Redis and RabbitMQ on this machine, isolated by its own key prefix, queue,
//! exchange and OS-chosen port, and removes all of them when dropped. It gives REST helpers, an
//! AMQP client (the client crate's, for commands with replies; event subscriptions; the
//! dead-letter queue) and checks every message against `schemas/`.

use std::{collections::HashMap, time::Duration};

use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions},
    types::FieldTable,
    BasicProperties, Channel, Connection, ConnectionProperties,
};
use redis::AsyncCommands;
use serde_json::{json, Value};
use session_manager::{
    config::Settings,
    domain::{Command, Fields, NewSession, Outcome, SessionId, UserId},
    store::{Bucket, Keys, Policy, RedisConnection, RedisMode, Store},
};
use session_manager_client::{
    amqp::{self as client, PrivateQueue, RawMessage},
    events::SESSION_CLOSED,
};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::api_docs;
pub use crate::api_docs::{Http, Request};
pub use session_manager_testkit::{
    eventually, instance::clean_up, isolated_settings, sha256_hex, Instance,
    LOCAL_AMQP_URL as AMQP_URL, LOCAL_REDIS_URL as REDIS_URL, WAIT,
};

/// A running instance and clients for it.
pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub http: Http,
    pub redis: redis::aio::MultiplexedConnection,
    pub amqp: AmqpClient,
    instance: Instance,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(isolated_settings()).await
}

pub async fn spawn_app_with(settings: Settings) -> TestApp {
    TestApp::around(Instance::start(settings).await).await
}

/// Starts an instance without waiting for its worker to consume.
pub async fn spawn_app_not_waiting(settings: Settings) -> TestApp {
    TestApp::around(Instance::start_not_waiting(settings).await).await
}

impl TestApp {
    async fn around(instance: Instance) -> Self {
        let settings = instance.settings().clone();
        let redis = redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("Redis is running on 127.0.0.1:6379");
        Self {
            address: instance.url(""),
            http: Http::new(),
            redis,
            amqp: AmqpClient::connect(&settings).await,
            settings,
            instance,
        }
    }

    pub fn url(&self, path: &str) -> String {
        self.instance.url(path)
    }

    /// Creates a session over REST and returns its id.
    pub async fn create_session(&self, body: Value) -> String {
        let response = self
            .http
            .post(self.url("/a01/session"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "create {body}");
        let created: Value = response.json().await.unwrap();
        assert_valid("result.SessionCreated.json", &created);
        created["session_id"].as_str().unwrap().to_owned()
    }

    /// The status of `/readyz`.
    pub async fn readyz(&self) -> u16 {
        let response = self.http.get(self.url("/readyz")).send().await.unwrap();
        response.status().as_u16()
    }

    /// A REST request without body: the status and the JSON body.
    pub async fn rest(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        status_and_json(self.http.request(method, self.url(path))).await
    }

    /// Updates a session over REST: the status and the JSON body.
    pub async fn patch(&self, session_id: &str, body: &Value) -> (u16, Value) {
        let path = format!("/a01/session/{session_id}");
        status_and_json(self.http.patch(self.url(&path)).json(body)).await
    }

    /// A session over REST, which must exist, checked against the schema.
    pub async fn session(&self, session_id: &str) -> Value {
        let (status, body) = self
            .rest(reqwest::Method::GET, &format!("/a01/session/{session_id}"))
            .await;
        assert_eq!(status, 200, "GET {session_id}: {body}");
        assert_valid("result.Session.json", &body);
        body
    }

    /// The user's list over REST, checked against the schema.
    pub async fn list(&self, user_id: &str) -> Value {
        self.for_user(reqwest::Method::GET, user_id, "result.SessionList.json")
            .await
    }

    /// The ids of the user's list over REST, in its order.
    pub async fn listed_ids(&self, user_id: &str) -> Vec<String> {
        session_ids(&self.list(user_id).await)
    }

    /// Deletes all the user's sessions over REST; the answer, checked against the schema.
    pub async fn delete_user(&self, user_id: &str) -> Value {
        self.for_user(
            reqwest::Method::DELETE,
            user_id,
            "result.UserSessionsDeleted.json",
        )
        .await
    }

    async fn for_user(&self, method: reqwest::Method, user_id: &str, schema: &str) -> Value {
        let response = self
            .http
            .request(method, self.url("/a01/session"))
            .query(&[("user_id", user_id)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_valid(schema, &body);
        assert_eq!(body["user_id"], user_id);
        body
    }

    /// Creates `count` sessions of `user_id` (devices `device-<i>`) over REST, 50 at a time, and
    /// returns their `(session_id, device_id)` pairs in no particular order.
    pub async fn create_sessions(&self, user_id: &str, count: usize) -> Vec<(String, String)> {
        let creates = (0..count).map(|i| async move {
            let device_id = format!("device-{i}");
            let id = self
                .create_session(json!({"user_id": user_id, "device_id": device_id}))
                .await;
            (id, device_id)
        });
        futures_util::stream::iter(creates)
            .buffer_unordered(50)
            .collect()
            .await
    }

    /// The names of this app's keys, as the store spells them.
    pub fn keys(&self) -> Keys {
        Keys::new(&self.settings.key_prefix)
    }

    /// Every Redis key under this app's prefix.
    pub async fn stored_keys(&self) -> Vec<String> {
        let mut redis = self.redis.clone();
        let pattern = format!("{}:*", self.settings.key_prefix);
        let shared = self.keys().shared();
        let mut keys: Vec<String> = Vec::new();
        let mut iter: redis::AsyncIter<String> = redis.scan_match(&pattern).await.unwrap();
        while let Some(key) = iter.next_item().await {
            let key = key.unwrap();
            if !shared.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }

    /// The keys under this app's prefix once the relay has emptied the outboxes, leaving out the
    /// fixed bookkeeping (an empty outbox stream per bucket that ever had events).
    pub async fn keys_left(&self) -> Vec<String> {
        let mut redis = self.redis.clone();
        let outboxes: Vec<String> = Bucket::all().map(|b| self.keys().outbox(b)).collect();
        eventually(async || {
            let mut left = Vec::new();
            let mut outbox_entries = 0;
            for key in self.stored_keys().await {
                if outboxes.contains(&key) {
                    let length: usize = redis::cmd("XLEN")
                        .arg(&key)
                        .query_async(&mut redis)
                        .await
                        .unwrap();
                    outbox_entries += length;
                } else {
                    left.push(key);
                }
            }
            if outbox_entries > 0 {
                return Err(format!(
                    "the outbox was not emptied: {outbox_entries} entries"
                ));
            }
            left.sort();
            Ok(left)
        })
        .await
    }

    /// Stops the instance gracefully and waits for it to finish.
    pub async fn stop(self) {
        self.instance.stop().await;
    }

    /// Stops the instance but keeps its keys, queues and exchange for another instance.
    pub async fn stop_keeping_state(self) {
        self.instance.stop_keeping_state().await;
    }
}

/// A reply to a command.
#[derive(Debug)]
pub struct Reply {
    pub body: Value,
    pub properties: BasicProperties,
}

/// The test's AMQP side: the client crate's [`client::AmqpClient`] for commands and replies
/// (no retries: a reply must come within [`WAIT`]), and a connection of the test's own for dead
/// letters and event subscriptions. Every reply and event is checked against `schemas/`.
pub struct AmqpClient {
    client: client::AmqpClient,
    connection: Connection,
    pub channel: Channel,
    queue: String,
    /// The bodies published with [`AmqpClient::publish`], by correlation id, so that their
    /// replies are checked against the reply of their own operation in `asyncapi.json`.
    published: std::sync::Mutex<HashMap<String, Vec<u8>>>,
}

impl AmqpClient {
    pub async fn connect(settings: &Settings) -> Self {
        Self::connect_to(AMQP_URL, settings).await
    }

    /// As [`AmqpClient::connect`], to the broker at `url`.
    pub async fn connect_to(url: &str, settings: &Settings) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ at {url}: {e}"));
        let user = url
            .parse::<lapin::uri::AMQPUri>()
            .expect("an AMQP URL")
            .authority
            .userinfo
            .username;
        let client = client::AmqpClient::with_connection(&connection, &settings.command_queue)
            .await
            .unwrap()
            .with_timeout(WAIT)
            .with_retries(0)
            .with_amqp_user(user);
        Self {
            client,
            channel: connection.create_channel().await.unwrap(),
            connection,
            queue: settings.command_queue.clone(),
            published: std::sync::Mutex::default(),
        }
    }

    /// The exclusive queue that replies to [`AmqpClient::call`] go to.
    pub fn reply_queue(&self) -> &str {
        self.client.reply_queue()
    }

    /// Publishes a raw command body with the given properties (persistent, JSON by default).
    pub async fn publish(&self, body: &[u8], properties: BasicProperties) {
        if let Some(correlation_id) = properties.correlation_id() {
            let mut published = self.published.lock().unwrap();
            published.insert(correlation_id.to_string(), body.to_vec());
        }
        self.client.publish(body, properties).await.unwrap();
    }

    /// A reply checked as [`checked_reply`] does, and, when its command was published here,
    /// against the reply of that command's operation.
    fn checked(&self, reply: RawMessage) -> Reply {
        let reply = checked_reply(reply);
        let command = reply
            .properties
            .correlation_id()
            .as_ref()
            .and_then(|id| self.published.lock().unwrap().remove(id.as_str()));
        if let Some(command) = command {
            api_docs::check_reply(&command, &reply.body);
        }
        reply
    }

    /// Publishes `command` with `reply_to` and a fresh correlation id and returns the reply,
    /// checked against `schemas/reply.json`.
    pub async fn call(&self, command: &Value) -> Reply {
        self.call_raw(command.to_string().as_bytes(), None).await
    }

    /// As [`AmqpClient::call`], with a `message_id`.
    pub async fn call_with_id(&self, command: &Value, message_id: &str) -> Reply {
        self.call_raw(command.to_string().as_bytes(), Some(message_id))
            .await
    }

    pub async fn call_raw(&self, body: &[u8], message_id: Option<&str>) -> Reply {
        let reply = self
            .client
            .call_raw(body, message_id)
            .await
            .expect("a reply arrives in time");
        let reply = checked_reply(reply);
        api_docs::check_reply(body, &reply.body);
        reply
    }

    /// Waits for the reply carrying `correlation_id`, of a command published with
    /// [`AmqpClient::publish`].
    pub async fn reply_for(&self, correlation_id: &str) -> Reply {
        let reply = self
            .client
            .reply_for(correlation_id, WAIT)
            .await
            .expect("a reply arrives in time");
        self.checked(reply)
    }

    /// The session ids that the replies to CreateSession commands published with these
    /// correlation ids name: each reply must be ok, each id another session.
    pub async fn created_session_ids(
        &self,
        correlation_ids: &[String],
    ) -> std::collections::HashSet<String> {
        let mut created = std::collections::HashSet::new();
        for correlation_id in correlation_ids {
            // Thousands of commands through a failover on a busy machine: a reply may take
            // longer than WAIT; one that never comes still fails the test.
            let reply = self
                .client
                .reply_for(correlation_id, 6 * WAIT)
                .await
                .expect("a reply arrives in time");
            let reply = self.checked(reply);
            assert_eq!(reply.body["status"], "ok", "{}", reply.body);
            let id = reply.body["result"]["session_id"].as_str().unwrap();
            created.insert(id.to_owned());
        }
        assert_eq!(
            created.len(),
            correlation_ids.len(),
            "each command made its own session"
        );
        created
    }

    /// The next reply of a command published with [`AmqpClient::publish`], or `None` when none
    /// arrives `within`.
    pub async fn next_reply(&self, within: Duration) -> Option<Reply> {
        let reply = self.client.next_reply(within).await.unwrap();
        reply.map(|reply| self.checked(reply))
    }

    /// Waits until some instance consumes from the command queue.
    pub async fn wait_for_consumer(&self) {
        session_manager_testkit::instance::wait_for_consumer(&self.queue).await;
    }

    /// Waits `for_how_long` and asserts that no reply to a published command arrives.
    pub async fn assert_no_reply(&self, for_how_long: Duration) {
        if let Some(reply) = self.next_reply(for_how_long).await {
            panic!("unexpected reply: {:?}", reply.body);
        }
    }

    /// Takes the next message from the dead-letter queue, waiting for it to arrive.
    pub async fn dead_letter(&self) -> Delivery {
        let queue = format!("{}.dead", self.queue);
        for _ in 0..200 {
            let message = self
                .channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await
                .unwrap();
            if let Some(message) = message {
                message
                    .delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap();
                return message.delivery;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nothing was dead-lettered to {queue}");
    }

    /// Number of messages in the dead-letter queue now.
    pub async fn dead_letter_count(&self) -> u32 {
        self.ready_count(&format!("{}.dead", self.queue)).await
    }

    /// Number of messages ready in `queue` now (not those delivered and not yet acknowledged).
    pub async fn ready_count(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Binds a fresh queue to the events exchange; events published from now on arrive there.
    pub async fn subscribe(&self, exchange: &str) -> EventSubscription {
        let channel = self.connection.create_channel().await.unwrap();
        let queue = PrivateQueue::bound(&channel, exchange, SESSION_CLOSED)
            .await
            .unwrap();
        EventSubscription { queue }
    }
}

/// A reply, checked against `schemas/reply.json`, the replies of `schemas/asyncapi.json` and for
/// its content type.
pub fn checked_reply(reply: RawMessage) -> Reply {
    let body: Value = reply.json().expect("a reply is JSON");
    assert_valid("reply.json", &body);
    api_docs::check_any_reply(&body);
    api_docs::check_reply_properties(&reply.properties);
    assert_eq!(
        reply.properties.content_type().as_ref().map(|t| t.as_str()),
        Some("application/json")
    );
    Reply {
        body,
        properties: reply.properties,
    }
}

/// A queue bound to the events exchange.
pub struct EventSubscription {
    queue: PrivateQueue,
}

/// A received `SessionClosed`, checked against its schema and the contract's properties.
#[derive(Debug)]
pub struct Event {
    pub body: Value,
    pub routing_key: String,
    pub properties: BasicProperties,
}

impl EventSubscription {
    pub async fn next(&mut self) -> Event {
        let event = tokio::time::timeout(WAIT, self.queue.next())
            .await
            .expect("an event arrives in time")
            .expect("the event consumer is open");
        let body: Value = event.json().expect("an event is JSON");
        assert_valid("event.SessionClosed.json", &body);
        api_docs::check_event(&body, &event.properties, &event.routing_key);
        let properties = event.properties;
        assert_eq!(
            properties.content_type().as_ref().map(|t| t.as_str()),
            Some("application/cloudevents+json")
        );
        assert_eq!(
            properties.message_id().as_ref().map(|t| t.as_str()),
            body["id"].as_str()
        );
        assert_eq!(
            properties.kind().as_ref().map(|t| t.as_str()),
            Some("SessionClosed")
        );
        assert_eq!(*properties.delivery_mode(), Some(2));
        assert_eq!(body["subject"], body["data"]["session_id"]);
        Event {
            body,
            routing_key: event.routing_key,
            properties,
        }
    }

    /// The session ids of the next `count` events (each must arrive in time; duplicates, which
    /// at-least-once delivery allows, are counted once).
    pub async fn closed_session_ids(&mut self, count: usize) -> std::collections::HashSet<String> {
        let mut closed = std::collections::HashSet::new();
        while closed.len() < count {
            let event = self.next().await;
            let id = event.body["data"]["session_id"].as_str().unwrap();
            closed.insert(id.to_owned());
        }
        closed
    }

    /// The next event, or `None` when none arrives `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<Event> {
        tokio::time::timeout(within, self.next()).await.ok()
    }

    /// Takes `count` events.
    pub async fn take(&mut self, count: usize) -> Vec<Event> {
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            events.push(self.next().await);
        }
        events
    }

    /// Asserts that no further event arrives within `for_how_long`.
    pub async fn assert_quiet(&mut self, for_how_long: Duration) {
        if let Ok(event) = tokio::time::timeout(for_how_long, self.queue.next()).await {
            let body = event.map(|e| String::from_utf8_lossy(&e.body).into_owned());
            panic!("unexpected event: {body:?}");
        }
    }
}

/// Asserts that `instance` is valid against `schemas/<schema>`.
pub fn assert_valid(schema: &str, instance: &Value) {
    let errors = api_docs::mismatches(schema, "", instance);
    assert!(
        errors.is_empty(),
        "{instance} does not match {schema}: {errors:?}"
    );
}

/// A store without a service around it, so that no relay tick ends sessions before the test
/// looks.
pub struct StoreAlone {
    pub settings: Settings,
    pub store: Store,
    pub redis: redis::aio::MultiplexedConnection,
}

impl StoreAlone {
    pub async fn open(
        lifetime: Duration,
        idle: Option<Duration>,
        max_per_user: Option<u32>,
    ) -> Self {
        let settings = isolated_settings();
        let connection =
            RedisConnection::open(REDIS_URL, &Default::default(), RedisMode::Standalone)
                .await
                .unwrap();
        let policy = Policy {
            lifetime,
            idle,
            max_per_user,
            record_retention: Duration::from_secs(60),
        };
        let store = Store::new(
            connection,
            Keys::new(&settings.key_prefix),
            policy,
            settings.keyring.clone(),
        );
        let redis = redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        Self {
            settings,
            store,
            redis,
        }
    }

    pub async fn apply(&self, command: Command) -> Outcome {
        self.store.apply(&command, None).await.unwrap()
    }

    /// Creates a session of user `u` and returns its id.
    pub async fn create(&self, device: &str) -> SessionId {
        let body = json!({"user_id": "u", "device_id": device}).to_string();
        let new = NewSession::from_fields(Fields::from_slice(body.as_bytes()).unwrap()).unwrap();
        match self.apply(Command::CreateSession(new)).await {
            Outcome::SessionCreated { session_id } => session_id,
            other => panic!("{other:?}"),
        }
    }

    /// The ids user `u`'s list shows.
    pub async fn listed(&self) -> Vec<SessionId> {
        let user = UserId::parse("u".into()).unwrap();
        match self
            .apply(Command::ListSessions(user, Default::default()))
            .await
        {
            Outcome::SessionList { sessions, .. } => {
                sessions.into_iter().map(|s| s.session_id).collect()
            }
            other => panic!("{other:?}"),
        }
    }

    /// The (session id, reason) of each event in user `u`'s outbox.
    pub async fn outbox(&mut self) -> Vec<(String, String)> {
        let user = UserId::parse("u".into()).unwrap();
        let outbox = Keys::new(&self.settings.key_prefix).outbox(Bucket::of_user(&user));
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(&outbox)
            .arg("-")
            .arg("+")
            .query_async(&mut self.redis)
            .await
            .unwrap();
        entries
            .into_iter()
            .map(|(_, fields)| (fields[1].clone(), fields[7].clone()))
            .collect()
    }

    pub async fn clean_up(self) {
        crate::helpers::clean_up(&self.settings).await;
    }
}

/// Every session id of `user_id` at the service at `base` (e.g. `http://127.0.0.1:8090`),
/// following the list's pages.
pub async fn every_session_id(base: &str, user_id: &str) -> Vec<String> {
    let http = Http::new();
    let (mut ids, mut after) = (Vec::new(), None::<String>);
    loop {
        let mut query = vec![("user_id", user_id.to_owned())];
        query.extend(after.take().map(|cursor| ("after", cursor)));
        let page: Value = http
            .get(format!("{base}/a01/session"))
            .query(&query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_valid("result.SessionList.json", &page);
        ids.extend(session_ids(&page));
        match page["next"].as_str() {
            Some(cursor) => after = Some(cursor.to_owned()),
            None => return ids,
        }
    }
}

/// The session ids of a list (a `SessionList` result).
pub fn session_ids(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap().to_owned())
        .collect()
}

/// An RFC 3339 timestamp of a result or event, which must be UTC, as a moment (compared as
/// moments: the text has a variable number of fraction digits, so it does not sort).
pub fn moment(value: &Value) -> OffsetDateTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is no string"));
    let moment = OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(moment.offset().is_utc(), "{text:?} is not UTC");
    moment
}

pub async fn status_and_json(request: Request) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The service binary built by cargo for these tests, with none of the service's variables
/// inherited from the environment: only what the test sets.
pub fn service_binary() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_session-manager"));
    for (name, _) in std::env::vars() {
        if name.starts_with("SESSION_")
            || name.starts_with("REDIS_")
            || name.starts_with("AMQP_")
            || name == "SERVICE_PORT"
            || name == "RUST_LOG"
        {
            command.env_remove(name);
        }
    }
    command
}

/// The binary with the settings of `settings`, on the local Redis and RabbitMQ.
pub fn service_on_local_servers(settings: &Settings) -> std::process::Command {
    let mut command = service_with_settings(settings);
    command
        .env("REDIS_URL", REDIS_URL)
        .env("AMQP_URL", AMQP_URL);
    command
}

/// The binary with the settings of `settings` (prefix, queue, exchange, lifetime).
pub fn service_with_settings(settings: &Settings) -> std::process::Command {
    let mut command = service_binary();
    command
        .env("SESSION_KEY_PREFIX", &settings.key_prefix)
        .env("SESSION_COMMAND_QUEUE", &settings.command_queue)
        .env("SESSION_EVENTS_EXCHANGE", &settings.events_exchange)
        .env(
            "SESSION_EXP_SEC",
            settings.session_lifetime.as_secs().to_string(),
        );
    command
}
