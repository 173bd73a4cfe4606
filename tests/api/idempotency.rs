//! Idempotency keys bound to their command (contract §8.3): an AMQP `message_id` or a REST
//! `Idempotency-Key` used again for another command, body or caller is `conflict` and changes
//! nothing; a repeat answers the first outcome (an update, the session as it is now); no record
//! holds a token; a REST create retried after its client gave up makes one session.

use std::time::Duration;

use serde_json::{json, Value};
use session_manager::{
    callers::Callers,
    config::{SecretString, Settings},
};
use session_manager_testkit::TcpProxy;

use crate::helpers::{
    eventually, isolated_settings, spawn_app, spawn_app_with, status_and_json, TestApp,
};

fn error_code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("")
}

/// Every idempotency record of `app`, as stored.
async fn records(app: &TestApp) -> Vec<String> {
    let mut redis = app.redis.clone();
    let mut values = Vec::new();
    for key in app.stored_keys().await {
        if key.contains("}:r:") {
            let value: String = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            values.push(value);
        }
    }
    values
}

#[tokio::test]
async fn a_message_id_used_again_for_another_command_is_a_conflict_and_changes_nothing() {
    let app = spawn_app().await;
    let amqp = &app.amqp;
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let create =
        |device: &str| json!({"type": "CreateSession", "user_id": "u", "device_id": device});

    // A second device's create under the first one's key.
    let first = amqp.call_with_id(&create("phone"), "k-create").await;
    let id = first.body["result"]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = amqp.call_with_id(&create("laptop"), "k-create").await;
    assert_eq!(error_code(&other.body), "conflict", "{}", other.body);
    assert!(other.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("used for another request"));
    assert_eq!(app.listed_ids("u").await, vec![id.clone()]);
    let again = amqp.call_with_id(&create("phone"), "k-create").await;
    assert_eq!(
        again.body, first.body,
        "the repeat answers the first outcome"
    );
    // The other changing command about the same user, under the create's key.
    let delete_all = json!({"type": "DeleteUserSessions", "user_id": "u"});
    let refused = amqp.call_with_id(&delete_all, "k-create").await;
    assert_eq!(error_code(&refused.body), "conflict");
    assert_eq!(app.listed_ids("u").await, vec![id.clone()]);

    // An update with new tokens under an update's key stores nothing.
    let update =
        |token: &str| json!({"type": "UpdateSession", "session_id": id, "access_token": token});
    let updated = amqp
        .call_with_id(&update(&format!("a-{marker}")), "k-update")
        .await;
    assert_eq!(updated.body["status"], "ok");
    let other = amqp
        .call_with_id(&update(&format!("b-{marker}")), "k-update")
        .await;
    assert_eq!(error_code(&other.body), "conflict", "{}", other.body);
    assert_eq!(
        app.session(&id).await["access_token"],
        format!("a-{marker}")
    );
    let delete = json!({"type": "DeleteSession", "session_id": id});
    let refused = amqp.call_with_id(&delete, "k-update").await;
    assert_eq!(error_code(&refused.body), "conflict");
    app.session(&id).await;
    // ... and for the same update of another session.
    let other_id = app
        .create_session(json!({"user_id": "z", "device_id": "d"}))
        .await;
    let other_update = json!({"type": "UpdateSession", "session_id": other_id, "access_token": format!("a-{marker}")});
    let refused = amqp.call_with_id(&other_update, "k-update").await;
    assert_eq!(error_code(&refused.body), "conflict");
    assert_eq!(app.session(&other_id).await["access_token"], Value::Null);

    // A repeat of the update answers the session as it is now: with a later change in it.
    let later = amqp
        .call_with_id(&update(&format!("c-{marker}")), "k-later")
        .await;
    assert_eq!(later.body["status"], "ok");
    let repeated = amqp
        .call_with_id(&update(&format!("a-{marker}")), "k-update")
        .await;
    assert_eq!(
        repeated.body["result"]["access_token"],
        format!("c-{marker}")
    );
    assert_eq!(
        app.session(&id).await["access_token"],
        format!("c-{marker}")
    );
    // No record holds a token or a copy of the session.
    let held = records(&app).await;
    assert!(held.len() >= 3, "{held:?}");
    for record in &held {
        assert!(
            !record.contains(&marker),
            "a record holds a token: {record}"
        );
        assert!(
            !record.contains("phone"),
            "a record holds the session: {record}"
        );
    }
    // Once the session has ended, the repeat is not_found, and applies nothing.
    let deleted = amqp.call_with_id(&delete, "k-delete").await;
    assert_eq!(deleted.body["status"], "ok");
    let repeated = amqp
        .call_with_id(&update(&format!("a-{marker}")), "k-update")
        .await;
    assert_eq!(error_code(&repeated.body), "not_found");
    assert!(app.listed_ids("u").await.is_empty());
}

