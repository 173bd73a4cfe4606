//! The AMQP front end (contract §3): every command answered with the result REST gives for the
//! same state, error outcomes answered and never dead-lettered, every kind of message that
//! cannot be understood answered with `invalid_argument` and dead-lettered, commands without
//! `reply_to`, idempotency by `message_id`, and many commands at once.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use futures_util::future::join_all;
use lapin::BasicProperties;
use serde_json::{json, Value};

use session_manager::{
    config::{SecretString, Settings},
    domain::{Command, IdempotencyKey},
};
use session_manager_client::amqp::PrivateQueue;

use crate::helpers::{
    assert_valid, checked_reply, eventually, isolated_settings, moment, session_ids, spawn_app,
    spawn_app_with, Reply, TestApp, WAIT,
};
use session_manager_testkit::TcpProxy;

/// A reply queue owned by the test, so that a test chooses every property of a command and sees
/// every property of its reply (the harness's `call` picks the correlation id itself).
struct ReplyQueue {
    queue: PrivateQueue,
}

impl ReplyQueue {
    async fn open(app: &TestApp) -> Self {
        Self {
            queue: PrivateQueue::declare(&app.amqp.channel).await.unwrap(),
        }
    }

    /// Publishes `command` with `reply_to` set to this queue and the given correlation id.
    async fn send(&self, app: &TestApp, command: &Value, correlation_id: &str) {
        let properties = BasicProperties::default()
            .with_reply_to(self.queue.name().into())
            .with_correlation_id(correlation_id.into());
        app.amqp
            .publish(command.to_string().as_bytes(), properties)
            .await;
    }

    /// The next reply to arrive, checked for its content type and against `reply.json`.
    async fn next(&mut self) -> Reply {
        let reply = tokio::time::timeout(WAIT, self.queue.next())
            .await
            .expect("a reply arrives in time")
            .expect("the reply consumer is open");
        checked_reply(reply)
    }

    /// Sends `command` with a fresh correlation id, checks that the reply carries exactly that
    /// id, and returns the reply body.
    async fn call(&mut self, app: &TestApp, command: &Value) -> Value {
        let correlation_id = format!("corr-{}", uuid::Uuid::new_v4());
        self.send(app, command, &correlation_id).await;
        let reply = self.next().await;
        crate::api_docs::check_reply(command.to_string().as_bytes(), &reply.body);
        assert_eq!(
            reply
                .properties
                .correlation_id()
                .as_ref()
                .map(|id| id.as_str()),
            Some(correlation_id.as_str())
        );
        reply.body
    }
}

/// The `result` of an ok reply, checked against `schemas/<schema>`.
fn ok_result(body: &Value, schema: &str) -> Value {
    assert_eq!(body["status"], "ok", "reply {body}");
    assert_valid(schema, &body["result"]);
    body["result"].clone()
}

/// Asserts an error reply with `code` whose message mentions `mentions`.
fn assert_error(body: &Value, code: &str, mentions: &str) {
    assert_eq!(body["status"], "error", "reply {body}");
    assert_eq!(body["error"]["code"], code, "reply {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "message {message:?} should mention {mentions:?}"
    );
}

/// A well-formed session id that this service never issued.
fn unissued_session_id() -> String {
    format!("0a{}", "Q".repeat(43))
}

/// Seconds to live of a Redis key (-2: no such key, -1: no expiry).
async fn ttl(app: &TestApp, key: &str) -> i64 {
    let mut redis = app.redis.clone();
    redis::cmd("TTL")
        .arg(key)
        .query_async(&mut redis)
        .await
        .unwrap()
}

/// The idempotency record of `command` (an AMQP body) under `message_id`, as the store names it.
fn record_key(app: &TestApp, command: &Value, message_id: &str) -> String {
    let command = Command::parse(command.to_string().as_bytes()).unwrap();
    app.keys().record(
        &command,
        IdempotencyKey::from_message_id(message_id).as_ref(),
    )
}

