//! Fuzzing the running binary (issue 9 §4): thousands of mutated REST requests (odd methods,
//! paths, queries, headers; bodies with broken UTF-8, deep nesting, huge numbers, wrong types,
//! repeated members) and AMQP messages (the same bodies, odd properties). Nothing may answer
//! 5xx or drop a keep-alive connection; every AMQP message is answered, and exactly the ones
//! answered `invalid_argument` are dead-lettered; a bystander's session is unchanged; once the
//! sessions the fuzz created are deleted, no key is left but the bystander's, the records of
//! commands with a `message_id` (which expire) and the drained outboxes. The seed is printed:
//! `FUZZ_SEED=<n>` replays a run.

use lapin::{types::ShortString, BasicProperties};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use session_manager::store::{Bucket, KeyKind, Keys};
use session_manager_testkit::{free_port, instance::wait_for_consumer, Service};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use crate::api_docs::{self, Http};
use crate::helpers::{
    assert_valid, clean_up, eventually, isolated_settings, service_on_local_servers, AmqpClient,
    REDIS_URL,
};

const REST_REQUESTS: usize = 3000;
const AMQP_MESSAGES: usize = 2000;
const CONNECTIONS: usize = 4;

const USERS: &[&str] = &["fuzz-a", "fuzz-b", "fuzz-c"];
const NAMES: &[&str] = &[
    "type",
    "session_id",
    "user_id",
    "device_id",
    "auth_code",
    "access_token",
    "refresh_token",
    "expiration_time",
    "user_email",
    "except",
    "",
];
const TYPES: &[&str] = &[
    "CreateSession",
    "GetSession",
    "ListSessions",
    "UpdateSession",
    "DeleteSession",
    "DeleteUserSessions",
    "Frobnicate",
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// A random JSON value, nested up to `depth`.
fn value(rng: &mut StdRng, depth: u32, ids: &[String]) -> Value {
    match rng.random_range(0..if depth == 0 { 7 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e300),
        4 => json!(pick(rng, USERS)),
        5 => json!(pick(rng, ids)),
        6 => json!((0..rng.random_range(0..20))
            .map(|_| rng.random::<char>())
            .collect::<String>()),
        7 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| value(rng, depth - 1, ids))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.random_range(0..4))
                .map(|_| (pick(rng, NAMES).to_string(), value(rng, depth - 1, ids)))
                .collect(),
        ),
    }
}

/// A body: a plausible command or input, its members' values sometimes of another type, then
/// mutated as text.
fn body(rng: &mut StdRng, ids: &[String], amqp: bool) -> Vec<u8> {
    let mut members: Vec<(String, Value)> = Vec::new();
    let kind = *pick(rng, TYPES);
    if amqp {
        members.push(("type".into(), json!(kind)));
    }
    // Half the time, the members of the type; else a mixture.
    let shaped = rng.random_bool(0.5);
    let wants = |name: &str| {
        !shaped
            || match kind {
                "CreateSession" => ["user_id", "device_id", "access_token"].contains(&name),
                "ListSessions" | "DeleteUserSessions" => name == "user_id",
                "UpdateSession" => ["session_id", "access_token"].contains(&name),
                _ => name == "session_id",
            }
    };
    for (name, value) in [
        ("user_id", json!(pick(rng, USERS))),
        ("device_id", json!("d")),
        ("session_id", json!(pick(rng, ids))),
        ("access_token", json!("t")),
    ] {
        if wants(name) && (amqp || name != "session_id") {
            members.push((name.into(), value));
        }
    }
    if rng.random_bool(0.4) {
        for _ in 0..rng.random_range(1..3) {
            members.push((pick(rng, NAMES).to_string(), value(rng, 2, ids)));
        }
    }
    members.retain(|_| rng.random_bool(0.9));
    let mut text = format!(
        "{{{}}}",
        members
            .iter()
            .map(|(name, value)| format!("{}:{value}", json!(name)))
            .collect::<Vec<_>>()
            .join(",")
    )
    .into_bytes();
    match rng.random_range(0..10) {
        0 => {
            let at = rng.random_range(0..text.len());
            text[at] = rng.random();
        }
        1 => {
            let at = rng.random_range(0..text.len());
            text.splice(at..at, [0xff, 0xfe, 0xc3]);
        }
        2 => text.truncate(rng.random_range(0..text.len())),
        3 => {
            let depth = rng.random_range(100..3000);
            text = format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
        }
        4 => {
            let number = [
                "1e400",
                "-1e400",
                "123456789012345678901234567890",
                "-0",
                "1.5",
            ];
            text = format!(
                r#"{{"type":"CreateSession","user_id":"fuzz-a","device_id":"d","expiration_time":{}}}"#,
                pick(rng, &number)
            )
            .into_bytes();
        }
        _ => {}
    }
    text
}

