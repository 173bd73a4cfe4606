//! The REST front end against CONTRACT §2: every success row, every error row, the health
//! endpoints, the 64 KiB body limit, the API token, Redis being unreachable or holding corrupt
//! data, concurrency, and that ended sessions leave no key behind.

use std::{
    collections::HashSet,
    io::{Read, Write},
    time::{Duration, Instant},
};

use reqwest::{
    header::{self, HeaderMap},
    Response, StatusCode,
};
use serde_json::{json, Value};
use session_manager::{
    callers::Callers,
    config::{SecretString, Settings},
    domain::{SessionId, UserId},
    store::{Bucket, DELETE_STEP},
};
use time::OffsetDateTime;

use crate::helpers::{assert_valid, isolated_settings, moment, spawn_app, spawn_app_with, TestApp};

const MAX_BODY: usize = 64 * 1024;
const MAX_SECRET: usize = 16 * 1024;

// ----- small local helpers -------------------------------------------------------------------

/// Reads a JSON response of the API and checks what every `/a01` response carries.
async fn read_json(response: Response) -> (StatusCode, HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    assert_eq!(
        headers
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "Cache-Control of a {status} response"
    );
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("a response body");
    assert!(
        content_type.starts_with("application/json"),
        "Content-Type {content_type:?} of a {status} response: {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("a {status} body that is not JSON ({e}): {text}"));
    (status, headers, body)
}

/// Asserts a success status and schema; returns the body.
async fn expect_ok(response: Response, status: u16, schema: &str) -> Value {
    let (actual, _, body) = read_json(response).await;
    assert_eq!(actual.as_u16(), status, "unexpected status, body {body}");
    assert_valid(schema, &body);
    body
}

/// Asserts an error status, the contract's error body and its code; returns the message.
async fn expect_error(response: Response, status: u16, code: &str) -> String {
    let (actual, _, body) = read_json(response).await;
    assert_eq!(actual.as_u16(), status, "unexpected status, body {body}");
    assert_valid("error.json", &body);
    assert_eq!(body["error"]["code"], code, "error code of {body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// Asserts a 400 `invalid_argument` whose message names `field`.
async fn expect_invalid(response: Response, field: &str) {
    let message = expect_error(response, 400, "invalid_argument").await;
    assert!(
        message.contains(field),
        "message {message:?} should name the field {field:?}"
    );
}

async fn post_json(app: &TestApp, body: &Value) -> Response {
    app.http
        .post(app.url("/a01/session"))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn post_raw(app: &TestApp, body: impl Into<reqwest::Body>) -> Response {
    app.http
        .post(app.url("/a01/session"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn get_session(app: &TestApp, id: &str) -> Response {
    app.http
        .get(app.url(&format!("/a01/session/{id}")))
        .send()
        .await
        .unwrap()
}

async fn session(app: &TestApp, id: &str) -> Value {
    let body = expect_ok(get_session(app, id).await, 200, "result.Session.json").await;
    assert_eq!(body["session_id"], id);
    body
}

async fn patch(app: &TestApp, id: &str, body: &Value) -> Response {
    app.http
        .patch(app.url(&format!("/a01/session/{id}")))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn delete(app: &TestApp, id: &str) -> Response {
    app.http
        .delete(app.url(&format!("/a01/session/{id}")))
        .send()
        .await
        .unwrap()
}

async fn list(app: &TestApp, user_id: &str) -> Response {
    app.http
        .get(app.url("/a01/session"))
        .query(&[("user_id", user_id)])
        .send()
        .await
        .unwrap()
}

/// The `(session_id, device_id)` pairs of a user's list, checked against the schema.
/// Every session of the user, page after page (a page holds at most 1000).
async fn listed(app: &TestApp, user_id: &str) -> Vec<(String, String)> {
    let mut body = expect_ok(list(app, user_id).await, 200, "result.SessionList.json").await;
    let mut sessions = Vec::new();
    loop {
        assert_eq!(body["user_id"], user_id);
        sessions.extend(body["sessions"].as_array().unwrap().iter().map(|s| {
            (
                s["session_id"].as_str().unwrap().to_owned(),
                s["device_id"].as_str().unwrap().to_owned(),
            )
        }));
        let Some(next) = body["next"].as_str() else {
            return sessions;
        };
        let response = app
            .http
            .get(app.url("/a01/session"))
            .query(&[("user_id", user_id), ("after", next)])
            .send()
            .await
            .unwrap();
        body = expect_ok(response, 200, "result.SessionList.json").await;
    }
}

async fn delete_user(app: &TestApp, user_id: &str) -> Response {
    app.http
        .delete(app.url("/a01/session"))
        .query(&[("user_id", user_id)])
        .send()
        .await
        .unwrap()
}

fn is_url_safe_id(id: &str) -> bool {
    id.len() >= 43
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A syntactically valid session id that the service never issued.
fn unknown_id() -> String {
    format!("0a{}", "A".repeat(43))
}

/// Sends raw bytes to the app over a plain TCP connection and returns the status code and the
/// whole response text (for what reqwest cannot send, such as a chunked body).
async fn raw_http(app: &TestApp, request: Vec<u8>) -> (u16, String) {
    let address = app.address.trim_start_matches("http://").to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The server may answer and close before reading everything: a failed write is fine.
        let _ = stream.write_all(&request);
        let mut received = Vec::new();
        let mut buffer = [0u8; 8192];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
                Err(error) if received.is_empty() => panic!("no response: {error}"),
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&received).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        // Checked against openapi.json like every response of the tests.
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut headers = reqwest::header::HeaderMap::new();
        for line in head.lines().skip(1) {
            let (name, value) = line.split_once(':').unwrap();
            headers.append(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.trim().parse().unwrap(),
            );
        }
        let request_line = String::from_utf8_lossy(&request);
        let mut request_line = request_line.split(' ');
        let method = reqwest::Method::from_bytes(request_line.next().unwrap().as_bytes()).unwrap();
        let path = request_line.next().unwrap().split('?').next().unwrap();
        crate::api_docs::check_response(&method, path, status, &headers, body.as_bytes());
        (status, text)
    })
    .await
    .unwrap()
}

/// A JSON object of exactly `size` bytes (padded with whitespace) that is a valid create body.
fn padded_create_body(size: usize) -> String {
    let head = r#"{"user_id":"alice","device_id":"phone""#;
    assert!(size > head.len() + 1);
    format!("{head}{}}}", " ".repeat(size - head.len() - 1))
}

// ----- POST /a01/session ---------------------------------------------------------------------

#[tokio::test]
async fn create_answers_201_with_location_and_a_url_safe_id() {
    let app = spawn_app().await;
    let response = post_json(&app, &json!({"user_id": "alice", "device_id": "phone"})).await;
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = expect_ok(response, 201, "result.SessionCreated.json").await;
    let id = body["session_id"].as_str().unwrap();
    assert!(
        is_url_safe_id(id),
        "{id} is not a URL-safe id of >= 43 chars"
    );
    assert_eq!(body, json!({"session_id": id}));
    assert_eq!(location, Some(format!("/a01/session/{id}")));
    // The Location can be followed.
    let stored = session(&app, id).await;
    assert_eq!(stored["user_id"], "alice");
    assert_eq!(stored["device_id"], "phone");
}

#[tokio::test]
async fn created_ids_are_never_the_same() {
    let app = spawn_app().await;
    let mut ids = HashSet::new();
    for _ in 0..20 {
        let id = app
            .create_session(json!({"user_id": "alice", "device_id": "phone"}))
            .await;
        assert!(is_url_safe_id(&id), "{id}");
        assert!(ids.insert(id.clone()), "id {id} issued twice");
    }
}

#[tokio::test]
async fn create_accepts_the_old_spelling_exiration_time() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone", "exiration_time": 3600}))
        .await;
    let stored = session(&app, &id).await;
    assert_eq!(stored["expiration_time"], 3600);
    assert!(stored.get("exiration_time").is_none(), "{stored}");

    // Both spellings at once is ambiguous.
    let response = post_json(
        &app,
        &json!({"user_id": "alice", "device_id": "phone",
                "expiration_time": 1, "exiration_time": 2}),
    )
    .await;
    expect_invalid(response, "expiration_time").await;
}

#[tokio::test]
async fn create_stores_every_optional_field_as_given() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({
            "user_id": "alice", "device_id": "phone", "auth_code": "code-1",
            "access_token": "access-1", "refresh_token": "refresh-1",
            "expiration_time": 0, "user_email": "alice@example.com"
        }))
        .await;
    let stored = session(&app, &id).await;
    assert_eq!(stored["auth_code"], "code-1");
    assert_eq!(stored["access_token"], "access-1");
    assert_eq!(stored["refresh_token"], "refresh-1");
    assert_eq!(stored["expiration_time"], 0);
    assert_eq!(stored["user_email"], "alice@example.com");
}

#[tokio::test]
async fn create_requires_user_id_and_device_id() {
    let app = spawn_app().await;
    for (body, field) in [
        (json!({"device_id": "phone"}), "user_id"),
        (json!({"user_id": "alice"}), "device_id"),
        (json!({"user_id": null, "device_id": "phone"}), "user_id"),
        (json!({"user_id": "alice", "device_id": null}), "device_id"),
        (json!({"user_id": "", "device_id": "phone"}), "user_id"),
        (json!({"user_id": "alice", "device_id": ""}), "device_id"),
        (json!({"user_id": 7, "device_id": "phone"}), "user_id"),
        (json!({"user_id": "alice", "device_id": ["x"]}), "device_id"),
        (json!({}), "user_id"),
    ] {
        expect_invalid(post_json(&app, &body).await, field).await;
    }
    assert!(
        app.stored_keys().await.is_empty(),
        "a rejected create wrote keys"
    );
}

#[tokio::test]
async fn create_rejects_unknown_and_service_set_fields_by_name() {
    let app = spawn_app().await;
    for field in ["nickname", "session_id", "created_at", "expires_at"] {
        let mut body = json!({"user_id": "alice", "device_id": "phone"});
        body[field] = json!("x");
        expect_invalid(post_json(&app, &body).await, field).await;
    }
    assert!(listed(&app, "alice").await.is_empty());
}

#[tokio::test]
async fn identifiers_are_limited_to_256_bytes_not_characters() {
    let app = spawn_app().await;
    // 128 × "ü" is 256 bytes: accepted, and round-trips unchanged.
    let longest = "ü".repeat(128);
    let id = app
        .create_session(json!({"user_id": longest, "device_id": longest}))
        .await;
    let stored = session(&app, &id).await;
    assert_eq!(stored["user_id"], longest.as_str());
    assert_eq!(stored["device_id"], longest.as_str());
    assert_eq!(listed(&app, &longest).await, vec![(id, longest.clone())]);

    // 257 bytes (but only 129 characters): rejected.
    let too_long = format!("{longest}x");
    expect_invalid(
        post_json(&app, &json!({"user_id": too_long, "device_id": "d"})).await,
        "user_id",
    )
    .await;
    expect_invalid(
        post_json(&app, &json!({"user_id": "u", "device_id": too_long})).await,
        "device_id",
    )
    .await;
    expect_invalid(list(&app, &too_long).await, "user_id").await;
    expect_invalid(delete_user(&app, &too_long).await, "user_id").await;
}

#[tokio::test]
async fn identifiers_with_control_characters_are_rejected() {
    let app = spawn_app().await;
    for bad in [
        "a\u{0}b",
        "a\nb",
        "tab\t",
        "\u{1b}[31m",
        "a\u{7f}b",
        "a\u{85}b",
    ] {
        expect_invalid(
            post_json(&app, &json!({"user_id": bad, "device_id": "d"})).await,
            "user_id",
        )
        .await;
        expect_invalid(
            post_json(&app, &json!({"user_id": "u", "device_id": bad})).await,
            "device_id",
        )
        .await;
        expect_invalid(list(&app, bad).await, "user_id").await;
        expect_invalid(delete_user(&app, bad).await, "user_id").await;
    }
    assert!(app.stored_keys().await.is_empty());
}

#[tokio::test]
async fn create_checks_the_rules_of_the_optional_fields() {
    let app = spawn_app().await;
    let base = || json!({"user_id": "alice", "device_id": "phone"});
    let with = |field: &str, value: Value| {
        let mut body = base();
        body[field] = value;
        body
    };
    // At the limit: accepted.
    for field in ["auth_code", "access_token", "refresh_token"] {
        let id = app
            .create_session(with(field, json!("t".repeat(MAX_SECRET))))
            .await;
        assert_eq!(
            session(&app, &id).await[field].as_str().unwrap().len(),
            MAX_SECRET
        );
    }
    let email = format!("{}@example.com", "a".repeat(320 - "@example.com".len()));
    assert_eq!(email.len(), 320);
    app.create_session(with("user_email", json!(email))).await;

    // Over the limit or against a rule: rejected, naming the field.
    let cases = [
        ("auth_code", json!("t".repeat(MAX_SECRET + 1))),
        ("access_token", json!("t".repeat(MAX_SECRET + 1))),
        ("refresh_token", json!("t".repeat(MAX_SECRET + 1))),
        // 8193 × "é" is 16386 bytes but only 8193 characters.
        ("access_token", json!("é".repeat(MAX_SECRET / 2 + 1))),
        ("user_email", json!("alice.example.com")),
        ("user_email", json!(format!("a{email}"))),
        ("user_email", json!(5)),
        ("auth_code", json!(5)),
        ("access_token", json!(true)),
        ("refresh_token", json!({"t": 1})),
        ("expiration_time", json!(-1)),
        ("expiration_time", json!(1.5)),
        ("expiration_time", json!("3600")),
        ("exiration_time", json!(-1)),
    ];
    for (field, value) in cases {
        expect_invalid(post_json(&app, &with(field, value)).await, field).await;
    }
    assert_eq!(listed(&app, "alice").await.len(), 4);
}

#[tokio::test]
async fn malformed_and_non_object_bodies_are_invalid_argument() {
    let app = spawn_app().await;
    for body in [
        "{",
        r#"{"user_id": "alice", "device_id": "phone",}"#,
        "",
        "not json",
        r#"[{"user_id": "alice", "device_id": "phone"}]"#,
        "null",
        r#""alice""#,
        "42",
    ] {
        expect_error(post_raw(&app, body).await, 400, "invalid_argument").await;
    }
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    for body in ["{", "[]", r#"[{"auth_code": "x"}]"#] {
        let response = app
            .http
            .patch(app.url(&format!("/a01/session/{id}")))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        expect_error(response, 400, "invalid_argument").await;
    }
    assert_eq!(session(&app, &id).await["auth_code"], Value::Null);
}

/// A JSON object that repeats a member name is refused, naming the member (contract §7.7), so
/// that a gateway that reads the first value and this service can never disagree about whose
/// session it is.
#[tokio::test]
async fn a_repeated_member_name_is_invalid_and_named() {
    let app = spawn_app().await;
    for body in [
        r#"{"user_id": "alice", "device_id": "phone", "user_id": "mallory"}"#,
        r#"{"user_id": "alice", "user_id": "alice", "device_id": "phone"}"#,
    ] {
        expect_invalid(post_raw(&app, body).await, "user_id").await;
    }
    assert!(app.stored_keys().await.is_empty(), "a session was created");
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    let response = app
        .http
        .patch(app.url(&format!("/a01/session/{id}")))
        .header(header::CONTENT_TYPE, "application/json")
        .body(r#"{"auth_code": "a", "auth_code": "b"}"#)
        .send()
        .await
        .unwrap();
    expect_invalid(response, "auth_code").await;
    assert_eq!(session(&app, &id).await["auth_code"], Value::Null);
}

/// A query parameter the route does not know, or one given twice, is refused naming it
/// (contract §7.7), and nothing happens: a parameter a route does not know (`keep`, or `except`
/// on a list) is not silently ignored.
#[tokio::test]
async fn unknown_or_repeated_query_parameters_are_invalid_and_change_nothing() {
    let app = spawn_app().await;
    let kept = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    let cases = [
        (
            reqwest::Method::DELETE,
            format!("/a01/session?user_id=alice&keep={kept}"),
            "keep",
        ),
        (
            reqwest::Method::DELETE,
            "/a01/session?user_id=alice&user_id=bob".to_owned(),
            "user_id",
        ),
        (
            reqwest::Method::DELETE,
            "/a01/session?user_id=alice&limit=1".to_owned(),
            "limit",
        ),
        (
            reqwest::Method::GET,
            format!("/a01/session?user_id=alice&except={kept}"),
            "except",
        ),
        (
            reqwest::Method::GET,
            "/a01/session?user_id=alice&limit=1&limit=2".to_owned(),
            "limit",
        ),
        (
            reqwest::Method::GET,
            format!("/a01/session/{kept}?fields=all"),
            "fields",
        ),
        (
            reqwest::Method::DELETE,
            format!("/a01/session/{kept}?force=1"),
            "force",
        ),
        (
            reqwest::Method::POST,
            "/a01/session?user_id=alice".to_owned(),
            "user_id",
        ),
    ];
    for (method, path, name) in cases {
        let response = app
            .http
            .request(method.clone(), app.url(&path))
            .json(&json!({"user_id": "alice", "device_id": "tablet"}))
            .send()
            .await
            .unwrap();
        expect_invalid(response, name).await;
    }
    assert_eq!(app.listed_ids("alice").await, vec![kept]);
}

// ----- GET /a01/session?user_id= -------------------------------------------------------------

#[tokio::test]
async fn list_is_oldest_first() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for device in ["laptop", "phone", "tablet"] {
        let id = app
            .create_session(json!({"user_id": "alice", "device_id": device}))
            .await;
        created.push((id, device.to_owned()));
    }
    app.create_session(json!({"user_id": "bob", "device_id": "phone"}))
        .await;
    assert_eq!(listed(&app, "alice").await, created);
    assert_eq!(listed(&app, "bob").await.len(), 1);
}

#[tokio::test]
async fn several_sessions_on_one_device_are_all_listed() {
    let app = spawn_app().await;
    let first = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    let second = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    assert_ne!(first, second);
    assert_eq!(
        listed(&app, "alice").await,
        vec![(first, "phone".to_owned()), (second, "phone".to_owned())]
    );
}

#[tokio::test]
async fn list_of_a_user_without_sessions_is_empty_not_an_error() {
    let app = spawn_app().await;
    let body = expect_ok(list(&app, "nobody").await, 200, "result.SessionList.json").await;
    assert_eq!(
        body,
        json!({"user_id": "nobody", "sessions": [], "next": null})
    );
    assert!(app.stored_keys().await.is_empty(), "listing wrote keys");
}

#[tokio::test]
async fn list_and_delete_all_require_the_user_id_query() {
    let app = spawn_app().await;
    // (query, the name the refusal starts with): a misspelt name is an unknown parameter
    // (contract §7.7).
    for (query, named) in [
        ("", "user_id:"),
        ("?", "user_id:"),
        ("?user_id=", "user_id:"),
        ("?user=alice", "user: unknown query parameter"),
        ("?USER_ID=alice", "USER_ID: unknown query parameter"),
    ] {
        let url = app.url(&format!("/a01/session{query}"));
        let response = app.http.get(&url).send().await.unwrap();
        expect_invalid(response, named).await;
        let response = app.http.delete(&url).send().await.unwrap();
        expect_invalid(response, named).await;
    }
}

#[tokio::test]
async fn user_ids_that_need_url_encoding_work_in_the_query() {
    let app = spawn_app().await;
    let user = "a&b=c d+e/ü%20{x}:*?";
    let id = app
        .create_session(json!({"user_id": user, "device_id": "phone"}))
        .await;
    // A user id that merely looks similar is another user.
    app.create_session(json!({"user_id": "a&b=c d e/ü%20{x}:*?", "device_id": "phone"}))
        .await;
    assert_eq!(listed(&app, user).await, vec![(id.clone(), "phone".into())]);
    let body = expect_ok(
        delete_user(&app, user).await,
        200,
        "result.UserSessionsDeleted.json",
    )
    .await;
    assert_eq!(body, json!({"user_id": user, "session_ids": [id]}));
    assert_eq!(listed(&app, "a&b=c d e/ü%20{x}:*?").await.len(), 1);
}

// ----- GET /a01/session/{id} -----------------------------------------------------------------

#[tokio::test]
async fn get_returns_every_field_with_absent_ones_as_null() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    let stored = session(&app, &id).await;
    let object = stored.as_object().unwrap();
    let mut names: Vec<&str> = object.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "access_token",
            "auth_code",
            "created_at",
            "device_id",
            "expiration_time",
            "expires_at",
            "ip_address",
            "last_seen_at",
            "refresh_token",
            "session_id",
            "updated_at",
            "user_agent",
            "user_email",
            "user_id",
        ]
    );
    for field in [
        "auth_code",
        "access_token",
        "refresh_token",
        "expiration_time",
        "user_email",
        "ip_address",
        "user_agent",
    ] {
        assert_eq!(stored[field], Value::Null, "{field} of {stored}");
    }
    let created = moment(&stored["created_at"]);
    assert_eq!(moment(&stored["updated_at"]), created);
    let now = OffsetDateTime::now_utc();
    assert!(
        (now - created).abs() < time::Duration::seconds(30),
        "created_at {created} is not now ({now})"
    );
}