/// Proves that nothing was dead-lettered so far: a message that must be dead-lettered is sent
/// last and must be the first (and only) one in the dead-letter queue; the count is then
/// watched for a while in case an earlier rejection were merely late.
async fn assert_nothing_else_dead_lettered(app: &TestApp) {
    let sentinel = format!("sentinel {} (not JSON)", uuid::Uuid::new_v4());
    let reply = app.amqp.call_raw(sentinel.as_bytes(), None).await;
    assert_error(&reply.body, "invalid_argument", "JSON");
    let dead = app.amqp.dead_letter().await;
    assert_eq!(
        String::from_utf8_lossy(&dead.data),
        sentinel,
        "a valid command was dead-lettered"
    );
    for _ in 0..5 {
        assert_eq!(app.amqp.dead_letter_count().await, 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- each command with an ok outcome -------------------------------------------------------

#[tokio::test]
async fn create_session_replies_with_the_id_of_the_session_rest_then_reads() {
    let app = spawn_app().await;
    let mut replies = ReplyQueue::open(&app).await;

    let body = replies
        .call(
            &app,
            &json!({
                "type": "CreateSession",
                "user_id": "amqp-creator",
                "device_id": "phone 1",
                "auth_code": "code-1",
                "access_token": "access-1",
                "refresh_token": "refresh-1",
                "exiration_time": 3600,
                "user_email": "creator@example.com",
            }),
        )
        .await;
    let result = ok_result(&body, "result.SessionCreated.json");
    let id = result["session_id"].as_str().unwrap().to_owned();
    // The same JSON as the REST 201 body: the id and nothing else.
    assert_eq!(result, json!({ "session_id": id }));

    let session = app.session(&id).await;
    assert_eq!(session["session_id"], id);
    assert_eq!(session["user_id"], "amqp-creator");
    assert_eq!(session["device_id"], "phone 1");
    assert_eq!(session["auth_code"], "code-1");
    assert_eq!(session["access_token"], "access-1");
    assert_eq!(session["refresh_token"], "refresh-1");
    assert_eq!(session["expiration_time"], 3600);
    assert_eq!(session["user_email"], "creator@example.com");
    let list = app.list("amqp-creator").await;
    assert_eq!(session_ids(&list), [id]);
    assert_eq!(list["sessions"][0]["device_id"], "phone 1");
}

#[tokio::test]
async fn get_session_result_equals_the_rest_body() {
    let app = spawn_app().await;
    let mut replies = ReplyQueue::open(&app).await;
    let id = app
        .create_session(json!({
            "user_id": "getter",
            "device_id": "laptop",
            "access_token": "token-g",
            "expiration_time": 0,
        }))
        .await;

    let body = replies
        .call(&app, &json!({"type": "GetSession", "session_id": id}))
        .await;
    let result = ok_result(&body, "result.Session.json");

    let rest = app.session(&id).await;
    assert_eq!(result, rest);
    assert_eq!(result["access_token"], "token-g");
    assert_eq!(result["expiration_time"], 0);
    assert_eq!(result["auth_code"], Value::Null);
    assert_eq!(result["user_email"], Value::Null);
}

#[tokio::test]
async fn list_sessions_result_equals_the_rest_body() {
    let app = spawn_app().await;
    let mut replies = ReplyQueue::open(&app).await;
    let mut created = Vec::new();
    for device in ["d1", "d2", "d2"] {
        created.push(
            app.create_session(json!({"user_id": "lister ü", "device_id": device}))
                .await,
        );
    }
    app.create_session(json!({"user_id": "someone else", "device_id": "d9"}))
        .await;

    let body = replies
        .call(
            &app,
            &json!({"type": "ListSessions", "user_id": "lister ü"}),
        )
        .await;
    let result = ok_result(&body, "result.SessionList.json");

    assert_eq!(result, app.list("lister ü").await);
    let entries: Vec<(&str, &str)> = result["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["session_id"].as_str().unwrap(),
                entry["device_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            (created[0].as_str(), "d1"),
            (created[1].as_str(), "d2"),
            (created[2].as_str(), "d2")
        ]
    );
    assert_eq!(
        (&result["user_id"], &result["next"]),
        (&json!("lister ü"), &Value::Null)
    );

    // No sessions is an empty list, not an error.
    let body = replies
        .call(&app, &json!({"type": "ListSessions", "user_id": "nobody"}))
        .await;
    let result = ok_result(&body, "result.SessionList.json");
    assert_eq!(
        result,
        json!({"user_id": "nobody", "sessions": [], "next": null})
    );
    assert_eq!(result, app.list("nobody").await);
}

#[tokio::test]
async fn update_session_result_equals_the_rest_body_after_the_change() {
    let app = spawn_app().await;
    let mut replies = ReplyQueue::open(&app).await;
    let id = app
        .create_session(json!({
            "user_id": "updater",
            "device_id": "tablet",
            "auth_code": "old-code",
            "access_token": "old-access",
        }))
        .await;
    let before = app.session(&id).await;

    let body = replies
        .call(
            &app,
            &json!({
                "type": "UpdateSession",
                "session_id": id,
                "user_id": "updater",
                "device_id": "tablet",
                "auth_code": null,
                "access_token": "new-access",
                "refresh_token": "new-refresh",
                "expiration_time": 60,
                "user_email": "u@example.com",
            }),
        )
        .await;
    let result = ok_result(&body, "result.Session.json");

    assert_eq!(result, app.session(&id).await);
    assert_eq!(result["session_id"], id);
    assert_eq!(result["user_id"], "updater");
    assert_eq!(result["device_id"], "tablet");
    assert_eq!(result["auth_code"], Value::Null);
    assert_eq!(result["access_token"], "new-access");
    assert_eq!(result["refresh_token"], "new-refresh");
    assert_eq!(result["expiration_time"], 60);
    assert_eq!(result["user_email"], "u@example.com");
    assert_eq!(result["created_at"], before["created_at"]);
    assert_eq!(result["expires_at"], before["expires_at"]);
    assert!(
        moment(&result["updated_at"]) >= moment(&before["updated_at"]),
        "updated_at {} before {}",
        result["updated_at"],
        before["updated_at"]
    );
}

#[tokio::test]
async fn delete_session_replies_with_the_id_and_the_session_is_gone() {
    let app = spawn_app().await;
    let mut replies = ReplyQueue::open(&app).await;
    let doomed = app
        .create_session(json!({"user_id": "deleter", "device_id": "a"}))
        .await;
    let kept = app
        .create_session(json!({"user_id": "deleter", "device_id": "b"}))
        .await;

    let body = replies
        .call(
            &app,
            &json!({"type": "DeleteSession", "session_id": doomed}),
        )
        .await;
    let result = ok_result(&body, "result.SessionDeleted.json");
    assert_eq!(result, json!({ "session_id": doomed }));

    let (status, error) = app
        .rest(reqwest::Method::GET, &format!("/a01/session/{doomed}"))
        .await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "not_found");
    assert_eq!(session_ids(&app.list("deleter").await), vec![kept]);
}

#[tokio::test]
async fn delete_user_sessions_replies_with_the_closed_ids_and_the_user_has_none_left() {
    let app = spawn_app().await;
    let mut replies = ReplyQueue::open(&app).await;
    let mut created = HashSet::new();
    for device in ["x", "y", "z"] {
        created.insert(
            app.create_session(json!({"user_id": "purged", "device_id": device}))
                .await,
        );
    }
    let other = app
        .create_session(json!({"user_id": "spared", "device_id": "x"}))
        .await;

    let body = replies
        .call(
            &app,
            &json!({"type": "DeleteUserSessions", "user_id": "purged"}),
        )
        .await;
    let result = ok_result(&body, "result.UserSessionsDeleted.json");
    assert_eq!(result["user_id"], "purged");
    assert_eq!(result.as_object().unwrap().len(), 2, "{result}");
    let closed: Vec<String> = result["session_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(closed.len(), 3);
    assert_eq!(closed.into_iter().collect::<HashSet<_>>(), created);

    assert_eq!(
        app.list("purged").await,
        json!({"user_id": "purged", "sessions": [], "next": null})
    );
    for id in &created {
        let (status, _) = app
            .rest(reqwest::Method::GET, &format!("/a01/session/{id}"))
            .await;
        assert_eq!(status, 404);
    }
    assert_eq!(session_ids(&app.list("spared").await), vec![other]);

    // Nothing left to close: an empty list, as REST answers for the same state.
    let body = replies
        .call(
            &app,
            &json!({"type": "DeleteUserSessions", "user_id": "purged"}),
        )
        .await;
    let result = ok_result(&body, "result.UserSessionsDeleted.json");
    assert_eq!(result, json!({"user_id": "purged", "session_ids": []}));
    assert_eq!(app.delete_user("purged").await, result);
}

// --- error outcomes ----------------------------------------------------------------------

#[tokio::test]
async fn error_outcomes_are_answered_and_not_dead_lettered() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "owner", "device_id": "dev", "auth_code": "c"}))
        .await;
    let gone = app
        .create_session(json!({"user_id": "owner", "device_id": "old"}))
        .await;
    let (status, _) = app
        .rest(reqwest::Method::DELETE, &format!("/a01/session/{gone}"))
        .await;
    assert_eq!(status, 200);
    let before = app.session(&id).await;

    for missing in [gone.clone(), unissued_session_id()] {
        let reply = app
            .amqp
            .call(&json!({"type": "GetSession", "session_id": missing}))
            .await;
        assert_error(&reply.body, "not_found", "");
        let reply = app
            .amqp
            .call(&json!({"type": "UpdateSession", "session_id": missing, "auth_code": "x"}))
            .await;
        assert_error(&reply.body, "not_found", "");
        let reply = app
            .amqp
            .call(&json!({"type": "DeleteSession", "session_id": missing}))
            .await;
        assert_error(&reply.body, "not_found", "");
    }

    let reply = app
        .amqp
        .call(&json!({"type": "UpdateSession", "session_id": id, "user_id": "thief", "auth_code": "x"}))
        .await;
    assert_error(&reply.body, "conflict", "user_id");
    let reply = app
        .amqp
        .call(&json!({"type": "UpdateSession", "session_id": id, "device_id": "other"}))
        .await;
    assert_error(&reply.body, "conflict", "device_id");
    // A conflict changes nothing.
    assert_eq!(app.session(&id).await, before);

    // Ids that cannot be ids of this service: not_found, like any other miss.
    let long = "A".repeat(300);
    for impossible in ["", "nope", "../../etc/passwd", "0a*", long.as_str()] {
        for command in [
            json!({"type": "GetSession", "session_id": impossible}),
            json!({"type": "UpdateSession", "session_id": impossible, "auth_code": "x"}),
            json!({"type": "DeleteSession", "session_id": impossible}),
        ] {
            let reply = app.amqp.call(&command).await;
            assert_error(&reply.body, "not_found", "");
        }
    }

    assert_nothing_else_dead_lettered(&app).await;
    assert_eq!(app.session(&id).await, before);
}

