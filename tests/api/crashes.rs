//! The real binary killed with SIGKILL at the worst moments and started again: no command is
//! lost or applied twice, and no `SessionClosed` is lost.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use lapin::BasicProperties;
use serde_json::{json, Value};

use crate::api_docs::Http;
use crate::helpers::{
    clean_up, every_session_id, isolated_settings, service_with_settings, AmqpClient, Reply,
};
use session_manager_testkit::{free_port, Service};

/// Every reply, by correlation id; a command answered twice must repeat its first outcome.
#[derive(Default)]
struct Answers(HashMap<String, Value>);

impl Answers {
    fn add(&mut self, reply: Reply) {
        let correlation = reply
            .properties
            .correlation_id()
            .as_ref()
            .expect("a correlation id")
            .to_string();
        assert_eq!(reply.body["status"], "ok", "{}", reply.body);
        let result = reply.body["result"].clone();
        if let Some(earlier) = self.0.insert(correlation.clone(), result.clone()) {
            assert_eq!(earlier, result, "{correlation} was answered differently");
        }
    }
}

#[tokio::test]
async fn sigkill_in_the_middle_of_thousands_of_creates_loses_and_repeats_nothing() {
    interrupt_thousands_of_creates(Service::kill).await;
}

#[tokio::test]
async fn sigterm_in_the_middle_of_thousands_of_creates_finishes_what_it_took() {
    interrupt_thousands_of_creates(|service| {
        let (status, _) = service.terminate();
        assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    })
    .await;
}

/// Publishes thousands of creates with message ids, stops the instance with `stop` after 200
/// answers, starts another, and checks that every command was answered (a repeated answer
/// repeating the first) and applied exactly once.
async fn interrupt_thousands_of_creates(stop: impl FnOnce(Service)) {
    const COMMANDS: usize = 3000;
    let settings = isolated_settings();
    let first = Service::start(&mut service_with_settings(&settings), free_port());
    let amqp = AmqpClient::connect(&settings).await;
    amqp.wait_for_consumer().await;

    for n in 0..COMMANDS {
        let command =
            json!({"type": "CreateSession", "user_id": "crash", "device_id": format!("d{n}")});
        let properties = BasicProperties::default()
            .with_reply_to(amqp.reply_queue().into())
            .with_correlation_id(format!("c{n}").into())
            .with_message_id(format!("m{n}").into());
        amqp.publish(command.to_string().as_bytes(), properties)
            .await;
    }
    let mut answers = Answers::default();
    while answers.0.len() < 200 {
        answers.add(
            amqp.next_reply(Duration::from_secs(10))
                .await
                .expect("replies"),
        );
    }
    stop(first);
    let answered_before = answers.0.len();
    assert!(
        answered_before < COMMANDS,
        "the kill came too late to test anything"
    );

    let second = Service::start(&mut service_with_settings(&settings), free_port());
    let deadline = Instant::now() + Duration::from_secs(60);
    while answers.0.len() < COMMANDS {
        assert!(Instant::now() < deadline, "not every command was answered");
        if let Some(reply) = amqp.next_reply(Duration::from_secs(5)).await {
            answers.add(reply);
        }
    }
    eprintln!("stopped after {answered_before} of {COMMANDS} answers; all answered after restart");

    let every = every_session_id(&second.url(""), "crash").await;
    let listed: HashSet<&str> = every.iter().map(String::as_str).collect();
    let answered: HashSet<&str> = answers
        .0
        .values()
        .map(|result| result["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), COMMANDS, "exactly one session per command");
    assert_eq!(listed, answered);
    assert_eq!(amqp.dead_letter_count().await, 0);
    let (status, _) = second.terminate();
    assert!(status.success());
    clean_up(&settings).await;
}

#[tokio::test]
async fn sigkill_right_after_a_mass_delete_loses_no_event() {
    const SESSIONS: usize = 300;
    let settings = isolated_settings();
    let first = Service::start(&mut service_with_settings(&settings), free_port());
    let amqp = AmqpClient::connect(&settings).await;
    amqp.wait_for_consumer().await;
    let mut events = amqp.subscribe(&settings.events_exchange).await;
    let http = Http::new();
    for n in 0..SESSIONS {
        let created = http
            .post(first.url("/a01/session"))
            .json(&json!({"user_id": "mass", "device_id": format!("d{n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    }
    let deleted: Value = http
        .delete(first.url("/a01/session?user_id=mass"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    first.kill();
    let closed: HashSet<String> = deleted["session_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(closed.len(), SESSIONS);

    let second = Service::start(&mut service_with_settings(&settings), free_port());
    let mut received: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < SESSIONS {
        assert!(
            Instant::now() < deadline,
            "only {} of {SESSIONS} events arrived",
            received.len()
        );
        let Some(event) = events.next_within(Duration::from_secs(5)).await else {
            continue;
        };
        let data = &event.body["data"];
        assert_eq!(data["reason"], "user_sessions_deleted");
        let session = data["session_id"].as_str().unwrap().to_owned();
        let id = event.body["id"].as_str().unwrap().to_owned();
        // A duplicate after the crash carries the same event id.
        if let Some(earlier) = received.insert(session, id.clone()) {
            assert_eq!(earlier, id);
        }
    }
    let sessions: HashSet<String> = received.into_keys().collect();
    assert_eq!(sessions, closed);
    let (status, _) = second.terminate();
    assert!(status.success());
    clean_up(&settings).await;
}
