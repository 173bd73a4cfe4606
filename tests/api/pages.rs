//! Lists in pages and "sign out everywhere else" (contract §7.5), over REST and AMQP: pages
//! follow each other without gap or repeat in creation order, a cursor is bound to its user,
//! `limit` is 1–1000; `except` keeps one live session of the user (no event for it), refuses a
//! session that is not one (`not_found`, nothing closed), and works across the steps of a large
//! deletion.

use std::time::Duration;

use serde_json::{json, Value};
use session_manager::{
    domain::{SessionId, UserId},
    store::{Bucket, DELETE_STEP},
};

use crate::helpers::{assert_valid, session_ids, spawn_app, TestApp};

/// A page over REST: the status and the body.
async fn page(app: &TestApp, query: &str) -> (u16, Value) {
    app.rest(reqwest::Method::GET, &format!("/a01/session?{query}"))
        .await
}

/// Creates `count` sessions of `user_id` (devices `d0`, `d1`, …) one after the other and returns
/// their ids in creation order (`TestApp::create_sessions` is concurrent: no order).
async fn sessions_in_order(app: &TestApp, user_id: &str, count: usize) -> Vec<String> {
    let mut created = Vec::with_capacity(count);
    for n in 0..count {
        let body = json!({"user_id": user_id, "device_id": format!("d{n}")});
        created.push(app.create_session(body).await);
    }
    created
}

/// Every session of `user_id`, page by page of `limit`; the number of pages.
async fn all_pages(app: &TestApp, user_id: &str, limit: u32) -> (Vec<String>, usize) {
    let (mut ids, mut pages, mut after) = (Vec::new(), 0, None::<String>);
    loop {
        let query = match &after {
            Some(cursor) => format!("user_id={user_id}&limit={limit}&after={cursor}"),
            None => format!("user_id={user_id}&limit={limit}"),
        };
        let (status, body) = page(app, &query).await;
        assert_eq!(status, 200, "{body}");
        assert_valid("result.SessionList.json", &body);
        let listed = session_ids(&body);
        assert!(listed.len() <= limit as usize);
        ids.extend(listed);
        pages += 1;
        match &body["next"] {
            Value::String(cursor) => after = Some(cursor.clone()),
            Value::Null => return (ids, pages),
            other => panic!("next: {other}"),
        }
    }
}

#[tokio::test]
async fn pages_follow_each_other_in_creation_order() {
    let app = spawn_app().await;
    let created = sessions_in_order(&app, "alice", 25).await;
    let (ids, pages) = all_pages(&app, "alice", 10).await;
    assert_eq!((ids.clone(), pages), (created.clone(), 3));
    // A limit that divides the count: the last full page says no more follow.
    let (ids, pages) = all_pages(&app, "alice", 25).await;
    assert_eq!((ids, pages), (created.clone(), 1));
    let (ids, _) = all_pages(&app, "alice", 1).await;
    assert_eq!(ids, created);
    // Without limit: everything, and no next.
    let whole = app.list("alice").await;
    assert_eq!(
        (session_ids(&whole), whole["next"].clone()),
        (created.clone(), Value::Null)
    );

    // A session that ends between two pages is not listed; none is repeated or skipped.
    let (_, first) = page(&app, "user_id=alice&limit=10").await;
    let cursor = first["next"].as_str().unwrap().to_owned();
    let (status, _) = app
        .rest(
            reqwest::Method::DELETE,
            &format!("/a01/session/{}", created[12]),
        )
        .await;
    assert_eq!(status, 200);
    let (_, second) = page(&app, &format!("user_id=alice&limit=10&after={cursor}")).await;
    let mut expected: Vec<String> = created[10..21].to_vec();
    expected.remove(2);
    assert_eq!(session_ids(&second), expected);
}

