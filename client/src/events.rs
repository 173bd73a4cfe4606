//! `SessionClosed` events (contract §4): [`Subscriber`] binds a [`PrivateQueue`] to the events
//! exchange and yields each ended session once, as a typed [`SessionClosed`], dropping the
//! repeats that at-least-once delivery brings (same event id). It owns the event's wire form and
//! the memory of recent ids; it never acknowledges or changes anything on the service.
//!
//! # Format
//!
//! A CloudEvents 1.0 event in JSON structured mode, routing key `session.closed`:
//!
//! ```text
//! {"specversion": "1.0", "id": "…", "source": "/session-manager", "type": "SessionClosed",
//!  "time": "…", "subject": "<session_id>", "datacontenttype": "application/json",
//!  "data": {"session_id": "…", "user_id": "…", "device_id": "…",
//!           "reason": "deleted | user_sessions_deleted | expired | evicted", "closed_at": "…"}}
//! ```

use std::collections::{HashSet, VecDeque};

use lapin::{Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};

use crate::amqp::{Error, PrivateQueue, RawMessage};

/// The routing key of every `SessionClosed` event.
pub const SESSION_CLOSED: &str = "session.closed";
/// How many recent event ids a [`Subscriber`] remembers to drop repeats.
pub const REMEMBERED_IDS: usize = 100_000;

/// A `SessionClosed` event: one ended session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionClosed {
    /// Unique per ended session; a repeat of the event carries the same id.
    pub id: String,
    /// `/session-manager`.
    pub source: String,
    /// `SessionClosed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `1.0`.
    pub specversion: String,
    /// When the event was made (RFC 3339).
    pub time: String,
    /// The session id.
    pub subject: String,
    /// `application/json`.
    pub datacontenttype: String,
    /// What ended.
    pub data: ClosedSession,
}

/// The `data` of a [`SessionClosed`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClosedSession {
    /// The session that ended.
    pub session_id: String,
    /// Its user.
    pub user_id: String,
    /// Its device.
    pub device_id: String,
    /// Why it ended.
    pub reason: CloseReason,
    /// When it ended (RFC 3339, UTC).
    pub closed_at: String,
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// `DeleteSession` or `DELETE /a01/session/{id}`.
    Deleted,
    /// `DeleteUserSessions` or `DELETE /a01/session?user_id=U`.
    UserSessionsDeleted,
    /// Its absolute or idle lifetime ran out.
    Expired,
    /// Ended by the per-user limit when the user created one more.
    Evicted,
    /// A reason this client does not know yet, as the service spelled it.
    #[serde(untagged)]
    Other(String),
}

/// A subscription to `SessionClosed` events: events published from its start on arrive, each
/// once. Its queue goes when it is dropped.
pub struct Subscriber {
    queue: PrivateQueue,
    recent: RecentIds,
}

impl Subscriber {
    /// Connects to RabbitMQ at `amqp_url` and subscribes to the events of `exchange`
    /// (the service's `SESSION_EVENTS_EXCHANGE`, which the service declares at start).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let command_queue = instance.settings().command_queue.clone();
    /// # let events_exchange = instance.settings().events_exchange.clone();
    /// use session_manager_client::{amqp::AmqpClient, command::*, events::*};
    ///
    /// let mut events = Subscriber::connect(amqp_url, &events_exchange).await?;
    /// let client = AmqpClient::connect(amqp_url, &command_queue).await?;
    /// let created = client.call(&CreateSession::new("alice", "phone")).await?;
    /// client.call(&DeleteSession::new(&created.session_id)).await?;
    ///
    /// let event = events.next().await?;
    /// assert_eq!(event.data.session_id, created.session_id);
    /// assert_eq!(event.data.user_id, "alice");
    /// assert_eq!(event.data.reason, CloseReason::Deleted);
    /// # Ok(()) }
    /// ```
    pub async fn connect(amqp_url: &str, exchange: &str) -> Result<Self, Error> {
        let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        // The subscriber's channel keeps the connection open; it closes when it is dropped.
        Self::with_connection(&connection, exchange).await
    }