#[tokio::test]
async fn expires_at_is_created_at_plus_the_session_lifetime() {
    let settings = Settings {
        session_lifetime: Duration::from_secs(3600),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone", "expiration_time": 60}))
        .await;
    let stored = session(&app, &id).await;
    let created = moment(&stored["created_at"]);
    let expires = moment(&stored["expires_at"]);
    assert_eq!(expires - created, time::Duration::seconds(3600));
    // expiration_time is the client's token validity, stored as given, not the session's.
    assert_eq!(stored["expiration_time"], 60);

    // An update does not extend the absolute lifetime.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let patched = expect_ok(
        patch(&app, &id, &json!({"access_token": "a"})).await,
        200,
        "result.Session.json",
    )
    .await;
    assert_eq!(patched["created_at"], stored["created_at"]);
    assert_eq!(patched["expires_at"], stored["expires_at"]);

    // The schedule ends the session at expires_at; the keys' Redis TTLs are a safety net a
    // margin later.
    let mut redis = app.redis.clone();
    let margin = session_manager::store::TTL_MARGIN.as_millis() as i64;
    let schedule = app
        .keys()
        .schedule(Bucket::of_session(&SessionId::parse(&id).unwrap()));
    for key in app.stored_keys().await {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        if key == schedule {
            assert_eq!(ttl, -1, "{key}: the schedule is fixed bookkeeping");
            let ends: f64 = redis::cmd("ZSCORE")
                .arg(&key)
                .arg(&id)
                .query_async(&mut redis)
                .await
                .unwrap();
            let expires_ms = (expires.unix_timestamp_nanos() / 1_000_000) as f64;
            assert_eq!(
                ends, expires_ms,
                "the schedule ends the session at expires_at"
            );
            continue;
        }
        assert!(
            ttl > 3_500_000 + margin && ttl <= 3_600_000 + margin,
            "{key} has TTL {ttl} ms, expected about 3600 s + margin"
        );
    }
}