#[tokio::test]
async fn a_cursor_is_bound_to_its_user_cannot_be_forged_and_limits_are_checked() {
    let app = spawn_app().await;
    for user in ["alice", "alice", "bob"] {
        app.create_session(json!({"user_id": user, "device_id": "d"}))
            .await;
    }
    let (_, first) = page(&app, "user_id=alice&limit=1").await;
    let cursor = first["next"].as_str().unwrap().to_owned();
    // A cursor forged for alice: the same bytes but for one of the position (the service signs
    // its cursors, so this one is not one it issued).
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let mut bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
    bytes[8] ^= 1;
    let forged = URL_SAFE_NO_PAD.encode(bytes);
    // And alice's cursor of another service (another key prefix, hence another signing key).
    let other = spawn_app().await;
    for _ in 0..2 {
        other
            .create_session(json!({"user_id": "alice", "device_id": "d"}))
            .await;
    }
    let (_, elsewhere) = page(&other, "user_id=alice&limit=1").await;
    let elsewhere = elsewhere["next"].as_str().unwrap().to_owned();
    for query in [
        format!("user_id=bob&after={cursor}"),
        "user_id=alice&after=not-a-cursor".to_owned(),
        format!("user_id=alice&after={cursor}x"),
        format!("user_id=alice&after={forged}"),
        format!("user_id=alice&after={elsewhere}"),
    ] {
        let (status, body) = page(&app, &query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("after: "));
    }
    for limit in ["0", "1001", "-1", "ten", ""] {
        let (status, body) = page(&app, &format!("user_id=alice&limit={limit}")).await;
        assert_eq!(status, 400, "limit={limit}: {body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("limit: "));
    }
    let (status, body) = page(&app, "user_id=alice&limit=1000").await;
    assert_eq!((status, session_ids(&body).len()), (200, 2));
}

#[tokio::test]
async fn list_sessions_pages_over_amqp() {
    let app = spawn_app().await;
    let created = sessions_in_order(&app, "carol", 5).await;
    let first = app
        .amqp
        .call(&json!({"type": "ListSessions", "user_id": "carol", "limit": 3}))
        .await;
    let result = &first.body["result"];
    assert_eq!(session_ids(result), created[..3]);
    let second = app
        .amqp
        .call(&json!({"type": "ListSessions", "user_id": "carol", "limit": 3, "after": result["next"]}))
        .await;
    assert_eq!(session_ids(&second.body["result"]), created[3..]);
    assert_eq!(second.body["result"]["next"], Value::Null);
    let refused = app
        .amqp
        .call(&json!({"type": "ListSessions", "user_id": "dave", "after": result["next"]}))
        .await;
    assert_eq!(refused.body["error"]["code"], "invalid_argument");
}

/// "Sign out everywhere else": every session but the kept one ends, each with its event, none
/// for the kept one.
#[tokio::test]
async fn except_keeps_one_session_and_closes_the_others_with_their_events() {
    let app = spawn_app().await;
    let mut events = app.amqp.subscribe(&app.settings.events_exchange).await;
    let created = sessions_in_order(&app, "erin", 4).await;
    let kept = created[1].clone();
    let (status, body) = app
        .rest(
            reqwest::Method::DELETE,
            &format!("/a01/session?user_id=erin&except={kept}"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_valid("result.UserSessionsDeleted.json", &body);
    let closed: Vec<String> = created.iter().filter(|id| **id != kept).cloned().collect();
    assert_eq!(body["session_ids"], json!(closed));
    assert_eq!(app.listed_ids("erin").await, vec![kept.clone()]);
    let mut announced: Vec<String> = events
        .take(3)
        .await
        .into_iter()
        .map(|event| {
            assert_eq!(event.body["data"]["reason"], "user_sessions_deleted");
            event.body["data"]["session_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    announced.sort();
    let mut expected = closed.clone();
    expected.sort();
    assert_eq!(announced, expected);
    events.assert_quiet(Duration::from_millis(500)).await;
}

/// A kept session that is not a live session of the user (another user's, one that ended, one
/// that never was): `not_found`, and nothing is closed.
#[tokio::test]
async fn except_of_a_session_that_is_not_the_users_closes_nothing() {
    let app = spawn_app().await;
    let mine = app
        .create_session(json!({"user_id": "frank", "device_id": "d"}))
        .await;
    let theirs = app
        .create_session(json!({"user_id": "grace", "device_id": "d"}))
        .await;
    let ended = app
        .create_session(json!({"user_id": "frank", "device_id": "e"}))
        .await;
    app.rest(reqwest::Method::DELETE, &format!("/a01/session/{ended}"))
        .await;
    for except in [
        theirs.clone(),
        ended,
        format!("0a{}", "Q".repeat(43)),
        "nope".into(),
    ] {
        assert_except_not_found(&app, "frank", &except).await;
    }
    assert_eq!(app.listed_ids("frank").await, vec![mine]);
    assert_eq!(app.listed_ids("grace").await, vec![theirs]);
}

/// A delete of `user_id`'s sessions but `except`, which is not a live session of the user: over
/// REST and AMQP, `not_found`.
async fn assert_except_not_found(app: &TestApp, user_id: &str, except: &str) {
    let (status, body) = app
        .rest(
            reqwest::Method::DELETE,
            &format!("/a01/session?user_id={user_id}&except={except}"),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found")),
        "except={except}"
    );
    let reply = app
        .amqp
        .call(&json!({"type": "DeleteUserSessions", "user_id": user_id, "except": except}))
        .await;
    assert_eq!(reply.body["error"]["code"], "not_found", "except={except}");
}

/// With more sessions than one step of a deletion, the kept one survives every step.
#[tokio::test]
async fn except_holds_across_the_steps_of_a_large_deletion() {
    let app = spawn_app().await;
    let count = 2 * DELETE_STEP + 1;
    let created: Vec<String> = app
        .create_sessions("heidi", count)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let kept = created[DELETE_STEP].clone();
    let reply = app
        .amqp
        .call_with_id(
            &json!({"type": "DeleteUserSessions", "user_id": "heidi", "except": kept}),
            "keep-one",
        )
        .await;
    let closed = reply.body["result"]["session_ids"].as_array().unwrap();
    assert_eq!(closed.len(), count - 1);
    assert!(!closed.contains(&json!(kept)));
    assert_eq!(app.listed_ids("heidi").await, vec![kept]);
}

/// Removes the hash of session `id` behind the service's back, leaving its index entry, as
/// Redis does when a session's TTL runs out while no instance runs.
async fn drop_hash(app: &TestApp, id: &str) {
    let key = app.keys().session(&SessionId::parse(id).unwrap());
    let _: () = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
}

/// Index entries of sessions that are gone, in the middle of a page and after the last live
/// session, neither cut a list short nor leave a cursor to an empty page.
#[tokio::test]
async fn entries_of_ended_sessions_neither_cut_a_list_short_nor_dangle() {
    let app = spawn_app().await;
    let created = sessions_in_order(&app, "ivan", 6).await;
    // d1 gone in the first page, d5 gone after the last live one.
    drop_hash(&app, &created[1]).await;
    drop_hash(&app, &created[5]).await;
    let (ids, pages) = all_pages(&app, "ivan", 2).await;
    assert_eq!(
        ids,
        [
            created[0].clone(),
            created[2].clone(),
            created[3].clone(),
            created[4].clone()
        ]
    );
    assert_eq!(
        pages, 2,
        "the second page, full, says no live session follows"
    );
    // And the same from a fresh index with a page size that ends on the gone entry.
    let (ids, _) = all_pages(&app, "ivan", 1).await;
    assert_eq!(
        ids,
        [
            created[0].clone(),
            created[2].clone(),
            created[3].clone(),
            created[4].clone()
        ]
    );
}

/// One call reads at most `2 × limit + 16` index entries: behind 40 entries of gone sessions in a
/// row, a page of one answers nobody, with a `next` from which the walk goes on, until the live
/// session after them is reached.
#[tokio::test]
async fn a_page_stops_at_its_bound_of_entries_and_the_next_goes_on() {
    let app = spawn_app().await;
    let created = sessions_in_order(&app, "judy", 42).await;
    for id in &created[1..41] {
        drop_hash(&app, id).await;
    }
    let (ids, pages) = all_pages(&app, "judy", 1).await;
    assert_eq!(ids, [created[0].clone(), created[41].clone()]);
    // Two sessions in pages of one, with 40 gone entries between them, read at most 18 a call
    // (the first page's peek for a next takes 17 of them): a page in between reached its bound
    // and answered nobody, with a next. An unbounded walk would take two pages.
    assert_eq!(pages, 3);
}

/// A live session of another user in the same bucket (so the check happens in the script, not
/// by the id's bucket) is not "the user's": `not_found`, nothing closed.
#[tokio::test]
async fn except_of_another_users_session_in_the_same_bucket_closes_nothing() {
    let app = spawn_app().await;
    let frank = UserId::parse("frank".into()).unwrap();
    let neighbour = (0..10_000)
        .map(|n| format!("neighbour-{n}"))
        .find(|name| {
            Bucket::of_user(&UserId::parse(name.clone()).unwrap()) == Bucket::of_user(&frank)
        })
        .unwrap();
    let mine = app
        .create_session(json!({"user_id": "frank", "device_id": "d"}))
        .await;
    let theirs = app
        .create_session(json!({"user_id": neighbour, "device_id": "d"}))
        .await;
    assert_except_not_found(&app, "frank", &theirs).await;
    let reply = app
        .amqp
        .call(&json!({"type": "DeleteUserSessions", "user_id": "frank", "except": null}))
        .await;
    assert_eq!(
        reply.body["error"]["code"], "invalid_argument",
        "a null except closes nothing"
    );
    assert_eq!(app.listed_ids("frank").await, vec![mine]);
    assert_eq!(app.listed_ids(&neighbour).await, vec![theirs]);
}