// --- messages that cannot be understood ---------------------------------------------------

#[tokio::test]
async fn messages_that_cannot_be_understood_get_invalid_argument_and_are_dead_lettered() {
    let app = spawn_app().await;
    let existing = app
        .create_session(json!({"user_id": "victim", "device_id": "d"}))
        .await;
    let before = app.session(&existing).await;
    let json_case = |value: Value| value.to_string().into_bytes();
    // (body, what the error message must name)
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"type\": \"CreateSession\", ".to_vec(), "JSON"),
        (b"\xff\xfe not even UTF-8".to_vec(), "JSON"),
        (b"".to_vec(), "JSON"),
        (
            json_case(json!([{"type": "ListSessions", "user_id": "u"}])),
            "object",
        ),
        (json_case(json!("CreateSession")), "object"),
        (json_case(json!(null)), "object"),
        (json_case(json!({"user_id": "victim"})), "type"),
        (
            json_case(json!({"type": "FrobnicateSession", "user_id": "victim"})),
            "type",
        ),
        (
            json_case(json!({"type": "createsession", "user_id": "u", "device_id": "d"})),
            "type",
        ),
        (json_case(json!({"type": 7, "user_id": "victim"})), "type"),
        (
            json_case(json!({"type": "CreateSession", "user_id": "new-user"})),
            "device_id",
        ),
        (json_case(json!({"type": "GetSession"})), "session_id"),
        // A repeated member name (contract §7.7), whichever value would have won.
        (
            br#"{"type": "CreateSession", "user_id": "new-user", "device_id": "d", "user_id": "victim"}"#.to_vec(),
            "user_id",
        ),
        (
            br#"{"type": "DeleteUserSessions", "type": "DeleteUserSessions", "user_id": "victim"}"#.to_vec(),
            "type",
        ),
        (json_case(json!({"type": "DeleteUserSessions"})), "user_id"),
        (
            json_case(
                json!({"type": "CreateSession", "user_id": "new-user", "device_id": "d", "colour": "blue"}),
            ),
            "colour",
        ),
        (
            json_case(json!({"type": "DeleteUserSessions", "user_id": "victim", "colour": "blue"})),
            "colour",
        ),
        (
            json_case(json!({"type": "DeleteSession", "session_id": existing, "colour": "blue"})),
            "colour",
        ),
        // An unknown field is reported even when the id could never exist.
        (
            json_case(json!({"type": "GetSession", "session_id": "nope", "colour": "blue"})),
            "colour",
        ),
        (
            json_case(json!({"type": "CreateSession", "user_id": "new-user", "device_id": 5})),
            "device_id",
        ),
        (
            json_case(json!({"type": "ListSessions", "user_id": ["victim"]})),
            "user_id",
        ),
        (
            json_case(
                json!({"type": "UpdateSession", "session_id": existing, "expiration_time": "soon"}),
            ),
            "expiration_time",
        ),
        (
            json_case(
                json!({"type": "UpdateSession", "session_id": existing, "expiration_time": -1}),
            ),
            "expiration_time",
        ),
        (
            json_case(json!({"type": "UpdateSession", "session_id": existing})),
            "field",
        ),
        // Rules of §1.
        (
            json_case(
                json!({"type": "CreateSession", "user_id": "a".repeat(257), "device_id": "d"}),
            ),
            "user_id",
        ),
        (
            json_case(
                json!({"type": "CreateSession", "user_id": "new-user", "device_id": "d\u{7}"}),
            ),
            "device_id",
        ),
        (
            json_case(
                json!({"type": "CreateSession", "user_id": "new-user", "device_id": "d", "user_email": "no-at-sign"}),
            ),
            "user_email",
        ),
        (
            json_case(
                json!({"type": "CreateSession", "user_id": "new-user", "device_id": "d", "auth_code": "c".repeat(16 * 1024 + 1)}),
            ),
            "auth_code",
        ),
        (
            json_case(
                json!({"type": "UpdateSession", "session_id": existing, "access_token": "t".repeat(16 * 1024 + 1)}),
            ),
            "access_token",
        ),
    ];

    for (body, mentions) in &cases {
        let shown = String::from_utf8_lossy(body);
        let shown = &shown[..shown.len().min(120)];
        let reply: Reply = app.amqp.call_raw(body, None).await;
        assert_eq!(
            reply.body["error"]["code"], "invalid_argument",
            "{shown}: {}",
            reply.body
        );
        assert_error(&reply.body, "invalid_argument", mentions);

        let dead = app.amqp.dead_letter().await;
        // The copy in the dead-letter queue is the command with its secret values redacted.
        match serde_json::from_slice::<Value>(body) {
            Ok(mut command) => {
                for name in ["auth_code", "access_token", "refresh_token", "user_email"] {
                    if let Some(value) = command.get_mut(name) {
                        *value = json!("[redacted]");
                    }
                }
                let copy: Value = serde_json::from_slice(&dead.data).unwrap();
                assert_eq!(copy, command, "dead letter of {shown}");
            }
            Err(_) => assert_eq!(&dead.data, body, "dead letter of {shown}"),
        }
        assert_eq!(
            dead_letter_reason(&dead).as_deref(),
            Some("invalid_argument"),
            "{shown}"
        );
        assert_eq!(
            dead.properties.correlation_id(),
            reply.properties.correlation_id(),
            "the dead letter is the original message of {shown}"
        );
    }
    assert_eq!(app.amqp.dead_letter_count().await, 0);

    // None of them changed anything.
    assert_eq!(app.session(&existing).await, before);
    assert_eq!(
        app.list("new-user").await,
        json!({"user_id": "new-user", "sessions": [], "next": null})
    );
    assert_eq!(session_ids(&app.list("victim").await), vec![existing]);
}

