//! The AMQP client against RabbitMQ: many calls at once over one client against a real
//! instance, and, against a stand-in service that answers as told, retries under the same
//! `message_id`, late and repeated replies (dropped, never handed out), and replies to commands
//! the caller published itself.

use std::{sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, options::BasicPublishOptions,
};
use session_manager_client::{
    amqp::{AmqpClient, CallError, PrivateQueue, RawMessage},
    command::{CreateSession, DeleteUserSessions, GetSession},
};
use session_manager_testkit::{Instance, LOCAL_AMQP_URL, isolated_settings};

#[tokio::test]
async fn many_calls_at_once_over_one_client_each_get_their_own_result() {
    let instance = Instance::start(isolated_settings()).await;
    let client = Arc::new(
        AmqpClient::connect(LOCAL_AMQP_URL, &instance.settings().command_queue)
            .await
            .unwrap(),
    );
    let calls = (0..300).map(|n| {
        let client = client.clone();
        // Spawned, so the call's future must be Send: the bench runs calls on many tasks.
        tokio::spawn(async move {
            let device = format!("device-{n}");
            let created = client.call(&CreateSession::new("many", &device)).await?;
            let session = client.call(&GetSession::new(&created.session_id)).await?;
            assert_eq!(session.device_id, device);
            Ok::<_, CallError>(created.session_id)
        })
    });
    let created: Vec<String> = stream::iter(calls)
        .buffer_unordered(64)
        .map(|joined| joined.unwrap().unwrap())
        .collect()
        .await;
    let deleted = client.call(&DeleteUserSessions::new("many")).await.unwrap();
    assert_eq!(deleted.session_ids.len(), created.len());
    assert!(client.next_reply(Duration::ZERO).await.unwrap().is_none());
}

/// A stand-in for the service on a private command queue: answers each command with
/// `answers(n)` copies of `{"status": "ok", "result": {"n": n}}` after `delay`, `n` counting
/// the commands it took from 0; tells the test each command's `message_id`.
async fn stand_in(
    connection: &Connection,
    answers: fn(usize) -> usize,
    delay: Duration,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<Option<String>>) {
    let channel = connection.create_channel().await.unwrap();
    let mut commands = PrivateQueue::declare(&channel).await.unwrap();
    let name = commands.name().to_owned();
    let (seen, message_ids) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok(command) = commands.next().await {
            let message_id = command.properties.message_id().as_ref();
            let _ = seen.send(message_id.map(|id| id.to_string()));
            tokio::spawn(answer(channel.clone(), command, n, answers(n), delay));
            n += 1;
        }
    });
    (name, message_ids)
}

async fn answer(channel: Channel, command: RawMessage, n: usize, copies: usize, delay: Duration) {
    tokio::time::sleep(delay).await;
    let reply_to = command.properties.reply_to().clone().unwrap();
    let mut properties = BasicProperties::default();
    if let Some(id) = command.properties.correlation_id() {
        properties = properties.with_correlation_id(id.clone());
    }
    let body = format!(r#"{{"status": "ok", "result": {{"n": {n}}}}}"#);
    for _ in 0..copies {
        let options = BasicPublishOptions::default();
        let properties = properties.clone();
        channel
            .basic_publish(
                "".into(),
                reply_to.clone(),
                options,
                body.as_bytes(),
                properties,
            )
            .await
            .unwrap();
    }
}

async fn connection() -> Connection {
    Connection::connect(LOCAL_AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_call_without_reply_is_published_again_with_the_same_message_id() {
    let connection = connection().await;
    // The first command goes unanswered, the second is answered twice.
    let (queue, mut message_ids) = stand_in(&connection, |n| n * 2, Duration::ZERO).await;
    let client = AmqpClient::with_connection(&connection, &queue)
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(300))
        .with_retries(1);

    let reply = client.call_raw(b"{}", Some("the-id")).await.unwrap();
    assert_eq!(reply.json::<serde_json::Value>().unwrap()["result"]["n"], 1);
    let first = message_ids.recv().await.unwrap();
    let second = message_ids.recv().await.unwrap();
    assert_eq!(
        (first.as_deref(), second.as_deref()),
        (Some("the-id"), Some("the-id"))
    );
    // The second copy of the answer is a repeat of a call's reply: dropped, not kept.
    assert!(
        client
            .next_reply(Duration::from_millis(500))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_call_that_gave_up_drops_its_late_reply_and_one_without_message_id_is_not_retried() {
    let connection = connection().await;
    let (queue, mut message_ids) = stand_in(&connection, |_| 1, Duration::from_millis(400)).await;
    let client = AmqpClient::with_connection(&connection, &queue)
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(100));

    let gave_up = client.call_raw(b"{}", None).await;
    assert!(
        matches!(gave_up, Err(CallError::Timeout { attempts: 1 })),
        "{gave_up:?}"
    );
    assert_eq!(message_ids.recv().await.unwrap(), None);
    assert!(
        client
            .next_reply(Duration::from_millis(800))
            .await
            .unwrap()
            .is_none()
    );
    assert!(message_ids.try_recv().is_err(), "published once only");

    // The client still works after a late reply.
    let client = client.with_timeout(Duration::from_secs(5));
    let reply = client.call_raw(b"{}", Some("m")).await.unwrap();
    assert_eq!(reply.json::<serde_json::Value>().unwrap()["result"]["n"], 1);
}

#[tokio::test]
async fn replies_to_commands_the_caller_published_are_kept_until_taken() {
    let connection = connection().await;
    let (queue, _) = stand_in(&connection, |_| 1, Duration::ZERO).await;
    let client = AmqpClient::with_connection(&connection, &queue)
        .await
        .unwrap();
    for n in 0..20 {
        let properties = BasicProperties::default()
            .with_reply_to(client.reply_queue().into())
            .with_correlation_id(format!("own-{n}").into());
        client.publish(b"{}", properties).await.unwrap();
    }
    // Wait for all of them to arrive before any is taken: the early ones must be kept.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last = client
        .reply_for("own-19", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(last.correlation_id(), Some("own-19"));
    let mut rest = Vec::new();
    while let Some(reply) = client.next_reply(Duration::from_secs(1)).await.unwrap() {
        rest.push(reply.correlation_id().unwrap().to_owned());
    }
    // The stand-in answers them concurrently: the order of arrival is its own.
    rest.sort_by_key(|id| id[4..].parse::<u32>().unwrap());
    let expected: Vec<String> = (0..19).map(|n| format!("own-{n}")).collect();
    assert_eq!(rest, expected);
}