#[tokio::test]
async fn get_of_a_missing_or_malformed_id_is_not_found() {
    let app = spawn_app().await;
    let real = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    for id in [
        unknown_id(),
        "nope".to_owned(),
        format!("{real}A"),
        real[..real.len() - 1].to_owned(),
        "zz".to_owned() + &real[2..],
        "A".repeat(45),
    ] {
        let message = expect_error(get_session(&app, &id).await, 404, "not_found").await;
        assert!(!message.contains(&real), "{message}");
    }
}

// ----- PATCH /a01/session/{id} ---------------------------------------------------------------

#[tokio::test]
async fn patch_answers_the_whole_session_after_the_change() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone", "auth_code": "code"}))
        .await;
    let before = session(&app, &id).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after = expect_ok(
        patch(
            &app,
            &id,
            &json!({"access_token": "at", "refresh_token": "rt", "expiration_time": 300,
                    "user_email": "alice@example.com"}),
        )
        .await,
        200,
        "result.Session.json",
    )
    .await;
    assert_eq!(after["session_id"], id);
    assert_eq!(after["user_id"], "alice");
    assert_eq!(after["device_id"], "phone");
    assert_eq!(after["auth_code"], "code", "an untouched field is kept");
    assert_eq!(after["access_token"], "at");
    assert_eq!(after["refresh_token"], "rt");
    assert_eq!(after["expiration_time"], 300);
    assert_eq!(after["user_email"], "alice@example.com");
    assert_eq!(after["created_at"], before["created_at"]);
    assert!(
        moment(&after["updated_at"]) > moment(&before["updated_at"]),
        "updated_at did not move: {before} -> {after}"
    );
    // What PATCH answered is what is stored.
    assert_eq!(session(&app, &id).await, after);
}

