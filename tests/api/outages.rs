//! Outages of the servers the service depends on, broken on purpose: RabbitMQ through a TCP
//! proxy that cuts and refuses connections, Redis as a private server that is stopped and
//! started again. The service must notice, answer what it can, and recover by itself.

use std::time::{Duration, Instant};

use lapin::BasicProperties;
use serde_json::{json, Value};
use session_manager::config::{SecretString, Settings};

use crate::helpers::{isolated_settings, spawn_app_with, TestApp, WAIT};
use session_manager_testkit::{PrivateRedis, TcpProxy};

/// Polls /readyz until it answers `status`; returns how long that took.
async fn until_ready_is(app: &TestApp, status: u16) -> Duration {
    let started = Instant::now();
    while app.readyz().await != status {
        assert!(started.elapsed() < WAIT, "/readyz did not become {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

/// Publishes a command with `reply_to` and returns its correlation id.
async fn publish_command(app: &TestApp, command: &Value, message_id: &str) -> String {
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let properties = BasicProperties::default()
        .with_reply_to(app.amqp.reply_queue().into())
        .with_correlation_id(correlation_id.as_str().into())
        .with_message_id(message_id.into());
    app.amqp
        .publish(command.to_string().as_bytes(), properties)
        .await;
    correlation_id
}

#[tokio::test]
async fn the_service_survives_losing_rabbitmq() {
    let proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let settings = Settings {
        amqp_url: SecretString::new(format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port)),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;
    let id = app
        .create_session(json!({"user_id": "u", "device_id": "d"}))
        .await;
    assert_eq!(app.readyz().await, 200);

    proxy.cut(true);
    until_ready_is(&app, 503).await;
    // REST still serves, and a delete's event waits in the outbox.
    let (status, _) = app
        .rest(reqwest::Method::DELETE, &format!("/a01/session/{id}"))
        .await;
    assert_eq!(status, 200);
    // A command sent meanwhile waits in the queue.
    let command = json!({"type": "CreateSession", "user_id": "u", "device_id": "e"});
    let correlation_id = publish_command(&app, &command, "while-cut").await;
    app.amqp.assert_no_reply(Duration::from_millis(500)).await;

    proxy.allow();
    let took = until_ready_is(&app, 200).await;
    eprintln!(
        "ready again {} ms after RabbitMQ came back",
        took.as_millis()
    );
    let reply = app.amqp.reply_for(&correlation_id).await;
    assert_eq!(reply.body["status"], "ok", "{}", reply.body);
    let event = events.next().await;
    assert_eq!(event.body["data"]["session_id"], id.as_str());
    assert_eq!(event.body["data"]["reason"], "deleted");
    events.assert_quiet(Duration::from_millis(500)).await;
    assert_eq!(app.amqp.dead_letter_count().await, 0);
}

#[tokio::test]
async fn the_service_survives_a_redis_restart() {
    let redis = PrivateRedis::start(&[]);
    let port = redis.port;
    let settings = Settings {
        redis_url: SecretString::new(format!("redis://127.0.0.1:{port}/")),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let id = app
        .create_session(json!({"user_id": "u", "device_id": "d"}))
        .await;

    drop(redis);
    let started = Instant::now();
    let (status, body) = app
        .rest(reqwest::Method::GET, &format!("/a01/session/{id}"))
        .await;
    let took = started.elapsed();
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(took < Duration::from_secs(5), "503 took {took:?}");
    until_ready_is(&app, 503).await;

    // A command that cannot be applied now is neither answered, acknowledged nor dead-lettered.
    let command = json!({"type": "CreateSession", "user_id": "u", "device_id": "e"});
    let correlation_id = publish_command(&app, &command, "while-redis-down").await;
    app.amqp.assert_no_reply(Duration::from_secs(2)).await;
    assert_eq!(app.amqp.dead_letter_count().await, 0);

    let _redis = PrivateRedis::start_on(port, &[]);
    until_ready_is(&app, 200).await;
    let reply = app.amqp.reply_for(&correlation_id).await;
    assert_eq!(reply.body["status"], "ok", "{}", reply.body);
    let created = reply.body["result"]["session_id"].as_str().unwrap();
    assert_eq!(app.listed_ids("u").await, [created]);
}

/// A command queue declared beforehand with other arguments cannot be consumed: the instance
/// keeps serving REST but is not ready, and says why in its log.
#[tokio::test]
async fn an_incompatible_command_queue_makes_the_instance_unready() {
    let settings = isolated_settings();
    let amqp = crate::helpers::AmqpClient::connect(&settings).await;
    amqp.channel
        .queue_declare(
            settings.command_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let app = crate::helpers::spawn_app_not_waiting(settings).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.readyz().await, 503);
    app.create_session(json!({"user_id": "u", "device_id": "d"}))
        .await;
}

/// An events exchange that exists with other properties (a fanout, say) stops the events only:
/// commands are still consumed and answered, and the instance is ready.
#[tokio::test]
async fn an_incompatible_events_exchange_stops_the_events_not_the_commands() {
    let settings = isolated_settings();
    let amqp = crate::helpers::AmqpClient::connect(&settings).await;
    amqp.channel
        .exchange_declare(
            settings.events_exchange.as_str().into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let app = spawn_app_with(settings).await;
    let created = app
        .amqp
        .call(&json!({"type": "CreateSession", "user_id": "u", "device_id": "d"}))
        .await;
    assert_eq!(created.body["status"], "ok", "{}", created.body);
    until_ready_is(&app, 200).await;
}

/// `AMQP_URL` with several nodes (here two proxies to the one RabbitMQ, and a port where nothing
/// listens): the instance connects to one that answers, and when its node goes away it goes on
/// with the next, round robin, consuming again within seconds.
#[tokio::test]
async fn several_amqp_urls_are_tried_round_robin() {
    let first = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let second = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let nowhere = session_manager_testkit::free_port();
    let url = |port: u16| format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let settings = Settings {
        amqp_url: SecretString::new(format!(
            "{}, {},{}",
            url(nowhere),
            url(first.port),
            url(second.port)
        )),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    // With message_ids: a delivery whose ack the cut lost comes back, and is not applied again.
    let create = async |device: &str| {
        let command = json!({"type": "CreateSession", "user_id": "u", "device_id": device});
        let reply = app.amqp.call_with_id(&command, device).await;
        assert_eq!(reply.body["status"], "ok", "{}", reply.body);
    };
    create("a").await;
    assert!(
        first.count_sent(b"AMQP") > 0,
        "connected through the first node that answers"
    );

    for (device, lost, next) in [("b", &first, &second), ("c", &second, &first)] {
        let before = next.count_sent(b"AMQP");
        lost.cut(true);
        let started = tokio::time::Instant::now();
        until_ready_is(&app, 503).await;
        until_ready_is(&app, 200).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "consuming again after {:?}",
            started.elapsed()
        );
        assert!(
            next.count_sent(b"AMQP") > before,
            "went on with the next node"
        );
        create(device).await;
        lost.allow();
    }
    assert_eq!(app.listed_ids("u").await.len(), 3);
}
