//! Replies only where replies belong (contract §8.2) and the dead-letter queue (§8.4): a
//! command whose `reply_to` names any other queue is not applied and is dead-lettered; Direct
//! Reply-to and `SESSION_REPLY_TO_PREFIXES` queues get their answers; the dead-letter queue
//! keeps a redacted copy for `SESSION_DEAD_LETTER_TTL_SEC` at most, and one declared by version 2
//! without that TTL keeps working.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    BasicProperties, Connection, ConnectionProperties,
};
use serde_json::{json, Value};
use session_manager::config::Settings;
use session_manager_testkit::{free_port, Service};

use crate::{
    amqp::dead_letter_reason,
    helpers::{
        eventually, isolated_settings, service_on_local_servers, spawn_app, spawn_app_with,
        AmqpClient, AMQP_URL, WAIT,
    },
};

#[tokio::test]
async fn a_command_whose_reply_to_is_no_reply_queue_is_dead_lettered_and_not_applied() {
    let app = spawn_app().await;
    // A queue that exists, but is not one replies may go to: the command queue itself.
    for reply_to in [
        app.settings.command_queue.clone(),
        "some.service.queue".into(),
    ] {
        let properties = BasicProperties::default()
            .with_reply_to(reply_to.as_str().into())
            .with_correlation_id("refused".into())
            .with_message_id(format!("m-{reply_to}").as_str().into());
        let command = json!({"type": "CreateSession", "user_id": "refused", "device_id": "d",
                             "refresh_token": "r-4e5f"});
        app.amqp
            .publish(command.to_string().as_bytes(), properties)
            .await;
        let dead = app.amqp.dead_letter().await;
        assert_eq!(
            dead_letter_reason(&dead).as_deref(),
            Some("reply_to_refused")
        );
        let copy: Value = serde_json::from_slice(&dead.data).unwrap();
        assert_eq!(copy["refresh_token"], "[redacted]");
        assert_eq!(copy["user_id"], "refused");
        let headers = dead.properties.headers().clone().unwrap();
        assert_eq!(
            headers.inner().get("x-original-reply-to"),
            Some(&AMQPValue::LongString(reply_to.as_str().into()))
        );
        assert_eq!(
            dead.properties.message_id().as_ref().map(|id| id.as_str()),
            Some(format!("m-{reply_to}").as_str())
        );
    }
    assert!(app.listed_ids("refused").await.is_empty());
    assert_eq!(app.amqp.ready_count(&app.settings.command_queue).await, 0);
}

/// Consumes `queue` on `channel` without acks.
async fn consume(channel: &lapin::Channel, queue: &str) -> lapin::Consumer {
    let options = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    channel
        .basic_consume(queue.into(), "".into(), options, FieldTable::default())
        .await
        .unwrap()
}

/// The body of the next message of `consumer`, which must come within [`WAIT`].
async fn next_body(consumer: &mut lapin::Consumer) -> (Value, BasicProperties) {
    let reply = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a reply in time")
        .unwrap()
        .unwrap();
    (
        serde_json::from_slice(&reply.data).unwrap(),
        reply.properties,
    )
}

#[tokio::test]
async fn direct_reply_to_gets_its_answer() {
    let app = spawn_app().await;
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    // Direct Reply-to: consume the pseudo-queue without acks, publish on the same channel.
    let mut replies = consume(&channel, "amq.rabbitmq.reply-to").await;
    let command = json!({"type": "CreateSession", "user_id": "direct", "device_id": "d"});
    channel
        .basic_publish(
            "".into(),
            app.settings.command_queue.as_str().into(),
            BasicPublishOptions::default(),
            command.to_string().as_bytes(),
            BasicProperties::default()
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_correlation_id("direct-1".into())
                .with_content_type("application/json".into()),
        )
        .await
        .unwrap();
    let (body, properties) = next_body(&mut replies).await;
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(
        properties.correlation_id().as_ref().map(|id| id.as_str()),
        Some("direct-1")
    );
    let id = body["result"]["session_id"].as_str().unwrap();
    assert_eq!(app.listed_ids("direct").await, vec![id.to_owned()]);
}

#[tokio::test]
async fn a_queue_under_a_configured_prefix_gets_its_answer() {
    let settings = isolated_settings();
    let prefix = format!("{}.replies.", settings.command_queue);
    let app = spawn_app_with(Settings {
        reply_to_prefixes: vec![prefix.clone()],
        ..settings
    })
    .await;
    let queue = format!("{prefix}bff");
    let channel = &app.amqp.channel;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut replies = consume(channel, &queue).await;
    let properties = BasicProperties::default()
        .with_reply_to(queue.as_str().into())
        .with_correlation_id("named-1".into());
    let command = json!({"type": "ListSessions", "user_id": "nobody"});
    app.amqp
        .publish(command.to_string().as_bytes(), properties)
        .await;
    let (body, _) = next_body(&mut replies).await;
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(app.amqp.dead_letter_count().await, 0);
}

#[tokio::test]
async fn dead_letters_expire_after_the_dead_letter_ttl() {
    let app = spawn_app_with(Settings {
        dead_letter_ttl: Duration::from_secs(1),
        ..isolated_settings()
    })
    .await;
    app.amqp.call_raw(b"not json", None).await;
    eventually(async || match app.amqp.dead_letter_count().await {
        1 => Ok(()),
        n => Err(format!("{n} dead letters")),
    })
    .await;
    // Gone a second later, unread.
    eventually(async || match app.amqp.dead_letter_count().await {
        0 => Ok(()),
        n => Err(format!("{n} dead letters left")),
    })
    .await;
}