#[tokio::test]
async fn an_invalid_message_without_reply_to_is_dead_lettered_without_a_reply() {
    let app = spawn_app().await;
    for body in [
        b"definitely not JSON".to_vec(),
        json!({"type": "CreateSession", "user_id": "quiet", "device_id": "d", "extra": true})
            .to_string()
            .into_bytes(),
    ] {
        app.amqp
            .publish(
                &body,
                BasicProperties::default().with_correlation_id("no-reply-wanted".into()),
            )
            .await;
        let dead = app.amqp.dead_letter().await;
        assert_eq!(dead.data, body);
    }
    app.amqp.assert_no_reply(Duration::from_millis(500)).await;
    assert_eq!(app.amqp.dead_letter_count().await, 0);
    assert_eq!(
        app.list("quiet").await,
        json!({"user_id": "quiet", "sessions": [], "next": null})
    );
}

// --- commands without reply_to ------------------------------------------------------------

/// Polls the user's REST session list until it has `count` sessions, failing after [`WAIT`].
async fn wait_for_session_count(app: &TestApp, user_id: &str, count: usize) -> Vec<String> {
    eventually(async || {
        let ids = app.listed_ids(user_id).await;
        if ids.len() == count {
            Ok(ids)
        } else {
            Err(format!("{user_id} has {} sessions, not {count}", ids.len()))
        }
    })
    .await
}