    /// Subscribes on a channel of its own over an open `connection`.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let command_queue = instance.settings().command_queue.clone();
    /// # let events_exchange = instance.settings().events_exchange.clone();
    /// use lapin::{Connection, ConnectionProperties};
    /// use session_manager_client::{amqp::AmqpClient, command::*, events::*};
    ///
    /// let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    /// let mut events = Subscriber::with_connection(&connection, &events_exchange).await?;
    /// let client = AmqpClient::with_connection(&connection, &command_queue).await?;
    /// client.call(&CreateSession::new("bob", "phone")).await?;
    /// client.call(&CreateSession::new("bob", "laptop")).await?;
    /// client.call(&DeleteUserSessions::new("bob")).await?;
    ///
    /// for _ in 0..2 {
    ///     let event = events.next().await?;
    ///     assert_eq!(event.data.reason, CloseReason::UserSessionsDeleted);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn with_connection(connection: &Connection, exchange: &str) -> Result<Self, Error> {
        let channel = connection.create_channel().await?;
        Ok(Self {
            queue: PrivateQueue::bound(&channel, exchange, SESSION_CLOSED).await?,
            recent: RecentIds::default(),
        })
    }

    /// The next event whose id was not among the last [`REMEMBERED_IDS`] ones. A body that is
    /// not a `SessionClosed` is [`Error::Body`]; the next call goes on with the next event.
    pub async fn next(&mut self) -> Result<SessionClosed, Error> {
        loop {
            let event: SessionClosed = self.queue.next().await?.json()?;
            if self.recent.first_time(&event.id) {
                return Ok(event);
            }
        }
    }

    /// The next event as it arrived (body, properties, routing key), repeats included; it does
    /// not count as seen for [`Subscriber::next`].
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
    /// # use session_manager_testkit::{Instance, isolated_settings};
    /// # let instance = Instance::start(isolated_settings()).await;
    /// # let command_queue = instance.settings().command_queue.clone();
    /// # let events_exchange = instance.settings().events_exchange.clone();
    /// use serde_json::Value;
    /// use session_manager_client::{amqp::AmqpClient, command::*, events::*};
    ///
    /// let mut events = Subscriber::connect(amqp_url, &events_exchange).await?;
    /// let client = AmqpClient::connect(amqp_url, &command_queue).await?;
    /// let created = client.call(&CreateSession::new("alice", "phone")).await?;
    /// client.call(&DeleteSession::new(&created.session_id)).await?;
    ///
    /// let event = events.next_raw().await?;
    /// assert_eq!(event.routing_key, SESSION_CLOSED);
    /// let content_type = event.properties.content_type().as_ref().map(|t| t.as_str());
    /// assert_eq!(content_type, Some("application/cloudevents+json"));
    /// let body: Value = event.json()?;
    /// let message_id = event.properties.message_id().as_ref().map(|t| t.as_str());
    /// assert_eq!(message_id, body["id"].as_str());
    /// # Ok(()) }
    /// ```
    pub async fn next_raw(&mut self) -> Result<RawMessage, Error> {
        self.queue.next().await
    }
}

/// The last [`REMEMBERED_IDS`] event ids, oldest forgotten first.
#[derive(Default)]
struct RecentIds {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    /// Remembers `id`; whether it was new.
    fn first_time(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > REMEMBERED_IDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::schemas::assert_valid;

    fn event(id: &str, reason: &str) -> serde_json::Value {
        json!({"specversion": "1.0", "id": id, "source": "/session-manager",
            "type": "SessionClosed", "time": "2025-01-01T00:00:00Z",
            "subject": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "datacontenttype": "application/json",
            "data": {"session_id": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "user_id": "alice", "device_id": "phone", "reason": reason,
                "closed_at": "2025-01-01T00:00:00.123Z"}})
    }

    #[test]
    fn events_of_every_reason_read_and_write_back_the_same() {
        let reasons = [
            ("deleted", CloseReason::Deleted),
            ("user_sessions_deleted", CloseReason::UserSessionsDeleted),
            ("expired", CloseReason::Expired),
            ("evicted", CloseReason::Evicted),
        ];
        for (text, reason) in reasons {
            let body = event("e-1", text);
            assert_valid("event.SessionClosed.json", &body);
            let read: SessionClosed = serde_json::from_value(body.clone()).unwrap();
            assert_eq!(
                (read.kind.as_str(), &read.data.reason),
                ("SessionClosed", &reason)
            );
            assert_eq!(serde_json::to_value(&read).unwrap(), body);
        }
    }

    #[test]
    fn an_unknown_reason_is_kept_as_spelled() {
        let read: SessionClosed = serde_json::from_value(event("e-1", "banned")).unwrap();
        assert_eq!(read.data.reason, CloseReason::Other("banned".into()));
    }

    #[test]
    fn repeated_ids_are_dropped_while_remembered_and_memory_stays_bounded() {
        let mut recent = RecentIds::default();
        assert!(recent.first_time("a"));
        assert!(!recent.first_time("a"));
        for n in 0..REMEMBERED_IDS {
            assert!(recent.first_time(&n.to_string()));
        }
        assert_eq!(
            (recent.ids.len(), recent.order.len()),
            (REMEMBERED_IDS, REMEMBERED_IDS)
        );
        assert!(recent.first_time("a"), "the oldest id was forgotten");
        assert!(!recent.first_time(&(REMEMBERED_IDS - 1).to_string()));
    }
}
