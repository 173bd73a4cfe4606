//! `SessionClosed` events (contract §4) for the deletes of both front ends: one event per ended
//! session with the right data, none for anything that ends no session, and the same event id
//! when a repeated command publishes an event again.

use std::{collections::HashSet, time::Duration};

use serde_json::{json, Value};
use time::OffsetDateTime;

use session_manager::{
    domain::{Caller, Command, IdempotencyKey, Outcome, UserId},
    store::{Bucket, Idempotency, Keys, DELETE_STEP},
};

use crate::helpers::{assert_valid, moment, spawn_app, Event, StoreAlone, TestApp};

const QUIET: Duration = Duration::from_millis(500);

/// The window in which something done now happens (the clocks of Redis and of the test are
/// the same machine's; a little slack for rounding).
struct Window(OffsetDateTime);

impl Window {
    fn open() -> Self {
        Self(OffsetDateTime::now_utc() - Duration::from_secs(2))
    }

    fn assert_contains(&self, moment: OffsetDateTime) {
        let end = OffsetDateTime::now_utc() + Duration::from_secs(2);
        assert!(
            self.0 <= moment && moment <= end,
            "{moment} is not between {} and {end}",
            self.0
        );
    }
}

/// Checks everything the contract says about one `SessionClosed` (the harness has already
/// checked the schema and the message properties) and returns its id.
fn check_closed(
    event: &Event,
    window: &Window,
    session_id: &str,
    user_id: &str,
    device_id: &str,
    reason: &str,
) -> String {
    let body = &event.body;
    assert_eq!(event.routing_key, "session.closed");
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["source"], "/session-manager");
    assert_eq!(body["type"], "SessionClosed");
    assert_eq!(body["datacontenttype"], "application/json");
    assert_eq!(body["subject"], session_id);
    assert_eq!(body["data"]["session_id"], session_id);
    assert_eq!(body["data"]["user_id"], user_id);
    assert_eq!(body["data"]["device_id"], device_id);
    assert_eq!(body["data"]["reason"], reason);
    window.assert_contains(moment(&body["data"]["closed_at"]));
    window.assert_contains(moment(&body["time"]));
    let id = body["id"].as_str().expect("an event id").to_owned();
    assert_eq!(
        event.properties.message_id().as_ref().map(|m| m.as_str()),
        Some(id.as_str())
    );
    assert_eq!(
        event.properties.kind().as_ref().map(|k| k.as_str()),
        Some("SessionClosed")
    );
    id
}

