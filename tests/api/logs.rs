//! Nothing secret in any log, at any level (issue 17, point 1): the real binary at
//! `RUST_LOG=trace`, driven through every path that can carry a session, prints no token, auth
//! code, e-mail, API token, Redis password, encryption key or whole session id.

use lapin::BasicProperties;
use serde_json::{json, Value};
use session_manager_testkit::{free_port, PrivateRedis, Service};

use crate::{
    amqp::dead_letter_reason,
    api_docs::Http,
    helpers::{eventually, isolated_settings, service_binary, sha256_hex, AmqpClient, AMQP_URL},
};

const REDIS_PASSWORD: &str = "redis-pass-7f3a9c";
const API_TOKEN: &str = "api-token-51d0e2-0123456789abcdef0123";
const CALLER_TOKEN: &str = "caller-token-8e1f-0123456789abcdef01";
const ACCESS_TOKEN: &str = "access-token-9b8c7d";
const REFRESH_TOKEN: &str = "refresh-token-6e5f4a";
const NEW_REFRESH_TOKEN: &str = "refresh-token-2-d4c3b2";
const AUTH_CODE: &str = "auth-code-3c2b1a";
const USER_EMAIL: &str = "mail-5c1e@example.org";
/// 32 bytes, standard base64.
const ENCRYPTION_KEY: &str = "c2VjcmV0LWtleS1vZi10aGlydHktdHdvLWJ5dGVzISE=";

/// The secret fields of a create or update, each carrying one of the secrets.
fn secrets() -> Value {
    json!({"access_token": ACCESS_TOKEN, "refresh_token": REFRESH_TOKEN,
           "auth_code": AUTH_CODE, "user_email": USER_EMAIL})
}

fn with_secrets(mut base: Value) -> Value {
    for (name, value) in secrets().as_object().unwrap() {
        base[name] = value.clone();
    }
    base
}