/// Percent-encodes what may not stand in a request target as it is.
fn encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (*byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn target(rng: &mut StdRng, ids: &[String]) -> String {
    let random: Vec<u8> = (0..rng.random_range(0..30)).map(|_| rng.random()).collect();
    let path = match rng.random_range(0..10) {
        0..=2 => "/a01/session".to_owned(),
        3..=5 => format!("/a01/session/{}", pick(rng, ids)),
        6 => format!("/a01/session/{}", encode(&random)),
        7 => pick(
            rng,
            &[
                "/a01",
                "/a01/",
                "//a01/session",
                "/A01/SESSION",
                "/healthz",
                "/a01/session/x/y",
                "/%2e%2e/a01/session",
            ],
        )
        .to_string(),
        8 => format!("/a01/session/{}", "A".repeat(rng.random_range(1..6000))),
        _ => format!("/{}", encode(&random)),
    };
    if rng.random_bool(0.6) {
        let params: Vec<String> = (0..rng.random_range(0..4))
            .map(|_| {
                let name =
                    pick(rng, &["user_id", "except", "limit", "x", "", "user%FFid"]).to_string();
                let value = match rng.random_range(0..4) {
                    0 => pick(rng, USERS).to_string(),
                    1 => encode(&random),
                    2 => "%FF%FE".to_owned(),
                    _ => pick(rng, ids).clone(),
                };
                format!("{name}={value}")
            })
            .collect();
        format!("{path}?{}", params.join("&"))
    } else {
        path
    }
}

/// One request on a kept-alive connection; the status and body. The connection must stay open.
async fn exchange(
    connection: &mut BufReader<TcpStream>,
    request: &[u8],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    connection.get_mut().write_all(request).await.unwrap();
    let mut status_line = String::new();
    let read = connection.read_line(&mut status_line).await.unwrap();
    assert!(read > 0, "the server closed the connection");
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    let mut headers = reqwest::header::HeaderMap::new();
    loop {
        let mut line = String::new();
        connection.read_line(&mut line).await.unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.trim().parse().unwrap(),
        );
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap(),
            "connection" => assert!(
                !value.to_ascii_lowercase().contains("close"),
                "the server closes the connection after {status_line}"
            ),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    connection.read_exact(&mut body).await.unwrap();
    (status, headers, body)
}

#[tokio::test]
async fn thousands_of_mutated_requests_and_messages_break_nothing() {
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random);
    println!("FUZZ_SEED={seed}");
    let settings = isolated_settings();
    let port = free_port();
    let service = Service::start(
        service_on_local_servers(&settings).env("RUST_LOG", "warn"),
        port,
    );
    wait_for_consumer(&settings.command_queue).await;
    let http = Http::new();
    let json_of = async |request: api_docs::Request| -> Value {
        request.send().await.unwrap().json().await.unwrap()
    };
    let create = async |body: Value| -> String {
        let created = json_of(http.post(service.url("/a01/session")).json(&body)).await;
        created["session_id"].as_str().unwrap().to_owned()
    };
    let bystander = create(
        json!({"user_id": format!("bystander-{seed}"), "device_id": "d", "access_token": "keep"}),
    )
    .await;
    let get_bystander =
        async || json_of(http.get(service.url(&format!("/a01/session/{bystander}")))).await;
    let before = get_bystander().await;
    // Ids the fuzz names: a well-formed one that was never issued, a malformed one (never the
    // bystander's).
    let mut ids = vec![format!("0a{}", "Q".repeat(43)), "nope".to_owned()];
    // And sessions of the fuzz's own users, which it may update or delete.
    for user in USERS {
        ids.push(create(json!({"user_id": user, "device_id": "d"})).await);
    }

    // REST, over a few kept-alive connections.
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|worker| {
            let ids = ids.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(worker as u64));
                let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                let mut connection = BufReader::new(stream);
                let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
                for _ in 0..REST_REQUESTS / CONNECTIONS {
                    let method = *pick(
                        &mut rng,
                        &[
                            "GET", "GET", "POST", "POST", "POST", "PATCH", "DELETE", "PUT", "FROB",
                        ],
                    );
                    let target = target(&mut rng, &ids);
                    let body = body(&mut rng, &ids, false);
                    let content_type = *pick(
                        &mut rng,
                        &[
                            "application/json",
                            "application/JSON; charset=utf-8",
                            "text/plain",
                            "application/json;;",
                            "",
                        ],
                    );
                    let mut request =
                        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n").into_bytes();
                    if !content_type.is_empty() {
                        request.extend(format!("Content-Type: {content_type}\r\n").bytes());
                    }
                    if rng.random_bool(0.2) {
                        request.extend(b"X-Junk: \xff\xfe\x80 odd\r\n");
                    }
                    if rng.random_bool(0.1) {
                        request.extend(b"Authorization: Bearer not-a-token\r\n");
                    }
                    request.extend(format!("Content-Length: {}\r\n\r\n", body.len()).bytes());
                    request.extend(&body);
                    let (status, headers, answer) = exchange(&mut connection, &request).await;
                    let path = target.split('?').next().unwrap();
                    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                    api_docs::check_response(&method, path, status, &headers, &answer);
                    *statuses.entry(status).or_default() += 1;
                    assert!(
                        status < 500,
                        "{status} for {method} {target} {}",
                        String::from_utf8_lossy(&body)
                    );
                    if target.starts_with("/a01") && status >= 400 {
                        let answer: Value = serde_json::from_slice(&answer).unwrap();
                        assert_valid("error.json", &answer);
                    }
                }
                statuses
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for worker in workers {
        for (status, count) in worker.await.unwrap() {
            *statuses.entry(status).or_default() += count;
        }
    }
    println!("REST statuses: {statuses:?}");
    // The mutations reach every kind of answer, not only one refusal.
    for status in [200, 201, 400, 404, 405, 415] {
        assert!(
            statuses.contains_key(&status),
            "no {status} among {statuses:?}"
        );
    }

    // AMQP: every message with reply_to, its properties mutated.
    let amqp = AmqpClient::connect(&settings).await;
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(100));
    let mut correlation_ids = Vec::new();
    for n in 0..AMQP_MESSAGES {
        let correlation_id = format!("fuzz-{n}");
        let mut properties = BasicProperties::default()
            .with_reply_to(ShortString::from(amqp.reply_queue()))
            .with_correlation_id(ShortString::from(correlation_id.as_str()));
        match rng.random_range(0..6) {
            0 => {
                properties = properties
                    .with_message_id(ShortString::from(format!("m-{}", rng.random::<u16>())))
            }
            1 => properties = properties.with_message_id(ShortString::from("")),
            2 => properties = properties.with_message_id(ShortString::from("x".repeat(255))),
            3 => properties = properties.with_content_type(ShortString::from("text/plain")),
            4 => properties = properties.with_content_encoding(ShortString::from("gzip")),
            _ => {}
        }
        let command = body(&mut rng, &ids, true);
        amqp.publish(&command, properties).await;
        correlation_ids.push((correlation_id, command));
    }
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for (correlation_id, command) in &correlation_ids {
        let reply = amqp.reply_for(correlation_id).await;
        assert_valid("reply.json", &reply.body);
        // The reply of the command's own operation in asyncapi.json; one that is no command
        // there must have been refused.
        api_docs::check_reply(command, &reply.body);
        let outcome = match &reply.body["error"]["code"] {
            Value::String(code) => code.clone(),
            _ => "ok".to_owned(),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    println!("AMQP outcomes: {outcomes:?}");
    for outcome in ["ok", "invalid_argument", "not_found"] {
        assert!(
            outcomes.contains_key(outcome),
            "no {outcome} among {outcomes:?}"
        );
    }
    let invalid = outcomes
        .get("invalid_argument")
        .copied()
        .unwrap_or_default();
    eventually(async || {
        let dead = amqp.dead_letter_count().await;
        (dead == invalid)
            .then_some(())
            .ok_or(format!("{dead} dead-lettered, {invalid} refused"))
    })
    .await;

    // Nothing else changed.
    assert_eq!(get_bystander().await, before);
    let metrics = http
        .get(service.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("status=\"5"),
        "a 5xx was counted: {metrics}"
    );

    // What the fuzz created is deleted through the API; then nothing is left but the
    // bystander's keys, records (which expire) and drained outboxes.
    let keys = Keys::new(&settings.key_prefix);
    let mut redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let scan = async |redis: &mut redis::aio::MultiplexedConnection| -> Vec<String> {
        let mut found = Vec::new();
        let mut iter: redis::AsyncIter<String> =
            redis::AsyncCommands::scan_match(redis, format!("{}:*", settings.key_prefix))
                .await
                .unwrap();
        while let Some(key) = iter.next_item().await {
            found.push(key.unwrap());
        }
        found
    };
    for key in scan(&mut redis).await {
        let KeyKind::Session(id) = keys.kind_of(&key) else {
            continue;
        };
        if id.as_str() == bystander {
            continue;
        }
        let session =
            json_of(http.get(service.url(&format!("/a01/session/{}", id.as_str())))).await;
        if let Some(user) = session["user_id"].as_str() {
            let status = http
                .delete(service.url("/a01/session"))
                .query(&[("user_id", user)])
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200);
        }
    }
    let bystanders = session_manager::domain::SessionId::parse(&bystander).unwrap();
    let user = session_manager::domain::UserId::parse(format!("bystander-{seed}")).unwrap();
    let expected = [
        keys.session(&bystanders),
        keys.index(&user),
        keys.schedule(Bucket::of_user(&user)),
    ];
    let outboxes: Vec<String> = Bucket::all().map(|bucket| keys.outbox(bucket)).collect();
    eventually(async || {
        let mut left = Vec::new();
        for key in scan(&mut redis.clone()).await {
            if expected.contains(&key)
                || keys.shared().contains(&key)
                || matches!(keys.kind_of(&key), KeyKind::Record { .. } | KeyKind::Claim)
            {
                continue;
            }
            if outboxes.contains(&key) {
                let length: usize = redis::cmd("XLEN")
                    .arg(&key)
                    .query_async(&mut redis.clone())
                    .await
                    .unwrap();
                if length == 0 {
                    continue;
                }
            }
            left.push(key);
        }
        left.is_empty()
            .then_some(())
            .ok_or(format!("left behind: {left:?}"))
    })
    .await;
    let (status, log) = service.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains(" ERROR "), "an error was logged: {log}");
    // The binary is not an in-process instance, which would clean up when dropped.
    clean_up(&settings).await;
}
