//! Sessions that end by time or by the per-user limit: each ends at its moment with exactly one
//! `SessionClosed` (reason `expired` or `evicted`), also when no instance runs at that moment,
//! and leaves nothing behind. Prints the measured delay between a session's end and its event.

use std::time::Duration;

use serde_json::json;
use session_manager::{
    config::Settings,
    domain::{Command, UserId},
    store::{Bucket, Keys},
};
use time::OffsetDateTime;

use crate::helpers::{isolated_settings, moment, spawn_app_with, Event, StoreAlone};

/// Checks an `expired` event of `id` and returns how late it arrived after the session's end.
fn expired(event: &Event, id: &str, ends: OffsetDateTime) -> Duration {
    let arrived = OffsetDateTime::now_utc();
    assert_eq!(event.body["data"]["session_id"], id);
    assert_eq!(event.body["data"]["reason"], "expired");
    assert_eq!(moment(&event.body["data"]["closed_at"]), ends);
    (arrived - ends).try_into().unwrap_or_default()
}

#[tokio::test]
async fn a_session_ends_at_expires_at_with_one_expired_event() {
    let settings = Settings {
        session_lifetime: Duration::from_secs(2),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;
    let id = app
        .create_session(json!({"user_id": "u", "device_id": "d"}))
        .await;
    let (status, stored) = app
        .rest(reqwest::Method::GET, &format!("/a01/session/{id}"))
        .await;
    assert_eq!(status, 200);
    let ends = moment(&stored["expires_at"]);

    let event = events.next().await;
    let late = expired(&event, &id, ends);
    eprintln!(
        "absolute expiry: event {} ms after the session's end",
        late.as_millis()
    );
    assert!(OffsetDateTime::now_utc() >= ends);
    assert_eq!(
        app.rest(reqwest::Method::GET, &format!("/a01/session/{id}"))
            .await
            .0,
        404
    );
    assert!(app.listed_ids("u").await.is_empty());
    events.assert_quiet(Duration::from_millis(700)).await;
    assert_eq!(app.keys_left().await, Vec::<String>::new());
}

#[tokio::test]
async fn reading_or_updating_a_session_extends_its_idle_deadline() {
    let settings = Settings {
        session_lifetime: Duration::from_secs(60),
        idle_timeout: Some(Duration::from_secs(2)),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;
    let id = app
        .create_session(json!({"user_id": "u", "device_id": "d"}))
        .await;
    // Touched every second for four seconds, over REST (read and update) and AMQP (read): it
    // outlives its 2 s idle timeout twice over.
    for step in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match step % 3 {
            0 => assert_eq!(
                app.rest(reqwest::Method::GET, &format!("/a01/session/{id}"))
                    .await
                    .0,
                200
            ),
            1 => {
                let patch = json!({"access_token": format!("t{step}")});
                assert_eq!(app.patch(&id, &patch).await.0, 200);
            }
            _ => {
                let reply = app
                    .amqp
                    .call(&json!({"type": "GetSession", "session_id": id}))
                    .await;
                assert_eq!(reply.body["status"], "ok", "{}", reply.body);
            }
        }
    }
    events.assert_quiet(Duration::from_millis(100)).await;
    let last_touch = OffsetDateTime::now_utc();
    // Listing does not extend it.
    assert_eq!(app.listed_ids("u").await, vec![id.clone()]);

    let event = events.next().await;
    let ends = moment(&event.body["data"]["closed_at"]);
    let idle = ends - last_touch;
    assert!(
        idle > time::Duration::milliseconds(1500) && idle < time::Duration::milliseconds(2500),
        "ended {idle} after the last touch, expected about 2 s"
    );
    let late = expired(&event, &id, ends);
    eprintln!(
        "idle expiry: event {} ms after the session's end",
        late.as_millis()
    );
    assert_eq!(
        app.rest(reqwest::Method::GET, &format!("/a01/session/{id}"))
            .await
            .0,
        404
    );
    assert_eq!(app.keys_left().await, Vec::<String>::new());
}

#[tokio::test]
async fn creating_one_more_than_the_limit_evicts_the_oldest() {
    let settings = Settings {
        max_per_user: Some(2),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;
    let mut ids = Vec::new();
    for device in ["a", "b", "c", "d"] {
        ids.push(
            app.create_session(json!({"user_id": "u", "device_id": device}))
                .await,
        );
    }
    // Another user is not affected by u's limit.
    let other = app
        .create_session(json!({"user_id": "v", "device_id": "a"}))
        .await;
    for (evicted, device) in ids[..2].iter().zip(["a", "b"]) {
        let event = events.next().await;
        assert_eq!(event.body["data"]["session_id"], evicted.as_str());
        assert_eq!(event.body["data"]["device_id"], device);
        assert_eq!(event.body["data"]["reason"], "evicted");
        assert_eq!(
            app.rest(reqwest::Method::GET, &format!("/a01/session/{evicted}"))
                .await
                .0,
            404
        );
    }
    events.assert_quiet(Duration::from_millis(500)).await;
    assert_eq!(app.listed_ids("u").await, ids[2..].to_vec());
    assert_eq!(app.listed_ids("v").await, vec![other]);
}

#[tokio::test]
async fn sessions_that_end_while_no_instance_runs_get_their_events_once_one_starts() {
    let settings = Settings {
        session_lifetime: Duration::from_secs(1),
        ..isolated_settings()
    };
    let first = spawn_app_with(settings.clone()).await;
    let mut events = first.amqp.subscribe(&first.settings.events_exchange).await;
    let mut ends = Vec::new();
    for device in ["a", "b", "c"] {
        let id = first
            .create_session(json!({"user_id": "u", "device_id": device}))
            .await;
        let (_, stored) = first
            .rest(reqwest::Method::GET, &format!("/a01/session/{id}"))
            .await;
        ends.push((id, moment(&stored["expires_at"])));
    }
    first.stop_keeping_state().await;

    // No instance runs while the sessions end.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    events.assert_quiet(Duration::from_millis(10)).await;

    let second = spawn_app_with(settings).await;
    let started = OffsetDateTime::now_utc();
    let mut received = Vec::new();
    for _ in 0..3 {
        received.push(events.next().await);
    }
    let after_start = OffsetDateTime::now_utc() - started;
    eprintln!(
        "expired while down: all events {} ms after the next start",
        after_start.whole_milliseconds()
    );
    for (id, end) in &ends {
        let event = received
            .iter()
            .find(|e| e.body["data"]["session_id"] == id.as_str())
            .expect("an event for every session");
        expired(event, id, *end);
    }
    events.assert_quiet(Duration::from_millis(500)).await;
    assert!(second.listed_ids("u").await.is_empty());
    assert_eq!(second.keys_left().await, Vec::<String>::new());
}

/// A session already past its idle deadline, that no tick has ended yet, does not count toward
/// the limit: the create ends it as expired, and evicts no live session.
#[tokio::test]
async fn sessions_past_their_end_do_not_count_toward_the_limit() {
    let mut alone = StoreAlone::open(
        Duration::from_secs(60),
        Some(Duration::from_secs(1)),
        Some(2),
    )
    .await;
    let kept = alone.create("kept").await;
    let idle = alone.create("idle").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Read (and so kept alive) halfway; `idle` is not.
    alone.apply(Command::GetSession(kept.clone())).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let new = alone.create("new").await;

    assert_eq!(alone.listed().await, vec![kept, new]);
    // The outbox holds exactly one event: `idle`, expired.
    assert_eq!(
        alone.outbox().await,
        vec![(idle.as_str().to_owned(), "expired".to_owned())]
    );
    alone.clean_up().await;
}

/// A list leaves out, and ends as expired, the sessions past their end that no tick has ended
/// yet: past their absolute end without idle timeout (the index holds it), past their idle
/// deadline with one (the schedule holds it).
#[tokio::test]
async fn a_list_ends_the_sessions_past_their_end() {
    for idle in [None, Some(Duration::from_secs(2))] {
        let lifetime = match idle {
            None => Duration::from_secs(2),
            Some(_) => Duration::from_secs(60),
        };
        let mut alone = StoreAlone::open(lifetime, idle, None).await;
        let ending = alone.create("ending").await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let kept = alone.create("kept").await;
        assert_eq!(alone.listed().await, vec![ending.clone(), kept.clone()]);
        tokio::time::sleep(Duration::from_millis(1200)).await;

        assert_eq!(alone.listed().await, vec![kept], "idle timeout {idle:?}");
        assert_eq!(
            alone.outbox().await,
            vec![(ending.as_str().to_owned(), "expired".to_owned())]
        );
        alone.clean_up().await;
    }
}

/// A session whose hash is gone while its index and schedule entries stayed (its TTL ran out
/// while no instance ran): a list leaves it out and drops both entries, with no event.
#[tokio::test]
async fn a_list_drops_the_entries_of_a_session_whose_hash_is_gone() {
    let mut alone = StoreAlone::open(Duration::from_secs(60), None, None).await;
    let gone = alone.create("gone").await;
    let kept = alone.create("kept").await;
    let keys = Keys::new(&alone.settings.key_prefix);
    let _: () = redis::cmd("DEL")
        .arg(keys.session(&gone))
        .query_async(&mut alone.redis)
        .await
        .unwrap();

    assert_eq!(alone.listed().await, vec![kept.clone()]);
    let user = UserId::parse("u".into()).unwrap();
    for key in [keys.index(&user), keys.schedule(Bucket::of_session(&gone))] {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(&mut alone.redis)
            .await
            .unwrap();
        assert_eq!(members, vec![kept.as_str().to_owned()], "{key}");
    }
    assert!(alone.outbox().await.is_empty());
    alone.clean_up().await;
}