/// A REST request with `Idempotency-Key: key`: the status, the body and the Location header.
async fn with_key(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method, app.url(path))
        .header("Idempotency-Key", key);
    if let Some(body) = body {
        request = request.json(body);
    }
    status_and_json(request).await
}

#[tokio::test]
async fn rest_requests_with_an_idempotency_key_are_applied_once_and_bound_to_their_body() {
    let app = spawn_app().await;
    let post = reqwest::Method::POST;
    let body = json!({"user_id": "rest-user", "device_id": "phone"});
    let (status, first) = with_key(&app, post.clone(), "/a01/session", "k-1", Some(&body)).await;
    assert_eq!(status, 201, "{first}");
    let id = first["session_id"].as_str().unwrap().to_owned();
    // The same key and body: the first outcome, with its status; the quoted form is the same key.
    for key in ["k-1", "\"k-1\""] {
        let (status, again) = with_key(&app, post.clone(), "/a01/session", key, Some(&body)).await;
        assert_eq!((status, &again), (201, &first), "{key}");
    }
    assert_eq!(app.listed_ids("rest-user").await, vec![id.clone()]);
    // The same key with another body, or over AMQP with another command.
    let other = json!({"user_id": "rest-user", "device_id": "laptop"});
    let (status, refused) = with_key(&app, post.clone(), "/a01/session", "k-1", Some(&other)).await;
    assert_eq!(
        (status, error_code(&refused)),
        (409, "conflict"),
        "{refused}"
    );
    let command = json!({"type": "CreateSession", "user_id": "rest-user", "device_id": "laptop"});
    let reply = app.amqp.call_with_id(&command, "k-1").await;
    assert_eq!(error_code(&reply.body), "conflict");
    // One key space: the same create over AMQP answers the REST create's session.
    let command = json!({"type": "CreateSession", "user_id": "rest-user", "device_id": "phone"});
    let reply = app.amqp.call_with_id(&command, "k-1").await;
    assert_eq!(reply.body["result"]["session_id"], id.as_str());
    assert_eq!(app.listed_ids("rest-user").await, vec![id.clone()]);

    // PATCH: a repeat answers the session as it is now; another body is a conflict.
    let path = format!("/a01/session/{id}");
    let patch = json!({"refresh_token": "r-1"});
    let (status, patched) =
        with_key(&app, reqwest::Method::PATCH, &path, "k-2", Some(&patch)).await;
    assert_eq!(
        (status, patched["refresh_token"].as_str()),
        (200, Some("r-1"))
    );
    let (status, _) = app.patch(&id, &json!({"refresh_token": "r-2"})).await;
    assert_eq!(status, 200);
    let (status, repeated) =
        with_key(&app, reqwest::Method::PATCH, &path, "k-2", Some(&patch)).await;
    assert_eq!(
        (status, repeated["refresh_token"].as_str()),
        (200, Some("r-2"))
    );
    let (status, refused) = with_key(
        &app,
        reqwest::Method::PATCH,
        &path,
        "k-2",
        Some(&json!({"refresh_token": "x"})),
    )
    .await;
    assert_eq!((status, error_code(&refused)), (409, "conflict"));
    assert_eq!(app.session(&id).await["refresh_token"], "r-2");

    // DELETE of one session and of all, each repeated.
    let second = app
        .create_session(json!({"user_id": "rest-user", "device_id": "tablet"}))
        .await;
    let one = format!("/a01/session/{second}");
    for _ in 0..2 {
        let (status, deleted) = with_key(&app, reqwest::Method::DELETE, &one, "k-3", None).await;
        assert_eq!(
            (status, deleted["session_id"].as_str()),
            (200, Some(second.as_str()))
        );
    }
    let all = "/a01/session?user_id=rest-user";
    for _ in 0..2 {
        let (status, deleted) = with_key(&app, reqwest::Method::DELETE, all, "k-4", None).await;
        assert_eq!(status, 200);
        assert_eq!(
            deleted["session_ids"],
            json!([id]),
            "the repeat answers the first outcome"
        );
    }
    // Reads take no key; a key that is not 1–255 visible ASCII characters is refused.
    let (status, _) = with_key(&app, reqwest::Method::GET, all, "k-5", None).await;
    assert_eq!(status, 200);
    for bad in [String::new(), "a b".into(), "k".repeat(256), "\"\"".into()] {
        let (status, refused) =
            with_key(&app, post.clone(), "/a01/session", &bad, Some(&body)).await;
        assert_eq!(
            (status, error_code(&refused)),
            (400, "invalid_argument"),
            "{bad:?}"
        );
        assert!(refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"));
    }
    let twice = app
        .http
        .post(app.url("/a01/session"))
        .header("Idempotency-Key", "k-6")
        .header("Idempotency-Key", "k-7")
        .json(&body);
    let (status, _) = status_and_json(twice).await;
    assert_eq!(status, 400);
    assert!(app.listed_ids("rest-user").await.is_empty());
}

#[tokio::test]
async fn a_key_used_again_by_another_caller_is_a_conflict() {
    let tokens = [
        "first-caller-token-0123456789abcdef",
        "second-caller-token-0123456789abcde",
        "third-caller-token-0123456789abcdef",
    ];
    let settings = Settings {
        callers: Callers::of_api_tokens(&tokens.map(SecretString::new)).unwrap(),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let create = |token: &str, user: &str| {
        app.http
            .post(app.url("/a01/session"))
            .bearer_auth(token)
            .header("Idempotency-Key", "k-shared")
            .json(&json!({"user_id": user, "device_id": "d"}))
    };
    let (status, first) = status_and_json(create(tokens[0], "shared")).await;
    assert_eq!(status, 201);
    let (status, again) = status_and_json(create(tokens[0], "shared")).await;
    assert_eq!((status, &again), (201, &first));
    // Keys are claimed in each caller's own namespace: another caller's first use of the key,
    // for another user, is its own, so that no caller can take another's keys first.
    let (status, created) = status_and_json(create(tokens[1], "someone-else")).await;
    assert_eq!(status, 201, "{created}");
    // The same request as the first caller's, by another caller: its outcome is not answered.
    let (status, refused) = status_and_json(create(tokens[2], "shared")).await;
    assert_eq!((status, error_code(&refused)), (409, "conflict"));
    let list = app
        .http
        .get(app.url("/a01/session?user_id=shared"))
        .bearer_auth(tokens[0]);
    let (_, list) = status_and_json(list).await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 1);
}

/// A REST create whose answer the client never got (Redis's answer held past the client's
/// timeout), retried with the same key, makes one session; without a key, two.
#[tokio::test]
async fn a_rest_create_retried_after_a_timeout_makes_one_session() {
    let proxy = TcpProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let settings = Settings {
        redis_url: SecretString::new(format!("redis://127.0.0.1:{}/", proxy.port)),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    for (key, sessions) in [(Some("retry-1"), 1), (None, 2)] {
        let user = format!("retried-{}", uuid::Uuid::new_v4().simple());
        // The Redis connection exists before answers are held (its handshake would be held too).
        assert!(app.listed_ids(&user).await.is_empty());
        let create = || {
            let mut request = impatient
                .post(app.url("/a01/session"))
                .json(&json!({"user_id": user, "device_id": "d"}));
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            request
        };
        proxy.hold_answers(true);
        let gave_up = create().send().await;
        assert!(gave_up.is_err(), "the client timed out: {gave_up:?}");
        eventually(async || match proxy.count_sent(user.as_bytes()) {
            0 => Err("the create has not reached Redis".to_owned()),
            _ => Ok(()),
        })
        .await;
        proxy.hold_answers(false);
        let retried = create().send().await.unwrap();
        assert_eq!(retried.status(), 201);
        let retried: Value = retried.json().await.unwrap();
        let listed = app.listed_ids(&user).await;
        assert_eq!(listed.len(), sessions, "key {key:?}: {listed:?}");
        assert!(listed.contains(&retried["session_id"].as_str().unwrap().to_owned()));
    }
}