#[tokio::test]
async fn patch_accepts_the_old_spelling_exiration_time() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    let after = expect_ok(
        patch(&app, &id, &json!({"exiration_time": 42})).await,
        200,
        "result.Session.json",
    )
    .await;
    assert_eq!(after["expiration_time"], 42);
    assert!(after.get("exiration_time").is_none());
}

#[tokio::test]
async fn patch_may_repeat_the_stored_user_id_and_device_id() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    let after = expect_ok(
        patch(
            &app,
            &id,
            &json!({"user_id": "alice", "device_id": "phone", "auth_code": "c"}),
        )
        .await,
        200,
        "result.Session.json",
    )
    .await;
    assert_eq!(after["auth_code"], "c");
    // Only the identifiers, unchanged: still a valid (if idle) update.
    let after = expect_ok(
        patch(&app, &id, &json!({"user_id": "alice"})).await,
        200,
        "result.Session.json",
    )
    .await;
    assert_eq!(after["user_id"], "alice");
    assert_eq!(after["auth_code"], "c");
}

#[tokio::test]
async fn patch_changing_user_id_or_device_id_is_a_conflict() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone", "auth_code": "c"}))
        .await;
    let before = session(&app, &id).await;
    for (body, field) in [
        (json!({"user_id": "mallory"}), "user_id"),
        (json!({"device_id": "laptop"}), "device_id"),
        (
            json!({"user_id": "mallory", "auth_code": "stolen"}),
            "user_id",
        ),
        (
            json!({"user_id": "alice", "device_id": "laptop", "auth_code": "stolen"}),
            "device_id",
        ),
    ] {
        let message = expect_error(patch(&app, &id, &body).await, 409, "conflict").await;
        assert!(message.contains(field), "{message} should name {field}");
    }
    // Nothing of a refused update was applied.
    assert_eq!(session(&app, &id).await, before);
    assert_eq!(listed(&app, "alice").await, vec![(id, "phone".into())]);
    assert!(listed(&app, "mallory").await.is_empty());
}

#[tokio::test]
async fn patch_with_an_empty_body_is_invalid() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    let message = expect_error(patch(&app, &id, &json!({})).await, 400, "invalid_argument").await;
    assert!(!message.is_empty());
    // Also for a session that does not exist: the body is judged first.
    expect_error(
        patch(&app, &unknown_id(), &json!({})).await,
        400,
        "invalid_argument",
    )
    .await;
}