fn id_set(ids: &Value) -> HashSet<String> {
    ids.as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

/// Creates three sessions of `user_id` (devices d1–d3) and one of another user.
async fn three_sessions_and_one_more(app: &TestApp, user_id: &str) -> Vec<(String, String)> {
    let mut created = Vec::new();
    for device in ["d1", "d2", "d3"] {
        let id = app
            .create_session(json!({"user_id": user_id, "device_id": device}))
            .await;
        created.push((id, device.to_owned()));
    }
    app.create_session(json!({"user_id": "bystander", "device_id": "d1"}))
        .await;
    created
}

/// Checks the events of a deletion of all of `user_id`'s sessions against what was created and
/// what the reply listed; returns the event ids.
fn check_user_sessions_closed(
    events: &[Event],
    window: &Window,
    user_id: &str,
    created: &[(String, String)],
    reply_ids: &Value,
) -> HashSet<String> {
    let mut event_ids = HashSet::new();
    let mut closed = HashSet::new();
    for event in events {
        let session_id = event.body["subject"].as_str().unwrap().to_owned();
        let device = created
            .iter()
            .find(|(id, _)| *id == session_id)
            .map(|(_, device)| device.clone())
            .unwrap_or_else(|| panic!("an event for a session not deleted: {}", event.body));
        let id = check_closed(
            event,
            window,
            &session_id,
            user_id,
            &device,
            "user_sessions_deleted",
        );
        event_ids.insert(id);
        closed.insert(session_id);
    }
    assert_eq!(event_ids.len(), created.len(), "event ids are unique");
    let created: HashSet<String> = created.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(closed, created);
    assert_eq!(closed, id_set(reply_ids));
    event_ids
}

#[tokio::test]
async fn rest_delete_of_a_session_publishes_one_session_closed() {
    let app = spawn_app().await;
    let first = app
        .create_session(json!({"user_id": "rest-user é", "device_id": "phone"}))
        .await;
    let second = app
        .create_session(json!({"user_id": "rest-user é", "device_id": "laptop"}))
        .await;
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;

    let window = Window::open();
    let (status, body) = app
        .rest(reqwest::Method::DELETE, &format!("/a01/session/{first}"))
        .await;
    assert_eq!((status, body), (200, json!({ "session_id": first })));
    let event = events.next().await;
    let first_id = check_closed(&event, &window, &first, "rest-user é", "phone", "deleted");
    events.assert_quiet(QUIET).await;

    let (status, _) = app
        .rest(reqwest::Method::DELETE, &format!("/a01/session/{second}"))
        .await;
    assert_eq!(status, 200);
    let event = events.next().await;
    let second_id = check_closed(&event, &window, &second, "rest-user é", "laptop", "deleted");
    assert_ne!(first_id, second_id, "event ids are unique per session");
    events.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn amqp_delete_session_publishes_one_session_closed() {
    let app = spawn_app().await;
    let first = app
        .create_session(json!({"user_id": "amqp-user", "device_id": "watch"}))
        .await;
    let second = app
        .create_session(json!({"user_id": "amqp-user", "device_id": "tv"}))
        .await;
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;

    let window = Window::open();
    let reply = app
        .amqp
        .call(&json!({"type": "DeleteSession", "session_id": first}))
        .await;
    assert_eq!(
        reply.body,
        json!({"status": "ok", "result": {"session_id": first}})
    );
    let event = events.next().await;
    let first_id = check_closed(&event, &window, &first, "amqp-user", "watch", "deleted");
    events.assert_quiet(QUIET).await;

    let reply = app
        .amqp
        .call(&json!({"type": "DeleteSession", "session_id": second}))
        .await;
    assert_eq!(reply.body["status"], "ok");
    let event = events.next().await;
    let second_id = check_closed(&event, &window, &second, "amqp-user", "tv", "deleted");
    assert_ne!(first_id, second_id, "event ids are unique per session");
    events.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn rest_delete_of_a_users_sessions_publishes_one_event_per_session() {
    let app = spawn_app().await;
    let user = "many sessions/ü?&=";
    let created = three_sessions_and_one_more(&app, user).await;
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;

    let window = Window::open();
    let reply = app.delete_user(user).await;
    assert_eq!(reply["user_id"], user);
    let received = events.take(3).await;
    check_user_sessions_closed(&received, &window, user, &created, &reply["session_ids"]);
    // Nothing for the other user's session.
    events.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn amqp_delete_user_sessions_publishes_one_event_per_session() {
    let app = spawn_app().await;
    let user = "amqp many";
    let created = three_sessions_and_one_more(&app, user).await;
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;

    let window = Window::open();
    let reply = app
        .amqp
        .call(&json!({"type": "DeleteUserSessions", "user_id": user}))
        .await;
    assert_eq!(reply.body["status"], "ok");
    let result = &reply.body["result"];
    assert_valid("result.UserSessionsDeleted.json", result);
    assert_eq!(result["user_id"], user);
    let received = events.take(3).await;
    check_user_sessions_closed(&received, &window, user, &created, &result["session_ids"]);
    events.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn a_delete_all_in_several_steps_publishes_one_event_per_session_and_repeats_its_reply() {
    let app = spawn_app().await;
    let user = "thousand devices";
    let created = app.create_sessions(user, 2 * DELETE_STEP + 1).await;
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;

    let window = Window::open();
    let command = json!({"type": "DeleteUserSessions", "user_id": user});
    let reply = app.amqp.call_with_id(&command, "delete-them-all").await;
    assert_eq!(reply.body["status"], "ok");
    let result = &reply.body["result"];
    let received = events.take(created.len()).await;
    check_user_sessions_closed(&received, &window, user, &created, &result["session_ids"]);
    events.assert_quiet(QUIET).await;

    // The same command again answers the same, from its record, and ends nothing more.
    let again = app.amqp.call_with_id(&command, "delete-them-all").await;
    assert_eq!(again.body, reply.body);
    events.assert_quiet(QUIET).await;
}

/// A DeleteUserSessions whose instance stopped between two steps, redelivered: it resumes from
/// the progress the first step left (its cutoff and the ids it ended), ends the sessions up to
/// the cutoff, keeps the later ones, and replies with every id. Run on the store alone: the
/// progress is written here as a first step leaves it.
#[tokio::test]
async fn a_delete_all_redelivered_between_steps_resumes_from_its_progress() {
    let mut alone = StoreAlone::open(Duration::from_secs(60), None, None).await;
    let [first, second, later] = [
        alone.create("a").await,
        alone.create("b").await,
        alone.create("c").await,
    ];
    let user = UserId::parse("u".into()).unwrap();
    let keys = Keys::new(&alone.settings.key_prefix);
    let scores: Vec<(String, String)> = redis::cmd("ZRANGE")
        .arg(keys.index(&user))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut alone.redis)
        .await
        .unwrap();
    // The first step took the cutoff when `later` did not exist yet, ended one session, and
    // its instance stopped.
    let ended_before = Bucket::of_user(&user).new_session_id();
    let command = Command::DeleteUserSessions(user.clone(), None);
    let message_id = IdempotencyKey::from_message_id("delete-u").unwrap();
    let progress = keys.progress(&command, Some(&message_id));
    let _: () = redis::cmd("RPUSH")
        .arg(&progress)
        .arg(&scores[1].1)
        .arg(ended_before.as_str())
        .query_async(&mut alone.redis)
        .await
        .unwrap();

    let store = alone.store.clone();
    let fingerprint = command.fingerprint(&Caller::anyone());
    let idempotency = Idempotency {
        key: &message_id,
        caller: None,
        fingerprint: &fingerprint,
    };
    let deleted = async || match store.apply(&command, Some(idempotency)).await {
        Ok(Outcome::UserSessionsDeleted { session_ids, .. }) => session_ids,
        other => panic!("{other:?}"),
    };
    let expected = vec![ended_before, first.clone(), second.clone()];
    assert_eq!(deleted().await, expected);
    assert_eq!(alone.listed().await, vec![later]);
    let reason = "user_sessions_deleted".to_owned();
    assert_eq!(
        alone.outbox().await,
        vec![
            (first.as_str().to_owned(), reason.clone()),
            (second.as_str().to_owned(), reason)
        ]
    );
    let left: bool = redis::cmd("EXISTS")
        .arg(&progress)
        .query_async(&mut alone.redis)
        .await
        .unwrap();
    assert!(!left, "the last step deletes the progress");
    // Repeated once more, it answers from its record.
    assert_eq!(deleted().await, expected);
    alone.clean_up().await;
}

#[tokio::test]
async fn nothing_that_ends_no_session_publishes_an_event() {
    let app = spawn_app().await;
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;

    // REST: create, get, list, update, and deletes that find nothing.
    let id = app
        .create_session(json!({"user_id": "calm", "device_id": "d"}))
        .await;
    app.session(&id).await;
    app.list("calm").await;
    assert_eq!(app.patch(&id, &json!({"access_token": "t"})).await.0, 200);
    let missing = format!("0a{}", "Z".repeat(43));
    let (status, _) = app
        .rest(reqwest::Method::DELETE, &format!("/a01/session/{missing}"))
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .rest(reqwest::Method::DELETE, "/a01/session/not-an-id")
        .await;
    assert_eq!(status, 404);
    let reply = app.delete_user("nobody").await;
    assert_eq!(reply, json!({"user_id": "nobody", "session_ids": []}));

    // AMQP: the same, plus a conflict.
    for command in [
        json!({"type": "CreateSession", "user_id": "calm", "device_id": "e"}),
        json!({"type": "GetSession", "session_id": id}),
        json!({"type": "ListSessions", "user_id": "calm"}),
        json!({"type": "UpdateSession", "session_id": id, "refresh_token": "r"}),
        json!({"type": "DeleteUserSessions", "user_id": "nobody"}),
    ] {
        let reply = app.amqp.call(&command).await;
        assert_eq!(reply.body["status"], "ok", "{command}: {}", reply.body);
    }
    for command in [
        json!({"type": "UpdateSession", "session_id": id, "user_id": "other"}),
        json!({"type": "DeleteSession", "session_id": missing}),
        json!({"type": "DeleteSession", "session_id": "not-an-id"}),
    ] {
        let reply = app.amqp.call(&command).await;
        assert_eq!(reply.body["status"], "error", "{command}: {}", reply.body);
    }
    events.assert_quiet(QUIET).await;

    // The subscription does receive events: the quiet above is not for want of a binding.
    let window = Window::open();
    let (status, _) = app
        .rest(reqwest::Method::DELETE, &format!("/a01/session/{id}"))
        .await;
    assert_eq!(status, 200);
    let event = events.next().await;
    check_closed(&event, &window, &id, "calm", "d", "deleted");
    let (status, _) = app
        .rest(reqwest::Method::DELETE, &format!("/a01/session/{id}"))
        .await;
    assert_eq!(status, 404, "a second delete finds nothing");
    events.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn a_repeated_delete_session_repeats_its_reply_and_publishes_one_event() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "repeat", "device_id": "d"}))
        .await;
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;
    let command = json!({"type": "DeleteSession", "session_id": id});
    let message_id = format!("delete-{}", uuid::Uuid::new_v4());

    let window = Window::open();
    let first_reply = app.amqp.call_with_id(&command, &message_id).await;
    assert_eq!(
        first_reply.body,
        json!({"status": "ok", "result": {"session_id": id}})
    );
    let first = events.next().await;
    check_closed(&first, &window, &id, "repeat", "d", "deleted");
    events.assert_quiet(QUIET).await;

    // Applied once: the repetition repeats the reply, and the event was written once.
    let second_reply = app.amqp.call_with_id(&command, &message_id).await;
    assert_eq!(second_reply.body, first_reply.body);
    events.assert_quiet(QUIET).await;

    // A new command finds nothing to delete and publishes nothing.
    let third = app
        .amqp
        .call_with_id(&command, &format!("delete-{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(third.body["error"]["code"], "not_found");
    events.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn a_repeated_delete_user_sessions_repeats_its_reply_and_publishes_each_event_once() {
    let app = spawn_app().await;
    let user = "repeat all";
    let created = three_sessions_and_one_more(&app, user).await;
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;
    let command = json!({"type": "DeleteUserSessions", "user_id": user});
    let message_id = format!("purge-{}", uuid::Uuid::new_v4());

    let window = Window::open();
    let first_reply = app.amqp.call_with_id(&command, &message_id).await;
    let ids = &first_reply.body["result"]["session_ids"];
    let first = events.take(3).await;
    let first_ids = check_user_sessions_closed(&first, &window, user, &created, ids);
    events.assert_quiet(QUIET).await;

    let second_reply = app.amqp.call_with_id(&command, &message_id).await;
    assert_eq!(second_reply.body, first_reply.body);
    events.assert_quiet(QUIET).await;
    assert_eq!(first_ids.len(), 3);

    // A new command closes nothing more.
    let third = app
        .amqp
        .call_with_id(&command, &format!("purge-{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(third.body["result"]["session_ids"], json!([]));
    events.assert_quiet(QUIET).await;
}