/// Polls a session over REST until `check` holds for its status and body.
async fn wait_for_session(app: &TestApp, session_id: &str, check: impl Fn(u16, &Value) -> bool) {
    let path = format!("/a01/session/{session_id}");
    eventually(async || {
        let (status, body) = app.rest(reqwest::Method::GET, &path).await;
        if check(status, &body) {
            Ok(())
        } else {
            Err(format!("session still {status}: {body}"))
        }
    })
    .await
}

#[tokio::test]
async fn a_command_without_reply_to_is_applied_without_a_reply() {
    let app = spawn_app().await;
    let create = json!({"type": "CreateSession", "user_id": "fire-and-forget", "device_id": "d"});
    app.amqp
        .publish(create.to_string().as_bytes(), BasicProperties::default())
        .await;
    let created = wait_for_session_count(&app, "fire-and-forget", 1).await;
    let id = created[0].clone();
    assert_eq!(app.session(&id).await["device_id"], "d");

    let update = json!({"type": "UpdateSession", "session_id": id, "access_token": "set-quietly"});
    app.amqp
        .publish(update.to_string().as_bytes(), BasicProperties::default())
        .await;
    wait_for_session(&app, &id, |status, body| {
        status == 200 && body["access_token"] == "set-quietly"
    })
    .await;

    let delete = json!({"type": "DeleteSession", "session_id": id});
    app.amqp
        .publish(
            delete.to_string().as_bytes(),
            BasicProperties::default().with_correlation_id("c-delete".into()),
        )
        .await;
    wait_for_session(&app, &id, |status, _| status == 404).await;

    app.amqp.assert_no_reply(Duration::from_millis(500)).await;
    assert_eq!(app.amqp.dead_letter_count().await, 0);
    assert_eq!(
        wait_for_session_count(&app, "fire-and-forget", 0)
            .await
            .len(),
        0
    );
}