#[tokio::test]
async fn patch_with_an_unknown_field_is_invalid_and_names_it() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    let before = session(&app, &id).await;
    for field in [
        "nickname",
        "session_id",
        "created_at",
        "updated_at",
        "expires_at",
    ] {
        let mut body = json!({"auth_code": "c"});
        body[field] = json!("x");
        expect_invalid(patch(&app, &id, &body).await, field).await;
    }
    assert_eq!(
        session(&app, &id).await,
        before,
        "a rejected PATCH changed it"
    );
}

#[tokio::test]
async fn patch_with_a_wrong_type_names_the_field() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    let before = session(&app, &id).await;
    for (field, value) in [
        ("auth_code", json!(1)),
        ("access_token", json!(["a"])),
        ("refresh_token", json!(false)),
        ("expiration_time", json!("60")),
        ("expiration_time", json!(2.5)),
        ("exiration_time", json!("60")),
        ("user_email", json!({"a": "@"})),
        ("user_id", json!(1)),
        ("device_id", json!(null)),
        ("user_id", json!(null)),
    ] {
        let body = json!({ field: value });
        expect_invalid(patch(&app, &id, &body).await, field).await;
    }
    assert_eq!(session(&app, &id).await, before);
}

#[tokio::test]
async fn patch_breaking_a_rule_names_the_field() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    let before = session(&app, &id).await;
    for (field, value) in [
        ("user_email", json!("no-at-sign")),
        ("user_email", json!(format!("{}@x", "a".repeat(319)))),
        ("auth_code", json!("x".repeat(MAX_SECRET + 1))),
        ("access_token", json!("x".repeat(MAX_SECRET + 1))),
        ("refresh_token", json!("x".repeat(MAX_SECRET + 1))),
        ("expiration_time", json!(-5)),
        ("user_id", json!("")),
        ("device_id", json!("a\nb")),
    ] {
        let body = json!({ field: value });
        expect_invalid(patch(&app, &id, &body).await, field).await;
    }
    assert_eq!(session(&app, &id).await, before);
    // The limits themselves are fine.
    let after = expect_ok(
        patch(&app, &id, &json!({"access_token": "x".repeat(MAX_SECRET)})).await,
        200,
        "result.Session.json",
    )
    .await;
    assert_eq!(after["access_token"].as_str().unwrap().len(), MAX_SECRET);
}

#[tokio::test]
async fn patch_with_null_clears_an_optional_field() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({
            "user_id": "alice", "device_id": "phone", "auth_code": "c",
            "access_token": "a", "refresh_token": "r", "expiration_time": 9,
            "user_email": "a@b"
        }))
        .await;
    let after = expect_ok(
        patch(
            &app,
            &id,
            &json!({"auth_code": null, "expiration_time": null}),
        )
        .await,
        200,
        "result.Session.json",
    )
    .await;
    assert_eq!(after["auth_code"], Value::Null);
    assert_eq!(after["expiration_time"], Value::Null);
    assert_eq!(after["access_token"], "a");
    assert_eq!(after["refresh_token"], "r");
    assert_eq!(after["user_email"], "a@b");
    let after = expect_ok(
        patch(
            &app,
            &id,
            &json!({"access_token": null, "refresh_token": null, "user_email": null}),
        )
        .await,
        200,
        "result.Session.json",
    )
    .await;
    for field in [
        "auth_code",
        "access_token",
        "refresh_token",
        "expiration_time",
        "user_email",
    ] {
        assert_eq!(after[field], Value::Null, "{field}");
    }
    assert_eq!(session(&app, &id).await, after);
}

#[tokio::test]
async fn patch_of_a_missing_session_is_not_found_and_creates_nothing() {
    let app = spawn_app().await;
    for id in [unknown_id(), "nope".to_owned()] {
        expect_error(
            patch(&app, &id, &json!({"auth_code": "c"})).await,
            404,
            "not_found",
        )
        .await;
    }
    assert!(
        app.stored_keys().await.is_empty(),
        "a PATCH of nothing wrote keys"
    );
}

// ----- DELETE --------------------------------------------------------------------------------

#[tokio::test]
async fn delete_ends_exactly_that_session() {
    let app = spawn_app().await;
    let gone = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    let kept = app
        .create_session(json!({"user_id": "alice", "device_id": "laptop"}))
        .await;
    let body = expect_ok(delete(&app, &gone).await, 200, "result.SessionDeleted.json").await;
    assert_eq!(body, json!({"session_id": gone}));

    expect_error(get_session(&app, &gone).await, 404, "not_found").await;
    expect_error(
        patch(&app, &gone, &json!({"auth_code": "c"})).await,
        404,
        "not_found",
    )
    .await;
    expect_error(delete(&app, &gone).await, 404, "not_found").await;
    assert_eq!(
        listed(&app, "alice").await,
        vec![(kept.clone(), "laptop".into())]
    );
    session(&app, &kept).await;
}

#[tokio::test]
async fn delete_of_a_missing_session_is_not_found() {
    let app = spawn_app().await;
    for id in [unknown_id(), "nope".to_owned()] {
        expect_error(delete(&app, &id).await, 404, "not_found").await;
    }
}

#[tokio::test]
async fn delete_all_ends_exactly_the_users_sessions() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for device in ["phone", "laptop", "phone"] {
        ids.push(
            app.create_session(json!({"user_id": "alice", "device_id": device}))
                .await,
        );
    }
    let bobs = app
        .create_session(json!({"user_id": "bob", "device_id": "phone"}))
        .await;
    // An already deleted session is not reported again.
    expect_ok(
        delete(&app, &ids[1]).await,
        200,
        "result.SessionDeleted.json",
    )
    .await;
    let open = vec![ids[0].clone(), ids[2].clone()];

    let body = expect_ok(
        delete_user(&app, "alice").await,
        200,
        "result.UserSessionsDeleted.json",
    )
    .await;
    assert_eq!(body["user_id"], "alice");
    let mut closed: Vec<String> = body["session_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    closed.sort();
    let mut expected = open.clone();
    expected.sort();
    assert_eq!(closed, expected);

    assert!(listed(&app, "alice").await.is_empty());
    for id in &ids {
        expect_error(get_session(&app, id).await, 404, "not_found").await;
    }
    assert_eq!(
        listed(&app, "bob").await,
        vec![(bobs.clone(), "phone".into())]
    );
    session(&app, &bobs).await;

    // Again: nothing left to close.
    let body = expect_ok(
        delete_user(&app, "alice").await,
        200,
        "result.UserSessionsDeleted.json",
    )
    .await;
    assert_eq!(body, json!({"user_id": "alice", "session_ids": []}));
}