/// A dead-letter queue declared by version 2 (a quorum queue without TTL) is used as it is: the
/// instance consumes, dead-letters into it, and its log says how to add the TTL with a policy.
#[tokio::test]
async fn a_dead_letter_queue_without_the_ttl_keeps_working() {
    let settings = isolated_settings();
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let dead_letter_queue = format!("{}.dead", settings.command_queue);
    channel
        .queue_declare(
            dead_letter_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            quorum,
        )
        .await
        .unwrap();
    let service = Service::start(
        service_on_local_servers(&settings)
            .env("RUST_LOG", "warn")
            .env("SESSION_DEAD_LETTER_TTL_SEC", "1"),
        free_port(),
    );
    let amqp = AmqpClient::connect(&settings).await;
    amqp.wait_for_consumer().await;
    let reply = amqp.call_raw(b"not json", None).await;
    assert_eq!(reply.body["error"]["code"], "invalid_argument");
    let dead = amqp.dead_letter().await;
    assert_eq!(dead.data, b"not json");
    // The copies expire all the same: each carries the TTL as its expiration.
    assert_eq!(
        dead.properties
            .expiration()
            .as_ref()
            .map(|ttl| ttl.as_str()),
        Some("1000")
    );
    amqp.call_raw(b"not json either", None).await;
    eventually(async || match amqp.dead_letter_count().await {
        0 => Ok(()),
        n => Err(format!("{n} dead letters left")),
    })
    .await;
    let (status, printed) = service.terminate();
    assert!(status.success(), "{printed}");
    assert!(
        printed.contains("the dead-letter queue exists without this message TTL")
            && printed.contains("rabbitmqctl set_policy")
            && printed.contains("\"message-ttl\": 1000"),
        "{printed}"
    );
    crate::helpers::clean_up(&settings).await;
}

/// A command's CC and BCC headers, by which RabbitMQ would route a message to more queues, are
/// not copied into its dead letter: the service publishes the copy to the dead-letter queue
/// alone (one naming the command queue would otherwise come back for ever).
#[tokio::test]
async fn a_dead_letter_goes_nowhere_else_whatever_its_headers_name() {
    let app = spawn_app().await;
    let mut headers = FieldTable::default();
    let queues = lapin::types::FieldArray::from(vec![AMQPValue::LongString(
        app.settings.command_queue.as_str().into(),
    )]);
    headers.insert("CC".into(), AMQPValue::FieldArray(queues.clone()));
    headers.insert("BCC".into(), AMQPValue::FieldArray(queues));
    headers.insert("x-mine".into(), AMQPValue::LongString("kept".into()));
    let properties = BasicProperties::default().with_headers(headers);
    app.amqp.publish(b"not json", properties).await;
    let dead = app.amqp.dead_letter().await;
    let copied = dead.properties.headers().clone().unwrap();
    assert!(
        !copied.contains_key("CC") && !copied.contains_key("BCC"),
        "{copied:?}"
    );
    assert!(copied.contains_key("x-mine"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        app.amqp.dead_letter_count().await,
        0,
        "one copy, taken above"
    );
    assert_eq!(app.amqp.ready_count(&app.settings.command_queue).await, 0);
}

/// A body over 64 KiB is dead-lettered without it (redacting could only make it larger), its
/// size in a header.
#[tokio::test]
async fn a_large_command_is_dead_lettered_without_its_body() {
    let app = spawn_app().await;
    let body = format!(
        r#"{{"type": "Nope", "access_token": "{}"}}"#,
        "t".repeat(100 * 1024)
    );
    let reply = app.amqp.call_raw(body.as_bytes(), None).await;
    assert_eq!(reply.body["error"]["code"], "invalid_argument");
    let dead = app.amqp.dead_letter().await;
    assert!(dead.data.is_empty());
    let headers = dead.properties.headers().clone().unwrap();
    assert_eq!(
        headers.inner().get("x-original-size"),
        Some(&AMQPValue::LongLongInt(body.len() as i64))
    );
}

/// A reply queue that refuses a reply (full, with reject-publish) loses that reply; the command
/// is acknowledged, applied once, and holds up no other command.
#[tokio::test]
async fn a_reply_the_reply_queue_refuses_is_dropped_and_the_command_acknowledged() {
    let app = spawn_app_with(Settings {
        prefetch: 1,
        ..isolated_settings()
    })
    .await;
    let channel = &app.amqp.channel;
    let mut full = FieldTable::default();
    full.insert("x-max-length".into(), AMQPValue::LongInt(0));
    full.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let refusing = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            full,
        )
        .await
        .unwrap();
    for n in 0..3 {
        let properties = BasicProperties::default()
            .with_reply_to(refusing.name().clone())
            .with_message_id(format!("refused-{n}").as_str().into());
        let command = json!({"type": "CreateSession", "user_id": "refused-reply", "device_id": format!("d{n}")});
        app.amqp
            .publish(command.to_string().as_bytes(), properties)
            .await;
    }
    // An honest command behind them is answered at once (one command at a time here).
    let started = std::time::Instant::now();
    let reply = app
        .amqp
        .call(&json!({"type": "ListSessions", "user_id": "nobody"}))
        .await;
    assert_eq!(reply.body["status"], "ok");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(app.listed_ids("refused-reply").await.len(), 3);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(app.amqp.ready_count(&app.settings.command_queue).await, 0);
    assert_eq!(
        app.listed_ids("refused-reply").await.len(),
        3,
        "applied once each"
    );
}