// --- idempotency --------------------------------------------------------------------------

#[tokio::test]
async fn create_session_repeated_with_the_same_message_id_is_applied_once() {
    let app = spawn_app().await;
    let command = json!({"type": "CreateSession", "user_id": "once", "device_id": "d"});
    let message_id = format!("create-{}", uuid::Uuid::new_v4());

    let first = app.amqp.call_with_id(&command, &message_id).await;
    let first = ok_result(&first.body, "result.SessionCreated.json");
    let second = app.amqp.call_with_id(&command, &message_id).await;
    let second = ok_result(&second.body, "result.SessionCreated.json");
    assert_eq!(first, second);
    let id = first["session_id"].as_str().unwrap().to_owned();
    assert_eq!(session_ids(&app.list("once").await), vec![id.clone()]);

    let record_ttl = ttl(&app, &record_key(&app, &command, &message_id)).await;
    assert!(
        (86_000..=86_400).contains(&record_ttl),
        "the record is kept about 24 h, TTL {record_ttl}"
    );

    // Another message id is another command.
    let third = app
        .amqp
        .call_with_id(&command, &format!("create-{}", uuid::Uuid::new_v4()))
        .await;
    let third = ok_result(&third.body, "result.SessionCreated.json");
    assert_ne!(third, first);
    assert_eq!(
        session_ids(&app.list("once").await),
        vec![id, third["session_id"].as_str().unwrap().to_owned()]
    );
}

#[tokio::test]
async fn delete_session_repeated_with_the_same_message_id_repeats_its_outcome() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "twice", "device_id": "d"}))
        .await;
    let command = json!({"type": "DeleteSession", "session_id": id});
    let message_id = format!("delete-{}", uuid::Uuid::new_v4());

    let first = app.amqp.call_with_id(&command, &message_id).await;
    assert_eq!(
        ok_result(&first.body, "result.SessionDeleted.json"),
        json!({ "session_id": id })
    );
    let second = app.amqp.call_with_id(&command, &message_id).await;
    assert_eq!(second.body, first.body);

    let record_ttl = ttl(&app, &record_key(&app, &command, &message_id)).await;
    assert!(
        (86_000..=86_400).contains(&record_ttl),
        "the record is kept about 24 h, TTL {record_ttl}"
    );

    let third = app
        .amqp
        .call_with_id(&command, &format!("delete-{}", uuid::Uuid::new_v4()))
        .await;
    assert_error(&third.body, "not_found", "");
    assert_nothing_else_dead_lettered(&app).await;
}