#[tokio::test]
async fn delete_all_of_a_user_without_sessions_is_an_empty_list() {
    let app = spawn_app().await;
    let body = expect_ok(
        delete_user(&app, "nobody").await,
        200,
        "result.UserSessionsDeleted.json",
    )
    .await;
    assert_eq!(body, json!({"user_id": "nobody", "session_ids": []}));
    assert!(app.stored_keys().await.is_empty());
}

// ----- API token -----------------------------------------------------------------------------

/// Two API tokens, as during a rotation (each at least 32 characters, as the service requires).
const OLD_TOKEN: &str = "t0ken-of-the-first-generation-0123";
const NEW_TOKEN: &str = "n3w-token-of-the-second-generation";

#[tokio::test]
async fn an_api_token_is_required_when_configured() {
    // Two tokens, as during a rotation: either is accepted.
    let settings = Settings {
        callers: Callers::of_api_tokens(&[
            SecretString::new(OLD_TOKEN),
            SecretString::new(NEW_TOKEN),
        ])
        .unwrap(),
        ..isolated_settings()
    };
    let app = spawn_app_with(settings).await;
    let create = json!({"user_id": "alice", "device_id": "phone"});

    let requests = [
        app.http.post(app.url("/a01/session")).json(&create),
        app.http.get(app.url("/a01/session?user_id=alice")),
        app.http.delete(app.url("/a01/session?user_id=alice")),
        app.http
            .get(app.url(&format!("/a01/session/{}", unknown_id()))),
        app.http
            .patch(app.url(&format!("/a01/session/{}", unknown_id())))
            .json(&json!({"auth_code": "c"})),
        app.http
            .delete(app.url(&format!("/a01/session/{}", unknown_id()))),
        app.http.get(app.url("/a01/nothing-here")),
    ];
    for request in requests {
        for authorization in [
            None,
            Some("Bearer wrong".to_string()),
            Some(format!("Bearer {}", &OLD_TOKEN[1..])),
            Some(format!("Bearer {OLD_TOKEN}0")),
            Some(format!("Bearer {}", &NEW_TOKEN[..NEW_TOKEN.len() - 1])),
            Some(format!("Bearer {OLD_TOKEN},{NEW_TOKEN}")),
            Some(format!("Basic {OLD_TOKEN}")),
            Some(OLD_TOKEN.to_string()),
            Some("Bearer".to_string()),
            Some(String::new()),
        ] {
            let mut request = request.try_clone().unwrap();
            if let Some(value) = &authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            let response = request.send().await.unwrap();
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let message = expect_error(response, 401, "unauthorized").await;
            assert!(!message.contains("t0ken"), "{message}");
            assert_eq!(challenge.as_deref(), Some("Bearer"), "{authorization:?}");
        }
    }
    assert!(
        app.stored_keys().await.is_empty(),
        "an unauthorized request wrote"
    );

    // With the token everything works, the scheme being case-insensitive.
    let response = app
        .http
        .post(app.url("/a01/session"))
        .bearer_auth(OLD_TOKEN)
        .json(&create)
        .send()
        .await
        .unwrap();
    let id = expect_ok(response, 201, "result.SessionCreated.json").await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .http
        .get(app.url(&format!("/a01/session/{id}")))
        .header(header::AUTHORIZATION, format!("Bearer {OLD_TOKEN}"))
        .send()
        .await
        .unwrap();
    expect_ok(response, 200, "result.Session.json").await;
    let response = app
        .http
        .get(app.url("/a01/session?user_id=alice"))
        .header(header::AUTHORIZATION, format!("bearer {NEW_TOKEN}"))
        .send()
        .await
        .unwrap();
    let body = expect_ok(response, 200, "result.SessionList.json").await;
    assert_eq!(body["sessions"][0]["session_id"], id.as_str());

    // The health endpoints never require it.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path} without a token");
    }
}

// ----- errors of the HTTP layer --------------------------------------------------------------

#[tokio::test]
async fn an_unknown_route_is_a_json_not_found() {
    let app = spawn_app().await;
    for path in [
        "/",
        "/a01",
        "/a01/",
        "/a01/sessions",
        "/a01/session/",
        &format!("/a01/session/{}/extra", unknown_id()),
        "/a02/session",
        "/healthz/x",
    ] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        expect_error(response, 404, "not_found").await;
        let response = app
            .http
            .post(app.url(path))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        expect_error(response, 404, "not_found").await;
    }
}

#[tokio::test]
async fn a_method_a_route_does_not_have_is_405() {
    let app = spawn_app().await;
    let id = app
        .create_session(json!({"user_id": "alice", "device_id": "phone"}))
        .await;
    let collection = app.url("/a01/session");
    let one = app.url(&format!("/a01/session/{id}"));
    let cases = [
        (
            reqwest::Method::PUT,
            collection.clone(),
            "GET, POST, DELETE",
        ),
        (
            reqwest::Method::PATCH,
            collection.clone(),
            "GET, POST, DELETE",
        ),
        (reqwest::Method::OPTIONS, collection, "GET, POST, DELETE"),
        (reqwest::Method::POST, one.clone(), "GET, PATCH, DELETE"),
        (reqwest::Method::PUT, one, "GET, PATCH, DELETE"),
        (reqwest::Method::POST, app.url("/healthz"), "GET"),
        (reqwest::Method::DELETE, app.url("/metrics"), "GET"),
        (reqwest::Method::PUT, app.url("/readyz"), "GET"),
    ];
    for (method, url, allowed) in cases {
        let response = app
            .http
            .request(method.clone(), &url)
            .json(&json!({"user_id": "alice", "device_id": "phone"}))
            .send()
            .await
            .unwrap();
        let allow = response
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        expect_error(response, 405, "method_not_allowed").await;
        assert_eq!(allow.as_deref(), Some(allowed), "Allow of {method} {url}");
    }
    // None of them did anything.
    assert_eq!(listed(&app, "alice").await.len(), 1);
}

#[tokio::test]
async fn a_body_over_64_kib_is_413() {
    let app = spawn_app().await;
    // Exactly 64 KiB of valid JSON is still accepted.
    let body = padded_create_body(MAX_BODY);
    assert_eq!(body.len(), MAX_BODY);
    expect_ok(
        post_raw(&app, body).await,
        201,
        "result.SessionCreated.json",
    )
    .await;

    // One byte more is not, nor ~70 KiB of otherwise valid JSON.
    for size in [MAX_BODY + 1, 70 * 1024] {
        let body = padded_create_body(size);
        expect_error(post_raw(&app, body).await, 413, "payload_too_large").await;
    }
    let id = listed(&app, "alice").await[0].0.clone();
    let big = json!({"auth_code": "x".repeat(70 * 1024)});
    expect_error(patch(&app, &id, &big).await, 413, "payload_too_large").await;
    assert_eq!(listed(&app, "alice").await.len(), 1);
    assert_eq!(session(&app, &id).await["auth_code"], Value::Null);
}