#[tokio::test]
async fn no_secret_reaches_the_logs_at_trace_on_any_path() {
    let redis = PrivateRedis::start(&["--requirepass", REDIS_PASSWORD]);
    let redis_url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/", redis.port);
    let settings = isolated_settings();
    let callers = std::env::temp_dir().join(format!("callers-{}.json", uuid::Uuid::new_v4()));
    let file = json!({"callers": [{"name": "tests", "token_sha256": sha256_hex(CALLER_TOKEN),
                                   "amqp_user": "guest", "scopes": ["*"]}]});
    std::fs::write(&callers, file.to_string()).unwrap();
    let service = Service::start(
        service_binary()
            .env("RUST_LOG", "trace")
            .env("REDIS_URL", &redis_url)
            .env("AMQP_URL", AMQP_URL)
            .env("SESSION_API_TOKEN", API_TOKEN)
            .env("SESSION_CALLERS_FILE", &callers)
            .env("SESSION_ENCRYPTION_KEY", ENCRYPTION_KEY)
            .env("SESSION_DEBUG_PANIC_FOR_USER", "panicky")
            .env("SESSION_KEY_PREFIX", &settings.key_prefix)
            .env("SESSION_COMMAND_QUEUE", &settings.command_queue)
            .env("SESSION_EVENTS_EXCHANGE", &settings.events_exchange),
        free_port(),
    );
    let http = Http::new();
    let bearer = format!("Bearer {API_TOKEN}");
    let rest = |method: reqwest::Method, path: &str, body: Option<&Value>| {
        let mut request = http
            .request(method, service.url(path))
            .header("Authorization", &bearer);
        if let Some(body) = body {
            request = request.json(body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let mut ids = Vec::new();

    // REST: a create, a read and an update carrying every secret, a wrong token, a rejected
    // field carrying a secret, a conflict, the caller of the callers file.
    let (status, created) = rest(
        reqwest::Method::POST,
        "/a01/session",
        Some(&with_secrets(json!({"user_id": "u", "device_id": "d"}))),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["session_id"].as_str().unwrap().to_owned();
    ids.push(id.clone());
    let (status, read) = rest(reqwest::Method::GET, &format!("/a01/session/{id}"), None).await;
    assert_eq!(
        (status, read["access_token"].as_str()),
        (200, Some(ACCESS_TOKEN))
    );
    let patch = json!({"refresh_token": NEW_REFRESH_TOKEN, "user_email": USER_EMAIL});
    let (status, _) = rest(
        reqwest::Method::PATCH,
        &format!("/a01/session/{id}"),
        Some(&patch),
    )
    .await;
    assert_eq!(status, 200);
    let wrong = http
        .get(service.url("/a01/session?user_id=u"))
        .header("Authorization", format!("Bearer {API_TOKEN}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let rejected = json!({"access_token": 5, "refresh_token": REFRESH_TOKEN});
    let (status, _) = rest(
        reqwest::Method::PATCH,
        &format!("/a01/session/{id}"),
        Some(&rejected),
    )
    .await;
    assert_eq!(status, 400);
    let conflicting = json!({"user_id": "other", "refresh_token": REFRESH_TOKEN});
    let (status, _) = rest(
        reqwest::Method::PATCH,
        &format!("/a01/session/{id}"),
        Some(&conflicting),
    )
    .await;
    assert_eq!(status, 409);
    let by_caller = http
        .get(service.url(&format!("/a01/session/{id}")))
        .bearer_auth(CALLER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(by_caller.status(), 200);

    // AMQP, as the callers file's `guest`: a create and a read with every secret, a command
    // that is dead-lettered for its fields and one for its reply_to, both carrying secrets.
    let amqp = AmqpClient::connect(&settings).await;
    amqp.wait_for_consumer().await;
    let reply = amqp
        .call(&with_secrets(
            json!({"type": "CreateSession", "user_id": "u", "device_id": "d"}),
        ))
        .await;
    assert_eq!(reply.body["status"], "ok", "{}", reply.body);
    let amqp_id = reply.body["result"]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    ids.push(amqp_id.clone());
    let got = amqp
        .call(&json!({"type": "GetSession", "session_id": amqp_id}))
        .await;
    assert_eq!(got.body["result"]["refresh_token"], REFRESH_TOKEN);
    let invalid = amqp
        .call(&with_secrets(
            json!({"type": "CreateSession", "user_id": "u"}),
        ))
        .await;
    assert_eq!(invalid.body["error"]["code"], "invalid_argument");
    let elsewhere = BasicProperties::default()
        .with_reply_to(
            format!("{}.elsewhere", settings.command_queue)
                .as_str()
                .into(),
        )
        .with_correlation_id("elsewhere-1".into());
    let update = with_secrets(json!({"type": "UpdateSession", "session_id": amqp_id}));
    amqp.publish(update.to_string().as_bytes(), elsewhere).await;
    for reason in ["invalid_argument", "reply_to_refused"] {
        let dead = amqp.dead_letter().await;
        assert_eq!(dead_letter_reason(&dead).as_deref(), Some(reason));
        let copy = String::from_utf8_lossy(&dead.data).into_owned();
        for secret in [ACCESS_TOKEN, REFRESH_TOKEN, AUTH_CODE, USER_EMAIL] {
            assert!(
                !copy.contains(secret),
                "the dead letter holds {secret}: {copy}"
            );
        }
    }

    // Replies that no queue takes, of a GetSession and an UpdateSession: both hold the tokens.
    let gone = format!("amq.gen-gone-{}", uuid::Uuid::new_v4().simple());
    for (correlation_id, command) in [
        (
            "returned-get",
            json!({"type": "GetSession", "session_id": amqp_id}),
        ),
        (
            "returned-update",
            json!({"type": "UpdateSession", "session_id": amqp_id, "access_token": ACCESS_TOKEN}),
        ),
    ] {
        let properties = BasicProperties::default()
            .with_reply_to(gone.as_str().into())
            .with_correlation_id(correlation_id.into());
        amqp.publish(command.to_string().as_bytes(), properties)
            .await;
    }
    eventually(async || {
        let printed = service.printed();
        match printed.matches("a reply could not be delivered").count() {
            2 => Ok(()),
            n => Err(format!("{n} returned replies logged")),
        }
    })
    .await;

    // Redis errors in the middle of an update and of a read: a session whose end is not a
    // number (the update's script fails once it holds the session), and one whose token is not
    // UTF-8 (the read cannot convert what Redis answers; that redis-rs quotes some such values
    // in its errors is tested with the store).
    let mut redis_client = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key_of = |id: &str| format!("{}:{{{}}}:s:{id}", settings.key_prefix, &id[..2]);
    let code = |name| session_manager::store::field_code(name).unwrap();
    let _: () = redis::cmd("HSET")
        .arg(key_of(&id))
        .arg(code("expires_at"))
        .arg("not-a-number")
        .query_async(&mut redis_client)
        .await
        .unwrap();
    let patch = json!({"access_token": ACCESS_TOKEN, "refresh_token": NEW_REFRESH_TOKEN});
    let (status, _) = rest(
        reqwest::Method::PATCH,
        &format!("/a01/session/{id}"),
        Some(&patch),
    )
    .await;
    assert_eq!(status, 500);
    let failed = amqp
        .call(&with_secrets(
            json!({"type": "UpdateSession", "session_id": id}),
        ))
        .await;
    assert_eq!(failed.body["error"]["code"], "internal", "{}", failed.body);
    let mut not_utf8 = vec![0xff, 0xfe];
    not_utf8.extend_from_slice(ACCESS_TOKEN.as_bytes());
    let _: () = redis::cmd("HSET")
        .arg(key_of(&amqp_id))
        .arg(code("access_token"))
        .arg(not_utf8)
        .query_async(&mut redis_client)
        .await
        .unwrap();
    let (status, _) = rest(
        reqwest::Method::GET,
        &format!("/a01/session/{amqp_id}"),
        None,
    )
    .await;
    assert_eq!(status, 500);

    // A panic in a handler holding a session, on both front ends.
    let (status, created) = rest(
        reqwest::Method::POST,
        "/a01/session",
        Some(&with_secrets(
            json!({"user_id": "panicky", "device_id": "d"}),
        )),
    )
    .await;
    assert_eq!(status, 201);
    let panicky = created["session_id"].as_str().unwrap().to_owned();
    ids.push(panicky.clone());
    let (status, body) = rest(
        reqwest::Method::GET,
        &format!("/a01/session/{panicky}"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("internal"))
    );
    let panicked = amqp
        .call(&json!({"type": "GetSession", "session_id": panicky}))
        .await;
    assert_eq!(panicked.body["error"]["code"], "internal");
    let dead = amqp.dead_letter().await;
    assert_eq!(dead_letter_reason(&dead).as_deref(), Some("internal"));
    // Still serving after both.
    let (status, _) = rest(reqwest::Method::GET, "/a01/session?user_id=nobody", None).await;
    assert_eq!(status, 200);

    let (status, printed) = service.terminate();
    let _ = std::fs::remove_file(&callers);
    assert!(
        status.success(),
        "exit status {status:?}; output:\n{printed}"
    );
    // The paths were taken, and logged as they should be.
    for expected in [
        "shutdown requested",
        "returned-get",
        "returned-update",
        "GetSession",
        "UpdateSession",
        "request failed",
        "command failed",
        "panicked",
        "a request handler panicked",
        "a command handler panicked",
        "dead-lettering a command whose reply_to",
        "dead-lettering a command that cannot be understood",
        "caller=\"tests\"",
        "caller=\"token-1\"",
    ] {
        assert!(
            printed.contains(expected),
            "{expected:?} was not logged:\n{printed}"
        );
    }
    assert!(
        printed.contains("TRACE") || printed.contains("DEBUG"),
        "the level was not raised"
    );
    for secret in [
        REDIS_PASSWORD,
        API_TOKEN,
        CALLER_TOKEN,
        ACCESS_TOKEN,
        REFRESH_TOKEN,
        NEW_REFRESH_TOKEN,
        AUTH_CODE,
        USER_EMAIL,
        ENCRYPTION_KEY,
    ]
    .into_iter()
    .chain(ids.iter().map(String::as_str))
    {
        assert!(!printed.contains(secret), "{secret} was logged:\n{printed}");
        // Also as the decimal byte list that a Debug of a byte buffer would print.
        let bytes: Vec<String> = secret.bytes().map(|b| b.to_string()).collect();
        assert!(
            !printed.contains(&bytes.join(", ")),
            "{secret} was logged as bytes"
        );
    }
    crate::helpers::clean_up(&settings).await;
    drop(redis);
}