/// Reads are not recorded (contract §7.4): a GetSession or ListSessions repeated with its
/// `message_id` answers the state of now, and no record is written. With idle expiry a read runs
/// the script (it moves the deadline), without it a plain `HMGET`: both are checked.
#[tokio::test]
async fn reads_repeated_with_the_same_message_id_answer_the_current_state() {
    for idle in [None, Some(Duration::from_secs(600))] {
        let mut settings = isolated_settings();
        settings.idle_timeout = idle;
        let app = spawn_app_with(settings).await;
        let id = app
            .create_session(json!({"user_id": "reader", "device_id": "d", "access_token": "one"}))
            .await;
        let get = json!({"type": "GetSession", "session_id": id});
        let list = json!({"type": "ListSessions", "user_id": "reader"});
        let (get_id, list_id) = ("get-again".to_owned(), "list-again".to_owned());

        let first = app.amqp.call_with_id(&get, &get_id).await;
        assert_eq!(
            ok_result(&first.body, "result.Session.json")["access_token"],
            "one"
        );
        let listed = app.amqp.call_with_id(&list, &list_id).await;
        assert_eq!(
            ok_result(&listed.body, "result.SessionList.json")["sessions"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        let (status, _) = app.patch(&id, &json!({"access_token": "two"})).await;
        assert_eq!(status, 200);
        app.create_session(json!({"user_id": "reader", "device_id": "e"}))
            .await;

        let again = app.amqp.call_with_id(&get, &get_id).await;
        assert_eq!(
            ok_result(&again.body, "result.Session.json")["access_token"],
            "two",
            "idle {idle:?}"
        );
        let relisted = app.amqp.call_with_id(&list, &list_id).await;
        assert_eq!(
            ok_result(&relisted.body, "result.SessionList.json")["sessions"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        for (command, message_id) in [(&get, &get_id), (&list, &list_id)] {
            assert_eq!(
                ttl(&app, &record_key(&app, command, message_id)).await,
                -2,
                "no record of {command}"
            );
        }
    }
}

// --- concurrency --------------------------------------------------------------------------

#[tokio::test]
async fn two_hundred_concurrent_creates_for_one_user_make_two_hundred_sessions() {
    const COUNT: usize = 200;
    let app = spawn_app().await;
    let mut replies = ReplyQueue::open(&app).await;
    let user = "crowd";
    let commands: Vec<(String, Value)> = (0..COUNT)
        .map(|i| {
            (
                format!("create-{i}"),
                json!({"type": "CreateSession", "user_id": user, "device_id": format!("device-{i}")}),
            )
        })
        .collect();

    join_all(
        commands
            .iter()
            .map(|(correlation_id, command)| replies.send(&app, command, correlation_id)),
    )
    .await;
    let mut created: HashMap<String, String> = HashMap::new(); // correlation id -> session id
    for _ in 0..COUNT {
        let reply = replies.next().await;
        let correlation_id = reply
            .properties
            .correlation_id()
            .as_ref()
            .expect("a correlation id")
            .to_string();
        let result = ok_result(&reply.body, "result.SessionCreated.json");
        let id = result["session_id"].as_str().unwrap().to_owned();
        assert!(
            created.insert(correlation_id.clone(), id).is_none(),
            "two replies for {correlation_id}"
        );
    }
    let expected: HashSet<&String> = commands.iter().map(|(c, _)| c).collect();
    assert_eq!(created.keys().collect::<HashSet<_>>(), expected);
    let distinct: HashSet<&String> = created.values().collect();
    assert_eq!(distinct.len(), COUNT);

    // Every session is listed once, with the device of the command that created it.
    let body = replies
        .call(&app, &json!({"type": "ListSessions", "user_id": user}))
        .await;
    let list = ok_result(&body, "result.SessionList.json");
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), COUNT);
    let listed: HashMap<String, String> = sessions
        .iter()
        .map(|s| {
            (
                s["session_id"].as_str().unwrap().to_owned(),
                s["device_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: HashMap<String, String> = created
        .iter()
        .map(|(correlation_id, id)| {
            let i = correlation_id.trim_start_matches("create-");
            (id.clone(), format!("device-{i}"))
        })
        .collect();
    assert_eq!(listed, want);
    assert_eq!(list, app.list(user).await);
}

/// With the prefetch window above 1, the worker applies deliveries side by side: while Redis's
/// answers are held back by a proxy, every one of ten commands reaches Redis. A worker taking one
/// delivery at a time would send one and wait.
#[tokio::test]
async fn the_worker_applies_commands_concurrently() {
    let proxy = TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let settings = Settings {
        redis_url: SecretString::new(format!("redis://127.0.0.1:{}/", proxy.port)),
        prefetch: 16,
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let id = app
        .create_session(json!({"user_id": "u", "device_id": "d"}))
        .await;
    proxy.hold_answers(true);
    // Each command carries a token of its own, so that what reached Redis is told apart from
    // the relay's ticks on the same connection.
    let token = |n: usize| format!("token-{n}-{id}");
    let mut correlation_ids = Vec::new();
    for n in 0..10 {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let properties = BasicProperties::default()
            .with_reply_to(app.amqp.reply_queue().into())
            .with_correlation_id(correlation_id.as_str().into());
        let command = json!({"type": "UpdateSession", "session_id": id, "access_token": token(n)});
        app.amqp
            .publish(command.to_string().as_bytes(), properties)
            .await;
        correlation_ids.push(correlation_id);
    }
    let in_flight = || {
        (0..10)
            .filter(|n| proxy.count_sent(token(*n).as_bytes()) > 0)
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while in_flight() < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reached_redis = in_flight();
    proxy.hold_answers(false);
    assert_eq!(
        reached_redis, 10,
        "commands sent to Redis while answers were held"
    );
    for correlation_id in correlation_ids {
        let reply = app.amqp.reply_for(&correlation_id).await;
        assert_eq!(reply.body["status"], "ok");
    }
}

/// `/metrics` counts AMQP commands by type and outcome, their latency, and published events.
#[tokio::test]
async fn metrics_count_commands_and_events() {
    let app = spawn_app().await;
    let created = app
        .amqp
        .call(&json!({"type": "CreateSession", "user_id": "m", "device_id": "d"}))
        .await;
    let id = created.body["result"]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;
    app.amqp
        .call(&json!({"type": "DeleteSession", "session_id": id}))
        .await;
    app.amqp
        .call(&json!({"type": "DeleteSession", "session_id": id}))
        .await;
    app.amqp.call_raw(b"not json", None).await;
    events.next().await;
    // The reply of a command goes out before its acknowledgement and metrics: poll.
    let expected = [
        r#"session_manager_amqp_commands_total{command="CreateSession",outcome="ok"} 1"#,
        r#"session_manager_amqp_commands_total{command="DeleteSession",outcome="ok"} 1"#,
        r#"session_manager_amqp_commands_total{command="DeleteSession",outcome="not_found"} 1"#,
        r#"session_manager_amqp_commands_total{command="invalid",outcome="dead_lettered"} 1"#,
        r#"session_manager_amqp_command_duration_seconds_count{command="DeleteSession"} 2"#,
        "session_manager_events_published_total 1",
    ];
    eventually(async || {
        let text = app
            .http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|line| !text.lines().any(|l| l == *line))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing {missing:?} in:\n{text}"))
        }
    })
    .await;
}

/// A message id reused for the same kind of command on another session is another command: it
/// never answers with (or applies to) the first session.
#[tokio::test]
async fn a_message_id_reused_for_another_session_is_another_command() {
    let app = spawn_app().await;
    let first = app
        .create_session(json!({"user_id": "reuse", "device_id": "a", "access_token": "first"}))
        .await;
    let second = app
        .create_session(json!({"user_id": "reuse", "device_id": "b", "access_token": "second"}))
        .await;
    let message_id = format!("reused-{}", uuid::Uuid::new_v4());
    let one = app
        .amqp
        .call_with_id(
            &json!({"type": "GetSession", "session_id": first}),
            &message_id,
        )
        .await;
    let other = app
        .amqp
        .call_with_id(
            &json!({"type": "GetSession", "session_id": second}),
            &message_id,
        )
        .await;
    assert_eq!(one.body["result"]["access_token"], "first");
    assert_eq!(other.body["result"]["access_token"], "second");
    let deleted = app
        .amqp
        .call_with_id(
            &json!({"type": "DeleteSession", "session_id": second}),
            &message_id,
        )
        .await;
    assert_eq!(deleted.body["status"], "ok");
    let gone = app
        .amqp
        .call(&json!({"type": "GetSession", "session_id": second}))
        .await;
    assert_eq!(gone.body["error"]["code"], "not_found");
}

/// A try whose answer comes back too late (held in the proxy past the response timeout) may well
/// have been applied: the worker's retry of that delivery answers what it did instead of applying
/// it again, also for a command without `message_id`.
#[tokio::test]
async fn a_retry_after_a_lost_answer_does_not_apply_the_command_again() {
    let proxy = TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let settings = Settings {
        redis_url: SecretString::new(format!("redis://127.0.0.1:{}/", proxy.port)),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let user = format!("retried-{}", uuid::Uuid::new_v4().simple());
    // The connection to Redis is made at the first request: made now, so that its handshake is
    // not among the held answers (the create would then wait for it and never be sent).
    assert!(app.listed_ids(&user).await.is_empty());
    proxy.hold_answers(true);
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let properties = BasicProperties::default()
        .with_reply_to(app.amqp.reply_queue().into())
        .with_correlation_id(correlation_id.as_str().into());
    let command = json!({"type": "CreateSession", "user_id": user, "device_id": "d"});
    app.amqp
        .publish(command.to_string().as_bytes(), properties)
        .await;
    eventually(async || match proxy.count_sent(user.as_bytes()) {
        0 => Err("the create has not reached Redis".to_owned()),
        _ => Ok(()),
    })
    .await;
    // Past the response timeout (3 s): the try counts as failed and is retried, held as well.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        proxy.count_sent(user.as_bytes()) >= 2,
        "the worker retried the create"
    );
    proxy.hold_answers(false);
    let reply = app.amqp.reply_for(&correlation_id).await;
    assert_eq!(reply.body["status"], "ok", "{}", reply.body);
    let created = reply.body["result"]["session_id"].as_str().unwrap();
    assert_eq!(app.listed_ids(&user).await, vec![created.to_owned()]);
}

/// The `x-dead-letter-reason` header of a dead letter that the service wrote.
pub fn dead_letter_reason(dead: &lapin::message::Delivery) -> Option<String> {
    let headers = dead.properties.headers().as_ref()?;
    match headers.inner().get("x-dead-letter-reason")? {
        lapin::types::AMQPValue::LongString(reason) => Some(reason.to_string()),
        _ => None,
    }
}