#[tokio::test]
async fn a_chunked_body_over_64_kib_is_413() {
    let app = spawn_app().await;
    let send = |size: usize| {
        let body = padded_create_body(size);
        let mut request = b"POST /a01/session HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n"
            .to_vec();
        for chunk in body.as_bytes().chunks(8000) {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        raw_http(&app, request)
    };
    let (status, text) = send(MAX_BODY).await;
    assert_eq!(status, 201, "{text}");
    for size in [MAX_BODY + 1, 70 * 1024] {
        let (status, text) = send(size).await;
        assert_eq!(status, 413, "{text}");
        assert!(text.contains(r#""code":"payload_too_large""#), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("cache-control: no-store"),
            "{text}"
        );
    }
    assert_eq!(listed(&app, "alice").await.len(), 1);
}

#[tokio::test]
async fn a_body_that_is_not_application_json_is_415() {
    let app = spawn_app().await;
    let create = json!({"user_id": "alice", "device_id": "phone"}).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
        Some("json"),
        None,
    ] {
        let mut request = app.http.post(app.url("/a01/session")).body(create.clone());
        if let Some(value) = content_type {
            request = request.header(header::CONTENT_TYPE, value);
        }
        let response = request.send().await.unwrap();
        expect_error(response, 415, "unsupported_media_type").await;
    }
    assert!(listed(&app, "alice").await.is_empty());

    // A parameter, or another case, of application/json is fine.
    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        let response = app
            .http
            .post(app.url("/a01/session"))
            .header(header::CONTENT_TYPE, content_type)
            .body(create.clone())
            .send()
            .await
            .unwrap();
        expect_ok(response, 201, "result.SessionCreated.json").await;
    }
    let id = listed(&app, "alice").await[0].0.clone();

    // The same for PATCH.
    let url = app.url(&format!("/a01/session/{id}"));
    let change = json!({"auth_code": "c"}).to_string();
    let response = app
        .http
        .patch(&url)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(change.clone())
        .send()
        .await
        .unwrap();
    expect_error(response, 415, "unsupported_media_type").await;
    let response = app
        .http
        .patch(&url)
        .body(change.clone())
        .send()
        .await
        .unwrap();
    expect_error(response, 415, "unsupported_media_type").await;
    assert_eq!(session(&app, &id).await["auth_code"], Value::Null);
    let response = app
        .http
        .patch(&url)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(change)
        .send()
        .await
        .unwrap();
    let after = expect_ok(response, 200, "result.Session.json").await;
    assert_eq!(after["auth_code"], "c");
}

/// Settings of an instance whose Redis cannot be reached (the connection is lazy, so it starts).
fn without_redis() -> Settings {
    Settings {
        redis_url: SecretString::new("redis://127.0.0.1:1/"),
        ..isolated_settings()
    }
}

#[tokio::test]
async fn redis_unreachable_is_503_unavailable_on_every_route() {
    let app = spawn_app_with(without_redis()).await;
    let requests = [
        app.http
            .post(app.url("/a01/session"))
            .json(&json!({"user_id": "alice", "device_id": "phone"})),
        app.http.get(app.url("/a01/session?user_id=alice")),
        app.http
            .get(app.url(&format!("/a01/session/{}", unknown_id()))),
        app.http
            .patch(app.url(&format!("/a01/session/{}", unknown_id())))
            .json(&json!({"auth_code": "c"})),
        app.http
            .delete(app.url(&format!("/a01/session/{}", unknown_id()))),
        app.http.delete(app.url("/a01/session?user_id=alice")),
    ];
    // Concurrently, and with a generous bound: how fast is the next test's concern.
    let answers = requests.into_iter().map(|request| async move {
        let response = tokio::time::timeout(Duration::from_secs(30), request.send())
            .await
            .expect("an answer within 30 s")
            .unwrap();
        let message = expect_error(response, 503, "unavailable").await;
        assert!(!message.contains("127.0.0.1:1"), "{message}");
    });
    futures_util::future::join_all(answers).await;

    // Input errors are still reported as such, without Redis.
    let response = app.http.get(app.url("/a01/session")).send().await.unwrap();
    expect_invalid(response, "user_id").await;
    let response = post_json(&app, &json!({"user_id": "alice"})).await;
    expect_invalid(response, "device_id").await;
}

#[tokio::test]
async fn redis_unreachable_is_answered_within_5_seconds() {
    let app = spawn_app_with(without_redis()).await;
    for _ in 0..2 {
        let started = Instant::now();
        let response =
            tokio::time::timeout(Duration::from_secs(5), get_session(&app, &unknown_id()))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no answer within 5 s while Redis is unreachable (gave up after {:?})",
                        started.elapsed()
                    )
                });
        expect_error(response, 503, "unavailable").await;
    }
}

#[tokio::test]
async fn readiness_is_503_while_redis_is_unreachable_and_health_200() {
    let app = spawn_app_with(without_redis()).await;
    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        app.http.get(app.url("/readyz")).send(),
    )
    .await
    .expect("/readyz answers within 5 s")
    .unwrap();
    assert_eq!(response.status(), 503, "after {:?}", started.elapsed());
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_corrupt_session_is_500_internal_without_its_values() {
    let app = spawn_app().await;
    let mut redis = app.redis.clone();
    let id = unknown_id();
    let key = app.keys().session(&SessionId::parse(&id).unwrap());
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg("u")
        .arg("user-value-s3cr3t")
        .arg("ac")
        .arg("auth-code-s3cr3t")
        .query_async(&mut redis)
        .await
        .unwrap();
    let message = expect_error(get_session(&app, &id).await, 500, "internal").await;
    for leaked in ["s3cr3t", "user-value", "auth-code", &id, &key] {
        assert!(!message.contains(leaked), "{message:?} contains {leaked:?}");
    }

    // A well-formed hash with a bad timestamp is just as internal.
    let other = format!("0b{}", "B".repeat(43));
    let key = app.keys().session(&SessionId::parse(&other).unwrap());
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg("u")
        .arg("alice")
        .arg("d")
        .arg("phone")
        .arg("c")
        .arg("yesterday-s3cr3t")
        .arg("m")
        .arg("1")
        .arg("x")
        .arg("2")
        .query_async(&mut redis)
        .await
        .unwrap();
    let message = expect_error(get_session(&app, &other).await, 500, "internal").await;
    assert!(!message.contains("s3cr3t"), "{message}");
}

// ----- health, readiness, metrics ------------------------------------------------------------

