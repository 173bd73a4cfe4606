//! What a device list needs (contract §7.6): `ip_address` (checked, normalised) and
//! `user_agent` at create, immutable after; `last_seen_at` set by create and update and by a
//! read at most once a minute; list entries that carry the device fields.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use session_manager::{domain::SessionId, store::field_code};

use crate::helpers::{isolated_settings, spawn_app, spawn_app_with, TestApp};

fn millis(text: &Value) -> i64 {
    let parsed = time::OffsetDateTime::parse(
        text.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    (parsed.unix_timestamp_nanos() / 1_000_000) as i64
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Writes `last_seen_at` of session `id` in Redis, as if it were last seen at `at`.
async fn set_seen(app: &TestApp, id: &str, at: i64) {
    let key = app.keys().session(&SessionId::parse(id).unwrap());
    let _: () = redis::cmd("HSET")
        .arg(key)
        .arg(field_code("last_seen_at").unwrap())
        .arg(at)
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
}

#[tokio::test]
async fn device_fields_are_checked_normalised_and_listed() {
    let app = spawn_app().await;
    let agent = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0";
    let mapped = app
        .create_session(json!({"user_id": "alice", "device_id": "laptop",
            "ip_address": "::ffff:192.0.2.7", "user_agent": agent}))
        .await;
    let v6 = app
        .create_session(json!({"user_id": "alice", "device_id": "phone",
            "ip_address": "2001:DB8:0:0::1"}))
        .await;
    let bare = app
        .create_session(json!({"user_id": "alice", "device_id": "tablet"}))
        .await;
    let session = app.session(&mapped).await;
    assert_eq!(
        (&session["ip_address"], &session["user_agent"]),
        (&json!("192.0.2.7"), &json!(agent))
    );
    assert_eq!(session["last_seen_at"], session["created_at"]);
    assert_eq!(app.session(&v6).await["ip_address"], "2001:db8::1");

    let list = app.list("alice").await;
    let entries = list["sessions"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["ip_address"], "192.0.2.7");
    assert_eq!(entries[0]["user_agent"], agent);
    assert_eq!(entries[0]["created_at"], session["created_at"]);
    assert_eq!(entries[0]["last_seen_at"], session["last_seen_at"]);
    assert_eq!(entries[1]["ip_address"], "2001:db8::1");
    assert_eq!(entries[2]["session_id"], bare.as_str());
    assert_eq!(
        (&entries[2]["ip_address"], &entries[2]["user_agent"]),
        (&Value::Null, &Value::Null)
    );

    for (body, field) in [
        (json!({"ip_address": "1.2.3"}), "ip_address"),
        (json!({"ip_address": "example.com"}), "ip_address"),
        (json!({"ip_address": 7}), "ip_address"),
        (json!({"user_agent": "a\u{7}b"}), "user_agent"),
        (json!({"user_agent": "x".repeat(513)}), "user_agent"),
        (json!({"user_agent": "é".repeat(300)}), "user_agent"),
        (json!({"user_agent": ""}), "user_agent"),
        (json!({"ip_address": " 192.0.2.1"}), "ip_address"),
    ] {
        let mut create = json!({"user_id": "bob", "device_id": "d"});
        create
            .as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let (status, answer) =
            crate::helpers::status_and_json(app.http.post(app.url("/a01/session")).json(&create))
                .await;
        assert_eq!(status, 400, "{create}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{answer}"
        );
    }
    // Set at create, never changed: like device_id, a PATCH may repeat the stored value (also in
    // another spelling of the same address), another value or one the session was created
    // without is a conflict, and null is refused.
    for (id, body, status) in [
        (
            &mapped,
            json!({"ip_address": "::ffff:192.0.2.7", "user_agent": agent, "auth_code": "c"}),
            200,
        ),
        (
            &mapped,
            json!({"ip_address": "192.0.2.8", "auth_code": "x"}),
            409,
        ),
        (
            &mapped,
            json!({"user_agent": "other", "auth_code": "x"}),
            409,
        ),
        (&bare, json!({"user_agent": agent, "auth_code": "x"}), 409),
        (&mapped, json!({"ip_address": null}), 400),
    ] {
        let (answered, answer) = app.patch(id, &body).await;
        assert_eq!(answered, status, "{body}: {answer}");
        if status != 200 {
            let field = body
                .as_object()
                .unwrap()
                .keys()
                .find(|k| k.as_str() != "auth_code")
                .unwrap();
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with(field.as_str()),
                "{answer}"
            );
        }
    }
    assert_eq!(app.session(&mapped).await["auth_code"], "c");
    assert_eq!(app.session(&mapped).await["ip_address"], "192.0.2.7");
    assert!(app.listed_ids("bob").await.is_empty());
}

/// A create and an update set `last_seen_at`; a read sets it only when the last mark is a
/// minute old, with and without idle expiry (the script path and the plain read).
#[tokio::test]
async fn last_seen_at_moves_with_use_and_with_reads_at_most_once_a_minute() {
    for idle in [None, Some(Duration::from_secs(3600))] {
        let mut settings = isolated_settings();
        settings.idle_timeout = idle;
        let app = spawn_app_with(settings).await;
        let id = app
            .create_session(json!({"user_id": "carol", "device_id": "d"}))
            .await;
        let created = app.session(&id).await;
        assert_eq!(
            created["last_seen_at"], created["created_at"],
            "idle {idle:?}"
        );

        tokio::time::sleep(Duration::from_millis(5)).await;
        let (status, updated) = app.patch(&id, &json!({"access_token": "t"})).await;
        assert_eq!(status, 200);
        assert_eq!(updated["last_seen_at"], updated["updated_at"]);
        assert!(millis(&updated["last_seen_at"]) > millis(&created["last_seen_at"]));

        // Seen 30 s ago: a read does not write.
        let recent = now_millis() - 30_000;
        set_seen(&app, &id, recent).await;
        assert_eq!(
            millis(&app.session(&id).await["last_seen_at"]),
            recent,
            "idle {idle:?}"
        );
        assert_eq!(millis(&app.session(&id).await["last_seen_at"]), recent);
        // Seen two minutes ago: the next read marks it now, and says so.
        set_seen(&app, &id, now_millis() - 120_000).await;
        let before = now_millis();
        let read = app.session(&id).await;
        assert!(
            millis(&read["last_seen_at"]) >= before - 1000,
            "idle {idle:?}: {read}"
        );
        assert_eq!(app.session(&id).await["last_seen_at"], read["last_seen_at"]);
        let listed = app.list("carol").await;
        assert_eq!(listed["sessions"][0]["last_seen_at"], read["last_seen_at"]);
    }
}