#[tokio::test]
async fn health_and_readiness_answer_200() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn metrics_count_the_requests_in_prometheus_text() {
    let app = spawn_app().await;
    for _ in 0..3 {
        app.create_session(json!({"user_id": "alice", "device_id": "phone"}))
            .await;
    }
    expect_error(get_session(&app, &unknown_id()).await, 404, "not_found").await;
    listed(&app, "alice").await;

    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    let text = response.text().await.unwrap();
    assert!(
        text.contains("# TYPE session_manager_http_requests counter"),
        "{text}"
    );
    for line in [
        r#"session_manager_http_requests_total{route="/a01/session",method="POST",status="201"} 3"#,
        r#"session_manager_http_requests_total{route="/a01/session/{id}",method="GET",status="404"} 1"#,
        r#"session_manager_http_requests_total{route="/a01/session",method="GET",status="200"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    // No session id or user id leaks into the labels.
    assert!(!text.contains("alice"), "{text}");
}

// ----- concurrency and clean-up --------------------------------------------------------------

/// Creates `count` sessions of `user_id` and returns their ids in creation order.
async fn many_sessions(app: &TestApp, user_id: &str, count: usize) -> Vec<String> {
    let created = app.create_sessions(user_id, count).await;
    let listed: Vec<String> = listed(app, user_id)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        listed.iter().collect::<HashSet<_>>(),
        created.iter().map(|(id, _)| id).collect::<HashSet<_>>()
    );
    listed
}

fn ids_of(body: &Value) -> Vec<String> {
    body["session_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn delete_all_of_more_sessions_than_one_step_ends_them_all_in_creation_order() {
    let app = spawn_app().await;
    let count = 2 * DELETE_STEP + 1;
    let created = many_sessions(&app, "alice", count).await;
    let bobs = app
        .create_session(json!({"user_id": "bob", "device_id": "phone"}))
        .await;

    let body = expect_ok(
        delete_user(&app, "alice").await,
        200,
        "result.UserSessionsDeleted.json",
    )
    .await;
    assert_eq!(ids_of(&body), created);
    assert!(listed(&app, "alice").await.is_empty());
    for id in [&created[0], &created[DELETE_STEP], &created[count - 1]] {
        expect_error(get_session(&app, id).await, 404, "not_found").await;
    }
    session(&app, &bobs).await;
    // Only bob's session is left (and the schedule it is on): no index entry of alice's, no
    // progress of the steps.
    let bob = UserId::parse("bob".into()).unwrap();
    let keys = app.keys();
    let mut bobs_keys = vec![
        keys.schedule(Bucket::of_user(&bob)),
        keys.index(&bob),
        keys.session(&SessionId::parse(&bobs).unwrap()),
    ];
    bobs_keys.sort();
    assert_eq!(app.keys_left().await, bobs_keys);
}

#[tokio::test]
async fn sessions_created_while_a_delete_all_runs_are_either_ended_and_reported_or_kept() {
    let app = spawn_app().await;
    let before = many_sessions(&app, "alice", 3 * DELETE_STEP).await;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let creator = async {
        let mut during = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            during.push(
                app.create_session(json!({"user_id": "alice", "device_id": "new"}))
                    .await,
            );
        }
        during
    };
    let deleter = async {
        let response = delete_user(&app, "alice").await;
        let body = expect_ok(response, 200, "result.UserSessionsDeleted.json").await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        ids_of(&body)
    };
    let (during, closed) = tokio::join!(creator, deleter);

    // Every session of before the command is ended; the reply lists sessions in creation
    // order, so those of before come first; a session created meanwhile is either in the reply
    // or still listed, never both, never neither.
    assert_eq!(closed[..before.len()], before[..]);
    let kept: Vec<String> = listed(&app, "alice")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let ended_during = &closed[before.len()..];
    assert_eq!(
        ended_during.iter().chain(&kept).collect::<Vec<_>>(),
        during.iter().collect::<Vec<_>>(),
        "created meanwhile: {}, ended: {}, kept: {}",
        during.len(),
        ended_during.len(),
        kept.len()
    );
    for id in &kept {
        session(&app, id).await;
    }
}

#[tokio::test]
async fn a_hundred_concurrent_creates_for_one_user_are_all_listed_in_order() {
    let app = spawn_app().await;
    let creates = (0..100).map(|i| {
        let app = &app;
        async move {
            let response = post_json(
                app,
                &json!({"user_id": "alice", "device_id": format!("device-{i}")}),
            )
            .await;
            let body = expect_ok(response, 201, "result.SessionCreated.json").await;
            body["session_id"].as_str().unwrap().to_owned()
        }
    });
    let created: Vec<String> = futures_util::future::join_all(creates).await;
    let created_set: HashSet<&String> = created.iter().collect();
    assert_eq!(created_set.len(), 100, "duplicate ids issued");

    let sessions = listed(&app, "alice").await;
    assert_eq!(sessions.len(), 100);
    let listed_set: HashSet<&String> = sessions.iter().map(|(id, _)| id).collect();
    assert_eq!(listed_set, created_set);

    let mut previous: Option<OffsetDateTime> = None;
    for (id, device) in &sessions {
        let stored = session(&app, id).await;
        assert_eq!(stored["device_id"], device.as_str());
        let created_at = moment(&stored["created_at"]);
        if let Some(previous) = previous {
            assert!(previous <= created_at, "list not ordered by created_at");
        }
        previous = Some(created_at);
    }
}

#[tokio::test]
async fn ended_sessions_leave_no_key_behind() {
    let app = spawn_app().await;
    let mut singles = Vec::new();
    for device in ["phone", "laptop"] {
        singles.push(
            app.create_session(json!({"user_id": "alice", "device_id": device}))
                .await,
        );
    }
    for i in 0..5 {
        app.create_session(json!({
            "user_id": "bob", "device_id": format!("d{i}"),
            "access_token": "a", "user_email": "bob@example.com"
        }))
        .await;
    }
    let bobs_first = listed(&app, "bob").await[0].0.clone();
    expect_ok(
        patch(&app, &bobs_first, &json!({"refresh_token": "r"})).await,
        200,
        "result.Session.json",
    )
    .await;
    assert!(!app.stored_keys().await.is_empty());

    for id in &singles {
        expect_ok(delete(&app, id).await, 200, "result.SessionDeleted.json").await;
    }
    let body = expect_ok(
        delete_user(&app, "bob").await,
        200,
        "result.UserSessionsDeleted.json",
    )
    .await;
    assert_eq!(body["session_ids"].as_array().unwrap().len(), 5);
    assert_eq!(app.keys_left().await, Vec::<String>::new());

    // Reading, updating, deleting and listing what is gone writes nothing.
    for id in singles.iter().chain([&bobs_first]) {
        expect_error(get_session(&app, id).await, 404, "not_found").await;
        expect_error(
            patch(&app, id, &json!({"auth_code": "c"})).await,
            404,
            "not_found",
        )
        .await;
        expect_error(delete(&app, id).await, 404, "not_found").await;
    }
    assert!(listed(&app, "alice").await.is_empty());
    assert!(listed(&app, "bob").await.is_empty());
    expect_ok(
        delete_user(&app, "alice").await,
        200,
        "result.UserSessionsDeleted.json",
    )
    .await;
    assert_eq!(app.keys_left().await, Vec::<String>::new());
}
